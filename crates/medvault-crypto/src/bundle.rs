//! Sealed bundles between nodes (issue 7): a payload encrypted with HPKE (RFC 9180, base mode)
//! to the recipient's X-Wing key and signed with the sender's hybrid key.
//!
//! Suite: KEM X-Wing (`0x647a`), KDF HKDF-SHA256 (`0x0001`), AEAD ChaCha20-Poly1305 (`0x0003`),
//! checked against the HPKE-PQ vectors. The header (the caller's metadata: sender, recipient,
//! purpose, expiry, id) is HPKE's `info` *and* the AEAD's associated data, so a changed header
//! does not open; the hybrid signature covers header, encapsulated key and ciphertext, so the
//! receiver checks who sent it before decrypting anything.
//!
//! Layout (hard to undo: bundles are files that outlive releases), all lengths big-endian:
//! `"MVB1"`, `u32` header length, header, `u32` enc length, enc (1120), `u64` ciphertext length,
//! ciphertext, `u32` + Ed25519 signature, `u32` + ML-DSA-65 signature. Nothing may follow.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use zeroize::Zeroizing;

use crate::{CryptoError, HybridPublicKey, HybridSignature, HybridSigningKey, hybrid_verify};

const MAGIC: &[u8; 4] = b"MVB1";
const SIGNED_LABEL: &[u8] = b"medvault-bundle-v1\0";
/// Largest header accepted (HPKE's `info` must stay well under 2^16 bytes).
pub const MAX_BUNDLE_HEADER: usize = 16 * 1024;

/// Why a bundle was refused. The messages name the problem, never key or payload bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a medvault bundle, cut short, or with trailing bytes.
    #[error("malformed bundle: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with the sender's key.
    #[error("the bundle's signature does not verify with the sender's key")]
    BadSignature,
    /// It was not sealed to this node's key (or was altered in a way the signature missed).
    #[error("the bundle does not open with this node's key")]
    WrongRecipient,
    /// A key or the random source failed.
    #[error("bundle sealing failed")]
    Crypto,
}

/// The parts of a bundle, borrowed from its bytes.
#[derive(Debug)]
pub struct BundleParts<'a> {
    /// The header (the sender's metadata, not encrypted).
    pub header: &'a [u8],
    enc: &'a [u8],
    ciphertext: &'a [u8],
    signature: HybridSignature,
}

fn signed_message(header: &[u8], enc: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(SIGNED_LABEL.len() + 16 + header.len() + enc.len() + ciphertext.len());
    m.extend_from_slice(SIGNED_LABEL);
    m.extend_from_slice(&(header.len() as u64).to_be_bytes());
    m.extend_from_slice(header);
    m.extend_from_slice(&(enc.len() as u64).to_be_bytes());
    m.extend_from_slice(enc);
    m.extend_from_slice(ciphertext);
    m
}

/// Seals `payload` to the X-Wing public key `recipient` and signs it with `sender`.
///
/// # Errors
/// [`BundleError::Malformed`] for a header over [`MAX_BUNDLE_HEADER`];
/// [`BundleError::WrongRecipient`] if `recipient` is not an X-Wing public key;
/// [`BundleError::Crypto`] if sealing or signing fails.
pub fn seal_bundle(
    header: &[u8],
    payload: &[u8],
    recipient: &[u8],
    sender: &HybridSigningKey,
) -> Result<Vec<u8>, BundleError> {
    if header.len() > MAX_BUNDLE_HEADER {
        return Err(BundleError::Malformed("header too large"));
    }
    let pk = <XWing as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| BundleError::WrongRecipient)?;
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeS::Base,
        &pk,
        header,
        payload,
        header,
    )
    .map_err(|_| BundleError::Crypto)?;
    let enc = enc.to_bytes();
    let sig = sender
        .sign(&signed_message(header, &enc, &ciphertext))
        .map_err(|_| BundleError::Crypto)?;
    let mut out = Vec::with_capacity(
        4 + 4 + header.len() + 4 + enc.len() + 8 + ciphertext.len() + 8 + 64 + 3309,
    );
    out.extend_from_slice(MAGIC);
    let len32 = |n: usize| u32::try_from(n).map_err(|_| BundleError::Malformed("part too large"));
    out.extend_from_slice(&len32(header.len())?.to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&len32(enc.len())?.to_be_bytes());
    out.extend_from_slice(&enc);
    out.extend_from_slice(&(ciphertext.len() as u64).to_be_bytes());
    out.extend_from_slice(&ciphertext);
    out.extend_from_slice(&len32(sig.ed25519.len())?.to_be_bytes());
    out.extend_from_slice(&sig.ed25519);
    out.extend_from_slice(&len32(sig.ml_dsa_65.len())?.to_be_bytes());
    out.extend_from_slice(&sig.ml_dsa_65);
    Ok(out)
}

/// Reads one length-prefixed part.
fn take<'a>(rest: &mut &'a [u8], len_bytes: usize, max: u64) -> Result<&'a [u8], BundleError> {
    if rest.len() < len_bytes {
        return Err(BundleError::Malformed("cut short"));
    }
    let (len, tail) = rest.split_at(len_bytes);
    let mut n = [0u8; 8];
    n[8 - len_bytes..].copy_from_slice(len);
    let n = u64::from_be_bytes(n);
    if n > max || n > tail.len() as u64 {
        return Err(BundleError::Malformed("a part is longer than the bundle"));
    }
    let n = usize::try_from(n).map_err(|_| BundleError::Malformed("a part is too long"))?;
    let (part, tail) = tail.split_at(n);
    *rest = tail;
    Ok(part)
}

/// Splits a bundle into its parts without checking anything but the layout (the receiver
/// reads the header to find the sender, then calls [`open_bundle`]).
///
/// # Errors
/// [`BundleError::Malformed`].
pub fn bundle_parts(bytes: &[u8]) -> Result<BundleParts<'_>, BundleError> {
    let mut rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or(BundleError::Malformed("not a medvault bundle"))?;
    let header = take(&mut rest, 4, MAX_BUNDLE_HEADER as u64)?;
    let enc = take(&mut rest, 4, 4096)?;
    let ciphertext = take(&mut rest, 8, u64::MAX)?;
    let ed25519 = take(&mut rest, 4, 64)?.to_vec();
    let ml_dsa_65 = take(&mut rest, 4, 8192)?.to_vec();
    if !rest.is_empty() {
        return Err(BundleError::Malformed("trailing bytes"));
    }
    Ok(BundleParts {
        header,
        enc,
        ciphertext,
        signature: HybridSignature { ed25519, ml_dsa_65 },
    })
}

/// A bundle whose layout and sender signature were checked: the only thing
/// [`open_verified`] decrypts, so nothing unverified is ever opened.
#[derive(Debug)]
pub struct VerifiedBundle<'a>(BundleParts<'a>);

impl<'a> VerifiedBundle<'a> {
    /// The header (signed, not encrypted).
    pub fn header(&self) -> &'a [u8] {
        self.0.header
    }
}

/// Checks the layout of `bytes` and that `sender` signed them, without decrypting (e.g. for the
/// sender, who cannot open what it sealed, or a receiver that checks before it decides to
/// open).
///
/// # Errors
/// [`BundleError::Malformed`], [`BundleError::BadSignature`].
pub fn verify_bundle<'a>(
    bytes: &'a [u8],
    sender: &HybridPublicKey,
) -> Result<VerifiedBundle<'a>, BundleError> {
    let parts = bundle_parts(bytes)?;
    if hybrid_verify(
        sender,
        &signed_message(parts.header, parts.enc, parts.ciphertext),
        &parts.signature,
    ) {
        Ok(VerifiedBundle(parts))
    } else {
        Err(BundleError::BadSignature)
    }
}

/// Opens a verified bundle with `recipient`'s key. Returns the payload.
///
/// # Errors
/// [`BundleError::Malformed`] for a bad encapsulated key, [`BundleError::WrongRecipient`].
pub fn open_verified(
    bundle: &VerifiedBundle<'_>,
    recipient: &crate::XWingKey,
) -> Result<Zeroizing<Vec<u8>>, BundleError> {
    let parts = &bundle.0;
    let sk = <XWing as hpke::Kem>::PrivateKey::from_bytes(recipient.seed())
        .map_err(|_| BundleError::Crypto)?;
    let enc = <XWing as hpke::Kem>::EncappedKey::from_bytes(parts.enc)
        .map_err(|_| BundleError::Malformed("the encapsulated key has the wrong size"))?;
    let payload = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, XWing>(
        &OpModeR::Base,
        &sk,
        &enc,
        parts.header,
        parts.ciphertext,
        parts.header,
    )
    .map_err(|_| BundleError::WrongRecipient)?;
    Ok(Zeroizing::new(payload))
}

/// Verifies `bytes` as sent by `sender` and opens it with `recipient`'s key. Returns the header
/// and the payload.
///
/// # Errors
/// [`BundleError::Malformed`], [`BundleError::BadSignature`] (checked first: nothing is
/// decrypted for an unverified sender), [`BundleError::WrongRecipient`].
pub fn open_bundle(
    bytes: &[u8],
    sender: &HybridPublicKey,
    recipient: &crate::XWingKey,
) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), BundleError> {
    let verified = verify_bundle(bytes, sender)?;
    let payload = open_verified(&verified, recipient)?;
    Ok((verified.header().to_vec(), payload))
}

impl From<BundleError> for CryptoError {
    fn from(_: BundleError) -> Self {
        CryptoError::Opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> (HybridSigningKey, crate::XWingKey) {
        let signing = HybridSigningKey::from_seeds(&[n; 32], &[n ^ 1; 32]).unwrap();
        let kem = crate::XWingKey(x_wing::DecapsulationKey::from([n ^ 2; 32]));
        (signing, kem)
    }

    #[test]
    fn a_bundle_opens_only_for_its_recipient_from_its_sender() {
        let (alice, _) = keys(1);
        let (_, bob_kem) = keys(2);
        let (mallory, mallory_kem) = keys(3);
        let payload = vec![7u8; 100_000];
        let sealed =
            seal_bundle(b"{\"to\":\"bob\"}", &payload, &bob_kem.public_key(), &alice).unwrap();
        let (header, opened) = open_bundle(&sealed, alice.public_key(), &bob_kem).unwrap();
        assert_eq!(header, b"{\"to\":\"bob\"}");
        assert_eq!(opened.as_slice(), payload.as_slice());
        // Not for another recipient, not from another sender.
        assert_eq!(
            open_bundle(&sealed, alice.public_key(), &mallory_kem).unwrap_err(),
            BundleError::WrongRecipient
        );
        assert_eq!(
            open_bundle(&sealed, mallory.public_key(), &bob_kem).unwrap_err(),
            BundleError::BadSignature
        );
        // Any flipped byte is refused; every cut is refused; trailing bytes are refused.
        for i in [5, 20, 100, 2000, sealed.len() / 2, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(
                open_bundle(&t, alice.public_key(), &bob_kem).is_err(),
                "byte {i}"
            );
        }
        for cut in [0, 3, 10, 1200, sealed.len() - 1] {
            assert!(open_bundle(&sealed[..cut], alice.public_key(), &bob_kem).is_err());
        }
        let mut long = sealed.clone();
        long.push(0);
        assert_eq!(
            open_bundle(&long, alice.public_key(), &bob_kem).unwrap_err(),
            BundleError::Malformed("trailing bytes")
        );
        // Re-signed by someone else: the signature check names the real problem.
        let parts = bundle_parts(&sealed).unwrap();
        assert_eq!(parts.header, b"{\"to\":\"bob\"}");
    }
}
