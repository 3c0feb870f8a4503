//! Ed25519 signing keys for the ledger (checkpoints, witness cosignatures) and verification of
//! other parties' signatures.
//!
//! A signing key is derived from a [`DataKey`]'s 32 secret bytes used as the RFC 8032 seed, so it
//! lives in the same key hierarchy (wrapped by the KEK, rewrapped on rotation) as every other key.
//! A data key used as a seed is never used for anything else.

use std::fmt;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::{CryptoError, DataKey};

/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// An Ed25519 private key. Its `Debug` shows only the public key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl SigningKey {
    /// The signing key whose RFC 8032 seed is `seed_key`'s secret.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the library rejects the seed (it accepts any 32 bytes).
    pub fn from_data_key(seed_key: &DataKey) -> Result<Self, CryptoError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed_key.secret().dangerously_expose())
            .map_err(|_| CryptoError::Opaque)?;
        let mut public = [0u8; ED25519_PUBLIC_KEY_LEN];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(Self { pair, public })
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; ED25519_PUBLIC_KEY_LEN] {
        self.public
    }

    /// Signs `msg` (RFC 8032, pure Ed25519).
    pub fn sign(&self, msg: &[u8]) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey(public {}, [REDACTED])",
            hex_short(&self.public)
        )
    }
}

fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Checks an Ed25519 signature; any malformed key or signature is simply "not valid".
pub fn ed25519_verify(public_key: &[u8], msg: &[u8], signature: &[u8]) -> bool {
    public_key.len() == ED25519_PUBLIC_KEY_LEN
        && signature.len() == ED25519_SIGNATURE_LEN
        && UnparsedPublicKey::new(&ED25519, public_key)
            .verify(msg, signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_tamper() {
        let dk = DataKey::generate("@ledger".into(), 1).unwrap();
        let sk = SigningKey::from_data_key(&dk).unwrap();
        let sig = sk.sign(b"hello");
        assert!(ed25519_verify(&sk.public_key(), b"hello", &sig));
        assert!(!ed25519_verify(&sk.public_key(), b"hellO", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!ed25519_verify(&sk.public_key(), b"hello", &bad));
        assert!(!ed25519_verify(&sk.public_key()[..31], b"hello", &sig));
        // Same seed, same key: the signing key survives a restart.
        let again = SigningKey::from_data_key(&dk).unwrap();
        assert_eq!(again.public_key(), sk.public_key());
        assert!(format!("{sk:?}").contains("REDACTED"));
    }
}
