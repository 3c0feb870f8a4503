//! API tokens, for automation on the node's host.
//!
//! API tokens are `mvt_` + 43 base64url characters (256 random bits): they grant a role without
//! a second factor, so creating one needs the key file (`medvault token create`). They expire
//! (default [`TOKEN_DEFAULT_DAYS`], at most [`TOKEN_MAX_DAYS`] days) and can be revoked
//! (`medvault token revoke`). The database stores only their SHA-256; a lookup hashes the
//! presented token and finds the row by hash, so no comparison of secrets happens in application
//! code. Validated tokens are cached for [`CACHE_TTL`] to keep the per-request cost low: a
//! revocation by the CLI (another process) takes effect within that time; an expiry is checked
//! on every request.

use std::time::Duration;

use base64::Engine as _;
use medvault_core::Role;
use medvault_store::{Store, StoreTx, TokenHash, TokenRow};

use crate::error::Error;
use crate::identity::Authenticated;
use crate::identity::cache::CredentialCache;
use crate::node::Node;

/// How long a validated token is trusted without asking the database again.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// API tokens start with this.
pub(crate) const PREFIX: &str = "mvt_";
/// Days an API token lasts unless its creator says otherwise.
pub const TOKEN_DEFAULT_DAYS: u32 = 30;
/// The longest an API token may last, in days.
pub const TOKEN_MAX_DAYS: u32 = 365;
/// A token's last use is written back at most this often (like a session's).
const TOKEN_TOUCH_EVERY_MICROS: i64 = 60_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

/// A credential that was presented, is known, and was refused (an expired or revoked API
/// token): the access log names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCredential {
    /// The credential's non-secret id (`tok_…`).
    pub id: String,
    /// Why: `token-expired` or `token-revoked`.
    pub why: &'static str,
}

/// A failure that refuses no known credential (a store or internal error).
impl From<Error> for (Error, Option<RefusedCredential>) {
    fn from(e: Error) -> Self {
        (e, None)
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
) -> Result<(String, TokenRow), Error> {
    if !(1..=TOKEN_MAX_DAYS).contains(&days) {
        return Err(Error::bad_request(format!(
            "an API token lasts 1 to {TOKEN_MAX_DAYS} days"
        )));
    }
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| Error::internal(&e))?;
    let text = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    );
    let hash = TokenHash::of(&text);
    let row = TokenRow {
        role: role.as_str().to_owned(),
        token_id: format!("tok_{}", hex::encode(&hash.as_bytes()[..8])),
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
pub fn revoke_token(store: &dyn Store, token_id: &str, now_micros: i64) -> Result<Revoked, Error> {
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

/// An API token: known, not revoked (as of at most [`CACHE_TTL`] ago), not expired. Records
/// its use (written back at most once a minute).
///
/// # Errors
/// 401 naming why, with the refused credential when it is a known one.
pub(crate) async fn validate_api_token(
    node: &Node,
    tokens: &TokenCache,
    token: &str,
) -> Result<Authenticated, (Error, Option<RefusedCredential>)> {
    let now = node.clock.now_micros();
    let (hash, mut t, loaded) = tokens
        .find(
            token,
            CACHE_TTL,
            &node.store,
            move |store, hash| -> Result<_, (Error, Option<RefusedCredential>)> {
                let Some(row) = store.token(&hash).map_err(Error::from)? else {
                    return Ok(None);
                };
                if row.revoked_micros.is_some() {
                    let refused = RefusedCredential {
                        id: row.token_id,
                        why: "token-revoked",
                    };
                    return Err((
                        Error::unauthenticated("this API token was revoked").denied_by(refused.why),
                        Some(refused),
                    ));
                }
                let role = Role::parse(&row.role).map_err(|e| Error::internal(&e))?;
                Ok(Some(CachedToken {
                    who: Authenticated {
                        token_id: row.token_id,
                        role,
                        session: None,
                        aal: None,
                        scopes: None,
                        client: None,
                        auth_time_micros: None,
                        issued_micros: row.created_micros,
                        patient: None,
                        practitioner: None,
                    },
                    expires_micros: row.expires_micros,
                    last_used_micros: row.last_used_micros.unwrap_or(0),
                }))
            },
            || {
                (
                    Error::unauthenticated("the bearer token is not valid"),
                    None,
                )
            },
        )
        .await?;
    if now >= t.expires_micros {
        tokens.forget(&hash);
        let refused = RefusedCredential {
            id: t.who.token_id,
            why: "token-expired",
        };
        return Err((
            Error::unauthenticated(
                "this API token has expired: create a new one (medvault token create)",
            )
            .denied_by(refused.why),
            Some(refused),
        ));
    }
    if now - t.last_used_micros > TOKEN_TOUCH_EVERY_MICROS {
        t.last_used_micros = now;
        let id = t.who.token_id.clone();
        medvault_store::submit_with(
            node.store.as_ref(),
            move |tx| tx.token_used(&id, now),
            |_| {},
        );
    }
    let who = t.who.clone();
    tokens.keep(hash, t, loaded);
    Ok(who)
}
