//! People end to end: an account created with the CLI logs in with a password, enrolls TOTP,
//! reaches data only with the second factor, cannot replay a code, uses a recovery code once,
//! is locked after repeated failures, and is throttled per address.

use medvault_testkit::Server;
use medvault_testkit::e2e::send;
use medvault_testkit::fhir::patient;
use medvault_testkit::people::{PASSWORD, login_body, next_totp, now, totp};
use serde_json::{Value, json};

use crate::MEDVAULT;

#[test]
fn password_and_totp_login_with_replay_refusal_recovery_codes_and_logout() {
    let s = MEDVAULT.start();
    let id = s.create_user("c.jones", "clinician");
    let practitioner = s.make_practitioner("c.jones");
    // A weak password is refused with one plain line; a taken name too.
    let (ok, _, err) = s.try_create_user("weak", "nurse", "password1234", &[]);
    assert!(!ok && err.contains("most commonly used"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
    let (ok, _, err) = s.try_create_user("C.Jones", "nurse", PASSWORD, &[]);
    assert!(!ok && err.contains("taken"), "{err}");

    let (secret, codes) = s.enroll("c.jones");
    // Now the password alone is not enough.
    let (st, b) = s.login("c.jones", PASSWORD, &json!({}));
    assert_eq!(st, 401, "{b}");
    assert!(b.to_string().contains("second factor is required"), "{b}");
    // The next step's code (clock skew of one step) logs in, once.
    let next = totp(&secret, now() + 30);
    let (st, b) = s.login("c.jones", PASSWORD, &json!({"totp": next}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (b["aal"].clone(), b["user_id"].clone()),
        (json!(2), json!(id))
    );
    assert_eq!(b["idle_timeout_seconds"], 1800);
    let session = b["session"].as_str().unwrap().to_owned();
    let (st, b) = s.login("c.jones", PASSWORD, &json!({"totp": next}));
    assert_eq!(st, 401, "a TOTP code is accepted once: {b}");
    // The AAL2 session reaches data where the clinician cares for the patient: without a care
    // relationship the patient does not exist for them; on the patient's care team it does.
    let created = s.create(&patient("Identityfam", "Ida"));
    let (st, b) = s.get_as(&format!("/fhir/Patient/{created}"), &session, None);
    assert_eq!(st, 404, "{b}");
    s.care_team(&practitioner, &created);
    let (st, b) = s.get_as(&format!("/fhir/Patient/{created}"), &session, None);
    assert_eq!(st, 200, "{b}");
    // A clinician does not read the audit trail.
    let (st, _) = s.get_as("/fhir/AuditEvent", &session, None);
    assert_eq!(st, 403);
    // Recovery codes: each works once.
    let (st, b) = s.login("c.jones", PASSWORD, &json!({"recovery_code": codes[3]}));
    assert_eq!(st, 200, "{b}");
    let (st, _) = s.login("c.jones", PASSWORD, &json!({"recovery_code": codes[3]}));
    assert_eq!(st, 401);
    // Logout ends the session.
    let (st, _) = s.post_json("/auth/logout", Some(&session), &json!({}));
    assert_eq!(st, 204);
    let (st, _) = s.get_as(&format!("/fhir/Patient/{created}"), &session, None);
    assert_eq!(st, 401);
    // Garbage in: malformed body, unknown fields' types, bogus session tokens.
    let (st, _) = s.post_json("/auth/login", None, &json!({"username": 5}));
    assert_eq!(st, 400);
    let (st, _) = s.get_as("/fhir/Patient", "mvs_not-a-session", None);
    assert_eq!(st, 401);
    // An admin's audit view shows the user's read with the user as agent.
    let (st, b) = s.get(&format!("AuditEvent?agent={id}&_count=100"));
    assert_eq!(st, 200, "{b}");
    assert!(
        !b["entry"].as_array().unwrap().is_empty(),
        "the user's accesses are in the trail: {b}"
    );
}

#[test]
fn lockout_disable_and_throttling() {
    let s = MEDVAULT.start();
    s.create_user("n.smith", "nurse");
    let (secret, _) = s.enroll("n.smith");
    // Ten wrong passwords lock the account; then even the right credentials are refused.
    for _ in 0..10 {
        let (st, _) = s.login("n.smith", "wrong password entirely", &json!({}));
        assert_eq!(st, 401);
    }
    let good = next_totp(&secret);
    let (st, _) = s.login("n.smith", PASSWORD, &good);
    assert_eq!(st, 401, "locked");
    let (ok, out, err) = s.run(&["user", "unlock", "n.smith"]);
    assert!(ok && out.contains("unlocked"), "{out}{err}");
    let (st, b) = s.login("n.smith", PASSWORD, &good);
    assert_eq!(st, 200, "{b}");
    let session = b["session"].as_str().unwrap().to_owned();
    // Disabling ends sessions (this server notices within its 30 s recheck; the login is
    // refused at once).
    let (ok, _, err) = s.run(&["user", "disable", "n.smith"]);
    assert!(ok, "{err}");
    let (st, _) = s.login(
        "n.smith",
        PASSWORD,
        &json!({"totp": totp(&secret, now() - 30)}),
    );
    assert_eq!(st, 401);
    let (ok, out, _) = s.run(&["user", "list"]);
    assert!(
        ok && out.contains("n.smith") && out.contains("disabled"),
        "{out}"
    );
    assert!(out.contains("second-factor=totp"), "{out}");
    drop(session);
    // Per-address throttle: more than 20 attempts a minute get 429.
    let mut throttled = false;
    for _ in 0..25 {
        let (st, _) = s.login("nobody", "irrelevant password here", &json!({}));
        assert!(st == 401 || st == 429, "{st}");
        throttled |= st == 429;
    }
    assert!(throttled, "the address was never throttled");
}

#[test]
fn a_privileged_accounts_first_factor_needs_a_code_from_the_host() {
    let s = MEDVAULT.start();
    s.create_user("first.admin", "admin");
    s.create_user("first.officer", "privacy-officer");
    s.create_user("first.doctor", "clinician");
    let (_, b) = s.login("first.admin", PASSWORD, &json!({}));
    let session = b["session"].as_str().unwrap().to_owned();
    // The password alone does not enrol an admin's authenticator (else it would also pass
    // every step-up), nor a passkey.
    for body in [
        json!({}),
        json!({"enrolment_code": ""}),
        json!({"enrolment_code": "0000-0000-0000-0000"}),
    ] {
        let (st, b) = s.post_json("/auth/totp/enroll", Some(&session), &body);
        assert_eq!(st, 403, "{body}: {b}");
        assert_eq!(b["resourceType"], "OperationOutcome");
        assert!(
            b.to_string().contains("medvault user enrolment-code"),
            "{b}"
        );
    }
    let (st, _) = s.post_json("/auth/totp/enroll", Some(&session), &json!({"bogus": 1}));
    assert_eq!(st, 400, "unknown fields are refused");
    // The host issues a code (stdout: the code alone; recorded in the access log).
    let (ok, code, err) = s.run(&["user", "enrolment-code", "first.admin", "--hours", "2"]);
    assert!(ok, "{err}");
    assert!(err.contains("valid until"), "{err}");
    let code = code.trim().to_owned();
    assert_eq!(code.len(), 19, "{code}");
    // A wrong code is still refused; the right one (typed loosely) enrols.
    let (st, _) = s.post_json(
        "/auth/totp/enroll",
        Some(&session),
        &json!({"enrolment_code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"}),
    );
    assert_eq!(st, 403);
    let enrol = |code: &str| {
        let (st, b) = s.post_json(
            "/auth/totp/enroll",
            Some(&session),
            &json!({"enrolment_code": code.to_lowercase().replace('-', " ")}),
        );
        assert_eq!(st, 200, "{b}");
        medvault_auth::totp::TotpSecret::from_base32(b["secret"].as_str().unwrap()).unwrap()
    };
    let secret = enrol(&code);
    // Confirming asks for the code too: a password holder cannot confirm (or guess at) the
    // secret the owner is enrolling.
    let (_, b) = s.login("first.admin", PASSWORD, &json!({}));
    let intruder = b["session"].as_str().unwrap().to_owned();
    let (st, b) = s.post_json(
        "/auth/totp/confirm",
        Some(&intruder),
        &json!({"code": totp(&secret, now())}),
    );
    assert_eq!(st, 403, "{b}");
    // A new code from the host drops the secret pending under the old one.
    let (ok, code2, _) = s.run(&["user", "enrolment-code", "first.admin"]);
    assert!(ok);
    let code2 = code2.trim().to_owned();
    let (st, b) = s.post_json(
        "/auth/totp/confirm",
        Some(&session),
        &json!({"code": totp(&secret, now()), "enrolment_code": code2}),
    );
    assert_eq!(st, 400, "nothing pending: {b}");
    let (st, _) = s.post_json("/auth/totp/confirm", Some(&session), &json!([1]));
    assert_eq!(st, 400, "a body that is not the object is refused");
    let secret = enrol(&code2);
    let (st, b) = s.post_json(
        "/auth/totp/confirm",
        Some(&session),
        &json!({"code": totp(&secret, now()), "enrolment_code": code}),
    );
    assert_eq!(st, 403, "the replaced code: {b}");
    let (st, b) = s.post_json(
        "/auth/totp/confirm",
        Some(&session),
        &json!({"code": totp(&secret, now()), "enrolment_code": code2}),
    );
    assert_eq!(st, 200, "{b}");
    // Spent: the account has its factor now, and the host says so.
    let (ok, _, err) = s.run(&["user", "enrolment-code", "first.admin"]);
    assert!(!ok && err.contains("second factor already"), "{err}");
    // A code is for privileged accounts only; others enrol with their password as before.
    let (ok, _, err) = s.run(&["user", "enrolment-code", "first.doctor"]);
    assert!(!ok && err.contains("clinician"), "{err}");
    let (_, b) = s.login("first.doctor", PASSWORD, &json!({}));
    let doctor = b["session"].as_str().unwrap().to_owned();
    let (st, b) = s.post_json("/auth/totp/enroll", Some(&doctor), &json!({}));
    assert_eq!(st, 200, "{b}");
    // A code enrols only the account it was issued for.
    let (ok, officer_code, _) = s.run(&["user", "enrolment-code", "first.officer"]);
    assert!(ok);
    let (_, b) = s.login("first.officer", PASSWORD, &json!({}));
    let officer = b["session"].as_str().unwrap().to_owned();
    let (ok, admin2_code, _) = {
        s.create_user("second.admin", "admin");
        s.run(&["user", "enrolment-code", "second.admin"])
    };
    assert!(ok);
    let (st, _) = s.post_json(
        "/auth/totp/enroll",
        Some(&officer),
        &json!({"enrolment_code": admin2_code.trim()}),
    );
    assert_eq!(st, 403, "another account's code does not enrol this one");
    let (st, b) = s.post_json(
        "/auth/totp/enroll",
        Some(&officer),
        &json!({"enrolment_code": officer_code.trim()}),
    );
    assert_eq!(st, 200, "{b}");
    let log = s.verify_ledger();
    assert!(log.contains("ledger verified"), "{log}");
}

#[test]
fn sensitive_actions_need_a_recent_admin_sign_in() {
    let s = MEDVAULT.start_with(&["--step-up-seconds", "2"]);
    s.create_user("root.admin", "admin");
    let (secret, recovery) = s.enroll("root.admin");
    let patient = s.create(&patient("Stepupfam", "Sue"));
    // API tokens (services) cannot rotate keys or erase patients over the API.
    let (st, _) = s.post_json("/admin/keys/rotate", Some(&s.token), &json!({}));
    assert_eq!(st, 403);
    // A fresh admin session can.
    let session = s.sign_in("root.admin", &secret);
    let (st, b) = s.post_json("/admin/keys/rotate", Some(&session), &json!({}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["kek_version"], 2);
    // Once the sign-in is older than the step-up window: 401 with RFC 9470's challenge.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = s
        .anonymous(
            reqwest::Method::POST,
            &format!("/admin/patients/{patient}/erase"),
        )
        .bearer_auth(&session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains("insufficient_user_authentication") && challenge.contains("max_age=2"),
        "{challenge}"
    );
    // The session still works for ordinary reads...
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{patient}"), &session),
        200
    );
    // ...and signing in again (here with a recovery code: the TOTP step is spent) allows the
    // erasure.
    let (_, b) = s.login(
        "root.admin",
        PASSWORD,
        &json!({"recovery_code": recovery[0]}),
    );
    let fresh = b["session"].as_str().unwrap().to_owned();
    let (st, b) = s.post_json(
        &format!("/admin/patients/{patient}/erase"),
        Some(&fresh),
        &json!({}),
    );
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["resources"], 1);
    assert_eq!(s.get(&format!("Patient/{patient}")).0, 410);
}

/// `POST /auth/login` as if through a proxy that appended `from` to `X-Forwarded-For`.
fn login_via_proxy(s: &Server, from: &str, name: &str, password: &str, extra: &Value) -> u16 {
    let (status, _) = send(
        s.anonymous(reqwest::Method::POST, "/auth/login")
            .header("x-forwarded-for", format!("10.66.0.1, {from}"))
            .json(&login_body(name, password, extra)),
    );
    status
}

/// The statuses of 25 logins with `password` through the proxy, the `i`th from `from(i)` as
/// `name(i)`.
fn logins_via_proxy(
    s: &Server,
    from: impl Fn(usize) -> String,
    name: impl Fn(usize) -> String,
    password: &str,
) -> Vec<u16> {
    (0..25)
        .map(|i| login_via_proxy(s, &from(i), &name(i), password, &json!({})))
        .collect()
}

#[test]
fn login_throttle_counts_forwarded_clients_and_accounts() {
    // Behind a trusted proxy (here: the test's own address), clients are told apart by the
    // address the proxy appended: junk from one does not block another.
    let s = MEDVAULT.start_with(&["--trusted-proxy", "127.0.0.1/32"]);
    s.create_user("t.kim", "nurse");
    let (secret, codes) = s.enroll("t.kim");
    let statuses = logins_via_proxy(
        &s,
        |_| "198.51.100.7".into(),
        |i| format!("junk{i}"),
        "irrelevant password here",
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "the junk address is throttled after 20: {statuses:?}"
    );
    let good = next_totp(&secret);
    assert_eq!(
        login_via_proxy(&s, "203.0.113.9", "t.kim", PASSWORD, &good),
        200,
        "another client behind the same proxy logs in"
    );
    // Per account: guessing one account's password from many addresses is throttled too (and
    // the account locks after 10 failures).
    let statuses = logins_via_proxy(
        &s,
        |i| format!("192.0.2.{}", i + 1),
        |_| "t.kim".into(),
        "wrong password entirely",
    );
    assert!(
        statuses.contains(&429),
        "the account is throttled: {statuses:?}"
    );
    assert_ne!(
        login_via_proxy(
            &s,
            "192.0.2.200",
            "t.kim",
            PASSWORD,
            &json!({"recovery_code": codes[0]})
        ),
        200,
        "the guessed account is locked or throttled"
    );

    // Without --trusted-proxy (or from a peer that is not a listed proxy) forwarding headers
    // are ignored: a client cannot pick the address it is counted under.
    let s = MEDVAULT.start_with(&["--trusted-proxy", "10.0.0.0/8"]);
    s.create_user("u.lin", "nurse");
    let (secret, _) = s.enroll("u.lin");
    let statuses = logins_via_proxy(
        &s,
        |i| format!("198.51.100.{}", i + 1),
        |i| format!("junk{i}"),
        "irrelevant password here",
    );
    assert!(
        statuses.contains(&429),
        "rotating X-Forwarded-For from an untrusted peer does not escape: {statuses:?}"
    );
    let good = next_totp(&secret);
    assert_eq!(
        login_via_proxy(&s, "203.0.113.9", "u.lin", PASSWORD, &good),
        429
    );
}

#[test]
fn a_missing_second_factor_answers_like_a_wrong_password_and_counts() {
    let s = MEDVAULT.start();
    s.create_user("m.lee", "clinician");
    let (secret, codes) = s.enroll("m.lee");
    // Without a code: right password, wrong password and an unknown account get one answer,
    // which says a second factor may be needed.
    let right = s.login("m.lee", PASSWORD, &json!({}));
    let wrong = s.login("m.lee", "wrong password entirely", &json!({}));
    let unknown = s.login("no.such.user", PASSWORD, &json!({}));
    assert_eq!(right.0, 401);
    assert_eq!(right, wrong, "the answer does not confirm the password");
    assert_eq!(right, unknown, "nor that the account exists");
    assert!(
        right.1.to_string().contains("second factor is required"),
        "{}",
        right.1
    );
    // With a code: a wrong code after the right password answers like a wrong password.
    let bad_code = json!({"totp": "000000"});
    let right = s.login("m.lee", PASSWORD, &bad_code);
    let wrong = s.login("m.lee", "wrong password entirely", &bad_code);
    let unknown = s.login("no.such.user", PASSWORD, &bad_code);
    assert_eq!(right.0, 401);
    assert_eq!(right, wrong);
    assert_eq!(right, unknown);
    // Each login without the second factor counts as a failure: ten lock the account.
    let (st, b) = s.login("m.lee", PASSWORD, &json!({"recovery_code": codes[0]}));
    assert_eq!(st, 200, "a success resets the count: {b}");
    for _ in 0..10 {
        assert_eq!(s.login("m.lee", PASSWORD, &json!({})).0, 401);
    }
    let (st, b) = s.login("m.lee", PASSWORD, &next_totp(&secret));
    assert_eq!(
        st, 401,
        "locked after ten logins without the second factor: {b}"
    );
}

#[test]
fn malformed_bodies_on_the_sign_in_endpoints_are_operation_outcomes() {
    let s = MEDVAULT.start();
    let session = s.person("body.doctor", "clinician").session;
    for (path, bearer) in [
        ("/auth/passkey/login/finish", None),
        ("/auth/passkey/register/finish", Some(&session)),
        ("/auth/authorize/decide", Some(&session)),
        ("/auth/totp/confirm", Some(&session)),
    ] {
        for (body, kind) in [
            ("not json", "application/json"),
            ("{}", "application/json"),
            (r#"{"code": 1}"#, "text/plain"),
        ] {
            let mut req = s
                .anonymous(reqwest::Method::POST, path)
                .header("Content-Type", kind)
                .body(body);
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let r = req.send().unwrap();
            let status = r.status().as_u16();
            let text = r.text().unwrap();
            let outcome: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path} {body}: not JSON: {text}"));
            assert!(
                (400..500).contains(&status) && outcome["resourceType"] == "OperationOutcome",
                "{path} {body}: {status} {text}"
            );
            assert!(
                !text.contains("Failed to"),
                "{path}: the parser's words: {text}"
            );
        }
    }
}
