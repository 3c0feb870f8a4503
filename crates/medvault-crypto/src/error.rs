//! The crypto layer's one error type.

/// Errors from the crypto layer.
///
/// Decryption failures are deliberately one opaque variant, so they cannot act as an oracle.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong associated data or tampered bytes.
    #[error("decryption failed")]
    Opaque,
    /// The operating system's random number generator failed.
    #[error("random number generator failure")]
    Rng,
    /// The key file is missing a field, has an unknown format or cannot be read.
    #[error("key file is malformed: {0}")]
    KeyFile(&'static str),
    /// The key file is sealed with a passphrase and none (or the wrong one) was given.
    #[error(
        "the key file is sealed with a passphrase: set MEDVAULT_PASSPHRASE to the passphrase it was created with"
    )]
    Passphrase,
    /// Reading or writing the key file failed.
    #[error("key file I/O: {0}")]
    Io(#[from] std::io::Error),
}
