//! Randomness from the operating system.

use crate::error::CryptoError;

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`CryptoError::Rng`] if the generator fails.
pub fn random_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Rng)
}
