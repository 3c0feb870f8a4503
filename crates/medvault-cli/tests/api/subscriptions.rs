//! Subscriptions: a rest-hook endpoint (a plain HTTP receiver on loopback, in this test) gets
//! the handshake, an event per matching write (only what its owner may see, id-only by
//! default) and nothing else; `$status` and `$events` account for them; bad subscriptions are
//! refused; every notification is in the access log.

use std::time::{Duration, Instant};

use medvault_testkit::fhir::observation;
use medvault_testkit::receiver::Receiver;
use serde_json::{Value, json};

use crate::MEDVAULT;

fn subscription(criteria: &str, endpoint: &str, content: Option<&str>) -> Value {
    let mut channel = json!({"type": "rest-hook", "endpoint": endpoint,
        "payload": "application/fhir+json"});
    if let Some(c) = content {
        channel["_payload"] = json!({"extension": [{
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
            "valueCode": c}]});
    }
    json!({"resourceType": "Subscription", "status": "requested", "reason": "test",
        "criteria": criteria, "channel": channel})
}

fn kind(notification: &Value) -> String {
    notification["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "type")
        .unwrap()["valueCode"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn rest_hooks_get_handshakes_and_matching_events_only() {
    let s = MEDVAULT.start();
    let [p] = s.create_patients([("Subfam", "S")]);
    let hook = Receiver::start();
    let sub = s.create(&subscription(
        "Observation?code=2345-7",
        &hook.endpoint(),
        None,
    ));
    let first = hook.wait_for(1);
    assert_eq!(first[0]["type"], "history");
    assert_eq!(kind(&first[0]), "handshake");
    let start = Instant::now();
    while s.get(&format!("Subscription/{sub}")).1["status"] != "active" {
        assert!(start.elapsed() < Duration::from_secs(10), "not active");
        std::thread::sleep(Duration::from_millis(50));
    }

    let matching = s.create(&observation(&p, "2345-7", "2026-01-01"));
    s.create(&observation(&p, "718-7", "2026-01-02"));
    let got = hook.wait_for(2);
    std::thread::sleep(Duration::from_millis(500));
    let got_now = hook.got();
    assert_eq!(
        got_now.len(),
        2,
        "the other code is not notified: {got_now:?}"
    );
    let event = &got[1];
    assert_eq!(kind(event), "event-notification");
    let focus = &event["entry"][1];
    assert!(
        focus["fullUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("Observation/{matching}")),
        "{event}"
    );
    assert!(
        focus.get("resource").is_none(),
        "id-only: no record content: {event}"
    );
    assert!(
        !event.to_string().contains("valueQuantity") && !event.to_string().contains("mmol"),
        "no values leave: {event}"
    );

    // $status and $events count it.
    let (st, status) = s.get(&format!("Subscription/{sub}/$status"));
    assert_eq!(st, 200, "{status}");
    assert!(
        status.to_string().contains(r#""valueString":"1""#),
        "{status}"
    );
    let (_, events) = s.get(&format!("Subscription/{sub}/$events?eventsSinceNumber=1"));
    assert!(
        events
            .to_string()
            .contains(&format!("Observation/{matching}")),
        "{events}"
    );

    // A full-resource subscription gets the record itself.
    let full = Receiver::start();
    s.create(&subscription(
        "Observation?code=2345-7",
        &full.endpoint(),
        Some("full-resource"),
    ));
    full.wait_for(1);
    std::thread::sleep(Duration::from_millis(300));
    s.create(&observation(&p, "2345-7", "2026-01-03"));
    let got = full.wait_for(2);
    assert_eq!(
        got[1]["entry"][1]["resource"]["resourceType"],
        "Observation"
    );

    // The access log names each notification and the patient it concerned.
    let (_, log) = s.get(&format!("AuditEvent?patient={p}&_count=100"));
    assert!(log.to_string().contains("subscription-event"), "{log}");

    // Only admins and the owner read a subscription (its endpoint, headers, events).
    let dr = s.person("dr.subread", "clinician");
    assert_eq!(
        s.status_as(&format!("/fhir/Subscription/{sub}"), &dr.session),
        404
    );
    assert_eq!(
        s.status_as(&format!("/fhir/Subscription/{sub}/$events"), &dr.session),
        404
    );
    assert_eq!(s.status_as("/fhir/Subscription", &dr.session), 403);

    // Deleting a subscription stops it at once.
    let before = hook.got().len();
    assert_eq!(s.delete(&format!("Subscription/{sub}")).0, 200);
    std::thread::sleep(Duration::from_millis(300));
    s.create(&observation(&p, "2345-7", "2026-01-04"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(hook.got().len(), before, "nothing after the delete");
}

#[test]
fn bad_subscriptions_are_refused_and_hidden_records_never_notified() {
    let s = MEDVAULT.start();
    for (criteria, endpoint, why) in [
        (
            "Observation?code=1",
            "http://example.com/hook",
            "http beyond loopback",
        ),
        ("Observation?code=1", "ftp://127.0.0.1/x", "not http(s)"),
        (
            "Observation?patient.name=x",
            "https://example.com/hook",
            "a chain",
        ),
        ("Banana?x=1", "https://example.com/hook", "an unknown type"),
        (
            "Observation?nonesuch=1",
            "https://example.com/hook",
            "an unknown parameter",
        ),
    ] {
        let (st, v) = s.post("Subscription", &subscription(criteria, endpoint, None));
        assert_eq!(
            (st, &v["resourceType"]),
            (422, &json!("OperationOutcome")),
            "{why}: {v}"
        );
    }
    let mut framed = subscription("Observation?code=1", "https://example.com/hook", None);
    framed["channel"]["header"] = json!(["Host: evil.example"]);
    assert_eq!(
        s.post("Subscription", &framed).0,
        422,
        "the node frames the request"
    );
    framed["channel"]["header"] = json!(["X-Key: a\r\nInjected: 1"]);
    assert_eq!(
        s.post("Subscription", &framed).0,
        422,
        "no control characters"
    );
    let mut ws = subscription("Observation?code=1", "https://example.com/hook", None);
    ws["channel"]["type"] = json!("websocket");
    assert_eq!(s.post("Subscription", &ws).0, 422);
    let (st, _) = s.post(
        "Subscription",
        &subscription(
            "Observation?code=1",
            "https://example.com/hook",
            Some("everything"),
        ),
    );
    assert_eq!(st, 422);

    // Subscriptions are written by admins and services (a service's scopes then decide what it
    // hears of: tests/interop/test_smart_backend.py); a clinician's policy refuses them, and a
    // patient's session is refused before the policy.
    let [cared] = s.create_patients([("Caredsub", "C")]);
    let dr = s.person("dr.sub", "clinician");
    s.care_team(dr.practitioner.as_deref().unwrap(), &cared);
    let body = subscription("Observation?code=2345-7", "https://example.com/hook", None);
    assert_eq!(s.post_as("/fhir/Subscription", &dr.session, &body).0, 403);
    let ps = s.patient_session("pat.sub", &cared);
    assert_eq!(s.post_as("/fhir/Subscription", &ps, &body).0, 403);
}

#[test]
fn backport_topic_subscriptions_filter_by_their_criteria_extension() {
    let s = MEDVAULT.start();
    let [p] = s.create_patients([("Topicfam", "T")]);
    let hook = Receiver::start();
    let mut sub = subscription(
        "https://medvault.dev/fhir/SubscriptionTopic/resource-write",
        &hook.endpoint(),
        None,
    );
    sub["_criteria"] = json!({"extension": [{
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
        "valueString": "Observation?code=2345-7"}]});
    s.create(&sub);
    hook.wait_for(1);
    std::thread::sleep(Duration::from_millis(300));
    s.create(&observation(&p, "718-7", "2026-01-01"));
    let hit = s.create(&observation(&p, "2345-7", "2026-01-02"));
    let got = hook.wait_for(2);
    assert!(got[1].to_string().contains(&hit), "{:?}", got[1]);
    let mut no_filter = sub.clone();
    no_filter.as_object_mut().unwrap().remove("_criteria");
    assert_eq!(s.post("Subscription", &no_filter).0, 422);
    let mut two = sub.clone();
    two["_criteria"]["extension"]
        .as_array_mut()
        .unwrap()
        .push(json!({"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
            "valueString": "Patient?name=x"}));
    assert_eq!(s.post("Subscription", &two).0, 422, "exactly one filter");
    let mut stray = subscription("Observation?code=1", &hook.endpoint(), None);
    stray["_criteria"] = sub["_criteria"].clone();
    assert_eq!(
        s.post("Subscription", &stray).0,
        422,
        "a filter goes with the topic"
    );
    let watching = subscription("Subscription?status=active", &hook.endpoint(), None);
    assert_eq!(
        s.post("Subscription", &watching).0,
        422,
        "not on Subscriptions themselves"
    );
}
