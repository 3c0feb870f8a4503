//! FHIR interactions over the store, independent of HTTP: the HTTP layer and Bundle processing
//! both come through here.
//!
//! Reads work on any [`StoreRead`] (a pooled reader or the inside of a write transaction);
//! writes run inside [`StoreTx`] so that checks (`If-Match`, `If-None-Exist`) and the write
//! they guard are one atomic unit.

use http::StatusCode;
use medvault_auth::scopes::{Access, Interaction};
use medvault_core::{Compartment, KeyName, ResourceId, ResourceType};
use medvault_crypto::BlindValue;
use medvault_crypto::RecordAad;
use medvault_fhir::Fhir;
use medvault_policy::Action;
use medvault_store::{Amendment, AmendmentKind, StoreRead, StoreTx, StoredVersion};
use serde_json::{Map, Value, json};

use crate::clock::instant;
use crate::ctx::{out_of_scope, policy_action};
use crate::error::{Error, ErrorKind, IssueCode};
use crate::records::{
    Verdict, current_verdict, decision_content, hidden, key_error, not_known, stored_id,
};
use crate::search;

// The access context and record reading live below the interactions (so that search and the
// access policy use them without importing this module); re-exported where callers find them.
pub use crate::ctx::{Ctx, Services, satisfies, timed_out};
pub use crate::records::{Outcome, open, read};

/// Largest resource (its JSON) of most types: people, observations, orders … are small.
pub const MAX_RESOURCE_BYTES: usize = 1024 * 1024;
/// Types that carry documents, many answers, images or whole definitions (terminologies,
/// profiles, guides), limited by the request body limit only.
pub const LARGE_TYPES: &[&str] = &[
    "Binary",
    "Bundle",
    "CapabilityStatement",
    "CodeSystem",
    "Composition",
    "ConceptMap",
    "DocumentReference",
    "DiagnosticReport",
    "ImagingStudy",
    "ImplementationGuide",
    "Library",
    "Measure",
    "MeasureReport",
    "Media",
    "MolecularSequence",
    "Parameters",
    "PlanDefinition",
    "Questionnaire",
    "QuestionnaireResponse",
    "StructureDefinition",
    "StructureMap",
    "ValueSet",
];
/// Most blind-index entries one search parameter of one resource may add.
pub const MAX_INDEX_KEYS_PER_PARAM: usize = 10_000;
/// Most blind-index entries one resource may add.
pub const MAX_INDEX_KEYS: usize = 20_000;

/// The largest JSON a resource of type `rt` may have (`None`: the body limit decides).
pub fn max_resource_bytes(rt: &ResourceType) -> Option<usize> {
    max_bytes_named(rt.as_str())
}

/// [`max_resource_bytes`] by the `resourceType` a body names, before anything else of it is
/// checked (a transaction's resources are bounded before any of its entries is parsed).
fn max_bytes_named(name: &str) -> Option<usize> {
    (!LARGE_TYPES.contains(&name)).then_some(MAX_RESOURCE_BYTES)
}

/// True if the JSON text of `v` is longer than `limit` bytes (stops counting once it is).
fn longer_than(v: &Value, limit: usize) -> bool {
    fn size(v: &Value, budget: &mut isize) {
        if *budget < 0 {
            return;
        }
        match v {
            Value::String(s) => *budget -= isize::try_from(s.len()).unwrap_or(isize::MAX) + 2,
            Value::Array(a) => {
                *budget -= 2;
                for x in a {
                    *budget -= 1;
                    size(x, budget);
                }
            }
            Value::Object(m) => {
                *budget -= 2;
                for (k, x) in m {
                    *budget -= isize::try_from(k.len()).unwrap_or(isize::MAX) + 4;
                    size(x, budget);
                }
            }
            Value::Number(n) => {
                *budget -= isize::try_from(n.to_string().len()).unwrap_or(isize::MAX)
            }
            _ => *budget -= 5,
        }
    }
    let mut budget = isize::try_from(limit).unwrap_or(isize::MAX);
    size(v, &mut budget);
    budget < 0
}

/// Checks the stored current version allows `interaction` too: under query-constrained scopes
/// (an update may not move a resource into the constraint, nor a delete reach outside it) and
/// under the access policy. A resource the request may not touch answers as a missing one.
fn existing_allows(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    interaction: Interaction,
) -> Result<Option<Value>, Error> {
    let constrained = !matches!(ctx.scope_access(rt, interaction)?, Access::Full);
    if !constrained && ctx.guard().is_none() {
        return Ok(None);
    }
    let Some(row) = store.version(rt, id, None)? else {
        return Ok(None);
    };
    // Decided before anything about the stored row shows (an erased patient's resource
    // answers as missing unless the request may see that patient).
    let content = stored_allows(store, ctx, rt, id, &row, policy_action(interaction))?;
    if row.shredded {
        return Err(Error::gone("this patient's data was erased"));
    }
    if constrained
        && let Some(resource) = &content
        && let Err(e) = ctx.scope_allows(rt, interaction, resource)
    {
        return Err(hidden(rt, id, None, e.denied_by.unwrap_or_default()));
    }
    Ok(content)
}

/// Checks the access policy lets the request see `row` (stored for `rt/id`) and do `action`
/// to it (what one may not see one may not change either); returns the content the decision
/// rested on.
///
/// # Errors
/// 404 as for a missing resource when it does not; store and key errors.
fn stored_allows(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    row: &StoredVersion,
    action: Action,
) -> Result<Option<Value>, Error> {
    let content = decision_content(store, ctx, rt, id, row)?;
    for a in [Action::Read, action] {
        ctx.permits(store, a, rt, &row.key_name, content.as_ref())?
            .map_err(|p| hidden(rt, id, None, p.join(",")))?;
    }
    Ok(content)
}

/// The current (deleted) version of a resource, for deciding on what a write would replace.
fn current_row(
    store: &dyn StoreRead,
    rt: &ResourceType,
    id: &ResourceId,
    version: u64,
) -> Result<StoredVersion, Error> {
    store
        .version(rt, id, Some(version))?
        .ok_or_else(|| Error::internal(&"current version vanished"))
}

/// Checks the access policy lets the request write `p` as `interaction` (403: the caller sent
/// the content, so refusing it reveals nothing stored).
fn new_content_allowed(
    store: &dyn StoreRead,
    ctx: &Ctx,
    p: &Prepared,
    interaction: Interaction,
) -> Result<(), Error> {
    if p.allowed == Some(interaction) {
        return Ok(());
    }
    let key = p.compartment.key_name();
    ctx.permits(
        store,
        policy_action(interaction),
        &p.rt,
        &key,
        Some(&p.resource),
    )?
    .map_err(|policies| policy_refusal(interaction).denied_by(policies.join(",")))
}

/// The answer to writing content the access policy does not allow.
fn policy_refusal(interaction: Interaction) -> Error {
    Error::new(
        ErrorKind::Forbidden,
        IssueCode::Forbidden,
        format!(
            "the access policy does not allow this {}: it needs a care relationship with the patient and a treatment purpose",
            if interaction == Interaction::Create {
                "create"
            } else {
                "update"
            }
        ),
    )
}

/// A resource validated, indexed and ready to be sealed.
#[derive(Debug)]
pub struct Prepared {
    rt: ResourceType,
    id: ResourceId,
    resource: Value,
    compartment: Compartment,
    index: Vec<BlindValue>,
    /// The access policy already allowed writing this content (checked before the write
    /// transaction, off the single writer thread).
    allowed: Option<Interaction>,
}

impl Prepared {
    /// The id the resource will be stored under.
    pub fn id(&self) -> &ResourceId {
        &self.id
    }

    /// The type of the resource.
    pub fn resource_type(&self) -> &ResourceType {
        &self.rt
    }

    /// The resource as it will be stored (without its `meta.versionId` and `lastUpdated`).
    pub fn resource(&self) -> &Value {
        &self.resource
    }

    /// How many blind-index entries it adds.
    pub fn index_len(&self) -> usize {
        self.index.len()
    }
}

/// Checks a type from a URL or Bundle: 404 for a name that is no R4 resource type and for a
/// type this node does not serve.
///
/// # Errors
/// 404 as above.
pub fn served_type(fhir: &Fhir, rt: &ResourceType) -> Result<(), Error> {
    let name = rt.as_str();
    if fhir.type_info(name).is_some() {
        Ok(())
    } else if fhir.is_r4_type(name) {
        Err(Error::new(
            ErrorKind::NotFound,
            IssueCode::NotSupported,
            format!("resource type {name} is not served by this node (see /fhir/metadata)"),
        ))
    } else {
        Err(Error::not_found("unknown resource type"))
    }
}

/// Parses a logical id from a URL.
///
/// # Errors
/// 400 for an invalid id.
pub fn parse_id(text: &str) -> Result<ResourceId, Error> {
    ResourceId::new(text).map_err(|e| Error::bad_request(e.to_string()))
}

/// Validates and indexes a resource for writing under `id`.
///
/// # Errors
/// 400 for a wrong `resourceType`, an `id` that differs from `id` (when `id_must_match`), or
/// schema violations (listed with their element paths).
pub fn prepare(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: ResourceId,
    resource: Value,
    id_must_match: bool,
) -> Result<Prepared, Error> {
    prepare_in(Some(store), ctx, rt, id, resource, id_must_match)
}

/// [`prepare`] without the store, off the writer (an import's entries, prepared while the
/// previous file commits): the resource back unprepared (`Err`) when what it is depends on
/// stored resources — a patient named by identifier or by a contained Patient, a Binary sealed
/// as another resource — and must be prepared inside the write transaction.
///
/// # Errors
/// As [`prepare`].
pub fn prepare_detached(
    ctx: &Ctx,
    rt: &ResourceType,
    id: ResourceId,
    resource: Value,
    id_must_match: bool,
) -> Result<Result<Prepared, Value>, Error> {
    if ctx.fhir.sealing_proxy(rt.as_str(), &resource).is_some()
        || !ctx
            .fhir
            .unresolved_patient_links(rt.as_str(), &resource)
            .is_empty()
    {
        return Ok(Err(resource));
    }
    prepare_in(None, ctx, rt, id, resource, id_must_match).map(Ok)
}

fn prepare_in(
    store: Option<&dyn StoreRead>,
    ctx: &Ctx,
    rt: &ResourceType,
    id: ResourceId,
    mut resource: Value,
    id_must_match: bool,
) -> Result<Prepared, Error> {
    let Value::Object(map) = &mut resource else {
        return Err(Error::new(
            ErrorKind::Invalid,
            IssueCode::Structure,
            "the body must be a JSON object (a FHIR resource)",
        ));
    };
    match map.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == rt.as_str() => {}
        Some(_) => {
            return Err(Error::bad_request(format!(
                "resourceType does not match the URL (expected {rt})"
            )));
        }
        None => {
            return Err(Error::new(
                ErrorKind::Invalid,
                IssueCode::Required,
                "resourceType is missing",
            ));
        }
    }
    if id_must_match {
        match map.get("id") {
            Some(Value::String(body_id)) if body_id == id.as_str() => {}
            Some(_) => {
                return Err(Error::bad_request(
                    "the resource id does not match the id in the URL",
                ));
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    IssueCode::Required,
                    "the resource must carry the id given in the URL",
                ));
            }
        }
    }
    map.insert("id".into(), Value::String(id.to_string()));
    if let Some(Value::Object(meta)) = map.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            map.remove("meta");
        }
    }
    if let Some(limit) = max_resource_bytes(rt)
        && longer_than(&resource, limit)
    {
        return Err(Error::new(
            ErrorKind::TooLarge,
            IssueCode::TooLong,
            format!("a {rt} may be at most {limit} bytes of JSON"),
        ));
    }
    ctx.fhir
        .validate(rt.as_str(), &resource)
        .map_err(|issues| {
            let mut e =
                Error::bad_request("the resource does not conform to the FHIR R4 definitions");
            e.details = issues.into_iter().map(|i| (i.path, i.message)).collect();
            e
        })?;
    if rt == "Consent" {
        // A consent the evaluator cannot apply would be stored and silently ignored: refused,
        // so the patient (or their proxy) can say it in a form that takes effect.
        let is_type = |t: &str| ctx.fhir.r4_type_named(t).is_some();
        medvault_policy::consent::check(&resource, &is_type)
            .map_err(|why| Error::new(ErrorKind::Unprocessable, IssueCode::Processing, why))?;
    }
    if *rt == crate::subscriptions::SUBSCRIPTION {
        // Whatever path writes it (create, update, patch, a Bundle): a channel the notifier
        // would not use, or an endpoint it must not reach, is refused.
        crate::subscriptions::check(ctx, &resource)?;
    }
    let interaction = if id_must_match {
        Interaction::Update
    } else {
        Interaction::Create
    };
    resolve_patient_links(store, ctx, rt, &mut resource, interaction)?;
    ctx.scope_allows(rt, interaction, &resource)?;
    if *rt == "Binary"
        && resource.get("securityContext").is_some()
        && ctx.fhir.sealing_proxy(rt.as_str(), &resource).is_none()
    {
        return Err(Error::new(
            ErrorKind::Unprocessable,
            IssueCode::Processing,
            "Binary.securityContext must be a relative reference (Type/id) to a resource stored on this node",
        ));
    }
    let compartment = match ctx.fhir.sealing_proxy(rt.as_str(), &resource) {
        Some(proxy) => proxy_compartment(store.ok_or_else(needs_store)?, ctx, proxy, interaction)?,
        None => ctx.fhir.compartment_of(rt.as_str(), &id, &resource),
    };
    let mut index = Vec::new();
    for (code, keys) in plan_index(&ctx.fhir, rt, &resource)? {
        let blinded = ctx.keys.blind(rt, code, &keys).map_err(key_error)?;
        index.extend(blinded);
    }
    Ok(Prepared {
        rt: rt.clone(),
        id,
        resource,
        compartment,
        index,
        allowed: None,
    })
}

/// A search parameter's code and the plaintext index keys a resource offers it.
type PlannedIndex<'f> = (&'f str, Vec<Vec<u8>>);

/// The plaintext blind-index keys of `resource` by search parameter, within the caps: they keep
/// one request from occupying the writer and the disk (every index entry is a row, and an
/// HMAC, written in the single writer's transaction).
///
/// # Errors
/// 422 `too-costly` past [`MAX_INDEX_KEYS_PER_PARAM`] or [`MAX_INDEX_KEYS`].
fn plan_index<'f>(
    fhir: &'f Fhir,
    rt: &ResourceType,
    resource: &Value,
) -> Result<Vec<PlannedIndex<'f>>, Error> {
    let Some(info) = fhir.type_info(rt.as_str()) else {
        return Ok(Vec::new());
    };
    let too_many = |what: String| {
        Error::new(
            ErrorKind::Unprocessable,
            IssueCode::TooCostly,
            format!(
                "{what}; this node indexes at most {MAX_INDEX_KEYS_PER_PARAM} entries per search parameter and {MAX_INDEX_KEYS} per resource"
            ),
        )
    };
    let mut planned = Vec::new();
    let mut total = 0usize;
    for (code, param) in &info.params {
        let keys = param.index_keys(resource);
        if keys.is_empty() {
            continue;
        }
        if keys.len() > MAX_INDEX_KEYS_PER_PARAM {
            return Err(too_many(format!(
                "the resource has too many values for the search parameter {code}"
            )));
        }
        total += keys.len();
        if total > MAX_INDEX_KEYS {
            return Err(too_many(
                "the resource has too many searchable values".into(),
            ));
        }
        planned.push((code.as_str(), keys));
    }
    Ok(planned)
}

/// Most blind-index entries one transaction Bundle may add in all.
pub const MAX_BUNDLE_INDEX_KEYS: usize = 100_000;

/// Resolves the patient references of `resource` that are not literal (an identifier, as lab
/// feeds send, or a contained Patient) to the one stored Patient they name, writing
/// `reference: "Patient/<id>"` beside what was sent; so the record is sealed in that patient's
/// compartment and decided as their data. A reference that names no patient, or several, is
/// refused: it would otherwise fall outside every compartment.
///
/// # Errors
/// 422 when a reference cannot be resolved — or, for a request the access policy governs
/// that may not see every patient, the same 403 as writing for a patient it does not care for
/// (so the answer does not tell whether an identifier exists on this node).
fn resolve_patient_links(
    store: Option<&dyn StoreRead>,
    ctx: &Ctx,
    rt: &ResourceType,
    resource: &mut Value,
    interaction: Interaction,
) -> Result<(), Error> {
    use medvault_fhir::PatientLink;
    let links = ctx.fhir.unresolved_patient_links(rt.as_str(), resource);
    if links.is_empty() {
        return Ok(());
    }
    let store = store.ok_or_else(needs_store)?;
    let inner = ctx.as_node_work();
    let find =
        |system: &Option<String>, value: &Option<String>| -> Result<Vec<ResourceId>, Error> {
            match (system, value) {
                (Some(system), Some(value)) if !system.is_empty() && !value.is_empty() => {
                    let token = format!("{}|{}", escape_token(system), escape_token(value));
                    let by_identifier = [("identifier".into(), token)];
                    search::matching_ids(store, &inner, &ResourceType::PATIENT, &by_identifier, 2)
                }
                _ => Ok(Vec::new()),
            }
        };
    let mut rewrites: Vec<(Value, String)> = Vec::new();
    for link in links {
        let found = match &link {
            PatientLink::Identifier { system, value, .. } => find(system, value)?,
            PatientLink::Contained { identifiers, .. } => {
                let mut all = Vec::new();
                for (system, value) in identifiers {
                    all.extend(find(system, value)?);
                }
                all.sort();
                all.dedup();
                all
            }
            PatientLink::Unresolvable => Vec::new(),
        };
        let node = match link {
            PatientLink::Identifier { node, .. } | PatientLink::Contained { node, .. } => node,
            PatientLink::Unresolvable => Value::Null,
        };
        match found.as_slice() {
            [one] if !node.is_null() => rewrites.push((node, format!("Patient/{one}"))),
            _ => return Err(unresolved_patient(ctx, interaction)),
        }
    }
    for (node, target) in rewrites {
        rewrite_reference(resource, &node, &target);
    }
    Ok(())
}

/// What [`prepare_detached`] answers before it would need the store (so never reached).
fn needs_store() -> Error {
    Error::internal(&"a resource that depends on stored ones was prepared without the store")
}

/// The compartment of the stored resource `(type, id)` whose key another one shares (a Binary's
/// `securityContext`): its current version's. A writer other than the admin, a service or node
/// work must be able to read it, and one it may not read answers exactly as a missing one (no
/// existence oracle); one that names nothing stored is refused, so a Binary never falls to the
/// node's key by a typo.
fn proxy_compartment(
    store: &dyn StoreRead,
    ctx: &Ctx,
    (rt, id): (&str, &str),
    interaction: Interaction,
) -> Result<Compartment, Error> {
    let sees_all = sees_all(ctx);
    let key_name = match (ResourceType::new(rt), ResourceId::new(id)) {
        (Ok(rt), Ok(id)) if sees_all => store
            .current(&rt, &id)?
            .filter(|m| !m.deleted)
            .map(|m| m.key_name),
        (Ok(rt), Ok(id)) => crate::records::read(store, ctx, &rt, &id, None)
            .ok()
            .and_then(|o| o.key_name),
        _ => None,
    };
    match key_name {
        Some(k) => Compartment::from_key_name(&k).map_err(|e| Error::internal(&e)),
        None if sees_all => Err(Error::new(
            ErrorKind::Unprocessable,
            IssueCode::Processing,
            "Binary.securityContext names no resource stored on this node",
        )),
        None => Err(unresolved_patient(ctx, interaction)),
    }
}

/// Escapes `|`, `,` and `$` in a token search value.
fn escape_token(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(',', "\\,")
        .replace('$', "\\$")
}

/// True for requests that may learn what is stored whatever its compartment (the admin, a
/// service, node work): they get the precise refusal where others get the policy's.
fn sees_all(ctx: &Ctx) -> bool {
    ctx.guard().is_none_or(|g| {
        matches!(
            g.role(),
            medvault_core::Role::Admin | medvault_core::Role::Service
        )
    })
}

fn unresolved_patient(ctx: &Ctx, interaction: Interaction) -> Error {
    if sees_all(ctx) {
        Error::new(
            ErrorKind::Unprocessable,
            IssueCode::Processing,
            "the record's patient must be a stored Patient: a reference by identifier (system and value) or to a contained Patient must match exactly one Patient on this node",
        )
    } else {
        policy_refusal(interaction).denied_by("default-deny")
    }
}

/// Sets `reference` to `target` in every Reference element of `v` equal to `node`.
fn rewrite_reference(v: &mut Value, node: &Value, target: &str) {
    if v == node
        && let Value::Object(map) = v
    {
        map.insert("reference".into(), Value::String(target.to_owned()));
        return;
    }
    match v {
        Value::Object(map) => map
            .values_mut()
            .for_each(|x| rewrite_reference(x, node, target)),
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| rewrite_reference(x, node, target)),
        _ => {}
    }
}

/// Asks the access policy, before the write transaction, whether the request may write `p`'s
/// content as `interaction`, so the patient's facts are looked up on a reader rather than on the
/// writer thread. (The stored version an update replaces is still checked inside the
/// transaction.)
///
/// # Errors
/// 403 when the policy does not allow it; store and key errors.
pub fn authorize_write(
    store: &dyn StoreRead,
    ctx: &Ctx,
    p: &mut Prepared,
    interaction: Interaction,
) -> Result<(), Error> {
    new_content_allowed(store, ctx, p, interaction)?;
    p.allowed = Some(interaction);
    Ok(())
}

/// Seals and stores `p` as `version`; returns the resource as stored (with `meta`).
fn commit(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    p: Prepared,
    version: u64,
    now: i64,
) -> Result<Value, Error> {
    let mut resource = p.resource;
    if let Value::Object(map) = &mut resource {
        let meta = map
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(meta) = meta {
            meta.insert("versionId".into(), Value::String(version.to_string()));
            meta.insert("lastUpdated".into(), Value::String(instant(now)));
        }
    }
    if ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
        // The client was already answered 503: the transaction rolls back.
        return Err(timed_out());
    }
    let bytes =
        zeroize::Zeroizing::new(serde_json::to_vec(&resource).map_err(|e| Error::internal(&e))?);
    let key_name = KeyName::from(&p.compartment);
    let key = ctx.keys.for_write(tx, &key_name).map_err(key_error)?;
    let aad = RecordAad {
        tenant: ctx.keys.tenant(),
        resource_type: p.rt.as_str(),
        id: p.id.as_str(),
        version,
    };
    let sealed = key.seal(&aad, &bytes).map_err(|e| Error::internal(&e))?;
    let mut v = StoredVersion {
        resource_type: p.rt.as_str().to_owned(),
        id: p.id.to_string(),
        version,
        last_updated_micros: now,
        key_name: key_name.into_string(),
        key_version: key.version(),
        body: Some(sealed),
        shredded: false,
        salt: None,
        leaf: None,
        expunged: false,
    };
    let leaf = ctx.ledger.record_leaf(&mut v)?;
    tx.put_version(&v, &p.index, &leaf)?;
    if let Some(g) = ctx.guard() {
        g.wrote(&p.rt);
    }
    Ok(resource)
}

/// Create, optionally conditional on `If-None-Exist` (a search query string).
///
/// # Errors
/// 412 when the condition matches more than one resource; store and key errors.
pub fn create(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    p: Prepared,
    if_none_exist: Option<&str>,
) -> Result<Outcome, Error> {
    if let Some(query) = if_none_exist {
        // The condition is a search, and its answer (created, existing, several) tells whether
        // matching resources exist: under scopes it needs an unconstrained search permission.
        if !matches!(ctx.scope_access(&p.rt, Interaction::Search)?, Access::Full) {
            return Err(out_of_scope(&format!(
                "a conditional create of {} without an unconstrained search scope",
                p.rt
            )));
        }
        let params = search::parse_query_string(query);
        let hits = search::matching_ids(&*tx, ctx, &p.rt, &params, 2)?;
        match hits.as_slice() {
            [] => {}
            [one] => {
                let row = tx
                    .version(&p.rt, one, None)?
                    .ok_or_else(|| Error::internal(&"matched row vanished"))?;
                let resource = open(&*tx, ctx, &row)?;
                ctx.scope_allows(&p.rt, Interaction::Read, &resource)?;
                return Ok(Outcome::of_version(
                    StatusCode::OK,
                    &p.rt,
                    one,
                    row.version,
                    row.last_updated_micros,
                    Some(resource),
                )
                .with_key(row.key_name));
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::PreconditionFailed,
                    IssueCode::Duplicate,
                    "If-None-Exist matches more than one resource",
                ));
            }
        }
    }
    new_content_allowed(&*tx, ctx, &p, Interaction::Create)?;
    if tx.current(&p.rt, &p.id)?.is_some() {
        return Err(Error::new(
            ErrorKind::Conflict,
            IssueCode::Duplicate,
            "a resource with this id already exists",
        ));
    }
    consents_within_bound(&*tx, ctx, &p)?;
    let now = ctx.clock.now_micros();
    let (rt, id, key) = (p.rt.clone(), p.id.clone(), p.compartment.key_name());
    let stored = commit(tx, ctx, p, 1, now)?;
    Ok(Outcome::of_version(StatusCode::CREATED, &rt, &id, 1, now, Some(stored)).with_key(key))
}

/// Most Consent resources one patient may hold: every access decision about the patient reads
/// them all, so a flood of them (a patient's own, or an app's with `patient/Consent.c`) would
/// slow every decision and, past the search bound, refuse them.
pub const MAX_CONSENTS_PER_PATIENT: u64 = 500;

/// Refuses a new Consent for a patient who already holds [`MAX_CONSENTS_PER_PATIENT`].
fn consents_within_bound(store: &dyn StoreRead, ctx: &Ctx, p: &Prepared) -> Result<(), Error> {
    let Compartment::Patient(patient) = &p.compartment else {
        return Ok(());
    };
    if p.rt != "Consent" {
        return Ok(());
    }
    let params = [("patient".to_owned(), format!("Patient/{patient}"))];
    let held = search::matching_ids(
        store,
        &ctx.as_node_work(),
        &p.rt,
        &params,
        MAX_CONSENTS_PER_PATIENT + 1,
    )?
    .len() as u64;
    if held >= MAX_CONSENTS_PER_PATIENT {
        return Err(Error::new(
            ErrorKind::Unprocessable,
            IssueCode::Processing,
            format!(
                "this patient already holds {MAX_CONSENTS_PER_PATIENT} Consent resources, the most one may (withdrawn ones included): change one of them instead, or ask the organisation to delete withdrawn ones"
            ),
        ));
    }
    Ok(())
}

/// Update (or create with a client-chosen id), with an optional `If-Match` version.
///
/// # Errors
/// 412 when `if_match` is not the current version.
pub fn update(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    p: Prepared,
    if_match: Option<u64>,
) -> Result<Outcome, Error> {
    let current = tx.current(&p.rt, &p.id)?;
    new_content_allowed(&*tx, ctx, &p, Interaction::Update)?;
    // A new Consent for the patient: created, brought back from deletion, or moved to them
    // from another patient.
    if current
        .as_ref()
        .is_none_or(|c| c.deleted || c.key_name != p.compartment.key_name().as_str())
    {
        consents_within_bound(&*tx, ctx, &p)?;
    }
    if current.as_ref().is_some_and(|c| !c.deleted) {
        let prior = existing_allows(&*tx, ctx, &p.rt, &p.id, Interaction::Update)?;
        if let (Some(prior), Some(g)) = (&prior, ctx.guard()) {
            crate::authz::check_label_removal(g.role(), prior, &p.resource)?;
        }
    } else if let Some(c) = current.as_ref().filter(|_| ctx.guard().is_some()) {
        // Re-creating a deleted resource continues its history: the request must be allowed
        // what it replaces, as for a live one.
        let row = current_row(&*tx, &p.rt, &p.id, c.version)?;
        stored_allows(&*tx, ctx, &p.rt, &p.id, &row, Action::Update)?;
    }
    if current.as_ref().is_some_and(|c| c.deleted)
        && !matches!(ctx.scope_access(&p.rt, Interaction::Update)?, Access::Full)
    {
        // Re-creating a deleted resource would append to a history whose earlier versions
        // may lie outside the scopes' constraints.
        return Err(out_of_scope(&format!(
            "re-creating a deleted {} under query-constrained scopes",
            p.rt
        )));
    }
    if let Some(expected) = if_match {
        let live = current.as_ref().filter(|c| !c.deleted).map(|c| c.version);
        if live.is_none() {
            // Nothing live to match: answered as a hidden resource is, so If-Match cannot
            // tell the two apart.
            return Err(not_known(&p.rt, &p.id, None));
        }
        if live != Some(expected) {
            return Err(stale_if_match());
        }
    }
    let (version, status) = match &current {
        Some(c) if !c.deleted => (c.version + 1, StatusCode::OK),
        Some(c) => (c.version + 1, StatusCode::CREATED),
        None => (1, StatusCode::CREATED),
    };
    let now = ctx.clock.now_micros();
    let (rt, id, key) = (p.rt.clone(), p.id.clone(), KeyName::from(&p.compartment));
    let moved = current.as_ref().is_some_and(|c| c.key_name != key.as_str());
    let stored = commit(tx, ctx, p, version, now)?;
    if moved {
        reseal_history(tx, ctx, &rt, &id, version, &key, now)?;
    }
    Ok(
        Outcome::of_version(status, &rt, &id, version, now, Some(stored))
            .with_key(key.into_string()),
    )
}

/// After a resource moved to another compartment (its patient was corrected), re-seals its
/// earlier versions under the new compartment's key, so they belong to the patient the record
/// now belongs to: erasing that patient shreds the whole history, and the first patient's key
/// no longer opens any of it. Each re-sealed version gets a new records log leaf; its original
/// leaf stays accounted for by the amendment (see [`Amendment`]). Versions whose key was
/// already destroyed are left as they are (nothing is left to move).
fn reseal_history(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    newest: u64,
    key_name: &KeyName,
    now: i64,
) -> Result<(), Error> {
    if newest > MAX_RESEALED + 1 {
        return Err(Error::new(
            ErrorKind::Unprocessable,
            IssueCode::TooCostly,
            format!(
                "a resource with more than {MAX_RESEALED} earlier versions cannot move to another patient's compartment: create a new resource for that patient and delete this one"
            ),
        ));
    }
    let key = ctx.keys.for_write(tx, key_name).map_err(key_error)?;
    for v in 1..newest {
        if ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(timed_out());
        }
        let Some(row) = tx.version(rt, id, Some(v))? else {
            continue;
        };
        if row.key_name == key_name.as_str() || row.shredded {
            continue;
        }
        let body = match &row.body {
            Some(_) if !row.expunged => {
                let plain = open(&*tx, ctx, &row)?;
                let bytes = zeroize::Zeroizing::new(
                    serde_json::to_vec(&plain).map_err(|e| Error::internal(&e))?,
                );
                let aad = RecordAad {
                    tenant: ctx.keys.tenant(),
                    resource_type: rt.as_str(),
                    id: id.as_str(),
                    version: v,
                };
                Some(key.seal(&aad, &bytes).map_err(|e| Error::internal(&e))?)
            }
            _ => None,
        };
        let amended = StoredVersion {
            key_name: key_name.as_str().to_owned(),
            key_version: if body.is_some() { key.version() } else { 0 },
            body,
            salt: None,
            leaf: None,
            ..row.clone()
        };
        amend(tx, ctx, &row, amended, AmendmentKind::Reseal, now)?;
    }
    Ok(())
}

/// Most earlier versions a move to another compartment re-seals (on the writer, in the
/// update's own transaction).
pub const MAX_RESEALED: u64 = 1_000;

/// Writes `amended` over the stored `row`, keeping what `row` was committed as.
fn amend(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    row: &StoredVersion,
    mut amended: StoredVersion,
    kind: AmendmentKind,
    now: i64,
) -> Result<u64, Error> {
    let before = Amendment::of(row, kind, now)
        .ok_or_else(|| Error::internal(&"a stored version has no ledger leaf"))?;
    let entry = ctx.ledger.record_leaf(&mut amended)?;
    Ok(tx.amend_version(&before, &amended, &entry)?)
}

/// Expunges one superseded version of a resource (an admin's correction of data that should
/// never have been stored, e.g. another patient's result filed here): its sealed body is
/// removed; its ledger commitment stays, and a new leaf records the expunged state. The
/// current version cannot be expunged (update or delete the resource first).
///
/// # Errors
/// 404 for an unknown version; 409 for the current version; 410 for an erased patient's.
pub fn expunge(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    version: u64,
) -> Result<Outcome, Error> {
    let Some(current) = tx.current(rt, id)? else {
        return Err(not_known(rt, id, Some(version)));
    };
    let Some(row) = tx.version(rt, id, Some(version))? else {
        return Err(not_known(rt, id, Some(version)));
    };
    if version == current.version {
        return Err(Error::conflict(
            "the current version cannot be expunged: update or delete the resource first",
        ));
    }
    if row.shredded {
        return Err(Error::gone("this patient's data was erased"));
    }
    if row.body.is_none() && !row.expunged {
        return Err(Error::conflict("a deletion has no content to expunge"));
    }
    // A delete marker is decided on the version it deleted: that version must keep its
    // content, or the deletion of hidden (e.g. HIV-labelled) data would stop being hidden.
    if tx
        .version(rt, id, Some(version + 1))?
        .is_some_and(|next| next.body.is_none() && !next.expunged)
    {
        return Err(Error::conflict(
            "the version a deletion removed cannot be expunged (access to the deletion is decided on it)",
        ));
    }
    if row.expunged {
        return Ok(Outcome::informational("already expunged"));
    }
    let now = ctx.clock.now_micros();
    let amended = StoredVersion {
        body: None,
        key_version: 0,
        expunged: true,
        salt: None,
        leaf: None,
        ..row.clone()
    };
    amend(tx, ctx, &row, amended, AmendmentKind::Expunge, now)?;
    let mut out = Outcome::informational("expunged");
    out.location = Some(format!("{rt}/{id}/_history/{version}"));
    out.version = Some(version);
    out.key_name = Some(row.key_name);
    out.last_modified = Some(now);
    Ok(out)
}

/// 412 for an `If-Match` (or a Bundle entry's `ifMatch`) that is not the current version.
pub(crate) fn stale_if_match() -> Error {
    Error::new(
        ErrorKind::PreconditionFailed,
        IssueCode::Conflict,
        "If-Match does not name the current version; read the resource again and retry",
    )
}

/// Delete: appends a delete marker. Deleting a deleted resource succeeds and changes nothing
/// (with `if_match`, only a live resource at that version is deleted).
///
/// # Errors
/// 404 when the resource never existed (or, with `if_match`, is deleted); 412 when `if_match`
/// is not the current version.
pub fn delete(
    tx: &mut dyn StoreTx,
    ctx: &Ctx,
    rt: &ResourceType,
    id: &ResourceId,
    if_match: Option<u64>,
) -> Result<Outcome, Error> {
    ctx.scope_access(rt, Interaction::Delete)?;
    let Some(current) = tx.current(rt, id)? else {
        return Err(not_known(rt, id, None));
    };
    if current.deleted {
        let row = current_row(&*tx, rt, id, current.version)?;
        stored_allows(&*tx, ctx, rt, id, &row, Action::Delete)?;
    } else {
        existing_allows(&*tx, ctx, rt, id, Interaction::Delete)?;
    }
    match if_match {
        Some(_) if current.deleted => return Err(not_known(rt, id, None)),
        Some(v) if v != current.version => {
            return Err(stale_if_match());
        }
        _ => {}
    }
    if current.deleted {
        return Ok(Outcome::informational("already deleted"));
    }
    let now = ctx.clock.now_micros();
    let version = current.version + 1;
    let mut v = StoredVersion {
        resource_type: rt.as_str().to_owned(),
        id: id.to_string(),
        version,
        last_updated_micros: now,
        key_name: current.key_name.clone(),
        key_version: 0,
        body: None,
        shredded: false,
        salt: None,
        leaf: None,
        expunged: false,
    };
    let leaf = ctx.ledger.record_leaf(&mut v)?;
    tx.put_version(&v, &[], &leaf)?;
    if let Some(g) = ctx.guard() {
        g.wrote(rt);
    }
    let mut out =
        Outcome::of_version(StatusCode::OK, rt, id, version, now, None).with_key(current.key_name);
    out.resource = Some(crate::error::operation_outcome(
        "information",
        IssueCode::Informational,
        "deleted",
        &[],
    ));
    Ok(out)
}

/// History of one resource or of a whole type, as a `history` Bundle.
///
/// Every version is decided on its own (scopes' query constraints and the access policy): the
/// versions the request may not see are left out, and the total and paging count only the
/// rest, so they reveal nothing about them. A resource none of whose versions may be seen
/// answers as a missing one.
///
/// # Errors
/// 404 for an unknown (or hidden) resource, 410 when the resource's patient was erased, 400
/// `too-costly` past [`search::MAX_CANDIDATES`] versions.
pub fn history(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    id: Option<&ResourceId>,
    paging: search::Paging,
    base: &str,
) -> Result<Value, Error> {
    let interaction = match id {
        Some(_) => Interaction::Read,
        None => Interaction::Search,
    };
    ctx.scope_access(rt, interaction)?;
    let page = store.history(rt, id, 0, search::MAX_CANDIDATES + 1)?;
    if page.total > search::MAX_CANDIDATES {
        return Err(search::too_costly());
    }
    let mut entries = Vec::new();
    let mut erased = false;
    // What the request may see of each resource as it is now bounds its history.
    let mut now_visible: std::collections::HashMap<ResourceId, Verdict> =
        std::collections::HashMap::new();
    for (i, row) in page.rows.iter().enumerate() {
        if i % 256 == 255 && ctx.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            return Err(timed_out());
        }
        if !now_visible.contains_key(row.id.as_str()) {
            let id = stored_id(row)?;
            let v = current_verdict(store, ctx, rt, &id, interaction)?;
            now_visible.insert(id, v);
        }
        let Some((row_id, verdict)) = now_visible.get_key_value(row.id.as_str()) else {
            return Err(Error::internal(&"a history row's verdict vanished"));
        };
        match verdict {
            Verdict::Visible => {}
            Verdict::Hidden(why) => {
                if let Some(g) = ctx.guard() {
                    g.refused_by(why);
                    g.withheld();
                }
                continue;
            }
            Verdict::Erased => {
                erased = true;
                continue;
            }
        }
        if row.shredded {
            erased |= ctx
                .permits(store, Action::Read, rt, &row.key_name, None)?
                .is_ok();
            continue;
        }
        let content = decision_content(store, ctx, rt, row_id, row)?;
        if !ctx.may_see(store, interaction, rt, &row.key_name, content.as_ref())? {
            continue;
        }
        let resource = content.filter(|_| row.body.is_some());
        let full_url = format!("{base}/{}/{}", row.resource_type, row.id);
        let (method, status) = match (&row.body, row.version) {
            // Expunged: the interaction is still shown; its content is gone.
            (None, 1) if row.expunged => ("POST", "410"),
            (None, _) if row.expunged => ("PUT", "410"),
            (None, _) => ("DELETE", "204"),
            (Some(_), 1) => ("POST", "201"),
            (Some(_), _) => ("PUT", "200"),
        };
        let mut entry = json!({
            "fullUrl": full_url,
            "request": {"method": method, "url": if method == "POST" { row.resource_type.clone() } else { format!("{}/{}", row.resource_type, row.id) }},
            "response": {"status": status, "etag": format!("W/\"{}\"", row.version), "lastModified": instant(row.last_updated_micros)},
        });
        if let Some(r) = resource {
            entry["resource"] = r;
        }
        entries.push(entry);
    }
    if let Some(id) = id
        && entries.is_empty()
    {
        return Err(if erased {
            Error::gone("this patient's data was erased")
        } else {
            let denied = ctx
                .guard()
                .map(|g| g.denied_by().join(","))
                .filter(|d| !d.is_empty() && page.total > 0);
            match denied {
                Some(d) => hidden(rt, id, None, d),
                None => not_known(rt, id, None),
            }
        });
    }
    let total = entries.len() as u64;
    let entries = entries
        .into_iter()
        .skip(usize::try_from(paging.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(paging.count).unwrap_or(usize::MAX))
        .collect();
    let self_path = match id {
        Some(id) => format!("{base}/{rt}/{id}/_history"),
        None => format!("{base}/{rt}/_history"),
    };
    Ok(search::bundle(
        "history",
        entries,
        total,
        &self_path,
        &[],
        paging,
    ))
}

/// Checks, before a transaction (a Bundle, an imported file) takes the writer, that every
/// resource is within [`MAX_RESOURCE_BYTES`], and the [`LARGE_TYPES`] within `large_bytes` when
/// given (an import's; through the API the HTTP body limit bounds them). The index caps follow
/// as the entries are prepared: per resource, and in all with
/// `bundle::check_index_total`. The error comes with the position of the resource at fault.
///
/// # Errors
/// 413 for an oversized resource.
pub fn check_sizes(resources: &[&Value], large_bytes: Option<usize>) -> Result<(), (usize, Error)> {
    for (i, r) in resources.iter().enumerate() {
        let Some(rt) = r.get("resourceType").and_then(Value::as_str) else {
            continue;
        };
        let Some(limit) = max_bytes_named(rt).or(large_bytes) else {
            continue;
        };
        if longer_than(r, limit) {
            return Err((
                i,
                Error::new(
                    ErrorKind::TooLarge,
                    IssueCode::TooLong,
                    format!("a {rt} may be at most {limit} bytes of JSON"),
                ),
            ));
        }
    }
    Ok(())
}

/// How many blind-index entries `resource` adds when written (none for a type the node does
/// not serve).
///
/// # Errors
/// 422 `too-costly` past the per-resource index caps.
pub fn index_load(ctx: &Ctx, resource: &Value) -> Result<usize, Error> {
    let Some(rt) = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|rt| ctx.fhir.served(rt))
    else {
        return Ok(0);
    };
    Ok(plan_index(&ctx.fhir, rt, resource)?
        .iter()
        .map(|(_, k)| k.len())
        .sum())
}
