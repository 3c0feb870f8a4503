//! Sealed sharing between two nodes on loopback (issue 7): `$share` over mutual TLS, the
//! offline file form, and everything a receiver must refuse (recorded, nothing imported).

use std::path::{Path, PathBuf};

use medvault_testkit::e2e::{free_port, send};
use medvault_testkit::fhir::{consent, observation, participation, patient};
use medvault_testkit::postgres::Scratch;
use medvault_testkit::{Server, open_node};
use serde_json::{Value, json};

use crate::MEDVAULT;

/// A node serving the API and a peer listener.
struct Peer {
    s: Server,
    peer_port: u16,
    doc: Value,
    doc_file: PathBuf,
}

impl Peer {
    fn start() -> Self {
        let peer_port = free_port();
        let s = MEDVAULT.start_with(&["--peer-listen", &format!("127.0.0.1:{peer_port}")]);
        Self::around(s, peer_port)
    }

    /// A node on PostgreSQL (`url`), its data directory (key file) under `root`.
    fn on_postgres(root: &Path, name: &str, url: &str) -> Self {
        let peer_port = free_port();
        let s = MEDVAULT.launch(
            &root.join(name),
            &[("MEDVAULT_DATABASE", url)],
            &["--peer-listen", &format!("127.0.0.1:{peer_port}")],
        );
        Self::around(s, peer_port)
    }

    fn around(s: Server, peer_port: u16) -> Self {
        let (status, body) = s.raw_get("/.well-known/medvault-node");
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let doc_file = s.dir.with_extension("node.json");
        std::fs::write(&doc_file, &body).unwrap();
        Self {
            s,
            peer_port,
            doc,
            doc_file,
        }
    }

    fn node(&self) -> &str {
        self.doc["node"].as_str().unwrap()
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.s.run(args)
    }

    /// Two nodes that registered each other.
    fn pair() -> (Self, Self) {
        let (a, b) = (Self::start(), Self::start());
        a.register(&b);
        b.register(&a);
        (a, b)
    }

    /// Registers `other` here, with the fingerprint as its document states it.
    fn register(&self, other: &Peer) {
        self.register_with(other, &[]);
    }

    fn register_with(&self, other: &Peer, extra: &[&str]) {
        let (ok, out, err) = self.try_register(other, extra);
        assert!(ok && out.contains("registered peer"), "{out} {err}");
    }

    /// `medvault peer add` of `other`'s listener, document and fingerprint, and `extra`.
    fn try_register(&self, other: &Peer, extra: &[&str]) -> (bool, String, String) {
        let url = format!("https://127.0.0.1:{}", other.peer_port);
        let mut args = vec![
            "peer",
            "add",
            "--url",
            &url,
            "--document",
            other.doc_file.to_str().unwrap(),
            "--fingerprint",
            other.doc["fingerprint"].as_str().unwrap(),
        ];
        args.extend(extra);
        self.cli(&args)
    }

    /// `medvault share export --patient … --to … --out … [extra]`.
    fn export(
        &self,
        patient: &str,
        to: &str,
        out: &Path,
        extra: &[&str],
    ) -> (bool, String, String) {
        let mut args = vec![
            "share",
            "export",
            "--patient",
            patient,
            "--to",
            to,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        self.cli(&args)
    }

    /// `medvault share import FILE [--receipt R]`.
    fn import(&self, file: &Path, receipt: Option<&Path>) -> (bool, String, String) {
        let mut args = vec!["share", "import", file.to_str().unwrap()];
        if let Some(r) = receipt {
            args.extend(["--receipt", r.to_str().unwrap()]);
        }
        self.cli(&args)
    }

    fn share(&self, patient: &str, to: &str) -> (u16, Value) {
        self.s.post(
            &format!("Patient/{patient}/$share"),
            &json!({"resourceType": "Parameters", "parameter": [
                {"name": "recipient", "valueString": to},
                {"name": "purpose", "valueCode": "TREAT"},
            ]}),
        )
    }

    fn search(&self, query: &str) -> Value {
        let (status, v) = self.s.get(query);
        assert_eq!(status, 200, "{v}");
        v
    }

    fn count(&self, query: &str) -> u64 {
        self.search(query)["total"].as_u64().unwrap()
    }

    /// The `outcomeDesc` of the newest access-log records (as `AuditEvent`s).
    fn audit(&self) -> Vec<String> {
        let v = self.search("AuditEvent?_count=200");
        v["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["resource"]["outcomeDesc"].as_str().map(str::to_owned))
            .collect()
    }

    fn access_size(&self) -> u64 {
        let (_, body) = self.s.raw_get("/ledger/access/checkpoint");
        let text = String::from_utf8(body).unwrap();
        text.lines().nth(1).unwrap().parse().unwrap()
    }
}

fn param<'a>(out: &'a Value, name: &str) -> &'a Value {
    out["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map_or(&Value::Null, |p| {
            p.get("valueInteger").or(p.get("valueString")).unwrap()
        })
}

/// Consent actor role: the information recipient.
fn recipient_role() -> Value {
    participation("IRCP")
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_patient_shared_from_a_appears_in_b_with_provenance() {
    let a = Peer::start();
    let b = Peer::start();
    let pid = a.s.create(&patient("Sharefam", "Ada"));
    a.s.create(&observation(&pid, "2345-7", "2026-11-01"));
    a.s.create(&observation(&pid, "718-7", "2026-11-02"));
    let other = a.s.create(&patient("Otherfam", "Olive"));
    a.s.create(&observation(&other, "2345-7", "2026-11-03"));

    // Not registered yet: nothing leaves.
    let (status, v) = a.share(&pid, b.node());
    assert_eq!(status, 404, "{v}");

    // A wrong fingerprint is refused at registration.
    let (ok, _, err) = a.cli(&[
        "peer",
        "add",
        "--url",
        "https://127.0.0.1:1",
        "--document",
        b.doc_file.to_str().unwrap(),
        "--fingerprint",
        "SHA-256:00",
    ]);
    assert!(!ok && err.contains("does not match"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one plain line: {err}");

    a.register(&b);
    b.register(&a);
    let (ok, out, _) = a.cli(&["peer", "list"]);
    assert!(ok && out.contains(b.node()), "{out}");

    // The data leaves under the purpose it was read for, not another one.
    let (status, v) = send(
        a.s.req(reqwest::Method::POST, &format!("Patient/{pid}/$share"))
            .header("content-type", "application/fhir+json")
            .header("x-purpose-of-use", "HPAYMT")
            .body(
                json!({"resourceType": "Parameters", "parameter": [
                    {"name": "recipient", "valueString": b.node()},
                    {"name": "purpose", "valueCode": "TREAT"},
                ]})
                .to_string(),
            ),
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = a.s.get(&format!("Patient/{pid}/$share"));
    assert_eq!(status, 405, "{v}");

    let b_before = b.access_size();
    let (status, out) = a.share(&pid, b.node());
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        param(&out, "resources"),
        3,
        "the patient and two observations"
    );
    assert_eq!(param(&out, "withheld"), 0);
    let recipient_leaf = param(&out, "recipientLeaf").as_u64().unwrap();
    let sender_leaf = param(&out, "senderLeaf").as_u64().unwrap();
    assert!(
        recipient_leaf >= b_before,
        "B's leaf is new: {recipient_leaf} vs {b_before}"
    );
    assert!(param(&out, "deliveredLeaf").as_u64().unwrap() > sender_leaf);

    // B holds the patient under a new id, the observations point at it, a Provenance names A.
    let found = b.search("Patient?family=Sharefam");
    assert_eq!(found["total"], 1, "{found}");
    let new_id = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        b.count("Patient?family=Otherfam"),
        0,
        "only the shared patient"
    );
    let obs = b.search(&format!("Observation?subject=Patient/{new_id}"));
    assert_eq!(obs["total"], 2, "{obs}");
    let prov = b.search(&format!("Provenance?patient=Patient/{new_id}"));
    assert_eq!(prov["total"], 1, "{prov}");
    let p = &prov["entry"][0]["resource"];
    assert_eq!(p["target"].as_array().unwrap().len(), 3);
    assert_eq!(
        p["agent"][0]["who"]["identifier"]["value"], a.doc["fingerprint"],
        "{p}"
    );
    assert_eq!(
        p["entity"][0]["what"]["identifier"]["value"],
        *param(&out, "bundle")
    );
    assert!(
        p["entity"][0]["what"]["display"]
            .as_str()
            .unwrap()
            .contains(&format!("leaf {sender_leaf}")),
        "B cites A's leaf: {p}"
    );
    // The node-to-node link negotiated the hybrid post-quantum key exchange.
    let log = std::fs::read_to_string(&b.s.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake done") && l.contains("X25519MLKEM768")),
        "no hybrid handshake in B's log"
    );
    assert!(b.audit().iter().any(|d| d == "share-receive: success"));
    assert!(a.audit().iter().any(|d| d == "share-send: success"));
    assert!(a.audit().iter().any(|d| d == "share-delivered: success"));
    // Both ledgers still verify.
    for n in [&a, &b] {
        n.s.verify_ledger();
    }

    // A node B has not registered cannot even finish the TLS handshake with B.
    let c = Peer::start();
    c.register(&b);
    let cid = c.s.create(&patient("Strangerfam", "Sam"));
    let (status, v) = c.share(&cid, b.node());
    assert_eq!(status, 502, "{v}");
    let why = v["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        why.contains("could not be delivered") && why.contains("alert"),
        "{v}"
    );
    // B recorded the refused handshake in its access log (written as the handshake failed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !b
        .audit()
        .iter()
        .any(|d| d == "peer-handshake-refused: denied")
    {
        assert!(std::time::Instant::now() < deadline, "{:?}", b.audit());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(b.count("Patient?family=Strangerfam"), 0);

    // B rotates its keys while serving: its peer listener presents the new key at once, which
    // A (still pinning the old one) refuses, until A registers B's new document.
    let (ok, _, err) = b.cli(&["node", "rotate-keys"]);
    assert!(ok, "{err}");
    // The listener looks at its key version at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (status, v) = a.share(&pid, b.node());
    assert_eq!(status, 502, "{v}");
    let why = v["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(why.contains("TLS handshake"), "{v}");
    let b = Peer {
        doc: serde_json::from_slice(&b.s.raw_get("/.well-known/medvault-node").1).unwrap(),
        ..b
    };
    std::fs::write(&b.doc_file, b.doc.to_string()).unwrap();
    let (ok, _, err) = a.try_register(&b, &[]);
    assert!(
        !ok && err.contains("--replace"),
        "new keys need --replace: {err}"
    );
    a.register_with(&b, &["--replace"]);
    let (status, out) = a.share(&pid, b.node());
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        b.count("Patient?family=Sharefam"),
        2,
        "shared a second time"
    );
}

#[test]
fn the_patients_consent_decides_what_goes_to_which_node() {
    let (a, b) = Peer::pair();
    let pid = a.s.create(&patient("Consentshare", "Cy"));
    a.s.create(&observation(&pid, "2345-7", "2026-11-01"));
    a.s.create(&json!({
        "resourceType": "Condition",
        "subject": {"reference": format!("Patient/{pid}")},
        "code": {"text": "asthma"},
    }));
    // A's administrator maps B to the Organization that patients' consents name for it.
    let org_id =
        a.s.create(&json!({"resourceType": "Organization", "name": "Hospital B"}));
    let org = format!("Organization/{org_id}");
    a.register_with(&b, &["--organization", &org]);
    // Observations may not go to B: the rest is shared, the observation withheld.
    let c1 = a.s.create(&consent(
        &pid,
        json!({"type": "permit", "provision": [{
            "type": "deny", "actor": [{"role": recipient_role(), "reference": {"reference": org}}],
            "class": [{"code": "Observation"}],
        }]}),
        "2026-01-01T00:00:00Z",
    ));
    let (status, out) = a.share(&pid, b.node());
    assert_eq!(status, 200, "{out}");
    assert_eq!(param(&out, "resources"), 2, "patient and condition: {out}");
    assert_eq!(param(&out, "withheld"), 1);
    assert_eq!(b.count("Observation?code=2345-7"), 0);
    assert_eq!(b.count("Condition?_count=10"), 1);
    assert_eq!(b.count("Consent?_count=10"), 0, "consents never travel");

    // The patient forbids sharing with B altogether: nothing goes, online or as a file.
    a.s.delete(&format!("Consent/{c1}"));
    a.s.create(&consent(&pid, json!({"type": "deny", "actor": [{"role": recipient_role(), "reference": {"reference": org}}]}), "2026-01-01T00:00:00Z"));
    let before = b.count("Patient?family=Consentshare");
    let (status, v) = a.share(&pid, b.node());
    assert_eq!(status, 403, "{v}");
    assert!(
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("consent")
    );
    let out_file = a.s.dir.with_extension("denied.mvshare");
    let (ok, _, err) = a.export(&pid, b.doc_file.to_str().unwrap(), &out_file, &[]);
    assert!(!ok && err.contains("consent"), "{err}");
    assert!(!out_file.exists());
    assert_eq!(b.count("Patient?family=Consentshare"), before);
}

#[test]
fn offline_bundles_import_once_and_damaged_or_misdirected_ones_are_refused() {
    let (a, b) = Peer::pair();
    let pid = a.s.create(&patient("Filefam", "Fay"));
    a.s.create(&observation(&pid, "2345-7", "2026-11-01"));
    let tmp = a.s.dir.parent().unwrap().to_owned();
    let file = tmp.join("fay.mvshare");
    let (ok, out, err) = a.export(
        &pid,
        b.doc_file.to_str().unwrap(),
        &file,
        &["--purpose", "COC"],
    );
    assert!(ok && out.contains("sealed 2 resources"), "{out} {err}");
    let bytes = std::fs::read(&file).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("Filefam") && !text.contains(&pid),
        "no PHI outside the seal"
    );

    let refused = |path: &str, want: &str| {
        let before = b.access_size();
        let (ok, out, err) = b.cli(&["share", "import", path]);
        assert!(!ok, "{want}: {out}");
        assert!(err.contains(want), "{want}: {err}");
        assert!(err.contains("nothing was imported"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one plain line: {err}");
        assert_eq!(
            b.count("Patient?family=Filefam"),
            0,
            "{want}: nothing imported"
        );
        assert!(
            b.access_size() > before,
            "{want}: the refusal is in the access log"
        );
    };
    // Tampered ciphertext (the signature covers it), cut short, trailing bytes, not a bundle.
    let mut flipped = bytes.clone();
    let mid = bytes.len() / 2;
    flipped[mid] ^= 1;
    refused(&write(&tmp.join("flipped"), &flipped), "signature");
    refused(
        &write(&tmp.join("cut"), &bytes[..bytes.len() - 100]),
        "malformed",
    );
    let mut longer = bytes.clone();
    longer.push(0);
    refused(&write(&tmp.join("longer"), &longer), "malformed");
    refused(&write(&tmp.join("garbage"), b"hello"), "malformed");
    // Oversized: refused before it is read.
    let big = tmp.join("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(64 * 1024 * 1024 + 1).unwrap();
    let (ok, _, err) = b.import(&big, None);
    assert!(!ok && err.contains("larger than"), "{err}");
    // Addressed to B: A cannot import it.
    let (ok, _, err) = a.import(&file, None);
    assert!(!ok && err.contains("another node"), "{err}");
    // Unknown sender: B forgets A, refuses, registers it again.
    let (ok, _, err) = b.cli(&["peer", "remove", a.node()]);
    assert!(ok, "{err}");
    refused(file.to_str().unwrap(), "not a registered peer");
    b.register(&a);

    // The intact file imports, with a receipt the sender confirms; the second time is a replay.
    let receipt = tmp.join("fay.receipt.json");
    let (ok, out, err) = b.import(&file, Some(&receipt));
    assert!(ok && out.contains("imported 2 resources"), "{out} {err}");
    assert_eq!(b.count("Patient?family=Filefam"), 1);
    let new_id = out
        .split("as Patient/")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let (status, v) = b.s.get(&format!("Patient/{new_id}"));
    assert_eq!(
        (status, &v["name"][0]["family"]),
        (200, &json!("Filefam")),
        "{out}"
    );
    refused_after_import(&b, &file);
    // The receipt was lost? Importing again is still a replay, and gives the same receipt.
    let again = tmp.join("again.json");
    let (ok, _, err) = b.import(&file, Some(&again));
    assert!(
        !ok && err.contains("replay") && err.contains("receipt given"),
        "{err}"
    );
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    assert_eq!(
        read(&again),
        read(&receipt),
        "the receipt given at the import"
    );
    assert_eq!(b.count("Patient?family=Filefam"), 1, "still imported once");
    let (ok, out, err) = a.cli(&[
        "share",
        "confirm",
        "--bundle",
        file.to_str().unwrap(),
        receipt.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("confirmed"), "{out} {err}");
    // A receipt edited to cite another leaf does not verify.
    let mut r: Value = serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    r["recipientLeaf"] = json!(r["recipientLeaf"].as_u64().unwrap() + 1);
    let edited = write(&tmp.join("edited.json"), r.to_string().as_bytes());
    let (ok, _, err) = a.cli(&[
        "share",
        "confirm",
        "--bundle",
        file.to_str().unwrap(),
        &edited,
    ]);
    assert!(!ok && err.contains("does not verify"), "{err}");

    // Expired: valid for one second.
    let short = tmp.join("short.mvshare");
    let (ok, _, err) = a.export(&pid, b.node(), &short, &["--valid-for", "1s"]);
    assert!(ok, "{err}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (ok, _, err) = b.import(&short, None);
    assert!(!ok && err.contains("expired"), "{err}");
    assert_eq!(
        b.count("Patient?family=Filefam"),
        1,
        "still only the first import"
    );
    for n in [&a, &b] {
        n.s.verify_ledger();
    }
}

fn refused_after_import(b: &Peer, file: &Path) {
    let (ok, _, err) = b.import(file, None);
    assert!(!ok && err.contains("replay"), "{err}");
    assert_eq!(b.count("Patient?family=Filefam"), 1, "imported once");
}

#[test]
fn a_delivery_repeated_after_a_lost_answer_gets_the_same_receipt() {
    let (a, b) = Peer::pair();
    let pid = a.s.create(&patient("Retryfam", "Rae"));
    let file = a.s.dir.with_extension("retry.mvshare");
    let (ok, _, err) = a.export(&pid, b.node(), &file, &[]);
    assert!(ok, "{err}");
    let bytes = std::fs::read(&file).unwrap();
    // A's identity, as its own peer client would present it (opened from its data directory).
    let node = open_node(&a.s.dir);
    let id = medvault_node::node_identity::NodeIdentity::load(&node).unwrap();
    let b_key = medvault_server::peer::document_ed25519(&b.doc.to_string()).unwrap();
    let tls = medvault_server::peer::client_config(&id, b_key).unwrap();
    let url = format!("https://127.0.0.1:{}", b.peer_port);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let post = |body: Vec<u8>, ct: &str| {
        rt.block_on(medvault_server::peer::post(
            &url,
            medvault_node::share::RECEIVE_PATH,
            ct,
            body,
            std::sync::Arc::clone(&tls),
        ))
        .unwrap()
    };
    let ct = medvault_node::share::BUNDLE_MEDIA_TYPE;
    let wrong = post(bytes.clone(), "application/octet-stream");
    assert_eq!(wrong.status, 415);
    let first = post(bytes.clone(), ct);
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let second = post(bytes.clone(), ct);
    assert_eq!(second.status, 409, "a replay");
    let (r1, r2): (Value, Value) = (
        serde_json::from_slice(&first.body).unwrap(),
        serde_json::from_slice(&second.body).unwrap(),
    );
    assert_eq!(r1, r2, "the receipt given the first time");
    assert_eq!(b.count("Patient?family=Retryfam"), 1, "imported once");
}

#[test]
fn two_nodes_on_postgresql_share_and_replays_get_the_same_receipt() {
    let test = "share::two_nodes_on_postgresql_share_and_replays_get_the_same_receipt";
    let (Some(db_a), Some(db_b)) = (Scratch::new(test), Scratch::new(test)) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let a = Peer::on_postgres(root.path(), "a", &db_a.url);
    let b = Peer::on_postgres(root.path(), "b", &db_b.url);
    a.register(&b);
    b.register(&a);
    let pid = a.s.create(&patient("Pgsharefam", "Pia"));
    a.s.create(&observation(&pid, "2345-7", "2026-11-01"));
    let (status, out) = a.share(&pid, b.node());
    assert_eq!(status, 200, "{out}");
    assert_eq!(param(&out, "resources"), 2);
    assert_eq!(b.count("Patient?family=Pgsharefam"), 1);
    let found = b.search("Patient?family=Pgsharefam");
    let new_id = found["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.count(&format!("Provenance?patient=Patient/{new_id}")), 1);

    // Offline, on PostgreSQL: import, then the replay returns the kept receipt.
    let file = root.path().join("pg.mvshare");
    let (ok, _, err) = a.export(&pid, b.node(), &file, &[]);
    assert!(ok, "{err}");
    let (first, second) = (root.path().join("r1.json"), root.path().join("r2.json"));
    let import = |receipt: &Path| b.import(&file, Some(receipt));
    let (ok, out, err) = import(&first);
    assert!(ok, "{out} {err}");
    let (ok, _, err) = import(&second);
    assert!(!ok && err.contains("replay"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        std::fs::read_to_string(&second).unwrap()
    );
    assert_eq!(
        b.count("Patient?family=Pgsharefam"),
        2,
        "the share and one import"
    );
    for n in [&a, &b] {
        n.s.verify_ledger();
    }
}
