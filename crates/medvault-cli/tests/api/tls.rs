//! HTTPS on `medvault serve` (issue 7): TLS 1.3 only, the hybrid post-quantum key exchange
//! X25519MLKEM768 preferred, X25519 for clients without it, asserted from the client's side
//! with rustls and with an independent implementation (the OpenSSL command line).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::NamedGroup;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::{self, kx_group};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

use medvault_testkit::e2e::{Running, eventually, free_port};

use crate::MEDVAULT;

struct TlsServer {
    _process: Running,
    port: u16,
    cert: PathBuf,
}

fn start(dir: &Path) -> TlsServer {
    let port = free_port();
    let child = MEDVAULT
        .command()
        .args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-dev-cert",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Running::new(child);
    let cert = dir.join("tls/dev-cert.pem");
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || cert.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok(),
        || "the TLS server did not start".into(),
    );
    TlsServer {
        _process: process,
        port,
        cert,
    }
}

/// Connects with rustls offering `groups` and `versions`, sends `request`; returns the group
/// negotiated and the response's first line.
fn exchange(
    s: &TlsServer,
    groups: Vec<&'static dyn SupportedKxGroup>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    request: &str,
) -> Result<(NamedGroup, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&s.cert).unwrap())
        .unwrap();
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| g.name())
        .ok_or("no key exchange completed")?;
    let text = String::from_utf8_lossy(&response);
    Ok((group, text.lines().next().unwrap_or_default().to_owned()))
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[test]
fn https_prefers_the_hybrid_post_quantum_key_exchange_and_refuses_old_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(&tmp.path().join("node"));
    let tls13 = &[&rustls::version::TLS13];
    // A TLS 1.3 client offering `groups` (its key shares in that order) asks for /healthz.
    let health = |groups| exchange(&s, groups, tls13, HEALTH);

    // A client offering both gets the hybrid.
    let (group, status) = health(vec![kx_group::X25519MLKEM768, kx_group::X25519]).unwrap();
    assert_eq!(group, NamedGroup::X25519MLKEM768);
    assert_eq!(status, "HTTP/1.1 200 OK");
    // A client that sends only an X25519 key share gets X25519 (no extra round trip to ask for
    // the hybrid); rustls clients listing the hybrid first send both shares, as browsers do.
    let (group, _) = health(vec![kx_group::X25519, kx_group::X25519MLKEM768]).unwrap();
    assert_eq!(group, NamedGroup::X25519);
    // A client without ML-KEM falls back to X25519.
    let (group, status) = health(vec![kx_group::X25519]).unwrap();
    assert_eq!(group, NamedGroup::X25519);
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Nothing weaker or older is negotiated.
    assert!(health(vec![kx_group::SECP256R1]).is_err());
    assert!(
        exchange(
            &s,
            vec![kx_group::X25519],
            &[&rustls::version::TLS12],
            HEALTH
        )
        .is_err(),
        "TLS 1.2 is refused"
    );
    // The API answers over it.
    let (_, status) = exchange(
        &s,
        vec![kx_group::X25519MLKEM768],
        tls13,
        "GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(HEALTH.as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // An independent implementation: OpenSSL's client negotiates TLS 1.3 and (OpenSSL 3.0
    // has no ML-KEM) the X25519 fallback; a newer OpenSSL would take the hybrid.
    let Ok(out) = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", s.port),
            "-servername",
            "localhost",
            "-CAfile",
            s.cert.to_str().unwrap(),
            "-tls1_3",
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
    else {
        eprintln!("openssl not installed: the independent client check skipped");
        return;
    };
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(
        text.contains("Server Temp Key: X25519,") || text.contains("X25519MLKEM768"),
        "{text}"
    );
    assert!(text.contains("medvault development certificate"), "{text}");
    assert!(
        text.contains("Verification: OK"),
        "the dev certificate verifies: {text}"
    );
    // OpenSSL asking for TLS 1.2 is refused.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", s.port),
            "-tls1_2",
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.2 refused by the server");
}
