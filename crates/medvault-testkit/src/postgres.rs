//! A scratch PostgreSQL schema for tests that run when `MEDVAULT_TEST_POSTGRES_URL` names a
//! server (`.ci/run` sets it).

use std::sync::atomic::{AtomicUsize, Ordering};

use medvault_store_postgres::Target;

/// A database URL with a schema of its own, dropped when the guard goes.
#[derive(Debug)]
pub struct Scratch {
    /// The URL, with its `schema` parameter.
    pub url: String,
    target: Target,
}

impl Scratch {
    /// A new empty schema on the test server; `None` (after saying that `test` skipped) when no
    /// test server is configured.
    #[must_use]
    pub fn new(test: &str) -> Option<Self> {
        let base = match std::env::var("MEDVAULT_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                eprintln!("{test}: skipped (set MEDVAULT_TEST_POSTGRES_URL to run it)");
                return None;
            }
        };
        static N: AtomicUsize = AtomicUsize::new(0);
        let schema = format!(
            "mve2e_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema={schema}");
        let target = Target::parse(&url).expect("MEDVAULT_TEST_POSTGRES_URL is a postgres:// URL");
        target.drop_all().expect("an empty scratch schema");
        Some(Self { url, target })
    }

    /// The same database reached through a proxy on 127.0.0.1:`port`.
    #[must_use]
    pub fn via(&self, port: u16) -> String {
        let (scheme, rest) = self.url.split_once("://").expect("a URL");
        let (auth_host, path) = rest.split_once('/').expect("a database path");
        let auth = auth_host
            .rsplit_once('@')
            .map_or(String::new(), |(a, _)| format!("{a}@"));
        format!("{scheme}://{auth}127.0.0.1:{port}/{path}")
    }

    /// `host:port` of the database server.
    #[must_use]
    pub fn server_address(&self) -> String {
        self.target
            .describe()
            .trim_start_matches("postgres://")
            .split('/')
            .next()
            .expect("an address")
            .to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.target.drop_all();
    }
}
