//! Untrusted PATCH bodies: any bytes, applied as JSON Patch and as FHIRPath Patch to a fixed
//! Patient, give a patched resource with the same type and id, or a clean error that names no
//! resource content — never a panic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medvault_fhir::patch::{PatchKind, apply_patch};
use serde_json::{Value, json};

/// Stands in for patient data: an error may echo it only if the patch itself contains it.
const SECRET: &str = "Qv7SecretName";

static PATIENT: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1"},
        "identifier": [
            {"system": "http://example.org/mrn", "value": SECRET},
            {"system": "http://example.org/ssn", "value": "123"}
        ],
        "name": [
            {"use": "official", "family": SECRET, "given": ["Anne", "B"],
             "_given": [null, {"extension": [{"url": "u", "valueCode": "c"}]}]},
            {"use": "nickname", "given": ["Annie"]}
        ],
        "birthDate": "1970-01-01",
        "deceasedBoolean": false,
        "contact": [{"name": {"text": SECRET}, "gender": "female"}],
        "extension": [{"url": "http://example.org/x", "valueString": SECRET}]
    })
});

fuzz_target!(|data: &[u8]| {
    // A patch may echo its own text; it names the secret if it spells it, or might through a
    // JSON escape (`\u0051…`).
    let mentions_secret =
        data.contains(&b'\\') || data.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    for kind in [PatchKind::Json, PatchKind::FhirPath] {
        match apply_patch(kind, &PATIENT, data) {
            Ok(patched) => {
                assert_eq!(patched.get("resourceType"), PATIENT.get("resourceType"));
                assert_eq!(patched.get("id"), PATIENT.get("id"));
            }
            Err(e) => {
                let message = e.to_string();
                assert!(!message.is_empty());
                assert!(mentions_secret || !message.contains(SECRET), "{message}");
            }
        }
    }
});
