//! OAuth2 for user-facing apps over HTTP (SMART App Launch, standalone): the consent page
//! (`GET /auth/authorize`, its check and decision) and revocation (`POST /auth/revoke`,
//! RFC 7009). The flow itself (codes with PKCE, rotating refresh tokens) is the node's
//! ([`medvault_node::identity::oauth::app`]).

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates::{self, Refusal};
use medvault_node::identity::oauth::app::{self, AuthorizeError, AuthorizeRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::respond::{on_node, page_response, with_app_note, with_note};

/// An authorization request's failure as an answer: to show on the page, with where to send
/// the browser when the redirect URI can be trusted.
fn authorize_error(e: AuthorizeError) -> Response {
    let mut body = json!({"error": e.error, "error_description": e.description});
    if let Some(r) = e.redirect {
        body["redirect"] = Value::String(r);
    }
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn parse_query(raw: Option<&str>) -> AuthorizeRequest {
    serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default()
}

/// `GET /auth/authorize`: the consent page (its script reads the query itself).
pub(crate) async fn authorize_page() -> Response {
    page_response(
        include_str!("ui/authorize.html"),
        "text/html; charset=utf-8",
    )
}

/// `GET /auth/authorize.js`: the consent page's script.
pub(crate) async fn authorize_script() -> Response {
    page_response(
        include_str!("ui/authorize.js"),
        "text/javascript; charset=utf-8",
    )
}

/// `GET /auth/authorize/check?…`: whether the request is valid, and what the app asks for.
pub(crate) async fn authorize_check(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let req = parse_query(raw.as_deref());
    let base = crate::http::public_base(&state, &headers);
    let checked = on_node(&state, move |node| Ok(app::check(node, &req, &base))).await?;
    Ok(match checked {
        Ok(c) => Json(json!({
            "client_name": c.client.name,
            "scopes": c.granted.to_string(),
        }))
        .into_response(),
        Err(e) => authorize_error(e),
    })
}

/// `POST /auth/authorize/decide` body.
#[derive(Deserialize)]
pub(crate) struct Decision {
    query: String,
    approve: bool,
}

/// `POST /auth/authorize/decide`: the signed-in person approves (or denies) the request; answers
/// where to send the browser.
pub(crate) async fn authorize_decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Authenticated,
    d: Result<Json<Decision>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let d = crate::error::json_body(d, "the query and the decision (approve)")?;
    gates::app_approval(&who).map_err(Refusal::into_error)?;
    let req = parse_query(Some(d.query.trim_start_matches('?')));
    let base = crate::http::public_base(&state, &headers);
    let user = who.token_id.clone();
    let approve = d.approve;
    let out = on_node(&state, move |node| {
        app::decide(node, &user, &req, &base, approve)
    })
    .await?;
    Ok(match out {
        Ok((redirect, client)) => with_app_note(
            Json(json!({"redirect": redirect})).into_response(),
            Some(who.token_id),
            client,
            if d.approve {
                "app-approved"
            } else {
                "app-denied"
            },
        ),
        Err(e) => authorize_error(e),
    })
}

/// `POST /auth/revoke` form (RFC 7009).
#[derive(Deserialize)]
pub(crate) struct RevokeRequest {
    token: String,
    client_id: Option<String>,
}

/// `POST /auth/revoke`: revokes a refresh token (and its family) or an app's access token. Always
/// 200, as RFC 7009 asks, whether or not the token was known.
pub(crate) async fn revoke(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<RevokeRequest>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "send token=…"})),
        )
            .into_response();
    };
    let client = form.client_id.unwrap_or_default();
    let revoked = medvault_node::identity::oauth::revoke(
        &state.node,
        &state.auth.access_tokens,
        &state.auth.revoked,
        &form.token,
        &client,
    )
    .await;
    with_note(
        StatusCode::OK.into_response(),
        None,
        if revoked {
            "token-revoked"
        } else {
            "token-revoke-unknown"
        },
    )
}
