//! A compliance report or a patient's export comes from anyone (an auditor's inbox, a web page,
//! a patient's download): `compliance verify` and `subject verify` must answer every file with a
//! verdict or a plain refusal, never a panic, and never accept one whose signature does not
//! cover what it says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_compliance::{html, report, subject};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = html::extract(text) {
        // Random bytes never carry a valid hybrid signature.
        assert!(report::verify(&value, None, None).is_err());
        assert!(subject::verify(&value, None, None).is_err());
        let mut out = Vec::new();
        let _ = report::canonical(&value, &mut out);
    }
});
