//! Post-quantum sharing benchmark (issue 7): seal + sign + verify + open of a 1 MB bundle
//! (target < 20 ms), and each primitive through medvault's wrapper against the library called
//! directly on the same input, in the same run (target: wrapper within 1.5× of the library).
//!
//! Usage: `medvault-pq-bench [ROUNDS] [PAYLOAD_BYTES]` (defaults 30 1048576); prints the median
//! of the rounds for each figure. `scripts/bench-pq` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

mod args;

use args::arg;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{
    ED25519, Ed25519KeyPair, KeyPair as _, ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair,
    UnparsedPublicKey,
};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::XWing;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use medvault_crypto::{
    DataKey, HybridSigningKey, XWingKey, hybrid_verify, open_bundle, seal_bundle,
};

/// Median time of `rounds` runs of `f`.
fn median(rounds: usize, mut f: impl FnMut()) -> Duration {
    f(); // warm-up
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let rounds = arg(1, 30);
    let size = arg(2, 1 << 20);
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let header =
        br#"{"format":"medvault-share/1","from":"node-a","to":"node-b","purpose":"TREAT"}"#;
    let dk = |n: &str| DataKey::generate(n.into(), 1).unwrap();
    let sender = HybridSigningKey::from_data_keys(&dk("ed"), &dk("ml")).unwrap();
    let recipient = XWingKey::from_data_key(&dk("kem"));
    let recipient_pk = recipient.public_key();

    // The whole exchange through medvault.
    let sealed = seal_bundle(header, &payload, &recipient_pk, &sender).unwrap();
    let full = median(rounds, || {
        let b = seal_bundle(header, &payload, &recipient_pk, &sender).unwrap();
        let (_, p) = open_bundle(&b, sender.public_key(), &recipient).unwrap();
        assert_eq!(p.len(), size);
    });
    let seal = median(rounds, || {
        seal_bundle(header, &payload, &recipient_pk, &sender).unwrap();
    });
    let open = median(rounds, || {
        open_bundle(&sealed, sender.public_key(), &recipient).unwrap();
    });

    // The same work straight from the libraries: HPKE (hpke crate) and the two signatures
    // (aws-lc-rs) over a message of the same size.
    let (sk, pk) = XWing::derive_keypair(b"benchmark ikm, 32 bytes or more.");
    let msg = vec![3u8; sealed.len()];
    let ed = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
    let ml = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &[2; 32]).unwrap();
    let mut ml_sig = vec![0u8; 3309];
    let lib_seal_once = || {
        hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, XWing>(
            &OpModeS::Base,
            &pk,
            header,
            &payload,
            header,
        )
        .unwrap()
    };
    let (enc, ct) = lib_seal_once();
    let enc_bytes = enc.to_bytes();
    let lib_hpke_seal = median(rounds, || {
        lib_seal_once();
    });
    let lib_hpke_open = median(rounds, || {
        let enc = <XWing as hpke::Kem>::EncappedKey::from_bytes(&enc_bytes).unwrap();
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, XWing>(
            &OpModeR::Base,
            &sk,
            &enc,
            header,
            &ct,
            header,
        )
        .unwrap();
    });
    let lib_sign = median(rounds, || {
        let _ = ed.sign(&msg);
        ml.sign(&msg, &mut ml_sig).unwrap();
    });
    let ed_sig = ed.sign(&msg);
    let n = ml.sign(&msg, &mut ml_sig).unwrap();
    let ml_pub = ml.public_key().as_ref().to_vec();
    let lib_verify = median(rounds, || {
        UnparsedPublicKey::new(&ED25519, ed.public_key().as_ref())
            .verify(&msg, ed_sig.as_ref())
            .unwrap();
        UnparsedPublicKey::new(&ML_DSA_65, &ml_pub)
            .verify(&msg, &ml_sig[..n])
            .unwrap();
    });
    // medvault's hybrid signature alone, on the same message size.
    let ours_sign = median(rounds, || {
        sender.sign(&msg).unwrap();
    });
    let sig = sender.sign(&msg).unwrap();
    let ours_verify = median(rounds, || {
        assert!(hybrid_verify(sender.public_key(), &msg, &sig));
    });

    println!("payload {size} bytes, median of {rounds} rounds, release build");
    println!(
        "seal + sign + verify + open (medvault, whole exchange): {:.2} ms (target < 20 ms)",
        ms(full)
    );
    let lib_seal = lib_hpke_seal + lib_sign;
    let lib_open = lib_hpke_open + lib_verify;
    for (what, ours, lib) in [
        (
            "seal_bundle vs hpke seal + Ed25519 + ML-DSA-65 sign",
            seal,
            lib_seal,
        ),
        (
            "open_bundle vs Ed25519 + ML-DSA-65 verify + hpke open",
            open,
            lib_open,
        ),
        (
            "hybrid sign vs aws-lc-rs Ed25519 + ML-DSA-65 sign",
            ours_sign,
            lib_sign,
        ),
        (
            "hybrid verify vs aws-lc-rs Ed25519 + ML-DSA-65 verify",
            ours_verify,
            lib_verify,
        ),
    ] {
        println!(
            "{what}: {:.2} ms vs {:.2} ms = {:.2}x (target <= 1.5x)",
            ms(ours),
            ms(lib),
            ours.as_secs_f64() / lib.as_secs_f64()
        );
    }
}
