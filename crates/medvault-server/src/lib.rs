//! medvault's HTTP server: the FHIR R4 API over the encrypted store.
//!
//! [`router`] builds the axum `Router` from an [`AppState`] and is separate from [`serve`], so
//! tests can drive it with or without a socket. Every FHIR request is authenticated by the
//! [`auth::Authenticated`] extractor, parsed by [`route`], executed by [`ops`] / [`search`] /
//! [`bundle`] on blocking threads, and answered as `application/fhir+json`.

pub mod admin;
mod alerts_http;
pub mod anonymous;
pub mod auth;
mod breach_http;
pub mod break_glass;
mod bulk_http;
pub mod client_addr;
mod compliance_http;
pub mod error;
mod http;
pub mod identity;
pub mod oauth;
pub mod oauth_app;
pub mod passkey;
pub mod peer;
mod portal_http;
mod respond;
pub mod share_http;
mod state;
mod subject_http;
mod subscription_http;
pub mod tls;
mod transparency;

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};

pub use error::ApiError;
pub use http::ACCESS_LEAF_HEADER;
pub use medvault_node::Node;
pub use state::{AppState, FHIR_JSON, ServerConfig};

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
        .route("/privacy/ui", get(alerts_http::page))
        .route("/portal/ui", get(portal_http::page))
        .route("/portal/ui/portal.js", get(portal_http::page_script))
        .route(
            "/portal/requests",
            get(portal_http::list).post(portal_http::open),
        )
        .route("/privacy/ui/privacy.js", get(alerts_http::page_script))
        .route("/admin/compliance", get(compliance_http::report))
        .route("/admin/breach/assess", post(breach_http::assess_http))
        .route(
            "/admin/breaches",
            get(breach_http::list).post(breach_http::record),
        )
        .route("/admin/breaches/{id}", get(breach_http::show))
        .route("/admin/breaches/{id}/notices", post(breach_http::notice))
        .route("/admin/breaches/{id}/close", post(breach_http::close))
        .route(
            "/admin/subjects/requests",
            get(subject_http::list).post(subject_http::open),
        )
        .route("/admin/subjects/requests/{id}", get(subject_http::show))
        .route(
            "/admin/subjects/requests/{id}/answer",
            post(subject_http::answer),
        )
        .route(
            "/admin/subjects/requests/{id}/export",
            post(subject_http::export),
        )
        .route("/admin/patients/{id}/hold", post(subject_http::hold))
        .route("/admin/holds", get(subject_http::holds))
        .route("/admin/holds/{id}/release", post(subject_http::release))
        .route(
            "/admin/patients/{id}/restrict",
            post(subject_http::restrict),
        )
        .route("/admin/restrictions", get(subject_http::restrictions))
        .route("/admin/restrictions/{id}/lift", post(subject_http::lift))
        .route("/admin/alerts", get(alerts_http::list))
        .route("/admin/alerts/{id}", get(alerts_http::read))
        .route("/admin/alerts/{id}/verdict", post(alerts_http::verdict))
        .route("/admin/sentinel/thresholds", get(alerts_http::thresholds))
        .route("/admin/responses", get(alerts_http::responses))
        .route("/admin/responses/{id}/undo", post(alerts_http::undo))
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
        .method_not_allowed_fallback(http::method_not_allowed)
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

/// Binds the peer listener on `addr` and serves it in a task (until aborted).
///
/// # Errors
/// If the address cannot be bound or the node's identity does not open.
pub async fn spawn_peer_listener(
    state: AppState,
    addr: SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let node = Arc::clone(&state.node);
    let config = tokio::task::spawn_blocking(move || {
        peer::server_config(node).map_err(std::io::Error::other)
    })
    .await
    .map_err(std::io::Error::other)??;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "peer listener (mutual TLS 1.3, registered peers only)");
    let listener = tls::TlsListener::with_refused_hook(
        listener,
        config,
        Some(share_http::refusal_recorder(&state)),
    )?;
    let app = peer_router(state).into_make_service_with_connect_info::<peer::PeerConn>();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the peer listener stopped");
        }
    }))
}

/// Serves `state` on an already bound `listener` (a benchmark's or a test's free port) until the
/// task is dropped; no signal handling.
///
/// # Errors
/// If serving fails.
pub async fn serve_listener(
    state: AppState,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await
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

/// How often Sentinel scores what the access log gained.
const SENTINEL_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Signs checkpoints while `serving` runs, and a last one after it stopped; scores the access
/// log with Sentinel meanwhile (unless it is off).
async fn run_until_shutdown(
    state: AppState,
    serving: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    let peers = match state.config.peer_listen {
        Some(addr) => Some(spawn_peer_listener(state.clone(), addr).await?),
        None => None,
    };
    let checkpoints = tokio::spawn(medvault_node::background::checkpoint_task(
        Arc::clone(&state.node),
        Arc::clone(&state.config.witnesses),
        state.config.checkpoint_interval,
    ));
    let indexing = tokio::spawn(medvault_node::background::access_index_task(
        Arc::clone(&state.node),
        std::time::Duration::from_secs(1),
    ));
    let summaries = tokio::spawn(anonymous::summary_task(
        Arc::clone(&state.node),
        Arc::clone(&state.anonymous),
        state.config.anonymous_summary_interval,
    ));
    // Sentinel scores the access log off the request path; its alerts join the privacy queue
    // and its playbooks answer them.
    let sentinel = state.config.sentinel_threshold.map(|threshold| {
        let (_, session_max) = state
            .config
            .sessions
            .for_role(medvault_core::Role::Clinician);
        let responder = medvault_node::responses::Responder {
            playbooks: medvault_node::responses::Playbooks {
                list: state.config.playbooks.clone(),
                dry_run: state.config.sentinel_dry_run,
                session_max_micros: i64::try_from(session_max.as_micros())
                    .unwrap_or(i64::MAX)
                    .max(24 * 3_600_000_000),
            },
            enforcement: Arc::clone(&state.enforcement),
        };
        tokio::spawn(medvault_node::sentinel::task(
            Arc::clone(&state.node),
            threshold,
            Some(responder),
            SENTINEL_EVERY,
        ))
    });
    let enforcement = tokio::spawn(medvault_node::responses::reload_task(
        Arc::clone(&state.node),
        Arc::clone(&state.enforcement),
        std::time::Duration::from_secs(1),
    ));
    serving.await?;
    if let Some(s) = sentinel {
        s.abort();
    }
    enforcement.abort();
    indexing.abort();
    checkpoints.abort();
    summaries.abort();
    if let Some(p) = peers {
        p.abort();
    }
    // What was counted of anonymous requests since the last summary.
    anonymous::flush(&state.node, &state.anonymous).await;
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
