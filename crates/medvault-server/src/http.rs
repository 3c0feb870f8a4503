//! HTTP glue: extract, dispatch to the FHIR operations, shape responses.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use medvault_auth::scopes::{Access, Interaction};
use medvault_core::{ResourceId, ResourceType, Role};
use medvault_store::{Store, StoreTx, write_with};
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, Error, ErrorKind, IssueCode};
use crate::respond::{AuditExtra, AuditPatient, blocking, fhir_json};
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_node::ctx::AccessPolicy;
use medvault_node::identity::Authenticated;
use medvault_node::identity::api_tokens::RefusedCredential;
use medvault_node::identity::gates::{self, Refusal};
use medvault_node::ops::{self, Ctx, Outcome};
use medvault_node::route::{self, Target};
use medvault_node::{bundle, capability, change, clock, operations, search};

/// The access log's FHIR view (`medvault_node::audit_view`), not a stored type.
const AUDIT_EVENT: ResourceType = ResourceType::from_static("AuditEvent");
const CONSENT: ResourceType = ResourceType::from_static("Consent");

/// A request body, with size-limit and read failures turned into `OperationOutcome`s.
pub(crate) struct Body(Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(Self(b)),
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                ErrorKind::TooLarge,
                IssueCode::TooLong,
                format!(
                    "the request body is larger than {} bytes",
                    state.config.max_body_bytes
                ),
            )),
            Err(_) => Err(ApiError::bad_request("the request body could not be read")),
        }
    }
}

/// Like [`blocking`] for CPU-bound reads (search, history): at most a few run at once, so they
/// do not crowd the cores and each reader connection's page cache stays warm. Writes are not
/// limited: they mostly wait for the group commit, which gets better the more of them queue.
async fn blocking_read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    // The permit moves into the blocking task, so a client that disconnects does not free it
    // while the work it started is still running.
    let permit = std::sync::Arc::clone(&state.read_permits)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    blocking(move || {
        let _permit = permit;
        f()
    })
    .await
}

/// The public FHIR base URL of this node (configured, or from the request's `Host`).
pub(crate) fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    base_url(state, headers)
}

fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(b) = &state.config.base_url {
        return b.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

fn prefer<'h>(headers: &'h HeaderMap, key: &str) -> Option<&'h str> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().trim_matches('"'))
}

/// What a write answers with (`Prefer: return=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    /// The resource (the default).
    Representation,
    /// Headers only.
    Minimal,
    /// An `OperationOutcome` saying what was done.
    Outcome,
}

fn return_preference(headers: &HeaderMap) -> Return {
    match prefer(headers, "return") {
        Some("minimal") => Return::Minimal,
        Some(v) if v.eq_ignore_ascii_case("OperationOutcome") => Return::Outcome,
        _ => Return::Representation,
    }
}

/// `If-Match`, as a version.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_MATCH)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("If-Match must be ASCII"))
                .and_then(|v| route::parse_etag(v).map_err(ApiError::from))
        })
        .transpose()
}

/// 406 unless the response may be FHIR JSON: `_format` (`json`, `application/fhir+json`,
/// `application/json`) or an `Accept` header that allows JSON. The node writes no XML.
fn check_format(headers: &HeaderMap, params: &[(String, String)]) -> Result<(), ApiError> {
    let json_ok = |t: &str| {
        let t = t
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            t.as_str(),
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir"
        ) || t == "*/*"
            || t == "application/*"
    };
    let refuse = || {
        ApiError::new(
            ErrorKind::NotAcceptable,
            IssueCode::NotSupported,
            "this node answers in FHIR JSON only (_format=json, Accept: application/fhir+json)",
        )
    };
    if let Some((_, f)) = params.iter().find(|(k, _)| k == "_format")
        && !json_ok(f)
    {
        return Err(refuse());
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
        && !accept.trim().is_empty()
        && !accept.split(',').any(json_ok)
        && accept.contains("xml")
    {
        return Err(refuse());
    }
    Ok(())
}

/// The kind of patch a `PATCH` body is, from its `Content-Type`.
fn patch_kind(headers: &HeaderMap) -> Result<medvault_fhir::patch::PatchKind, ApiError> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(medvault_fhir::patch::kind_from_content_type)
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnsupportedMediaType,
                IssueCode::NotSupported,
                "PATCH takes application/json-patch+json (JSON Patch) or application/fhir+json (a FHIRPath Patch Parameters resource)",
            )
        })
}

pub(crate) fn json_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !matches!(
        ct.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir"
    ) {
        return Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            IssueCode::NotSupported,
            "send the resource as application/fhir+json",
        ));
    }
    medvault_fhir::strict_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorKind::Invalid,
            IssueCode::Structure,
            if e.to_string().contains("same key twice") {
                "the body names the same key twice in an object (FHIR JSON allows each key once)"
            } else {
                "the body is not valid JSON"
            },
        )
    })
}

fn respond(out: Outcome, ret: Return, base: &str) -> Response {
    let mut resp = match (&out.resource, ret) {
        (Some(r), Return::Representation) => fhir_json(out.status, r),
        (_, Return::Outcome) => {
            let done = match out.status {
                StatusCode::CREATED => "created",
                _ => "done",
            };
            let text = match &out.location {
                Some(loc) => format!("{done}: {loc}"),
                None => done.to_owned(),
            };
            fhir_json(
                out.status,
                &medvault_node::error::operation_outcome(
                    "information",
                    IssueCode::Informational,
                    &text,
                    &[],
                ),
            )
        }
        _ => out.status.into_response(),
    };
    if let Some(p) = out
        .key_name
        .as_deref()
        .and_then(|k| k.strip_prefix("Patient/"))
    {
        resp.extensions_mut().insert(AuditPatient(p.to_owned()));
    }
    let h = resp.headers_mut();
    if let Some(v) = out.version
        && let Ok(val) = HeaderValue::from_str(&format!("W/\"{v}\""))
    {
        h.insert(header::ETAG, val);
    }
    if let Some(at) = out.last_modified
        && let Ok(val) = HeaderValue::from_str(&clock::http_date(at))
    {
        h.insert(header::LAST_MODIFIED, val);
    }
    if let Some(loc) = &out.location
        && let Ok(val) = HeaderValue::from_str(&format!("{base}/{loc}"))
    {
        // Also on updates: a conditional update's or patch's record is named only here.
        if out.status == StatusCode::CREATED {
            h.insert(header::LOCATION, val.clone());
        }
        h.insert(header::CONTENT_LOCATION, val);
    }
    resp
}

pub(crate) async fn metadata(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    let now = clock::instant(state.node.clock.now_micros());
    fhir_json(
        StatusCode::OK,
        &capability::statement(state.services.fhir(), &base, &now),
    )
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; the FHIR API is under /fhir")
}

/// A method a route does not take: a 405 `OperationOutcome`, like the FHIR API's.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    route::method_not_allowed(&method).into()
}

pub(crate) async fn fhir_root(
    State(state): State<AppState>,
    who: Authenticated,
    method: Method,
    RawQuery(query): RawQuery,
    deadline: Option<axum::Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let req = (method, String::new(), query, headers, body.0);
    guarded(state, who, req, deadline.map(|d| d.0.0)).await
}

#[allow(clippy::too_many_arguments)] // an axum handler: one argument per extractor
pub(crate) async fn fhir_path(
    State(state): State<AppState>,
    who: Authenticated,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    deadline: Option<axum::Extension<RequestDeadline>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = match path {
        Ok(Path(path)) => path,
        Err(e) => return crate::error::path_rejected(e).into_response(),
    };
    let req = (method, path, query, headers, body.0);
    guarded(state, who, req, deadline.map(|d| d.0.0)).await
}

/// When the request's time is up: stamped by [`time_limit`] as the request arrives, so the
/// writer's deadline and the 503 are measured from the same instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestDeadline(pub(crate) std::time::Instant);

/// A FHIR request's parts: method, path under `/fhir/`, query, headers, body.
type FhirRequest = (Method, String, Option<String>, HeaderMap, Bytes);

/// The purpose of use a request declares (`X-Purpose-Of-Use`); clinical staff who declare none
/// act for treatment (`TREAT`), the purpose their accounts exist for.
fn effective_purpose(who: &Authenticated, headers: &HeaderMap) -> Option<String> {
    purpose_of_use(headers)
        .ok()
        .flatten()
        .or_else(|| matches!(who.role, Role::Clinician | Role::Nurse).then(|| "TREAT".to_owned()))
}

/// Makes a FHIR write in one transaction, then [`finish`]es the request's guard.
fn write_then_finish(
    store: &dyn Store,
    ctx: Ctx,
    op: impl FnOnce(&mut dyn StoreTx, &Ctx) -> Result<Outcome, Error> + Send + 'static,
) -> Result<Outcome, Error> {
    let guard = ctx.guard().cloned();
    let out = write_with(store, move |tx| Ok(op(tx, &ctx)?));
    finish(guard.as_deref());
    Ok(out?)
}

/// After a request's work, on the blocking thread that ran it (which finishes even if the
/// client goes away): the shared policy facts are forgotten if the request changed them.
fn finish(guard: Option<&dyn AccessPolicy>) {
    if let Some(g) = guard {
        g.finish();
    }
}

/// The access policy's guard for `who` declaring `purpose`: one per request (and one per Bulk
/// Data export job, which outlives its kick-off request).
fn new_guard(
    state: &AppState,
    who: &Authenticated,
    purpose: Option<String>,
) -> std::sync::Arc<medvault_node::authz::Guard> {
    std::sync::Arc::new(medvault_node::authz::Guard::new(
        std::sync::Arc::clone(&state.config.policy),
        medvault_node::authz::Subject {
            user: who.token_id.clone(),
            role: who.role,
            patient: who.patient.clone(),
            practitioner: who.practitioner.clone(),
            purpose,
        },
        std::sync::Arc::clone(&state.facts),
    ))
}

/// Runs one FHIR request under the access policy, and leaves what the policy refused or opened
/// on the response for its access-log record.
async fn guarded(
    state: AppState,
    who: Authenticated,
    (method, path, query, headers, body): FhirRequest,
    deadline: Option<std::time::Instant>,
) -> Response {
    let deadline =
        deadline.unwrap_or_else(|| std::time::Instant::now() + state.config.request_timeout);
    let purpose = effective_purpose(&who, &headers);
    if let Some(why) = purpose
        .as_deref()
        .and_then(|p| medvault_policy::purpose::refusal(who.role.as_str(), p))
    {
        // A purpose the role may not declare is refused, never silently replaced or ignored.
        return ApiError::new(ErrorKind::Forbidden, IssueCode::Forbidden, why)
            .denied_by("purpose-of-use")
            .into_response();
    }
    let guard = new_guard(&state, &who, purpose);
    let result = dispatch(
        state,
        who,
        std::sync::Arc::clone(&guard),
        (method, path, query, headers, body),
        deadline,
    )
    .await;
    guard.finish();
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(guard.note_for_log());
    resp
}

async fn dispatch(
    state: AppState,
    who: Authenticated,
    guard: std::sync::Arc<medvault_node::authz::Guard>,
    (method, path, query, headers, body): FhirRequest,
    deadline: std::time::Instant,
) -> Result<Response, ApiError> {
    let target = route::parse_path(&path)?;
    let base = base_url(&state, &headers);
    let audit_view =
        matches!(&target, Target::Type(t) | Target::Instance(t, _) if *t == AUDIT_EVENT);
    if target != Target::Metadata {
        gates::second_factor(&who).map_err(Refusal::into_error)?;
    }
    gates::role_gate(who.role, who.scopes.is_some(), audit_view, &target)
        .map_err(Refusal::into_error)?;
    let ctx = state
        .services
        .for_request(guard, who.scopes.clone(), Some(deadline));
    if let Target::Type(rt) | Target::Instance(rt, _) = &target
        && matches!(method, Method::POST | Method::PUT)
        && let Some(limit) = ops::max_resource_bytes(rt)
        && body.len() > limit
    {
        // Refused before parsing: a resource of this type is never this large.
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            IssueCode::TooLong,
            format!("a {rt} may be at most {limit} bytes of JSON"),
        ));
    }
    if audit_view {
        if method != Method::GET {
            return Err(route::method_not_allowed(&method).into());
        }
        let interaction = match target {
            Target::Instance(..) => Interaction::Read,
            _ => Interaction::Search,
        };
        let mut params = search::parse_query_string(query.as_deref().unwrap_or(""));
        if who.role == Role::Patient {
            // HIPAA §164.528 accounting of disclosures: a patient reads who accessed their own
            // records, and nothing else of the trail; in their own session, not through an
            // app acting for them (whatever its scopes: the trail names staff, their
            // credentials and addresses).
            if who.client.is_some() || who.session.is_none() {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    IssueCode::Forbidden,
                    "a patient reads their accounting of disclosures signed in to their own account (the portal), not through an app",
                ));
            }
            let Some(own) = who
                .patient
                .clone()
                .filter(|_| interaction == Interaction::Search)
            else {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    IssueCode::Forbidden,
                    "patients read their accounting of disclosures with GET /fhir/AuditEvent",
                ));
            };
            params.retain(|(k, _)| k != "patient");
            params.push(("patient".into(), own));
        } else if !matches!(ctx.scope_access(&AUDIT_EVENT, interaction)?, Access::Full) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                IssueCode::Forbidden,
                "the audit trail cannot be read under query-constrained scopes",
            ));
        }
        let (store, ledger) = (
            state.node.access.clone(),
            std::sync::Arc::clone(&state.node.ledger),
        );
        let out = blocking_read(&state, move || match target {
            Target::Instance(_, id) => {
                medvault_node::audit_view::read(store.as_ref(), &ledger, id.as_str())
            }
            _ => medvault_node::audit_view::search(store.as_ref(), &ledger, &params, &base),
        })
        .await?;
        return Ok(fhir_json(StatusCode::OK, &out));
    }
    if let Target::Type(rt) | Target::Instance(rt, _) = &target
        && *rt == medvault_node::subscriptions::SUBSCRIPTION
        && matches!(method, Method::POST | Method::PUT | Method::PATCH)
    {
        crate::subscription_http::may_subscribe(&who)?;
    }
    // A Subscription holds an endpoint, header secrets and what its owner was told: its reads
    // are for admins and the owner.
    match &target {
        Target::Type(rt) | Target::TypeSearch(rt) | Target::TypeHistory(rt)
            if *rt == medvault_node::subscriptions::SUBSCRIPTION
                && (method == Method::GET || matches!(&target, Target::TypeSearch(_))) =>
        {
            crate::subscription_http::may_read(&state, &who, None)?;
        }
        Target::Instance(rt, id)
        | Target::InstanceHistory(rt, id)
        | Target::Version(rt, id, _)
        | Target::Operation(rt, id, _)
            if *rt == medvault_node::subscriptions::SUBSCRIPTION && method == Method::GET =>
        {
            crate::subscription_http::may_read(&state, &who, Some(id))?;
        }
        _ => {}
    }
    let strict = prefer(&headers, "handling") == Some("strict");
    let ret = return_preference(&headers);
    let params = search::parse_query_string(query.as_deref().unwrap_or(""));
    check_format(&headers, &params)?;
    let store = state.node.store.clone();
    match (method.clone(), target) {
        (Method::GET, Target::Metadata) => Ok(metadata(State(state), headers).await),
        (Method::POST, Target::System) => {
            let json = json_body(&headers, &body)?;
            let b = base.clone();
            // A batch's reads and searches are the same CPU-bound work as their own requests:
            // they count against the same limit (a transaction's run inside the writer).
            let reads = json.get("type").and_then(Value::as_str) == Some("batch")
                && json
                    .get("entry")
                    .and_then(Value::as_array)
                    .is_some_and(|e| {
                        e.iter().any(|x| {
                            x.pointer("/request/method").and_then(Value::as_str) == Some("GET")
                        })
                    });
            // Each entry's method, to count the changes that succeeded for the access log
            // (Sentinel counts a Bundle's deletions like single ones).
            let methods: Vec<String> = json
                .get("entry")
                .and_then(Value::as_array)
                .map(|entries| {
                    entries
                        .iter()
                        .map(|e| {
                            e.pointer("/request/method")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let run = move || {
                let out = bundle::process(store.as_ref(), &ctx, json, &b);
                finish(ctx.guard().map(AsRef::as_ref));
                out
            };
            let out = if reads {
                blocking_read(&state, run).await?
            } else {
                blocking(run).await?
            };
            crate::subscription_http::after_write(
                &state,
                &who,
                crate::subscription_http::bundle_locations(&out),
            )
            .await;
            let mut resp = fhir_json(StatusCode::OK, &out);
            let changed = bundle_changes(&methods, &out);
            if changed != (0, 0) {
                resp.extensions_mut().insert(AuditExtra(
                    serde_json::json!({"bundle": {"deletes": changed.0, "updates": changed.1}}),
                ));
            }
            Ok(resp)
        }
        (Method::GET, Target::Type(rt)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            run_search(&state, ctx, rt, params, strict, base).await
        }
        (Method::POST, Target::TypeSearch(rt)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !body.is_empty() && !ct.starts_with("application/x-www-form-urlencoded") {
                return Err(ApiError::new(
                    ErrorKind::UnsupportedMediaType,
                    IssueCode::NotSupported,
                    "_search takes application/x-www-form-urlencoded parameters",
                ));
            }
            let mut all = params;
            all.extend(form_urlencoded::parse(&body).into_owned());
            run_search(&state, ctx, rt, all, strict, base).await
        }
        (Method::POST, Target::Type(rt)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let json = json_body(&headers, &body)?;
            let cond = headers
                .get("if-none-exist")
                .map(|v| v.to_str().map(str::to_owned))
                .transpose()
                .map_err(|_| ApiError::bad_request("If-None-Exist must be a query string"))?;
            create(&state, &who, ctx, rt, json, cond, ret, &base).await
        }
        (Method::POST, Target::Operation(rt, id, op))
            if op == "object-to-research" && rt == ResourceType::PATIENT =>
        {
            // GDPR Art. 21: the patient's objection to research use, as the Consent the
            // compliance crate writes for it. Who first (the patient for themself, an admin
            // recording it for them; anyone else learns nothing, not even whether the patient
            // exists), then the policy decides the write as for any Consent. Recording it
            // twice changes nothing: the one in force is answered (200).
            let own = who.role == Role::Patient && who.patient.as_deref() == Some(id.as_str());
            if who.role == Role::Patient && !own {
                return Err(ApiError::not_found("no such patient"));
            }
            if !own && who.role != Role::Admin {
                return Err(ApiError::new(
                    ErrorKind::Forbidden,
                    IssueCode::Forbidden,
                    "an objection to research is recorded by the patient themself or by an admin",
                ));
            }
            let node = std::sync::Arc::clone(&state.node);
            let out = blocking(move || {
                if store
                    .current(&ResourceType::PATIENT, &id)?
                    .is_none_or(|m| m.deleted)
                {
                    return Err(Error::not_found("no such patient"));
                }
                let now = ctx.clock.now_micros();
                let consent = medvault_compliance::subject::research_objection(&id, now);
                let mut p = ops::prepare(
                    store.as_ref(),
                    &ctx,
                    &CONSENT,
                    medvault_core::ResourceId::random(),
                    consent,
                    false,
                )?;
                ops::authorize_write(store.as_ref(), &ctx, &mut p, Interaction::Create)?;
                // The objection in force, if any, is checked in the same write that would
                // record a new one: calls at once record one.
                let inner = Ctx::unrestricted_node_work(&node);
                write_then_finish(store.as_ref(), ctx, move |tx, ctx| {
                    let at = clock::instant(now);
                    match medvault_compliance::subject::active_objection_in(&*tx, &inner, &id, &at)?
                    {
                        Some(existing) => {
                            let eid = existing["id"]
                                .as_str()
                                .and_then(|i| medvault_core::ResourceId::new(i).ok())
                                .ok_or_else(|| {
                                    Error::internal(&"a stored Consent without an id")
                                })?;
                            medvault_node::records::read(&*tx, &inner, &CONSENT, &eid, None)
                        }
                        None => ops::create(tx, ctx, p, None),
                    }
                })
            })
            .await?;
            if out.status == StatusCode::OK {
                // The objection in force: nothing was written, so no subscription hears of it.
                return Ok(respond(out, ret, &base));
            }
            written(&state, &who, out, ret, &base).await
        }
        (Method::PUT, Target::Instance(rt, id)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let json = json_body(&headers, &body)?;
            let if_match = if_match(&headers)?;
            let out = blocking(move || {
                let mut p = ops::prepare(store.as_ref(), &ctx, &rt, id, json, true)?;
                ops::authorize_write(store.as_ref(), &ctx, &mut p, Interaction::Update)?;
                write_then_finish(store.as_ref(), ctx, move |tx, ctx| {
                    ops::update(tx, ctx, p, if_match)
                })
            })
            .await?;
            written(&state, &who, out, ret, &base).await
        }
        (Method::PUT, Target::Type(rt)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let json = json_body(&headers, &body)?;
            let if_match = if_match(&headers)?;
            write(&state, &who, ctx, ret, &base, move |tx, ctx| {
                change::conditional_update(tx, ctx, &rt, &params, json, if_match)
            })
            .await
        }
        (Method::PATCH, target @ (Target::Instance(..) | Target::Type(_))) => {
            let (rt, target) = match target {
                Target::Instance(rt, id) => (rt, change::PatchTarget::Id(id)),
                Target::Type(rt) => (rt, change::PatchTarget::Search(params)),
                _ => return Err(route::method_not_allowed(&method).into()),
            };
            ops::served_type(&ctx.fhir, &rt)?;
            let kind = patch_kind(&headers)?;
            let if_match = if_match(&headers)?;
            write(&state, &who, ctx, ret, &base, move |tx, ctx| {
                change::patch_target(tx, ctx, &rt, &target, kind, &body, if_match)
            })
            .await
        }
        (Method::DELETE, Target::Type(rt)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            write(&state, &who, ctx, ret, &base, move |tx, ctx| {
                change::conditional_delete(tx, ctx, &rt, &params)
            })
            .await
        }
        (Method::DELETE, Target::Instance(rt, id)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let if_match = if_match(&headers)?;
            write(&state, &who, ctx, ret, &base, move |tx, ctx| {
                ops::delete(tx, ctx, &rt, &id, if_match)
            })
            .await
        }
        // Reads by id are one primary-key lookup and one decryption (tens of microseconds), so
        // they run inline: a hand-off to the blocking pool would cost more than the work.
        (Method::GET, Target::Instance(rt, id)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let subset = search::read_subset(&rt, &params, strict)?;
            let out = ops::read(store.as_ref(), &ctx, &rt, &id, None)?;
            Ok(respond(
                out.subset(&rt, subset.as_ref()),
                Return::Representation,
                &base,
            ))
        }
        (Method::GET, Target::Version(rt, id, v)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let subset = search::read_subset(&rt, &params, strict)?;
            let out = ops::read(store.as_ref(), &ctx, &rt, &id, Some(v.get()))?;
            Ok(respond(
                out.subset(&rt, subset.as_ref()),
                Return::Representation,
                &base,
            ))
        }
        (Method::GET, Target::TypeHistory(rt)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let paging = search::parse(&ctx, &rt, &paging_only(&params), false)?.paging;
            let b = base.clone();
            let out = blocking_read(&state, move || {
                ops::history(store.as_ref(), &ctx, &rt, None, paging, &b)
            })
            .await?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (Method::GET, Target::InstanceHistory(rt, id)) => {
            ops::served_type(&ctx.fhir, &rt)?;
            let paging = search::parse(&ctx, &rt, &paging_only(&params), false)?.paging;
            let b = base.clone();
            let out = blocking_read(&state, move || {
                ops::history(store.as_ref(), &ctx, &rt, Some(&id), paging, &b)
            })
            .await?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (Method::POST, Target::Operation(rt, id, op))
            if rt == ResourceType::PATIENT && op == "share" =>
        {
            // A disclosure to another institution: clinical staff (for care) and admins (release
            // of information), in their own sessions or with API tokens; never apps.
            gates::share(&who).map_err(Refusal::into_error)?;
            let json = json_body(&headers, &body)?;
            let agent = serde_json::json!({"token": who.token_id, "role": who.role.as_str()});
            let declared = effective_purpose(&who, &headers);
            crate::share_http::share(state, ctx, id, &json, declared, agent).await
        }
        (Method::POST, Target::TypeOperation(rt, op)) if op == "validate" => {
            ops::served_type(&ctx.fhir, &rt)?;
            let json = json_body(&headers, &body)?;
            let out = blocking_read(&state, move || {
                operations::validate(store.as_ref(), &ctx, &rt, None, json)
            })
            .await?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (Method::POST, Target::Operation(rt, id, op)) if op == "validate" => {
            ops::served_type(&ctx.fhir, &rt)?;
            let json = json_body(&headers, &body)?;
            let out = blocking_read(&state, move || {
                operations::validate(store.as_ref(), &ctx, &rt, Some(&id), json)
            })
            .await?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (Method::GET, Target::Operation(rt, id, op))
            if rt == medvault_node::subscriptions::SUBSCRIPTION
                && (op == "status" || op == "events") =>
        {
            let (notifier, node) = (
                std::sync::Arc::clone(&state.notifier),
                std::sync::Arc::clone(&state.node),
            );
            let b = base.clone();
            let out = blocking_read(&state, move || {
                if op == "status" {
                    notifier.status(&node, &ctx, &id, &b)
                } else {
                    notifier.events(&node, &ctx, &id, &params, &b)
                }
            })
            .await?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (Method::GET | Method::POST, Target::Operation(rt, id, op)) if op == "meta" => {
            ops::served_type(&ctx.fhir, &rt)?;
            let out = operations::meta(store.as_ref(), &ctx, &rt, &id)?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (Method::POST, Target::Operation(rt, id, op))
            if op == "meta-add" || op == "meta-delete" =>
        {
            ops::served_type(&ctx.fhir, &rt)?;
            let json = json_body(&headers, &body)?;
            let how = if op == "meta-add" {
                change::MetaChange::Add
            } else {
                change::MetaChange::Delete
            };
            let meta = change::meta_parameter(&json)?.clone();
            write(
                &state,
                &who,
                ctx,
                Return::Representation,
                &base,
                move |tx, ctx| change::change_meta(tx, ctx, &rt, &id, how, &meta),
            )
            .await
        }
        (Method::GET, Target::Operation(rt, id, op))
            if op == "export-my-data" && rt == ResourceType::PATIENT =>
        {
            crate::subject_http::export_mine(state, &who, ctx, id).await
        }
        (Method::GET | Method::POST, Target::Operation(rt, id, op))
            if op == "everything" && rt == ResourceType::PATIENT =>
        {
            let mut all = params;
            if method == Method::POST && !body.is_empty() {
                let json = json_body(&headers, &body)?;
                all.extend(parameters_as_pairs(&json)?);
            }
            let b = base.clone();
            let out = blocking_read(&state, move || {
                operations::everything(store.as_ref(), &ctx, &id, &all, &b)
            })
            .await?;
            Ok(fhir_json(StatusCode::OK, &out))
        }
        (
            Method::GET | Method::POST,
            target @ (Target::SystemOperation(_)
            | Target::TypeOperation(..)
            | Target::Operation(..)),
        ) if export_level(&target).is_some() => {
            let level =
                export_level(&target).ok_or_else(|| ApiError::not_found("no such operation"))?;
            let job_ctx = state.services.for_request(
                new_guard(&state, &who, effective_purpose(&who, &headers)),
                who.scopes.clone(),
                None,
            );
            let request = match query.as_deref() {
                Some(q) if !q.is_empty() => format!("{base}/{}?{q}", path.trim_start_matches('/')),
                _ => format!("{base}/{}", path.trim_start_matches('/')),
            };
            crate::bulk_http::kick_off(
                &state, &who, job_ctx, level, params, &headers, &body, request, &base,
            )
            .await
        }
        (Method::POST, Target::SystemOperation(op)) if op == "import" => {
            let job_ctx = state.services.for_request(
                new_guard(&state, &who, effective_purpose(&who, &headers)),
                who.scopes.clone(),
                None,
            );
            let request = format!("{base}/$import");
            crate::bulk_http::import(&state, &who, job_ctx, &headers, &body, request, &base).await
        }
        (Method::POST, Target::SystemOperation(op)) if op == "process-message" => {
            let json = json_body(&headers, &body)?;
            medvault_node::messaging::check(&json)?;
            let b = base.clone();
            write(
                &state,
                &who,
                ctx,
                Return::Representation,
                &base,
                move |tx, ctx| medvault_node::messaging::process(tx, ctx, json, &b),
            )
            .await
        }
        (Method::GET, Target::ExportStatus(id)) => {
            crate::bulk_http::status(&state, &who, &id, &base)
        }
        (Method::DELETE, Target::ExportStatus(id)) => crate::bulk_http::cancel(&state, &who, &id),
        (Method::GET, Target::ExportFile(id, name)) => {
            crate::bulk_http::file(&state, &who, id, name).await
        }
        (m, Target::ExportStatus(_) | Target::ExportFile(..)) => {
            Err(route::method_not_allowed(&m).into())
        }
        (m, Target::SystemOperation(op))
            if op == "export" || op == "process-message" || op == "import" =>
        {
            Err(route::method_not_allowed(&m).into())
        }
        (m, Target::Operation(_, _, op) | Target::TypeOperation(_, op))
            if [
                "status",
                "events",
                "share",
                "validate",
                "meta",
                "meta-add",
                "meta-delete",
                "everything",
            ]
            .contains(&op.as_str()) =>
        {
            Err(route::method_not_allowed(&m).into())
        }
        (_, Target::Operation(..) | Target::TypeOperation(..) | Target::SystemOperation(_)) => {
            Err(ApiError::not_found("no such operation"))
        }
        (m, _) => Err(route::method_not_allowed(&m).into()),
    }
}

/// The level of a Bulk Data `$export` kick-off, if `target` is one.
fn export_level(target: &Target) -> Option<medvault_node::bulk::Level> {
    use medvault_node::bulk::Level;
    match target {
        Target::SystemOperation(op) if op == "export" => Some(Level::System),
        Target::TypeOperation(rt, op) if op == "export" && *rt == ResourceType::PATIENT => {
            Some(Level::Patient)
        }
        Target::Operation(rt, id, op) if op == "export" && rt.as_str() == "Group" => {
            Some(Level::Group(id.clone()))
        }
        _ => None,
    }
}

/// The simple parameters of a `Parameters` body (`valueString`, `valueCode`, `valueInteger`,
/// `valueInstant`…) as query pairs, for an operation invoked by POST.
pub(crate) fn parameters_as_pairs(body: &Value) -> Result<Vec<(String, String)>, ApiError> {
    let bad = || ApiError::bad_request("the body must be a Parameters resource of simple values");
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad());
    }
    let mut out = Vec::new();
    for p in body
        .get("parameter")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = p.get("name").and_then(Value::as_str).ok_or_else(bad)?;
        let value = p
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
            .map(|(_, v)| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .ok_or_else(bad)?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// A write made entirely inside the writer (what it changes depends on what is stored): one
/// transaction, then [`written`].
async fn write(
    state: &AppState,
    who: &Authenticated,
    ctx: Ctx,
    ret: Return,
    base: &str,
    op: impl FnOnce(&mut dyn StoreTx, &Ctx) -> Result<Outcome, Error> + Send + 'static,
) -> Result<Response, ApiError> {
    let store = state.node.store.clone();
    let out = blocking(move || write_then_finish(store.as_ref(), ctx, op)).await?;
    written(state, who, out, ret, base).await
}

/// A create (conditional on `cond`, an `If-None-Exist` query) under the request's policy.
#[allow(clippy::too_many_arguments)]
async fn create(
    state: &AppState,
    who: &Authenticated,
    ctx: Ctx,
    rt: ResourceType,
    json: Value,
    cond: Option<String>,
    ret: Return,
    base: &str,
) -> Result<Response, ApiError> {
    let store = state.node.store.clone();
    let out = blocking(move || {
        let mut p = ops::prepare(
            store.as_ref(),
            &ctx,
            &rt,
            medvault_core::ResourceId::random(),
            json,
            false,
        )?;
        ops::authorize_write(store.as_ref(), &ctx, &mut p, Interaction::Create)?;
        write_then_finish(store.as_ref(), ctx, move |tx, ctx| {
            ops::create(tx, ctx, p, cond.as_deref())
        })
    })
    .await?;
    written(state, who, out, ret, base).await
}

/// After a write committed: the subscriptions hear of it, and the client gets its answer.
async fn written(
    state: &AppState,
    who: &Authenticated,
    out: Outcome,
    ret: Return,
    base: &str,
) -> Result<Response, ApiError> {
    crate::subscription_http::after_write(state, who, out.location.iter().cloned().collect()).await;
    Ok(respond(out, ret, base))
}

/// A type search (GET or POST `_search`) on a blocking thread, answered as a `searchset`.
async fn run_search(
    state: &AppState,
    ctx: Ctx,
    rt: ResourceType,
    params: Vec<(String, String)>,
    strict: bool,
    base: String,
) -> Result<Response, ApiError> {
    let store = state.node.store.clone();
    let out = blocking_read(state, move || {
        search::search_bundle(store.as_ref(), &ctx, &rt, &params, strict, &base)
    })
    .await?;
    Ok(fhir_json(StatusCode::OK, &out))
}

fn paging_only(params: &[(String, String)]) -> Vec<(String, String)> {
    params
        .iter()
        .filter(|(k, _)| k == "_count" || k == "_offset")
        .cloned()
        .collect()
}

/// Process-unique request ids: a random per-process prefix and a counter (no syscall per
/// request, unlike a random UUID).
fn next_request_id() -> String {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n:x}")
}

/// The FHIR interaction a request is, for its audit record.
fn interaction(method: &Method, target: &Target) -> &'static str {
    match (method, target) {
        (&Method::GET, Target::Metadata) => "capabilities",
        (&Method::POST, Target::System) => "batch/transaction",
        (&Method::GET, Target::Type(_)) | (&Method::POST, Target::TypeSearch(_)) => "search-type",
        (&Method::POST, Target::Type(_)) => "create",
        (&Method::GET, Target::Instance(..)) => "read",
        (&Method::GET, Target::Version(..)) => "vread",
        (&Method::PUT, Target::Instance(..)) => "update",
        (&Method::DELETE, Target::Instance(..)) => "delete",
        (&Method::GET, Target::TypeHistory(_)) => "history-type",
        (&Method::GET, Target::InstanceHistory(..)) => "history-instance",
        (&Method::POST, Target::Operation(_, _, op)) if op == "share" => "share",
        (&Method::PUT, Target::Type(_)) => "update-conditional",
        (&Method::PATCH, Target::Instance(..)) => "patch",
        (&Method::PATCH, Target::Type(_)) => "patch-conditional",
        (&Method::DELETE, Target::Type(_)) => "delete-conditional",
        (_, Target::Operation(_, _, op) | Target::TypeOperation(_, op)) => match op.as_str() {
            "validate" => "operation-validate",
            "meta" => "operation-meta",
            "meta-add" => "operation-meta-add",
            "meta-delete" => "operation-meta-delete",
            "everything" => "operation-everything",
            "export" => "bulk-export",
            _ => "unsupported",
        },
        (&Method::GET, Target::SystemOperation(op))
        | (&Method::POST, Target::SystemOperation(op))
            if op == "export" =>
        {
            "bulk-export"
        }
        (&Method::POST, Target::SystemOperation(op)) if op == "process-message" => {
            "operation-process-message"
        }
        (&Method::POST, Target::SystemOperation(op)) if op == "import" => "bulk-import",
        (&Method::GET, Target::ExportStatus(_)) => "bulk-status",
        (&Method::DELETE, Target::ExportStatus(_)) => "bulk-delete",
        (&Method::GET, Target::ExportFile(..)) => "bulk-file",
        _ => "unsupported",
    }
}

/// The resource a FHIR request's path named (type and id), for [`attribute_patient`].
type Touched = Option<(ResourceType, ResourceId)>;

/// The audit record of one request: who, what, when, why, outcome. Sealed before it is stored;
/// search parameter *names* are kept, never their values. Also the resource its path named.
fn audit_record(
    request_id: &str,
    now_micros: i64,
    method: &Method,
    uri: &axum::http::Uri,
    who: Option<&Authenticated>,
    purpose: Option<&str>,
    resp: &Response,
) -> (AuditRecord, Touched) {
    let status = resp.status();
    let fhir_path = uri.path().strip_prefix("/fhir");
    let target = fhir_path.and_then(|p| route::parse_path(p).ok());
    let fhir_interaction = target.as_ref().map_or("none", |t| interaction(method, t));
    let (rtype, touched) = match target {
        Some(
            Target::Type(t)
            | Target::TypeSearch(t)
            | Target::TypeHistory(t)
            | Target::TypeOperation(t, _),
        ) => (Some(t.as_str().to_owned()), None),
        Some(
            Target::Instance(t, i)
            | Target::InstanceHistory(t, i)
            | Target::Version(t, i, _)
            | Target::Operation(t, i, _),
        ) => (Some(t.as_str().to_owned()), Some((t, i))),
        _ => (None, None),
    };
    let id = touched.as_ref().map(|(_, i)| i.to_string());
    // A create's new id is in its Location header (`…/Type/id/_history/1`), a conditional
    // update's or patch's in its Content-Location.
    let id = id.or_else(|| {
        let h = resp.headers();
        let loc = h
            .get(header::LOCATION)
            .or_else(|| h.get(header::CONTENT_LOCATION))?
            .to_str()
            .ok()?;
        let mut parts = loc.rsplit('/').skip(2);
        parts.next().map(str::to_owned)
    });
    let params: Vec<String> = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let refused = resp.extensions().get::<crate::error::DeniedBy>().is_some();
    let outcome = match status.as_u16() {
        _ if refused => AuditOutcome::Denied,
        200..=399 => AuditOutcome::Success,
        401 => AuditOutcome::AuthenticationFailed,
        403 => AuditOutcome::Denied,
        400..=499 => AuditOutcome::ClientError,
        _ => AuditOutcome::ServerError,
    };
    let interaction = match uri.path() {
        "/witness/add-checkpoint" => "witness-add-checkpoint",
        "/witness/key" => "witness-key",
        "/auth/login" => "login",
        "/auth/logout" => "logout",
        "/auth/session" => "session",
        "/auth/totp/enroll" => "totp-enroll",
        "/auth/totp/confirm" => "totp-confirm",
        "/auth/token" => "oauth-token",
        "/auth/ui" | "/auth/ui/login.js" | "/auth/ui/common.js" => "login-page",
        "/auth/passkey/register/start" | "/auth/passkey/register/finish" => "passkey-register",
        "/auth/passkey/login/start" | "/auth/passkey/login/finish" => "passkey-login",
        "/auth/introspect" => "oauth-introspect",
        "/auth/revoke" => "oauth-revoke",
        "/admin/keys/rotate" => "keys-rotate",
        "/auth/break-glass" => "break-glass",
        "/privacy/alerts" => "alerts-read",
        "/privacy/ui" | "/privacy/ui/privacy.js" => "privacy-page",
        "/portal/ui" | "/portal/ui/portal.js" => "portal-page",
        "/portal/requests" => "portal-requests",
        p if p.starts_with("/privacy/alerts/") => "alert-acknowledge",
        p if p.starts_with("/admin/patients/") && p.ends_with("/hold") => "legal-hold",
        p if p.starts_with("/admin/patients/") && p.ends_with("/restrict") => {
            "processing-restriction"
        }
        p if p.starts_with("/admin/patients/") => "patient-erase",
        "/admin/alerts" | "/admin/sentinel/thresholds" => "alerts-read",
        p if p.starts_with("/admin/alerts/") && p.ends_with("/verdict") => "alert-verdict",
        p if p.starts_with("/admin/alerts/") => "alert-read",
        "/admin/responses" => "responses-read",
        p if p.starts_with("/admin/responses/") => "response-undo",
        "/auth/authorize" | "/auth/authorize.js" | "/auth/authorize/check" => "oauth-authorize",
        "/auth/authorize/decide" => "oauth-approve",
        medvault_node::share::RECEIVE_PATH => "peer-delivery",
        _ => fhir_interaction,
    };
    let mut record = AuditRecord::new(AuditKind::Rest, now_micros, interaction, outcome)
        .denied_by(
            resp.extensions()
                .get::<crate::error::DeniedBy>()
                .map(|d| d.0.clone()),
        )
        .with("request_id", request_id)
        .with("policy", note::<medvault_node::authz::PolicyNote>(resp))
        .with("auth", note::<crate::respond::AuthNote>(resp))
        .with("extra", note::<AuditExtra>(resp))
        .with("method", method.as_str())
        .with("resource_type", rtype)
        .with("id", id)
        .with("params", params)
        .with("purpose", purpose)
        .with("status", status.as_u16());
    record.agent = who.map(|w| {
        serde_json::json!({
            "token": w.token_id,
            "role": w.role.as_str(),
            "session": w.session,
            "client": w.client,
        })
    });
    (record, touched)
}

/// What the response's extension `T` adds to its access-log record, as JSON (`null`, left out,
/// when the response has none).
fn note<T: serde::Serialize + Send + Sync + 'static>(resp: &Response) -> Value {
    resp.extensions()
        .get::<T>()
        .and_then(|n| serde_json::to_value(n).ok())
        .unwrap_or(Value::Null)
}

/// Adds the patient whose compartment the touched resource belongs to, so an auditor's
/// `AuditEvent?patient=` finds every access to that patient's data, not only to the Patient
/// resource. The interaction already knows it when it succeeded; for refused or failed ones it
/// is looked up from the key that seals the resource (one primary-key read): the one the path
/// named (`touched`), or a create's, named by the record.
fn attribute_patient(
    state: &AppState,
    resp: &Response,
    record: &mut AuditRecord,
    touched: Touched,
) {
    if let Some(AuditPatient(p)) = resp.extensions().get::<AuditPatient>() {
        record.patient = Some(p.clone());
        return;
    }
    let touched = touched.or_else(|| {
        let field = |name: &str| record.fields.get(name).and_then(Value::as_str);
        let rt = ResourceType::new(field("resource_type")?).ok()?;
        Some((rt, ResourceId::new(field("id")?).ok()?))
    });
    let Some((rt, id)) = touched else {
        return;
    };
    if let Ok(Some(current)) = state.node.store.current(&rt, &id)
        && let Some(patient) = current.key_name.strip_prefix("Patient/")
    {
        record.patient = Some(patient.to_owned());
    }
}

/// `X-Purpose-Of-Use`: a code of the HL7 v3 PurposeOfUse value set (e.g. `TREAT`, `ETREAT`,
/// `HPAYMT`), recorded in the audit trail.
fn purpose_of_use(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut all = headers.get_all("x-purpose-of-use").iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        // Two declared purposes are no declaration: which one would the access log believe?
        return Err(ApiError::bad_request(
            "send one X-Purpose-Of-Use header with one HL7 v3 PurposeOfUse code",
        ));
    }
    v.to_str()
        .ok()
        .map(str::trim)
        .filter(|p| (2..=24).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_uppercase()))
        .map(|p| Some(p.to_owned()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "X-Purpose-Of-Use must be one HL7 v3 PurposeOfUse code, e.g. TREAT",
            )
        })
}

/// Readiness, for load balancers: 200 when both databases answer, else 503 with a `transient`
/// `OperationOutcome` (`/healthz` answers as long as the process runs). Not audited: probes
/// come every few seconds and carry no one's access.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let node = std::sync::Arc::clone(&state.node);
    let checked = tokio::task::spawn_blocking(move || {
        node.store.meta("tenant")?;
        node.access.ledger_size().map(drop)
    })
    .await;
    match checked {
        Ok(Ok(())) => "ready".into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: a database does not answer");
            ApiError::new(
                ErrorKind::Unavailable,
                IssueCode::Transient,
                "not ready: the database does not answer",
            )
            .into_response()
        }
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// Applies `serve --request-timeout-seconds`: a request still running then is answered 503
/// (`transient`). Work already on a blocking thread finishes, but a write whose transaction
/// reaches its commit after the deadline rolls back (see `ops::Ctx::deadline`), so the 503
/// never hides a write. Inside [`observe`], so the answer is audited like any other.
pub(crate) async fn time_limit(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let mut req = req;
    req.extensions_mut().insert(RequestDeadline(
        std::time::Instant::now() + state.config.request_timeout,
    ));
    match tokio::time::timeout(state.config.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::from(ops::timed_out()).into_response(),
    }
}

/// Response header naming the request's leaf in the access log.
pub const ACCESS_LEAF_HEADER: &str = "x-access-log-leaf";

/// Request id, audit record and request log.
///
/// Every request except the public transparency endpoints (`/ledger/…`) and the probes
/// (`/healthz`, `/readyz`) is written to the ledger as a sealed audit record *before* its
/// response is released; if the record cannot be written the client gets an error (500, or 503
/// when the database is unreachable) instead of the data (fail closed). Anonymous requests
/// (authenticating no one: nothing is released to them) beyond the per-minute budget are
/// counted into summary records instead, and an address over its anonymous limit gets 429 for
/// requests without credentials ([`crate::anonymous`]). The record names the client's address
/// ([`crate::client_addr`]).
///
/// The log names the route template, never the concrete path or query (they can carry ids and
/// search values). Server errors log at `warn`, everything else at `debug`: the ledger, not this
/// log, is the record of who accessed what.
pub(crate) async fn observe(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let request_id = next_request_id();
    let audited = !(uri.path().starts_with("/ledger/")
        || uri.path() == "/healthz"
        || uri.path() == "/readyz");
    let slot = crate::auth::AgentSlot::default();
    req.extensions_mut().insert(slot.clone());
    let client = state
        .config
        .trusted_proxies
        .client_ip(crate::tls::peer_ip(req.extensions()), req.headers());
    req.extensions_mut()
        .insert(crate::client_addr::ClientAddr(client));
    // The peer listener's clients are registered nodes (mutual TLS): never anonymous.
    let peer_node = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::peer::PeerConn>>()
        .is_some();
    let purpose = purpose_of_use(req.headers());
    // A request without a credential to check. An Authorization header on a sign-in is not a
    // credential (the sign-in checks none), so it cannot buy its way past the limits; from a
    // held address a claimed credential is checked below before the request runs.
    let no_credential = !req.headers().contains_key(header::AUTHORIZATION)
        || matches!(
            uri.path(),
            "/auth/login" | "/auth/passkey/login/start" | "/auth/passkey/login/finish"
        );
    let throttled = audited
        && !peer_node
        && no_credential
        && state
            .anonymous
            .over_limit(client, state.config.anonymous_requests_per_minute);
    // A Sentinel throttle on the address holds its requests without credentials (sign-ins,
    // probes); requests with credentials are checked with the credential.
    let held = (audited && !peer_node && no_credential)
        .then(|| {
            state
                .enforcement
                .admit_address(&client.to_string(), state.node.clock.now_micros())
                .err()
        })
        .flatten()
        .map(crate::auth::sentinel_refusal);
    // From an address over its anonymous limit or under a Sentinel throttle, a request that
    // claims a credential runs only if the credential is valid (checked here, whatever the
    // endpoint: OAuth endpoints, pages and metadata do not authenticate by themselves).
    let held = match held {
        Some(r) => Some(r),
        None if audited && !peer_node && !no_credential => {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned());
            check_claimed_credential(&state, bearer.as_deref(), client, uri.path()).await
        }
        None => None,
    };
    let mut resp = match (&purpose, held) {
        _ if throttled => anonymous_throttled(uri.path()),
        (_, Some(refused)) => refused,
        (Ok(_), None) => next.run(req).await,
        (Err(e), None) => e.clone().into_response(),
    };
    if audited && !(peer_node || counted_together(&state, &slot, client, &resp)) {
        let now = state.node.clock.now_micros();
        let (mut record, touched) = audit_record(
            &request_id,
            now,
            &method,
            &uri,
            slot.get().as_ref(),
            purpose.ok().flatten().as_deref(),
            &resp,
        );
        note_client(&mut record, client, &slot);
        attribute_patient(&state, &resp, &mut record, touched);
        let written = state
            .node
            .ledger
            .record_audit_async(state.node.access.as_ref(), now, &record)
            .await;
        match written {
            Ok(leaf) => {
                if let Ok(v) = HeaderValue::from_str(&leaf.to_string()) {
                    resp.headers_mut().insert(ACCESS_LEAF_HEADER, v);
                }
            }
            Err(e) => resp = ApiError::from(e).into_response(),
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // The administrative and privacy answers (alerts name people and patients), errors
    // included, are never cached.
    if (uri.path().starts_with("/admin/") || uri.path().starts_with("/privacy/"))
        && !resp.headers().contains_key(header::CACHE_CONTROL)
    {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let status = resp.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    if status >= 500 {
        tracing::warn!(request_id = %request_id, method = %method, route, status, micros, "request failed");
    } else {
        tracing::debug!(request_id = %request_id, method = %method, route, status, micros, "request");
    }
    resp
}

/// Whether a request was anonymous (see [`crate::anonymous`]).
enum Anonymity {
    /// A credential was accepted, a sign-in or token grant succeeded, or the sender was
    /// vouched for.
    Identified,
    /// It authenticated no one; the known account, app or token it named, if any.
    Anonymous(Option<String>),
}

fn anonymity(
    who: Option<&Authenticated>,
    refused: Option<&RefusedCredential>,
    resp: &Response,
) -> Anonymity {
    if who.is_some()
        || resp
            .extensions()
            .get::<crate::anonymous::Vouched>()
            .is_some()
    {
        return Anonymity::Identified;
    }
    let note = resp.extensions().get::<crate::respond::AuthNote>();
    let named = note.and_then(|n| n.user.clone().or_else(|| n.client.clone()));
    if named.is_some() && resp.status().as_u16() < 400 {
        return Anonymity::Identified;
    }
    Anonymity::Anonymous(named.or_else(|| refused.map(|r| r.id.clone())))
}

/// For a request claiming a credential from an address that is held (over its anonymous limit,
/// or throttled by Sentinel): the answer when the credential does not authenticate (counted
/// against the address), none when it does or the address is free.
async fn check_claimed_credential(
    state: &AppState,
    bearer: Option<&str>,
    client: std::net::IpAddr,
    path: &str,
) -> Option<Response> {
    let now = state.node.clock.now_micros();
    let address = client.to_string();
    let over = state
        .anonymous
        .over_limit(client, state.config.anonymous_requests_per_minute);
    if !over && !state.enforcement.throttles_address(&address, now) {
        return None;
    }
    if let Some(token) = bearer
        && medvault_node::identity::bearer::validate(
            &state.node,
            &state.auth,
            state.config.sessions,
            token,
        )
        .await
        .is_ok()
    {
        return None;
    }
    if over {
        return Some(anonymous_throttled(path));
    }
    state
        .enforcement
        .admit_address(&address, now)
        .err()
        .map(crate::auth::sentinel_refusal)
}

/// The deletions and the updates (PUT, PATCH) among a Bundle's entries that succeeded (a 2xx
/// status in the response's entry at the same place).
fn bundle_changes(methods: &[String], out: &Value) -> (u64, u64) {
    let Some(entries) = out.get("entry").and_then(Value::as_array) else {
        return (0, 0);
    };
    let mut changed = (0, 0);
    for (method, entry) in methods.iter().zip(entries) {
        let ok = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with('2'));
        match method.as_str() {
            "DELETE" if ok => changed.0 += 1,
            "PUT" | "PATCH" if ok => changed.1 += 1,
            _ => {}
        }
    }
    changed
}

/// Counts an anonymous request (see [`crate::anonymous`]); true if it goes into a summary
/// record instead of getting its own leaf.
fn counted_together(
    state: &AppState,
    slot: &crate::auth::AgentSlot,
    client: std::net::IpAddr,
    resp: &Response,
) -> bool {
    let refused = slot.refused();
    match anonymity(slot.get().as_ref(), refused.as_ref(), resp) {
        Anonymity::Identified => false,
        Anonymity::Anonymous(credential) => {
            let now = state.node.clock.now_micros();
            // A failed sign-in: an `/auth/…` answer naming what happened, with an error.
            let sign_in_failed = resp.status().as_u16() >= 400
                && resp
                    .extensions()
                    .get::<crate::respond::AuthNote>()
                    .is_some_and(|n| n.event != "malformed");
            state.anonymous.count(
                client,
                resp.status().as_u16(),
                credential.as_deref(),
                sign_in_failed,
                now,
            ) == crate::anonymous::Record::Counted
        }
    }
}

/// Adds the client's address to a request's audit record, and the known credential that was
/// refused (an expired or revoked API token), if any.
fn note_client(record: &mut AuditRecord, client: std::net::IpAddr, slot: &crate::auth::AgentSlot) {
    record
        .fields
        .insert("address".into(), Value::String(client.to_string()));
    if let Some(r) = slot
        .refused()
        .filter(|_| !record.fields.contains_key("auth"))
    {
        record.fields.insert(
            "auth".into(),
            serde_json::json!({"token": r.id, "event": r.why}),
        );
    }
}

/// 429 for requests without credentials from an address over its anonymous budget
/// (RFC 6749 JSON on the OAuth2 endpoints, an `OperationOutcome` elsewhere).
pub(crate) fn anonymous_throttled(path: &str) -> Response {
    const WHY: &str =
        "too many requests without valid credentials from this address: wait a minute";
    let mut resp = if matches!(path, "/auth/token" | "/auth/introspect" | "/auth/revoke") {
        crate::respond::oauth_error(
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            WHY,
        )
    } else {
        ApiError::new(ErrorKind::Throttled, IssueCode::Throttled, WHY).into_response()
    };
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}
