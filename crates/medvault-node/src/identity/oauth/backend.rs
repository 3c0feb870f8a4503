//! SMART Backend Services: RFC 6749 `client_credentials` with an RFC 7523 `private_key_jwt`
//! client assertion (RS384 or ES384), answered with an access token for the service itself.

use std::time::Duration;

use base64::Engine as _;
use http::StatusCode;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use medvault_auth::scopes::ScopeSet;
use medvault_store::{AccessTokenRow, TokenHash, write_with};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::identity::micros;
use crate::identity::oauth::clients::key_algorithm;
use crate::identity::oauth::{ACCESS_TOKEN_LIFETIME, ACCESS_TOKEN_PREFIX, TokenRefusal};
use crate::node::Node;

/// The furthest ahead a client assertion may expire.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// Clock skew tolerated on assertion times.
const LEEWAY_SECS: u64 = 60;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Algorithms accepted for client assertions (SMART Backend Services).
const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS384, Algorithm::ES384];

/// `POST /auth/token` form of a backend service (`client_credentials`).
#[derive(Deserialize)]
pub struct ClientCredentialsRequest {
    grant_type: Option<String>,
    scope: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

impl std::fmt::Debug for ClientCredentialsRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCredentialsRequest(<redacted>)")
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

fn refuse(
    status: StatusCode,
    error: &'static str,
    why: &str,
    client: Option<&str>,
) -> Box<TokenRefusal> {
    Box::new(TokenRefusal {
        status,
        error,
        description: why.to_owned(),
        client: client.map(str::to_owned),
        revoked_family: None,
    })
}

/// Checks the request and assertion, and stores a new access token (blocking). `audience` is
/// this node's token endpoint URL, which the assertion must name. Returns the token response
/// and the client id.
///
/// # Errors
/// The RFC 6749 refusal.
pub fn issue(
    node: &Node,
    form: &ClientCredentialsRequest,
    audience: &str,
) -> Result<(Value, String), Box<TokenRefusal>> {
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
        hash: TokenHash::of(&token),
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

#[cfg(test)]
mod tests {
    use super::*;

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
