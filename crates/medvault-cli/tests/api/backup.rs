//! `medvault backup` and `medvault restore` on the embedded default (issue 6). The PostgreSQL
//! directions (migrate, backup from and restore into PostgreSQL) are in `postgres.rs`.

use medvault_testkit::Server;
use medvault_testkit::e2e::path_str as arg;
use medvault_testkit::fhir::{observation, patient};
use serde_json::json;

use crate::MEDVAULT;

/// A node with people, records of two patients, an erased third and a few requests.
pub(crate) fn populated(s: &Server) -> (String, String) {
    let p1 = s.create(&patient("Backupfamily", "Ann"));
    let p2 = s.create(&patient("Otherfamily", "Bo"));
    s.create(&observation(&p1, "2345-7", "2026-01-02"));
    s.create(&observation(&p2, "2345-7", "2026-01-03"));
    let erased = s.create(&patient("Erasedfamily", "Cy"));
    let (ok, out, err) = s.run(&["patient", "erase", &erased]);
    assert!(ok, "{out} {err}");
    let (status, _) = s.put(
        &format!("Patient/{p1}"),
        &json!({"resourceType": "Patient", "id": p1, "name": [{"family": "Backupfamily", "given": ["Ann", "B"]}]}),
    );
    assert_eq!(status, 200);
    (p1, p2)
}

/// Reads that must give the same answers on the original and on a restored copy.
pub(crate) fn answers(s: &Server, p1: &str) -> Vec<String> {
    [
        format!("Patient/{p1}"),
        format!("Patient/{p1}/_history"),
        "Patient?family=backupfamily".to_owned(),
        "Observation?code=2345-7&_summary=count".to_owned(),
    ]
    .iter()
    .map(|path| {
        let (status, mut v) = s.get(path);
        assert_eq!(status, 200, "{path}: {v}");
        // Links name the server's port; the resources and totals must agree.
        v.as_object_mut().map(|o| o.remove("link"));
        if let Some(entries) = v["entry"].as_array_mut() {
            for e in entries {
                e.as_object_mut().map(|o| o.remove("fullUrl"));
            }
        }
        v.to_string()
    })
    .collect()
}

#[test]
fn a_backup_restores_into_a_working_node_and_refuses_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = MEDVAULT.start_in(&tmp.path().join("node"), &[]);
    let (p1, _) = populated(&s);
    let before = answers(&s, &p1);
    let file = tmp.path().join("node.mvbk");
    let dir = s.dir.clone();

    // Taken while the node serves.
    let (ok, out, err) = s.run(&["backup", "--out", arg(&file)]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("holds no root key"), "{out}");
    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    for plain in ["Backupfamily", "Otherfamily", "Erasedfamily", "2345-7"] {
        assert!(!text.contains(plain), "plaintext {plain:?} in the backup");
    }
    // The key file's secret never goes into a backup.
    let key: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("medvault.key")).unwrap()).unwrap();
    for (_, v) in key.as_object().unwrap() {
        if let Some(secret) = v.as_str().filter(|v| v.len() >= 32) {
            assert!(!text.contains(secret), "key file content in the backup");
        }
    }
    let (ok, _, err) = s.run(&["backup", "--out", arg(&file)]);
    assert!(!ok && err.contains("--force"), "{err}");
    s.stop();

    // Restored into a new data directory holding only the key file.
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    let (ok, _, err) = MEDVAULT.cli(&["restore", "--data-dir", arg(&restored), arg(&file)], &[]);
    assert!(!ok && err.contains("key file"), "no key file: {err}");
    assert!(!restored.join("medvault.db").exists());
    std::fs::copy(dir.join("medvault.key"), restored.join("medvault.key")).unwrap();

    // Damage of any kind is refused before anything is loaded.
    let lines: Vec<&str> = text.lines().collect();
    let tampered = tmp.path().join("tampered.mvbk");
    let mut changed = lines.clone();
    let row = changed
        .iter()
        .position(|l| l.contains(r#""versions",["Patient""#))
        .unwrap();
    let edited = changed[row].replacen("\"Patient\"", "\"Patienz\"", 1);
    changed[row] = &edited;
    std::fs::write(&tampered, changed.join("\n") + "\n").unwrap();
    let cut = tmp.path().join("cut.mvbk");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let garbage = tmp.path().join("garbage.mvbk");
    std::fs::write(&garbage, b"\x00\x01 not a backup").unwrap();
    let no_end = tmp.path().join("noend.mvbk");
    std::fs::write(&no_end, lines[..lines.len() - 1].join("\n") + "\n").unwrap();
    for (bad, why, says) in [
        (&tampered, "edited", "does not verify with the key file"),
        (&cut, "cut", "not a complete medvault backup"),
        (&garbage, "header", "not a complete medvault backup"),
        (&no_end, "end marker", "not a complete medvault backup"),
    ] {
        let (ok, out, err) =
            MEDVAULT.cli(&["restore", "--data-dir", arg(&restored), arg(bad)], &[]);
        assert!(!ok, "{why}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(says), "{why}: {err}");
        assert!(
            !restored.join("medvault.db").exists(),
            "{why}: nothing loaded"
        );
    }

    let (ok, out, err) = MEDVAULT.cli(&["restore", "--data-dir", arg(&restored), arg(&file)], &[]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("ledger verified"), "{out}");
    let (ok, _, err) = MEDVAULT.cli(&["restore", "--data-dir", arg(&restored), arg(&file)], &[]);
    assert!(!ok && err.contains("--force"), "a node is there now: {err}");

    let copy = MEDVAULT.start_in(&restored, &[]);
    assert_eq!(
        answers(&copy, &p1),
        before,
        "the copy answers as the original did"
    );
    copy.create(&patient("After", "Restore"));
    copy.verify_ledger();

    drop(copy);

    // A load that died part-way leaves the marker set, and nothing opens the node until it
    // is done again.
    {
        let db = rusqlite::Connection::open(restored.join("medvault.db")).unwrap();
        let marker: String = db
            .query_row("SELECT v FROM meta WHERE k = 'transfer'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(marker, "complete");
        db.execute("UPDATE meta SET v = 'incomplete' WHERE k = 'transfer'", [])
            .unwrap();
    }
    let (ok, _, err) = MEDVAULT.cli(&["ledger", "verify", "--data-dir", arg(&restored)], &[]);
    assert!(!ok && err.contains("unfinished restore"), "{err}");
    let (ok, out, err) = MEDVAULT.cli(
        &[
            "restore",
            "--data-dir",
            arg(&restored),
            arg(&file),
            "--force",
        ],
        &[],
    );
    assert!(ok, "restored again over it: {out} {err}");

    // Another node's key file does not open the backup.
    let other = tempfile::tempdir().unwrap();
    let stranger = MEDVAULT.start_in(&other.path().join("n"), &[]);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(
        stranger.dir.join("medvault.key"),
        elsewhere.join("medvault.key"),
    )
    .unwrap();
    let (ok, _, err) = MEDVAULT.cli(&["restore", "--data-dir", arg(&elsewhere), arg(&file)], &[]);
    assert!(!ok && err.contains("another node"), "{err}");
    assert!(!elsewhere.join("medvault.db").exists());
}
