//! The commands' implementations, one module per area, and what several of them share:
//! the data directory flags, opening the node, progress bars, audit records of admin actions.

use std::path::PathBuf;

pub(crate) mod accounts;
pub(crate) mod breach;
pub(crate) mod compliance;
pub(crate) mod database;
pub(crate) mod import;
pub(crate) mod ledger;
pub(crate) mod policy;
pub(crate) mod records;
pub(crate) mod sentinel;
pub(crate) mod serve;
pub(crate) mod sharing;
pub(crate) mod subject;
pub(crate) mod transfer;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use medvault_core::ResourceId;
use medvault_crypto::{KeyFileKind, Passphrase};
use medvault_node::node::{KEY_FILE, Node};

use self::database::Database;

#[derive(Debug, clap::Args)]
pub(crate) struct DataDir {
    /// Directory holding the node's key file and database. Created (mode 0700) on first use.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./medvault-data",
        env = "MEDVAULT_DATA_DIR"
    )]
    pub(crate) data_dir: PathBuf,
    /// Keep the node's data in PostgreSQL instead of SQLite files in the data directory, e.g.
    /// postgres://medvault@db.example/medvault?schema=clinic (schema defaults to `medvault`).
    /// Several `medvault serve` processes may share one database; each needs a copy of the
    /// node's key file in its own --data-dir (the key file never goes into the database).
    #[arg(
        long,
        value_name = "URL",
        env = "MEDVAULT_DATABASE",
        hide_env_values = true
    )]
    pub(crate) database: Option<String>,
}

pub(crate) fn passphrase() -> Option<Passphrase> {
    std::env::var("MEDVAULT_PASSPHRASE")
        .ok()
        .and_then(Passphrase::new)
}

/// Opens the node in `dir` (and its `--database`); with `must_exist`, refuses to create one
/// (administrative commands on a mistyped directory must not silently start a new, empty node).
pub(crate) fn open_node(dir: &DataDir, must_exist: bool) -> anyhow::Result<Node> {
    let database =
        Database::parse(dir.database.as_deref()).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    let data_dir = &dir.data_dir;
    if must_exist && !data_dir.join(KEY_FILE).exists() {
        bail!(
            "no medvault node in {}: check --data-dir (a node is created by `medvault serve --data-dir DIR`)",
            data_dir.display()
        );
    }
    let databases = database.at(data_dir);
    let node =
        Node::open(data_dir, databases.as_ref(), passphrase().as_ref()).with_context(|| {
            format!(
                "cannot open the node in {} ({})",
                data_dir.display(),
                databases.describe()
            )
        })?;
    if node.created && node.key_file_kind == KeyFileKind::Unprotected {
        eprintln!(
            "warning: MEDVAULT_PASSPHRASE is not set, so the new root key file {} is protected only by its file permissions (0600); for production, start over with MEDVAULT_PASSPHRASE set",
            data_dir.join(KEY_FILE).display()
        );
    }
    Ok(node)
}

pub(crate) fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

/// Prints `v` as pretty JSON on standard output.
pub(crate) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// A compliance error as the one line the CLI prints.
pub(crate) fn plain(e: medvault_compliance::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Reads a signed document someone handed over (a report, an export, a certificate): a regular
/// file of at most `max` bytes; `what` names it in the one-line refusal.
pub(crate) fn read_bytes(path: &std::path::Path, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() || meta.len() > max {
        anyhow::bail!(
            "{}: not {what} (not a regular file of at most {} MiB)",
            path.display(),
            max / (1024 * 1024)
        );
    }
    std::fs::read(path).with_context(|| format!("{}", path.display()))
}

/// [`read_bytes`] as UTF-8 text (a byte-order mark dropped).
pub(crate) fn read_document(
    path: &std::path::Path,
    max: u64,
    what: &str,
) -> anyhow::Result<String> {
    let bytes = read_bytes(path, max, what)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not {what} (not UTF-8 text)", path.display()))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Records an administrative action in the access log and signs checkpoints covering it.
pub(crate) fn audit_admin(node: &Node, action: &str, target: Option<&str>) -> anyhow::Result<()> {
    audit_admin_with(node, action, target, None)
}

/// [`audit_admin`] with more detail (sealed like every audit detail).
pub(crate) fn audit_admin_with(
    node: &Node,
    action: &str,
    target: Option<&str>,
    extra: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    node.record_audit_now(|now| {
        medvault_node::audit::AuditRecord::admin(now, action, target).with("extra", extra)
    })
    .and_then(|_| {
        node.ledger
            .checkpoint_now(node.store.as_ref(), node.access.as_ref())
    })
    .map_err(|e| anyhow::anyhow!("recording the action in the ledger failed: {}", e.message))?;
    Ok(())
}

/// Parses an optional resource id given as `flag`.
pub(crate) fn resource_id(flag: &str, id: Option<String>) -> anyhow::Result<Option<ResourceId>> {
    id.map(|p| ResourceId::new(&p).map_err(|e| anyhow::anyhow!("{flag} {p:?}: {e}")))
        .transpose()
}

/// A node error as the CLI's one plain line: its message, safe to show.
pub(crate) fn fail(e: impl Into<medvault_node::Error>) -> anyhow::Error {
    anyhow::anyhow!("{}", e.into().message)
}
