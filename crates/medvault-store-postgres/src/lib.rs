//! PostgreSQL backend of the medvault `Store`: several medvault processes on one database.
//!
//! - The same tables and schema versions as the SQLite backend, in a PostgreSQL schema of their
//!   own (`medvault` for the node, `medvault_access` for the access log, or `<name>` and
//!   `<name>_access` with `?schema=<name>` in the URL), migrated at open under an advisory lock
//!   so processes starting together migrate once.
//! - One writer thread per process group-commits like the SQLite writer (medvault-store's
//!   [`GroupWriter`], with [`PgWriter`] as its dialect): it drains the queued
//!   [`WriteOp`](medvault_store::WriteOp)s, runs each in its own savepoint, commits once and
//!   then acknowledges them all.
//! - **Sequencing across processes**: every write transaction first takes a transaction-scoped
//!   advisory lock of its schema, then reads the ledger's size from the database and appends.
//!   Whoever holds the lock is the log's sequencer; PostgreSQL releases it at commit, or when
//!   the holder's session dies, so a killed process never blocks the others and its uncommitted
//!   leaves vanish with its transaction (no gap, one order).
//! - A lost connection fails the requests that needed it with [`StoreError::Unavailable`]
//!   (nothing half-written: the transaction is gone) and the next use reconnects.
//! - Readers use a small pool of connections.

mod conn;
mod dump;
mod schema;
mod sql;

pub use schema::Schema;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use medvault_store::group::{Dialect, GroupWriter, NewNode, OpEffects};
use medvault_store::{LogStore, Store, StoreError, StoreRead, StoreTx};

use crate::conn::{Conn, lock_key};

/// Read connections kept open when idle.
const MAX_IDLE_READERS: usize = 16;
/// How long connecting may take before the database counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The schema name used when the URL names none.
pub const DEFAULT_SCHEMA: &str = "medvault";

/// Where a node's data lives in PostgreSQL: a server, a database, and a schema name.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    name: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.describe())
    }
}

/// Why a database URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

impl Target {
    /// Parses `postgres://[user@]host[:port]/database[?schema=NAME&…]`. `schema` (letters,
    /// digits and `_`, at most 40, starting with a letter or `_`) names the PostgreSQL schema
    /// that holds the node's tables, so several nodes can share one database; the other
    /// parameters are libpq's (`connect_timeout`, `application_name`, …).
    ///
    /// # Errors
    /// [`UrlError`] naming what is wrong (never echoing a password).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(UrlError(
                "a database URL starts with postgres:// (e.g. postgres://medvault@db.example/medvault)"
                    .into(),
            ));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut name = DEFAULT_SCHEMA.to_owned();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", v)) => name = v.to_owned(),
                _ => rest.push(pair),
            }
        }
        if !valid_schema_name(&name) {
            return Err(UrlError(format!(
                "schema={name:?} in the database URL: use letters, digits and _ (at most 40, not starting with a digit; not public, information_schema or pg_…)"
            )));
        }
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                UrlError(format!("the database URL is not valid: {e}"))
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("medvault");
        }
        Ok(Self { config, name })
    }

    /// The same server and database with another schema name (tests use one per store).
    #[must_use]
    pub fn with_schema(&self, name: &str) -> Option<Self> {
        valid_schema_name(name).then(|| Self {
            config: self.config.clone(),
            name: name.to_owned(),
        })
    }

    /// The schema name (the node's tables; the access log's are in `<name>_access`).
    pub fn schema_name(&self) -> &str {
        &self.name
    }

    /// `host:port/database schema NAME`, for messages (no user, no password).
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_default();
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{host}:{port}/{} (schema {})",
            self.config.get_dbname().unwrap_or(""),
            self.name
        )
    }

    /// The PostgreSQL schema holding `schema`'s tables.
    fn namespace(&self, schema: Schema) -> String {
        match schema {
            Schema::Node => self.name.clone(),
            Schema::AccessLog => format!("{}_access", self.name),
        }
    }

    /// Whether `schema`'s tables exist and name their node's tenant, asked without opening them
    /// (opening creates and migrates the schema).
    fn has_tenant(&self, schema: Schema) -> Result<bool, StoreError> {
        let namespace = self.namespace(schema);
        let mut c = Conn::connect(&self.config, None)?;
        let table = c.one(
            "SELECT to_regclass($1)::text",
            &[&format!("{namespace}.meta")],
        )?;
        if conn::get::<Option<String>>(&table, 0)?.is_none() {
            return Ok(false);
        }
        // The namespace is a validated name (letters, digits, `_`).
        Ok(c.opt(
            &format!("SELECT v FROM {namespace}.meta WHERE k = 'tenant'"),
            &[],
        )?
        .is_some())
    }

    /// Drops both schemas of this target and everything in them. For tests and `restore`.
    ///
    /// # Errors
    /// [`StoreError`] if the database cannot be reached.
    pub fn drop_all(&self) -> Result<(), StoreError> {
        let mut c = Conn::connect(&self.config, None)?;
        c.batch(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE;",
            self.namespace(Schema::Node),
            self.namespace(Schema::AccessLog)
        ))
    }
}

impl medvault_store::Databases for Target {
    fn describe(&self) -> String {
        Target::describe(self)
    }

    fn node_exists(&self) -> Result<bool, StoreError> {
        self.has_tenant(Schema::Node)
    }

    fn open_node(&self) -> Result<Arc<dyn Store>, StoreError> {
        Ok(Arc::new(PgStore::open(self)?))
    }

    fn access_log_exists(&self) -> Result<bool, StoreError> {
        self.has_tenant(Schema::AccessLog)
    }

    fn open_access_log(&self) -> Result<Arc<dyn LogStore>, StoreError> {
        Ok(Arc::new(PgStore::open_access_log(self)?))
    }

    fn missing_access_log(&self) -> &'static str {
        "schema is empty beside the node's: restore it from backup"
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Letters, digits and `_`, not starting with a digit, at most 40; never a schema PostgreSQL
/// or other applications own (`public`, `information_schema`, `pg_…`): medvault drops its
/// schemas on `--force`.
fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !matches!(name, "public" | "information_schema")
        && !name.starts_with("pg_")
}

/// A medvault database in a PostgreSQL schema.
pub struct PgStore {
    config: tokio_postgres::Config,
    namespace: String,
    writer: GroupWriter,
    readers: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Opens the node's tables in `target` (creating and migrating them if needed).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the server cannot be reached; [`StoreError::SchemaTooNew`]
    /// if a newer medvault migrated it; [`StoreError::WrongDatabase`] if the schema holds
    /// something else.
    pub fn open(target: &Target) -> Result<Self, StoreError> {
        Self::open_as(target, Schema::Node)
    }

    /// Opens the access log's tables in `target`.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_access_log(target: &Target) -> Result<Self, StoreError> {
        Self::open_as(target, Schema::AccessLog)
    }

    fn open_as(target: &Target, schema: Schema) -> Result<Self, StoreError> {
        let namespace = target.namespace(schema);
        let mut conn = Conn::connect(&target.config, Some(&namespace))?;
        schema::migrate(&mut conn, schema, &namespace)?;
        let writer = GroupWriter::spawn(
            "medvault-pg-writer",
            PgWriter {
                config: target.config.clone(),
                namespace: namespace.clone(),
                lock: lock_key("medvault-writer", &namespace),
                conn: Some(conn),
                xid: 0,
                last_ok: false,
                vacuum_due: false,
            },
        )?;
        Ok(Self {
            config: target.config.clone(),
            namespace,
            writer,
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Runs a read on a pooled connection. A pooled connection may have died while idle (the
    /// server restarted, a proxy cut it): a read that fails for that reason is retried once on
    /// a new connection, so the first request after an outage does not fail needlessly.
    fn with_reader<T>(
        &self,
        f: impl Fn(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().ok().and_then(|mut p| p.pop());
        let (mut conn, fresh) = match pooled {
            Some(c) if !c.is_closed() => (c, false),
            _ => (Conn::connect(&self.config, Some(&self.namespace))?, true),
        };
        let mut out = f(&mut conn);
        if !fresh && matches!(out, Err(StoreError::Unavailable(_))) {
            conn = Conn::connect(&self.config, Some(&self.namespace))?;
            out = f(&mut conn);
        }
        let healthy = !conn.is_closed() && !matches!(out, Err(StoreError::Unavailable(_)));
        if healthy
            && let Ok(mut pool) = self.readers.lock()
            && pool.len() < MAX_IDLE_READERS
        {
            pool.push(conn);
        }
        out
    }
}

/// The PostgreSQL side of the shared group-commit writer: its connection (reopened after a
/// loss), the log's advisory lock, savepoints sent ahead with the next statement, and the
/// key table's rewrite after an erasure.
struct PgWriter {
    config: tokio_postgres::Config,
    namespace: String,
    lock: i64,
    conn: Option<Conn>,
    /// The open group's transaction id (to learn a lost COMMIT's outcome).
    xid: i64,
    /// The group's previous op succeeded (its savepoint is still to be released).
    last_ok: bool,
    /// A data key was destroyed and its table not yet rewritten.
    vacuum_due: bool,
}

impl PgWriter {
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("writer lost its connection".into()))
    }

    /// After replying: rewrites the key table without the destroyed key's old row version
    /// (MVCC keeps it until vacuumed). It needs the table to itself for a moment, so it waits
    /// at most a second for readers (a running backup holds it) and is tried again after the
    /// next group otherwise, instead of stalling every reader of keys behind its lock.
    fn vacuum(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let done = conn
            .batch("SET lock_timeout = '1s'")
            .and_then(|()| conn.batch("VACUUM FULL deks"));
        let _ = conn.batch("SET lock_timeout = 0");
        match done {
            Ok(()) => self.vacuum_due = false,
            Err(e) => {
                tracing::warn!(error = %e, "rewriting the key table after an erasure is postponed");
            }
        }
    }
}

impl Dialect for PgWriter {
    /// Begins the group's transaction and takes the log's lock; returns the log's size. The
    /// lock makes this process the log's sequencer until COMMIT, and the size read after taking
    /// it counts every leaf another process committed. A kept connection that died while idle
    /// is replaced once (nothing was sent on it yet).
    fn begin(&mut self) -> Result<u64, StoreError> {
        self.last_ok = false;
        let mut retried = false;
        loop {
            let conn = match self.conn.take().filter(|c| !c.is_closed()) {
                Some(c) => self.conn.insert(c),
                None => {
                    retried = true;
                    self.conn
                        .insert(Conn::connect(&self.config, Some(&self.namespace))?)
                }
            };
            match conn.begin_group(self.lock) {
                Ok((size, xid)) => {
                    self.xid = xid;
                    return Ok(size);
                }
                Err(StoreError::Unavailable(_)) if !retried => {
                    retried = true;
                    self.conn = None;
                }
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    self.conn = None;
                    return Err(e);
                }
            }
        }
    }

    fn op(
        &mut self,
        op: &mut dyn FnMut(&mut dyn StoreTx) -> Result<(), StoreError>,
    ) -> Result<OpEffects, StoreError> {
        let last_ok = std::mem::replace(&mut self.last_ok, false);
        let conn = self.conn()?;
        // The first op's savepoint was made with BEGIN; after a success the next one is made
        // (and the last released) in the same round trip; after a failure the savepoint rolled
        // back to is still there.
        if last_ok {
            // Sent now, answered with the op's first statement: no round trip of its own.
            conn.defer("RELEASE SAVEPOINT op; SAVEPOINT op");
        }
        conn.failed = false;
        let mut tx = sql::Tx::new(conn);
        let mut result = op(&mut tx);
        if result.is_ok() && tx.statement_failed() {
            // It caught a failed statement and went on; PostgreSQL aborted the transaction at
            // that statement, so the op is undone like a failed one.
            result = Err(StoreError::Backend(
                "a write op went on after one of its statements failed".into(),
            ));
        }
        let effects = OpEffects {
            shredded: tx.shredded,
            appended: (!tx.loaded_leaves).then(|| std::mem::take(&mut tx.appended)),
        };
        drop(tx);
        match result {
            Ok(()) => {
                self.last_ok = true;
                Ok(effects)
            }
            Err(StoreError::Unavailable(e)) => Err(StoreError::Unavailable(e)),
            Err(e) => match conn.batch("ROLLBACK TO SAVEPOINT op") {
                Ok(()) => Err(e),
                // The transaction is lost with the connection.
                Err(lost) => Err(StoreError::Unavailable(lost.to_string().into())),
            },
        }
    }

    fn commit(&mut self, nodes: &[NewNode]) -> Result<(), StoreError> {
        let done = self.conn().and_then(|c| c.end_group(nodes));
        match done {
            Ok(()) => Ok(()),
            Err(StoreError::Unavailable(lost)) => {
                // The connection went while the COMMIT was under way: ask a new one whether
                // the transaction committed, so acknowledged and durable stay the same thing.
                self.conn = None;
                let xid = self.xid;
                let asked = Conn::connect(&self.config, Some(&self.namespace))
                    .ok()
                    .and_then(|mut c| {
                        let answer = c.committed(xid);
                        self.conn = Some(c);
                        answer
                    });
                match asked {
                    Some(true) => Ok(()),
                    Some(false) => Err(StoreError::Unavailable(lost)),
                    None => Err(StoreError::Unavailable(
                        format!("{lost}; whether the last commit happened is unknown").into(),
                    )),
                }
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    fn abandon(&mut self) {
        if let Some(c) = self.conn.as_mut()
            && c.batch("ROLLBACK").is_err()
        {
            self.conn = None;
        }
    }

    fn read<T>(
        &mut self,
        f: impl FnOnce(&dyn StoreRead) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let out = f(&sql::Tx::new(self.conn()?));
        if out.is_err() {
            self.conn = None;
        }
        out
    }

    fn shredded(&mut self) -> Result<(), StoreError> {
        self.vacuum_due = true;
        Ok(())
    }

    fn after_group(&mut self) {
        if self.vacuum_due {
            self.vacuum();
        }
    }
}

impl PgStore {
    fn with_conn<T>(
        &self,
        f: impl Fn(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_reader(f)
    }

    fn dump_tables(
        &self,
        tables: &'static [medvault_store::dump::Table],
        sink: &mut medvault_store::dump::Sink<'_>,
    ) -> Result<(), StoreError> {
        // Not through the retrying pool: the sink must see each row once.
        let mut conn = Conn::connect(&self.config, Some(&self.namespace))?;
        // The reader of a dump may pause (a slow disk, a pipe) longer than writers may.
        conn.batch("SET idle_in_transaction_session_timeout = 0")?;
        dump::dump(&mut conn, tables, sink)
    }
}

medvault_store::forward_reads!(PgStore, crate::sql);
medvault_store::forward_writes!(PgStore, crate::sql);

#[cfg(test)]
mod tests {
    use super::*;
    use medvault_store::prelude::*;

    /// The test server, or `None` (and a note saying the tests skipped) when
    /// `MEDVAULT_TEST_POSTGRES_URL` is not set.
    fn server(test: &str) -> Option<Target> {
        match std::env::var("MEDVAULT_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => Some(Target::parse(&url).unwrap()),
            _ => {
                eprintln!("{test}: skipped (set MEDVAULT_TEST_POSTGRES_URL to run it)");
                None
            }
        }
    }

    /// A target in a schema of its own, dropped when the guard goes.
    struct Scratch(Target);

    impl Scratch {
        fn new(server: &Target) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let name = format!(
                "mvtest_{}_{}_{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            );
            let t = server.with_schema(&name).unwrap();
            t.drop_all().unwrap();
            Self(t)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = self.0.drop_all();
        }
    }

    #[test]
    fn urls_name_a_schema_and_never_show_a_password() {
        let t = Target::parse("postgres://u:s3cret@db.example:6543/clinic?schema=site_a").unwrap();
        assert_eq!(t.schema_name(), "site_a");
        assert_eq!(t.namespace(Schema::AccessLog), "site_a_access");
        let shown = format!("{t:?} {}", t.describe());
        assert!(shown.contains("db.example:6543/clinic"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let t = Target::parse("postgresql://localhost/test?connect_timeout=3").unwrap();
        assert_eq!(t.schema_name(), DEFAULT_SCHEMA);
        for bad in [
            "mysql://localhost/x",
            "postgres://localhost/x?schema=Robert');DROP",
            "postgres://localhost/x?schema=1abc",
            "postgres://localhost/x?schema=public",
            "postgres://localhost/x?schema=pg_catalog",
            "postgres://localhost/x?bogus_option=1",
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn conformance_suite() {
        let Some(server) = server("conformance_suite") else {
            return;
        };
        let scratches = Mutex::new(Vec::new());
        let ran = medvault_store::conformance::run_all(&|| {
            let s = Scratch::new(&server);
            let store = PgStore::open(&s.0).unwrap();
            scratches.lock().unwrap().push(s);
            Box::new(store)
        });
        assert_eq!(
            ran,
            medvault_store::conformance::CHECKS.len()
                + medvault_store::conformance::PAIR_CHECKS.len()
        );
        assert_eq!(ran, 19);
    }

    #[test]
    fn access_log_patient_index() {
        let Some(server) = server("access_log_patient_index") else {
            return;
        };
        let s = Scratch::new(&server);
        let wrote = medvault_store::conformance::access_patient_index(&|| {
            Box::new(PgStore::open_access_log(&s.0).unwrap())
        });
        assert_eq!(wrote, 2 * medvault_store::ACCESS_RUN_LEAVES + 2);
        {
            // Back to version 3: a log from before the index.
            let mut c =
                Conn::connect(&s.0.config, Some(&s.0.namespace(Schema::AccessLog))).unwrap();
            c.batch(
                "DROP TABLE access_patients;
                 DELETE FROM meta WHERE k = 'access_index_from';
                 UPDATE meta SET v = '3' WHERE k = 'schema_version';",
            )
            .unwrap();
        }
        let log = PgStore::open_access_log(&s.0).unwrap();
        let end = Some(wrote.to_string());
        assert_eq!(
            medvault_store::conformance::index_marks(&log),
            [end.clone(), end]
        );
        assert!(log.access_tags(0, 10).unwrap().is_empty());
    }

    #[test]
    fn staged_index_entries_are_written_at_once() {
        let Some(server) = server("staged_index_entries_are_written_at_once") else {
            return;
        };
        let s = Scratch::new(&server);
        medvault_store::conformance::staged_index_entries_become_searchable(&|| {
            Box::new(PgStore::open(&s.0).unwrap())
        });
    }

    #[test]
    fn reopen_keeps_data_schema_version_and_kind() {
        let Some(server) = server("reopen_keeps_data_schema_version_and_kind") else {
            return;
        };
        let s = Scratch::new(&server);
        let store = medvault_store::conformance::reopen_keeps_data(&|| {
            Box::new(PgStore::open(&s.0).unwrap())
        });
        // The access log lives beside it, and neither opens as the other.
        let log = PgStore::open_access_log(&s.0).unwrap();
        assert_eq!(
            log.meta("schema_version").unwrap(),
            Some(medvault_store::ACCESS_LOG_SCHEMA_VERSION.to_string())
        );
        assert!(
            log.data_key(&medvault_core::KeyName::TENANT).is_err(),
            "no node tables in the access log"
        );
        drop(log);
        let swapped =
            s.0.with_schema(&format!("{}_access", s.0.schema_name()))
                .unwrap();
        assert!(matches!(
            PgStore::open(&swapped),
            Err(StoreError::WrongDatabase {
                expected: "medvault-node",
                ..
            })
        ));
        store
            .write(Box::new(|tx| tx.set_meta("schema_version", "999")))
            .unwrap();
        drop(store);
        assert!(matches!(
            PgStore::open(&s.0),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
    }

    #[test]
    fn tokens_made_before_expiry_existed_expire_30_days_after_the_upgrade() {
        let Some(server) =
            server("tokens_made_before_expiry_existed_expire_30_days_after_the_upgrade")
        else {
            return;
        };
        let s = Scratch::new(&server);
        drop(PgStore::open(&s.0).unwrap());
        {
            // Back to version 12: tokens without expiry, revocation or last use.
            let mut c = Conn::connect(&s.0.config, Some(&s.0.namespace(Schema::Node))).unwrap();
            c.batch(
                "ALTER TABLE tokens DROP COLUMN expires;
                 ALTER TABLE tokens DROP COLUMN revoked;
                 ALTER TABLE tokens DROP COLUMN last_used;
                 UPDATE meta SET v = '12' WHERE k = 'schema_version';
                 INSERT INTO tokens (hash, token_id, role, created)
                 VALUES (decode(repeat('01', 32), 'hex'), 'tok_old', 'admin', 1);",
            )
            .unwrap();
        }
        let store = PgStore::open(&s.0).unwrap();
        medvault_store::conformance::token_from_v12_expires_in_30_days(&store);
    }

    #[test]
    fn an_unreachable_server_is_unavailable() {
        let t = Target::parse("postgres://medvault@127.0.0.1:1/none?connect_timeout=2").unwrap();
        assert!(matches!(PgStore::open(&t), Err(StoreError::Unavailable(_))));
    }
}
