//! Password + second-factor login (`POST /auth/login`), the lockout after repeated failures,
//! and enrolling a TOTP authenticator (with recovery codes).
//!
//! Password and the second factor (a TOTP code, accepted once, or a single-use recovery code)
//! come in one request. Unknown and disabled users cost the same Argon2id time as real ones. A
//! login without a code that does not open a session gets one answer whatever the reason, so the
//! answer never confirms a password; a missing second factor counts as a failure. Ten
//! consecutive failures lock the account for 15 minutes (recorded in the access log as its own
//! event).

use std::sync::Arc;
use std::time::Duration;

use medvault_auth::password::{self, Password};
use medvault_auth::{recovery, totp};
use medvault_core::{Aal, Role};
use medvault_store::{SessionRow, StoreError, TokenHash, UserRow, write_with};
use serde::Deserialize;

use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::error::{Error, ErrorKind, IssueCode};
use crate::identity::accounts::{find_user, normalise_name, user_name};
use crate::identity::sessions::{SessionCache, SessionLimits, new_session};
use crate::identity::{Authenticated, identity_key, micros, open, seal};
use crate::node::Node;

/// Consecutive failures that lock an account.
pub const LOCK_AFTER: u32 = 10;
/// How long a locked account stays locked.
pub const LOCK_FOR: Duration = Duration::from_secs(15 * 60);

/// Why a login failed, for the access log (never shown in detail to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown user, disabled user or wrong password.
    BadCredentials,
    /// Password right, second factor wrong or reused.
    BadSecondFactor,
    /// Password right, no second factor given.
    SecondFactorRequired,
    /// The account is locked after repeated failures.
    Locked,
    /// Too many attempts from the client's address.
    Throttled,
    /// Too many attempts for the account name.
    AccountThrottled,
}

impl LoginFailure {
    /// The access log's name for this failure.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCredentials => "bad-credentials",
            Self::BadSecondFactor => "bad-second-factor",
            Self::SecondFactorRequired => "second-factor-required",
            Self::Locked => "locked",
            Self::Throttled => "throttled",
            Self::AccountThrottled => "throttled-account",
        }
    }
}

/// `POST /auth/login` body: a password login's credentials.
#[derive(Deserialize)]
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The password.
    pub password: String,
    /// A current TOTP code.
    #[serde(default)]
    pub totp: Option<String>,
    /// A single-use recovery code.
    #[serde(default)]
    pub recovery_code: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// True if a second factor (a TOTP code or a recovery code) came with the password.
    pub fn has_second_factor(&self) -> bool {
        self.totp.is_some() || self.recovery_code.is_some()
    }
}

/// The answer to a failed login. It depends only on whether the request carried a second
/// factor, never on why the login failed: without one, an unknown account, a wrong password and
/// a right password for an account that needs a second factor all get the same answer (which
/// says a second factor may be needed), so it cannot confirm a guessed password.
pub fn login_error(has_code: bool) -> Error {
    if has_code {
        Error::unauthenticated(
            "login failed (after 10 failures in a row the account is locked for 15 minutes)",
        )
    } else {
        Error::unauthenticated(
            "login failed, or a second factor is required: send the password with totp (a current authenticator code) or recovery_code (after 10 failures in a row the account is locked for 15 minutes)",
        )
    }
}

/// What a successful login yields.
pub struct LoginOk {
    /// The session token (shown once, never stored).
    pub token: zeroize::Zeroizing<String>,
    /// The stored session.
    pub session: SessionRow,
    /// The user's role.
    pub role: Role,
    /// The session's idle timeout.
    pub idle: Duration,
}

/// Why a login did not open a session.
#[derive(Debug)]
pub enum Failed {
    /// The credentials were refused.
    Login(LoginFailure),
    /// The node failed.
    Error(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Self::Error(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self::Error(e.into())
    }
}

/// A login attempt's outcome, and the id of the account concerned (when the name belongs to
/// one), for the access log.
pub struct LoginAttempt {
    /// The session opened, or why none was.
    pub outcome: Result<LoginOk, Failed>,
    /// The account the name belongs to, if any.
    pub user: Option<String>,
}

/// Checks `c` and opens a session (on a blocking thread: Argon2id); a login that locked the
/// account is recorded in the access log as its own event.
///
/// # Errors
/// 500 if the blocking task failed.
pub async fn login(
    node: Arc<Node>,
    limits: SessionLimits,
    c: Credentials,
) -> Result<LoginAttempt, Error> {
    let n = Arc::clone(&node);
    let (outcome, user) = tokio::task::spawn_blocking(move || attempt_login(&n, &limits, &c))
        .await
        .map_err(|e| Error::internal(&e))?;
    if let Err(Failed::Login(LoginFailure::Locked)) = &outcome
        && let Some(u) = &user
    {
        record_lockout(&node, u).await;
    }
    Ok(LoginAttempt { outcome, user })
}

/// Checks credentials and opens a session. Returns the outcome and the id of the account
/// concerned (when the name belongs to one), for the access log.
fn attempt_login(
    node: &Node,
    limits: &SessionLimits,
    req: &Credentials,
) -> (Result<LoginOk, Failed>, Option<String>) {
    let password = Password::new(&req.password);
    let user = match normalise_name(&req.username).and_then(|n| find_user(node, &n)) {
        Ok(Some(u)) => u,
        Ok(None) | Err(_) => {
            password::dummy_verify(&password);
            return (Err(Failed::Login(LoginFailure::BadCredentials)), None);
        }
    };
    let id = user.id.clone();
    (check_and_open(node, limits, req, &password, user), Some(id))
}

fn check_and_open(
    node: &Node,
    limits: &SessionLimits,
    req: &Credentials,
    password: &Password,
    mut user: UserRow,
) -> Result<LoginOk, Failed> {
    let now = node.clock.now_micros();
    let role = Role::parse(&user.role).map_err(|e| Error::internal(&e))?;
    if user.disabled {
        password::dummy_verify(password);
        return Err(Failed::Login(LoginFailure::BadCredentials));
    }
    if user.locked_until_micros > now {
        password::dummy_verify(password);
        return Err(Failed::Login(LoginFailure::Locked));
    }
    let password_ok = password::verify_password(&user.password_hash, password)
        .map_err(|e| Error::internal(&e))?;
    let step_before = user.totp_last_step;
    let second = if !password_ok {
        Err(LoginFailure::BadCredentials)
    } else {
        second_factor(node, &mut user, req, now)?
    };
    // The TOTP step this login spent, if it used a TOTP code.
    let spent_step = user
        .totp_last_step
        .filter(|_| user.totp_last_step != step_before);
    // Every failure counts towards the lockout, a missing second factor like a wrong one (and
    // it answers like a wrong password).
    let aal = match second {
        Ok(aal) => aal,
        Err(f) => {
            let locked = record_failure(node, &user.id, now)?;
            return Err(Failed::Login(if locked { LoginFailure::Locked } else { f }));
        }
    };
    let rehashed = if password::needs_rehash(&user.password_hash) {
        password::hash_password(password).ok()
    } else {
        None
    };
    let (idle, max) = limits.for_role(role);
    let (token, session) = new_session(&user.id, aal, now, max)?;
    let s = session.clone();
    let (uid, step) = (user.id.clone(), spent_step);
    // Applied to the row as it is now, in the writer's transaction: an admin's disable, a
    // lockout or another login that spent the same TOTP step since we read it all win.
    let opened = write_with(node.store.as_ref(), move |tx| {
        let Some(mut u) = tx.user(&uid)? else {
            return Ok(false);
        };
        if u.disabled || u.locked_until_micros > now {
            return Ok(false);
        }
        if let Some(step) = step {
            if u.totp_last_step.is_some_and(|last| last >= step) {
                return Ok(false);
            }
            u.totp_last_step = Some(step);
        }
        if let Some(h) = &rehashed {
            u.password_hash.clone_from(h);
        }
        u.failed_logins = 0;
        u.locked_until_micros = 0;
        u.last_login_micros = Some(now);
        tx.put_user(&u)?;
        tx.put_session(&s)?;
        Ok(true)
    })?;
    if !opened {
        return Err(Failed::Login(LoginFailure::BadSecondFactor));
    }
    Ok(LoginOk {
        token,
        session,
        role,
        idle,
    })
}

/// Counts a failed login on the stored row (in the writer's transaction, so concurrent failures
/// all count); locks the account after [`LOCK_AFTER`]. Returns whether it is now locked.
pub(crate) fn record_failure(node: &Node, user_id: &str, now: i64) -> Result<bool, Error> {
    let uid = user_id.to_owned();
    Ok(write_with(node.store.as_ref(), move |tx| {
        let Some(mut u) = tx.user(&uid)? else {
            return Ok(false);
        };
        u.failed_logins = u.failed_logins.saturating_add(1);
        let locked = u.failed_logins >= LOCK_AFTER;
        // A lock pending review (a Sentinel response) is not shortened by a lockout.
        if locked && u.locked_until_micros != crate::responses::LOCKED_PENDING_REVIEW {
            u.locked_until_micros = now + micros(LOCK_FOR);
            u.failed_logins = 0;
        }
        tx.put_user(&u)?;
        Ok(locked)
    })?)
}

/// Checks the second factor: `Ok(Ok(Aal::Two))` when it holds, `Ok(Ok(Aal::One))` for a user
/// with none enrolled (enrollment-only session), `Ok(Err(_))` when it fails.
fn second_factor(
    node: &Node,
    user: &mut UserRow,
    req: &Credentials,
    now: i64,
) -> Result<Result<Aal, LoginFailure>, Error> {
    let Some(sealed) = &user.totp else {
        // No TOTP: a user with passkeys must sign in with one (the password alone is not a
        // second factor); a user with no factor at all gets an enrollment-only session.
        if !node.store.passkeys(&user.id)?.is_empty() {
            return Ok(Err(LoginFailure::SecondFactorRequired));
        }
        return Ok(Ok(Aal::One));
    };
    if let Some(code) = &req.totp {
        let key = identity_key(node)?;
        let secret = totp::TotpSecret::from_bytes(&open(&key, &user.id, "totp", sealed)?);
        let unix = u64::try_from(now / 1_000_000).unwrap_or(0);
        return Ok(
            match totp::verify(&secret, code, unix, user.totp_last_step) {
                Some(step) => {
                    user.totp_last_step = Some(step);
                    Ok(Aal::Two)
                }
                None => Err(LoginFailure::BadSecondFactor),
            },
        );
    }
    if let Some(code) = &req.recovery_code {
        // Spent now, in its own durable write: a code works once, even if the login fails
        // later.
        let (uid, h) = (user.id.clone(), TokenHash::from_bytes(recovery::hash(code)));
        let used = write_with(node.store.as_ref(), move |tx| {
            tx.use_recovery_code(&uid, &h)
        })?;
        return Ok(if used {
            Ok(Aal::Two)
        } else {
            Err(LoginFailure::BadSecondFactor)
        });
    }
    Ok(Err(LoginFailure::SecondFactorRequired))
}

/// Records in the access log that `user_id` was locked.
async fn record_lockout(node: &Node, user_id: &str) {
    let recorded = node
        .record_audit_now_async(|now| {
            AuditRecord::new(
                AuditKind::Security,
                now,
                "account-locked",
                AuditOutcome::Success,
            )
            .target_opt(Some(user_id))
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e.message, "account lockout could not be recorded");
    }
}

/// The account of a person's session.
///
/// # Errors
/// 403 for a credential that is not a session; 401 if its user no longer exists.
pub(crate) fn user_of(node: &Node, who: &Authenticated) -> Result<UserRow, Error> {
    if who.session.is_none() {
        return Err(Error::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "second factors belong to people: log in as a user",
        ));
    }
    node.store
        .user(&who.token_id)?
        .ok_or_else(|| Error::unauthenticated("the session's user no longer exists"))
}

/// Adding or replacing a second factor (TOTP or a passkey): from a password-only session only
/// while the user has none yet; otherwise the session must have used one.
///
/// # Errors
/// 403 when the session may not.
pub(crate) fn factor_change_allowed(
    node: &Node,
    user: &UserRow,
    aal: Option<Aal>,
    enrolment_code: Option<&str>,
) -> Result<(), Error> {
    let has_factor = user.totp.is_some() || !node.store.passkeys(&user.id)?.is_empty();
    if has_factor && aal.is_none_or(|aal| aal < Aal::Two) {
        return Err(Error::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "adding or replacing a second factor needs a session signed in with the current one",
        ));
    }
    if !has_factor && needs_enrolment_code(user) {
        check_enrolment_code(node, user, enrolment_code)?;
    }
    Ok(())
}

/// How long an enrolment code is valid unless the host says otherwise.
pub const ENROLMENT_CODE_HOURS: u32 = 24;
/// The node `meta` key holding a user's enrolment code (its hash and expiry, or `used`).
const ENROLMENT_META: &str = "enrolment-code/";

/// True for the roles whose first second factor needs an enrolment code from the node's host
/// (admin, auditor, privacy officer): their password alone must not be enough to give the
/// account a second factor of the password holder's choosing, and with it the step-up that
/// erasure, exports and key rotation ask for.
pub fn needs_enrolment_code(user: &UserRow) -> bool {
    Role::parse(&user.role)
        .is_ok_and(|r| matches!(r, Role::Admin | Role::Auditor | Role::PrivacyOfficer))
}

fn enrolment_hash(code: &str) -> String {
    let mut input = b"medvault-enrolment-v1\0".to_vec();
    input.extend_from_slice(&recovery::hash(code));
    hex::encode(medvault_crypto::sha256(&input))
}

/// Issues a one-time enrolment code for `user`'s first second factor, valid `hours` (replacing
/// an earlier one): shown once, stored only as a hash. Run on the host (`medvault user
/// enrolment-code`), where the key file is.
///
/// # Errors
/// 400 for a user who has a second factor already; store and RNG failures.
pub fn issue_enrolment_code(
    node: &Node,
    user: &UserRow,
    hours: u32,
) -> Result<(zeroize::Zeroizing<String>, i64), Error> {
    if user.totp.is_some() || !node.store.passkeys(&user.id)?.is_empty() {
        return Err(Error::bad_request(
            "this account has a second factor already: it adds or replaces factors from a session signed in with it",
        ));
    }
    let code = recovery::generate()
        .map_err(|e| Error::internal(&e))?
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal(&"no code generated"))?;
    let expires = node.clock.now_micros() + i64::from(hours) * 3_600_000_000;
    let value = format!("{}:{expires}", enrolment_hash(&code));
    let key = format!("{ENROLMENT_META}{}", user.id);
    // A secret pending under an earlier code is dropped with it.
    let mut user = user.clone();
    user.totp_pending = None;
    write_with(node.store.as_ref(), move |tx| {
        tx.put_user(&user)?;
        tx.set_meta(&key, &value)
    })?;
    Ok((code, expires))
}

fn check_enrolment_code(node: &Node, user: &UserRow, code: Option<&str>) -> Result<(), Error> {
    // One answer whatever is wrong (missing, wrong, expired, replaced or spent): a password
    // holder learns nothing of whether a code is outstanding.
    let refused = || {
        Error::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            format!(
                "a valid enrolment code is needed: an {} account's first second factor is enrolled with a one-time code from the node's host (`medvault user enrolment-code NAME`, valid for hours, once), sent as enrolment_code to enroll and to confirm",
                user.role
            ),
        )
    };
    let code = code.filter(|c| !c.trim().is_empty()).ok_or_else(refused)?;
    let stored = node.store.meta(&format!("{ENROLMENT_META}{}", user.id))?;
    let (hash, expires) = stored
        .as_deref()
        .and_then(|v| v.split_once(':'))
        .ok_or_else(refused)?;
    let live = expires
        .parse::<i64>()
        .is_ok_and(|t| t > node.clock.now_micros());
    if !live || hash != enrolment_hash(code) {
        return Err(refused());
    }
    Ok(())
}

/// A new TOTP secret, pending until a code from it is confirmed: shown once.
pub struct TotpEnrollment {
    /// The `otpauth://` URI for authenticator apps.
    pub uri: String,
    /// The secret in base32, for typing in.
    pub secret: String,
    /// The URI as a QR code (SVG).
    pub qr_svg: String,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrollment(<redacted>)")
    }
}

/// Starts enrolling a TOTP authenticator for the session's user (blocking): a new secret,
/// pending until [`totp_confirm`]. Replacing an active authenticator needs an AAL2 session.
///
/// # Errors
/// 403 for a credential that is not a session or may not change factors; store failures.
pub fn totp_enroll(
    node: &Node,
    who: &Authenticated,
    enrolment_code: Option<&str>,
) -> Result<TotpEnrollment, Error> {
    let mut user = user_of(node, who)?;
    factor_change_allowed(node, &user, who.aal, enrolment_code)?;
    let name = user_name(node, &user)?;
    let secret = totp::TotpSecret::generate().map_err(|e| Error::internal(&e))?;
    let key = identity_key(node)?;
    user.totp_pending = Some(seal(&key, &user.id, "totp", secret.as_bytes())?);
    let uri = totp::otpauth_uri(&secret, "medvault", &name).map_err(|e| Error::internal(&e))?;
    let svg = totp::qr_svg(&uri).map_err(|e| Error::internal(&e))?;
    write_with(node.store.as_ref(), move |tx| tx.put_user(&user))?;
    Ok(TotpEnrollment {
        uri,
        secret: totp::secret_base32(&secret),
        qr_svg: svg,
    })
}

/// Activates the pending secret if `code` matches it, issues fresh recovery codes (returned,
/// to be shown once), and raises the presenting session (`session_hash`) to AAL2 (blocking).
///
/// # Errors
/// 400 with no enrollment pending or a code that does not match; as [`totp_enroll`].
pub fn totp_confirm(
    node: &Node,
    sessions: &SessionCache,
    who: &Authenticated,
    session_hash: Option<TokenHash>,
    code: &str,
    enrolment_code: Option<&str>,
) -> Result<Vec<zeroize::Zeroizing<String>>, Error> {
    let mut user = user_of(node, who)?;
    // The same rule as enrolling: a privileged account's first factor is confirmed with the
    // enrolment code too (still unspent, unexpired and not replaced), so a password holder
    // cannot confirm, or guess at, the secret its owner is enrolling.
    factor_change_allowed(node, &user, who.aal, enrolment_code)?;
    let first = user.totp.is_none() && node.store.passkeys(&user.id)?.is_empty();
    let pending = user
        .totp_pending
        .clone()
        .ok_or_else(|| Error::bad_request("no enrollment pending: call enroll first"))?;
    let key = identity_key(node)?;
    let secret = totp::TotpSecret::from_bytes(&open(&key, &user.id, "totp", &pending)?);
    let unix = u64::try_from(node.clock.now_micros() / 1_000_000).unwrap_or(0);
    let step = totp::verify(&secret, code, unix, None)
        .ok_or_else(|| Error::bad_request("that code does not match the new secret"))?;
    user.totp = Some(pending);
    user.totp_pending = None;
    user.totp_last_step = Some(step);
    let codes = recovery::generate().map_err(|e| Error::internal(&e))?;
    let hashes: Vec<TokenHash> = codes
        .iter()
        .map(|c| TokenHash::from_bytes(recovery::hash(c)))
        .collect();
    let session = match session_hash {
        Some(h) => node.store.session(&h)?,
        None => None,
    };
    let used = (first && needs_enrolment_code(&user)).then(|| {
        (
            format!("{ENROLMENT_META}{}", user.id),
            format!("used {}", node.clock.now_micros()),
        )
    });
    write_with(node.store.as_ref(), move |tx| {
        tx.set_recovery_codes(&user.id, &hashes)?;
        tx.put_user(&user)?;
        // The enrolment code is spent with the factor it enrolled.
        if let Some((key, value)) = &used {
            tx.set_meta(key, value)?;
        }
        if let Some(mut s) = session {
            s.aal = Aal::Two;
            tx.put_session(&s)?;
        }
        Ok(())
    })?;
    if let Some(h) = session_hash {
        sessions.forget(&h);
    }
    Ok(codes)
}
