//! Search: query parsing, the blind-index lookup, exact re-checking after decryption, paging.
//!
//! Chained parameters and `_has` are resolved by searching the other type first (as the same
//! requester, so its results pass the same scopes and policy), then narrowing this search to
//! what they found; `_include`/`_revinclude` are in [`include`].

pub mod include;
pub mod pages;

use medvault_auth::scopes::{Access, COMPARTMENT_CONSTRAINT, Interaction};
use medvault_core::{ResourceId, ResourceType};
use medvault_fhir::Clause;
use medvault_fhir::summary::{Elements, Subset, Summary};
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
    /// `_sort` by search parameters (or by several keys): results are ordered after
    /// decryption.
    sort_keys: Vec<SortBy>,
    /// Chained parameters and `_has`, resolved when the search runs.
    joins: Vec<Join>,
    /// Paging.
    pub paging: Paging,
    summary_count: bool,
    /// `_total`: how much of a total to work out.
    total: Total,
    /// `_summary` (but `count`) or `_elements`: how matches are cut down.
    subset: Option<Subset>,
    /// `_page`: the pinned result set a paging link names.
    page: Option<String>,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
    /// The parameters that were applied, for the `self` link.
    pub applied: Vec<(String, String)>,
    /// `_include`s and `_revinclude`s.
    pub includes: Vec<include::Spec>,
}

/// One `_sort` key.
#[derive(Debug, Clone)]
enum SortBy {
    Id { descending: bool },
    LastUpdated { descending: bool },
    Param { code: String, descending: bool },
}

/// A clause answered by searching another type first.
#[derive(Debug)]
enum Join {
    /// `param[:Type].rest=value`: this type's reference `param` points at a resource of one of
    /// `targets` that matches its search.
    Chain {
        param: String,
        targets: Vec<(ResourceType, SearchRequest)>,
    },
    /// `_has:Type:param:rest=value`: a resource of `source` matching its search points at this
    /// one through its reference `param`.
    Has {
        source: ResourceType,
        param: String,
        search: Box<SearchRequest>,
    },
}

/// What a search's joins resolve to: the reference clauses they add and the ids they allow.
struct Joined {
    clauses: Vec<Clause>,
    ids: Option<Vec<String>>,
}

/// Most chains and `_has` (nested ones included) in one search: each runs a search of its own.
pub const MAX_JOINS: usize = 6;
/// Deepest nesting of chains and `_has` in one search.
pub const MAX_JOIN_DEPTH: usize = 3;
/// Most resources a chained parameter or `_has` may find before the search is refused as too
/// costly (each becomes a lookup of the outer search).
pub const MAX_JOIN_MATCHES: u64 = 1_000;

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

/// Parses `_summary` (other than `count`) or `_elements` for results of type `rt`; `None` when
/// the resource is returned whole. Unknown element names are a 400 under strict handling and
/// ignored otherwise.
///
/// # Errors
/// 400 for an unknown `_summary` value or a malformed element list.
pub fn subset_param(
    rt: &ResourceType,
    name: &str,
    value: &str,
    strict: bool,
) -> Result<Option<Subset>, Error> {
    let bad = |e: medvault_fhir::summary::SubsetError| Error::bad_request(format!("{name}: {e}"));
    if name == "_summary" {
        return match Summary::parse(value).map_err(bad)? {
            Summary::False => Ok(None),
            s => Ok(Some(Subset::Summary(s))),
        };
    }
    let elements = Elements::parse(value).map_err(bad)?;
    let unknown = elements.unknown_for(rt.as_str());
    if strict && !unknown.is_empty() {
        return Err(not_supported(format!(
            "_elements: {rt} has no element(s) {} (Prefer: handling=strict)",
            unknown.join(", ")
        )));
    }
    Ok(Some(Subset::Elements(elements)))
}

/// The `_summary` or `_elements` of a read (`GET [type]/[id]`), if any.
///
/// # Errors
/// As [`subset_param`]; 400 for `_summary=count`, which only a search can answer.
pub fn read_subset(
    rt: &ResourceType,
    params: &[(String, String)],
    strict: bool,
) -> Result<Option<Subset>, Error> {
    let mut out = None;
    for (name, value) in params {
        match name.as_str() {
            "_summary" if value == "count" => {
                return Err(Error::bad_request("_summary=count applies to searches"));
            }
            "_summary" | "_elements" => out = subset_param(rt, name, value, strict)?,
            _ => {}
        }
    }
    Ok(out)
}

/// Parses `_sort`: `_id` or `_lastUpdated` alone are ordered by the database; search
/// parameters, or several keys, order the decrypted matches.
fn parse_sort(
    ctx: &Ctx,
    rt: &ResourceType,
    req: &mut SearchRequest,
    value: &str,
) -> Result<(), Error> {
    let mut keys = Vec::new();
    for part in value.split(',') {
        let (descending, name) = match part.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, part),
        };
        keys.push(match name {
            "_id" => SortBy::Id { descending },
            "_lastUpdated" => SortBy::LastUpdated { descending },
            _ => {
                let p = ctx
                    .fhir
                    .type_info(rt.as_str())
                    .and_then(|i| i.params.get(name))
                    .filter(|p| p.kind != medvault_fhir::ParamKind::Composite)
                    .ok_or_else(|| {
                        not_supported(format!(
                            "_sort: {rt} has no search parameter '{name}' to sort by"
                        ))
                    })?;
                SortBy::Param {
                    code: p.code.clone(),
                    descending,
                }
            }
        });
    }
    match keys.as_slice() {
        [SortBy::Id { descending }] => {
            req.sort = if *descending {
                SortOrder::IdDesc
            } else {
                SortOrder::IdAsc
            };
        }
        [SortBy::LastUpdated { descending }] => {
            req.sort = if *descending {
                SortOrder::LastUpdatedDesc
            } else {
                SortOrder::LastUpdatedAsc
            };
        }
        _ => req.sort_keys = keys,
    }
    Ok(())
}

/// A chained parameter (`subject:Patient.family`, `patient.identifier`) or `_has`
/// (`_has:Observation:patient:code`) as a [`Join`]; `None` for any other parameter. The
/// other type's search is parsed strictly: a part it cannot evaluate must not match
/// everything.
fn parse_join(
    ctx: &Ctx,
    rt: &ResourceType,
    raw_name: &str,
    value: &str,
    depth: usize,
) -> Result<Option<Join>, Error> {
    let too_deep = || {
        Error::new(
            ErrorKind::Invalid,
            IssueCode::TooCostly,
            format!("chains and _has may nest at most {MAX_JOIN_DEPTH} deep"),
        )
    };
    if let Some(rest) = raw_name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::bad_request(
                "_has must be _has:<type>:<reference parameter>:<parameter>",
            ));
        };
        if depth + 1 > MAX_JOIN_DEPTH {
            return Err(too_deep());
        }
        let source =
            ctx.fhir.served(source).cloned().ok_or_else(|| {
                Error::bad_request(format!("_has: {source} is not a served type"))
            })?;
        let points_here = ctx
            .fhir
            .type_info(source.as_str())
            .and_then(|i| i.params.get(param))
            .is_some_and(|p| {
                p.kind == medvault_fhir::ParamKind::Reference
                    && p.targets.iter().any(|t| t == rt.as_str())
            });
        if !points_here {
            return Err(Error::bad_request(format!(
                "_has: {source} has no reference parameter '{param}' that can point to a {rt}"
            )));
        }
        let search = inner_search(ctx, &source, inner, value, depth + 1)?;
        return Ok(Some(Join::Has {
            source,
            param: param.to_owned(),
            search: Box::new(search),
        }));
    }
    let Some((head, rest)) = raw_name.split_once('.') else {
        return Ok(None);
    };
    if head.starts_with('_') {
        return Ok(None);
    }
    let (code, named_type) = match head.split_once(':') {
        Some((c, t)) => (c, Some(t)),
        None => (head, None),
    };
    let Some(p) = ctx
        .fhir
        .type_info(rt.as_str())
        .and_then(|i| i.params.get(code))
        .filter(|p| p.kind == medvault_fhir::ParamKind::Reference)
    else {
        return Err(Error::bad_request(format!(
            "chained parameter: {rt} has no reference parameter '{code}'"
        )));
    };
    if depth + 1 > MAX_JOIN_DEPTH {
        return Err(too_deep());
    }
    // The first parameter of the rest decides which target types can take the chain.
    let first = rest.split(['.', ':']).next().unwrap_or_default();
    let candidates: Vec<&String> = match named_type {
        Some(t) if p.targets.iter().any(|x| x == t) => {
            p.targets.iter().filter(|x| *x == t).collect()
        }
        Some(t) => {
            return Err(Error::bad_request(format!(
                "chained parameter: {code} cannot point to a {t}"
            )));
        }
        None => p.targets.iter().collect(),
    };
    let mut targets = Vec::new();
    for t in candidates {
        let Some(target) = ctx.fhir.served(t) else {
            continue;
        };
        let has_param = first.starts_with("_has")
            || ctx
                .fhir
                .type_info(t)
                .is_some_and(|i| i.params.contains_key(first) || first == "_id");
        if has_param {
            let search = inner_search(ctx, target, rest, value, depth + 1)?;
            targets.push((target.clone(), search));
        }
    }
    if targets.is_empty() {
        return Err(Error::bad_request(format!(
            "chained parameter: no type that {code} can point to has a parameter '{first}'"
        )));
    }
    Ok(Some(Join::Chain {
        param: p.code.clone(),
        targets,
    }))
}

/// The search a chain or `_has` runs on another type: strict, with the requester's scope
/// constraints for that type, and no paging or result parameters of its own.
fn inner_search(
    ctx: &Ctx,
    rt: &ResourceType,
    name: &str,
    value: &str,
    depth: usize,
) -> Result<SearchRequest, Error> {
    if name.starts_with("_include")
        || name.starts_with("_revinclude")
        || matches!(
            name,
            "_sort" | "_count" | "_offset" | "_summary" | "_total" | "_elements"
        )
    {
        return Err(Error::bad_request(format!(
            "{name} cannot be part of a chained parameter or _has"
        )));
    }
    let params = scoped_params(ctx, rt, &[(name.to_owned(), value.to_owned())])?;
    parse_at(ctx, rt, &params, true, depth)
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
    parse_at(ctx, rt, params, strict, 0)
}

fn not_supported(text: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, IssueCode::NotSupported, text)
}

fn parse_at(
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    strict: bool,
    depth: usize,
) -> Result<SearchRequest, Error> {
    let info = ctx
        .fhir
        .type_info(rt.as_str())
        .ok_or_else(|| Error::not_found("unknown resource type"))?;
    let mut req = SearchRequest::default();
    // Every alternative (a comma-separated value) becomes a lookup and a bound SQL parameter:
    // a search is not a bulk export.
    // Paging's own parameters (which links add) do not count.
    let counted: Vec<&(String, String)> = params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_count" | "_offset" | "_page"))
        .collect();
    let alternatives: usize = counted.len()
        + counted
            .iter()
            .map(|(_, v)| v.matches(',').count())
            .sum::<usize>();
    if counted.len() > MAX_PARAMS || alternatives > MAX_ALTERNATIVES {
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
        if let Some(join) = parse_join(ctx, rt, raw_name, value, depth)? {
            req.joins.push(join);
            req.applied.push((raw_name.clone(), value.clone()));
            continue;
        }
        let (name, modifier) = match raw_name.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (raw_name.as_str(), None),
        };
        if modifier.is_some()
            && matches!(
                name,
                "_count"
                    | "_offset"
                    | "_sort"
                    | "_summary"
                    | "_elements"
                    | "_total"
                    | "_page"
                    | "_format"
                    | "_pretty"
            )
        {
            return Err(Error::bad_request(format!("{name} takes no modifier")));
        }
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
            "_sort" => parse_sort(ctx, rt, &mut req, value)?,
            "_summary" if value == "count" => req.summary_count = true,
            "_summary" | "_elements" => req.subset = subset_param(rt, name, value, strict)?,
            "_include" | "_revinclude" => {
                let iterate = match modifier {
                    None => false,
                    Some("iterate" | "recurse") => true,
                    Some(m) => return Err(not_supported(format!("{name}:{m} is not supported"))),
                };
                req.includes.push(include::Spec::parse(
                    ctx,
                    rt,
                    value,
                    iterate,
                    name == "_revinclude",
                )?);
            }
            "_total" => match value.as_str() {
                "none" => req.total = Total::Omitted,
                "estimate" => req.total = Total::IfCheap,
                "accurate" => req.total = Total::Accurate,
                _ => {
                    return Err(Error::bad_request(
                        "_total must be none, estimate or accurate",
                    ));
                }
            },
            "_page" => {
                if value.len() != 32 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::bad_request("_page is a token from a paging link"));
                }
                req.page = Some(value.clone());
            }
            "_format" | "_pretty" => applied = false,
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
    if depth == 0 && req.join_count() > MAX_JOINS {
        return Err(Error::new(
            ErrorKind::Invalid,
            IssueCode::TooCostly,
            format!(
                "a search may have at most {MAX_JOINS} chained parameters and _has (nested ones included)"
            ),
        ));
    }
    Ok(req)
}

impl SearchRequest {
    /// The chains and `_has` of this search, nested ones included.
    fn join_count(&self) -> usize {
        self.joins
            .iter()
            .map(|j| match j {
                Join::Chain { targets, .. } => {
                    1 + targets.iter().map(|(_, s)| s.join_count()).sum::<usize>()
                }
                Join::Has { search, .. } => 1 + search.join_count(),
            })
            .sum()
    }

    /// The search a paging token belongs to: its applied parameters but paging's (`_page`,
    /// `_count`, `_offset`), in order.
    fn binding(&self) -> String {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.applied {
            if !matches!(k.as_str(), "_page" | "_count" | "_offset") {
                ser.append_pair(k, v);
            }
        }
        ser.finish()
    }

    /// True when the search walks its matches in the default order (no `_sort`), a page at a
    /// time, rather than deciding every one of them.
    fn walks(&self) -> bool {
        self.sort_keys.is_empty() && self.sort == SortOrder::Created
    }

    /// True when the search is only parameter clauses (no `_id`, `_lastUpdated`, chains,
    /// `_has`, includes, sorting, paging or subsetting), so [`Self::matches`] decides it alone
    /// (a Bulk Data `_typeFilter`).
    pub fn is_plain_filter(&self) -> bool {
        self.ids.is_none()
            && self.updated_from.is_none()
            && self.updated_to.is_none()
            && self.joins.is_empty()
            && self.includes.is_empty()
            && self.sort_keys.is_empty()
            && self.subset.is_none()
            && !self.summary_count
            && self.paging == Paging::default()
    }

    /// True when decrypted `resource` of type `rt` meets every parameter clause.
    pub fn matches(&self, ctx: &Ctx, rt: &ResourceType, resource: &Value) -> bool {
        let Some(info) = ctx.fhir.type_info(rt.as_str()) else {
            return false;
        };
        self.clauses.iter().all(|c| {
            info.params
                .get(&c.param)
                .is_some_and(|p| p.matches(c, resource))
        })
    }
}

/// The refusal of a search that would have to examine too many candidates.
pub fn too_costly() -> Error {
    Error::new(
        ErrorKind::Invalid,
        IssueCode::TooCostly,
        "this search matches too many candidates to filter; add a narrower parameter",
    )
}

/// What a search found: a page of matches, how many there are when that is known, and where
/// the next page starts when it is found by walking.
#[derive(Debug, Default)]
pub struct Found {
    /// The page's resources, decrypted.
    pub rows: Vec<Value>,
    /// Every match, when known: counted by the database, or walked to the end. A walk that
    /// stops early (a full page with more to come, a spent budget) leaves it unknown rather
    /// than estimate it from entries the requester may not see.
    pub total: Option<u64>,
    /// Where the next page starts, when there may be one and the search walks its matches.
    pub next: Option<Cursor>,
}

/// A position in the walk over a search's matches ([`medvault_store::RecordRead::scan`]):
/// before which store position the next page starts, and how many matches came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The store position the walk continues before (`None`: from the newest).
    pub before: Option<u64>,
    /// Matches before this position (the paging offset it stands for).
    pub matched: u64,
}

/// How much of a total a search works out (`_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    /// When the walk that filled the page reaches the end of the candidates it has fetched
    /// anyway (`_total=estimate` and the default): exact or absent, never estimated.
    #[default]
    IfCheap,
    /// Always, walking every match (`_total=accurate`, `_summary=count`): refused as too
    /// costly beyond [`MAX_CANDIDATES`] candidates.
    Accurate,
    /// Never (`_total=none`): the walk stops at the first match after the page.
    Omitted,
}

/// Runs a parsed search: the page `req.paging` names.
///
/// When every result can be taken from the index as is (exact parameters, no access policy,
/// no query-constrained scopes, no ordering by content) the database counts and pages.
/// Otherwise every candidate is opened and re-checked — the search's own clauses, the scopes'
/// constraints and the access policy — before it counts, so neither the total nor the paging
/// links reveal anything about resources the request may not see. In the default order (most
/// recently created first) the matches are walked a chunk at a time from the page's start until
/// the page is full, so a page costs about the same whether the search matches ten resources or
/// a million; ordered by `_sort`, every match is decided, then ordered.
///
/// # Errors
/// 400 `too-costly` when a search that must be decided in full (ordered by content, or asked
/// for an accurate total) has more than [`MAX_CANDIDATES`] candidates, or a chain or `_has`
/// finds more than [`MAX_JOIN_MATCHES`]; store and key errors.
pub fn execute(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    req: &SearchRequest,
) -> Result<Found, Error> {
    execute_paged(store, ctx, rt, req, req.paging)
}

fn execute_paged(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    req: &SearchRequest,
    paging: Paging,
) -> Result<Found, Error> {
    run(store, ctx, rt, req, paging, Cursor::default(), None)
}

/// [`execute_paged`] from `start` (a walk's cursor; ignored by the other kinds of search), also
/// listing every match (id and version, in order) into `collect` when the search is ordered by
/// content (the only kind whose result sets are pinned).
fn run(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    req: &SearchRequest,
    paging: Paging,
    start: Cursor,
    mut collect: Option<&mut Vec<(String, u64)>>,
) -> Result<Found, Error> {
    let info = ctx
        .fhir
        .type_info(rt.as_str())
        .ok_or_else(|| Error::not_found("unknown resource type"))?;
    let Some(Joined {
        clauses: joined,
        ids,
    }) = resolve_joins(store, ctx, rt, req)?
    else {
        return Ok(Found {
            total: Some(0),
            ..Found::default()
        });
    };
    let mut clauses = Vec::with_capacity(req.clauses.len() + joined.len());
    for c in req.clauses.iter().chain(&joined) {
        let Some(param) = c.index_param.as_deref().filter(|_| !c.filter_only()) else {
            continue;
        };
        let blinded = ctx
            .keys
            .blind(rt, param, c.keys())
            .map_err(|e| Error::internal(&e))?;
        clauses.push(blinded);
    }
    let constrained = !matches!(ctx.scope_access(rt, Interaction::Search)?, Access::Full);
    let exact = req.clauses.iter().chain(&joined).all(Clause::exact)
        && req.sort_keys.is_empty()
        && ctx.guard().is_none()
        && !constrained;
    let mut q = IndexQuery {
        resource_type: rt.clone(),
        clauses,
        ids,
        updated_from: req.updated_from,
        updated_to: req.updated_to,
        sort: req.sort,
        offset: 0,
        limit: 0,
    };
    let keep = |v: &Value| {
        req.clauses
            .iter()
            .chain(&joined)
            .all(|c| info.params.get(&c.param).is_some_and(|p| p.matches(c, v)))
    };
    let page_size = if req.summary_count { 0 } else { paging.count };
    if exact {
        // The index answers exactly: let the database count and page.
        q.offset = paging.offset;
        q.limit = page_size;
        let page = store.search(&q)?;
        let mut rows = Vec::with_capacity(page.rows.len());
        for row in &page.rows {
            let v = open(store, ctx, row)?;
            if keep(&v) {
                rows.push(v);
            }
        }
        return Ok(Found {
            rows,
            total: Some(page.total),
            next: None,
        });
    }
    if req.walks() {
        let total = if req.summary_count {
            Total::Accurate
        } else {
            req.total
        };
        let decide = |v: &Value, key_name: &str| -> Result<bool, Error> {
            Ok(keep(v) && ctx.may_see(store, Interaction::Search, rt, key_name, Some(v))?)
        };
        return walk(
            store,
            ctx,
            &q,
            &decide,
            start,
            paging.offset,
            page_size,
            total,
        );
    }
    // Ordered by the database (`_sort=_lastUpdated`, `_id`) or by content: every candidate is
    // decided, a chunk at a time, keeping only what the page needs: the page's resources, or
    // (when ordering by content) each match's sort keys and version, whose page is opened
    // again once ordered. Memory stays one chunk and one page whatever the search matches.
    let window = usize::try_from(paging.offset).unwrap_or(usize::MAX)
        ..usize::try_from(paging.offset.saturating_add(page_size)).unwrap_or(usize::MAX);
    let mut matched = 0usize;
    let mut page_rows: Vec<Value> = Vec::new();
    let mut keyed: Vec<(Vec<Option<medvault_fhir::SortKey>>, String, u64)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    q.limit = CANDIDATE_CHUNK;
    let mut examined = 0usize;
    loop {
        let page = store.search(&q)?;
        if page.total > MAX_CANDIDATES {
            return Err(too_costly());
        }
        for row in &page.rows {
            examined += 1;
            check_deadline(ctx, examined)?;
            // A concurrent write can shift a row into the next chunk: each is counted once.
            if !seen.insert(row.id.clone()) {
                continue;
            }
            let v = open(store, ctx, row)?;
            if !(keep(&v)
                && ctx.may_see(store, Interaction::Search, rt, &row.key_name, Some(&v))?)
            {
                continue;
            }
            if req.sort_keys.is_empty() {
                if window.contains(&matched) {
                    page_rows.push(v);
                }
                if let Some(c) = collect.as_deref_mut() {
                    c.push((row.id.clone(), row.version));
                }
            } else {
                keyed.push((
                    sort_keys(info, &req.sort_keys, &v)?,
                    row.id.clone(),
                    row.version,
                ));
            }
            matched += 1;
        }
        if (page.rows.len() as u64) < CANDIDATE_CHUNK || examined >= MAX_CANDIDATES as usize {
            break;
        }
        q.offset += CANDIDATE_CHUNK;
    }
    if !req.sort_keys.is_empty() {
        keyed.sort_by(|(a, ..), (b, ..)| compare_keys(&req.sort_keys, a, b));
        if let Some(c) = collect {
            c.extend(keyed.iter().map(|(_, id, v)| (id.clone(), *v)));
        }
        for (_, id, version) in keyed.into_iter().skip(window.start).take(window.len()) {
            let id = ResourceId::new(&id)
                .map_err(|_| Error::internal(&"a stored resource carries an invalid id"))?;
            // The version that matched, opened again (it was decided above).
            if let Some(row) = store.version(rt, &id, Some(version))? {
                page_rows.push(open(store, ctx, &row)?);
            }
        }
    }
    Ok(Found {
        rows: page_rows,
        total: Some(matched as u64),
        next: None,
    })
}

/// Up to 10 000 decryptions: a request whose time is up stops every 256 candidates (and a
/// write transaction waiting on its condition rolls back) instead of holding the writer or a
/// read permit.
fn check_deadline(ctx: &Ctx, examined: usize) -> Result<(), Error> {
    if examined % 256 == 255 && ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
        return Err(crate::ctx::timed_out());
    }
    Ok(())
}

/// Walks the matches of `q` from `start` (most recently created first), skipping `skip` of
/// them, until `count` fill the page; each candidate is opened and kept when `decide` says so.
/// The walk looks at no more than [`MAX_CANDIDATES`] candidates: one that runs out of them
/// first answers what it found with a cursor to go on from (or, for an accurate total, is
/// refused as too costly).
#[allow(clippy::too_many_arguments)]
fn walk(
    store: &dyn StoreRead,
    ctx: &Ctx,
    q: &IndexQuery,
    decide: &dyn Fn(&Value, &str) -> Result<bool, Error>,
    start: Cursor,
    mut skip: u64,
    count: u64,
    total: Total,
) -> Result<Found, Error> {
    let mut found = Found::default();
    let (mut before, mut matched) = (start.before, start.matched);
    let mut examined = 0u64;
    let mut opened = 0usize;
    // Whether a match after the page was seen (there is a next page).
    let mut more = false;
    // The first step fetches about what the page needs (so a page of 10 among a million
    // matches decrypts about 11); later ones grow, for matches that are sparse among the
    // candidates (hidden by the policy, or left out by a clause checked after decryption).
    let mut step_size = skip
        .saturating_add(count)
        .saturating_add(1)
        .clamp(FIRST_STEP, CANDIDATE_CHUNK);
    loop {
        let step = store.scan(q, before, step_size)?;
        examined += step.examined;
        let last_step = step.resume.is_none();
        for (position, row) in step.rows {
            // Past the page, deciding the rest of the step only serves an exact total: worth it
            // when this step is the last.
            if more && (total == Total::Omitted || (total == Total::IfCheap && !last_step)) {
                break;
            }
            opened += 1;
            check_deadline(ctx, opened)?;
            let v = open(store, ctx, &row)?;
            if !decide(&v, &row.key_name)? {
                continue;
            }
            matched += 1;
            if skip > 0 {
                skip -= 1;
            } else if (found.rows.len() as u64) < count {
                found.rows.push(v);
                if found.rows.len() as u64 == count {
                    found.next = Some(Cursor {
                        before: Some(position),
                        matched,
                    });
                }
            } else {
                more = true;
            }
        }
        let page_full = (found.rows.len() as u64) >= count && skip == 0;
        match step.resume {
            // Every candidate looked at: the count is exact, and a next page exists only if a
            // match came after this one's.
            None => {
                found.total = (total != Total::Omitted).then_some(matched);
                if !more {
                    found.next = None;
                }
                return Ok(found);
            }
            Some(_) if page_full && total != Total::Accurate => {
                // The page is full and more candidates remain, so there may be a next page;
                // the total is left unknown.
                return Ok(found);
            }
            Some(resume) => before = Some(resume),
        }
        if examined >= MAX_CANDIDATES {
            if total == Total::Accurate || skip > 0 {
                return Err(too_costly());
            }
            // The budget is spent before the page filled: answer what was found, and where to
            // go on from.
            found.next = Some(Cursor { before, matched });
            return Ok(found);
        }
        step_size = step_size.saturating_mul(4).min(CANDIDATE_CHUNK);
    }
}

/// Candidates the first step of a walk fetches at least: a search with fewer candidates is
/// decided, and counted exactly, in one step.
const FIRST_STEP: u64 = 32;

/// Candidates fetched from the database at a time by a search filtered after decryption (and
/// at most by a step of a walk).
const CANDIDATE_CHUNK: u64 = 256;

/// The `_sort` keys of one decrypted match.
fn sort_keys(
    info: &medvault_fhir::TypeInfo,
    keys: &[SortBy],
    v: &Value,
) -> Result<Vec<Option<medvault_fhir::SortKey>>, Error> {
    use medvault_fhir::SortKey;
    let text = |pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .map(|s| SortKey::Text(s.to_owned()))
    };
    let mut ks = Vec::with_capacity(keys.len());
    for k in keys {
        ks.push(match k {
            SortBy::Id { .. } => text("/id"),
            // One format for every stored `lastUpdated`: text order is time order.
            SortBy::LastUpdated { .. } => text("/meta/lastUpdated"),
            SortBy::Param { code, descending } => info
                .params
                .get(code)
                .map(|p| p.sort_key(v, *descending))
                .transpose()
                .map_err(|e| Error::bad_request(e.to_string()))?
                .flatten(),
        });
    }
    Ok(ks)
}

/// Orders two matches by `_sort` keys (a stable sort keeps the database's order for ties; a
/// resource without a value sorts after those with one, either direction).
fn compare_keys(
    keys: &[SortBy],
    a: &[Option<medvault_fhir::SortKey>],
    b: &[Option<medvault_fhir::SortKey>],
) -> std::cmp::Ordering {
    use medvault_fhir::SortKey;
    for ((x, y), k) in a.iter().zip(b).zip(keys) {
        let descending = match k {
            SortBy::Id { descending }
            | SortBy::LastUpdated { descending }
            | SortBy::Param { descending, .. } => *descending,
        };
        let o = match (x, y) {
            (Some(x), Some(y)) if descending => SortKey::compare(y, x),
            (Some(x), Some(y)) => SortKey::compare(x, y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        if o.is_ne() {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

/// Runs the chains and `_has` of `req`: the reference clauses they add and the ids they allow
/// (with `_id`'s), or `None` when one of them found nothing (so nothing matches).
fn resolve_joins(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    req: &SearchRequest,
) -> Result<Option<Joined>, Error> {
    let mut clauses = Vec::new();
    let mut ids = req.ids.clone();
    // What the joins add becomes lookups (and bound SQL parameters) of this search: they count
    // against the same budget as its own values.
    let mut lookups: usize = req.clauses.iter().map(|c| c.keys().count()).sum();
    let mut spend = |n: usize| {
        lookups = lookups.saturating_add(n);
        if lookups > MAX_LOOKUP_KEYS {
            Err(join_too_costly())
        } else {
            Ok(())
        }
    };
    for join in &req.joins {
        if ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(crate::ctx::timed_out());
        }
        match join {
            Join::Chain { param, targets } => {
                let mut refs = Vec::new();
                for (t, search) in targets {
                    for v in join_matches(store, ctx, t, search)? {
                        if let Some(id) = v.get("id").and_then(Value::as_str) {
                            refs.push(format!("{t}/{id}"));
                        }
                    }
                    if refs.len() as u64 > MAX_JOIN_MATCHES {
                        return Err(join_too_costly());
                    }
                }
                if refs.is_empty() {
                    return Ok(None);
                }
                spend(refs.len())?;
                let p = ctx
                    .fhir
                    .type_info(rt.as_str())
                    .and_then(|i| i.params.get(param))
                    .ok_or_else(|| Error::internal(&"a chain names a parameter the type lost"))?;
                // Stored ids never hold a comma: each reference is one alternative.
                let clause = p
                    .parse_clause(None, &refs.join(","))
                    .map_err(|e| Error::internal(&e))?;
                clauses.push(clause);
            }
            Join::Has {
                source,
                param,
                search,
            } => {
                let p = ctx
                    .fhir
                    .type_info(source.as_str())
                    .and_then(|i| i.params.get(param))
                    .ok_or_else(|| Error::internal(&"_has names a parameter the type lost"))?;
                let prefix = format!("{rt}/");
                let mut found = std::collections::HashSet::new();
                for v in join_matches(store, ctx, source, search)? {
                    for r in p.references(&v) {
                        if let Some(id) = r.strip_prefix(&prefix) {
                            found.insert(id.to_owned());
                        }
                    }
                    // A thousand sources may name far more targets (a Provenance names every
                    // record it covers): what `_has` yields is bounded too.
                    if found.len() as u64 > MAX_JOIN_MATCHES {
                        return Err(join_too_costly());
                    }
                }
                let mut next: Vec<String> = match ids {
                    Some(prev) => prev.into_iter().filter(|i| found.contains(i)).collect(),
                    None => found.into_iter().collect(),
                };
                next.sort();
                spend(next.len())?;
                ids = Some(next);
            }
        }
        if ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(None);
        }
    }
    Ok(Some(Joined { clauses, ids }))
}

/// Every resource a chain's or `_has`'s search finds, as the requester may see them.
fn join_matches(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    search: &SearchRequest,
) -> Result<Vec<Value>, Error> {
    let paging = Paging {
        offset: 0,
        count: MAX_JOIN_MATCHES + 1,
    };
    let found = execute_paged(store, ctx, rt, search, paging)?;
    if found.rows.len() as u64 > MAX_JOIN_MATCHES {
        return Err(join_too_costly());
    }
    // A walk that stopped before its end (it looked at as many candidates as a page may).
    if found.next.is_some() {
        return Err(too_costly());
    }
    Ok(found.rows)
}

fn join_too_costly() -> Error {
    Error::new(
        ErrorKind::Invalid,
        IssueCode::TooCostly,
        format!(
            "a chained parameter or _has matches more than {MAX_JOIN_MATCHES} resources; narrow it with more parameters"
        ),
    )
}

/// Every resource of `rt` matching `params` (parsed strictly) that `ctx` may see, decrypted;
/// refused as too costly beyond [`MAX_CANDIDATES`]: a caller deciding on them never rests on
/// part of the facts.
///
/// # Errors
/// As [`parse`] and [`execute`].
pub fn all_matches(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
) -> Result<Vec<Value>, Error> {
    let mut req = parse(ctx, rt, params, true)?;
    req.paging = Paging {
        offset: 0,
        count: MAX_CANDIDATES,
    };
    req.total = Total::Accurate;
    let found = execute(store, ctx, rt, &req)?;
    // The rows are one consistent read; the total is counted apart, so a write committed
    // between the two can make them differ without anything being left out of the rows. Only
    // a full page, or a total past the bound, means there are more matches than may be read.
    let read = found.rows.len() as u64;
    if found.total.is_none_or(|t| t > MAX_CANDIDATES)
        || (read >= MAX_CANDIDATES && found.total != Some(read))
    {
        return Err(too_costly());
    }
    Ok(found.rows)
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
            "_summary" | "_count" | "_offset" | "_sort" | "_total" | "_elements"
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
    req.total = Total::Omitted;
    let rows = execute(store, ctx, rt, &req)?.rows;
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

/// A link to the page of a walk that `token` names.
fn token_link(
    relation: &str,
    path: &str,
    params: &[(String, String)],
    token: &str,
    count: u64,
) -> Value {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        if !matches!(k.as_str(), "_count" | "_offset" | "_page") {
            ser.append_pair(k, v);
        }
    }
    ser.append_pair("_count", &count.to_string());
    ser.append_pair("_page", token);
    json!({"relation": relation, "url": format!("{path}?{}", ser.finish())})
}

/// Paging links by offset: `self`, `first`, and `next`/`previous` where they exist.
fn offset_links(path: &str, params: &[(String, String)], paging: Paging, total: u64) -> Vec<Value> {
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
    links
}

/// Where a page of a walk was asked for.
enum Here {
    /// By offset (the first page, or a client's own `_offset`).
    Offset(u64),
    /// By a paging token, with the token of the page before it (`None`: the first page).
    Token {
        this: String,
        previous: Option<String>,
    },
}

/// Paging links of a page of a walk: `next` names the cursor after it (pinned for `owner`; by
/// offset when there is no owner or no room to pin), `previous` the page it came from.
fn walk_links(
    path: &str,
    rt: &ResourceType,
    req: &SearchRequest,
    here: Here,
    next: Option<Cursor>,
    owner: Option<&str>,
) -> Vec<Value> {
    let params: Vec<(String, String)> = req
        .applied
        .iter()
        .filter(|(k, _)| k != "_page")
        .cloned()
        .collect();
    let params = &params;
    let count = req.paging.count;
    let mut links = match &here {
        Here::Offset(offset) => vec![link("self", path, params, *offset, count)],
        Here::Token { this, .. } => vec![token_link("self", path, params, this, count)],
    };
    if count == 0 {
        return links;
    }
    links.push(link("first", path, params, 0, count));
    if let Some(cursor) = next {
        let previous = match &here {
            Here::Offset(_) => None,
            Here::Token { this, .. } => Some(this.clone()),
        };
        links.push(match owner {
            Some(o) => {
                let token = pages::pin(
                    o.to_owned(),
                    rt.clone(),
                    req.binding(),
                    pages::PinnedSet::Cursor {
                        at: cursor,
                        previous,
                    },
                );
                token_link("next", path, params, &token, count)
            }
            // Node work (no principal) pages by offset.
            None => link("next", path, params, cursor.matched, count),
        });
    }
    match here {
        Here::Offset(offset) if offset > 0 => links.push(link(
            "previous",
            path,
            params,
            offset.saturating_sub(count),
            count,
        )),
        Here::Offset(_) => {}
        Here::Token {
            previous: Some(p), ..
        } => links.push(token_link("previous", path, params, &p, count)),
        Here::Token { previous: None, .. } => {
            links.push(link("previous", path, params, 0, count));
        }
    }
    links
}

/// Assembles a `searchset` or `history` Bundle with paging links by offset.
pub fn bundle(
    kind: &str,
    entries: Vec<Value>,
    total: u64,
    path: &str,
    params: &[(String, String)],
    paging: Paging,
) -> Value {
    links_bundle(
        kind,
        entries,
        Some(total),
        offset_links(path, params, paging, total),
    )
}

/// A `searchset` or `history` Bundle with `links`, and `total` when known.
fn links_bundle(kind: &str, entries: Vec<Value>, total: Option<u64>, links: Vec<Value>) -> Value {
    let mut out = json!({
        "resourceType": "Bundle",
        "type": kind,
        "link": links,
        "entry": entries,
    });
    if let (Some(total), Some(o)) = (total, out.as_object_mut()) {
        o.insert("total".into(), total.into());
    }
    out
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

/// A page of a pinned result set: the pinned versions, each decided again as it is opened (an
/// erased patient's are left out).
fn pinned_page(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    pinned: &[(String, u64)],
    paging: Paging,
) -> Result<Vec<Value>, Error> {
    let start = usize::try_from(paging.offset).unwrap_or(usize::MAX);
    let count = usize::try_from(paging.count).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for (id, version) in pinned.iter().skip(start).take(count) {
        let Ok(rid) = ResourceId::new(id) else {
            continue;
        };
        // The pinned version is seen only while the resource as it is now may be seen too (a
        // relabel since the first page hides it, as it hides a vread), and not once deleted.
        if store.current(rt, &rid)?.is_none_or(|c| c.deleted)
            || crate::records::current_verdict(store, ctx, rt, &rid, Interaction::Search)?
                != crate::records::Verdict::Visible
        {
            continue;
        }
        let Some(row) = store.version(rt, &rid, Some(*version))? else {
            continue;
        };
        if row.shredded || row.expunged || row.body.is_none() {
            continue;
        }
        let v = match open(store, ctx, &row) {
            Ok(v) => v,
            Err(e) if e.kind.is_client_error() => continue,
            Err(e) => return Err(e),
        };
        if ctx.may_see(store, Interaction::Search, rt, &row.key_name, Some(&v))? {
            out.push(v);
        }
    }
    Ok(out)
}

/// `params` with the requester's query-constrained scopes for `rt` added: one constraint
/// narrows the search itself (a patient context becomes that patient's compartment); every
/// candidate is still checked against them all as it is opened.
///
/// # Errors
/// 403 when a constraint names a parameter `rt` does not have (lenient handling would drop it
/// and widen the search), or a patient context meets a type outside every compartment.
pub fn scoped_params(
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let access = ctx.scope_access(rt, Interaction::Search)?;
    let Access::Constrained(g) = &access else {
        return Ok(params.to_vec());
    };
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
    let mut out = params.to_vec();
    if let [only] = g.as_slice() {
        for (name, value) in only {
            let clause = if name == COMPARTMENT_CONSTRAINT {
                compartment_clause(ctx, rt, value)?
            } else {
                (name.clone(), value.clone())
            };
            // A paging link carries the constraint it was made with: the same clause twice
            // would be another search (and its pinned page not found).
            if !out.contains(&clause) {
                out.push(clause);
            }
        }
    }
    Ok(out)
}

/// A full search: parse, run, and build the `searchset` Bundle.
///
/// # Errors
/// As [`parse`] and [`execute`]; 410 for a paging token that expired or is not the requester's.
pub fn search_bundle(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    strict: bool,
    base: &str,
) -> Result<Value, Error> {
    let params = scoped_params(ctx, rt, params)?;
    let mut req = parse(ctx, rt, &params, strict)?;
    let owner = ctx.guard().map(|g| g.principal());
    let path = format!("{base}/{rt}");
    let (resources, total, links) = match (&req.page, &owner) {
        (Some(_), None) => return Err(Error::bad_request("_page is for requests")),
        (Some(token), Some(owner)) => {
            let pinned = pages::get(token, owner, rt, &req.binding()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Gone,
                    IssueCode::NotFound,
                    "this paging link has expired (or was not issued to you for this search): repeat the search",
                )
            })?;
            match &pinned.set {
                pages::PinnedSet::Rows(rows) => {
                    let total = rows.len() as u64;
                    let links = offset_links(&path, &req.applied, req.paging, total);
                    (
                        pinned_page(store, ctx, rt, rows, req.paging)?,
                        Some(total),
                        links,
                    )
                }
                pages::PinnedSet::Cursor { at, previous } => {
                    let paging = Paging {
                        offset: 0,
                        ..req.paging
                    };
                    let found = run(store, ctx, rt, &req, paging, *at, None)?;
                    let here = Here::Token {
                        this: token.clone(),
                        previous: previous.clone(),
                    };
                    let links = walk_links(&path, rt, &req, here, found.next, Some(owner));
                    (found.rows, found.total, links)
                }
            }
        }
        (None, _) => {
            let mut rows = Vec::new();
            let collect = owner.is_some().then_some(&mut rows);
            let found = run(store, ctx, rt, &req, req.paging, Cursor::default(), collect)?;
            let links = if req.walks() && owner.is_some() {
                walk_links(
                    &path,
                    rt,
                    &req,
                    Here::Offset(req.paging.offset),
                    found.next,
                    owner.as_deref(),
                )
            } else {
                let total = found.total.unwrap_or_default();
                let more = req.paging.offset.saturating_add(req.paging.count) < total;
                if let Some(owner) = owner
                    && more
                    && !req.summary_count
                    && rows.len() as u64 == total
                    && rows.len() <= pages::MAX_PINNED_ROWS
                {
                    let binding = req.binding();
                    let token =
                        pages::pin(owner, rt.clone(), binding, pages::PinnedSet::Rows(rows));
                    req.applied.push(("_page".to_owned(), token));
                }
                offset_links(&path, &req.applied, req.paging, total)
            };
            (found.rows, found.total, links)
        }
    };
    let included = include::run(store, ctx, rt, &req.includes, &resources, base)?;
    let mut entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            let r = match &req.subset {
                Some(how) => medvault_fhir::summary::subset(rt.as_str(), &r, how),
                None => r,
            };
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
    let total = total.filter(|_| req.total != Total::Omitted);
    Ok(links_bundle("searchset", entries, total, links))
}
