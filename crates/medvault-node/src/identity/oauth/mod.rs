//! OAuth2 for SMART on FHIR apps: backend services (SMART Backend Services, RFC 6749
//! `client_credentials` with RFC 7523 `private_key_jwt` client authentication, RS384 or ES384),
//! user-facing apps (authorization code with PKCE, refresh tokens), token introspection
//! (RFC 7662) and revocation (RFC 7009).
//!
//! - **Clients** are registered by an admin (`medvault client register`) with their public JWK
//!   Set and the scopes they may be granted (`system/…` for backend services): [`clients`].
//! - **Token requests** carry a signed assertion: `iss` = `sub` = the client id, `aud` = this
//!   token endpoint's URL, `exp` at most five minutes ahead, a `jti` never used before by that
//!   client (replays are refused). The key is chosen by the header's `kid` from the client's
//!   JWK Set, and the header's `alg` must be the key's: [`backend`].
//! - **Apps** get codes and refresh tokens: [`app`].
//! - **Access tokens** are opaque (`mva_` + 256 random bits), stored only as SHA-256, valid five
//!   minutes, carrying the granted scopes (the requested ones cut to what the client may have),
//!   which every FHIR interaction then enforces (`ctx::Ctx::scope_allows`): this module.

pub mod app;
pub mod backend;
pub mod clients;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use medvault_auth::scopes::ScopeSet;
use medvault_core::{Aal, Role};
use medvault_store::{AccessTokenRow, TokenHash, write_with};

use crate::error::Error;
use crate::identity::Authenticated;
use crate::identity::cache::CredentialCache;
use crate::node::Node;

/// Access tokens start with this.
pub const ACCESS_TOKEN_PREFIX: &str = "mva_";
/// Refresh tokens start with this.
pub const REFRESH_TOKEN_PREFIX: &str = "mvr_";
/// How long an access token is valid.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Validated access tokens, with their expiry (microseconds) and refresh-token family.
pub type AccessTokenCache = CredentialCache<(Authenticated, i64, Option<String>)>;

/// How long a validated access token is trusted before its client is read again.
const RECHECK: Duration = Duration::from_secs(30);

/// Token families revoked by this process, so cached access tokens stop at once (other
/// processes' caches forget them within their 30-second recheck).
#[derive(Debug, Default)]
pub struct RevokedFamilies(Mutex<HashSet<String>>);

impl RevokedFamilies {
    /// Records that a token family was revoked, so its cached access tokens stop working now.
    pub fn insert(&self, family: &str) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() >= 100_000 {
                s.clear();
            }
            s.insert(family.to_owned());
        }
    }

    /// True if this process revoked `family`.
    pub fn contains(&self, family: &str) -> bool {
        self.0.lock().map_or(true, |s| s.contains(family))
    }
}

/// A refused token request (RFC 6749 §5.2): the error, and the client it concerned (for the
/// log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRefusal {
    /// The HTTP status RFC 6749 answers it with.
    pub status: StatusCode,
    /// The RFC 6749 error code.
    pub error: &'static str,
    /// What is wrong, for the client.
    pub description: String,
    /// The client concerned, when known.
    pub client: Option<String>,
    /// A token family this refusal revoked (a code or refresh token used twice).
    pub revoked_family: Option<String>,
}

/// `prefix` + 256 random bits, base64url: a token, code or family id.
pub(crate) fn random_token(prefix: &str) -> Result<zeroize::Zeroizing<String>, Error> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| Error::internal(&e))?;
    Ok(zeroize::Zeroizing::new(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    )))
}

/// Authenticates an OAuth2 access token (`mva_…`): issued here, not expired, its client (and
/// for an app's token, its user) not disabled.
///
/// # Errors
/// 401 naming why.
pub async fn authenticate_access_token(
    node: &Arc<Node>,
    cache: &AccessTokenCache,
    revoked: &RevokedFamilies,
    token: &str,
) -> Result<Authenticated, Error> {
    let now = node.clock.now_micros();
    let (hash, found, loaded) = cache
        .find(
            token,
            RECHECK,
            &node.store,
            move |store, hash| -> Result<_, Error> {
                let Some(row) = store.access_token(&hash)? else {
                    return Ok(None);
                };
                if store.client(&row.client_id)?.is_none_or(|c| c.disabled) {
                    return Ok(None);
                }
                let mut scopes = ScopeSet::parse(&row.scopes).map_err(|e| Error::internal(&e))?;
                // An app's token acts for its user, within both the user's role and the
                // scopes (patient/… scopes in the user's own compartment); a backend service's
                // for itself.
                let (mut patient, mut practitioner) = (None, None);
                let (token_id, role, aal) = match &row.user_id {
                    Some(uid) => {
                        let Some(user) = store.user(uid)?.filter(|u| !u.disabled) else {
                            return Ok(None);
                        };
                        let role = Role::parse(&user.role).map_err(|e| Error::internal(&e))?;
                        if role == Role::Patient {
                            // A patient's apps act in the patient's own compartment only.
                            scopes = scopes.only(medvault_auth::scopes::Context::Patient);
                        }
                        scopes = scopes.for_patient(user.patient_id.as_deref());
                        patient = user.patient_id.filter(|_| role == Role::Patient);
                        practitioner = user.practitioner;
                        // The user approved the app in a session with a second factor.
                        (user.id, role, Some(Aal::Two))
                    }
                    None => (row.client_id.clone(), Role::Service, None),
                };
                Ok(Some((
                    Authenticated {
                        token_id,
                        role,
                        session: None,
                        aal,
                        scopes: Some(Arc::new(scopes)),
                        client: Some(row.client_id),
                        auth_time_micros: None,
                        issued_micros: row.issued_micros,
                        patient,
                        practitioner,
                    },
                    row.expires_micros,
                    row.family,
                )))
            },
            || Error::unauthenticated("the access token is not valid"),
        )
        .await?;
    if loaded {
        cache.put(hash, found.clone());
    }
    let (who, expires, family) = found;
    if now >= expires {
        return Err(Error::unauthenticated(
            "the access token has expired: request a new one",
        ));
    }
    if family.is_some_and(|f| revoked.contains(&f)) {
        return Err(Error::unauthenticated("the access token was revoked"));
    }
    Ok(who)
}

/// Token introspection (RFC 7662, blocking): the stored access token `token` if it is active,
/// that is while the token, its client and (for an app's token) its user all are.
///
/// # Errors
/// Store failures.
pub fn introspect(node: &Node, token: &str) -> Result<Option<AccessTokenRow>, Error> {
    if !token.starts_with(ACCESS_TOKEN_PREFIX) {
        return Ok(None);
    }
    let hash = TokenHash::of(token);
    let Some(row) = node.store.access_token(&hash)? else {
        return Ok(None);
    };
    if node
        .store
        .client(&row.client_id)?
        .is_none_or(|c| c.disabled)
    {
        return Ok(None);
    }
    if let Some(uid) = &row.user_id
        && node.store.user(uid)?.is_none_or(|u| u.disabled)
    {
        return Ok(None);
    }
    let now = node.clock.now_micros();
    Ok(Some(row).filter(|r| r.expires_micros > now))
}

/// Revokes a refresh token (and its family) or an app's access token (RFC 7009) presented by
/// `client_id`; returns whether a family was revoked (false also when the token is unknown, or
/// the store failed: the caller answers the same either way).
pub async fn revoke(
    node: &Arc<Node>,
    cache: &AccessTokenCache,
    revoked: &RevokedFamilies,
    token: &str,
    client_id: &str,
) -> bool {
    let node = Arc::clone(node);
    let hash = TokenHash::of(token);
    let refresh = token.starts_with(REFRESH_TOKEN_PREFIX);
    let client = client_id.to_owned();
    let family = tokio::task::spawn_blocking(move || -> Option<String> {
        let family = if refresh {
            node.store
                .grant(&hash)
                .ok()
                .flatten()
                .filter(|g| g.client_id == client)
                .map(|g| g.family)
        } else {
            node.store
                .access_token(&hash)
                .ok()
                .flatten()
                .filter(|t| t.client_id == client)
                .and_then(|t| t.family)
        }?;
        let f = family.clone();
        write_with(node.store.as_ref(), move |tx| tx.revoke_family(&f)).ok()?;
        Some(family)
    })
    .await
    .ok()
    .flatten();
    cache.forget(&hash);
    if let Some(f) = &family {
        revoked.insert(f);
    }
    family.is_some()
}
