//! Erasure (GDPR Art. 17): legal holds that block it, and the signed certificate of an
//! erasure.
//!
//! **A legal hold** is a register row (kind `legal-hold`, subject the patient, its reason
//! sealed); while one is in force `medvault_node::admin::erase_patient` refuses (409), from
//! the API and the CLI alike. Placing and releasing are ledgered like every register change.
//!
//! **The certificate** (`medvault-erasure-certificate/1`) is signed by the node and pinned to
//! both logs' checkpoints like the compliance report: which key was destroyed, how many
//! resources it made unreadable, when, and what remains (commitments only). `medvault subject
//! verify` checks it.

use medvault_core::ResourceId;
use medvault_node::Node;
use medvault_node::admin::{Erased, LEGAL_HOLD, erase_patient};
use medvault_node::clock::instant;
use medvault_node::identity::random_id;
use medvault_store::RegisterRow;
use serde_json::{Value, json};

use crate::Error;
use crate::register::{open_entry, readable, store};
use crate::report::{self, VerifyError};
use crate::subject::{Answer, RequestEntry};

/// The certificate's format name.
pub const CERTIFICATE_FORMAT: &str = "medvault-erasure-certificate/1";

/// Places a legal hold on `patient`'s records (their erasure is refused until it is released).
///
/// # Errors
/// 404 for an unknown patient; 400 without a reason or when one is already in force.
pub fn place_hold(
    node: &Node,
    patient: &ResourceId,
    reason: &str,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    if node
        .store
        .current(&medvault_core::ResourceType::PATIENT, patient)?
        .is_none()
    {
        return Err(Error::NotFound("no such patient".into()));
    }
    if medvault_node::admin::under_legal_hold(node, patient)? {
        return Err(Error::Invalid(
            "a legal hold is already in force for this patient".into(),
        ));
    }
    let now = node.clock.now_micros();
    let entry = RequestEntry {
        opened_by: by.to_owned(),
        note: Some(readable("the reason", reason, 2_000)?),
        answer: None,
    };
    let row = RegisterRow {
        id: random_id("hold_")?,
        kind: LEGAL_HOLD.into(),
        subject: Some(format!("Patient/{patient}")),
        opened_micros: now,
        // A hold has no deadline: it lasts until released.
        due_micros: i64::MAX,
        status: "in-force".into(),
        closed_micros: None,
        updated_micros: now,
        body: medvault_crypto::Sealed::from_stored(Vec::new()),
    };
    let id = row.id.clone();
    store(node, row, &entry, "legal-hold-place", agent)?;
    show_hold(node, &id)
}

/// Releases hold `id`, saying why.
///
/// # Errors
/// 404 for an unknown hold; 400 for one already released or no reason.
pub fn release_hold(
    node: &Node,
    id: &str,
    reason: &str,
    by: &str,
    agent: &Value,
) -> Result<Value, Error> {
    let (mut row, mut entry) = find_hold(node, id)?;
    if row.closed_micros.is_some() {
        return Err(Error::Invalid("that hold is already released".into()));
    }
    let now = node.clock.now_micros();
    entry.answer = Some(Answer {
        outcome: "released".into(),
        at: instant(now),
        by: by.to_owned(),
        note: Some(readable("the reason", reason, 2_000)?),
    });
    row.status = "released".into();
    row.closed_micros = Some(now);
    row.updated_micros = now;
    store(node, row, &entry, "legal-hold-release", agent)?;
    show_hold(node, id)
}

fn find_hold(node: &Node, id: &str) -> Result<(RegisterRow, RequestEntry), Error> {
    let unknown = || Error::NotFound("no legal hold has this id".into());
    if id.len() > 64 || !id.starts_with("hold_") {
        return Err(unknown());
    }
    let row = node
        .store
        .register_entry(id)?
        .filter(|r| r.kind == LEGAL_HOLD)
        .ok_or_else(unknown)?;
    let entry = open_entry(node, &row)?;
    Ok((row, entry))
}

fn hold_json(row: &RegisterRow, entry: &RequestEntry) -> Value {
    json!({
        "id": row.id,
        "patient": row.subject,
        "status": row.status,
        "placed": instant(row.opened_micros),
        "placed_by": entry.opened_by,
        "reason": entry.note,
        "released": entry.answer,
    })
}

/// One hold.
///
/// # Errors
/// 404 for an unknown id.
pub fn show_hold(node: &Node, id: &str) -> Result<Value, Error> {
    let (row, entry) = find_hold(node, id)?;
    Ok(hold_json(&row, &entry))
}

/// Every hold, newest first.
///
/// # Errors
/// Store and key failures.
pub fn holds(node: &Node) -> Result<Vec<Value>, Error> {
    node.store
        .register(Some(LEGAL_HOLD))?
        .iter()
        .map(|row| Ok(hold_json(row, &open_entry(node, row)?)))
        .collect()
}

/// Erases `patient` (crypto-shredding: their data key destroyed) and returns the signed
/// certificate; `None` when they had been erased before (nothing was destroyed now). With
/// `request`, an erasure request about this patient is answered by it.
///
/// # Errors
/// 409 under a legal hold; 404 when nothing is stored for the patient; 400 for a request
/// that is not an open erasure request about them.
pub fn erase(
    node: &Node,
    patient: &ResourceId,
    request: Option<&str>,
    by: &str,
    agent: &Value,
) -> Result<Option<Value>, Error> {
    if let Some(r) = request {
        let found = crate::subject::show_request(node, r)?;
        if found["right"] != "erasure"
            || found["patient"] != format!("Patient/{patient}").as_str()
            || found["status"] != "open"
        {
            return Err(Error::Invalid(
                "that is not an open erasure request about this patient".into(),
            ));
        }
    }
    let resources = match erase_patient(node, patient)? {
        Erased::Now(n) => n,
        Erased::Already => return Ok(None),
    };
    let (document, checkpoints) = report::signer_and_pins(node)?;
    let mut certificate = json!({
        "format": CERTIFICATE_FORMAT,
        "node": document,
        "checkpoints": checkpoints,
        "generated": instant(node.clock.now_micros()),
        "patient": format!("Patient/{patient}"),
        "request": request,
        "destroyed": {
            "key": format!("the data key of Patient/{patient}, every version of it"),
            "resources": resources,
            "meaning": "every version of every resource in the patient's compartment is unreadable: reads answer 410 Gone, searches no longer find them, backups hold them only under the destroyed key",
        },
        "remains": [
            "the records log: one commitment leaf per version (a salted hash of its metadata and sealed body), which reveals nothing without the destroyed key and keeps the log verifiable",
            "the access log: who accessed the record and when (sealed under the node's audit key), which accountability requires",
            "the register: requests and holds that name the patient's id",
        ],
    });
    report::sign(node, CERTIFICATE_FORMAT, &mut certificate)?;
    if let Some(r) = request {
        crate::subject::answer_request(
            node,
            r,
            "answered",
            Some(&format!(
                "erased: data key destroyed, {resources} resource(s) unreadable; certificate signed"
            )),
            by,
            agent,
        )?;
    }
    Ok(Some(certificate))
}

/// What a verified certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    /// The signing node.
    pub node: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// `Patient/<id>`.
    pub patient: String,
    /// When.
    pub generated: String,
    /// Resources made unreadable.
    pub resources: u64,
}

/// Checks an erasure certificate: signature, node document, checkpoints (with `node`, in its
/// history), and (given `expected`) the signer.
///
/// # Errors
/// The first check that fails.
pub fn verify_certificate(
    certificate: &Value,
    expected: Option<&str>,
    node: Option<&Node>,
) -> Result<VerifiedCertificate, VerifyError> {
    let signed = report::verify_signed(certificate, CERTIFICATE_FORMAT, expected, node)?;
    let map = signed.map;
    Ok(VerifiedCertificate {
        node: signed.node,
        fingerprint: signed.fingerprint,
        patient: map["patient"].as_str().unwrap_or_default().to_owned(),
        generated: map["generated"].as_str().unwrap_or_default().to_owned(),
        resources: map["destroyed"]["resources"].as_u64().unwrap_or(0),
    })
}
