//! medvault's key hierarchy, envelope encryption and blind indexes.
//!
//! **Invariant:** this is the only crate that touches raw key bytes. Every secret is a
//! zeroize-on-drop type with a redacted `Debug`; primitives come from aws-lc-rs (the provider
//! rustls uses), never from hand-rolled code.
//!
//! The hierarchy (see `ARCHITECTURE.md`, "Keys"):
//!
//! ```text
//! root key (key file, sealed with Argon2id(passphrase))
//!   └─ KEK v1, v2, … (random, wrapped by the root key, stored in the database)
//!        └─ data keys (random, one per patient compartment, one for the tenant, one for
//!           blind indexes; wrapped by the newest KEK, rewrapped on rotation)
//!             └─ resource versions (AES-256-GCM, AAD binds tenant/type/id/version/key)
//! ```

mod blind;
mod bundle;
mod envelope;
mod hybrid;
mod keyfile;
mod secret;
mod sign;

pub use blind::{BLIND_LEN, BlindIndexer, BlindValue, ParamKey};
pub use bundle::{
    BundleError, BundleParts, MAX_BUNDLE_HEADER, VerifiedBundle, bundle_parts, open_bundle,
    open_verified, seal_bundle, verify_bundle,
};
pub use envelope::{DataKey, Kek, RecordAad, Sealed, WrappedKey};
pub use hybrid::{
    HYBRID_SEED_LEN, HybridPublicKey, HybridSignature, HybridSigningKey, ML_DSA_44_PUBLIC_KEY_LEN,
    ML_DSA_44_SIGNATURE_LEN, ML_DSA_65_PUBLIC_KEY_LEN, ML_DSA_65_SIGNATURE_LEN, MlDsa44Key,
    X_WING_PUBLIC_KEY_LEN, XWingKey, hybrid_verify, ml_dsa_44_verify, ml_dsa_65_verify,
};
pub use keyfile::{KeyFileKind, Passphrase, RootKey};
pub use secret::SecretBytes;
pub use sign::{ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, SigningKey, ed25519_verify};

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

/// SHA-256 of `data`, for hashing bearer tokens before they are stored or looked up.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 over data that arrives in pieces (a backup file as it is written or read).
pub struct Sha256Stream(aws_lc_rs::digest::Context);

impl std::fmt::Debug for Sha256Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256Stream")
    }
}

impl Default for Sha256Stream {
    fn default() -> Self {
        Self(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
}

impl Sha256Stream {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added so far.
    #[must_use]
    pub fn finish(self) -> [u8; 32] {
        let d = self.0.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// HMAC-SHA256 over data that arrives in pieces, under a key that never leaves this crate
/// (see [`RootKey::backup_mac`]).
pub struct MacStream(pub(crate) aws_lc_rs::hmac::Context);

impl std::fmt::Debug for MacStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacStream([REDACTED])")
    }
}

impl MacStream {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The tag over everything added.
    #[must_use]
    pub fn finish(self) -> [u8; 32] {
        let tag = self.0.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// True if `tag` is the tag over everything added (compared in constant time).
    #[must_use]
    pub fn verify(self, tag: &[u8]) -> bool {
        let mine = self.0.sign();
        aws_lc_rs::constant_time::verify_slices_are_equal(mine.as_ref(), tag).is_ok()
    }
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Errors
/// [`CryptoError::Rng`] if the generator fails.
pub fn random_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Rng)
}
