//! Versioned schema migrations, applied in order at open.

use medvault_store::StoreError;
use rusqlite::{Connection, OptionalExtension as _};

use crate::conn::backend;

pub use medvault_store::Schema;

/// The tables of one log (shared by both databases; `concat!` needs a literal, hence macros).
macro_rules! log_tables {
    () => {
        "CREATE TABLE ledger_leaves (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
         CREATE TABLE ledger_nodes (
            level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
            PRIMARY KEY (level, idx)
         ) WITHOUT ROWID;
         CREATE TABLE ledger_audit (
            leaf INTEGER PRIMARY KEY, salt BLOB NOT NULL, detail BLOB NOT NULL
         );
         CREATE TABLE ledger_checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);"
    };
}

/// Logs this node witnesses (C2SP tlog-witness): the newest checkpoint cosigned per origin.
macro_rules! witnessed_table {
    () => {
        "CREATE TABLE witnessed (
            origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT NOT NULL
         ) WITHOUT ROWID;"
    };
}

macro_rules! meta_table {
    () => {
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;"
    };
}

/// Migration `i` brings the schema from version `i` to `i + 1`.
const NODE_MIGRATIONS: &[&str] = &[
    // v1: the foundation.
    concat!(
        meta_table!(),
        "CREATE TABLE keks (version INTEGER PRIMARY KEY, wrapped BLOB NOT NULL);
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
     ) WITHOUT ROWID;"
    ),
    // v2: the ledger (see ARCHITECTURE.md, "The ledger"). Leaves are 0-based; every complete
    // subtree hash is stored, so proofs and tiles are lookups. Versions point at their leaf.
    concat!(
        "ALTER TABLE versions ADD COLUMN leaf INTEGER;
         ALTER TABLE versions ADD COLUMN salt BLOB;",
        log_tables!()
    ),
    // v3: logs this node witnesses (since moved to the access log's database; the table stays).
    witnessed_table!(),
    // v4: level 0 (leaf hashes) is no longer stored; it is hashed from the leaves when needed.
    DROP_LEVEL_ZERO,
    // v5: people (see ARCHITECTURE.md, "Identity"). Names only blinded and sealed; passwords
    // only as Argon2id PHC strings; TOTP secrets sealed; sessions and recovery codes hashed.
    "CREATE TABLE users (
        id TEXT PRIMARY KEY, name_index BLOB NOT NULL UNIQUE, name_sealed BLOB NOT NULL,
        role TEXT NOT NULL, password_hash TEXT NOT NULL, disabled INTEGER NOT NULL,
        created INTEGER NOT NULL, totp BLOB, totp_pending BLOB, totp_last_step INTEGER,
        failed_logins INTEGER NOT NULL, locked_until INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE recovery_codes (
        user_id TEXT NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (user_id, hash)
     ) WITHOUT ROWID;
     CREATE TABLE sessions (
        hash BLOB PRIMARY KEY, session_id TEXT NOT NULL, user_id TEXT NOT NULL,
        aal INTEGER NOT NULL, created INTEGER NOT NULL, last_seen INTEGER NOT NULL,
        expires INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX sessions_by_user ON sessions (user_id);",
    // v6: OAuth2 clients (SMART apps and backend services), issued access tokens (hashed) and
    // the client assertion ids seen (replay protection).
    "CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY, name TEXT NOT NULL, jwks TEXT NOT NULL, scopes TEXT NOT NULL,
        disabled INTEGER NOT NULL, created INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE oauth_tokens (
        hash BLOB PRIMARY KEY, client_id TEXT NOT NULL, scopes TEXT NOT NULL,
        issued INTEGER NOT NULL, expires INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX oauth_tokens_by_expiry ON oauth_tokens (expires);
     CREATE TABLE oauth_jti (
        client_id TEXT NOT NULL, jti TEXT NOT NULL, expires INTEGER NOT NULL,
        PRIMARY KEY (client_id, jti)
     ) WITHOUT ROWID;
     CREATE INDEX oauth_jti_by_expiry ON oauth_jti (expires);",
    // v7: WebAuthn passkeys, sealed; a credential id belongs to one user.
    "CREATE TABLE passkeys (
        credential_id BLOB PRIMARY KEY, user_id TEXT NOT NULL, passkey BLOB NOT NULL,
        created INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX passkeys_by_user ON passkeys (user_id, created);",
    // v8: user-facing apps (authorization code + PKCE): redirect URIs, one-use grants (codes and
    // refresh tokens, hashed) in families, and the user and family of access tokens.
    "ALTER TABLE oauth_clients ADD COLUMN redirect_uris TEXT NOT NULL DEFAULT '';
     ALTER TABLE oauth_tokens ADD COLUMN user_id TEXT;
     ALTER TABLE oauth_tokens ADD COLUMN family TEXT;
     CREATE INDEX oauth_tokens_by_family ON oauth_tokens (family);
     CREATE TABLE oauth_grants (
        hash BLOB PRIMARY KEY, kind TEXT NOT NULL, client_id TEXT NOT NULL,
        user_id TEXT NOT NULL, scopes TEXT NOT NULL, redirect_uri TEXT NOT NULL,
        code_challenge TEXT NOT NULL, family TEXT NOT NULL, expires INTEGER NOT NULL,
        used INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX oauth_grants_by_family ON oauth_grants (family);",
    // v9: a patient's account names their Patient resource (SMART patient launch context).
    "ALTER TABLE users ADD COLUMN patient_id TEXT;",
    // v10: staff accounts name their Practitioner; break-glass grants; privacy officer alerts.
    "ALTER TABLE users ADD COLUMN practitioner TEXT;
     CREATE TABLE break_glass (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, patient TEXT NOT NULL,
        reason BLOB NOT NULL, opened INTEGER NOT NULL, expires INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX break_glass_by_user ON break_glass (user_id, patient, expires);
     CREATE TABLE alerts (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, at INTEGER NOT NULL, user_id TEXT NOT NULL,
        patient TEXT, detail BLOB NOT NULL, acknowledged_by TEXT, acknowledged INTEGER
     ) WITHOUT ROWID;
     CREATE INDEX alerts_by_time ON alerts (at);",
    // v11: peer nodes registered for sealed sharing, their documents (public keys) pinned.
    "CREATE TABLE peers (
        node TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, url TEXT NOT NULL,
        document TEXT NOT NULL, organization TEXT, registered INTEGER NOT NULL,
        registered_by TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE share_receipts (
        sender TEXT NOT NULL, bundle_id TEXT NOT NULL, receipt TEXT NOT NULL,
        expires INTEGER NOT NULL, PRIMARY KEY (sender, bundle_id)
     ) WITHOUT ROWID;
     CREATE INDEX share_receipts_by_expiry ON share_receipts (expires);",
    // v12: amended versions (re-sealed when their resource moved to another patient, or
    // expunged by an admin) and what each was committed as before (see ARCHITECTURE.md, "The
    // ledger": every leaf stays checkable).
    "ALTER TABLE versions ADD COLUMN expunged INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE amendments (
        rtype TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL,
        kind TEXT NOT NULL, at INTEGER NOT NULL, last_updated INTEGER NOT NULL,
        key_name TEXT NOT NULL, key_version INTEGER NOT NULL, digest BLOB,
        leaf INTEGER NOT NULL, salt BLOB NOT NULL,
        PRIMARY KEY (rtype, id, version, seq)
     ) WITHOUT ROWID;",
    // v13: API tokens expire, can be revoked and record their last use. Tokens made before
    // expire 30 days after the upgrade (they had no expiry).
    "ALTER TABLE tokens ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE tokens ADD COLUMN revoked INTEGER;
     ALTER TABLE tokens ADD COLUMN last_used INTEGER;
     UPDATE tokens SET expires = (CAST(strftime('%s', 'now') AS INTEGER) + 2592000) * 1000000;",
    // v14: a type's current versions in creation order, so a search walks them a page at a
    // time (`scan`) instead of sorting every match.
    "CREATE INDEX IF NOT EXISTS current_by_type ON current (rtype, rid);",
    // v15: tree nodes are stored only at the tile levels (every 8th); the others are hashed up
    // from them when needed.
    KEEP_TILE_LEVELS,
    // v16: versions in a rowid table. In a WITHOUT ROWID table (an index b-tree) a row keeps at
    // most ≈ 230 bytes on a 1 KiB page, so nearly every sealed body was an overflow chain that
    // SQLite reads from the file past its page cache; a rowid table keeps rows up to ≈ 990
    // bytes on their page, and the key lives in a unique index beside it.
    "CREATE TABLE versions_v16 (
        rtype TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
        last_updated INTEGER NOT NULL, key_name TEXT NOT NULL, key_version INTEGER NOT NULL,
        body BLOB, leaf INTEGER, salt BLOB, expunged INTEGER NOT NULL DEFAULT 0,
        UNIQUE (rtype, id, version)
     );
     INSERT INTO versions_v16
        (rtype, id, version, last_updated, key_name, key_version, body, leaf, salt, expunged)
        SELECT rtype, id, version, last_updated, key_name, key_version, body, leaf, salt, expunged
        FROM versions ORDER BY rtype, id, version;
     DROP TABLE versions;
     ALTER TABLE versions_v16 RENAME TO versions;
     CREATE INDEX versions_by_time ON versions (rtype, last_updated);",
    // v17: the index entries a bulk load stages (appended in arrival order; the index on rid
    // grows at its right edge, as new resources' rids do, and finds a resource's staged rows
    // when it is updated or erased), moved into `idx` in key order when the load ends or the
    // database is next opened.
    "CREATE TABLE IF NOT EXISTS idx_staged (value BLOB NOT NULL, rid INTEGER NOT NULL);
     CREATE INDEX IF NOT EXISTS idx_staged_by_rid ON idx_staged (rid);",
    // v18: the privacy officer's verdicts on alerts; Sentinel's automatic responses.
    "ALTER TABLE alerts ADD COLUMN verdict TEXT;
     ALTER TABLE alerts ADD COLUMN note BLOB;
     CREATE INDEX alerts_by_user ON alerts (user_id, at);
     CREATE TABLE responses (
        id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, action TEXT NOT NULL,
        subject TEXT NOT NULL, at INTEGER NOT NULL, until INTEGER, dry_run INTEGER NOT NULL,
        detail TEXT NOT NULL, undone_by TEXT, undone INTEGER
     ) WITHOUT ROWID;
     CREATE INDEX responses_by_time ON responses (at);
     CREATE INDEX responses_by_alert ON responses (alert_id);",
    // v19: when each account last signed in (dormant accounts); the compliance registers
    // (breaches, data subjects' requests).
    "ALTER TABLE users ADD COLUMN last_login INTEGER;
     CREATE TABLE register (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT, opened INTEGER NOT NULL,
        due INTEGER NOT NULL, status TEXT NOT NULL, closed INTEGER, updated INTEGER NOT NULL,
        body BLOB NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX register_by_kind ON register (kind, opened);",
];

const DROP_LEVEL_ZERO: &str = "DELETE FROM ledger_nodes WHERE level = 0;";
const KEEP_TILE_LEVELS: &str = "DELETE FROM ledger_nodes WHERE level % 8 <> 0;";

/// The access log's database: one log and the witness state, nothing else.
const ACCESS_LOG_MIGRATIONS: &[&str] = &[
    concat!(meta_table!(), log_tables!(), witnessed_table!()),
    DROP_LEVEL_ZERO,
    KEEP_TILE_LEVELS,
    // v4: the patient index (docs/formats/access-patient-index.md). Leaves written before it
    // are not indexed until `medvault ledger reindex-access` (or `serve`) reaches them.
    ACCESS_PATIENTS,
    // v5: the patient index keyed by run first, written a run at a time off the request path
    // (docs/formats/access-patient-index.md): every leaf so far has its rows.
    ACCESS_PATIENT_RUNS,
];

/// The access log's patient index: keyed patient tag → leaf, and the first indexed leaf.
const ACCESS_PATIENTS: &str = "CREATE TABLE access_patients (
        tag BLOB NOT NULL CHECK (typeof(tag) = 'blob' AND length(tag) = 16),
        leaf INTEGER NOT NULL CHECK (typeof(leaf) = 'integer' AND leaf >= 0),
        PRIMARY KEY (tag, leaf)
     ) WITHOUT ROWID;
     CREATE INDEX access_patients_by_leaf ON access_patients (leaf);
     INSERT INTO meta (k, v)
        SELECT 'access_index_from', CAST(COALESCE(MAX(idx) + 1, 0) AS TEXT) FROM ledger_leaves;";

/// The patient index by run (v5): the same rows as v4, each under its leaf's run, so a run's
/// rows are one sequential stretch of the table; every leaf written so far is indexed (v4
/// wrote rows with their leaf), so the index's end is the log's size.
const ACCESS_PATIENT_RUNS: &str = "CREATE TABLE access_patients_by_run (
        run INTEGER NOT NULL CHECK (typeof(run) = 'integer' AND run = leaf >> 12),
        tag BLOB NOT NULL CHECK (typeof(tag) = 'blob' AND length(tag) = 16),
        leaf INTEGER NOT NULL CHECK (typeof(leaf) = 'integer' AND leaf >= 0),
        PRIMARY KEY (run, tag, leaf)
     ) WITHOUT ROWID;
     INSERT INTO access_patients_by_run (run, tag, leaf)
        SELECT leaf >> 12, tag, leaf FROM access_patients
        WHERE typeof(leaf) = 'integer' AND leaf >= 0 AND typeof(tag) = 'blob' AND length(tag) = 16
        ORDER BY leaf >> 12, tag, leaf;
     DROP TABLE access_patients;
     ALTER TABLE access_patients_by_run RENAME TO access_patients;
     INSERT INTO meta (k, v)
        SELECT 'access_index_to', CAST(COALESCE(MAX(idx) + 1, 0) AS TEXT) FROM ledger_leaves
        WHERE true ON CONFLICT (k) DO UPDATE SET v = excluded.v;";

pub(crate) fn migrate(conn: &mut Connection, schema: Schema) -> Result<(), StoreError> {
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
    let label: Option<String> = if has_meta {
        tx.query_row("SELECT v FROM meta WHERE k='schema'", [], |r| r.get(0))
            .optional()
            .map_err(backend)?
    } else {
        None
    };
    // Databases written before the label existed are node databases.
    let found = label
        .as_deref()
        .or((current > 0).then(|| Schema::Node.label()));
    // The migrations of this kind of database, oldest first.
    let migrations = schema.pick(NODE_MIGRATIONS, ACCESS_LOG_MIGRATIONS);
    schema.check(found, current, migrations.len() as i64)?;
    for (i, sql) in migrations
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
    tx.execute(
        "INSERT INTO meta (k, v) VALUES ('schema', ?1) ON CONFLICT (k) DO NOTHING",
        [schema.label()],
    )
    .map_err(backend)?;
    tx.commit().map_err(backend)
}
