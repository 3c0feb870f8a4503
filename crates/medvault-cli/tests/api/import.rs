//! `medvault import` (issue 17): Bundles and ndjson files, one transaction per file, ids kept,
//! resumable, and a bad file named precisely with nothing of it written.

use serde_json::{Value, json};

use crate::MEDVAULT;

fn transaction(entries: &[Value]) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn post(full_url: &str, resource: Value) -> Value {
    let rt = resource["resourceType"].clone();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rt}})
}

fn count(s: &medvault_testkit::Server, query: &str) -> u64 {
    let (status, v) = s.get(&format!("{query}&_summary=count"));
    assert_eq!(status, 200, "{query}: {v}");
    v["total"].as_u64().unwrap()
}

#[test]
fn bundles_and_ndjson_load_whole_keep_their_ids_and_resume() {
    let s = MEDVAULT.start();
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().join("synthea");
    std::fs::create_dir(&dir).unwrap();
    // A Synthea-shaped record: urn:uuid references, resources carrying their own ids.
    let pid = "5f0c3a52-1b1e-4a55-9d59-0d1f3d6b0001";
    let first = transaction(&[
        post(
            &format!("urn:uuid:{pid}"),
            json!({"resourceType": "Patient", "id": pid, "name": [{"family": "Importfam"}]}),
        ),
        post(
            "urn:uuid:5f0c3a52-1b1e-4a55-9d59-0d1f3d6b0002",
            json!({"resourceType": "Observation", "id": "5f0c3a52-1b1e-4a55-9d59-0d1f3d6b0002",
                "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("urn:uuid:{pid}")}}),
        ),
        post(
            "urn:uuid:5f0c3a52-1b1e-4a55-9d59-0d1f3d6b0003",
            json!({"resourceType": "Claim", "id": "5f0c3a52-1b1e-4a55-9d59-0d1f3d6b0003",
                "status": "active", "type": {"text": "x"}, "use": "claim",
                "patient": {"reference": format!("urn:uuid:{pid}")}, "created": "2026-01-01",
                "provider": {"display": "x"}, "priority": {"text": "x"},
                "insurance": [{"sequence": 1, "focal": true, "coverage": {"display": "x"}}]}),
        ),
    ]);
    std::fs::write(dir.join("a.json"), first.to_string()).unwrap();
    // The second file breaks at its second entry: nothing of it may be written.
    let broken = transaction(&[
        post(
            "urn:uuid:1",
            json!({"resourceType": "Patient", "name": [{"family": "Brokenfam"}]}),
        ),
        post(
            "urn:uuid:2",
            json!({"resourceType": "Patient", "gender": "sometimes"}),
        ),
    ]);
    std::fs::write(dir.join("b.json"), broken.to_string()).unwrap();
    let dir_arg = dir.to_str().unwrap();

    let (ok, out, err) = s.run(&["import", dir_arg]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("b.json")
            && err.contains("entry 1")
            && err.contains("run the same command again"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one plain line: {err}");
    assert_eq!(
        count(&s, "Patient?family=Brokenfam"),
        0,
        "nothing of the bad file"
    );
    // The first file went in whole, under its own ids, its references resolved and its
    // Observation sealed under its patient.
    let (status, patient) = s.get(&format!("Patient/{pid}"));
    assert_eq!(status, 200, "{patient}");
    assert_eq!(count(&s, &format!("Observation?subject=Patient/{pid}")), 1);
    assert_eq!(count(&s, &format!("Claim?patient={pid}")), 1);

    // Fixed, the same command resumes: the first file is skipped by its content.
    let fixed = transaction(&[
        post(
            "urn:uuid:1",
            json!({"resourceType": "Patient", "name": [{"family": "Brokenfam"}]}),
        ),
        post(
            "urn:uuid:2",
            json!({"resourceType": "Patient", "gender": "other"}),
        ),
    ]);
    std::fs::write(dir.join("b.json"), fixed.to_string()).unwrap();
    let (ok, out, err) = s.run(&["import", dir_arg]);
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 2 resources from 1 files (1 already imported, skipped)"),
        "{out}"
    );
    assert_eq!(count(&s, "Patient?family=Brokenfam"), 1);
    assert_eq!(count(&s, "Patient?family=Importfam"), 1);

    // ndjson: one resource per line, a bad line named by its number.
    let nd = files.path().join("Patient.ndjson");
    std::fs::write(
        &nd,
        "{\"resourceType\":\"Patient\",\"id\":\"nd-1\",\"name\":[{\"family\":\"Ndfam\"}]}\n\n{\"resourceType\":\"Patient\",\"id\":\"nd-2\",\"name\":[{\"family\":\"Ndfam\"}]}\n{\"resourceType\":\"Patient\",\n",
    )
    .unwrap();
    let (ok, _, err) = s.run(&["import", nd.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("line 4"), "{err}");
    assert_eq!(count(&s, "Patient?family=Ndfam"), 0);
    std::fs::write(
        &nd,
        "{\"resourceType\":\"Patient\",\"id\":\"nd-1\",\"name\":[{\"family\":\"Ndfam\"}]}\n{\"resourceType\":\"Patient\",\"id\":\"nd-2\",\"name\":[{\"family\":\"Ndfam\"}]}\n",
    )
    .unwrap();
    let (ok, out, err) = s.run(&["import", nd.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2 resources"), "{out} {err}");
    assert_eq!(s.get("Patient/nd-2").0, 200);
    // The same resources in another file are updated in place, not duplicated.
    let again = files.path().join("again.ndjson");
    std::fs::write(
        &again,
        "{\"resourceType\":\"Patient\",\"id\":\"nd-1\",\"name\":[{\"family\":\"Ndfam\"}],\"gender\":\"other\"}\n",
    )
    .unwrap();
    let (ok, _, err) = s.run(&["import", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(count(&s, "Patient?family=Ndfam"), 2);

    // Not an importable file; a read in an import Bundle.
    let (ok, _, err) = s.run(&[
        "import",
        files.path().join("missing.json").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("missing.json"), "{err}");
    let read = files.path().join("read.json");
    let get = json!({"resourceType": "Bundle", "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient"}}]});
    std::fs::write(&read, get.to_string()).unwrap();
    let (ok, _, err) = s.run(&["import", read.to_str().unwrap()]);
    assert!(!ok && err.contains("entry 0"), "{err}");

    // Everything imported is in the ledger and verifies.
    s.verify_ledger();
}
