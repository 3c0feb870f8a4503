//! The breach register (GDPR Art. 33(5): the controller documents every personal-data breach,
//! its effects and the remedial action taken; HITECH: the covered entity keeps what it needs
//! to show notices were given on time).
//!
//! An entry is a row of the store's `register` table: its deadline and status in the clear,
//! what it says (title, description, the assessment with the affected patients, the notices
//! given) sealed under the node's identity key, bound to the entry's id. Every change is an
//! access-log record naming the entry and the SHA-256 of its new sealed content's plaintext, so
//! an entry edited in the database without the node does not match the ledger.

use std::collections::BTreeMap;

use medvault_node::Node;
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_node::clock::instant;
use medvault_node::identity::{identity_key, open, random_id, seal};
use medvault_store::{RegisterRow, StoreRead, write_with};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::breach::{Assessment, GDPR_AUTHORITY_HOURS, HITECH_DAYS};

/// The register kind of a breach.
pub const BREACH: &str = "breach";
/// The sealed field of an entry's content.
const FIELD: &str = "register";

const HOUR_MICROS: i64 = 3_600_000_000;

/// Whom a breach is notified to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Recipient {
    /// The supervisory authority (GDPR Art. 33), within 72 hours.
    Authority,
    /// The people affected (GDPR Art. 34, HITECH §164.404), within 60 days.
    Individuals,
    /// HHS (HITECH §164.408).
    Hhs,
    /// Prominent media in a State with 500 or more affected residents (HITECH §164.406).
    Media,
}

impl Recipient {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authority => "authority",
            Self::Individuals => "individuals",
            Self::Hhs => "hhs",
            Self::Media => "media",
        }
    }

    /// The recipient named `text`.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing the names.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "authority" => Ok(Self::Authority),
            "individuals" => Ok(Self::Individuals),
            "hhs" => Ok(Self::Hhs),
            "media" => Ok(Self::Media),
            _ => Err(Error::Invalid(
                "notified whom? authority, individuals, hhs or media".into(),
            )),
        }
    }
}

/// A notice given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// When it was given.
    pub at: String,
    /// Who recorded it.
    pub by: String,
    /// The recipient's reference (a case number), or why no notice was needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// True when the notice was judged not required (GDPR Art. 33(1): unlikely to result in a
    /// risk), with the reason in `reference`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_required: bool,
}

/// What a breach entry says (sealed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreachEntry {
    /// A short title.
    pub title: String,
    /// What happened, as known.
    pub description: String,
    /// When it was discovered.
    pub discovered: String,
    /// Who opened the entry.
    pub recorded_by: String,
    /// The assessment it rests on (affected patients, deadlines, draft notices).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assessment: Option<Value>,
    /// Notices given, by recipient.
    #[serde(default)]
    pub notices: BTreeMap<Recipient, Notice>,
    /// Why and by whom it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Notice>,
}

/// What a new entry records.
#[derive(Debug, Clone)]
pub struct NewBreach<'a> {
    /// Title (one line).
    pub title: &'a str,
    /// What happened.
    pub description: &'a str,
    /// When discovered, microseconds.
    pub discovered_micros: i64,
    /// Who records it (a user or token id, or the operating-system user of the CLI).
    pub by: &'a str,
    /// The assessment, if one was made.
    pub assessment: Option<&'a Assessment>,
}

pub(crate) fn readable(name: &str, text: &str, max: usize) -> Result<String, Error> {
    // Text a person reads: no control characters, and none of the invisible or direction-
    // changing ones that could make it display as something else.
    let hidden = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}' | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}' | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
    };
    let t = text.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(hidden) {
        return Err(Error::Invalid(format!(
            "{name} must be 1 to {max} characters of text, without control or invisible characters"
        )));
    }
    Ok(t.to_owned())
}

/// Opens the content sealed in a register row (a breach's or a request's).
pub(crate) fn open_entry<T: serde::de::DeserializeOwned>(
    node: &Node,
    row: &RegisterRow,
) -> Result<T, Error> {
    let key = identity_key(node)?;
    let plain = open(&key, &row.id, FIELD, &row.body)?;
    serde_json::from_slice(&plain).map_err(|e| Error::Internal(e.to_string()))
}

/// Writes `row` with `entry` sealed in it, and the access-log record of the change: its kind,
/// status, the SHA-256 of the new content, and the patient a request is about (by bare id, as
/// the access log names patients, so it is in their accounting of disclosures).
pub(crate) fn store<T: Serialize>(
    node: &Node,
    row: RegisterRow,
    entry: &T,
    action: &str,
    agent: &Value,
) -> Result<(), Error> {
    store_checked(node, vec![(row, entry, action)], agent, |_| Ok(()))
}

/// Writes `changes` in one transaction, only if `check` passes inside it (so two requests
/// racing cannot both pass a limit or both place a flag: the writer runs one transaction at
/// a time), then records each change as [`store`] does.
pub(crate) fn store_checked<T: Serialize>(
    node: &Node,
    changes: Vec<(RegisterRow, &T, &str)>,
    agent: &Value,
    check: impl FnOnce(&dyn StoreRead) -> Result<(), Error> + Send + 'static,
) -> Result<(), Error> {
    let key = identity_key(node)?;
    let mut rows = Vec::with_capacity(changes.len());
    let mut records = Vec::with_capacity(changes.len());
    for (mut row, entry, action) in changes {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(entry).map_err(|e| Error::Internal(e.to_string()))?,
        );
        let digest = hex::encode(medvault_crypto::sha256(&plain));
        row.body = seal(&key, &row.id, FIELD, &plain)?;
        records.push((row.clone(), digest, action.to_owned()));
        rows.push(row);
    }
    write_with(node.store.as_ref(), move |tx| {
        if let Err(e) = check(&*tx) {
            return Ok(Err(e));
        }
        for r in &rows {
            tx.put_register_entry(r)?;
        }
        Ok(Ok(()))
    })??;
    for (row, digest, action) in records {
        let patient = row
            .subject
            .as_deref()
            .map(|s| s.strip_prefix("Patient/").unwrap_or(s).to_owned());
        node.record_audit_now(|now| {
            AuditRecord::new(AuditKind::Admin, now, &action, AuditOutcome::Success)
                .agent(agent.clone())
                .target_opt(Some(&row.id))
                .patient(patient)
                .with(
                    "extra",
                    json!({"register": {"kind": row.kind, "status": row.status, "content_sha256": digest}}),
                )
        })?;
    }
    Ok(())
}

/// Opens a breach entry: due to the supervisory authority 72 hours after discovery.
///
/// # Errors
/// [`Error::Invalid`] for empty or oversized text, a discovery in the future; store failures.
pub fn record_breach(node: &Node, new: &NewBreach<'_>, agent: &Value) -> Result<Value, Error> {
    let now = node.clock.now_micros();
    if new.discovered_micros > now + 300_000_000 {
        return Err(Error::Invalid(
            "a breach cannot be discovered in the future".into(),
        ));
    }
    let entry = BreachEntry {
        title: readable("the title", new.title, 200)?,
        description: readable("the description", new.description, 20_000)?,
        discovered: instant(new.discovered_micros),
        recorded_by: new.by.to_owned(),
        assessment: new
            .assessment
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::Internal(e.to_string()))?,
        notices: BTreeMap::new(),
        closed: None,
    };
    let id = random_id("brc_")?;
    let row = RegisterRow {
        id: id.clone(),
        kind: BREACH.into(),
        subject: None,
        opened_micros: new.discovered_micros,
        due_micros: new.discovered_micros + GDPR_AUTHORITY_HOURS * HOUR_MICROS,
        status: "open".into(),
        closed_micros: None,
        updated_micros: now,
        body: medvault_crypto::Sealed::from_stored(Vec::new()),
    };
    store(node, row, &entry, "breach-record", agent)?;
    show(node, &id)
}

/// A notice given, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Given<'a> {
    /// To whom.
    pub to: Recipient,
    /// When, microseconds.
    pub at_micros: i64,
    /// The recipient's reference, or why no notice is required.
    pub reference: Option<&'a str>,
    /// No notice was required (the reason in `reference`).
    pub not_required: bool,
    /// Who records it.
    pub by: &'a str,
}

/// Records a notice given (or judged not required) for breach `id`.
///
/// # Errors
/// [`Error::Invalid`] for an unknown or closed entry, a notice already recorded, a time before
/// discovery or in the future.
pub fn notify(node: &Node, id: &str, given: &Given<'_>, agent: &Value) -> Result<Value, Error> {
    let Given {
        to,
        at_micros,
        reference,
        not_required,
        by,
    } = *given;
    let (mut row, mut entry) = find(node, id)?;
    let now = node.clock.now_micros();
    if row.closed_micros.is_some() {
        return Err(Error::Invalid("that breach is closed".into()));
    }
    if entry.notices.contains_key(&to) {
        return Err(Error::Invalid(format!(
            "a notice to {} is already recorded",
            to.as_str()
        )));
    }
    if at_micros < row.opened_micros || at_micros > now + 300_000_000 {
        return Err(Error::Invalid(
            "a notice is given after the breach is discovered and not in the future".into(),
        ));
    }
    if not_required && reference.is_none() {
        return Err(Error::Invalid(
            "say why no notice is required (--reason)".into(),
        ));
    }
    let reference = reference
        .map(|r| readable("the reference", r, 2_000))
        .transpose()?;
    entry.notices.insert(
        to,
        Notice {
            at: instant(at_micros),
            by: by.to_owned(),
            reference,
            not_required,
        },
    );
    if to == Recipient::Authority {
        row.status = "notified".into();
    }
    row.updated_micros = now;
    store(node, row, &entry, "breach-notify", agent)?;
    show(node, id)
}

/// Closes breach `id` with a reason.
///
/// # Errors
/// [`Error::Invalid`] for an unknown or already closed entry, or no reason.
pub fn close(node: &Node, id: &str, reason: &str, by: &str, agent: &Value) -> Result<Value, Error> {
    let (mut row, mut entry) = find(node, id)?;
    if row.closed_micros.is_some() {
        return Err(Error::Invalid("that breach is already closed".into()));
    }
    let now = node.clock.now_micros();
    entry.closed = Some(Notice {
        at: instant(now),
        by: by.to_owned(),
        reference: Some(readable("the reason", reason, 2_000)?),
        not_required: false,
    });
    row.status = "closed".into();
    row.closed_micros = Some(now);
    row.updated_micros = now;
    store(node, row, &entry, "breach-close", agent)?;
    show(node, id)
}

fn find(node: &Node, id: &str) -> Result<(RegisterRow, BreachEntry), Error> {
    let unknown = || Error::NotFound("no breach in the register has this id".into());
    if id.len() > 64 {
        return Err(unknown());
    }
    let row = node
        .store
        .register_entry(id)?
        .filter(|r| r.kind == BREACH)
        .ok_or_else(unknown)?;
    let entry: BreachEntry = open_entry(node, &row)?;
    Ok((row, entry))
}

/// The deadlines of an entry and whether each was met.
fn deadlines(row: &RegisterRow, entry: &BreachEntry, now: i64) -> Value {
    let individuals_due = row.opened_micros + HITECH_DAYS * 86_400_000_000;
    let state = |to: Recipient, due: i64| {
        let done = entry.notices.get(&to);
        let at = done.and_then(|n| {
            time::OffsetDateTime::parse(&n.at, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| (t.unix_timestamp_nanos() / 1_000) as i64)
        });
        // Closing an entry does not undo a deadline it had already missed.
        let closed = row.closed_micros;
        let status = match (at, done.is_some_and(|n| n.not_required)) {
            (_, true) => "not-required",
            (Some(a), _) if a <= due => "on-time",
            (Some(_), _) => "late",
            (None, _) if closed.is_some_and(|c| c > due) => "overdue",
            (None, _) if closed.is_some() => "closed-without-notice",
            (None, _) if now > due => "overdue",
            (None, _) => "pending",
        };
        json!({"due": instant(due), "status": status})
    };
    let mut d = json!({
        "authority": state(Recipient::Authority, row.due_micros),
        "individuals": state(Recipient::Individuals, individuals_due),
    });
    // HHS at once and the media, when the assessment says they apply (HITECH §164.406–408).
    let hitech = entry.assessment.as_ref().map(|a| &a["hitech"]);
    if hitech.is_some_and(|h| h["hhs_immediate"] == true) {
        d["hhs"] = state(Recipient::Hhs, individuals_due);
    }
    if hitech.is_some_and(|h| h["media"].as_array().is_some_and(|m| !m.is_empty())) {
        d["media"] = state(Recipient::Media, individuals_due);
    }
    d
}

fn entry_json(node: &Node, row: &RegisterRow, entry: &BreachEntry) -> Value {
    let now = node.clock.now_micros();
    json!({
        "id": row.id,
        "status": row.status,
        "title": entry.title,
        "description": entry.description,
        "discovered": entry.discovered,
        "recorded_by": entry.recorded_by,
        "updated": instant(row.updated_micros),
        "closed": entry.closed,
        "deadlines": deadlines(row, entry, now),
        "notices": entry.notices,
        "affected": entry.assessment.as_ref().and_then(|a| a.get("patients")).and_then(Value::as_array).map(Vec::len),
        "assessment": entry.assessment,
    })
}

/// One entry, opened.
///
/// # Errors
/// [`Error::Invalid`] for an unknown id.
pub fn show(node: &Node, id: &str) -> Result<Value, Error> {
    let (row, entry) = find(node, id)?;
    Ok(entry_json(node, &row, &entry))
}

/// Every breach entry, newest discovered first, without their assessments' patient lists.
///
/// # Errors
/// Store and key failures.
pub fn list(node: &Node, page: Page<'_>) -> Result<(Vec<Value>, Option<String>), Error> {
    let (rows, next) = page.of(node.store.register(Some(BREACH))?)?;
    let entries = rows
        .iter()
        .map(|row| {
            let entry = open_entry(node, row)?;
            let mut v = entry_json(node, row, &entry);
            if let Some(o) = v.as_object_mut() {
                o.remove("assessment");
            }
            Ok(v)
        })
        .collect::<Result<_, Error>>()?;
    Ok((entries, next))
}

/// A page of a register's list (newest first): at most `count` entries after the one named
/// `after`. Only the page's entries are opened.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// Entries at most.
    pub count: usize,
    /// Continue after this entry (the previous page's `next`).
    pub after: Option<&'a str>,
}

impl Page<'_> {
    /// Everything.
    pub const ALL: Page<'static> = Page {
        count: usize::MAX,
        after: None,
    };

    /// The page of `rows` (in list order) and the id the next page continues after.
    ///
    /// # Errors
    /// [`Error::Invalid`] when `after` names no entry of the list.
    pub(crate) fn of(
        self,
        rows: Vec<RegisterRow>,
    ) -> Result<(Vec<RegisterRow>, Option<String>), Error> {
        let start = match self.after {
            None => 0,
            Some(id) => {
                rows.iter()
                    .position(|r| r.id == id)
                    .ok_or_else(|| Error::Invalid("after names no entry of this list".into()))?
                    + 1
            }
        };
        let mut out: Vec<RegisterRow> = rows
            .into_iter()
            .skip(start)
            .take(self.count.saturating_add(1))
            .collect();
        let next = if out.len() > self.count {
            out.truncate(self.count);
            out.last().map(|r| r.id.clone())
        } else {
            None
        };
        Ok((out, next))
    }
}

/// What the compliance report needs of the register: entries, and those whose deadlines were
/// missed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Breaches {
    /// Entries in the register.
    pub recorded: u64,
    /// Entries still open.
    pub open: u64,
    /// Entries whose authority notice is overdue or was late: ids.
    pub authority_missed: Vec<String>,
    /// Entries whose HITECH notices (individuals; HHS at once and the media, when they apply)
    /// are overdue or were late: ids.
    pub individuals_missed: Vec<String>,
}

/// Reads the register for the compliance report.
///
/// # Errors
/// Store and key failures.
pub fn evidence(node: &Node, now: i64) -> Result<Breaches, Error> {
    let mut b = Breaches::default();
    for row in node.store.register(Some(BREACH))? {
        let entry = open_entry(node, &row)?;
        b.recorded += 1;
        b.open += u64::from(row.closed_micros.is_none());
        let d = deadlines(&row, &entry, now);
        let missed = |k: &str| matches!(d[k]["status"].as_str(), Some("late" | "overdue"));
        if missed("authority") {
            b.authority_missed.push(row.id.clone());
        }
        if missed("individuals") || missed("hhs") || missed("media") {
            b.individuals_missed.push(row.id.clone());
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(closed: Option<i64>) -> RegisterRow {
        RegisterRow {
            id: "brc_1".into(),
            kind: BREACH.into(),
            subject: None,
            opened_micros: 0,
            due_micros: 100,
            status: "open".into(),
            closed_micros: closed,
            updated_micros: 0,
            body: medvault_crypto::Sealed::from_stored(Vec::new()),
        }
    }

    fn entry(hitech: Value) -> BreachEntry {
        BreachEntry {
            title: "t".into(),
            description: "d".into(),
            discovered: instant(0),
            recorded_by: "x".into(),
            assessment: Some(json!({"hitech": hitech})),
            notices: BTreeMap::new(),
            closed: None,
        }
    }

    #[test]
    fn closing_does_not_undo_a_missed_deadline() {
        let e = entry(json!({"hhs_immediate": false, "media": []}));
        assert_eq!(
            deadlines(&row(None), &e, 50)["authority"]["status"],
            "pending"
        );
        assert_eq!(
            deadlines(&row(None), &e, 150)["authority"]["status"],
            "overdue"
        );
        assert_eq!(
            deadlines(&row(Some(50)), &e, 150)["authority"]["status"],
            "closed-without-notice",
            "closed in time: judged no breach to notify"
        );
        assert_eq!(
            deadlines(&row(Some(120)), &e, 150)["authority"]["status"],
            "overdue"
        );
    }

    #[test]
    fn hhs_and_media_deadlines_follow_the_assessment() {
        let small = deadlines(
            &row(None),
            &entry(json!({"hhs_immediate": false, "media": []})),
            0,
        );
        assert!(small.get("hhs").is_none() && small.get("media").is_none());
        let big = deadlines(
            &row(None),
            &entry(json!({"hhs_immediate": true, "media": ["MA (US)"]})),
            0,
        );
        assert_eq!(big["hhs"]["status"], "pending");
        assert_eq!(big["media"]["status"], "pending");
    }

    #[test]
    fn text_people_read_has_no_hidden_characters() {
        for bad in [
            "a\u{202e}b",
            "a\u{ad}b",
            "a\u{2028}b",
            "a\u{61c}b",
            "a\u{0}b",
            "a\u{e0041}b",
            "a\u{34f}b",
            "a\u{3164}b",
            "a\u{fffb}b",
            "",
        ] {
            assert!(readable("the title", bad, 100).is_err(), "{bad:?}");
        }
        assert_eq!(
            readable("the title", " line one\nline two ", 100).unwrap(),
            "line one\nline two"
        );
        assert!(readable("the title", &"x".repeat(101), 100).is_err());
    }
}
