//! `medvault serve --config FILE`: the server's settings in a TOML file, with
//! `MEDVAULT__SECTION__KEY` environment overrides. Flags (and the older single environment
//! variables such as `MEDVAULT_LISTEN`) win over both; the environment overrides win over the
//! file; the file wins over the built-in defaults.
//!
//! Every key is one `serve` flag ([`KEYS`]), so a value is checked by the same parser, with the
//! same ranges, as the flag it stands for, and `--help` documents both. An unknown section or key
//! is refused with its name and the keys that exist, never ignored: a misspelt
//! `session_idle_minutes` silently keeping the default would be a security setting lost.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// A config key: its section, its name, the `serve` argument it sets, and whether it is a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    /// `[section]`.
    pub(crate) section: &'static str,
    /// The key within the section.
    pub(crate) name: &'static str,
    /// The clap argument id (the field name of `Command::Serve`).
    pub(crate) arg: &'static str,
    /// A list (a TOML array; the flag is repeatable).
    pub(crate) list: bool,
    /// An on/off switch (a TOML boolean; the flag takes no value).
    pub(crate) switch: bool,
}

const fn key(section: &'static str, name: &'static str, arg: &'static str) -> Key {
    Key {
        section,
        name,
        arg,
        list: false,
        switch: false,
    }
}

/// A key whose flag has its own name (`server.listen` is `--listen`).
const fn same(section: &'static str, name: &'static str) -> Key {
    key(section, name, name)
}

const fn list(section: &'static str, name: &'static str, arg: &'static str) -> Key {
    Key {
        list: true,
        ..key(section, name, arg)
    }
}

const fn switch(section: &'static str, name: &'static str, arg: &'static str) -> Key {
    Key {
        switch: true,
        ..key(section, name, arg)
    }
}

/// Every key the file may hold (`docs/medvault.example.toml` documents each).
pub(crate) const KEYS: &[Key] = &[
    same("node", "data_dir"),
    same("node", "database"),
    same("server", "listen"),
    same("server", "base_url"),
    same("server", "max_body_bytes"),
    same("server", "request_timeout_seconds"),
    same("server", "log_format"),
    key("tls", "cert", "tls_cert"),
    key("tls", "key", "tls_key"),
    switch("tls", "dev_cert", "tls_dev_cert"),
    key("sessions", "idle_minutes", "session_idle_minutes"),
    key(
        "sessions",
        "admin_idle_minutes",
        "admin_session_idle_minutes",
    ),
    key("sessions", "max_hours", "session_max_hours"),
    same("sessions", "step_up_seconds"),
    same("sessions", "webauthn_origin"),
    list("access", "policies", "policies"),
    switch("access", "replace_default_policy", "replace_default_policy"),
    same("access", "break_glass_max_minutes"),
    list("clients", "trusted_proxies", "trusted_proxies"),
    key("clients", "address_header", "client_address_header"),
    same("clients", "anonymous_requests_per_minute"),
    same("clients", "anonymous_summary_seconds"),
    list("ledger", "witnesses", "witnesses"),
    list("ledger", "witness_for", "witness_for"),
    same("sharing", "peer_listen"),
    key("sentinel", "threshold", "sentinel_threshold"),
    same("sentinel", "playbooks"),
    switch("sentinel", "dry_run", "sentinel_dry_run"),
];

/// The prefix of an environment override: `MEDVAULT__SERVER__LISTEN=0.0.0.0:8080`.
pub(crate) const ENV_PREFIX: &str = "MEDVAULT__";

/// One setting from the file or the environment, and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    /// The key.
    pub(crate) key: Key,
    /// Its value(s), as the flag would be given them.
    pub(crate) values: Vec<String>,
    /// Where it came from: `FILE line N` or the environment variable's name.
    pub(crate) origin: String,
}

/// The settings of a config file and the environment, environment last (it wins).
#[derive(Debug, Default)]
pub(crate) struct Settings(BTreeMap<&'static str, Setting>);

fn sections() -> Vec<&'static str> {
    let mut s: Vec<_> = KEYS.iter().map(|k| k.section).collect();
    s.dedup();
    s
}

fn keys_of(section: &str) -> String {
    KEYS.iter()
        .filter(|k| k.section == section)
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn find(section: &str, name: &str, origin: &str) -> anyhow::Result<Key> {
    if !KEYS.iter().any(|k| k.section == section) {
        bail!(
            "{origin}: unknown section [{section}]: the sections are {}; see docs/medvault.example.toml",
            sections().join(", ")
        );
    }
    KEYS.iter()
        .copied()
        .find(|k| k.section == section && k.name == name)
        .with_context(|| {
            format!(
                "{origin}: unknown key `{section}.{name}`: the keys of [{section}] are {}; see docs/medvault.example.toml",
                keys_of(section)
            )
        })
}

/// A TOML value as flag values.
fn flag_values(key: Key, value: &toml::Value, origin: &str) -> anyhow::Result<Vec<String>> {
    let scalar = |v: &toml::Value| -> anyhow::Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) if key.switch => b.to_string(),
            _ => bail!(
                "{origin}: `{}.{}` must be {}",
                key.section,
                key.name,
                if key.switch {
                    "true or false"
                } else {
                    "a string or a number"
                }
            ),
        })
    };
    match value {
        toml::Value::Array(items) if key.list => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => bail!(
            "{origin}: `{}.{}` takes one value, not a list",
            key.section,
            key.name
        ),
        v => Ok(vec![scalar(v)?]),
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count())
        + 1
}

impl Settings {
    /// Reads `file` (if given) and then the `MEDVAULT__SECTION__KEY` variables of `env`.
    ///
    /// # Errors
    /// One line naming the file (and line) or the variable, the key, and the fix.
    pub(crate) fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut out = Self::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --config {}", path.display()))?;
            out.read_file(path, &text)?;
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let (section, key) = rest.split_once("__").with_context(|| {
                format!(
                    "{name}: name a key as {ENV_PREFIX}SECTION__KEY, e.g. MEDVAULT__SERVER__LISTEN"
                )
            })?;
            let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
            let k = find(&section, &key, &name)?;
            // A TOML value when it parses as one (numbers, booleans, [lists]); otherwise the
            // text as it is (an address, a URL, a path).
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| {
                    matches!(
                        v,
                        toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Array(_)
                    )
                })
                .unwrap_or(toml::Value::String(raw));
            let values = flag_values(k, &value, &name)?;
            out.set(k, values, name);
        }
        Ok(out)
    }

    fn read_file(&mut self, path: &Path, text: &str) -> anyhow::Result<()> {
        let shown = path.display();
        let doc: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(String::new(), |s| {
                format!(" line {}", line_of(text, s.start))
            });
            let why = e.message().trim().replace('\n', " ");
            anyhow::anyhow!("--config {shown}{line}: {why}")
        })?;
        for (section, table) in &doc {
            let origin = format!("--config {shown}");
            let toml::Value::Table(table) = table else {
                bail!(
                    "{origin}: `{section}` must be a [section]: the sections are {}",
                    sections().join(", ")
                );
            };
            for (name, value) in table {
                let k = find(section, name, &origin)?;
                // Where the key is, for messages about its value.
                let at = text
                    .find(&format!("\n{name}"))
                    .map_or(String::new(), |o| format!(" line {}", line_of(text, o + 1)));
                let origin = format!("--config {shown}{at}");
                let values = flag_values(k, value, &origin)?;
                self.set(k, values, origin);
            }
        }
        Ok(())
    }

    fn set(&mut self, key: Key, values: Vec<String>, origin: String) {
        self.0.insert(
            key.arg,
            Setting {
                key,
                values,
                origin,
            },
        );
    }

    /// The settings, by clap argument id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Setting> {
        self.0.values()
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The command line with the settings a flag did not give appended as flags, so clap checks
/// them exactly as it checks flags. `serve` is the subcommand whose matches are `serve`.
///
/// # Errors
/// A value its flag's parser refuses, named by where it came from.
pub(crate) fn with_settings(
    cmd: &clap::Command,
    serve: &clap::ArgMatches,
    mut argv: Vec<OsString>,
    settings: &Settings,
) -> anyhow::Result<Vec<OsString>> {
    let Some(serve_cmd) = cmd.find_subcommand("serve") else {
        return Ok(argv);
    };
    for s in settings.iter() {
        // A flag (or its own environment variable) on this command line wins.
        if matches!(
            serve.value_source(s.key.arg),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        ) {
            continue;
        }
        let Some(arg) = serve_cmd.get_arguments().find(|a| a.get_id() == s.key.arg) else {
            bail!("internal: config key {} has no flag", s.key.name);
        };
        let Some(long) = arg.get_long() else {
            bail!("internal: config key {} has no long flag", s.key.name);
        };
        if s.key.switch {
            match s.values.first().map(String::as_str) {
                Some("true") => argv.push(format!("--{long}").into()),
                Some("false") => {}
                _ => bail!(
                    "{}: `{}.{}` must be true or false",
                    s.origin,
                    s.key.section,
                    s.key.name
                ),
            }
            continue;
        }
        // The flag alone (without what it requires or conflicts with, which the full parse
        // checks), to check each value with the flag's own parser and name the key on failure.
        let alone = clap::Command::new("medvault-config")
            .no_binary_name(true)
            .arg(
                arg.clone()
                    .requires(clap::builder::Resettable::Reset)
                    .conflicts_with(clap::builder::Resettable::Reset)
                    .env(None)
                    .required(false),
            );
        for v in &s.values {
            if let Err(e) = alone
                .clone()
                .try_get_matches_from([format!("--{long}"), v.clone()])
            {
                let why = e.to_string();
                let why = why
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                bail!(
                    "{}: `{}.{}` = {v:?}: {why} (the key takes what --{long} takes; see `medvault serve --help`)",
                    s.origin,
                    s.key.section,
                    s.key.name
                );
            }
            argv.push(format!("--{long}").into());
            argv.push(v.into());
        }
    }
    Ok(argv)
}

/// The config file named by `--config` or `MEDVAULT_CONFIG`, if any.
pub(crate) fn path(serve: &clap::ArgMatches) -> Option<PathBuf> {
    serve.get_one::<PathBuf>("config").cloned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medvault.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(
            Some(&path),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    fn values(s: &Settings, arg: &str) -> Vec<String> {
        s.iter()
            .find(|x| x.key.arg == arg)
            .map(|x| x.values.clone())
            .unwrap_or_default()
    }

    #[test]
    fn the_documented_example_sets_every_key() {
        let text = include_str!("../../../docs/medvault.example.toml");
        // Every key appears in the example, commented out or not.
        for k in KEYS {
            assert!(
                text.contains(&format!("[{}]", k.section)),
                "section {} missing",
                k.section
            );
            assert!(
                text.contains(&format!("{} =", k.name)),
                "key {}.{} missing from the example",
                k.section,
                k.name
            );
        }
        let s = load(text, &[]).unwrap();
        assert!(!s.is_empty());
    }

    #[test]
    fn unknown_sections_and_keys_are_refused_by_name() {
        let e = load("[server]\nlistn = \"127.0.0.1:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `server.listn`"), "{e}");
        assert!(e.contains("listen, base_url"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let e = load("[sever]\nlisten = \"127.0.0.1:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown section [sever]"), "{e}");
        let e = load("", &[("MEDVAULT__SESSIONS__IDLE", "5")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("MEDVAULT__SESSIONS__IDLE: unknown key `sessions.idle`"),
            "{e}"
        );
        let e = load("listen = 1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("must be a [section]"), "{e}");
        let e = load("[server\n", &[]).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let s = load(
            "[server]\nlisten = \"127.0.0.1:1\"\n[ledger]\nwitness_for = [\"a\", \"b\"]\n",
            &[
                ("MEDVAULT__SERVER__LISTEN", "0.0.0.0:2"),
                ("MEDVAULT__SESSIONS__IDLE_MINUTES", "20"),
                ("MEDVAULT__TLS__DEV_CERT", "true"),
                ("MEDVAULT_LISTEN", "ignored: not a MEDVAULT__ override"),
            ],
        )
        .unwrap();
        assert_eq!(values(&s, "listen"), ["0.0.0.0:2"]);
        assert_eq!(values(&s, "session_idle_minutes"), ["20"]);
        assert_eq!(values(&s, "tls_dev_cert"), ["true"]);
        assert_eq!(values(&s, "witness_for"), ["a", "b"]);
        let e = load("[server]\nlisten = [\"a\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("takes one value"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }
}
