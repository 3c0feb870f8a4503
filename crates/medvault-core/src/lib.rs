//! Identifiers and typed domain values shared by every medvault crate.
//!
//! **Invariant:** no I/O, no async, no clocks. Values are validated in their constructors
//! ("parse, don't validate"), so a `ResourceId` in hand is always a legal FHIR id.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
    /// The number is not an authenticator assurance level medvault records.
    #[error("unknown authenticator assurance level {0} (known: 1, 2, 3)")]
    UnknownAal(i64),
    /// The text is not a data-key name.
    #[error(
        "invalid data-key name: must be Patient/<id> or '@' followed by lower-case letters, digits or '-'"
    )]
    InvalidKeyName,
}

/// `Debug` (`Name("text")`), `Display`, `AsRef<str>` and `Borrow<str>` of a type that is its
/// text (`as_str`); its equality, order and hashing are the text's too, so maps keyed by it are
/// looked up by `&str`.
macro_rules! text_traits {
    ($ty:ident) => {
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($ty))
                    .field(&self.as_str())
                    .finish()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }
    };
}

/// A FHIR resource type name such as `Patient`.
///
/// Only the syntax is checked here (`[A-Z][A-Za-z]{0,63}`); whether the node serves the type is
/// the FHIR layer's decision. Names written in the code ([`Self::from_static`],
/// [`Self::PATIENT`]) are never allocated, and a clone never copies the name (a parsed name is
/// shared), so a type travels through a request's layers for free. Equality, order and hashing
/// are the name's.
#[derive(Clone)]
pub struct ResourceType(Name);

/// Where a [`ResourceType`]'s name lives.
#[derive(Clone)]
enum Name {
    /// Written in the code.
    Static(&'static str),
    /// Parsed at run time, shared by every clone.
    Shared(Arc<str>),
}

/// Whether every byte of `$bytes` after the first satisfies `$ok` (a condition on `$c`): the
/// loop the `const fn` name checks share (a `const fn` cannot call a closure).
macro_rules! rest_all {
    ($bytes:expr, |$c:ident| $ok:expr) => {{
        let b: &[u8] = $bytes;
        let mut i = 1;
        let mut all = true;
        while all && i < b.len() {
            let $c = b[i];
            all = $ok;
            i += 1;
        }
        all
    }};
}

/// True if `name` is an upper-case ASCII letter followed by at most 63 ASCII letters.
const fn is_type_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_uppercase()
        && rest_all!(b, |c| c.is_ascii_alphabetic())
}

impl ResourceType {
    /// `Patient`: the type whose instances own compartments.
    pub const PATIENT: Self = Self::from_static("Patient");

    /// Parses a resource type name.
    ///
    /// # Errors
    /// [`CoreError::InvalidType`] unless the text is an upper-case ASCII letter followed by at
    /// most 63 ASCII letters (the longest R4 type name is 33 characters).
    pub fn new(name: &str) -> Result<Self, CoreError> {
        if is_type_name(name) {
            Ok(Self(Name::Shared(Arc::from(name))))
        } else {
            Err(CoreError::InvalidType)
        }
    }

    /// A type name written in the code, checked like [`Self::new`] but without allocating; in a
    /// `const` an invalid name fails the build.
    ///
    /// # Panics
    /// If `name` is not a syntactically valid type name (a programming error).
    pub const fn from_static(name: &'static str) -> Self {
        assert!(is_type_name(name), "not a FHIR resource type name");
        Self(Name::Static(name))
    }

    /// The type name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Name::Static(s) => s,
            Name::Shared(s) => s,
        }
    }
}

text_traits!(ResourceType);

impl PartialEq for ResourceType {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ResourceType {}

impl Hash for ResourceType {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for ResourceType {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ResourceType {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for ResourceType {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ResourceType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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

/// Compares as the text does (`Eq`, `Ord` and `Hash` are the text's), so maps keyed by
/// `ResourceId` are looked up by `&str`.
impl Borrow<str> for ResourceId {
    fn borrow(&self) -> &str {
        &self.0
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

/// The name of a data key: a compartment's (`Patient/<id>`, `@tenant`) or one of the node's own
/// keys (`@` followed by lower-case ASCII letters, digits and `-`, such as `@index`).
///
/// Names written in the code ([`Self::node`], [`Self::TENANT`]) are never allocated. Equality,
/// order and hashing are the text's, so maps keyed by `KeyName` are looked up by `&str`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(Cow<'static, str>);

/// Whether `name` is `@` followed by at least one lower-case ASCII letter, digit or `-`.
const fn is_node_key_name(name: &str) -> bool {
    const fn allowed(c: u8) -> bool {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
    }
    let b = name.as_bytes();
    b.len() >= 2 && b[0] == b'@' && rest_all!(b, |c| allowed(c))
}

impl KeyName {
    /// `@tenant`: the key of [`Compartment::Tenant`].
    pub const TENANT: Self = Self::node("@tenant");

    /// Parses a data-key name.
    ///
    /// # Errors
    /// [`CoreError::InvalidKeyName`] unless the text is `Patient/<valid id>` or `@` followed by
    /// lower-case ASCII letters, digits and `-`.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        Self::check(text)?;
        Ok(Self(Cow::Owned(text.to_owned())))
    }

    fn check(text: &str) -> Result<(), CoreError> {
        let ok = is_node_key_name(text)
            || text
                .strip_prefix("Patient/")
                .is_some_and(|id| ResourceId::new(id).is_ok());
        if ok {
            Ok(())
        } else {
            Err(CoreError::InvalidKeyName)
        }
    }

    /// The name of one of the node's own keys, written in the code: checked like
    /// [`Self::parse`] but without allocating; in a `const` an invalid name fails the build.
    ///
    /// # Panics
    /// If `name` is not `@` followed by lower-case ASCII letters, digits and `-` (a programming
    /// error).
    pub const fn node(name: &'static str) -> Self {
        assert!(is_node_key_name(name), "not a node data-key name");
        Self(Cow::Borrowed(name))
    }

    /// The name text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name text, owned (without copying a parsed or compartment name).
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }

    /// The compartment this key seals, if it is a compartment's key.
    pub fn compartment(&self) -> Option<Compartment> {
        Compartment::from_key_name(self.as_str()).ok()
    }
}

/// Takes the text without copying it.
impl TryFrom<String> for KeyName {
    type Error = CoreError;

    fn try_from(text: String) -> Result<Self, CoreError> {
        Self::check(&text)?;
        Ok(Self(Cow::Owned(text)))
    }
}

impl From<&Compartment> for KeyName {
    fn from(c: &Compartment) -> Self {
        match c {
            Compartment::Patient(id) => Self(Cow::Owned(format!("Patient/{id}"))),
            Compartment::Tenant => Self::TENANT,
        }
    }
}

text_traits!(KeyName);

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

/// The authenticator assurance level (NIST SP 800-63B) a login session reached. Ordered, so a
/// gate asks for "at least" a level. Stored as its number (1, 2, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aal {
    /// AAL1: the password alone. Such a session may only enroll a second factor.
    One,
    /// AAL2: the password and a second factor (a TOTP code or a recovery code).
    Two,
    /// AAL3: a passkey with user verification (a hardware-bound, phishing-resistant factor).
    Three,
}

impl Aal {
    /// The level's number, as stored and as shown to clients.
    pub fn level(self) -> u8 {
        match self {
            Self::One => 1,
            Self::Two => 2,
            Self::Three => 3,
        }
    }

    /// The level a stored number names.
    ///
    /// # Errors
    /// [`CoreError::UnknownAal`] for any number but 1, 2 and 3.
    pub fn from_level(level: i64) -> Result<Self, CoreError> {
        match level {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            3 => Ok(Self::Three),
            other => Err(CoreError::UnknownAal(other)),
        }
    }
}

impl From<Aal> for i64 {
    fn from(aal: Aal) -> Self {
        Self::from(aal.level())
    }
}

impl fmt::Display for Aal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AAL{}", self.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_parse_and_round_trip() {
        let p = Compartment::Patient(ResourceId::new("p1").unwrap());
        assert_eq!(KeyName::from(&p).as_str(), p.key_name());
        assert_eq!(KeyName::from(&Compartment::Tenant), KeyName::TENANT);
        for text in [
            "@tenant",
            "@index",
            "Patient/p1",
            "Patient/a.B-9",
            "@ledger",
            "@ledger-access",
            "@witness",
            "@ledger-ml-dsa-44",
            "@audit",
            "@identity",
            "@node-sign-ed25519",
            "@node-sign-ml-dsa-65",
            "@node-kem-x-wing",
        ] {
            let k = KeyName::parse(text).unwrap();
            assert_eq!(k.as_str(), text);
            assert_eq!(k.to_string(), text);
            assert_eq!(KeyName::try_from(text.to_owned()), Ok(k.clone()));
            let b: &str = k.borrow();
            assert_eq!(b, text);
        }
        assert_eq!(KeyName::parse("Patient/p1").unwrap().compartment(), Some(p));
        assert_eq!(KeyName::node("@index").compartment(), None);
        assert_eq!(format!("{:?}", KeyName::TENANT), r#"KeyName("@tenant")"#);
        assert!(KeyName::node("@a") < KeyName::node("@b"));
        for bad in [
            "",
            "Patient/",
            "Patient/../x",
            "@",
            "@Upper",
            "x",
            "@tenant ",
            "@a_b",
            "Observation/1",
            "patient/p1",
        ] {
            assert_eq!(
                KeyName::parse(bad),
                Err(CoreError::InvalidKeyName),
                "{bad:?}"
            );
            assert!(KeyName::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
    }

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
        for bad in [
            "",
            "patient",
            "Pa tient",
            "Patient1",
            "Pätient",
            &"A".repeat(65),
        ] {
            assert!(ResourceType::new(bad).is_err(), "{bad:?}");
        }
        assert!(ResourceType::new(&"A".repeat(64)).is_ok());
    }

    #[test]
    fn static_type_names_equal_parsed_ones() {
        use std::collections::{BTreeMap, HashMap};
        let parsed = ResourceType::new("Patient").unwrap();
        assert_eq!(ResourceType::PATIENT, parsed);
        assert_eq!(ResourceType::from_static("Consent").as_str(), "Consent");
        assert_eq!(format!("{parsed:?}"), "ResourceType(\"Patient\")");
        assert!(ResourceType::from_static("Consent") < parsed);
        assert!(parsed == "Patient" && parsed != "Consent");
        // Maps keyed by type are looked up by name.
        let hashed: HashMap<ResourceType, u8> = [(ResourceType::PATIENT, 1)].into();
        let ordered: BTreeMap<ResourceType, u8> = [(parsed, 2)].into();
        assert_eq!(hashed.get("Patient"), Some(&1));
        assert_eq!(ordered.get("Patient"), Some(&2));
        let ids: HashMap<ResourceId, u8> = [(ResourceId::new("a").unwrap(), 3)].into();
        assert_eq!(ids.get("a"), Some(&3));
    }

    #[test]
    #[should_panic(expected = "not a FHIR resource type name")]
    fn static_type_names_are_checked() {
        let _ = ResourceType::from_static("patient");
    }

    #[test]
    fn assurance_levels_order_and_round_trip() {
        assert!(Aal::One < Aal::Two && Aal::Two < Aal::Three);
        for aal in [Aal::One, Aal::Two, Aal::Three] {
            assert_eq!(Aal::from_level(i64::from(aal)), Ok(aal));
        }
        for bad in [0, 4, -1, 256] {
            assert_eq!(Aal::from_level(bad), Err(CoreError::UnknownAal(bad)));
        }
        assert_eq!(Aal::Two.to_string(), "AAL2");
        assert!(
            CoreError::UnknownAal(7)
                .to_string()
                .contains("assurance level 7")
        );
    }
}
