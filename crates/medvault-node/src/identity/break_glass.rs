//! Break-glass: emergency access to one patient's records outside the care relationships the
//! policy knows, for emergency treatment.
//!
//! A clinician or nurse, signed in with a second factor within the step-up window, opens it with
//! `POST /auth/break-glass` `{"patient": ID, "reason": TEXT, "minutes": N}`: a written
//! justification (at least [`MIN_REASON`] characters) and a time box (default
//! [`DEFAULT_MINUTES`], at most the configured maximum). Requests that declare the purpose
//! `X-Purpose-Of-Use: ETREAT` may then read that patient's records, through the policy's
//! `break-glass` rule, until it expires. The opening is recorded in the access log with its
//! justification (sealed, as every audit detail is), every request it opens is marked in the
//! access log, and it raises an alert the privacy officer reviews and acknowledges
//! (`GET /privacy/alerts`, `POST /privacy/alerts/{id}/acknowledge`).

use std::time::Duration;

use medvault_core::{ResourceId, ResourceType};
use medvault_store::{AlertRow, BreakGlassRow, write_with};
use serde_json::{Value, json};

use crate::clock::instant;
use crate::error::Error;
use crate::identity::{identity_key, open as open_sealed, random_id, seal};
use crate::node::Node;

/// Shortest justification accepted.
pub const MIN_REASON: usize = 20;
/// Longest justification accepted.
pub const MAX_REASON: usize = 2000;
/// Time box when none is asked for, minutes.
pub const DEFAULT_MINUTES: u64 = 60;
/// The sealing context of alert details (bound to the alert id).
pub(crate) const ALERT_FIELD: &str = "alert";

/// A break-glass grant just opened.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The grant's id (`bg_…`).
    pub grant: String,
    /// The privacy officer's alert about it (`alr_…`).
    pub alert: String,
    /// The alert's detail (grant, justification, expiry, purpose), for the access log.
    pub detail: Value,
    /// When the grant expires, microseconds.
    pub expires_micros: i64,
}

/// Opens break-glass access for `user_id` to `patient`'s records (blocking): checks the
/// justification and the time box (`minutes`, default [`DEFAULT_MINUTES`], at most `max`),
/// stores the grant and raises the alert.
///
/// # Errors
/// 400 for a justification or time box out of bounds; 404 for no such patient.
pub fn open(
    node: &Node,
    user_id: &str,
    patient: &ResourceId,
    reason: &str,
    minutes: Option<u64>,
    max: Duration,
    now: i64,
) -> Result<Opened, Error> {
    let reason = reason.trim().to_owned();
    let chars = reason.chars().count();
    // Only visible characters count toward the minimum; control characters are refused.
    let visible = reason
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .count();
    if reason
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
        || visible < MIN_REASON
        || chars > MAX_REASON
    {
        return Err(Error::bad_request(format!(
            "the justification must be {MIN_REASON} to {MAX_REASON} visible characters (no control characters): say what the emergency is"
        )));
    }
    let max = max.as_secs() / 60;
    let minutes = minutes.unwrap_or(DEFAULT_MINUTES.min(max));
    if minutes == 0 || minutes > max {
        return Err(Error::bad_request(format!("minutes must be 1 to {max}")));
    }
    let patient_id = patient.to_string();
    let expires = now.saturating_add(i64::try_from(minutes * 60_000_000).unwrap_or(i64::MAX));
    // A grant for no patient would be an alert about nothing.
    if node
        .store
        .current(&ResourceType::PATIENT, patient)?
        .is_none_or(|c| c.deleted)
    {
        return Err(Error::not_found("no such patient"));
    }
    let key = identity_key(node)?;
    let grant_id = random_id("bg_")?;
    let alert_id = random_id("alr_")?;
    let detail = json!({
        "grant": grant_id,
        "reason": reason,
        "expires": instant(expires),
        "purpose": crate::authz::EMERGENCY,
    });
    let detail_bytes = zeroize::Zeroizing::new(detail.to_string().into_bytes());
    let grant = BreakGlassRow {
        id: grant_id.clone(),
        user_id: user_id.to_owned(),
        patient: patient_id.clone(),
        reason: seal(&key, &grant_id, "reason", reason.as_bytes())?,
        opened_micros: now,
        expires_micros: expires,
    };
    let alert = AlertRow {
        id: alert_id.clone(),
        kind: "break-glass".into(),
        at_micros: now,
        user_id: user_id.to_owned(),
        patient: Some(patient_id),
        detail: seal(&key, &alert_id, ALERT_FIELD, &detail_bytes)?,
        acknowledged_by: None,
        acknowledged_micros: None,
        verdict: None,
        note: None,
    };
    write_with(node.store.as_ref(), move |tx| {
        tx.put_break_glass(&grant)?;
        tx.put_alert(&alert)
    })?;
    Ok(Opened {
        grant: grant_id,
        alert: alert_id,
        detail,
        expires_micros: expires,
    })
}

/// The privacy officer's alerts (open ones only, or all), newest first, with their details
/// opened (blocking).
///
/// # Errors
/// Store failures; 500 if a detail does not open.
pub fn list_alerts(node: &Node, open_only: bool) -> Result<Vec<Value>, Error> {
    let key = identity_key(node)?;
    let mut out = Vec::new();
    for a in node.store.alerts(open_only)? {
        let plain = open_sealed(&key, &a.id, ALERT_FIELD, &a.detail)?;
        let detail: Value = serde_json::from_slice(&plain).map_err(|e| Error::internal(&e))?;
        out.push(json!({
            "id": a.id,
            "kind": a.kind,
            "time": instant(a.at_micros),
            "user": a.user_id,
            "patient": a.patient,
            "detail": detail,
            "acknowledged_by": a.acknowledged_by,
            "acknowledged": a.acknowledged_micros.map(instant),
        }));
    }
    Ok(out)
}

/// Acknowledges the open alert `id` (by `by`, at `at` microseconds), blocking; false if there
/// is no open alert with that id.
///
/// # Errors
/// Store failures.
pub fn acknowledge_alert(node: &Node, id: &str, by: &str, at: i64) -> Result<bool, Error> {
    let (alert, by) = (id.to_owned(), by.to_owned());
    Ok(write_with(node.store.as_ref(), move |tx| {
        tx.acknowledge_alert(&alert, &by, at)
    })?)
}
