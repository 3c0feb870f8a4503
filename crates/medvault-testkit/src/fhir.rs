//! FHIR resources tests write, and what they read out of the answers.

use serde_json::{Value, json};

/// A female Patient born 1980-05-17 with one name.
#[must_use]
pub fn patient(family: &str, given: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": "female", "birthDate": "1980-05-17"})
}

/// A final laboratory Observation of `patient_id` with the LOINC `code` at `date`.
#[must_use]
pub fn observation(patient_id: &str, code: &str, date: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": 7.2, "unit": "mmol/L"}
    })
}

/// An active privacy Consent of `patient` (opt-in) with the base `provision`, dated `when`.
#[must_use]
pub fn consent(patient: &str, provision: Value, when: &str) -> Value {
    json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": when,
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": provision,
    })
}

/// A consent actor's role (a v3 ParticipationType code: `PRCP` primary information recipient,
/// `IRCP` information recipient).
#[must_use]
pub fn participation(code: &str) -> Value {
    json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": code}]})
}

/// `r` with the v3 ActCode security label `code` (e.g. `HIV`).
#[must_use]
pub fn labelled(mut r: Value, code: &str) -> Value {
    r["meta"] = json!({"security": [{
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code}]});
    r
}

/// A Bundle of `kind` (`transaction`, `batch`) with `entries`.
#[must_use]
pub fn bundle(kind: &str, entries: Value) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

/// The ids of the resources in a search Bundle (outcome entries left out).
#[must_use]
pub fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] != "outcome")
                .filter_map(|x| x["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of a search Bundle's `match` entries.
#[must_use]
pub fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    e["resource"]["id"]
                        .as_str()
                        .expect("a matched resource's id")
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `v`, sorted.
#[must_use]
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The `response.status` of each entry of a batch or transaction response.
#[must_use]
pub fn entry_statuses(bundle: &Value) -> Vec<&str> {
    bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().expect("an entry's status"))
        .collect()
}

/// Asserts an OperationOutcome with an error issue and diagnostics.
pub fn assert_outcome(v: &Value) {
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert!(v["issue"][0]["severity"] == "error", "{v}");
    assert!(
        !v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
}

/// The first issue's diagnostics (which must be there) with each of `ids` replaced by `ID`: what
/// two answers must share when one may not tell a hidden resource from a missing one.
#[must_use]
pub fn diagnostics_shape(v: &Value, ids: &[&str]) -> String {
    let mut t = v["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_else(|| panic!("no diagnostics in {v}"))
        .to_owned();
    for id in ids {
        t = t.replace(id, "ID");
    }
    t
}
