//! FHIR operations that read or check without writing: `$validate`, `$meta` and
//! `Patient/[id]/$everything`. (The writing ones, `$meta-add` and `$meta-delete`, are in
//! [`crate::change`].)

use std::collections::HashSet;

use medvault_core::{ResourceId, ResourceType};
use medvault_store::StoreRead;
use serde_json::{Value, json};

use crate::change::meta_answer;
use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode, operation_outcome};
use crate::records;
use crate::search::{self, Paging};

/// `$validate` (`POST [type]/$validate`, `POST [type]/[id]/$validate`): checks a resource as a
/// create (or, with `mode=update` or an id in the path, as an update of that id) would, without
/// writing it. Answers 200 with an `OperationOutcome` whose issues say whether it is valid.
///
/// # Errors
/// 400 for a body that is neither a resource nor a Parameters resource carrying one; what the
/// check itself refuses (403, 404…) other than the resource's own faults.
pub fn validate(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: Option<&ResourceId>,
    body: Value,
) -> Result<Value, Error> {
    let (resource, mode) = if body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && rt.as_str() != "Parameters"
    {
        let params = body
            .get("parameter")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let find = |name: &str| {
            params
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
        };
        let resource = find("resource")
            .and_then(|p| p.get("resource"))
            .cloned()
            .ok_or_else(|| Error::bad_request("$validate: the Parameters need a 'resource'"))?;
        let mode = find("mode")
            .and_then(|p| p.get("valueCode"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        (resource, mode)
    } else {
        (body, None)
    };
    let update = match mode.as_deref() {
        None => id.is_some(),
        Some("create") => false,
        Some("update") => true,
        Some(m) => {
            return Err(Error::new(
                ErrorKind::Invalid,
                IssueCode::NotSupported,
                format!("$validate mode '{m}' is not supported (create or update)"),
            ));
        }
    };
    let target = match (update, id) {
        (true, Some(id)) => id.clone(),
        (true, None) => resource
            .get("id")
            .and_then(Value::as_str)
            .map(crate::ops::parse_id)
            .transpose()?
            .ok_or_else(|| Error::bad_request("$validate mode=update needs the resource's id"))?,
        (false, _) => ResourceId::random(),
    };
    // Checked as the write would be, authorization included: a resource the requester could
    // not write answers as the write would (an identifier naming a patient they may not see
    // is refused exactly as one naming no patient).
    let interaction = if update {
        medvault_auth::scopes::Interaction::Update
    } else {
        medvault_auth::scopes::Interaction::Create
    };
    let checked = crate::ops::prepare(store, ctx, rt, target, resource, update)
        .and_then(|mut p| crate::ops::authorize_write(store, ctx, &mut p, interaction).map(|()| p));
    match checked {
        Ok(_) => Ok(operation_outcome(
            "information",
            IssueCode::Informational,
            "the resource is valid",
            &[],
        )),
        Err(e) if matches!(e.kind, ErrorKind::Invalid | ErrorKind::Unprocessable) => {
            Ok(e.outcome())
        }
        Err(e) => Err(e),
    }
}

/// `GET [type]/[id]/$meta`: the resource's `meta`, as a read would show it.
///
/// # Errors
/// As a read.
pub fn meta(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
) -> Result<Value, Error> {
    let out = records::read(store, ctx, rt, id, None)?;
    Ok(meta_answer(
        out.resource
            .as_ref()
            .and_then(|r| r.get("meta"))
            .unwrap_or(&Value::Null),
    ))
}

/// Every resource in `patient`'s compartment the request may see (each type's compartment
/// parameters searched as the requester), of `types` if given, each once.
///
/// # Errors
/// 400 `too-costly` past [`search::MAX_CANDIDATES`] of one type; store and key errors.
pub fn compartment(
    store: &dyn StoreRead,
    ctx: &Ctx,
    patient: &ResourceId,
    types: Option<&[String]>,
) -> Result<Vec<(ResourceType, Value)>, Error> {
    let reference = format!("Patient/{patient}");
    let mut out = Vec::new();
    for (rt, info) in ctx.fhir.types() {
        if *rt == ResourceType::PATIENT
            || info.compartment_params.is_empty()
            || types.is_some_and(|t| !t.iter().any(|x| x == rt.as_str()))
        {
            continue;
        }
        let mut seen = HashSet::new();
        for param in &info.compartment_params {
            // Strict: a parameter the type cannot search would otherwise match everything.
            let found =
                match search::all_matches(store, ctx, rt, &[(param.clone(), reference.clone())]) {
                    Ok(found) => found,
                    Err(e) if e.code == IssueCode::NotSupported => continue,
                    Err(e) => return Err(e),
                };
            for v in found {
                if let Some(id) = v.get("id").and_then(Value::as_str)
                    && seen.insert(id.to_owned())
                {
                    out.push((rt.clone(), v));
                }
            }
        }
    }
    Ok(out)
}

/// Most resources one `$everything` may gather (across all its pages).
pub const MAX_EVERYTHING: usize = 10_000;

/// `Patient/[id]/$everything`: the patient, every resource in their compartment the request
/// may see, and the resources outside every patient's compartment those refer to
/// (practitioners, organizations, locations, medications…), each read as the requester would.
/// Ordered by type and id (the patient first) and paged with `_count`/`_offset` (1 000 a page
/// by default); `_type` limits the compartment's types, `_since` to resources changed since
/// an instant.
///
/// # Errors
/// 404 for an unknown or hidden patient; 400 for unsupported parameters (`start`, `end`) or a
/// malformed `_since`; `too-costly` past [`MAX_EVERYTHING`] resources.
pub fn everything(
    store: &dyn StoreRead,
    ctx: &Ctx,
    patient: &ResourceId,
    params: &[(String, String)],
    base: &str,
) -> Result<Value, Error> {
    let mut paging = Paging {
        offset: 0,
        count: search::MAX_COUNT,
    };
    let mut types: Option<Vec<String>> = None;
    let mut since: Option<String> = None;
    let mut applied = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_count" => paging.count = parse_u64(name, value)?.min(search::MAX_COUNT),
            "_offset" => paging.offset = parse_u64(name, value)?,
            "_type" => {
                let list: Vec<String> = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = list.iter().find(|t| ctx.fhir.served(t).is_none()) {
                    return Err(Error::bad_request(format!(
                        "_type: {bad} is not a served resource type"
                    )));
                }
                types = Some(list);
            }
            "_since" => {
                medvault_fhir::date_range(value).ok_or_else(|| {
                    Error::bad_request("_since must be a FHIR instant (2026-01-01T00:00:00Z)")
                })?;
                since = Some(value.clone());
            }
            "start" | "end" => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    IssueCode::NotSupported,
                    "$everything start/end are not supported; use _since or search by date",
                ));
            }
            "_format" | "_pretty" => continue,
            _ => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    IssueCode::NotSupported,
                    format!("$everything does not take '{name}'"),
                ));
            }
        }
        applied.push((name.clone(), value.clone()));
    }
    let mut all = everything_resources(store, ctx, patient, types.as_deref())?;
    if let Some(since) = &since {
        // Instants are stored in one format; compare them as instants.
        let from = medvault_fhir::date_range(since).map_or(i64::MIN, |(s, _)| s);
        all.retain(|(_, v)| {
            v.pointer("/meta/lastUpdated")
                .and_then(Value::as_str)
                .and_then(medvault_fhir::date_range)
                .is_some_and(|(s, _)| s >= from)
        });
    }
    let id_of = |v: &Value| {
        v.get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    all.sort_by(|(ta, a), (tb, b)| {
        let rank = |t: &ResourceType| u8::from(*t != ResourceType::PATIENT);
        (rank(ta), ta.as_str(), id_of(a)).cmp(&(rank(tb), tb.as_str(), id_of(b)))
    });
    let total = all.len() as u64;
    let entries: Vec<Value> = all
        .into_iter()
        .skip(usize::try_from(paging.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(paging.count).unwrap_or(usize::MAX))
        .map(|(t, v)| {
            json!({"fullUrl": format!("{base}/{t}/{}", id_of(&v)), "resource": v,
                "search": {"mode": "match"}})
        })
        .collect();
    Ok(search::bundle(
        "searchset",
        entries,
        total,
        &format!("{base}/Patient/{patient}/$everything"),
        &applied,
        paging,
    ))
}

/// What `$everything` gathers, unordered: the patient, every resource in their compartment
/// the request may see (of `types`, when given), and the resources outside every patient's
/// compartment those refer to, each read as the requester would.
///
/// # Errors
/// 404 for an unknown or hidden patient; `too-costly` past [`MAX_EVERYTHING`] resources.
pub fn everything_resources(
    store: &dyn StoreRead,
    ctx: &Ctx,
    patient: &ResourceId,
    types: Option<&[String]>,
) -> Result<Vec<(ResourceType, Value)>, Error> {
    let patient_row = records::read(store, ctx, &ResourceType::PATIENT, patient, None)?;
    gather(store, ctx, patient, types, patient_row.resource)
}

/// [`everything_resources`] for a patient whose Patient resource was deleted (not erased),
/// for the node's own work answering their request for a copy (GDPR Art. 15: the data is still
/// held): the Patient as it was before it was deleted, and the rest of the compartment as it
/// is.
///
/// # Errors
/// 404 when the Patient is not a deleted one; 410 for an erased patient; as
/// [`everything_resources`].
pub fn everything_resources_of_deleted(
    store: &dyn StoreRead,
    ctx: &Ctx,
    patient: &ResourceId,
) -> Result<Vec<(ResourceType, Value)>, Error> {
    let Some(row) = store.version(&ResourceType::PATIENT, patient, None)? else {
        return Err(Error::not_found("no such patient"));
    };
    if row.shredded {
        return Err(Error::gone("this patient's data was erased"));
    }
    if row.body.is_some() {
        return Err(Error::not_found("this patient is not deleted"));
    }
    let before = records::decision_content(store, ctx, &ResourceType::PATIENT, patient, &row)?;
    gather(store, ctx, patient, None, before)
}

/// The Patient (`patient_resource`), their compartment and what it refers to outside every
/// patient's compartment.
fn gather(
    store: &dyn StoreRead,
    ctx: &Ctx,
    patient: &ResourceId,
    types: Option<&[String]>,
    patient_resource: Option<Value>,
) -> Result<Vec<(ResourceType, Value)>, Error> {
    let mut all: Vec<(ResourceType, Value)> = Vec::new();
    if types.is_none_or(|t| t.iter().any(|x| x == "Patient")) {
        all.extend(patient_resource.map(|r| (ResourceType::PATIENT, r)));
    }
    all.extend(compartment(store, ctx, patient, types)?);
    if all.len() > MAX_EVERYTHING {
        return Err(search::too_costly());
    }
    // What the compartment refers to outside every patient's compartment.
    let mut seen: HashSet<String> = all
        .iter()
        .filter_map(|(t, v)| Some(format!("{t}/{}", v.get("id")?.as_str()?)))
        .collect();
    let mut referenced = Vec::new();
    for (t, v) in &all {
        let Some(info) = ctx.fhir.type_info(t.as_str()) else {
            continue;
        };
        for p in info.params.values() {
            for reference in p.references(v) {
                let Some((target, id)) = reference.split_once('/') else {
                    continue;
                };
                let Some(target) = ctx.fhir.served(target) else {
                    continue;
                };
                let outside = ctx
                    .fhir
                    .type_info(target.as_str())
                    .is_some_and(|i| i.compartment_params.is_empty() && !i.patient_data)
                    && *target != ResourceType::PATIENT;
                if !outside
                    || types.is_some_and(|ts| !ts.iter().any(|x| x == target.as_str()))
                    || !seen.insert(reference.clone())
                {
                    continue;
                }
                let Ok(id) = ResourceId::new(id) else {
                    continue;
                };
                if all.len() + referenced.len() >= MAX_EVERYTHING {
                    return Err(search::too_costly());
                }
                match records::read(store, ctx, target, &id, None) {
                    Ok(o) => referenced.extend(o.resource.map(|r| (target.clone(), r))),
                    Err(e) if e.kind.is_client_error() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    all.extend(referenced);
    Ok(all)
}

fn parse_u64(name: &str, value: &str) -> Result<u64, Error> {
    value
        .parse::<u64>()
        .map_err(|_| Error::bad_request(format!("{name} must be a non-negative integer")))
}
