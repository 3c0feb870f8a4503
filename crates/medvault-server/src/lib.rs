//! medvault's HTTP server: the FHIR R4 API over the encrypted store.
//!
//! [`router`] builds the axum `Router` from an [`AppState`] and is separate from [`serve`], so
//! tests can drive it with or without a socket. Every FHIR request is authenticated by the
//! [`auth::Authenticated`] extractor, parsed by [`route`], executed by [`ops`] / [`search`] /
//! [`bundle`] on blocking threads, and answered as `application/fhir+json`.

pub mod admin;
pub mod anonymous;
pub mod auth;
pub mod break_glass;
pub mod client_addr;
pub mod error;
mod http;
pub mod identity;
pub mod oauth;
pub mod oauth_app;
pub mod passkey;
pub mod peer;
mod respond;
pub mod share_http;
pub mod tls;
mod transparency;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
use medvault_node::identity::passkeys;

pub use error::ApiError;
pub use http::ACCESS_LEAF_HEADER;
pub use medvault_node::Node;

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
    /// The origin browsers reach this node at, for WebAuthn passkeys (e.g.
    /// `https://ehr.example`); passkeys are off without it.
    pub webauthn_origin: Option<String>,
    /// The access policy (Cedar), validated against the schema.
    pub policy: Arc<medvault_policy::PolicyEngine>,
    /// How long a break-glass grant lasts at most.
    pub break_glass_max: Duration,
    /// Where to take bundles from registered peers (mutual TLS), if anywhere.
    pub peer_listen: Option<SocketAddr>,
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
            step_up_window: admin::STEP_UP_WINDOW,
            policy: Arc::new(default_policy()),
            break_glass_max: Duration::from_secs(4 * 3600),
            peer_listen: None,
        }
    }
}

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Interaction context.
    pub services: medvault_node::ops::Services,
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
        let services = medvault_node::ops::Services::of(&node);
        Self {
            node: Arc::new(node),
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
            facts: Arc::default(),
            node_document: Arc::default(),
        }
    }
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/fhir/metadata", get(http::metadata))
        .route("/fhir", any(http::fhir_root))
        .route("/fhir/", any(http::fhir_root))
        .route("/fhir/{*path}", any(http::fhir_path))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(http::readyz))
        .route(
            "/.well-known/medvault-node",
            get(transparency::get_node_document),
        )
        .route(
            "/ledger/{log}/checkpoint",
            get(transparency::get_checkpoint),
        )
        .route("/ledger/{log}/key", get(transparency::get_key))
        .route("/ledger/pq-cosigner/key", get(transparency::get_pq_key))
        .route("/ledger/{log}/tile/{*path}", get(transparency::get_tile))
        .route(
            "/ledger/{log}/proof/inclusion",
            get(transparency::get_inclusion),
        )
        .route(
            "/ledger/{log}/proof/consistency",
            get(transparency::get_consistency),
        )
        .route(
            "/fhir/.well-known/smart-configuration",
            get(oauth::smart_configuration),
        )
        .route(
            "/.well-known/smart-configuration",
            get(oauth::smart_configuration),
        )
        .route("/auth/token", post(oauth::token))
        .route("/auth/introspect", post(oauth::introspect))
        .route("/admin/keys/rotate", post(admin::rotate))
        .route("/auth/break-glass", post(break_glass::open))
        .route("/privacy/alerts", get(break_glass::list))
        .route(
            "/privacy/alerts/{id}/acknowledge",
            post(break_glass::acknowledge),
        )
        .route("/admin/patients/{id}/erase", post(admin::erase))
        .route("/auth/revoke", post(oauth_app::revoke))
        .route("/auth/authorize", get(oauth_app::authorize_page))
        .route("/auth/authorize.js", get(oauth_app::authorize_script))
        .route("/auth/authorize/check", get(oauth_app::authorize_check))
        .route("/auth/authorize/decide", post(oauth_app::authorize_decide))
        .route("/auth/login", post(identity::login))
        .route("/auth/ui", get(passkey::page))
        .route("/auth/ui/login.js", get(passkey::page_script))
        .route("/auth/ui/common.js", get(passkey::common_script))
        .route(
            "/auth/passkey/register/start",
            post(passkey::register_start),
        )
        .route(
            "/auth/passkey/register/finish",
            post(passkey::register_finish),
        )
        .route("/auth/passkey/login/start", post(passkey::login_start))
        .route("/auth/passkey/login/finish", post(passkey::login_finish))
        .route("/auth/logout", post(identity::logout))
        .route("/auth/session", get(identity::whoami))
        .route("/auth/totp/enroll", post(identity::totp_enroll))
        .route("/auth/totp/confirm", post(identity::totp_confirm))
        .route(
            "/witness/add-checkpoint",
            post(transparency::add_checkpoint),
        )
        .route("/witness/key", get(transparency::get_witness_key))
        .fallback(http::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::time_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::observe,
        ))
        .with_state(state)
}

/// The peer listener's routes (see [`share_http`]): bundles from registered peers, and the
/// node document.
pub fn peer_router(state: AppState) -> Router {
    Router::new()
        .route(
            medvault_node::share::RECEIVE_PATH,
            post(share_http::receive),
        )
        .route(
            "/.well-known/medvault-node",
            get(transparency::get_node_document),
        )
        .fallback(http::not_found)
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::observe,
        ))
        .with_state(state)
}

/// Serves `state` on `addr` until SIGINT/SIGTERM, then drains in-flight requests.
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve(state: AppState, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "medvault listening (plain HTTP)");
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    run_until_shutdown(state, serving.into_future()).await
}

/// Like [`serve`], over TLS 1.3 with `tls` (see [`tls::server_config`]).
///
/// # Errors
/// If the address cannot be bound.
pub async fn serve_tls(
    state: AppState,
    addr: SocketAddr,
    tls: std::sync::Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "medvault listening (TLS 1.3; key exchange X25519MLKEM768 or X25519)");
    let listener = tls::TlsListener::new(listener, tls)?;
    let app = router(state.clone()).into_make_service_with_connect_info::<tls::TlsPeer>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());
    run_until_shutdown(state, serving.into_future()).await
}

/// Signs checkpoints while `serving` runs, and a last one after it stopped.
async fn run_until_shutdown(
    state: AppState,
    serving: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let peers = match state.config.peer_listen {
        Some(addr) => Some(share_http::spawn_peer_listener(state.clone(), addr).await?),
        None => None,
    };
    let checkpoints = tokio::spawn(medvault_node::background::checkpoint_task(
        Arc::clone(&state.node),
        Arc::clone(&state.config.witnesses),
        state.config.checkpoint_interval,
    ));
    let summaries = tokio::spawn(anonymous::summary_task(
        state.clone(),
        state.config.anonymous_summary_interval,
    ));
    serving.await?;
    checkpoints.abort();
    summaries.abort();
    if let Some(p) = peers {
        p.abort();
    }
    // What was counted of anonymous requests since the last summary.
    anonymous::flush(&state).await;
    // Last checkpoints, so everything written before shutdown is covered by a signature.
    if let Err(e) = medvault_node::background::checkpoint_both(&state.node).await {
        tracing::warn!(error = %e.message, "final checkpoint failed");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
