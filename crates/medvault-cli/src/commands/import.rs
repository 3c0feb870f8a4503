//! `medvault import`: bulk load of FHIR Bundles and ndjson files (e.g. Synthea output), one
//! file per transaction, resumable. It only adds resources unless `--update` is given.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use medvault_node::audit::{AuditOutcome, AuditRecord};
use medvault_node::import::{self, Loaded, Mode};
use medvault_node::{Error, Node};
use serde_json::json;

use super::{DataDir, audit_admin_with, fail, open_node, progress};

/// The file in the data directory that lists the files already imported (by SHA-256), so an
/// interrupted import resumes where it stopped.
pub(crate) const JOURNAL: &str = "import-journal";

#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    dir: DataDir,
    /// Files or directories to load: FHIR Bundles (`*.json`: transaction, batch or collection)
    /// and ndjson files (`*.ndjson`, one resource per line). Directories are read recursively,
    /// in name order.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Also replace resources that already exist: a resource whose `Type/id` is on the node
    /// becomes its new version, and `PUT Type/id` entries are taken. Without it an import only
    /// adds resources, and a file naming an existing `Type/id` is refused whole.
    #[arg(long)]
    update: bool,
}

/// The files to load under `paths`, in order (a directory's in name order, recursively).
fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("{}", p.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .with_context(|| format!("{}", p.display()))?;
            children.sort();
            let wanted: Vec<PathBuf> = children
                .into_iter()
                .filter(|c| c.is_dir() || is_loadable(c))
                .collect();
            out.extend(files(&wanted)?);
        } else if is_loadable(p) {
            out.push(p.clone());
        } else {
            bail!("{}: not a .json Bundle or an .ndjson file", p.display());
        }
    }
    Ok(out)
}

fn is_loadable(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("json" | "ndjson")
    )
}

/// The SHA-256 (hex) of each file already imported into this node.
fn journal(dir: &Path) -> anyhow::Result<HashSet<String>> {
    match std::fs::read_to_string(dir.join(JOURNAL)) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(e).with_context(|| format!("{}", dir.join(JOURNAL).display())),
    }
}

fn remember(journal: &mut File, digest: &str, loaded: &Loaded) -> anyhow::Result<()> {
    writeln!(journal, "{digest} {}", loaded.resources)?;
    journal.sync_data()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records a refused file in the access log: by its digest (or, refused unread, its size) and
/// the refusal's kind and message. Those name the entry or line and what is wrong with it,
/// never its content (a node error's message is never PHI), and never the file's name.
fn refusal_recorded(node: &Node, digest: Option<&str>, size: u64, e: &Error) -> Result<(), String> {
    let outcome = if e.status().is_server_error() {
        AuditOutcome::ServerError
    } else {
        AuditOutcome::ClientError
    };
    let message: String = e
        .message
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    node.record_audit_now(|now| {
        let mut record = AuditRecord::admin(now, "import-file-refused", digest)
            .with("status", e.status().as_u16())
            .with(
                "extra",
                json!({
                    "bytes": size,
                    "kind": format!("{:?}", e.kind),
                    "issue": e.code.as_str(),
                    "message": message,
                }),
            );
        record.outcome = outcome;
        record
    })
    .map(|_| ())
    .map_err(|e| e.message)
}

/// A file whose commit was submitted: its path, digest and size, and where its answer comes.
type InFlight<'p> = (
    &'p Path,
    String,
    u64,
    std::sync::mpsc::Receiver<Result<Loaded, Error>>,
);

/// One file as the planning thread hands it to the writing one.
enum Step {
    /// Imported before (its digest is in the journal).
    Done,
    /// Refused before it was read.
    TooLarge(u64),
    /// Read and planned (or refused while planning).
    Planned {
        digest: String,
        size: u64,
        plan: Result<import::Plan, Error>,
    },
}

/// Reads and plans one file (parsing, validation and indexing, off the writer).
fn plan_file(
    path: &Path,
    done: &HashSet<String>,
    ctx: &medvault_node::ops::Ctx,
    mode: Mode,
) -> anyhow::Result<Step> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .len();
    // Refused before it is read: it is parsed whole, and loaded as one transaction.
    if size > import::MAX_IMPORT_FILE_BYTES {
        return Ok(Step::TooLarge(size));
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let digest = hex(&medvault_crypto::sha256(&bytes));
    if done.contains(&digest) {
        return Ok(Step::Done);
    }
    let ndjson = path.extension().and_then(|e| e.to_str()) == Some("ndjson");
    let plan =
        import::file_entries(&bytes, ndjson, mode).and_then(|entries| import::plan(ctx, entries));
    Ok(Step::Planned { digest, size, plan })
}

pub(crate) fn run(args: ImportArgs) -> anyhow::Result<()> {
    let files = files(&args.paths)?;
    let node = open_node(&args.dir, true)?;
    let done = journal(&args.dir.data_dir)?;
    let mut journal_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.data_dir.join(JOURNAL))
        .with_context(|| format!("{}", args.dir.data_dir.join(JOURNAL).display()))?;
    let ctx = medvault_node::ops::Ctx::unrestricted_node_work(&node);
    let bar = progress(files.len() as u64, "importing");
    // A refused file: recorded in the access log, and the command's one line. Files before and
    // after it that were written stay written (each file is its own transaction) and are in the
    // journal, so the same command resumes.
    let refused = |path: &Path, digest: Option<&str>, size: u64, e: Error| {
        let unrecorded = refusal_recorded(&node, digest, size, &e)
            .err()
            .map(|why| format!("; recording the refusal in the access log failed: {why}"))
            .unwrap_or_default();
        anyhow::anyhow!(
            "{}: {} (nothing of this file was written; fix it and run the same command again to resume{unrecorded})",
            path.display(),
            e.message,
        )
    };
    let mut total = Loaded::default();
    let mut skipped = 0usize;
    let mut imported = 0usize;
    let mode = if args.update {
        Mode::Update
    } else {
        Mode::AddOnly
    };
    // Three stages: a thread reads and plans the next file (parsing, validation, indexing)
    // while the store's writer commits earlier ones, up to IN_FLIGHT of them queued (they then
    // share group commits); this thread hands plans over and records each file once its
    // commit is durable, in file order. At most one planned file waits besides those in flight.
    const IN_FLIGHT: usize = 4;
    // The first failure in file order: a refused file, or an error reading one or recording
    // one. Every commit already in flight is still settled after it (written files are
    // journaled, so a rerun skips them), and nothing more is submitted.
    let mut failure: Option<anyhow::Error> = None;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (planner_ctx, planner_files, planner_done) = (ctx.clone(), &files, &done);
        scope.spawn(move || {
            for path in planner_files {
                let step = plan_file(path, planner_done, &planner_ctx, mode);
                let failed = step.is_err();
                if tx.send(step).is_err() || failed {
                    break;
                }
            }
        });
        let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::new();
        // Waits for the oldest commit in flight and records it, or keeps its failure.
        let mut settle_oldest =
            |in_flight: &mut VecDeque<InFlight<'_>>, failure: &mut Option<anyhow::Error>| {
                let Some((path, digest, size, answer)) = in_flight.pop_front() else {
                    return;
                };
                let outcome = match answer.recv() {
                    Err(_) => Err(anyhow::anyhow!(
                        "{}: the store stopped before answering its commit; run the same command again to resume",
                        path.display()
                    )),
                    Ok(Err(e)) => Err(refused(path, Some(&digest), size, e)),
                    Ok(Ok(loaded)) => {
                        // The access log names the file by its digest only: a file name may name
                        // a patient.
                        let recorded = node
                        .record_audit_now(|now| {
                            AuditRecord::admin(now, "import-file", Some(&digest)).with(
                                "extra",
                                Some(json!({"resources": loaded.resources, "unchanged": loaded.unchanged, "by_type": loaded.by_type})),
                            )
                        })
                        .map_err(fail)
                        .and_then(|_| remember(&mut journal_file, &digest, &loaded));
                        imported += 1;
                        total.resources += loaded.resources;
                        total.unchanged += loaded.unchanged;
                        for (t, n) in loaded.by_type {
                            *total.by_type.entry(t).or_default() += n;
                        }
                        bar.set_message(format!("importing ({} resources)", total.written()));
                        bar.inc(1);
                        recorded
                    }
                };
                if let Err(e) = outcome {
                    failure.get_or_insert(e);
                }
            };
        // A failure of the file being handed over comes after those in flight (earlier files).
        let mut handed_over_failure = None;
        for (path, step) in files.iter().zip(rx) {
            if failure.is_some() {
                break;
            }
            let (digest, size, plan) = match step {
                Err(e) => {
                    handed_over_failure = Some(e);
                    break;
                }
                Ok(Step::Done) => {
                    skipped += 1;
                    bar.inc(1);
                    continue;
                }
                Ok(Step::TooLarge(size)) => {
                    handed_over_failure = Some(refused(path, None, size, import::file_too_large()));
                    break;
                }
                Ok(Step::Planned { digest, size, plan }) => (digest, size, plan),
            };
            match plan {
                Ok(plan) => {
                    while in_flight.len() >= IN_FLIGHT {
                        settle_oldest(&mut in_flight, &mut failure);
                    }
                    if failure.is_some() {
                        break;
                    }
                    let (answer_tx, answer) = std::sync::mpsc::sync_channel(1);
                    // Adding only: the files' index entries are staged and merged at the end.
                    let plan = match mode {
                        Mode::AddOnly => plan.staging_index(),
                        Mode::Update => plan,
                    };
                    import::submit(node.store.as_ref(), &ctx, plan, move |result| {
                        // The receiver waits in `in_flight` until it is settled below.
                        let _ = answer_tx.send(result);
                    });
                    in_flight.push_back((path.as_path(), digest, size, answer));
                }
                Err(e) => {
                    handed_over_failure = Some(refused(path, Some(&digest), size, e));
                    break;
                }
            }
        }
        while !in_flight.is_empty() {
            settle_oldest(&mut in_flight, &mut failure);
        }
        if let Some(e) = handed_over_failure {
            failure.get_or_insert(e);
        }
    });
    // The written files' staged index entries (those before a refused file's too) go into
    // the index now, in key order; had this process died first, the next start would.
    bar.set_message(format!("indexing ({} resources)", total.written()));
    let merged = import::merge_staged_index(node.store.as_ref()).map_err(|e| {
        anyhow::anyhow!(
            "indexing the imported resources failed: {}; the next start of the node indexes them",
            e.message
        )
    });
    if let Some(e) = failure {
        bar.abandon();
        return Err(e);
    }
    merged?;
    bar.finish_and_clear();
    audit_admin_with(
        &node,
        "import",
        None,
        Some(
            json!({"files": imported, "skipped": skipped, "resources": total.resources, "unchanged": total.unchanged}),
        ),
    )?;
    println!(
        "imported {} resources from {} files{}{}",
        total.written(),
        imported,
        if skipped > 0 {
            format!(" ({skipped} already imported, skipped)")
        } else {
            String::new()
        },
        if total.unchanged > 0 {
            format!("; {} more were already here unchanged", total.unchanged)
        } else {
            String::new()
        }
    );
    let by_type: BTreeMap<&String, &usize> = total.by_type.iter().collect();
    for (t, n) in by_type {
        println!("  {t}: {n}");
    }
    Ok(())
}
