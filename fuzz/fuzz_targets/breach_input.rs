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
        // Accepted or refused with a message, never a panic (future discoveries are refused).
        let _ = Window::new(f, t, t);
        assert!(Window::new(t, f.saturating_sub(1), t).is_err(), "an inverted window");
    }
    let _ = Recipient::parse(text);
});
