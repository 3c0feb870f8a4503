//! The `Store` trait: what medvault needs from a database, and nothing that could carry
//! plaintext PHI.
//!
//! **Invariant:** record bodies cross this boundary only as [`Sealed`], index values only as
//! [`BlindValue`], keys only as [`WrappedKey`]. Ids, version numbers and server timestamps are
//! stored in the clear (see `ARCHITECTURE.md`, "What the database reveals").
//!
//! Writes run as [`WriteOp`] closures on the backend's writer, each inside its own savepoint of a
//! group-committed transaction: `write` returns only once the op's effects are durable, and an op
//! that fails leaves nothing behind.

pub mod conformance;
pub mod dump;
mod error;
mod forward;
pub mod group;
pub mod rows;

pub use error::StoreError;

/// The store traits by concern, imported unnamed: `use medvault_store::prelude::*;` lets code
/// call any store method on a concrete backend type (on `dyn StoreRead`, `dyn StoreTx` and
/// `dyn Store` every method is callable without it).
pub mod prelude {
    pub use crate::{
        IdentityRead as _, IdentityTx as _, KeyRead as _, KeyTx as _, LogRead as _, LogTx as _,
        PeerRead as _, PeerTx as _, RecordRead as _, RecordTx as _,
    };
}

/// What [`forward_reads`] names by path; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use medvault_core::{KeyName, ResourceId, ResourceType};
    pub use medvault_crypto::{BlindValue, Sealed, WrappedKey};
    pub use medvault_ledger::Hash;
}

use medvault_core::{Aal, KeyName, ResourceId, ResourceType};
use medvault_crypto::{BlindValue, Sealed, WrappedKey};
use medvault_ledger::{Hash, LedgerError, NodeSource, SALT_LEN};

/// A data-key name read back from a backend's key table: a name that does not parse is a
/// [`StoreError::Backend`] saying so (the name itself is left out: it may hold a patient id).
///
/// # Errors
/// [`StoreError::Backend`] when `name` is not a valid [`KeyName`].
pub fn stored_key_name(name: String) -> Result<KeyName, StoreError> {
    KeyName::try_from(name).map_err(|e| {
        StoreError::Backend(format!("a data-key name in the key table is not valid: {e}").into())
    })
}

/// The SHA-256 of a bearer secret — an API token, a session token, an OAuth code, access or
/// refresh token, a recovery code: what the database keeps and looks up, never the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of `secret` as a client presents it.
    pub fn of(secret: &str) -> Self {
        Self(medvault_crypto::sha256(secret.as_bytes()))
    }

    /// A hash made elsewhere (a recovery code's, over its normalised form) or read back from
    /// the database.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes, for a backend to store or look up.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Enough to tell two apart in a test failure; never the whole value.
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// The schema version of a node database this build writes (both backends use these numbers,
/// so a dump of one loads into the other).
pub const NODE_SCHEMA_VERSION: i64 = 19;
/// The schema version of an access-log database this build writes.
pub const ACCESS_LOG_SCHEMA_VERSION: i64 = 5;

/// The access log's `meta` key holding the first leaf of the patient index's complete part:
/// every leaf in `[from, to)` ([`ACCESS_INDEXED_TO`]) has its rows in the index; leaves below
/// it (written before the index existed, and not yet re-indexed) may not. See
/// docs/formats/access-patient-index.md.
pub const ACCESS_INDEXED_FROM: &str = "access_index_from";

/// The access log's `meta` key holding the end of the patient index's complete part: leaves
/// at and above it are not indexed yet (the indexer writes a whole run of
/// [`ACCESS_RUN_LEAVES`] leaves at a time, after the request path wrote them).
pub const ACCESS_INDEXED_TO: &str = "access_index_to";

/// Leaves per run of the patient index. Rows are keyed by run first (`leaf / ACCESS_RUN_LEAVES`),
/// so a run's rows, written together in key order, land on fresh pages at the end of the
/// index instead of one random page per row (docs/formats/access-patient-index.md).
pub const ACCESS_RUN_LEAVES: u64 = 1 << ACCESS_RUN_SHIFT;

/// `log2(`[`ACCESS_RUN_LEAVES`]`)`: a leaf's run is `leaf >> ACCESS_RUN_SHIFT` (the SQL schemas
/// write it as `leaf >> 12`).
pub const ACCESS_RUN_SHIFT: u32 = 12;

/// Which of a node's two databases a store holds; each has its own tables and migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Keys, records, blind indexes, identities, tokens and the records log.
    Node,
    /// The access log (audit leaves and their sealed details), its checkpoints, and the state
    /// of the logs this node witnesses. Kept apart so that its commit per request never
    /// touches the records database (see ARCHITECTURE.md, "Two logs").
    AccessLog,
}

impl Schema {
    /// `node` for a node database, `access_log` for an access log's (a backend's migrations, …).
    pub fn pick<T>(self, node: T, access_log: T) -> T {
        match self {
            Self::Node => node,
            Self::AccessLog => access_log,
        }
    }

    /// The `meta` value naming the kind of database, checked at open by every backend.
    pub fn label(self) -> &'static str {
        self.pick("medvault-node", "medvault-access-log")
    }

    /// The schema version this build writes.
    pub fn version(self) -> i64 {
        self.pick(NODE_SCHEMA_VERSION, ACCESS_LOG_SCHEMA_VERSION)
    }

    /// Checks what a database holds before it is migrated: the kind its `meta` label names
    /// (`None` when it has none yet) and its schema version, against the newest version the
    /// backend's migrations reach.
    ///
    /// # Errors
    /// [`StoreError::WrongDatabase`] when the label names another kind;
    /// [`StoreError::SchemaTooNew`] when `version` is newer than `supported`.
    pub fn check(
        self,
        label: Option<&str>,
        version: i64,
        supported: i64,
    ) -> Result<(), StoreError> {
        if let Some(found) = label
            && found != self.label()
        {
            return Err(StoreError::WrongDatabase {
                found: found.to_owned(),
                expected: self.label(),
            });
        }
        if version > supported {
            return Err(StoreError::SchemaTooNew {
                found: version,
                supported,
            });
        }
        Ok(())
    }
}

/// One stored version of a resource.
///
/// Its type and id are kept as the database holds them (text): reads are asked for by
/// [`ResourceType`] and [`ResourceId`], rows come back as they were stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredVersion {
    /// FHIR resource type.
    pub resource_type: String,
    /// FHIR logical id.
    pub id: String,
    /// Version number (1, 2, …).
    pub version: u64,
    /// Server time of the write, microseconds since the Unix epoch.
    pub last_updated_micros: i64,
    /// Name of the data key that sealed it (`Patient/<id>` or `@tenant`).
    pub key_name: String,
    /// Version of that data key.
    pub key_version: u32,
    /// The sealed resource; `None` for a delete marker.
    pub body: Option<Sealed>,
    /// True once the key named `key_name` was destroyed (crypto-shredded): the body can never be
    /// opened again.
    pub shredded: bool,
    /// Salt of the version's ledger commitment (required when writing).
    pub salt: Option<[u8; SALT_LEN]>,
    /// Index of the version's ledger leaf (assigned by the store; ignored when writing).
    pub leaf: Option<u64>,
    /// True once an admin expunged the version: its body is gone, its commitment stays (see
    /// [`Amendment`]).
    pub expunged: bool,
}

/// What changed a stored version after it was written, and what it was committed as before:
/// re-sealed under another compartment's key (the resource moved to another patient) or
/// expunged by an admin. The version row then holds the new state and points at a new records
/// log leaf; the amendment keeps the original leaf's facts (the sealed body as its SHA-256), so
/// `ledger verify` still checks every leaf against what it committed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amendment {
    /// FHIR resource type.
    pub resource_type: String,
    /// FHIR logical id.
    pub id: String,
    /// The version amended.
    pub version: u64,
    /// 1, 2, … per version (assigned by the store; ignored when writing).
    pub seq: u32,
    /// What was done.
    pub kind: AmendmentKind,
    /// When, microseconds since the Unix epoch.
    pub at_micros: i64,
    /// The version's `last_updated` (unchanged by amendments).
    pub last_updated_micros: i64,
    /// The data key it was sealed under before.
    pub key_name: String,
    /// That key's version.
    pub key_version: u32,
    /// SHA-256 of the sealed body before (`None` for a delete marker).
    pub digest: Option<Hash>,
    /// The records log leaf that committed to it before.
    pub leaf: u64,
    /// That leaf's commitment salt.
    pub salt: [u8; SALT_LEN],
}

impl Amendment {
    /// What amending `row` (as stored, with its leaf and salt) records about it at `at_micros`;
    /// `None` for a row without a ledger leaf (never the case for a stored version).
    pub fn of(row: &StoredVersion, kind: AmendmentKind, at_micros: i64) -> Option<Self> {
        Some(Self {
            resource_type: row.resource_type.clone(),
            id: row.id.clone(),
            version: row.version,
            seq: 0,
            kind,
            at_micros,
            last_updated_micros: row.last_updated_micros,
            key_name: row.key_name.clone(),
            key_version: row.key_version,
            digest: row
                .body
                .as_ref()
                .map(|b| medvault_crypto::sha256(b.as_bytes())),
            leaf: row.leaf?,
            salt: row.salt?,
        })
    }
}

/// Kinds of [`Amendment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmendmentKind {
    /// Re-sealed under the key of the compartment the resource moved to.
    Reseal,
    /// Content removed by an admin.
    Expunge,
}

impl AmendmentKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reseal => "reseal",
            Self::Expunge => "expunge",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reseal" => Some(Self::Reseal),
            "expunge" => Some(Self::Expunge),
            _ => None,
        }
    }
}

/// A stored audit detail: the salt and sealed body a ledger audit leaf commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDetail {
    /// Commitment salt (also bound into the seal).
    pub salt: [u8; SALT_LEN],
    /// The sealed detail.
    pub sealed: Sealed,
}

/// The current state of a resource, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMeta {
    /// Latest version number.
    pub version: u64,
    /// True if the latest version is a delete marker.
    pub deleted: bool,
    /// Data key of the latest version.
    pub key_name: String,
}

/// A wrapped data key row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyRow {
    /// Name (`Patient/<id>`, `@tenant`, `@index`).
    pub name: String,
    /// The data key's own version.
    pub key_version: u32,
    /// The KEK version that wrapped it; `None` once destroyed.
    pub kek_version: Option<u32>,
    /// The wrapped key; `None` once destroyed.
    pub wrapped: Option<WrappedKey>,
}

/// Sort order of search results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    /// Most recently created first: the store's own order, which an update does not change
    /// (the default, and the order of [`RecordRead::scan`]).
    #[default]
    Created,
    /// Most recently updated first.
    LastUpdatedDesc,
    /// Oldest first.
    LastUpdatedAsc,
    /// By id.
    IdAsc,
    /// By id, descending.
    IdDesc,
}

/// A search over the current, non-deleted, non-shredded versions of one resource type.
///
/// Clauses are ANDed; the values inside one clause are ORed. Blind values are keyed per
/// (resource type, search parameter) by their derivation, so a value names its parameter too:
/// backends index the values alone.
#[derive(Debug, Clone)]
pub struct IndexQuery {
    /// Resource type searched.
    pub resource_type: ResourceType,
    /// Each clause: any of these blind values.
    pub clauses: Vec<Vec<BlindValue>>,
    /// Restrict to these ids (`_id`).
    pub ids: Option<Vec<String>>,
    /// Lower bound on last-updated, inclusive, microseconds.
    pub updated_from: Option<i64>,
    /// Upper bound on last-updated, exclusive, microseconds.
    pub updated_to: Option<i64>,
    /// Order of results.
    pub sort: SortOrder,
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return at most.
    pub limit: u64,
}

impl IndexQuery {
    /// Every current version of `resource_type`, in the default order, no rows (set the
    /// clauses, bounds and `limit` wanted).
    pub fn new(resource_type: ResourceType) -> Self {
        Self {
            resource_type,
            clauses: Vec::new(),
            ids: None,
            updated_from: None,
            updated_to: None,
            sort: SortOrder::default(),
            offset: 0,
            limit: 0,
        }
    }
}

/// A page of search results plus the total count of matches.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// Matching current versions, in the requested order.
    pub rows: Vec<StoredVersion>,
    /// Matches overall (before offset and limit).
    pub total: u64,
}

/// One step of [`RecordRead::scan`].
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// The matches, most recently created first, each with its position (continue a walk
    /// after a match by passing its position as `before`).
    pub rows: Vec<(u64, StoredVersion)>,
    /// Candidates the step looked at: its matches and those a clause, bound or deletion left out.
    pub examined: u64,
    /// Where the next step starts (its `before`), or `None` once every candidate was looked at.
    pub resume: Option<u64>,
}

/// Most index entries [`RecordRead::scan`] counts per clause to choose the one that drives it:
/// a clause with fewer entries than this is chosen over any with more.
pub const SCAN_SELECTIVITY_CAP: u64 = 1024;

/// The candidates that drive a step of [`RecordRead::scan`]: the query's most selective part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDriver {
    /// The query's `_id` list.
    Ids,
    /// Clause `i` (its values' entries, merged).
    Clause(usize),
    /// Every current version of the type.
    Type,
}

impl ScanDriver {
    /// Chooses the driver of a step over `query`, given each clause's entries counted up to
    /// [`SCAN_SELECTIVITY_CAP`] (`counts[i]` for clause `i`; empty when counting was skipped
    /// because there is at most one clause): the ids when given (at most as many candidates
    /// as ids), else the clause with the fewest entries (the first among equals), else the type.
    pub fn choose(query: &IndexQuery, counts: &[u64]) -> Self {
        if query.ids.is_some() {
            return Self::Ids;
        }
        match query.clauses.len() {
            0 => Self::Type,
            1 => Self::Clause(0),
            _ => counts
                .iter()
                .enumerate()
                .min_by_key(|(i, n)| (**n, *i))
                .map_or(Self::Clause(0), |(i, _)| Self::Clause(i)),
        }
    }

    /// Whether counting the clauses' entries could change the choice.
    pub fn needs_counts(query: &IndexQuery) -> bool {
        query.ids.is_none() && query.clauses.len() > 1
    }
}

impl IndexQuery {
    /// True when a clause has no values or the `_id` list is empty: nothing can match.
    pub fn matches_nothing(&self) -> bool {
        self.clauses.iter().any(Vec::is_empty) || self.ids.as_ref().is_some_and(Vec::is_empty)
    }
}

/// A step of [`RecordRead::scan`] from one list of positions (descending, at most `limit`):
/// the positions, and the last one when the list filled the step (more may follow).
pub fn list_step(positions: Vec<u64>, limit: u64) -> (Vec<u64>, Option<u64>) {
    let resume = (positions.len() as u64 == limit)
        .then(|| positions.last().copied())
        .flatten();
    (positions, resume)
}

/// How many entries of each value the first round of a step of [`RecordRead::scan`] driven by
/// a clause of `values` values reads: all `limit` for one value; for several, about twice their
/// share (at least 4).
pub fn per_value_batch(values: usize, limit: u64) -> u64 {
    match u64::try_from(values) {
        Ok(0 | 1) | Err(_) => limit,
        Ok(k) => limit.saturating_mul(2).div_ceil(k).clamp(4, limit.max(4)),
    }
}

/// One step of a walk driven by a clause of `values` values: its positions (at most `limit`,
/// descending) and where the next step starts (`None` once every value's entries ran out).
/// `read(which, batch)` lists, for each value index in `which`, that value's first `batch`
/// positions (descending) before the step's start. A first round reads a share of every value
/// ([`per_value_batch`]); the values that filled their share (the dense ones) are read again up
/// to `limit`, so a step reads about `2 × limit + 4 × values` entries plus `limit` per dense
/// value, and still takes `limit` positions when there are that many.
///
/// # Errors
/// What `read` returns.
pub fn driver_step<E>(
    values: usize,
    limit: u64,
    mut read: impl FnMut(&[usize], u64) -> Result<Vec<Vec<u64>>, E>,
) -> Result<(Vec<u64>, Option<u64>), E> {
    let all: Vec<usize> = (0..values).collect();
    let batch = per_value_batch(values, limit);
    let mut lists: Vec<(Vec<u64>, u64)> =
        read(&all, batch)?.into_iter().map(|l| (l, batch)).collect();
    let (positions, resume) = merge_step(&lists, limit);
    if batch >= limit || positions.len() as u64 >= limit || resume.is_none() {
        return Ok((positions, resume));
    }
    let dense: Vec<usize> = lists
        .iter()
        .enumerate()
        .filter(|(_, (l, b))| l.len() as u64 >= *b)
        .map(|(i, _)| i)
        .collect();
    for (i, list) in dense.iter().zip(read(&dense, limit)?) {
        if let Some(slot) = lists.get_mut(*i) {
            *slot = (list, limit);
        }
    }
    Ok(merge_step(&lists, limit))
}

/// Merges the positions each value of a driving clause listed (descending, each with the
/// number it was read with) into one step of at most `limit` distinct positions, descending,
/// and where the next step starts. A value that listed as many positions as it was read with
/// may have more below its last one, so the merge is complete only down to the highest such
/// last position: the step ends there, and the next starts below it (`None` once every value's
/// list ran out within the step).
pub fn merge_step(lists: &[(Vec<u64>, u64)], limit: u64) -> (Vec<u64>, Option<u64>) {
    let cut = lists
        .iter()
        .filter(|(l, read)| l.len() as u64 >= *read)
        .filter_map(|(l, _)| l.last().copied())
        .max();
    let mut all: Vec<u64> = lists.iter().flat_map(|(l, _)| l.iter().copied()).collect();
    all.sort_unstable_by(|a, b| b.cmp(a));
    all.dedup();
    if let Some(cut) = cut {
        all.retain(|p| *p >= cut);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if all.len() >= limit {
        all.truncate(limit);
        let resume = all.last().copied();
        return (all, resume);
    }
    (all, cut)
}

/// The clauses of `q` a step driven by `driver` checks per candidate, as sets of values.
pub fn other_clauses(q: &IndexQuery, driver: ScanDriver) -> Vec<std::collections::HashSet<&[u8]>> {
    q.clauses
        .iter()
        .enumerate()
        .filter(|(i, _)| driver != ScanDriver::Clause(*i))
        .map(|(_, values)| values.iter().map(|v| &v.0[..]).collect())
        .collect()
}

/// Whether a candidate whose own index entries are `entries` (blind values, concatenated)
/// holds a value of each of `clauses` (each a set of values).
pub fn meets(clauses: &[std::collections::HashSet<&[u8]>], entries: &[u8]) -> bool {
    clauses.iter().all(|set| {
        entries
            .chunks_exact(medvault_crypto::BLIND_LEN)
            .any(|e| set.contains(e))
    })
}

/// An API bearer token's stored form (the token itself only as the SHA-256 it is looked up by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Role granted.
    pub role: String,
    /// Id of the credential (not secret; appears in logs).
    pub token_id: String,
    /// Creation time, microseconds since the Unix epoch.
    pub created_micros: i64,
    /// The token is refused from this time on, microseconds.
    pub expires_micros: i64,
    /// When it was revoked, microseconds; a revoked token is refused.
    pub revoked_micros: Option<i64>,
    /// Its last use recorded, microseconds (kept to a minute's precision).
    pub last_used_micros: Option<i64>,
}

/// A person's account. The user name is stored only blinded (for lookup) and sealed (for
/// display), never in the clear; the password only as an Argon2id PHC string; TOTP secrets only
/// sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// Unique user id (`usr_…`), never reused (HIPAA unique user identification).
    pub id: String,
    /// Blind index of the normalised user name (unique).
    pub name_index: BlindValue,
    /// The user name, sealed.
    pub name_sealed: Sealed,
    /// Role name.
    pub role: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// A disabled account cannot log in; its sessions are ended.
    pub disabled: bool,
    /// Creation time, microseconds since the Unix epoch.
    pub created_micros: i64,
    /// The active TOTP secret, sealed.
    pub totp: Option<Sealed>,
    /// A TOTP secret being enrolled (active once a code from it is confirmed), sealed.
    pub totp_pending: Option<Sealed>,
    /// The newest TOTP step accepted (a code is accepted once).
    pub totp_last_step: Option<u64>,
    /// Consecutive failed logins.
    pub failed_logins: u32,
    /// Logins are refused until this time (microseconds; 0 when not locked).
    pub locked_until_micros: i64,
    /// For a patient's account: the id of their Patient resource (their launch context).
    pub patient_id: Option<String>,
    /// For staff: the `Practitioner/<id>` they are in FHIR (care teams and encounters name it).
    pub practitioner: Option<String>,
    /// The newest sign-in that opened a session, microseconds (none yet: never signed in).
    pub last_login_micros: Option<i64>,
}

/// An emergency-access (break-glass) grant: one user, one patient, until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassRow {
    /// Grant id (`bg_…`).
    pub id: String,
    /// Who opened it.
    pub user_id: String,
    /// The patient's resource id.
    pub patient: String,
    /// The written justification, sealed (it may name clinical facts).
    pub reason: Sealed,
    /// When it was opened, microseconds.
    pub opened_micros: i64,
    /// When it ends, microseconds.
    pub expires_micros: i64,
}

/// Something the privacy officer must look at (a break-glass access, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// Alert id (`alr_…`).
    pub id: String,
    /// What happened (`break-glass`).
    pub kind: String,
    /// When, microseconds.
    pub at_micros: i64,
    /// The user whose action raised it.
    pub user_id: String,
    /// The patient concerned.
    pub patient: Option<String>,
    /// Details (JSON), sealed.
    pub detail: Sealed,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// When it was acknowledged, microseconds.
    pub acknowledged_micros: Option<i64>,
    /// The privacy officer's verdict (`confirmed` or `dismissed`), once given.
    pub verdict: Option<String>,
    /// The reason given with the verdict, sealed.
    pub note: Option<Sealed>,
}

/// Which alerts a page of the privacy officer's queue holds, newest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertQuery<'a> {
    /// Only alerts not yet acknowledged.
    pub open_only: bool,
    /// Only alerts of this kind.
    pub kind: Option<&'a str>,
    /// Only alerts about this user.
    pub user: Option<&'a str>,
    /// Only alerts about this patient.
    pub patient: Option<&'a str>,
    /// Only alerts older than this `(at, id)` (the last of the previous page).
    pub before: Option<(i64, &'a str)>,
    /// At most this many.
    pub limit: u32,
}

/// An automatic response to an alert (a playbook's action), or what it would have been in
/// dry-run mode, and its undoing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRow {
    /// Response id (`rsp_…`).
    pub id: String,
    /// The alert that set it off.
    pub alert_id: String,
    /// `step-up`, `end-sessions`, `lock`, `throttle` or `webhook`.
    pub action: String,
    /// Whom it acts on: `user:…`, `address:…`, `client:…` (or `node`).
    pub subject: String,
    /// When, microseconds.
    pub at_micros: i64,
    /// When it lapses by itself, microseconds (none: until undone).
    pub until_micros: Option<i64>,
    /// Recorded only: nothing was done.
    pub dry_run: bool,
    /// The playbook, its parameters and what happened (JSON; no PHI).
    pub detail: String,
    /// Who undid it.
    pub undone_by: Option<String>,
    /// When it was undone, microseconds.
    pub undone_micros: Option<i64>,
}

/// An entry of the node's compliance registers: a personal-data breach (GDPR Art. 33/34,
/// HITECH) or a data subject's request (GDPR Art. 15–21), with its deadline. What it says
/// (descriptions, assessments, answers) is sealed in `body`; only what the register is sorted
/// and judged by is in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRow {
    /// Entry id (`brc_…` for a breach, `dsr_…` for a request).
    pub id: String,
    /// `breach`, or the request's right: `access`, `portability`, `rectification`,
    /// `erasure`, `restriction`, `objection`.
    pub kind: String,
    /// The patient a request is about (`Patient/<id>`); none for a breach.
    pub subject: Option<String>,
    /// When it was opened (a breach: discovered), microseconds.
    pub opened_micros: i64,
    /// When it must be answered (a breach: the supervisory authority's 72 hours).
    pub due_micros: i64,
    /// `open`, `answered`, `refused`, `notified` or `closed`.
    pub status: String,
    /// When it was answered or closed, microseconds.
    pub closed_micros: Option<i64>,
    /// When the entry last changed, microseconds.
    pub updated_micros: i64,
    /// The entry's JSON, sealed under the node's identity key, bound to `id`.
    pub body: Sealed,
}

/// A login session's stored form: the token's SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// SHA-256 of the session token.
    pub hash: TokenHash,
    /// Non-secret id of the session (logs, audit).
    pub session_id: String,
    /// The user.
    pub user_id: String,
    /// Authenticator assurance level reached (AAL1: password only, enrollment only; AAL2: a
    /// second factor; AAL3: a passkey). Stored as its number; a stored number that names no
    /// level is a backend error when read.
    pub aal: Aal,
    /// Start, microseconds.
    pub created_micros: i64,
    /// Last use recorded, microseconds (kept to a minute's precision).
    pub last_seen_micros: i64,
    /// Absolute end, microseconds.
    pub expires_micros: i64,
}

/// A registered OAuth2 client (a SMART app or backend service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    /// Client id (`cli_…`).
    pub client_id: String,
    /// Display name (not secret, not PHI: an app's name).
    pub name: String,
    /// The client's public keys, a JWK Set (JSON text), for `private_key_jwt`.
    pub jwks: String,
    /// The scopes the client may be granted (space-separated SMART scopes).
    pub scopes: String,
    /// A disabled client gets no tokens; its tokens stop working.
    pub disabled: bool,
    /// Registration time, microseconds.
    pub created_micros: i64,
    /// Where a user-facing app may receive authorization codes (exact match); empty for
    /// backend services.
    pub redirect_uris: Vec<String>,
}

/// An issued OAuth2 access token's stored form: its SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRow {
    /// SHA-256 of the token.
    pub hash: TokenHash,
    /// Client it was issued to.
    pub client_id: String,
    /// Granted scopes (space-separated).
    pub scopes: String,
    /// Issue time, microseconds.
    pub issued_micros: i64,
    /// Expiry, microseconds.
    pub expires_micros: i64,
    /// The user the token acts for (user-facing apps); `None` for backend services.
    pub user_id: Option<String>,
    /// The refresh-token family it came from, if any (revoking the family ends it).
    pub family: Option<String>,
}

/// A one-use OAuth2 grant: an authorization code or a refresh token, stored as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    /// SHA-256 of the code or token.
    pub hash: TokenHash,
    /// `code` or `refresh`.
    pub kind: String,
    /// Client it was issued to.
    pub client_id: String,
    /// The user who approved it.
    pub user_id: String,
    /// Granted scopes (space-separated).
    pub scopes: String,
    /// The redirect URI a code was issued for (empty for refresh tokens).
    pub redirect_uri: String,
    /// The PKCE S256 challenge a code was issued with (empty for refresh tokens).
    pub code_challenge: String,
    /// The family of tokens issued from one approval (rotation keeps it).
    pub family: String,
    /// Expiry, microseconds.
    pub expires_micros: i64,
    /// True once exchanged.
    pub used: bool,
}

/// Another medvault node registered by an administrator for sealed sharing (issue 7): its
/// checked node document, the URL of its peer (mutual TLS) endpoint, and who registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    /// The peer's node id (from its document).
    pub node: String,
    /// The fingerprint the administrator confirmed out of band (`SHA-256:` + hex).
    pub fingerprint: String,
    /// The peer's mutual-TLS endpoint, e.g. `https://hospital-b.example:7443`.
    pub url: String,
    /// The node document as registered (JSON), its keys pinned.
    pub document: String,
    /// The local `Organization` reference that stands for the peer's institution in patients'
    /// consents (e.g. `Organization/5c1…`), chosen by the administrator; `None` when unset,
    /// and then only consents that name no actor speak to sharing with the peer.
    pub organization: Option<String>,
    /// When it was registered, microseconds.
    pub registered_micros: i64,
    /// Who registered it (`cli` or a user id).
    pub registered_by: String,
}

/// What a ledger's database holds — both the records database and the access log's: node settings, the Merkle log's leaves and stored nodes, sealed audit details, checkpoints and witnessed sizes.
pub trait LogRead {
    /// Value of a node setting (tenant id, node id, …).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Number of ledger leaves (all of them are integrated into the tree at commit).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn ledger_size(&self) -> Result<u64, StoreError>;
    /// `count` consecutive complete-subtree hashes of one tree level, from `start`; fewer if the
    /// tree ends first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn ledger_nodes(&self, level: u8, start: u64, count: u64) -> Result<Vec<Hash>, StoreError>;
    /// The hashes of the given complete subtrees (`None` where not stored), in one round trip.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn ledger_nodes_at(&self, keys: &[(u8, u64)]) -> Result<Vec<Option<Hash>>, StoreError>;
    /// `count` consecutive leaf entries from `start`, with their indexes; fewer if the log ends
    /// first (or rows are missing: callers compare indexes).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn ledger_entries(&self, start: u64, count: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// The audit detail stored beside leaf `leaf`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn audit_detail(&self, leaf: u64) -> Result<Option<AuditDetail>, StoreError> {
        Ok(self.audit_details(leaf, 1)?.pop().map(|(_, d)| d))
    }
    /// Audit details of leaves in `[start, start + count)`, by leaf index, in order.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn audit_details(&self, start: u64, count: u64) -> Result<Vec<(u64, AuditDetail)>, StoreError>;
    /// The access-log leaves in `[floor, below)` whose records name the patient whose keyed
    /// tag is `tag` (the access log's patient index), newest first, at most `count`.
    /// Access-log databases only.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn access_leaves(
        &self,
        tag: &BlindValue,
        range: (u64, u64),
        count: u64,
    ) -> Result<Vec<u64>, StoreError>;
    /// The patient index's rows for leaves in `[start, start + count)`, by leaf then tag (what
    /// `ledger verify` checks against the details). Access-log databases only.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn access_tags(&self, start: u64, count: u64) -> Result<Vec<(u64, BlindValue)>, StoreError>;
    /// How many patient-index rows name no leaf of a log of `size` leaves (a negative or too
    /// large leaf) or are malformed (a leaf that is not an integer, a tag that is not 16
    /// bytes), and the leaf of the first as the database holds it: rows only an editor of the
    /// database makes. Access-log databases only.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn access_tags_astray(&self, size: u64) -> Result<(u64, Option<String>), StoreError>;
    /// A stored checkpoint note: of exactly `size`, or the largest when `size` is `None`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn checkpoint(&self, size: Option<u64>) -> Result<Option<(u64, String)>, StoreError>;
    /// The newest checkpoint this node cosigned for the log `origin`: its size and root.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn witnessed(&self, origin: &str) -> Result<Option<(u64, Hash)>, StoreError>;
}

/// The key hierarchy's wrapped keys.
pub trait KeyRead {
    /// All KEK versions with their wrapped bytes, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn keks(&self) -> Result<Vec<(u32, WrappedKey)>, StoreError>;
    /// One data key row.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn data_key(&self, name: &KeyName) -> Result<Option<DataKeyRow>, StoreError>;
}

/// Sealed FHIR resources, their versions and blind-index search.
pub trait RecordRead {
    /// The current state of a resource.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn current(
        &self,
        resource_type: &ResourceType,
        id: &ResourceId,
    ) -> Result<Option<CurrentMeta>, StoreError>;
    /// One version, or the latest when `version` is `None`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn version(
        &self,
        resource_type: &ResourceType,
        id: &ResourceId,
        version: Option<u64>,
    ) -> Result<Option<StoredVersion>, StoreError>;
    /// History, newest first: of one resource when `id` is given (shredded versions included,
    /// flagged), else of the whole type (versions whose key was destroyed left out).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn history(
        &self,
        resource_type: &ResourceType,
        id: Option<&ResourceId>,
        offset: u64,
        limit: u64,
    ) -> Result<SearchPage, StoreError>;
    /// Index search.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn search(&self, query: &IndexQuery) -> Result<SearchPage, StoreError>;
    /// One step of a walk over the current versions matching `query`'s clauses, ids and time
    /// bounds (its order, offset and limit are ignored), most recently created first, from
    /// before position `before` (the newest when `None`). The step looks at no more than
    /// `limit` candidates, those of the query's most selective part ([`ScanDriver`]), each
    /// checked against the rest in the database, so its cost follows `limit`, never the number
    /// of matches. A resource keeps its position when updated: a walk continued from a
    /// position neither repeats nor skips a resource that stays a match.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn scan(&self, query: &IndexQuery, before: Option<u64>, limit: u64)
    -> Result<Scan, StoreError>;
    /// The current, live (not deleted, not shredded) versions of `resource_type` in id order,
    /// `limit` at a time after the id `after`, changed at or after `since` (microseconds) if
    /// given: a scan of a whole type that costs the same on its last page as on its first (bulk
    /// export).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn current_after(
        &self,
        resource_type: &ResourceType,
        after: Option<&str>,
        since: Option<i64>,
        limit: u64,
    ) -> Result<Vec<StoredVersion>, StoreError>;
    /// Every stored version in storage order, `limit` at a time after `after` (type, id,
    /// version, as the last row read holds them), bodies included: for offline verification.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn versions_after(
        &self,
        after: Option<(&str, &str, u64)>,
        limit: u64,
    ) -> Result<Vec<StoredVersion>, StoreError>;
    /// Every amendment in storage order, `limit` at a time after `after` (type, id, version,
    /// seq): for offline verification.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn amendments_after(
        &self,
        after: Option<(&str, &str, u64, u32)>,
        limit: u64,
    ) -> Result<Vec<Amendment>, StoreError>;
}

/// People, sessions, API tokens, OAuth clients and grants, passkeys, recovery codes, break-glass grants and alerts.
pub trait IdentityRead {
    /// Looks up a bearer token by the SHA-256 of its text.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn token(&self, hash: &TokenHash) -> Result<Option<TokenRow>, StoreError>;
    /// Every API token (revoked and expired ones too), oldest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
    /// The user with this id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn user(&self, id: &str) -> Result<Option<UserRow>, StoreError>;
    /// The user whose blinded name is `name_index`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn user_by_name(&self, name_index: &BlindValue) -> Result<Option<UserRow>, StoreError>;
    /// Every user, by id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn users(&self) -> Result<Vec<UserRow>, StoreError>;
    /// The session whose token hashes to `hash`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn session(&self, hash: &TokenHash) -> Result<Option<SessionRow>, StoreError>;
    /// The registered client with this id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn client(&self, client_id: &str) -> Result<Option<ClientRow>, StoreError>;
    /// Every registered client, by id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn clients(&self) -> Result<Vec<ClientRow>, StoreError>;
    /// The access token whose hash is `hash`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn access_token(&self, hash: &TokenHash) -> Result<Option<AccessTokenRow>, StoreError>;
    /// The grant (authorization code or refresh token) whose hash is `hash`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn grant(&self, hash: &TokenHash) -> Result<Option<GrantRow>, StoreError>;
    /// A user's WebAuthn passkeys: (credential id, sealed passkey), oldest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn passkeys(&self, user_id: &str) -> Result<Vec<(Vec<u8>, Sealed)>, StoreError>;
    /// Unused recovery codes a user has left.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn recovery_codes_left(&self, user_id: &str) -> Result<u64, StoreError>;
    /// The break-glass grant of `user_id` for `patient` open at `now_micros` (the one ending
    /// last), if any.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn break_glass(
        &self,
        user_id: &str,
        patient: &str,
        now_micros: i64,
    ) -> Result<Option<BreakGlassRow>, StoreError>;
    /// Alerts, newest first; only unacknowledged ones when `open_only`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn alerts(&self, open_only: bool) -> Result<Vec<AlertRow>, StoreError>;
    /// One alert.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn alert(&self, id: &str) -> Result<Option<AlertRow>, StoreError>;
    /// A page of alerts, newest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn alerts_page(&self, q: &AlertQuery<'_>) -> Result<Vec<AlertRow>, StoreError>;
    /// `(kind, user, verdict)` of every alert judged at or after `since_micros` (alert time).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn verdicts(&self, since_micros: i64) -> Result<Vec<(String, String, String)>, StoreError>;
    /// One response.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn response(&self, id: &str) -> Result<Option<ResponseRow>, StoreError>;

    /// One entry of the compliance registers.
    ///
    /// # Errors
    /// The driver's.
    fn register_entry(&self, id: &str) -> Result<Option<RegisterRow>, StoreError>;

    /// The register's entries of `kind` (all kinds when `None`), newest opened first.
    ///
    /// # Errors
    /// The driver's.
    fn register(&self, kind: Option<&str>) -> Result<Vec<RegisterRow>, StoreError>;

    /// True if an entry of `kind` about `subject` is open (not closed): a legal hold or a
    /// restriction of processing in force. Asked on every access decision about a patient, so
    /// it reads no content.
    ///
    /// # Errors
    /// The driver's.
    fn register_in_force(&self, kind: &str, subject: &str) -> Result<bool, StoreError>;
    /// Responses, newest first: those of one alert, or all before `(at, id)`, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn responses(
        &self,
        alert: Option<&str>,
        before: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<ResponseRow>, StoreError>;
    /// Responses in force at `now_micros`: carried out (not dry-run), not undone, not lapsed.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn active_responses(&self, now_micros: i64) -> Result<Vec<ResponseRow>, StoreError>;
}

/// Registered peer nodes and sharing receipts.
pub trait PeerRead {
    /// A registered peer by node id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn peer(&self, node: &str) -> Result<Option<PeerRow>, StoreError>;
    /// Every registered peer, by node id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn peers(&self) -> Result<Vec<PeerRow>, StoreError>;
    /// The receipt this node gave for bundle `bundle_id` from `sender`, while it is kept.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn share_receipt(&self, sender: &str, bundle_id: &str) -> Result<Option<String>, StoreError>;
}

/// Every read of a node's records database, available both to plain readers and inside a
/// write transaction: the traits by concern together.
pub trait StoreRead: LogRead + KeyRead + RecordRead + IdentityRead + PeerRead {}

impl<T: LogRead + KeyRead + RecordRead + IdentityRead + PeerRead + ?Sized> StoreRead for T {}

/// The ledger tree as stored, for the proof algorithms of `medvault-ledger`.
pub struct LedgerNodes<'a>(pub &'a dyn LogRead);

/// Hashes of complete subtrees at the upper tree levels, kept in memory. A complete subtree never
/// changes once stored, so cached hashes never go stale; levels from [`NodeCache::MIN_LEVEL`] up
/// hold about 1/128 of the nodes (≈ 80 000 hashes, 3 MB, at 10 million leaves), which turns most
/// of a proof's lookups into memory reads. It starts with the stored levels (8, 16, …); the
/// levels between fill in as proofs hash them up.
#[derive(Debug, Default)]
pub struct NodeCache(std::sync::RwLock<std::collections::HashMap<(u8, u64), Hash>>);

impl NodeCache {
    /// Lowest tree level cached.
    pub const MIN_LEVEL: u8 = 8;
    /// Entries kept at most (the cache empties itself beyond).
    const MAX: usize = 1 << 20;

    /// Loads every stored node from [`Self::MIN_LEVEL`] up (one range read per level). Returns
    /// how many are cached.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub fn warm(&self, store: &dyn LogRead) -> Result<usize, StoreError> {
        let size = store.ledger_size()?;
        let mut loaded = Vec::new();
        // Only stored levels: the others would be hashed up from them, level by level.
        for level in (Self::MIN_LEVEL..64).filter(|l| crate::group::is_stored_level(*l)) {
            let count = size >> level;
            if count == 0 || loaded.len() as u64 + count > Self::MAX as u64 {
                break;
            }
            let hashes = store.ledger_nodes(level, 0, count)?;
            loaded.extend(
                hashes
                    .into_iter()
                    .enumerate()
                    .map(|(i, h)| ((level, i as u64), h)),
            );
        }
        let n = loaded.len();
        if let Ok(mut m) = self.0.write() {
            m.extend(loaded);
        }
        Ok(n)
    }
}

impl LedgerNodes<'_> {
    /// Runs a root or proof computation with all the nodes it needs fetched in one batch.
    ///
    /// # Errors
    /// Store and ledger errors.
    pub fn batched<T>(
        &self,
        f: impl Fn(&dyn NodeSource) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.batched_cached(None, f)
    }

    /// Like [`Self::batched`], reading and filling `cache` for the upper levels.
    ///
    /// # Errors
    /// Store and ledger errors.
    pub fn batched_cached<T>(
        &self,
        cache: Option<&NodeCache>,
        f: impl Fn(&dyn NodeSource) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        medvault_ledger::with_prefetched(f, |keys| {
            let mut out: Vec<Option<Hash>> = vec![None; keys.len()];
            let mut missing = Vec::with_capacity(keys.len());
            let mut slots = Vec::with_capacity(keys.len());
            {
                let cached = cache.and_then(|c| c.0.read().ok());
                for (i, k) in keys.iter().enumerate() {
                    match cached.as_ref().and_then(|m| m.get(k)) {
                        Some(h) => out[i] = Some(*h),
                        None => {
                            missing.push(*k);
                            slots.push(i);
                        }
                    }
                }
            }
            let fetched = self
                .0
                .ledger_nodes_at(&missing)
                .map_err(|e| LedgerError::Storage(Box::new(e)))?;
            let mut fill = cache.and_then(|c| c.0.write().ok());
            for ((slot, key), hash) in slots.into_iter().zip(&missing).zip(fetched) {
                out[slot] = hash;
                if let (Some(m), Some(h)) = (fill.as_mut(), hash)
                    && key.0 >= NodeCache::MIN_LEVEL
                {
                    if m.len() >= NodeCache::MAX {
                        m.clear();
                    }
                    m.insert(*key, h);
                }
            }
            Ok(out)
        })
    }
}

impl NodeSource for LedgerNodes<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, LedgerError> {
        let found = self
            .0
            .ledger_nodes(level, index, 1)
            .map_err(|e| LedgerError::Storage(Box::new(e)))?;
        found
            .first()
            .copied()
            .ok_or(LedgerError::MissingNode { level, index })
    }
}

/// Writes to a ledger's database. Available only inside a write.
pub trait LogTx: LogRead {
    /// Sets a node setting.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Inserts rows as they came from a dump of the same schema version ([`dump`]): the
    /// target of `medvault restore` and `medvault migrate`. Ledger leaves loaded this way are
    /// hashed into the tree at commit like appended ones.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if a row exists already; [`StoreError::Backend`].
    fn load(&mut self, table: &dump::Table, rows: &[Vec<dump::Cell>]) -> Result<(), StoreError>;
    /// Appends an audit leaf and stores its detail beside it. Returns the leaf's index. (Its
    /// patient-index rows are written later, a run at a time: [`LogTx::add_access_tags`].)
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn append_audit(&mut self, detail: &AuditDetail, leaf: &[u8]) -> Result<u64, StoreError>;
    /// Adds patient-index rows for leaves already in the log (the indexer's run, or
    /// re-indexing what was written before the index existed); rows already present are kept.
    /// Access-log databases only.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn add_access_tags(&mut self, rows: &[(u64, BlindValue)]) -> Result<(), StoreError>;
    /// Removes the stored audit details of leaves `[start, end)` (their leaves stay: an archive
    /// keeps the details). Returns how many were removed.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn remove_audit_details(&mut self, start: u64, end: u64) -> Result<u64, StoreError>;
    /// Records that this node cosigned `note` (size `size`, root `root`) for the log `origin`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn set_witnessed(
        &mut self,
        origin: &str,
        size: u64,
        root: &Hash,
        note: &str,
    ) -> Result<(), StoreError>;
    /// Stores (or replaces, e.g. with more cosignatures) the checkpoint note of `size`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError>;
}

/// Writes to the key hierarchy. Available only inside a write.
pub trait KeyTx: KeyRead {
    /// Adds a KEK version.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the version exists.
    fn add_kek(&mut self, version: u32, wrapped: &WrappedKey) -> Result<(), StoreError>;
    /// Inserts or replaces a wrapped data key.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_data_key(
        &mut self,
        name: &KeyName,
        key_version: u32,
        kek_version: u32,
        wrapped: &WrappedKey,
    ) -> Result<(), StoreError>;
    /// Destroys a data key: its wrapped bytes are overwritten and deleted, every resource whose
    /// current version it sealed is marked shredded, and their index entries are removed.
    /// Returns how many resources were affected.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn destroy_data_key(&mut self, name: &KeyName) -> Result<u64, StoreError>;
}

/// Writes of sealed FHIR resources. Available only inside a write.
pub trait RecordTx: RecordRead {
    /// Appends a version (its number must be the current one plus one, or 1 for a new resource),
    /// makes it current, replaces the resource's index entries with `index`, and appends
    /// `leaf` (the version's ledger entry) to the ledger in the same transaction. Returns the
    /// leaf's index.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if that version already exists; [`StoreError::Backend`] if the
    /// version carries no commitment salt.
    fn put_version(
        &mut self,
        version: &StoredVersion,
        index: &[BlindValue],
        leaf: &[u8],
    ) -> Result<u64, StoreError>;
    /// Replaces a stored version's state with `now` (new body or none, key, salt, expunged)
    /// and records `before` (what it was committed as) as its next amendment, appending `leaf`
    /// (the amended version's ledger entry) to the ledger in the same transaction. The
    /// current version, the index and `last_updated` are left alone. Returns the new leaf's
    /// index.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the version does not exist; [`StoreError::Backend`].
    fn amend_version(
        &mut self,
        before: &Amendment,
        now: &StoredVersion,
        leaf: &[u8],
    ) -> Result<u64, StoreError>;

    /// Bulk load: for the rest of this op, the index entries of resources [`Self::put_version`]
    /// creates are staged where searches do not look yet, to be moved into the index in key
    /// order by [`Self::merge_staged_index`] (one pass over the index instead of a random
    /// insert per entry). Entries of existing resources, and of resources whose type is in
    /// `except`, are written as usual. True if the backend stages; false (the default) if it
    /// writes every entry as usual.
    ///
    /// A backend that stages merges what is left staged when it opens the database, and a
    /// running one merges a stage that stopped growing (an interrupted bulk load), so
    /// resources are never left unsearchable for long.
    fn stage_new_index_entries(&mut self, except: &'static [&'static str]) -> bool {
        let _ = except;
        false
    }

    /// Moves every staged index entry into the index, in key order, in this transaction.
    /// Returns how many were staged (0 at once when none are).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn merge_staged_index(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Writes of people, sessions, tokens, OAuth state, passkeys, break-glass grants and alerts. Available only inside a write.
pub trait IdentityTx: IdentityRead {
    /// Inserts or replaces a client (by id).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_client(&mut self, client: &ClientRow) -> Result<(), StoreError>;
    /// Stores an issued access token (and forgets tokens that expired before `now_micros`).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_access_token(
        &mut self,
        token: &AccessTokenRow,
        now_micros: i64,
    ) -> Result<(), StoreError>;
    /// Records a client assertion's `jti` until `expires_micros`: true if it was new, false if
    /// the client already used it (a replay). Forgets ids that expired before `now_micros`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn use_assertion_id(
        &mut self,
        client_id: &str,
        jti: &str,
        expires_micros: i64,
        now_micros: i64,
    ) -> Result<bool, StoreError>;
    /// Stores a break-glass grant.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] on a duplicate id.
    fn put_break_glass(&mut self, grant: &BreakGlassRow) -> Result<(), StoreError>;
    /// Stores a new alert.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] on a duplicate id.
    fn put_alert(&mut self, alert: &AlertRow) -> Result<(), StoreError>;
    /// Marks an alert acknowledged: true if it existed and was open.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn acknowledge_alert(&mut self, id: &str, by: &str, at_micros: i64)
    -> Result<bool, StoreError>;
    /// Records a verdict (`confirmed` or `dismissed`) and its sealed reason on an alert not yet
    /// judged, acknowledging it if it was open: true if it existed and had no verdict.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn judge_alert(
        &mut self,
        id: &str,
        by: &str,
        at_micros: i64,
        verdict: &str,
        note: Option<&Sealed>,
    ) -> Result<bool, StoreError>;
    /// Stores a new response.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] on a duplicate id.
    fn put_response(&mut self, response: &ResponseRow) -> Result<(), StoreError>;

    /// Adds or replaces an entry of the compliance registers.
    ///
    /// # Errors
    /// The driver's.
    fn put_register_entry(&mut self, entry: &RegisterRow) -> Result<(), StoreError>;
    /// Marks a response undone: true if it existed and was not undone yet.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn undo_response(&mut self, id: &str, by: &str, at_micros: i64) -> Result<bool, StoreError>;
    /// Stores a new grant.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] on a duplicate hash.
    fn put_grant(&mut self, grant: &GrantRow) -> Result<(), StoreError>;
    /// Marks a grant used: true if it was unused (so exactly one exchange wins).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn use_grant(&mut self, hash: &TokenHash) -> Result<bool, StoreError>;
    /// Revokes a family: deletes its grants and the access tokens issued from it. Returns how
    /// many rows went.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn revoke_family(&mut self, family: &str) -> Result<u64, StoreError>;
    /// Inserts or replaces a user's passkey (by credential id; its signature counter changes on
    /// every use).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if another user registered the same credential id.
    fn put_passkey(
        &mut self,
        user_id: &str,
        credential_id: &[u8],
        sealed: &Sealed,
        created_micros: i64,
    ) -> Result<(), StoreError>;
    /// Inserts or replaces a user (by id).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if another user has the same blinded name.
    fn put_user(&mut self, user: &UserRow) -> Result<(), StoreError>;
    /// Inserts or replaces a session (by token hash).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_session(&mut self, session: &SessionRow) -> Result<(), StoreError>;
    /// Ends one session of `user_id` (`Some(hash)`) or all of them (`None`). Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn delete_sessions(
        &mut self,
        user_id: &str,
        hash: Option<&TokenHash>,
    ) -> Result<u64, StoreError>;
    /// Replaces a user's recovery codes with these hashes.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn set_recovery_codes(&mut self, user_id: &str, hashes: &[TokenHash])
    -> Result<(), StoreError>;
    /// Consumes a recovery code: true if it was unused (it is now used), false otherwise.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn use_recovery_code(&mut self, user_id: &str, hash: &TokenHash) -> Result<bool, StoreError>;
    /// Stores an API token by the SHA-256 of its text.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] on a duplicate hash or id.
    fn add_token(&mut self, hash: &TokenHash, token: &TokenRow) -> Result<(), StoreError>;
    /// Revokes the token `token_id` at `now_micros`: true if it existed and was not revoked.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn revoke_token(&mut self, token_id: &str, now_micros: i64) -> Result<bool, StoreError>;
    /// Records a use of the token `token_id` at `now_micros` (never moves the time back).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn token_used(&mut self, token_id: &str, now_micros: i64) -> Result<(), StoreError>;
}

/// Writes of peers and sharing receipts. Available only inside a write.
pub trait PeerTx: PeerRead {
    /// Registers a peer, replacing an earlier registration of the same node id.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_peer(&mut self, peer: &PeerRow) -> Result<(), StoreError>;
    /// Keeps the receipt given for a bundle until `expires_micros` (the bundle's own expiry), so
    /// a sender that lost the answer gets it again; forgets receipts expired before `now_micros`.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn put_share_receipt(
        &mut self,
        sender: &str,
        bundle_id: &str,
        receipt: &str,
        expires_micros: i64,
        now_micros: i64,
    ) -> Result<(), StoreError>;
    /// Removes a peer's registration: true if it was registered.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    fn delete_peer(&mut self, node: &str) -> Result<bool, StoreError>;
}

/// Every write to a node's records database, available only inside [`Store::write`]: the traits
/// by concern together.
pub trait StoreTx: StoreRead + LogTx + KeyTx + RecordTx + IdentityTx + PeerTx {}

impl<T: StoreRead + LogTx + KeyTx + RecordTx + IdentityTx + PeerTx + ?Sized> StoreTx for T {}

/// A write to run atomically on the backend's writer. Ledger leaves an op appends are hashed
/// into the tree (every new complete subtree stored) before the transaction commits.
pub type WriteOp = Box<dyn FnOnce(&mut dyn StoreTx) -> Result<(), StoreError> + Send>;

/// Called once with a submitted write's outcome, after its commit is durable (or failed).
pub type WriteDone = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write to a ledger's database: only the log's tables (see [`LogTx`]).
pub type LogOp = Box<dyn FnOnce(&mut dyn LogTx) -> Result<(), StoreError> + Send>;

/// A database holding one of the node's Merkle logs. The access log is one of these and nothing
/// more: code holding it cannot reach records, keys or identities, by type. The records
/// database is one too (every [`Store`] is).
pub trait LogStore: LogRead + Send + Sync {
    /// Queues `op` on the backend's writer; `done` receives the outcome once the commit is
    /// durable (on the writer's thread; it must not block).
    fn submit_log(&self, op: LogOp, done: WriteDone);
    /// Calls `sink` with every row of `tables` (one of [`dump::NODE_TABLES`] and
    /// [`dump::LOG_TABLES`], matching the database), table by table, all read in one consistent
    /// snapshot while writers go on.
    ///
    /// # Errors
    /// The sink's error, or [`StoreError::Backend`].
    fn dump(
        &self,
        tables: &'static [dump::Table],
        sink: &mut dump::Sink<'_>,
    ) -> Result<(), StoreError>;
}

/// A node's records database: records, keys, identities, peers and the records log.
pub trait Store: StoreRead + LogStore {
    /// Runs `op` in its own atomic unit and returns once it is durably committed (or rolled back
    /// when it returned an error, which is passed through).
    ///
    /// # Errors
    /// The op's own error, or [`StoreError::Backend`] if the commit failed.
    fn write(&self, op: WriteOp) -> Result<(), StoreError>;
    /// Like [`Store::write`] without waiting: `done` receives the outcome (on the backend's own
    /// thread; it must not block). Lets async callers wait without holding a thread. The default
    /// runs the write on the caller's thread.
    fn submit(&self, op: WriteOp, done: WriteDone) {
        done(self.write(op));
    }
    /// Every data key name, for rotation.
    ///
    /// # Errors
    /// [`StoreError::Backend`], also when a stored name is not a valid [`KeyName`].
    fn data_key_names(&self) -> Result<Vec<KeyName>, StoreError>;
}

/// Where an op's value waits for the write's outcome: the op fills it, the completion takes it.
struct Slot<T>(std::sync::Arc<std::sync::Mutex<Option<T>>>);

impl<T: Send + 'static> Slot<T> {
    /// A slot and the completion that hands its value (or the write's error) to `done`.
    fn new(done: impl FnOnce(Result<T, StoreError>) + Send + 'static) -> (Self, WriteDone) {
        let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
        let taken = std::sync::Arc::clone(&slot);
        let done: WriteDone = Box::new(move |r| {
            done(r.and_then(|()| {
                taken
                    .lock()
                    .ok()
                    .and_then(|mut s| s.take())
                    .ok_or_else(|| StoreError::Backend("write op produced no result".into()))
            }));
        });
        (Self(slot), done)
    }

    fn put(&self, value: T) {
        if let Ok(mut s) = self.0.lock() {
            *s = Some(value);
        }
    }
}

/// Waits for a submitted write's value.
fn wait_for<T: Send + 'static>(
    submit: impl FnOnce(Box<dyn FnOnce(Result<T, StoreError>) + Send>),
) -> Result<T, StoreError> {
    let (reply, wait) = std::sync::mpsc::sync_channel(1);
    submit(Box::new(move |r| {
        let _ = reply.send(r);
    }));
    wait.recv()
        .map_err(|_| StoreError::Backend("the store dropped a write unanswered".into()))?
}

/// Submits a write whose op produces a value; `done` receives it (or the error) once the commit
/// is durable, on the backend's thread (it must not block).
pub fn submit_with<T: Send + 'static>(
    store: &dyn Store,
    op: impl FnOnce(&mut dyn StoreTx) -> Result<T, StoreError> + Send + 'static,
    done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) {
    let (slot, done) = Slot::new(done);
    store.submit(
        Box::new(move |tx| {
            slot.put(op(tx)?);
            Ok(())
        }),
        done,
    );
}

/// Runs a write and hands back what the op produced.
///
/// # Errors
/// As [`Store::write`].
pub fn write_with<T: Send + 'static>(
    store: &dyn Store,
    op: impl FnOnce(&mut dyn StoreTx) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    wait_for(|done| submit_with(store, op, done))
}

/// [`submit_with`] for a ledger's database.
pub fn submit_log_with<T: Send + 'static>(
    store: &dyn LogStore,
    op: impl FnOnce(&mut dyn LogTx) -> Result<T, StoreError> + Send + 'static,
    done: impl FnOnce(Result<T, StoreError>) + Send + 'static,
) {
    let (slot, done) = Slot::new(done);
    store.submit_log(
        Box::new(move |tx| {
            slot.put(op(tx)?);
            Ok(())
        }),
        done,
    );
}

/// [`write_with`] for a ledger's database.
///
/// # Errors
/// The op's own error, or why the commit failed.
pub fn write_log_with<T: Send + 'static>(
    store: &dyn LogStore,
    op: impl FnOnce(&mut dyn LogTx) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    wait_for(|done| submit_log_with(store, op, done))
}

/// A node's two databases — the records database and the access log's — on one backend. The
/// binary picks the backend (SQLite files, PostgreSQL); the node opens its data through this and
/// never names a backend.
pub trait Databases {
    /// Where the data lives, for messages (a file, or a server and schema; never a password).
    fn describe(&self) -> String;
    /// Whether the records database holds a node already. Asked before anything is opened:
    /// the key file is dealt with first, so a wrong passphrase or a damaged key file creates or
    /// migrates no database.
    ///
    /// # Errors
    /// The backend's error.
    fn node_exists(&self) -> Result<bool, StoreError>;
    /// Opens (creating and migrating if needed) the records database.
    ///
    /// # Errors
    /// The backend's error.
    fn open_node(&self) -> Result<std::sync::Arc<dyn Store>, StoreError>;
    /// Whether the access log's database holds a log already. Asked before opening it, because
    /// opening creates it, and a fresh empty log beside a node's records would silently forget
    /// who accessed what.
    ///
    /// # Errors
    /// The backend's error.
    fn access_log_exists(&self) -> Result<bool, StoreError>;
    /// Opens (creating and migrating if needed) the access log's database.
    ///
    /// # Errors
    /// The backend's error.
    fn open_access_log(&self) -> Result<std::sync::Arc<dyn LogStore>, StoreError>;
    /// What an operator must do when the records exist but the access log does not.
    fn missing_access_log(&self) -> &'static str;
    /// True when several processes may open the databases at once (each needs a copy of the
    /// first process's key file; two may race to create the node).
    fn shared(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::{driver_step, merge_step, per_value_batch};

    fn read(lists: &[Vec<u64>], n: u64) -> Vec<(Vec<u64>, u64)> {
        lists
            .iter()
            .map(|l| (l.iter().copied().take(n as usize).collect(), n))
            .collect()
    }

    #[test]
    fn a_step_reads_a_share_of_each_value() {
        assert_eq!(per_value_batch(1, 256), 256);
        assert_eq!(per_value_batch(2, 256), 256);
        assert_eq!(per_value_batch(8, 256), 64);
        assert_eq!(per_value_batch(4000, 256), 4, "at least 4");
        assert_eq!(per_value_batch(3, 2), 4);
    }

    #[test]
    fn a_merged_step_is_complete_down_to_where_a_full_list_stops() {
        // The first list is full (4 of 4): below 4 it may have more, so the step stops at 4.
        assert_eq!(
            merge_step(&read(&[vec![10, 8, 6, 4, 2], vec![9, 5, 1]], 4), 100),
            (vec![10, 9, 8, 6, 5, 4], Some(4))
        );
        // No list full: everything is known, and nothing follows.
        assert_eq!(
            merge_step(&read(&[vec![7, 3], vec![7, 2]], 4), 100),
            (vec![7, 3, 2], None),
            "duplicates once"
        );
        // The limit cuts first.
        assert_eq!(
            merge_step(&read(&[vec![9, 8, 7], vec![6]], 4), 2),
            (vec![9, 8], Some(8))
        );
        // The highest of the full lists' last positions bounds the step (the first list may
        // hold 18 next, before the second's 10).
        assert_eq!(
            merge_step(&read(&[vec![20, 19, 18], vec![10, 5], vec![3]], 2), 100),
            (vec![20, 19], Some(19))
        );
        assert_eq!(merge_step(&read(&[vec![], vec![]], 4), 10), (vec![], None));
    }

    #[test]
    fn a_dense_value_among_many_is_read_again_so_the_step_fills() {
        // One dense value (every position 1000..1) among 100 values with one entry each.
        let mut lists: Vec<Vec<u64>> = (0..100).map(|i| vec![5000 + i]).collect();
        lists[0] = (1..=1000).rev().collect();
        let mut rounds = Vec::new();
        let (step, resume) = driver_step(100, 256, |which, n| {
            rounds.push((which.len(), n));
            Ok::<_, ()>(
                which
                    .iter()
                    .map(|i| lists[*i].iter().copied().take(n as usize).collect())
                    .collect(),
            )
        })
        .unwrap();
        assert_eq!(
            rounds,
            vec![(100, 6), (1, 256)],
            "all values a share, then the dense one"
        );
        assert_eq!(step.len(), 256);
        assert_eq!(step[..99], (5001..5100).rev().collect::<Vec<_>>()[..]);
        assert_eq!(step[99], 1000);
        assert_eq!(resume, step.last().copied());
    }
}
