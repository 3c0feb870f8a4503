//! People end to end: an account created with the CLI logs in with a password, enrolls TOTP,
//! reaches data only with the second factor, cannot replay a code, uses a recovery code once,
//! is locked after repeated failures, and is throttled per address.

use std::time::{SystemTime, UNIX_EPOCH};

use medvault_auth::totp::{TotpSecret, code_at};
use serde_json::{Value, json};

use crate::{Server, cli};

pub(crate) const PASSWORD: &str = "violet staircase under the harbour";

fn env(s: &Server) -> Vec<(&str, &str)> {
    s.env_pairs()
}

/// Runs `user create` with the CLI and `extra` arguments: (success, stdout, stderr).
fn try_create(
    s: &Server,
    name: &str,
    role: &str,
    password: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let dir = s.dir.to_str().unwrap().to_owned();
    let mut e = env(s);
    e.push(("MEDVAULT_NEW_PASSWORD", password));
    let mut args = vec![
        "user",
        "create",
        "--data-dir",
        &dir,
        "--username",
        name,
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    cli(&args, &e)
}

/// Creates a user with the CLI; returns its id.
pub(crate) fn create_user(s: &Server, name: &str, role: &str) -> String {
    create_user_with(s, name, role, &[])
}

/// Creates a user with the CLI and `extra` arguments (e.g. `--patient ID`); returns its id.
pub(crate) fn create_user_with(s: &Server, name: &str, role: &str, extra: &[&str]) -> String {
    let (ok, out, err) = try_create(s, name, role, PASSWORD, extra);
    assert!(ok, "{err}");
    let id = out.trim().to_owned();
    assert!(id.starts_with("usr_"), "{id}");
    id
}

pub(crate) fn post(s: &Server, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
    let mut rb = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}{path}", s.port))
        .json(body);
    if let Some(b) = bearer {
        rb = rb.bearer_auth(b);
    }
    let r = rb.send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

pub(crate) fn get(s: &Server, path: &str, bearer: &str) -> (u16, Value) {
    let r = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", s.port))
        .bearer_auth(bearer)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

pub(crate) fn login(s: &Server, name: &str, password: &str, extra: &Value) -> (u16, Value) {
    let mut body = json!({"username": name, "password": password});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    post(s, "/auth/login", None, &body)
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn code(secret: &TotpSecret, at: u64) -> String {
    code_at("SHA1", 6, 30, secret.as_bytes(), at).unwrap()
}

/// Logs in with the password, enrolls TOTP and confirms it; returns the secret and the
/// recovery codes.
pub(crate) fn enroll(s: &Server, name: &str) -> (TotpSecret, Vec<String>) {
    let (st, b) = login(s, name, PASSWORD, &json!({}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["aal"], 1, "no second factor yet: enrollment-only session");
    let session = b["session"].as_str().unwrap().to_owned();
    // An enrollment-only session reaches no data.
    let (st, b) = get(s, "/fhir/Patient", &session);
    assert_eq!(st, 403, "{b}");
    let (st, b) = post(s, "/auth/totp/enroll", Some(&session), &json!({}));
    assert_eq!(st, 200, "{b}");
    let uri = b["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&format!("otpauth://totp/medvault:{name}?")),
        "{uri}"
    );
    assert!(b["qr_svg"].as_str().unwrap().contains("<svg"));
    let secret = TotpSecret::from_base32(b["secret"].as_str().unwrap()).unwrap();
    let (st, _) = post(
        s,
        "/auth/totp/confirm",
        Some(&session),
        &json!({"code": "000000"}),
    );
    assert_eq!(st, 400, "a wrong code does not activate the secret");
    let (st, b) = post(
        s,
        "/auth/totp/confirm",
        Some(&session),
        &json!({"code": code(&secret, now())}),
    );
    assert_eq!(st, 200, "{b}");
    let codes: Vec<String> = b["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    // Confirming raised this session to AAL2.
    let (st, b) = get(s, "/auth/session", &session);
    assert_eq!((st, &b["aal"]), (200, &json!(2)), "{b}");
    (secret, codes)
}

#[test]
fn password_and_totp_login_with_replay_refusal_recovery_codes_and_logout() {
    let s = Server::start();
    let id = create_user(&s, "c.jones", "clinician");
    let practitioner = crate::make_practitioner(&s, "c.jones");
    // A weak password is refused with one plain line; a taken name too.
    let (ok, _, err) = try_create(&s, "weak", "nurse", "password1234", &[]);
    assert!(!ok && err.contains("most commonly used"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
    let (ok, _, err) = try_create(&s, "C.Jones", "nurse", PASSWORD, &[]);
    assert!(!ok && err.contains("taken"), "{err}");

    let (secret, codes) = enroll(&s, "c.jones");
    // Now the password alone is not enough.
    let (st, b) = login(&s, "c.jones", PASSWORD, &json!({}));
    assert_eq!(st, 401, "{b}");
    assert!(b.to_string().contains("second factor is required"), "{b}");
    // The next step's code (clock skew of one step) logs in, once.
    let next = code(&secret, now() + 30);
    let (st, b) = login(&s, "c.jones", PASSWORD, &json!({"totp": next}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (b["aal"].clone(), b["user_id"].clone()),
        (json!(2), json!(id))
    );
    assert_eq!(b["idle_timeout_seconds"], 1800);
    let session = b["session"].as_str().unwrap().to_owned();
    let (st, b) = login(&s, "c.jones", PASSWORD, &json!({"totp": next}));
    assert_eq!(st, 401, "a TOTP code is accepted once: {b}");
    // The AAL2 session reaches data where the clinician cares for the patient: without a care
    // relationship the patient does not exist for them; on the patient's care team it does.
    let created = s.create(&crate::patient("Identityfam", "Ida"));
    let (st, b) = get(&s, &format!("/fhir/Patient/{created}"), &session);
    assert_eq!(st, 404, "{b}");
    crate::care_team(&s, &practitioner, &created);
    let (st, b) = get(&s, &format!("/fhir/Patient/{created}"), &session);
    assert_eq!(st, 200, "{b}");
    // A clinician does not read the audit trail.
    let (st, _) = get(&s, "/fhir/AuditEvent", &session);
    assert_eq!(st, 403);
    // Recovery codes: each works once.
    let (st, b) = login(&s, "c.jones", PASSWORD, &json!({"recovery_code": codes[3]}));
    assert_eq!(st, 200, "{b}");
    let (st, _) = login(&s, "c.jones", PASSWORD, &json!({"recovery_code": codes[3]}));
    assert_eq!(st, 401);
    // Logout ends the session.
    let (st, _) = post(&s, "/auth/logout", Some(&session), &json!({}));
    assert_eq!(st, 204);
    let (st, _) = get(&s, &format!("/fhir/Patient/{created}"), &session);
    assert_eq!(st, 401);
    // Garbage in: malformed body, unknown fields' types, bogus session tokens.
    let (st, _) = post(&s, "/auth/login", None, &json!({"username": 5}));
    assert_eq!(st, 400);
    let (st, _) = get(&s, "/fhir/Patient", "mvs_not-a-session");
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
    let s = Server::start();
    create_user(&s, "n.smith", "nurse");
    let (secret, _) = enroll(&s, "n.smith");
    let dir = s.dir.to_str().unwrap().to_owned();
    // Ten wrong passwords lock the account; then even the right credentials are refused.
    for _ in 0..10 {
        let (st, _) = login(&s, "n.smith", "wrong password entirely", &json!({}));
        assert_eq!(st, 401);
    }
    let good = json!({"totp": code(&secret, now() + 30)});
    let (st, _) = login(&s, "n.smith", PASSWORD, &good);
    assert_eq!(st, 401, "locked");
    let (ok, out, err) = cli(&["user", "unlock", "--data-dir", &dir, "n.smith"], &env(&s));
    assert!(ok && out.contains("unlocked"), "{out}{err}");
    let (st, b) = login(&s, "n.smith", PASSWORD, &good);
    assert_eq!(st, 200, "{b}");
    let session = b["session"].as_str().unwrap().to_owned();
    // Disabling ends sessions (this server notices within its 30 s recheck; the login is
    // refused at once).
    let (ok, _, err) = cli(
        &["user", "disable", "--data-dir", &dir, "n.smith"],
        &env(&s),
    );
    assert!(ok, "{err}");
    let (st, _) = login(
        &s,
        "n.smith",
        PASSWORD,
        &json!({"totp": code(&secret, now() - 30)}),
    );
    assert_eq!(st, 401);
    let (ok, out, _) = cli(&["user", "list", "--data-dir", &dir], &env(&s));
    assert!(
        ok && out.contains("n.smith") && out.contains("disabled"),
        "{out}"
    );
    assert!(out.contains("second-factor=totp"), "{out}");
    drop(session);
    // Per-address throttle: more than 20 attempts a minute get 429.
    let mut throttled = false;
    for _ in 0..25 {
        let (st, _) = login(&s, "nobody", "irrelevant password here", &json!({}));
        assert!(st == 401 || st == 429, "{st}");
        throttled |= st == 429;
    }
    assert!(throttled, "the address was never throttled");
}

#[test]
fn sensitive_actions_need_a_recent_admin_sign_in() {
    let s = Server::start_with(&["--step-up-seconds", "2"]);
    create_user(&s, "root.admin", "admin");
    let (secret, recovery) = enroll(&s, "root.admin");
    let patient = s.create(&crate::patient("Stepupfam", "Sue"));
    // API tokens (services) cannot rotate keys or erase patients over the API.
    let (st, _) = post(&s, "/admin/keys/rotate", Some(&s.token), &json!({}));
    assert_eq!(st, 403);
    // A fresh admin session can.
    let (st, b) = login(
        &s,
        "root.admin",
        PASSWORD,
        &json!({"totp": code(&secret, now() + 30)}),
    );
    assert_eq!(st, 200, "{b}");
    let session = b["session"].as_str().unwrap().to_owned();
    let (st, b) = post(&s, "/admin/keys/rotate", Some(&session), &json!({}));
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["kek_version"], 2);
    // Once the sign-in is older than the step-up window: 401 with RFC 9470's challenge.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/admin/patients/{patient}/erase",
            s.port
        ))
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
        get(&s, &format!("/fhir/Patient/{patient}"), &session).0,
        200
    );
    // ...and signing in again (here with a recovery code: the TOTP step is spent) allows the
    // erasure.
    let (_, b) = login(
        &s,
        "root.admin",
        PASSWORD,
        &json!({"recovery_code": recovery[0]}),
    );
    let fresh = b["session"].as_str().unwrap().to_owned();
    let (st, b) = post(
        &s,
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
    let mut body = json!({"username": name, "password": password});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}/auth/login", s.port))
        .header("x-forwarded-for", format!("10.66.0.1, {from}"))
        .json(&body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn login_throttle_counts_forwarded_clients_and_accounts() {
    // Behind a trusted proxy (here: the test's own address), clients are told apart by the
    // address the proxy appended: junk from one does not block another.
    let s = Server::start_with(&["--trusted-proxy", "127.0.0.1/32"]);
    create_user(&s, "t.kim", "nurse");
    let (secret, codes) = enroll(&s, "t.kim");
    let statuses: Vec<u16> = (0..25)
        .map(|i| {
            login_via_proxy(
                &s,
                "198.51.100.7",
                &format!("junk{i}"),
                "irrelevant password here",
                &json!({}),
            )
        })
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "the junk address is throttled after 20: {statuses:?}"
    );
    let good = json!({"totp": code(&secret, now() + 30)});
    assert_eq!(
        login_via_proxy(&s, "203.0.113.9", "t.kim", PASSWORD, &good),
        200,
        "another client behind the same proxy logs in"
    );
    // Per account: guessing one account's password from many addresses is throttled too (and
    // the account locks after 10 failures).
    let statuses: Vec<u16> = (0..25)
        .map(|i| {
            login_via_proxy(
                &s,
                &format!("192.0.2.{}", i + 1),
                "t.kim",
                "wrong password entirely",
                &json!({}),
            )
        })
        .collect();
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
    let s = Server::start_with(&["--trusted-proxy", "10.0.0.0/8"]);
    create_user(&s, "u.lin", "nurse");
    let (secret, _) = enroll(&s, "u.lin");
    let statuses: Vec<u16> = (0..25)
        .map(|i| {
            login_via_proxy(
                &s,
                &format!("198.51.100.{}", i + 1),
                &format!("junk{i}"),
                "irrelevant password here",
                &json!({}),
            )
        })
        .collect();
    assert!(
        statuses.contains(&429),
        "rotating X-Forwarded-For from an untrusted peer does not escape: {statuses:?}"
    );
    let good = json!({"totp": code(&secret, now() + 30)});
    assert_eq!(
        login_via_proxy(&s, "203.0.113.9", "u.lin", PASSWORD, &good),
        429
    );
}

#[test]
fn a_missing_second_factor_answers_like_a_wrong_password_and_counts() {
    let s = Server::start();
    create_user(&s, "m.lee", "clinician");
    let (secret, codes) = enroll(&s, "m.lee");
    // Without a code: right password, wrong password and an unknown account get one answer,
    // which says a second factor may be needed.
    let right = login(&s, "m.lee", PASSWORD, &json!({}));
    let wrong = login(&s, "m.lee", "wrong password entirely", &json!({}));
    let unknown = login(&s, "no.such.user", PASSWORD, &json!({}));
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
    let right = login(&s, "m.lee", PASSWORD, &bad_code);
    let wrong = login(&s, "m.lee", "wrong password entirely", &bad_code);
    let unknown = login(&s, "no.such.user", PASSWORD, &bad_code);
    assert_eq!(right.0, 401);
    assert_eq!(right, wrong);
    assert_eq!(right, unknown);
    // Each login without the second factor counts as a failure: ten lock the account.
    let (st, b) = login(&s, "m.lee", PASSWORD, &json!({"recovery_code": codes[0]}));
    assert_eq!(st, 200, "a success resets the count: {b}");
    for _ in 0..10 {
        assert_eq!(login(&s, "m.lee", PASSWORD, &json!({})).0, 401);
    }
    let (st, b) = login(
        &s,
        "m.lee",
        PASSWORD,
        &json!({"totp": code(&secret, now() + 30)}),
    );
    assert_eq!(
        st, 401,
        "locked after ten logins without the second factor: {b}"
    );
}
