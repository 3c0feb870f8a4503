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
    Action, Detector, Event, Outcome, Relationship, RosterPatient, RosterUser,
};
use medvault_store::{AlertRow, write_with};
use serde_json::{Value, json};

use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::ctx::Ctx;
use crate::error::Error;
use crate::node::Node;

/// The records database's meta key holding the first access-log leaf not yet scored.
pub const CURSOR: &str = "sentinel_scored_to";
/// Leaves read per step.
const BATCH: u64 = 1024;
/// The alert kind in the privacy officer's queue.
pub const ALERT_KIND: &str = "sentinel";

/// Most patients one access-log record is scored for (a search or Bundle that revealed more
/// is scored for the first this many, in the record's order; the volume signal still rises).
const MAX_PATIENTS_PER_RECORD: usize = 200;

/// The access log's REST record `rec` as Sentinel events: one for every patient the request
/// touched, revealed or was refused (a search or a Bundle names many), or one naming no
/// patient; none for records that are not one person's or app's access (administrative
/// actions, summaries, Sentinel's own alerts, anonymous requests).
pub fn events_of(rec: &Value) -> Vec<Event<'static>> {
    if rec.get("type").and_then(Value::as_str) != Some("rest") {
        return Vec::new();
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| s.to_owned().into());
    let Some(agent) = rec.get("agent") else {
        return Vec::new();
    };
    let Some(user) = agent.get("token").and_then(Value::as_str) else {
        return Vec::new();
    };
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
    let action = match interaction {
        i if i.starts_with("search") || i.starts_with("history") => Action::Search,
        "create" => Action::Create,
        "update" | "patch" => Action::Update,
        "delete" => Action::Delete,
        "operation-everything" | "bulk-export" | "bulk-file" | "share" => Action::Export,
        "login" => Action::Login,
        // Reads, and whatever else reached a patient's data (Bundles of any entries, other
        // operations): scored as looking at the record.
        _ => Action::Read,
    };
    let success = rec.get("outcome").and_then(Value::as_str) == Some("success");
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
            break_glass: patient.as_ref().is_some_and(|p| break_glass.contains(p)),
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
        }
    };
    if patients.is_empty() {
        return vec![event(None)];
    }
    patients.into_iter().map(|p| event(Some(p))).collect()
}

/// The live detector and how far it has scored.
pub struct Watcher {
    detector: Detector,
    next: u64,
    ctx: Ctx,
    /// Users and patients already looked up (found or not): each is read once per process.
    looked_up: std::collections::HashSet<String>,
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
}

impl Watcher {
    /// A watcher for `node` alerting at `threshold`, its detector rebuilt from the access log
    /// up to the stored cursor (learned from, not alerted on again).
    ///
    /// # Errors
    /// Store and key failures.
    pub fn open(node: &Node, threshold: f64) -> Result<Self, Error> {
        let (archived, _) =
            crate::archive::archived(node.access.as_ref()).map_err(|e| Error::internal(&e))?;
        let cursor = node
            .store
            .meta(CURSOR)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // Details below the archive mark are gone from the database: learning starts there.
        let mut w = Self {
            detector: Detector::new(&medvault_sentinel::Roster::default())
                .with_threshold(threshold),
            next: archived,
            ctx: Ctx::unrestricted_node_work(node),
            looked_up: std::collections::HashSet::new(),
            limits: AlertLimits::default(),
        };
        while w.next < cursor {
            let upto = cursor.min(w.next + BATCH);
            for (_, event) in w.read(node, upto)? {
                w.prepare(node, &event)?;
                w.detector.score(&event);
            }
            w.next = upto;
        }
        w.next = w.next.max(cursor);
        Ok(w)
    }

    /// The first leaf not yet scored.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Events of the leaves `[self.next, upto)` that are accesses, with their leaf indexes.
    fn read(&self, node: &Node, upto: u64) -> Result<Vec<(u64, Event<'static>)>, Error> {
        let mut out = Vec::new();
        for (leaf, detail) in node.access.audit_details(self.next, upto - self.next)? {
            // A detail that does not open (altered in the database: `ledger verify` reports
            // it) is passed over rather than stopping the watcher at it for ever.
            match node.ledger.open_audit(&detail) {
                Ok(rec) => out.extend(events_of(&rec).into_iter().map(|e| (leaf, e))),
                Err(e) => {
                    tracing::warn!(leaf, error = %e.message, "sentinel: an access-log detail does not open")
                }
            }
        }
        Ok(out)
    }

    /// Puts the event's user and patient on the detector's roster the first time the log
    /// names them (a patient being registered is looked up when next opened).
    fn prepare(&mut self, node: &Node, e: &Event<'_>) -> Result<(), Error> {
        let user = format!("u:{}", e.user);
        if !self.looked_up.contains(&user) {
            if let Some(u) = roster_user(node, &self.ctx, &e.user)? {
                self.detector.add_user(&u);
            }
            self.looked_up.insert(user);
        }
        let registers = e.action == Action::Create && e.resource_type.as_deref() == Some("Patient");
        if let Some(id) = e.patient.as_deref().filter(|_| !registers) {
            let patient = format!("p:{id}");
            if !self.looked_up.contains(&patient) {
                if let Some(p) = roster_patient(node, &self.ctx, id)? {
                    self.detector.add_patient(&p);
                }
                self.looked_up.insert(patient);
            }
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
            return Ok(Stepped::default());
        }
        let upto = size.min(self.next + BATCH);
        let events = self.read(node, upto)?;
        let key = crate::identity::identity_key(node)?;
        let mut alerts = Vec::new();
        let mut done = Stepped::default();
        let mut last_leaf = None;
        let mut in_leaf = 0u32;
        for (leaf, e) in &events {
            // A record scored for several patients may raise several alerts: numbered within
            // their leaf.
            in_leaf = if last_leaf == Some(*leaf) {
                in_leaf + 1
            } else {
                0
            };
            last_leaf = Some(*leaf);
            self.prepare(node, e)?;
            let s = self.detector.score(e);
            done.scored += 1;
            if !s.alert || !self.limits.admit(e) {
                continue;
            }
            let id = if in_leaf == 0 {
                format!("alr_s{leaf}")
            } else {
                format!("alr_s{leaf}_{in_leaf}")
            };
            let detail = json!({
                "leaf": leaf,
                "suppressed_before": self.limits.take_suppressed(&e.user),
                "score": (s.score * 1e4).round() / 1e4,
                "action": format!("{:?}", e.action).to_lowercase(),
                "resource_type": e.resource_type,
                "reasons": s.reasons.iter().map(|r| json!({
                    "signal": r.signal.name(),
                    "value": r.value,
                    "contribution": (r.contribution * 100.0).round() / 100.0,
                })).collect::<Vec<_>>(),
            });
            let bytes = zeroize::Zeroizing::new(detail.to_string().into_bytes());
            alerts.push(AlertRow {
                id: id.clone(),
                kind: ALERT_KIND.into(),
                at_micros: e.time.saturating_mul(1_000_000),
                user_id: e.user.to_string(),
                patient: e.patient.as_ref().map(ToString::to_string),
                detail: crate::identity::seal(
                    &key,
                    &id,
                    crate::identity::break_glass::ALERT_FIELD,
                    &bytes,
                )?,
                acknowledged_by: None,
                acknowledged_micros: None,
            });
        }
        done.alerts = alerts.len() as u64;
        let cursor = upto.to_string();
        let raised: Vec<(String, Option<String>)> = alerts
            .iter()
            .map(|a| (a.id.clone(), a.patient.clone()))
            .collect();
        write_with(node.store.as_ref(), move |tx| {
            for a in &alerts {
                tx.put_alert(a)?;
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
                .target_opt(Some(&id))
                .patient(patient)
            })?;
        }
        Ok(done)
    }
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
    Ok(Some(RosterUser {
        id: id.to_owned(),
        role: Some(row.role),
        department: None,
        family_token,
        address_token,
        shift: None,
    }))
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
fn read(node: &Node, ctx: &Ctx, rt: &ResourceType, id: &str) -> Result<Option<Value>, Error> {
    let Ok(id) = ResourceId::new(id) else {
        return Ok(None);
    };
    let Some(row) = node.store.version(rt, &id, None)? else {
        return Ok(None);
    };
    Ok(crate::records::open(node.store.as_ref(), ctx, &row).ok())
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

/// Scores the access log every `every` until the task is dropped; a failed step is logged and
/// retried at the next tick. The detector is rebuilt (in a blocking thread) before the first.
pub async fn task(node: Arc<Node>, threshold: f64, every: Duration) {
    let opened = {
        let node = Arc::clone(&node);
        tokio::task::spawn_blocking(move || Watcher::open(&node, threshold)).await
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
}
