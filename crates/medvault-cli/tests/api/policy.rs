//! The access policy against the live server: care relationships, consent, security labels,
//! purpose of use, break-glass, and that nothing hidden leaks through search, `_include`,
//! history, Bundles or counts.

use medvault_testkit::e2e::{send, write_file};
use medvault_testkit::fhir::{
    consent, diagnostics_shape, entry_statuses, ids, labelled, observation, patient, sorted,
};
use serde_json::{Value, json};

use crate::MEDVAULT;

#[test]
fn a_clinician_without_a_care_relationship_cannot_find_the_patient_anywhere() {
    let s = MEDVAULT.start();
    let [p, q] = s.create_patients([("Hiddenfam", "Hal"), ("Carefam", "Cy")]);
    let obs_p = s.create(&observation(&p, "2345-7", "2026-11-01"));
    let mut q_obs = observation(&q, "2345-7", "2026-11-02");
    q_obs["hasMember"] = json!([{"reference": format!("Observation/{obs_p}")}]);
    let obs_q = s.create(&q_obs);
    let dr = s.person("dr.nocare", "clinician");
    let team = s.care_team(dr.practitioner.as_deref().unwrap(), &q);
    let a = dr.session.as_str();

    // Reads: the hidden patient answers exactly as an id that does not exist.
    let unknown = "00000000-0000-4000-8000-000000000000";
    let (st, hidden) = s.get_as(&format!("/fhir/Patient/{p}"), a, None);
    let (st2, missing) = s.get_as(&format!("/fhir/Patient/{unknown}"), a, None);
    assert_eq!((st, st2), (404, 404), "{hidden} {missing}");
    assert_eq!(
        diagnostics_shape(&hidden, &[&p]),
        diagnostics_shape(&missing, &[unknown])
    );
    assert_eq!(s.status_as(&format!("/fhir/Observation/{obs_p}"), a), 404);
    assert_eq!(s.status_as(&format!("/fhir/Patient/{q}"), a), 200);

    // Searches: not in the results, not in the totals, not in the counts.
    for path in [
        format!("/fhir/Observation?patient={p}"),
        format!("/fhir/Observation?patient={p}&_summary=count"),
        "/fhir/Patient?family=Hiddenfam".to_owned(),
        format!("/fhir/Observation?_id={obs_p}"),
    ] {
        let (st, b) = s.get_as(&path, a, None);
        assert_eq!((st, &b["total"]), (200, &json!(0)), "{path}: {b}");
        assert!(ids(&b).is_empty(), "{path}: {b}");
    }
    let (_, all) = s.get_as("/fhir/Observation?_count=100", a, None);
    assert_eq!((ids(&all), &all["total"]), (vec![obs_q.clone()], &json!(1)));
    // _include: the admin sees the included member, the clinician does not.
    let include = format!("/fhir/Observation?patient={q}&_include=Observation:has-member");
    let (_, admin_view) = s.get(&include["/fhir/".len()..]);
    assert_eq!(
        ids(&admin_view),
        vec![obs_q.clone(), obs_p.clone()],
        "{admin_view}"
    );
    assert_eq!(admin_view["entry"][1]["search"]["mode"], "include");
    let (st, b) = s.get_as(&include, a, None);
    assert_eq!((st, ids(&b)), (200, vec![obs_q.clone()]), "{b}");
    // Chains, _has and _revinclude search the other type as the same requester: the hidden
    // patient's records neither match nor get included.
    let chain = "Observation?has-member:Observation.patient.family=Hiddenfam";
    assert_eq!(ids(&s.get(chain).1), vec![obs_q.clone()], "admin, two hops");
    let (st, b) = s.get_as(&format!("/fhir/{chain}"), a, None);
    assert_eq!((st, ids(&b), &b["total"]), (200, vec![], &json!(0)), "{b}");
    let has = "Patient?_has:Observation:patient:code=2345-7";
    assert_eq!(
        sorted(ids(&s.get(has).1)),
        sorted(vec![p.clone(), q.clone()])
    );
    let (st, b) = s.get_as(&format!("/fhir/{has}"), a, None);
    assert_eq!((st, ids(&b)), (200, vec![q.clone()]), "{b}");
    let rev = format!("Patient?_id={p},{q}&_revinclude=Observation:patient");
    assert_eq!(
        ids(&s.get(&rev).1).len(),
        4,
        "admin: both patients and both observations"
    );
    let (st, b) = s.get_as(&format!("/fhir/{rev}"), a, None);
    assert_eq!((st, ids(&b)), (200, vec![q.clone(), obs_q.clone()]), "{b}");

    // History: neither the instance's nor the type's.
    assert_eq!(
        s.status_as(&format!("/fhir/Observation/{obs_p}/_history"), a),
        404
    );
    assert_eq!(s.status_as(&format!("/fhir/Patient/{p}/_history"), a), 404);
    let (_, h) = s.get_as("/fhir/Observation/_history", a, None);
    assert_eq!(
        (ids(&h), &h["total"]),
        (vec![obs_q.clone()], &json!(1)),
        "{h}"
    );

    // Batch: each entry as on its own.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{p}")}},
        {"request": {"method": "GET", "url": format!("Observation?patient={p}")}},
        {"request": {"method": "GET", "url": format!("Observation/{obs_p}/_history")}},
        {"request": {"method": "GET", "url": format!("Patient/{q}")}},
    ]});
    let (st, b) = s.post_as("/fhir", a, &batch);
    assert_eq!(st, 200, "{b}");
    let statuses = entry_statuses(&b);
    assert_eq!(statuses[0].split(' ').next(), Some("404"), "{b}");
    assert_eq!(statuses[1].split(' ').next(), Some("200"), "{b}");
    assert_eq!(b["entry"][1]["resource"]["total"], 0, "{b}");
    assert_eq!(statuses[2].split(' ').next(), Some("404"), "{b}");
    assert_eq!(statuses[3].split(' ').next(), Some("200"), "{b}");

    // Writes: the hidden resource cannot be changed or deleted, nor new data written for the
    // patient.
    let mut changed = observation(&p, "2345-7", "2026-11-01");
    changed["id"] = json!(obs_p);
    let (st, _) = s.call(
        reqwest::Method::PUT,
        &format!("/fhir/Observation/{obs_p}"),
        a,
        None,
        Some(&changed),
    );
    assert_eq!(st, 403);
    assert_eq!(
        s.call(
            reqwest::Method::DELETE,
            &format!("/fhir/Observation/{obs_p}"),
            a,
            None,
            None
        )
        .0,
        404
    );
    let (st, _) = s.post_as("/fhir/Observation", a, &observation(&p, "1", "2026-11-03"));
    assert_eq!(st, 403);
    assert_eq!(
        s.get(&format!("Observation/{obs_p}")).1["meta"]["versionId"],
        "1"
    );
    // If-Match cannot tell a hidden resource from a missing one either.
    let probe = |id: &str| {
        let mut body = observation(&q, "2345-7", "2026-11-01");
        body["id"] = json!(id);
        let rb = s
            .anonymous(reqwest::Method::PUT, &format!("/fhir/Observation/{id}"))
            .bearer_auth(a)
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(body.to_string());
        send(rb)
    };
    let (st1, b1) = probe(&obs_p);
    let (st2, b2) = probe(unknown);
    assert_eq!((st1, st2), (404, 404), "{b1} {b2}");
    assert_eq!(
        diagnostics_shape(&b1, &[&obs_p]),
        diagnostics_shape(&b2, &[unknown])
    );

    // Every attempt is in the access log, found by the patient's id, with the deciding rule:
    // refusals as denied, and searches, histories and batches with what they withheld.
    let (st, trail) = s.get(&format!("AuditEvent?patient={p}&_count=200"));
    assert_eq!(st, 200, "{trail}");
    let events = trail["entry"].as_array().unwrap();
    let by_clinician: Vec<String> = events
        .iter()
        .filter(|e| e["resource"]["agent"][0]["role"][0]["text"] == "clinician")
        .map(|e| e["resource"]["outcomeDesc"].as_str().unwrap().to_owned())
        .collect();
    let text = by_clinician.join("\n");
    for what in [
        "read: denied (HTTP 404, denied by default-deny)",
        "delete: denied (HTTP 404, denied by default-deny)",
        "update: denied (HTTP 403, denied by default-deny)",
        "history-instance: denied (HTTP 404, denied by default-deny)",
        "search-type: success (HTTP 200; 1 withheld by default-deny)",
        "history-type: success (HTTP 200; 1 withheld by default-deny)",
        "batch/transaction: success (HTTP 200; ",
    ] {
        assert!(text.contains(what), "{what} missing:\n{text}");
    }
    assert!(by_clinician.len() >= 12, "{text}");

    // Leaving the care team ends the access at once (the shared facts are forgotten when a
    // CareTeam is written).
    assert_eq!(s.status_as(&format!("/fhir/Patient/{q}"), a), 200);
    let (_, mut ended) = s.get(&format!("CareTeam/{team}"));
    ended["status"] = json!("inactive");
    assert_eq!(s.put(&format!("CareTeam/{team}"), &ended).0, 200);
    assert_eq!(s.status_as(&format!("/fhir/Patient/{q}"), a), 404);
}

#[test]
fn consent_labels_purpose_and_break_glass() {
    let s = MEDVAULT.start();
    let [p, other] = s.create_patients([("Consentfam", "Cam"), ("Otherfam", "Oz")]);
    let plain = s.create(&observation(&p, "2345-7", "2026-11-01"));
    let hiv = s.create(&labelled(observation(&p, "75622-1", "2026-11-01"), "HIV"));
    let dr_a = s.person("dr.a", "clinician");
    let dr_b = s.person("dr.b", "clinician");
    let prac_a = dr_a.practitioner.clone().unwrap();
    s.care_team(&prac_a, &p);
    let a = dr_a.session.as_str();
    let b = dr_b.session.as_str();
    let read = |who: &str, id: &str, purpose: Option<&str>| {
        s.get_as(&format!("/fhir/Observation/{id}"), who, purpose).0
    };

    // Care relationship, treatment purpose: plain data yes, HIV-labelled data needs consent.
    assert_eq!(
        read(a, &plain, None),
        200,
        "TREAT is a clinician's default purpose"
    );
    assert_eq!(read(a, &plain, Some("TREAT")), 200);
    assert_eq!(read(a, &hiv, Some("TREAT")), 404);
    let (_, found) = s.get_as(&format!("/fhir/Observation?patient={p}"), a, None);
    assert_eq!(
        (ids(&found), &found["total"]),
        (vec![plain.clone()], &json!(1))
    );
    // A deleted HIV result stays as hidden as it was: not 410, not in any history.
    // (Deleting it needs reading it: the patient lets health-care operations see it, and the
    // admin deletes for that purpose.)
    s.create(&consent(
        &p,
        json!({"type": "permit", "purpose": [{"code": "HOPERAT"}], "securityLabel": [{"code": "HIV"}]}),
        "2025-12-01T00:00:00Z",
    ));
    let hiv_gone = s.create(&labelled(observation(&p, "75622-1", "2026-10-01"), "HIV"));
    let path = format!("/fhir/Observation/{hiv_gone}");
    assert_eq!(
        s.call(reqwest::Method::DELETE, &path, &s.token, None, None)
            .0,
        404
    );
    assert_eq!(
        s.call(
            reqwest::Method::DELETE,
            &path,
            &s.token,
            Some("HOPERAT"),
            None
        )
        .0,
        200
    );
    assert_eq!(read(a, &hiv_gone, None), 404);
    let (st, _) = s.get_as(&format!("/fhir/Observation/{hiv_gone}/_history"), a, None);
    assert_eq!(st, 404);
    let (_, h) = s.get_as("/fhir/Observation/_history?_count=100", a, None);
    assert!(!h.to_string().contains(&hiv_gone), "{h}");
    // Clinicians cannot write consents or care relationships, not even for their patients.
    let (st, _) = s.post_as(
        "/fhir/Consent",
        a,
        &consent(&p, json!({"type": "permit"}), "2026-11-01T00:00:00Z"),
    );
    assert_eq!(st, 403, "a consent is the patient's");
    let team = json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": format!("Patient/{p}")},
        "participant": [{"member": {"reference": "Practitioner/someone"}}]});
    let (st, _) = s.post_as("/fhir/CareTeam", a, &team);
    assert_eq!(st, 403, "care relationships come from registration");
    // Research is not treatment: a clinician may not declare it at all.
    assert_eq!(read(a, &plain, Some("HRESCH")), 403);
    assert_eq!(
        s.get_as(&format!("/fhir/Observation/{plain}"), a, Some("treat"))
            .0,
        400,
        "purpose codes are HL7 codes"
    );

    // The patient permits Dr A to see the HIV result.
    let permit = consent(
        &p,
        json!({"type": "permit",
               "actor": [{"role": {"text": "PRCP"}, "reference": {"reference": format!("Practitioner/{prac_a}")}}],
               "securityLabel": [{"code": "HIV"}]}),
        "2026-01-01T00:00:00Z",
    );
    s.create(&permit);
    assert_eq!(read(a, &hiv, None), 200);

    // Break-glass: Dr B has no relationship.
    assert_eq!(read(b, &plain, Some("ETREAT")), 404, "no grant yet");
    let (st, e) = s.post_as(
        "/auth/break-glass",
        b,
        &json!({"patient": p, "reason": "short"}),
    );
    assert_eq!(st, 400, "{e}");
    let reason = "Unconscious in ED, no records reachable, need allergies";
    let (st, grant) = s.post_as(
        "/auth/break-glass",
        b,
        &json!({"patient": p, "reason": reason, "minutes": 30}),
    );
    assert_eq!(st, 201, "{grant}");
    assert_eq!(grant["purpose_required"], "ETREAT");
    let (st, e) = s.post_as(
        "/auth/break-glass",
        b,
        &json!({"patient": p, "reason": reason, "minutes": 100_000}),
    );
    assert_eq!(st, 400, "time-boxed: {e}");
    assert_eq!(
        read(b, &plain, Some("TREAT")),
        404,
        "only for emergency treatment"
    );
    assert_eq!(read(b, &plain, Some("ETREAT")), 200);
    assert_eq!(
        read(b, &hiv, Some("ETREAT")),
        200,
        "break-glass reaches labelled data"
    );
    let other_obs = s.create(&observation(&other, "2345-7", "2026-11-01"));
    assert_eq!(read(b, &other_obs, Some("ETREAT")), 404, "one patient only");
    // An API token cannot open break-glass, and neither can a nurse's stale sign-in (step-up
    // is tested with admin actions); nor can an admin.
    let (st, _) = s.post_json(
        "/auth/break-glass",
        Some(&s.token),
        &json!({"patient": p, "reason": reason}),
    );
    assert_eq!(st, 403);

    // A later consent denying Dr A wins over the earlier permit; break-glass still opens.
    let deny = consent(
        &p,
        json!({"type": "deny",
               "actor": [{"role": {"text": "PRCP"}, "reference": {"reference": format!("Practitioner/{prac_a}")}}]}),
        "2026-06-01T00:00:00Z",
    );
    s.create(&deny);
    assert_eq!(read(a, &plain, None), 404);
    assert_eq!(read(a, &hiv, None), 404);
    assert_eq!(read(b, &plain, Some("ETREAT")), 200);

    // The privacy officer sees the alert with its justification and acknowledges it.
    let po = s.person("p.officer", "privacy-officer");
    // (Sentinel may have alerts of its own on Dr B's emergency reads: kind `sentinel`.)
    let (st, list) = s.get_as("/privacy/alerts?kind=break-glass", &po.session, None);
    assert_eq!(st, 200, "{list}");
    let alerts = list["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{list}");
    assert_eq!(alerts[0]["kind"], "break-glass");
    assert_eq!(alerts[0]["patient"], json!(p));
    assert_eq!(alerts[0]["detail"]["reason"], reason);
    assert_eq!(s.status_as("/privacy/alerts", a), 403);
    let id = alerts[0]["id"].as_str().unwrap();
    let (st, _) = s.post_json(
        &format!("/privacy/alerts/{id}/acknowledge"),
        Some(&po.session),
        &json!({}),
    );
    assert_eq!(st, 200);
    let (_, open) = s.get_as("/privacy/alerts?kind=break-glass", &po.session, None);
    assert_eq!(open["alerts"].as_array().unwrap().len(), 0, "{open}");
    let (_, all) = s.get_as(
        "/privacy/alerts?all=true&kind=break-glass",
        &po.session,
        None,
    );
    assert_eq!(
        all["alerts"][0]["acknowledged_by"]
            .as_str()
            .map(|x| x.starts_with("usr_")),
        Some(true)
    );

    // The ledger has the opening and every access it opened, for the patient.
    let (_, trail) = s.get(&format!("AuditEvent?patient={p}&_count=200"));
    let text = trail.to_string();
    assert!(text.contains("break-glass: success"), "{text}");
    assert!(text.contains("ETREAT"), "{text}");
    // And the justification never shows in the log or the stored files in plaintext.
    let log = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .any(|e| {
            std::fs::read(e.path())
                .map(|b| b.windows(reason.len()).any(|w| w == reason.as_bytes()))
                .unwrap_or(false)
        });
    assert!(!log, "the justification is stored sealed");
}

#[test]
fn site_policies_extend_the_default_and_bad_ones_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "research.cedar",
        r#"@id("research-search") permit (principal, action == Medvault::Action::"search", resource)
           when { principal.role == "researcher" && context.purpose == "HRESCH" };"#,
    );
    let bad = write_file(
        dir.path(),
        "bad.cedar",
        r#"@id("x") permit (principal, action, resource) when { principal.age > 1 };"#,
    );
    let data = dir.path().join("data");
    let (ok, _, err) = MEDVAULT.cli(
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--policy",
            bad.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok, "an invalid policy stops the start");
    assert!(err.contains("bad.cedar") && err.contains("age"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let s = MEDVAULT.start_with(&["--policy", file.to_str().unwrap()]);
    let p = s.create(&patient("Studyfam", "Sue"));
    let obs = s.create(&observation(&p, "2345-7", "2026-11-01"));
    let r = s.person("r.search", "researcher");
    let path = format!("/fhir/Observation?patient={p}");
    let (_, b) = s.get_as(&path, &r.session, Some("HRESCH"));
    assert_eq!(ids(&b), vec![obs.clone()], "{b}");
    let (_, b) = s.get_as(&path, &r.session, Some("TREAT"));
    assert!(ids(&b).is_empty(), "{b}");
    assert_eq!(
        s.get_as(
            &format!("/fhir/Observation/{obs}"),
            &r.session,
            Some("HRESCH")
        )
        .0,
        404,
        "search, not read"
    );
}

/// Who asks, in the matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    ClinicianCare,
    ClinicianNone,
    NurseCare,
    NurseNone,
    Researcher,
    OwnPatient,
}

/// What the matrix sees of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// 200 with the resource.
    Allowed,
    /// Hidden (404, left out of the search) or, for an update, refused by the policy.
    NotAllowed,
    /// 403: the role may not declare the purpose.
    PurposeRefused,
}

/// The purposes each role may declare, written out independently of the policy crate.
fn declarable(who: Who, purpose: &str) -> bool {
    match who {
        Who::ClinicianCare | Who::ClinicianNone | Who::NurseCare | Who::NurseNone => {
            matches!(purpose, "TREAT" | "ETREAT" | "HOPERAT")
        }
        Who::Researcher => purpose == "HRESCH",
        Who::OwnPatient => purpose == "PATRQT",
    }
}

/// The policy as the matrix expects it, written out independently of the Cedar text: the
/// default policy's rules for one read, search or update (an update needs the stored version
/// readable too). `deny-treat` is a consent denying everyone for treatment only: it covers the
/// other care purposes too (operations, emergency) — a deny is not escaped by naming another
/// purpose of its family. `ETREAT` without a break-glass grant opens nothing.
fn expected(
    who: Who,
    consent: &str,
    label: bool,
    purpose: &str,
    interaction: &str,
    own: bool,
) -> Seen {
    if !declarable(who, purpose) {
        return Seen::PurposeRefused;
    }
    let staff_with_care = matches!(who, Who::ClinicianCare | Who::NurseCare);
    let denied = matches!(consent, "deny" | "deny-treat");
    let allowed = match interaction {
        // Writing needs treatment, and what one may not read one may not overwrite either.
        "update" => {
            staff_with_care && purpose == "TREAT" && !denied && (!label || consent == "permit")
        }
        _ => match who {
            Who::OwnPatient => own,
            _ if !staff_with_care => false,
            _ => {
                matches!(purpose, "TREAT" | "HOPERAT") && !denied && (!label || consent == "permit")
            }
        },
    };
    if allowed {
        Seen::Allowed
    } else {
        Seen::NotAllowed
    }
}

/// True if a 403's OperationOutcome is the purpose-of-use refusal.
fn purpose_refused(b: &Value) -> bool {
    b["issue"][0]["diagnostics"]
        .as_str()
        .is_some_and(|d| d.contains("may not declare"))
}

#[test]
fn authorization_matrix_against_the_live_server() {
    let s = MEDVAULT.start();
    // Four patients whose consents say nothing, permit all, deny all, deny treatment; each with
    // a plain and an HIV-labelled result.
    let mut patients = Vec::new();
    let mut bodies = std::collections::HashMap::new();
    for (name, consent_kind) in [
        ("Nonefam", "none"),
        ("Permitfam", "permit"),
        ("Denyfam", "deny"),
        ("Denytreatfam", "deny-treat"),
    ] {
        let p = s.create(&patient(name, "Mx"));
        let provision = match consent_kind {
            "none" => None,
            "deny-treat" => Some(json!({"type": "deny", "purpose": [{"code": "TREAT"}]})),
            k => Some(json!({"type": k})),
        };
        if let Some(provision) = provision {
            s.create(&consent(&p, provision, "2026-01-01T00:00:00Z"));
        }
        let plain_body = observation(&p, "2345-7", "2026-11-01");
        let hiv_body = labelled(observation(&p, "75622-1", "2026-11-01"), "HIV");
        let plain = s.create(&plain_body);
        let hiv = s.create(&hiv_body);
        bodies.insert(plain.clone(), plain_body);
        bodies.insert(hiv.clone(), hiv_body);
        patients.push((p, consent_kind, plain, hiv));
    }
    let mut people = Vec::new();
    for (who, name, role) in [
        (Who::ClinicianCare, "m.care", "clinician"),
        (Who::ClinicianNone, "m.none", "clinician"),
        (Who::NurseCare, "n.care", "nurse"),
        (Who::NurseNone, "n.none", "nurse"),
        (Who::Researcher, "m.research", "researcher"),
    ] {
        let x = s.person(name, role);
        if matches!(who, Who::ClinicianCare | Who::NurseCare) {
            for (p, ..) in &patients {
                s.care_team(x.practitioner.as_deref().unwrap(), p);
            }
        }
        people.push((who, x.session));
    }
    // The patient of the first patient record, with their own account.
    let own_patient = patients[0].0.clone();
    people.push((
        Who::OwnPatient,
        s.patient_session("m.patient", &own_patient),
    ));
    // The patient pages through their own records: the next link, which carries the scope's
    // constraint, is the same search when followed.
    let own = &people[people.len() - 1].1;
    let (st, first) = s.get_as("/fhir/Observation?_count=1", own, Some("PATRQT"));
    assert_eq!(st, 200, "{first}");
    let next = first["link"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("the patient has a second page");
    let (_, path) = next.split_once("/fhir/").unwrap();
    let (st, second) = s.get_as(&format!("/fhir/{path}"), own, Some("PATRQT"));
    assert_eq!(st, 200, "{second}");
    assert_eq!(ids(&second).len(), 1);
    assert_ne!(ids(&first), ids(&second));

    let purposes = ["TREAT", "HOPERAT", "HRESCH", "ETREAT", "PATRQT"];
    let mut cases = 0;
    let mut failures = Vec::new();
    for (who, session) in &people {
        for (p, consent_kind, plain, hiv) in &patients {
            for (label, id) in [(false, plain), (true, hiv)] {
                for purpose in purposes {
                    for interaction in ["read", "search", "update"] {
                        let own = *p == own_patient;
                        let want = expected(*who, consent_kind, label, purpose, interaction, own);
                        let got = match interaction {
                            "read" => {
                                let (st, b) = s.get_as(
                                    &format!("/fhir/Observation/{id}"),
                                    session,
                                    Some(purpose),
                                );
                                match st {
                                    200 => Seen::Allowed,
                                    404 => Seen::NotAllowed,
                                    403 if purpose_refused(&b) => Seen::PurposeRefused,
                                    _ => panic!("read answers 200, 404 or 403, got {st}: {b}"),
                                }
                            }
                            "search" => {
                                let (st, b) = s.get_as(
                                    &format!("/fhir/Observation?_id={id}"),
                                    session,
                                    Some(purpose),
                                );
                                if st == 403 && purpose_refused(&b) {
                                    Seen::PurposeRefused
                                } else {
                                    assert_eq!(st, 200, "{b}");
                                    assert_eq!(
                                        b["total"].as_u64(),
                                        Some(u64::from(!ids(&b).is_empty())),
                                        "totals count only what is shown"
                                    );
                                    if ids(&b).is_empty() {
                                        Seen::NotAllowed
                                    } else {
                                        Seen::Allowed
                                    }
                                }
                            }
                            _ => {
                                let mut current = bodies[id.as_str()].clone();
                                current["id"] = json!(id);
                                current["valueQuantity"]["value"] = json!(cases);
                                let (st, b) = s.call(
                                    reqwest::Method::PUT,
                                    &format!("/fhir/Observation/{id}"),
                                    session,
                                    Some(purpose),
                                    Some(&current),
                                );
                                match st {
                                    200 => Seen::Allowed,
                                    403 if purpose_refused(&b) => Seen::PurposeRefused,
                                    403 | 404 => Seen::NotAllowed,
                                    _ => panic!("update answers {st}: {b}"),
                                }
                            }
                        };
                        if got != want {
                            failures.push(format!("{who:?} {consent_kind} label={label} {purpose} {interaction}: got {got:?}, want {want:?}"));
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases, 6 * 4 * 2 * 5 * 3);
}

#[test]
fn writes_are_decided_for_every_patient_and_labels_stay_on() {
    let s = MEDVAULT.start();
    let [p, hidden] = s.create_patients([("Writefam", "W"), ("Hiddenwrite", "H")]);
    let dr = s.person("dr.write", "clinician");
    let prac = dr.practitioner.clone().unwrap();
    s.care_team(&prac, &p);
    let a = dr.session.as_str();
    // A list where one reference belongs is not a way into another patient's record.
    let mut two = observation(&p, "2345-7", "2026-11-01");
    two["subject"] =
        json!([{"reference": format!("Patient/{p}")}, {"reference": format!("Patient/{hidden}")}]);
    assert_eq!(s.post_as("/fhir/Observation", a, &two).0, 400);
    // Neither is a second compartment parameter naming the other patient.
    let mut performer = observation(&p, "2345-7", "2026-11-01");
    performer["performer"] = json!([{"reference": format!("Patient/{hidden}")}]);
    assert_eq!(s.post_as("/fhir/Observation", a, &performer).0, 403);
    let mut own = observation(&p, "2345-7", "2026-11-01");
    own["performer"] = json!([{"reference": format!("Patient/{p}")}]);
    assert_eq!(s.post_as("/fhir/Observation", a, &own).0, 201);

    // $validate answers as the write would: a hidden patient's identifier and an unknown one
    // are refused alike.
    let mut hp = patient("Hiddenwrite", "H");
    hp["identifier"] = json!([{"system": "urn:mrn", "value": "HW-1"}]);
    hp["id"] = json!(hidden);
    assert_eq!(s.put(&format!("Patient/{hidden}"), &hp).0, 200);
    let by_identifier = |mrn: &str| {
        let mut o = observation(&p, "2345-7", "2026-11-01");
        o["subject"] = json!({"identifier": {"system": "urn:mrn", "value": mrn}});
        s.post_as("/fhir/Observation/$validate", a, &o)
    };
    let (known, k) = by_identifier("HW-1");
    let (unknown, u) = by_identifier("NO-SUCH");
    assert_eq!((known, unknown), (403, 403), "{k} {u}");

    // Removing a sensitivity label is for admins and privacy officers: the clinician the
    // patient allowed to see HIV data may not hand it to the rest of the team.
    s.create(&consent(
        &p,
        json!({"type": "permit", "actor": [{"role": {"text": "PRCP"},
            "reference": {"reference": format!("Practitioner/{prac}")}}],
            "securityLabel": [{"code": "HIV"}]}),
        "2025-12-01T00:00:00Z",
    ));
    let hiv = s.create(&labelled(observation(&p, "75622-1", "2026-11-01"), "HIV"));
    let path = format!("/fhir/Observation/{hiv}");
    assert_eq!(
        s.status_as(&path, a),
        200,
        "the consent lets this clinician read it"
    );
    let strip = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]}}]});
    let (st, v) = s.post_as(&format!("{path}/$meta-delete"), a, &strip);
    assert_eq!(st, 403, "{v}");
    let mut unlabelled = s.get_as(&path, a, None).1;
    unlabelled["meta"] = json!({});
    let (st, _) = s.call(reqwest::Method::PUT, &path, a, None, Some(&unlabelled));
    assert_eq!(st, 403);
    // A lower-case label is the same label.
    let lower = s.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{hidden}")},
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "hiv"}]}}));
    let nurse = s.person("nurse.write", "nurse");
    s.care_team(nurse.practitioner.as_deref().unwrap(), &hidden);
    assert_eq!(
        s.status_as(&format!("/fhir/Observation/{lower}"), &nurse.session),
        404
    );
    // Changing the record while keeping its labels is the clinician's to do.
    let mut kept = s.get_as(&path, a, None).1;
    kept["status"] = json!("amended");
    let (st, v) = s.call(reqwest::Method::PUT, &path, a, None, Some(&kept));
    assert_eq!(st, 200, "{v}");
}
