//! End-to-end tests: the real `medvault` binary, driven over HTTP and its CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod anonymous;
mod backup;
mod bad_input;
mod bundle;
mod cli;
mod config;
mod crud;
mod hardening;
mod identity;
mod ledger;
mod node_keys;
mod oauth_app;
mod policy;
mod postgres;
mod search;
mod security;
mod share;
mod tls;
mod tokens;
mod witness;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_medvault");

/// Runs the CLI; returns (exit ok, stdout, stderr).
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("MEDVAULT_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run medvault");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `medvault token create --data-dir DIR --role admin`.
pub fn token_create(dir: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    cli(
        &[
            "token",
            "create",
            "--data-dir",
            dir.to_str().unwrap(),
            "--role",
            "admin",
        ],
        env,
    )
}

pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub token: String,
    pub log: PathBuf,
    client: reqwest::blocking::Client,
    env: Vec<(String, String)>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server in a fresh temporary directory with extra `serve` arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Self::launch(&dir, &[], args);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::launch(dir, env, &[])
    }

    pub fn launch(dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> Self {
        let port = free_port();
        let log = dir.with_extension(format!("log-{port}"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .args(extra)
        .env_remove("MEDVAULT_PASSPHRASE")
        .env("MEDVAULT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn medvault serve");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client
                .get(format!("http://127.0.0.1:{port}/healthz"))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let env_owned: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (ok, out, err) = token_create(dir, env);
        assert!(ok, "token create failed: {err}");
        Self {
            child,
            port,
            dir: dir.to_owned(),
            _tmp: None,
            token: out.trim().to_owned(),
            log,
            client,
            env: env_owned,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/fhir/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        send(
            self.req(reqwest::Method::POST, path)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        send(
            self.req(reqwest::Method::PUT, path)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::DELETE, path))
    }

    /// Creates a resource and returns its id.
    pub fn create(&self, body: &Value) -> String {
        let rt = body["resourceType"].as_str().unwrap();
        let (status, v) = self.post(rt, body);
        assert_eq!(status, 201, "create {rt}: {v}");
        v["id"].as_str().unwrap().to_owned()
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli(args, &self.env_pairs())
    }

    /// The environment the server runs with, for CLI commands on its directory.
    pub fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the server gracefully (SIGTERM) and returns its log.
    pub fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET of a non-FHIR path (`/ledger/…`, `/witness/…`): status and raw body.
pub fn raw_get(s: &Server, path: &str) -> (u16, Vec<u8>) {
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{}{path}", s.port)).unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().unwrap().to_vec())
}

pub fn send(rb: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let resp = rb.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

pub fn patient(family: &str, given: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": "female", "birthDate": "1980-05-17"})
}

pub fn observation(patient_id: &str, code: &str, date: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": 7.2, "unit": "mmol/L"}
    })
}

/// Asserts an OperationOutcome with an error issue.
pub fn assert_outcome(v: &Value) {
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert!(v["issue"][0]["severity"] == "error", "{v}");
    assert!(
        !v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .is_empty()
    );
}

pub fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["search"]["mode"] != "outcome")
                .filter_map(|x| x["resource"]["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Gives the account `username` a Practitioner resource (created by the admin) and links them
/// with `medvault user link`; returns the Practitioner's id.
pub fn make_practitioner(s: &Server, username: &str) -> String {
    let practitioner = s.create(&json!({
        "resourceType": "Practitioner",
        "name": [{"family": "Practitioner", "given": [username]}],
    }));
    let dir = s.dir.to_str().unwrap().to_owned();
    let (ok, out, err) = s.cli(&[
        "user",
        "link",
        "--data-dir",
        &dir,
        username,
        "--practitioner",
        &practitioner,
    ]);
    assert!(ok && out.contains("linked"), "{out} {err}");
    practitioner
}

/// Puts `practitioner` on an active CareTeam of `patient` (created by the admin); returns the
/// CareTeam's id.
pub fn care_team(s: &Server, practitioner: &str, patient: &str) -> String {
    s.create(&json!({
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": format!("Patient/{patient}")},
        "participant": [{"member": {"reference": format!("Practitioner/{practitioner}")}}],
    }))
}
