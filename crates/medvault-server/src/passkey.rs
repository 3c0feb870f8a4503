//! WebAuthn passkeys over HTTP: the ceremonies' `…/start` and `…/finish` endpoints and the
//! node's own sign-in page. The ceremonies themselves (relying party, stored passkeys, the AAL3
//! session a passkey login opens) are the node's ([`medvault_node::identity::passkeys`]); this
//! module throttles, reads the requests and shapes the answers.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use medvault_node::identity::Authenticated;
use medvault_node::identity::login::LoginFailure;
use medvault_node::identity::passkeys::{self, PublicKeyCredential, RegisterPublicKeyCredential};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, json_body};
use crate::identity::{session_token, throttled};
use crate::respond::{blocking, page_response, with_note};

/// `POST /auth/passkey/register/start`: options for `navigator.credentials.create`. A user with
/// no second factor yet may register from a password-only session; otherwise the session must
/// have used one.
pub(crate) async fn register_start(
    State(state): State<AppState>,
    who: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = session_token(&headers).map(medvault_store::TokenHash::of);
    let st = state.clone();
    let w = who.clone();
    let (id, options) = blocking(move || {
        passkeys::register_start(
            &st.node,
            st.webauthn.as_deref(),
            &st.passkey_ceremonies,
            &w,
            session,
        )
    })
    .await?;
    Ok(with_note(
        Json(json!({"ceremony": id, "options": options})).into_response(),
        Some(who.token_id),
        "passkey-register-start",
    ))
}

/// `…/finish` bodies.
#[derive(Deserialize)]
pub(crate) struct Finish<T> {
    ceremony: String,
    credential: T,
}

/// `POST /auth/passkey/register/finish`: verifies the new credential and stores it. A
/// password-only session that registered its first passkey becomes AAL2.
pub(crate) async fn register_finish(
    State(state): State<AppState>,
    who: Authenticated,
    body: Result<Json<Finish<RegisterPublicKeyCredential>>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body, "the ceremony id and the credential")?;
    let st = state.clone();
    let w = who.clone();
    blocking(move || {
        passkeys::register_finish(
            &st.node,
            st.webauthn.as_deref(),
            &st.passkey_ceremonies,
            &st.auth.sessions,
            &w,
            &body.ceremony,
            &body.credential,
        )
    })
    .await?;
    Ok(with_note(
        Json(json!({"registered": true})).into_response(),
        Some(who.token_id),
        "passkey-registered",
    ))
}

/// `POST /auth/passkey/login/start` body.
#[derive(Deserialize)]
pub(crate) struct LoginStart {
    username: String,
}

/// `POST /auth/passkey/login/start`: options for `navigator.credentials.get`.
pub(crate) async fn login_start(
    State(state): State<AppState>,
    req: axum::extract::Request,
) -> Response {
    // Same budgets as password logins (per client address and per account name): ceremonies
    // are a limited resource.
    let ip = crate::client_addr::of(req.extensions());
    let limit = state.config.login_attempts_per_minute;
    if !state.login_throttle.admit_address(ip, limit) {
        return throttled(LoginFailure::Throttled);
    }
    let body: LoginStart = match axum::body::to_bytes(req.into_body(), 16 * 1024)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(b) => b,
        None => return ApiError::bad_request("expected JSON {\"username\"}").into_response(),
    };
    if !state.login_throttle.admit_account(&body.username, limit) {
        return throttled(LoginFailure::AccountThrottled);
    }
    let st = state.clone();
    let out = blocking(move || {
        passkeys::login_start(
            &st.node,
            st.webauthn.as_deref(),
            &st.passkey_ceremonies,
            &body.username,
        )
    })
    .await;
    match out {
        Ok((id, options, user)) => with_note(
            Json(json!({"ceremony": id, "options": options})).into_response(),
            Some(user),
            "passkey-login-start",
        ),
        Err(e) => with_note(e.into_response(), None, "passkey-login-refused"),
    }
}

/// `POST /auth/passkey/login/finish`: verifies the assertion (user verification required) and
/// opens an AAL3 session. Failures count towards the account's lockout.
pub(crate) async fn login_finish(
    State(state): State<AppState>,
    body: Result<Json<Finish<PublicKeyCredential>>, JsonRejection>,
) -> Response {
    let body = match json_body(body, "the ceremony id and the credential") {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        passkeys::login_finish(
            &st.node,
            st.webauthn.as_deref(),
            &st.passkey_ceremonies,
            st.config.sessions,
            &body.ceremony,
            &body.credential,
        )
    })
    .await;
    match out {
        Ok(Ok(ok)) => {
            crate::respond::signed_in(&ok, Some(ok.session.user_id.clone()), "passkey-login")
        }
        Ok(Err((e, user))) => with_note(
            ApiError::from(e).into_response(),
            user,
            "passkey-login-refused",
        ),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// `GET /auth/ui`: the node's own sign-in page (password + TOTP, passkeys).
pub(crate) async fn page() -> Response {
    page_response(include_str!("ui/login.html"), "text/html; charset=utf-8")
}

/// `GET /auth/ui/common.js`: helpers shared by the sign-in and consent pages.
pub(crate) async fn common_script() -> Response {
    page_response(
        include_str!("ui/common.js"),
        "text/javascript; charset=utf-8",
    )
}

/// `GET /auth/ui/login.js`: the sign-in page's script.
pub(crate) async fn page_script() -> Response {
    page_response(
        include_str!("ui/login.js"),
        "text/javascript; charset=utf-8",
    )
}
