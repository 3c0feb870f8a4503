//! PATCH, conditional update and delete, version-aware writes, `Prefer: return`, `_format`,
//! and the operations `$validate`, `$meta(-add|-delete)` and `Patient/[id]/$everything`.

use medvault_testkit::e2e::send;
use medvault_testkit::fhir::{bundle, entry_statuses, ids, observation, patient, sorted};
use reqwest::Method;
use serde_json::{Value, json};

use crate::MEDVAULT;

fn patch(
    s: &medvault_testkit::e2e::Server,
    path: &str,
    ct: &str,
    body: &Value,
    if_match: Option<&str>,
) -> (u16, Value) {
    let mut rb = s
        .req(Method::PATCH, path)
        .header("content-type", ct)
        .body(body.to_string());
    if let Some(v) = if_match {
        rb = rb.header("if-match", v);
    }
    send(rb)
}

#[test]
fn patches_are_applied_version_aware_and_validated() {
    let s = MEDVAULT.start();
    let id = s.create(&patient("Patchfam", "Pat"));
    let path = format!("Patient/{id}");
    let json_patch = json!([{"op": "replace", "path": "/birthDate", "value": "1999-09-09"}]);
    let (st, v) = patch(
        &s,
        &path,
        "application/json-patch+json",
        &json_patch,
        Some("W/\"1\""),
    );
    assert_eq!(
        (st, &v["birthDate"], &v["meta"]["versionId"]),
        (200, &json!("1999-09-09"), &json!("2")),
        "{v}"
    );
    let (st, v) = patch(
        &s,
        &path,
        "application/json-patch+json",
        &json_patch,
        Some("W/\"1\""),
    );
    assert_eq!(st, 412, "a stale If-Match: {v}");
    let fhirpath = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"},
        {"name": "path", "valueString": "Patient.gender"},
        {"name": "value", "valueCode": "other"}]}]});
    let (st, v) = patch(&s, &path, "application/fhir+json", &fhirpath, None);
    assert_eq!((st, &v["gender"]), (200, &json!("other")), "{v}");
    let (_, read) = s.get(&path);
    assert_eq!(
        (&read["gender"], &read["meta"]["versionId"]),
        (&json!("other"), &json!("3"))
    );
    for (ct, body, want) in [
        ("text/plain", json!([]), 415),
        ("application/json-patch+json", json!({"op": "add"}), 400),
        (
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/id", "value": "x"}]),
            422,
        ),
        (
            "application/json-patch+json",
            json!([{"op": "test", "path": "/gender", "value": "male"}]),
            422,
        ),
        (
            "application/json-patch+json",
            json!([{"op": "replace", "path": "/gender", "value": 7}]),
            400,
        ),
        (
            "application/fhir+json",
            json!({"resourceType": "Patient"}),
            400,
        ),
    ] {
        let (st, v) = patch(&s, &path, ct, &body, None);
        assert_eq!(st, want, "{ct} {body}: {v}");
        assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
        assert!(
            !v.to_string().contains("Patchfam"),
            "no PHI in the error: {v}"
        );
    }
    assert_eq!(
        s.get(&path).1["meta"]["versionId"],
        "3",
        "refused patches wrote nothing"
    );
    let missing = patch(
        &s,
        "Patient/nope",
        "application/json-patch+json",
        &json_patch,
        None,
    );
    assert_eq!(missing.0, 404);
    // Conditional patch.
    let (st, v) = patch(
        &s,
        "Patient?family=patchfam",
        "application/json-patch+json",
        &json!([{"op": "add", "path": "/active", "value": true}]),
        None,
    );
    assert_eq!((st, &v["active"]), (200, &json!(true)), "{v}");
}

#[test]
fn conditional_writes_and_preferences() {
    let s = MEDVAULT.start();
    let mut p = patient("Condfam", "Con");
    p["identifier"] = json!([{"system": "urn:mrn", "value": "C-9"}]);
    let put = |body: &Value| s.put("Patient?identifier=urn:mrn|C-9", body);
    let (st, v) = put(&p);
    assert_eq!(st, 201, "nothing matches: created {v}");
    let id = v["id"].as_str().unwrap().to_owned();
    p["gender"] = json!("male");
    let (st, v) = put(&p);
    assert_eq!(
        (st, v["id"].as_str(), &v["meta"]["versionId"]),
        (200, Some(id.as_str()), &json!("2")),
        "{v}"
    );
    let mut other = p.clone();
    other["id"] = json!("someone-else");
    assert_eq!(put(&other).0, 400, "the body's id is not the match's");
    s.create(&p);
    assert_eq!(put(&p).0, 412, "two matches");
    assert_eq!(
        s.put("Patient", &p).0,
        400,
        "a conditional update needs a search"
    );
    // Conditional delete.
    assert_eq!(s.delete("Patient?identifier=urn:mrn|C-9").0, 412);
    let lone = s.create(&patient("Lonefam", "L"));
    let (st, v) = s.delete("Patient?family=lonefam");
    assert_eq!(st, 200, "{v}");
    assert_eq!(s.get(&format!("Patient/{lone}")).0, 410);
    assert_eq!(
        s.delete("Patient?family=lonefam").0,
        404,
        "nothing left to match"
    );
    // Version-aware delete.
    let d = s.create(&patient("Delfam", "D"));
    let stale = s
        .req(Method::DELETE, &format!("Patient/{d}"))
        .header("if-match", "W/\"7\"");
    assert_eq!(send(stale).0, 412);
    let fresh = s
        .req(Method::DELETE, &format!("Patient/{d}"))
        .header("if-match", "W/\"1\"");
    assert_eq!(send(fresh).0, 200);
    // Prefer: return=…
    let created = |prefer: &str| {
        send(
            s.req(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("prefer", prefer)
                .body(patient("Preffam", "P").to_string()),
        )
    };
    let (st, v) = created("return=OperationOutcome");
    assert_eq!(
        (st, &v["resourceType"]),
        (201, &json!("OperationOutcome")),
        "{v}"
    );
    let (st, v) = created("return=minimal");
    assert_eq!((st, v), (201, Value::Null));
    let (st, v) = created("return=representation");
    assert_eq!((st, &v["resourceType"]), (201, &json!("Patient")));
    // _format and Accept: JSON only.
    assert_eq!(s.get(&format!("Patient/{id}?_format=json")).0, 200);
    assert_eq!(
        s.get(&format!("Patient/{id}?_format=application/fhir%2Bjson"))
            .0,
        200
    );
    let (st, v) = s.get(&format!("Patient/{id}?_format=xml"));
    assert_eq!((st, &v["resourceType"]), (406, &json!("OperationOutcome")));
    let xml = s
        .req(Method::GET, &format!("Patient/{id}"))
        .header("accept", "application/fhir+xml");
    assert_eq!(send(xml).0, 406);
    let any = s
        .req(Method::GET, &format!("Patient/{id}"))
        .header("accept", "application/fhir+xml, */*;q=0.1");
    assert_eq!(send(any).0, 200);
}

#[test]
fn a_transaction_patches_and_writes_conditionally() {
    let s = MEDVAULT.start();
    let a = s.create(&patient("Txfam", "A"));
    let gone = s.create(&patient("Txgone", "G"));
    let patch_doc = json!([{"op": "replace", "path": "/gender", "value": "male"}]);
    let data = base64_encode(patch_doc.to_string().as_bytes());
    let mut cond = patient("Txcond", "C");
    cond["identifier"] = json!([{"system": "urn:mrn", "value": "T-1"}]);
    let tx = bundle(
        "transaction",
        json!([
            {"request": {"method": "PATCH", "url": format!("Patient/{a}")},
             "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}},
            {"fullUrl": "urn:uuid:c0ffee00-0000-4000-8000-000000000001",
             "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|T-1"}, "resource": cond},
            {"request": {"method": "DELETE", "url": "Patient?family=txgone"}},
            {"request": {"method": "POST", "url": "Observation"},
             "resource": observation("urn:uuid:c0ffee00-0000-4000-8000-000000000001", "2345-7", "2026-01-01")},
        ]),
    );
    let mut tx = tx;
    tx["entry"][3]["resource"]["subject"]["reference"] =
        json!("urn:uuid:c0ffee00-0000-4000-8000-000000000001");
    let (st, v) = s.post("", &tx);
    assert_eq!(st, 200, "{v}");
    let statuses = entry_statuses(&v);
    assert_eq!(
        statuses.iter().map(|x| &x[..3]).collect::<Vec<_>>(),
        ["200", "201", "200", "201"],
        "{v}"
    );
    assert_eq!(s.get(&format!("Patient/{a}")).1["gender"], "male");
    assert_eq!(s.get(&format!("Patient/{gone}")).0, 410);
    let cond_id = ids(&s.get("Patient?identifier=urn:mrn|T-1").1);
    let (_, obs) = s.get(&format!("Observation?subject=Patient/{}", cond_id[0]));
    assert_eq!(
        ids(&obs).len(),
        1,
        "the reference to the conditional update's fullUrl was resolved"
    );
    // A failing conditional entry writes nothing of the transaction.
    let bad = bundle(
        "transaction",
        json!([
            {"request": {"method": "POST", "url": "Patient"}, "resource": patient("Txnever", "N")},
            {"request": {"method": "DELETE", "url": "Patient?family=nobody-at-all"}},
        ]),
    );
    assert_eq!(s.post("", &bad).0, 404);
    assert!(ids(&s.get("Patient?family=txnever").1).is_empty());
}

fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn validate_and_meta_operations() {
    let s = MEDVAULT.start();
    let (st, v) = s.post("Patient/$validate", &patient("Valfam", "V"));
    assert_eq!(
        (st, &v["issue"][0]["severity"]),
        (200, &json!("information")),
        "{v}"
    );
    let mut bad = patient("Valfam", "V");
    bad["gender"] = json!(42);
    let (st, v) = s.post("Patient/$validate", &bad);
    assert_eq!(
        (st, &v["issue"][0]["severity"]),
        (200, &json!("error")),
        "{v}"
    );
    let wrapped = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": bad}, {"name": "mode", "valueCode": "create"}]});
    assert_eq!(
        s.post("Patient/$validate", &wrapped).1["issue"][0]["severity"],
        "error"
    );
    assert!(
        ids(&s.get("Patient?family=valfam").1).is_empty(),
        "$validate stores nothing"
    );

    let id = s.create(&patient("Metafam", "M"));
    let meta_of = |v: &Value| v["parameter"][0]["valueMeta"].clone();
    let add = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "tag": [{"system": "urn:t", "code": "a"}, {"system": "urn:t", "code": "b"}],
        "profile": ["http://example.org/p"]}}]});
    let (st, v) = s.post(&format!("Patient/{id}/$meta-add"), &add);
    assert_eq!(st, 200, "{v}");
    assert_eq!(meta_of(&v)["tag"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, again) = s.post(&format!("Patient/{id}/$meta-add"), &add);
    assert_eq!(
        meta_of(&again)["tag"].as_array().map(Vec::len),
        Some(2),
        "added once"
    );
    let del = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "tag": [{"system": "urn:t", "code": "a"}]}}]});
    let (_, v) = s.post(&format!("Patient/{id}/$meta-delete"), &del);
    assert_eq!(
        meta_of(&v)["tag"],
        json!([{"system": "urn:t", "code": "b"}]),
        "{v}"
    );
    let (st, v) = s.get(&format!("Patient/{id}/$meta"));
    assert_eq!(
        (st, &meta_of(&v)["profile"]),
        (200, &json!(["http://example.org/p"])),
        "{v}"
    );
    assert_eq!(
        ids(&s.get("Patient?_tag=urn:t|b").1),
        vec![id.clone()],
        "the new version is indexed"
    );
    assert_eq!(
        s.post(
            &format!("Patient/{id}/$meta-add"),
            &json!({"resourceType": "Parameters"})
        )
        .0,
        400
    );
    assert_eq!(s.post(&format!("Patient/{id}/$nonesuch"), &add).0, 404);
}

#[test]
fn everything_about_one_patient() {
    let s = MEDVAULT.start();
    let [p, q] = s.create_patients([("Evfam", "E"), ("Otherev", "O")]);
    let dr = s.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}));
    let mut o1 = observation(&p, "2345-7", "2026-01-01");
    o1["performer"] = json!([{"reference": format!("Practitioner/{dr}")}]);
    let o1 = s.create(&o1);
    let o2 = s.create(&observation(&p, "718-7", "2026-01-02"));
    let cond = s.create(&json!({"resourceType": "Condition",
        "subject": {"reference": format!("Patient/{p}")},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}}));
    s.create(&observation(&q, "2345-7", "2026-01-03"));
    let (st, v) = s.get(&format!("Patient/{p}/$everything"));
    assert_eq!(st, 200, "{v}");
    let got = ids(&v);
    assert_eq!(got[0], p, "the patient first");
    assert_eq!(
        sorted(got.clone()),
        sorted(vec![
            p.clone(),
            o1.clone(),
            o2.clone(),
            cond.clone(),
            dr.clone()
        ]),
        "{v}"
    );
    assert_eq!(v["total"], 5);
    let (_, v) = s.get(&format!("Patient/{p}/$everything?_type=Observation"));
    assert_eq!(sorted(ids(&v)), sorted(vec![o1.clone(), o2.clone()]));
    let (_, page) = s.get(&format!("Patient/{p}/$everything?_count=2"));
    assert_eq!((ids(&page).len(), &page["total"]), (2, &json!(5)));
    assert!(
        page["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    let (st, _) = s.get(&format!("Patient/{p}/$everything?start=2020"));
    assert_eq!(st, 400);
    assert_eq!(s.get("Patient/nope/$everything").0, 404);
    // A clinician without a care relationship: as if the patient did not exist.
    let doc = s.person("dr.ev", "clinician");
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{p}/$everything"), &doc.session),
        404
    );
}

#[test]
fn messages_are_stored_and_answered() {
    let s = MEDVAULT.start();
    let p = s.create(&patient("Msgfam", "M"));
    let message = json!({"resourceType": "Bundle", "id": "adt-a01-0001", "type": "message",
    "timestamp": "2026-12-06T10:00:00Z",
    "entry": [
        {"fullUrl": "urn:uuid:6a0f4a0e-0000-4000-8000-000000000001", "resource": {
            "resourceType": "MessageHeader",
            "eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "A01"},
            "source": {"endpoint": "https://adt.example/ward"},
            "focus": [{"reference": format!("Patient/{p}")}]}},
        {"fullUrl": "urn:uuid:6a0f4a0e-0000-4000-8000-000000000002", "resource": {
            "resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": format!("Patient/{p}")}}},
    ]});
    let (st, answer) = s.post("$process-message", &message);
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["type"], "message");
    let header = &answer["entry"][0]["resource"];
    assert_eq!(
        (
            &header["response"]["identifier"],
            &header["response"]["code"]
        ),
        (&json!("adt-a01-0001"), &json!("ok"))
    );
    assert_eq!(header["eventCoding"]["code"], "A01");
    let (st, stored) = s.get("Bundle/adt-a01-0001");
    assert_eq!((st, &stored["type"]), (200, &json!("message")), "{stored}");
    assert_eq!(
        s.post("$process-message", &message).0,
        200,
        "the same message again"
    );
    assert_eq!(
        s.get("Bundle/adt-a01-0001/_history").1["total"],
        1,
        "stored once"
    );
    let mut other = message.clone();
    other["timestamp"] = json!("2026-12-06T11:00:00Z");
    assert_eq!(s.post("$process-message", &other).0, 409);
    let mut no_header = message.clone();
    no_header["entry"] = json!([message["entry"][1]]);
    assert_eq!(s.post("$process-message", &no_header).0, 400);
    assert_eq!(s.post("$process-message", &patient("X", "Y")).0, 400);
}
