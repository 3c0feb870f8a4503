//! Untrusted node documents (another node's `/.well-known/medvault-node`, or one pasted by an
//! administrator): any JSON must be refused with a message or accepted, never panic; what is
//! accepted carries keys of the right sizes and a fingerprint recomputed from them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_node::node_identity::verify_document;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(peer) = verify_document(&doc) {
        assert_eq!(peer.signing.ml_dsa_65.len(), medvault_crypto::ML_DSA_65_PUBLIC_KEY_LEN);
        assert_eq!(peer.kem.len(), medvault_crypto::X_WING_PUBLIC_KEY_LEN);
        assert_eq!(doc["fingerprint"], peer.fingerprint.as_str());
    }
});
