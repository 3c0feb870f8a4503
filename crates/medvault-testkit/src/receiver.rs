//! A plain HTTP receiver on loopback that collects the JSON bodies POSTed to it: a
//! Subscription's rest-hook endpoint, a Sentinel playbook's webhook.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Collects the JSON bodies POSTed to it (answering 200), on a loopback port.
pub struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Value>>>,
    /// Each request's `X-Medvault-Signature` header (if any) and raw body.
    raw: Arc<Mutex<Vec<Raw>>>,
}

/// A request's `X-Medvault-Signature` header (if it had one) and raw body.
pub type Raw = (Option<String>, Vec<u8>);

impl Receiver {
    /// Listens on a loopback port.
    #[must_use]
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let got: Arc<Mutex<Vec<Value>>> = Arc::default();
        let raw: Arc<Mutex<Vec<Raw>>> = Arc::default();
        let sink = Arc::clone(&got);
        let raw_sink = Arc::clone(&raw);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
                let mut length = 0usize;
                let mut signature = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("x-medvault-signature:") {
                        signature = line.split_once(':').map(|(_, v)| v.trim().to_owned());
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                raw_sink
                    .lock()
                    .expect("the sink")
                    .push((signature, body.clone()));
                if let Ok(v) = serde_json::from_slice(&body) {
                    sink.lock().expect("the sink").push(v);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Self { port, got, raw }
    }

    /// Each request's `X-Medvault-Signature` header (if it had one) and raw body, so far.
    #[must_use]
    pub fn raw(&self) -> Vec<Raw> {
        self.raw.lock().expect("the sink").clone()
    }

    /// `http://127.0.0.1:PORT/hook`.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The bodies that arrived so far.
    #[must_use]
    pub fn got(&self) -> Vec<Value> {
        self.got.lock().expect("the sink").clone()
    }

    /// Waits (up to 20 seconds) until `n` bodies arrived; all of them.
    ///
    /// # Panics
    /// When they do not arrive.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let got = self.got.lock().expect("the sink").clone();
            if got.len() >= n {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{n} requests did not arrive: {:?}",
            self.got.lock().expect("the sink")
        );
    }
}
