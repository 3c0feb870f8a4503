//! What a breach request carries comes from an API caller: times, recipients and the register's
//! free text must each be accepted or refused with a plain error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_compliance::breach::{Window, parse_time};
use medvault_compliance::register::Recipient;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let from = parse_time("from", text, false);
    let to = parse_time("to", text, true);
    if let (Ok(f), Ok(t)) = (from, to) {
        assert!(t >= f, "a date's end is not before its start");
        assert!(Window::new(f, t, t).is_ok() || t - f > 366 * 86_400_000_000);
    }
    let _ = Recipient::parse(text);
});
