//! The controls and how each is judged from the [`Evidence`]: pure functions, so every
//! status rule is tested without a node.

use serde::Serialize;
use serde_json::{Value, json};

use crate::evidence::{Evidence, REVIEW_DAYS};

/// A control's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The evidence meets it.
    Pass,
    /// Met in part, or needs a person's look.
    Warn,
    /// Not met.
    Fail,
    /// The node holds no evidence for it (it lives outside the node).
    NotApplicable,
}

impl Status {
    /// Its name in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
            Self::NotApplicable => "not-applicable",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Control {
    /// Stable id (`hipaa-164.312-a-1`).
    pub id: &'static str,
    /// `HIPAA`, `GDPR` or `ISO/IEC 27001:2022`.
    pub framework: &'static str,
    /// The citation (`45 CFR §164.312(a)(1)`).
    pub reference: &'static str,
    /// The control's name.
    pub title: &'static str,
    /// Its status.
    pub status: Status,
    /// What was found, in a sentence a non-engineer reads.
    pub finding: String,
    /// The facts behind it.
    pub evidence: Value,
    /// The logs it rests on (`records`, `access`): the report pins their checkpoints.
    pub logs: Vec<&'static str>,
}

struct Judged {
    status: Status,
    finding: String,
    evidence: Value,
    logs: Vec<&'static str>,
}

fn judged(status: Status, finding: impl Into<String>, evidence: Value) -> Judged {
    Judged {
        status,
        finding: finding.into(),
        evidence,
        logs: Vec::new(),
    }
}

impl Judged {
    fn on(mut self, logs: &[&'static str]) -> Self {
        self.logs = logs.to_vec();
        self
    }
}

fn ids(v: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = v.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > SHOWN {
        s.push_str(&format!(" and {} more", v.len() - SHOWN));
    }
    s
}

/// A control on serve's settings, before serve recorded any.
fn never_served() -> Judged {
    judged(
        Status::Warn,
        "no record of how `medvault serve` runs yet: start it once so its settings are recorded",
        Value::Null,
    )
}

fn unique_users(e: &Evidence) -> Judged {
    let p = &e.people;
    let t = &e.tokens;
    let facts = json!({
        "accounts": p.accounts, "enabled": p.enabled, "by_role": p.by_role,
        "generic_names": p.generic_names, "dormant": p.dormant, "api_tokens_live": t.live,
        "api_tokens_long_lived": t.long_lived,
    });
    if !p.generic_names.is_empty() {
        return judged(
            Status::Fail,
            format!(
                "{} enabled account(s) carry a generic name rather than a person's ({}): shared accounts defeat unique identification",
                p.generic_names.len(),
                ids(&p.generic_names)
            ),
            facts,
        );
    }
    if !p.dormant.is_empty() {
        return judged(
            Status::Warn,
            format!(
                "{} enabled staff account(s) have not signed in for {} days ({}): disable those no longer needed",
                p.dormant.len(),
                crate::evidence::DORMANT_DAYS,
                ids(&p.dormant)
            ),
            facts,
        );
    }
    if !t.long_lived.is_empty() {
        return judged(
            Status::Warn,
            format!(
                "every person has their own account (ids never reused); {} API token(s) live longer than 90 days ({}): check each is one system's",
                t.long_lived.len(),
                ids(&t.long_lived)
            ),
            facts,
        );
    }
    judged(
        Status::Pass,
        format!(
            "{} enabled account(s), each a person's own (ids never reused, no generic names); {} API token(s) live, none longer than 90 days",
            p.enabled, t.live
        ),
        facts,
    )
}

fn emergency_access(e: &Evidence) -> Judged {
    let b = &e.alerts.break_glass;
    let facts = json!({
        "grants_90_days": b.raised, "reviewed": b.reviewed, "overdue": b.overdue,
        "longest_grant_minutes": e.deployment.as_ref().map(|d| d.break_glass_max_minutes),
    });
    let j = if !b.overdue.is_empty() {
        judged(
            Status::Fail,
            format!(
                "{} break-glass grant(s) of the last 90 days not reviewed within {REVIEW_DAYS} days ({})",
                b.overdue.len(),
                ids(&b.overdue)
            ),
            facts,
        )
    } else if b.reviewed < b.raised {
        judged(
            Status::Warn,
            format!(
                "{} of {} break-glass grant(s) of the last 90 days await review (each needs a justification, is time-boxed and raises an alert)",
                b.raised - b.reviewed,
                b.raised
            ),
            facts,
        )
    } else {
        judged(
            Status::Pass,
            format!(
                "emergency access is break-glass: justified, time-boxed, always alerted; {} grant(s) in the last 90 days, all reviewed",
                b.raised
            ),
            facts,
        )
    };
    j.on(&["access"])
}

fn automatic_logoff(e: &Evidence) -> Judged {
    let Some(d) = &e.deployment else {
        return never_served();
    };
    let facts = json!({
        "session_idle_minutes": d.session_idle_minutes,
        "admin_session_idle_minutes": d.admin_session_idle_minutes,
        "session_max_hours": d.session_max_hours,
        "recorded": medvault_node::clock::instant(d.recorded_micros),
    });
    if d.session_idle_minutes <= 30
        && d.admin_session_idle_minutes <= 15
        && d.session_max_hours <= 12
    {
        judged(
            Status::Pass,
            format!(
                "sessions end after {} minutes unused ({} for admins) and after {} hours at most",
                d.session_idle_minutes, d.admin_session_idle_minutes, d.session_max_hours
            ),
            facts,
        )
    } else {
        judged(
            Status::Fail,
            "session timeouts are longer than NIST AAL2/AAL3 allow (30/15 minutes idle, 12 hours)",
            facts,
        )
    }
}

fn encryption_at_rest(e: &Evidence) -> Judged {
    let k = &e.keys;
    let r = &e.records;
    let facts = json!({
        "versions": r.versions, "sealed": r.with_body - r.not_sealed, "not_sealed": r.not_sealed,
        "without_body": r.without_body, "kek_versions": k.kek_versions, "current_kek": k.current_kek,
        "data_keys": k.data_keys, "data_keys_under_older_kek": k.under_older_kek,
        "key_file_passphrase": k.key_file_passphrase, "current_kek_age_days": k.current_kek_age_days,
    });
    if r.not_sealed > 0 {
        return judged(
            Status::Fail,
            format!(
                "{} stored version(s) are not sealed envelopes: something wrote past the node",
                r.not_sealed
            ),
            facts,
        );
    }
    let sealed = format!(
        "all {} stored bodies are sealed (AES-256-GCM) under {} per-patient and shared data keys",
        r.with_body, k.data_keys
    );
    if !k.key_file_passphrase {
        return judged(
            Status::Warn,
            format!(
                "{sealed}; the root key file is not sealed with a passphrase (anyone who copies the data directory can open it)"
            ),
            facts,
        );
    }
    if k.under_older_kek > 0 {
        return judged(
            Status::Warn,
            format!(
                "{sealed}; {} data key(s) are still wrapped by an older key-encryption key: run `medvault keys rotate` to rewrap them",
                k.under_older_kek
            ),
            facts,
        );
    }
    if let Some(age) = k
        .current_kek_age_days
        .filter(|a| *a > crate::evidence::KEK_MAX_AGE_DAYS)
    {
        return judged(
            Status::Warn,
            format!(
                "{sealed}; the current key-encryption key (version {}) is {age} days old: rotate it yearly (`medvault keys rotate`)",
                k.current_kek
            ),
            facts,
        );
    }
    judged(
        Status::Pass,
        format!(
            "{sealed}, all wrapped by the current key-encryption key (version {}, {}); the root key file is passphrase-sealed",
            k.current_kek,
            k.current_kek_age_days.map_or_else(
                || "its age not recorded".to_owned(),
                |a| format!("{a} days old")
            )
        ),
        facts,
    )
}

fn audit_controls(e: &Evidence) -> Judged {
    let l = &e.ledger;
    let facts = json!({
        "verify": l.verify, "records_log": l.records, "access_log": l.access,
        "versions_checked": l.versions_checked, "audit_records_checked": l.audit_records_checked,
        "archived": l.archived, "witnesses": l.witnesses,
    });
    let j = if !l.verified {
        judged(
            Status::Fail,
            format!("ledger verification failed: {}", l.verify),
            facts,
        )
    } else if l.witnesses == 0 || l.access.cosigned_size.is_none() {
        judged(
            Status::Warn,
            format!(
                "every request is in the access log ({} entries, verified); no witness has cosigned its checkpoints, so only this node vouches for its history",
                l.access.size
            ),
            facts,
        )
    } else {
        judged(
            Status::Pass,
            format!(
                "every request is in the access log ({} entries, verified), witnessed up to {} by {}",
                l.access.size,
                l.access.cosigned_size.unwrap_or(0),
                l.access.cosigned_by.join(", ")
            ),
            facts,
        )
    };
    j.on(&["records", "access"])
}

fn integrity(e: &Evidence) -> Judged {
    let l = &e.ledger;
    let facts = json!({"verify": l.verify, "versions_checked": l.versions_checked,
        "records_log_size": l.records.size});
    let j = if l.verified {
        judged(
            Status::Pass,
            format!(
                "{} resource version(s) match their commitments in the records log; a changed or removed version would not",
                l.versions_checked
            ),
            facts,
        )
    } else {
        judged(
            Status::Fail,
            format!("records do not match the records log: {}", l.verify),
            facts,
        )
    };
    j.on(&["records"])
}

fn authentication(e: &Evidence) -> Judged {
    let p = &e.people;
    let a = &e.apps;
    let facts = json!({
        "people": p.enabled, "with_totp": p.with_totp, "with_passkey": p.with_passkey,
        "without_second_factor": p.without_second_factor,
        "admins_without_second_factor": p.admins_without_second_factor,
        "apps": a.enabled, "apps_private_key_jwt": a.private_key_jwt, "apps_public_pkce": a.public_pkce,
    });
    let share = |n: u64| (n * 100).checked_div(p.enabled).unwrap_or(100);
    let with_factor = p.enabled - p.without_second_factor.len() as u64;
    let summary = format!(
        "{} % of {} people have a second factor ({} % a passkey); apps: {} with private_key_jwt, {} public with PKCE",
        share(with_factor),
        p.enabled,
        share(p.with_passkey),
        a.private_key_jwt,
        a.public_pkce
    );
    if !p.admins_without_second_factor.is_empty() {
        judged(
            Status::Fail,
            format!(
                "{summary}; admin account(s) without a second factor: {}",
                ids(&p.admins_without_second_factor)
            ),
            facts,
        )
    } else if !p.without_second_factor.is_empty() {
        judged(
            Status::Warn,
            format!(
                "{summary}; until they enroll one these accounts can do nothing but enroll: {}",
                ids(&p.without_second_factor)
            ),
            facts,
        )
    } else {
        judged(Status::Pass, summary, facts)
    }
}

fn transmission(e: &Evidence) -> Judged {
    let Some(d) = &e.deployment else {
        return never_served();
    };
    let facts = json!({"listen": d.listen, "loopback": d.loopback, "tls": d.tls,
        "pq_key_exchange": d.pq_key_exchange, "peer_mtls": d.peer_mtls});
    match (d.tls.as_str(), d.loopback) {
        ("certificate", _) => judged(
            Status::Pass,
            format!(
                "HTTPS only, TLS 1.3{}",
                if d.pq_key_exchange {
                    ", post-quantum hybrid key exchange (X25519MLKEM768) preferred"
                } else {
                    ""
                }
            ),
            facts,
        ),
        ("dev-certificate", _) => judged(
            Status::Warn,
            "TLS 1.3 with a self-signed development certificate: clients cannot check whom they talk to",
            facts,
        ),
        (_, true) => judged(
            Status::Warn,
            format!(
                "plain HTTP on the loopback address {}: a TLS proxy on this host must front it",
                d.listen
            ),
            facts,
        ),
        _ => judged(
            Status::Fail,
            format!(
                "plain HTTP on {}, a non-loopback address: health data crosses the network unencrypted",
                d.listen
            ),
            facts,
        ),
    }
}

fn activity_review(e: &Evidence) -> Judged {
    let s = &e.alerts.sentinel;
    let on = e.deployment.as_ref().map(|d| d.sentinel.clone());
    let facts = json!({"sentinel": on, "alerts_90_days": s.raised, "reviewed": s.reviewed,
        "overdue": s.overdue, "review_days": REVIEW_DAYS});
    let j = if on.as_deref() == Some("off") {
        judged(
            Status::Fail,
            "Sentinel's live review of the access log is off (`serve --sentinel-threshold off`)",
            facts,
        )
    } else if !s.overdue.is_empty() {
        judged(
            Status::Fail,
            format!(
                "{} alert(s) not reviewed within {REVIEW_DAYS} days ({})",
                s.overdue.len(),
                ids(&s.overdue)
            ),
            facts,
        )
    } else if s.reviewed < s.raised {
        judged(
            Status::Warn,
            format!(
                "Sentinel scores every access; {} of {} alert(s) of the last 90 days await review",
                s.raised - s.reviewed,
                s.raised
            ),
            facts,
        )
    } else {
        judged(
            Status::Pass,
            format!(
                "Sentinel scores every access as it is logged; {} alert(s) in the last 90 days, all reviewed",
                s.raised
            ),
            facts,
        )
    };
    j.on(&["access"])
}

fn disclosures(e: &Evidence) -> Judged {
    let l = &e.ledger;
    let facts = json!({"access_log_entries": l.access.size, "archived": l.archived,
        "verify": l.verify, "patient_index_from": l.patient_index_from,
        "patient_index_to": l.patient_index_to});
    let j = if l.verified {
        judged(
            Status::Pass,
            format!(
                "every disclosure is an access-log entry; a patient's accounting is `GET /fhir/AuditEvent?patient=…` ({} entries, {} archived with their leaves kept); the patient index it reads was checked against every entry{}",
                l.access.size,
                l.archived,
                medvault_node::access_index::coverage(
                    (l.patient_index_from, l.patient_index_to),
                    l.archived,
                    l.access.size
                )
            ),
            facts,
        )
    } else {
        judged(
            Status::Fail,
            "the access log does not verify, so its accounting cannot be relied on",
            facts,
        )
    };
    j.on(&["access"])
}

fn by_default(e: &Evidence) -> Judged {
    let Some(d) = &e.deployment else {
        return never_served();
    };
    let facts = json!({"default_policy": d.default_policy, "site_policies": d.site_policies,
        "sentinel": d.sentinel, "playbooks": d.playbooks, "dry_run": d.dry_run});
    if d.default_policy {
        judged(
            Status::Pass,
            format!(
                "the default policy is in force (care relationship, consent and purpose decide each access){}; every record is sealed, every search index blinded",
                if d.site_policies > 0 {
                    format!(", with {} site polic(ies) added", d.site_policies)
                } else {
                    String::new()
                }
            ),
            facts,
        )
    } else {
        judged(
            Status::Warn,
            "the default access policy is replaced by site files: check they keep consent and care relationships",
            facts,
        )
    }
}

fn records_of_processing(e: &Evidence) -> Judged {
    let facts = json!({
        "purposes": ["treatment (TREAT)", "emergency treatment (ETREAT, break-glass)",
                     "payment and operations (HPAYMT, HOPERAT)", "research (HRESCH, under consent)",
                     "patient's own access (PATRQT)"],
        "categories": "health data (FHIR R4 resources), identities of staff and apps",
        "recipients": e.peers, "apps": e.apps.enabled,
        "security": "sealed per patient (AES-256-GCM), blinded indexes, tamper-evident logs",
    });
    judged(
        Status::Pass,
        format!(
            "generated from the node: the purposes of use its policy knows, {} peer node(s) that receive shared data, {} app(s)",
            e.peers.len(),
            e.apps.enabled
        ),
        facts,
    )
}

fn breach_notification(e: &Evidence) -> Judged {
    let b = &e.breaches;
    let facts = json!({
        "recorded": b.recorded, "open": b.open,
        "authority_missed": b.authority_missed, "individuals_missed": b.individuals_missed,
    });
    if !b.authority_missed.is_empty() {
        return judged(
            Status::Fail,
            format!(
                "the supervisory authority was not notified within 72 hours of {} breach(es) ({})",
                b.authority_missed.len(),
                ids(&b.authority_missed)
            ),
            facts,
        );
    }
    judged(
        Status::Pass,
        format!(
            "{} breach(es) in the register ({} open), every authority notice on time or pending within 72 hours; assessments read the access log (medvault breach assess)",
            b.recorded, b.open
        ),
        facts,
    )
    .on(&["access"])
}

fn subject_requests(e: &Evidence) -> Judged {
    let r = &e.requests;
    let facts = json!({"recorded": r.recorded, "open": r.open, "late": r.late});
    if !r.late.is_empty() {
        return judged(
            Status::Fail,
            format!(
                "{} data subject's request(s) open past, or answered after, their month ({})",
                r.late.len(),
                ids(&r.late)
            ),
            facts,
        );
    }
    judged(
        Status::Pass,
        format!(
            "{} request(s) recorded ({} open), each answered within a month or still within it; patients export their own record ($export-my-data)",
            r.recorded, r.open
        ),
        facts,
    )
    .on(&["access"])
}

fn information_deletion(e: &Evidence) -> Judged {
    let d = &e.deletion;
    let facts = serde_json::to_value(d).unwrap_or_default();
    if !d.erasure_late.is_empty() {
        return judged(
            Status::Fail,
            format!(
                "{} erasure request(s) open past, or answered after, their month ({})",
                d.erasure_late.len(),
                ids(&d.erasure_late)
            ),
            facts,
        );
    }
    judged(
        Status::Pass,
        format!(
            "records are deleted by destroying the patient's data key (crypto-shredding, every version and backup made unreadable, a signed certificate issued); {} patient(s) erased, {} erasure request(s) answered within their month or still within it, {} legal hold(s) and {} restriction(s) of processing in force",
            d.erased, d.erasure_requests, d.holds_in_force, d.restrictions_in_force
        ),
        facts,
    )
    .on(&["access", "records"])
}

fn data_masking(e: &Evidence) -> Judged {
    let Some(d) = &e.deployment else {
        return never_served();
    };
    let facts = json!({
        "default_policy": d.default_policy, "site_policies": d.site_policies,
        "withheld_as": "absent (404, left out of searches and totals)",
        "search_index": "keyed hashes (HMAC-SHA-256 per parameter), never plaintext",
        "access_log_details": "sealed (AES-256-GCM); leaves are hashes",
    });
    if d.default_policy {
        judged(
            Status::Pass,
            "what the policy withholds is masked as absent (404, left out of searches and their totals); sensitive records (HIV, mental health, substance use, genetics, violence, restricted) need the patient's permission; search indexes and access-log details never hold plaintext",
            facts,
        )
    } else {
        judged(
            Status::Warn,
            "the default policy (which withholds sensitive records without the patient's permission) is replaced by site files: check they keep it",
            facts,
        )
    }
}

fn leakage_prevention(e: &Evidence) -> Judged {
    let Some(d) = &e.deployment else {
        return never_served();
    };
    let facts = json!({
        "sentinel": d.sentinel, "playbooks": d.playbooks, "dry_run": d.dry_run,
        "peers": e.peers.len(), "tls": d.tls,
    });
    let j = if d.sentinel == "off" {
        judged(
            Status::Fail,
            "Sentinel is off: mass reads, exports and deletions are not detected as they happen",
            facts,
        )
    } else if d.playbooks == "none" || d.dry_run {
        judged(
            Status::Warn,
            "Sentinel detects mass reads and exports, but no playbook stops them (playbooks off or in dry run)",
            facts,
        )
    } else {
        judged(
            Status::Pass,
            format!(
                "Sentinel scores every access and its playbooks stop mass reads, exports and deletions within a second; data leaves only to the {} registered peer node(s), sealed for each",
                e.peers.len()
            ),
            facts,
        )
    };
    j.on(&["access"])
}

fn hitech_notification(e: &Evidence) -> Judged {
    let b = &e.breaches;
    let facts = json!({
        "recorded": b.recorded, "individuals_missed": b.individuals_missed,
    });
    if !b.individuals_missed.is_empty() {
        return judged(
            Status::Fail,
            format!(
                "the individuals affected by {} breach(es) were not notified within 60 days ({})",
                b.individuals_missed.len(),
                ids(&b.individuals_missed)
            ),
            facts,
        );
    }
    judged(
        Status::Pass,
        format!(
            "{} breach(es) in the register, every individuals' notice on time or pending within 60 days",
            b.recorded
        ),
        facts,
    )
    .on(&["access"])
}

/// The worst of several statuses (for a control resting on several others).
fn worst(rows: &[&Control]) -> Status {
    rows.iter()
        .map(|c| c.status)
        .filter(|s| *s != Status::NotApplicable)
        .max()
        .unwrap_or(Status::NotApplicable)
}

struct Spec {
    id: &'static str,
    framework: &'static str,
    reference: &'static str,
    title: &'static str,
    judge: fn(&Evidence) -> Judged,
}

const HIPAA: &str = "HIPAA";
const GDPR: &str = "GDPR";
const HITECH: &str = "HITECH";
const ISO: &str = "ISO/IEC 27001:2022";

const SPECS: &[Spec] = &[
    Spec {
        id: "hipaa-164.312-a-1",
        framework: HIPAA,
        reference: "45 CFR §164.312(a)(1)",
        title: "Unique user identification",
        judge: unique_users,
    },
    Spec {
        id: "hipaa-164.312-a-2-ii",
        framework: HIPAA,
        reference: "45 CFR §164.312(a)(2)(ii)",
        title: "Emergency access procedure",
        judge: emergency_access,
    },
    Spec {
        id: "hipaa-164.312-a-2-iii",
        framework: HIPAA,
        reference: "45 CFR §164.312(a)(2)(iii)",
        title: "Automatic logoff",
        judge: automatic_logoff,
    },
    Spec {
        id: "hipaa-164.312-a-2-iv",
        framework: HIPAA,
        reference: "45 CFR §164.312(a)(2)(iv)",
        title: "Encryption and decryption (at rest)",
        judge: encryption_at_rest,
    },
    Spec {
        id: "hipaa-164.312-b",
        framework: HIPAA,
        reference: "45 CFR §164.312(b)",
        title: "Audit controls",
        judge: audit_controls,
    },
    Spec {
        id: "hipaa-164.312-c-1",
        framework: HIPAA,
        reference: "45 CFR §164.312(c)(1)",
        title: "Integrity",
        judge: integrity,
    },
    Spec {
        id: "hipaa-164.312-d",
        framework: HIPAA,
        reference: "45 CFR §164.312(d)",
        title: "Person or entity authentication",
        judge: authentication,
    },
    Spec {
        id: "hipaa-164.312-e-1",
        framework: HIPAA,
        reference: "45 CFR §164.312(e)(1)",
        title: "Transmission security",
        judge: transmission,
    },
    Spec {
        id: "hipaa-164.308-a-1-ii-d",
        framework: HIPAA,
        reference: "45 CFR §164.308(a)(1)(ii)(D)",
        title: "Information system activity review",
        judge: activity_review,
    },
    Spec {
        id: "hipaa-164.528",
        framework: HIPAA,
        reference: "45 CFR §164.528",
        title: "Accounting of disclosures",
        judge: disclosures,
    },
    Spec {
        id: "gdpr-25",
        framework: GDPR,
        reference: "GDPR Art. 25",
        title: "Data protection by design and by default",
        judge: by_default,
    },
    Spec {
        id: "gdpr-30",
        framework: GDPR,
        reference: "GDPR Art. 30",
        title: "Records of processing activities",
        judge: records_of_processing,
    },
    Spec {
        id: "gdpr-33-34",
        framework: GDPR,
        reference: "GDPR Art. 33, 34",
        title: "Breach notification (authority, data subjects) and register",
        judge: breach_notification,
    },
    Spec {
        id: "gdpr-12-15-21",
        framework: GDPR,
        reference: "GDPR Art. 12(3), 15–21",
        title: "Data subjects' requests answered within a month",
        judge: subject_requests,
    },
    Spec {
        id: "iso-8.10",
        framework: ISO,
        reference: "Annex A 8.10",
        title: "Information deletion",
        judge: information_deletion,
    },
    Spec {
        id: "iso-8.11",
        framework: ISO,
        reference: "Annex A 8.11",
        title: "Data masking",
        judge: data_masking,
    },
    Spec {
        id: "iso-8.12",
        framework: ISO,
        reference: "Annex A 8.12",
        title: "Data leakage prevention",
        judge: leakage_prevention,
    },
    Spec {
        id: "hitech-164.404",
        framework: HITECH,
        reference: "45 CFR §164.404–408",
        title: "Breach notification to individuals, HHS and media",
        judge: hitech_notification,
    },
];

/// Rows that rest on others' evidence: (id, framework, reference, title, the rows' ids).
const DERIVED: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "gdpr-5-1-f",
        GDPR,
        "GDPR Art. 5(1)(f)",
        "Integrity and confidentiality",
        &[
            "hipaa-164.312-a-2-iv",
            "hipaa-164.312-c-1",
            "hipaa-164.312-d",
            "hipaa-164.312-e-1",
        ],
    ),
    (
        "gdpr-32",
        GDPR,
        "GDPR Art. 32",
        "Security of processing",
        &[
            "hipaa-164.312-a-2-iv",
            "hipaa-164.312-b",
            "hipaa-164.312-d",
            "hipaa-164.312-e-1",
            "hipaa-164.308-a-1-ii-d",
        ],
    ),
    (
        "iso-5.15",
        ISO,
        "Annex A 5.15",
        "Access control",
        &["gdpr-25", "hipaa-164.312-a-2-ii"],
    ),
    (
        "iso-5.17",
        ISO,
        "Annex A 5.17",
        "Authentication information",
        &["hipaa-164.312-d"],
    ),
    (
        "iso-5.18",
        ISO,
        "Annex A 5.18",
        "Access rights",
        &["hipaa-164.312-a-1"],
    ),
    (
        "iso-8.2",
        ISO,
        "Annex A 8.2",
        "Privileged access rights",
        &["hipaa-164.312-d", "hipaa-164.312-a-1"],
    ),
    (
        "iso-8.3",
        ISO,
        "Annex A 8.3",
        "Information access restriction",
        &["gdpr-25"],
    ),
    (
        "iso-8.5",
        ISO,
        "Annex A 8.5",
        "Secure authentication",
        &["hipaa-164.312-d", "hipaa-164.312-a-2-iii"],
    ),
    (
        "iso-8.15",
        ISO,
        "Annex A 8.15",
        "Logging",
        &["hipaa-164.312-b"],
    ),
    (
        "iso-8.16",
        ISO,
        "Annex A 8.16",
        "Monitoring activities",
        &["hipaa-164.308-a-1-ii-d"],
    ),
    (
        "iso-8.24",
        ISO,
        "Annex A 8.24",
        "Use of cryptography",
        &["hipaa-164.312-a-2-iv", "hipaa-164.312-e-1"],
    ),
];

/// Every control, judged.
pub fn evaluate(e: &Evidence) -> Vec<Control> {
    let mut out: Vec<Control> = SPECS
        .iter()
        .map(|s| {
            let j = (s.judge)(e);
            Control {
                id: s.id,
                framework: s.framework,
                reference: s.reference,
                title: s.title,
                status: j.status,
                finding: j.finding,
                evidence: j.evidence,
                logs: j.logs,
            }
        })
        .collect();
    for (id, framework, reference, title, on) in DERIVED {
        let rows: Vec<&Control> = out.iter().filter(|c| on.contains(&c.id)).collect();
        let status = worst(&rows);
        let mut logs: Vec<&'static str> = rows.iter().flat_map(|c| c.logs.clone()).collect();
        logs.sort_unstable();
        logs.dedup();
        let finding = rows
            .iter()
            .filter(|c| c.status == status)
            .map(|c| format!("{} ({}): {}", c.reference, c.status.as_str(), c.finding))
            .collect::<Vec<_>>()
            .join("; ");
        let control = Control {
            id,
            framework,
            reference,
            title,
            status,
            finding: format!("rests on {}. {finding}", on.join(", ")),
            evidence: json!({"same_evidence_as": on}),
            logs,
        };
        out.push(control);
    }
    out.push(Control {
        id: "iso-8.25",
        framework: ISO,
        reference: "Annex A 8.25",
        title: "Secure development life cycle",
        status: Status::NotApplicable,
        finding: "its evidence is the vendor's (reviews, tests and CI of the medvault project), not the node's".into(),
        evidence: Value::Null,
        logs: Vec::new(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::*;

    fn good() -> Evidence {
        Evidence {
            now_micros: 1_800_000_000_000_000,
            deployment: Some(Deployment {
                recorded_micros: 1_799_999_000_000_000,
                listen: "10.0.0.5:443".into(),
                loopback: false,
                tls: "certificate".into(),
                pq_key_exchange: true,
                peer_mtls: false,
                session_idle_minutes: 30,
                admin_session_idle_minutes: 15,
                session_max_hours: 12,
                sentinel: "0.85".into(),
                playbooks: "built-in".into(),
                dry_run: false,
                default_policy: true,
                site_policies: 0,
                witnesses: 1,
                break_glass_max_minutes: 240,
            }),
            people: People {
                accounts: 3,
                enabled: 3,
                with_totp: 2,
                with_passkey: 1,
                admins: 1,
                ..People::default()
            },
            tokens: Tokens::default(),
            apps: Apps::default(),
            keys: Keys {
                kek_versions: vec![1, 2],
                current_kek: 2,
                data_keys: 10,
                under_older_kek: 0,
                key_file_passphrase: true,
                current_kek_age_days: Some(100),
            },
            records: Records {
                versions: 20,
                with_body: 19,
                not_sealed: 0,
                without_body: 1,
            },
            ledger: Ledger {
                verify: "ok".into(),
                verified: true,
                access: LogHead {
                    size: 100,
                    cosigned_size: Some(90),
                    cosigned_by: vec!["witness.example".into()],
                    ..LogHead::default()
                },
                witnesses: 1,
                ..Ledger::default()
            },
            alerts: Alerts::default(),
            peers: Vec::new(),
            breaches: crate::register::Breaches::default(),
            requests: crate::subject::Requests::default(),
            deletion: Deletion::default(),
        }
    }

    fn status(e: &Evidence, id: &str) -> Status {
        evaluate(e).into_iter().find(|c| c.id == id).unwrap().status
    }

    #[test]
    fn a_well_run_node_passes_everything_it_holds_evidence_for() {
        let rows = evaluate(&good());
        assert_eq!(rows.len(), SPECS.len() + DERIVED.len() + 1);
        for c in &rows {
            let expected = if c.id == "iso-8.25" {
                Status::NotApplicable
            } else {
                Status::Pass
            };
            assert_eq!(c.status, expected, "{}: {}", c.id, c.finding);
        }
        let mut ids: Vec<_> = rows.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), rows.len(), "ids are unique");
    }

    #[test]
    fn each_failure_is_named_by_its_control_and_carried_to_the_rows_resting_on_it() {
        let mut e = good();
        e.deployment.as_mut().unwrap().tls = "none".into();
        assert_eq!(status(&e, "hipaa-164.312-e-1"), Status::Fail);
        assert_eq!(status(&e, "gdpr-32"), Status::Fail);
        assert_eq!(status(&e, "iso-8.24"), Status::Fail);
        e.deployment.as_mut().unwrap().loopback = true;
        assert_eq!(status(&e, "hipaa-164.312-e-1"), Status::Warn);

        let mut e = good();
        e.ledger.verified = false;
        e.ledger.verify = "records log leaf 7 does not match".into();
        assert_eq!(status(&e, "hipaa-164.312-b"), Status::Fail);
        assert_eq!(status(&e, "hipaa-164.312-c-1"), Status::Fail);
        assert_eq!(status(&e, "hipaa-164.528"), Status::Fail);

        let mut e = good();
        e.people.admins_without_second_factor = vec!["usr_1".into()];
        e.people.without_second_factor = vec!["usr_1".into()];
        assert_eq!(status(&e, "hipaa-164.312-d"), Status::Fail);
        e.people.admins_without_second_factor.clear();
        assert_eq!(status(&e, "hipaa-164.312-d"), Status::Warn);

        let mut e = good();
        e.people.generic_names = vec!["usr_2".into()];
        assert_eq!(status(&e, "hipaa-164.312-a-1"), Status::Fail);
        assert_eq!(status(&e, "iso-5.18"), Status::Fail);
        let mut e = good();
        e.people.dormant = vec!["usr_3".into()];
        assert_eq!(status(&e, "hipaa-164.312-a-1"), Status::Warn);

        let mut e = good();
        e.breaches.recorded = 1;
        e.breaches.authority_missed = vec!["brc_1".into()];
        assert_eq!(status(&e, "gdpr-33-34"), Status::Fail);
        assert_eq!(status(&e, "hitech-164.404"), Status::Pass);
        e.breaches.individuals_missed = vec!["brc_1".into()];
        assert_eq!(status(&e, "hitech-164.404"), Status::Fail);

        let mut e = good();
        e.requests.late = vec!["dsr_1".into()];
        assert_eq!(status(&e, "gdpr-12-15-21"), Status::Fail);
        let mut e = good();
        e.deletion.erasure_late = vec!["dsr_2".into()];
        assert_eq!(status(&e, "iso-8.10"), Status::Fail);
        let mut e = good();
        e.deployment.as_mut().unwrap().default_policy = false;
        assert_eq!(status(&e, "iso-8.11"), Status::Warn);
        let mut e = good();
        e.deployment.as_mut().unwrap().dry_run = true;
        assert_eq!(status(&e, "iso-8.12"), Status::Warn);

        let mut e = good();
        e.records.not_sealed = 1;
        assert_eq!(status(&e, "hipaa-164.312-a-2-iv"), Status::Fail);
        let mut e = good();
        e.keys.under_older_kek = 3;
        assert_eq!(status(&e, "hipaa-164.312-a-2-iv"), Status::Warn);
        e.keys.key_file_passphrase = false;
        assert_eq!(status(&e, "hipaa-164.312-a-2-iv"), Status::Warn);
        let mut e = good();
        e.keys.current_kek_age_days = Some(400);
        assert_eq!(status(&e, "hipaa-164.312-a-2-iv"), Status::Warn);
        e.keys.current_kek_age_days = Some(30);
        assert_eq!(status(&e, "hipaa-164.312-a-2-iv"), Status::Pass);

        let mut e = good();
        e.alerts.break_glass = Reviewed {
            raised: 2,
            reviewed: 1,
            overdue: Vec::new(),
        };
        assert_eq!(status(&e, "hipaa-164.312-a-2-ii"), Status::Warn);
        e.alerts.break_glass.overdue = vec!["alr_1".into()];
        assert_eq!(status(&e, "hipaa-164.312-a-2-ii"), Status::Fail);

        let mut e = good();
        e.deployment.as_mut().unwrap().sentinel = "off".into();
        assert_eq!(status(&e, "hipaa-164.308-a-1-ii-d"), Status::Fail);
        assert_eq!(status(&e, "iso-8.16"), Status::Fail);
        assert_eq!(status(&e, "iso-8.12"), Status::Fail);

        let mut e = good();
        e.ledger.witnesses = 0;
        e.ledger.access.cosigned_size = None;
        assert_eq!(status(&e, "hipaa-164.312-b"), Status::Warn);

        let mut e = good();
        e.deployment = None;
        assert_eq!(status(&e, "hipaa-164.312-a-2-iii"), Status::Warn);
        assert_eq!(status(&e, "hipaa-164.312-e-1"), Status::Warn);
    }
}
