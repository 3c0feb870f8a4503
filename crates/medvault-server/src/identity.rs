//! People's sign-in over HTTP: `POST /auth/login`, `/auth/logout`, `GET /auth/session` and TOTP
//! enrollment (`/auth/totp/*`). What they do is the node's ([`medvault_node::identity`]: accounts,
//! login, lockout, sessions); this module throttles, reads the requests and shapes the answers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use medvault_node::identity::Authenticated;
use medvault_node::identity::login::{self, Credentials, Failed, LoginFailure};
use medvault_node::identity::sessions::{self, SESSION_PREFIX};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::{ApiError, Error, ErrorKind, IssueCode};
use crate::respond::{blocking, on_node, secret_json, with_note};

/// The answer to a login refused for too many attempts.
pub(crate) fn throttled(failure: LoginFailure) -> Response {
    let resp = ApiError::new(
        ErrorKind::Throttled,
        IssueCode::Throttled,
        "too many login attempts from this address or for this account: wait a minute",
    )
    .into_response();
    with_note(resp, None, failure.as_str())
}

/// `POST /auth/login`.
pub(crate) async fn login(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    // The client's address (a trusted proxy's forwarding header counts; without a socket,
    // tests driving the router directly, loopback).
    let ip = crate::client_addr::of(req.extensions());
    // JSON only: a form or text/plain POST from another site's page (which needs no CORS
    // preflight) must not be able to spend an account's or an address's sign-in attempts.
    let json = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return ApiError::new(
            ErrorKind::UnsupportedMediaType,
            IssueCode::NotSupported,
            "send the sign-in as Content-Type: application/json",
        )
        .into_response();
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return ApiError::new(
            ErrorKind::TooLarge,
            IssueCode::TooLong,
            "login requests are small",
        )
        .into_response();
    };
    let limit = state.config.login_attempts_per_minute;
    if !state.login_throttle.admit_address(ip, limit) {
        return throttled(LoginFailure::Throttled);
    }
    let req: Credentials = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            let e = ApiError::bad_request(
                "expected JSON {\"username\", \"password\", \"totp\"?, \"recovery_code\"?}",
            );
            return with_note(e.into_response(), None, "malformed");
        }
    };
    if !state.login_throttle.admit_account(&req.username, limit) {
        return throttled(LoginFailure::AccountThrottled);
    }
    let has_code = req.has_second_factor();
    let attempt = match login::login(Arc::clone(&state.node), state.config.sessions, req).await {
        Ok(a) => a,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let user = attempt.user;
    match attempt.outcome {
        Ok(ok) => crate::respond::signed_in(&ok, user, "login"),
        Err(Failed::Login(f)) => with_note(
            ApiError::from(login::login_error(has_code)).into_response(),
            user,
            f.as_str(),
        ),
        Err(Failed::Error(e)) => with_note(ApiError::from(e).into_response(), user, "error"),
    }
}

/// The presented session token, if the request authenticates with one.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| t.starts_with(SESSION_PREFIX))
}

/// `POST /auth/logout`: ends the presenting session.
pub(crate) async fn logout(
    State(state): State<AppState>,
    who: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = session_token(&headers).ok_or_else(|| Error::unauthenticated("not a session"))?;
    let hash = medvault_store::TokenHash::of(token);
    sessions::end_session(&state.node, &state.auth.sessions, &who.token_id, hash).await?;
    Ok(with_note(
        StatusCode::NO_CONTENT.into_response(),
        Some(who.token_id),
        "logout",
    ))
}

/// `GET /auth/session`: who the session belongs to and its assurance level.
pub(crate) async fn whoami(who: Authenticated) -> Result<Response, ApiError> {
    let Some(session) = &who.session else {
        return Err(Error::unauthenticated("not a session").into());
    };
    Ok(Json(json!({
        "user_id": who.token_id,
        "session_id": session,
        "role": who.role.as_str(),
        "aal": who.aal.map_or(0, medvault_core::Aal::level),
        // A patient's own Patient id (the portal opens their record with it).
        "patient": who.patient,
    }))
    .into_response())
}

/// `POST /auth/totp/enroll` body (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollRequest {
    /// The one-time code from the node's host that an admin's, auditor's or privacy officer's
    /// first second factor needs.
    #[serde(default)]
    enrolment_code: Option<String>,
}

/// `POST /auth/totp/enroll`: a new TOTP secret, pending until a code from it is confirmed.
/// Replacing an active authenticator needs an AAL2 session; a privileged account's first one
/// needs `{"enrolment_code": …}` from the host.
pub(crate) async fn totp_enroll(
    State(state): State<AppState>,
    who: Authenticated,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: EnrollRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EnrollRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            Error::bad_request("the body is a JSON object with at most an enrolment_code")
        })?
    };
    let w = who.clone();
    let e = on_node(&state, move |node| {
        login::totp_enroll(node, &w, req.enrolment_code.as_deref())
    })
    .await?;
    let out = json!({
        "otpauth_uri": e.uri,
        "secret": e.secret,
        "qr_svg": e.qr_svg,
    });
    Ok(secret_json(&out, Some(who.token_id), "totp-enroll"))
}

/// `POST /auth/totp/confirm` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfirmRequest {
    code: String,
    /// As for enrolling (a privileged account's first second factor).
    #[serde(default)]
    enrolment_code: Option<String>,
}

/// `POST /auth/totp/confirm`: activates the pending secret if `code` matches it, issues fresh
/// recovery codes (shown once), and raises the presenting session to AAL2.
pub(crate) async fn totp_confirm(
    State(state): State<AppState>,
    who: Authenticated,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: ConfirmRequest = serde_json::from_slice(&body).map_err(|_| {
        Error::bad_request(
            "the body is a JSON object with the code (and, enrolling an admin's, auditor's or privacy officer's first factor, the enrolment_code)",
        )
    })?;
    let st = state.clone();
    let w = who.clone();
    let hash = session_token(&headers).map(medvault_store::TokenHash::of);
    let codes = blocking(move || {
        login::totp_confirm(
            &st.node,
            &st.auth.sessions,
            &w,
            hash,
            &req.code,
            req.enrolment_code.as_deref(),
        )
    })
    .await?;
    let out = json!({
        "recovery_codes": codes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
    });
    Ok(secret_json(&out, Some(who.token_id), "totp-confirm"))
}
