//! Policy benchmarks (issue 5):
//!
//! 1. Decision latency (target p99 < 50 µs per resource): the default Cedar policy set deciding
//!    a mix of requests (roles, relationships, consents, labels, purposes, actions).
//! 2. What the policy adds to a 100-result search (target ≤ 1.2×): the same FHIR search through
//!    medvault's search path on a real node, without the policy and with it (a clinician on the
//!    patients' care teams, a fresh per-request guard each time, so the care-team and consent
//!    lookups are paid every time), alternating, in one run. Two shapes: 100 results of one
//!    patient, and 100 results of 100 different patients (the guard's worst case: one lookup
//!    per patient).
//!
//! Usage: `medvault-policy-bench [DECISIONS] [SEARCHES]` (defaults 200000 300).
//! `scripts/bench-policy` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

mod args;

use args::arg;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medvault_core::{ResourceId, ResourceType, Role};
use medvault_node::authz::{Guard, Subject};
use medvault_node::ops::{self, Ctx};
use medvault_node::search;
use medvault_policy::{Action, ConsentState, PolicyEngine, Query};
use medvault_server::{AppState, ServerConfig};
use medvault_store::write_with;
use medvault_testkit::open_node;
use serde_json::{Value, json};

fn main() {
    decisions(arg(1, 200_000));
    searches(arg(2, 300));
}

fn create(state: &AppState, v: Value) -> String {
    let rt = ResourceType::new(v["resourceType"].as_str().unwrap()).unwrap();
    let ctx = state.services.unrestricted_node_work();
    let p = ops::prepare(
        state.node.store.as_ref(),
        &ctx,
        &rt,
        ResourceId::random(),
        v,
        false,
    )
    .unwrap();
    let id = p.id().to_string();
    write_with(state.node.store.as_ref(), move |tx| {
        Ok(ops::create(tx, &ctx, p, None)?)
    })
    .unwrap();
    id
}

fn observation(patient: &str, code: &str) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 7.2, "unit": "mmol/L"},
    })
}

fn care_team(state: &AppState, practitioner: &str, patient: &str) {
    create(
        state,
        json!({
            "resourceType": "CareTeam", "status": "active",
            "subject": {"reference": format!("Patient/{patient}")},
            "participant": [{"member": {"reference": practitioner}}],
        }),
    );
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

/// Times `rounds` of the search without and with the policy, alternating.
fn compare(state: &AppState, practitioner: &str, params: &[(String, String)], rounds: usize) {
    let engine = Arc::clone(&state.config.policy);
    let store = state.node.store.clone();
    let base = "http://bench/fhir";
    let (mut plain, mut guarded, mut cold) = (Vec::new(), Vec::new(), Vec::new());
    let guard = || {
        Arc::new(Guard::new(
            Arc::clone(&engine),
            Subject {
                user: "usr_bench".into(),
                role: Role::Clinician,
                patient: None,
                practitioner: Some(practitioner.to_owned()),
                purpose: Some("TREAT".into()),
            },
            Arc::clone(&state.facts),
        ))
    };
    // One search, timed; all 100 results must come back (the policy allows them all).
    let timed = |ctx: &Ctx| {
        let t = Instant::now();
        let observation = ResourceType::from_static("Observation");
        let b =
            search::search_bundle(store.as_ref(), ctx, &observation, params, true, base).unwrap();
        let took = t.elapsed();
        assert_eq!(b["entry"].as_array().unwrap().len(), 100);
        took
    };
    let guarded_ctx = || state.services.for_request(guard(), None, None);
    let unguarded = state.services.unrestricted_node_work();
    for round in 0..rounds + 20 {
        let without = timed(&unguarded);
        let with = timed(&guarded_ctx());
        // The same with the shared facts forgotten first (as after a CareTeam, Encounter or
        // Consent write, or every 30 s): every patient's facts are looked up again.
        state.facts.invalidate();
        let with_cold = timed(&guarded_ctx());
        if round >= 20 {
            plain.push(without);
            guarded.push(with);
            cold.push(with_cold);
        }
    }
    plain.sort();
    guarded.sort();
    cold.sort();
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() * 1e3 / v.len() as f64;
    for (name, v) in [
        ("without policy", &plain),
        ("with policy", &guarded),
        ("with policy, facts looked up afresh", &cold),
    ] {
        println!(
            "  {name}: p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms",
            pct(v, 0.5),
            pct(v, 0.99),
            mean(v)
        );
    }
    println!(
        "  ratio (with / without): p50 {:.2}x, mean {:.2}x; facts afresh: p50 {:.2}x, mean {:.2}x",
        pct(&guarded, 0.5) / pct(&plain, 0.5),
        mean(&guarded) / mean(&plain),
        pct(&cold, 0.5) / pct(&plain, 0.5),
        mean(&cold) / mean(&plain)
    );
}

fn searches(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(open_node(dir.path()), ServerConfig::default());
    let practitioner = format!(
        "Practitioner/{}",
        create(
            &state,
            json!({"resourceType": "Practitioner", "name": [{"family": "Bench"}]})
        )
    );
    // One patient with 100 results (and 400 results of 4 other patients beside them).
    let one = create(
        &state,
        json!({"resourceType": "Patient", "gender": "female"}),
    );
    care_team(&state, &practitioner, &one);
    for _ in 0..100 {
        create(&state, observation(&one, "2345-7"));
    }
    for _ in 0..4 {
        let other = create(&state, json!({"resourceType": "Patient", "gender": "male"}));
        for _ in 0..100 {
            create(&state, observation(&other, "2345-7"));
        }
    }
    // 100 patients with one result each of a rarer code.
    for _ in 0..100 {
        let p = create(
            &state,
            json!({"resourceType": "Patient", "gender": "other"}),
        );
        care_team(&state, &practitioner, &p);
        create(&state, observation(&p, "718-7"));
    }
    let q = |k: &str, v: String| -> Vec<(String, String)> {
        vec![(k.to_owned(), v), ("_count".to_owned(), "100".to_owned())]
    };
    println!(
        "search Observation?patient=P&_count=100 (100 results, one patient), {rounds} rounds:"
    );
    compare(
        &state,
        &practitioner,
        &q("patient", format!("Patient/{one}")),
        rounds,
    );
    println!(
        "search Observation?code=http://loinc.org|718-7&_count=100 (100 results, 100 patients), {rounds} rounds:"
    );
    compare(
        &state,
        &practitioner,
        &q("code", "http://loinc.org|718-7".to_owned()),
        rounds,
    );
}

fn decisions(n: usize) {
    let engine = PolicyEngine::default_policy().unwrap();
    let roles = ["clinician", "nurse", "patient", "admin", "researcher"];
    let actions = [Action::Read, Action::Search, Action::Update];
    let consents = [ConsentState::None, ConsentState::Permit, ConsentState::Deny];
    let labels = [
        vec![],
        vec!["HIV".to_owned()],
        vec!["N".to_owned(), "PSY".to_owned()],
    ];
    let purposes = [Some("TREAT"), Some("ETREAT"), Some("HRESCH"), None];
    let mut times = Vec::with_capacity(n);
    let mut allowed = 0usize;
    for i in 0..n {
        let q = Query {
            user: "usr_bench",
            role: roles[i % roles.len()],
            action: actions[(i / 5) % actions.len()],
            resource_type: "Observation",
            labels: &labels[(i / 15) % labels.len()],
            patient_data: i % 13 != 0,
            purpose: purposes[(i / 45) % purposes.len()],
            relationship: i % 2 == 0,
            own: i % 7 == 0,
            consent: consents[(i / 3) % consents.len()],
            break_glass: i % 11 == 0,
            restricted: i % 17 == 0,
        };
        let t = Instant::now();
        let d = std::hint::black_box(engine.decide(std::hint::black_box(&q)));
        times.push(t.elapsed());
        allowed += usize::from(d.allowed);
    }
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "policy decisions (default Cedar policy, {} policies): {n} decisions ({allowed} allowed), p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        engine.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}
