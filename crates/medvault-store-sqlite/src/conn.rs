//! How SQLite's errors become the store's.

use medvault_store::StoreError;

/// A constraint violation is a [`StoreError::Conflict`]; anything else a backend failure.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict;
    }
    StoreError::Backend(Box::new(e))
}
