//! Blind indexes: keyed HMACs of normalized search values (CipherSweet-style).
//!
//! One index key (a data key named `@index`) is expanded with HKDF-SHA256 into one HMAC key per
//! (resource type, search parameter), so equal values under different parameters are unlinkable.
//! Values are truncated to 128 bits: collisions are negligible, and every hit is re-checked
//! against the decrypted resource anyway.

use std::fmt;

use aws_lc_rs::{hkdf, hmac};

use crate::{CryptoError, DataKey};

/// Bytes kept of each HMAC-SHA256 output.
pub const BLIND_LEN: usize = 16;

/// A blind index value as stored in the database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlindValue(pub [u8; BLIND_LEN]);

impl fmt::Debug for BlindValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlindValue(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Derives per-parameter index keys from the node's index key.
pub struct BlindIndexer {
    prk: hkdf::Prk,
}

impl fmt::Debug for BlindIndexer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlindIndexer([REDACTED])")
    }
}

impl BlindIndexer {
    /// Builds the indexer from the `@index` data key.
    pub fn new(index_key: &DataKey) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"medvault-blind-index-v1");
        Self {
            prk: salt.extract(index_key.secret().dangerously_expose()),
        }
    }

    /// The HMAC key for one search parameter of one resource type.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if HKDF refuses the length (it cannot for 32 bytes).
    pub fn param_key(&self, resource_type: &str, param: &str) -> Result<ParamKey, CryptoError> {
        let info = format!("{resource_type}\u{0}{param}");
        let info_parts = [info.as_bytes()];
        let okm = self
            .prk
            .expand(&info_parts, hmac::HMAC_SHA256)
            .map_err(|_| CryptoError::Opaque)?;
        Ok(ParamKey(hmac::Key::from(okm)))
    }
}

/// The HMAC key of one search parameter.
pub struct ParamKey(hmac::Key);

impl fmt::Debug for ParamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ParamKey([REDACTED])")
    }
}

impl ParamKey {
    /// The blind value of an already-normalized input.
    pub fn blind(&self, input: &[u8]) -> BlindValue {
        let tag = hmac::sign(&self.0, input);
        let mut out = [0u8; BLIND_LEN];
        out.copy_from_slice(&tag.as_ref()[..BLIND_LEN]);
        BlindValue(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_parameter_keys_are_unlinkable_and_deterministic() {
        let k = DataKey::generate("@index".into(), 1).unwrap();
        let ix = BlindIndexer::new(&k);
        let a = ix.param_key("Patient", "family").unwrap();
        let b = ix.param_key("Patient", "given").unwrap();
        assert_eq!(
            a.blind(b"smith"),
            ix.param_key("Patient", "family").unwrap().blind(b"smith")
        );
        assert_ne!(a.blind(b"smith"), b.blind(b"smith"));
        assert_ne!(a.blind(b"smith"), a.blind(b"smyth"));
        let other = BlindIndexer::new(&DataKey::generate("@index".into(), 1).unwrap());
        assert_ne!(
            a.blind(b"smith"),
            other
                .param_key("Patient", "family")
                .unwrap()
                .blind(b"smith")
        );
    }
}
