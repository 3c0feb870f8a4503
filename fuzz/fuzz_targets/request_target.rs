//! URL paths and If-Match headers from clients.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = medvault_node::route::parse_path(text);
    let _ = medvault_node::route::parse_etag(text);
    let _ = medvault_fhir::local_reference(text);
    let _ = medvault_core::VersionId::parse(text);
    let _ = medvault_core::Compartment::from_key_name(text);
});
