//! Bulk Data Access v2 export (`$export` at system, `Patient` and `Group` level): an
//! asynchronous job per kick-off, polled for status, cancelled with DELETE, and read as ndjson
//! files named in a manifest.
//!
//! Bulk export is the widest exfiltration path a node has, so: every resource is opened and
//! decided as the requester (scopes, the access policy and consent) exactly as a search would;
//! each requester has at most one job running and the node at most [`ExportLimits::running`];
//! a job stops as too costly past [`ExportLimits::max_resources`]; the output files are sealed
//! at rest under a key that exists only in this process's memory (a restart makes them
//! unreadable and they are deleted), are readable only by the principal that asked, and are
//! deleted at expiry. The access log gets the kick-off, every status poll and every file served
//! (as requests), and one record when a job ends naming the requester, the resources and the
//! number of patients they belong to.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use medvault_auth::scopes::Interaction;
use medvault_core::{ResourceId, ResourceType};
use medvault_crypto::{DataKey, Sealed};
use medvault_store::StoreRead;
use serde_json::{Value, json};

use crate::Node;
use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::ctx::Ctx;
use crate::error::{Error, ErrorKind, IssueCode};
use crate::search::{self, SearchRequest};

/// What bounds exports.
#[derive(Debug, Clone, Copy)]
pub struct ExportLimits {
    /// Jobs running at once on the node.
    pub running: usize,
    /// Resources one job may write before it stops as too costly.
    pub max_resources: u64,
    /// Resources per output file.
    pub per_file: usize,
    /// How long a finished job's files stay (then they are deleted).
    pub retention: Duration,
    /// Finished jobs one requester may keep (older ones must be deleted first).
    pub kept_per_owner: usize,
}

impl Default for ExportLimits {
    fn default() -> Self {
        Self {
            running: 2,
            max_resources: 2_000_000,
            per_file: 50_000,
            retention: Duration::from_secs(3600),
            kept_per_owner: 4,
        }
    }
}

/// The level an export starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// `GET /fhir/$export`: every type the requester may read.
    System,
    /// `GET /fhir/Patient/$export`: every patient's compartment.
    Patient,
    /// `GET /fhir/Group/[id]/$export`: the compartments of the group's member patients.
    Group(ResourceId),
}

/// A parsed kick-off.
#[derive(Debug)]
pub struct KickOff {
    level: Level,
    types: Vec<ResourceType>,
    since: Option<i64>,
    filters: HashMap<ResourceType, Vec<SearchRequest>>,
    request: String,
}

/// The output formats `_outputFormat` may name (all mean FHIR ndjson).
const NDJSON: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

fn param_error(text: impl Into<String>) -> Error {
    Error::bad_request(text)
}

impl KickOff {
    /// Parses a kick-off's parameters (`_outputFormat`, `_since`, `_type`, `_typeFilter`).
    /// `request` is the kick-off URL, echoed in the manifest.
    ///
    /// # Errors
    /// 400 for an unknown parameter, output format, type or filter; 403 when the requester's
    /// scopes allow none of the types asked for.
    pub fn parse(
        ctx: &Ctx,
        level: Level,
        params: &[(String, String)],
        request: String,
    ) -> Result<Self, Error> {
        let mut types: Option<Vec<ResourceType>> = None;
        let mut since = None;
        let mut filter_text = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "_outputFormat" => {
                    if !NDJSON.contains(&value.as_str()) {
                        return Err(param_error(
                            "_outputFormat must be application/fhir+ndjson (ndjson)",
                        ));
                    }
                }
                "_since" => {
                    let (start, _) = medvault_fhir::date_range(value).ok_or_else(|| {
                        param_error("_since must be a FHIR instant (2026-01-01T00:00:00Z)")
                    })?;
                    since = Some(start.saturating_mul(1_000_000));
                }
                "_type" => {
                    let mut list = types.take().unwrap_or_default();
                    for t in value.split(',').filter(|t| !t.is_empty()) {
                        let rt = ctx.fhir.served(t).cloned().ok_or_else(|| {
                            param_error(format!("_type: {t} is not a served resource type"))
                        })?;
                        if !list.contains(&rt) {
                            list.push(rt);
                        }
                    }
                    types = Some(list);
                }
                "_typeFilter" => filter_text.extend(value.split(',').map(str::to_owned)),
                "_elements" | "includeAssociatedData" | "patient" => {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        IssueCode::NotSupported,
                        format!("{name} is not supported by this node's $export"),
                    ));
                }
                _ => return Err(param_error(format!("$export does not take '{name}'"))),
            }
        }
        let in_scope = |rt: &ResourceType| {
            ctx.scope_access(rt, Interaction::Search).is_ok()
                && match level {
                    Level::System => true,
                    _ => {
                        *rt == ResourceType::PATIENT
                            || ctx
                                .fhir
                                .type_info(rt.as_str())
                                .is_some_and(|i| !i.compartment_params.is_empty())
                    }
                }
        };
        let types = match types {
            Some(asked) => {
                if let Some(t) = asked.iter().find(|t| !in_scope(t)) {
                    return Err(Error::new(
                        ErrorKind::Forbidden,
                        IssueCode::Forbidden,
                        format!(
                            "this export may not include {t} (scopes, or outside every patient's compartment)"
                        ),
                    ));
                }
                asked
            }
            None => ctx
                .fhir
                .types()
                .keys()
                .filter(|t| in_scope(t))
                .cloned()
                .collect(),
        };
        if types.is_empty() {
            return Err(Error::new(
                ErrorKind::Forbidden,
                IssueCode::Forbidden,
                "the requester may read none of the types an export would include",
            ));
        }
        let mut filters: HashMap<ResourceType, Vec<SearchRequest>> = HashMap::new();
        for f in filter_text {
            let (t, query) = f
                .split_once('?')
                .ok_or_else(|| param_error("_typeFilter must be <type>?<search parameters>"))?;
            let rt = ctx
                .fhir
                .served(t)
                .cloned()
                .filter(|rt| types.contains(rt))
                .ok_or_else(|| param_error(format!("_typeFilter: {t} is not exported")))?;
            let req = search::parse(ctx, &rt, &search::parse_query_string(query), true)?;
            if !req.is_plain_filter() {
                return Err(Error::new(
                    ErrorKind::Invalid,
                    IssueCode::NotSupported,
                    "_typeFilter takes search parameters of the type only (no chains, _has, _id, _lastUpdated, paging or includes)",
                ));
            }
            filters.entry(rt).or_default().push(req);
        }
        Ok(Self {
            level,
            types,
            since,
            filters,
            request,
        })
    }
}

#[derive(Debug, Clone)]
struct OutFile {
    rtype: String,
    name: String,
    count: u64,
}

#[derive(Debug)]
enum State {
    Running,
    Done {
        files: Vec<OutFile>,
        finished: std::time::Instant,
    },
    Failed {
        message: String,
        finished: std::time::Instant,
    },
    /// An import's end: what each input loaded or why it did not.
    Imported {
        report: Value,
        finished: std::time::Instant,
    },
}

struct Job {
    id: String,
    owner: String,
    request: String,
    transaction_time: String,
    key: DataKey,
    cancelled: AtomicBool,
    written: AtomicU64,
    state: Mutex<State>,
}

impl Job {
    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a job thread panicked while holding it; its state is still
        // whole (every assignment is one move).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a status poll answers.
#[derive(Debug)]
pub enum Status {
    /// Still running: how far (`X-Progress`).
    Running(String),
    /// Done: the manifest.
    Complete(Value),
}

/// The export jobs of this process.
pub struct Exports {
    dir: PathBuf,
    limits: ExportLimits,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl std::fmt::Debug for Exports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exports")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn not_found() -> Error {
    Error::not_found("no such export or import job (it may have expired or been deleted)")
}

const FILE_CONTEXT: &str = "medvault-export-file-v1";

impl Exports {
    /// Jobs writing their files under `dir` (created, owner-only, by the first job). Files an
    /// earlier process left there are deleted: their keys were in its memory, so nothing could
    /// open them any more.
    pub fn new(dir: PathBuf, limits: ExportLimits) -> Self {
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(error = %e, "could not delete an earlier process's export files");
        }
        Self {
            dir,
            limits,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn create_job_dir(&self, id: &str) -> Result<(), Error> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            b.mode(0o700);
        }
        b.create(self.job_dir(id)).map_err(|e| Error::internal(&e))
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Arc<Job>>> {
        // Every change under the lock is one insert or remove: a poisoned map is still whole.
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Deletes finished jobs past their retention, with their files.
    pub fn sweep(&self) {
        let retention = self.limits.retention;
        let expired: Vec<String> = self
            .jobs()
            .iter()
            .filter(|(_, j)| match &*j.state() {
                State::Done { finished, .. }
                | State::Failed { finished, .. }
                | State::Imported { finished, .. } => finished.elapsed() > retention,
                State::Running => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    fn remove(&self, id: &str) {
        if let Some(job) = self.jobs().remove(id) {
            job.cancelled.store(true, Ordering::Relaxed);
        }
        let _ = std::fs::remove_dir_all(self.job_dir(id));
    }

    fn owned(&self, owner: &str, id: &str) -> Result<Arc<Job>, Error> {
        self.sweep();
        // Another principal's job answers as a missing one.
        self.jobs()
            .get(id)
            .filter(|j| j.owner == owner)
            .cloned()
            .ok_or_else(not_found)
    }

    /// Starts an export for `owner` (the requesting principal: an app's client id, a person's
    /// user id or an API token's id) running as `ctx`; returns the job id.
    ///
    /// # Errors
    /// 429 when the owner has a job running or too many kept, or the node runs its most; RNG
    /// failure.
    pub fn kick_off(
        self: &Arc<Self>,
        node: Arc<Node>,
        ctx: Ctx,
        owner: String,
        agent: Value,
        plan: KickOff,
    ) -> Result<String, Error> {
        self.sweep();
        if let Level::Group(group) = &plan.level {
            // An unknown (or hidden) Group is refused at kick-off, as a read of it would be.
            group_members(node.store.as_ref(), &ctx, group)?;
        }
        let job = self.admit(&node, owner, plan.request.clone())?;
        let id = job.id.clone();
        let exports = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("export-{}", &id[..8]))
            .spawn(move || exports.run(&node, &ctx, &job, &plan, &agent))
            .map_err(|e| {
                self.remove(&id);
                Error::internal(&e)
            })?;
        Ok(id)
    }

    /// A new job for `owner`, admitted under the limits (one running per requester, a few kept,
    /// the node's most at once).
    fn admit(&self, node: &Node, owner: String, request: String) -> Result<Arc<Job>, Error> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = Arc::new(Job {
            id: id.clone(),
            owner: owner.clone(),
            request,
            transaction_time: crate::clock::instant(node.clock.now_micros()),
            key: DataKey::generate(format!("export/{id}"), 1).map_err(|e| Error::internal(&e))?,
            cancelled: AtomicBool::new(false),
            written: AtomicU64::new(0),
            state: Mutex::new(State::Running),
        });
        {
            let mut jobs = self.jobs();
            let running = |j: &Arc<Job>| matches!(&*j.state(), State::Running);
            let busy =
                |why: &str| Error::new(ErrorKind::Throttled, IssueCode::Throttled, why.to_owned());
            if jobs.values().any(|j| j.owner == owner && running(j)) {
                return Err(busy(
                    "an export of yours is still running: wait for it or cancel it (DELETE its status URL)",
                ));
            }
            if jobs.values().filter(|j| j.owner == owner).count() >= self.limits.kept_per_owner {
                return Err(busy(
                    "you keep too many finished exports: delete one (DELETE its status URL) first",
                ));
            }
            if jobs.values().filter(|j| running(j)).count() >= self.limits.running {
                return Err(busy("the node runs its most exports at once; retry later"));
            }
            jobs.insert(id, Arc::clone(&job));
        }
        Ok(job)
    }

    /// Starts a Bulk Data import ("ping and pull") for `owner`, running as `ctx`: each input's
    /// ndjson is fetched with `fetch` and loaded as one transaction (all of the file or none of
    /// it), as `medvault import` loads a file, and decided as the requester's writes. The job's
    /// status ends with each input's count, or its error.
    ///
    /// # Errors
    /// As [`Self::kick_off`]'s limits.
    pub fn kick_off_import(
        self: &Arc<Self>,
        node: Arc<Node>,
        ctx: Ctx,
        owner: String,
        agent: Value,
        plan: ImportPlan,
    ) -> Result<String, Error> {
        self.sweep();
        let job = self.admit(&node, owner, plan.request)?;
        let id = job.id.clone();
        let (inputs, fetch) = (plan.inputs, plan.fetch);
        std::thread::Builder::new()
            .name(format!("import-{}", &id[..8]))
            .spawn(move || {
                let report = run_import(&node, &ctx, &job, &inputs, fetch.as_ref(), &agent);
                *job.state() = State::Imported {
                    report,
                    finished: std::time::Instant::now(),
                };
            })
            .map_err(|e| {
                self.remove(&id);
                Error::internal(&e)
            })?;
        Ok(id)
    }

    fn run(&self, node: &Node, ctx: &Ctx, job: &Arc<Job>, plan: &KickOff, agent: &Value) {
        let mut patients = HashSet::new();
        let result = self.write_all(node.store.as_ref(), ctx, job, plan, &mut patients);
        let cancelled = job.cancelled.load(Ordering::Relaxed);
        let (outcome, message) = match &result {
            // Whatever failed after a cancel (its files were deleted under it) is the cancel.
            _ if cancelled => (AuditOutcome::ClientError, Some("cancelled".to_owned())),
            Ok(_) => (AuditOutcome::Success, None),
            Err(e) => (
                if e.kind.is_client_error() {
                    AuditOutcome::ClientError
                } else {
                    AuditOutcome::ServerError
                },
                Some(e.message.clone()),
            ),
        };
        let written = job.written.load(Ordering::Relaxed);
        let files = result.as_ref().map_or(0, Vec::len);
        // Each patient whose data the job holds gets a record of the disclosure, so their
        // accounting of disclosures lists the export.
        if result.is_ok() && !cancelled {
            let mut named: Vec<&String> = patients.iter().collect();
            named.sort();
            for p in named {
                let recorded = node.record_audit_now(|now| {
                    AuditRecord::new(
                        AuditKind::Rest,
                        now,
                        "bulk-export-disclosure",
                        AuditOutcome::Success,
                    )
                    .agent(agent.clone())
                    .target_opt(Some(&format!("export/{}", job.id)))
                    .patient(Some(p.clone()))
                });
                if let Err(e) = recorded {
                    tracing::error!(error = %e, "could not record an export's disclosure");
                }
            }
        }
        if let Err(e) = node.record_audit_now(|now| {
            AuditRecord::new(AuditKind::Rest, now, "bulk-export-complete", outcome)
                .agent(agent.clone())
                .target_opt(Some(&format!("export/{}", job.id)))
                .with("resources", written)
                .with("patients", patients.len() as u64)
                .with("files", files as u64)
        }) {
            tracing::error!(error = %e, "could not record the end of an export");
        }
        let finished = std::time::Instant::now();
        *job.state() = match result {
            Ok(files) => State::Done { files, finished },
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.job_dir(&job.id));
                State::Failed {
                    message: message.unwrap_or_else(|| e.message.clone()),
                    finished,
                }
            }
        };
    }

    fn write_all(
        &self,
        store: &dyn StoreRead,
        ctx: &Ctx,
        job: &Job,
        plan: &KickOff,
        patients: &mut HashSet<String>,
    ) -> Result<Vec<OutFile>, Error> {
        self.create_job_dir(&job.id)?;
        let mut out = Vec::new();
        let members = match &plan.level {
            Level::Group(id) => Some(group_members(store, ctx, id)?),
            _ => None,
        };
        for rt in &plan.types {
            let mut writer = FileWriter::new(self, job, rt);
            let mut keep = |v: Value, key_name: &str| -> Result<(), Error> {
                if job.cancelled.load(Ordering::Relaxed) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        IssueCode::Processing,
                        "the export was cancelled",
                    ));
                }
                if let Some(fs) = plan.filters.get(rt)
                    && !fs.iter().any(|f| f.matches(ctx, rt, &v))
                {
                    return Ok(());
                }
                if let Some(p) = key_name.strip_prefix("Patient/") {
                    patients.insert(p.to_owned());
                }
                let n = job.written.fetch_add(1, Ordering::Relaxed) + 1;
                if n > self.limits.max_resources {
                    return Err(Error::new(
                        ErrorKind::Invalid,
                        IssueCode::TooCostly,
                        format!(
                            "the export passed {} resources; narrow it with _type, _since or _typeFilter",
                            self.limits.max_resources
                        ),
                    ));
                }
                writer.push(&v, &mut out)
            };
            match &members {
                None => scan_type(store, ctx, rt, plan, &mut keep)?,
                Some(members) => {
                    // A record in several members' compartments (the Group itself, a shared
                    // encounter) is written once.
                    let mut written = HashSet::new();
                    for patient in members {
                        for_patient(store, ctx, rt, patient, plan.since, &mut written, &mut keep)?;
                    }
                }
            }
            writer.finish(&mut out)?;
        }
        Ok(out)
    }

    /// Where a job stands.
    ///
    /// # Errors
    /// 404 for an unknown job or another principal's; the job's own failure (as the error it
    /// ended with).
    pub fn status(&self, owner: &str, id: &str, file_base: &str) -> Result<Status, Error> {
        let job = self.owned(owner, id)?;
        let state = job.state();
        match &*state {
            State::Running => Ok(Status::Running(format!(
                "{} resources written",
                job.written.load(Ordering::Relaxed)
            ))),
            State::Failed { message, .. } => Err(Error::new(
                ErrorKind::Unprocessable,
                IssueCode::Processing,
                format!("the export failed: {message}"),
            )),
            State::Imported { report, .. } => Ok(Status::Complete(report.clone())),
            State::Done { files, .. } => Ok(Status::Complete(json!({
                "transactionTime": job.transaction_time,
                "request": job.request,
                "requiresAccessToken": true,
                "output": files.iter().map(|f| json!({
                    "type": f.rtype,
                    "url": format!("{file_base}/{}/{}", job.id, f.name),
                    "count": f.count,
                })).collect::<Vec<_>>(),
                "error": [],
            }))),
        }
    }

    /// Cancels a running job or deletes a finished one, with its files.
    ///
    /// # Errors
    /// 404 for an unknown job or another principal's.
    pub fn delete(&self, owner: &str, id: &str) -> Result<(), Error> {
        self.owned(owner, id)?;
        self.remove(id);
        Ok(())
    }

    /// One output file, opened: ndjson, its type and its number of resources.
    ///
    /// # Errors
    /// 404 for an unknown job, file or another principal's.
    pub fn file(
        &self,
        owner: &str,
        id: &str,
        name: &str,
    ) -> Result<(zeroize::Zeroizing<Vec<u8>>, String, u64), Error> {
        let job = self.owned(owner, id)?;
        let file = match &*job.state() {
            State::Done { files, .. } => files.iter().find(|f| f.name == name).cloned(),
            _ => None,
        }
        .ok_or_else(not_found)?;
        let sealed = std::fs::read(self.job_dir(id).join(&file.name)).map_err(|_| not_found())?;
        let plain = job
            .key
            .open_bound(
                FILE_CONTEXT,
                &[id.as_bytes(), file.name.as_bytes()],
                &Sealed::from_stored(sealed),
            )
            .map_err(|e| Error::internal(&e))?;
        Ok((plain, file.rtype, file.count))
    }
}

/// Accumulates one type's ndjson and seals each full file.
struct FileWriter<'a> {
    exports: &'a Exports,
    job: &'a Job,
    rtype: &'a ResourceType,
    buf: Vec<u8>,
    count: usize,
    part: usize,
}

impl<'a> FileWriter<'a> {
    fn new(exports: &'a Exports, job: &'a Job, rtype: &'a ResourceType) -> Self {
        Self {
            exports,
            job,
            rtype,
            buf: Vec::new(),
            count: 0,
            part: 0,
        }
    }

    fn push(&mut self, v: &Value, out: &mut Vec<OutFile>) -> Result<(), Error> {
        serde_json::to_writer(&mut self.buf, v).map_err(|e| Error::internal(&e))?;
        self.buf.push(b'\n');
        self.count += 1;
        if self.count >= self.exports.limits.per_file {
            self.flush(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<OutFile>) -> Result<(), Error> {
        if self.count == 0 {
            return Ok(());
        }
        self.part += 1;
        let name = format!("{}-{}.ndjson", self.rtype, self.part);
        let sealed = self
            .job
            .key
            .seal_bound(
                FILE_CONTEXT,
                &[self.job.id.as_bytes(), name.as_bytes()],
                &self.buf,
            )
            .map_err(|e| Error::internal(&e))?;
        // The plaintext never reaches the disk.
        zeroize::Zeroize::zeroize(&mut self.buf);
        self.buf.clear();
        crate::node::write_private_file(
            &self.exports.job_dir(&self.job.id).join(&name),
            sealed.as_bytes(),
        )
        .map_err(|e| Error::internal(&e))?;
        out.push(OutFile {
            rtype: self.rtype.as_str().to_owned(),
            name,
            count: self.count as u64,
        });
        self.count = 0;
        Ok(())
    }

    fn finish(mut self, out: &mut Vec<OutFile>) -> Result<(), Error> {
        self.flush(out)
    }
}

/// Resources scanned per page of a type.
const PAGE: u64 = 1000;

/// Every live resource of `rt` (changed since `plan.since`) the requester may see.
fn scan_type(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    plan: &KickOff,
    keep: &mut dyn FnMut(Value, &str) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut after: Option<String> = None;
    loop {
        let rows = store.current_after(rt, after.as_deref(), plan.since, PAGE)?;
        for row in &rows {
            let v = crate::records::open(store, ctx, row)?;
            if ctx.may_see(store, Interaction::Search, rt, &row.key_name, Some(&v))? {
                keep(v, &row.key_name)?;
            }
        }
        match rows.last() {
            Some(last) if rows.len() as u64 == PAGE => after = Some(last.id.clone()),
            _ => return Ok(()),
        }
    }
}

/// The resources of `rt` in `patient`'s compartment the requester may see.
fn for_patient(
    store: &dyn StoreRead,
    ctx: &Ctx,
    rt: &ResourceType,
    patient: &ResourceId,
    since: Option<i64>,
    written: &mut HashSet<String>,
    keep: &mut dyn FnMut(Value, &str) -> Result<(), Error>,
) -> Result<(), Error> {
    let found: Vec<Value> = if *rt == ResourceType::PATIENT {
        match crate::records::read(store, ctx, rt, patient, None) {
            Ok(o) => o.resource.into_iter().collect(),
            Err(e) if e.kind.is_client_error() => Vec::new(),
            Err(e) => return Err(e),
        }
    } else {
        crate::operations::compartment(store, ctx, patient, Some(&[rt.as_str().to_owned()]))?
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    };
    let from = since.unwrap_or(i64::MIN);
    for v in found {
        let changed = v
            .pointer("/meta/lastUpdated")
            .and_then(Value::as_str)
            .and_then(medvault_fhir::date_range)
            .map_or(i64::MAX, |(s, _)| s.saturating_mul(1_000_000));
        let Some(id) = v
            .get("id")
            .and_then(Value::as_str)
            .and_then(|i| ResourceId::new(i).ok())
        else {
            continue;
        };
        if changed >= from && written.insert(id.to_string()) {
            // Counted under the patient whose key seals it (a member that does not exist
            // names no one).
            let key = ctx.fhir.compartment_of(rt.as_str(), &id, &v).key_name();
            keep(v, &key)?;
        }
    }
    Ok(())
}

/// The Patient members of a Group the requester may read.
///
/// # Errors
/// 404 for an unknown or hidden Group.
pub fn group_members(
    store: &dyn StoreRead,
    ctx: &Ctx,
    id: &ResourceId,
) -> Result<Vec<ResourceId>, Error> {
    let group = crate::records::read(store, ctx, &ResourceType::from_static("Group"), id, None)?;
    let mut out: Vec<ResourceId> = group
        .resource
        .as_ref()
        .and_then(|g| g.get("member"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
        .filter_map(medvault_fhir::relative_reference)
        .filter(|(t, _)| *t == "Patient")
        .filter_map(|(_, i)| ResourceId::new(i).ok())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Checks the kick-off's request shape: `Prefer: respond-async` and an `Accept` of FHIR JSON
/// (or none).
///
/// # Errors
/// 400 naming what is missing.
pub fn check_kick_off_headers(prefer_async: bool, accept: Option<&str>) -> Result<(), Error> {
    if !prefer_async {
        return Err(param_error(
            "$export runs asynchronously: send Prefer: respond-async",
        ));
    }
    if let Some(a) = accept
        && !(a.contains("application/fhir+json")
            || a.contains("*/*")
            || a.contains("application/json"))
    {
        return Err(param_error("$export answers in application/fhir+json"));
    }
    Ok(())
}

/// What an import is asked to do.
pub struct ImportPlan {
    /// The inputs, in order.
    pub inputs: Vec<ImportInput>,
    /// The kick-off URL, echoed in the status.
    pub request: String,
    /// How the inputs are fetched.
    pub fetch: Arc<dyn Fetch>,
}

/// One input of a Bulk Data import: where its ndjson is, and the type it holds (if said).
#[derive(Debug, Clone)]
pub struct ImportInput {
    /// The resource type every line must be, if the request named one.
    pub rtype: Option<String>,
    /// Where to fetch it (https, or http on loopback).
    pub url: String,
}

/// Fetches an import's input.
pub trait Fetch: Send + Sync {
    /// GETs `url`: its body, at most `limit` bytes.
    ///
    /// # Errors
    /// A description of the failure (connection, TLS, status, size).
    fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, String>;
}

/// Largest input one import fetches.
pub const MAX_IMPORT_INPUT: usize = 64 * 1024 * 1024;

fn run_import(
    node: &Node,
    ctx: &Ctx,
    job: &Job,
    inputs: &[ImportInput],
    fetch: &dyn Fetch,
    agent: &Value,
) -> Value {
    let mut output = Vec::new();
    let mut errors = Vec::new();
    let mut total = 0u64;
    for input in inputs {
        if job.cancelled.load(Ordering::Relaxed) {
            break;
        }
        let result = fetch
            .get(&input.url, MAX_IMPORT_INPUT)
            .map_err(|e| {
                Error::new(
                    ErrorKind::PeerFailed,
                    IssueCode::Exception,
                    format!("fetching the input failed: {e}"),
                )
            })
            .and_then(|bytes| {
                crate::import::file_entries(&bytes, true, crate::import::Mode::AddOnly)
            })
            .and_then(|entries| {
                if let Some(t) = &input.rtype
                    && let Some(other) = entries.types().find(|x| x != t)
                {
                    return Err(Error::bad_request(format!(
                        "the input holds {other} resources, not only {t}"
                    )));
                }
                crate::import::load(node.store.as_ref(), ctx, entries)
            });
        match result {
            Ok(loaded) => {
                let n = loaded.resources as u64;
                total += n;
                job.written.fetch_add(n, Ordering::Relaxed);
                output.push(
                    json!({"type": input.rtype, "inputUrl": input.url, "count": loaded.resources}),
                );
            }
            Err(e) => errors.push(json!({"type": "OperationOutcome", "inputUrl": input.url,
                "outcome": e.outcome()})),
        }
    }
    let outcome = if errors.is_empty() {
        AuditOutcome::Success
    } else {
        AuditOutcome::ClientError
    };
    if let Err(e) = node.record_audit_now(|now| {
        AuditRecord::new(AuditKind::Rest, now, "bulk-import-complete", outcome)
            .agent(agent.clone())
            .target_opt(Some(&format!("import/{}", job.id)))
            .with("resources", total)
            .with("files", output.len() as u64)
            .with("failed", errors.len() as u64)
    }) {
        tracing::error!(error = %e, "could not record the end of an import");
    }
    json!({"transactionTime": job.transaction_time, "request": job.request,
        "output": output, "error": errors})
}
