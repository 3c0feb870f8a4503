//! The node's hybrid identity (issue 7): published, verifiable, rotatable, the rotation in the
//! ledger.

use medvault_node::node_identity::verify_document;
use serde_json::Value;

use medvault_testkit::Server;

use crate::MEDVAULT;

fn document(s: &Server) -> Value {
    let (status, body) = s.raw_get("/.well-known/medvault-node");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn the_node_document_verifies_names_its_algorithms_and_rotates() {
    let s = MEDVAULT.start();
    let doc = document(&s);
    let peer = verify_document(&doc).unwrap();
    assert_eq!(doc["signing"]["algorithm"], "Ed25519+ML-DSA-65");
    assert_eq!(doc["kem"]["algorithm"], "X-Wing");
    assert_eq!(peer.version, 1);
    assert_eq!(peer.signing.ml_dsa_65.len(), 1952);
    assert_eq!(peer.kem.len(), 1216);
    // Stable between requests, but for the proof (ML-DSA signing is randomised).
    let again = verify_document(&document(&s)).unwrap();
    assert!(again == peer, "the same keys on every request");

    // The CLI shows the same document (for the fingerprint confirmed out of band).
    let (ok, out, err) = s.run(&["node", "show"]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["fingerprint"], doc["fingerprint"]);

    // Any change to a signed field breaks the proof.
    for (field, value) in [
        ("node", Value::from("someone-else")),
        ("keyVersion", Value::from(7)),
        ("origin", Value::from("evil.example/x")),
    ] {
        let mut t = doc.clone();
        t[field] = value;
        assert!(verify_document(&t).is_err(), "{field}");
    }
    let mut swapped = doc.clone();
    swapped["kem"]["X-Wing"] = document(&MEDVAULT.start())["kem"]["X-Wing"].clone();
    assert!(verify_document(&swapped).is_err(), "another node's KEM key");
    let mut cut = doc.clone();
    cut["proof"]["ML-DSA-65"] = Value::from("");
    assert!(
        verify_document(&cut).is_err(),
        "both signatures are required"
    );

    // Rotation: new keys, version 2, recorded in the access log.
    let (_, before) = s.raw_get("/ledger/access/checkpoint");
    let (ok, out, err) = s.run(&["node", "rotate-keys"]);
    assert!(ok, "{err}");
    assert!(out.contains("v1 replaced by v2"), "{out}");
    let rotated = document(&s);
    let peer2 = verify_document(&rotated).unwrap();
    assert_eq!(peer2.version, 2);
    assert_ne!(peer2.fingerprint, peer.fingerprint);
    assert!(
        peer2.signing != peer.signing && peer2.kem != peer.kem,
        "new keys"
    );
    assert!(out.contains(&peer2.fingerprint), "{out}");
    s.verify_ledger();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, after) = s.raw_get("/ledger/access/checkpoint");
    assert_ne!(
        before, after,
        "the rotation's audit leaf grew the access log"
    );
}
