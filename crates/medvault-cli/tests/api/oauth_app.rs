//! A user-facing app end to end: authorization code with PKCE, the person's approval with a
//! second factor, user/ scopes enforced beside the person's role, refresh-token rotation with
//! reuse detection, and revocation.

use medvault_testkit::fhir::{
    self, consent, diagnostics_shape, match_ids, observation, participation, patient, sorted,
};
use medvault_testkit::oauth::{
    REDIRECT, VERIFIER, authorize_query, redirect_of, token_field, url_param,
};
use serde_json::{Value, json};

use crate::MEDVAULT;

#[test]
fn authorization_code_with_pkce_refresh_rotation_and_revocation() {
    let s = MEDVAULT.start();
    s.create_user("d.app", "clinician");
    let (secret, _) = s.enroll("d.app");
    let client = s.register_app(
        "Chart app",
        "user/Patient.rs user/Observation.rs offline_access",
    );
    let aud = s.aud();
    let patient = s.create(&patient("Appfam", "Al"));
    let practitioner = s.make_practitioner("d.app");
    s.care_team(&practitioner, &patient);

    // The request is checked before anyone signs in.
    let q = authorize_query(
        &client,
        &aud,
        "user/Patient.rs user/Encounter.rs offline_access",
        true,
    );
    let (st, b) = s.get_as(&format!("/auth/authorize/check?{q}"), "none", None);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["client_name"], "Chart app");
    assert_eq!(
        b["scopes"], "user/Patient.rs offline_access",
        "cut to what the app may have"
    );
    let bad_redirect = q.replace("9999", "6666");
    let (st, b) = s.get_as(
        &format!("/auth/authorize/check?{bad_redirect}"),
        "none",
        None,
    );
    assert_eq!(st, 400);
    assert!(
        b.get("redirect").is_none(),
        "never redirect to an unregistered URI: {b}"
    );
    let no_pkce = authorize_query(&client, &aud, "user/Patient.rs", false);
    let (st, b) = s.get_as(&format!("/auth/authorize/check?{no_pkce}"), "none", None);
    assert_eq!(st, 400);
    let back = redirect_of(&b);
    assert!(
        back.starts_with(REDIRECT)
            && back.contains("error=invalid_request")
            && back.contains("state=xyz"),
        "{back}"
    );

    // The person signs in with a second factor and approves; the page sends the code back.
    let session = s.sign_in("d.app", &secret);
    let (st, b) = s.decide(&session, &q, true);
    assert_eq!(st, 200, "{b}");
    let redirect = redirect_of(&b).to_owned();
    assert_eq!(url_param(&redirect, "state").as_deref(), Some("xyz"));
    let code_value = url_param(&redirect, "code").unwrap();

    // Exchange: the PKCE verifier must match; then the code works once.
    let exchange = |verifier: &str| s.exchange_code(&client, &code_value, verifier);
    let (st, b) = exchange("a-different-verifier-that-is-long-enough-to-be-well-formed-000");
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    let (st, tokens) = exchange(VERIFIER);
    assert_eq!(st, 200, "{tokens}");
    assert_eq!(tokens["scope"], "user/Patient.rs offline_access");
    let access = token_field(&tokens, "access_token");
    let refresh = token_field(&tokens, "refresh_token");

    // The token acts for the person, within the scopes (Observation is not granted).
    s.assert_statuses_as(
        &access,
        [
            (format!("/fhir/Patient/{patient}"), 200),
            ("/fhir/Patient?family=Appfam".to_owned(), 200),
            ("/fhir/Observation?_count=1".to_owned(), 403),
        ],
    );
    let (st, _) = s.post_json("/fhir/Patient", Some(&access), &fhir::patient("X", "Y"));
    assert_eq!(st, 403, "no c in the scope");

    // Refresh rotates; reusing a spent refresh token revokes the whole family.
    let refresh_with = |t: &str| s.refresh(&client, t);
    let (st, next) = refresh_with(&refresh);
    assert_eq!(st, 200, "{next}");
    let access2 = token_field(&next, "access_token");
    let refresh2 = token_field(&next, "refresh_token");
    assert_ne!(refresh2, refresh);
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{patient}"), &access2),
        200
    );
    let (st, b) = refresh_with(&refresh);
    assert_eq!(
        (st, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{patient}"), &access2),
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
    let code2 = s.approve(&session, &q);
    let (_, t) = s.exchange_code(&client, &code2, VERIFIER);
    let access3 = token_field(&t, "access_token");
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{patient}"), &access3),
        200
    );
    let (st, _) = s.revoke(&client, &token_field(&t, "refresh_token"));
    assert_eq!(st, 200);
    assert_eq!(
        s.status_as(&format!("/fhir/Patient/{patient}"), &access3),
        401
    );

    // Denial goes back to the app as access_denied; an AAL1 session cannot approve.
    let (_, b) = s.decide(&session, &q, false);
    assert!(redirect_of(&b).contains("error=access_denied"));
    // An app's access token is not a signed-in person: it cannot approve apps.
    let code3 = s.approve(&session, &q);
    let (_, t) = s.exchange_code(&client, &code3, VERIFIER);
    let live = token_field(&t, "access_token");
    assert_eq!(s.status_as(&format!("/fhir/Patient/{patient}"), &live), 200);
    let (st, _) = s.decide(&live, &q, true);
    assert_eq!(st, 403);
}

fn observation_with(patient: &str, category: &str) -> Value {
    let mut o = observation(patient, "2345-7", "2026-01-02");
    o["category"][0]["coding"][0]["code"] = json!(category);
    o
}

#[test]
fn patients_reach_their_own_compartment_and_patient_scopes_bind_to_it() {
    let s = MEDVAULT.start();
    let p1 = s.create(&patient("Ownfam", "Pia"));
    let p2 = s.create(&patient("Otherfam", "Olaf"));
    let lab1 = s.create(&observation_with(&p1, "laboratory"));
    let vital1 = s.create(&observation_with(&p1, "vital-signs"));
    let lab2 = s.create(&observation_with(&p2, "laboratory"));
    let vital_gone = s.create(&observation_with(&p1, "vital-signs"));
    assert_eq!(s.delete(&format!("Observation/{vital_gone}")).0, 200);

    // A patient's account is linked to their Patient resource.
    s.create_user_with("pat.one", "patient", &["--patient", &p1]);
    let (secret, recovery) = s.enroll("pat.one");
    let session = s.sign_in("pat.one", &secret);

    // Their own session reads their compartment only; another patient's records answer as
    // missing ones (the chosen behaviour: no existence oracle).
    s.assert_statuses_as(
        &session,
        [
            (format!("/fhir/Patient/{p1}"), 200),
            (format!("/fhir/Patient/{p2}"), 404),
            (format!("/fhir/Observation/{vital1}"), 200),
            (format!("/fhir/Observation/{lab2}"), 404),
        ],
    );
    let (st, found) = s.get_as("/fhir/Observation?_count=50", &session, None);
    assert_eq!(st, 200, "{found}");
    assert_eq!(
        sorted(match_ids(&found)),
        sorted(vec![lab1.clone(), vital1.clone()])
    );
    let (st, _) = s.post_json(
        "/fhir/Observation",
        Some(&session),
        &observation_with(&p1, "laboratory"),
    );
    assert_eq!(st, 403, "read and search only");
    // They manage their own consents, and only theirs.
    let consent = |patient: &str| {
        consent(
            patient,
            json!({"type": "deny", "actor": [{
                "role": participation("PRCP"),
                "reference": {"reference": "Practitioner/dr-a"}
            }]}),
            "2026-11-30T10:00:00Z",
        )
    };
    let (st, b) = s.post_json("/fhir/Consent", Some(&session), &consent(&p1));
    assert_eq!(st, 201, "{b}");
    let (st, _) = s.post_json("/fhir/Consent", Some(&session), &consent(&p2));
    assert_eq!(st, 403, "not another patient's consent");
    // Their accounting of disclosures: who accessed their records, from the access log, and
    // nothing about other patients whatever they ask.
    let (st, trail) = s.get_as(
        &format!("/fhir/AuditEvent?patient={p2}&_count=500"),
        &session,
        None,
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
    assert_eq!(s.status_as("/fhir/AuditEvent/ledger-1", &session), 403);
    // Every refusal is in the access log with the rule that decided it.
    let (st, denials) = s.get(&format!("AuditEvent?patient={p2}&outcome=4&_count=100"));
    assert_eq!(st, 200, "{denials}");
    assert!(
        denials.to_string().contains("denied by smart-scopes"),
        "the patient's refused read of another patient: {denials}"
    );

    // An app with patient/ scopes, approved by the patient, is bound to their compartment too.
    let client = s.register_app(
        "Lab viewer",
        "patient/Observation.rs?category=laboratory patient/Patient.r",
    );
    let aud = s.aud();
    let q = authorize_query(
        &client,
        &aud,
        "patient/Observation.rs?category=laboratory patient/Patient.r",
        true,
    );
    let code_value = s.approve(&session, &q);
    let (st, t) = s.exchange_code(&client, &code_value, VERIFIER);
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["patient"], json!(p1), "the launch context");
    let app = token_field(&t, "access_token");
    // The vital sign is not a lab result.
    s.assert_statuses_as(
        &app,
        [
            (format!("/fhir/Observation/{lab1}"), 200),
            (format!("/fhir/Observation/{vital1}"), 404),
        ],
    );
    // Issue 15 item 7: a deleted resource outside the constraint answers exactly as a missing
    // one (it answered 410 Gone, which told the app it existed).
    let unknown = "00000000-0000-4000-8000-000000000000";
    let (st, gone) = s.get_as(&format!("/fhir/Observation/{vital_gone}"), &app, None);
    let (st2, missing) = s.get_as(&format!("/fhir/Observation/{unknown}"), &app, None);
    assert_eq!((st, st2), (404, 404), "{gone} {missing}");
    assert_eq!(
        diagnostics_shape(&gone, &[&vital_gone]),
        diagnostics_shape(&missing, &[unknown])
    );
    assert_eq!(
        s.status_as(&format!("/fhir/Observation/{vital_gone}/_history"), &app),
        404
    );
    assert_eq!(
        s.status_as(&format!("/fhir/Observation/{vital_gone}"), &session),
        410,
        "the patient's own session, unconstrained, learns it was deleted"
    );
    assert_eq!(
        s.status_as(&format!("/fhir/Observation/{lab2}"), &app),
        404,
        "another patient's"
    );
    let (_, found) = s.get_as("/fhir/Observation?_count=50", &app, None);
    assert_eq!(match_ids(&found), vec![lab1.clone()]);
    // The accounting of disclosures names staff, their credentials and addresses: the patient
    // reads it in their own session, never through an app acting for them.
    let (st, b) = s.get_as("/fhir/AuditEvent", &app, None);
    assert_eq!(st, 403, "{b}");
    assert_eq!(b["resourceType"], "OperationOutcome");

    // A patient cannot grant an app more than their own compartment, even if the app may ask.
    let wide = s.register_app("Wide app", "user/*.rs patient/Patient.r");
    let wq = authorize_query(&wide, &aud, "user/*.rs patient/Patient.r", true);
    let code_w = s.approve(&session, &wq);
    let (st, t) = s.exchange_code(&wide, &code_w, VERIFIER);
    assert_eq!(st, 200, "{t}");
    assert_eq!(
        t["scope"], "patient/Patient.r",
        "user/ scopes are not a patient's to grant"
    );
    let wide_token = token_field(&t, "access_token");
    s.assert_statuses_as(
        &wide_token,
        [
            (format!("/fhir/Patient/{p2}"), 404),
            (format!("/fhir/Patient/{p1}"), 200),
        ],
    );

    // A clinician has no patient context: patient/ scopes cannot be granted to their apps.
    s.create_user("c.nopatient", "clinician");
    let (secret2, _) = s.enroll("c.nopatient");
    let clin = s.sign_in("c.nopatient", &secret2);
    let (_, b) = s.decide(&clin, &q, true);
    assert!(redirect_of(&b).contains("error=invalid_scope"), "{b}");
    drop(recovery);
}
