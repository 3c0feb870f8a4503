//! Bytes read back from the database as a sealed record or a wrapped key: opening must fail
//! cleanly (and never succeed on forged bytes).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medvault_crypto::{DataKey, Kek, RecordAad, Sealed, WrappedKey};

static KEYS: OnceLock<(DataKey, Kek)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (dek, kek) = KEYS.get_or_init(|| {
        (DataKey::generate("Patient/p".into(), 1).expect("rng"), Kek::generate(1).expect("rng"))
    });
    let aad = RecordAad { tenant: "t", resource_type: "Patient", id: "p", version: 1 };
    assert!(dek.open(&aad, &Sealed::from_stored(data.to_vec())).is_err());
    assert!(kek.unwrap("t", "Patient/p", 1, &WrappedKey::from_stored(data.to_vec())).is_err());
});
