//! TOTP second factors (RFC 6238 over RFC 4226 HOTP), computed by `totp-rs`.
//!
//! medvault issues SHA-1, 6-digit, 30-second TOTP (what every authenticator app supports), with
//! a 160-bit random secret, and accepts the current step and one step either side. A code is
//! accepted once: [`verify`] returns the step it matched, the caller stores it, and a later code
//! must match a newer step.

use totp_rs::{Algorithm, Builder, Totp};
use zeroize::Zeroizing;

use crate::AuthError;

/// Bytes of a new TOTP secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;
/// Seconds per step.
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: u8 = 6;
/// Steps accepted either side of the current one.
pub const SKEW: u64 = 1;

/// A TOTP shared secret: zeroized on drop, never printed.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A fresh random secret.
    ///
    /// # Errors
    /// [`AuthError::Random`].
    pub fn generate() -> Result<Self, AuthError> {
        let mut s = Zeroizing::new(vec![0u8; SECRET_LEN]);
        medvault_crypto::random_fill(&mut s).map_err(|_| AuthError::Random)?;
        Ok(Self(s))
    }

    /// A secret from its raw bytes (as stored, once unsealed).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// A secret from its base32 form (as in an `otpauth://` URI).
    ///
    /// # Errors
    /// [`AuthError::Totp`] if it is not base32.
    pub fn from_base32(text: &str) -> Result<Self, AuthError> {
        let s = totp_rs::Secret::try_from_base32(text)
            .map_err(|_| AuthError::Totp("the secret is not base32"))?;
        Ok(Self::from_bytes(s.as_ref()))
    }

    /// The raw bytes (to seal for storage).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A TOTP code generator with explicit parameters (also used for the RFC vectors).
fn totp(algorithm: Algorithm, digits: u8, step: u64, secret: &[u8]) -> Totp {
    // `build_noncompliant` skips totp-rs's 128-bit secret minimum, which the RFC 6238 vector
    // secrets meet anyway; medvault's own secrets are always 160 random bits.
    Builder::new()
        .with_algorithm(algorithm)
        .with_digits(digits)
        .with_skew(0)
        .with_step_duration(step)
        .with_secret(secret.to_vec())
        .with_issuer(Some("medvault"))
        .with_account_name("user")
        .build_noncompliant()
}

/// The code for `unix_time` with explicit parameters (RFC 6238 test vectors use 8 digits and
/// SHA-256/512 too).
///
/// # Errors
/// [`AuthError::Totp`] for an unknown algorithm name.
pub fn code_at(
    algorithm: &str,
    digits: u8,
    step: u64,
    secret: &[u8],
    unix_time: u64,
) -> Result<String, AuthError> {
    let algorithm = match algorithm {
        "SHA1" => Algorithm::SHA1,
        "SHA256" => Algorithm::SHA256,
        "SHA512" => Algorithm::SHA512,
        _ => return Err(AuthError::Totp("unknown algorithm")),
    };
    Ok(totp(algorithm, digits, step, secret)
        .generate(unix_time)
        .to_string())
}

/// Checks `code` at `unix_time` against the current step and [`SKEW`] steps either side, never
/// accepting a step at or before `last_used`. Returns the matched step. Comparison is constant
/// time per candidate.
pub fn verify(
    secret: &TotpSecret,
    code: &str,
    unix_time: u64,
    last_used: Option<u64>,
) -> Option<u64> {
    let code = code.trim();
    if code.len() != usize::from(DIGITS) || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(Algorithm::SHA1, DIGITS, STEP, secret.as_bytes());
    let now = unix_time / STEP;
    let mut matched = None;
    for step in now.saturating_sub(SKEW)..=now + SKEW {
        let expected = Zeroizing::new(t.generate(step * STEP).to_string());
        let same = expected
            .bytes()
            .zip(code.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same && last_used.is_none_or(|l| step > l) {
            matched = Some(step);
        }
    }
    matched
}

/// The `otpauth://totp/…` URI an authenticator app enrolls from (Key Uri Format).
///
/// # Errors
/// [`AuthError::Totp`] if the URI cannot be built.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> Result<String, AuthError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(0)
        .with_step_duration(STEP)
        .with_secret(secret.as_bytes().to_vec())
        .with_issuer(Some(issuer.replace(':', "")))
        .with_account_name(account.replace(':', ""))
        .build_noncompliant()
        .to_url()
        .map_err(|_| AuthError::Totp("the enrollment URI cannot be built"))
}

/// The secret in base32 (for manual entry into an authenticator app).
pub fn secret_base32(secret: &TotpSecret) -> String {
    totp_rs::Secret::from(secret.as_bytes()).to_base32()
}

/// A QR code of `uri` as an SVG image.
///
/// # Errors
/// [`AuthError::Totp`] if the URI is too long for a QR code.
pub fn qr_svg(uri: &str) -> Result<String, AuthError> {
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|_| AuthError::Totp("the enrollment URI does not fit a QR code"))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn codes_are_accepted_once_within_one_step_either_side() {
        let s = TotpSecret::from_bytes(b"12345678901234567890");
        let t = 1_111_111_109;
        let now = code_at("SHA1", 6, 30, s.as_bytes(), t).unwrap();
        let step = verify(&s, &now, t, None).expect("current code");
        assert_eq!(step, t / 30);
        assert_eq!(verify(&s, &now, t, Some(step)), None, "replay refused");
        let next = code_at("SHA1", 6, 30, s.as_bytes(), t + 30).unwrap();
        assert_eq!(
            verify(&s, &next, t, Some(step)),
            Some(step + 1),
            "clock skew +1"
        );
        let far = code_at("SHA1", 6, 30, s.as_bytes(), t + 90).unwrap();
        assert_eq!(verify(&s, &far, t, None), None, "three steps ahead");
        for bad in ["", "12345", "1234567", "abcdef", " 12 345"] {
            assert_eq!(verify(&s, bad, t, None), None, "{bad:?}");
        }
    }

    #[test]
    fn enrollment_uri_and_qr() {
        let s = TotpSecret::generate().unwrap();
        let uri = otpauth_uri(&s, "medvault", "alice").unwrap();
        assert!(uri.starts_with("otpauth://totp/medvault:alice?"), "{uri}");
        assert!(
            uri.contains(&format!("secret={}", secret_base32(&s))),
            "{uri}"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{svg}");
        assert_eq!(format!("{s:?}"), "TotpSecret(<redacted>)");
        let back = TotpSecret::from_base32(&secret_base32(&s)).unwrap();
        assert_eq!(back.as_bytes(), s.as_bytes());
        assert!(TotpSecret::from_base32("not base32!").is_err());
    }
}
