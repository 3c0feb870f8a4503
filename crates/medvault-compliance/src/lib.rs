//! Compliance from live evidence (issue 20): the node answers an auditor's HIPAA, GDPR and
//! ISO/IEC 27001 questions from what is true now, in a report it signs and pins to a
//! checkpoint of each of its logs.
//!
//! - [`evidence`]: what the report rests on, read from the node (and the settings `serve`
//!   records at start); reading changes nothing it reports on.
//! - [`controls`]: each control judged `pass | warn | fail | not-applicable` from the
//!   evidence, by pure functions.
//! - [`report`]: the signed JSON report, its canonical form and its verification.
//! - [`html`]: the same report for a person, with the signed JSON embedded so the page
//!   verifies as the file does; [`pdf`]: the same as a PDF, the signed JSON attached.

pub mod breach;
pub mod controls;
pub mod erasure;
pub mod evidence;
pub mod flags;
pub mod html;
pub mod pdf;
pub mod register;
pub mod report;
pub mod subject;

use medvault_node::Node;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error("database: {0}")]
    Store(#[from] medvault_store::StoreError),
    /// A node operation failed (its error kept whole: a 404 stays a 404).
    #[error("{}", .0.message)]
    Node(Box<medvault_node::Error>),
    /// Input that is not a report.
    #[error("{0}")]
    Invalid(String),
    /// No such entry.
    #[error("{0}")]
    NotFound(String),
    /// Something that should not happen.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<medvault_node::Error> for Error {
    fn from(e: medvault_node::Error) -> Self {
        Self::Node(Box::new(e))
    }
}

/// The signed report in `bytes`: its JSON, or the JSON a page ([`html`]) or a PDF ([`pdf`])
/// made from it carries (and the document must be exactly what it renders).
///
/// # Errors
/// None of these, or one that was changed.
pub fn extract_report(bytes: &[u8]) -> Result<serde_json::Value, String> {
    if bytes.starts_with(b"%PDF-") {
        return pdf::extract(bytes);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "neither a PDF nor UTF-8 text")?;
    html::extract(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Reads the evidence, judges every control and signs the report. `progress` gets (leaves
/// verified, leaves in all) while both logs are verified.
///
/// # Errors
/// Store and key failures.
pub fn report(node: &Node, progress: impl FnMut(u64, u64)) -> Result<serde_json::Value, Error> {
    let evidence = evidence::gather(node, progress)?;
    let controls = controls::evaluate(&evidence);
    report::build(node, evidence.now_micros, &controls)
}
