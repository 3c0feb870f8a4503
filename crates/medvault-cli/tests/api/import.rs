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
    // The second file breaks at its second entry (a gender outside the value set): nothing of
    // it may be written.
    let second_file = |gender: &str| {
        let bundle = transaction(&[
            post(
                "urn:uuid:1",
                json!({"resourceType": "Patient", "name": [{"family": "Brokenfam"}]}),
            ),
            post(
                "urn:uuid:2",
                json!({"resourceType": "Patient", "gender": gender}),
            ),
            // Without ids, as the two Patients: it is given one, and its reference to the
            // first Patient's fullUrl resolves to the id that Patient is given.
            post(
                "urn:uuid:3",
                json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": "urn:uuid:1"}}),
            ),
        ]);
        std::fs::write(dir.join("b.json"), bundle.to_string()).unwrap();
    };
    second_file("sometimes");
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
    second_file("other");
    let (ok, out, err) = s.run(&["import", dir_arg]);
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 3 resources from 1 files (1 already imported, skipped)"),
        "{out}"
    );
    assert_eq!(count(&s, "Patient?family=Brokenfam"), 1);
    let (_, found) = s.get("Patient?family=Brokenfam");
    let broken = found["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        count(&s, &format!("Observation?subject=Patient/{broken}")),
        1
    );
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
    // The same ids in another file are refused: an import only adds resources. With
    // --update they are updated in place, not duplicated.
    let again = files.path().join("again.ndjson");
    std::fs::write(
        &again,
        "{\"resourceType\":\"Patient\",\"id\":\"nd-1\",\"name\":[{\"family\":\"Ndfam\"}],\"gender\":\"other\"}\n",
    )
    .unwrap();
    let (ok, _, err) = s.run(&["import", again.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("line 1: Patient/nd-1 already exists on this node")
            && err.contains("--update"),
        "{err}"
    );
    assert_eq!(s.get("Patient/nd-1").1["meta"]["versionId"], "1");
    let (ok, _, err) = s.run(&["import", "--update", again.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(count(&s, "Patient?family=Ndfam"), 2);
    let (_, nd1) = s.get("Patient/nd-1");
    assert_eq!(
        (&nd1["gender"], &nd1["meta"]["versionId"]),
        (&json!("other"), &json!("2"))
    );

    // An import killed after its commit but before its journal line runs again: what it had
    // written is found unchanged and left as it is (Synthea repeats its Organizations in every
    // record the same way).
    std::fs::remove_file(s.dir.join("import-journal")).unwrap();
    let (ok, out, err) = s.run(&["import", dir.join("a.json").to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 0 resources from 1 files; 3 more were already here unchanged"),
        "{out}"
    );
    assert_eq!(count(&s, "Patient?family=Importfam"), 1);
    // But nd.ndjson's nd-1 was changed since (again.ndjson): the file is refused whole, and
    // --update replaces it.
    let (ok, _, err) = s.run(&["import", nd.to_str().unwrap()]);
    assert!(
        !ok && err.contains("Patient/nd-1 already exists on this node with other content"),
        "{err}"
    );
    let (ok, out, err) = s.run(&["import", "--update", nd.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2 resources"), "{out} {err}");
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

fn sha256_hex(bytes: &[u8]) -> String {
    medvault_crypto::sha256(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The access log's `import-file-refused` events, as `outcomeDesc` and the entity's display.
fn refusals(s: &medvault_testkit::Server) -> Vec<(String, String)> {
    let (status, trail) = s.get("AuditEvent?_count=500");
    assert_eq!(status, 200, "{trail}");
    trail["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|e| {
            e["outcomeDesc"]
                .as_str()
                .is_some_and(|d| d.starts_with("import-file-refused"))
        })
        .map(|e| {
            (
                e["outcomeDesc"].as_str().unwrap().to_owned(),
                e["entity"][0]["what"]["display"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// What a partner's file may not do to the records already there: delete, patch, replace
/// (explicitly or by reusing an id), conditionally write. Each is refused naming its entry,
/// with nothing of the file written, and recorded in the access log by the file's digest.
#[test]
fn an_import_only_adds_and_refusals_are_recorded() {
    let s = MEDVAULT.start();
    let files = tempfile::tempdir().unwrap();
    let [p1, p2] = s.create_patients([("Ownerfam", "Ann"), ("Otherfam", "Bob")]);
    let obs = s.create(&medvault_testkit::fhir::observation(
        &p1,
        "8867-4",
        "2026-01-02",
    ));
    let (_, patient_before) = s.get(&format!("Patient/{p1}"));
    let count_all = |s: &medvault_testkit::Server| {
        (
            count(s, "Patient?_count=1"),
            count(s, "Observation?_count=1"),
        )
    };
    let before = count_all(&s);
    let import_refused = |name: &str, text: String, expect: &[&str]| {
        let path = files.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let (ok, out, err) = s.run(&["import", path.to_str().unwrap()]);
        assert!(!ok, "{name}: {out}");
        for e in expect {
            assert!(err.contains(e), "{name}: expected {e:?} in {err}");
        }
        assert!(err.contains("nothing of this file was written"), "{err}");
        sha256_hex(text.as_bytes())
    };
    let new_patient = json!({"resourceType": "Patient", "id": "added-1",
        "name": [{"family": "Addedfam"}]});
    let moved = json!({"resourceType": "Observation", "id": obs, "status": "final",
        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{p2}")}});

    // An ndjson line reusing an existing id (moving the Observation to another patient).
    let nd = format!("{new_patient}\n{moved}\n");
    let nd_digest = import_refused(
        "move.ndjson",
        nd.clone(),
        &[&format!(
            "line 2: Observation/{obs} already exists on this node with other content (an import only adds resources; pass --update to replace existing ones)"
        )],
    );
    // The same in a collection Bundle, and as an explicit POST.
    let collection = json!({"resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": new_patient}, {"resource": moved}]});
    import_refused(
        "move-collection.json",
        collection.to_string(),
        &[&format!("entry 1: Observation/{obs} already exists")],
    );
    let posted = transaction(&[
        post("urn:uuid:a", new_patient.clone()),
        post("urn:uuid:b", moved.clone()),
    ]);
    import_refused(
        "move-post.json",
        posted.to_string(),
        &[&format!("entry 1: Observation/{obs} already exists")],
    );
    // DELETE, PATCH, PUT (without --update), conditional writes, a url that is not the type.
    let with_request = |request: Value, resource: Option<Value>| {
        let mut e = json!({"request": request});
        if let Some(r) = resource {
            e["resource"] = r;
        }
        transaction(&[post("urn:uuid:a", new_patient.clone()), e]).to_string()
    };
    let cases = [
        (
            "delete.json",
            with_request(
                json!({"method": "DELETE", "url": format!("Observation/{obs}")}),
                None,
            ),
            "entry 1: a DELETE",
        ),
        (
            "patch.json",
            with_request(
                json!({"method": "PATCH", "url": format!("Observation/{obs}")}),
                Some(
                    json!({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "W10="}),
                ),
            ),
            "entry 1: a PATCH",
        ),
        (
            "put.json",
            with_request(
                json!({"method": "PUT", "url": format!("Observation/{obs}")}),
                Some(moved.clone()),
            ),
            "entry 1: a PUT replaces a resource",
        ),
        (
            "conditional-create.json",
            with_request(
                json!({"method": "POST", "url": "Observation", "ifNoneExist": "code=x"}),
                Some(moved.clone()),
            ),
            "entry 1: an import takes no conditional requests",
        ),
        (
            "conditional-update.json",
            with_request(
                json!({"method": "PUT", "url": "Observation?code=x"}),
                Some(moved.clone()),
            ),
            "entry 1: a PUT replaces a resource",
        ),
        (
            "other-url.json",
            with_request(
                json!({"method": "POST", "url": "Patient"}),
                Some(moved.clone()),
            ),
            "entry 1: a POST in an import must have the url Observation",
        ),
    ];
    for (name, text, expect) in cases {
        import_refused(name, text, &[expect]);
    }
    // A conditional PUT stays refused with --update too.
    let path = files.path().join("conditional-update.json");
    let (ok, _, err) = s.run(&["import", "--update", path.to_str().unwrap()]);
    assert!(
        !ok && err.contains("entry 1: an import takes no conditional requests"),
        "{err}"
    );
    // One id twice in a file.
    let twice = format!("{new_patient}\n{new_patient}\n");
    import_refused(
        "twice.ndjson",
        twice,
        &["line 2: Patient/added-1 appears earlier in this file"],
    );

    // Nothing of any of them was written: the Observation is still its first version, under
    // its patient, and no resource was added.
    assert_eq!(count_all(&s), before);
    assert_eq!(count(&s, "Patient?family=Addedfam"), 0);
    let (_, o) = s.get(&format!("Observation/{obs}"));
    assert_eq!(o["meta"]["versionId"], "1");
    assert_eq!(o["subject"]["reference"], format!("Patient/{p1}"));
    assert_eq!(count(&s, &format!("Observation?subject=Patient/{p2}")), 0);
    assert_eq!(s.get(&format!("Patient/{p1}")).1, patient_before);

    // Each refusal is in the access log: by the file's digest, never its name or content.
    let refused = refusals(&s);
    assert_eq!(refused.len(), 11, "{refused:?}");
    assert!(
        refused.iter().any(|(desc, target)| target == &nd_digest
            && desc == "import-file-refused: client-error (HTTP 409)"),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|(desc, _)| desc == "import-file-refused: client-error (HTTP 400)"),
        "{refused:?}"
    );
    let (_, trail) = s.get("AuditEvent?_count=500");
    let trail = trail.to_string();
    assert!(
        !trail.contains("move.ndjson") && !trail.contains("Addedfam"),
        "{trail}"
    );

    // With --update, the move is an update (a second version), the new patient an addition.
    let path = files.path().join("move.ndjson");
    std::fs::write(&path, &nd).unwrap();
    let (ok, out, err) = s.run(&["import", "--update", path.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2 resources"), "{out} {err}");
    let (_, o) = s.get(&format!("Observation/{obs}"));
    assert_eq!(o["meta"]["versionId"], "2");
    assert_eq!(count(&s, &format!("Observation?subject=Patient/{p2}")), 1);
    assert_eq!(count(&s, "Patient?family=Addedfam"), 1);
    s.verify_ledger();
}

/// Resources are held to the API's size limits (1 MiB; 8 MiB for the large types) and index
/// caps, a file to 512 MiB (refused before it is read); nothing of a refused file is written.
#[test]
fn import_limits_resources_and_files() {
    let s = MEDVAULT.start();
    let files = tempfile::tempdir().unwrap();
    let small =
        json!({"resourceType": "Patient", "id": "limit-1", "name": [{"family": "Limitfam"}]});
    let refused = |name: &str, text: &str, expect: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (ok, out, err) = s.run(&["import", path.to_str().unwrap()]);
        assert!(!ok, "{name}: {out}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
        assert_eq!(count(&s, "Patient?family=Limitfam"), 0, "{name}");
        assert_eq!(count(&s, "Binary?_count=1"), 0, "{name}");
    };
    // A Patient over 1 MiB.
    let big_patient = json!({"resourceType": "Patient",
        "name": [{"family": "Limitfam", "text": "x".repeat(1024 * 1024 + 1)}]});
    refused(
        "big-patient.ndjson",
        &format!("{small}\n{big_patient}\n"),
        "line 2: a Patient may be at most 1048576 bytes of JSON",
    );
    // A Binary over 8 MiB (a large type: over 1 MiB is fine, as through the API).
    let binary = |bytes: usize| json!({"resourceType": "Binary", "contentType": "text/plain", "data": "QUFB".repeat(bytes / 4)});
    refused(
        "big-binary.json",
        &transaction(&[
            post("urn:uuid:p", small.clone()),
            post("urn:uuid:b", binary(9 * 1024 * 1024)),
        ])
        .to_string(),
        "entry 1: a Binary may be at most 8388608 bytes of JSON",
    );
    // Too many index entries for one resource.
    let identifiers: Vec<Value> = (0..10_001)
        .map(|i| json!({"system": "urn:x", "value": i.to_string()}))
        .collect();
    let indexed = json!({"resourceType": "Patient", "name": [{"family": "Limitfam"}], "identifier": identifiers});
    refused(
        "many-identifiers.ndjson",
        &format!("{small}\n{indexed}\n"),
        "line 2: the resource has too many values for the search parameter identifier",
    );
    // A file over 512 MiB (sparse: refused on its size, before it is read).
    let huge = files.path().join("huge.ndjson");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(512 * 1024 * 1024 + 1)
        .unwrap();
    let (ok, _, err) = s.run(&["import", huge.to_str().unwrap()]);
    assert!(
        !ok && err.contains("huge.ndjson: the file is larger than an import takes (512 MiB"),
        "{err}"
    );
    let refusals = refusals(&s);
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert_eq!(
        refusals
            .iter()
            .filter(|(d, _)| d == "import-file-refused: client-error (HTTP 413)")
            .count(),
        3,
        "{refusals:?}"
    );

    // Within the limits: a 2 MiB Binary loads.
    let ok_file = files.path().join("ok.json");
    std::fs::write(
        &ok_file,
        transaction(&[
            post("urn:uuid:p", small),
            post("urn:uuid:b", binary(2 * 1024 * 1024)),
        ])
        .to_string(),
    )
    .unwrap();
    let (ok, out, err) = s.run(&["import", ok_file.to_str().unwrap()]);
    assert!(ok && out.contains("imported 2 resources"), "{out} {err}");
    assert_eq!(count(&s, "Patient?family=Limitfam"), 1);
}
