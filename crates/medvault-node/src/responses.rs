//! Sentinel's responses: playbooks that act on alerts by themselves, what is in force, and
//! undoing it.
//!
//! A playbook names the alerts it answers (`sentinel` for an insider score, optionally above a
//! higher `min_score`, or attack kinds such as `mass-deletion`) and the actions to take:
//!
//! - `step-up`: the user's credentials issued before the alert are refused with RFC 9470's
//!   `insufficient_user_authentication` until they sign in again with a second factor;
//! - `end-sessions`: their sessions are deleted and every credential issued before is refused;
//! - `lock`: the account is locked pending review (sign-ins refused, credentials refused);
//! - `throttle`: at most `throttle_per_minute` requests a minute from the user, app or address;
//! - `webhook`: the alert's summary (ids, kind, reasons; no PHI) is POSTed to a URL.
//!
//! Each action is a [`ResponseRow`] written in the same transaction as its alert, and an
//! access-log entry. What is in force is kept in memory ([`Enforcement`]), checked on every
//! request, and reloaded from the database every second (other processes, undos). In dry-run
//! mode the rows are written and logged but nothing is enforced. A response to an alert raised
//! by break-glass access never blocks (only `step-up` and `webhook` run) unless the playbook
//! says `block_break_glass`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use medvault_store::{ResponseRow, write_with};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{AuditKind, AuditOutcome, AuditRecord};
use crate::error::Error;
use crate::identity::Authenticated;
use crate::node::Node;

/// What a playbook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Act {
    StepUp,
    EndSessions,
    Lock,
    Throttle,
    Webhook,
}

impl Act {
    /// The action's name in playbooks, rows and the access log.
    pub fn name(self) -> &'static str {
        match self {
            Self::StepUp => "step-up",
            Self::EndSessions => "end-sessions",
            Self::Lock => "lock",
            Self::Throttle => "throttle",
            Self::Webhook => "webhook",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [
            Self::StepUp,
            Self::EndSessions,
            Self::Lock,
            Self::Throttle,
            Self::Webhook,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// True for actions that keep someone from working (not allowed on break-glass alerts
    /// unless the playbook says so).
    fn blocks(self) -> bool {
        matches!(self, Self::EndSessions | Self::Lock | Self::Throttle)
    }
}

fn default_per_minute() -> u32 {
    30
}

fn default_minutes() -> u32 {
    60
}

/// One playbook.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// A name for the access log and the officer.
    pub name: String,
    /// Alert kinds it answers: `sentinel`, or attack kinds (`credential-stuffing`, …), or
    /// `attack` for every attack kind.
    pub on: Vec<String>,
    /// For `sentinel` alerts: only scores at or above this.
    #[serde(default)]
    pub min_score: Option<f64>,
    /// What to do.
    pub actions: Vec<Act>,
    /// For `throttle`: requests a minute.
    #[serde(default = "default_per_minute")]
    pub throttle_per_minute: u32,
    /// How long `throttle` lasts (`lock` lasts until undone; `step-up` and `end-sessions`
    /// until every credential from before them has expired).
    #[serde(default = "default_minutes")]
    pub minutes: u32,
    /// For `webhook`: where to POST.
    #[serde(default)]
    pub webhook: Option<String>,
    /// For `webhook`: the environment variable holding the secret the calls are signed with
    /// (`X-Medvault-Signature: t=UNIX,v1=HEX`, HMAC-SHA256 of `t.body`).
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// The secret itself, read from the environment when the playbooks are loaded.
    #[serde(skip)]
    pub webhook_secret: Option<WebhookSecret>,
    /// Block (end sessions, lock, throttle) even when the alert came from break-glass access.
    #[serde(default)]
    pub block_break_glass: bool,
}

impl Playbook {
    /// A playbook answering alerts of the kinds `on` with `actions`, every other setting at
    /// its default (as a file that names only these would give).
    pub fn new(name: &str, on: &[&str], actions: &[Act]) -> Self {
        Self {
            name: name.to_owned(),
            on: on.iter().map(|s| (*s).to_owned()).collect(),
            min_score: None,
            actions: actions.to_vec(),
            throttle_per_minute: default_per_minute(),
            minutes: default_minutes(),
            webhook: None,
            webhook_secret_env: None,
            webhook_secret: None,
            block_break_glass: false,
        }
    }
}

/// A webhook's signing secret: zeroized when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// The shortest webhook secret accepted.
pub const MIN_WEBHOOK_SECRET: usize = 16;

/// A playbooks file: `[[playbook]]` tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    #[serde(default)]
    pub playbook: Vec<Playbook>,
}

/// The playbooks in force and how they run.
#[derive(Debug, Clone)]
pub struct Playbooks {
    pub list: Vec<Playbook>,
    /// Record what would have been done, do nothing.
    pub dry_run: bool,
    /// The longest a session lives (an `end-sessions` or `step-up` response is kept that long:
    /// every credential it refuses has expired by then).
    pub session_max_micros: i64,
}

impl Playbooks {
    /// The playbooks a node runs when its configuration names none: sign-in attacks from
    /// outside are throttled by address, a stuffed login's sessions are ended and a second
    /// factor asked for, ransomware-like mass deletion locks the credential. Insider alerts,
    /// mass updates (an integration's busy hour), bulk reading, id scanning and bursts of
    /// refusals wait for the privacy officer (an integration or a confused colleague must not
    /// be cut off by a default).
    pub fn defaults() -> Vec<Playbook> {
        let book = |name: &str, on: &[&str], actions: &[Act]| Playbook {
            throttle_per_minute: 10,
            minutes: 60,
            ..Playbook::new(name, on, actions)
        };
        vec![
            book(
                "sign-in-attack",
                &["credential-stuffing", "password-spraying"],
                &[Act::Throttle],
            ),
            book(
                "stuffed-login",
                &["login-after-stuffing"],
                &[Act::EndSessions, Act::StepUp],
            ),
            book(
                "ransomware",
                &["mass-deletion"],
                &[Act::Lock, Act::EndSessions],
            ),
        ]
    }

    /// Reads each playbook's webhook secret from the environment variable it names (`env`
    /// looks one up).
    ///
    /// # Errors
    /// A message naming the playbook and the variable when it is unset or too short.
    pub fn resolve_secrets(
        list: &mut [Playbook],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        for p in list {
            let Some(var) = &p.webhook_secret_env else {
                continue;
            };
            let secret = env(var).filter(|s| s.len() >= MIN_WEBHOOK_SECRET).ok_or_else(|| {
                format!(
                    "playbook `{}`: webhook_secret_env names {var}, which is not set to a secret of {MIN_WEBHOOK_SECRET} bytes or more",
                    p.name
                )
            })?;
            p.webhook_secret = Some(WebhookSecret(zeroize::Zeroizing::new(secret.into_bytes())));
        }
        Ok(())
    }

    /// Checks every playbook: known kinds, actions that fit, a webhook URL where one is used.
    ///
    /// # Errors
    /// A message naming the playbook and what is wrong.
    pub fn validate(list: &[Playbook]) -> Result<(), String> {
        for p in list {
            let name = &p.name;
            if p.on.is_empty() || p.actions.is_empty() {
                return Err(format!(
                    "playbook `{name}`: `on` and `actions` must each name at least one"
                ));
            }
            for kind in &p.on {
                if kind != crate::sentinel::ALERT_KIND
                    && kind != "attack"
                    && medvault_sentinel::AttackKind::parse(kind).is_none()
                {
                    let kinds: Vec<&str> = medvault_sentinel::attacks::KINDS
                        .iter()
                        .map(|k| k.name())
                        .collect();
                    return Err(format!(
                        "playbook `{name}`: unknown alert kind `{kind}`: the kinds are sentinel, attack, {}",
                        kinds.join(", ")
                    ));
                }
            }
            if let Some(s) = p.min_score
                && !(0.0..=1.0).contains(&s)
            {
                return Err(format!(
                    "playbook `{name}`: min_score must be between 0 and 1"
                ));
            }
            if p.actions.contains(&Act::Throttle) && p.throttle_per_minute == 0 {
                return Err(format!(
                    "playbook `{name}`: throttle_per_minute must be at least 1"
                ));
            }
            if p.minutes == 0 {
                return Err(format!("playbook `{name}`: minutes must be at least 1"));
            }
            match (&p.webhook, p.actions.contains(&Act::Webhook)) {
                (None, true) => {
                    return Err(format!(
                        "playbook `{name}`: the webhook action needs `webhook = \"https://…\"`"
                    ));
                }
                (Some(url), _) => {
                    let parsed = reqwest::Url::parse(url)
                        .map_err(|e| format!("playbook `{name}`: webhook `{url}`: {e}"))?;
                    if !matches!(parsed.scheme(), "https" | "http") {
                        return Err(format!(
                            "playbook `{name}`: webhook `{url}` must be an http(s) URL"
                        ));
                    }
                }
                (None, false) => {}
            }
        }
        Ok(())
    }
}

/// What an alert says that a playbook needs.
#[derive(Debug, Clone)]
pub struct Raised {
    pub alert_id: String,
    /// `sentinel` or an attack kind.
    pub kind: String,
    pub score: Option<f64>,
    pub user: Option<String>,
    pub address: Option<String>,
    pub client: Option<String>,
    /// The alert came from break-glass access.
    pub break_glass: bool,
    /// The alert's summary for a webhook (no PHI).
    pub summary: Value,
    /// When, seconds.
    pub time: i64,
}

/// The responses the playbooks give `alert`, decided at `now` (microseconds), numbered from
/// `alert`'s id.
pub fn plan(books: &Playbooks, alert: &Raised, now: i64) -> Vec<ResponseRow> {
    let mut out: Vec<ResponseRow> = Vec::new();
    for p in &books.list {
        let answers = p.on.iter().any(|k| {
            *k == alert.kind || (k == "attack" && alert.kind != crate::sentinel::ALERT_KIND)
        });
        if !answers
            || p.min_score
                .is_some_and(|m| alert.score.is_none_or(|s| s < m))
        {
            continue;
        }
        for act in &p.actions {
            if alert.break_glass && act.blocks() && !p.block_break_glass {
                continue;
            }
            let subject = match act {
                Act::StepUp | Act::EndSessions | Act::Lock => match &alert.user {
                    Some(u) => format!("user:{u}"),
                    None => continue,
                },
                Act::Throttle => match (&alert.user, &alert.client, &alert.address) {
                    (Some(u), _, _) => format!("user:{u}"),
                    (None, Some(c), _) => format!("client:{c}"),
                    (None, None, Some(a)) => format!("address:{a}"),
                    (None, None, None) => continue,
                },
                Act::Webhook => "node".to_owned(),
            };
            // Two playbooks asking the same of the same subject: once.
            if out
                .iter()
                .any(|r| r.action == act.name() && r.subject == subject)
            {
                continue;
            }
            let until = match act {
                Act::Lock | Act::Webhook => None,
                Act::Throttle => Some(now + i64::from(p.minutes) * 60_000_000),
                Act::StepUp | Act::EndSessions => Some(now + books.session_max_micros),
            };
            let mut detail = json!({"playbook": p.name, "alert_kind": alert.kind});
            match act {
                Act::Throttle => detail["per_minute"] = json!(p.throttle_per_minute),
                Act::Webhook => detail["url"] = json!(p.webhook),
                _ => {}
            }
            out.push(ResponseRow {
                id: format!(
                    "rsp_{}_{}",
                    alert.alert_id.trim_start_matches("alr_"),
                    out.len()
                ),
                alert_id: alert.alert_id.clone(),
                action: act.name().to_owned(),
                subject,
                at_micros: now,
                until_micros: until,
                dry_run: books.dry_run,
                detail: detail.to_string(),
                undone_by: None,
                undone_micros: None,
            });
        }
    }
    out
}

/// Why [`Enforcement`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The account is locked pending review.
    Locked,
    /// The credential was issued before its sessions were ended.
    Ended,
    /// A fresh sign-in with a second factor is needed (RFC 9470), no older than `max_age`
    /// seconds.
    StepUp { max_age: u64 },
    /// Over the throttle: retry after this many seconds.
    Throttled { retry_after: u64 },
}

impl Refused {
    /// The rule's name for the access log.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Locked => "sentinel-lock",
            Self::Ended => "sentinel-end-sessions",
            Self::StepUp { .. } => "sentinel-step-up",
            Self::Throttled { .. } => "sentinel-throttle",
        }
    }

    /// The refusal as an error (401, or 429 for a throttle); the server adds the challenge or
    /// `Retry-After`.
    pub fn into_error(self) -> Error {
        use crate::error::{ErrorKind, IssueCode};
        let rule = self.rule();
        match self {
            Self::Locked => Error::new(
                ErrorKind::Unauthenticated,
                IssueCode::Login,
                "this account is locked pending review by the privacy office",
            ),
            Self::Ended => Error::new(
                ErrorKind::Unauthenticated,
                IssueCode::Login,
                "this session was ended by the node's security monitoring: log in again",
            ),
            Self::StepUp { .. } => Error::new(
                ErrorKind::Unauthenticated,
                IssueCode::Login,
                "sign in again with a second factor (password and authenticator code, or a passkey) to continue",
            ),
            Self::Throttled { .. } => Error::new(
                ErrorKind::Throttled,
                IssueCode::Throttled,
                "too many requests: this account or address is being throttled; wait a minute",
            ),
        }
        .denied_by(rule)
    }
}

/// How long a response put in force here outlives a reload that does not list it yet.
const RECENT_MICROS: i64 = 5_000_000;

#[derive(Debug, Clone)]
struct Active {
    id: String,
    act: Act,
    at: i64,
    until: Option<i64>,
    per_minute: u32,
}

#[derive(Debug, Default)]
struct State {
    by_subject: HashMap<String, Vec<Active>>,
    /// Requests counted this minute, by subject: (minute, count).
    counts: HashMap<String, (i64, u32)>,
}

/// The responses in force, checked on every request.
#[derive(Debug, Default)]
pub struct Enforcement {
    /// False while nothing is in force: the check is one atomic load.
    any: AtomicBool,
    state: Mutex<State>,
    /// Subjects whose responses a person undid here since the watcher last looked (its attack
    /// rules forget them, so their next attack is a new one).
    undone: Mutex<Vec<String>>,
    /// The first access-log leaf this process's watcher has not scored yet, and whether one
    /// is running (deletions past a checkpoint wait for it: [`Enforcement::note_deletion`]).
    scored_to: std::sync::atomic::AtomicU64,
    watching: AtomicBool,
    /// Deletions by credential in the current ten-minute window: (window, count).
    deletions: Mutex<HashMap<String, (i64, u32)>>,
}

/// Past this many deletions by one credential in ten minutes (Sentinel's mass-deletion
/// limit), every [`DELETION_STEP`]th waits until Sentinel has scored the log as it stands, so
/// a credential deleting as fast as it can on many connections is stopped within a few steps
/// of the limit, not hundreds later.
pub const DELETION_CHECKPOINT: u32 = 25;
/// See [`DELETION_CHECKPOINT`].
pub const DELETION_STEP: u32 = 5;

impl Enforcement {
    /// What is in force per the database at `now` (microseconds).
    ///
    /// # Errors
    /// Store failures.
    pub fn load(node: &Node) -> Result<Self, Error> {
        let e = Self::default();
        e.reload(node)?;
        Ok(e)
    }

    /// Replaces what is in force with the database's (other processes' responses, undos).
    ///
    /// # Errors
    /// Store failures.
    pub fn reload(&self, node: &Node) -> Result<(), Error> {
        let now = node.clock.now_micros();
        let rows = node.store.active_responses(now)?;
        let mut by_subject: HashMap<String, Vec<Active>> = HashMap::new();
        for r in &rows {
            if let Some(a) = active(r) {
                by_subject.entry(r.subject.clone()).or_default().push(a);
            }
        }
        if let Ok(mut s) = self.state.lock() {
            // Responses this process put in force in the last seconds may not have been
            // visible to the read above: they stay.
            for (subject, list) in &s.by_subject {
                for a in list.iter().filter(|a| now - a.at < RECENT_MICROS) {
                    let kept = by_subject.entry(subject.clone()).or_default();
                    if !kept.iter().any(|k| k.id == a.id) {
                        kept.push(a.clone());
                    }
                }
            }
            self.any.store(!by_subject.is_empty(), Ordering::Release);
            let State {
                by_subject: kept,
                counts,
            } = &mut *s;
            *kept = by_subject;
            counts.retain(|k, _| kept.contains_key(k));
        }
        Ok(())
    }

    /// Puts responses just carried out in force (this process, without waiting for a reload).
    pub fn add(&self, rows: &[ResponseRow]) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        for r in rows
            .iter()
            .filter(|r| !r.dry_run && r.undone_micros.is_none())
        {
            if let Some(a) = active(r) {
                let list = s.by_subject.entry(r.subject.clone()).or_default();
                if !list.iter().any(|x| x.id == a.id) {
                    list.push(a);
                }
                self.any.store(true, Ordering::Release);
            }
        }
    }

    /// Records that the watcher has scored every leaf below `next` (and that it runs).
    pub fn scored(&self, next: u64) {
        self.watching.store(true, Ordering::Release);
        self.scored_to.store(next, Ordering::Release);
    }

    /// The first leaf the watcher has not scored, if a watcher runs in this process.
    pub fn scored_to(&self) -> Option<u64> {
        self.watching
            .load(Ordering::Acquire)
            .then(|| self.scored_to.load(Ordering::Acquire))
    }

    /// Counts a deletion by credential `who` at `now` (microseconds); true when it is past a
    /// checkpoint ([`DELETION_CHECKPOINT`] in the credential's ten-minute window) and should
    /// wait for Sentinel to catch up before it runs.
    pub fn note_deletion(&self, who: &str, now: i64) -> bool {
        if !self.watching.load(Ordering::Acquire) {
            return false;
        }
        let window = now.div_euclid(600_000_000);
        let Ok(mut d) = self.deletions.lock() else {
            return false;
        };
        if d.len() >= 10_000 {
            d.retain(|_, (w, _)| *w == window);
        }
        let e = d.entry(who.to_owned()).or_insert((window, 0));
        if e.0 != window {
            *e = (window, 0);
        }
        e.1 += 1;
        e.1 > DELETION_CHECKPOINT && (e.1 - DELETION_CHECKPOINT - 1).is_multiple_of(DELETION_STEP)
    }

    /// The subjects whose responses were undone since the last call.
    pub fn take_undone(&self) -> Vec<String> {
        self.undone
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default()
    }

    /// Takes response `id` out of force.
    pub fn remove(&self, id: &str) {
        if let Ok(mut s) = self.state.lock() {
            for list in s.by_subject.values_mut() {
                list.retain(|a| a.id != id);
            }
            s.by_subject.retain(|_, l| !l.is_empty());
            self.any.store(!s.by_subject.is_empty(), Ordering::Release);
        }
    }

    /// Whether `who` may make a request at `now` (microseconds). An address's throttle does
    /// not hold a valid credential (staff behind one NAT keep working; the credential's own
    /// responses apply to it): see [`Enforcement::admit_address`].
    ///
    /// # Errors
    /// Why not.
    pub fn admit(&self, who: &Authenticated, now: i64) -> Result<(), Refused> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let user = format!("user:{}", who.token_id);
        let client = who.client.as_ref().map(|c| format!("client:{c}"));
        for subject in [Some(&user), client.as_ref()].into_iter().flatten() {
            let Some(list) = s.by_subject.get(subject) else {
                continue;
            };
            let mut throttle = None;
            for a in list.iter().filter(|a| a.until.is_none_or(|u| u > now)) {
                match a.act {
                    Act::Lock if subject == &user => return Err(Refused::Locked),
                    Act::EndSessions if subject == &user && who.issued_micros < a.at => {
                        return Err(Refused::Ended);
                    }
                    Act::StepUp if subject == &user => {
                        // Signed in again since: with a second factor, or with the password
                        // alone by someone who has none yet (that session may only enroll one,
                        // which it must be able to do).
                        let fresh =
                            who.auth_time_micros.is_some_and(|t| t >= a.at) && who.aal.is_some();
                        if !fresh {
                            let max_age = u64::try_from((now - a.at) / 1_000_000).unwrap_or(0);
                            return Err(Refused::StepUp { max_age });
                        }
                    }
                    Act::Throttle => {
                        throttle =
                            Some(throttle.map_or(a.per_minute, |t: u32| t.min(a.per_minute)));
                    }
                    _ => {}
                }
            }
            if let Some(limit) = throttle {
                count(&mut s.counts, subject, limit, now)?;
            }
        }
        Ok(())
    }

    /// Whether a request without credentials (a sign-in, a probe) from `address` may run.
    ///
    /// # Errors
    /// [`Refused::Throttled`].
    pub fn admit_address(&self, address: &str, now: i64) -> Result<(), Refused> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        // Addresses are known as Sentinel knows them (an IPv6 client by its /64).
        let subject = format!(
            "address:{}",
            medvault_sentinel::attacks::address_key(address)
        );
        let limit = s.by_subject.get(&subject).and_then(|list| {
            list.iter()
                .filter(|a| a.act == Act::Throttle && a.until.is_none_or(|u| u > now))
                .map(|a| a.per_minute)
                .min()
        });
        match limit {
            Some(limit) => count(&mut s.counts, &subject, limit, now),
            None => Ok(()),
        }
    }

    /// True if `address` is under a throttle now (nothing counted).
    pub fn throttles_address(&self, address: &str, now: i64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let subject = format!(
            "address:{}",
            medvault_sentinel::attacks::address_key(address)
        );
        self.state.lock().is_ok_and(|s| {
            s.by_subject.get(&subject).is_some_and(|l| {
                l.iter()
                    .any(|a| a.act == Act::Throttle && a.until.is_none_or(|u| u > now))
            })
        })
    }

    /// Whether `user_id` is locked by a response (sign-ins refused).
    pub fn locked(&self, user_id: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.state.lock().is_ok_and(|s| {
            s.by_subject
                .get(&format!("user:{user_id}"))
                .is_some_and(|l| l.iter().any(|a| a.act == Act::Lock))
        })
    }
}

/// Counts a request against `subject`'s throttle of `limit` a minute.
fn count(
    counts: &mut HashMap<String, (i64, u32)>,
    subject: &str,
    limit: u32,
    now: i64,
) -> Result<(), Refused> {
    let minute = now.div_euclid(60_000_000);
    let entry = counts.entry(subject.to_owned()).or_insert((minute, 0));
    if entry.0 != minute {
        *entry = (minute, 0);
    }
    if entry.1 >= limit {
        let retry_after = u64::try_from(60 - now.rem_euclid(60_000_000) / 1_000_000).unwrap_or(60);
        return Err(Refused::Throttled { retry_after });
    }
    entry.1 += 1;
    Ok(())
}

fn active(r: &ResponseRow) -> Option<Active> {
    let act = Act::parse(&r.action)?;
    if act == Act::Webhook {
        return None;
    }
    let per_minute = serde_json::from_str::<Value>(&r.detail)
        .ok()
        .and_then(|d| d.get("per_minute").and_then(Value::as_u64))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(default_per_minute());
    Some(Active {
        id: r.id.clone(),
        act,
        at: r.at_micros,
        until: r.until_micros,
        per_minute,
    })
}

/// What carrying out responses needs beyond the node: what is in force, and where webhooks go.
#[derive(Debug, Clone)]
pub struct Responder {
    pub playbooks: Playbooks,
    pub enforcement: std::sync::Arc<Enforcement>,
}

/// Carries out `rows` (already written with their alert): ends sessions, puts them in force,
/// records each in the access log, and POSTs webhooks in the background. Dry-run rows are only
/// recorded.
///
/// # Errors
/// Store failures (the rows are written: what is in force is reloaded within a second).
pub fn carry_out(
    node: &Node,
    responder: &Responder,
    rows: &[ResponseRow],
    summaries: &HashMap<String, Value>,
) -> Result<(), Error> {
    let enforce: Vec<ResponseRow> = rows.iter().filter(|r| !r.dry_run).cloned().collect();
    responder.enforcement.add(&enforce);
    for r in &enforce {
        if r.action == Act::EndSessions.name()
            && let Some(user) = r.subject.strip_prefix("user:")
        {
            let user = user.to_owned();
            write_with(node.store.as_ref(), move |tx| {
                tx.delete_sessions(&user, None).map(drop)
            })?;
        }
        if r.action == Act::Webhook.name()
            && let Some(url) = serde_json::from_str::<Value>(&r.detail)
                .ok()
                .and_then(|d| d.get("url").and_then(Value::as_str).map(str::to_owned))
        {
            let body = json!({
                "response": r.id,
                "alert": r.alert_id,
                "node": node.ledger.access().origin(),
                "summary": summaries.get(&r.alert_id),
            });
            let playbook = serde_json::from_str::<Value>(&r.detail)
                .ok()
                .and_then(|d| d.get("playbook").and_then(Value::as_str).map(str::to_owned));
            let secret = responder
                .playbooks
                .list
                .iter()
                .find(|p| Some(&p.name) == playbook.as_ref())
                .and_then(|p| p.webhook_secret.clone());
            post_webhook(url, &body, secret, node.clock.now_micros() / 1_000_000);
        }
    }
    for r in rows {
        node.record_audit_now(|now| {
            AuditRecord::new(
                AuditKind::Security,
                now,
                "sentinel-response",
                AuditOutcome::Success,
            )
            .agent(json!({"service": "sentinel"}))
            .target_opt(Some(&r.id))
            .with("response", response_json(r))
        })?;
    }
    Ok(())
}

/// A response as the API and the access log show it.
pub fn response_json(r: &ResponseRow) -> Value {
    json!({
        "id": r.id,
        "alert": r.alert_id,
        "action": r.action,
        "subject": r.subject,
        "at": crate::clock::instant(r.at_micros),
        "until": r.until_micros.map(crate::clock::instant),
        "dry_run": r.dry_run,
        "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null),
        "undone_by": r.undone_by,
        "undone": r.undone_micros.map(crate::clock::instant),
    })
}

/// The signature header of a webhook call made at `unix` seconds: `t=UNIX,v1=HEX`, HEX the
/// HMAC-SHA256 of `UNIX.` followed by the body under the playbook's secret (a receiver
/// recomputes it, and refuses calls whose `t` is old).
pub fn webhook_signature(secret: &[u8], unix: i64, body: &[u8]) -> String {
    let mut signed = format!("{unix}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "t={unix},v1={}",
        hex::encode(medvault_crypto::hmac_sha256(secret, &signed))
    )
}

/// POSTs `body` to `url` off the caller's thread, signed when the playbook has a secret; a
/// failure is logged (the response row and its access-log entry already say it was sent for).
fn post_webhook(url: String, body: &Value, secret: Option<WebhookSecret>, unix: i64) {
    let bytes = body.to_string().into_bytes();
    let signature = secret.map(|s| webhook_signature(&s.0, unix, &bytes));
    let send = move || {
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build();
        let sent = client.and_then(|c| {
            let mut rb = c
                .post(&url)
                .header("content-type", "application/json")
                .body(bytes);
            if let Some(sig) = &signature {
                rb = rb.header("x-medvault-signature", sig);
            }
            rb.send()
        });
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => tracing::warn!(status = r.status().as_u16(), "sentinel webhook refused"),
            Err(e) => tracing::warn!(error = %e, "sentinel webhook failed"),
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("sentinel-webhook".into())
        .spawn(send)
    {
        tracing::warn!(error = %e, "sentinel webhook not sent");
    }
}

/// Undoes response `id` on `by`'s authority: no longer in force, a lock's account unlocked,
/// recorded in the access log. False if there is no such response or it was undone already.
///
/// # Errors
/// Store failures.
pub fn undo(node: &Node, enforcement: &Enforcement, id: &str, by: &str) -> Result<bool, Error> {
    let Some(row) = node.store.response(id)? else {
        return Ok(false);
    };
    let now = node.clock.now_micros();
    let (rid, who) = (id.to_owned(), by.to_owned());
    let unlock = (row.action == Act::Lock.name() && !row.dry_run)
        .then(|| row.subject.strip_prefix("user:").map(str::to_owned))
        .flatten();
    let done = write_with(node.store.as_ref(), move |tx| {
        if !tx.undo_response(&rid, &who, now)? {
            return Ok(false);
        }
        if let Some(user) = &unlock
            && let Some(mut u) = tx.user(user)?
            && u.locked_until_micros == LOCKED_PENDING_REVIEW
        {
            u.locked_until_micros = 0;
            u.failed_logins = 0;
            tx.put_user(&u)?;
        }
        Ok(true)
    })?;
    if !done {
        return Ok(false);
    }
    enforcement.remove(id);
    if let Ok(mut u) = enforcement.undone.lock() {
        u.push(row.subject.clone());
    }
    node.record_audit_now(|now| {
        AuditRecord::new(
            AuditKind::Security,
            now,
            "sentinel-response-undo",
            AuditOutcome::Success,
        )
        .agent(json!({"token": by}))
        .target_opt(Some(id))
        .with(
            "response",
            json!({"action": row.action, "subject": row.subject}),
        )
    })?;
    Ok(true)
}

/// Reloads what is in force from the database every `every` (responses other processes
/// decided, undos made anywhere), until the task is dropped.
pub async fn reload_task(
    node: std::sync::Arc<Node>,
    enforcement: std::sync::Arc<Enforcement>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (n, e) = (
            std::sync::Arc::clone(&node),
            std::sync::Arc::clone(&enforcement),
        );
        match tokio::task::spawn_blocking(move || e.reload(&n)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e.message, "sentinel responses not reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "sentinel response reloads stopped");
                return;
            }
        }
    }
}

/// `locked_until_micros` of an account a Sentinel response locked: until undone.
pub const LOCKED_PENDING_REVIEW: i64 = i64::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    fn raised(kind: &str, user: Option<&str>, break_glass: bool) -> Raised {
        Raised {
            alert_id: "alr_a7".into(),
            kind: kind.into(),
            score: Some(0.9),
            user: user.map(Into::into),
            address: Some("198.51.100.7".into()),
            client: None,
            break_glass,
            summary: json!({}),
            time: 0,
        }
    }

    fn books(list: Vec<Playbook>) -> Playbooks {
        Playbooks {
            list,
            dry_run: false,
            session_max_micros: 3_600_000_000,
        }
    }

    fn who(token: &str, issued: i64, auth_time: Option<i64>, aal: u8) -> Authenticated {
        Authenticated {
            token_id: token.into(),
            role: medvault_core::Role::Clinician,
            session: Some("ses_1".into()),
            aal: medvault_core::Aal::from_level(i64::from(aal)).ok(),
            scopes: None,
            client: None,
            auth_time_micros: auth_time,
            issued_micros: issued,
            patient: None,
            practitioner: None,
        }
    }

    #[test]
    fn defaults_validate_and_answer_the_kinds_they_name() {
        let list = Playbooks::defaults();
        Playbooks::validate(&list).unwrap();
        let b = books(list);
        let acts = |kind: &str, user: Option<&str>| -> Vec<(String, String)> {
            plan(&b, &raised(kind, user, false), 1_000)
                .into_iter()
                .map(|r| (r.action, r.subject))
                .collect()
        };
        assert_eq!(
            acts("credential-stuffing", None),
            [("throttle".to_owned(), "address:198.51.100.7".to_owned())]
        );
        assert_eq!(
            acts("mass-deletion", Some("usr_m")),
            [
                ("lock".to_owned(), "user:usr_m".to_owned()),
                ("end-sessions".to_owned(), "user:usr_m".to_owned())
            ]
        );
        assert!(acts("sentinel", Some("usr_s")).is_empty());
    }

    #[test]
    fn break_glass_alerts_only_step_up_unless_the_playbook_blocks() {
        let mut p = Playbook {
            min_score: Some(0.8),
            throttle_per_minute: 5,
            minutes: 10,
            ..Playbook::new(
                "snooping",
                &["sentinel"],
                &[Act::Lock, Act::StepUp, Act::Throttle],
            )
        };
        let acts = |p: &Playbook, bg: bool, score: f64| -> Vec<String> {
            let mut r = raised("sentinel", Some("usr_s"), bg);
            r.score = Some(score);
            plan(&books(vec![p.clone()]), &r, 0)
                .into_iter()
                .map(|r| r.action)
                .collect()
        };
        assert_eq!(acts(&p, false, 0.9), ["lock", "step-up", "throttle"]);
        assert_eq!(acts(&p, true, 0.9), ["step-up"]);
        assert!(acts(&p, false, 0.7).is_empty(), "below min_score");
        p.block_break_glass = true;
        assert_eq!(acts(&p, true, 0.9), ["lock", "step-up", "throttle"]);
    }

    #[test]
    fn bad_playbooks_are_refused_by_name() {
        let good = Playbook {
            webhook: Some("https://siem.example/hook".into()),
            ..Playbook::new("p", &["attack"], &[Act::Webhook])
        };
        Playbooks::validate(std::slice::from_ref(&good)).unwrap();
        for (change, says) in [
            (
                Box::new(|p: &mut Playbook| p.on = vec!["snooping".into()])
                    as Box<dyn Fn(&mut Playbook)>,
                "unknown alert kind `snooping`",
            ),
            (
                Box::new(|p: &mut Playbook| p.webhook = None),
                "needs `webhook",
            ),
            (
                Box::new(|p: &mut Playbook| p.webhook = Some("ftp://x".into())),
                "http(s)",
            ),
            (
                Box::new(|p: &mut Playbook| p.min_score = Some(2.0)),
                "min_score",
            ),
            (
                Box::new(|p: &mut Playbook| p.actions.clear()),
                "at least one",
            ),
        ] {
            let mut p = good.clone();
            change(&mut p);
            let e = Playbooks::validate(&[p]).unwrap_err();
            assert!(e.starts_with("playbook `p`: ") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn webhook_secrets_come_from_the_environment_and_sign_the_calls() {
        let mut list = vec![Playbook {
            webhook: Some("https://siem.example/hook".into()),
            webhook_secret_env: Some("SIEM_SECRET".into()),
            ..Playbook::new("siem", &["attack"], &[Act::Webhook])
        }];
        let e = Playbooks::resolve_secrets(&mut list, |_| Some("short".into())).unwrap_err();
        assert!(e.contains("SIEM_SECRET") && e.contains("16 bytes"), "{e}");
        Playbooks::resolve_secrets(&mut list, |v| {
            (v == "SIEM_SECRET").then(|| "a long shared secret".into())
        })
        .unwrap();
        assert!(format!("{:?}", list[0]).contains("[REDACTED]"));
        assert!(!format!("{:?}", list[0]).contains("a long shared secret"));
        // The signature is HMAC-SHA256 of "t." and the body: recomputed here independently
        // of the crate's helper order.
        let sig = webhook_signature(b"a long shared secret", 1_796_000_000, b"{}");
        let expected = hex::encode(medvault_crypto::hmac_sha256(
            b"a long shared secret",
            b"1796000000.{}",
        ));
        assert_eq!(sig, format!("t=1796000000,v1={expected}"));
    }

    #[test]
    fn enforcement_refuses_what_is_in_force_and_nothing_else() {
        let e = Enforcement::default();
        let t0 = 10_000_000_000;
        assert_eq!(e.admit(&who("usr_a", 0, Some(0), 2), t0), Ok(()));
        let b = books(vec![Playbook {
            throttle_per_minute: 3,
            minutes: 10,
            ..Playbook::new(
                "p",
                &["attack"],
                &[Act::StepUp, Act::EndSessions, Act::Throttle],
            )
        }]);
        let rows = plan(&b, &raised("bulk-exfiltration", Some("usr_a"), false), t0);
        // End-sessions first: a credential from before the response is refused outright.
        e.add(&rows[1..2]);
        assert_eq!(
            e.admit(&who("usr_a", t0 - 1, Some(t0 - 1), 2), t0 + 1),
            Err(Refused::Ended)
        );
        assert_eq!(
            e.admit(&who("usr_a", t0 + 5, Some(t0 + 5), 2), t0 + 6),
            Ok(())
        );
        assert_eq!(e.admit(&who("usr_b", 0, Some(0), 2), t0 + 6), Ok(()));
        // Step-up: a credential whose sign-in is older than the response must sign in again
        // (a fresh password-only session passes: it may only enroll a second factor).
        e.add(&rows[0..1]);
        assert_eq!(
            e.admit(&who("usr_a", t0 + 5, Some(t0 - 1), 2), t0 + 2_000_000),
            Err(Refused::StepUp { max_age: 2 })
        );
        assert_eq!(
            e.admit(&who("usr_a", t0 + 5, Some(t0 + 5), 1), t0 + 3),
            Ok(())
        );
        e.add(&rows[2..3]);
        let fresh = who("usr_a", t0 + 5, Some(t0 + 5), 2);
        for i in 0..3 {
            assert_eq!(e.admit(&fresh, t0 + 10 + i), Ok(()));
        }
        assert!(matches!(
            e.admit(&fresh, t0 + 20),
            Err(Refused::Throttled { .. })
        ));
        // The next minute starts afresh; undone, nothing is in force.
        assert_eq!(e.admit(&fresh, t0 + 60_000_000), Ok(()));
        for r in &rows {
            e.remove(&r.id);
        }
        assert_eq!(e.admit(&who("usr_a", 0, None, 1), t0 + 60_000_001), Ok(()));
        assert!(!e.any.load(Ordering::Acquire));
    }

    #[test]
    fn deletions_past_the_limit_wait_for_sentinel_every_few() {
        let e = Enforcement::default();
        // No watcher in this process: nothing waits.
        assert!((0..100).all(|i| !e.note_deletion("tok_a", i)));
        e.scored(0);
        let e2 = Enforcement::default();
        e2.scored(0);
        let waits: Vec<u32> = (1..=40)
            .filter(|i| e2.note_deletion("tok_a", i64::from(*i)))
            .collect();
        assert_eq!(waits, [26, 31, 36]);
        // Another credential, or the next ten minutes, start afresh.
        assert!(!e2.note_deletion("tok_b", 41));
        assert!(!e2.note_deletion("tok_a", 600_000_000));
        assert_eq!(e2.scored_to(), Some(0));
        assert_eq!(Enforcement::default().scored_to(), None);
    }

    #[test]
    fn an_address_throttle_holds_sign_ins_from_it() {
        let e = Enforcement::default();
        let b = books(Playbooks::defaults());
        let rows = plan(&b, &raised("credential-stuffing", None, false), 0);
        e.add(&rows);
        for i in 0..10 {
            assert_eq!(e.admit_address("198.51.100.7", i), Ok(()));
        }
        assert!(e.admit_address("198.51.100.7", 11).is_err());
        assert_eq!(e.admit_address("192.0.2.1", 12), Ok(()));
        // Dry-run rows are never in force.
        let e = Enforcement::default();
        let mut dry = rows.clone();
        dry[0].dry_run = true;
        e.add(&dry);
        for i in 0..20 {
            assert_eq!(e.admit_address("198.51.100.7", i), Ok(()));
        }
    }
}
