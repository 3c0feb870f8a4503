//! Changes computed from what is stored: `PATCH` (JSON Patch and FHIRPath Patch), conditional
//! update, patch and delete (`PUT`/`PATCH`/`DELETE [type]?search`), and `$meta-add` /
//! `$meta-delete`. Each runs inside the write transaction: the version it starts from is the one
//! it replaces, so a concurrent change cannot slip between the read and the write. The new
//! content is validated, indexed and authorized exactly as a client's `PUT` would be.

use medvault_auth::scopes::{Access, Interaction};
use medvault_core::{ResourceId, ResourceType};
use medvault_fhir::patch::{self, PatchError, PatchKind};
use medvault_store::StoreTx;
use serde_json::{Value, json};

use crate::ctx::{Ctx, out_of_scope};
use crate::error::{Error, ErrorKind, IssueCode};
use crate::ops::{self, Outcome};
use crate::records;
use crate::search;

/// The current content of `rt/id` as the request may read it, and its version.
fn current(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
) -> Result<(Value, u64), Error> {
    let out = records::read(&*tx, ctx, rt, id, None)?;
    match (out.resource, out.version) {
        (Some(r), Some(v)) => Ok((r, v)),
        _ => Err(Error::not_found(format!("{rt}/{id} is not known"))),
    }
}

/// Writes `resource` as the next version of `rt/id` (which is at `version`), as an update.
fn replace(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    resource: Value,
    version: u64,
) -> Result<Outcome, Error> {
    let mut p = ops::prepare(&*tx, ctx, rt, id.clone(), resource, true)?;
    ops::authorize_write(&*tx, ctx, &mut p, Interaction::Update)?;
    ops::update(tx, ctx, p, Some(version))
}

fn check_version(if_match: Option<u64>, version: u64) -> Result<(), Error> {
    match if_match {
        Some(v) if v != version => Err(ops::stale_if_match()),
        _ => Ok(()),
    }
}

fn patch_error(e: &PatchError) -> Error {
    match e {
        PatchError::NotJson
        | PatchError::NotAnArray
        | PatchError::NotParameters
        | PatchError::TooManyOperations { .. }
        | PatchError::Malformed { .. } => Error::bad_request(format!("patch: {e}")),
        PatchError::TooLarge { .. } => Error::new(
            ErrorKind::TooLarge,
            IssueCode::TooLong,
            format!("patch: {e}"),
        ),
        _ => Error::new(
            ErrorKind::Unprocessable,
            IssueCode::Processing,
            format!("patch: {e}"),
        ),
    }
}

/// `PATCH [type]/[id]`: applies `body` (of `kind`) to the current version and writes the
/// result as the next one.
///
/// # Errors
/// 404 for an unknown or hidden resource; 412 when `if_match` is not the current version; 400
/// for a malformed patch, 422 for one that does not apply, or whose result is not a valid
/// resource; as an update otherwise.
fn patch(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    kind: PatchKind,
    body: &[u8],
    if_match: Option<u64>,
) -> Result<Outcome, Error> {
    ctx.scope_access(rt, Interaction::Update)?;
    let (resource, version) = current(tx, ctx, rt, id)?;
    check_version(if_match, version)?;
    let patched = patch::apply_patch(kind, &resource, body).map_err(|e| patch_error(&e))?;
    if patched == resource {
        // Nothing changed (an empty patch, only tests): no new version.
        return records::read(&*tx, ctx, rt, id, None);
    }
    replace(tx, ctx, rt, id, patched, version)
}

/// The one resource a conditional request's search selects: `None` when none does.
///
/// # Errors
/// 412 when several do; 403 without an unconstrained search scope (the answer tells whether
/// matching resources exist); as [`search::matching_ids`].
pub(crate) fn select_one(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    what: &str,
) -> Result<Option<ResourceId>, Error> {
    if !matches!(ctx.scope_access(rt, Interaction::Search)?, Access::Full) {
        return Err(out_of_scope(&format!(
            "a conditional {what} of {rt} without an unconstrained search scope"
        )));
    }
    let hits = search::matching_ids(&*tx, ctx, rt, params, 2)?;
    match hits.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err(Error::new(
            ErrorKind::PreconditionFailed,
            IssueCode::MultipleMatches,
            format!("the conditional {what} matches more than one {rt}; make the search narrower"),
        )),
    }
}

/// `PUT [type]?search`: updates the one match, or creates the resource when nothing matches
/// (under the body's id if it has one, else a new one).
///
/// # Errors
/// 412 for several matches or a stale `if_match`; 400 when the body's id is not the match's;
/// as an update otherwise.
pub fn conditional_update(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    resource: Value,
    if_match: Option<u64>,
) -> Result<Outcome, Error> {
    let id = update_target(tx, ctx, rt, params, &resource)?;
    let mut p = ops::prepare(&*tx, ctx, rt, id, resource, false)?;
    ops::authorize_write(&*tx, ctx, &mut p, Interaction::Update)?;
    ops::update(tx, ctx, p, if_match)
}

/// The id a conditional update writes: the one match's, else the body's, else a new one.
///
/// # Errors
/// As [`select_one`]; 400 when the body's id is not the match's.
pub(crate) fn update_target(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
    resource: &Value,
) -> Result<ResourceId, Error> {
    let body_id = match resource.get("id") {
        None => None,
        Some(Value::String(s)) => Some(ops::parse_id(s)?),
        Some(_) => return Err(Error::bad_request("the resource id must be a string")),
    };
    let id = match (select_one(tx, ctx, rt, params, "update")?, body_id) {
        (Some(hit), Some(b)) if hit != b => {
            return Err(Error::bad_request(
                "the resource id is not the id of the resource the condition selects",
            ));
        }
        (Some(hit), _) => hit,
        (None, Some(b)) => b,
        (None, None) => ResourceId::random(),
    };
    Ok(id)
}

/// What a `PATCH` names: one resource, or the one a search selects (a conditional patch).
#[derive(Debug, Clone)]
pub enum PatchTarget {
    /// `PATCH [type]/[id]`.
    Id(ResourceId),
    /// `PATCH [type]?search`.
    Search(Vec<(String, String)>),
}

/// `PATCH` of `target`: a conditional one patches the one match.
///
/// # Errors
/// 404 when nothing matches, 412 for several; as [`patch`].
pub fn patch_target(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    target: &PatchTarget,
    kind: PatchKind,
    body: &[u8],
    if_match: Option<u64>,
) -> Result<Outcome, Error> {
    let id = match target {
        PatchTarget::Id(id) => id.clone(),
        PatchTarget::Search(params) => select_one(tx, ctx, rt, params, "patch")?
            .ok_or_else(|| Error::not_found(format!("no {rt} matches the conditional patch")))?,
    };
    patch(tx, ctx, rt, &id, kind, body, if_match)
}

/// `DELETE [type]?search`: deletes the one match.
///
/// # Errors
/// 404 when nothing matches, 412 for several; as a delete.
pub fn conditional_delete(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(String, String)],
) -> Result<Outcome, Error> {
    let id = select_one(tx, ctx, rt, params, "delete")?
        .ok_or_else(|| Error::not_found(format!("no {rt} matches the conditional delete")))?;
    ops::delete(tx, ctx, rt, &id, None)
}

/// Which `$meta` operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaChange {
    /// `$meta-add`: tags, security labels and profiles are added (kept once).
    Add,
    /// `$meta-delete`: they are removed.
    Delete,
}

/// The `meta` a `$meta-add`/`$meta-delete` Parameters body carries (`parameter[name=meta]`).
///
/// # Errors
/// 400 when the body is not such a Parameters resource.
pub fn meta_parameter(body: &Value) -> Result<&Value, Error> {
    let bad = || {
        Error::bad_request(
            "the body must be a Parameters resource with one 'meta' parameter (valueMeta)",
        )
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad());
    }
    let params = body
        .get("parameter")
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    match params.as_slice() {
        [p] if p.get("name").and_then(Value::as_str) == Some("meta") => {
            p.get("valueMeta").filter(|m| m.is_object()).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// A `Parameters` answer carrying `meta` as its `return`.
pub fn meta_answer(meta: &Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]})
}

/// `$meta-add` / `$meta-delete`: changes the tags, security labels and profiles of `rt/id` and
/// writes the result as a new version (medvault never changes a stored version in place: the
/// records log holds every one). Answers the resulting `meta` (the outcome's resource) and
/// names the version written (its location). Removing a security label is a
/// change of the record like any other: the request needs the right to update it.
///
/// # Errors
/// As [`patch`]; 400 for a malformed `meta`.
pub fn change_meta(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    change: MetaChange,
    meta: &Value,
) -> Result<Outcome, Error> {
    ctx.scope_access(rt, Interaction::Update)?;
    let (mut resource, version) = current(tx, ctx, rt, id)?;
    let Some(target) = resource
        .as_object_mut()
        .map(|o| o.entry("meta").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return Err(Error::internal(&"a stored resource is not an object"));
    };
    for field in ["tag", "security", "profile"] {
        let Some(items) = meta.get(field) else {
            continue;
        };
        let items = items
            .as_array()
            .ok_or_else(|| Error::bad_request(format!("meta.{field} must be an array")))?;
        let list = target
            .entry(field)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .ok_or_else(|| Error::internal(&"a stored meta list is not an array"))?;
        let same = |a: &Value, b: &Value| {
            if field == "profile" {
                a == b
            } else {
                a.get("system") == b.get("system") && a.get("code") == b.get("code")
            }
        };
        for item in items {
            match change {
                MetaChange::Add => {
                    if !list.iter().any(|x| same(x, item)) {
                        list.push(item.clone());
                    }
                }
                MetaChange::Delete => list.retain(|x| !same(x, item)),
            }
        }
        if list.is_empty() {
            target.remove(field);
        }
    }
    let mut out = replace(tx, ctx, rt, id, resource, version)?;
    let answer = meta_answer(
        out.resource
            .as_ref()
            .and_then(|r| r.get("meta"))
            .unwrap_or(&Value::Null),
    );
    out.resource = Some(answer);
    out.status = http::StatusCode::OK;
    // The answer is Parameters, not the resource: no ETag or Last-Modified of the resource.
    out.version = None;
    out.last_modified = None;
    Ok(out)
}
