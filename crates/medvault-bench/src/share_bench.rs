//! Sharing benchmark (issue 7): what sealed sharing costs over importing the same records as a
//! plain FHIR transaction, in the same run, on two in-process nodes (no network: the mutual-TLS
//! hop is left out).
//!
//! Per round: the sender gathers the patient's record (access policy, consent), seals and signs
//! it and records the export (`share::prepare`); the receiver checks, decrypts, confines and
//! imports it with a Provenance and records the import (`share::receive`). The peer: the same
//! patient and observations posted to the receiver as one `transaction` Bundle
//! (`bundle::process`), i.e. medvault's own import without the sharing layer.
//!
//! Usage: `medvault-share-bench [ROUNDS] [OBSERVATIONS]` (defaults 20 100); prints medians.
//! `scripts/bench-share` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

mod args;

use args::arg;
use std::time::{Duration, Instant};

use medvault_node::share;
use medvault_testkit::TwoNodes;
use serde_json::{Value, json};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// A patient and `n` observations as a transaction Bundle.
fn record(n: usize) -> Value {
    let mut entries = vec![json!({
        "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000000",
        "resource": {"resourceType": "Patient", "name": [{"family": "Benchfam", "given": ["Bo"]}],
                     "gender": "female", "birthDate": "1980-05-17"},
        "request": {"method": "POST", "url": "Patient"},
    })];
    for i in 0..n {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{:012}", i + 1),
            "resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"},
                "effectiveDateTime": "2026-11-01",
                "valueQuantity": {"value": 5.0 + i as f64 / 100.0, "unit": "mmol/L"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }));
    }
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn main() {
    let rounds = arg(1, 20);
    let n = arg(2, 100);
    let nodes = TwoNodes::new();
    let (a, b, b_id) = (&nodes.a, &nodes.b, &nodes.b_id);
    let (a_ctx, b_ctx) = (
        medvault_node::ops::Ctx::unrestricted_node_work(a),
        medvault_node::ops::Ctx::unrestricted_node_work(b),
    );
    let created = medvault_node::bundle::process(a.store.as_ref(), &a_ctx, record(n), "").unwrap();
    let location = created["entry"][0]["response"]["location"]
        .as_str()
        .unwrap();
    let patient = location.split('/').nth(2).unwrap();
    let patient = medvault_core::ResourceId::new(patient).unwrap();
    let agent = json!({"bench": true});

    let (mut seal, mut import, mut plain, mut size) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..=rounds {
        let t = Instant::now();
        let out = share::prepare(
            a,
            &a_ctx,
            &patient,
            &b_id.node,
            "TREAT",
            share::ONLINE_VALIDITY,
            &agent,
        )
        .unwrap();
        let sealed = t.elapsed();
        assert_eq!(out.resources, n + 1);
        size = out.bytes.len();
        let t = Instant::now();
        let got = share::receive(b, &b_ctx, &out.bytes, None, &agent).unwrap();
        let imported = t.elapsed();
        assert_eq!(got.resources, n + 1);
        let t = Instant::now();
        medvault_node::bundle::process(b.store.as_ref(), &b_ctx, record(n), "").unwrap();
        let peer = t.elapsed();
        if round > 0 {
            // Round 0 warms caches and creates keys.
            seal.push(sealed);
            import.push(imported);
            plain.push(peer);
        }
    }
    let (s, i, p) = (median(seal), median(import), median(plain));
    println!(
        "sharing a patient with {n} observations ({} bytes sealed), median of {rounds}:",
        size
    );
    println!(
        "  sender: gather + consent + seal + sign + record   {:8.2} ms",
        ms(s)
    );
    println!(
        "  receiver: check + verify + open + import + record {:8.2} ms",
        ms(i)
    );
    println!(
        "  sealed share, both sides                          {:8.2} ms",
        ms(s + i)
    );
    println!(
        "  peer: the same records as a plain transaction      {:8.2} ms",
        ms(p)
    );
    println!(
        "  sharing costs {:.2}x the plain import",
        (s + i).as_secs_f64() / p.as_secs_f64()
    );
}
