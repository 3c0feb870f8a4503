use std::collections::HashSet;

use serde_json::json;

use medvault_testkit::fhir::{assert_outcome, ids, observation, patient};

use crate::MEDVAULT;

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_plaintext_phi_in_any_file_or_the_log() {
    let s = MEDVAULT.start();
    let canaries = [
        "Zqxcanaryfamily",
        "Wvbcanarygiven",
        "CANARY-MRN-7731",
        "canary clinical note 5521",
        "Canary Street 99",
        "zqxcanaryuser",
        "canary passphrase 8842 violet",
    ];
    let mut p = patient(canaries[0], canaries[1]);
    p["identifier"] = json!([{"system": "urn:mrn", "value": canaries[2]}]);
    p["address"] = json!([{"line": [canaries[4]]}]);
    let pid = s.create(&p);
    let mut obs = observation(&pid, "2345-7", "2024-01-01");
    obs["note"] = json!([{"text": canaries[3]}]);
    let oid = s.create(&obs);
    // Update and search with the canaries too (search values must not reach the log either).
    let mut p2 = s.get(&format!("Patient/{pid}")).1;
    p2["name"][0]["given"] = json!([canaries[1], "Second"]);
    assert_eq!(s.put(&format!("Patient/{pid}"), &p2).0, 200);
    assert_eq!(
        ids(&s.get(&format!("Patient?family={}", canaries[0])).1),
        vec![pid.clone()]
    );
    assert_eq!(
        ids(&s
            .get(&format!("Patient?identifier=urn:mrn|{}", canaries[2]))
            .1),
        vec![pid.clone()]
    );
    assert_eq!(s.get(&format!("Observation/{oid}")).0, 200);
    // A person's user name and password: neither may be stored or logged in the clear, also
    // not by a failed login.
    let (ok, _, err) = s.try_create_user(canaries[5], "nurse", canaries[6], &[]);
    assert!(ok, "{err}");
    for password in [canaries[6], "canary wrong password 1"] {
        let (status, _) = s.login(canaries[5], password, &json!({}));
        assert!(status == 200 || status == 401, "{status}");
    }
    // An invalid write carrying a canary: the error must not echo it into the log.
    let (st, _) = s.post(
        "Patient",
        &json!({"resourceType": "Patient", "gender": canaries[0]}),
    );
    assert_eq!(st, 400);
    let dir = s.dir.clone();
    // Scan while the server runs (the WAL holds the recent writes) and again after it stopped
    // (the WAL was folded into the database file).
    let live = scan_for_canaries(&dir, &canaries);
    assert!(
        live.contains("medvault.db-wal"),
        "the WAL was scanned: {live:?}"
    );
    let mut s = s;
    let log = s.stop();
    assert!(
        log.contains("\"status\":201"),
        "the log is being written: {log}"
    );
    let stopped = scan_for_canaries(&dir, &canaries);
    assert!(
        stopped.contains("medvault.db") && stopped.contains("medvault.key"),
        "{stopped:?}"
    );
    for c in canaries {
        assert!(
            !log.contains(c) && !log.to_lowercase().contains(&c.to_lowercase()),
            "{c} found in the server log"
        );
    }
}

/// Asserts that no canary (as written, lower-cased, or without spaces) appears in any file under
/// `dir`; returns the names of the files scanned.
fn scan_for_canaries(dir: &std::path::Path, canaries: &[&str]) -> HashSet<String> {
    let mut names = HashSet::new();
    for f in files_under(dir) {
        let bytes = std::fs::read(&f).unwrap();
        for c in canaries {
            for variant in [(*c).to_owned(), c.to_lowercase(), crate_normal(c)] {
                assert!(
                    !contains(&bytes, variant.as_bytes()),
                    "{variant} found in {}",
                    f.display()
                );
            }
        }
        names.insert(f.file_name().unwrap().to_string_lossy().into_owned());
    }
    names
}

fn crate_normal(c: &str) -> String {
    c.to_lowercase().replace(' ', "")
}

#[test]
fn erase_crypto_shreds_one_patient_only() {
    let s = MEDVAULT.start();
    let [gone, kept] = s.create_patients([("Forget", "Me"), ("Keep", "Me")]);
    let o_gone = s.create(&observation(&gone, "2345-7", "2024-01-01"));
    let o_kept = s.create(&observation(&kept, "2345-7", "2024-01-01"));
    let mut upd = s.get(&format!("Patient/{gone}")).1;
    upd["gender"] = json!("other");
    assert_eq!(s.put(&format!("Patient/{gone}"), &upd).0, 200);

    let (ok, out, err) = s.run(&["patient", "erase", &gone]);
    assert!(ok, "{err}");
    assert!(out.contains("2 resource(s)"), "{out}");
    // Every version of every resource in the compartment answers 410, also on the running server.
    for path in [
        format!("Patient/{gone}"),
        format!("Patient/{gone}/_history/1"),
        format!("Patient/{gone}/_history/2"),
        format!("Observation/{o_gone}"),
        format!("Patient/{gone}/_history"),
    ] {
        let (st, v) = s.get(&path);
        assert_eq!(st, 410, "{path}: {v}");
        assert_outcome(&v);
    }
    assert_eq!(ids(&s.get("Patient?family=forget").1), Vec::<String>::new());
    assert_eq!(
        ids(&s.get("Observation?code=2345-7").1),
        vec![o_kept.clone()]
    );
    // Writing into an erased compartment is refused.
    assert_eq!(
        s.post("Observation", &observation(&gone, "1-1", "2024-01-01"))
            .0,
        410
    );
    // The other patient is untouched.
    assert_eq!(s.get(&format!("Patient/{kept}")).0, 200);
    assert_eq!(s.get(&format!("Observation/{o_kept}")).0, 200);
    // Erasing again is harmless; unknown patients are a clear error.
    let (ok, out, _) = s.run(&["patient", "erase", &gone]);
    assert!(ok && out.contains("already erased"));
    let (ok, _, err) = s.run(&["patient", "erase", "nobody"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Still erased after a restart.
    let dir = s.dir.clone();
    let mut s = s;
    s.stop();
    let s2 = MEDVAULT.start_in(&dir, &[]);
    assert_eq!(s2.get(&format!("Patient/{gone}")).0, 410);
    assert_eq!(s2.get(&format!("Patient/{kept}")).0, 200);
}

#[test]
fn key_rotation_keeps_records_readable() {
    let s = MEDVAULT.start();
    let mut created = Vec::new();
    for i in 0..20 {
        let p = s.create(&patient("Rotate", &format!("P{i}")));
        created.push(format!("Patient/{p}"));
        created.push(format!(
            "Observation/{}",
            s.create(&observation(&p, "1-1", "2024-01-01"))
        ));
    }
    // Rotate while the server keeps serving reads and writes.
    let dir = s.dir.to_str().unwrap().to_owned();
    let rotation =
        std::thread::spawn(move || MEDVAULT.cli(&["keys", "rotate", "--data-dir", &dir], &[]));
    for path in &created {
        assert_eq!(s.get(path).0, 200, "{path} during rotation");
    }
    let during = s.create(&patient("During", "Rotation"));
    let (ok, out, err) = rotation.join().unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("KEK v2"), "{out}");
    let (ok, out, _) = s.run(&["keys", "rotate"]);
    assert!(ok && out.contains("KEK v3"), "{out}");
    let after = s.create(&patient("After", "Rotation"));
    let dir = s.dir.clone();
    let mut s = s;
    s.stop();
    let s2 = MEDVAULT.start_in(&dir, &[]);
    for path in created
        .iter()
        .chain([&format!("Patient/{during}"), &format!("Patient/{after}")])
    {
        assert_eq!(s2.get(path).0, 200, "{path} after restart");
    }
    assert_eq!(
        s2.get("Patient?family=rotate").1["total"],
        20,
        "blind indexes survive rotation"
    );
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut s = MEDVAULT.start();
    let acked = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (s, acked) = (&s, &acked);
            scope.spawn(move || {
                for i in 0..25 {
                    let (st, v) = s.post("Patient", &patient("Durable", &format!("T{t}N{i}")));
                    assert_eq!(st, 201);
                    acked
                        .lock()
                        .unwrap()
                        .push(v["id"].as_str().unwrap().to_owned());
                }
            });
        }
    });
    s.kill9();
    let dir = s.dir.clone();
    let s2 = MEDVAULT.start_in(&dir, &[]);
    let acked = acked.into_inner().unwrap();
    assert_eq!(acked.len(), 200);
    for id in &acked {
        assert_eq!(s2.get(&format!("Patient/{id}")).0, 200, "{id} lost");
    }
    assert_eq!(
        s2.get("Patient?family=durable&_summary=count").1["total"],
        200
    );
}

#[test]
fn key_file_permissions_and_passphrase() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sealed");
    let pass = [("MEDVAULT_PASSPHRASE", "correct horse battery staple")];
    let s = MEDVAULT.start_in(&dir, &pass);
    let id = s.create(&patient("Sealed", "Key"));
    let mut s = s;
    s.stop();
    assert_eq!(
        std::fs::metadata(dir.join("medvault.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let key_file = std::fs::read_to_string(dir.join("medvault.key")).unwrap();
    assert!(key_file.contains("argon2id"));
    // Without or with the wrong passphrase: one clear line naming the fix, non-zero exit.
    for env in [vec![], vec![("MEDVAULT_PASSPHRASE", "wrong")]] {
        let (ok, _, err) = MEDVAULT.token_create(&dir, &env);
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("MEDVAULT_PASSPHRASE"), "{err}");
    }
    let s = MEDVAULT.start_in(&dir, &pass);
    assert_eq!(s.get(&format!("Patient/{id}")).0, 200);
    // Without a passphrase: a warning on first start and a 0600 file.
    let plain = tmp.path().join("plain");
    let (ok, out, err) = MEDVAULT.token_create(&plain, &[]);
    assert!(ok && out.trim().starts_with("mvt_") && out.trim().lines().count() == 1);
    assert!(
        err.contains("warning") && err.contains("MEDVAULT_PASSPHRASE"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(plain.join("medvault.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let (_, _, err2) = MEDVAULT.token_create(&plain, &[]);
    assert!(
        !err2.contains("warning"),
        "the warning is printed once, at creation"
    );
}

#[test]
fn a_ciphertext_moved_to_another_row_does_not_open() {
    let s = MEDVAULT.start();
    let a = s.create(&patient("Alpha", "A"));
    let b = s.create(&patient("Beta", "B"));
    let dir = s.dir.clone();
    let mut s = s;
    s.stop();
    {
        let db = rusqlite::Connection::open(dir.join("medvault.db")).unwrap();
        let body_a: Vec<u8> = db
            .query_row("SELECT body FROM versions WHERE id = ?1", [&a], |r| {
                r.get(0)
            })
            .unwrap();
        db.execute(
            "UPDATE versions SET body = ?1 WHERE id = ?2",
            rusqlite::params![body_a, b],
        )
        .unwrap();
    }
    let s2 = MEDVAULT.start_in(&dir, &[]);
    let s = &s2;
    assert_eq!(s.get(&format!("Patient/{a}")).0, 200);
    let (st, v) = s.get(&format!("Patient/{b}"));
    assert_eq!(st, 500, "{v}");
    assert_outcome(&v);
    assert!(!v.to_string().contains("Alpha"));
}
