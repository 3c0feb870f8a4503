//! People: accounts, password + TOTP login, recovery codes, sessions (NIST SP 800-63B AAL2).
//!
//! - **Accounts** (`medvault user create`): a unique id (`usr_…`), a role, an Argon2id password
//!   hash; the user name is stored only blinded (lookup) and sealed under the `@identity` data
//!   key (display). TOTP secrets are sealed under the same key, bound to the user id.
//! - **Login** (`POST /auth/login`): password and the second factor (a TOTP code, accepted once,
//!   or a single-use recovery code) in one request. Unknown and disabled users cost the same
//!   Argon2id time as real ones. A login without a code that does not open a session gets one
//!   answer whatever the reason (unknown account, wrong password, or right password for an
//!   account with a second factor), so the answer never confirms a password; a missing second
//!   factor counts as a failure. Ten consecutive failures lock the account for 15 minutes
//!   (recorded in the access log as its own event); more than 20 attempts a minute from one
//!   client address, or for one account name, are refused (429).
//! - **Sessions**: `mvs_` + 256 random bits, stored only as SHA-256; an idle timeout and an
//!   absolute lifetime (AAL2: 30 min / 12 h; AAL3 roles: 15 min / 12 h). A user without a second
//!   factor gets an enrollment-only session (AAL1) that can reach nothing but `/auth/totp/*`.
//!
//! The modules, each using only the ones listed before it (and this one's shared items):
//!
//! - [`cache`]: recently validated credentials ([`cache::CredentialCache`]).
//! - [`throttle`]: login attempts per client address and per account name.
//! - [`accounts`]: creating, finding, changing and listing accounts.
//! - [`sessions`]: login sessions (`mvs_…`).
//! - [`login`]: password + second-factor login, lockout, TOTP enrollment.
//! - [`api_tokens`]: API tokens (`mvt_…`) for automation.
//! - [`oauth`]: OAuth2 access tokens (`mva_…`), clients, backend services and apps.
//! - [`passkeys`]: WebAuthn passkeys.
//! - [`break_glass`]: emergency access and the privacy officer's alerts.
//! - [`gates`]: the coarse gates a request passes before any resource is decided.
//! - [`bearer`]: a bearer credential of any kind, and the caches of all of them.

pub mod accounts;
pub mod api_tokens;
pub mod bearer;
pub mod break_glass;
pub mod cache;
pub mod gates;
pub mod login;
pub mod oauth;
pub mod passkeys;
pub mod sessions;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use medvault_core::{Aal, KeyName, Role};
use medvault_crypto::{DataKey, Sealed};
use medvault_store::{StoreError, write_with};

use crate::error::Error;
use crate::node::Node;

/// Data key sealing user names and TOTP secrets.
pub const IDENTITY_KEY: &KeyName = &KeyName::node("@identity");
const SEAL_CONTEXT: &str = "medvault-identity-v1";

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
    /// Authenticator assurance level the person proved: a session's (AAL1: password only,
    /// AAL2: a second factor, AAL3: a passkey), or AAL2 for an app's token acting for a user
    /// (who approved it in an AAL2 session); `None` for API tokens and backend services, which
    /// no person signed in for.
    pub aal: Option<Aal>,
    /// For an OAuth2 access token: the SMART scopes granted, enforced on every interaction.
    pub scopes: Option<std::sync::Arc<medvault_auth::scopes::ScopeSet>>,
    /// For an OAuth2 access token: the client (app or service) that presents it.
    pub client: Option<String>,
    /// For a login session: when the person last proved their factors (the session's start),
    /// microseconds. Sensitive actions require it to be recent (step-up).
    pub auth_time_micros: Option<i64>,
    /// When the credential was issued (a session's start, a token's issue), microseconds: a
    /// Sentinel response that ends sessions refuses credentials issued before it.
    pub issued_micros: i64,
    /// For a patient (their session or their app's token): their Patient resource id.
    pub patient: Option<String>,
    /// For staff (their session or their app's token): their `Practitioner/<id>`, which care
    /// teams and encounters name.
    pub practitioner: Option<String>,
}

/// A duration in microseconds (saturating).
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The node's identity keys, loaded on first use.
///
/// # Errors
/// Store and key failures.
pub fn identity_key(node: &Node) -> Result<Arc<DataKey>, Error> {
    let ring = Arc::clone(&node.keys);
    if let Ok(k) = ring.for_read(node.store.as_ref(), IDENTITY_KEY) {
        return Ok(k);
    }
    let r = Arc::clone(&ring);
    Ok(write_with(node.store.as_ref(), move |tx| {
        r.for_write(tx, IDENTITY_KEY)
            .map_err(|e| StoreError::Backend(Box::new(e)))
    })?)
}

/// Seals `bytes` under the identity key, bound to `user_id` (or another record id) and `field`.
///
/// # Errors
/// 500 if sealing fails.
pub fn seal(key: &DataKey, user_id: &str, field: &str, bytes: &[u8]) -> Result<Sealed, Error> {
    key.seal_bound(SEAL_CONTEXT, &[user_id.as_bytes(), field.as_bytes()], bytes)
        .map_err(|e| Error::internal(&e))
}

/// Opens what [`seal`] sealed for the same `user_id` and `field`.
///
/// # Errors
/// 500 if it does not open.
pub fn open(
    key: &DataKey,
    user_id: &str,
    field: &str,
    sealed: &Sealed,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
    key.open_bound(
        SEAL_CONTEXT,
        &[user_id.as_bytes(), field.as_bytes()],
        sealed,
    )
    .map_err(|e| Error::internal(&e))
}

/// `prefix` + 96 random bits in hex: an id (`usr_…`, `bg_…`, `alr_…`, `cli_…`).
pub fn random_id(prefix: &str) -> Result<String, Error> {
    let mut raw = [0u8; 12];
    medvault_crypto::random_fill(&mut raw).map_err(|e| Error::internal(&e))?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}
