//! The one HTTP error type: every failure leaves as a FHIR `OperationOutcome` with the status
//! FHIR gives its kind and no internal detail (that goes to the log, without PHI).
//!
//! The service layer's error is [`medvault_node::Error`]; [`ApiError`] is that error on its way
//! out as a response, and the only place an error becomes HTTP.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use medvault_node::error::operation_outcome;
pub use medvault_node::{Error, ErrorKind, IssueCode};
use medvault_store::StoreError;

/// A node error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct ApiError(pub Error);

/// The rule that refused a request, carried from an [`ApiError`] to the access log.
#[derive(Debug, Clone)]
pub(crate) struct DeniedBy(pub(crate) String);

impl ApiError {
    /// An error of a kind, with an issue code and safe message.
    pub fn new(kind: ErrorKind, code: IssueCode, message: impl Into<String>) -> Self {
        Self(Error::new(kind, code, message))
    }

    /// Names the rule that decided this refusal, for the access log.
    #[must_use]
    pub fn denied_by(self, rule: impl Into<String>) -> Self {
        Self(self.0.denied_by(rule))
    }

    /// 400 with an `invalid` issue.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self(Error::bad_request(message))
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self(Error::not_found(message))
    }

    /// 500: the detail is logged here and never returned.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        Self(Error::internal(detail))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl std::ops::Deref for ApiError {
    type Target = Error;
    fn deref(&self) -> &Error {
        &self.0
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        e.0
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self(Error::from(e))
    }
}

impl From<ApiError> for StoreError {
    fn from(e: ApiError) -> Self {
        StoreError::from(e.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.0.outcome()).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::FHIR_JSON),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"medvault\""),
            );
        }
        if let Some(rule) = self.0.denied_by {
            resp.extensions_mut().insert(DeniedBy(rule));
        }
        resp
    }
}

/// A JSON body the extractor refused (not JSON, not the shape, not `application/json`), as a
/// 400 OperationOutcome saying what to send (never the parser's words).
pub(crate) fn json_body<T>(
    b: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    b.map(|axum::Json(t)| t)
        .map_err(|_| ApiError::bad_request(format!("send {shape} as application/json")))
}

/// A query string that does not fit the endpoint's parameters: 400 as an `OperationOutcome`
/// (axum's own answer is plain text), naming the parameter and what was wrong with it.
pub(crate) fn query_rejected(e: axum::extract::rejection::QueryRejection) -> ApiError {
    let text = e.body_text();
    let why = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or("the query string does not parse");
    ApiError::bad_request(format!("invalid query parameters: {why}"))
}

/// A request path the router matched but could not decode (not UTF-8 once percent-decoded): 400
/// as an `OperationOutcome` (axum's own answer is plain text).
pub(crate) fn path_rejected(_: axum::extract::rejection::PathRejection) -> ApiError {
    ApiError::bad_request("the request path is not valid (it must be UTF-8 once percent-decoded)")
}
