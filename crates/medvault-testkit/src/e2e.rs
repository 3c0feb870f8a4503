//! The real `medvault` binary, driven over HTTP and its command line.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use medvault_ledger::{Checkpoint, Note, VerifierKey};
use serde_json::Value;

/// What a CLI run gives back: (exit status was success, stdout, stderr).
pub type CliOutput = (bool, String, String);

/// The `medvault` binary under test. Cargo tells only the CLI crate's own integration tests where
/// it is, so they name it once:
/// `const MEDVAULT: Medvault = Medvault::at(env!("CARGO_BIN_EXE_medvault"));`.
#[derive(Debug, Clone, Copy)]
pub struct Medvault {
    path: &'static str,
}

impl Medvault {
    /// The binary at `path`.
    pub const fn at(path: &'static str) -> Self {
        Self { path }
    }

    /// A command running the binary, without a key-file passphrase from the test's environment.
    pub fn command(self) -> Command {
        let mut cmd = Command::new(self.path);
        cmd.env_remove("MEDVAULT_PASSPHRASE");
        cmd
    }

    /// Runs the CLI with `args` and the environment `env`.
    pub fn cli(self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let out = self
            .command()
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run medvault");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `medvault token create --data-dir DIR --role admin`.
    pub fn token_create(self, dir: &Path, env: &[(&str, &str)]) -> CliOutput {
        self.cli(
            &[
                "token",
                "create",
                "--data-dir",
                path_str(dir),
                "--role",
                "admin",
            ],
            env,
        )
    }

    /// A server in a fresh temporary directory.
    pub fn start(self) -> Server {
        self.start_with(&[])
    }

    /// A server in a fresh temporary directory, with extra `serve` arguments.
    pub fn start_with(self, args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let dir = tmp.path().join("data");
        let mut s = self.launch(&dir, &[], args);
        s._tmp = Some(tmp);
        s
    }

    /// A server on the data directory `dir` (created if new) with the environment `env`.
    pub fn start_in(self, dir: &Path, env: &[(&str, &str)]) -> Server {
        self.launch(dir, env, &[])
    }

    /// Starts `medvault serve` on `dir` with `env` and the `extra` arguments, waits until it
    /// answers `/healthz`, and creates an admin API token with the CLI.
    pub fn launch(self, dir: &Path, env: &[(&str, &str)], extra: &[&str]) -> Server {
        let port = free_port();
        let log = dir.with_extension(format!("log-{port}"));
        let log_file = std::fs::File::create(&log).expect("create the server log");
        let child = self
            .command()
            .args([
                "serve",
                "--data-dir",
                path_str(dir),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "json",
            ])
            .args(extra)
            .env("MEDVAULT_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn medvault serve");
        let process = Running::new(child);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let health = format!("http://127.0.0.1:{port}/healthz");
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                client
                    .get(&health)
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            },
            || {
                format!(
                    "server did not start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        );
        let (ok, out, err) = self.token_create(dir, env);
        assert!(ok, "token create failed: {err}");
        Server {
            bin: self,
            process,
            port,
            dir: dir.to_owned(),
            _tmp: None,
            token: out.trim().to_owned(),
            log,
            client,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Running {
    child: Child,
}

impl Running {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Self {
        Self { child }
    }

    /// Kills the process at once (SIGKILL) and waits for it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill the process");
        self.child.wait().expect("wait for the process");
    }

    /// Asks the process to stop (SIGTERM), waits up to ten seconds, then kills it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .child
                .try_wait()
                .expect("the process's status")
                .is_some()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `medvault serve` process on a free loopback port, with an admin API token.
#[derive(Debug)]
pub struct Server {
    bin: Medvault,
    process: Running,
    /// The port it listens on (plain HTTP).
    pub port: u16,
    /// Its data directory.
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// An admin API token.
    pub token: String,
    /// The file its log (JSON lines) goes to.
    pub log: PathBuf,
    client: reqwest::blocking::Client,
    env: Vec<(String, String)>,
}

/// A free TCP port on 127.0.0.1, never the same twice in one test process: a port is free
/// when it is picked, not necessarily when its server binds it, and two tests starting at once
/// could be given the same one (the second server then fails to bind, and its test talks to the
/// first: a CI run once failed that way, or so it looked, with "the bearer token is not valid"
/// on a test's first request).
#[must_use]
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if GIVEN.lock().expect("the port set").insert(port) {
            return port;
        }
    }
}

/// Waits until `done` holds, checking every `every`; fails with `why()` once `within` has passed.
pub fn eventually(
    within: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
    why: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(every);
    }
}

/// `path` as UTF-8 (test paths always are).
#[must_use]
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Copies the files (not the subdirectories) of `from` into `to`, which is created.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for e in std::fs::read_dir(from).expect("read the directory") {
        let p = e.expect("a directory entry").path();
        if p.is_file() {
            let name = p.file_name().expect("a file name");
            std::fs::copy(&p, to.join(name)).expect("copy a file");
        }
    }
}

/// Writes `contents` to the file `name` in `dir`; its path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write the file");
    path
}

/// Sends `rb`; returns the status and the body: JSON if it parses, else the text as a string
/// (`null` when empty).
pub fn send(rb: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let resp = rb.send().expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().expect("the response body");
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

impl Server {
    /// The binary this server runs.
    pub fn bin(&self) -> Medvault {
        self.bin
    }

    /// `http://127.0.0.1:PORT` followed by `path` (from the server's root).
    pub fn at(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The URL of a FHIR `path` (relative to `/fhir/`).
    pub fn url(&self, path: &str) -> String {
        self.at(&format!("/fhir/{}", path.trim_start_matches('/')))
    }

    /// The audience apps name: the FHIR base URL.
    pub fn aud(&self) -> String {
        self.at("/fhir")
    }

    /// A FHIR request as the admin token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// A request to `path` (from the server's root) with no credential.
    pub fn anonymous(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::blocking::RequestBuilder {
        self.client.request(method, self.at(path))
    }

    /// FHIR GET as the admin.
    pub fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path))
    }

    /// FHIR POST of `body` as the admin.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.write(reqwest::Method::POST, path, body)
    }

    /// FHIR PUT of `body` as the admin.
    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.write(reqwest::Method::PUT, path, body)
    }

    fn write(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        send(
            self.req(method, path)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
    }

    /// FHIR POST of a raw `body` with `content_type`, as the admin.
    pub fn post_raw(&self, path: &str, content_type: &str, body: String) -> (u16, Value) {
        send(
            self.req(reqwest::Method::POST, path)
                .header("content-type", content_type)
                .body(body),
        )
    }

    /// FHIR DELETE as the admin.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::DELETE, path))
    }

    /// Creates a resource as the admin and returns its id.
    pub fn create(&self, body: &Value) -> String {
        let rt = body["resourceType"].as_str().expect("a resourceType");
        let (status, v) = self.post(rt, body);
        assert_eq!(status, 201, "create {rt}: {v}");
        v["id"].as_str().expect("the new resource's id").to_owned()
    }

    /// Creates a resource as the admin, reads it back (which must answer 200) and returns its id
    /// and what the read answered.
    pub fn create_and_read(&self, body: &Value) -> (String, Value) {
        let id = self.create(body);
        let path = format!("{}/{id}", body["resourceType"].as_str().unwrap_or_default());
        let (status, stored) = self.get(&path);
        assert_eq!(status, 200, "read back {path}: {stored}");
        (id, stored)
    }

    /// Creates a [`patient`](crate::fhir::patient) for each (family, given) name as the admin;
    /// their ids.
    pub fn create_patients<const N: usize>(&self, names: [(&str, &str); N]) -> [String; N] {
        names.map(|(family, given)| self.create(&crate::fhir::patient(family, given)))
    }

    /// A request to `path` (from the server's root) as `bearer`, declaring `purpose` when given,
    /// with `body` as FHIR JSON when given.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        purpose: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut rb = self.anonymous(method, path).bearer_auth(bearer);
        if let Some(p) = purpose {
            rb = rb.header("x-purpose-of-use", p);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        send(rb)
    }

    /// The status of a GET of `path` (from the server's root) as `bearer`.
    pub fn status_as(&self, path: &str, bearer: &str) -> u16 {
        self.get_as(path, bearer, None).0
    }

    /// Asserts the status of a GET of each path (from the server's root) as `bearer`, in order.
    pub fn assert_statuses_as<P: AsRef<str>>(
        &self,
        bearer: &str,
        expected: impl IntoIterator<Item = (P, u16)>,
    ) {
        for (path, status) in expected {
            let path = path.as_ref();
            assert_eq!(self.status_as(path, bearer), status, "GET {path}");
        }
    }

    /// GET `path` (from the server's root) as `bearer`, declaring `purpose` when given.
    pub fn get_as(&self, path: &str, bearer: &str, purpose: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, bearer, purpose, None)
    }

    /// POST of FHIR `body` to `path` (from the server's root) as `bearer`.
    pub fn post_as(&self, path: &str, bearer: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, bearer, None, Some(body))
    }

    /// POST of a plain JSON `body` (the `/auth`, `/admin` and `/privacy` endpoints) to `path` as
    /// `bearer`, or with no credential.
    pub fn post_json(&self, path: &str, bearer: Option<&str>, body: &Value) -> (u16, Value) {
        let mut rb = self.anonymous(reqwest::Method::POST, path).json(body);
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        send(rb)
    }

    /// POST of an HTML form (the OAuth token endpoints) to `path`, with no credential.
    pub fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
        send(self.anonymous(reqwest::Method::POST, path).form(pairs))
    }

    /// GET of a non-FHIR `path` (`/ledger/…`, `/witness/…`) with no credential: status and raw
    /// body.
    pub fn raw_get(&self, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .anonymous(reqwest::Method::GET, path)
            .send()
            .expect("request");
        let status = r.status().as_u16();
        (status, r.bytes().expect("the response body").to_vec())
    }

    /// The CLI with `args`, in the server's environment.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        self.bin.cli(args, &self.env_pairs())
    }

    /// A CLI command on the server's data directory: `args` then `--data-dir DIR`, in the
    /// server's environment.
    pub fn run(&self, args: &[&str]) -> CliOutput {
        let mut all = args.to_vec();
        all.extend(["--data-dir", path_str(&self.dir)]);
        self.cli(&all)
    }

    /// `medvault ledger verify` on the server's data directory, which must pass; its report.
    pub fn verify_ledger(&self) -> String {
        let (ok, out, err) = self.run(&["ledger", "verify"]);
        assert!(ok, "ledger verify failed: {out} {err}");
        out
    }

    /// A new API token for `role`, made with the CLI.
    pub fn new_token(&self, role: &str) -> String {
        let (ok, out, err) = self.run(&["token", "create", "--role", role]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    }

    /// The environment the server runs with, for CLI commands on its directory.
    pub fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// Kills the server at once (SIGKILL).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Stops the server gracefully (SIGTERM) and returns its log.
    pub fn stop(&mut self) -> String {
        self.process.stop();
        let mut s = String::new();
        std::fs::File::open(&self.log)
            .and_then(|mut f| f.read_to_string(&mut s))
            .expect("read the server log");
        s
    }

    /// Waits until a checkpoint of `log` (`records` or `access`) covers at least `size` leaves;
    /// returns it, its signature verified with the log's published key.
    pub fn checkpoint_covering(&self, log: &str, size: u64) -> Checkpoint {
        let (_, key) = self.raw_get(&format!("/ledger/{log}/key"));
        let vkey = VerifierKey::parse_vkey(std::str::from_utf8(&key).expect("a UTF-8 key"))
            .expect("the log's verifier key");
        assert!(vkey.name.ends_with(&format!("/{log}")), "{}", vkey.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.raw_get(&format!("/ledger/{log}/checkpoint"));
            if status == 200 {
                let note = Note::parse(&body).expect("a signed note");
                vkey.verify(&note).expect("the checkpoint's signature");
                let cp = Checkpoint::parse(&note.text).expect("a checkpoint");
                assert_eq!(cp.origin, vkey.name);
                if cp.size >= size {
                    return cp;
                }
            }
            assert!(Instant::now() < deadline, "no checkpoint covering {size}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The consistency proof of the access log from `old` to `new` leaves, as served.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Vec<[u8; 32]> {
        let (st, body) = self.raw_get(&format!(
            "/ledger/access/proof/consistency?old={old}&new={new}"
        ));
        assert_eq!(st, 200);
        let v: Value = serde_json::from_slice(&body).expect("a JSON proof");
        proof_hashes(&v["proof"])
    }
}

/// A proof's hashes (a JSON array of base64 strings).
#[must_use]
pub fn proof_hashes(v: &Value) -> Vec<[u8; 32]> {
    v.as_array()
        .expect("an array of hashes")
        .iter()
        .map(|h| {
            base64::engine::general_purpose::STANDARD
                .decode(h.as_str().expect("a base64 hash"))
                .expect("base64")
                .try_into()
                .expect("32 bytes")
        })
        .collect()
}
