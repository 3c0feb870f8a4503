//! `_include` and `_revinclude` (with `:iterate`): the resources a page of matches points to,
//! and those that point to it. Every included resource is read or searched as the requester
//! (scopes, the access policy and consent): one they may not see is left out exactly as a
//! dangling reference is.

use std::collections::HashSet;

use medvault_core::{ResourceId, ResourceType};
use medvault_fhir::ParamKind;
use medvault_store::StoreRead;
use serde_json::{Value, json};

use super::{Paging, SearchRequest, execute_paged, parse, scoped_params, too_costly};
use crate::ctx::Ctx;
use crate::error::Error;

/// Most resources one page's `_include`s and `_revinclude`s may add.
pub const MAX_INCLUDES: usize = 1000;
/// Most references one page's `_include`s may look up, found or not (a dangling or hidden
/// reference costs a lookup as a found one does).
pub const MAX_INCLUDE_LOOKUPS: usize = 5000;
/// Most rounds of `:iterate` (each follows the references of the previous round's additions).
pub const MAX_ITERATIONS: usize = 4;
/// Most references one `_revinclude` lookup names (a page of up to 1000 matches is looked up in
/// batches).
const REVINCLUDE_BATCH: usize = 100;

/// One `_include` or `_revinclude` value: `Source:param[:Target]` (`Source:*` includes every
/// reference parameter).
#[derive(Debug, Clone)]
pub struct Spec {
    source: ResourceType,
    params: Vec<String>,
    target: Option<String>,
    iterate: bool,
    reverse: bool,
}

impl Spec {
    /// Parses `value` for a search of `rt`. A non-iterating `_include` must start from `rt`, a
    /// non-iterating `_revinclude` must be able to point at it.
    ///
    /// # Errors
    /// 400 naming the expected form.
    pub fn parse(
        ctx: &Ctx,
        rt: &ResourceType,
        value: &str,
        iterate: bool,
        reverse: bool,
    ) -> Result<Self, Error> {
        let name = if reverse { "_revinclude" } else { "_include" };
        let malformed = || {
            Error::bad_request(format!(
                "{name} must be <type>:<reference parameter>[:<target type>]"
            ))
        };
        let mut parts = value.split(':');
        let (Some(source), Some(param), target, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let source = ctx.fhir.served(source).cloned().ok_or_else(malformed)?;
        let info = ctx.fhir.type_info(source.as_str()).ok_or_else(malformed)?;
        let params: Vec<String> = if param == "*" && !reverse {
            info.params
                .values()
                .filter(|p| p.kind == ParamKind::Reference)
                .map(|p| p.code.clone())
                .collect()
        } else {
            let p = info
                .params
                .get(param)
                .filter(|p| p.kind == ParamKind::Reference)
                .ok_or_else(|| {
                    Error::bad_request(format!(
                        "{name}: {source} has no reference parameter '{param}'"
                    ))
                })?;
            if target.is_some_and(|t| !p.targets.iter().any(|x| x == t)) {
                return Err(malformed());
            }
            if !iterate {
                let fits = if reverse {
                    target.map_or_else(
                        || p.targets.iter().any(|t| t == rt.as_str()),
                        |t| t == rt.as_str(),
                    )
                } else {
                    source == *rt
                };
                if !fits {
                    return Err(Error::bad_request(format!(
                        "{name}={value} does not apply to a {rt} search (add :iterate to apply it to included resources)"
                    )));
                }
            }
            vec![p.code.clone()]
        };
        Ok(Self {
            source,
            params,
            target: target.map(str::to_owned),
            iterate,
            reverse,
        })
    }
}

/// Follows `specs` from a page of `matches` (of type `rt`): the `include` entries, in order.
///
/// # Errors
/// 400 `too-costly` past [`MAX_INCLUDES`]; store and key errors.
pub fn run(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    specs: &[Spec],
    matches: &[Value],
    base: &str,
) -> Result<Vec<Value>, Error> {
    let mut seen: HashSet<String> = matches
        .iter()
        .filter_map(|r| r.get("id").and_then(Value::as_str))
        .map(|id| format!("{rt}/{id}"))
        .collect();
    let mut out: Vec<(ResourceType, Value)> = Vec::new();
    // Round 0 starts from the matches; each later round from the previous round's additions,
    // with the iterating specs only.
    let mut frontier: Vec<(ResourceType, Value)> =
        matches.iter().map(|v| (rt.clone(), v.clone())).collect();
    let mut lookups = 0usize;
    for round in 0..=MAX_ITERATIONS {
        let mut added = Vec::new();
        for spec in specs.iter().filter(|s| round == 0 || s.iterate) {
            if spec.reverse {
                reverse(
                    store,
                    ctx,
                    spec,
                    &frontier,
                    &mut seen,
                    &mut added,
                    out.len(),
                )?;
            } else {
                let budget = Budget {
                    already: out.len(),
                    lookups: &mut lookups,
                };
                forward(store, ctx, spec, &frontier, &mut seen, &mut added, budget)?;
            }
        }
        if added.is_empty() {
            break;
        }
        out.extend(added.iter().cloned());
        frontier = added;
    }
    Ok(out
        .into_iter()
        .map(|(t, v)| {
            let id = v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            json!({
                "fullUrl": format!("{base}/{t}/{id}"),
                "resource": v,
                "search": {"mode": "include"},
            })
        })
        .collect())
}

fn check_room(already: usize, added: &[(ResourceType, Value)]) -> Result<(), Error> {
    if already + added.len() >= MAX_INCLUDES {
        return Err(too_costly());
    }
    Ok(())
}

/// What an `_include` may still spend: resources added before this spec, and lookups made.
struct Budget<'a> {
    already: usize,
    lookups: &'a mut usize,
}

/// `_include`: reads what the frontier's resources of the spec's type point to.
fn forward(
    store: &dyn StoreRead,
    ctx: &Ctx,
    spec: &Spec,
    frontier: &[(ResourceType, Value)],
    seen: &mut HashSet<String>,
    added: &mut Vec<(ResourceType, Value)>,
    budget: Budget<'_>,
) -> Result<(), Error> {
    let Budget { already, lookups } = budget;
    let Some(info) = ctx.fhir.type_info(spec.source.as_str()) else {
        return Ok(());
    };
    for (_, v) in frontier.iter().filter(|(t, _)| *t == spec.source) {
        for p in spec.params.iter().filter_map(|c| info.params.get(c)) {
            for reference in p.references(v) {
                let Some((target, id)) = reference.split_once('/') else {
                    continue;
                };
                if spec.target.as_deref().is_some_and(|x| x != target) {
                    continue;
                }
                // Borrowed from the definitions: an include costs no type allocation.
                let Some(target) = ctx.fhir.served(target) else {
                    continue;
                };
                let Ok(id) = ResourceId::new(id) else {
                    continue;
                };
                if !seen.insert(reference.clone()) {
                    continue;
                }
                check_room(already, added)?;
                *lookups += 1;
                if *lookups > MAX_INCLUDE_LOOKUPS {
                    return Err(too_costly());
                }
                if *lookups % 64 == 0 && ctx.deadline.is_some_and(|d| std::time::Instant::now() > d)
                {
                    return Err(crate::ctx::timed_out());
                }
                match crate::records::read(store, ctx, target, &id, None) {
                    Ok(o) => added.extend(o.resource.map(|r| (target.clone(), r))),
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
    }
    Ok(())
}

/// `_revinclude`: searches the spec's type for resources pointing at the frontier's.
fn reverse(
    store: &dyn StoreRead,
    ctx: &Ctx,
    spec: &Spec,
    frontier: &[(ResourceType, Value)],
    seen: &mut HashSet<String>,
    added: &mut Vec<(ResourceType, Value)>,
    already: usize,
) -> Result<(), Error> {
    let targets: Vec<String> = frontier
        .iter()
        .filter(|(t, _)| spec.target.as_deref().is_none_or(|x| x == t.as_str()))
        .filter_map(|(t, v)| Some(format!("{t}/{}", v.get("id")?.as_str()?)))
        .collect();
    for param in &spec.params {
        for batch in targets.chunks(REVINCLUDE_BATCH) {
            let params = scoped_params(ctx, &spec.source, &[(param.clone(), batch.join(","))])?;
            let req: SearchRequest = parse(ctx, &spec.source, &params, true)?;
            let room = MAX_INCLUDES.saturating_sub(already + added.len()) as u64;
            let paging = Paging {
                offset: 0,
                count: room + 1,
            };
            let found = execute_paged(store, ctx, &spec.source, &req, paging)?;
            // More than there is room for, or a walk that stopped before its end.
            if found.rows.len() as u64 > room || found.next.is_some() {
                return Err(too_costly());
            }
            for v in found.rows {
                let Some(id) = v.get("id").and_then(Value::as_str) else {
                    continue;
                };
                if seen.insert(format!("{}/{id}", spec.source)) {
                    added.push((spec.source.clone(), v));
                }
            }
        }
    }
    Ok(())
}
