//! Bulk load (`medvault import`): FHIR Bundles (transaction, batch or collection) and ndjson
//! files, each applied **all or nothing** in one store transaction, on the node's authority.
//!
//! Ids are kept: an entry that creates a resource carrying an `id` (Synthea's, another
//! server's export) is stored under that id (as `PUT Type/id`), so loading the same file twice
//! leaves one resource per id (a second version), never a duplicate. Every resource is
//! validated, sealed under its patient's key, indexed and ledgered exactly as a write through
//! the API. What is refused names the entry (`entry 12`) or the ndjson line (`line 7`), never
//! the content.

use std::collections::BTreeMap;

use medvault_core::{ResourceId, ResourceType};
use medvault_store::{Store, write_with};
use serde_json::{Value, json};

use crate::bundle;
use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};

/// Most resources one imported file may hold (it is one transaction; split larger exports).
pub const MAX_IMPORT_ENTRIES: usize = 50_000;

/// What one file added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Resources written.
    pub resources: usize,
    /// Resources written, by type.
    pub by_type: BTreeMap<String, usize>,
}

/// One file's entries, each with how an error names it (`entry 3`, `line 7`).
#[derive(Debug, Default)]
pub struct Entries {
    entries: Vec<Value>,
    labels: Vec<String>,
}

impl Entries {
    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push(&mut self, entry: Value, label: String) -> Result<(), Error> {
        if self.entries.len() == MAX_IMPORT_ENTRIES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                IssueCode::TooCostly,
                format!(
                    "one file may hold at most {MAX_IMPORT_ENTRIES} resources (it is loaded as one transaction); split it"
                ),
            ));
        }
        self.entries.push(entry);
        self.labels.push(label);
        Ok(())
    }
}

fn invalid(label: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Invalid,
        IssueCode::Structure,
        format!("{label}: {why}"),
    )
}

/// The write an entry makes in an import: creations of resources that carry an id become
/// `PUT Type/id`; other writes stay as they are; reads are refused.
fn import_entry(
    label: &str,
    resource: Option<&Value>,
    request: Option<&Value>,
) -> Result<Value, Error> {
    let resource = resource.ok_or_else(|| invalid(label, "the entry has no resource"))?;
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(label, "the resource has no resourceType"))?;
    let own_id = resource
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| ResourceId::new(id).is_ok() && ResourceType::new(rt).is_ok());
    let method = request
        .and_then(|r| r.get("method"))
        .and_then(Value::as_str);
    let url = request.and_then(|r| r.get("url")).and_then(Value::as_str);
    let keep_id = |id: &str| json!({"method": "PUT", "url": format!("{rt}/{id}")});
    let new_request = match (method, own_id) {
        // A plain create (not conditional) of a resource with an id keeps the id.
        (None, Some(id)) => keep_id(id),
        (Some("POST"), Some(id)) if url == Some(rt) => keep_id(id),
        (None, None) => json!({"method": "POST", "url": rt}),
        (Some("POST" | "PUT" | "DELETE" | "PATCH"), _) => request.cloned().unwrap_or(Value::Null),
        (Some(m), _) => {
            return Err(invalid(
                label,
                format!("an import carries writes only, not {m}"),
            ));
        }
    };
    Ok(json!({"resource": resource, "request": new_request}))
}

/// The entries of a Bundle file (`transaction`, `batch` or `collection`).
///
/// # Errors
/// 400 for anything but such a Bundle, or an entry without a resource or with a read.
pub fn bundle_entries(bundle: &Value) -> Result<Entries, Error> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(invalid(
            "the file",
            "is not a FHIR Bundle (ndjson files end in .ndjson)",
        ));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction" | "batch" | "collection") => {}
        _ => {
            return Err(invalid(
                "the Bundle",
                "Bundle.type must be transaction, batch or collection",
            ));
        }
    }
    let mut out = Entries::default();
    let items = match bundle.get("entry") {
        None => return Ok(out),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("the Bundle", "Bundle.entry must be an array")),
    };
    for (i, e) in items.iter().enumerate() {
        let label = format!("entry {i}");
        let mut entry = import_entry(&label, e.get("resource"), e.get("request"))?;
        if let Some(full_url) = e.get("fullUrl") {
            entry["fullUrl"] = full_url.clone();
        }
        out.push(entry, label)?;
    }
    Ok(out)
}

/// The entries of an ndjson file: one resource per line (blank lines skipped).
///
/// # Errors
/// 400 naming the first line that is not a JSON object with a `resourceType`.
pub fn ndjson_entries(text: &[u8]) -> Result<Entries, Error> {
    let mut out = Entries::default();
    for (n, line) in text.split(|b| *b == b'\n').enumerate() {
        let label = format!("line {}", n + 1);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let resource = medvault_fhir::strict_json::from_slice(line).map_err(|_| {
            invalid(
                &label,
                "is not one JSON resource (duplicate keys, bad syntax or not UTF-8)",
            )
        })?;
        if !resource.is_object() {
            return Err(invalid(&label, "is not a JSON object"));
        }
        let entry = import_entry(&label, Some(&resource), None)?;
        out.push(entry, label)?;
    }
    Ok(out)
}

/// The entries of a file's bytes: an ndjson file's lines, or a JSON Bundle.
///
/// # Errors
/// As [`ndjson_entries`] and [`bundle_entries`]; 400 for bytes that are not one JSON document.
pub fn file_entries(bytes: &[u8], ndjson: bool) -> Result<Entries, Error> {
    if ndjson {
        return ndjson_entries(bytes);
    }
    let bundle = medvault_fhir::strict_json::from_slice(bytes).map_err(|_| {
        invalid(
            "the file",
            "is not a JSON FHIR Bundle (duplicate keys, bad syntax or not UTF-8)",
        )
    })?;
    bundle_entries(&bundle)
}

/// Writes `entries` as one transaction: all of them, or nothing.
///
/// # Errors
/// The first failing entry's error, named by its label; nothing is written.
pub fn load(store: &dyn Store, ctx: &Ctx, entries: Entries) -> Result<Loaded, Error> {
    let Entries { entries, labels } = entries;
    let mut loaded = Loaded::default();
    for e in &entries {
        if let Some(t) = e.pointer("/resource/resourceType").and_then(Value::as_str) {
            *loaded.by_type.entry(t.to_owned()).or_default() += 1;
            loaded.resources += 1;
        }
    }
    let ctx2 = ctx.clone();
    write_with(store, move |tx| {
        Ok(bundle::transaction_entries(tx, &ctx2, &entries, "")?)
    })
    .map_err(|e| relabel(Error::from(e), &labels))?;
    Ok(loaded)
}

/// Replaces the transaction's `entry N:` with the file's own name for that entry (`line 7:`).
fn relabel(e: Error, labels: &[String]) -> Error {
    let renamed = e
        .message
        .strip_prefix("entry ")
        .and_then(|rest| rest.split_once(": "))
        .and_then(|(n, why)| Some((labels.get(n.parse::<usize>().ok()?)?, why)))
        .map(|(label, why)| format!("{label}: {why}"));
    match renamed {
        Some(message) => Error { message, ..e },
        None => e,
    }
}
