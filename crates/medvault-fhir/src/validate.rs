//! Validation against the official R4 JSON Schema, one compiled validator per resource type.
//!
//! Messages name the element path and the rule broken, never the offending value, so they can
//! be returned to clients and logged without carrying PHI.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

/// Issues reported for one resource at most.
pub(crate) const MAX_ISSUES: usize = 20;

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// FHIRPath-like location, e.g. `Patient.name[0].family`.
    pub path: String,
    /// What is wrong, without the value.
    pub message: String,
}

pub(crate) struct Validators {
    schema: Value,
    /// The official schema's own root (`oneOf` every resource type, which the validator
    /// dispatches on `resourceType`'s `const`): one compilation checks every type, so a valid
    /// resource of a type not seen yet costs no compilation of its own. Its errors say only
    /// that no branch matched, so an invalid resource is checked again by its type's
    /// validator, for the issues.
    any: std::sync::OnceLock<Option<jsonschema::Validator>>,
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
    /// The schema's root `oneOf`, for [`Self::any`].
    root_one_of: Option<Value>,
}

fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("description").is_some_and(Value::is_string) {
                map.remove("description");
            }
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

fn fhir_path(resource_type: &str, pointer: &str) -> String {
    let mut out = resource_type.to_owned();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            out.push('.');
            out.push_str(&seg.replace("~1", "/").replace("~0", "~"));
        }
    }
    out
}

fn describe(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::Required { property } => {
            format!(
                "missing required element '{}'",
                property.as_str().unwrap_or("?")
            )
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let names: Vec<&str> = unexpected.iter().map(String::as_str).take(5).collect();
            format!("unknown element(s) for this type: {}", names.join(", "))
        }
        ValidationErrorKind::Enum { .. } => "value is not in the required value set".into(),
        ValidationErrorKind::Type { .. } => "value has the wrong JSON type for this element".into(),
        ValidationErrorKind::Pattern { .. } => {
            "value does not have the format this FHIR type requires".into()
        }
        ValidationErrorKind::Constant { .. } => "value must match the resource type".into(),
        ValidationErrorKind::MinItems { .. } => "arrays may not be empty in FHIR".into(),
        other => format!(
            "violates the '{}' rule of the FHIR R4 schema",
            other.keyword()
        ),
    }
}

impl Validators {
    pub(crate) fn new(mut schema: Value) -> Self {
        strip_descriptions(&mut schema);
        let mut root_one_of = None;
        if let Value::Object(map) = &mut schema {
            root_one_of = map.remove("oneOf");
            map.remove("discriminator");
            // The official schema gives its 659 complex types and resources `properties` but no
            // `"type": "object"`, and JSON Schema applies `properties` to objects only: an
            // array, a string or a number would pass as a Reference, a Meta or a resource
            // (`"subject": [two references]`). Every definition with properties is an object.
            if let Some(Value::Object(defs)) = map.get_mut("definitions") {
                for def in defs.values_mut() {
                    if let Value::Object(d) = def
                        && d.contains_key("properties")
                        && !d.contains_key("type")
                    {
                        d.insert("type".into(), Value::String("object".into()));
                    }
                }
            }
        }
        Self {
            schema,
            any: std::sync::OnceLock::new(),
            compiled: Mutex::new(HashMap::new()),
            root_one_of,
        }
    }

    /// The validator of every type at once (see [`Self::any`]), compiled on first use.
    fn any(&self) -> Option<&jsonschema::Validator> {
        self.any
            .get_or_init(|| {
                let mut schema = self.schema.clone();
                if let (Value::Object(map), Some(one_of)) = (&mut schema, &self.root_one_of) {
                    map.insert("oneOf".into(), one_of.clone());
                }
                jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft6)
                    .build(&schema)
                    .ok()
            })
            .as_ref()
    }

    /// Compiles [`Self::any`] now rather than on first use.
    pub(crate) fn warm_up(&self) {
        let _ = self.any();
    }

    /// The validators of the embedded R4 schema, shared by every [`crate::Fhir`] of the process:
    /// a type's validator is compiled once (it takes tens of milliseconds, and the whole
    /// schema's definitions hang off every type through `contained`) and never dropped.
    /// `schema` is the embedded schema, the only one a `Fhir` is built from.
    pub(crate) fn shared(schema: Value) -> &'static Self {
        static SHARED: std::sync::OnceLock<Validators> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::new(schema))
    }

    fn validator(&self, resource_type: &str) -> Option<Arc<jsonschema::Validator>> {
        if let Some(v) = self.compiled.lock().ok()?.get(resource_type) {
            return Some(Arc::clone(v));
        }
        let mut schema = self.schema.clone();
        if let Value::Object(map) = &mut schema {
            map.insert(
                "$ref".into(),
                Value::String(format!("#/definitions/{resource_type}")),
            );
        }
        let compiled = Arc::new(
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft6)
                .build(&schema)
                .ok()?,
        );
        self.compiled
            .lock()
            .ok()?
            .insert(resource_type.to_owned(), Arc::clone(&compiled));
        Some(compiled)
    }

    pub(crate) fn validate(&self, resource_type: &str, resource: &Value) -> Vec<Issue> {
        // The common case, a valid resource, passes the one validator of every type; only a
        // resource it refuses needs its type's, for the issues (an answer the same either way:
        // the only branch a resource of this type can match is its type's).
        if resource.get("resourceType").and_then(Value::as_str) == Some(resource_type)
            && self.any().is_some_and(|any| any.is_valid(resource))
        {
            return Vec::new();
        }
        let Some(v) = self.validator(resource_type) else {
            return vec![Issue {
                path: resource_type.to_owned(),
                message: "no schema for this resource type".into(),
            }];
        };
        v.iter_errors(resource)
            .take(MAX_ISSUES)
            .map(|e| Issue {
                path: fhir_path(resource_type, e.instance_path().as_str()),
                message: describe(e.kind()),
            })
            .collect()
    }
}

/// References must be local (`Type/id` of an R4 type, optionally `/_history/n`), absolute URLs,
/// `urn:uuid:`/`urn:oid:` (inside Bundles) or `#contained`.
pub(crate) fn check_references(
    resource: &Value,
    all_types: &BTreeSet<String>,
    resource_type: &str,
    issues: &mut Vec<Issue>,
) {
    fn walk(v: &Value, path: &mut String, all: &BTreeSet<String>, issues: &mut Vec<Issue>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("reference") {
                    let ok = r.starts_with('#')
                        || r.starts_with("urn:uuid:")
                        || r.starts_with("urn:oid:")
                        || r.contains("://")
                        || crate::path::relative_reference(r).is_some_and(|(t, _)| all.contains(t));
                    if !ok && issues.len() < MAX_ISSUES {
                        issues.push(Issue {
                            path: format!("{path}.reference"),
                            message: "reference must be Type/id (or Type/id/_history/N) of an R4 resource type, an absolute URL, urn:uuid: or #contained".into(),
                        });
                    }
                }
                for (k, child) in map {
                    if k == "contained" {
                        continue;
                    }
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(child, path, all, issues);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(child, path, all, issues);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut path = resource_type.to_owned();
    walk(resource, &mut path, all_types, issues);
    check_contained(resource, resource_type, issues);
}

/// The rules for contained resources the schema cannot express: each has an `id`, unique
/// within the container (a `#id` reference must name one resource), and none contains others
/// (dom-2).
fn check_contained(resource: &Value, resource_type: &str, issues: &mut Vec<Issue>) {
    let Some(Value::Array(list)) = resource.get("contained") else {
        return;
    };
    let mut seen = BTreeSet::new();
    for (i, c) in list.iter().enumerate() {
        let path = format!("{resource_type}.contained[{i}]");
        let message = match c.get("id").and_then(Value::as_str) {
            None => Some("a contained resource needs an id"),
            Some(id) if !seen.insert(id) => Some("contained resource ids must be unique"),
            Some(_) if c.get("contained").is_some() => {
                Some("a contained resource cannot contain resources (dom-2)")
            }
            Some(_) => None,
        };
        if let Some(m) = message
            && issues.len() < MAX_ISSUES
        {
            issues.push(Issue {
                path,
                message: m.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Fhir;
    use serde_json::json;

    #[test]
    fn schema_rules_are_enforced_without_echoing_values() {
        let f = Fhir::load().unwrap();
        let ok = json!({"resourceType":"Patient","name":[{"family":"Doe"}],"gender":"female","birthDate":"1980-01-02"});
        assert_eq!(f.validate("Patient", &ok), Ok(()));
        let cases = [
            (
                json!({"resourceType":"Patient","gender":"secret-gender-canary"}),
                "Patient.gender",
            ),
            (
                json!({"resourceType":"Patient","birthDate":"02/01/1980"}),
                "Patient.birthDate",
            ),
            (json!({"resourceType":"Patient","nickname":"x"}), "Patient"),
            (
                json!({"resourceType":"Patient","name":"Doe"}),
                "Patient.name",
            ),
            (
                json!({"resourceType":"Observation","status":"final"}),
                "Observation",
            ),
            (
                json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Banana/1"}}),
                "Observation.subject.reference",
            ),
            (
                json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/has space"}}),
                "Observation.subject.reference",
            ),
        ];
        for (resource, path) in cases {
            let rt = resource["resourceType"].as_str().unwrap().to_owned();
            let issues = f.validate(&rt, &resource).expect_err(&resource.to_string());
            assert!(
                issues.iter().any(|i| i.path == path),
                "{resource}: {issues:?}"
            );
            assert!(
                !format!("{issues:?}").contains("canary")
                    && !format!("{issues:?}").contains("02/01")
            );
        }
        let obs = json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}});
        assert_eq!(f.validate("Observation", &obs), Ok(()));
    }
}
