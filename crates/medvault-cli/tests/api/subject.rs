//! Data subjects' rights (issue 20): a patient exports their own record, history and the
//! accounting of disclosures, signed by the node and verifiable; staff answer requests from the
//! register within their month; a tampered export, another patient's export and bad requests
//! are refused.

use serde_json::{Value, json};

use crate::MEDVAULT;

fn lines(text: &Value) -> Vec<Value> {
    text.as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_patient_exports_their_record_and_staff_answer_requests_in_time() {
    let s = MEDVAULT.start();
    let patient = s.create(&json!({
        "resourceType": "Patient", "name": [{"family": "Quixotic", "given": ["Ana"]}],
        "birthDate": "1980-02-03",
    }));
    let other = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]}));
    let obs = json!({
        "resourceType": "Observation", "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 72.5, "unit": "/min"},
    });
    let obs_id = s.create(&obs);
    // A correction (Art. 16): the export keeps the earlier version.
    let mut corrected = obs.clone();
    corrected["id"] = json!(obs_id);
    corrected["status"] = json!("final");
    let (st, _) = s.put(&format!("/Observation/{obs_id}"), &corrected);
    assert_eq!(st, 200);
    // A clinician in the patient's care team reads the record: a disclosure.
    let dr = s.person("dr.care", "clinician");
    s.care_team(dr.practitioner.as_deref().unwrap(), &patient);
    let (st, _) = s.get_as(
        &format!("/fhir/Patient/{patient}"),
        &dr.session,
        Some("TREAT"),
    );
    assert_eq!(st, 200);

    // The patient, in their own session; asking four times at once makes one export.
    let me = s.patient_session("ana.q", &patient);
    let url = format!("/fhir/Patient/{patient}/$export-my-data");
    let mut answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let asked: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.get_as(&url, &me, None)))
            .collect();
        asked.into_iter().map(|h| h.join().unwrap()).collect()
    });
    answers.sort_by_key(|(st, _)| *st);
    let statuses: Vec<u16> = answers.iter().map(|(st, _)| *st).collect();
    assert_eq!(statuses, [200, 429, 429, 429], "{answers:?}");
    let export = answers.remove(0).1;
    assert_eq!(export["format"], "medvault-subject-export/1");
    assert_eq!(export["patient"], format!("Patient/{patient}"));
    let record = lines(&export["record"]);
    assert_eq!(export["counts"]["resources"], record.len());
    let types: Vec<&str> = record
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Patient") && types.contains(&"Observation"),
        "{types:?}"
    );
    let current = record.iter().find(|r| r["id"] == obs_id.as_str()).unwrap();
    assert_eq!(current["status"], "final");
    assert_eq!(
        current["valueQuantity"]["value"], 72.5,
        "decimals travel as written"
    );
    let history = lines(&export["history"]);
    assert!(
        history
            .iter()
            .any(|r| r["id"] == obs_id.as_str() && r["status"] == "preliminary"),
        "{history:?}"
    );
    let disclosures = lines(&export["disclosures"]);
    assert_eq!(export["counts"]["disclosures"], disclosures.len());
    assert!(
        disclosures
            .iter()
            .all(|e| e["resourceType"] == "AuditEvent"),
        "{disclosures:?}"
    );
    assert!(
        disclosures
            .iter()
            .any(|e| e.to_string().contains("clinician")),
        "the clinician's read is disclosed"
    );
    assert!(export["processing"]["purposes"].as_array().unwrap().len() >= 4);
    let request = export["request"].as_str().unwrap().to_owned();
    assert!(request.starts_with("dsr_"));

    // One export every ten minutes: each reads the whole access log.
    let (st, e) = s.get_as(
        &format!("/fhir/Patient/{patient}/$export-my-data"),
        &me,
        None,
    );
    assert_eq!(st, 429, "{e}");
    assert_eq!(e["resourceType"], "OperationOutcome");
    // Another patient's record is not theirs to export.
    let (st, e) = s.get_as(&format!("/fhir/Patient/{other}/$export-my-data"), &me, None);
    assert_eq!(st, 403, "{e}");
    assert_eq!(e["resourceType"], "OperationOutcome");
    // Nor is it the clinician's way to a record.
    let (st, _) = s.get_as(
        &format!("/fhir/Patient/{patient}/$export-my-data"),
        &dr.session,
        Some("TREAT"),
    );
    assert_eq!(st, 403);

    // The export verifies, against this node's history too; a changed one does not.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.json");
    std::fs::write(&file, export.to_string()).unwrap();
    let data_dir = s.dir.to_str().unwrap().to_owned();
    let (ok, out, err) = s.cli(&[
        "subject",
        "verify",
        file.to_str().unwrap(),
        "--data-dir",
        &data_dir,
    ]);
    assert!(ok, "{out} {err}");
    assert!(
        out.starts_with("export verified:") && out.contains("from this node's history"),
        "{out}"
    );
    let mut tampered = export.clone();
    tampered["record"] = json!(
        export["record"]
            .as_str()
            .unwrap()
            .replace("final", "amended")
    );
    std::fs::write(&file, tampered.to_string()).unwrap();
    let (ok, out, err) = s.cli(&["subject", "verify", file.to_str().unwrap()]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(
        err.contains("signature does not verify") && err.trim().lines().count() == 1,
        "{err}"
    );
    let text = export.to_string();
    std::fs::write(&file, format!("{{\"format\":\"x\",{}", &text[1..])).unwrap();
    let (ok, _, err) = s.cli(&["subject", "verify", file.to_str().unwrap()]);
    assert!(!ok && err.contains("twice"), "{err}");

    // The register: the patient's own request answered at once; staff open one, answer it
    // with the export, and cannot answer it twice.
    let (st, mine) = s.get_as(
        &format!("/admin/subjects/requests/{request}"),
        &s.token,
        None,
    );
    assert_eq!(st, 200, "{mine}");
    assert_eq!(mine["right"], "access");
    assert_eq!(mine["status"], "answered");
    assert_eq!(mine["on_time"], true);
    let (st, opened) = s.post_json(
        "/admin/subjects/requests",
        Some(&s.token),
        &json!({"patient": patient, "right": "portability", "note": "by letter"}),
    );
    assert_eq!(st, 201, "{opened}");
    let dsr = opened["id"].as_str().unwrap().to_owned();
    assert_eq!(opened["status"], "open");
    assert!(opened["due"].as_str().unwrap() > opened["opened"].as_str().unwrap());
    // The whole record leaves the policy's reach: an admin who just signed in with a second
    // factor, not a privacy officer nor an API token.
    let officer = s.person("po.export", "privacy-officer");
    for bearer in [&s.token, &officer.session] {
        let (st, e) = s.post_json(
            &format!("/admin/subjects/requests/{dsr}/export"),
            Some(bearer),
            &json!({}),
        );
        assert_eq!(st, 403, "{e}");
    }
    let admin = s.person("root.export", "admin");
    let (st, staff) = s.post_json(
        &format!("/admin/subjects/requests/{dsr}/export"),
        Some(&admin.session),
        &json!({}),
    );
    assert_eq!(st, 200, "{staff}");
    assert_eq!(staff["request"], dsr.as_str());
    // Read as the node's work: at least what the patient's own rules showed them.
    assert!(
        staff["counts"]["resources"].as_u64() >= export["counts"]["resources"].as_u64(),
        "{}",
        staff["counts"]
    );
    let (st, again) = s.post_json(
        &format!("/admin/subjects/requests/{dsr}/export"),
        Some(&admin.session),
        &json!({}),
    );
    assert_eq!(st, 400, "{again}");
    // The staff export is in the patient's accounting of disclosures.
    let auditor = s.new_token("auditor");
    let (st, trail) = s.get_as(
        &format!("/fhir/AuditEvent?patient={patient}"),
        &auditor,
        None,
    );
    assert_eq!(st, 200, "{trail}");
    assert!(trail.to_string().contains("subject-answer"), "{trail}");

    // The CLI: an erasure request refused only with a reason.
    let (ok, out, err) = s.run(&[
        "subject",
        "request",
        "--patient",
        &patient,
        "--right",
        "erasure",
    ]);
    assert!(ok, "{err}");
    let erasure = out.split_whitespace().next().unwrap().to_owned();
    assert!(erasure.starts_with("dsr_"), "{out}");
    let (ok, _, err) = s.run(&["subject", "answer", &erasure, "--outcome", "refused"]);
    assert!(!ok && err.contains("says why"), "{err}");
    let (ok, _, err) = s.run(&[
        "subject",
        "answer",
        &erasure,
        "--outcome",
        "refused",
        "--note",
        "legal hold: litigation",
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = s.run(&["subject", "requests"]);
    assert!(ok);
    let all: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");

    // Bad requests.
    for (body, status) in [
        (
            json!({"patient": "no-such-patient", "right": "access"}),
            404,
        ),
        (json!({"patient": patient, "right": "forget-me"}), 400),
        (json!({"patient": patient}), 400),
    ] {
        let (st, e) = s.post_json("/admin/subjects/requests", Some(&s.token), &body);
        assert_eq!(st, status, "{body} {e}");
        assert_eq!(e["resourceType"], "OperationOutcome");
    }
    assert_eq!(
        s.get_as("/admin/subjects/requests", &dr.session, None).0,
        403
    );
    let (st, report) = s.get_as("/admin/compliance", &s.token, None);
    assert_eq!(st, 200);
    let row = report["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "gdpr-12-15-21")
        .unwrap();
    assert_eq!(row["status"], "pass", "{row}");
    assert_eq!(row["evidence"]["recorded"], 3);
    s.verify_ledger();
}

#[test]
fn a_legal_hold_blocks_erasure_and_an_erasure_is_certified() {
    let s = MEDVAULT.start();
    let patient = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Heldback"}]}));
    s.create(&json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
    }));
    let (ok, out, err) = s.run(&[
        "subject",
        "request",
        "--patient",
        &patient,
        "--right",
        "erasure",
    ]);
    assert!(ok, "{err}");
    let request = out.split_whitespace().next().unwrap().to_owned();

    // Under a hold, erasure is refused by the CLI and the API alike.
    let (st, hold) = s.post_json(
        &format!("/admin/patients/{patient}/hold"),
        Some(&s.token),
        &json!({"reason": "litigation hold, case 2026-17"}),
    );
    assert_eq!(st, 201, "{hold}");
    let hold_id = hold["id"].as_str().unwrap().to_owned();
    assert_eq!(hold["status"], "in-force");
    let (st, again) = s.post_json(
        &format!("/admin/patients/{patient}/hold"),
        Some(&s.token),
        &json!({"reason": "a second one"}),
    );
    assert_eq!(st, 400, "{again}");
    let (ok, _, err) = s.run(&["patient", "erase", &patient]);
    assert!(
        !ok && err.contains("legal hold") && err.trim().lines().count() == 1,
        "{err}"
    );
    let admin = s.person("root.admin", "admin");
    let (st, e) = s.post_json(
        &format!("/admin/patients/{patient}/erase"),
        Some(&admin.session),
        &json!({}),
    );
    assert_eq!(st, 409, "{e}");
    assert_eq!(e["resourceType"], "OperationOutcome");
    let (st, _) = s.get(&format!("/Patient/{patient}"));
    assert_eq!(st, 200, "nothing was destroyed");

    // Released, the erasure answers the request and is certified.
    let (st, released) = s.post_json(
        &format!("/admin/holds/{hold_id}/release"),
        Some(&s.token),
        &json!({"reason": "case closed"}),
    );
    assert_eq!(st, 200, "{released}");
    assert_eq!(released["status"], "released");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("erasure.json");
    let (ok, out, err) = s.run(&[
        "patient",
        "erase",
        &patient,
        "--request",
        &request,
        "--certificate",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains("2 resource(s)") && out.contains("certificate in"),
        "{out}"
    );
    let (st, _) = s.get(&format!("/Patient/{patient}"));
    assert_eq!(st, 410);
    let certificate: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(certificate["format"], "medvault-erasure-certificate/1");
    assert_eq!(certificate["destroyed"]["resources"], 2);
    assert!(!certificate.to_string().contains("Heldback"));
    let data_dir = s.dir.to_str().unwrap().to_owned();
    let (ok, out, err) = s.cli(&[
        "subject",
        "verify",
        file.to_str().unwrap(),
        "--data-dir",
        &data_dir,
    ]);
    assert!(
        ok && out.starts_with("erasure certificate verified:"),
        "{out} {err}"
    );
    let mut forged = certificate.clone();
    forged["destroyed"]["resources"] = json!(3);
    std::fs::write(&file, forged.to_string()).unwrap();
    let (ok, _, err) = s.cli(&["subject", "verify", file.to_str().unwrap()]);
    assert!(!ok && err.contains("signature does not verify"), "{err}");
    let (st, answered) = s.get_as(
        &format!("/admin/subjects/requests/{request}"),
        &s.token,
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(answered["status"], "answered");
    let (st, holds) = s.get_as("/admin/holds", &s.token, None);
    assert_eq!(st, 200);
    assert_eq!(holds["holds"].as_array().unwrap().len(), 1);
    s.verify_ledger();
}

/// GDPR Art. 18: a restriction of processing (asked for from the portal, placed by staff
/// answering the request) stops every reader but the patient, until it is lifted; the
/// decision is recorded as the policy's `processing-restricted`.
#[test]
fn a_restriction_stops_processing_but_the_patients_own_access_until_lifted() {
    let s = MEDVAULT.start();
    let patient = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Restrained"}]}));
    let obs = s.create(&json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
    }));
    let dr = s.person("dr.restrict", "clinician");
    s.care_team(dr.practitioner.as_deref().unwrap(), &patient);
    let me = s.patient_session("rita.r", &patient);
    let reads = |bearer: &str, purpose: Option<&str>| {
        [
            s.get_as(&format!("/fhir/Observation/{obs}"), bearer, purpose)
                .0,
            s.get_as(&format!("/fhir/Patient/{patient}"), bearer, purpose)
                .0,
        ]
    };
    assert_eq!(reads(&dr.session, Some("TREAT")), [200, 200]);
    // Staff answer an access request with an export; the patient's own download is not
    // throttled by it (only by their own).
    let admin = s.person("root.restrict", "admin");
    let (st, access) = s.post_json(
        "/admin/subjects/requests",
        Some(&s.token),
        &json!({"patient": patient, "right": "access", "note": "by letter"}),
    );
    assert_eq!(st, 201, "{access}");
    let access_id = access["id"].as_str().unwrap();
    let (st, e) = s.post_json(
        &format!("/admin/subjects/requests/{access_id}/export"),
        Some(&admin.session),
        &json!({}),
    );
    assert_eq!(st, 200, "{e}");
    let (st, e) = s.get_as(
        &format!("/fhir/Patient/{patient}/$export-my-data"),
        &me,
        None,
    );
    assert_eq!(st, 200, "{e}");

    // The patient asks from the portal; only their own session may, and not for what the
    // portal answers at once.
    let (st, request) = s.post_json(
        "/portal/requests",
        Some(&me),
        &json!({"right": "restriction", "note": "the diagnosis is wrong"}),
    );
    assert_eq!(st, 201, "{request}");
    let request = request["id"].as_str().unwrap().to_owned();
    let (st, e) = s.post_json("/portal/requests", Some(&me), &json!({"right": "access"}));
    assert_eq!(st, 400, "{e}");
    assert!(
        e["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("$export-my-data")
    );
    for bearer in [&dr.session, &s.token] {
        let (st, e) = s.post_json(
            "/portal/requests",
            Some(bearer),
            &json!({"right": "erasure"}),
        );
        assert_eq!(st, 403, "{e}");
    }

    // Staff place it, answering the request (a request for another right does not fit).
    let (ok, _, err) = s.run(&[
        "subject",
        "restrict",
        "--patient",
        &patient,
        "--reason",
        "x",
        "--request",
        "dsr_nope",
    ]);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");
    let (st, placed) = s.post_json(
        &format!("/admin/patients/{patient}/restrict"),
        Some(&s.token),
        &json!({"reason": "accuracy contested, Art. 18(1)(a)", "request": request}),
    );
    assert_eq!(st, 201, "{placed}");
    assert_eq!(placed["status"], "in-force");
    let rst = placed["id"].as_str().unwrap().to_owned();
    let (st, again) = s.post_json(
        &format!("/admin/patients/{patient}/restrict"),
        Some(&s.token),
        &json!({"reason": "twice"}),
    );
    assert_eq!(st, 400, "{again}");

    // Nobody but the patient reads or writes: the clinician, an admin token, a search.
    // (Refused reads answer 404: they do not reveal that the record exists.)
    assert_eq!(reads(&dr.session, Some("TREAT")), [404, 404]);
    assert_eq!(reads(&s.token, None), [404, 404]);
    let (st, page) = s.get_as(
        &format!("/fhir/Observation?subject=Patient/{patient}"),
        &dr.session,
        Some("TREAT"),
    );
    assert!(st == 403 || page["total"] == 0, "{st} {page}");
    let (st, e) = s.call(
        reqwest::Method::POST,
        "/fhir/Observation",
        &dr.session,
        Some("TREAT"),
        Some(&json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "new"}, "subject": {"reference": format!("Patient/{patient}")}})),
    );
    assert_eq!(st, 403, "{e}");
    assert_eq!(reads(&me, None), [200, 200]);
    // Staff cannot take the record out through an export while it is restricted.
    let (st, access) = s.post_json(
        "/admin/subjects/requests",
        Some(&s.token),
        &json!({"patient": patient, "right": "portability"}),
    );
    assert_eq!(st, 201, "{access}");
    let (st, e) = s.post_json(
        &format!(
            "/admin/subjects/requests/{}/export",
            access["id"].as_str().unwrap()
        ),
        Some(&admin.session),
        &json!({}),
    );
    assert_eq!(st, 409, "{e}");
    let (st, mine) = s.get_as("/portal/requests", &me, None);
    assert_eq!(st, 200, "{mine}");
    assert_eq!(mine["restriction"]["id"], rst.as_str());
    let restriction_request = mine["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["right"] == "restriction")
        .unwrap();
    assert_eq!(restriction_request["status"], "answered");
    assert_eq!(restriction_request["opened_by_patient"], true);
    // The access log names the rule that refused.
    let (st, trail) = s.get_as(
        &format!("/fhir/AuditEvent?patient={patient}&outcome=4"),
        &s.token,
        None,
    );
    assert_eq!(st, 200);
    assert!(
        trail.to_string().contains("processing-restricted"),
        "{trail}"
    );

    // Lifted (with a reason), processing resumes at once.
    let (st, lifted) = s.post_json(
        &format!("/admin/restrictions/{rst}/lift"),
        Some(&s.token),
        &json!({"reason": "record corrected"}),
    );
    assert_eq!(st, 200, "{lifted}");
    assert_eq!(lifted["status"], "lifted");
    assert_eq!(reads(&dr.session, Some("TREAT")), [200, 200]);
    let (st, e) = s.post_json(
        &format!("/admin/restrictions/{rst}/lift"),
        Some(&s.token),
        &json!({"reason": "again"}),
    );
    assert_eq!(st, 400, "{e}");

    // The CLI places and lifts them too; another process's restriction counts within a
    // second (the set of restricted patients is read again every second).
    let settles = |expected: [u16; 2]| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = reads(&dr.session, Some("TREAT"));
            if got == expected || std::time::Instant::now() > until {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let (ok, out, err) = s.run(&[
        "subject",
        "restrict",
        "--patient",
        &patient,
        "--reason",
        "by letter",
    ]);
    assert!(ok && out.trim().starts_with("rst_"), "{out} {err}");
    let second = out.trim().to_owned();
    assert_eq!(settles([404, 404]), [404, 404]);
    let (ok, out, _) = s.run(&["subject", "restrictions"]);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[0]["id"], second.as_str());
    assert_eq!(listed[0]["status"], "in-force");
    let (ok, out, err) = s.run(&["subject", "lift", &second, "--reason", "settled"]);
    assert!(ok && out.contains("lifted"), "{out} {err}");
    assert_eq!(settles([200, 200]), [200, 200]);

    // Placed by many at once, one restriction is in force; the portal's limit holds likewise.
    let placed: Vec<u16> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (s, patient) = (&s, &patient);
                t.spawn(move || {
                    s.post_json(
                        &format!("/admin/patients/{patient}/restrict"),
                        Some(&s.token),
                        &json!({"reason": format!("race {i}")}),
                    )
                    .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        placed.iter().filter(|st| **st == 201).count(),
        1,
        "{placed:?}"
    );
    let opened: Vec<u16> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..30)
            .map(|_| {
                let (s, me) = (&s, &me);
                t.spawn(move || {
                    s.post_json("/portal/requests", Some(me), &json!({"right": "erasure"}))
                        .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (_, mine) = s.get_as("/portal/requests", &me, None);
    let open = mine["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "open")
        .count();
    assert_eq!(open, 10, "{opened:?}");
    s.verify_ledger();
}

/// GDPR Art. 21: the patient objects to research use with one call; research purposes are
/// refused from then on, care is not, and withdrawing the Consent ends it.
#[test]
fn an_objection_to_research_is_a_consent_the_policy_applies() {
    // A site policy that lets researchers read for research (the default lets nobody).
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("research.cedar");
    std::fs::write(
        &policy,
        r#"@id("research-read") permit (principal, action, resource)
           when { principal.role == "researcher" &&
                  (context.purpose == "HRESCH" || context.purpose == "CLINTRCH") };"#,
    )
    .unwrap();
    let s = MEDVAULT.start_with(&["--policy", policy.to_str().unwrap()]);
    let patient = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Objector"}]}));
    let other = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Bystander"}]}));
    let study = s.person("r.study", "researcher").session;
    let research = |p: &str, purpose: &str| {
        s.get_as(&format!("/fhir/Patient/{p}"), &study, Some(purpose))
            .0
    };
    assert_eq!(research(&patient, "HRESCH"), 200);
    assert_eq!(research(&patient, "CLINTRCH"), 200);

    let me = s.patient_session("olga.o", &patient);
    // Not for someone else's record (whose existence a patient does not learn either).
    for p in [&other, &"no-such-patient".to_owned()] {
        let (st, e) = s.post_as(
            &format!("/fhir/Patient/{p}/$object-to-research"),
            &me,
            &json!({}),
        );
        assert_eq!(st, 404, "{e}");
    }
    let (st, consent) = s.post_as(
        &format!("/fhir/Patient/{patient}/$object-to-research"),
        &me,
        &json!({}),
    );
    assert_eq!(st, 201, "{consent}");
    assert_eq!(consent["resourceType"], "Consent");
    assert_eq!(consent["provision"]["type"], "deny");
    // Twice changes nothing: the objection in force is the answer.
    let (st, again) = s.post_as(
        &format!("/fhir/Patient/{patient}/$object-to-research"),
        &me,
        &json!({}),
    );
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["id"], consent["id"]);
    // Only the patient or an admin: a clinician learns nothing, not even that the patient exists.
    let dr = s.person("dr.object", "clinician");
    for p in [&patient, &"no-such-patient".to_owned()] {
        let (st, e) = s.call(
            reqwest::Method::POST,
            &format!("/fhir/Patient/{p}/$object-to-research"),
            &dr.session,
            Some("TREAT"),
            Some(&json!({})),
        );
        assert_eq!(st, 403, "{e}");
    }
    // Refused reads answer 404 (they do not reveal that the record exists).
    assert_eq!(research(&patient, "HRESCH"), 404);
    assert_eq!(research(&patient, "CLINTRCH"), 404);
    let (st, e) = s.get_as(&format!("/fhir/Patient/{other}"), &study, Some("HRESCH"));
    assert_eq!(st, 200, "{e}");
    // Other purposes are untouched (a reader who declares none meets the deny: fail safe).
    let read = |purpose| {
        s.get_as(&format!("/fhir/Patient/{patient}"), &s.token, purpose)
            .0
    };
    assert_eq!(read(Some("HOPERAT")), 200);
    assert_eq!(read(None), 404);
    let (st, e) = s.post_as(
        "/fhir/Patient/not-a-patient/$object-to-research",
        &s.token,
        &json!({}),
    );
    assert_eq!(st, 404, "{e}");

    // A later permit for research lifts the objection; objecting again then records a new
    // one (not the lifted one), which decides again.
    let permit = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "dateTime": utc_in(1),
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit", "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"},
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "CLINTRCH"}]},
    });
    let (st, e) = s.post_as("/fhir/Consent", &me, &permit);
    assert_eq!(st, 201, "{e}");
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(research(&patient, "HRESCH"), 200);
    let (st, renewed) = s.post_as(
        &format!("/fhir/Patient/{patient}/$object-to-research"),
        &me,
        &json!({}),
    );
    assert_eq!(st, 201, "{renewed}");
    assert_ne!(renewed["id"], consent["id"]);
    assert_eq!(research(&patient, "HRESCH"), 404);
    let withdraw = |c: &Value| {
        let mut w = c.clone();
        w["status"] = json!("inactive");
        let (st, e) = s.call(
            reqwest::Method::PUT,
            &format!("/fhir/Consent/{}", c["id"].as_str().unwrap()),
            &me,
            None,
            Some(&w),
        );
        assert_eq!(st, 200, "{e}");
    };
    withdraw(&renewed);
    assert_eq!(research(&patient, "HRESCH"), 200);
    // Called at once, it records one objection.
    let answers: Vec<(u16, Value)> = std::thread::scope(|t| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (s, me, patient) = (&s, &me, &patient);
                t.spawn(move || {
                    s.post_as(
                        &format!("/fhir/Patient/{patient}/$object-to-research"),
                        me,
                        &json!({}),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 201)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(st, c)| *st == 201 || (*st == 200 && c["id"] == created[0]["id"]))
    );
    assert_eq!(research(&patient, "HRESCH"), 404);
    withdraw(created[0]);

    // Withdrawn by the patient, research may use the record again.
    let mut withdrawn = consent.clone();
    withdrawn["status"] = json!("inactive");
    let id = consent["id"].as_str().unwrap();
    let (st, e) = s.call(
        reqwest::Method::PUT,
        &format!("/fhir/Consent/{id}"),
        &me,
        None,
        Some(&withdrawn),
    );
    assert_eq!(st, 200, "{e}");
    assert_eq!(research(&patient, "HRESCH"), 200);

    // Staff record an objection made by letter, answering the request.
    let (st, request) = s.post_json(
        "/admin/subjects/requests",
        Some(&s.token),
        &json!({"patient": patient, "right": "objection", "note": "letter"}),
    );
    assert_eq!(st, 201, "{request}");
    let request = request["id"].as_str().unwrap();
    let (ok, out, err) = s.run(&[
        "subject",
        "object",
        "--patient",
        &patient,
        "--request",
        request,
    ]);
    assert!(
        ok && out.contains("Consent denying research use"),
        "{out} {err}"
    );
    let (st, answered) = s.get_as(
        &format!("/admin/subjects/requests/{request}"),
        &s.token,
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(answered["status"], "answered");
    let (st, consents) = s.get_as(
        &format!("/fhir/Consent?patient=Patient/{patient}&status=active"),
        &s.token,
        None,
    );
    assert_eq!(st, 200);
    let denies = consents["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["provision"]["type"] == "deny")
        .count();
    assert_eq!(denies, 1, "{consents}");
    s.verify_ledger();
}

/// Every access decision about a patient reads all their Consents: a patient (or an app) cannot
/// pile up more than the bound.
#[test]
fn a_patient_holds_at_most_the_bounded_number_of_consents() {
    let s = MEDVAULT.start();
    let patient = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Flood"}]}));
    let bound = medvault_node::ops::MAX_CONSENTS_PER_PATIENT;
    let consent = |n: u64| {
        json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{patient}")},
            "dateTime": format!("2026-01-01T00:{:02}:{:02}Z", n / 60 % 60, n % 60),
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
            "provision": {"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HMARKT"}]},
        })
    };
    let entries: Vec<Value> = (0..bound)
        .map(|n| json!({"resource": consent(n), "request": {"method": "POST", "url": "Consent"}}))
        .collect();
    let (st, out) = s.post(
        "/",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
    );
    assert_eq!(
        st,
        200,
        "{}",
        out.to_string().chars().take(400).collect::<String>()
    );
    let (st, e) = s.post("/Consent", &consent(bound));
    assert_eq!(st, 422, "{e}");
    assert!(e.to_string().contains("Consent resources"), "{e}");
    // Bringing a deleted one back, once the slot is taken again, is a new Consent too.
    let location = out["entry"][0]["response"]["location"].as_str().unwrap();
    let first = location
        .split("Consent/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let (st, _) = s.delete(&format!("/Consent/{first}"));
    assert!(st == 200 || st == 204, "{st}");
    let (st, e) = s.post("/Consent", &consent(bound + 1));
    assert_eq!(st, 201, "{e}");
    let mut back = consent(bound + 2);
    back["id"] = json!(first);
    let (st, e) = s.put(&format!("/Consent/{first}"), &back);
    assert_eq!(st, 422, "{e}");
    // Decisions about the patient still work (marketing is denied; operations are not).
    let read = |purpose| {
        s.get_as(&format!("/fhir/Patient/{patient}"), &s.token, Some(purpose))
            .0
    };
    assert_eq!(read("HOPERAT"), 200);
    assert_eq!(read("HMARKT"), 404);
}

/// A deleted (not erased) patient's data is still held: staff answer their access request with
/// an export of it (the Patient as it was before deletion, the rest of the compartment); the
/// patient's own session is told to ask.
#[test]
fn a_deleted_patients_data_is_still_exported_on_request() {
    let s = MEDVAULT.start();
    let patient = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Gone"}]}));
    let obs = s.create(&json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
    }));
    // Another patient's record that merely names this one (as performer) is not theirs.
    let other = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]}));
    let theirs = s.create(&json!({
        "resourceType": "Observation", "status": "final",
        "code": {"text": "OTHER-SECRET"},
        "subject": {"reference": format!("Patient/{other}")},
        "performer": [{"reference": format!("Patient/{patient}")}],
    }));
    let me = s.patient_session("gina.g", &patient);
    let (st, _) = s.delete(&format!("/Patient/{patient}"));
    assert!(st == 200 || st == 204, "{st}");
    let (st, e) = s.get_as(
        &format!("/fhir/Patient/{patient}/$export-my-data"),
        &me,
        None,
    );
    assert!(st == 410 || st == 403, "{st} {e}");
    let (st, request) = s.post_json(
        "/admin/subjects/requests",
        Some(&s.token),
        &json!({"patient": patient, "right": "access", "note": "letter after deletion"}),
    );
    assert_eq!(st, 201, "{request}");
    let admin = s.person("root.deleted", "admin");
    let (st, export) = s.post_json(
        &format!(
            "/admin/subjects/requests/{}/export",
            request["id"].as_str().unwrap()
        ),
        Some(&admin.session),
        &json!({}),
    );
    assert_eq!(st, 200, "{export}");
    let record = lines(&export["record"]);
    let types: Vec<&str> = record
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Patient") && types.contains(&"Observation"),
        "{types:?}"
    );
    assert!(record.iter().any(|r| r["id"] == obs.as_str()));
    assert!(
        !export.to_string().contains("OTHER-SECRET")
            && !record.iter().any(|r| r["id"] == theirs.as_str()),
        "another patient's record left out"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), export.to_string()).unwrap();
    let (ok, out, err) = s.cli(&["subject", "verify", file.path().to_str().unwrap()]);
    assert!(ok, "{out} {err}");
    // Never stored: still 404.
    let (st, _) = s.post_json(
        "/admin/subjects/requests",
        Some(&s.token),
        &json!({"patient": "never-here", "right": "access"}),
    );
    assert_eq!(st, 404);
}

/// An RFC 3339 UTC time `secs` seconds from now (no date crate in the tests: the civil date
/// from days since 1970, H. Hinnant's algorithm).
fn utc_in(secs: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let (days, rem) = ((t / 86_400) as i64, t % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
