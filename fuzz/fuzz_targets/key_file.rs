//! A key file on disk (possibly corrupted or crafted): reading it fails cleanly, and crafted cost
//! parameters cannot make it allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_crypto::{Passphrase, RootKey};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("medvault-fuzz-keyfile-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("medvault.key");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let pass = Passphrase::new("fuzz".into());
    let _ = RootKey::open_file(&path, pass.as_ref());
});
