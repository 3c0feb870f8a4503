//! The group-commit writer every database backend runs, and the ledger frontier it keeps.
//!
//! One thread per store owns the write connection. It drains up to [`MAX_GROUP`] queued
//! [`WriteOp`]s, runs each in its own savepoint (an op that fails is rolled back alone, a panic
//! is an error), hashes the group's new ledger leaves into the tree in the same transaction,
//! commits once and only then answers every op. One durable commit serves many callers.
//!
//! A backend supplies a [`Dialect`]: how to begin a group under its write lock, run one op in a
//! savepoint, commit with the new tree nodes, and give a read view inside the transaction. The
//! frontier (the tree's right edge) lives here: it is replaced only after a commit succeeded,
//! and reloaded from the database when another process appended since (the size read under the
//! write lock says so) or when a commit failed.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use medvault_ledger::{Frontier, Hash, leaf_hash};

use crate::{LedgerNodes, LogRead, StoreError, StoreRead, StoreTx, WriteDone, WriteOp};

/// Ops one group commit takes at most.
pub const MAX_GROUP: usize = 128;
/// Writes that may wait in the queue before submitters block.
const QUEUE: usize = 1024;

/// What one op left behind once it succeeded.
#[derive(Debug, Default)]
pub struct OpEffects {
    /// It destroyed a data key: the backend scrubs old copies after the commit.
    pub shredded: bool,
    /// The leaves it appended (index and leaf hash), or `None` when the backend did not track
    /// them (or some were loaded in bulk): the writer then reads the new leaves back.
    pub appended: Option<Vec<(u64, Hash)>>,
}

/// A tree node a group's leaves completed: level (≥ 1; leaf hashes are not stored), index, hash.
pub type NewNode = (u8, u64, Hash);

/// The calls a database backend gives the shared writer. Every method runs on the writer thread.
pub trait Dialect: Send + 'static {
    /// Begins a group's transaction under the log's write lock and returns the tree size
    /// committed before it (read under that lock, so it counts other processes' leaves). On
    /// failure nothing is left open.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached, else a backend error.
    fn begin(&mut self) -> Result<u64, StoreError>;

    /// Runs `op` in a savepoint of the group's transaction. On success its changes stay; on
    /// failure they are rolled back and the op's error returned — unless the transaction itself
    /// is lost, which is [`StoreError::Unavailable`] (the whole group then fails).
    ///
    /// # Errors
    /// As described.
    fn op(
        &mut self,
        op: &mut dyn FnMut(&mut dyn StoreTx) -> Result<(), StoreError>,
    ) -> Result<OpEffects, StoreError>;

    /// True when the database abandoned the transaction by itself (disk full, I/O error): the
    /// ops already run are gone and no more may run in it.
    fn aborted(&mut self) -> bool {
        false
    }

    /// Stores `nodes` and commits. On failure the transaction is rolled back (or known lost).
    ///
    /// # Errors
    /// The commit's failure; [`StoreError::Unavailable`] when the connection went.
    fn commit(&mut self, nodes: &[NewNode]) -> Result<(), StoreError>;

    /// Rolls the group's transaction back after it was lost or aborted.
    fn abandon(&mut self);

    /// Runs `f` on a read view of the database (inside the transaction when one is open).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when there is no connection, or `f`'s error.
    fn read<T>(
        &mut self,
        f: impl FnOnce(&dyn StoreRead) -> Result<T, StoreError>,
    ) -> Result<T, StoreError>;

    /// After a commit in which a data key was destroyed: scrub the old copies of its wrapped
    /// bytes (a WAL, dead row versions). An error fails the group's ops (the key is destroyed
    /// but the caller must not be told the erasure is clean).
    ///
    /// # Errors
    /// Why the scrub failed.
    fn shredded(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// After the group's answers went out: housekeeping that must not delay them.
    fn after_group(&mut self) {}
}

/// The frontier of the stored tree at `size` (the committed size when `None`).
///
/// # Errors
/// [`StoreError::Backend`] when a node the frontier needs is missing.
pub fn load_frontier(view: &dyn LogRead, size: Option<u64>) -> Result<Frontier, StoreError> {
    let size = match size {
        Some(n) => n,
        None => view.ledger_size()?,
    };
    Frontier::load(&LedgerNodes(view), size).map_err(|e| StoreError::Backend(Box::new(e)))
}

/// Hashes `pending` (index and leaf hash, in order) onto `frontier`; returns the stored-level
/// nodes they complete.
///
/// # Errors
/// [`StoreError::Backend`] if the leaves do not continue the tree.
pub fn extend(
    frontier: &mut Frontier,
    pending: &[(u64, Hash)],
) -> Result<Vec<NewNode>, StoreError> {
    let mut nodes = Vec::new();
    for (idx, hash) in pending {
        if *idx != frontier.size() {
            return Err(StoreError::Backend(
                "ledger leaves are not contiguous".into(),
            ));
        }
        frontier.append(*hash, |level, i, h| {
            if level > 0 && is_stored_level(level) {
                nodes.push((level, i, *h));
            }
        });
    }
    Ok(nodes)
}

/// Tree levels are stored only every [`STORED_LEVEL_STEP`]: the levels C2SP tiles are made of
/// (a tile of level `k` holds nodes of tree level `8k`). Level 0 is hashed from the leaves, the
/// levels between are hashed from the stored level below them when a proof or frontier needs
/// them (at most 128 hashes each). A group commit then writes one node row per 256 leaves
/// instead of one per leaf, and touches one tree level's pages instead of eight.
#[allow(clippy::cast_possible_truncation)] // TILE_HEIGHT is 8
pub const STORED_LEVEL_STEP: u8 = medvault_ledger::TILE_HEIGHT as u8;

/// Whether nodes of tree `level` are stored (level 0 is the leaves themselves).
pub fn is_stored_level(level: u8) -> bool {
    level.is_multiple_of(STORED_LEVEL_STEP)
}

/// Nodes `[start, start + count)` of tree `level`, stopping where the tree (or the stored run)
/// ends: read by `stored` when the level is stored (level 0: hashed from the leaves), otherwise
/// hashed up from the stored level below. Only complete subtrees are returned.
///
/// # Errors
/// From `stored`.
pub fn derived_nodes(
    level: u8,
    start: u64,
    count: u64,
    stored: impl FnOnce(u8, u64, u64) -> Result<Vec<Hash>, StoreError>,
) -> Result<Vec<Hash>, StoreError> {
    let shift = level % STORED_LEVEL_STEP;
    if shift == 0 {
        return stored(level, start, count);
    }
    let Some(base_start) = start.checked_mul(1 << shift) else {
        return Ok(Vec::new());
    };
    let mut hashes = stored(level - shift, base_start, count.saturating_mul(1 << shift))?;
    for _ in 0..shift {
        hashes = hashes
            .chunks_exact(2)
            .map(|pair| medvault_ledger::node_hash(&pair[0], &pair[1]))
            .collect();
    }
    Ok(hashes)
}

/// The hashes of the nodes `keys` names (`None` where the tree has none): `stored_at` answers
/// the keys of stored levels in one batch, `range` a run of a stored level (for the rest, which
/// are hashed up from it, one run per key).
///
/// # Errors
/// From `stored_at` or `range`.
pub fn nodes_at<C: ?Sized>(
    ctx: &mut C,
    keys: &[(u8, u64)],
    stored_at: impl FnOnce(&mut C, &[(u8, u64)]) -> Result<Vec<Option<Hash>>, StoreError>,
    mut range: impl FnMut(&mut C, u8, u64, u64) -> Result<Vec<Hash>, StoreError>,
) -> Result<Vec<Option<Hash>>, StoreError> {
    let (direct, derived): (Vec<usize>, Vec<usize>) =
        (0..keys.len()).partition(|&i| is_stored_level(keys[i].0));
    let mut out = vec![None; keys.len()];
    let direct_keys: Vec<(u8, u64)> = direct.iter().map(|&i| keys[i]).collect();
    if !direct_keys.is_empty() {
        for (i, h) in direct.into_iter().zip(stored_at(ctx, &direct_keys)?) {
            out[i] = h;
        }
    }
    for i in derived {
        let (level, index) = keys[i];
        out[i] = derived_nodes(level, index, 1, |l, s, n| range(ctx, l, s, n))?
            .first()
            .copied();
    }
    Ok(out)
}

/// The run of tree nodes starting at index `start`, from `(index, hash)` rows in index order:
/// it stops at the first gap or malformed hash, so the caller sees fewer nodes than asked
/// (every backend's `ledger_nodes` answers this way).
pub fn contiguous_nodes(start: u64, rows: impl IntoIterator<Item = (i64, Vec<u8>)>) -> Vec<Hash> {
    let mut out = Vec::new();
    for (i, (idx, hash)) in rows.into_iter().enumerate() {
        let Ok(hash) = <Hash>::try_from(hash.as_slice()) else {
            break;
        };
        if u64::try_from(idx).ok() != Some(start + i as u64) {
            break;
        }
        out.push(hash);
    }
    out
}

/// The leaf hashes of `entries` (index and leaf, in index order) from index `start`, up to the
/// first gap: level 0 of the tree, which is not stored but hashed from the leaves.
pub fn contiguous_leaves(start: u64, entries: &[(u64, Vec<u8>)]) -> Vec<Hash> {
    entries
        .iter()
        .enumerate()
        .take_while(|(i, (idx, _))| *idx == start + *i as u64)
        .map(|(_, (_, e))| leaf_hash(e))
        .collect()
}

/// A copy of an error's kind and cause (a group's failure is every op's failure): the cause's
/// own message is kept ("database is locked", what to do after a failed WAL truncation), not the
/// kind's fixed text. A conflict found when the whole group commits is no op's conflict to
/// retry: it is a backend failure.
pub fn same_kind(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.to_string().into()),
        StoreError::Backend(m) | StoreError::Aborted(m) => {
            StoreError::Backend(m.to_string().into())
        }
        other => StoreError::Backend(other.to_string().into()),
    }
}

struct Job {
    op: WriteOp,
    reply: WriteDone,
}

/// The writer thread of one store: [`GroupWriter::submit`] queues, the thread group-commits.
/// Dropping it lets the queue drain and joins the thread.
pub struct GroupWriter {
    sender: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GroupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWriter").finish_non_exhaustive()
    }
}

impl GroupWriter {
    /// Loads the tree's frontier through `dialect` and starts the writer thread `name`.
    ///
    /// A tree whose frontier does not load (a leaf or node missing: a damaged or tampered
    /// database) still opens, so `ledger verify` can name what is wrong: the writer starts from
    /// the empty frontier, and its first group, finding the stored size differs, reloads it and
    /// fails with the missing node instead of appending to a tree it cannot hash.
    ///
    /// # Errors
    /// The database cannot be read, or the thread cannot start.
    pub fn spawn<D: Dialect>(name: &str, mut dialect: D) -> Result<Self, StoreError> {
        let frontier = match dialect.read(|view| load_frontier(view, None)) {
            Ok(f) => f,
            Err(StoreError::Unavailable(m)) => return Err(StoreError::Unavailable(m)),
            Err(_) => Frontier::new(),
        };
        let (sender, receiver) = sync_channel::<Job>(QUEUE);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                Writer { dialect, frontier }.run(&receiver);
            })
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Self {
            sender: Some(sender),
            thread: Some(thread),
        })
    }

    /// Queues `op`; `done` receives its outcome once the commit is durable (or failed), on the
    /// writer thread.
    pub fn submit(&self, op: WriteOp, done: WriteDone) {
        let Some(sender) = self.sender.as_ref() else {
            return done(Err(StoreError::Backend("store is shutting down".into())));
        };
        if let Err(std::sync::mpsc::SendError(job)) = sender.send(Job { op, reply: done }) {
            (job.reply)(Err(StoreError::Backend("writer thread has stopped".into())));
        }
    }

    /// Queues `op` and waits for its outcome.
    ///
    /// # Errors
    /// The op's error, or why its group did not commit.
    pub fn write(&self, op: WriteOp) -> Result<(), StoreError> {
        let (reply, wait) = sync_channel(1);
        self.submit(
            op,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        );
        wait.recv()
            .map_err(|_| StoreError::Backend("writer thread has stopped".into()))?
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

struct Writer<D> {
    dialect: D,
    frontier: Frontier,
}

impl<D: Dialect> Writer<D> {
    fn run(mut self, receiver: &Receiver<Job>) {
        while let Ok(first) = receiver.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let (ops, replies): (Vec<WriteOp>, Vec<_>) =
                jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
            let results = self.group(ops);
            for (reply, result) in replies.into_iter().zip(results) {
                reply(result);
            }
            self.dialect.after_group();
        }
    }

    /// Runs a group of ops in one transaction, each in its own savepoint, and commits once.
    fn group(&mut self, ops: Vec<WriteOp>) -> Vec<Result<(), StoreError>> {
        let n = ops.len();
        let committed = match self.dialect.begin() {
            Ok(size) => size,
            Err(e) => return (0..n).map(|_| Err(same_kind(&e))).collect(),
        };
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(n);
        let mut shredded = false;
        // The leaves the committed ops appended (`None` once one did not say).
        let mut appended: Option<Vec<(u64, Hash)>> = Some(Vec::new());
        for op in ops {
            if self.dialect.aborted() {
                results.push(Err(aborted()));
                continue;
            }
            let mut op = Some(op);
            let mut run = |tx: &mut dyn StoreTx| match op.take() {
                Some(op) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op(tx)))
                    .unwrap_or_else(|_| Err(StoreError::Backend("write op panicked".into()))),
                None => Err(StoreError::Backend("write op ran twice".into())),
            };
            match self.dialect.op(&mut run) {
                Ok(effects) => {
                    shredded |= effects.shredded;
                    match (appended.as_mut(), effects.appended) {
                        (Some(list), Some(mut more)) => list.append(&mut more),
                        _ => appended = None,
                    }
                    results.push(Ok(()));
                }
                Err(StoreError::Unavailable(lost)) => {
                    // The transaction is lost (connection gone): every op so far goes with it.
                    self.dialect.abandon();
                    let gone = StoreError::Unavailable(lost);
                    let mut out: Vec<_> = results
                        .into_iter()
                        .map(|r| r.and(Err(same_kind(&gone))))
                        .collect();
                    out.resize_with(n, || Err(same_kind(&gone)));
                    return out;
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if self.dialect.aborted() {
            self.dialect.abandon();
            return results.into_iter().map(|r| r.and(Err(aborted()))).collect();
        }
        // Hash the group's leaves into the tree in the same transaction, on a copy of the
        // frontier that replaces the real one only once the commit succeeded.
        let mut next = self.frontier.clone();
        let done = self.integrate(&mut next, committed, appended);
        if let Err(e) = done {
            if let Ok(f) = self.dialect.read(|view| load_frontier(view, None)) {
                self.frontier = f;
            }
            return results
                .into_iter()
                .map(|r| r.and(Err(same_kind(&e))))
                .collect();
        }
        self.frontier = next;
        if shredded && let Err(e) = self.dialect.shredded() {
            return results
                .into_iter()
                .map(|r| r.and(Err(same_kind(&e))))
                .collect();
        }
        results
    }

    /// Extends `frontier` with the group's leaves and commits with the nodes they complete.
    fn integrate(
        &mut self,
        frontier: &mut Frontier,
        committed: u64,
        appended: Option<Vec<(u64, Hash)>>,
    ) -> Result<(), StoreError> {
        let prepared = (|| {
            let pending = match appended {
                Some(list) => list,
                None => self.dialect.read(|view| {
                    Ok(view
                        .ledger_entries(committed, u64::MAX)?
                        .into_iter()
                        .map(|(i, e)| (i, leaf_hash(&e)))
                        .collect())
                })?,
            };
            // A group that appended no leaf leaves the tree as it is and does not need the
            // frontier (a database whose tree does not load still takes its other writes).
            if pending.is_empty() {
                return Ok(Vec::new());
            }
            // Another process may have appended and integrated leaves since this writer did.
            if committed != frontier.size() {
                *frontier = self
                    .dialect
                    .read(|view| load_frontier(view, Some(committed)))?;
            }
            extend(frontier, &pending)
        })();
        match prepared {
            Ok(nodes) => self.dialect.commit(&nodes),
            Err(e) => {
                self.dialect.abandon();
                Err(e)
            }
        }
    }
}

fn aborted() -> StoreError {
    StoreError::Backend("transaction aborted by the database".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_failure_keeps_its_cause_and_kind() {
        let cause = StoreError::Backend("database is locked".into());
        let copy = same_kind(&cause);
        assert!(matches!(copy, StoreError::Backend(_)));
        assert_eq!(
            std::error::Error::source(&copy).map(ToString::to_string),
            Some("database is locked".to_owned())
        );
        assert!(matches!(
            same_kind(&StoreError::Unavailable("connection reset".into())),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            same_kind(&StoreError::Conflict),
            StoreError::Backend(_)
        ));
    }

    #[test]
    fn nodes_and_leaves_stop_at_the_first_gap() {
        let h = |n: u8| vec![n; 32];
        let rows = vec![(4, h(1)), (5, h(2)), (7, h(3))];
        assert_eq!(contiguous_nodes(4, rows), vec![[1; 32], [2; 32]]);
        assert_eq!(
            contiguous_nodes(4, vec![(4, vec![1; 31])]),
            Vec::<Hash>::new()
        );
        let leaves = vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (3, b"d".to_vec())];
        assert_eq!(
            contiguous_leaves(0, &leaves),
            vec![leaf_hash(b"a"), leaf_hash(b"b")]
        );
    }

    #[test]
    fn extending_the_frontier_refuses_a_gap_and_matches_the_tree() {
        let mut f = Frontier::new();
        let leaves: Vec<(u64, Hash)> = (0..5u64).map(|i| (i, leaf_hash(&[i as u8]))).collect();
        // Five leaves complete subtrees at levels 1 and 2 only: nothing of them is stored.
        assert!(extend(&mut f, &leaves).unwrap().is_empty());
        assert_eq!(f.size(), 5);
        assert!(extend(&mut f, &[(6, leaf_hash(b"x"))]).is_err());
        // 600 leaves complete two subtrees of level 8 (the first tile level): those two.
        let mut f = Frontier::new();
        let mut tree = medvault_ledger::MemoryTree::new();
        let leaves: Vec<(u64, Hash)> = (0..600u64)
            .map(|i| (i, leaf_hash(&i.to_be_bytes())))
            .collect();
        for (_, h) in &leaves {
            tree.push(*h);
        }
        let nodes = extend(&mut f, &leaves).unwrap();
        let src: &dyn medvault_ledger::NodeSource = &tree;
        let want: Vec<NewNode> = (0..2).map(|i| (8, i, src.node(8, i).unwrap())).collect();
        assert_eq!(nodes, want);
        assert_eq!(f.root(), tree.root());
    }
}
