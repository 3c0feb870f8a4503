//! Bearer-token authentication as an extractor, so no handler can forget it.
//!
//! API tokens are `mvt_` + 43 base64url characters (256 random bits), for automation on the
//! node's host: they grant a role without a second factor, so creating one needs the key file
//! (`medvault token create`). They expire (default [`TOKEN_DEFAULT_DAYS`], at most
//! [`TOKEN_MAX_DAYS`] days) and can be revoked (`medvault token revoke`). The database stores
//! only their SHA-256; a lookup hashes the presented token and finds the row by hash, so no
//! comparison of secrets happens in application code. Validated tokens are cached for
//! [`CACHE_TTL`] to keep the per-request cost low: a revocation by the CLI (another process)
//! takes effect within that time; an expiry is checked on every request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use medvault_core::Role;
use medvault_store::{Store, StoreTx, TokenRow};

use crate::AppState;
use crate::error::{ApiError, ErrorKind, IssueCode};

/// How long a validated token is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
const PREFIX: &str = "mvt_";
const MAX_CACHED: usize = 100_000;
/// Days an API token lasts unless its creator says otherwise.
pub const TOKEN_DEFAULT_DAYS: u32 = 30;
/// The longest an API token may last, in days.
pub const TOKEN_MAX_DAYS: u32 = 365;
/// A token's last use is written back at most this often (like a session's).
const TOKEN_TOUCH_EVERY_MICROS: i64 = 60_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

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

/// Where the authenticator leaves who it authenticated (or which known credential it refused),
/// for the audit record the request middleware writes after the handler ran.
#[derive(Debug, Clone, Default)]
pub struct AgentSlot(std::sync::Arc<Mutex<SlotState>>);

#[derive(Debug, Default)]
struct SlotState {
    who: Option<Authenticated>,
    refused: Option<RefusedCredential>,
}

/// A credential that was presented, is known, and was refused (an expired or revoked API
/// token): the access log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCredential {
    /// The credential's non-secret id (`tok_…`).
    pub id: String,
    /// Why: `token-expired` or `token-revoked`.
    pub why: &'static str,
}

impl AgentSlot {
    /// Who was authenticated, if anyone.
    pub fn get(&self) -> Option<Authenticated> {
        self.0.lock().ok().and_then(|g| g.who.clone())
    }

    /// The known credential that was refused, if one was.
    pub fn refused(&self) -> Option<RefusedCredential> {
        self.0.lock().ok().and_then(|g| g.refused.clone())
    }

    fn set(&self, who: &Authenticated) {
        if let Ok(mut g) = self.0.lock() {
            g.who = Some(who.clone());
        }
    }

    fn set_refused(&self, refused: RefusedCredential) {
        if let Ok(mut g) = self.0.lock() {
            g.refused = Some(refused);
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

/// A validated API token: who it authenticates, until when, and the last use recorded.
#[derive(Debug, Clone)]
pub struct CachedToken {
    who: Authenticated,
    expires_micros: i64,
    last_used_micros: i64,
}

/// Recently validated API tokens.
pub type TokenCache = CredentialCache<CachedToken>;

pub(crate) fn unauthorized(msg: &str) -> ApiError {
    ApiError::new(ErrorKind::Unauthenticated, IssueCode::Login, msg)
}

/// Creates an API token granting `role` for `days` days, stores its hash and returns its text
/// (shown once, never stored) with the stored row.
///
/// # Errors
/// 400 if `days` is not 1 to [`TOKEN_MAX_DAYS`]; store failures, RNG failure.
pub fn create_token(
    store: &dyn Store,
    role: Role,
    now_micros: i64,
    days: u32,
) -> Result<(String, TokenRow), ApiError> {
    if !(1..=TOKEN_MAX_DAYS).contains(&days) {
        return Err(ApiError::bad_request(format!(
            "an API token lasts 1 to {TOKEN_MAX_DAYS} days"
        )));
    }
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| ApiError::internal(&e))?;
    let text = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    );
    let hash = medvault_crypto::sha256(text.as_bytes());
    let row = TokenRow {
        role: role.as_str().to_owned(),
        token_id: format!("tok_{}", hex::encode(&hash[..8])),
        created_micros: now_micros,
        expires_micros: now_micros.saturating_add(i64::from(days) * DAY_MICROS),
        revoked_micros: None,
        last_used_micros: None,
    };
    let stored = row.clone();
    store.write(Box::new(move |tx: &mut dyn StoreTx| {
        tx.add_token(&hash, &stored)
    }))?;
    Ok((text, row))
}

/// What `revoke_token` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The token is revoked from now on.
    Now,
    /// It was revoked before (at this time, microseconds).
    Already(i64),
    /// No token has this id.
    Unknown,
}

/// Revokes the API token `token_id`. Servers stop accepting it within [`CACHE_TTL`] (they
/// trust a validated token that long).
///
/// # Errors
/// Store failures.
pub fn revoke_token(
    store: &dyn Store,
    token_id: &str,
    now_micros: i64,
) -> Result<Revoked, ApiError> {
    let Some(row) = store.tokens()?.into_iter().find(|t| t.token_id == token_id) else {
        return Ok(Revoked::Unknown);
    };
    if let Some(at) = row.revoked_micros {
        return Ok(Revoked::Already(at));
    }
    let id = token_id.to_owned();
    let now = medvault_store::write_with(store, move |tx| tx.revoke_token(&id, now_micros))?;
    // Revoked meanwhile by someone else: already revoked either way.
    Ok(if now {
        Revoked::Now
    } else {
        Revoked::Already(now_micros)
    })
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let slot = parts.extensions.get::<AgentSlot>();
        let who = authenticate(parts, state, slot).await?;
        if let Some(slot) = slot {
            slot.set(&who);
        }
        Ok(who)
    }
}

async fn authenticate(
    parts: &Parts,
    state: &AppState,
    slot: Option<&AgentSlot>,
) -> Result<Authenticated, ApiError> {
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
    validate(state, token, slot).await
}

/// Validates a bearer credential: an API token (`mvt_…`) or a login session (`mvs_…`).
///
/// # Errors
/// 401 naming why.
pub async fn validate_bearer(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    validate(state, token, None).await
}

async fn validate(
    state: &AppState,
    token: &str,
    slot: Option<&AgentSlot>,
) -> Result<Authenticated, ApiError> {
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
    let result = validate_api_token(state, token).await;
    if let (Err((_, Some(refused))), Some(slot)) = (&result, slot) {
        slot.set_refused(refused.clone());
    }
    result.map_err(|(e, _)| e)
}

/// An API token: known, not revoked (as of at most [`CACHE_TTL`] ago), not expired. Records
/// its use (written back at most once a minute).
async fn validate_api_token(
    state: &AppState,
    token: &str,
) -> Result<Authenticated, (ApiError, Option<RefusedCredential>)> {
    let not_valid = || (unauthorized("the bearer token is not valid"), None);
    let hash = medvault_crypto::sha256(token.as_bytes());
    let now = state.node.clock.now_micros();
    let cached = state.tokens.fresh(&hash, CACHE_TTL);
    let validated_now = cached.is_none();
    let mut t = match cached {
        Some(t) => t,
        None => {
            let store = state.node.store.clone();
            let row = tokio::task::spawn_blocking(move || store.token(&hash))
                .await
                .map_err(|e| (ApiError::internal(&e), None))?
                .map_err(|e| (ApiError::from(e), None))?
                .ok_or_else(not_valid)?;
            if row.revoked_micros.is_some() {
                let refused = RefusedCredential {
                    id: row.token_id,
                    why: "token-revoked",
                };
                return Err((
                    unauthorized("this API token was revoked").denied_by(refused.why),
                    Some(refused),
                ));
            }
            let role = Role::parse(&row.role).map_err(|e| (ApiError::internal(&e), None))?;
            CachedToken {
                who: Authenticated {
                    token_id: row.token_id,
                    role,
                    session: None,
                    aal: 0,
                    scopes: None,
                    client: None,
                    auth_time_micros: None,
                    patient: None,
                    practitioner: None,
                },
                expires_micros: row.expires_micros,
                last_used_micros: row.last_used_micros.unwrap_or(0),
            }
        }
    };
    if now >= t.expires_micros {
        state.tokens.forget(&hash);
        let refused = RefusedCredential {
            id: t.who.token_id,
            why: "token-expired",
        };
        return Err((
            unauthorized("this API token has expired: create a new one (medvault token create)")
                .denied_by(refused.why),
            Some(refused),
        ));
    }
    if now - t.last_used_micros > TOKEN_TOUCH_EVERY_MICROS {
        t.last_used_micros = now;
        let id = t.who.token_id.clone();
        medvault_store::submit_with(
            state.node.store.as_ref(),
            move |tx| tx.token_used(&id, now),
            |_| {},
        );
    }
    let who = t.who.clone();
    if validated_now {
        state.tokens.put(hash, t);
    } else {
        state.tokens.refresh(hash, t);
    }
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
