//! What the known-answer tests share: reading a vector file and its hex fields.

use serde_json::Value;

/// The JSON vector file `path`, relative to the workspace's `tests/vectors/`.
pub(crate) fn load(path: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/vectors")
        .join(path);
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// A hex string field's bytes.
pub(crate) fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}
