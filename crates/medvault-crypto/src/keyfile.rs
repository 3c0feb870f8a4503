//! The root key and the key file that holds it.
//!
//! Format (JSON, one object, documented in `ARCHITECTURE.md`):
//! - sealed: `{"format":"medvault-keyfile-v1","kdf":"argon2id","m_kib":..,"t":..,"p":..,
//!   "salt":B64,"sealed":B64}` — the root key under AES-256-GCM with an Argon2id-derived key.
//! - unprotected: `{"format":"medvault-keyfile-v1","kdf":"none","key":B64}`, written only when no
//!   passphrase was given, with mode 0600 and a warning at every start.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::envelope::{open_raw, seal_raw, unwrap_with_root, wrap_with_root};
use crate::{CryptoError, Kek, SecretBytes, WrappedKey};

const FORMAT: &str = "medvault-keyfile-v1";
const LABEL: &str = "medvault-keyfile-v1";
/// Argon2id cost for sealing the key file: 64 MiB, 3 passes, 1 lane (above OWASP's minimums;
/// paid once per process start).
const M_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;
/// Upper bounds accepted when reading a key file, so a crafted file cannot demand unbounded
/// memory or time (1 GiB, 16 passes, 8 lanes).
const MAX_M_KIB: u32 = 1024 * 1024;
const MAX_T: u32 = 16;
const MAX_P: u32 = 8;

/// A passphrase, zeroized on drop and never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase (e.g. from `MEDVAULT_PASSPHRASE`). Empty passphrases are refused.
    pub fn new(text: String) -> Option<Self> {
        let text = Zeroizing::new(text);
        if text.is_empty() {
            None
        } else {
            Some(Self(text))
        }
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase([REDACTED])")
    }
}

/// How the key file on disk is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileKind {
    /// Sealed with an Argon2id key derived from a passphrase.
    Passphrase,
    /// Stored in the clear (file mode 0600). Fine for a laptop demo, not for production.
    Unprotected,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileJson {
    format: String,
    kdf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m_kib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// The root of the key hierarchy. It only wraps and unwraps KEKs and never leaves the process.
pub struct RootKey(SecretBytes);

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey([REDACTED])")
    }
}

fn derive(
    pass: &Passphrase,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<SecretBytes, CryptoError> {
    if m > MAX_M_KIB || t > MAX_T || p > MAX_P {
        return Err(CryptoError::KeyFile(
            "argon2id cost parameters out of range",
        ));
    }
    let params = argon2::Params::new(m, t, p, Some(SecretBytes::LEN))
        .map_err(|_| CryptoError::KeyFile("argon2id cost parameters out of range"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass.0.as_bytes(), salt, out.as_mut())
        .map_err(|_| CryptoError::KeyFile("argon2id derivation failed"))?;
    SecretBytes::from_slice(out.as_ref())
}

fn b64(field: Option<&String>, what: &'static str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let text = field.ok_or(CryptoError::KeyFile(what))?;
    B64.decode(text)
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::KeyFile(what))
}

impl RootKey {
    /// Creates a new random root key and writes it to `path` (which must not exist) with mode
    /// 0600, sealed under `passphrase` when one is given.
    ///
    /// # Errors
    /// I/O errors (including "already exists") and RNG failure.
    pub fn create_file(path: &Path, passphrase: Option<&Passphrase>) -> Result<Self, CryptoError> {
        let root = SecretBytes::random()?;
        let json = match passphrase {
            Some(pass) => {
                let mut salt = [0u8; 16];
                crate::random_fill(&mut salt)?;
                let kek = derive(pass, &salt, M_KIB, T_COST, P_COST)?;
                let sealed = seal_raw(&kek, LABEL, root.dangerously_expose())?;
                KeyFileJson {
                    format: FORMAT.into(),
                    kdf: "argon2id".into(),
                    m_kib: Some(M_KIB),
                    t: Some(T_COST),
                    p: Some(P_COST),
                    salt: Some(B64.encode(salt)),
                    sealed: Some(B64.encode(sealed)),
                    key: None,
                }
            }
            None => KeyFileJson {
                format: FORMAT.into(),
                kdf: "none".into(),
                m_kib: None,
                t: None,
                p: None,
                salt: None,
                sealed: None,
                key: Some(B64.encode(root.dangerously_expose())),
            },
        };
        let text = Zeroizing::new(
            serde_json::to_vec_pretty(&json)
                .map_err(|_| CryptoError::KeyFile("encoding failed"))?,
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut file = opts.open(path)?;
        file.write_all(&text)?;
        file.sync_all()?;
        Ok(Self(root))
    }

    /// Reads the root key from `path`.
    ///
    /// # Errors
    /// [`CryptoError::Passphrase`] when the file is sealed and the passphrase is missing or
    /// wrong; [`CryptoError::KeyFile`] when it is malformed; I/O errors.
    pub fn open_file(
        path: &Path,
        passphrase: Option<&Passphrase>,
    ) -> Result<(Self, KeyFileKind), CryptoError> {
        let text = Zeroizing::new(std::fs::read(path)?);
        let json: KeyFileJson = serde_json::from_slice(&text)
            .map_err(|_| CryptoError::KeyFile("not a medvault key file"))?;
        if json.format != FORMAT {
            return Err(CryptoError::KeyFile("unknown key file format"));
        }
        match json.kdf.as_str() {
            "none" => {
                let key = b64(json.key.as_ref(), "field `key` missing or not base64")?;
                let root = SecretBytes::from_slice(&key)
                    .map_err(|_| CryptoError::KeyFile("key must be 32 bytes"))?;
                Ok((Self(root), KeyFileKind::Unprotected))
            }
            "argon2id" => {
                let pass = passphrase.ok_or(CryptoError::Passphrase)?;
                let salt = b64(json.salt.as_ref(), "field `salt` missing or not base64")?;
                let sealed = b64(json.sealed.as_ref(), "field `sealed` missing or not base64")?;
                let (m, t, p) = match (json.m_kib, json.t, json.p) {
                    (Some(m), Some(t), Some(p)) => (m, t, p),
                    _ => return Err(CryptoError::KeyFile("argon2id cost parameters missing")),
                };
                let kek = derive(pass, &salt, m, t, p)?;
                let raw = open_raw(&kek, LABEL, &sealed).map_err(|_| CryptoError::Passphrase)?;
                let root = SecretBytes::from_slice(&raw)
                    .map_err(|_| CryptoError::KeyFile("key must be 32 bytes"))?;
                Ok((Self(root), KeyFileKind::Passphrase))
            }
            _ => Err(CryptoError::KeyFile("unknown kdf")),
        }
    }

    /// Wraps a KEK for storage in the database.
    ///
    /// # Errors
    /// [`CryptoError::Rng`] if no nonce could be drawn.
    pub fn wrap_kek(&self, tenant: &str, kek: &Kek) -> Result<WrappedKey, CryptoError> {
        wrap_with_root(&self.0, tenant, kek)
    }

    /// Unwraps a stored KEK.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if it was not wrapped by this root key for this tenant/version.
    pub fn unwrap_kek(
        &self,
        tenant: &str,
        version: u32,
        wrapped: &WrappedKey,
    ) -> Result<Kek, CryptoError> {
        unwrap_with_root(&self.0, tenant, version, wrapped)
    }

    /// The MAC that authenticates this node's backup files: HMAC-SHA256 under a key derived
    /// from the root key (HKDF-SHA256, salt `medvault-backup-v1`, info the tenant), so only a
    /// holder of the key file can write a backup that restores.
    ///
    /// # Errors
    /// [`CryptoError::Opaque`] if HKDF refuses the length (it cannot for 32 bytes).
    pub fn backup_mac(&self, tenant: &str) -> Result<crate::MacStream, CryptoError> {
        use aws_lc_rs::{hkdf, hmac};
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"medvault-backup-v1")
            .extract(self.0.dangerously_expose());
        let info = [tenant.as_bytes()];
        let okm = prk
            .expand(&info, hmac::HMAC_SHA256)
            .map_err(|_| CryptoError::Opaque)?;
        Ok(crate::MacStream(hmac::Context::with_key(&hmac::Key::from(
            okm,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_key_file_round_trip_and_wrong_passphrase() {
        let dir = std::env::temp_dir().join(format!("mv-kf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sealed.json");
        let _ = std::fs::remove_file(&path);
        let pass = Passphrase::new("correct horse battery staple".into()).unwrap();
        let root = RootKey::create_file(&path, Some(&pass)).unwrap();
        let (again, kind) = RootKey::open_file(&path, Some(&pass)).unwrap();
        assert_eq!(kind, KeyFileKind::Passphrase);
        assert_eq!(root.0.dangerously_expose(), again.0.dangerously_expose());
        let wrong = Passphrase::new("wrong".into()).unwrap();
        assert!(matches!(
            RootKey::open_file(&path, Some(&wrong)),
            Err(CryptoError::Passphrase)
        ));
        assert!(matches!(
            RootKey::open_file(&path, None),
            Err(CryptoError::Passphrase)
        ));
        // The key itself never appears in the file.
        let bytes = std::fs::read(&path).unwrap();
        let enc = B64.encode(root.0.dangerously_expose());
        assert!(!String::from_utf8_lossy(&bytes).contains(&enc));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // Refuses to overwrite.
        assert!(RootKey::create_file(&path, Some(&pass)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_key_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("mv-kf-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.json");
        for body in [
            "",
            "{}",
            "not json",
            r#"{"format":"medvault-keyfile-v1","kdf":"none"}"#,
            r#"{"format":"medvault-keyfile-v1","kdf":"none","key":"AAAA"}"#,
            r#"{"format":"other","kdf":"none","key":"AAAA"}"#,
            r#"{"format":"medvault-keyfile-v1","kdf":"argon2id","m_kib":4294967295,"t":1,"p":1,"salt":"AAAA","sealed":"AAAA"}"#,
        ] {
            std::fs::write(&path, body).unwrap();
            let pass = Passphrase::new("x".into()).unwrap();
            assert!(RootKey::open_file(&path, Some(&pass)).is_err(), "{body}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
