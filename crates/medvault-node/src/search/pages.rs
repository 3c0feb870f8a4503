//! Paging that stays consistent under concurrent writes: when a search has more than one page,
//! its matches (id and version, in order) are pinned for [`PAGE_TTL`] under a random token the
//! paging links carry (`_page`). Later pages read exactly those versions, so a resource written,
//! moved or deleted meanwhile neither shifts the pages nor appears twice. A pinned set belongs
//! to the principal that searched (credential, role and purpose); anyone else's `_page` answers
//! as an expired one. Each version is still decided when its page is read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use medvault_core::ResourceType;

/// How long a pinned result set lasts.
pub const PAGE_TTL: Duration = Duration::from_secs(600);
/// Pinned result sets kept at most (the oldest go first).
pub const MAX_PINNED: usize = 256;
/// Matches one result set may pin (larger ones page by offset).
pub const MAX_PINNED_ROWS: usize = 10_000;

/// One pinned result set.
#[derive(Debug)]
pub struct Pinned {
    /// The type searched.
    pub rt: ResourceType,
    /// The matches, in order: id and version.
    pub rows: Vec<(String, u64)>,
    owner: String,
    created: Instant,
}

#[derive(Default)]
struct Pins {
    by_token: HashMap<String, Arc<Pinned>>,
    order: VecDeque<String>,
}

/// The process's pinned result sets (like the request counter, one per process: a link works
/// on the process that answered the first page).
fn pins() -> &'static Mutex<Pins> {
    static PINS: OnceLock<Mutex<Pins>> = OnceLock::new();
    PINS.get_or_init(Mutex::default)
}

fn lock() -> std::sync::MutexGuard<'static, Pins> {
    // Every change under the lock is one insert or remove: a poisoned map is still whole.
    pins()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pins `rows` of a search of `rt` for `owner`; the token for its links.
pub fn pin(owner: String, rt: ResourceType, rows: Vec<(String, u64)>) -> String {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut p = lock();
    p.by_token.retain(|_, v| v.created.elapsed() < PAGE_TTL);
    while p.by_token.len() >= MAX_PINNED {
        let Some(oldest) = p.order.pop_front() else {
            break;
        };
        p.by_token.remove(&oldest);
    }
    let live: std::collections::HashSet<&String> = p.by_token.keys().collect();
    let order: VecDeque<String> = p
        .order
        .iter()
        .filter(|t| live.contains(t))
        .cloned()
        .collect();
    p.order = order;
    p.order.push_back(token.clone());
    p.by_token.insert(
        token.clone(),
        Arc::new(Pinned {
            rt,
            rows,
            owner,
            created: Instant::now(),
        }),
    );
    token
}

/// The result set `token` pins, if it is `owner`'s, of `rt` and not expired.
pub fn get(token: &str, owner: &str, rt: &ResourceType) -> Option<Arc<Pinned>> {
    lock()
        .by_token
        .get(token)
        .filter(|p| p.owner == owner && p.rt == *rt && p.created.elapsed() < PAGE_TTL)
        .cloned()
}
