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
        let operator = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Self::new(AuditKind::Admin, time_micros, action, AuditOutcome::Success)
            .agent(serde_json::json!({ "os_user": operator }))
            .target_opt(target)
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
}
