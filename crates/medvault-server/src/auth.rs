//! Bearer-token authentication as an extractor, so no handler can forget it.
//!
//! Which credentials exist and how each is validated is the node's
//! ([`medvault_node::identity`]: API tokens, login sessions, OAuth2 access tokens); this module
//! reads the `Authorization` header, validates it through [`AppState::auth`]'s caches, and
//! leaves who was authenticated (or which known credential was refused) for the access log.

use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
pub use medvault_node::identity::Authenticated;
use medvault_node::identity::api_tokens::RefusedCredential;
use medvault_node::identity::bearer;
use medvault_node::responses::Refused;

use crate::AppState;
use crate::error::{ApiError, Error};

/// Where the authenticator leaves who it authenticated (or which known credential it refused),
/// for the audit record the request middleware writes after the handler ran.
#[derive(Debug, Clone, Default)]
pub struct AgentSlot(std::sync::Arc<Mutex<SlotState>>);

#[derive(Debug, Default)]
struct SlotState {
    who: Option<Authenticated>,
    refused: Option<RefusedCredential>,
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

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let slot = parts.extensions.get::<AgentSlot>();
        let who = match authenticate(parts, state, slot).await {
            Ok(who) => who,
            Err(e) => return Err(held_or(parts, state, e)),
        };
        // Sentinel's responses in force (a lock, ended sessions, a step-up, a throttle).
        let now = state.node.clock.now_micros();
        state
            .enforcement
            .admit(&who, now)
            .map_err(|r| refuse(slot, &who, r))?;
        // A credential deleting fast waits at each checkpoint until Sentinel has scored the
        // log as it stands, then is checked again: a mass deletion stops within about one
        // checkpoint, however many connections it uses.
        let deletes = parts.method == axum::http::Method::DELETE
            || (parts.method == axum::http::Method::POST && parts.uri.path().ends_with("/erase"));
        if deletes && state.enforcement.note_deletion(&who.token_id, now) {
            wait_for_sentinel(state).await;
            let now = state.node.clock.now_micros();
            state
                .enforcement
                .admit(&who, now)
                .map_err(|r| refuse(slot, &who, r))?;
        }
        if let Some(slot) = slot {
            slot.set(&who);
        }
        Ok(who)
    }
}

/// A Sentinel response's refusal of `who`, noted for the access log as a refused credential.
fn refuse(slot: Option<&AgentSlot>, who: &Authenticated, refused: Refused) -> Response {
    if let Some(slot) = slot {
        slot.set_refused(RefusedCredential {
            id: who.token_id.clone(),
            why: refused.rule(),
        });
    }
    sentinel_refusal(refused)
}

/// Waits (at most two seconds) until this process's Sentinel watcher has scored the access
/// log up to its current size.
async fn wait_for_sentinel(state: &AppState) {
    // The deletions in flight on other connections are in the log a moment after their
    // answers: let them land first.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let node = std::sync::Arc::clone(&state.node);
    let Ok(Ok(size)) = tokio::task::spawn_blocking(move || node.access.ledger_size()).await else {
        return;
    };
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while state.enforcement.scored_to().is_some_and(|s| s < size)
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The answer to a credential that did not authenticate: counted like a request without one,
/// so an address over its anonymous limit or under a Sentinel throttle gets 429 whatever it
/// puts in its `Authorization` header.
fn held_or(parts: &Parts, state: &AppState, e: ApiError) -> Response {
    let client = crate::client_addr::of(&parts.extensions);
    if state
        .anonymous
        .over_limit(client, state.config.anonymous_requests_per_minute)
    {
        return crate::http::anonymous_throttled(parts.uri.path());
    }
    let now = state.node.clock.now_micros();
    if let Err(refused) = state.enforcement.admit_address(&client.to_string(), now) {
        return sentinel_refusal(refused);
    }
    e.into_response()
}

/// A Sentinel response's refusal as an answer: 401 asking for a fresh sign-in with a second
/// factor (RFC 9470) for a step-up, 429 with `Retry-After` for a throttle, 401 otherwise.
pub(crate) fn sentinel_refusal(refused: Refused) -> Response {
    let header = match &refused {
        Refused::StepUp { max_age } => HeaderValue::from_str(&format!(
            "Bearer error=\"insufficient_user_authentication\", error_description=\"sign in again with a second factor\", acr_values=\"urn:medvault:aal2\", max_age={max_age}"
        ))
        .ok()
        .map(|v| (header::WWW_AUTHENTICATE, v)),
        Refused::Throttled { retry_after } => HeaderValue::from_str(&retry_after.to_string())
            .ok()
            .map(|v| (header::RETRY_AFTER, v)),
        Refused::Locked | Refused::Ended => None,
    };
    let mut r = ApiError::from(refused.into_error()).into_response();
    if let Some((name, value)) = header {
        r.headers_mut().insert(name, value);
    }
    r
}

async fn authenticate(
    parts: &Parts,
    state: &AppState,
    slot: Option<&AgentSlot>,
) -> Result<Authenticated, ApiError> {
    let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        Error::unauthenticated("authentication required: send Authorization: Bearer <token>")
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Error::unauthenticated("malformed Authorization header: expected Bearer mvt_… or mvs_…")
        })?;
    match bearer::validate(&state.node, &state.auth, state.config.sessions, token).await {
        Ok(who) => Ok(who),
        Err((e, refused)) => {
            if let (Some(refused), Some(slot)) = (refused, slot) {
                slot.set_refused(refused);
            }
            Err(e.into())
        }
    }
}
