//! Post-quantum known-answer tests: ML-KEM-768 (Wycheproof, through the RustCrypto `ml-kem`
//! that X-Wing is built on, cross-checked against aws-lc-rs's ML-KEM) and X-Wing (the draft's
//! own vectors, through the `x-wing` crate medvault's node KEM key uses). Vectors:
//! `tests/vectors/` (sources in its README). Each test asserts how many cases ran.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::{hx, load};
use ml_kem::kem::{Decapsulate as _, KeyExport as _, KeyInit as _};
use serde_json::Value;

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

/// One HPKE base-mode vector through the receiver: the key pair derived from `ikmR`, the
/// decapsulation of `enc`, every encryption opened in sequence, every export.
fn hpke_receive<A, Kdf, Kem>(v: &Value)
where
    A: hpke::aead::Aead,
    Kdf: hpke::kdf::Kdf,
    Kem: hpke::Kem,
{
    use hpke::{Deserializable as _, Serializable as _};
    let (sk, pk) = Kem::derive_keypair(&hx(&v["ikmR"]));
    let mut expected_sk = hx(&v["skRm"]);
    if Kem::KEM_ID == 0x20 {
        // The crate serialises X25519 private keys clamped (RFC 7748); the vectors do not.
        expected_sk[0] &= 248;
        expected_sk[31] = (expected_sk[31] & 127) | 64;
    }
    assert_eq!(sk.to_bytes().as_slice(), expected_sk.as_slice(), "skRm");
    assert_eq!(pk.to_bytes().as_slice(), hx(&v["pkRm"]).as_slice(), "pkRm");
    let enc = Kem::EncappedKey::from_bytes(&hx(&v["enc"])).unwrap();
    let mut ctx =
        hpke::setup_receiver::<A, Kdf, Kem>(&hpke::OpModeR::Base, &sk, &enc, &hx(&v["info"]))
            .unwrap();
    for e in v["encryptions"].as_array().unwrap() {
        let pt = ctx.open(&hx(&e["ct"]), &hx(&e["aad"])).unwrap();
        assert_eq!(pt, hx(&e["pt"]));
    }
    for x in v["exports"].as_array().unwrap() {
        let mut out = vec![0u8; usize::try_from(x["L"].as_u64().unwrap()).unwrap()];
        ctx.export(&hx(&x["exporter_context"]), &mut out).unwrap();
        assert_eq!(out, hx(&x["exported_value"]));
    }
}

#[test]
fn hpke_pq_vectors() {
    use hpke::aead::{AesGcm128, AesGcm256, ChaCha20Poly1305};
    use hpke::kdf::{
        HkdfSha256, HkdfSha384, HkdfSha512, KdfShake128, KdfShake256, KdfTurboShake128,
        KdfTurboShake256,
    };
    use hpke::kem::{
        DhP256HkdfSha256, DhP384HkdfSha384, MlKem768, MlKem768P256, MlKem1024, MlKem1024P384,
        X25519HkdfSha256, XWing,
    };
    let doc = load("pq/hpke-pq-test-vectors.json");
    let (mut x_wing, mut others_checked, mut unsupported) = (0, 0, Vec::new());
    for v in doc.as_array().unwrap() {
        assert_eq!(v["mode"], 0, "base mode only");
        let suite = (
            v["kem_id"].as_u64().unwrap(),
            v["kdf_id"].as_u64().unwrap(),
            v["aead_id"].as_u64().unwrap(),
        );
        match suite {
            // The suites medvault's sealed bundles can use (X-Wing)...
            (0x647a, 1, 3) => hpke_receive::<ChaCha20Poly1305, HkdfSha256, XWing>(v),
            (0x647a, 0x11, 3) => hpke_receive::<ChaCha20Poly1305, KdfShake256, XWing>(v),
            // ...and every other suite the hpke crate implements, so the library is checked
            // beyond the one configuration we use.
            (0x41, 1, 1) => hpke_receive::<AesGcm128, HkdfSha256, MlKem768>(v),
            (0x41, 3, 2) => hpke_receive::<AesGcm256, HkdfSha512, MlKem768>(v),
            (0x42, 2, 2) => hpke_receive::<AesGcm256, HkdfSha384, MlKem1024>(v),
            (0x42, 0x13, 1) => hpke_receive::<AesGcm128, KdfTurboShake256, MlKem1024>(v),
            (0x50, 1, 1) => hpke_receive::<AesGcm128, HkdfSha256, MlKem768P256>(v),
            (0x50, 0x10, 2) => hpke_receive::<AesGcm256, KdfShake128, MlKem768P256>(v),
            (0x51, 2, 2) => hpke_receive::<AesGcm256, HkdfSha384, MlKem1024P384>(v),
            (0x10, 0x10, 1) => hpke_receive::<AesGcm128, KdfShake128, DhP256HkdfSha256>(v),
            (0x11, 0x11, 2) => hpke_receive::<AesGcm256, KdfShake256, DhP384HkdfSha384>(v),
            (0x20, 0x12, 3) => {
                hpke_receive::<ChaCha20Poly1305, KdfTurboShake128, X25519HkdfSha256>(v);
            }
            other => {
                unsupported.push(other);
                continue;
            }
        }
        if suite.0 == 0x647a {
            x_wing += 1;
        } else {
            others_checked += 1;
        }
    }
    assert_eq!((x_wing, others_checked), (2, 9), "suites checked");
    // ML-KEM-512 and X448, which the hpke crate does not implement.
    assert_eq!(unsupported, [(0x40, 1, 1), (0x21, 0x13, 3)]);
}
