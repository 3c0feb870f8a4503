//! SQL shared by the pooled readers and the writer's transaction.

use std::cell::{RefCell, RefMut};
use std::collections::HashMap;

use medvault_core::{KeyName, ResourceId, ResourceType};
use medvault_crypto::{BlindValue, Sealed, WrappedKey};
use medvault_ledger::{Hash, leaf_hash};
use medvault_store::rows::{self, Columns};
use medvault_store::{
    AccessTokenRow, AlertQuery, AlertRow, Amendment, AuditDetail, BreakGlassRow, ClientRow,
    CurrentMeta, DataKeyRow, GrantRow, IdentityTx, IndexQuery, KeyTx, LogTx, PeerRow, PeerTx,
    RecordTx, RegisterRow, ResponseRow, SCAN_SELECTIVITY_CAP, Scan, ScanDriver, SearchPage,
    SessionRow, SortOrder, StoreError, StoredVersion, TokenHash, TokenRow, UserRow, driver_step,
    list_step, meets, other_clauses,
};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use medvault_store::group::{contiguous_leaves, contiguous_nodes, derived_nodes, nodes_at};

use crate::conn::{Cols, Conn, Param, get, to_i64, to_u64};

const VERSION_COLUMNS: &str =
    "v.rtype, v.id, v.version, v.last_updated, v.key_name, v.key_version, v.body,
     (d.name IS NOT NULL AND d.wrapped IS NULL), v.salt, v.leaf, v.expunged";
const VERSION_JOIN: &str = "versions v LEFT JOIN deks d ON d.name = v.key_name";

/// `found`, each row decoded by `decode`.
fn decoded<T>(
    found: &[Row],
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    found.iter().map(|r| decode(&Cols(r))).collect()
}

/// The first row `sql` finds with `params`, decoded by `decode`, or `None`.
fn one<T>(
    c: &mut Conn,
    sql: &str,
    params: &[Param<'_>],
    decode: impl FnOnce(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    c.opt(sql, params)?
        .as_ref()
        .map(|r| decode(&Cols(r)))
        .transpose()
}

/// Every row `sql` finds with `params`, decoded by `decode`, in the query's order.
fn all<T>(
    c: &mut Conn,
    sql: &str,
    params: &[Param<'_>],
    decode: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    decoded(&c.query(sql, params)?, decode)
}

/// The number `sql` counts with `params` (its one row, one column).
fn counted(c: &mut Conn, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
    let r = c.one(sql, params)?;
    Ok(to_u64(get(&r, 0)?))
}

const AMENDMENT_COLUMNS: &str = "rtype, id, version, seq, kind, at, last_updated, key_name,
     key_version, digest, leaf, salt";

pub(crate) fn amendments_after(
    c: &mut Conn,
    after: Option<(&str, &str, u64, u32)>,
    limit: u64,
) -> Result<Vec<Amendment>, StoreError> {
    let (rt, id, v, seq) = after.unwrap_or(("", "", 0, 0));
    all(
        c,
        &format!(
            "SELECT {AMENDMENT_COLUMNS} FROM amendments
             WHERE (rtype, id, version, seq) > ($1, $2, $3, $4)
             ORDER BY rtype, id, version, seq LIMIT $5"
        ),
        &[&rt, &id, &to_i64(v), &i64::from(seq), &to_i64(limit)],
        rows::amendment,
    )
}

pub(crate) fn meta(c: &mut Conn, key: &str) -> Result<Option<String>, StoreError> {
    one(c, "SELECT v FROM meta WHERE k = $1", &[&key], rows::text)
}

pub(crate) fn keks(c: &mut Conn) -> Result<Vec<(u32, WrappedKey)>, StoreError> {
    all(
        c,
        "SELECT version, wrapped FROM keks ORDER BY version",
        &[],
        rows::kek,
    )
}

pub(crate) fn data_key(c: &mut Conn, name: &KeyName) -> Result<Option<DataKeyRow>, StoreError> {
    one(
        c,
        "SELECT name, key_version, kek_version, wrapped FROM deks WHERE name = $1",
        &[&name.as_str()],
        rows::data_key,
    )
}

pub(crate) fn data_key_names(c: &mut Conn) -> Result<Vec<KeyName>, StoreError> {
    all(
        c,
        "SELECT name FROM deks WHERE wrapped IS NOT NULL ORDER BY name",
        &[],
        rows::text,
    )?
    .into_iter()
    .map(medvault_store::stored_key_name)
    .collect()
}

pub(crate) fn current(
    c: &mut Conn,
    rt: &ResourceType,
    id: &ResourceId,
) -> Result<Option<CurrentMeta>, StoreError> {
    one(
        c,
        "SELECT version, deleted, key_name FROM current WHERE rtype = $1 AND id = $2",
        &[&rt.as_str(), &id.as_str()],
        rows::current,
    )
}

pub(crate) fn version(
    c: &mut Conn,
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
                 WHERE v.rtype = $1 AND v.id = $2 AND v.version = $3"
            ),
            &[&rt, &id, &to_i64(v)],
            rows::version,
        ),
        None => one(
            c,
            &format!(
                "SELECT {VERSION_COLUMNS} FROM current c
                 JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
                 LEFT JOIN deks d ON d.name = v.key_name
                 WHERE c.rtype = $1 AND c.id = $2"
            ),
            &[&rt, &id],
            rows::version,
        ),
    }
}

/// Runs a count and a page query with the same filter parameters plus limit and offset.
fn counted_page(
    c: &mut Conn,
    count_sql: &str,
    page_sql: &str,
    args: &[Box<dyn ToSql + Sync>],
    limit: u64,
    offset: u64,
) -> Result<SearchPage, StoreError> {
    let params: Vec<Param<'_>> = args.iter().map(|b| b.as_ref() as Param<'_>).collect();
    let (limit, offset) = (to_i64(limit), to_i64(offset));
    let mut paged = params.clone();
    paged.push(&limit);
    paged.push(&offset);
    let (counted, found) = c.query_two((count_sql, &params), (page_sql, &paged))?;
    let total: i64 = match counted.first() {
        Some(r) => get(r, 0)?,
        None => 0,
    };
    Ok(SearchPage {
        rows: decoded(&found, rows::version)?,
        total: to_u64(total),
    })
}
pub(crate) fn history(
    c: &mut Conn,
    rt: &ResourceType,
    id: Option<&ResourceId>,
    offset: u64,
    limit: u64,
) -> Result<SearchPage, StoreError> {
    let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(rt.as_str().to_owned())];
    let filter = match id {
        Some(id) => {
            args.push(Box::new(id.as_str().to_owned()));
            "v.rtype = $1 AND v.id = $2"
        }
        // Type history leaves out versions whose key was destroyed, so erased patients do not
        // show in totals or paging.
        None => "v.rtype = $1 AND NOT (d.name IS NOT NULL AND d.wrapped IS NULL)",
    };
    let n = args.len();
    counted_page(
        c,
        &format!("SELECT count(*) FROM {VERSION_JOIN} WHERE {filter}"),
        &format!(
            "SELECT {VERSION_COLUMNS} FROM {VERSION_JOIN} WHERE {filter}
             ORDER BY v.last_updated DESC, v.id DESC, v.version DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ),
        &args,
        limit,
        offset,
    )
}

/// `q`'s `_lastUpdated` bounds added to `filter` (over `current c`), their values to `args`.
fn time_bounds(q: &IndexQuery, args: &mut Vec<Box<dyn ToSql + Sync>>, filter: &mut String) {
    if let Some(from) = q.updated_from {
        args.push(Box::new(from));
        filter.push_str(&format!(" AND c.last_updated >= ${}", args.len()));
    }
    if let Some(to) = q.updated_to {
        args.push(Box::new(to));
        filter.push_str(&format!(" AND c.last_updated < ${}", args.len()));
    }
}

pub(crate) fn search(c: &mut Conn, q: &IndexQuery) -> Result<SearchPage, StoreError> {
    let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(q.resource_type.as_str().to_owned())];
    let mut filter = String::from("c.rtype = $1 AND NOT c.deleted AND NOT c.shredded");
    // With index clauses, the first one drives the query: its matches are found in the blind
    // index first (a materialised CTE, so the planner cannot choose to scan the whole type by
    // `rtype` instead, as it does while its statistics are young) and joined to `current`.
    let mut driver: Option<usize> = None;
    for values in &q.clauses {
        if values.is_empty() {
            filter.push_str(" AND FALSE");
            continue;
        }
        let list: Vec<Vec<u8>> = values.iter().map(|b| b.0.to_vec()).collect();
        args.push(Box::new(list));
        let n = args.len();
        if driver.is_none() {
            driver = Some(n);
        } else {
            filter.push_str(&format!(
                " AND c.rid IN (SELECT rid FROM idx WHERE value = ANY(${n}))"
            ));
        }
    }
    if let Some(ids) = &q.ids {
        if ids.is_empty() {
            filter.push_str(" AND FALSE");
        } else {
            args.push(Box::new(ids.clone()));
            filter.push_str(&format!(" AND c.id = ANY(${})", args.len()));
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
    let (matched, source) = match driver {
        Some(d) => (
            format!(
                "WITH m AS MATERIALIZED (SELECT DISTINCT rid FROM idx WHERE value = ANY(${d})) "
            ),
            // One primary-key lookup per match (LATERAL with OFFSET 0 is not flattened into
            // a join the planner could turn into a scan of the whole type).
            "m CROSS JOIN LATERAL (SELECT * FROM current WHERE rid = m.rid OFFSET 0) c",
        ),
        None => (String::new(), "current c"),
    };
    counted_page(
        c,
        &format!("{matched}SELECT count(*) FROM {source} WHERE {filter}"),
        &format!(
            "{matched}SELECT {VERSION_COLUMNS} FROM {source}
             JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
             LEFT JOIN deks d ON d.name = v.key_name
             WHERE {filter} ORDER BY {order} LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ),
        &args,
        q.limit,
        q.offset,
    )
}

/// See [`medvault_store::RecordRead::scan`]: the clauses' entries counted when that chooses the
/// driver, the driver's next positions, then the current versions among them that match the
/// rest of the query.
pub(crate) fn scan(
    c: &mut Conn,
    q: &IndexQuery,
    before: Option<u64>,
    limit: u64,
) -> Result<Scan, StoreError> {
    if q.matches_nothing() {
        return Ok(Scan::default());
    }
    let before = before.map_or(i64::MAX, to_i64);
    let n = to_i64(limit);
    let bytes =
        |values: &[BlindValue]| -> Vec<Vec<u8>> { values.iter().map(|b| b.0.to_vec()).collect() };
    let counts = if ScanDriver::needs_counts(q) {
        let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(before)];
        let mut cols = Vec::with_capacity(q.clauses.len());
        for values in &q.clauses {
            args.push(Box::new(bytes(values)));
            cols.push(format!(
                "(SELECT count(*) FROM (SELECT 1 FROM idx WHERE value = ANY(${}) AND rid < $1
                  LIMIT {SCAN_SELECTIVITY_CAP}) a)",
                args.len()
            ));
        }
        let params: Vec<Param<'_>> = args.iter().map(|b| b.as_ref() as Param<'_>).collect();
        let r = c.one(&format!("SELECT {}", cols.join(", ")), &params)?;
        (0..q.clauses.len())
            .map(|i| get::<i64>(&r, i).map(to_u64))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let driver = ScanDriver::choose(q, &counts);
    let rtype = q.resource_type.as_str().to_owned();
    let listed = |found: &[Row]| -> Result<Vec<u64>, StoreError> {
        found.iter().map(|r| get::<i64>(r, 0).map(to_u64)).collect()
    };
    let whole = |positions: Vec<u64>| list_step(positions, limit);
    let (positions, resume) = match driver {
        ScanDriver::Ids => {
            let ids = q.ids.clone().unwrap_or_default();
            whole(listed(&c.query(
                "SELECT rid FROM current WHERE rtype = $3 AND id = ANY($4) AND rid < $1
                 ORDER BY rid DESC LIMIT $2",
                &[&before, &n, &rtype, &ids],
            )?)?)
        }
        ScanDriver::Clause(i) => {
            // Each value's entries are in position order: a range read of each (one query for
            // all of a round's values), merged.
            let values = &q.clauses[i];
            driver_step(values.len(), limit, |which, batch| {
                let asked: Vec<Vec<u8>> = which.iter().map(|v| values[*v].0.to_vec()).collect();
                let found = c.query(
                    "SELECT u.i, x.rid FROM unnest($3::bytea[]) WITH ORDINALITY AS u(v, i)
                     CROSS JOIN LATERAL
                       (SELECT rid FROM idx WHERE value = u.v AND rid < $1
                        ORDER BY rid DESC LIMIT $2) x",
                    &[&before, &to_i64(batch), &asked],
                )?;
                let mut lists = vec![Vec::new(); which.len()];
                for r in &found {
                    let at = usize::try_from(get::<i64>(r, 0)?.saturating_sub(1)).unwrap_or(0);
                    if let Some(list) = lists.get_mut(at) {
                        list.push(to_u64(get::<i64>(r, 1)?));
                    }
                }
                for list in &mut lists {
                    list.sort_unstable_by(|a, b| b.cmp(a));
                }
                Ok::<_, StoreError>(lists)
            })?
        }
        ScanDriver::Type => whole(listed(&c.query(
            "SELECT rid FROM current WHERE rtype = $2 AND rid < $1 ORDER BY rid DESC LIMIT $3",
            &[&before, &rtype, &n],
        )?)?),
    };
    let examined = positions.len() as u64;
    if positions.is_empty() {
        return Ok(Scan {
            rows: Vec::new(),
            examined,
            resume,
        });
    }
    let mut at: Vec<i64> = positions.iter().map(|p| to_i64(*p)).collect();
    // The other clauses are checked against each candidate's own entries, a set lookup per
    // entry, however many values a clause has.
    let others = other_clauses(q, driver);
    if !others.is_empty() {
        let mut entries: HashMap<i64, Vec<u8>> = HashMap::new();
        for r in c.query("SELECT rid, value FROM idx WHERE rid = ANY($1)", &[&at])? {
            let value: Vec<u8> = get(&r, 1)?;
            entries
                .entry(get(&r, 0)?)
                .or_default()
                .extend_from_slice(&value);
        }
        at.retain(|rid| meets(&others, entries.get(rid).map_or(&[][..], Vec::as_slice)));
        if at.is_empty() {
            return Ok(Scan {
                rows: Vec::new(),
                examined,
                resume,
            });
        }
    }
    let mut args: Vec<Box<dyn ToSql + Sync>> = vec![Box::new(at), Box::new(rtype.clone())];
    let mut filter = String::from("c.rtype = $2 AND NOT c.deleted AND NOT c.shredded");
    if let (Some(ids), false) = (&q.ids, driver == ScanDriver::Ids) {
        args.push(Box::new(ids.clone()));
        filter.push_str(&format!(" AND c.id = ANY(${})", args.len()));
    }
    time_bounds(q, &mut args, &mut filter);
    let params: Vec<Param<'_>> = args.iter().map(|b| b.as_ref() as Param<'_>).collect();
    let found = c.query(
        &format!(
            "SELECT {VERSION_COLUMNS}, c.rid FROM unnest($1::bigint[]) AS drv(rid)
             CROSS JOIN LATERAL (SELECT * FROM current WHERE rid = drv.rid OFFSET 0) c
             JOIN versions v ON v.rtype = c.rtype AND v.id = c.id AND v.version = c.version
             LEFT JOIN deks d ON d.name = v.key_name
             WHERE {filter} ORDER BY c.rid DESC"
        ),
        &params,
    )?;
    Ok(Scan {
        rows: decoded(&found, rows::positioned_version)?,
        examined,
        resume,
    })
}

const USER_COLUMNS: &str = "id, name_index, name_sealed, role, password_hash, disabled, created,
     totp, totp_pending, totp_last_step, failed_logins, locked_until, patient_id, practitioner,
     last_login";

pub(crate) fn user(c: &mut Conn, id: &str) -> Result<Option<UserRow>, StoreError> {
    one(
        c,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
        &[&id],
        rows::user,
    )
}

pub(crate) fn user_by_name(
    c: &mut Conn,
    index: &BlindValue,
) -> Result<Option<UserRow>, StoreError> {
    one(
        c,
        &format!("SELECT {USER_COLUMNS} FROM users WHERE name_index = $1"),
        &[&&index.0[..]],
        rows::user,
    )
}

pub(crate) fn users(c: &mut Conn) -> Result<Vec<UserRow>, StoreError> {
    all(
        c,
        &format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"),
        &[],
        rows::user,
    )
}

pub(crate) fn session(c: &mut Conn, hash: &TokenHash) -> Result<Option<SessionRow>, StoreError> {
    one(
        c,
        "SELECT session_id, user_id, aal, created, last_seen, expires FROM sessions
         WHERE hash = $1",
        &[&&hash.as_bytes()[..]],
        |r| rows::session(r, hash),
    )
}

const CLIENT_COLUMNS: &str = "client_id, name, jwks, scopes, disabled, created, redirect_uris";

pub(crate) fn client(c: &mut Conn, id: &str) -> Result<Option<ClientRow>, StoreError> {
    one(
        c,
        &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1"),
        &[&id],
        rows::client,
    )
}

pub(crate) fn clients(c: &mut Conn) -> Result<Vec<ClientRow>, StoreError> {
    all(
        c,
        &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id"),
        &[],
        rows::client,
    )
}

const PEER_COLUMNS: &str =
    "node, fingerprint, url, document, organization, registered, registered_by";

pub(crate) fn peer(c: &mut Conn, node: &str) -> Result<Option<PeerRow>, StoreError> {
    one(
        c,
        &format!("SELECT {PEER_COLUMNS} FROM peers WHERE node = $1"),
        &[&node],
        rows::peer,
    )
}

pub(crate) fn peers(c: &mut Conn) -> Result<Vec<PeerRow>, StoreError> {
    all(
        c,
        &format!("SELECT {PEER_COLUMNS} FROM peers ORDER BY node"),
        &[],
        rows::peer,
    )
}

pub(crate) fn share_receipt(
    c: &mut Conn,
    sender: &str,
    bundle_id: &str,
) -> Result<Option<String>, StoreError> {
    one(
        c,
        "SELECT receipt FROM share_receipts WHERE sender = $1 AND bundle_id = $2",
        &[&sender, &bundle_id],
        rows::text,
    )
}

pub(crate) fn grant(c: &mut Conn, hash: &TokenHash) -> Result<Option<GrantRow>, StoreError> {
    one(
        c,
        "SELECT kind, client_id, user_id, scopes, redirect_uri, code_challenge, family, expires,
                used
         FROM oauth_grants WHERE hash = $1",
        &[&&hash.as_bytes()[..]],
        |r| rows::grant(r, hash),
    )
}

pub(crate) fn access_token(
    c: &mut Conn,
    hash: &TokenHash,
) -> Result<Option<AccessTokenRow>, StoreError> {
    one(
        c,
        "SELECT client_id, scopes, issued, expires, user_id, family FROM oauth_tokens
         WHERE hash = $1",
        &[&&hash.as_bytes()[..]],
        |r| rows::access_token(r, hash),
    )
}

pub(crate) fn passkeys(c: &mut Conn, user_id: &str) -> Result<Vec<(Vec<u8>, Sealed)>, StoreError> {
    all(
        c,
        "SELECT credential_id, passkey FROM passkeys WHERE user_id = $1
         ORDER BY created, credential_id",
        &[&user_id],
        rows::passkey,
    )
}

pub(crate) fn break_glass(
    c: &mut Conn,
    user_id: &str,
    patient: &str,
    now_micros: i64,
) -> Result<Option<BreakGlassRow>, StoreError> {
    one(
        c,
        "SELECT id, reason, opened, expires FROM break_glass
         WHERE user_id = $1 AND patient = $2 AND opened <= $3 AND expires > $3
         ORDER BY expires DESC LIMIT 1",
        &[&user_id, &patient, &now_micros],
        |r| rows::break_glass(r, user_id, patient),
    )
}

pub(crate) fn alerts(c: &mut Conn, open_only: bool) -> Result<Vec<AlertRow>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {} FROM alerts WHERE (NOT $1 OR acknowledged IS NULL)
             ORDER BY at DESC, id DESC",
            rows::ALERT_COLUMNS
        ),
        &[&open_only],
        rows::alert,
    )
}

pub(crate) fn alert(c: &mut Conn, id: &str) -> Result<Option<AlertRow>, StoreError> {
    one(
        c,
        &format!("SELECT {} FROM alerts WHERE id = $1", rows::ALERT_COLUMNS),
        &[&id],
        rows::alert,
    )
}

pub(crate) fn alerts_page(c: &mut Conn, q: &AlertQuery<'_>) -> Result<Vec<AlertRow>, StoreError> {
    let (before_at, before_id) = q.before.unzip();
    all(
        c,
        &format!(
            "SELECT {} FROM alerts
             WHERE (NOT $1 OR acknowledged IS NULL) AND ($2::TEXT IS NULL OR kind = $2)
               AND ($3::TEXT IS NULL OR user_id = $3) AND ($4::TEXT IS NULL OR patient = $4)
               AND ($5::BIGINT IS NULL OR at < $5 OR (at = $5 AND id < $6::TEXT))
             ORDER BY at DESC, id DESC LIMIT $7",
            rows::ALERT_COLUMNS
        ),
        &[
            &q.open_only,
            &q.kind,
            &q.user,
            &q.patient,
            &before_at,
            &before_id,
            &i64::from(q.limit),
        ],
        rows::alert,
    )
}

pub(crate) fn verdicts(
    c: &mut Conn,
    since_micros: i64,
) -> Result<Vec<(String, String, String)>, StoreError> {
    all(
        c,
        "SELECT kind, user_id, verdict FROM alerts WHERE verdict IS NOT NULL AND at >= $1",
        &[&since_micros],
        |r| Ok((r.text(0)?, r.text(1)?, r.text(2)?)),
    )
}

pub(crate) fn response(c: &mut Conn, id: &str) -> Result<Option<ResponseRow>, StoreError> {
    one(
        c,
        &format!(
            "SELECT {} FROM responses WHERE id = $1",
            rows::RESPONSE_COLUMNS
        ),
        &[&id],
        rows::response,
    )
}

pub(crate) fn responses(
    c: &mut Conn,
    alert: Option<&str>,
    before: Option<(i64, &str)>,
    limit: u32,
) -> Result<Vec<ResponseRow>, StoreError> {
    let (before_at, before_id) = before.unzip();
    all(
        c,
        &format!(
            "SELECT {} FROM responses
             WHERE ($1::TEXT IS NULL OR alert_id = $1)
               AND ($2::BIGINT IS NULL OR at < $2 OR (at = $2 AND id < $3::TEXT))
             ORDER BY at DESC, id DESC LIMIT $4",
            rows::RESPONSE_COLUMNS
        ),
        &[&alert, &before_at, &before_id, &i64::from(limit)],
        rows::response,
    )
}

pub(crate) fn register_entry(c: &mut Conn, id: &str) -> Result<Option<RegisterRow>, StoreError> {
    one(
        c,
        &format!(
            "SELECT {} FROM register WHERE id = $1",
            rows::REGISTER_COLUMNS
        ),
        &[&id],
        rows::register_entry,
    )
}

pub(crate) fn register(c: &mut Conn, kind: Option<&str>) -> Result<Vec<RegisterRow>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {} FROM register WHERE ($1::TEXT IS NULL OR kind = $1)
             ORDER BY opened DESC, id DESC",
            rows::REGISTER_COLUMNS
        ),
        &[&kind],
        rows::register_entry,
    )
}

pub(crate) fn register_in_force(
    c: &mut Conn,
    kind: &str,
    subject: &str,
) -> Result<bool, StoreError> {
    Ok(c.opt(
        "SELECT 1 FROM register WHERE kind = $1 AND subject = $2 AND closed IS NULL LIMIT 1",
        &[&kind, &subject],
    )?
    .is_some())
}

pub(crate) fn active_responses(
    c: &mut Conn,
    now_micros: i64,
) -> Result<Vec<ResponseRow>, StoreError> {
    all(
        c,
        &format!(
            "SELECT {} FROM responses
             WHERE NOT dry_run AND undone IS NULL AND (until IS NULL OR until > $1)
             ORDER BY at, id",
            rows::RESPONSE_COLUMNS
        ),
        &[&now_micros],
        rows::response,
    )
}

pub(crate) fn recovery_codes_left(c: &mut Conn, user_id: &str) -> Result<u64, StoreError> {
    counted(
        c,
        "SELECT count(*) FROM recovery_codes WHERE user_id = $1",
        &[&user_id],
    )
}

const TOKEN_COLUMNS: &str = "role, token_id, created, expires, revoked, last_used";

pub(crate) fn token(c: &mut Conn, hash: &TokenHash) -> Result<Option<TokenRow>, StoreError> {
    one(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"),
        &[&&hash.as_bytes()[..]],
        rows::token,
    )
}

pub(crate) fn tokens(c: &mut Conn) -> Result<Vec<TokenRow>, StoreError> {
    all(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created, token_id COLLATE \"C\""),
        &[],
        rows::token,
    )
}

pub(crate) fn ledger_size(c: &mut Conn) -> Result<u64, StoreError> {
    counted(
        c,
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM ledger_leaves",
        &[],
    )
}

/// Nodes `[start, start + count)` of tree level `level`, stopping at the first one missing
/// (levels that are not stored are hashed up from the stored level below them).
pub(crate) fn ledger_nodes(
    c: &mut Conn,
    level: u8,
    start: u64,
    count: u64,
) -> Result<Vec<Hash>, StoreError> {
    derived_nodes(level, start, count, |l, s, n| stored_nodes(c, l, s, n))
}

/// Nodes of a stored level. Level 0 (leaf hashes) is not stored: it is hashed from the leaves.
fn stored_nodes(c: &mut Conn, level: u8, start: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
    if level == 0 {
        return Ok(contiguous_leaves(start, &ledger_entries(c, start, count)?));
    }
    let found = all(
        c,
        "SELECT idx, hash FROM ledger_nodes WHERE level = $1 AND idx >= $2 AND idx < $3
         ORDER BY idx",
        &[
            &i64::from(level),
            &to_i64(start),
            &to_i64(start.saturating_add(count)),
        ],
        rows::ledger_node,
    )?;
    Ok(contiguous_nodes(start, found))
}
/// The given nodes: those of stored levels in two round trips (stored nodes; leaves for level
/// 0), each of the others from one run of the stored level below it.
pub(crate) fn ledger_nodes_at(
    c: &mut Conn,
    keys: &[(u8, u64)],
) -> Result<Vec<Option<Hash>>, StoreError> {
    nodes_at(c, keys, stored_nodes_at, stored_nodes)
}

fn stored_nodes_at(c: &mut Conn, keys: &[(u8, u64)]) -> Result<Vec<Option<Hash>>, StoreError> {
    let mut found: HashMap<(u8, u64), Hash> = HashMap::with_capacity(keys.len());
    let (leaves, nodes): (Vec<_>, Vec<_>) = keys.iter().partition(|(level, _)| *level == 0);
    if !nodes.is_empty() {
        let levels: Vec<i64> = nodes.iter().map(|(l, _)| i64::from(*l)).collect();
        let idxs: Vec<i64> = nodes.iter().map(|(_, i)| to_i64(*i)).collect();
        let got = c.query(
            "SELECT n.level, n.idx, n.hash FROM ledger_nodes n
             JOIN unnest($1::bigint[], $2::bigint[]) AS k(level, idx)
               ON n.level = k.level AND n.idx = k.idx",
            &[&levels, &idxs],
        )?;
        for r in &got {
            let (level, idx, hash): (i64, i64, Vec<u8>) = (get(r, 0)?, get(r, 1)?, get(r, 2)?);
            if let (Ok(level), Ok(hash)) = (u8::try_from(level), <Hash>::try_from(hash.as_slice()))
            {
                found.insert((level, to_u64(idx)), hash);
            }
        }
    }
    if !leaves.is_empty() {
        let idxs: Vec<i64> = leaves.iter().map(|(_, i)| to_i64(*i)).collect();
        let got = c.query(
            "SELECT idx, entry FROM ledger_leaves WHERE idx = ANY($1)",
            &[&idxs],
        )?;
        for r in &got {
            let (idx, entry): (i64, Vec<u8>) = (get(r, 0)?, get(r, 1)?);
            found.insert((0, to_u64(idx)), leaf_hash(&entry));
        }
    }
    Ok(keys.iter().map(|k| found.get(k).copied()).collect())
}

pub(crate) fn ledger_entries(
    c: &mut Conn,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    all(
        c,
        "SELECT idx, entry FROM ledger_leaves WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        &[&to_i64(start), &to_i64(start.saturating_add(count))],
        rows::ledger_entry,
    )
}

pub(crate) fn audit_details(
    c: &mut Conn,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, AuditDetail)>, StoreError> {
    all(
        c,
        "SELECT leaf, salt, detail FROM ledger_audit WHERE leaf >= $1 AND leaf < $2
         ORDER BY leaf",
        &[&to_i64(start), &to_i64(start.saturating_add(count))],
        rows::audit_detail,
    )
}

pub(crate) fn access_leaves(
    c: &mut Conn,
    tag: &BlindValue,
    (floor, below): (u64, u64),
    count: u64,
) -> Result<Vec<u64>, StoreError> {
    all(
        c,
        "SELECT leaf FROM access_patients WHERE tag = $1 AND leaf >= $2 AND leaf < $3
         ORDER BY leaf DESC LIMIT $4",
        &[&&tag.0[..], &to_i64(floor), &to_i64(below), &to_i64(count)],
        rows::leaf,
    )
}

pub(crate) fn access_tags(
    c: &mut Conn,
    start: u64,
    count: u64,
) -> Result<Vec<(u64, BlindValue)>, StoreError> {
    all(
        c,
        "SELECT leaf, tag FROM access_patients WHERE leaf >= $1 AND leaf < $2
         ORDER BY leaf, tag",
        &[&to_i64(start), &to_i64(start.saturating_add(count))],
        rows::access_tag,
    )
}

pub(crate) fn access_tags_astray(
    c: &mut Conn,
    size: u64,
) -> Result<(u64, Option<String>), StoreError> {
    const ASTRAY: &str = "leaf < 0 OR leaf >= $1 OR octet_length(tag) <> 16";
    let n = counted(
        c,
        &format!("SELECT count(*) FROM access_patients WHERE {ASTRAY}"),
        &[&to_i64(size)],
    )?;
    let first = one(
        c,
        &format!("SELECT leaf::text FROM access_patients WHERE {ASTRAY} LIMIT 1"),
        &[&to_i64(size)],
        rows::text,
    )?;
    Ok((n, first))
}

pub(crate) fn checkpoint(
    c: &mut Conn,
    size: Option<u64>,
) -> Result<Option<(u64, String)>, StoreError> {
    match size {
        Some(n) => one(
            c,
            "SELECT size, note FROM ledger_checkpoints WHERE size = $1",
            &[&to_i64(n)],
            rows::checkpoint,
        ),
        None => one(
            c,
            "SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1",
            &[],
            rows::checkpoint,
        ),
    }
}

pub(crate) fn witnessed(c: &mut Conn, origin: &str) -> Result<Option<(u64, Hash)>, StoreError> {
    one(
        c,
        "SELECT size, root FROM witnessed WHERE origin = $1",
        &[&origin],
        rows::witnessed,
    )
}

pub(crate) fn current_after(
    c: &mut Conn,
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
             WHERE c.rtype = $1 AND c.id > $2 AND c.last_updated >= $3
               AND NOT c.deleted AND NOT c.shredded
             ORDER BY c.id LIMIT $4"
        ),
        &[
            &rt.as_str(),
            &after.unwrap_or(""),
            &since.unwrap_or(i64::MIN),
            &to_i64(limit),
        ],
        rows::version,
    )
}

pub(crate) fn versions_after(
    c: &mut Conn,
    after: Option<(&str, &str, u64)>,
    limit: u64,
) -> Result<Vec<StoredVersion>, StoreError> {
    let (rt, id, v) = after.unwrap_or(("", "", 0));
    all(
        c,
        &format!(
            "SELECT {VERSION_COLUMNS} FROM {VERSION_JOIN}
             WHERE (v.rtype, v.id, v.version) > ($1, $2, $3)
             ORDER BY v.rtype, v.id, v.version LIMIT $4"
        ),
        &[&rt, &id, &to_i64(v), &to_i64(limit)],
        rows::version,
    )
}

/// The CTE that appends leaf `$1` at the end of the log (only the writer runs it, holding the
/// log's lock) and yields its index as `leaf.idx`.
const APPEND_LEAF: &str = "leaf AS (
    INSERT INTO ledger_leaves (idx, entry)
    SELECT COALESCE(MAX(idx) + 1, 0), $1 FROM ledger_leaves RETURNING idx)";

/// The writer's view of one op's savepoint.
pub(crate) struct Tx<'c> {
    conn: RefCell<&'c mut Conn>,
    /// Set when the op destroyed a key, so the writer vacuums the key table after commit.
    pub(crate) shredded: bool,
    /// Leaves the op appended: index and leaf hash, for the writer to hash into the tree.
    pub(crate) appended: Vec<(u64, Hash)>,
    /// Set when the op loaded leaves in bulk (restore), which the writer then reads back.
    pub(crate) loaded_leaves: bool,
}

impl<'c> Tx<'c> {
    pub(crate) fn new(conn: &'c mut Conn) -> Self {
        Self {
            conn: RefCell::new(conn),
            shredded: false,
            appended: Vec::new(),
            loaded_leaves: false,
        }
    }

    fn c(&self) -> RefMut<'_, &'c mut Conn> {
        self.conn.borrow_mut()
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&mut self.c())
    }

    fn exec(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        self.conn.get_mut().exec(sql, params)
    }

    /// The index of `leaf`, which the op's statement appended and answered with `row` (the
    /// leaf's index first), recorded for the writer to hash into the tree.
    fn leaf_appended(&mut self, row: &Row, leaf: &[u8]) -> Result<u64, StoreError> {
        let idx = to_u64(get(row, 0)?);
        self.appended.push((idx, leaf_hash(leaf)));
        Ok(idx)
    }

    /// True if a statement of this op failed (see [`Conn::failed`]).
    pub(crate) fn statement_failed(&self) -> bool {
        self.c().failed
    }
}

medvault_store::forward_reads!(Tx<'_>, crate::sql);

impl LogTx for Tx<'_> {
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO meta (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            &[&key, &value],
        )
        .map(drop)
    }

    fn load(
        &mut self,
        table: &medvault_store::dump::Table,
        rows: &[Vec<medvault_store::dump::Cell>],
    ) -> Result<(), StoreError> {
        self.loaded_leaves |= table.name == "ledger_leaves";
        crate::dump::load(self.conn.get_mut(), table, rows)
    }

    fn append_audit(&mut self, detail: &AuditDetail, leaf: &[u8]) -> Result<u64, StoreError> {
        // One round trip: the leaf and its detail.
        let row = self.conn.get_mut().one(
            &format!(
                "WITH {APPEND_LEAF}
                 INSERT INTO ledger_audit (leaf, salt, detail) SELECT idx, $2, $3 FROM leaf
                 RETURNING leaf"
            ),
            &[&leaf, &&detail.salt[..], &detail.sealed.as_bytes()],
        )?;
        self.leaf_appended(&row, leaf)
    }

    fn add_access_tags(&mut self, rows: &[(u64, BlindValue)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let leaves: Vec<i64> = rows.iter().map(|(l, _)| to_i64(*l)).collect();
        let tags: Vec<&[u8]> = rows.iter().map(|(_, t)| &t.0[..]).collect();
        self.exec(
            "INSERT INTO access_patients (tag, leaf)
             SELECT * FROM unnest($1::bytea[], $2::bigint[]) ON CONFLICT DO NOTHING",
            &[&tags, &leaves],
        )
        .map(drop)
    }

    fn remove_audit_details(&mut self, start: u64, end: u64) -> Result<u64, StoreError> {
        self.exec(
            "DELETE FROM ledger_audit WHERE leaf >= $1 AND leaf < $2",
            &[&to_i64(start), &to_i64(end)],
        )
    }

    fn set_witnessed(
        &mut self,
        origin: &str,
        size: u64,
        root: &Hash,
        note: &str,
    ) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO witnessed (origin, size, root, note) VALUES ($1, $2, $3, $4)
             ON CONFLICT (origin) DO UPDATE
               SET size = excluded.size, root = excluded.root, note = excluded.note",
            &[&origin, &to_i64(size), &&root[..], &note],
        )
        .map(drop)
    }

    fn put_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO ledger_checkpoints (size, note) VALUES ($1, $2)
             ON CONFLICT (size) DO UPDATE SET note = excluded.note",
            &[&to_i64(size), &note],
        )
        .map(drop)
    }
}

impl KeyTx for Tx<'_> {
    fn add_kek(&mut self, version: u32, wrapped: &WrappedKey) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO keks (version, wrapped) VALUES ($1, $2)",
            &[&i64::from(version), &wrapped.as_bytes()],
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
        self.exec(
            "INSERT INTO deks (name, key_version, kek_version, wrapped) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET key_version = excluded.key_version,
               kek_version = excluded.kek_version, wrapped = excluded.wrapped",
            &[
                &name,
                &i64::from(key_version),
                &i64::from(kek_version),
                &wrapped.as_bytes(),
            ],
        )
        .map(drop)
    }

    fn destroy_data_key(&mut self, name: &KeyName) -> Result<u64, StoreError> {
        let name = name.as_str();
        // Overwritten, then cleared; the writer rewrites the table after commit so the old row
        // versions (MVCC keeps them) go too.
        self.exec(
            "UPDATE deks SET wrapped = decode(repeat('00', length(wrapped)), 'hex') WHERE name = $1",
            &[&name],
        )?;
        self.exec(
            "UPDATE deks SET wrapped = NULL, kek_version = NULL WHERE name = $1",
            &[&name],
        )?;
        self.exec(
            "DELETE FROM idx i USING current c WHERE c.key_name = $1 AND i.rid = c.rid",
            &[&name],
        )?;
        let n = self.exec(
            "UPDATE current SET shredded = TRUE WHERE key_name = $1",
            &[&name],
        )?;
        self.shredded = true;
        Ok(n)
    }
}

impl RecordTx for Tx<'_> {
    fn put_version(
        &mut self,
        v: &StoredVersion,
        index: &[BlindValue],
        leaf: &[u8],
    ) -> Result<u64, StoreError> {
        let salt = v.salt.ok_or_else(|| {
            StoreError::Backend("a version must carry its commitment salt".into())
        })?;
        let values: Vec<Vec<u8>> = index.iter().map(|b| b.0.to_vec()).collect();
        // One statement, one round trip: the leaf, the version (a unique violation if another
        // writer made it first), the current row, and the index entries (those the new version
        // no longer has removed, the others added).
        let row = self.conn.get_mut().one(
            &format!(
                "WITH {APPEND_LEAF},
                 ver AS (
                   INSERT INTO versions
                     (rtype, id, version, last_updated, key_name, key_version, body, salt, leaf)
                   SELECT $2, $3, $4, $5, $6, $7, $8, $9, idx FROM leaf RETURNING leaf),
                 cur AS (
                   INSERT INTO current (rtype, id, version, last_updated, deleted, key_name)
                   VALUES ($2, $3, $4, $5, $10, $6)
                   ON CONFLICT (rtype, id) DO UPDATE SET version = excluded.version,
                     last_updated = excluded.last_updated, deleted = excluded.deleted,
                     key_name = excluded.key_name, shredded = FALSE
                   RETURNING rid),
                 gone AS (
                   DELETE FROM idx WHERE rid = (SELECT rid FROM cur)
                     AND NOT (value = ANY($11::bytea[]))),
                 added AS (
                   INSERT INTO idx (value, rid) SELECT unnest($11::bytea[]), (SELECT rid FROM cur)
                   ON CONFLICT DO NOTHING)
                 SELECT leaf FROM ver"
            ),
            &[
                &leaf,
                &v.resource_type,
                &v.id,
                &to_i64(v.version),
                &v.last_updated_micros,
                &v.key_name,
                &i64::from(v.key_version),
                &v.body.as_ref().map(Sealed::as_bytes),
                &&salt[..],
                &v.body.is_none(),
                &values,
            ],
        )?;
        self.leaf_appended(&row, leaf)
    }

    fn amend_version(
        &mut self,
        before: &Amendment,
        now: &StoredVersion,
        leaf: &[u8],
    ) -> Result<u64, StoreError> {
        let salt = now.salt.ok_or_else(|| {
            StoreError::Backend("an amended version must carry its commitment salt".into())
        })?;
        // One statement: the leaf, the version row (nothing when it does not exist, so no
        // amendment either), the amendment with the next sequence number.
        let found = self.conn.get_mut().query(
            &format!(
                "WITH {APPEND_LEAF},
                 ver AS (
                   UPDATE versions SET key_name = $5, key_version = $6, body = $7, salt = $8,
                     leaf = (SELECT idx FROM leaf), expunged = $9
                   WHERE rtype = $2 AND id = $3 AND version = $4 RETURNING leaf),
                 am AS (
                   INSERT INTO amendments ({AMENDMENT_COLUMNS})
                   SELECT $2, $3, $4,
                     (SELECT COALESCE(MAX(seq), 0) + 1 FROM amendments
                      WHERE rtype = $2 AND id = $3 AND version = $4),
                     $10, $11, $12, $13, $14, $15, $16, $17
                   FROM ver)
                 SELECT leaf FROM ver"
            ),
            &[
                &leaf,
                &before.resource_type,
                &before.id,
                &to_i64(before.version),
                &now.key_name,
                &i64::from(now.key_version),
                &now.body.as_ref().map(Sealed::as_bytes),
                &&salt[..],
                &now.expunged,
                &before.kind.as_str(),
                &before.at_micros,
                &before.last_updated_micros,
                &before.key_name,
                &i64::from(before.key_version),
                &before.digest.as_ref().map(|d| &d[..]),
                &to_i64(before.leaf),
                &&before.salt[..],
            ],
        )?;
        let Some(row) = found.first() else {
            // The leaf was appended: the transaction must not commit.
            return Err(StoreError::Conflict);
        };
        self.leaf_appended(row, leaf)
    }
}

impl IdentityTx for Tx<'_> {
    fn put_client(&mut self, x: &ClientRow) -> Result<(), StoreError> {
        self.exec(
            &format!(
                "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (client_id) DO UPDATE SET name = excluded.name,
                   jwks = excluded.jwks, scopes = excluded.scopes, disabled = excluded.disabled,
                   created = excluded.created, redirect_uris = excluded.redirect_uris"
            ),
            &[
                &x.client_id,
                &x.name,
                &x.jwks,
                &x.scopes,
                &x.disabled,
                &x.created_micros,
                &x.redirect_uris.join("\n"),
            ],
        )
        .map(drop)
    }

    fn put_access_token(&mut self, t: &AccessTokenRow, now: i64) -> Result<(), StoreError> {
        self.exec("DELETE FROM oauth_tokens WHERE expires < $1", &[&now])?;
        self.exec(
            "INSERT INTO oauth_tokens (hash, client_id, scopes, issued, expires, user_id, family)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &&t.hash.as_bytes()[..],
                &t.client_id,
                &t.scopes,
                &t.issued_micros,
                &t.expires_micros,
                &t.user_id,
                &t.family,
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
        self.exec("DELETE FROM oauth_jti WHERE expires < $1", &[&now])?;
        self.exec(
            "INSERT INTO oauth_jti (client_id, jti, expires) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&client_id, &jti, &expires],
        )
        .map(|n| n == 1)
    }

    fn put_break_glass(&mut self, g: &BreakGlassRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO break_glass (id, user_id, patient, reason, opened, expires)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &g.id,
                &g.user_id,
                &g.patient,
                &g.reason.as_bytes(),
                &g.opened_micros,
                &g.expires_micros,
            ],
        )
        .map(drop)
    }

    fn put_alert(&mut self, a: &AlertRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO alerts (id, kind, at, user_id, patient, detail, acknowledged_by,
                acknowledged, verdict, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &a.id,
                &a.kind,
                &a.at_micros,
                &a.user_id,
                &a.patient,
                &a.detail.as_bytes(),
                &a.acknowledged_by,
                &a.acknowledged_micros,
                &a.verdict,
                &a.note.as_ref().map(Sealed::as_bytes),
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
        self.exec(
            "UPDATE alerts SET verdict = $4, note = $5,
                acknowledged_by = COALESCE(acknowledged_by, $2),
                acknowledged = COALESCE(acknowledged, $3)
             WHERE id = $1 AND verdict IS NULL",
            &[&id, &by, &at_micros, &verdict, &note.map(Sealed::as_bytes)],
        )
        .map(|n| n == 1)
    }

    fn put_register_entry(&mut self, e: &RegisterRow) -> Result<(), StoreError> {
        self.exec(
            &format!(
                "INSERT INTO register ({})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                    subject = excluded.subject, opened = excluded.opened, due = excluded.due,
                    status = excluded.status, closed = excluded.closed,
                    updated = excluded.updated, body = excluded.body",
                rows::REGISTER_COLUMNS
            ),
            &[
                &e.id,
                &e.kind,
                &e.subject,
                &e.opened_micros,
                &e.due_micros,
                &e.status,
                &e.closed_micros,
                &e.updated_micros,
                &e.body.as_bytes(),
            ],
        )
        .map(drop)
    }

    fn put_response(&mut self, r: &ResponseRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO responses (id, alert_id, action, subject, at, until, dry_run, detail,
                undone_by, undone)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &r.id,
                &r.alert_id,
                &r.action,
                &r.subject,
                &r.at_micros,
                &r.until_micros,
                &r.dry_run,
                &r.detail,
                &r.undone_by,
                &r.undone_micros,
            ],
        )
        .map(drop)
    }

    fn undo_response(&mut self, id: &str, by: &str, at_micros: i64) -> Result<bool, StoreError> {
        self.exec(
            "UPDATE responses SET undone_by = $2, undone = $3 WHERE id = $1 AND undone IS NULL",
            &[&id, &by, &at_micros],
        )
        .map(|n| n == 1)
    }

    fn acknowledge_alert(
        &mut self,
        id: &str,
        by: &str,
        at_micros: i64,
    ) -> Result<bool, StoreError> {
        self.exec(
            "UPDATE alerts SET acknowledged_by = $2, acknowledged = $3
             WHERE id = $1 AND acknowledged IS NULL",
            &[&id, &by, &at_micros],
        )
        .map(|n| n == 1)
    }

    fn put_grant(&mut self, g: &GrantRow) -> Result<(), StoreError> {
        // Housekeeping: authorization codes live a minute; drop those that expired at least a
        // day before this grant's expiry (refresh tokens go when their family is revoked).
        self.exec(
            "DELETE FROM oauth_grants WHERE expires < $1 AND kind = 'code'",
            &[&(g.expires_micros - 86_400_000_000)],
        )?;
        self.exec(
            "INSERT INTO oauth_grants (hash, kind, client_id, user_id, scopes, redirect_uri,
                code_challenge, family, expires, used)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &&g.hash.as_bytes()[..],
                &g.kind,
                &g.client_id,
                &g.user_id,
                &g.scopes,
                &g.redirect_uri,
                &g.code_challenge,
                &g.family,
                &g.expires_micros,
                &g.used,
            ],
        )
        .map(drop)
    }

    fn use_grant(&mut self, hash: &TokenHash) -> Result<bool, StoreError> {
        self.exec(
            "UPDATE oauth_grants SET used = TRUE WHERE hash = $1 AND NOT used",
            &[&&hash.as_bytes()[..]],
        )
        .map(|n| n == 1)
    }

    fn revoke_family(&mut self, family: &str) -> Result<u64, StoreError> {
        let grants = self.exec("DELETE FROM oauth_grants WHERE family = $1", &[&family])?;
        let tokens = self.exec("DELETE FROM oauth_tokens WHERE family = $1", &[&family])?;
        Ok(grants + tokens)
    }

    fn put_passkey(
        &mut self,
        user_id: &str,
        credential_id: &[u8],
        sealed: &Sealed,
        created: i64,
    ) -> Result<(), StoreError> {
        let c: &mut Conn = self.conn.get_mut();
        let owner = one(
            c,
            "SELECT user_id FROM passkeys WHERE credential_id = $1",
            &[&credential_id],
            rows::text,
        )?;
        if owner.is_some_and(|o| o != user_id) {
            return Err(StoreError::Conflict);
        }
        c.exec(
            "INSERT INTO passkeys (credential_id, user_id, passkey, created)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (credential_id) DO UPDATE SET passkey = excluded.passkey",
            &[&credential_id, &user_id, &sealed.as_bytes(), &created],
        )
        .map(drop)
    }

    fn put_user(&mut self, u: &UserRow) -> Result<(), StoreError> {
        self.exec(
            &format!(
                "INSERT INTO users ({USER_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                    $15)
                 ON CONFLICT (id) DO UPDATE SET patient_id = excluded.patient_id,
                    last_login = excluded.last_login,
                    practitioner = excluded.practitioner,
                    name_index = excluded.name_index, name_sealed = excluded.name_sealed,
                    role = excluded.role, password_hash = excluded.password_hash,
                    disabled = excluded.disabled, totp = excluded.totp,
                    totp_pending = excluded.totp_pending, totp_last_step = excluded.totp_last_step,
                    failed_logins = excluded.failed_logins, locked_until = excluded.locked_until"
            ),
            &[
                &u.id,
                &&u.name_index.0[..],
                &u.name_sealed.as_bytes(),
                &u.role,
                &u.password_hash,
                &u.disabled,
                &u.created_micros,
                &u.totp.as_ref().map(Sealed::as_bytes),
                &u.totp_pending.as_ref().map(Sealed::as_bytes),
                &u.totp_last_step.map(to_i64),
                &i64::from(u.failed_logins),
                &u.locked_until_micros,
                &u.patient_id,
                &u.practitioner,
                &u.last_login_micros,
            ],
        )
        .map(drop)
    }

    fn put_session(&mut self, x: &SessionRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO sessions (hash, session_id, user_id, aal, created, last_seen, expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (hash) DO UPDATE SET session_id = excluded.session_id,
               user_id = excluded.user_id, aal = excluded.aal, created = excluded.created,
               last_seen = excluded.last_seen, expires = excluded.expires",
            &[
                &&x.hash.as_bytes()[..],
                &x.session_id,
                &x.user_id,
                &i64::from(x.aal),
                &x.created_micros,
                &x.last_seen_micros,
                &x.expires_micros,
            ],
        )
        .map(drop)
    }

    fn delete_sessions(
        &mut self,
        user_id: &str,
        hash: Option<&TokenHash>,
    ) -> Result<u64, StoreError> {
        match hash {
            Some(h) => self.exec(
                "DELETE FROM sessions WHERE user_id = $1 AND hash = $2",
                &[&user_id, &&h.as_bytes()[..]],
            ),
            None => self.exec("DELETE FROM sessions WHERE user_id = $1", &[&user_id]),
        }
    }

    fn set_recovery_codes(
        &mut self,
        user_id: &str,
        hashes: &[TokenHash],
    ) -> Result<(), StoreError> {
        self.exec("DELETE FROM recovery_codes WHERE user_id = $1", &[&user_id])?;
        let list: Vec<Vec<u8>> = hashes.iter().map(|h| h.as_bytes().to_vec()).collect();
        self.exec(
            "INSERT INTO recovery_codes (user_id, hash) SELECT $1, unnest($2::bytea[])
             ON CONFLICT DO NOTHING",
            &[&user_id, &list],
        )
        .map(drop)
    }

    fn use_recovery_code(&mut self, user_id: &str, hash: &TokenHash) -> Result<bool, StoreError> {
        self.exec(
            "DELETE FROM recovery_codes WHERE user_id = $1 AND hash = $2",
            &[&user_id, &&hash.as_bytes()[..]],
        )
        .map(|n| n == 1)
    }

    fn add_token(&mut self, hash: &TokenHash, t: &TokenRow) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO tokens (hash, token_id, role, created, expires, revoked, last_used)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &&hash.as_bytes()[..],
                &t.token_id,
                &t.role,
                &t.created_micros,
                &t.expires_micros,
                &t.revoked_micros,
                &t.last_used_micros,
            ],
        )
        .map(drop)
    }

    fn revoke_token(&mut self, token_id: &str, now: i64) -> Result<bool, StoreError> {
        self.exec(
            "UPDATE tokens SET revoked = $2 WHERE token_id = $1 AND revoked IS NULL",
            &[&token_id, &now],
        )
        .map(|n| n == 1)
    }

    fn token_used(&mut self, token_id: &str, now: i64) -> Result<(), StoreError> {
        self.exec(
            "UPDATE tokens SET last_used = $2
             WHERE token_id = $1 AND (last_used IS NULL OR last_used < $2)",
            &[&token_id, &now],
        )
        .map(drop)
    }
}

impl PeerTx for Tx<'_> {
    fn put_peer(&mut self, p: &PeerRow) -> Result<(), StoreError> {
        self.exec(
            &format!(
                "INSERT INTO peers ({PEER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (node) DO UPDATE SET fingerprint = excluded.fingerprint,
                   url = excluded.url, document = excluded.document,
                   organization = excluded.organization,
                   registered = excluded.registered, registered_by = excluded.registered_by"
            ),
            &[
                &p.node,
                &p.fingerprint,
                &p.url,
                &p.document,
                &p.organization,
                &p.registered_micros,
                &p.registered_by,
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
        self.exec("DELETE FROM share_receipts WHERE expires < $1", &[&now])?;
        self.exec(
            "INSERT INTO share_receipts (sender, bundle_id, receipt, expires) VALUES ($1, $2, $3, $4)
             ON CONFLICT (sender, bundle_id) DO UPDATE SET receipt = excluded.receipt,
               expires = excluded.expires",
            &[&sender, &bundle_id, &receipt, &expires],
        )
        .map(drop)
    }

    fn delete_peer(&mut self, node: &str) -> Result<bool, StoreError> {
        self.exec("DELETE FROM peers WHERE node = $1", &[&node])
            .map(|n| n > 0)
    }
}
