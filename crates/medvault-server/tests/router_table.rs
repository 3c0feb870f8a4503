//! The router driven in process (no socket, no binary): one row per gate or rule, with the
//! request, who sends it, and the status it must get. The end-to-end tests in
//! `crates/medvault-cli/tests/api` check the same rules over a real socket in depth; this table
//! is the quick map of which rule answers what, and fails first when one moves.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use medvault_core::Role;
use medvault_node::Node;
use medvault_node::identity::api_tokens::create_token;
use medvault_node::node::Database;
use medvault_server::{AppState, ServerConfig, router};
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

const fn row(
    rule: &'static str,
    who: Who,
    method: &'static str,
    path: &'static str,
    status: u16,
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

const FHIR: (&str, &str) = ("content-type", "application/fhir+json");
const PATIENT: &str = r#"{"resourceType":"Patient","name":[{"family":"Table"}]}"#;

use Who::{Anonymous, Forged, Token};

fn rows() -> Vec<Row> {
    vec![
        row(
            "capability statement is public",
            Anonymous,
            "GET",
            "/fhir/metadata",
            200,
        ),
        row("liveness is public", Anonymous, "GET", "/healthz", 200),
        row(
            "FHIR needs a credential",
            Anonymous,
            "GET",
            "/fhir/Patient",
            401,
        ),
        row(
            "an unknown token is refused",
            Forged,
            "GET",
            "/fhir/Patient",
            401,
        ),
        row(
            "admins search",
            Token(Role::Admin),
            "GET",
            "/fhir/Patient",
            200,
        ),
        Row {
            headers: &[FHIR],
            body: PATIENT,
            ..row(
                "admins create",
                Token(Role::Admin),
                "POST",
                "/fhir/Patient",
                201,
            )
        },
        Row {
            headers: &[FHIR],
            body: PATIENT,
            ..row(
                "role gate: auditors write nothing",
                Token(Role::Auditor),
                "POST",
                "/fhir/Patient",
                403,
            )
        },
        row(
            "auditors read the trail",
            Token(Role::Auditor),
            "GET",
            "/fhir/AuditEvent",
            200,
        ),
        row(
            "role gate: auditors read no records",
            Token(Role::Auditor),
            "GET",
            "/fhir/Observation",
            403,
        ),
        Row {
            headers: &[("content-type", "text/plain")],
            body: PATIENT,
            ..row(
                "only FHIR JSON bodies",
                Token(Role::Admin),
                "POST",
                "/fhir/Patient",
                415,
            )
        },
        Row {
            headers: &[FHIR],
            body: r#"{"resourceType":"Patient","meta":{},"meta":{"security":[]}}"#,
            ..row(
                "a key named twice is refused",
                Token(Role::Admin),
                "POST",
                "/fhir/Patient",
                400,
            )
        },
        Row {
            headers: &[FHIR],
            body: "{\"resourceType\":\"Patient\",\"text\":\"",
            ..row(
                "malformed JSON",
                Token(Role::Admin),
                "POST",
                "/fhir/Patient",
                400,
            )
        },
        Row {
            headers: &[FHIR, ("x-purpose-of-use", "HRESCH")],
            body: PATIENT,
            ..row(
                "purpose of use: clinicians do not declare research",
                Token(Role::Clinician),
                "POST",
                "/fhir/Patient",
                403,
            )
        },
        Row {
            headers: &[
                ("x-purpose-of-use", "TREAT"),
                ("x-purpose-of-use", "HOPERAT"),
            ],
            ..row(
                "one declared purpose at most",
                Token(Role::Clinician),
                "GET",
                "/fhir/Patient",
                400,
            )
        },
        row(
            "unknown resource types are not found",
            Token(Role::Admin),
            "GET",
            "/fhir/NoSuchType",
            404,
        ),
        row(
            "a bad id is invalid",
            Token(Role::Admin),
            "GET",
            "/fhir/Patient/bad%20id",
            400,
        ),
        row(
            "a missing resource is not found",
            Token(Role::Admin),
            "GET",
            "/fhir/Patient/nobody",
            404,
        ),
        row(
            "PATCH is not offered",
            Token(Role::Admin),
            "PATCH",
            "/fhir/Patient/x",
            405,
        ),
        row(
            "_count must be a number",
            Token(Role::Admin),
            "GET",
            "/fhir/Patient?_count=many",
            400,
        ),
        row(
            "gate: key rotation needs a person's fresh sign-in, not an API token",
            Token(Role::Admin),
            "POST",
            "/admin/keys/rotate",
            403,
        ),
        row(
            "gate: erasure needs a person's fresh sign-in",
            Token(Role::Admin),
            "POST",
            "/admin/patients/p1/erase",
            403,
        ),
        row(
            "gate: only privacy officers read alerts",
            Token(Role::Clinician),
            "GET",
            "/privacy/alerts",
            403,
        ),
        Row {
            headers: &[("content-type", "application/json")],
            body: r#"{"patient":"p1","reason":"a long enough emergency justification"}"#,
            ..row(
                "gate: break-glass needs a person with a second factor",
                Token(Role::Clinician),
                "POST",
                "/auth/break-glass",
                403,
            )
        },
        row(
            "the session endpoint needs a credential",
            Anonymous,
            "GET",
            "/auth/session",
            401,
        ),
        row(
            "the node document is public",
            Anonymous,
            "GET",
            "/.well-known/medvault-node",
            200,
        ),
        row(
            "the records log's key is public",
            Anonymous,
            "GET",
            "/ledger/records/key",
            200,
        ),
        row(
            "there is no third log",
            Anonymous,
            "GET",
            "/ledger/other/key",
            404,
        ),
        row(
            "a tile beyond the tree is not found",
            Anonymous,
            "GET",
            "/ledger/records/tile/0/999",
            404,
        ),
        row(
            "proofs need their sizes",
            Anonymous,
            "GET",
            "/ledger/records/proof/inclusion",
            400,
        ),
        Row {
            body: "not a checkpoint",
            ..row(
                "witness: a malformed request",
                Anonymous,
                "POST",
                "/witness/add-checkpoint",
                400,
            )
        },
        row(
            "OAuth token endpoint needs a grant",
            Anonymous,
            "POST",
            "/auth/token",
            400,
        ),
        row(
            "SMART configuration is public",
            Anonymous,
            "GET",
            "/fhir/.well-known/smart-configuration",
            200,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_answers_with_its_status() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::open_in(&tmp.path().join("data"), &Database::Embedded, None).unwrap();
    // The node's identity keys exist before anyone asks for its document (as `serve` does).
    medvault_node::node_identity::NodeIdentity::load(&node).unwrap();
    let now = node.clock.now_micros();
    let mut tokens = HashMap::new();
    for role in [
        Role::Admin,
        Role::Auditor,
        Role::Clinician,
        Role::PrivacyOfficer,
    ] {
        let (token, _) = create_token(node.store.as_ref(), role, now, 1).unwrap();
        tokens.insert(role, token);
    }
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
