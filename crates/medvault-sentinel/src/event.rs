//! The replay formats: one access event, and the roster of users and patients.
//!
//! Both hold no PHI: names and addresses are opaque tokens (equal tokens mean equal values),
//! ids are the node's own. `docs/sentinel.md` is the reference for every field.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Read,
    Search,
    Create,
    Update,
    Delete,
    Export,
    Print,
    /// A sign-in attempt: `user` is the account the name belongs to, empty when it matched
    /// none (the node's own log; not in the minimal format).
    Login,
    /// A bundle delivered by a peer node: `user` is the sending node when its signature
    /// verified, empty otherwise (the node's own log; not in the minimal format).
    Receive,
}

impl Action {
    /// True for actions that change stored data.
    pub fn modifies(self) -> bool {
        matches!(self, Self::Create | Self::Update | Self::Delete)
    }
}

/// Whether the access was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Allowed,
    Denied,
}

/// The care relationship the access policy found between the user and the patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Relationship {
    CareTeam,
    Encounter,
    None,
}

/// One access, as a line of `EVENTS.jsonl`. Strings borrow from the line when they can.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Event<'a> {
    /// Seconds since the Unix epoch (RFC 3339 in the file).
    #[serde(
        deserialize_with = "rfc3339_seconds",
        serialize_with = "seconds_rfc3339"
    )]
    pub time: i64,
    #[serde(borrow)]
    pub user: Cow<'a, str>,
    #[serde(borrow, default)]
    pub role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub department: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub patient: Option<Cow<'a, str>>,
    pub action: Action,
    #[serde(borrow, default)]
    pub resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub purpose: Option<Cow<'a, str>>,
    pub outcome: Outcome,
    #[serde(default)]
    pub break_glass: bool,
    #[serde(default = "no_relationship")]
    pub relationship: Relationship,
    #[serde(borrow, default)]
    pub client: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub address: Option<Cow<'a, str>>,
    /// The HTTP status answered, when known (404 tells a missing id from a refused one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What was asked for (`Type/id`), when the request named one.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Cow<'a, str>>,
    /// Why it failed, in the node's words (`bad-credentials`, `replay`, …), when it did.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub why: Option<Cow<'a, str>>,
}

impl Event<'_> {
    /// True for events that are a person's or app's access to records (what the insider
    /// detector scores): not failed sign-ins, not anonymous requests, not peers' bundles.
    pub fn is_access(&self) -> bool {
        !self.user.is_empty()
            && match self.action {
                Action::Receive => false,
                Action::Login => self.outcome == Outcome::Allowed,
                _ => true,
            }
    }
}

fn no_relationship() -> Relationship {
    Relationship::None
}

/// Parses an RFC 3339 instant into seconds since the epoch.
///
/// # Errors
/// A message naming what is wrong with the text.
pub fn parse_time(text: &str) -> Result<i64, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))
}

/// `seconds` (since the epoch) as RFC 3339 in UTC, e.g. `2026-11-01T08:00:00Z`.
pub fn format_time(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

fn seconds_rfc3339<S: Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn opt_seconds_rfc3339<S: Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_time(*t)),
        None => s.serialize_none(),
    }
}

fn rfc3339_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = Cow::<'de, str>::deserialize(d)?;
    parse_time(&text).map_err(serde::de::Error::custom)
}

fn opt_rfc3339_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Cow<'de, str>>::deserialize(d)?
        .map(|t| parse_time(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// `ROSTER.json`: who works where and when, and what is known about each patient.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    #[serde(default)]
    pub users: Vec<RosterUser>,
    #[serde(default)]
    pub patients: Vec<RosterPatient>,
}

/// A member of staff (or any account that appears in the log).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RosterUser {
    pub id: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    #[serde(default)]
    pub family_token: Option<String>,
    #[serde(default)]
    pub address_token: Option<String>,
    #[serde(default)]
    pub shift: Option<Shift>,
}

/// A daily working window in UTC; `end` before `start` runs past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shift {
    /// Minutes after midnight.
    pub start: u16,
    /// Minutes after midnight.
    pub end: u16,
}

impl Shift {
    /// Minutes from `minute_of_day` to the nearest edge of the shift; 0 inside it.
    pub fn minutes_outside(self, minute_of_day: u16) -> u16 {
        let inside = if self.start <= self.end {
            (self.start..self.end).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start || minute_of_day < self.end
        };
        if inside {
            return 0;
        }
        let day = 24 * 60;
        let dist = |a: u16, b: u16| {
            let d = a.abs_diff(b);
            d.min(day - d)
        };
        dist(minute_of_day, self.start).min(dist(minute_of_day, self.end))
    }
}

impl Serialize for Shift {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Raw {
            start: String,
            end: String,
        }
        let hhmm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        Raw {
            start: hhmm(self.start),
            end: hhmm(self.end),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Shift {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw<'a> {
            #[serde(borrow)]
            start: Cow<'a, str>,
            #[serde(borrow)]
            end: Cow<'a, str>,
        }
        let raw = Raw::deserialize(d)?;
        let minutes = |t: &str| -> Result<u16, D::Error> {
            let bad = || serde::de::Error::custom(format!("shift time `{t}` is not HH:MM"));
            let (h, m) = t.split_once(':').ok_or_else(bad)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 24 || m > 59 || (h == 24 && m > 0) || t.len() != 5 {
                return Err(bad());
            }
            Ok((h * 60 + m) % (24 * 60))
        };
        Ok(Self {
            start: minutes(&raw.start)?,
            end: minutes(&raw.end)?,
        })
    }
}

/// A patient the log may name.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RosterPatient {
    pub id: String,
    #[serde(default)]
    pub family_token: Option<String>,
    #[serde(default)]
    pub address_token: Option<String>,
    #[serde(default)]
    pub vip: bool,
    /// The user whose own record this is, when the patient is a member of staff.
    #[serde(default)]
    pub employee_user: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_rfc3339_seconds",
        serialize_with = "opt_seconds_rfc3339"
    )]
    pub deceased_at: Option<i64>,
    /// Departments that have cared for the patient.
    #[serde(default)]
    pub departments: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_line_parses_with_its_optional_fields_absent() {
        let e: Event<'_> = serde_json::from_str(
            r#"{"time":"2026-11-01T08:00:00Z","user":"u1","action":"read","outcome":"denied","relationship":"care-team"}"#,
        )
        .unwrap();
        assert_eq!(e.time, 1_793_520_000);
        assert_eq!(e.action, Action::Read);
        assert_eq!(e.outcome, Outcome::Denied);
        assert_eq!(e.relationship, Relationship::CareTeam);
        assert!(e.patient.is_none() && !e.break_glass);
    }

    #[test]
    fn events_and_rosters_written_read_back_the_same() {
        let line = r#"{"time":"2026-11-01T08:00:00Z","user":"u1","role":"nurse","department":null,"patient":"p1","action":"login","resource_type":null,"purpose":null,"outcome":"denied","break_glass":false,"relationship":"none","client":null,"address":"10.0.0.1","status":401,"why":"bad-credentials"}"#;
        let e: Event<'_> = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), line);
        let roster = r#"{"users":[{"id":"u1","role":"nurse","department":"icu","family_token":"f","address_token":null,"shift":{"start":"22:00","end":"06:30"}}],"patients":[{"id":"p1","family_token":null,"address_token":null,"vip":true,"employee_user":null,"deceased_at":"2026-10-01T00:00:00Z","departments":[]}]}"#;
        let r: Roster = serde_json::from_str(roster).unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), roster);
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        for (line, says) in [
            (
                r#"{"time":"yesterday","user":"u","action":"read","outcome":"allowed"}"#,
                "RFC 3339",
            ),
            (
                r#"{"time":"2026-11-01T08:00:00Z","user":"u","action":"peek","outcome":"allowed"}"#,
                "peek",
            ),
            (
                r#"{"time":"2026-11-01T08:00:00Z","action":"read","outcome":"allowed"}"#,
                "user",
            ),
        ] {
            let e = serde_json::from_str::<Event<'_>>(line)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn shifts_past_midnight_and_distances_to_their_edges() {
        let night: Shift = serde_json::from_str(r#"{"start":"19:00","end":"07:00"}"#).unwrap();
        assert_eq!(night.minutes_outside(23 * 60), 0);
        assert_eq!(night.minutes_outside(6 * 60), 0);
        assert_eq!(night.minutes_outside(8 * 60), 60);
        assert_eq!(night.minutes_outside(18 * 60), 60);
        let day: Shift = serde_json::from_str(r#"{"start":"08:00","end":"17:00"}"#).unwrap();
        assert_eq!(day.minutes_outside(7 * 60 + 30), 30);
        assert_eq!(day.minutes_outside(2 * 60), 6 * 60);
        for bad in [
            r#"{"start":"8:00","end":"17:00"}"#,
            r#"{"start":"25:00","end":"17:00"}"#,
        ] {
            assert!(serde_json::from_str::<Shift>(bad).is_err());
        }
    }
}
