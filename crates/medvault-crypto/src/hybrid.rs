//! Hybrid signatures: Ed25519 and ML-DSA-65 (FIPS 204) together, both through aws-lc-rs. A
//! hybrid signature verifies only if both halves do, so it stands as long as either algorithm
//! does (Ed25519 against classical attacks today, ML-DSA-65 against a quantum computer later).
//!
//! Both halves sign the same message, prefixed with a label (`medvault-hybrid-sig-v1`, a zero
//! byte): neither half is a valid signature of the bare message, so one half cannot be cut out
//! of a hybrid signature and passed off alone where a single-algorithm signature is accepted.
//! ML-DSA is used with an empty context string.

use std::fmt;

use aws_lc_rs::signature::{
    ED25519, Ed25519KeyPair, KeyPair as _, ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair,
    UnparsedPublicKey,
};

use crate::CryptoError;
use crate::sign::ED25519_PUBLIC_KEY_LEN;

/// Length of an ML-DSA-65 public key.
pub const ML_DSA_65_PUBLIC_KEY_LEN: usize = 1952;
/// Length of an ML-DSA-65 signature.
pub const ML_DSA_65_SIGNATURE_LEN: usize = 3309;
/// Length of each half's seed (Ed25519: RFC 8032 seed; ML-DSA: FIPS 204 ξ).
pub const HYBRID_SEED_LEN: usize = 32;

const LABEL: &[u8] = b"medvault-hybrid-sig-v1\0";

fn labelled(msg: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL.len() + msg.len());
    m.extend_from_slice(LABEL);
    m.extend_from_slice(msg);
    m
}

/// The public half of a hybrid signing identity.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridPublicKey {
    /// Ed25519 public key.
    pub ed25519: [u8; ED25519_PUBLIC_KEY_LEN],
    /// ML-DSA-65 public key (FIPS 204 encoding).
    pub ml_dsa_65: Vec<u8>,
}

impl fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HybridPublicKey(ed25519 {}, ML-DSA-65 {} bytes)",
            hex_prefix(&self.ed25519),
            self.ml_dsa_65.len()
        )
    }
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(4).map(|x| format!("{x:02x}")).collect()
}

/// A hybrid signature: both halves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridSignature {
    /// Ed25519 signature (64 bytes).
    pub ed25519: Vec<u8>,
    /// ML-DSA-65 signature (3309 bytes).
    pub ml_dsa_65: Vec<u8>,
}

/// A hybrid signing identity (Ed25519 + ML-DSA-65). `Debug` shows only the public key.
pub struct HybridSigningKey {
    ed: Ed25519KeyPair,
    ml: PqdsaKeyPair,
    public: HybridPublicKey,
}

impl fmt::Debug for HybridSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HybridSigningKey({:?}, [REDACTED])", self.public)
    }
}

impl HybridSigningKey {
    /// The key pair of two 32-byte seeds, which is how it is stored (sealed, in the key
    /// hierarchy); the same seeds always give the same keys.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the library rejects a seed (it accepts any 32 bytes).
    pub fn from_seeds(
        ed_seed: &[u8; HYBRID_SEED_LEN],
        ml_seed: &[u8; HYBRID_SEED_LEN],
    ) -> Result<Self, CryptoError> {
        let ed = Ed25519KeyPair::from_seed_unchecked(ed_seed).map_err(|_| CryptoError::Opaque)?;
        let ml = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, ml_seed)
            .map_err(|_| CryptoError::Opaque)?;
        let mut ed_pub = [0u8; ED25519_PUBLIC_KEY_LEN];
        ed_pub.copy_from_slice(ed.public_key().as_ref());
        let public = HybridPublicKey {
            ed25519: ed_pub,
            ml_dsa_65: ml.public_key().as_ref().to_vec(),
        };
        Ok(Self { ed, ml, public })
    }

    /// The key pair whose seeds are two data keys' secrets (each data key used for nothing
    /// else), so it lives in the key hierarchy: wrapped by the KEK, rewrapped on rotation.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the library rejects a seed.
    pub fn from_data_keys(ed: &crate::DataKey, ml: &crate::DataKey) -> Result<Self, CryptoError> {
        Self::from_seeds(
            ed.secret().dangerously_expose(),
            ml.secret().dangerously_expose(),
        )
    }

    /// The public key.
    pub fn public_key(&self) -> &HybridPublicKey {
        &self.public
    }

    /// Signs `msg` with both keys.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if ML-DSA signing fails (it does not for a valid key).
    pub fn sign(&self, msg: &[u8]) -> Result<HybridSignature, CryptoError> {
        let m = labelled(msg);
        let ed25519 = self.ed.sign(&m).as_ref().to_vec();
        let mut ml_dsa_65 = vec![0u8; ML_DSA_65_SIGNATURE_LEN];
        let n = self
            .ml
            .sign(&m, &mut ml_dsa_65)
            .map_err(|_| CryptoError::Opaque)?;
        ml_dsa_65.truncate(n);
        Ok(HybridSignature { ed25519, ml_dsa_65 })
    }

    /// The Ed25519 half as PKCS#8 (RFC 8410) DER, for the node's mutual-TLS certificate: peers
    /// pin this key from the node document, and TLS 1.3 signs its own context string
    /// (64 spaces, a TLS label), which no [`Self::sign`] message (label-prefixed) can equal.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the library cannot encode the key.
    pub(crate) fn ed25519_pkcs8(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
        self.ed
            .to_pkcs8v1()
            .map(|d| zeroize::Zeroizing::new(d.as_ref().to_vec()))
            .map_err(|_| CryptoError::Opaque)
    }
}

/// True only if both halves of `sig` verify for `msg` under `key`.
pub fn hybrid_verify(key: &HybridPublicKey, msg: &[u8], sig: &HybridSignature) -> bool {
    if sig.ed25519.len() != 64 {
        return false;
    }
    let m = labelled(msg);
    let ed_ok = UnparsedPublicKey::new(&ED25519, &key.ed25519)
        .verify(&m, &sig.ed25519)
        .is_ok();
    let ml_ok = ml_dsa_65_verify(&key.ml_dsa_65, &m, &sig.ml_dsa_65);
    ed_ok && ml_ok
}

/// Verifies a bare ML-DSA-65 signature (empty context), e.g. another party's. Only the raw
/// FIPS 204 key encoding is accepted (the library would also take SPKI DER: one key, one form).
pub fn ml_dsa_65_verify(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    if public_key.len() != ML_DSA_65_PUBLIC_KEY_LEN || sig.len() != ML_DSA_65_SIGNATURE_LEN {
        return false;
    }
    UnparsedPublicKey::new(&ML_DSA_65, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// Length of an X-Wing public (encapsulation) key.
pub const X_WING_PUBLIC_KEY_LEN: usize = x_wing::ENCAPSULATION_KEY_SIZE;

/// A node's X-Wing (X25519 + ML-KEM-768) key pair, for bundles sealed to it. `Debug` shows only
/// the public key's length.
pub struct XWingKey(pub(crate) x_wing::DecapsulationKey);

impl fmt::Debug for XWingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XWingKey([REDACTED])")
    }
}

impl XWingKey {
    /// The key pair whose 32-byte seed is a data key's secret (used for nothing else).
    pub fn from_data_key(seed: &crate::DataKey) -> Self {
        Self(x_wing::DecapsulationKey::from(
            *seed.secret().dangerously_expose(),
        ))
    }

    /// The 32-byte seed (the X-Wing private key), for HPKE inside this crate.
    pub(crate) fn seed(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The public (encapsulation) key, 1216 bytes.
    pub fn public_key(&self) -> Vec<u8> {
        use x_wing::{Decapsulator as _, KeyExport as _};
        self.0.encapsulation_key().to_bytes().to_vec()
    }
}

/// Length of an ML-DSA-44 public key.
pub const ML_DSA_44_PUBLIC_KEY_LEN: usize = 1312;
/// Length of an ML-DSA-44 signature.
pub const ML_DSA_44_SIGNATURE_LEN: usize = 2420;

/// An ML-DSA-44 signing key (FIPS 204, empty context), for C2SP `tlog-cosignature` subtree
/// cosignatures. `Debug` shows only its size.
pub struct MlDsa44Key(PqdsaKeyPair);

impl fmt::Debug for MlDsa44Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MlDsa44Key([REDACTED])")
    }
}

impl MlDsa44Key {
    /// The key whose 32-byte seed (ξ) is a data key's secret (used for nothing else).
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the library rejects the seed.
    pub fn from_data_key(seed: &crate::DataKey) -> Result<Self, CryptoError> {
        PqdsaKeyPair::from_seed(
            &aws_lc_rs::signature::ML_DSA_44_SIGNING,
            seed.secret().dangerously_expose(),
        )
        .map(Self)
        .map_err(|_| CryptoError::Opaque)
    }

    /// The public key, 1312 bytes.
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    /// Signs `msg`.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if signing fails (it does not for a valid key).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut sig = vec![0u8; ML_DSA_44_SIGNATURE_LEN];
        let n = self
            .0
            .sign(msg, &mut sig)
            .map_err(|_| CryptoError::Opaque)?;
        sig.truncate(n);
        Ok(sig)
    }
}

/// Verifies an ML-DSA-44 signature (empty context; raw key encoding only).
pub fn ml_dsa_44_verify(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    if public_key.len() != ML_DSA_44_PUBLIC_KEY_LEN || sig.len() != ML_DSA_44_SIGNATURE_LEN {
        return false;
    }
    UnparsedPublicKey::new(&aws_lc_rs::signature::ML_DSA_44, public_key)
        .verify(msg, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> HybridSigningKey {
        HybridSigningKey::from_seeds(&[n; 32], &[n.wrapping_add(1); 32]).unwrap()
    }

    #[test]
    fn both_halves_are_required() {
        let k = key(1);
        let sig = k.sign(b"checkpoint").unwrap();
        assert_eq!(sig.ml_dsa_65.len(), ML_DSA_65_SIGNATURE_LEN);
        assert_eq!(k.public_key().ml_dsa_65.len(), ML_DSA_65_PUBLIC_KEY_LEN);
        assert!(hybrid_verify(k.public_key(), b"checkpoint", &sig));
        assert!(!hybrid_verify(k.public_key(), b"checkpoinT", &sig));
        // Either half from another key (or missing) fails the whole.
        let other = key(9).sign(b"checkpoint").unwrap();
        let mixed = HybridSignature {
            ed25519: sig.ed25519.clone(),
            ml_dsa_65: other.ml_dsa_65.clone(),
        };
        assert!(!hybrid_verify(k.public_key(), b"checkpoint", &mixed));
        let mixed = HybridSignature {
            ed25519: other.ed25519,
            ml_dsa_65: sig.ml_dsa_65.clone(),
        };
        assert!(!hybrid_verify(k.public_key(), b"checkpoint", &mixed));
        let half = HybridSignature {
            ed25519: sig.ed25519.clone(),
            ml_dsa_65: Vec::new(),
        };
        assert!(!hybrid_verify(k.public_key(), b"checkpoint", &half));
        // A half alone is no signature of the bare message.
        assert!(!crate::ed25519_verify(
            &k.public_key().ed25519,
            b"checkpoint",
            &sig.ed25519
        ));
        assert!(!ml_dsa_65_verify(
            &k.public_key().ml_dsa_65,
            b"checkpoint",
            &sig.ml_dsa_65
        ));
    }

    #[test]
    fn seeds_determine_the_keys_and_debug_hides_them() {
        assert_eq!(key(3).public_key(), key(3).public_key());
        assert_ne!(key(3).public_key(), key(4).public_key());
        let kem = XWingKey(x_wing::DecapsulationKey::from([5u8; 32]));
        assert_eq!(kem.public_key().len(), X_WING_PUBLIC_KEY_LEN);
        assert_eq!(format!("{kem:?}"), "XWingKey([REDACTED])");
        let shown = format!("{:?}", key(3));
        assert!(
            shown.contains("REDACTED") && shown.contains("ML-DSA-65"),
            "{shown}"
        );
    }
}
