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
    /// References identifying the actor (`Practitioner/…`, `Organization/…`, `PractitionerRole/…`,
    /// `CareTeam/…`), as a deny names them.
    pub actors: &'a [String],
    /// The references a permit may name them by, when narrower than `actors` (e.g. without the
    /// care teams they are no longer active on); `None`: the same as `actors`.
    pub permit_actors: Option<&'a [String]>,
    /// Purpose of use (HL7 v3 code), if declared.
    pub purpose: Option<&'a str>,
    /// The resource type accessed.
    pub resource_type: &'a str,
    /// The resource's security labels (codes).
    pub labels: &'a [String],
    /// When, RFC 3339 UTC (`2026-11-30T10:00:00Z`).
    pub at: &'a str,
}

/// A FHIR date or dateTime in UTC as `YYYY-MM-DDTHH:MM:SSZ` (fractions dropped). Partial
/// dates (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) are their first second, or as a period's `end` their
/// last; a time with any UTC offset (`Z`, `+01:00`, `-05:00`) is converted to UTC. Anything else
/// gives `None`.
fn utc(s: &str, end: bool) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
    let fmt = |t: OffsetDateTime| {
        let t = t.to_offset(UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let day_bound = |d: Date| {
        let time = if end {
            Time::from_hms(23, 59, 59).ok()?
        } else {
            Time::MIDNIGHT
        };
        Some(fmt(PrimitiveDateTime::new(d, time).assume_utc()))
    };
    match s.len() {
        4 | 7 | 10 => {
            let year = i32::try_from(num(0..4)?).ok()?;
            let (first, last) = if s.len() == 4 {
                (
                    Date::from_calendar_date(year, Month::January, 1).ok()?,
                    Date::from_calendar_date(year, Month::December, 31).ok()?,
                )
            } else {
                if s.as_bytes()[4] != b'-' {
                    return None;
                }
                let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
                if s.len() == 7 {
                    let first = Date::from_calendar_date(year, month, 1).ok()?;
                    let days = month.length(year);
                    (first, Date::from_calendar_date(year, month, days).ok()?)
                } else {
                    if s.as_bytes()[7] != b'-' {
                        return None;
                    }
                    let d = Date::from_calendar_date(year, month, u8::try_from(num(8..10)?).ok()?)
                        .ok()?;
                    (d, d)
                }
            };
            day_bound(if end { last } else { first })
        }
        _ => OffsetDateTime::parse(s, &Rfc3339).ok().map(fmt),
    }
}

/// True if `period` (a FHIR Period, possibly absent) covers `at`.
fn in_period(period: Option<&Value>, at: &str) -> bool {
    let Some(p) = period else { return true };
    let bound = |k: &str| p.get(k).and_then(Value::as_str);
    let start_ok = match bound("start") {
        None => true,
        Some(s) => utc(s, false).is_some_and(|s| s.as_str() <= at),
    };
    let end_ok = match bound("end") {
        None => true,
        Some(e) => utc(e, true).is_some_and(|e| at <= e.as_str()),
    };
    start_ok && end_ok
}

/// The members of `list` if it is an array; none if it is absent or not an array.
fn members(list: Option<&Value>) -> impl Iterator<Item = &Value> {
    list.and_then(Value::as_array).into_iter().flatten()
}

fn codes(list: Option<&Value>) -> impl Iterator<Item = &str> {
    members(list).filter_map(|c| c.get("code").and_then(Value::as_str))
}

/// True if a provision's own conditions match the request (an absent condition matches all).
fn matches(p: &Value, r: &ConsentRequest<'_>) -> bool {
    if !in_period(p.get("period"), r.at) {
        return false;
    }
    let deny = kind(p) == Some(ConsentState::Deny);
    let known_as = if deny {
        r.actors
    } else {
        r.permit_actors.unwrap_or(r.actors)
    };
    if let Some(actors) = p.get("actor").and_then(Value::as_array)
        && !actors.iter().any(|a| {
            a.pointer("/reference/reference")
                .and_then(Value::as_str)
                .is_some_and(|refr| {
                    known_as
                        .iter()
                        .any(|x| refr == x || refr.ends_with(&format!("/{x}")))
                })
        })
    {
        return false;
    }
    // A permit speaks for the purposes it names; a deny for their whole family (a deny for
    // treatment is not escaped by declaring operations: see `purpose`).
    // Codes are compared without regard to case: a patient's `treat` or `hiv` means what
    // `TREAT` and `HIV` mean, and a consent must not be disarmed by its spelling.
    if p.get("purpose").is_some()
        && !codes(p.get("purpose")).any(|c| {
            let c = c.to_ascii_uppercase();
            if deny {
                // No declared purpose: a purpose-specific deny applies (fail safe).
                r.purpose.is_none() || crate::purpose::deny_covers(&c, r.purpose)
            } else {
                Some(c.as_str()) == r.purpose
            }
        })
    {
        return false;
    }
    if p.get("class").is_some()
        && !codes(p.get("class")).any(|c| c.eq_ignore_ascii_case(r.resource_type))
    {
        return false;
    }
    if p.get("securityLabel").is_some()
        && !codes(p.get("securityLabel"))
            .any(|c| r.labels.iter().any(|l| l.eq_ignore_ascii_case(c)))
    {
        return false;
    }
    // Actions: reading for care is access, use and disclosure of the record.
    if let Some(actions) = p.get("action").and_then(Value::as_array)
        && !actions.iter().any(|a| {
            codes(a.get("coding")).any(|c| {
                ["access", "use", "disclose"]
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(c))
            })
        })
    {
        return false;
    }
    true
}

/// True if a provision has conditions this evaluator does not check (specific resources,
/// codes, the data's own period): a permit with them is narrower than it can tell, so it does
/// not speak; a deny with them is applied as if they were absent (broader, never less safe).
fn unevaluated(p: &Value) -> bool {
    ["data", "code", "dataPeriod"]
        .iter()
        .any(|k| p.get(k).is_some())
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
    // Only privacy consents govern access (research or treatment consents say other things).
    if let Some(scope) = consent.get("scope")
        && !codes(scope.get("coding")).any(|c| c == "patient-privacy")
    {
        return None;
    }
    let base = consent.get("provision")?;
    if !matches(base, r) || (unevaluated(base) && kind(base) != Some(ConsentState::Deny)) {
        return None;
    }
    let exceptions: Vec<ConsentState> = members(base.get("provision"))
        .filter(|p| matches(p, r))
        .filter_map(|p| kind(p).filter(|k| *k == ConsentState::Deny || !unevaluated(p)))
        .collect();
    if exceptions.contains(&ConsentState::Deny) {
        return Some(ConsentState::Deny);
    }
    if let Some(first) = exceptions.first() {
        return Some(*first);
    }
    kind(base)
}

/// Actor kinds the evaluator can match: the request's actor is the user's Practitioner, their
/// PractitionerRoles, those roles' Organizations and the CareTeams they are a member of.
pub const ACTOR_KINDS: [&str; 4] = [
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "CareTeam",
];

/// Checks that the evaluator can apply a consent as written, so nothing the patient decided is
/// stored inert. Applies to active privacy consents (`scope` `patient-privacy` or none):
/// `dateTime` present and a valid FHIR dateTime (any offset), every provision with a `type`,
/// its period's bounds valid dates, its actors references of [`ACTOR_KINDS`], and no permit
/// narrowed by conditions the evaluator does not check (`data`, `code`, `dataPeriod`: such a
/// permit would never speak). A deny with those conditions is accepted and applied broadly.
///
/// # Errors
/// A sentence naming the element and what to change, for a 422 answer.
pub fn check(consent: &Value, is_type: &dyn Fn(&str) -> bool) -> Result<(), String> {
    if consent.get("status").and_then(Value::as_str) != Some("active") {
        return Ok(());
    }
    if let Some(scope) = consent.get("scope")
        && !codes(scope.get("coding")).any(|c| c == "patient-privacy")
    {
        return Ok(());
    }
    match consent.get("dateTime").and_then(Value::as_str) {
        None => {
            return Err(
                "Consent.dateTime is required: the latest consent that applies decides".into(),
            );
        }
        Some(t) if utc(t, false).is_none() => {
            return Err("Consent.dateTime must be a FHIR dateTime with a time zone".into());
        }
        Some(_) => {}
    }
    let Some(base) = consent.get("provision") else {
        return Err(
            "Consent.provision is required: it says what the patient permits or denies".into(),
        );
    };
    check_provision(base, "Consent.provision", is_type)?;
    for (i, p) in members(base.get("provision")).enumerate() {
        check_provision(p, &format!("Consent.provision.provision[{i}]"), is_type)?;
        if p.get("provision").is_some() {
            return Err(format!(
                "Consent.provision.provision[{i}].provision: nested exceptions deeper than one level are not applied"
            ));
        }
    }
    Ok(())
}

fn check_provision(p: &Value, path: &str, is_type: &dyn Fn(&str) -> bool) -> Result<(), String> {
    let Some(kind) = kind(p) else {
        return Err(format!("{path}.type must be permit or deny"));
    };
    if let Some(period) = p.get("period") {
        let mut bounds = Vec::new();
        for (k, end) in [("start", false), ("end", true)] {
            if let Some(t) = period.get(k) {
                let Some(at) = t.as_str().and_then(|t| utc(t, end)) else {
                    return Err(format!(
                        "{path}.period.{k} must be a FHIR date or dateTime with a time zone"
                    ));
                };
                bounds.push(at);
            }
        }
        if let [start, end] = bounds.as_slice()
            && start > end
        {
            return Err(format!("{path}.period ends before it starts"));
        }
    }
    let coded = |field: &str| -> Vec<&str> {
        match p.get(field) {
            Some(Value::Array(items)) => items
                .iter()
                .flat_map(|i| {
                    // purpose and securityLabel are Codings; class is a Coding too.
                    i.get("code").and_then(Value::as_str)
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    // An element present but without codes would match nothing: the provision would be inert.
    for field in ["purpose", "class", "securityLabel"] {
        if let Some(v) = p.get(field) {
            let ok = v.as_array().is_some_and(|items| {
                !items.is_empty()
                    && items.iter().all(|i| {
                        i.get("code")
                            .and_then(Value::as_str)
                            .is_some_and(|c| !c.is_empty())
                    })
            });
            if !ok {
                return Err(format!("{path}.{field} must list codes (each with a code)"));
            }
        }
    }
    if let Some(actions) = p.get("action") {
        let ok = actions.as_array().is_some_and(|items| {
            !items.is_empty()
                && items
                    .iter()
                    .all(|a| codes(a.get("coding")).next().is_some())
        });
        if !ok {
            return Err(format!("{path}.action must list coded actions"));
        }
    }
    for c in coded("purpose") {
        if !crate::purpose::is_known(&c.to_ascii_uppercase()) {
            return Err(format!(
                "{path}.purpose: {c:?} is not a purpose of use this node knows (HL7 v3 PurposeOfUse, e.g. TREAT, HOPERAT, HRESCH)"
            ));
        }
    }
    for c in coded("class") {
        if !is_type(c) {
            return Err(format!(
                "{path}.class: {c:?} is not a FHIR resource type; this node applies classes by resource type"
            ));
        }
    }
    for a in members(p.get("action")) {
        for c in codes(a.get("coding")) {
            if !["access", "collect", "use", "disclose", "correct"]
                .iter()
                .any(|x| x.eq_ignore_ascii_case(c))
            {
                return Err(format!(
                    "{path}.action: {c:?} is not a consent action (access, collect, use, disclose, correct)"
                ));
            }
        }
    }
    for (i, a) in members(p.get("actor")).enumerate() {
        let refr = a.pointer("/reference/reference").and_then(Value::as_str);
        let kind_ok = refr.is_some_and(|r| {
            let mut parts = r.rsplit('/');
            let _id = parts.next();
            parts.next().is_some_and(|t| ACTOR_KINDS.contains(&t))
        });
        if !kind_ok {
            return Err(format!(
                "{path}.actor[{i}].reference must be a literal reference to a {}",
                ACTOR_KINDS.join(", ")
            ));
        }
    }
    if kind == ConsentState::Permit && unevaluated(p) {
        return Err(format!(
            "{path}: a permit limited by data, code or dataPeriod cannot be applied by this node; permit by actor, purpose, class or security label"
        ));
    }
    Ok(())
}

/// What the patient's consents say about the request: the latest consent (by `dateTime`) that
/// speaks decides; [`ConsentState::None`] when none does.
pub fn evaluate(consents: &[Value], r: &ConsentRequest<'_>) -> ConsentState {
    let Some(at) = utc(r.at, false) else {
        // No usable time: only a deny can be trusted to speak.
        return if consents
            .iter()
            .any(|c| verdict(c, r) == Some(ConsentState::Deny))
        {
            ConsentState::Deny
        } else {
            ConsentState::None
        };
    };
    let r = &ConsentRequest {
        at: &at,
        ..r.clone()
    };
    let mut speaking: Vec<(String, ConsentState)> = consents
        .iter()
        .filter_map(|c| {
            let when = c
                .get("dateTime")
                .and_then(Value::as_str)
                .and_then(|t| utc(t, false))?;
            // A consent dated in the future does not speak yet (so a back-dated or far-future
            // date cannot outrank the patient's later decisions).
            if when.as_str() > at.as_str() {
                return None;
            }
            verdict(c, r).map(|v| (when, v))
        })
        .collect();
    // Latest first; at the same instant a deny wins.
    speaking.sort_by(|a, b| {
        b.0.cmp(&a.0)
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
            permit_actors: None,
            purpose,
            resource_type: "Observation",
            labels,
            at: "2026-11-30T10:00:00Z",
        }
    }

    /// What `consents` decide for [`req`].
    fn decide(
        consents: &[Value],
        actors: &[String],
        labels: &[String],
        purpose: Option<&str>,
    ) -> ConsentState {
        evaluate(consents, &req(actors, labels, purpose))
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
            decide(&all, &other, &none, Some("TREAT")),
            ConsentState::Permit
        );
        assert_eq!(decide(&all, &dr, &none, Some("TREAT")), ConsentState::Deny);
        assert_eq!(
            decide(&all, &other, &hiv, Some("TREAT")),
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
            decide(&both, &dr, &none, Some("TREAT")),
            ConsentState::Permit
        );
        // For research it does not speak, so the earlier deny stands.
        assert_eq!(
            decide(&both, &dr, &none, Some("HRESCH")),
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
        let future = consent(
            "2026-06-01T00:00:00Z",
            json!({
                "type": "deny", "period": {"start": "2027-01-01T00:00:00Z"}
            }),
        );
        for c in [inactive, expired, future] {
            assert_eq!(
                decide(std::slice::from_ref(&c), &other, &none, None),
                ConsentState::None,
                "{c}"
            );
        }
        assert_eq!(decide(&[], &other, &none, None), ConsentState::None);
        // Two consents at the same instant that disagree: the deny wins.
        let p = consent("2026-08-01T00:00:00Z", json!({"type": "permit"}));
        let d = consent("2026-08-01T00:00:00Z", json!({"type": "deny"}));
        assert_eq!(decide(&[p, d], &other, &none, None), ConsentState::Deny);
    }

    #[test]
    fn what_the_evaluator_cannot_check_never_widens_a_permit() {
        let dr = vec!["Practitioner/dr-a".to_owned()];
        let none: Vec<String> = vec![];
        let psy = vec!["PSY".to_owned()];
        let deny_psy = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "securityLabel": [{"code": "PSY"}]}),
        );
        // A later permit limited to one document does not unlock all PSY data.
        let one_doc = consent(
            "2026-06-01T00:00:00Z",
            json!({"type": "permit", "actor": [{"reference": {"reference": "Practitioner/dr-a"}}],
                   "data": [{"meaning": "instance", "reference": {"reference": "DocumentReference/x"}}]}),
        );
        assert_eq!(
            decide(&[deny_psy.clone(), one_doc], &dr, &psy, Some("TREAT")),
            ConsentState::Deny
        );
        // A consent dated in the future does not speak (it cannot outrank later decisions).
        let future = consent("2099-01-01T00:00:00Z", json!({"type": "permit"}));
        assert_eq!(
            decide(&[deny_psy.clone(), future], &dr, &psy, None),
            ConsentState::Deny
        );
        // A research consent is not a privacy consent.
        let mut research = consent("2026-07-01T00:00:00Z", json!({"type": "permit"}));
        research["scope"] = json!({"coding": [{"code": "research"}]});
        assert_eq!(
            decide(&[deny_psy.clone(), research], &dr, &psy, None),
            ConsentState::Deny
        );
        // A deny with conditions it cannot check applies broadly.
        let deny_code = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "code": [{"coding": [{"code": "x"}]}]}),
        );
        assert_eq!(decide(&[deny_code], &dr, &none, None), ConsentState::Deny);
        // Actors written as absolute URLs, bare-date periods and +00:00 offsets are understood.
        let absolute = consent(
            "2026-01-01T00:00:00+00:00",
            json!({"type": "deny", "period": {"start": "2026-11-30", "end": "2026-11-30"},
                   "actor": [{"reference": {"reference": "https://ehr.example/fhir/Practitioner/dr-a"}}]}),
        );
        assert_eq!(
            decide(std::slice::from_ref(&absolute), &dr, &none, None),
            ConsentState::Deny
        );
        // Fractional seconds: a period ending at 10:00:00 covers 10:00:00.5 no more.
        let mut late = req(&dr, &none, None);
        late.at = "2026-11-30T10:00:01.500000Z";
        let until_ten = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "period": {"end": "2026-11-30T10:00:00.000Z"}}),
        );
        assert_eq!(
            evaluate(std::slice::from_ref(&until_ten), &late),
            ConsentState::None
        );
        late.at = "2026-11-30T10:00:00.400000Z";
        assert_eq!(evaluate(&[until_ten], &late), ConsentState::Deny);
        // Actions other than access, use or disclosure do not speak to reading.
        let collect = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "action": [{"coding": [{"code": "collect"}]}]}),
        );
        assert_eq!(decide(&[collect], &dr, &none, None), ConsentState::None);
    }

    #[test]
    fn offsets_are_normalised_and_partial_dates_are_understood() {
        assert_eq!(
            utc("2026-06-01T00:30:00+01:00", false).as_deref(),
            Some("2026-05-31T23:30:00Z")
        );
        assert_eq!(
            utc("2026-06-01T10:00:00.25-05:00", false).as_deref(),
            Some("2026-06-01T15:00:00Z")
        );
        assert_eq!(utc("2026", true).as_deref(), Some("2026-12-31T23:59:59Z"));
        assert_eq!(
            utc("2024-02", true).as_deref(),
            Some("2024-02-29T23:59:59Z")
        );
        assert_eq!(utc("2026-02-30", false), None);
        assert_eq!(utc("2026-06-01T10:00:00", false), None, "no zone");
        let dr = vec!["Practitioner/dr-a".to_owned()];
        let none: Vec<String> = vec![];
        // A deny written in local time speaks (it was stored inert before).
        let local = consent("2026-06-01T00:00:00+02:00", json!({"type": "deny"}));
        assert_eq!(
            decide(std::slice::from_ref(&local), &dr, &none, None),
            ConsentState::Deny
        );
        // Ordering across offsets: a permit at 09:00+02:00 (07:00Z) is older than a deny at
        // 08:00Z, whatever the text says.
        let permit = consent("2026-06-01T09:00:00+02:00", json!({"type": "permit"}));
        let deny = consent("2026-06-01T08:00:00Z", json!({"type": "deny"}));
        assert_eq!(
            decide(&[permit, deny], &dr, &none, None),
            ConsentState::Deny
        );
        // Denies naming an Organization, PractitionerRole or CareTeam match the actors derived
        // for the user.
        for kind in [
            "Organization/org-1",
            "PractitionerRole/role-1",
            "CareTeam/team-1",
        ] {
            let c = consent(
                "2026-01-01T00:00:00Z",
                json!({"type": "deny", "actor": [{"reference": {"reference": kind}}]}),
            );
            let actors = vec!["Practitioner/dr-a".to_owned(), kind.to_owned()];
            assert_eq!(
                decide(std::slice::from_ref(&c), &actors, &none, None),
                ConsentState::Deny,
                "{kind}"
            );
            assert_eq!(
                decide(std::slice::from_ref(&c), &dr, &none, None),
                ConsentState::None,
                "{kind}"
            );
        }
    }

    fn check_any(c: &Value) -> Result<(), String> {
        check(c, &|t| matches!(t, "Observation" | "Condition"))
    }

    #[test]
    fn a_permit_for_a_team_reaches_only_its_active_members() {
        let all = vec!["Practitioner/dr".to_owned(), "CareTeam/old".to_owned()];
        let active = vec!["Practitioner/dr".to_owned()];
        let none: Vec<String> = vec![];
        let names_team = |kind: &str| {
            consent(
                "2026-01-01T00:00:00Z",
                json!({"type": kind, "actor": [{"reference": {"reference": "CareTeam/old"}}]}),
            )
        };
        let mut r = req(&all, &none, Some("TREAT"));
        r.permit_actors = Some(&active);
        assert_eq!(evaluate(&[names_team("permit")], &r), ConsentState::None);
        assert_eq!(evaluate(&[names_team("deny")], &r), ConsentState::Deny);
    }

    #[test]
    fn consents_the_evaluator_cannot_apply_are_refused() {
        let ok = consent("2026-01-01T00:00:00+01:00", json!({"type": "deny"}));
        assert_eq!(check_any(&ok), Ok(()));
        let mut no_time = ok.clone();
        no_time.as_object_mut().unwrap().remove("dateTime");
        assert!(check_any(&no_time).unwrap_err().contains("dateTime"));
        let mut bad_time = ok.clone();
        bad_time["dateTime"] = json!("2026-01-01T00:00:00");
        assert!(check_any(&bad_time).is_err());
        let related = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "actor": [{"reference": {"reference": "RelatedPerson/x"}}]}),
        );
        assert!(check_any(&related).unwrap_err().contains("actor"));
        let identifier_only = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "actor": [{"reference": {"identifier": {"value": "x"}}}]}),
        );
        assert!(check_any(&identifier_only).is_err());
        let untyped = consent("2026-01-01T00:00:00Z", json!({"provision": []}));
        assert!(check_any(&untyped).is_err());
        let narrow_permit = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "permit", "data": [{"meaning": "instance", "reference": {"reference": "Observation/x"}}]}),
        );
        assert!(check_any(&narrow_permit).is_err());
        let bad_period = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "period": {"start": "soon"}}),
        );
        assert!(check_any(&bad_period).is_err());
        // Codes it cannot match, and a period that ends before it starts.
        for provision in [
            json!({"type": "deny", "purpose": [{"code": "TRAET"}]}),
            json!({"type": "deny", "class": [{"code": "Obsrvation"}]}),
            json!({"type": "deny", "action": [{"coding": [{"code": "read"}]}]}),
            json!({"type": "deny", "period": {"start": "2030-01-01", "end": "2020-01-01"}}),
        ] {
            let c = consent("2026-01-01T00:00:00Z", provision.clone());
            assert!(check_any(&c).is_err(), "{provision}");
        }
        // Spelled in another case, they are understood (and applied).
        let lower = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "purpose": [{"code": "treat"}], "action": [{"coding": [{"code": "ACCESS"}]}]}),
        );
        assert_eq!(check_any(&lower), Ok(()));
        let dr = vec!["Practitioner/dr-a".to_owned()];
        let none: Vec<String> = vec![];
        assert_eq!(
            decide(std::slice::from_ref(&lower), &dr, &none, Some("HOPERAT")),
            ConsentState::Deny
        );
        let hiv_lower = consent(
            "2026-01-01T00:00:00Z",
            json!({"type": "deny", "securityLabel": [{"code": "hiv"}], "class": [{"code": "observation"}]}),
        );
        assert_eq!(
            decide(
                std::slice::from_ref(&hiv_lower),
                &dr,
                &["HIV".to_owned()],
                Some("TREAT")
            ),
            ConsentState::Deny
        );
        // Not active, or not a privacy consent: not this evaluator's to judge.
        let mut draft = no_time.clone();
        draft["status"] = json!("draft");
        assert_eq!(check_any(&draft), Ok(()));
        let mut research = no_time;
        research["scope"] = json!({"coding": [{"code": "research"}]});
        assert_eq!(check_any(&research), Ok(()));
    }
}
