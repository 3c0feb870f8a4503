//! The ledger's one error type.

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
    /// The storage behind a [`NodeSource`](crate::NodeSource) failed.
    #[error("ledger storage failure")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}
