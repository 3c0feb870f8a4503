//! Node-to-node calls (issue 7): mutual TLS 1.3 between registered peers, each side's key
//! pinned.
//!
//! A node's TLS identity for these calls is its node identity's Ed25519 key in a self-signed
//! certificate (made again after a key rotation): peers pin the key from the node document their administrator
//! registered (fingerprint confirmed out of band), not a certificate authority's word. The
//! server asks every client for a certificate and lets the handshake finish only for a
//! registered peer's key; the client accepts only the pinned key of the peer it called. Key
//! exchange is the same as the public listener's (X25519MLKEM768 first), so what passes over
//! the link is protected against later quantum decryption; authentication of the link is
//! Ed25519 alone (TLS has no standard hybrid signature yet), and the bundle inside carries the
//! hybrid signature that counts.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde_json::Value;

use crate::Node;
use crate::tls::{TlsError, TlsListener, provider};
use medvault_node::node_identity::NodeIdentity;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// How often at most the peer listener re-reads the registered peers and its own key version.
const PIN_RELOAD: Duration = Duration::from_secs(1);
/// Time allowed to connect, and to complete the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a peer to answer a delivery: longer than the receiver gives a body to
/// arrive (60 s) plus a large import, so the receiver never finishes after the sender gave up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read from a peer.
const MAX_ANSWER: usize = 1024 * 1024;

/// The Ed25519 key a certificate holds (parsed with webpki, so the key is the one TLS
/// signatures are checked with), or `None` for another kind of key or a malformed certificate.
pub fn ed25519_key_of(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    spki.as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
}

/// The Ed25519 key of a node document's signing identity (already verified at registration).
pub fn document_ed25519(document: &str) -> Option<[u8; 32]> {
    let doc: Value = serde_json::from_str(document).ok()?;
    let b = base64::engine::general_purpose::STANDARD
        .decode(doc["signing"]["Ed25519"].as_str()?)
        .ok()?;
    b.try_into().ok()
}

/// The node's certificate for node-to-node TLS: self-signed with its identity's Ed25519 key.
///
/// # Errors
/// [`TlsError::Config`] if the certificate cannot be made.
pub fn tls_identity(
    id: &NodeIdentity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let made = id
        .signing
        .tls_certificate(&format!("medvault node {}", id.node))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from(made.key_der().to_vec());
    Ok((
        vec![CertificateDer::from(made.cert_der)],
        PrivateKeyDer::Pkcs8(key),
    ))
}

/// The Ed25519 keys of the registered peers, re-read from the store at most once per
/// [`PIN_RELOAD`], so `medvault peer add` and `peer remove` take effect within a second,
/// without a restart.
pub struct PeerPins {
    node: Arc<Node>,
    known: RwLock<(Option<Instant>, HashSet<[u8; 32]>)>,
    reloading: std::sync::Mutex<()>,
}

impl std::fmt::Debug for PeerPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerPins")
    }
}

impl PeerPins {
    /// Pins read from `node`'s registered peers.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            known: RwLock::new((None, HashSet::new())),
            reloading: std::sync::Mutex::new(()),
        }
    }

    fn reload(&self) -> Option<HashSet<[u8; 32]>> {
        match self.node.store.peers() {
            Ok(peers) => Some(
                peers
                    .iter()
                    .filter_map(|p| document_ed25519(&p.document))
                    .collect(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "reading the registered peers failed");
                None
            }
        }
    }

    /// True if `key` is a registered peer's key (as of at most [`PIN_RELOAD`] ago). One
    /// handshake at a time re-reads the registry when it is due; the others meanwhile use the
    /// keys read before, and a failed read keeps them.
    pub fn is_registered(&self, key: &[u8; 32]) -> bool {
        let due = self
            .known
            .read()
            .map_or(true, |k| k.0.is_none_or(|at| at.elapsed() >= PIN_RELOAD));
        if due && let Ok(_one) = self.reloading.try_lock() {
            match self.reload() {
                Some(keys) => {
                    if let Ok(mut k) = self.known.write() {
                        *k = (Some(Instant::now()), keys);
                    }
                }
                None => {
                    if let Ok(mut k) = self.known.write() {
                        k.0 = Some(Instant::now());
                    }
                }
            }
        }
        self.known.read().is_ok_and(|k| k.1.contains(key))
    }
}

/// Checks TLS 1.3 handshake signatures with the certificate's key (Ed25519 only).
fn verify_signature(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
}

fn not_tls13() -> rustls::Error {
    rustls::Error::General("node-to-node calls use TLS 1.3 only".into())
}

fn unknown_key() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// The server side: a client certificate is required and must hold a registered peer's key.
#[derive(Debug)]
struct RegisteredClients {
    pins: Arc<PeerPins>,
    algs: WebPkiSupportedAlgorithms,
}

/// The signature checks both verifiers share: TLS 1.3 only, Ed25519 only (the key pinned in
/// the peer's registered node document), through the provider's algorithms in `self.algs`.
macro_rules! ed25519_tls13_only {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(not_tls13())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_signature(&self.algs, message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

impl ClientCertVerifier for RegisteredClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match ed25519_key_of(end_entity) {
            Some(k) if self.pins.is_registered(&k) => Ok(ClientCertVerified::assertion()),
            _ => Err(unknown_key()),
        }
    }

    ed25519_tls13_only!();
}

/// The client side: the server must hold exactly the pinned key.
#[derive(Debug)]
struct PinnedServer {
    key: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if ed25519_key_of(end_entity) == Some(self.key) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(unknown_key())
        }
    }

    ed25519_tls13_only!();
}

/// The server certificate of the peer listener: made from the node's identity key, and made
/// again when the key's version changes (`medvault node rotate-keys`, maybe by another
/// process), so peers that registered the new document reach this node without a restart.
struct IdentityCert {
    node: Arc<Node>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Option<(u32, Arc<rustls::sign::CertifiedKey>)>>,
    checked: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for IdentityCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityCert")
    }
}

impl IdentityCert {
    fn make(&self) -> Result<(u32, Arc<rustls::sign::CertifiedKey>), TlsError> {
        let id = NodeIdentity::load(&self.node).map_err(|e| TlsError::Config(e.to_string()))?;
        let (chain, key) = tls_identity(&id)?;
        let certified = rustls::sign::CertifiedKey::from_der(chain, key, &self.provider)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok((id.version, Arc::new(certified)))
    }
}

impl rustls::server::ResolvesServerCert for IdentityCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // At most once a second, one handshake looks at the key version (a store read); the
        // others, and every handshake when the read fails, use the certificate made before.
        let due = self.checked.try_lock().ok().is_some_and(|mut at| {
            let due = at.is_none_or(|t| t.elapsed() >= PIN_RELOAD);
            if due {
                *at = Some(Instant::now());
            }
            due
        });
        let current = self.current.read().ok().and_then(|c| c.clone());
        if due {
            let stored = self
                .node
                .store
                .data_key(medvault_node::node_identity::SIGN_ED25519_KEY)
                .ok()
                .flatten()
                .map(|row| row.key_version);
            if stored.is_some() && stored != current.as_ref().map(|(v, _)| *v) {
                match self.make() {
                    Ok((v, key)) => {
                        if let Ok(mut c) = self.current.write() {
                            *c = Some((v, Arc::clone(&key)));
                        }
                        return Some(key);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the node's TLS identity could not be made")
                    }
                }
            }
        }
        current.map(|(_, key)| key)
    }
}

/// The peer listener's TLS configuration: this node's identity certificate, client
/// certificates required and checked against the registered peers.
///
/// # Errors
/// [`TlsError::Config`] if the identity certificate cannot be made or rustls refuses the
/// configuration.
pub fn server_config(node: Arc<Node>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(RegisteredClients {
        pins: Arc::new(PeerPins::new(Arc::clone(&node))),
        algs: provider.signature_verification_algorithms,
    });
    let certs = IdentityCert {
        node,
        provider: Arc::clone(&provider),
        current: RwLock::new(None),
        checked: std::sync::Mutex::new(None),
    };
    // Made once now, so a broken identity stops the start rather than every handshake.
    let first = certs.make()?;
    if let Ok(mut c) = certs.current.write() {
        *c = Some(first);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(certs));
    // No session resumption: a resumed handshake would skip the client-certificate check, so
    // a peer removed from the registry could still connect.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration for calling the peer whose Ed25519 key is `pinned`, presenting this
/// node's identity certificate.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the configuration.
pub fn client_config(
    id: &NodeIdentity,
    pinned: [u8; 32],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(provider());
    let verifier = Arc::new(PinnedServer {
        key: pinned,
        algs: provider.signature_verification_algorithms,
    });
    let (chain, key) = tls_identity(id)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connect info of the peer listener: the client's address and the (registered) Ed25519 key
/// its certificate holds.
#[derive(Debug, Clone, Copy)]
pub struct PeerConn {
    /// The client's address.
    pub addr: SocketAddr,
    /// The key the client authenticated with.
    pub key: Option<[u8; 32]>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerConn
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let key = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(<[_]>::first)
            .and_then(ed25519_key_of);
        Self {
            addr: *stream.remote_addr(),
            key,
        }
    }
}

/// Why a call to a peer failed (names the step, never key material).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The registered URL is not `https://host[:port]`.
    #[error("the peer's URL must be https://HOST[:PORT]")]
    BadUrl,
    /// No TCP connection.
    #[error("could not connect to the peer ({0})")]
    Connect(String),
    /// The TLS handshake failed (e.g. the peer's key is not the pinned one).
    #[error("the TLS handshake with the peer failed ({0})")]
    Tls(String),
    /// HTTP failed or timed out.
    #[error("the peer did not answer ({0})")]
    Http(String),
}

/// A peer's answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (at most 1 MiB read).
    pub body: Vec<u8>,
}

/// Splits `https://host[:port]` into host and port.
///
/// # Errors
/// [`CallError::BadUrl`].
pub fn parse_url(url: &str) -> Result<(String, u16), CallError> {
    medvault_node::share::peer_address(url).ok_or(CallError::BadUrl)
}

/// POSTs `body` to `path` at the peer `url` over mutual TLS with `config`.
///
/// # Errors
/// [`CallError`] naming the failed step.
pub async fn post(
    url: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    config: Arc<rustls::ClientConfig>,
) -> Result<Answer, CallError> {
    use http_body_util::BodyExt as _;
    let (host, port) = parse_url(url)?;
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| CallError::Connect("timed out".into()))?
    .map_err(|e| CallError::Connect(e.kind().to_string()))?;
    let name = ServerName::try_from(host.clone()).map_err(|_| CallError::BadUrl)?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| CallError::Tls("timed out".into()))?
    .map_err(|e| CallError::Tls(e.to_string()))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| CallError::Http(medvault_node::error::with_causes(&e)))?;
    let driver = tokio::spawn(conn);
    let authority = if port == 443 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = axum::http::Request::post(path)
        .header(axum::http::header::HOST, authority)
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(http_body_util::Full::new(axum::body::Bytes::from(body)))
        .map_err(|e| CallError::Http(e.to_string()))?;
    let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| CallError::Http(medvault_node::error::with_causes(&e)))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| CallError::Http(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok::<_, CallError>(Answer { status, body })
    })
    .await
    .map_err(|_| CallError::Http("timed out".into()))?;
    driver.abort();
    answer
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_https_origins_only() {
        assert_eq!(
            parse_url("https://127.0.0.1:7443").unwrap(),
            ("127.0.0.1".into(), 7443)
        );
        assert_eq!(
            parse_url("https://b.example/").unwrap(),
            ("b.example".into(), 443)
        );
        assert_eq!(parse_url("https://[::1]:9").unwrap(), ("::1".into(), 9));
        for bad in [
            "http://b.example",
            "https://b.example/fhir",
            "https://b.example?x=1",
            "b.example:1",
            "",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
