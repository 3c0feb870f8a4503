//! The Merkle tree over a [`NodeSource`]: roots, inclusion and consistency proofs (RFC 9162
//! §2.1.3–2.1.4), and the [`Frontier`] that appends leaves.
//!
//! Storage keeps the hash of every *complete* subtree: node `(level, index)` covers leaves
//! `[index · 2^level, (index + 1) · 2^level)`. Any other range a proof needs sits on the right
//! edge of a tree and is rebuilt from at most `log2(size)` complete subtrees.

use crate::LedgerError;
use crate::hash::{Hash, empty_root, node_hash};

/// Read access to the hashes of complete subtrees.
pub trait NodeSource {
    /// The hash of the complete subtree at `level` and `index`.
    ///
    /// # Errors
    /// [`LedgerError::MissingNode`] if it is not stored, or a storage error.
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError>;
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// `MTH(D[begin:end])`.
///
/// # Errors
/// From the source.
pub fn subtree_hash(src: &dyn NodeSource, begin: u64, end: u64) -> Result<Hash, LedgerError> {
    let n = end - begin;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && begin.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return src.node(level as u8, begin >> level);
    }
    let k = split_point(n);
    let left = subtree_hash(src, begin, begin + k)?;
    let right = subtree_hash(src, begin + k, end)?;
    Ok(node_hash(&left, &right))
}

/// Root of the tree of the first `size` leaves.
///
/// # Errors
/// From the source.
pub fn root(src: &dyn NodeSource, size: u64) -> Result<Hash, LedgerError> {
    subtree_hash(src, 0, size)
}

/// The audit path for leaf `index` in the tree of `size` leaves (RFC 9162 §2.1.3.1), nearest
/// sibling first.
///
/// # Errors
/// [`LedgerError::OutOfRange`] unless `index < size`; source errors.
pub fn inclusion_proof(
    src: &dyn NodeSource,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, LedgerError> {
    if index >= size {
        return Err(LedgerError::OutOfRange);
    }
    let mut out = Vec::with_capacity(64);
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path(
    src: &dyn NodeSource,
    m: u64,
    begin: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), LedgerError> {
    let n = end - begin;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(src, m, begin, begin + k, out)?;
        out.push(subtree_hash(src, begin + k, end)?);
    } else {
        path(src, m - k, begin + k, end, out)?;
        out.push(subtree_hash(src, begin, begin + k)?);
    }
    Ok(())
}

/// The consistency proof between the trees of `old` and `new` leaves (RFC 9162 §2.1.4.1); empty
/// when `old` is 0 or equals `new`.
///
/// # Errors
/// [`LedgerError::OutOfRange`] if `old > new`; source errors.
pub fn consistency_proof(
    src: &dyn NodeSource,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, LedgerError> {
    if old > new {
        return Err(LedgerError::OutOfRange);
    }
    let mut out = Vec::with_capacity(64);
    if old > 0 && old < new {
        subproof(src, old, 0, new, true, &mut out)?;
    }
    Ok(out)
}

fn subproof(
    src: &dyn NodeSource,
    m: u64,
    begin: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), LedgerError> {
    let n = end - begin;
    if m == n {
        if !whole {
            out.push(subtree_hash(src, begin, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, begin, begin + k, whole, out)?;
        out.push(subtree_hash(src, begin + k, end)?);
    } else {
        subproof(src, m - k, begin + k, end, false, out)?;
        out.push(subtree_hash(src, begin, begin + k)?);
    }
    Ok(())
}

/// The walk up the tree that both proof verifications make (RFC 9162 §2.1.3.2 step 5 and
/// §2.1.4.2 step 6): from node `fn_` in a tree whose last node is `sn`, `step` receives each proof
/// hash and whether it is a left sibling (`fn_` odd or `fn_ == sn`, so the hash goes first).
/// The proof must end exactly at the root (`sn` reaching 0).
///
/// # Errors
/// [`LedgerError::ProofInvalid`] with `too_long` or `too_short`.
fn walk_proof(
    mut fn_: u64,
    mut sn: u64,
    proof: &[Hash],
    (too_long, too_short): (&'static str, &'static str),
    mut step: impl FnMut(&Hash, bool),
) -> Result<(), LedgerError> {
    for p in proof {
        if sn == 0 {
            return Err(LedgerError::ProofInvalid(too_long));
        }
        let left = fn_ & 1 == 1 || fn_ == sn;
        step(p, left);
        if left {
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(LedgerError::ProofInvalid(too_short));
    }
    Ok(())
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
///
/// # Errors
/// [`LedgerError::ProofInvalid`] naming what failed.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LedgerError> {
    if index >= size {
        return Err(LedgerError::ProofInvalid(
            "leaf index is not below the tree size",
        ));
    }
    let mut r = *leaf;
    walk_proof(
        index,
        size - 1,
        proof,
        (
            "inclusion proof is too long",
            "inclusion proof is too short",
        ),
        |p, left| {
            r = if left {
                node_hash(p, &r)
            } else {
                node_hash(&r, p)
            }
        },
    )?;
    if r != *root {
        return Err(LedgerError::ProofInvalid(
            "inclusion proof does not lead to the root",
        ));
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root` (RFC 9162 §2.1.4.2). Roots are taken as bytes so a root of the
/// wrong length simply fails to match. A proof from the empty tree proves nothing and is
/// rejected (callers such as a witness's first cosignature handle size 0 themselves).
///
/// # Errors
/// [`LedgerError::ProofInvalid`] naming what failed.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &[u8],
    new_root: &[u8],
    proof: &[Hash],
) -> Result<(), LedgerError> {
    if old > new {
        return Err(LedgerError::ProofInvalid(
            "old size is larger than new size",
        ));
    }
    if old == 0 {
        return Err(LedgerError::ProofInvalid(
            "a consistency proof from the empty tree proves nothing",
        ));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(LedgerError::ProofInvalid(
                "proof between equal sizes must be empty",
            ));
        }
        if old_root != new_root {
            return Err(LedgerError::ProofInvalid(
                "equal sizes with different roots",
            ));
        }
        return Ok(());
    }
    let (Ok(old_root), Ok(new_root)) = (<&Hash>::try_from(old_root), <&Hash>::try_from(new_root))
    else {
        return Err(LedgerError::ProofInvalid("a root is not a 32-byte hash"));
    };
    if proof.is_empty() {
        return Err(LedgerError::ProofInvalid("consistency proof is empty"));
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    walk_proof(
        fn_,
        sn,
        &path[1..],
        (
            "consistency proof is too long",
            "consistency proof is too short",
        ),
        |c, left| {
            if left {
                fr = node_hash(c, &fr);
                sr = node_hash(c, &sr);
            } else {
                sr = node_hash(&sr, c);
            }
        },
    )?;
    if fr != *old_root {
        return Err(LedgerError::ProofInvalid(
            "consistency proof does not lead to the old root",
        ));
    }
    if sr != *new_root {
        return Err(LedgerError::ProofInvalid(
            "consistency proof does not lead to the new root",
        ));
    }
    Ok(())
}

/// The right edge of a tree: the hashes of the complete subtrees its size decomposes into
/// (one per set bit, largest first). Enough to append leaves and compute the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    edge: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the frontier of the tree of `size` leaves.
    ///
    /// # Errors
    /// From the source.
    pub fn load(src: &dyn NodeSource, size: u64) -> Result<Self, LedgerError> {
        let mut edge = Vec::with_capacity(64);
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size >> level & 1 == 1 {
                edge.push(src.node(level as u8, start >> level)?);
                start += 1 << level;
            }
        }
        Ok(Self { size, edge })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `emit` receives every subtree this completes, the leaf itself first
    /// (`(0, index, leaf)`), then its newly complete ancestors bottom-up.
    pub fn append(&mut self, leaf: Hash, mut emit: impl FnMut(u8, u64, &Hash)) {
        emit(0, self.size, &leaf);
        let (mut hash, mut level, mut index) = (leaf, 0u8, self.size);
        while index & 1 == 1 {
            // A set bit means a complete left sibling of this height is on the edge.
            let Some(left) = self.edge.pop() else { break };
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            emit(level, index, &hash);
        }
        self.edge.push(hash);
        self.size += 1;
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Runs `f` (a root or proof computation) with every node it reads fetched in **one** batch:
/// a first pass against a recorder learns which nodes `f` needs (which nodes a computation
/// reads depends only on sizes and indexes, never on hash values), then `fetch` gets them all at
/// once (one database round trip instead of one per node) and `f` runs for real.
///
/// # Errors
/// From `fetch` or `f`; [`LedgerError::MissingNode`] if `fetch` returns fewer hashes.
pub fn with_prefetched<T>(
    f: impl Fn(&dyn NodeSource) -> Result<T, LedgerError>,
    fetch: impl FnOnce(&[(u8, u64)]) -> Result<Vec<Option<Hash>>, LedgerError>,
) -> Result<T, LedgerError> {
    struct Recorder(std::cell::RefCell<Vec<(u8, u64)>>);
    impl NodeSource for Recorder {
        fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
            self.0.borrow_mut().push((level, index));
            Ok([0; 32])
        }
    }
    struct Fetched(std::collections::HashMap<(u8, u64), Hash>);
    impl NodeSource for Fetched {
        fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
            self.0
                .get(&(level, index))
                .copied()
                .ok_or(LedgerError::MissingNode { level, index })
        }
    }
    let recorder = Recorder(std::cell::RefCell::new(Vec::new()));
    f(&recorder)?;
    let mut wanted = recorder.0.into_inner();
    wanted.sort_unstable();
    wanted.dedup();
    let got = fetch(&wanted)?;
    let map = wanted
        .into_iter()
        .zip(got)
        .filter_map(|(k, h)| Some((k, h?)))
        .collect();
    f(&Fetched(map))
}

/// A whole tree in memory: for tests, benchmarks and offline verification.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemoryTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let levels = &mut self.levels;
        self.frontier.append(leaf, |level, _index, hash| {
            let level = usize::from(level);
            if levels.len() <= level {
                levels.push(Vec::new());
            }
            levels[level].push(*hash);
        });
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
}

impl NodeSource for MemoryTree {
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        self.levels
            .get(usize::from(level))
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
            .ok_or(LedgerError::MissingNode { level, index })
    }
}
