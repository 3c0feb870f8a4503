//! What a patient's FHIR R4 `Consent` resources say about one access.
//!
//! A consent speaks when it is `active`, its `provision.period` (if any) covers the time, and its
//! base provision's conditions (actor, purpose, resource class, security label) match the
//! access; its verdict is the base provision's `type`, overridden by matching nested provisions
//! (exceptions), among which a deny wins. Across consents the latest (`dateTime`) that speaks
//! decides. Times are compared as RFC 3339 instants in UTC (`…Z`), which order as text; a
//! consent or period with another form of time speaks for nothing (fail safe: no permit comes
//! from a malformed consent, and a deny only where it is well formed).

use serde_json::Value;

use crate::ConsentState;

/// The facts of an access a consent may speak to.
#[derive(Debug, Clone)]
pub struct ConsentRequest<'a> {
    /// References identifying the actor (`Practitioner/…`, `Organization/…`, `PractitionerRole/…`).
    pub actors: &'a [String],
    /// Purpose of use (HL7 v3 code), if declared.
    pub purpose: Option<&'a str>,
    /// The resource type accessed.
    pub resource_type: &'a str,
    /// The resource's security labels (codes).
    pub labels: &'a [String],
    /// When, RFC 3339 UTC (`2026-11-30T10:00:00Z`).
    pub at: &'a str,
}

fn utc(s: &str) -> Option<&str> {
    (s.len() >= 20 && s.ends_with('Z') && s.as_bytes().get(10) == Some(&b'T')).then_some(s)
}

/// True if `period` (a FHIR Period, possibly absent) covers `at`.
fn in_period(period: Option<&Value>, at: &str) -> bool {
    let Some(p) = period else { return true };
    let bound = |k: &str| p.get(k).and_then(Value::as_str);
    let start_ok = match bound("start") {
        None => true,
        Some(s) => utc(s).is_some_and(|s| s <= at),
    };
    let end_ok = match bound("end") {
        None => true,
        Some(e) => utc(e).is_some_and(|e| at <= e),
    };
    start_ok && end_ok
}

fn codes(list: Option<&Value>) -> impl Iterator<Item = &str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("code").and_then(Value::as_str))
}

/// True if a provision's own conditions match the request (an absent condition matches all).
fn matches(p: &Value, r: &ConsentRequest<'_>) -> bool {
    if !in_period(p.get("period"), r.at) {
        return false;
    }
    if let Some(actors) = p.get("actor").and_then(Value::as_array)
        && !actors.iter().any(|a| {
            a.pointer("/reference/reference")
                .and_then(Value::as_str)
                .is_some_and(|refr| r.actors.iter().any(|x| x == refr))
        })
    {
        return false;
    }
    if p.get("purpose").is_some() && !codes(p.get("purpose")).any(|c| Some(c) == r.purpose) {
        return false;
    }
    if p.get("class").is_some() && !codes(p.get("class")).any(|c| c == r.resource_type) {
        return false;
    }
    if p.get("securityLabel").is_some()
        && !codes(p.get("securityLabel")).any(|c| r.labels.iter().any(|l| l == c))
    {
        return false;
    }
    true
}

fn kind(p: &Value) -> Option<ConsentState> {
    match p.get("type").and_then(Value::as_str) {
        Some("deny") => Some(ConsentState::Deny),
        Some("permit") => Some(ConsentState::Permit),
        _ => None,
    }
}

/// One consent's verdict on the request, if it speaks to it.
fn verdict(consent: &Value, r: &ConsentRequest<'_>) -> Option<ConsentState> {
    if consent.get("resourceType").and_then(Value::as_str) != Some("Consent")
        || consent.get("status").and_then(Value::as_str) != Some("active")
    {
        return None;
    }
    let base = consent.get("provision")?;
    if !matches(base, r) {
        return None;
    }
    let exceptions: Vec<ConsentState> = base
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| matches(p, r))
        .filter_map(kind)
        .collect();
    if exceptions.contains(&ConsentState::Deny) {
        return Some(ConsentState::Deny);
    }
    if let Some(first) = exceptions.first() {
        return Some(*first);
    }
    kind(base)
}

/// What the patient's consents say about the request: the latest consent (by `dateTime`) that
/// speaks decides; [`ConsentState::None`] when none does.
pub fn evaluate(consents: &[Value], r: &ConsentRequest<'_>) -> ConsentState {
    let mut speaking: Vec<(&str, ConsentState)> = consents
        .iter()
        .filter_map(|c| {
            let when = c.get("dateTime").and_then(Value::as_str).and_then(utc)?;
            verdict(c, r).map(|v| (when, v))
        })
        .collect();
    // Latest first; at the same instant a deny wins.
    speaking.sort_by(|a, b| {
        b.0.cmp(a.0)
            .then_with(|| (b.1 == ConsentState::Deny).cmp(&(a.1 == ConsentState::Deny)))
    });
    speaking.first().map_or(ConsentState::None, |(_, v)| *v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn consent(when: &str, provision: Value) -> Value {
        json!({"resourceType": "Consent", "status": "active", "dateTime": when, "provision": provision})
    }

    fn req<'a>(
        actors: &'a [String],
        labels: &'a [String],
        purpose: Option<&'a str>,
    ) -> ConsentRequest<'a> {
        ConsentRequest {
            actors,
            purpose,
            resource_type: "Observation",
            labels,
            at: "2026-11-30T10:00:00Z",
        }
    }

    #[test]
    fn denies_win_inside_a_consent_and_the_latest_consent_wins_across() {
        let dr = vec!["Practitioner/dr-a".to_owned()];
        let other = vec!["Practitioner/dr-b".to_owned()];
        let none: Vec<String> = vec![];
        let hiv = vec!["HIV".to_owned()];
        // Permit everyone, except Dr A, and except HIV-labelled data for anyone.
        let c1 = consent(
            "2026-01-01T00:00:00Z",
            json!({
                "type": "permit",
                "provision": [
                    {"type": "deny", "actor": [{"reference": {"reference": "Practitioner/dr-a"}}]},
                    {"type": "deny", "securityLabel": [{"code": "HIV"}]},
                ]
            }),
        );
        let all = [c1.clone()];
        assert_eq!(
            evaluate(&all, &req(&other, &none, Some("TREAT"))),
            ConsentState::Permit
        );
        assert_eq!(
            evaluate(&all, &req(&dr, &none, Some("TREAT"))),
            ConsentState::Deny
        );
        assert_eq!(
            evaluate(&all, &req(&other, &hiv, Some("TREAT"))),
            ConsentState::Deny
        );
        // A later consent permitting Dr A for treatment overrides the earlier deny.
        let c2 = consent(
            "2026-06-01T00:00:00Z",
            json!({
                "type": "permit",
                "actor": [{"reference": {"reference": "Practitioner/dr-a"}}],
                "purpose": [{"code": "TREAT"}],
            }),
        );
        let both = [c1.clone(), c2.clone()];
        assert_eq!(
            evaluate(&both, &req(&dr, &none, Some("TREAT"))),
            ConsentState::Permit
        );
        // For research it does not speak, so the earlier deny stands.
        assert_eq!(
            evaluate(&both, &req(&dr, &none, Some("HRESCH"))),
            ConsentState::Deny
        );
        // Inactive, expired, malformed or future consents say nothing.
        let mut inactive = c2.clone();
        inactive["status"] = json!("inactive");
        let expired = consent(
            "2026-06-01T00:00:00Z",
            json!({
                "type": "deny", "period": {"end": "2026-07-01T00:00:00Z"}
            }),
        );
        let local_time = consent("2026-06-01T00:00:00+02:00", json!({"type": "deny"}));
        let future = consent(
            "2026-06-01T00:00:00Z",
            json!({
                "type": "deny", "period": {"start": "2027-01-01T00:00:00Z"}
            }),
        );
        for c in [inactive, expired, local_time, future] {
            assert_eq!(
                evaluate(std::slice::from_ref(&c), &req(&other, &none, None)),
                ConsentState::None,
                "{c}"
            );
        }
        assert_eq!(evaluate(&[], &req(&other, &none, None)), ConsentState::None);
        // Two consents at the same instant that disagree: the deny wins.
        let p = consent("2026-08-01T00:00:00Z", json!({"type": "permit"}));
        let d = consent("2026-08-01T00:00:00Z", json!({"type": "deny"}));
        assert_eq!(
            evaluate(&[p, d], &req(&other, &none, None)),
            ConsentState::Deny
        );
    }
}
