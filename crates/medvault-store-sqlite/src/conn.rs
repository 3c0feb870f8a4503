//! How SQLite's errors and rows become the store's.

use medvault_store::StoreError;
use medvault_store::rows::Columns;
use rusqlite::types::Type;

/// A constraint violation is a [`StoreError::Conflict`]; anything else a backend failure.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == rusqlite::ErrorCode::ConstraintViolation
    {
        return StoreError::Conflict;
    }
    StoreError::Backend(Box::new(e))
}

/// A result row lent to the shared decoders of `medvault_store::rows`, converted as rusqlite
/// converts it.
pub(crate) struct Cols<'a, 'r>(pub(crate) &'a rusqlite::Row<'r>);

impl Columns for Cols<'_, '_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn bool(&self, i: usize) -> Result<bool, StoreError> {
        self.0.get(i).map_err(backend)
    }

    fn malformed(&self, i: usize, why: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
        let found = self.0.get_ref(i).map_or(Type::Null, |v| v.data_type());
        backend(rusqlite::Error::FromSqlConversionFailure(i, found, why))
    }

    fn out_of_range(&self, i: usize, n: i64) -> StoreError {
        // What rusqlite reports when it converts to a narrower integer itself.
        backend(rusqlite::Error::IntegralValueOutOfRange(i, n))
    }
}
