//! Data subjects' rights over HTTP (medvault-compliance's `subject`):
//!
//! - `GET /fhir/Patient/{id}/$export-my-data`: the patient themself, in their own session: the
//!   signed export of their record, disclosures and processing (an access request is opened
//!   and answered with it).
//! - `GET|POST /admin/subjects/requests`: the requests register (`{"patient", "right",
//!   "note"?}` opens one, due in a month); `GET /admin/subjects/requests/{id}`;
//!   `POST /admin/subjects/requests/{id}/answer` `{"outcome": "answered"|"refused", "note"}`;
//!   `POST /admin/subjects/requests/{id}/export`: an admin (fresh sign-in with a second
//!   factor) answering an access or portability request with the patient's signed export.
//!
//! - `POST /admin/patients/{id}/hold`, `GET /admin/holds`, `POST /admin/holds/{id}/release`:
//!   legal holds; `POST /admin/patients/{id}/restrict`, `GET /admin/restrictions`,
//!   `POST /admin/restrictions/{id}/lift`: restrictions of processing (GDPR Art. 18).
//!
//! The register is for admins and privacy officers (auditors read it), with a second factor in
//! a session or with an API token.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use medvault_compliance::flags::{self, Flag};
use medvault_compliance::subject::{self, Requester, Right};
use medvault_core::ResourceId;
use medvault_node::ctx::Ctx;
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates::{self, Refusal};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::compliance_http::{PageQuery, agent, node_error, private_json, register_id};
use crate::error::ApiError;
use crate::respond::on_node;

fn gate(who: &Authenticated, write: bool) -> Result<(), ApiError> {
    gates::subject_requests(who, write).map_err(|r| Refusal::into_error(r).into())
}

/// The export as a download.
fn export_response(export: &Value) -> Response {
    let mut resp = private_json(StatusCode::OK, export);
    resp.headers_mut().insert(
        axum::http::header::CONTENT_DISPOSITION,
        axum::http::HeaderValue::from_static("attachment; filename=\"my-health-data.json\""),
    );
    resp
}

/// `GET /fhir/Patient/{id}/$export-my-data`, from the FHIR dispatcher (which has checked the
/// second factor and made the request's context).
pub(crate) async fn export_mine(
    state: AppState,
    who: &Authenticated,
    ctx: Ctx,
    id: ResourceId,
) -> Result<Response, ApiError> {
    gates::own_export(who, id.as_str()).map_err(Refusal::into_error)?;
    let (user, agent) = (who.token_id.clone(), agent(who));
    let out = on_node(&state, move |node| {
        subject::export(
            node,
            &id,
            &Requester::Patient {
                ctx: &ctx,
                user: &user,
            },
            &agent,
        )
        .map_err(node_error)
    })
    .await?;
    Ok(export_response(&out))
}

/// A new request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OpenRequest {
    patient: String,
    right: String,
    note: Option<String>,
}

/// `GET /admin/subjects/requests`.
pub(crate) async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    gate(&who, false)?;
    let axum::extract::Query(q) = q.map_err(crate::error::query_rejected)?;
    let paging = q.checked()?;
    let (all, next) = on_node(&state, move |node| {
        subject::requests(node, paging.page()).map_err(node_error)
    })
    .await?;
    Ok(private_json(
        StatusCode::OK,
        &json!({"requests": all, "next": next}),
    ))
}

/// `POST /admin/subjects/requests`.
pub(crate) async fn open(
    State(state): State<AppState>,
    who: Authenticated,
    b: Result<Json<OpenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let Ok(Json(r)) = b else {
        return Err(ApiError::bad_request(
            "send {\"patient\": ID, \"right\": \"access\"|\"rectification\"|\"erasure\"|\"restriction\"|\"portability\"|\"objection\", \"note\": TEXT} as application/json",
        ));
    };
    let patient = ResourceId::new(r.patient.strip_prefix("Patient/").unwrap_or(&r.patient))
        .map_err(|_| ApiError::bad_request("patient is a Patient id"))?;
    let (by, agent) = (who.token_id.clone(), agent(&who));
    let entry = on_node(&state, move |node| {
        let right = Right::parse(&r.right).map_err(node_error)?;
        subject::open_request(node, &patient, right, r.note.as_deref(), &by, &agent)
            .map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::CREATED, &entry))
}

fn id_of(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    register_id(id, "dsr_", "no data subject's request has this id")
}

/// `GET /admin/subjects/requests/{id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    gate(&who, false)?;
    let id = id_of(id)?;
    let entry = on_node(&state, move |node| {
        subject::show_request(node, &id).map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &entry))
}

/// An answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerRequest {
    outcome: String,
    note: Option<String>,
}

/// `POST /admin/subjects/requests/{id}/answer`.
pub(crate) async fn answer(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<AnswerRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let id = id_of(id)?;
    let Ok(Json(r)) = b else {
        return Err(ApiError::bad_request(
            "send {\"outcome\": \"answered\"|\"refused\", \"note\": TEXT} as application/json",
        ));
    };
    let (by, agent) = (who.token_id.clone(), agent(&who));
    let entry = on_node(&state, move |node| {
        subject::answer_request(node, &id, &r.outcome, r.note.as_deref(), &by, &agent)
            .map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &entry))
}

/// `POST /admin/subjects/requests/{id}/export`: the patient's signed export, answering the
/// request. The whole record leaves the policy's reach here, so only an admin who signed in
/// with a second factor within the step-up window may (not privacy officers, whose role reads
/// the audit trail only, nor API tokens).
pub(crate) async fn export(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    crate::admin::admin_step_up(&state, &who)
        .map_err(|r| ApiError::from(Refusal::into_error(r)))?;
    let id = id_of(id)?;
    let (by, agent) = (who.token_id.clone(), agent(&who));
    let out = on_node(&state, move |node| {
        let request = subject::show_request(node, &id).map_err(node_error)?;
        let patient = request["patient"]
            .as_str()
            .and_then(|p| p.strip_prefix("Patient/"))
            .and_then(|p| ResourceId::new(p).ok())
            .ok_or_else(|| medvault_node::Error::bad_request("that request names no patient"))?;
        subject::export(
            node,
            &patient,
            &Requester::Staff {
                request: &id,
                by: &by,
            },
            &agent,
        )
        .map_err(node_error)
    })
    .await?;
    Ok(export_response(&out))
}

/// A flag's reason, or why it ends; a restriction may name the request it answers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reason {
    reason: String,
    request: Option<String>,
}

fn reason_of(b: Result<Json<Reason>, JsonRejection>) -> Result<Reason, ApiError> {
    b.map(|Json(r)| r).map_err(|_| {
        ApiError::bad_request(
            "send {\"reason\": TEXT} (a restriction also takes \"request\": dsr_…) as application/json",
        )
    })
}

/// Places `flag` on the patient at the path.
async fn place(
    state: AppState,
    who: Authenticated,
    flag: &'static Flag,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let patient = match id {
        Ok(Path(p)) => ResourceId::new(&p).map_err(|_| ApiError::not_found("no such patient"))?,
        Err(_) => return Err(ApiError::not_found("no such patient")),
    };
    let r = reason_of(b)?;
    if r.request.is_some() && flag.answers.is_none() {
        return Err(ApiError::bad_request(format!(
            "a {} answers no request",
            flag.name
        )));
    }
    let (by, agent) = (who.token_id.clone(), agent(&who));
    let entry = on_node(&state, move |node| {
        flags::place(
            node,
            flag,
            &patient,
            &r.reason,
            r.request.as_deref(),
            &by,
            &agent,
        )
        .map_err(node_error)
    })
    .await?;
    // Access decisions read restrictions with the patient's other facts: none computed before
    // this is used after it.
    state.facts.invalidate();
    Ok(private_json(StatusCode::CREATED, &entry))
}

/// Lists `flag`'s entries under `key`.
async fn list_flags(
    state: AppState,
    who: Authenticated,
    flag: &'static Flag,
    key: &'static str,
) -> Result<Response, ApiError> {
    gate(&who, false)?;
    let all = on_node(&state, move |node| {
        flags::list(node, flag).map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &json!({ key: all })))
}

/// Ends flag `id`.
async fn end(
    state: AppState,
    who: Authenticated,
    flag: &'static Flag,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let id = register_id(id, flag.prefix, &format!("no {} has this id", flag.name))?;
    let r = reason_of(b)?;
    if r.request.is_some() {
        return Err(ApiError::bad_request("ending takes only a reason"));
    }
    let (by, agent) = (who.token_id.clone(), agent(&who));
    let entry = on_node(&state, move |node| {
        flags::end(node, flag, &id, &r.reason, &by, &agent).map_err(node_error)
    })
    .await?;
    state.facts.invalidate();
    Ok(private_json(StatusCode::OK, &entry))
}

/// `POST /admin/patients/{id}/hold` `{"reason"}`: a legal hold (the patient's erasure is
/// refused until it is released).
pub(crate) async fn hold(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    place(state, who, &flags::HOLD, id, b).await
}

/// `GET /admin/holds`.
pub(crate) async fn holds(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Response, ApiError> {
    list_flags(state, who, &flags::HOLD, "holds").await
}

/// `POST /admin/holds/{id}/release` `{"reason"}`.
pub(crate) async fn release(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    end(state, who, &flags::HOLD, id, b).await
}

/// `POST /admin/patients/{id}/restrict` `{"reason", "request"?}`: a restriction of processing
/// (GDPR Art. 18), answering the patient's restriction request when one is named.
pub(crate) async fn restrict(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    place(state, who, &flags::RESTRICTION, id, b).await
}

/// `GET /admin/restrictions`.
pub(crate) async fn restrictions(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Response, ApiError> {
    list_flags(state, who, &flags::RESTRICTION, "restrictions").await
}

/// `POST /admin/restrictions/{id}/lift` `{"reason"}`.
pub(crate) async fn lift(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<Reason>, JsonRejection>,
) -> Result<Response, ApiError> {
    end(state, who, &flags::RESTRICTION, id, b).await
}
