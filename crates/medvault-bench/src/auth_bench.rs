//! Identity benchmarks (issue 4): login latency (password + TOTP, over HTTP, against the real
//! server with the real Argon2id cost) and the per-request cost of validating a bearer
//! credential (session and API token, from the validation cache a running server keeps).
//!
//! Usage: `medvault-auth-bench [USERS] [CONCURRENT_LOGINS]` (defaults 200 4). Every user logs in
//! once with a fresh TOTP code (a code is accepted once, so one login per user per step).
//! Prints one line per figure; `scripts/bench-auth` runs it in release mode.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

mod args;

use args::arg;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use medvault_auth::password::Password;
use medvault_auth::totp::{TotpSecret, code_at};
use medvault_core::Role;
use medvault_node::identity::bearer::validate_bearer;
use medvault_server::{AppState, ServerConfig};
use medvault_testkit::open_node;
use serde_json::{Value, json};

const PASSWORD: &str = "benchmark passphrase of some length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn post(client: &reqwest::Client, url: String, bearer: Option<&str>, body: Value) -> Value {
    let mut rb = client.post(url).json(&body);
    if let Some(b) = bearer {
        rb = rb.bearer_auth(b);
    }
    let r = rb.send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

fn main() {
    let users = usize::try_from(arg(1, 200)).unwrap();
    let concurrency = usize::try_from(arg(2, 4)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path());

    // Accounts, created as `medvault user create` does (policy check, Argon2id hash).
    let node = Arc::new(node);
    let started = Instant::now();
    let names: Vec<String> = (0..users).map(|i| format!("bench.user{i}")).collect();
    std::thread::scope(|s| {
        for part in names.chunks(users.div_ceil(2).max(1)) {
            let node = Arc::clone(&node);
            s.spawn(move || {
                for n in part {
                    medvault_node::identity::accounts::create_user(
                        &node,
                        n,
                        Role::Clinician,
                        medvault_node::identity::accounts::FhirUser::None,
                        &Password::new(PASSWORD),
                    )
                    .unwrap();
                }
            });
        }
    });
    println!(
        "created {users} accounts in {:.1} s (Argon2id m=19 MiB, t=2, p=1)",
        started.elapsed().as_secs_f64()
    );

    let node = Arc::try_unwrap(node).expect("no other owner");
    let config = ServerConfig {
        login_attempts_per_minute: u32::MAX,
        anonymous_requests_per_minute: u32::MAX,
        ..ServerConfig::default()
    };
    let state = AppState::new(node, config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(medvault_server::serve_listener(state.clone(), listener));
        let client = reqwest::Client::new();

        // Enrollment: password-only login, enroll, confirm with the current code.
        let mut secrets = Vec::with_capacity(users);
        for n in &names {
            let b = post(
                &client,
                format!("{base}/auth/login"),
                None,
                json!({"username": n, "password": PASSWORD}),
            )
            .await;
            let session = b["session"].as_str().unwrap().to_owned();
            let e = post(
                &client,
                format!("{base}/auth/totp/enroll"),
                Some(&session),
                json!({}),
            )
            .await;
            let secret = TotpSecret::from_base32(e["secret"].as_str().unwrap()).unwrap();
            let code = code_at("SHA1", 6, 30, secret.as_bytes(), now()).unwrap();
            post(
                &client,
                format!("{base}/auth/totp/confirm"),
                Some(&session),
                json!({"code": code}),
            )
            .await;
            secrets.push(secret);
        }

        // Logins: password + the next step's TOTP code, CONCURRENT at a time.
        let work: Vec<(String, TotpSecret)> = names.iter().cloned().zip(secrets).collect();
        let queue = Arc::new(tokio::sync::Mutex::new(work));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (queue, client, base) = (Arc::clone(&queue), client.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                let mut last = None;
                loop {
                    let Some((name, secret)) = queue.lock().await.pop() else {
                        break;
                    };
                    let code = code_at("SHA1", 6, 30, secret.as_bytes(), now() + 30).unwrap();
                    let t = Instant::now();
                    let r = client
                        .post(format!("{base}/auth/login"))
                        .json(&json!({"username": name, "password": PASSWORD, "totp": code}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status();
                    let body: Value = r.json().await.unwrap();
                    times.push(t.elapsed());
                    assert!(status.is_success(), "{status} {body}");
                    last = body["session"].as_str().map(str::to_owned);
                }
                (times, last)
            }));
        }
        let mut times = Vec::new();
        let mut session = None;
        for t in tasks {
            let (mut ts, s) = t.await.unwrap();
            times.append(&mut ts);
            session = session.or(s);
        }
        let took = started.elapsed().as_secs_f64();
        times.sort();
        println!(
            "login (password + TOTP), {concurrency} at a time: {} logins, {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            times.len(),
            times.len() as f64 / took,
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
        );

        // Validation of a credential on every request (cached, as on a running server).
        let session = session.unwrap();
        let (token, _) = medvault_node::identity::api_tokens::create_token(
            state.node.store.as_ref(),
            Role::Admin,
            state.node.clock.now_micros(),
            medvault_node::identity::api_tokens::TOKEN_DEFAULT_DAYS,
        )
        .unwrap();
        for (what, credential) in [("session", session.as_str()), ("API token", token.as_str())] {
            validate_bearer(&state.node, &state.auth, state.config.sessions, credential)
                .await
                .unwrap();
            let rounds = 200_000u32;
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(
                    validate_bearer(&state.node, &state.auth, state.config.sessions, credential)
                        .await
                        .unwrap(),
                );
            }
            println!(
                "bearer validation ({what}, cached): {:.2} µs per request",
                t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
            );
        }
    });
}
