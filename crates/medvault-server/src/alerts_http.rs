//! The privacy officer's queue over HTTP (`/admin/alerts…`) and Sentinel's responses
//! (`/admin/responses…`). What an alert holds, its timelines, verdicts and undoing are the
//! node's ([`medvault_node::alerts`], [`medvault_node::responses`]); this module gates, reads
//! the requests and shapes the answers.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use medvault_core::Role;
use medvault_node::alerts::{self, Verdict};
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates::{self, Refusal};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::respond::{on_node, page_response};

/// `GET /privacy/ui`: the privacy officer's page (it signs in itself; no data without a
/// session).
pub(crate) async fn page() -> Response {
    page_response(include_str!("ui/privacy.html"), "text/html; charset=utf-8")
}

/// `GET /privacy/ui/privacy.js`.
pub(crate) async fn page_script() -> Response {
    page_response(
        include_str!("ui/privacy.js"),
        "text/javascript; charset=utf-8",
    )
}

fn privacy_officer(who: &Authenticated) -> Result<(), ApiError> {
    gates::privacy_officer(who).map_err(|r| Refusal::into_error(r).into())
}

/// Undoing a response: a privacy officer or an admin, signed in with a second factor.
fn may_undo(who: &Authenticated) -> Result<(), ApiError> {
    let person = who.session.is_some()
        && who.aal.is_some_and(|a| a >= medvault_core::Aal::Two)
        && matches!(who.role, Role::PrivacyOfficer | Role::Admin);
    if person {
        Ok(())
    } else {
        Err(Refusal {
            rule: "role-gate",
            message: "undoing a response is for the privacy officer or an admin, signed in with a second factor".into(),
            sign_in_within: None,
        }
        .into_error()
        .into())
    }
}

/// `body` as JSON, never cached (alerts name people and patients).
fn private_json(body: &serde_json::Value) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(
        medvault_node::error::ErrorKind::Forbidden,
        medvault_node::error::IssueCode::Forbidden,
        message,
    )
}

fn conflict(message: &str) -> ApiError {
    ApiError::new(
        medvault_node::error::ErrorKind::Conflict,
        medvault_node::error::IssueCode::Conflict,
        message,
    )
}

/// True if a response answers an insider (Sentinel) alert: those are the privacy officer's
/// alone.
fn insider_response(r: &medvault_store::ResponseRow) -> bool {
    serde_json::from_str::<serde_json::Value>(&r.detail)
        .ok()
        .and_then(|d| {
            d.get("alert_kind")
                .and_then(|k| k.as_str())
                .map(str::to_owned)
        })
        .is_none_or(|k| k == medvault_node::sentinel::ALERT_KIND)
}

/// An alert or response id from a path: the node's own ids only.
fn id_of(id: Result<Path<String>, PathRejection>, prefix: &str) -> Result<String, ApiError> {
    let Path(id) = id.map_err(crate::error::path_rejected)?;
    let fits = id.len() <= 100
        && id.starts_with(prefix)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fits {
        Ok(id)
    } else {
        Err(ApiError::not_found("no such id"))
    }
}

/// `GET /admin/alerts` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only alerts not yet acknowledged.
    #[serde(default)]
    open: bool,
    /// `break-glass`, `sentinel` or `attack`.
    kind: Option<String>,
    user: Option<String>,
    patient: Option<String>,
    /// Alerts a page (1 to 200; 50 by default).
    count: Option<u32>,
    /// The `next` cursor of the previous page.
    before: Option<String>,
}

/// `GET /admin/alerts[?open=true][&kind=K][&user=U][&patient=P][&count=N][&before=CURSOR]`:
/// newest first, with their details, and `next` when there are more.
pub(crate) async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // The role first: a refused caller learns nothing, not even the query's shape.
    privacy_officer(&who)?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    if let Some(kind) = &q.kind
        && !["sentinel", "attack", "break-glass"].contains(&kind.as_str())
    {
        return Err(ApiError::bad_request(
            "kind is one of sentinel, attack, break-glass",
        ));
    }
    let count = q.count.unwrap_or(50);
    if !(1..=alerts::MAX_PAGE).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "count must be 1 to {}",
            alerts::MAX_PAGE
        )));
    }
    if let Some(b) = &q.before
        && alerts::parse_cursor(b).is_none()
    {
        return Err(ApiError::bad_request(
            "before must be the `next` value of a previous page",
        ));
    }
    let (list, next) = on_node(&state, move |node| {
        let before = q.before.as_deref().and_then(alerts::parse_cursor);
        alerts::page(
            node,
            &medvault_store::AlertQuery {
                open_only: q.open,
                kind: q.kind.as_deref(),
                user: q.user.as_deref(),
                patient: q
                    .patient
                    .as_deref()
                    .map(|p| p.strip_prefix("Patient/").unwrap_or(p)),
                before,
                limit: count,
            },
        )
    })
    .await?;
    Ok(private_json(&json!({"alerts": list, "next": next})))
}

/// `GET /admin/alerts/{id}`: the alert, the responses it set off, and the access timelines of
/// its user and patient around it.
pub(crate) async fn read(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    privacy_officer(&who)?;
    let id = id_of(id, "alr_")?;
    match on_node(&state, move |node| alerts::detail(node, &id)).await? {
        Some(a) => Ok(private_json(&a)),
        None => Err(ApiError::not_found("no alert with that id")),
    }
}

/// `POST /admin/alerts/{id}/verdict` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerdictRequest {
    verdict: String,
    reason: String,
}

/// `POST /admin/alerts/{id}/verdict` `{"verdict": "confirmed"|"dismissed", "reason": TEXT}`:
/// once per alert; acknowledges it if it was open. Verdicts tune Sentinel's thresholds.
pub(crate) async fn verdict(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<VerdictRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    privacy_officer(&who)?;
    let id = id_of(id, "alr_")?;
    let Ok(Json(req)) = body else {
        return Err(ApiError::bad_request(
            "send {\"verdict\": \"confirmed\" or \"dismissed\", \"reason\": TEXT} as application/json",
        ));
    };
    let verdict = Verdict::parse(&req.verdict)
        .ok_or_else(|| ApiError::bad_request("verdict is `confirmed` or `dismissed`"))?;
    let reason = req.reason.trim().to_owned();
    // Text a person reads: no control characters, and none of the invisible or direction-
    // changing ones that could make a reason display as something else.
    let hidden = |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
    if reason
        .chars()
        .any(|c| (c.is_control() && c != '\n' && c != '\t') || hidden(c))
    {
        return Err(ApiError::bad_request(
            "the reason is text: no control or invisible characters",
        ));
    }
    if reason.is_empty() || reason.len() > alerts::MAX_REASON {
        return Err(ApiError::bad_request(format!(
            "give a reason of 1 to {} bytes",
            alerts::MAX_REASON
        )));
    }
    let by = who.token_id.clone();
    let alert = id.clone();
    let done = on_node(&state, move |node| {
        let Some(a) = node.store.alert(&alert)? else {
            return Ok(Judged::Missing);
        };
        if a.user_id == by {
            return Ok(Judged::Own);
        }
        if a.verdict.is_some() {
            return Ok(Judged::Already);
        }
        Ok(if alerts::judge(node, &alert, &by, verdict, &reason)? {
            Judged::Done
        } else {
            Judged::Already
        })
    })
    .await?;
    match done {
        Judged::Missing => Err(ApiError::not_found("no alert with that id")),
        Judged::Own => Err(forbidden(
            "an alert about yourself is judged by another privacy officer",
        )),
        Judged::Already => Err(conflict("this alert already has a verdict")),
        Judged::Done => Ok(private_json(
            &json!({"alert": id, "verdict": verdict.name()}),
        )),
    }
}

enum Judged {
    Missing,
    Own,
    Already,
    Done,
}

/// `GET /admin/sentinel/thresholds`: the configured threshold and each role's as the verdicts
/// tuned it.
pub(crate) async fn thresholds(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Response, ApiError> {
    privacy_officer(&who)?;
    let Some(base) = state.config.sentinel_threshold else {
        return Ok(private_json(&json!({"threshold": null, "roles": []})));
    };
    let roles = on_node(&state, move |node| alerts::thresholds(node, base)).await?;
    let roles: Vec<_> = roles
        .into_iter()
        .map(|(role, t, c, d)| {
            json!({"role": role, "threshold": (t * 1e4).round() / 1e4, "confirmed": c, "dismissed": d})
        })
        .collect();
    Ok(private_json(&json!({"threshold": base, "roles": roles})))
}

/// `GET /admin/responses` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResponsesQuery {
    alert: Option<String>,
    count: Option<u32>,
    /// `AT.ID` of the last response of the previous page.
    before: Option<String>,
}

/// `GET /admin/responses[?alert=ID][&count=N][&before=CURSOR]`: Sentinel's responses, newest
/// first.
pub(crate) async fn responses(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<Query<ResponsesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    may_undo(&who)?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    let count = q.count.unwrap_or(50);
    if !(1..=200).contains(&count) {
        return Err(ApiError::bad_request("count must be 1 to 200"));
    }
    let before = match &q.before {
        Some(b) => Some(
            b.split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| {
                    ApiError::bad_request("before must be the `next` value of a previous page")
                })?,
        ),
        None => None,
    };
    let rows = on_node(&state, move |node| {
        Ok(node.store.responses(
            q.alert.as_deref(),
            before.as_ref().map(|(at, id)| (*at, id.as_str())),
            count + 1,
        )?)
    })
    .await?;
    // Admins see the responses to attacks; insider alerts are the privacy officer's. (A page
    // may then hold fewer than `count`; `next` still pages on.)
    let officer = who.role == Role::PrivacyOfficer;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| officer || !insider_response(r))
        .collect();
    let more = rows.len() > count as usize;
    let rows = &rows[..rows.len().min(count as usize)];
    let next = more
        .then(|| rows.last().map(|r| format!("{}.{}", r.at_micros, r.id)))
        .flatten();
    let list: Vec<_> = rows
        .iter()
        .map(medvault_node::responses::response_json)
        .collect();
    Ok(private_json(&json!({"responses": list, "next": next})))
}

enum Undo {
    Missing,
    Own,
    Webhook,
    Already,
    Done,
}

/// `POST /admin/responses/{id}/undo`: takes the response out of force (a lock's account is
/// unlocked), recorded in the access log.
pub(crate) async fn undo(
    State(state): State<AppState>,
    who: Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    may_undo(&who)?;
    let id = id_of(id, "rsp_")?;
    let enforcement = std::sync::Arc::clone(&state.enforcement);
    let (rid, by) = (id.clone(), who.token_id.clone());
    let officer = who.role == Role::PrivacyOfficer;
    let done = on_node(&state, move |node| {
        let Some(r) = node.store.response(&rid)? else {
            return Ok(Undo::Missing);
        };
        if !officer && insider_response(&r) {
            // An insider alert's response is not an admin's to see or undo.
            return Ok(Undo::Missing);
        }
        if r.subject == format!("user:{by}") {
            return Ok(Undo::Own);
        }
        if r.action == "webhook" {
            return Ok(Undo::Webhook);
        }
        if r.undone_micros.is_some() {
            return Ok(Undo::Already);
        }
        Ok(
            if medvault_node::responses::undo(node, &enforcement, &rid, &by)? {
                Undo::Done
            } else {
                Undo::Already
            },
        )
    })
    .await?;
    match done {
        Undo::Missing => Err(ApiError::not_found("no response with that id")),
        Undo::Own => Err(forbidden(
            "a response to your own actions is undone by someone else",
        )),
        Undo::Webhook => Err(conflict("a webhook call was made: it cannot be undone")),
        Undo::Already => Err(conflict("this response was undone already")),
        Undo::Done => Ok(private_json(&json!({"undone": id}))),
    }
}
