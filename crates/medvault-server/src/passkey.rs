//! WebAuthn passkeys (`webauthn-rs`): phishing-resistant, multi-factor logins. A passkey is a
//! key pair bound to this node's origin, unlocked on the person's device by a PIN or a biometric
//! (user verification is required on every ceremony), so a passkey login reaches AAL3.
//!
//! Ceremonies run in two steps (`…/start` returns the options for
//! `navigator.credentials.create/get`, `…/finish` takes the browser's answer); their state stays
//! in this server's memory for five minutes and is used once. Passkeys are stored sealed under
//! `@identity` (bound to the user and the credential id); their signature counters are updated
//! after every login.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use medvault_core::Role;
use medvault_store::{StoreError, write_with};
use serde::Deserialize;
use serde_json::{Value, json};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::AppState;
use crate::auth::{Authenticated, unauthorized};
use crate::error::{ApiError, ErrorKind, IssueCode};
use crate::http::blocking;
use crate::identity::{
    LoginFailure, find_user, identity_key, new_session, open, record_failure, seal, secret_json,
    session_token, throttled, user_of, with_note,
};

/// How long a ceremony may take.
const CEREMONY_TTL: Duration = Duration::from_secs(300);

/// The node's WebAuthn relying party.
///
/// # Errors
/// A message if the origin is not a valid WebAuthn origin.
pub fn relying_party(origin: &Url) -> Result<Webauthn, String> {
    let rp_id = origin.host_str().ok_or("the WebAuthn origin has no host")?;
    WebauthnBuilder::new(rp_id, origin)
        .and_then(|b| b.rp_name("medvault").build())
        .map_err(|e| format!("WebAuthn origin {origin}: {e}"))
}

enum Ceremony {
    Register {
        user_id: String,
        session: Option<[u8; 32]>,
        state: Box<PasskeyRegistration>,
    },
    Login {
        user_id: String,
        state: Box<PasskeyAuthentication>,
    },
}

/// Ceremonies in progress, by their random id.
#[derive(Default)]
pub struct Ceremonies(Mutex<HashMap<String, (Ceremony, Instant)>>);

impl std::fmt::Debug for Ceremonies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ceremonies")
    }
}

impl Ceremonies {
    fn start(&self, c: Ceremony) -> Result<String, ApiError> {
        let mut raw = [0u8; 16];
        medvault_crypto::random_fill(&mut raw).map_err(|e| ApiError::internal(&e))?;
        let id = hex::encode(raw);
        let mut m = self
            .0
            .lock()
            .map_err(|_| ApiError::internal(&"ceremony lock poisoned"))?;
        m.retain(|_, (_, at)| at.elapsed() < CEREMONY_TTL);
        if m.len() >= 10_000 {
            return Err(ApiError::new(
                ErrorKind::Unavailable,
                IssueCode::Transient,
                "too many passkey ceremonies in progress: try again shortly",
            ));
        }
        m.insert(id.clone(), (c, Instant::now()));
        Ok(id)
    }

    fn take(&self, id: &str) -> Option<Ceremony> {
        let mut m = self.0.lock().ok()?;
        m.remove(id)
            .filter(|(_, at)| at.elapsed() < CEREMONY_TTL)
            .map(|(c, _)| c)
    }
}

fn webauthn(state: &AppState) -> Result<&Webauthn, ApiError> {
    state.webauthn.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            IssueCode::NotSupported,
            "passkeys are not configured on this node (serve --webauthn-origin)",
        )
    })
}

/// A stable WebAuthn user handle for a user id (no personal data in it).
fn user_handle(user_id: &str) -> Uuid {
    let h = medvault_crypto::sha256(user_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    Uuid::from_bytes(b)
}

fn load_passkeys(state: &AppState, user_id: &str) -> Result<Vec<Passkey>, ApiError> {
    let key = identity_key(&state.node)?;
    state
        .node
        .store
        .passkeys(user_id)?
        .into_iter()
        .map(|(cred, sealed)| {
            let field = format!("passkey:{}", hex::encode(&cred));
            let plain = open(&key, user_id, &field, &sealed)?;
            serde_json::from_slice(&plain).map_err(|e| ApiError::internal(&e))
        })
        .collect()
}

fn store_passkey(state: &AppState, user_id: &str, pk: &Passkey) -> Result<(), ApiError> {
    let key = identity_key(&state.node)?;
    let cred: Vec<u8> = AsRef::<[u8]>::as_ref(pk.cred_id()).to_vec();
    let field = format!("passkey:{}", hex::encode(&cred));
    let json = zeroize::Zeroizing::new(serde_json::to_vec(pk).map_err(|e| ApiError::internal(&e))?);
    let sealed = seal(&key, user_id, &field, &json)?;
    let (uid, now) = (user_id.to_owned(), state.node.clock.now_micros());
    match write_with(state.node.store.as_ref(), move |tx| {
        tx.put_passkey(&uid, &cred, &sealed, now)
    }) {
        Err(StoreError::Conflict) => Err(ApiError::new(
            ErrorKind::Conflict,
            IssueCode::Duplicate,
            "this passkey is registered to another account",
        )),
        r => Ok(r?),
    }
}

/// `POST /auth/passkey/register/start`: options for `navigator.credentials.create`. A user with
/// no second factor yet may register from a password-only session; otherwise the session must
/// have used one.
pub(crate) async fn register_start(
    State(state): State<AppState>,
    who: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = session_token(&headers).map(|t| medvault_crypto::sha256(t.as_bytes()));
    let st = state.clone();
    let w = who.clone();
    let (id, options) = blocking(move || {
        let user = user_of(&st, &w)?;
        crate::identity::factor_change_allowed(&st, &user, w.aal)?;
        let existing = load_passkeys(&st, &user.id)?;
        let name = crate::identity::user_name(&st.node, &user)?;
        let exclude = existing.iter().map(|p| p.cred_id().clone()).collect();
        let (options, reg) = webauthn(&st)?
            .start_passkey_registration(user_handle(&user.id), &name, &name, Some(exclude))
            .map_err(|e| ApiError::internal(&e))?;
        let id = st.passkey_ceremonies.start(Ceremony::Register {
            user_id: user.id,
            session,
            state: Box::new(reg),
        })?;
        Ok((id, options))
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
    Json(body): Json<Finish<RegisterPublicKeyCredential>>,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let w = who.clone();
    blocking(move || {
        let Some(Ceremony::Register {
            user_id,
            session,
            state: reg,
        }) = st.passkey_ceremonies.take(&body.ceremony)
        else {
            return Err(ApiError::bad_request("unknown or expired passkey ceremony").into());
        };
        if user_id != w.token_id {
            return Err(ApiError::bad_request("unknown or expired passkey ceremony").into());
        }
        let pk = webauthn(&st)?
            .finish_passkey_registration(&body.credential, &reg)
            .map_err(|e| {
                ApiError::bad_request(format!("the passkey registration does not verify: {e}"))
            })?;
        store_passkey(&st, &user_id, &pk)?;
        if let Some(h) = session
            && let Some(mut s) = st.node.store.session(&h)?
            && s.aal < 2
        {
            s.aal = 2;
            write_with(st.node.store.as_ref(), move |tx| tx.put_session(&s))?;
            st.sessions.forget(&h);
        }
        Ok(())
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
        let refused = || unauthorized("passkey login is not possible for this account");
        let user = find_user(&st.node, &body.username)
            .ok()
            .flatten()
            .filter(|u| !u.disabled)
            .ok_or_else(refused)?;
        let keys = load_passkeys(&st, &user.id)?;
        if keys.is_empty() {
            return Err(refused().into());
        }
        let (options, auth) = webauthn(&st)?
            .start_passkey_authentication(&keys)
            .map_err(|e| ApiError::internal(&e))?;
        let id = st.passkey_ceremonies.start(Ceremony::Login {
            user_id: user.id.clone(),
            state: Box::new(auth),
        })?;
        Ok((id, options, user.id))
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
    Json(body): Json<Finish<PublicKeyCredential>>,
) -> Response {
    let st = state.clone();
    let out = tokio::task::spawn_blocking(move || {
        let Some(Ceremony::Login {
            user_id,
            state: auth,
        }) = st.passkey_ceremonies.take(&body.ceremony)
        else {
            return Err((unauthorized("unknown or expired passkey ceremony"), None));
        };
        let fail = |e: ApiError| (e, Some(user_id.clone()));
        let user = st
            .node
            .store
            .user(&user_id)
            .map_err(|e| fail(e.into()))?
            .ok_or_else(|| fail(unauthorized("login failed")))?;
        let now = st.node.clock.now_micros();
        if user.disabled || user.locked_until_micros > now {
            return Err(fail(unauthorized("login failed")));
        }
        let role = Role::parse(&user.role).map_err(|e| fail(ApiError::internal(&e)))?;
        let result = match webauthn(&st)
            .map_err(fail)?
            .finish_passkey_authentication(&body.credential, &auth)
        {
            Ok(r) => r,
            Err(_) => {
                let _ = record_failure(&st.node, &user_id, now);
                return Err(fail(unauthorized("login failed")));
            }
        };
        if !result.user_verified() {
            return Err(fail(unauthorized(
                "the authenticator did not verify the user",
            )));
        }
        // Keep the signature counter (and backup state) current.
        let mut keys = load_passkeys(&st, &user_id).map_err(fail)?;
        for pk in &mut keys {
            if pk.update_credential(&result) == Some(true) {
                store_passkey(&st, &user_id, pk).map_err(fail)?;
            }
        }
        let (_, max) = st.config.sessions_for(role);
        let (token, session) = new_session(&user_id, 3, now, max).map_err(fail)?;
        let (s, uid) = (session.clone(), user_id.clone());
        // Applied to the row as it is now: a disable or lockout since we read it wins.
        let opened = write_with(st.node.store.as_ref(), move |tx| {
            let Some(mut u) = tx.user(&uid)? else {
                return Ok(false);
            };
            if u.disabled || u.locked_until_micros > now {
                return Ok(false);
            }
            u.failed_logins = 0;
            u.locked_until_micros = 0;
            tx.put_user(&u)?;
            tx.put_session(&s)?;
            Ok(true)
        })
        .map_err(|e| fail(e.into()))?;
        if !opened {
            return Err(fail(unauthorized("login failed")));
        }
        Ok((token, session, role))
    })
    .await;
    match out {
        Ok(Ok((token, session, role))) => {
            let (idle, _) = state.config.sessions_for(role);
            let body: Value = json!({
                "session": token.as_str(),
                "session_id": session.session_id,
                "user_id": session.user_id,
                "role": role.as_str(),
                "aal": session.aal,
                "idle_timeout_seconds": idle.as_secs(),
                "expires_at": medvault_node::clock::instant(session.expires_micros),
            });
            secret_json(&body, Some(session.user_id.clone()), "passkey-login")
        }
        Ok(Err((e, user))) => with_note(e.into_response(), user, "passkey-login-refused"),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// The sign-in page's content security policy: its own script only, no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
    connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn page_response(body: &'static str, content_type: &'static str) -> Response {
    use axum::http::{HeaderValue, header};
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
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

/// Shares the ceremony map type with `AppState`.
pub type PasskeyCeremonies = Arc<Ceremonies>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ceremonies_are_used_once_and_origins_are_checked() {
        let rp = relying_party(&Url::parse("http://localhost:8080").unwrap()).unwrap();
        let (options, reg) = rp
            .start_passkey_registration(user_handle("usr_1"), "alice", "alice", None)
            .unwrap();
        let text = serde_json::to_string(&options).unwrap();
        assert!(text.contains("\"userVerification\":\"required\""), "{text}");
        let ceremonies = Ceremonies::default();
        let id = ceremonies
            .start(Ceremony::Register {
                user_id: "usr_1".into(),
                session: None,
                state: Box::new(reg),
            })
            .unwrap();
        assert!(matches!(
            ceremonies.take(&id),
            Some(Ceremony::Register { .. })
        ));
        assert!(ceremonies.take(&id).is_none(), "a ceremony is used once");
        assert!(ceremonies.take("unknown").is_none());
        assert!(relying_party(&Url::parse("file:///tmp/x").unwrap()).is_err());
        assert_eq!(user_handle("usr_1"), user_handle("usr_1"));
        assert_ne!(user_handle("usr_1"), user_handle("usr_2"));
    }
}
