//! The binary's choice of database backend: `--database` names PostgreSQL, else the node's data
//! lives in SQLite files in its data directory. The node itself opens whatever it is given.

use std::path::Path;

use medvault_store::Databases;
use medvault_store_postgres::{Target, UrlError};
use medvault_store_sqlite::Embedded;

/// Where a node keeps its records, keys, identities and both logs. The root key file always
/// stays in the data directory, never in the database.
#[derive(Debug, Clone, Default)]
pub(crate) enum Database {
    /// SQLite files in the data directory (`medvault.db`, `access.db`): nothing to install.
    #[default]
    Embedded,
    /// A PostgreSQL database shared by any number of medvault processes (the node's tables in
    /// one schema, the access log's in another).
    Postgres(Box<Target>),
}

impl Database {
    /// `None` or `""` for the embedded default, else a `postgres://` URL.
    ///
    /// # Errors
    /// What is wrong with the URL (never echoing a password).
    pub(crate) fn parse(url: Option<&str>) -> Result<Self, UrlError> {
        match url.map(str::trim) {
            None | Some("") => Ok(Self::Embedded),
            Some(url) => Target::parse(url).map(|t| Self::Postgres(Box::new(t))),
        }
    }

    /// The backend's databases for the node whose data directory is `data_dir`.
    pub(crate) fn at(&self, data_dir: &Path) -> Box<dyn Databases> {
        match self {
            Self::Embedded => Box::new(Embedded::new(data_dir)),
            Self::Postgres(t) => Box::new(t.as_ref().clone()),
        }
    }
}
