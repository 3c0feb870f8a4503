//! The one error type every store reports.

/// Errors a backend reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write conflicts with data already there (e.g. a duplicate primary key).
    #[error("write conflicts with an existing record")]
    Conflict,
    /// The schema in the database is newer than this binary understands.
    #[error("database schema version {found} is newer than this medvault ({supported})")]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The file holds another kind of medvault database (e.g. the access log where the node
    /// database was expected).
    #[error("the database is a {found} database, not a {expected} one")]
    WrongDatabase {
        /// The kind found.
        found: String,
        /// The kind expected.
        expected: &'static str,
    },
    /// The backend failed (I/O, corruption).
    #[error("storage backend failure")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database cannot be reached (connection refused or lost). Nothing of the failed
    /// request was written — unless the connection was lost while a commit was under way and
    /// its outcome could not be checked afterwards. The backend reconnects on its next use.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A write op gave up; its savepoint was rolled back. Carries the op's own error.
    #[error("write aborted")]
    Aborted(#[source] Box<dyn std::error::Error + Send + Sync>),
}
