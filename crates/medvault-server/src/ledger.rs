//! The node's side of the ledger: writing audit and record leaves, signing checkpoints, and the
//! public read-only transparency endpoints (C2SP `tlog-tiles` plus proof endpoints).
//!
//! Leaves carry no PHI (see `medvault_ledger::Entry`): an audit leaf commits to a detail record
//! sealed under the `@audit` data key and stored beside it; a record leaf commits to the
//! version's ids and the hash of its sealed bytes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_crypto::{DataKey, SigningKey};
use medvault_ledger::{
    Checkpoint, Entry, EntryKind, KeyKind, Note, NoteSigner, RecordFacts, SALT_LEN, TILE_WIDTH,
    TilePath, VerifierKey, audit_commitment, consistency_proof, inclusion_proof, record_commitment,
};
use medvault_store::{
    AuditDetail, LedgerNodes, NodeCache, Store, StoreError, StoreRead, StoreTx, StoredVersion,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, IssueCode};

/// Data key sealing audit details.
pub const AUDIT_KEY: &str = "@audit";
/// Data key whose secret is the node's Ed25519 checkpoint-signing seed.
pub const LEDGER_KEY: &str = "@ledger";
/// Data key whose secret is the seed of the node's witness cosigning key (a distinct key, as
/// C2SP tlog-cosignature asks).
pub const WITNESS_KEY: &str = "@witness";
/// Domain label bound into every sealed audit detail.
const AUDIT_SEAL_CONTEXT: &str = "medvault-audit-v1";

/// The node's ledger identity and keys.
#[derive(Debug)]
pub struct Ledger {
    origin: String,
    signer: NoteSigner,
    cosigner: NoteSigner,
    audit_key: Arc<DataKey>,
    tenant: String,
    nodes: NodeCache,
}

fn random_salt() -> Result<[u8; SALT_LEN], ApiError> {
    let mut salt = [0u8; SALT_LEN];
    medvault_crypto::random_fill(&mut salt).map_err(|e| ApiError::internal(&e))?;
    Ok(salt)
}

impl Ledger {
    /// The ledger of a node whose origin line is `origin`.
    ///
    /// # Errors
    /// If the origin is not a valid note key name.
    pub fn new(
        origin: String,
        signing_seed: &DataKey,
        witness_seed: &DataKey,
        audit_key: Arc<DataKey>,
        tenant: String,
    ) -> Result<Self, medvault_ledger::LedgerError> {
        let key = |seed: &DataKey| {
            SigningKey::from_data_key(seed)
                .map_err(|e| medvault_ledger::LedgerError::Storage(Box::new(e)))
        };
        let signer = NoteSigner::new(&origin, KeyKind::Ed25519, key(signing_seed)?)?;
        let cosigner = NoteSigner::new(
            &format!("{origin}/witness"),
            KeyKind::CosignatureV1,
            key(witness_seed)?,
        )?;
        Ok(Self {
            origin,
            signer,
            cosigner,
            audit_key,
            tenant,
            nodes: NodeCache::default(),
        })
    }

    /// Runs a root or proof computation over the stored tree: its nodes fetched in one batch,
    /// the upper levels from memory.
    ///
    /// # Errors
    /// 500 if the tree is missing a node or the store fails.
    pub fn over_tree<T>(
        &self,
        store: &dyn StoreRead,
        f: impl Fn(&dyn medvault_ledger::NodeSource) -> Result<T, medvault_ledger::LedgerError>,
    ) -> Result<T, ApiError> {
        LedgerNodes(store)
            .batched_cached(Some(&self.nodes), f)
            .map_err(|e| ApiError::internal(&e))
    }

    /// In-memory hashes of the tree's upper levels, shared by every proof this node serves.
    pub fn node_cache(&self) -> &NodeCache {
        &self.nodes
    }

    /// The tenant whose records the ledger commits to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The checkpoint origin (also the signing key's name).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The node's verifier key, `<origin>+<key id>+<base64 key>`.
    pub fn verifier(&self) -> VerifierKey {
        self.signer.verifier()
    }

    /// The node's witness cosigner key (`vkey` form, type `0x04`).
    pub fn cosigner(&self) -> VerifierKey {
        self.cosigner.verifier()
    }

    /// Cosigns a checkpoint text as a witness, at POSIX time `timestamp`.
    pub fn cosign(&self, text: &str, timestamp: u64) -> medvault_ledger::NoteSignature {
        self.cosigner.sign(text, timestamp)
    }

    /// Salts, commits and returns the ledger leaf for `v`, setting `v.salt`.
    ///
    /// # Errors
    /// RNG failure.
    pub fn record_leaf(&self, v: &mut StoredVersion) -> Result<Vec<u8>, ApiError> {
        let salt = random_salt()?;
        v.salt = Some(salt);
        Ok(record_entry(&self.tenant, v, &salt).encode().to_vec())
    }

    /// Seals `detail` and appends it as an audit leaf inside `tx`. Returns the leaf index.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub fn append_audit(
        &self,
        tx: &mut dyn StoreTx,
        time_micros: i64,
        detail: &Value,
    ) -> Result<u64, ApiError> {
        let (detail, leaf) = self.seal_audit(time_micros, detail)?;
        Ok(tx.append_audit(&detail, &leaf)?)
    }

    fn seal_audit(
        &self,
        time_micros: i64,
        detail: &Value,
    ) -> Result<(AuditDetail, Vec<u8>), ApiError> {
        let salt = random_salt()?;
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(detail).unwrap_or_default());
        let sealed = self
            .audit_key
            .seal_bound(AUDIT_SEAL_CONTEXT, &[&salt], &bytes)
            .map_err(|e| ApiError::internal(&e))?;
        let leaf = Entry {
            kind: EntryKind::Audit,
            time_micros: u64::try_from(time_micros).unwrap_or(0),
            commitment: audit_commitment(&salt, sealed.as_bytes()),
        }
        .encode()
        .to_vec();
        Ok((AuditDetail { salt, sealed }, leaf))
    }

    /// Appends an audit leaf in its own durable write.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub fn record_audit(
        &self,
        store: &dyn Store,
        time_micros: i64,
        detail: &Value,
    ) -> Result<u64, ApiError> {
        let (detail, leaf) = self.seal_audit(time_micros, detail)?;
        Ok(medvault_store::write_with(store, move |tx| {
            tx.append_audit(&detail, &leaf)
        })?)
    }

    /// Appends an audit leaf in its own durable write without holding a thread: resolves once
    /// the leaf is committed. Returns the leaf index.
    ///
    /// # Errors
    /// Store failures, RNG failure.
    pub async fn record_audit_async(
        &self,
        store: &dyn Store,
        time_micros: i64,
        detail: &Value,
    ) -> Result<u64, ApiError> {
        let (detail, leaf) = self.seal_audit(time_micros, detail)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        medvault_store::submit_with(
            store,
            move |t| t.append_audit(&detail, &leaf),
            move |r| {
                let _ = tx.send(r);
            },
        );
        Ok(rx.await.map_err(|e| ApiError::internal(&e))??)
    }

    /// Opens a stored audit detail.
    ///
    /// # Errors
    /// 500 if it does not open (tampered or wrong key).
    pub fn open_audit(&self, detail: &AuditDetail) -> Result<Value, ApiError> {
        let plain = self
            .audit_key
            .open_bound(AUDIT_SEAL_CONTEXT, &[&detail.salt], &detail.sealed)
            .map_err(|e| ApiError::internal(&e))?;
        serde_json::from_slice(&plain).map_err(|e| ApiError::internal(&e))
    }

    /// True if a stored audit detail opens (its AEAD tag verifies) under the audit key.
    pub fn audit_opens(&self, detail: &AuditDetail) -> bool {
        self.audit_key
            .open_bound(AUDIT_SEAL_CONTEXT, &[&detail.salt], &detail.sealed)
            .is_ok()
    }

    /// Signs and stores a checkpoint of the current tree if it grew since the last one. Returns
    /// the new size, or `None` when nothing changed.
    ///
    /// # Errors
    /// Store failures.
    pub fn checkpoint_now(&self, store: &dyn Store) -> Result<Option<u64>, ApiError> {
        let size = store.ledger_size()?;
        let last = store.checkpoint(None)?.map(|(s, _)| s);
        if last.is_some_and(|l| l >= size) {
            return Ok(None);
        }
        let root = self.over_tree(store, |s| medvault_ledger::root(s, size))?;
        let text = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: vec![],
        }
        .text();
        let note = Note {
            signatures: vec![self.signer.sign(&text, 0)],
            text,
        }
        .render();
        medvault_store::write_with(store, move |tx| tx.put_checkpoint(size, &note))?;
        Ok(Some(size))
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

/// Signs a checkpoint every `every` while the server runs (only when the tree grew).
/// Starts the witness-cosigning task beside it when witnesses are configured.
pub async fn checkpoint_task(state: AppState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (store, ledger) = (state.node.store.clone(), Arc::clone(&state.node.ledger));
    match tokio::task::spawn_blocking(move || ledger.node_cache().warm(store.as_ref())).await {
        Ok(Ok(n)) => tracing::debug!(nodes = n, "ledger node cache warmed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "ledger node cache not warmed"),
        Err(e) => tracing::warn!(error = %e, "ledger node cache not warmed"),
    }
    // Witnesses are asked on their own schedule, so a slow or unreachable witness never delays
    // the node's own checkpoints.
    let cosigning = (!state.config.witnesses.is_empty())
        .then(|| tokio::spawn(crate::witness::cosign_task(state.clone(), every)));
    let _stop_with_us = AbortOnDrop(cosigning);
    loop {
        tick.tick().await;
        let (store, ledger) = (state.node.store.clone(), Arc::clone(&state.node.ledger));
        match tokio::task::spawn_blocking(move || ledger.checkpoint_now(store.as_ref())).await {
            Ok(Ok(Some(size))) => tracing::debug!(size, "checkpoint signed"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.message, "checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "checkpoint task failed"),
        }
    }
}

/// Aborts a spawned task when dropped (when the checkpoint task is aborted at shutdown).
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

fn bad(msg: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, msg)
}

/// Cache policy of a transparency resource: tiles never change; the checkpoint and keys do.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const SHORT_LIVED: &str = "no-cache, max-age=1";

/// A response with its content type and (if any) cache policy.
pub(crate) fn with_headers(
    body: impl IntoResponse,
    content_type: &'static str,
    cache: Option<&'static str>,
) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(c) = cache {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(c));
    }
    r
}

fn text_response(body: String) -> Response {
    with_headers(body, "text/plain; charset=utf-8", Some(SHORT_LIVED))
}

async fn on_reader<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&dyn Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.node.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::internal(&e))?
}

/// `GET /ledger/checkpoint`: the newest signed checkpoint, with any witness cosignatures.
pub(crate) async fn get_checkpoint(State(state): State<AppState>) -> Result<Response, ApiError> {
    let cp = on_reader(&state, |s| Ok(s.checkpoint(None)?)).await?;
    let (_, note) = cp.ok_or_else(|| ApiError::not_found("no checkpoint has been signed yet"))?;
    Ok(text_response(note))
}

/// `GET /ledger/key`: the node's checkpoint verifier key (`vkey` form).
pub(crate) async fn get_key(State(state): State<AppState>) -> Response {
    text_response(format!("{}\n", state.node.ledger.verifier().to_vkey()))
}

/// `GET /ledger/tile/...`: hash tiles and entry bundles per C2SP `tlog-tiles`.
pub(crate) async fn get_tile(
    State(state): State<AppState>,
    Path(rest): Path<String>,
) -> Result<Response, ApiError> {
    let tile = TilePath::parse(&rest).map_err(|_| ApiError::not_found("no such tile"))?;
    let body = on_reader(&state, move |s| tile_bytes(s, &tile)).await?;
    Ok(with_headers(
        body,
        "application/octet-stream",
        Some(IMMUTABLE),
    ))
}

/// The bytes of one tile, if the published tree is large enough to hold it.
fn tile_bytes(store: &dyn StoreRead, tile: &TilePath) -> Result<Vec<u8>, ApiError> {
    let missing = || ApiError::not_found("no such tile");
    // Only what a signed checkpoint covers is published.
    let size = store.checkpoint(None)?.map_or(0, |(s, _)| s);
    let level = u32::from(tile.level.unwrap_or(0));
    let width = u64::from(tile.partial.unwrap_or(256));
    // Hashes at tile level L are tree nodes at level 8L; entries are level-0 leaves.
    let tree_level = 8 * level;
    let per_hash = 1u64.checked_shl(tree_level).ok_or_else(missing)?;
    let start = tile.index.checked_mul(TILE_WIDTH).ok_or_else(missing)?;
    let end = start.checked_add(width).ok_or_else(missing)?;
    let available = size / per_hash;
    // A full tile needs all 256; a partial tile of width W exists only when it is the last one.
    let exists = match tile.partial {
        None => end <= available,
        Some(_) => available.checked_sub(start) == Some(width),
    };
    if !exists {
        return Err(missing());
    }
    if tile.level.is_none() {
        let entries = store.ledger_entries(start, width)?;
        if entries.len() as u64 != width {
            return Err(ApiError::internal(&StoreError::Backend(
                "ledger entries missing".into(),
            )));
        }
        let mut out = Vec::with_capacity(entries.len() * 44);
        for (_, e) in entries {
            let len = u16::try_from(e.len()).map_err(|e| ApiError::internal(&e))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&e);
        }
        return Ok(out);
    }
    let level = u8::try_from(tree_level).map_err(|_| missing())?;
    let hashes = store.ledger_nodes(level, start, width)?;
    if hashes.len() as u64 != width {
        return Err(ApiError::internal(&StoreError::Backend(
            "ledger nodes missing".into(),
        )));
    }
    Ok(hashes.concat())
}

/// Query of the proof endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct ProofQuery {
    index: Option<u64>,
    size: Option<u64>,
    old: Option<u64>,
    new: Option<u64>,
}

fn proof_json(proof: &[medvault_ledger::Hash]) -> Vec<Value> {
    proof.iter().map(|h| Value::String(B64.encode(h))).collect()
}

async fn published_size(state: &AppState) -> Result<u64, ApiError> {
    on_reader(state, |s| Ok(s.checkpoint(None)?.map_or(0, |(n, _)| n))).await
}

/// `GET /ledger/proof/inclusion?index=I&size=N`: the audit path of leaf `I` in the tree of `N`
/// leaves (`N` must not exceed the newest checkpoint), with the leaf entry.
pub(crate) async fn get_inclusion(
    State(state): State<AppState>,
    Query(q): Query<ProofQuery>,
) -> Result<Response, ApiError> {
    let (Some(index), Some(size)) = (q.index, q.size) else {
        return Err(bad("give index and size"));
    };
    let published = published_size(&state).await?;
    if index >= size || size > published {
        return Err(bad("need index < size <= the newest checkpoint's size"));
    }
    let ledger = Arc::clone(&state.node.ledger);
    let (proof, entry) = on_reader(&state, move |s| {
        let proof = ledger.over_tree(s, |n| inclusion_proof(n, index, size))?;
        let entry = s
            .ledger_entries(index, 1)?
            .into_iter()
            .next()
            .map(|(_, e)| e);
        Ok((proof, entry.unwrap_or_default()))
    })
    .await?;
    Ok(axum::Json(json!({
        "index": index,
        "size": size,
        "entry": B64.encode(entry),
        "proof": proof_json(&proof),
    }))
    .into_response())
}

/// `GET /ledger/proof/consistency?old=M&new=N`: the consistency proof between two published
/// tree sizes.
pub(crate) async fn get_consistency(
    State(state): State<AppState>,
    Query(q): Query<ProofQuery>,
) -> Result<Response, ApiError> {
    let (Some(old), Some(new)) = (q.old, q.new) else {
        return Err(bad("give old and new"));
    };
    let published = published_size(&state).await?;
    if old == 0 || old > new || new > published {
        return Err(bad("need 0 < old <= new <= the newest checkpoint's size"));
    }
    let ledger = Arc::clone(&state.node.ledger);
    let proof = on_reader(&state, move |s| {
        ledger.over_tree(s, |n| consistency_proof(n, old, new))
    })
    .await?;
    Ok(axum::Json(json!({ "old": old, "new": new, "proof": proof_json(&proof) })).into_response())
}
