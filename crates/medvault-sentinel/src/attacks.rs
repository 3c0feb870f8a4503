//! Attacks from the same stream: credential stuffing and password spraying, id scanning, bulk
//! exfiltration, mass modification, a peer's bad or replayed bundles, bursts of refusals.
//!
//! Each rule counts events of one actor (an address, a user, an app, a peer, or the whole node)
//! in a sliding window and fires when the counts pass its limits; the alert names the actor
//! and carries the counts that made it fire. A rule fires once per actor per window (later
//! firings in the window are counted into the next alert). Memory is bounded: each window
//! keeps at most [`MAX_ITEMS`] events and the detector at most [`MAX_ACTORS`] actors a rule
//! (the oldest are forgotten first).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

use serde::Deserialize;

use crate::event::{Action, Event, Outcome};

/// Events one window keeps at most (a rule has fired long before).
pub const MAX_ITEMS: usize = 4096;
/// Actors one rule follows at most.
pub const MAX_ACTORS: usize = 50_000;

const MINUTE: i64 = 60;

/// What kind of attack an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttackKind {
    /// Many failed sign-ins from one address across many accounts.
    CredentialStuffing,
    /// A sign-in that succeeded from an address that was stuffing credentials.
    LoginAfterStuffing,
    /// Few attempts each against many accounts (from one address or across the node).
    PasswordSpraying,
    /// Many requests for ids that do not exist or are refused.
    IdScanning,
    /// One user or app reaching far more patients than anyone should in an hour.
    BulkExfiltration,
    /// Many deletions by one user or app in minutes (ransomware-like).
    MassDeletion,
    /// Many changes (updates and deletions) by one user or app in minutes, far above its usual.
    MassModification,
    /// A peer's bundles refused: malformed, badly signed, replayed.
    PeerAbuse,
    /// Many refused requests by one user, or anonymous ones from one address.
    DeniedBurst,
}

/// The address an actor is known by: an IPv4 address as it is, an IPv6 address by its /64
/// (one subscriber's network: rotating within it is one actor), anything else as it is.
pub fn address_key(address: &str) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
        Ok(std::net::IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map_or_else(|| address.to_owned(), |v4| v4.to_string()),
        _ => address.to_owned(),
    }
}

/// Every kind, in the order the documentation lists them.
pub const KINDS: [AttackKind; 9] = [
    AttackKind::CredentialStuffing,
    AttackKind::LoginAfterStuffing,
    AttackKind::PasswordSpraying,
    AttackKind::IdScanning,
    AttackKind::BulkExfiltration,
    AttackKind::MassDeletion,
    AttackKind::MassModification,
    AttackKind::PeerAbuse,
    AttackKind::DeniedBurst,
];

impl AttackKind {
    /// The kind's name in alerts and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::CredentialStuffing => "credential-stuffing",
            Self::LoginAfterStuffing => "login-after-stuffing",
            Self::PasswordSpraying => "password-spraying",
            Self::IdScanning => "id-scanning",
            Self::BulkExfiltration => "bulk-exfiltration",
            Self::MassDeletion => "mass-deletion",
            Self::MassModification => "mass-modification",
            Self::PeerAbuse => "peer-abuse",
            Self::DeniedBurst => "denied-burst",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        KINDS.into_iter().find(|k| k.name() == name)
    }
}

/// Who an attack alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A client address.
    Address(String),
    /// A user or API token.
    User(String),
    /// An OAuth client (app).
    Client(String),
    /// A peer node.
    Peer(String),
    /// The node as a whole (a spray spread over many addresses).
    Node,
}

impl Actor {
    /// `address:…`, `user:…`, `client:…`, `peer:…` or `node`.
    pub fn label(&self) -> String {
        match self {
            Self::Address(a) => format!("address:{a}"),
            Self::User(u) => format!("user:{u}"),
            Self::Client(c) => format!("client:{c}"),
            Self::Peer(p) => format!("peer:{p}"),
            Self::Node => "node".to_owned(),
        }
    }
}

/// An attack found in the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackAlert {
    pub kind: AttackKind,
    /// The time of the event that made the rule fire (seconds).
    pub time: i64,
    pub actor: Actor,
    /// The user concerned, when there is one (the actor, or the account a stuffed login opened).
    pub user: Option<String>,
    /// The address concerned, when there is one.
    pub address: Option<String>,
    /// The counts that made it fire, by name.
    pub reasons: Vec<(&'static str, f64)>,
    /// Firings of this rule for this actor held back since its last alert.
    pub suppressed_before: u64,
}

impl AttackAlert {
    /// `{"kind", "actor", "user"?, "address"?, "reasons": {name: value}, "suppressed_before"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let reasons: serde_json::Map<String, serde_json::Value> = self
            .reasons
            .iter()
            .map(|(k, v)| ((*k).to_owned(), number(*v)))
            .collect();
        let mut j = serde_json::json!({
            "kind": self.kind.name(),
            "actor": self.actor.label(),
            "reasons": reasons,
            "suppressed_before": self.suppressed_before,
        });
        if let Some(u) = &self.user {
            j["user"] = u.as_str().into();
        }
        if let Some(a) = &self.address {
            j["address"] = a.as_str().into();
        }
        j
    }
}

/// A count as a JSON integer, anything else as a number.
fn number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        (v as i64).into()
    } else {
        v.into()
    }
}

/// When each rule fires. `docs/sentinel.md` explains every limit; all are counts within the
/// rule's window.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Failed sign-ins from one address in 10 minutes…
    pub stuffing_failures: u32,
    /// …naming at least this many different accounts (names that match no account count
    /// one each).
    pub stuffing_accounts: u32,
    /// Failed sign-ins from one address in an hour (a paced attack), with as many accounts.
    pub stuffing_failures_hour: u32,
    /// Different real accounts failing from one address in an hour, at most
    /// [`Limits::spraying_attempts_per_account`] attempts each on average.
    pub spraying_accounts: u32,
    /// Different real accounts failing across the node in an hour (from at least three
    /// addresses), at the same low rate.
    pub spraying_accounts_node: u32,
    /// The most attempts per account on average that still looks like a spray.
    pub spraying_attempts_per_account: f64,
    /// Different ids asked for in 5 minutes that were not found or were refused.
    pub scanning_misses: u32,
    /// Different patients one user or app reached in an hour.
    pub bulk_patients: u32,
    /// Deletions by one user in 10 minutes.
    pub mass_deletes: u32,
    /// Changes (updates and deletions) by one user in 10 minutes.
    pub mass_changes: u32,
    /// Refused bundles from one peer (or unnamed sender address) in an hour (repeats of one
    /// bundle, a sender's retries, count once).
    pub peer_refusals: u32,
    /// Refused requests by one user in 5 minutes.
    pub denied_user: u32,
    /// Refused anonymous requests from one address in 5 minutes.
    pub denied_address: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            stuffing_failures: 20,
            stuffing_accounts: 3,
            stuffing_failures_hour: 60,
            spraying_accounts: 8,
            spraying_accounts_node: 20,
            spraying_attempts_per_account: 3.0,
            scanning_misses: 20,
            bulk_patients: 500,
            mass_deletes: 25,
            mass_changes: 200,
            peer_refusals: 3,
            denied_user: 30,
            denied_address: 200,
        }
    }
}

/// Events of one actor in a sliding window: their times and keys, and how often each key
/// occurs (for distinct counts).
#[derive(Debug, Default)]
struct Window {
    items: VecDeque<(i64, u64, u32)>,
    keys: HashMap<u64, u32>,
    weight: u64,
    last: i64,
    /// When the rule last fired for this actor.
    fired: Option<i64>,
    held_back: u64,
    /// The actor's usual peak: the most it reached in one window-long bucket before, decaying
    /// ([`Window::usual`]); a surge is measured against it.
    usual: f64,
    bucket: i64,
    bucket_max: u64,
    /// The previous bucket's most: usual only one bucket later, so a surge that began in it
    /// does not count as usual while the window still holds it.
    pending: u64,
}

impl Window {
    fn push(&mut self, now: i64, span: i64, key: u64, weight: u32) {
        self.expire(now, span);
        if self.items.len() >= MAX_ITEMS {
            self.pop();
        }
        self.items.push_back((now, key, weight));
        *self.keys.entry(key).or_default() += 1;
        self.weight += u64::from(weight);
        self.last = self.last.max(now);
    }

    fn expire(&mut self, now: i64, span: i64) {
        while self.items.front().is_some_and(|(t, _, _)| now - t >= span) {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((_, key, weight)) = self.items.pop_front() {
            if let Some(n) = self.keys.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.keys.remove(&key);
                }
            }
            self.weight -= u64::from(weight);
        }
    }

    fn distinct(&self) -> u64 {
        self.keys.len() as u64
    }

    /// The actor's usual peak before the current bucket, after noting `value` (what the rule
    /// measures now) in the current one. What it did while the rule was firing does not
    /// become usual.
    fn usual(&mut self, now: i64, span: i64, value: u64) -> f64 {
        let b = now.div_euclid(span);
        if b != self.bucket {
            let gone = i32::try_from((b - self.bucket).clamp(1, 10_000)).unwrap_or(10_000);
            let decayed = |v: f64, n: i32| v * USUAL_DECAY.powi(n.max(0));
            if gone == 1 {
                self.usual = decayed(self.usual, 1).max(self.pending as f64);
                self.pending = self.bucket_max;
            } else {
                self.usual = decayed(self.usual, gone)
                    .max(decayed(self.pending as f64, gone - 1))
                    .max(decayed(self.bucket_max as f64, gone - 2));
                self.pending = 0;
            }
            self.bucket = b;
            self.bucket_max = 0;
        }
        let usual = self.usual;
        if self.fired.is_none_or(|t| now - t >= span) {
            self.bucket_max = self.bucket_max.max(value);
        }
        usual
    }
}

/// How much of an actor's usual peak is kept per window-long bucket (half-life ≈ 34 buckets:
/// for the hourly bulk rule about a day and a half).
const USUAL_DECAY: f64 = 0.98;
/// How far above its usual peak an actor must go for bulk reading to count as exfiltration.
const BULK_SURGE: f64 = 3.0;
/// How far above its usual peak an actor must go for changes to count as mass modification.
const CHANGE_SURGE: f64 = 5.0;

/// One rule's windows, by actor.
#[derive(Debug)]
struct Rule {
    span: i64,
    windows: HashMap<Actor, Window>,
}

impl Rule {
    fn new(span: i64) -> Self {
        Self {
            span,
            windows: HashMap::new(),
        }
    }

    fn push(&mut self, actor: &Actor, now: i64, key: u64, weight: u32) -> &mut Window {
        if !self.windows.contains_key(actor) && self.windows.len() >= MAX_ACTORS {
            // Forget actors quiet for a window first; if too few are, the tenth quiet longest
            // (at once, so a flood of new actors costs a sweep per many of them).
            let span = self.span;
            self.windows.retain(|_, w| now - w.last < span);
            if self.windows.len() >= MAX_ACTORS {
                let mut lasts: Vec<i64> = self.windows.values().map(|w| w.last).collect();
                let tenth = lasts.len() / 10;
                let (_, cutoff, _) = lasts.select_nth_unstable(tenth);
                let cutoff = *cutoff;
                self.windows.retain(|_, w| w.last > cutoff);
            }
        }
        let w = self.windows.entry(actor.clone()).or_default();
        w.push(now, self.span, key, weight);
        w
    }

    fn window(&mut self, actor: &Actor, now: i64) -> Option<&mut Window> {
        let span = self.span;
        let w = self.windows.get_mut(actor)?;
        w.expire(now, span);
        Some(w)
    }
}

/// Fires once per window: true the first time, then counts what it holds back.
fn once(w: &mut Window, now: i64, span: i64) -> Option<u64> {
    if w.fired.is_some_and(|t| now - t < span) {
        w.held_back += 1;
        return None;
    }
    w.fired = Some(now);
    Some(std::mem::take(&mut w.held_back))
}

/// The attack detector: feed it every event, in time order.
#[derive(Debug)]
pub struct Attacks {
    limits: Limits,
    hasher: std::collections::hash_map::RandomState,
    unknown_names: u64,
    stuffing: Rule,
    stuffing_hour: Rule,
    stuffing_addresses: Rule,
    spraying: Rule,
    spraying_node: Rule,
    spraying_node_addresses: Rule,
    scanning: Rule,
    bulk: Rule,
    deletes: Rule,
    changes: Rule,
    peers: Rule,
    denied: Rule,
}

impl Default for Attacks {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Attacks {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            hasher: std::collections::hash_map::RandomState::new(),
            unknown_names: 0,
            stuffing: Rule::new(10 * MINUTE),
            stuffing_hour: Rule::new(60 * MINUTE),
            stuffing_addresses: Rule::new(60 * MINUTE),
            spraying: Rule::new(60 * MINUTE),
            spraying_node: Rule::new(60 * MINUTE),
            spraying_node_addresses: Rule::new(60 * MINUTE),
            scanning: Rule::new(5 * MINUTE),
            bulk: Rule::new(60 * MINUTE),
            deletes: Rule::new(10 * MINUTE),
            changes: Rule::new(10 * MINUTE),
            peers: Rule::new(60 * MINUTE),
            denied: Rule::new(5 * MINUTE),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn key(&self, v: impl Hash) -> u64 {
        self.hasher.hash_one(v)
    }

    /// Takes in `e`; returns the attacks it completes.
    pub fn observe(&mut self, e: &Event<'_>) -> Vec<AttackAlert> {
        let mut out = Vec::new();
        match e.action {
            Action::Login => self.login(e, &mut out),
            Action::Receive => self.receive(e, &mut out),
            _ => self.access(e, &mut out),
        }
        out
    }

    /// Takes in `count` anonymous requests refused from `address` (a node's summary of junk
    /// traffic it did not record one by one), at `time`.
    pub fn refused_anonymous(&mut self, time: i64, address: &str, count: u32) -> Vec<AttackAlert> {
        let mut out = Vec::new();
        let address = &address_key(address);
        let actor = Actor::Address(address.clone());
        let key = self.key((time, count));
        self.denied_by(&actor, time, key, count, None, Some(address), &mut out);
        out
    }

    /// Failed sign-ins from `address` (keys: the accounts or unknown names, each with its
    /// number of failures) into the stuffing windows, ten minutes and an hour.
    fn stuffing_seen(
        &mut self,
        actor: &Actor,
        address: &str,
        now: i64,
        names: &[(u64, u32)],
        out: &mut Vec<AttackAlert>,
    ) {
        let limits = self.limits;
        for (rule, failures_limit, label) in [
            (0, limits.stuffing_failures, "failed_logins_10min"),
            (1, limits.stuffing_failures_hour, "failed_logins_1h"),
        ] {
            let window = if rule == 0 {
                &mut self.stuffing
            } else {
                &mut self.stuffing_hour
            };
            let span = window.span;
            let mut w = None;
            for (key, n) in names {
                w = Some(window.push(actor, now, *key, *n));
            }
            let Some(w) = w else { return };
            if w.weight >= u64::from(failures_limit)
                && w.distinct() >= u64::from(limits.stuffing_accounts)
            {
                let (failures, accounts) = (w.weight as f64, w.distinct() as f64);
                if let Some(held) = once(w, now, span) {
                    out.push(AttackAlert {
                        kind: AttackKind::CredentialStuffing,
                        time: now,
                        actor: actor.clone(),
                        user: None,
                        address: Some(address.to_owned()),
                        reasons: vec![(label, failures), ("accounts_tried", accounts)],
                        suppressed_before: held,
                    });
                    self.stuffing_addresses.push(actor, now, 0, 1);
                    // One alert for one attack: the hour's window counts it as fired too.
                    if rule == 0
                        && let Some(h) = self.stuffing_hour.window(actor, now)
                    {
                        h.fired = Some(now);
                    }
                }
            }
        }
    }

    /// Failed sign-ins the node counted into an `anonymous-requests` summary instead of
    /// recording them one by one: `failures` from `address` at `time`, naming `accounts`
    /// different accounts and `unknown` names that matched none.
    pub fn summarised_logins(
        &mut self,
        time: i64,
        address: &str,
        failures: u32,
        accounts: u32,
        unknown: u32,
    ) -> Vec<AttackAlert> {
        let mut out = Vec::new();
        let address = address_key(address);
        let actor = Actor::Address(address.clone());
        let names = (accounts + unknown).clamp(1, 1_000);
        let each = (failures / names).max(1);
        let keys: Vec<(u64, u32)> = (0..names)
            .map(|i| {
                self.unknown_names += 1;
                (self.key(("summary", self.unknown_names, i)), each)
            })
            .collect();
        self.stuffing_seen(&actor, &address, time, &keys, &mut out);
        out
    }

    /// Forgets what the rules hold about `actor` (its response was undone by a person: the
    /// next attack from it is new).
    pub fn forget(&mut self, actor: &Actor) {
        for rule in [
            &mut self.stuffing,
            &mut self.stuffing_hour,
            &mut self.stuffing_addresses,
            &mut self.spraying,
            &mut self.scanning,
            &mut self.bulk,
            &mut self.deletes,
            &mut self.changes,
            &mut self.peers,
            &mut self.denied,
        ] {
            rule.windows.remove(actor);
        }
    }

    fn login(&mut self, e: &Event<'_>, out: &mut Vec<AttackAlert>) {
        let Some(address) = e.address.as_deref() else {
            return;
        };
        let address = &address_key(address);
        let actor = Actor::Address(address.clone());
        let now = e.time;
        if e.outcome == Outcome::Allowed {
            // A success from an address caught stuffing in the last hour: the account may be
            // one whose password was on the list — unless the sign-in proved a second factor
            // (`why` names the assurance level the node recorded), which a list cannot give.
            if matches!(e.why.as_deref(), Some("aal2" | "aal3")) {
                return;
            }
            let span = self.stuffing_addresses.span;
            if let Some(w) = self.stuffing_addresses.window(&actor, now)
                && let Some(&(last, _, _)) = w.items.back()
                && let Some(held) = once(w, now, span)
            {
                out.push(AttackAlert {
                    kind: AttackKind::LoginAfterStuffing,
                    time: now,
                    actor: Actor::User(e.user.to_string()),
                    user: Some(e.user.to_string()),
                    address: Some(address.clone()),
                    reasons: vec![("minutes_since_stuffing", ((now - last) / 60) as f64)],
                    suppressed_before: held,
                });
            }
            return;
        }
        let known = !e.user.is_empty();
        let account = if known {
            self.key(("account", &*e.user))
        } else {
            // A name that matches no account: each counts as a different one (the node does
            // not record what was typed).
            self.unknown_names += 1;
            self.key(("unknown", self.unknown_names))
        };
        let limits = self.limits;
        self.stuffing_seen(&actor, address, now, &[(account, 1)], out);
        // Spraying: only failures against real accounts (a password was tried on them).
        if !known || e.why.as_deref().is_some_and(|w| w.starts_with("throttled")) {
            return;
        }
        let per_account = limits.spraying_attempts_per_account;
        let span = self.spraying.span;
        let w = self.spraying.push(&actor, now, account, 1);
        let (attempts, accounts) = (w.weight as f64, w.distinct() as f64);
        if accounts >= f64::from(limits.spraying_accounts)
            && attempts / accounts <= per_account
            && let Some(held) = once(w, now, span)
        {
            out.push(AttackAlert {
                kind: AttackKind::PasswordSpraying,
                time: now,
                actor: actor.clone(),
                user: None,
                address: Some(address.to_owned()),
                reasons: vec![
                    ("accounts_failed_1h", accounts),
                    (
                        "attempts_per_account",
                        (attempts / accounts * 100.0).round() / 100.0,
                    ),
                ],
                suppressed_before: held,
            });
        }
        let address_key = self.key(("address", address));
        self.spraying_node_addresses
            .push(&Actor::Node, now, address_key, 1);
        let addresses = self
            .spraying_node_addresses
            .window(&Actor::Node, now)
            .map_or(0, |w| w.distinct());
        let span = self.spraying_node.span;
        let w = self.spraying_node.push(&Actor::Node, now, account, 1);
        let (attempts, accounts) = (w.weight as f64, w.distinct() as f64);
        if accounts >= f64::from(limits.spraying_accounts_node)
            && addresses >= 3
            && attempts / accounts <= per_account
            && let Some(held) = once(w, now, span)
        {
            out.push(AttackAlert {
                kind: AttackKind::PasswordSpraying,
                time: now,
                actor: Actor::Node,
                user: None,
                address: None,
                reasons: vec![
                    ("accounts_failed_1h", accounts),
                    (
                        "attempts_per_account",
                        (attempts / accounts * 100.0).round() / 100.0,
                    ),
                    ("addresses", addresses as f64),
                ],
                suppressed_before: held,
            });
        }
    }

    fn receive(&mut self, e: &Event<'_>, out: &mut Vec<AttackAlert>) {
        if e.outcome == Outcome::Allowed {
            return;
        }
        // A sender named only by a bundle whose signature did not verify is not trusted to be
        // who it says: such refusals count against the address that delivered them.
        let actor = match (e.user.is_empty(), e.address.as_deref()) {
            (false, _) => Actor::Peer(e.user.to_string()),
            (true, Some(a)) => Actor::Address(address_key(a)),
            (true, None) => Actor::Node,
        };
        let replay = e.why.as_deref() == Some("replay");
        let bad_signature = e.why.as_deref() == Some("bad-signature");
        let now = e.time;
        // A sender that lost the answer delivers the same bundle again and gets the first
        // receipt (a replay, refused): repeats of one bundle count once; every other refusal
        // counts by itself.
        self.unknown_names += 1;
        let key = match (replay, e.target.as_deref()) {
            (true, Some(bundle)) => self.key(("replay", bundle)),
            _ => self.key((now, e.why.as_deref(), self.unknown_names)),
        };
        let limits = self.limits;
        let span = self.peers.span;
        let w = self.peers.push(&actor, now, key, 1);
        let refused = w.distinct();
        if refused >= u64::from(limits.peer_refusals)
            && let Some(held) = once(w, now, span)
        {
            out.push(AttackAlert {
                kind: AttackKind::PeerAbuse,
                time: now,
                actor: actor.clone(),
                user: None,
                address: e.address.as_deref().map(str::to_owned),
                reasons: vec![
                    ("refused_bundles_1h", refused as f64),
                    ("replay", f64::from(u8::from(replay))),
                    ("bad_signature", f64::from(u8::from(bad_signature))),
                ],
                suppressed_before: held,
            });
        }
    }

    fn access(&mut self, e: &Event<'_>, out: &mut Vec<AttackAlert>) {
        let now = e.time;
        let limits = self.limits;
        let anonymous = e.user.is_empty();
        let actor = if anonymous {
            match e.address.as_deref() {
                Some(a) => Actor::Address(address_key(a)),
                None => return,
            }
        } else {
            Actor::User(e.user.to_string())
        };
        let not_found = e.status == Some(404) || e.status == Some(410);
        // Refused: 401 or 403 (a 400 is a mistake, not a probe); any denial when the status
        // is not known (replay files).
        let refused = e.outcome == Outcome::Denied && e.status.is_none_or(|s| s == 401 || s == 403);
        // Id scanning: different ids asked for that were not there or not allowed.
        if (not_found || refused)
            && let Some(target) = e.target.as_deref().or(e.patient.as_deref())
        {
            let key = self.key(target);
            let span = self.scanning.span;
            let w = self.scanning.push(&actor, now, key, 1);
            if w.distinct() >= u64::from(limits.scanning_misses) {
                let (misses, ids) = (w.weight as f64, w.distinct() as f64);
                if let Some(held) = once(w, now, span) {
                    out.push(AttackAlert {
                        kind: AttackKind::IdScanning,
                        time: now,
                        actor: actor.clone(),
                        user: (!anonymous).then(|| e.user.to_string()),
                        address: e.address.as_deref().map(str::to_owned),
                        reasons: vec![("misses_5min", misses), ("different_ids", ids)],
                        suppressed_before: held,
                    });
                }
            }
        }
        if refused {
            let key = self.key((now, e.target.as_deref(), e.patient.as_deref()));
            if anonymous {
                let address = e.address.as_deref();
                self.denied_by(&actor, now, key, 1, None, address, out);
            } else {
                let user = e.user.to_string();
                let address = e.address.as_deref();
                self.denied_by(&actor, now, key, 1, Some(user), address, out);
            }
        }
        if anonymous || e.outcome != Outcome::Allowed {
            return;
        }
        // Bulk exfiltration: different patients read in an hour, by user and by app, well
        // above what the actor usually reaches.
        let reads = matches!(
            e.action,
            Action::Read | Action::Search | Action::Export | Action::Print
        );
        if let Some(p) = e.patient.as_deref().filter(|_| reads) {
            let key = self.key(p);
            let mut actors = vec![actor.clone()];
            if let Some(c) = e.client.as_deref() {
                actors.push(Actor::Client(c.to_owned()));
            }
            for a in actors {
                let span = self.bulk.span;
                let w = self.bulk.push(&a, now, key, 1);
                let usual = w.usual(now, span, w.distinct());
                if w.distinct() >= u64::from(limits.bulk_patients)
                    && w.distinct() as f64 >= BULK_SURGE * usual
                {
                    let patients = w.distinct() as f64;
                    if let Some(held) = once(w, now, span) {
                        out.push(AttackAlert {
                            kind: AttackKind::BulkExfiltration,
                            time: now,
                            actor: a,
                            user: Some(e.user.to_string()),
                            address: e.address.as_deref().map(str::to_owned),
                            reasons: vec![
                                ("patients_1h", patients),
                                ("usual_peak", usual.round()),
                                ("exports", f64::from(u8::from(e.action == Action::Export))),
                            ],
                            suppressed_before: held,
                        });
                    }
                }
            }
        }
        // Mass deletion and mass modification: many in minutes, well above the actor's usual.
        match e.action {
            Action::Delete => self.changed(&actor, e, 1, 0, out),
            Action::Update => self.changed(&actor, e, 0, 1, out),
            _ => {}
        }
    }

    /// Changes a Bundle made: `deletes` deletions and `updates` updates by `e`'s user at
    /// `e`'s time (the node counts a batch's or transaction's successful entries).
    pub fn bundle_changes(
        &mut self,
        e: &Event<'_>,
        deletes: u32,
        updates: u32,
    ) -> Vec<AttackAlert> {
        let mut out = Vec::new();
        if !e.user.is_empty() && deletes + updates > 0 {
            let actor = Actor::User(e.user.to_string());
            self.changed(&actor, e, deletes, updates, &mut out);
        }
        out
    }

    fn changed(
        &mut self,
        actor: &Actor,
        e: &Event<'_>,
        deletes: u32,
        updates: u32,
        out: &mut Vec<AttackAlert>,
    ) {
        let now = e.time;
        let limits = self.limits;
        self.unknown_names += 1;
        let key = self.key((e.target.as_deref(), now, self.unknown_names));
        let span = self.changes.span;
        let (changes, usual_changes) = {
            let w = self.changes.push(actor, now, key, deletes + updates);
            let weight = w.weight;
            (weight, w.usual(now, span, weight))
        };
        let user = Some(e.user.to_string());
        let address = e.address.as_deref().map(str::to_owned);
        if deletes > 0 {
            let w = self.deletes.push(actor, now, key, deletes);
            let deleted = w.weight;
            let usual = w.usual(now, span, deleted);
            if deleted >= u64::from(limits.mass_deletes)
                && deleted as f64 >= CHANGE_SURGE * usual
                && let Some(held) = once(w, now, span)
            {
                out.push(AttackAlert {
                    kind: AttackKind::MassDeletion,
                    time: now,
                    actor: actor.clone(),
                    user: user.clone(),
                    address: address.clone(),
                    reasons: vec![
                        ("deletions_10min", deleted as f64),
                        ("usual_peak", usual.round()),
                    ],
                    suppressed_before: held,
                });
            }
        }
        if changes >= u64::from(limits.mass_changes)
            && changes as f64 >= CHANGE_SURGE * usual_changes
            && let Some(w) = self.changes.window(actor, now)
            && let Some(held) = once(w, now, span)
        {
            out.push(AttackAlert {
                kind: AttackKind::MassModification,
                time: now,
                actor: actor.clone(),
                user,
                address,
                reasons: vec![
                    ("changes_10min", changes as f64),
                    ("usual_peak", usual_changes.round()),
                ],
                suppressed_before: held,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn denied_by(
        &mut self,
        actor: &Actor,
        now: i64,
        key: u64,
        weight: u32,
        user: Option<String>,
        address: Option<&str>,
        out: &mut Vec<AttackAlert>,
    ) {
        let limit = if user.is_some() {
            self.limits.denied_user
        } else {
            self.limits.denied_address
        };
        let span = self.denied.span;
        let w = self.denied.push(actor, now, key, weight);
        if w.weight >= u64::from(limit) {
            let refused = w.weight as f64;
            if let Some(held) = once(w, now, span) {
                out.push(AttackAlert {
                    kind: AttackKind::DeniedBurst,
                    time: now,
                    actor: actor.clone(),
                    user,
                    address: address.map(str::to_owned),
                    reasons: vec![("refused_5min", refused)],
                    suppressed_before: held,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::event::Relationship;

    const T0: i64 = 1_796_000_000;

    fn event(t: i64, user: &str, action: Action, outcome: Outcome) -> Event<'static> {
        Event {
            time: t,
            user: Cow::Owned(user.to_owned()),
            role: None,
            department: None,
            patient: None,
            action,
            resource_type: None,
            purpose: None,
            outcome,
            break_glass: false,
            relationship: Relationship::None,
            client: None,
            address: Some("203.0.113.9".into()),
            status: None,
            target: None,
            why: None,
        }
    }

    fn failed_login(t: i64, user: &str, address: &str) -> Event<'static> {
        let mut e = event(t, user, Action::Login, Outcome::Denied);
        e.address = Some(address.to_owned().into());
        e.why = Some("bad-credentials".into());
        e
    }

    fn run(a: &mut Attacks, events: impl IntoIterator<Item = Event<'static>>) -> Vec<AttackAlert> {
        events.into_iter().flat_map(|e| a.observe(&e)).collect()
    }

    #[test]
    fn stuffing_from_one_address_fires_once_and_a_login_after_it_is_named() {
        let mut a = Attacks::default();
        // 30 failures in 5 minutes, unknown names and a few real accounts.
        let found = run(
            &mut a,
            (0..30).map(|i| {
                let user = if i % 6 == 0 {
                    format!("usr_{i}")
                } else {
                    String::new()
                };
                failed_login(T0 + i * 10, &user, "198.51.100.7")
            }),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AttackKind::CredentialStuffing);
        assert_eq!(found[0].actor, Actor::Address("198.51.100.7".into()));
        assert_eq!(found[0].reasons[0], ("failed_logins_10min", 20.0));
        // Someone mistyping at another address says nothing.
        assert!(
            run(
                &mut a,
                (0..4).map(|i| failed_login(T0 + i, "usr_x", "192.0.2.1"))
            )
            .is_empty()
        );
        // A login that works from the stuffing address.
        let mut ok = event(T0 + 600, "usr_6", Action::Login, Outcome::Allowed);
        ok.address = Some("198.51.100.7".into());
        let found = a.observe(&ok);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].kind, AttackKind::LoginAfterStuffing);
        assert_eq!(found[0].user.as_deref(), Some("usr_6"));
        // The same from a clean address is a login.
        ok.address = Some("192.0.2.1".into());
        assert!(a.observe(&ok).is_empty());
    }

    #[test]
    fn spraying_is_found_per_address_and_across_the_node() {
        let mut a = Attacks::default();
        // One address, one try at each of ten accounts over fifty minutes.
        let found = run(
            &mut a,
            (0..10).map(|i| failed_login(T0 + i * 300, &format!("usr_{i}"), "198.51.100.8")),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AttackKind::PasswordSpraying);
        assert_eq!(found[0].reasons[0], ("accounts_failed_1h", 8.0));
        // Five addresses, five accounts each: no address passes its limit, the node does.
        let mut a = Attacks::default();
        let found = run(
            &mut a,
            (0..25).map(|i| {
                failed_login(
                    T0 + i * 60,
                    &format!("usr_{i}"),
                    &format!("192.0.2.{}", i % 5),
                )
            }),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].actor, Actor::Node);
        assert_eq!(found[0].reasons[2], ("addresses", 5.0));
        // A user failing many times on their own account is the lockout's business.
        let mut a = Attacks::default();
        assert!(
            run(
                &mut a,
                (0..9).map(|i| failed_login(T0 + i, "usr_1", "192.0.2.1"))
            )
            .is_empty()
        );
    }

    #[test]
    fn scanning_counts_different_missing_ids() {
        let mut a = Attacks::default();
        let miss = |t: i64, id: String| {
            let mut e = event(t, "usr_s", Action::Read, Outcome::Denied);
            e.status = Some(404);
            e.target = Some(id.into());
            e
        };
        // The same missing id again and again is a broken link, not a scan.
        assert!(run(&mut a, (0..50).map(|i| miss(T0 + i, "Patient/gone".into()))).is_empty());
        let found = run(
            &mut a,
            (0..40).map(|i| miss(T0 + 100 + i, format!("Patient/p{i}"))),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AttackKind::IdScanning);
        assert_eq!(found[0].user.as_deref(), Some("usr_s"));
        // 404s are not refusals: no burst of denials.
        assert!(found.iter().all(|f| f.kind != AttackKind::DeniedBurst));
    }

    #[test]
    fn bulk_reads_fire_for_the_user_and_the_app_and_normal_days_do_not() {
        let mut a = Attacks::default();
        let read = |t: i64, user: &str, p: usize| {
            let mut e = event(t, user, Action::Read, Outcome::Allowed);
            e.patient = Some(format!("p{p}").into());
            e.client = Some("cli_export".into());
            e
        };
        assert!(
            run(
                &mut a,
                (0..450).map(|p| read(T0 + p as i64, "usr_n", p % 400))
            )
            .is_empty()
        );
        let mut a = Attacks::default();
        let found = run(&mut a, (0..700).map(|p| read(T0 + p as i64, "usr_b", p)));
        let kinds: Vec<(AttackKind, Actor)> =
            found.iter().map(|f| (f.kind, f.actor.clone())).collect();
        assert_eq!(
            kinds,
            [
                (AttackKind::BulkExfiltration, Actor::User("usr_b".into())),
                (
                    AttackKind::BulkExfiltration,
                    Actor::Client("cli_export".into())
                ),
            ]
        );
        assert_eq!(found[0].reasons[0], ("patients_1h", 500.0));
    }

    #[test]
    fn mass_deletion_fires_and_ordinary_editing_does_not() {
        let mut a = Attacks::default();
        let change = |t: i64, action: Action, i: i64| {
            let mut e = event(t, "usr_m", action, Outcome::Allowed);
            e.target = Some(format!("Observation/o{i}").into());
            e
        };
        assert!(run(&mut a, (0..150).map(|i| change(T0 + i, Action::Update, i))).is_empty());
        let found = run(
            &mut a,
            (0..40).map(|i| change(T0 + 200 + i, Action::Delete, i)),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AttackKind::MassDeletion);
        assert_eq!(found[0].reasons[0], ("deletions_10min", 25.0));
        // 150 updates and 40 deletions are 190 changes: 10 more make a mass modification too.
        let found = run(
            &mut a,
            (0..10).map(|i| change(T0 + 300 + i, Action::Update, i)),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AttackKind::MassModification);
        // An integration that changes 300 records every ten minutes, day after day, is its
        // usual self; five times that is not.
        let mut a = Attacks::default();
        let feed = |t: i64, i: i64| {
            let mut e = event(t, "tok_feed", Action::Update, Outcome::Allowed);
            e.target = Some(format!("Observation/f{i}").into());
            e
        };
        let steady: Vec<AttackAlert> = run(&mut a, (0..30 * 300).map(|i| feed(T0 + i * 2, i)))
            .into_iter()
            .collect();
        assert!(
            (1..=2).contains(&steady.len()) && steady.iter().all(|f| f.time < T0 + 1_800),
            "only its first minutes look new: {steady:?}"
        );
        let t = T0 + 30 * 600;
        let surge = run(&mut a, (0..2000).map(|i| feed(t + i / 4, i)));
        assert_eq!(surge.len(), 1, "{surge:?}");
        assert_eq!(surge[0].reasons[1].0, "usual_peak");
    }

    #[test]
    fn replays_of_different_bundles_and_unsigned_junk_fire_after_three() {
        let mut a = Attacks::default();
        let bundle = |t: i64, peer: &str, why: &str| {
            let mut e = event(t, peer, Action::Receive, Outcome::Denied);
            e.why = Some(why.to_owned().into());
            e
        };
        let replay = |t: i64, id: &str| {
            let mut e = bundle(t, "node-b", "replay");
            e.target = Some(id.to_owned().into());
            e
        };
        // A sender retrying one delivery is not an attack.
        assert!(run(&mut a, (0..5).map(|i| replay(T0 + i, "b-1"))).is_empty());
        let found = run(&mut a, [replay(T0 + 10, "b-2"), replay(T0 + 11, "b-3")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].actor, Actor::Peer("node-b".into()));
        let found = run(&mut a, (0..3).map(|i| bundle(T0 + i, "", "malformed")));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].actor, Actor::Address("203.0.113.9".into()));
        assert_eq!(found[0].reasons[0], ("refused_bundles_1h", 3.0));
    }

    #[test]
    fn denial_bursts_fire_once_a_window_and_count_what_they_held_back() {
        let mut a = Attacks::default();
        let refused = |t: i64, i: i64| {
            let mut e = event(t, "usr_d", Action::Read, Outcome::Denied);
            e.status = Some(403);
            e.patient = Some(format!("p{}", i % 3).into());
            e
        };
        let found = run(&mut a, (0..40).map(|i| refused(T0 + i, i)));
        assert_eq!(
            found
                .iter()
                .filter(|f| f.kind == AttackKind::DeniedBurst)
                .count(),
            1,
            "{found:?}"
        );
        let later = run(&mut a, (0..30).map(|i| refused(T0 + 400 + i, i)));
        let burst: Vec<_> = later
            .iter()
            .filter(|f| f.kind == AttackKind::DeniedBurst)
            .collect();
        assert_eq!(burst.len(), 1);
        assert_eq!(burst[0].suppressed_before, 10);
        // Anonymous refusals counted into a summary weigh their count.
        let found = a.refused_anonymous(T0, "198.51.100.1", 250);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].actor, Actor::Address("198.51.100.1".into()));
    }

    #[test]
    fn a_flood_of_new_actors_keeps_memory_bounded() {
        let mut a = Attacks::default();
        for i in 0..(MAX_ACTORS as i64 + 5_000) {
            let address = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            a.observe(&failed_login(T0 + i / 100, "", &address));
        }
        assert!(a.stuffing.windows.len() <= MAX_ACTORS);
        assert!(a.stuffing.windows.len() > MAX_ACTORS / 2);
    }

    #[test]
    fn paced_stuffing_a_few_accounts_ipv6_rotation_and_summaries_are_caught() {
        // 19 failures every 10 minutes stays under the 10-minute rule; the hour's catches it.
        let mut a = Attacks::default();
        let found = run(
            &mut a,
            (0..60).map(|i| failed_login(T0 + i * 32, &format!("usr_{}", i % 4), "198.51.100.9")),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reasons[0].0, "failed_logins_1h");
        // Four real accounts, five passwords each, in minutes.
        let mut a = Attacks::default();
        let found = run(
            &mut a,
            (0..20).map(|i| failed_login(T0 + i * 10, &format!("usr_{}", i % 4), "198.51.100.9")),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        // Rotating addresses within one IPv6 /64 is one actor.
        let mut a = Attacks::default();
        let found = run(
            &mut a,
            (0..20).map(|i| failed_login(T0 + i, "", &format!("2001:db8:7:9::{:x}", i + 1))),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].actor, Actor::Address("2001:db8:7:9::/64".into()));
        assert_eq!(address_key("::ffff:192.0.2.1"), "192.0.2.1");
        // Failures the node only counted into a summary.
        let mut a = Attacks::default();
        let found = a.summarised_logins(T0, "198.51.100.4", 40, 2, 30);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AttackKind::CredentialStuffing);
    }

    #[test]
    fn a_second_factor_sign_in_after_stuffing_is_not_a_stuffed_login() {
        let mut a = Attacks::default();
        run(
            &mut a,
            (0..25).map(|i| failed_login(T0 + i, "", "198.51.100.7")),
        );
        let mut ok = event(T0 + 60, "usr_6", Action::Login, Outcome::Allowed);
        ok.address = Some("198.51.100.7".into());
        ok.why = Some("aal2".into());
        assert!(a.observe(&ok).is_empty());
        ok.why = Some("aal1".into());
        assert_eq!(a.observe(&ok)[0].kind, AttackKind::LoginAfterStuffing);
    }

    #[test]
    fn bad_requests_are_not_refusals_and_bundles_count_their_changes() {
        let mut a = Attacks::default();
        let found = run(
            &mut a,
            (0..50).map(|i| {
                let mut e = event(T0 + i, "usr_po", Action::Read, Outcome::Denied);
                e.status = Some(400);
                e
            }),
        );
        assert!(found.is_empty(), "{found:?}");
        let e = event(T0, "tok_w", Action::Read, Outcome::Allowed);
        assert!(a.bundle_changes(&e, 20, 0).is_empty());
        let found = a.bundle_changes(&e, 10, 0);
        assert_eq!(found[0].kind, AttackKind::MassDeletion);
        assert_eq!(found[0].reasons[0], ("deletions_10min", 30.0));
        // Undone by a person: forgotten, so the next burst is an attack again.
        assert!(
            a.bundle_changes(&e, 30, 0).is_empty(),
            "held back in the window"
        );
        a.forget(&Actor::User("tok_w".into()));
        assert_eq!(
            a.bundle_changes(&e, 30, 0)[0].kind,
            AttackKind::MassDeletion
        );
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in KINDS {
            assert_eq!(AttackKind::parse(k.name()), Some(k));
        }
        assert_eq!(AttackKind::parse("nope"), None);
    }
}
