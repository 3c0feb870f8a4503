//! Breach response over HTTP (medvault-compliance's `breach` and `register`):
//!
//! - `POST /admin/breach/assess` `{"principal", "from", "to", "discovered"?}` or `{"key",
//!   "discovered"?}`: the assessment.
//! - `GET /admin/breaches`, `POST /admin/breaches` (the same fields plus `title` and
//!   `description`: the assessment is made again from the log and kept in the entry).
//! - `GET /admin/breaches/{id}`, `POST /admin/breaches/{id}/notices` `{"to", "at"?, "reason"?,
//!   "not_required"?}`, `POST /admin/breaches/{id}/close` `{"reason"}`.
//!
//! Admins and privacy officers (auditors read the register), with a second factor in a session
//! or with an API token.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use medvault_compliance::breach::{self, Window};
use medvault_compliance::register::{self, Given, NewBreach, Recipient};
use medvault_node::Node;
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates::{self, Refusal};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::compliance_http::{PageQuery, agent, node_error, private_json, register_id};
use crate::error::{ApiError, json_body as body};
use crate::respond::on_node;

fn gate(who: &Authenticated, write: bool) -> Result<(), ApiError> {
    gates::breach(who, write).map_err(|r| Refusal::into_error(r).into())
}

/// What an assessment covers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssessRequest {
    principal: Option<String>,
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
    discovered: Option<String>,
}

const ASSESS_SHAPE: &str = "{\"principal\": ID, \"from\": TIME, \"to\": TIME} or {\"key\": KEY} (with \"discovered\": TIME)";

fn assess(
    node: &Node,
    r: &AssessRequest,
) -> Result<(breach::Assessment, i64), medvault_node::Error> {
    let time = |what: &str, t: Option<&str>, end: bool| match t {
        Some(t) => breach::parse_time(what, t, end).map_err(node_error),
        None => Ok(node.clock.now_micros()),
    };
    let discovered = time("discovered", r.discovered.as_deref(), false)?;
    let a = match (&r.principal, &r.key, &r.from, &r.to) {
        (None, Some(key), None, None) => breach::assess_key(node, key, discovered),
        (Some(p), None, Some(f), Some(t)) => {
            let from = time("from", Some(f), false)?;
            let to = time("to", Some(t), true)?;
            let window = Window::new(from, to, discovered).map_err(node_error)?;
            let who = breach::principal(node, p).map_err(node_error)?;
            breach::assess_principal(node, who, window, |_, _| {})
        }
        _ => {
            return Err(medvault_node::Error::bad_request(format!(
                "send {ASSESS_SHAPE}"
            )));
        }
    }
    .map_err(node_error)?;
    Ok((a, discovered))
}

/// `POST /admin/breach/assess`.
pub(crate) async fn assess_http(
    State(state): State<AppState>,
    who: Authenticated,
    b: Result<Json<AssessRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let r = body(b, ASSESS_SHAPE)?;
    let agent = agent(&who);
    let a = on_node(&state, move |node| {
        let (a, _) = assess(node, &r)?;
        // Like the CLI's: who assessed whom, over which window (the answer names patients).
        let target = a.principal.as_ref().map(|p| p.id.clone()).or(a.key.clone());
        node.record_audit_now(|now| {
            medvault_node::audit::AuditRecord::new(
                medvault_node::audit::AuditKind::Admin,
                now,
                "breach-assess",
                medvault_node::audit::AuditOutcome::Success,
            )
            .agent(agent)
            .target_opt(target.as_deref())
            .with(
                "extra",
                json!({"from": a.from, "to": a.to, "patients": a.patients.len()}),
            )
        })?;
        serde_json::to_value(&a).map_err(|e| medvault_node::Error::internal(&e))
    })
    .await?;
    Ok(private_json(StatusCode::OK, &a))
}

/// A new register entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordRequest {
    title: String,
    description: String,
    principal: Option<String>,
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
    discovered: Option<String>,
}

/// `POST /admin/breaches`.
pub(crate) async fn record(
    State(state): State<AppState>,
    who: Authenticated,
    b: Result<Json<RecordRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let r = body(
        b,
        "{\"title\": TEXT, \"description\": TEXT, \"discovered\": TIME} (with what to assess: \"principal\", \"from\", \"to\" or \"key\")",
    )?;
    let agent = agent(&who);
    let by = who.token_id.clone();
    let entry = on_node(&state, move |node| {
        let req = AssessRequest {
            principal: r.principal,
            key: r.key,
            from: r.from,
            to: r.to,
            discovered: r.discovered,
        };
        if req.principal.is_none() && (req.from.is_some() || req.to.is_some()) {
            return Err(medvault_node::Error::bad_request(
                "from and to go with a principal: name whose actions to assess",
            ));
        }
        let (assessment, discovered) = if req.principal.is_some() || req.key.is_some() {
            let (a, d) = assess(node, &req)?;
            (Some(a), d)
        } else {
            let d = match &req.discovered {
                Some(t) => breach::parse_time("discovered", t, false).map_err(node_error)?,
                None => node.clock.now_micros(),
            };
            (None, d)
        };
        register::record_breach(
            node,
            &NewBreach {
                title: &r.title,
                description: &r.description,
                discovered_micros: discovered,
                by: &by,
                assessment: assessment.as_ref(),
            },
            &agent,
        )
        .map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::CREATED, &entry))
}

/// `GET /admin/breaches`.
pub(crate) async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<axum::extract::Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    gate(&who, false)?;
    let axum::extract::Query(q) = q.map_err(crate::error::query_rejected)?;
    let paging = q.checked()?;
    let (entries, next) = on_node(&state, move |node| {
        register::list(node, paging.page()).map_err(node_error)
    })
    .await?;
    Ok(private_json(
        StatusCode::OK,
        &json!({"breaches": entries, "next": next}),
    ))
}

fn id_of(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    register_id(id, "brc_", "no breach in the register has this id")
}

/// `GET /admin/breaches/{id}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    gate(&who, false)?;
    let id = id_of(id)?;
    let entry = on_node(&state, move |node| {
        register::show(node, &id).map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &entry))
}

/// A notice given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoticeRequest {
    to: String,
    at: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    not_required: bool,
}

/// `POST /admin/breaches/{id}/notices`.
pub(crate) async fn notice(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<NoticeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let id = id_of(id)?;
    let r = body(
        b,
        "{\"to\": \"authority\"|\"individuals\"|\"hhs\"|\"media\", \"at\": TIME, \"reason\": TEXT, \"not_required\": BOOL}",
    )?;
    let agent = agent(&who);
    let by = who.token_id.clone();
    let entry = on_node(&state, move |node| {
        let to = Recipient::parse(&r.to).map_err(node_error)?;
        let at = match &r.at {
            Some(t) => breach::parse_time("at", t, false).map_err(node_error)?,
            None => node.clock.now_micros(),
        };
        register::notify(
            node,
            &id,
            &Given {
                to,
                at_micros: at,
                reference: r.reason.as_deref(),
                not_required: r.not_required,
                by: &by,
            },
            &agent,
        )
        .map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &entry))
}

/// Closing an entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CloseRequest {
    reason: String,
}

/// `POST /admin/breaches/{id}/close`.
pub(crate) async fn close(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    b: Result<Json<CloseRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    gate(&who, true)?;
    let id = id_of(id)?;
    let r = body(b, "{\"reason\": TEXT}")?;
    let agent = agent(&who);
    let by = who.token_id.clone();
    let entry = on_node(&state, move |node| {
        register::close(node, &id, &r.reason, &by, &agent).map_err(node_error)
    })
    .await?;
    Ok(private_json(StatusCode::OK, &entry))
}
