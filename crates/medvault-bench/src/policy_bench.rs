//! Policy decision latency (issue 5 target: p99 < 50 µs per resource): the default Cedar policy
//! set deciding a mix of requests (roles, relationships, consents, labels, purposes, actions).
//!
//! Usage: `medvault-policy-bench [DECISIONS]` (default 200000). `scripts/bench-policy` runs it in
//! release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::time::Instant;

use medvault_policy::{Action, ConsentState, PolicyEngine, Query};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
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
