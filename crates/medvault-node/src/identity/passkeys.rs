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

use medvault_core::{Aal, Role};
use medvault_store::{StoreError, TokenHash, write_with};
pub use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url, Webauthn,
};
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, Uuid, WebauthnBuilder,
};

use crate::error::{Error, ErrorKind, IssueCode};
use crate::identity::accounts::{find_user, user_name};
use crate::identity::login::{LoginOk, factor_change_allowed, record_failure, user_of};
use crate::identity::sessions::{SessionCache, SessionLimits, new_session};
use crate::identity::{Authenticated, identity_key, open, seal};
use crate::node::Node;

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
        session: Option<TokenHash>,
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
    fn start(&self, c: Ceremony) -> Result<String, Error> {
        let mut raw = [0u8; 16];
        medvault_crypto::random_fill(&mut raw).map_err(|e| Error::internal(&e))?;
        let id = hex::encode(raw);
        let mut m = self
            .0
            .lock()
            .map_err(|_| Error::internal(&"ceremony lock poisoned"))?;
        m.retain(|_, (_, at)| at.elapsed() < CEREMONY_TTL);
        if m.len() >= 10_000 {
            return Err(Error::new(
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

/// Shares the ceremony map between requests.
pub type PasskeyCeremonies = Arc<Ceremonies>;

/// The relying party, if passkeys are configured.
///
/// # Errors
/// 404 (`not-supported`) when they are not.
pub fn require(rp: Option<&Webauthn>) -> Result<&Webauthn, Error> {
    rp.ok_or_else(|| {
        Error::new(
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

fn load_passkeys(node: &Node, user_id: &str) -> Result<Vec<Passkey>, Error> {
    let key = identity_key(node)?;
    node.store
        .passkeys(user_id)?
        .into_iter()
        .map(|(cred, sealed)| {
            let field = format!("passkey:{}", hex::encode(&cred));
            let plain = open(&key, user_id, &field, &sealed)?;
            serde_json::from_slice(&plain).map_err(|e| Error::internal(&e))
        })
        .collect()
}

fn store_passkey(node: &Node, user_id: &str, pk: &Passkey) -> Result<(), Error> {
    let key = identity_key(node)?;
    let cred: Vec<u8> = AsRef::<[u8]>::as_ref(pk.cred_id()).to_vec();
    let field = format!("passkey:{}", hex::encode(&cred));
    let json = zeroize::Zeroizing::new(serde_json::to_vec(pk).map_err(|e| Error::internal(&e))?);
    let sealed = seal(&key, user_id, &field, &json)?;
    let (uid, now) = (user_id.to_owned(), node.clock.now_micros());
    match write_with(node.store.as_ref(), move |tx| {
        tx.put_passkey(&uid, &cred, &sealed, now)
    }) {
        Err(StoreError::Conflict) => Err(Error::new(
            ErrorKind::Conflict,
            IssueCode::Duplicate,
            "this passkey is registered to another account",
        )),
        r => Ok(r?),
    }
}

/// Starts registering a passkey for the session's user (blocking): the ceremony id and the
/// options for `navigator.credentials.create`. A user with no second factor yet may register
/// from a password-only session; otherwise the session must have used one. `session` is the
/// hash of the presenting session's token, raised to AAL2 when the registration finishes.
///
/// # Errors
/// 403 when the credential may not; 404 when passkeys are not configured.
pub fn register_start(
    node: &Node,
    rp: Option<&Webauthn>,
    ceremonies: &Ceremonies,
    who: &Authenticated,
    session: Option<TokenHash>,
) -> Result<(String, CreationChallengeResponse), Error> {
    let user = user_of(node, who)?;
    // A first factor that needs an enrolment code is a TOTP authenticator (passkeys are added
    // from a session signed in with it).
    factor_change_allowed(node, &user, who.aal, None)?;
    let existing = load_passkeys(node, &user.id)?;
    let name = user_name(node, &user)?;
    let exclude = existing.iter().map(|p| p.cred_id().clone()).collect();
    let (options, reg) = require(rp)?
        .start_passkey_registration(user_handle(&user.id), &name, &name, Some(exclude))
        .map_err(|e| Error::internal(&e))?;
    let id = ceremonies.start(Ceremony::Register {
        user_id: user.id,
        session,
        state: Box::new(reg),
    })?;
    Ok((id, options))
}

/// Verifies the new credential of ceremony `ceremony` and stores it (blocking). A
/// password-only session that registered its first passkey becomes AAL2.
///
/// # Errors
/// 400 for an unknown or expired ceremony (or another user's) or a credential that does not
/// verify; 409 for a passkey registered to another account.
pub fn register_finish(
    node: &Node,
    rp: Option<&Webauthn>,
    ceremonies: &Ceremonies,
    sessions: &SessionCache,
    who: &Authenticated,
    ceremony: &str,
    credential: &RegisterPublicKeyCredential,
) -> Result<(), Error> {
    let Some(Ceremony::Register {
        user_id,
        session,
        state: reg,
    }) = ceremonies.take(ceremony)
    else {
        return Err(Error::bad_request("unknown or expired passkey ceremony"));
    };
    if user_id != who.token_id {
        return Err(Error::bad_request("unknown or expired passkey ceremony"));
    }
    let pk = require(rp)?
        .finish_passkey_registration(credential, &reg)
        .map_err(|e| {
            Error::bad_request(format!("the passkey registration does not verify: {e}"))
        })?;
    store_passkey(node, &user_id, &pk)?;
    if let Some(h) = session
        && let Some(mut s) = node.store.session(&h)?
        && s.aal < Aal::Two
    {
        s.aal = Aal::Two;
        write_with(node.store.as_ref(), move |tx| tx.put_session(&s))?;
        sessions.forget(&h);
    }
    Ok(())
}

/// Starts a passkey login for the account `username` (blocking): the ceremony id, the options
/// for `navigator.credentials.get`, and the user's id.
///
/// # Errors
/// 401 when the account cannot sign in with a passkey; 404 when passkeys are not configured.
pub fn login_start(
    node: &Node,
    rp: Option<&Webauthn>,
    ceremonies: &Ceremonies,
    username: &str,
) -> Result<(String, RequestChallengeResponse, String), Error> {
    let refused = || Error::unauthenticated("passkey login is not possible for this account");
    let user = find_user(node, username)
        .ok()
        .flatten()
        .filter(|u| !u.disabled)
        .ok_or_else(refused)?;
    let keys = load_passkeys(node, &user.id)?;
    if keys.is_empty() {
        return Err(refused());
    }
    let (options, auth) = require(rp)?
        .start_passkey_authentication(&keys)
        .map_err(|e| Error::internal(&e))?;
    let id = ceremonies.start(Ceremony::Login {
        user_id: user.id.clone(),
        state: Box::new(auth),
    })?;
    Ok((id, options, user.id))
}

/// Verifies the assertion of ceremony `ceremony` (user verification required) and opens an
/// AAL3 session (blocking). Failures count towards the account's lockout.
///
/// # Errors
/// 401 when the login fails, with the account concerned when the ceremony named one.
pub fn login_finish(
    node: &Node,
    rp: Option<&Webauthn>,
    ceremonies: &Ceremonies,
    limits: SessionLimits,
    ceremony: &str,
    credential: &PublicKeyCredential,
) -> Result<LoginOk, (Error, Option<String>)> {
    let Some(Ceremony::Login {
        user_id,
        state: auth,
    }) = ceremonies.take(ceremony)
    else {
        return Err((
            Error::unauthenticated("unknown or expired passkey ceremony"),
            None,
        ));
    };
    let fail = |e: Error| (e, Some(user_id.clone()));
    let user = node
        .store
        .user(&user_id)
        .map_err(|e| fail(e.into()))?
        .ok_or_else(|| fail(Error::unauthenticated("login failed")))?;
    let now = node.clock.now_micros();
    if user.disabled || user.locked_until_micros > now {
        return Err(fail(Error::unauthenticated("login failed")));
    }
    let role = Role::parse(&user.role).map_err(|e| fail(Error::internal(&e)))?;
    let result = match require(rp)
        .map_err(fail)?
        .finish_passkey_authentication(credential, &auth)
    {
        Ok(r) => r,
        Err(_) => {
            let _ = record_failure(node, &user_id, now);
            return Err(fail(Error::unauthenticated("login failed")));
        }
    };
    if !result.user_verified() {
        return Err(fail(Error::unauthenticated(
            "the authenticator did not verify the user",
        )));
    }
    // Keep the signature counter (and backup state) current.
    let mut keys = load_passkeys(node, &user_id).map_err(fail)?;
    for pk in &mut keys {
        if pk.update_credential(&result) == Some(true) {
            store_passkey(node, &user_id, pk).map_err(fail)?;
        }
    }
    let (idle, max) = limits.for_role(role);
    let (token, session) = new_session(&user_id, Aal::Three, now, max).map_err(fail)?;
    let (s, uid) = (session.clone(), user_id.clone());
    // Applied to the row as it is now: a disable or lockout since we read it wins.
    let opened = write_with(node.store.as_ref(), move |tx| {
        let Some(mut u) = tx.user(&uid)? else {
            return Ok(false);
        };
        if u.disabled || u.locked_until_micros > now {
            return Ok(false);
        }
        u.failed_logins = 0;
        u.locked_until_micros = 0;
        u.last_login_micros = Some(now);
        tx.put_user(&u)?;
        tx.put_session(&s)?;
        Ok(true)
    })
    .map_err(|e| fail(e.into()))?;
    if !opened {
        return Err(fail(Error::unauthenticated("login failed")));
    }
    Ok(LoginOk {
        token,
        session,
        role,
        idle,
    })
}

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
