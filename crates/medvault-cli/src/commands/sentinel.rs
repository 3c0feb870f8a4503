//! `medvault sentinel`: the insider-snooping detector, offline, and a node's own access log in
//! its formats.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use medvault_sentinel::replay::replay;
use medvault_sentinel::{DEFAULT_THRESHOLD, Detector, Roster};

use super::progress;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SentinelCommand {
    /// Score every event of an access log exported as EVENTS.jsonl (one access per line, in
    /// time order) against ROSTER.json, writing one line per event to SCORES.jsonl:
    /// {"index", "score" (0 to 1), "alert", "reasons" (the signals that raised the score, with
    /// their values)}. The files hold no PHI: names and addresses are opaque tokens.
    /// docs/sentinel.md describes both formats and every signal.
    #[command(
        after_help = "Example:\n  scripts/sentinel-sim --out month\n  medvault sentinel replay --events month/events.jsonl --roster month/roster.json --out month/scores.jsonl"
    )]
    Replay {
        /// The events, one JSON object per line, in time order.
        #[arg(long, value_name = "EVENTS.jsonl")]
        events: PathBuf,
        /// Users (role, department, shift, tokens) and patients (tokens, flags, departments).
        #[arg(long, value_name = "ROSTER.json")]
        roster: PathBuf,
        /// Where to write the scores (replaced if it exists).
        #[arg(long, value_name = "SCORES.jsonl")]
        out: PathBuf,
        /// Scores at or above this raise an alert.
        #[arg(long, default_value_t = DEFAULT_THRESHOLD, value_name = "0..1")]
        threshold: f64,
        /// Also write each event's raw signal values (a header line of names, then one JSON
        /// array per event), e.g. to compare other detectors on the same features.
        #[arg(long, value_name = "FEATURES.jsonl")]
        features: Option<PathBuf>,
    },
    /// Write this node's own access log in the replay formats: EVENTS.jsonl (one line per
    /// access, per patient it reached; failed sign-ins and peers' bundles included) and
    /// ROSTER.json (every user and patient named, with keyed tokens of family names and
    /// addresses — HMAC under the node's keys, never the names). Then `sentinel replay`
    /// scores it, or another detector can.
    #[command(
        after_help = "Example:\n  medvault sentinel export --data-dir /var/lib/medvault --events log.jsonl --roster roster.json\n  medvault sentinel replay --events log.jsonl --roster roster.json --out scores.jsonl"
    )]
    Export {
        #[command(flatten)]
        dir: super::DataDir,
        /// Where to write the events (replaced if it exists).
        #[arg(long, value_name = "EVENTS.jsonl")]
        events: PathBuf,
        /// Where to write the roster (replaced if it exists).
        #[arg(long, value_name = "ROSTER.json")]
        roster: PathBuf,
    },
}

pub(crate) fn run(command: SentinelCommand) -> anyhow::Result<()> {
    match command {
        SentinelCommand::Replay {
            events,
            roster,
            out,
            threshold,
            features,
        } => run_replay(&events, &roster, &out, threshold, features.as_deref()),
        SentinelCommand::Export {
            dir,
            events,
            roster,
        } => run_export(&dir, &events, &roster),
    }
}

fn run_export(dir: &super::DataDir, events: &Path, roster: &Path) -> anyhow::Result<()> {
    if same_file(events, roster) {
        anyhow::bail!("--events and --roster name the same file: give each its own");
    }
    let node = super::open_node(dir, true)?;
    let file = File::create(events).with_context(|| format!("{}", events.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let bar = progress(0, "exporting the access log");
    let done = medvault_node::sentinel::export(&node, &mut out, &mut |at, of| {
        bar.set_length(of);
        bar.set_position(at);
    });
    bar.finish_and_clear();
    let (n, list) = done.map_err(|e| match e {
        medvault_node::sentinel::ExportError::Write(e) => {
            anyhow::anyhow!("{}: {e}", events.display())
        }
        e => anyhow::anyhow!("{e}"),
    })?;
    let text = serde_json::to_vec_pretty(&list).context("the roster")?;
    std::fs::write(roster, text).with_context(|| format!("{}", roster.display()))?;
    println!(
        "exported {n} events of {} users and {} patients to {} and {}",
        list.users.len(),
        list.patients.len(),
        events.display(),
        roster.display()
    );
    Ok(())
}

/// True if `a` and `b` are the same path, or the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

fn run_replay(
    events: &Path,
    roster: &Path,
    out: &Path,
    threshold: f64,
    features: Option<&Path>,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&threshold) {
        anyhow::bail!("--threshold {threshold}: give a score between 0 and 1");
    }
    let roster_path = roster;
    let roster: Roster = {
        let file = File::open(roster).with_context(|| format!("{}", roster.display()))?;
        serde_json::from_reader(BufReader::new(file))
            .map_err(|e| anyhow::anyhow!("{}: not a roster: {e}", roster.display()))?
    };
    let input = File::open(events).with_context(|| format!("{}", events.display()))?;
    // Writing the scores over an input would destroy it before it is read.
    for (input, flag) in [(events, "--events"), (roster_path, "--roster")] {
        for output in std::iter::once(out).chain(features) {
            if same_file(input, output) {
                anyhow::bail!(
                    "{}: is the {flag} file; write the output to another file",
                    output.display()
                );
            }
        }
    }
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let create = |p: &Path| -> anyhow::Result<BufWriter<File>> {
        Ok(BufWriter::with_capacity(
            1 << 20,
            File::create(p).with_context(|| format!("{}", p.display()))?,
        ))
    };
    let scores = create(out)?;
    let features_path = features;
    let mut features = features.map(create).transpose()?;
    let mut detector = Detector::new(&roster).with_threshold(threshold);
    let bar = progress(size, "scoring events");
    let done = replay(
        &mut detector,
        &mut medvault_sentinel::Attacks::default(),
        BufReader::with_capacity(1 << 20, input),
        scores,
        features.as_mut().map(|f| f as &mut dyn Write),
        |read| bar.set_position(read),
    )
    .map_err(|e| match e {
        medvault_sentinel::replay::ReplayError::Write(_) => match features_path {
            Some(f) => anyhow::anyhow!("{} or {}: {e}", out.display(), f.display()),
            None => anyhow::anyhow!("{}: {e}", out.display()),
        },
        e => anyhow::anyhow!("{}: {e}", events.display()),
    });
    bar.finish_and_clear();
    let done = done?;
    println!(
        "scored {} events, {} alerts (threshold {threshold}), {} attacks{}",
        done.events,
        done.alerts,
        done.attacks,
        if done.out_of_order > 0 {
            format!(
                "; {} events were earlier than the one before them (the file should be in time order)",
                done.out_of_order
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
