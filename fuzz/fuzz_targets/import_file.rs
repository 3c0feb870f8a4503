//! Untrusted import files (`medvault import`): any bytes, read as ndjson and as a Bundle, give
//! entries or a clean error naming an entry or a line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_node::import::{MAX_IMPORT_ENTRIES, Mode, file_entries};

fuzz_target!(|data: &[u8]| {
    for ndjson in [true, false] {
        for mode in [Mode::AddOnly, Mode::Update] {
            match file_entries(data, ndjson, mode) {
                Ok(entries) => assert!(entries.len() <= MAX_IMPORT_ENTRIES),
                Err(e) => assert!(!e.message.is_empty()),
            }
        }
    }
});
