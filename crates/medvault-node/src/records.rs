//! Reading stored records under an access context: opening (decrypting) a stored version,
//! read and vread, and what decides whether a stored row may be seen. Below the interactions
//! ([`crate::ops`]) so that search (`_include`) and the access policy's lookups can read
//! without importing them.

use http::StatusCode;
use medvault_auth::scopes::{Access, Interaction};
use medvault_core::{ResourceId, ResourceType};
use medvault_crypto::RecordAad;
use medvault_policy::Action;
use medvault_store::{StoreRead, StoredVersion};
use serde_json::Value;

use crate::ctx::{Ctx, policy_action};
use crate::error::{Error, IssueCode};
use crate::node::KeyError;

/// The result of one interaction, before it becomes an HTTP response or a Bundle entry.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Status.
    pub status: StatusCode,
    /// Body resource.
    pub resource: Option<Value>,
    /// `Type/id/_history/v` of the version written or read.
    pub location: Option<String>,
    /// Version id, for `ETag`.
    pub version: Option<u64>,
    /// Last-modified time, microseconds.
    pub last_modified: Option<i64>,
    /// Data key (compartment) of the version written or read, e.g. `Patient/<id>`.
    pub key_name: Option<String>,
}

impl Outcome {
    pub(crate) fn of_version(
        status: StatusCode,
        rt: &ResourceType,
        id: &ResourceId,
        version: u64,
        at: i64,
        resource: Option<Value>,
    ) -> Self {
        Self {
            status,
            resource,
            location: Some(format!("{rt}/{id}/_history/{version}")),
            version: Some(version),
            last_modified: Some(at),
            key_name: None,
        }
    }

    /// The outcome with its resource cut down by `_summary` or `_elements` (`None`: whole).
    #[must_use]
    pub fn subset(
        mut self,
        rt: &ResourceType,
        how: Option<&medvault_fhir::summary::Subset>,
    ) -> Self {
        if let (Some(how), Some(r)) = (how, &self.resource) {
            self.resource = Some(medvault_fhir::summary::subset(rt.as_str(), r, how));
        }
        self
    }

    pub(crate) fn with_key(mut self, key_name: String) -> Self {
        self.key_name = Some(key_name);
        self
    }

    /// 200 with an informational OperationOutcome saying `text` (what was done, or that it was
    /// done already).
    pub(crate) fn informational(text: &str) -> Self {
        Self::message(StatusCode::OK, IssueCode::Informational, text)
    }

    /// A status with an OperationOutcome body.
    pub fn message(status: StatusCode, code: IssueCode, text: &str) -> Self {
        Self {
            status,
            resource: Some(crate::error::operation_outcome(
                "information",
                code,
                text,
                &[],
            )),
            location: None,
            version: None,
            last_modified: None,
            key_name: None,
        }
    }
}

pub(crate) fn key_error(e: KeyError) -> Error {
    match e {
        KeyError::Shredded => Error::gone("this patient's data was erased"),
        other => Error::internal(&other),
    }
}

/// What a client learns about a resource it may not see: exactly what it would learn about
/// one that does not exist. The refusing rule goes to the access log only.
pub(crate) fn hidden(
    rt: &ResourceType,
    id: &ResourceId,
    version: Option<u64>,
    denied_by: String,
) -> Error {
    not_known(rt, id, version).denied_by(denied_by)
}

pub(crate) fn not_known(rt: &ResourceType, id: &ResourceId, version: Option<u64>) -> Error {
    Error::not_found(match version {
        Some(v) => format!("{rt}/{id} has no version {v}"),
        None => format!("{rt}/{id} is not known"),
    })
}

/// The id of a row read back from the store, for asking the store about the same resource
/// again (the store holds only ids that were [`ResourceId`]s when written).
///
/// # Errors
/// 500 for a stored id that is not one (the database was altered).
pub(crate) fn stored_id(row: &StoredVersion) -> Result<ResourceId, Error> {
    ResourceId::new(&row.id).map_err(|_| Error::internal(&"a stored resource has an invalid id"))
}

/// The content a decision about `row` (a stored version of `rt/id`) rests on: the row's own, or
/// for a delete marker the version it deleted (so a deletion of labelled data is as hidden as
/// the data was); none for an erased patient's rows, decided on the patient alone.
pub fn decision_content(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    row: &StoredVersion,
) -> Result<Option<Value>, Error> {
    if row.shredded || row.expunged {
        return Ok(None);
    }
    if row.body.is_some() {
        return open(store, ctx, row).map(Some);
    }
    let previous = match row.version.checked_sub(1).filter(|v| *v > 0) {
        Some(v) => store.version(rt, id, Some(v))?,
        None => None,
    };
    match previous {
        Some(p) if p.body.is_some() && !p.shredded => open(store, ctx, &p).map(Some),
        _ => Ok(None),
    }
}

/// Opens a stored version.
///
/// # Errors
/// 410 for delete markers and erased compartments; 500 if the ciphertext fails to authenticate
/// (tampering), logged with its row identity.
pub fn open(store: &dyn StoreRead, ctx: &Ctx, row: &StoredVersion) -> Result<Value, Error> {
    if row.expunged {
        return Err(Error::gone(format!(
            "{}/{} version {} was expunged",
            row.resource_type, row.id, row.version
        )));
    }
    if row.shredded {
        ctx.keys.forget(&row.key_name);
        return Err(Error::gone("this patient's data was erased"));
    }
    let Some(body) = &row.body else {
        return Err(Error::gone(format!(
            "{}/{} was deleted",
            row.resource_type, row.id
        )));
    };
    let key = ctx.keys.for_read(store, &row.key_name).map_err(key_error)?;
    let aad = RecordAad {
        tenant: ctx.keys.tenant(),
        resource_type: &row.resource_type,
        id: &row.id,
        version: row.version,
    };
    let plain = match key.open(&aad, body) {
        Ok(p) => p,
        // A cached key can be stale only if another process created this compartment's key;
        // read it from the store once before calling the record corrupt.
        Err(_) => ctx
            .keys
            .reload(store, &row.key_name)
            .map_err(key_error)?
            .open(&aad, body)
            .map_err(|_| {
                Error::internal(&format!(
                    "integrity failure: {} version {} does not authenticate",
                    crate::node::redacted(&format!("{}/{}", row.resource_type, row.id)),
                    row.version
                ))
            })?,
    };
    serde_json::from_slice(&plain).map_err(|e| Error::internal(&e))
}

/// Read or vread.
///
/// # Errors
/// 404 unknown, 410 deleted or erased.
pub fn read(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    version: Option<u64>,
) -> Result<Outcome, Error> {
    // Scopes first: a type the scopes do not reach answers 403 whether or not the id exists.
    ctx.scope_access(rt, Interaction::Read)?;
    let Some(row) = store.version(rt, id, version)? else {
        return Err(not_known(rt, id, version));
    };
    // A resource the request may not see answers as a missing one; so do its delete markers
    // (decided on the version they deleted) and erasure (on the patient alone).
    let refuse = |e: String| hidden(rt, id, version, e);
    if version.is_some() {
        // An old version is seen only if the resource as it is now may be seen too (the
        // strictest of current and historic labels and compartment).
        match current_verdict(store, ctx, rt, id, Interaction::Read)? {
            Verdict::Visible => {}
            Verdict::Hidden(why) => return Err(refuse(why)),
            Verdict::Erased => return Err(Error::gone("this patient's data was erased")),
        }
    }
    if row.body.is_none() || row.shredded {
        let content = decision_content(store, ctx, rt, id, &row)?;
        // A deleted resource the scopes' query constraints would hide answers as a missing
        // one, as it did while it was live (decided on the version it deleted).
        if let Some(c) = &content
            && let Err(e) = ctx.scope_allows(rt, Interaction::Read, c)
        {
            return Err(refuse(e.denied_by.unwrap_or_default()));
        }
        ctx.permits(store, Action::Read, rt, &row.key_name, content.as_ref())?
            .map_err(|p| refuse(p.join(",")))?;
        return Err(open(store, ctx, &row)
            .err()
            .unwrap_or_else(|| refuse(String::new())));
    }
    let resource = open(store, ctx, &row)?;
    if let Err(e) = ctx.scope_allows(rt, Interaction::Read, &resource) {
        return Err(refuse(e.denied_by.unwrap_or_default()));
    }
    ctx.permits(store, Action::Read, rt, &row.key_name, Some(&resource))?
        .map_err(|p| refuse(p.join(",")))?;
    Ok(Outcome::of_version(
        StatusCode::OK,
        rt,
        id,
        row.version,
        row.last_updated_micros,
        Some(resource),
    )
    .with_key(row.key_name))
}

/// What the request may see of a resource as it is now, which bounds what it may see of its
/// history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The current version (or, for a delete marker, the version it deleted) may be seen.
    Visible,
    /// It may not (the refusing rules, for the access log).
    Hidden(String),
    /// The patient whose compartment holds the resource now was erased, and the request may
    /// see that patient.
    Erased,
}

/// Decides the current version of `rt/id` as a read of it would (scopes' query constraints
/// and the access policy): a relabelled record's older versions are no more visible than it
/// is, and a record moved to another patient's compartment is no longer the first patient's.
pub(crate) fn current_verdict(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    interaction: Interaction,
) -> Result<Verdict, Error> {
    let constrained = !matches!(ctx.scope_access(rt, interaction)?, Access::Full);
    if !constrained && ctx.guard().is_none() {
        return Ok(Verdict::Visible);
    }
    let Some(row) = store.version(rt, id, None)? else {
        return Ok(Verdict::Hidden(String::new()));
    };
    let content = decision_content(store, ctx, rt, id, &row)?;
    if constrained
        && let Some(c) = &content
        && let Err(e) = ctx.scope_allows(rt, interaction, c)
    {
        return Ok(Verdict::Hidden(e.denied_by.unwrap_or_default()));
    }
    match ctx.permits(
        store,
        policy_action(interaction),
        rt,
        &row.key_name,
        content.as_ref(),
    )? {
        Err(p) => Ok(Verdict::Hidden(p.join(","))),
        Ok(()) if row.shredded => Ok(Verdict::Erased),
        Ok(()) => Ok(Verdict::Visible),
    }
}

/// The current version of `rt/id` opened as the node's own work (no request's policy: for
/// administrative reports such as a breach assessment); none if absent, deleted or unreadable.
///
/// # Errors
/// Store failures.
pub fn read_as_node(
    node: &crate::Node,
    rt: &ResourceType,
    id: &ResourceId,
) -> Result<Option<Value>, Error> {
    let Some(row) = node.store.version(rt, id, None)? else {
        return Ok(None);
    };
    Ok(open(
        node.store.as_ref(),
        &Ctx::unrestricted_node_work(node),
        &row,
    )
    .ok())
}
