//! The access log's patient index (docs/formats/access-patient-index.md): which access-log
//! leaves name which patient, by a keyed tag, so that a patient's accounting of disclosures
//! opens only the records about them instead of every record in the log.
//!
//! The request path writes no rows: each sealed detail carries its patients' tags in its
//! header ([`crate::ledger::Ledger::append_audit`]), and [`catch_up`] (a background task while
//! the node serves, and `medvault ledger reindex-access`) indexes a whole run of
//! [`ACCESS_RUN_LEAVES`] leaves at a time once the log holds it, so a run's rows are one
//! sequential write instead of a random page per request. The index is complete in
//! `[from, to)` ([`indexed`]): a log written before the index existed is indexed from the leaf
//! its migration noted ([`ACCESS_INDEXED_FROM`]) and [`reindex`] works down from there; leaves
//! from [`ACCESS_INDEXED_TO`] up wait for their run. Readers go through [`walk_naming`], which
//! uses the index where it is complete and opens every detail outside it, and still checks
//! every record it returns: an index row never decides alone.

use medvault_store::{
    ACCESS_INDEXED_FROM, ACCESS_INDEXED_TO, ACCESS_RUN_LEAVES, LogRead, LogStore, LogTx, StoreError,
};
use serde_json::Value;

use crate::error::Error;
use crate::ledger::Ledger;

/// Index rows read per lookup, and details opened per re-indexing step.
const BATCH: u64 = 1024;

/// The leaves `[from, to)` whose index rows are complete. Missing or unreadable marks count as
/// nothing indexed (readers then open every detail: slower, never wrong).
///
/// # Errors
/// Store failures.
pub fn indexed(access: &dyn LogRead) -> Result<(u64, u64), Error> {
    Ok(marks(access)?)
}

/// [`indexed`], as the store answers it. A missing end mark counts as nothing indexed above
/// `from`.
fn marks(store: &dyn LogRead) -> Result<(u64, u64), StoreError> {
    let size = store.ledger_size()?;
    let read = |key| -> Result<Option<u64>, StoreError> {
        Ok(store.meta(key)?.and_then(|v| v.parse::<u64>().ok()))
    };
    let from = read(ACCESS_INDEXED_FROM)?.map_or(size, |from| from.min(size));
    let to = read(ACCESS_INDEXED_TO)?.map_or(from, |to| to.clamp(from, size));
    Ok((from, to))
}

/// How a report says which leaves of a log of `size` leaves (`archived` of them with their
/// details archived) the index covers, `[from, to)` ([`indexed`]): empty when it covers all.
pub fn coverage((from, to): (u64, u64), archived: u64, size: u64) -> String {
    let mut s = String::new();
    if from > archived {
        s.push_str(&format!(
            " from leaf {from} (older entries are not indexed yet: `medvault ledger reindex-access` indexes them)"
        ));
    }
    if to < size {
        s.push_str(&format!(
            "{} below leaf {to} (the {} newest entries, in a run of {ACCESS_RUN_LEAVES} not yet whole, are read in full until it is)",
            if from > archived { " and" } else { "" },
            size - to
        ));
    }
    s
}

/// Where a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    /// Every leaf at or above this (and below the walk's start) was visited or passed over:
    /// the next page starts below it. Equal to the floor when the walk reached it.
    pub below: u64,
    /// Details opened (index hits and, outside the index, every leaf scanned).
    pub opened: u64,
}

/// Visits the access-log records that name `patient` (a bare id) in leaves `[floor, below)`,
/// newest first: found through the index where it is complete, by opening every detail
/// outside that (the newest leaves, whose run is not indexed yet, and those below the index).
/// Each record is checked with [`crate::audit_view::names_patient`] before `visit` sees it.
/// `visit(leaf, record)` returns `false` to stop there. At most `budget` details are opened;
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
    let (from, to) = indexed(access)?;
    let mut walk = Walk {
        access,
        ledger,
        patient,
        budget,
        opened: 0,
        visit,
    };
    // The newest leaves, not indexed yet; then the index; then every leaf below it.
    let mut stopped = walk.scan((to.max(floor), below))?;
    if stopped.is_none() {
        stopped = walk.indexed((from.max(floor), to.min(below)))?;
    }
    if stopped.is_none() {
        stopped = walk.scan((floor, from.min(below)))?;
    }
    Ok(Walked {
        below: stopped.unwrap_or(floor),
        opened: walk.opened,
    })
}

/// One [`walk_naming`]: what it looks for and how much it opened.
struct Walk<'a> {
    access: &'a dyn LogRead,
    ledger: &'a Ledger,
    patient: &'a str,
    budget: u64,
    opened: u64,
    visit: &'a mut dyn FnMut(u64, &Value) -> Result<bool, Error>,
}

impl Walk<'_> {
    /// Opens `leaf`'s detail and visits it if it names the patient. `Some(where)` when the walk
    /// stops (out of budget: above the leaf; `visit` said so: at it).
    fn open(&mut self, leaf: u64, detail: Option<medvault_store::AuditDetail>) -> Stop {
        if self.opened == self.budget {
            return Ok(Some(leaf + 1));
        }
        self.opened += 1;
        let Some(detail) = detail else {
            return Ok(None); // archived
        };
        let Ok(record) = self.ledger.open_audit(&detail) else {
            return Ok(None); // `ledger verify` names it
        };
        if crate::audit_view::names_patient(&record, self.patient) && !(self.visit)(leaf, &record)?
        {
            return Ok(Some(leaf));
        }
        Ok(None)
    }

    /// Every detail in `[lo, hi)`, newest first.
    fn scan(&mut self, (lo, hi): (u64, u64)) -> Stop {
        let mut at = hi;
        while at > lo {
            let start = at.saturating_sub(BATCH).max(lo);
            let mut details = self.access.audit_details(start, at - start)?;
            details.reverse();
            for (leaf, detail) in details {
                if let Some(stop) = self.open(leaf, Some(detail))? {
                    return Ok(Some(stop));
                }
            }
            at = start;
        }
        Ok(None)
    }

    /// The leaves the index lists under the patient in `[lo, hi)`, newest first.
    fn indexed(&mut self, (lo, hi): (u64, u64)) -> Stop {
        let tag = self.ledger.patient_tag(self.patient);
        let mut at = hi;
        while at > lo {
            // Rows are as the database holds them: only leaves in [lo, at) count, each once
            // (a row an editor made with another leaf is passed over; `ledger verify` names it).
            let leaves = self.access.access_leaves(&tag, (lo, at), BATCH)?;
            let mut below = at;
            for leaf in leaves.iter().copied() {
                if leaf < lo || leaf >= below {
                    continue;
                }
                below = leaf;
                let detail = self.access.audit_detail(leaf)?;
                if let Some(stop) = self.open(leaf, detail)? {
                    return Ok(Some(stop));
                }
            }
            // A short batch leaves none above `lo`; the walk only ever moves down.
            at = match leaves.last() {
                Some(&oldest) if leaves.len() as u64 == BATCH && oldest > lo && oldest < at => {
                    oldest
                }
                _ => lo,
            };
        }
        Ok(None)
    }
}

/// Where a walk stopped, if it did.
type Stop = Result<Option<u64>, Error>;

/// What [`catch_up`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaughtUp {
    /// Leaves whose details were opened and indexed.
    pub leaves: u64,
    /// Index rows written.
    pub rows: u64,
    /// Where the index's complete part ends now.
    pub to: u64,
}

/// Indexes every whole run of [`ACCESS_RUN_LEAVES`] leaves the log holds above the index's
/// end: its details' tags, read from their headers, written in one durable write per run that
/// also moves the end mark, so readers use each run as soon as it lands. The newest leaves, in
/// a run not yet whole, wait (readers open them).
///
/// # Errors
/// Store failures (named); another indexer moved the mark meanwhile.
pub fn catch_up(access: &dyn LogStore, ledger: &Ledger) -> Result<CaughtUp, ReindexError> {
    let mut done = CaughtUp::default();
    loop {
        let (from, to) = marks(access)?;
        done.to = to;
        let end = (to / ACCESS_RUN_LEAVES + 1) * ACCESS_RUN_LEAVES;
        if end > access.ledger_size()? {
            return Ok(done);
        }
        let rows = tags_of(access, ledger, (to, end))?;
        let n = rows.len() as u64;
        medvault_store::write_log_with(access, move |tx: &mut dyn LogTx| {
            if marks(&*tx)? != (from, to) {
                return Err(StoreError::Conflict);
            }
            tx.add_access_tags(&rows)?;
            tx.set_meta(ACCESS_INDEXED_TO, &end.to_string())
        })
        .map_err(moved)?;
        done.leaves += end - to;
        done.rows += n;
        done.to = end;
    }
}

/// The index rows of leaves `[start, end)`, from their details (a detail that does not open,
/// or was archived, gives none; `ledger verify` names the first).
fn tags_of(
    access: &dyn LogRead,
    ledger: &Ledger,
    (start, end): (u64, u64),
) -> Result<Vec<(u64, medvault_crypto::BlindValue)>, StoreError> {
    let mut rows = Vec::new();
    let mut at = start;
    while at < end {
        let n = (end - at).min(BATCH);
        for (leaf, detail) in access.audit_details(at, n)? {
            if let Ok(tags) = ledger.audit_patient_tags(&detail) {
                rows.extend(tags.into_iter().map(|t| (leaf, t)));
            }
        }
        at += n;
    }
    Ok(rows)
}

/// A conflicting write is another indexer's.
fn moved(e: StoreError) -> ReindexError {
    match e {
        StoreError::Conflict => ReindexError::Moved,
        e => ReindexError::Store(e),
    }
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
    let mut from = marks(access)?.0;
    let total = from.saturating_sub(archived);
    let mut done = Reindexed {
        from,
        ..Reindexed::default()
    };
    while from > archived {
        let start = from.saturating_sub(BATCH).max(archived);
        let rows = tags_of(access, ledger, (start, from))?;
        let n = rows.len() as u64;
        let expected = from;
        medvault_store::write_log_with(access, move |tx: &mut dyn LogTx| {
            if marks(&*tx)?.0 != expected {
                return Err(StoreError::Conflict);
            }
            tx.add_access_tags(&rows)?;
            tx.set_meta(ACCESS_INDEXED_FROM, &start.to_string())
        })
        .map_err(moved)?;
        done.leaves += from - start;
        done.rows += n;
        from = start;
        done.from = from;
        progress(done.leaves, total);
    }
    Ok(done)
}
