//! `medvault ledger …` (verifying the ledger, its keys) and `medvault node …` (this node's
//! identity for other nodes).

use clap::Subcommand;
use indicatif::ProgressBar;
use medvault_ledger::VerifierKey;
use medvault_node::node::Node;

use super::{DataDir, audit_admin, open_node, progress};

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// Recompute both logs' Merkle trees from the stored leaves, check each log's newest signed
    /// checkpoint and newest witness-cosigned checkpoint, every stored resource version against
    /// its commitment, every audit record against its leaf, and that the records tree heads the
    /// access checkpoints pin are reproduced. Exits 0 only when everything holds; otherwise
    /// names the first divergence (which log, which row, which leaf) and exits 1. Safe to run
    /// while the server runs.
    #[command(after_help = "Example:\n  medvault ledger verify --data-dir /var/lib/medvault")]
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// A witness cosigner key to trust, in addition to those `serve --witness` recorded.
        #[arg(long = "witness", value_name = "VKEY")]
        witnesses: Vec<String>,
        /// An archive file `ledger archive` wrote: check every detail in it against its leaf
        /// too (repeat for several). Without it, archived details are counted, not checked.
        #[arg(long = "archive", value_name = "FILE")]
        archives: Vec<std::path::PathBuf>,
    },
    /// Move the sealed details of old access-log entries (everything below `--before` not
    /// archived yet) into a new archive file, then remove them from the database. The leaves
    /// stay, so checkpoints, tiles and proofs are unchanged, and each archived detail stays
    /// bound to its leaf: keep the file in cold storage and `ledger verify --archive FILE`
    /// checks it. `--before` may be at most the newest signed checkpoint's size (`ledger
    /// verify` prints it). The archive itself is recorded in the access log. Safe to run while
    /// the server runs; SQLite reuses the freed space for new entries.
    #[command(
        after_help = "Example:\n  medvault ledger archive --data-dir /var/lib/medvault --before 5000000 --out /mnt/cold/access-0-5000000.mvarchive"
    )]
    Archive {
        #[command(flatten)]
        dir: DataDir,
        /// Archive the details of the access-log leaves below this index.
        #[arg(long, value_name = "LEAF")]
        before: u64,
        /// The archive file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
    /// Build the access log's patient index for entries written before it existed (a log
    /// upgraded from an earlier medvault), newest first, with a progress bar. Until it is done,
    /// a patient's accounting of disclosures opens every older entry instead (slower, never
    /// incomplete). `serve` also runs it at start; safe to run while the server runs, and to
    /// stop and run again (it resumes).
    #[command(
        after_help = "Example:\n  medvault ledger reindex-access --data-dir /var/lib/medvault"
    )]
    ReindexAccess {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Print this node's ledger keys: the two logs' checkpoint keys (give them to witnesses and
    /// auditors) and the witness cosigner key (give it to logs this node witnesses).
    #[command(after_help = "Example:\n  medvault ledger keys --data-dir DIR")]
    Keys {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Print the node document (JSON) with its fingerprint, to give another node's
    /// administrator, who confirms the fingerprint with you out of band.
    #[command(after_help = "Example:\n  medvault node show --data-dir DIR")]
    Show {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Replace the node's signing and KEM keys with new ones (recorded in the access log).
    /// Peers must fetch the new document and confirm its fingerprint again.
    #[command(after_help = "Example:\n  medvault node rotate-keys --data-dir DIR")]
    RotateKeys {
        #[command(flatten)]
        dir: DataDir,
    },
}

pub(crate) fn run_ledger(command: LedgerCommand) -> anyhow::Result<()> {
    match command {
        LedgerCommand::Verify {
            dir,
            witnesses,
            archives,
        } => {
            let node = open_node(&dir, true)?;
            println!("{}", verify_ledger(&node, &witnesses)?);
            if !archives.is_empty() {
                let (checked, covered, runs) = medvault_node::verify::check_archives(
                    node.access.as_ref(),
                    &node.ledger,
                    &archives,
                )
                .map_err(|e| anyhow::anyhow!("ledger verification failed: {e}"))?;
                println!(
                    "archives verified: {checked} archived audit details in {} file(s) match their leaves; the files cover {covered} of the {runs} archive runs the access log recorded",
                    archives.len()
                );
            }
        }
        LedgerCommand::ReindexAccess { dir } => {
            let node = open_node(&dir, true)?;
            let mut bar: Option<ProgressBar> = None;
            let done = medvault_node::access_index::reindex(
                node.access.as_ref(),
                &node.ledger,
                |done, total| {
                    let pb = bar.get_or_insert_with(|| progress(total, "indexing access log"));
                    pb.set_position(done);
                },
            );
            if let Some(pb) = bar {
                pb.finish_and_clear();
            }
            let r = done.map_err(|e| anyhow::anyhow!("re-indexing failed: {e}"))?;
            // And the newest whole runs, if no server indexed them (a node that is not served).
            let newer = medvault_node::access_index::catch_up(node.access.as_ref(), &node.ledger)
                .map_err(|e| anyhow::anyhow!("re-indexing failed: {e}"))?;
            if newer.leaves > 0 {
                println!(
                    "indexed the {} newest access-log entries ({} patient-index rows), up to leaf {}",
                    newer.leaves, newer.rows, newer.to
                );
            }
            if r.leaves == 0 {
                println!(
                    "the access log's patient index is complete (from leaf {}); nothing to do",
                    r.from
                );
            } else {
                println!(
                    "indexed {} access-log entries ({} patient-index rows); the index is complete from leaf {}",
                    r.leaves, r.rows, r.from
                );
            }
        }
        LedgerCommand::Archive { dir, before, out } => {
            let node = open_node(&dir, true)?;
            let mut bar: Option<ProgressBar> = None;
            let done = medvault_node::archive::archive(&node, before, &out, |done, total| {
                let pb = bar.get_or_insert_with(|| progress(total, "archiving audit details"));
                pb.set_position(done);
            });
            if let Some(pb) = bar {
                pb.finish_and_clear();
            }
            let a = done.map_err(|e| anyhow::anyhow!("archive failed: {e}"))?;
            println!(
                "archived the audit details of access-log leaves {}..{} to {} ({} bytes, sha256 {}); recorded as access-log leaf {}",
                a.from,
                a.to,
                out.display(),
                a.bytes,
                a.sha256,
                a.leaf
            );
        }
        LedgerCommand::Keys { dir } => {
            let node = open_node(&dir, true)?;
            println!(
                "records log key: {}",
                node.ledger.records().verifier().to_vkey()
            );
            println!(
                "access log key:  {}",
                node.ledger.access().verifier().to_vkey()
            );
            println!("witness key:     {}", node.ledger.cosigner().to_vkey());
            println!(
                "ML-DSA-44 cosigner key (on both logs' checkpoints): {}",
                node.ledger.pq_cosigner().to_vkey()
            );
        }
    }
    Ok(())
}

pub(crate) fn run_node(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Show { dir } => {
            let node = open_node(&dir, true)?;
            let id = medvault_node::node_identity::NodeIdentity::load(&node)?;
            let doc = id
                .document(node.ledger.base())
                .map_err(|e| anyhow::anyhow!("signing the node document: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        NodeCommand::RotateKeys { dir } => {
            let node = open_node(&dir, true)?;
            let old = medvault_node::node_identity::NodeIdentity::load(&node)?;
            let new = medvault_node::node_identity::NodeIdentity::rotate(&node)?;
            audit_admin(
                &node,
                "node-keys-rotate",
                Some(&format!(
                    "v{} {} -> v{} {}",
                    old.version,
                    old.fingerprint(),
                    new.version,
                    new.fingerprint()
                )),
            )?;
            println!(
                "node keys v{} replaced by v{}; new fingerprint {}",
                old.version,
                new.version,
                new.fingerprint()
            );
        }
    }
    Ok(())
}

pub(crate) fn parse_vkeys(texts: &[String], what: &str) -> anyhow::Result<Vec<VerifierKey>> {
    texts
        .iter()
        .map(|t| VerifierKey::parse_vkey(t).map_err(|e| anyhow::anyhow!("{what} {t:?}: {e}")))
        .collect()
}

pub(crate) fn verify_ledger(node: &Node, extra_witnesses: &[String]) -> anyhow::Result<String> {
    let mut keys = node
        .store
        .meta(medvault_node::witness::WITNESS_KEYS_META)?
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    keys.extend(extra_witnesses.iter().cloned());
    let witnesses = parse_vkeys(&keys, "--witness")?;
    let mut bar: Option<ProgressBar> = None;
    let report = medvault_node::verify::verify(
        node.store.as_ref(),
        node.access.as_ref(),
        &node.ledger,
        &witnesses,
        |done, total| {
            let pb = bar.get_or_insert_with(|| progress(total, "verifying ledger"));
            pb.set_position(done);
        },
    );
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let r = report.map_err(|e| anyhow::anyhow!("ledger verification failed: {e}"))?;
    let log = |name: &str, l: &medvault_node::verify::LogReport| {
        let witnessed = match &l.cosigned_size {
            Some(n) => format!(
                "newest witness-cosigned checkpoint covers {n} (cosigned by {})",
                l.cosigned_by.join(", ")
            ),
            None => "no witness has cosigned a checkpoint".to_owned(),
        };
        format!(
            "{name} log {} leaves, newest signed checkpoint covers {}, {witnessed}",
            l.leaves, l.checkpoint_size
        )
    };
    Ok(format!(
        "ledger verified: {}; {}; {} resource versions ({} amended: their original leaves checked too), {} audit records{}, {} pinned records tree heads reproduced; the access log's patient index matches every record{}",
        log("records", &r.records),
        log("access", &r.access),
        r.versions,
        r.amendments,
        r.audit_records,
        if r.archived > 0 {
            format!(" ({} more archived)", r.archived)
        } else {
            String::new()
        },
        r.pins,
        medvault_node::access_index::coverage(
            (r.patient_index_from, r.patient_index_to),
            r.archived,
            r.access.leaves
        )
    ))
}
