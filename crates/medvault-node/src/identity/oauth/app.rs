//! OAuth2 for user-facing apps (SMART App Launch, standalone): the authorization code flow with
//! PKCE (RFC 7636, S256 only), refresh tokens rotated on every use (RFC 9700 §4.14: reusing a
//! spent one revokes its whole family), and revocation (RFC 7009).
//!
//! 1. The app sends the person's browser to `GET /auth/authorize?response_type=code&client_id=…
//!    &redirect_uri=…&scope=…&state=…&aud=<FHIR base>&code_challenge=…&code_challenge_method=S256`.
//! 2. The node's own page checks the request (`GET /auth/authorize/check`), has the person sign
//!    in with a second factor, shows the app's name and the scopes it asks for, and on approval
//!    (`POST /auth/authorize/decide`, with that AAL2+ session) sends the browser back to the
//!    redirect URI with a one-use code valid for 60 seconds.
//! 3. The app exchanges the code and its PKCE verifier at `POST /auth/token`
//!    (`grant_type=authorization_code`) for an access token acting for that person, within both
//!    the person's role and the scopes; with `offline_access` or `online_access` also a refresh
//!    token.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use http::StatusCode;
use medvault_auth::scopes::{Context, ScopeSet};
use medvault_core::Role;
use medvault_store::{AccessTokenRow, ClientRow, GrantRow, TokenHash, write_with};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::identity::micros;
use crate::identity::oauth::{
    ACCESS_TOKEN_LIFETIME, ACCESS_TOKEN_PREFIX, REFRESH_TOKEN_PREFIX, TokenRefusal, random_token,
};
use crate::node::Node;

/// How long an authorization code may wait to be exchanged.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long an `offline_access` refresh token lasts.
pub const OFFLINE_REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an `online_access` refresh token lasts (a working day).
pub const ONLINE_REFRESH_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The authorization request's parameters.
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeRequest {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    aud: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// Why an authorization request fails: shown on the page when the redirect URI cannot be
/// trusted (unknown client or URI), otherwise sent back to the app (RFC 6749 §4.1.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeError {
    /// Where to send the browser with the error, when the redirect URI can be trusted.
    pub redirect: Option<String>,
    /// The RFC 6749 error code.
    pub error: &'static str,
    /// What is wrong.
    pub description: String,
}

/// `uri` with `params` appended to its query.
fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = uri.to_owned();
    let mut sep = if uri.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(v.as_bytes()));
        sep = '&';
    }
    out
}

/// A valid request: the client, the redirect URI and the scopes it may have.
#[derive(Debug)]
pub struct Checked {
    /// The app.
    pub client: ClientRow,
    /// Where to send the browser back to (one of the app's registered URIs).
    pub redirect_uri: String,
    /// The scopes asked for that the app may have.
    pub granted: ScopeSet,
    /// The app's `state`, returned to it.
    pub state: Option<String>,
    /// The PKCE S256 challenge.
    pub challenge: String,
}

/// Checks an authorization request for this node (`fhir_base`: its FHIR base URL, which `aud`
/// must name), blocking.
///
/// # Errors
/// Why the request fails, to show on the page or send back to the app.
pub fn check(
    node: &Node,
    req: &AuthorizeRequest,
    fhir_base: &str,
) -> Result<Checked, AuthorizeError> {
    let on_page = |error, description: &str| AuthorizeError {
        redirect: None,
        error,
        description: description.to_owned(),
    };
    let client = req
        .client_id
        .as_deref()
        .and_then(|id| node.store.client(id).ok().flatten())
        .filter(|c| !c.disabled && !c.redirect_uris.is_empty())
        .ok_or_else(|| on_page("invalid_request", "unknown client"))?;
    let redirect_uri = req
        .redirect_uri
        .clone()
        .filter(|u| client.redirect_uris.contains(u))
        .ok_or_else(|| {
            on_page(
                "invalid_request",
                "the redirect_uri is not one registered for this client",
            )
        })?;
    let state = req.state.clone();
    let back = |error, description: &str| {
        let mut params = vec![("error", error), ("error_description", description)];
        if let Some(s) = &state {
            params.push(("state", s.as_str()));
        }
        AuthorizeError {
            redirect: Some(with_query(&redirect_uri, &params)),
            error,
            description: description.to_owned(),
        }
    };
    if req.response_type.as_deref() != Some("code") {
        return Err(back(
            "unsupported_response_type",
            "only response_type=code is supported",
        ));
    }
    if req.code_challenge_method.as_deref() != Some("S256") {
        return Err(back(
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required",
        ));
    }
    let challenge = req
        .code_challenge
        .clone()
        .filter(|c| c.len() == 43 && B64U.decode(c).is_ok_and(|b| b.len() == 32))
        .ok_or_else(|| {
            back(
                "invalid_request",
                "code_challenge must be a base64url SHA-256",
            )
        })?;
    if req.aud.as_deref().map(|a| a.trim_end_matches('/')) != Some(fhir_base) {
        return Err(back(
            "invalid_request",
            "aud must be this server's FHIR base URL",
        ));
    }
    let requested = ScopeSet::parse(req.scope.as_deref().unwrap_or(""))
        .map_err(|e| back("invalid_scope", &e.to_string()))?;
    let allowed = ScopeSet::parse(&client.scopes)
        .map_err(|_| back("server_error", "the client's registration is unreadable"))?;
    let granted = requested.granted_by(&allowed);
    if granted.resources().is_empty() {
        return Err(back(
            "invalid_scope",
            "none of the requested scopes is allowed for this app",
        ));
    }
    Ok(Checked {
        client,
        redirect_uri,
        granted,
        state,
        challenge,
    })
}

/// The signed-in person `user_id` approves (`approve`) or denies the request (blocking): where
/// to send the browser (the redirect URI with a one-use code, or with the error) and the app's
/// client id.
///
/// # Errors
/// `Ok(Err(_))` when the request is not valid (as [`check`]); `Err` for store failures or a
/// user that no longer exists.
pub fn decide(
    node: &Node,
    user_id: &str,
    req: &AuthorizeRequest,
    fhir_base: &str,
    approve: bool,
) -> Result<Result<(String, String), AuthorizeError>, Error> {
    let mut c = match check(node, req, fhir_base) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    // patient/… scopes need the person's own Patient resource as the launch context.
    let person = node
        .store
        .user(user_id)?
        .ok_or_else(|| Error::not_found("the signed-in user no longer exists"))?;
    if person.role == Role::Patient.as_str() {
        // A patient may grant apps access to their own compartment, nothing wider.
        c.granted = c.granted.only(Context::Patient);
    }
    if person.patient_id.is_none() {
        c.granted = c.granted.for_patient(None);
    }
    if c.granted.resources().is_empty() {
        let mut params = vec![
            ("error", "invalid_scope"),
            (
                "error_description",
                "none of the requested scopes can be granted by this account",
            ),
        ];
        if let Some(st) = &c.state {
            params.push(("state", st.as_str()));
        }
        return Ok(Ok((
            with_query(&c.redirect_uri, &params),
            c.client.client_id,
        )));
    }
    let mut params: Vec<(&str, String)> = Vec::new();
    if approve {
        let code = random_token("mvc_")?;
        let grant = GrantRow {
            hash: TokenHash::of(&code),
            kind: "code".into(),
            client_id: c.client.client_id.clone(),
            user_id: user_id.to_owned(),
            scopes: c.granted.to_string(),
            redirect_uri: c.redirect_uri.clone(),
            code_challenge: c.challenge.clone(),
            family: random_token("fam_")?.to_string(),
            expires_micros: node.clock.now_micros() + micros(CODE_LIFETIME),
            used: false,
        };
        write_with(node.store.as_ref(), move |tx| tx.put_grant(&grant))?;
        params.push(("code", code.to_string()));
    } else {
        params.push(("error", "access_denied".into()));
    }
    if let Some(s) = &c.state {
        params.push(("state", s.clone()));
    }
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(Ok((
        with_query(&c.redirect_uri, &pairs),
        c.client.client_id,
    )))
}

fn refused(error: &'static str, description: &str, client: &str) -> Box<TokenRefusal> {
    Box::new(TokenRefusal {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.to_owned(),
        client: Some(client.to_owned()),
        revoked_family: None,
    })
}

/// The form fields of app grants at `POST /auth/token`.
#[derive(Deserialize)]
pub struct AppTokenRequest {
    grant_type: String,
    client_id: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
}

impl std::fmt::Debug for AppTokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppTokenRequest(<redacted>)")
    }
}

/// Exchanges an authorization code or a refresh token (blocking): the token response and the
/// app's client id.
///
/// # Errors
/// The RFC 6749 refusal; a code or refresh token used twice revokes its family (named in the
/// refusal).
pub fn exchange(node: &Node, form: &AppTokenRequest) -> Result<(Value, String), Box<TokenRefusal>> {
    let client_id = form.client_id.clone().unwrap_or_default();
    let internal = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "token exchange failed on the server side");
        refused("server_error", "try again later", &client_id)
    };
    let client = node
        .store
        .client(&client_id)
        .map_err(|e| internal(&e))?
        .filter(|c| !c.disabled && !c.redirect_uris.is_empty())
        .ok_or_else(|| {
            let mut r = refused("invalid_client", "unknown or disabled app", &client_id);
            r.status = StatusCode::UNAUTHORIZED;
            r.client = None;
            r
        })?;
    let (secret, kind) = match form.grant_type.as_str() {
        "authorization_code" => (form.code.as_deref(), "code"),
        "refresh_token" => (form.refresh_token.as_deref(), "refresh"),
        _ => {
            return Err(refused(
                "unsupported_grant_type",
                "use authorization_code, refresh_token or client_credentials",
                &client_id,
            ));
        }
    };
    let invalid = |why: &str| refused("invalid_grant", why, &client_id);
    let secret = secret.ok_or_else(|| invalid("the code or refresh token is missing"))?;
    let hash = TokenHash::of(secret);
    let grant = node
        .store
        .grant(&hash)
        .map_err(|e| internal(&e))?
        .filter(|g| g.kind == kind && g.client_id == client.client_id)
        .ok_or_else(|| invalid("unknown code or refresh token"))?;
    let now = node.clock.now_micros();
    if grant.expires_micros <= now {
        return Err(invalid("the code or refresh token has expired"));
    }
    if kind == "code" {
        if form.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(invalid(
                "redirect_uri differs from the authorization request's",
            ));
        }
        let verifier = form.code_verifier.as_deref().unwrap_or("");
        let well_formed = (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        let computed = B64U.encode(medvault_crypto::sha256(verifier.as_bytes()));
        if !well_formed || computed != grant.code_challenge {
            return Err(invalid(
                "the PKCE code_verifier does not match the code_challenge",
            ));
        }
    }
    let user = node
        .store
        .user(&grant.user_id)
        .map_err(|e| internal(&e))?
        .filter(|u| !u.disabled)
        .ok_or_else(|| invalid("the approving user is disabled"))?;
    Role::parse(&user.role).map_err(|e| internal(&e))?;
    let scopes = ScopeSet::parse(&grant.scopes).map_err(|e| internal(&e))?;
    let token = random_token(ACCESS_TOKEN_PREFIX).map_err(|e| internal(&e.message))?;
    let access = AccessTokenRow {
        hash: TokenHash::of(&token),
        client_id: client.client_id.clone(),
        scopes: grant.scopes.clone(),
        issued_micros: now,
        expires_micros: now + micros(ACCESS_TOKEN_LIFETIME),
        user_id: Some(user.id.clone()),
        family: Some(grant.family.clone()),
    };
    let refresh_lifetime = if scopes.has("offline_access") {
        Some(OFFLINE_REFRESH_LIFETIME)
    } else if scopes.has("online_access") {
        Some(ONLINE_REFRESH_LIFETIME)
    } else {
        None
    };
    let refresh = match refresh_lifetime {
        Some(life) => {
            let r = random_token(REFRESH_TOKEN_PREFIX).map_err(|e| internal(&e.message))?;
            // A rotated refresh token keeps its family's original end.
            let expires = if kind == "refresh" {
                grant.expires_micros
            } else {
                now + micros(life)
            };
            Some((r, expires))
        }
        None => None,
    };
    let refresh_row = refresh.as_ref().map(|(r, expires)| GrantRow {
        hash: TokenHash::of(r),
        kind: "refresh".into(),
        client_id: client.client_id.clone(),
        user_id: user.id.clone(),
        scopes: grant.scopes.clone(),
        redirect_uri: String::new(),
        code_challenge: String::new(),
        family: grant.family.clone(),
        expires_micros: *expires,
        used: false,
    });
    // Exactly one exchange wins, and its tokens are stored in the same transaction; a second
    // use of the same code or refresh token means it leaked, so everything issued from that
    // approval is revoked (including what the winner just got).
    let family = grant.family.clone();
    let won = write_with(node.store.as_ref(), move |tx| {
        if !tx.use_grant(&hash)? {
            tx.revoke_family(&family)?;
            return Ok(false);
        }
        tx.put_access_token(&access, now)?;
        if let Some(r) = &refresh_row {
            tx.put_grant(r)?;
        }
        Ok(true)
    })
    .map_err(|e| internal(&e))?;
    if !won {
        let mut r = invalid(
            "this code or refresh token was already used: every token issued from it is revoked",
        );
        r.revoked_family = Some(grant.family);
        return Err(r);
    }
    let mut body = json!({
        "access_token": token.as_str(),
        "token_type": "bearer",
        "expires_in": ACCESS_TOKEN_LIFETIME.as_secs(),
        "scope": grant.scopes,
    });
    if let Some((r, _)) = &refresh {
        body["refresh_token"] = Value::String(r.to_string());
    }
    if scopes.has_context(Context::Patient)
        && let Some(p) = &user.patient_id
    {
        // SMART launch context: the patient the patient/… scopes are bound to.
        body["patient"] = Value::String(p.clone());
    }
    Ok((body, client.client_id))
}
