use medvault_testkit::e2e::send;
use medvault_testkit::fhir::{assert_outcome, observation, patient};
use serde_json::json;

use crate::MEDVAULT;

#[test]
fn create_read_vread_update_delete_history() {
    let s = MEDVAULT.start();
    let (id, p) = s.create_and_read(&patient("Doe", "Jane"));
    assert_eq!(p["name"][0]["family"], "Doe");
    assert_eq!(p["meta"]["versionId"], "1");

    // Update with the right If-Match.
    let mut p2 = p.clone();
    p2["name"][0]["family"] = json!("Doe-Smith");
    let r = s
        .req(reqwest::Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(p2.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    // Stale If-Match → 412, nothing written.
    let (st, o) = send(
        s.req(reqwest::Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(p2.to_string()),
    );
    assert_eq!(st, 412);
    assert_outcome(&o);
    assert_eq!(s.get(&format!("Patient/{id}")).1["meta"]["versionId"], "2");

    // vread both versions.
    assert_eq!(
        s.get(&format!("Patient/{id}/_history/1")).1["name"][0]["family"],
        "Doe"
    );
    assert_eq!(
        s.get(&format!("Patient/{id}/_history/2")).1["name"][0]["family"],
        "Doe-Smith"
    );
    assert_eq!(s.get(&format!("Patient/{id}/_history/3")).0, 404);

    // Instance history, newest first.
    let (st, h) = s.get(&format!("Patient/{id}/_history"));
    assert_eq!(st, 200);
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 2);
    assert_eq!(h["entry"][0]["resource"]["meta"]["versionId"], "2");

    // Delete → 410 on read; history keeps the versions; vread of old version still works.
    assert_eq!(s.delete(&format!("Patient/{id}")).0, 200);
    let (st, o) = s.get(&format!("Patient/{id}"));
    assert_eq!(st, 410);
    assert_outcome(&o);
    assert_eq!(s.get(&format!("Patient/{id}/_history")).1["total"], 3);
    assert_eq!(s.get(&format!("Patient/{id}/_history/1")).0, 200);
    assert_eq!(
        s.get("Patient?family=doe").1["total"],
        0,
        "deleted resources leave search"
    );
    // Update after delete recreates.
    p2["id"] = json!(id);
    assert_eq!(s.put(&format!("Patient/{id}"), &p2).0, 201);

    // Unknown id → 404; type history counts all versions of the type.
    assert_eq!(s.get("Patient/does-not-exist").0, 404);
    let (_, th) = s.get("Patient/_history");
    assert_eq!(th["total"], 4);
}

#[test]
fn update_as_create_and_conditional_create() {
    let s = MEDVAULT.start();
    let mut p = patient("Client", "Chosen");
    p["id"] = json!("client-chosen-1");
    let (st, v) = s.put("Patient/client-chosen-1", &p);
    assert_eq!(st, 201, "{v}");

    let mut with_mrn = patient("Cond", "Create");
    with_mrn["identifier"] = json!([{"system": "urn:mrn", "value": "C-1"}]);
    let cond = |body: &serde_json::Value| {
        send(
            s.req(reqwest::Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "identifier=urn:mrn|C-1")
                .body(body.to_string()),
        )
    };
    let (st, first) = cond(&with_mrn);
    assert_eq!(st, 201);
    let (st, again) = cond(&with_mrn);
    assert_eq!(st, 200, "the existing resource is returned");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(s.get("Patient?identifier=urn:mrn|C-1").1["total"], 1);
    // A condition that selects nothing in particular is refused, never treated as "match all".
    for bad in ["_count=1", "_summary=count", "nonsense=1"] {
        let (st, o) = send(
            s.req(reqwest::Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", bad)
                .body(with_mrn.to_string()),
        );
        assert_eq!(st, 400, "{bad}: {o}");
    }
    // Two matches → 412.
    s.create(&with_mrn);
    let (st, o) = cond(&with_mrn);
    assert_eq!(st, 412);
    assert_outcome(&o);
}

#[test]
fn clinical_resources_and_return_minimal() {
    let s = MEDVAULT.start();
    let pid = s.create(&patient("Obs", "Owner"));
    let r = s
        .req(reqwest::Method::POST, "Observation")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(observation(&pid, "2345-7", "2024-03-01").to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        loc.contains("/fhir/Observation/") && loc.ends_with("/_history/1"),
        "{loc}"
    );
    assert!(r.text().unwrap().is_empty());
    for body in [
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")}, "code": {"text": "x"}}),
        json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{pid}")}}),
        json!({"resourceType": "Practitioner", "name": [{"family": "House"}]}),
        json!({"resourceType": "Organization", "name": "General"}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": format!("Patient/{pid}")}, "medicationCodeableConcept": {"text": "x"}}),
        json!({"resourceType": "AllergyIntolerance", "patient": {"reference": format!("Patient/{pid}")}}),
        json!({"resourceType": "Immunization", "status": "completed", "vaccineCode": {"text": "x"}, "patient": {"reference": format!("Patient/{pid}")}, "occurrenceDateTime": "2021-01-01"}),
        json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}}),
        json!({"resourceType": "Procedure", "status": "completed", "subject": {"reference": format!("Patient/{pid}")}}),
        json!({"resourceType": "CareTeam", "subject": {"reference": format!("Patient/{pid}")}}),
        json!({"resourceType": "DocumentReference", "status": "current", "subject": {"reference": format!("Patient/{pid}")}, "content": [{"attachment": {"contentType": "text/plain"}}]}),
        json!({"resourceType": "Consent", "status": "active", "scope": {"text": "x"}, "category": [{"text": "x"}], "patient": {"reference": format!("Patient/{pid}")}}),
        json!({"resourceType": "Provenance", "target": [{"reference": format!("Patient/{pid}")}], "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"display": "x"}}]}),
        json!({"resourceType": "Device", "patient": {"reference": format!("Patient/{pid}")}}),
    ] {
        s.create_and_read(&body);
    }
}

#[test]
fn capability_statement_tells_the_truth() {
    let s = MEDVAULT.start();
    let r = reqwest::blocking::get(s.url("metadata")).unwrap();
    assert_eq!(r.status().as_u16(), 200, "metadata is public");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let cs: serde_json::Value = r.json().unwrap();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    for t in [
        "Patient",
        "Practitioner",
        "Organization",
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
        "AllergyIntolerance",
        "Immunization",
        "DiagnosticReport",
        "Procedure",
        "CareTeam",
        "DocumentReference",
        "Consent",
        "Provenance",
        "Device",
    ] {
        assert!(resources.iter().any(|r| r["type"] == t), "{t}");
    }
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "_id",
        "_lastUpdated",
        "identifier",
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
    ] {
        assert!(params.contains(&p), "{p}");
    }
    // Every advertised parameter works (strict handling refuses unknown ones).
    for p in &params {
        let value = match *p {
            "_lastUpdated" | "birthdate" | "death-date" => "ge2000",
            _ => "x",
        };
        let (st, v) = send(
            s.req(reqwest::Method::GET, &format!("Patient?{p}={value}"))
                .header("prefer", "handling=strict"),
        );
        assert!(
            st == 200 || st == 400 && v["issue"][0]["code"] != "not-supported",
            "{p}: {st} {v}"
        );
    }
}
