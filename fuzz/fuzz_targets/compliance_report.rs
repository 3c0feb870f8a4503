//! A compliance report or a patient's export comes from anyone (an auditor's inbox, a web page,
//! a PDF, a patient's download): `compliance verify` and `subject verify` must answer every file
//! with a verdict or a plain refusal, never a panic, and never accept one whose signature does
//! not cover what it says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_compliance::{extract_report, pdf, report, subject};

fuzz_target!(|data: &[u8]| {
    // The PDF reader on its own, whatever the first bytes are.
    let _ = pdf::extract(data);
    if let Ok(value) = extract_report(data) {
        // Random bytes never carry a valid hybrid signature.
        assert!(report::verify(&value, None, None).is_err());
        assert!(subject::verify(&value, None, None).is_err());
        let mut out = Vec::new();
        let _ = report::canonical(&value, &mut out);
    }
});
