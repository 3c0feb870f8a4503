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

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use medvault_ledger::{
    AddCheckpoint, KeyKind, LedgerError, Note, VerifierKey, consistency_proof,
    parse_signature_line, verify_consistency,
};
use medvault_store::{StoreError, StoreRead, write_with};

use crate::AppState;
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

fn plain(status: StatusCode, body: String) -> Response {
    crate::ledger::with_headers((status, body), "text/plain; charset=utf-8", None)
}

enum Verdict {
    Cosign,
    /// 409 with the size this witness last cosigned.
    Conflict(u64),
    /// 422: the consistency proof does not verify.
    Inconsistent(&'static str),
}

/// `POST /witness/add-checkpoint`.
pub(crate) async fn add_checkpoint(State(state): State<AppState>, body: Bytes) -> Response {
    let req = match AddCheckpoint::parse(&body) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let origin = req.checkpoint.origin.clone();
    let Some(log_key) = state.config.witness_for.iter().find(|k| k.name == origin) else {
        return plain(
            StatusCode::NOT_FOUND,
            "this witness does not know that log origin\n".into(),
        );
    };
    if log_key.verify(&req.note).is_err() {
        return plain(
            StatusCode::FORBIDDEN,
            "the checkpoint carries no valid signature from the log's key\n".into(),
        );
    }
    // Signed by the log: not an anonymous request, whatever the verdict.
    let mut resp = cosign_signed(&state, req).await;
    resp.extensions_mut().insert(crate::anonymous::Vouched);
    resp
}

/// The rest of `add-checkpoint`, for a checkpoint the log's key signed.
async fn cosign_signed(state: &AppState, req: AddCheckpoint) -> Response {
    let origin = req.checkpoint.origin.clone();
    let store = state.node.access.clone();
    let AddCheckpoint {
        old_size,
        proof,
        note,
        checkpoint,
    } = req;
    let text = note.text.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        write_with(store.as_ref(), move |tx| {
            let (size, root) = tx.witnessed(&checkpoint.origin)?.unwrap_or((0, [0; 32]));
            if old_size != size {
                return Ok(Verdict::Conflict(size));
            }
            if old_size == checkpoint.size {
                if size > 0 && root != checkpoint.root {
                    return Ok(Verdict::Conflict(size));
                }
            } else if old_size == 0 {
                if !proof.is_empty() {
                    return Ok(Verdict::Inconsistent("a proof from size 0 must be empty"));
                }
            } else if let Err(LedgerError::ProofInvalid(why)) =
                verify_consistency(old_size, checkpoint.size, &root, &checkpoint.root, &proof)
            {
                return Ok(Verdict::Inconsistent(why));
            }
            tx.set_witnessed(
                &checkpoint.origin,
                checkpoint.size,
                &checkpoint.root,
                &note.render(),
            )?;
            Ok(Verdict::Cosign)
        })
    })
    .await;
    match verdict {
        Ok(Ok(Verdict::Cosign)) => {
            let now = u64::try_from(state.node.clock.now_micros() / 1_000_000).unwrap_or(0);
            plain(StatusCode::OK, state.node.ledger.cosign(&text, now).line())
        }
        Ok(Ok(Verdict::Conflict(size))) => {
            tracing::warn!(origin = %origin, witnessed = size, requested_old = old_size, "witness refused a checkpoint: old size or root conflicts (rollback or fork?)");
            crate::ledger::with_headers(
                (StatusCode::CONFLICT, format!("{size}\n")),
                "text/x.tlog.size",
                None,
            )
        }
        Ok(Ok(Verdict::Inconsistent(why))) => {
            tracing::warn!(origin = %origin, why, "witness refused a checkpoint: consistency proof does not verify (fork?)");
            plain(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the consistency proof does not verify: {why}\n"),
            )
        }
        Ok(Err(e)) => crate::ApiError::from(e).into_response(),
        Err(e) => crate::ApiError::internal(&e).into_response(),
    }
}

/// `GET /witness/key`: this node's cosigner verifier key.
pub(crate) async fn get_key(State(state): State<AppState>) -> Response {
    plain(
        StatusCode::OK,
        format!("{}\n", state.node.ledger.cosigner().to_vkey()),
    )
}

/// What the log side remembers between rounds: the size each witness last cosigned, per log.
#[derive(Debug, Default)]
pub(crate) struct Cosigning {
    last: HashMap<(LogId, String), u64>,
}

/// Asks the configured witnesses to cosign the newest checkpoints every `every`, forever.
pub(crate) async fn cosign_task(state: AppState, every: Duration) {
    let client = client();
    let mut memo = Cosigning::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for log in LogId::BOTH {
            cosign_round(&state, log, &client, &mut memo).await;
        }
    }
}

/// Asks every configured witness to cosign the newest checkpoint of `log`; stores what comes
/// back.
pub(crate) async fn cosign_round(
    state: &AppState,
    log: LogId,
    client: &reqwest::Client,
    memo: &mut Cosigning,
) {
    let store = state.node.log_store(log);
    let Ok(Ok(Some((size, note)))) =
        tokio::task::spawn_blocking(move || store.checkpoint(None)).await
    else {
        return;
    };
    for w in &state.config.witnesses {
        if let Err(e) = ask(state, log, client, memo, w, size, &note).await {
            tracing::warn!(%log, witness = %w.key.name, error = %e, "witness did not cosign");
        }
    }
}

async fn ask(
    state: &AppState,
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
        let (store, ledger) = (
            state.node.log_store(log),
            std::sync::Arc::clone(&state.node.ledger),
        );
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
                store_cosignatures(state, log, w, size, note.clone(), &text).await?;
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
    state: &AppState,
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
    let store = state.node.log_store(log);
    let lines: Vec<_> = cosigned
        .signatures
        .into_iter()
        .filter(|s| s.name == w.key.name && s.key_id == id)
        .collect();
    let written = tokio::task::spawn_blocking(move || {
        write_with(store.as_ref(), move |tx| {
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
pub(crate) fn client() -> reqwest::Client {
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
pub fn newest_cosigned(store: &dyn StoreRead) -> Result<Option<u64>, StoreError> {
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
