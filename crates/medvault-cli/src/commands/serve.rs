//! `medvault serve`: its settings and starting the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum;
use medvault_crypto::KeyFileKind;
use medvault_node::identity::sessions::SessionLimits;
use medvault_node::witness::RemoteWitness;
use medvault_server::{AppState, ServerConfig};

use super::ledger::parse_vkeys;
use super::policy::load_policy;
use super::{DataDir, open_node};

/// `medvault serve`'s settings.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Read settings from this TOML file (see docs/medvault.example.toml): every key stands
    /// for one of the flags below. Environment variables MEDVAULT__SECTION__KEY override the
    /// file (e.g. MEDVAULT__SERVER__LISTEN=0.0.0.0:8080), and flags override both. Unknown
    /// keys are refused.
    #[arg(long, value_name = "FILE", env = "MEDVAULT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    dir: DataDir,
    /// Address and port to listen on. Keep it on loopback unless a TLS proxy fronts it.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8080",
        env = "MEDVAULT_LISTEN"
    )]
    listen: SocketAddr,
    /// Largest request body accepted; larger requests get 413. (Resources of most types
    /// are also limited to 1 MiB each; documents, reports and questionnaires only by this.)
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Requests running longer are answered 503; a write not committed by then is not made.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout_seconds: u64,
    /// Public base URL of the FHIR API, used in links (default: from the Host header).
    #[arg(long, value_name = "URL", env = "MEDVAULT_BASE_URL")]
    base_url: Option<String>,
    /// Log format (logs never carry PHI, query strings or tokens).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// A witness to ask for cosignatures of every checkpoint of both logs, as `URL,VKEY`: the witness's
    /// submission prefix (e.g. http://witness.example:8080/witness) and its cosigner key
    /// (from its `GET /witness/key` or `medvault ledger keys`). Repeat for several.
    #[arg(long = "witness", value_name = "URL,VKEY")]
    witnesses: Vec<String>,
    /// Act as a witness for the log with this checkpoint key (another node's
    /// `GET /ledger/records/key` or `GET /ledger/access/key`, or its `medvault ledger keys`):
    /// cosign its checkpoints after checking they extend what was cosigned before. Repeat
    /// for several logs (a node has two: give both keys to witness it fully).
    #[arg(long = "witness-for", value_name = "VKEY")]
    witness_for: Vec<String>,
    /// Minutes a login session may sit unused before it ends (HIPAA automatic logoff;
    /// NIST AAL2 allows at most 30).
    #[arg(long, value_name = "MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=30))]
    session_idle_minutes: u64,
    /// Minutes an admin's session may sit unused (NIST AAL3 allows at most 15).
    #[arg(long, value_name = "MINUTES", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=15))]
    admin_session_idle_minutes: u64,
    /// The origin people's browsers reach this node at, for passkeys (WebAuthn binds
    /// credentials to it), e.g. https://ehr.example.org. Defaults to http://localhost:PORT
    /// (browsers allow WebAuthn on localhost without TLS).
    #[arg(long, value_name = "URL")]
    webauthn_origin: Option<String>,
    /// Seconds within which an admin must have signed in (with a second factor or a passkey)
    /// to rotate keys or erase a patient over the API (step-up).
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=900))]
    step_up_seconds: u64,
    /// Sentinel (insider-snooping detection) scores every access-log entry as it is written;
    /// an entry scoring at or above this (0 to 1) raises an alert in the privacy officer's
    /// queue (GET /privacy/alerts). `off` turns live scoring off. docs/sentinel.md.
    #[arg(long, value_name = "SCORE|off", default_value = "0.85", value_parser = sentinel_threshold)]
    sentinel_threshold: SentinelThreshold,
    /// Sentinel's playbooks: a TOML file of [[playbook]] tables saying what to do about which
    /// alerts (step-up, end-sessions, lock, throttle, webhook). Without it the built-in ones
    /// run: attacks from outside are throttled, a login after credential stuffing has its
    /// sessions ended and must step up, mass deletion locks the credential. An empty file
    /// turns responses off. docs/sentinel.md, "Responses".
    #[arg(long, value_name = "FILE")]
    playbooks: Option<PathBuf>,
    /// Record what the playbooks would do (responses and access-log entries marked dry-run)
    /// without doing it.
    #[arg(long)]
    sentinel_dry_run: bool,
    /// Hours a login session lasts at most, used or not (NIST: at most 12 at AAL2/AAL3).
    #[arg(long, value_name = "HOURS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=12))]
    session_max_hours: u64,
    /// A Cedar policy file added to the default access policy (repeat for several). Every
    /// policy needs a unique @id("…"); the files are validated against the schema
    /// (`medvault policy schema`) before the server starts, and an invalid one stops it.
    #[arg(long = "policy", value_name = "FILE")]
    policies: Vec<PathBuf>,
    /// Use only the --policy files, without the default policy (`medvault policy default`
    /// prints it, to start from).
    #[arg(long, requires = "policies")]
    replace_default_policy: bool,
    /// Serve HTTPS (TLS 1.3 only; key exchange X25519MLKEM768, the hybrid of X25519 and
    /// ML-KEM-768, preferred, X25519 for clients without it) with this certificate chain
    /// (PEM, leaf first). Needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_dev_cert"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed development certificate for localhost, created in
    /// DATA_DIR/tls/ if missing (its SHA-256 fingerprint is logged, for clients to pin).
    /// Not for production: browsers will warn.
    #[arg(long)]
    tls_dev_cert: bool,
    /// Longest break-glass grant a clinician may open, in minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=1440))]
    break_glass_max_minutes: u64,
    /// Also listen here for bundles from registered peers (`medvault peer add`), over mutual
    /// TLS 1.3 with this node's identity key: only registered peers' keys complete the
    /// handshake. Give peers https://THIS_HOST:PORT as this node's URL.
    #[arg(long, value_name = "ADDR:PORT", env = "MEDVAULT_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    #[command(flatten)]
    clients: ClientArgs,
}

/// How `serve` tells clients apart and limits those that authenticate no one.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// A reverse proxy (an address or a network, e.g. 10.0.0.5 or 10.0.0.0/24) whose
    /// forwarding header names the client. Login throttling and the limit on anonymous
    /// requests count per client address: behind a proxy every client shares the proxy's
    /// address unless it is listed here. Only connections from these addresses have the
    /// header read (from the right, skipping further listed proxies); without this option
    /// forwarding headers are ignored. Repeat for several.
    #[arg(long = "trusted-proxy", value_name = "IP_OR_CIDR")]
    trusted_proxies: Vec<medvault_server::client_addr::IpNet>,
    /// The header trusted proxies write the client's address into. The proxy must append
    /// to (or replace) it, never pass a client's own value on unmarked.
    #[arg(
        long,
        value_enum,
        default_value = "x-forwarded-for",
        requires = "trusted_proxies"
    )]
    client_address_header: ClientAddressHeader,
    /// Requests without valid credentials (wrong paths, failed logins, bad tokens, public
    /// pages) accepted per client address per minute; after that the address gets 429 for
    /// requests without credentials until the minute is over.
    #[arg(long, value_name = "N", default_value_t = medvault_server::anonymous::DEFAULT_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    anonymous_requests_per_minute: u32,
    /// The access log records 30 requests without valid credentials a minute one by one;
    /// beyond that they are counted (by client address, status and credential named) and
    /// written as one summary record this often, so a flood cannot grow the log without
    /// limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    anonymous_summary_seconds: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy, …` (nginx $proxy_add_x_forwarded_for, HAProxy
    /// `option forwardfor`, most load balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy`.
    Forwarded,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the server until it is stopped.
pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config: _,
        dir,
        listen,
        max_body_bytes,
        request_timeout_seconds,
        base_url,
        log_format,
        witnesses,
        witness_for,
        session_idle_minutes,
        admin_session_idle_minutes,
        session_max_hours,
        webauthn_origin,
        step_up_seconds,
        sentinel_threshold,
        playbooks,
        sentinel_dry_run,
        policies,
        replace_default_policy,
        break_glass_max_minutes,
        tls_cert,
        tls_key,
        tls_dev_cert,
        peer_listen,
        clients,
    } = args;
    let ClientArgs {
        trusted_proxies,
        client_address_header,
        anonymous_requests_per_minute,
        anonymous_summary_seconds,
    } = clients;
    init_logging(log_format);
    let policy = load_policy(&policies, replace_default_policy)?;
    let playbooks_from = if playbooks.is_some() {
        "file"
    } else {
        "built-in"
    };
    let playbooks = load_playbooks(playbooks.as_deref())?;
    let witnesses = witnesses
        .iter()
        .map(|w| RemoteWitness::parse(w).map_err(|e| anyhow::anyhow!("--witness {w:?}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let witness_for = parse_vkeys(&witness_for, "--witness-for")?;
    if let Some(o) = &webauthn_origin {
        let url = o
            .parse()
            .map_err(|e| anyhow::anyhow!("--webauthn-origin {o:?}: {e}"))?;
        medvault_node::identity::passkeys::relying_party(&url)
            .map_err(|e| anyhow::anyhow!("--webauthn-origin: {e}"))?;
    }
    let node = open_node(&dir, false)?;
    // The schema validator compiles while the server starts, not during its first write.
    let fhir = std::sync::Arc::clone(&node.fhir);
    std::thread::spawn(move || fhir.warm_up());
    // A log from before the patient index gets its older entries indexed in the background
    // (until then, a patient's accounting opens every older entry: slower, never incomplete).
    let (access, ledger) = (
        std::sync::Arc::clone(&node.access),
        std::sync::Arc::clone(&node.ledger),
    );
    std::thread::spawn(move || {
        match medvault_node::access_index::reindex(access.as_ref(), &ledger, |_, _| {}) {
            Ok(r) if r.leaves > 0 => tracing::info!(
                leaves = r.leaves,
                rows = r.rows,
                "indexed the access log's older entries by patient"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e,
                "re-indexing the access log stopped; `medvault ledger reindex-access` resumes it"
            ),
        }
    });
    // The node's identity keys exist before anyone asks for its document.
    medvault_node::node_identity::NodeIdentity::load(&node)?;
    // After the node opened: the data directory exists (mode 0700) for a dev certificate.
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(medvault_server::tls::server_config(&cert, &key)?),
        _ if tls_dev_cert => {
            let (cert, key, fingerprint) = medvault_server::tls::dev_cert(&dir.data_dir)?;
            tracing::info!(
                certificate = %cert.display(),
                sha256 = %fingerprint,
                "serving with the development certificate"
            );
            Some(medvault_server::tls::server_config(&cert, &key)?)
        }
        _ => None,
    };
    // Recorded for the compliance report, which may be made while no server runs.
    medvault_compliance::evidence::record_deployment(
        &node,
        &medvault_compliance::evidence::Deployment {
            recorded_micros: node.clock.now_micros(),
            listen: listen.to_string(),
            loopback: listen.ip().is_loopback(),
            tls: match (&tls, tls_dev_cert) {
                (Some(_), true) => "dev-certificate",
                (Some(_), false) => "certificate",
                (None, _) => "none",
            }
            .into(),
            pq_key_exchange: tls.is_some(),
            peer_mtls: peer_listen.is_some(),
            session_idle_minutes,
            admin_session_idle_minutes,
            session_max_hours,
            sentinel: sentinel_threshold
                .0
                .map_or_else(|| "off".to_owned(), |t| t.to_string()),
            playbooks: playbooks_from.into(),
            dry_run: sentinel_dry_run,
            default_policy: !replace_default_policy,
            site_policies: policies.len(),
            witnesses: witnesses.len(),
            break_glass_max_minutes,
        },
    )
    .map_err(|e| anyhow::anyhow!("recording the serve settings failed: {e}"))?;
    // Recorded so `ledger verify` can check cosignatures without being told the keys.
    let known = witnesses
        .iter()
        .map(|w| w.key.to_vkey())
        .collect::<Vec<_>>()
        .join("\n");
    if !known.is_empty() {
        node.store.write(Box::new(move |tx| {
            tx.set_meta(medvault_node::witness::WITNESS_KEYS_META, &known)
        }))?;
    }
    if !node.created && node.key_file_kind == KeyFileKind::Unprotected {
        tracing::warn!("the root key file is not sealed with a passphrase (MEDVAULT_PASSPHRASE)");
    }
    let config = ServerConfig {
        max_body_bytes,
        request_timeout: Duration::from_secs(request_timeout_seconds),
        base_url,
        witnesses: witnesses.into(),
        witness_for: witness_for.into(),
        sessions: SessionLimits {
            aal2_idle: Duration::from_secs(60 * session_idle_minutes),
            aal2_max: Duration::from_secs(3600 * session_max_hours),
            aal3_idle: Duration::from_secs(60 * admin_session_idle_minutes),
            aal3_max: Duration::from_secs(3600 * session_max_hours),
        },
        step_up_window: Duration::from_secs(step_up_seconds),
        sentinel_threshold: sentinel_threshold.0,
        playbooks,
        sentinel_dry_run,
        policy: std::sync::Arc::new(policy),
        break_glass_max: Duration::from_secs(60 * break_glass_max_minutes),
        peer_listen,
        export_dir: Some(dir.data_dir.join("exports")),
        trusted_proxies: medvault_server::client_addr::TrustedProxies::new(
            trusted_proxies,
            match client_address_header {
                ClientAddressHeader::XForwardedFor => {
                    medvault_server::client_addr::ForwardedHeader::XForwardedFor
                }
                ClientAddressHeader::Forwarded => {
                    medvault_server::client_addr::ForwardedHeader::Forwarded
                }
            },
        ),
        anonymous_requests_per_minute,
        anonymous_summary_interval: Duration::from_secs(anonymous_summary_seconds),
        webauthn_origin: Some(webauthn_origin.unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://localhost:{}", listen.port())
        })),
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let state = AppState::new(node, config);
    runtime
        .block_on(async {
            match tls {
                Some(tls) => medvault_server::serve_tls(state, listen, tls).await,
                None => medvault_server::serve(state, listen).await,
            }
        })
        .with_context(|| format!("cannot listen on {listen}"))?;
    Ok(())
}

/// The playbooks of `--playbooks FILE`, checked; the built-in ones without it.
fn load_playbooks(file: Option<&Path>) -> anyhow::Result<Vec<medvault_node::responses::Playbook>> {
    let Some(file) = file else {
        return Ok(medvault_node::responses::Playbooks::defaults());
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("--playbooks {}", file.display()))?;
    let mut parsed: medvault_node::responses::PlaybookFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--playbooks {}: {}", file.display(), e.message()))?;
    medvault_node::responses::Playbooks::validate(&parsed.playbook)
        .and_then(|()| {
            medvault_node::responses::Playbooks::resolve_secrets(&mut parsed.playbook, |v| {
                std::env::var(v).ok()
            })
        })
        .map_err(|e| anyhow::anyhow!("--playbooks {}: {e}", file.display()))?;
    Ok(parsed.playbook)
}

/// `--sentinel-threshold`: a score in [0, 1], or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SentinelThreshold(Option<f64>);

fn sentinel_threshold(text: &str) -> Result<SentinelThreshold, String> {
    if text == "off" {
        return Ok(SentinelThreshold(None));
    }
    match text.parse::<f64>() {
        Ok(t) if (0.0..=1.0).contains(&t) => Ok(SentinelThreshold(Some(t))),
        _ => Err(format!("`{text}` is not a score from 0 to 1 or `off`")),
    }
}
