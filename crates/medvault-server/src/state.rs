//! The server's settings ([`ServerConfig`]) and the state every request shares ([`AppState`]),
//! below the handlers, which all take it (re-exported at the crate root).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use medvault_node::Node;
use medvault_node::identity::passkeys;

use crate::{anonymous, client_addr};

/// How recent a person's sign-in must be for a sensitive action (key rotation, erasure over the
/// API; see [`crate::admin`]), by default.
pub const STEP_UP_WINDOW: Duration = Duration::from_secs(300);

/// The FHIR JSON media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted (larger ones get 413).
    pub max_body_bytes: usize,
    /// Public base URL of the FHIR API (e.g. `https://ehr.example/fhir`); when unset, links are
    /// built from the request's `Host` header.
    pub base_url: Option<String>,
    /// Requests taking longer are answered 503 (a write not yet committed then is not made).
    pub request_timeout: Duration,
    /// How often a checkpoint is signed (when the ledger grew).
    pub checkpoint_interval: Duration,
    /// Logs this node witnesses (their checkpoint verifier keys).
    pub witness_for: Arc<[medvault_ledger::VerifierKey]>,
    /// Witnesses this node asks to cosign its checkpoints.
    pub witnesses: Arc<[medvault_node::witness::RemoteWitness]>,
    /// Login session lifetimes.
    pub sessions: medvault_node::identity::sessions::SessionLimits,
    /// Login attempts accepted per client address, and per account name, per minute.
    pub login_attempts_per_minute: u32,
    /// Proxies whose forwarding header names the client (none: the socket peer is the client).
    pub trusted_proxies: client_addr::TrustedProxies,
    /// Anonymous requests (authenticating no one) accepted per client address per minute;
    /// after that, requests without credentials get 429 for the rest of the minute.
    pub anonymous_requests_per_minute: u32,
    /// How often anonymous requests beyond the access log's per-minute budget are written as
    /// one summary record.
    pub anonymous_summary_interval: Duration,
    /// How recent a person's sign-in must be for key rotation and erasure over the API.
    pub step_up_window: Duration,
    /// Sentinel's alert threshold (a score in [0, 1]); `None` turns live scoring off.
    pub sentinel_threshold: Option<f64>,
    /// Sentinel's playbooks ([`medvault_node::responses`]): what it does about alerts.
    pub playbooks: Vec<medvault_node::responses::Playbook>,
    /// Record what the playbooks would do, do nothing.
    pub sentinel_dry_run: bool,
    /// The origin browsers reach this node at, for WebAuthn passkeys (e.g.
    /// `https://ehr.example`); passkeys are off without it.
    pub webauthn_origin: Option<String>,
    /// The access policy (Cedar), validated against the schema.
    pub policy: Arc<medvault_policy::PolicyEngine>,
    /// How long a break-glass grant lasts at most.
    pub break_glass_max: Duration,
    /// Where to take bundles from registered peers (mutual TLS), if anywhere.
    pub peer_listen: Option<SocketAddr>,
    /// Where Bulk Data export files are written (sealed); a fresh directory under the system's
    /// temporary directory when unset.
    pub export_dir: Option<std::path::PathBuf>,
    /// What bounds Bulk Data exports.
    pub export_limits: medvault_node::bulk::ExportLimits,
}

impl ServerConfig {
    /// (idle timeout, absolute lifetime) of a login session of `role`.
    pub fn sessions_for(&self, role: medvault_core::Role) -> (Duration, Duration) {
        self.sessions.for_role(role)
    }
}

/// The shipped policy, which a unit test of `medvault-policy` validates against the schema.
fn default_policy() -> medvault_policy::PolicyEngine {
    medvault_policy::PolicyEngine::default_policy().unwrap_or_else(|e| {
        // Invariant: the shipped files validate (tested); if they did not, deny everything.
        tracing::error!(error = %e, "the default policy does not validate; denying all access");
        medvault_policy::PolicyEngine::deny_all()
    })
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            base_url: None,
            request_timeout: Duration::from_secs(60),
            checkpoint_interval: Duration::from_secs(1),
            witness_for: Arc::from([]),
            witnesses: Arc::from([]),
            sessions: medvault_node::identity::sessions::SessionLimits::default(),
            login_attempts_per_minute: medvault_node::identity::throttle::THROTTLE_ATTEMPTS,
            trusted_proxies: client_addr::TrustedProxies::default(),
            anonymous_requests_per_minute: anonymous::DEFAULT_PER_MINUTE,
            anonymous_summary_interval: anonymous::DEFAULT_SUMMARY_INTERVAL,
            webauthn_origin: None,
            step_up_window: STEP_UP_WINDOW,
            sentinel_threshold: Some(medvault_sentinel::DEFAULT_THRESHOLD),
            playbooks: medvault_node::responses::Playbooks::defaults(),
            sentinel_dry_run: false,
            policy: Arc::new(default_policy()),
            break_glass_max: Duration::from_secs(4 * 3600),
            peer_listen: None,
            export_dir: None,
            export_limits: medvault_node::bulk::ExportLimits::default(),
        }
    }
}

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Interaction context.
    pub services: medvault_node::ctx::Services,
    /// Recently validated credentials (sessions, API tokens, access tokens) and the token
    /// families this process revoked.
    pub auth: Arc<medvault_node::identity::bearer::AuthCaches>,
    /// Settings.
    pub config: Arc<ServerConfig>,
    /// Bounds concurrent CPU-bound reads (search, history) to twice the cores.
    pub read_permits: Arc<tokio::sync::Semaphore>,
    /// Login attempts per client address and per account name.
    pub login_throttle: Arc<medvault_node::identity::throttle::LoginThrottle>,
    /// Anonymous requests: per-address counts and what the access log counted together.
    pub anonymous: Arc<anonymous::AnonymousTraffic>,
    /// The WebAuthn relying party, when passkeys are configured.
    pub webauthn: Option<Arc<passkeys::Webauthn>>,
    /// Passkey ceremonies in progress.
    pub passkey_ceremonies: passkeys::PasskeyCeremonies,
    /// Care relationships and consents the access policy looked up, shared across requests.
    pub facts: Arc<medvault_node::authz::FactsCache>,
    /// The signed node document, by key version (rebuilt when another process rotates).
    pub node_document: Arc<medvault_node::node_identity::PublishedDocument>,
    /// Bulk Data export jobs.
    pub exports: Arc<medvault_node::bulk::Exports>,
    /// Subscriptions: told of every write, notifies their endpoints.
    pub notifier: Arc<medvault_node::subscriptions::Notifier>,
    /// Sentinel's responses in force, checked on every request.
    pub enforcement: Arc<medvault_node::responses::Enforcement>,
}

impl AppState {
    /// State for a node with these settings. A WebAuthn origin that cannot be used disables
    /// passkeys with a warning (`serve` checks it before starting).
    pub fn new(node: Node, config: ServerConfig) -> Self {
        let webauthn = config.webauthn_origin.as_deref().and_then(|o| {
            let rp = passkeys::Url::parse(o)
                .map_err(|e| e.to_string())
                .and_then(|u| passkeys::relying_party(&u));
            match rp {
                Ok(w) => Some(Arc::new(w)),
                Err(e) => {
                    tracing::warn!(error = %e, "passkeys disabled");
                    None
                }
            }
        });
        let services = medvault_node::ctx::Services::of(&node);
        let export_dir = config.export_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "medvault-exports-{}",
                uuid::Uuid::new_v4().simple()
            ))
        });
        let exports = Arc::new(medvault_node::bulk::Exports::new(
            export_dir,
            config.export_limits,
        ));
        // Responses in force when the node stopped are in force again before the first request.
        let enforcement = medvault_node::responses::Enforcement::load(&node).unwrap_or_else(|e| {
            tracing::warn!(error = %e.message, "sentinel responses not loaded yet; retrying");
            medvault_node::responses::Enforcement::default()
        });
        let node = Arc::new(node);
        let facts: Arc<medvault_node::authz::FactsCache> = Arc::default();
        let notifier = Arc::new(medvault_node::subscriptions::Notifier::start(
            Arc::clone(&node),
            services.clone(),
            Arc::new(crate::subscription_http::HttpDeliver::new()),
            crate::subscription_http::guard_for(Arc::clone(&config.policy), Arc::clone(&facts)),
            config.base_url.clone().unwrap_or_default(),
        ));
        Self {
            node,
            services,
            auth: Arc::default(),
            config: Arc::new(config),
            read_permits: Arc::new(tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            )),
            login_throttle: Arc::default(),
            anonymous: Arc::default(),
            webauthn,
            passkey_ceremonies: Arc::default(),
            facts,
            node_document: Arc::default(),
            exports,
            notifier,
            enforcement: Arc::new(enforcement),
        }
    }
}
