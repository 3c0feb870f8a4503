//! A whole search query string as a client sends it: chained parameters, `_has`, `_include` /
//! `_revinclude` (`:iterate`), `_sort`, `_summary`, `_elements`, modifiers and composites parse
//! into a search or a clean error for Patient and Observation, and a parsed search runs (on an
//! empty node) without a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use medvault_core::ResourceType;
use medvault_node::Node;
use medvault_node::ops::Ctx;
use medvault_node::search;

static NODE: OnceLock<Node> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let node = NODE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("medvault-fuzz-search-{}", std::process::id()));
        Node::open(&dir, &medvault_store_sqlite::Embedded::new(&dir), None).expect("a node")
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ctx = Ctx::unrestricted_node_work(node);
    let params = search::parse_query_string(text);
    for rt in [ResourceType::PATIENT, ResourceType::from_static("Observation")] {
        for strict in [false, true] {
            match search::parse(&ctx, &rt, &params, strict) {
                Ok(req) => {
                    let _ = search::execute(node.store.as_ref(), &ctx, &rt, &req);
                }
                Err(e) => assert!(!e.message.is_empty()),
            }
        }
        let _ = search::read_subset(&rt, &params, false);
    }
});
