//! Nodes in process, without the binary or a socket.
//!
//! [`open_node`] is the one place a test or bench opens a node: when opening a node changes, only
//! it follows.

use std::path::Path;

use medvault_core::Role;
use medvault_node::Node;
use medvault_node::identity::api_tokens::create_token;
use medvault_node::node_identity::NodeIdentity;
use medvault_node::share;

/// Opens (or creates) the embedded node whose data directory is `dir`, without a passphrase.
#[must_use]
pub fn open_node(dir: &Path) -> Node {
    Node::open(dir, &medvault_store_sqlite::Embedded::new(dir), None)
        .unwrap_or_else(|e| panic!("open the node in {}: {e}", dir.display()))
}

/// A new node in a fresh temporary directory (`data` inside it), and the directory, which must
/// outlive the node.
#[must_use]
pub fn scratch_node() -> (tempfile::TempDir, Node) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let node = open_node(&tmp.path().join("data"));
    (tmp, node)
}

/// A new API token for `role` on `node`, valid for a day.
#[must_use]
pub fn api_token(node: &Node, role: Role) -> String {
    let (token, _) = create_token(node.store.as_ref(), role, node.clock.now_micros(), 1)
        .unwrap_or_else(|e| panic!("a {role:?} token: {e}"));
    token
}

/// Two new nodes, A and B, with their identities, each registered as the other's peer (at an
/// address nothing listens on: bundles move between them in process).
pub struct TwoNodes {
    _tmp: tempfile::TempDir,
    /// Node A.
    pub a: Node,
    /// Node B.
    pub b: Node,
    /// A's identity keys.
    pub a_id: NodeIdentity,
    /// B's identity keys.
    pub b_id: NodeIdentity,
}

impl TwoNodes {
    /// Opens A and B in a fresh temporary directory and registers each with the other.
    #[must_use]
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let a = open_node(&tmp.path().join("a"));
        let b = open_node(&tmp.path().join("b"));
        let identity = |n: &Node| NodeIdentity::load(n).expect("the node's identity");
        let (a_id, b_id) = (identity(&a), identity(&b));
        register(&a, &b, &b_id);
        register(&b, &a, &a_id);
        Self {
            _tmp: tmp,
            a,
            b,
            a_id,
            b_id,
        }
    }
}

impl Default for TwoNodes {
    fn default() -> Self {
        Self::new()
    }
}

/// The published document of `node` with the identity `id`.
#[must_use]
pub fn document(node: &Node, id: &NodeIdentity) -> String {
    id.document(node.ledger.base())
        .expect("the node document")
        .to_string()
}

/// Registers `peer` (identity `peer_id`) as a peer of `node`.
fn register(node: &Node, peer: &Node, peer_id: &NodeIdentity) {
    share::register_peer(
        node,
        "https://127.0.0.1:9",
        &document(peer, peer_id),
        &peer_id.fingerprint(),
        None,
        false,
        "testkit",
    )
    .unwrap_or_else(|e| panic!("register the peer: {e}"));
}
