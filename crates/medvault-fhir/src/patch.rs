//! The FHIR R4 `patch` interaction (<http://hl7.org/fhir/R4/http.html#patch>): JSON Patch
//! (RFC 6902, `application/json-patch+json`) and FHIRPath Patch
//! (<http://hl7.org/fhir/R4/fhirpatch.html>, a `Parameters` resource), applied to a copy of a
//! resource.
//!
//! **Invariant:** pure: no storage, clock or I/O. The caller bounds the body, then validates,
//! seals and versions the result as for an update. A patch may not change which resource it is
//! (`resourceType`, `id`); it may change `meta`, whose `versionId` and `lastUpdated` the node
//! overwrites anyway. Errors name the operation (1-based) and what is wrong; they echo at most
//! text from the patch (a path or a name, truncated), never resource content.
//!
//! Work is bounded: [`MAX_PATCH_OPERATIONS`] operations, [`MAX_PATH_CHARS`] per path,
//! [`MAX_WHERE_DEPTH`] nested `where()`, [`MAX_VALUE_DEPTH`] nested value `part`s, and a result
//! of at most [`MAX_PATCHED_BYTES`] and [`MAX_PATCHED_DEPTH`] levels (JSON Patch's `copy` could
//! otherwise double a record with every operation).
//!
//! ## The FHIRPath subset
//!
//! A patch path must name places in the resource, so only navigation is accepted:
//! `Patient.a.b` (the leading type must be the resource's own; a path may also start at an
//! element, `birthDate`), choice elements by their FHIRPath name (`Observation.value` finds
//! `valueQuantity`), the indexer `[n]`, `.first()`, `.last()`, and
//! `.where(cond and cond …)` where each condition is `path = literal`: `path` is `$this` or
//! the same navigation (nested `where()` up to [`MAX_WHERE_DEPTH`]), and `literal` a string
//! (`'x'`, with FHIRPath escapes), a whole number, `true` or `false`. A condition holds when
//! its path selects exactly one value equal to the literal. Anything else (`resolve()`,
//! `ofType()`, `exists()`, unions, operators other than `=` and `and`) is refused.
//!
//! Per operation, following the spec's table: `add` needs a path selecting exactly one element
//! and adds `name` to it (appending to a list that exists; a list or single element that does
//! not exist yet is created from the R4 definitions' cardinality; an existing single element is
//! refused: use `replace`); `insert` and `move` take the path of a list (ending in the list's
//! element name, whose parent must be exactly one element); `replace` needs exactly one
//! element; `delete` removes the one element selected, does nothing when none is, and refuses
//! more than one. An element emptied by a delete is removed with it (FHIR JSON has no empty
//! objects or lists), and a primitive list's `_name` array of extensions is kept aligned.
//! `name` is the JSON name (`deceasedBoolean`); a choice element's FHIRPath name (`deceased`)
//! also works, the type coming from the value (`valueBoolean`). A value is any one `value[x]`,
//! a `resource`, or nested `part`s named after the elements of the type being built.
//! Extensions on a primitive value (`_valueString`) are refused. Whether a value has the right
//! type for its place is left to the caller's validation of the result.

use std::collections::HashMap;
use std::sync::LazyLock;

use json_patch::{PatchErrorKind, PatchOperation};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most operations in one patch. Each costs at most a walk of the resource; a thousand covers
/// any hand- or tool-written patch while keeping one request's work small.
pub const MAX_PATCH_OPERATIONS: usize = 1000;

/// Longest path (JSON Pointer or FHIRPath) in characters. Paths into real resources are a few
/// dozen characters; the bound keeps parsing and evaluation cheap.
pub const MAX_PATH_CHARS: usize = 512;

/// Deepest nesting of `where()` inside `where()` in a FHIRPath path. The evaluator recurses once
/// per level, so this bounds its stack.
pub const MAX_WHERE_DEPTH: usize = 4;

/// Deepest nesting of `part`s in a FHIRPath Patch value (a complex value given as parts of
/// parts). Value building recurses once per level, so this bounds its stack; FHIR types given
/// this way are a few levels deep.
pub const MAX_VALUE_DEPTH: usize = 16;

/// Largest patched resource, as an estimate of its compact JSON size. Twice the node's largest
/// stored resource: room for a patch that grows before it shrinks, small enough that JSON
/// Patch's `copy` cannot double a record into memory exhaustion.
pub const MAX_PATCHED_BYTES: usize = 2 * 1024 * 1024;

/// Deepest nesting of objects and lists in a patched resource. Below `serde_json`'s limit of 128
/// when parsing, so a patched resource can always be read back; FHIR resources nest a few dozen
/// levels at most. Checked against an upper bound kept per operation, so a patch that moves
/// content around a great deal may be refused before it really reaches this depth.
pub const MAX_PATCHED_DEPTH: usize = 100;

/// How much patch text an error message echoes.
const ECHO_CHARS: usize = 100;

/// The two patch formats the node applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// JSON Patch, RFC 6902 (`application/json-patch+json`).
    Json,
    /// FHIRPath Patch, a `Parameters` resource (`application/fhir+json`).
    FhirPath,
    /// JSON Merge Patch, RFC 7386 (`application/merge-patch+json`): not a FHIR patch format,
    /// but what general-purpose clients (fhirpy's `patch`) send.
    Merge,
    /// `application/json`: the body decides — an array is a JSON Patch, a `Parameters`
    /// resource a FHIRPath Patch, any other object a merge patch.
    Detect,
}

/// Why a patch was not applied. Messages are safe to show: they name the operation (1-based)
/// and echo only patch text, truncated. [`Self::Malformed`] and the format errors describe the
/// patch itself (HTTP 400); [`Self::NotApplicable`], [`Self::TestFailed`],
/// [`Self::ChangesIdentity`] and [`Self::TooLarge`] a well-formed patch that does not fit the
/// resource (HTTP 422, R4 http.html#patch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not JSON, or names a key twice in one object (see [`crate::strict_json`]).
    #[error("the patch is not valid JSON")]
    NotJson,
    /// A JSON Patch body that is not a JSON array.
    #[error("a JSON Patch document must be a JSON array of operations (RFC 6902, section 3)")]
    NotAnArray,
    /// A FHIRPath Patch body that is not a `Parameters` resource with a list of parameters.
    #[error(
        "a FHIRPath Patch must be a Parameters resource with a list of \"operation\" parameters"
    )]
    NotParameters,
    /// More than [`MAX_PATCH_OPERATIONS`] operations.
    #[error("the patch has {count} operations; at most {max} are accepted")]
    TooManyOperations {
        /// Operations in the patch.
        count: usize,
        /// [`MAX_PATCH_OPERATIONS`].
        max: usize,
    },
    /// An operation that is not well formed, whatever the resource.
    #[error("operation {index} is malformed: {reason}")]
    Malformed {
        /// The operation, 1-based.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A well-formed operation that does not fit the resource (its path selects nothing, or
    /// too much; an index is past the end of a list…).
    #[error("operation {index} cannot be applied: {reason}")]
    NotApplicable {
        /// The operation, 1-based.
        index: usize,
        /// Why not.
        reason: String,
    },
    /// A JSON Patch `test` found a different value.
    #[error("operation {index} (test) failed: the value at {path} is not the one given")]
    TestFailed {
        /// The operation, 1-based.
        index: usize,
        /// The tested pointer, from the patch, truncated.
        path: String,
    },
    /// An operation that would change the resource's `resourceType` or `id`.
    #[error("operation {index} would change the resource's type or id, which a patch may not")]
    ChangesIdentity {
        /// The operation, 1-based.
        index: usize,
    },
    /// An operation that would make the resource larger than [`MAX_PATCHED_BYTES`] or deeper
    /// than [`MAX_PATCHED_DEPTH`].
    #[error(
        "operation {index} would make the resource larger than {max_bytes} bytes or nest it deeper than {max_depth} levels",
        max_bytes = MAX_PATCHED_BYTES,
        max_depth = MAX_PATCHED_DEPTH
    )]
    TooLarge {
        /// The operation, 1-based.
        index: usize,
    },
    /// The resource to patch is not a JSON object with a `resourceType` (a caller's error).
    #[error("the target is not a FHIR resource")]
    NotAResource,
    /// The compiled-in R4 definitions FHIRPath Patch needs (cardinalities) failed to load; only
    /// a broken build can cause this.
    #[error("the FHIR definitions a FHIRPath Patch needs could not be loaded")]
    Definitions,
}

/// The patch format a request's `Content-Type` names: `application/json-patch+json` is JSON
/// Patch; `application/fhir+json` is FHIRPath Patch (its body is a `Parameters` resource);
/// `application/merge-patch+json` a JSON Merge Patch; `application/json` is decided by the
/// body ([`PatchKind::Detect`]). Parameters such as `charset` are ignored; anything else (XML
/// included) is `None`.
pub fn kind_from_content_type(content_type: &str) -> Option<PatchKind> {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json-patch+json") {
        Some(PatchKind::Json)
    } else if essence.eq_ignore_ascii_case("application/fhir+json") {
        Some(PatchKind::FhirPath)
    } else if essence.eq_ignore_ascii_case("application/merge-patch+json") {
        Some(PatchKind::Merge)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(PatchKind::Detect)
    } else {
        None
    }
}

/// Applies `patch` (the request body) to a copy of `resource` and returns the copy. Operations
/// apply in order, each to the result of the one before; if any fails, nothing is returned
/// (the patch is atomic, R4 http.html#patch). The result is not validated.
///
/// # Errors
/// [`PatchError`]: a body that is not JSON or not of `kind`'s shape, too many operations, a
/// malformed operation, one that does not fit the resource or fails its `test`, one that
/// would change `resourceType` or `id`, or a result too large or too deep.
///
/// # Panics
/// Never.
pub fn apply_patch(kind: PatchKind, resource: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    // `get` finds nothing in anything but an object.
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Err(PatchError::NotAResource);
    };
    let body = crate::strict_json::from_slice(patch).map_err(|_| PatchError::NotJson)?;
    let mut doc = resource.clone();
    let kind = match kind {
        PatchKind::Detect if body.is_array() => PatchKind::Json,
        PatchKind::Detect
            if body.get("resourceType").and_then(Value::as_str) == Some("Parameters") =>
        {
            PatchKind::FhirPath
        }
        PatchKind::Detect => PatchKind::Merge,
        k => k,
    };
    match kind {
        PatchKind::Json => apply_json_patch(&mut doc, resource, body)?,
        PatchKind::FhirPath => apply_fhirpath_patch(&mut doc, resource, resource_type, body)?,
        PatchKind::Merge | PatchKind::Detect => apply_merge_patch(&mut doc, resource, &body)?,
    }
    Ok(doc)
}

/// JSON Merge Patch (RFC 7386): the body's members replace the resource's, `null` removes one.
/// It may not name another `resourceType` or `id` (or remove them).
fn apply_merge_patch(doc: &mut Value, original: &Value, body: &Value) -> Result<(), PatchError> {
    if !body.is_object() {
        return Err(PatchError::Malformed {
            index: 1,
            reason: "a merge patch is a JSON object of the members to change".to_owned(),
        });
    }
    for key in ["resourceType", "id"] {
        if body.get(key).is_some_and(|v| Some(v) != original.get(key)) {
            return Err(PatchError::ChangesIdentity { index: 1 });
        }
    }
    let budget = Budget::of(doc);
    let added = Budget::of(body);
    if budget.bytes.saturating_add(added.bytes) > MAX_PATCHED_BYTES
        || budget.depth.max(added.depth + 1) > MAX_PATCHED_DEPTH
    {
        return Err(PatchError::TooLarge { index: 1 });
    }
    json_patch::merge(doc, body);
    if !same_identity(original, doc) {
        return Err(PatchError::ChangesIdentity { index: 1 });
    }
    Ok(())
}

/// True while `doc` is still the resource `original` was: an object with the same
/// `resourceType` and `id`.
fn same_identity(original: &Value, doc: &Value) -> bool {
    doc.is_object()
        && doc.get("resourceType") == original.get("resourceType")
        && doc.get("id") == original.get("id")
}

/// Patch text for an error message: quoted, at most [`ECHO_CHARS`] characters.
fn echo(text: &str) -> String {
    let mut cut: String = text.chars().take(ECHO_CHARS).collect();
    if text.chars().nth(ECHO_CHARS).is_some() {
        cut.push('…');
    }
    format!("{cut:?}")
}

// --- Size and depth -------------------------------------------------------------------------

/// Upper bounds on the patched document's size and depth, kept per operation so that no
/// operation needs a walk of the whole document.
struct Budget {
    bytes: usize,
    depth: usize,
}

impl Budget {
    fn of(doc: &Value) -> Self {
        Self {
            bytes: approx_bytes(doc),
            depth: depth_of(doc),
        }
    }

    /// Records content of `bytes` placed so that the document may now be `depth` deep.
    fn grow(&mut self, index: usize, bytes: usize, depth: usize) -> Result<(), PatchError> {
        self.bytes = self.bytes.saturating_add(bytes);
        self.depth = self.depth.max(depth);
        if self.bytes > MAX_PATCHED_BYTES || self.depth > MAX_PATCHED_DEPTH {
            Err(PatchError::TooLarge { index })
        } else {
            Ok(())
        }
    }

    fn shrink(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// Nesting depth of `v` (a scalar is 0, `{}` and `[]` are 1), without recursion.
fn depth_of(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|x| (x, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// About the size of `v` as compact JSON (escapes not counted), without recursion.
fn approx_bytes(v: &Value) -> usize {
    let mut total = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        let own = match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len().saturating_add(2),
            Value::Array(items) => {
                stack.extend(items.iter());
                items.len().saturating_add(2)
            }
            Value::Object(map) => {
                let mut keys = 2usize;
                for (k, x) in map {
                    keys = keys.saturating_add(k.len()).saturating_add(4);
                    stack.push(x);
                }
                keys
            }
        };
        total = total.saturating_add(own);
    }
    total
}

// --- JSON Patch -----------------------------------------------------------------------------

/// The reference tokens of a JSON Pointer (RFC 6901, section 4), decoded. The root has none.
fn pointer_tokens(pointer: &str) -> impl Iterator<Item = String> + '_ {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
}

/// Number of reference tokens: the depth at which the pointer places a value.
fn pointer_depth(pointer: &str) -> usize {
    pointer.bytes().filter(|&b| b == b'/').count()
}

/// True if writing at `pointer` could change the resource's identity: the whole document, or
/// anything under `/resourceType` or `/id`.
fn touches_identity(pointer: &str) -> bool {
    match pointer_tokens(pointer).next() {
        None => true,
        Some(first) => first == "id" || first == "resourceType",
    }
}

fn apply_json_patch(doc: &mut Value, original: &Value, body: Value) -> Result<(), PatchError> {
    let Value::Array(raw) = body else {
        return Err(PatchError::NotAnArray);
    };
    if raw.len() > MAX_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: raw.len(),
            max: MAX_PATCH_OPERATIONS,
        });
    }
    let mut ops = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let index = i + 1;
        let op: PatchOperation = serde_json::from_value(r).map_err(|_| PatchError::Malformed {
            index,
            reason: "not an RFC 6902 operation: it needs \"op\" (add, remove, replace, move, \
                     copy or test), a JSON Pointer \"path\", and \"value\" or \"from\" as the op \
                     requires"
                .to_owned(),
        })?;
        check_json_operation(&op, index)?;
        ops.push(op);
    }
    let mut budget = Budget::of(doc);
    for (i, op) in ops.iter().enumerate() {
        let index = i + 1;
        account_json_operation(doc, op, index, &mut budget)?;
        // Each operation is applied on its own so that a failure names it. The crate's
        // `patch_unsafe` leaves the document half-changed on failure, which does not matter
        // here: `doc` is a copy that is dropped on any error (its `patch` would undo, but
        // panics if undoing fails).
        json_patch::patch_unsafe(doc, std::slice::from_ref(op))
            .map_err(|e| json_error(index, op, &e.kind))?;
        if !same_identity(original, doc) {
            return Err(PatchError::ChangesIdentity { index });
        }
    }
    Ok(())
}

/// Refuses, before anything is applied, an operation whose pointers are too long, that writes
/// the whole resource, or that writes or moves away `resourceType` or `id`.
fn check_json_operation(op: &PatchOperation, index: usize) -> Result<(), PatchError> {
    let (path, from) = match op {
        PatchOperation::Move(m) => (m.path.as_str(), Some(m.from.as_str())),
        PatchOperation::Copy(c) => (c.path.as_str(), Some(c.from.as_str())),
        other => (other.path().as_str(), None),
    };
    for p in std::iter::once(path).chain(from) {
        if p.chars().nth(MAX_PATH_CHARS).is_some() {
            return Err(PatchError::Malformed {
                index,
                reason: format!("a path is longer than {MAX_PATH_CHARS} characters"),
            });
        }
    }
    let writes_identity = match op {
        PatchOperation::Test(_) => false,
        PatchOperation::Move(m) => {
            touches_identity(m.path.as_str()) || touches_identity(m.from.as_str())
        }
        other => touches_identity(other.path().as_str()),
    };
    if writes_identity {
        if path.is_empty() {
            return Err(PatchError::Malformed {
                index,
                reason: "it targets the whole resource; replace a resource with update (PUT)"
                    .to_owned(),
            });
        }
        return Err(PatchError::ChangesIdentity { index });
    }
    Ok(())
}

/// Updates the size and depth bounds for `op`, before it is applied to `doc`.
fn account_json_operation(
    doc: &Value,
    op: &PatchOperation,
    index: usize,
    budget: &mut Budget,
) -> Result<(), PatchError> {
    match op {
        PatchOperation::Add(a) => {
            let depth = pointer_depth(a.path.as_str()) + depth_of(&a.value);
            let bytes = approx_bytes(&a.value).saturating_add(a.path.as_str().len());
            budget.grow(index, bytes, depth)
        }
        PatchOperation::Replace(r) => {
            if let Some(old) = doc.pointer(r.path.as_str()) {
                budget.shrink(approx_bytes(old));
            }
            let depth = pointer_depth(r.path.as_str()) + depth_of(&r.value);
            budget.grow(index, approx_bytes(&r.value), depth)
        }
        PatchOperation::Remove(r) => {
            if let Some(old) = doc.pointer(r.path.as_str()) {
                budget.shrink(approx_bytes(old));
            }
            Ok(())
        }
        PatchOperation::Copy(c) => {
            // The copied value lies at least `from`'s depth down, so it is at most
            // `depth - depth(from)` deep itself.
            let depth = pointer_depth(c.path.as_str())
                + budget.depth.saturating_sub(pointer_depth(c.from.as_str()));
            let bytes = doc
                .pointer(c.from.as_str())
                .map_or(0, approx_bytes)
                .saturating_add(c.path.as_str().len());
            budget.grow(index, bytes, depth)
        }
        PatchOperation::Move(m) => {
            let depth = pointer_depth(m.path.as_str())
                + budget.depth.saturating_sub(pointer_depth(m.from.as_str()));
            budget.grow(index, 0, depth)
        }
        PatchOperation::Test(_) => Ok(()),
    }
}

fn json_error(index: usize, op: &PatchOperation, kind: &PatchErrorKind) -> PatchError {
    let path = echo(op.path().as_str());
    match kind {
        PatchErrorKind::TestFailed => PatchError::TestFailed { index, path },
        PatchErrorKind::InvalidPointer => PatchError::NotApplicable {
            index,
            reason: format!(
                "path {path} does not exist in the resource (or its list index is out of range)"
            ),
        },
        PatchErrorKind::InvalidFromPointer => PatchError::NotApplicable {
            index,
            reason: "its \"from\" does not exist in the resource".to_owned(),
        },
        PatchErrorKind::CannotMoveInsideItself => PatchError::NotApplicable {
            index,
            reason: "a value cannot be moved inside itself".to_owned(),
        },
        _ => PatchError::NotApplicable {
            index,
            reason: format!("it failed at path {path}"),
        },
    }
}

// --- R4 definitions: which elements repeat, and their types ---------------------------------

/// One element of a type, from the R4 JSON Schema.
#[derive(Debug)]
struct Prop {
    /// A list (`"type": "array"`).
    repeats: bool,
    /// The definition of its type (`Identifier`, `Patient_Contact`, `date`), if referenced.
    target: Option<String>,
}

/// Element names, cardinality and types of every R4 type, read once from the compiled-in
/// schema.
#[derive(Debug)]
struct Shapes {
    defs: HashMap<String, HashMap<String, Prop>>,
}

#[derive(Deserialize)]
struct RawSchema {
    definitions: HashMap<String, RawDefinition>,
}

#[derive(Deserialize)]
struct RawDefinition {
    #[serde(default)]
    properties: HashMap<String, RawProperty>,
}

#[derive(Deserialize)]
struct RawProperty {
    #[serde(rename = "$ref")]
    reference: Option<String>,
    items: Option<RawItems>,
}

#[derive(Deserialize)]
struct RawItems {
    #[serde(rename = "$ref")]
    reference: Option<String>,
}

static SHAPES: LazyLock<Option<Shapes>> = LazyLock::new(load_shapes);

fn load_shapes() -> Option<Shapes> {
    let raw: RawSchema = serde_json::from_str(crate::SCHEMA).ok()?;
    let target =
        |r: Option<String>| r.and_then(|r| r.strip_prefix("#/definitions/").map(str::to_owned));
    let defs = raw
        .definitions
        .into_iter()
        .map(|(name, def)| {
            let props = def
                .properties
                .into_iter()
                .map(|(p, raw)| {
                    let prop = match raw.items {
                        Some(items) => Prop {
                            repeats: true,
                            target: target(items.reference),
                        },
                        None => Prop {
                            repeats: false,
                            target: target(raw.reference),
                        },
                    };
                    (p, prop)
                })
                .collect();
            (name, props)
        })
        .collect();
    Some(Shapes { defs })
}

impl Shapes {
    fn prop(&self, def: &str, name: &str) -> Option<&Prop> {
        self.defs.get(def)?.get(name)
    }

    /// The definition named `name`, borrowed from the shapes.
    fn def_named(&self, name: &str) -> Option<&str> {
        self.defs.get_key_value(name).map(|(k, _)| k.as_str())
    }

    /// True if `suffix` names an R4 type as a choice element's suffix does (`Quantity`,
    /// `DateTime` for `dateTime`).
    fn is_type_suffix(&self, suffix: &str) -> bool {
        let mut chars = suffix.chars();
        let Some(first) = chars.next() else {
            return false;
        };
        if !first.is_ascii_uppercase() {
            return false;
        }
        let lower = first.to_ascii_lowercase().to_string() + chars.as_str();
        self.defs.contains_key(suffix) || self.defs.contains_key(&lower)
    }

    /// Finds element `name` of `def`, or, when `name` is a choice element's FHIRPath name, the
    /// one the value's type suffix completes (`deceased` + `Boolean`). Returns its JSON name.
    fn resolve<'s>(
        &'s self,
        def: &str,
        name: &str,
        suffix: Option<&str>,
    ) -> Option<(String, &'s Prop)> {
        if let Some(p) = self.prop(def, name) {
            return Some((name.to_owned(), p));
        }
        let full = format!("{name}{}", suffix?);
        self.prop(def, &full).map(|p| (full, p))
    }
}

// --- FHIRPath subset: parsing ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    This,
    Dot,
    Open,
    Close,
    LBracket,
    RBracket,
    Equals,
    Str(String),
    Int(u64),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    First,
    Last,
    Where(Vec<Cond>),
}

#[derive(Debug, Clone, PartialEq)]
struct Cond {
    path: Vec<Step>,
    literal: Literal,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Literal {
    fn matches(&self, v: &Value) -> bool {
        match self {
            Self::Str(s) => v.as_str() == Some(s.as_str()),
            Self::Int(i) => v.as_i64() == Some(*i),
            Self::Bool(b) => v.as_bool() == Some(*b),
        }
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits a FHIRPath path into tokens (FHIRPath N1, "Lexical elements"), refusing what the
/// subset does not use.
fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let tok = match c {
            c if c.is_whitespace() => continue,
            '.' => Tok::Dot,
            '(' => Tok::Open,
            ')' => Tok::Close,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '=' => Tok::Equals,
            '\'' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("a string literal is not closed".to_owned()),
                        Some('\'') => break,
                        Some('\\') => s.push(unescape(&mut chars)?),
                        Some(ch) => s.push(ch),
                    }
                }
                Tok::Str(s)
            }
            '`' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("a `delimited` name is not closed".to_owned()),
                        Some('`') => break,
                        Some(ch) if is_name_char(ch) => s.push(ch),
                        Some(_) => {
                            return Err("a `delimited` name holds a character no element name has"
                                .to_owned());
                        }
                    }
                }
                if s.is_empty() {
                    return Err("an empty `delimited` name".to_owned());
                }
                Tok::Ident(s)
            }
            '$' => {
                let mut s = String::new();
                while let Some(&ch) = chars.peek() {
                    if !is_name_char(ch) {
                        break;
                    }
                    s.push(ch);
                    chars.next();
                }
                if s != "this" {
                    return Err("of the $ variables only $this is supported".to_owned());
                }
                Tok::This
            }
            c if c.is_ascii_digit() => {
                let mut n = u64::from(c.to_digit(10).unwrap_or(0));
                while let Some(&ch) = chars.peek() {
                    let Some(d) = ch.to_digit(10) else {
                        break;
                    };
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d)))
                        .ok_or_else(|| "a number is too large".to_owned())?;
                    chars.next();
                }
                if chars.peek() == Some(&'.') {
                    // `1.5` would read as `1` then `.5`; decimals are not in the subset.
                    let mut ahead = chars.clone();
                    ahead.next();
                    if ahead.peek().is_some_and(char::is_ascii_digit) {
                        return Err("decimal numbers are not supported".to_owned());
                    }
                }
                Tok::Int(n)
            }
            c if is_name_start(c) => {
                let mut s = c.to_string();
                while let Some(&ch) = chars.peek() {
                    if !is_name_char(ch) {
                        break;
                    }
                    s.push(ch);
                    chars.next();
                }
                Tok::Ident(s)
            }
            other => {
                return Err(format!(
                    "{} is not supported in a patch path",
                    echo(&other.to_string())
                ));
            }
        };
        out.push(tok);
    }
    Ok(out)
}

/// The character after a `\` in a FHIRPath string literal (FHIRPath N1, "String").
fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    let bad = || "a string literal has an unknown escape".to_owned();
    Ok(match chars.next().ok_or_else(bad)? {
        c @ ('\'' | '"' | '`' | '\\' | '/') => c,
        'n' => '\n',
        'r' => '\r',
        't' => '\t',
        'f' => '\u{c}',
        'u' => {
            let mut code = 0u32;
            for _ in 0..4 {
                let d = chars.next().and_then(|c| c.to_digit(16)).ok_or_else(bad)?;
                code = code * 16 + d;
            }
            char::from_u32(code).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    })
}

struct Parser<'t> {
    toks: &'t [Tok],
    pos: usize,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Tok> {
        self.toks.get(self.pos)
    }

    fn bump(&mut self) -> Option<&'t Tok> {
        let t = self.toks.get(self.pos);
        self.pos += 1;
        t
    }

    fn expect(&mut self, want: &Tok, what: &str) -> Result<(), String> {
        if self.bump() == Some(want) {
            Ok(())
        } else {
            Err(format!("expected {what}"))
        }
    }

    /// `.name`, `.fn(…)` and `[n]` steps, as many as follow. `depth` is the `where()` nesting.
    fn chain(&mut self, steps: &mut Vec<Step>, depth: usize) -> Result<(), String> {
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    let Some(Tok::Ident(name)) = self.bump() else {
                        return Err("expected an element name after '.'".to_owned());
                    };
                    if self.peek() == Some(&Tok::Open) {
                        self.pos += 1;
                        steps.push(self.function(name, depth)?);
                    } else {
                        steps.push(Step::Field(name.clone()));
                    }
                }
                Some(Tok::LBracket) => {
                    self.pos += 1;
                    let Some(Tok::Int(n)) = self.bump() else {
                        return Err("expected a whole number inside [ ]".to_owned());
                    };
                    let n = usize::try_from(*n).map_err(|_| "an index is too large".to_owned())?;
                    self.expect(&Tok::RBracket, "']'")?;
                    steps.push(Step::Index(n));
                }
                _ => return Ok(()),
            }
        }
    }

    fn function(&mut self, name: &str, depth: usize) -> Result<Step, String> {
        let step = match name {
            "first" => Step::First,
            "last" => Step::Last,
            "where" => {
                if depth >= MAX_WHERE_DEPTH {
                    return Err(format!(
                        "where() is nested more than {MAX_WHERE_DEPTH} deep"
                    ));
                }
                let mut conds = vec![self.condition(depth + 1)?];
                while matches!(self.peek(), Some(Tok::Ident(w)) if w == "and") {
                    self.pos += 1;
                    conds.push(self.condition(depth + 1)?);
                }
                Step::Where(conds)
            }
            other => {
                return Err(format!(
                    "the function {}() is not supported in a patch path (only first(), last() \
                     and where())",
                    echo(other)
                ));
            }
        };
        self.expect(&Tok::Close, "')'")?;
        Ok(step)
    }

    fn condition(&mut self, depth: usize) -> Result<Cond, String> {
        let mut path = Vec::new();
        match self.bump() {
            Some(Tok::This) => {}
            Some(Tok::Ident(name)) => path.push(Step::Field(name.clone())),
            _ => {
                return Err(
                    "where() takes comparisons such as where(system = 'x') joined by 'and'"
                        .to_owned(),
                );
            }
        }
        self.chain(&mut path, depth)?;
        self.expect(&Tok::Equals, "'=' in where()")?;
        let literal = match self.bump() {
            Some(Tok::Str(s)) => Literal::Str(s.clone()),
            Some(Tok::Int(n)) => {
                Literal::Int(i64::try_from(*n).map_err(|_| "a number is too large".to_owned())?)
            }
            Some(Tok::Ident(w)) if w == "true" => Literal::Bool(true),
            Some(Tok::Ident(w)) if w == "false" => Literal::Bool(false),
            _ => {
                return Err(
                    "expected a literal ('text', a whole number, true or false) after '='"
                        .to_owned(),
                );
            }
        };
        Ok(Cond { path, literal })
    }
}

/// Parses a patch path on a resource of type `resource_type` into steps from the resource.
fn parse_path(text: &str, resource_type: &str) -> Result<Vec<Step>, String> {
    if text.chars().nth(MAX_PATH_CHARS).is_some() {
        return Err(format!(
            "the path is longer than {MAX_PATH_CHARS} characters"
        ));
    }
    let toks = tokenize(text)?;
    let mut p = Parser {
        toks: &toks,
        pos: 0,
    };
    let mut steps = Vec::new();
    match p.bump() {
        Some(Tok::Ident(head)) if head == resource_type => {}
        Some(Tok::Ident(head)) if !head.starts_with(|c: char| c.is_ascii_uppercase()) => {
            steps.push(Step::Field(head.clone()));
        }
        _ => {
            return Err(format!(
                "the path must start with the resource's type, {}",
                echo(resource_type)
            ));
        }
    }
    p.chain(&mut steps, 0)?;
    if p.peek().is_some() {
        return Err(
            "the path has more than navigation (only a.b, [n], first(), last() and \
                    where(x = 'literal') are supported)"
                .to_owned(),
        );
    }
    Ok(steps)
}

// --- FHIRPath subset: evaluation to locations -------------------------------------------------

/// One step of a location in the document: an object member or a list position.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// An element a path selected: where it is, its value, and, when it was found through a choice
/// element (`Observation.value` → `valueQuantity`), the choice's FHIRPath name (`value`).
struct Found<'a> {
    loc: Vec<Seg>,
    value: &'a Value,
    choice: Option<String>,
}

fn push_found<'a>(
    out: &mut Vec<Found<'a>>,
    parent: &Found<'a>,
    key: &str,
    value: &'a Value,
    choice: Option<&str>,
) {
    let mut base = parent.loc.clone();
    base.push(Seg::Key(key.to_owned()));
    match value {
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut loc = base.clone();
                loc.push(Seg::Index(i));
                out.push(Found {
                    loc,
                    value: v,
                    choice: None,
                });
            }
        }
        Value::Null => {}
        v => out.push(Found {
            loc: base,
            value: v,
            choice: choice.map(str::to_owned),
        }),
    }
}

/// Evaluates `steps` on `nodes` (FHIRPath N1 semantics for the subset: a member step flattens
/// lists, `[n]`/`first()`/`last()` pick from the whole collection). Recursion happens only
/// through `where()`, whose nesting the parser bounds by [`MAX_WHERE_DEPTH`].
fn evaluate<'a>(shapes: &Shapes, steps: &[Step], mut nodes: Vec<Found<'a>>) -> Vec<Found<'a>> {
    for step in steps {
        nodes = match step {
            Step::Field(name) => {
                let mut out = Vec::new();
                for n in &nodes {
                    let Value::Object(map) = n.value else {
                        continue;
                    };
                    if let Some(v) = map.get(name.as_str()) {
                        push_found(&mut out, n, name, v, None);
                        continue;
                    }
                    for (k, v) in map {
                        if let Some(suffix) = k.strip_prefix(name.as_str())
                            && shapes.is_type_suffix(suffix)
                        {
                            push_found(&mut out, n, k, v, Some(name));
                        }
                    }
                }
                out
            }
            Step::Index(i) => nodes.into_iter().nth(*i).into_iter().collect(),
            Step::First => nodes.into_iter().next().into_iter().collect(),
            Step::Last => nodes.into_iter().last().into_iter().collect(),
            Step::Where(conds) => nodes
                .into_iter()
                .filter(|n| conds.iter().all(|c| holds(shapes, c, n.value)))
                .collect(),
        };
        if nodes.is_empty() {
            break;
        }
    }
    nodes
}

/// FHIRPath `=` against a literal: true when the condition's path selects exactly one value and
/// it equals the literal (a collection of several is not equal to a single literal).
fn holds(shapes: &Shapes, cond: &Cond, item: &Value) -> bool {
    let start = vec![Found {
        loc: Vec::new(),
        value: item,
        choice: None,
    }];
    matches!(evaluate(shapes, &cond.path, start).as_slice(), [one] if cond.literal.matches(one.value))
}

fn locate<'a>(shapes: &Shapes, doc: &'a Value, steps: &[Step]) -> Vec<Found<'a>> {
    let root = vec![Found {
        loc: Vec::new(),
        value: doc,
        choice: None,
    }];
    evaluate(shapes, steps, root)
}

fn value_at<'a>(doc: &'a Value, loc: &[Seg]) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in loc {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(k.as_str())?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn value_at_mut<'a>(doc: &'a mut Value, loc: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for seg in loc {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k.as_str())?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn object_at_mut<'a>(doc: &'a mut Value, loc: &[Seg]) -> Option<&'a mut Map<String, Value>> {
    value_at_mut(doc, loc).and_then(Value::as_object_mut)
}

/// The R4 definition of the element at `loc` (`Patient`, `Patient_Contact`, `HumanName`), a
/// contained resource's by its `resourceType`.
fn element_def<'s>(shapes: &'s Shapes, doc: &Value, loc: &[Seg]) -> Option<&'s str> {
    let mut def = shapes.def_named(doc.get("resourceType")?.as_str()?)?;
    let mut cur = doc;
    for seg in loc {
        match seg {
            Seg::Key(k) => {
                def = shapes.prop(def, k)?.target.as_deref()?;
                cur = cur.get(k.as_str())?;
            }
            Seg::Index(i) => cur = cur.get(*i)?,
        }
        if def == "ResourceList"
            && let Some(t) = cur.get("resourceType").and_then(Value::as_str)
        {
            def = shapes.def_named(t)?;
        }
    }
    Some(def)
}

// --- Primitive extensions (`_name`) and removal ----------------------------------------------

fn shadow_key(key: &str) -> String {
    format!("_{key}")
}

/// Keeps a primitive list's `_key` array (its items' ids and extensions, R4 json.html
/// "primitive types") aligned with the list: `edit` is applied to it when it matched the list's
/// old length `len`; it is dropped when it holds only nulls or the list is gone.
fn edit_shadow(
    obj: &mut Map<String, Value>,
    key: &str,
    len: usize,
    edit: impl FnOnce(&mut Vec<Value>),
) {
    let shadow = shadow_key(key);
    let only_nulls = match obj.get_mut(&shadow) {
        Some(Value::Array(s)) if s.len() == len => {
            edit(s);
            s.iter().all(Value::is_null)
        }
        _ => false,
    };
    if only_nulls || !obj.contains_key(key) {
        obj.remove(&shadow);
    }
}

/// Removes the element at `loc` (with its `_` extensions; a list left empty goes too). False if
/// there was nothing there.
fn remove_at(doc: &mut Value, loc: &[Seg]) -> bool {
    match loc.split_last() {
        Some((Seg::Key(k), parent)) => {
            let Some(obj) = object_at_mut(doc, parent) else {
                return false;
            };
            let found = obj.remove(k.as_str()).is_some();
            obj.remove(&shadow_key(k));
            found
        }
        Some((Seg::Index(i), parent)) => {
            let Some((Seg::Key(k), grand)) = parent.split_last() else {
                return false;
            };
            let Some(obj) = object_at_mut(doc, grand) else {
                return false;
            };
            let i = *i;
            let Some(Value::Array(items)) = obj.get_mut(k.as_str()) else {
                return false;
            };
            let len = items.len();
            if i >= len {
                return false;
            }
            // `i < len`, checked above.
            items.remove(i);
            if items.is_empty() {
                obj.remove(k.as_str());
            }
            edit_shadow(obj, k, len, |s| {
                if i < s.len() {
                    s.remove(i);
                }
            });
            true
        }
        None => false,
    }
}

/// After a removal at `loc`, removes the ancestors it left empty (FHIR JSON has no empty
/// objects or lists), never the resource itself.
fn prune_empty(doc: &mut Value, loc: &[Seg]) {
    for n in (1..loc.len()).rev() {
        let Some(prefix) = loc.get(..n) else {
            return;
        };
        let empty = match value_at(doc, prefix) {
            None => continue,
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if !empty {
            return;
        }
        remove_at(doc, prefix);
    }
}

// --- FHIRPath Patch: the Parameters body -----------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpType {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

impl OpType {
    fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Insert => "insert",
            Self::Delete => "delete",
            Self::Replace => "replace",
            Self::Move => "move",
        }
    }
}

/// One `operation` parameter, read (R4 fhirpatch.html, "Operations" and the table of parts).
struct Operation {
    kind: OpType,
    path: String,
    name: Option<String>,
    value: Option<Map<String, Value>>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

const PART_NAMES: [&str; 7] = [
    "type",
    "path",
    "name",
    "value",
    "index",
    "source",
    "destination",
];

/// The string a primitive part carries (`valueCode`, `valueString`…).
fn part_string(part: &Map<String, Value>) -> Option<&str> {
    ["valueCode", "valueString", "valueUri"]
        .iter()
        .find_map(|k| part.get(*k))
        .and_then(Value::as_str)
}

/// The whole number ≥ 0 a part carries (`valueInteger`, also `valueUnsignedInt`).
fn part_index(part: &Map<String, Value>) -> Option<usize> {
    ["valueInteger", "valueUnsignedInt", "valuePositiveInt"]
        .iter()
        .find_map(|k| part.get(*k))
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

fn parse_operation(index: usize, param: Value) -> Result<Operation, PatchError> {
    let bad = |reason: String| PatchError::Malformed { index, reason };
    let Value::Object(mut param) = param else {
        return Err(bad("a parameter must be an object".to_owned()));
    };
    if param.get("name").and_then(Value::as_str) != Some("operation") {
        return Err(bad("each parameter must be named \"operation\"".to_owned()));
    }
    if param.contains_key("modifierExtension") {
        return Err(bad("modifier extensions are not understood".to_owned()));
    }
    let Some(Value::Array(parts)) = param.remove("part") else {
        return Err(bad("an operation needs its parts (type, path…)".to_owned()));
    };
    let mut seen: HashMap<&'static str, Map<String, Value>> = HashMap::new();
    for part in parts {
        let Value::Object(part) = part else {
            return Err(bad("each part must be an object".to_owned()));
        };
        let Some(name) = part.get("name").and_then(Value::as_str) else {
            return Err(bad("a part has no name".to_owned()));
        };
        let Some(&known) = PART_NAMES.iter().find(|n| **n == name) else {
            return Err(bad(format!(
                "unknown part {} (parts are type, path, name, value, index, source and \
                 destination)",
                echo(name)
            )));
        };
        if part.contains_key("modifierExtension") {
            return Err(bad("modifier extensions are not understood".to_owned()));
        }
        if seen.insert(known, part).is_some() {
            return Err(bad(format!("the part \"{known}\" is given twice")));
        }
    }
    let Some(type_part) = seen.remove("type") else {
        return Err(bad("it has no \"type\" part".to_owned()));
    };
    let kind = match part_string(&type_part) {
        Some("add") => OpType::Add,
        Some("insert") => OpType::Insert,
        Some("delete") => OpType::Delete,
        Some("replace") => OpType::Replace,
        Some("move") => OpType::Move,
        Some(other) => {
            return Err(bad(format!(
                "unknown type {} (add, insert, delete, replace or move)",
                echo(other)
            )));
        }
        None => return Err(bad("its type must be a code".to_owned())),
    };
    let needed: &[&str] = match kind {
        OpType::Add => &["path", "name", "value"],
        OpType::Insert => &["path", "value", "index"],
        OpType::Delete => &["path"],
        OpType::Replace => &["path", "value"],
        OpType::Move => &["path", "source", "destination"],
    };
    for n in needed {
        if !seen.contains_key(n) {
            return Err(bad(format!("{} needs a \"{n}\" part", kind.name())));
        }
    }
    if let Some(extra) = seen.keys().find(|k| !needed.contains(k)) {
        return Err(bad(format!(
            "{} does not take a \"{extra}\" part",
            kind.name()
        )));
    }
    let path = match seen.get("path").map(part_string) {
        Some(Some(p)) => p.to_owned(),
        _ => return Err(bad("its path must be a string".to_owned())),
    };
    let name = match seen.get("name").map(part_string) {
        None => None,
        Some(Some(n)) => Some(n.to_owned()),
        Some(None) => return Err(bad("its name must be a string".to_owned())),
    };
    let number = |part: &str| -> Result<Option<usize>, PatchError> {
        match seen.get(part).map(part_index) {
            None => Ok(None),
            Some(Some(n)) => Ok(Some(n)),
            Some(None) => Err(bad(format!("its {part} must be a whole number, 0 or more"))),
        }
    };
    let (ix, source, destination) = (number("index")?, number("source")?, number("destination")?);
    Ok(Operation {
        kind,
        path,
        name,
        value: seen.remove("value"),
        index: ix,
        source,
        destination,
    })
}

/// The type suffix of a value part's `value[x]` (`String` for `valueString`), if it has one.
fn typed_suffix(part: &Map<String, Value>) -> Option<&str> {
    part.keys().find_map(|k| {
        k.strip_prefix("value")
            .filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
    })
}

/// Builds the JSON value a `value` part gives: its one `value[x]` or `resource`, or an object
/// of type `def` from its nested `part`s (each named after an element; a repeating element's
/// parts become a list). Returns the value and its `value[x]` type suffix, if typed. Recurses
/// once per nesting level, refused past [`MAX_VALUE_DEPTH`].
fn build_value(
    shapes: &Shapes,
    part: &Map<String, Value>,
    def: Option<&str>,
    depth: usize,
) -> Result<(Value, Option<String>), String> {
    if depth > MAX_VALUE_DEPTH {
        return Err(format!(
            "value parts are nested more than {MAX_VALUE_DEPTH} deep"
        ));
    }
    let mut given: Option<(Value, Option<String>)> = None;
    let mut parts: Option<&Vec<Value>> = None;
    for (k, v) in part {
        let this = match k.as_str() {
            "name" | "id" | "extension" => continue,
            "part" => {
                let Value::Array(p) = v else {
                    return Err("\"part\" must be a list".to_owned());
                };
                parts = Some(p);
                continue;
            }
            "resource" => (v.clone(), None),
            k if k.starts_with("_value") => {
                return Err(
                    "extensions on a primitive value (_value[x]) are not supported".to_owned(),
                );
            }
            k => match k.strip_prefix("value") {
                Some(suffix)
                    if suffix.starts_with(|c: char| c.is_ascii_uppercase())
                        && suffix.chars().all(is_name_char) =>
                {
                    (v.clone(), Some(suffix.to_owned()))
                }
                _ => {
                    return Err(format!(
                        "a value part holds an unexpected element {}",
                        echo(k)
                    ));
                }
            },
        };
        if this.0.is_null() {
            return Err("a value is null".to_owned());
        }
        if given.replace(this).is_some() {
            return Err("a value part gives more than one value".to_owned());
        }
    }
    match (given, parts) {
        (Some(_), Some(_)) => Err("a value part gives both a value and parts".to_owned()),
        (Some(v), None) => Ok(v),
        (None, None) => Err("a value part gives no value".to_owned()),
        (None, Some(parts)) => {
            let Some(def) = def else {
                return Err(
                    "this element cannot be given as parts; give it as a value[x]".to_owned(),
                );
            };
            if parts.is_empty() {
                return Err("a value given as parts needs at least one part".to_owned());
            }
            let mut out = Map::new();
            for sub in parts {
                let Value::Object(sub) = sub else {
                    return Err("each part of a value must be an object".to_owned());
                };
                let Some(name) = sub.get("name").and_then(Value::as_str) else {
                    return Err("a part of a value has no name".to_owned());
                };
                let Some((key, prop)) = shapes.resolve(def, name, typed_suffix(sub)) else {
                    return Err(format!("{} has no element {}", echo(def), echo(name)));
                };
                let (v, _) = build_value(shapes, sub, prop.target.as_deref(), depth + 1)?;
                match out.get_mut(&key) {
                    Some(Value::Array(items)) if prop.repeats => items.push(v),
                    Some(_) => {
                        return Err(format!(
                            "the element {} is given twice but does not repeat",
                            echo(name)
                        ));
                    }
                    None if prop.repeats => {
                        out.insert(key, Value::Array(vec![v]));
                    }
                    None => {
                        out.insert(key, v);
                    }
                }
            }
            Ok((Value::Object(out), None))
        }
    }
}

// --- FHIRPath Patch: applying ----------------------------------------------------------------

fn apply_fhirpath_patch(
    doc: &mut Value,
    original: &Value,
    resource_type: &str,
    body: Value,
) -> Result<(), PatchError> {
    let shapes = SHAPES.as_ref().ok_or(PatchError::Definitions)?;
    let Value::Object(mut body) = body else {
        return Err(PatchError::NotParameters);
    };
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(PatchError::NotParameters);
    }
    let params = match body.remove("parameter") {
        None => Vec::new(),
        Some(Value::Array(p)) => p,
        Some(_) => return Err(PatchError::NotParameters),
    };
    if params.len() > MAX_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: params.len(),
            max: MAX_PATCH_OPERATIONS,
        });
    }
    // Read every operation first: a malformed one fails the patch before any work.
    let ops = params
        .into_iter()
        .enumerate()
        .map(|(i, p)| parse_operation(i + 1, p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut budget = Budget::of(doc);
    for (i, op) in ops.into_iter().enumerate() {
        let index = i + 1;
        apply_operation(shapes, doc, resource_type, op, index, &mut budget)?;
        if !same_identity(original, doc) {
            return Err(PatchError::ChangesIdentity { index });
        }
    }
    Ok(())
}

/// "selects nothing", "selects 3 elements": why a path did not select exactly one element.
fn count_problem(n: usize, path: &str, what: &str) -> String {
    if n == 0 {
        format!("the path {} selects no element {what}", echo(path))
    } else {
        format!(
            "the path {} selects {n} elements; {what} needs exactly one",
            echo(path)
        )
    }
}

fn apply_operation(
    shapes: &Shapes,
    doc: &mut Value,
    resource_type: &str,
    op: Operation,
    index: usize,
    budget: &mut Budget,
) -> Result<(), PatchError> {
    let malformed = |reason: String| PatchError::Malformed { index, reason };
    let unfit = |reason: String| PatchError::NotApplicable { index, reason };
    let steps = parse_path(&op.path, resource_type)
        .map_err(|why| malformed(format!("path {}: {why}", echo(&op.path))))?;
    let no_value = Map::new();
    let value_part = op.value.as_ref().unwrap_or(&no_value);

    match op.kind {
        OpType::Delete => {
            let found = locate(shapes, doc, &steps);
            let loc = match found.as_slice() {
                [] => return Ok(()),
                [one] => one.loc.clone(),
                more => return Err(unfit(count_problem(more.len(), &op.path, "to delete"))),
            };
            if loc.is_empty() {
                return Err(unfit(
                    "the resource itself cannot be deleted by a patch".to_owned(),
                ));
            }
            remove_at(doc, &loc);
            prune_empty(doc, &loc);
            Ok(())
        }
        OpType::Replace => {
            let found = locate(shapes, doc, &steps);
            let (loc, choice) = match found.as_slice() {
                [one] => (one.loc.clone(), one.choice.clone()),
                other => {
                    return Err(unfit(count_problem(other.len(), &op.path, "to replace")));
                }
            };
            if loc.is_empty() {
                return Err(unfit(
                    "the resource itself cannot be replaced by a patch; use update (PUT)"
                        .to_owned(),
                ));
            }
            let def = element_def(shapes, doc, &loc);
            let (value, suffix) = build_value(shapes, value_part, def, 0).map_err(malformed)?;
            budget.grow(index, approx_bytes(&value), loc.len() + depth_of(&value))?;
            let lost = || unfit("the selected element could not be reached".to_owned());
            match loc.split_last() {
                Some((Seg::Key(k), parent)) => {
                    let obj = object_at_mut(doc, parent).ok_or_else(lost)?;
                    // A choice element changes its JSON name with its type (R4 json.html,
                    // "Choice elements"): `value` replaced by a valueString is `valueString`.
                    let key = match (choice, suffix) {
                        (Some(base), Some(suffix)) => format!("{base}{suffix}"),
                        _ => k.clone(),
                    };
                    obj.remove(k.as_str());
                    obj.remove(&shadow_key(k));
                    obj.insert(key, value);
                }
                Some((Seg::Index(i), parent)) => {
                    let i = *i;
                    let Some((Seg::Key(k), grand)) = parent.split_last() else {
                        return Err(lost());
                    };
                    let obj = object_at_mut(doc, grand).ok_or_else(lost)?;
                    let items = obj
                        .get_mut(k.as_str())
                        .and_then(Value::as_array_mut)
                        .ok_or_else(lost)?;
                    let len = items.len();
                    let slot = items.get_mut(i).ok_or_else(lost)?;
                    *slot = value;
                    edit_shadow(obj, k, len, |s| {
                        if let Some(x) = s.get_mut(i) {
                            *x = Value::Null;
                        }
                    });
                }
                None => return Err(lost()),
            }
            Ok(())
        }
        OpType::Add => {
            let name = op.name.as_deref().unwrap_or_default();
            if !name.starts_with(|c: char| c.is_ascii_alphabetic())
                || !name.chars().all(is_name_char)
            {
                return Err(malformed(format!(
                    "the name {} is not an element name",
                    echo(name)
                )));
            }
            let found = locate(shapes, doc, &steps);
            let loc = match found.as_slice() {
                [one] if one.value.is_object() => one.loc.clone(),
                [_] => {
                    return Err(unfit(format!(
                        "the path {} selects a primitive, which has no elements to add to",
                        echo(&op.path)
                    )));
                }
                other => return Err(unfit(count_problem(other.len(), &op.path, "to add to"))),
            };
            let def = element_def(shapes, doc, &loc).ok_or_else(|| {
                unfit("the selected element is not one the R4 definitions describe".to_owned())
            })?;
            let (key, prop) = shapes
                .resolve(def, name, typed_suffix(value_part))
                .ok_or_else(|| unfit(format!("{} has no element {}", echo(def), echo(name))))?;
            let (value, _) =
                build_value(shapes, value_part, prop.target.as_deref(), 0).map_err(malformed)?;
            budget.grow(
                index,
                approx_bytes(&value),
                loc.len() + 2 + depth_of(&value),
            )?;
            let obj = object_at_mut(doc, &loc)
                .ok_or_else(|| unfit("the selected element could not be reached".to_owned()))?;
            let appended_to = match obj.get_mut(&key) {
                Some(Value::Array(items)) => {
                    let len = items.len();
                    items.push(value);
                    Some(len)
                }
                Some(_) => {
                    return Err(unfit(format!(
                        "the element {} already has a value; use replace",
                        echo(&key)
                    )));
                }
                None => {
                    let v = if prop.repeats {
                        Value::Array(vec![value])
                    } else {
                        value
                    };
                    obj.insert(key.clone(), v);
                    None
                }
            };
            if let Some(len) = appended_to {
                edit_shadow(obj, &key, len, |s| s.push(Value::Null));
            }
            Ok(())
        }
        OpType::Insert | OpType::Move => {
            let Some((Step::Field(list), parent_steps)) = steps.split_last() else {
                return Err(malformed(format!(
                    "{} needs the path of a list, ending in the list's element name",
                    op.kind.name()
                )));
            };
            let found = locate(shapes, doc, parent_steps);
            let parent = match found.as_slice() {
                [one] if one.value.is_object() => one.loc.clone(),
                [_] => {
                    return Err(unfit(format!(
                        "the path {} does not name a list in an element",
                        echo(&op.path)
                    )));
                }
                other => {
                    return Err(unfit(count_problem(
                        other.len(),
                        &op.path,
                        "holding the list",
                    )));
                }
            };
            if op.kind == OpType::Insert {
                insert(shapes, doc, &parent, list, &op, index, budget)
            } else {
                move_within(doc, &parent, list, &op, index)
            }
        }
    }
}

/// `insert` into `list`, an element of the one element at `parent`.
fn insert(
    shapes: &Shapes,
    doc: &mut Value,
    parent: &[Seg],
    list: &str,
    op: &Operation,
    index: usize,
    budget: &mut Budget,
) -> Result<(), PatchError> {
    let unfit = |reason: String| PatchError::NotApplicable { index, reason };
    let no_value = Map::new();
    let value_part = op.value.as_ref().unwrap_or(&no_value);
    let at = op.index.unwrap_or_default();
    let def = element_def(shapes, doc, parent).ok_or_else(|| {
        unfit("the selected element is not one the R4 definitions describe".to_owned())
    })?;
    let prop = shapes
        .prop(def, list)
        .ok_or_else(|| unfit(format!("{} has no element {}", echo(def), echo(list))))?;
    if !prop.repeats {
        return Err(unfit(format!("{} is not a list", echo(list))));
    }
    let (value, _) = build_value(shapes, value_part, prop.target.as_deref(), 0)
        .map_err(|reason| PatchError::Malformed { index, reason })?;
    budget.grow(
        index,
        approx_bytes(&value),
        parent.len() + 2 + depth_of(&value),
    )?;
    let obj = object_at_mut(doc, parent)
        .ok_or_else(|| unfit("the selected element could not be reached".to_owned()))?;
    let past_end = || unfit(format!("index {at} is past the end of the list"));
    match obj.get_mut(list) {
        Some(Value::Array(items)) => {
            let len = items.len();
            if at > len {
                return Err(past_end());
            }
            // `at <= len`, checked above.
            items.insert(at, value);
            edit_shadow(obj, list, len, |s| {
                if at <= s.len() {
                    s.insert(at, Value::Null);
                }
            });
        }
        Some(_) => return Err(unfit(format!("{} is not a list", echo(list)))),
        None if at == 0 => {
            obj.insert(list.to_owned(), Value::Array(vec![value]));
        }
        None => return Err(past_end()),
    }
    Ok(())
}

/// `move` within `list`, an element of the one element at `parent`: the item at `source` is
/// taken out and put back at `destination` (both must be positions of the list).
fn move_within(
    doc: &mut Value,
    parent: &[Seg],
    list: &str,
    op: &Operation,
    index: usize,
) -> Result<(), PatchError> {
    let unfit = |reason: String| PatchError::NotApplicable { index, reason };
    let (from, to) = (
        op.source.unwrap_or_default(),
        op.destination.unwrap_or_default(),
    );
    let obj = object_at_mut(doc, parent)
        .ok_or_else(|| unfit("the selected element could not be reached".to_owned()))?;
    let Some(Value::Array(items)) = obj.get_mut(list) else {
        return Err(unfit(format!(
            "there is no list {} to move within",
            echo(list)
        )));
    };
    let len = items.len();
    if from >= len || to >= len {
        return Err(unfit(
            "the source or destination index is past the end of the list".to_owned(),
        ));
    }
    // `from < len`, and after the removal `to <= len - 1`, the list's new length: both checked
    // above.
    let item = items.remove(from);
    items.insert(to, item);
    edit_shadow(obj, list, len, |s| {
        if from < s.len() {
            let x = s.remove(from);
            if to <= s.len() {
                s.insert(to, x);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // --- helpers ------------------------------------------------------------------------------

    fn json_patch(resource: &Value, patch: Value) -> Result<Value, PatchError> {
        apply_patch(PatchKind::Json, resource, patch.to_string().as_bytes())
    }

    fn fhir_patch(resource: &Value, ops: Vec<Value>) -> Result<Value, PatchError> {
        let body = json!({"resourceType": "Parameters", "parameter": ops});
        apply_patch(PatchKind::FhirPath, resource, body.to_string().as_bytes())
    }

    /// One `operation` parameter: its type and path, then the other parts.
    fn op(kind: &str, path: &str, rest: Vec<Value>) -> Value {
        let mut parts = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        parts.extend(rest);
        json!({"name": "operation", "part": parts})
    }

    fn name(n: &str) -> Value {
        json!({"name": "name", "valueString": n})
    }

    /// A `value` part whose value is `key` (`valueString`, …) = `v`.
    fn value(key: &str, v: Value) -> Value {
        let mut m = Map::new();
        m.insert("name".to_owned(), json!("value"));
        m.insert(key.to_owned(), v);
        Value::Object(m)
    }

    fn int(part: &str, n: i64) -> Value {
        json!({"name": part, "valueInteger": n})
    }

    /// A Patient with `fields` (and no id, as in the spec's test cases).
    fn patient(fields: Value) -> Value {
        let mut p = json!({"resourceType": "Patient"});
        if let (Some(p), Value::Object(f)) = (p.as_object_mut(), fields) {
            p.extend(f);
        }
        p
    }

    fn identifiers(values: &[&str]) -> Value {
        Value::Array(
            values
                .iter()
                .map(|v| json!({"system": "http://example.org", "value": v}))
                .collect(),
        )
    }

    /// Applies `ops` to a Patient with `input` and expects a Patient with `output`.
    fn check(case: &str, input: Value, ops: Vec<Value>, output: Value) {
        let got = fhir_patch(&patient(input), ops);
        assert_eq!(got, Ok(patient(output)), "{case}");
    }

    fn malformed(r: Result<Value, PatchError>) -> String {
        match r {
            Err(PatchError::Malformed { reason, .. }) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    fn unfit(r: Result<Value, PatchError>) -> String {
        match r {
            Err(PatchError::NotApplicable { reason, .. }) => reason,
            other => panic!("expected NotApplicable, got {other:?}"),
        }
    }

    // --- content types ------------------------------------------------------------------------

    #[test]
    fn content_types_choose_the_format() {
        for (ct, want) in [
            ("application/json-patch+json", Some(PatchKind::Json)),
            (
                "Application/JSON-Patch+JSON; charset=utf-8",
                Some(PatchKind::Json),
            ),
            ("application/fhir+json", Some(PatchKind::FhirPath)),
            (
                "application/fhir+json;fhirVersion=4.0",
                Some(PatchKind::FhirPath),
            ),
            ("application/json", Some(PatchKind::Detect)),
            ("application/merge-patch+json", Some(PatchKind::Merge)),
            ("application/fhir+xml", None),
            ("application/xml-patch+xml", None),
            ("text/plain", None),
            ("", None),
        ] {
            assert_eq!(kind_from_content_type(ct), want, "{ct}");
        }
    }

    // --- JSON Patch ---------------------------------------------------------------------------

    #[test]
    fn json_patch_adds_replaces_and_removes() {
        // RFC 6902 appendix A.1 (add an object member), A.2 (add an array element), A.4
        // (remove an object member) and A.5 (replace a value), on a Patient.
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male",
            "name": [{"family": "Doe", "given": ["A", "C"]}]});
        let got = json_patch(
            &p,
            json!([
                {"op": "add", "path": "/birthDate", "value": "1970-01-01"},
                {"op": "add", "path": "/name/0/given/1", "value": "B"},
                {"op": "remove", "path": "/gender"},
                {"op": "replace", "path": "/name/0/family", "value": "Roe"},
                {"op": "test", "path": "/id", "value": "p1"},
                {"op": "add", "path": "/meta", "value": {"tag": [{"code": "t"}]}},
            ]),
        );
        assert_eq!(
            got,
            Ok(
                json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01",
                "name": [{"family": "Roe", "given": ["A", "B", "C"]}],
                "meta": {"tag": [{"code": "t"}]}})
            )
        );
    }

    #[test]
    fn json_patch_failures_name_the_operation() {
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male"});
        let failed_test = json_patch(
            &p,
            json!([
                {"op": "replace", "path": "/gender", "value": "female"},
                {"op": "test", "path": "/gender", "value": "male"},
            ]),
        );
        assert_eq!(
            failed_test,
            Err(PatchError::TestFailed {
                index: 2,
                path: "\"/gender\"".to_owned()
            })
        );
        assert!(matches!(
            json_patch(&p, json!([{"op": "remove", "path": "/birthDate"}])),
            Err(PatchError::NotApplicable { index: 1, .. })
        ));
        assert!(matches!(
            json_patch(
                &p,
                json!([{"op": "test", "path": "/gender", "value": "male"},
                {"op": "frobnicate", "path": "/gender"}])
            ),
            Err(PatchError::Malformed { index: 2, .. })
        ));
        assert!(matches!(
            json_patch(&p, json!([{"op": "add", "path": "gender", "value": "x"}])),
            Err(PatchError::Malformed { index: 1, .. })
        ));
    }

    #[test]
    fn json_patch_may_not_change_type_or_id() {
        let p = json!({"resourceType": "Patient", "id": "p1", "identifier": [{"value": "1"}]});
        for bad in [
            json!({"op": "replace", "path": "/id", "value": "p2"}),
            json!({"op": "remove", "path": "/id"}),
            json!({"op": "add", "path": "/resourceType", "value": "Observation"}),
            json!({"op": "move", "from": "/id", "path": "/language"}),
            json!({"op": "copy", "from": "/identifier/0/value", "path": "/id"}),
        ] {
            let got = json_patch(
                &p,
                json!([{"op": "test", "path": "/id", "value": "p1"}, bad]),
            );
            assert_eq!(got, Err(PatchError::ChangesIdentity { index: 2 }), "{bad}");
        }
        // The whole document is not a patch target either.
        let whole = json!([{"op": "replace", "path": "", "value": {"resourceType": "Patient"}}]);
        assert!(malformed(json_patch(&p, whole)).contains("whole resource"));
        // Reading the id, or copying it elsewhere, is fine.
        let copied = json_patch(
            &p,
            json!([{"op": "copy", "from": "/id", "path": "/language"}]),
        );
        assert_eq!(
            copied.ok().and_then(|v| v.get("language").cloned()),
            Some(json!("p1"))
        );
    }

    #[test]
    fn json_patch_body_must_be_an_array_of_operations() {
        let p = json!({"resourceType": "Patient", "id": "p1"});
        let op = json!({"op": "remove", "path": "/gender"});
        assert_eq!(json_patch(&p, op), Err(PatchError::NotAnArray));
        assert_eq!(
            json_patch(&p, json!({"resourceType": "Parameters"})),
            Err(PatchError::NotAnArray)
        );
        assert_eq!(
            apply_patch(PatchKind::Json, &p, b"[{"),
            Err(PatchError::NotJson)
        );
        let twice = br#"[{"op": "add", "op": "remove", "path": "/x", "value": 1}]"#;
        assert_eq!(
            apply_patch(PatchKind::Json, &p, twice),
            Err(PatchError::NotJson)
        );
        let many =
            vec![json!({"op": "test", "path": "/id", "value": "p1"}); MAX_PATCH_OPERATIONS + 1];
        assert_eq!(
            json_patch(&p, Value::Array(many)),
            Err(PatchError::TooManyOperations {
                count: MAX_PATCH_OPERATIONS + 1,
                max: MAX_PATCH_OPERATIONS
            })
        );
        let long = format!("/{}", "a".repeat(MAX_PATH_CHARS));
        assert!(
            malformed(json_patch(&p, json!([{"op": "remove", "path": long}]))).contains("longer")
        );
        assert_eq!(
            apply_patch(PatchKind::Json, &json!(["not", "a", "resource"]), b"[]"),
            Err(PatchError::NotAResource)
        );
    }

    #[test]
    fn json_patch_copy_cannot_blow_up_the_resource() {
        // Each copy of the list into itself doubles it: 2 KiB → 4 MiB in 11 operations.
        let p = json!({"resourceType": "Patient", "id": "p1",
            "extension": [{"url": "u", "valueString": "x".repeat(2048)}]});
        let doubling =
            vec![json!({"op": "copy", "from": "/extension", "path": "/extension/-"}); 20];
        assert!(matches!(
            json_patch(&p, Value::Array(doubling)),
            Err(PatchError::TooLarge { index }) if index > 5 && index < 15
        ));
        // Nor nest it deeper than can be read back.
        let mut deep = json!("x");
        for _ in 0..MAX_PATCHED_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(
            json_patch(&p, json!([{"op": "add", "path": "/x", "value": deep}])),
            Err(PatchError::TooLarge { index: 1 })
        );
        let nest = vec![
            json!({"op": "copy", "from": "/extension", "path": "/extension/0/extension"});
            200
        ];
        assert!(matches!(
            json_patch(&p, Value::Array(nest)),
            Err(PatchError::TooLarge { .. })
        ));
    }

    // --- FHIRPath Patch: the spec's cases --------------------------------------------------------

    #[test]
    fn fhirpath_patch_spec_cases() {
        // Known answers from the FHIR R4 test cases for FHIRPath Patch (fhirpatch.html):
        // FHIR/fhir-test-cases, r4/patch/fhir-path-tests.xml, each case by its name there,
        // written here in JSON. "Add Primitive" and "Add Anonymous Type" are also the two
        // examples on the R4 page itself (http://hl7.org/fhir/R4/fhirpatch.html).
        let contact = || json!([{"name": {"text": "a name"}, "gender": "male"}]);
        let four = || identifiers(&["value 1", "value 2", "value 3", "value 4"]);
        let reorder = |case: &str, moves: &[(i64, i64)], want: &[&str]| {
            let ops = moves
                .iter()
                .map(|&(s, d)| {
                    op(
                        "move",
                        "Patient.identifier",
                        vec![int("source", s), int("destination", d)],
                    )
                })
                .collect();
            check(
                case,
                json!({"identifier": four()}),
                ops,
                json!({"identifier": identifiers(want)}),
            );
        };
        check(
            "No Difference",
            json!({"birthDate": "1920-01-01"}),
            vec![],
            json!({"birthDate": "1920-01-01"}),
        );
        check(
            "Replace Primitive",
            json!({"birthDate": "1920-01-01"}),
            vec![op(
                "replace",
                "Patient.birthDate",
                vec![value("valueDate", json!("1930-01-01"))],
            )],
            json!({"birthDate": "1930-01-01"}),
        );
        check(
            "Delete Primitive",
            json!({"birthDate": "1920-01-01"}),
            vec![op("delete", "Patient.birthDate", vec![])],
            json!({}),
        );
        check(
            "Add Primitive",
            json!({}),
            vec![op(
                "add",
                "Patient",
                vec![name("birthDate"), value("valueDate", json!("1930-01-01"))],
            )],
            json!({"birthDate": "1930-01-01"}),
        );
        check(
            "Replace Nested Primitive #1",
            json!({"contact": contact()}),
            vec![op(
                "replace",
                "Patient.contact[0].gender",
                vec![value("valueCode", json!("female"))],
            )],
            json!({"contact": [{"name": {"text": "a name"}, "gender": "female"}]}),
        );
        check(
            "Replace Nested Primitive #2",
            json!({"contact": contact()}),
            vec![op(
                "replace",
                "Patient.contact[0].name.text",
                vec![value("valueString", json!("the name"))],
            )],
            json!({"contact": [{"name": {"text": "the name"}, "gender": "male"}]}),
        );
        check(
            "Delete Nested Primitive #1",
            json!({"contact": contact()}),
            vec![op("delete", "Patient.contact[0].gender", vec![])],
            json!({"contact": [{"name": {"text": "a name"}}]}),
        );
        check(
            "Delete Nested Primitive #2",
            json!({"contact": contact()}),
            vec![op("delete", "Patient.contact[0].name.text", vec![])],
            json!({"contact": [{"gender": "male"}]}),
        );
        check(
            "Add Nested Primitive",
            json!({"contact": [{"name": {"text": "a name"}}]}),
            vec![op(
                "add",
                "Patient.contact[0]",
                vec![name("gender"), value("valueCode", json!("male"))],
            )],
            json!({"contact": contact()}),
        );
        check(
            "Add Complex",
            json!({}),
            vec![op(
                "add",
                "Patient",
                vec![
                    name("maritalStatus"),
                    value("valueCodeableConcept", json!({"text": "married"})),
                ],
            )],
            json!({"maritalStatus": {"text": "married"}}),
        );
        check(
            "Replace Complex",
            json!({"maritalStatus": {"id": "1", "text": "married"}}),
            vec![op(
                "replace",
                "Patient.maritalStatus",
                vec![value(
                    "valueCodeableConcept",
                    json!({"id": "2", "text": "not married"}),
                )],
            )],
            json!({"maritalStatus": {"id": "2", "text": "not married"}}),
        );
        check(
            "Delete Complex",
            json!({"maritalStatus": {"text": "married"}}),
            vec![op("delete", "Patient.maritalStatus", vec![])],
            json!({}),
        );
        check(
            "Add Anonymous Type",
            json!({}),
            vec![op(
                "add",
                "Patient",
                vec![
                    name("contact"),
                    json!({"name": "value", "part": [
                {"name": "name", "valueHumanName": {"text": "a name"}}]}),
                ],
            )],
            json!({"contact": [{"name": {"text": "a name"}}]}),
        );
        check(
            "Delete Anonymous Type",
            json!({"contact": [{"name": {"text": "a name"}}]}),
            vec![op("delete", "Patient.contact[0]", vec![])],
            json!({}),
        );
        check(
            "List unchanged, contents changed",
            json!({"identifier": [
                {"id": "a", "system": "http://example.org", "value": "value 1"},
                {"id": "b", "system": "http://example.org", "value": "value 2"}]}),
            vec![
                op(
                    "replace",
                    "Patient.identifier[0].value",
                    vec![value("valueString", json!("value 2"))],
                ),
                op(
                    "replace",
                    "Patient.identifier[1].value",
                    vec![value("valueString", json!("value 1"))],
                ),
            ],
            json!({"identifier": [
                {"id": "a", "system": "http://example.org", "value": "value 2"},
                {"id": "b", "system": "http://example.org", "value": "value 1"}]}),
        );
        let value3 = || {
            value(
                "valueIdentifier",
                json!({"system": "http://example.org", "value": "value 3"}),
            )
        };
        for (case, at, want) in [
            ("Add to list", 2, ["value 1", "value 2", "value 3"]),
            ("Insert in list #1", 1, ["value 1", "value 3", "value 2"]),
            ("Insert in list #2", 0, ["value 3", "value 1", "value 2"]),
        ] {
            check(
                case,
                json!({"identifier": identifiers(&["value 1", "value 2"])}),
                vec![op(
                    "insert",
                    "Patient.identifier",
                    vec![int("index", at), value3()],
                )],
                json!({"identifier": identifiers(&want)}),
            );
        }
        for (case, path, want) in [
            (
                "Delete from List #1",
                "Patient.identifier[0]",
                ["value 2", "value 3"],
            ),
            (
                "Delete from List #2",
                "Patient.identifier[1]",
                ["value 1", "value 3"],
            ),
            (
                "Delete from List #3",
                "Patient.identifier[2]",
                ["value 1", "value 2"],
            ),
        ] {
            check(
                case,
                json!({"identifier": identifiers(&["value 1", "value 2", "value 3"])}),
                vec![op("delete", path, vec![])],
                json!({"identifier": identifiers(&want)}),
            );
        }
        reorder(
            "Reorder List #1",
            &[(3, 1)],
            &["value 1", "value 4", "value 2", "value 3"],
        );
        reorder(
            "Reorder List #2",
            &[(3, 0)],
            &["value 4", "value 1", "value 2", "value 3"],
        );
        reorder(
            "Reorder List #3",
            &[(3, 2)],
            &["value 1", "value 2", "value 4", "value 3"],
        );
        reorder(
            "Reorder List #4",
            &[(0, 3)],
            &["value 2", "value 3", "value 4", "value 1"],
        );
        reorder(
            "Reorder List #5",
            &[(1, 0), (2, 1)],
            &["value 2", "value 3", "value 1", "value 4"],
        );
        reorder(
            "Reorder List #6",
            &[(3, 0), (3, 1), (3, 2)],
            &["value 4", "value 3", "value 2", "value 1"],
        );
        check(
            "Operation on missing element #2",
            json!({}),
            vec![op("add", "Patient", vec![name("identifier"), value3()])],
            json!({"identifier": identifiers(&["value 3"])}),
        );
        // "Operation on missing element": the case expects an error ("No content found").
        let missing = fhir_patch(
            &patient(json!({"identifier": [{"use": "official", "value": "123"}]})),
            vec![op(
                "add",
                "Patient.identifier.where(use = 'official').period",
                vec![name("end"), value("valueDate", json!("2021-12-01"))],
            )],
        );
        assert!(unfit(missing).contains("selects no element"));
    }

    // --- FHIRPath Patch: more ------------------------------------------------------------------

    #[test]
    fn fhirpath_patch_on_a_patient() {
        let p = json!({"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01",
            "identifier": [{"system": "x", "value": "1"}, {"system": "y", "value": "2"}],
            "name": [{"use": "official", "family": "Doe", "given": ["Anne"]},
                     {"use": "nickname", "given": ["Annie"]}]});
        let got = fhir_patch(
            &p,
            vec![
                op(
                    "replace",
                    "Patient.birthDate",
                    vec![value("valueDate", json!("1971-02-03"))],
                ),
                op(
                    "add",
                    "Patient",
                    vec![
                        name("identifier"),
                        value("valueIdentifier", json!({"system": "z", "value": "3"})),
                    ],
                ),
                op("delete", "Patient.identifier.where(system='x')", vec![]),
                op(
                    "insert",
                    "Patient.name.where(use = 'official').given",
                    vec![int("index", 0), value("valueString", json!("Mary"))],
                ),
                op(
                    "replace",
                    "Patient.name.last().given.first()",
                    vec![value("valueString", json!("Mae"))],
                ),
                op(
                    "delete",
                    "Patient.identifier.where(system = 'nobody')",
                    vec![],
                ),
                op(
                    "add",
                    "Patient",
                    vec![name("deceased"), value("valueBoolean", json!(false))],
                ),
            ],
        );
        assert_eq!(
            got,
            Ok(
                json!({"resourceType": "Patient", "id": "p1", "birthDate": "1971-02-03",
                "identifier": [{"system": "y", "value": "2"}, {"system": "z", "value": "3"}],
                "name": [{"use": "official", "family": "Doe", "given": ["Mary", "Anne"]},
                         {"use": "nickname", "given": ["Mae"]}],
                "deceasedBoolean": false})
            )
        );
    }

    #[test]
    fn values_given_as_parts_follow_the_definitions() {
        // Parts named after the elements of the type built; repeating ones become lists, a
        // choice element is named by its FHIRPath name with the type from the value.
        let p = json!({"resourceType": "Patient", "id": "p1"});
        let got = fhir_patch(
            &p,
            vec![op(
                "add",
                "Patient",
                vec![
                    name("extension"),
                    json!({"name": "value", "part": [
                {"name": "url", "valueUri": "http://example.org/a"},
                {"name": "extension", "part": [
                    {"name": "url", "valueUri": "b"}, {"name": "value", "valueCode": "c"}]},
                {"name": "extension", "part": [{"name": "url", "valueUri": "d"}]}]}),
                ],
            )],
        );
        assert_eq!(
            got,
            Ok(json!({"resourceType": "Patient", "id": "p1", "extension": [
                {"url": "http://example.org/a", "extension": [
                    {"url": "b", "valueCode": "c"}, {"url": "d"}]}]}))
        );
    }

    #[test]
    fn where_conditions_combine_nest_and_compare_this() {
        let p = json!({"resourceType": "Patient", "id": "p1", "identifier": [
            {"system": "s", "value": "1", "type": {"coding": [{"system": "v2", "code": "MR"}]}},
            {"system": "s", "value": "2", "type": {"coding": [{"system": "v2", "code": "SS"}]}}],
            "name": [{"given": ["A", "B"]}]});
        for (path, want) in [
            (
                "Patient.identifier.where(system = 's' and value = '2')",
                "2",
            ),
            (
                "Patient.identifier.where(type.coding.where(system = 'v2').code = 'MR')",
                "1",
            ),
            ("identifier.where(type.coding.code = 'SS')", "2"),
            ("Patient.identifier[1]", "2"),
        ] {
            let got = fhir_patch(&p, vec![op("delete", &format!("{path}.value"), vec![])]);
            let left = got.ok().and_then(|v| v.pointer("/identifier").cloned());
            let kept: Vec<&str> = ["1", "2"].into_iter().filter(|v| *v != want).collect();
            let values: Vec<Value> = left
                .iter()
                .flat_map(|l| l.as_array().into_iter().flatten())
                .filter_map(|i| i.get("value").cloned())
                .collect();
            assert_eq!(
                values,
                kept.iter().map(|v| json!(v)).collect::<Vec<_>>(),
                "{path}"
            );
        }
        let got = fhir_patch(
            &p,
            vec![op(
                "delete",
                "Patient.name.given.where($this = 'A')",
                vec![],
            )],
        );
        assert_eq!(
            got.ok().and_then(|v| v.pointer("/name/0/given").cloned()),
            Some(json!(["B"]))
        );
    }

    #[test]
    fn choice_elements_take_their_type_from_the_value() {
        let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "t"}, "valueQuantity": {"value": 1, "unit": "mg"}});
        let got = fhir_patch(
            &obs,
            vec![op(
                "replace",
                "Observation.value",
                vec![value("valueString", json!("high"))],
            )],
        );
        assert_eq!(
            got,
            Ok(
                json!({"resourceType": "Observation", "id": "o1", "status": "final",
                "code": {"text": "t"}, "valueString": "high"})
            )
        );
        let got = fhir_patch(
            &obs,
            vec![op(
                "replace",
                "Observation.value.unit",
                vec![value("valueString", json!("g"))],
            )],
        );
        assert_eq!(
            got.ok()
                .and_then(|v| v.pointer("/valueQuantity/unit").cloned()),
            Some(json!("g"))
        );
        // `min` is not a choice of `minValue…`: only type names count as suffixes.
        let p = json!({"resourceType": "Patient", "id": "p1", "deceasedDateTime": "2020-01-01"});
        assert!(
            unfit(fhir_patch(
                &p,
                vec![op(
                    "replace",
                    "Patient.dece",
                    vec![value("valueBoolean", json!(true))]
                )]
            ))
            .contains("selects no element")
        );
    }

    #[test]
    fn primitive_extensions_stay_aligned_with_their_list() {
        let ext = json!({"extension": [{"url": "u", "valueCode": "c"}]});
        let p = json!({"resourceType": "Patient", "id": "p1",
            "name": [{"given": ["A", "B"], "_given": [null, ext.clone()]}],
            "birthDate": "1970", "_birthDate": ext.clone()});
        let at =
            |r: Result<Value, PatchError>, ptr: &str| r.ok().and_then(|v| v.pointer(ptr).cloned());
        let inserted = fhir_patch(
            &p,
            vec![op(
                "insert",
                "Patient.name[0].given",
                vec![int("index", 0), value("valueString", json!("Z"))],
            )],
        );
        assert_eq!(
            at(inserted.clone(), "/name/0/given"),
            Some(json!(["Z", "A", "B"]))
        );
        assert_eq!(
            at(inserted, "/name/0/_given"),
            Some(json!([null, null, ext.clone()]))
        );
        let moved = fhir_patch(
            &p,
            vec![op(
                "move",
                "Patient.name[0].given",
                vec![int("source", 1), int("destination", 0)],
            )],
        );
        assert_eq!(at(moved.clone(), "/name/0/given"), Some(json!(["B", "A"])));
        assert_eq!(
            at(moved, "/name/0/_given"),
            Some(json!([ext.clone(), null]))
        );
        let deleted = fhir_patch(&p, vec![op("delete", "Patient.name[0].given[1]", vec![])]);
        assert_eq!(at(deleted.clone(), "/name/0/given"), Some(json!(["A"])));
        assert_eq!(at(deleted, "/name/0/_given"), None);
        let replaced = fhir_patch(
            &p,
            vec![op(
                "replace",
                "Patient.birthDate",
                vec![value("valueDate", json!("1980"))],
            )],
        );
        assert_eq!(at(replaced.clone(), "/birthDate"), Some(json!("1980")));
        assert_eq!(at(replaced, "/_birthDate"), None);
    }

    #[test]
    fn fhirpath_patch_may_not_change_type_or_id() {
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male"});
        for bad in [
            op("replace", "Patient.id", vec![value("valueId", json!("p2"))]),
            op("delete", "Patient.id", vec![]),
            op("delete", "Patient.resourceType", vec![]),
        ] {
            let got = fhir_patch(&p, vec![op("delete", "Patient.gender", vec![]), bad]);
            assert_eq!(got, Err(PatchError::ChangesIdentity { index: 2 }));
        }
        assert!(unfit(fhir_patch(&p, vec![op("delete", "Patient", vec![])])).contains("itself"));
        let q = json!({"resourceType": "Patient"});
        assert_eq!(
            fhir_patch(
                &q,
                vec![op(
                    "add",
                    "Patient",
                    vec![name("id"), value("valueId", json!("x"))]
                )]
            ),
            Err(PatchError::ChangesIdentity { index: 1 })
        );
    }

    #[test]
    fn paths_that_do_not_fit_are_refused() {
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male",
            "identifier": [{"value": "1"}, {"value": "2"}], "name": [{"family": "F"}]});
        let cases: Vec<(Value, &str)> = vec![
            (
                op(
                    "replace",
                    "Patient.identifier.value",
                    vec![value("valueString", json!("3"))],
                ),
                "selects 2 elements",
            ),
            (
                op("delete", "Patient.identifier", vec![]),
                "selects 2 elements",
            ),
            (
                op(
                    "replace",
                    "Patient.birthDate",
                    vec![value("valueDate", json!("2000"))],
                ),
                "selects no element",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![name("gender"), value("valueCode", json!("female"))],
                ),
                "already has a value",
            ),
            (
                op(
                    "add",
                    "Patient.gender",
                    vec![name("x"), value("valueString", json!("y"))],
                ),
                "primitive",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![name("colour"), value("valueString", json!("y"))],
                ),
                "has no element",
            ),
            (
                op(
                    "insert",
                    "Patient.identifier",
                    vec![
                        int("index", 3),
                        value("valueIdentifier", json!({"value": "3"})),
                    ],
                ),
                "past the end",
            ),
            (
                op(
                    "insert",
                    "Patient.gender",
                    vec![int("index", 0), value("valueCode", json!("male"))],
                ),
                "not a list",
            ),
            (
                op(
                    "move",
                    "Patient.identifier",
                    vec![int("source", 0), int("destination", 2)],
                ),
                "past the end",
            ),
            (
                op(
                    "move",
                    "Patient.address",
                    vec![int("source", 0), int("destination", 0)],
                ),
                "no list",
            ),
        ];
        for (bad, why) in cases {
            let reason = unfit(fhir_patch(&p, vec![bad.clone()]));
            assert!(reason.contains(why), "{bad}: {reason}");
        }
    }

    #[test]
    fn malformed_operations_are_refused() {
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male"});
        // An extension of an extension of… given as parts, one level too deep.
        let deep_parts = (0..=MAX_VALUE_DEPTH).fold(
            json!({"name": "url", "valueUri": "u"}),
            |inner, _| json!({"name": "extension", "part": [{"name": "url", "valueUri": "u"}, inner]}),
        );
        let cases: Vec<(Value, &str)> = vec![
            (op("upsert", "Patient.gender", vec![]), "unknown type"),
            (
                op("replace", "Patient.gender", vec![]),
                "needs a \"value\" part",
            ),
            (
                op("add", "Patient", vec![value("valueCode", json!("x"))]),
                "needs a \"name\" part",
            ),
            (
                op(
                    "insert",
                    "Patient.name",
                    vec![value("valueHumanName", json!({}))],
                ),
                "needs a \"index\"",
            ),
            (
                op(
                    "delete",
                    "Patient.gender",
                    vec![value("valueCode", json!("x"))],
                ),
                "does not take",
            ),
            (
                op(
                    "delete",
                    "Patient.gender",
                    vec![json!({"name": "colour", "valueString": "x"})],
                ),
                "unknown part",
            ),
            (
                op(
                    "delete",
                    "Patient.gender",
                    vec![json!({"name": "path", "valueString": "x"})],
                ),
                "given twice",
            ),
            (
                op("replace", "Patient.gender", vec![json!({"name": "value"})]),
                "no value",
            ),
            (
                op(
                    "replace",
                    "Patient.gender",
                    vec![json!({"name": "value", "valueCode": "a",
                "valueString": "b"})],
                ),
                "more than one value",
            ),
            (
                op(
                    "replace",
                    "Patient.gender",
                    vec![json!({"name": "value", "valueCode": "a",
                "_valueCode": {"id": "x"}})],
                ),
                "not supported",
            ),
            (
                op(
                    "replace",
                    "Patient.gender",
                    vec![json!({"name": "value", "valueCode": null})],
                ),
                "null",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![
                        name("extension"),
                        json!({"name": "value", "part": [deep_parts]}),
                    ],
                ),
                "nested more than",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![
                        name("contact"),
                        json!({"name": "value", "part": [
                {"name": "gender", "valueCode": "male"}, {"name": "gender", "valueCode": "male"}]}),
                    ],
                ),
                "does not repeat",
            ),
            (
                op(
                    "move",
                    "Patient.name",
                    vec![int("source", -1), int("destination", 0)],
                ),
                "whole number",
            ),
            (
                op("delete", "Patient.name.resolve()", vec![]),
                "not supported",
            ),
            (
                op("delete", "Patient.name.exists()", vec![]),
                "not supported",
            ),
            (
                op("delete", "Patient.name | Patient.gender", vec![]),
                "not supported",
            ),
            (
                op("delete", "Patient.name.where(family != 'x')", vec![]),
                "not supported",
            ),
            (
                op(
                    "delete",
                    "Patient.name.where(family = 'x' or family = 'y')",
                    vec![],
                ),
                "expected ')'",
            ),
            (
                op("delete", "Patient.name.where(family = x)", vec![]),
                "literal",
            ),
            (
                op("delete", "Patient.name.where(family = 'x", vec![]),
                "not closed",
            ),
            (op("delete", "Patient.name[1.5]", vec![]), "decimal"),
            (op("delete", "Observation.code", vec![]), "must start with"),
            (op("delete", "Patient..name", vec![]), "element name"),
            (op("delete", "$index", vec![]), "$this"),
            (
                op(
                    "delete",
                    "Patient.a.where(b.where(c.where(d.where(e.where(f = 'x') = 'x') = 'x') = 'x') = 'x')",
                    vec![],
                ),
                "nested more than",
            ),
            (
                op(
                    "delete",
                    &format!("Patient.{}", "a".repeat(MAX_PATH_CHARS)),
                    vec![],
                ),
                "longer",
            ),
            (
                op(
                    "insert",
                    "Patient.name.first()",
                    vec![int("index", 0), value("valueHumanName", json!({}))],
                ),
                "path of a list",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![name("_gender"), value("valueCode", json!("x"))],
                ),
                "not an element name",
            ),
            (json!({"name": "op", "part": []}), "named \"operation\""),
            (json!({"name": "operation"}), "parts"),
        ];
        for (bad, why) in cases {
            let reason = malformed(fhir_patch(
                &p,
                vec![op("delete", "Patient.birthDate", vec![]), bad.clone()],
            ));
            assert!(reason.contains(why), "{bad}: {reason}");
        }
    }

    #[test]
    fn fhirpath_patch_body_must_be_parameters() {
        let p = json!({"resourceType": "Patient", "id": "p1"});
        for body in [
            json!([]),
            json!({"resourceType": "Patient"}),
            json!({"resourceType": "Parameters", "parameter": {}}),
        ] {
            let got = apply_patch(PatchKind::FhirPath, &p, body.to_string().as_bytes());
            assert_eq!(got, Err(PatchError::NotParameters), "{body}");
        }
        let empty = json!({"resourceType": "Parameters"}).to_string();
        assert_eq!(
            apply_patch(PatchKind::FhirPath, &p, empty.as_bytes()),
            Ok(p.clone())
        );
        let many = vec![op("delete", "Patient.gender", vec![]); MAX_PATCH_OPERATIONS + 1];
        assert!(matches!(
            fhir_patch(&p, many),
            Err(PatchError::TooManyOperations { .. })
        ));
        // 110 levels: past the bound, within what serde_json reads.
        let mut deep = json!({"text": "x"});
        for _ in 0..MAX_PATCHED_DEPTH / 2 + 5 {
            deep = json!({"extension": [deep]});
        }
        assert_eq!(
            fhir_patch(
                &p,
                vec![op(
                    "add",
                    "Patient",
                    vec![name("maritalStatus"), value("valueCodeableConcept", deep)]
                )]
            ),
            Err(PatchError::TooLarge { index: 1 })
        );
    }

    #[test]
    fn errors_never_echo_resource_content() {
        const SECRET: &str = "Zebulon-0xSECRET";
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male",
            "name": [{"family": SECRET, "given": [SECRET]}],
            "identifier": [{"system": SECRET, "value": SECRET}, {"value": SECRET}]});
        let mut errors = Vec::new();
        for patch in [
            json!([{"op": "test", "path": "/name/0/family", "value": "x"}]),
            json!([{"op": "remove", "path": "/name/0/suffix"}]),
            json!([{"op": "move", "from": "/name/7", "path": "/name/0"}]),
            json!([{"op": "replace", "path": "/id", "value": "x"}]),
        ] {
            errors.push(json_patch(&p, patch));
        }
        for bad in [
            op(
                "replace",
                "Patient.identifier.value",
                vec![value("valueString", json!("x"))],
            ),
            op(
                "add",
                "Patient.name.family",
                vec![name("x"), value("valueString", json!("y"))],
            ),
            op(
                "add",
                "Patient.name[0]",
                vec![name("family"), value("valueString", json!("y"))],
            ),
            op(
                "insert",
                "Patient.name[0].given",
                vec![int("index", 9), value("valueString", json!("y"))],
            ),
            op(
                "move",
                "Patient.identifier",
                vec![int("source", 0), int("destination", 5)],
            ),
        ] {
            errors.push(fhir_patch(&p, vec![bad]));
        }
        for e in errors {
            let message = e.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!message.is_empty());
            assert!(!message.contains(SECRET), "{message}");
        }
    }

    #[test]
    fn truncated_bodies_fail_cleanly() {
        // Every prefix of a valid body of either kind, applied as both kinds: an error or a
        // result, never a panic (the fuzz target, fuzz/fuzz_targets/patch.rs, does this for
        // any bytes).
        let p = json!({"resourceType": "Patient", "id": "p1", "gender": "male",
            "name": [{"given": ["A", "B"], "_given": [null, {"id": "x"}]}]});
        let bodies = [
            json!([{"op": "add", "path": "/name/0/given/-", "value": "C"},
                {"op": "move", "from": "/name/0", "path": "/name/-"},
                {"op": "copy", "from": "/gender", "path": "/language"}]),
            json!({"resourceType": "Parameters", "parameter": [
                op("insert", "Patient.name[0].given", vec![int("index", 1), value("valueString", json!("Z"))]),
                op("move", "Patient.name.first().given", vec![int("source", 0), int("destination", 1)]),
                op("delete", "Patient.name.where(given = '\\u0041' and $this.given.last() = 'B')", vec![])]}),
        ];
        for body in bodies {
            let text = body.to_string();
            for end in 0..=text.len() {
                for kind in [PatchKind::Json, PatchKind::FhirPath] {
                    if let Ok(v) = apply_patch(kind, &p, &text.as_bytes()[..end]) {
                        assert_eq!(v.get("id"), p.get("id"));
                    }
                }
            }
        }
    }

    #[test]
    fn echoed_patch_text_is_truncated() {
        let long = "x".repeat(300);
        assert_eq!(echo(&long).chars().count(), ECHO_CHARS + 3);
        assert_eq!(echo("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn the_r4_definitions_load() {
        let shapes = SHAPES.as_ref().unwrap();
        assert!(shapes.prop("Patient", "identifier").unwrap().repeats);
        assert!(!shapes.prop("Patient", "birthDate").unwrap().repeats);
        assert_eq!(
            shapes.prop("Patient", "contact").unwrap().target.as_deref(),
            Some("Patient_Contact")
        );
        assert!(shapes.is_type_suffix("DateTime") && shapes.is_type_suffix("Quantity"));
        assert!(!shapes.is_type_suffix("ValueInteger") && !shapes.is_type_suffix("date"));
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "gender": "female", "active": true,
            "name": [{"family": "Doe"}]})
    }

    #[test]
    fn merge_patches_change_members_and_keep_identity() {
        let out = apply_patch(
            PatchKind::Merge,
            &patient(),
            br#"{"gender": "male", "active": null}"#,
        )
        .unwrap();
        assert_eq!(out["gender"], "male");
        assert!(out.get("active").is_none(), "null removes");
        assert_eq!(out["name"], patient()["name"], "untouched members stay");
        for bad in [
            r#"{"id": "p2"}"#,
            r#"{"id": null}"#,
            r#"{"resourceType": "Group"}"#,
        ] {
            assert_eq!(
                apply_patch(PatchKind::Merge, &patient(), bad.as_bytes()),
                Err(PatchError::ChangesIdentity { index: 1 }),
                "{bad}"
            );
        }
        assert!(matches!(
            apply_patch(PatchKind::Merge, &patient(), b"[1]"),
            Err(PatchError::Malformed { .. })
        ));
    }

    #[test]
    fn application_json_is_decided_by_the_body() {
        assert_eq!(
            kind_from_content_type("application/json"),
            Some(PatchKind::Detect)
        );
        let array = br#"[{"op": "replace", "path": "/gender", "value": "other"}]"#;
        assert_eq!(
            apply_patch(PatchKind::Detect, &patient(), array).unwrap()["gender"],
            "other"
        );
        let merge = br#"{"gender": "unknown"}"#;
        assert_eq!(
            apply_patch(PatchKind::Detect, &patient(), merge).unwrap()["gender"],
            "unknown"
        );
    }
}
