//! C2SP `signed-note`: text signed by one or more keys, Ed25519 signatures (type `0x01`),
//! timestamped Ed25519 witness cosignatures (type `0x04`, C2SP `tlog-cosignature` v1) and
//! ML-DSA-44 subtree cosignatures of checkpoints (type `0x06`, `subtree/v1`, post-quantum), and
//! the `vkey` text form of a verifier key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_crypto::{
    ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, ML_DSA_44_PUBLIC_KEY_LEN,
    ML_DSA_44_SIGNATURE_LEN, MlDsa44Key, SigningKey, ed25519_verify, ml_dsa_44_verify,
};

use crate::LedgerError;

/// Largest note accepted (text plus signatures).
pub const MAX_NOTE_LEN: usize = 64 * 1024;
/// Most signature lines accepted on one note (the spec asks for at least 16).
pub const MAX_SIGNATURES: usize = 64;

const SIG_TYPE_ED25519: u8 = 0x01;
const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;
const SIG_TYPE_ML_DSA_44: u8 = 0x06;

/// One signature line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// The 32-bit key id.
    pub key_id: u32,
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The line, `— <name> <base64(key id || signature)>\n`.
    pub fn line(&self) -> String {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.signature);
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }
}

/// A parsed signed note. Its text must not be trusted before a signature is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

fn note_err(what: &'static str) -> LedgerError {
    LedgerError::Note(what)
}

/// Key names are non-empty and contain no Unicode space and no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl Note {
    /// Parses a signed note.
    ///
    /// # Errors
    /// [`LedgerError::Note`] naming what is malformed.
    pub fn parse(bytes: &[u8]) -> Result<Self, LedgerError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(note_err("note is too large"));
        }
        let s = std::str::from_utf8(bytes).map_err(|_| note_err("note is not UTF-8"))?;
        if s.chars().any(|c| c < ' ' && c != '\n') {
            return Err(note_err("note contains a control character"));
        }
        if !s.ends_with('\n') {
            return Err(note_err("note does not end with a newline"));
        }
        let split = s
            .rfind("\n\n")
            .ok_or(note_err("note has no blank line before its signatures"))?;
        let text = &s[..=split];
        let sig_block = &s[split + 2..];
        if text.len() <= 1 {
            return Err(note_err("note text is empty"));
        }
        let mut signatures = Vec::new();
        for line in sig_block.split_terminator('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(note_err("note has too many signatures"));
            }
            signatures.push(parse_signature_line(line)?);
        }
        if signatures.is_empty() {
            return Err(note_err("note has no signatures"));
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note's wire form.
    pub fn render(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for s in &self.signatures {
            out.push_str(&s.line());
        }
        out
    }
}

/// Parses one `— <name> <base64>` line (without its newline).
///
/// # Errors
/// [`LedgerError::Note`].
pub fn parse_signature_line(line: &str) -> Result<NoteSignature, LedgerError> {
    let rest = line.strip_prefix("\u{2014} ").ok_or(note_err(
        "signature line does not start with an em dash and a space",
    ))?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or(note_err("signature line has no signature"))?;
    if !valid_key_name(name) {
        return Err(note_err("signature line has an invalid key name"));
    }
    let raw = B64
        .decode(b64)
        .map_err(|_| note_err("signature is not valid base64"))?;
    if raw.len() < 5 {
        return Err(note_err("signature is too short"));
    }
    let (id, sig) = raw.split_at(4);
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
        signature: sig.to_vec(),
    })
}

/// What kind of signature a [`VerifierKey`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A log's Ed25519 note signature (`0x01`).
    Ed25519,
    /// A witness's timestamped Ed25519 cosignature, `cosignature/v1` (`0x04`).
    CosignatureV1,
    /// A timestamped ML-DSA-44 cosignature of a checkpoint, `subtree/v1` (`0x06`).
    MlDsa44,
}

impl KeyKind {
    fn type_byte(self) -> u8 {
        match self {
            Self::Ed25519 => SIG_TYPE_ED25519,
            Self::CosignatureV1 => SIG_TYPE_COSIGNATURE_V1,
            Self::MlDsa44 => SIG_TYPE_ML_DSA_44,
        }
    }

    fn public_key_len(self) -> usize {
        match self {
            Self::Ed25519 | Self::CosignatureV1 => ED25519_PUBLIC_KEY_LEN,
            Self::MlDsa44 => ML_DSA_44_PUBLIC_KEY_LEN,
        }
    }
}

/// The ML-DSA-44 `cosigned_message` of C2SP `tlog-cosignature` for a whole checkpoint
/// (`start` 0, `end` its size); `None` if the text is not a checkpoint or a length does not fit.
fn subtree_message(cosigner: &str, timestamp: u64, text: &str) -> Option<Vec<u8>> {
    let cp = crate::Checkpoint::parse(text).ok()?;
    let name = u8::try_from(cosigner.len()).ok()?;
    let origin = u8::try_from(cp.origin.len()).ok()?;
    let mut m = Vec::with_capacity(12 + 1 + cosigner.len() + 8 + 1 + cp.origin.len() + 48);
    m.extend_from_slice(b"subtree/v1\n\0");
    m.push(name);
    m.extend_from_slice(cosigner.as_bytes());
    m.extend_from_slice(&timestamp.to_be_bytes());
    m.push(origin);
    m.extend_from_slice(cp.origin.as_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&cp.size.to_be_bytes());
    m.extend_from_slice(&cp.root);
    Some(m)
}

/// `SHA-256(name || 0x0A || type || public key)[:4]`, big-endian.
pub fn key_id(name: &str, kind: KeyKind, public_key: &[u8]) -> u32 {
    let mut buf = Vec::with_capacity(name.len() + 2 + public_key.len());
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.push(kind.type_byte());
    buf.extend_from_slice(public_key);
    let h = medvault_crypto::sha256(&buf);
    u32::from_be_bytes([h[0], h[1], h[2], h[3]])
}

fn cosigned_message(timestamp: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A public key that checks one kind of signature under one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// Key name.
    pub name: String,
    /// Signature kind.
    pub kind: KeyKind,
    /// The public key (32 bytes for Ed25519 kinds, 1312 for ML-DSA-44).
    pub public_key: Vec<u8>,
}

/// A verified signature: for cosignatures, the timestamp the witness signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Cosignature time (POSIX seconds); `None` for plain Ed25519 signatures.
    pub timestamp: Option<u64>,
}

impl VerifierKey {
    /// The key's 32-bit id.
    pub fn key_id(&self) -> u32 {
        key_id(&self.name, self.kind, &self.public_key)
    }

    /// Parses a verifier key, `<name>+<8 hex key id>+<base64(type || public key)>`.
    ///
    /// # Errors
    /// [`LedgerError::Note`] naming the problem.
    pub fn parse_vkey(text: &str) -> Result<Self, LedgerError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(note_err("verifier key is not name+id+key"));
        };
        if !valid_key_name(name) {
            return Err(note_err("verifier key has an invalid name"));
        }
        let raw = B64
            .decode(key)
            .map_err(|_| note_err("verifier key is not valid base64"))?;
        let (kind, public) = match raw.split_first() {
            Some((&SIG_TYPE_ED25519, k)) => (KeyKind::Ed25519, k),
            Some((&SIG_TYPE_COSIGNATURE_V1, k)) => (KeyKind::CosignatureV1, k),
            Some((&SIG_TYPE_ML_DSA_44, k)) => (KeyKind::MlDsa44, k),
            _ => return Err(note_err("verifier key has an unsupported type")),
        };
        if public.len() != kind.public_key_len() {
            return Err(note_err("verifier key has the wrong length for its type"));
        }
        let vk = Self {
            name: name.to_owned(),
            kind,
            public_key: public.to_vec(),
        };
        let want =
            u32::from_str_radix(id, 16).map_err(|_| note_err("verifier key id is not hex"))?;
        if id.len() != 8 || want != vk.key_id() {
            return Err(note_err("verifier key id does not match the key"));
        }
        Ok(vk)
    }

    /// The `vkey` text form.
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![self.kind.type_byte()];
        raw.extend_from_slice(&self.public_key);
        format!("{}+{:08x}+{}", self.name, self.key_id(), B64.encode(raw))
    }

    /// Verifies this key's signature(s) on `note`. Lines from other keys are ignored.
    ///
    /// # Errors
    /// [`LedgerError::SignatureMissing`] if no line is from this key,
    /// [`LedgerError::SignatureInvalid`] if one fails to verify.
    pub fn verify(&self, note: &Note) -> Result<Verified, LedgerError> {
        let id = self.key_id();
        let mut found = None;
        for s in note
            .signatures
            .iter()
            .filter(|s| s.name == self.name && s.key_id == id)
        {
            found = Some(self.verify_one(&note.text, &s.signature)?);
        }
        found.ok_or(LedgerError::SignatureMissing)
    }

    fn verify_one(&self, text: &str, sig: &[u8]) -> Result<Verified, LedgerError> {
        let (timestamp, valid) = match self.kind {
            KeyKind::Ed25519 => (None, ed25519_verify(&self.public_key, text.as_bytes(), sig)),
            KeyKind::MlDsa44 => {
                let (timestamp, sig) = timestamped(sig, ML_DSA_44_SIGNATURE_LEN)?;
                let message = subtree_message(&self.name, timestamp, text)
                    .ok_or(LedgerError::SignatureInvalid)?;
                (
                    Some(timestamp),
                    ml_dsa_44_verify(&self.public_key, &message, sig),
                )
            }
            KeyKind::CosignatureV1 => {
                let (timestamp, sig) = timestamped(sig, ED25519_SIGNATURE_LEN)?;
                let message = cosigned_message(timestamp, text);
                (
                    Some(timestamp),
                    ed25519_verify(&self.public_key, &message, sig),
                )
            }
        };
        if valid {
            Ok(Verified { timestamp })
        } else {
            Err(LedgerError::SignatureInvalid)
        }
    }
}

/// Splits a cosignature, `timestamp (8 bytes, big-endian) || signature`, whose signature must be
/// `sig_len` bytes long; the timestamp must fit an `i64` (POSIX seconds).
///
/// # Errors
/// [`LedgerError::SignatureInvalid`] if either does not hold.
fn timestamped(sig: &[u8], sig_len: usize) -> Result<(u64, &[u8]), LedgerError> {
    if sig.len() != 8 + sig_len {
        return Err(LedgerError::SignatureInvalid);
    }
    let (ts, sig) = sig.split_at(8);
    let mut t = [0u8; 8];
    t.copy_from_slice(ts);
    let timestamp = u64::from_be_bytes(t);
    if timestamp > i64::MAX as u64 {
        return Err(LedgerError::SignatureInvalid);
    }
    Ok((timestamp, sig))
}

/// A note signer's private key.
#[derive(Debug)]
pub enum SignerKey {
    /// Ed25519 (log signatures and `cosignature/v1`).
    Ed25519(SigningKey),
    /// ML-DSA-44 (`subtree/v1` checkpoint cosignatures).
    MlDsa44(MlDsa44Key),
}

impl From<SigningKey> for SignerKey {
    fn from(k: SigningKey) -> Self {
        Self::Ed25519(k)
    }
}

/// A private key with its name, signing notes of one kind.
#[derive(Debug)]
pub struct NoteSigner {
    name: String,
    kind: KeyKind,
    key: SignerKey,
}

impl NoteSigner {
    /// A signer named `name` (a schema-less URL, e.g. `medvault.example/node-1`).
    ///
    /// # Errors
    /// [`LedgerError::Note`] if the name is not a valid key name.
    /// The key must suit the kind: Ed25519 for `Ed25519` and `CosignatureV1`, ML-DSA-44 for
    /// `MlDsa44`.
    ///
    /// # Errors
    /// [`LedgerError::Note`] if the name is not a valid key name or the key does not suit the
    /// kind.
    pub fn new(name: &str, kind: KeyKind, key: impl Into<SignerKey>) -> Result<Self, LedgerError> {
        if !valid_key_name(name) {
            return Err(note_err("key name is empty or contains a space or '+'"));
        }
        if kind == KeyKind::MlDsa44 && name.len() > 255 {
            // The subtree/v1 message holds the name behind a one-byte length.
            return Err(note_err(
                "an ML-DSA-44 cosigner name is longer than 255 bytes",
            ));
        }
        let key = key.into();
        let fits = matches!(
            (&key, kind),
            (
                SignerKey::Ed25519(_),
                KeyKind::Ed25519 | KeyKind::CosignatureV1
            ) | (SignerKey::MlDsa44(_), KeyKind::MlDsa44)
        );
        if !fits {
            return Err(note_err("the key does not suit the signature kind"));
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
            key,
        })
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            kind: self.kind,
            public_key: match &self.key {
                SignerKey::Ed25519(k) => k.public_key().to_vec(),
                SignerKey::MlDsa44(k) => k.public_key(),
            },
        }
    }

    /// Signs `text` (which must end in a newline). For cosigners, `timestamp` is the POSIX time
    /// written into the cosignature; it is ignored for plain Ed25519 signatures.
    pub fn sign(&self, text: &str, timestamp: u64) -> NoteSignature {
        let key_id = self.verifier().key_id();
        let signature = match (&self.key, self.kind) {
            (SignerKey::Ed25519(k), KeyKind::CosignatureV1) => {
                let mut out = timestamp.to_be_bytes().to_vec();
                out.extend_from_slice(&k.sign(&cosigned_message(timestamp, text)));
                out
            }
            (SignerKey::Ed25519(k), _) => k.sign(text.as_bytes()).to_vec(),
            (SignerKey::MlDsa44(k), _) => {
                // Only checkpoints are cosigned this way; anything else gets an empty (and so
                // invalid) signature rather than a signature over something else.
                let mut out = timestamp.to_be_bytes().to_vec();
                match subtree_message(&self.name, timestamp, text).map(|m| k.sign(&m)) {
                    Some(Ok(sig)) => out.extend_from_slice(&sig),
                    _ => out.clear(),
                }
                out
            }
        };
        NoteSignature {
            name: self.name.clone(),
            key_id,
            signature,
        }
    }
}
