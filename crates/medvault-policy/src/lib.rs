//! Access decisions with Cedar: a schema for users, resources and the request context
//! (`policy/schema.cedarschema`) and a default policy set (`policy/default.cedar`) over role,
//! care relationship, the patient's consent, security labels, purpose of use and break-glass.
//!
//! The engine is pure: the caller works out the facts (is the user on the patient's care team,
//! what does the patient's consent say, which labels does the resource carry) and asks
//! [`PolicyEngine::decide`]. Every decision names the policies that decided it (their `@id`), so
//! the access log can record why; a request no policy permits is denied by `default-deny`.

pub mod consent;
pub mod purpose;

use std::collections::{HashMap, HashSet};
use std::str::FromStr as _;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};

/// The schema shipped with medvault.
pub const SCHEMA: &str = include_str!("../policy/schema.cedarschema");
/// The default policy set shipped with medvault.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.cedar");
/// The id reported when no policy permits a request.
pub const DEFAULT_DENY: &str = "default-deny";

/// Why a policy set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The schema does not parse.
    #[error("policy schema: {0}")]
    Schema(String),
    /// The policies do not parse.
    #[error("policy file: {0}")]
    Parse(String),
    /// The policies do not validate against the schema.
    #[error("policy file does not validate against the schema: {0}")]
    Invalid(String),
    /// A policy has no `@id` annotation.
    #[error("every policy needs an @id(\"…\") annotation; {0} has none")]
    MissingId(String),
    /// Two policies share an `@id`.
    #[error("the policy id {0:?} is used twice (again in {1}); every @id must be unique")]
    DuplicateId(String, String),
}

/// A FHIR interaction, as the policies name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// read, vread, instance history.
    Read,
    /// search, type history.
    Search,
    /// create.
    Create,
    /// update.
    Update,
    /// delete.
    Delete,
}

impl Action {
    /// Every action.
    pub const ALL: [Self; 5] = [
        Self::Read,
        Self::Search,
        Self::Create,
        Self::Update,
        Self::Delete,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Search => "search",
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// What the patient's consents say about this access (worked out by the caller: denies win, the
/// latest consent wins where two conflict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsentState {
    /// An active consent permits it.
    Permit,
    /// An active consent denies it.
    Deny,
    /// No consent speaks to it.
    None,
}

impl ConsentState {
    fn name(self) -> &'static str {
        match self {
            Self::Permit => "permit",
            Self::Deny => "deny",
            Self::None => "none",
        }
    }
}

/// The facts of one access request.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The user's id.
    pub user: &'a str,
    /// The user's role name.
    pub role: &'a str,
    /// The interaction.
    pub action: Action,
    /// The resource's type.
    pub resource_type: &'a str,
    /// The resource's `meta.security` codes.
    pub labels: &'a [String],
    /// The resource is in a patient's compartment.
    pub patient_data: bool,
    /// Declared purpose of use (HL7 code), if any.
    pub purpose: Option<&'a str>,
    /// The user has a care relationship with the patient.
    pub relationship: bool,
    /// The resource is in the user's own compartment.
    pub own: bool,
    /// The patient's consent.
    pub consent: ConsentState,
    /// The user holds an open break-glass grant for the patient.
    pub break_glass: bool,
    /// A restriction of processing (GDPR Art. 18) is in force for the patient.
    pub restricted: bool,
}

/// A decision and the policies that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True if allowed.
    pub allowed: bool,
    /// `@id`s of the deciding policies (for a deny: the forbid policies that matched, or
    /// [`DEFAULT_DENY`]), sorted.
    pub policies: Vec<String>,
}

/// Splits `set` by the actions each policy's scope admits.
fn by_action(set: &PolicySet) -> Result<HashMap<Action, PolicySet>, PolicyError> {
    let mut out: HashMap<Action, PolicySet> =
        Action::ALL.iter().map(|a| (*a, PolicySet::new())).collect();
    for p in set.policies() {
        let admits = |a: Action| match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(uid) => uid.id().unescaped() == a.name(),
            ActionConstraint::In(uids) => uids.iter().any(|u| u.id().unescaped() == a.name()),
        };
        for a in Action::ALL {
            if admits(a)
                && let Some(s) = out.get_mut(&a)
            {
                s.add(p.clone())
                    .map_err(|e| PolicyError::Parse(e.to_string()))?;
            }
        }
    }
    Ok(out)
}

/// The entity type names, parsed once.
#[derive(Debug, Clone)]
struct Types {
    user: EntityTypeName,
    resource: EntityTypeName,
    action: EntityTypeName,
}

impl Types {
    fn new() -> Result<Self, PolicyError> {
        let name =
            |n: &str| EntityTypeName::from_str(n).map_err(|e| PolicyError::Schema(e.to_string()));
        Ok(Self {
            user: name("Medvault::User")?,
            resource: name("Medvault::Resource")?,
            action: name("Medvault::Action")?,
        })
    }
}

/// A validated schema and policy set.
#[derive(Debug)]
pub struct PolicyEngine {
    schema: Option<Schema>,
    types: Option<Types>,
    /// Validate each request against the schema too (tests).
    validate_requests: bool,
    policies: PolicySet,
    /// The policies whose scope can match each action (the schema has no action groups, so
    /// a policy's action constraint names exactly the actions it applies to): a decision
    /// evaluates only those.
    by_action: HashMap<Action, PolicySet>,
    ids: HashMap<String, String>,
    authorizer: Authorizer,
}

impl PolicyEngine {
    /// The engine with medvault's default policy.
    ///
    /// # Errors
    /// Only if the shipped files are broken (a test guards against that).
    pub fn default_policy() -> Result<Self, PolicyError> {
        Self::new(DEFAULT_POLICY)
    }

    /// An engine without policies: it denies everything.
    pub fn deny_all() -> Self {
        match Self::from_sources(&[]) {
            Ok(e) => e,
            // Only reachable if the shipped schema were broken, which a test rules out; an
            // engine without policies or types denies every request (fail closed).
            Err(_) => Self {
                schema: None,
                types: None,
                validate_requests: false,
                by_action: HashMap::new(),
                policies: PolicySet::new(),
                ids: HashMap::new(),
                authorizer: Authorizer::new(),
            },
        }
    }

    /// An engine with the policies of several files (`(name, Cedar text)`), each parsed on its
    /// own, validated together strictly against the schema. Errors name the file.
    ///
    /// # Errors
    /// [`PolicyError`] naming the file and the first problem; also when two policies share an
    /// `@id`.
    pub fn from_sources(sources: &[(&str, &str)]) -> Result<Self, PolicyError> {
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let mut set = PolicySet::new();
        let mut ids: HashMap<String, String> = HashMap::new();
        for (name, text) in sources {
            let parsed = PolicySet::from_str(text)
                .map_err(|e| PolicyError::Parse(format!("{name}: {e}")))?;
            for (n, p) in parsed.policies().enumerate() {
                let id = p
                    .annotation("id")
                    .ok_or_else(|| PolicyError::MissingId(format!("policy {n} of {name}")))?
                    .to_owned();
                if ids.values().any(|v| *v == id) {
                    return Err(PolicyError::DuplicateId(id, (*name).to_owned()));
                }
                let internal = PolicyId::new(format!("{name}#{n}"));
                set.add(p.new_id(internal.clone()))
                    .map_err(|e| PolicyError::Parse(format!("{name}: {e}")))?;
                ids.insert(internal.to_string(), id);
            }
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            return Err(PolicyError::Invalid(e.to_string()));
        }
        let by_action = by_action(&set)?;
        Ok(Self {
            schema: Some(schema),
            types: Some(Types::new()?),
            validate_requests: false,
            by_action,
            policies: set,
            ids,
            authorizer: Authorizer::new(),
        })
    }

    /// An engine with `policies` (Cedar text), validated strictly against the schema.
    ///
    /// # Errors
    /// [`PolicyError`] naming the first problem.
    pub fn new(policies: &str) -> Result<Self, PolicyError> {
        Self::from_sources(&[("policy", policies)])
    }

    /// The same engine, validating every request against the schema as well (slower; tests use
    /// it to show the requests built for decisions conform).
    #[must_use]
    pub fn validating(mut self) -> Self {
        self.validate_requests = true;
        self
    }

    /// How many policies the engine holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True if the engine holds no policy (it then denies everything).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Decides one request. Anything that goes wrong building the request denies it (fail
    /// closed), naming the failure.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        match self.try_decide(q) {
            Ok(d) => d,
            Err(why) => Decision {
                allowed: false,
                policies: vec![format!("error: {why}")],
            },
        }
    }

    fn try_decide(&self, q: &Query<'_>) -> Result<Decision, String> {
        let types = self
            .types
            .as_ref()
            .ok_or("the policy schema did not load")?;
        // Ids are taken as they are (never parsed as Cedar text, so nothing in them can inject).
        let principal = EntityUid::from_type_name_and_id(types.user.clone(), EntityId::new(q.user));
        let resource = EntityUid::from_type_name_and_id(
            types.resource.clone(),
            EntityId::new(q.resource_type),
        );
        let action =
            EntityUid::from_type_name_and_id(types.action.clone(), EntityId::new(q.action.name()));
        let user = Entity::new(
            principal.clone(),
            HashMap::from([(
                "role".to_owned(),
                RestrictedExpression::new_string(q.role.to_owned()),
            )]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let labels = RestrictedExpression::new_set(
            q.labels
                .iter()
                .map(|l| RestrictedExpression::new_string(l.clone())),
        );
        let res = Entity::new(
            resource.clone(),
            HashMap::from([
                (
                    "type".to_owned(),
                    RestrictedExpression::new_string(q.resource_type.to_owned()),
                ),
                ("labels".to_owned(), labels),
                (
                    "patient_data".to_owned(),
                    RestrictedExpression::new_bool(q.patient_data),
                ),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        // The policies were validated against the schema at load and these entities and this
        // request are built to it here, so they are not validated again per decision (a test
        // checks every decision of the default policy against a schema-validated request).
        let entities = Entities::from_entities([user, res], None).map_err(|e| e.to_string())?;
        let context = Context::from_pairs([
            (
                "purpose".to_owned(),
                RestrictedExpression::new_string(q.purpose.unwrap_or("").to_owned()),
            ),
            (
                "relationship".to_owned(),
                RestrictedExpression::new_bool(q.relationship),
            ),
            ("own".to_owned(), RestrictedExpression::new_bool(q.own)),
            (
                "consent".to_owned(),
                RestrictedExpression::new_string(q.consent.name().to_owned()),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(q.break_glass),
            ),
            (
                "restricted".to_owned(),
                RestrictedExpression::new_bool(q.restricted),
            ),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(
            principal,
            action,
            resource,
            context,
            self.validate_requests
                .then_some(self.schema.as_ref())
                .flatten(),
        )
        .map_err(|e| e.to_string())?;
        let response = self.authorizer.is_authorized(
            &request,
            self.by_action.get(&q.action).unwrap_or(&self.policies),
            &entities,
        );
        if let Some(e) = response.diagnostics().errors().next() {
            return Err(e.to_string());
        }
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| {
                self.ids
                    .get(&id.to_string())
                    .cloned()
                    .unwrap_or_else(|| id.to_string())
            })
            .collect();
        policies.sort();
        let allowed = response.decision() == CedarDecision::Allow;
        if !allowed && policies.is_empty() {
            policies.push(DEFAULT_DENY.to_owned());
        }
        Ok(Decision { allowed, policies })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q<'a>(role: &'a str, action: Action, labels: &'a [String]) -> Query<'a> {
        Query {
            user: "usr_1",
            role,
            action,
            resource_type: "Observation",
            labels,
            patient_data: true,
            purpose: Some("TREAT"),
            relationship: true,
            own: false,
            consent: ConsentState::None,
            break_glass: false,
            restricted: false,
        }
    }

    #[test]
    fn the_default_policy_validates_and_decides_with_reasons() {
        let e = PolicyEngine::default_policy().unwrap();
        assert_eq!(e.len(), 12);
        let none: Vec<String> = vec![];
        let hiv = vec!["HIV".to_owned()];
        let d = e.decide(&q("clinician", Action::Read, &none));
        assert_eq!(
            d,
            Decision {
                allowed: true,
                policies: vec!["care-read".into()]
            }
        );
        // No relationship, no access.
        let mut x = q("clinician", Action::Read, &none);
        x.relationship = false;
        assert_eq!(e.decide(&x).policies, vec![DEFAULT_DENY.to_owned()]);
        // Research purpose is not treatment.
        let mut x = q("nurse", Action::Search, &none);
        x.purpose = Some("HRESCH");
        assert!(!e.decide(&x).allowed);
        // Consent deny wins over the care relationship; break-glass overrides it.
        let mut x = q("clinician", Action::Read, &none);
        x.consent = ConsentState::Deny;
        let d = e.decide(&x);
        assert!(
            !d.allowed && d.policies == vec!["consent-deny".to_owned()],
            "{d:?}"
        );
        x.break_glass = true;
        x.purpose = Some("ETREAT");
        assert!(e.decide(&x).allowed);
        // Sensitive data needs explicit consent.
        let d = e.decide(&q("clinician", Action::Read, &hiv));
        assert_eq!(d.policies, vec!["sensitive-needs-consent".to_owned()]);
        let mut x = q("clinician", Action::Read, &hiv);
        x.consent = ConsentState::Permit;
        assert!(e.decide(&x).allowed);
        // Patients read their own compartment, nothing else, and write nothing.
        let mut x = q("patient", Action::Read, &hiv);
        x.relationship = false;
        x.own = true;
        assert!(e.decide(&x).allowed);
        x.action = Action::Update;
        assert!(!e.decide(&x).allowed);
        let mut x = q("patient", Action::Read, &none);
        x.own = false;
        assert!(!e.decide(&x).allowed);
        // A restriction of processing stops everyone but the patient, break-glass reads and
        // admins managing consents.
        for (role, action) in [
            ("clinician", Action::Read),
            ("clinician", Action::Create),
            ("admin", Action::Read),
            ("admin", Action::Update),
            ("service", Action::Search),
        ] {
            let mut x = q(role, action, &none);
            x.restricted = true;
            let d = e.decide(&x);
            assert_eq!(
                d.policies,
                vec!["processing-restricted".to_owned()],
                "{role} {action:?}"
            );
        }
        let mut x = q("patient", Action::Read, &none);
        (x.restricted, x.own, x.relationship) = (true, true, false);
        assert!(e.decide(&x).allowed);
        let mut x = q("clinician", Action::Read, &none);
        (x.restricted, x.break_glass, x.purpose) = (true, true, Some("ETREAT"));
        assert!(e.decide(&x).allowed);
        let mut x = q("admin", Action::Update, &none);
        (x.restricted, x.resource_type) = (true, "Consent");
        assert!(e.decide(&x).allowed);
        // Researchers and auditors get nothing from this policy.
        assert!(!e.decide(&q("researcher", Action::Read, &none)).allowed);
        assert!(!e.decide(&q("auditor", Action::Search, &none)).allowed);
        // Ids are data, never Cedar text: quotes, backslashes and control characters change
        // nothing.
        let mut x = q("clinician", Action::Read, &none);
        for user in ["usr_\"x\\", "usr_\u{0}", "\") || true || (\""] {
            x.user = user;
            assert!(e.decide(&x).allowed);
        }
        x.relationship = false;
        x.user = "\") || true || (\"";
        assert!(!e.decide(&x).allowed);
        // An engine that could not load its schema denies everything, saying why.
        let broken = PolicyEngine {
            types: None,
            ..PolicyEngine::default_policy().unwrap()
        };
        let d = broken.decide(&q("admin", Action::Read, &none));
        assert!(!d.allowed && d.policies[0].starts_with("error"), "{d:?}");
    }

    /// Exhaustively: consent can only narrow what the roles, relationships and purposes allow
    /// (a permit is the most any consent can say, and even it grants nothing by itself).
    #[test]
    fn no_consent_grants_more_than_the_policy_allows() {
        let e = PolicyEngine::default_policy().unwrap();
        // Every request the server builds conforms to the schema: the validating engine agrees
        // with the fast one on every case.
        let strict = PolicyEngine::default_policy().unwrap().validating();
        let roles = [
            "admin",
            "clinician",
            "nurse",
            "researcher",
            "patient",
            "auditor",
            "privacy-officer",
            "service",
        ];
        let actions = [
            Action::Read,
            Action::Search,
            Action::Create,
            Action::Update,
            Action::Delete,
        ];
        let label_sets = [
            vec![],
            vec!["N".to_owned()],
            vec!["HIV".to_owned(), "R".to_owned()],
        ];
        let purposes = [
            None,
            Some("TREAT"),
            Some("ETREAT"),
            Some("HRESCH"),
            Some("HPAYMT"),
        ];
        let mut cases = 0;
        for role in roles {
            for action in actions {
                for labels in &label_sets {
                    for purpose in purposes {
                        for bits in 0..16u8 {
                            let base = Query {
                                user: "usr_p",
                                role,
                                action,
                                resource_type: "Observation",
                                labels,
                                patient_data: bits & 8 == 0,
                                purpose,
                                relationship: bits & 1 != 0,
                                own: bits & 2 != 0,
                                consent: ConsentState::Permit,
                                break_glass: bits & 4 != 0,
                                restricted: false,
                            };
                            // A restriction only ever takes away.
                            let restricted = Query {
                                restricted: true,
                                ..base.clone()
                            };
                            assert!(
                                !e.decide(&restricted).allowed || e.decide(&base).allowed,
                                "{restricted:?} allowed only when restricted"
                            );
                            let with_permit = e.decide(&base).allowed;
                            assert_eq!(e.decide(&base), strict.decide(&base), "{base:?}");
                            for consent in [ConsentState::None, ConsentState::Deny] {
                                let q = Query {
                                    consent,
                                    ..base.clone()
                                };
                                assert!(
                                    !e.decide(&q).allowed || with_permit,
                                    "{q:?} allowed with {consent:?} but not with a permit"
                                );
                                cases += 1;
                            }
                            if with_permit {
                                let reads = matches!(action, Action::Read | Action::Search);
                                let care = matches!(role, "clinician" | "nurse")
                                    && ((base.relationship
                                        && matches!(
                                            purpose,
                                            Some("TREAT" | "ETREAT" | "HOPERAT")
                                        ))
                                        || (base.break_glass
                                            && purpose == Some("ETREAT")
                                            && reads));
                                let own = role == "patient" && base.own && reads;
                                let directory = !base.patient_data
                                    && reads
                                    && matches!(role, "clinician" | "nurse" | "researcher");
                                assert!(
                                    care || own || directory || matches!(role, "admin" | "service"),
                                    "{base:?} allowed"
                                );
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 8 * 5 * 3 * 5 * 16 * 3);
    }

    #[test]
    fn bad_policy_files_are_refused_with_a_clear_message() {
        let no_id = "permit (principal, action, resource);";
        assert!(matches!(
            PolicyEngine::new(no_id),
            Err(PolicyError::MissingId(_))
        ));
        let unknown_attr =
            r#"@id("x") permit (principal, action, resource) when { principal.age > 3 };"#;
        assert!(matches!(
            PolicyEngine::new(unknown_attr),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            PolicyEngine::new("permit ("),
            Err(PolicyError::Parse(_))
        ));
        // Several files: each parsed on its own, errors name the file, ids stay unique.
        let extra = r#"@id("research") permit (principal, action == Medvault::Action::"search", resource)
            when { principal.role == "researcher" && context.purpose == "HRESCH" };"#;
        let both =
            PolicyEngine::from_sources(&[("default", DEFAULT_POLICY), ("site.cedar", extra)])
                .unwrap();
        assert_eq!(both.len(), 13);
        let none: Vec<String> = vec![];
        let mut r = q("researcher", Action::Search, &none);
        r.purpose = Some("HRESCH");
        assert_eq!(both.decide(&r).policies, vec!["research".to_owned()]);
        let err =
            PolicyEngine::from_sources(&[("default", DEFAULT_POLICY), ("bad.cedar", "permit (")])
                .unwrap_err();
        assert!(err.to_string().contains("bad.cedar"), "{err}");
        let dup = r#"@id("admin") permit (principal, action, resource);"#;
        assert!(matches!(
            PolicyEngine::from_sources(&[("default", DEFAULT_POLICY), ("dup.cedar", dup)]),
            Err(PolicyError::DuplicateId(id, file)) if id == "admin" && file == "dup.cedar"
        ));
        let bad_attr = r#"@id("y") permit (principal, action, resource) when { context.nope };"#;
        let err = PolicyEngine::from_sources(&[("x.cedar", bad_attr)]).unwrap_err();
        assert!(matches!(err, PolicyError::Invalid(_)), "{err}");
        assert!(PolicyEngine::deny_all().is_empty());
        let empty = PolicyEngine::new("").unwrap();
        assert!(empty.is_empty());
        assert!(!empty.decide(&q("admin", Action::Read, &none)).allowed);
    }
}
