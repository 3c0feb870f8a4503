//! What a receiver parses of a shared bundle besides its layout: the (signed, unencrypted)
//! header and, once decrypted, the payload a peer sent. Any bytes must give a header, a
//! checked payload or a refusal, never a panic; an accepted payload only creates resources.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_node::share::{FORMAT, check_payload, parse_header};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        assert_eq!(h.format, FORMAT);
    }
    if let Ok((entries, patient)) = check_payload(data) {
        assert!(patient.starts_with("urn:uuid:"));
        assert!(entries.iter().all(|e| e["request"]["method"] == "POST"));
    }
});
