//! Bulk Data Access v2 over HTTP: the kick-off (`$export` at system, `Patient` and `Group`
//! level), the status URL (`GET` polls, `DELETE` cancels), and the output files. The jobs
//! themselves are `medvault_node::bulk`'s.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medvault_node::bulk::{self, KickOff, Level, Status};
use medvault_node::error::{ErrorKind, IssueCode};
use medvault_node::identity::Authenticated;
use medvault_node::ops::Ctx;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::respond::{AuditExtra, blocking, fhir_json};

/// Who owns a job: the app (its client id) for OAuth tokens, else the credential's id (an API
/// token's, or the user's for a session), so a backend service keeps its jobs across the
/// short-lived access tokens it fetches.
pub(crate) fn owner(who: &Authenticated) -> String {
    who.client
        .as_ref()
        .map_or_else(|| who.token_id.clone(), |c| format!("client:{c}"))
}

fn agent(who: &Authenticated) -> Value {
    json!({"token": who.token_id, "role": who.role.as_str(), "client": who.client})
}

/// `Prefer: respond-async`, which a Bulk Data kick-off must send.
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// 202 for a job kicked off: `text` as an OperationOutcome, the status URL in
/// `Content-Location`, `note` for the access log.
fn accepted(id: &str, base: &str, text: &str, note: Value) -> Response {
    let mut resp = fhir_json(
        StatusCode::ACCEPTED,
        &medvault_node::error::operation_outcome(
            "information",
            IssueCode::Informational,
            text,
            &[],
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/$export-status/{id}")) {
        resp.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    resp.extensions_mut().insert(AuditExtra(note));
    resp
}

/// `$export` kick-off: 202 with the status URL in `Content-Location`.
#[allow(clippy::too_many_arguments)] // the request's parts, as the dispatcher holds them
pub(crate) async fn kick_off(
    state: &AppState,
    who: &Authenticated,
    job_ctx: Ctx,
    level: Level,
    mut params: Vec<(String, String)>,
    headers: &HeaderMap,
    body: &Bytes,
    request: String,
    base: &str,
) -> Result<Response, ApiError> {
    if who.patient.is_some() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "Bulk Data export is for systems and staff, not patient sessions or apps",
        ));
    }
    let prefer_async = prefers_async(headers);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    bulk::check_kick_off_headers(prefer_async, accept)?;
    if !body.is_empty() {
        let json = crate::http::json_body(headers, body)?;
        params.extend(crate::http::parameters_as_pairs(&json)?);
    }
    let plan = KickOff::parse(&job_ctx, level, &params, request)?;
    let (exports, node) = (
        std::sync::Arc::clone(&state.exports),
        std::sync::Arc::clone(&state.node),
    );
    let (owner, agent) = (owner(who), agent(who));
    let id = blocking(move || exports.kick_off(node, job_ctx, owner, agent, plan)).await?;
    Ok(accepted(
        &id,
        base,
        "export started: poll the URL in Content-Location",
        json!({"export": id}),
    ))
}

/// `GET` of a status URL: 202 with `X-Progress` and `Retry-After` while running, the manifest
/// when done.
pub(crate) fn status(
    state: &AppState,
    who: &Authenticated,
    id: &str,
    base: &str,
) -> Result<Response, ApiError> {
    match state
        .exports
        .status(&owner(who), id, &format!("{base}/$export-file"))?
    {
        Status::Running(progress) => {
            let mut resp = StatusCode::ACCEPTED.into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                h.insert("x-progress", v);
            }
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            Ok(resp)
        }
        Status::Complete(manifest) => {
            let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
            let mut resp = (StatusCode::OK, bytes).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.extensions_mut()
                .insert(AuditExtra(json!({"export": id})));
            Ok(resp)
        }
    }
}

/// `DELETE` of a status URL: the job is cancelled (or its files deleted).
pub(crate) fn cancel(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<Response, ApiError> {
    state.exports.delete(&owner(who), id)?;
    let mut resp = fhir_json(
        StatusCode::ACCEPTED,
        &medvault_node::error::operation_outcome(
            "information",
            IssueCode::Informational,
            "export deleted",
            &[],
        ),
    );
    resp.extensions_mut()
        .insert(AuditExtra(json!({"export": id, "deleted": true})));
    Ok(resp)
}

/// One output file, as `application/fhir+ndjson`; its access-log record names the job, the
/// file and how many resources it held.
pub(crate) async fn file(
    state: &AppState,
    who: &Authenticated,
    id: String,
    name: String,
) -> Result<Response, ApiError> {
    let (exports, owner) = (std::sync::Arc::clone(&state.exports), owner(who));
    let (job, file) = (id.clone(), name.clone());
    let (bytes, rtype, count) = blocking(move || exports.file(&owner, &job, &file)).await?;
    let mut resp = (StatusCode::OK, bytes.to_vec()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+ndjson"),
    );
    resp.extensions_mut().insert(AuditExtra(
        json!({"export": id, "file": name, "type": rtype, "resources": count}),
    ));
    Ok(resp)
}

/// `POST /fhir/$import` (Bulk Data import, "ping and pull"): a `Parameters` body naming
/// ndjson `input`s (`type`, `url`: https, or http on loopback); 202 with the status URL. Admins
/// and services only; each input is fetched and loaded as one transaction, decided as the
/// requester's writes.
#[allow(clippy::too_many_arguments)] // the request's parts, as the dispatcher holds them
pub(crate) async fn import(
    state: &AppState,
    who: &Authenticated,
    job_ctx: Ctx,
    headers: &HeaderMap,
    body: &Bytes,
    request: String,
    base: &str,
) -> Result<Response, ApiError> {
    use medvault_core::Role;
    if !matches!(who.role, Role::Admin | Role::Service) {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "Bulk Data import is for admins and services",
        ));
    }
    let prefer_async = prefers_async(headers);
    if !prefer_async {
        return Err(ApiError::bad_request(
            "$import runs asynchronously: send Prefer: respond-async",
        ));
    }
    let json = crate::http::json_body(headers, body)?;
    let inputs = import_inputs(&json)?;
    let (exports, node) = (
        std::sync::Arc::clone(&state.exports),
        std::sync::Arc::clone(&state.node),
    );
    let (owner, agent) = (owner(who), agent(who));
    let fetch: std::sync::Arc<dyn bulk::Fetch> =
        std::sync::Arc::new(crate::subscription_http::HttpDeliver::new());
    let plan = bulk::ImportPlan {
        inputs,
        request,
        fetch,
    };
    let id = blocking(move || exports.kick_off_import(node, job_ctx, owner, agent, plan)).await?;
    Ok(accepted(
        &id,
        base,
        "import started: poll the URL in Content-Location",
        json!({"import": id}),
    ))
}

/// Most inputs one import names.
const MAX_IMPORT_INPUTS: usize = 100;

/// The `input`s of an import's Parameters (`inputFormat` must be ndjson).
fn import_inputs(body: &Value) -> Result<Vec<bulk::ImportInput>, ApiError> {
    let bad = |text: &str| ApiError::bad_request(format!("$import: {text}"));
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("the body must be a Parameters resource"));
    }
    let value = |p: &Value| {
        p.as_object().and_then(|o| {
            o.iter()
                .find(|(k, _)| k.starts_with("value"))
                .and_then(|(_, v)| v.as_str().map(str::to_owned))
        })
    };
    let mut inputs = Vec::new();
    for p in body
        .get("parameter")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match p.get("name").and_then(Value::as_str) {
            Some("inputFormat") => {
                let f = value(p).unwrap_or_default();
                if !["application/fhir+ndjson", "application/ndjson", "ndjson"]
                    .contains(&f.as_str())
                {
                    return Err(bad("inputFormat must be application/fhir+ndjson"));
                }
            }
            Some("inputSource" | "storageDetail" | "mode") => {}
            Some("input") => {
                let parts = p
                    .get("part")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("an input needs parts type and url"))?;
                let part = |name: &str| {
                    parts
                        .iter()
                        .find(|x| x.get("name").and_then(Value::as_str) == Some(name))
                        .and_then(value)
                };
                let url = part("url").ok_or_else(|| bad("an input needs a url"))?;
                medvault_node::subscriptions::check_endpoint(&url)?;
                inputs.push(bulk::ImportInput {
                    rtype: part("type"),
                    url,
                });
            }
            _ => return Err(bad("unknown parameter (inputFormat, inputSource, input)")),
        }
    }
    if inputs.is_empty() || inputs.len() > MAX_IMPORT_INPUTS {
        return Err(bad("name between 1 and 100 inputs"));
    }
    Ok(inputs)
}
