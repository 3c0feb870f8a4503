//! Sealed sharing of a patient's records between nodes (issue 7).
//!
//! The sender builds a FHIR `transaction` Bundle of what the access policy lets the requester
//! read of the patient's compartment and the patient's consents let go to the recipient, seals
//! it to the recipient's X-Wing key and signs it with its hybrid key ([`medvault_crypto`]'s
//! bundle, layout `MVB1`), with a header naming both nodes (id and fingerprint), the purpose,
//! the validity and the sender's access-log leaf that recorded the export. The receiver checks,
//! in order: size, layout, that it is the recipient, that the sender is a registered peer whose
//! fingerprint matches, that the TLS client (online) is that sender, the hybrid signature, the
//! validity, and the content (creates only, one Patient); then, in one write, that the bundle
//! id was not seen before and the import with a `Provenance` resource. Every outcome, imported
//! or refused, is an access-log leaf; the receipt, signed by the receiver, names its leaf, and
//! the sender records it, so each ledger cites the other's leaf.
//!
//! Two choices hard to undo are in ARCHITECTURE.md ("Sharing between nodes"): the header
//! (JSON, below) and the rewriting of references.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_core::{ResourceId, ResourceType};
use medvault_crypto::{BundleError, HybridSignature, hybrid_verify, open_verified, seal_bundle};
use medvault_policy::ConsentState;
use medvault_policy::consent::{self, ConsentRequest};
use medvault_store::{PeerRow, write_with};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Node;
use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::node_identity::{NodeIdentity, PeerDocument, verify_document};
use crate::search;

/// The header's format name.
pub const FORMAT: &str = "medvault-share/1";
/// The receipt's format name.
pub const RECEIPT_FORMAT: &str = "medvault-share-receipt/1";
/// Media type of a sealed bundle on the wire.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.medvault.bundle";
/// Where a peer listener takes bundles.
pub const RECEIVE_PATH: &str = "/peer/bundles";
/// Largest bundle accepted (file or request).
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;
/// How long a bundle delivered online stays valid.
pub const ONLINE_VALIDITY: Duration = Duration::from_secs(3600);
/// Longest validity a bundle may claim (offline files travel slowly, but not for ever).
pub const MAX_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock difference tolerated between nodes.
const CLOCK_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;
/// Replay-protection namespace in the assertion-id table (OAuth client ids never contain `:`
/// after this prefix's form).
const REPLAY_NAMESPACE: &str = "medvault-share:";
/// Resources never shared: a patient's privacy directives name this node's actors and are
/// meaningless (or dangerous) elsewhere; the recipient's own consent process governs there.
const NOT_SHARED: &[&str] = &["Consent"];
/// Purposes of use a share may declare (HL7 v3 PurposeOfUse).
pub const PURPOSES: &[&str] = &[
    "TREAT", "ETREAT", "COC", "CAREMGT", "PATRQT", "HPAYMT", "HOPERAT", "PUBHLTH", "HRESCH",
];
/// Identifier system of logical references to resources left at the sender.
const NODE_SYSTEM_PREFIX: &str = "urn:medvault:node:";

/// One side of an exchange, as the header names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// Node id.
    pub node: String,
    /// Fingerprint of its keys (`SHA-256:` + hex).
    pub fingerprint: String,
}

/// The header of a shared bundle: signed, bound into the encryption, not encrypted (so it
/// carries no PHI: no patient id, no names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShareHeader {
    /// [`FORMAT`].
    pub format: String,
    /// The bundle's id (UUID), unique per sender: a second delivery is a replay.
    pub id: String,
    /// Who sealed it.
    pub sender: Party,
    /// Whom it is sealed to.
    pub recipient: Party,
    /// Purpose of use.
    pub purpose: String,
    /// When it was sealed (RFC 3339, UTC).
    pub created: String,
    /// When it stops being accepted (RFC 3339, UTC).
    pub expires: String,
    /// The sender's access-log leaf that recorded the export.
    pub sender_leaf: u64,
}

/// A sealed share, ready to deliver or write to a file.
#[derive(Debug)]
pub struct Outgoing {
    /// The sealed bundle.
    pub bytes: Vec<u8>,
    /// Its header.
    pub header: ShareHeader,
    /// Resources in it.
    pub resources: usize,
    /// Resources of the compartment the patient's consent kept back from this recipient.
    pub withheld: usize,
    /// The recipient's registration.
    pub peer: PeerRow,
    /// The recipient's checked document.
    pub peer_document: PeerDocument,
    /// This node's identity, which sealed it (and presents it over mutual TLS).
    pub sender: NodeIdentity,
}

/// Why a bundle was refused. Messages name the problem, never payload or key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Larger than [`MAX_BUNDLE_BYTES`].
    #[error("the bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    /// Not a bundle, cut short, trailing bytes, or a header that is not ours.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// Sealed to another node.
    #[error("the bundle is addressed to another node")]
    WrongRecipient,
    /// The sender is not a registered peer.
    #[error("the sender is not a registered peer of this node")]
    UnknownSender,
    /// The sender's keys are not the ones registered.
    #[error(
        "the sender's key fingerprint differs from its registration: confirm the new one out of band and register it again"
    )]
    SenderKeysChanged,
    /// Delivered over a connection authenticated as another peer.
    #[error("the bundle was delivered by a different peer than its sender")]
    NotFromThisPeer,
    /// The hybrid signature does not verify with the registered keys.
    #[error("the bundle's signature does not verify with the sender's registered keys")]
    BadSignature,
    /// Past its expiry.
    #[error("the bundle expired")]
    Expired,
    /// Dated in the future beyond the clock skew allowed.
    #[error("the bundle is dated in the future")]
    NotYetValid,
    /// Already imported (or refused after being recorded).
    #[error("the bundle was already received (replay)")]
    Replay,
    /// The content is not an acceptable import.
    #[error("the bundle's content cannot be imported: {0}")]
    Invalid(String),
    /// This node failed (store, keys); says whether anything was kept.
    #[error("this node failed to take the bundle: {0}")]
    Failed(&'static str),
}

impl Refusal {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge => ErrorKind::TooLarge,
            Self::Malformed(_) | Self::Expired | Self::NotYetValid => ErrorKind::Invalid,
            Self::WrongRecipient
            | Self::UnknownSender
            | Self::SenderKeysChanged
            | Self::NotFromThisPeer
            | Self::BadSignature => ErrorKind::Forbidden,
            Self::Replay => ErrorKind::Conflict,
            Self::Invalid(_) => ErrorKind::Unprocessable,
            Self::Failed(_) => ErrorKind::Internal,
        }
    }

    /// A short code for the access log.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "too-large",
            Self::Malformed(_) => "malformed",
            Self::WrongRecipient => "wrong-recipient",
            Self::UnknownSender => "unknown-sender",
            Self::SenderKeysChanged => "sender-keys-changed",
            Self::NotFromThisPeer => "not-from-this-peer",
            Self::BadSignature => "bad-signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not-yet-valid",
            Self::Replay => "replay",
            Self::Invalid(_) => "invalid-content",
            Self::Failed(_) => "failed",
        }
    }

    /// As a node error (answered as an `OperationOutcome`).
    pub fn to_error(&self) -> Error {
        let code = match self {
            Self::TooLarge => IssueCode::TooLong,
            Self::Malformed(_) => IssueCode::Structure,
            Self::Replay => IssueCode::Duplicate,
            Self::Invalid(_) => IssueCode::Processing,
            Self::Expired | Self::NotYetValid => IssueCode::Invalid,
            Self::Failed(_) => IssueCode::Exception,
            _ => IssueCode::Forbidden,
        };
        Error::new(self.kind(), code, self.to_string())
    }
}

/// Checks a purpose of use.
///
/// # Errors
/// 400 naming the accepted codes.
pub fn check_purpose(purpose: &str) -> Result<(), Error> {
    if PURPOSES.contains(&purpose) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "purpose must be one of {}",
            PURPOSES.join(", ")
        )))
    }
}

/// Normalises a fingerprint as typed by a person (`SHA-256:` prefix optional, any case,
/// colons and spaces ignored).
pub fn normalize_fingerprint(text: &str) -> String {
    let t = text.trim();
    let t = t
        .strip_prefix("SHA-256:")
        .or_else(|| t.strip_prefix("sha-256:"))
        .unwrap_or(t);
    let hex: String = t
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .flat_map(char::to_lowercase)
        .collect();
    format!("SHA-256:{hex}")
}

/// Registers another node as a peer, after checking its document and that the fingerprint
/// the administrator confirmed out of band is the document's.
///
/// # Errors
/// A message naming what is wrong (document, fingerprint, URL, or the node itself).
pub fn register_peer(
    node: &Node,
    url: &str,
    document: &str,
    fingerprint: &str,
    organization: Option<&str>,
    replace: bool,
    by: &str,
) -> Result<PeerRow, String> {
    let doc: Value =
        serde_json::from_str(document).map_err(|_| "the node document is not JSON".to_owned())?;
    let checked = verify_document(&doc).map_err(|e| format!("the node document: {e}"))?;
    if normalize_fingerprint(fingerprint) != checked.fingerprint {
        return Err(format!(
            "the fingerprint given does not match the document's ({}): do not register it until the other node's administrator confirms the fingerprint",
            checked.fingerprint
        ));
    }
    peer_address(url).ok_or("--url: the peer's URL must be https://HOST[:PORT]")?;
    if let Some(org) = organization {
        let id = org.strip_prefix("Organization/").unwrap_or_default();
        if ResourceId::new(id).is_err() {
            return Err("--organization must be a reference like Organization/<id>".into());
        }
    }
    let me = NodeIdentity::load(node).map_err(|e| e.to_string())?;
    if checked.node == me.node || checked.fingerprint == me.fingerprint() {
        return Err("that is this node's own document".into());
    }
    if let Some(old) = node.store.peer(&checked.node).map_err(|e| e.to_string())?
        && old.fingerprint != checked.fingerprint
        && !replace
    {
        return Err(format!(
            "node {} is registered with other keys ({}): give --replace to register the new ones, once their fingerprint is confirmed",
            checked.node, old.fingerprint
        ));
    }
    let row = PeerRow {
        node: checked.node,
        fingerprint: checked.fingerprint,
        url: url.trim_end_matches('/').to_owned(),
        document: doc.to_string(),
        organization: organization.map(str::to_owned),
        registered_micros: node.clock.now_micros(),
        registered_by: by.to_owned(),
    };
    let r = row.clone();
    write_with(node.store.as_ref(), move |tx| tx.put_peer(&r)).map_err(|e| e.to_string())?;
    Ok(row)
}

/// A registered peer and its checked document.
///
/// # Errors
/// 404 if `peer` is not registered; 500 if its stored document no longer verifies.
pub fn registered(node: &Node, peer: &str) -> Result<(PeerRow, PeerDocument), Error> {
    let row = node.store.peer(peer)?.ok_or_else(|| {
        Error::not_found(format!(
            "{peer} is not a registered peer (medvault peer list shows them)"
        ))
    })?;
    let doc = serde_json::from_str(&row.document)
        .map_err(|e| Error::internal(&e))
        .and_then(|d| verify_document(&d).map_err(|e| Error::internal(&e)))?;
    Ok((row, doc))
}

fn rfc3339(micros: i64) -> String {
    crate::clock::instant(micros)
}

fn parse_time(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

const CONSENT: ResourceType = ResourceType::from_static("Consent");

/// The patient's consents, read on the node's authority (the evaluator needs all of them).
fn consents_of(
    node_ctx: &Ctx,
    store: &dyn medvault_store::StoreRead,
    patient: &str,
) -> Result<Vec<Value>, Error> {
    let params = vec![("patient".to_owned(), format!("Patient/{patient}"))];
    search::all_matches(store, node_ctx, &CONSENT, &params)
}

/// The patient's compartment as `ctx` may read it (the access policy and scopes of the
/// requester apply), without the types never shared, and only what is sealed under this
/// patient's key (its compartment proper).
fn compartment(
    store: &dyn medvault_store::StoreRead,
    ctx: &Ctx,
    patient: &str,
) -> Result<Vec<(ResourceType, Value)>, Error> {
    let reference = format!("Patient/{patient}");
    let patient = ResourceId::new(patient).map_err(|_| Error::bad_request("invalid patient id"))?;
    let mut out = crate::operations::compartment(store, ctx, &patient, None)?;
    out.retain(|(rt, v)| {
        !NOT_SHARED.contains(&rt.as_str())
            && v.get("id")
                .and_then(Value::as_str)
                .and_then(|id| ResourceId::new(id).ok())
                .is_some_and(|rid| {
                    ctx.fhir.compartment_of(rt.as_str(), &rid, v).key_name() == reference
                })
    });
    Ok(out)
}

/// `Type/id` of a literal reference (relative, versioned or absolute), if it is one.
fn reference_key(r: &str) -> Option<String> {
    // Only relative references name this node's resources (links are built relative, and an
    // absolute URL may point at another server that happens to use the same id).
    if r.starts_with('#') || r.contains(':') {
        return None;
    }
    let segs: Vec<&str> = r.split('/').filter(|s| !s.is_empty()).collect();
    let tail = match segs.as_slice() {
        [.., t, i, "_history", _] | [.., t, i] => (*t, *i),
        _ => return None,
    };
    tail.0
        .chars()
        .next()
        .is_some_and(char::is_uppercase)
        .then(|| format!("{}/{}", tail.0, tail.1))
}

/// The identifier that stands for a reference to a resource the recipient does not get.
fn logical(sender: &str, key: &str) -> Value {
    json!({"system": format!("{NODE_SYSTEM_PREFIX}{sender}"), "value": key})
}

/// Points references to resources in the bundle at their `urn:uuid:` entries. A reference to
/// anything else becomes, for directory data (practitioners, organisations, locations…), a
/// logical reference (an identifier naming the sender and the resource), so no local id of the
/// sender's can land on an unrelated resource of the recipient's; for patient data (another
/// patient, or a record withheld by the policy or the consent) it is replaced by "not shared",
/// so not even its id or display text leaves.
fn rewrite(
    v: &mut Value,
    map: &HashMap<String, String>,
    sender: &str,
    patient_data: &dyn Fn(&str) -> bool,
) {
    match v {
        Value::Object(obj) => {
            if let Some(Value::String(r)) = obj.get("reference").cloned() {
                match reference_key(&r) {
                    Some(key) => {
                        if let Some(urn) = map.get(&key) {
                            obj.insert("reference".into(), Value::String(urn.clone()));
                        } else if patient_data(key.split('/').next().unwrap_or_default()) {
                            obj.clear();
                            obj.insert("display".into(), Value::String("not shared".into()));
                        } else {
                            obj.remove("reference");
                            obj.entry("identifier")
                                .or_insert_with(|| logical(sender, &key));
                        }
                    }
                    None if r.starts_with('#') => {}
                    None => {
                        // Not a local reference (another server, a URN): it could name anyone.
                        obj.clear();
                        obj.insert("display".into(), Value::String("not shared".into()));
                    }
                }
            }
            obj.values_mut()
                .for_each(|c| rewrite(c, map, sender, patient_data));
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|c| rewrite(c, map, sender, patient_data)),
        _ => {}
    }
}

/// On receipt: every reference must point into the bundle (`urn:uuid:` of an entry) or inside
/// its resource (`#id`); any other is turned into a logical reference naming the sender, so a
/// peer cannot attach data to this node's own records (another patient's chart, a practitioner
/// a CareTeam would then grant access to).
///
/// # Errors
/// [`Refusal::Invalid`] for a `urn:uuid:` reference to no entry.
fn confine(
    v: &mut Value,
    urls: &HashSet<String>,
    contained: &HashSet<String>,
    sender: &str,
) -> Result<(), Refusal> {
    match v {
        Value::Object(obj) => {
            // `#` alone is the resource itself; `#id` must name one of its contained resources.
            let internal =
                |r: &str| r == "#" || r.strip_prefix('#').is_some_and(|id| contained.contains(id));
            if let Some(Value::String(r)) = obj.get("reference").cloned()
                && !internal(&r)
            {
                if r.starts_with("urn:uuid:") {
                    if !urls.contains(&r) {
                        return Err(Refusal::Invalid(
                            "a reference points at no entry of the Bundle".into(),
                        ));
                    }
                } else {
                    obj.remove("reference");
                    let key: String = r.chars().take(256).collect();
                    obj.entry("identifier")
                        .or_insert_with(|| logical(sender, &key));
                }
            }
            obj.values_mut()
                .try_for_each(|c| confine(c, urls, contained, sender))
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|c| confine(c, urls, contained, sender)),
        _ => Ok(()),
    }
}

/// Tags an imported resource with the node it came from (`meta.tag`), so nobody takes it for
/// this node's own record (e.g. a medical record number that matches a local patient's).
fn tag_shared(resource: &mut Value, sender: &str) {
    let Value::Object(o) = resource else { return };
    let meta = o.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let tags = meta
        .as_object_mut()
        .map(|m| m.entry("tag").or_insert_with(|| json!([])));
    if let Some(Value::Array(tags)) = tags {
        tags.push(json!({
            "system": "urn:medvault:shared-from",
            "code": sender,
            "display": "received from another medvault node",
        }));
    }
}

/// Builds, seals and signs the share of `patient` for the registered peer `to`, recording the
/// export in the access log first (its leaf goes into the header). `ctx` is the requester's
/// (its access policy decides what they may read); `agent` describes them for the log.
///
/// # Errors
/// 400 bad purpose; 404 patient not visible or peer not registered; 403 the patient's consent
/// forbids this recipient; 413 too many resources; store, key and crypto failures.
pub fn prepare(
    node: &Node,
    ctx: &Ctx,
    patient: &ResourceId,
    to: &str,
    purpose: &str,
    validity: Duration,
    agent: &Value,
) -> Result<Outgoing, Error> {
    check_purpose(purpose)?;
    if validity > MAX_VALIDITY || validity.is_zero() {
        return Err(Error::bad_request(
            "validity must be between 1 second and 30 days",
        ));
    }
    let (peer, peer_document) = registered(node, to)?;
    let me = NodeIdentity::load(node).map_err(|e| Error::internal(&e))?;
    let store = node.store.as_ref();
    let patient_resource = crate::records::read(store, ctx, &ResourceType::PATIENT, patient, None)?
        .resource
        .ok_or_else(|| Error::not_found(format!("Patient/{patient} is not known")))?;
    let consents = consents_of(&Ctx::unrestricted_node_work(node), store, patient.as_str())?;
    // The institution the administrator mapped the peer to; without one, only consents that
    // name no actor speak to this disclosure.
    let actors: Vec<String> = peer.organization.iter().cloned().collect();
    let now = node.clock.now_micros();
    let at = rfc3339(now);
    let verdict = |rt: &str, v: &Value| {
        let labels = crate::authz::security_labels(v);
        consent::evaluate(
            &consents,
            &ConsentRequest {
                actors: &actors,
                permit_actors: None,
                purpose: Some(purpose),
                resource_type: rt,
                labels: &labels,
                at: &at,
            },
        )
    };
    if verdict("Patient", &patient_resource) == ConsentState::Deny {
        return Err(Error::new(
            ErrorKind::Forbidden,
            IssueCode::Forbidden,
            format!(
                "the patient's consent does not allow sharing with {}",
                peer.node
            ),
        )
        .denied_by("patient-consent"));
    }
    let mut resources = vec![(ResourceType::PATIENT, patient_resource)];
    let mut withheld = 0;
    for (rt, v) in compartment(store, ctx, patient.as_str())? {
        // A contained resource travels with its container: a denied one keeps both back.
        let contained_denied = v["contained"].as_array().into_iter().flatten().any(|c| {
            c["resourceType"]
                .as_str()
                .is_some_and(|t| verdict(t, c) == ConsentState::Deny)
        });
        if contained_denied || verdict(rt.as_str(), &v) == ConsentState::Deny {
            withheld += 1;
        } else {
            resources.push((rt, v));
        }
    }
    // One entry is kept for the recipient's Provenance.
    if resources.len() >= crate::bundle::MAX_ENTRIES {
        return Err(Error::new(
            ErrorKind::TooLarge,
            IssueCode::TooCostly,
            format!(
                "the patient has {} resources to share; one bundle carries at most {}",
                resources.len(),
                crate::bundle::MAX_ENTRIES - 1
            ),
        ));
    }
    let map: HashMap<String, String> = resources
        .iter()
        .filter_map(|(rt, v)| {
            let id = v.get("id")?.as_str()?;
            Some((
                format!("{rt}/{id}"),
                format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            ))
        })
        .collect();
    let patient_data = |t: &str| ctx.fhir.type_info(t).is_none_or(|i| i.patient_data);
    let mut entries = Vec::with_capacity(resources.len());
    for (rt, mut v) in resources {
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(full_url) = map.get(&format!("{rt}/{id}")).cloned() else {
            continue;
        };
        if let Value::Object(o) = &mut v {
            o.remove("id");
            // The narrative may describe what was withheld; the structured data travels.
            o.remove("text");
            if let Some(Value::Object(meta)) = o.get_mut("meta") {
                meta.remove("versionId");
                meta.remove("lastUpdated");
            }
        }
        rewrite(&mut v, &map, &me.node, &patient_data);
        entries.push(json!({
            "fullUrl": full_url,
            "resource": v,
            "request": {"method": "POST", "url": rt.as_str()},
        }));
    }
    let count = entries.len();
    let payload = serde_json::to_vec(&json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries,
    }))
    .map_err(|e| Error::internal(&e))?;
    let id = uuid::Uuid::new_v4().to_string();
    let expires = now.saturating_add(i64::try_from(validity.as_micros()).unwrap_or(i64::MAX));
    let record = AuditRecord::new(AuditKind::Share, now, "share-send", AuditOutcome::Success)
        .agent(agent.clone())
        .patient(Some(patient.as_str().to_owned()))
        .with(
            "share",
            json!({
                "id": id,
                "to": peer.node,
                "toFingerprint": peer.fingerprint,
                "purpose": purpose,
                "resources": count,
                "withheld": withheld,
                "payloadSha256": hex::encode(medvault_crypto::sha256(&payload)),
                "expires": rfc3339(expires),
            }),
        );
    let sender_leaf = node
        .ledger
        .record_audit(node.access.as_ref(), now, &record)?;
    let header = ShareHeader {
        format: FORMAT.into(),
        id,
        sender: Party {
            node: me.node.clone(),
            fingerprint: me.fingerprint(),
        },
        recipient: Party {
            node: peer.node.clone(),
            fingerprint: peer.fingerprint.clone(),
        },
        purpose: purpose.to_owned(),
        created: at,
        expires: rfc3339(expires),
        sender_leaf,
    };
    let header_bytes = serde_json::to_vec(&header).map_err(|e| Error::internal(&e))?;
    let bytes = seal_bundle(&header_bytes, &payload, &peer_document.kem, &me.signing)
        .map_err(|e| Error::internal(&e))?;
    Ok(Outgoing {
        bytes,
        header,
        resources: count,
        withheld,
        peer,
        peer_document,
        sender: me,
    })
}

/// An imported share.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The bundle's header.
    pub header: ShareHeader,
    /// The new Patient's id here.
    pub patient: String,
    /// Resources created (the Provenance not counted).
    pub resources: usize,
    /// This node's access-log leaf recording the import.
    pub leaf: u64,
    /// The signed receipt for the sender.
    pub receipt: Value,
}

fn malformed(e: &BundleError) -> Refusal {
    match e {
        BundleError::BadSignature => Refusal::BadSignature,
        BundleError::WrongRecipient => Refusal::WrongRecipient,
        other => Refusal::Malformed(other.to_string()),
    }
}

/// What is checked before anything is decrypted or written.
struct Checked<'a> {
    header: ShareHeader,
    /// The bundle, its sender's signature verified (opened from this, not verified again).
    bundle: medvault_crypto::VerifiedBundle<'a>,
    me: NodeIdentity,
    expires: i64,
}

/// What the access log may say about a bundle: its header, and whether the sender's signature
/// verified (until it does, the header's names are only what the bytes claim).
#[derive(Default)]
struct Seen {
    header: Option<ShareHeader>,
    verified: bool,
}

fn check<'a>(
    node: &Node,
    bytes: &'a [u8],
    tls_key: Option<[u8; 32]>,
    seen: &mut Seen,
) -> Result<Checked<'a>, Refusal> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(Refusal::TooLarge);
    }
    let parts = medvault_crypto::bundle_parts(bytes).map_err(|e| malformed(&e))?;
    let header = parse_header(parts.header)?;
    seen.header = Some(header.clone());
    let me = NodeIdentity::load(node)
        .map_err(|_| Refusal::Failed("its keys did not open; nothing was kept"))?;
    if header.recipient.node != me.node || header.recipient.fingerprint != me.fingerprint() {
        return Err(Refusal::WrongRecipient);
    }
    let row = node
        .store
        .peer(&header.sender.node)
        .map_err(|_| Refusal::Failed("its peer registry could not be read; nothing was kept"))?
        .ok_or(Refusal::UnknownSender)?;
    if row.fingerprint != header.sender.fingerprint {
        return Err(Refusal::SenderKeysChanged);
    }
    let sender = serde_json::from_str(&row.document)
        .ok()
        .and_then(|d| verify_document(&d).ok())
        .ok_or(Refusal::UnknownSender)?;
    if tls_key.is_some_and(|k| k != sender.signing.ed25519) {
        return Err(Refusal::NotFromThisPeer);
    }
    let bundle =
        medvault_crypto::verify_bundle(bytes, &sender.signing).map_err(|e| malformed(&e))?;
    seen.verified = true;
    let created = parse_time(&header.created)
        .ok_or_else(|| Refusal::Malformed("created is not an RFC 3339 time".into()))?;
    let expires = parse_time(&header.expires)
        .ok_or_else(|| Refusal::Malformed("expires is not an RFC 3339 time".into()))?;
    if expires <= created
        || expires - created > i64::try_from(MAX_VALIDITY.as_micros()).unwrap_or(i64::MAX)
    {
        return Err(Refusal::Malformed(
            "the validity period is not acceptable".into(),
        ));
    }
    let now = node.clock.now_micros();
    if created > now + CLOCK_SKEW_MICROS {
        return Err(Refusal::NotYetValid);
    }
    if now >= expires {
        return Err(Refusal::Expired);
    }
    Ok(Checked {
        header,
        bundle,
        me,
        expires,
    })
}

/// The entries of a decrypted payload, checked: a transaction of creates with `urn:uuid:`
/// full URLs, exactly one Patient. Returns the entries and the Patient's full URL.
///
/// # Errors
/// [`Refusal::Invalid`] naming what is not acceptable.
pub fn check_payload(payload: &[u8]) -> Result<(Vec<Value>, String), Refusal> {
    let invalid = |m: &str| Refusal::Invalid(m.to_owned());
    let bundle: Value =
        serde_json::from_slice(payload).map_err(|_| invalid("the payload is not JSON"))?;
    if bundle["resourceType"] != "Bundle" || bundle["type"] != "transaction" {
        return Err(invalid("the payload is not a transaction Bundle"));
    }
    let entries = bundle["entry"]
        .as_array()
        .cloned()
        .ok_or_else(|| invalid("the Bundle has no entries"))?;
    if entries.len() >= crate::bundle::MAX_ENTRIES {
        return Err(invalid("the Bundle has too many entries"));
    }
    let mut patient = None;
    let mut urls = HashSet::with_capacity(entries.len());
    for e in &entries {
        let url = e["fullUrl"].as_str().unwrap_or_default();
        if !urls.insert(url) {
            return Err(invalid("two entries have the same fullUrl"));
        }
        let rt = e["resource"]["resourceType"].as_str().unwrap_or_default();
        let creates = e["request"]["method"] == "POST"
            && e["request"]["url"].as_str() == Some(rt)
            && e["request"].get("ifNoneExist").is_none();
        if !url.starts_with("urn:uuid:") || !creates || NOT_SHARED.contains(&rt) {
            return Err(invalid(
                "every entry must create a resource (POST, urn:uuid: full URL); nothing may be updated or deleted",
            ));
        }
        if rt == "Patient" {
            if patient.is_some() {
                return Err(invalid("the Bundle holds more than one Patient"));
            }
            patient = Some(url.to_owned());
        }
    }
    let patient = patient.ok_or_else(|| invalid("the Bundle holds no Patient"))?;
    Ok((entries, patient))
}

fn provenance(header: &ShareHeader, targets: &[String], now: i64) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": {
            "resourceType": "Provenance",
            "target": targets.iter().map(|t| json!({"reference": t})).collect::<Vec<_>>(),
            "recorded": rfc3339(now),
            "reason": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": header.purpose,
            }]}],
            "activity": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                "code": "CREATE",
            }]},
            "agent": [{
                "type": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                }]},
                "who": {
                    "identifier": {
                        "system": format!("{NODE_SYSTEM_PREFIX}{}", header.sender.node),
                        "value": header.sender.fingerprint,
                    },
                    "display": format!("medvault node {}", header.sender.node),
                },
            }],
            "entity": [{
                "role": "source",
                "what": {
                    "identifier": {"system": "urn:medvault:share", "value": header.id},
                    "display": format!(
                        "sealed bundle {}, sender's access-log leaf {}",
                        header.id, header.sender_leaf
                    ),
                },
            }],
        },
        "request": {"method": "POST", "url": "Provenance"},
    })
}

/// The text a receipt's signature covers.
fn receipt_text(
    bundle_id: &str,
    recipient: &str,
    sender: &str,
    leaf: u64,
    digest: &str,
    n: usize,
) -> String {
    format!("{RECEIPT_FORMAT}\n{bundle_id}\n{recipient}\n{sender}\n{leaf}\n{digest}\n{n}\n")
}

fn import(node: &Node, ctx: &Ctx, c: &Checked<'_>) -> Result<(String, usize), Refusal> {
    let payload = open_verified(&c.bundle, &c.me.kem).map_err(|e| malformed(&e))?;
    let (mut entries, patient_url) = check_payload(&payload)?;
    drop(payload);
    let resources = entries.len();
    let targets: Vec<String> = entries
        .iter()
        .filter_map(|e| e["fullUrl"].as_str().map(str::to_owned))
        .collect();
    let urls: HashSet<String> = targets.iter().cloned().collect();
    // Each resource must land in the shared patient's record and nowhere else: references
    // are confined to the bundle, then the compartment is worked out as it will be on write.
    let placeholder = ResourceId::random();
    let stand_in = format!("Patient/{placeholder}");
    let to_stand_in = HashMap::from([(patient_url.clone(), stand_in.clone())]);
    for e in &mut entries {
        let contained: HashSet<String> = e["resource"]["contained"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(str::to_owned))
            .collect();
        confine(&mut e["resource"], &urls, &contained, &c.header.sender.node)?;
        tag_shared(&mut e["resource"], &c.header.sender.node);
        let rt = e["resource"]["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if rt == "Patient" {
            continue;
        }
        let mut probe = e["resource"].clone();
        crate::bundle::rewrite_references(&mut probe, &to_stand_in);
        if ctx
            .fhir
            .compartment_of(&rt, &ResourceId::random(), &probe)
            .key_name()
            != stand_in
        {
            return Err(Refusal::Invalid(format!(
                "a {rt} entry does not belong to the shared patient's record"
            )));
        }
    }
    let now = node.clock.now_micros();
    entries.push(provenance(&c.header, &targets, now));
    let (replay_key, id, expires) = (
        format!("{REPLAY_NAMESPACE}{}", c.header.sender.node),
        c.header.id.clone(),
        c.expires,
    );
    let ctx = ctx.clone();
    let written = write_with(node.store.as_ref(), move |tx| {
        if !tx.use_assertion_id(&replay_key, &id, expires, now)? {
            return Ok(None);
        }
        Ok(Some(crate::bundle::transaction_entries(
            tx, &ctx, entries, "",
        )?))
    });
    let out = match written {
        Ok(Some(out)) => out,
        Ok(None) => return Err(Refusal::Replay),
        Err(e) => {
            let api = Error::from(e);
            return Err(if api.status().is_server_error() {
                Refusal::Failed("the import failed; nothing was kept")
            } else {
                Refusal::Invalid(api.message)
            });
        }
    };
    // The Patient's new id, from its response entry's location (`…/Patient/<id>/_history/1`).
    let index = targets.iter().position(|t| *t == patient_url).unwrap_or(0);
    let patient = out
        .get(index)
        .and_then(|e| e["response"]["location"].as_str())
        .and_then(|l| {
            let mut segs = l.split('/').skip_while(|s| *s != "Patient");
            segs.next()?;
            segs.next()
        })
        .unwrap_or_default()
        .to_owned();
    Ok((patient, resources))
}

/// A refused bundle.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// The access-log leaf that recorded the refusal (when recording worked).
    pub leaf: Option<u64>,
    /// For a replay of a bundle imported before: the receipt given then, so a sender that
    /// lost the answer learns the outcome without a second import.
    pub earlier_receipt: Option<Value>,
}

impl Refused {
    fn new(refusal: Refusal, leaf: Option<u64>) -> Self {
        Self {
            refusal,
            leaf,
            earlier_receipt: None,
        }
    }
}

/// Checks and imports a sealed bundle (from a peer connection authenticated with `tls_key`,
/// or from a file when `None`), and records the outcome in the access log either way.
///
/// # Errors
/// [`Refused`]: the refusal, the leaf that recorded it, and for a replay the earlier receipt.
pub fn receive(
    node: &Node,
    ctx: &Ctx,
    bytes: &[u8],
    tls_key: Option<[u8; 32]>,
    agent: &Value,
) -> Result<Imported, Refused> {
    let mut seen = Seen::default();
    let result = check(node, bytes, tls_key, &mut seen)
        .and_then(|c| import(node, ctx, &c).map(|(p, n)| (c, p, n)));
    let now = node.clock.now_micros();
    let digest = hex::encode(medvault_crypto::sha256(bytes));
    let (outcome, reason) = match &result {
        Ok(_) => (AuditOutcome::Success, None),
        Err(r) => (AuditOutcome::Denied, Some(r.code())),
    };
    let header = seen.header.as_ref();
    let record = AuditRecord::new(AuditKind::Share, now, "share-receive", outcome)
        .agent(agent.clone())
        .patient(result.as_ref().ok().map(|(_, p, _)| p.clone()))
        .with(
            "share",
            json!({
                "id": header.map(|h| h.id.clone()),
                "from": header.map(|h| h.sender.node.clone()),
                "fromFingerprint": header.map(|h| h.sender.fingerprint.clone()),
                "senderLeaf": header.map(|h| h.sender_leaf),
                "purpose": header.map(|h| h.purpose.clone()),
                "resources": result.as_ref().ok().map(|(_, _, n)| *n),
                "bundleSha256": digest,
                "refused": reason,
                // Until the signature verified, the names above are only what the bytes claim.
                "signatureVerified": seen.verified,
            }),
        );
    let leaf = node
        .ledger
        .record_audit(node.access.as_ref(), now, &record)
        .map_err(|e| tracing::warn!(error = %e.message, "recording a received bundle failed"))
        .ok();
    let (c, patient, resources) = match result {
        Ok(done) => done,
        Err(refusal) => {
            // A replay is only found after the signature verified: the header is the sender's.
            let earlier_receipt = header
                .filter(|_| refusal == Refusal::Replay)
                .and_then(|h| {
                    node.store
                        .share_receipt(&h.sender.node, &h.id)
                        .ok()
                        .flatten()
                })
                .and_then(|text| serde_json::from_str(&text).ok());
            return Err(Refused {
                refusal,
                leaf,
                earlier_receipt,
            });
        }
    };
    let Some(leaf) = leaf else {
        return Err(Refused::new(
            Refusal::Failed(
                "the bundle was imported, but the access log could not record it and no receipt was made",
            ),
            None,
        ));
    };
    let text = receipt_text(
        &c.header.id,
        &c.me.node,
        &c.header.sender.node,
        leaf,
        &digest,
        resources,
    );
    let sig = c.me.signing.sign(text.as_bytes()).map_err(|_| {
        Refused::new(
            Refusal::Failed("the bundle was imported, but signing the receipt failed"),
            Some(leaf),
        )
    })?;
    let receipt = json!({
        "format": RECEIPT_FORMAT,
        "bundle": c.header.id,
        "recipient": c.me.node,
        "sender": c.header.sender.node,
        "recipientLeaf": leaf,
        "bundleSha256": digest,
        "resources": resources,
        "signature": {"Ed25519": B64.encode(&sig.ed25519), "ML-DSA-65": B64.encode(&sig.ml_dsa_65)},
    });
    // Kept until the bundle expires, for a sender that lost this answer (a failure here costs
    // only that: the import stands and the receipt is returned now).
    let (sender, id, text, expires) = (
        c.header.sender.node.clone(),
        c.header.id.clone(),
        receipt.to_string(),
        c.expires,
    );
    if let Err(e) = write_with(node.store.as_ref(), move |tx| {
        tx.put_share_receipt(&sender, &id, &text, expires, now)
    }) {
        tracing::warn!(error = %e, "keeping a share receipt failed");
    }
    Ok(Imported {
        header: c.header,
        patient,
        resources,
        leaf,
        receipt,
    })
}

/// Checks a receipt from `peer` for the bundle `sent` (`bytes`): returns the peer's leaf.
///
/// # Errors
/// What does not match or verify.
pub fn check_receipt(
    receipt: &Value,
    peer: &PeerDocument,
    sent: &ShareHeader,
    bytes: &[u8],
) -> Result<u64, String> {
    let s = |k: &str| receipt[k].as_str().unwrap_or_default();
    let leaf = receipt["recipientLeaf"]
        .as_u64()
        .ok_or("the receipt names no leaf")?;
    let resources = receipt["resources"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("the receipt names no resource count")?;
    let digest = hex::encode(medvault_crypto::sha256(bytes));
    if s("format") != RECEIPT_FORMAT
        || s("bundle") != sent.id
        || s("recipient") != peer.node
        || s("sender") != sent.sender.node
        || s("bundleSha256") != digest
    {
        return Err("the receipt is for another bundle or node".into());
    }
    let decode = |k: &str| B64.decode(receipt["signature"][k].as_str().unwrap_or_default());
    let (Ok(ed25519), Ok(ml_dsa_65)) = (decode("Ed25519"), decode("ML-DSA-65")) else {
        return Err("the receipt's signature is not base64".into());
    };
    let text = receipt_text(
        &sent.id,
        &peer.node,
        &sent.sender.node,
        leaf,
        &digest,
        resources,
    );
    if !hybrid_verify(
        &peer.signing,
        text.as_bytes(),
        &HybridSignature { ed25519, ml_dsa_65 },
    ) {
        return Err(
            "the receipt's signature does not verify with the peer's registered keys".into(),
        );
    }
    Ok(leaf)
}

/// Checks that this node's access log recorded sealing `sent` at the leaf its header names.
///
/// # Errors
/// What does not match.
pub fn check_sent(node: &Node, sent: &ShareHeader) -> Result<(), String> {
    let stored = node
        .access
        .audit_detail(sent.sender_leaf)
        .map_err(|e| e.to_string())?
        .ok_or("this node's access log has no record at the bundle's leaf")?;
    let detail = node
        .ledger
        .open_audit(&stored)
        .map_err(|e| e.message.clone())?;
    if detail["interaction"] == "share-send" && detail["share"]["id"] == sent.id.as_str() {
        Ok(())
    } else {
        Err("this node's access log did not record sealing this bundle".into())
    }
}

/// Records a verified receipt: the sender's access log cites the recipient's leaf.
///
/// # Errors
/// Store failures.
pub fn record_receipt(
    node: &Node,
    sent: &ShareHeader,
    peer_leaf: u64,
    resources: u64,
    agent: &Value,
) -> Result<u64, Error> {
    node.record_audit_now(|now| {
        AuditRecord::new(
            AuditKind::Share,
            now,
            "share-delivered",
            AuditOutcome::Success,
        )
        .agent(agent.clone())
        .with(
            "share",
            json!({
                "id": sent.id,
                "to": sent.recipient.node,
                "senderLeaf": sent.sender_leaf,
                "recipientLeaf": peer_leaf,
                "resources": resources,
            }),
        )
    })
}

/// Reads the header of a sealed bundle without checking its signature (for display, and to
/// find the registration to check it with).
pub fn peek_header(bytes: &[u8]) -> Option<ShareHeader> {
    let parts = medvault_crypto::bundle_parts(bytes).ok()?;
    parse_header(parts.header).ok()
}

/// Parses a bundle header (untrusted bytes).
///
/// # Errors
/// [`Refusal::Malformed`] unless it is a [`FORMAT`] header.
pub fn parse_header(bytes: &[u8]) -> Result<ShareHeader, Refusal> {
    let not_ours = || Refusal::Malformed(format!("the header is not a {FORMAT} header"));
    let header: ShareHeader = serde_json::from_slice(bytes).map_err(|_| not_ours())?;
    let party_ok = |p: &Party| {
        (1..=255).contains(&p.node.len())
            && !p.node.chars().any(char::is_control)
            && p.fingerprint.len() == 8 + 64
            && p.fingerprint.starts_with("SHA-256:")
    };
    if header.format != FORMAT
        || uuid::Uuid::parse_str(&header.id).is_err()
        || !PURPOSES.contains(&header.purpose.as_str())
        || !party_ok(&header.sender)
        || !party_ok(&header.recipient)
    {
        return Err(not_ours());
    }
    Ok(header)
}

/// The host and port of a peer's URL, which must be `https://HOST[:PORT]` (no path, no query).
pub fn peer_address(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("https")
        || !uri.path().trim_end_matches('/').is_empty()
        || uri.query().is_some()
    {
        return None;
    }
    let host = uri.host()?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Some((host, uri.port_u16().unwrap_or(443)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_point_into_the_bundle_or_become_logical() {
        let map = HashMap::from([("Patient/p1".to_owned(), "urn:uuid:1".to_owned())]);
        let mut v = json!({
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Patient/p1/_history/3"},
            "partOf": [{"reference": "https://b.example/fhir/Patient/p1", "display": "Ann"}],
            "performer": [{"reference": "Practitioner/dr1", "display": "Dr"}],
            "contained": [{"id": "m"}],
            "medicationReference": {"reference": "#m"},
            "basedOn": [{"reference": "urn:oid:1.2"}],
            "hasMember": [{"reference": "Observation/withheld1", "display": "HIV viral load"}],
            "focus": [{"reference": "Patient/someone-else"}],
        });
        let patient_data = |t: &str| matches!(t, "Patient" | "Observation");
        rewrite(&mut v, &map, "node-a", &patient_data);
        assert_eq!(v["subject"]["reference"], "urn:uuid:1");
        assert_eq!(v["encounter"]["reference"], "urn:uuid:1");
        // Another server's resource, even with a matching id, is not this one.
        assert_eq!(v["partOf"][0], json!({"display": "not shared"}));
        assert_eq!(v["performer"][0].get("reference"), None);
        assert_eq!(
            v["performer"][0]["identifier"],
            json!({"system": "urn:medvault:node:node-a", "value": "Practitioner/dr1"})
        );
        assert_eq!(v["medicationReference"]["reference"], "#m");
        assert_eq!(v["basedOn"][0], json!({"display": "not shared"}));
        // Patient data not in the bundle: neither its id nor its display text leaves.
        assert_eq!(v["hasMember"][0], json!({"display": "not shared"}));
        assert_eq!(v["focus"][0], json!({"display": "not shared"}));
    }

    #[test]
    fn fingerprints_compare_as_typed() {
        assert_eq!(normalize_fingerprint(" ab:CD ef"), "SHA-256:abcdef");
        assert_eq!(normalize_fingerprint("SHA-256:ABCD"), "SHA-256:abcd");
    }

    #[test]
    fn content_must_be_creates_of_one_patient() {
        let entry = |rt: &str, method: &str, url: &str| json!({"fullUrl": url, "resource": {"resourceType": rt}, "request": {"method": method, "url": rt}});
        let bundle = |entries: Vec<Value>| {
            serde_json::to_vec(
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
            )
            .unwrap()
        };
        let ok = bundle(vec![
            entry("Patient", "POST", "urn:uuid:a"),
            entry("Observation", "POST", "urn:uuid:b"),
        ]);
        assert_eq!(check_payload(&ok).unwrap().1, "urn:uuid:a");
        for bad in [
            bundle(vec![entry("Observation", "POST", "urn:uuid:b")]),
            bundle(vec![entry("Patient", "PUT", "urn:uuid:a")]),
            bundle(vec![entry("Patient", "POST", "Patient/a")]),
            bundle(vec![
                entry("Patient", "POST", "urn:uuid:a"),
                entry("Patient", "POST", "urn:uuid:b"),
            ]),
            bundle(vec![
                entry("Patient", "POST", "urn:uuid:a"),
                entry("Consent", "POST", "urn:uuid:c"),
            ]),
            b"not json".to_vec(),
        ] {
            assert!(matches!(check_payload(&bad), Err(Refusal::Invalid(_))));
        }
    }
}
