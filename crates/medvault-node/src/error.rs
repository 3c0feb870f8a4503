//! The service layer's error: what went wrong, in domain terms ([`ErrorKind`]), with a message
//! safe to show (never PHI, never internal detail; that goes to the log). Only the HTTP server
//! turns it into a response; the CLI prints its message. FHIR's RESTful API fixes the status each
//! kind is answered with ([`ErrorKind::status`]), which a transaction Bundle's entries carry too.

use http::StatusCode;
use medvault_store::StoreError;
use serde_json::{Value, json};

/// FHIR `OperationOutcome.issue.code` values used by medvault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    /// `invalid`: content or syntax is wrong.
    Invalid,
    /// `structure`: the body is not parseable.
    Structure,
    /// `required`: something required is missing.
    Required,
    /// `value`: a value is out of range or malformed.
    Value,
    /// `security` / `login`: not authenticated.
    Login,
    /// `forbidden`.
    Forbidden,
    /// `not-found`.
    NotFound,
    /// `deleted`: the resource is gone.
    Deleted,
    /// `not-supported`.
    NotSupported,
    /// `conflict`: version conflict.
    Conflict,
    /// `duplicate`.
    Duplicate,
    /// `multiple-matches`: a conditional request selects several resources.
    MultipleMatches,
    /// `too-costly`.
    TooCostly,
    /// `too-long`: body too large.
    TooLong,
    /// `exception`: our fault.
    Exception,
    /// `transient`: try again.
    Transient,
    /// `processing`: a business rule refused it.
    Processing,
    /// `informational`, for warnings in search results.
    Informational,
    /// `throttled`: too many requests.
    Throttled,
}

impl IssueCode {
    /// The FHIR code text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Required => "required",
            Self::Value => "value",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::NotSupported => "not-supported",
            Self::Conflict => "conflict",
            Self::Duplicate => "duplicate",
            Self::MultipleMatches => "multiple-matches",
            Self::TooCostly => "too-costly",
            Self::TooLong => "too-long",
            Self::Exception => "exception",
            Self::Transient => "transient",
            Self::Processing => "processing",
            Self::Informational => "informational",
            Self::Throttled => "throttled",
        }
    }
}

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something invalid.
    Invalid,
    /// No one (or no valid credential) is authenticated.
    Unauthenticated,
    /// Someone is authenticated but may not do this.
    Forbidden,
    /// The thing asked for does not exist (or is not visible to the caller).
    NotFound,
    /// The interaction is not offered on this endpoint.
    MethodNotAllowed,
    /// The write conflicts with the current state (a concurrent change, a duplicate, a replay).
    Conflict,
    /// The thing asked for existed and is deleted.
    Gone,
    /// A precondition the client set (`If-Match`, a conditional write) does not hold.
    PreconditionFailed,
    /// The request or a resource in it is larger than the node accepts.
    TooLarge,
    /// The body is in a format the node does not take.
    UnsupportedMediaType,
    /// The response format asked for (`_format`, `Accept`) is one the node does not write.
    NotAcceptable,
    /// The request is well formed but a business rule refuses it.
    Unprocessable,
    /// Too many requests; try later.
    Throttled,
    /// The node failed; the detail is in its log.
    Internal,
    /// A peer (another node, a witness) failed or answered wrongly.
    PeerFailed,
    /// A dependency (the database) is unavailable, or the request ran out of time; retry.
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status FHIR's RESTful API answers this kind with (also a Bundle entry's
    /// `response.status`).
    pub fn status(self) -> StatusCode {
        match self {
            Self::Invalid => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Gone => StatusCode::GONE,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::PeerFailed => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The client's fault (a 4xx), as opposed to the node's or a dependency's.
    pub fn is_client_error(self) -> bool {
        self.status().is_client_error()
    }
}

/// A failure of a node operation, safe to show to whoever asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.status())]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// FHIR issue type.
    pub code: IssueCode,
    /// Message safe to show: never PHI, never internal detail.
    pub message: String,
    /// Further issues with FHIRPath locations (validation).
    pub details: Vec<(String, String)>,
    /// For a refusal: the rule(s) that decided it, e.g. `role-gate` or the `@id`s of Cedar
    /// policies (recorded in the access log, never shown).
    pub denied_by: Option<String>,
}

/// A node operation's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of a kind, with an issue code and safe message.
    pub fn new(kind: ErrorKind, code: IssueCode, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            details: Vec::new(),
            denied_by: None,
        }
    }

    /// Names the rule that decided this refusal, for the access log.
    #[must_use]
    pub fn denied_by(mut self, rule: impl Into<String>) -> Self {
        self.denied_by = Some(rule.into());
        self
    }

    /// Invalid input, with an `invalid` issue.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, IssueCode::Invalid, message)
    }

    /// Not authenticated (no credential, or one that is not valid), with a `login` issue.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, IssueCode::Login, message)
    }

    /// Not found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, IssueCode::NotFound, message)
    }

    /// A conflict with the resource's state, with a `conflict` issue.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, IssueCode::Conflict, message)
    }

    /// Gone (deleted).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Gone, IssueCode::Deleted, message)
    }

    /// The node's own failure: the detail is logged here and never returned.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorKind::Internal,
            IssueCode::Exception,
            "internal error; the server log has the details",
        )
    }

    /// The HTTP status FHIR answers this error with.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The `OperationOutcome` resource for this error.
    pub fn outcome(&self) -> Value {
        operation_outcome("error", self.code, &self.message, &self.details)
    }
}

/// Builds an `OperationOutcome` with one main issue plus located detail issues.
pub fn operation_outcome(
    severity: &str,
    code: IssueCode,
    message: &str,
    details: &[(String, String)],
) -> Value {
    let mut issues =
        vec![json!({"severity": severity, "code": code.as_str(), "diagnostics": message})];
    for (path, msg) in details {
        issues.push(json!({"severity": severity, "code": code.as_str(), "diagnostics": msg, "expression": [path]}));
    }
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// An error with its causes, one after another (`connection error: received fatal alert: …`):
/// for messages shown where no server log is (the CLI) or where the cause is the point (a peer
/// that refuses this node's client certificate says so only after the TLS 1.3 handshake).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Aborted(inner) => match inner.downcast::<Error>() {
                Ok(err) => *err,
                Err(other) => Self::internal(&other),
            },
            StoreError::Conflict => {
                Self::conflict("the write conflicts with a concurrent change; retry it")
            }
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "database unavailable");
                Self::new(
                    ErrorKind::Unavailable,
                    IssueCode::Transient,
                    "the database is unavailable; retry shortly",
                )
            }
            other => Self::internal(&other),
        }
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        StoreError::Aborted(Box::new(e))
    }
}
