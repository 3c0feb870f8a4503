//! What the two logs publish, read from the node's stores: the newest signed checkpoint, C2SP
//! `tlog-tiles` tiles and RFC 9162 proofs over the published tree (what a signed checkpoint
//! covers). Served by the public read-only transparency endpoints.

use medvault_ledger::{TILE_WIDTH, TilePath, consistency_proof, inclusion_proof};
use medvault_store::{LogRead, StoreError};

use crate::Node;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::ledger::LogId;

fn bad(msg: &str) -> Error {
    Error::new(ErrorKind::Invalid, IssueCode::Invalid, msg)
}

/// The newest signed checkpoint of `log` (with any witness cosignatures). Blocking.
///
/// # Errors
/// Not found before the first checkpoint; store failures.
pub fn newest_checkpoint(node: &Node, log: LogId) -> Result<String, Error> {
    let cp = node.log_store(log).checkpoint(None)?;
    let (_, note) = cp.ok_or_else(|| Error::not_found("no checkpoint has been signed yet"))?;
    Ok(note)
}

/// The bytes of one C2SP `tlog-tiles` tile of `log`, if the published tree (what a signed
/// checkpoint covers) is large enough to hold it. Blocking.
///
/// # Errors
/// Not found for a tile not (yet) published; store failures.
pub fn tile(node: &Node, log: LogId, tile: &TilePath) -> Result<Vec<u8>, Error> {
    tile_bytes(node.log_store(log).as_ref(), tile)
}

/// The bytes of one tile, if the published tree is large enough to hold it.
fn tile_bytes(store: &dyn LogRead, tile: &TilePath) -> Result<Vec<u8>, Error> {
    let missing = || Error::not_found("no such tile");
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
            return Err(Error::internal(&StoreError::Backend(
                "ledger entries missing".into(),
            )));
        }
        let mut out = Vec::with_capacity(entries.len() * 44);
        for (_, e) in entries {
            let len = u16::try_from(e.len()).map_err(|e| Error::internal(&e))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&e);
        }
        return Ok(out);
    }
    let level = u8::try_from(tree_level).map_err(|_| missing())?;
    let hashes = store.ledger_nodes(level, start, width)?;
    if hashes.len() as u64 != width {
        return Err(Error::internal(&StoreError::Backend(
            "ledger nodes missing".into(),
        )));
    }
    Ok(hashes.concat())
}

fn published_size(store: &dyn LogRead) -> Result<u64, Error> {
    Ok(store.checkpoint(None)?.map_or(0, |(n, _)| n))
}

/// The audit path of leaf `index` of `log` in the tree of `size` leaves (`size` must not exceed
/// the newest checkpoint's), with the leaf entry. Blocking.
///
/// # Errors
/// Invalid sizes; store failures.
pub fn inclusion(
    node: &Node,
    log: LogId,
    index: u64,
    size: u64,
) -> Result<(Vec<medvault_ledger::Hash>, Vec<u8>), Error> {
    let store = node.log_store(log);
    let s = store.as_ref();
    if index >= size || size > published_size(s)? {
        return Err(bad("need index < size <= the newest checkpoint's size"));
    }
    let proof = node
        .ledger
        .log(log)
        .over_tree(s, |n| inclusion_proof(n, index, size))?;
    let entry = s
        .ledger_entries(index, 1)?
        .into_iter()
        .next()
        .map(|(_, e)| e);
    Ok((proof, entry.unwrap_or_default()))
}

/// The consistency proof of `log` between two published tree sizes. Blocking.
///
/// # Errors
/// Invalid sizes; store failures.
pub fn consistency(
    node: &Node,
    log: LogId,
    old: u64,
    new: u64,
) -> Result<Vec<medvault_ledger::Hash>, Error> {
    let store = node.log_store(log);
    let s = store.as_ref();
    if old == 0 || old > new || new > published_size(s)? {
        return Err(bad("need 0 < old <= new <= the newest checkpoint's size"));
    }
    node.ledger
        .log(log)
        .over_tree(s, |n| consistency_proof(n, old, new))
}
