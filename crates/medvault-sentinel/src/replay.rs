//! Offline replay: `EVENTS.jsonl` in, `SCORES.jsonl` out, one line for every line, in order.

use std::io::{BufRead, Write};

use crate::attacks::{AttackAlert, Attacks};
use crate::detector::{Detector, SIGNALS, Score};
use crate::event::Event;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A line that is not a valid event; nothing after it was scored.
    #[error("line {line}: {why}")]
    BadLine { line: u64, why: String },
    #[error("reading the events: {0}")]
    Read(std::io::Error),
    #[error("writing the scores: {0}")]
    Write(std::io::Error),
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    pub events: u64,
    /// Events whose score reached the threshold.
    pub alerts: u64,
    /// Attacks found ([`crate::attacks`]).
    pub attacks: u64,
    /// Events earlier than the event before them (scored where they stand; the detector
    /// assumes time order, so many of these make its windows less exact).
    pub out_of_order: u64,
}

/// The longest line an event may take.
pub const MAX_LINE: usize = 1 << 20;

/// Scores every line of `events` with `detector` (and looks for attacks with `attacks`),
/// writing one `SCORES.jsonl` line each to `scores` and, when given, the raw feature vector of each to `features` (a JSON array per
/// line, after a header line naming the features). `progress` is called with the bytes read
/// so far every few thousand lines.
///
/// # Errors
/// The first malformed line (by its 1-based number), or an I/O error.
pub fn replay(
    detector: &mut Detector,
    attacks: &mut Attacks,
    events: impl BufRead,
    mut scores: impl Write,
    mut features: Option<&mut dyn Write>,
    mut progress: impl FnMut(u64),
) -> Result<Replayed, ReplayError> {
    if let Some(out) = features.as_deref_mut() {
        let names: Vec<&str> = SIGNALS.iter().map(|s| s.name()).collect();
        serde_json::to_writer(&mut *out, &names).map_err(|e| ReplayError::Write(e.into()))?;
        out.write_all(b"\n").map_err(ReplayError::Write)?;
    }
    let mut done = Replayed::default();
    let mut read = 0u64;
    let mut line = Vec::with_capacity(512);
    let mut events = events;
    let mut out = Vec::with_capacity(256);
    let mut last_time = i64::MIN;
    loop {
        line.clear();
        let n = std::io::Read::take(events.by_ref(), MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(ReplayError::Read)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        let number = done.events + 1;
        if line.len() > MAX_LINE {
            return Err(ReplayError::BadLine {
                line: number,
                why: format!("longer than {MAX_LINE} bytes"),
            });
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if let Err(e) = std::str::from_utf8(text) {
            return Err(ReplayError::BadLine {
                line: number,
                why: format!("not UTF-8 (byte {})", e.valid_up_to() + 1),
            });
        }
        let event: Event<'_> = serde_json::from_slice(text).map_err(|e| ReplayError::BadLine {
            line: number,
            why: if text.iter().all(u8::is_ascii_whitespace) {
                "an empty line is not an event".to_owned()
            } else {
                e.to_string()
            },
        })?;
        done.out_of_order += u64::from(event.time < last_time);
        last_time = last_time.max(event.time);
        // Failed sign-ins, anonymous requests and peers' bundles are no one's access to a
        // record: they score 0 and only the attack rules see them.
        let s = if event.is_access() {
            detector.score(&event)
        } else {
            Score::none()
        };
        let found = attacks.observe(&event);
        out.clear();
        write_score(&mut out, done.events, &s, &found);
        scores.write_all(&out).map_err(ReplayError::Write)?;
        if let Some(f) = features.as_deref_mut() {
            out.clear();
            write_features(&mut out, &s);
            f.write_all(&out).map_err(ReplayError::Write)?;
        }
        done.events += 1;
        done.alerts += u64::from(s.alert);
        done.attacks += found.len() as u64;
        if done.events.is_multiple_of(8192) {
            progress(read);
        }
    }
    progress(read);
    scores.flush().map_err(ReplayError::Write)?;
    if let Some(f) = features {
        f.flush().map_err(ReplayError::Write)?;
    }
    Ok(done)
}

/// One `SCORES.jsonl` line: `{"index":N,"score":S,"alert":B,"reasons":[…]}`, with
/// `"attacks":[…]` when the event completed any.
pub fn write_score(out: &mut Vec<u8>, index: u64, s: &Score, attacks: &[AttackAlert]) {
    use std::io::Write as _;
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        r#"{{"index":{index},"score":{:.4},"alert":{},"reasons":["#,
        s.score, s.alert
    );
    for (i, r) in s.reasons.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(
            out,
            r#"{{"signal":"{}","value":{},"contribution":{:.2}}}"#,
            r.signal.name(),
            Number(r.value),
            r.contribution
        );
    }
    out.push(b']');
    if !attacks.is_empty() {
        out.extend_from_slice(br#","attacks":"#);
        let list: Vec<serde_json::Value> = attacks.iter().map(AttackAlert::to_json).collect();
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &list);
    }
    out.extend_from_slice(b"}\n");
}

fn write_features(out: &mut Vec<u8>, s: &Score) {
    use std::io::Write as _;
    out.push(b'[');
    for (i, v) in s.features.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, "{}", Number(*v));
    }
    out.extend_from_slice(b"]\n");
}

/// A feature value as JSON: integers without a fraction, others to 3 decimals.
struct Number(f64);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.fract() == 0.0 && self.0.abs() < 1e15 {
            write!(f, "{}", self.0 as i64)
        } else {
            write!(f, "{:.3}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Roster;

    const LINE: &str = r#"{"time":"2026-11-01T08:00:00Z","user":"u1","role":"nurse","department":"icu","patient":"p1","action":"read","resource_type":"Patient","purpose":"TREAT","outcome":"allowed","break_glass":false,"relationship":"care-team","client":"ehr","address":"10.0.0.1"}"#;

    #[test]
    fn every_line_gets_a_score_line_in_order() {
        let input = format!("{LINE}\n{LINE}\r\n{LINE}");
        let mut scores = Vec::new();
        let mut features = Vec::new();
        let done = replay(
            &mut Detector::new(&Roster::default()),
            &mut Attacks::default(),
            input.as_bytes(),
            &mut scores,
            Some(&mut features),
            |_| {},
        )
        .unwrap();
        assert_eq!(done.events, 3);
        let lines: Vec<serde_json::Value> = String::from_utf8(scores)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["index"], i);
            let s = l["score"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&s));
            assert!(l["reasons"].is_array() && l["alert"].is_boolean());
        }
        let features = String::from_utf8(features).unwrap();
        let header: Vec<String> = serde_json::from_str(features.lines().next().unwrap()).unwrap();
        assert_eq!(header.len(), SIGNALS.len());
        assert_eq!(features.lines().count(), 4);
    }

    #[test]
    fn lines_that_are_not_utf8_or_too_long_are_refused_by_number() {
        let mut bad = format!("{LINE}\n").into_bytes();
        bad.extend_from_slice(&LINE.as_bytes()[..40]);
        bad.push(0xff);
        bad.extend_from_slice(&LINE.as_bytes()[40..]);
        let long = format!("{LINE}\n{}\n", " ".repeat(MAX_LINE + 1)).into_bytes();
        for (input, says) in [(bad, "not UTF-8"), (long, "longer than")] {
            let e = replay(
                &mut Detector::new(&Roster::default()),
                &mut Attacks::default(),
                &input[..],
                Vec::new(),
                None,
                |_| {},
            )
            .unwrap_err()
            .to_string();
            assert!(e.starts_with("line 2: ") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn failed_sign_ins_score_zero_and_the_line_that_completes_an_attack_carries_it() {
        let login = |i: u32| {
            format!(
                r#"{{"time":"2026-11-01T08:{:02}:{:02}Z","user":"","action":"login","outcome":"denied","address":"198.51.100.7","why":"bad-credentials"}}"#,
                i / 60,
                i % 60
            )
        };
        let input: String = (0..25).map(|i| login(i * 7) + "\n").collect();
        let mut scores = Vec::new();
        let done = replay(
            &mut Detector::new(&Roster::default()),
            &mut Attacks::default(),
            input.as_bytes(),
            &mut scores,
            None,
            |_| {},
        )
        .unwrap();
        assert_eq!((done.events, done.alerts, done.attacks), (25, 0, 1));
        let lines: Vec<serde_json::Value> = String::from_utf8(scores)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.iter().all(|l| l["score"] == 0.0));
        let with: Vec<usize> = (0..25)
            .filter(|i| lines[*i].get("attacks").is_some())
            .collect();
        assert_eq!(with, [19]);
        let attack = &lines[19]["attacks"][0];
        assert_eq!(attack["kind"], "credential-stuffing");
        assert_eq!(attack["actor"], "address:198.51.100.7");
        assert_eq!(attack["reasons"]["failed_logins_10min"], 20);
    }

    #[test]
    fn a_bad_line_is_named_and_stops_the_replay() {
        for (bad, says) in [
            ("{\"time\":", "EOF"),
            ("", "empty line"),
            (
                r#"{"time":"2026-11-01T08:00:00Z","user":"u","action":"read","outcome":"maybe"}"#,
                "maybe",
            ),
        ] {
            let input = format!("{LINE}\n{bad}\n{LINE}\n");
            let mut scores = Vec::new();
            let e = replay(
                &mut Detector::new(&Roster::default()),
                &mut Attacks::default(),
                input.as_bytes(),
                &mut scores,
                None,
                |_| {},
            )
            .unwrap_err();
            let message = e.to_string();
            assert!(
                message.starts_with("line 2: ") && message.contains(says),
                "{message}"
            );
            assert_eq!(String::from_utf8(scores).unwrap().lines().count(), 1);
        }
    }
}
