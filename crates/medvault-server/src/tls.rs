//! TLS 1.3 for `medvault serve` (rustls with the aws-lc-rs provider): key exchange by the hybrid
//! X25519MLKEM768 (X25519 + ML-KEM-768) first, X25519 for clients that lack it, nothing older;
//! TLS 1.2 and below are refused. A development certificate can be generated on request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take over the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the HTTP server to take them.
const ACCEPT_QUEUE: usize = 256;
/// TLS handshakes in progress at most (slow or idle clients cannot pile up without bound).
const MAX_HANDSHAKES: usize = 1024;

/// What went wrong setting TLS up (names the file; never prints key material).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider: aws-lc-rs, key exchange groups X25519MLKEM768 then X25519.
pub fn provider() -> CryptoProvider {
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
    p
}

fn file_err(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// A TLS 1.3-only server configuration from PEM files: the certificate chain (leaf first) and
/// its private key.
///
/// # Errors
/// [`TlsError`] naming the file or the mismatch.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no PEM certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("no usable PEM private key ({e})")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The development certificate's files in `data_dir/tls/`, created (self-signed, ECDSA P-256,
/// for `localhost` and `127.0.0.1`, key file mode 0600) when missing. Returns the certificate
/// and key paths and the certificate's SHA-256 fingerprint (hex), for clients to pin.
///
/// # Errors
/// [`TlsError`] if the files cannot be written or read.
pub fn dev_cert(data_dir: &Path) -> Result<(PathBuf, PathBuf, String), TlsError> {
    let dir = data_dir.join("tls");
    let (cert, key) = (dir.join("dev-cert.pem"), dir.join("dev-key.pem"));
    if !(cert.exists() && key.exists()) {
        std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
        let made =
            medvault_crypto::dev_tls_certificate().map_err(|e| TlsError::Config(e.to_string()))?;
        write_private(&key, made.key_pem().as_bytes())?;
        std::fs::write(&cert, &made.cert_pem).map_err(|e| file_err(&cert, e))?;
    }
    let der = CertificateDer::from_pem_file(&cert).map_err(|e| file_err(&cert, e))?;
    Ok((cert, key, hex::encode(medvault_crypto::sha256(&der))))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    medvault_node::node::write_private_file(path, bytes).map_err(|e| file_err(path, e))
}

/// Told of every refused TLS handshake: the client's address and why (e.g. for the peer
/// listener, to record unknown nodes' attempts in the access log).
pub type RefusedHook = Arc<dyn Fn(SocketAddr, String) + Send + Sync>;

/// Accepts TCP connections and hands out those whose TLS handshake completed (handshakes run
/// in their own tasks, so a slow client delays no one).
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`.
    ///
    /// # Errors
    /// If the listener has no local address.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::with_refused_hook(listener, config, None)
    }

    /// Like [`Self::new`], telling `refused` of every handshake that failed.
    ///
    /// # Errors
    /// If the listener has no local address.
    pub fn with_refused_hook(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        refused: Option<RefusedHook>,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = std::sync::Arc::clone(&handshakes).acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, sender, refused) = (acceptor.clone(), tx.clone(), refused.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let group = tls
                                .get_ref()
                                .1
                                .negotiated_key_exchange_group()
                                .map(|g| format!("{:?}", g.name()));
                            tracing::debug!(?group, "TLS handshake done");
                            // A full queue (the server is not taking connections, e.g.
                            // shutting down) drops the connection after a while.
                            let _ =
                                tokio::time::timeout(HANDSHAKE_TIMEOUT, sender.send((tls, peer)))
                                    .await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake refused");
                            if let Some(hook) = &refused {
                                hook(peer, e.to_string());
                            }
                        }
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { ready, local })
    }
}

/// The peer of a TLS connection, as connect info (axum provides `SocketAddr` connect info for
/// plain TCP listeners only).
#[derive(Debug, Clone, Copy)]
pub struct TlsPeer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsPeer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The client's address from a request's connect info, plain or TLS; loopback when there is no
/// socket (tests driving the router directly).
pub fn peer_ip(extensions: &axum::http::Extensions) -> std::net::IpAddr {
    use axum::extract::ConnectInfo;
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| extensions.get::<ConnectInfo<TlsPeer>>().map(|c| c.0.0.ip()))
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ended (it never does while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
