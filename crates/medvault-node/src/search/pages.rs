//! Paging that stays consistent under concurrent writes. A paging link carries a random token
//! (`_page`) naming what this process keeps for [`PAGE_TTL`]: for a search in the default order,
//! the cursor its next page starts from (resources keep their place in that order when
//! updated, and new ones come before the first page, so a walk neither repeats nor skips a
//! resource that stays a match); for a search ordered by content, its matches (id and version,
//! in order), so later pages read exactly those versions. What a token names belongs to the
//! principal that searched (credential, role and purpose); anyone else's `_page` answers as an
//! expired one. Each version is still decided when its page is read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use medvault_core::ResourceType;

use super::Cursor;

/// How long a pinned result set lasts.
pub const PAGE_TTL: Duration = Duration::from_secs(600);
/// Pinned result sets kept at most; when they are all others', a search is not pinned (its
/// links page by offset) rather than evicting someone else's.
pub const MAX_PINNED: usize = 1024;
/// Pinned result sets one principal keeps (its own oldest go first).
pub const MAX_PINNED_PER_OWNER: usize = 16;
/// Matches one result set ordered by content may pin (larger ones page by offset).
pub const MAX_PINNED_ROWS: usize = 10_000;

/// What a paging token names.
#[derive(Debug, PartialEq, Eq)]
pub enum PinnedSet {
    /// A result set ordered by content: the matches, in order (id and version).
    Rows(Vec<(String, u64)>),
    /// A page of a walk: where it starts, and the token of the page before it (`None`: the
    /// first page, which has no token).
    Cursor {
        /// Where the page starts.
        at: Cursor,
        /// The previous page's token.
        previous: Option<String>,
    },
}

/// One pinned result set or page.
#[derive(Debug)]
pub struct Pinned {
    /// The type searched.
    pub rt: ResourceType,
    /// What the token names.
    pub set: PinnedSet,
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

/// Pins `set` of a search of `rt` for `owner`; the token for its links, or `None` when the
/// store is full of other principals' sets (one principal never evicts another's).
pub fn pin(owner: String, rt: ResourceType, set: PinnedSet) -> Option<String> {
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut p = lock();
    p.by_token.retain(|_, v| v.created.elapsed() < PAGE_TTL);
    // A page asked for again names the same next page: its token is handed out again, so
    // reloading a page does not push the owner's other pages out.
    if let PinnedSet::Cursor { .. } = set
        && let Some((t, _)) = p
            .by_token
            .iter()
            .find(|(_, v)| v.owner == owner && v.rt == rt && v.set == set)
    {
        return Some(t.clone());
    }
    // The owner's own oldest sets make room for their new one.
    let mut own: Vec<String> = p
        .order
        .iter()
        .filter(|t| p.by_token.get(*t).is_some_and(|v| v.owner == owner))
        .cloned()
        .collect();
    while own.len() >= MAX_PINNED_PER_OWNER {
        let oldest = own.remove(0);
        p.by_token.remove(&oldest);
    }
    if p.by_token.len() >= MAX_PINNED {
        return None;
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
            set,
            owner,
            created: Instant::now(),
        }),
    );
    Some(token)
}

/// The result set `token` pins, if it is `owner`'s, of `rt` and not expired.
pub fn get(token: &str, owner: &str, rt: &ResourceType) -> Option<Arc<Pinned>> {
    lock()
        .by_token
        .get(token)
        .filter(|p| p.owner == owner && p.rt == *rt && p.created.elapsed() < PAGE_TTL)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_cursor_is_pinned_once() {
        let rt = ResourceType::PATIENT;
        let at = |n| PinnedSet::Cursor {
            at: Cursor {
                before: Some(n),
                matched: 10,
            },
            previous: None,
        };
        let a = pin("again|admin|".into(), rt.clone(), at(5)).unwrap();
        for _ in 0..MAX_PINNED_PER_OWNER + 1 {
            assert_eq!(pin("again|admin|".into(), rt.clone(), at(5)).unwrap(), a);
        }
        assert!(get(&a, "again|admin|", &rt).is_some());
        assert_ne!(pin("again|admin|".into(), rt.clone(), at(6)).unwrap(), a);
        assert_ne!(pin("other|admin|".into(), rt, at(5)).unwrap(), a);
    }

    #[test]
    fn a_principal_evicts_only_its_own_pins() {
        let rt = ResourceType::PATIENT;
        let rows = |id: String| PinnedSet::Rows(vec![(id, 1)]);
        let theirs = pin("other|admin|".into(), rt.clone(), rows("a".into())).unwrap();
        let mine: Vec<String> = (0..MAX_PINNED_PER_OWNER + 4)
            .map(|i| pin("me|admin|".into(), rt.clone(), rows(format!("m{i}"))).unwrap())
            .collect();
        assert!(
            get(&theirs, "other|admin|", &rt).is_some(),
            "another's pin stays"
        );
        assert!(get(&mine[0], "me|admin|", &rt).is_none(), "my oldest went");
        assert!(get(mine.last().unwrap(), "me|admin|", &rt).is_some());
        assert!(
            get(&theirs, "me|admin|", &rt).is_none(),
            "never someone else's"
        );
        assert!(
            get(
                &theirs,
                "other|admin|",
                &ResourceType::from_static("Observation")
            )
            .is_none()
        );
    }
}
