//! `GET /admin/compliance`: the node's signed compliance report (medvault-compliance), as
//! JSON or (`?format=html`) as a page.

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

/// `GET /admin/compliance[?format=json|html]`.
pub(crate) async fn report(
    State(state): State<AppState>,
    who: Authenticated,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    // The role first: a refused caller learns nothing, not even the query's shape.
    gates::compliance(&who).map_err(|r| ApiError::from(Refusal::into_error(r)))?;
    let Query(q) = q.map_err(crate::error::query_rejected)?;
    let html = match q.format.as_deref() {
        None | Some("json") => false,
        Some("html") => true,
        Some(_) => return Err(ApiError::bad_request("format is json or html")),
    };
    let report = on_node(&state, |node| {
        medvault_compliance::report(node, |_, _| {}).map_err(|e| medvault_node::Error::internal(&e))
    })
    .await?;
    let (body, kind) = if html {
        (
            medvault_compliance::html::render(&report),
            "text/html; charset=utf-8",
        )
    } else {
        (
            serde_json::to_string_pretty(&report).unwrap_or_default(),
            "application/json",
        )
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
