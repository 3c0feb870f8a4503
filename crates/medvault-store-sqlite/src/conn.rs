//! How SQLite's errors and rows become the store's.

use medvault_store::StoreError;
use medvault_store::rows::Columns;
use rusqlite::types::Type;

/// A constraint violation is a [`StoreError::Conflict`]; the database busy or locked (another
/// process — a `medvault import`, a backup — held SQLite's write lock past the busy timeout) is
/// [`StoreError::Unavailable`], nothing written and worth retrying shortly (the server answers
/// 503 `transient`); anything else a backend failure.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.code {
            rusqlite::ErrorCode::ConstraintViolation => return StoreError::Conflict,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                return StoreError::Unavailable(Box::new(e));
            }
            _ => {}
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use medvault_store::StoreError;
    use rusqlite::{Connection, ErrorCode};

    use super::backend;

    /// A write refused because another connection holds the write lock is `Unavailable` (503
    /// `transient` at the server), not a backend failure (500).
    #[test]
    fn a_busy_database_is_unavailable_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER);")
            .unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        let busy = other.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert_eq!(busy.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
        assert!(matches!(backend(busy), StoreError::Unavailable(_)));
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
            None,
        );
        assert!(matches!(backend(locked), StoreError::Unavailable(_)));
        // Other failures keep their kinds.
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            None,
        );
        assert!(matches!(backend(constraint), StoreError::Conflict));
        assert!(matches!(
            backend(rusqlite::Error::InvalidQuery),
            StoreError::Backend(_)
        ));
        holder.execute_batch("ROLLBACK").unwrap();
    }
}
