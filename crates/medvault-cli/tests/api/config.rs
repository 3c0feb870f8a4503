//! `medvault serve --config FILE` with `MEDVAULT__SECTION__KEY` overrides: the file sets what no
//! flag sets, the environment overrides the file, flags override both, and an unknown key or a
//! bad value stops the server with one line naming it.

use std::path::Path;

use medvault_testkit::e2e::write_file;
use medvault_testkit::fhir::patient;
use serde_json::{Value, json};

use crate::MEDVAULT;

#[test]
fn a_config_file_and_environment_overrides_set_what_flags_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_file(
        tmp.path(),
        "medvault.toml",
        "[server]\n\
         base_url = \"https://ehr.example/fhir\"\n\
         max_body_bytes = 1000000\n\
         # the flag --log-format json the test harness passes wins over this\n\
         log_format = \"text\"\n",
    );
    let dir = tmp.path().join("data");
    let s = MEDVAULT.launch(
        &dir,
        &[("MEDVAULT__SERVER__MAX_BODY_BYTES", "4096")],
        &["--config", config.to_str().unwrap()],
    );
    // From the file: links use the configured base URL.
    let r = send_raw(
        s.req(reqwest::Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .body(patient("Config", "File").to_string()),
    );
    assert_eq!(r.0, 201);
    assert!(
        r.1.starts_with("https://ehr.example/fhir/Patient/"),
        "Location {}",
        r.1
    );
    // From the environment, over the file's 1 000 000: a 5 kB body is too large.
    let mut big = patient("Config", "Env");
    big["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(5000))});
    let (status, body) = s.post("Patient", &big);
    assert_eq!(status, 413, "{body}");
    // The flag wins over the file: the log is JSON lines, not text.
    let log = std::fs::read_to_string(&s.log).unwrap();
    let json_lines = log
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["level"].is_string()))
        .count();
    assert!(json_lines > 0, "no JSON log lines");
    assert!(
        !log.lines()
            .any(|l| l.contains(" INFO ") || l.contains(" DEBUG ")),
        "text log lines"
    );
}

#[test]
fn unknown_keys_and_bad_values_stop_the_server_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let dir = dir.to_str().unwrap();
    let cases: [Case; 4] = [
        (
            "misspelt key",
            "[sessions]\nidle_minuts = 10\n",
            &[],
            "unknown key `sessions.idle_minuts`",
        ),
        (
            "out of range",
            "[sessions]\nidle_minutes = 45\n",
            &[],
            "`sessions.idle_minutes` = \"45\"",
        ),
        (
            "unknown section",
            "[sesions]\nidle_minutes = 10\n",
            &[],
            "unknown section [sesions]",
        ),
        (
            "unknown environment key",
            "",
            &[("MEDVAULT__SERVER__LISTN", "127.0.0.1:1")],
            "MEDVAULT__SERVER__LISTN: unknown key `server.listn`",
        ),
    ];
    for (what, text, env, expected) in cases {
        let config = write_file(tmp.path(), "c.toml", text);
        let (ok, _, err) = MEDVAULT.cli(
            &[
                "serve",
                "--data-dir",
                dir,
                "--config",
                config.to_str().unwrap(),
            ],
            env,
        );
        assert!(!ok, "{what}: started");
        assert!(err.contains(expected), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        // Nothing was created: the server stopped before opening the node.
        assert!(!Path::new(dir).exists(), "{what}: data directory created");
    }
}

/// (what, config text, environment, expected error).
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

/// (status, Location header).
fn send_raw(rb: reqwest::blocking::RequestBuilder) -> (u16, String) {
    let r = rb.send().unwrap();
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (r.status().as_u16(), loc)
}
