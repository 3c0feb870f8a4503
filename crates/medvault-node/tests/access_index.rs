//! The access log's patient index: written a run at a time once the log holds the run, read
//! newest first through the index (and by opening every detail outside it: the newest leaves
//! of a run not yet whole, and older ones where a log predates the index), re-indexed in place,
//! and checked both ways by `ledger verify`, which names a row deleted, added or moved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;

use medvault_node::access_index::{self, Walked};
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_node::node::Node;
use medvault_node::verify::{self, VerifyError};
use medvault_store::{ACCESS_RUN_LEAVES, LogTx};
use serde_json::{Value, json};

/// Appends the records the tests look for; returns their leaves.
fn populate(node: &Node) -> Vec<u64> {
    let rest = |t, interaction: &str| {
        AuditRecord::new(AuditKind::Rest, t, interaction, AuditOutcome::Success)
            .agent(json!({"token": "tok_1", "role": "clinician"}))
    };
    let policy = |seen: &[&str], refused: &[&str]| {
        json!({"purpose": "TREAT", "denied_by": [], "withheld": 0, "break_glass": [],
               "patients_seen": seen, "patients_refused": refused})
    };
    let records: Vec<Box<dyn Fn(i64) -> AuditRecord>> = vec![
        // 0: an Observation of a's.
        Box::new(|t| {
            rest(t, "read")
                .patient(Some("a".into()))
                .with("resource_type", "Observation")
                .with("policy", policy(&["a"], &[]))
        }),
        // 1: a search that let a and b through and refused c.
        Box::new(|t| {
            rest(t, "search-type")
                .with("resource_type", "Observation")
                .with("policy", policy(&["a", "Patient/b"], &["c"]))
        }),
        // 2: about no patient.
        Box::new(|t| AuditRecord::admin(t, "keys-rotate", Some("kek-2"))),
        // 3: the Patient resource of d.
        Box::new(|t| {
            rest(t, "read")
                .with("resource_type", "Patient")
                .with("id", "d")
        }),
        // 4: an administrative action on b.
        Box::new(|t| AuditRecord::admin(t, "patient-restrict", Some("Patient/b"))),
    ];
    records
        .iter()
        .map(|r| node.record_audit_now(r).unwrap())
        .collect()
}

/// Fills the access log's current run with records about no patient, then indexes what is
/// whole, as a serving node does in the background.
fn fill_run_and_index(node: &Node) -> access_index::CaughtUp {
    let size = node.access.ledger_size().unwrap();
    let end = size.div_ceil(ACCESS_RUN_LEAVES) * ACCESS_RUN_LEAVES;
    let (ledger, now) = (std::sync::Arc::clone(&node.ledger), node.clock.now_micros());
    medvault_store::write_log_with(node.access.as_ref(), move |tx: &mut dyn LogTx| {
        for _ in size..end {
            ledger
                .append_audit(tx, now, &AuditRecord::admin(now, "keys-rotate", None))
                .map_err(|e| medvault_store::StoreError::Aborted(e.message.into()))?;
        }
        Ok(())
    })
    .unwrap();
    access_index::catch_up(node.access.as_ref(), &node.ledger).unwrap()
}

fn naming(node: &Node, patient: &str) -> Vec<u64> {
    let mut found = Vec::new();
    let size = node.access.ledger_size().unwrap();
    access_index::walk_naming(
        node.access.as_ref(),
        &node.ledger,
        patient,
        (0, size),
        u64::MAX,
        &mut |leaf, _| {
            found.push(leaf);
            Ok(true)
        },
    )
    .unwrap();
    found
}

fn verified(node: &Node) -> Result<verify::Report, VerifyError> {
    node.ledger
        .checkpoint_now(node.store.as_ref(), node.access.as_ref())
        .unwrap();
    verify::verify(
        node.store.as_ref(),
        node.access.as_ref(),
        &node.ledger,
        &[],
        |_, _| {},
    )
}

fn divergence(node: &Node) -> String {
    match verified(node) {
        Err(VerifyError::Divergence(why)) => why,
        other => panic!("expected a divergence, got {other:?}"),
    }
}

/// A connection to the node's access log, as a database administrator would open it.
fn sql(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("access.db")).unwrap()
}

fn expect_found(node: &Node, leaves: &[u64]) {
    let l = |i: usize| leaves[i];
    assert_eq!(naming(node, "a"), vec![l(1), l(0)], "a: newest first");
    assert_eq!(naming(node, "b"), vec![l(4), l(1)]);
    assert_eq!(
        naming(node, "c"),
        vec![l(1)],
        "refused patients are named too"
    );
    assert_eq!(naming(node, "d"), vec![l(3)]);
    assert!(naming(node, "nobody").is_empty());
}

#[test]
fn every_leaf_is_indexed_and_found_newest_first() {
    let (tmp, node) = medvault_testkit::scratch_node();
    let leaves = populate(&node);
    let rows = || -> i64 {
        sql(&tmp.path().join("data"))
            .query_row("SELECT count(*) FROM access_patients", [], |r| r.get(0))
            .unwrap()
    };
    // The request path writes no rows: the newest leaves are read in full until their run is
    // whole.
    assert_eq!(rows(), 0);
    expect_found(&node, &leaves);
    let r = verified(&node).unwrap();
    assert_eq!((r.patient_index_from, r.patient_index_to), (0, 0));
    assert_eq!(
        access_index::catch_up(node.access.as_ref(), &node.ledger)
            .unwrap()
            .leaves,
        0,
        "a run not yet whole waits"
    );
    let caught = fill_run_and_index(&node);
    assert_eq!(
        (caught.leaves, caught.to),
        (ACCESS_RUN_LEAVES, ACCESS_RUN_LEAVES)
    );
    expect_found(&node, &leaves);
    // Only the patients a record names have rows: 1 + 3 + 0 + 1 + 1.
    assert_eq!(caught.rows, 6);
    assert_eq!(rows(), 6);
    let r = verified(&node).unwrap();
    assert_eq!(
        (r.patient_index_from, r.patient_index_to),
        (0, ACCESS_RUN_LEAVES)
    );
    // Newer leaves, above the index, are found beside it.
    let newer = node
        .record_audit_now(|t| AuditRecord::admin(t, "patient-restrict", Some("Patient/b")))
        .unwrap();
    assert_eq!(naming(&node, "b"), vec![newer, leaves[4], leaves[1]]);

    // A bounded walk says where to go on.
    let mut seen = Vec::new();
    let w = access_index::walk_naming(
        node.access.as_ref(),
        &node.ledger,
        "a",
        (0, leaves[4] + 1),
        1,
        &mut |leaf, _: &Value| {
            seen.push(leaf);
            Ok(true)
        },
    )
    .unwrap();
    assert_eq!(seen, vec![leaves[1]]);
    assert_eq!(w.opened, 1);
    // The budget ran out before a's older leaf: the next page starts at it.
    let w2 = access_index::walk_naming(
        node.access.as_ref(),
        &node.ledger,
        "a",
        (0, w.below),
        1,
        &mut |_, _| Ok(false),
    )
    .unwrap();
    assert_eq!(
        w2,
        Walked {
            below: leaves[0],
            opened: 1
        },
        "visit stopped at a's first leaf"
    );
}

#[test]
fn verify_names_a_row_deleted_added_or_beyond_the_log() {
    let (tmp, node) = medvault_testkit::scratch_node();
    let leaves = populate(&node);
    fill_run_and_index(&node);
    let dir = tmp.path().join("data");
    let db = sql(&dir);
    let tag_of = |leaf: u64| -> Vec<u8> {
        db.query_row(
            "SELECT tag FROM access_patients WHERE leaf = ?1",
            [leaf as i64],
            |r| r.get(0),
        )
        .unwrap()
    };
    let a_tag = tag_of(leaves[0]);
    let d_tag = tag_of(leaves[3]);

    // Hiding an access from a's accounting.
    db.execute(
        "DELETE FROM access_patients WHERE leaf = ?1",
        [leaves[0] as i64],
    )
    .unwrap();
    assert!(
        naming(&node, "a") == vec![leaves[1]],
        "the index decides what is read"
    );
    let why = divergence(&node);
    assert!(
        why.contains(&format!("audit leaf {}", leaves[0])) && why.contains("does not list it"),
        "{why}"
    );
    db.execute(
        "INSERT INTO access_patients (run, tag, leaf) VALUES (?2 >> 12, ?1, ?2)",
        rusqlite::params![a_tag, leaves[0] as i64],
    )
    .unwrap();
    verified(&node).unwrap();

    // Framing d with an access that was a's: a row under a patient the record does not name.
    db.execute(
        "INSERT INTO access_patients (run, tag, leaf) VALUES (?2 >> 12, ?1, ?2)",
        rusqlite::params![d_tag, leaves[0] as i64],
    )
    .unwrap();
    assert_eq!(
        naming(&node, "d"),
        vec![leaves[3]],
        "a row alone never puts a record in an accounting"
    );
    let why = divergence(&node);
    assert!(why.contains("does not name"), "{why}");
    db.execute(
        "DELETE FROM access_patients WHERE tag = ?1 AND leaf = ?2",
        rusqlite::params![d_tag, leaves[0] as i64],
    )
    .unwrap();

    // A row for a leaf the log does not hold.
    db.execute(
        "INSERT INTO access_patients (run, tag, leaf) VALUES (999999 >> 12, ?1, 999999)",
        [d_tag],
    )
    .unwrap();
    let why = divergence(&node);
    assert!(why.contains("1 row(s) that name no leaf"), "{why}");
    db.execute("DELETE FROM access_patients WHERE leaf = 999999", [])
        .unwrap();
    verified(&node).unwrap();
    assert!(
        db.execute(
            "INSERT INTO access_patients (run, tag, leaf) VALUES (-1, ?1, -1)",
            [&a_tag],
        )
        .is_err(),
        "the table refuses a negative leaf"
    );
    // A row with a negative leaf (the table's CHECK refuses it, so an editor rebuilds the
    // table without its constraints and key first): named by verify, and readers neither repeat nor lose what
    // the index holds.
    db.execute_batch(
        "CREATE TABLE loose (run INTEGER, tag BLOB NOT NULL, leaf INTEGER NOT NULL);
         INSERT INTO loose SELECT run, tag, leaf FROM access_patients;
         DROP TABLE access_patients;
         ALTER TABLE loose RENAME TO access_patients;",
    )
    .unwrap();
    for n in 1..=1100i64 {
        db.execute(
            "INSERT INTO access_patients (run, tag, leaf) VALUES (?2 >> 12, ?1, ?2)",
            rusqlite::params![a_tag, -n],
        )
        .unwrap();
    }
    assert_eq!(naming(&node, "a"), vec![leaves[1], leaves[0]]);
    let why = divergence(&node);
    assert!(
        why.contains("1100 row(s) that name no leaf") && why.contains("the first with leaf -"),
        "{why}"
    );
    db.execute("DELETE FROM access_patients WHERE leaf < 0", [])
        .unwrap();
    verified(&node).unwrap();
    // A leaf that is not an integer: passed over by readers, named by verify.
    db.execute(
        "INSERT INTO access_patients (run, tag, leaf) VALUES (0, ?1, 0.5)",
        [&a_tag],
    )
    .unwrap();
    assert_eq!(naming(&node, "a"), vec![leaves[1], leaves[0]]);
    let why = divergence(&node);
    assert!(why.contains("the first with leaf 0.5"), "{why}");
    db.execute(
        "DELETE FROM access_patients WHERE typeof(leaf) = 'real'",
        [],
    )
    .unwrap();
    // A row moved out of its leaf's run: readers do not see it there, and verify names it.
    db.execute(
        "UPDATE access_patients SET run = 7 WHERE leaf = ?1",
        [leaves[0] as i64],
    )
    .unwrap();
    assert_eq!(naming(&node, "a"), vec![leaves[1]]);
    let why = divergence(&node);
    assert!(why.contains("1 row(s) that name no leaf"), "{why}");
    db.execute("UPDATE access_patients SET run = 0 WHERE run = 7", [])
        .unwrap();
    verified(&node).unwrap();
    // A patient's row deleted and another's duplicated in its place keeps the count: the
    // duplicate is named.
    let b_tag: Vec<u8> = db
        .query_row(
            "SELECT tag FROM access_patients WHERE leaf = ?1 AND tag <> ?2",
            rusqlite::params![leaves[1] as i64, a_tag],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "DELETE FROM access_patients WHERE leaf = ?1 AND tag = ?2",
        rusqlite::params![leaves[1] as i64, b_tag],
    )
    .unwrap();
    db.execute(
        "INSERT INTO access_patients (run, tag, leaf) VALUES (?2 >> 12, ?1, ?2)",
        rusqlite::params![a_tag, leaves[1] as i64],
    )
    .unwrap();
    let why = divergence(&node);
    assert!(
        why.contains(&format!("audit leaf {}", leaves[1])) && why.contains("twice"),
        "{why}"
    );
}

#[test]
fn a_log_from_before_the_index_is_read_in_full_then_reindexed() {
    let (tmp, node) = medvault_testkit::scratch_node();
    let leaves = populate(&node);
    fill_run_and_index(&node);
    let size = node.access.ledger_size().unwrap();
    // As the migration leaves a log that predates the index.
    let db = sql(&tmp.path().join("data"));
    db.execute_batch(&format!(
        "DELETE FROM access_patients;
         UPDATE meta SET v = '{size}' WHERE k IN ('access_index_from', 'access_index_to');"
    ))
    .unwrap();
    assert_eq!(access_index::indexed(node.access.as_ref()).unwrap().0, size);
    expect_found(&node, &leaves);
    assert_eq!(verified(&node).unwrap().patient_index_from, size);
    // New entries are found beside the index; older ones are indexed by re-indexing.
    let newer = node
        .record_audit_now(|t| AuditRecord::admin(t, "patient-restrict", Some("Patient/e")))
        .unwrap();
    assert_eq!(naming(&node, "e"), vec![newer]);
    let mut calls = 0;
    let r = access_index::reindex(node.access.as_ref(), &node.ledger, |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .unwrap();
    assert!(calls >= 1);
    assert_eq!((r.from, r.leaves, r.rows), (0, size, 6));
    expect_found(&node, &leaves);
    assert_eq!(verified(&node).unwrap().patient_index_from, 0);
    let again = access_index::reindex(node.access.as_ref(), &node.ledger, |_, _| {}).unwrap();
    assert_eq!(again.leaves, 0, "nothing left to do");
}
