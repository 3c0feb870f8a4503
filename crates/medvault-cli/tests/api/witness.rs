//! Two nodes on loopback: one witnesses the other's two logs (C2SP tlog-witness). Cosigning works
//! and is checked by `ledger verify`; a rolled-back or forked copy of a log is refused, and the
//! refusal is recorded in the witness's own access log.

use std::time::{Duration, Instant};

use medvault_ledger::{AddCheckpoint, Note, VerifierKey};
use medvault_testkit::Server;
use medvault_testkit::e2e::copy_dir;
use medvault_testkit::fhir::patient;

use crate::MEDVAULT;

fn vkey(s: &Server, path: &str) -> String {
    let (st, body) = s.raw_get(path);
    assert_eq!(st, 200);
    String::from_utf8(body).unwrap().trim().to_owned()
}

fn post_witness(b: &Server, body: String) -> reqwest::blocking::Response {
    b.anonymous(reqwest::Method::POST, "/witness/add-checkpoint")
        .body(body)
        .send()
        .unwrap()
}

/// Creates `body` as the admin; the index of the access-log leaf that recorded the request.
fn create_logged(s: &Server, body: &serde_json::Value) -> u64 {
    let rt = body["resourceType"].as_str().unwrap();
    let r = s
        .req(reqwest::Method::POST, rt)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "create {rt}");
    r.headers()[medvault_server::ACCESS_LEAF_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until the newest checkpoint of `log` on `s` is larger than `above` and cosigned by `wk`;
/// returns its size. The node signs checkpoints and asks its witnesses on their own schedules, so
/// the first cosigned checkpoint may be one signed before the leaves the caller just wrote:
/// `above` must be the index of the newest leaf the cosigned checkpoint has to cover.
fn cosigned_above(s: &Server, log: &str, wk: &VerifierKey, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = s.raw_get(&format!("/ledger/{log}/checkpoint"));
        let note = Note::parse(&body).unwrap();
        let size = medvault_ledger::Checkpoint::parse(&note.text).unwrap().size;
        if size > above && wk.verify(&note).is_ok() {
            return size;
        }
        assert!(
            Instant::now() < deadline,
            "the witness did not cosign {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_witness_cosigns_and_refuses_rollbacks_and_forks() {
    // The log node, first without a witness; a snapshot of it becomes the "fork" later.
    let mut a = MEDVAULT.start();
    a.create(&patient("Witnessfam", "Al"));
    let records_key = vkey(&a, "/ledger/records/key");
    let access_key = vkey(&a, "/ledger/access/key");
    a.stop();
    let work = tempfile::tempdir().unwrap();
    let fork_dir = work.path().join("fork");
    copy_dir(&a.dir, &fork_dir);

    // The witness, trusting both of the node's checkpoint keys.
    let b = MEDVAULT.start_with(&["--witness-for", &records_key, "--witness-for", &access_key]);
    let witness_key = vkey(&b, "/witness/key");
    let wk = VerifierKey::parse_vkey(&witness_key).unwrap();

    // The log again, now asking the witness to cosign.
    let a = MEDVAULT.launch(
        &a.dir.clone(),
        &[],
        &[
            "--witness",
            &format!("http://127.0.0.1:{}/witness,{witness_key}", b.port),
        ],
    );
    // Wait for a cosigned checkpoint covering the request that created Bea: one covering only
    // what `token create` wrote when the node was relaunched (the fork will have as many leaves)
    // is cosigned first, now and then.
    let bea = create_logged(&a, &patient("Witnessfam", "Bea"));
    let cosigned_size = cosigned_above(&a, "access", &wk, bea);
    cosigned_above(&a, "records", &wk, 1); // Al and Bea
    let out = a.verify_ledger();
    assert_eq!(out.matches("cosigned by").count(), 2, "both logs: {out}");

    // The fork: the snapshot taken before the cosigned size, grown with other entries.
    let fork = MEDVAULT.start_in(&fork_dir, &[]);
    fork.checkpoint_covering("access", 1);
    let (_, early_note) = fork.raw_get("/ledger/access/checkpoint");
    let early_note = Note::parse(&early_note).unwrap();
    let fork_start = medvault_ledger::Checkpoint::parse(&early_note.text)
        .unwrap()
        .size;
    assert!(
        fork_start < cosigned_size,
        "the fork's first checkpoint ({fork_start}) must be behind the cosigned one ({cosigned_size})"
    );
    for i in 0..(cosigned_size + 5) {
        let (st, _) = fork.get(&format!("Patient?family=Other{i}"));
        assert_eq!(st, 200);
    }
    let forked = fork.checkpoint_covering("access", cosigned_size + 1);
    let (_, forked_note) = fork.raw_get("/ledger/access/checkpoint");
    let forked_note = Note::parse(&forked_note).unwrap();

    // A log that claims the witness never cosigned it (old 0) → 409 with the witnessed size, as
    // text/x.tlog.size.
    let r = post_witness(&b, AddCheckpoint::render(0, &[], &forked_note));
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["content-type"], "text/x.tlog.size");
    assert!(
        r.headers()
            .contains_key(medvault_server::ACCESS_LEAF_HEADER),
        "refusal recorded"
    );
    let witnessed: u64 = r.text().unwrap().trim().parse().unwrap();
    assert!(witnessed >= cosigned_size);

    // Rollback: a checkpoint smaller than what the witness cosigned → refused (400: old size
    // above the checkpoint size; 409 if it claims an old size the witness never had).
    let r = post_witness(&b, AddCheckpoint::render(witnessed, &[], &early_note));
    assert_eq!(r.status(), 400);
    let r = post_witness(&b, AddCheckpoint::render(0, &[], &early_note));
    assert_eq!(r.status(), 409);
    assert!(
        r.headers()
            .contains_key(medvault_server::ACCESS_LEAF_HEADER),
        "refusal recorded"
    );

    // Fork: a proof from the witnessed size along the forked history does not verify → 422.
    let proof = fork.consistency_proof(witnessed, forked.size);
    let r = post_witness(&b, AddCheckpoint::render(witnessed, &proof, &forked_note));
    assert_eq!(r.status(), 422);
    assert!(
        r.headers()
            .contains_key(medvault_server::ACCESS_LEAF_HEADER),
        "refusal recorded"
    );
    assert!(r.text().unwrap().contains("does not verify"));

    // A signature the witness does not trust → 403; an origin it does not know → 404; garbage
    // → 400.
    let mut unsigned = forked_note.clone();
    unsigned.signatures[0].signature[0] ^= 1;
    let r = post_witness(&b, AddCheckpoint::render(witnessed, &proof, &unsigned));
    assert_eq!(r.status(), 403);
    let (_, own) = b.raw_get("/ledger/access/checkpoint");
    let r = post_witness(
        &b,
        AddCheckpoint::render(0, &[], &Note::parse(&own).unwrap()),
    );
    assert_eq!(r.status(), 404);
    let r = post_witness(&b, "old x\n\nnot a note".into());
    assert_eq!(r.status(), 400);

    // The honest log keeps being cosigned after all that.
    let cy = create_logged(&a, &patient("Witnessfam", "Cy"));
    cosigned_above(&a, "access", &wk, cy);
}
