//! FHIR R4 (4.0.1) knowledge for medvault, all of it read from the official definitions:
//! validation against the HL7 JSON Schema, search parameters from the 1 378 SearchParameter
//! resources, compartment membership from the Patient CompartmentDefinition.
//!
//! **Invariant:** knows nothing of storage, keys or HTTP. Every R4 resource type is served but
//! those in [`NOT_STORED`]; what seals a type and whether it is patient data follow from the
//! definitions plus the short list [`PATIENT_DATA_OUTSIDE_COMPARTMENT`].

mod date;
mod number;
pub mod patch;
mod path;
mod search;
pub mod strict_json;
pub mod summary;
mod validate;

use std::collections::{BTreeMap, BTreeSet};

use medvault_core::{Compartment, ResourceId, ResourceType};
use serde_json::Value;

pub use path::{local_reference, relative_reference};

/// Parses a FHIR date, dateTime or instant into `[start, end)` Unix seconds (its precision
/// decides the width), or `None` when it is not one.
pub fn date_range(text: &str) -> Option<(i64, i64)> {
    date::parse_range(text)
}
pub use search::{Alternative, Clause, ParamKind, SearchError, SearchParam, SortKey, normalize};
pub use validate::Issue;

/// The FHIR version served.
pub const FHIR_VERSION: &str = "4.0.1";

const SCHEMA: &str = include_str!("../data/fhir.schema.json");
const SEARCH_PARAMETERS: &str = include_str!("../data/search-parameters.json");
const PATIENT_COMPARTMENT: &str = include_str!("../data/compartmentdefinition-patient.json");

/// R4 resource types the node does not store through the generic interactions, with the reason a
/// client is told.
pub const NOT_STORED: &[(&str, &str)] = &[(
    "AuditEvent",
    "AuditEvents are the node's own access log, served read-only",
)];

/// Types outside the Patient compartment whose instances can still hold a patient's data: a
/// Binary's bytes, a stored Bundle's entries, a Contract's or GuidanceResponse's subject, a
/// MessageHeader's focus, a payment's claim… They are never directory data. Each is sealed under
/// the patient its Patient-targeting reference parameters name (own-patient ones first), a
/// Binary under its `securityContext`'s patient, a Bundle under its first entry's; otherwise
/// under the node's key, readable only by roles allowed patient data without a patient.
pub const PATIENT_DATA_OUTSIDE_COMPARTMENT: &[&str] = &[
    "Binary",
    "BiologicallyDerivedProduct",
    "Bundle",
    "Contract",
    "EnrollmentResponse",
    "GuidanceResponse",
    "Linkage",
    "MessageHeader",
    "OperationOutcome",
    "Parameters",
    "PaymentNotice",
    "PaymentReconciliation",
    "VerificationResult",
];

/// Parameters that name the record's own patient, tried first when choosing its compartment.
const OWN_PATIENT_PARAMS: [&str; 3] = ["patient", "subject", "beneficiary"];

/// The parameters every resource has (`Resource.meta`) that are indexed like any other; the
/// rest of the `_` parameters are the search machinery's own (`_id`, `_lastUpdated`, `_has`…)
/// or full-text ones medvault does not offer (`_text`, `_content`).
const META_PARAMS: [&str; 4] = ["_tag", "_security", "_profile", "_source"];

/// Parameters whose defined matching medvault does not implement, so they are not offered:
/// `phonetic` asks for sound-alike matching (Soundex, Metaphone…), which a plain string index
/// would silently get wrong.
const NOT_IMPLEMENTED: &[&str] = &["phonetic"];

/// Errors loading the definitions (they are compiled in, so only a broken build can cause one).
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// A definition file failed to parse.
    #[error("FHIR definition file {0} is malformed")]
    Definitions(&'static str),
    /// A type to serve that the R4 schema does not define.
    #[error("resource type {0} is not an R4 resource type")]
    UnknownType(String),
}

/// What the node knows about one served resource type.
#[derive(Debug)]
pub struct TypeInfo {
    /// Supported search parameters by code.
    pub params: BTreeMap<String, SearchParam>,
    /// Codes of the parameters that place an instance in a Patient compartment, in definition
    /// order; empty for types outside the compartment.
    pub compartment_params: Vec<String>,
    /// Codes of the parameters whose Patient references choose the key that seals an instance,
    /// own-patient parameters first: the compartment parameters, or for a type of
    /// [`PATIENT_DATA_OUTSIDE_COMPARTMENT`] (and `Device`, whose assigned patient owns it) its
    /// reference parameters that may target a Patient.
    pub sealing_params: Vec<String>,
    /// True if an instance is patient data even when it names no patient (so never directory
    /// data): the compartment's types and [`PATIENT_DATA_OUTSIDE_COMPARTMENT`].
    pub patient_data: bool,
}

/// The loaded FHIR R4 definitions.
pub struct Fhir {
    types: BTreeMap<ResourceType, TypeInfo>,
    all_types: BTreeSet<String>,
    validators: &'static validate::Validators,
    /// Per served type, the `Source:param` reference parameters that can point to it (worked
    /// out once, on first use).
    revincludes: std::sync::OnceLock<BTreeMap<ResourceType, Vec<String>>>,
}

impl std::fmt::Debug for Fhir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fhir")
            .field("types", &self.types.keys())
            .finish_non_exhaustive()
    }
}

impl Fhir {
    /// Loads the compiled-in definitions for every R4 resource type but [`NOT_STORED`].
    ///
    /// # Errors
    /// [`FhirError`] if a definition file is malformed.
    pub fn load() -> Result<Self, FhirError> {
        let schema: Value =
            serde_json::from_str(SCHEMA).map_err(|_| FhirError::Definitions("fhir.schema.json"))?;
        let all = r4_types(&schema)?;
        let served: Vec<&str> = all
            .iter()
            .map(String::as_str)
            .filter(|t| !NOT_STORED.iter().any(|(n, _)| n == t))
            .collect();
        Self::build(schema, &served)
    }

    /// Loads the definitions for exactly these types.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_types(served: &[&str]) -> Result<Self, FhirError> {
        let schema: Value =
            serde_json::from_str(SCHEMA).map_err(|_| FhirError::Definitions("fhir.schema.json"))?;
        Self::build(schema, served)
    }

    fn build(schema: Value, served: &[&str]) -> Result<Self, FhirError> {
        let all_types = r4_types(&schema)?;
        let params: Value = serde_json::from_str(SEARCH_PARAMETERS)
            .map_err(|_| FhirError::Definitions("search-parameters.json"))?;
        let compartment: Value = serde_json::from_str(PATIENT_COMPARTMENT)
            .map_err(|_| FhirError::Definitions("compartmentdefinition-patient.json"))?;
        let entries = params
            .get("entry")
            .and_then(Value::as_array)
            .ok_or(FhirError::Definitions("search-parameters.json"))?;
        let by_url: BTreeMap<&str, &Value> = entries
            .iter()
            .filter_map(|e| e.get("resource"))
            .filter_map(|d| Some((d.get("url")?.as_str()?, d)))
            .collect();
        let mut types = BTreeMap::new();
        for &t in served {
            if !all_types.contains(t) {
                return Err(FhirError::UnknownType(t.to_owned()));
            }
            let mut by_code = BTreeMap::new();
            for e in entries {
                let Some(def) = e.get("resource") else {
                    continue;
                };
                let code = def.get("code").and_then(Value::as_str).unwrap_or_default();
                let applies = def.get("base").and_then(Value::as_array).is_some_and(|b| {
                    b.iter().any(|x| {
                        x.as_str() == Some(t)
                            || (x.as_str() == Some("Resource") && META_PARAMS.contains(&code))
                    })
                });
                if applies
                    && (!code.starts_with('_') || META_PARAMS.contains(&code))
                    && !NOT_IMPLEMENTED.contains(&code)
                    && let Some(p) = SearchParam::from_definition(def, t)
                {
                    by_code.insert(p.code.clone(), p);
                }
            }
            // Composites last: their first component is narrowed by the type's parameter with
            // that component's definition.
            let composites: Vec<SearchParam> = by_code
                .values()
                .filter(|p| p.kind == ParamKind::Composite)
                .filter_map(|p| {
                    let def = by_url.get(p.url.as_str())?;
                    SearchParam::composite(
                        def,
                        t,
                        |url| by_url.get(url).copied(),
                        |url| {
                            by_code
                                .values()
                                .find(|q| q.url == url && q.kind != ParamKind::Composite)
                                .map(|q| q.code.clone())
                        },
                    )
                })
                .collect();
            by_code.retain(|_, p| p.kind != ParamKind::Composite);
            by_code.extend(composites.into_iter().map(|p| (p.code.clone(), p)));
            let in_compartment = compartment
                .get("resource")
                .and_then(Value::as_array)
                .and_then(|rs| {
                    rs.iter()
                        .find(|r| r.get("code").and_then(Value::as_str) == Some(t))
                });
            let compartment_params = strings(in_compartment.and_then(|r| r.get("param")));
            let outside = PATIENT_DATA_OUTSIDE_COMPARTMENT.contains(&t);
            let sealing: Vec<&String> = if compartment_params.is_empty()
                && (outside || t == "Device")
            {
                by_code
                    .values()
                    .filter(|p| {
                        p.kind == ParamKind::Reference && p.targets.iter().any(|x| x == "Patient")
                    })
                    .map(|p| &p.code)
                    .collect()
            } else {
                compartment_params.iter().collect()
            };
            let sealing_params = own_patient_first(&sealing);
            let name = ResourceType::new(t).map_err(|_| FhirError::UnknownType(t.to_owned()))?;
            types.insert(
                name,
                TypeInfo {
                    params: by_code,
                    patient_data: outside || !compartment_params.is_empty(),
                    compartment_params,
                    sealing_params,
                },
            );
        }
        Ok(Self {
            types,
            all_types,
            validators: validate::Validators::shared(schema),
            revincludes: std::sync::OnceLock::new(),
        })
    }

    /// Compiles the validator every valid resource passes (a few tens of milliseconds, once per
    /// process), so the first write a server answers does not pay for it: `serve` calls it on a
    /// thread of its own at start.
    pub fn warm_up(&self) {
        self.validators.warm_up();
    }

    /// The `Source:param` reference parameters of the served types that can point to a
    /// `resource_type` (what `_revinclude` takes for it).
    pub fn revincludes(&self, resource_type: &ResourceType) -> &[String] {
        self.revincludes
            .get_or_init(|| {
                let mut out: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
                for (source, info) in &self.types {
                    for p in info
                        .params
                        .values()
                        .filter(|p| p.kind == ParamKind::Reference)
                    {
                        for t in &p.targets {
                            if let Some(target) = self.served(t) {
                                out.entry(target.clone())
                                    .or_default()
                                    .push(format!("{source}:{}", p.code));
                            }
                        }
                    }
                }
                out
            })
            .get(resource_type)
            .map_or(&[], Vec::as_slice)
    }

    /// The served types and what the node knows of each.
    pub fn types(&self) -> &BTreeMap<ResourceType, TypeInfo> {
        &self.types
    }

    /// The served type named `name`, if served.
    pub fn type_info(&self, name: &str) -> Option<&TypeInfo> {
        self.types.get(name)
    }

    /// The served type named `name` as a [`ResourceType`], borrowed from the definitions (no
    /// allocation), if served.
    pub fn served(&self, name: &str) -> Option<&ResourceType> {
        self.types.get_key_value(name).map(|(t, _)| t)
    }

    /// True if `name` is any R4 resource type (served or not).
    pub fn is_r4_type(&self, name: &str) -> bool {
        self.all_types.contains(name)
    }

    /// The R4 resource type named `name`, compared without regard to case (`observation` →
    /// `Observation`).
    pub fn r4_type_named(&self, name: &str) -> Option<&str> {
        self.all_types
            .iter()
            .find(|t| t.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }

    /// Validates a resource against the official R4 schema for its type, plus the reference
    /// rules the schema cannot express.
    ///
    /// # Errors
    /// Every issue found (at most [`validate::MAX_ISSUES`]).
    pub fn validate(&self, resource_type: &str, resource: &Value) -> Result<(), Vec<Issue>> {
        let mut issues = self.validators.validate(resource_type, resource);
        validate::check_references(resource, &self.all_types, resource_type, &mut issues);
        // The schema cannot require a primitive (its value may be in `_status` instead of
        // `status`): the base definitions' mandatory elements are checked here.
        if let Some(defs) = summary::table().ok().and_then(|t| t.get(resource_type)) {
            for element in defs.mandatory() {
                let present = defs.json_names(element).iter().any(|n| {
                    resource.get(n.as_str()).is_some()
                        || resource.get(format!("_{n}").as_str()).is_some()
                });
                if !present && issues.len() < validate::MAX_ISSUES {
                    issues.push(Issue {
                        path: format!("{resource_type}.{}", element.trim_end_matches("[x]")),
                        message: "missing required element".into(),
                    });
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// The compartment whose key seals this resource: a Patient's own; else the first patient
    /// its sealing parameters reference (own-patient parameters first); a Binary's
    /// `securityContext` patient; a stored Bundle's first entry's; else the tenant's. A
    /// reference to another resource (a Binary's `securityContext` naming a DocumentReference)
    /// is for the caller to resolve: see [`Self::sealing_proxy`].
    pub fn compartment_of(
        &self,
        resource_type: &str,
        id: &ResourceId,
        resource: &Value,
    ) -> Compartment {
        self.compartment_within(resource_type, id, resource, 1)
    }

    fn compartment_within(
        &self,
        resource_type: &str,
        id: &ResourceId,
        resource: &Value,
        depth: u8,
    ) -> Compartment {
        match resource_type {
            "Patient" => return Compartment::Patient(id.clone()),
            "Binary" => {
                let reference = resource
                    .pointer("/securityContext/reference")
                    .and_then(Value::as_str);
                return match reference.and_then(relative_reference) {
                    Some(("Patient", pid)) => ResourceId::new(pid)
                        .map(Compartment::Patient)
                        .unwrap_or(Compartment::Tenant),
                    _ => Compartment::Tenant,
                };
            }
            "Bundle" if depth > 0 => {
                // A document's Composition, a message's header focus, a collection's first
                // member: the first entry speaks for the Bundle (one level deep).
                let first = resource.pointer("/entry/0/resource");
                let ty = first
                    .and_then(|r| r.get("resourceType"))
                    .and_then(Value::as_str);
                let eid = first
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                    .and_then(|i| ResourceId::new(i).ok());
                return match (first, ty, eid) {
                    (Some(r), Some(t), Some(eid)) if self.types.contains_key(t) => {
                        self.compartment_within(t, &eid, r, depth - 1)
                    }
                    (Some(r), Some(t), None) if t != "Patient" && self.types.contains_key(t) => {
                        self.compartment_within(t, id, r, depth - 1)
                    }
                    _ => Compartment::Tenant,
                };
            }
            _ => {}
        }
        let Some(info) = self.types.get(resource_type) else {
            return Compartment::Tenant;
        };
        // A resource that names several patients is sealed under one of them only: see
        // docs/formats/keys.md, "Compartment choice".
        for code in &info.sealing_params {
            if let Some(p) = info.params.get(code)
                && let Some(pid) = p
                    .patient_ids(resource)
                    .into_iter()
                    .find_map(|i| ResourceId::new(&i).ok())
            {
                return Compartment::Patient(pid);
            }
        }
        Compartment::Tenant
    }

    /// The stored resource whose compartment (and access) this one shares: a Binary's
    /// `securityContext` when it is a relative reference (to a Patient, a DocumentReference, a
    /// Media…). The caller resolves it against what is stored.
    pub fn sealing_proxy<'r>(
        &self,
        resource_type: &str,
        resource: &'r Value,
    ) -> Option<(&'r str, &'r str)> {
        if resource_type != "Binary" {
            return None;
        }
        resource
            .pointer("/securityContext/reference")
            .and_then(Value::as_str)
            .and_then(relative_reference)
    }
}

/// A reference to a patient that is not a literal `Patient/<id>`: it must be resolved to a
/// stored Patient before the resource is sealed (else the record would fall outside every
/// patient's compartment and be treated as the node's own data).
#[derive(Debug, Clone, PartialEq)]
pub enum PatientLink {
    /// A logical reference: `{identifier: {system, value}}` (without `reference`).
    Identifier {
        /// The Reference element as sent.
        node: Value,
        /// Identifier system (required to resolve).
        system: Option<String>,
        /// Identifier value.
        value: Option<String>,
    },
    /// `#id` naming a contained Patient: the patient is the one its identifiers name.
    Contained {
        /// The Reference element as sent.
        node: Value,
        /// The contained Patient's `(system, value)` identifiers.
        identifiers: Vec<(Option<String>, Option<String>)>,
    },
    /// A reference to a patient this node cannot resolve (a conditional `Patient?…` reference
    /// outside a transaction, a `#` naming nothing, a URN).
    Unresolvable,
}

fn identifier_parts(v: &Value) -> (Option<String>, Option<String>) {
    let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    (get("system"), get("value"))
}

impl Fhir {
    /// The patient references of `resource` that a server must resolve before choosing its
    /// compartment: identifier-only references and contained Patients in its Patient-compartment
    /// parameters. A reference is taken to be a patient's when its `type` is `Patient`, or it has
    /// no type and stands in the record's own patient parameter (`patient`, `subject`,
    /// `beneficiary`), or it names a contained Patient.
    pub fn unresolved_patient_links(
        &self,
        resource_type: &str,
        resource: &Value,
    ) -> Vec<PatientLink> {
        let Some(info) = self.types.get(resource_type) else {
            return Vec::new();
        };
        if resource_type == "Patient" {
            return Vec::new();
        }
        let primary = OWN_PATIENT_PARAMS;
        let contained: Vec<&Value> = resource
            .get("contained")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        // Only the parameters that name the record's own patient are resolved (all of its
        // compartment parameters for a type without one): a performer or asserter given by
        // identifier stays a logical reference, so writing one tells nobody whether that
        // identifier belongs to a patient here.
        let own: Vec<&String> = info
            .sealing_params
            .iter()
            .filter(|c| primary.contains(&c.as_str()))
            .collect();
        let deciding: Vec<&String> = if own.is_empty() {
            info.sealing_params.iter().collect()
        } else {
            own
        };
        let mut out = Vec::new();
        for code in deciding {
            let Some(param) = info.params.get(code) else {
                continue;
            };
            let own_patient_param = primary.contains(&code.as_str());
            for node in param.reference_nodes(resource) {
                let ty = node.get("type").and_then(Value::as_str);
                let literal = node.get("reference").and_then(Value::as_str);
                match literal {
                    Some(r) if r.starts_with('#') => {
                        let target = contained
                            .iter()
                            .find(|c| c.get("id").and_then(Value::as_str) == Some(&r[1..]));
                        match target {
                            Some(c)
                                if c.get("resourceType").and_then(Value::as_str)
                                    == Some("Patient") =>
                            {
                                out.push(PatientLink::Contained {
                                    node: node.clone(),
                                    identifiers: c
                                        .get("identifier")
                                        .and_then(Value::as_array)
                                        .into_iter()
                                        .flatten()
                                        .map(identifier_parts)
                                        .collect(),
                                });
                            }
                            Some(_) => {}
                            None if own_patient_param || ty == Some("Patient") => {
                                out.push(PatientLink::Unresolvable);
                            }
                            None => {}
                        }
                    }
                    Some(r) => {
                        // An absolute URL (maybe another server's patient), a conditional
                        // reference or a non-canonical path names no stored patient.
                        let patientish = ty == Some("Patient")
                            || r.starts_with("Patient")
                            || r.contains("/Patient/")
                            || r.contains("/Patient?");
                        if relative_reference(r).is_none() && patientish {
                            out.push(PatientLink::Unresolvable);
                        }
                    }
                    None => {
                        let Some(ident) = node.get("identifier") else {
                            continue;
                        };
                        if ty == Some("Patient") || (ty.is_none() && own_patient_param) {
                            let (system, value) = identifier_parts(ident);
                            out.push(PatientLink::Identifier {
                                node: node.clone(),
                                system,
                                value,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// True if resources of this type are patient data (see [`TypeInfo::patient_data`]), so one
    /// stored outside every patient's compartment is still not directory data. An unassigned
    /// `Device` is inventory.
    pub fn is_clinical_type(&self, resource_type: &str) -> bool {
        self.types
            .get(resource_type)
            .is_some_and(|t| t.patient_data)
    }
}

/// The names of every R4 resource type, from the schema's discriminator.
fn r4_types(schema: &Value) -> Result<BTreeSet<String>, FhirError> {
    Ok(schema
        .pointer("/discriminator/mapping")
        .and_then(Value::as_object)
        .ok_or(FhirError::Definitions("fhir.schema.json"))?
        .keys()
        .cloned()
        .collect())
}

/// `codes` with the own-patient parameters first (in [`OWN_PATIENT_PARAMS`] order), the rest in
/// the order given.
fn own_patient_first(codes: &[&String]) -> Vec<String> {
    OWN_PATIENT_PARAMS
        .iter()
        .filter_map(|c| codes.iter().find(|p| p.as_str() == *c))
        .chain(
            codes
                .iter()
                .filter(|p| !OWN_PATIENT_PARAMS.contains(&p.as_str())),
        )
        .map(|p| (*p).clone())
        .collect()
}

/// The strings of a JSON array in a definition (other members skipped); empty when it is
/// absent or not an array.
fn strings(array: Option<&Value>) -> Vec<String> {
    array
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_and_mandatory_primitives_are_checked() {
        let f = Fhir::load().unwrap();
        let ok = json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}});
        assert!(f.validate("Observation", &ok).is_ok());
        let mut two = ok.clone();
        two["subject"] = json!([{"reference": "Patient/p1"}, {"reference": "Patient/p2"}]);
        let mut string_meta = ok.clone();
        string_meta["meta"] = json!("final");
        let mut string_subject = ok.clone();
        string_subject["subject"] = json!("Patient/p2");
        let mut no_status = ok.clone();
        no_status.as_object_mut().unwrap().remove("status");
        for (bad, path) in [
            (two, "Observation.subject"),
            (string_meta, "Observation.meta"),
            (string_subject, "Observation.subject"),
            (no_status, "Observation.status"),
        ] {
            let issues = f.validate("Observation", &bad).unwrap_err();
            assert!(issues.iter().any(|i| i.path == path), "{path}: {issues:?}");
        }
        let mut extended = ok.clone();
        extended.as_object_mut().unwrap().remove("status");
        extended["_status"] = json!({"extension": [{"url": "http://x", "valueString": "y"}]});
        assert!(
            f.validate("Observation", &extended).is_ok(),
            "a primitive given as _status"
        );
    }

    #[test]
    fn loads_the_served_types_with_their_parameters() {
        let f = Fhir::load().unwrap();
        assert_eq!(
            f.types().len(),
            146 - NOT_STORED.len(),
            "every R4 type but the unstored"
        );
        for (t, _) in NOT_STORED {
            assert!(f.type_info(t).is_none() && f.is_r4_type(t), "{t}");
        }
        assert_eq!(f.served("Patient"), Some(&ResourceType::PATIENT));
        assert_eq!(f.served("Banana"), None);
        let p = f.type_info("Patient").unwrap();
        for code in [
            "identifier",
            "family",
            "given",
            "name",
            "birthdate",
            "gender",
        ] {
            assert!(p.params.contains_key(code), "Patient.{code}");
        }
        for t in [
            "Observation",
            "Condition",
            "Encounter",
            "Procedure",
            "DiagnosticReport",
        ] {
            let info = f.type_info(t).unwrap();
            for code in ["patient", "subject", "code", "date", "status"] {
                if t == "Procedure" && code == "status" || info.params.contains_key(code) {
                    continue;
                }
                if !(t == "Encounter" && code == "code")
                    && !(t == "Condition" && (code == "date" || code == "status"))
                {
                    panic!("{t}.{code} missing");
                }
            }
        }
        assert!(
            f.type_info("Observation")
                .unwrap()
                .params
                .contains_key("category")
        );
        assert!(f.is_r4_type("Questionnaire"));
        assert!(!f.is_r4_type("Banana"));
        assert!(Fhir::load_types(&["Banana"]).is_err());
    }

    #[test]
    fn compartments_come_from_the_definition() {
        let f = Fhir::load().unwrap();
        let id = ResourceId::new("x").unwrap();
        let obs = json!({"resourceType":"Observation","subject":{"reference":"Patient/p9"}});
        assert_eq!(
            f.compartment_of("Observation", &id, &obs),
            Compartment::Patient(ResourceId::new("p9").unwrap())
        );
        let grp = json!({"resourceType":"Observation","subject":{"reference":"Group/g"}});
        assert_eq!(
            f.compartment_of("Observation", &id, &grp),
            Compartment::Tenant
        );
        assert_eq!(
            f.compartment_of("Patient", &id, &json!({})),
            Compartment::Patient(id.clone())
        );
        let org = json!({"resourceType":"Organization"});
        assert_eq!(
            f.compartment_of("Organization", &id, &org),
            Compartment::Tenant
        );
        let coverage = json!({"resourceType":"Coverage","policyHolder":{"reference":"Patient/holder"},
            "beneficiary":{"reference":"Patient/child"}});
        assert_eq!(
            f.compartment_of("Coverage", &id, &coverage),
            Compartment::Patient(ResourceId::new("child").unwrap()),
            "the record's own patient, not the policy holder"
        );
        let consent = json!({"resourceType":"Consent","patient":{"reference":"Patient/p3"}});
        assert_eq!(
            f.compartment_of("Consent", &id, &consent),
            Compartment::Patient(ResourceId::new("p3").unwrap())
        );
    }

    #[test]
    fn patient_data_outside_the_compartment_is_sealed_under_the_patient_it_names() {
        let f = Fhir::load().unwrap();
        let id = ResourceId::new("x").unwrap();
        let p = |s: &str| Compartment::Patient(ResourceId::new(s).unwrap());
        let cases = [
            (
                "Contract",
                json!({"subject":[{"reference":"Patient/c1"}]}),
                p("c1"),
            ),
            (
                "GuidanceResponse",
                json!({"subject":{"reference":"Patient/g1"}}),
                p("g1"),
            ),
            (
                "Device",
                json!({"patient":{"reference":"Patient/d1"}}),
                p("d1"),
            ),
            (
                "Device",
                json!({"type":{"text":"pump"}}),
                Compartment::Tenant,
            ),
            (
                "Binary",
                json!({"securityContext":{"reference":"Patient/b1"}}),
                p("b1"),
            ),
            (
                "Binary",
                json!({"securityContext":{"reference":"DocumentReference/d"}}),
                Compartment::Tenant,
            ),
            (
                "Bundle",
                json!({"type":"document","entry":[{"resource":{"resourceType":"Composition",
                    "id":"c","subject":{"reference":"Patient/doc1"}}}]}),
                p("doc1"),
            ),
            (
                "Bundle",
                json!({"type":"collection","entry":[{"resource":{"resourceType":"Bundle",
                    "entry":[{"resource":{"resourceType":"Patient","id":"deep"}}]}}]}),
                Compartment::Tenant,
            ),
            (
                "Linkage",
                json!({"item":[{"type":"source","resource":{"reference":"Patient/l1"}}]}),
                p("l1"),
            ),
            (
                "Library",
                json!({"relatedArtifact":[{"type":"depends-on","resource":"Patient/x"}]}),
                Compartment::Tenant,
            ),
        ];
        for (t, mut body, want) in cases {
            body["resourceType"] = json!(t);
            assert_eq!(f.compartment_of(t, &id, &body), want, "{t} {body}");
        }
        for t in [
            "Binary",
            "Bundle",
            "Contract",
            "Observation",
            "Claim",
            "Parameters",
        ] {
            assert!(f.is_clinical_type(t), "{t} is patient data");
        }
        for t in [
            "Device",
            "Organization",
            "Questionnaire",
            "Library",
            "ValueSet",
        ] {
            assert!(!f.is_clinical_type(t), "{t} is directory data");
        }
        let ctx = json!({"resourceType":"Binary","securityContext":{"reference":"Media/m1"}});
        assert_eq!(f.sealing_proxy("Binary", &ctx), Some(("Media", "m1")));
        let own = json!({"resourceType":"Binary","securityContext":{"reference":"Patient/p"}});
        assert_eq!(f.sealing_proxy("Binary", &own), Some(("Patient", "p")));
        let absolute = json!({"resourceType":"Binary",
            "securityContext":{"reference":"https://elsewhere.example/fhir/Patient/p"}});
        assert_eq!(f.sealing_proxy("Binary", &absolute), None);
    }
}
