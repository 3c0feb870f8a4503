//! Sentinel on a live node: every access-log record is scored as it is written, off the
//! request path, and a score at or above the threshold becomes an alert in the privacy
//! officer's queue (`GET /privacy/alerts`, kind `sentinel`) and an access-log entry.
//!
//! **Exactly once.** The first leaf not yet scored is kept in the records database's meta
//! ([`CURSOR`]), written in the same transaction as the alerts of the leaves before it; after
//! a crash the watcher relearns the log up to the cursor (scoring without alerting: the
//! detector's memory is rebuilt, not saved) and continues from it, so no event is missed and
//! none alerts twice. The access-log entry of an alert is written after that transaction: a
//! crash between the two loses the entry, never the alert.
//!
//! **No plaintext leaves the node.** The detector sees ids, roles and keyed tokens of family
//! names and addresses (HMAC under the node's `@sentinel` blind-index keys), never a name.
//! Who is a VIP or an employee is read from the Patient's `meta.security` labels (HL7 v3
//! `CELEB` or `VIP`, and `EMP`); a death from `deceasedDateTime`.

use std::sync::Arc;
use std::time::Duration;

use medvault_core::{ResourceId, ResourceType};
use medvault_sentinel::{
    Action, Attacks, Detector, Event, Outcome, Relationship, RosterPatient, RosterUser,
};
use medvault_store::{AlertRow, ResponseRow, write_with};
use serde_json::{Value, json};

use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::node::Node;
use crate::responses::{self, Raised, Responder};

/// The records database's meta key holding the first access-log leaf not yet scored.
pub const CURSOR: &str = "sentinel_scored_to";
/// How often the per-role thresholds are recomputed from the officers' verdicts.
const TUNE_EVERY: Duration = Duration::from_secs(60);
/// Leaves relearned at most when a node starts (a few minutes of work on two cores; the
/// node serves meanwhile and new entries are scored once it is done).
pub const RELEARN: u64 = 2_000_000;
/// Leaves read per step.
const BATCH: u64 = 1024;
/// The alert kind in the privacy officer's queue.
pub const ALERT_KIND: &str = "sentinel";
/// The kind of an attack's alert ([`medvault_sentinel::attacks`]).
pub const ATTACK_KIND: &str = "attack";

/// Most patients one access-log record is scored for (a search or Bundle that revealed more
/// is scored for the first this many, in the record's order; the volume signal still rises).
const MAX_PATIENTS_PER_RECORD: usize = 200;

/// The access log's REST record `rec` as Sentinel events: one for every patient the request
/// touched, revealed or was refused (a search or a Bundle names many), or one naming no
/// patient; none for records that are not one person's or app's access (administrative
/// actions, summaries, Sentinel's own alerts, anonymous requests).
pub fn events_of(rec: &Value) -> Vec<Event<'static>> {
    match rec.get("type").and_then(Value::as_str) {
        Some("rest") => {}
        Some("share") => return received(rec).into_iter().collect(),
        _ => return Vec::new(),
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| s.to_owned().into());
    let Some(interaction) = rec.get("interaction").and_then(Value::as_str) else {
        return Vec::new();
    };
    let Some(time) = rec
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| medvault_sentinel::event::parse_time(t).ok())
    else {
        return Vec::new();
    };
    let status = rec
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok());
    let target = match (
        rec.get("resource_type").and_then(Value::as_str),
        rec.get("id")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty()),
    ) {
        (Some(t), Some(i)) => Some(format!("{t}/{i}").into()),
        _ => None,
    };
    let success = rec.get("outcome").and_then(Value::as_str) == Some("success");
    let auth = rec.get("auth");
    let Some((agent, user)) = rec
        .get("agent")
        .filter(|a| a.is_object())
        .and_then(|a| Some((a, a.get("token").and_then(Value::as_str)?)))
    else {
        // No credential: a sign-in (the account the name belongs to, if any), or anonymous
        // junk that failed (scanners, bad tokens); anonymous successes say nothing.
        let login = matches!(interaction, "login" | "passkey-login");
        if success && !login {
            return Vec::new();
        }
        let user = auth
            .and_then(|a| a.get("user"))
            .and_then(Value::as_str)
            .filter(|_| login)
            .unwrap_or("");
        if login && success && user.is_empty() {
            // A passkey ceremony's first step: no account yet.
            return Vec::new();
        }
        return vec![Event {
            time,
            user: user.to_owned().into(),
            role: None,
            department: None,
            patient: None,
            action: if login { Action::Login } else { Action::Read },
            resource_type: text(rec.get("resource_type")),
            purpose: None,
            outcome: outcome(success),
            break_glass: false,
            relationship: Relationship::None,
            client: None,
            address: text(rec.get("address")),
            status,
            target,
            // A sign-in that worked says how strongly (`aal2`: a second factor, which a list
            // of stolen passwords cannot give); one that failed, why.
            why: match auth.and_then(|a| a.get("aal")).and_then(Value::as_u64) {
                Some(level) if success => Some(format!("aal{level}").into()),
                _ => text(auth.and_then(|a| a.get("event"))),
            },
        }];
    };
    let action = match interaction {
        i if i.starts_with("search") || i.starts_with("history") => Action::Search,
        "create" => Action::Create,
        "update" | "patch" | "update-conditional" | "patch-conditional" => Action::Update,
        // An erasure deletes a patient's whole record at once.
        "delete" | "delete-conditional" | "patient-erase" => Action::Delete,
        "operation-everything" | "bulk-export" | "bulk-file" | "share" => Action::Export,
        "login" => Action::Login,
        // Reads, and whatever else reached a patient's data (Bundles of any entries, other
        // operations): scored as looking at the record.
        _ => Action::Read,
    };
    let policy = rec.get("policy");
    let listed = |name: &str| -> Vec<String> {
        policy
            .and_then(|p| p.get(name))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|p| p.strip_prefix("Patient/").unwrap_or(p).to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (seen, refused, related) = (
        listed("patients_seen"),
        listed("patients_refused"),
        listed("related"),
    );
    let break_glass = listed("break_glass");
    let mut patients: Vec<String> = Vec::new();
    let touched = rec
        .get("patient")
        .and_then(Value::as_str)
        .map(|p| p.strip_prefix("Patient/").unwrap_or(p).to_owned());
    for p in touched
        .into_iter()
        .chain(seen.iter().cloned())
        .chain(refused.iter().cloned())
    {
        if !patients.contains(&p) {
            patients.push(p);
        }
        if patients.len() >= MAX_PATIENTS_PER_RECORD {
            break;
        }
    }
    if patients.is_empty() && success && action != Action::Login {
        // A request that reached no patient's data (capabilities, directory lookups) says
        // nothing of snooping; a refused one (a probe of ids) is still scored.
        return Vec::new();
    }
    let event = |patient: Option<String>| {
        let allowed = success
            && patient
                .as_ref()
                .is_none_or(|p| !refused.contains(p) || seen.contains(p));
        Event {
            time,
            user: user.to_owned().into(),
            role: text(agent.get("role")),
            department: None,
            relationship: match &patient {
                Some(p) if related.contains(p) => Relationship::CareTeam,
                _ => Relationship::None,
            },
            // Opening break-glass for a patient is the emergency itself, declared and
            // justified (it raises its own alert): scored as break-glass access.
            break_glass: patient
                .as_ref()
                .is_some_and(|p| break_glass.contains(p) || interaction == "break-glass"),
            patient: patient.map(Into::into),
            action,
            resource_type: text(rec.get("resource_type")),
            purpose: text(rec.get("purpose"))
                .or_else(|| text(policy.and_then(|p| p.get("purpose")))),
            outcome: if allowed {
                Outcome::Allowed
            } else {
                Outcome::Denied
            },
            client: text(agent.get("client")),
            address: text(rec.get("address")),
            status,
            target: target.clone(),
            why: None,
        }
    };
    if patients.is_empty() {
        return vec![event(None)];
    }
    patients.into_iter().map(|p| event(Some(p))).collect()
}

fn outcome(allowed: bool) -> Outcome {
    if allowed {
        Outcome::Allowed
    } else {
        Outcome::Denied
    }
}

/// A peer's delivered bundle (a `share-receive` record) as an event: the sender when its
/// signature verified (otherwise the name is only what the bytes claim), why it was refused.
fn received(rec: &Value) -> Option<Event<'static>> {
    if rec.get("interaction").and_then(Value::as_str) != Some("share-receive") {
        return None;
    }
    let time = medvault_sentinel::event::parse_time(rec.get("time")?.as_str()?).ok()?;
    let share = rec.get("share")?;
    let verified = share.get("signatureVerified").and_then(Value::as_bool) == Some(true);
    let from = share
        .get("from")
        .and_then(Value::as_str)
        .filter(|_| verified)
        .unwrap_or("");
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| s.to_owned().into());
    Some(Event {
        time,
        user: from.to_owned().into(),
        role: None,
        department: None,
        patient: None,
        action: Action::Receive,
        resource_type: None,
        purpose: text(share.get("purpose")),
        outcome: outcome(rec.get("outcome").and_then(Value::as_str) == Some("success")),
        break_glass: false,
        relationship: Relationship::None,
        client: None,
        address: text(rec.get("agent").and_then(|a| a.get("address"))),
        status: None,
        // The bundle's id (a sender's retry repeats it).
        target: text(share.get("id")),
        why: text(share.get("refused")),
    })
}

/// An `anonymous-requests` summary record's refused requests by client address: each listed
/// address's count times the share of the summary's requests that were refused (a summary
/// counts statuses for all addresses together).
pub fn anonymous_refusals(rec: &Value) -> Option<(i64, Vec<(String, u32)>)> {
    if rec.get("type").and_then(Value::as_str) != Some("summary")
        || rec.get("interaction").and_then(Value::as_str) != Some("anonymous-requests")
    {
        return None;
    }
    let time = medvault_sentinel::event::parse_time(rec.get("time")?.as_str()?).ok()?;
    let statuses = rec.get("statuses")?.as_object()?;
    let (mut all, mut refused) = (0u64, 0u64);
    for (status, n) in statuses {
        let n = n.as_u64().unwrap_or(0);
        all += n;
        if status.parse::<u16>().is_ok_and(|s| s >= 400) {
            refused += n;
        }
    }
    if refused == 0 {
        return None;
    }
    let share = refused as f64 / all as f64;
    let by_address = rec
        .get("addresses")?
        .as_array()?
        .iter()
        .filter_map(|a| {
            let id = a.get("id")?.as_str()?;
            let n = a.get("count")?.as_u64()? as f64 * share;
            Some((
                id.to_owned(),
                u32::try_from(n.round() as u64).unwrap_or(u32::MAX),
            ))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    Some((time, by_address))
}

/// Failed sign-ins an `anonymous-requests` summary counted by address (those past the access
/// log's per-minute budget): `(address, failures, accounts named, names that matched none)`.
pub fn summarised_logins(rec: &Value) -> Vec<(String, u32, u32, u32)> {
    if rec.get("interaction").and_then(Value::as_str) != Some("anonymous-requests") {
        return Vec::new();
    }
    let n = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    rec.get("failed_logins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let id = f.get("id")?.as_str()?;
            Some((
                id.to_owned(),
                n(f, "count"),
                n(f, "accounts"),
                n(f, "unknown_names"),
            ))
        })
        .filter(|(_, count, _, _)| *count > 0)
        .collect()
}

/// Who made a REST request, as an event with no patient (the Bundle's changes are counted
/// against them).
fn who_of(rec: &Value) -> Option<Event<'static>> {
    let agent = rec.get("agent")?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| s.to_owned().into());
    Some(Event {
        time: medvault_sentinel::event::parse_time(rec.get("time")?.as_str()?).ok()?,
        user: agent.get("token")?.as_str()?.to_owned().into(),
        role: text(agent.get("role")),
        department: None,
        patient: None,
        action: Action::Update,
        resource_type: None,
        purpose: None,
        outcome: Outcome::Allowed,
        break_glass: false,
        relationship: Relationship::None,
        client: text(agent.get("client")),
        address: text(rec.get("address")),
        status: None,
        target: None,
        why: None,
    })
}

/// The deletions and updates a Bundle's record counts (`extra.bundle`), if any.
fn bundle_changes(rec: &Value) -> Option<(u32, u32)> {
    let b = rec.pointer("/extra/bundle")?;
    let n = |k: &str| {
        b.get(k)
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    let (d, u) = (n("deletes"), n("updates"));
    (d + u > 0).then_some((d, u))
}

/// What one access-log leaf gives the detectors.
#[allow(clippy::large_enum_variant)] // short-lived, one per event of a batch
enum Input {
    Event(Event<'static>),
    /// A Bundle's successful deletions and updates, by the user of `event`.
    Bundle {
        event: Event<'static>,
        deletes: u32,
        updates: u32,
    },
    /// Failed sign-ins a summary counted for one address.
    Logins {
        time: i64,
        address: String,
        failures: u32,
        accounts: u32,
        unknown: u32,
    },
    /// Refused anonymous requests from an address, counted into a summary.
    Anonymous {
        time: i64,
        address: String,
        count: u32,
    },
}

/// The live detector and how far it has scored.
pub struct Watcher {
    detector: Detector,
    attacks: Attacks,
    responder: Option<Responder>,
    /// The configured threshold, and each role's as the officers' verdicts tuned it.
    base: f64,
    role_thresholds: std::collections::HashMap<String, f64>,
    tuned_at: Option<std::time::Instant>,
    next: u64,
    ctx: Ctx,
    limits: AlertLimits,
}

/// Most alerts one user raises per hour; beyond it, alerts are counted and the count goes
/// into their next alert (`suppressed_before`), so a burst cannot flood the queue.
const ALERTS_PER_USER_HOUR: usize = 10;
/// One alert per user and patient in this long: the reads of one sitting are one alert.
const SAME_PATIENT_QUIET: i64 = 2 * 3600;

/// How many alerts each user has raised lately, in memory (after a restart the limits start
/// afresh: a few more alerts, never fewer).
#[derive(Debug, Default)]
struct AlertLimits {
    raised: std::collections::HashMap<String, std::collections::VecDeque<i64>>,
    pairs: std::collections::HashMap<(String, String), i64>,
    suppressed: std::collections::HashMap<String, u64>,
}

impl AlertLimits {
    /// True if `e`'s alert may be raised; otherwise it is counted as suppressed.
    fn admit(&mut self, e: &Event<'_>) -> bool {
        let user = e.user.to_string();
        if let Some(p) = &e.patient {
            let key = (user.clone(), p.to_string());
            if self
                .pairs
                .get(&key)
                .is_some_and(|t| e.time - t < SAME_PATIENT_QUIET)
            {
                return false;
            }
            if self.pairs.len() >= 10_000 {
                self.pairs.retain(|_, t| e.time - *t < SAME_PATIENT_QUIET);
            }
            self.pairs.insert(key, e.time);
        }
        let times = self.raised.entry(user.clone()).or_default();
        while times.front().is_some_and(|t| e.time - t >= 3600) {
            times.pop_front();
        }
        if times.len() >= ALERTS_PER_USER_HOUR {
            *self.suppressed.entry(user).or_default() += 1;
            return false;
        }
        times.push_back(e.time);
        true
    }

    fn take_suppressed(&mut self, user: &str) -> u64 {
        self.suppressed.remove(user).unwrap_or(0)
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// What one [`Watcher::step`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stepped {
    pub scored: u64,
    pub alerts: u64,
    /// Playbook responses decided (carried out, or recorded in dry-run mode).
    pub responses: u64,
}

impl Watcher {
    /// A watcher for `node` alerting at `threshold`, its detector rebuilt from the access log
    /// up to the stored cursor (learned from, not alerted on again).
    ///
    /// # Errors
    /// Store and key failures.
    pub fn open(node: &Node, threshold: f64, responder: Option<Responder>) -> Result<Self, Error> {
        let (archived, _) =
            crate::archive::archived(node.access.as_ref()).map_err(|e| Error::internal(&e))?;
        let cursor = node
            .store
            .meta(CURSOR)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // Details below the archive mark are gone from the database: learning starts there,
        // or at the last RELEARN leaves before the cursor on a long log (older history then
        // only lives on in what the relearned months say).
        let archived = archived.max(cursor.saturating_sub(RELEARN));
        let mut w = Self {
            detector: Detector::new(&medvault_sentinel::Roster::default())
                .with_threshold(threshold),
            attacks: Attacks::default(),
            responder,
            base: threshold,
            role_thresholds: std::collections::HashMap::new(),
            tuned_at: None,
            next: archived,
            ctx: Ctx::unrestricted_node_work(node),
            limits: AlertLimits::default(),
        };
        while w.next < cursor {
            let upto = cursor.min(w.next + BATCH);
            for (_, input) in w.read(node, upto)? {
                // Relearning: what fires here fired before the crash.
                match input {
                    Input::Event(event) => {
                        if event.is_access() {
                            w.prepare(node, &event)?;
                            w.detector.score(&event);
                        }
                        w.attacks.observe(&event);
                    }
                    other => {
                        w.attacks_only(&other);
                    }
                }
            }
            w.next = upto;
        }
        w.next = w.next.max(cursor);
        Ok(w)
    }

    /// What an input that is not one access (summaries, a Bundle's changes) tells the attack
    /// rules.
    fn attacks_only(&mut self, input: &Input) -> Vec<medvault_sentinel::AttackAlert> {
        match input {
            Input::Event(_) => Vec::new(),
            Input::Anonymous {
                time,
                address,
                count,
            } => self.attacks.refused_anonymous(*time, address, *count),
            Input::Bundle {
                event,
                deletes,
                updates,
            } => self.attacks.bundle_changes(event, *deletes, *updates),
            Input::Logins {
                time,
                address,
                failures,
                accounts,
                unknown,
            } => self
                .attacks
                .summarised_logins(*time, address, *failures, *accounts, *unknown),
        }
    }

    /// The first leaf not yet scored.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// What the leaves `[self.next, upto)` give the detectors, with their leaf indexes.
    fn read(&self, node: &Node, upto: u64) -> Result<Vec<(u64, Input)>, Error> {
        let mut out = Vec::new();
        for (leaf, detail) in node.access.audit_details(self.next, upto - self.next)? {
            // A detail that does not open (altered in the database: `ledger verify` reports
            // it) is passed over rather than stopping the watcher at it for ever.
            match node.ledger.open_audit(&detail) {
                Ok(rec) => {
                    let events = events_of(&rec);
                    if let (Some((deletes, updates)), Some(event)) =
                        (bundle_changes(&rec), who_of(&rec))
                    {
                        out.push((
                            leaf,
                            Input::Bundle {
                                event,
                                deletes,
                                updates,
                            },
                        ));
                    }
                    out.extend(events.into_iter().map(|e| (leaf, Input::Event(e))));
                    let logins = summarised_logins(&rec);
                    if let Some(time) = rec
                        .get("time")
                        .and_then(Value::as_str)
                        .filter(|_| !logins.is_empty())
                        .and_then(|t| medvault_sentinel::event::parse_time(t).ok())
                    {
                        out.extend(logins.into_iter().map(
                            |(address, failures, accounts, unknown)| {
                                (
                                    leaf,
                                    Input::Logins {
                                        time,
                                        address,
                                        failures,
                                        accounts,
                                        unknown,
                                    },
                                )
                            },
                        ));
                    }
                    if let Some((time, by_address)) = anonymous_refusals(&rec) {
                        out.extend(by_address.into_iter().map(|(address, count)| {
                            (
                                leaf,
                                Input::Anonymous {
                                    time,
                                    address,
                                    count,
                                },
                            )
                        }));
                    }
                }
                Err(e) => {
                    tracing::warn!(leaf, error = %e.message, "sentinel: an access-log detail does not open")
                }
            }
        }
        Ok(out)
    }

    /// Puts the event's user and patient on the detector's roster when the detector does not
    /// hold them yet: the first time the log names them, and a patient again after the
    /// detector forgot it (a patient being registered is looked up when next opened). One
    /// found on no roster is held from its first event on, so each is read once.
    fn prepare(&mut self, node: &Node, e: &Event<'_>) -> Result<(), Error> {
        if !self.detector.holds_user(&e.user)
            && let Some(u) = roster_user(node, &self.ctx, &e.user)?
        {
            self.detector.add_user(&u);
        }
        let registers = e.action == Action::Create && e.resource_type.as_deref() == Some("Patient");
        if let Some(id) = e.patient.as_deref().filter(|_| !registers)
            && !self.detector.holds_patient(id)
            && let Some(p) = roster_patient(node, &self.ctx, id)?
        {
            self.detector.add_patient(&p);
        }
        Ok(())
    }

    /// Scores what the access log gained since the last step: alerts and the new cursor in
    /// one transaction, then an access-log entry per alert.
    ///
    /// # Errors
    /// Store and key failures: no alert of the step is kept and the next step scores its
    /// events again (the detector, which had learned them, learns them twice).
    pub fn step(&mut self, node: &Node) -> Result<Stepped, Error> {
        let size = node.access.ledger_size()?;
        if size <= self.next {
            if let Some(r) = &self.responder {
                r.enforcement.scored(self.next);
            }
            return Ok(Stepped::default());
        }
        let upto = size.min(self.next + BATCH);
        // Responses a person undid: their subjects' next attack is a new one.
        if let Some(r) = &self.responder {
            for subject in r.enforcement.take_undone() {
                let actor = match subject.split_once(':') {
                    Some(("user", u)) => medvault_sentinel::Actor::User(u.to_owned()),
                    Some(("client", c)) => medvault_sentinel::Actor::Client(c.to_owned()),
                    Some(("address", a)) => medvault_sentinel::Actor::Address(a.to_owned()),
                    _ => continue,
                };
                self.attacks.forget(&actor);
            }
        }
        let events = self.read(node, upto)?;
        let key = crate::identity::identity_key(node)?;
        if self.tuned_at.is_none_or(|t| t.elapsed() >= TUNE_EVERY) {
            self.role_thresholds = crate::alerts::thresholds(node, self.base)?
                .into_iter()
                .map(|(role, t, _, _)| (role, t))
                .collect();
            self.tuned_at = Some(std::time::Instant::now());
        }
        let mut alerts = Vec::new();
        let mut triggers: Vec<Raised> = Vec::new();
        let mut done = Stepped::default();
        let mut last_leaf = None;
        let mut in_leaf = 0u32;
        for (leaf, input) in &events {
            // A record may raise several alerts: numbered within their leaf.
            in_leaf = if last_leaf == Some(*leaf) { in_leaf } else { 0 };
            last_leaf = Some(*leaf);
            let mut number = |prefix: &str| {
                let id = if in_leaf == 0 {
                    format!("alr_{prefix}{leaf}")
                } else {
                    format!("alr_{prefix}{leaf}_{in_leaf}")
                };
                in_leaf += 1;
                id
            };
            let found = match input {
                Input::Event(e) => {
                    let found = self.attacks.observe(e);
                    if e.is_access() {
                        self.prepare(node, e)?;
                        let s = self.detector.score(e);
                        done.scored += 1;
                        let threshold = e
                            .role
                            .as_deref()
                            .and_then(|r| self.role_thresholds.get(r))
                            .copied()
                            .unwrap_or(self.base);
                        if s.score >= threshold && self.limits.admit(e) {
                            let id = number("s");
                            let detail = json!({
                                "leaf": leaf,
                                "suppressed_before": self.limits.take_suppressed(&e.user),
                                "score": (s.score * 1e4).round() / 1e4,
                                "threshold": (threshold * 1e4).round() / 1e4,
                                "action": format!("{:?}", e.action).to_lowercase(),
                                "resource_type": e.resource_type,
                                "reasons": s.reasons.iter().map(|r| json!({
                                    "signal": r.signal.name(),
                                    "value": r.value,
                                    "contribution": (r.contribution * 100.0).round() / 100.0,
                                })).collect::<Vec<_>>(),
                            });
                            triggers.push(Raised {
                                alert_id: id.clone(),
                                kind: ALERT_KIND.to_owned(),
                                score: Some(s.score),
                                user: Some(e.user.to_string()),
                                address: e.address.as_ref().map(ToString::to_string),
                                client: e.client.as_ref().map(ToString::to_string),
                                break_glass: e.break_glass,
                                summary: json!({
                                    "id": id, "kind": ALERT_KIND, "user": e.user,
                                    "score": detail["score"], "reasons": detail["reasons"],
                                }),
                                time: e.time,
                            });
                            alerts.push(alert_row(
                                &key,
                                id,
                                ALERT_KIND,
                                e.time,
                                e.user.to_string(),
                                e.patient.as_ref().map(ToString::to_string),
                                &detail,
                            )?);
                        }
                    }
                    found
                }
                other => self.attacks_only(other),
            };
            for a in found {
                let id = number("a");
                let mut detail = a.to_json();
                detail["leaf"] = json!(leaf);
                let mut summary = detail.clone();
                summary["id"] = json!(id);
                triggers.push(Raised {
                    alert_id: id.clone(),
                    kind: a.kind.name().to_owned(),
                    score: None,
                    user: a.user.clone(),
                    address: a.address.clone(),
                    client: match &a.actor {
                        medvault_sentinel::Actor::Client(c) => Some(c.clone()),
                        _ => None,
                    },
                    break_glass: false,
                    summary,
                    time: a.time,
                });
                alerts.push(alert_row(
                    &key,
                    id,
                    ATTACK_KIND,
                    a.time,
                    a.user.clone().unwrap_or_default(),
                    None,
                    &detail,
                )?);
            }
        }
        done.alerts = alerts.len() as u64;
        let scored_through = upto;
        let cursor = upto.to_string();
        let raised: Vec<(String, Option<String>)> = alerts
            .iter()
            .map(|a| (a.id.clone(), a.patient.clone()))
            .collect();
        // The playbooks' responses are decided now and written with their alerts, so a crash
        // cannot keep one without the other.
        let now = node.clock.now_micros();
        let responses: Vec<ResponseRow> = match &self.responder {
            Some(r) => triggers
                .iter()
                .flat_map(|t| responses::plan(&r.playbooks, t, now))
                .collect(),
            None => Vec::new(),
        };
        done.responses = responses.len() as u64;
        let rows = responses.clone();
        write_with(node.store.as_ref(), move |tx| {
            for a in &alerts {
                tx.put_alert(a)?;
            }
            for r in &rows {
                tx.put_response(r)?;
                if r.action == responses::Act::Lock.name()
                    && !r.dry_run
                    && let Some(user) = r.subject.strip_prefix("user:")
                    && let Some(mut u) = tx.user(user)?
                {
                    u.locked_until_micros = responses::LOCKED_PENDING_REVIEW;
                    tx.put_user(&u)?;
                }
            }
            tx.set_meta(CURSOR, &cursor)
        })?;
        self.next = upto;
        for (id, patient) in raised {
            node.record_audit_now(|now| {
                AuditRecord::new(
                    AuditKind::Security,
                    now,
                    "sentinel-alert",
                    AuditOutcome::Success,
                )
                .agent(json!({"service": "sentinel"}))
                .target_opt(Some(&id))
                .patient(patient)
            })?;
        }
        if let Some(r) = &self.responder
            && !responses.is_empty()
        {
            let summaries = triggers
                .into_iter()
                .map(|t| (t.alert_id, t.summary))
                .collect();
            responses::carry_out(node, r, &responses, &summaries)?;
        }
        // After the responses are in force: a deletion waiting for this point sees them.
        if let Some(r) = &self.responder {
            r.enforcement.scored(scored_through);
        }
        Ok(done)
    }
}

/// An alert for the privacy officer's queue, its detail sealed under the identity key.
fn alert_row(
    key: &medvault_crypto::DataKey,
    id: String,
    kind: &str,
    time: i64,
    user_id: String,
    patient: Option<String>,
    detail: &Value,
) -> Result<AlertRow, Error> {
    let bytes = zeroize::Zeroizing::new(detail.to_string().into_bytes());
    let detail =
        crate::identity::seal(key, &id, crate::identity::break_glass::ALERT_FIELD, &bytes)?;
    Ok(AlertRow {
        id,
        kind: kind.into(),
        at_micros: time.saturating_mul(1_000_000),
        user_id,
        patient,
        detail,
        acknowledged_by: None,
        acknowledged_micros: None,
        verdict: None,
        note: None,
    })
}

/// What the node knows of user `id` for the detector: their role and, for staff linked to a
/// Practitioner, keyed tokens of the Practitioner's family name and address.
fn roster_user(node: &Node, ctx: &Ctx, id: &str) -> Result<Option<RosterUser>, Error> {
    let Some(row) = node.store.user(id)? else {
        return Ok(None);
    };
    let person = match row
        .practitioner
        .as_deref()
        .and_then(|p| p.strip_prefix("Practitioner/"))
    {
        Some(p) => match ResourceType::new("Practitioner") {
            Ok(rt) => read(node, ctx, &rt, p)?,
            Err(_) => None,
        },
        None => None,
    };
    let (family_token, address_token) = tokens(node, person.as_ref())?;
    let (department, shift) = match &row.practitioner {
        Some(p) => place_and_hours(node, ctx, p),
        None => (None, None),
    };
    Ok(Some(RosterUser {
        id: id.to_owned(),
        role: Some(row.role),
        department,
        family_token,
        address_token,
        shift,
    }))
}

/// A member of staff's department and shift, from the first active PractitionerRole naming
/// their `Practitioner/…`: the department is its organization (else its first location, else
/// its first specialty's code), the shift its first `availableTime` with a start and an end
/// (read as UTC). Nothing when there is none or the search fails (logged).
fn place_and_hours(
    node: &Node,
    ctx: &Ctx,
    practitioner: &str,
) -> (Option<String>, Option<medvault_sentinel::event::Shift>) {
    let Ok(rt) = ResourceType::new("PractitionerRole") else {
        return (None, None);
    };
    let params = [("practitioner".to_owned(), practitioner.to_owned())];
    let roles = match crate::search::all_matches(node.store.as_ref(), ctx, &rt, &params) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e.message, "sentinel: a practitioner's roles were not found");
            return (None, None);
        }
    };
    let Some(role) = roles
        .iter()
        .find(|r| r.get("active").and_then(Value::as_bool) != Some(false))
    else {
        return (None, None);
    };
    let text = |p: &str| role.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let department = text("/organization/reference")
        .or_else(|| text("/location/0/reference"))
        .or_else(|| text("/specialty/0/coding/0/code"));
    let minutes = |t: &str| -> Option<u16> {
        let mut parts = t.split(':');
        let h: u16 = parts.next()?.parse().ok()?;
        let m: u16 = parts.next()?.parse().ok()?;
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let shift = role
        .get("availableTime")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|t| {
            Some(medvault_sentinel::event::Shift {
                start: minutes(t.get("availableStartTime")?.as_str()?)?,
                end: minutes(t.get("availableEndTime")?.as_str()?)?,
            })
        });
    (department, shift)
}

/// What the node knows of patient `id` for the detector: tokens, flags, death.
fn roster_patient(node: &Node, ctx: &Ctx, id: &str) -> Result<Option<RosterPatient>, Error> {
    let Some(patient) = read(node, ctx, &ResourceType::PATIENT, id)? else {
        return Ok(None);
    };
    let labels = crate::authz::security_labels(&patient);
    let has = |codes: &[&str]| labels.iter().any(|l| codes.contains(&l.as_str()));
    let deceased_at = patient
        .get("deceasedDateTime")
        .and_then(Value::as_str)
        .and_then(|t| {
            // A date alone is the start of that day.
            let t = if t.len() == 10 {
                format!("{t}T00:00:00Z")
            } else {
                t.to_owned()
            };
            medvault_sentinel::event::parse_time(&t).ok()
        });
    let (family_token, address_token) = tokens(node, Some(&patient))?;
    Ok(Some(RosterPatient {
        id: id.to_owned(),
        family_token,
        address_token,
        vip: has(&["CELEB", "VIP"]),
        employee_user: has(&["EMP"]).then(|| "(an employee)".to_owned()),
        deceased_at,
        departments: Vec::new(),
    }))
}

/// The current version of `rt/id`, opened (none if absent, deleted or unreadable).
fn read(node: &Node, _ctx: &Ctx, rt: &ResourceType, id: &str) -> Result<Option<Value>, Error> {
    let Ok(id) = ResourceId::new(id) else {
        return Ok(None);
    };
    crate::records::read_as_node(node, rt, &id)
}

/// Keyed tokens of a person's first family name and first address (its first line and postal
/// code), lower-cased: equal tokens mean equal values, and no one without the node's keys can
/// tell what they stand for.
fn tokens(node: &Node, person: Option<&Value>) -> Result<(Option<String>, Option<String>), Error> {
    let Some(person) = person else {
        return Ok((None, None));
    };
    let normal = |s: &str| {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    };
    let family = person
        .pointer("/name/0/family")
        .and_then(Value::as_str)
        .map(normal)
        .filter(|s| !s.is_empty());
    let address = person.pointer("/address/0").map(|a| {
        normal(&format!(
            "{} {}",
            a.pointer("/line/0").and_then(Value::as_str).unwrap_or(""),
            a.get("postalCode").and_then(Value::as_str).unwrap_or("")
        ))
    });
    let token = |param: &str, value: Option<String>| -> Result<Option<String>, Error> {
        let Some(v) = value.filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let key = node
            .keys
            .param_key("@sentinel", param)
            .map_err(|e| Error::internal(&e))?;
        Ok(Some(hex::encode(key.blind(v.as_bytes()).0)))
    };
    Ok((token("family", family)?, token("address", address)?))
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}", .0.message)]
    Node(Error),
    #[error("writing the events: {0}")]
    Write(std::io::Error),
}

impl From<Error> for ExportError {
    fn from(e: Error) -> Self {
        Self::Node(e)
    }
}

impl From<medvault_store::StoreError> for ExportError {
    fn from(e: medvault_store::StoreError) -> Self {
        Self::Node(e.into())
    }
}

/// Writes the node's access log (from the archive mark on) as `EVENTS.jsonl` lines to
/// `events`, as [`events_of`] maps each record, and returns how many with the roster of every
/// user and patient they name: keyed tokens, never names (`medvault sentinel export`).
/// `progress` gets (leaves done, leaves in all).
///
/// # Errors
/// Store and key failures; the writer's.
pub fn export(
    node: &Node,
    events: &mut dyn std::io::Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(u64, medvault_sentinel::Roster), ExportError> {
    let (archived, _) =
        crate::archive::archived(node.access.as_ref()).map_err(|e| Error::internal(&e))?;
    let size = node.access.ledger_size()?;
    let ctx = Ctx::unrestricted_node_work(node);
    let mut users = std::collections::BTreeMap::new();
    let mut patients = std::collections::BTreeMap::new();
    let mut written = 0u64;
    let mut at = archived;
    let mut line = Vec::with_capacity(512);
    while at < size {
        let n = (size - at).min(BATCH);
        for (leaf, detail) in node.access.audit_details(at, n)? {
            let rec = match node.ledger.open_audit(&detail) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(leaf, error = %e.message, "export: an access-log detail does not open");
                    continue;
                }
            };
            for e in events_of(&rec) {
                if !e.user.is_empty() && !users.contains_key(e.user.as_ref()) {
                    let u = roster_user(node, &ctx, &e.user)?.unwrap_or_else(|| RosterUser {
                        id: e.user.to_string(),
                        role: e.role.as_ref().map(ToString::to_string),
                        department: None,
                        family_token: None,
                        address_token: None,
                        shift: None,
                    });
                    users.insert(e.user.to_string(), u);
                }
                if let Some(p) = e.patient.as_deref()
                    && !patients.contains_key(p)
                {
                    let found = roster_patient(node, &ctx, p)?.unwrap_or_else(|| RosterPatient {
                        id: p.to_owned(),
                        family_token: None,
                        address_token: None,
                        vip: false,
                        employee_user: None,
                        deceased_at: None,
                        departments: Vec::new(),
                    });
                    patients.insert(p.to_owned(), found);
                }
                line.clear();
                serde_json::to_writer(&mut line, &e).map_err(|e| Error::internal(&e))?;
                line.push(b'\n');
                events.write_all(&line).map_err(ExportError::Write)?;
                written += 1;
            }
        }
        at += n;
        progress(at - archived, size - archived);
    }
    events.flush().map_err(ExportError::Write)?;
    Ok((
        written,
        medvault_sentinel::Roster {
            users: users.into_values().collect(),
            patients: patients.into_values().collect(),
        },
    ))
}

/// Scores the access log every `every` until the task is dropped, and has `responder`'s
/// playbooks answer the alerts; a failed step is logged and retried at the next tick. The
/// detector is rebuilt (in a blocking thread) before the first.
pub async fn task(node: Arc<Node>, threshold: f64, responder: Option<Responder>, every: Duration) {
    let opened = {
        let node = Arc::clone(&node);
        tokio::task::spawn_blocking(move || Watcher::open(&node, threshold, responder)).await
    };
    let mut watcher = match opened {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            tracing::error!(error = %e.message, "sentinel could not start");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "sentinel could not start");
            return;
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let node = Arc::clone(&node);
        let stepped = tokio::task::spawn_blocking(move || {
            let r = watcher.step(&node);
            (watcher, r)
        })
        .await;
        match stepped {
            Ok((w, r)) => {
                watcher = w;
                match r {
                    Ok(s) if s.alerts > 0 => tracing::info!(alerts = s.alerts, "sentinel alerts"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e.message, "sentinel step failed"),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sentinel stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_records_become_one_event_per_patient_and_the_rest_are_left_out() {
        let rec = json!({
            "v": 1, "type": "rest", "time": "2026-12-07T10:00:00.000000Z", "interaction": "read",
            "outcome": "success",
            "agent": {"token": "usr_1", "role": "clinician", "session": "ses_1", "client": null},
            "patient": "p1", "resource_type": "Observation", "purpose": "TREAT",
            "policy": {"purpose": "TREAT", "denied_by": [], "withheld": 0, "break_glass": [],
                       "patients_seen": ["Patient/p1"], "patients_refused": [],
                       "related": ["Patient/p1"]},
            "address": "10.0.0.1"
        });
        let e = events_of(&rec);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].user, "usr_1");
        assert_eq!(e[0].patient.as_deref(), Some("p1"));
        assert_eq!(e[0].action, Action::Read);
        assert_eq!(e[0].relationship, Relationship::CareTeam);
        assert_eq!(e[0].outcome, Outcome::Allowed);
        let mut unrelated = rec.clone();
        unrelated["policy"]["related"] = json!([]);
        unrelated["outcome"] = json!("denied");
        let e = events_of(&unrelated);
        assert_eq!(e[0].relationship, Relationship::None);
        assert_eq!(e[0].outcome, Outcome::Denied);
        // A search or a Bundle is scored for every patient it revealed or was refused.
        let mut bundle = rec.clone();
        bundle["interaction"] = json!("batch/transaction");
        bundle.as_object_mut().unwrap().remove("patient");
        bundle["policy"]["patients_seen"] = json!(["Patient/a", "Patient/p1"]);
        bundle["policy"]["patients_refused"] = json!(["Patient/z"]);
        let e = events_of(&bundle);
        let got: Vec<(&str, Outcome, Relationship)> = e
            .iter()
            .map(|e| (e.patient.as_deref().unwrap(), e.outcome, e.relationship))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Outcome::Allowed, Relationship::None),
                ("p1", Outcome::Allowed, Relationship::CareTeam),
                ("z", Outcome::Denied, Relationship::None),
            ]
        );
        assert!(e.iter().all(|e| e.action == Action::Read));
        for other in [
            json!({"type": "admin", "interaction": "keys-rotate", "outcome": "success",
                   "time": "2026-12-07T10:00:00Z", "agent": {"os_user": "root"}}),
            json!({"type": "security", "interaction": "sentinel-alert", "outcome": "success",
                   "time": "2026-12-07T10:00:00Z"}),
            json!({"type": "rest", "interaction": "read", "outcome": "success",
                   "time": "2026-12-07T10:00:00Z"}),
            json!({"type": "rest", "interaction": "capabilities", "outcome": "success",
                   "time": "2026-12-07T10:00:00Z", "agent": {"token": "usr_1"}}),
        ] {
            assert!(events_of(&other).is_empty(), "{other}");
        }
    }

    #[test]
    fn sign_ins_anonymous_failures_and_peer_bundles_become_attack_events() {
        let login = json!({
            "v": 1, "type": "rest", "time": "2026-12-07T10:00:00Z", "interaction": "login",
            "outcome": "authentication-failed", "status": 401, "address": "198.51.100.7",
            "auth": {"user": "usr_1", "client": null, "event": "bad-credentials"}
        });
        let e = events_of(&login);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].action, e[0].outcome, &*e[0].user, e[0].why.as_deref()),
            (
                Action::Login,
                Outcome::Denied,
                "usr_1",
                Some("bad-credentials")
            )
        );
        assert!(!e[0].is_access());
        let mut ok = login.clone();
        ok["outcome"] = json!("success");
        assert!(events_of(&ok)[0].is_access());
        // Anonymous junk: a probe of an id without credentials.
        let probe = json!({
            "v": 1, "type": "rest", "time": "2026-12-07T10:00:00Z", "interaction": "read",
            "outcome": "authentication-failed", "status": 401, "address": "198.51.100.7",
            "resource_type": "Patient", "id": "p9"
        });
        let e = events_of(&probe);
        assert_eq!(
            (&*e[0].user, e[0].target.as_deref()),
            ("", Some("Patient/p9"))
        );
        let bundle = json!({
            "v": 1, "type": "share", "time": "2026-12-07T10:00:00Z",
            "interaction": "share-receive", "outcome": "denied",
            "agent": {"peer_key": "ab", "address": "192.0.2.4"},
            "share": {"from": "node-b", "refused": "bad-signature", "signatureVerified": false}
        });
        let e = events_of(&bundle);
        assert_eq!(
            (
                e[0].action,
                &*e[0].user,
                e[0].why.as_deref(),
                e[0].address.as_deref()
            ),
            (
                Action::Receive,
                "",
                Some("bad-signature"),
                Some("192.0.2.4")
            )
        );
        let mut verified = bundle.clone();
        verified["share"]["signatureVerified"] = json!(true);
        verified["share"]["refused"] = json!("replay");
        assert_eq!(&*events_of(&verified)[0].user, "node-b");
        let summary = json!({
            "v": 1, "type": "summary", "time": "2026-12-07T10:01:00Z",
            "interaction": "anonymous-requests", "outcome": "denied",
            "statuses": {"401": 300, "200": 100},
            "addresses": [{"id": "198.51.100.7", "count": 360}, {"id": "192.0.2.1", "count": 40}]
        });
        let (_, refused) = anonymous_refusals(&summary).unwrap();
        assert_eq!(
            refused,
            [
                ("198.51.100.7".to_owned(), 270),
                ("192.0.2.1".to_owned(), 30)
            ]
        );
        let mut with_logins = summary.clone();
        with_logins["failed_logins"] =
            json!([{"id": "198.51.100.7", "count": 40, "accounts": 2, "unknown_names": 31}]);
        assert_eq!(
            summarised_logins(&with_logins),
            [("198.51.100.7".to_owned(), 40, 2, 31)]
        );
        assert!(summarised_logins(&summary).is_empty());
    }
}
