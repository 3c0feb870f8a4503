//! Known-answer tests: RFC 6962 roots and the transparency-dev/merkle inclusion and consistency
//! proof vectors under `tests/vectors/merkle/` (happy paths and every `wantErr` case), and
//! the golang.org/x/mod sumdb/note example note. Each test asserts how many cases ran.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_ledger::{
    Hash, MemoryTree, Note, VerifierKey, consistency_proof, inclusion_proof, leaf_hash, root,
    verify_consistency, verify_inclusion,
};
use serde_json::Value;

fn merkle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/merkle")
}

/// A hash field; `None` when it is absent or not 32 bytes (our API takes only well-formed
/// hashes, so such a case is rejected before verification).
fn b64(v: &Value) -> Option<Hash> {
    let raw = B64.decode(v.as_str().unwrap_or_default()).ok()?;
    raw.try_into().ok()
}

fn hashes(v: &Value) -> Option<Vec<Hash>> {
    v.as_array()
        .map_or_else(|| Some(Vec::new()), |a| a.iter().map(b64).collect())
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

fn load_all(sub: &str) -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    json_files(&merkle_dir().join(sub), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect()
}

#[test]
fn rfc6962_roots() {
    let doc: Value =
        serde_json::from_slice(&std::fs::read(merkle_dir().join("rfc6962-roots.json")).unwrap())
            .unwrap();
    let leaves: Vec<Vec<u8>> = doc["leaf_inputs_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex::decode(h.as_str().unwrap()).unwrap())
        .collect();
    let roots = doc["roots_hex"].as_array().unwrap();
    let mut tree = MemoryTree::new();
    let mut ran = 0;
    for (n, want) in roots.iter().enumerate() {
        let want = hex::decode(want.as_str().unwrap()).unwrap();
        assert_eq!(tree.root().to_vec(), want, "root of size {n}");
        assert_eq!(
            root(&tree, n as u64).unwrap().to_vec(),
            want,
            "stored root {n}"
        );
        ran += 1;
        if let Some(l) = leaves.get(n) {
            tree.push(leaf_hash(l));
        }
    }
    assert_eq!(ran, 9);
}

/// Runs `check` on every vector file under `sub` and compares its verdict with `wantErr`.
/// `check` returns `None` when a case's inputs are not well-formed hashes: our API cannot even
/// express such a call, so the case must be one that expects an error. Returns (ran, rejected).
fn run_vectors(
    sub: &str,
    check: impl Fn(&Value) -> Option<Result<(), medvault_ledger::LedgerError>>,
) -> (usize, usize) {
    let (mut ran, mut rejected) = (0, 0);
    for (path, t) in load_all(sub) {
        let want_err = t["wantErr"].as_bool().unwrap_or(false);
        match check(&t) {
            None => assert!(
                want_err,
                "{}: malformed input must be a wantErr case",
                path.display()
            ),
            Some(got) => assert_eq!(got.is_err(), want_err, "{}: {got:?}", path.display()),
        }
        rejected += usize::from(want_err);
        ran += 1;
    }
    (ran, rejected)
}

#[test]
fn inclusion_vectors() {
    let counts = run_vectors("inclusion", |t| {
        let (leaf, proof, root) = (b64(&t["leafHash"])?, hashes(&t["proof"])?, b64(&t["root"])?);
        Some(verify_inclusion(
            t["leafIdx"].as_u64().unwrap(),
            t["treeSize"].as_u64().unwrap(),
            &leaf,
            &proof,
            &root,
        ))
    });
    assert_eq!(counts, (98, 92));
}

#[test]
fn consistency_vectors() {
    let counts = run_vectors("consistency", |t| {
        // Roots are bytes in this API: a root of the wrong length simply fails to match.
        let raw = |k: &str| {
            B64.decode(t[k].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        Some(verify_consistency(
            t["size1"].as_u64().unwrap(),
            t["size2"].as_u64().unwrap(),
            &raw("root1"),
            &raw("root2"),
            &hashes(&t["proof"])?,
        ))
    });
    assert_eq!(counts, (98, 92));
}

/// Proofs generated from stored nodes verify, for every index and every pair of sizes up to 70
/// (covering many non-power-of-two right edges), and fail against a wrong root.
#[test]
fn generated_proofs_verify() {
    let mut tree = MemoryTree::new();
    let mut roots = vec![tree.root()];
    for i in 0..70u32 {
        tree.push(leaf_hash(&i.to_be_bytes()));
        roots.push(tree.root());
    }
    let mut ran = 0;
    for size in 1..=70u64 {
        assert_eq!(root(&tree, size).unwrap(), roots[size as usize]);
        for idx in 0..size {
            let proof = inclusion_proof(&tree, idx, size).unwrap();
            let leaf = leaf_hash(&(idx as u32).to_be_bytes());
            verify_inclusion(idx, size, &leaf, &proof, &roots[size as usize]).unwrap();
            assert!(verify_inclusion(idx, size, &leaf, &proof, &roots[size as usize - 1]).is_err());
            ran += 1;
        }
        for old in 0..=size {
            let proof = consistency_proof(&tree, old, size).unwrap();
            let verdict = verify_consistency(
                old,
                size,
                &roots[old as usize],
                &roots[size as usize],
                &proof,
            );
            assert_eq!(verdict.is_ok(), old > 0, "{old} -> {size}");
            if old > 0 && old < size {
                let mut bad = proof.clone();
                bad[0][0] ^= 1;
                assert!(
                    verify_consistency(
                        old,
                        size,
                        &roots[old as usize],
                        &roots[size as usize],
                        &bad
                    )
                    .is_err()
                );
            }
            ran += 1;
        }
    }
    assert_eq!(ran, 2485 + 2555);
}

/// The example note of golang.org/x/mod/sumdb/note (an independent implementation of the
/// signed-note format): its verifier key parses and its signature verifies.
#[test]
fn go_sumdb_note_example() {
    let vkey = VerifierKey::parse_vkey(
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    )
    .unwrap();
    let text = "If you think cryptography is the answer to your problem,\n\
                then you don't know what your problem is.\n";
    let signed = format!(
        "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    );
    let note = Note::parse(signed.as_bytes()).unwrap();
    assert_eq!(note.text, text);
    vkey.verify(&note).unwrap();
    assert_eq!(note.render(), signed);
    assert_eq!(
        vkey.to_vkey(),
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    );
    let tampered = signed.replace("problem is", "problem was");
    let note = Note::parse(tampered.as_bytes()).unwrap();
    assert!(vkey.verify(&note).is_err());
}
