//! SQLite backend of the medvault `Store`: the embedded default.
//!
//! - WAL journal, `synchronous=FULL`: a write is acknowledged only after its commit reached the
//!   disk, so it survives `kill -9` and power loss.
//! - One writer thread owns the write connection and group-commits: it drains every queued
//!   [`WriteOp`], runs each inside its own savepoint, commits once and then acknowledges them all.
//!   One fsync serves many concurrent clients; an op that fails is rolled back alone.
//! - Readers use a small pool of read-only connections (WAL lets them run beside the writer).
//! - `secure_delete=ON`, and a WAL checkpoint after destroying a key, so a shredded data key's
//!   wrapped bytes do not linger in free pages or the WAL.

mod dump;
mod schema;
mod sql;

pub use schema::Schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use medvault_crypto::{BlindValue, WrappedKey};
use medvault_ledger::{Frontier, Hash};
use medvault_store::{
    AccessTokenRow, AuditDetail, ClientRow, CurrentMeta, DataKeyRow, IndexQuery, SearchPage,
    SessionRow, Store, StoreError, StoreRead, StoredVersion, TokenRow, UserRow, WriteDone, WriteOp,
};
use rusqlite::Connection;

/// Ops one group commit takes at most.
const MAX_GROUP: usize = 128;
/// Read connections kept open when idle.
const MAX_IDLE_READERS: usize = 64;
/// How long a connection waits for another process's lock (e.g. the CLI) before failing.
const BUSY_TIMEOUT_MILLIS: u64 = 10_000;

pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict;
    }
    StoreError::Backend(Box::new(e))
}

struct Job {
    op: WriteOp,
    reply: WriteDone,
}

/// A medvault database in one SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    sender: Option<SyncSender<Job>>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Option<(SyncSender<()>, JoinHandle<()>)>,
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
            .spawn(move || checkpoint_loop(&ckpt_conn, &stopped, &flag))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let frontier = sql::load_frontier(&conn)?;
        let (sender, receiver) = sync_channel::<Job>(1024);
        let writer = std::thread::Builder::new()
            .name("medvault-sqlite-writer".into())
            .spawn(move || writer_loop(conn, &receiver, &ckpt, frontier))
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self {
            path: path.to_owned(),
            sender: Some(sender),
            writer: Some(writer),
            checkpointer: Some((stop, checkpointer)),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn with_reader<T>(
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

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        if let Some((stop, h)) = self.checkpointer.take() {
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

fn checkpoint_loop(conn: &Connection, stop: &Receiver<()>, ckpt: &Checkpointing) {
    loop {
        match stop.recv_timeout(CHECKPOINT_INTERVAL) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = checkpoint_once(conn, ckpt) {
                    tracing::warn!(error = %e, "background WAL checkpoint failed; retrying");
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

fn writer_loop(
    conn: Connection,
    receiver: &Receiver<Job>,
    ckpt: &Checkpointing,
    mut frontier: Frontier,
) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) =
            jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        let results = run_group(&conn, ops, ckpt, &mut frontier);
        for (reply, result) in replies.into_iter().zip(results) {
            reply(result);
        }
        if ckpt.rewind.swap(false, Ordering::Relaxed) {
            let _running = ckpt.lock.lock();
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "WAL rewind failed; will retry");
            }
        }
    }
}

/// Runs a group of ops in one transaction, each in its own savepoint, and commits once.
fn run_group(
    conn: &Connection,
    ops: Vec<WriteOp>,
    ckpt: &Checkpointing,
    frontier: &mut Frontier,
) -> Vec<Result<(), StoreError>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = e.to_string();
        return ops
            .iter()
            .map(|_| Err(StoreError::Backend(msg.clone().into())))
            .collect();
    }
    // The tree size before this group: every committed leaf is already hashed into the tree.
    let committed = match sql::ledger_size(conn) {
        Ok(n) => n,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let msg = e.to_string();
            return ops
                .iter()
                .map(|_| Err(StoreError::Backend(msg.clone().into())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(ops.len());
    let mut shred = false;
    for op in ops {
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back by itself (disk full, I/O error): the
            // ops already run are gone, and running more would commit them one by one.
            results.push(Err(StoreError::Backend(
                "transaction aborted by the database".into(),
            )));
            continue;
        }
        let result = conn
            .execute_batch("SAVEPOINT op")
            .map_err(backend)
            .and_then(|()| {
                let mut tx = sql::Tx {
                    conn,
                    shredded: false,
                };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(&mut tx)))
                    .unwrap_or_else(|_| Err(StoreError::Backend("write op panicked".into())));
                shred |= r.is_ok() && tx.shredded;
                r
            });
        let end = if result.is_ok() {
            conn.execute_batch("RELEASE op")
        } else {
            conn.execute_batch("ROLLBACK TO op; RELEASE op")
        };
        results.push(match end {
            Ok(()) => result,
            Err(e) => result.and(Err(backend(e))),
        });
    }
    if conn.is_autocommit() {
        return results
            .into_iter()
            .map(|r| {
                r.and(Err(StoreError::Backend(
                    "transaction aborted by the database".into(),
                )))
            })
            .collect();
    }
    // Hash the group's ledger leaves into the tree inside the same transaction, on a copy of
    // the frontier that replaces the real one only once the commit succeeded.
    let mut next = frontier.clone();
    let done = sql::integrate(conn, &mut next, committed)
        .and_then(|()| conn.execute_batch("COMMIT").map_err(backend));
    if let Err(e) = done {
        let _ = conn.execute_batch("ROLLBACK");
        if let Ok(f) = sql::load_frontier(conn) {
            *frontier = f;
        }
        let msg = e.to_string();
        return results
            .into_iter()
            .map(|r| r.and(Err(StoreError::Backend(msg.clone().into()))))
            .collect();
    }
    *frontier = next;
    if shred && let Err(e) = truncate_wal(conn, ckpt) {
        // The key is destroyed in the database; only old WAL frames may still hold its wrapped
        // bytes. Say so to the caller rather than claim a clean erasure.
        tracing::warn!(error = %e, "WAL could not be truncated after a key was destroyed");
        return results
            .into_iter()
            .map(|r| r.and(Err(StoreError::Backend(Box::new(e.clone())))))
            .collect();
    }
    results
}

impl StoreRead for SqliteStore {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with_reader(|c| sql::meta(c, key))
    }
    fn keks(&self) -> Result<Vec<(u32, WrappedKey)>, StoreError> {
        self.with_reader(sql::keks)
    }
    fn data_key(&self, name: &str) -> Result<Option<DataKeyRow>, StoreError> {
        self.with_reader(|c| sql::data_key(c, name))
    }
    fn current(&self, rt: &str, id: &str) -> Result<Option<CurrentMeta>, StoreError> {
        self.with_reader(|c| sql::current(c, rt, id))
    }
    fn version(
        &self,
        rt: &str,
        id: &str,
        v: Option<u64>,
    ) -> Result<Option<StoredVersion>, StoreError> {
        self.with_reader(|c| sql::version(c, rt, id, v))
    }
    fn history(
        &self,
        rt: &str,
        id: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<SearchPage, StoreError> {
        self.with_reader(|c| sql::history(c, rt, id, offset, limit))
    }
    fn search(&self, q: &IndexQuery) -> Result<SearchPage, StoreError> {
        self.with_reader(|c| sql::search(c, q))
    }
    fn ledger_size(&self) -> Result<u64, StoreError> {
        self.with_reader(sql::ledger_size)
    }
    fn ledger_nodes(&self, level: u8, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        self.with_reader(|c| sql::ledger_nodes(c, level, start, count))
    }
    fn ledger_entries(&self, start: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.with_reader(|c| sql::ledger_entries(c, start, count))
    }
    fn audit_detail(&self, leaf: u64) -> Result<Option<AuditDetail>, StoreError> {
        self.with_reader(|c| sql::audit_detail(c, leaf))
    }
    fn checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>, StoreError> {
        self.with_reader(|c| sql::checkpoint(c, size))
    }
    fn witnessed(&self, origin: &str) -> Result<Option<(u64, Hash)>, StoreError> {
        self.with_reader(|c| sql::witnessed(c, origin))
    }
    fn ledger_nodes_at(&self, keys: &[(u8, u64)]) -> Result<Vec<Option<Hash>>, StoreError> {
        self.with_reader(|c| sql::ledger_nodes_at(c, keys))
    }
    fn audit_details(&self, start: u64, count: u64) -> Result<Vec<(u64, AuditDetail)>, StoreError> {
        self.with_reader(|c| sql::audit_details(c, start, count))
    }
    fn versions_after(
        &self,
        after: Option<(&str, &str, u64)>,
        limit: u64,
    ) -> Result<Vec<StoredVersion>, StoreError> {
        self.with_reader(|c| sql::versions_after(c, after, limit))
    }
    fn amendments_after(
        &self,
        after: Option<(&str, &str, u64, u32)>,
        limit: u64,
    ) -> Result<Vec<medvault_store::Amendment>, StoreError> {
        self.with_reader(|c| sql::amendments_after(c, after, limit))
    }
    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        self.with_reader(|c| sql::token(c, hash))
    }
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.with_reader(sql::tokens)
    }
    fn user(&self, id: &str) -> Result<Option<UserRow>, StoreError> {
        self.with_reader(|c| sql::user(c, id))
    }
    fn user_by_name(&self, name_index: &BlindValue) -> Result<Option<UserRow>, StoreError> {
        self.with_reader(|c| sql::user_by_name(c, name_index))
    }
    fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        self.with_reader(sql::users)
    }
    fn session(&self, hash: &[u8; 32]) -> Result<Option<SessionRow>, StoreError> {
        self.with_reader(|c| sql::session(c, hash))
    }
    fn recovery_codes_left(&self, user_id: &str) -> Result<u64, StoreError> {
        self.with_reader(|c| sql::recovery_codes_left(c, user_id))
    }
    fn break_glass(
        &self,
        user_id: &str,
        patient: &str,
        now_micros: i64,
    ) -> Result<Option<medvault_store::BreakGlassRow>, StoreError> {
        self.with_reader(|c| sql::break_glass(c, user_id, patient, now_micros))
    }
    fn alerts(&self, open_only: bool) -> Result<Vec<medvault_store::AlertRow>, StoreError> {
        self.with_reader(|c| sql::alerts(c, open_only))
    }
    fn client(&self, client_id: &str) -> Result<Option<ClientRow>, StoreError> {
        self.with_reader(|c| sql::client(c, client_id))
    }
    fn passkeys(
        &self,
        user_id: &str,
    ) -> Result<Vec<(Vec<u8>, medvault_crypto::Sealed)>, StoreError> {
        self.with_reader(|c| sql::passkeys(c, user_id))
    }
    fn grant(&self, hash: &[u8; 32]) -> Result<Option<medvault_store::GrantRow>, StoreError> {
        self.with_reader(|c| sql::grant(c, hash))
    }
    fn clients(&self) -> Result<Vec<ClientRow>, StoreError> {
        self.with_reader(sql::clients)
    }
    fn peer(&self, node: &str) -> Result<Option<medvault_store::PeerRow>, StoreError> {
        self.with_reader(|c| sql::peer(c, node))
    }
    fn peers(&self) -> Result<Vec<medvault_store::PeerRow>, StoreError> {
        self.with_reader(sql::peers)
    }
    fn share_receipt(&self, sender: &str, bundle_id: &str) -> Result<Option<String>, StoreError> {
        self.with_reader(|c| sql::share_receipt(c, sender, bundle_id))
    }
    fn access_token(&self, hash: &[u8; 32]) -> Result<Option<AccessTokenRow>, StoreError> {
        self.with_reader(|c| sql::access_token(c, hash))
    }
}

impl Store for SqliteStore {
    fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let (reply, wait) = sync_channel(1);
        self.submit(
            op,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        );
        wait.recv()
            .map_err(|_| StoreError::Backend("writer thread has stopped".into()))?
    }

    fn submit(&self, op: WriteOp, done: WriteDone) {
        let Some(sender) = self.sender.as_ref() else {
            return done(Err(StoreError::Backend("store is shutting down".into())));
        };
        if let Err(std::sync::mpsc::SendError(job)) = sender.send(Job { op, reply: done }) {
            (job.reply)(Err(StoreError::Backend("writer thread has stopped".into())));
        }
    }

    fn data_key_names(&self) -> Result<Vec<String>, StoreError> {
        self.with_reader(sql::data_key_names)
    }

    fn dump(
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
        assert_eq!(ran, 15);
    }

    #[test]
    fn reopen_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let audit = |s: &SqliteStore, n: u8| {
            let detail = medvault_store::AuditDetail {
                salt: [n; 16],
                sealed: medvault_crypto::Sealed::from_stored(vec![n; 40]),
            };
            s.write(Box::new(move |tx| {
                tx.append_audit(&detail, &[n]).map(|_| ())
            }))
            .unwrap();
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.write(Box::new(|tx| tx.set_meta("tenant", "t"))).unwrap();
            for n in 0..5 {
                audit(&s, n);
            }
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.meta("tenant").unwrap().as_deref(), Some("t"));
        assert_eq!(s.meta("schema_version").unwrap().as_deref(), Some("13"));
        assert_eq!(medvault_store::NODE_SCHEMA_VERSION, 13);
        // The writer resumes the tree where it stopped.
        audit(&s, 5);
        let mut want = medvault_ledger::MemoryTree::new();
        for n in 0..6u8 {
            want.push(medvault_ledger::leaf_hash(&[n]));
        }
        let got = medvault_ledger::root(&medvault_store::LedgerNodes(&s), 6).unwrap();
        assert_eq!(got, want.root());
    }

    #[test]
    fn tokens_made_before_expiry_existed_expire_30_days_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(SqliteStore::open(&path).unwrap());
        {
            // Back to version 12: tokens without expiry, revocation or last use.
            let c = Connection::open(&path).unwrap();
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
        assert_eq!(s.meta("schema_version").unwrap().as_deref(), Some("13"));
        let t = s.token(&[1; 32]).unwrap().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let in_30_days = i64::try_from(now + 30 * 86_400).unwrap() * 1_000_000;
        assert!(
            (t.expires_micros - in_30_days).abs() < 3_600_000_000,
            "{t:?}"
        );
        assert_eq!((t.revoked_micros, t.last_used_micros), (None, None));
    }

    #[test]
    fn connections_get_their_settings() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("db.sqlite")).unwrap();
        let get = |c: &Connection, p: &str| -> i64 {
            c.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
                .unwrap()
        };
        s.with_reader(|c| {
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
            assert!(log.data_key("@tenant").is_err());
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
