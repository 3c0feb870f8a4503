//! OAuth2 for SMART on FHIR apps: backend services (SMART Backend Services, RFC 6749
//! `client_credentials` with RFC 7523 `private_key_jwt` client authentication, RS384 or ES384),
//! token introspection (RFC 7662) and `/.well-known/smart-configuration`.
//!
//! - **Clients** are registered by an admin (`medvault client register`) with their public JWK
//!   Set and the scopes they may be granted (`system/…` for backend services).
//! - **Token requests** carry a signed assertion: `iss` = `sub` = the client id, `aud` = this
//!   token endpoint's URL, `exp` at most five minutes ahead, a `jti` never used before by that
//!   client (replays are refused). The key is chosen by the header's `kid` from the client's
//!   JWK Set, and the header's `alg` must be the key's.
//! - **Access tokens** are opaque (`mva_` + 256 random bits), stored only as SHA-256, valid five
//!   minutes, carrying the granted scopes (the requested ones cut to what the client may have),
//!   which every FHIR interaction then enforces (`ops::Ctx::scope_allows`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use medvault_auth::scopes::{Context, ScopeSet};
use medvault_core::Role;
use medvault_store::{AccessTokenRow, ClientRow, write_with};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{Authenticated, unauthorized};
use crate::error::ApiError;
use medvault_node::node::Node;

/// Access tokens start with this.
pub const ACCESS_TOKEN_PREFIX: &str = "mva_";
/// How long an access token is valid.
pub const ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// The furthest ahead a client assertion may expire.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// Clock skew tolerated on assertion times.
const LEEWAY_SECS: u64 = 60;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Algorithms accepted for client assertions (SMART Backend Services).
const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS384, Algorithm::ES384];

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The keys of a JWK Set usable for client assertions.
///
/// # Errors
/// A message naming what is wrong with the set.
pub fn check_jwks(text: &str) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_str(text)
        .map_err(|e| format!("not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWK Set has no keys".into());
    }
    for k in &set.keys {
        let kid = k.common.key_id.as_deref().ok_or("every key needs a kid")?;
        let alg = key_algorithm(k).ok_or_else(|| {
            format!("key {kid}: only RS384 (RSA) and ES384 (EC P-384) keys are accepted")
        })?;
        DecodingKey::from_jwk(k).map_err(|e| format!("key {kid} ({alg:?}): {e}"))?;
    }
    Ok(set)
}

/// The algorithm a JWK is for: its `alg` if given (RS384/ES384 only), else from its key type.
fn key_algorithm(k: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    let by_type = match &k.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS384,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => Algorithm::ES384,
        _ => return None,
    };
    match k.common.key_algorithm {
        None => Some(by_type),
        Some(KeyAlgorithm::RS384) if by_type == Algorithm::RS384 => Some(by_type),
        Some(KeyAlgorithm::ES384) if by_type == Algorithm::ES384 => Some(by_type),
        Some(_) => None,
    }
}

/// How a client authenticates and what it may be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// A backend service: `private_key_jwt` with this JWK Set; `system/` scopes.
    Backend {
        /// The service's public JWK Set (JSON).
        jwks: String,
    },
    /// A user-facing app (public client): authorization code with PKCE S256, redirected to one
    /// of these URIs (https, or http on localhost); `user/` and `patient/` scopes and
    /// `offline_access`, `online_access`.
    App {
        /// Exact redirect URIs.
        redirect_uris: Vec<String>,
    },
}

/// Scopes a user-facing app may be registered for besides `user/…` resource scopes.
pub const APP_SCOPES: [&str; 2] = ["offline_access", "online_access"];

fn check_redirect_uri(uri: &str) -> Result<(), ApiError> {
    let url = webauthn_rs::prelude::Url::parse(uri)
        .map_err(|e| ApiError::bad_request(format!("redirect URI {uri:?}: {e}")))?;
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if url.fragment().is_some() || !(url.scheme() == "https" || (url.scheme() == "http" && local)) {
        return Err(ApiError::bad_request(format!(
            "redirect URI {uri:?}: use https (or http on localhost), without a fragment"
        )));
    }
    Ok(())
}

/// Registers a client; returns its id.
///
/// # Errors
/// 400 naming what is wrong with the keys, redirect URIs or scopes.
pub fn register_client(
    node: &Node,
    name: &str,
    kind: &ClientKind,
    scopes: &str,
) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "the client name must be 1-200 printable characters",
        ));
    }
    let set = ScopeSet::parse(scopes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (jwks, redirect_uris) = match kind {
        ClientKind::Backend { jwks } => {
            check_jwks(jwks).map_err(ApiError::bad_request)?;
            if set.resources().is_empty()
                || !set.only_context(Context::System)
                || !set.others().is_empty()
            {
                return Err(ApiError::bad_request(
                    "a backend service is registered with system/… scopes only (e.g. system/Observation.rs)",
                ));
            }
            (jwks.clone(), Vec::new())
        }
        ClientKind::App { redirect_uris } => {
            if redirect_uris.is_empty() {
                return Err(ApiError::bad_request(
                    "an app needs at least one redirect URI",
                ));
            }
            for u in redirect_uris {
                check_redirect_uri(u)?;
            }
            let others_ok = set
                .others()
                .iter()
                .all(|o| APP_SCOPES.contains(&o.as_str()));
            if set.resources().is_empty() || set.has_context(Context::System) || !others_ok {
                return Err(ApiError::bad_request(
                    "an app is registered with user/… or patient/… scopes (e.g. patient/Observation.rs) and optionally offline_access or online_access (openid and fhirUser need ID tokens, which this node does not issue yet)",
                ));
            }
            (String::new(), redirect_uris.clone())
        }
    };
    let mut raw = [0u8; 12];
    medvault_crypto::random_fill(&mut raw).map_err(|e| ApiError::internal(&e))?;
    let client_id = format!("cli_{}", hex::encode(raw));
    let row = ClientRow {
        client_id: client_id.clone(),
        name: name.to_owned(),
        jwks,
        scopes: set.to_string(),
        disabled: false,
        created_micros: node.clock.now_micros(),
        redirect_uris,
    };
    write_with(node.store.as_ref(), move |tx| tx.put_client(&row))?;
    Ok(client_id)
}

/// Disables or enables a client; returns whether it exists.
///
/// # Errors
/// Store failures.
pub fn set_client_disabled(node: &Node, client_id: &str, disabled: bool) -> Result<bool, ApiError> {
    let id = client_id.to_owned();
    Ok(write_with(node.store.as_ref(), move |tx| {
        let Some(mut c) = tx.client(&id)? else {
            return Ok(false);
        };
        c.disabled = disabled;
        tx.put_client(&c)?;
        Ok(true)
    })?)
}

/// An OAuth2 error response (RFC 6749 §5.2): `{"error", "error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &'static str, description: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn noted(r: Response, client: Option<String>, event: &'static str) -> Response {
    crate::identity::with_app_note(r, None, client, event)
}

/// The public origin of this node (scheme, host, port), for the token endpoint's URL.
fn origin(state: &AppState, headers: &HeaderMap) -> String {
    let base = crate::http::public_base(state, headers);
    base.strip_suffix("/fhir").unwrap_or(&base).to_owned()
}

/// `GET /fhir/.well-known/smart-configuration` (and at the root): what this server supports.
pub(crate) async fn smart_configuration(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Response {
    let origin = origin(&state, &headers);
    Json(json!({
        "issuer": origin,
        "authorization_endpoint": format!("{origin}/auth/authorize"),
        "token_endpoint": format!("{origin}/auth/token"),
        "introspection_endpoint": format!("{origin}/auth/introspect"),
        "revocation_endpoint": format!("{origin}/auth/revoke"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "patient/*.cruds", "offline_access", "online_access"],
        "capabilities": [
            "launch-standalone", "client-public", "client-confidential-asymmetric",
            "permission-offline", "permission-online", "permission-user", "permission-patient",
            "context-standalone-patient",
            "permission-v1", "permission-v2",
        ],
    }))
    .into_response()
}

/// `POST /auth/token` for apps: `authorization_code` (with PKCE) and `refresh_token`.
async fn app_token(state: &AppState, body: &[u8]) -> Response {
    let form: crate::oauth_app::AppTokenRequest = match serde_urlencoded::from_bytes(body) {
        Ok(f) => f,
        Err(_) => {
            return noted(
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form"),
                None,
                "token-refused",
            );
        }
    };
    let node = Arc::clone(&state.node);
    match tokio::task::spawn_blocking(move || crate::oauth_app::exchange(&node, &form)).await {
        Ok(Ok((body, client))) => {
            let mut r = Json(body).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            noted(r, Some(client), "token-issued")
        }
        Ok(Err(r)) => {
            if let Some(f) = &r.revoked_family {
                state.revoke_family_cached(f);
            }
            noted(
                oauth_error(r.status, r.error, &r.description),
                r.client,
                "token-refused",
            )
        }
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// `POST /auth/token` form.
#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: Option<String>,
    scope: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenRequest(<redacted>)")
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    sub: String,
    jti: String,
    exp: u64,
}

/// What the token endpoint reads from a client assertion before verifying it: the header and the
/// issuer (to find the client's keys). Exposed for fuzzing.
pub fn peek_assertion(jwt: &str) -> (Option<jsonwebtoken::Header>, Option<String>) {
    (
        jsonwebtoken::decode_header(jwt).ok(),
        unverified_issuer(jwt),
    )
}

/// Reads the `iss` of an unverified JWT, only to find which client's keys to verify it with.
fn unverified_issuer(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// `POST /auth/token`: `client_credentials` with a `private_key_jwt` client assertion.
pub(crate) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let grant_type = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(k, _)| k == "grant_type")
                .map(|(_, v)| v)
        });
    if matches!(
        grant_type.as_deref(),
        Some("authorization_code" | "refresh_token")
    ) {
        return app_token(&state, &body).await;
    }
    let form: TokenRequest = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => {
            return noted(
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send application/x-www-form-urlencoded",
                ),
                None,
                "token-refused",
            );
        }
    };
    let audience = format!("{}/auth/token", origin(&state, &headers));
    let node = Arc::clone(&state.node);
    let result = tokio::task::spawn_blocking(move || issue(&node, &form, &audience)).await;
    match result {
        Ok(Ok((body, client))) => {
            let mut r = Json(body).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            noted(r, Some(client), "token-issued")
        }
        Ok(Err(r)) => noted(
            oauth_error(r.status, r.error, &r.description),
            r.client,
            "token-refused",
        ),
        Err(e) => ApiError::internal(&e).into_response(),
    }
}

/// A refused token request: the RFC 6749 error, and the client it concerned (for the log).
struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
    client: Option<String>,
}

fn refuse(
    status: StatusCode,
    error: &'static str,
    why: &str,
    client: Option<&str>,
) -> Box<Refusal> {
    Box::new(Refusal {
        status,
        error,
        description: why.to_owned(),
        client: client.map(str::to_owned),
    })
}

/// Checks the request and assertion, and stores a new access token.
fn issue(
    node: &Node,
    form: &TokenRequest,
    audience: &str,
) -> Result<(Value, String), Box<Refusal>> {
    let bad = |e, why: &str| refuse(StatusCode::BAD_REQUEST, e, why, None);
    if form.grant_type.as_deref() != Some("client_credentials") {
        return Err(bad(
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        ));
    }
    if form.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
        return Err(bad(
            "invalid_client",
            "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ));
    }
    let Some(jwt) = form
        .client_assertion
        .as_deref()
        .filter(|j| j.len() <= 16_384)
    else {
        return Err(bad("invalid_client", "client_assertion is missing"));
    };
    let unauth = |why: &str, client: Option<&str>| {
        refuse(StatusCode::UNAUTHORIZED, "invalid_client", why, client)
    };
    let client_id =
        unverified_issuer(jwt).ok_or_else(|| unauth("the client assertion is not a JWT", None))?;
    let internal = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "token request failed on the server side");
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "try again later",
            None,
        )
    };
    let client = node
        .store
        .client(&client_id)
        .map_err(|e| internal(&e))?
        .filter(|c| !c.disabled)
        .ok_or_else(|| unauth("unknown or disabled client", None))?;
    let id = Some(client_id.as_str());
    let header = jsonwebtoken::decode_header(jwt)
        .map_err(|_| unauth("the client assertion header is malformed", id))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(unauth(
            "the assertion must be signed with RS384 or ES384",
            id,
        ));
    }
    let set: JwkSet = serde_json::from_str(&client.jwks).map_err(|e| internal(&e))?;
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| set.find(kid))
        .filter(|k| key_algorithm(k) == Some(header.alg))
        .ok_or_else(|| unauth("no registered key has the assertion's kid and alg", id))?;
    let decoding = DecodingKey::from_jwk(key).map_err(|e| internal(&e))?;
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[client_id.as_str()]);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v.leeway = LEEWAY_SECS;
    let claims = jsonwebtoken::decode::<AssertionClaims>(jwt, &decoding, &v)
        .map_err(|e| unauth(&format!("the client assertion does not verify: {e}"), id))?
        .claims;
    let now = node.clock.now_micros();
    let now_secs = u64::try_from(now / 1_000_000).unwrap_or(0);
    if claims.sub != client_id {
        return Err(unauth("the assertion's sub must be the client id", id));
    }
    if claims.exp > now_secs + MAX_ASSERTION_LIFETIME.as_secs() + LEEWAY_SECS {
        return Err(unauth(
            "the assertion expires more than five minutes ahead",
            id,
        ));
    }
    if claims.jti.is_empty() || claims.jti.len() > 256 {
        return Err(unauth("the assertion needs a jti", id));
    }
    let expires = i64::try_from(claims.exp + LEEWAY_SECS)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    let (cid, jti) = (client_id.clone(), claims.jti.clone());
    let fresh = write_with(node.store.as_ref(), move |tx| {
        tx.use_assertion_id(&cid, &jti, expires, now)
    })
    .map_err(|e| internal(&e))?;
    if !fresh {
        return Err(unauth("the assertion's jti was already used (replay)", id));
    }
    let allowed = ScopeSet::parse(&client.scopes).map_err(|e| internal(&e))?;
    let requested = match form.scope.as_deref() {
        Some(s) => ScopeSet::parse(s)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, "invalid_scope", &e.to_string(), id))?,
        None => allowed.clone(),
    };
    let granted = requested.granted_by(&allowed);
    if granted.resources().is_empty() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "none of the requested scopes is allowed for this client",
            id,
        ));
    }
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    medvault_crypto::random_fill(raw.as_mut()).map_err(|e| internal(&e))?;
    let token = zeroize::Zeroizing::new(format!(
        "{ACCESS_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref())
    ));
    let row = AccessTokenRow {
        hash: medvault_crypto::sha256(token.as_bytes()),
        client_id: client_id.clone(),
        scopes: granted.to_string(),
        issued_micros: now,
        expires_micros: now + micros(ACCESS_TOKEN_LIFETIME),
        user_id: None,
        family: None,
    };
    let scope_text = row.scopes.clone();
    write_with(node.store.as_ref(), move |tx| {
        tx.put_access_token(&row, now)
    })
    .map_err(|e| internal(&e))?;
    Ok((
        json!({
            "access_token": token.as_str(),
            "token_type": "bearer",
            "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
            "scope": scope_text,
        }),
        client_id,
    ))
}

/// Validated access tokens, with their expiry (microseconds) and refresh-token family.
pub type AccessTokenCache = crate::auth::CredentialCache<(Authenticated, i64, Option<String>)>;

/// How long a validated access token is trusted before its client is read again.
const RECHECK: Duration = Duration::from_secs(30);

/// Authenticates an OAuth2 access token (`mva_…`): issued here, not expired, its client (and
/// for an app's token, its user) not disabled.
///
/// # Errors
/// 401 naming why.
pub async fn authenticate_access_token(
    state: &AppState,
    token: &str,
) -> Result<Authenticated, ApiError> {
    let hash = medvault_crypto::sha256(token.as_bytes());
    let now = state.node.clock.now_micros();
    let (who, expires, family) = match state.access_tokens.fresh(&hash, RECHECK) {
        Some(found) => found,
        None => {
            let node = Arc::clone(&state.node);
            let found = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
                let Some(row) = node.store.access_token(&hash)? else {
                    return Ok(None);
                };
                let Some(client) = node.store.client(&row.client_id)? else {
                    return Ok(None);
                };
                if client.disabled {
                    return Ok(None);
                }
                let mut scopes =
                    ScopeSet::parse(&row.scopes).map_err(|e| ApiError::internal(&e))?;
                // An app's token acts for its user, within both the user's role and the
                // scopes (patient/… scopes in the user's own compartment); a backend service's
                // for itself.
                let (mut patient, mut practitioner) = (None, None);
                let (token_id, role, aal) = match &row.user_id {
                    Some(uid) => {
                        let Some(user) = node.store.user(uid)?.filter(|u| !u.disabled) else {
                            return Ok(None);
                        };
                        let role = Role::parse(&user.role).map_err(|e| ApiError::internal(&e))?;
                        if role == Role::Patient {
                            // A patient's apps act in the patient's own compartment only.
                            scopes = scopes.only(medvault_auth::scopes::Context::Patient);
                        }
                        scopes = scopes.for_patient(user.patient_id.as_deref());
                        patient = user.patient_id.filter(|_| role == Role::Patient);
                        practitioner = user.practitioner;
                        (user.id, role, 2)
                    }
                    None => (row.client_id.clone(), Role::Service, 0),
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
                        patient,
                        practitioner,
                    },
                    row.expires_micros,
                    row.family,
                )))
            })
            .await
            .map_err(|e| ApiError::internal(&e))??;
            let (who, expires, family) =
                found.ok_or_else(|| unauthorized("the access token is not valid"))?;
            state
                .access_tokens
                .put(hash, (who.clone(), expires, family.clone()));
            (who, expires, family)
        }
    };
    if now >= expires {
        return Err(unauthorized(
            "the access token has expired: request a new one",
        ));
    }
    if family.is_some_and(|f| state.family_revoked(&f)) {
        return Err(unauthorized("the access token was revoked"));
    }
    Ok(who)
}

/// `POST /auth/introspect` form.
#[derive(Deserialize)]
pub(crate) struct IntrospectRequest {
    token: String,
}

/// `POST /auth/introspect` (RFC 7662), for admins: whether an access token is active, and what
/// it grants.
pub(crate) async fn introspect(
    State(state): State<AppState>,
    who: Authenticated,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    crate::gates::introspection(&who).map_err(crate::gates::Refusal::into_api_error)?;
    let form: IntrospectRequest = serde_urlencoded::from_bytes(&body)
        .map_err(|_| ApiError::bad_request("send token=… as application/x-www-form-urlencoded"))?;
    let inactive = Json(json!({"active": false})).into_response();
    if !form.token.starts_with(ACCESS_TOKEN_PREFIX) {
        return Ok(inactive);
    }
    let node = Arc::clone(&state.node);
    let hash = medvault_crypto::sha256(form.token.as_bytes());
    // Active only while the token, its client and (for an app's token) its user all are.
    let row = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
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
        Ok(Some(row))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let now = state.node.clock.now_micros();
    Ok(match row {
        Some(r) if r.expires_micros > now => Json(json!({
            "active": true,
            "scope": r.scopes,
            "client_id": r.client_id,
            "token_type": "bearer",
            "iat": r.issued_micros / 1_000_000,
            "exp": r.expires_micros / 1_000_000,
        }))
        .into_response(),
        _ => inactive,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // A P-384 public key (the RFC 7517 §A.1 style), and an RSA one, as JWKs.
    const EC: &str = r#"{"kty":"EC","crv":"P-384","kid":"e1","x":"iA7lWQLzVrKGEFjfGMfMHfTEZ2KnLiKU7JuNT3E7ygsfE7ygsfE7ygsfE7ygsfE7","y":"sQgJ1dNTF7ZtlSUMUa6vUkZu0tsfE7ygsfE7ygsfE7ygsfE7ygsfE7ygsfE7ygsf"}"#;

    #[test]
    fn jwk_sets_need_kids_and_the_two_smart_algorithms() {
        assert!(check_jwks("not json").is_err());
        assert!(
            check_jwks(r#"{"keys":[]}"#)
                .unwrap_err()
                .contains("no keys")
        );
        let no_kid = EC.replace(r#""kid":"e1","#, "");
        assert!(
            check_jwks(&format!(r#"{{"keys":[{no_kid}]}}"#))
                .unwrap_err()
                .contains("kid")
        );
        let p256 = EC.replace("P-384", "P-256");
        assert!(
            check_jwks(&format!(r#"{{"keys":[{p256}]}}"#))
                .unwrap_err()
                .contains("RS384")
        );
        let oct = r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;
        assert!(
            check_jwks(oct).is_err(),
            "symmetric keys are never accepted"
        );
        let wrong_alg = EC.replace(r#""kid":"e1""#, r#""kid":"e1","alg":"RS384""#);
        assert!(check_jwks(&format!(r#"{{"keys":[{wrong_alg}]}}"#)).is_err());
    }

    #[test]
    fn unverified_issuer_reads_only_well_formed_payloads() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"iss":"cli_1"}"#);
        assert_eq!(
            unverified_issuer(&format!("h.{payload}.s")).as_deref(),
            Some("cli_1")
        );
        for bad in ["", "a", "a.b.c", "a.!!.c"] {
            assert_eq!(unverified_issuer(bad), None, "{bad}");
        }
    }
}
