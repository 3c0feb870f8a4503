//! A bearer credential of any kind: a login session (`mvs_…`), an OAuth2 access token
//! (`mva_…`) or an API token (`mvt_…`), told apart by prefix, each validated through its cache.

use std::sync::Arc;

use crate::error::Error;
use crate::identity::Authenticated;
use crate::identity::api_tokens::{self, RefusedCredential, TokenCache, validate_api_token};
use crate::identity::oauth::{
    ACCESS_TOKEN_PREFIX, AccessTokenCache, RevokedFamilies, authenticate_access_token,
};
use crate::identity::sessions::{
    SESSION_PREFIX, SessionCache, SessionLimits, authenticate_session,
};
use crate::node::Node;

/// Recently validated credentials of every kind, and the token families this process revoked.
#[derive(Debug, Default)]
pub struct AuthCaches {
    /// Validated login sessions.
    pub sessions: SessionCache,
    /// Validated API tokens.
    pub tokens: TokenCache,
    /// Validated OAuth2 access tokens.
    pub access_tokens: AccessTokenCache,
    /// Token families revoked by this process, so cached access tokens stop at once.
    pub revoked: RevokedFamilies,
}

/// Validates a bearer credential: an API token (`mvt_…`), a login session (`mvs_…`) or an
/// OAuth2 access token (`mva_…`).
///
/// # Errors
/// 401 naming why, with the refused credential when it is a known one (an expired or revoked
/// API token), for the access log.
pub async fn validate(
    node: &Arc<Node>,
    caches: &AuthCaches,
    limits: SessionLimits,
    token: &str,
) -> Result<Authenticated, (Error, Option<RefusedCredential>)> {
    if token.len() >= 128 {
        return Err((
            Error::unauthenticated("the bearer token is not valid"),
            None,
        ));
    }
    if token.starts_with(SESSION_PREFIX) {
        return authenticate_session(node, &caches.sessions, limits, token)
            .await
            .map_err(|e| (e, None));
    }
    if token.starts_with(ACCESS_TOKEN_PREFIX) {
        return authenticate_access_token(node, &caches.access_tokens, &caches.revoked, token)
            .await
            .map_err(|e| (e, None));
    }
    if !token.starts_with(api_tokens::PREFIX) {
        return Err((
            Error::unauthenticated(
                "malformed Authorization header: expected Bearer mvt_… or mvs_…",
            ),
            None,
        ));
    }
    validate_api_token(node, &caches.tokens, token).await
}

/// Validates a bearer credential: an API token (`mvt_…`) or a login session (`mvs_…`).
///
/// # Errors
/// 401 naming why.
pub async fn validate_bearer(
    node: &Arc<Node>,
    caches: &AuthCaches,
    limits: SessionLimits,
    token: &str,
) -> Result<Authenticated, Error> {
    validate(node, caches, limits, token)
        .await
        .map_err(|(e, _)| e)
}
