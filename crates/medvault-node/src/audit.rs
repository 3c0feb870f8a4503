//! The access log's record: one typed shape for every request, administrative action, share,
//! security event and summary, sealed under the `@audit` key beside its leaf
//! ([`crate::ledger::Ledger::record`]). `audit_view` reads it back as FHIR `AuditEvent`s and
//! `verify` checks it opens.
//!
//! The JSON layout is version 1 (`"v": 1`), hard to undo: records outlive releases. The common
//! fields are typed here; what one kind adds (a request's method and status, a share's
//! counterpart, a summary's counts) goes in [`AuditRecord::fields`], flattened beside them.

use std::borrow::Cow;
use std::collections::BTreeSet;

use medvault_crypto::{BLIND_LEN, BlindValue};
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
) -> BTreeSet<&'a str> {
    let text = |k: &str| fields.get(k).and_then(Value::as_str);
    let policy = fields.get("policy");
    let listed = ["patients_seen", "patients_refused"]
        .into_iter()
        .flat_map(|list| {
            policy
                .and_then(|p| p.get(list))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
        });
    named_set(text("resource_type"), text("id"), patient, target, listed)
}

/// The rule of [`patients_named`], over the fields it reads.
fn named_set<'a>(
    resource_type: Option<&'a str>,
    id: Option<&'a str>,
    patient: Option<&'a str>,
    target: Option<&'a str>,
    listed: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<&'a str> {
    let bare = |p: &'a str| p.strip_prefix("Patient/").unwrap_or(p);
    let mut out = BTreeSet::new();
    if resource_type == Some("Patient") {
        out.extend(id);
    }
    out.extend(patient.map(bare));
    out.extend(target.and_then(|t| t.strip_prefix("Patient/")));
    out.extend(listed.into_iter().map(bare));
    out.remove("");
    out
}

/// Just the fields of a stored record that name patients (for readers of every record, which
/// need not build the whole JSON value).
#[derive(Deserialize)]
struct Naming<'a> {
    #[serde(borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    patient: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    policy: Option<PolicyNaming<'a>>,
}

#[derive(Deserialize)]
struct PolicyNaming<'a> {
    #[serde(borrow, default)]
    patients_seen: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    patients_refused: Option<Vec<Cow<'a, str>>>,
}

/// [`patients_named`] of a detail's plaintext (either codec), without building the record.
///
/// # Errors
/// As [`decode_detail`].
pub fn patients_in_detail(plain: &[u8]) -> Result<Vec<String>, String> {
    with_json(plain, |json| {
        let owned = |set: BTreeSet<&str>| set.into_iter().map(str::to_owned).collect();
        // A record the narrow form does not fit (a field of another type, a key named twice)
        // is read the general way, so both give the same answer.
        if let Ok(n) = serde_json::from_slice::<Naming<'_>>(json) {
            let policy = n.policy.as_ref();
            let listed = [
                policy.and_then(|p| p.patients_seen.as_ref()),
                policy.and_then(|p| p.patients_refused.as_ref()),
            ];
            return Ok(owned(named_set(
                n.resource_type.as_deref(),
                n.id.as_deref(),
                n.patient.as_deref(),
                n.target.as_deref(),
                listed.into_iter().flatten().flatten().map(|c| c.as_ref()),
            )));
        }
        let record: Value =
            serde_json::from_slice(json).map_err(|e| format!("audit record: {e}"))?;
        Ok(owned(patients_of(&record)))
    })
}

/// [`patients_named`] of a stored record as read back.
pub fn patients_of(record: &Value) -> BTreeSet<&str> {
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
    pub fn patients(&self) -> BTreeSet<&str> {
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

/// The codec byte of a detail that carries its patient-index tags (issue 20): `0x02`, the tag
/// count (u16, big-endian), the tags (16 bytes each, sorted), then the record as in
/// [`CODEC_ZSTD_DICT_V1`] (zstd against [`DICTIONARY_V1`]). `ledger verify` compares the index
/// with the tags without inflating the record; the AEAD seal makes them as authentic as it.
/// Hard to undo, read forever.
const CODEC_TAGGED_ZSTD_DICT_V1: u8 = 0x02;

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

/// The record's JSON compressed against the dictionary (a zstd frame).
fn compress(json: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    COMPRESSOR.with(|cell| {
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
        Ok(zeroize::Zeroizing::new(
            c.compress(json)
                .map_err(|e| format!("audit compression: {e}"))?,
        ))
    })
}

/// A detail's plaintext as the node seals it: the patient-index tags of the patients the record
/// names (`tags`, any order), then the record compressed ([`CODEC_TAGGED_ZSTD_DICT_V1`]).
///
/// # Errors
/// Serialization or compressor failure; more than 65 535 tags.
pub fn encode_detail_tagged(
    record: &AuditRecord,
    tags: &[BlindValue],
) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let count = u16::try_from(tags.len()).map_err(|_| "audit record names too many patients")?;
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(record).map_err(|e| format!("audit record: {e}"))?,
    );
    let frame = compress(&json)?;
    let mut sorted = tags.to_vec();
    sorted.sort_unstable();
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(3 + 16 * tags.len() + frame.len()));
    out.push(CODEC_TAGGED_ZSTD_DICT_V1);
    out.extend_from_slice(&count.to_be_bytes());
    for t in &sorted {
        out.extend_from_slice(&t.0);
    }
    out.extend_from_slice(&frame);
    Ok(out)
}

/// The patient-index tags a detail's plaintext carries (sorted), if it was written with them
/// ([`CODEC_TAGGED_ZSTD_DICT_V1`]); `None` for the older codecs, and for a header that does not
/// hold together.
pub fn tags_of_detail(plain: &[u8]) -> Option<Vec<BlindValue>> {
    let (tags, _) = split_tagged(plain)?;
    Some(
        tags.chunks_exact(BLIND_LEN)
            .filter_map(|c| <[u8; BLIND_LEN]>::try_from(c).ok().map(BlindValue))
            .collect(),
    )
}

/// A tagged detail's tag bytes and its zstd frame.
fn split_tagged(plain: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&codec, rest) = plain.split_first()?;
    if codec != CODEC_TAGGED_ZSTD_DICT_V1 {
        return None;
    }
    let count = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let rest = rest.get(2..)?;
    let tags = rest.get(..count * BLIND_LEN)?;
    Some((tags, rest.get(count * BLIND_LEN..)?))
}

/// A detail's plaintext, as sealed: the record's JSON, compressed when that makes it smaller.
///
/// # Errors
/// Serialization or compressor failure (a message naming which, never record content).
pub fn encode_detail(record: &AuditRecord) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(record).map_err(|e| format!("audit record: {e}"))?,
    );
    let mut packed = zeroize::Zeroizing::new(Vec::with_capacity(json.len() / 2 + 16));
    packed.push(CODEC_ZSTD_DICT_V1);
    packed.extend_from_slice(&compress(&json)?);
    Ok(if packed.len() < json.len() {
        packed
    } else {
        json
    })
}

/// The record a detail's plaintext holds, as JSON (any codec).
///
/// # Errors
/// A detail that is neither JSON nor a compact record that inflates to JSON.
pub fn decode_detail(plain: &[u8]) -> Result<Value, String> {
    with_json(plain, |json| {
        serde_json::from_slice(json).map_err(|e| format!("audit record: {e}"))
    })
}

/// Calls `read` with the JSON a detail's plaintext holds (either codec; inflated into a
/// per-thread buffer that is wiped afterwards).
fn with_json<T>(plain: &[u8], read: impl FnOnce(&[u8]) -> Result<T, String>) -> Result<T, String> {
    let frame = match plain.first() {
        Some(b'{') => return read(plain),
        Some(&CODEC_ZSTD_DICT_V1) => &plain[1..],
        Some(&CODEC_TAGGED_ZSTD_DICT_V1) => {
            split_tagged(plain)
                .ok_or("audit record's patient tags are cut short")?
                .1
        }
        _ => return Err("audit record in an unknown codec".to_owned()),
    };
    INFLATE.with(|cell| {
        // One decompressor (its dictionary digested once) and one buffer per thread: readers
        // of the whole log (Sentinel, verify, the audit view) inflate every entry.
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
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(n)) => usize::try_from(n).unwrap_or(usize::MAX),
            Ok(None) => MAX_DETAIL,
            Err(_) => return Err("audit record does not inflate: not a frame".to_owned()),
        };
        if size > MAX_DETAIL {
            return Err("audit record does not inflate: too large".to_owned());
        }
        buf.reserve(size);
        let inflated = d
            .decompress_to_buffer(frame, buf)
            .map_err(|e| format!("audit record does not inflate: {e}"));
        let parsed = inflated.and_then(|_| read(buf));
        zeroize::Zeroize::zeroize(buf);
        parsed
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use serde_json::json;

    #[test]
    fn the_narrow_reading_names_the_patients_the_record_does() {
        let sorted =
            |set: BTreeSet<&str>| -> Vec<String> { set.into_iter().map(str::to_owned).collect() };
        let records = [
            json!({"v": 1, "type": "rest", "patient": "a", "resource_type": "Observation",
                   "policy": {"patients_seen": ["a", "Patient/b"], "patients_refused": ["c"]}}),
            json!({"v": 1, "type": "rest", "resource_type": "Patient", "id": "d"}),
            json!({"v": 1, "type": "admin", "target": "Patient/e", "id": "x"}),
            json!({"v": 1, "type": "admin", "target": "kek-2"}),
            json!({"v": 1, "type": "rest", "patient": null, "policy": null}),
            // Shapes the narrow form does not fit: read the general way, same answer.
            json!({"v": 1, "type": "rest", "id": 7, "patient": "f",
                   "policy": {"patients_seen": ["g", 3, ""]}}),
            json!({"v": 1, "type": "rest", "policy": "none", "target": "Patient/h"}),
        ];
        let mut named = Vec::new();
        for r in &records {
            let want = sorted(patients_of(r));
            let json = serde_json::to_vec(r).unwrap();
            assert_eq!(patients_in_detail(&json).unwrap(), want, "{r}");
            named.push(want);
        }
        assert_eq!(named[0], ["a", "b", "c"]);
        assert_eq!(named[1], ["d"]);
        assert_eq!(named[2], ["e"]);
        assert!(named[3].is_empty() && named[4].is_empty());
        assert_eq!(named[5], ["f", "g"]);
        assert_eq!(named[6], ["h"]);
        // A key named twice: the general reading keeps the last, and so does the answer.
        let twice = br#"{"v":1,"patient":"i","patient":"j"}"#;
        let general: Value = serde_json::from_slice(twice).unwrap();
        assert_eq!(
            patients_in_detail(twice).unwrap(),
            sorted(patients_of(&general))
        );
        // Compressed as stored.
        let r = AuditRecord::new(AuditKind::Rest, 0, "read", AuditOutcome::Success)
            .patient(Some("k".into()))
            .with(
                "policy",
                json!({"patients_seen": ["k", "l"], "patients_refused": []}),
            );
        let packed = encode_detail(&r).unwrap();
        assert_eq!(packed[0], CODEC_ZSTD_DICT_V1);
        assert_eq!(patients_in_detail(&packed).unwrap(), ["k", "l"]);
        assert_eq!(sorted(r.patients()), ["k", "l"]);
        assert!(patients_in_detail(b"\x07junk").is_err());
    }

    #[test]
    fn a_tagged_detail_carries_its_tags_before_the_record() {
        let r = AuditRecord::new(AuditKind::Rest, 0, "search-type", AuditOutcome::Success).with(
            "policy",
            json!({"patients_seen": ["a", "b"], "patients_refused": []}),
        );
        let (t1, t2) = (BlindValue([9; 16]), BlindValue([3; 16]));
        let plain = encode_detail_tagged(&r, &[t1, t2]).unwrap();
        assert_eq!(plain[0], CODEC_TAGGED_ZSTD_DICT_V1);
        assert_eq!(&plain[1..3], &[0, 2]);
        assert_eq!(tags_of_detail(&plain), Some(vec![t2, t1]), "sorted");
        assert_eq!(
            decode_detail(&plain).unwrap(),
            serde_json::to_value(&r).unwrap()
        );
        assert_eq!(patients_in_detail(&plain).unwrap(), ["a", "b"]);
        // No patients: still tagged (an empty list), so a reader knows without inflating.
        let none = encode_detail_tagged(&AuditRecord::admin(0, "keys-rotate", None), &[]).unwrap();
        assert_eq!(tags_of_detail(&none), Some(vec![]));
        // Older codecs carry none; a header cut short is an error, never a panic.
        assert_eq!(tags_of_detail(&encode_detail(&r).unwrap()), None);
        for cut in [&plain[..1], &plain[..2], &plain[..20], &plain[..34]] {
            assert_eq!(tags_of_detail(cut), None, "{}", cut.len());
            assert!(decode_detail(cut).is_err());
        }
        assert!(decode_detail(&plain[..35]).is_err(), "tags but no record");
        assert_eq!(
            tags_of_detail(&[CODEC_TAGGED_ZSTD_DICT_V1, 0xff, 0xff, 1]),
            None
        );
    }

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
