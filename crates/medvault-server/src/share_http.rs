//! The HTTP side of sharing between nodes (issue 7): `POST /fhir/Patient/{id}/$share` on the
//! public API, and the peer listener (mutual TLS, registered peers only) that takes bundles at
//! [`share::RECEIVE_PATH`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use medvault_core::ResourceId;
use serde_json::{Value, json};

use crate::error::{ApiError, ErrorKind, IssueCode};
use crate::peer::{self, PeerConn};
use crate::respond::{AuditExtra, AuditPatient, fhir_json, on_node};
use crate::{AppState, tls};
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_node::ops::Ctx;
use medvault_node::share::{self, BUNDLE_MEDIA_TYPE, MAX_BUNDLE_BYTES, RECEIVE_PATH};

/// The `recipient` and `purpose` of a `$share` call's `Parameters`.
fn parameters(body: &Value) -> Result<(String, String), ApiError> {
    if body["resourceType"] != "Parameters" {
        return Err(ApiError::bad_request(
            "$share takes a Parameters resource with recipient (a registered peer's node id) and purpose (e.g. TREAT)",
        ));
    }
    let find = |name: &str| {
        body["parameter"].as_array().and_then(|ps| {
            ps.iter().find(|p| p["name"] == name).and_then(|p| {
                ["valueString", "valueCode", "valueId"]
                    .iter()
                    .find_map(|k| p[*k].as_str())
            })
        })
    };
    let recipient = find("recipient")
        .ok_or_else(|| ApiError::bad_request("the recipient parameter is required"))?;
    let purpose = find("purpose")
        .ok_or_else(|| ApiError::bad_request("the purpose parameter is required"))?;
    share::check_purpose(purpose)?;
    Ok((recipient.to_owned(), purpose.to_owned()))
}

/// The diagnostics of a peer's `OperationOutcome`, one short line without control characters.
fn peer_message(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = v["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("no explanation given");
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

fn gateway(message: String) -> ApiError {
    ApiError::new(ErrorKind::PeerFailed, IssueCode::Transient, message)
}

/// `POST /fhir/Patient/{id}/$share`: seals what the requester may read of the patient and the
/// patient's consent lets go to the recipient, delivers it over mutual TLS, checks the signed
/// receipt, and answers with both ledgers' leaves.
pub(crate) async fn share(
    state: AppState,
    ctx: Ctx,
    patient: ResourceId,
    body: &Value,
    declared: Option<String>,
    agent: Value,
) -> Result<Response, ApiError> {
    let (to, purpose) = parameters(body)?;
    // The data was read under the request's purpose of use (break-glass data under ETREAT):
    // it leaves under that purpose and no other.
    if let Some(d) = declared
        && d != purpose
    {
        return Err(ApiError::bad_request(format!(
            "the purpose parameter ({purpose}) must be the request's purpose of use ({d})"
        )));
    }
    let id = patient.clone();
    let agent2 = agent.clone();
    let (out, tls) = on_node(&state, move |node| {
        let out = share::prepare(
            node,
            &ctx,
            &id,
            &to,
            &purpose,
            share::ONLINE_VALIDITY,
            &agent2,
        )?;
        let tls = peer::client_config(&out.sender, out.peer_document.signing.ed25519)
            .map_err(|e| ApiError::internal(&e))?;
        Ok((out, tls))
    })
    .await?;
    let (result, extra) = tokio::spawn(deliver(state, out, tls, agent))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut resp = result.unwrap_or_else(axum::response::IntoResponse::into_response);
    resp.extensions_mut()
        .insert(AuditExtra(json!({"share": extra})));
    resp.extensions_mut()
        .insert(AuditPatient(patient.to_string()));
    Ok(resp)
}

/// Delivers a sealed share and records the receipt: run as its own task, so it finishes (and
/// the sender's ledger cites the receiver's leaf) even if the requester goes away meanwhile.
async fn deliver(
    state: AppState,
    out: share::Outgoing,
    tls: Arc<rustls::ClientConfig>,
    agent: Value,
) -> (Result<Response, ApiError>, Value) {
    let mut extra = json!({
        "id": out.header.id,
        "to": out.peer.node,
        "senderLeaf": out.header.sender_leaf,
        "resources": out.resources,
        "withheld": out.withheld,
    });
    let deliver = || {
        peer::post(
            &out.peer.url,
            RECEIVE_PATH,
            BUNDLE_MEDIA_TYPE,
            out.bytes.clone(),
            Arc::clone(&tls),
        )
    };
    // One retry, with the same bundle: if the first attempt was imported and only the answer
    // was lost, the retry is a replay answered with the receipt given then.
    let answer = match deliver().await {
        Err(e) => {
            tracing::debug!(error = %e, "delivery failed; retrying once");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            deliver().await
        }
        ok => ok,
    };
    // A receipt answers 200 (imported now) or 409 (imported by an earlier attempt).
    let receipt_of = |a: &peer::Answer| {
        let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        (matches!(a.status, 200 | 409) && v["format"] == share::RECEIPT_FORMAT).then_some(v)
    };
    let result = match answer {
        Err(e) => Err(gateway(format!(
            "the bundle could not be delivered to {}: {e}",
            out.peer.node
        ))),
        Ok(a) if let Some(receipt) = receipt_of(&a) => {
            match share::check_receipt(&receipt, &out.peer_document, &out.header, &out.bytes) {
                Err(why) => Err(gateway(format!(
                    "{} answered with an unusable receipt: {why}",
                    out.peer.node
                ))),
                Ok(peer_leaf) => {
                    let (header, n) = (out.header.clone(), out.resources as u64);
                    let delivered = match on_node(&state, move |node| {
                        share::record_receipt(node, &header, peer_leaf, n, &agent)
                    })
                    .await
                    {
                        Ok(leaf) => leaf,
                        Err(e) => return (Err(e), extra),
                    };
                    extra["recipientLeaf"] = json!(peer_leaf);
                    extra["deliveredLeaf"] = json!(delivered);
                    let p = |name: &str, v: Value| {
                        let mut o = json!({"name": name});
                        let key = if v.is_string() {
                            "valueString"
                        } else {
                            "valueInteger"
                        };
                        o[key] = v;
                        o
                    };
                    Ok(fhir_json(
                        StatusCode::OK,
                        &json!({
                            "resourceType": "Parameters",
                            "parameter": [
                                p("bundle", json!(out.header.id)),
                                p("recipient", json!(out.peer.node)),
                                p("resources", json!(out.resources)),
                                p("withheld", json!(out.withheld)),
                                p("senderLeaf", json!(out.header.sender_leaf)),
                                p("recipientLeaf", json!(peer_leaf)),
                                p("deliveredLeaf", json!(delivered)),
                            ],
                        }),
                    ))
                }
            }
        }
        Ok(a) if a.status == 200 => Err(gateway(format!(
            "{} answered without a receipt",
            out.peer.node
        ))),
        Ok(a) => Err(gateway(format!(
            "{} refused the bundle ({}): {}",
            out.peer.node,
            a.status,
            peer_message(&a.body)
        ))),
    };
    (result, extra)
}

/// Bundles being imported at once, at most.
static IMPORTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// Time a peer has to send its bundle.
/// Time a peer has to send its bundle (the sender waits longer for the answer, so an import
/// does not finish after the sender gave up: see `peer::ANSWER_TIMEOUT`).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// True if reading a body failed because it was over the limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `POST /peer/bundles` on the peer listener: the TLS client is a registered peer (checked in
/// the handshake); the bundle is checked and imported by [`share::receive`].
pub(crate) async fn receive(
    State(state): State<AppState>,
    ConnectInfo(conn): ConnectInfo<PeerConn>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let refused = |r: &share::Refusal, leaf: Option<u64>| {
        let mut resp = ApiError::from(r.to_error()).into_response();
        resp.extensions_mut().insert(AuditExtra(
            json!({"share_receive": {"refused": r.code(), "leaf": leaf}}),
        ));
        resp
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != BUNDLE_MEDIA_TYPE {
        return ApiError::new(
            ErrorKind::UnsupportedMediaType,
            IssueCode::NotSupported,
            format!("send the sealed bundle as {BUNDLE_MEDIA_TYPE}"),
        )
        .into_response();
    }
    // Client authentication is mandatory on this listener; never go on without the key.
    let Some(key) = conn.key else {
        return ApiError::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "a registered peer's client certificate is required",
        )
        .into_response();
    };
    // Two imports at a time at most (each holds its bundle several times over in memory); a
    // third is told to come back rather than queue. The permit moves into the blocking task,
    // so a sender that disconnects does not free it while its import still runs.
    let Ok(permit) = IMPORTS.try_acquire() else {
        return ApiError::new(
            ErrorKind::Unavailable,
            IssueCode::Transient,
            "this node is importing other bundles; send again in a moment",
        )
        .into_response();
    };
    let read = tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(request.into_body(), MAX_BUNDLE_BYTES),
    )
    .await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if is_length_limit(&e) => return refused(&share::Refusal::TooLarge, None),
        Ok(Err(_)) | Err(_) => {
            return ApiError::bad_request("the bundle could not be read in time").into_response();
        }
    };
    let node = Arc::clone(&state.node);
    // A peer's delivery is imported on the node's authority (the receiver confines it).
    let ctx = state.services.unrestricted_node_work();
    let agent = json!({
        "peer_key": conn.key.map(hex::encode),
        "address": conn.addr.ip().to_string(),
    });
    let done = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        share::receive(&node, &ctx, &bytes, Some(key), &agent)
    })
    .await;
    state.facts.invalidate();
    match done {
        Ok(Ok(imported)) => {
            let mut resp = axum::Json(imported.receipt).into_response();
            resp.extensions_mut()
                .insert(AuditExtra(json!({"share_receive": {
                    "id": imported.header.id,
                    "from": imported.header.sender.node,
                    "senderLeaf": imported.header.sender_leaf,
                    "leaf": imported.leaf,
                    "resources": imported.resources,
                }})));
            resp.extensions_mut().insert(AuditPatient(imported.patient));
            resp
        }
        // A replay of a bundle imported before: 409, with the receipt given then.
        Ok(Err(share::Refused {
            refusal,
            leaf,
            earlier_receipt: Some(receipt),
        })) => {
            let mut resp = (StatusCode::CONFLICT, axum::Json(receipt)).into_response();
            resp.extensions_mut().insert(AuditExtra(
                json!({"share_receive": {"refused": refusal.code(), "leaf": leaf, "receiptAgain": true}}),
            ));
            resp
        }
        Ok(Err(r)) => refused(&r.refusal, r.leaf),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// Refused handshakes recorded per minute at most (the rest are counted into the next record),
/// so a scanner cannot flood the access log.
const REFUSALS_PER_MINUTE: u32 = 30;

/// Records refused peer handshakes (an unregistered node, a client without a certificate, a
/// scanner) in the access log, from a task fed through a bounded channel.
pub(crate) fn refusal_recorder(state: &AppState) -> tls::RefusedHook {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(SocketAddr, String)>(64);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&dropped);
    let state = state.clone();
    tokio::spawn(async move {
        let mut window = (std::time::Instant::now(), 0u32);
        loop {
            // Wakes at least once a minute, so refusals counted past the limit get recorded
            // even when no further one comes.
            let next = tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv()).await;
            if window.0.elapsed() >= std::time::Duration::from_secs(60) {
                window = (std::time::Instant::now(), 0);
            }
            let (address, reason) = match next {
                Ok(None) => return,
                Ok(Some((addr, why))) => {
                    if window.1 >= REFUSALS_PER_MINUTE {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    let reason: String =
                        why.chars().filter(|c| !c.is_control()).take(200).collect();
                    (Some(addr.ip().to_string()), Some(reason))
                }
                Err(_) if counted.load(std::sync::atomic::Ordering::Relaxed) > 0 => (None, None),
                Err(_) => continue,
            };
            window.1 += 1;
            let recorded = state
                .node
                .record_audit_now_async(|now| {
                    AuditRecord::new(
                        AuditKind::Share,
                        now,
                        "peer-handshake-refused",
                        AuditOutcome::Denied,
                    )
                    .agent(json!({"address": address}))
                    .with("reason", reason)
                    .with(
                        "not_recorded_before",
                        counted.swap(0, std::sync::atomic::Ordering::Relaxed),
                    )
                })
                .await;
            if let Err(e) = recorded {
                tracing::warn!(error = %e.message, "recording a refused peer handshake failed");
            }
        }
    });
    Arc::new(move |addr, why| {
        if tx.try_send((addr, why)).is_err() {
            dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
}
