//! SQL shared by the pooled readers and the writer's transaction.

use medvault_core::{KeyName, ResourceId, ResourceType};
use medvault_crypto::{BLIND_LEN, BlindValue, Sealed, WrappedKey};
use medvault_ledger::Hash;
use medvault_ledger::leaf_hash;
use medvault_store::group::{
    NewNode, contiguous_leaves, contiguous_nodes, derived_nodes, nodes_at,
};
use medvault_store::rows::{self, Columns};
use medvault_store::{
    AccessTokenRow, AlertQuery, AlertRow, Amendment, AuditDetail, BreakGlassRow, ClientRow,
    CurrentMeta, DataKeyRow, GrantRow, IdentityTx, IndexQuery, KeyTx, LogTx, PeerRow, PeerTx,
    RecordTx, RegisterRow, ResponseRow, SCAN_SELECTIVITY_CAP, Scan, ScanDriver, SearchPage,
    SessionRow, SortOrder, StoreError, StoredVersion, TokenHash, TokenRow, UserRow, driver_step,
    list_step, meets, other_clauses,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension as _, params, params_from_iter};

use crate::conn::{Cols, backend};

const VERSION_COLUMNS: &str =
    "v.rtype, v.id, v.version, v.last_updated, v.key_name, v.key_version, v.body,
     (d.name IS NOT NULL AND d.wrapped IS NULL), v.salt, v.leaf, v.expunged";
const VERSION_JOIN: &str = "versions v LEFT JOIN deks d ON d.name = v.key_name";

/// Calls `row` with each row `sql` finds with `params`, in the query's order, while it
/// returns true.
fn each(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut row: impl FnMut(&dyn Columns) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let mut s = c.prepare_cached(sql).map_err(backend)?;
    let mut found = s.query(params).map_err(backend)?;
    while let Some(r) = found.next().map_err(backend)? {
        if !row(&Cols(r))? {
            break;
        }
    }
    Ok(())
}

/// The first row `sql` finds with `params`, decoded by `decode`, or `None`.
pub(crate) fn one<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut first = None;
    each(c, sql, params, |r| {
        first = Some(decode(r)?);
        Ok(false)
    })?;
    Ok(first)
}

/// Every row `sql` finds with `params`, decoded by `decode`, in the query's order.
fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    each(c, sql, params, |r| {
        out.push(decode(r)?);
        Ok(true)
    })?;
    Ok(out)
}

/// The number `sql` counts with `params` (its one row, one column).
fn counted(c: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<u64, StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, |r| r.get::<_, i64>(0)))
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(backend)
}

/// Runs one statement; returns how many rows it changed.
pub(crate) fn exec(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, StoreError> {
    c.prepare_cached(sql)
        .and_then(|mut s| s.execute(params))
        .map_err(backend)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const AMENDMENT_COLUMNS: &str = "rtype, id, version, seq, kind, at, last_updated, key_name,
     key_version, digest, leaf, salt";

pub(crate) fn amendments_after(
    c: &Connection,
    after: Option<(&str, &str, u64, u32)>,
    limit: u64,
) -> Result<Vec<Amendment>, StoreError> {
    let (rt, id, v, seq) = after.unwrap_or(("", "", 0, 0));
    all(
        c,
        &format!(
            "SELECT {AMENDMENT_COLUMNS} FROM amendments
             WHERE (rtype, id, version, seq) > (?1, ?2, ?3, ?4)
             ORDER BY rtype, id, version, seq LIMIT ?5"
        ),
        params![rt, id, to_i64(v), seq, to_i64(limit)],
        rows::amendment,
    )
}

pub(crate) fn meta(c: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    one(c, "SELECT v FROM meta WHERE k = ?1", [key], rows::text)
}

pub(crate) fn keks(c: &Connection) -> Result<Vec<(u32, WrappedKey)>, StoreError> {
    all(
        c,
        "SELECT version, wrapped FROM keks ORDER BY version",
        [],
        rows::kek,
    )
}

pub(crate) fn data_key(c: &Connection, name: &KeyName) -> Result<Option<DataKeyRow>, StoreError> {
    one(
        c,
        "SELECT name, key_version, kek_version, wrapped FROM deks WHERE name = ?1",
        [name.as_str()],
        rows::data_key,
    )
}

pub(crate) fn data_key_names(c: &Connection) -> Result<Vec<KeyName>, StoreError> {
    all(
        c,
        "SELECT name FROM deks WHERE wrapped IS NOT NULL ORDER BY name",
        [],
        rows::text,
    )?
    .into_iter()
    .map(medvault_store::stored_key_name)
    .collect()
}

pub(crate) fn current(
    c: &Connection,
    rt: &ResourceType,
    id: &ResourceId,
) -> Result<Option<CurrentMeta>, StoreError> {
    one(
        c,
        "SELECT version, deleted, key_name FROM current WHERE rtype = ?1 AND id = ?2",
        [rt.as_str(), id.as_str()],
        rows::current,
    )
}

pub(crate) fn version(
    c: &Connection,
    rt: &ResourceType,
    id: &ResourceId,
    v: Option<u64>,
) -> Result<Option<StoredVersion>, StoreError> {
    let (rt, id) = (rt.as_str(), id.as_str());
    match v {
        Some(v) => one(
            c,
            &format!(
                "SELECT {VERSION_COLUMNS} FROM {VERSION_JOIN}
                 WHERE v.rtype = ?1 AND v.id = ?2 AND v.version = ?3"
            ),
            params![rt, id, to_i64(v)],
            rows::version,
        ),
        None => one(
            c,
            &format!(
                "SELECT {VERSION_COLUMNS} FROM current c
                 JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
                 LEFT JOIN deks d ON d.name = v.key_name
                 WHERE c.rtype = ?1 AND c.id = ?2"
            ),
            params![rt, id],
            rows::version,
        ),
    }
}

/// A count and a page of versions with the same filter parameters (`args`); the page's SQL
/// takes limit and offset after them.
fn counted_page(
    c: &Connection,
    count_sql: &str,
    page_sql: &str,
    mut args: Vec<Value>,
    limit: u64,
    offset: u64,
) -> Result<SearchPage, StoreError> {
    let total = counted(c, count_sql, params_from_iter(args.iter()))?;
    args.push(to_i64(limit).into());
    args.push(to_i64(offset).into());
    Ok(SearchPage {
        rows: all(c, page_sql, params_from_iter(args.iter()), rows::version)?,
        total,
    })
}

pub(crate) fn history(
    c: &Connection,
    rt: &ResourceType,
    id: Option<&ResourceId>,
    offset: u64,
    limit: u64,
) -> Result<SearchPage, StoreError> {
    let (filter, args): (&str, Vec<Value>) = match id {
        Some(id) => (
            "v.rtype = ?1 AND v.id = ?2",
            vec![rt.as_str().to_owned().into(), id.as_str().to_owned().into()],
        ),
        // Type history leaves out versions whose key was destroyed, so erased patients do not
        // show in totals or paging.
        None => (
            "v.rtype = ?1 AND NOT (d.name IS NOT NULL AND d.wrapped IS NULL)",
            vec![rt.as_str().to_owned().into()],
        ),
    };
    let n = args.len();
    counted_page(
        c,
        &format!("SELECT count(*) FROM {VERSION_JOIN} WHERE {filter}"),
        &format!(
            "SELECT {VERSION_COLUMNS} FROM {VERSION_JOIN} WHERE {filter}
             ORDER BY v.last_updated DESC, v.id DESC, v.version DESC LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        ),
        args,
        limit,
        offset,
    )
}

fn placeholders(args: &mut Vec<Value>, values: impl Iterator<Item = Value>) -> String {
    let mut out = String::new();
    for v in values {
        args.push(v);
        if !out.is_empty() {
            out.push(',');
        }
        out.push('?');
        out.push_str(&args.len().to_string());
    }
    out
}

/// `q`'s `_lastUpdated` bounds added to `filter` (over `current c`), their values to `args`.
fn time_bounds(q: &IndexQuery, args: &mut Vec<Value>, filter: &mut String) {
    if let Some(from) = q.updated_from {
        args.push(from.into());
        filter.push_str(&format!(" AND c.last_updated >= ?{}", args.len()));
    }
    if let Some(to) = q.updated_to {
        args.push(to.into());
        filter.push_str(&format!(" AND c.last_updated < ?{}", args.len()));
    }
}

pub(crate) fn search(c: &Connection, q: &IndexQuery) -> Result<SearchPage, StoreError> {
    let mut args: Vec<Value> = vec![q.resource_type.as_str().to_owned().into()];
    // With index clauses, the unary `+` keeps the planner from scanning the whole type by
    // `rtype` and makes it drive the query from the blind-index lookups instead.
    let mut filter = if q.clauses.is_empty() {
        String::from("c.rtype = ?1 AND c.deleted = 0 AND c.shredded = 0")
    } else {
        String::from("+c.rtype = ?1 AND c.deleted = 0 AND c.shredded = 0")
    };
    for values in &q.clauses {
        let list = placeholders(
            &mut args,
            values
                .iter()
                .map(|b: &BlindValue| Value::Blob(b.0.to_vec())),
        );
        if list.is_empty() {
            filter.push_str(" AND 0");
            continue;
        }
        filter.push_str(&format!(
            " AND c.rid IN (SELECT rid FROM idx WHERE value IN ({list}))"
        ));
    }
    if let Some(ids) = &q.ids {
        let list = placeholders(&mut args, ids.iter().map(|i| Value::Text(i.clone())));
        if list.is_empty() {
            filter.push_str(" AND 0");
        } else {
            filter.push_str(&format!(" AND c.id IN ({list})"));
        }
    }
    time_bounds(q, &mut args, &mut filter);
    let order = match q.sort {
        SortOrder::Created => "c.rid DESC",
        SortOrder::LastUpdatedDesc => "c.last_updated DESC, c.id",
        SortOrder::LastUpdatedAsc => "c.last_updated ASC, c.id",
        SortOrder::IdAsc => "c.id ASC",
        SortOrder::IdDesc => "c.id DESC",
    };
    let n = args.len();
    counted_page(
        c,
        &format!("SELECT count(*) FROM current c WHERE {filter}"),
        &format!(
            "SELECT {VERSION_COLUMNS} FROM current c
             JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
             LEFT JOIN deks d ON d.name = v.key_name
             WHERE {filter} ORDER BY {order} LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        ),
        args,
        q.limit,
        q.offset,
    )
}

/// See [`medvault_store::RecordRead::scan`]: the driver's next `limit` positions, then the
/// current versions among them that match the rest of the query.
pub(crate) fn scan(
    c: &Connection,
    q: &IndexQuery,
    before: Option<u64>,
    limit: u64,
) -> Result<Scan, StoreError> {
    if q.matches_nothing() {
        return Ok(Scan::default());
    }
    let before = before.map_or(i64::MAX, to_i64);
    let n = to_i64(limit);
    let blob = |b: &BlindValue| Value::Blob(b.0.to_vec());
    let counts = if ScanDriver::needs_counts(q) {
        let mut counts = Vec::with_capacity(q.clauses.len());
        for values in &q.clauses {
            let mut args = vec![Value::Integer(before)];
            let list = placeholders(&mut args, values.iter().map(blob));
            counts.push(counted(
                c,
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM idx WHERE value IN ({list}) AND rid < ?1
                     LIMIT {SCAN_SELECTIVITY_CAP})"
                ),
                params_from_iter(args.iter()),
            )?);
        }
        counts
    } else {
        Vec::new()
    };
    let driver = ScanDriver::choose(q, &counts);
    let rid = |r: &dyn Columns| r.int(0).map(|v| u64::try_from(v).unwrap_or(0));
    let whole = |positions: Vec<u64>| list_step(positions, limit);
    let (positions, resume) = match driver {
        ScanDriver::Ids => {
            let mut args = vec![
                Value::Integer(before),
                Value::Integer(n),
                q.resource_type.as_str().to_owned().into(),
            ];
            let ids = q.ids.as_deref().unwrap_or_default();
            let list = placeholders(&mut args, ids.iter().map(|i| Value::Text(i.clone())));
            whole(all(
                c,
                &format!(
                    "SELECT rid FROM current WHERE rtype = ?3 AND id IN ({list}) AND rid < ?1
                     ORDER BY rid DESC LIMIT ?2"
                ),
                params_from_iter(args.iter()),
                rid,
            )?)
        }
        ScanDriver::Clause(i) => {
            // Each value's entries are in position order: a range read of each, merged.
            let values = &q.clauses[i];
            driver_step(values.len(), limit, |which, batch| {
                which
                    .iter()
                    .map(|v| {
                        all(
                            c,
                            "SELECT rid FROM idx WHERE value = ?1 AND rid < ?2
                             ORDER BY rid DESC LIMIT ?3",
                            params![&values[*v].0[..], before, to_i64(batch)],
                            rid,
                        )
                    })
                    .collect()
            })?
        }
        ScanDriver::Type => whole(all(
            c,
            "SELECT rid FROM current WHERE rtype = ?1 AND rid < ?2 ORDER BY rid DESC LIMIT ?3",
            params![q.resource_type.as_str(), before, n],
            rid,
        )?),
    };
    let examined = positions.len() as u64;
    if positions.is_empty() {
        return Ok(Scan {
            rows: Vec::new(),
            examined,
            resume,
        });
    }
    let mut args: Vec<Value> = vec![q.resource_type.as_str().to_owned().into()];
    let list = placeholders(
        &mut args,
        positions.iter().map(|p| Value::Integer(to_i64(*p))),
    );
    let mut filter =
        format!("c.rid IN ({list}) AND c.rtype = ?1 AND c.deleted = 0 AND c.shredded = 0");
    if let (Some(ids), false) = (&q.ids, driver == ScanDriver::Ids) {
        let list = placeholders(&mut args, ids.iter().map(|i| Value::Text(i.clone())));
        filter.push_str(&format!(" AND c.id IN ({list})"));
    }
    time_bounds(q, &mut args, &mut filter);
    // The other clauses are checked against each candidate's own entries (kept beside it), a
    // set lookup per entry, however many values a clause has.
    let others = other_clauses(q, driver);
    let mut rows = Vec::new();
    each(
        c,
        &format!(
            "SELECT {VERSION_COLUMNS}, c.rid, c.index_values FROM current c
             JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
             LEFT JOIN deks d ON d.name = v.key_name
             WHERE {filter} ORDER BY c.rid DESC"
        ),
        params_from_iter(args.iter()),
        |r| {
            if others.is_empty() || meets(&others, &r.opt_bytes(12)?.unwrap_or_default()) {
                rows.push(rows::positioned_version(r)?);
            }
            Ok(true)
        },
    )?;
    Ok(Scan {
        rows,
        examined,
        resume,
    })
}

const USER_COLUMNS: &str = "id, name_index, name_sealed, role, password_hash, disabled, created,
     totp, totp_pending, totp_last_step, failed_logins, locked_until, patient_id, practitioner,
     last_login";

pub(crate) fn user(c: &Connection, id: &str) -> Result<Option<UserRow>, StoreError> {
    one(
        c,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
        [id],
        rows::user,
    )
}

pub(crate) fn user_by_name(
    c: &Connection,
    index: &BlindValue,
) -> Result<Option<UserRow>, StoreError> {
    one(
        c,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE name_index = ?1"),
        [&index.0[..]],
        rows::user,
    )
}

pub(crate) fn users(c: &Connection) -> Result<Vec<UserRow>, StoreError> {
    all(
        c,
        &format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"),
        [],
        rows::user,
    )
}

pub(crate) fn session(c: &Connection, hash: &TokenHash) -> Result<Option<SessionRow>, StoreError> {
    one(
        c,
        "SELECT session_id, user_id, aal, created, last_seen, expires FROM sessions
         WHERE hash = ?1",
        [&hash.as_bytes()[..]],
        |r| rows::session(r, hash),
    )
}

const CLIENT_COLUMNS: &str = "client_id, name, jwks, scopes, disabled, created, redirect_uris";

const PEER_COLUMNS: &str =
    "node, fingerprint, url, document, organization, registered, registered_by";

pub(crate) fn peer(c: &Connection, node: &str) -> Result<Option<PeerRow>, StoreError> {
    one(
        c,
        &format!("SELECT {PEER_COLUMNS} FROM peers WHERE node = ?1"),
        [node],
        rows::peer,
    )
}

pub(crate) fn peers(c: &Connection) -> Result<Vec<PeerRow>, StoreError> {
    all(
        c,
        &format!("SELECT {PEER_COLUMNS} FROM peers ORDER BY node"),
        [],
        rows::peer,
    )
}

pub(crate) fn share_receipt(
    c: &Connection,
    sender: &str,
    bundle_id: &str,
) -> Result<Option<String>, StoreError> {
    one(
        c,
        "SELECT receipt FROM share_receipts WHERE sender = ?1 AND bundle_id = ?2",
        [sender, bundle_id],
        rows::text,
    )
}

pub(crate) fn grant(c: &Connection, hash: &TokenHash) -> Result<Option<GrantRow>, StoreError> {
    one(
        c,
        "SELECT kind, client_id, user_id, scopes, redirect_uri, code_challenge, family, expires,
                used
         FROM oauth_grants WHERE hash = ?1",
        [&hash.as_bytes()[..]],
        |r| rows::grant(r, hash),
    )
}

pub(crate) fn client(c: &Connection, id: &str) -> Result<Option<ClientRow>, StoreError> {
    one(
        c,
        &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = ?1"),
        [id],
        rows::client,
    )
}

pub(crate) fn clients(c: &Connection) -> Result<Vec<ClientRow>, StoreError> {
    all(
        c,
        &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id"),
        [],
        rows::client,
    )
}

pub(crate) fn access_token(
    c: &Connection,
    hash: &TokenHash,
) -> Result<Option<AccessTokenRow>, StoreError> {
    one(
        c,
        "SELECT client_id, scopes, issued, expires, user_id, family FROM oauth_tokens
         WHERE hash = ?1",
        [&hash.as_bytes()[..]],
        |r| rows::access_token(r, hash),
    )
}

pub(crate) fn passkeys(
    c: &Connection,
    user_id: &str,
) -> Result<Vec<(Vec<u8>, Sealed)>, StoreError> {
    all(
        c,
        "SELECT credential_id, passkey FROM passkeys WHERE user_id = ?1 ORDER BY created",
        [user_id],
        rows::passkey,
    )
}

pub(crate) fn break_glass(
    c: &Connection,
    user_id: &str,
    patient: &str,
    now_micros: i64,
) -> Result<Option<BreakGlassRow>, StoreError> {
    one(
        c,
        "SELECT id, reason, opened, expires FROM break_glass
         WHERE user_id = ?1 AND patient = ?2 AND opened <= ?3 AND expires > ?3
         ORDER BY expires DESC LIMIT 1",
        params![user_id, patient, now_micros],
        |r| rows::break_glass(r, user_id, patient),
    )
}

pub(crate) fn alerts(c: &Connection, open_only: bool) -> Result<Vec<AlertRow>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {} FROM alerts WHERE (?1 = 0 OR acknowledged IS NULL)
             ORDER BY at DESC, id DESC",
            rows::ALERT_COLUMNS
        ),
        [open_only],
        rows::alert,
    )
}

pub(crate) fn alert(c: &Connection, id: &str) -> Result<Option<AlertRow>, StoreError> {
    one(
        c,
        &format!("SELECT {} FROM alerts WHERE id = ?1", rows::ALERT_COLUMNS),
        [id],
        rows::alert,
    )
}

pub(crate) fn alerts_page(c: &Connection, q: &AlertQuery<'_>) -> Result<Vec<AlertRow>, StoreError> {
    let (before_at, before_id) = q.before.unzip();
    all(
        c,
        &format!(
            "SELECT {} FROM alerts
             WHERE (?1 = 0 OR acknowledged IS NULL) AND (?2 IS NULL OR kind = ?2)
               AND (?3 IS NULL OR user_id = ?3) AND (?4 IS NULL OR patient = ?4)
               AND (?5 IS NULL OR at < ?5 OR (at = ?5 AND id < ?6))
             ORDER BY at DESC, id DESC LIMIT ?7",
            rows::ALERT_COLUMNS
        ),
        params![
            q.open_only,
            q.kind,
            q.user,
            q.patient,
            before_at,
            before_id,
            i64::from(q.limit)
        ],
        rows::alert,
    )
}

pub(crate) fn verdicts(
    c: &Connection,
    since_micros: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    all(
        c,
        "SELECT kind, user_id, verdict FROM alerts WHERE verdict IS NOT NULL AND at >= ?1",
        [since_micros],
        |r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)),
    )
}

pub(crate) fn response(c: &Connection, id: &str) -> Result<Option<ResponseRow>, StoreError> {
    one(
        c,
        &format!(
            "SELECT {} FROM responses WHERE id = ?1",
            rows::RESPONSE_COLUMNS
        ),
        [id],
        rows::response,
    )
}

pub(crate) fn responses(
    c: &Connection,
    alert: Option<&str>,
    before: Option<(i64, &str)>,
    limit: u32,
) -> Result<Vec<ResponseRow>, StoreError> {
    let (before_at, before_id) = before.unzip();
    all(
        c,
        &format!(
            "SELECT {} FROM responses
             WHERE (?1 IS NULL OR alert_id = ?1)
               AND (?2 IS NULL OR at < ?2 OR (at = ?2 AND id < ?3))
             ORDER BY at DESC, id DESC LIMIT ?4",
            rows::RESPONSE_COLUMNS
        ),
        params![alert, before_at, before_id, i64::from(limit)],
        rows::response,
    )
}

pub(crate) fn register_entry(c: &Connection, id: &str) -> Result<Option<RegisterRow>, StoreError> {
    one(
        c,
        &format!(
            "SELECT {} FROM register WHERE id = ?1",
            rows::REGISTER_COLUMNS
        ),
        [id],
        rows::register_entry,
    )
}

pub(crate) fn register(c: &Connection, kind: Option<&str>) -> Result<Vec<RegisterRow>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {} FROM register WHERE (?1 IS NULL OR kind = ?1)
             ORDER BY opened DESC, id DESC",
            rows::REGISTER_COLUMNS
        ),
        [kind],
        rows::register_entry,
    )
}

pub(crate) fn register_in_force(
    c: &Connection,
    kind: &str,
    subject: &str,
) -> Result<bool, StoreError> {
    Ok(counted(
        c,
        "SELECT EXISTS (SELECT 1 FROM register
             WHERE kind = ?1 AND subject = ?2 AND closed IS NULL)",
        params![kind, subject],
    )? > 0)
}

pub(crate) fn active_responses(
    c: &Connection,
    now_micros: i64,
) -> Result<Vec<ResponseRow>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {} FROM responses
             WHERE dry_run = 0 AND undone IS NULL AND (until IS NULL OR until > ?1)
             ORDER BY at, id",
            rows::RESPONSE_COLUMNS
        ),
        [now_micros],
        rows::response,
    )
}

pub(crate) fn recovery_codes_left(c: &Connection, user_id: &str) -> Result<u64, StoreError> {
    counted(
        c,
        "SELECT count(*) FROM recovery_codes WHERE user_id = ?1",
        [user_id],
    )
}

const TOKEN_COLUMNS: &str = "role, token_id, created, expires, revoked, last_used";

pub(crate) fn token(c: &Connection, hash: &TokenHash) -> Result<Option<TokenRow>, StoreError> {
    one(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
        [&hash.as_bytes()[..]],
        rows::token,
    )
}

pub(crate) fn tokens(c: &Connection) -> Result<Vec<TokenRow>, StoreError> {
    all(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created, token_id"),
        [],
        rows::token,
    )
}

/// Which table a version's blind-index rows go to.
#[derive(Clone, Copy)]
enum IndexTable {
    /// The index searches read.
    Live,
    /// A bulk load's stage (`idx_staged`): appended, merged into `idx` later.
    Staged,
}

/// Adds a version's blind-index rows to `table`: in value order (neighbouring inserts share
/// B-tree pages), several rows per statement (a statement's bind, step and reset cost as much
/// as a row's insert).
fn insert_index(
    c: &Connection,
    table: IndexTable,
    rid: i64,
    index: &[BlindValue],
) -> Result<(), StoreError> {
    let table = match table {
        IndexTable::Live => "idx",
        IndexTable::Staged => "idx_staged",
    };
    /// Rows per statement, largest first: the SQL of each is cached.
    const CHUNKS: [usize; 3] = [16, 4, 1];
    let mut values: Vec<&[u8]> = index.iter().map(|b| &b.0[..]).collect();
    values.sort_unstable();
    values.dedup();
    let mut rest = &values[..];
    for size in CHUNKS {
        if rest.len() < size {
            continue;
        }
        let sql = format!(
            "INSERT OR IGNORE INTO {table} (value, rid) VALUES {}",
            vec!["(?, ?)"; size].join(", ")
        );
        let mut ins = c.prepare_cached(&sql).map_err(backend)?;
        while rest.len() >= size {
            let (chunk, tail) = rest.split_at(size);
            for (i, v) in chunk.iter().enumerate() {
                ins.raw_bind_parameter(2 * i + 1, v).map_err(backend)?;
                ins.raw_bind_parameter(2 * i + 2, rid).map_err(backend)?;
            }
            ins.raw_execute().map_err(backend)?;
            rest = tail;
        }
    }
    Ok(())
}

/// Moves staged index rows into `idx` in key order (each index page is then written once for
/// all the rows it receives) and deletes them from the stage: all of them, or the oldest
/// `rows` (a store that is serving merges an abandoned stage in short transactions). Returns
/// how many it moved; an empty stage is answered from the first page of its rowid tree.
pub(crate) fn merge_staged(c: &Connection, rows: Option<i64>) -> Result<u64, StoreError> {
    let first: Option<i64> = c
        .prepare_cached("SELECT min(rowid) FROM idx_staged")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend)?;
    let Some(first) = first else { return Ok(0) };
    let last = rows.map_or(i64::MAX, |n| first.saturating_add(n - 1));
    exec(
        c,
        "INSERT OR IGNORE INTO idx (value, rid)
            SELECT value, rid FROM idx_staged WHERE rowid BETWEEN ?1 AND ?2 ORDER BY value, rid",
        params![first, last],
    )?;
    let moved = match rows {
        // The whole stage: SQLite's truncate, no per-row delete.
        None => c.execute("DELETE FROM idx_staged", []),
        Some(_) => c
            .prepare_cached("DELETE FROM idx_staged WHERE rowid BETWEEN ?1 AND ?2")
            .and_then(|mut s| s.execute(params![first, last])),
    }
    .map_err(backend)?;
    Ok(moved as u64)
}

/// Removes a resource's index rows, given its concatenated values.
fn remove_index(c: &Connection, rid: i64, values: Option<&[u8]>) -> Result<(), StoreError> {
    let Some(values) = values else { return Ok(()) };
    let mut del = c
        .prepare_cached("DELETE FROM idx WHERE value = ?1 AND rid = ?2")
        .map_err(backend)?;
    for v in values.chunks_exact(BLIND_LEN) {
        del.execute(params![v, rid]).map_err(backend)?;
    }
    Ok(())
}

pub(crate) fn ledger_size(c: &Connection) -> Result<u64, StoreError> {
    counted(c, "SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_leaves", [])
}

/// Nodes `[start, start + count)` of tree level `level`, stopping at the first one missing
/// (levels that are not stored are hashed up from the stored level below them).
pub(crate) fn ledger_nodes(
    c: &Connection,
    level: u8,
    start: u64,
    count: u64,
) -> Result<Vec<Hash>, StoreError> {
    derived_nodes(level, start, count, |l, s, n| stored_nodes(c, l, s, n))
}

/// Nodes of a stored level. Level 0 (leaf hashes) is not stored: it is hashed from the leaves.
fn stored_nodes(
    c: &Connection,
    level: u8,
    start: u64,
    count: u64,
) -> Result<Vec<Hash>, StoreError> {
    if level == 0 {
        return Ok(contiguous_leaves(start, &ledger_entries(c, start, count)?));
    }
    let found = all(
        c,
        "SELECT idx, hash FROM ledger_nodes WHERE level = ?1 AND idx >= ?2 AND idx < ?3
         ORDER BY idx",
        params![level, to_i64(start), to_i64(start.saturating_add(count))],
        rows::ledger_node,
    )?;
    Ok(contiguous_nodes(start, found))
}

pub(crate) fn ledger_nodes_at(
    c: &Connection,
    keys: &[(u8, u64)],
) -> Result<Vec<Option<Hash>>, StoreError> {
    nodes_at(
        &mut (),
        keys,
        |(), keys| stored_nodes_at(c, keys),
        |(), l, s, n| stored_nodes(c, l, s, n),
    )
}

fn stored_nodes_at(c: &Connection, keys: &[(u8, u64)]) -> Result<Vec<Option<Hash>>, StoreError> {
    let mut node = c
        .prepare_cached("SELECT hash FROM ledger_nodes WHERE level = ?1 AND idx = ?2")
        .map_err(backend)?;
    let mut leaf = c
        .prepare_cached("SELECT entry FROM ledger_leaves WHERE idx = ?1")
        .map_err(backend)?;
    keys.iter()
        .map(|(level, idx)| {
            let found: Option<Vec<u8>> = if *level == 0 {
                leaf.query_row(params![to_i64(*idx)], |r| r.get(0))
            } else {
                node.query_row(params![level, to_i64(*idx)], |r| r.get(0))
            }
            .optional()
            .map_err(backend)?;
            Ok(found.and_then(|b| {
                if *level == 0 {
                    Some(leaf_hash(&b))
                } else {
                    <Hash>::try_from(b.as_slice()).ok()
                }
            }))
        })
        .collect()
}

pub(crate) fn ledger_entries(
    c: &Connection,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    all(
        c,
        "SELECT idx, entry FROM ledger_leaves WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
        params![to_i64(start), to_i64(start.saturating_add(count))],
        rows::ledger_entry,
    )
}

pub(crate) fn audit_details(
    c: &Connection,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, AuditDetail)>, StoreError> {
    all(
        c,
        "SELECT leaf, salt, detail FROM ledger_audit WHERE leaf >= ?1 AND leaf < ?2
         ORDER BY leaf",
        params![to_i64(start), to_i64(start.saturating_add(count))],
        rows::audit_detail,
    )
}

pub(crate) fn access_leaves(
    c: &Connection,
    tag: &BlindValue,
    (floor, below): (u64, u64),
    count: u64,
) -> Result<Vec<u64>, StoreError> {
    // Rows are keyed by run first: look the tag up in each run, newest run first.
    let mut out = Vec::new();
    if below <= floor {
        return Ok(out);
    }
    let lowest = floor >> medvault_store::ACCESS_RUN_SHIFT;
    let mut run = (below - 1) >> medvault_store::ACCESS_RUN_SHIFT;
    loop {
        let want = count.saturating_sub(out.len() as u64);
        if want == 0 {
            break;
        }
        out.extend(all(
            c,
            "SELECT leaf FROM access_patients
             WHERE run = ?1 AND tag = ?2 AND leaf >= ?3 AND leaf < ?4
               AND typeof(leaf) = 'integer'
             ORDER BY leaf DESC LIMIT ?5",
            params![
                to_i64(run),
                &tag.0[..],
                to_i64(floor),
                to_i64(below),
                to_i64(want)
            ],
            rows::leaf,
        )?);
        if run == lowest {
            break;
        }
        run -= 1;
    }
    Ok(out)
}

pub(crate) fn access_tags(
    c: &Connection,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, BlindValue)>, StoreError> {
    all(
        c,
        "SELECT leaf, tag FROM access_patients
         WHERE run >= ?1 >> 12 AND run <= ?2 >> 12 AND leaf >= ?1 AND leaf < ?2
         ORDER BY leaf, tag",
        params![to_i64(start), to_i64(start.saturating_add(count))],
        rows::access_tag,
    )
}

const ACCESS_TAGS_ASTRAY: &str = "typeof(leaf) <> 'integer' OR leaf < 0 OR leaf >= ?1
     OR typeof(tag) <> 'blob' OR length(tag) <> 16
     OR typeof(run) <> 'integer' OR run <> leaf >> 12";

pub(crate) fn access_tags_astray(
    c: &Connection,
    size: u64,
) -> Result<(u64, Option<String>), StoreError> {
    let n = counted(
        c,
        &format!("SELECT count(*) FROM access_patients WHERE {ACCESS_TAGS_ASTRAY}"),
        [to_i64(size)],
    )?;
    let first = one(
        c,
        &format!("SELECT quote(leaf) FROM access_patients WHERE {ACCESS_TAGS_ASTRAY} LIMIT 1"),
        [to_i64(size)],
        rows::text,
    )?;
    Ok((n, first))
}

pub(crate) fn checkpoint(
    c: &Connection,
    size: Option<u64>,
) -> Result<Option<(u64, String)>, StoreError> {
    match size {
        Some(n) => one(
            c,
            "SELECT size, note FROM ledger_checkpoints WHERE size = ?1",
            [to_i64(n)],
            rows::checkpoint,
        ),
        None => one(
            c,
            "SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1",
            [],
            rows::checkpoint,
        ),
    }
}

pub(crate) fn witnessed(c: &Connection, origin: &str) -> Result<Option<(u64, Hash)>, StoreError> {
    one(
        c,
        "SELECT size, root FROM witnessed WHERE origin = ?1",
        [origin],
        rows::witnessed,
    )
}

pub(crate) fn current_after(
    c: &Connection,
    rt: &ResourceType,
    after: Option<&str>,
    since: Option<i64>,
    limit: u64,
) -> Result<Vec<StoredVersion>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {VERSION_COLUMNS} FROM current c
             JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
             LEFT JOIN deks d ON d.name = v.key_name
             WHERE c.rtype = ?1 AND c.id > ?2 AND c.last_updated >= ?3
               AND c.deleted = 0 AND c.shredded = 0
             ORDER BY c.id LIMIT ?4"
        ),
        params![
            rt.as_str(),
            after.unwrap_or(""),
            since.unwrap_or(i64::MIN),
            to_i64(limit)
        ],
        rows::version,
    )
}

pub(crate) fn versions_after(
    c: &Connection,
    after: Option<(&str, &str, u64)>,
    limit: u64,
) -> Result<Vec<StoredVersion>, StoreError> {
    let (rt, id, v) = after.unwrap_or(("", "", 0));
    all(
        c,
        &format!(
            "SELECT {VERSION_COLUMNS} FROM {VERSION_JOIN}
             WHERE (v.rtype, v.id, v.version) > (?1, ?2, ?3)
             ORDER BY v.rtype, v.id, v.version LIMIT ?4"
        ),
        params![rt, id, to_i64(v), to_i64(limit)],
        rows::version,
    )
}

fn append_leaf(c: &Connection, entry: &[u8]) -> Result<u64, StoreError> {
    let idx = ledger_size(c)?;
    exec(
        c,
        "INSERT INTO ledger_leaves (idx, entry) VALUES (?1, ?2)",
        params![to_i64(idx), entry],
    )?;
    Ok(idx)
}

/// Stores the tree nodes a group's leaves completed (level 0 is never stored: leaf hashes are
/// hashed from the leaves).
pub(crate) fn put_ledger_nodes(c: &Connection, nodes: &[NewNode]) -> Result<(), StoreError> {
    let mut ins = c
        .prepare_cached("INSERT INTO ledger_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")
        .map_err(backend)?;
    for (level, idx, hash) in nodes {
        ins.execute(params![level, to_i64(*idx), &hash[..]])
            .map_err(backend)?;
    }
    Ok(())
}

/// The writer's view of one op's savepoint.
pub(crate) struct Tx<'c> {
    pub(crate) conn: &'c Connection,
    /// Set when the op destroyed a key, so the writer checkpoints the WAL after commit.
    pub(crate) shredded: bool,
    /// Set by [`RecordTx::stage_new_index_entries`]: new resources' index entries go to
    /// `idx_staged` for the rest of the op, but for the types listed.
    pub(crate) stage_index: Option<&'static [&'static str]>,
}

impl Tx<'_> {
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(self.conn)
    }
}

medvault_store::forward_reads!(Tx<'_>, crate::sql);

impl LogTx for Tx<'_> {
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO meta (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            [key, value],
        )
        .map(drop)
    }

    fn load(
        &mut self,
        table: &medvault_store::dump::Table,
        rows: &[Vec<medvault_store::dump::Cell>],
    ) -> Result<(), StoreError> {
        crate::dump::load(self.conn, table, rows)
    }

    fn append_audit(&mut self, detail: &AuditDetail, leaf: &[u8]) -> Result<u64, StoreError> {
        let idx = append_leaf(self.conn, leaf)?;
        exec(
            self.conn,
            "INSERT INTO ledger_audit (leaf, salt, detail) VALUES (?1, ?2, ?3)",
            params![to_i64(idx), &detail.salt[..], detail.sealed.as_bytes()],
        )?;
        Ok(idx)
    }

    fn add_access_tags(&mut self, rows: &[(u64, BlindValue)]) -> Result<(), StoreError> {
        // In key order, so a run's rows are appended page after page.
        let mut rows = rows.to_vec();
        rows.sort_unstable_by(|(l1, t1), (l2, t2)| {
            let run = |l: &u64| l >> medvault_store::ACCESS_RUN_SHIFT;
            (run(l1), &t1.0, l1).cmp(&(run(l2), &t2.0, l2))
        });
        let mut ins = self
            .conn
            .prepare_cached(
                "INSERT INTO access_patients (run, tag, leaf) VALUES (?1 >> 12, ?2, ?1)
                 ON CONFLICT DO NOTHING",
            )
            .map_err(backend)?;
        for (leaf, tag) in &rows {
            ins.execute(params![to_i64(*leaf), &tag.0[..]])
                .map_err(backend)?;
        }
        Ok(())
    }

    fn remove_audit_details(&mut self, start: u64, end: u64) -> Result<u64, StoreError> {
        exec(
            self.conn,
            "DELETE FROM ledger_audit WHERE leaf >= ?1 AND leaf < ?2",
            params![to_i64(start), to_i64(end)],
        )
        .map(|n| n as u64)
    }

    fn set_witnessed(
        &mut self,
        origin: &str,
        size: u64,
        root: &Hash,
        note: &str,
    ) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO witnessed (origin, size, root, note) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (origin) DO UPDATE
                   SET size = excluded.size, root = excluded.root, note = excluded.note",
            params![origin, to_i64(size), &root[..], note],
        )
        .map(|_| ())
    }

    fn put_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO ledger_checkpoints (size, note) VALUES (?1, ?2)
                 ON CONFLICT (size) DO UPDATE SET note = excluded.note",
            params![to_i64(size), note],
        )
        .map(|_| ())
    }
}

impl KeyTx for Tx<'_> {
    fn add_kek(&mut self, version: u32, wrapped: &WrappedKey) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO keks (version, wrapped) VALUES (?1, ?2)",
            params![version, wrapped.as_bytes()],
        )
        .map(drop)
    }

    fn put_data_key(
        &mut self,
        name: &KeyName,
        key_version: u32,
        kek_version: u32,
        wrapped: &WrappedKey,
    ) -> Result<(), StoreError> {
        let name = name.as_str();
        exec(
            self.conn,
            "INSERT INTO deks (name, key_version, kek_version, wrapped) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET key_version = excluded.key_version,
                   kek_version = excluded.kek_version, wrapped = excluded.wrapped",
            params![name, key_version, kek_version, wrapped.as_bytes()],
        )
        .map(drop)
    }

    fn destroy_data_key(&mut self, name: &KeyName) -> Result<u64, StoreError> {
        let name = name.as_str();
        let c = self.conn;
        // Overwrite before clearing, then rely on secure_delete for the freed page contents.
        c.execute(
            "UPDATE deks SET wrapped = zeroblob(length(wrapped)) WHERE name = ?1",
            [name],
        )
        .map_err(backend)?;
        c.execute(
            "UPDATE deks SET wrapped = NULL, kek_version = NULL WHERE name = ?1",
            [name],
        )
        .map_err(backend)?;
        let owned: Vec<(i64, Option<Vec<u8>>)> = c
            .prepare_cached("SELECT rid, index_values FROM current WHERE key_name = ?1")
            .and_then(|mut s| {
                s.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(backend)?;
        for (rid, values) in &owned {
            remove_index(c, *rid, values.as_deref())?;
        }
        // Rows a bulk load staged for these resources.
        c.execute(
            "DELETE FROM idx_staged WHERE rid IN (SELECT rid FROM current WHERE key_name = ?1)",
            [name],
        )
        .map_err(backend)?;
        let n = c
            .execute(
                "UPDATE current SET shredded = 1, index_values = NULL WHERE key_name = ?1",
                [name],
            )
            .map_err(backend)?;
        self.shredded = true;
        Ok(n as u64)
    }
}

impl RecordTx for Tx<'_> {
    fn put_version(
        &mut self,
        v: &StoredVersion,
        index: &[BlindValue],
        leaf: &[u8],
    ) -> Result<u64, StoreError> {
        let c = self.conn;
        let version = to_i64(v.version);
        let salt = v.salt.ok_or_else(|| {
            StoreError::Backend("a version must carry its commitment salt".into())
        })?;
        let leaf_idx = append_leaf(c, leaf)?;
        exec(
            c,
            "INSERT INTO versions
               (rtype, id, version, last_updated, key_name, key_version, body, salt, leaf)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                v.resource_type,
                v.id,
                version,
                v.last_updated_micros,
                v.key_name,
                v.key_version,
                v.body.as_ref().map(Sealed::as_bytes),
                &salt[..],
                to_i64(leaf_idx)
            ],
        )?;
        let mut values = Vec::with_capacity(index.len() * BLIND_LEN);
        for b in index {
            values.extend_from_slice(&b.0);
        }
        let existing: Option<(i64, Option<Vec<u8>>)> = c
            .prepare_cached("SELECT rid, index_values FROM current WHERE rtype = ?1 AND id = ?2")
            .and_then(|mut s| {
                s.query_row([&v.resource_type, &v.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        let new = existing.is_none();
        let rid = match existing {
            Some((rid, old)) => {
                remove_index(c, rid, old.as_deref())?;
                exec(c, "DELETE FROM idx_staged WHERE rid = ?1", params![rid])?;
                exec(
                    c,
                    "UPDATE current SET version = ?2, last_updated = ?3, deleted = ?4, key_name = ?5,
                       shredded = 0, index_values = ?6 WHERE rid = ?1",
                    params![rid, version, v.last_updated_micros, v.body.is_none(), v.key_name, values],
                )?;
                rid
            }
            None => {
                exec(
                    c,
                    "INSERT INTO current (rtype, id, version, last_updated, deleted, key_name, index_values)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        v.resource_type,
                        v.id,
                        version,
                        v.last_updated_micros,
                        v.body.is_none(),
                        v.key_name,
                        values
                    ],
                )?;
                c.last_insert_rowid()
            }
        };
        let staged = self
            .stage_index
            .is_some_and(|except| new && !except.contains(&v.resource_type.as_str()));
        let table = if staged {
            IndexTable::Staged
        } else {
            IndexTable::Live
        };
        insert_index(c, table, rid, index)?;
        Ok(leaf_idx)
    }

    fn stage_new_index_entries(&mut self, except: &'static [&'static str]) -> bool {
        self.stage_index = Some(except);
        true
    }

    fn merge_staged_index(&mut self) -> Result<u64, StoreError> {
        merge_staged(self.conn, None)
    }

    fn amend_version(
        &mut self,
        before: &Amendment,
        now: &StoredVersion,
        leaf: &[u8],
    ) -> Result<u64, StoreError> {
        let c = self.conn;
        let salt = now.salt.ok_or_else(|| {
            StoreError::Backend("an amended version must carry its commitment salt".into())
        })?;
        let version = to_i64(before.version);
        let seq: u32 = c
            .prepare_cached(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM amendments
                 WHERE rtype = ?1 AND id = ?2 AND version = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![before.resource_type, before.id, version], |r| {
                    r.get(0)
                })
            })
            .map_err(backend)?;
        let leaf_idx = append_leaf(c, leaf)?;
        let changed = exec(
            c,
            "UPDATE versions SET key_name = ?4, key_version = ?5, body = ?6, salt = ?7,
                   leaf = ?8, expunged = ?9
                 WHERE rtype = ?1 AND id = ?2 AND version = ?3",
            params![
                before.resource_type,
                before.id,
                version,
                now.key_name,
                now.key_version,
                now.body.as_ref().map(Sealed::as_bytes),
                &salt[..],
                to_i64(leaf_idx),
                now.expunged
            ],
        )?;
        if changed != 1 {
            return Err(StoreError::Conflict);
        }
        exec(
            c,
            &format!(
                "INSERT INTO amendments ({AMENDMENT_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ),
            params![
                before.resource_type,
                before.id,
                version,
                seq,
                before.kind.as_str(),
                before.at_micros,
                before.last_updated_micros,
                before.key_name,
                before.key_version,
                before.digest.as_ref().map(|d| &d[..]),
                to_i64(before.leaf),
                &before.salt[..]
            ],
        )?;
        Ok(leaf_idx)
    }
}

impl IdentityTx for Tx<'_> {
    fn put_client(&mut self, x: &ClientRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            &format!(
                "INSERT OR REPLACE INTO oauth_clients ({CLIENT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                x.client_id,
                x.name,
                x.jwks,
                x.scopes,
                x.disabled,
                x.created_micros,
                x.redirect_uris.join("\n"),
            ],
        )
        .map(drop)
    }

    fn put_access_token(&mut self, t: &AccessTokenRow, now: i64) -> Result<(), StoreError> {
        exec(
            self.conn,
            "DELETE FROM oauth_tokens WHERE expires < ?1",
            [now],
        )?;
        exec(
            self.conn,
            "INSERT INTO oauth_tokens (hash, client_id, scopes, issued, expires, user_id, family)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &t.hash.as_bytes()[..],
                t.client_id,
                t.scopes,
                t.issued_micros,
                t.expires_micros,
                t.user_id,
                t.family,
            ],
        )
        .map(drop)
    }

    fn use_assertion_id(
        &mut self,
        client_id: &str,
        jti: &str,
        expires: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        exec(self.conn, "DELETE FROM oauth_jti WHERE expires < ?1", [now])?;
        exec(
            self.conn,
            "INSERT INTO oauth_jti (client_id, jti, expires) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            params![client_id, jti, expires],
        )
        .map(|n| n == 1)
    }

    fn put_break_glass(&mut self, g: &BreakGlassRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO break_glass (id, user_id, patient, reason, opened, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                g.id,
                g.user_id,
                g.patient,
                g.reason.as_bytes(),
                g.opened_micros,
                g.expires_micros,
            ],
        )
        .map(drop)
    }

    fn put_alert(&mut self, a: &AlertRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO alerts (id, kind, at, user_id, patient, detail, acknowledged_by,
                    acknowledged, verdict, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                a.id,
                a.kind,
                a.at_micros,
                a.user_id,
                a.patient,
                a.detail.as_bytes(),
                a.acknowledged_by,
                a.acknowledged_micros,
                a.verdict,
                a.note.as_ref().map(Sealed::as_bytes),
            ],
        )
        .map(drop)
    }

    fn judge_alert(
        &mut self,
        id: &str,
        by: &str,
        at_micros: i64,
        verdict: &str,
        note: Option<&Sealed>,
    ) -> Result<bool, StoreError> {
        exec(
            self.conn,
            "UPDATE alerts SET verdict = ?4, note = ?5,
                    acknowledged_by = COALESCE(acknowledged_by, ?2),
                    acknowledged = COALESCE(acknowledged, ?3)
                 WHERE id = ?1 AND verdict IS NULL",
            params![id, by, at_micros, verdict, note.map(Sealed::as_bytes)],
        )
        .map(|n| n == 1)
    }

    fn put_register_entry(&mut self, e: &RegisterRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            &format!(
                "INSERT INTO register ({})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                    subject = excluded.subject, opened = excluded.opened, due = excluded.due,
                    status = excluded.status, closed = excluded.closed,
                    updated = excluded.updated, body = excluded.body",
                rows::REGISTER_COLUMNS
            ),
            params![
                e.id,
                e.kind,
                e.subject,
                e.opened_micros,
                e.due_micros,
                e.status,
                e.closed_micros,
                e.updated_micros,
                e.body.as_bytes(),
            ],
        )
        .map(drop)
    }

    fn put_response(&mut self, r: &ResponseRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO responses (id, alert_id, action, subject, at, until, dry_run, detail,
                    undone_by, undone)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.id,
                r.alert_id,
                r.action,
                r.subject,
                r.at_micros,
                r.until_micros,
                r.dry_run,
                r.detail,
                r.undone_by,
                r.undone_micros,
            ],
        )
        .map(drop)
    }

    fn undo_response(&mut self, id: &str, by: &str, at_micros: i64) -> Result<bool, StoreError> {
        exec(
            self.conn,
            "UPDATE responses SET undone_by = ?2, undone = ?3 WHERE id = ?1 AND undone IS NULL",
            params![id, by, at_micros],
        )
        .map(|n| n == 1)
    }

    fn acknowledge_alert(
        &mut self,
        id: &str,
        by: &str,
        at_micros: i64,
    ) -> Result<bool, StoreError> {
        exec(
            self.conn,
            "UPDATE alerts SET acknowledged_by = ?2, acknowledged = ?3
                 WHERE id = ?1 AND acknowledged IS NULL",
            params![id, by, at_micros],
        )
        .map(|n| n == 1)
    }

    fn put_grant(&mut self, g: &GrantRow) -> Result<(), StoreError> {
        // Housekeeping: authorization codes live a minute; drop those that expired at least a
        // day before this grant's expiry (refresh tokens go when their family is revoked).
        exec(
            self.conn,
            "DELETE FROM oauth_grants WHERE expires < ?1 AND kind = 'code'",
            [g.expires_micros - 86_400_000_000],
        )?;
        exec(
            self.conn,
            "INSERT INTO oauth_grants (hash, kind, client_id, user_id, scopes, redirect_uri,
                    code_challenge, family, expires, used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                &g.hash.as_bytes()[..],
                g.kind,
                g.client_id,
                g.user_id,
                g.scopes,
                g.redirect_uri,
                g.code_challenge,
                g.family,
                g.expires_micros,
                g.used,
            ],
        )
        .map(drop)
    }

    fn use_grant(&mut self, hash: &TokenHash) -> Result<bool, StoreError> {
        exec(
            self.conn,
            "UPDATE oauth_grants SET used = 1 WHERE hash = ?1 AND used = 0",
            [&hash.as_bytes()[..]],
        )
        .map(|n| n == 1)
    }

    fn revoke_family(&mut self, family: &str) -> Result<u64, StoreError> {
        let grants = exec(
            self.conn,
            "DELETE FROM oauth_grants WHERE family = ?1",
            [family],
        )?;
        let tokens = exec(
            self.conn,
            "DELETE FROM oauth_tokens WHERE family = ?1",
            [family],
        )?;
        Ok((grants + tokens) as u64)
    }

    fn put_passkey(
        &mut self,
        user_id: &str,
        credential_id: &[u8],
        sealed: &Sealed,
        created: i64,
    ) -> Result<(), StoreError> {
        let owner = one(
            self.conn,
            "SELECT user_id FROM passkeys WHERE credential_id = ?1",
            [credential_id],
            rows::text,
        )?;
        if owner.is_some_and(|o| o != user_id) {
            return Err(StoreError::Conflict);
        }
        exec(
            self.conn,
            "INSERT INTO passkeys (credential_id, user_id, passkey, created)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (credential_id) DO UPDATE SET passkey = excluded.passkey",
            params![credential_id, user_id, sealed.as_bytes(), created],
        )
        .map(drop)
    }

    fn put_user(&mut self, u: &UserRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            &format!(
                "INSERT INTO users ({USER_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                    ?15)
                 ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id,
                    last_login = excluded.last_login,
                    practitioner = excluded.practitioner,
                    name_index = excluded.name_index, name_sealed = excluded.name_sealed,
                    role = excluded.role, password_hash = excluded.password_hash,
                    disabled = excluded.disabled, totp = excluded.totp,
                    totp_pending = excluded.totp_pending, totp_last_step = excluded.totp_last_step,
                    failed_logins = excluded.failed_logins, locked_until = excluded.locked_until"
            ),
            params![
                u.id,
                &u.name_index.0[..],
                u.name_sealed.as_bytes(),
                u.role,
                u.password_hash,
                u.disabled,
                u.created_micros,
                u.totp.as_ref().map(Sealed::as_bytes),
                u.totp_pending.as_ref().map(Sealed::as_bytes),
                u.totp_last_step.map(to_i64),
                u.failed_logins,
                u.locked_until_micros,
                u.patient_id,
                u.practitioner,
                u.last_login_micros,
            ],
        )
        .map(drop)
    }

    fn put_session(&mut self, x: &SessionRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT OR REPLACE INTO sessions
                 (hash, session_id, user_id, aal, created, last_seen, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &x.hash.as_bytes()[..],
                x.session_id,
                x.user_id,
                i64::from(x.aal),
                x.created_micros,
                x.last_seen_micros,
                x.expires_micros,
            ],
        )
        .map(drop)
    }

    fn delete_sessions(
        &mut self,
        user_id: &str,
        hash: Option<&TokenHash>,
    ) -> Result<u64, StoreError> {
        let n = match hash {
            Some(h) => exec(
                self.conn,
                "DELETE FROM sessions WHERE user_id = ?1 AND hash = ?2",
                params![user_id, &h.as_bytes()[..]],
            ),
            None => exec(
                self.conn,
                "DELETE FROM sessions WHERE user_id = ?1",
                [user_id],
            ),
        }?;
        Ok(n as u64)
    }

    fn set_recovery_codes(
        &mut self,
        user_id: &str,
        hashes: &[TokenHash],
    ) -> Result<(), StoreError> {
        exec(
            self.conn,
            "DELETE FROM recovery_codes WHERE user_id = ?1",
            [user_id],
        )?;
        let mut ins = self
            .conn
            .prepare_cached("INSERT INTO recovery_codes (user_id, hash) VALUES (?1, ?2)")
            .map_err(backend)?;
        for h in hashes {
            ins.execute(params![user_id, &h.as_bytes()[..]])
                .map_err(backend)?;
        }
        Ok(())
    }

    fn use_recovery_code(&mut self, user_id: &str, hash: &TokenHash) -> Result<bool, StoreError> {
        exec(
            self.conn,
            "DELETE FROM recovery_codes WHERE user_id = ?1 AND hash = ?2",
            params![user_id, &hash.as_bytes()[..]],
        )
        .map(|n| n == 1)
    }

    fn add_token(&mut self, hash: &TokenHash, t: &TokenRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            "INSERT INTO tokens (hash, token_id, role, created, expires, revoked, last_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                &hash.as_bytes()[..],
                t.token_id,
                t.role,
                t.created_micros,
                t.expires_micros,
                t.revoked_micros,
                t.last_used_micros
            ],
        )
        .map(drop)
    }

    fn revoke_token(&mut self, token_id: &str, now: i64) -> Result<bool, StoreError> {
        exec(
            self.conn,
            "UPDATE tokens SET revoked = ?2 WHERE token_id = ?1 AND revoked IS NULL",
            params![token_id, now],
        )
        .map(|n| n == 1)
    }

    fn token_used(&mut self, token_id: &str, now: i64) -> Result<(), StoreError> {
        exec(
            self.conn,
            "UPDATE tokens SET last_used = ?2
                 WHERE token_id = ?1 AND (last_used IS NULL OR last_used < ?2)",
            params![token_id, now],
        )
        .map(drop)
    }
}

impl PeerTx for Tx<'_> {
    fn put_peer(&mut self, p: &PeerRow) -> Result<(), StoreError> {
        exec(
            self.conn,
            &format!(
                "INSERT OR REPLACE INTO peers ({PEER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                p.node,
                p.fingerprint,
                p.url,
                p.document,
                p.organization,
                p.registered_micros,
                p.registered_by,
            ],
        )
        .map(drop)
    }

    fn put_share_receipt(
        &mut self,
        sender: &str,
        bundle_id: &str,
        receipt: &str,
        expires: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        exec(
            self.conn,
            "DELETE FROM share_receipts WHERE expires < ?1",
            [now],
        )?;
        exec(
            self.conn,
            "INSERT OR REPLACE INTO share_receipts (sender, bundle_id, receipt, expires)
                 VALUES (?1, ?2, ?3, ?4)",
            params![sender, bundle_id, receipt, expires],
        )
        .map(drop)
    }

    fn delete_peer(&mut self, node: &str) -> Result<bool, StoreError> {
        exec(self.conn, "DELETE FROM peers WHERE node = ?1", [node]).map(|n| n > 0)
    }
}
