//! A sealed access-log detail's plaintext, as the audit key opens it (from the database, or an
//! archive file restored from cold storage): every codec reader answers with a record, a list
//! of tags or a plain error, never a panic, and the tags a detail carries are whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_node::audit::{decode_detail, patients_in_detail, tags_of_detail};

fuzz_target!(|data: &[u8]| {
    let _ = decode_detail(data);
    let _ = patients_in_detail(data);
    if let Some(tags) = tags_of_detail(data) {
        assert!(data.len() >= 3 + 16 * tags.len());
    }
});
