//! Versioned schema migrations, applied in order at open, under an advisory lock so that
//! processes starting together migrate once.
//!
//! Version numbers are the SQLite backend's: a schema at version N holds the same tables and
//! meanings on both backends (so `medvault migrate` can refuse a mismatch). PostgreSQL support
//! began at version 10, so its first migration creates version 10 in one step; later versions
//! add a migration to both lists.

use medvault_store::StoreError;

use crate::conn::{Conn, lock_key};

pub use medvault_store::Schema;

/// Text columns that are keys or sort keys use the "C" collation: byte order, as in SQLite,
/// whatever the database's locale.
macro_rules! log_tables {
    () => {
        "CREATE TABLE ledger_leaves (idx BIGINT PRIMARY KEY, entry BYTEA NOT NULL);
         CREATE TABLE ledger_nodes (
            level BIGINT NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL,
            PRIMARY KEY (level, idx)
         );
         CREATE TABLE ledger_audit (
            leaf BIGINT PRIMARY KEY, salt BYTEA NOT NULL, detail BYTEA NOT NULL
         );
         CREATE TABLE ledger_checkpoints (size BIGINT PRIMARY KEY, note TEXT NOT NULL);
         CREATE TABLE witnessed (
            origin TEXT COLLATE \"C\" PRIMARY KEY, size BIGINT NOT NULL, root BYTEA NOT NULL,
            note TEXT NOT NULL
         );"
    };
}

macro_rules! meta_table {
    () => {
        "CREATE TABLE meta (k TEXT COLLATE \"C\" PRIMARY KEY, v TEXT NOT NULL);"
    };
}

const NODE_MIGRATIONS: &[(i64, &str)] = &[
    (
        10,
        concat!(
            meta_table!(),
            log_tables!(),
            "CREATE TABLE keks (version BIGINT PRIMARY KEY, wrapped BYTEA NOT NULL);
     CREATE TABLE deks (
        name TEXT COLLATE \"C\" PRIMARY KEY, key_version BIGINT NOT NULL, kek_version BIGINT,
        wrapped BYTEA
     );
     CREATE TABLE versions (
        rtype TEXT COLLATE \"C\" NOT NULL, id TEXT COLLATE \"C\" NOT NULL,
        version BIGINT NOT NULL, last_updated BIGINT NOT NULL,
        key_name TEXT COLLATE \"C\" NOT NULL, key_version BIGINT NOT NULL, body BYTEA,
        salt BYTEA, leaf BIGINT,
        PRIMARY KEY (rtype, id, version)
     );
     CREATE INDEX versions_by_time ON versions (rtype, last_updated);
     CREATE TABLE current (
        rid BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        rtype TEXT COLLATE \"C\" NOT NULL, id TEXT COLLATE \"C\" NOT NULL,
        version BIGINT NOT NULL, last_updated BIGINT NOT NULL, deleted BOOLEAN NOT NULL,
        key_name TEXT COLLATE \"C\" NOT NULL, shredded BOOLEAN NOT NULL DEFAULT FALSE,
        UNIQUE (rtype, id)
     );
     CREATE INDEX current_by_time ON current (rtype, last_updated);
     CREATE INDEX current_by_key ON current (key_name);
     -- Blind index: a value names its (type, parameter) by its derivation; rows point at
     -- current.rid.
     CREATE TABLE idx (value BYTEA NOT NULL, rid BIGINT NOT NULL, PRIMARY KEY (value, rid));
     CREATE INDEX idx_by_rid ON idx (rid);
     CREATE TABLE tokens (
        hash BYTEA PRIMARY KEY, token_id TEXT NOT NULL UNIQUE, role TEXT NOT NULL,
        created BIGINT NOT NULL
     );
     CREATE TABLE users (
        id TEXT COLLATE \"C\" PRIMARY KEY, name_index BYTEA NOT NULL UNIQUE,
        name_sealed BYTEA NOT NULL, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        disabled BOOLEAN NOT NULL, created BIGINT NOT NULL, totp BYTEA, totp_pending BYTEA,
        totp_last_step BIGINT, failed_logins BIGINT NOT NULL, locked_until BIGINT NOT NULL,
        patient_id TEXT, practitioner TEXT
     );
     CREATE TABLE recovery_codes (
        user_id TEXT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (user_id, hash)
     );
     CREATE TABLE sessions (
        hash BYTEA PRIMARY KEY, session_id TEXT NOT NULL, user_id TEXT NOT NULL,
        aal BIGINT NOT NULL, created BIGINT NOT NULL, last_seen BIGINT NOT NULL,
        expires BIGINT NOT NULL
     );
     CREATE INDEX sessions_by_user ON sessions (user_id);
     CREATE TABLE oauth_clients (
        client_id TEXT COLLATE \"C\" PRIMARY KEY, name TEXT NOT NULL, jwks TEXT NOT NULL,
        scopes TEXT NOT NULL, disabled BOOLEAN NOT NULL, created BIGINT NOT NULL,
        redirect_uris TEXT NOT NULL DEFAULT ''
     );
     CREATE TABLE oauth_tokens (
        hash BYTEA PRIMARY KEY, client_id TEXT NOT NULL, scopes TEXT NOT NULL,
        issued BIGINT NOT NULL, expires BIGINT NOT NULL, user_id TEXT, family TEXT
     );
     CREATE INDEX oauth_tokens_by_expiry ON oauth_tokens (expires);
     CREATE INDEX oauth_tokens_by_family ON oauth_tokens (family);
     CREATE TABLE oauth_jti (
        client_id TEXT NOT NULL, jti TEXT NOT NULL, expires BIGINT NOT NULL,
        PRIMARY KEY (client_id, jti)
     );
     CREATE INDEX oauth_jti_by_expiry ON oauth_jti (expires);
     CREATE TABLE passkeys (
        credential_id BYTEA PRIMARY KEY, user_id TEXT NOT NULL, passkey BYTEA NOT NULL,
        created BIGINT NOT NULL
     );
     CREATE INDEX passkeys_by_user ON passkeys (user_id, created);
     CREATE TABLE oauth_grants (
        hash BYTEA PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL,
        user_id TEXT NOT NULL, scopes TEXT NOT NULL, redirect_uri TEXT NOT NULL,
        code_challenge TEXT NOT NULL, family TEXT NOT NULL, expires BIGINT NOT NULL,
        used BOOLEAN NOT NULL
     );
     CREATE INDEX oauth_grants_by_family ON oauth_grants (family);
     CREATE TABLE break_glass (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, patient TEXT NOT NULL,
        reason BYTEA NOT NULL, opened BIGINT NOT NULL, expires BIGINT NOT NULL
     );
     CREATE INDEX break_glass_by_user ON break_glass (user_id, patient, expires);
     CREATE TABLE alerts (
        id TEXT COLLATE \"C\" PRIMARY KEY, kind TEXT NOT NULL, at BIGINT NOT NULL,
        user_id TEXT NOT NULL, patient TEXT, detail BYTEA NOT NULL, acknowledged_by TEXT,
        acknowledged BIGINT
     );
     CREATE INDEX alerts_by_time ON alerts (at);"
        ),
    ),
    // v11: peer nodes registered for sealed sharing, their documents (public keys) pinned.
    (
        11,
        "CREATE TABLE peers (
        node TEXT COLLATE \"C\" PRIMARY KEY, fingerprint TEXT NOT NULL, url TEXT NOT NULL,
        document TEXT NOT NULL, organization TEXT, registered BIGINT NOT NULL,
        registered_by TEXT NOT NULL
     );
     CREATE TABLE share_receipts (
        sender TEXT NOT NULL, bundle_id TEXT NOT NULL, receipt TEXT NOT NULL,
        expires BIGINT NOT NULL, PRIMARY KEY (sender, bundle_id)
     );
     CREATE INDEX share_receipts_by_expiry ON share_receipts (expires);",
    ),
    // v12: amended versions and what each was committed as before.
    (
        12,
        "ALTER TABLE versions ADD COLUMN expunged BOOLEAN NOT NULL DEFAULT FALSE;
     CREATE TABLE amendments (
        rtype TEXT COLLATE \"C\" NOT NULL, id TEXT COLLATE \"C\" NOT NULL,
        version BIGINT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, at BIGINT NOT NULL,
        last_updated BIGINT NOT NULL, key_name TEXT COLLATE \"C\" NOT NULL,
        key_version BIGINT NOT NULL, digest BYTEA, leaf BIGINT NOT NULL, salt BYTEA NOT NULL,
        PRIMARY KEY (rtype, id, version, seq)
     );",
    ),
    // v13: API tokens expire, can be revoked and record their last use. Tokens made before
    // expire 30 days after the upgrade (they had no expiry).
    (
        13,
        "ALTER TABLE tokens ADD COLUMN expires BIGINT NOT NULL DEFAULT 0;
     ALTER TABLE tokens ADD COLUMN revoked BIGINT;
     ALTER TABLE tokens ADD COLUMN last_used BIGINT;
     UPDATE tokens SET expires = (extract(epoch FROM now())::BIGINT + 2592000) * 1000000;",
    ),
    // v14: a type's current versions in creation order, so a search walks them a page at a
    // time (`scan`) instead of sorting every match.
    (
        14,
        "CREATE INDEX IF NOT EXISTS current_by_type ON current (rtype, rid);",
    ),
    // v15: tree nodes are stored only at the tile levels (every 8th); the others are hashed up
    // from them when needed.
    (15, KEEP_TILE_LEVELS),
    // v16: SQLite moved its versions into a rowid table so bodies stay on their page; a
    // PostgreSQL heap row already sits apart from its index, so nothing changes here.
    (16, "SELECT 1"),
    // v17: SQLite stages a bulk load's index entries; PostgreSQL writes them as usual.
    (17, "SELECT 1"),
    // v18: the privacy officer's verdicts on alerts; Sentinel's automatic responses.
    (
        18,
        "ALTER TABLE alerts ADD COLUMN IF NOT EXISTS verdict TEXT;
     ALTER TABLE alerts ADD COLUMN IF NOT EXISTS note BYTEA;
     CREATE INDEX IF NOT EXISTS alerts_by_user ON alerts (user_id, at);
     CREATE TABLE IF NOT EXISTS responses (
        id TEXT COLLATE \"C\" PRIMARY KEY, alert_id TEXT NOT NULL, action TEXT NOT NULL,
        subject TEXT NOT NULL, at BIGINT NOT NULL, until BIGINT, dry_run BOOLEAN NOT NULL,
        detail TEXT NOT NULL, undone_by TEXT, undone BIGINT
     );
     CREATE INDEX IF NOT EXISTS responses_by_time ON responses (at);
     CREATE INDEX IF NOT EXISTS responses_by_alert ON responses (alert_id);",
    ),
    // v19: when each account last signed in (dormant accounts); the compliance registers
    // (breaches, data subjects' requests).
    (
        19,
        "ALTER TABLE users ADD COLUMN IF NOT EXISTS last_login BIGINT;
     CREATE TABLE IF NOT EXISTS register (
        id TEXT COLLATE \"C\" PRIMARY KEY, kind TEXT NOT NULL, subject TEXT,
        opened BIGINT NOT NULL, due BIGINT NOT NULL, status TEXT NOT NULL, closed BIGINT,
        updated BIGINT NOT NULL, body BYTEA NOT NULL
     );
     CREATE INDEX IF NOT EXISTS register_by_kind ON register (kind, opened);",
    ),
];

const KEEP_TILE_LEVELS: &str = "DELETE FROM ledger_nodes WHERE level % 8 <> 0;";

/// The access log's schema: one log, its patient index and the witness state, nothing else
/// (the version numbers are per kind of database; both backends reach the same).
const ACCESS_LOG_MIGRATIONS: &[(i64, &str)] = &[
    (2, concat!(meta_table!(), log_tables!())),
    (3, KEEP_TILE_LEVELS),
    // The patient index (docs/formats/access-patient-index.md); leaves written before it are
    // not indexed until `medvault ledger reindex-access` (or `serve`) reaches them.
    (
        4,
        "CREATE TABLE access_patients (
            tag BYTEA NOT NULL CHECK (octet_length(tag) = 16),
            leaf BIGINT NOT NULL CHECK (leaf >= 0),
            PRIMARY KEY (tag, leaf)
         );
         CREATE INDEX access_patients_by_leaf ON access_patients (leaf);
         INSERT INTO meta (k, v)
            SELECT 'access_index_from', (COALESCE(MAX(idx) + 1, 0))::text FROM ledger_leaves;",
    ),
    // The index is written a run at a time, off the request path; every leaf so far has its
    // rows (version 4 wrote them with the leaf). PostgreSQL keeps rows keyed by tag: a random
    // insert there dirties a shared buffer, not a page per commit as SQLite's WAL does.
    (
        5,
        "INSERT INTO meta (k, v)
            SELECT 'access_index_to', (COALESCE(MAX(idx) + 1, 0))::text FROM ledger_leaves
         ON CONFLICT (k) DO UPDATE SET v = excluded.v;",
    ),
];

/// Creates the schema if needed and applies pending migrations, in one transaction.
pub(crate) fn migrate(conn: &mut Conn, schema: Schema, namespace: &str) -> Result<(), StoreError> {
    conn.batch("BEGIN")?;
    let result = migrate_in_tx(conn, schema, namespace);
    match result {
        Ok(()) => conn.batch("COMMIT"),
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            Err(e)
        }
    }
}

fn migrate_in_tx(conn: &mut Conn, schema: Schema, namespace: &str) -> Result<(), StoreError> {
    conn.exec(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key("medvault-migrate", namespace)],
    )?;
    conn.batch(&format!("CREATE SCHEMA IF NOT EXISTS {namespace}"))?;
    let has_meta = conn
        .opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'meta'",
            &[&namespace],
        )?
        .is_some();
    let read = |conn: &mut Conn, key: &str| -> Result<Option<String>, StoreError> {
        conn.opt("SELECT v FROM meta WHERE k = $1", &[&key])?
            .map(|r| r.try_get(0).map_err(crate::conn::pg))
            .transpose()
    };
    let (current, label) = if has_meta {
        let v = read(conn, "schema_version")?.and_then(|v| v.parse::<i64>().ok());
        (v.unwrap_or(0), read(conn, "schema")?)
    } else {
        (0, None)
    };
    // The migrations of this kind of database, oldest first, by the version each makes.
    let migrations = schema.pick(NODE_MIGRATIONS, ACCESS_LOG_MIGRATIONS);
    let supported = migrations.last().map_or(0, |(v, _)| *v);
    schema.check(label.as_deref(), current, supported)?;
    for (version, sql) in migrations.iter().filter(|(v, _)| *v > current) {
        conn.batch(sql)?;
        conn.exec(
            "INSERT INTO meta (k, v) VALUES ('schema_version', $1)
             ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            &[&version.to_string()],
        )?;
    }
    conn.exec(
        "INSERT INTO meta (k, v) VALUES ('schema', $1) ON CONFLICT (k) DO NOTHING",
        &[&schema.label()],
    )?;
    Ok(())
}
