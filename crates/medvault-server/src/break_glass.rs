//! Break-glass over HTTP: `POST /auth/break-glass` opens emergency access to one patient's
//! records, `GET /privacy/alerts` and `POST /privacy/alerts/{id}/acknowledge` are the privacy
//! officer's review. The rules (justification, time box, the alert) are the node's
//! ([`medvault_node::identity::break_glass`]); this module gates, reads the requests and shapes
//! the answers and their access-log records.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use medvault_core::{ResourceId, Role};
use medvault_node::clock::instant;
use medvault_node::identity::Authenticated;
use medvault_node::identity::break_glass;
use medvault_node::identity::gates::{self, Refusal};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::respond::{AuditExtra, AuditPatient, on_node, refusal_response};

/// `POST /auth/break-glass` body.
#[derive(Deserialize)]
pub(crate) struct OpenRequest {
    patient: String,
    reason: String,
    #[serde(default)]
    minutes: Option<u64>,
}

impl std::fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenRequest(<redacted>)")
    }
}

/// `POST /auth/break-glass`.
pub(crate) async fn open(
    State(state): State<AppState>,
    who: Authenticated,
    body: Result<Json<OpenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let now = state.node.clock.now_micros();
    if let Err(r) = gates::step_up(
        &who,
        &[Role::Clinician, Role::Nurse],
        "a clinician or nurse",
        now,
        state.config.step_up_window,
    ) {
        return refusal_response(r);
    }
    let Ok(Json(req)) = body else {
        return ApiError::bad_request(
            "send {\"patient\": ID, \"reason\": TEXT, \"minutes\": N} as application/json",
        )
        .into_response();
    };
    let Ok(patient) = ResourceId::new(&req.patient) else {
        return ApiError::bad_request("patient must be the Patient resource's id").into_response();
    };
    let user = who.token_id.clone();
    let max = state.config.break_glass_max;
    let p = patient.clone();
    let opened = on_node(&state, move |node| {
        break_glass::open(node, &user, &p, &req.reason, req.minutes, max, now)
    })
    .await;
    let opened = match opened {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "grant": opened.grant,
            "patient": patient.as_str(),
            "expires": instant(opened.expires_micros),
            "purpose_required": medvault_node::authz::EMERGENCY,
            "alert": opened.alert,
        })),
    )
        .into_response();
    resp.extensions_mut()
        .insert(AuditPatient(patient.to_string()));
    resp.extensions_mut().insert(AuditExtra(
        json!({"break_glass": opened.detail, "alert": opened.alert}),
    ));
    resp
}

fn privacy_officer(who: &Authenticated) -> Result<(), ApiError> {
    gates::privacy_officer(who).map_err(|r| Refusal::into_error(r).into())
}

/// `GET /privacy/alerts` query.
#[derive(Debug, Deserialize)]
pub(crate) struct AlertQuery {
    #[serde(default)]
    all: bool,
    /// Only alerts of this kind (`break-glass`, `sentinel`).
    #[serde(default)]
    kind: Option<String>,
}

/// `GET /privacy/alerts[?all=true][&kind=K]`: open alerts (or all), newest first, with their
/// details; only those of kind `K` when given.
pub(crate) async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // The role first: a refused caller learns nothing, not even the query's shape.
    privacy_officer(&who)?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    let mut alerts = on_node(&state, move |node| break_glass::list_alerts(node, !q.all)).await?;
    if let Some(kind) = &q.kind {
        alerts.retain(|a| a["kind"].as_str() == Some(kind.as_str()));
    }
    Ok(Json(json!({"alerts": alerts})).into_response())
}

/// `POST /privacy/alerts/{id}/acknowledge`.
pub(crate) async fn acknowledge(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(crate::error::path_rejected)?;
    privacy_officer(&who)?;
    let (by, at) = (who.token_id.clone(), state.node.clock.now_micros());
    let alert = id.clone();
    let done = on_node(&state, move |n| {
        break_glass::acknowledge_alert(n, &alert, &by, at)
    })
    .await?;
    if done {
        Ok(Json(json!({"acknowledged": id})).into_response())
    } else {
        Err(ApiError::not_found("no open alert with that id"))
    }
}
