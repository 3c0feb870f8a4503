//! Breach assessment (GDPR Art. 33/34, HITECH 45 CFR §164.404–408): from the access log, what
//! one principal (a person, an app, an API token) disclosed in a window, or what a compromised
//! key could open; who is affected, where they live, which thresholds are crossed, the
//! notification deadlines and draft notices.
//!
//! The access log is the evidence: a principal's successful requests name the patients they
//! revealed (`policy.patients_seen`) and the resource types they touched. Refused attempts are
//! counted apart (nothing was disclosed). Entries archived out of the log cannot be read here;
//! the assessment says when its window reaches them.

use std::collections::{BTreeMap, BTreeSet};

use medvault_core::{ResourceId, ResourceType};
use medvault_node::Node;
use medvault_node::clock::instant;
use serde::Serialize;
use serde_json::Value;

use crate::Error;

/// The assessment's format name.
pub const FORMAT: &str = "medvault-breach-assessment/1";

/// HITECH's threshold: a breach of 500 or more people's data is reported to HHS at once (not in
/// the annual log), and 500 or more residents of one State to its media (§164.406, §164.408).
pub const HITECH_THRESHOLD: u64 = 500;

/// Hours within which the supervisory authority is notified (GDPR Art. 33(1)).
pub const GDPR_AUTHORITY_HOURS: i64 = 72;

/// Days within which individuals are notified (HITECH §164.404(b)).
pub const HITECH_DAYS: i64 = 60;

/// How far an access-log record's time may trail its place in the log (requests are written
/// when they end, a few at a time): the scan reads this much either side of the window.
const SLACK_MICROS: i64 = 3_600_000_000;

/// The longest window assessed at once (a year): longer ones are assessed in parts.
const MAX_WINDOW_MICROS: i64 = 366 * 86_400_000_000;

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Leaves read per step.
const BATCH: u64 = 2_048;

/// Whose actions are assessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// `user`, `app` or `token`.
    pub kind: &'static str,
    /// Its id (`usr_…`, the client id, `tok_…`).
    pub id: String,
    /// Its role, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Finds the principal `text` names: a user id (`usr_…`) or user name, an API token id
/// (`tok_…`), or an app's client id.
///
/// # Errors
/// [`Error::Invalid`] when nothing has that id or name.
pub fn principal(node: &Node, text: &str) -> Result<Principal, Error> {
    let text = text.trim();
    if text.is_empty() || text.len() > 256 {
        return Err(Error::Invalid(
            "name a principal: a user id (usr_…) or user name, an API token id (tok_…) or an app's client id".into(),
        ));
    }
    if let Some(u) = node.store.user(text)? {
        return Ok(Principal {
            kind: "user",
            id: u.id,
            role: Some(u.role),
        });
    }
    if text.starts_with("tok_")
        && let Some(t) = node
            .store
            .tokens()?
            .into_iter()
            .find(|t| t.token_id == text)
    {
        return Ok(Principal {
            kind: "token",
            id: t.token_id,
            role: Some(t.role),
        });
    }
    if let Some(c) = node.store.client(text)? {
        return Ok(Principal {
            kind: "app",
            id: c.client_id,
            role: None,
        });
    }
    // A user name (normalised as accounts are): looked up by its blind index.
    if let Ok(Some(u)) = medvault_node::identity::accounts::find_user(node, text) {
        return Ok(Principal {
            kind: "user",
            id: u.id,
            role: Some(u.role),
        });
    }
    Err(Error::Invalid(
        "unknown principal: no user, API token or app has this id or name".into(),
    ))
}

/// The window and the moment the breach was discovered, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// From (inclusive).
    pub from_micros: i64,
    /// To (inclusive).
    pub to_micros: i64,
    /// When the breach was discovered (deadlines run from it).
    pub discovered_micros: i64,
}

impl Window {
    /// Checks the window: from before to, at most a year, discovered not before it began.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming what is wrong.
    pub fn new(from_micros: i64, to_micros: i64, discovered_micros: i64) -> Result<Self, Error> {
        if to_micros < from_micros {
            return Err(Error::Invalid(
                "the window is inverted: --to is before --from".into(),
            ));
        }
        if to_micros - from_micros > MAX_WINDOW_MICROS {
            return Err(Error::Invalid(
                "the window is longer than a year: assess it in parts".into(),
            ));
        }
        if discovered_micros < from_micros {
            return Err(Error::Invalid(
                "the breach cannot be discovered before the window begins".into(),
            ));
        }
        not_in_future(discovered_micros)?;
        Ok(Self {
            from_micros,
            to_micros,
            discovered_micros,
        })
    }
}

/// Refuses a discovery in the future (beyond five minutes of clock skew).
fn not_in_future(discovered_micros: i64) -> Result<(), Error> {
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros()),
    )
    .unwrap_or(i64::MAX);
    if discovered_micros > now.saturating_add(300_000_000) {
        return Err(Error::Invalid(
            "a breach cannot be discovered in the future".into(),
        ));
    }
    Ok(())
}

/// Parses a time given on the command line or in a request: RFC 3339, or a date (`to` dates
/// mean the end of that day, UTC).
///
/// # Errors
/// [`Error::Invalid`] naming `what`.
pub fn parse_time(what: &str, text: &str, end_of_day: bool) -> Result<i64, Error> {
    use time::format_description::well_known::Rfc3339;
    let bad = || {
        Error::Invalid(format!(
            "{what} is not a time: give RFC 3339 (2026-12-01T08:00:00Z) or a date (2026-12-01)"
        ))
    };
    let t = text.trim();
    if t.len() > 64 {
        return Err(bad());
    }
    let micros = if t.len() == 10 {
        let date = time::Date::parse(t, time::macros::format_description!("[year]-[month]-[day]"))
            .map_err(|_| bad())?;
        let start = date.midnight().assume_utc().unix_timestamp_nanos() / 1_000;
        if end_of_day {
            start + DAY_MICROS as i128 - 1
        } else {
            start
        }
    } else {
        time::OffsetDateTime::parse(t, &Rfc3339)
            .map_err(|_| bad())?
            .unix_timestamp_nanos()
            / 1_000
    };
    // Nothing medvault holds happened before 1970.
    i64::try_from(micros)
        .ok()
        .filter(|m| *m >= 0)
        .ok_or_else(bad)
}

/// What the access log holds on the principal's actions in the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Leaves in the access log when assessed.
    pub log_size: u64,
    /// Leaves read (the window and its slack).
    pub scanned: u64,
    /// The principal's records in the window.
    pub events: u64,
    /// Of those, refused or failed ones.
    pub refused: u64,
    /// The first and last of the principal's leaves in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_leaf: Option<u64>,
    /// See `first_leaf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_leaf: Option<u64>,
    /// Entries before this leaf were archived out of the log and could not be read: the
    /// window reaches them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_before: Option<u64>,
    /// Entries whose sealed detail would not open (counted, not read).
    pub unreadable: u64,
}

/// Where affected people live, by country and state (from their Patient resource's address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jurisdiction {
    /// Country as recorded (`unknown` if none).
    pub country: String,
    /// State, province or region as recorded (`unknown` if none).
    pub state: String,
    /// People.
    pub patients: u64,
    /// 500 or more: HITECH's media notice applies in this State.
    pub media_notice: bool,
}

/// HITECH's consequences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hitech {
    /// People affected.
    pub affected: u64,
    /// 500 or more: HHS is notified with the individuals, not in the annual log.
    pub hhs_immediate: bool,
    /// When individuals must be notified by (60 days from discovery).
    pub individuals_due: String,
    /// When HHS must be notified by.
    pub hhs_due: String,
    /// The States whose media must be notified (500 or more residents), with the deadline.
    pub media: Vec<String>,
    /// When the media must be notified by (when any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_due: Option<String>,
}

/// GDPR's consequences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gdpr {
    /// When the supervisory authority must be notified by (72 hours from discovery), unless
    /// the breach is unlikely to result in a risk to people's rights (Art. 33(1)).
    pub authority_due: String,
    /// Art. 34: data subjects are told without undue delay when the risk is high.
    pub data_subjects: String,
}

/// Draft notices, in plain text, with placeholders in brackets for what only people know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notices {
    /// To each affected person (HITECH §164.404(c), GDPR Art. 34(2)).
    pub patient: String,
    /// To the regulator (GDPR Art. 33(3); HHS's breach portal asks the same).
    pub regulator: String,
}

/// A breach assessment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assessment {
    /// [`FORMAT`].
    pub format: &'static str,
    /// What was assessed: `principal` or `key`.
    pub kind: &'static str,
    /// The principal, when one was assessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// The compromised key, when one was assessed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The window (principal assessments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// See `from`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// When the breach was discovered.
    pub discovered: String,
    /// When this was assessed.
    pub assessed: String,
    /// The access log's evidence (principal assessments).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// Patients whose data was disclosed (or, for a key, could be opened), by id.
    pub patients: Vec<String>,
    /// Patients the principal tried to reach and was refused, not counted as affected.
    pub refused_patients: u64,
    /// Resource types touched, with the records that touched them.
    pub resource_types: BTreeMap<String, u64>,
    /// What was done, by interaction (`read`, `search-type`, `bulk-export`…).
    pub interactions: BTreeMap<String, u64>,
    /// Data outside any patient's compartment that a key could open (shared resources,
    /// indexes, the access log's details).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<String>,
    /// Where the affected people live.
    pub jurisdictions: Vec<Jurisdiction>,
    /// HITECH.
    pub hitech: Hitech,
    /// GDPR.
    pub gdpr: Gdpr,
    /// Draft notices.
    pub notices: Notices,
}

/// What one access-log record says about the principal, if it is theirs.
#[derive(Debug, Default)]
struct Touch {
    leaf: u64,
    ok: bool,
    interaction: String,
    resource_type: Option<String>,
    seen: Vec<String>,
    refused: Vec<String>,
}

fn is_theirs(p: &Principal, rec: &Value) -> bool {
    let Some(agent) = rec.get("agent") else {
        return false;
    };
    let field = |k: &str| agent.get(k).and_then(Value::as_str);
    match p.kind {
        "app" => field("client") == Some(p.id.as_str()),
        _ => field("token") == Some(p.id.as_str()),
    }
}

fn touch_of(leaf: u64, rec: &Value) -> Touch {
    let list = |ptr: &str| -> Vec<String> {
        rec.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|p| p.strip_prefix("Patient/").unwrap_or(p).to_owned())
            .collect()
    };
    let ok = rec.get("outcome").and_then(Value::as_str) == Some("success");
    let mut seen = list("/policy/patients_seen");
    if ok && let Some(p) = rec.get("patient").and_then(Value::as_str) {
        seen.push(p.strip_prefix("Patient/").unwrap_or(p).to_owned());
    }
    Touch {
        leaf,
        ok,
        interaction: rec
            .get("interaction")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        resource_type: rec
            .get("resource_type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        seen: if ok { seen } else { Vec::new() },
        refused: list("/policy/patients_refused"),
    }
}

/// The first leaf in `[lo, hi)` whose record's time is at or after `t` (records are in time
/// order within [`SLACK_MICROS`]); leaves whose detail does not open are passed over.
fn first_at_or_after(node: &Node, lo: u64, hi: u64, t: &str) -> Result<u64, Error> {
    let time_at = |leaf: u64| -> Result<Option<String>, Error> {
        // The nearest readable leaf at or after `leaf`, within a few.
        for l in leaf..hi.min(leaf + 16) {
            if let Some((_, d)) = node.access.audit_details(l, 1)?.into_iter().next()
                && let Ok(rec) = node.ledger.open_audit(&d)
                && let Some(time) = rec.get("time").and_then(Value::as_str)
            {
                return Ok(Some(time.to_owned()));
            }
        }
        Ok(None)
    };
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match time_at(mid)? {
            Some(time) if time.as_str() < t => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Assesses what `principal` disclosed in `window`. `progress` gets (leaves read, leaves to
/// read).
///
/// # Errors
/// Store and key failures.
pub fn assess_principal(
    node: &Node,
    principal: Principal,
    window: Window,
    mut progress: impl FnMut(u64, u64),
) -> Result<Assessment, Error> {
    let (archived, _) = medvault_node::archive::archived(node.access.as_ref())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let size = node.access.ledger_size()?;
    let (from, to) = (instant(window.from_micros), instant(window.to_micros));
    let start = first_at_or_after(
        node,
        archived,
        size,
        &instant(window.from_micros.saturating_sub(SLACK_MICROS)),
    )?;
    let end = first_at_or_after(
        node,
        start,
        size,
        &instant(window.to_micros.saturating_add(SLACK_MICROS)),
    )?;
    let mut evidence = Evidence {
        log_size: size,
        archived_before: (archived > 0 && start == archived).then_some(archived),
        ..Evidence::default()
    };
    // RFC 3339 texts of one fixed width compare as the times do.
    let keep = |leaf: u64, rec: &Value| {
        let in_window = rec
            .get("time")
            .and_then(Value::as_str)
            .is_some_and(|t| t >= from.as_str() && t <= to.as_str());
        (in_window && is_theirs(&principal, rec)).then(|| touch_of(leaf, rec))
    };
    let (touches, scanned) = scan_log(node, start, end, &keep, &mut progress)?;
    evidence.scanned = scanned.read;
    evidence.unreadable = scanned.unreadable;
    let mut patients = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut types = BTreeMap::new();
    let mut interactions = BTreeMap::new();
    for t in &touches {
        evidence.events += 1;
        evidence.refused += u64::from(!t.ok);
        evidence.first_leaf = Some(evidence.first_leaf.map_or(t.leaf, |f| f.min(t.leaf)));
        evidence.last_leaf = Some(evidence.last_leaf.map_or(t.leaf, |l| l.max(t.leaf)));
        *interactions.entry(t.interaction.clone()).or_insert(0u64) += 1;
        if t.ok
            && !t.seen.is_empty()
            && let Some(rt) = &t.resource_type
        {
            *types.entry(rt.clone()).or_insert(0u64) += 1;
        }
        patients.extend(t.seen.iter().cloned());
        refused.extend(t.refused.iter().cloned());
    }
    let refused_only = refused.difference(&patients).count() as u64;
    let patients: Vec<String> = patients.into_iter().collect();
    let what = format!(
        "the {} {} ({}) between {from} and {to}",
        principal.kind,
        principal.id,
        principal.role.as_deref().unwrap_or("no role"),
    );
    finish(
        node,
        Assessment {
            format: FORMAT,
            kind: "principal",
            principal: Some(principal),
            key: None,
            from: Some(from),
            to: Some(to),
            discovered: instant(window.discovered_micros),
            assessed: instant(node.clock.now_micros()),
            evidence: Some(evidence),
            patients,
            refused_patients: refused_only,
            resource_types: types,
            interactions,
            shared: Vec::new(),
            jurisdictions: Vec::new(),
            hitech: hitech(0, &[], window.discovered_micros),
            gdpr: gdpr(window.discovered_micros),
            notices: Notices {
                patient: String::new(),
                regulator: String::new(),
            },
        },
        window.discovered_micros,
        &what,
    )
}

/// What one worker found in its batch.
struct Part<T> {
    found: Vec<T>,
    read: u64,
    unreadable: u64,
}

/// What a scan of the access log read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Scanned {
    /// Leaves read.
    pub(crate) read: u64,
    /// Leaves whose detail did not open.
    pub(crate) unreadable: u64,
}

/// Reads access-log leaves `[start, end)` on every core, keeping what `keep` makes of each
/// opened record (in leaf order). `progress` gets (leaves read, leaves to read).
///
/// # Errors
/// Store failures.
pub(crate) fn scan_log<T: Send>(
    node: &Node,
    start: u64,
    end: u64,
    keep: &(dyn Fn(u64, &Value) -> Option<T> + Sync),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Vec<T>, Scanned), Error> {
    let total = end.saturating_sub(start);
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, 8) as u64;
    let mut kept = Vec::new();
    let mut stats = Scanned::default();
    let mut at = start;
    // Steps of `workers × BATCH` leaves, each worker reading one batch of the step.
    while at < end {
        let step_end = end.min(at + workers * BATCH);
        let parts: Vec<(u64, u64)> = (at..step_end)
            .step_by(BATCH as usize)
            .map(|s| (s, (s + BATCH).min(step_end)))
            .collect();
        let results: Vec<Result<Part<T>, Error>> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|&(s, e)| {
                    scope.spawn(move || -> Result<Part<T>, Error> {
                        let mut found = Vec::new();
                        let (mut read, mut unreadable) = (0u64, 0u64);
                        for (leaf, d) in node.access.audit_details(s, e - s)? {
                            read += 1;
                            let Ok(rec) = node.ledger.open_audit(&d) else {
                                unreadable += 1;
                                continue;
                            };
                            found.extend(keep(leaf, &rec));
                        }
                        Ok(Part {
                            found,
                            read,
                            unreadable,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Internal("a scan worker failed".into())))
                })
                .collect()
        });
        for r in results {
            let part = r?;
            kept.extend(part.found);
            stats.read += part.read;
            stats.unreadable += part.unreadable;
        }
        at = step_end;
        progress(at - start, total);
    }
    Ok((kept, stats))
}

/// Assesses what a compromised key could open: `kek-N` (a key-encryption key version: every
/// data key it wraps), `Patient/<id>` (one patient's data key), `@tenant` and the node's other
/// shared keys.
///
/// # Errors
/// [`Error::Invalid`] for a key the node does not hold; store failures.
pub fn assess_key(node: &Node, key: &str, discovered_micros: i64) -> Result<Assessment, Error> {
    not_in_future(discovered_micros)?;
    let key = key.trim();
    let unknown = || {
        Error::Invalid(
            "unknown key: name a KEK version (kek-1), a patient's data key (Patient/<id>) or a shared key (@tenant)".into(),
        )
    };
    let mut patients = Vec::new();
    let mut shared = Vec::new();
    let mut take = |name: &str| match name.strip_prefix("Patient/") {
        Some(id) => patients.push(id.to_owned()),
        None => shared.push(name.to_owned()),
    };
    if let Some(v) = key.strip_prefix("kek-") {
        let version: u32 = v.parse().map_err(|_| unknown())?;
        if !node.store.keks()?.iter().any(|(n, _)| *n == version) {
            return Err(unknown());
        }
        for name in node.store.data_key_names()? {
            if node
                .store
                .data_key(&name)?
                .is_some_and(|row| row.kek_version == Some(version))
            {
                take(name.as_str());
            }
        }
    } else {
        if key.len() > 200 {
            return Err(unknown());
        }
        let name = medvault_store::stored_key_name(key.to_owned()).map_err(|_| unknown())?;
        match node.store.data_key(&name)? {
            Some(row) if row.kek_version.is_some() => take(name.as_str()),
            Some(_) => {
                return Err(Error::Invalid(
                    "that key was destroyed (crypto-shredded): it opens nothing".into(),
                ));
            }
            None => return Err(unknown()),
        }
    }
    patients.sort();
    let what = format!("the key {key}");
    finish(
        node,
        Assessment {
            format: FORMAT,
            kind: "key",
            principal: None,
            key: Some(key.to_owned()),
            from: None,
            to: None,
            discovered: instant(discovered_micros),
            assessed: instant(node.clock.now_micros()),
            evidence: None,
            patients,
            refused_patients: 0,
            resource_types: BTreeMap::new(),
            interactions: BTreeMap::new(),
            shared,
            jurisdictions: Vec::new(),
            hitech: hitech(0, &[], discovered_micros),
            gdpr: gdpr(discovered_micros),
            notices: Notices {
                patient: String::new(),
                regulator: String::new(),
            },
        },
        discovered_micros,
        &what,
    )
}

/// Jurisdictions, thresholds, deadlines and notices, from the patients found.
fn finish(
    node: &Node,
    mut a: Assessment,
    discovered_micros: i64,
    what: &str,
) -> Result<Assessment, Error> {
    a.jurisdictions = jurisdictions(node, &a.patients)?;
    a.hitech = hitech(a.patients.len() as u64, &a.jurisdictions, discovered_micros);
    a.notices = notices(&a, what);
    Ok(a)
}

fn jurisdictions(node: &Node, patients: &[String]) -> Result<Vec<Jurisdiction>, Error> {
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for id in patients {
        let place = ResourceId::new(id)
            .ok()
            .map(|id| medvault_node::records::read_as_node(node, &ResourceType::PATIENT, &id))
            .transpose()?
            .flatten()
            .map(|p| home(&p))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        *counts.entry(place).or_insert(0) += 1;
    }
    Ok(counts
        .into_iter()
        .map(|((country, state), patients)| Jurisdiction {
            // §164.406: more than 500 residents of a State (HHS: 500 or more, §164.408).
            media_notice: patients > HITECH_THRESHOLD && state != "unknown",
            country,
            state,
            patients,
        })
        .collect())
}

/// A patient's country and state: from their home address in use, else the first one.
fn home(patient: &Value) -> (String, String) {
    let addresses: &[Value] = patient
        .get("address")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let current = |a: &&Value| a.pointer("/period/end").is_none();
    let chosen = addresses
        .iter()
        .find(|a| current(a) && a.get("use").and_then(Value::as_str) == Some("home"))
        .or_else(|| addresses.iter().find(current))
        .or_else(|| addresses.first());
    let field = |k: &str| {
        chosen
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map_or_else(|| "unknown".to_owned(), |s| s.chars().take(64).collect())
    };
    (field("country"), field("state"))
}

fn hitech(affected: u64, places: &[Jurisdiction], discovered_micros: i64) -> Hitech {
    let due = instant(discovered_micros.saturating_add(HITECH_DAYS * DAY_MICROS));
    let hhs_immediate = affected >= HITECH_THRESHOLD;
    let media: Vec<String> = places
        .iter()
        .filter(|j| j.media_notice)
        .map(|j| format!("{} ({})", j.state, j.country))
        .collect();
    Hitech {
        affected,
        hhs_immediate,
        individuals_due: due.clone(),
        hhs_due: if hhs_immediate {
            due.clone()
        } else {
            // Under 500: in the annual log, within 60 days of the end of the calendar year.
            let year = time::OffsetDateTime::from_unix_timestamp(discovered_micros / 1_000_000)
                .map_or(1970, |t| t.year());
            let end = time::Date::from_calendar_date(year + 1, time::Month::January, 1)
                .map(|d| d.midnight().assume_utc().unix_timestamp() * 1_000_000)
                .unwrap_or(discovered_micros);
            instant(end.saturating_add(HITECH_DAYS * DAY_MICROS))
        },
        media_due: (!media.is_empty()).then_some(due),
        media,
    }
}

fn gdpr(discovered_micros: i64) -> Gdpr {
    Gdpr {
        authority_due: instant(
            discovered_micros.saturating_add(GDPR_AUTHORITY_HOURS * HOUR_MICROS),
        ),
        data_subjects: "without undue delay, when the breach is likely to result in a high risk to their rights and freedoms (Art. 34(1))".into(),
    }
}

/// What a resource type holds, in words a patient reads.
fn in_words(rt: &str) -> &'static str {
    match rt {
        "Patient" | "RelatedPerson" | "Person" => "names, contact details and demographics",
        "Observation" => "test results, vital signs and other observations",
        "Condition" => "diagnoses and health problems",
        "MedicationRequest"
        | "MedicationStatement"
        | "MedicationAdministration"
        | "MedicationDispense"
        | "Medication" => "medications",
        "Encounter" | "EpisodeOfCare" | "Appointment" => "visits and admissions",
        "Procedure" => "procedures and operations",
        "Immunization" => "vaccinations",
        "AllergyIntolerance" => "allergies",
        "DiagnosticReport" | "ImagingStudy" | "Media" | "Specimen" => {
            "diagnostic reports and imaging"
        }
        "DocumentReference" | "Composition" | "Binary" => "clinical documents and notes",
        "Claim" | "ExplanationOfBenefit" | "Coverage" | "Account" | "Invoice" => {
            "insurance and billing information"
        }
        "CarePlan" | "CareTeam" | "Goal" | "ServiceRequest" => "care plans and referrals",
        "Consent" => "your consent choices",
        "MolecularSequence" => "genetic information",
        _ => "other health information",
    }
}

fn notices(a: &Assessment, what: &str) -> Notices {
    let kinds: BTreeSet<&str> = if a.resource_types.is_empty() {
        BTreeSet::from(["the health information we hold about you"])
    } else {
        a.resource_types.keys().map(|rt| in_words(rt)).collect()
    };
    let kinds: Vec<&str> = kinds.into_iter().collect();
    let types: Vec<String> = a
        .resource_types
        .iter()
        .map(|(t, n)| format!("{t} ({n} requests)"))
        .collect();
    let period = match (&a.from, &a.to) {
        (Some(f), Some(t)) => format!("between {f} and {t}"),
        _ => "while the key was exposed".to_owned(),
    };
    let patient = format!(
        "Notice of a breach of your health information\n\n\
         Dear [patient name],\n\n\
         What happened: on {discovered} we discovered that your health records held by \
         [organisation] were accessed without authorisation {period}.\n\n\
         What information was involved: {kinds}.\n\n\
         What we are doing: we stopped the access, recorded it in our tamper-evident access \
         log, [measures taken, e.g. disabled the account, rotated the keys], and are reviewing \
         how it happened so that it does not happen again.\n\n\
         What you can do: [steps the person can take to protect themselves, e.g. watch \
         statements from your insurer for services you did not receive].\n\n\
         For more information: [contact: toll-free number, e-mail address, postal address]. \
         You can also see who accessed your record, and why, in the patient portal.\n\n\
         [name and title of the privacy officer]\n",
        discovered = a.discovered,
        kinds = kinds.join("; "),
    );
    let places: Vec<String> = a
        .jurisdictions
        .iter()
        .map(|j| format!("{}, {}: {}", j.state, j.country, j.patients))
        .collect();
    let regulator = format!(
        "Notification of a personal data breach (GDPR Art. 33; HITECH 45 CFR §164.408)\n\n\
         Controller: [organisation, address]\n\
         Contact point (data protection officer): [name, e-mail, telephone]\n\n\
         1. Nature of the breach: unauthorised access by {what}.\n\
         Discovered: {discovered}. Assessed from the node's access log: {assessed}.\n\n\
         2. Data subjects and records concerned: {people} people{refused}; records by type: \
         {types}.\n\
         Categories of data: {kinds} (health data, GDPR Art. 9).\n\
         Where the people live: {places}.\n\n\
         3. Likely consequences: [e.g. disclosure of sensitive health information; risk of \
         discrimination, distress or fraud].\n\n\
         4. Measures taken or proposed: [e.g. account disabled, sessions ended, keys rotated, \
         affected people notified on …].\n\n\
         Deadlines: supervisory authority by {authority}; individuals by {individuals} \
         (HITECH); HHS by {hhs}{media}.\n",
        discovered = a.discovered,
        assessed = a.assessed,
        people = a.patients.len(),
        refused = if a.refused_patients > 0 {
            format!(
                " (and {} more whose records were requested but refused)",
                a.refused_patients
            )
        } else {
            String::new()
        },
        types = if types.is_empty() {
            "all records sealed under the key".to_owned()
        } else {
            types.join(", ")
        },
        kinds = kinds.join("; "),
        places = if places.is_empty() {
            "none".to_owned()
        } else {
            places.join("; ")
        },
        authority = a.gdpr.authority_due,
        individuals = a.hitech.individuals_due,
        hhs = a.hitech.hhs_due,
        media = a
            .hitech
            .media_due
            .as_ref()
            .map(|d| format!("; media in {} by {d}", a.hitech.media.join(", ")))
            .unwrap_or_default(),
    );
    Notices { patient, regulator }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn windows_are_checked() {
        assert!(Window::new(10, 5, 20).is_err(), "inverted");
        assert!(
            Window::new(0, MAX_WINDOW_MICROS + 1, 0).is_err(),
            "too long"
        );
        assert!(Window::new(10, 20, 5).is_err(), "discovered before");
        assert!(Window::new(10, 20, 15).is_ok());
    }

    #[test]
    fn times_parse_as_rfc3339_or_dates() {
        assert_eq!(
            parse_time("--from", "1970-01-02", false).ok(),
            Some(DAY_MICROS)
        );
        assert_eq!(
            parse_time("--to", "1970-01-01", true).ok(),
            Some(DAY_MICROS - 1)
        );
        assert_eq!(
            parse_time("--from", "1970-01-01T00:00:01Z", false).ok(),
            Some(1_000_000)
        );
        for bad in ["yesterday", "2026-13-01", "", "2026-12-01T25:00:00Z"] {
            let e = parse_time("--from", bad, false).unwrap_err().to_string();
            assert!(e.starts_with("--from is not a time"), "{e}");
        }
    }

    #[test]
    fn records_are_matched_to_their_principal_only() {
        let user = Principal {
            kind: "user",
            id: "usr_1".into(),
            role: None,
        };
        let app = Principal {
            kind: "app",
            id: "app-1".into(),
            role: None,
        };
        let rec = json!({"agent": {"token": "usr_1", "client": "app-1"}});
        assert!(is_theirs(&user, &rec) && is_theirs(&app, &rec));
        let other = json!({"agent": {"token": "usr_2", "client": null}});
        assert!(!is_theirs(&user, &other) && !is_theirs(&app, &other));
        assert!(!is_theirs(&user, &json!({"auth": {"user": "usr_1"}})));
    }

    #[test]
    fn a_refused_request_discloses_nothing() {
        let ok = json!({"outcome": "success", "interaction": "search-type",
            "resource_type": "Observation", "patient": "Patient/a",
            "policy": {"patients_seen": ["Patient/a", "Patient/b"], "patients_refused": ["Patient/c"]}});
        let t = touch_of(7, &ok);
        assert_eq!(t.seen, ["a", "b", "a"]);
        assert_eq!(t.refused, ["c"]);
        let denied = json!({"outcome": "denied", "interaction": "read",
            "resource_type": "Patient", "patient": "Patient/d",
            "policy": {"patients_seen": [], "patients_refused": ["Patient/d"]}});
        let t = touch_of(8, &denied);
        assert!(t.seen.is_empty() && !t.ok);
        assert_eq!(t.refused, ["d"]);
    }

    #[test]
    fn the_home_address_in_use_names_the_jurisdiction() {
        let p = json!({"address": [
            {"use": "home", "state": "CA", "country": "US", "period": {"end": "2020-01-01"}},
            {"use": "work", "state": "NY", "country": "US"},
            {"use": "home", "state": "MA", "country": "US"}
        ]});
        assert_eq!(home(&p), ("US".into(), "MA".into()));
        assert_eq!(home(&json!({})), ("unknown".into(), "unknown".into()));
    }

    #[test]
    fn thresholds_and_deadlines() {
        let ma = |n| Jurisdiction {
            country: "US".into(),
            state: "MA".into(),
            patients: n,
            media_notice: n > HITECH_THRESHOLD,
        };
        // 2026-03-01T00:00:00Z
        let discovered = 1_772_323_200_000_000;
        let small = hitech(499, &[ma(499)], discovered);
        assert!(!small.hhs_immediate && small.media.is_empty());
        assert_eq!(small.individuals_due, "2026-04-30T00:00:00.000000Z");
        assert_eq!(small.hhs_due, "2027-03-02T00:00:00.000000Z", "annual log");
        let big = hitech(500, &[ma(500)], discovered);
        assert!(
            big.hhs_immediate && big.media.is_empty(),
            "media: more than 500"
        );
        let big = hitech(501, &[ma(501)], discovered);
        assert_eq!(big.media, ["MA (US)"]);
        assert_eq!(big.hhs_due, big.individuals_due);
        assert_eq!(
            gdpr(discovered).authority_due,
            "2026-03-04T00:00:00.000000Z"
        );
    }
}
