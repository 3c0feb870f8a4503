//! Versioned schema migrations, applied in order at open.

use medvault_store::StoreError;
use rusqlite::{Connection, OptionalExtension as _};

use crate::backend;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: the foundation.
    "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
     CREATE TABLE keks (version INTEGER PRIMARY KEY, wrapped BLOB NOT NULL);
     CREATE TABLE deks (
        name TEXT PRIMARY KEY,
        key_version INTEGER NOT NULL,
        kek_version INTEGER,
        wrapped BLOB
     ) WITHOUT ROWID;
     CREATE TABLE versions (
        rtype TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
        last_updated INTEGER NOT NULL, key_name TEXT NOT NULL, key_version INTEGER NOT NULL,
        body BLOB,
        PRIMARY KEY (rtype, id, version)
     ) WITHOUT ROWID;
     CREATE INDEX versions_by_time ON versions (rtype, last_updated);
     CREATE TABLE current (
        rid INTEGER PRIMARY KEY,
        rtype TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
        last_updated INTEGER NOT NULL, deleted INTEGER NOT NULL, key_name TEXT NOT NULL,
        shredded INTEGER NOT NULL DEFAULT 0,
        index_values BLOB,
        UNIQUE (rtype, id)
     );
     CREATE INDEX current_by_time ON current (rtype, last_updated);
     CREATE INDEX current_by_key ON current (key_name);
     -- Blind index: a value is keyed per (type, parameter) by its derivation, so the value alone
     -- names its parameter; rows point at current.rid. current.index_values keeps the resource's
     -- own values (concatenated) so they can be removed on update or erasure.
     CREATE TABLE idx (
        value BLOB NOT NULL, rid INTEGER NOT NULL,
        PRIMARY KEY (value, rid)
     ) WITHOUT ROWID;
     CREATE TABLE tokens (
        hash BLOB PRIMARY KEY, token_id TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
        created INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // v2: the ledger (see ARCHITECTURE.md, "The ledger"). Leaves are 0-based; every complete
    // subtree hash is stored, so proofs and tiles are lookups. Versions point at their leaf.
    "ALTER TABLE versions ADD COLUMN leaf INTEGER;
     ALTER TABLE versions ADD COLUMN salt BLOB;
     CREATE TABLE ledger_leaves (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
     CREATE TABLE ledger_nodes (
        level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
     ) WITHOUT ROWID;
     CREATE TABLE ledger_audit (leaf INTEGER PRIMARY KEY, salt BLOB NOT NULL, detail BLOB NOT NULL);
     CREATE TABLE ledger_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);",
    // v3: logs this node witnesses (C2SP tlog-witness): the newest checkpoint cosigned per origin.
    "CREATE TABLE witnessed (
        origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL
     ) WITHOUT ROWID;",
];

pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(backend)?;
    let has_meta: bool = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(backend)?
        > 0;
    let current: i64 = if has_meta {
        tx.query_row("SELECT v FROM meta WHERE k='schema_version'", [], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(backend)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
    } else {
        0
    };
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.execute_batch(sql).map_err(backend)?;
        tx.execute(
            "INSERT INTO meta (k, v) VALUES ('schema_version', ?1)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [(i + 1).to_string()],
        )
        .map_err(backend)?;
    }
    tx.commit().map_err(backend)
}
