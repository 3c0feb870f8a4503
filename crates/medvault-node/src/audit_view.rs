//! The audit trail as FHIR R4 `AuditEvent` resources, read-only, for auditors.
//!
//! `GET /fhir/AuditEvent?patient=&agent=&date=&outcome=&_count=&_before=` searches the sealed
//! audit details newest first (each is opened under the `@audit` key and filtered; nothing about
//! them is indexed in the clear); `GET /fhir/AuditEvent/ledger-N` reads the event of leaf `N`.
//! The id names the ledger leaf, so an auditor can fetch its inclusion proof.

use medvault_store::LogRead;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::audit::AuditOutcome;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::ledger::Ledger;

/// Leaves examined per search request at most; the `next` link continues from there.
const MAX_SCAN: u64 = 100_000;
const CHUNK: u64 = 1024;

#[derive(Debug, Default)]
struct Filter {
    patient: Option<String>,
    agent: Option<String>,
    outcome: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
}

fn bad(msg: &str) -> Error {
    Error::new(ErrorKind::Invalid, IssueCode::Invalid, msg)
}

fn parse_date(value: &str, f: &mut Filter) -> Result<(), Error> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let (start, end) = medvault_fhir::date_range(rest).ok_or_else(|| {
        bad("date must be a FHIR date or dateTime, optionally prefixed ge/gt/le/lt")
    })?;
    let (start, end) = (start * 1_000_000, end * 1_000_000);
    let tighten_from = |f: &mut Filter, v: i64| f.from = Some(f.from.map_or(v, |x| x.max(v)));
    let tighten_to = |f: &mut Filter, v: i64| f.to = Some(f.to.map_or(v, |x| x.min(v)));
    match prefix {
        "ge" => tighten_from(f, start),
        "gt" => tighten_from(f, end),
        "le" => tighten_to(f, end),
        "lt" => tighten_to(f, start),
        _ => {
            tighten_from(f, start);
            tighten_to(f, end);
        }
    }
    Ok(())
}

/// A stored record's outcome, if it names one this node knows.
fn outcome_of(detail: &Value) -> Option<AuditOutcome> {
    detail
        .get("outcome")
        .and_then(|o| AuditOutcome::deserialize(o).ok())
}

/// The `AuditEvent.outcome` code: 0 success, 8 serious failure, 4 anything else.
fn outcome_code(outcome: Option<AuditOutcome>) -> &'static str {
    match outcome {
        Some(AuditOutcome::Success) => "0",
        Some(AuditOutcome::ServerError) => "8",
        _ => "4",
    }
}

fn action_code(interaction: &str) -> &'static str {
    match interaction {
        "create" => "C",
        "read" | "vread" | "history-instance" | "history-type" | "capabilities" => "R",
        "update" => "U",
        "delete" | "patient-erase" => "D",
        _ => "E",
    }
}

fn restful_interaction(interaction: &str) -> Option<&str> {
    matches!(
        interaction,
        "read"
            | "vread"
            | "update"
            | "delete"
            | "history-instance"
            | "history-type"
            | "create"
            | "search-type"
            | "capabilities"
    )
    .then_some(interaction)
}

fn s<'a>(d: &'a Value, key: &str) -> Option<&'a str> {
    d.get(key).and_then(Value::as_str)
}

/// The `AuditEvent` for the detail stored beside leaf `leaf`.
pub fn to_audit_event(leaf: u64, detail: &Value, observer: &str) -> Value {
    let interaction = s(detail, "interaction").unwrap_or("none");
    let outcome = s(detail, "outcome").unwrap_or("client-error");
    let is_admin = s(detail, "type") == Some("admin");
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": format!("ledger-{leaf}"),
        "type": if is_admin {
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100",
                   "display": "Application Activity"})
        } else {
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                   "code": "rest", "display": "RESTful Operation"})
        },
        "action": action_code(interaction),
        "recorded": s(detail, "time").unwrap_or("1970-01-01T00:00:00Z"),
        "outcome": outcome_code(outcome_of(detail)),
        "outcomeDesc": outcome_text(interaction, outcome, detail),
        "agent": [agent(detail)],
        "source": {"observer": {"display": observer}},
    });
    if let Some(code) = restful_interaction(interaction) {
        event["subtype"] =
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": code}]);
    }
    if let Some(p) = s(detail, "purpose") {
        event["purposeOfEvent"] = json!([{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}]}]);
    }
    let mut entities = Vec::new();
    if let (Some(t), Some(id)) = (s(detail, "resource_type"), s(detail, "id")) {
        entities.push(json!({"what": {"reference": format!("{t}/{id}")}}));
    }
    if let Some(p) = s(detail, "patient")
        && !(s(detail, "resource_type") == Some("Patient") && s(detail, "id") == Some(p))
    {
        entities.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                     "display": "Patient"},
        }));
    }
    if let Some(t) = s(detail, "target") {
        entities.push(json!({"what": {"display": t}}));
    }
    if let Some(counted) = counted_entity(detail) {
        entities.push(counted);
    }
    if let Some(export) = export_entity(detail) {
        entities.push(export);
    }
    if let Some(rid) = s(detail, "request_id") {
        entities.push(
            json!({"what": {"identifier": {"system": "urn:medvault:request-id", "value": rid}}}),
        );
    }
    if !entities.is_empty() {
        event["entity"] = Value::Array(entities);
    }
    event
}

/// For a Bulk Data export's records (its end, each file served): the job and what it held
/// (resources, patients, files; a file's name and type), as `detail` entries.
fn export_entity(detail: &Value) -> Option<Value> {
    let extra = detail.get("extra");
    let job = extra
        .and_then(|e| s(e, "export"))
        .or_else(|| s(detail, "target").and_then(|t| t.strip_prefix("export/")))?;
    let mut details = Vec::new();
    for source in [Some(detail), extra].into_iter().flatten() {
        for key in ["resources", "patients", "files", "file", "type"] {
            match source.get(key) {
                Some(Value::Number(n)) => {
                    details.push(json!({"type": key, "valueString": n.to_string()}));
                }
                Some(Value::String(v)) => details.push(json!({"type": key, "valueString": v})),
                _ => {}
            }
        }
    }
    Some(json!({"what": {"display": format!("bulk export {job}")}, "detail": details}))
}

/// For a summary of anonymous requests: an entity carrying the counts (in total, by status,
/// by client address and by credential named), as `detail` entries.
fn counted_entity(detail: &Value) -> Option<Value> {
    let count = detail.get("count").and_then(Value::as_u64)?;
    let mut details = vec![json!({"type": "count", "valueString": count.to_string()})];
    if let Some(statuses) = detail.get("statuses").and_then(Value::as_object) {
        for (status, n) in statuses {
            details.push(json!({"type": format!("status {status}"), "valueString": n.to_string()}));
        }
    }
    for (list, label) in [("addresses", "address"), ("credentials", "credential")] {
        for item in detail
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(id), Some(n)) = (s(item, "id"), item.get("count")) {
                details
                    .push(json!({"type": format!("{label} {id}"), "valueString": n.to_string()}));
            }
        }
    }
    for key in [
        "requests_from_other_addresses",
        "requests_with_other_credentials",
    ] {
        if let Some(n) = detail.get(key).and_then(Value::as_u64).filter(|n| *n > 0) {
            details.push(json!({"type": key.replace('_', " "), "valueString": n.to_string()}));
        }
    }
    Some(json!({
        "what": {"display": "requests recorded together"},
        "detail": details,
    }))
}

/// `read: denied (HTTP 404, denied by default-deny)`, `search-type: success (HTTP 200; 3
/// withheld by consent-deny)`, `anonymous-requests: denied (1970 requests from … to …)`.
fn outcome_text(interaction: &str, outcome: &str, detail: &Value) -> String {
    if let Some(count) = detail.get("count").and_then(Value::as_u64) {
        return format!(
            "{interaction}: {outcome} ({count} requests from {} to {}, recorded together)",
            s(detail, "since").unwrap_or("?"),
            s(detail, "until").unwrap_or("?")
        );
    }
    let earlier = detail
        .get("not_recorded_before")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
        .map(|n| format!("; {n} more before this, not recorded one by one"))
        .unwrap_or_default();
    let Some(st) = detail.get("status").and_then(Value::as_u64) else {
        return format!("{interaction}: {outcome}{earlier}");
    };
    let withheld = detail
        .pointer("/policy/withheld")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let policies = || {
        detail
            .pointer("/policy/denied_by")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match s(detail, "denied_by") {
        Some(rule) => format!("{interaction}: {outcome} (HTTP {st}, denied by {rule})"),
        None if withheld > 0 => format!(
            "{interaction}: {outcome} (HTTP {st}; {withheld} withheld by {})",
            policies()
        ),
        None => format!("{interaction}: {outcome} (HTTP {st})"),
    }
}

fn agent(detail: &Value) -> Value {
    let mut v = agent_who(detail);
    // The client's address (REST records), or the peer's (refused handshakes).
    let address =
        s(detail, "address").or_else(|| detail.get("agent").and_then(|a| s(a, "address")));
    if let Some(address) = address {
        v["network"] = json!({"address": address, "type": "2"});
    }
    v
}

fn agent_who(detail: &Value) -> Value {
    let a = detail.get("agent");
    if let Some(token) = a.and_then(|a| s(a, "token")) {
        let mut v = json!({
            "who": {"identifier": {"system": "urn:medvault:token", "value": token}},
            "requestor": true,
        });
        if let Some(role) = a.and_then(|a| s(a, "role")) {
            v["role"] = json!([{"text": role}]);
        }
        return v;
    }
    // The node's own work (Sentinel's alerts and responses).
    if let Some(service) = a.and_then(|a| s(a, "service")) {
        return json!({"who": {"display": format!("medvault {service} (the node itself)")}, "requestor": true});
    }
    if let Some(user) = a.and_then(|a| s(a, "os_user")) {
        return json!({"who": {"display": format!("operating-system user {user} (medvault CLI)")}, "requestor": true});
    }
    // A known API token that was refused (expired or revoked): named, not authenticated.
    if let Some(token) = detail.get("auth").and_then(|a| s(a, "token")) {
        return json!({
            "who": {"identifier": {"system": "urn:medvault:token", "value": token},
                    "display": "refused credential"},
            "requestor": true,
        });
    }
    if detail.get("count").is_some() {
        return json!({"who": {"display": "unauthenticated clients"}, "requestor": true});
    }
    json!({"who": {"display": "unauthenticated client"}, "requestor": true})
}

/// True if access-log record `d` is about patient `p` (a bare id): it read or changed the
/// Patient, its compartment's data, or targeted them, or a search, history or Bundle let
/// their data through or refused it ([`crate::audit::patients_named`]). What a patient's
/// accounting of disclosures lists.
pub fn names_patient(d: &Value, p: &str) -> bool {
    crate::audit::patients_of(d).contains(p)
}

fn matches(f: &Filter, d: &Value) -> bool {
    if let Some(p) = &f.patient
        && !names_patient(d, p)
    {
        return false;
    }
    if let Some(a) = &f.agent
        && d.get("agent").and_then(|x| s(x, "token")) != Some(a.as_str())
        && d.get("auth").and_then(|x| s(x, "token")) != Some(a.as_str())
    {
        return false;
    }
    if let Some(o) = &f.outcome
        && outcome_code(outcome_of(d)) != o
    {
        return false;
    }
    if f.from.is_some() || f.to.is_some() {
        let Some(t) = s(d, "time")
            .and_then(medvault_fhir::date_range)
            .map(|(start, _)| start * 1_000_000)
        else {
            return false;
        };
        if f.from.is_some_and(|x| t < x) || f.to.is_some_and(|x| t >= x) {
            return false;
        }
    }
    true
}

/// Makes sure an event found for `patient` names them as an entity, and no other patient (a
/// search that touched several patients lists only the one asked about: another patient's id
/// is not this reader's to learn).
pub fn name_patient(event: &mut Value, patient: &str) {
    let reference = format!("Patient/{patient}");
    // Another patient named by the record (e.g. where the resource lives now) is not shown.
    if let Some(list) = event.get_mut("entity").and_then(Value::as_array_mut) {
        list.retain(|e| {
            e.pointer("/what/reference")
                .and_then(Value::as_str)
                .is_none_or(|r| !r.starts_with("Patient/") || r == reference)
        });
    }
    let named = event["entity"].as_array().is_some_and(|l| {
        l.iter()
            .any(|e| e.pointer("/what/reference").and_then(Value::as_str) == Some(&reference))
    });
    if named {
        return;
    }
    let entity = json!({
        "what": {"reference": reference},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                 "display": "Patient"},
    });
    match event.get_mut("entity").and_then(Value::as_array_mut) {
        Some(list) => list.push(entity),
        None => event["entity"] = json!([entity]),
    }
}

/// `GET /fhir/AuditEvent?…`: a `searchset` Bundle, newest first.
///
/// # Errors
/// 400 for unknown parameters or bad values (an auditor's filter is never silently dropped).
pub fn search(
    store: &dyn LogRead,
    ledger: &Ledger,
    params: &[(String, String)],
    base: &str,
) -> Result<Value, Error> {
    let mut f = Filter::default();
    let mut count = 50u64;
    let mut before = None;
    for (k, v) in params {
        match k.as_str() {
            "patient" => f.patient = Some(v.strip_prefix("Patient/").unwrap_or(v).to_owned()),
            "agent" => f.agent = Some(v.clone()),
            "outcome" => {
                if !matches!(v.as_str(), "0" | "4" | "8" | "12") {
                    return Err(bad("outcome is one of 0, 4, 8, 12"));
                }
                f.outcome = Some(v.clone());
            }
            "date" => parse_date(v, &mut f)?,
            "_count" => {
                count = v
                    .parse::<u64>()
                    .ok()
                    .filter(|c| (1..=500).contains(c))
                    .ok_or_else(|| bad("_count must be 1 to 500"))?;
            }
            "_before" => {
                before = Some(
                    v.parse::<u64>()
                        .map_err(|_| bad("_before is a ledger leaf index"))?,
                );
            }
            other => {
                return Err(bad(&format!(
                    "AuditEvent supports patient, agent, date, outcome, _count and _before, not {other}"
                )));
            }
        }
    }
    let size = store.ledger_size()?;
    let mut end = before.unwrap_or(size).min(size);
    let mut entries = Vec::new();
    let mut keep = |leaf: u64, detail: &Value| {
        if matches(&f, detail) {
            let mut event = to_audit_event(leaf, detail, ledger.access().origin());
            if let Some(p) = &f.patient {
                name_patient(&mut event, p);
            }
            entries.push(json!({
                "fullUrl": format!("{base}/AuditEvent/ledger-{leaf}"),
                "resource": event,
                "search": {"mode": "match"},
            }));
        }
        (entries.len() as u64) < count
    };
    if let Some(p) = f.patient.clone() {
        // A patient's records through the access log's patient index.
        end = crate::access_index::walk_naming(
            store,
            ledger,
            &p,
            (0, end),
            MAX_SCAN,
            &mut |l, d| Ok(keep(l, d)),
        )?
        .below;
    } else {
        let floor = end.saturating_sub(MAX_SCAN);
        'scan: while end > floor {
            let start = end.saturating_sub(CHUNK).max(floor);
            let mut details = store.audit_details(start, end - start)?;
            details.reverse();
            for (leaf, d) in details {
                end = leaf;
                if !keep(leaf, &ledger.open_audit(&d)?) {
                    break 'scan;
                }
            }
            end = start;
        }
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().filter(|(k, _)| k != "_before"))
        .finish();
    let sep = if query.is_empty() { "" } else { "&" };
    let mut links = vec![json!({"relation": "self", "url": format!("{base}/AuditEvent?{query}")})];
    if end > 0 {
        links.push(json!({"relation": "next",
                          "url": format!("{base}/AuditEvent?{query}{sep}_before={end}")}));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": entries,
    }))
}

/// `GET /fhir/AuditEvent/ledger-N`.
///
/// # Errors
/// 404 when `id` names no audit leaf.
pub fn read(store: &dyn LogRead, ledger: &Ledger, id: &str) -> Result<Value, Error> {
    let missing = || Error::not_found("no such AuditEvent");
    let leaf: u64 = id
        .strip_prefix("ledger-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(missing)?;
    let d = store.audit_detail(leaf)?.ok_or_else(missing)?;
    Ok(to_audit_event(
        leaf,
        &ledger.open_audit(&d)?,
        ledger.access().origin(),
    ))
}
