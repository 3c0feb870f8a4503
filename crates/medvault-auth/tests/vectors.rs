//! RFC 6238 Appendix B (TOTP) and RFC 4226 Appendix D (HOTP) known answers from
//! `tests/vectors/totp/` (copied from their sources: see its README). HOTP with counter `c` is TOTP with a 1-second step at time `c`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use medvault_auth::totp::code_at;
use serde_json::Value;

#[test]
fn rfc6238_and_rfc4226_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/totp/rfc6238-rfc4226.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut totp_cases = 0;
    for v in doc["totp"].as_array().unwrap() {
        assert_eq!(v["t0"], 0);
        let got = code_at(
            v["algorithm"].as_str().unwrap(),
            u8::try_from(v["digits"].as_u64().unwrap()).unwrap(),
            v["step_seconds"].as_u64().unwrap(),
            v["secret_ascii"].as_str().unwrap().as_bytes(),
            v["unix_time"].as_u64().unwrap(),
        )
        .unwrap();
        assert_eq!(got, v["totp"].as_str().unwrap(), "{v}");
        totp_cases += 1;
    }
    let mut hotp_cases = 0;
    for v in doc["hotp"].as_array().unwrap() {
        let got = code_at(
            "SHA1",
            u8::try_from(v["digits"].as_u64().unwrap()).unwrap(),
            1,
            v["secret_ascii"].as_str().unwrap().as_bytes(),
            v["counter"].as_u64().unwrap(),
        )
        .unwrap();
        assert_eq!(got, v["hotp"].as_str().unwrap(), "{v}");
        hotp_cases += 1;
    }
    assert_eq!((totp_cases, hotp_cases), (18, 10));
    assert!(code_at("MD5", 6, 30, b"12345678901234567890", 59).is_err());
}
