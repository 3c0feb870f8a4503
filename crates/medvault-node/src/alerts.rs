//! The privacy officer's queue: alerts of every kind (break-glass, Sentinel's insider scores,
//! attacks) a page at a time, one alert with what was done about it and the access timelines
//! of its user and patient, and the officer's verdict (confirmed or dismissed, with a reason),
//! which tunes Sentinel's thresholds ([`thresholds`]).

use std::collections::HashMap;

use medvault_store::{AlertQuery, AlertRow, write_with};
use serde_json::{Value, json};

use crate::clock::instant;
use crate::error::Error;
use crate::identity::break_glass::ALERT_FIELD;
use crate::identity::{identity_key, open as open_sealed, seal};
use crate::node::Node;

/// Alerts a page holds at most.
pub const MAX_PAGE: u32 = 200;
/// Entries each timeline holds at most.
const TIMELINE: usize = 50;
/// Access-log leaves a timeline looks through before the alert's, and after it.
const TIMELINE_BEFORE: u64 = 5_000;
const TIMELINE_AFTER: u64 = 1_000;
/// The longest reason a verdict takes.
pub const MAX_REASON: usize = 2_000;

/// A verdict on an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The access was improper (or the attack real).
    Confirmed,
    /// A false alarm.
    Dismissed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Dismissed => "dismissed",
        }
    }

    /// The verdict named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "confirmed" => Some(Self::Confirmed),
            "dismissed" => Some(Self::Dismissed),
            _ => None,
        }
    }
}

/// An alert as the API shows it, its detail and verdict reason opened.
///
/// # Errors
/// 500 if a sealed field does not open.
pub fn alert_json(node: &Node, a: &AlertRow) -> Result<Value, Error> {
    let key = identity_key(node)?;
    let plain = open_sealed(&key, &a.id, ALERT_FIELD, &a.detail)?;
    let detail: Value = serde_json::from_slice(&plain).map_err(|e| Error::internal(&e))?;
    let reason = match &a.note {
        Some(n) => Some(
            String::from_utf8(open_sealed(&key, &a.id, NOTE_FIELD, n)?.to_vec())
                .map_err(|e| Error::internal(&e))?,
        ),
        None => None,
    };
    Ok(json!({
        "id": a.id,
        "kind": a.kind,
        "time": instant(a.at_micros),
        "user": (!a.user_id.is_empty()).then_some(&a.user_id),
        "patient": a.patient,
        "detail": detail,
        "acknowledged_by": a.acknowledged_by,
        "acknowledged": a.acknowledged_micros.map(instant),
        "verdict": a.verdict,
        "verdict_reason": reason,
    }))
}

/// The sealed field of a verdict's reason.
const NOTE_FIELD: &str = "alert-verdict";

/// A page of the queue, newest first, and the cursor of the next page (`before`), if any.
///
/// # Errors
/// Store failures; 500 if a detail does not open.
pub fn page(node: &Node, q: &AlertQuery<'_>) -> Result<(Vec<Value>, Option<String>), Error> {
    let limit = q.limit.clamp(1, MAX_PAGE);
    let rows = node.store.alerts_page(&AlertQuery {
        limit: limit + 1,
        ..*q
    })?;
    let more = rows.len() > limit as usize;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next = more
        .then(|| rows.last().map(|a| format!("{}.{}", a.at_micros, a.id)))
        .flatten();
    let list = rows
        .iter()
        .map(|a| alert_json(node, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((list, next))
}

/// Parses a page cursor (`AT.ID`, from [`page`]).
pub fn parse_cursor(text: &str) -> Option<(i64, &str)> {
    let (at, id) = text.split_once('.')?;
    id.starts_with("alr_").then_some((at.parse().ok()?, id))
}

/// One alert with the responses it set off and the access timelines of its user and patient
/// around it; `None` if there is no such alert.
///
/// # Errors
/// Store failures; 500 if a detail does not open.
pub fn detail(node: &Node, id: &str) -> Result<Option<Value>, Error> {
    let Some(a) = node.store.alert(id)? else {
        return Ok(None);
    };
    let mut out = alert_json(node, &a)?;
    // In the order they were decided (the store lists newest first).
    let responses: Vec<Value> = node
        .store
        .responses(Some(id), None, 100)?
        .iter()
        .rev()
        .map(crate::responses::response_json)
        .collect();
    out["responses"] = json!(responses);
    let leaf = out["detail"]["leaf"].as_u64();
    let (user, patient) = timelines(
        node,
        leaf,
        (!a.user_id.is_empty()).then_some(a.user_id.as_str()),
        a.patient.as_deref(),
    )?;
    out["user_timeline"] = json!(user);
    out["patient_timeline"] = json!(patient);
    Ok(Some(out))
}

/// The accesses of `user` and to `patient` in the access log around `leaf` (the last ones when
/// the alert names no leaf), oldest first: what the officer reads to judge the alert.
fn timelines(
    node: &Node,
    leaf: Option<u64>,
    user: Option<&str>,
    patient: Option<&str>,
) -> Result<(Vec<Value>, Vec<Value>), Error> {
    let size = node.access.ledger_size()?;
    let (archived, _) =
        crate::archive::archived(node.access.as_ref()).map_err(|e| Error::internal(&e))?;
    let centre = leaf.unwrap_or(size).min(size);
    let start = centre.saturating_sub(TIMELINE_BEFORE).max(archived);
    let end = (centre + TIMELINE_AFTER).min(size);
    let (mut of_user, mut of_patient) = (Vec::new(), Vec::new());
    let mut at = start;
    while at < end {
        let n = (end - at).min(1024);
        for (leaf, d) in node.access.audit_details(at, n)? {
            let Ok(rec) = node.ledger.open_audit(&d) else {
                continue;
            };
            if user.is_some_and(|u| agent_of(&rec) == Some(u)) {
                of_user.push(entry(leaf, &rec));
            }
            if patient.is_some_and(|p| crate::audit_view::names_patient(&rec, p)) {
                of_patient.push(entry(leaf, &rec));
            }
        }
        at += n;
    }
    // The entries nearest the alert.
    let near = |list: Vec<Value>| -> Vec<Value> {
        let centre = leaf.unwrap_or(u64::MAX);
        let mut list = list;
        list.sort_by_key(|e| e["leaf"].as_u64().unwrap_or(0).abs_diff(centre));
        list.truncate(TIMELINE);
        list.sort_by_key(|e| e["leaf"].as_u64().unwrap_or(0));
        list
    };
    Ok((near(of_user), near(of_patient)))
}

fn agent_of(rec: &Value) -> Option<&str> {
    rec.pointer("/agent/token").and_then(Value::as_str)
}

/// A timeline entry: what, when, who, whom, how it ended (no resource content).
fn entry(leaf: u64, rec: &Value) -> Value {
    json!({
        "leaf": leaf,
        "time": rec.get("time"),
        "interaction": rec.get("interaction"),
        "outcome": rec.get("outcome"),
        "user": agent_of(rec),
        "role": rec.pointer("/agent/role"),
        "resource_type": rec.get("resource_type"),
        "patient": rec.get("patient"),
        "purpose": rec.get("purpose"),
        "break_glass": rec.pointer("/policy/break_glass")
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty()),
        "address": rec.get("address"),
    })
}

/// Records `by`'s verdict on alert `id` with its reason (sealed): false if there is no such
/// alert or it was judged already.
///
/// # Errors
/// Store and key failures.
pub fn judge(
    node: &Node,
    id: &str,
    by: &str,
    verdict: Verdict,
    reason: &str,
) -> Result<bool, Error> {
    let key = identity_key(node)?;
    let note = seal(&key, id, NOTE_FIELD, reason.as_bytes())?;
    let now = node.clock.now_micros();
    let (alert, who) = (id.to_owned(), by.to_owned());
    Ok(write_with(node.store.as_ref(), move |tx| {
        tx.judge_alert(&alert, &who, now, verdict.name(), Some(&note))
    })?)
}

/// Verdicts older than this do not tune thresholds.
pub const VERDICT_WINDOW_MICROS: i64 = 90 * 86_400 * 1_000_000;
/// The most a role's threshold moves from the configured one, either way.
pub const MAX_SHIFT: f64 = 0.1;
/// Verdicts on a role's alerts before its shift is at full strength.
const FULL_AFTER: f64 = 20.0;

/// Sentinel's alert threshold per role, tuned by the officers' verdicts on its insider alerts
/// of the last 90 days: mostly dismissed raises it (fewer false alarms), mostly confirmed
/// lowers it (catch more), by at most [`MAX_SHIFT`], growing with the number of verdicts.
/// `(role, threshold, confirmed, dismissed)` for every role with a verdict.
///
/// # Errors
/// Store failures.
pub fn thresholds(node: &Node, base: f64) -> Result<Vec<(String, f64, u32, u32)>, Error> {
    let since = node.clock.now_micros() - VERDICT_WINDOW_MICROS;
    let mut by_role: HashMap<String, (u32, u32)> = HashMap::new();
    let mut roles: HashMap<String, Option<String>> = HashMap::new();
    for (kind, user, verdict) in node.store.verdicts(since)? {
        if kind != crate::sentinel::ALERT_KIND {
            continue;
        }
        if !roles.contains_key(&user) {
            let role = node.store.user(&user)?.map(|u| u.role);
            roles.insert(user.clone(), role);
        }
        let Some(Some(role)) = roles.get(&user) else {
            continue;
        };
        let e = by_role.entry(role.clone()).or_default();
        match Verdict::parse(&verdict) {
            Some(Verdict::Confirmed) => e.0 += 1,
            Some(Verdict::Dismissed) => e.1 += 1,
            None => {}
        }
    }
    let mut out: Vec<(String, f64, u32, u32)> = by_role
        .into_iter()
        .map(|(role, (c, d))| (role, tuned(base, c, d), c, d))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `base` moved by `confirmed` and `dismissed` verdicts (see [`thresholds`]).
pub fn tuned(base: f64, confirmed: u32, dismissed: u32) -> f64 {
    let (c, d) = (f64::from(confirmed), f64::from(dismissed));
    // Laplace-smoothed share of alerts that were real, against an even split.
    let precision = (c + 1.0) / (c + d + 2.0);
    let strength = ((c + d) / FULL_AFTER).min(1.0);
    (base + 2.0 * MAX_SHIFT * (0.5 - precision) * strength).clamp(0.5, 0.99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dismissals_raise_confirmations_lower_and_few_verdicts_barely_move() {
        assert!((tuned(0.85, 0, 0) - 0.85).abs() < 1e-9);
        let mostly_false = tuned(0.85, 1, 40);
        assert!(
            mostly_false > 0.93 && mostly_false <= 0.85 + MAX_SHIFT,
            "{mostly_false}"
        );
        let mostly_real = tuned(0.85, 40, 1);
        assert!(
            (0.85 - MAX_SHIFT..0.77).contains(&mostly_real),
            "{mostly_real}"
        );
        let early = tuned(0.85, 0, 2);
        assert!(early > 0.85 && early < 0.87, "{early}");
        assert!(tuned(0.98, 0, 100) <= 0.99);
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(parse_cursor("1700.alr_s12"), Some((1700, "alr_s12")));
        for bad in ["", "1700", "x.alr_1", "1700.usr_1", "1700."] {
            assert_eq!(parse_cursor(bad), None, "{bad}");
        }
    }
}
