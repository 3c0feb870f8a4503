//! Wycheproof known-answer tests for the primitives medvault's envelope and blind indexes use,
//! through the same provider (aws-lc-rs): AES-256-GCM (96-bit nonces, 128-bit tags),
//! HMAC-SHA256 and HKDF-SHA256. Vectors: `tests/vectors/wycheproof/` (C2SP/wycheproof,
//! Apache-2.0). Each test asserts how many cases ran.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac};
use common::{hx, load};
use serde_json::Value;

/// Runs `check` on every test (with its group) of the groups of the Wycheproof file `name` that
/// `keep` selects; returns how many ran.
fn run(name: &str, keep: impl Fn(&Value) -> bool, mut check: impl FnMut(&Value, &Value)) -> usize {
    let doc = load(&format!("wycheproof/{name}"));
    let mut ran = 0;
    for g in doc["testGroups"].as_array().unwrap() {
        if keep(g) {
            for t in g["tests"].as_array().unwrap() {
                check(g, t);
                ran += 1;
            }
        }
    }
    ran
}

/// Runs every test of the Wycheproof file `name` through `accepts` (given the test's group),
/// which must accept exactly the tests marked valid; asserts that `count` tests ran.
fn verdicts(name: &str, count: usize, accepts: impl Fn(&Value, &Value) -> bool) {
    let ran = run(
        name,
        |_| true,
        |g, t| assert_eq!(accepts(g, t), t["result"] == "valid", "tcId {}", t["tcId"]),
    );
    assert_eq!(ran, count, "{name}");
}

#[test]
fn aes_256_gcm() {
    let ran = run(
        "aes_gcm_test.json",
        |g| g["keySize"] == 256 && g["ivSize"] == 96 && g["tagSize"] == 128,
        |_, t| {
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &hx(&t["key"])).unwrap());
            let nonce = || Nonce::try_assume_unique_for_key(&hx(&t["iv"])).unwrap();
            let (aad, msg) = (hx(&t["aad"]), hx(&t["msg"]));
            let mut sealed = hx(&t["ct"]);
            sealed.extend(hx(&t["tag"]));
            let valid = t["result"] == "valid";
            let mut buf = sealed.clone();
            let opened = key
                .open_in_place(nonce(), Aad::from(&aad), &mut buf)
                .map(|p| p.to_vec());
            assert_eq!(opened.is_ok(), valid, "tcId {}", t["tcId"]);
            if valid {
                assert_eq!(opened.unwrap(), msg, "tcId {}", t["tcId"]);
                let mut out = msg.clone();
                key.seal_in_place_append_tag(nonce(), Aad::from(&aad), &mut out)
                    .unwrap();
                assert_eq!(out, sealed, "tcId {}", t["tcId"]);
            }
        },
    );
    assert_eq!(ran, 66);
}

#[test]
fn hmac_sha256() {
    verdicts("hmac_sha256_test.json", 174, |_, t| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &hx(&t["key"]));
        let tag = hmac::sign(&key, &hx(&t["msg"]));
        let want = hx(&t["tag"]);
        tag.as_ref().get(..want.len()) == Some(&want[..])
    });
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

#[test]
fn hkdf_sha256() {
    let ran = run(
        "hkdf_sha256_test.json",
        |_| true,
        |_, t| {
            let size = usize::try_from(t["size"].as_u64().unwrap()).unwrap();
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &hx(&t["salt"])).extract(&hx(&t["ikm"]));
            let info = hx(&t["info"]);
            let info_parts = [info.as_slice()];
            let got = prk.expand(&info_parts, Len(size)).ok().and_then(|okm| {
                let mut out = vec![0u8; size];
                okm.fill(&mut out).ok().map(|()| out)
            });
            match t["result"].as_str().unwrap() {
                "valid" => assert_eq!(got, Some(hx(&t["okm"])), "tcId {}", t["tcId"]),
                _ => assert!(got.is_none_or(|g| g != hx(&t["okm"])), "tcId {}", t["tcId"]),
            }
        },
    );
    assert_eq!(ran, 86);
}

#[test]
fn ed25519_verify() {
    // Through medvault's own wrapper, which the ledger uses for checkpoints and cosignatures.
    verdicts("ed25519_test.json", 151, |g, t| {
        let pk = hx(&g["publicKey"]["pk"]);
        medvault_crypto::ed25519_verify(&pk, &hx(&t["msg"]), &hx(&t["sig"]))
    });
}

#[test]
fn ml_dsa_65_verify() {
    // Through medvault's own wrapper (empty context, as medvault signs). A signature made under
    // a non-empty context must not verify without it, so those cases count as invalid here.
    let mut with_context = 0;
    let ran = run(
        "mldsa_65_verify_test.json",
        |_| true,
        |g, t| {
            let pk = hx(&g["publicKey"]);
            let ctx = t.get("ctx").map(hx).unwrap_or_default();
            with_context += usize::from(!ctx.is_empty());
            let want = t["result"] == "valid" && ctx.is_empty();
            let got = medvault_crypto::ml_dsa_65_verify(&pk, &hx(&t["msg"]), &hx(&t["sig"]));
            assert_eq!(got, want, "tcId {} ({})", t["tcId"], t["comment"]);
        },
    );
    assert_eq!(ran, 210);
    assert_eq!(with_context, 7);
}
