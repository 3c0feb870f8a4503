use std::fmt;

use zeroize::Zeroizing;

use crate::CryptoError;

/// 32 bytes of key material, zeroized on drop, never printed.
pub struct SecretBytes(Zeroizing<[u8; 32]>);

impl SecretBytes {
    /// Length of every symmetric key in medvault (AES-256, HMAC-SHA256).
    pub const LEN: usize = 32;

    /// Fresh random key material.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the generator fails.
    pub fn random() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        crate::random_fill(k.as_mut())?;
        Ok(Self(k))
    }

    /// Wraps bytes that just came out of a decryption.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] unless exactly 32 bytes are given.
    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        if bytes.len() != Self::LEN {
            return Err(CryptoError::Opaque);
        }
        k.copy_from_slice(bytes);
        Ok(Self(k))
    }

    /// The raw bytes. Named loudly: every call site is a place key material leaves its type.
    pub(crate) fn dangerously_expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = SecretBytes::from_slice(&[0x41; 32]).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("65") && !shown.contains("41") && shown.contains("REDACTED"));
    }
}
