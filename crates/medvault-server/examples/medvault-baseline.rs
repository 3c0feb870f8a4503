//! `medvault-baseline`: the benchmark's plaintext peer. **Never use it for real data.** An
//! example of this crate so that it runs exactly the server's HTTP stack (axum, the one crate
//! that depends on it) and is never installed or shipped: `scripts/bench` builds it with
//! `cargo build --release -p medvault-server --example medvault-baseline`.
//!
//! It is medvault's own path — axum, bearer check, R4 schema validation, the same SQLite store
//! with its group-committing writer, WAL and `synchronous=FULL` — minus the two things under
//! test: bodies are stored as plaintext JSON (wrapped in `Sealed` without sealing) and the two
//! search indexes (`family` and the first `given`) hold the plaintext value instead of a keyed
//! HMAC.
//!
//! With `--full-index` it also writes, in plaintext, every index entry medvault writes for the
//! Patient (every search parameter's keys, prefixes included: about 74 per bench Patient), so a
//! create costs the same index work minus the keyed HMAC, and the comparison measures what
//! security costs rather than how much is searchable. Each entry is the parameter code's and the
//! key's unkeyed SipHash (16 bytes: a plaintext digest, no secret); searches still use the two
//! entries above.
//!
//! Usage: `medvault-baseline DB_PATH 127.0.0.1:PORT TOKEN [--full-index]`. Routes: `POST /fhir/Patient`,
//! `GET /fhir/Patient/{id}`, `GET /fhir/Patient?family=…&_count=…` (or `given=…`: the bench's
//! search with many matches), and `POST /fhir` with a
//! transaction Bundle of Patient creates (for preloading).

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use medvault_core::{ResourceId, ResourceType};
use medvault_crypto::{BlindValue, Sealed};
use medvault_fhir::Fhir;
use medvault_store::{IndexQuery, Store, StoredVersion, write_with};
use medvault_store_sqlite::SqliteStore;
use serde_json::{Value, json};

#[derive(Clone)]
struct App {
    store: Arc<dyn Store>,
    fhir: Arc<Fhir>,
    token_hash: [u8; 32],
    full_index: bool,
}

/// A plaintext (unkeyed) digest of one index key of search parameter `code`.
fn plain_entry(code: &str, key: &[u8]) -> BlindValue {
    use std::hash::{Hash as _, Hasher as _};
    let mut v = [0u8; 16];
    for (seed, half) in [0_u8, 1].into_iter().zip(v.chunks_mut(8)) {
        let mut h = std::hash::DefaultHasher::new();
        (seed, code, key).hash(&mut h);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    BlindValue(v)
}

/// The plaintext index value of `param` (`b'f'` family, `b'g'` given) = `value`: the
/// parameter's byte, then the normalized value's first 15 bytes.
fn plain_index(param: u8, value: &str) -> BlindValue {
    let mut v = [0u8; 16];
    v[0] = param;
    for (d, s) in v[1..]
        .iter_mut()
        .zip(medvault_fhir::normalize(value).bytes())
    {
        *d = s;
    }
    BlindValue(v)
}

fn authorized(app: &App, headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| medvault_crypto::sha256(t.as_bytes()) == app.token_hash)
}

fn fhir(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        v.to_string(),
    )
        .into_response()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The store requires a ledger leaf per version; the baseline stores a constant one (no
/// commitment, no audit records).
const BASELINE_LEAF: &[u8] = &[0; 42];

/// Validates and turns one Patient into a stored version plus its plaintext index entry.
fn prepare(app: &App, mut p: Value) -> Result<(StoredVersion, Vec<BlindValue>, Value), StatusCode> {
    if p.get("resourceType").and_then(Value::as_str) != Some("Patient") {
        return Err(StatusCode::BAD_REQUEST);
    }
    let id = ResourceId::random().to_string();
    let now = now_micros();
    p["id"] = json!(id);
    app.fhir
        .validate("Patient", &p)
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    p["meta"] = json!({"versionId": "1", "lastUpdated": now.to_string()});
    let name = |pointer: &str| {
        p.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let mut index = vec![
        plain_index(b'f', name("/name/0/family")),
        plain_index(b'g', name("/name/0/given/0")),
    ];
    if app.full_index
        && let Some(info) = app.fhir.type_info("Patient")
    {
        for (code, param) in &info.params {
            index.extend(param.index_keys(&p).iter().map(|k| plain_entry(code, k)));
        }
    }
    let body = serde_json::to_vec(&p).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let v = StoredVersion {
        resource_type: "Patient".into(),
        id,
        version: 1,
        last_updated_micros: now,
        key_name: "@plaintext".into(),
        key_version: 0,
        body: Some(Sealed::from_stored(body)),
        shredded: false,
        salt: Some([0; 16]),
        leaf: None,
        expunged: false,
    };
    Ok((v, index, p))
}

async fn create(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&app, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let result = tokio::task::spawn_blocking(move || {
        let p: Value = serde_json::from_str(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
        let (v, index, p) = prepare(&app, p)?;
        write_with(app.store.as_ref(), move |tx| {
            tx.put_version(&v, &index, BASELINE_LEAF).map(|_| ())
        })
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok::<_, StatusCode>(p)
    })
    .await;
    match result {
        Ok(Ok(p)) => fhir(StatusCode::CREATED, &p),
        Ok(Err(s)) => s.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn body_json(v: &StoredVersion) -> Option<Value> {
    v.body
        .as_ref()
        .and_then(|b| serde_json::from_slice(b.as_bytes()).ok())
}

async fn read(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&app, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Inline, as medvault does for reads by id (an id that cannot be one names nothing).
    let Ok(id) = ResourceId::new(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match app.store.version(&ResourceType::PATIENT, &id, None) {
        Ok(Some(v)) => match body_json(&v) {
            Some(p) => fhir(StatusCode::OK, &p),
            None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn search(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !authorized(&app, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // `family=` or `given=` (exact, normalized), as the bench asks.
    let clause = q.iter().find_map(|(k, v)| match k.as_str() {
        "family" => Some(plain_index(b'f', v)),
        "given" => Some(plain_index(b'g', v)),
        _ => None,
    });
    let Some(clause) = clause else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let count = q
        .iter()
        .find(|(k, _)| k == "_count")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(20);
    let result = tokio::task::spawn_blocking(move || {
        app.store.search(&IndexQuery {
            clauses: vec![vec![clause]],
            limit: count,
            ..IndexQuery::new(ResourceType::PATIENT)
        })
    })
    .await;
    match result {
        Ok(Ok(page)) => {
            let entries: Vec<Value> = page
                .rows
                .iter()
                .filter_map(body_json)
                .map(|r| json!({"resource": r}))
                .collect();
            fhir(
                StatusCode::OK,
                &json!({"resourceType": "Bundle", "type": "searchset", "total": page.total, "entry": entries}),
            )
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn transaction(State(app): State<App>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&app, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let result = tokio::task::spawn_blocking(move || {
        let b: Value = serde_json::from_str(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
        let mut rows = Vec::new();
        for e in b["entry"].as_array().ok_or(StatusCode::BAD_REQUEST)? {
            rows.push(prepare(&app, e["resource"].clone())?);
        }
        let ids: Vec<Value> = rows
            .iter()
            .map(|(v, _, _)| json!({"resource": {"id": v.id}}))
            .collect();
        write_with(app.store.as_ref(), move |tx| {
            for (v, index, _) in &rows {
                tx.put_version(v, index, BASELINE_LEAF)?;
            }
            Ok(())
        })
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok::<_, StatusCode>(
            json!({"resourceType": "Bundle", "type": "transaction-response", "entry": ids}),
        )
    })
    .await;
    match result {
        Ok(Ok(b)) => fhir(StatusCode::OK, &b),
        Ok(Err(s)) => s.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (db, listen, token, full_index) = match args.as_slice() {
        [_, db, listen, token] => (db, listen, token, false),
        [_, db, listen, token, flag] if flag == "--full-index" => (db, listen, token, true),
        _ => anyhow::bail!("usage: medvault-baseline DB_PATH 127.0.0.1:PORT TOKEN [--full-index]"),
    };
    let app = App {
        store: Arc::new(
            SqliteStore::open(std::path::Path::new(db)).context("opening the database")?,
        ),
        fhir: Arc::new(Fhir::load()?),
        token_hash: medvault_crypto::sha256(token.as_bytes()),
        full_index,
    };
    let router = Router::new()
        .route("/fhir/Patient", post(create).get(search))
        .route("/fhir/Patient/{id}", get(read))
        .route("/fhir", post(transaction))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
            axum::serve(listener, router).await?;
            Ok(())
        })
}
