//! Breach response (issue 20): a clinician's access assessed from the access log over HTTP and
//! the CLI (who was affected, where they live, deadlines, draft notices without PHI), a
//! compromised key's reach, the breach register with its notices, and bad input refused.

use serde_json::{Value, json};

use crate::MEDVAULT;

fn patient(family: &str, state: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "name": [{"family": family, "given": ["Test"]}],
        "address": [{"use": "home", "line": ["1 Main St"], "city": "Springfield",
                     "state": state, "country": "US"}],
    })
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

fn date(offset_days: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::days(offset_days);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[test]
fn a_clinicians_access_is_assessed_recorded_and_notified() {
    let s = MEDVAULT.start();
    let dr = s.person("dr.snoop", "clinician");
    let practitioner = dr.practitioner.clone().unwrap();
    let mut cared = vec![
        s.create(&patient("Qwertyuiop", "MA")),
        s.create(&patient("Asdfghjkl", "MA")),
        s.create(&patient("Zxcvbnm", "NY")),
    ];
    let stranger = s.create(&patient("Poiuytrewq", "CA"));
    for p in &cared {
        s.care_team(&practitioner, p);
    }
    // The clinician opens two records, searches the third's observations, and is refused the
    // stranger's.
    for p in &cared[..2] {
        let (st, _) = s.get_as(&format!("/fhir/Patient/{p}"), &dr.session, Some("TREAT"));
        assert_eq!(st, 200);
    }
    let (st, _) = s.get_as(
        &format!("/fhir/Patient?_id={}", cared[2]),
        &dr.session,
        Some("TREAT"),
    );
    assert_eq!(st, 200);
    let (st, _) = s.get_as(
        &format!("/fhir/Patient/{stranger}"),
        &dr.session,
        Some("TREAT"),
    );
    assert!(st == 403 || st == 404, "{st}");
    cared.sort();

    // Over HTTP, by user name.
    let ask = json!({"principal": "dr.snoop", "from": date(-1), "to": date(1)});
    let (st, a) = s.post_json("/admin/breach/assess", Some(&s.token), &ask);
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["format"], "medvault-breach-assessment/1");
    assert_eq!(a["principal"]["kind"], "user");
    assert_eq!(a["principal"]["role"], "clinician");
    assert_eq!(ids(&a["patients"]), cared, "{a}");
    assert_eq!(a["refused_patients"], 1, "{a}");
    assert!(a["evidence"]["events"].as_u64().unwrap() >= 4, "{a}");
    assert!(a["evidence"]["refused"].as_u64().unwrap() >= 1, "{a}");
    assert_eq!(a["resource_types"]["Patient"], 3, "{a}");
    let places: Vec<(String, u64)> = a["jurisdictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                format!(
                    "{}/{}",
                    j["country"].as_str().unwrap(),
                    j["state"].as_str().unwrap()
                ),
                j["patients"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(places, [("US/MA".to_owned(), 2), ("US/NY".to_owned(), 1)]);
    assert_eq!(a["hitech"]["affected"], 3);
    assert_eq!(a["hitech"]["hhs_immediate"], false);
    assert!(a["hitech"]["media"].as_array().unwrap().is_empty());
    assert!(a["gdpr"]["authority_due"].as_str().unwrap().ends_with('Z'));
    let notice = a["notices"]["patient"].as_str().unwrap();
    assert!(notice.contains("[patient name]") && notice.contains("names, contact details"));
    let regulator = a["notices"]["regulator"].as_str().unwrap();
    assert!(
        regulator.contains("3 people") && regulator.contains("MA, US: 2"),
        "{regulator}"
    );
    for secret in ["Qwertyuiop", "Asdfghjkl", "Zxcvbnm", "Poiuytrewq"] {
        assert!(!notice.contains(secret) && !regulator.contains(secret));
    }

    // The CLI agrees, by user id; a draft notice prints as text.
    let user = a["principal"]["id"].as_str().unwrap().to_owned();
    let (ok, out, err) = s.run(&[
        "breach",
        "assess",
        "--principal",
        &user,
        "--from",
        &date(-1),
        "--to",
        &date(1),
    ]);
    assert!(ok, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&cli["patients"]), cared);
    let (ok, out, err) = s.run(&[
        "breach",
        "assess",
        "--principal",
        "dr.snoop",
        "--from",
        &date(-1),
        "--to",
        &date(1),
        "--notice",
        "regulator",
    ]);
    assert!(
        ok && out.starts_with("Notification of a personal data breach"),
        "{out} {err}"
    );

    // A compromised key: one patient's, and the KEK that wraps them all.
    let (st, k) = s.post_json(
        "/admin/breach/assess",
        Some(&s.token),
        &json!({"key": format!("Patient/{}", cared[0])}),
    );
    assert_eq!(st, 200, "{k}");
    assert_eq!(ids(&k["patients"]), [cared[0].clone()]);
    let (ok, out, err) = s.run(&["breach", "assess", "--key", "kek-1"]);
    assert!(ok, "{err}");
    let kek: Value = serde_json::from_str(&out).unwrap();
    let all = ids(&kek["patients"]);
    assert!(
        cared.iter().all(|p| all.contains(p)) && all.contains(&stranger),
        "{kek}"
    );
    assert!(!kek["shared"].as_array().unwrap().is_empty(), "{kek}");

    // Bad input: each a clear error, OperationOutcome over HTTP, one line on the CLI.
    for (body, says) in [
        (
            json!({"principal": "nobody-at-all", "from": date(-1), "to": date(1)}),
            "unknown principal",
        ),
        (
            json!({"principal": "dr.snoop", "from": date(1), "to": date(-1)}),
            "inverted",
        ),
        (
            json!({"principal": "dr.snoop", "from": "yesterday", "to": date(1)}),
            "not a time",
        ),
        (json!({"principal": "dr.snoop"}), "send {"),
        (json!({"key": "kek-99"}), "unknown key"),
        (
            json!({"key": "Patient/x", "principal": "dr.snoop"}),
            "send {",
        ),
    ] {
        let (st, e) = s.post_json("/admin/breach/assess", Some(&s.token), &body);
        assert_eq!(st, 400, "{body} {e}");
        assert_eq!(e["resourceType"], "OperationOutcome");
        assert!(e.to_string().contains(says), "{body}: {e}");
    }
    let (ok, out, err) = s.run(&[
        "breach",
        "assess",
        "--principal",
        "nobody-at-all",
        "--from",
        &date(-1),
        "--to",
        &date(1),
    ]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("unknown principal"), "{err}");
    // The clinician cannot assess anyone, nor read the register.
    let (st, _) = s.post_json("/admin/breach/assess", Some(&dr.session), &ask);
    assert_eq!(st, 403);
    assert_eq!(s.get_as("/admin/breaches", &dr.session, None).0, 403);

    // The register: an entry from the same assessment, a notice, then closed.
    let mut record = ask.clone();
    record["title"] = json!("Clinician browsed records beyond their care");
    record["description"] = json!("Found in the Sentinel queue.");
    let (st, entry) = s.post_json("/admin/breaches", Some(&s.token), &record);
    assert_eq!(st, 201, "{entry}");
    let id = entry["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("brc_"));
    assert_eq!(entry["status"], "open");
    assert_eq!(entry["affected"], 3);
    assert_eq!(entry["deadlines"]["authority"]["status"], "pending");
    let (st, e) = s.post_json(
        &format!("/admin/breaches/{id}/notices"),
        Some(&s.token),
        &json!({"to": "authority", "reason": "case DPA-2026-0042"}),
    );
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["status"], "notified");
    assert_eq!(e["deadlines"]["authority"]["status"], "on-time");
    let (st, e) = s.post_json(
        &format!("/admin/breaches/{id}/notices"),
        Some(&s.token),
        &json!({"to": "authority"}),
    );
    assert_eq!(st, 400, "a notice is recorded once: {e}");
    let (ok, out, err) = s.run(&["breach", "notify", &id, "--to", "individuals"]);
    assert!(
        ok && out.contains("notice to individuals recorded"),
        "{out} {err}"
    );
    let (ok, out, err) = s.run(&["breach", "close", &id, "--reason", "all notified"]);
    assert!(ok, "{out} {err}");
    let auditor = s.new_token("auditor");
    let (st, list) = s.get_as("/admin/breaches", &auditor, None);
    assert_eq!(st, 200, "{list}");
    let listed = &list["breaches"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["status"], "closed");
    assert_eq!(listed["deadlines"]["individuals"]["status"], "on-time");
    assert!(
        listed.get("assessment").is_none(),
        "the list leaves patients out"
    );
    // A page at a time: two more entries, listed one by one, newest first.
    for n in 0..2 {
        let mut more = record.clone();
        more["title"] = json!(format!("Later finding {n}"));
        let (st, e) = s.post_json("/admin/breaches", Some(&s.token), &more);
        assert_eq!(st, 201, "{e}");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/admin/breaches?count=1&after={a}"),
            None => "/admin/breaches?count=1".to_owned(),
        };
        let (st, page) = s.get_as(&path, &auditor, None);
        assert_eq!(st, 200, "{page}");
        assert_eq!(page["breaches"].as_array().unwrap().len(), 1, "{page}");
        seen.push(page["breaches"][0]["id"].as_str().unwrap().to_owned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2], id, "oldest last");
    for bad in ["count=0", "count=501", "after=brc_nope", "colour=red"] {
        let (st, e) = s.get_as(&format!("/admin/breaches?{bad}"), &auditor, None);
        assert_eq!(st, 400, "{bad} {e}");
    }
    let (st, shown) = s.get_as(&format!("/admin/breaches/{id}"), &auditor, None);
    assert_eq!(st, 200);
    assert_eq!(ids(&shown["assessment"]["patients"]), cared);
    assert_eq!(s.get_as("/admin/breaches/brc_nope", &auditor, None).0, 404);
    let (st, _) = s.post_json(
        &format!("/admin/breaches/{id}/close"),
        Some(&auditor),
        &json!({"reason": "x"}),
    );
    assert_eq!(st, 403, "auditors read the register only");

    // Every change is in the access log, which still verifies.
    s.verify_ledger();
}
