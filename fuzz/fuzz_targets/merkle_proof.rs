//! Untrusted proofs: arbitrary sizes, indexes, roots and proof hashes must verify or fail
//! cleanly (no overflow, no panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_ledger::{Hash, verify_consistency, verify_inclusion};

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 + 64 {
        return;
    }
    let a = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
    let b = u64::from_be_bytes(data[8..16].try_into().expect("8 bytes"));
    let r1: Hash = data[16..48].try_into().expect("32 bytes");
    let r2: Hash = data[48..80].try_into().expect("32 bytes");
    let proof: Vec<Hash> = data[80..]
        .chunks_exact(32)
        .take(80)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    let _ = verify_inclusion(a, b, &r1, &proof, &r2);
    let _ = verify_consistency(a, b, &r1, &r2, &proof);
});
