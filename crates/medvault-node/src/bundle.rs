//! `batch` and `transaction` Bundles (FHIR R4 §3.1.0.11).
//!
//! A transaction runs as one store write: every entry succeeds or nothing is kept. Entries are
//! processed in FHIR's order (DELETE, POST, PUT, GET); `urn:uuid:` full URLs of created
//! resources are replaced in every reference by the ids assigned. A batch runs each entry on
//! its own and reports each outcome.

use std::collections::HashMap;

use http::StatusCode;
use medvault_core::{ResourceId, ResourceType};
use medvault_fhir::patch::PatchKind;
use medvault_store::{Store, StoreRead, StoreTx, write_with};
use serde_json::{Value, json};

use crate::change;
use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::ops;
use crate::records::Outcome;
use crate::route::{Target, parse_etag, parse_path};
use crate::search;

/// Entries one Bundle may hold.
pub const MAX_ENTRIES: usize = 1000;

#[derive(Debug)]
pub(crate) enum EntryOp {
    Create {
        rt: ResourceType,
        resource: Value,
        if_none_exist: Option<String>,
        full_url: Option<String>,
        /// The id given before the transaction ([`prepare_writes`]); otherwise the transaction
        /// gives one.
        id: Option<ResourceId>,
    },
    Update {
        rt: ResourceType,
        id: ResourceId,
        resource: Value,
        if_match: Option<u64>,
        full_url: Option<String>,
    },
    Delete {
        rt: ResourceType,
        id: ResourceId,
        if_match: Option<u64>,
    },
    /// `PUT [type]?search` (a transaction resolves it to an `Update` before it runs).
    ConditionalUpdate {
        rt: ResourceType,
        params: Vec<(String, String)>,
        resource: Value,
        if_match: Option<u64>,
        full_url: Option<String>,
    },
    /// `DELETE [type]?search` (a transaction resolves it to a `Delete` before it runs).
    ConditionalDelete {
        rt: ResourceType,
        params: Vec<(String, String)>,
    },
    /// A create or a `PUT [type]/[id]` already validated and indexed off the writer
    /// ([`prepare_writes`]).
    Ready {
        prepared: Box<ops::Prepared>,
        if_match: Option<u64>,
        create: bool,
    },
    /// An entry the transaction has run (its place is kept for the response's order).
    Done,
    /// `PATCH [type]/[id]` or `PATCH [type]?search`: a Binary holding a JSON Patch, or a
    /// Parameters resource (FHIRPath Patch).
    Patch {
        rt: ResourceType,
        target: change::PatchTarget,
        kind: PatchKind,
        body: Vec<u8>,
        if_match: Option<u64>,
    },
    Read {
        rt: ResourceType,
        id: ResourceId,
        version: Option<u64>,
    },
    Search {
        rt: ResourceType,
        params: Vec<(String, String)>,
    },
    History {
        rt: ResourceType,
        id: Option<ResourceId>,
        params: Vec<(String, String)>,
    },
}

impl EntryOp {
    fn order(&self) -> u8 {
        match self {
            Self::Delete { .. } | Self::ConditionalDelete { .. } => 0,
            Self::Create { .. } | Self::Ready { create: true, .. } => 1,
            Self::Update { .. }
            | Self::ConditionalUpdate { .. }
            | Self::Patch { .. }
            | Self::Ready { .. } => 2,
            _ => 3,
        }
    }

    fn is_write(&self) -> bool {
        self.order() < 3
    }

    /// How many blind-index entries a create or update adds.
    ///
    /// # Errors
    /// As [`ops::index_load`].
    fn index_load(&self, ctx: &Ctx) -> Result<usize, Error> {
        match self {
            Self::Ready { prepared, .. } => Ok(prepared.index_len()),
            Self::ConditionalUpdate { resource, .. } => ops::index_load(ctx, resource),
            other => other.resource().map_or(Ok(0), |r| ops::index_load(ctx, r)),
        }
    }

    /// The resource a create or update writes.
    pub(crate) fn resource(&self) -> Option<&Value> {
        match self {
            Self::Create { resource, .. } | Self::Update { resource, .. } => Some(resource),
            Self::Ready { prepared, .. } => Some(prepared.resource()),
            _ => None,
        }
    }
}

/// A PATCH entry's patch: a Binary holding a JSON Patch (`contentType`
/// `application/json-patch+json`, base64 `data`), or a Parameters resource (FHIRPath Patch).
fn patch_body(resource: &Value) -> Result<(PatchKind, Vec<u8>), Error> {
    use base64::Engine as _;
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => Ok((
            PatchKind::FhirPath,
            serde_json::to_vec(resource).map_err(|e| Error::internal(&e))?,
        )),
        Some("Binary")
            if resource.get("contentType").and_then(Value::as_str)
                == Some("application/json-patch+json") =>
        {
            let data = resource
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| Error::bad_request("the Binary's data is not base64"))?;
            Ok((PatchKind::Json, bytes))
        }
        _ => Err(Error::bad_request(
            "a PATCH entry's resource is a Parameters resource (FHIRPath Patch) or a Binary with contentType application/json-patch+json",
        )),
    }
}

fn entry_error(i: usize, e: Error) -> Error {
    Error {
        message: format!("entry {i}: {}", e.message),
        ..e
    }
}

fn parse_entry(ctx: &Ctx, mut entry: Value) -> Result<EntryOp, Error> {
    let mut resource = entry.get_mut("resource").map(Value::take);
    let request = entry.get("request").ok_or_else(|| {
        Error::new(
            ErrorKind::Invalid,
            IssueCode::Required,
            "request is missing",
        )
    })?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let url = request.get("url").and_then(Value::as_str).ok_or_else(|| {
        Error::new(
            ErrorKind::Invalid,
            IssueCode::Required,
            "request.url is missing",
        )
    })?;
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let params = search::parse_query_string(query);
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut need_resource = || {
        resource.take().ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                IssueCode::Required,
                "resource is missing",
            )
        })
    };
    let if_match = || {
        request
            .get("ifMatch")
            .and_then(Value::as_str)
            .map(parse_etag)
            .transpose()
    };
    let target = parse_path(path)?;
    // (An operation is refused below as unsupported in a Bundle, whatever its type.)
    if let Target::Type(rt)
    | Target::TypeSearch(rt)
    | Target::TypeHistory(rt)
    | Target::Instance(rt, _)
    | Target::InstanceHistory(rt, _)
    | Target::Version(rt, _, _) = &target
    {
        ops::served_type(&ctx.fhir, rt)?;
    }
    let op = match (method, target) {
        ("POST", Target::Type(rt)) => EntryOp::Create {
            rt,
            resource: need_resource()?,
            if_none_exist: request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_owned),
            full_url,
            id: None,
        },
        ("PUT", Target::Instance(rt, id)) => EntryOp::Update {
            rt,
            id,
            resource: need_resource()?,
            if_match: if_match()?,
            full_url,
        },
        ("DELETE", Target::Instance(rt, id)) => EntryOp::Delete {
            rt,
            id,
            if_match: if_match()?,
        },
        ("DELETE", Target::Type(rt)) => EntryOp::ConditionalDelete { rt, params },
        ("PUT", Target::Type(rt)) => EntryOp::ConditionalUpdate {
            rt,
            params,
            resource: need_resource()?,
            if_match: if_match()?,
            full_url,
        },
        ("PATCH", Target::Instance(rt, id)) => {
            let (kind, body) = patch_body(&need_resource()?)?;
            EntryOp::Patch {
                rt,
                target: change::PatchTarget::Id(id),
                kind,
                body,
                if_match: if_match()?,
            }
        }
        ("PATCH", Target::Type(rt)) => {
            let (kind, body) = patch_body(&need_resource()?)?;
            EntryOp::Patch {
                rt,
                target: change::PatchTarget::Search(params),
                kind,
                body,
                if_match: if_match()?,
            }
        }
        ("GET", Target::Instance(rt, id)) => EntryOp::Read {
            rt,
            id,
            version: None,
        },
        ("GET", Target::Version(rt, id, v)) => EntryOp::Read {
            rt,
            id,
            version: Some(v.get()),
        },
        ("GET", Target::Type(rt)) => EntryOp::Search { rt, params },
        ("GET", Target::TypeHistory(rt)) => EntryOp::History {
            rt,
            id: None,
            params,
        },
        ("GET", Target::InstanceHistory(rt, id)) => EntryOp::History {
            rt,
            id: Some(id),
            params,
        },
        (m, _) => {
            return Err(Error::new(
                ErrorKind::Invalid,
                IssueCode::NotSupported,
                format!("request.method {m:?} on this url is not supported in a Bundle"),
            ));
        }
    };
    Ok(op)
}

fn status_line(s: StatusCode) -> String {
    format!(
        "{} {}",
        s.as_u16(),
        s.canonical_reason().unwrap_or_default()
    )
}

fn response_entry(out: Outcome, base: &str) -> Value {
    let mut response = json!({"status": status_line(out.status)});
    if let Some(loc) = &out.location {
        response["location"] = json!(format!("{base}/{loc}"));
    }
    if let Some(v) = out.version {
        response["etag"] = json!(format!("W/\"{v}\""));
    }
    if let Some(at) = out.last_modified {
        response["lastModified"] = json!(crate::clock::instant(at));
    }
    let mut entry = json!({"response": response});
    if let Some(r) = out.resource {
        if out.status.is_success() {
            entry["resource"] = r;
        } else {
            entry["response"]["outcome"] = r;
        }
    }
    entry
}

fn run_read(store: &dyn StoreRead, ctx: &Ctx, op: &EntryOp, base: &str) -> Result<Outcome, Error> {
    let ok = |resource| Outcome {
        status: StatusCode::OK,
        resource: Some(resource),
        location: None,
        version: None,
        last_modified: None,
        key_name: None,
    };
    match op {
        EntryOp::Read { rt, id, version } => ops::read(store, ctx, rt, id, *version),
        EntryOp::Search { rt, params } => {
            search::search_bundle(store, ctx, rt, params, false, base).map(ok)
        }
        EntryOp::History { rt, id, params } => {
            let req = search::parse(
                ctx,
                rt,
                &params
                    .iter()
                    .filter(|(k, _)| k == "_count" || k == "_offset")
                    .cloned()
                    .collect::<Vec<_>>(),
                false,
            )?;
            ops::history(store, ctx, rt, id.as_ref(), req.paging, base).map(ok)
        }
        _ => Err(Error::internal(&"write entry routed to the read path")),
    }
}

fn run_write(tx: &mut dyn StoreTx, ctx: &Ctx, op: EntryOp) -> Result<Outcome, Error> {
    match op {
        EntryOp::Create {
            rt,
            resource,
            if_none_exist,
            ..
        } => {
            let p = ops::prepare(&*tx, ctx, &rt, ResourceId::random(), resource, false)?;
            ops::create(tx, ctx, p, if_none_exist.as_deref())
        }
        EntryOp::Update {
            rt,
            id,
            resource,
            if_match,
            ..
        } => {
            let p = ops::prepare(&*tx, ctx, &rt, id, resource, true)?;
            ops::update(tx, ctx, p, if_match)
        }
        EntryOp::Delete { rt, id, if_match } => ops::delete(tx, ctx, &rt, &id, if_match),
        EntryOp::ConditionalUpdate {
            rt,
            params,
            resource,
            if_match,
            ..
        } => change::conditional_update(tx, ctx, &rt, &params, resource, if_match),
        EntryOp::ConditionalDelete { rt, params } => {
            change::conditional_delete(tx, ctx, &rt, &params)
        }
        EntryOp::Ready {
            prepared,
            create: true,
            ..
        } => ops::create(tx, ctx, *prepared, None),
        EntryOp::Ready {
            prepared, if_match, ..
        } => ops::update(tx, ctx, *prepared, if_match),
        EntryOp::Patch {
            rt,
            target,
            kind,
            body,
            if_match,
        } => change::patch_target(tx, ctx, &rt, &target, kind, &body, if_match),
        _ => Err(Error::internal(&"read entry routed to the write path")),
    }
}

/// Gives a created resource its id: in the resource, and as what its `fullUrl` stands for in
/// the other entries' references.
fn give_id(
    map: &mut HashMap<String, String>,
    rt: &ResourceType,
    id: &ResourceId,
    full_url: Option<&str>,
    resource: &mut Value,
) {
    if let Some(u) = full_url {
        map.insert(u.to_owned(), format!("{rt}/{id}"));
    }
    if let Value::Object(o) = resource {
        o.insert("id".into(), Value::String(id.to_string()));
    }
}

pub(crate) fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get_mut("reference")
                && let Some(new) = map.get(r.as_str())
            {
                *r = new.clone();
            }
            obj.values_mut().for_each(|c| rewrite_references(c, map));
        }
        Value::Array(items) => items.iter_mut().for_each(|c| rewrite_references(c, map)),
        _ => {}
    }
}

fn transaction(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    mut ops_in: Vec<EntryOp>,
    base: &str,
) -> Result<Vec<Value>, Error> {
    // Resolve the ids of created resources (conditional creates may resolve to existing ones).
    let mut map = HashMap::new();
    let mut existing = HashMap::new();
    for (i, op) in ops_in.iter_mut().enumerate() {
        match op {
            EntryOp::Create {
                rt,
                resource,
                if_none_exist,
                full_url,
                id: given,
            } => {
                let mut id = given.clone().unwrap_or_else(ResourceId::random);
                if let Some(q) = if_none_exist.as_deref() {
                    let hits =
                        search::matching_ids(&*tx, ctx, rt, &search::parse_query_string(q), 2)
                            .map_err(|e| entry_error(i, e))?;
                    match hits.as_slice() {
                        [] => {}
                        [one] => {
                            id = one.clone();
                            existing.insert(i, one.clone());
                        }
                        _ => {
                            return Err(entry_error(
                                i,
                                Error::new(
                                    ErrorKind::PreconditionFailed,
                                    IssueCode::Duplicate,
                                    "ifNoneExist matches more than one resource",
                                ),
                            ));
                        }
                    }
                }
                give_id(&mut map, rt, &id, full_url.as_deref(), resource);
            }
            EntryOp::Update {
                rt,
                id,
                full_url: Some(u),
                ..
            } => {
                map.insert(u.clone(), format!("{rt}/{id}"));
            }
            EntryOp::ConditionalUpdate {
                rt,
                params,
                resource,
                if_match,
                full_url,
            } => {
                let id = change::update_target(tx, ctx, rt, params, resource)
                    .map_err(|e| entry_error(i, e))?;
                if let Some(u) = full_url {
                    map.insert(u.clone(), format!("{rt}/{id}"));
                }
                if let Value::Object(o) = resource {
                    o.insert("id".into(), Value::String(id.to_string()));
                }
                *op = EntryOp::Update {
                    rt: rt.clone(),
                    id,
                    resource: std::mem::take(resource),
                    if_match: *if_match,
                    full_url: full_url.take(),
                };
            }
            EntryOp::ConditionalDelete { rt, params } => {
                let id = change::select_one(tx, ctx, rt, params, "delete")
                    .and_then(|hit| {
                        hit.ok_or_else(|| {
                            Error::not_found(format!("no {rt} matches the conditional delete"))
                        })
                    })
                    .map_err(|e| entry_error(i, e))?;
                *op = EntryOp::Delete {
                    rt: rt.clone(),
                    id,
                    if_match: None,
                };
            }
            _ => {}
        }
    }
    for op in &mut ops_in {
        if let EntryOp::Create { resource, .. } | EntryOp::Update { resource, .. } = op {
            rewrite_references(resource, &map);
        }
    }
    let mut order: Vec<usize> = (0..ops_in.len()).collect();
    order.sort_by_key(|&i| ops_in[i].order());
    let mut results: Vec<Option<Value>> = vec![None; ops_in.len()];
    for i in order {
        let op = std::mem::replace(&mut ops_in[i], EntryOp::Done);
        let out = if let Some(id) = existing.get(&i) {
            let EntryOp::Create { rt, .. } = &op else {
                continue;
            };
            ops::read(&*tx, ctx, rt, id, None)
        } else if op.is_write() {
            match op {
                EntryOp::Create { rt, resource, .. } => {
                    let id = resource
                        .get("id")
                        .and_then(Value::as_str)
                        .map(ops::parse_id)
                        .transpose()?
                        .unwrap_or_else(ResourceId::random);
                    ops::prepare(&*tx, ctx, &rt, id, resource, false)
                        .and_then(|p| ops::create(tx, ctx, p, None))
                }
                other => run_write(tx, ctx, other),
            }
        } else {
            run_read(&*tx, ctx, &op, base)
        }
        .map_err(|e| entry_error(i, e))?;
        results[i] = Some(response_entry(out, base));
    }
    Ok(results.into_iter().flatten().collect())
}

/// Runs the entries of a `transaction` Bundle inside `tx`, so that an import is atomic with
/// the caller's other writes (e.g. a shared bundle's replay marker). Returns the response
/// entries, in entry order.
///
/// # Errors
/// The first failing entry's error; the caller's transaction then rolls back.
pub(crate) fn transaction_entries(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    entries: Vec<Value>,
    base: &str,
) -> Result<Vec<Value>, Error> {
    let mut parsed = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        parsed.push(parse_entry(ctx, e).map_err(|err| entry_error(i, err))?);
    }
    transaction(tx, ctx, parsed, base)
}

/// Checks that `ops` add at most `max` blind-index entries in all (and each within its own
/// caps), before the writer is taken: the work one transaction does on the single writer stays
/// bounded. `whole` names the transaction in the refusal ("the file"). A resource's own refusal
/// comes with its position.
///
/// # Errors
/// 422 `too-costly`.
pub(crate) fn check_index_total(
    ctx: &Ctx,
    ops: &[EntryOp],
    max: usize,
    whole: &str,
) -> Result<(), (Option<usize>, Error)> {
    let mut total = 0usize;
    for (i, op) in ops.iter().enumerate() {
        total += op.index_load(ctx).map_err(|e| (Some(i), e))?;
        if total > max {
            return Err((
                None,
                Error::new(
                    ErrorKind::Unprocessable,
                    IssueCode::TooCostly,
                    format!(
                        "{whole} has too many searchable values in all (at most {max} index entries); split it"
                    ),
                ),
            ));
        }
    }
    Ok(())
}

/// Runs entries made by [`prepare_writes`] as one transaction inside `tx`.
///
/// # Errors
/// The first failing entry's error; the caller's transaction then rolls back.
pub(crate) fn transaction_ops(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    ops_in: Vec<EntryOp>,
    base: &str,
) -> Result<Vec<Value>, Error> {
    transaction(tx, ctx, ops_in, base)
}

/// Parses a transaction's entries and, when every one is a plain create or `PUT [type]/[id]`
/// (no conditions, deletes, patches or reads: every id is known before the transaction, an
/// import's always), gives the creates their ids, replaces the entries' `fullUrl`s in one
/// another's references with those ids, and validates and indexes each one here, off the single
/// writer; the transaction then only checks access and stores them. An entry whose preparation
/// needs the store ([`ops::prepare_detached`]) is left to the transaction, as is every entry when
/// any is not such a write.
///
/// # Errors
/// The first entry that does not parse or does not validate, named `entry N`.
pub(crate) fn prepare_writes(ctx: &Ctx, entries: Vec<Value>) -> Result<Vec<EntryOp>, Error> {
    let mut parsed = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        parsed.push(parse_entry(ctx, e).map_err(|err| entry_error(i, err))?);
    }
    let plain = parsed.iter().all(|op| {
        matches!(
            op,
            EntryOp::Create {
                if_none_exist: None,
                ..
            } | EntryOp::Update { .. }
        )
    });
    if !plain {
        return Ok(parsed);
    }
    let mut map = HashMap::new();
    for op in &mut parsed {
        match op {
            EntryOp::Create {
                rt,
                resource,
                full_url,
                id,
                ..
            } => {
                let new = ResourceId::random();
                give_id(&mut map, rt, &new, full_url.as_deref(), resource);
                *id = Some(new);
            }
            EntryOp::Update {
                rt,
                id,
                full_url: Some(u),
                ..
            } => {
                map.insert(u.clone(), format!("{rt}/{id}"));
            }
            _ => {}
        }
    }
    parsed
        .into_iter()
        .enumerate()
        .map(|(i, mut op)| {
            let (rt, id, resource, if_match, create) = match &mut op {
                EntryOp::Create {
                    rt,
                    resource,
                    id: Some(id),
                    ..
                } => (rt.clone(), id.clone(), resource, None, true),
                EntryOp::Update {
                    rt,
                    id,
                    resource,
                    if_match,
                    ..
                } => (rt.clone(), id.clone(), resource, *if_match, false),
                _ => return Ok(op),
            };
            rewrite_references(resource, &map);
            let resource = std::mem::take(resource);
            Ok(
                match ops::prepare_detached(ctx, &rt, id, resource, !create)
                    .map_err(|e| entry_error(i, e))?
                {
                    Ok(prepared) => EntryOp::Ready {
                        prepared: Box::new(prepared),
                        if_match,
                        create,
                    },
                    Err(back) => {
                        // Prepared inside the transaction, with its id and references as here.
                        if let EntryOp::Create { resource, .. } | EntryOp::Update { resource, .. } =
                            &mut op
                        {
                            *resource = back;
                        }
                        op
                    }
                },
            )
        })
        .collect()
}

/// Processes a `batch` or `transaction` Bundle and returns the response Bundle.
///
/// # Errors
/// 400 for a malformed Bundle; for a transaction, the first failing entry's error (nothing
/// is written).
pub fn process(
    store: &dyn Store,
    ctx: &Ctx,
    mut bundle: Value,
    base: &str,
) -> Result<Value, Error> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Error::bad_request("POST to the base URL takes a Bundle"));
    }
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind != "batch" && kind != "transaction" {
        return Err(Error::new(
            ErrorKind::Invalid,
            IssueCode::NotSupported,
            "Bundle.type must be batch or transaction",
        ));
    }
    let entries = match bundle.get_mut("entry").map(Value::take) {
        None => Vec::new(),
        Some(Value::Array(e)) => e,
        Some(_) => {
            return Err(Error::new(
                ErrorKind::Invalid,
                IssueCode::Structure,
                "Bundle.entry must be an array",
            ));
        }
    };
    if entries.len() > MAX_ENTRIES {
        return Err(Error::new(
            ErrorKind::TooLarge,
            IssueCode::TooCostly,
            format!("a Bundle may hold at most {MAX_ENTRIES} entries"),
        ));
    }
    let response_kind = format!("{kind}-response");
    let out_entries = if kind == "transaction" {
        // Bounded before the writer is taken (the transaction runs on it whole).
        let resources: Vec<&Value> = entries.iter().filter_map(|e| e.get("resource")).collect();
        ops::check_sizes(&resources, None).map_err(|(_, e)| e)?;
        drop(resources);
        // Validated and indexed here, on the request's thread, so the writer only stores.
        let ops_in = prepare_writes(ctx, entries)?;
        check_index_total(ctx, &ops_in, ops::MAX_BUNDLE_INDEX_KEYS, "the transaction")
            .map_err(|(_, e)| e)?;
        let ctx2 = ctx.clone();
        let base2 = base.to_owned();
        write_with(store, move |tx| {
            Ok(transaction_ops(tx, &ctx2, ops_in, &base2)?)
        })?
    } else {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let result = parse_entry(ctx, e).and_then(|op| {
                if op.is_write() {
                    let ctx2 = ctx.clone();
                    write_with(store, move |tx| Ok(run_write(tx, &ctx2, op)?)).map_err(Error::from)
                } else {
                    run_read(store, ctx, &op, base)
                }
            });
            out.push(match result {
                Ok(o) => response_entry(o, base),
                Err(err) => {
                    // The entry's refusal is recorded with the Bundle's access-log record.
                    if let (Some(rule), Some(g)) = (&err.denied_by, ctx.guard()) {
                        g.refused_by(rule);
                    }
                    response_entry(
                        Outcome {
                            status: err.status(),
                            resource: Some(err.outcome()),
                            location: None,
                            version: None,
                            last_modified: None,
                            key_name: None,
                        },
                        base,
                    )
                }
            });
        }
        out
    };
    Ok(json!({"resourceType": "Bundle", "type": response_kind, "entry": out_entries}))
}
