//! Post-quantum known-answer tests: ML-KEM-768 (Wycheproof, through the RustCrypto `ml-kem`
//! that X-Wing is built on, cross-checked against aws-lc-rs's ML-KEM) and X-Wing (the draft's
//! own vectors, through the `x-wing` crate medvault's node KEM key uses). Vectors:
//! `../shared/testdata/`. Each test asserts how many cases ran.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use ml_kem::kem::{Decapsulate as _, KeyExport as _, KeyInit as _};
use serde_json::Value;

fn load(path: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata")
        .join(path);
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn ml_kem_768_wycheproof() {
    let doc = load("wycheproof/mlkem_768_test.json");
    let (mut ran, mut valid) = (0, 0);
    for g in doc["testGroups"].as_array().unwrap() {
        assert_eq!(g["parameterSet"], "ML-KEM-768");
        for t in g["tests"].as_array().unwrap() {
            ran += 1;
            let (seed, c) = (hx(&t["seed"]), hx(&t["c"]));
            let ok = t["result"] == "valid";
            // A seed of the wrong length is no key; a ciphertext of the wrong length is refused.
            let Ok(seed) = <&[u8; 64]>::try_from(seed.as_slice()) else {
                assert!(!ok, "tcId {}", t["tcId"]);
                continue;
            };
            let dk = ml_kem::ml_kem_768::DecapsulationKey::new(&(*seed).into());
            let ek = dk.encapsulation_key().to_bytes();
            if let Some(want) = t.get("ek") {
                assert_eq!(ek.as_slice(), hx(want).as_slice(), "tcId {}", t["tcId"]);
            }
            let got = dk.decapsulate_slice(&c);
            assert_eq!(got.is_ok(), ok, "tcId {}", t["tcId"]);
            if let Ok(k) = got {
                valid += 1;
                assert_eq!(k.as_slice(), hx(&t["K"]).as_slice(), "tcId {}", t["tcId"]);
                // aws-lc-rs, given the same key, agrees. It imports only the expanded FIPS 203
                // encoding, which `ml-kem` keeps (deprecated) for exactly such interop.
                #[allow(deprecated)]
                let expanded = {
                    use ml_kem::ExpandedKeyEncoding as _;
                    dk.to_expanded_bytes()
                };
                let aws = aws_lc_rs::kem::DecapsulationKey::new(
                    &aws_lc_rs::kem::ML_KEM_768,
                    expanded.as_slice(),
                )
                .unwrap();
                let k2 = aws.decapsulate(c.as_slice().into()).unwrap();
                assert_eq!(k2.as_ref(), k.as_slice(), "aws-lc-rs, tcId {}", t["tcId"]);
            }
        }
    }
    assert_eq!(ran, 193);
    assert_eq!(valid, 153);
}

#[test]
fn x_wing_vectors() {
    use x_wing::{Decapsulate as _, Decapsulator as _, KeyExport as _};
    let doc = load("pq/xwing-test-vectors.json");
    let mut ran = 0;
    for v in doc.as_array().unwrap() {
        let seed: [u8; 32] = hx(&v["seed"]).try_into().unwrap();
        let dk = x_wing::DecapsulationKey::from(seed);
        assert_eq!(dk.as_bytes().as_slice(), hx(&v["sk"]).as_slice());
        let ek = dk.encapsulation_key();
        assert_eq!(ek.to_bytes().as_slice(), hx(&v["pk"]).as_slice());
        let eseed: [u8; 64] = hx(&v["eseed"]).try_into().unwrap();
        let (ct, ss) = ek.encapsulate_deterministic(&eseed.into());
        assert_eq!(ct.as_slice(), hx(&v["ct"]).as_slice());
        assert_eq!(ss.as_slice(), hx(&v["ss"]).as_slice());
        assert_eq!(dk.decapsulate(&ct).as_slice(), ss.as_slice());
        ran += 1;
    }
    assert_eq!(ran, 3);
}
