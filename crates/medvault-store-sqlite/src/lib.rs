//! SQLite backend of the medvault `Store`: the embedded default.
//!
//! - WAL journal, `synchronous=FULL`: a write is acknowledged only after its commit reached the
//!   disk, so it survives `kill -9` and power loss.
//! - One writer thread owns the write connection and group-commits (medvault-store's
//!   [`GroupWriter`], with [`SqliteWriter`] as its dialect): it drains the queued
//!   [`WriteOp`](medvault_store::WriteOp)s, runs each inside its own savepoint, commits once and
//!   then acknowledges them all. One fsync serves many concurrent clients; an op that fails is
//!   rolled back alone.
//! - Readers use a small pool of read-only connections (WAL lets them run beside the writer).
//! - `secure_delete=ON`, and a WAL checkpoint after destroying a key, so a shredded data key's
//!   wrapped bytes do not linger in free pages or the WAL.

mod conn;
mod dump;
mod schema;
mod sql;

pub use schema::Schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use medvault_store::group::{Dialect, GroupWriter, NewNode, OpEffects};
use medvault_store::{LogStore, Store, StoreError, StoreRead, StoreTx};
use rusqlite::Connection;

use crate::conn::backend;

/// Read connections kept open when idle (more are opened while a burst needs them, and closed
/// after): each holds a page cache of up to 16 MiB, so the idle ones bound what caching costs.
const MAX_IDLE_READERS: usize = 16;
/// How long a connection waits for another process's lock (e.g. the CLI) before failing.
const BUSY_TIMEOUT_MILLIS: u64 = 10_000;

/// Name of the records database inside a data directory.
pub const NODE_FILE: &str = "medvault.db";
/// Name of the access log's database inside a data directory.
pub const ACCESS_LOG_FILE: &str = "access.db";

/// A node's two SQLite files in its data directory: the embedded default, nothing to install.
#[derive(Debug, Clone)]
pub struct Embedded {
    dir: PathBuf,
}

impl Embedded {
    /// The databases in data directory `dir` (which must exist before they are opened).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The records database's file.
    pub fn node_path(&self) -> PathBuf {
        self.dir.join(NODE_FILE)
    }

    /// The access log's file.
    pub fn access_log_path(&self) -> PathBuf {
        self.dir.join(ACCESS_LOG_FILE)
    }
}

impl medvault_store::Databases for Embedded {
    fn describe(&self) -> String {
        self.node_path().display().to_string()
    }

    fn node_exists(&self) -> Result<bool, StoreError> {
        Ok(self.node_path().exists())
    }

    fn open_node(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(SqliteStore::open(&self.node_path())?))
    }

    fn access_log_exists(&self) -> Result<bool, StoreError> {
        Ok(self.access_log_path().exists())
    }

    fn open_access_log(&self) -> Result<Arc<dyn LogStore>, StoreError> {
        Ok(Arc::new(SqliteStore::open_access_log(
            &self.access_log_path(),
        )?))
    }

    fn missing_access_log(&self) -> &'static str {
        "access.db is missing beside medvault.db: restore it from backup"
    }

    fn shared(&self) -> bool {
        false
    }
}

/// A medvault database in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    writer: GroupWriter,
    /// Declared after the writer: dropped (stopped) once the writer has drained its queue.
    _checkpointer: Checkpointer,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_connection(path: &Path, writer: bool) -> Result<Connection, StoreError> {
    if writer {
        create_private(path)?;
    }
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MILLIS))
        .map_err(backend)?;
    // page_size only takes effect on a new database, before WAL mode is set. Small pages keep
    // the WAL volume of random index inserts low (each blind-index row lands on its own page).
    let pragmas: &[(&str, i64)] = if writer {
        &[("page_size", 1024), ("cache_size", -8192)]
    } else {
        // Readers read through their own page cache. (Mapping the file looked cheaper, but the
        // ledger makes every request a write, the file grows all the time, and SQLite remaps
        // it on every growth: page-table churn halved read throughput.)
        &[("mmap_size", 0), ("cache_size", -16384), ("query_only", 1)]
    };
    for (name, value) in pragmas {
        conn.pragma_update(None, name, value).map_err(backend)?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(backend)?;
    for (name, value) in [
        ("synchronous", "FULL"),
        ("foreign_keys", "ON"),
        ("secure_delete", "ON"),
        ("temp_store", "MEMORY"),
    ] {
        conn.pragma_update(None, name, value).map_err(backend)?;
    }
    // Query planner stability: a cached statement keeps its plan whatever values are bound.
    // Without it SQLite may mark a statement for re-preparation on every new binding (the
    // reads by id were spending a sixth of their CPU re-parsing SQL).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the database file readable by its owner only, if it does not exist yet (SQLite gives
/// its `-wal` and `-shm` files the database file's permissions). The data directory is private
/// too; this is the second wall.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Backend(Box::new(e))),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the file cannot be opened or migrated;
    /// [`StoreError::SchemaTooNew`] if a newer medvault wrote it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_as(path, Schema::Node)
    }

    /// Opens (creating if needed) an access-log database: the ledger tables only. Every method
    /// of the store that reads or writes records, keys or tokens fails on it.
    ///
    /// # Errors
    /// As [`Self::open`]; [`StoreError::WrongDatabase`] if the file is a node database.
    pub fn open_access_log(path: &Path) -> Result<Self, StoreError> {
        Self::open_as(path, Schema::AccessLog)
    }

    fn open_as(path: &Path, schema: Schema) -> Result<Self, StoreError> {
        let mut conn = open_connection(path, true)?;
        schema::migrate(&mut conn, schema)?;
        if schema == Schema::Node {
            // Index rows an interrupted bulk load staged: searchable from this start on.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(backend)?;
            sql::merge_staged(&tx, None)?;
            tx.commit().map_err(backend)?;
        }
        if schema == Schema::AccessLog {
            // The access log's writer appends (leaves, details, the patient index a run at a
            // time): it needs the right edges and the tree's upper levels, not the node
            // writer's cache. Smaller also means cheaper commits: the writer's cache was seen
            // (gdb, PERFORMANCE.md) holding page 1 048 577, past the file's end, so the end of
            // every write transaction scanned its whole page hash to drop pages beyond the end.
            conn.pragma_update(None, "cache_size", ACCESS_LOG_WRITER_CACHE_KIB)
                .map_err(backend)?;
        }
        // The writer never checkpoints (a checkpoint in the commit path is a latency spike);
        // a background thread does, PASSIVE, so it never blocks writers or readers.
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;")
            .map_err(backend)?;
        let ckpt_conn = open_connection(path, true)?;
        let (stop, stopped) = sync_channel::<()>(1);
        let ckpt = Arc::new(Checkpointing::default());
        let flag = Arc::clone(&ckpt);
        let checkpointer = std::thread::Builder::new()
            .name("medvault-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&ckpt_conn, &stopped, &flag, schema))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let writer = GroupWriter::spawn("medvault-sqlite-writer", SqliteWriter { conn, ckpt })?;
        Ok(Self {
            path: path.to_owned(),
            writer,
            _checkpointer: Checkpointer(Some((stop, checkpointer))),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, false)?,
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
        out
    }
}

/// The background checkpoint thread; dropping it stops the thread, which folds the WAL in.
struct Checkpointer(Option<(SyncSender<()>, JoinHandle<()>)>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.0.take() {
            drop(stop);
            let _ = h.join();
        }
    }
}

/// Folds the whole WAL into the (secure-deleted) database file and truncates it to zero bytes,
/// so a destroyed key's wrapped bytes survive in neither. Retries while readers or the
/// background checkpointer hold the log (SQLite reports that as `busy`, not as an error).
fn truncate_wal(conn: &Connection, ckpt: &Checkpointing) -> Result<(), TruncateError> {
    for _ in 0..200 {
        let busy: i64 = {
            let _running = ckpt
                .lock
                .lock()
                .map_err(|_| TruncateError("checkpoint lock poisoned".into()))?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(|e| TruncateError(e.to_string()))?
        };
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(TruncateError(
        "readers kept the WAL busy for 2 s; run `medvault patient erase` again".into(),
    ))
}

/// Why the WAL could not be truncated after a key was destroyed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("WAL truncation after key destruction failed: {0}")]
struct TruncateError(String);

/// The access log writer's page cache, in KiB (as `PRAGMA cache_size` takes it: negative).
const ACCESS_LOG_WRITER_CACHE_KIB: i64 = -2048;

/// How often the background checkpoint runs.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL frames (1 KiB pages, so about 512 MiB) past which the log is rewound to its start. Loads
/// that leave the background checkpoint time to catch up never get there (SQLite then rewinds
/// the log by itself); a sustained write flood does, and pays a pause of about a second.
const WAL_RESTART_FRAMES: i64 = 512 * 1024;

/// PASSIVE checkpoints never block anyone, but under a steady write load they never catch up
/// with the end of the log, so the WAL would grow without bound. When the log passes
/// [`WAL_RESTART_FRAMES`], the checkpointer raises `rewind`, and the writer — which owns the
/// write lock, so nobody can starve it — runs a RESTART checkpoint between two groups: it copies
/// what the background checkpoints have not yet copied and rewinds the log, whose file is then
/// reused from the start.
fn checkpoint_once(conn: &Connection, ckpt: &Checkpointing) -> rusqlite::Result<()> {
    let log_frames: i64 = {
        // Held while copying, so the writer's RESTART never meets a running PASSIVE checkpoint
        // (SQLite would make it sleep in its busy handler).
        let _running = ckpt
            .lock
            .lock()
            .map_err(|_| rusqlite::Error::InvalidQuery)?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))?
    };
    if log_frames > WAL_RESTART_FRAMES {
        ckpt.rewind.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Shared between the checkpointer and the writer.
#[derive(Default)]
struct Checkpointing {
    /// Set when the log should be rewound by the writer.
    rewind: AtomicBool,
    /// Held by whoever is checkpointing.
    lock: Mutex<()>,
}

/// How long staged index rows may stay unchanged before a running store merges them itself: a
/// bulk load adds to its stage with every file it commits, so a stage that stopped growing
/// this long was left by one that was interrupted.
#[cfg(not(test))]
const ABANDONED_STAGE: std::time::Duration = std::time::Duration::from_secs(30);
#[cfg(test)]
const ABANDONED_STAGE: std::time::Duration = std::time::Duration::from_millis(600);

/// The stage's newest row and since when it has been the newest, as the checkpointer saw it.
type StageWatch = Option<(i64, std::time::Instant)>;

/// Merges staged index rows left by an interrupted bulk load (see [`ABANDONED_STAGE`]), on the
/// checkpointer's connection in a transaction of its own.
fn merge_abandoned_stage(conn: &Connection, watch: &mut StageWatch) -> Result<(), StoreError> {
    let newest: Option<i64> = conn
        .prepare_cached("SELECT max(rowid) FROM idx_staged")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    let Some(newest) = newest else {
        *watch = None;
        return Ok(());
    };
    match *watch {
        Some((seen, since)) if seen == newest => {
            if since.elapsed() < ABANDONED_STAGE {
                return Ok(());
            }
        }
        _ => {
            *watch = Some((newest, std::time::Instant::now()));
            return Ok(());
        }
    }
    *watch = None;
    // In chunks, each its own short transaction: the writer waits for at most one.
    const CHUNK_ROWS: i64 = 50_000;
    let mut total = 0;
    loop {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        let merged = sql::merge_staged(conn, Some(CHUNK_ROWS))
            .and_then(|n| conn.execute_batch("COMMIT").map_err(backend).map(|()| n));
        match merged {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    tracing::info!(
        rows = total,
        "merged the index rows an interrupted import left staged"
    );
    Ok(())
}

fn checkpoint_loop(conn: &Connection, stop: &Receiver<()>, ckpt: &Checkpointing, schema: Schema) {
    let mut watch: StageWatch = None;
    loop {
        match stop.recv_timeout(CHECKPOINT_INTERVAL) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = checkpoint_once(conn, ckpt) {
                    tracing::warn!(error = %e, "background WAL checkpoint failed; retrying");
                }
                if schema == Schema::Node
                    && let Err(e) = merge_abandoned_stage(conn, &mut watch)
                {
                    tracing::warn!(error = %e, "merging staged index rows failed; retrying");
                }
            }
            _ => {
                // Shutting down: fold the WAL into the database file.
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                return;
            }
        }
    }
}

/// The SQLite side of the shared group-commit writer: the write connection, `BEGIN IMMEDIATE`
/// (SQLite's one write lock), a savepoint per op, WAL housekeeping between groups.
struct SqliteWriter {
    conn: Connection,
    ckpt: Arc<Checkpointing>,
}

impl Dialect for SqliteWriter {
    fn begin(&mut self) -> Result<u64, StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(backend)?;
        // The tree size before this group: every committed leaf is already hashed into the tree.
        sql::ledger_size(&self.conn).inspect_err(|_| {
            let _ = self.conn.execute_batch("ROLLBACK");
        })
    }

    fn op(
        &mut self,
        op: &mut dyn FnMut(&mut dyn StoreTx) -> Result<(), StoreError>,
    ) -> Result<OpEffects, StoreError> {
        self.conn.execute_batch("SAVEPOINT op").map_err(backend)?;
        let mut tx = sql::Tx {
            conn: &self.conn,
            shredded: false,
            stage_index: None,
        };
        let result = op(&mut tx);
        let shredded = tx.shredded;
        let end = if result.is_ok() {
            "RELEASE op"
        } else {
            "ROLLBACK TO op; RELEASE op"
        };
        let ended = self.conn.execute_batch(end).map_err(backend);
        result.and(ended)?;
        // The leaves are read back before the commit (SQLite reads are cheap in-process).
        Ok(OpEffects {
            shredded,
            appended: None,
        })
    }

    fn aborted(&mut self) -> bool {
        // SQLite rolls the whole transaction back by itself on disk full or an I/O error.
        self.conn.is_autocommit()
    }

    fn commit(&mut self, nodes: &[NewNode]) -> Result<(), StoreError> {
        let done = sql::put_ledger_nodes(&self.conn, nodes)
            .and_then(|()| self.conn.execute_batch("COMMIT").map_err(backend));
        if done.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        done
    }

    fn abandon(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn read<T>(
        &mut self,
        f: impl FnOnce(&dyn StoreRead) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&sql::Tx {
            conn: &self.conn,
            shredded: false,
            stage_index: None,
        })
    }

    fn shredded(&mut self) -> Result<(), StoreError> {
        // The key is destroyed in the database; only old WAL frames may still hold its wrapped
        // bytes. Say so to the caller rather than claim a clean erasure.
        truncate_wal(&self.conn, &self.ckpt).map_err(|e| {
            tracing::warn!(error = %e, "WAL could not be truncated after a key was destroyed");
            StoreError::Backend(Box::new(e))
        })
    }

    fn after_group(&mut self) {
        if self.ckpt.rewind.swap(false, Ordering::Relaxed) {
            let _running = self.ckpt.lock.lock();
            if let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "WAL rewind failed; will retry");
            }
        }
    }
}

medvault_store::forward_reads!(SqliteStore, crate::sql);
medvault_store::forward_writes!(SqliteStore, crate::sql);

impl SqliteStore {
    fn dump_tables(
        &self,
        tables: &'static [medvault_store::dump::Table],
        sink: &mut medvault_store::dump::Sink<'_>,
    ) -> Result<(), StoreError> {
        // A connection of its own, closed afterwards: its long read transaction never goes
        // back to the pool, whatever happens to the COMMIT.
        let conn = open_connection(&self.path, false)?;
        dump::dump(&conn, tables, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medvault_store::prelude::*;

    #[test]
    fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(0);
        let ran = medvault_store::conformance::run_all(&|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::new(SqliteStore::open(&dir.path().join(format!("db{n}.sqlite"))).unwrap())
        });
        assert_eq!(
            ran,
            medvault_store::conformance::CHECKS.len()
                + medvault_store::conformance::PAIR_CHECKS.len()
        );
        assert_eq!(ran, 19);
    }

    #[test]
    fn staged_index_entries_are_merged_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        medvault_store::conformance::staged_index_entries_become_searchable(&|| {
            Box::new(SqliteStore::open(&path).unwrap())
        });
        let c = Connection::open(&path).unwrap();
        let (staged, indexed): (i64, i64) = c
            .query_row(
                "SELECT (SELECT count(*) FROM idx_staged), (SELECT count(*) FROM idx)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((staged, indexed), (0, 4), "s1, s2, s3 and o1 once each");
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        medvault_store::write_with(&store, |tx| tx.set_meta("k", "v")).unwrap();
        let log = SqliteStore::open_access_log(&dir.path().join("log.sqlite")).unwrap();
        let mut seen = 0;
        for name in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "log.sqlite"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
            seen += 1;
        }
        assert_eq!(seen, 4);
        drop((store, log));
    }

    #[test]
    fn a_running_store_merges_a_stage_that_stopped_growing() {
        use medvault_crypto::BlindValue;
        use medvault_store::IndexQuery;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let value = BlindValue([7; 16]);
        let v = medvault_store::StoredVersion {
            resource_type: "Patient".into(),
            id: "left".into(),
            version: 1,
            last_updated_micros: 1,
            key_name: "Patient/left".into(),
            key_version: 1,
            body: Some(medvault_crypto::Sealed::from_stored(vec![1; 40])),
            shredded: false,
            salt: Some([1; 16]),
            leaf: None,
            expunged: false,
        };
        medvault_store::write_with(&store, move |tx| {
            assert!(tx.stage_new_index_entries(&[]));
            tx.put_version(&v, &[value], b"leaf")
        })
        .unwrap();
        let q = IndexQuery {
            clauses: vec![vec![value]],
            limit: 10,
            ..IndexQuery::new(medvault_core::ResourceType::new("Patient").unwrap())
        };
        assert_eq!(store.search(&q).unwrap().total, 0, "staged");
        let deadline = std::time::Instant::now() + ABANDONED_STAGE * 10;
        while store.search(&q).unwrap().total == 0 {
            assert!(std::time::Instant::now() < deadline, "never merged");
            std::thread::sleep(CHECKPOINT_INTERVAL);
        }
    }

    #[test]
    fn reopen_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let s = medvault_store::conformance::reopen_keeps_data(&|| {
            Box::new(SqliteStore::open(&path).unwrap())
        });
        assert_eq!(
            s.meta("schema_version").unwrap().as_deref(),
            Some(medvault_store::NODE_SCHEMA_VERSION.to_string().as_str())
        );
        assert_eq!(medvault_store::NODE_SCHEMA_VERSION, 19);
    }

    #[test]
    fn tokens_made_before_expiry_existed_expire_30_days_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        {
            // Back to version 12: tokens without expiry, revocation or last use.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(UNDO_V18).unwrap();
            c.execute_batch(
                "ALTER TABLE tokens DROP COLUMN expires;
                 ALTER TABLE tokens DROP COLUMN revoked;
                 ALTER TABLE tokens DROP COLUMN last_used;
                 UPDATE meta SET v = '12' WHERE k = 'schema_version';
                 INSERT INTO tokens (hash, token_id, role, created)
                 VALUES (x'0101010101010101010101010101010101010101010101010101010101010101',
                         'tok_old', 'admin', 1);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        medvault_store::conformance::token_from_v12_expires_in_30_days(&s);
    }

    /// Takes a database at the current version back before v18 (verdicts, responses; and
    /// v19's last sign-ins and registers), for tests that rewind further.
    const UNDO_V18: &str = "ALTER TABLE users DROP COLUMN last_login;
        DROP TABLE register;
        DROP INDEX alerts_by_user;
        ALTER TABLE alerts DROP COLUMN verdict;
        ALTER TABLE alerts DROP COLUMN note;
        DROP TABLE responses;";

    #[test]
    fn versions_move_to_a_rowid_table_with_their_bodies() {
        use medvault_core::{ResourceId, ResourceType};
        use medvault_store::RecordRead as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        let body = vec![0xA5_u8; 700];
        {
            // Back to version 15: versions in a WITHOUT ROWID table, one of them stored there.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(UNDO_V18).unwrap();
            c.execute_batch(
                "DROP TABLE versions;
                 CREATE TABLE versions (
                    rtype TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
                    last_updated INTEGER NOT NULL, key_name TEXT NOT NULL,
                    key_version INTEGER NOT NULL, body BLOB, leaf INTEGER, salt BLOB,
                    expunged INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (rtype, id, version)
                 ) WITHOUT ROWID;
                 CREATE INDEX versions_by_time ON versions (rtype, last_updated);
                 INSERT INTO current (rtype, id, version, last_updated, deleted, key_name)
                 VALUES ('Patient', 'p1', 2, 20, 0, 'patient/p1');
                 UPDATE meta SET v = '15' WHERE k = 'schema_version';",
            )
            .unwrap();
            for v in [1_i64, 2] {
                c.execute(
                    "INSERT INTO versions (rtype, id, version, last_updated, key_name,
                        key_version, body, leaf, salt)
                     VALUES ('Patient', 'p1', ?1, ?2, 'patient/p1', 1, ?3, ?1, ?4)",
                    rusqlite::params![v, v * 10, body, vec![v as u8; 16]],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.meta("schema_version").unwrap(),
            Some(medvault_store::NODE_SCHEMA_VERSION.to_string())
        );
        let (rt, id) = (
            ResourceType::new("Patient").unwrap(),
            ResourceId::new("p1").unwrap(),
        );
        for (asked, expect) in [(None, 2_u64), (Some(1), 1)] {
            let v = s.version(&rt, &id, asked).unwrap().unwrap();
            assert_eq!(v.version, expect);
            assert_eq!(v.body.as_ref().unwrap().as_bytes(), &body[..]);
            assert_eq!(v.salt, Some([expect as u8; 16]));
            assert_eq!(v.leaf, Some(expect));
        }
        let c = Connection::open(&path).unwrap();
        let sql: String = c
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'versions'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
        // The key is still unique.
        assert!(
            c.execute(
                "INSERT INTO versions (rtype, id, version, last_updated, key_name, key_version)
                 VALUES ('Patient', 'p1', 2, 1, 'patient/p1', 1)",
                [],
            )
            .is_err()
        );
    }

    #[test]
    fn connections_get_their_settings() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let get = |c: &Connection, p: &str| -> i64 {
            c.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                .unwrap()
        };
        s.with_conn(|c| {
            assert_eq!(get(c, "mmap_size"), 0);
            assert_eq!(get(c, "query_only"), 1);
            assert_eq!(get(c, "synchronous"), 2, "FULL");
            assert_eq!(get(c, "secure_delete"), 1);
            assert_eq!(get(c, "page_size"), 1024);
            let mode: String = c
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn access_log_database_holds_a_log_and_knows_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let (node, access) = (dir.path().join("node.db"), dir.path().join("access.db"));
        {
            let log = SqliteStore::open_access_log(&access).unwrap();
            let detail = medvault_store::AuditDetail {
                salt: [7; 16],
                sealed: medvault_crypto::Sealed::from_stored(vec![7; 40]),
            };
            let leaf =
                medvault_store::write_with(&log, move |tx| tx.append_audit(&detail, &[7])).unwrap();
            assert_eq!(leaf, 0);
            assert_eq!(log.ledger_size().unwrap(), 1);
            assert!(log.audit_detail(0).unwrap().is_some());
            // Nothing but the log lives there.
            assert!(log.data_key(&medvault_core::KeyName::TENANT).is_err());
        }
        drop(SqliteStore::open(&node).unwrap());
        assert!(matches!(
            SqliteStore::open(&access),
            Err(StoreError::WrongDatabase {
                expected: "medvault-node",
                ..
            })
        ));
        assert!(matches!(
            SqliteStore::open_access_log(&node),
            Err(StoreError::WrongDatabase {
                expected: "medvault-access-log",
                ..
            })
        ));
        let log = SqliteStore::open_access_log(&access).unwrap();
        assert_eq!(log.ledger_size().unwrap(), 1, "reopened with its leaf");
        assert_eq!(
            log.meta("schema_version").unwrap(),
            Some(medvault_store::ACCESS_LOG_SCHEMA_VERSION.to_string())
        );
    }

    #[test]
    fn access_log_patient_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.db");
        let wrote = medvault_store::conformance::access_patient_index(&|| {
            Box::new(SqliteStore::open_access_log(&path).unwrap())
        });
        assert_eq!(wrote, 2 * medvault_store::ACCESS_RUN_LEAVES + 2);
        // A log from before the index (version 3): after the migration it is indexed from
        // its next leaf, and what it held waits for re-indexing.
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE access_patients;
                 DELETE FROM meta WHERE k = 'access_index_from';
                 UPDATE meta SET v = '3' WHERE k = 'schema_version';",
            )
            .unwrap();
        }
        let log = SqliteStore::open_access_log(&path).unwrap();
        let end = Some(wrote.to_string());
        assert_eq!(
            medvault_store::conformance::index_marks(&log),
            [end.clone(), end]
        );
        assert!(log.access_tags(0, 10).unwrap().is_empty());
        drop(log);
        // A version-4 log (rows keyed by tag, written with their leaf): its rows move under
        // their runs, and every leaf it holds counts as indexed.
        let (a, b) = ([0xaa_u8; 16], [0xbb_u8; 16]);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE access_patients;
                 DELETE FROM meta WHERE k = 'access_index_to';
                 UPDATE meta SET v = '0' WHERE k = 'access_index_from';
                 CREATE TABLE access_patients (tag BLOB NOT NULL, leaf INTEGER NOT NULL,
                    PRIMARY KEY (tag, leaf)) WITHOUT ROWID;
                 CREATE INDEX access_patients_by_leaf ON access_patients (leaf);
                 UPDATE meta SET v = '4' WHERE k = 'schema_version';",
            )
            .unwrap();
            for (tag, leaf) in [(&a, 0_i64), (&b, 3), (&a, 3)] {
                c.execute(
                    "INSERT INTO access_patients (tag, leaf) VALUES (?1, ?2)",
                    rusqlite::params![&tag[..], leaf],
                )
                .unwrap();
            }
        }
        let log = SqliteStore::open_access_log(&path).unwrap();
        assert_eq!(
            medvault_store::conformance::index_marks(&log),
            [Some("0".to_owned()), Some(wrote.to_string())]
        );
        let tag = |t: [u8; 16]| medvault_crypto::BlindValue(t);
        assert_eq!(
            log.access_tags(0, 10).unwrap(),
            vec![(0, tag(a)), (3, tag(a)), (3, tag(b))]
        );
        assert_eq!(log.access_leaves(&tag(a), (0, 4), 10).unwrap(), vec![3, 0]);
        assert_eq!(log.access_tags_astray(4).unwrap(), (0, None));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.write(Box::new(|tx| tx.set_meta("schema_version", "999")))
                .unwrap();
        }
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
    }
}
