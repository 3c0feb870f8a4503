//! medvault's ledger entry (leaf) format, version 1, and the commitments it carries.
//!
//! ```text
//! offset size
//!      0    1  format version = 0x01
//!      1    1  kind: 0x01 audit event, 0x02 record version
//!      2    8  time, microseconds since the Unix epoch, big-endian
//!     10   32  commitment (SHA-256, below)
//! ```
//!
//! A leaf carries no id and no PHI: only when something happened, what kind of thing it was, and
//! a salted commitment to the details, which are stored beside the leaf (audit details sealed).
//! See `ARCHITECTURE.md`, "The ledger".

use aws_lc_rs::digest::{Context, SHA256};

use crate::LedgerError;
use crate::hash::Hash;

/// Length of a v1 entry.
pub const ENTRY_LEN: usize = 42;
/// Length of a commitment salt.
pub const SALT_LEN: usize = 16;
const FORMAT_V1: u8 = 0x01;

/// What a leaf commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// An audit event: an API request (allowed or denied), a failed authentication, a key event
    /// or an admin action.
    Audit,
    /// A stored resource version.
    Record,
}

/// A decoded leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Kind of event.
    pub kind: EntryKind,
    /// When, in microseconds since the Unix epoch.
    pub time_micros: u64,
    /// The salted commitment.
    pub commitment: Hash,
}

impl Entry {
    /// The leaf bytes.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = FORMAT_V1;
        out[1] = match self.kind {
            EntryKind::Audit => 0x01,
            EntryKind::Record => 0x02,
        };
        out[2..10].copy_from_slice(&self.time_micros.to_be_bytes());
        out[10..].copy_from_slice(&self.commitment);
        out
    }

    /// Decodes leaf bytes.
    ///
    /// # Errors
    /// [`LedgerError::Entry`] for a wrong length, version or kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        if bytes.len() != ENTRY_LEN {
            return Err(LedgerError::Entry("entry has the wrong length"));
        }
        if bytes[0] != FORMAT_V1 {
            return Err(LedgerError::Entry("entry has an unknown format version"));
        }
        let kind = match bytes[1] {
            0x01 => EntryKind::Audit,
            0x02 => EntryKind::Record,
            _ => return Err(LedgerError::Entry("entry has an unknown kind")),
        };
        let mut t = [0u8; 8];
        t.copy_from_slice(&bytes[2..10]);
        let mut commitment = [0u8; 32];
        commitment.copy_from_slice(&bytes[10..]);
        Ok(Self {
            kind,
            time_micros: u64::from_be_bytes(t),
            commitment,
        })
    }
}

fn field(c: &mut Context, f: &[u8]) {
    c.update(&(f.len() as u32).to_be_bytes());
    c.update(f);
}

/// The identity of a stored resource version, as committed to by its leaf.
#[derive(Debug, Clone, Copy)]
pub struct RecordFacts<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Resource type.
    pub resource_type: &'a str,
    /// Logical id.
    pub id: &'a str,
    /// Version number.
    pub version: u64,
    /// Sealing key's name.
    pub key_name: &'a str,
    /// Sealing key's version.
    pub key_version: u32,
    /// Server time of the write.
    pub last_updated_micros: i64,
    /// The sealed body's bytes; `None` for a delete marker.
    pub sealed: Option<&'a [u8]>,
}

/// `SHA-256("medvault-ledger-record-v1" ‖ salt ‖ fields…)`, fields length-prefixed, the body as
/// its own SHA-256 (flagged absent for a delete marker).
pub fn record_commitment(salt: &[u8; SALT_LEN], r: &RecordFacts<'_>) -> Hash {
    record_commitment_with_digest(salt, r, r.sealed.map(medvault_crypto::sha256).as_ref())
}

/// [`record_commitment`] from the body's SHA-256 (`digest`) instead of its bytes (`r.sealed`
/// is ignored): what an amended version's original leaf is checked against once its body was
/// re-sealed or expunged.
pub fn record_commitment_with_digest(
    salt: &[u8; SALT_LEN],
    r: &RecordFacts<'_>,
    digest: Option<&Hash>,
) -> Hash {
    let mut c = Context::new(&SHA256);
    field(&mut c, b"medvault-ledger-record-v1");
    field(&mut c, salt);
    field(&mut c, r.tenant.as_bytes());
    field(&mut c, r.resource_type.as_bytes());
    field(&mut c, r.id.as_bytes());
    field(&mut c, &r.version.to_be_bytes());
    field(&mut c, r.key_name.as_bytes());
    field(&mut c, &r.key_version.to_be_bytes());
    field(&mut c, &r.last_updated_micros.to_be_bytes());
    match digest {
        Some(d) => {
            c.update(&[1]);
            field(&mut c, d);
        }
        None => c.update(&[0]),
    }
    to_hash(c)
}

/// `SHA-256("medvault-ledger-audit-v1" ‖ salt ‖ detail)`, over the exact detail bytes stored.
pub fn audit_commitment(salt: &[u8; SALT_LEN], detail: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    field(&mut c, b"medvault-ledger-audit-v1");
    field(&mut c, salt);
    field(&mut c, detail);
    to_hash(c)
}

fn to_hash(c: Context) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(c.finish().as_ref());
    h
}
