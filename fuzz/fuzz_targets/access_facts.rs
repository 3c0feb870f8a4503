//! What the access policy reads from stored resources anyone with write access may have shaped:
//! a patient's Consents (patients write their own), CareTeams, Encounters and security labels;
//! and the purpose of use a request declares. Any JSON must evaluate (and any Consent be
//! checked) to an answer, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_policy::consent::{ConsentRequest, evaluate};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    let consents: Vec<Value> = match &v {
        Value::Array(list) => list.clone(),
        other => vec![other.clone()],
    };
    let labels = medvault_node::authz::security_labels(&v);
    let actors = vec![
        "Practitioner/dr".to_owned(),
        "Organization/org".to_owned(),
        "CareTeam/team".to_owned(),
    ];
    for c in &consents {
        // The write-time check: an answer (a 422 sentence) or acceptance, never a panic.
        let _ = medvault_policy::consent::check(c, &|t| t.eq_ignore_ascii_case("Observation"));
    }
    for purpose in [None, Some("TREAT"), Some("HOPERAT"), Some("ETREAT")] {
        let _ = evaluate(
            &consents,
            &ConsentRequest {
                actors: &actors,
                permit_actors: None,
                purpose,
                resource_type: "Observation",
                labels: &labels,
                at: "2026-11-30T10:00:00Z",
            },
        );
    }
    for c in &consents {
        let _ = medvault_node::authz::relationship_in(c, "Practitioner/dr", 1_780_000_000);
    }
    // Declared purposes come from a request header: any text gets an answer.
    if let Ok(text) = std::str::from_utf8(data) {
        for role in ["clinician", "admin", "researcher", "patient"] {
            let _ = medvault_policy::purpose::refusal(role, text);
        }
        let _ = medvault_policy::purpose::deny_covers(text, Some("TREAT"));
    }
});
