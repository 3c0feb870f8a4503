//! Ledger benchmarks (issue 3) on the node's access log, the busier of its two logs: durable
//! appends per second through the real node (sealed audit details, group commit,
//! `synchronous=FULL`), inclusion and consistency proof time at a given tree size (through SQLite
//! and over the in-memory tree), and `ledger verify` leaves per second.
//!
//! Usage: `medvault-ledger-bench [LEAVES] [SECONDS] [WRITERS]` (defaults 1000000 10 32).
//! Prints one line per figure; `scripts/bench-ledger` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

mod args;

use args::arg;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use medvault_ledger::{MemoryTree, inclusion_proof, leaf_hash, verify_inclusion};
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_store::{LedgerNodes, LogTx, write_log_with};
use medvault_testkit::open_node;

fn detail(i: u64, now_micros: i64) -> AuditRecord {
    AuditRecord::new(AuditKind::Rest, now_micros, "read", AuditOutcome::Success)
        .with("request_id", format!("bench-{i}"))
        .with("resource_type", "Patient")
        .with("id", format!("p{i}"))
        .with("status", 200)
}

fn main() {
    let leaves = arg(1, 1_000_000);
    let secs = arg(2, 10);
    let writers = arg(3, 32);
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(open_node(dir.path()));

    // 1. Durable appends: WRITERS threads, each appending one sealed audit leaf per write and
    //    waiting for it to be durable (what every API request does).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (node, stop, done) = (Arc::clone(&node), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = done.fetch_add(1, Ordering::Relaxed);
                    let now = node.clock.now_micros();
                    node.ledger
                        .record_audit(node.access.as_ref(), now, &detail(i, now))
                        .unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let appended = node.access.ledger_size().unwrap();
    println!(
        "durable appends, {writers} writers, one leaf per write: {:.0}/s ({appended} in {:.1} s)",
        appended as f64 / started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    // 2. Batched appends: 1 000 sealed audit leaves per durable write, up to LEAVES.
    let started = Instant::now();
    let before = node.access.ledger_size().unwrap();
    let mut i = before;
    while i < leaves {
        let n = 1000.min(leaves - i);
        let ledger = Arc::clone(&node.ledger);
        let now = node.clock.now_micros();
        write_log_with(node.access.as_ref(), move |tx: &mut dyn LogTx| {
            for k in 0..n {
                ledger.append_audit(tx, now, &detail(i + k, now))?;
            }
            Ok(())
        })
        .unwrap();
        i += n;
    }
    let batched = leaves.saturating_sub(before);
    println!(
        "durable appends, batches of 1000: {:.0}/s ({batched} leaves)",
        batched as f64 / started.elapsed().as_secs_f64()
    );
    node.ledger
        .checkpoint_now(node.store.as_ref(), node.access.as_ref())
        .unwrap();
    // Proofs and verification are measured on the log at rest, as a restarted node (or the
    // `ledger verify` command) meets it: closing folds the write burst's WAL into the database
    // file, which a running node's background checkpoints do within seconds of a burst.
    drop(node);
    let node = open_node(dir.path());

    // 3. Proofs at the full size, through SQLite.
    let size = node.access.ledger_size().unwrap();
    let store = node.access.as_ref();
    let root = LedgerNodes(store)
        .batched(|s| medvault_ledger::root(s, size))
        .unwrap();
    let rounds = 2000u64;
    // What a running server does at start: cache the tree's upper levels (≈ 1/128 of the nodes).
    let warmed = node.ledger.access().node_cache().warm(store).unwrap();
    println!("node cache warmed with {warmed} upper-level hashes");
    let started = Instant::now();
    for r in 0..rounds {
        let idx = (r * 7_919_993) % size;
        std::hint::black_box(
            LedgerNodes(store)
                .batched_cached(Some(node.ledger.access().node_cache()), |s| {
                    inclusion_proof(s, idx, size)
                })
                .unwrap(),
        );
    }
    println!(
        "inclusion proof at {size} leaves (SQLite + upper-level node cache): {:.1} µs each",
        started.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    let started = Instant::now();
    for r in 0..rounds {
        let old = 1 + (r * 7_919_993) % (size - 1);
        std::hint::black_box(
            LedgerNodes(store)
                .batched_cached(Some(node.ledger.access().node_cache()), |s| {
                    medvault_ledger::consistency_proof(s, old, size)
                })
                .unwrap(),
        );
    }
    println!(
        "consistency proof to {size} leaves (SQLite + upper-level node cache): {:.1} µs each",
        started.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    // Spot-check one proof so the figure is of correct work.
    let entry = store.ledger_entries(size / 2, 1).unwrap().remove(0).1;
    let proof = LedgerNodes(store)
        .batched(|s| inclusion_proof(s, size / 2, size))
        .unwrap();
    verify_inclusion(size / 2, size, &leaf_hash(&entry), &proof, &root).unwrap();

    // 4. The pure algorithm over an in-memory tree of 10 million leaves.
    let mem_size = 10_000_000u64;
    let mut tree = MemoryTree::new();
    for k in 0..mem_size {
        tree.push(leaf_hash(&k.to_be_bytes()));
    }
    let started = Instant::now();
    for r in 0..rounds {
        let idx = (r * 7_919_993) % mem_size;
        std::hint::black_box(inclusion_proof(&tree, idx, mem_size).unwrap());
    }
    println!(
        "inclusion proof at {mem_size} leaves (in memory): {:.2} µs each",
        started.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
    drop(tree);

    // 5. Full verification of everything stored.
    let started = Instant::now();
    let report = medvault_node::verify::verify(
        node.store.as_ref(),
        node.access.as_ref(),
        &node.ledger,
        &[],
        |_, _| {},
    )
    .unwrap();
    let took = started.elapsed().as_secs_f64();
    println!(
        "ledger verify: {} leaves in {took:.2} s = {:.0} leaves/s (every audit detail opened, the patient index checked against it)",
        report.access.leaves,
        report.access.leaves as f64 / took
    );

    // 6. Beside it, one thread over every detail: its AEAD tag alone (what verify checked
    //    before the patient index), and the tags of the patients it names (what it adds).
    let mut details = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut at = 0;
    while at < size {
        details.extend(
            store
                .audit_details(at, 4096.min(size - at))
                .unwrap()
                .into_iter()
                .map(|(_, d)| d),
        );
        at += 4096;
    }
    let per = |f: &dyn Fn(&medvault_store::AuditDetail)| {
        let started = Instant::now();
        for d in &details {
            f(d);
        }
        started.elapsed().as_secs_f64() * 1e6 / details.len().max(1) as f64
    };
    let aead = per(&|d| assert!(node.ledger.audit_opens(d)));
    let named = per(&|d| {
        std::hint::black_box(node.ledger.audit_patient_tags(d).unwrap());
    });
    println!(
        "per detail, one thread: AEAD tag alone {aead:.2} µs; opened, inflated and its patients' index tags computed {named:.2} µs"
    );
}
