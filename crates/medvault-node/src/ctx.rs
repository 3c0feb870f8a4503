//! The access context of a FHIR interaction: whose rules it runs under ([`Ctx`], made by
//! [`Services`]), the request's SMART scopes and deadline. The access policy itself is behind
//! [`AccessPolicy`] (implemented by [`crate::authz::Guard`], which looks its facts up by
//! searching under a [`Ctx`]), so this module, the search and record reading below the
//! interactions need nothing of the policy's own.

use std::sync::Arc;

use medvault_auth::scopes::{Access, COMPARTMENT_CONSTRAINT, Interaction, ScopeSet};
use medvault_core::{ResourceId, ResourceType, Role};
use medvault_fhir::Fhir;
use medvault_policy::Action;
use medvault_store::StoreRead;
use serde_json::Value;

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::node::KeyRing;

/// Seals [`AccessPolicy`]: only this crate can implement it.
pub(crate) mod sealed {
    /// Implemented by the crate's access policies only.
    #[allow(unreachable_pub)] // the sealed-trait pattern: public in name, unreachable outside
    pub trait Sealed {}
}

/// The access policy a request runs under: it decides every resource the request would read,
/// return or write, and keeps what it refused and why for the request's access-log record.
/// Implemented by [`crate::authz::Guard`] alone (the trait is sealed: a request's rules are
/// always the Cedar policy's); a [`Ctx`] holds one as `Arc<dyn AccessPolicy>`.
pub trait AccessPolicy: sealed::Sealed + Send + Sync {
    /// Decides `action` on a resource of type `rt` sealed under `key_name` (its compartment,
    /// `Patient/<id>` or the tenant's), with its content when there is one. `Ok(Err(policies))`
    /// when refused.
    ///
    /// # Errors
    /// Store and key errors while the policy's facts are looked up.
    fn decide(
        &self,
        store: &dyn StoreRead,
        ctx: &Ctx,
        action: Action,
        rt: &ResourceType,
        key_name: &str,
        resource: Option<&Value>,
    ) -> Result<Result<(), Vec<String>>, Error>;

    /// Records a refusal decided outside the policy (scopes, a Bundle entry's error), for the
    /// access log.
    fn refused_by(&self, rule: &str);

    /// Counts a resource left out of a result.
    fn withheld(&self);

    /// Notes that the request wrote a resource of type `rt` (facts the policy rests on may
    /// have changed once the write commits).
    fn wrote(&self, rt: &ResourceType);

    /// The ids of the rules that refused something so far.
    fn denied_by(&self) -> Vec<String>;

    /// The role of whom the policy decides for.
    fn role(&self) -> Role;

    /// Who the policy decides for, and why, as one text (credential, role, purpose): what a
    /// pinned search result set is bound to.
    fn principal(&self) -> String;

    /// Call when the request is over (after its write committed).
    fn finish(&self);
}

/// What every interaction needs.
#[derive(Clone)]
pub struct Ctx {
    /// FHIR definitions.
    pub fhir: Arc<Fhir>,
    /// Keys.
    pub keys: Arc<KeyRing>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The ledger (record leaves are written with every version).
    pub ledger: Arc<crate::ledger::Ledger>,
    /// The request's SMART scopes, when an OAuth2 client makes it (`None`: people and API
    /// tokens, whom their role governs).
    pub scopes: Option<Arc<ScopeSet>>,
    /// Under whose rules the interaction runs (private: a request's context is made by
    /// [`Services::for_request`], unrestricted ones only by the loudly named constructors).
    access: Rules,
    /// When the request's time is up (`serve --request-timeout-seconds`): a write whose
    /// transaction reaches its commit after this writes nothing (the client was already told
    /// 503), and long searches stop.
    pub deadline: Option<std::time::Instant>,
}

/// Under whose rules an interaction runs. There is no "no policy" by omission: a request runs
/// under its access policy, and the only other form is the node's own work, asked for by name.
#[derive(Clone)]
enum Rules {
    /// A request: the access policy for its user decides every resource.
    Policy(Arc<dyn AccessPolicy>),
    /// The node's own work (the policy's fact lookups, imports, administrative commands).
    NodeWork,
}

/// What the FHIR interactions are built from, without an access decision: a request turns it
/// into a [`Ctx`] under its policy ([`Self::for_request`]); the node's own jobs ask for an
/// unrestricted one by name ([`Self::unrestricted_node_work`]).
#[derive(Clone)]
pub struct Services {
    fhir: Arc<Fhir>,
    keys: Arc<KeyRing>,
    clock: Arc<dyn Clock>,
    ledger: Arc<crate::ledger::Ledger>,
}

impl Services {
    /// The services of `node`.
    pub fn of(node: &crate::Node) -> Self {
        Self {
            fhir: Arc::clone(&node.fhir),
            keys: Arc::clone(&node.keys),
            clock: Arc::clone(&node.clock),
            ledger: Arc::clone(&node.ledger),
        }
    }

    /// FHIR definitions.
    pub fn fhir(&self) -> &Fhir {
        &self.fhir
    }

    /// A request's context: `guard` (its access policy) decides every resource, `scopes` (an
    /// OAuth2 client's) narrow it further, and work stops at `deadline`.
    pub fn for_request(
        &self,
        guard: Arc<dyn AccessPolicy>,
        scopes: Option<Arc<ScopeSet>>,
        deadline: Option<std::time::Instant>,
    ) -> Ctx {
        Ctx {
            fhir: Arc::clone(&self.fhir),
            keys: Arc::clone(&self.keys),
            clock: Arc::clone(&self.clock),
            ledger: Arc::clone(&self.ledger),
            scopes,
            access: Rules::Policy(guard),
            deadline,
        }
    }

    /// **Unrestricted**: a context that no access policy limits, for the node's own jobs
    /// (imports and exports on the node's authority, administrative commands). Never for a
    /// request.
    pub fn unrestricted_node_work(&self) -> Ctx {
        Ctx {
            fhir: Arc::clone(&self.fhir),
            keys: Arc::clone(&self.keys),
            clock: Arc::clone(&self.clock),
            ledger: Arc::clone(&self.ledger),
            scopes: None,
            access: Rules::NodeWork,
            deadline: None,
        }
    }
}

/// The answer to a request whose time ran out.
pub fn timed_out() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        IssueCode::Transient,
        "the request took too long and was stopped: a write still waiting for its commit was not made, but one already committing (or an earlier entry of a batch) may have been; read before retrying",
    )
}

/// The policy's name for a FHIR interaction.
pub(crate) fn policy_action(i: Interaction) -> Action {
    match i {
        Interaction::Read => Action::Read,
        Interaction::Search => Action::Search,
        Interaction::Create => Action::Create,
        Interaction::Update => Action::Update,
        Interaction::Delete => Action::Delete,
    }
}

pub(crate) fn out_of_scope(what: &str) -> Error {
    Error::new(
        ErrorKind::Forbidden,
        IssueCode::Forbidden,
        format!("the granted scopes do not allow {what}"),
    )
    .denied_by("smart-scopes")
}

impl Ctx {
    /// **Unrestricted**: the node's own context, no access policy and no scopes (imports and
    /// exports on the node's authority, administrative commands). Never for a request.
    pub fn unrestricted_node_work(node: &crate::Node) -> Self {
        Services::of(node).unrestricted_node_work()
    }

    /// **Unrestricted**: this context without its policy and scopes, for lookups the node
    /// makes on a request's behalf that the request's own rules must not narrow (the policy's
    /// facts, patient references to resolve). The request's deadline still applies.
    pub(crate) fn as_node_work(&self) -> Self {
        Self {
            scopes: None,
            access: Rules::NodeWork,
            ..self.clone()
        }
    }

    /// This context under `guard` (a test or bench that builds a request's context itself).
    pub fn with_policy(&self, guard: Arc<dyn AccessPolicy>) -> Self {
        Self {
            access: Rules::Policy(guard),
            ..self.clone()
        }
    }

    /// The request's access policy; `None` for the node's own work.
    pub fn guard(&self) -> Option<&Arc<dyn AccessPolicy>> {
        match &self.access {
            Rules::Policy(g) => Some(g),
            Rules::NodeWork => None,
        }
    }

    /// Asks the access policy about `action` on one stored resource (`key_name`: the key it is
    /// sealed under, which names its patient). `Ok(Err(policies))` when refused.
    ///
    /// # Errors
    /// Store and key errors while the policy's facts are looked up.
    pub fn permits(
        &self,
        store: &dyn StoreRead,
        action: Action,
        rt: &ResourceType,
        key_name: &str,
        resource: Option<&Value>,
    ) -> Result<Result<(), Vec<String>>, Error> {
        match &self.access {
            Rules::NodeWork => Ok(Ok(())),
            Rules::Policy(g) => g.decide(store, self, action, rt, key_name, resource),
        }
    }

    /// True if the request's scopes (when query-constrained) and the access policy both let
    /// it read this stored resource; counts it as withheld otherwise.
    ///
    /// # Errors
    /// As [`Self::permits`].
    pub fn may_see(
        &self,
        store: &dyn StoreRead,
        interaction: Interaction,
        rt: &ResourceType,
        key_name: &str,
        resource: Option<&Value>,
    ) -> Result<bool, Error> {
        let in_scope = match (resource, &self.scopes) {
            (Some(r), Some(_)) => self.scope_allows(rt, interaction, r).is_ok(),
            _ => true,
        };
        let visible = in_scope
            && self
                .permits(store, policy_action(interaction), rt, key_name, resource)?
                .is_ok();
        if !visible && let Some(g) = self.guard() {
            if !in_scope {
                g.refused_by("smart-scopes");
            }
            g.withheld();
        }
        Ok(visible)
    }

    /// What the request's scopes allow for `interaction` on `rt` (everything when the request
    /// has no scopes).
    ///
    /// # Errors
    /// 403 when nothing allows it.
    pub fn scope_access(
        &self,
        rt: &ResourceType,
        interaction: Interaction,
    ) -> Result<Access, Error> {
        let Some(scopes) = &self.scopes else {
            return Ok(Access::Full);
        };
        match scopes.access(rt.as_str(), interaction) {
            Access::Denied => Err(out_of_scope(
                &format!("{interaction:?} on {rt}").to_lowercase(),
            )),
            a => Ok(a),
        }
    }

    /// Checks the request's scopes allow `interaction` on this particular `resource` (query
    /// constraints are evaluated against the resource with the search parameters' own
    /// definitions).
    ///
    /// # Errors
    /// 403 when they do not.
    pub fn scope_allows(
        &self,
        rt: &ResourceType,
        interaction: Interaction,
        resource: &Value,
    ) -> Result<(), Error> {
        match self.scope_access(rt, interaction)? {
            Access::Full => Ok(()),
            Access::Denied => Err(out_of_scope(rt.as_str())),
            Access::Constrained(groups) => {
                if groups
                    .iter()
                    .any(|g| satisfies(&self.fhir, rt, resource, g))
                {
                    Ok(())
                } else {
                    Err(out_of_scope(&format!(
                        "this {rt}: it is outside the scopes' query constraints"
                    )))
                }
            }
        }
    }
}

/// True if `resource` matches every `(parameter, value)` of a scope's query constraint (the
/// `_compartment` constraint of a patient context: the resource is in that patient's
/// compartment, as the sealing key is chosen). An unknown parameter or a value that does not
/// parse matches nothing (fail closed).
pub fn satisfies(
    fhir: &Fhir,
    rt: &ResourceType,
    resource: &Value,
    group: &[(String, String)],
) -> bool {
    let rt = rt.as_str();
    let Some(info) = fhir.type_info(rt) else {
        return false;
    };
    group.iter().all(|(name, value)| {
        if name == COMPARTMENT_CONSTRAINT {
            let id = resource
                .get("id")
                .and_then(Value::as_str)
                .and_then(|i| ResourceId::new(i).ok());
            return id
                .is_some_and(|id| fhir.compartment_of(rt, &id, resource).key_name() == *value);
        }
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (name.as_str(), None),
        };
        info.params.get(code).is_some_and(|p| {
            p.parse_clause(modifier, value)
                .is_ok_and(|clause| p.matches(&clause, resource))
        })
    })
}
