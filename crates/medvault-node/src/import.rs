//! Bulk load (`medvault import`): FHIR Bundles (transaction, batch or collection) and ndjson
//! files, each applied **all or nothing** in one store transaction, on the node's authority.
//!
//! An import **only adds resources**. Ids are kept: an entry that creates a resource carrying
//! an `id` (Synthea's, another server's export) is stored under that id — but if a resource of
//! that type and id already exists on the node (even deleted), the whole file is refused before
//! anything is written, checked inside the write transaction itself. Replacing existing
//! resources (`PUT Type/id`, and creations under an id already there) takes [`Mode::Update`]
//! (`medvault import --update`). Deletes, patches, reads and conditional requests are refused.
//!
//! Every resource is bounded as through the API ([`ops::MAX_RESOURCE_BYTES`], the
//! [`ops::LARGE_TYPES`] at [`MAX_LARGE_RESOURCE_BYTES`], the per-resource index caps), a file
//! at [`MAX_IMPORT_FILE_BYTES`], [`MAX_IMPORT_ENTRIES`] and [`MAX_IMPORT_INDEX_KEYS`], so one
//! file's work on the single writer stays bounded. Every resource is validated, sealed under its
//! patient's key, indexed and ledgered exactly as a write through the API. What is refused names
//! the entry (`entry 12`) or the ndjson line (`line 7`), never the content.

use std::collections::{BTreeMap, HashSet};

use medvault_core::{ResourceId, ResourceType};
use medvault_store::{Store, StoreError, StoreTx, submit_with, write_with};
use serde_json::{Map, Value, json};

use crate::bundle;
use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::ops;

/// Most resources one imported file may hold (it is one transaction; split larger exports).
pub const MAX_IMPORT_ENTRIES: usize = 50_000;

/// Largest file an import reads (it is parsed whole and loaded as one transaction).
pub const MAX_IMPORT_FILE_BYTES: u64 = 512 * 1024 * 1024;

/// Largest JSON of one resource of the [`ops::LARGE_TYPES`] in an import: the API's request body
/// limit (`medvault serve --max-body-bytes`, by default 8 MiB). Other types are held to
/// [`ops::MAX_RESOURCE_BYTES`], as through the API.
pub const MAX_LARGE_RESOURCE_BYTES: usize = 8 * 1024 * 1024;

/// Most blind-index entries one imported file may add in all (the API's transaction Bundle cap
/// is [`ops::MAX_BUNDLE_INDEX_KEYS`]): bounds the time one file holds the single writer.
pub const MAX_IMPORT_INDEX_KEYS: usize = 2_000_000;

/// What an import does with resources that already exist on the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Only adds: a resource whose `Type/id` exists refuses the file; `PUT` is refused.
    #[default]
    AddOnly,
    /// Also replaces: resources with an id are written as `PUT Type/id` (a new version of an
    /// existing one); explicit `PUT Type/id` entries are taken.
    Update,
}

/// What one file added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Resources in the file.
    pub resources: usize,
    /// Of those, resources the node already held exactly as the file has them (left as they
    /// were: an Organization every Synthea record repeats).
    pub unchanged: usize,
    /// Resources written, by type (the unchanged ones not counted).
    pub by_type: BTreeMap<String, usize>,
}

impl Loaded {
    /// Resources written (those in the file but the unchanged ones).
    pub fn written(&self) -> usize {
        self.resources.saturating_sub(self.unchanged)
    }

    /// Takes out of the counts by type the resources a commit left as they were.
    fn left_unchanged(mut self, types: Vec<String>) -> Self {
        self.unchanged = types.len();
        for t in types {
            if let Some(n) = self.by_type.get_mut(&t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_type.remove(&t);
                }
            }
        }
        self
    }
}

/// One file's entries, each with how an error names it (`entry 3`, `line 7`).
#[derive(Debug, Default)]
pub struct Entries {
    entries: Vec<Value>,
    labels: Vec<String>,
    /// The `Type/id`s that must not exist yet (with their entry's position), checked in the
    /// write transaction: empty under [`Mode::Update`].
    new_ids: Vec<(usize, ResourceType, ResourceId)>,
    /// Every `Type/id` the file names, so that one file does not write an id twice.
    seen: HashSet<(ResourceType, ResourceId)>,
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

    /// The resource types of the entries (one per entry).
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter_map(|e| e.pointer("/resource/resourceType").and_then(Value::as_str))
    }

    fn push(&mut self, entry: Planned, label: String, mode: Mode) -> Result<(), Error> {
        if self.entries.len() == MAX_IMPORT_ENTRIES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                IssueCode::TooCostly,
                format!(
                    "one file may hold at most {MAX_IMPORT_ENTRIES} resources (it is loaded as one transaction); split it"
                ),
            ));
        }
        if let Some((rt, id)) = entry.keeps {
            if !self.seen.insert((rt.clone(), id.clone())) && mode == Mode::AddOnly {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    IssueCode::Duplicate,
                    format!(
                        "{label}: {rt}/{id} appears earlier in this file (an import only adds resources; pass --update to replace existing ones)"
                    ),
                ));
            }
            if mode == Mode::AddOnly {
                self.new_ids.push((self.entries.len(), rt, id));
            }
        }
        self.entries.push(entry.entry);
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

/// An entry's refusal because of what it asks to do (not because of its content).
fn not_taken(label: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Invalid,
        IssueCode::NotSupported,
        format!("{label}: {why}"),
    )
}

/// The transaction entry an import makes of a file's entry, and the `Type/id` it keeps.
struct Planned {
    entry: Value,
    keeps: Option<(ResourceType, ResourceId)>,
}

/// The write an entry makes in an import: a creation (`POST Type`, or no request at all) of a
/// resource that carries an id keeps it (`PUT Type/id`, on a `Type/id` checked not to exist
/// unless `mode` is [`Mode::Update`]); an explicit `PUT Type/id` only under [`Mode::Update`].
/// Deletes, patches, reads, conditional requests and urls other than the resource's own are
/// refused. (Nothing of the request is echoed in a refusal: a file's text may be anything.)
fn import_entry(
    label: &str,
    resource: Option<Value>,
    request: Option<&Value>,
    mode: Mode,
) -> Result<Planned, Error> {
    let empty = Map::new();
    let request = match request {
        None => &empty,
        Some(Value::Object(r)) => r,
        Some(_) => return Err(invalid(label, "request must be an object")),
    };
    let text = |key: &str| -> Result<Option<&str>, Error> {
        match request.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(invalid(
                label,
                format_args!("request.{key} must be a string"),
            )),
        }
    };
    let method = text("method")?;
    let url = text("url")?;
    let if_match = text("ifMatch")?;
    // What the entry asks to do, before what it carries (a DELETE carries nothing).
    match method {
        None if !request.is_empty() => {
            return Err(invalid(label, "request.method is missing"));
        }
        None | Some("POST") => {}
        Some("PUT") if mode == Mode::Update => {}
        Some("PUT") => {
            return Err(not_taken(
                label,
                "a PUT replaces a resource: an import only adds resources (pass --update to replace existing ones)",
            ));
        }
        Some("DELETE") => {
            return Err(not_taken(label, "a DELETE: an import only adds resources"));
        }
        Some("PATCH") => {
            return Err(not_taken(label, "a PATCH: an import only adds resources"));
        }
        Some("GET" | "HEAD") => {
            return Err(not_taken(
                label,
                "an import carries resources to add, not reads",
            ));
        }
        Some(_) => {
            return Err(not_taken(
                label,
                "request.method is not one an import takes (POST, or PUT with --update)",
            ));
        }
    }
    for conditional in ["ifNoneExist", "ifNoneMatch", "ifModifiedSince"] {
        if request.contains_key(conditional) {
            return Err(not_taken(
                label,
                format_args!("an import takes no conditional requests (request.{conditional})"),
            ));
        }
    }
    if url.is_some_and(|u| u.contains('?')) {
        return Err(not_taken(
            label,
            "an import takes no conditional requests (a url with a query)",
        ));
    }
    if if_match.is_some() && method != Some("PUT") {
        return Err(not_taken(
            label,
            "request.ifMatch is only taken on a PUT (with --update)",
        ));
    }
    let resource = resource.ok_or_else(|| invalid(label, "the entry has no resource"))?;
    let rt_name = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(label, "the resource has no resourceType"))?;
    let rt = ResourceType::new(rt_name)
        .map_err(|_| invalid(label, "the resource's resourceType is not a type name"))?;
    if rt == crate::subscriptions::SUBSCRIPTION {
        // A subscription needs its owner and a handshake, which only the API gives it.
        return Err(not_taken(
            label,
            "a Subscription is created through the API (POST /fhir/Subscription), not imported",
        ));
    }
    let id = match resource.get("id") {
        None => None,
        Some(Value::String(s)) => Some(ResourceId::new(s).map_err(|e| invalid(label, e))?),
        Some(_) => return Err(invalid(label, "the resource's id must be a string")),
    };
    let own_url = id.as_ref().map(|id| format!("{rt}/{id}"));
    if method == Some("POST") && url != Some(rt_name) {
        return Err(not_taken(
            label,
            format_args!("a POST in an import must have the url {rt} (its resource's type)"),
        ));
    }
    if method == Some("PUT") && (own_url.is_none() || url != own_url.as_deref()) {
        return Err(not_taken(
            label,
            "a PUT in an import must have the url Type/id of the resource it carries (with its id)",
        ));
    }
    let new_request = match &own_url {
        Some(u) => {
            let mut r = json!({"method": "PUT", "url": u});
            if let Some(m) = if_match {
                r["ifMatch"] = json!(m);
            }
            r
        }
        // A creation: given its id before the transaction (`bundle::prepare_writes`), and run
        // before the resources that keep theirs, as in a transaction Bundle.
        None => json!({"method": "POST", "url": rt_name}),
    };
    Ok(Planned {
        entry: json!({"resource": resource, "request": new_request}),
        keeps: id.map(|id| (rt, id)),
    })
}

/// The entries of a Bundle file (`transaction`, `batch` or `collection`).
///
/// # Errors
/// 400 for anything but such a Bundle, or an entry without a resource, with a request an
/// import does not take (see [`Mode`]); 409 for an id the file names twice ([`Mode::AddOnly`]).
pub fn bundle_entries(mut bundle: Value, mode: Mode) -> Result<Entries, Error> {
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
    let items = match bundle.get_mut("entry").map(Value::take) {
        None => return Ok(out),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("the Bundle", "Bundle.entry must be an array")),
    };
    for (i, mut e) in items.into_iter().enumerate() {
        let label = format!("entry {i}");
        let resource = e.get_mut("resource").map(Value::take);
        let mut planned = import_entry(&label, resource, e.get("request"), mode)?;
        if let Some(full_url) = e.get_mut("fullUrl").map(Value::take) {
            planned.entry["fullUrl"] = full_url;
        }
        out.push(planned, label, mode)?;
    }
    Ok(out)
}

/// The entries of an ndjson file: one resource per line (blank lines skipped).
///
/// # Errors
/// 400 naming the first line that is not a JSON object with a `resourceType`; 409 for an id
/// the file names twice ([`Mode::AddOnly`]).
pub fn ndjson_entries(text: &[u8], mode: Mode) -> Result<Entries, Error> {
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
        let planned = import_entry(&label, Some(resource), None, mode)?;
        out.push(planned, label, mode)?;
    }
    Ok(out)
}

/// The entries of a file's bytes: an ndjson file's lines, or a JSON Bundle.
///
/// # Errors
/// As [`ndjson_entries`] and [`bundle_entries`]; 400 for bytes that are not one JSON document;
/// 413 past [`MAX_IMPORT_FILE_BYTES`].
pub fn file_entries(bytes: &[u8], ndjson: bool, mode: Mode) -> Result<Entries, Error> {
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_IMPORT_FILE_BYTES {
        return Err(file_too_large());
    }
    if ndjson {
        return ndjson_entries(bytes, mode);
    }
    let bundle = medvault_fhir::strict_json::from_slice(bytes).map_err(|_| {
        invalid(
            "the file",
            "is not a JSON FHIR Bundle (duplicate keys, bad syntax or not UTF-8)",
        )
    })?;
    bundle_entries(bundle, mode)
}

/// The refusal of a file over [`MAX_IMPORT_FILE_BYTES`] (given before it is read).
pub fn file_too_large() -> Error {
    Error::new(
        ErrorKind::TooLarge,
        IssueCode::TooLong,
        format!(
            "the file is larger than an import takes ({} MiB; it is loaded as one transaction); split it",
            MAX_IMPORT_FILE_BYTES / (1024 * 1024)
        ),
    )
}

/// One file's entries made ready to write ([`plan`]): bounded, their references to one
/// another resolved, validated and indexed, off the single writer.
#[derive(Debug)]
pub struct Plan {
    ops: Vec<bundle::EntryOp>,
    labels: Vec<String>,
    /// As [`Entries::new_ids`].
    new_ids: Vec<(usize, ResourceType, ResourceId)>,
    loaded: Loaded,
    /// Set by [`Plan::staging_index`].
    stage_index: bool,
}

impl Plan {
    /// Resources in the file.
    pub fn resources(&self) -> usize {
        self.loaded.resources
    }

    /// Bulk load: the index entries of the resources this file adds are staged, not inserted
    /// one by one, when the file needs no index lookup of its own (every entry was prepared
    /// off the writer); [`merge_staged_index`] then moves them into the index in key order,
    /// once for many files. Until then searches do not find those resources (reads by id
    /// do). A file that does need lookups merges what is staged first. The types the node's
    /// own decisions look up ([`crate::authz::DECIDING_TYPES`]: consents, care relationships,
    /// patients, subscriptions) are never staged. Staging stores nothing more and nothing
    /// less: the same blind values, in the same transaction as the resources.
    #[must_use]
    pub fn staging_index(mut self) -> Self {
        self.stage_index = true;
        self
    }
}

/// Moves the index entries staged by [`Plan::staging_index`] plans into the index (one write
/// transaction). Returns how many entries there were.
///
/// # Errors
/// What the store answers.
pub fn merge_staged_index(store: &dyn Store) -> Result<u64, Error> {
    Ok(write_with(store, |tx| tx.merge_staged_index())?)
}

/// Makes `entries` ready to write, without the writer: checks their size and index load,
/// resolves their references to one another, validates and indexes them (the work an import
/// does per resource, so one file is planned while the previous one commits).
///
/// # Errors
/// The first failing entry's error, named by its label.
pub fn plan(ctx: &Ctx, entries: Entries) -> Result<Plan, Error> {
    let Entries {
        entries,
        labels,
        new_ids,
        ..
    } = entries;
    let resources: Vec<&Value> = entries.iter().map(|e| &e["resource"]).collect();
    ops::check_sizes(&resources, Some(MAX_LARGE_RESOURCE_BYTES))
        .map_err(|(at, e)| labelled(e, Some(at), &labels))?;
    let mut loaded = Loaded::default();
    for r in &resources {
        if let Some(t) = r.get("resourceType").and_then(Value::as_str) {
            *loaded.by_type.entry(t.to_owned()).or_default() += 1;
            loaded.resources += 1;
        }
    }
    drop(resources);
    // Every entry is a creation or a `PUT Type/id` (see `import_entry`): the file's references
    // to its own entries are resolved now, as the transaction would, so an entry the node
    // already holds unchanged can be left out without leaving references to it dangling.
    let ops = bundle::prepare_writes(ctx, entries).map_err(|e| relabel(e, &labels))?;
    bundle::check_index_total(ctx, &ops, MAX_IMPORT_INDEX_KEYS, "the file")
        .map_err(|(at, e)| labelled(e, at, &labels))?;
    Ok(Plan {
        ops,
        labels,
        new_ids,
        loaded,
        stage_index: false,
    })
}

/// Writes a [`Plan`] as one transaction: all of it, or nothing. The ids that must be new are
/// checked inside the transaction, before anything of it is written.
///
/// # Errors
/// The first failing entry's error, named by its label; nothing is written.
pub fn commit(store: &dyn Store, ctx: &Ctx, plan: Plan) -> Result<Loaded, Error> {
    let (op, loaded) = commit_op(ctx, plan);
    Ok(loaded.left_unchanged(write_with(store, op)?))
}

/// [`commit`] without waiting: `done` gets what it answers once the transaction is durable (or
/// refused), on the store's writer thread (it must not block). Plans submitted one after the
/// other commit in that order, several in one group commit when they queue up (which an import
/// keeping a few in flight does: the writer then writes each touched index page once for them
/// all).
pub fn submit(
    store: &dyn Store,
    ctx: &Ctx,
    plan: Plan,
    done: impl FnOnce(Result<Loaded, Error>) + Send + 'static,
) {
    let (op, loaded) = commit_op(ctx, plan);
    submit_with(store, op, move |result| {
        done(
            result
                .map_err(Error::from)
                .map(|unchanged| loaded.left_unchanged(unchanged)),
        );
    });
}

/// The write transaction of a plan (answering the types of the resources it left unchanged,
/// one per resource), and what it adds.
fn commit_op(
    ctx: &Ctx,
    plan: Plan,
) -> (
    impl FnOnce(&mut dyn StoreTx) -> Result<Vec<String>, StoreError> + Send + 'static,
    Loaded,
) {
    let Plan {
        ops,
        labels,
        new_ids,
        loaded,
        stage_index,
    } = plan;
    // Lookups in the transaction (a patient named by identifier) must see every staged entry.
    let stage_index = stage_index
        && ops
            .iter()
            .all(|op| matches!(op, bundle::EntryOp::Ready { .. }));
    let ctx = ctx.clone();
    let op = move |tx: &mut dyn StoreTx| {
        // In the transaction: no writer can add one of these ids between check and write.
        let node_work = ctx.as_node_work();
        let mut skip = HashSet::new();
        let mut unchanged = Vec::new();
        for (i, rt, id) in &new_ids {
            let Some(meta) = tx.current(rt, id)? else {
                continue;
            };
            let stored = match tx.version(rt, id, None)? {
                Some(row) if !meta.deleted => crate::records::open(&*tx, &node_work, &row).ok(),
                _ => None,
            };
            let label = labels.get(*i).map_or("an entry", String::as_str);
            match (stored, ops.get(*i).and_then(bundle::EntryOp::resource)) {
                (Some(stored), Some(incoming)) if same_content(&stored, incoming) => {
                    skip.insert(*i);
                    unchanged.push(rt.to_string());
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        IssueCode::Duplicate,
                        format!(
                            "{label}: {rt}/{id} already exists on this node with other content (an import only adds resources; pass --update to replace existing ones)"
                        ),
                    )
                    .into());
                }
            }
        }
        let (todo, todo_labels): (Vec<bundle::EntryOp>, Vec<String>) = ops
            .into_iter()
            .zip(labels)
            .enumerate()
            .filter(|(i, _)| !skip.contains(i))
            .map(|(_, pair)| pair)
            .unzip();
        if !(stage_index && tx.stage_new_index_entries(crate::authz::DECIDING_TYPES)) {
            tx.merge_staged_index()?;
        }
        bundle::transaction_ops(tx, &ctx, todo, "").map_err(|e| relabel(e, &todo_labels))?;
        Ok(unchanged)
    };
    (op, loaded)
}

/// [`plan`] and [`commit`] in one.
///
/// # Errors
/// As those.
pub fn load(store: &dyn Store, ctx: &Ctx, entries: Entries) -> Result<Loaded, Error> {
    commit(store, ctx, plan(ctx, entries)?)
}

/// True if two versions of a resource say the same (their `meta`, set by the server, aside).
fn same_content(stored: &Value, incoming: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(map) = &mut v {
            map.remove("meta");
        }
        v
    };
    strip(stored) == strip(incoming)
}

/// Prefixes `e` with the name of the entry at `at` (`line 7: …`), if any.
fn labelled(e: Error, at: Option<usize>, labels: &[String]) -> Error {
    match at.and_then(|i| labels.get(i)) {
        Some(label) => Error {
            message: format!("{label}: {}", e.message),
            ..e
        },
        None => e,
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use serde_json::{Value, json};

    use super::{Mode, bundle_entries, file_entries, file_too_large, ndjson_entries};

    fn bundle(entries: &[Value]) -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }

    fn refusal(entry: Value, mode: Mode) -> String {
        bundle_entries(bundle(&[entry]), mode).unwrap_err().message
    }

    #[test]
    fn creations_keep_their_ids_and_must_be_new() {
        let obs = json!({"resourceType": "Observation", "id": "o1"});
        let e = ndjson_entries(
            format!("{obs}\n\n{{\"resourceType\":\"Patient\"}}\n").as_bytes(),
            Mode::AddOnly,
        )
        .unwrap();
        assert_eq!(
            e.entries[0]["request"],
            json!({"method": "PUT", "url": "Observation/o1"})
        );
        assert_eq!(
            e.entries[1]["request"],
            json!({"method": "POST", "url": "Patient"})
        );
        assert_eq!(e.labels, ["line 1", "line 3"]);
        assert_eq!(e.new_ids.len(), 1);
        assert_eq!(e.new_ids[0].0, 0);
        // Under --update the ids are not checked, and a PUT of the resource's own url is taken.
        let put = json!({"resource": obs, "request": {"method": "PUT", "url": "Observation/o1"}});
        let e = bundle_entries(bundle(std::slice::from_ref(&put)), Mode::Update).unwrap();
        assert!(e.new_ids.is_empty());
        assert!(refusal(put, Mode::AddOnly).starts_with("entry 0: a PUT replaces a resource"));
        // One id twice in a file.
        let twice = format!("{obs}\n{obs}\n");
        let err = ndjson_entries(twice.as_bytes(), Mode::AddOnly).unwrap_err();
        assert!(
            err.message
                .starts_with("line 2: Observation/o1 appears earlier"),
            "{}",
            err.message
        );
        assert_eq!(
            ndjson_entries(twice.as_bytes(), Mode::Update)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn only_creations_are_taken() {
        let obs = json!({"resourceType": "Observation", "id": "o1"});
        let with = |request: Value| json!({"resource": obs, "request": request});
        for (entry, expect) in [
            (
                json!({"request": {"method": "DELETE", "url": "Observation/o1"}}),
                "entry 0: a DELETE",
            ),
            (
                with(json!({"method": "PATCH", "url": "Observation/o1"})),
                "entry 0: a PATCH",
            ),
            (
                with(json!({"method": "GET", "url": "Observation/o1"})),
                "entry 0: an import carries resources to add, not reads",
            ),
            (
                with(json!({"method": "POST", "url": "Observation", "ifNoneExist": "code=x"})),
                "entry 0: an import takes no conditional requests",
            ),
            (
                with(json!({"method": "POST", "url": "Observation?code=x"})),
                "entry 0: an import takes no conditional requests",
            ),
            (
                with(json!({"method": "POST", "url": "Patient"})),
                "entry 0: a POST in an import must have the url Observation",
            ),
            (
                with(json!({"url": "Observation"})),
                "entry 0: request.method is missing",
            ),
            (
                with(json!({"method": "SECRET-TEXT"})),
                "entry 0: request.method is not one an import takes",
            ),
            (
                json!({"resource": {"resourceType": "Observation", "id": "has space"}}),
                "entry 0: invalid resource id",
            ),
        ] {
            let got = refusal(entry.clone(), Mode::AddOnly);
            assert!(got.starts_with(expect), "{entry}: {got}");
            assert!(!got.contains("SECRET"), "{got}");
        }
        for (request, expect) in [
            (
                json!({"method": "PUT", "url": "Observation?code=x"}),
                "entry 0: an import takes no conditional requests",
            ),
            (
                json!({"method": "PUT", "url": "Observation/o2"}),
                "entry 0: a PUT in an import must have the url Type/id",
            ),
            (
                json!({"method": "DELETE", "url": "Observation/o1"}),
                "entry 0: a DELETE",
            ),
        ] {
            let got = refusal(with(request), Mode::Update);
            assert!(got.starts_with(expect), "{got}");
        }
    }

    #[test]
    fn a_file_is_bounded() {
        assert!(file_too_large().message.contains("512 MiB"));
        let e = file_entries(
            b"{\"resourceType\":\"Bundle\",\"type\":\"collection\"}",
            false,
            Mode::AddOnly,
        )
        .unwrap();
        assert!(e.is_empty());
    }
}
