//! The access log's patient index (docs/formats/access-patient-index.md): which access-log
//! leaves name which patient, by a keyed tag, so that a patient's accounting of disclosures
//! opens only the records about them instead of every record in the log.
//!
//! Rows are written with their leaf ([`crate::ledger::Ledger::append_audit`]); a log written
//! before the index existed is indexed from the leaf its migration noted
//! ([`medvault_store::ACCESS_INDEXED_FROM`]) and [`reindex`] works down from there. Readers go
//! through [`walk_naming`], which uses the index where it is complete and opens every detail
//! below that, and still checks every record it returns: an index row never decides alone.

use medvault_store::{ACCESS_INDEXED_FROM, LogRead, LogStore, LogTx, StoreError};
use serde_json::Value;

use crate::error::Error;
use crate::ledger::Ledger;

/// Index rows read per lookup, and details opened per re-indexing step.
const BATCH: u64 = 1024;

/// The first leaf at and above which every leaf has its index rows. A missing or unreadable
/// mark counts as nothing indexed (readers then open every detail: slower, never wrong).
///
/// # Errors
/// Store failures.
pub fn indexed_from(access: &dyn LogRead) -> Result<u64, Error> {
    Ok(mark(access)?)
}

/// [`indexed_from`], as the store answers it.
fn mark(store: &dyn LogRead) -> Result<u64, StoreError> {
    let size = store.ledger_size()?;
    Ok(store
        .meta(ACCESS_INDEXED_FROM)?
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(size, |from| from.min(size)))
}

/// Where a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Every leaf at or above this (and below the walk's start) was visited or passed over:
    /// the next page starts below it. Equal to the floor when the walk reached it.
    pub below: u64,
    /// Details opened (index hits and, below the index, every leaf scanned).
    pub opened: u64,
}

/// Visits the access-log records that name `patient` (a bare id) in leaves `[floor, below)`,
/// newest first: found through the index where it is complete, by opening every detail below
/// that. Each record is checked with [`crate::audit_view::names_patient`] before `visit` sees
/// it. `visit(leaf, record)` returns `false` to stop there. At most `budget` details are opened;
/// the walk then stops and says where. Leaves whose details were archived are passed over.
///
/// # Errors
/// Store failures; `visit`'s own error.
pub fn walk_naming(
    access: &dyn LogRead,
    ledger: &Ledger,
    patient: &str,
    (floor, below): (u64, u64),
    budget: u64,
    visit: &mut dyn FnMut(u64, &Value) -> Result<bool, Error>,
) -> Result<Walked, Error> {
    let below = below.min(access.ledger_size()?);
    let from = indexed_from(access)?.max(floor);
    let mut at = below;
    let mut opened = 0u64;
    let stop = |at, opened| Ok(Walked { below: at, opened });
    // The indexed part: rows newest first, each detail opened and checked.
    let tag = ledger.patient_tag(patient);
    while at > from {
        // Rows are as the database holds them: only leaves in [from, at) count, each once
        // (a row an editor made with another leaf is passed over; `ledger verify` names it).
        let leaves = access.access_leaves(&tag, at, BATCH)?;
        let mut below = at;
        for leaf in leaves.iter().copied() {
            if leaf < from || leaf >= below {
                continue;
            }
            below = leaf;
            if opened == budget {
                return stop(leaf + 1, opened);
            }
            opened += 1;
            let Some(detail) = access.audit_detail(leaf)? else {
                continue; // archived
            };
            let Ok(record) = ledger.open_audit(&detail) else {
                continue; // `ledger verify` names it
            };
            if crate::audit_view::names_patient(&record, patient) && !visit(leaf, &record)? {
                return stop(leaf, opened);
            }
        }
        // A short batch, or one that reached below `from`, leaves none above it; the walk
        // only ever moves down.
        at = match leaves.last() {
            Some(&oldest) if leaves.len() as u64 == BATCH && oldest > from && oldest < at => oldest,
            _ => from,
        };
    }
    // Below the index: every detail.
    while at > floor {
        let start = at.saturating_sub(BATCH).max(floor);
        let mut details = access.audit_details(start, at - start)?;
        details.reverse();
        for (leaf, detail) in details {
            if opened == budget {
                return stop(leaf + 1, opened);
            }
            opened += 1;
            let Ok(record) = ledger.open_audit(&detail) else {
                continue;
            };
            if crate::audit_view::names_patient(&record, patient) && !visit(leaf, &record)? {
                return stop(leaf, opened);
            }
        }
        at = start;
    }
    stop(floor, opened)
}

/// What [`reindex`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reindexed {
    /// Leaves whose details were opened and indexed.
    pub leaves: u64,
    /// Index rows written.
    pub rows: u64,
    /// Where the index is complete from now (the archive mark when it reached it: archived
    /// details cannot be indexed, and nothing reads them from the log).
    pub from: u64,
}

/// Why re-indexing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    /// The database refused a read or a write (the cause named: a CLI run has no server log).
    #[error("the access log could not be read or written: {}", crate::error::with_causes(.0))]
    Store(#[from] StoreError),
    /// Another re-indexing moved the mark meanwhile.
    #[error("another re-indexing of the access log moved its mark: run it again")]
    Moved,
    /// The archive's marks do not read.
    #[error("{0}")]
    Archive(String),
}

/// Indexes the leaves written before the patient index existed, newest first, a batch per
/// durable write that also lowers the mark, so readers use each batch as soon as it lands and
/// an interrupted run resumes where it stopped. `progress` gets (leaves done, leaves to do).
///
/// # Errors
/// Store failures (named); another re-indexing moved the mark meanwhile (run it again).
pub fn reindex(
    access: &dyn LogStore,
    ledger: &Ledger,
    mut progress: impl FnMut(u64, u64),
) -> Result<Reindexed, ReindexError> {
    let (archived, _) =
        crate::archive::archived(access).map_err(|e| ReindexError::Archive(e.to_string()))?;
    let mut from = mark(access)?;
    let total = from.saturating_sub(archived);
    let mut done = Reindexed {
        from,
        ..Reindexed::default()
    };
    while from > archived {
        let start = from.saturating_sub(BATCH).max(archived);
        let mut rows = Vec::new();
        for (leaf, detail) in access.audit_details(start, from - start)? {
            // A detail that does not open cannot be indexed; `ledger verify` names it.
            if let Ok(tags) = ledger.audit_patient_tags(&detail) {
                rows.extend(tags.into_iter().map(|t| (leaf, t)));
            }
        }
        let n = rows.len() as u64;
        let expected = from;
        medvault_store::write_log_with(access, move |tx: &mut dyn LogTx| {
            if mark(&*tx)? != expected {
                return Err(StoreError::Conflict);
            }
            tx.add_access_tags(&rows)?;
            tx.set_meta(ACCESS_INDEXED_FROM, &start.to_string())
        })
        .map_err(|e| match e {
            StoreError::Conflict => ReindexError::Moved,
            e => ReindexError::Store(e),
        })?;
        done.leaves += from - start;
        done.rows += n;
        from = start;
        done.from = from;
        progress(done.leaves, total);
    }
    Ok(done)
}
