//! Paging that stays consistent under concurrent writes. A paging link carries a random token
//! (`_page`) naming what this process keeps for [`PAGE_TTL`]: for a search in the default order,
//! the cursor its next page starts from (resources keep their place in that order when
//! updated, and new ones come before the first page, so a walk neither repeats nor skips a
//! resource that stays a match); for a search ordered by content, its matches (id and version,
//! in order), so later pages read exactly those versions. What a token names belongs to the
//! principal that searched (credential, role and purpose) and to that search (its parameters
//! but paging's); anyone else's `_page`, or one sent with other parameters, answers as an
//! expired one. Each version is still decided when its page is read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use medvault_core::ResourceType;

use super::Cursor;

/// How long a pinned result set lasts.
pub const PAGE_TTL: Duration = Duration::from_secs(600);
/// Paging tokens kept at most; when full, the holder with the most loses its oldest.
pub const MAX_PINNED: usize = 1024;
/// Paging tokens one holder (a credential, whatever role or purpose it declares) keeps; its own
/// oldest go first.
pub const MAX_PINNED_PER_OWNER: usize = 16;
/// Matches one result set ordered by content may pin (larger ones page by offset).
pub const MAX_PINNED_ROWS: usize = 10_000;
/// Matches the process keeps pinned at most (about 40 MB), whoever holds them.
pub const MAX_ROWS_PINNED: usize = 500_000;

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

impl PinnedSet {
    /// The matches it holds.
    fn rows(&self) -> usize {
        match self {
            Self::Rows(rows) => rows.len(),
            Self::Cursor { .. } => 0,
        }
    }
}

/// One pinned result set or page.
#[derive(Debug)]
pub struct Pinned {
    /// The type searched.
    pub rt: ResourceType,
    /// What the token names.
    pub set: PinnedSet,
    /// The search it belongs to (its parameters but paging's, canonical).
    query: String,
    owner: String,
    created: Instant,
}

impl Pinned {
    /// The credential that holds it: the owner's first part (the same for every role and
    /// purpose it declares).
    fn holder(&self) -> &str {
        holder(&self.owner)
    }
}

fn holder(owner: &str) -> &str {
    owner.split('|').next().unwrap_or(owner)
}

#[derive(Default)]
struct Pins {
    by_token: HashMap<String, Arc<Pinned>>,
    /// Tokens, oldest first.
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

impl Pins {
    fn remove(&mut self, token: &str) {
        self.by_token.remove(token);
        self.order.retain(|t| t != token);
    }

    /// The oldest token of `holder`, if any.
    fn oldest_of(&self, holder: &str) -> Option<String> {
        self.order
            .iter()
            .find(|t| self.by_token.get(*t).is_some_and(|v| v.holder() == holder))
            .cloned()
    }
}

/// Pins `set` of the search `query` of `rt` for `owner`; the token for its links. A holder
/// keeps at most [`MAX_PINNED_PER_OWNER`] (its own oldest make room); when the process keeps
/// [`MAX_PINNED`], the holder with the most loses its oldest, so nobody can crowd others out.
pub fn pin(owner: String, rt: ResourceType, query: String, set: PinnedSet) -> String {
    let mut p = lock();
    // Tokens are kept in the order they were made, and all live as long: the expired ones are
    // at the front.
    while let Some(t) = p.order.front().cloned() {
        if p.by_token
            .get(&t)
            .is_some_and(|v| v.created.elapsed() < PAGE_TTL)
        {
            break;
        }
        p.order.pop_front();
        p.by_token.remove(&t);
    }
    // A page asked for again names the same next page: its token is handed out again, so
    // reloading a page does not push the owner's other pages out.
    if let PinnedSet::Cursor { .. } = set
        && let Some((t, _)) = p
            .by_token
            .iter()
            .find(|(_, v)| v.owner == owner && v.rt == rt && v.query == query && v.set == set)
    {
        return t.clone();
    }
    let mine = holder(&owner).to_owned();
    while p.by_token.values().filter(|v| v.holder() == mine).count() >= MAX_PINNED_PER_OWNER {
        let Some(oldest) = p.oldest_of(&mine) else {
            break;
        };
        p.remove(&oldest);
    }
    // Room by count and by pinned matches: whoever holds the most (tokens, then matches)
    // gives up their oldest.
    let rows = set.rows();
    loop {
        let too_many = p.by_token.len() >= MAX_PINNED;
        let too_big =
            p.by_token.values().map(|v| v.set.rows()).sum::<usize>() + rows > MAX_ROWS_PINNED;
        if !too_many && !too_big {
            break;
        }
        // (tokens, matches) per holder; the one short of room decides who holds the most.
        let mut held: HashMap<&str, (usize, usize)> = HashMap::new();
        for v in p.by_token.values() {
            let h = held.entry(v.holder()).or_default();
            h.0 += 1;
            h.1 += v.set.rows();
        }
        let heaviest = held
            .into_iter()
            .max_by_key(|(_, (n, r))| if too_big { (*r, *n) } else { (*n, *r) })
            .map(|(h, _)| h.to_owned());
        let Some(oldest) = heaviest.and_then(|h| p.oldest_of(&h)) else {
            break;
        };
        p.remove(&oldest);
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    p.order.push_back(token.clone());
    p.by_token.insert(
        token.clone(),
        Arc::new(Pinned {
            rt,
            set,
            query,
            owner,
            created: Instant::now(),
        }),
    );
    token
}

/// The result set `token` pins, if it is `owner`'s, of the search `query` of `rt`, and not
/// expired.
pub fn get(token: &str, owner: &str, rt: &ResourceType, query: &str) -> Option<Arc<Pinned>> {
    lock()
        .by_token
        .get(token)
        .filter(|p| {
            p.owner == owner && p.rt == *rt && p.query == query && p.created.elapsed() < PAGE_TTL
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is the process's: these tests take turns.
    fn turn() -> std::sync::MutexGuard<'static, ()> {
        static TURN: Mutex<()> = Mutex::new(());
        TURN.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn rows(id: String) -> PinnedSet {
        PinnedSet::Rows(vec![(id, 1)])
    }

    #[test]
    fn the_same_cursor_is_pinned_once() {
        let _turn = turn();
        let rt = ResourceType::PATIENT;
        let at = |n| PinnedSet::Cursor {
            at: Cursor {
                before: Some(n),
                matched: 10,
            },
            previous: None,
        };
        let q = || "family=a".to_owned();
        let a = pin("again|admin|".into(), rt.clone(), q(), at(5));
        for _ in 0..MAX_PINNED_PER_OWNER + 1 {
            assert_eq!(pin("again|admin|".into(), rt.clone(), q(), at(5)), a);
        }
        assert!(get(&a, "again|admin|", &rt, &q()).is_some());
        assert!(
            get(&a, "again|admin|", &rt, "family=b").is_none(),
            "another search's link"
        );
        assert_ne!(pin("again|admin|".into(), rt.clone(), q(), at(6)), a);
        assert_ne!(
            pin("again|admin|".into(), rt.clone(), "family=b".into(), at(5)),
            a
        );
        assert_ne!(pin("other|admin|".into(), rt, q(), at(5)), a);
    }

    #[test]
    fn a_holder_keeps_sixteen_whatever_purposes_it_declares() {
        let _turn = turn();
        let rt = ResourceType::PATIENT;
        let mine: Vec<String> = (0..MAX_PINNED_PER_OWNER + 4)
            .map(|i| {
                let owner = format!("purposes|admin|P{i}");
                let t = pin(
                    owner.clone(),
                    rt.clone(),
                    String::new(),
                    rows(format!("m{i}")),
                );
                (t, owner)
            })
            .map(|(t, _)| t)
            .collect();
        let kept = mine
            .iter()
            .enumerate()
            .filter(|(i, t)| get(t, &format!("purposes|admin|P{i}"), &rt, "").is_some())
            .count();
        assert_eq!(kept, MAX_PINNED_PER_OWNER);
        assert!(
            get(&mine[0], "purposes|admin|P0", &rt, "").is_none(),
            "the oldest went"
        );
    }

    #[test]
    fn a_full_table_takes_from_the_heaviest_holder() {
        let _turn = turn();
        let rt = ResourceType::from_static("Observation");
        let theirs = pin(
            "victim|admin|".into(),
            rt.clone(),
            String::new(),
            rows("v".into()),
        );
        // Many holders fill the table (each within its own cap).
        for h in 0..(MAX_PINNED / MAX_PINNED_PER_OWNER + 2) {
            for i in 0..MAX_PINNED_PER_OWNER {
                pin(
                    format!("filler{h}|admin|"),
                    rt.clone(),
                    String::new(),
                    rows(format!("{i}")),
                );
            }
        }
        assert!(
            get(&theirs, "victim|admin|", &rt, "").is_some(),
            "a holder of one is not crowded out"
        );
        let late = pin(
            "late|admin|".into(),
            rt.clone(),
            String::new(),
            rows("l".into()),
        );
        assert!(get(&late, "late|admin|", &rt, "").is_some());
        assert!(lock().by_token.len() <= MAX_PINNED);
    }

    #[test]
    fn pinned_matches_are_bounded_whoever_holds_them() {
        let _turn = turn();
        let rt = ResourceType::from_static("Condition");
        let big = |n: usize| PinnedSet::Rows((0..n).map(|i| (format!("r{i}"), 1)).collect());
        let small = pin("modest|admin|".into(), rt.clone(), String::new(), big(10));
        for h in 0..(MAX_ROWS_PINNED / MAX_PINNED_ROWS + 4) {
            pin(
                format!("hoarder{h}|admin|"),
                rt.clone(),
                String::new(),
                big(MAX_PINNED_ROWS),
            );
        }
        let total: usize = lock().by_token.values().map(|v| v.set.rows()).sum();
        assert!(total <= MAX_ROWS_PINNED, "{total}");
        assert!(
            get(&small, "modest|admin|", &rt, "").is_some(),
            "the small holder keeps theirs"
        );
    }

    #[test]
    fn a_principal_evicts_only_its_own_pins() {
        let _turn = turn();
        let rt = ResourceType::PATIENT;
        let theirs = pin(
            "other|admin|".into(),
            rt.clone(),
            String::new(),
            rows("a".into()),
        );
        let mine: Vec<String> = (0..MAX_PINNED_PER_OWNER + 4)
            .map(|i| {
                pin(
                    "me|admin|".into(),
                    rt.clone(),
                    String::new(),
                    rows(format!("m{i}")),
                )
            })
            .collect();
        assert!(
            get(&theirs, "other|admin|", &rt, "").is_some(),
            "another's pin stays"
        );
        assert!(
            get(&mine[0], "me|admin|", &rt, "").is_none(),
            "my oldest went"
        );
        assert!(get(mine.last().unwrap(), "me|admin|", &rt, "").is_some());
        assert!(
            get(&theirs, "me|admin|", &rt, "").is_none(),
            "never someone else's"
        );
        assert!(
            get(
                &theirs,
                "other|admin|",
                &ResourceType::from_static("Observation"),
                ""
            )
            .is_none()
        );
    }
}
