//! `medvault sentinel replay` on small hand-written logs: every line scored in order, the
//! snooping access above routine care with its reasons, bad input refused by line number.

use serde_json::{Value, json};

use crate::MEDVAULT;

fn roster() -> Value {
    json!({
        "users": [
            {"id": "u1", "role": "nurse", "department": "cardiology", "family_token": "fam-1",
             "address_token": "addr-1", "shift": {"start": "07:00", "end": "19:00"}},
            {"id": "u2", "role": "nurse", "department": "cardiology", "family_token": "fam-2",
             "address_token": "addr-2", "shift": {"start": "07:00", "end": "19:00"}}
        ],
        "patients": [
            {"id": "p-ward", "family_token": "fam-9", "address_token": "addr-9",
             "vip": false, "employee_user": null, "deceased_at": null,
             "departments": ["cardiology"]},
            {"id": "p-brother", "family_token": "fam-1", "address_token": "addr-1",
             "vip": false, "employee_user": null, "deceased_at": null, "departments": []}
        ]
    })
}

fn event(minute: u32, user: &str, patient: &str, relationship: &str) -> String {
    json!({
        "time": format!("2026-11-02T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60),
        "user": user, "role": "nurse", "department": "cardiology", "patient": patient,
        "action": "read", "resource_type": "Observation", "purpose": "TREAT",
        "outcome": "allowed", "break_glass": false, "relationship": relationship,
        "client": "ehr-desktop", "address": "10.1.0.7"
    })
    .to_string()
}

/// A Patient labelled a celebrity (HL7 v3 `CELEB`) who shares the family name of every test
/// practitioner (`medvault_testkit::people` names them all "Practitioner"); its id.
fn celebrity(s: &medvault_testkit::Server) -> String {
    s.create(&json!({
        "resourceType": "Patient",
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                               "code": "CELEB"}]},
        "name": [{"family": "Practitioner", "given": ["Famous"]}],
    }))
}

/// The sentinel alerts people (not API tokens) raised, acknowledged or not, as the privacy
/// officer `officer` lists them: polled until `enough` holds of them or ten seconds pass; the
/// last list seen.
fn people_alerts(
    s: &medvault_testkit::Server,
    officer: &str,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let (st, list) = s.get_as("/privacy/alerts?kind=sentinel&all=true", officer, None);
        assert_eq!(st, 200, "{list}");
        let alerts: Vec<Value> = list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["user"].as_str().unwrap().starts_with("usr_"))
            .cloned()
            .collect();
        if enough(&alerts) || started.elapsed() > std::time::Duration::from_secs(10) {
            return alerts;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn replay(dir: &std::path::Path, events: &str) -> (bool, String, String) {
    let files = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    std::fs::write(dir.join("events.jsonl"), events).unwrap();
    std::fs::write(dir.join("roster.json"), roster().to_string()).unwrap();
    MEDVAULT.cli(
        &[
            "sentinel",
            "replay",
            "--events",
            &files("events.jsonl"),
            "--roster",
            &files("roster.json"),
            "--out",
            &files("scores.jsonl"),
        ],
        &[],
    )
}

#[test]
fn a_replay_scores_every_line_in_order_and_explains_the_snooping_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..200)
        .map(|i| {
            event(
                i,
                if i % 2 == 0 { "u1" } else { "u2" },
                "p-ward",
                "care-team",
            )
        })
        .collect();
    lines.push(event(201, "u1", "p-brother", "none"));
    lines.push(event(202, "u2", "p-ward", "care-team"));
    let (ok, out, err) = replay(tmp.path(), &(lines.join("\n") + "\n"));
    assert!(ok, "{err}");
    assert!(out.contains("scored 202 events"), "{out}");
    let scores: Vec<Value> = std::fs::read_to_string(tmp.path().join("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(scores.len(), 202);
    for (i, s) in scores.iter().enumerate() {
        assert_eq!(s["index"], i);
    }
    let snoop = &scores[200];
    assert_eq!(snoop["alert"], true, "{snoop}");
    let reasons: Vec<&str> = snoop["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signal"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"same_family"), "{snoop}");
    assert!(reasons.contains(&"same_address"), "{snoop}");
    let routine = &scores[201];
    assert_eq!(routine["alert"], false, "{routine}");
    assert!(snoop["score"].as_f64().unwrap() > routine["score"].as_f64().unwrap() + 0.5);
}

#[test]
fn a_bad_line_is_named_by_its_number_and_stops_the_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let good = event(1, "u1", "p-ward", "care-team");
    for (bad, says) in [
        (
            "{\"time\": \"2026-11-02T08:00:00Z\", \"user\": \"u1\"",
            "line 2:",
        ),
        (&event(2, "u1", "p-ward", "friend")[..], "friend"),
        (
            &event(2, "u1", "p-ward", "none").replace("2026-11-02T", "02/11/2026 "),
            "RFC 3339",
        ),
    ] {
        let (ok, _, err) = replay(tmp.path(), &format!("{good}\n{bad}\n{good}\n"));
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.starts_with("medvault: error:") && err.contains("line 2:"),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }
    // Scores written over the events would destroy them: refused, the file intact.
    std::fs::write(tmp.path().join("events.jsonl"), format!("{good}\n")).unwrap();
    let events = tmp.path().join("events.jsonl");
    let (ok, _, err) = MEDVAULT.cli(
        &[
            "sentinel",
            "replay",
            "--events",
            events.to_str().unwrap(),
            "--roster",
            tmp.path().join("roster.json").to_str().unwrap(),
            "--out",
            events.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && err.contains("--events"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        format!("{good}\n")
    );
    // A roster that is not one is refused before any event is read.
    std::fs::write(tmp.path().join("roster.json"), "{\"staff\": []}").unwrap();
    let (ok, _, err) = MEDVAULT.cli(
        &[
            "sentinel",
            "replay",
            "--events",
            tmp.path().join("events.jsonl").to_str().unwrap(),
            "--roster",
            tmp.path().join("roster.json").to_str().unwrap(),
            "--out",
            tmp.path().join("s.jsonl").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("not a roster") && err.contains("staff"),
        "{err}"
    );
}

/// Live: a clinician who opens the record of a celebrity who shares her family name, with no
/// care relationship, is in the privacy officer's queue within seconds, with the reasons; a
/// clinician caring for a patient is not.
#[test]
fn a_live_node_alerts_the_privacy_officer_with_reasons() {
    let s = MEDVAULT.start_with(&["--sentinel-threshold", "0.7"]);
    let doc = s.person("dr.snoop", "clinician");
    let carer = s.person("dr.care", "clinician");
    let po = s.person("p.officer", "privacy-officer");
    // Test practitioners are all named "Practitioner" (medvault_testkit::people).
    let star = celebrity(&s);
    let ward = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Ward"}]}));
    s.care_team(carer.practitioner.as_deref().unwrap(), &ward);
    for _ in 0..5 {
        assert_eq!(
            s.status_as(&format!("/fhir/Patient/{ward}"), &carer.session),
            200
        );
    }
    let snooped = s.status_as(&format!("/fhir/Patient/{star}"), &doc.session);
    let of_star = |a: &Value| a["patient"] == json!(star);
    let alerts = people_alerts(&s, &po.session, |a| a.iter().any(of_star));
    let Some(alert) = alerts.iter().find(|a| of_star(a)) else {
        panic!("no sentinel alert for the snooped patient (read answered {snooped}): {alerts:?}");
    };
    let reasons: Vec<&str> = alert["detail"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["signal"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"same_family"), "{alert}");
    assert!(reasons.contains(&"vip"), "{alert}");
    let score = alert["detail"]["score"].as_f64().unwrap();
    assert!((0.7..=1.0).contains(&score), "{alert}");
    // The carer's routine reads raised nothing (the admin's API token, which set the node up
    // with no history to compare against, may have).
    let (_, all) = s.get_as("/privacy/alerts?kind=sentinel&all=true", &po.session, None);
    assert!(
        all["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["patient"] != json!(ward) || a["user"].as_str().unwrap().starts_with("tok_")),
        "{all}"
    );
    // The alert is in the access log too, and a name never is in the alert.
    let text = all.to_string();
    assert!(
        !text.contains("Famous") && !text.contains("Practitioner\""),
        "{text}"
    );
    let (_, trail) = s.get(&format!("AuditEvent?patient={star}&_count=100"));
    assert!(trail.to_string().contains("sentinel-alert"), "{trail}");
}

/// Killed right after a snooping request, the node scores it after the restart: one alert for
/// it, never two, and the events after the restart are scored too.
#[test]
fn a_killed_node_scores_every_event_once_after_restarting() {
    let threshold = ["--sentinel-threshold", "0.7"];
    let mut s = MEDVAULT.start_with(&threshold);
    let doc = s.person("dr.snoop", "clinician");
    let po = s.person("p.officer", "privacy-officer");
    let celebrity = || celebrity(&s);
    let (star, other_star) = (celebrity(), celebrity());
    let snoop = |s: &medvault_testkit::Server, who: &str| {
        s.status_as(&format!("/fhir/Patient/{who}"), &doc.session);
    };
    // (The people's alerts are the snooping clinician's: there are no others.)
    let alerts_for_star = |s: &medvault_testkit::Server, want: usize| -> Vec<Value> {
        people_alerts(s, &po.session, |a| a.len() >= want)
    };
    snoop(&s, &star);
    s.kill9();
    let dir = s.dir.clone();
    let s2 = MEDVAULT.launch(&dir, &[], &threshold);
    let once = alerts_for_star(&s2, 1);
    assert_eq!(once.len(), 1, "{once:?}");
    // The same record again within the sitting adds no alert; another record does.
    snoop(&s2, &star);
    snoop(&s2, &other_star);
    let twice = alerts_for_star(&s2, 2);
    assert_eq!(twice.len(), 2, "{twice:?}");
    assert_ne!(twice[0]["detail"]["leaf"], twice[1]["detail"]["leaf"]);
    // A third start relearns the log without raising any of them again.
    drop(s2);
    let s3 = MEDVAULT.launch(&dir, &[], &threshold);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(alerts_for_star(&s3, 3).len(), 2);
}

/// A search or a Bundle is scored for every patient it revealed or was refused, not only one.
#[test]
fn searches_and_bundles_are_scored_for_every_patient_they_reach() {
    let s = MEDVAULT.start_with(&["--sentinel-threshold", "0.7"]);
    let doc = s.person("dr.snoop", "clinician");
    let po = s.person("p.officer", "privacy-officer");
    let celebrity = || celebrity(&s);
    let (in_bundle, in_search) = (celebrity(), celebrity());
    let ward = s.create(&json!({"resourceType": "Patient", "name": [{"family": "Ward"}]}));
    s.care_team(doc.practitioner.as_deref().unwrap(), &ward);
    let (st, _) = s.post_json(
        "/fhir",
        Some(&doc.session),
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{ward}")}},
            {"request": {"method": "GET", "url": format!("Patient/{in_bundle}")}},
        ]}),
    );
    assert_eq!(st, 200);
    s.status_as(
        &format!("/fhir/Patient?_id={ward},{in_search}"),
        &doc.session,
    );
    let for_patient = |a: &[Value], p: &str| a.iter().any(|a| a["patient"] == json!(p));
    let alerts = people_alerts(&s, &po.session, |a| {
        for_patient(a, &in_bundle) && for_patient(a, &in_search)
    });
    assert!(
        for_patient(&alerts, &in_bundle) && for_patient(&alerts, &in_search),
        "the Bundle's and the search's celebrities were not both alerted: {alerts:?}"
    );
    assert!(!for_patient(&alerts, &ward), "{alerts:?}");
}

/// A node's own log exported in the replay formats: every access and failed sign-in, a roster
/// whose tokens match where names match (a clinician and a celebrity of one family name), no
/// name anywhere; and the export replays to the same snooping alert.
#[test]
fn a_nodes_own_log_exports_to_the_replay_formats_without_names() {
    let s = MEDVAULT.start();
    let doc = s.person("dr.export", "clinician");
    // Her department and shift, as the node reads them from her PractitionerRole.
    s.create(&json!({
        "resourceType": "PractitionerRole", "active": true,
        "practitioner": {"reference": format!("Practitioner/{}", doc.practitioner.as_deref().unwrap())},
        "organization": {"reference": "Organization/cardiology"},
        "availableTime": [{"daysOfWeek": ["mon", "tue"], "availableStartTime": "07:30:00",
                           "availableEndTime": "19:30:00"}]
    }));
    let star = celebrity(&s);
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{star}"), &doc.session),
        404
    );
    let (st, _) = s.post_json(
        "/auth/login",
        None,
        &json!({"username": "dr.export", "password": "not the password"}),
    );
    assert_eq!(st, 401);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (ok, out, err) = s.run(&[
        "sentinel",
        "export",
        "--events",
        &file("events.jsonl"),
        "--roster",
        &file("roster.json"),
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("exported "), "{out}");
    let events = std::fs::read_to_string(file("events.jsonl")).unwrap();
    let roster = std::fs::read_to_string(file("roster.json")).unwrap();
    for text in [&events, &roster] {
        assert!(
            !text.contains("Famous") && !text.contains("Practitioner\""),
            "{text}"
        );
    }
    let lines: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let snoop = lines
        .iter()
        .position(|e| e["patient"] == json!(star) && e["action"] == "read")
        .expect("the snooping read");
    assert_eq!(lines[snoop]["outcome"], "denied", "{}", lines[snoop]);
    assert!(
        lines.iter().any(|e| e["action"] == "login"
            && e["outcome"] == "denied"
            && e["why"] == "bad-credentials"),
        "{events}"
    );
    let roster: Value = serde_json::from_str(&roster).unwrap();
    let user = lines[snoop]["user"].as_str().unwrap();
    let token_of = |list: &str, id: &str| {
        roster[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == json!(id))
            .unwrap_or_else(|| panic!("{id} not in the roster's {list}"))["family_token"]
            .clone()
    };
    let me = roster["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == json!(user))
        .unwrap();
    assert_eq!(me["department"], "Organization/cardiology", "{me}");
    assert_eq!(
        me["shift"],
        json!({"start": "07:30", "end": "19:30"}),
        "{me}"
    );
    let family = token_of("users", user);
    assert!(family.is_string(), "{roster}");
    assert_eq!(family, token_of("patients", &star));
    // The export is a replay's input as it stands.
    let (ok, out, err) = MEDVAULT.cli(
        &[
            "sentinel",
            "replay",
            "--events",
            &file("events.jsonl"),
            "--roster",
            &file("roster.json"),
            "--out",
            &file("scores.jsonl"),
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("scored {} events", lines.len())),
        "{out}"
    );
    let scores = std::fs::read_to_string(file("scores.jsonl")).unwrap();
    let score: Value = serde_json::from_str(scores.lines().nth(snoop).unwrap()).unwrap();
    let reasons = score["reasons"].to_string();
    assert!(
        reasons.contains("same_family") && reasons.contains("vip"),
        "{score}"
    );
    // The same path twice is refused before anything is written.
    let (ok, _, err) = s.run(&[
        "sentinel",
        "export",
        "--events",
        &file("x.jsonl"),
        "--roster",
        &file("x.jsonl"),
    ]);
    assert!(!ok && err.contains("same file"), "{err}");
}
