//! medvault's transparency log, in the C2SP style: RFC 6962 hashing, RFC 9162 inclusion and
//! consistency proofs, `signed-note` checkpoints signed by the node's Ed25519 key, `tlog-tiles`
//! paths, `tlog-cosignature` witness cosignatures and `tlog-witness` requests.
//!
//! Pure code: storage is behind [`NodeSource`]; the crate never sees PHI, only leaves made of
//! kinds, times and salted commitments ([`Entry`]).

mod checkpoint;
mod entry;
mod hash;
mod note;
mod tile;
mod tree;
mod witness;

pub use checkpoint::{Checkpoint, pin_line};
pub use entry::{
    ENTRY_LEN, Entry, EntryKind, RecordFacts, SALT_LEN, audit_commitment, record_commitment,
    record_commitment_with_digest,
};
pub use hash::{HASH_LEN, Hash, empty_root, leaf_hash, node_hash};
pub use note::{
    KeyKind, MAX_NOTE_LEN, MAX_SIGNATURES, Note, NoteSignature, NoteSigner, SignerKey, Verified,
    VerifierKey, key_id, parse_signature_line, valid_key_name,
};
pub use tile::{TILE_HEIGHT, TILE_WIDTH, TilePath, encode_index};
pub use tree::{
    Frontier, MemoryTree, NodeSource, consistency_proof, inclusion_proof, root, subtree_hash,
    verify_consistency, verify_inclusion, with_prefetched,
};
pub use witness::{AddCheckpoint, MAX_PROOF_LINES};

/// Errors from the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A node the computation needs is not stored.
    #[error("tree node at level {level}, index {index} is missing")]
    MissingNode {
        /// Tree level.
        level: u8,
        /// Index within the level.
        index: u64,
    },
    /// An index or size outside the tree.
    #[error("index or size is outside the tree")]
    OutOfRange,
    /// A proof failed to verify.
    #[error("proof does not verify: {0}")]
    ProofInvalid(&'static str),
    /// A signed note is malformed.
    #[error("malformed signed note: {0}")]
    Note(&'static str),
    /// A checkpoint body is malformed.
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
    /// No signature from the expected key is on the note.
    #[error("the note carries no signature from the expected key")]
    SignatureMissing,
    /// A signature from the expected key failed to verify.
    #[error("a signature from the expected key does not verify")]
    SignatureInvalid,
    /// A tile path is malformed.
    #[error("malformed tile path")]
    TilePath,
    /// A ledger entry is malformed.
    #[error("malformed ledger entry: {0}")]
    Entry(&'static str),
    /// A witness request body is malformed.
    #[error("malformed add-checkpoint request: {0}")]
    WitnessRequest(&'static str),
    /// The storage behind a [`NodeSource`] failed.
    #[error("ledger storage failure")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}
