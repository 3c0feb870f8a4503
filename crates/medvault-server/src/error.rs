//! The one HTTP error type: every failure leaves as a FHIR `OperationOutcome` with the right
//! status and no internal detail (that goes to the log, without PHI).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Issue type.
    pub code: IssueCode,
    /// Message safe to show: never PHI, never internal detail.
    pub message: String,
    /// Further issues with FHIRPath locations (validation).
    pub details: Vec<(String, String)>,
    /// For a refusal: the rule(s) that decided it, e.g. `role-gate` or the `@id`s of Cedar
    /// policies (recorded in the access log, never shown).
    pub denied_by: Option<String>,
}

/// The rule that refused a request, carried from an [`ApiError`] to the access log.
#[derive(Debug, Clone)]
pub(crate) struct DeniedBy(pub(crate) String);

impl ApiError {
    /// An error with a status, issue code and safe message.
    pub fn new(status: StatusCode, code: IssueCode, message: impl Into<String>) -> Self {
        Self {
            status,
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

    /// 400 with an `invalid` issue.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueCode::NotFound, message)
    }

    /// 410 Gone.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, IssueCode::Deleted, message)
    }

    /// 500: the detail is logged here and never returned.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueCode::Exception,
            "internal error; the server log has the details",
        )
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.outcome()).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::FHIR_JSON),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"medvault\""),
            );
        }
        if let Some(rule) = self.denied_by {
            resp.extensions_mut().insert(DeniedBy(rule));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Aborted(inner) => match inner.downcast::<ApiError>() {
                Ok(api) => *api,
                Err(other) => Self::internal(&other),
            },
            StoreError::Conflict => Self::new(
                StatusCode::CONFLICT,
                IssueCode::Conflict,
                "the write conflicts with a concurrent change; retry it",
            ),
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueCode::Transient,
                    "the database is unavailable; retry shortly",
                )
            }
            other => Self::internal(&other),
        }
    }
}

impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> Self {
        StoreError::Aborted(Box::new(e))
    }
}
