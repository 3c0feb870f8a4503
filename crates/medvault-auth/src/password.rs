//! Passwords per NIST SP 800-63B (§3.1.1): a minimum length and no composition rules, Unicode
//! normalised (NFKC) before hashing, checked against a blocklist of common passwords, the
//! user's own name and repetitive or sequential strings. Stored as Argon2id PHC strings at the
//! OWASP-recommended cost (m = 19 MiB, t = 2, p = 1).

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use unicode_normalization::UnicodeNormalization as _;
use zeroize::Zeroizing;

use crate::AuthError;

/// Fewest characters (after normalisation) a password may have. 800-63B asks at least 8 where
/// a second factor is required, as it is for every medvault session that reaches data.
pub const MIN_CHARS: usize = 12;
/// Most characters accepted (800-63B: allow at least 64).
pub const MAX_CHARS: usize = 256;
/// Argon2id memory cost in KiB (OWASP: 19 MiB with t = 2, p = 1).
pub const ARGON2_M_KIB: u32 = 19 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;

static BLOCKLIST: &str = include_str!("../data/common-passwords.txt");

fn blocklist() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| BLOCKLIST.split_whitespace().collect())
}

/// A password in memory: zeroized on drop, never printed.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl Password {
    /// Takes a password as typed; it is NFKC-normalised (800-63B §3.1.1.2).
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.nfkc().collect()))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Checks a new password against the policy.
///
/// # Errors
/// [`AuthError::PasswordPolicy`] naming the rule broken.
pub fn check_policy(password: &Password, username: &str) -> Result<(), AuthError> {
    let text = password.0.as_str();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() < MIN_CHARS {
        return Err(AuthError::PasswordPolicy("use at least 12 characters"));
    }
    if chars.len() > MAX_CHARS {
        return Err(AuthError::PasswordPolicy("use at most 256 characters"));
    }
    let lower = Zeroizing::new(text.to_lowercase());
    if blocklist().contains(lower.as_str()) {
        return Err(AuthError::PasswordPolicy(
            "this password is among the most commonly used ones",
        ));
    }
    let name = username.to_lowercase();
    if name.chars().count() >= 3 && lower.contains(&name) {
        return Err(AuthError::PasswordPolicy(
            "the password must not contain the user name",
        ));
    }
    if lower.contains("medvault") {
        return Err(AuthError::PasswordPolicy(
            "the password must not contain the name of this service",
        ));
    }
    let steps: Vec<i64> = chars
        .windows(2)
        .map(|w| i64::from(u32::from(w[1])) - i64::from(u32::from(w[0])))
        .collect();
    if steps.iter().all(|d| *d == steps[0]) && steps[0].abs() <= 1 {
        return Err(AuthError::PasswordPolicy(
            "the password must not be one repeated or sequential run of characters",
        ));
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    // The parameters are constants within Argon2's limits, so `new` cannot fail; fall back to
    // the crate default (which is stronger than OWASP's floor) rather than panic.
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into an Argon2id PHC string with a random 16-byte salt. Slow by design
/// (tens of milliseconds): call it off async threads.
///
/// # Errors
/// [`AuthError::Random`], [`AuthError::Hashing`].
pub fn hash_password(password: &Password) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    medvault_crypto::random_fill(&mut salt).map_err(|_| AuthError::Random)?;
    argon2()
        .hash_password_with_salt(password.bytes(), &salt)
        .map(|h: PasswordHash| h.to_string())
        .map_err(|_| AuthError::Hashing)
}

/// Checks a password against a stored PHC string (whatever Argon2 parameters it names).
///
/// # Errors
/// [`AuthError::BadHash`] if the stored string is malformed.
pub fn verify_password(phc: &str, password: &Password) -> Result<bool, AuthError> {
    PasswordHash::new(phc).map_err(|_| AuthError::BadHash)?;
    Ok(argon2().verify_password(password.bytes(), phc).is_ok())
}

/// Spends the same time as [`verify_password`] against a hash no password matches, so that a
/// login for an unknown or disabled user takes as long as one for a real user.
pub fn dummy_verify(password: &Password) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| {
        let mut random = Zeroizing::new([0u8; 32]);
        medvault_crypto::random_fill(random.as_mut()).ok()?;
        hash_password(&Password::new(&base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            random.as_ref(),
        )))
        .ok()
    });
    if let Some(phc) = phc {
        let _ = verify_password(phc, password);
    }
}

/// True if a stored hash uses weaker parameters than today's, so it should be rehashed at the
/// next successful login.
pub fn needs_rehash(phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return true;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return true;
    };
    hash.algorithm.as_str() != "argon2id"
        || params.m_cost() < ARGON2_M_KIB
        || params.t_cost() < ARGON2_T
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn policy_follows_800_63b() {
        let ok = |p: &str| check_policy(&Password::new(p), "alice.smith");
        assert!(ok("correct horse battery staple").is_ok());
        assert!(ok("Tr0ub4dor&3-but-longer").is_ok());
        // No composition rules: all lower case letters is fine when long and uncommon.
        assert!(ok("plumbingwatermelonsky").is_ok());
        for bad in [
            "short",
            "password1234",  // in the blocklist
            "qwertyuiop123", // in the blocklist
            "alice.smith-2026",
            "my medvault pass",
            "aaaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
            "zyxwvutsrqponm",
        ] {
            assert!(ok(bad).is_err(), "{bad} must be refused");
        }
        assert!(ok(&"x".repeat(300)).is_err());
        // The whole list is loaded (one password per line in the shipped file).
        assert_eq!(blocklist().len(), BLOCKLIST_ENTRIES);
    }

    const BLOCKLIST_ENTRIES: usize = 19_640;

    #[test]
    fn unicode_is_normalised_before_hashing() {
        // "é" precomposed and decomposed are the same password.
        let a = Password::new("caf\u{e9} au lait on sunday");
        let b = Password::new("cafe\u{301} au lait on sunday");
        let phc = hash_password(&a).unwrap();
        assert!(verify_password(&phc, &b).unwrap());
    }

    #[test]
    fn hashes_are_argon2id_at_the_owasp_cost_and_verify() {
        let p = Password::new("a long and unusual passphrase");
        let phc = hash_password(&p).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, &p).unwrap());
        assert!(!verify_password(&phc, &Password::new("a long and unusual passphrasf")).unwrap());
        assert!(!needs_rehash(&phc));
        assert!(needs_rehash(
            "$argon2id$v=19$m=4096,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
        ));
        assert_eq!(verify_password("not a phc", &p), Err(AuthError::BadHash));
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        dummy_verify(&p);
    }
}
