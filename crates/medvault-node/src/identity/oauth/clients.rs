//! OAuth2 clients (`medvault client register`, `client disable`): backend services with their
//! public JWK Set, and user-facing apps with their redirect URIs, each with the scopes it may be
//! granted.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use medvault_auth::scopes::{Context, ScopeSet};
use medvault_store::{ClientRow, write_with};

use crate::error::Error;
use crate::identity::random_id;
use crate::node::Node;

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
pub(crate) fn key_algorithm(k: &Jwk) -> Option<Algorithm> {
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

fn check_redirect_uri(uri: &str) -> Result<(), Error> {
    let url = webauthn_rs::prelude::Url::parse(uri)
        .map_err(|e| Error::bad_request(format!("redirect URI {uri:?}: {e}")))?;
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if url.fragment().is_some() || !(url.scheme() == "https" || (url.scheme() == "http" && local)) {
        return Err(Error::bad_request(format!(
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
) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "the client name must be 1-200 printable characters",
        ));
    }
    let set = ScopeSet::parse(scopes).map_err(|e| Error::bad_request(e.to_string()))?;
    let (jwks, redirect_uris) = match kind {
        ClientKind::Backend { jwks } => {
            check_jwks(jwks).map_err(Error::bad_request)?;
            if set.resources().is_empty()
                || !set.only_context(Context::System)
                || !set.others().is_empty()
            {
                return Err(Error::bad_request(
                    "a backend service is registered with system/… scopes only (e.g. system/Observation.rs)",
                ));
            }
            (jwks.clone(), Vec::new())
        }
        ClientKind::App { redirect_uris } => {
            if redirect_uris.is_empty() {
                return Err(Error::bad_request("an app needs at least one redirect URI"));
            }
            for u in redirect_uris {
                check_redirect_uri(u)?;
            }
            let others_ok = set
                .others()
                .iter()
                .all(|o| APP_SCOPES.contains(&o.as_str()));
            if set.resources().is_empty() || set.has_context(Context::System) || !others_ok {
                return Err(Error::bad_request(
                    "an app is registered with user/… or patient/… scopes (e.g. patient/Observation.rs) and optionally offline_access or online_access (openid and fhirUser need ID tokens, which this node does not issue yet)",
                ));
            }
            (String::new(), redirect_uris.clone())
        }
    };
    let client_id = random_id("cli_")?;
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
pub fn set_client_disabled(node: &Node, client_id: &str, disabled: bool) -> Result<bool, Error> {
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
}
