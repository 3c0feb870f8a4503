//! Untrusted identity and OAuth2 input: SMART scope strings, client JWK Sets, client assertion
//! JWTs (header parsing and the unverified issuer peek), WebAuthn ceremony answers from browsers
//! (registration and assertion credentials), TOTP codes and recovery codes must parse or fail
//! cleanly, never panic; what parses as scopes must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_auth::scopes::ScopeSet;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = ScopeSet::parse(text) {
        let again = ScopeSet::parse(&set.to_string()).expect("rendered scopes parse");
        assert_eq!(again, set);
    }
    let _ = medvault_node::identity::oauth::clients::check_jwks(text);
    let _ = medvault_node::identity::oauth::backend::peek_assertion(text);
    let secret = medvault_auth::totp::TotpSecret::from_bytes(b"12345678901234567890");
    let _ = medvault_auth::totp::verify(&secret, text, 1_111_111_109, None);
    let _ = medvault_auth::recovery::hash(text);
    let _ = medvault_auth::totp::TotpSecret::from_base32(text);
    let _ = serde_json::from_str::<webauthn_rs::prelude::PublicKeyCredential>(text);
    let _ = serde_json::from_str::<webauthn_rs::prelude::RegisterPublicKeyCredential>(text);
});
