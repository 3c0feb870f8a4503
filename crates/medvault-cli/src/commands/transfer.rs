//! `medvault backup`, `restore` and `migrate`: a node's rows moved as they are stored (sealed
//! records, wrapped keys, blind index values, ledger leaves) between SQLite, PostgreSQL and
//! backup files. The root key never moves: it stays in the key file.
//!
//! A copy is consistent: each database is read in one snapshot, the access log first, then the
//! node database, whose records checkpoints that pin an access head newer than the copied
//! access log are left out (the newest kept one pins a head the copy holds, so `ledger verify`
//! passes on the copy). Ledger nodes are not copied: the target hashes the leaves again.
//!
//! The backup file (`medvault-backup`, version 1) is JSON lines: a header, one line per row
//! (`["n"|"a", table, [cells]]`, bytes in base64), and a trailer with the row count and the
//! SHA-256 of every byte before it. `restore` checks the whole file before loading anything.

use std::io::{BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use indicatif::ProgressBar;
use medvault_crypto::{MacStream, Passphrase, RootKey};
use medvault_node::backup_file::{self, Part};
use medvault_node::ledger::LogId;
use medvault_node::node::{KEY_FILE, TRANSFER_META};
use medvault_store_sqlite::{ACCESS_LOG_FILE as ACCESS_DB_FILE, NODE_FILE as DB_FILE};

use super::database::Database;
use medvault_store::dump::{Cell, Table};
use medvault_store::{Store, StoreError, write_with};
use medvault_store_postgres::PgStore;
use medvault_store_sqlite::SqliteStore;
use serde_json::Value;

use super::ledger::verify_ledger;
use super::{DataDir, audit_admin, open_node, passphrase, progress};

/// Rows loaded per transaction.
const BATCH: usize = 500;
/// A node's two stores.
struct Stores {
    node: Arc<dyn Store>,
    access: Arc<dyn Store>,
}

impl Stores {
    fn of(&self, part: Part) -> &dyn Store {
        match part {
            Part::Node => self.node.as_ref(),
            Part::Access => self.access.as_ref(),
        }
    }

    /// Opens the stores of `database` (for the embedded default, the files in `dir`, which
    /// must exist unless `create`).
    fn open(dir: &Path, database: &Database, create: bool) -> anyhow::Result<Self> {
        match database {
            Database::Embedded => {
                let (db, access) = (dir.join(DB_FILE), dir.join(ACCESS_DB_FILE));
                let present = db.exists() && access.exists();
                if !create && !present {
                    bail!(
                        "no medvault database in {}: check --data-dir (or give --database)",
                        dir.display()
                    );
                }
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Ok(Self {
                    node: Arc::new(SqliteStore::open(&db)?),
                    access: Arc::new(SqliteStore::open_access_log(&access)?),
                })
            }
            Database::Postgres(target) => Ok(Self {
                node: Arc::new(PgStore::open(target)?),
                access: Arc::new(PgStore::open_access_log(target)?),
            }),
        }
    }

    /// True when neither database holds anything of a node yet.
    fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.node.meta("tenant")?.is_none()
            && self.access.meta("tenant")?.is_none()
            && self.access.ledger_size()? == 0
            && self.node.ledger_size()? == 0)
    }

    fn schema_version(&self, part: Part) -> anyhow::Result<String> {
        Ok(self.of(part).meta("schema_version")?.unwrap_or_default())
    }
}

/// Deletes what a target holds (for `--force`, and after a failed load).
fn wipe(dir: &Path, database: &Database) -> anyhow::Result<()> {
    match database {
        Database::Embedded => {
            for name in [DB_FILE, ACCESS_DB_FILE] {
                for suffix in ["", "-wal", "-shm"] {
                    let p = dir.join(format!("{name}{suffix}"));
                    if p.exists() {
                        std::fs::remove_file(&p)
                            .with_context(|| format!("cannot remove {}", p.display()))?;
                    }
                }
            }
            Ok(())
        }
        Database::Postgres(target) => Ok(target.drop_all()?),
    }
}

/// Rows and leaves a copy carried.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub rows: u64,
    pub records_leaves: u64,
    pub access_leaves: u64,
}

/// Streams a consistent copy of `stores` into `sink` (see the module docs).
fn snapshot(
    stores: &Stores,
    sink: &mut dyn FnMut(Part, &'static Table, Vec<Cell>) -> anyhow::Result<()>,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let mut failed: Option<anyhow::Error> = None;
    let mut pass = |part: Part,
                    counts: &mut Counts,
                    failed: &mut Option<anyhow::Error>|
     -> Result<(), StoreError> {
        let access_size = counts.access_leaves;
        stores.of(part).dump(part.tables(), &mut |table, row| {
            if table.name == "ledger_leaves" {
                match part {
                    Part::Node => counts.records_leaves += 1,
                    Part::Access => counts.access_leaves += 1,
                }
            }
            if part == Part::Node
                && table.name == "ledger_checkpoints"
                && pins_beyond(&row, access_size)
            {
                return Ok(());
            }
            counts.rows += 1;
            sink(part, table, row).map_err(|e| {
                let msg = format!("{e:#}");
                *failed = Some(e);
                StoreError::Aborted(msg.into())
            })
        })
    };
    for part in [Part::Access, Part::Node] {
        if let Err(e) = pass(part, &mut counts, &mut failed) {
            return Err(failed.take().unwrap_or_else(|| e.into()));
        }
    }
    Ok(counts)
}

/// True when a records checkpoint row pins more access leaves than `access_size`.
fn pins_beyond(row: &[Cell], access_size: u64) -> bool {
    let Some(Cell::Text(note)) = row.get(1) else {
        return false;
    };
    let pinned = medvault_ledger::Note::parse(note.as_bytes())
        .ok()
        .and_then(|n| medvault_ledger::Checkpoint::parse(&n.text).ok())
        .and_then(|cp| cp.pin(LogId::Records.pin_label()).ok().flatten());
    pinned.is_some_and(|(size, _)| size > access_size)
}

/// Collects rows into batches and loads each in its own transaction. The node database carries
/// `transfer = incomplete` from before the first batch until [`Loader::finish`], so a load that
/// dies part-way (even killed) leaves a database no node opens.
struct Loader<'a> {
    stores: &'a Stores,
    pending: Option<(Part, &'static Table)>,
    rows: Vec<Vec<Cell>>,
    bar: &'a ProgressBar,
}

impl<'a> Loader<'a> {
    fn start(stores: &'a Stores, bar: &'a ProgressBar) -> anyhow::Result<Self> {
        stores
            .node
            .write(Box::new(|tx| tx.set_meta(TRANSFER_META, "incomplete")))?;
        Ok(Self {
            stores,
            pending: None,
            rows: Vec::new(),
            bar,
        })
    }

    fn push(&mut self, part: Part, table: &'static Table, row: Vec<Cell>) -> anyhow::Result<()> {
        // The source's own marker (a node that was itself restored) must not end ours.
        if table.name == "meta" && matches!(row.first(), Some(Cell::Text(k)) if k == TRANSFER_META)
        {
            return Ok(());
        }
        if self
            .pending
            .is_some_and(|(p, t)| p != part || !std::ptr::eq(t, table))
        {
            self.flush()?;
        }
        self.pending = Some((part, table));
        self.rows.push(row);
        if self.rows.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let Some((part, table)) = self.pending else {
            return Ok(());
        };
        let rows = std::mem::take(&mut self.rows);
        let n = rows.len() as u64;
        write_with(self.stores.of(part), move |tx| tx.load(table, &rows))
            .with_context(|| format!("loading {}", table.name))?;
        self.bar.inc(n);
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.flush()?;
        self.stores
            .node
            .write(Box::new(|tx| tx.set_meta(TRANSFER_META, "complete")))?;
        Ok(())
    }
}

/// After a failed load: empties the target again and says so (or says that it could not).
fn undo(
    dir: &Path,
    database: &Database,
    stores: Stores,
    what: &str,
    e: anyhow::Error,
) -> anyhow::Error {
    drop(stores);
    match wipe(dir, database) {
        Ok(()) => e.context(format!("{what} failed; the target was emptied again")),
        Err(w) => e.context(format!(
            "{what} failed, and emptying the target failed too ({w:#}): delete {} before retrying",
            database.at(dir).describe()
        )),
    }
}

/// Refuses a copy between schema versions this build does not write.
fn same_schema(node: &str, access: &str, whose: &str) -> anyhow::Result<()> {
    let (want_node, want_access) = (
        medvault_store::NODE_SCHEMA_VERSION.to_string(),
        medvault_store::ACCESS_LOG_SCHEMA_VERSION.to_string(),
    );
    if node != want_node || access != want_access {
        bail!(
            "{whose} schema is version {node} (access log {access}); this medvault writes {want_node} ({want_access}): use the medvault version that wrote it, then upgrade"
        );
    }
    Ok(())
}

/// Counts the rows a copy will carry (a first, cheap pass), for the progress bar.
fn count_rows(stores: &Stores) -> anyhow::Result<u64> {
    Ok(snapshot(stores, &mut |_, _, _| Ok(()))?.rows)
}

/// `medvault migrate --from DIR --to URL`: copies an embedded node into PostgreSQL. Returns
/// what was copied; the caller verifies the ledger on the target.
pub(crate) fn migrate(from: &Path, to: &Database, force: bool) -> anyhow::Result<Counts> {
    let Database::Postgres(target) = to else {
        bail!("--to must be a postgres:// URL");
    };
    if !from.join(KEY_FILE).exists() {
        bail!(
            "no medvault node in {}: --from names the data directory of the node to move",
            from.display()
        );
    }
    let source = Stores::open(from, &Database::Embedded, false)?;
    same_schema(
        &source.schema_version(Part::Node)?,
        &source.schema_version(Part::Access)?,
        "the source's",
    )?;
    let mut dest = Stores::open(from, to, true)?;
    if !dest.is_empty()? {
        if !force {
            bail!(
                "{} already holds a node: pass --force to delete it and migrate anyway",
                target.describe()
            );
        }
        drop(dest);
        wipe(from, to)?;
        dest = Stores::open(from, to, true)?;
    }
    let total = count_rows(&source)?;
    let bar = progress(total, "migrating");
    let copied = (|| {
        let mut loader = Loader::start(&dest, &bar)?;
        let counts = snapshot(&source, &mut |p, t, r| loader.push(p, t, r))?;
        loader.finish()?;
        Ok::<_, anyhow::Error>(counts)
    })();
    bar.finish_and_clear();
    let counts = match copied {
        Ok(c) => c,
        Err(e) => return Err(undo(from, to, dest, "migration", e)),
    };
    if source.node.ledger_size()? != counts.records_leaves
        || source.access.ledger_size()? != counts.access_leaves
    {
        eprintln!(
            "warning: the source changed while it was copied (is `medvault serve` still running on it?); writes after the copy's snapshot are not in the target"
        );
    }
    Ok(counts)
}

/// Writes lines while authenticating them.
struct Maced<W: std::io::Write> {
    out: W,
    mac: Option<MacStream>,
    bytes: u64,
}

impl<W: std::io::Write> Maced<W> {
    fn line(&mut self, v: &Value) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(v)?;
        text.push(b'\n');
        if let Some(m) = self.mac.as_mut() {
            m.update(&text);
        }
        self.bytes += text.len() as u64;
        self.out.write_all(&text)
    }
}

/// The node's root key from the key file in `dir`.
fn root_key(dir: &Path, passphrase: Option<&Passphrase>, why: &str) -> anyhow::Result<RootKey> {
    let key_path = dir.join(KEY_FILE);
    if !key_path.exists() {
        bail!("{} is missing: {why}", key_path.display());
    }
    let (root, _) = RootKey::open_file(&key_path, passphrase)
        .with_context(|| format!("key file {}", key_path.display()))?;
    Ok(root)
}

/// `medvault backup`: writes a consistent snapshot of the node to `out` (mode 0600, written
/// under `out.partial`, created afresh, and renamed when complete), authenticated with a MAC
/// keyed from the root key. Returns what was written and its size.
pub(crate) fn backup(
    dir: &Path,
    database: &Database,
    out: &Path,
    force: bool,
    passphrase: Option<&Passphrase>,
) -> anyhow::Result<(Counts, u64)> {
    if out.exists() && !force {
        bail!(
            "{} exists: choose another --out or pass --force to replace it",
            out.display()
        );
    }
    let root = root_key(
        dir,
        passphrase,
        "a backup is authenticated with the node's key file",
    )?;
    let stores = Stores::open(dir, database, false)?;
    let Some(tenant) = stores.node.meta("tenant")? else {
        bail!("the database holds no node yet: nothing to back up");
    };
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    // A leftover (or planted) partial file is removed, never reused with its permissions.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", partial.display())),
    }
    let file = {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        o.open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?
    };
    let mut w = Maced {
        out: BufWriter::new(file),
        mac: Some(root.backup_mac(&tenant)?),
        bytes: 0,
    };
    let written = (|| {
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        w.line(&backup_file::header(
            &tenant,
            &stores.schema_version(Part::Node)?,
            &stores.schema_version(Part::Access)?,
            &created,
        ))?;
        let total = count_rows(&stores)?;
        let bar = progress(total, "backing up");
        let counts = snapshot(&stores, &mut |part, table, row| {
            w.line(&backup_file::row_line(part, table, &row))?;
            bar.inc(1);
            Ok(())
        });
        bar.finish_and_clear();
        let counts = counts?;
        let tag = w
            .mac
            .take()
            .map(MacStream::finish)
            .ok_or_else(|| anyhow::anyhow!("backup MAC missing"))?;
        w.line(&backup_file::trailer(counts.rows, &tag))?;
        w.out.flush()?;
        w.out.get_ref().sync_all()?;
        Ok::<_, anyhow::Error>(counts)
    })();
    let counts = match written {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The rename itself is durable once the directory is.
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok((counts, w.bytes))
}

/// `medvault restore`: loads a backup file into an empty database of the node whose key file
/// is in `dir`. The whole file is checked first (format, rows, MAC under this key file, schema
/// version); a load that fails is undone, and one that dies leaves a database no node opens.
pub(crate) fn restore(
    dir: &Path,
    database: &Database,
    file: &Path,
    force: bool,
    passphrase: Option<&Passphrase>,
) -> anyhow::Result<u64> {
    let root = root_key(
        dir,
        passphrase,
        "restoring needs the node's key file (backups never contain it)",
    )?;
    let mac = |tenant: &str| root.backup_mac(tenant).map_err(|e| e.to_string());
    let read = || -> anyhow::Result<BufReader<std::fs::File>> {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        Ok(BufReader::new(f))
    };
    let checked = backup_file::check(read()?, mac, |_, _, _| Ok(())).map_err(|e| {
        if e.contains("MAC") {
            anyhow::anyhow!(
                "{} does not verify with the key file in {}: {e}",
                file.display(),
                dir.display()
            )
        } else {
            anyhow::anyhow!("{} is not a complete medvault backup: {e}", file.display())
        }
    })?;
    same_schema(&checked.node_schema, &checked.access_schema, "the backup's")?;
    let occupied = match database {
        Database::Embedded => dir.join(DB_FILE).exists() || dir.join(ACCESS_DB_FILE).exists(),
        Database::Postgres(_) => !Stores::open(dir, database, true)?.is_empty()?,
    };
    if occupied {
        if !force {
            bail!(
                "{} already holds a node: pass --force to delete it and restore over it",
                database.at(dir).describe()
            );
        }
        wipe(dir, database)?;
    }
    let stores = Stores::open(dir, database, true)?;
    let bar = progress(checked.rows, "restoring");
    let loaded = (|| {
        let mut loader = Loader::start(&stores, &bar)?;
        // Second pass: the file checked out, so every row goes in (and it is checked again,
        // in case it changed in between).
        let mut failed: Option<anyhow::Error> = None;
        let reread = backup_file::check(read()?, mac, |part, table, row| {
            loader.push(part, table, row).map_err(|e| {
                let msg = format!("{e:#}");
                failed = Some(e);
                msg
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        reread.map_err(|e| {
            anyhow::anyhow!("{} changed while it was restored: {e}", file.display())
        })?;
        loader.finish()
    })();
    bar.finish_and_clear();
    if let Err(e) = loaded {
        return Err(undo(dir, database, stores, "restore", e));
    }
    Ok(checked.rows)
}

/// `medvault backup`.
pub(crate) fn run_backup(dir: DataDir, out: PathBuf, force: bool) -> anyhow::Result<()> {
    let database =
        Database::parse(dir.database.as_deref()).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    let (counts, bytes) = backup(&dir.data_dir, &database, &out, force, passphrase().as_ref())?;
    println!(
        "backup written to {} ({bytes} bytes, {} rows; records log {} leaves, access log {} leaves); it holds no root key: keep {} safe separately",
        out.display(),
        counts.rows,
        counts.records_leaves,
        counts.access_leaves,
        dir.data_dir.join(KEY_FILE).display()
    );
    Ok(())
}

/// `medvault restore`.
pub(crate) fn run_restore(dir: DataDir, file: PathBuf, force: bool) -> anyhow::Result<()> {
    let database =
        Database::parse(dir.database.as_deref()).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    let rows = restore(
        &dir.data_dir,
        &database,
        &file,
        force,
        passphrase().as_ref(),
    )?;
    let node = open_node(&dir, true)?;
    let verified = verify_ledger(&node, &[])?;
    audit_admin(&node, "restore", None)?;
    println!("restored {rows} rows from {}; {verified}", file.display());
    Ok(())
}

/// `medvault migrate`.
pub(crate) fn run_migrate(from: PathBuf, to: String, force: bool) -> anyhow::Result<()> {
    let database = Database::parse(Some(&to)).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let counts = migrate(&from, &database, force)?;
    let dir = DataDir {
        data_dir: from,
        database: Some(to),
    };
    let node = open_node(&dir, true)?;
    let verified = verify_ledger(&node, &[])?;
    audit_admin(&node, "migrate", None)?;
    println!(
        "migrated {} rows to {}; {verified}; start the node with --database pointing there",
        counts.rows,
        database.at(&dir.data_dir).describe()
    );
    Ok(())
}
