//! The access log's record: one typed shape for every request, administrative action, share,
//! security event and summary, sealed under the `@audit` key beside its leaf
//! ([`crate::ledger::Ledger::record`]). `audit_view` reads it back as FHIR `AuditEvent`s and
//! `verify` checks it opens.
//!
//! The JSON layout is version 1 (`"v": 1`), hard to undo: records outlive releases. The common
//! fields are typed here; what one kind adds (a request's method and status, a share's
//! counterpart, a summary's counts) goes in [`AuditRecord::fields`], flattened beside them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::clock;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    /// An HTTP request to the node.
    Rest,
    /// An administrative action on the node's host (the CLI).
    Admin,
    /// Records sent to or received from another node.
    Share,
    /// A security event the node raised itself (an account locked).
    Security,
    /// Requests counted together instead of recorded one by one.
    Summary,
}

/// How it ended (readers parse it back from stored records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditOutcome {
    /// Done.
    Success,
    /// Refused by a rule (`denied_by` names it when known).
    Denied,
    /// No valid credential.
    AuthenticationFailed,
    /// The request was wrong.
    ClientError,
    /// The node failed.
    ServerError,
}

/// The operating-system user running the CLI on the node's host (`$USER`).
pub fn os_user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

/// [`os_user`] as an access-log record's agent.
pub fn os_agent() -> serde_json::Value {
    serde_json::json!({ "os_user": os_user() })
}

/// The patients (bare ids) an access-log record names: the Patient it read or changed, the
/// patient whose compartment it touched, a `Patient/…` target, and every patient a search,
/// history or Bundle let through or refused. What a patient's accounting of disclosures lists,
/// and what the access log's patient index holds one row for (docs/formats/access-patient-index.md).
/// `patient` and `target` are the record's fields of those names; `fields` holds the rest
/// (a stored record's whole object serves, as its `patient` and `target` are ignored there).
pub fn patients_named<'a>(
    patient: Option<&'a str>,
    target: Option<&'a str>,
    fields: &'a Map<String, Value>,
) -> std::collections::BTreeSet<&'a str> {
    let bare = |p: &'a str| p.strip_prefix("Patient/").unwrap_or(p);
    let text = |k: &str| fields.get(k).and_then(Value::as_str);
    let mut out = std::collections::BTreeSet::new();
    if text("resource_type") == Some("Patient")
        && let Some(id) = text("id")
    {
        out.insert(id);
    }
    out.extend(patient.map(bare));
    out.extend(target.and_then(|t| t.strip_prefix("Patient/")));
    let policy = fields.get("policy");
    for list in ["patients_seen", "patients_refused"] {
        let listed = policy.and_then(|p| p.get(list)).and_then(Value::as_array);
        out.extend(listed.into_iter().flatten().filter_map(Value::as_str).map(bare));
    }
    out.remove("");
    out
}

/// [`patients_named`] of a stored record as read back.
pub fn patients_of(record: &Value) -> std::collections::BTreeSet<&str> {
    static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
    let fields = record.as_object().unwrap_or(&EMPTY);
    let text = |k: &str| fields.get(k).and_then(Value::as_str);
    patients_named(text("patient"), text("target"), fields)
}

/// One access-log record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    v: u8,
    /// What it is about.
    #[serde(rename = "type")]
    pub kind: AuditKind,
    /// When (RFC 3339, UTC, microseconds).
    pub time: String,
    /// What was done (`read`, `login`, `keys-rotate`, `share-send`, …).
    pub interaction: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Who did it (token, role, session, client; or the operating-system user of a CLI action).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<Value>,
    /// What it was done to, when not a FHIR resource (a user, a key version, a client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The patient whose data it touched, so the patient's accounting of disclosures finds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The rule that refused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    /// What this kind of record adds.
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl AuditRecord {
    /// A record of `kind` at `time_micros`.
    pub fn new(
        kind: AuditKind,
        time_micros: i64,
        interaction: impl Into<String>,
        outcome: AuditOutcome,
    ) -> Self {
        Self {
            v: 1,
            kind,
            time: clock::instant(time_micros),
            interaction: interaction.into(),
            outcome,
            agent: None,
            target: None,
            patient: None,
            denied_by: None,
            fields: Map::new(),
        }
    }

    /// An administrative action by the operating-system user running the CLI on the node's
    /// host (`$USER`), which succeeded.
    pub fn admin(time_micros: i64, action: &str, target: Option<&str>) -> Self {
        Self::new(AuditKind::Admin, time_micros, action, AuditOutcome::Success)
            .agent(os_agent())
            .target_opt(target)
    }

    /// The patients the record names ([`patients_named`]).
    pub fn patients(&self) -> std::collections::BTreeSet<&str> {
        patients_named(
            self.patient.as_deref(),
            self.target.as_deref(),
            &self.fields,
        )
    }

    /// Sets who did it.
    #[must_use]
    pub fn agent(mut self, agent: Value) -> Self {
        self.agent = Some(agent);
        self
    }

    /// Sets what it was done to.
    #[must_use]
    pub fn target_opt(mut self, target: Option<&str>) -> Self {
        self.target = target.map(str::to_owned);
        self
    }

    /// Sets the patient.
    #[must_use]
    pub fn patient(mut self, patient: Option<String>) -> Self {
        self.patient = patient;
        self
    }

    /// Sets the rule that refused it.
    #[must_use]
    pub fn denied_by(mut self, rule: Option<String>) -> Self {
        self.denied_by = rule;
        self
    }

    /// Adds a field this kind of record carries (left out when `null`).
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        if !value.is_null() {
            self.fields.insert(name.to_owned(), value);
        }
        self
    }

    /// The record as JSON (what is sealed).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The codec byte at the front of a compact detail's plaintext (before sealing): the record's
/// JSON, zstd-compressed against [`DICTIONARY_V1`]. A detail whose plaintext starts with `{` is
/// the JSON itself (every detail written before this codec, and any that would not shrink).
/// Hard to undo: a new dictionary takes a new codec byte; this one is read forever.
const CODEC_ZSTD_DICT_V1: u8 = 0x01;

/// What the compact codec compresses against: field names and the values most records share,
/// the commonest last (zstd reaches the end of a raw dictionary most cheaply). Never changes.
const DICTIONARY_V1: &[u8] = br#"{"v":1,"type":"admin","interaction":"keys-rotate","outcome":"success","agent":{"os_user":"root"},"target":"kek-","type":"share","share":{"direction":"send","peer":"","records":0},"type":"security","type":"summary","interaction":"anonymous-requests","counts":{"total":0,"addresses":[],"credentials":[]},"outcome":"authentication-failed","outcome":"client-error","outcome":"server-error","outcome":"denied","denied_by":"role-gate","auth":{"user":null,"client":null,"event":"login"},"interaction":"login","interaction":"oauth-token","interaction":"search-type","interaction":"create","interaction":"update","interaction":"transaction","method":"POST","method":"PUT","status":201,"status":403,"status":401,"status":404,"resource_type":"Observation","resource_type":"Encounter","extra":{},"params":["_count","_id","subject","patient","code","date"],"purpose":"TREAT","policy":{"purpose":"TREAT","denied_by":[],"withheld":0,"break_glass":[],"patients_seen":["Patient/"],"patients_refused":[]},"method":"GET","resource_type":"Patient","id":"","params":[],"status":200,"address":"127.0.0.1"}{"v":1,"type":"rest","time":"2026-12-07T00:00:00.000000Z","interaction":"read","outcome":"success","agent":{"token":"tok_","role":"admin","session":null,"client":null},"patient":"Patient/","request_id":"","policy":{"purpose":null,"denied_by":[],"withheld":0,"break_glass":[],"patients_seen":["Patient/"],"patients_refused":[]},"method":"GET","resource_type":"Patient","id":""#;

/// The most a detail may inflate to when read back (records are a few hundred bytes; a summary
/// with its 100 addresses and credentials a few kilobytes).
const MAX_DETAIL: usize = 1 << 20;

thread_local! {
    static INFLATE: std::cell::RefCell<Option<(zstd::bulk::Decompressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// A compressor per thread with the dictionary loaded once (building one costs far more
    /// than compressing a record).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A detail's plaintext, as sealed: the record's JSON, compressed when that makes it smaller.
///
/// # Errors
/// Serialization or compressor failure (a message naming which, never record content).
pub fn encode_detail(record: &AuditRecord) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(record).map_err(|e| format!("audit record: {e}"))?,
    );
    let packed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(
                zstd::bulk::Compressor::with_dictionary(3, DICTIONARY_V1)
                    .map_err(|e| format!("audit compressor: {e}"))?,
            );
        }
        let Some(c) = slot.as_mut() else {
            return Err("audit compressor missing".to_owned());
        };
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(json.len() / 2 + 16));
        out.push(CODEC_ZSTD_DICT_V1);
        let body = zeroize::Zeroizing::new(
            c.compress(&json)
                .map_err(|e| format!("audit compression: {e}"))?,
        );
        out.extend_from_slice(&body);
        Ok(out)
    })?;
    Ok(if packed.len() < json.len() {
        packed
    } else {
        json
    })
}

/// The record a detail's plaintext holds, as JSON (either codec).
///
/// # Errors
/// A detail that is neither JSON nor a compact record that inflates to JSON.
pub fn decode_detail(plain: &[u8]) -> Result<Value, String> {
    match plain.first() {
        Some(b'{') => serde_json::from_slice(plain).map_err(|e| format!("audit record: {e}")),
        Some(&CODEC_ZSTD_DICT_V1) => INFLATE.with(|cell| {
            // One decompressor (its dictionary digested once) and one buffer per thread:
            // readers of the whole log (Sentinel, verify, the audit view) inflate every entry.
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let d = zstd::bulk::Decompressor::with_dictionary(DICTIONARY_V1)
                    .map_err(|e| format!("audit decompressor: {e}"))?;
                *slot = Some((d, Vec::with_capacity(4096)));
            }
            let Some((d, buf)) = slot.as_mut() else {
                return Err("audit decompressor missing".to_owned());
            };
            buf.clear();
            // The frame names its size (the compressor writes it); at most MAX_DETAIL.
            let size = match zstd::zstd_safe::get_frame_content_size(&plain[1..]) {
                Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
                Ok(None) => MAX_DETAIL,
                Err(_) => return Err("audit record does not inflate: not a frame".to_owned()),
            };
            if size > MAX_DETAIL {
                return Err("audit record does not inflate: too large".to_owned());
            }
            buf.reserve(size);
            let inflated = d
                .decompress_to_buffer(&plain[1..], buf)
                .map_err(|e| format!("audit record does not inflate: {e}"));
            let parsed = inflated.and_then(|_| {
                serde_json::from_slice(buf).map_err(|e| format!("audit record: {e}"))
            });
            zeroize::Zeroize::zeroize(buf);
            parsed
        }),
        _ => Err("audit record in an unknown codec".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use serde_json::json;

    #[test]
    fn the_layout_is_version_one_with_the_common_fields_and_the_kinds_own() {
        let r = AuditRecord::new(AuditKind::Rest, 0, "read", AuditOutcome::Denied)
            .denied_by(Some("role-gate".into()))
            .patient(Some("p1".into()))
            .with("status", 403)
            .with("id", Value::Null);
        assert_eq!(
            r.to_json(),
            json!({
                "v": 1, "type": "rest", "time": "1970-01-01T00:00:00.000000Z",
                "interaction": "read", "outcome": "denied", "patient": "p1",
                "denied_by": "role-gate", "status": 403,
            })
        );
        let a = AuditRecord::admin(0, "keys-rotate", Some("kek-2")).to_json();
        assert_eq!(a["type"], "admin");
        assert_eq!(a["target"], "kek-2");
        assert_eq!(a["outcome"], "success");
        assert!(a["agent"]["os_user"].is_string());
        assert_eq!(
            serde_json::to_value(AuditOutcome::AuthenticationFailed).unwrap(),
            "authentication-failed"
        );
    }

    #[test]
    fn a_detail_is_compact_and_reads_back_as_the_same_json() {
        let pid = "Patient/629bcea2-8af6-4b45-8233-50a94e14372d";
        let r = AuditRecord::new(
            AuditKind::Rest,
            1_796_601_000_123_456,
            "read",
            AuditOutcome::Success,
        )
        .patient(Some(pid.into()))
        .with("request_id", "10a087f8c83c-1")
        .with(
            "policy",
            json!({"purpose": null, "denied_by": [], "withheld": 0, "break_glass": [],
                       "patients_seen": [pid], "patients_refused": []}),
        )
        .with("method", "GET")
        .with("resource_type", "Patient")
        .with("id", "629bcea2-8af6-4b45-8233-50a94e14372d")
        .with("params", json!([]))
        .with("status", 200)
        .with("address", "127.0.0.1");
        let json = serde_json::to_vec(&r).unwrap();
        let packed = encode_detail(&r).unwrap();
        assert_eq!(packed[0], CODEC_ZSTD_DICT_V1);
        assert!(
            packed.len() * 3 < json.len(),
            "{} bytes from {}",
            packed.len(),
            json.len()
        );
        assert_eq!(decode_detail(&packed).unwrap(), r.to_json());
        // Details written as plain JSON still read.
        assert_eq!(decode_detail(&json).unwrap(), r.to_json());
        // Anything else is refused, not guessed at.
        assert!(decode_detail(b"\x02abc").is_err());
        assert!(decode_detail(&[CODEC_ZSTD_DICT_V1, 1, 2, 3]).is_err());
        assert!(decode_detail(b"").is_err());
    }
}
