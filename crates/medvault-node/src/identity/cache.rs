//! Recently validated credentials, by the SHA-256 of the credential: shared by sessions, API
//! tokens and OAuth2 access tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medvault_store::{Store, TokenHash};

use crate::error::Error;

/// Entries a cache holds at most; a full cache is emptied.
const MAX_CACHED: usize = 100_000;

/// Recently validated credentials of one kind, by the SHA-256 of the credential: a request
/// with a cached credential costs a hash and a map lookup. Entries are trusted for a bounded
/// time (the caller's), so a credential ended elsewhere (another process) stops working soon.
#[derive(Debug)]
pub struct CredentialCache<V>(Mutex<HashMap<TokenHash, (V, Instant)>>);

impl<V> Default for CredentialCache<V> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone> CredentialCache<V> {
    /// The cached value for `hash`, if it was stored less than `ttl` ago.
    pub fn fresh(&self, hash: &TokenHash, ttl: Duration) -> Option<V> {
        let map = self.0.lock().ok()?;
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(v, _)| v.clone())
    }

    /// The credential `token`: its hash, and the value cached for it if it was validated less
    /// than `ttl` ago, else what `load` reads from `store` on a blocking thread (`None`: not a
    /// known credential); the store is only shared with that thread on a miss. The flag is true
    /// when it was read now: the caller checks it, then caches it with [`Self::keep`] (or
    /// [`Self::put`]).
    ///
    /// # Errors
    /// `unknown()` when the credential is not known; `load`'s errors; 500 if its thread fails.
    pub async fn find<E>(
        &self,
        token: &str,
        ttl: Duration,
        store: &Arc<dyn Store>,
        load: impl FnOnce(&dyn Store, TokenHash) -> Result<Option<V>, E> + Send + 'static,
        unknown: impl FnOnce() -> E,
    ) -> Result<(TokenHash, V, bool), E>
    where
        V: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let hash = TokenHash::of(token);
        if let Some(value) = self.fresh(&hash, ttl) {
            return Ok((hash, value, false));
        }
        let store = Arc::clone(store);
        let loaded = tokio::task::spawn_blocking(move || load(store.as_ref(), hash))
            .await
            .map_err(|e| Error::internal(&e))??;
        Ok((hash, loaded.ok_or_else(unknown)?, true))
    }

    /// Caches `value` for `hash`, found by [`Self::find`] (and checked, maybe updated, by the
    /// caller): as validated now if it was `loaded` from the store now ([`Self::put`]), else
    /// keeping the time it was validated at ([`Self::refresh`]).
    pub fn keep(&self, hash: TokenHash, value: V, loaded: bool) {
        if loaded {
            self.put(hash, value);
        } else {
            self.refresh(hash, value);
        }
    }

    /// Caches `value` for `hash` (emptying the cache when it is full).
    pub fn put(&self, hash: TokenHash, value: V) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= MAX_CACHED {
                map.clear();
            }
            map.insert(hash, (value, Instant::now()));
        }
    }

    /// Replaces the cached value for `hash`, keeping the time it was validated at (so the
    /// caller's recheck still happens on time); caches it anew if it is not there.
    pub fn refresh(&self, hash: TokenHash, value: V) {
        if let Ok(mut map) = self.0.lock() {
            match map.get_mut(&hash) {
                Some((v, _)) => *v = value,
                None => {
                    if map.len() >= MAX_CACHED {
                        map.clear();
                    }
                    map.insert(hash, (value, Instant::now()));
                }
            }
        }
    }

    /// Forgets `hash` (after a logout or expiry).
    pub fn forget(&self, hash: &TokenHash) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_keeps_the_validation_time_and_put_renews_it() {
        let cache = CredentialCache::<u32>::default();
        let ttl = Duration::from_millis(50);
        let one = TokenHash::from_bytes([1; 32]);
        assert_eq!(cache.fresh(&one, ttl), None);
        cache.put(one, 1);
        assert_eq!(cache.fresh(&one, ttl), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        // Updating the value (a session's last use) does not make it fresh again...
        cache.refresh(one, 2);
        assert_eq!(cache.fresh(&one, ttl), None);
        // ...validating it again does.
        cache.put(one, 3);
        assert_eq!(cache.fresh(&one, ttl), Some(3));
        cache.forget(&one);
        assert_eq!(cache.fresh(&one, ttl), None);
    }
}
