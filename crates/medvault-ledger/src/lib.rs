//! medvault's transparency log, in the C2SP style: RFC 6962 hashing, RFC 9162 inclusion and
//! consistency proofs, `signed-note` checkpoints signed by the node's Ed25519 key, `tlog-tiles`
//! paths, `tlog-cosignature` witness cosignatures and `tlog-witness` requests.
//!
//! Pure code: storage is behind [`NodeSource`]; the crate never sees PHI, only leaves made of
//! kinds, times and salted commitments ([`Entry`]).

mod checkpoint;
mod entry;
mod error;
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
pub use error::LedgerError;
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
