//! A user-facing app end to end: authorization code with PKCE, the person's approval with a
//! second factor, user/ scopes enforced beside the person's role, refresh-token rotation with
//! reuse detection, and revocation.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Server;
use crate::identity::{PASSWORD, code, create_user, enroll, get, login, now, post};

const REDIRECT: &str = "http://localhost:9999/callback";
const VERIFIER: &str = "a-long-random-pkce-verifier-of-at-least-43-characters-0123456789";

fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(medvault_crypto::sha256(verifier.as_bytes()))
}

fn form(s: &Server, path: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}{path}", s.port))
        .form(pairs)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Registers a user-facing app redirecting to [`REDIRECT`]; returns its client id.
fn register_app(s: &Server, name: &str, scopes: &str) -> String {
    let dir = s.dir.to_str().unwrap().to_owned();
    let (ok, out, err) = s.cli(&[
        "client",
        "register",
        "--data-dir",
        &dir,
        "--name",
        name,
        "--redirect-uri",
        REDIRECT,
        "--scope",
        scopes,
    ]);
    assert!(ok, "{err}");
    out.trim().to_owned()
}

/// Approves the authorization request `q` with `session`; returns the code sent back.
fn approve(s: &Server, session: &str, q: &str) -> String {
    let (st, b) = post(
        s,
        "/auth/authorize/decide",
        Some(session),
        &json!({"query": q, "approve": true}),
    );
    assert_eq!(st, 200, "{b}");
    param(b["redirect"].as_str().unwrap(), "code").expect("a code")
}

/// Exchanges an authorization code with the test's PKCE verifier.
fn exchange_code(s: &Server, client: &str, code: &str) -> (u16, Value) {
    form(
        s,
        "/auth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client),
            ("code_verifier", VERIFIER),
        ],
    )
}

fn query(client: &str, aud: &str, scope: &str, with_pkce: bool) -> String {
    let mut q = format!(
        "response_type=code&client_id={client}&redirect_uri={}&scope={}&state=xyz&aud={}",
        urlencode(REDIRECT),
        urlencode(scope),
        urlencode(aud)
    );
    if with_pkce {
        q.push_str(&format!(
            "&code_challenge={}&code_challenge_method=S256",
            challenge(VERIFIER)
        ));
    }
    q
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%3D", "=").replace("%2F", "/"))
}

#[test]
fn authorization_code_with_pkce_refresh_rotation_and_revocation() {
    let s = Server::start();
    create_user(&s, "d.app", "clinician");
    let (secret, _) = enroll(&s, "d.app");
    let client = register_app(
        &s,
        "Chart app",
        "user/Patient.rs user/Observation.rs offline_access",
    );
    let aud = format!("http://127.0.0.1:{}/fhir", s.port);
    let patient = s.create(&crate::patient("Appfam", "Al"));
    let practitioner = crate::make_practitioner(&s, "d.app");
    crate::care_team(&s, &practitioner, &patient);

    // The request is checked before anyone signs in.
    let q = query(
        &client,
        &aud,
        "user/Patient.rs user/Encounter.rs offline_access",
        true,
    );
    let (st, b) = get(&s, &format!("/auth/authorize/check?{q}"), "none");
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["client_name"], "Chart app");
    assert_eq!(
        b["scopes"], "user/Patient.rs offline_access",
        "cut to what the app may have"
    );
    let bad_redirect = q.replace("9999", "6666");
    let (st, b) = get(&s, &format!("/auth/authorize/check?{bad_redirect}"), "none");
    assert_eq!(st, 400);
    assert!(
        b.get("redirect").is_none(),
        "never redirect to an unregistered URI: {b}"
    );
    let no_pkce = query(&client, &aud, "user/Patient.rs", false);
    let (st, b) = get(&s, &format!("/auth/authorize/check?{no_pkce}"), "none");
    assert_eq!(st, 400);
    let back = b["redirect"].as_str().unwrap();
    assert!(
        back.starts_with(REDIRECT)
            && back.contains("error=invalid_request")
            && back.contains("state=xyz"),
        "{back}"
    );

    // The person signs in with a second factor and approves; the page sends the code back.
    let (st, b) = login(
        &s,
        "d.app",
        PASSWORD,
        &json!({"totp": code(&secret, now() + 30)}),
    );
    assert_eq!(st, 200, "{b}");
    let session = b["session"].as_str().unwrap().to_owned();
    let (st, b) = post(
        &s,
        "/auth/authorize/decide",
        Some(&session),
        &json!({"query": q, "approve": true}),
    );
    assert_eq!(st, 200, "{b}");
    let redirect = b["redirect"].as_str().unwrap().to_owned();
    assert_eq!(param(&redirect, "state").as_deref(), Some("xyz"));
    let code_value = param(&redirect, "code").unwrap();

    // Exchange: the PKCE verifier must match; then the code works once.
    let exchange = |verifier: &str| {
        form(
            &s,
            "/auth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code_value),
                ("redirect_uri", REDIRECT),
                ("client_id", &client),
                ("code_verifier", verifier),
            ],
        )
    };
    let (st, b) = exchange("a-different-verifier-that-is-long-enough-to-be-well-formed-000");
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    let (st, tokens) = exchange(VERIFIER);
    assert_eq!(st, 200, "{tokens}");
    assert_eq!(tokens["scope"], "user/Patient.rs offline_access");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    // The token acts for the person, within the scopes.
    assert_eq!(get(&s, &format!("/fhir/Patient/{patient}"), &access).0, 200);
    assert_eq!(get(&s, "/fhir/Patient?family=Appfam", &access).0, 200);
    assert_eq!(
        get(&s, "/fhir/Observation?_count=1", &access).0,
        403,
        "not granted"
    );
    let (st, _) = post(
        &s,
        "/fhir/Patient",
        Some(&access),
        &crate::patient("X", "Y"),
    );
    assert_eq!(st, 403, "no c in the scope");

    // Refresh rotates; reusing a spent refresh token revokes the whole family.
    let refresh_with = |t: &str| {
        form(
            &s,
            "/auth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t),
                ("client_id", &client),
            ],
        )
    };
    let (st, next) = refresh_with(&refresh);
    assert_eq!(st, 200, "{next}");
    let access2 = next["access_token"].as_str().unwrap().to_owned();
    let refresh2 = next["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, refresh);
    assert_eq!(
        get(&s, &format!("/fhir/Patient/{patient}"), &access2).0,
        200
    );
    let (st, b) = refresh_with(&refresh);
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert_eq!(
        get(&s, &format!("/fhir/Patient/{patient}"), &access2).0,
        401,
        "family revoked"
    );
    assert_eq!(
        refresh_with(&refresh2).0,
        400,
        "the rotated token went with its family"
    );
    // The code cannot be exchanged again either.
    assert_eq!(exchange(VERIFIER).0, 400);

    // A second approval, then revocation of its refresh token ends its access token.
    let code2 = approve(&s, &session, &q);
    let (_, t) = exchange_code(&s, &client, &code2);
    let access3 = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&s, &format!("/fhir/Patient/{patient}"), &access3).0,
        200
    );
    let (st, _) = form(
        &s,
        "/auth/revoke",
        &[
            ("token", t["refresh_token"].as_str().unwrap()),
            ("client_id", &client),
        ],
    );
    assert_eq!(st, 200);
    assert_eq!(
        get(&s, &format!("/fhir/Patient/{patient}"), &access3).0,
        401
    );

    // Denial goes back to the app as access_denied; an AAL1 session cannot approve.
    let (_, b) = post(
        &s,
        "/auth/authorize/decide",
        Some(&session),
        &json!({"query": q, "approve": false}),
    );
    assert!(
        b["redirect"]
            .as_str()
            .unwrap()
            .contains("error=access_denied")
    );
    // An app's access token is not a signed-in person: it cannot approve apps.
    let code3 = approve(&s, &session, &q);
    let (_, t) = exchange_code(&s, &client, &code3);
    let live = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&s, &format!("/fhir/Patient/{patient}"), &live).0, 200);
    let (st, _) = post(
        &s,
        "/auth/authorize/decide",
        Some(&live),
        &json!({"query": q, "approve": true}),
    );
    assert_eq!(st, 403);
}

fn observation_with(patient: &str, category: &str) -> Value {
    let mut o = crate::observation(patient, "2345-7", "2026-01-02");
    o["category"][0]["coding"][0]["code"] = json!(category);
    o
}

fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn patients_reach_their_own_compartment_and_patient_scopes_bind_to_it() {
    let s = Server::start();
    let p1 = s.create(&crate::patient("Ownfam", "Pia"));
    let p2 = s.create(&crate::patient("Otherfam", "Olaf"));
    let lab1 = s.create(&observation_with(&p1, "laboratory"));
    let vital1 = s.create(&observation_with(&p1, "vital-signs"));
    let lab2 = s.create(&observation_with(&p2, "laboratory"));
    let vital_gone = s.create(&observation_with(&p1, "vital-signs"));
    assert_eq!(s.delete(&format!("Observation/{vital_gone}")).0, 200);

    // A patient's account is linked to their Patient resource.
    crate::identity::create_user_with(&s, "pat.one", "patient", &["--patient", &p1]);
    let (secret, recovery) = enroll(&s, "pat.one");
    let (st, b) = login(
        &s,
        "pat.one",
        PASSWORD,
        &json!({"totp": code(&secret, now() + 30)}),
    );
    assert_eq!(st, 200, "{b}");
    let session = b["session"].as_str().unwrap().to_owned();

    // Their own session reads their compartment only.
    assert_eq!(get(&s, &format!("/fhir/Patient/{p1}"), &session).0, 200);
    // Another patient's records answer as missing ones (the chosen behaviour: no existence
    // oracle).
    assert_eq!(get(&s, &format!("/fhir/Patient/{p2}"), &session).0, 404);
    assert_eq!(
        get(&s, &format!("/fhir/Observation/{vital1}"), &session).0,
        200
    );
    assert_eq!(
        get(&s, &format!("/fhir/Observation/{lab2}"), &session).0,
        404
    );
    let (st, found) = get(&s, "/fhir/Observation?_count=50", &session);
    assert_eq!(st, 200, "{found}");
    let mut ids = match_ids(&found);
    ids.sort();
    let mut own = vec![lab1.clone(), vital1.clone()];
    own.sort();
    assert_eq!(ids, own);
    let (st, _) = post(
        &s,
        "/fhir/Observation",
        Some(&session),
        &observation_with(&p1, "laboratory"),
    );
    assert_eq!(st, 403, "read and search only");
    // They manage their own consents, and only theirs.
    let consent = |patient: &str| {
        json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{patient}")},
            "dateTime": "2026-11-30T10:00:00Z",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": {"type": "deny", "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                "reference": {"reference": "Practitioner/dr-a"}
            }]}
        })
    };
    let (st, b) = post(&s, "/fhir/Consent", Some(&session), &consent(&p1));
    assert_eq!(st, 201, "{b}");
    let (st, _) = post(&s, "/fhir/Consent", Some(&session), &consent(&p2));
    assert_eq!(st, 403, "not another patient's consent");
    // Their accounting of disclosures: who accessed their records, from the access log, and
    // nothing about other patients whatever they ask.
    let (st, trail) = get(
        &s,
        &format!("/fhir/AuditEvent?patient={p2}&_count=500"),
        &session,
    );
    assert_eq!(st, 200, "{trail}");
    let events = trail["entry"].as_array().unwrap();
    assert!(
        events.len() >= 5,
        "the admin's creates and their own reads: {trail}"
    );
    for e in events {
        let refs = e["resource"]["entity"].to_string();
        assert!(refs.contains(&format!("Patient/{p1}")), "{refs}");
        assert!(!refs.contains(&format!("Patient/{p2}")), "{refs}");
    }
    assert_eq!(get(&s, "/fhir/AuditEvent/ledger-1", &session).0, 403);
    // Every refusal is in the access log with the rule that decided it.
    let (st, denials) = s.get(&format!("AuditEvent?patient={p2}&outcome=4&_count=100"));
    assert_eq!(st, 200, "{denials}");
    assert!(
        denials.to_string().contains("denied by smart-scopes"),
        "the patient's refused read of another patient: {denials}"
    );

    // An app with patient/ scopes, approved by the patient, is bound to their compartment too.
    let client = register_app(
        &s,
        "Lab viewer",
        "patient/Observation.rs?category=laboratory patient/Patient.r",
    );
    let aud = format!("http://127.0.0.1:{}/fhir", s.port);
    let q = query(
        &client,
        &aud,
        "patient/Observation.rs?category=laboratory patient/Patient.r",
        true,
    );
    let code_value = approve(&s, &session, &q);
    let (st, t) = exchange_code(&s, &client, &code_value);
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["patient"], json!(p1), "the launch context");
    let app = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&s, &format!("/fhir/Observation/{lab1}"), &app).0, 200);
    assert_eq!(
        get(&s, &format!("/fhir/Observation/{vital1}"), &app).0,
        404,
        "not a lab result"
    );
    // Issue 15 item 7: a deleted resource outside the constraint answers exactly as a missing
    // one (it answered 410 Gone, which told the app it existed).
    let unknown = "00000000-0000-4000-8000-000000000000";
    let (st, gone) = get(&s, &format!("/fhir/Observation/{vital_gone}"), &app);
    let (st2, missing) = get(&s, &format!("/fhir/Observation/{unknown}"), &app);
    assert_eq!((st, st2), (404, 404), "{gone} {missing}");
    assert_eq!(
        gone["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .replace(&vital_gone, "ID"),
        missing["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .replace(unknown, "ID")
    );
    assert_eq!(
        get(
            &s,
            &format!("/fhir/Observation/{vital_gone}/_history"),
            &app
        )
        .0,
        404
    );
    assert_eq!(
        get(&s, &format!("/fhir/Observation/{vital_gone}"), &session).0,
        410,
        "the patient's own session, unconstrained, learns it was deleted"
    );
    assert_eq!(
        get(&s, &format!("/fhir/Observation/{lab2}"), &app).0,
        404,
        "another patient's"
    );
    let (_, found) = get(&s, "/fhir/Observation?_count=50", &app);
    assert_eq!(match_ids(&found), vec![lab1.clone()]);

    // A patient cannot grant an app more than their own compartment, even if the app may ask.
    let wide = register_app(&s, "Wide app", "user/*.rs patient/Patient.r");
    let wq = query(&wide, &aud, "user/*.rs patient/Patient.r", true);
    let code_w = approve(&s, &session, &wq);
    let (st, t) = exchange_code(&s, &wide, &code_w);
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        t["scope"], "patient/Patient.r",
        "user/ scopes are not a patient's to grant"
    );
    let wide_token = t["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get(&s, &format!("/fhir/Patient/{p2}"), &wide_token).0, 404);
    assert_eq!(get(&s, &format!("/fhir/Patient/{p1}"), &wide_token).0, 200);

    // A clinician has no patient context: patient/ scopes cannot be granted to their apps.
    create_user(&s, "c.nopatient", "clinician");
    let (secret2, _) = enroll(&s, "c.nopatient");
    let (_, b) = login(
        &s,
        "c.nopatient",
        PASSWORD,
        &json!({"totp": code(&secret2, now() + 30)}),
    );
    let clin = b["session"].as_str().unwrap().to_owned();
    let (_, b) = post(
        &s,
        "/auth/authorize/decide",
        Some(&clin),
        &json!({"query": q, "approve": true}),
    );
    assert!(
        b["redirect"]
            .as_str()
            .unwrap()
            .contains("error=invalid_scope"),
        "{b}"
    );
    drop(recovery);
}
