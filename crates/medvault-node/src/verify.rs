//! Offline verification of a node's two logs against its databases: `medvault ledger verify`.
//!
//! For each log, recomputes the tree from the stored leaves (checking every stored node on the
//! way) and checks the newest signed checkpoint, and the newest witness-cosigned one, against the
//! recomputed roots. The records log's leaves are checked against every stored resource version
//! (each version's commitment, each leaf claimed once); the access log's leaves against their
//! sealed details (commitment and AEAD tag). Every checkpoint checked must pin the other log's
//! tree head (`records <size> <root>` / `access <size> <root>`), and the other log's leaves must
//! reproduce it. Stops at the first divergence and names it (which log, which row, which leaf).

use medvault_core::{ResourceId, ResourceType};
use medvault_crypto::BlindValue;
use medvault_ledger::{
    Checkpoint, Entry, EntryKind, Frontier, Hash, Note, VerifierKey, audit_commitment, leaf_hash,
};
use medvault_store::{LogRead, StoreError, StoreRead};

use crate::ledger::{Ledger, LogId, record_entry};

/// Leaves read per round trip.
const CHUNK: u64 = 16_384;

/// Versions or amendments read per round trip.
const PAGE: u64 = 1000;

/// What a successful verification covered in one log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogReport {
    /// Leaves recomputed.
    pub leaves: u64,
    /// Size of the newest signed checkpoint (which verified).
    pub checkpoint_size: u64,
    /// Size of the newest witness-cosigned checkpoint, if any (which verified).
    pub cosigned_size: Option<u64>,
    /// Witnesses whose cosignatures on it verified.
    pub cosigned_by: Vec<String>,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The records log.
    pub records: LogReport,
    /// The access log.
    pub access: LogReport,
    /// Resource versions checked against their commitments.
    pub versions: u64,
    /// Amended (re-sealed or expunged) versions whose original leaves were checked against
    /// what they committed to before.
    pub amendments: u64,
    /// Audit leaves checked against their sealed details.
    pub audit_records: u64,
    /// Audit leaves whose details were archived (checked only with `--archive`).
    pub archived: u64,
    /// Tree heads pinned by the other log's checkpoints that the leaves reproduced.
    pub pins: u64,
    /// The access log's patient index was checked against every detail in
    /// `[patient_index_from, patient_index_to)` (below, leaves written before the index may
    /// not have their rows yet; above, the newest leaves wait for their run to be indexed).
    pub patient_index_from: u64,
    /// See [`Report::patient_index_from`].
    pub patient_index_to: u64,
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

/// A verified checkpoint of one log: its size and root, the other log's head it pins, and who
/// cosigned it.
struct Head {
    size: u64,
    root: Hash,
    pin: Option<(u64, Hash)>,
    cosigned_by: Vec<String>,
}

/// The newest signed checkpoint of `log` and the newest witness-cosigned one, verified.
fn heads(
    store: &dyn LogRead,
    ledger: &Ledger,
    log: LogId,
    witnesses: &[VerifierKey],
) -> Result<(Head, Option<Head>), VerifyError> {
    let size = store.ledger_size()?;
    let newest = match store.checkpoint(None)? {
        Some((n, note)) => check_checkpoint(ledger, log, n, &note)?,
        // Nothing signed and nothing stored: the empty tree, pinning nothing of the other log.
        None if size == 0 => Head {
            size: 0,
            root: medvault_ledger::empty_root(),
            pin: Some((0, medvault_ledger::empty_root())),
            cosigned_by: vec![],
        },
        None => {
            return Err(diverge(format!(
                "the {log} log has leaves but no signed checkpoint"
            )));
        }
    };
    // The newest checkpoint a witness cosigned: even the holder of the node's signing key
    // cannot make the leaves hash to another root at that size without a witness's key.
    let cosigned = match crate::witness::newest_cosigned(store)? {
        Some(n) => {
            let (_, note) = store.checkpoint(Some(n))?.ok_or_else(|| {
                diverge(format!(
                    "the witness-cosigned {log} checkpoint of size {n} is no longer stored"
                ))
            })?;
            let head = check_checkpoint(ledger, log, n, &note)?;
            let by = head_cosigners(&note, witnesses);
            if by.is_empty() {
                return Err(diverge(format!(
                    "the {log} checkpoint of size {n} is recorded as witness-cosigned but carries no valid cosignature from a known witness"
                )));
            }
            Some(Head {
                cosigned_by: by,
                ..head
            })
        }
        None => None,
    };
    for head in std::iter::once(&newest).chain(&cosigned) {
        if head.size > size {
            return Err(diverge(format!(
                "a signed {log} checkpoint covers {} leaves but only {size} are stored: leaves were removed",
                head.size
            )));
        }
    }
    Ok((newest, cosigned))
}

fn head_cosigners(note: &str, witnesses: &[VerifierKey]) -> Vec<String> {
    Note::parse(note.as_bytes())
        .map(|n| crate::witness::cosigned_by(&n, witnesses))
        .unwrap_or_default()
}

/// Verifies both logs; `progress` is told how many leaves are done out of how many.
///
/// # Errors
/// [`VerifyError::Divergence`] naming the first divergence.
pub fn verify(
    records: &(dyn StoreRead + Sync),
    access: &(dyn LogRead + Sync),
    ledger: &Ledger,
    witnesses: &[VerifierKey],
    mut progress: impl FnMut(u64, u64),
) -> Result<Report, VerifyError> {
    let (rec_newest, rec_cosigned) = heads(records, ledger, LogId::Records, witnesses)?;
    let (acc_newest, acc_cosigned) = heads(access, ledger, LogId::Access, witnesses)?;
    let rec_size = records.ledger_size()?;
    let acc_size = access.ledger_size()?;
    let total = rec_size + acc_size;
    // Each log's leaves must pass through its own checkpoints' roots and through the heads the
    // other log's checkpoints pin.
    let mut rec_roots = vec![(rec_newest.size, rec_newest.root)];
    rec_roots.extend(rec_cosigned.iter().map(|h| (h.size, h.root)));
    let mut acc_roots = vec![(acc_newest.size, acc_newest.root)];
    acc_roots.extend(acc_cosigned.iter().map(|h| (h.size, h.root)));
    let mut pins = 0;
    for (log, newest, cosigned, other_roots, other_size) in [
        (
            LogId::Records,
            &rec_newest,
            &rec_cosigned,
            &mut acc_roots,
            acc_size,
        ),
        (
            LogId::Access,
            &acc_newest,
            &acc_cosigned,
            &mut rec_roots,
            rec_size,
        ),
    ] {
        let other = log.other();
        for head in std::iter::once(newest).chain(cosigned) {
            let Some((n, root)) = head.pin else {
                return Err(diverge(format!(
                    "the {log} checkpoint of size {} pins no {other} tree head",
                    head.size
                )));
            };
            if n > other_size {
                return Err(diverge(format!(
                    "a {log} checkpoint pins {n} {other} log leaves but only {other_size} are stored: the {other} log was cut or rolled back"
                )));
            }
            other_roots.push((n, root));
            pins += 1;
        }
    }

    let mut commitments = Vec::with_capacity(usize::try_from(rec_size).unwrap_or(0));
    walk(
        records,
        ledger,
        LogId::Records,
        &rec_roots,
        (0, (0, 0)),
        |start, leaves| {
            commitments.extend(leaves.iter().map(|(_, c)| *c));
            progress(start + leaves.len() as u64, total);
        },
    )?;
    let mut audit_records = 0;
    // Details below the archive mark may be missing only if the newest archive's own record
    // (its detail checked by the walk below) names the mark and a contiguous chain of runs.
    let mark = crate::archive::backed_mark(access, ledger).map_err(|e| match e {
        crate::archive::ArchiveError::Store(e) => VerifyError::Store(e),
        e => diverge(e.to_string()),
    })?;
    let archived_before = mark.before;
    let indexed = crate::access_index::indexed(access).map_err(|e| diverge(e.to_string()))?;
    let (astray, first) = access.access_tags_astray(acc_size)?;
    if astray > 0 {
        return Err(diverge(format!(
            "the access log's patient index holds {astray} row(s) that name no leaf of the log (or are not a leaf and a 16-byte tag), the first with leaf {}: rows only an editor of the database makes",
            first.as_deref().unwrap_or("?")
        )));
    }

    let archived = walk(
        access,
        ledger,
        LogId::Access,
        &acc_roots,
        (archived_before, indexed),
        |start, leaves| {
            audit_records += leaves.len() as u64;
            progress(rec_size + start + leaves.len() as u64, total);
        },
    )?;
    audit_records -= archived;
    let mut used = vec![false; commitments.len()];
    let versions = check_versions(records, ledger, &commitments, &mut used)?;
    let amendments = check_amendments(records, ledger, &commitments, &mut used)?;
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(diverge(format!(
            "records log leaf {i} commits to a resource version that is no longer stored"
        )));
    }
    let report = |newest: Head, cosigned: Option<Head>, leaves| LogReport {
        leaves,
        checkpoint_size: newest.size,
        cosigned_size: cosigned.as_ref().map(|h| h.size),
        cosigned_by: cosigned.map(|h| h.cosigned_by).unwrap_or_default(),
    };
    Ok(Report {
        records: report(rec_newest, rec_cosigned, rec_size),
        access: report(acc_newest, acc_cosigned, acc_size),
        versions,
        amendments,
        archived,
        audit_records,
        pins,
        patient_index_from: indexed.0,
        patient_index_to: indexed.1,
    })
}

/// Walks one log's leaves in order: checks contiguity, format and kind, every stored node, that
/// the tree passes through every root in `roots` at its size, and (access log) every audit
/// detail and its patient-index rows, except that audit leaves below `archived_before` may have
/// no detail (their details were archived) and leaves outside `indexed` may lack rows
/// (written before the index, or in a run not indexed yet), though the rows they have must be
/// right. `chunk_done` gets each checked chunk's start and `(index,
/// commitment)` pairs. Returns how many audit leaves had no detail because it was archived.
fn walk(
    store: &(dyn LogRead + Sync),
    ledger: &Ledger,
    log: LogId,
    roots: &[(u64, Hash)],
    (archived_before, indexed): (u64, (u64, u64)),
    mut chunk_done: impl FnMut(u64, &[(u64, Hash)]),
) -> Result<u64, VerifyError> {
    let mut archived = 0u64;
    let size = store.ledger_size()?;
    for (n, root) in roots {
        if *n == 0 && *root != medvault_ledger::empty_root() {
            return Err(diverge(format!(
                "a signed {log} checkpoint of size 0 names a root other than the empty tree's"
            )));
        }
    }
    let kind = log.entry_kind();
    let mut frontier = Frontier::new();
    // Reading a chunk (leaves, audit details, the stored nodes it completes) overlaps with
    // checking the previous one.
    std::thread::scope(|scope| -> Result<(), VerifyError> {
        let read = |start: u64| {
            let want = CHUNK.min(size - start);
            scope.spawn(move || read_chunk(store, log, start, want))
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
            let mut tags = chunk.tags.into_iter().peekable();
            let mut emitted: Vec<(u8, u64, Hash)> = Vec::with_capacity(2 * chunk.entries.len());
            // Structure first (sequential, cheap): contiguity, format, kind, a detail beside
            // every audit leaf.
            let mut audits = Vec::new();
            let mut leaves = Vec::with_capacity(chunk.entries.len());
            for (i, (idx, bytes)) in chunk.entries.iter().enumerate() {
                let expect = start + i as u64;
                if *idx != expect {
                    return Err(diverge(format!("{log} log leaf {expect} is missing")));
                }
                let entry = Entry::decode(bytes)
                    .map_err(|e| diverge(format!("{log} log leaf {expect} is malformed: {e}")))?;
                if entry.kind != kind {
                    return Err(diverge(format!(
                        "{log} log leaf {expect} is a {:?} leaf, which this log never holds",
                        entry.kind
                    )));
                }
                if let Some((l, _)) = details.next_if(|(l, _)| *l < expect) {
                    return Err(diverge(format!("audit detail row {l} has no audit leaf")));
                }
                // Index rows of a leaf whose detail was archived cannot be checked here.
                let mut listed = Vec::new();
                while let Some((_, tag)) = tags.next_if(|(l, _)| *l == expect) {
                    listed.push(tag);
                }
                if kind == EntryKind::Audit {
                    match details.next_if(|(l, _)| *l == expect) {
                        Some((_, d)) => audits.push(Audit {
                            leaf: expect,
                            commitment: entry.commitment,
                            detail: d,
                            listed,
                            complete: (indexed.0..indexed.1).contains(&expect),
                        }),
                        None if expect < archived_before => archived += 1,
                        None => {
                            return Err(diverge(format!(
                                "audit leaf {expect} has no stored detail"
                            )));
                        }
                    }
                }
                leaves.push((expect, entry.commitment));
            }
            // Then the hashing and decryption, on every core: leaf hashes on this thread, audit
            // details (commitment and AEAD tag) split across the others.
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
                    if level > 0 && medvault_store::group::is_stored_level(level) {
                        emitted.push((level, index, *hash));
                    }
                });
                for (n, root) in roots {
                    if frontier.size() == *n && frontier.root() != *root {
                        return Err(diverge(format!(
                            "the {log} log's leaves do not hash to the root of the signed checkpoint of size {n}"
                        )));
                    }
                }
            }
            if let Some((l, _)) = details.next() {
                return Err(diverge(format!("audit detail row {l} has no audit leaf")));
            }
            if (chunk.entries.len() as u64) < want {
                return Err(diverge(format!(
                    "{log} log leaf {} is missing",
                    start + chunk.entries.len() as u64
                )));
            }
            compare_nodes(log, &chunk.nodes, &emitted)?;
            chunk_done(start, &leaves);
        }
        Ok(())
    })?;
    Ok(archived)
}

/// Checks the archive files `paths` against the access log: each must be one of the runs the
/// log's own archive records name (same range, same SHA-256) and come from this log, and every
/// detail in it must match its leaf's commitment and open under the audit key. Returns how
/// many details were checked and how many of the archived ranges the files covered (of how
/// many).
///
/// # Errors
/// A file that is not a whole archive of this log, or a detail that does not match (named).
pub fn check_archives(
    access: &dyn LogRead,
    ledger: &Ledger,
    paths: &[std::path::PathBuf],
) -> Result<(u64, usize, usize), crate::archive::ArchiveError> {
    use crate::archive::ArchiveError;
    let mark = crate::archive::backed_mark(access, ledger)?;
    let mut checked = 0;
    let mut covered = vec![false; mark.chain.len()];
    for path in paths {
        let header = crate::archive::read_archive(path, |leaf, d| {
            if leaf >= mark.before {
                return Err(ArchiveError::Refused(format!(
                    "{}: leaf {leaf} was never archived (the access log archived below {})",
                    path.display(),
                    mark.before
                )));
            }
            crate::archive::check_detail(access, ledger, leaf, &d)?;
            checked += 1;
            Ok(())
        })?;
        let not_ours = |why: &str| ArchiveError::BadFile {
            path: path.clone(),
            why: why.to_owned(),
        };
        if header.origin != ledger.access().origin() {
            return Err(not_ours("an archive of another log"));
        }
        let sha = hex::encode(header.sha256);
        let run = mark
            .chain
            .iter()
            .position(|l| l.from == header.from && l.to == header.to && l.sha256 == sha)
            .ok_or_else(|| {
                not_ours("not an archive this log recorded (range or SHA-256 differ)")
            })?;
        covered[run] = true;
    }
    Ok((
        checked,
        covered.iter().filter(|c| **c).count(),
        covered.len(),
    ))
}

/// An access-log leaf to check: its commitment, stored detail and patient-index rows.
struct Audit {
    leaf: u64,
    commitment: Hash,
    detail: medvault_store::AuditDetail,
    /// The patient-index rows listing this leaf, in tag order.
    listed: Vec<BlindValue>,
    /// True if the index must list exactly the patients the record names (the leaf is at or
    /// above the index's mark); below it, only that it lists none the record does not name.
    complete: bool,
}

/// The first audit leaf in `part` whose stored detail does not match its commitment, does not
/// open under the audit key, or disagrees with the patient index.
fn first_bad_audit(ledger: &Ledger, part: &[Audit]) -> Option<(u64, &'static str)> {
    part.iter().find_map(|a| {
        let d = &a.detail;
        if audit_commitment(&d.salt, d.sealed.as_bytes()) != a.commitment {
            return Some((a.leaf, "does not match its stored detail"));
        }
        let Ok(named) = ledger.audit_patient_tags(d) else {
            return Some((a.leaf, "has a stored detail that does not open"));
        };
        if a.listed.windows(2).any(|w| w[0] >= w[1]) {
            Some((
                a.leaf,
                "is listed in the access log's patient index twice under one patient (rows only an editor of the database makes)",
            ))
        } else if a.listed.iter().any(|t| named.binary_search(t).is_err()) {
            Some((
                a.leaf,
                "is listed in the access log's patient index under a patient its record does not name",
            ))
        } else if a.complete && a.listed.len() != named.len() {
            Some((
                a.leaf,
                "names a patient the access log's patient index does not list it under (an accounting of disclosures would miss it)",
            ))
        } else {
            None
        }
    })
}

fn check_checkpoint(
    ledger: &Ledger,
    log: LogId,
    size: u64,
    note: &str,
) -> Result<Head, VerifyError> {
    let bad = |what: String| diverge(format!("the {log} checkpoint of size {size} {what}"));
    let note = Note::parse(note.as_bytes()).map_err(|e| bad(format!("is malformed: {e}")))?;
    let log_key = ledger.log(log);
    log_key
        .verifier()
        .verify(&note)
        .map_err(|e| bad(format!("is not validly signed by this node: {e}")))?;
    ledger
        .pq_cosigner()
        .verify(&note)
        .map_err(|e| bad(format!("lacks this node's ML-DSA-44 cosignature: {e}")))?;
    let cp = Checkpoint::parse(&note.text).map_err(|e| bad(format!("is malformed: {e}")))?;
    if cp.size != size || cp.origin != log_key.origin() {
        return Err(bad("names another size or origin than its row".into()));
    }
    let pin = cp
        .pin(log.pin_label())
        .map_err(|e| bad(format!("is malformed: {e}")))?;
    Ok(Head {
        size,
        root: cp.root,
        pin,
        cosigned_by: vec![],
    })
}

/// What one verification step reads: leaves `[start, start + want)`, their audit details, and
/// for every stored level from 8 (every 8th) the nodes those leaves complete (node `i` of level `l` is completed by
/// leaf `(i + 1)·2^l − 1`, so they are indexes `[start >> l, (start + want) >> l)`).
struct Chunk {
    start: u64,
    want: u64,
    entries: Vec<(u64, Vec<u8>)>,
    details: Vec<(u64, medvault_store::AuditDetail)>,
    /// The access log's patient-index rows of these leaves, by leaf then tag.
    tags: Vec<(u64, BlindValue)>,
    nodes: Vec<(u8, u64, Vec<Hash>)>,
}

fn read_chunk(
    store: &(dyn LogRead + Sync),
    log: LogId,
    start: u64,
    want: u64,
) -> Result<Chunk, VerifyError> {
    let entries = store.ledger_entries(start, want)?;
    let details = store.audit_details(start, want)?;
    let tags = match log {
        LogId::Access => store.access_tags(start, want)?,
        LogId::Records => Vec::new(),
    };
    let mut nodes = Vec::new();
    // Level 0 is not stored (leaf hashes are hashed from the leaves, as this walk does), nor
    // are the levels between the tile levels.
    for level in (1..64u8).filter(|l| medvault_store::group::is_stored_level(*l)) {
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
        tags,
        nodes,
    })
}

fn compare_nodes(
    log: LogId,
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
                "stored {log} log tree node at level {level}, index {index} does not match the leaves"
            )));
        }
    }
    Ok(())
}

/// Claims each amendment's original leaf with what the version was committed as before (its
/// sealed body as a digest): a version re-sealed or expunged keeps every leaf it ever had
/// accounted for, and an amendment that does not match its leaf is a divergence.
fn check_amendments(
    store: &dyn StoreRead,
    ledger: &Ledger,
    commitments: &[Hash],
    used: &mut [bool],
) -> Result<u64, VerifyError> {
    // The amendments of one version, in order: (type, id, version), the last seq, its leaf.
    let mut chain: Option<((String, String, u64), u32, u64)> = None;
    for_each_row(
        |after: Option<&(String, String, u64, u32)>| {
            store.amendments_after(
                after.map(|(t, i, v, s)| (t.as_str(), i.as_str(), *v, *s)),
                PAGE,
            )
        },
        |a| (a.resource_type.clone(), a.id.clone(), a.version, a.seq),
        |a| {
            let name = format!(
                "{}/{}/_history/{} (amendment {})",
                a.resource_type, a.id, a.version, a.seq
            );
            // Tie the amendment to its version: the version exists, its amendments are numbered
            // 1, 2, … with leaves in the order they were written, all older than the version's
            // own leaf. (Else a database editor could delete or roll back a version and keep
            // its leaf "accounted for" by a forged amendment.)
            let key = (a.resource_type.clone(), a.id.clone(), a.version);
            // Rows as stored: a type or id medvault could not have written amends nothing.
            let (Ok(rt), Ok(id)) = (ResourceType::new(&a.resource_type), ResourceId::new(&a.id))
            else {
                return Err(diverge(format!(
                    "{name} names a resource type or id that is not valid"
                )));
            };
            let Some(row) = store.version(&rt, &id, Some(a.version))? else {
                return Err(diverge(format!(
                    "{name} amends a version that is not stored"
                )));
            };
            let (want_seq, after_leaf) = match &chain {
                Some((k, seq, leaf)) if *k == key => (seq + 1, Some(*leaf)),
                _ => (1, None),
            };
            if a.seq != want_seq
                || after_leaf.is_some_and(|l| a.leaf <= l)
                || row.leaf.is_none_or(|current| a.leaf >= current)
            {
                return Err(diverge(format!(
                    "{name} is out of order: amendments of a version must be numbered from 1 with leaves older than the version's own"
                )));
            }
            chain = Some((key, a.seq, a.leaf));
            let facts = medvault_ledger::RecordFacts {
                tenant: ledger.tenant(),
                resource_type: &a.resource_type,
                id: &a.id,
                version: a.version,
                key_name: &a.key_name,
                key_version: a.key_version,
                last_updated_micros: a.last_updated_micros,
                sealed: None,
            };
            let commitment =
                medvault_ledger::record_commitment_with_digest(&a.salt, &facts, a.digest.as_ref());
            claim(commitments, used, a.leaf, &name, commitment)
        },
    )
}

/// Marks records log leaf `leaf` as claimed by `what`, which commits to `commitment`: the leaf
/// must exist, be claimed once only, and hold that commitment.
fn claim(
    commitments: &[Hash],
    used: &mut [bool],
    leaf: u64,
    what: &str,
    commitment: Hash,
) -> Result<(), VerifyError> {
    let Some(i) = usize::try_from(leaf).ok().filter(|i| *i < used.len()) else {
        return Err(diverge(format!(
            "{what} points at records log leaf {leaf}, which does not exist"
        )));
    };
    if used[i] {
        return Err(diverge(format!(
            "records log leaf {leaf} is claimed more than once ({what})"
        )));
    }
    used[i] = true;
    if commitments[i] != commitment {
        return Err(diverge(format!(
            "{what} does not match its commitment in records log leaf {leaf}"
        )));
    }
    Ok(())
}

fn check_versions(
    store: &dyn StoreRead,
    ledger: &Ledger,
    commitments: &[Hash],
    used: &mut [bool],
) -> Result<u64, VerifyError> {
    for_each_row(
        |after: Option<&(String, String, u64)>| {
            store.versions_after(after.map(|(t, i, v)| (t.as_str(), i.as_str(), *v)), PAGE)
        },
        |v| (v.resource_type.clone(), v.id.clone(), v.version),
        |v| {
            let name = format!("{}/{}/_history/{}", v.resource_type, v.id, v.version);
            let (Some(leaf), Some(salt)) = (v.leaf, v.salt) else {
                return Err(diverge(format!("version {name} has no records log leaf")));
            };
            let commitment = record_entry(ledger.tenant(), v, &salt).commitment;
            let what = format!("version {name}");
            claim(commitments, used, leaf, &what, commitment)
        },
    )
}

/// Walks a table in key order, [`PAGE`] rows per round trip: `page` reads the rows after a
/// key (`None`: from the start), `key` is a row's key, `check` checks one row. Returns the
/// number of rows checked.
fn for_each_row<K, R>(
    mut page: impl FnMut(Option<&K>) -> Result<Vec<R>, StoreError>,
    key: impl Fn(&R) -> K,
    mut check: impl FnMut(&R) -> Result<(), VerifyError>,
) -> Result<u64, VerifyError> {
    let mut n = 0;
    let mut after = None;
    loop {
        let rows = page(after.as_ref())?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        after = Some(key(last));
        for row in &rows {
            check(row)?;
            n += 1;
        }
    }
}
