//! Flags on a patient's records, kept in the register: **legal holds** (erasure is refused
//! while one is in force) and **restrictions of processing** (GDPR Art. 18: the policy's
//! `processing-restricted` rule stops everything but storage while one is in force).
//!
//! Each is a register row (kind [`Flag::kind`], subject the patient, the reason sealed) placed
//! with a reason and ended with one; placing and ending are ledgered like every register
//! change. A restriction may answer the patient's restriction request, and its lifting is
//! then what the patient is told about (Art. 18(3)).

use medvault_core::{ResourceId, ResourceType};
use medvault_node::Node;
use medvault_node::admin::{LEGAL_HOLD, PROCESSING_RESTRICTION, in_force};
use medvault_node::clock::instant;
use medvault_node::identity::random_id;
use medvault_store::RegisterRow;
use serde_json::{Value, json};

use crate::Error;
use crate::register::{open_entry, readable, store_checked};
use crate::subject::{Answer, RequestEntry};

/// One kind of flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The register kind.
    pub kind: &'static str,
    /// Its ids' prefix.
    pub prefix: &'static str,
    /// What people call it.
    pub name: &'static str,
    /// Its status once ended.
    pub ended: &'static str,
    /// The data subject's right whose request placing it answers, if any.
    pub answers: Option<&'static str>,
}

/// Legal holds: erasure is refused while one is in force.
pub const HOLD: Flag = Flag {
    kind: LEGAL_HOLD,
    prefix: "hold_",
    name: "legal hold",
    ended: "released",
    answers: None,
};

/// Restrictions of processing (GDPR Art. 18).
pub const RESTRICTION: Flag = Flag {
    kind: PROCESSING_RESTRICTION,
    prefix: "rst_",
    name: "restriction of processing",
    ended: "lifted",
    answers: Some("restriction"),
};

const IN_FORCE: &str = "in-force";

/// Places `flag` on `patient`'s records; with `request`, answers that open request of the
/// patient's (which must be for the right the flag answers).
///
/// # Errors
/// 404 for an unknown patient; 400 without a reason, when one is already in force, or for a
/// request that does not fit.
pub fn place(
    node: &Node,
    flag: &Flag,
    patient: &ResourceId,
    reason: &str,
    request: Option<&str>,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    // A deleted (not erased) patient's data is still held, so it can still be held or
    // restricted; a patient never stored cannot.
    if node
        .store
        .current(&ResourceType::PATIENT, patient)?
        .is_none()
    {
        return Err(Error::NotFound("no such patient".into()));
    }
    let reason = readable("the reason", reason, 2_000)?;
    let now = node.clock.now_micros();
    let row = RegisterRow {
        id: random_id(flag.prefix)?,
        kind: flag.kind.into(),
        subject: Some(format!("Patient/{patient}")),
        opened_micros: now,
        // A flag has no deadline: it lasts until ended.
        due_micros: i64::MAX,
        status: IN_FORCE.into(),
        closed_micros: None,
        updated_micros: now,
        body: medvault_crypto::Sealed::from_stored(Vec::new()),
    };
    let id = row.id.clone();
    let entry = RequestEntry {
        opened_by: by.to_owned(),
        note: Some(reason),
        answer: None,
        by_patient: false,
    };
    let answered = match request {
        Some(r) => {
            let Some(right) = flag.answers else {
                return Err(Error::Invalid(format!(
                    "a {} answers no request",
                    flag.name
                )));
            };
            // One read of the request: answered() refuses one already answered.
            let note = format!("{} {id} placed", flag.name);
            let (row, entry) = crate::subject::answered(node, r, "answered", Some(&note), by)?;
            if row.kind != right || row.subject.as_deref() != Some(&format!("Patient/{patient}")) {
                return Err(Error::Invalid(format!(
                    "that is not an open {right} request about this patient"
                )));
            }
            Some((row, entry))
        }
        None => None,
    };
    let action = format!("{}-place", flag.kind);
    let mut changes = vec![(row, &entry, action.as_str())];
    if let Some((r, e)) = &answered {
        changes.push((r.clone(), e, "subject-answer"));
    }
    // Checked and written in one transaction: two placing at once cannot both pass, and the
    // flag and its request's answer are written together or not at all.
    let (kind, name) = (flag.kind, flag.name);
    let (subject, request) = (patient.to_string(), request.map(str::to_owned));
    store_checked(node, changes, agent, move |tx| {
        if in_force(tx, kind, &subject)? {
            return Err(Error::Invalid(format!(
                "a {name} is already in force for this patient"
            )));
        }
        match request {
            Some(r) => crate::subject::still_open(tx, &r),
            None => Ok(()),
        }
    })?;
    show(node, flag, &id)
}

/// Ends flag `id` (releases a hold, lifts a restriction), saying why.
///
/// # Errors
/// 404 for an unknown id; 400 for one already ended or no reason.
pub fn end(
    node: &Node,
    flag: &Flag,
    id: &str,
    reason: &str,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    let (mut row, mut entry) = find(node, flag, id)?;
    if row.closed_micros.is_some() {
        return Err(Error::Invalid(format!(
            "that {} is already {}",
            flag.name, flag.ended
        )));
    }
    let now = node.clock.now_micros();
    entry.answer = Some(Answer {
        outcome: flag.ended.into(),
        at: instant(now),
        by: by.to_owned(),
        note: Some(readable("the reason", reason, 2_000)?),
    });
    row.status = flag.ended.into();
    row.closed_micros = Some(now);
    row.updated_micros = now;
    let (open_id, name, ended) = (id.to_owned(), flag.name, flag.ended);
    let action = format!("{}-end", flag.kind);
    store_checked(
        node,
        vec![(row, &entry, action.as_str())],
        agent,
        move |tx| match tx.register_entry(&open_id)? {
            Some(r) if r.closed_micros.is_none() => Ok(()),
            _ => Err(Error::Invalid(format!("that {name} is already {ended}"))),
        },
    )?;
    show(node, flag, id)
}

fn find(node: &Node, flag: &Flag, id: &str) -> Result<(RegisterRow, RequestEntry), Error> {
    let unknown = || Error::NotFound(format!("no {} has this id", flag.name));
    if id.len() > 64 || !id.starts_with(flag.prefix) {
        return Err(unknown());
    }
    let row = node
        .store
        .register_entry(id)?
        .filter(|r| r.kind == flag.kind)
        .ok_or_else(unknown)?;
    let entry = open_entry(node, &row)?;
    Ok((row, entry))
}

fn flag_json(row: &RegisterRow, entry: &RequestEntry) -> Value {
    json!({
        "id": row.id,
        "kind": row.kind,
        "patient": row.subject,
        "status": row.status,
        "placed": instant(row.opened_micros),
        "placed_by": entry.opened_by,
        "reason": entry.note,
        "ended": entry.answer,
    })
}

/// One flag.
///
/// # Errors
/// 404 for an unknown id.
pub fn show(node: &Node, flag: &Flag, id: &str) -> Result<Value, Error> {
    let (row, entry) = find(node, flag, id)?;
    Ok(flag_json(&row, &entry))
}

/// Every flag of this kind, newest first.
///
/// # Errors
/// Store and key failures.
pub fn list(node: &Node, flag: &Flag) -> Result<Vec<Value>, Error> {
    node.store
        .register(Some(flag.kind))?
        .iter()
        .map(|row| Ok(flag_json(row, &open_entry(node, row)?)))
        .collect()
}

/// The flag of this kind in force for `patient`, if any.
///
/// # Errors
/// Store and key failures.
pub fn current(node: &Node, flag: &Flag, patient: &ResourceId) -> Result<Option<Value>, Error> {
    let subject = format!("Patient/{patient}");
    node.store
        .register(Some(flag.kind))?
        .iter()
        .find(|r| r.subject.as_deref() == Some(subject.as_str()) && r.closed_micros.is_none())
        .map(|row| Ok(flag_json(row, &open_entry(node, row)?)))
        .transpose()
}
