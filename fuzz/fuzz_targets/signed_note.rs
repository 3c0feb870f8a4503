//! Untrusted ledger text: signed notes, checkpoints, witness `add-checkpoint` bodies, vkeys,
//! tile paths and leaf entries must parse or fail cleanly, never panic; what parses must
//! round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_ledger::{AddCheckpoint, Checkpoint, Entry, Note, TilePath, VerifierKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(note) = Note::parse(data) {
        let again = Note::parse(note.render().as_bytes()).expect("a rendered note parses");
        assert_eq!(again, note);
        if let Ok(cp) = Checkpoint::parse(&note.text) {
            assert_eq!(Checkpoint::parse(&cp.text()).expect("round trip"), cp);
            for label in ["records", "access"] {
                if let Ok(Some((size, root))) = cp.pin(label) {
                    let line = medvault_ledger::pin_line(label, size, &root);
                    assert!(cp.extensions.contains(&line), "a parsed pin renders as its line");
                }
            }
        }
    }
    let _ = AddCheckpoint::parse(data);
    let _ = Entry::decode(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Checkpoint::parse(text);
        if let Ok(vk) = VerifierKey::parse_vkey(text) {
            assert_eq!(VerifierKey::parse_vkey(&vk.to_vkey()).expect("round trip"), vk);
        }
        if let Ok(t) = TilePath::parse(text) {
            let rendered = t.render();
            let rest = rendered.strip_prefix("tile/").expect("prefix");
            assert_eq!(TilePath::parse(rest).expect("round trip"), t);
        }
    }
});
