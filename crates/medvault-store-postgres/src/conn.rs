//! One PostgreSQL connection as the store uses it: its prepared-statement cache, the driver's
//! futures run to completion on the calling thread, and the mapping of driver errors to
//! [`StoreError`]. The leaf beneath the SQL (`sql`) and the dump/load code (`dump`).

use std::collections::HashMap;

use medvault_store::StoreError;
use medvault_store::group::NewNode;
use medvault_store::rows::Columns;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Row, Statement};

pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// Prepared statements one connection keeps at most (the SQL texts are few; search builds a
/// handful of shapes).
pub(crate) const MAX_STATEMENTS: usize = 256;

/// Maps a driver error: lost or refused connections are [`StoreError::Unavailable`], unique
/// violations and serialization failures [`StoreError::Conflict`]. The message keeps the
/// SQLSTATE and PostgreSQL's message but never its DETAIL (which can quote stored values).
pub(crate) fn pg(e: tokio_postgres::Error) -> StoreError {
    let message = match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    match e.code() {
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Conflict
        }
        Some(c)
            if c.code().starts_with("08")
                || c.code().starts_with("57P")
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT =>
        {
            StoreError::Unavailable(message.into())
        }
        Some(_) => StoreError::Backend(message.into()),
        None => {
            let io = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
            if e.is_closed() || io {
                StoreError::Unavailable(message.into())
            } else {
                StoreError::Backend(message.into())
            }
        }
    }
}

pub(crate) fn get<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(pg)
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A result row lent to the shared decoders of `medvault_store::rows`, converted as
/// tokio-postgres converts it.
pub(crate) struct Cols<'a>(pub(crate) &'a Row);

impl Columns for Cols<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        get(self.0, i)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        get(self.0, i)
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        get(self.0, i)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        get(self.0, i)
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        get(self.0, i)
    }

    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        get(self.0, i)
    }

    fn bool(&self, i: usize) -> Result<bool, StoreError> {
        get(self.0, i)
    }

    fn malformed(&self, _: usize, why: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
        StoreError::Backend(why)
    }

    fn out_of_range(&self, _: usize, _: i64) -> StoreError {
        StoreError::Backend("stored number out of range".into())
    }
}

/// Runs a future to completion on the calling thread, parking it between polls. The driver's
/// futures only talk to a connection task over channels, so they can be polled from any thread,
/// including an async worker of the server's runtime (where a nested runtime's `block_on` would
/// panic); the connection tasks themselves run on [`io_runtime`].
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The runtime that drives every PostgreSQL connection's socket (one thread for the process).
pub(crate) fn io_runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("medvault-pg-io")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Backend(Box::new(e)))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// A statement sent without waiting for its answer (see [`Conn::defer`]).
pub(crate) type Deferred =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// One connection with its prepared statements.
pub(crate) struct Conn {
    client: std::sync::Arc<tokio_postgres::Client>,
    statements: HashMap<String, Statement>,
    /// Statements sent whose answers are not read yet, oldest first.
    deferred: Vec<Deferred>,
    /// Set when a statement failed (cleared by the writer before each op): in PostgreSQL a
    /// failed statement aborts the transaction, so an op that went on as if nothing happened
    /// must be rolled back like a failed one.
    pub(crate) failed: bool,
}

impl Conn {
    /// Connects; with `namespace`, every statement runs in that schema, durably committed, and
    /// a transaction left idle (a stopped process holding the writer's lock) ends after a minute.
    pub(crate) fn connect(
        config: &tokio_postgres::Config,
        namespace: Option<&str>,
    ) -> Result<Self, StoreError> {
        let mut config = config.clone();
        // Notices ("schema already exists, skipping") are not worth a log line.
        let mut options = config.get_options().unwrap_or("").to_owned();
        options.push_str(" -c client_min_messages=warning");
        if let Some(ns) = namespace {
            options.push_str(&format!(
                " -c search_path={ns} -c synchronous_commit=on \
                  -c idle_in_transaction_session_timeout=60000"
            ));
        }
        config.options(options.trim());
        let rt = io_runtime()?;
        let connecting = rt.spawn(async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = block_on(connecting)
            .map_err(|e| StoreError::Backend(Box::new(e)))?
            .map_err(|e| {
                // Refused credentials or a missing database are configuration, not an outage.
                match pg(e) {
                    StoreError::Unavailable(m) => StoreError::Unavailable(m),
                    other => StoreError::Backend(format!("cannot connect: {other:#}").into()),
                }
            })?;
        Ok(Self {
            client: std::sync::Arc::new(client),
            statements: HashMap::new(),
            deferred: Vec::new(),
            failed: false,
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Sends `sql` (simple statements, no result rows) now and reads its answer with the next
    /// call that waits for one, saving a round trip. The connection answers in order, so the
    /// statement runs before anything sent after it; its failure is reported by that next call.
    pub(crate) fn defer(&mut self, sql: &'static str) {
        let client = std::sync::Arc::clone(&self.client);
        let mut fut: Deferred = Box::pin(async move { client.batch_execute(sql).await });
        // The first poll puts the message on the connection's queue.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(result) = fut.as_mut().poll(&mut cx) {
            fut = Box::pin(std::future::ready(result));
        }
        self.deferred.push(fut);
    }

    /// Waits for `fut` and for every deferred statement; a deferred statement's failure comes
    /// first (what followed it failed because of it).
    fn wait<T>(
        &mut self,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        let deferred = std::mem::take(&mut self.deferred);
        let settle = async move {
            let mut first = None;
            for d in deferred {
                if let Err(e) = d.await {
                    first.get_or_insert(e);
                }
            }
            first
        };
        let (failed, result) = block_on(async { tokio::join!(settle, fut) });
        let out = match failed {
            Some(e) => Err(pg(e)),
            None => result.map_err(pg),
        };
        self.failed |= out.is_err();
        out
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let client = std::sync::Arc::clone(&self.client);
        let s = self.wait(client.prepare(sql))?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, StoreError> {
        let s = self.statement(sql)?;
        let client = std::sync::Arc::clone(&self.client);
        self.wait(client.query(&s, params))
    }

    /// Two queries in one round trip (pipelined), e.g. a count and a page.
    pub(crate) fn query_two(
        &mut self,
        first: (&str, &[Param<'_>]),
        second: (&str, &[Param<'_>]),
    ) -> Result<(Vec<Row>, Vec<Row>), StoreError> {
        let (s1, s2) = (self.statement(first.0)?, self.statement(second.0)?);
        let client = std::sync::Arc::clone(&self.client);
        self.wait(async {
            let (a, b) = tokio::join!(client.query(&s1, first.1), client.query(&s2, second.1));
            Ok((a?, b?))
        })
    }

    pub(crate) fn opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub(crate) fn one(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Row, StoreError> {
        self.opt(sql, params)?
            .ok_or_else(|| StoreError::Backend("query returned no row".into()))
    }

    pub(crate) fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let s = self.statement(sql)?;
        let client = std::sync::Arc::clone(&self.client);
        self.wait(client.execute(&s, params))
    }

    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let client = std::sync::Arc::clone(&self.client);
        self.wait(client.batch_execute(sql))
    }

    /// Begins a writer's transaction in one round trip (the statements pipelined): BEGIN (READ
    /// COMMITTED whatever the server's default, so statements after the lock see what others
    /// committed before it), the log's advisory lock, the log's size read under it, the
    /// transaction's id (to learn a lost COMMIT's outcome), and the first op's savepoint.
    pub(crate) fn begin_group(&mut self, lock: i64) -> Result<(u64, i64), StoreError> {
        let locking = self.statement("SELECT pg_advisory_xact_lock($1), txid_current()")?;
        let sizing = self.statement("SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_leaves")?;
        self.defer("BEGIN ISOLATION LEVEL READ COMMITTED");
        let client = std::sync::Arc::clone(&self.client);
        let lock_params: [Param<'_>; 1] = [&lock];
        let (size, xid) = self.wait(async {
            let (locked, size) = tokio::join!(
                client.query_one(&locking, &lock_params),
                client.query_one(&sizing, &[]),
            );
            let xid = locked?.try_get::<_, i64>(1)?;
            Ok((size?.try_get::<_, i64>(0)?, xid))
        })?;
        self.defer("SAVEPOINT op");
        Ok((to_u64(size), xid))
    }

    /// Whether the transaction `xid` committed, asked on a new connection after the one that
    /// sent its COMMIT was lost: `Some(true)` committed, `Some(false)` not, `None` unknown.
    pub(crate) fn committed(&mut self, xid: i64) -> Option<bool> {
        let row = self.opt("SELECT txid_status($1)", &[&xid]).ok().flatten()?;
        match row
            .try_get::<_, Option<String>>(0)
            .ok()
            .flatten()
            .as_deref()
        {
            Some("committed") => Some(true),
            Some("aborted") => Some(false),
            _ => None,
        }
    }

    /// Stores the group's new tree nodes and commits, in one round trip. A failure before the
    /// COMMIT turns it into a rollback (which PostgreSQL reports as success), so every result
    /// is checked.
    pub(crate) fn end_group(&mut self, nodes: &[NewNode]) -> Result<(), StoreError> {
        // As the columns of the insert: levels, indexes, hashes.
        let levels: Vec<i64> = nodes.iter().map(|(l, _, _)| i64::from(*l)).collect();
        let idxs: Vec<i64> = nodes.iter().map(|(_, i, _)| to_i64(*i)).collect();
        let hashes: Vec<&[u8]> = nodes.iter().map(|(_, _, h)| &h[..]).collect();
        let inserting = self.statement(
            "INSERT INTO ledger_nodes (level, idx, hash)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
        )?;
        let client = std::sync::Arc::clone(&self.client);
        let node_params: [Param<'_>; 3] = [&levels, &idxs, &hashes];
        self.wait(async {
            let (inserted, committed) = tokio::join!(
                client.execute(&inserting, &node_params),
                client.batch_execute("COMMIT"),
            );
            inserted?;
            committed
        })
    }
}

/// A 64-bit advisory-lock key for `what` in `namespace` (FNV-1a: stable across processes and
/// builds, unlike `std`'s hasher).
pub(crate) fn lock_key(what: &str, namespace: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes().chain([0]).chain(namespace.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}
