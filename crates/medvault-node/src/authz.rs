//! The access policy at work: every resource a FHIR interaction would read, return or write is
//! decided by the Cedar policy ([`medvault_policy`]) from the facts worked out here — the user's
//! role, their care relationship with the resource's patient (a member of the patient's active
//! `CareTeam`, or a participant of an active `Encounter`), the patient's `Consent`s, the
//! resource's security labels, the declared purpose of use and an open break-glass grant.
//!
//! One [`Guard`] serves one request. It looks each patient's facts up once (a search of the
//! patient's CareTeams and Encounters naming the user, and of their Consents) and remembers each
//! decision by (interaction, type, patient, labels), so a 100-result search costs a handful of
//! decisions, not a hundred. It also keeps what it refused and why, for the request's access
//! log record.
//!
//! What a refusal looks like to the client is chosen so that it tells nothing: a resource the
//! policy hides answers exactly as a missing one does (404 with the same text), searches,
//! `_include`, history and their totals leave it out as if it did not exist. See
//! ARCHITECTURE.md, "Access decisions".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medvault_core::{ResourceType, Role};
use medvault_policy::consent::{self, ConsentRequest};
use medvault_policy::{Action, ConsentState, PolicyEngine, Query};
use medvault_store::StoreRead;
use serde_json::Value;

use crate::ctx::{AccessPolicy, Ctx};
use crate::error::Error;
use crate::search;

/// The HL7 purpose of use that break-glass requires.
pub const EMERGENCY: &str = medvault_policy::purpose::EMERGENCY;

/// The person or service a request acts for, as the policy sees them.
#[derive(Debug, Clone)]
pub struct Subject {
    /// User id (`usr_…`), API token id or client id.
    pub user: String,
    /// Role.
    pub role: Role,
    /// A patient's own Patient id.
    pub patient: Option<String>,
    /// Staff: `Practitioner/<id>`.
    pub practitioner: Option<String>,
    /// Declared purpose of use (HL7 v3 code).
    pub purpose: Option<String>,
}

/// What one patient's records say about a practitioner: shared across requests.
#[derive(Debug, Clone, Default)]
struct SharedFacts {
    relationship: bool,
    consents: Arc<Vec<Value>>,
}

/// What one patient's records say about the subject, for one request.
#[derive(Debug, Clone, Default)]
struct PatientFacts {
    shared: SharedFacts,
    break_glass: bool,
    /// A restriction of processing (GDPR Art. 18) is in force.
    restricted: bool,
}

/// Everything a decision depends on besides the subject: (action, type, labels, patient data,
/// relationship, own, consent, break-glass, restricted).
type DecisionKey = (
    Action,
    ResourceType,
    Vec<String>,
    bool,
    bool,
    bool,
    ConsentState,
    bool,
    bool,
);

const CARE_TEAM: ResourceType = ResourceType::from_static("CareTeam");
const ENCOUNTER: ResourceType = ResourceType::from_static("Encounter");
const CONSENT: ResourceType = ResourceType::from_static("Consent");
const PRACTITIONER_ROLE: ResourceType = ResourceType::from_static("PractitionerRole");

/// Resource types whose writes change the facts decisions rest on.
pub const FACT_TYPES: [ResourceType; 4] = [CARE_TEAM, ENCOUNTER, CONSENT, PRACTITIONER_ROLE];

/// The resource types the node finds through the search index for decisions of its own: the
/// policy's facts ([`FACT_TYPES`]), a patient's sharing consents, the subscriptions to notify,
/// patients named by identifier. A bulk load never stages their index rows
/// ([`crate::import::Plan::staging_index`]): a decision must not miss one — a Consent that
/// denies, missed, would let a read through.
pub const DECIDING_TYPES: &[&str] = &[
    "CareTeam",
    "Consent",
    "Encounter",
    "Patient",
    "PractitionerRole",
    "Subscription",
];

/// How long a patient's facts are trusted without looking them up again, when nothing this
/// process wrote changed them (another process's writes are seen within this time).
pub const FACTS_TTL: Duration = Duration::from_secs(30);
const MAX_CACHED_FACTS: usize = 100_000;

/// (practitioner reference or "", patient id).
type FactsKey = (String, String);

/// Care relationships and consents, shared across requests: looked up once per (practitioner,
/// patient) and reused until [`FACTS_TTL`] passes or this process writes a CareTeam, Encounter
/// or Consent (which moves the generation on, so nothing computed before the write is used
/// after it).
#[derive(Debug, Default)]
pub struct FactsCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<FactsKey, (Instant, u64, SharedFacts)>>,
    /// Decisions by everything they depend on: (user, role, purpose, the decision's facts). The
    /// engine is fixed for the process's life and a decision is a pure function of these, so
    /// they never go stale.
    decisions: Mutex<HashMap<SharedDecisionKey, Decided>>,
    /// The references a consent's actor may name for a practitioner (see [`Guard::actors`]).
    actors: Mutex<HashMap<String, CachedActors>>,
    /// The patients under a restriction of processing.
    restricted: Mutex<Option<CachedRestrictions>>,
}

/// (read at, generation, patient ids).
type CachedRestrictions = (Instant, u64, Arc<HashSet<String>>);

/// How long the set of restricted patients is trusted without reading it again: a restriction
/// placed or lifted by another process (the CLI, another server on the same database) counts
/// within this time; one placed through this process's API counts at once.
pub const RESTRICTIONS_TTL: Duration = Duration::from_secs(1);

/// (looked up at, generation, the actor references).
type CachedActors = (Instant, u64, Arc<Actors>);

/// The references a consent may name a practitioner by.
#[derive(Debug, Default)]
struct Actors {
    /// As a deny names them: every care team they are a member of, whatever its status.
    deny: Vec<String>,
    /// As a permit names them: only the care teams active now.
    permit: Vec<String>,
}
/// (user, role, purpose, facts).
type SharedDecisionKey = (String, &'static str, Option<String>, DecisionKey);
/// (allowed, deciding policies, opened only by break-glass).
type Decided = (bool, Vec<String>, bool);

impl FactsCache {
    /// Forgets everything cached so far (call after committing a write of a [`FACT_TYPES`]
    /// resource).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn get(&self, key: &FactsKey) -> Option<SharedFacts> {
        let now = self.generation();
        let map = self.entries.lock().ok()?;
        map.get(key)
            .filter(|(at, generation, _)| *generation == now && at.elapsed() < FACTS_TTL)
            .map(|(_, _, f)| f.clone())
    }

    fn decision(&self, key: &SharedDecisionKey) -> Option<Decided> {
        self.decisions.lock().ok()?.get(key).cloned()
    }

    fn put_decision(&self, key: SharedDecisionKey, d: Decided) {
        if let Ok(mut map) = self.decisions.lock() {
            if map.len() >= MAX_CACHED_FACTS {
                map.clear();
            }
            map.insert(key, d);
        }
    }

    fn get_actors(&self, practitioner: &str) -> Option<Arc<Actors>> {
        let now = self.generation();
        let map = self.actors.lock().ok()?;
        map.get(practitioner)
            .filter(|(at, generation, _)| *generation == now && at.elapsed() < FACTS_TTL)
            .map(|(_, _, a)| Arc::clone(a))
    }

    fn put_actors(&self, practitioner: &str, generation: u64, actors: Arc<Actors>) {
        if let Ok(mut map) = self.actors.lock() {
            if map.len() >= MAX_CACHED_FACTS {
                map.clear();
            }
            map.insert(
                practitioner.to_owned(),
                (Instant::now(), generation, actors),
            );
        }
    }

    /// The patients (bare ids) under a restriction of processing now: read from the register
    /// at most once per [`RESTRICTIONS_TTL`] (one query per second, not one per request), and
    /// again after [`Self::invalidate`].
    fn restricted(&self, store: &dyn StoreRead) -> Result<Arc<HashSet<String>>, Error> {
        let generation = self.generation();
        if let Ok(cached) = self.restricted.lock()
            && let Some((at, g, set)) = cached.as_ref()
            && *g == generation
            && at.elapsed() < RESTRICTIONS_TTL
        {
            return Ok(Arc::clone(set));
        }
        let set: HashSet<String> = store
            .register(Some(crate::admin::PROCESSING_RESTRICTION))?
            .into_iter()
            .filter(|r| r.closed_micros.is_none())
            .filter_map(|r| {
                r.subject
                    .and_then(|s| s.strip_prefix("Patient/").map(str::to_owned))
            })
            .collect();
        let set = Arc::new(set);
        if let Ok(mut cached) = self.restricted.lock() {
            *cached = Some((Instant::now(), generation, Arc::clone(&set)));
        }
        Ok(set)
    }

    fn put(&self, key: FactsKey, generation: u64, facts: SharedFacts) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_CACHED_FACTS {
                map.clear();
            }
            map.insert(key, (Instant::now(), generation, facts));
        }
    }
}

#[derive(Debug, Default)]
struct GuardState {
    patients: HashMap<String, Arc<PatientFacts>>,
    actors: Option<Arc<Actors>>,
    decisions: HashMap<DecisionKey, Decided>,
    denied_by: BTreeSet<String>,
    withheld: u64,
    break_glass: BTreeSet<String>,
    seen: BTreeSet<String>,
    refused: BTreeSet<String>,
    related: BTreeSet<String>,
}

/// Most patients one access-log record lists as seen or refused.
pub const MAX_LISTED_PATIENTS: usize = 1000;

/// What a request's guard refused and used, for its access-log record: serialized as its
/// `policy` field, so the field names are part of the record's layout.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PolicyNote {
    /// The purpose of use the decisions assumed.
    pub purpose: Option<String>,
    /// `@id`s of the policies that refused something.
    pub denied_by: Vec<String>,
    /// Resources left out of results.
    pub withheld: u64,
    /// Patients whose data was reached under break-glass.
    pub break_glass: Vec<String>,
    /// Patients whose data the request was allowed (their accounting of disclosures finds it).
    pub patients_seen: Vec<String>,
    /// Patients whose data the request was refused (the privacy officer finds the attempt).
    pub patients_refused: Vec<String>,
    /// Patients the user had a care relationship with (an active care team or encounter
    /// naming them) when the policy decided: what Sentinel weighs an access against. Left out
    /// of the record when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<String>,
}

/// The access policy for one request.
#[derive(Debug)]
pub struct Guard {
    engine: Arc<PolicyEngine>,
    subject: Subject,
    cache: Arc<FactsCache>,
    wrote_facts: AtomicBool,
    state: Mutex<GuardState>,
}

/// The `meta.security` codes of a resource (for a stored Bundle, its entries' too: the Bundle
/// is as sensitive as the most sensitive record it carries).
pub fn security_labels(resource: &Value) -> Vec<String> {
    let entries = (resource.get("resourceType").and_then(Value::as_str) == Some("Bundle"))
        .then(|| resource.get("entry").and_then(Value::as_array))
        .flatten()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"));
    let mut labels: Vec<String> = std::iter::once(resource)
        .chain(entries)
        .filter_map(|r| r.pointer("/meta/security").and_then(Value::as_array))
        .flatten()
        // Codes compared as the code systems write them (v3 ActCode and Confidentiality are
        // upper case): `hiv` is `HIV`, never a way around the rule that names `HIV`.
        .filter_map(|c| {
            c.get("code")
                .and_then(Value::as_str)
                .map(str::to_ascii_uppercase)
        })
        .collect();
    labels.sort();
    labels.dedup();
    labels
}

/// The security labels the default policy restricts (`sensitive-needs-consent` in
/// `default.cedar`): removing one from a record widens who may read it, so only an admin or a
/// privacy officer may.
pub const RESTRICTIVE_LABELS: [&str; 9] = [
    "HIV", "PSY", "PSYTHPN", "ETH", "SUD", "GDIS", "SDV", "R", "V",
];

/// 403 when `role` writes `new` without a restrictive label `prior` carries.
///
/// # Errors
/// 403 `forbidden`, naming the rule `label-removal`.
pub fn check_label_removal(role: Role, prior: &Value, new: &Value) -> Result<(), Error> {
    if matches!(role, Role::Admin | Role::PrivacyOfficer) {
        return Ok(());
    }
    let kept = security_labels(new);
    let removed = security_labels(prior)
        .into_iter()
        .any(|l| RESTRICTIVE_LABELS.contains(&l.as_str()) && !kept.contains(&l));
    if removed {
        return Err(Error::new(
            crate::error::ErrorKind::Forbidden,
            crate::error::IssueCode::Forbidden,
            "removing a sensitivity or confidentiality label widens who may read the record: an admin or a privacy officer does it",
        )
        .denied_by("label-removal"));
    }
    Ok(())
}

/// Types whose instance may name several patients and shows each of them to its reader: it is
/// decided in every named patient's compartment (at most [`MAX_NAMED_PATIENTS`]; beyond, as
/// patient data without a patient).
const COLLECTION_TYPES: [&str; 4] = ["Bundle", "Group", "Linkage", "List"];
/// Most other patients a collection is decided for one by one.
const MAX_NAMED_PATIENTS: usize = 64;

/// The record a Binary stands for: its `securityContext` as stored now (type, compartment and
/// the content a decision rests on), decided as well.
///
/// # Errors
/// Store and key errors reading the securityContext.
fn proxy_of(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    resource: &Value,
) -> Result<Option<(ResourceType, String, Option<Value>)>, Error> {
    let Some((t, id)) = ctx.fhir.sealing_proxy(rt.as_str(), resource) else {
        return Ok(None);
    };
    let (Ok(t), Ok(id)) = (ResourceType::new(t), medvault_core::ResourceId::new(id)) else {
        return Ok(None);
    };
    let Some(row) = store.version(&t, &id, None)? else {
        return Ok(None);
    };
    let content = crate::records::decision_content(store, &ctx.as_node_work(), &t, &id, &row)?;
    Ok(Some((t, row.key_name, content)))
}

/// The other compartments a resource is decided in, besides `key_name`'s: a collection's, those
/// of every patient it names; any other type's, those of the patients its Patient
/// CompartmentDefinition parameters name (an Observation whose `performer` is another patient
/// is in that patient's compartment too, and is indexed and exported there). `@tenant` alone
/// beyond [`MAX_NAMED_PATIENTS`].
fn other_compartments(
    ctx: &Ctx,
    rt: &ResourceType,
    key_name: &str,
    resource: &Value,
) -> Vec<String> {
    let mut named = BTreeSet::new();
    if COLLECTION_TYPES.contains(&rt.as_str()) {
        named_patients(resource, &mut named);
    } else if let Some(info) = ctx.fhir.type_info(rt.as_str()) {
        for p in info
            .compartment_params
            .iter()
            .filter_map(|c| info.params.get(c))
        {
            named.extend(p.patient_ids(resource));
        }
        if *rt == ResourceType::PATIENT {
            // A Patient's `link` names other patients; it is in its own compartment only.
            named.clear();
        }
    }
    named.remove(key_name.strip_prefix("Patient/").unwrap_or_default());
    if named.len() > MAX_NAMED_PATIENTS {
        return vec!["@tenant".to_owned()];
    }
    named.into_iter().map(|p| format!("Patient/{p}")).collect()
}

/// The patients `v` names: literal `Patient/<id>` references anywhere in it, and a Bundle's
/// entries' compartments.
fn named_patients(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("reference")
                && let Some(("Patient", id)) = medvault_fhir::relative_reference(r)
            {
                out.insert(id.to_owned());
            }
            if let (Some(Value::String(t)), Some(Value::String(id))) =
                (map.get("resourceType"), map.get("id"))
                && t == "Patient"
            {
                out.insert(id.clone());
            }
            map.values().for_each(|x| named_patients(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| named_patients(x, out)),
        _ => {}
    }
}

/// True if a FHIR `Period` (absent: always) covers `now` (Unix seconds).
fn period_covers(period: Option<&Value>, now: i64) -> bool {
    let Some(p) = period else { return true };
    let start_ok = match p.get("start").and_then(Value::as_str) {
        None => true,
        Some(s) => medvault_fhir::date_range(s).is_some_and(|(s, _)| s <= now),
    };
    let end_ok = match p.get("end").and_then(Value::as_str) {
        None => true,
        Some(e) => medvault_fhir::date_range(e).is_some_and(|(_, e)| now < e),
    };
    start_ok && end_ok
}

/// True if `list` (CareTeam.participant or Encounter.participant) names `who` under `field`
/// (`member` or `individual`) for a period covering `now`.
fn names(list: Option<&Value>, field: &str, who: &str, now: i64) -> bool {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|p| {
            p.get(field)
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str)
                == Some(who)
                && period_covers(p.get("period"), now)
        })
}

/// `CareTeam` statuses in which its members care for the patient.
fn care_team_active(team: &Value, who: &str, now: i64) -> bool {
    team.get("status").and_then(Value::as_str) == Some("active")
        && period_covers(team.get("period"), now)
        && names(team.get("participant"), "member", who, now)
}

/// `Encounter` statuses in which its participants are attending the patient.
fn encounter_active(enc: &Value, who: &str, now: i64) -> bool {
    matches!(
        enc.get("status").and_then(Value::as_str),
        Some("arrived" | "triaged" | "in-progress" | "onleave")
    ) && period_covers(enc.get("period"), now)
        && names(enc.get("participant"), "individual", who, now)
}

/// True if `record` (a CareTeam or an Encounter) makes `who` (`Practitioner/<id>`) care for its
/// patient at `now` (Unix seconds).
pub fn relationship_in(record: &Value, who: &str, now: i64) -> bool {
    match record.get("resourceType").and_then(Value::as_str) {
        Some("CareTeam") => care_team_active(record, who, now),
        Some("Encounter") => encounter_active(record, who, now),
        _ => false,
    }
}

/// Every resource of type `rt` matching `params` (reference parameters), decrypted; refused as
/// too costly beyond [`search::MAX_CANDIDATES`]: a decision never rests on part of the facts.
fn find_all(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    params: &[(&str, &str)],
) -> Result<Vec<Value>, Error> {
    debug_assert!(
        DECIDING_TYPES.contains(&rt.as_str()),
        "the policy looks {rt} up: it belongs in DECIDING_TYPES"
    );
    let params: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    search::all_matches(store, ctx, rt, &params)
}

impl Guard {
    /// One decision of the policy: `action` on a resource of type `rt` sealed under
    /// `key_name`, with its content (see [`AccessPolicy::decide`], which adds what the resource
    /// stands for).
    fn decide_one(
        &self,
        store: &dyn StoreRead,
        ctx: &Ctx,
        action: Action,
        rt: &ResourceType,
        key_name: &str,
        resource: Option<&Value>,
    ) -> Result<Result<(), Vec<String>>, Error> {
        let patient = key_name.strip_prefix("Patient/");
        let labels = resource.map(security_labels).unwrap_or_default();
        let facts = match patient {
            Some(p) => self.facts(store, ctx, p)?,
            None => Arc::new(PatientFacts::default()),
        };
        let s = &self.subject;
        // (A patient without consents needs no actor lookup: nothing can name the user.)
        let consent = if patient.is_some() && !facts.shared.consents.is_empty() {
            let actors = self.actors(store, ctx)?;
            let at = crate::clock::instant(ctx.clock.now_micros());
            // (Fractions of a second are dropped by the evaluator, as for the consents' times.)
            consent::evaluate(
                &facts.shared.consents,
                &ConsentRequest {
                    actors: &actors.deny,
                    permit_actors: Some(&actors.permit),
                    purpose: s.purpose.as_deref(),
                    resource_type: rt.as_str(),
                    labels: &labels,
                    at: &at,
                },
            )
        } else {
            ConsentState::None
        };
        let own = patient.is_some() && s.patient.as_deref() == patient;
        // A clinical record outside every patient's compartment is still patient data (it is
        // decided with no relationship, consent or ownership): never directory data.
        let patient_data = patient.is_some() || ctx.fhir.is_clinical_type(rt.as_str());
        let key: DecisionKey = (
            action,
            rt.clone(),
            labels,
            patient_data,
            facts.shared.relationship,
            own,
            consent,
            facts.break_glass,
            facts.restricted,
        );
        let known = self.lock().decisions.get(&key).cloned();
        let (allowed, policies, by_break_glass) = match known {
            Some(d) => d,
            None => {
                let shared_key = (s.user.clone(), s.role.as_str(), s.purpose.clone(), key);
                let d = match self.cache.decision(&shared_key) {
                    Some(d) => d,
                    None => {
                        let k = &shared_key.3;
                        let decision = self.engine.decide(&Query {
                            user: &s.user,
                            role: s.role.as_str(),
                            action,
                            resource_type: rt.as_str(),
                            labels: &k.2,
                            patient_data: k.3,
                            purpose: s.purpose.as_deref(),
                            relationship: k.4,
                            own,
                            consent,
                            break_glass: k.7,
                            restricted: k.8,
                        });
                        // Access that only break-glass opened is marked as such in the log.
                        let by_break_glass = decision.allowed
                            && decision.policies.iter().any(|p| p == "break-glass");
                        let d = (decision.allowed, decision.policies, by_break_glass);
                        self.cache.put_decision(shared_key.clone(), d.clone());
                        d
                    }
                };
                self.lock().decisions.insert(shared_key.3, d.clone());
                d
            }
        };
        let related = facts.shared.relationship;
        Ok(self.note(allowed, policies, patient, by_break_glass, related))
    }
    /// A guard deciding for `subject` with `engine`, sharing facts through `cache`.
    pub fn new(engine: Arc<PolicyEngine>, subject: Subject, cache: Arc<FactsCache>) -> Self {
        Self {
            engine,
            subject,
            cache,
            wrote_facts: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    /// Who the guard decides for.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // A panic while holding the lock cannot leave the memo inconsistent (entries are
        // inserted whole), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The subject's facts about `patient`: once per request, from the shared cache when it is
    /// fresh.
    fn facts(
        &self,
        store: &dyn StoreRead,
        ctx: &Ctx,
        patient: &str,
    ) -> Result<Arc<PatientFacts>, Error> {
        if let Some(f) = self.lock().patients.get(patient) {
            return Ok(Arc::clone(f));
        }
        let key = (
            self.subject.practitioner.clone().unwrap_or_default(),
            patient.to_owned(),
        );
        let shared = match self.cache.get(&key) {
            Some(f) => f,
            None => {
                // The generation is read before looking: a write committed meanwhile moves it
                // on, and what is stored here is then never used.
                let generation = self.cache.generation();
                let f = self.look_up(store, ctx, patient)?;
                self.cache.put(key, generation, f.clone());
                f
            }
        };
        let now_micros = ctx.clock.now_micros();
        // Break-glass grants are read every time: one opened a moment ago counts at once, and
        // one that expired a moment ago does not.
        let break_glass = matches!(self.subject.role, Role::Clinician | Role::Nurse)
            && self.subject.purpose.as_deref() == Some(EMERGENCY)
            && store
                .break_glass(&self.subject.user, patient, now_micros)?
                .is_some();
        // Restrictions of processing: from a process-wide set read again every second (see
        // `RESTRICTIONS_TTL`), not one query per request.
        let restricted = self.cache.restricted(store)?.contains(patient);
        let facts = Arc::new(PatientFacts {
            shared,
            break_glass,
            restricted,
        });
        self.lock()
            .patients
            .insert(patient.to_owned(), Arc::clone(&facts));
        Ok(facts)
    }

    /// The references a patient's consent may name the subject by: their Practitioner, their
    /// PractitionerRoles (active, in period) and those roles' Organizations, and the CareTeams
    /// that list them as a member (in period, whatever the team's status: a deny naming a team
    /// reaches everyone on it). Looked up once per request, shared like the patient facts.
    fn actors(&self, store: &dyn StoreRead, ctx: &Ctx) -> Result<Arc<Actors>, Error> {
        let Some(who) = self.subject.practitioner.clone() else {
            return Ok(Arc::default());
        };
        if let Some(a) = self.lock().actors.clone() {
            return Ok(a);
        }
        let actors = match self.cache.get_actors(&who) {
            Some(a) => a,
            None => {
                let generation = self.cache.generation();
                let inner = ctx.as_node_work();
                let now = ctx.clock.now_micros().div_euclid(1_000_000);
                let mut list = vec![who.clone()];
                let mut inactive_teams = Vec::new();
                for role in find_all(store, &inner, &PRACTITIONER_ROLE, &[("practitioner", &who)])?
                {
                    if role.get("active").and_then(Value::as_bool) == Some(false)
                        || !period_covers(role.get("period"), now)
                    {
                        continue;
                    }
                    if let Some(id) = role.get("id").and_then(Value::as_str) {
                        list.push(format!("PractitionerRole/{id}"));
                    }
                    if let Some(org) = role
                        .pointer("/organization/reference")
                        .and_then(Value::as_str)
                        .filter(|r| r.starts_with("Organization/"))
                    {
                        list.push(org.to_owned());
                    }
                }
                for team in find_all(store, &inner, &CARE_TEAM, &[("participant", &who)])? {
                    if names(team.get("participant"), "member", &who, now)
                        && let Some(id) = team.get("id").and_then(Value::as_str)
                    {
                        list.push(format!("CareTeam/{id}"));
                        if !care_team_active(&team, &who, now) {
                            inactive_teams.push(format!("CareTeam/{id}"));
                        }
                    }
                }
                list.sort();
                list.dedup();
                let permit = list
                    .iter()
                    .filter(|a| !inactive_teams.contains(a))
                    .cloned()
                    .collect();
                let a = Arc::new(Actors { deny: list, permit });
                self.cache.put_actors(&who, generation, Arc::clone(&a));
                a
            }
        };
        self.lock().actors = Some(Arc::clone(&actors));
        Ok(actors)
    }

    /// Looks a patient's care relationships with the subject and consents up in the store.
    fn look_up(
        &self,
        store: &dyn StoreRead,
        ctx: &Ctx,
        patient: &str,
    ) -> Result<SharedFacts, Error> {
        // The lookups themselves are not subject to the policy or the request's scopes.
        let inner = ctx.as_node_work();
        let reference = format!("Patient/{patient}");
        let now = ctx.clock.now_micros().div_euclid(1_000_000);
        let of_patient = ("patient", reference.as_str());
        let relationship = match &self.subject.practitioner {
            Some(who) => {
                let with = [of_patient, ("participant", who.as_str())];
                find_all(store, &inner, &CARE_TEAM, &with)?
                    .iter()
                    .any(|t| care_team_active(t, who, now))
                    || find_all(store, &inner, &ENCOUNTER, &with)?
                        .iter()
                        .any(|e| encounter_active(e, who, now))
            }
            None => false,
        };
        Ok(SharedFacts {
            relationship,
            consents: Arc::new(find_all(store, &inner, &CONSENT, &[of_patient])?),
        })
    }

    fn note(
        &self,
        allowed: bool,
        policies: Vec<String>,
        patient: Option<&str>,
        by_break_glass: bool,
        related: bool,
    ) -> Result<(), Vec<String>> {
        let mut st = self.lock();
        if let Some(p) = patient.filter(|_| related)
            && st.related.len() < MAX_LISTED_PATIENTS
        {
            st.related.insert(p.to_owned());
        }
        if let Some(p) = patient {
            let list = if allowed {
                &mut st.seen
            } else {
                &mut st.refused
            };
            if list.len() < MAX_LISTED_PATIENTS {
                list.insert(p.to_owned());
            }
        }
        if allowed {
            if by_break_glass && let Some(p) = patient {
                st.break_glass.insert(p.to_owned());
            }
            Ok(())
        } else {
            st.denied_by.extend(policies.iter().cloned());
            Err(policies)
        }
    }

    /// What the guard refused and used so far.
    pub fn note_for_log(&self) -> PolicyNote {
        let st = self.lock();
        PolicyNote {
            purpose: self.subject.purpose.clone(),
            denied_by: st.denied_by.iter().cloned().collect(),
            withheld: st.withheld,
            break_glass: st.break_glass.iter().cloned().collect(),
            patients_seen: st.seen.iter().cloned().collect(),
            patients_refused: st.refused.iter().cloned().collect(),
            related: st.related.iter().cloned().collect(),
        }
    }
}

impl crate::ctx::sealed::Sealed for Guard {}

/// What a request's [`Ctx`] asks of its policy.
impl AccessPolicy for Guard {
    /// Decides `action` on a resource of type `rt` sealed under `key_name` (its compartment,
    /// `Patient/<id>` or the tenant's), with its content when there is one (labels come from
    /// it). Returns the refusing policies' ids when refused.
    ///
    /// # Errors
    /// Store and key errors while looking up the patient's facts.
    fn decide(
        &self,
        store: &dyn StoreRead,
        ctx: &Ctx,
        action: Action,
        rt: &ResourceType,
        key_name: &str,
        resource: Option<&Value>,
    ) -> Result<Result<(), Vec<String>>, Error> {
        let verdict = self.decide_one(store, ctx, action, rt, key_name, resource)?;
        let Some(resource) = resource else {
            return Ok(verdict);
        };
        if verdict.is_err() {
            return Ok(verdict);
        }
        // What the resource stands for is decided too: a Binary is as visible as its
        // securityContext, a Group, Linkage, List or stored Bundle as every patient it names,
        // any other record as every patient whose compartment it is in.
        if let Some((proxy_rt, proxy_key, content)) = proxy_of(store, ctx, rt, resource)? {
            let v = self.decide_one(store, ctx, action, &proxy_rt, &proxy_key, content.as_ref())?;
            if v.is_err() {
                return Ok(v);
            }
        }
        for other_key in other_compartments(ctx, rt, key_name, resource) {
            let v = self.decide_one(store, ctx, action, rt, &other_key, Some(resource))?;
            if v.is_err() {
                return Ok(v);
            }
        }
        Ok(verdict)
    }

    /// Records a refusal decided outside the policy (scopes, a Bundle entry's error), for the
    /// access log.
    fn refused_by(&self, rule: &str) {
        let mut st = self.lock();
        for r in rule.split(',').filter(|r| !r.is_empty()) {
            st.denied_by.insert(r.to_owned());
        }
    }

    /// Counts a resource left out of a result.
    fn withheld(&self) {
        self.lock().withheld += 1;
    }

    /// Notes that the request wrote a resource of type `rt` (if it is one of [`FACT_TYPES`],
    /// the shared facts must be forgotten once the write has committed).
    fn wrote(&self, rt: &ResourceType) {
        if FACT_TYPES.contains(rt) {
            self.wrote_facts.store(true, Ordering::SeqCst);
        }
    }

    fn denied_by(&self) -> Vec<String> {
        self.lock().denied_by.iter().cloned().collect()
    }

    fn role(&self) -> Role {
        self.subject.role
    }

    fn principal(&self) -> String {
        let s = &self.subject;
        format!(
            "{}|{}|{}",
            s.user,
            s.role.as_str(),
            s.purpose.as_deref().unwrap_or_default()
        )
    }

    /// Call when the request is over: forgets the shared facts if it wrote any.
    fn finish(&self) {
        if self.wrote_facts.load(Ordering::SeqCst) {
            self.cache.invalidate();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_fact_type_is_never_staged_by_a_bulk_load() {
        for t in FACT_TYPES {
            assert!(DECIDING_TYPES.contains(&t.as_str()), "{t}");
        }
    }

    #[test]
    fn relationships_need_an_active_record_naming_the_practitioner_now() {
        let dr = "Practitioner/dr";
        let now = 1_780_000_000; // 2026-05-28
        let team = json!({"status": "active", "participant": [{"member": {"reference": dr}}]});
        assert!(care_team_active(&team, dr, now));
        assert!(!care_team_active(&team, "Practitioner/other", now));
        let mut ended = team.clone();
        ended["participant"][0]["period"] = json!({"end": "2025-01-01"});
        assert!(!care_team_active(&ended, dr, now));
        let mut inactive = team.clone();
        inactive["status"] = json!("inactive");
        assert!(!care_team_active(&inactive, dr, now));
        let enc = json!({"status": "in-progress", "participant": [{"individual": {"reference": dr}}],
                         "period": {"start": "2026-05-01"}});
        assert!(encounter_active(&enc, dr, now));
        let mut finished = enc.clone();
        finished["status"] = json!("finished");
        assert!(!encounter_active(&finished, dr, now));
        let mut future = enc.clone();
        future["period"] = json!({"start": "2027-01-01"});
        assert!(!encounter_active(&future, dr, now));
        let mut garbled = enc;
        garbled["period"] = json!({"start": "soon"});
        assert!(!encounter_active(&garbled, dr, now));
    }

    #[test]
    fn labels_are_the_security_codes() {
        let r = json!({"meta": {"security": [{"code": "R"}, {"system": "x", "code": "HIV"}, {"code": "R"}]}});
        assert_eq!(security_labels(&r), ["HIV", "R"]);
        assert!(security_labels(&json!({})).is_empty());
    }
}
