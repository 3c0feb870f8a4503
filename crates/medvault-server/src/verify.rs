//! Offline verification of a node's ledger against its database: `medvault ledger verify`.
//!
//! Recomputes the tree from the stored leaves (checking every stored node on the way), checks
//! the newest signed checkpoint against the recomputed root, checks every stored resource version
//! against the commitment in its leaf, and every audit leaf against the sealed detail beside it.
//! Stops at the first divergence and names it (which row, which leaf).

use medvault_ledger::{
    Checkpoint, Entry, EntryKind, Frontier, Hash, Note, VerifierKey, audit_commitment, leaf_hash,
};
use medvault_store::{StoreError, StoreRead};

use crate::ledger::{Ledger, record_entry};

/// Leaves read per round trip.
const CHUNK: u64 = 16_384;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Leaves recomputed.
    pub leaves: u64,
    /// Resource versions checked against their commitments.
    pub versions: u64,
    /// Audit leaves checked against their sealed details.
    pub audit_records: u64,
    /// Size of the newest signed checkpoint (which verified).
    pub checkpoint_size: u64,
    /// Size of the newest witness-cosigned checkpoint, if any (which verified).
    pub cosigned_size: Option<u64>,
    /// Witnesses whose cosignatures on it verified.
    pub cosigned_by: Vec<String>,
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The ledger and the database disagree, or a signature fails.
    #[error("{0}")]
    Divergence(String),
    /// The database could not be read.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

fn diverge(msg: String) -> VerifyError {
    VerifyError::Divergence(msg)
}

/// Verifies everything; `progress` is told how many leaves are done out of how many.
///
/// # Errors
/// [`VerifyError::Divergence`] naming the first divergence.
pub fn verify(
    store: &(dyn StoreRead + Sync),
    ledger: &Ledger,
    witnesses: &[VerifierKey],
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    let size = store.ledger_size()?;
    let checkpoint = store.checkpoint(None)?;
    let (cp_size, cp_root) = match &checkpoint {
        Some((n, note)) => (*n, check_checkpoint(ledger, *n, note)?),
        None if size == 0 => (0, medvault_ledger::empty_root()),
        None => {
            return Err(diverge(
                "the ledger has leaves but no signed checkpoint".into(),
            ));
        }
    };
    // The newest checkpoint a witness cosigned: even the holder of the node's signing key
    // cannot make the leaves hash to another root at that size without a witness's key.
    let cosigned = match crate::witness::newest_cosigned(store)? {
        Some(n) => Some(check_cosigned(store, ledger, witnesses, n)?),
        None => None,
    };
    let mut roots_to_match = vec![(cp_size, cp_root)];
    if let Some((n, root, _)) = &cosigned {
        roots_to_match.push((*n, *root));
    }
    for (n, _) in &roots_to_match {
        if *n > size {
            return Err(diverge(format!(
                "a signed checkpoint covers {n} leaves but only {size} are stored: leaves were removed"
            )));
        }
    }
    let mut frontier = Frontier::new();
    let mut kinds: Vec<EntryKind> = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut commitments: Vec<Hash> = Vec::with_capacity(kinds.capacity());
    let mut audit_records = 0;
    // Reading a chunk (leaves, audit details, the stored nodes it completes) overlaps with
    // checking the previous one.
    std::thread::scope(|scope| -> Result<(), VerifyError> {
        let read = |start: u64| {
            let want = CHUNK.min(size - start);
            scope.spawn(move || read_chunk(store, start, want))
        };
        let mut pending = (size > 0).then(|| read(0));
        while let Some(handle) = pending.take() {
            let chunk = handle
                .join()
                .map_err(|_| diverge("a verification thread failed".into()))??;
            let (start, want) = (chunk.start, chunk.want);
            if start + want < size {
                pending = Some(read(start + want));
            }
            let mut details = chunk.details.into_iter().peekable();
            let mut emitted: Vec<(u8, u64, Hash)> = Vec::with_capacity(2 * chunk.entries.len());
            // Structure first (sequential, cheap): contiguity, format, a detail beside every audit
            // leaf and none beside a record leaf.
            let mut audits = Vec::new();
            for (i, (idx, bytes)) in chunk.entries.iter().enumerate() {
                let expect = start + i as u64;
                if *idx != expect {
                    return Err(diverge(format!("ledger leaf {expect} is missing")));
                }
                let entry = Entry::decode(bytes)
                    .map_err(|e| diverge(format!("ledger leaf {expect} is malformed: {e}")))?;
                if let Some((l, _)) = details.next_if(|(l, _)| *l < expect) {
                    return Err(diverge(format!("audit detail row {l} has no audit leaf")));
                }
                if entry.kind == EntryKind::Audit {
                    let Some((_, d)) = details.next_if(|(l, _)| *l == expect) else {
                        return Err(diverge(format!("audit leaf {expect} has no stored detail")));
                    };
                    audits.push((expect, entry.commitment, d));
                } else if details.peek().is_some_and(|(l, _)| *l == expect) {
                    return Err(diverge(format!(
                        "record leaf {expect} has an audit detail row beside it"
                    )));
                }
                kinds.push(entry.kind);
                commitments.push(entry.commitment);
            }
            // Then the hashing and decryption, on every core: leaf hashes on this thread, audit
            // details (commitment and AEAD tag) split across the others.
            audit_records += audits.len() as u64;
            let (leaf_hashes, bad_audit) = std::thread::scope(|scope| {
                let workers = std::thread::available_parallelism()
                    .map_or(2, usize::from)
                    .max(2)
                    - 1;
                let per = audits.len().div_ceil(workers).max(1);
                let handles: Vec<_> = audits
                    .chunks(per)
                    .map(|part| scope.spawn(move || first_bad_audit(ledger, part)))
                    .collect();
                let hashes: Vec<Hash> = chunk.entries.iter().map(|(_, b)| leaf_hash(b)).collect();
                let bad = handles
                    .into_iter()
                    .filter_map(|h| h.join().unwrap_or(Some((0, "verification thread failed"))))
                    .min_by_key(|(leaf, _)| *leaf);
                (hashes, bad)
            });
            if let Some((leaf, what)) = bad_audit {
                return Err(diverge(format!("audit leaf {leaf} {what}")));
            }
            for hash in leaf_hashes {
                frontier.append(hash, |level, index, hash| {
                    emitted.push((level, index, *hash));
                });
                for (n, root) in &roots_to_match {
                    if frontier.size() == *n && frontier.root() != *root {
                        return Err(diverge(format!(
                            "the leaves do not hash to the root of the signed checkpoint of size {n}"
                        )));
                    }
                }
            }
            if let Some((l, _)) = details.next() {
                return Err(diverge(format!("audit detail row {l} has no audit leaf")));
            }
            if (chunk.entries.len() as u64) < want {
                return Err(diverge(format!(
                    "ledger leaf {} is missing",
                    start + chunk.entries.len() as u64
                )));
            }
            compare_nodes(&chunk.nodes, &emitted)?;
            progress(start + want, size);
        }
        Ok(())
    })?;
    let mut used = vec![false; kinds.len()];
    let versions = check_versions(store, ledger, &kinds, &commitments, &mut used)?;
    if let Some(i) = kinds
        .iter()
        .zip(&used)
        .position(|(k, u)| *k == EntryKind::Record && !u)
    {
        return Err(diverge(format!(
            "ledger leaf {i} commits to a resource version that is no longer stored"
        )));
    }
    let (cosigned_size, cosigned_by) = match cosigned {
        Some((n, _, by)) => (Some(n), by),
        None => (None, Vec::new()),
    };
    Ok(Report {
        leaves: size,
        versions,
        audit_records,
        checkpoint_size: cp_size,
        cosigned_size,
        cosigned_by,
    })
}

fn check_cosigned(
    store: &dyn StoreRead,
    ledger: &Ledger,
    witnesses: &[VerifierKey],
    size: u64,
) -> Result<(u64, Hash, Vec<String>), VerifyError> {
    let (_, note) = store.checkpoint(Some(size))?.ok_or_else(|| {
        diverge(format!(
            "the witness-cosigned checkpoint of size {size} is no longer stored"
        ))
    })?;
    let root = check_checkpoint(ledger, size, &note)?;
    let parsed = Note::parse(note.as_bytes()).map_err(|e| {
        diverge(format!(
            "the cosigned checkpoint of size {size} is malformed: {e}"
        ))
    })?;
    let by = crate::witness::cosigned_by(&parsed, witnesses);
    if by.is_empty() {
        return Err(diverge(format!(
            "the checkpoint of size {size} is recorded as witness-cosigned but carries no valid cosignature from a known witness"
        )));
    }
    Ok((size, root, by))
}

/// The first audit leaf in `part` whose stored detail does not match its commitment or does not
/// open under the audit key.
fn first_bad_audit(
    ledger: &Ledger,
    part: &[(u64, Hash, medvault_store::AuditDetail)],
) -> Option<(u64, &'static str)> {
    part.iter().find_map(|(leaf, commitment, d)| {
        if audit_commitment(&d.salt, d.sealed.as_bytes()) != *commitment {
            Some((*leaf, "does not match its stored detail"))
        } else if !ledger.audit_opens(d) {
            Some((*leaf, "has a stored detail that does not open"))
        } else {
            None
        }
    })
}

fn check_checkpoint(ledger: &Ledger, size: u64, note: &str) -> Result<Hash, VerifyError> {
    let bad = |what: String| diverge(format!("the checkpoint of size {size} {what}"));
    let note = Note::parse(note.as_bytes()).map_err(|e| bad(format!("is malformed: {e}")))?;
    ledger
        .verifier()
        .verify(&note)
        .map_err(|e| bad(format!("is not validly signed by this node: {e}")))?;
    let cp = Checkpoint::parse(&note.text).map_err(|e| bad(format!("is malformed: {e}")))?;
    if cp.size != size || cp.origin != ledger.origin() {
        return Err(bad("names another size or origin than its row".into()));
    }
    Ok(cp.root)
}

/// What one verification step reads: leaves `[start, start + want)`, their audit details, and
/// for every level the stored nodes those leaves complete (node `i` of level `l` is completed by
/// leaf `(i + 1)·2^l − 1`, so they are indexes `[start >> l, (start + want) >> l)`).
struct Chunk {
    start: u64,
    want: u64,
    entries: Vec<(u64, Vec<u8>)>,
    details: Vec<(u64, medvault_store::AuditDetail)>,
    nodes: Vec<(u8, u64, Vec<Hash>)>,
}

fn read_chunk(store: &(dyn StoreRead + Sync), start: u64, want: u64) -> Result<Chunk, VerifyError> {
    let entries = store.ledger_entries(start, want)?;
    let details = store.audit_details(start, want)?;
    let mut nodes = Vec::new();
    for level in 0..64u8 {
        let (lo, hi) = (start >> level, (start + want) >> level);
        if hi == 0 {
            break;
        }
        if hi > lo {
            nodes.push((level, lo, store.ledger_nodes(level, lo, hi - lo)?));
        }
    }
    Ok(Chunk {
        start,
        want,
        entries,
        details,
        nodes,
    })
}

fn compare_nodes(
    stored: &[(u8, u64, Vec<Hash>)],
    emitted: &[(u8, u64, Hash)],
) -> Result<(), VerifyError> {
    for (level, index, hash) in emitted {
        let found = stored
            .iter()
            .find(|(l, _, _)| l == level)
            .and_then(|(_, lo, hashes)| hashes.get(usize::try_from(index - lo).ok()?));
        if found != Some(hash) {
            return Err(diverge(format!(
                "stored tree node at level {level}, index {index} does not match the leaves"
            )));
        }
    }
    Ok(())
}

fn check_versions(
    store: &dyn StoreRead,
    ledger: &Ledger,
    kinds: &[EntryKind],
    commitments: &[Hash],
    used: &mut [bool],
) -> Result<u64, VerifyError> {
    let mut n = 0;
    let mut after: Option<(String, String, u64)> = None;
    loop {
        let page = store.versions_after(
            after.as_ref().map(|(t, i, v)| (t.as_str(), i.as_str(), *v)),
            1000,
        )?;
        let Some(last) = page.last() else {
            return Ok(n);
        };
        after = Some((last.resource_type.clone(), last.id.clone(), last.version));
        for v in &page {
            let name = format!("{}/{}/_history/{}", v.resource_type, v.id, v.version);
            let (Some(leaf), Some(salt)) = (v.leaf, v.salt) else {
                return Err(diverge(format!("version {name} has no ledger leaf")));
            };
            let i = usize::try_from(leaf).unwrap_or(usize::MAX);
            if kinds.get(i) != Some(&EntryKind::Record) {
                return Err(diverge(format!(
                    "version {name} points at ledger leaf {leaf}, which is not a record leaf"
                )));
            }
            if used[i] {
                return Err(diverge(format!(
                    "ledger leaf {leaf} is claimed by more than one version ({name})"
                )));
            }
            used[i] = true;
            if record_entry(ledger.tenant(), v, &salt).commitment != commitments[i] {
                return Err(diverge(format!(
                    "version {name} does not match its commitment in ledger leaf {leaf}"
                )));
            }
            n += 1;
        }
    }
}
