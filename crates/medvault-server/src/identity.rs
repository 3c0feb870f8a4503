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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use medvault_auth::password::{self, Password};
use medvault_auth::{recovery, totp};
use medvault_core::Role;
use medvault_crypto::{BlindValue, DataKey, Sealed};
use medvault_store::{SessionRow, StoreError, UserRow, write_with};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Authenticated, unauthorized};
use crate::error::{ApiError, ErrorKind, IssueCode};
use medvault_node::node::Node;

/// Data key sealing user names and TOTP secrets.
pub const IDENTITY_KEY: &str = "@identity";
const SEAL_CONTEXT: &str = "medvault-identity-v1";
/// What a patient's own session may do, in their compartment: read and search everything, and
/// write their own `Consent` resources.
pub const PATIENT_SESSION_SCOPES: &str = "patient/*.rs patient/Consent.cu";
/// Session tokens start with this.
pub const SESSION_PREFIX: &str = "mvs_";
/// Consecutive failures that lock an account.
pub const LOCK_AFTER: u32 = 10;
/// How long a locked account stays locked.
pub const LOCK_FOR: Duration = Duration::from_secs(15 * 60);
/// Login attempts accepted per client address, and per account name, per [`THROTTLE_WINDOW`]
/// by default.
pub const THROTTLE_ATTEMPTS: u32 = 20;
/// Window of the login throttle.
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(60);
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

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

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
    fn as_str(self) -> &'static str {
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

/// What an `/auth/…` response tells the access log: the account concerned and what happened.
#[derive(Debug, Clone)]
pub(crate) struct AuthNote {
    pub(crate) user: Option<String>,
    pub(crate) client: Option<String>,
    pub(crate) event: &'static str,
}

/// A JSON answer carrying a secret (a session token, a TOTP secret, recovery codes): never
/// cached.
pub(crate) fn secret_json(body: &Value, user: Option<String>, event: &'static str) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    with_note(resp, user, event)
}

pub(crate) fn with_note(resp: Response, user: Option<String>, event: &'static str) -> Response {
    with_app_note(resp, user, None, event)
}

/// Like [`with_note`], naming the app (OAuth2 client) concerned too.
pub(crate) fn with_app_note(
    mut resp: Response,
    user: Option<String>,
    client: impl Into<Option<String>>,
    event: &'static str,
) -> Response {
    resp.extensions_mut().insert(AuthNote {
        user,
        client: client.into(),
        event,
    });
    resp
}

/// What the login throttle counts attempts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ThrottleKey {
    /// A client address (IPv6: its /64).
    Address(IpAddr),
    /// An account name (SHA-256 of the normalised name: a name need not exist to be counted,
    /// so the throttle says nothing about which accounts do).
    Account([u8; 32]),
}

/// Login attempts per client address and per account name, in memory (each server process
/// counts its own; the lockout after repeated failures is stored and shared).
#[derive(Debug, Default)]
pub struct LoginThrottle(Mutex<HashMap<ThrottleKey, (u32, Instant)>>);

impl LoginThrottle {
    /// Counts an attempt from `ip`; false once the address is over `limit` attempts in the
    /// window.
    pub(crate) fn admit_address(&self, ip: IpAddr, limit: u32) -> bool {
        self.admit(
            ThrottleKey::Address(crate::client_addr::limit_key(ip)),
            limit,
        )
    }

    /// Counts an attempt for the account name `username`; false once the name is over `limit`
    /// attempts in the window (from any address).
    pub(crate) fn admit_account(&self, username: &str, limit: u32) -> bool {
        let name = username.trim().to_lowercase();
        let mut input = b"medvault-login-throttle\0".to_vec();
        input.extend_from_slice(name.as_bytes());
        self.admit(ThrottleKey::Account(medvault_crypto::sha256(&input)), limit)
    }

    fn admit(&self, key: ThrottleKey, limit: u32) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        if m.len() > 100_000 {
            m.retain(|_, (_, since)| since.elapsed() < THROTTLE_WINDOW);
        }
        let entry = m.entry(key).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= THROTTLE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
        entry.0 <= limit
    }
}

/// The answer to a login refused for too many attempts.
pub(crate) fn throttled(failure: LoginFailure) -> Response {
    let resp = ApiError::new(
        ErrorKind::Throttled,
        IssueCode::Throttled,
        "too many login attempts from this address or for this account: wait a minute",
    )
    .into_response();
    with_note(resp, None, failure.as_str())
}

/// The node's identity keys, loaded on first use.
pub(crate) fn identity_key(node: &Node) -> Result<Arc<DataKey>, ApiError> {
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

/// The normalised form of a user name, or why it is not acceptable.
///
/// # Errors
/// 400 naming the rule.
pub fn normalise_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim().to_lowercase();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if n.is_empty() || n.len() > 64 || !n.chars().all(ok_char) {
        return Err(ApiError::bad_request(
            "user names are 1-64 characters: letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(n)
}

fn name_index(node: &Node, normalised: &str) -> Result<BlindValue, ApiError> {
    let k = node
        .keys
        .param_key("@user", "name")
        .map_err(|e| ApiError::internal(&e))?;
    Ok(k.blind(normalised.as_bytes()))
}

pub(crate) fn seal(
    key: &DataKey,
    user_id: &str,
    field: &str,
    bytes: &[u8],
) -> Result<Sealed, ApiError> {
    key.seal_bound(SEAL_CONTEXT, &[user_id.as_bytes(), field.as_bytes()], bytes)
        .map_err(|e| ApiError::internal(&e))
}

pub(crate) fn open(
    key: &DataKey,
    user_id: &str,
    field: &str,
    sealed: &Sealed,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ApiError> {
    key.open_bound(
        SEAL_CONTEXT,
        &[user_id.as_bytes(), field.as_bytes()],
        sealed,
    )
    .map_err(|e| ApiError::internal(&e))
}

fn random_id(prefix: &str) -> Result<String, ApiError> {
    let mut raw = [0u8; 12];
    medvault_crypto::random_fill(&mut raw).map_err(|e| ApiError::internal(&e))?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}

/// The FHIR resource a person is: a patient's account names their Patient, a clinician's their
/// Practitioner (which care teams and encounters name, so the access policy can see their care
/// relationships).
#[derive(Debug, Clone, Copy)]
pub enum FhirUser<'a> {
    /// Not linked.
    None,
    /// `Patient/<id>`.
    Patient(&'a medvault_core::ResourceId),
    /// `Practitioner/<id>`.
    Practitioner(&'a medvault_core::ResourceId),
}

/// Creates an account; a patient's account is linked to their Patient resource. Blocking
/// (Argon2id): call off async threads.
///
/// # Errors
/// 400 for a bad name or a password the policy refuses; 409 if the name is taken.
pub fn create_user(
    node: &Node,
    name: &str,
    role: Role,
    link: FhirUser<'_>,
    password: &Password,
) -> Result<String, ApiError> {
    let normalised = normalise_name(name)?;
    let (patient, practitioner) = match link {
        FhirUser::Patient(p) => (Some(p), None),
        FhirUser::Practitioner(p) => (None, Some(p)),
        FhirUser::None => (None, None),
    };
    if (role == Role::Patient) != patient.is_some() {
        return Err(ApiError::bad_request(
            "a patient's account names their Patient resource (--patient ID), and only theirs does",
        ));
    }
    password::check_policy(password, &normalised)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hash = password::hash_password(password).map_err(|e| ApiError::internal(&e))?;
    let key = identity_key(node)?;
    let id = random_id("usr_")?;
    let row = UserRow {
        id: id.clone(),
        name_index: name_index(node, &normalised)?,
        name_sealed: seal(&key, &id, "name", normalised.as_bytes())?,
        role: role.as_str().to_owned(),
        password_hash: hash,
        disabled: false,
        created_micros: node.clock.now_micros(),
        totp: None,
        totp_pending: None,
        totp_last_step: None,
        failed_logins: 0,
        locked_until_micros: 0,
        patient_id: patient.map(|p| p.to_string()),
        practitioner: practitioner.map(|p| format!("Practitioner/{p}")),
    };
    match write_with(node.store.as_ref(), move |tx| tx.put_user(&row)) {
        Ok(()) => Ok(id),
        Err(StoreError::Conflict) => Err(ApiError::new(
            ErrorKind::Conflict,
            IssueCode::Duplicate,
            "that user name is taken",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Finds a user by name.
///
/// # Errors
/// 400 for a malformed name; store failures.
pub fn find_user(node: &Node, name: &str) -> Result<Option<UserRow>, ApiError> {
    let index = name_index(node, &normalise_name(name)?)?;
    Ok(node.store.user_by_name(&index)?)
}

/// The user's name as stored (sealed).
///
/// # Errors
/// 500 if it does not open.
pub fn user_name(node: &Node, user: &UserRow) -> Result<String, ApiError> {
    let key = identity_key(node)?;
    let plain = open(&key, &user.id, "name", &user.name_sealed)?;
    String::from_utf8(plain.to_vec()).map_err(|e| ApiError::internal(&e))
}

/// What an administrator can change about an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// Refuse logins and end every session.
    Disable,
    /// Allow logins again.
    Enable,
    /// Clear a lockout and the failure count.
    Unlock,
    /// Link a staff account to its Practitioner resource (`None` unlinks it).
    Practitioner(Option<medvault_core::ResourceId>),
}

/// Applies `change` to the user named `name`; returns the user id.
///
/// # Errors
/// 404 for an unknown user; 400 for linking a patient's account to a Practitioner.
pub fn change_account(node: &Node, name: &str, change: AccountChange) -> Result<String, ApiError> {
    let user = find_user(node, name)?.ok_or_else(|| ApiError::not_found("no such user"))?;
    if matches!(change, AccountChange::Practitioner(_)) && user.role == Role::Patient.as_str() {
        return Err(ApiError::bad_request(
            "a patient's account cannot be linked to a Practitioner",
        ));
    }
    let id = user.id.clone();
    write_with(node.store.as_ref(), move |tx| {
        let mut u = tx
            .user(&user.id)?
            .ok_or_else(|| StoreError::Backend("user vanished".into()))?;
        match change {
            AccountChange::Disable => {
                u.disabled = true;
                tx.delete_sessions(&u.id, None)?;
            }
            AccountChange::Enable => u.disabled = false,
            AccountChange::Unlock => {
                u.failed_logins = 0;
                u.locked_until_micros = 0;
            }
            AccountChange::Practitioner(p) => {
                u.practitioner = p.map(|p| format!("Practitioner/{p}"));
            }
        }
        tx.put_user(&u)
    })?;
    Ok(id)
}

/// `POST /auth/login` body.
#[derive(Deserialize)]
pub(crate) struct LoginRequest {
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginRequest(<redacted>)")
    }
}

/// The answer to a failed login. It depends only on whether the request carried a second
/// factor, never on why the login failed: without one, an unknown account, a wrong password and
/// a right password for an account that needs a second factor all get the same answer (which
/// says a second factor may be needed), so it cannot confirm a guessed password.
fn login_error(has_code: bool) -> ApiError {
    if has_code {
        unauthorized(
            "login failed (after 10 failures in a row the account is locked for 15 minutes)",
        )
    } else {
        unauthorized(
            "login failed, or a second factor is required: send the password with totp (a current authenticator code) or recovery_code (after 10 failures in a row the account is locked for 15 minutes)",
        )
    }
}

/// What a successful login yields.
struct LoginOk {
    token: zeroize::Zeroizing<String>,
    session: SessionRow,
    role: Role,
    idle: Duration,
}

/// `POST /auth/login`.
pub(crate) async fn login(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    // The client's address (a trusted proxy's forwarding header counts; without a socket,
    // tests driving the router directly, loopback).
    let ip = crate::client_addr::of(req.extensions());
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return ApiError::new(
            ErrorKind::TooLarge,
            IssueCode::TooLong,
            "login requests are small",
        )
        .into_response();
    };
    let limit = state.config.login_attempts_per_minute;
    if !state.login_throttle.admit_address(ip, limit) {
        return throttled(LoginFailure::Throttled);
    }
    let req: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            let e = ApiError::bad_request(
                "expected JSON {\"username\", \"password\", \"totp\"?, \"recovery_code\"?}",
            );
            return with_note(e.into_response(), None, "malformed");
        }
    };
    if !state.login_throttle.admit_account(&req.username, limit) {
        return throttled(LoginFailure::AccountThrottled);
    }
    let has_code = req.totp.is_some() || req.recovery_code.is_some();
    let node = Arc::clone(&state.node);
    let limits = state.config.sessions;
    let result = tokio::task::spawn_blocking(move || attempt_login(&node, &limits, &req)).await;
    let (outcome, user) = match result {
        Ok(r) => r,
        Err(e) => return ApiError::internal(&e).into_response(),
    };
    match outcome {
        Ok(ok) => {
            let body = json!({
                "session": ok.token.as_str(),
                "session_id": ok.session.session_id,
                "user_id": ok.session.user_id,
                "role": ok.role.as_str(),
                "aal": ok.session.aal,
                "idle_timeout_seconds": ok.idle.as_secs(),
                "expires_at": medvault_node::clock::instant(ok.session.expires_micros),
            });
            secret_json(&body, user, "login")
        }
        Err(Failed::Login(f)) => {
            if f == LoginFailure::Locked
                && let Some(u) = &user
            {
                record_lockout(&state, u).await;
            }
            with_note(login_error(has_code).into_response(), user, f.as_str())
        }
        Err(Failed::Api(e)) => with_note(e.into_response(), user, "error"),
    }
}

enum Failed {
    Login(LoginFailure),
    Api(ApiError),
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self::Api(e.into())
    }
}

/// Checks credentials and opens a session. Returns the outcome and the id of the account
/// concerned (when the name belongs to one), for the access log.
fn attempt_login(
    node: &Node,
    limits: &SessionLimits,
    req: &LoginRequest,
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
    req: &LoginRequest,
    password: &Password,
    mut user: UserRow,
) -> Result<LoginOk, Failed> {
    let now = node.clock.now_micros();
    let role = Role::parse(&user.role).map_err(|e| ApiError::internal(&e))?;
    if user.disabled {
        password::dummy_verify(password);
        return Err(Failed::Login(LoginFailure::BadCredentials));
    }
    if user.locked_until_micros > now {
        password::dummy_verify(password);
        return Err(Failed::Login(LoginFailure::Locked));
    }
    let password_ok = password::verify_password(&user.password_hash, password)
        .map_err(|e| ApiError::internal(&e))?;
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
pub(crate) fn record_failure(node: &Node, user_id: &str, now: i64) -> Result<bool, ApiError> {
    let uid = user_id.to_owned();
    Ok(write_with(node.store.as_ref(), move |tx| {
        let Some(mut u) = tx.user(&uid)? else {
            return Ok(false);
        };
        u.failed_logins = u.failed_logins.saturating_add(1);
        let locked = u.failed_logins >= LOCK_AFTER;
        if locked {
            u.locked_until_micros = now + micros(LOCK_FOR);
            u.failed_logins = 0;
        }
        tx.put_user(&u)?;
        Ok(locked)
    })?)
}

/// Checks the second factor: `Ok(Ok(2))` when it holds (AAL2), `Ok(Ok(1))` for a user with none
/// enrolled (enrollment-only session), `Ok(Err(_))` when it fails.
fn second_factor(
    node: &Node,
    user: &mut UserRow,
    req: &LoginRequest,
    now: i64,
) -> Result<Result<u8, LoginFailure>, ApiError> {
    let Some(sealed) = &user.totp else {
        // No TOTP: a user with passkeys must sign in with one (the password alone is not a
        // second factor); a user with no factor at all gets an enrollment-only session.
        if !node.store.passkeys(&user.id)?.is_empty() {
            return Ok(Err(LoginFailure::SecondFactorRequired));
        }
        return Ok(Ok(1));
    };
    if let Some(code) = &req.totp {
        let key = identity_key(node)?;
        let secret = totp::TotpSecret::from_bytes(&open(&key, &user.id, "totp", sealed)?);
        let unix = u64::try_from(now / 1_000_000).unwrap_or(0);
        return Ok(
            match totp::verify(&secret, code, unix, user.totp_last_step) {
                Some(step) => {
                    user.totp_last_step = Some(step);
                    Ok(2)
                }
                None => Err(LoginFailure::BadSecondFactor),
            },
        );
    }
    if let Some(code) = &req.recovery_code {
        // Spent now, in its own durable write: a code works once, even if the login fails
        // later.
        let (uid, h) = (user.id.clone(), recovery::hash(code));
        let used = write_with(node.store.as_ref(), move |tx| {
            tx.use_recovery_code(&uid, &h)
        })?;
        return Ok(if used {
            Ok(2)
        } else {
            Err(LoginFailure::BadSecondFactor)
        });
    }
    Ok(Err(LoginFailure::SecondFactorRequired))
}

pub(crate) fn new_session(
    user_id: &str,
    aal: u8,
    now: i64,
    max: Duration,
) -> Result<(zeroize::Zeroizing<String>, SessionRow), ApiError> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| ApiError::internal(&e))?;
    let token = zeroize::Zeroizing::new(format!(
        "{SESSION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    let hash = medvault_crypto::sha256(token.as_bytes());
    let session = SessionRow {
        hash,
        session_id: format!("ses_{}", hex::encode(&hash[..8])),
        user_id: user_id.to_owned(),
        aal,
        created_micros: now,
        last_seen_micros: now,
        expires_micros: now + micros(max),
    };
    Ok((token, session))
}

async fn record_lockout(state: &AppState, user_id: &str) {
    let now = state.node.clock.now_micros();
    let detail = json!({
        "v": 1,
        "type": "security",
        "time": medvault_node::clock::instant(now),
        "interaction": "account-locked",
        "target": user_id,
        "outcome": "success",
    });
    if let Err(e) = state
        .node
        .ledger
        .record_audit_async(state.node.access.as_ref(), now, &detail)
        .await
    {
        tracing::warn!(error = %e.message, "account lockout could not be recorded");
    }
}

/// Validated sessions.
pub type SessionCache = crate::auth::CredentialCache<CachedSession>;

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
    state: &AppState,
    token: &str,
) -> Result<Authenticated, ApiError> {
    let hash = medvault_crypto::sha256(token.as_bytes());
    let now = state.node.clock.now_micros();
    let cached = state.sessions.fresh(&hash, SESSION_RECHECK);
    let validated_now = cached.is_none();
    let mut s = match cached {
        Some(c) => c,
        None => {
            let node = Arc::clone(&state.node);
            let limits = state.config.sessions;
            let found = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                let Some(row) = node.store.session(&hash)? else {
                    return Ok(None);
                };
                let Some(user) = node.store.user(&row.user_id)? else {
                    return Ok(None);
                };
                if user.disabled {
                    return Ok(None);
                }
                let role = Role::parse(&user.role).map_err(|e| ApiError::internal(&e))?;
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
            })
            .await
            .map_err(|e| ApiError::internal(&e))??;
            found.ok_or_else(|| unauthorized("the session is not valid: log in again"))?
        }
    };
    if now > s.row.expires_micros || now - s.row.last_seen_micros > micros(s.idle) {
        state.sessions.forget(&hash);
        let (store, user, h) = (state.node.store.clone(), s.row.user_id.clone(), hash);
        medvault_store::submit_with(
            store.as_ref(),
            move |tx| tx.delete_sessions(&user, Some(&h)),
            |_| {},
        );
        return Err(unauthorized("the session has expired: log in again"));
    }
    if now - s.row.last_seen_micros > TOUCH_EVERY_MICROS {
        s.row.last_seen_micros = now;
        let row = s.row.clone();
        medvault_store::submit_with(
            state.node.store.as_ref(),
            move |tx| tx.put_session(&row),
            |_| {},
        );
    }
    let who = Authenticated {
        token_id: s.row.user_id.clone(),
        role: s.role,
        session: Some(s.row.session_id.clone()),
        aal: s.row.aal,
        scopes: s.scopes.clone(),
        client: None,
        auth_time_micros: Some(s.row.created_micros),
        patient: s.patient.clone(),
        practitioner: s.practitioner.clone(),
    };
    if validated_now {
        state.sessions.put(hash, s);
    } else {
        state.sessions.refresh(hash, s);
    }
    Ok(who)
}

pub(crate) fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| t.starts_with(SESSION_PREFIX))
}

/// `POST /auth/logout`: ends the presenting session.
pub(crate) async fn logout(
    State(state): State<AppState>,
    who: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = session_token(&headers).ok_or_else(|| unauthorized("not a session"))?;
    let hash = medvault_crypto::sha256(token.as_bytes());
    state.sessions.forget(&hash);
    let store = state.node.store.clone();
    let user = who.token_id.clone();
    tokio::task::spawn_blocking(move || {
        write_with(store.as_ref(), move |tx| {
            tx.delete_sessions(&user, Some(&hash))
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    Ok(with_note(
        StatusCode::NO_CONTENT.into_response(),
        Some(who.token_id),
        "logout",
    ))
}

/// `GET /auth/session`: who the session belongs to and its assurance level.
pub(crate) async fn whoami(who: Authenticated) -> Result<Response, ApiError> {
    let Some(session) = &who.session else {
        return Err(unauthorized("not a session"));
    };
    Ok(Json(json!({
        "user_id": who.token_id,
        "session_id": session,
        "role": who.role.as_str(),
        "aal": who.aal,
    }))
    .into_response())
}

pub(crate) fn user_of(state: &AppState, who: &Authenticated) -> Result<UserRow, ApiError> {
    if who.session.is_none() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "second factors belong to people: log in as a user",
        ));
    }
    state
        .node
        .store
        .user(&who.token_id)?
        .ok_or_else(|| unauthorized("the session's user no longer exists"))
}

/// `POST /auth/totp/enroll`: a new TOTP secret, pending until a code from it is confirmed.
/// Replacing an active authenticator needs an AAL2 session.
pub(crate) async fn totp_enroll(
    State(state): State<AppState>,
    who: Authenticated,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let w = who.clone();
    let out = crate::http::blocking(move || -> Result<Value, crate::error::Error> {
        let mut user = user_of(&st, &w)?;
        factor_change_allowed(&st, &user, w.aal)?;
        let name = user_name(&st.node, &user)?;
        let secret = totp::TotpSecret::generate().map_err(|e| ApiError::internal(&e))?;
        let key = identity_key(&st.node)?;
        user.totp_pending = Some(seal(&key, &user.id, "totp", secret.as_bytes())?);
        let uri =
            totp::otpauth_uri(&secret, "medvault", &name).map_err(|e| ApiError::internal(&e))?;
        let svg = totp::qr_svg(&uri).map_err(|e| ApiError::internal(&e))?;
        write_with(st.node.store.as_ref(), move |tx| tx.put_user(&user))?;
        Ok(json!({
            "otpauth_uri": uri,
            "secret": totp::secret_base32(&secret),
            "qr_svg": svg,
        }))
    })
    .await?;
    Ok(secret_json(&out, Some(who.token_id), "totp-enroll"))
}

/// `POST /auth/totp/confirm` body.
#[derive(Deserialize)]
pub(crate) struct ConfirmRequest {
    code: String,
}

/// `POST /auth/totp/confirm`: activates the pending secret if `code` matches it, issues fresh
/// recovery codes (shown once), and raises the presenting session to AAL2.
pub(crate) async fn totp_confirm(
    State(state): State<AppState>,
    who: Authenticated,
    headers: HeaderMap,
    Json(req): Json<ConfirmRequest>,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let w = who.clone();
    let hash = session_token(&headers).map(|t| medvault_crypto::sha256(t.as_bytes()));
    let out = crate::http::blocking(move || -> Result<Value, crate::error::Error> {
        let mut user = user_of(&st, &w)?;
        factor_change_allowed(&st, &user, w.aal)?;
        let pending = user
            .totp_pending
            .clone()
            .ok_or_else(|| ApiError::bad_request("no enrollment pending: call enroll first"))?;
        let key = identity_key(&st.node)?;
        let secret = totp::TotpSecret::from_bytes(&open(&key, &user.id, "totp", &pending)?);
        let unix = u64::try_from(st.node.clock.now_micros() / 1_000_000).unwrap_or(0);
        let step = totp::verify(&secret, &req.code, unix, None)
            .ok_or_else(|| ApiError::bad_request("that code does not match the new secret"))?;
        user.totp = Some(pending);
        user.totp_pending = None;
        user.totp_last_step = Some(step);
        let codes = recovery::generate().map_err(|e| ApiError::internal(&e))?;
        let hashes: Vec<[u8; 32]> = codes.iter().map(|c| recovery::hash(c)).collect();
        let session = match hash {
            Some(h) => st.node.store.session(&h)?,
            None => None,
        };
        write_with(st.node.store.as_ref(), move |tx| {
            tx.set_recovery_codes(&user.id, &hashes)?;
            tx.put_user(&user)?;
            if let Some(mut s) = session {
                s.aal = 2;
                tx.put_session(&s)?;
            }
            Ok(())
        })?;
        if let Some(h) = hash {
            st.sessions.forget(&h);
        }
        Ok(json!({
            "recovery_codes": codes.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        }))
    })
    .await?;
    Ok(secret_json(&out, Some(who.token_id), "totp-confirm"))
}

/// Adding or replacing a second factor (TOTP or a passkey): from a password-only session only
/// while the user has none yet; otherwise the session must have used one.
///
/// # Errors
/// 403 when the session may not.
pub(crate) fn factor_change_allowed(
    state: &AppState,
    user: &UserRow,
    aal: u8,
) -> Result<(), ApiError> {
    let has_factor = user.totp.is_some() || !state.node.store.passkeys(&user.id)?.is_empty();
    if has_factor && aal < 2 {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            "adding or replacing a second factor needs a session signed in with the current one",
        ));
    }
    Ok(())
}

/// Lists accounts for `medvault user list`: id, name, role, state.
///
/// # Errors
/// Store failures; 500 if a name does not open.
pub fn list_users(node: &Node) -> Result<Vec<(UserRow, String)>, ApiError> {
    node.store
        .users()?
        .into_iter()
        .map(|u| {
            let name = user_name(node, &u)?;
            Ok((u, name))
        })
        .collect()
}
