//! Erasure (GDPR Art. 17): legal holds that block it, and the signed certificate of an
//! erasure.
//!
//! **A legal hold** ([`crate::flags::HOLD`]) is a register row (kind `legal-hold`, subject the
//! patient, its reason sealed); while one is in force `medvault_node::admin::erase_patient`
//! refuses (409), from the API and the CLI alike.
//!
//! **The certificate** (`medvault-erasure-certificate/1`) is signed by the node and pinned to
//! both logs' checkpoints like the compliance report: which key was destroyed, how many
//! resources it made unreadable, when, and what remains (commitments only). `medvault subject
//! verify` checks it.

use medvault_core::ResourceId;
use medvault_node::Node;
use medvault_node::admin::{Erased, erase_patient};
use medvault_node::clock::instant;
use serde_json::{Value, json};

use crate::Error;
use crate::report::{self, VerifyError};

/// The certificate's format name.
pub const CERTIFICATE_FORMAT: &str = "medvault-erasure-certificate/1";

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
        crate::subject::check_open(node, r, "erasure", patient)?;
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
