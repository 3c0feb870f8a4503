//! Untrusted backup files (`medvault restore`): any bytes must be refused with a message or
//! accepted, never panic; each line alone must parse or fail cleanly, and a row that parses
//! renders back to the same row.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medvault_crypto::RootKey;
use medvault_node::backup_file::{check, parse_row, row_line};

fn root() -> &'static RootKey {
    static ROOT: OnceLock<RootKey> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("medvault-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        RootKey::create_file(&dir.join("medvault.key"), None).expect("root key")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rows = 0u64;
    let mac = |tenant: &str| root().backup_mac(tenant).map_err(|e| e.to_string());
    if let Ok(checked) = check(data, mac, |_, _, _| {
        rows += 1;
        Ok(())
    }) {
        assert_eq!(checked.rows, rows);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            if let Ok((part, table, row)) = parse_row(line) {
                let again = row_line(part, table, &row).to_string();
                let (p, t, r) = parse_row(&again).expect("a rendered row parses");
                assert_eq!((p, t.name, r), (part, table.name, row));
            }
        }
    }
});
