use serde_json::json;

use medvault_testkit::fhir::{assert_outcome, bundle, entry_statuses, ids, patient};

use crate::MEDVAULT;

#[test]
fn transaction_resolves_references_and_is_all_or_nothing() {
    let s = MEDVAULT.start();
    let tx = bundle(
        "transaction",
        json!([
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": patient("Trans", "Action"),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "Patient?family=trans"}}
        ]),
    );
    let (st, resp) = s.post("", &tx);
    assert_eq!(st, 200, "{resp}");
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(
        entries[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201")
    );
    let pid = entries[0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        entries[1]["resource"]["subject"]["reference"],
        format!("Patient/{pid}")
    );
    assert_eq!(
        entries[2]["resource"]["total"], 1,
        "GET runs after the writes"
    );
    let (_, obs) = s.get(&format!("Observation?patient={pid}"));
    assert_eq!(obs["total"], 1);

    // One bad entry: nothing from the transaction is kept.
    let bad = bundle(
        "transaction",
        json!([
            {"resource": patient("Never", "Stored"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "gender": "not-a-gender"}, "request": {"method": "POST", "url": "Patient"}}
        ]),
    );
    let (st, o) = s.post("", &bad);
    assert_eq!(st, 400);
    assert_outcome(&o);
    assert!(
        o["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("entry 1"),
        "{o}"
    );
    assert_eq!(s.get("Patient?family=never").1["total"], 0);
    // A failing If-Match inside a transaction also rolls everything back.
    let bad = bundle(
        "transaction",
        json!([
            {"resource": patient("Never", "Again"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": pid}, "request": {"method": "PUT", "url": format!("Patient/{pid}"), "ifMatch": "W/\"9\""}}
        ]),
    );
    assert_eq!(s.post("", &bad).0, 412);
    assert_eq!(s.get("Patient?family=never").1["total"], 0);
}

#[test]
fn batch_runs_entries_independently() {
    let s = MEDVAULT.start();
    let batch = bundle(
        "batch",
        json!([
            {"resource": patient("Batch", "Good"), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "birthDate": "yesterday"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/nope"}},
            {"request": {"method": "GET", "url": "Banana/1"}}
        ]),
    );
    let (st, resp) = s.post("", &batch);
    assert_eq!(st, 200, "{resp}");
    assert_eq!(resp["type"], "batch-response");
    let statuses = entry_statuses(&resp);
    assert!(
        statuses[0].starts_with("201")
            && statuses[1].starts_with("400")
            && statuses[2].starts_with("404")
            && statuses[3].starts_with("404"),
        "{statuses:?}"
    );
    assert_eq!(
        resp["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(ids(&s.get("Patient?family=batch").1).len(), 1);
}
