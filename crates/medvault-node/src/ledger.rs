//! The node's side of the ledger: writing audit and record leaves and signing checkpoints
//! (what the logs publish — tiles, proofs — is read in [`crate::published`]).
//!
//! A node keeps two logs (see [`LogId`]): the records log, in the records database, whose leaf
//! for a version is written in that version's transaction; and the access log, in its own
//! database, with a leaf for every request and administrative action. Each log has its own
//! origin, checkpoint key, checkpoints, tiles, proofs and witnesses.
//!
//! Leaves carry no PHI (see `medvault_ledger::Entry`): an audit leaf commits to a detail record
//! sealed under the `@audit` data key and stored beside it; a record leaf commits to the
//! version's ids and the hash of its sealed bytes.

use std::sync::Arc;

use medvault_core::KeyName;
use medvault_crypto::{BlindValue, DataKey, SigningKey};
use medvault_ledger::{
    Checkpoint, Entry, EntryKind, KeyKind, Note, NoteSigner, RecordFacts, SALT_LEN, VerifierKey,
    audit_commitment, record_commitment,
};
use medvault_store::{
    AuditDetail, LedgerNodes, LogRead, LogStore, LogTx, NodeCache, StoredVersion,
};
use serde_json::Value;

use crate::audit::AuditRecord;
use crate::error::Error;

/// Data key sealing audit details.
pub const AUDIT_KEY: &KeyName = &KeyName::node("@audit");
/// Data key whose secret is the Ed25519 seed signing the records log's checkpoints.
pub const LEDGER_KEY: &KeyName = &KeyName::node("@ledger");
/// Data key whose secret is the Ed25519 seed signing the access log's checkpoints.
pub const ACCESS_LOG_KEY: &KeyName = &KeyName::node("@ledger-access");
/// Data key whose secret is the seed of the node's witness cosigning key (a distinct key, as
/// C2SP tlog-cosignature asks).
pub const WITNESS_KEY: &KeyName = &KeyName::node("@witness");
/// Domain label bound into every sealed audit detail.
const AUDIT_SEAL_CONTEXT: &str = "medvault-audit-v1";
/// Label of the access checkpoint's extension line pinning the records log
/// (`records <size> <base64 root>`).
pub const RECORDS_PIN: &str = "records";
/// Label of the records checkpoint's extension line pinning the access log
/// (`access <size> <base64 root>`).
pub const ACCESS_PIN: &str = "access";

/// One of the node's two logs (see ARCHITECTURE.md, "Two logs").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogId {
    /// Every stored resource version, leaf written in the version's own transaction
    /// (`medvault.db`).
    Records,
    /// Every request and administrative action (`access.db`).
    Access,
}

impl LogId {
    /// Both logs, records first (the order checkpoints are signed in).
    pub const BOTH: [Self; 2] = [Self::Records, Self::Access];

    /// The log's name in URLs and origins.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Access => "access",
        }
    }

    /// The log named `name` in a URL.
    pub fn parse(name: &str) -> Option<Self> {
        Self::BOTH.into_iter().find(|l| l.as_str() == name)
    }

    /// The other log.
    pub fn other(self) -> Self {
        match self {
            Self::Records => Self::Access,
            Self::Access => Self::Records,
        }
    }

    /// The label of the extension line by which this log's checkpoints pin the other log.
    pub fn pin_label(self) -> &'static str {
        match self {
            Self::Records => ACCESS_PIN,
            Self::Access => RECORDS_PIN,
        }
    }

    /// The only kind of leaf the log holds.
    pub fn entry_kind(self) -> EntryKind {
        match self {
            Self::Records => EntryKind::Record,
            Self::Access => EntryKind::Audit,
        }
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log's identity: origin, checkpoint key and cached upper tree levels.
#[derive(Debug)]
pub struct Log {
    id: LogId,
    origin: String,
    signer: NoteSigner,
    nodes: NodeCache,
}

impl Log {
    /// Which log this is.
    pub fn id(&self) -> LogId {
        self.id
    }

    /// The checkpoint origin (also the signing key's name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The log's checkpoint verifier key, `<origin>+<key id>+<base64 key>`.
    pub fn verifier(&self) -> VerifierKey {
        self.signer.verifier()
    }

    /// In-memory hashes of the tree's upper levels, shared by every proof served from this log.
    pub fn node_cache(&self) -> &NodeCache {
        &self.nodes
    }

    /// Runs a root or proof computation over the log's stored tree: its nodes fetched in one
    /// batch, the upper levels from memory.
    ///
    /// # Errors
    /// 500 if the tree is missing a node or the store fails.
    pub fn over_tree<T>(
        &self,
        store: &dyn LogRead,
        f: impl Fn(&dyn medvault_ledger::NodeSource) -> Result<T, medvault_ledger::LedgerError>,
    ) -> Result<T, Error> {
        LedgerNodes(store)
            .batched_cached(Some(&self.nodes), f)
            .map_err(|e| Error::internal(&e))
    }

    /// Signs and stores a checkpoint of the current tree, with these extension lines, if the tree
    /// grew since the newest stored checkpoint (one checkpoint per size: a stored checkpoint,
    /// which may carry cosignatures, is never replaced by a new signing). Returns the new size.
    fn sign_if_grown(
        &self,
        store: &dyn LogStore,
        extensions: Vec<String>,
        pq: &NoteSigner,
    ) -> Result<Option<u64>, Error> {
        let size = store.ledger_size()?;
        if store
            .checkpoint(None)?
            .is_some_and(|(last, _)| last >= size)
        {
            return Ok(None);
        }
        let root = self.over_tree(store, |s| medvault_ledger::root(s, size))?;
        let text = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions,
        }
        .text();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let note = Note {
            signatures: vec![self.signer.sign(&text, 0), pq.sign(&text, now)],
            text,
        }
        .render();
        // Checked again inside the write, which is serialised with every other writer of the
        // log (one writer thread; with PostgreSQL, the log's lock across processes): when
        // several processes sign, the first checkpoint of a size stays and sizes only grow.
        let stored = medvault_store::write_log_with(store, move |tx| {
            if tx.checkpoint(None)?.is_some_and(|(last, _)| last >= size) {
                return Ok(false);
            }
            tx.put_checkpoint(size, &note).map(|()| true)
        })?;
        Ok(stored.then_some(size))
    }
}

/// The node's ledger: its two logs, the witness cosigner and the audit key.
#[derive(Debug)]
pub struct Ledger {
    records: Log,
    access: Log,
    cosigner: NoteSigner,
    pq_cosigner: NoteSigner,
    base: String,
    audit_key: Arc<DataKey>,
    /// Keys the access log's patient index (derived from the audit key).
    patient_tags: medvault_crypto::ParamKey,
    tenant: String,
}

fn random_salt() -> Result<[u8; SALT_LEN], Error> {
    let mut salt = [0u8; SALT_LEN];
    medvault_crypto::random_fill(&mut salt).map_err(|e| Error::internal(&e))?;
    Ok(salt)
}

/// The seeds of the ledger's Ed25519 keys.
#[derive(Debug)]
pub struct LedgerSeeds<'a> {
    /// Signs the records log's checkpoints.
    pub records: &'a DataKey,
    /// Signs the access log's checkpoints.
    pub access: &'a DataKey,
    /// Cosigns other logs' checkpoints as a witness.
    pub witness: &'a DataKey,
    /// Seed of the ML-DSA-44 key that adds a post-quantum cosignature to both logs' checkpoints.
    pub pq: &'a DataKey,
}

/// What a patient-index tag's HMAC input starts with (then the bare patient id): fixes the
/// tag's meaning, so a later index of another kind under the same key cannot collide.
const PATIENT_TAG_PREFIX: &[u8] = b"medvault-access-patient/1\0";

/// Seed of the ML-DSA-44 checkpoint cosigner.
pub const LEDGER_PQ_KEY: &KeyName = &KeyName::node("@ledger-ml-dsa-44");

impl Ledger {
    /// The ledger of a node named `base` (its logs are `<base>/records` and `<base>/access`, its
    /// witness key `<base>/witness`).
    ///
    /// # Errors
    /// If an origin is not a valid note key name.
    pub fn new(
        base: &str,
        seeds: &LedgerSeeds<'_>,
        audit_key: Arc<DataKey>,
        tenant: String,
    ) -> Result<Self, medvault_ledger::LedgerError> {
        let key = |seed: &DataKey| {
            SigningKey::from_data_key(seed)
                .map_err(|e| medvault_ledger::LedgerError::Storage(Box::new(e)))
        };
        let log = |id: LogId, seed: &DataKey| -> Result<Log, medvault_ledger::LedgerError> {
            let origin = format!("{base}/{id}");
            Ok(Log {
                id,
                signer: NoteSigner::new(&origin, KeyKind::Ed25519, key(seed)?)?,
                origin,
                nodes: NodeCache::default(),
            })
        };
        // The patient index's key is a blind-index key of the audit key: whoever cannot open
        // the details cannot compute the tags either.
        let patient_tags = medvault_crypto::BlindIndexer::new(&audit_key)
            .param_key("AuditEvent", "patient")
            .map_err(|e| medvault_ledger::LedgerError::Storage(Box::new(e)))?;
        Ok(Self {
            records: log(LogId::Records, seeds.records)?,
            access: log(LogId::Access, seeds.access)?,
            cosigner: NoteSigner::new(
                &format!("{base}/witness"),
                KeyKind::CosignatureV1,
                key(seeds.witness)?,
            )?,
            pq_cosigner: NoteSigner::new(
                &format!("{base}/ml-dsa-44"),
                KeyKind::MlDsa44,
                medvault_ledger::SignerKey::MlDsa44(
                    medvault_crypto::MlDsa44Key::from_data_key(seeds.pq)
                        .map_err(|e| medvault_ledger::LedgerError::Storage(Box::new(e)))?,
                ),
            )?,
            audit_key,
            patient_tags,
            tenant,
            base: base.to_owned(),
        })
    }

    /// The node's ledger name (`medvault.local/<tenant id>`): the logs are `<base>/records` and
    /// `<base>/access`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One of the two logs.
    pub fn log(&self, id: LogId) -> &Log {
        match id {
            LogId::Records => &self.records,
            LogId::Access => &self.access,
        }
    }

    /// The records log.
    pub fn records(&self) -> &Log {
        &self.records
    }

    /// The access log.
    pub fn access(&self) -> &Log {
        &self.access
    }

    /// The tenant whose records the ledger commits to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The node's witness cosigner key (`vkey` form, type `0x04`).
    pub fn cosigner(&self) -> VerifierKey {
        self.cosigner.verifier()
    }

    /// The verifier key of the node's ML-DSA-44 cosignature on its own checkpoints (C2SP
    /// `tlog-cosignature`, `subtree/v1`): the post-quantum signature every checkpoint carries
    /// beside the log's Ed25519 one.
    pub fn pq_cosigner(&self) -> VerifierKey {
        self.pq_cosigner.verifier()
    }

    /// Cosigns a checkpoint text as a witness, at POSIX time `timestamp`.
    pub fn cosign(&self, text: &str, timestamp: u64) -> medvault_ledger::NoteSignature {
        self.cosigner.sign(text, timestamp)
    }

    /// Salts, commits and returns the records-log leaf for `v`, setting `v.salt`.
    ///
    /// # Errors
    /// RNG failure.
    pub fn record_leaf(&self, v: &mut StoredVersion) -> Result<Vec<u8>, Error> {
        let salt = random_salt()?;
        v.salt = Some(salt);
        Ok(record_entry(&self.tenant, v, &salt).encode().to_vec())
    }

    /// Seals `record` and appends it as an access-log leaf inside `tx` (a transaction on the
    /// access log's store). Returns the leaf index.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub fn append_audit(
        &self,
        tx: &mut dyn LogTx,
        time_micros: i64,
        record: &AuditRecord,
    ) -> Result<u64, Error> {
        let (detail, leaf) = self.seal_audit(time_micros, record)?;
        Ok(tx.append_audit(&detail, &leaf)?)
    }

    /// The access log's patient-index tag of patient `id` (a bare id).
    pub fn patient_tag(&self, id: &str) -> BlindValue {
        let mut input = Vec::with_capacity(PATIENT_TAG_PREFIX.len() + id.len());
        input.extend_from_slice(PATIENT_TAG_PREFIX);
        input.extend_from_slice(id.as_bytes());
        self.patient_tags.blind(&input)
    }

    /// The patient-index tags of the patients `record` names.
    pub fn patient_tags<'a>(&self, named: impl IntoIterator<Item = &'a str>) -> Vec<BlindValue> {
        named.into_iter().map(|p| self.patient_tag(p)).collect()
    }

    /// The sealed detail (with the patient-index tags of the patients `record` names in its
    /// header, for the indexer: [`crate::access_index`]) and the leaf of `record`.
    fn seal_audit(
        &self,
        time_micros: i64,
        record: &AuditRecord,
    ) -> Result<(AuditDetail, Vec<u8>), Error> {
        let salt = random_salt()?;
        let patients = self.patient_tags(record.patients());
        let bytes = crate::audit::encode_detail_tagged(record, &patients)
            .map_err(|e| Error::internal(&e))?;
        let sealed = self
            .audit_key
            .seal_bound(AUDIT_SEAL_CONTEXT, &[&salt], &bytes)
            .map_err(|e| Error::internal(&e))?;
        let leaf = Entry {
            kind: EntryKind::Audit,
            time_micros: u64::try_from(time_micros).unwrap_or(0),
            commitment: audit_commitment(&salt, sealed.as_bytes()),
        }
        .encode()
        .to_vec();
        Ok((AuditDetail { salt, sealed }, leaf))
    }

    /// Seals `record` and appends it as an access-log leaf in its own durable write on `access`.
    /// Returns the leaf index.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub fn record_audit(
        &self,
        access: &dyn LogStore,
        time_micros: i64,
        record: &AuditRecord,
    ) -> Result<u64, Error> {
        let (detail, leaf) = self.seal_audit(time_micros, record)?;
        Ok(medvault_store::write_log_with(access, move |tx| {
            tx.append_audit(&detail, &leaf)
        })?)
    }

    /// Appends an access-log leaf in its own durable write without holding a thread: resolves
    /// once the leaf is committed. Returns the leaf index.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub async fn record_audit_async(
        &self,
        access: &dyn LogStore,
        time_micros: i64,
        record: &AuditRecord,
    ) -> Result<u64, Error> {
        let (detail, leaf) = self.seal_audit(time_micros, record)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        medvault_store::submit_log_with(
            access,
            move |t| t.append_audit(&detail, &leaf),
            move |r| {
                let _ = tx.send(r);
            },
        );
        Ok(rx.await.map_err(|e| Error::internal(&e))??)
    }

    /// Opens a stored audit detail.
    ///
    /// # Errors
    /// 500 if it does not open (tampered or wrong key).
    pub fn open_audit(&self, detail: &AuditDetail) -> Result<Value, Error> {
        let plain = self
            .audit_key
            .open_bound(AUDIT_SEAL_CONTEXT, &[&detail.salt], &detail.sealed)
            .map_err(|e| Error::internal(&e))?;
        crate::audit::decode_detail(&plain).map_err(|e| Error::internal(&e))
    }

    /// The patient-index tags (sorted) of the patients a stored audit detail's record names:
    /// those it carries, or (a detail written before it carried them) read from the record
    /// without building it. What `ledger verify` and re-indexing need of every entry.
    ///
    /// # Errors
    /// 500 if it does not open (tampered or wrong key) or is not a record.
    pub fn audit_patient_tags(&self, detail: &AuditDetail) -> Result<Vec<BlindValue>, Error> {
        let plain = self
            .audit_key
            .open_bound(AUDIT_SEAL_CONTEXT, &[&detail.salt], &detail.sealed)
            .map_err(|e| Error::internal(&e))?;
        if let Some(tags) = crate::audit::tags_of_detail(&plain) {
            return Ok(tags);
        }
        let named = crate::audit::patients_in_detail(&plain).map_err(|e| Error::internal(&e))?;
        let mut tags = self.patient_tags(named.iter().map(String::as_str));
        tags.sort_unstable();
        Ok(tags)
    }

    /// True if a stored audit detail opens (its AEAD tag verifies) under the audit key.
    pub fn audit_opens(&self, detail: &AuditDetail) -> bool {
        self.audit_key
            .open_bound(AUDIT_SEAL_CONTEXT, &[&detail.salt], &detail.sealed)
            .is_ok()
    }

    /// Signs and stores new checkpoints where a log grew. Each log's checkpoint pins the other
    /// log's newest checkpoint in an extension line (`access <size> <root>` on records
    /// checkpoints, `records <size> <root>` on access checkpoints), so a witness cosigning either
    /// log also fixes the other's history, and neither database can be rolled back behind the
    /// other's back. The records log signs first, so the access checkpoint pins the fresh one.
    /// (Every record write is a request, so the access log grows whenever the records log
    /// does.) Returns the new sizes (records, access), `None` where nothing grew.
    ///
    /// # Errors
    /// Store failures.
    pub fn checkpoint_now(
        &self,
        records: &dyn LogStore,
        access: &dyn LogStore,
    ) -> Result<(Option<u64>, Option<u64>), Error> {
        let pin = |label: &str, store: &dyn LogStore| -> Result<String, Error> {
            let (size, root) = newest_head(store)?;
            Ok(medvault_ledger::pin_line(label, size, &root))
        };
        let signed_records = self.records.sign_if_grown(
            records,
            vec![pin(ACCESS_PIN, access)?],
            &self.pq_cosigner,
        )?;
        let signed_access = self.access.sign_if_grown(
            access,
            vec![pin(RECORDS_PIN, records)?],
            &self.pq_cosigner,
        )?;
        Ok((signed_records, signed_access))
    }
}

/// Size and root of the newest stored checkpoint of the log in `store` (the empty tree if none).
fn newest_head(store: &dyn LogRead) -> Result<(u64, medvault_ledger::Hash), Error> {
    match store.checkpoint(None)? {
        Some((_, note)) => {
            let note = Note::parse(note.as_bytes()).map_err(|e| Error::internal(&e))?;
            let cp = Checkpoint::parse(&note.text).map_err(|e| Error::internal(&e))?;
            Ok((cp.size, cp.root))
        }
        None => Ok((0, medvault_ledger::empty_root())),
    }
}

/// The leaf of a stored version, given its salt.
pub fn record_entry(tenant: &str, v: &StoredVersion, salt: &[u8; SALT_LEN]) -> Entry {
    let facts = RecordFacts {
        tenant,
        resource_type: &v.resource_type,
        id: &v.id,
        version: v.version,
        key_name: &v.key_name,
        key_version: v.key_version,
        last_updated_micros: v.last_updated_micros,
        sealed: v.body.as_ref().map(medvault_crypto::Sealed::as_bytes),
    };
    Entry {
        kind: EntryKind::Record,
        time_micros: u64::try_from(v.last_updated_micros).unwrap_or(0),
        commitment: record_commitment(salt, &facts),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

    use crate::audit::{AuditKind, AuditOutcome, AuditRecord};

    #[test]
    fn a_recorded_audit_record_opens_to_its_json() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::Node::open(
            dir.path(),
            &medvault_store_sqlite::Embedded::new(dir.path()),
            None,
        )
        .unwrap();
        let now = node.clock.now_micros();
        let record = AuditRecord::new(AuditKind::Rest, now, "read", AuditOutcome::Denied)
            .agent(serde_json::json!({"token": "tok_1", "role": "clinician"}))
            .patient(Some("p1".into()))
            .denied_by(Some("consent-deny".into()))
            .with("status", 403)
            .with("resource_type", "Observation")
            .with("id", serde_json::Value::Null);
        let leaf = node
            .ledger
            .record_audit(node.access.as_ref(), now, &record)
            .unwrap();
        let stored = node.access.audit_detail(leaf).unwrap().expect("stored");
        let opened = node.ledger.open_audit(&stored).unwrap();
        assert_eq!(opened, record.to_json());
        assert_eq!(opened["v"], 1);
        assert!(opened.get("id").is_none(), "a null field is left out");
    }
}
