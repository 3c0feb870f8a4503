//! Bulk Data Access v2 `$export`: kick-off, status, manifest, ndjson files, cancel, limits, and
//! that an export passes the access policy and is accounted for in the access log.

use medvault_testkit::e2e::{Server, send};
use medvault_testkit::fhir::{observation, sorted};
use reqwest::Method;
use serde_json::{Value, json};

use crate::MEDVAULT;

/// Kicks off `path` (from the server root) as `bearer`: the status URL, or the refusal.
fn kick_off(s: &Server, path: &str, bearer: &str) -> Result<String, (u16, Value)> {
    let rb = s
        .anonymous(Method::GET, path)
        .bearer_auth(bearer)
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json");
    let resp = rb.send().unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("content-location")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = resp.json().unwrap_or(Value::Null);
    match (status, location) {
        (202, Some(l)) => Ok(l),
        _ => Err((status, body)),
    }
}

/// Polls a status URL until the manifest is ready.
fn manifest(status_url: &str, bearer: &str) -> Value {
    let client = reqwest::blocking::Client::new();
    for _ in 0..300 {
        let resp = client.get(status_url).bearer_auth(bearer).send().unwrap();
        match resp.status().as_u16() {
            202 => {
                assert!(resp.headers().get("x-progress").is_some());
                assert!(resp.headers().get("retry-after").is_some());
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            200 => return resp.json().unwrap(),
            other => panic!("status {other}: {}", resp.text().unwrap_or_default()),
        }
    }
    panic!("the export did not finish");
}

/// Every resource in a manifest's files, by type (the counts checked against the lines).
fn download(manifest: &Value, bearer: &str) -> Vec<(String, Value)> {
    let client = reqwest::blocking::Client::new();
    let mut out = Vec::new();
    for f in manifest["output"].as_array().unwrap() {
        let resp = client
            .get(f["url"].as_str().unwrap())
            .bearer_auth(bearer)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
        let text = resp.text().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, f["count"].as_u64().unwrap(), "{f}");
        for l in lines {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["resourceType"], f["type"]);
            out.push((f["type"].as_str().unwrap().to_owned(), v));
        }
    }
    out
}

/// A whole export as `bearer`: kicked off, polled, downloaded, then deleted.
fn export(s: &Server, path: &str, bearer: &str) -> Vec<(String, Value)> {
    let url = kick_off(s, path, bearer).unwrap();
    let found = download(&manifest(&url, bearer), bearer);
    let gone = reqwest::blocking::Client::new()
        .delete(&url)
        .bearer_auth(bearer)
        .send()
        .unwrap();
    assert_eq!(gone.status().as_u16(), 202);
    found
}

fn ids_of(found: &[(String, Value)], rt: &str) -> Vec<String> {
    sorted(
        found
            .iter()
            .filter(|(t, _)| t == rt)
            .map(|(_, v)| v["id"].as_str().unwrap().to_owned())
            .collect(),
    )
}

#[test]
fn exports_at_every_level_pass_the_policy_and_are_logged() {
    let s = MEDVAULT.start();
    let [p, q] = s.create_patients([("Bulkone", "A"), ("Bulktwo", "B")]);
    let o1 = s.create(&observation(&p, "2345-7", "2026-01-01"));
    let o2 = s.create(&observation(&p, "718-7", "2026-01-02"));
    let o3 = s.create(&observation(&q, "2345-7", "2026-01-03"));
    let org = s.create(&json!({"resourceType": "Organization", "name": "Bulk Org"}));
    let group = s.create(
        &json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{p}")}}]}),
    );
    let admin = s.token.clone();

    // System level, two types: everything of them.
    let url = kick_off(&s, "/fhir/$export?_type=Patient,Observation", &admin).unwrap();
    assert!(url.contains("/fhir/$export-status/"), "{url}");
    let m = manifest(&url, &admin);
    let client = reqwest::blocking::Client::new();
    assert_eq!(m["requiresAccessToken"], true);
    assert!(
        m["request"]
            .as_str()
            .unwrap()
            .ends_with("$export?_type=Patient,Observation")
    );
    let found = download(&m, &admin);
    assert_eq!(
        ids_of(&found, "Patient"),
        sorted(vec![p.clone(), q.clone()])
    );
    assert_eq!(
        ids_of(&found, "Observation"),
        sorted(vec![o1.clone(), o2.clone(), o3.clone()])
    );
    assert!(
        ids_of(&found, "Organization").is_empty(),
        "_type limits the types"
    );

    // Without _type: every type, Organization included; Patient level: compartments only.
    let all = export(&s, "/fhir/$export", &admin);
    assert_eq!(ids_of(&all, "Organization"), vec![org.clone()]);
    let pl = export(&s, "/fhir/Patient/$export", &admin);
    assert!(
        ids_of(&pl, "Organization").is_empty(),
        "outside every compartment"
    );
    assert_eq!(ids_of(&pl, "Observation").len(), 3);

    // Group level: the member's compartment only; _typeFilter narrows.
    let g = export(&s, &format!("/fhir/Group/{group}/$export"), &admin);
    assert_eq!(ids_of(&g, "Patient"), vec![p.clone()]);
    assert_eq!(
        ids_of(&g, "Observation"),
        sorted(vec![o1.clone(), o2.clone()])
    );
    // A member named twice, and the Group in each member's compartment: each resource once.
    let twice = s.create(
        &json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{p}")}},
                   {"entity": {"reference": format!("Patient/{q}")}},
                   {"entity": {"reference": "Patient/not-a-patient"}}]}),
    );
    let t = export(
        &s,
        &format!("/fhir/Group/{twice}/$export?_type=Group,Patient"),
        &admin,
    );
    assert_eq!(
        ids_of(&t, "Group").len(),
        ids_of(&t, "Group")
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
    assert_eq!(ids_of(&t, "Patient"), sorted(vec![p.clone(), q.clone()]));
    // Each patient's accounting of disclosures names the exports that held their data.
    let (_, disclosures) = s.get(&format!("AuditEvent?patient={p}&_count=200"));
    assert!(
        disclosures.to_string().contains("bulk-export-disclosure"),
        "{disclosures}"
    );
    let filtered = export(
        &s,
        "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcode%3D718-7",
        &admin,
    );
    assert_eq!(ids_of(&filtered, "Observation"), vec![o2.clone()]);

    // Bad kick-offs.
    let no_async = send(s.req(Method::GET, "$export"));
    assert_eq!(no_async.0, 400, "{}", no_async.1);
    for (path, want) in [
        ("/fhir/$export?_type=Banana", 400),
        ("/fhir/$export?_outputFormat=text/csv", 400),
        ("/fhir/$export?_since=yesterday", 400),
        (
            "/fhir/$export?_typeFilter=Observation%3Fsubject.name%3Dx&_type=Observation",
            400,
        ),
        ("/fhir/$export?nonesuch=1", 400),
        ("/fhir/Observation/$export", 404),
    ] {
        let (st, v) = kick_off(&s, path, &admin).unwrap_err();
        assert_eq!(
            (st, &v["resourceType"]),
            (want, &json!("OperationOutcome")),
            "{path}: {v}"
        );
    }
    let (st, _) = kick_off(&s, "/fhir/Group/nope/$export", &admin).unwrap_err();
    assert_eq!(st, 404, "an unknown group is refused at kick-off");

    // A clinician without a care relationship exports nothing of either patient.
    let dr = s.person("dr.bulk", "clinician");
    let url = kick_off(&s, "/fhir/$export?_type=Patient,Observation", &dr.session).unwrap();
    let theirs = download(&manifest(&url, &dr.session), &dr.session);
    assert!(theirs.is_empty(), "{theirs:?}");
    // Another principal cannot see or read someone else's job.
    let other = s.new_token("admin");
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&other)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // A patient's own session may not bulk export.
    let ps = s.patient_session("pat.bulk", &p);
    assert_eq!(kick_off(&s, "/fhir/$export", &ps).unwrap_err().0, 403);

    // Cancel/delete: gone afterwards, files too.
    let url = kick_off(&s, "/fhir/$export?_type=Patient", &other).unwrap();
    let m = manifest(&url, &other);
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(
        client
            .delete(&url)
            .bearer_auth(&other)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        202
    );
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&other)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        client
            .get(&file)
            .bearer_auth(&other)
            .send()
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    // Kept jobs are bounded per requester.
    for _ in 0..4 {
        let u = kick_off(&s, "/fhir/$export?_type=Organization", &other).unwrap();
        manifest(&u, &other);
    }
    let (st, v) = kick_off(&s, "/fhir/$export?_type=Organization", &other).unwrap_err();
    assert_eq!(st, 429, "{v}");

    // The access log: the kick-offs, each file served, and each job's end with its counts.
    let (_, log) = s.get("AuditEvent?_count=500");
    let text = log.to_string();
    assert!(text.contains("bulk-export-complete"), "{text}");
    let ended: Vec<&Value> = log["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|e| {
            e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.starts_with("bulk-export-complete"))
        })
        .collect();
    assert!(!ended.is_empty());
    // The first system export (oldest of them, so last): two patients, five resources.
    let first = ended.last().unwrap().to_string();
    assert!(
        first.contains(r#"{"type":"patients","valueString":"2"}"#),
        "{first}"
    );
    assert!(
        first.contains(r#"{"type":"resources","valueString":"5"}"#),
        "{first}"
    );
    assert!(text.contains("bulk-file"), "{text}");
}

/// Serves `files` (path → body) over HTTP on loopback; the base URL.
fn file_server(files: Vec<(&'static str, String)>) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split(' ').nth(1).unwrap_or("/").to_owned();
            let answer = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_bulk_import_pulls_ndjson_files_all_or_nothing_each() {
    let s = MEDVAULT.start();
    let patients = [
        json!({"resourceType": "Patient", "id": "imp-1", "name": [{"family": "Pulled"}]}),
        json!({"resourceType": "Patient", "id": "imp-2", "name": [{"family": "Pulled"}]}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n");
    let good_obs = observation("imp-1", "2345-7", "2026-01-01").to_string();
    let bad = format!("{good_obs}\n{{\"resourceType\": \"Observation\", \"status\": 7}}");
    let base = file_server(vec![
        ("/patients.ndjson", patients),
        ("/obs.ndjson", good_obs),
        ("/bad.ndjson", bad),
        (
            "/sub.ndjson",
            json!({"resourceType": "Subscription", "status": "requested", "reason": "x",
                "criteria": "Observation?code=1",
                "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}})
            .to_string(),
        ),
    ]);
    let params = |inputs: &[(&str, &str)]| {
        let mut p = vec![json!({"name": "inputFormat", "valueCode": "application/fhir+ndjson"})];
        for (t, path) in inputs {
            p.push(json!({"name": "input", "part": [
                {"name": "type", "valueCode": t},
                {"name": "url", "valueUrl": format!("{base}{path}")}]}));
        }
        json!({"resourceType": "Parameters", "parameter": p})
    };
    let kick = |body: &Value| {
        let resp = s
            .req(Method::POST, "$import")
            .header("content-type", "application/fhir+json")
            .header("prefer", "respond-async")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("content-location")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, location)
    };
    let (st, url) = kick(&params(&[
        ("Patient", "/patients.ndjson"),
        ("Observation", "/obs.ndjson"),
        ("Observation", "/bad.ndjson"),
        ("Observation", "/missing.ndjson"),
    ]));
    assert_eq!(st, 202);
    let report = manifest(&url.unwrap(), &s.token);
    assert_eq!(report["output"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["output"][0]["count"], 2);
    assert_eq!(report["error"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(s.get("Patient/imp-2").0, 200);
    let (_, obs) = s.get("Observation?subject=Patient/imp-1");
    assert_eq!(
        obs["total"], 1,
        "the bad file wrote nothing, not even its good line"
    );

    // Inputs must be https (http only on loopback); the type named must be the lines' type.
    let mut remote = params(&[]);
    remote["parameter"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "input", "part": [
        {"name": "type", "valueCode": "Patient"},
        {"name": "url", "valueUrl": "http://example.com/x.ndjson"}]}));
    assert_eq!(kick(&remote).0, 422);
    let (_, url) = kick(&params(&[("Subscription", "/sub.ndjson")]));
    let report = manifest(&url.unwrap(), &s.token);
    assert!(
        report["error"].to_string().contains("through the API"),
        "{report}"
    );
    let (_, url) = kick(&params(&[("Observation", "/patients.ndjson")]));
    let report = manifest(&url.unwrap(), &s.token);
    assert_eq!(report["error"].as_array().unwrap().len(), 1, "{report}");
    // A clinician may not import.
    let dr = s.person("dr.import", "clinician");
    let (st, _) = send(
        s.anonymous(Method::POST, "/fhir/$import")
            .bearer_auth(&dr.session)
            .header("content-type", "application/fhir+json")
            .header("prefer", "respond-async")
            .body(params(&[("Patient", "/patients.ndjson")]).to_string()),
    );
    assert_eq!(st, 403);
}
