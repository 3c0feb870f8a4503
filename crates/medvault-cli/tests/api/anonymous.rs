//! Requests that authenticate no one (issue 15, item 8): limited per client address, recorded
//! one by one only up to a budget, the rest counted into summary records without losing any.

use std::time::{Duration, Instant};

use serde_json::Value;

use medvault_testkit::Server;

use crate::MEDVAULT;

/// The access-log leaf of an admin request (authenticated: always its own leaf).
fn admin_leaf(s: &Server) -> u64 {
    let r = s
        .req(reqwest::Method::GET, "Patient?_count=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.headers()[medvault_server::ACCESS_LEAF_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn leaf_of(event: &Value) -> u64 {
    event["id"]
        .as_str()
        .unwrap()
        .strip_prefix("ledger-")
        .unwrap()
        .parse()
        .unwrap()
}

/// The AuditEvents of leaves strictly between `after` and `before`.
fn events_between(s: &Server, after: u64, before: u64) -> Vec<Value> {
    let (st, b) = s.get(&format!("AuditEvent?_count=500&_before={before}"));
    assert_eq!(st, 200, "{b}");
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .filter(|e| leaf_of(e) > after)
        .collect()
}

/// The count a summary record carries (its `count` entity detail), if it is one.
fn summary_count(event: &Value) -> Option<u64> {
    event["entity"].as_array()?.iter().find_map(|e| {
        e["detail"].as_array()?.iter().find_map(|d| {
            (d["type"] == "count").then(|| d["valueString"].as_str().unwrap().parse().unwrap())
        })
    })
}

#[test]
fn anonymous_requests_are_limited_and_counted_together() {
    let s = MEDVAULT.start_with(&[
        "--anonymous-requests-per-minute",
        "100",
        "--anonymous-summary-seconds",
        "1",
    ]);
    let before = admin_leaf(&s);
    let client = reqwest::blocking::Client::new();
    const N: usize = 250;
    let mut statuses = Vec::with_capacity(N);
    for i in 0..N {
        let r = client
            .get(s.at(&format!("/no/such/path/{i}")))
            .send()
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let (missing, throttled) = (
        statuses.iter().filter(|s| **s == 404).count(),
        statuses.iter().filter(|s| **s == 429).count(),
    );
    assert_eq!(missing + throttled, N, "{statuses:?}");
    assert!(
        missing >= 100 && throttled >= 1,
        "after 100 anonymous requests a minute the address gets 429: {statuses:?}"
    );
    // A valid credential still works from the throttled address.
    assert!(admin_leaf(&s) > before);

    // Every junk request is counted: one by one (its own leaf) or in a summary record. Summaries
    // are written every second here.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (events, counted) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let after = admin_leaf(&s);
        // The anonymous ones (the admin's own requests are between them too).
        let events: Vec<Value> = events_between(&s, before, after)
            .into_iter()
            .filter(|e| {
                e["agent"][0]["who"]["display"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("unauthenticated"))
            })
            .collect();
        let one_by_one = events.iter().filter(|e| summary_count(e).is_none()).count() as u64;
        let summed: u64 = events.iter().filter_map(summary_count).sum();
        if one_by_one + summed == N as u64 {
            break (events, one_by_one + summed);
        }
        assert!(
            Instant::now() < deadline,
            "{one_by_one} recorded one by one and {summed} in summaries, not {N}: {events:#?}"
        );
    };
    assert_eq!(counted, N as u64);
    // The log grew by far fewer leaves than there were requests: at most 30 a minute one by
    // one, plus the summaries.
    assert!(
        events.len() <= 40,
        "{} leaves for {N} junk requests",
        events.len()
    );
    for e in events.iter().filter(|e| summary_count(e).is_none()) {
        assert_eq!(
            e["agent"][0]["who"]["display"], "unauthenticated client",
            "{e}"
        );
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1", "{e}");
    }
    let summary = events
        .iter()
        .find(|e| summary_count(e).is_some())
        .expect("a summary record");
    let details = summary["entity"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["detail"].as_array().cloned().unwrap_or_default())
        .map(|d| d["type"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert!(
        details.iter().any(|d| d == "address 127.0.0.1")
            && details.iter().any(|d| d == "status 429"),
        "{summary}"
    );
    assert!(
        summary["outcomeDesc"]
            .as_str()
            .unwrap()
            .contains("recorded together"),
        "{summary}"
    );
}
