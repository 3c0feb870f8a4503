//! A SMART app against a running server: registration with the CLI, the authorization request
//! (with PKCE), the person's decision, and the token endpoint's exchanges.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::e2e::Server;

/// The redirect URI test apps register.
pub const REDIRECT: &str = "http://localhost:9999/callback";

/// The PKCE verifier test apps use.
pub const VERIFIER: &str = "a-long-random-pkce-verifier-of-at-least-43-characters-0123456789";

/// The S256 PKCE challenge of `verifier`.
#[must_use]
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(medvault_crypto::sha256(verifier.as_bytes()))
}

/// An authorization request's query string for `client`, redirecting to [`REDIRECT`] with state
/// `xyz`, with the PKCE challenge of [`VERIFIER`] when `with_pkce`.
#[must_use]
pub fn authorize_query(client: &str, aud: &str, scope: &str, with_pkce: bool) -> String {
    let mut q = format!(
        "response_type=code&client_id={client}&redirect_uri={}&scope={}&state=xyz&aud={}",
        urlencode(REDIRECT),
        urlencode(scope),
        urlencode(aud)
    );
    if with_pkce {
        q.push_str(&format!(
            "&code_challenge={}&code_challenge_method=S256",
            challenge(VERIFIER)
        ));
    }
    q
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
#[must_use]
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The query parameter `name` of `url` (`%3D` and `%2F` decoded).
#[must_use]
pub fn url_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%3D", "=").replace("%2F", "/"))
}

/// The `redirect` of a decision's answer.
#[must_use]
pub fn redirect_of(answer: &Value) -> &str {
    answer["redirect"]
        .as_str()
        .unwrap_or_else(|| panic!("no redirect in {answer}"))
}

/// A token endpoint answer's `field` (`access_token`, `refresh_token`).
#[must_use]
pub fn token_field(answer: &Value, field: &str) -> String {
    answer[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {answer}"))
        .to_owned()
}

impl Server {
    /// Registers a user-facing app redirecting to [`REDIRECT`] with `medvault client register`;
    /// returns its client id.
    pub fn register_app(&self, name: &str, scopes: &str) -> String {
        let (ok, out, err) = self.run(&[
            "client",
            "register",
            "--name",
            name,
            "--redirect-uri",
            REDIRECT,
            "--scope",
            scopes,
        ]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    }

    /// The person signed in as `session` approves (or denies) the authorization request `query`.
    pub fn decide(&self, session: &str, query: &str, approve: bool) -> (u16, Value) {
        self.post_json(
            "/auth/authorize/decide",
            Some(session),
            &json!({"query": query, "approve": approve}),
        )
    }

    /// Approves the authorization request `query` as `session`; returns the code sent back.
    pub fn approve(&self, session: &str, query: &str) -> String {
        let (st, b) = self.decide(session, query, true);
        assert_eq!(st, 200, "{b}");
        url_param(redirect_of(&b), "code").expect("a code")
    }

    /// Exchanges an authorization code of `client` with the PKCE `verifier`.
    pub fn exchange_code(&self, client: &str, code: &str, verifier: &str) -> (u16, Value) {
        self.post_form(
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("client_id", client),
                ("code_verifier", verifier),
            ],
        )
    }

    /// Exchanges `refresh_token` of `client` for new tokens.
    pub fn refresh(&self, client: &str, refresh_token: &str) -> (u16, Value) {
        self.post_form(
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", client),
            ],
        )
    }

    /// Revokes `token` of `client`.
    pub fn revoke(&self, client: &str, token: &str) -> (u16, Value) {
        self.post_form("/auth/revoke", &[("token", token), ("client_id", client)])
    }
}
