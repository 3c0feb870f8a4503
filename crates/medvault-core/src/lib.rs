//! Identifiers and typed domain values shared by every medvault crate.
//!
//! **Invariant:** no I/O, no async, no clocks. Values are validated in their constructors
//! ("parse, don't validate"), so a `ResourceId` in hand is always a legal FHIR id.

use std::fmt;

/// Errors from constructing a domain value out of untrusted text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The text is not a legal FHIR logical id.
    #[error("invalid resource id: must be 1-64 characters of A-Z, a-z, 0-9, '-' or '.'")]
    InvalidId,
    /// The text is not a syntactically valid FHIR resource type name.
    #[error("invalid resource type name")]
    InvalidType,
    /// The text is not a version number.
    #[error("invalid version id: must be a positive integer")]
    InvalidVersion,
    /// The role is not one medvault knows.
    #[error("unknown role (known roles: admin)")]
    UnknownRole,
}

/// A FHIR resource type name such as `Patient`.
///
/// Only the syntax is checked here (`[A-Z][A-Za-z]{0,63}`); whether the node serves the type is
/// the FHIR layer's decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(String);

impl ResourceType {
    /// Parses a resource type name.
    ///
    /// # Errors
    /// [`CoreError::InvalidType`] unless the text is an upper-case ASCII letter followed by at
    /// most 63 ASCII letters (the longest R4 type name is 33 characters).
    pub fn new(name: &str) -> Result<Self, CoreError> {
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_uppercase());
        if first_ok && name.len() <= 64 && chars.all(|c| c.is_ascii_alphabetic()) {
            Ok(Self(name.to_owned()))
        } else {
            Err(CoreError::InvalidType)
        }
    }

    /// The type name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}` (FHIR R4 §2.1.0.1 "id").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// Longest id FHIR allows.
    pub const MAX_LEN: usize = 64;

    /// Parses a logical id.
    ///
    /// # Errors
    /// [`CoreError::InvalidId`] when the text is empty, longer than [`Self::MAX_LEN`] or holds a
    /// character outside `A-Z a-z 0-9 - .`.
    pub fn new(id: &str) -> Result<Self, CoreError> {
        let ok = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(CoreError::InvalidId)
        }
    }

    /// A fresh random id (UUID v4, lower-case hex with dashes).
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource version number; FHIR `meta.versionId` is its decimal form. Versions start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(u64);

impl VersionId {
    /// The first version of every resource.
    pub const FIRST: Self = Self(1);

    /// Wraps a version number read from storage.
    ///
    /// # Errors
    /// [`CoreError::InvalidVersion`] for 0.
    pub fn new(v: u64) -> Result<Self, CoreError> {
        if v == 0 {
            Err(CoreError::InvalidVersion)
        } else {
            Ok(Self(v))
        }
    }

    /// Parses the decimal text of a version id (as in `_history/3` or `W/"3"`).
    ///
    /// # Errors
    /// [`CoreError::InvalidVersion`] unless the text is a positive decimal integer.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CoreError::InvalidVersion);
        }
        text.parse::<u64>()
            .map_err(|_| CoreError::InvalidVersion)
            .and_then(Self::new)
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The version after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The key compartment a resource version is sealed in.
///
/// Every resource in a patient's FHIR compartment is sealed under that patient's data key, so
/// destroying one key erases the whole compartment. Everything else uses the tenant key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Compartment {
    /// The Patient compartment of the patient with this id.
    Patient(ResourceId),
    /// Resources outside every patient compartment (Practitioner, Organization, ...).
    Tenant,
}

impl Compartment {
    /// The stable text form used as the data-key name: `Patient/<id>` or `@tenant`.
    pub fn key_name(&self) -> String {
        match self {
            Self::Patient(id) => format!("Patient/{id}"),
            Self::Tenant => "@tenant".to_owned(),
        }
    }

    /// Parses [`Self::key_name`] output.
    ///
    /// # Errors
    /// [`CoreError::InvalidId`] when the text is neither `@tenant` nor `Patient/<valid id>`.
    pub fn from_key_name(text: &str) -> Result<Self, CoreError> {
        if text == "@tenant" {
            return Ok(Self::Tenant);
        }
        match text.strip_prefix("Patient/") {
            Some(id) => Ok(Self::Patient(ResourceId::new(id)?)),
            None => Err(CoreError::InvalidId),
        }
    }
}

/// What a bearer of a credential is. [`Role::fhir_access`] says which part of the API the role
/// reaches; the access policy (Cedar, `medvault-policy`) decides each resource from the role,
/// care relationship, consent, labels and purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Full access to the FHIR API and administration.
    Admin,
    /// Reads the audit trail (`AuditEvent`) and nothing else.
    Auditor,
    /// A physician or other licensed clinician.
    Clinician,
    /// A nurse.
    Nurse,
    /// A researcher: directory data under the default policy; a site policy may grant more.
    Researcher,
    /// A patient: their own compartment only, through scopes bound to it.
    Patient,
    /// The privacy officer: reads the audit trail, investigates access.
    PrivacyOfficer,
    /// A registered app or backend service (OAuth2 client): what it may do is exactly what its
    /// granted SMART scopes say.
    Service,
}

/// Which part of the FHIR API a role reaches at all (the access policy then decides each
/// resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirAccess {
    /// The FHIR API, where the access policy decides every resource.
    Full,
    /// Reading `AuditEvent` only.
    AuditTrail,
    /// Nothing except through scopes bound to their own compartment (patients).
    None,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Self; 8] = [
        Self::Admin,
        Self::Auditor,
        Self::Clinician,
        Self::Nurse,
        Self::Researcher,
        Self::Patient,
        Self::PrivacyOfficer,
        Self::Service,
    ];

    /// The stable text form stored with credentials.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Auditor => "auditor",
            Self::Clinician => "clinician",
            Self::Nurse => "nurse",
            Self::Researcher => "researcher",
            Self::Patient => "patient",
            Self::PrivacyOfficer => "privacy-officer",
            Self::Service => "service",
        }
    }

    /// Parses a role name.
    ///
    /// # Errors
    /// [`CoreError::UnknownRole`] for any other text.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or(CoreError::UnknownRole)
    }

    /// The part of the FHIR API the role reaches; the access policy decides within it.
    pub fn fhir_access(self) -> FhirAccess {
        match self {
            // A service's scopes narrow it further on every interaction.
            Self::Admin | Self::Clinician | Self::Nurse | Self::Service | Self::Researcher => {
                FhirAccess::Full
            }
            Self::Auditor | Self::PrivacyOfficer => FhirAccess::AuditTrail,
            // A patient reaches data only through scopes bound to their compartment.
            Self::Patient => FhirAccess::None,
        }
    }

    /// True for roles whose sessions follow NIST 800-63B AAL3 reauthentication limits
    /// (shorter idle timeout).
    pub fn is_aal3(self) -> bool {
        matches!(self, Self::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_map_to_access() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert_eq!(Role::parse("root"), Err(CoreError::UnknownRole));
        assert_eq!(Role::Nurse.fhir_access(), FhirAccess::Full);
        assert_eq!(Role::PrivacyOfficer.fhir_access(), FhirAccess::AuditTrail);
        assert_eq!(Role::Patient.fhir_access(), FhirAccess::None);
        assert!(Role::Admin.is_aal3() && !Role::Clinician.is_aal3());
    }

    #[test]
    fn ids_follow_the_fhir_pattern() {
        assert!(ResourceId::new("abc-1.2").is_ok());
        assert!(ResourceId::new(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "ä", &"a".repeat(65)] {
            assert_eq!(ResourceId::new(bad), Err(CoreError::InvalidId), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_positive_decimals() {
        assert_eq!(VersionId::parse("3").map(VersionId::get), Ok(3));
        for bad in ["", "0", "-1", "1a", "99999999999999999999"] {
            assert!(VersionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn compartment_names_round_trip() {
        let p = Compartment::Patient(ResourceId::new("p1").unwrap());
        assert_eq!(Compartment::from_key_name(&p.key_name()), Ok(p));
        assert_eq!(
            Compartment::from_key_name("@tenant"),
            Ok(Compartment::Tenant)
        );
        assert!(Compartment::from_key_name("Observation/1").is_err());
    }

    #[test]
    fn type_names_are_checked() {
        assert!(ResourceType::new("Patient").is_ok());
        for bad in ["", "patient", "Pa tient", "Patient1"] {
            assert!(ResourceType::new(bad).is_err());
        }
    }
}
