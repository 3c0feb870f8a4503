//! Every R4 resource type is served, and which key seals it follows its patient: the Patient
//! compartment, then the patient data outside it (issue 17).

use serde_json::{Value, json};

use crate::MEDVAULT;
use medvault_testkit::fhir::patient;

fn r(t: &str, id: &str) -> Value {
    json!({"reference": format!("{t}/{id}")})
}

#[test]
fn every_r4_type_but_the_access_log_and_subscriptions_is_served() {
    let s = MEDVAULT.start();
    let (status, cs) = s.get("metadata");
    assert_eq!(status, 200);
    let types: Vec<&str> = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    // All 146 R4 types; AuditEvent is listed once, read-only.
    assert_eq!(types.len(), 146, "{types:?}");
    assert!(types.contains(&"Subscription"));
    assert_eq!(types.iter().filter(|t| **t == "AuditEvent").count(), 1);

    let pid = s.create(&patient("Typesfamily", "Tia"));
    let p = r("Patient", &pid);
    let practitioner =
        s.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Ng"}]}));
    let pr = r("Practitioner", &practitioner);
    let code = json!({"text": "x"});
    // The types a Synthea record, the hospital workflows and the next capabilities need.
    let bodies = [
        json!({"resourceType": "Claim", "status": "active", "type": code, "use": "claim",
            "patient": p, "created": "2026-01-01", "provider": pr, "priority": code,
            "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "x"}}]}),
        json!({"resourceType": "ExplanationOfBenefit", "status": "active", "type": code,
            "use": "claim", "patient": p, "created": "2026-01-01", "insurer": {"display": "x"},
            "provider": pr, "outcome": "complete",
            "insurance": [{"focal": true, "coverage": {"display": "x"}}]}),
        json!({"resourceType": "MedicationAdministration", "status": "completed",
            "medicationCodeableConcept": code, "subject": p,
            "effectiveDateTime": "2026-01-01T10:00:00Z"}),
        json!({"resourceType": "SupplyDelivery", "status": "completed", "patient": p}),
        json!({"resourceType": "ImagingStudy", "status": "available", "subject": p}),
        json!({"resourceType": "Task", "status": "requested", "intent": "order", "for": p}),
        json!({"resourceType": "MedicationDispense", "status": "completed",
            "medicationCodeableConcept": code, "subject": p}),
        json!({"resourceType": "Schedule", "actor": [pr]}),
        json!({"resourceType": "Appointment", "status": "booked",
            "participant": [{"actor": p, "status": "accepted"}]}),
        json!({"resourceType": "ResearchStudy", "status": "active", "title": "Trial"}),
        json!({"resourceType": "Questionnaire", "status": "active",
            "item": [{"linkId": "1", "type": "string", "text": "How are you?"}]}),
        json!({"resourceType": "QuestionnaireResponse", "status": "completed", "subject": p}),
        json!({"resourceType": "MolecularSequence", "coordinateSystem": 0, "patient": p}),
        json!({"resourceType": "Communication", "status": "completed", "subject": p}),
        json!({"resourceType": "DeviceMetric", "type": code, "category": "measurement"}),
        json!({"resourceType": "Flag", "status": "active", "code": code, "subject": p}),
        json!({"resourceType": "DetectedIssue", "status": "final", "patient": p}),
        json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [{"entity": p}]}),
        json!({"resourceType": "ValueSet", "status": "active"}),
    ];
    for body in &bodies {
        let (_, stored) = s.create_and_read(body);
        assert_eq!(stored["resourceType"], body["resourceType"]);
    }
    // The Slot needs its Schedule.
    let (status, schedules) = s.get("Schedule?_count=1");
    assert_eq!(status, 200, "{schedules}");
    let schedule = schedules["entry"][0]["resource"]["id"].as_str().unwrap();
    s.create_and_read(&json!({"resourceType": "Slot", "status": "free",
        "schedule": r("Schedule", schedule), "start": "2026-01-01T10:00:00Z",
        "end": "2026-01-01T10:15:00Z"}));
    // The newly served types search like the old ones (their parameters come from the R4
    // definitions).
    let (status, claims) = s.get(&format!("Claim?patient={pid}&_summary=count"));
    assert_eq!((status, &claims["total"]), (200, &json!(1)), "{claims}");
    let (status, tasks) = s.get(&format!("Task?patient=Patient/{pid}&status=requested"));
    assert_eq!(status, 200, "{tasks}");
    assert_eq!(tasks["entry"].as_array().map(Vec::len), Some(1), "{tasks}");
    // Number, quantity and uri parameters (issue 17): prefixes, implied precision, units.
    for (value, unit) in [(5.4, "mmol/L"), (7.9, "mmol/L"), (80.0, "kg")] {
        s.create(
            &json!({"resourceType": "Observation", "status": "final", "code": code,
            "subject": p, "valueQuantity": {"value": value, "unit": unit,
            "system": "http://unitsofmeasure.org", "code": unit}}),
        );
    }
    for (query, want) in [
        ("value-quantity=5.4", 1),
        ("value-quantity=gt5|http://unitsofmeasure.org|mmol/L", 2),
        ("value-quantity=ap80||kg", 1),
        ("value-quantity=lt5", 0),
        ("value-quantity=ne5.4|http://unitsofmeasure.org|mmol/L", 1),
    ] {
        let (status, found) = s.get(&format!("Observation?subject={pid}&{query}&_summary=count"));
        assert_eq!(
            (status, &found["total"]),
            (200, &json!(want)),
            "{query}: {found}"
        );
    }
    s.create(&json!({"resourceType": "ValueSet", "status": "active",
        "url": "http://acme.example/fhir/ValueSet/blood-tests"}));
    let (status, below) = s.get("ValueSet?url:below=http://acme.example/fhir&_summary=count");
    assert_eq!((status, &below["total"]), (200, &json!(1)), "{below}");
    let (status, bad) = s.get("Observation?value-quantity=xx5");
    assert_eq!(status, 400, "{bad}");
    let (status, unserved) = s.get("Banana");
    assert_eq!(status, 404, "{unserved}");
}

#[test]
fn patient_data_outside_the_compartment_is_sealed_under_its_patient_and_never_directory_data() {
    let s = MEDVAULT.start();
    let pid = s.create(&patient("Binaryfamily", "Bea"));
    let p = r("Patient", &pid);
    let doc = s.create(
        &json!({"resourceType": "DocumentReference", "status": "current",
        "subject": p, "content": [{"attachment": {"contentType": "text/plain"}}]}),
    );
    let sealed_with_the_patient = [
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8=",
            "securityContext": r("DocumentReference", &doc)}),
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGk=",
            "securityContext": p}),
        json!({"resourceType": "Contract", "subject": [p]}),
        json!({"resourceType": "Bundle", "type": "document", "timestamp": "2026-01-01T00:00:00Z",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6f1c1d4e-0000-4000-8000-000000000001"},
            "entry": [{"fullUrl": "urn:uuid:6f1c1d4e-0000-4000-8000-000000000002",
                "resource": {"resourceType": "Composition", "id": "c1", "status": "final",
                "type": {"text": "note"}, "subject": p, "date": "2026-01-01",
                "author": [{"display": "x"}], "title": "Note"}}]}),
    ];
    let paths: Vec<String> = sealed_with_the_patient
        .iter()
        .map(|b| format!("{}/{}", b["resourceType"].as_str().unwrap(), s.create(b)))
        .collect();
    // A Binary without a patient stays patient data: a clinician with no relationship to
    // anyone cannot read it as directory data (a Practitioner they can).
    let loose =
        s.create(&json!({"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="}));
    let clinician = s.person("types.clinician", "clinician");
    let practitioner = clinician.practitioner.clone().unwrap();
    assert_eq!(
        s.status_as(
            &format!("/fhir/Practitioner/{practitioner}"),
            &clinician.session
        ),
        200
    );
    assert_ne!(
        s.status_as(&format!("/fhir/Binary/{loose}"), &clinician.session),
        200
    );
    // A Binary whose securityContext names nothing stored is refused, not sealed under the
    // node's key.
    let (status, refused) = s.post(
        "Binary",
        &json!({"resourceType": "Binary", "contentType": "text/plain",
            "securityContext": r("DocumentReference", "nothing-here")}),
    );
    assert_eq!(status, 422, "{refused}");

    // Erasing the patient shreds them all.
    let (ok, out, err) = s.run(&["patient", "erase", &pid]);
    assert!(ok, "{out} {err}");
    for path in &paths {
        let (status, v) = s.get(path);
        assert_eq!(status, 410, "{path}: {v}");
    }
    let (status, _) = s.get(&format!("Binary/{loose}"));
    assert_eq!(
        status, 200,
        "the loose Binary is the node's, not the patient's"
    );
}

#[test]
fn binaries_bundles_and_groups_are_no_more_visible_than_what_they_stand_for() {
    let s = MEDVAULT.start();
    let [pa, pb] = s.create_patients([("Standfam", "Ann"), ("Standfam", "Ben")]);
    let doc = s.person("stand.doc", "clinician");
    s.care_team(doc.practitioner.as_deref().unwrap(), &pa);
    let read = |path: &str| {
        s.get_as(&format!("/fhir/{path}"), &doc.session, Some("TREAT"))
            .0
    };
    // A psychiatric note the clinician may not see, and its bytes.
    let note = s.create(&json!({"resourceType": "DocumentReference", "status": "current",
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]},
        "subject": r("Patient", &pa), "content": [{"attachment": {"contentType": "text/plain"}}]}));
    let bytes = s.create(
        &json!({"resourceType": "Binary", "contentType": "text/plain",
        "data": "cHN5Y2g=", "securityContext": r("DocumentReference", &note)}),
    );
    let plain = s.create(
        &json!({"resourceType": "Binary", "contentType": "text/plain",
        "data": "b2s=", "securityContext": r("Patient", &pa)}),
    );
    assert_eq!(read(&format!("DocumentReference/{note}")), 404);
    assert_eq!(
        read(&format!("Binary/{bytes}")),
        404,
        "the bytes are as hidden as the note"
    );
    assert_eq!(read(&format!("Binary/{plain}")), 200);
    // Writing a Binary against the hidden note answers as for a missing one: no existence
    // oracle.
    let probe = |target: &str| {
        s.call(
            reqwest::Method::POST,
            "/fhir/Binary",
            &doc.session,
            Some("TREAT"),
            Some(
                &json!({"resourceType": "Binary", "contentType": "text/plain",
                "securityContext": {"reference": target}}),
            ),
        )
        .0
    };
    assert_eq!(
        probe(&format!("DocumentReference/{note}")),
        probe("DocumentReference/nothing")
    );
    // A Group or a stored Bundle naming both patients is seen only by who may see both.
    let group = s.create(
        &json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": r("Patient", &pa)}, {"entity": r("Patient", &pb)}]}),
    );
    let bundle = s.create(&json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": pa}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "viral load"},
            "subject": r("Patient", &pb)}}]}));
    let one = s.create(
        &json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": r("Patient", &pa)}]}),
    );
    assert_eq!(read(&format!("Group/{one}")), 200);
    assert_eq!(read(&format!("Group/{group}")), 404);
    assert_eq!(read(&format!("Bundle/{bundle}")), 404);
    let own = s.patient_session("stand.ann", &pa);
    assert_eq!(s.status_as(&format!("/fhir/Group/{group}"), &own), 404);
    assert_eq!(s.status_as(&format!("/fhir/Group/{one}"), &own), 200);
    let (status, found) = s.get_as(
        &format!("/fhir/Group?member=Patient/{pb}"),
        &doc.session,
        Some("TREAT"),
    );
    assert_eq!(status, 200);
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "{found}");
    // A securityContext that is no stored resource's relative reference is refused.
    for target in [
        "https://elsewhere.example/fhir/Patient/x".to_owned(),
        "#p".to_owned(),
        "Patient/ghost".to_owned(),
    ] {
        let (status, v) = s.post(
            "Binary",
            &json!({"resourceType": "Binary",
            "contentType": "text/plain", "securityContext": {"reference": target}}),
        );
        assert_eq!(status, 422, "{target}: {v}");
    }
}
