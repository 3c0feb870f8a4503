//! Data subjects' rights (GDPR Art. 15–21): requests tracked with their one-month deadline in
//! the register, and the patient's signed export (Art. 15 access, Art. 20 portability).
//!
//! **Requests** are register rows (kind = the right, subject = `Patient/<id>`, due one calendar
//! month after opening, Art. 12(3)); what they say is sealed like a breach entry's and every
//! change is ledgered with the digest of the new content.
//!
//! **The export** is one JSON document signed by the node (the compliance report's signature
//! and checkpoint pins): the patient's current record, earlier versions of what changed
//! (Art. 16's rectification history), the accounting of disclosures (every access-log record
//! naming the patient, as FHIR `AuditEvent`s), and how the node processes the data (purposes,
//! recipients, retention, transfers). Resources travel as ndjson text inside it, so the bytes
//! signed are exactly the bytes a portability import reads, decimals included.

use medvault_core::{ResourceId, ResourceType};
use medvault_node::Node;
use medvault_node::clock::instant;
use medvault_node::ctx::Ctx;
use medvault_node::identity::random_id;
use medvault_store::RegisterRow;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;
use crate::register::{open_entry, store as store_entry, store_checked};
use crate::report::{self, VerifyError};

/// The export's format name.
pub const EXPORT_FORMAT: &str = "medvault-subject-export/1";
/// How often a patient may export their own data (each export reads the whole access log).
const SELF_EXPORT_EVERY_MICROS: i64 = 10 * 60 * 1_000_000;
/// Most disclosures an export lists (newest first).
pub const MAX_DISCLOSURES: usize = 100_000;

/// A data subject's right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Right {
    /// Art. 15.
    Access,
    /// Art. 16.
    Rectification,
    /// Art. 17.
    Erasure,
    /// Art. 18.
    Restriction,
    /// Art. 20.
    Portability,
    /// Art. 21.
    Objection,
}

impl Right {
    /// Its name (the register's kind).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Rectification => "rectification",
            Self::Erasure => "erasure",
            Self::Restriction => "restriction",
            Self::Portability => "portability",
            Self::Objection => "objection",
        }
    }

    /// The right named `text`.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing the names.
    pub fn parse(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "access" => Self::Access,
            "rectification" => Self::Rectification,
            "erasure" => Self::Erasure,
            "restriction" => Self::Restriction,
            "portability" => Self::Portability,
            "objection" => Self::Objection,
            _ => {
                return Err(Error::Invalid(
                    "the right is access, rectification, erasure, restriction, portability or objection".into(),
                ));
            }
        })
    }

    const ALL: [Self; 6] = [
        Self::Access,
        Self::Rectification,
        Self::Erasure,
        Self::Restriction,
        Self::Portability,
        Self::Objection,
    ];
}

/// What a request says (sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEntry {
    /// Who opened it (a user or token id, the patient's own account, or the CLI's user).
    pub opened_by: String,
    /// What the patient asked, as recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// How it was answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// Opened by the patient themself, signed in (the portal), not recorded by staff.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_patient: bool,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// `answered` or `refused`.
    pub outcome: String,
    /// When.
    pub at: String,
    /// By whom.
    pub by: String,
    /// What was done, or why refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One calendar month after `micros` (the last day of a shorter month when the day is past
/// its end), GDPR Art. 12(3).
fn one_month_after(micros: i64) -> i64 {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000) else {
        return micros;
    };
    let (mut y, next) = (t.year(), t.month().next());
    if next == time::Month::January {
        y += 1;
    }
    let day = t.day().min(next.length(y));
    time::Date::from_calendar_date(y, next, day)
        .map(|d| t.replace_date(d))
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX))
        .unwrap_or(micros)
}

fn note(text: Option<&str>) -> Result<Option<String>, Error> {
    text.map(|t| crate::register::readable("the note", t, 2_000))
        .transpose()
}

/// The patient is stored and not deleted.
fn patient_exists(node: &Node, id: &ResourceId) -> Result<(), Error> {
    match patient_state(node, id)? {
        Some(false) => Ok(()),
        _ => Err(Error::NotFound("no such patient".into())),
    }
}

/// `Some(deleted)` for a stored patient, `None` for one never stored.
fn patient_state(node: &Node, id: &ResourceId) -> Result<Option<bool>, Error> {
    Ok(node
        .store
        .current(&ResourceType::PATIENT, id)?
        .map(|m| m.deleted))
}

/// Opens a request by (or for) `patient` to exercise `right`, due in one month.
///
/// # Errors
/// 404 for an unknown patient; bad note text; store failures.
pub fn open_request(
    node: &Node,
    patient: &ResourceId,
    right: Right,
    note_text: Option<&str>,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    let entry = RequestEntry {
        opened_by: by.to_owned(),
        note: note(note_text)?,
        answer: None,
        by_patient: false,
    };
    open_with(node, patient, right, &entry, agent, |_| Ok(()))
}

/// Writes a new request row for `entry`, if `check` passes inside the write.
fn open_with(
    node: &Node,
    patient: &ResourceId,
    right: Right,
    entry: &RequestEntry,
    agent: &Value,
    check: impl FnOnce(&dyn medvault_store::StoreRead) -> Result<(), Error> + Send + 'static,
) -> Result<Value, Error> {
    // A deleted (not erased) patient's data is still held: they may still ask about it.
    if patient_state(node, patient)?.is_none() {
        return Err(Error::NotFound("no such patient".into()));
    }
    let now = node.clock.now_micros();
    let row = RegisterRow {
        id: random_id("dsr_")?,
        kind: right.as_str().into(),
        subject: Some(format!("Patient/{patient}")),
        opened_micros: now,
        due_micros: one_month_after(now),
        status: "open".into(),
        closed_micros: None,
        updated_micros: now,
        body: medvault_crypto::Sealed::from_stored(Vec::new()),
    };
    let id = row.id.clone();
    store_checked(node, vec![(row, entry, "subject-request")], agent, check)?;
    show_request(node, &id)
}

/// Checks that `id` is an open request of `patient`'s for `right`, which an action is about to
/// answer.
///
/// # Errors
/// 404 for an unknown request; 400 for one about another right or patient, or answered.
pub(crate) fn check_open(
    node: &Node,
    id: &str,
    right: &str,
    patient: &ResourceId,
) -> Result<(), Error> {
    let found = show_request(node, id)?;
    if found["right"] != right
        || found["patient"] != format!("Patient/{patient}").as_str()
        || found["status"] != "open"
    {
        return Err(Error::Invalid(format!(
            "that is not an open {right} request about this patient"
        )));
    }
    Ok(())
}

/// The purposes a research objection denies (the policy widens a deny to the purpose's whole
/// family; both are named so the Consent says what it means to any reader).
const RESEARCH_PURPOSES: [(&str, &str); 2] = [
    ("HRESCH", "healthcare research"),
    ("CLINTRCH", "clinical trial research"),
];

/// The FHIR `Consent` that records a patient's objection to research use (GDPR Art. 21): an
/// active privacy consent, dated `now_micros`, whose provision denies every research purpose.
/// Being the latest consent that speaks to research, it decides every research access.
pub fn research_objection(patient: &ResourceId, now_micros: i64) -> Value {
    let purposes: Vec<Value> = RESEARCH_PURPOSES
        .iter()
        .map(|(code, display)| {
            json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": code,
                "display": display,
            })
        })
        .collect();
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy",
        }]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": instant(now_micros),
        "policy": [{"uri": "https://eur-lex.europa.eu/eli/reg/2016/679/oj#d1e2910-1-1"}],
        "policyRule": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "OPTOUT",
        }], "text": "objection to research use (GDPR Art. 21)"},
        "provision": {"type": "deny", "purpose": purposes},
    })
}

fn is_objection(consent: &Value) -> bool {
    consent["status"] == "active"
        && consent["provision"]["type"] == "deny"
        && RESEARCH_PURPOSES.iter().all(|(code, _)| {
            consent["provision"]["purpose"]
                .as_array()
                .is_some_and(|p| p.iter().any(|c| c["code"] == *code))
        })
        && consent["provision"].get("provision").is_none()
        && [
            "actor",
            "class",
            "securityLabel",
            "period",
            "action",
            "data",
        ]
        .iter()
        .all(|k| consent["provision"].get(*k).is_none())
}

/// The patient's objection to research use in force, if they have one: their Consents as
/// they stand at `at` deny every research purpose (a later permit would have lifted it), and
/// an objection Consent is among them (the newest is answered). Read with `ctx`, the node's
/// own context, inside the write that would otherwise record a new one.
///
/// # Errors
/// Store and key failures; `too-costly` for a patient with more Consents than a search reads.
pub fn active_objection_in(
    store: &dyn medvault_store::StoreRead,
    ctx: &Ctx,
    patient: &ResourceId,
    at: &str,
) -> Result<Option<Value>, medvault_node::Error> {
    use medvault_policy::ConsentState;
    use medvault_policy::consent::{ConsentRequest, evaluate};
    let params = [("patient".to_owned(), format!("Patient/{patient}"))];
    let consents = medvault_node::search::all_matches(
        store,
        ctx,
        &ResourceType::from_static("Consent"),
        &params,
    )?;
    let denied = RESEARCH_PURPOSES.iter().all(|(code, _)| {
        evaluate(
            &consents,
            &ConsentRequest {
                actors: &[],
                permit_actors: None,
                purpose: Some(code),
                resource_type: "Patient",
                labels: &[],
                at,
            },
        ) == ConsentState::Deny
    });
    if !denied {
        return Ok(None);
    }
    Ok(consents
        .into_iter()
        .filter(is_objection)
        .max_by(|a, b| a["dateTime"].as_str().cmp(&b["dateTime"].as_str())))
}

/// Records `patient`'s objection to research use on the node's authority (staff acting on the
/// patient's word; the patient themself uses `$object-to-research` in their session): the
/// [`research_objection`] Consent, written and ledgered like any record, unless one is in
/// force already ([`active_objection_in`], checked in the same write), and the objection
/// request `request` answered by it. Returns the Consent in force.
///
/// # Errors
/// 404 for an unknown patient or request; 400 for a request that does not fit; store
/// failures.
pub fn object_to_research(
    node: &Node,
    patient: &ResourceId,
    request: Option<&str>,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    patient_exists(node, patient)?;
    if let Some(r) = request {
        check_open(node, r, Right::Objection.as_str(), patient)?;
    }
    let ctx = Ctx::unrestricted_node_work(node);
    let now = node.clock.now_micros();
    let consent = research_objection(patient, now);
    let who = patient.clone();
    let (out, created) = medvault_store::write_with(node.store.as_ref(), move |tx| {
        if let Some(existing) = active_objection_in(&*tx, &ctx, &who, &instant(now))? {
            return Ok((existing, false));
        }
        let p = medvault_node::ops::prepare(
            &*tx,
            &ctx,
            &ResourceType::from_static("Consent"),
            ResourceId::random(),
            consent,
            false,
        )?;
        let out = medvault_node::ops::create(tx, &ctx, p, None)?;
        let stored = out.resource.ok_or_else(|| {
            medvault_node::Error::internal(&"the stored Consent was not returned")
        })?;
        Ok((stored, true))
    })
    .map_err(medvault_node::Error::from)?;
    if !created {
        if let Some(r) = request {
            let id = out["id"].as_str().unwrap_or_default();
            answer_request(
                node,
                r,
                "answered",
                Some(&format!(
                    "the objection was already recorded: Consent/{id} denies research use"
                )),
                by,
                agent,
            )?;
        }
        return Ok(out);
    }
    let stored = out;

    let id = stored["id"].as_str().unwrap_or_default().to_owned();
    let (agent_v, patient_id) = (agent.clone(), patient.to_string());
    node.record_audit_now(|now| {
        medvault_node::audit::AuditRecord::new(
            medvault_node::audit::AuditKind::Admin,
            now,
            "research-objection",
            medvault_node::audit::AuditOutcome::Success,
        )
        .agent(agent_v)
        .target_opt(Some(&format!("Consent/{id}")))
        .patient(Some(patient_id))
    })?;
    if let Some(r) = request {
        answer_request(
            node,
            r,
            "answered",
            Some(&format!(
                "objection recorded: Consent/{id} denies research use"
            )),
            by,
            agent,
        )?;
    }
    Ok(stored)
}

/// Answers (or refuses) request `id`.
///
/// # Errors
/// 404 for an unknown request; 400 for one already answered or a bad outcome.
pub fn answer_request(
    node: &Node,
    id: &str,
    outcome: &str,
    note_text: Option<&str>,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    let (row, entry) = answered(node, id, outcome, note_text, by)?;
    let open_id = id.to_owned();
    store_checked(
        node,
        vec![(row, &entry, "subject-answer")],
        agent,
        move |tx| still_open(tx, &open_id),
    )?;
    show_request(node, id)
}

/// Request `id` as answered now (not yet written).
pub(crate) fn answered(
    node: &Node,
    id: &str,
    outcome: &str,
    note_text: Option<&str>,
    by: &str,
) -> Result<(RegisterRow, RequestEntry), Error> {
    if !matches!(outcome, "answered" | "refused") {
        return Err(Error::Invalid("the outcome is answered or refused".into()));
    }
    if note_text.is_none_or(|n| n.trim().is_empty()) {
        return Err(Error::Invalid(if outcome == "refused" {
            "a refusal says why (Art. 12(4))".into()
        } else {
            "an answer says what was done (access and portability are answered with the export)"
                .into()
        }));
    }
    let (mut row, mut entry) = find_request(node, id)?;
    if row.closed_micros.is_some() {
        return Err(Error::Invalid("that request is already answered".into()));
    }
    let now = node.clock.now_micros();
    entry.answer = Some(Answer {
        outcome: outcome.into(),
        at: instant(now),
        by: by.into(),
        note: note(note_text)?,
    });
    row.status = outcome.into();
    row.closed_micros = Some(now);
    row.updated_micros = now;
    Ok((row, entry))
}

/// Inside a write: request `id` is still open (no one answered it meanwhile).
pub(crate) fn still_open(tx: &dyn medvault_store::StoreRead, id: &str) -> Result<(), Error> {
    match tx.register_entry(id)? {
        Some(r) if r.closed_micros.is_none() => Ok(()),
        _ => Err(Error::Invalid("that request is already answered".into())),
    }
}

fn find_request(node: &Node, id: &str) -> Result<(RegisterRow, RequestEntry), Error> {
    let unknown = || Error::NotFound("no data subject's request has this id".into());
    if id.len() > 64 || !id.starts_with("dsr_") {
        return Err(unknown());
    }
    let row = node
        .store
        .register_entry(id)?
        .filter(|r| r.kind != crate::register::BREACH)
        .ok_or_else(unknown)?;
    let entry = open_entry(node, &row)?;
    Ok((row, entry))
}

fn request_json(row: &RegisterRow, entry: &RequestEntry, now: i64) -> Value {
    let on_time = match row.closed_micros {
        Some(c) => Some(c <= row.due_micros),
        None => (now > row.due_micros).then_some(false),
    };
    json!({
        "id": row.id,
        "right": row.kind,
        "patient": row.subject,
        "status": row.status,
        "opened": instant(row.opened_micros),
        "due": instant(row.due_micros),
        "closed": row.closed_micros.map(instant),
        "on_time": on_time,
        "opened_by": entry.opened_by,
        "opened_by_patient": entry.by_patient,
        "note": entry.note,
        "answer": entry.answer,
    })
}

/// One request.
///
/// # Errors
/// 404 for an unknown id.
pub fn show_request(node: &Node, id: &str) -> Result<Value, Error> {
    let (row, entry) = find_request(node, id)?;
    Ok(request_json(&row, &entry, node.clock.now_micros()))
}

/// Data subjects' requests, newest first, a page at a time.
///
/// # Errors
/// Store and key failures; an `after` that names no request.
pub fn requests(
    node: &Node,
    page: crate::register::Page<'_>,
) -> Result<(Vec<Value>, Option<String>), Error> {
    requests_about(node, None, page)
}

/// The requests about `patient` (all when `None`), newest first.
fn requests_about(
    node: &Node,
    patient: Option<&str>,
    page: crate::register::Page<'_>,
) -> Result<(Vec<Value>, Option<String>), Error> {
    let now = node.clock.now_micros();
    let subject = patient.map(|p| format!("Patient/{p}"));
    let mut rows = Vec::new();
    for right in Right::ALL {
        rows.extend(
            node.store
                .register(Some(right.as_str()))?
                .into_iter()
                .filter(|row| subject.is_none() || row.subject == subject),
        );
    }
    rows.sort_by(|a, b| (b.opened_micros, &b.id).cmp(&(a.opened_micros, &a.id)));
    let (rows, next) = page.of(rows)?;
    let out = rows
        .iter()
        .map(|row| Ok(request_json(row, &open_entry(node, row)?, now)))
        .collect::<Result<_, Error>>()?;
    Ok((out, next))
}

/// Most requests a patient may have open at once from the portal (staff open any number).
pub const MAX_OPEN_OWN_REQUESTS: usize = 10;

/// A patient's own view (the portal): their requests, newest first, and whether a
/// restriction of processing is in force.
///
/// # Errors
/// Store and key failures.
pub fn own_requests(node: &Node, patient: &ResourceId) -> Result<Value, Error> {
    let restricted = crate::flags::current(node, &crate::flags::RESTRICTION, patient)?;
    Ok(json!({
        "requests": requests_about(node, Some(patient.as_str()), crate::register::Page::ALL)?.0,
        "restriction": restricted.map(|r| json!({"id": r["id"], "since": r["placed"]})),
    }))
}

/// Opens a request by the patient themself (the portal): as [`open_request`], refused past
/// [`MAX_OPEN_OWN_REQUESTS`] open ones and for the rights the portal answers at once (access
/// and portability are the download).
///
/// # Errors
/// As [`open_request`]; 400 for those refusals.
pub fn open_own_request(
    node: &Node,
    patient: &ResourceId,
    right: Right,
    note_text: Option<&str>,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    if matches!(right, Right::Access | Right::Portability) {
        return Err(Error::Invalid(
            "your data is downloaded at once with $export-my-data; no request is needed".into(),
        ));
    }
    let entry = RequestEntry {
        opened_by: by.to_owned(),
        note: note(note_text)?,
        answer: None,
        by_patient: true,
    };
    let subject = Some(format!("Patient/{patient}"));
    // Counted inside the write, so requests sent at once cannot all pass the limit.
    open_with(node, patient, right, &entry, agent, move |tx| {
        let mut open = 0;
        for r in Right::ALL {
            open += tx
                .register(Some(r.as_str()))?
                .iter()
                .filter(|row| row.subject == subject && row.closed_micros.is_none())
                .count();
        }
        if open >= MAX_OPEN_OWN_REQUESTS {
            return Err(Error::Invalid(format!(
                "you have {open} requests still open; wait for them to be answered"
            )));
        }
        Ok(())
    })
}

/// What the compliance report needs of the requests register.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Requests {
    /// Requests recorded.
    pub recorded: u64,
    /// Still open.
    pub open: u64,
    /// Open past their month, or answered after it: ids.
    pub late: Vec<String>,
}

/// Reads the requests register for the compliance report.
///
/// # Errors
/// Store failures.
pub fn evidence(node: &Node, now: i64) -> Result<Requests, Error> {
    let mut r = Requests::default();
    for right in Right::ALL {
        for row in node.store.register(Some(right.as_str()))? {
            r.recorded += 1;
            r.open += u64::from(row.closed_micros.is_none());
            let late = row.closed_micros.map_or(now, |c| c) > row.due_micros;
            if late {
                r.late.push(row.id);
            }
        }
    }
    Ok(r)
}

/// Who the export is made for, and under whose rules its record is read.
pub enum Requester<'a> {
    /// The patient themself: their request's context (the policy lets them read their own
    /// compartment); an access request is opened and answered with the export.
    Patient {
        /// The request's context.
        ctx: &'a Ctx,
        /// Their user id.
        user: &'a str,
    },
    /// Staff answering an open request (`dsr_…`) about this patient: read as the node's own
    /// work, the request answered by the export.
    Staff {
        /// The request being answered.
        request: &'a str,
        /// Who answers it.
        by: &'a str,
    },
}

fn ndjson(items: impl IntoIterator<Item = Value>) -> (String, u64) {
    let mut out = String::new();
    let mut n = 0;
    for v in items {
        out.push_str(&v.to_string());
        out.push('\n');
        n += 1;
    }
    (out, n)
}

/// How the node processes a patient's data (GDPR Art. 13–15's information): purposes, the
/// recipients it can send to, retention, transfers.
fn processing(node: &Node) -> Result<Value, Error> {
    let peers: Vec<Value> = node
        .store
        .peers()?
        .into_iter()
        .map(|p| json!({"node": p.node, "organization": p.organization}))
        .collect();
    Ok(json!({
        "purposes": [
            "treatment by the people caring for you (TREAT)",
            "emergency treatment, each use reviewed (ETREAT, break-glass)",
            "payment and healthcare operations (HPAYMT, HOPERAT)",
            "research, only under your consent (HRESCH)",
            "your own access (PATRQT)",
        ],
        "recipients": {
            "staff": "clinicians, nurses and other staff of the organisation, by role and care relationship",
            "apps": "apps you or staff approved (SMART on FHIR), within their scopes",
            "other_nodes": peers,
        },
        "retention": "kept until erased: on your request (Art. 17) unless a legal hold applies, or by the organisation's retention schedule; erased records are destroyed by destroying their key",
        "transfers": if peers.is_empty() {
            json!("none: no other node is registered to receive data")
        } else {
            json!("only to the nodes listed as recipients, sealed for each (post-quantum hybrid keys)")
        },
        "security": "each patient's records sealed under their own key; every access recorded in a tamper-evident log",
    }))
}

/// The patients whose own export this process is making.
static EXPORTING: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// A patient's own export in progress in this process; ends when dropped.
struct Exporting(String);

impl Exporting {
    /// `None` if one is in progress already.
    fn start(subject: &str) -> Option<Self> {
        let mut set = EXPORTING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(subject.to_owned())
            .then(|| Self(subject.to_owned()))
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        EXPORTING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// The patient's signed export.
///
/// # Errors
/// 404 for an unknown patient or request; 400 for a request about another patient or already
/// answered; `too-costly` past `$everything`'s bound.
pub fn export(
    node: &Node,
    patient: &ResourceId,
    requester: &Requester<'_>,
    agent: &Value,
) -> Result<Value, Error> {
    let Some(deleted) = patient_state(node, patient)? else {
        return Err(Error::NotFound("no such patient".into()));
    };
    if deleted && matches!(requester, Requester::Patient { .. }) {
        return Err(medvault_node::Error::gone(
            "your record was deleted: the organisation answers a request for a copy of what it still holds",
        )
        .into());
    }
    let subject = format!("Patient/{patient}");
    // Held until the export is stored (below): another export of the same patient's own at the
    // same time is refused, as the time check alone reads the register before this one wrote.
    let _exporting;
    if let Requester::Patient { .. } = requester {
        _exporting = Exporting::start(&subject).ok_or_else(|| {
            Error::from(medvault_node::Error::new(
                medvault_node::error::ErrorKind::Throttled,
                medvault_node::error::IssueCode::Throttled,
                "an export of your data is being made: download it when it is ready",
            ))
        })?;
        // An export reads the whole access log: a patient gets one every ten minutes.
        let now = node.clock.now_micros();
        // (Only the patient's own exports count: one staff made for a request does not.)
        let mut recent = None;
        for r in node.store.register(Some(Right::Access.as_str()))? {
            if r.subject.as_deref() == Some(subject.as_str())
                && now - r.opened_micros < SELF_EXPORT_EVERY_MICROS
                && open_entry::<RequestEntry>(node, &r)?.by_patient
            {
                recent = Some(r);
                break;
            }
        }
        if let Some(r) = recent {
            return Err(medvault_node::Error::new(
                medvault_node::error::ErrorKind::Throttled,
                medvault_node::error::IssueCode::Throttled,
                format!(
                    "your last export was made at {}; you can make another ten minutes after it",
                    instant(r.opened_micros)
                ),
            )
            .into());
        }
    }
    let node_ctx;
    let (ctx, request) = match requester {
        // The patient's own access request is opened once the export is gathered.
        Requester::Patient { ctx, .. } => (*ctx, None),
        Requester::Staff { request, .. } => {
            let (row, entry) = find_request(node, request)?;
            if row.subject.as_deref() != Some(subject.as_str()) {
                return Err(Error::Invalid(
                    "that request is about another patient".into(),
                ));
            }
            if entry.answer.is_some() {
                return Err(Error::Invalid("that request is already answered".into()));
            }
            if !matches!(row.kind.as_str(), "access" | "portability") {
                return Err(Error::Invalid(
                    "an export answers an access or portability request".into(),
                ));
            }
            // Art. 18: a restricted record is processed only with the patient's consent; a
            // request staff recorded is not the patient's own word.
            if !entry.by_patient
                && medvault_node::admin::in_force(
                    node.store.as_ref(),
                    medvault_node::admin::PROCESSING_RESTRICTION,
                    patient.as_str(),
                )?
            {
                return Err(medvault_node::Error::conflict(
                    "processing of this patient's records is restricted (GDPR Art. 18): staff cannot export them; the patient downloads their own (the portal, $export-my-data)",
                )
                .into());
            }
            node_ctx = Ctx::unrestricted_node_work(node);
            (&node_ctx, Some((*request).to_owned()))
        }
    };
    let store = node.store.as_ref();
    let mut resources = if deleted {
        medvault_node::operations::everything_resources_of_deleted(store, ctx, patient)?
    } else {
        medvault_node::operations::everything_resources(store, ctx, patient, None)?
    };
    if request.is_some() {
        // Read as the node's own work, the compartment search also finds other patients'
        // records that merely name this one (a performer, a recipient): only what is sealed
        // under this patient's key, and directory data, is theirs to receive — as the
        // policy decides for the patient's own export.
        resources = own_records(node, patient, resources)?;
    }
    // Earlier versions of what changed (rectification history).
    let mut earlier = Vec::new();
    for (rt, v) in &resources {
        let version = v
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1);
        let Some(id) = id_of(v) else {
            continue;
        };
        for n in 1..version {
            match medvault_node::records::read(store, ctx, rt, &id, Some(n)) {
                Ok(o) => earlier.extend(o.resource),
                Err(e) if e.kind.is_client_error() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let disclosures = disclosures(node, patient)?;
    let (record, n_record) = ndjson(resources.into_iter().map(|(_, v)| v));
    let (history, n_history) = ndjson(earlier);
    let (accounting, n_disclosures) = ndjson(disclosures);
    let summary = format!(
        "export of {n_record} resources, {n_history} earlier versions, {n_disclosures} disclosures"
    );
    let (request, own) = match (request, requester) {
        (Some(r), _) => (r, None),
        // The patient's own access request, recorded answered in one write: an export that
        // fails or is abandoned leaves no open request behind.
        (None, Requester::Patient { user, .. }) => {
            let now = node.clock.now_micros();
            let entry = RequestEntry {
                opened_by: (*user).to_owned(),
                note: None,
                by_patient: true,
                answer: Some(Answer {
                    outcome: "answered".into(),
                    at: instant(now),
                    by: (*user).to_owned(),
                    note: Some(summary.clone()),
                }),
            };
            let row = RegisterRow {
                id: random_id("dsr_")?,
                kind: Right::Access.as_str().into(),
                subject: Some(subject.clone()),
                opened_micros: now,
                due_micros: one_month_after(now),
                status: "answered".into(),
                closed_micros: Some(now),
                updated_micros: now,
                body: medvault_crypto::Sealed::from_stored(Vec::new()),
            };
            (row.id.clone(), Some((row, entry)))
        }
        (None, Requester::Staff { request, .. }) => ((*request).to_owned(), None),
    };
    let (document, checkpoints) = report::signer_and_pins(node)?;
    let mut out = json!({
        "format": EXPORT_FORMAT,
        "node": document,
        "checkpoints": checkpoints,
        "generated": instant(node.clock.now_micros()),
        "patient": subject,
        "request": request,
        "counts": {"resources": n_record, "earlier_versions": n_history, "disclosures": n_disclosures},
        "record": record,
        "history": history,
        "disclosures": accounting,
        "processing": processing(node)?,
    });
    report::sign(node, EXPORT_FORMAT, &mut out)?;
    match (own, requester) {
        (Some((row, entry)), _) => store_entry(node, row, &entry, "subject-export", agent)?,
        (None, Requester::Staff { by, .. }) => {
            answer_request(node, &request, "answered", Some(&summary), by, agent)?;
        }
        (None, Requester::Patient { .. }) => {}
    }
    Ok(out)
}

/// The access log's records naming the patient (as the request's patient, or among those a
/// request revealed or was refused), newest first, as FHIR `AuditEvent`s, at most
/// [`MAX_DISCLOSURES`]: found through the access log's patient index (entries archived out of
/// the log are not read).
fn disclosures(node: &Node, patient: &ResourceId) -> Result<Vec<Value>, Error> {
    let (archived, _) = medvault_node::archive::archived(node.access.as_ref())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let size = node.access.ledger_size()?;
    let origin = node.ledger.access().origin().to_owned();
    let mut found = Vec::new();
    medvault_node::access_index::walk_naming(
        node.access.as_ref(),
        &node.ledger,
        patient.as_str(),
        (archived, size),
        u64::MAX,
        &mut |leaf, rec| {
            let mut event = medvault_node::audit_view::to_audit_event(leaf, rec, &origin);
            // As the patient's own AuditEvent search shows it: no other patient named.
            medvault_node::audit_view::name_patient(&mut event, patient.as_str());
            found.push(event);
            Ok(found.len() < MAX_DISCLOSURES)
        },
    )?;
    Ok(found)
}

/// A resource's `id`, if it is one.
fn id_of(v: &Value) -> Option<ResourceId> {
    v.get("id")
        .and_then(Value::as_str)
        .and_then(|i| ResourceId::new(i).ok())
}

/// The resources of `all` that are `patient`'s (sealed under their key) or directory data
/// (outside every patient's compartment and not clinical).
fn own_records(
    node: &Node,
    patient: &ResourceId,
    all: Vec<(ResourceType, Value)>,
) -> Result<Vec<(ResourceType, Value)>, Error> {
    let key = format!("Patient/{patient}");
    let mut out = Vec::with_capacity(all.len());
    for (rt, v) in all {
        let Some(id) = id_of(&v) else {
            continue;
        };
        let Some(current) = node.store.current(&rt, &id)? else {
            continue;
        };
        let directory =
            current.key_name.starts_with('@') && !node.fhir.is_clinical_type(rt.as_str());
        if current.key_name == key || directory {
            out.push((rt, v));
        }
    }
    Ok(out)
}

/// What a verified export says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedExport {
    /// The signing node's id and fingerprint.
    pub node: String,
    /// See `node`.
    pub fingerprint: String,
    /// `Patient/<id>`.
    pub patient: String,
    /// When made.
    pub generated: String,
    /// Resources, earlier versions, disclosures.
    pub counts: [u64; 3],
}

/// Checks an export: the node's signature over all of it, its checkpoints (with `node`, that
/// they are in that node's history), and that each ndjson part holds the count it claims of
/// JSON objects with a `resourceType`.
///
/// # Errors
/// The first check that fails.
pub fn verify(
    export: &Value,
    expected: Option<&str>,
    node: Option<&Node>,
) -> Result<VerifiedExport, VerifyError> {
    let signed = report::verify_signed(export, EXPORT_FORMAT, expected, node)?;
    let map = signed.map;
    let mut counts = [0u64; 3];
    for (i, (part, count)) in [
        ("record", "resources"),
        ("history", "earlier_versions"),
        ("disclosures", "disclosures"),
    ]
    .into_iter()
    .enumerate()
    {
        let text = map
            .get(part)
            .and_then(Value::as_str)
            .ok_or_else(|| VerifyError::Malformed(format!("{part} missing")))?;
        let mut n = 0u64;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .map_err(|_| VerifyError::Malformed(format!("{part}: a line is not JSON")))?;
            if !v.get("resourceType").is_some_and(Value::is_string) {
                return Err(VerifyError::Malformed(format!(
                    "{part}: a line is not a FHIR resource"
                )));
            }
            n += 1;
        }
        if map["counts"][count].as_u64() != Some(n) {
            return Err(VerifyError::Malformed(format!(
                "counts.{count} does not match {part}"
            )));
        }
        counts[i] = n;
    }
    Ok(VerifiedExport {
        node: signed.node,
        fingerprint: signed.fingerprint,
        patient: map["patient"].as_str().unwrap_or_default().to_owned(),
        generated: map["generated"].as_str().unwrap_or_default().to_owned(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_a_calendar_month() {
        let at = |s: &str| {
            i64::try_from(
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .unix_timestamp_nanos()
                    / 1_000,
            )
            .unwrap()
        };
        assert_eq!(
            instant(one_month_after(at("2026-01-31T10:00:00Z"))),
            "2026-02-28T10:00:00.000000Z"
        );
        assert_eq!(
            instant(one_month_after(at("2026-12-15T00:00:00Z"))),
            "2027-01-15T00:00:00.000000Z"
        );
    }

    #[test]
    fn rights_parse_by_name() {
        for r in Right::ALL {
            assert_eq!(Right::parse(r.as_str()).unwrap(), r);
        }
        assert!(Right::parse("forget-me").is_err());
    }
}
