//! Compliance benchmarks (issue 20) on a node with EVENTS access-log events and RESOURCES
//! resources: a breach assessment of one clinician over the whole log and over one day, the
//! signed compliance report (which verifies both logs in full), and the signed export of one
//! patient with 5 000 resources. Beside each, in the same run, its floor: every access-log
//! detail opened on one thread (what any scan of the log pays), `ledger verify` alone, and the
//! patient's `$everything` gathering alone.
//!
//! Usage: `medvault-compliance-bench [EVENTS] [RESOURCES]` (defaults 1000000 100000); prints
//! one line per figure. `scripts/bench-compliance` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

mod args;

use std::time::Instant;

use args::arg;
use medvault_compliance::breach::{self, Window};
use medvault_compliance::subject;
use medvault_core::Role;
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_node::ctx::Ctx;
use medvault_node::identity::accounts::FhirUser;
use medvault_node::import::{self, Mode};
use medvault_store::{LogTx, write_log_with};
use medvault_testkit::open_node;
use serde_json::json;

const DAY: i64 = 86_400_000_000;
/// Users in the synthetic log; the clinician assessed is one of them.
const USERS: u64 = 200;
/// One access-log event in this many reads the patient with 5 000 resources.
const BIG_EVERY: u64 = 500;
const STATES: &[&str] = &["MA", "NY", "CA", "TX", "WA", "FL", "IL", "OH", "GA", "PA"];

fn main() {
    let events: u64 = arg(1, 1_000_000);
    let resources: u64 = arg(2, 100_000);
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());
    let ctx = Ctx::unrestricted_node_work(&node);

    // Resources: patients with 99 observations each, loaded as ndjson files of 10 patients.
    let started = Instant::now();
    let patients = (resources / 100).max(1);
    for first in (0..patients).step_by(10) {
        let mut text = String::new();
        for p in first..(first + 10).min(patients) {
            let patient = json!({"resourceType": "Patient", "id": format!("p{p}"),
                "name": [{"family": format!("Family{p}"), "given": ["Bench"]}],
                "address": [{"use": "home", "state": STATES[p as usize % STATES.len()], "country": "US"}]});
            text.push_str(&patient.to_string());
            text.push('\n');
            for o in 0..99 {
                let obs = json!({"resourceType": "Observation", "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": format!("Patient/p{p}")},
                    "valueQuantity": {"value": 60 + o, "unit": "/min"}});
                text.push_str(&obs.to_string());
                text.push('\n');
            }
        }
        let entries = import::ndjson_entries(text.as_bytes(), Mode::AddOnly).unwrap();
        import::load(node.store.as_ref(), &ctx, entries).unwrap();
    }
    // One patient with 5 000 resources (the export's figure).
    let mut text = json!({"resourceType": "Patient", "id": "big",
        "name": [{"family": "Big", "given": ["Record"]}]})
    .to_string()
        + "\n";
    for o in 0..4_999 {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/big"},
            "valueQuantity": {"value": 60.5 + f64::from(o % 40), "unit": "/min"}});
        text.push_str(&obs.to_string());
        text.push('\n');
    }
    let entries = import::ndjson_entries(text.as_bytes(), Mode::AddOnly).unwrap();
    import::load(node.store.as_ref(), &ctx, entries).unwrap();
    println!(
        "loaded {} resources ({patients} patients) in {:.1} s",
        patients * 100,
        started.elapsed().as_secs_f64()
    );

    // The clinician assessed, a real account; the others are ids in the log only.
    let clinician = medvault_node::identity::accounts::create_user(
        &node,
        "bench.clinician",
        Role::Clinician,
        FhirUser::None,
        &medvault_auth::password::Password::new("a long bench password 1"),
    )
    .unwrap();

    // Events: reads spread evenly over 30 days ending now, by USERS users in turn.
    let started = Instant::now();
    let end = node.clock.now_micros();
    let start = end - 30 * DAY;
    let step = (30 * DAY) / events.max(1) as i64;
    let mut i = 0u64;
    while i < events {
        let n = 1000.min(events - i);
        let (ledger, clinician) = (std::sync::Arc::clone(&node.ledger), clinician.clone());
        write_log_with(node.access.as_ref(), move |tx: &mut dyn LogTx| {
            for k in i..i + n {
                let t = start + k as i64 * step;
                let user = if k % USERS == 7 {
                    clinician.clone()
                } else {
                    format!("usr_bench{}", k % USERS)
                };
                // As the server records them: bare patient ids. One read in BIG_EVERY is of
                // the big record's patient, whose export lists them as disclosures.
                let p = if k % BIG_EVERY == 3 {
                    "big".to_owned()
                } else {
                    format!("p{}", ((k / USERS) * 7_919 + k) % patients)
                };
                let rec = AuditRecord::new(AuditKind::Rest, t, "read", AuditOutcome::Success)
                    .agent(json!({"token": user, "role": "clinician", "session": "ses_b", "client": null}))
                    .patient(Some(p.clone()))
                    .with("policy", json!({"purpose": "TREAT", "denied_by": [], "withheld": 0,
                        "break_glass": [], "patients_seen": [p], "patients_refused": []}))
                    .with("method", "GET")
                    .with("resource_type", "Observation")
                    .with("id", format!("o{k}"))
                    .with("status", 200)
                    .with("address", "10.0.0.7");
                ledger.append_audit(tx, t, &rec)?;
            }
            Ok(())
        })
        .unwrap();
        i += n;
    }
    node.ledger
        .checkpoint_now(node.store.as_ref(), node.access.as_ref())
        .unwrap();
    println!(
        "appended {events} access-log events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // What a serving node's indexer does in the background, a run at a time.
    let indexing = Instant::now();
    let caught = medvault_node::access_index::catch_up(node.access.as_ref(), &node.ledger).unwrap();
    println!(
        "patient index, built a run at a time: {} entries, {} rows, in {:.2} s",
        caught.leaves,
        caught.rows,
        indexing.elapsed().as_secs_f64()
    );
    drop(node);
    let node = open_node(dir.path());
    let size = node.access.ledger_size().unwrap();

    // Floor: every detail opened, one thread.
    let started = Instant::now();
    let mut opened = 0u64;
    let mut at = 0;
    while at < size {
        for (_, d) in node.access.audit_details(at, 4096.min(size - at)).unwrap() {
            std::hint::black_box(node.ledger.open_audit(&d).unwrap());
            opened += 1;
        }
        at += 4096;
    }
    let floor = started.elapsed().as_secs_f64();
    println!("floor: {opened} access-log details opened on one thread in {floor:.2} s");

    // The assessment, the whole log (30 days) and one day.
    let who = breach::principal(&node, &clinician).unwrap();
    for (label, from) in [("30 days", start), ("1 day", end - DAY)] {
        let started = Instant::now();
        let a = breach::assess_principal(
            &node,
            who.clone(),
            Window::new(from, end, end).unwrap(),
            |_, _| {},
        )
        .unwrap();
        let ev = a.evidence.as_ref().unwrap();
        println!(
            "breach assess, {label} of {size} events: {:.2} s ({} leaves read, {} of the clinician's events, {} patients, {} jurisdictions)",
            started.elapsed().as_secs_f64(),
            ev.scanned,
            ev.events,
            a.patients.len(),
            a.jurisdictions.len()
        );
    }

    // The report, and ledger verify alone beside it.
    let started = Instant::now();
    medvault_node::verify::verify(
        node.store.as_ref(),
        node.access.as_ref(),
        &node.ledger,
        &[],
        |_, _| {},
    )
    .unwrap();
    println!(
        "ledger verify alone (both logs): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let report = medvault_compliance::report(&node, |_, _| {}).unwrap();
    println!(
        "compliance report ({} controls, {size} events, {} resources): {:.2} s",
        report["controls"].as_array().map_or(0, Vec::len),
        patients * 100 + 5_000,
        started.elapsed().as_secs_f64()
    );

    // One patient's export (5 000 resources), and gathering them alone beside it.
    let big = medvault_core::ResourceId::new("big").unwrap();
    let started = Instant::now();
    let all = medvault_node::operations::everything_resources(
        node.store.as_ref(),
        &Ctx::unrestricted_node_work(&node),
        &big,
        None,
    )
    .unwrap();
    println!(
        "$everything gathering alone: {} resources in {:.2} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    let agent = json!({"os_user": "bench"});
    let request =
        subject::open_request(&node, &big, subject::Right::Access, None, "bench", &agent).unwrap();
    let id = request["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let export = subject::export(
        &node,
        &big,
        &subject::Requester::Staff {
            request: &id,
            by: "bench",
        },
        &agent,
    )
    .unwrap();
    let bytes = export.to_string().len();
    println!(
        "subject export: {} resources, {} disclosures, {:.1} MB signed, in {:.2} s",
        export["counts"]["resources"],
        export["counts"]["disclosures"],
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    subject::verify(&export, None, Some(&node)).unwrap();
    println!("subject verify: {:.2} s", started.elapsed().as_secs_f64());

    // The patient's accounting alone, through the patient index and, beside it, by opening
    // every detail on one thread (what a log not yet re-indexed costs).
    let accounting = |budget_note: &str| {
        let started = Instant::now();
        let mut n = 0u64;
        medvault_node::access_index::walk_naming(
            node.access.as_ref(),
            &node.ledger,
            "big",
            (0, size),
            u64::MAX,
            &mut |_, _| {
                n += 1;
                Ok(true)
            },
        )
        .unwrap();
        println!(
            "accounting of disclosures, {budget_note}: {n} of {size} entries in {:.3} s",
            started.elapsed().as_secs_f64()
        );
    };
    accounting("patient index");
    write_log_with(node.access.as_ref(), move |tx: &mut dyn LogTx| {
        tx.set_meta(medvault_store::ACCESS_INDEXED_FROM, &size.to_string())?;
        tx.set_meta(medvault_store::ACCESS_INDEXED_TO, &size.to_string())
    })
    .unwrap();
    accounting("no index (every detail opened)");
    let started = Instant::now();
    let r = medvault_node::access_index::reindex(node.access.as_ref(), &node.ledger, |_, _| {})
        .unwrap();
    println!(
        "reindex-access: {} entries, {} rows, in {:.2} s",
        r.leaves,
        r.rows,
        started.elapsed().as_secs_f64()
    );
}
