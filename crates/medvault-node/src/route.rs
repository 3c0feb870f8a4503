//! FHIR REST paths (relative to `/fhir`), parsed once for HTTP requests and Bundle entries alike.

use http::Method;
use medvault_core::{ResourceId, ResourceType, VersionId};

use crate::error::{Error, ErrorKind, IssueCode};

/// What a FHIR path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/` (Bundles).
    System,
    /// `/metadata`.
    Metadata,
    /// `/{type}`.
    Type(ResourceType),
    /// `/{type}/_search`.
    TypeSearch(ResourceType),
    /// `/{type}/_history`.
    TypeHistory(ResourceType),
    /// `/{type}/{id}`.
    Instance(ResourceType, ResourceId),
    /// `/{type}/{id}/_history`.
    InstanceHistory(ResourceType, ResourceId),
    /// `/{type}/{id}/_history/{vid}`.
    Version(ResourceType, ResourceId, VersionId),
    /// `/{type}/{id}/${operation}` (the name without `$`).
    Operation(ResourceType, ResourceId, String),
    /// `/{type}/${operation}` (the name without `$`).
    TypeOperation(ResourceType, String),
    /// `/${operation}` (the name without `$`): `$export`.
    SystemOperation(String),
    /// `/$export-status/{job}`: a Bulk Data export's status (GET) or cancellation (DELETE).
    ExportStatus(String),
    /// `/$export-file/{job}/{file}`: one output file of a finished export.
    ExportFile(String, String),
}

/// A type name from a path: 404 when it cannot be one (whether the node serves it is
/// [`crate::ops::served_type`]'s decision).
fn type_name(s: &str) -> Result<ResourceType, Error> {
    ResourceType::new(s).map_err(|_| Error::not_found("unknown resource type"))
}

fn id(s: &str) -> Result<ResourceId, Error> {
    crate::ops::parse_id(s)
}

/// Parses a path relative to the FHIR base (leading and trailing `/` ignored).
///
/// # Errors
/// 404 for paths that name nothing; 400 for malformed ids or version ids.
pub fn parse_path(path: &str) -> Result<Target, Error> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    Ok(match segs.as_slice() {
        [] => Target::System,
        ["metadata"] => Target::Metadata,
        ["$export-status", job] if is_job_id(job) => Target::ExportStatus((*job).to_owned()),
        ["$export-file", job, file] if is_job_id(job) && is_file_name(file) => {
            Target::ExportFile((*job).to_owned(), (*file).to_owned())
        }
        [op] if op.len() > 1 && op.starts_with('$') => Target::SystemOperation(op[1..].to_owned()),
        [t] => Target::Type(type_name(t)?),
        [t, "_search"] => Target::TypeSearch(type_name(t)?),
        [t, "_history"] => Target::TypeHistory(type_name(t)?),
        [t, op] if op.len() > 1 && op.starts_with('$') => {
            Target::TypeOperation(type_name(t)?, op[1..].to_owned())
        }
        [t, i] => Target::Instance(type_name(t)?, id(i)?),
        [t, i, "_history"] => Target::InstanceHistory(type_name(t)?, id(i)?),
        [t, i, op] if op.len() > 1 && op.starts_with('$') => {
            Target::Operation(type_name(t)?, id(i)?, op[1..].to_owned())
        }
        [t, i, "_history", v] => Target::Version(
            type_name(t)?,
            id(i)?,
            VersionId::parse(v).map_err(|e| Error::bad_request(e.to_string()))?,
        ),
        _ => return Err(Error::not_found("no such FHIR endpoint")),
    })
}

/// A job id as [`crate::bulk`] makes them: 32 lower-case hex digits.
fn is_job_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An export file name: `{Type}-{n}.ndjson`.
fn is_file_name(s: &str) -> bool {
    s.strip_suffix(".ndjson").is_some_and(|stem| {
        stem.len() <= 80 && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// 405 for a method the target does not support.
pub fn method_not_allowed(method: &Method) -> Error {
    Error::new(
        ErrorKind::MethodNotAllowed,
        IssueCode::NotSupported,
        format!("{method} is not supported on this endpoint"),
    )
}

/// Parses `W/"3"` or `"3"` (an `If-Match` / `ifMatch` value).
///
/// # Errors
/// 400 when it is not a version ETag.
pub fn parse_etag(text: &str) -> Result<u64, Error> {
    let t = text.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    let t = t
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t);
    VersionId::parse(t).map(VersionId::get).map_err(|_| {
        Error::new(
            ErrorKind::Invalid,
            IssueCode::Invalid,
            "If-Match must be a version ETag such as W/\"3\"",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/").unwrap(), Target::System);
        assert_eq!(
            parse_path("Patient").unwrap(),
            Target::Type(ResourceType::PATIENT)
        );
        assert_eq!(
            parse_path("Patient/1/$share").unwrap(),
            Target::Operation(
                ResourceType::PATIENT,
                ResourceId::new("1").unwrap(),
                "share".into()
            )
        );
        assert!(
            matches!(parse_path("Patient/1/_history/2").unwrap(), Target::Version(_, _, v) if v.get() == 2)
        );
        assert_eq!(
            parse_path("Patient/$validate").unwrap(),
            Target::TypeOperation(ResourceType::PATIENT, "validate".into())
        );
        assert_eq!(
            parse_path("Patient/bad id").unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            parse_path("Patient/1/_history/x").unwrap_err().kind,
            ErrorKind::Invalid
        );
        assert_eq!(parse_path("patient").unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(
            parse_path("a/b/c/d/e").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn etags() {
        assert_eq!(parse_etag("W/\"3\"").unwrap(), 3);
        assert_eq!(parse_etag("\"3\"").unwrap(), 3);
        assert_eq!(parse_etag("3").unwrap(), 3);
        for bad in ["", "W/\"\"", "W/\"x\"", "\"0\""] {
            assert!(parse_etag(bad).is_err(), "{bad}");
        }
    }
}
