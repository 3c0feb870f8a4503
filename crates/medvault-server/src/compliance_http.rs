//! `GET /admin/compliance`: the node's signed compliance report (medvault-compliance), as
//! JSON, or (`?format=html`) as a page, or (`?format=pdf`) as a PDF.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use medvault_node::identity::gates::{self, Refusal};
use serde::Deserialize;

use medvault_node::identity::Authenticated;

use crate::AppState;
use crate::error::ApiError;
use crate::respond::on_node;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReportQuery {
    format: Option<String>,
}

/// `GET /admin/compliance[?format=json|html|pdf]`.
pub(crate) async fn report(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // The role first: a refused caller learns nothing, not even the query's shape.
    gates::compliance(&who).map_err(|r| ApiError::from(Refusal::into_error(r)))?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    let format = match q.format.as_deref() {
        None | Some("json") => "json",
        Some(f @ ("html" | "pdf")) => f,
        Some(_) => return Err(ApiError::bad_request("format is json, html or pdf")),
    };
    let report = on_node(&state, |node| {
        medvault_compliance::report(node, |_, _| {}).map_err(|e| medvault_node::Error::internal(&e))
    })
    .await?;
    let (body, kind) = match format {
        "html" => (
            medvault_compliance::html::render(&report).into_bytes(),
            "text/html; charset=utf-8",
        ),
        "pdf" => (medvault_compliance::pdf::render(&report), "application/pdf"),
        _ => (
            serde_json::to_vec_pretty(&report).unwrap_or_default(),
            "application/json",
        ),
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, kind),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// The compliance crate's error as the node's: bad input 400, unknown entries 404, a node
/// error as it was, the rest a 500 without detail.
pub(crate) fn node_error(e: medvault_compliance::Error) -> medvault_node::Error {
    match e {
        medvault_compliance::Error::Invalid(m) => medvault_node::Error::bad_request(m),
        medvault_compliance::Error::NotFound(m) => medvault_node::Error::not_found(m),
        medvault_compliance::Error::Node(e) if e.kind.is_client_error() => *e,
        other => medvault_node::Error::internal(&other),
    }
}

/// `body` as JSON with `status`, never cached (registers and exports name patients).
pub(crate) fn private_json(status: axum::http::StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Who made a register change, for its access-log record.
pub(crate) fn agent(who: &Authenticated) -> serde_json::Value {
    serde_json::json!({"token": who.token_id, "role": who.role.as_str(), "session": who.session})
}

/// A register entry's id from the path: `prefix` and at most 64 bytes, or 404 saying
/// `missing` (as for an id that names nothing).
pub(crate) fn register_id(
    id: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    prefix: &str,
    missing: &str,
) -> Result<String, ApiError> {
    match id {
        Ok(axum::extract::Path(id)) if id.starts_with(prefix) && id.len() <= 64 => Ok(id),
        _ => Err(ApiError::not_found(missing)),
    }
}

/// A register list's page: `?count=N` (1 to 500; 100 by default) `&after=ID` (the previous
/// page's `next`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    count: Option<usize>,
    after: Option<String>,
}

/// Entries a register page holds at most.
pub(crate) const MAX_REGISTER_PAGE: usize = 500;

impl PageQuery {
    /// The page asked for, checked.
    pub(crate) fn checked(self) -> Result<Paging, ApiError> {
        let count = self.count.unwrap_or(100);
        if !(1..=MAX_REGISTER_PAGE).contains(&count) {
            return Err(ApiError::bad_request(format!(
                "count must be 1 to {MAX_REGISTER_PAGE}"
            )));
        }
        if self.after.as_ref().is_some_and(|a| a.len() > 64) {
            return Err(ApiError::bad_request("after is an entry's id"));
        }
        Ok(Paging {
            count,
            after: self.after,
        })
    }
}

/// A checked [`PageQuery`], owned (it moves onto the node's thread).
pub(crate) struct Paging {
    count: usize,
    after: Option<String>,
}

impl Paging {
    /// As the compliance crate takes it.
    pub(crate) fn page(&self) -> medvault_compliance::register::Page<'_> {
        medvault_compliance::register::Page {
            count: self.count,
            after: self.after.as_deref(),
        }
    }
}
