//! RFC 6962 §2.1 hashing with domain separation: `0x00` before a leaf, `0x01` before two children.

use aws_lc_rs::digest::{Context, SHA256, digest};

/// A SHA-256 Merkle tree hash.
pub type Hash = [u8; 32];

/// Length of a [`Hash`].
pub const HASH_LEN: usize = 32;

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    to_hash(digest(&SHA256, b"").as_ref())
}

/// `MTH({d}) = SHA-256(0x00 || d)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x00]);
    c.update(entry);
    to_hash(c.finish().as_ref())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_LEN];
    buf[0] = 0x01;
    buf[1..=HASH_LEN].copy_from_slice(left);
    buf[1 + HASH_LEN..].copy_from_slice(right);
    to_hash(digest(&SHA256, &buf).as_ref())
}

fn to_hash(bytes: &[u8]) -> Hash {
    let mut h = [0u8; HASH_LEN];
    h.copy_from_slice(bytes);
    h
}
