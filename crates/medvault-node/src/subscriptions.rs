//! Subscriptions: R4 `rest-hook` Subscriptions whose `criteria` is a search
//! (`Observation?code=…`), notified in the R4 Subscriptions Backport IG's shape (a `history`
//! Bundle whose first entry is a `SubscriptionStatus` `Parameters` resource): a handshake when a
//! subscription is created, heartbeats when asked for, and an event per matching write, with
//! `$status` and `$events`.
//!
//! What leaves in a notification: by default nothing of the record (`empty`, or `id-only` when a
//! payload type is set); a `full-resource` payload only when asked for. Either way, a write is
//! notified only when the subscription's owner (the principal that last wrote it, recorded by
//! the node beside it, never in the resource a client could change) may see the record now: it is decided as that owner's search would be (scopes, the
//! access policy, consent). Endpoints must be `https`, or `http` on the loopback interface.
//! Every notification, delivered or not, is an access-log record naming the subscription, the
//! event and the record's patient (so it is in that patient's accounting of disclosures).
//! Deliveries retry with backoff; after the last failure the subscription is set to `error`.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use medvault_auth::scopes::Interaction;
use medvault_core::{ResourceId, ResourceType, Role};
use serde_json::{Value, json};

use crate::Node;
use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::ctx::{AccessPolicy, Ctx, Services};
use crate::error::{Error, ErrorKind, IssueCode};
use crate::search::{self, SearchRequest};

/// The Subscription type.
pub const SUBSCRIPTION: ResourceType = ResourceType::from_static("Subscription");

const PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
const HEARTBEAT_PERIOD: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// Events kept per subscription for `$events`.
const KEPT_EVENTS: usize = 100;
/// Delivery attempts per notification, with the waits between them.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(8),
];
/// Notifications waiting per subscription before new ones are dropped (they stay in
/// `$events`).
const QUEUE: usize = 100;
/// Subscriptions one owner may have watched at once (each has a delivery thread).
pub const MAX_PER_OWNER: usize = 16;
/// The shortest heartbeat period honoured.
const MIN_HEARTBEAT: Duration = Duration::from_secs(60);
/// Most `channel.header` entries, and most bytes in one.
const MAX_HEADERS: usize = 10;
const MAX_HEADER_BYTES: usize = 1024;
/// Headers a subscription may not set (the node frames the request itself).
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
];

/// Who created a subscription, as the node recorded it: what deciding their access needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The credential's id (`tok_…`, `usr_…`).
    pub token_id: String,
    /// The role.
    pub role: Role,
    /// An OAuth client, if an app's token created it.
    pub client: Option<String>,
    /// The scopes of that token (space-separated), if any.
    pub scopes: Option<String>,
    /// The person's Practitioner, if staff.
    pub practitioner: Option<String>,
}

impl Owner {
    fn to_json(&self, version: u64) -> String {
        json!({"token": self.token_id, "role": self.role.as_str(), "client": self.client,
            "scopes": self.scopes, "practitioner": self.practitioner, "version": version})
        .to_string()
    }

    /// The owner recorded, and the Subscription version it was recorded for.
    fn from_json(text: &str) -> Option<(Self, u64)> {
        let v: Value = serde_json::from_str(text).ok()?;
        let version = v.get("version").and_then(Value::as_u64)?;
        Self::parse(&v).map(|o| (o, version))
    }

    fn parse(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            token_id: s("token")?,
            role: Role::parse(&s("role")?).ok()?,
            client: s("client"),
            scopes: s("scopes"),
            practitioner: s("practitioner"),
        })
    }
}

/// The recorded owner of a subscription, whatever version it was recorded for.
pub fn owner(node: &Node, id: &ResourceId) -> Option<Owner> {
    node.store
        .meta(&owner_key(id.as_str()))
        .ok()
        .flatten()
        .and_then(|t| Owner::from_json(&t))
        .map(|(o, _)| o)
}

fn owner_key(id: &str) -> String {
    format!("subscription-owner:{id}")
}

/// Records `owner` as the principal a subscription's notifications are decided for: whoever
/// wrote its `version` (and so chose its endpoint and criteria). The record names the version:
/// a subscription is watched only while its current version is the one its owner record names,
/// so two writers racing cannot leave one's endpoint with the other's access. An older
/// version's record never replaces a newer one's.
///
/// # Errors
/// Store failures.
pub fn record_owner(
    node: &Node,
    id: &ResourceId,
    version: u64,
    owner: &Owner,
) -> Result<(), Error> {
    let (key, value) = (owner_key(id.as_str()), owner.to_json(version));
    node.store
        .write(Box::new(move |tx| {
            let newer = tx
                .meta(&key)?
                .and_then(|t| Owner::from_json(&t))
                .is_some_and(|(_, v)| v > version);
            if newer {
                return Ok(());
            }
            tx.set_meta(&key, &value)
        }))
        .map_err(Error::from)
}

/// What a notification carries of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Empty,
    IdOnly,
    FullResource,
}

/// The parts of a Subscription the node acts on.
#[derive(Debug, Clone, PartialEq)]
struct Spec {
    rt: ResourceType,
    criteria: String,
    endpoint: String,
    headers: Vec<(String, String)>,
    content: Content,
    heartbeat: Option<Duration>,
}

fn invalid(text: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unprocessable, IssueCode::Invalid, text)
}

/// `http` only to the loopback interface; `https` anywhere (a subscription endpoint, an
/// import's input).
///
/// # Errors
/// 422 naming the rule.
pub fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|_| invalid("the URL must be an absolute https URL"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(invalid(
            "the URL must be https (http only to the loopback interface)",
        )),
    }
}

/// The node's one topic: a resource of some type written (created, updated, patched).
pub const TOPIC: &str = "https://medvault.dev/fhir/SubscriptionTopic/resource-write";
const FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";

fn parse_spec(ctx: &Ctx, sub: &Value) -> Result<(Spec, SearchRequest), Error> {
    let stated = sub
        .get("criteria")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("Subscription.criteria is required (e.g. Observation?code=…)"))?;
    // Backport IG (topic-based): the criteria name the topic, and the filter is the
    // `backport-filter-criteria` extension on `_criteria`.
    let filters: Vec<&Value> = sub
        .pointer("/_criteria/extension")
        .and_then(Value::as_array)
        .map(|es| {
            es.iter()
                .filter(|e| e.get("url").and_then(Value::as_str) == Some(FILTER_CRITERIA))
                .collect()
        })
        .unwrap_or_default();
    let criteria = match (stated == TOPIC, filters.as_slice()) {
        (true, [one]) => one
            .get("valueString")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the backport-filter-criteria is a string (Type?parameters)"))?,
        (true, _) => {
            return Err(invalid(
                "the resource-write topic needs exactly one backport-filter-criteria (Type?parameters)",
            ));
        }
        (false, []) => stated,
        (false, _) => {
            return Err(invalid(
                "a backport-filter-criteria goes with the resource-write topic as criteria",
            ));
        }
    };
    let (t, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    let rt = ctx
        .fhir
        .served(t)
        .cloned()
        .filter(|rt| *rt != SUBSCRIPTION)
        .ok_or_else(|| invalid(format!("criteria: {t} is not a type one can subscribe to")))?;
    let req = search::parse(ctx, &rt, &search::parse_query_string(query), true)
        .map_err(|e| invalid(format!("criteria: {}", e.message)))?;
    if !req.is_plain_filter() {
        return Err(invalid(
            "criteria takes the type's own search parameters (no chains, _has, _id, _lastUpdated, paging or includes)",
        ));
    }
    let channel = sub
        .get("channel")
        .ok_or_else(|| invalid("Subscription.channel is required"))?;
    match channel.get("type").and_then(Value::as_str) {
        Some("rest-hook") => {}
        Some(other) => {
            return Err(Error::new(
                ErrorKind::Unprocessable,
                IssueCode::NotSupported,
                format!("channel.type {other} is not supported (rest-hook only)"),
            ));
        }
        None => return Err(invalid("channel.type is required (rest-hook)")),
    }
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("channel.endpoint is required"))?
        .to_owned();
    check_endpoint(&endpoint)?;
    let mut headers = Vec::new();
    for h in channel
        .get("header")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let (k, v) = h
            .as_str()
            .and_then(|h| h.split_once(':'))
            .ok_or_else(|| invalid("channel.header entries are 'Name: value'"))?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(invalid("channel.header names are letters, digits and '-'"));
        }
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "channel.header may not set {k}: the node frames the request"
            )));
        }
        let v = v.trim();
        if v.len() > MAX_HEADER_BYTES || v.bytes().any(|b| b.is_ascii_control()) {
            return Err(invalid(
                "a channel.header value is at most 1024 bytes, without control characters",
            ));
        }
        if headers.len() == MAX_HEADERS {
            return Err(invalid("at most 10 channel.header entries"));
        }
        headers.push((k.to_owned(), v.to_owned()));
    }
    // The payload is a primitive: its extensions are on `_payload`.
    let declared = channel
        .get("_payload")
        .and_then(|p| p.get("extension"))
        .and_then(Value::as_array)
        .and_then(|es| {
            es.iter()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(PAYLOAD_CONTENT))
        })
        .and_then(|e| e.get("valueCode"))
        .and_then(Value::as_str);
    let content = match (channel.get("payload").is_some(), declared) {
        (_, Some("empty")) | (false, None) => Content::Empty,
        (_, Some("id-only")) | (true, None) => Content::IdOnly,
        (_, Some("full-resource")) => Content::FullResource,
        (_, Some(other)) => return Err(invalid(format!("payload content {other} is not known"))),
    };
    let heartbeat = channel
        .get("extension")
        .and_then(Value::as_array)
        .and_then(|es| {
            es.iter()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(HEARTBEAT_PERIOD))
        })
        .and_then(|e| e.get("valueUnsignedInt"))
        .and_then(Value::as_u64)
        .map(|s| Duration::from_secs(s).max(MIN_HEARTBEAT));
    Ok((
        Spec {
            rt,
            criteria: criteria.to_owned(),
            endpoint,
            headers,
            content,
            heartbeat,
        },
        req,
    ))
}

/// Checks a Subscription about to be written: the channel (rest-hook), the endpoint (https, or
/// http to the loopback interface), the headers, the payload and the criteria.
///
/// # Errors
/// 422 naming what is wrong.
pub fn check(ctx: &Ctx, sub: &Value) -> Result<(), Error> {
    parse_spec(ctx, sub).map(|_| ())
}

/// Sends one notification: the status code, or why it could not be sent.
pub trait Deliver: Send + Sync {
    /// POSTs `body` (`application/fhir+json`) to `url` with `headers`.
    ///
    /// # Errors
    /// A description of the failure (connection, TLS, timeout).
    fn post(&self, url: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<u16, String>;
}

/// A change the notifier is told about.
#[derive(Debug, Clone)]
pub enum Change {
    /// A version was written (created, updated, patched).
    Written {
        /// Its type.
        rt: ResourceType,
        /// Its id.
        id: ResourceId,
        /// Its version.
        version: u64,
    },
}

#[derive(Debug, Clone)]
struct EventRecord {
    number: u64,
    timestamp: String,
    focus: String,
}

struct Active {
    spec: Spec,
    filter: Arc<SearchRequest>,
    owner: Owner,
    events: u64,
    kept: VecDeque<EventRecord>,
    last_sent: Instant,
    queue: Option<SyncSender<Notification>>,
    failed: bool,
}

struct Notification {
    kind: &'static str,
    event: Option<(EventRecord, Option<Arc<Value>>, Option<String>)>,
    total: u64,
}

/// The subscriptions of this process: told of every write, it matches them and delivers.
pub struct Notifier {
    tx: Mutex<Sender<Change>>,
    subs: Arc<Mutex<HashMap<String, Active>>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one insert, remove or field assignment: a poisoned
    // value is still whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What deciding an owner's access needs from the server: a policy guard for them.
pub type GuardFor = dyn Fn(&Owner) -> Arc<dyn AccessPolicy> + Send + Sync;

impl Notifier {
    /// Starts the notifier's thread over `node`: it loads the stored subscriptions, then
    /// handshakes new ones, matches changes and sends heartbeats.
    pub fn start(
        node: Arc<Node>,
        services: Services,
        deliver: Arc<dyn Deliver>,
        guard_for: Arc<GuardFor>,
        base: String,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let subs: Arc<Mutex<HashMap<String, Active>>> = Arc::default();
        let worker = Worker {
            node,
            services,
            deliver,
            guard_for,
            base,
            subs: Arc::clone(&subs),
        };
        if let Err(e) = std::thread::Builder::new()
            .name("subscriptions".into())
            .spawn(move || worker.run(&rx))
        {
            tracing::error!(error = %e, "subscriptions are not delivered: no thread");
        }
        Self {
            tx: Mutex::new(tx),
            subs,
        }
    }

    /// Tells the notifier about a write (never blocks).
    pub fn changed(&self, change: Change) {
        let _ = lock(&self.tx).send(change);
    }

    /// `$status` of a subscription the request may read: a `searchset` Bundle holding its
    /// SubscriptionStatus.
    ///
    /// # Errors
    /// As a read of the Subscription.
    pub fn status(
        &self,
        node: &Node,
        ctx: &Ctx,
        id: &ResourceId,
        base: &str,
    ) -> Result<Value, Error> {
        let sub = crate::records::read(node.store.as_ref(), ctx, &SUBSCRIPTION, id, None)?;
        let status = sub
            .resource
            .as_ref()
            .and_then(|s| s.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("off")
            .to_owned();
        let events = lock(&self.subs).get(id.as_str()).map_or(0, |a| a.events);
        let params = status_parameters(id, &status, "query-status", events, &[], base, true);
        Ok(
            json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
            "entry": [{"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": params}]}),
        )
    }

    /// `$events`: the kept events (`eventsSinceNumber`, `eventsUntilNumber`) of a subscription
    /// the request may read, as a `query-event` status with their focus references.
    ///
    /// # Errors
    /// As a read of the Subscription; 400 for a malformed number.
    pub fn events(
        &self,
        node: &Node,
        ctx: &Ctx,
        id: &ResourceId,
        params: &[(String, String)],
        base: &str,
    ) -> Result<Value, Error> {
        crate::records::read(node.store.as_ref(), ctx, &SUBSCRIPTION, id, None)?;
        let number = |name: &str| -> Result<Option<u64>, Error> {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| {
                    v.parse::<u64>()
                        .map_err(|_| Error::bad_request(format!("{name} must be a number")))
                })
                .transpose()
        };
        let (since, until) = (number("eventsSinceNumber")?, number("eventsUntilNumber")?);
        let subs = lock(&self.subs);
        let (status, total, kept) = subs.get(id.as_str()).map_or(("off", 0, Vec::new()), |a| {
            (
                if a.failed { "error" } else { "active" },
                a.events,
                a.kept
                    .iter()
                    .filter(|e| since.is_none_or(|s| e.number >= s))
                    .filter(|e| until.is_none_or(|u| e.number <= u))
                    .cloned()
                    .collect(),
            )
        });
        drop(subs);
        let params = status_parameters(id, status, "query-event", total, &kept, base, true);
        Ok(
            json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
            "entry": [{"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": params}]}),
        )
    }
}

/// A backport SubscriptionStatus (R4 `Parameters`).
fn status_parameters(
    id: &ResourceId,
    status: &str,
    kind: &str,
    events: u64,
    notified: &[EventRecord],
    base: &str,
    with_focus: bool,
) -> Value {
    let mut params = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base}/Subscription/{id}")}}),
        json!({"name": "topic", "valueCanonical": TOPIC}),
        json!({"name": "status", "valueCode": status}),
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "events-since-subscription-start", "valueString": events.to_string()}),
    ];
    for e in notified {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": e.timestamp}),
        ];
        // An `empty` payload names nothing of the record, not even which one it was.
        if with_focus {
            parts.push(json!({"name": "focus", "valueReference": {"reference": format!("{base}/{}", e.focus)}}));
        }
        params.push(json!({"name": "notification-event", "part": parts}));
    }
    json!({"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": params})
}

struct Worker {
    node: Arc<Node>,
    services: Services,
    deliver: Arc<dyn Deliver>,
    guard_for: Arc<GuardFor>,
    base: String,
    subs: Arc<Mutex<HashMap<String, Active>>>,
}

impl Worker {
    fn run(self, rx: &Receiver<Change>) {
        self.reload();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(change) => {
                    if let Err(e) = self.on_change(&change) {
                        tracing::warn!(error = %e, "a change could not be matched to subscriptions");
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.heartbeats();
        }
    }

    fn node_ctx(&self) -> Ctx {
        Ctx::unrestricted_node_work(&self.node)
    }

    /// Loads every stored Subscription: `requested` ones get their handshake, `active` ones are
    /// watched, others dropped.
    fn reload(&self) {
        let ctx = self.node_ctx();
        let found = match search::all_matches(self.node.store.as_ref(), &ctx, &SUBSCRIPTION, &[]) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "subscriptions could not be loaded");
                return;
            }
        };
        let mut seen = Vec::new();
        for sub in found {
            if let Some(id) = sub.get("id").and_then(Value::as_str) {
                seen.push(id.to_owned());
                self.take(&ctx, id, &sub);
            }
        }
        lock(&self.subs).retain(|id, _| seen.contains(id));
    }

    /// Watches (or stops watching) one Subscription as stored now.
    fn take(&self, ctx: &Ctx, id: &str, sub: &Value) {
        let status = sub.get("status").and_then(Value::as_str).unwrap_or("off");
        let version = sub
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<u64>().ok());
        let parsed = parse_spec(ctx, sub).ok();
        // Watched only under the owner recorded for this very version (see `record_owner`).
        let owner = self
            .node
            .store
            .meta(&owner_key(id))
            .ok()
            .flatten()
            .and_then(|t| Owner::from_json(&t))
            .filter(|(_, v)| Some(*v) == version)
            .map(|(o, _)| o);
        let (Some((spec, filter)), Some(owner), "requested" | "active") = (parsed, owner, status)
        else {
            lock(&self.subs).remove(id);
            return;
        };
        let mut subs = lock(&self.subs);
        let prior = subs.remove(id);
        let owned = subs
            .values()
            .filter(|a| a.owner.token_id == owner.token_id && a.owner.client == owner.client)
            .count();
        if owned >= MAX_PER_OWNER {
            drop(subs);
            tracing::warn!(subscription = %id, "an owner's subscriptions beyond {MAX_PER_OWNER} are not watched");
            if let Ok(rid) = ResourceId::new(id) {
                set_status(&self.node, &rid, "error");
            }
            return;
        }
        // Anything changed (endpoint, headers, payload, criteria, owner) gets a new delivery
        // thread and a handshake before anything else is sent.
        let unchanged = prior
            .as_ref()
            .is_some_and(|p| p.spec == spec && p.owner == owner && !p.failed);
        let mut active = Active {
            spec,
            filter: Arc::new(filter),
            owner,
            events: prior.as_ref().map_or(0, |p| p.events),
            kept: prior.as_ref().map(|p| p.kept.clone()).unwrap_or_default(),
            last_sent: Instant::now(),
            queue: None,
            failed: false,
        };
        if unchanged && let Some(p) = prior {
            active.queue = p.queue;
        }
        if status == "requested" || !unchanged {
            let note = Notification {
                kind: "handshake",
                event: None,
                total: 0,
            };
            self.send(id, &mut active, note);
        }
        subs.insert(id.to_owned(), active);
    }

    /// Whether the owner's credential still works: an app's client not disabled, an API token
    /// not revoked or expired, a person's account not disabled.
    fn owner_active(&self, owner: &Owner) -> bool {
        let store = self.node.store.as_ref();
        let now = self.node.clock.now_micros();
        if let Some(client) = &owner.client {
            return store
                .client(client)
                .ok()
                .flatten()
                .is_some_and(|c| !c.disabled);
        }
        if owner.token_id.starts_with("usr_") {
            return store
                .user(&owner.token_id)
                .ok()
                .flatten()
                .is_some_and(|u| !u.disabled);
        }
        store.tokens().ok().is_some_and(|ts| {
            ts.iter().any(|t| {
                t.token_id == owner.token_id && t.revoked_micros.is_none() && t.expires_micros > now
            })
        })
    }

    fn on_change(&self, change: &Change) -> Result<(), Error> {
        let Change::Written { rt, id, version } = change;
        let ctx = self.node_ctx();
        let store = self.node.store.as_ref();
        if *rt == SUBSCRIPTION {
            match crate::records::read(store, &ctx, rt, id, None) {
                Ok(out) => {
                    if let Some(sub) = out.resource {
                        self.take(&ctx, id.as_str(), &sub);
                    }
                }
                Err(_) => {
                    lock(&self.subs).remove(id.as_str());
                }
            }
            return Ok(());
        }
        let candidates: Vec<(String, Spec, Arc<SearchRequest>, Owner)> = lock(&self.subs)
            .iter()
            .filter(|(_, a)| a.spec.rt == *rt && !a.failed)
            .map(|(k, a)| {
                (
                    k.clone(),
                    a.spec.clone(),
                    Arc::clone(&a.filter),
                    a.owner.clone(),
                )
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let Some(row) = store.version(rt, id, Some(*version))? else {
            return Ok(());
        };
        if row.body.is_none() {
            // A delete: R4 rest-hook subscriptions hear of what is written.
            return Ok(());
        }
        let resource = Arc::new(crate::records::open(store, &ctx, &row)?);
        for (sub_id, spec, filter, owner) in candidates {
            if !filter.matches(&ctx, rt, &resource) {
                continue;
            }
            if !self.owner_active(&owner) {
                // The owner's credential no longer works: the subscription stops.
                lock(&self.subs).remove(&sub_id);
                if let Ok(rid) = ResourceId::new(&sub_id) {
                    set_status(&self.node, &rid, "off");
                }
                continue;
            }
            if !self.owner_may_see(&owner, rt, &row.key_name, &resource) {
                continue;
            }
            let focus = format!("{rt}/{id}/_history/{version}");
            let patient = row.key_name.strip_prefix("Patient/").map(str::to_owned);
            let full = (spec.content == Content::FullResource).then(|| Arc::clone(&resource));
            self.enqueue(&sub_id, focus, full, patient);
        }
        Ok(())
    }

    /// Whether `owner` may see the record now, as their search would decide it.
    fn owner_may_see(&self, owner: &Owner, rt: &ResourceType, key_name: &str, v: &Value) -> bool {
        let scopes = owner.scopes.as_deref().map(|s| {
            // A scope string the node wrote from a parsed set parses again; anything else
            // grants nothing.
            Arc::new(medvault_auth::scopes::ScopeSet::parse(s).unwrap_or_default())
        });
        let ctx = self
            .services
            .for_request((self.guard_for)(owner), scopes, None);
        ctx.scope_access(rt, Interaction::Search).is_ok()
            && ctx
                .may_see(
                    self.node.store.as_ref(),
                    Interaction::Search,
                    rt,
                    key_name,
                    Some(v),
                )
                .unwrap_or(false)
    }

    fn enqueue(
        &self,
        sub_id: &str,
        focus: String,
        full: Option<Arc<Value>>,
        patient: Option<String>,
    ) {
        let mut subs = lock(&self.subs);
        let Some(active) = subs.get_mut(sub_id) else {
            return;
        };
        active.events += 1;
        let event = EventRecord {
            number: active.events,
            timestamp: crate::clock::instant(self.node.clock.now_micros()),
            focus,
        };
        active.kept.push_back(event.clone());
        while active.kept.len() > KEPT_EVENTS {
            active.kept.pop_front();
        }
        active.last_sent = Instant::now();
        let total = active.events;
        let note = Notification {
            kind: "event-notification",
            event: Some((event, full, patient)),
            total,
        };
        self.send(sub_id, active, note);
    }

    fn heartbeats(&self) {
        let mut subs = lock(&self.subs);
        let ids: Vec<String> = subs
            .iter()
            .filter(|(_, a)| {
                !a.failed && a.spec.heartbeat.is_some_and(|h| a.last_sent.elapsed() >= h)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            if let Some(active) = subs.get_mut(&id) {
                active.last_sent = Instant::now();
                let note = Notification {
                    kind: "heartbeat",
                    event: None,
                    total: active.events,
                };
                self.send(&id, active, note);
            }
        }
    }

    /// Hands a notification to the subscription's delivery thread (one per subscription, so its
    /// notifications arrive in order and its retries hold up no one else).
    fn send(&self, sub_id: &str, active: &mut Active, note: Notification) {
        if active.queue.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Notification>(QUEUE);
            let ctx = DeliveryCtx {
                node: Arc::clone(&self.node),
                deliver: Arc::clone(&self.deliver),
                subs: Arc::clone(&self.subs),
                base: self.base.clone(),
                id: sub_id.to_owned(),
                spec: active.spec.clone(),
                owner: active.owner.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name("subscription-delivery".into())
                .spawn(move || ctx.run(&rx));
            if spawned.is_err() {
                return;
            }
            active.queue = Some(tx);
        }
        if let Some(q) = &active.queue {
            match q.try_send(note) {
                Ok(()) => {}
                // The subscription's `$events` still lists the event.
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(subscription = %sub_id, "a subscription's queue is full: a notification was dropped");
                }
                Err(TrySendError::Disconnected(_)) => active.queue = None,
            }
        }
    }
}

/// Writes a subscription's new status as its next version (node work).
fn set_status(node: &Node, id: &ResourceId, status: &str) {
    let ctx = Ctx::unrestricted_node_work(node);
    let (status, id2) = (status.to_owned(), id.clone());
    let result = medvault_store::write_with(node.store.as_ref(), move |tx| {
        let out = crate::records::read(&*tx, &ctx, &SUBSCRIPTION, &id2, None)?;
        let (Some(mut sub), Some(version)) = (out.resource, out.version) else {
            return Ok(());
        };
        if sub.get("status").and_then(Value::as_str) == Some(status.as_str()) {
            return Ok(());
        }
        sub["status"] = json!(status);
        if status == "error" {
            sub["error"] =
                json!("the endpoint could not be reached or did not accept the notification");
        } else if let Some(o) = sub.as_object_mut() {
            o.remove("error");
        }
        let p = crate::ops::prepare(&*tx, &ctx, &SUBSCRIPTION, id2.clone(), sub, true)?;
        let written = crate::ops::update(tx, &ctx, p, Some(version))?;
        // The node's own status change keeps the owner: the record moves to the new version,
        // in the same transaction.
        let key = owner_key(id2.as_str());
        if let (Some((owner, v)), Some(new)) = (
            tx.meta(&key)?.and_then(|t| Owner::from_json(&t)),
            written.version,
        ) && v == version
        {
            tx.set_meta(&key, &owner.to_json(new))?;
        }
        Ok(())
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, subscription = %id, "could not record a subscription's status");
    }
}

fn record(
    node: &Node,
    id: &ResourceId,
    owner: &Owner,
    kind: &str,
    event: Option<&EventRecord>,
    patient: Option<String>,
    result: &Result<u16, String>,
) {
    let outcome = match result {
        Ok(200..=299) => AuditOutcome::Success,
        _ => AuditOutcome::ServerError,
    };
    let status = result.as_ref().ok().copied();
    let written = node.record_audit_now(|now| {
        AuditRecord::new(
            AuditKind::Rest,
            now,
            format!("subscription-{kind}"),
            outcome,
        )
        .agent(
            json!({"token": owner.token_id, "role": owner.role.as_str(), "client": owner.client}),
        )
        .target_opt(Some(&format!("Subscription/{id}")))
        .patient(patient)
        .with("event", event.map(|e| e.number))
        .with("focus", event.map(|e| e.focus.clone()))
        .with("endpoint_status", status)
    });
    if let Err(e) = written {
        tracing::error!(error = %e, "a subscription notification could not be recorded");
    }
}

/// A notification Bundle (backport R4 shape): the status first, then the focus (or its
/// reference only).
fn notification_bundle(
    id: &ResourceId,
    status: &str,
    kind: &str,
    total: u64,
    event: Option<(&EventRecord, Option<&Value>, Content)>,
    base: &str,
    now: &str,
) -> Value {
    let kept: Vec<EventRecord> = event.iter().map(|(e, ..)| (*e).clone()).collect();
    let with_focus = event.is_some_and(|(.., c)| c != Content::Empty);
    let params = status_parameters(id, status, kind, total, &kept, base, with_focus);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": params,
        "request": {"method": "GET", "url": format!("Subscription/{id}/$status")},
        "response": {"status": "200"},
    })];
    if let Some((e, full, content)) = event {
        match (content, full) {
            (Content::FullResource, Some(r)) => entries.push(json!({
                "fullUrl": format!("{base}/{}", e.focus.split("/_history").next().unwrap_or(&e.focus)),
                "resource": r,
                "request": {"method": "PUT", "url": e.focus},
                "response": {"status": "200"},
            })),
            (Content::IdOnly, _) => entries.push(json!({
                "fullUrl": format!("{base}/{}", e.focus.split("/_history").next().unwrap_or(&e.focus)),
                "request": {"method": "PUT", "url": e.focus},
                "response": {"status": "200"},
            })),
            _ => {}
        }
    }
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "timestamp": now,
        "entry": entries,
    })
}

struct DeliveryCtx {
    node: Arc<Node>,
    deliver: Arc<dyn Deliver>,
    subs: Arc<Mutex<HashMap<String, Active>>>,
    base: String,
    id: String,
    spec: Spec,
    owner: Owner,
}

impl DeliveryCtx {
    fn run(self, rx: &std::sync::mpsc::Receiver<Notification>) {
        let Ok(id) = ResourceId::new(&self.id) else {
            return;
        };
        for note in rx {
            let event = note.event.as_ref();
            let now = crate::clock::instant(self.node.clock.now_micros());
            let handshake = note.kind == "handshake";
            let body = notification_bundle(
                &id,
                if handshake { "requested" } else { "active" },
                note.kind,
                note.total,
                event.map(|(e, full, _)| (e, full.as_deref(), self.spec.content)),
                &self.base,
                &now,
            );
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let mut result =
                self.deliver
                    .post(&self.spec.endpoint, &self.spec.headers, bytes.clone());
            for wait in BACKOFF {
                if matches!(result, Ok(200..=299)) {
                    break;
                }
                std::thread::sleep(wait);
                result = self
                    .deliver
                    .post(&self.spec.endpoint, &self.spec.headers, bytes.clone());
            }
            let kind = match note.kind {
                "heartbeat" | "handshake" => note.kind,
                _ => "event",
            };
            record(
                &self.node,
                &id,
                &self.owner,
                kind,
                event.map(|(e, ..)| e),
                event.and_then(|(.., p)| p.clone()),
                &result,
            );
            if handshake && matches!(result, Ok(200..=299)) {
                set_status(&self.node, &id, "active");
            }
            if !matches!(result, Ok(200..=299)) {
                if let Some(a) = lock(&self.subs).get_mut(&self.id) {
                    a.failed = true;
                    a.queue = None;
                }
                set_status(&self.node, &id, "error");
                tracing::warn!(subscription = %self.id, "notification failed after retries; the subscription is in error");
                return;
            }
        }
    }
}
