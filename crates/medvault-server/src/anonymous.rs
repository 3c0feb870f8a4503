//! Requests that authenticate no one: limited per client address, and recorded in the access
//! log one by one only up to a budget, the rest counted into summary records.
//!
//! A request is *anonymous* when it ended without an authenticated credential and is not a
//! successful sign-in or token grant (those name the account they opened) nor a call vouched
//! for otherwise (a witness request carrying a valid log signature, a peer on the mutual-TLS
//! listener). Junk (scanners, wrong paths, bad or expired tokens, failed logins) is anonymous.
//!
//! - **Rate limit**: each client address ([`crate::client_addr`]; IPv6 per /64) may make
//!   [`crate::ServerConfig::anonymous_requests_per_minute`] anonymous requests a minute; after
//!   that its requests without an `Authorization` header get 429 until the minute is over
//!   (requests with a credential still run: a valid one must keep working from a crowded
//!   address, and an invalid one is cheap to refuse and counted like any other).
//! - **Access log**: the first [`RECORDED_PER_MINUTE`] anonymous requests a minute (all
//!   addresses together) get their own leaf, as every request did before; the rest are
//!   counted by client address, status and named credential and written as one
//!   `anonymous-requests` summary record per interval (default a minute) and at shutdown, so a
//!   flood adds a bounded number of leaves and every request is still counted. A summary that
//!   cannot be written is kept and counted into the next one.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medvault_node::Node;
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use serde_json::{Value, json};

/// Anonymous requests recorded one by one per minute at most (like refused peer handshakes).
pub const RECORDED_PER_MINUTE: u32 = 30;
/// Anonymous requests per client address per minute by default, before 429.
pub const DEFAULT_PER_MINUTE: u32 = 300;
/// How often counted requests are written as a summary, by default.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses counted per window at most (then the map starts over).
const MAX_ADDRESSES: usize = 100_000;
/// Addresses and credentials kept apart in one summary at most; the rest are lumped together.
const MAX_SUMMARY_KEYS: usize = 10_000;
/// Addresses and credentials a summary record lists by name (the most frequent).
const LISTED: usize = 100;

/// How an anonymous request goes into the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Its own leaf.
    Individually,
    /// Counted into the next summary.
    Counted,
}

/// Requests counted since the last summary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    total: u64,
    first_micros: i64,
    last_micros: i64,
    by_address: HashMap<IpAddr, u64>,
    other_addresses: u64,
    by_status: BTreeMap<u16, u64>,
    by_credential: HashMap<String, u64>,
    other_credentials: u64,
    /// Failed sign-ins by client address: how many, the accounts they named (at most
    /// [`LOGIN_ACCOUNTS`] kept apart), names that matched no account (Sentinel's stuffing rules
    /// read these when the sign-ins were not recorded one by one).
    failed_logins: HashMap<IpAddr, FailedLogins>,
}

/// Accounts kept apart per address in a summary's failed sign-ins.
const LOGIN_ACCOUNTS: usize = 1_000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FailedLogins {
    count: u64,
    accounts: std::collections::HashSet<String>,
    unknown: u64,
}

impl Pending {
    /// Requests counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn add(&mut self, ip: IpAddr, status: u16, credential: Option<&str>, now: i64, n: u64) {
        if self.total == 0 || now < self.first_micros {
            self.first_micros = now;
        }
        self.last_micros = self.last_micros.max(now);
        self.total = self.total.saturating_add(n);
        *self.by_status.entry(status).or_default() += n;
        bump(&mut self.by_address, ip, n, &mut self.other_addresses);
        if let Some(c) = credential {
            bump(
                &mut self.by_credential,
                c.to_owned(),
                n,
                &mut self.other_credentials,
            );
        }
    }

    /// Counts a failed sign-in from `ip` naming `account` (none: the name matched none).
    fn add_login(&mut self, ip: IpAddr, account: Option<&str>) {
        if !self.failed_logins.contains_key(&ip) && self.failed_logins.len() >= MAX_SUMMARY_KEYS {
            return;
        }
        let f = self.failed_logins.entry(ip).or_default();
        f.count += 1;
        match account {
            Some(a) if f.accounts.len() < LOGIN_ACCOUNTS => {
                f.accounts.insert(a.to_owned());
            }
            Some(_) => {}
            None => f.unknown += 1,
        }
    }

    /// Adds `other`'s counts to these (a summary that could not be written).
    fn merge(&mut self, other: Self) {
        if other.total == 0 {
            return;
        }
        for (ip, f) in other.failed_logins {
            let mine = self.failed_logins.entry(ip).or_default();
            mine.count += f.count;
            mine.unknown += f.unknown;
            for a in f.accounts {
                if mine.accounts.len() < LOGIN_ACCOUNTS {
                    mine.accounts.insert(a);
                }
            }
        }
        if self.total == 0 || other.first_micros < self.first_micros {
            self.first_micros = other.first_micros;
        }
        self.last_micros = self.last_micros.max(other.last_micros);
        self.total = self.total.saturating_add(other.total);
        for (s, n) in other.by_status {
            *self.by_status.entry(s).or_default() += n;
        }
        for (ip, n) in other.by_address {
            bump(&mut self.by_address, ip, n, &mut self.other_addresses);
        }
        self.other_addresses += other.other_addresses;
        for (c, n) in other.by_credential {
            bump(&mut self.by_credential, c, n, &mut self.other_credentials);
        }
        self.other_credentials += other.other_credentials;
    }

    /// The summary record.
    pub fn detail(&self, now_micros: i64) -> AuditRecord {
        let statuses: serde_json::Map<String, Value> = self
            .by_status
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        let (addresses, more_addresses) = top(&self.by_address, |ip| ip.to_string());
        let mut logins: Vec<(&IpAddr, &FailedLogins)> = self.failed_logins.iter().collect();
        logins.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        let logins: Vec<Value> = logins
            .into_iter()
            .take(LISTED)
            .map(|(ip, f)| {
                json!({"id": ip.to_string(), "count": f.count, "accounts": f.accounts.len(),
                       "unknown_names": f.unknown})
            })
            .collect();
        let (credentials, more_credentials) = top(&self.by_credential, Clone::clone);
        let outcome = if self.by_status.keys().any(|s| *s >= 400) {
            AuditOutcome::Denied
        } else {
            AuditOutcome::Success
        };
        AuditRecord::new(
            AuditKind::Summary,
            now_micros,
            "anonymous-requests",
            outcome,
        )
        .with("count", self.total)
        .with("since", medvault_node::clock::instant(self.first_micros))
        .with("until", medvault_node::clock::instant(self.last_micros))
        .with("statuses", statuses)
        .with("addresses", addresses)
        .with(
            "requests_from_other_addresses",
            more_addresses + self.other_addresses,
        )
        .with("credentials", credentials)
        .with("failed_logins", logins)
        .with(
            "requests_with_other_credentials",
            more_credentials + self.other_credentials,
        )
    }
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: K, n: u64, other: &mut u64) {
    if let Some(c) = map.get_mut(&key) {
        *c += n;
    } else if map.len() < MAX_SUMMARY_KEYS {
        map.insert(key, n);
    } else {
        *other += n;
    }
}

/// The [`LISTED`] most frequent keys with their counts, and the count of the rest.
fn top<K>(map: &HashMap<K, u64>, name: impl Fn(&K) -> String) -> (Vec<Value>, u64) {
    let mut all: Vec<(String, u64)> = map.iter().map(|(k, n)| (name(k), *n)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rest = all.iter().skip(LISTED).map(|(_, n)| n).sum();
    let listed = all
        .into_iter()
        .take(LISTED)
        .map(|(k, n)| json!({"id": k, "count": n}))
        .collect();
    (listed, rest)
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    per_address: HashMap<IpAddr, u32>,
    recorded: u32,
    pending: Pending,
}

/// Anonymous traffic: per-address counts for the rate limit, the budget of individual
/// records, and what was counted since the last summary.
#[derive(Debug)]
pub struct AnonymousTraffic(Mutex<State>);

impl Default for AnonymousTraffic {
    fn default() -> Self {
        Self(Mutex::new(State {
            window_start: Instant::now(),
            per_address: HashMap::new(),
            recorded: 0,
            pending: Pending::default(),
        }))
    }
}

impl State {
    fn roll(&mut self) {
        if self.window_start.elapsed() >= WINDOW {
            self.window_start = Instant::now();
            self.per_address.clear();
            self.recorded = 0;
        }
    }
}

impl AnonymousTraffic {
    /// True if the address `ip` made `limit` or more anonymous requests this minute.
    pub fn over_limit(&self, ip: IpAddr, limit: u32) -> bool {
        let Ok(mut s) = self.0.lock() else {
            return false;
        };
        s.roll();
        s.per_address
            .get(&crate::client_addr::limit_key(ip))
            .is_some_and(|n| *n >= limit)
    }

    /// Counts an anonymous request from `ip` that was answered `status` (naming `credential`,
    /// if it presented a known one), and says whether it gets its own record.
    pub fn count(
        &self,
        ip: IpAddr,
        status: u16,
        credential: Option<&str>,
        sign_in_failed: bool,
        now: i64,
    ) -> Record {
        let Ok(mut s) = self.0.lock() else {
            // A poisoned lock: record it (fail towards the audit trail).
            return Record::Individually;
        };
        s.roll();
        if s.per_address.len() >= MAX_ADDRESSES {
            s.per_address.clear();
        }
        let n = s
            .per_address
            .entry(crate::client_addr::limit_key(ip))
            .or_default();
        *n = n.saturating_add(1);
        if s.recorded < RECORDED_PER_MINUTE {
            s.recorded += 1;
            return Record::Individually;
        }
        s.pending.add(ip, status, credential, now, 1);
        if sign_in_failed {
            s.pending.add_login(ip, credential);
        }
        Record::Counted
    }

    /// Takes what was counted since the last summary (nothing if nothing was).
    pub fn take(&self) -> Option<Pending> {
        let mut s = self.0.lock().ok()?;
        (s.pending.total > 0).then(|| std::mem::take(&mut s.pending))
    }

    /// Puts back counts whose summary could not be written, for the next one.
    pub fn put_back(&self, p: Pending) {
        if let Ok(mut s) = self.0.lock() {
            s.pending.merge(p);
        }
    }
}

/// Writes the summary of what was counted, if anything was; on failure keeps the counts for
/// the next attempt. Returns the summary's leaf.
pub async fn flush(node: &Node, traffic: &AnonymousTraffic) -> Option<u64> {
    let pending = traffic.take()?;
    match node.record_audit_now_async(|now| pending.detail(now)).await {
        Ok(leaf) => Some(leaf),
        Err(e) => {
            tracing::warn!(error = %e.message, count = pending.total(), "recording a summary of anonymous requests failed; kept for the next one");
            traffic.put_back(pending);
            None
        }
    }
}

/// A response to a request whose sender proved who it is without a bearer credential (a
/// witness submission carrying a valid signature of the log): not anonymous.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vouched;

/// Writes a summary every `interval` while the server runs.
pub async fn summary_task(node: Arc<Node>, traffic: Arc<AnonymousTraffic>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        flush(&node, &traffic).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn budget_then_counting_without_losing_any() {
        let t = AnonymousTraffic::default();
        let mut individually = 0;
        for i in 0..100u16 {
            let from = if i % 2 == 0 { "192.0.2.1" } else { "192.0.2.2" };
            let status = if i < 90 { 404 } else { 401 };
            let cred = (i >= 95).then_some("tok_x");
            if t.count(ip(from), status, cred, false, i64::from(i)) == Record::Individually {
                individually += 1;
            }
        }
        assert_eq!(individually, RECORDED_PER_MINUTE);
        assert!(t.over_limit(ip("192.0.2.1"), 50));
        assert!(!t.over_limit(ip("192.0.2.1"), 51));
        assert!(!t.over_limit(ip("192.0.2.3"), 1));
        let p = t.take().unwrap();
        assert_eq!(p.total(), 70);
        assert!(t.take().is_none(), "taken once");
        let record = p.detail(1_000_000);
        assert_eq!(record.outcome, AuditOutcome::Denied);
        let d = record.to_json();
        assert_eq!(d["count"], 70);
        assert_eq!(d["statuses"]["404"], 60);
        assert_eq!(d["statuses"]["401"], 10);
        assert_eq!(d["addresses"].as_array().unwrap().len(), 2);
        assert_eq!(d["credentials"][0], json!({"id": "tok_x", "count": 5}));
        assert_eq!(d["outcome"], "denied");
        assert_eq!(d["type"], "summary");
        // A summary that failed is counted into the next one.
        t.put_back(p);
        t.count(ip("192.0.2.9"), 404, None, false, 200);
        assert_eq!(t.take().unwrap().total(), 71);
    }

    #[test]
    fn summaries_list_the_most_frequent_and_count_the_rest() {
        let mut p = Pending::default();
        for i in 0..(LISTED as u32 + 5) {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            p.add(addr, 404, None, 1, u64::from(i) + 1);
        }
        let d = p.detail(2).to_json();
        assert_eq!(d["addresses"].as_array().unwrap().len(), LISTED);
        assert_eq!(d["addresses"][0]["count"], LISTED as u64 + 5);
        assert_eq!(d["requests_from_other_addresses"], 1 + 2 + 3 + 4 + 5);
    }
}
