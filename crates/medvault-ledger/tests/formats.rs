//! Signed notes, checkpoints, cosignatures, tile paths and witness requests: round trips and
//! rejection of malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use medvault_crypto::{DataKey, SigningKey};
use medvault_ledger::{
    AddCheckpoint, Checkpoint, Entry, EntryKind, KeyKind, LedgerError, MemoryTree, Note,
    NoteSigner, TilePath, VerifierKey, consistency_proof, leaf_hash,
};

fn signer(name: &str, kind: KeyKind) -> NoteSigner {
    let dk = DataKey::generate("@test".into(), 1).unwrap();
    NoteSigner::new(name, kind, SigningKey::from_data_key(&dk).unwrap()).unwrap()
}

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint {
        origin: "medvault.example/node-1".into(),
        size,
        root: [7; 32],
        extensions: vec![],
    }
}

#[test]
fn checkpoint_signed_cosigned_and_verified() {
    let log = signer("medvault.example/node-1", KeyKind::Ed25519);
    let witness = signer("witness.example/w1", KeyKind::CosignatureV1);
    let text = checkpoint(42).text();
    let mut note = Note {
        text: text.clone(),
        signatures: vec![log.sign(&text, 0)],
    };
    note.signatures.push(witness.sign(&text, 1_700_000_000));
    let wire = note.render();
    let parsed = Note::parse(wire.as_bytes()).unwrap();
    assert_eq!(parsed, note);
    assert_eq!(Checkpoint::parse(&parsed.text).unwrap(), checkpoint(42));
    assert_eq!(log.verifier().verify(&parsed).unwrap().timestamp, None);
    assert_eq!(
        witness.verifier().verify(&parsed).unwrap().timestamp,
        Some(1_700_000_000)
    );
    // vkeys round-trip, and a cosigner key does not verify a plain signature of the same key.
    let vk = VerifierKey::parse_vkey(&witness.verifier().to_vkey()).unwrap();
    assert_eq!(vk, witness.verifier());
    let other = signer("medvault.example/node-1", KeyKind::Ed25519);
    assert!(matches!(
        other.verifier().verify(&parsed),
        Err(LedgerError::SignatureMissing)
    ));
    // Changing the size (but keeping the signatures) breaks both.
    let forged = wire.replacen("\n42\n", "\n43\n", 1);
    let forged = Note::parse(forged.as_bytes()).unwrap();
    assert!(matches!(
        log.verifier().verify(&forged),
        Err(LedgerError::SignatureInvalid)
    ));
    assert!(witness.verifier().verify(&forged).is_err());
}

#[test]
fn malformed_notes_and_checkpoints_are_errors() {
    let bad_notes: &[&[u8]] = &[
        b"",
        b"text\n",
        b"text\n\n",
        b"text\n\n\xe2\x80\x94 name AAAAAAA=",
        b"text\n\n- name AAAAAAAA\n",
        b"text\n\n\xe2\x80\x94 na+me AAAAAAAA\n",
        b"text\n\n\xe2\x80\x94 name !!!!\n",
        b"text\n\n\xe2\x80\x94 name AAAA\n",
        b"te\x01xt\n\n\xe2\x80\x94 name AAAAAAAA\n",
        b"\xff\n\n\xe2\x80\x94 name AAAAAAAA\n",
        b"\n\n\xe2\x80\x94 name AAAAAAAA\n",
    ];
    for b in bad_notes {
        assert!(Note::parse(b).is_err(), "{:?}", String::from_utf8_lossy(b));
    }
    let root = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    for text in [
        String::new(),
        "origin\n1\n".into(),
        format!("\n1\n{root}\n"),
        format!("origin\n01\n{root}\n"),
        format!("origin\n-1\n{root}\n"),
        format!("origin\n18446744073709551616\n{root}\n"),
        "origin\n1\nAAAA\n".into(),
        format!("origin\n1\n{root}"),
        format!("origin\n1\n{root}\n\n"),
    ] {
        assert!(Checkpoint::parse(&text).is_err(), "{text:?}");
    }
    let ok = Checkpoint::parse(&format!("origin\n0\n{root}\next\n")).unwrap();
    assert_eq!(ok.extensions, vec!["ext".to_owned()]);
}

#[test]
fn tile_paths() {
    for (path, want) in [
        (
            "0/000",
            TilePath {
                level: Some(0),
                index: 0,
                partial: None,
            },
        ),
        (
            "1/x001/x234/067",
            TilePath {
                level: Some(1),
                index: 1_234_067,
                partial: None,
            },
        ),
        (
            "entries/x001/000.p/17",
            TilePath {
                level: None,
                index: 1000,
                partial: Some(17),
            },
        ),
    ] {
        let got = TilePath::parse(path).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.render(), format!("tile/{path}"));
    }
    for bad in [
        "",
        "0",
        "0/",
        "0/1",
        "0/0000",
        "64/000",
        "00/000",
        "0/x000/001",
        "0/001/002",
        "0/000.p/0",
        "0/000.p/256",
        "0/000.p/",
        "x/000",
        "0/x99999999999999999999/000",
        "entries/000.p/01",
    ] {
        assert!(TilePath::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn witness_requests() {
    let mut tree = MemoryTree::new();
    for i in 0..10u8 {
        tree.push(leaf_hash(&[i]));
    }
    let log = signer("medvault.example/node-1", KeyKind::Ed25519);
    let text = Checkpoint {
        root: tree.root(),
        ..checkpoint(10)
    }
    .text();
    let note = Note {
        signatures: vec![log.sign(&text, 0)],
        text,
    };
    let proof = consistency_proof(&tree, 4, 10).unwrap();
    let body = AddCheckpoint::render(4, &proof, &note);
    let req = AddCheckpoint::parse(body.as_bytes()).unwrap();
    assert_eq!(
        (req.old_size, req.proof.len(), req.checkpoint.size),
        (4, proof.len(), 10)
    );
    assert_eq!(req.note, note);
    for bad in [
        String::new(),
        "old 4\n".into(),
        body.replacen("old 4", "old 11", 1),
        body.replacen("old 4", "old 04", 1),
        body.replacen("old 4", "new 4", 1),
        body.replacen("\n\n", "\nnot-base64\n\n", 1),
        format!("old 4\n{}\n{}", "AAAA\n".repeat(64), note.render()),
    ] {
        assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

#[test]
fn entries_round_trip() {
    let e = Entry {
        kind: EntryKind::Record,
        time_micros: 1_790_000_000_000_000,
        commitment: [9; 32],
    };
    assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
    let mut b = e.encode();
    b[0] = 2;
    assert!(Entry::decode(&b).is_err());
    b[0] = 1;
    b[1] = 9;
    assert!(Entry::decode(&b).is_err());
    assert!(Entry::decode(&e.encode()[..41]).is_err());
}

#[test]
fn ml_dsa_44_subtree_cosignatures() {
    let dk = DataKey::generate("@pq".into(), 1).unwrap();
    let pq = NoteSigner::new(
        "medvault.example/ml-dsa-44",
        KeyKind::MlDsa44,
        medvault_ledger::SignerKey::MlDsa44(
            medvault_crypto::MlDsa44Key::from_data_key(&dk).unwrap(),
        ),
    )
    .unwrap();
    // An ML-DSA key cannot sign Ed25519 kinds, nor the reverse.
    let ed = SigningKey::from_data_key(&dk).unwrap();
    assert!(NoteSigner::new("x.example/y", KeyKind::MlDsa44, ed).is_err());
    let vk = pq.verifier();
    assert_eq!(vk.public_key.len(), 1312);
    let parsed = VerifierKey::parse_vkey(&vk.to_vkey()).unwrap();
    assert_eq!(parsed, vk, "vkey round trip (type 0x06)");
    let text = checkpoint(42).text();
    let note = Note {
        text: text.clone(),
        signatures: vec![pq.sign(&text, 1_700_000_000)],
    };
    let again = Note::parse(note.render().as_bytes()).unwrap();
    assert_eq!(vk.verify(&again).unwrap().timestamp, Some(1_700_000_000));
    // The signature covers size and root: another checkpoint does not verify with it.
    let other = Note {
        text: checkpoint(43).text(),
        signatures: note.signatures.clone(),
    };
    assert!(matches!(
        vk.verify(&other),
        Err(LedgerError::SignatureInvalid)
    ));
    // A key of the wrong length for its type is refused.
    let mut short = vk.to_vkey();
    short.truncate(short.len() - 8);
    assert!(VerifierKey::parse_vkey(&short).is_err());
    // Only checkpoints are cosigned: other text gets a signature that never verifies.
    let odd = Note {
        text: "not a checkpoint\n".into(),
        signatures: vec![pq.sign("not a checkpoint\n", 1)],
    };
    assert!(vk.verify(&odd).is_err());
}
