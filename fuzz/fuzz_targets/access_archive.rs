//! An access-log archive comes back from cold storage, where anyone may have altered it:
//! `ledger verify --archive` must answer every file with a count or a plain refusal, never a
//! panic, and never hand over an entry outside the header's range or out of order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_node::archive::parse_archive;

fuzz_target!(|data: &[u8]| {
    let mut last: Option<u64> = None;
    let got = parse_archive::<()>(data, |leaf, _detail| {
        assert!(last.is_none_or(|l| leaf == l + 1), "entries out of order");
        last = Some(leaf);
        Ok(())
    });
    if let Ok(header) = got {
        assert!(header.from < header.to);
        assert_eq!(last, Some(header.to - 1));
    }
});
