//! Search: query parsing, the blind-index lookup, exact re-checking after decryption, paging.

use medvault_auth::scopes::{Access, COMPARTMENT_CONSTRAINT, Interaction};
use medvault_core::{ResourceId, ResourceType};
use medvault_fhir::Clause;
use medvault_store::{IndexQuery, SortOrder, StoreRead};
use serde_json::{Value, json};

use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::records::open;

/// Default page size.
pub const DEFAULT_COUNT: u64 = 20;
/// Largest page size a client may ask for.
pub const MAX_COUNT: u64 = 1000;
/// Candidates a search that needs filtering after decryption may examine before it is refused
/// as too costly.
pub const MAX_CANDIDATES: u64 = 10_000;

/// Offset and page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Matches skipped.
    pub offset: u64,
    /// Page size.
    pub count: u64,
}

impl Default for Paging {
    fn default() -> Self {
        Self {
            offset: 0,
            count: DEFAULT_COUNT,
        }
    }
}

/// Splits an `a=1&b=2` query string into decoded pairs.
pub fn parse_query_string(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.trim_start_matches('?').as_bytes())
        .into_owned()
        .collect()
}

/// A parsed search.
#[derive(Debug, Default)]
pub struct SearchRequest {
    clauses: Vec<Clause>,
    ids: Option<Vec<String>>,
    updated_from: Option<i64>,
    updated_to: Option<i64>,
    sort: SortOrder,
    /// Paging.
    pub paging: Paging,
    summary_count: bool,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
    /// The parameters that were applied, for the `self` link.
    pub applied: Vec<(String, String)>,
    /// `_include`s: the reference parameter and the target type, if one was named.
    pub includes: Vec<(String, Option<String>)>,
}

/// Most parameters one search may have.
pub const MAX_PARAMS: usize = 100;
/// Most values (comma-separated alternatives, across all parameters) one search may have.
pub const MAX_ALTERNATIVES: usize = 1_000;
/// Most blind-index lookups (bucket and prefix keys over all clauses) one search may name.
pub const MAX_LOOKUP_KEYS: usize = 4_000;

fn number(name: &str, v: &str) -> Result<u64, Error> {
    v.parse::<u64>()
        .map_err(|_| Error::bad_request(format!("{name} must be a non-negative integer")))
}

fn last_updated_window(req: &mut SearchRequest, value: &str) -> Result<(), Error> {
    let invalid = || {
        Error::bad_request(
            "_lastUpdated must be a FHIR date with an optional eq/gt/lt/ge/le prefix",
        )
    };
    let (cmp, rest) = match value.get(..2) {
        Some(p @ ("eq" | "gt" | "lt" | "ge" | "le")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (s, e) = medvault_fhir_date(rest).ok_or_else(invalid)?;
    let (s, e) = (s.saturating_mul(1_000_000), e.saturating_mul(1_000_000));
    let (from, to) = match cmp {
        "eq" => (Some(s), Some(e)),
        "gt" => (Some(e), None),
        "ge" => (Some(s), None),
        "lt" => (None, Some(s)),
        _ => (None, Some(e)), // le
    };
    if let Some(f) = from {
        req.updated_from = Some(req.updated_from.map_or(f, |x| x.max(f)));
    }
    if let Some(t) = to {
        req.updated_to = Some(req.updated_to.map_or(t, |x| x.min(t)));
    }
    Ok(())
}

/// Date ranges as the FHIR crate parses them (`[start, end)` Unix seconds).
fn medvault_fhir_date(text: &str) -> Option<(i64, i64)> {
    medvault_fhir::date_range(text)
}

/// Parses search parameters for `rt`. Unknown parameters are ignored (and reported) unless
/// `strict`, which makes them a 400, as `Prefer: handling=strict` asks.
///
/// # Errors
/// 400 for malformed values, unsupported modifiers, and unknown parameters when strict.
pub fn parse(
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    strict: bool,
) -> Result<SearchRequest, Error> {
    let info = ctx
        .fhir
        .type_info(rt.as_str())
        .ok_or_else(|| Error::not_found("unknown resource type"))?;
    let mut req = SearchRequest::default();
    // Every alternative (a comma-separated value) becomes a lookup and a bound SQL parameter:
    // a search is not a bulk export.
    let alternatives: usize = params.len()
        + params
            .iter()
            .map(|(_, v)| v.matches(',').count())
            .sum::<usize>();
    if params.len() > MAX_PARAMS || alternatives > MAX_ALTERNATIVES {
        return Err(Error::new(
            ErrorKind::Invalid,
            IssueCode::TooCostly,
            format!(
                "a search may have at most {MAX_PARAMS} parameters and {MAX_ALTERNATIVES} values (counting each comma-separated value)"
            ),
        ));
    }
    let mut lookups = 0usize;
    for (raw_name, value) in params {
        let (name, modifier) = match raw_name.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (raw_name.as_str(), None),
        };
        let mut applied = true;
        match name {
            "_id" => {
                let ids: Vec<String> = value.split(',').map(str::to_owned).collect();
                req.ids = Some(match req.ids.take() {
                    Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                    None => ids,
                });
            }
            "_lastUpdated" => last_updated_window(&mut req, value)?,
            "_count" => req.paging.count = number("_count", value)?.min(MAX_COUNT),
            "_offset" => req.paging.offset = number("_offset", value)?,
            "_sort" => {
                req.sort = match value.as_str() {
                    "_lastUpdated" => SortOrder::LastUpdatedAsc,
                    "-_lastUpdated" => SortOrder::LastUpdatedDesc,
                    "_id" => SortOrder::IdAsc,
                    "-_id" => SortOrder::IdDesc,
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Invalid,
                            IssueCode::NotSupported,
                            "_sort supports _lastUpdated, -_lastUpdated, _id and -_id",
                        ));
                    }
                }
            }
            "_summary" if value == "count" => req.summary_count = true,
            "_include" => {
                if modifier.is_some() {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        IssueCode::NotSupported,
                        "_include modifiers (:iterate) are not supported",
                    ));
                }
                let mut parts = value.split(':');
                let (source, param, target) = (parts.next(), parts.next(), parts.next());
                let reference = param
                    .and_then(|p| info.params.get(p))
                    .filter(|p| p.kind == medvault_fhir::ParamKind::Reference);
                match (source, reference, parts.next()) {
                    (Some(s), Some(p), None)
                        if *rt == s && target.is_none_or(|t| p.targets.iter().any(|x| x == t)) =>
                    {
                        req.includes
                            .push((p.code.clone(), target.map(str::to_owned)));
                    }
                    _ => {
                        return Err(Error::bad_request(format!(
                            "_include must be {rt}:<reference parameter>[:<target type>]"
                        )));
                    }
                }
            }
            "_format" | "_pretty" | "_total" => applied = false,
            _ => match info.params.get(name) {
                Some(p) => {
                    let clause = p
                        .parse_clause(modifier, value)
                        .map_err(|e| Error::bad_request(format!("search parameter {name}: {e}")))?;
                    // A wide number, quantity or date alternative names many buckets: the
                    // lookups stay bounded (and within the database's bound-parameter limit).
                    lookups += clause.keys().count();
                    if lookups > MAX_LOOKUP_KEYS {
                        return Err(Error::new(
                            ErrorKind::Invalid,
                            IssueCode::TooCostly,
                            format!(
                                "this search names too many index lookups (at most {MAX_LOOKUP_KEYS}: wide ranges and ne count many); use fewer or narrower values"
                            ),
                        ));
                    }
                    req.clauses.push(clause);
                }
                None if strict => {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        IssueCode::NotSupported,
                        format!(
                            "unknown or unsupported search parameter '{name}' for {rt} (Prefer: handling=strict)"
                        ),
                    ));
                }
                None => {
                    req.ignored.push(name.to_owned());
                    applied = false;
                }
            },
        }
        if applied {
            req.applied.push((raw_name.clone(), value.clone()));
        }
    }
    Ok(req)
}

/// The refusal of a search that would have to examine too many candidates.
pub fn too_costly() -> Error {
    Error::new(
        ErrorKind::Invalid,
        IssueCode::TooCostly,
        "this search matches too many candidates to filter; add a narrower parameter",
    )
}

/// Runs a parsed search: returns the page of resources and the total number of matches.
///
/// When every result can be taken from the index as is (exact parameters, no access policy,
/// no query-constrained scopes) the database counts and pages. Otherwise every candidate is
/// opened and re-checked — the search's own clauses, the scopes' constraints and the access
/// policy — before counting and paging, so neither the total nor the paging links reveal
/// anything about resources the request may not see.
///
/// # Errors
/// 400 `too-costly` when a search that must be filtered after decryption has more than
/// [`MAX_CANDIDATES`] candidates; store and key errors.
pub fn execute(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    req: &SearchRequest,
) -> Result<(Vec<Value>, u64), Error> {
    let info = ctx
        .fhir
        .type_info(rt.as_str())
        .ok_or_else(|| Error::not_found("unknown resource type"))?;
    let mut clauses = Vec::with_capacity(req.clauses.len());
    for c in &req.clauses {
        let blinded = ctx
            .keys
            .blind(rt, &c.param, c.keys())
            .map_err(|e| Error::internal(&e))?;
        clauses.push(blinded);
    }
    let constrained = !matches!(ctx.scope_access(rt, Interaction::Search)?, Access::Full);
    let exact = req.clauses.iter().all(Clause::exact) && ctx.guard().is_none() && !constrained;
    let mut q = IndexQuery {
        resource_type: rt.clone(),
        clauses,
        ids: req.ids.clone(),
        updated_from: req.updated_from,
        updated_to: req.updated_to,
        sort: req.sort,
        offset: 0,
        limit: 0,
    };
    let keep = |v: &Value| {
        req.clauses
            .iter()
            .all(|c| info.params.get(&c.param).is_some_and(|p| p.matches(c, v)))
    };
    if exact {
        // The index answers exactly: let the database count and page.
        q.offset = req.paging.offset;
        q.limit = if req.summary_count {
            0
        } else {
            req.paging.count
        };
        let page = store.search(&q)?;
        let mut out = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            let v = open(store, ctx, row)?;
            if keep(&v) {
                out.push(v);
            }
        }
        return Ok((out, page.total));
    }
    // Fetch the candidates, filter exactly, then count and page.
    q.limit = MAX_CANDIDATES + 1;
    let page = store.search(&q)?;
    if page.total > MAX_CANDIDATES {
        return Err(too_costly());
    }
    let mut matched = Vec::new();
    for (i, row) in page.rows.iter().enumerate() {
        // Up to 10 000 decryptions: a request whose time is up stops here (and a write
        // transaction waiting on this condition rolls back) instead of holding the writer.
        if i % 256 == 255 && ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(crate::ctx::timed_out());
        }
        let v = open(store, ctx, row)?;
        if keep(&v) && ctx.may_see(store, Interaction::Search, rt, &row.key_name, Some(&v))? {
            matched.push(v);
        }
    }
    let total = matched.len() as u64;
    let start = usize::try_from(req.paging.offset).unwrap_or(usize::MAX);
    let count = if req.summary_count {
        0
    } else {
        usize::try_from(req.paging.count).unwrap_or(usize::MAX)
    };
    Ok((matched.into_iter().skip(start).take(count).collect(), total))
}

/// Ids of up to `limit` resources matching a query, for conditional interactions (parsed
/// strictly: a condition that cannot be evaluated must not silently match everything).
///
/// # Errors
/// As [`parse`] and [`execute`]; 500 for a stored resource whose `id` is not one.
pub fn matching_ids(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    limit: u64,
) -> Result<Vec<ResourceId>, Error> {
    if let Some((name, _)) = params.iter().find(|(k, _)| {
        matches!(
            k.as_str(),
            "_summary" | "_count" | "_offset" | "_sort" | "_total"
        )
    }) {
        return Err(Error::bad_request(format!(
            "{name} controls results and cannot be part of a condition"
        )));
    }
    let mut req = parse(ctx, rt, params, true)?;
    if req.clauses.is_empty()
        && req.ids.is_none()
        && req.updated_from.is_none()
        && req.updated_to.is_none()
    {
        return Err(Error::bad_request(
            "a conditional request needs search parameters that select resources",
        ));
    }
    req.paging = Paging {
        offset: 0,
        count: limit,
    };
    let (rows, _) = execute(store, ctx, rt, &req)?;
    // Every stored resource carries the id it is stored under (`ops::prepare` sets it).
    rows.iter()
        .filter_map(|v| v.get("id").and_then(Value::as_str))
        .map(|id| {
            ResourceId::new(id)
                .map_err(|_| Error::internal(&"a stored resource carries an invalid id"))
        })
        .collect()
}

fn link(relation: &str, path: &str, params: &[(String, String)], offset: u64, count: u64) -> Value {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if k != "_count" && k != "_offset" {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("_count", &count.to_string());
    ser.append_pair("_offset", &offset.to_string());
    json!({"relation": relation, "url": format!("{path}?{}", ser.finish())})
}

/// Assembles a `searchset` or `history` Bundle with paging links.
pub fn bundle(
    kind: &str,
    entries: Vec<Value>,
    total: u64,
    path: &str,
    params: &[(String, String)],
    paging: Paging,
) -> Value {
    let Paging { offset, count } = paging;
    let mut links = vec![link("self", path, params, offset, count)];
    if count > 0 {
        links.push(link("first", path, params, 0, count));
        if offset.saturating_add(count) < total {
            links.push(link(
                "next",
                path,
                params,
                offset.saturating_add(count),
                count,
            ));
        }
        if offset > 0 {
            links.push(link(
                "previous",
                path,
                params,
                offset.saturating_sub(count),
                count,
            ));
        }
    }
    json!({
        "resourceType": "Bundle",
        "type": kind,
        "total": total,
        "link": links,
        "entry": entries,
    })
}

/// The search clause selecting the compartment of `patient` (`Patient/<id>`) in `rt`.
fn compartment_clause(
    ctx: &Ctx,
    rt: &ResourceType,
    patient: &str,
) -> Result<(String, String), Error> {
    if *rt == ResourceType::PATIENT {
        let id = patient.strip_prefix("Patient/").unwrap_or(patient);
        return Ok(("_id".into(), id.to_owned()));
    }
    ctx.fhir
        .type_info(rt.as_str())
        .and_then(|i| i.compartment_params.first())
        .map(|p| (p.clone(), patient.to_owned()))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Forbidden,
                IssueCode::Forbidden,
                format!("{rt} resources are outside every patient's compartment"),
            )
        })
}

/// Most resources one page's `_include`s may add.
pub const MAX_INCLUDES: usize = 1000;

/// The resources `_include`d by a page of results, as `include` entries. Each is read as a
/// read would be (scopes and the access policy): one the request may not see is left out
/// exactly as a dangling reference is.
fn include(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    includes: &[(String, Option<String>)],
    matches: &[Value],
    base: &str,
) -> Result<Vec<Value>, Error> {
    let Some(info) = ctx.fhir.type_info(rt.as_str()) else {
        return Ok(Vec::new());
    };
    let mut seen: std::collections::HashSet<String> = matches
        .iter()
        .filter_map(|r| r.get("id").and_then(Value::as_str))
        .map(|id| format!("{rt}/{id}"))
        .collect();
    let mut out = Vec::new();
    for (param, target) in includes {
        let Some(p) = info.params.get(param) else {
            continue;
        };
        for reference in matches.iter().flat_map(|r| p.references(r)) {
            let Some((t, id)) = reference.split_once('/') else {
                continue;
            };
            if target.as_deref().is_some_and(|x| x != t) {
                continue;
            }
            // Borrowed from the definitions: an include costs no type allocation.
            let Some(t) = ctx.fhir.served(t) else {
                continue;
            };
            if !seen.insert(reference.clone()) {
                continue;
            }
            let Ok(id) = ResourceId::new(id) else {
                continue;
            };
            if out.len() >= MAX_INCLUDES {
                return Err(too_costly());
            }
            match crate::records::read(store, ctx, t, &id, None) {
                Ok(o) => out.push(json!({
                    "fullUrl": format!("{base}/{reference}"),
                    "resource": o.resource,
                    "search": {"mode": "include"},
                })),
                Err(e) if e.kind.is_client_error() => {
                    if e.denied_by.is_some()
                        && let Some(g) = ctx.guard()
                    {
                        g.withheld();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// A full search: parse, run, and build the `searchset` Bundle.
///
/// # Errors
/// As [`parse`] and [`execute`].
pub fn search_bundle(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    strict: bool,
    base: &str,
) -> Result<Value, Error> {
    // Query-constrained scopes: one constraint is added to the search itself (a narrower
    // index lookup); every candidate is checked against them all as it is opened.
    let constrained;
    let access = ctx.scope_access(rt, Interaction::Search)?;
    if let Access::Constrained(g) = &access {
        // A constraint naming a parameter this type does not have must not be ignored (lenient
        // handling would drop it and widen the search): refuse.
        let known = |name: &str| {
            name == COMPARTMENT_CONSTRAINT
                || ctx.fhir.type_info(rt.as_str()).is_some_and(|i| {
                    i.params
                        .contains_key(name.split_once(':').map_or(name, |(c, _)| c))
                })
        };
        if g.iter().flatten().any(|(name, _)| !known(name)) {
            return Err(Error::new(
                ErrorKind::Forbidden,
                IssueCode::Forbidden,
                format!("a scope's constraint names a parameter {rt} does not have"),
            ));
        }
    }
    let params = match access {
        Access::Constrained(g) if g.len() == 1 => {
            let mut extra = Vec::with_capacity(g[0].len());
            for (name, value) in &g[0] {
                if name == COMPARTMENT_CONSTRAINT {
                    // A patient context: search that patient's compartment.
                    extra.push(compartment_clause(ctx, rt, value)?);
                } else {
                    extra.push((name.clone(), value.clone()));
                }
            }
            constrained = params.iter().cloned().chain(extra).collect::<Vec<_>>();
            &constrained[..]
        }
        _ => params,
    };
    let req = parse(ctx, rt, params, strict)?;
    let (resources, total) = execute(store, ctx, rt, &req)?;
    let included = include(store, ctx, rt, &req.includes, &resources, base)?;
    let mut entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            json!({"fullUrl": format!("{base}/{rt}/{id}"), "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    if !req.ignored.is_empty() {
        let text = format!(
            "ignored unknown search parameter(s): {}",
            req.ignored.join(", ")
        );
        entries.push(json!({
            "resource": crate::error::operation_outcome("warning", IssueCode::NotSupported, &text, &[]),
            "search": {"mode": "outcome"},
        }));
    }
    entries.extend(included);
    Ok(bundle(
        "searchset",
        entries,
        total,
        &format!("{base}/{rt}"),
        &req.applied,
        req.paging,
    ))
}
