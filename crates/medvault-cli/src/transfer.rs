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
use medvault_crypto::{Passphrase, RootKey, Sha256Stream};
use medvault_server::backup_file::{self, Part};
use medvault_server::ledger::LogId;
use medvault_server::node::{ACCESS_DB_FILE, DB_FILE, Database, KEY_FILE};
use medvault_store::dump::{Cell, Table};
use medvault_store::{Store, StoreError, write_with};
use medvault_store_postgres::PgStore;
use medvault_store_sqlite::SqliteStore;
use serde_json::Value;

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

/// Collects rows into batches and loads each in its own transaction.
struct Loader<'a> {
    stores: &'a Stores,
    pending: Option<(Part, &'static Table)>,
    rows: Vec<Vec<Cell>>,
    bar: &'a ProgressBar,
}

impl Loader<'_> {
    fn push(&mut self, part: Part, table: &'static Table, row: Vec<Cell>) -> anyhow::Result<()> {
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
}

/// Counts the rows a copy will carry (a first, cheap pass), for the progress bar.
fn count_rows(stores: &Stores) -> anyhow::Result<u64> {
    Ok(snapshot(stores, &mut |_, _, _| Ok(()))?.rows)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    crate::progress(len, what)
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
    for part in [Part::Node, Part::Access] {
        let (have, want) = (source.schema_version(part)?, dest.schema_version(part)?);
        if have != want {
            bail!("the source schema is version {have}, the target's {want}: upgrade first");
        }
    }
    let total = count_rows(&source)?;
    let bar = progress(total, "migrating");
    let copied = (|| {
        let mut loader = Loader {
            stores: &dest,
            pending: None,
            rows: Vec::new(),
            bar: &bar,
        };
        let counts = snapshot(&source, &mut |p, t, r| loader.push(p, t, r))?;
        loader.flush()?;
        Ok::<_, anyhow::Error>(counts)
    })();
    bar.finish_and_clear();
    let counts = match copied {
        Ok(c) => c,
        Err(e) => {
            drop(dest);
            let _ = wipe(from, to);
            return Err(e.context("migration failed; the target was emptied again"));
        }
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

/// Writes lines while hashing them.
struct Hashed<W: std::io::Write> {
    out: W,
    hash: Sha256Stream,
    bytes: u64,
}

impl<W: std::io::Write> Hashed<W> {
    fn line(&mut self, v: &Value) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(v)?;
        text.push(b'\n');
        self.hash.update(&text);
        self.bytes += text.len() as u64;
        self.out.write_all(&text)
    }
}

/// `medvault backup`: writes a consistent snapshot of the node to `out` (mode 0600, written
/// under a temporary name and renamed when complete). Returns what was written and its size.
pub(crate) fn backup(
    dir: &Path,
    database: &Database,
    out: &Path,
    force: bool,
) -> anyhow::Result<(Counts, u64)> {
    if out.exists() && !force {
        bail!(
            "{} exists: choose another --out or pass --force to replace it",
            out.display()
        );
    }
    let stores = Stores::open(dir, database, false)?;
    let Some(tenant) = stores.node.meta("tenant")? else {
        bail!("the database holds no node yet: nothing to back up");
    };
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            o.mode(0o600);
        }
        o.open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?
    };
    let mut w = Hashed {
        out: BufWriter::new(file),
        hash: Sha256Stream::default(),
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
        let digest = std::mem::take(&mut w.hash).finish();
        w.line(&backup_file::trailer(counts.rows, &digest))?;
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
    Ok((counts, w.bytes))
}

/// `medvault restore`: loads a backup file into an empty database of the node whose key file
/// is in `dir`. The whole file is checked first; a load that fails is undone.
pub(crate) fn restore(
    dir: &Path,
    database: &Database,
    file: &Path,
    force: bool,
    passphrase: Option<&Passphrase>,
) -> anyhow::Result<u64> {
    let key_path = dir.join(KEY_FILE);
    if !key_path.exists() {
        bail!(
            "{} is missing: restoring needs the node's key file (backups never contain it)",
            key_path.display()
        );
    }
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let checked = backup_file::check(BufReader::new(opened), |_, _, _| Ok(())).map_err(|e| {
        anyhow::anyhow!("{} is not a complete medvault backup: {e}", file.display())
    })?;
    let (root, _) = RootKey::open_file(&key_path, passphrase)
        .with_context(|| format!("key file {}", key_path.display()))?;
    let Some((version, wrapped)) = checked.keks.last() else {
        bail!("{} holds no keys: not a backup of a node", file.display());
    };
    if root.unwrap_kek(&checked.tenant, *version, wrapped).is_err() {
        bail!(
            "the key file {} does not open this backup's keys: it belongs to another node",
            key_path.display()
        );
    }
    let occupied = match database {
        Database::Embedded => dir.join(DB_FILE).exists() || dir.join(ACCESS_DB_FILE).exists(),
        Database::Postgres(_) => !Stores::open(dir, database, true)?.is_empty()?,
    };
    if occupied {
        if !force {
            bail!(
                "{} already holds a node: pass --force to delete it and restore over it",
                database.describe(dir)
            );
        }
        wipe(dir, database)?;
    }
    let stores = Stores::open(dir, database, true)?;
    for (part, want) in [
        (Part::Node, &checked.node_schema),
        (Part::Access, &checked.access_schema),
    ] {
        let have = stores.schema_version(part)?;
        if &have != want {
            drop(stores);
            let _ = wipe(dir, database);
            bail!(
                "the backup's schema is version {want}, this medvault's {have}: restore it with the medvault version that wrote it, then upgrade"
            );
        }
    }
    let bar = progress(checked.rows, "restoring");
    let loaded = (|| {
        let mut loader = Loader {
            stores: &stores,
            pending: None,
            rows: Vec::new(),
            bar: &bar,
        };
        // Second pass: the file checked out, so every row goes in.
        let reader = BufReader::new(std::fs::File::open(file)?);
        let mut failed: Option<anyhow::Error> = None;
        let reread = backup_file::check(reader, |part, table, row| {
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
        loader.flush()
    })();
    bar.finish_and_clear();
    if let Err(e) = loaded {
        drop(stores);
        let _ = wipe(dir, database);
        return Err(e.context("restore failed; the target was emptied again"));
    }
    Ok(checked.rows)
}
