//! Recovery codes: single-use second factors for a user who lost their authenticator. Each is
//! 80 random bits written as four groups of four Crockford base32 characters
//! (`7KQ2-M9XD-…`), shown once, and stored only as a domain-separated SHA-256 (80 bits of
//! entropy make a slow hash unnecessary).

use zeroize::Zeroizing;

use crate::AuthError;

/// Codes issued per enrollment.
pub const CODES_PER_USER: usize = 10;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const GROUPS: usize = 4;
const GROUP_LEN: usize = 4;

/// Fresh recovery codes, as shown to the user once.
///
/// # Errors
/// [`AuthError::Random`].
pub fn generate() -> Result<Vec<Zeroizing<String>>, AuthError> {
    (0..CODES_PER_USER)
        .map(|_| {
            let mut raw = Zeroizing::new([0u8; GROUPS * GROUP_LEN]);
            medvault_crypto::random_fill(raw.as_mut()).map_err(|_| AuthError::Random)?;
            let mut code = Zeroizing::new(String::with_capacity(GROUPS * (GROUP_LEN + 1)));
            for (i, b) in raw.iter().enumerate() {
                if i > 0 && i % GROUP_LEN == 0 {
                    code.push('-');
                }
                code.push(char::from(ALPHABET[usize::from(b & 31)]));
            }
            Ok(code)
        })
        .collect()
}

/// The stored form of a code as typed: case, dashes and spaces ignored, and the characters
/// Crockford base32 reads as others (O→0, I/L→1) mapped.
pub fn hash(code: &str) -> [u8; 32] {
    let mut norm = Zeroizing::new(Vec::with_capacity(32));
    norm.extend_from_slice(b"medvault-recovery-v1\0");
    for c in code.chars().filter(|c| !matches!(c, '-' | ' ')) {
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        };
        let mut buf = [0u8; 4];
        norm.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    medvault_crypto::sha256(&norm)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_are_distinct_well_formed_and_hash_forgivingly() {
        let codes = generate().unwrap();
        assert_eq!(codes.len(), CODES_PER_USER);
        let hashes: std::collections::HashSet<_> = codes.iter().map(|c| hash(c)).collect();
        assert_eq!(hashes.len(), CODES_PER_USER);
        let c = codes[0].as_str();
        assert_eq!(c.len(), 19);
        assert_eq!(c.matches('-').count(), 3);
        assert!(c.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
        // Typed in lower case without dashes, it is the same code.
        let typed: String = c.to_lowercase().replace('-', " ");
        assert_eq!(hash(&typed), hash(c));
        assert_ne!(hash("0000-0000-0000-0000"), hash("0000-0000-0000-0001"));
        assert_eq!(hash("OOOO-IIII-LLLL-0000"), hash("0000-1111-1111-0000"));
    }
}
