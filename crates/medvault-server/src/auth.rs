//! Bearer-token authentication as an extractor, so no handler can forget it.
//!
//! Tokens are `mvt_` + 43 base64url characters (256 random bits). The database stores only their
//! SHA-256; a lookup hashes the presented token and finds the row by hash, so no comparison of
//! secrets happens in application code. Validated tokens are cached for
//! [`CACHE_TTL`] to keep the per-request cost low.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine as _;
use medvault_core::Role;
use medvault_store::{Store, StoreTx};

use crate::AppState;
use crate::error::{ApiError, IssueCode};

/// How long a validated token is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
const PREFIX: &str = "mvt_";
const MAX_CACHED: usize = 100_000;

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Non-secret id of the credential: the API token's id (`tok_…`) or, for a login session,
    /// the user's id (`usr_…`).
    pub token_id: String,
    /// Role granted.
    pub role: Role,
    /// The login session's id (`ses_…`), when a person authenticated.
    pub session: Option<String>,
    /// Authenticator assurance level of a session (1: password only, 2: MFA); 0 for API tokens.
    pub aal: u8,
    /// For an OAuth2 access token: the SMART scopes granted, enforced on every interaction.
    pub scopes: Option<std::sync::Arc<medvault_auth::scopes::ScopeSet>>,
    /// For an OAuth2 access token: the client (app or service) that presents it.
    pub client: Option<String>,
    /// For a login session: when the person last proved their factors (the session's start),
    /// microseconds. Sensitive actions require it to be recent (step-up).
    pub auth_time_micros: Option<i64>,
    /// For a patient (their session or their app's token): their Patient resource id.
    pub patient: Option<String>,
    /// For staff (their session or their app's token): their `Practitioner/<id>`, which care
    /// teams and encounters name.
    pub practitioner: Option<String>,
}

/// Where the authenticator leaves who it authenticated, for the audit record the request
/// middleware writes after the handler ran.
#[derive(Debug, Clone, Default)]
pub struct AgentSlot(std::sync::Arc<Mutex<Option<Authenticated>>>);

impl AgentSlot {
    /// Who was authenticated, if anyone.
    pub fn get(&self) -> Option<Authenticated> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, who: &Authenticated) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(who.clone());
        }
    }
}

/// Recently validated credentials of one kind, by the SHA-256 of the credential: a request
/// with a cached credential costs a hash and a map lookup. Entries are trusted for a bounded
/// time (the caller's), so a credential ended elsewhere (another process) stops working soon.
#[derive(Debug)]
pub struct CredentialCache<V>(Mutex<HashMap<[u8; 32], (V, Instant)>>);

impl<V> Default for CredentialCache<V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone> CredentialCache<V> {
    /// The cached value for `hash`, if it was stored less than `ttl` ago.
    pub fn fresh(&self, hash: &[u8; 32], ttl: Duration) -> Option<V> {
        let map = self.0.lock().ok()?;
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(v, _)| v.clone())
    }

    /// Caches `value` for `hash` (emptying the cache when it is full).
    pub fn put(&self, hash: [u8; 32], value: V) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.insert(hash, (value, Instant::now()));
        }
    }

    /// Replaces the cached value for `hash`, keeping the time it was validated at (so the
    /// caller's recheck still happens on time); caches it anew if it is not there.
    pub fn refresh(&self, hash: [u8; 32], value: V) {
        if let Ok(mut map) = self.0.lock() {
            match map.get_mut(&hash) {
                Some((v, _)) => *v = value,
                None => {
                    if map.len() >= MAX_CACHED {
                        map.clear();
                    }
                    map.insert(hash, (value, Instant::now()));
                }
            }
        }
    }

    /// Forgets `hash` (after a logout or expiry).
    pub fn forget(&self, hash: &[u8; 32]) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(hash);
        }
    }
}

/// Recently validated API tokens.
pub type TokenCache = CredentialCache<Authenticated>;

pub(crate) fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, msg)
}

/// Creates a token, stores its hash and returns its text (shown once, never stored).
///
/// # Errors
/// Store failures, RNG failure.
pub fn create_token(store: &dyn Store, role: Role, now_micros: i64) -> Result<String, ApiError> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| ApiError::internal(&e))?;
    let text = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    );
    let hash = medvault_crypto::sha256(text.as_bytes());
    let token_id = format!("tok_{}", hex::encode(&hash[..8]));
    let role_name = role.as_str();
    store.write(Box::new(move |tx: &mut dyn StoreTx| {
        tx.add_token(&hash, &token_id, role_name, now_micros)
    }))?;
    Ok(text)
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let who = authenticate(parts, state).await?;
        if let Some(slot) = parts.extensions.get::<AgentSlot>() {
            slot.set(&who);
        }
        Ok(who)
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Authenticated, ApiError> {
    let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        unauthorized("authentication required: send Authorization: Bearer <token>")
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            unauthorized("malformed Authorization header: expected Bearer mvt_… or mvs_…")
        })?;
    validate_bearer(state, token).await
}

/// Validates a bearer credential: an API token (`mvt_…`) or a login session (`mvs_…`).
///
/// # Errors
/// 401 naming why.
pub async fn validate_bearer(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    if token.len() >= 128 {
        return Err(unauthorized("the bearer token is not valid"));
    }
    if token.starts_with(crate::identity::SESSION_PREFIX) {
        return crate::identity::authenticate_session(state, token).await;
    }
    if token.starts_with(crate::oauth::ACCESS_TOKEN_PREFIX) {
        return crate::oauth::authenticate_access_token(state, token).await;
    }
    if !token.starts_with(PREFIX) {
        return Err(unauthorized(
            "malformed Authorization header: expected Bearer mvt_… or mvs_…",
        ));
    }
    let hash = medvault_crypto::sha256(token.as_bytes());
    if let Some(who) = state.tokens.fresh(&hash, CACHE_TTL) {
        return Ok(who);
    }
    let store = state.node.store.clone();
    let row = tokio::task::spawn_blocking(move || store.token(&hash))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let row = row.ok_or_else(|| unauthorized("the bearer token is not valid"))?;
    let role = Role::parse(&row.role).map_err(|e| ApiError::internal(&e))?;
    let who = Authenticated {
        token_id: row.token_id,
        role,
        session: None,
        aal: 0,
        scopes: None,
        client: None,
        auth_time_micros: None,
        patient: None,
        practitioner: None,
    };
    state.tokens.put(hash, who.clone());
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_keeps_the_validation_time_and_put_renews_it() {
        let cache = CredentialCache::<u32>::default();
        let ttl = Duration::from_millis(50);
        assert_eq!(cache.fresh(&[1; 32], ttl), None);
        cache.put([1; 32], 1);
        assert_eq!(cache.fresh(&[1; 32], ttl), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        // Updating the value (a session's last use) does not make it fresh again...
        cache.refresh([1; 32], 2);
        assert_eq!(cache.fresh(&[1; 32], ttl), None);
        // ...validating it again does.
        cache.put([1; 32], 3);
        assert_eq!(cache.fresh(&[1; 32], ttl), Some(3));
        cache.forget(&[1; 32]);
        assert_eq!(cache.fresh(&[1; 32], ttl), None);
    }
}
