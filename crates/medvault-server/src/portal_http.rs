//! The patient portal (GDPR Art. 15–21, HIPAA §164.528 for the patient themself):
//!
//! - `GET /portal/ui` (+ `portal.js`): the page. It signs in itself and then uses the patient's
//!   own FHIR access — `GET /fhir/AuditEvent` (who accessed my record and why),
//!   `GET|POST|PUT /fhir/Consent` (my consents), `POST /fhir/Patient/{id}/$object-to-research`,
//!   `GET /fhir/Patient/{id}/$export-my-data` — and the two calls below.
//! - `GET /portal/requests`: the patient's own requests with their deadlines, and whether a
//!   restriction of processing is in force.
//! - `POST /portal/requests` `{"right": "erasure"|"restriction"|"rectification"|"objection",
//!   "note"?}`: asks the organisation to act (answered by staff within a month).
//!
//! Only a patient's own session with a second factor reaches these (never an app's token).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::Response;
use medvault_compliance::subject::{self, Right};
use medvault_core::ResourceId;
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates::{self, Refusal};
use serde::Deserialize;

use crate::AppState;
use crate::compliance_http::{agent, node_error, private_json};
use crate::error::ApiError;
use crate::respond::{on_node, page_response};

/// `GET /portal/ui`: the patient portal (it signs in itself; no data without a session).
pub(crate) async fn page() -> Response {
    page_response(include_str!("ui/portal.html"), "text/html; charset=utf-8")
}

/// `GET /portal/ui/portal.js`.
pub(crate) async fn page_script() -> Response {
    page_response(
        include_str!("ui/portal.js"),
        "text/javascript; charset=utf-8",
    )
}

fn own_patient(who: &Authenticated) -> Result<ResourceId, ApiError> {
    let id = gates::own_portal(who).map_err(|r| ApiError::from(Refusal::into_error(r)))?;
    ResourceId::new(id).map_err(|_| ApiError::not_found("no such patient"))
}

/// `GET /portal/requests`.
pub(crate) async fn list(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Response, ApiError> {
    let patient = own_patient(&who)?;
    let out = on_node(&state, move |node| {
        subject::own_requests(node, &patient).map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &out))
}

/// A patient's request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OwnRequest {
    right: String,
    note: Option<String>,
}

/// `POST /portal/requests`.
pub(crate) async fn open(
    State(state): State<AppState>,
    who: Authenticated,
    b: Result<Json<OwnRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let patient = own_patient(&who)?;
    let Ok(Json(r)) = b else {
        return Err(ApiError::bad_request(
            "send {\"right\": \"erasure\"|\"restriction\"|\"rectification\"|\"objection\", \"note\": TEXT} as application/json",
        ));
    };
    let (by, agent) = (who.token_id.clone(), agent(&who));
    let entry = on_node(&state, move |node| {
        let right = Right::parse(&r.right).map_err(node_error)?;
        subject::open_own_request(node, &patient, right, r.note.as_deref(), &by, &agent)
            .map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::CREATED, &entry))
}
