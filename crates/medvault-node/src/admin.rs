//! Sensitive administration, shared by the CLI (`medvault keys rotate`, `medvault patient erase`,
//! `medvault record expunge`) and the API (`POST /admin/keys/rotate`,
//! `POST /admin/patients/{id}/erase`): rotating the key-encryption key, crypto-shredding a
//! patient, expunging a superseded version. Who may do these is the server's (or the CLI's)
//! gate; this module does them.

use std::sync::Arc;

use medvault_core::{Compartment, KeyName, ResourceId, ResourceType};
use medvault_crypto::Kek;
use medvault_store::{StoreError, StoreRead, write_with};

use crate::error::Error;
use crate::node::Node;

/// The records database's meta key holding when KEK `version` was made (microseconds; nodes
/// made before it was recorded have none for their first versions).
pub fn kek_created_meta(version: u32) -> String {
    format!("kek_created_v{version}")
}

/// Adds a KEK version and rewraps every live data key under it, 256 per transaction; `progress`
/// hears (done, total). Returns the new KEK version and how many keys were rewrapped.
///
/// # Errors
/// Store failures; a data key that does not open.
pub fn rotate_keys(node: &Node, mut progress: impl FnMut(u64, u64)) -> Result<(u32, usize), Error> {
    let store = node.store.as_ref();
    let next = store.keks()?.last().map_or(1, |(v, _)| v + 1);
    let kek = Kek::generate(next).map_err(|e| Error::internal(&e))?;
    let wrapped = node
        .keys
        .wrap_new_kek(&kek)
        .map_err(|e| Error::internal(&e))?;
    let now = node.clock.now_micros();
    write_with(store, move |tx| {
        tx.add_kek(next, &wrapped)?;
        tx.set_meta(&kek_created_meta(next), &now.to_string())
    })?;
    let names = store.data_key_names()?;
    let total = names.len() as u64;
    let kek = Arc::new(kek);
    let mut rewrapped = 0;
    let mut done = 0;
    for chunk in names.chunks(256) {
        let (keys, kek, batch) = (Arc::clone(&node.keys), Arc::clone(&kek), chunk.to_vec());
        rewrapped += write_with(store, move |tx| {
            let mut n = 0;
            for name in &batch {
                let Some(row) = tx.data_key(name)? else {
                    continue;
                };
                let (Some(old), Some(w)) = (row.kek_version, row.wrapped) else {
                    continue;
                };
                if old == next {
                    continue;
                }
                let fail = |what: String| StoreError::Backend(what.into());
                let old_kek = keys.kek(&*tx, old).map_err(|e| fail(e.to_string()))?;
                let dek = old_kek
                    .unwrap(keys.tenant(), name.as_str(), row.key_version, &w)
                    .map_err(|_| {
                        fail(format!(
                            "data key {} does not open",
                            crate::node::redacted(name.as_str())
                        ))
                    })?;
                let nw = kek
                    .wrap(keys.tenant(), &dek)
                    .map_err(|e| fail(e.to_string()))?;
                tx.put_data_key(name, row.key_version, next, &nw)?;
                n += 1;
            }
            Ok(n)
        })?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    Ok((next, rewrapped))
}

/// What erasing a patient did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// The key was destroyed; this many resources in the compartment are unreadable now.
    Now(u64),
    /// The key had been destroyed before (the WAL truncation was retried).
    Already,
}

/// The register kind of a legal hold (kept by medvault-compliance): while one is in force for
/// a patient, their records cannot be erased.
pub const LEGAL_HOLD: &str = "legal-hold";

/// The register kind of a restriction of processing (GDPR Art. 18): while one is in force for
/// a patient the policy's `processing-restricted` rule stops all processing of their records
/// but storage (the access decisions read it with the patient's other facts).
pub const PROCESSING_RESTRICTION: &str = "processing-restriction";

/// True if a register entry of `kind` about `patient` is open (in force) in `store`.
///
/// # Errors
/// Store failures.
pub fn in_force(store: &dyn StoreRead, kind: &str, patient: &str) -> Result<bool, Error> {
    Ok(store.register_in_force(kind, &format!("Patient/{patient}"))?)
}

/// True if a legal hold is in force for `patient`.
///
/// # Errors
/// Store failures.
pub fn under_legal_hold(node: &Node, patient: &ResourceId) -> Result<bool, Error> {
    in_force(node.store.as_ref(), LEGAL_HOLD, patient.as_str())
}

/// Crypto-shreds a patient: destroys the compartment's data key.
///
/// # Errors
/// 404 when nothing is stored for the patient; 409 while a legal hold is in force; store
/// failures.
pub fn erase_patient(node: &Node, patient: &ResourceId) -> Result<Erased, Error> {
    if under_legal_hold(node, patient)? {
        return Err(Error::conflict(
            "this patient's records are under a legal hold: release the hold before erasing",
        ));
    }
    let name = KeyName::from(&Compartment::Patient(patient.clone()));
    let Some(row) = node.store.data_key(&name)? else {
        return Err(Error::not_found("no data is stored for that patient"));
    };
    let already = row.wrapped.is_none();
    // Destroying again is harmless and retries the WAL truncation a failed run may have left.
    let key = name.clone();
    let n = write_with(node.store.as_ref(), move |tx| tx.destroy_data_key(&key))?;
    node.keys.forget(name.as_str());
    Ok(if already {
        Erased::Already
    } else {
        Erased::Now(n)
    })
}

/// Expunges one superseded version of a resource (`ops::expunge`): its body is removed, its
/// ledger commitment stays and a new leaf records the expunged state.
///
/// # Errors
/// 404 unknown, 409 the current version, 410 an erased patient's; store failures.
pub fn expunge_version(
    node: &Node,
    rt: &ResourceType,
    id: &ResourceId,
    version: u64,
) -> Result<Expunged, Error> {
    crate::ops::served_type(&node.fhir, rt)?;
    let ctx = crate::ctx::Ctx::unrestricted_node_work(node);
    let (rt, id) = (rt.clone(), id.clone());
    let out = write_with(node.store.as_ref(), move |tx| {
        Ok(crate::ops::expunge(tx, &ctx, &rt, &id, version)?)
    })?;
    // `ops::expunge` names the version only when it expunged it now.
    Ok(if out.location.is_some() {
        Expunged::Now
    } else {
        Expunged::Already
    })
}

/// What [`expunge_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expunged {
    /// The version's body was removed now.
    Now,
    /// It had been expunged before; nothing changed.
    Already,
}
