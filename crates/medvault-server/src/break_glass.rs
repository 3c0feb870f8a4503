//! Break-glass: emergency access to one patient's records outside the care relationships the
//! policy knows, for emergency treatment.
//!
//! A clinician or nurse, signed in with a second factor within the step-up window, opens it with
//! `POST /auth/break-glass` `{"patient": ID, "reason": TEXT, "minutes": N}`: a written
//! justification (at least [`MIN_REASON`] characters) and a time box (default
//! [`DEFAULT_MINUTES`], at most the configured maximum). Requests that declare the purpose
//! `X-Purpose-Of-Use: ETREAT` may then read that patient's records, through the policy's
//! `break-glass` rule, until it expires. The opening is recorded in the access log with its
//! justification (sealed, as every audit detail is), every request it opens is marked in the
//! access log, and it raises an alert the privacy officer reviews and acknowledges
//! (`GET /privacy/alerts`, `POST /privacy/alerts/{id}/acknowledge`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use medvault_core::{ResourceId, Role};
use medvault_store::{AlertRow, BreakGlassRow, write_with};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::http::{AuditExtra, AuditPatient};
use crate::identity;
use medvault_node::clock::instant;

/// Shortest justification accepted.
pub const MIN_REASON: usize = 20;
/// Longest justification accepted.
pub const MAX_REASON: usize = 2000;
/// Time box when none is asked for, minutes.
pub const DEFAULT_MINUTES: u64 = 60;
/// The sealing context of alert details (bound to the alert id).
const ALERT_FIELD: &str = "alert";

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

fn random_id(prefix: &str) -> Result<String, ApiError> {
    let mut raw = [0u8; 12];
    medvault_crypto::random_fill(&mut raw).map_err(|e| ApiError::internal(&e))?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}

/// `POST /auth/break-glass`.
pub(crate) async fn open(
    State(state): State<AppState>,
    who: Authenticated,
    body: Result<Json<OpenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let now = state.node.clock.now_micros();
    if let Err(r) = crate::gates::step_up(
        &who,
        &[Role::Clinician, Role::Nurse],
        "a clinician or nurse",
        now,
        state.config.step_up_window,
    ) {
        return r.into_response();
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
    let reason = req.reason.trim().to_owned();
    let chars = reason.chars().count();
    // Only visible characters count toward the minimum; control characters are refused.
    let visible = reason
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .count();
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
        || visible < MIN_REASON
        || chars > MAX_REASON
    {
        return ApiError::bad_request(format!(
            "the justification must be {MIN_REASON} to {MAX_REASON} visible characters (no control characters): say what the emergency is"
        ))
        .into_response();
    }
    let max = state.config.break_glass_max.as_secs() / 60;
    let minutes = req.minutes.unwrap_or(DEFAULT_MINUTES.min(max));
    if minutes == 0 || minutes > max {
        return ApiError::bad_request(format!("minutes must be 1 to {max}")).into_response();
    }
    let node = Arc::clone(&state.node);
    let user = who.token_id.clone();
    let patient_id = patient.to_string();
    let expires = now.saturating_add(i64::try_from(minutes * 60_000_000).unwrap_or(i64::MAX));
    let opened = crate::http::blocking(move || {
        // A grant for no patient would be an alert about nothing.
        if node
            .store
            .current("Patient", &patient_id)?
            .is_none_or(|c| c.deleted)
        {
            return Err(ApiError::not_found("no such patient").into());
        }
        let key = identity::identity_key(&node)?;
        let grant_id = random_id("bg_")?;
        let alert_id = random_id("alr_")?;
        let detail = json!({
            "grant": grant_id,
            "reason": reason,
            "expires": instant(expires),
            "purpose": medvault_node::authz::EMERGENCY,
        });
        let detail_bytes = zeroize::Zeroizing::new(detail.to_string().into_bytes());
        let grant = BreakGlassRow {
            id: grant_id.clone(),
            user_id: user.clone(),
            patient: patient_id.clone(),
            reason: identity::seal(&key, &grant_id, "reason", reason.as_bytes())?,
            opened_micros: now,
            expires_micros: expires,
        };
        let alert = AlertRow {
            id: alert_id.clone(),
            kind: "break-glass".into(),
            at_micros: now,
            user_id: user,
            patient: Some(patient_id),
            detail: identity::seal(&key, &alert_id, ALERT_FIELD, &detail_bytes)?,
            acknowledged_by: None,
            acknowledged_micros: None,
        };
        write_with(node.store.as_ref(), move |tx| {
            tx.put_break_glass(&grant)?;
            tx.put_alert(&alert)
        })?;
        Ok((grant_id, alert_id, detail))
    })
    .await;
    let (grant, alert, detail) = match opened {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "grant": grant,
            "patient": patient.as_str(),
            "expires": instant(expires),
            "purpose_required": medvault_node::authz::EMERGENCY,
            "alert": alert,
        })),
    )
        .into_response();
    resp.extensions_mut()
        .insert(AuditPatient(patient.to_string()));
    resp.extensions_mut()
        .insert(AuditExtra(json!({"break_glass": detail, "alert": alert})));
    resp
}

fn privacy_officer(who: &Authenticated) -> Result<(), ApiError> {
    crate::gates::privacy_officer(who).map_err(crate::gates::Refusal::into_api_error)
}

/// `GET /privacy/alerts` query.
#[derive(Debug, Deserialize)]
pub(crate) struct AlertQuery {
    #[serde(default)]
    all: bool,
}

/// `GET /privacy/alerts[?all=true]`: open alerts (or all), newest first, with their details.
pub(crate) async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    Query(q): Query<AlertQuery>,
) -> Response {
    if let Err(e) = privacy_officer(&who) {
        return e.into_response();
    }
    let node = Arc::clone(&state.node);
    let listed = crate::http::blocking(move || {
        let key = identity::identity_key(&node)?;
        let mut out = Vec::new();
        for a in node.store.alerts(!q.all)? {
            let plain = identity::open(&key, &a.id, ALERT_FIELD, &a.detail)?;
            let detail: Value =
                serde_json::from_slice(&plain).map_err(|e| ApiError::internal(&e))?;
            out.push(json!({
                "id": a.id,
                "kind": a.kind,
                "time": instant(a.at_micros),
                "user": a.user_id,
                "patient": a.patient,
                "detail": detail,
                "acknowledged_by": a.acknowledged_by,
                "acknowledged": a.acknowledged_micros.map(instant),
            }));
        }
        Ok(out)
    })
    .await;
    match listed {
        Ok(alerts) => Json(json!({"alerts": alerts})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /privacy/alerts/{id}/acknowledge`.
pub(crate) async fn acknowledge(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = privacy_officer(&who) {
        return e.into_response();
    }
    let node = Arc::clone(&state.node);
    let (by, at) = (who.token_id.clone(), state.node.clock.now_micros());
    let alert = id.clone();
    let done = crate::http::blocking(move || {
        Ok(write_with(node.store.as_ref(), move |tx| {
            tx.acknowledge_alert(&alert, &by, at)
        })?)
    })
    .await;
    match done {
        Ok(true) => Json(json!({"acknowledged": id})).into_response(),
        Ok(false) => ApiError::not_found("no open alert with that id").into_response(),
        Err(e) => e.into_response(),
    }
}
