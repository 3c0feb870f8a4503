//! API tokens (issue 15, item 9): they expire, are listed without their secret, record their
//! last use, can be revoked, and their refusals are in the access log.

use std::time::{Duration, Instant};

use medvault_testkit::Server;
use medvault_testkit::e2e::eventually;
use medvault_testkit::fhir::assert_outcome;
use serde_json::Value;

use crate::MEDVAULT;

/// Creates an auditor token; returns (token, id).
fn create(s: &Server, days: &str) -> (String, String) {
    let (ok, out, err) = s.run(&["token", "create", "--role", "auditor", "--days", days]);
    assert!(ok, "{err}");
    assert_eq!(out.trim().lines().count(), 1, "one line on stdout: {out}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("mvt_"), "{token}");
    let id = err
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .unwrap_or_else(|| panic!("the id on stderr: {err}"))
        .to_owned();
    (token, id)
}

fn list_line(s: &Server, id: &str) -> String {
    let (ok, out, err) = s.run(&["token", "list"]);
    assert!(ok, "{err}");
    assert!(!out.contains("mvt_"), "never a token's secret: {out}");
    out.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not listed: {out}"))
        .to_owned()
}

fn audit_read(s: &Server, token: &str) -> (u16, Value) {
    s.get_as("/fhir/AuditEvent?_count=1", token, None)
}

#[test]
fn api_tokens_expire_are_listed_revoked_and_record_use() {
    let s = MEDVAULT.start();
    // The lifetime is bounded.
    for days in ["0", "366"] {
        let (ok, _, err) = s.run(&["token", "create", "--role", "admin", "--days", days]);
        assert!(!ok, "--days {days} accepted");
        assert!(!err.trim().is_empty());
    }
    let (token, id) = create(&s, "2");
    let line = list_line(&s, &id);
    assert!(
        line.contains("\tauditor\t")
            && line.contains("last-used=never")
            && line.ends_with("active"),
        "{line}"
    );
    let expires = line
        .split('\t')
        .find_map(|f| f.strip_prefix("expires="))
        .unwrap()
        .to_owned();
    let created = line
        .split('\t')
        .find_map(|f| f.strip_prefix("created="))
        .unwrap()
        .to_owned();
    assert!(expires > created, "{line}");
    // Without --days: 30 days.
    let (ok, _, err) = s.run(&["token", "create", "--role", "admin"]);
    assert!(ok && err.contains("expires"), "{err}");

    // A use is recorded (written back in the background).
    assert_eq!(audit_read(&s, &token).0, 200);
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || !list_line(&s, &id).contains("last-used=never"),
        || "the use was never recorded".into(),
    );

    // Revoked before any server saw it: refused at once.
    let (fresh, fresh_id) = create(&s, "30");
    let (ok, out, err) = s.run(&["token", "revoke", &fresh_id]);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    assert!(list_line(&s, &fresh_id).contains("revoked="));
    let (st, b) = audit_read(&s, &fresh);
    assert_eq!(st, 401, "{b}");
    assert_outcome(&b);
    let (ok, out, _) = s.run(&["token", "revoke", &fresh_id]);
    assert!(ok && out.contains("already revoked"), "{out}");
    let (ok, _, err) = s.run(&["token", "revoke", "tok_0000000000000000"]);
    assert!(!ok && err.trim().lines().count() == 1, "{err}");

    // Revoked while a server trusts it from its cache: refused within 30 seconds.
    let started = Instant::now();
    let (ok, _, err) = s.run(&["token", "revoke", &id]);
    assert!(ok, "{err}");
    loop {
        let (st, _) = audit_read(&s, &token);
        if st == 401 {
            break;
        }
        assert_eq!(st, 200);
        assert!(
            started.elapsed() < Duration::from_secs(35),
            "still accepted after 30 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Expiry: a token whose time is up (its row set to have expired, as a day passing would).
    let (old, old_id) = create(&s, "1");
    let db = rusqlite::Connection::open(s.dir.join("medvault.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE tokens SET expires = 1 WHERE token_id = ?1",
        [&old_id],
    )
    .unwrap();
    let (st, b) = audit_read(&s, &old);
    assert_eq!(st, 401, "{b}");
    assert!(b.to_string().contains("expired"), "{b}");
    assert!(list_line(&s, &old_id).ends_with("expired"));

    // The refusals are in the access log, naming the token.
    for (who, why) in [(&fresh_id, "token-revoked"), (&old_id, "token-expired")] {
        let (st, b) = s.get(&format!("AuditEvent?agent={who}"));
        assert_eq!(st, 200, "{b}");
        let found = b["entry"].as_array().unwrap().iter().any(|e| {
            let r = &e["resource"];
            r["outcomeDesc"].as_str().unwrap_or("").contains(why)
                && r["agent"][0]["who"]["identifier"]["value"] == **who
        });
        assert!(found, "no {why} refusal for {who}: {b}");
    }
}
