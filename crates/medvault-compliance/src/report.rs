//! The signed report (format in docs/formats/compliance-report.md): the controls, the
//! evidence's time, each log's newest checkpoint, the node's identity document, and a hybrid
//! signature (Ed25519 + ML-DSA-65) over the report's canonical form.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_node::Node;
use medvault_node::ledger::LogId;
use medvault_node::node_identity::{NodeIdentity, verify_document};
use serde_json::{Map, Value, json};

use crate::Error;
use crate::controls::{Control, Status};

/// The report's format name and version.
pub const FORMAT: &str = "medvault-compliance-report/1";

/// Appends `v`'s canonical form to `out`: object members sorted by key (bytewise), no
/// whitespace, strings as serde_json escapes them, integers only (a float is refused: the
/// report never holds one, so that any implementation gets the same bytes).
///
/// # Errors
/// A float anywhere in `v`.
pub fn canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    match v {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            serde_json::to_writer(&mut *out, v).map_err(|e| Error::Internal(e.to_string()))?;
        }
        Value::Number(n) => {
            if n.is_f64() {
                return Err(Error::Invalid(
                    "a signed document holds integers only; this one has a fractional number"
                        .into(),
                ));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).map_err(|e| Error::Internal(e.to_string()))?;
                out.push(b':');
                canonical(&map[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The bytes signed: the format line, then the canonical form of the document without its
/// `signature` member.
fn signed_bytes(format: &str, document: &Map<String, Value>) -> Result<Vec<u8>, Error> {
    let mut body = document.clone();
    body.remove("signature");
    let mut out = format!("{format}\n").into_bytes();
    canonical(&Value::Object(body), &mut out)?;
    Ok(out)
}

/// The node's identity document and each log's newest checkpoint: what a signed document
/// (a report, a data subject's export) names as its signer and pins itself to.
///
/// # Errors
/// Store and key failures.
pub(crate) fn signer_and_pins(node: &Node) -> Result<(Value, Value), Error> {
    let identity = NodeIdentity::load(node).map_err(|e| Error::Internal(e.to_string()))?;
    let document = identity
        .document(node.ledger.base())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let pins = json!({
        "records": checkpoint(node, LogId::Records)?,
        "access": checkpoint(node, LogId::Access)?,
    });
    Ok((document, pins))
}

/// Signs `document` (a JSON object whose `format` member is `format`) with the node's hybrid
/// identity key, adding its `signature` member.
///
/// # Errors
/// Key failures; a float in the document.
pub(crate) fn sign(node: &Node, format: &str, document: &mut Value) -> Result<(), Error> {
    let identity = NodeIdentity::load(node).map_err(|e| Error::Internal(e.to_string()))?;
    let Value::Object(map) = document else {
        return Err(Error::Internal("a signed document is an object".into()));
    };
    let sig = identity
        .signing
        .sign(&signed_bytes(format, map)?)
        .map_err(|e| Error::Internal(e.to_string()))?;
    map.insert(
        "signature".into(),
        json!({
            "algorithm": "Ed25519+ML-DSA-65",
            "keyVersion": identity.version,
            "Ed25519": B64.encode(&sig.ed25519),
            "ML-DSA-65": B64.encode(&sig.ml_dsa_65),
        }),
    );
    Ok(())
}

fn checkpoint(node: &Node, log: LogId) -> Result<Value, Error> {
    let store = node.log_store(log);
    let Some((size, note)) = store.checkpoint(None)? else {
        return Ok(Value::Null);
    };
    let key = match log {
        LogId::Records => node.ledger.records().verifier(),
        LogId::Access => node.ledger.access().verifier(),
    };
    Ok(json!({"size": size, "note": note, "key": key.to_vkey()}))
}

/// Builds and signs the report of `controls`, judged on evidence read at `now_micros`.
///
/// # Errors
/// Store and key failures.
pub fn build(node: &Node, now_micros: i64, controls: &[Control]) -> Result<Value, Error> {
    let (document, checkpoints) = signer_and_pins(node)?;
    let mut summary = Map::new();
    for s in [
        Status::Pass,
        Status::Warn,
        Status::Fail,
        Status::NotApplicable,
    ] {
        let n = controls.iter().filter(|c| c.status == s).count();
        summary.insert(s.as_str().into(), json!(n));
    }
    let rows: Vec<Value> = controls
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "framework": c.framework, "reference": c.reference, "title": c.title,
                "status": c.status.as_str(), "finding": c.finding, "evidence": c.evidence,
                "logs": c.logs,
            })
        })
        .collect();
    let mut report = json!({
        "format": FORMAT,
        "node": document,
        "generated": medvault_node::clock::instant(now_micros),
        "checkpoints": checkpoints,
        "summary": summary,
        "controls": rows,
    });
    sign(node, FORMAT, &mut report)?;
    Ok(report)
}

/// What a verified report says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signing node's id.
    pub node: String,
    /// Its key fingerprint.
    pub fingerprint: String,
    /// When the report was made.
    pub generated: String,
    /// Each log's pinned checkpoint size (`None`: the log had none).
    pub records_size: Option<u64>,
    /// The access log's.
    pub access_size: Option<u64>,
    /// Controls by status: pass, warn, fail, not-applicable.
    pub summary: [u64; 4],
}

/// Why a report does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not a report, or a field is missing or malformed.
    #[error("not a valid signed document: {0}")]
    Malformed(String),
    /// The signature does not verify: the report was changed after signing.
    #[error("the signature does not verify: it was changed after the node signed it")]
    Signature,
    /// Signed by another node than the one expected.
    #[error("it was signed by a node with fingerprint {found}, not {expected}")]
    OtherNode {
        /// The expected fingerprint.
        expected: String,
        /// The report's.
        found: String,
    },
    /// A checkpoint does not verify or is not in this node's history.
    #[error("{0}")]
    Checkpoint(String),
    /// The node could not be read.
    #[error("{0}")]
    Node(#[from] Error),
}

fn malformed(what: &str) -> VerifyError {
    VerifyError::Malformed(what.into())
}

/// Checks `report`: its format, the node document's proof, the signature over the canonical
/// form, each checkpoint's signature by the log key the report names, and (given `expected`)
/// the signing node's fingerprint. With `node`, also that each pinned checkpoint is one that
/// node signed and still holds, so the report was produced from this history.
///
/// # Errors
/// The first check that fails.
pub fn verify(
    report: &Value,
    expected: Option<&str>,
    node: Option<&Node>,
) -> Result<Verified, VerifyError> {
    let signed = verify_signed(report, FORMAT, expected, node)?;
    let map = signed.map;
    let count = |s: &str| map["summary"][s].as_u64().unwrap_or(0);
    Ok(Verified {
        node: signed.node,
        fingerprint: signed.fingerprint,
        generated: map["generated"].as_str().unwrap_or_default().to_owned(),
        records_size: signed.sizes[0],
        access_size: signed.sizes[1],
        summary: [
            count("pass"),
            count("warn"),
            count("fail"),
            count("not-applicable"),
        ],
    })
}

/// A signed document that verified.
pub(crate) struct Signed<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) node: String,
    pub(crate) fingerprint: String,
    /// Each log's pinned checkpoint size (records, access).
    pub(crate) sizes: [Option<u64>; 2],
}

/// Checks a signed document of `format`: the node document's proof, the signature over the
/// canonical form, each pinned checkpoint (and, given `node`, that it is in that node's
/// history), and (given `expected`) the signer's fingerprint.
///
/// # Errors
/// The first check that fails.
pub(crate) fn verify_signed<'a>(
    document: &'a Value,
    format: &str,
    expected: Option<&str>,
    node: Option<&Node>,
) -> Result<Signed<'a>, VerifyError> {
    let Value::Object(map) = document else {
        return Err(malformed("not a JSON object"));
    };
    if map.get("format").and_then(Value::as_str) != Some(format) {
        return Err(malformed(&format!("format is not {format}")));
    }
    let doc = verify_document(map.get("node").ok_or_else(|| malformed("node missing"))?)
        .map_err(|e| VerifyError::Malformed(format!("node document: {e}")))?;
    let sig = map
        .get("signature")
        .ok_or_else(|| malformed("signature missing"))?;
    // The signature's own members are outside what it signs: each must be exactly as made.
    let members = sig.as_object().map(|m| {
        let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    });
    if members.as_deref() != Some(&["Ed25519", "ML-DSA-65", "algorithm", "keyVersion"][..])
        || sig["algorithm"] != "Ed25519+ML-DSA-65"
        || sig["keyVersion"].as_u64() != Some(u64::from(doc.version))
    {
        return Err(malformed(
            "signature must hold exactly algorithm Ed25519+ML-DSA-65, the node document's keyVersion, Ed25519 and ML-DSA-65",
        ));
    }
    let part = |name: &str| -> Result<Vec<u8>, VerifyError> {
        sig.get(name)
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| malformed(&format!("signature.{name} missing or not base64")))
    };
    let signature = medvault_crypto::HybridSignature {
        ed25519: part("Ed25519")?,
        ml_dsa_65: part("ML-DSA-65")?,
    };
    let bytes = signed_bytes(format, map).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if !medvault_crypto::hybrid_verify(&doc.signing, &bytes, &signature) {
        return Err(VerifyError::Signature);
    }
    if let Some(expected) = expected
        && expected != doc.fingerprint
    {
        return Err(VerifyError::OtherNode {
            expected: expected.into(),
            found: doc.fingerprint,
        });
    }
    let mut sizes = [None, None];
    for (i, (name, log)) in [("records", LogId::Records), ("access", LogId::Access)]
        .into_iter()
        .enumerate()
    {
        let cp = &map["checkpoints"][name];
        if cp.is_null() {
            continue;
        }
        let note_text = cp["note"]
            .as_str()
            .ok_or_else(|| malformed(&format!("checkpoints.{name}.note missing")))?;
        let key = cp["key"]
            .as_str()
            .and_then(|k| medvault_ledger::VerifierKey::parse_vkey(k).ok())
            .ok_or_else(|| malformed(&format!("checkpoints.{name}.key missing or malformed")))?;
        let note = medvault_ledger::Note::parse(note_text.as_bytes())
            .map_err(|e| VerifyError::Checkpoint(format!("the {name} log's checkpoint: {e}")))?;
        key.verify(&note).map_err(|_| {
            VerifyError::Checkpoint(format!(
                "the {name} log's checkpoint is not signed by the key it names"
            ))
        })?;
        let parsed = medvault_ledger::Checkpoint::parse(&note.text)
            .map_err(|e| VerifyError::Checkpoint(format!("the {name} log's checkpoint: {e}")))?;
        if cp["size"].as_u64() != Some(parsed.size) {
            return Err(malformed(&format!(
                "checkpoints.{name}.size does not match its note"
            )));
        }
        if let Some(node) = node {
            let ours = match log {
                LogId::Records => node.ledger.records().verifier(),
                LogId::Access => node.ledger.access().verifier(),
            };
            if ours != key {
                return Err(VerifyError::Checkpoint(format!(
                    "the {name} log's checkpoint key is not this node's"
                )));
            }
            let held = node
                .log_store(log)
                .checkpoint(Some(parsed.size))
                .map_err(|e| VerifyError::Node(e.into()))?;
            let same = held
                .as_ref()
                .and_then(|(_, t)| medvault_ledger::Note::parse(t.as_bytes()).ok())
                .is_some_and(|n| n.text == note.text);
            if !same {
                return Err(VerifyError::Checkpoint(format!(
                    "this node holds no {name} checkpoint of size {} with that root: it is not from this node's history",
                    parsed.size
                )));
            }
        }
        sizes[i] = Some(parsed.size);
    }
    Ok(Signed {
        map,
        node: doc.node,
        fingerprint: doc.fingerprint,
        sizes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_sorts_keys_and_refuses_floats() {
        let v = json!({"b": [1, {"z": null, "a": "é\n"}], "a": true});
        let mut out = Vec::new();
        canonical(&v, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":true,"b":[1,{"a":"é\n","z":null}]}"#
        );
        assert!(canonical(&json!({"x": 0.5}), &mut Vec::new()).is_err());
    }
}
