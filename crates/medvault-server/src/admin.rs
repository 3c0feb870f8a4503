//! Sensitive administration, shared by the CLI (`medvault keys rotate`, `medvault patient erase`)
//! and the API (`POST /admin/keys/rotate`, `POST /admin/patients/{id}/erase`).
//!
//! Over the API these need a person: an admin's login session that used a second factor and
//! was opened (by signing in again) within the configured window (default [`STEP_UP_WINDOW`]);
//! otherwise
//! the answer is 401 with `WWW-Authenticate: Bearer error="insufficient_user_authentication"`
//! and `max_age` (RFC 9470). API tokens and app tokens cannot do these at all.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use medvault_core::{ResourceId, Role};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::respond::{AuditPatient, on_node, refusal_response};
use medvault_node::admin::rotate_keys;
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates;

pub use crate::state::STEP_UP_WINDOW;

/// The step-up gate of these actions: an admin who signed in with a second factor within the
/// configured window.
pub(crate) fn admin_step_up(state: &AppState, who: &Authenticated) -> Result<(), gates::Refusal> {
    gates::step_up(
        who,
        &[Role::Admin],
        "an admin",
        state.node.clock.now_micros(),
        state.config.step_up_window,
    )
}

/// `POST /admin/keys/rotate` (step-up required).
pub(crate) async fn rotate(State(state): State<AppState>, who: Authenticated) -> Response {
    if let Err(r) = admin_step_up(&state, &who) {
        return refusal_response(r);
    }
    match on_node(&state, |node| rotate_keys(node, |_, _| {})).await {
        Ok((version, n)) => Json(json!({"kek_version": version, "rewrapped": n})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /admin/patients/{id}/erase` (step-up required).
/// `?request=dsr_…`: the erasure request the erasure answers.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EraseQuery {
    request: Option<String>,
}

pub(crate) async fn erase(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<EraseQuery>, QueryRejection>,
) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(e) => return crate::error::path_rejected(e).into_response(),
    };
    if let Err(r) = admin_step_up(&state, &who) {
        return refusal_response(r);
    }
    let Ok(id) = ResourceId::new(&id) else {
        return ApiError::bad_request("not a FHIR id").into_response();
    };
    let request = match q {
        Ok(Query(q)) => q.request,
        Err(e) => return crate::error::query_rejected(e).into_response(),
    };
    let patient = id.to_string();
    let (by, agent) = (who.token_id.clone(), crate::compliance_http::agent(&who));
    let erased = on_node(&state, move |node| {
        medvault_compliance::erasure::erase(node, &id, request.as_deref(), &by, &agent)
            .map_err(crate::compliance_http::node_error)
    })
    .await;
    // No care-team or consent content of the erased patient stays in memory.
    state.facts.invalidate();
    let mut r = match erased {
        Ok(Some(certificate)) => Json(json!({
            "erased": true,
            "resources": certificate["destroyed"]["resources"],
            "certificate": certificate,
        }))
        .into_response(),
        Ok(None) => Json(json!({"erased": true, "already": true})).into_response(),
        Err(e) => e.into_response(),
    };
    // The access log names the patient whose records were shredded.
    r.extensions_mut().insert(AuditPatient(patient));
    r
}
