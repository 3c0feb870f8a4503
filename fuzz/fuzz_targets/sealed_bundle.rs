//! Untrusted sealed bundles (`medvault share import`, `$share` deliveries): any bytes must be
//! refused with a [`BundleError`] or opened, never panic; only a bundle sealed to this key and
//! signed by this sender opens.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medvault_crypto::{DataKey, HybridSigningKey, XWingKey, bundle_parts, open_bundle};

fn keys() -> &'static (HybridSigningKey, XWingKey) {
    static KEYS: OnceLock<(HybridSigningKey, XWingKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dk = |n: &str| DataKey::generate(n.into(), 1).expect("key");
        (
            HybridSigningKey::from_data_keys(&dk("a"), &dk("b")).expect("signing key"),
            XWingKey::from_data_key(&dk("c")),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let (sender, recipient) = keys();
    let _ = bundle_parts(data);
    // Random bytes never carry a valid hybrid signature.
    assert!(open_bundle(data, sender.public_key(), recipient).is_err());
});
