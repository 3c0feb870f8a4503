//! Self-signed TLS certificates and their private keys: the node's certificate for node-to-node
//! TLS, made from its Ed25519 identity key, and the development certificate for `localhost`.
//! Key material is made and encoded here; other crates receive it only as an opaque PKCS#8
//! buffer for the TLS library, zeroized when dropped.

use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::hybrid::HybridSigningKey;

/// A self-signed certificate and its private key.
pub struct SelfSigned {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The certificate, PEM.
    pub cert_pem: String,
    key_der: Zeroizing<Vec<u8>>,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SelfSigned({} bytes, key [REDACTED])",
            self.cert_der.len()
        )
    }
}

impl SelfSigned {
    /// The private key, PKCS#8 DER, for the TLS library.
    pub fn key_der(&self) -> &Zeroizing<Vec<u8>> {
        &self.key_der
    }

    /// The private key, PKCS#8 PEM, for a key file (mode 0600).
    pub fn key_pem(&self) -> &Zeroizing<String> {
        &self.key_pem
    }
}

fn opaque(_: rcgen::Error) -> CryptoError {
    CryptoError::Opaque
}

fn self_signed(
    names: Vec<String>,
    common_name: &str,
    validity_days: Option<i64>,
    key: rcgen::KeyPair,
) -> Result<SelfSigned, CryptoError> {
    let mut params = rcgen::CertificateParams::new(names).map_err(opaque)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    if let Some(days) = validity_days {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(days);
    }
    let cert = params.self_signed(&key).map_err(opaque)?;
    Ok(SelfSigned {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_der: Zeroizing::new(key.serialize_der()),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// A development certificate for `localhost` and `127.0.0.1`: a fresh ECDSA P-256 key,
/// self-signed.
///
/// # Errors
/// [`CryptoError::Opaque`] if the key or certificate cannot be made.
pub fn dev_tls_certificate() -> Result<SelfSigned, CryptoError> {
    let key = rcgen::KeyPair::generate().map_err(opaque)?;
    self_signed(
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        "medvault development certificate",
        None,
        key,
    )
}

impl HybridSigningKey {
    /// A certificate for node-to-node TLS, self-signed with this identity's Ed25519 key (peers
    /// pin that key from the node document), valid from an hour ago for a year.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if the key cannot be encoded or the certificate made.
    pub fn tls_certificate(&self, common_name: &str) -> Result<SelfSigned, CryptoError> {
        let pkcs8 = self.ed25519_pkcs8()?;
        let key = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(opaque)?;
        self_signed(Vec::new(), common_name, Some(365), key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_carry_their_names_and_keys_stay_redacted() {
        let dev = dev_tls_certificate().unwrap();
        assert!(dev.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(dev.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{dev:?}").contains("PRIVATE"));
        let id = HybridSigningKey::from_seeds(&[7; 32], &[8; 32]).unwrap();
        let a = id.tls_certificate("medvault node a").unwrap();
        let b = id.tls_certificate("medvault node a").unwrap();
        // The same identity key signs every certificate made from it.
        assert_eq!(a.key_der().as_slice(), b.key_der().as_slice());
        assert_ne!(a.key_der().as_slice(), dev.key_der().as_slice());
    }
}
