//! Envelope encryption: KEKs wrap data keys, data keys seal resource versions.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::{CryptoError, SecretBytes};

/// Format byte at the front of every sealed record; bump it if the layout ever changes.
const SEALED_FORMAT_V1: u8 = 1;

/// An AES-256-GCM key with its domain label, used for every wrap and seal.
struct AeadKey(LessSafeKey);

impl AeadKey {
    fn new(secret: &SecretBytes) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, secret.dangerously_expose())
            .map_err(|_| CryptoError::Opaque)?;
        Ok(Self(LessSafeKey::new(unbound)))
    }

    /// Returns `nonce || ciphertext || tag` with a fresh random 96-bit nonce.
    fn seal(&self, aad: &[u8], plaintext: &[u8], prefix: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::random_fill(&mut nonce)?;
        let mut out = Vec::with_capacity(prefix.len() + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(prefix);
        out.extend_from_slice(&nonce);
        let body_start = out.len();
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(body_start);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CryptoError::Opaque)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens `nonce || ciphertext || tag`; the tag is checked before any plaintext is returned.
    fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Opaque);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Opaque)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| CryptoError::Opaque)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Builds associated data as length-prefixed fields after a domain label, so no two distinct
/// field lists can produce the same bytes.
fn aad(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    for f in std::iter::once(label.as_bytes()).chain(fields.iter().copied()) {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// A ciphertext type as the database holds it: `from_stored` (documented by `$when_read`),
/// `as_bytes`, and a `Debug` that shows only the length.
macro_rules! stored_ciphertext {
    ($(#[$doc:meta])* $name:ident, $when_read:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Vec<u8>);

        impl $name {
            #[doc = $when_read]
            pub fn from_stored(bytes: Vec<u8>) -> Self {
                Self(bytes)
            }

            /// The bytes to store.
            pub fn as_bytes(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({} bytes)"), self.0.len())
            }
        }
    };
}

stored_ciphertext!(
    /// Key material wrapped (encrypted) by a KEK or by the root key, as stored in the database.
    WrappedKey,
    "Wraps bytes read back from storage; they are checked when unwrapped."
);

/// A versioned key-encryption key. KEKs only ever wrap data keys.
pub struct Kek {
    version: u32,
    key: AeadKey,
    secret: SecretBytes,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek(v{}, [REDACTED])", self.version)
    }
}

impl Kek {
    /// A fresh random KEK with this version number.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the generator fails.
    pub fn generate(version: u32) -> Result<Self, CryptoError> {
        Self::from_secret(version, SecretBytes::random()?)
    }

    pub(crate) fn from_secret(version: u32, secret: SecretBytes) -> Result<Self, CryptoError> {
        Ok(Self {
            version,
            key: AeadKey::new(&secret)?,
            secret,
        })
    }

    pub(crate) fn secret(&self) -> &SecretBytes {
        &self.secret
    }

    /// The version number, recorded beside every data key it wraps.
    pub fn version(&self) -> u32 {
        self.version
    }

    fn dek_aad(&self, tenant: &str, name: &str, dek_version: u32) -> Vec<u8> {
        aad(
            "medvault-dek-v1",
            &[
                tenant.as_bytes(),
                name.as_bytes(),
                &dek_version.to_be_bytes(),
                &self.version.to_be_bytes(),
            ],
        )
    }

    /// Wraps a data key, binding it to its tenant, name (e.g. `Patient/123`) and version.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if no nonce could be drawn.
    pub fn wrap(&self, tenant: &str, dek: &DataKey) -> Result<WrappedKey, CryptoError> {
        let aad = self.dek_aad(tenant, &dek.name, dek.version);
        self.key
            .seal(&aad, dek.secret.dangerously_expose(), &[])
            .map(WrappedKey)
    }

    /// Unwraps a data key wrapped by [`Self::wrap`] under this KEK.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the bytes were not wrapped by this KEK for this name/version.
    pub fn unwrap(
        &self,
        tenant: &str,
        name: &str,
        dek_version: u32,
        wrapped: &WrappedKey,
    ) -> Result<DataKey, CryptoError> {
        let aad = self.dek_aad(tenant, name, dek_version);
        let raw = self.key.open(&aad, &wrapped.0)?;
        let secret = SecretBytes::from_slice(&raw)?;
        DataKey::from_secret(name.to_owned(), dek_version, secret)
    }
}

/// A data-encryption key for one compartment (`Patient/<id>`, `@tenant`, `@index`).
pub struct DataKey {
    name: String,
    version: u32,
    key: AeadKey,
    secret: SecretBytes,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey({} v{}, [REDACTED])", self.name, self.version)
    }
}

/// The identity of one resource version, bound into its ciphertext as associated data: a sealed
/// record copied to another row, tenant, version or key fails to open.
#[derive(Debug, Clone, Copy)]
pub struct RecordAad<'a> {
    /// Tenant the node serves.
    pub tenant: &'a str,
    /// FHIR resource type.
    pub resource_type: &'a str,
    /// FHIR logical id.
    pub id: &'a str,
    /// Version number.
    pub version: u64,
}

impl DataKey {
    /// A fresh random data key.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if the generator fails.
    pub fn generate(name: String, version: u32) -> Result<Self, CryptoError> {
        Self::from_secret(name, version, SecretBytes::random()?)
    }

    fn from_secret(name: String, version: u32, secret: SecretBytes) -> Result<Self, CryptoError> {
        Ok(Self {
            key: AeadKey::new(&secret)?,
            name,
            version,
            secret,
        })
    }

    /// The compartment name this key belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's own version (bound into every record it seals).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn secret(&self) -> &SecretBytes {
        &self.secret
    }

    fn record_aad(&self, id: &RecordAad<'_>) -> Vec<u8> {
        aad(
            "medvault-record-v1",
            &[
                id.tenant.as_bytes(),
                id.resource_type.as_bytes(),
                id.id.as_bytes(),
                &id.version.to_be_bytes(),
                self.name.as_bytes(),
                &self.version.to_be_bytes(),
            ],
        )
    }

    /// Seals one resource version.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if no nonce could be drawn.
    pub fn seal(&self, id: &RecordAad<'_>, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        self.key
            .seal(&self.record_aad(id), plaintext, &[SEALED_FORMAT_V1])
            .map(Sealed)
    }

    /// Opens a resource version sealed by [`Self::seal`] with the same identity.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] on any mismatch or tampering.
    pub fn open(
        &self,
        id: &RecordAad<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match sealed.0.split_first() {
            Some((&SEALED_FORMAT_V1, rest)) => self.key.open(&self.record_aad(id), rest),
            _ => Err(CryptoError::Opaque),
        }
    }
}

impl DataKey {
    /// Seals a detail record that is not a resource version (e.g. a ledger entry's body), bound to
    /// `context` (a domain label) and `binding` (the fields that name its place, e.g. a leaf
    /// index), so it cannot be moved to another place and still open.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if no nonce could be drawn.
    pub fn seal_bound(
        &self,
        context: &str,
        binding: &[&[u8]],
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        self.key
            .seal(
                &self.bound_aad(context, binding),
                plaintext,
                &[SEALED_FORMAT_V1],
            )
            .map(Sealed)
    }

    /// Opens what [`Self::seal_bound`] sealed with the same context and binding.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] on any mismatch or tampering.
    pub fn open_bound(
        &self,
        context: &str,
        binding: &[&[u8]],
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match sealed.0.split_first() {
            Some((&SEALED_FORMAT_V1, rest)) => {
                self.key.open(&self.bound_aad(context, binding), rest)
            }
            _ => Err(CryptoError::Opaque),
        }
    }

    fn bound_aad(&self, context: &str, binding: &[&[u8]]) -> Vec<u8> {
        let version = self.version.to_be_bytes();
        let mut fields: Vec<&[u8]> = vec![context.as_bytes(), self.name.as_bytes(), &version];
        fields.extend_from_slice(binding);
        aad("medvault-bound-v1", &fields)
    }
}

stored_ciphertext!(
    /// An AEAD-sealed resource version. The store accepts only this type for record bodies, so
    /// plaintext cannot reach SQL.
    Sealed,
    "Wraps bytes read back from storage; they are authenticated when opened."
);

impl Sealed {
    /// True when the bytes have a sealed record's shape: the format byte, a nonce and a tag at
    /// least. (Whether they authenticate is only known by opening them; plaintext JSON written
    /// past the node, starting `{`, never has this shape.)
    pub fn has_envelope_shape(&self) -> bool {
        self.0.len() >= 1 + NONCE_LEN + 16 && self.0.first() == Some(&SEALED_FORMAT_V1)
    }
}

pub(crate) fn wrap_with_root(
    root: &SecretBytes,
    tenant: &str,
    kek: &Kek,
) -> Result<WrappedKey, CryptoError> {
    let key = AeadKey::new(root)?;
    let aad = aad(
        "medvault-kek-v1",
        &[tenant.as_bytes(), &kek.version.to_be_bytes()],
    );
    key.seal(&aad, kek.secret().dangerously_expose(), &[])
        .map(WrappedKey)
}

pub(crate) fn unwrap_with_root(
    root: &SecretBytes,
    tenant: &str,
    version: u32,
    wrapped: &WrappedKey,
) -> Result<Kek, CryptoError> {
    let key = AeadKey::new(root)?;
    let aad = aad(
        "medvault-kek-v1",
        &[tenant.as_bytes(), &version.to_be_bytes()],
    );
    let raw = key.open(&aad, &wrapped.0)?;
    Kek::from_secret(version, SecretBytes::from_slice(&raw)?)
}

pub(crate) fn seal_raw(
    key: &SecretBytes,
    label: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    AeadKey::new(key)?.seal(&aad(label, &[]), plaintext, &[])
}

pub(crate) fn open_raw(
    key: &SecretBytes,
    label: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    AeadKey::new(key)?.open(&aad(label, &[]), sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(version: u64) -> RecordAad<'static> {
        RecordAad {
            tenant: "t",
            resource_type: "Patient",
            id: "p1",
            version,
        }
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let dek = DataKey::generate("Patient/p1".into(), 1).unwrap();
        let sealed = dek.seal(&rid(1), b"{\"a\":1}").unwrap();
        assert_eq!(dek.open(&rid(1), &sealed).unwrap().as_slice(), b"{\"a\":1}");
        // Moved to another version: refuses.
        assert!(dek.open(&rid(2), &sealed).is_err());
        // Another id / type / tenant: refuses.
        for other in [
            RecordAad { id: "p2", ..rid(1) },
            RecordAad {
                resource_type: "Observation",
                ..rid(1)
            },
            RecordAad {
                tenant: "u",
                ..rid(1)
            },
        ] {
            assert!(dek.open(&other, &sealed).is_err());
        }
        // Same secret under another key name or version: refuses.
        let renamed = DataKey::from_secret(
            "Patient/p2".into(),
            1,
            SecretBytes::from_slice(dek.secret().dangerously_expose()).unwrap(),
        )
        .unwrap();
        assert!(renamed.open(&rid(1), &sealed).is_err());
        // Every single-byte flip is caught.
        for i in 0..sealed.as_bytes().len() {
            let mut b = sealed.as_bytes().to_vec();
            b[i] ^= 0x01;
            assert!(
                dek.open(&rid(1), &Sealed::from_stored(b)).is_err(),
                "flip at {i}"
            );
        }
        assert!(dek.open(&rid(1), &Sealed::from_stored(vec![])).is_err());
        assert!(
            dek.open(&rid(1), &Sealed::from_stored(vec![1; 20]))
                .is_err()
        );
    }

    #[test]
    fn kek_wraps_bind_name_and_versions() {
        let kek = Kek::generate(1).unwrap();
        let dek = DataKey::generate("Patient/p1".into(), 1).unwrap();
        let w = kek.wrap("t", &dek).unwrap();
        let back = kek.unwrap("t", "Patient/p1", 1, &w).unwrap();
        assert_eq!(
            back.secret().dangerously_expose(),
            dek.secret().dangerously_expose()
        );
        assert!(kek.unwrap("t", "Patient/p2", 1, &w).is_err());
        assert!(kek.unwrap("t", "Patient/p1", 2, &w).is_err());
        assert!(kek.unwrap("u", "Patient/p1", 1, &w).is_err());
        let kek2 = Kek::generate(2).unwrap();
        assert!(kek2.unwrap("t", "Patient/p1", 1, &w).is_err());
    }

    #[test]
    fn stored_ciphertexts_show_only_their_length() {
        let wrapped = WrappedKey::from_stored(vec![7; 40]);
        assert_eq!(wrapped.as_bytes(), &[7; 40]);
        assert_eq!(format!("{wrapped:?}"), "WrappedKey(40 bytes)");
        let sealed = Sealed::from_stored(vec![1, 2, 3]);
        assert_eq!(sealed.as_bytes(), &[1, 2, 3]);
        assert_eq!(format!("{sealed:?}"), "Sealed(3 bytes)");
    }

    #[test]
    fn sealed_records_have_the_envelope_shape_and_plaintext_does_not() {
        let dek = DataKey::generate("Patient/p1".into(), 1).unwrap();
        assert!(dek.seal(&rid(1), b"").unwrap().has_envelope_shape());
        assert!(dek.seal(&rid(1), b"{}").unwrap().has_envelope_shape());
        let json = br#"{"resourceType":"Patient","name":[{"family":"Doe"}]}"#;
        assert!(!Sealed::from_stored(json.to_vec()).has_envelope_shape());
        assert!(!Sealed::from_stored(vec![1; 28]).has_envelope_shape());
    }

    #[test]
    fn root_wraps_keks() {
        let root = SecretBytes::random().unwrap();
        let kek = Kek::generate(3).unwrap();
        let w = wrap_with_root(&root, "t", &kek).unwrap();
        assert_eq!(unwrap_with_root(&root, "t", 3, &w).unwrap().version(), 3);
        assert!(unwrap_with_root(&root, "t", 4, &w).is_err());
        assert!(unwrap_with_root(&SecretBytes::random().unwrap(), "t", 3, &w).is_err());
    }
}
