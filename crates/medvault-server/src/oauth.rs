//! OAuth2 over HTTP: `POST /auth/token` (backend services' `client_credentials`, and apps'
//! `authorization_code` / `refresh_token`), token introspection (`POST /auth/introspect`,
//! RFC 7662) and `/.well-known/smart-configuration`. What a grant checks and issues is the
//! node's ([`medvault_node::identity::oauth`]); this module reads the forms and shapes the
//! RFC 6749 answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medvault_node::identity::Authenticated;
use medvault_node::identity::gates::{self, Refusal};
use medvault_node::identity::oauth as node_oauth;
use medvault_node::identity::oauth::app::{self, AppTokenRequest};
use medvault_node::identity::oauth::backend::{self, ClientCredentialsRequest};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::respond::{oauth_error, on_node, with_app_note};

fn noted(r: Response, client: Option<String>, event: &'static str) -> Response {
    with_app_note(r, None, client, event)
}

/// The public origin of this node (scheme, host, port), for the token endpoint's URL.
fn origin(state: &AppState, headers: &HeaderMap) -> String {
    let base = crate::http::public_base(state, headers);
    base.strip_suffix("/fhir").unwrap_or(&base).to_owned()
}

/// `GET /fhir/.well-known/smart-configuration` (and at the root): what this server supports.
pub(crate) async fn smart_configuration(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    let origin = origin(&state, &headers);
    Json(json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/auth/authorize"),
        "token_endpoint": format!("{origin}/auth/token"),
        "introspection_endpoint": format!("{origin}/auth/introspect"),
        "revocation_endpoint": format!("{origin}/auth/revoke"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "patient/*.cruds", "offline_access", "online_access"],
        "capabilities": [
            "launch-standalone", "client-public", "client-confidential-asymmetric",
            "permission-offline", "permission-online", "permission-user", "permission-patient",
            "context-standalone-patient",
            "permission-v1", "permission-v2",
        ],
    }))
    .into_response()
}

/// `POST /auth/token` for apps: `authorization_code` (with PKCE) and `refresh_token`.
async fn app_token(state: &AppState, body: &[u8]) -> Response {
    let form: AppTokenRequest = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(_) => {
            return noted(
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form"),
                None,
                "token-refused",
            );
        }
    };
    let node = Arc::clone(&state.node);
    match tokio::task::spawn_blocking(move || app::exchange(&node, &form)).await {
        Ok(Ok((body, client))) => {
            let mut r = Json(body).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            noted(r, Some(client), "token-issued")
        }
        Ok(Err(r)) => {
            if let Some(f) = &r.revoked_family {
                state.auth.revoked.insert(f);
            }
            noted(
                oauth_error(r.status, r.error, &r.description),
                r.client,
                "token-refused",
            )
        }
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// `POST /auth/token`: `client_credentials` with a `private_key_jwt` client assertion.
pub(crate) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let grant_type = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "grant_type")
                .map(|(_, v)| v)
        });
    if matches!(
        grant_type.as_deref(),
        Some("authorization_code" | "refresh_token")
    ) {
        return app_token(&state, &body).await;
    }
    let form: ClientCredentialsRequest = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => {
            return noted(
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send application/x-www-form-urlencoded",
                ),
                None,
                "token-refused",
            );
        }
    };
    let audience = format!("{}/auth/token", origin(&state, &headers));
    let node = Arc::clone(&state.node);
    let result = tokio::task::spawn_blocking(move || backend::issue(&node, &form, &audience)).await;
    match result {
        Ok(Ok((body, client))) => {
            let mut r = Json(body).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            noted(r, Some(client), "token-issued")
        }
        Ok(Err(r)) => noted(
            oauth_error(r.status, r.error, &r.description),
            r.client,
            "token-refused",
        ),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// `POST /auth/introspect` form.
#[derive(Deserialize)]
pub(crate) struct IntrospectRequest {
    token: String,
}

/// `POST /auth/introspect` (RFC 7662), for admins: whether an access token is active, and what
/// it grants.
pub(crate) async fn introspect(
    State(state): State<AppState>,
    who: Authenticated,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    gates::introspection(&who).map_err(Refusal::into_error)?;
    let form: IntrospectRequest = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::bad_request("send token=… as application/x-www-form-urlencoded"))?;
    // Active only while the token, its client and (for an app's token) its user all are.
    let row = on_node(&state, move |node| {
        node_oauth::introspect(node, &form.token)
    })
    .await?;
    Ok(match row {
        Some(r) => Json(json!({
            "active": true,
            "scope": r.scopes,
            "client_id": r.client_id,
            "token_type": "bearer",
            "iat": r.issued_micros / 1_000_000,
            "exp": r.expires_micros / 1_000_000,
        }))
        .into_response(),
        None => Json(json!({"active": false})).into_response(),
    })
}
