//! Purposes of use (HL7 v3 `PurposeOfUse`): which ones medvault knows, which a role may declare,
//! and which of them a patient's purpose-specific deny covers.
//!
//! Two rules close the ways a declared purpose could open more than it should:
//!
//! - **A role declares only its own purposes.** A clinician cannot declare research or payment
//!   to reach what treatment would not; an unknown code or one the role may not declare is
//!   refused (403) rather than silently accepted. `ETREAT` is break-glass and only ever means
//!   break-glass: the care policy does not accept it, so it opens nothing without an open grant.
//! - **A deny covers its purpose's family.** A consent that denies an actor for `TREAT` also
//!   denies them `HOPERAT`, `ETREAT` and the other care purposes: the care policy accepts those
//!   for the same reads, so declaring one of them must not escape the patient's decision. A
//!   permit, on the other hand, speaks only for the purposes it names (never wider than the
//!   patient said).

/// The purposes medvault accepts in `X-Purpose-Of-Use`, with the family a deny for one of them
/// covers.
const KNOWN: &[(&str, Family)] = &[
    ("TREAT", Family::Care),
    ("ETREAT", Family::Care),
    ("COC", Family::Care),
    ("POPHLTH", Family::Care),
    ("HOPERAT", Family::Care),
    ("CAREMGT", Family::Care),
    ("PATADMIN", Family::Care),
    ("RECORDMGT", Family::Care),
    ("HSYSADMIN", Family::Care),
    ("HRESCH", Family::Research),
    ("CLINTRCH", Family::Research),
    ("HPAYMT", Family::Payment),
    ("PUBHLTH", Family::PublicHealth),
    ("HLEGAL", Family::Legal),
    ("HCOMPL", Family::Legal),
    ("PATRQT", Family::Patient),
    ("FAMRQT", Family::Patient),
    ("PWATRNY", Family::Patient),
    ("HMARKT", Family::Marketing),
    ("HDIRECT", Family::Marketing),
    ("TRAIN", Family::Training),
];

/// Groups of purposes one deny covers together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Care,
    Research,
    Payment,
    PublicHealth,
    Legal,
    Patient,
    Marketing,
    Training,
}

/// Break-glass: emergency treatment, only with an open grant.
pub const EMERGENCY: &str = "ETREAT";

fn family(purpose: &str) -> Option<Family> {
    KNOWN.iter().find(|(p, _)| *p == purpose).map(|(_, f)| *f)
}

/// True if `purpose` is a PurposeOfUse code medvault knows.
pub fn is_known(purpose: &str) -> bool {
    family(purpose).is_some()
}

/// The purposes a role (by its policy name: `clinician`, `admin`, …) may declare; `None` when
/// it may declare any known purpose except break-glass (admins and backend services, whom the
/// policy and their scopes govern).
pub fn declarable(role: &str) -> Option<&'static [&'static str]> {
    match role {
        "clinician" | "nurse" => Some(&["TREAT", "ETREAT", "HOPERAT", "COC", "CAREMGT"]),
        "researcher" => Some(&["HRESCH", "CLINTRCH"]),
        "patient" => Some(&["PATRQT"]),
        "auditor" | "privacy-officer" => Some(&["HCOMPL", "HLEGAL", "HOPERAT"]),
        _ => None,
    }
}

/// Why `role` may not declare `purpose`, if it may not.
pub fn refusal(role: &str, purpose: &str) -> Option<String> {
    if !is_known(purpose) {
        return Some(format!(
            "X-Purpose-Of-Use {purpose} is not a purpose this node accepts (e.g. TREAT, HOPERAT, HRESCH)"
        ));
    }
    match declarable(role) {
        Some(list) if !list.contains(&purpose) => Some(format!(
            "the role {role} may not declare the purpose {purpose} (it may declare {})",
            list.join(", ")
        )),
        None if purpose == EMERGENCY => Some(format!(
            "the role {role} may not declare {EMERGENCY}: break-glass is for clinicians and nurses"
        )),
        _ => None,
    }
}

/// True if a deny naming `denied` speaks to a request declaring `declared` (same family).
pub fn deny_covers(denied: &str, declared: Option<&str>) -> bool {
    let Some(declared) = declared else {
        return false;
    };
    denied == declared || matches!((family(denied), family(declared)), (Some(a), Some(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_declare_their_own_purposes_only() {
        assert_eq!(refusal("clinician", "TREAT"), None);
        assert_eq!(refusal("nurse", "ETREAT"), None);
        assert!(refusal("clinician", "HRESCH").is_some());
        assert!(refusal("clinician", "HPAYMT").is_some());
        assert!(refusal("researcher", "TREAT").is_some());
        assert!(refusal("admin", "ETREAT").is_some());
        assert!(refusal("service", "ETREAT").is_some());
        assert_eq!(refusal("admin", "HPAYMT"), None);
        assert!(refusal("clinician", "MADEUP").is_some());
        assert!(refusal("patient", "TREAT").is_some());
    }

    #[test]
    fn a_deny_covers_the_family_of_its_purpose() {
        assert!(deny_covers("TREAT", Some("HOPERAT")));
        assert!(deny_covers("TREAT", Some("ETREAT")));
        assert!(deny_covers("HOPERAT", Some("TREAT")));
        assert!(deny_covers("HRESCH", Some("CLINTRCH")));
        assert!(!deny_covers("HRESCH", Some("TREAT")));
        assert!(!deny_covers("TREAT", None));
        assert!(deny_covers("XYZ", Some("XYZ")));
    }
}
