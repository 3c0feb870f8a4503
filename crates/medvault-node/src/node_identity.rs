//! The node's long-lived public identity (issue 7): a hybrid signing key (Ed25519 + ML-DSA-65,
//! both signatures required) and a hybrid KEM key (X-Wing: X25519 + ML-KEM-768), published as
//! JSON at `/.well-known/medvault-node`, rotatable (`medvault node rotate-keys`, recorded in the
//! access log).
//!
//! The three keys' seeds are data keys (`@node-sign-ed25519`, `@node-sign-ml-dsa-65`,
//! `@node-kem-x-wing`), so they live in the key hierarchy like every other key. The document
//! carries a proof of possession: a hybrid signature over its own fields in a fixed text form
//! (not over JSON, whose key order and spacing are not fixed).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_core::KeyName;
use medvault_crypto::{
    HybridPublicKey, HybridSignature, HybridSigningKey, XWingKey, hybrid_verify,
};
use medvault_store::{StoreError, write_with};
use serde_json::{Value, json};

use crate::Node;
use crate::node::{KeyError, NodeError};

/// Seed of the Ed25519 half of the node's signing key.
pub const SIGN_ED25519_KEY: &KeyName = &KeyName::node("@node-sign-ed25519");
/// Seed of the ML-DSA-65 half of the node's signing key.
pub const SIGN_ML_DSA_KEY: &KeyName = &KeyName::node("@node-sign-ml-dsa-65");
/// Seed of the node's X-Wing KEM key.
pub const KEM_X_WING_KEY: &KeyName = &KeyName::node("@node-kem-x-wing");
/// The document's format name and version.
pub const FORMAT: &str = "medvault-node/1";

const NAMES: [&KeyName; 3] = [SIGN_ED25519_KEY, SIGN_ML_DSA_KEY, KEM_X_WING_KEY];

/// The node's identity keys.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The hybrid signing key.
    pub signing: HybridSigningKey,
    /// The X-Wing key.
    pub kem: XWingKey,
    /// The keys' version (1 at creation, +1 per rotation).
    pub version: u32,
    /// The node (tenant) id.
    pub node: String,
}

fn broken(e: KeyError) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn build(
    keys: &[std::sync::Arc<medvault_crypto::DataKey>],
    node: String,
) -> Result<NodeIdentity, NodeError> {
    let [ed, ml, kem] = keys else {
        return Err(NodeError::KeyMismatch(SIGN_ED25519_KEY.to_string()));
    };
    let signing = HybridSigningKey::from_data_keys(ed, ml)
        .map_err(|_| NodeError::KeyMismatch(SIGN_ML_DSA_KEY.to_string()))?;
    Ok(NodeIdentity {
        signing,
        kem: XWingKey::from_data_key(kem),
        version: ed.version(),
        node,
    })
}

impl NodeIdentity {
    /// The node's identity, its keys created on first use.
    ///
    /// # Errors
    /// [`NodeError`] if the store fails or a key does not open.
    pub fn load(node: &Node) -> Result<Self, NodeError> {
        let ring = std::sync::Arc::clone(&node.keys);
        let keys = write_with(node.store.as_ref(), move |tx| {
            NAMES
                .iter()
                .map(|n| ring.for_write(tx, n).map_err(broken))
                .collect::<Result<Vec<_>, _>>()
        })?;
        build(&keys, node.keys.tenant().to_owned())
    }

    /// Replaces all three keys with new ones of the next version, in one transaction.
    ///
    /// # Errors
    /// [`NodeError`] if the store fails.
    pub fn rotate(node: &Node) -> Result<Self, NodeError> {
        let ring = std::sync::Arc::clone(&node.keys);
        let keys = write_with(node.store.as_ref(), move |tx| {
            let keys = NAMES
                .iter()
                .map(|n| ring.renew(tx, n).map_err(broken))
                .collect::<Result<Vec<_>, _>>()?;
            // The three move together: a version mismatch would mean a half-done rotation.
            let v = keys.first().map(|k| k.version());
            if keys.iter().any(|k| Some(k.version()) != v) {
                return Err(StoreError::Backend(
                    "node identity keys are out of step".into(),
                ));
            }
            Ok(keys)
        })?;
        build(&keys, node.keys.tenant().to_owned())
    }

    /// SHA-256 over the three public keys (hex): what an administrator compares out of band
    /// before registering this node as a peer.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.signing.public_key(), &self.kem.public_key())
    }

    /// The published document, with its proof of possession.
    ///
    /// # Errors
    /// If signing fails.
    pub fn document(&self, origin: &str) -> Result<Value, medvault_crypto::CryptoError> {
        let public = self.signing.public_key();
        let kem = self.kem.public_key();
        let text = proof_text(&self.node, origin, self.version, public, &kem);
        let proof = self.signing.sign(text.as_bytes())?;
        Ok(json!({
            "format": FORMAT,
            "node": self.node,
            "origin": origin,
            "keyVersion": self.version,
            "signing": {
                "algorithm": "Ed25519+ML-DSA-65",
                "Ed25519": B64.encode(public.ed25519),
                "ML-DSA-65": B64.encode(&public.ml_dsa_65),
            },
            "kem": {"algorithm": "X-Wing", "X-Wing": B64.encode(&kem)},
            "fingerprint": fingerprint(public, &kem),
            "proof": {
                "Ed25519": B64.encode(&proof.ed25519),
                "ML-DSA-65": B64.encode(&proof.ml_dsa_65),
            },
        }))
    }
}

fn fingerprint(signing: &HybridPublicKey, kem: &[u8]) -> String {
    let mut all = Vec::with_capacity(32 + signing.ml_dsa_65.len() + kem.len());
    all.extend_from_slice(&signing.ed25519);
    all.extend_from_slice(&signing.ml_dsa_65);
    all.extend_from_slice(kem);
    format!("SHA-256:{}", hex::encode(medvault_crypto::sha256(&all)))
}

fn proof_text(
    node: &str,
    origin: &str,
    version: u32,
    signing: &HybridPublicKey,
    kem: &[u8],
) -> String {
    format!(
        "{FORMAT}\n{node}\n{origin}\n{version}\n{}\n{}\n{}\n",
        B64.encode(signing.ed25519),
        B64.encode(&signing.ml_dsa_65),
        B64.encode(kem)
    )
}

/// Another node's document, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDocument {
    /// The node id.
    pub node: String,
    /// Its ledger origin.
    pub origin: String,
    /// Its keys' version.
    pub version: u32,
    /// Its signing key.
    pub signing: HybridPublicKey,
    /// Its X-Wing public key.
    pub kem: Vec<u8>,
    /// Its fingerprint (recomputed, not taken from the document).
    pub fingerprint: String,
}

/// Parses and checks a node document: fields, key sizes, and the proof (both signatures).
///
/// # Errors
/// What is wrong with it.
pub fn verify_document(doc: &Value) -> Result<PeerDocument, String> {
    if doc["format"] != FORMAT {
        return Err(format!("not a {FORMAT} document"));
    }
    let text = |v: &Value, what: &str| -> Result<String, String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{what} missing"))
    };
    let bytes = |v: &Value, what: &str, len: usize| -> Result<Vec<u8>, String> {
        let b = B64
            .decode(v.as_str().ok_or_else(|| format!("{what} missing"))?)
            .map_err(|_| format!("{what} is not base64"))?;
        if b.len() == len {
            Ok(b)
        } else {
            Err(format!("{what} has {} bytes, not {len}", b.len()))
        }
    };
    let node = text(&doc["node"], "node")?;
    let origin = text(&doc["origin"], "origin")?;
    // One line each, so the proof's text form splits one way only.
    for (what, v) in [("node", &node), ("origin", &origin)] {
        if v.is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
            return Err(format!(
                "{what} must be 1 to 255 characters without control characters"
            ));
        }
    }
    let version = doc["keyVersion"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or("keyVersion missing")?;
    if doc["signing"]["algorithm"] != "Ed25519+ML-DSA-65" || doc["kem"]["algorithm"] != "X-Wing" {
        return Err("unsupported algorithms (want Ed25519+ML-DSA-65 and X-Wing)".into());
    }
    let ed = bytes(&doc["signing"]["Ed25519"], "signing.Ed25519", 32)?;
    let signing = HybridPublicKey {
        ed25519: ed.try_into().map_err(|_| "signing.Ed25519")?,
        ml_dsa_65: bytes(
            &doc["signing"]["ML-DSA-65"],
            "signing.ML-DSA-65",
            medvault_crypto::ML_DSA_65_PUBLIC_KEY_LEN,
        )?,
    };
    let kem = bytes(
        &doc["kem"]["X-Wing"],
        "kem.X-Wing",
        medvault_crypto::X_WING_PUBLIC_KEY_LEN,
    )?;
    let proof = HybridSignature {
        ed25519: bytes(&doc["proof"]["Ed25519"], "proof.Ed25519", 64)?,
        ml_dsa_65: bytes(
            &doc["proof"]["ML-DSA-65"],
            "proof.ML-DSA-65",
            medvault_crypto::ML_DSA_65_SIGNATURE_LEN,
        )?,
    };
    let signed = proof_text(&node, &origin, version, &signing, &kem);
    if !hybrid_verify(&signing, signed.as_bytes(), &proof) {
        return Err("the proof does not verify: the document was changed".into());
    }
    let fingerprint = fingerprint(&signing, &kem);
    if doc["fingerprint"] != fingerprint.as_str() {
        return Err("the fingerprint does not match the keys".into());
    }
    Ok(PeerDocument {
        node,
        origin,
        version,
        signing,
        kem,
        fingerprint,
    })
}

/// The newest version of the node's identity keys in the store, read-only (`None` before they
/// were first created).
fn stored_version(node: &Node) -> Result<Option<u32>, StoreError> {
    Ok(node
        .store
        .data_key(SIGN_ED25519_KEY)?
        .map(|row| row.key_version))
}

/// The signed node document served at `/.well-known/medvault-node`, built once per key version
/// and cached (an anonymous request costs one key-row read, not a signature or a write).
#[derive(Debug, Default)]
pub struct PublishedDocument(std::sync::Mutex<Option<(u32, Value)>>);

impl PublishedDocument {
    /// The document for the node's newest identity keys (rebuilt when another process rotated
    /// them). Blocking.
    ///
    /// # Errors
    /// Store or key failures (internal).
    pub fn get(&self, node: &Node) -> Result<Value, crate::Error> {
        let version = stored_version(node)?;
        if let (Some(v), Ok(c)) = (version, self.0.lock())
            && let Some((cached, doc)) = c.as_ref()
            && *cached == v
        {
            return Ok(doc.clone());
        }
        let id = NodeIdentity::load(node).map_err(|e| crate::Error::internal(&e))?;
        let doc = id
            .document(node.ledger.base())
            .map_err(|e| crate::Error::internal(&e))?;
        if let Ok(mut c) = self.0.lock() {
            *c = Some((id.version, doc.clone()));
        }
        Ok(doc)
    }
}
