//! One node, several `medvault serve` processes, one PostgreSQL database (issue 6). These tests
//! run when `MEDVAULT_TEST_POSTGRES_URL` names a server (`.ci/run` sets it); otherwise each
//! says it skipped.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medvault_testkit::Server;
use medvault_testkit::e2e::send;
use medvault_testkit::fhir::patient;
use medvault_testkit::postgres::Scratch;
use serde_json::{Value, json};

use crate::MEDVAULT;

/// Starts `n` processes of one node on `url`: the first creates it, the others get a copy of
/// its key file in their own data directories.
fn processes(root: &Path, url: &str, n: usize) -> Vec<Server> {
    let env = [("MEDVAULT_DATABASE", url)];
    let first = MEDVAULT.launch(&root.join("p0"), &env, &[]);
    let mut all = vec![first];
    for i in 1..n {
        let dir = root.join(format!("p{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(all[0].dir.join("medvault.key"), dir.join("medvault.key")).unwrap();
        all.push(MEDVAULT.launch(&dir, &env, &[]));
    }
    all
}

/// The number after `label` in `ledger verify`'s summary (e.g. "records log 12 leaves").
fn figure(summary: &str, label: &str) -> u64 {
    let at = summary
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {summary}"));
    summary[at + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{label} in {summary}"))
}

#[test]
fn three_processes_under_concurrent_writes_lose_nothing_when_one_is_killed() {
    let Some(db) = Scratch::new("three_processes_under_concurrent_writes") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut procs = processes(tmp.path(), &db.url, 3);

    // A record everyone races to update with If-Match: exactly one writer wins each version.
    let contested = procs[0].create(&patient("Contested", "Record"));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let update_wins = Arc::new(Mutex::new(Vec::<u64>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let ports: Vec<u16> = procs.iter().map(|s| s.port).collect();
    let token = procs[0].token.clone();
    let mut workers = Vec::new();
    for w in 0..6 {
        let port = ports[w % 3];
        let (stop, acknowledged, update_wins, refused, token, contested) = (
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            Arc::clone(&update_wins),
            Arc::clone(&refused),
            token.clone(),
            contested.clone(),
        );
        workers.push(std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let base = format!("http://127.0.0.1:{port}/fhir");
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let body = patient(&format!("Load{w}x{n}"), "Concurrent");
                let sent = client
                    .post(format!("{base}/Patient"))
                    .bearer_auth(&token)
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send();
                // Only a 201 is an acknowledged write; a process killed mid-request
                // acknowledges nothing.
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        if let Ok(v) = r.json::<Value>() {
                            acknowledged
                                .lock()
                                .unwrap()
                                .push(v["id"].as_str().unwrap().to_owned());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // The process is gone: back off as a client (or load balancer) would.
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                }
                if n.is_multiple_of(4) {
                    let Ok(r) = client
                        .get(format!("{base}/Patient/{contested}"))
                        .bearer_auth(&token)
                        .send()
                    else {
                        continue;
                    };
                    let Ok(current) = r.json::<Value>() else {
                        continue;
                    };
                    let Some(version) = current["meta"]["versionId"].as_str() else {
                        continue;
                    };
                    let mut next = current.clone();
                    next["gender"] = json!(if n.is_multiple_of(8) {
                        "male"
                    } else {
                        "female"
                    });
                    let sent = client
                        .put(format!("{base}/Patient/{contested}"))
                        .bearer_auth(&token)
                        .header("content-type", "application/fhir+json")
                        .header("if-match", format!("W/\"{version}\""))
                        .body(next.to_string())
                        .send();
                    match sent.map(|r| (r.status().as_u16(), r.json::<Value>())) {
                        Ok((200, Ok(v))) => update_wins
                            .lock()
                            .unwrap()
                            .push(v["meta"]["versionId"].as_str().unwrap().parse().unwrap()),
                        Ok((412, _)) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(4));
    let before_kill = acknowledged.lock().unwrap().len();
    procs[2].kill9();
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        before_kill > 20,
        "the load ran: {before_kill} writes before the kill"
    );
    assert!(
        acknowledged.len() > before_kill + 20,
        "the surviving processes kept writing after the kill: {} then {}",
        before_kill,
        acknowledged.len()
    );

    eprintln!(
        "three processes: {before_kill} creates acknowledged before the kill, {} in all; \
         {} If-Match updates won, {} refused with 412",
        acknowledged.len(),
        update_wins.lock().unwrap().len(),
        refused.load(Ordering::SeqCst)
    );
    // Every acknowledged write is there, through either survivor.
    for (i, id) in acknowledged.iter().enumerate() {
        let (status, v) = procs[i % 2].get(&format!("Patient/{id}"));
        assert_eq!(status, 200, "acknowledged Patient/{id} lost: {v}");
    }
    // No lost update: each successful If-Match update made its own version, and the record's
    // history holds exactly those versions after the first.
    let mut wins = update_wins.lock().unwrap().clone();
    wins.sort_unstable();
    let distinct = {
        let mut d = wins.clone();
        d.dedup();
        d
    };
    assert_eq!(wins, distinct, "two updates claimed one version: {wins:?}");
    assert!(
        !wins.is_empty() && refused.load(Ordering::SeqCst) > 0,
        "the race happened: {} wins, {} refused with 412",
        wins.len(),
        refused.load(Ordering::SeqCst)
    );
    let (_, history) = procs[0].get(&format!("Patient/{contested}/_history?_count=1000"));
    let total = history["total"].as_u64().unwrap();
    assert!(
        total > wins.len() as u64,
        "history {total} vs {} acknowledged updates",
        wins.len()
    );
    let (_, current) = procs[1].get(&format!("Patient/{contested}"));
    assert_eq!(
        current["meta"]["versionId"].as_str().unwrap(),
        total.to_string(),
        "versions are gap-free"
    );

    // The logs are whole and single-ordered: verify recomputes both trees, every version and
    // audit record; the records log holds one leaf per version written.
    std::thread::sleep(Duration::from_secs(3)); // a checkpoint (every second) covering the load
    let summary = procs[1].verify_ledger();
    let (_, all) = procs[0].get("Patient?_summary=count");
    let versions = figure(&summary, "records log");
    assert!(
        versions >= all["total"].as_u64().unwrap() + total - 1,
        "{summary} vs {all}"
    );
    assert!(figure(&summary, "records log") >= acknowledged.len() as u64);
    // The killed process's node comes back on the same database and agrees.
    let dir = procs[2].dir.clone();
    let back = MEDVAULT.launch(&dir, &[("MEDVAULT_DATABASE", db.url.as_str())], &[]);
    let (status, _) = back.get(&format!("Patient/{}", acknowledged[0]));
    assert_eq!(status, 200);
}

/// A TCP proxy in front of PostgreSQL that the test can cut (every connection dropped, new ones
/// refused) and restore: a network outage between medvault and its database.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let live = Arc::new(Mutex::new(Vec::<TcpStream>::new()));
        let (flag, conns, upstream) = (Arc::clone(&up), Arc::clone(&live), upstream.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                {
                    let mut l = conns.lock().unwrap();
                    l.push(client.try_clone().unwrap());
                    l.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, up, live }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn losing_the_database_answers_503_writes_nothing_and_recovers() {
    let Some(db) = Scratch::new("losing_the_database_answers_503") else {
        return;
    };
    let proxy = Proxy::start(&db.server_address());
    let url = db.via(proxy.port);
    let tmp = tempfile::tempdir().unwrap();
    let s = MEDVAULT.launch(
        &tmp.path().join("data"),
        &[("MEDVAULT_DATABASE", &url)],
        &[],
    );
    let id = s.create(&patient("Outage", "Before"));

    proxy.cut();
    let (status, v) = s.get(&format!("Patient/{id}"));
    assert_eq!(status, 503, "read during the outage: {v}");
    assert_eq!(v["resourceType"], "OperationOutcome");
    assert_eq!(v["issue"][0]["code"], "transient", "{v}");
    let text = v.to_string();
    for leak in ["127.0.0.1", "postgres", "PostgreSQL", "connection"] {
        assert!(!text.contains(leak), "internal detail {leak:?} in {text}");
    }
    let (status, v) = s.put("Patient/written-during-outage", &patient("Never", "Stored"));
    assert_eq!(status, 503, "write during the outage: {v}");
    let (status, _) = s.post("Patient", &patient("Never", "Either"));
    assert_eq!(status, 503);
    let (status, _) = send(s.anonymous(reqwest::Method::GET, "/healthz"));
    assert_eq!(status, 200, "the process itself stays up");
    let (status, v) = send(s.anonymous(reqwest::Method::GET, "/readyz"));
    assert_eq!(status, 503, "not ready while the database is gone: {v}");
    assert_eq!(v["issue"][0]["code"], "transient", "{v}");

    proxy.restore();
    // The next requests reconnect by themselves.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = s.get(&format!("Patient/{id}"));
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = send(s.anonymous(reqwest::Method::GET, "/readyz"));
    assert_eq!(status, 200, "ready again");
    let (status, v) = s.get("Patient/written-during-outage");
    assert_eq!(status, 404, "nothing half-written: {v}");
    let (_, found) = s.get("Patient?family=never&_summary=count");
    assert_eq!(found["total"], 0, "{found}");
    let after = s.create(&patient("Outage", "After"));
    let (status, _) = s.get(&format!("Patient/{after}"));
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(3));
    s.verify_ledger();
}

#[test]
fn an_embedded_node_migrates_to_postgres_and_backs_up_from_there() {
    let Some(db) = Scratch::new("an_embedded_node_migrates_to_postgres") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut s = MEDVAULT.start_in(&dir, &[]);
    let (p1, _) = crate::backup::populated(&s);
    let before = crate::backup::answers(&s, &p1);
    s.stop();
    let d = dir.to_str().unwrap().to_owned();

    let (ok, out, err) = MEDVAULT.cli(&["migrate", "--from", &d, "--to", &db.url], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("ledger verified"), "{out}");
    assert!(
        !out.contains("postgres@"),
        "no credentials in output: {out}"
    );
    let (ok, _, err) = MEDVAULT.cli(&["migrate", "--from", &d, "--to", &db.url], &[]);
    assert!(
        !ok && err.contains("--force"),
        "the target holds a node now: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (ok, out, err) = MEDVAULT.cli(&["migrate", "--from", &d, "--to", &db.url, "--force"], &[]);
    assert!(ok, "{out}\n{err}");
    let (ok, _, err) = MEDVAULT.cli(&["migrate", "--from", &d, "--to", "mysql://x/y"], &[]);
    assert!(!ok && err.contains("postgres://"), "{err}");

    // The node now runs on PostgreSQL with the same answers, and goes on working.
    let env = [("MEDVAULT_DATABASE", db.url.as_str())];
    let pg = MEDVAULT.launch(&dir, &env, &[]);
    assert_eq!(crate::backup::answers(&pg, &p1), before);
    let added = pg.create(&patient("Migrated", "Later"));
    // The option works as well as the environment variable, on any command.
    let (ok, out, err) = MEDVAULT.cli(
        &["ledger", "verify", "--data-dir", &d, "--database", &db.url],
        &[],
    );
    assert!(ok && out.contains("ledger verified"), "{out}\n{err}");
    let (ok, _, err) = MEDVAULT.cli(
        &[
            "token",
            "create",
            "--data-dir",
            &d,
            "--role",
            "auditor",
            "--database",
            "postgres://127.0.0.1:1/none?connect_timeout=1",
        ],
        &[],
    );
    assert!(!ok, "an unreachable database fails the command");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("database unavailable"), "{err}");

    // A backup taken from PostgreSQL restores into the embedded default elsewhere.
    let file = tmp.path().join("pg.mvbk");
    let f = file.to_str().unwrap().to_owned();
    let (ok, out, err) = MEDVAULT.cli(&["backup", "--data-dir", &d, "--out", &f], &env);
    assert!(ok, "{out}\n{err}");
    let back = tmp.path().join("back");
    std::fs::create_dir_all(&back).unwrap();
    std::fs::copy(dir.join("medvault.key"), back.join("medvault.key")).unwrap();
    let b = back.to_str().unwrap().to_owned();
    let (ok, out, err) = MEDVAULT.cli(&["restore", "--data-dir", &b, &f], &[]);
    assert!(ok, "{out}\n{err}");
    let embedded = MEDVAULT.start_in(&back, &[]);
    assert_eq!(crate::backup::answers(&embedded, &p1), before);
    let (status, _) = embedded.get(&format!("Patient/{added}"));
    assert_eq!(status, 200);

    // And back into PostgreSQL, over the running node's schema only with --force.
    let (ok, _, err) = MEDVAULT.cli(&["restore", "--data-dir", &d, &f], &env);
    assert!(!ok && err.contains("--force"), "{err}");
}
