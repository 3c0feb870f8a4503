//! What the handler modules and the request middleware share: running a node operation off the
//! async threads ([`blocking`], [`on_node`]), response shapes (FHIR JSON, answers carrying
//! secrets, OAuth2 errors, the node's own pages, a gate's refusal) and what a response tells its
//! access-log record ([`AuthNote`], [`AuditExtra`], [`AuditPatient`]). A leaf: it imports no
//! handler module, so they all can import it without importing each other.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medvault_node::Node;
use medvault_node::identity::gates::Refusal;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{ApiError, Error};
use crate::{AppState, FHIR_JSON};

/// Runs a node operation on a blocking thread; its error is answered as an [`ApiError`].
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(&e))??)
}

/// Runs a node operation over `state`'s node on a blocking thread; its error is answered as an
/// [`ApiError`].
pub(crate) async fn on_node<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Node) -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    let node = Arc::clone(&state.node);
    blocking(move || f(&node)).await
}

/// `body` as `application/fhir+json` with `status`.
pub(crate) fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    resp
}

/// More for a response's audit record (sealed with it, as its `extra` field), e.g. a
/// break-glass justification.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub(crate) struct AuditExtra(pub(crate) Value);

/// The patient whose compartment a response's resource is in, for its audit record.
#[derive(Debug, Clone)]
pub(crate) struct AuditPatient(pub(crate) String);

/// What an `/auth/…` response tells the access log: the account concerned and what happened
/// (serialized as the record's `auth` field, so the field names are part of its layout).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuthNote {
    pub(crate) user: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) event: &'static str,
    /// A sign-in's assurance level (Sentinel tells a stuffed password from a second factor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aal: Option<u8>,
}

/// A sign-in's answer: the session (a secret) and, for the access log, its assurance level.
pub(crate) fn signed_in(
    ok: &medvault_node::identity::login::LoginOk,
    user: Option<String>,
    event: &'static str,
) -> Response {
    let mut resp = secret_json(&session_json(ok), user, event);
    if let Some(note) = resp.extensions_mut().get_mut::<AuthNote>() {
        note.aal = Some(ok.session.aal.level());
    }
    resp
}

/// The answer to a sign-in that opened a session (password or passkey): the token, shown once,
/// and what the client needs to know about the session.
pub(crate) fn session_json(ok: &medvault_node::identity::login::LoginOk) -> Value {
    json!({
        "session": ok.token.as_str(),
        "session_id": ok.session.session_id,
        "user_id": ok.session.user_id,
        "role": ok.role.as_str(),
        "aal": ok.session.aal.level(),
        "idle_timeout_seconds": ok.idle.as_secs(),
        "expires_at": medvault_node::clock::instant(ok.session.expires_micros),
    })
}

/// A JSON answer carrying a secret (a session token, a TOTP secret, recovery codes): never
/// cached.
pub(crate) fn secret_json(body: &Value, user: Option<String>, event: &'static str) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    with_note(resp, user, event)
}

/// `resp`, telling the access log the account concerned and what happened.
pub(crate) fn with_note(resp: Response, user: Option<String>, event: &'static str) -> Response {
    with_app_note(resp, user, None, event)
}

/// Like [`with_note`], naming the app (OAuth2 client) concerned too.
pub(crate) fn with_app_note(
    mut resp: Response,
    user: Option<String>,
    client: impl Into<Option<String>>,
    event: &'static str,
) -> Response {
    resp.extensions_mut().insert(AuthNote {
        user,
        client: client.into(),
        event,
        aal: None,
    });
    resp
}

/// An OAuth2 error response (RFC 6749 §5.2): `{"error", "error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The sign-in page's content security policy: its own script only, no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
    connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// One of the node's own pages (or its script): never framed, never cached, its own script
/// only.
pub(crate) fn page_response(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// A gate's refusal as a response (an `OperationOutcome`: 403, or 401 for a stale sign-in),
/// with `WWW-Authenticate` asking for a fresh sign-in when one would pass (RFC 9470).
pub(crate) fn refusal_response(refusal: Refusal) -> Response {
    let max_age = refusal.sign_in_within;
    let mut r = ApiError::from(refusal.into_error()).into_response();
    if let Some(max_age) = max_age
        && let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"a sign-in within the last {max_age} seconds is required\", max_age={max_age}"
        ))
    {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a stale sign-in asks for a fresh one (401 + WWW-Authenticate); the rest are 403.
    /// (Which gate refuses whom is the node's table test, `medvault_node::identity::gates`.)
    #[test]
    fn a_stale_sign_in_is_challenged_and_other_refusals_are_forbidden() {
        let stale_refusal = Refusal {
            rule: "step-up",
            message: "sign in again".into(),
            sign_in_within: Some(300),
        };
        let r = refusal_response(stale_refusal);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        let r = refusal_response(Refusal {
            rule: "share-gate",
            message: "not for apps".into(),
            sign_in_within: None,
        });
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
