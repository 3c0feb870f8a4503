//! The ledger end to end: every request leaves a leaf in the access log, every version a leaf in
//! the records log; checkpoints (each pinning the other log), tiles and proofs are served and
//! verify; `ledger verify` passes on an honest data directory and catches every tampering.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_ledger::{
    Checkpoint, Entry, EntryKind, leaf_hash, verify_consistency, verify_inclusion,
};
use serde_json::Value;

use medvault_testkit::Server;
use medvault_testkit::e2e::{copy_dir, proof_hashes as hashes};
use medvault_testkit::fhir::{observation, patient};

use crate::MEDVAULT;

fn leaf_of(resp: &reqwest::blocking::Response) -> u64 {
    resp.headers()[medvault_server::ACCESS_LEAF_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn every_access_is_a_leaf_and_proofs_verify() {
    let s = MEDVAULT.start();
    let id = s.create(&patient("Ledgerfam", "Ann"));
    let read = s
        .req(reqwest::Method::GET, &format!("Patient/{id}"))
        .send()
        .unwrap();
    assert_eq!(read.status(), 200);
    let read_leaf = leaf_of(&read);
    // A failed authentication and a request with a purpose of use are recorded too.
    let denied = reqwest::blocking::Client::new()
        .get(s.url("Patient"))
        .bearer_auth("mvt_not-a-token")
        .send()
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert!(leaf_of(&denied) > read_leaf);
    let declaring = |path: &str, purpose: &str| {
        s.req(reqwest::Method::GET, path)
            .header("X-Purpose-Of-Use", purpose)
            .send()
            .unwrap()
    };
    let purposeful = declaring("Patient?family=Ledgerfam", "TREAT");
    assert_eq!(purposeful.status(), 200);
    let bad_purpose = declaring("Patient", "because");
    assert_eq!(bad_purpose.status(), 400);
    let last = leaf_of(&bad_purpose);

    let cp = s.checkpoint_covering("access", last + 1);
    let entries = check_tiles(&s, "access", &cp);
    // The access log holds only audit leaves; no PHI in them: each is a fixed-size entry.
    assert!(
        entries
            .iter()
            .all(|e| Entry::decode(e).unwrap().kind == EntryKind::Audit)
    );
    // The records log holds the create's leaf, and only record leaves.
    let records = s.checkpoint_covering("records", 1);
    let record_entries = check_tiles(&s, "records", &records);
    assert_eq!(record_entries.len(), 1);
    assert_eq!(
        Entry::decode(&record_entries[0]).unwrap().kind,
        EntryKind::Record
    );
    // The access checkpoint pins a records tree head the records leaves reproduce, and the
    // records checkpoint pins an access head.
    let (pinned_size, pinned_root) = cp.pin("records").unwrap().expect("records pin");
    assert_eq!((pinned_size, pinned_root), (records.size, records.root));
    assert!(records.pin("access").unwrap().is_some());
    // Tiles beyond the checkpoint, and unknown logs, are not served.
    let w = cp.size;
    assert_eq!(
        s.raw_get(&format!("/ledger/access/tile/0/000.p/{}", w + 1))
            .0,
        404
    );
    assert_eq!(s.raw_get("/ledger/access/tile/0/001").0, 404);
    assert_eq!(s.raw_get("/ledger/access/tile/0/00x").0, 404);
    assert_eq!(s.raw_get("/ledger/other/checkpoint").0, 404);
    assert_eq!(s.raw_get("/ledger/checkpoint").0, 404);

    // Inclusion proof of the read's audit leaf, against the checkpoint.
    let (st, body) = s.raw_get(&format!(
        "/ledger/access/proof/inclusion?index={read_leaf}&size={}",
        cp.size
    ));
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let entry = B64.decode(v["entry"].as_str().unwrap()).unwrap();
    assert_eq!(Entry::decode(&entry).unwrap().kind, EntryKind::Audit);
    verify_inclusion(
        read_leaf,
        cp.size,
        &leaf_hash(&entry),
        &hashes(&v["proof"]),
        &cp.root,
    )
    .unwrap();

    // Consistency between an early size and the checkpoint, from the tiles' own root.
    let mut tree = medvault_ledger::MemoryTree::new();
    for e in entries.iter().take(3) {
        tree.push(leaf_hash(e));
    }
    let (st, body) = s.raw_get(&format!(
        "/ledger/access/proof/consistency?old=3&new={}",
        cp.size
    ));
    assert_eq!(st, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    verify_consistency(3, cp.size, &tree.root(), &cp.root, &hashes(&v["proof"])).unwrap();
    for bad in [
        "/ledger/access/proof/inclusion?index=5&size=5",
        "/ledger/access/proof/inclusion?index=0&size=999999",
        "/ledger/access/proof/inclusion?index=x&size=1",
        "/ledger/access/proof/consistency?old=0&new=3",
        "/ledger/access/proof/consistency?old=4&new=3",
        "/ledger/records/proof/inclusion?index=1&size=1",
        "/ledger/access/proof/inclusion?index=-1&size=5",
        "/ledger/access/proof/inclusion?index=18446744073709551616&size=5",
        "/ledger/access/proof/consistency?old=&new=",
        "/ledger/access/tile/0/%ff",
    ] {
        let (st, body) = s.raw_get(bad);
        assert_eq!(st, 400, "{bad}");
        // Every refusal is an OperationOutcome, malformed queries and paths included.
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{bad}: not JSON ({e}): {body:?}"));
        assert_eq!(v["resourceType"], "OperationOutcome", "{bad}");
    }
    let (st, v) = s.get("Patient/%ff%fe");
    assert_eq!(
        (st, &v["resourceType"]),
        (400, &Value::from("OperationOutcome")),
        "{v}"
    );

    // The whole directory verifies while the server runs.
    let out = s.verify_ledger();
    assert!(out.contains("ledger verified"), "{out}");
}

/// Fetches the (partial) first level-0 tile and entry bundle of `log` covering `cp`, checks the
/// tile holds the hashes of the bundle's entries, and returns the entries.
fn check_tiles(s: &Server, log: &str, cp: &Checkpoint) -> Vec<Vec<u8>> {
    let w = cp.size;
    assert!(0 < w && w < 256, "test expects a small log");
    let (st, tile) = s.raw_get(&format!("/ledger/{log}/tile/0/000.p/{w}"));
    assert_eq!(st, 200);
    let (st, bundle) = s.raw_get(&format!("/ledger/{log}/tile/entries/000.p/{w}"));
    assert_eq!(st, 200);
    let mut entries = Vec::new();
    let mut rest = &bundle[..];
    while !rest.is_empty() {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        entries.push(rest[2..2 + n].to_vec());
        rest = &rest[2 + n..];
    }
    assert_eq!(entries.len() as u64, w);
    assert_eq!(tile.len() as u64, 32 * w);
    let mut tree = medvault_ledger::MemoryTree::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            &tile[32 * i..32 * i + 32],
            &leaf_hash(e)[..],
            "{log} leaf {i}"
        );
        tree.push(leaf_hash(e));
    }
    assert_eq!(tree.root(), cp.root, "{log} tiles reproduce the checkpoint");
    entries
}

/// A tiny deterministic generator, so a failing tampering can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Kinds of tampering [`tamper`] knows.
const TAMPERINGS: u64 = 10;

/// Applies tampering `kind` to a random row of the data directory `dir` (kinds 8 and 9 put back
/// the access or records database of `old`, an earlier copy); returns what it did.
fn tamper(dir: &Path, old: &Path, kind: u64, rng: &mut Rng) -> String {
    let records = dir.join("medvault.db");
    let access = dir.join("access.db");
    let db = match kind {
        0 | 3 => &records,
        // Kind 7 tampers with a stored tree node: only the access log here is long enough.
        6 | 7 => &access,
        8 | 9 => {
            let name = if kind == 8 {
                "access.db"
            } else {
                "medvault.db"
            };
            std::fs::copy(old.join(name), dir.join(name)).unwrap();
            return format!("put back an older {name}");
        }
        _ if rng.below(2) == 0 => &records,
        _ => &access,
    };
    let log = if db == &records { "records" } else { "access" };
    format!("{log} log: {}", tamper_rows(db, kind, rng))
}

fn tamper_rows(db: &Path, kind: u64, rng: &mut Rng) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    let pick = |rng: &mut Rng, table: &str, key: &str| -> i64 {
        let keys: Vec<i64> = c
            .prepare(&format!("SELECT {key} FROM {table}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        keys[rng.below(keys.len() as u64) as usize]
    };
    let flip = |rng: &mut Rng, table: &str, col: &str, key: &str, k: i64| {
        let mut b: Vec<u8> = c
            .query_row(
                &format!("SELECT {col} FROM {table} WHERE {key} = ?1"),
                [k],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .unwrap();
        let i = rng.below(b.len() as u64) as usize;
        b[i] ^= 1 << rng.below(8);
        c.execute(
            &format!("UPDATE {table} SET {col} = ?1 WHERE {key} = ?2"),
            rusqlite::params![b, k],
        )
        .unwrap();
    };
    match kind {
        0 => {
            let k = pick(rng, "versions WHERE body IS NOT NULL", "leaf");
            flip(rng, "versions", "body", "leaf", k);
            format!("flipped a bit of the sealed body in versions row {k}")
        }
        1 => {
            let k = pick(rng, "ledger_leaves", "idx");
            flip(rng, "ledger_leaves", "entry", "idx", k);
            format!("flipped a bit of leaf {k}")
        }
        2 => {
            let k = pick(rng, "ledger_checkpoints", "size");
            let note: String = c
                .query_row(
                    "SELECT note FROM ledger_checkpoints WHERE size = ?1",
                    [k],
                    |r| r.get(0),
                )
                .unwrap();
            let mut b = note.into_bytes();
            let i = rng.below(b.len() as u64) as usize;
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            c.execute(
                "UPDATE ledger_checkpoints SET note = ?1 WHERE size = ?2",
                rusqlite::params![String::from_utf8_lossy(&b).into_owned(), k],
            )
            .unwrap();
            // Only the newest checkpoint is checked; make sure the tampered one is it.
            c.execute("DELETE FROM ledger_checkpoints WHERE size > ?1", [k])
                .unwrap();
            format!("changed a byte of checkpoint {k} and dropped newer ones")
        }
        3 => {
            let k = pick(rng, "versions", "leaf");
            c.execute("DELETE FROM versions WHERE leaf = ?1", [k])
                .unwrap();
            format!("deleted versions row {k}")
        }
        4 => {
            let k = pick(rng, "ledger_leaves", "idx");
            c.execute("DELETE FROM ledger_leaves WHERE idx = ?1", [k])
                .unwrap();
            format!("deleted leaf {k}")
        }
        5 => {
            let a = pick(rng, "ledger_leaves", "idx");
            let mut b = pick(rng, "ledger_leaves", "idx");
            while b == a {
                b = pick(rng, "ledger_leaves", "idx");
            }
            let get = |k: i64| -> Vec<u8> {
                c.query_row("SELECT entry FROM ledger_leaves WHERE idx = ?1", [k], |r| {
                    r.get(0)
                })
                .unwrap()
            };
            let (ea, eb) = (get(a), get(b));
            if ea == eb {
                return tamper_rows(db, 1, rng);
            }
            c.execute(
                "UPDATE ledger_leaves SET entry = ?1 WHERE idx = ?2",
                rusqlite::params![eb, a],
            )
            .unwrap();
            c.execute(
                "UPDATE ledger_leaves SET entry = ?1 WHERE idx = ?2",
                rusqlite::params![ea, b],
            )
            .unwrap();
            format!("swapped leaves {a} and {b}")
        }
        6 => {
            let k = pick(rng, "ledger_audit", "leaf");
            if rng.below(2) == 0 {
                c.execute("DELETE FROM ledger_audit WHERE leaf = ?1", [k])
                    .unwrap();
                format!("deleted the audit detail of leaf {k}")
            } else {
                flip(rng, "ledger_audit", "detail", "leaf", k);
                format!("flipped a bit of the audit detail of leaf {k}")
            }
        }
        _ => {
            // Only the tile levels (8, 16, …) are stored; a log of fewer than 256 leaves has no
            // node to tamper with, so flip a leaf instead.
            let stored: i64 = c
                .query_row(
                    "SELECT count(*) FROM ledger_nodes WHERE level = 8",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            if stored == 0 {
                // (The records log here is too short for any stored node.)
                return tamper_rows(db, 1, rng);
            }
            let level = 8;
            let k = pick(rng, &format!("ledger_nodes WHERE level = {level}"), "idx");
            let mut h: Vec<u8> = c
                .query_row(
                    "SELECT hash FROM ledger_nodes WHERE level = ?1 AND idx = ?2",
                    rusqlite::params![level as i64, k],
                    |r| r.get(0),
                )
                .unwrap();
            h[rng.below(32) as usize] ^= 1;
            c.execute(
                "UPDATE ledger_nodes SET hash = ?1 WHERE level = ?2 AND idx = ?3",
                rusqlite::params![h, level as i64, k],
            )
            .unwrap();
            format!("flipped a bit of tree node level {level} index {k}")
        }
    }
}

#[test]
fn ledger_verify_catches_every_tampering() {
    let mut s = MEDVAULT.start();
    let work = |s: &Server, n: usize| {
        for i in 0..n {
            let (id, _) = s.create_and_read(&patient(&format!("Tamperfam{i}"), "Bo"));
            if i % 2 == 0 {
                let (st, _) = s.delete(&format!("Patient/{id}"));
                assert_eq!(st, 200);
            }
        }
    };
    work(&s, 4);
    s.stop();
    let env = s.env_pairs();
    // An earlier copy of the directory, for the rollback tamperings; then more work.
    let scratch = tempfile::tempdir().unwrap();
    let old = scratch.path().join("old");
    copy_dir(&s.dir, &old);
    let mut again = MEDVAULT.start_in(&s.dir, &env);
    work(&again, 3);
    // Past 256 access-log leaves, so the first stored tree node (level 8) exists to tamper with.
    for _ in 0..260 {
        assert_eq!(again.get("metadata").0, 200);
    }
    again.stop();
    let (ok, out, err) = s.run(&["ledger", "verify"]);
    assert!(ok, "honest directory must verify: {out} {err}");
    assert!(out.contains("records log 11 leaves"), "{out}");

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let rounds = 40;
    let mut caught = 0;
    for round in 0..rounds {
        let copy = scratch.path().join(format!("r{round}"));
        copy_dir(&s.dir, &copy);
        let did = tamper(&copy, &old, round % TAMPERINGS, &mut rng);
        let (ok, out, err) = MEDVAULT.cli(
            &["ledger", "verify", "--data-dir", copy.to_str().unwrap()],
            &env,
        );
        assert!(!ok, "seed {seed}: not detected: {did}; verify said: {out}");
        assert!(
            err.starts_with("medvault: error: ledger verification failed:"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one plain line: {err}");
        caught += 1;
    }
    assert_eq!(caught, rounds);
}

#[test]
fn auditors_read_the_trail_as_audit_events() {
    let s = MEDVAULT.start();
    let (id, _) = s.create_and_read(&patient("Auditfam", "Eve"));
    // An access to another resource in the patient's compartment is attributed to the patient.
    let obs = s.create(&observation(&id, "8867-4", "2026-01-02"));
    let auditor = s.new_token("auditor");
    // A token's id is the first 8 bytes of its SHA-256, in hex.
    let auditor_id = format!(
        "tok_{}",
        hex_prefix(&medvault_crypto::sha256(auditor.as_bytes()))
    );
    let as_auditor = |path: &str| s.get_as(&format!("/fhir/{path}"), &auditor, None);
    // The auditor reads nothing but the trail; the refusal is itself in the trail.
    let (st, _) = as_auditor(&format!("Patient/{id}"));
    assert_eq!(st, 403);
    let (st, b) = as_auditor(&format!("AuditEvent?patient={id}"));
    assert_eq!(st, 200, "{b}");
    let events: Vec<&Value> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let codes: Vec<&str> = events
        .iter()
        .map(|e| e["subtype"][0]["code"].as_str().unwrap_or(""))
        .collect();
    // Newest first: the auditor's refused read, the Observation's create (attributed to the
    // patient whose compartment it is in), the admin's read, the admin's create.
    assert_eq!(codes, vec!["read", "create", "read", "create"], "{b}");
    assert_eq!(events[0]["outcome"], "4");
    assert_eq!(
        events[0]["agent"][0]["who"]["identifier"]["value"],
        auditor_id.as_str()
    );
    assert_eq!(
        events[1]["entity"][0]["what"]["reference"],
        format!("Observation/{obs}")
    );
    assert_eq!(
        events[1]["entity"][1]["what"]["reference"],
        format!("Patient/{id}")
    );
    assert_eq!(events[3]["action"], "C");
    for e in [events[0], events[2], events[3]] {
        assert_eq!(e["resourceType"], "AuditEvent");
        assert_eq!(e["entity"][0]["what"]["reference"], format!("Patient/{id}"));
    }
    // Filters: outcome, agent, date; every event reads back by id.
    let (_, b) = as_auditor(&format!("AuditEvent?patient={id}&outcome=0"));
    assert_eq!(b["entry"].as_array().unwrap().len(), 3);
    let (_, b) = as_auditor(&format!("AuditEvent?agent={auditor_id}&_count=500"));
    assert!(b["entry"].as_array().unwrap().len() >= 2); // the 403 and the searches
    let (_, b) = as_auditor(&format!("AuditEvent?patient={id}&date=lt2000-01-01"));
    assert_eq!(b["entry"].as_array().unwrap().len(), 0);
    let (_, b) = as_auditor(&format!(
        "AuditEvent?patient={id}&date=ge2000-01-01&_count=1"
    ));
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    let next = b["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap();
    assert!(next["url"].as_str().unwrap().contains("_before="));
    let ev_id = events[2]["id"].as_str().unwrap();
    let (st, one) = as_auditor(&format!("AuditEvent/{ev_id}"));
    assert_eq!((st, &one["id"]), (200, &events[2]["id"]));
    assert_eq!(as_auditor("AuditEvent/ledger-999999").0, 404);
    assert_eq!(as_auditor("AuditEvent?family=x").0, 400);
    assert_eq!(as_auditor("AuditEvent?outcome=3").0, 400);
    // Writes are not possible, for anyone.
    let (st, _) = s.post(
        "AuditEvent",
        &serde_json::json!({"resourceType": "AuditEvent"}),
    );
    assert_eq!(st, 405);
}

fn hex_prefix(h: &[u8]) -> String {
    h[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every checkpoint carries an ML-DSA-44 cosignature per C2SP `tlog-cosignature`: checked here
/// against the spec's byte layout built independently of medvault's own code, and `ledger
/// verify` refuses a checkpoint without it.
#[test]
fn checkpoints_carry_a_post_quantum_cosignature() {
    let mut s = MEDVAULT.start();
    s.create(&patient("Pqfamily", "Ann"));
    let cp = s.checkpoint_covering("records", 1);
    let (ok, out, err) = s.run(&["ledger", "keys"]);
    assert!(ok, "{err}");
    let vkey = out
        .lines()
        .find_map(|l| l.strip_prefix("ML-DSA-44 cosigner key (on both logs' checkpoints): "))
        .unwrap();
    // vkey: name + key id + base64(0x06 || 1312-byte key).
    let mut parts = vkey.splitn(3, '+');
    let (name, id, key) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        B64.decode(parts.next().unwrap()).unwrap(),
    );
    assert_eq!(key[0], 0x06);
    let public = &key[1..];
    assert_eq!(public.len(), 1312);
    let mut id_input = format!("{name}\n").into_bytes();
    id_input.push(0x06);
    id_input.extend_from_slice(public);
    let key_id = &medvault_crypto::sha256(&id_input)[..4];
    let hexed: String = key_id.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id, hexed);

    for log in ["records", "access"] {
        let (_, body) = s.raw_get(&format!("/ledger/{log}/checkpoint"));
        let note = std::str::from_utf8(&body).unwrap();
        let (body_text, sigs) = note.split_once("\n\n").unwrap();
        let text_part = format!("{body_text}\n");
        let line = sigs
            .lines()
            .find(|l| l.starts_with(&format!("\u{2014} {name} ")))
            .unwrap_or_else(|| panic!("no ML-DSA-44 line on the {log} checkpoint"));
        let raw = B64.decode(line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(&raw[..4], key_id);
        let (ts, sig) = raw[4..].split_at(8);
        assert_eq!(sig.len(), 2420);
        let parsed = Checkpoint::parse(&text_part).unwrap();
        // struct cosigned_message { "subtree/v1\n\0"; name<1..255>; u64 timestamp;
        //   origin<1..255>; u64 start; u64 end; hash[32] }
        let mut msg = b"subtree/v1\n\0".to_vec();
        msg.push(u8::try_from(name.len()).unwrap());
        msg.extend_from_slice(name.as_bytes());
        msg.extend_from_slice(ts);
        msg.push(u8::try_from(parsed.origin.len()).unwrap());
        msg.extend_from_slice(parsed.origin.as_bytes());
        msg.extend_from_slice(&0u64.to_be_bytes());
        msg.extend_from_slice(&parsed.size.to_be_bytes());
        msg.extend_from_slice(&parsed.root);
        assert!(
            medvault_crypto::ml_dsa_44_verify(public, &msg, sig),
            "{log}: the ML-DSA-44 cosignature verifies against the spec's message"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let t = u64::from_be_bytes(ts.try_into().unwrap());
        assert!(t <= now && t + 120 > now, "a current timestamp: {t}");
    }
    let _ = cp;

    // A checkpoint stripped of its ML-DSA-44 line does not pass `ledger verify`.
    s.stop();
    let db = s.dir.join("medvault.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        let (size, note): (i64, String) = c
            .query_row(
                "SELECT size, note FROM ledger_checkpoints ORDER BY size DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let stripped: String = note
            .lines()
            .filter(|l| !l.starts_with(&format!("\u{2014} {name} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(stripped, note);
        c.execute(
            "UPDATE ledger_checkpoints SET note = ?1 WHERE size = ?2",
            rusqlite::params![stripped, size],
        )
        .unwrap();
    }
    let (ok, _, err) = s.run(&["ledger", "verify"]);
    assert!(!ok && err.contains("ML-DSA-44"), "{err}");
}

/// The number after `label` in `text` (`"… covers 12, …"`).
fn number_after(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text}"))
        + label.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn old_audit_details_move_to_an_archive_that_verify_checks() {
    let mut s = MEDVAULT.start();
    for i in 0..12 {
        s.create_and_read(&patient(&format!("Archfam{i}"), "Al"));
    }
    s.stop();
    let out = s.verify_ledger();
    let access = &out[out.find("access log").unwrap()..];
    let signed = number_after(access, "newest signed checkpoint covers ");
    assert!(signed > 20, "{out}");
    let before = signed - 2;
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("access-0.mvarchive");
    let file_s = file.to_str().unwrap();
    let before_s = before.to_string();

    // Past the newest signed checkpoint is refused, and nothing is written.
    let past = (signed + 1).to_string();
    let (ok, _, err) = s.run(&["ledger", "archive", "--before", &past, "--out", file_s]);
    assert!(
        !ok && err.contains("past the newest signed checkpoint"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!file.exists());

    let (ok, out, err) = s.run(&["ledger", "archive", "--before", &before_s, "--out", file_s]);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!("access-log leaves 0..{before}")),
        "{out}"
    );
    // The details are gone from the database; the leaves are not.
    let db = rusqlite::Connection::open(s.dir.join("access.db")).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM ledger_audit WHERE leaf < {before}"
        )),
        0
    );
    assert!(count("SELECT count(*) FROM ledger_leaves") as u64 > before);
    drop(db);

    // verify counts them as archived; with the file it checks each one.
    let out = s.verify_ledger();
    assert!(out.contains(&format!("({before} more archived)")), "{out}");
    let (ok, out, err) = s.run(&["ledger", "verify", "--archive", file_s]);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!(
            "archives verified: {before} archived audit details"
        )),
        "{out}"
    );
    assert!(out.contains("cover 1 of the 1 archive runs"), "{out}");
    // Archiving the same range again is refused; the archive is never overwritten.
    let (ok, _, err) = s.run(&["ledger", "archive", "--before", &before_s, "--out", file_s]);
    assert!(!ok && err.contains("archived already"), "{err}");

    // A damaged archive is refused in one plain line.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    let damaged = scratch.path().join("damaged.mvarchive");
    std::fs::write(&damaged, &bytes).unwrap();
    let (ok, _, err) = s.run(&["ledger", "verify", "--archive", damaged.to_str().unwrap()]);
    assert!(!ok, "damaged archive accepted");
    assert!(
        err.starts_with("medvault: error: ledger verification failed:"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // Moving the mark past the archive (deleting more details) is caught: no archive record
    // of the log's own names that range.
    let copy = scratch.path().join("moved");
    copy_dir(&s.dir, &copy);
    let db = rusqlite::Connection::open(copy.join("access.db")).unwrap();
    let further = before + 2;
    db.execute(
        "UPDATE meta SET v = ?1 WHERE k = 'access_archived_before'",
        [further.to_string()],
    )
    .unwrap();
    db.execute(
        "DELETE FROM ledger_audit WHERE leaf < ?1",
        [i64::try_from(further).unwrap()],
    )
    .unwrap();
    drop(db);
    let (ok, out, err) = MEDVAULT.cli(
        &["ledger", "verify", "--data-dir", copy.to_str().unwrap()],
        &s.env_pairs(),
    );
    assert!(!ok, "moved archive mark accepted: {out}");
    assert!(err.contains("no archive record"), "{err}");

    // Nor can a later, honest archive run launder such a deletion: it refuses to start from a
    // mark no archive record names, and removes nothing. Likewise for an absurd mark.
    for mark in [further, u64::MAX] {
        let db = rusqlite::Connection::open(copy.join("access.db")).unwrap();
        db.execute(
            "UPDATE meta SET v = ?1 WHERE k = 'access_archived_before'",
            [mark.to_string()],
        )
        .unwrap();
        let rows = |db: &rusqlite::Connection| -> i64 {
            db.query_row("SELECT count(*) FROM ledger_audit", [], |r| r.get(0))
                .unwrap()
        };
        let kept = rows(&db);
        drop(db);
        let laundered = scratch.path().join(format!("laundered-{mark}.mvarchive"));
        let (ok, _, err) = MEDVAULT.cli(
            &[
                "ledger",
                "archive",
                "--data-dir",
                copy.to_str().unwrap(),
                "--before",
                &(further + 4).to_string(),
                "--out",
                laundered.to_str().unwrap(),
            ],
            &s.env_pairs(),
        );
        assert!(!ok && err.contains("no archive record"), "{err}");
        assert!(!laundered.exists());
        let db = rusqlite::Connection::open(copy.join("access.db")).unwrap();
        assert_eq!(rows(&db), kept, "rows removed by a refused archive");
    }

    // A second run continues the chain; verify checks both files against it.
    let mut again = MEDVAULT.start_in(&s.dir, &s.env_pairs());
    for i in 0..5 {
        again.create_and_read(&patient(&format!("Archmore{i}"), "Al"));
    }
    again.stop();
    let out = s.verify_ledger();
    let access = &out[out.find("access log").unwrap()..];
    let signed = number_after(access, "newest signed checkpoint covers ");
    let second = scratch.path().join("access-1.mvarchive");
    let (ok, out, err) = s.run(&[
        "ledger",
        "archive",
        "--before",
        &signed.to_string(),
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(ok, "{out} {err}");
    assert!(
        out.contains(&format!("access-log leaves {before}..{signed}")),
        "{out}"
    );
    let (ok, out, err) = s.run(&[
        "ledger",
        "verify",
        "--archive",
        file_s,
        "--archive",
        second.to_str().unwrap(),
    ]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("cover 2 of the 2 archive runs"), "{out}");
    assert!(
        out.contains(&format!(
            "archives verified: {signed} archived audit details"
        )),
        "{out}"
    );

    // The node serves on, and the archives are themselves in the access log.
    let again = MEDVAULT.start_in(&s.dir, &s.env_pairs());
    let (st, bundle) = again.get("AuditEvent?_count=50");
    assert_eq!(st, 200, "{bundle}");
    let text = bundle.to_string();
    assert!(text.contains("ledger-archive"), "{text}");
}
