//! A replay file and a roster come from outside (an export, another team's log): the replay
//! must answer any bytes with scores for the lines before the first bad one and a refusal
//! naming that line, never a panic, and every score it writes must be in [0, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;
use medvault_sentinel::replay::replay;
use medvault_sentinel::{Attacks, Detector, Roster};

fuzz_target!(|data: &[u8]| {
    // The first line, when it is one, is the roster; the rest are events.
    let (roster, events) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let roster: Roster = serde_json::from_slice(roster).unwrap_or_default();
    let mut scores = Vec::new();
    let result = replay(
        &mut Detector::new(&roster),
        &mut Attacks::default(),
        events,
        &mut scores,
        None,
        |_| {},
    );
    let lines = std::str::from_utf8(&scores).expect("scores are UTF-8");
    let mut n = 0u64;
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a score line is JSON");
        let s = v["score"].as_f64().expect("a score");
        assert!((0.0..=1.0).contains(&s), "{line}");
        n += 1;
    }
    match result {
        Ok(done) => assert_eq!(done.events, n),
        Err(medvault_sentinel::replay::ReplayError::BadLine { line, .. }) => assert_eq!(line, n + 1),
        Err(e) => panic!("{e}"),
    }
});
