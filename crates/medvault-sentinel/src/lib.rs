//! medvault's Sentinel: scores every access-log event for insider snooping, with the reasons
//! that produced the score, and finds attacks in the same stream ([`attacks`]).
//!
//! The detector ([`Detector`]) reads events in time order and only looks backwards, so the same
//! code scores a live node's access log as it is written and a replayed file
//! ([`replay::replay`], `medvault sentinel replay`). The replay formats ([`event`]) hold no
//! PHI: names and addresses are opaque tokens. `docs/sentinel.md` describes the formats, the
//! signals and how the detector was measured.

pub mod attacks;
pub mod detector;
pub mod event;
pub mod replay;

pub use attacks::{Actor, AttackAlert, AttackKind, Attacks, Limits};
pub use detector::{DEFAULT_THRESHOLD, Detector, Reason, SIGNALS, Score, Signal};
pub use event::{Action, Event, Outcome, Relationship, Roster, RosterPatient, RosterUser};
