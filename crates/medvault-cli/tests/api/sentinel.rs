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
