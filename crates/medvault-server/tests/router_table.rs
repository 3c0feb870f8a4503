//! The router driven in process (no socket, no binary): one row per gate or rule, with the
//! request, who sends it, and the status it must get. The end-to-end tests in
//! `crates/medvault-cli/tests/api` check the same rules over a real socket in depth; this table
//! is the quick map of which rule answers what, and fails first when one moves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use medvault_core::Role;
use medvault_server::{AppState, ServerConfig, router};
use medvault_testkit::{api_token, scratch_node};
use tower::ServiceExt as _;

/// Who sends a row's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Anonymous,
    /// A bearer token the node never issued.
    Forged,
    Token(Role),
}

struct Row {
    rule: &'static str,
    who: Who,
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
    status: u16,
}

/// `who` sends `method path` (no headers, no body) and must get `status`, by `rule`.
const fn row(
    who: Who,
    method: &'static str,
    path: &'static str,
    status: u16,
    rule: &'static str,
) -> Row {
    Row {
        rule,
        who,
        method,
        path,
        headers: &[],
        body: "",
        status,
    }
}

impl Row {
    /// The row's request with `headers` and `body`.
    const fn sending(
        self,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> Self {
        Self {
            headers,
            body,
            ..self
        }
    }
}

const FHIR: (&str, &str) = ("content-type", "application/fhir+json");
const PATIENT: &str = r#"{"resourceType":"Patient","name":[{"family":"Table"}]}"#;

use Who::{Anonymous, Forged, Token};

const ADMIN: Who = Token(Role::Admin);
const AUDITOR: Who = Token(Role::Auditor);
const CLINICIAN: Who = Token(Role::Clinician);

fn rows() -> Vec<Row> {
    vec![
        row(
            Anonymous,
            "GET",
            "/fhir/metadata",
            200,
            "capability statement is public",
        ),
        row(Anonymous, "GET", "/healthz", 200, "liveness is public"),
        row(
            Anonymous,
            "GET",
            "/fhir/Patient",
            401,
            "FHIR needs a credential",
        ),
        row(
            Forged,
            "GET",
            "/fhir/Patient",
            401,
            "an unknown token is refused",
        ),
        row(ADMIN, "GET", "/fhir/Patient", 200, "admins search"),
        row(ADMIN, "POST", "/fhir/Patient", 201, "admins create").sending(&[FHIR], PATIENT),
        row(
            AUDITOR,
            "POST",
            "/fhir/Patient",
            403,
            "role gate: auditors write nothing",
        )
        .sending(&[FHIR], PATIENT),
        row(
            AUDITOR,
            "GET",
            "/fhir/AuditEvent",
            200,
            "auditors read the trail",
        ),
        row(
            AUDITOR,
            "GET",
            "/fhir/Observation",
            403,
            "role gate: auditors read no records",
        ),
        row(ADMIN, "POST", "/fhir/Patient", 415, "only FHIR JSON bodies")
            .sending(&[("content-type", "text/plain")], PATIENT),
        row(
            ADMIN,
            "POST",
            "/fhir/Patient",
            400,
            "a key named twice is refused",
        )
        .sending(
            &[FHIR],
            r#"{"resourceType":"Patient","meta":{},"meta":{"security":[]}}"#,
        ),
        row(ADMIN, "POST", "/fhir/Patient", 400, "malformed JSON")
            .sending(&[FHIR], "{\"resourceType\":\"Patient\",\"text\":\""),
        row(
            CLINICIAN,
            "POST",
            "/fhir/Patient",
            403,
            "purpose of use: clinicians do not declare research",
        )
        .sending(&[FHIR, ("x-purpose-of-use", "HRESCH")], PATIENT),
        row(
            CLINICIAN,
            "GET",
            "/fhir/Patient",
            400,
            "one declared purpose at most",
        )
        .sending(
            &[
                ("x-purpose-of-use", "TREAT"),
                ("x-purpose-of-use", "HOPERAT"),
            ],
            "",
        ),
        row(
            ADMIN,
            "GET",
            "/fhir/NoSuchType",
            404,
            "unknown resource types are not found",
        ),
        row(
            ADMIN,
            "GET",
            "/fhir/Patient/bad%20id",
            400,
            "a bad id is invalid",
        ),
        row(
            ADMIN,
            "GET",
            "/fhir/Patient/nobody",
            404,
            "a missing resource is not found",
        ),
        row(
            ADMIN,
            "PATCH",
            "/fhir/Patient/x/_history",
            405,
            "PATCH is not offered on a history",
        ),
        row(
            ADMIN,
            "GET",
            "/fhir/Patient?_count=many",
            400,
            "_count must be a number",
        ),
        row(
            ADMIN,
            "POST",
            "/admin/keys/rotate",
            403,
            "gate: key rotation needs a person's fresh sign-in, not an API token",
        ),
        row(
            ADMIN,
            "POST",
            "/admin/patients/p1/erase",
            403,
            "gate: erasure needs a person's fresh sign-in",
        ),
        row(
            CLINICIAN,
            "GET",
            "/privacy/alerts",
            403,
            "gate: only privacy officers read alerts",
        ),
        row(
            CLINICIAN,
            "POST",
            "/auth/break-glass",
            403,
            "gate: break-glass needs a person with a second factor",
        )
        .sending(
            &[("content-type", "application/json")],
            r#"{"patient":"p1","reason":"a long enough emergency justification"}"#,
        ),
        row(
            Anonymous,
            "GET",
            "/auth/session",
            401,
            "the session endpoint needs a credential",
        ),
        row(
            Anonymous,
            "GET",
            "/.well-known/medvault-node",
            200,
            "the node document is public",
        ),
        row(
            Anonymous,
            "GET",
            "/ledger/records/key",
            200,
            "the records log's key is public",
        ),
        row(
            Anonymous,
            "GET",
            "/ledger/other/key",
            404,
            "there is no third log",
        ),
        row(
            Anonymous,
            "GET",
            "/ledger/records/tile/0/999",
            404,
            "a tile beyond the tree is not found",
        ),
        row(
            Anonymous,
            "GET",
            "/ledger/records/proof/inclusion",
            400,
            "proofs need their sizes",
        ),
        row(
            Anonymous,
            "POST",
            "/witness/add-checkpoint",
            400,
            "witness: a malformed request",
        )
        .sending(&[], "not a checkpoint"),
        row(
            Anonymous,
            "POST",
            "/auth/token",
            400,
            "OAuth token endpoint needs a grant",
        ),
        row(
            Anonymous,
            "GET",
            "/fhir/.well-known/smart-configuration",
            200,
            "SMART configuration is public",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_answers_with_its_status() {
    let (_tmp, node) = scratch_node();
    // The node's identity keys exist before anyone asks for its document (as `serve` does).
    medvault_node::node_identity::NodeIdentity::load(&node).unwrap();
    let tokens: HashMap<Role, String> = [
        Role::Admin,
        Role::Auditor,
        Role::Clinician,
        Role::PrivacyOfficer,
    ]
    .into_iter()
    .map(|role| (role, api_token(&node, role)))
    .collect();
    let app = router(AppState::new(node, ServerConfig::default()));

    let rows = rows();
    let mut wrong = Vec::new();
    for r in &rows {
        let mut req = Request::builder().method(r.method).uri(r.path);
        match r.who {
            Anonymous => {}
            Forged => req = req.header("authorization", "Bearer mvt_forged0000000000000000"),
            Token(role) => {
                req = req.header("authorization", format!("Bearer {}", tokens[&role]));
            }
        }
        for (k, v) in r.headers {
            req = req.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(r.body)).unwrap())
            .await
            .unwrap();
        let got = resp.status();
        if got != StatusCode::from_u16(r.status).unwrap() {
            wrong.push(format!(
                "{} ({:?} {} {}): expected {}, got {}",
                r.rule, r.who, r.method, r.path, r.status, got
            ));
        }
        // Every FHIR error is an OperationOutcome.
        if r.path.starts_with("/fhir/") && got.as_u16() >= 400 {
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if v["resourceType"] != "OperationOutcome" {
                wrong.push(format!("{}: the {got} is not an OperationOutcome", r.rule));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows wrong:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
    assert_eq!(rows.len(), 32, "rows run");
}
