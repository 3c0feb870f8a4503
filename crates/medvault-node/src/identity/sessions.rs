//! Login sessions: `mvs_` + 256 random bits, stored only as SHA-256; an idle timeout and an
//! absolute lifetime (AAL2: 30 min / 12 h; AAL3 roles: 15 min / 12 h).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use medvault_core::{Aal, Role};
use medvault_store::{SessionRow, TokenHash, write_with};

use crate::error::Error;
use crate::identity::cache::CredentialCache;
use crate::identity::{Authenticated, micros};
use crate::node::Node;

/// What a patient's own session may do, in their compartment: read and search everything, and
/// write their own `Consent` resources.
pub const PATIENT_SESSION_SCOPES: &str = "patient/*.rs patient/Consent.cu";
/// Session tokens start with this.
pub const SESSION_PREFIX: &str = "mvs_";
/// A session's last use is written back at most this often (idle timeouts are minutes long).
const TOUCH_EVERY_MICROS: i64 = 60_000_000;

/// Session lifetimes (NIST SP 800-63B §4.2.3 / §4.3.3 reauthentication limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Idle timeout for AAL2 sessions.
    pub aal2_idle: Duration,
    /// Absolute lifetime for AAL2 sessions.
    pub aal2_max: Duration,
    /// Idle timeout for sessions of AAL3 roles (admin).
    pub aal3_idle: Duration,
    /// Absolute lifetime for sessions of AAL3 roles.
    pub aal3_max: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            aal2_idle: Duration::from_secs(30 * 60),
            aal2_max: Duration::from_secs(12 * 3600),
            aal3_idle: Duration::from_secs(15 * 60),
            aal3_max: Duration::from_secs(12 * 3600),
        }
    }
}

impl SessionLimits {
    /// (idle timeout, absolute lifetime) of a session of `role`.
    pub fn for_role(&self, role: Role) -> (Duration, Duration) {
        if role.is_aal3() {
            (self.aal3_idle, self.aal3_max)
        } else {
            (self.aal2_idle, self.aal2_max)
        }
    }
}

/// A new session for `user_id` at assurance level `aal`, lasting at most `max` from `now`:
/// its token (shown once) and its row (to store).
pub(crate) fn new_session(
    user_id: &str,
    aal: Aal,
    now: i64,
    max: Duration,
) -> Result<(zeroize::Zeroizing<String>, SessionRow), Error> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| Error::internal(&e))?;
    let token = zeroize::Zeroizing::new(format!(
        "{SESSION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    let hash = TokenHash::of(&token);
    let session = SessionRow {
        hash,
        session_id: format!("ses_{}", hex::encode(&hash.as_bytes()[..8])),
        user_id: user_id.to_owned(),
        aal,
        created_micros: now,
        last_seen_micros: now,
        expires_micros: now + micros(max),
    };
    Ok((token, session))
}

/// Validated sessions.
pub type SessionCache = CredentialCache<CachedSession>;

/// A validated session with its user's role.
#[derive(Debug, Clone)]
pub struct CachedSession {
    row: SessionRow,
    role: Role,
    idle: Duration,
    /// A patient's own access: [`PATIENT_SESSION_SCOPES`] in their compartment.
    scopes: Option<Arc<medvault_auth::scopes::ScopeSet>>,
    /// A patient's Patient resource id.
    patient: Option<String>,
    /// Staff: their `Practitioner/<id>`.
    practitioner: Option<String>,
}

/// How long a cached session is trusted before its row and user are read again (a session
/// ended by another process, e.g. `medvault user disable`, ends here within this time).
const SESSION_RECHECK: Duration = Duration::from_secs(30);

/// Authenticates a session token (`mvs_…`): known, user enabled, not idle too long, not past
/// its lifetime. Records the use (written back at most once a minute).
///
/// # Errors
/// 401 naming why.
pub async fn authenticate_session(
    node: &Arc<Node>,
    sessions: &SessionCache,
    limits: SessionLimits,
    token: &str,
) -> Result<Authenticated, Error> {
    let now = node.clock.now_micros();
    let (hash, mut s, loaded) = sessions
        .find(
            token,
            SESSION_RECHECK,
            &node.store,
            move |store, hash| -> Result<_, Error> {
                let Some(row) = store.session(&hash)? else {
                    return Ok(None);
                };
                let Some(user) = store.user(&row.user_id)?.filter(|u| !u.disabled) else {
                    return Ok(None);
                };
                let role = Role::parse(&user.role).map_err(|e| Error::internal(&e))?;
                let (idle, _) = limits.for_role(role);
                let scopes = (role == Role::Patient).then(|| {
                    Arc::new(
                        medvault_auth::scopes::ScopeSet::parse(PATIENT_SESSION_SCOPES)
                            .unwrap_or_default()
                            .for_patient(user.patient_id.as_deref()),
                    )
                });
                let patient = user.patient_id.filter(|_| role == Role::Patient);
                Ok(Some(CachedSession {
                    row,
                    role,
                    idle,
                    scopes,
                    patient,
                    practitioner: user.practitioner,
                }))
            },
            || Error::unauthenticated("the session is not valid: log in again"),
        )
        .await?;
    if now > s.row.expires_micros || now - s.row.last_seen_micros > micros(s.idle) {
        sessions.forget(&hash);
        let (store, user, h) = (node.store.clone(), s.row.user_id.clone(), hash);
        medvault_store::submit_with(
            store.as_ref(),
            move |tx| tx.delete_sessions(&user, Some(&h)),
            |_| {},
        );
        return Err(Error::unauthenticated(
            "the session has expired: log in again",
        ));
    }
    if now - s.row.last_seen_micros > TOUCH_EVERY_MICROS {
        s.row.last_seen_micros = now;
        let row = s.row.clone();
        medvault_store::submit_with(node.store.as_ref(), move |tx| tx.put_session(&row), |_| {});
    }
    let who = Authenticated {
        token_id: s.row.user_id.clone(),
        role: s.role,
        session: Some(s.row.session_id.clone()),
        aal: Some(s.row.aal),
        scopes: s.scopes.clone(),
        client: None,
        auth_time_micros: Some(s.row.created_micros),
        issued_micros: s.row.created_micros,
        patient: s.patient.clone(),
        practitioner: s.practitioner.clone(),
    };
    sessions.keep(hash, s, loaded);
    Ok(who)
}

/// Ends the session whose token hashes to `hash` (a logout): forgotten here at once, deleted
/// from the store.
///
/// # Errors
/// Store failures.
pub async fn end_session(
    node: &Node,
    sessions: &SessionCache,
    user_id: &str,
    hash: TokenHash,
) -> Result<(), Error> {
    sessions.forget(&hash);
    let store = node.store.clone();
    let user = user_id.to_owned();
    tokio::task::spawn_blocking(move || {
        write_with(store.as_ref(), move |tx| {
            tx.delete_sessions(&user, Some(&hash))
        })
    })
    .await
    .map_err(|e| Error::internal(&e))??;
    Ok(())
}
