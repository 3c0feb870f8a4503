//! What the report rests on, read from the node as it is now: accounts and their factors,
//! credentials, keys, the stored versions, both logs (verified), alerts and their review, the
//! settings `serve` last started with, peers. Reading changes nothing (the node's identity keys
//! aside, created on first use to sign).

use std::collections::BTreeMap;

use medvault_node::Node;
use medvault_node::ledger::LogId;
use medvault_store::AlertQuery;
use serde::{Deserialize, Serialize};

use crate::Error;

/// Meta key (records database): the settings `medvault serve` last started with.
pub const DEPLOYMENT_META: &str = "compliance_deployment";

const DAY_MICROS: i64 = 86_400_000_000;

/// How many days alerts are looked back over.
pub const ALERT_WINDOW_DAYS: i64 = 90;

/// Days within which an alert should have been reviewed (HIPAA §164.308(a)(1)(ii)(D)).
pub const REVIEW_DAYS: i64 = 7;

/// A key-encryption key older than this many days should be rotated (`medvault keys rotate`).
pub const KEK_MAX_AGE_DAYS: i64 = 365;

/// A staff account not signed in for this many days (or never, since made) is dormant.
pub const DORMANT_DAYS: i64 = 90;

/// An API token living longer than this many days is a standing credential worth a look.
pub const LONG_TOKEN_DAYS: i64 = 90;

/// How `medvault serve` was last started: recorded by it at start, read by the report (which
/// may run while no server does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// When serve recorded this, microseconds.
    pub recorded_micros: i64,
    /// The address the API listens on.
    pub listen: String,
    /// True when that address is a loopback one.
    pub loopback: bool,
    /// `certificate`, `dev-certificate` or `none` (plain HTTP).
    pub tls: String,
    /// Hybrid post-quantum key exchange (X25519MLKEM768) offered on TLS.
    pub pq_key_exchange: bool,
    /// A mutual-TLS listener for peers' bundles.
    pub peer_mtls: bool,
    /// Automatic logoff: minutes a session may sit unused (people), and admins'.
    pub session_idle_minutes: u64,
    /// The same for admins (AAL3).
    pub admin_session_idle_minutes: u64,
    /// Hours a session lasts at most.
    pub session_max_hours: u64,
    /// Live Sentinel scoring's threshold (`off` when it is off).
    pub sentinel: String,
    /// `built-in`, `file` or `none`, and whether they only record what they would do.
    pub playbooks: String,
    /// Playbooks in dry-run mode.
    pub dry_run: bool,
    /// The default access policy is in force (not replaced by site files).
    pub default_policy: bool,
    /// Site policy files added.
    pub site_policies: usize,
    /// Witnesses asked to cosign checkpoints.
    pub witnesses: usize,
    /// The longest break-glass grant, minutes.
    pub break_glass_max_minutes: u64,
}

/// Records `d` as the settings the node now serves with.
///
/// # Errors
/// Store failures.
pub fn record_deployment(node: &Node, d: &Deployment) -> Result<(), Error> {
    let text = serde_json::to_string(d).map_err(|e| Error::Internal(e.to_string()))?;
    medvault_store::write_with(node.store.as_ref(), move |tx| {
        tx.set_meta(DEPLOYMENT_META, &text)
    })?;
    Ok(())
}

/// People's accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct People {
    /// Accounts in all.
    pub accounts: u64,
    /// Enabled ones.
    pub enabled: u64,
    /// Enabled accounts by role.
    pub by_role: BTreeMap<String, u64>,
    /// Enabled accounts with an active TOTP secret.
    pub with_totp: u64,
    /// Enabled accounts with at least one passkey.
    pub with_passkey: u64,
    /// Enabled accounts with neither: ids.
    pub without_second_factor: Vec<String>,
    /// Enabled admins with neither: ids.
    pub admins_without_second_factor: Vec<String>,
    /// Enabled admins.
    pub admins: u64,
    /// Enabled accounts whose user name is a generic one (`admin`, `shared`, `nurse`…): ids.
    pub generic_names: Vec<String>,
    /// Accounts locked now after failed sign-ins: ids.
    pub locked: Vec<String>,
    /// Enabled staff accounts (not patients') not signed in for [`DORMANT_DAYS`], or never
    /// since made that long ago: ids.
    pub dormant: Vec<String>,
}

/// API tokens (automation credentials made on the host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Usable now (not expired, not revoked).
    pub live: u64,
    /// Of those, living more than [`LONG_TOKEN_DAYS`]: ids.
    pub long_lived: Vec<String>,
    /// Of those, admin tokens.
    pub admin: u64,
}

/// Registered apps (OAuth2 clients).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Apps {
    /// Enabled apps.
    pub enabled: u64,
    /// Backend services authenticating with `private_key_jwt`.
    pub private_key_jwt: u64,
    /// User-facing apps (public clients, PKCE S256, a person approves each).
    pub public_pkce: u64,
}

/// The key hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Keys {
    /// KEK versions held, oldest first.
    pub kek_versions: Vec<u32>,
    /// The newest (wraps new data keys).
    pub current_kek: u32,
    /// Data keys that open something.
    pub data_keys: u64,
    /// Of those, wrapped by an older KEK version (rewrapped by `medvault keys rotate`).
    pub under_older_kek: u64,
    /// The root key file is sealed with a passphrase.
    pub key_file_passphrase: bool,
    /// Days since the current KEK was made (none: made before ages were recorded).
    pub current_kek_age_days: Option<i64>,
}

/// The stored resource versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Records {
    /// Versions stored.
    pub versions: u64,
    /// Versions with a body: every one sealed (an AEAD envelope).
    pub with_body: u64,
    /// Bodies that are not a sealed envelope of the expected format.
    pub not_sealed: u64,
    /// Versions without a body: deletions, shredded or expunged.
    pub without_body: u64,
}

/// One log's head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogHead {
    /// Leaves.
    pub size: u64,
    /// The newest signed checkpoint's size.
    pub checkpoint_size: u64,
    /// Its age in seconds (from its ML-DSA-44 cosignature's time).
    pub checkpoint_age_seconds: Option<i64>,
    /// The newest checkpoint a witness cosigned, if any.
    pub cosigned_size: Option<u64>,
    /// Witnesses whose cosignatures on it verified.
    pub cosigned_by: Vec<String>,
}

/// Both logs, and what `ledger verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// `ok`, or the first divergence found.
    pub verify: String,
    /// True when verification passed.
    pub verified: bool,
    /// The records log.
    pub records: LogHead,
    /// The access log.
    pub access: LogHead,
    /// Resource versions checked against their commitments.
    pub versions_checked: u64,
    /// Access-log entries checked against their sealed details.
    pub audit_records_checked: u64,
    /// Access-log entries archived (their details moved out; leaves kept).
    pub archived: u64,
    /// The access log's patient index was checked against every entry in
    /// `[patient_index_from, patient_index_to)` (older entries are not indexed yet, nor the
    /// newest, whose run is not whole).
    pub patient_index_from: u64,
    /// See `patient_index_from`.
    pub patient_index_to: u64,
    /// Witness keys configured.
    pub witnesses: u64,
}

/// Alerts of one kind over the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reviewed {
    /// Raised in the last [`ALERT_WINDOW_DAYS`].
    pub raised: u64,
    /// Of those, acknowledged or judged.
    pub reviewed: u64,
    /// Not reviewed and older than [`REVIEW_DAYS`]: ids.
    pub overdue: Vec<String>,
}

/// Sentinel's and break-glass alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Alerts {
    /// Break-glass grants (each raises an alert).
    pub break_glass: Reviewed,
    /// Sentinel's alerts (snooping and attacks).
    pub sentinel: Reviewed,
}

/// A registered peer node (a recipient of shared data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Its node id.
    pub node: String,
    /// Its organisation, as registered.
    pub organization: Option<String>,
    /// Its key fingerprint.
    pub fingerprint: String,
}

/// Everything the controls are judged on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// When it was read, microseconds.
    pub now_micros: i64,
    /// How serve last started (`None` if it never did since this was recorded).
    pub deployment: Option<Deployment>,
    /// People.
    pub people: People,
    /// API tokens.
    pub tokens: Tokens,
    /// Apps.
    pub apps: Apps,
    /// Keys.
    pub keys: Keys,
    /// Stored versions.
    pub records: Records,
    /// Logs.
    pub ledger: Ledger,
    /// Alerts.
    pub alerts: Alerts,
    /// Peers.
    pub peers: Vec<Peer>,
    /// The breach register.
    pub breaches: crate::register::Breaches,
    /// Data subjects' requests.
    pub requests: crate::subject::Requests,
    /// Deletion: erasures, erasure requests, holds and restrictions.
    pub deletion: Deletion,
}

/// What ISO/IEC 27001 A.8.10 (information deletion) rests on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Deletion {
    /// Patients erased: their data keys destroyed (crypto-shredding).
    pub erased: u64,
    /// Erasure requests recorded.
    pub erasure_requests: u64,
    /// Of those, open past or answered after their month: ids.
    pub erasure_late: Vec<String>,
    /// Legal holds in force (erasure refused meanwhile).
    pub holds_in_force: u64,
    /// Restrictions of processing in force.
    pub restrictions_in_force: u64,
}

fn deletion(node: &Node, now: i64) -> Result<Deletion, Error> {
    let mut d = Deletion::default();
    for name in node.store.data_key_names()? {
        if name.as_str().starts_with("Patient/")
            && node
                .store
                .data_key(&name)?
                .is_some_and(|row| row.kek_version.is_none())
        {
            d.erased += 1;
        }
    }
    for row in node.store.register(Some("erasure"))? {
        d.erasure_requests += 1;
        if row.closed_micros.unwrap_or(now) > row.due_micros {
            d.erasure_late.push(row.id);
        }
    }
    let in_force = |kind: &str| -> Result<u64, Error> {
        Ok(node
            .store
            .register(Some(kind))?
            .iter()
            .filter(|r| r.closed_micros.is_none())
            .count() as u64)
    };
    d.holds_in_force = in_force(medvault_node::admin::LEGAL_HOLD)?;
    d.restrictions_in_force = in_force(medvault_node::admin::PROCESSING_RESTRICTION)?;
    Ok(d)
}

/// User names that name a function or a placeholder rather than a person.
const GENERIC: &[&str] = &[
    "admin",
    "administrator",
    "root",
    "shared",
    "test",
    "user",
    "guest",
    "temp",
    "default",
    "nurse",
    "doctor",
    "clinician",
    "reception",
    "frontdesk",
    "ward",
    "lab",
    "pharmacy",
    "service",
    "demo",
];

fn is_generic(name: &str) -> bool {
    let n: String = name
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let stem = n.trim_end_matches(|c: char| c.is_ascii_digit());
    GENERIC.contains(&stem)
}

/// Reads the evidence. `progress` gets (leaves verified, leaves in all) while both logs are
/// verified.
///
/// # Errors
/// Store and key failures (a failed verification is evidence, not an error).
pub fn gather(node: &Node, progress: impl FnMut(u64, u64)) -> Result<Evidence, Error> {
    let now = node.clock.now_micros();
    let deployment = node
        .store
        .meta(DEPLOYMENT_META)?
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok(Evidence {
        now_micros: now,
        deployment,
        people: people(node, now)?,
        tokens: tokens(node, now)?,
        apps: apps(node)?,
        keys: keys(node)?,
        records: records(node)?,
        ledger: ledger(node, now, progress)?,
        alerts: alerts(node, now)?,
        peers: node
            .store
            .peers()?
            .into_iter()
            .map(|p| Peer {
                node: p.node,
                organization: p.organization,
                fingerprint: p.fingerprint,
            })
            .collect(),
        breaches: crate::register::evidence(node, now)?,
        requests: crate::subject::evidence(node, now)?,
        deletion: deletion(node, now)?,
    })
}

fn people(node: &Node, now: i64) -> Result<People, Error> {
    let mut p = People::default();
    for (u, name) in medvault_node::identity::accounts::list_users(node)? {
        p.accounts += 1;
        if u.disabled {
            continue;
        }
        p.enabled += 1;
        *p.by_role.entry(u.role.clone()).or_default() += 1;
        let totp = u.totp.is_some();
        let passkey = !node.store.passkeys(&u.id)?.is_empty();
        p.with_totp += u64::from(totp);
        p.with_passkey += u64::from(passkey);
        let admin = u.role == "admin";
        p.admins += u64::from(admin);
        if !totp && !passkey {
            p.without_second_factor.push(u.id.clone());
            if admin {
                p.admins_without_second_factor.push(u.id.clone());
            }
        }
        if is_generic(&name) {
            p.generic_names.push(u.id.clone());
        }
        if u.locked_until_micros > now {
            p.locked.push(u.id.clone());
        }
        let last = u.last_login_micros.unwrap_or(u.created_micros);
        if u.role != "patient" && now - last > DORMANT_DAYS * DAY_MICROS {
            p.dormant.push(u.id.clone());
        }
    }
    Ok(p)
}

fn tokens(node: &Node, now: i64) -> Result<Tokens, Error> {
    let mut t = Tokens::default();
    for row in node.store.tokens()? {
        if row.revoked_micros.is_some() || row.expires_micros <= now {
            continue;
        }
        t.live += 1;
        t.admin += u64::from(row.role == "admin");
        if row.expires_micros - row.created_micros > LONG_TOKEN_DAYS * DAY_MICROS {
            t.long_lived.push(row.token_id);
        }
    }
    Ok(t)
}

fn apps(node: &Node) -> Result<Apps, Error> {
    let mut a = Apps::default();
    for c in node.store.clients()? {
        if c.disabled {
            continue;
        }
        a.enabled += 1;
        let has_keys = serde_json::from_str::<serde_json::Value>(&c.jwks)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).map(Vec::len))
            .is_some_and(|n| n > 0);
        if has_keys {
            a.private_key_jwt += 1;
        } else {
            a.public_pkce += 1;
        }
    }
    Ok(a)
}

fn keys(node: &Node) -> Result<Keys, Error> {
    let kek_versions: Vec<u32> = node.store.keks()?.into_iter().map(|(v, _)| v).collect();
    let current = kek_versions.iter().copied().max().unwrap_or(0);
    let created = node
        .store
        .meta(&medvault_node::admin::kek_created_meta(current))?
        .and_then(|t| t.parse::<i64>().ok());
    let mut k = Keys {
        current_kek: current,
        kek_versions,
        key_file_passphrase: node.key_file_kind == medvault_crypto::KeyFileKind::Passphrase,
        current_kek_age_days: created.map(|c| (node.clock.now_micros() - c) / DAY_MICROS),
        ..Keys::default()
    };
    for name in node.store.data_key_names()? {
        if let Some(v) = node.store.data_key(&name)?.and_then(|row| row.kek_version) {
            k.data_keys += 1;
            k.under_older_kek += u64::from(v < current);
        }
    }
    Ok(k)
}

fn records(node: &Node) -> Result<Records, Error> {
    const PAGE: u64 = 2_000;
    let mut r = Records::default();
    let mut after: Option<(String, String, u64)> = None;
    loop {
        let page = node.store.versions_after(
            after.as_ref().map(|(t, i, v)| (t.as_str(), i.as_str(), *v)),
            PAGE,
        )?;
        for v in &page {
            r.versions += 1;
            match &v.body {
                Some(sealed) => {
                    r.with_body += 1;
                    if !sealed.has_envelope_shape() {
                        r.not_sealed += 1;
                    }
                }
                None => r.without_body += 1,
            }
        }
        match page.last() {
            Some(v) if page.len() as u64 == PAGE => {
                after = Some((v.resource_type.clone(), v.id.clone(), v.version));
            }
            _ => break,
        }
    }
    Ok(r)
}

fn head(node: &Node, log: LogId, now: i64) -> Result<LogHead, Error> {
    let store = node.log_store(log);
    let mut h = LogHead {
        size: store.ledger_size()?,
        ..LogHead::default()
    };
    if let Some((size, text)) = store.checkpoint(None)? {
        h.checkpoint_size = size;
        h.checkpoint_age_seconds = medvault_ledger::Note::parse(text.as_bytes())
            .ok()
            .and_then(|note| node.ledger.pq_cosigner().verify(&note).ok())
            .and_then(|v| v.timestamp)
            .and_then(|t| i64::try_from(t).ok())
            .map(|t| (now / 1_000_000 - t).max(0));
    }
    Ok(h)
}

fn ledger(node: &Node, now: i64, progress: impl FnMut(u64, u64)) -> Result<Ledger, Error> {
    let witnesses: Vec<medvault_ledger::VerifierKey> = node
        .store
        .meta(medvault_node::witness::WITNESS_KEYS_META)?
        .unwrap_or_default()
        .lines()
        .filter_map(|l| medvault_ledger::VerifierKey::parse_vkey(l).ok())
        .collect();
    let mut l = Ledger {
        records: head(node, LogId::Records, now)?,
        access: head(node, LogId::Access, now)?,
        witnesses: witnesses.len() as u64,
        ..Ledger::default()
    };
    match medvault_node::verify::verify(
        node.store.as_ref(),
        node.access.as_ref(),
        &node.ledger,
        &witnesses,
        progress,
    ) {
        Ok(r) => {
            l.verify = "ok".into();
            l.verified = true;
            l.versions_checked = r.versions;
            l.audit_records_checked = r.audit_records;
            l.patient_index_from = r.patient_index_from;
            l.patient_index_to = r.patient_index_to;
            l.archived = r.archived;
            l.records.cosigned_size = r.records.cosigned_size;
            l.records.cosigned_by = r.records.cosigned_by;
            l.access.cosigned_size = r.access.cosigned_size;
            l.access.cosigned_by = r.access.cosigned_by;
        }
        Err(medvault_node::verify::VerifyError::Divergence(why)) => l.verify = why,
        Err(medvault_node::verify::VerifyError::Store(e)) => return Err(e.into()),
    }
    Ok(l)
}

fn reviewed(node: &Node, kind: Option<&str>, now: i64) -> Result<Reviewed, Error> {
    let since = now - ALERT_WINDOW_DAYS * DAY_MICROS;
    let mut r = Reviewed::default();
    let mut before: Option<(i64, String)> = None;
    loop {
        let page = node.store.alerts_page(&AlertQuery {
            kind,
            before: before.as_ref().map(|(t, id)| (*t, id.as_str())),
            limit: 500,
            ..AlertQuery::default()
        })?;
        let mut done = page.len() < 500;
        for a in &page {
            if a.at_micros < since {
                done = true;
                break;
            }
            // Sentinel's count is of both its kinds; break-glass has its own.
            if kind.is_none() && a.kind == "break-glass" {
                continue;
            }
            r.raised += 1;
            if a.acknowledged_micros.is_some() || a.verdict.is_some() {
                r.reviewed += 1;
            } else if now - a.at_micros > REVIEW_DAYS * DAY_MICROS {
                r.overdue.push(a.id.clone());
            }
        }
        match page.last() {
            Some(a) if !done => before = Some((a.at_micros, a.id.clone())),
            _ => break,
        }
    }
    Ok(r)
}

fn alerts(node: &Node, now: i64) -> Result<Alerts, Error> {
    Ok(Alerts {
        break_glass: reviewed(node, Some("break-glass"), now)?,
        sentinel: reviewed(node, None, now)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_names_are_told_from_peoples() {
        for g in ["admin", "Admin2", "shared", "nurse01", "front-desk", "TEST"] {
            assert!(is_generic(g), "{g}");
        }
        for p in ["alice", "dr.jones", "nurse.kim", "adminson"] {
            assert!(!is_generic(p), "{p}");
        }
    }
}
