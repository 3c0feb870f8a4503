//! A search query string: every parameter of Patient, Observation and ValueSet (strings, tokens,
//! references, dates, quantities, uris) parses any value (with any modifier) into a clause or a
//! clean error, and matching never panics.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medvault_fhir::Fhir;

static FHIR: OnceLock<Fhir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let fhir = FHIR.get_or_init(|| Fhir::load().expect("definitions load"));
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = medvault_fhir::date_range(text);
    let resource = serde_json::json!({"resourceType": "Patient", "name": [{"family": text}], "birthDate": text,
        "valueQuantity": {"value": text.len() as f64 / 7.0, "unit": text, "code": text, "system": text},
        "url": text});
    for (name, value) in medvault_node::search::parse_query_string(text) {
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c.to_owned(), Some(m.to_owned())),
            None => (name.clone(), None),
        };
        for rt in ["Patient", "Observation", "ValueSet"] {
            if let Some(p) = fhir.type_info(rt).and_then(|i| i.params.get(&code)) {
                if let Ok(clause) = p.parse_clause(modifier.as_deref(), &value) {
                    let _ = p.matches(&clause, &resource);
                }
            }
        }
    }
});
