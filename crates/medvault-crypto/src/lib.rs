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
mod digest;
mod envelope;
mod error;
mod hybrid;
mod keyfile;
mod random;
mod secret;
mod sign;
mod x509;

pub use blind::{BLIND_LEN, BlindIndexer, BlindValue, ParamKey};
pub use bundle::{
    BundleError, BundleParts, MAX_BUNDLE_HEADER, VerifiedBundle, bundle_parts, open_bundle,
    open_verified, seal_bundle, verify_bundle,
};
pub use digest::{MacStream, Sha256Stream, hmac_sha256, sha256};
pub use envelope::{DataKey, Kek, RecordAad, Sealed, WrappedKey};
pub use error::CryptoError;
pub use hybrid::{
    HYBRID_SEED_LEN, HybridPublicKey, HybridSignature, HybridSigningKey, ML_DSA_44_PUBLIC_KEY_LEN,
    ML_DSA_44_SIGNATURE_LEN, ML_DSA_65_PUBLIC_KEY_LEN, ML_DSA_65_SIGNATURE_LEN, MlDsa44Key,
    X_WING_PUBLIC_KEY_LEN, XWingKey, hybrid_verify, ml_dsa_44_verify, ml_dsa_65_verify,
};
pub use keyfile::{KeyFileKind, Passphrase, RootKey};
pub use random::random_fill;
pub use secret::SecretBytes;
pub use sign::{ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, SigningKey, ed25519_verify};
pub use x509::{SelfSigned, dev_tls_certificate};
