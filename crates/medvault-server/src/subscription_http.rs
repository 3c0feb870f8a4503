//! Subscriptions over HTTP: who owns a subscription (whoever wrote it last), telling the
//! notifier about every write, `$status` and `$events`, and the HTTPS client notifications go
//! out with. The matching and delivery are `medvault_node::subscriptions`'.

use std::sync::Arc;
use std::time::Duration;

use medvault_core::{ResourceId, ResourceType, Role};
use medvault_node::identity::Authenticated;
use medvault_node::subscriptions::{Change, Deliver, Owner, SUBSCRIPTION};
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;
use crate::respond::blocking;

/// Notifications as HTTPS (or loopback HTTP) POSTs over hyper and rustls (TLS 1.2+ with the
/// system's roots, this crate's aws-lc-rs provider): no redirects followed (one could lead a
/// notification somewhere its owner did not name), ten seconds for the connection and ten for
/// the answer.
pub(crate) struct HttpDeliver {
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Where the system keeps its root certificates (Debian's bundle).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

impl HttpDeliver {
    pub(crate) fn new() -> Self {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(certs) = CertificateDer::pem_file_iter(SYSTEM_ROOTS) {
            let (added, _) = roots.add_parsable_certificates(certs.flatten());
            tracing::debug!(added, "root certificates for subscription endpoints");
        }
        if roots.is_empty() {
            tracing::warn!(
                "no system root certificates ({SYSTEM_ROOTS}): https subscription endpoints will fail"
            );
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| tracing::error!(error = %e, "no TLS for subscription notifications"))
            .ok();
        Self { tls }
    }

    /// One request: `body` POSTed (or a GET when `None`); the status and at most `limit` bytes
    /// of the answer's body.
    async fn send(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        const STEP: Duration = Duration::from_secs(10);
        let url = reqwest::Url::parse(url).map_err(|_| "not a URL".to_owned())?;
        let host = url
            .host_str()
            .ok_or("no host")?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port_or_known_default().ok_or("no port")?;
        let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| "connection timed out".to_owned())?
            .map_err(|e| format!("connection: {}", e.kind()))?;
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let method = if body.is_some() {
            axum::http::Method::POST
        } else {
            axum::http::Method::GET
        };
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(axum::http::header::HOST, authority);
        if body.is_some() {
            request = request.header(axum::http::header::CONTENT_TYPE, "application/fhir+json");
        }
        for (k, v) in headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request
            .body(http_body_util::Full::new(axum::body::Bytes::from(
                body.unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let status = if url.scheme() == "https" {
            let config = self.tls.clone().ok_or("no TLS configuration")?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| "not a TLS server name".to_owned())?;
            let tls = tokio::time::timeout(
                STEP,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| "TLS timed out".to_owned())?
            .map_err(|e| format!("TLS: {e}"))?;
            exchange(hyper_util::rt::TokioIo::new(tls), request, STEP, limit).await?
        } else {
            exchange(hyper_util::rt::TokioIo::new(tcp), request, STEP, limit).await?
        };
        Ok(status)
    }
}

async fn exchange<I>(
    io: I,
    request: axum::http::Request<http_body_util::Full<axum::body::Bytes>>,
    step: Duration,
    limit: usize,
) -> Result<(u16, Vec<u8>), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let answer = async {
        let resp = tokio::time::timeout(step, sender.send_request(request))
            .await
            .map_err(|_| "no answer in time".to_owned())?
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status().as_u16();
        // The body in a minute at most (a large import input), never more than `limit`.
        let body = tokio::time::timeout(
            step * 6,
            http_body_util::Limited::new(resp.into_body(), limit).collect(),
        )
        .await
        .map_err(|_| "the answer's body took too long".to_owned())?
        .map_err(|_| format!("the answer is larger than {limit} bytes, or broke off"))?
        .to_bytes()
        .to_vec();
        Ok::<_, String>((status, body))
    }
    .await;
    driver.abort();
    answer
}

impl Deliver for HttpDeliver {
    fn post(&self, url: &str, headers: &[(String, String)], body: Vec<u8>) -> Result<u16, String> {
        // Each delivery thread runs its own small runtime for the duration of one POST.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // A notification's answer is not read beyond a few bytes.
        runtime
            .block_on(self.send(url, headers, Some(body), 4096))
            .map(|(status, _)| status)
    }
}

impl medvault_node::bulk::Fetch for HttpDeliver {
    fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        match runtime.block_on(self.send(url, &[], None, limit))? {
            (200, body) => Ok(body),
            (status, _) => Err(format!("the input answered HTTP {status}")),
        }
    }
}

/// The owner a write by `who` records on a Subscription.
pub(crate) fn owner_of(who: &Authenticated) -> Owner {
    Owner {
        token_id: who.token_id.clone(),
        role: who.role,
        client: who.client.clone(),
        scopes: who.scopes.as_ref().map(|s| s.to_string()),
        practitioner: who.practitioner.clone(),
    }
}

/// The guard a subscription's owner is decided by (as their own requests are: a clinician's
/// purpose of use is treatment).
pub(crate) fn guard_for(
    state_policy: Arc<medvault_policy::PolicyEngine>,
    facts: Arc<medvault_node::authz::FactsCache>,
) -> Arc<medvault_node::subscriptions::GuardFor> {
    Arc::new(move |owner: &Owner| {
        let purpose =
            matches!(owner.role, Role::Clinician | Role::Nurse).then(|| "TREAT".to_owned());
        let guard: Arc<dyn medvault_node::ctx::AccessPolicy> =
            Arc::new(medvault_node::authz::Guard::new(
                Arc::clone(&state_policy),
                medvault_node::authz::Subject {
                    user: owner.token_id.clone(),
                    role: owner.role,
                    patient: None,
                    practitioner: owner.practitioner.clone(),
                    purpose,
                },
                Arc::clone(&facts),
            ));
        guard
    })
}

/// `Type/id/_history/v` → its parts.
fn written(location: &str) -> Option<(ResourceType, ResourceId, u64)> {
    let mut parts = location.rsplit('/');
    let version = parts.next()?.parse().ok()?;
    let _history = parts.next().filter(|h| *h == "_history")?;
    let id = ResourceId::new(parts.next()?).ok()?;
    let rt = ResourceType::new(parts.next()?).ok()?;
    Some((rt, id, version))
}

/// After a write by `who` committed: the Subscriptions it wrote get `who` as their owner, and
/// the notifier hears of every version written (`locations`: `Type/id/_history/v`).
pub(crate) async fn after_write(state: &AppState, who: &Authenticated, locations: Vec<String>) {
    let changes: Vec<(ResourceType, ResourceId, u64)> =
        locations.iter().filter_map(|l| written(l)).collect();
    let subscriptions: Vec<(ResourceId, u64)> = changes
        .iter()
        .filter(|(rt, ..)| *rt == SUBSCRIPTION)
        .map(|(_, id, v)| (id.clone(), *v))
        .collect();
    if !subscriptions.is_empty() {
        let (node, owner) = (Arc::clone(&state.node), owner_of(who));
        let recorded = blocking(move || {
            for (id, version) in &subscriptions {
                medvault_node::subscriptions::record_owner(&node, id, *version, &owner)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = recorded {
            tracing::error!(error = ?e, "a subscription's owner could not be recorded");
        }
    }
    for (rt, id, version) in changes {
        state.notifier.changed(Change::Written { rt, id, version });
    }
}

/// The `location`s of a batch or transaction response's entries.
pub(crate) fn bundle_locations(response: &Value) -> Vec<String> {
    response
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e.pointer("/response/location").and_then(Value::as_str))
        .map(|l| {
            // Absolute locations carry the base first: `Type/id/_history/v` is the last four.
            let mut tail: Vec<&str> = l.rsplit('/').take(4).collect();
            tail.reverse();
            tail.join("/")
        })
        .collect()
}

/// Who may read a Subscription (its endpoint, its headers' secrets, its events): admins, and
/// the principal that owns it. `id` is `None` for a search, which is for admins.
///
/// # Errors
/// 404 for someone else's subscription (as for a missing one), 403 for a search.
pub(crate) fn may_read(
    state: &AppState,
    who: &Authenticated,
    id: Option<&ResourceId>,
) -> Result<(), ApiError> {
    if who.role == Role::Admin {
        return Ok(());
    }
    let mine = id.is_some_and(|id| {
        medvault_node::subscriptions::owner(&state.node, id).is_some_and(|o| {
            o.token_id == who.token_id || (o.client.is_some() && o.client == who.client)
        })
    });
    match (id, mine) {
        (_, true) => Ok(()),
        (Some(id), false) => Err(ApiError::not_found(format!(
            "Subscription/{id} is not known"
        ))),
        (None, _) => Err(ApiError::new(
            medvault_node::error::ErrorKind::Forbidden,
            medvault_node::error::IssueCode::Forbidden,
            "searching Subscriptions is for admins; read yours by id",
        )),
    }
}

/// Refuses a Subscription write by a patient (their app or session): subscriptions are for
/// staff and systems.
pub(crate) fn may_subscribe(who: &Authenticated) -> Result<(), ApiError> {
    if who.patient.is_some() {
        return Err(ApiError::new(
            medvault_node::error::ErrorKind::Forbidden,
            medvault_node::error::IssueCode::Forbidden,
            "Subscriptions are for staff and systems, not patient sessions or apps",
        ));
    }
    Ok(())
}
