//! A request body: JSON parsing, R4 validation, compartment choice, the patient references to
//! resolve (identifiers, contained Patients) and index extraction must never panic, whatever the
//! bytes.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medvault_core::ResourceId;
use medvault_fhir::Fhir;

static FHIR: OnceLock<Fhir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let fhir = FHIR.get_or_init(|| Fhir::load().expect("definitions load"));
    // The strict parser request bodies go through: it agrees with serde_json except that it
    // refuses duplicate keys.
    let strict = medvault_fhir::strict_json::from_slice(data);
    let Ok(resource) = serde_json::from_slice::<serde_json::Value>(data) else {
        assert!(strict.is_err());
        return;
    };
    if let Ok(v) = &strict {
        assert_eq!(v, &resource);
    }
    let id = ResourceId::new("fuzz").expect("valid id");
    for rt in ["Patient", "Observation", "Encounter"] {
        let _ = fhir.validate(rt, &resource);
        let _ = fhir.compartment_of(rt, &id, &resource);
        let _ = fhir.unresolved_patient_links(rt, &resource);
        let _ = fhir.is_clinical_type(rt);
        if let Some(info) = fhir.type_info(rt) {
            for p in info.params.values() {
                let _ = p.index_keys(&resource);
            }
        }
    }
});
