//! The public, read-only transparency endpoints over the node's two logs (C2SP `tlog-tiles`
//! plus proof endpoints), the witness endpoints (C2SP `tlog-witness`) and the node document.
//! What they serve is computed by `medvault_node::{published, ledger, witness, node_identity}`;
//! this module only shapes HTTP: content types, cache policy, status codes.

use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_ledger::TilePath;
use medvault_node::ledger::LogId;
use medvault_node::published;
use medvault_node::witness::{self, Refusal, Witnessed};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::respond::on_node;

/// Cache policy of a transparency resource: tiles never change; the checkpoint and keys do.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const SHORT_LIVED: &str = "no-cache, max-age=1";

/// A response with its content type and (if any) cache policy.
pub(crate) fn with_headers(
    body: impl IntoResponse,
    content_type: &'static str,
    cache: Option<&'static str>,
) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(c) = cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(c));
    }
    r
}

fn text_response(body: String) -> Response {
    with_headers(body, "text/plain; charset=utf-8", Some(SHORT_LIVED))
}

/// The log named in the path (`/ledger/{log}/…`).
fn log_named(name: &str) -> Result<LogId, ApiError> {
    LogId::parse(name).ok_or_else(|| ApiError::not_found("no such log: use records or access"))
}

/// `GET /ledger/{log}/checkpoint`: the log's newest signed checkpoint, with any witness
/// cosignatures.
pub(crate) async fn get_checkpoint(
    State(state): State<AppState>,
    log: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(log) = log.map_err(crate::error::path_rejected)?;
    let log = log_named(&log)?;
    let note = on_node(&state, move |n| published::newest_checkpoint(n, log)).await?;
    Ok(text_response(note))
}

/// `GET /ledger/{log}/key`: the log's checkpoint verifier key (`vkey` form).
pub(crate) async fn get_key(
    State(state): State<AppState>,
    log: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(log) = log.map_err(crate::error::path_rejected)?;
    let log = state.node.ledger.log(log_named(&log)?);
    Ok(text_response(format!("{}\n", log.verifier().to_vkey())))
}

/// `GET /ledger/pq-cosigner/key`: the vkey (type `0x06`) of the ML-DSA-44 cosignature every
/// checkpoint of both logs carries.
pub(crate) async fn get_pq_key(State(state): State<AppState>) -> Response {
    text_response(format!("{}\n", state.node.ledger.pq_cosigner().to_vkey()))
}

/// `GET /ledger/{log}/tile/...`: hash tiles and entry bundles per C2SP `tlog-tiles`.
pub(crate) async fn get_tile(
    State(state): State<AppState>,
    parts: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((log, rest)) = parts.map_err(crate::error::path_rejected)?;
    let log = log_named(&log)?;
    let tile = TilePath::parse(&rest).map_err(|_| ApiError::not_found("no such tile"))?;
    let body = on_node(&state, move |n| published::tile(n, log, &tile)).await?;
    Ok(with_headers(
        body,
        "application/octet-stream",
        Some(IMMUTABLE),
    ))
}

/// Query of the proof endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct ProofQuery {
    index: Option<u64>,
    size: Option<u64>,
    old: Option<u64>,
    new: Option<u64>,
}

/// A proof's log and its two tree positions (`index` and `size`, or `old` and `new`); 400
/// saying `missing` when either position is not given.
fn proof_args(
    log: &str,
    first: Option<u64>,
    second: Option<u64>,
    missing: &str,
) -> Result<(LogId, u64, u64), ApiError> {
    let log = log_named(log)?;
    let (first, second) = first
        .zip(second)
        .ok_or_else(|| ApiError::bad_request(missing))?;
    Ok((log, first, second))
}

fn proof_json(proof: &[medvault_ledger::Hash]) -> Vec<Value> {
    proof.iter().map(|h| Value::String(B64.encode(h))).collect()
}

/// `GET /ledger/{log}/proof/inclusion?index=I&size=N`: the audit path of leaf `I` in the tree
/// of `N` leaves (`N` must not exceed the newest checkpoint), with the leaf entry.
pub(crate) async fn get_inclusion(
    State(state): State<AppState>,
    log: Result<Path<String>, PathRejection>,
    q: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(log) = log.map_err(crate::error::path_rejected)?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    let (log, index, size) = proof_args(&log, q.index, q.size, "give index and size")?;
    let (proof, entry) =
        on_node(&state, move |n| published::inclusion(n, log, index, size)).await?;
    Ok(Json(json!({
        "index": index,
        "size": size,
        "entry": B64.encode(entry),
        "proof": proof_json(&proof),
    }))
    .into_response())
}

/// `GET /ledger/{log}/proof/consistency?old=M&new=N`: the consistency proof between two
/// published tree sizes.
pub(crate) async fn get_consistency(
    State(state): State<AppState>,
    log: Result<Path<String>, PathRejection>,
    q: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(log) = log.map_err(crate::error::path_rejected)?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    let (log, old, new) = proof_args(&log, q.old, q.new, "give old and new")?;
    let proof = on_node(&state, move |n| published::consistency(n, log, old, new)).await?;
    Ok(Json(json!({ "old": old, "new": new, "proof": proof_json(&proof) })).into_response())
}

fn plain(status: StatusCode, body: String) -> Response {
    with_headers((status, body), "text/plain; charset=utf-8", None)
}

/// `POST /witness/add-checkpoint`: refusals (404, 403, 409, 422) are answered in plain text
/// and, like every request, recorded in this node's access log.
pub(crate) async fn add_checkpoint(State(state): State<AppState>, body: Bytes) -> Response {
    let witness_for = Arc::clone(&state.config.witness_for);
    let made = on_node(&state, move |n| {
        witness::add_checkpoint(n, &witness_for, &body)
    })
    .await;
    let refusal = match made {
        Ok(Witnessed::Cosigned(line)) => {
            // Signed by the log: not an anonymous request.
            let mut resp = plain(StatusCode::OK, line);
            resp.extensions_mut().insert(crate::anonymous::Vouched);
            return resp;
        }
        Ok(Witnessed::Refused(r)) => r,
        Err(e) => return e.into_response(),
    };
    let mut resp = match &refusal {
        Refusal::Malformed(e) => plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
        Refusal::UnknownOrigin => plain(
            StatusCode::NOT_FOUND,
            "this witness does not know that log origin\n".into(),
        ),
        Refusal::BadSignature => plain(
            StatusCode::FORBIDDEN,
            "the checkpoint carries no valid signature from the log's key\n".into(),
        ),
        Refusal::Conflict(size) => with_headers(
            (StatusCode::CONFLICT, format!("{size}\n")),
            "text/x.tlog.size",
            None,
        ),
        Refusal::Inconsistent(why) => plain(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the consistency proof does not verify: {why}\n"),
        ),
    };
    // Signed by the log: not an anonymous request, whatever the verdict.
    if refusal.signed_by_log() {
        resp.extensions_mut().insert(crate::anonymous::Vouched);
    }
    resp
}

/// `GET /witness/key`: this node's cosigner verifier key.
pub(crate) async fn get_witness_key(State(state): State<AppState>) -> Response {
    plain(
        StatusCode::OK,
        format!("{}\n", state.node.ledger.cosigner().to_vkey()),
    )
}

/// `GET /.well-known/medvault-node`: the signed node document (cached per key version).
pub(crate) async fn get_node_document(State(state): State<AppState>) -> Response {
    let published = Arc::clone(&state.node_document);
    match on_node(&state, move |n| published.get(n)).await {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => e.into_response(),
    }
}
