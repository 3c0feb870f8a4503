//! SMART App Launch v2 scopes: `{patient|user|system}/{Type|*}.{cruds}[?param=value&…]`, with
//! the v1 suffixes mapped (`.read` → `.rs`, `.write` → `.cud`, `.*` → `.cruds`). Other scopes
//! (`openid`, `fhirUser`, `launch`, `offline_access`, …) are kept as names.
//!
//! A request is allowed when any scope grants its interaction on its resource type; a scope with
//! query constraints (`patient/Observation.rs?category=laboratory`) grants it only for resources
//! that match every one of its parameters.

use std::fmt;

/// Who a resource scope speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    /// The patient in context (user-facing apps with a launch patient).
    Patient,
    /// Whatever the logged-in user may access.
    User,
    /// A backend service acting for itself.
    System,
}

impl Context {
    fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::User => "user",
            Self::System => "system",
        }
    }
}

/// A FHIR REST interaction, as scopes name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// `c`: create.
    Create,
    /// `r`: read, vread, instance history.
    Read,
    /// `u`: update.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search, type history.
    Search,
}

impl Interaction {
    fn bit(self) -> u8 {
        match self {
            Self::Create => 1,
            Self::Read => 2,
            Self::Update => 4,
            Self::Delete => 8,
            Self::Search => 16,
        }
    }
}

const CRUDS: [(char, u8); 5] = [('c', 1), ('r', 2), ('u', 4), ('d', 8), ('s', 16)];

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    /// Context.
    pub context: Context,
    /// Resource type, `None` for `*`.
    pub resource_type: Option<String>,
    /// Interactions granted (bit set over `cruds`).
    pub permissions: u8,
    /// Query constraints: every `(parameter, value)` must match.
    pub constraints: Vec<(String, String)>,
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let perms: String = CRUDS
            .iter()
            .filter(|(_, b)| self.permissions & b != 0)
            .map(|(c, _)| *c)
            .collect();
        write!(
            f,
            "{}/{}.{perms}",
            self.context.as_str(),
            self.resource_type.as_deref().unwrap_or("*")
        )?;
        for (i, (k, v)) in self.constraints.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// Why a scope string is not a valid scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: {why}")]
pub struct ScopeError {
    /// The scope as given (truncated).
    pub scope: String,
    /// What is wrong.
    pub why: &'static str,
}

fn scope_error(scope: &str, why: &'static str) -> ScopeError {
    ScopeError {
        scope: scope.chars().take(100).collect(),
        why,
    }
}

/// One scope: a resource scope or another named scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `{context}/{type}.{perms}[?…]`.
    Resource(ResourceScope),
    /// `openid`, `fhirUser`, `launch`, `offline_access`, …
    Other(String),
}

/// Parses one scope.
///
/// # Errors
/// [`ScopeError`] naming what is wrong (unknown context, permissions out of `cruds` order,
/// a malformed constraint).
pub fn parse_scope(text: &str) -> Result<Scope, ScopeError> {
    if text.is_empty() || text.len() > 512 || !text.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(scope_error(text, "not a scope token"));
    }
    let Some((context, rest)) = text.split_once('/') else {
        return Ok(Scope::Other(text.to_owned()));
    };
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => {
            return Err(scope_error(
                text,
                "the context must be patient, user or system",
            ));
        }
    };
    let (body, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (rtype, perms) = body
        .rsplit_once('.')
        .ok_or_else(|| scope_error(text, "expected Type.permissions"))?;
    let resource_type = match rtype {
        "*" => None,
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic()) => Some(t.to_owned()),
        _ => {
            return Err(scope_error(
                text,
                "the resource type is not a FHIR type name",
            ));
        }
    };
    let permissions = match perms {
        "read" => 2 | 16,
        "write" => 1 | 4 | 8,
        "*" => 31,
        p => {
            // A subset of `cruds`, in that order, each letter once.
            let mut bits = 0u8;
            let mut next = 0;
            for ch in p.chars() {
                let Some(pos) = CRUDS[next..].iter().position(|(c, _)| *c == ch) else {
                    return Err(scope_error(
                        text,
                        "permissions must be letters of cruds, in that order",
                    ));
                };
                bits |= CRUDS[next + pos].1;
                next += pos + 1;
            }
            if bits == 0 {
                return Err(scope_error(text, "no permissions"));
            }
            bits
        }
    };
    let mut constraints = Vec::new();
    if let Some(q) = query {
        if q.is_empty() {
            return Err(scope_error(text, "empty query constraint"));
        }
        for pair in q.split('&') {
            let (k, v) = pair
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| scope_error(text, "constraints are param=value pairs"))?;
            constraints.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok(Scope::Resource(ResourceScope {
        context,
        resource_type,
        permissions,
        constraints,
    }))
}

/// The constraint parameter [`ScopeSet::for_patient`] adds: the resource must be in the
/// compartment of `Patient/<id>` (its value).
pub const COMPARTMENT_CONSTRAINT: &str = "_compartment";

/// What a set of scopes allows for one interaction on one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Nothing grants it.
    Denied,
    /// A scope grants it without constraints.
    Full,
    /// Only for resources matching one of these constraint groups (each group: all pairs).
    Constrained(Vec<Vec<(String, String)>>),
}

/// A set of granted scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    resources: Vec<ResourceScope>,
    others: Vec<String>,
}

impl ScopeSet {
    /// Parses a space-separated scope string.
    ///
    /// # Errors
    /// The first [`ScopeError`].
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let mut set = Self::default();
        for s in text.split(' ').filter(|s| !s.is_empty()) {
            match parse_scope(s)? {
                Scope::Resource(r) => {
                    if !set.resources.contains(&r) {
                        set.resources.push(r);
                    }
                }
                Scope::Other(o) => {
                    if !set.others.contains(&o) {
                        set.others.push(o);
                    }
                }
            }
        }
        Ok(set)
    }

    /// True if no scope is in the set.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.others.is_empty()
    }

    /// The resource scopes.
    pub fn resources(&self) -> &[ResourceScope] {
        &self.resources
    }

    /// The other (non-resource) scopes: `openid`, `offline_access`, …
    pub fn others(&self) -> &[String] {
        &self.others
    }

    /// True if the set holds this non-resource scope.
    pub fn has(&self, name: &str) -> bool {
        self.others.iter().any(|o| o == name)
    }

    /// True if every resource scope has this context.
    pub fn only_context(&self, context: Context) -> bool {
        self.resources.iter().all(|r| r.context == context)
    }

    /// The set as enforced for a person whose patient context is `patient` (their own Patient
    /// resource id): each `patient/…` scope gains the constraint that the resource be in that
    /// patient's compartment ([`COMPARTMENT_CONSTRAINT`]); without a patient context, `patient/…`
    /// scopes grant nothing.
    pub fn for_patient(&self, patient: Option<&str>) -> Self {
        let resources = self
            .resources
            .iter()
            .filter_map(|r| match (r.context, patient) {
                (Context::Patient, None) => None,
                (Context::Patient, Some(p)) => {
                    let mut r = r.clone();
                    r.constraints.insert(
                        0,
                        (COMPARTMENT_CONSTRAINT.to_owned(), format!("Patient/{p}")),
                    );
                    Some(r)
                }
                _ => Some(r.clone()),
            })
            .collect();
        Self {
            resources,
            others: self.others.clone(),
        }
    }

    /// Only the scopes of `context` (and the non-resource ones).
    pub fn only(&self, context: Context) -> Self {
        Self {
            resources: self
                .resources
                .iter()
                .filter(|r| r.context == context)
                .cloned()
                .collect(),
            others: self.others.clone(),
        }
    }

    /// True if any resource scope has this context.
    pub fn has_context(&self, context: Context) -> bool {
        self.resources.iter().any(|r| r.context == context)
    }

    /// What the set allows for `interaction` on `resource_type`.
    pub fn access(&self, resource_type: &str, interaction: Interaction) -> Access {
        let mut groups = Vec::new();
        for r in &self.resources {
            let type_ok = r
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type);
            if type_ok && r.permissions & interaction.bit() != 0 {
                if r.constraints.is_empty() {
                    return Access::Full;
                }
                groups.push(r.constraints.clone());
            }
        }
        if groups.is_empty() {
            Access::Denied
        } else {
            Access::Constrained(groups)
        }
    }

    /// The part of `self` (requested) that `allowed` covers: each requested resource scope is
    /// kept with the permissions some allowed scope of the same context and type (or `*`) grants
    /// with no constraints or the same ones. Other scopes are kept when allowed lists them.
    pub fn granted_by(&self, allowed: &Self) -> Self {
        let mut out = Self::default();
        for want in &self.resources {
            let mut perms = 0u8;
            for a in &allowed.resources {
                let type_ok = a.resource_type.is_none() || a.resource_type == want.resource_type;
                let constraints_ok = a.constraints.is_empty() || a.constraints == want.constraints;
                if a.context == want.context && type_ok && constraints_ok {
                    perms |= a.permissions & want.permissions;
                }
            }
            if perms != 0 {
                out.resources.push(ResourceScope {
                    permissions: perms,
                    ..want.clone()
                });
            }
        }
        out.others = self
            .others
            .iter()
            .filter(|o| allowed.others.contains(o))
            .cloned()
            .collect();
        out
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for r in &self.resources {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{r}")?;
            first = false;
        }
        for o in &self.others {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(o)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    #[test]
    fn v2_and_v1_syntax() {
        let s = set("system/Observation.rs system/Patient.read user/*.cruds openid fhirUser");
        assert_eq!(
            s.to_string(),
            "system/Observation.rs system/Patient.rs user/*.cruds openid fhirUser"
        );
        assert_eq!(set("patient/*.write").to_string(), "patient/*.cud");
        assert_eq!(set("patient/*.*").to_string(), "patient/*.cruds");
        for bad in [
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.x",
            "system/Observation.",
            "nurse/Observation.r",
            "system/Obs3rvation.r",
            "system/Observation.r?",
            "system/Observation.r?category",
            "system/Observation.r?=x",
        ] {
            assert!(parse_scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn access_follows_type_interaction_and_constraints() {
        let s = set(
            "system/Observation.rs?category=laboratory system/Patient.r system/Condition.cruds",
        );
        assert_eq!(s.access("Patient", Interaction::Read), Access::Full);
        assert_eq!(s.access("Patient", Interaction::Search), Access::Denied);
        assert_eq!(s.access("Encounter", Interaction::Read), Access::Denied);
        assert_eq!(s.access("Condition", Interaction::Delete), Access::Full);
        assert_eq!(
            s.access("Observation", Interaction::Search),
            Access::Constrained(vec![vec![("category".into(), "laboratory".into())]])
        );
        assert_eq!(s.access("Observation", Interaction::Create), Access::Denied);
        // A wildcard type.
        assert_eq!(
            set("user/*.rs").access("Encounter", Interaction::Read),
            Access::Full
        );
        // An unconstrained scope wins over a constrained one for the same type.
        let both = set("system/Observation.rs?category=vital-signs system/Observation.r");
        assert_eq!(both.access("Observation", Interaction::Read), Access::Full);
    }

    #[test]
    fn patient_scopes_are_bound_to_the_patient_in_context() {
        let s = set("patient/Observation.rs?category=laboratory user/Patient.r");
        assert_eq!(
            s.for_patient(Some("p1"))
                .access("Observation", Interaction::Read),
            Access::Constrained(vec![vec![
                (COMPARTMENT_CONSTRAINT.into(), "Patient/p1".into()),
                ("category".into(), "laboratory".into())
            ]])
        );
        let none = s.for_patient(None);
        assert_eq!(
            none.access("Observation", Interaction::Read),
            Access::Denied
        );
        assert_eq!(none.access("Patient", Interaction::Read), Access::Full);
        assert!(s.has_context(Context::Patient) && !none.has_context(Context::Patient));
    }

    #[test]
    fn requests_are_cut_to_what_is_allowed() {
        let allowed = set("system/Observation.rs system/Patient.r");
        let wanted = set("system/Observation.cruds system/Patient.rs system/Encounter.r openid");
        assert_eq!(
            wanted.granted_by(&allowed).to_string(),
            "system/Observation.rs system/Patient.r"
        );
        let constrained = set("system/Observation.rs?category=laboratory");
        assert_eq!(
            constrained.granted_by(&allowed).to_string(),
            "system/Observation.rs?category=laboratory"
        );
        let allowed_constrained = set("system/Observation.rs?category=laboratory");
        assert!(
            set("system/Observation.rs")
                .granted_by(&allowed_constrained)
                .is_empty()
        );
        assert!(set("user/Observation.rs").granted_by(&allowed).is_empty());
        assert!(set("system/*.rs").granted_by(&allowed).is_empty());
        assert_eq!(
            set("system/Patient.r")
                .granted_by(&set("system/*.cruds"))
                .to_string(),
            "system/Patient.r"
        );
    }
}
