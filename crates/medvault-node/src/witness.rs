//! Witnessing, both ways (C2SP `tlog-witness` and `tlog-cosignature`).
//!
//! - As a **witness** for other logs (`serve --witness-for VKEY`): `POST /witness/add-checkpoint`
//!   checks the log's signature, the old size against the newest checkpoint it cosigned for that
//!   origin, and the consistency proof, then persists the new state and answers a timestamped
//!   Ed25519 cosignature. Check and update run as one write on the access log database's single
//!   writer, so two racing requests cannot roll the state back. Refusals (404, 403, 409, 422) are
//!   answered in plain text and, like every request, recorded in this node's access log.
//! - As a **log** (`serve --witness URL,VKEY`): after each new checkpoint of either of its logs,
//!   asks every configured witness to cosign it (with a consistency proof from the size that
//!   witness last cosigned), verifies the cosignature and stores it on the checkpoint, which
//!   `/ledger/{records,access}/checkpoint` serves.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use medvault_ledger::{
    AddCheckpoint, KeyKind, LedgerError, Note, VerifierKey, consistency_proof,
    parse_signature_line, verify_consistency,
};
use medvault_store::{LogRead, StoreError, write_log_with};

use crate::Node;
use crate::error::Error;
use crate::ledger::LogId;

/// A witness this node asks for cosignatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWitness {
    /// Submission prefix (`http://host:port/witness`); `/add-checkpoint` is appended.
    pub url: String,
    /// The witness's cosignature verifier key.
    pub key: VerifierKey,
}

impl RemoteWitness {
    /// Parses `URL,VKEY`.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (url, vkey) = text
            .split_once(',')
            .ok_or("expected URL,VKEY (the witness's submission prefix and its verifier key)")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("the witness URL must start with http:// or https://".into());
        }
        let key = VerifierKey::parse_vkey(vkey).map_err(|e| format!("witness key: {e}"))?;
        if key.kind != KeyKind::CosignatureV1 {
            return Err("the witness key must be a cosignature/v1 key (type 0x04)".into());
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            key,
        })
    }
}

/// Why this node, as a witness, did not cosign a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request is not an `add-checkpoint` body (C2SP `tlog-witness`).
    Malformed(String),
    /// The checkpoint's origin is not a log this node witnesses.
    UnknownOrigin,
    /// The checkpoint carries no valid signature from the log's key.
    BadSignature,
    /// The old size (or, at the same size, the root) conflicts with what this witness last
    /// cosigned for the origin, whose size is given: a rollback or a fork.
    Conflict(u64),
    /// The consistency proof does not verify.
    Inconsistent(&'static str),
}

impl Refusal {
    /// Whether the log's key signed the request (it is then not anonymous, whatever the verdict).
    pub fn signed_by_log(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Inconsistent(_))
    }
}

/// What witnessing a checkpoint came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Witnessed {
    /// Cosigned: the cosignature line (with its newline) to answer.
    Cosigned(String),
    /// Refused, and why.
    Refused(Refusal),
}

/// Handles a C2SP `tlog-witness` `add-checkpoint` request for one of the logs in `witness_for`:
/// checks the log's signature, the old size against the newest checkpoint this node cosigned
/// for that origin and the consistency proof, then persists the new state and cosigns. Check
/// and update are one write on the access log database's single writer, so two racing
/// requests cannot roll the state back. Blocking.
///
/// # Errors
/// Store failures.
pub fn add_checkpoint(
    node: &Node,
    witness_for: &[VerifierKey],
    body: &[u8],
) -> Result<Witnessed, Error> {
    let refused = |r| Ok(Witnessed::Refused(r));
    let req = match AddCheckpoint::parse(body) {
        Ok(r) => r,
        Err(e) => return refused(Refusal::Malformed(e.to_string())),
    };
    let Some(log_key) = witness_for.iter().find(|k| k.name == req.checkpoint.origin) else {
        return refused(Refusal::UnknownOrigin);
    };
    if log_key.verify(&req.note).is_err() {
        return refused(Refusal::BadSignature);
    }
    let origin = req.checkpoint.origin.clone();
    let AddCheckpoint {
        old_size,
        proof,
        note,
        checkpoint,
    } = req;
    let text = note.text.clone();
    let verdict = write_log_with(node.access.as_ref(), move |tx| {
        let (size, root) = tx.witnessed(&checkpoint.origin)?.unwrap_or((0, [0; 32]));
        if old_size != size {
            return Ok(Some(Refusal::Conflict(size)));
        }
        if old_size == checkpoint.size {
            if size > 0 && root != checkpoint.root {
                return Ok(Some(Refusal::Conflict(size)));
            }
        } else if old_size == 0 {
            if !proof.is_empty() {
                return Ok(Some(Refusal::Inconsistent(
                    "a proof from size 0 must be empty",
                )));
            }
        } else if let Err(LedgerError::ProofInvalid(why)) =
            verify_consistency(old_size, checkpoint.size, &root, &checkpoint.root, &proof)
        {
            return Ok(Some(Refusal::Inconsistent(why)));
        }
        tx.set_witnessed(
            &checkpoint.origin,
            checkpoint.size,
            &checkpoint.root,
            &note.render(),
        )?;
        Ok(None)
    })?;
    match verdict {
        None => {
            let now = u64::try_from(node.clock.now_micros() / 1_000_000).unwrap_or(0);
            Ok(Witnessed::Cosigned(node.ledger.cosign(&text, now).line()))
        }
        Some(Refusal::Conflict(size)) => {
            tracing::warn!(origin = %origin, witnessed = size, requested_old = old_size, "witness refused a checkpoint: old size or root conflicts (rollback or fork?)");
            refused(Refusal::Conflict(size))
        }
        Some(r) => {
            tracing::warn!(origin = %origin, refusal = ?r, "witness refused a checkpoint: consistency proof does not verify (fork?)");
            refused(r)
        }
    }
}

/// What the log side remembers between rounds: the size each witness last cosigned, per log.
#[derive(Debug, Default)]
struct Cosigning {
    last: HashMap<(LogId, String), u64>,
}

/// Asks the configured witnesses to cosign the newest checkpoints every `every`, forever.
pub async fn cosign_task(node: Arc<Node>, witnesses: Arc<[RemoteWitness]>, every: Duration) {
    let client = client();
    let mut memo = Cosigning::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for log in LogId::BOTH {
            cosign_round(&node, &witnesses, log, &client, &mut memo).await;
        }
    }
}

/// Asks every configured witness to cosign the newest checkpoint of `log`; stores what comes
/// back.
async fn cosign_round(
    node: &Node,
    witnesses: &[RemoteWitness],
    log: LogId,
    client: &reqwest::Client,
    memo: &mut Cosigning,
) {
    let store = node.log_store(log);
    let Ok(Ok(Some((size, note)))) =
        tokio::task::spawn_blocking(move || store.checkpoint(None)).await
    else {
        return;
    };
    for w in witnesses {
        if let Err(e) = ask(node, log, client, memo, w, size, &note).await {
            tracing::warn!(%log, witness = %w.key.name, error = %e, "witness did not cosign");
        }
    }
}

async fn ask(
    node: &Node,
    log: LogId,
    client: &reqwest::Client,
    memo: &mut Cosigning,
    w: &RemoteWitness,
    size: u64,
    note_text: &str,
) -> Result<(), String> {
    let note = Note::parse(note_text.as_bytes()).map_err(|e| e.to_string())?;
    if w.key.verify(&note).is_ok() {
        return Ok(()); // already cosigned
    }
    let memo_key = (log, w.key.name.clone());
    let mut old = memo.last.get(&memo_key).copied().unwrap_or(0);
    for _attempt in 0..2 {
        if old > size {
            return Err(format!(
                "the witness has cosigned size {old}, beyond this log's {size}"
            ));
        }
        let (store, ledger) = (node.log_store(log), Arc::clone(&node.ledger));
        let proof = tokio::task::spawn_blocking(move || {
            ledger
                .log(log)
                .over_tree(store.as_ref(), |s| consistency_proof(s, old, size))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.message)?;
        let body = AddCheckpoint::render(old, &proof, &note);
        let resp = client
            .post(format!("{}/add-checkpoint", w.url))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        match status.as_u16() {
            200 => {
                store_cosignatures(node, log, w, size, note.clone(), &text).await?;
                memo.last.insert(memo_key, size);
                return Ok(());
            }
            409 => {
                old = text
                    .trim()
                    .parse()
                    .map_err(|_| "409 without a tree size".to_owned())?;
            }
            s => {
                let first = text
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                return Err(format!("HTTP {s}: {first}"));
            }
        }
    }
    Err("the witness keeps answering 409".into())
}

async fn store_cosignatures(
    node: &Node,
    log: LogId,
    w: &RemoteWitness,
    size: u64,
    note: Note,
    body: &str,
) -> Result<(), String> {
    let mut cosigned = note;
    for line in body.lines().filter(|l| !l.is_empty()) {
        cosigned
            .signatures
            .push(parse_signature_line(line).map_err(|e| e.to_string())?);
    }
    let verified = w
        .key
        .verify(&cosigned)
        .map_err(|e| format!("cosignature: {e}"))?;
    // Keep only the lines from this witness that verified, added to the stored note (which may
    // carry other witnesses' cosignatures by now).
    let id = w.key.key_id();
    let store = node.log_store(log);
    let lines: Vec<_> = cosigned
        .signatures
        .into_iter()
        .filter(|s| s.name == w.key.name && s.key_id == id)
        .collect();
    let written = tokio::task::spawn_blocking(move || {
        write_log_with(store.as_ref(), move |tx| {
            let current = tx
                .checkpoint(Some(size))?
                .ok_or_else(|| StoreError::Backend("checkpoint vanished".into()))?;
            let mut note =
                Note::parse(current.1.as_bytes()).map_err(|e| StoreError::Backend(Box::new(e)))?;
            note.signatures.extend(lines);
            tx.put_checkpoint(size, &note.render())?;
            tx.set_meta(NEWEST_COSIGNED_META, &size.to_string())
        })
    })
    .await
    .map_err(|e| e.to_string())?;
    written.map_err(|e| e.to_string())?;
    tracing::debug!(%log, witness = %w.key.name, size, time = ?verified.timestamp, "checkpoint cosigned");
    Ok(())
}

/// The client logs use to reach witnesses.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// Meta key, in each log's own database: size of the newest checkpoint of that log a witness
/// cosigned.
pub const NEWEST_COSIGNED_META: &str = "ledger_newest_cosigned";
/// Meta key, in the records database: the witness cosigner keys `serve --witness` was started
/// with, one vkey per line.
pub const WITNESS_KEYS_META: &str = "ledger_witness_keys";

/// The size of the newest checkpoint a witness cosigned, if any was recorded, in the log whose
/// database `store` is.
///
/// # Errors
/// Store failures.
pub fn newest_cosigned(store: &dyn LogRead) -> Result<Option<u64>, StoreError> {
    Ok(store
        .meta(NEWEST_COSIGNED_META)?
        .and_then(|s| s.parse().ok()))
}

/// Checks `note` carries a valid cosignature from at least one of `witnesses`; returns which.
pub fn cosigned_by(note: &Note, witnesses: &[VerifierKey]) -> Vec<String> {
    witnesses
        .iter()
        .filter(|k| k.verify(note).is_ok())
        .map(|k| k.name.clone())
        .collect()
}
