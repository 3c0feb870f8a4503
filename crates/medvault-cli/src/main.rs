//! `medvault`: run and administer a medvault node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod config;
mod sharing;
mod transfer;

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use medvault_core::{ResourceId, Role};
use medvault_crypto::{KeyFileKind, Passphrase};
use medvault_ledger::VerifierKey;
use medvault_node::identity::sessions::SessionLimits;
use medvault_node::node::{Database, KEY_FILE, Node};
use medvault_node::witness::RemoteWitness;
use medvault_server::{AppState, ServerConfig};

const AFTER_HELP: &str = "\
Quick start:
  medvault serve                              # data in ./medvault-data, API on 127.0.0.1:8080
  TOKEN=$(medvault token create --role admin)
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8080/fhir/metadata

Set MEDVAULT_PASSPHRASE before the first start to seal the root key file with it
(Argon2id); every later command on that data directory needs the same passphrase.";

/// medvault keeps health records (FHIR R4) encrypted under per-patient keys and serves them
/// over an authenticated FHIR API.
#[derive(Debug, Parser)]
#[command(name = "medvault", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// Directory holding the node's key file and database. Created (mode 0700) on first use.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./medvault-data",
        env = "MEDVAULT_DATA_DIR"
    )]
    data_dir: PathBuf,
    /// Keep the node's data in PostgreSQL instead of SQLite files in the data directory, e.g.
    /// postgres://medvault@db.example/medvault?schema=clinic (schema defaults to `medvault`).
    /// Several `medvault serve` processes may share one database; each needs a copy of the
    /// node's key file in its own --data-dir (the key file never goes into the database).
    #[arg(
        long,
        value_name = "URL",
        env = "MEDVAULT_DATABASE",
        hide_env_values = true
    )]
    database: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the FHIR server. The first start creates the data directory, the root key file, the
    /// database and the first keys.
    #[command(
        after_help = "Example:\n  medvault serve --data-dir /var/lib/medvault --listen 127.0.0.1:8080"
    )]
    Serve(Box<ServeArgs>),
    /// Other medvault nodes this node shares records with (registered by fingerprint).
    Peer {
        #[command(subcommand)]
        command: sharing::PeerCommand,
    },
    /// Sealed sharing without a live link: export a patient's records to a file for a peer,
    /// import a peer's file, confirm a peer's receipt. (Online, POST
    /// /fhir/Patient/{id}/$share delivers to the peer directly.)
    Share {
        #[command(subcommand)]
        command: sharing::ShareCommand,
    },
    /// Show the access policy's schema and default policy, or check policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage people's accounts (they log in with a password and a second factor).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage OAuth2 clients: SMART apps and backend services.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Manage API bearer tokens (for automation on this host; people use sessions with a
    /// second factor).
    #[command(long_about = TOKEN_ABOUT)]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the key hierarchy.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Correct stored records: expunge a superseded version.
    Record {
        #[command(subcommand)]
        command: RecordCommand,
    },
    /// Patient-level data operations.
    Patient {
        #[command(subcommand)]
        command: PatientCommand,
    },
    /// The tamper-evident ledger: the records log (every resource version) and the access log
    /// (every request and administrative action).
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// This node's public identity for other nodes: a hybrid signing key (Ed25519 + ML-DSA-65)
    /// and a hybrid KEM key (X-Wing), published at /.well-known/medvault-node.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Write a consistent snapshot of the node to a file, while it runs. Records stay sealed and
    /// keys stay wrapped; the file is authenticated with a key derived from the root key, which
    /// is never included: keep the key file (and its passphrase) safe separately, a backup
    /// cannot be restored without it.
    #[command(
        after_help = "Example:\n  medvault backup --data-dir /var/lib/medvault --out /backups/medvault-$(date +%F).mvbk"
    )]
    Backup {
        #[command(flatten)]
        dir: DataDir,
        /// The backup file to write (mode 0600; written under FILE.partial until complete).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Load a backup into an empty database (SQLite files in --data-dir, or --database), then
    /// verify the ledger. The node's key file must already be in --data-dir. The whole file is
    /// checked (format, checksum, completeness) before anything is loaded.
    #[command(
        after_help = "Example:\n  medvault restore --data-dir /var/lib/medvault /backups/medvault-2026-11-30.mvbk"
    )]
    Restore {
        #[command(flatten)]
        dir: DataDir,
        /// The backup file.
        file: PathBuf,
        /// Delete what the target database holds and restore over it.
        #[arg(long)]
        force: bool,
    },
    /// Move a node from its SQLite files to PostgreSQL, then verify the ledger there. Stop
    /// `medvault serve` first: writes made during the copy would not move. The SQLite files are
    /// left as they were; afterwards start the node with --database URL.
    #[command(
        after_help = "Example:\n  medvault migrate --from /var/lib/medvault --to postgres://medvault@db.example/medvault"
    )]
    Migrate {
        /// The data directory of the node to move (its key file stays there).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The PostgreSQL database to move it to (must not hold a node yet).
        #[arg(long, value_name = "URL")]
        to: String,
        /// Delete a node the target already holds, then migrate.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Print the node document (JSON) with its fingerprint, to give another node's
    /// administrator, who confirms the fingerprint with you out of band.
    #[command(after_help = "Example:\n  medvault node show --data-dir DIR")]
    Show {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Replace the node's signing and KEM keys with new ones (recorded in the access log).
    /// Peers must fetch the new document and confirm its fingerprint again.
    #[command(after_help = "Example:\n  medvault node rotate-keys --data-dir DIR")]
    RotateKeys {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Recompute both logs' Merkle trees from the stored leaves, check each log's newest signed
    /// checkpoint and newest witness-cosigned checkpoint, every stored resource version against
    /// its commitment, every audit record against its leaf, and that the records tree heads the
    /// access checkpoints pin are reproduced. Exits 0 only when everything holds; otherwise
    /// names the first divergence (which log, which row, which leaf) and exits 1. Safe to run
    /// while the server runs.
    #[command(after_help = "Example:\n  medvault ledger verify --data-dir /var/lib/medvault")]
    Verify {
        #[command(flatten)]
        dir: DataDir,
        /// A witness cosigner key to trust, in addition to those `serve --witness` recorded.
        #[arg(long = "witness", value_name = "VKEY")]
        witnesses: Vec<String>,
    },
    /// Print this node's ledger keys: the two logs' checkpoint keys (give them to witnesses and
    /// auditors) and the witness cosigner key (give it to logs this node witnesses).
    #[command(after_help = "Example:\n  medvault ledger keys --data-dir DIR")]
    Keys {
        #[command(flatten)]
        dir: DataDir,
    },
}

/// `medvault serve`'s settings.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Read settings from this TOML file (see docs/medvault.example.toml): every key stands
    /// for one of the flags below. Environment variables MEDVAULT__SECTION__KEY override the
    /// file (e.g. MEDVAULT__SERVER__LISTEN=0.0.0.0:8080), and flags override both. Unknown
    /// keys are refused.
    #[arg(long, value_name = "FILE", env = "MEDVAULT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    dir: DataDir,
    /// Address and port to listen on. Keep it on loopback unless a TLS proxy fronts it.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:8080",
        env = "MEDVAULT_LISTEN"
    )]
    listen: SocketAddr,
    /// Largest request body accepted; larger requests get 413. (Resources of most types
    /// are also limited to 1 MiB each; documents, reports and questionnaires only by this.)
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Requests running longer are answered 503; a write not committed by then is not made.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout_seconds: u64,
    /// Public base URL of the FHIR API, used in links (default: from the Host header).
    #[arg(long, value_name = "URL", env = "MEDVAULT_BASE_URL")]
    base_url: Option<String>,
    /// Log format (logs never carry PHI, query strings or tokens).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// A witness to ask for cosignatures of every checkpoint of both logs, as `URL,VKEY`: the witness's
    /// submission prefix (e.g. http://witness.example:8080/witness) and its cosigner key
    /// (from its `GET /witness/key` or `medvault ledger keys`). Repeat for several.
    #[arg(long = "witness", value_name = "URL,VKEY")]
    witnesses: Vec<String>,
    /// Act as a witness for the log with this checkpoint key (another node's
    /// `GET /ledger/records/key` or `GET /ledger/access/key`, or its `medvault ledger keys`):
    /// cosign its checkpoints after checking they extend what was cosigned before. Repeat
    /// for several logs (a node has two: give both keys to witness it fully).
    #[arg(long = "witness-for", value_name = "VKEY")]
    witness_for: Vec<String>,
    /// Minutes a login session may sit unused before it ends (HIPAA automatic logoff;
    /// NIST AAL2 allows at most 30).
    #[arg(long, value_name = "MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=30))]
    session_idle_minutes: u64,
    /// Minutes an admin's session may sit unused (NIST AAL3 allows at most 15).
    #[arg(long, value_name = "MINUTES", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=15))]
    admin_session_idle_minutes: u64,
    /// The origin people's browsers reach this node at, for passkeys (WebAuthn binds
    /// credentials to it), e.g. https://ehr.example.org. Defaults to http://localhost:PORT
    /// (browsers allow WebAuthn on localhost without TLS).
    #[arg(long, value_name = "URL")]
    webauthn_origin: Option<String>,
    /// Seconds within which an admin must have signed in (with a second factor or a passkey)
    /// to rotate keys or erase a patient over the API (step-up).
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=900))]
    step_up_seconds: u64,
    /// Hours a login session lasts at most, used or not (NIST: at most 12 at AAL2/AAL3).
    #[arg(long, value_name = "HOURS", default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=12))]
    session_max_hours: u64,
    /// A Cedar policy file added to the default access policy (repeat for several). Every
    /// policy needs a unique @id("…"); the files are validated against the schema
    /// (`medvault policy schema`) before the server starts, and an invalid one stops it.
    #[arg(long = "policy", value_name = "FILE")]
    policies: Vec<PathBuf>,
    /// Use only the --policy files, without the default policy (`medvault policy default`
    /// prints it, to start from).
    #[arg(long, requires = "policies")]
    replace_default_policy: bool,
    /// Serve HTTPS (TLS 1.3 only; key exchange X25519MLKEM768, the hybrid of X25519 and
    /// ML-KEM-768, preferred, X25519 for clients without it) with this certificate chain
    /// (PEM, leaf first). Needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_dev_cert"
    )]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed development certificate for localhost, created in
    /// DATA_DIR/tls/ if missing (its SHA-256 fingerprint is logged, for clients to pin).
    /// Not for production: browsers will warn.
    #[arg(long)]
    tls_dev_cert: bool,
    /// Longest break-glass grant a clinician may open, in minutes.
    #[arg(long, value_name = "MINUTES", default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=1440))]
    break_glass_max_minutes: u64,
    /// Also listen here for bundles from registered peers (`medvault peer add`), over mutual
    /// TLS 1.3 with this node's identity key: only registered peers' keys complete the
    /// handshake. Give peers https://THIS_HOST:PORT as this node's URL.
    #[arg(long, value_name = "ADDR:PORT", env = "MEDVAULT_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    #[command(flatten)]
    clients: ClientArgs,
}

/// How `serve` tells clients apart and limits those that authenticate no one.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// A reverse proxy (an address or a network, e.g. 10.0.0.5 or 10.0.0.0/24) whose
    /// forwarding header names the client. Login throttling and the limit on anonymous
    /// requests count per client address: behind a proxy every client shares the proxy's
    /// address unless it is listed here. Only connections from these addresses have the
    /// header read (from the right, skipping further listed proxies); without this option
    /// forwarding headers are ignored. Repeat for several.
    #[arg(long = "trusted-proxy", value_name = "IP_OR_CIDR")]
    trusted_proxies: Vec<medvault_server::client_addr::IpNet>,
    /// The header trusted proxies write the client's address into. The proxy must append
    /// to (or replace) it, never pass a client's own value on unmarked.
    #[arg(
        long,
        value_enum,
        default_value = "x-forwarded-for",
        requires = "trusted_proxies"
    )]
    client_address_header: ClientAddressHeader,
    /// Requests without valid credentials (wrong paths, failed logins, bad tokens, public
    /// pages) accepted per client address per minute; after that the address gets 429 for
    /// requests without credentials until the minute is over.
    #[arg(long, value_name = "N", default_value_t = medvault_server::anonymous::DEFAULT_PER_MINUTE, value_parser = clap::value_parser!(u32).range(1..))]
    anonymous_requests_per_minute: u32,
    /// The access log records 30 requests without valid credentials a minute one by one;
    /// beyond that they are counted (by client address, status and credential named) and
    /// written as one summary record this often, so a flood cannot grow the log without
    /// limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    anonymous_summary_seconds: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy, …` (nginx $proxy_add_x_forwarded_for, HAProxy
    /// `option forwardfor`, most load balancers).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy`.
    Forwarded,
}

const TOKEN_ABOUT: &str = "\
API bearer tokens, for automation on this host (scripts, integrations, monitoring).

A token grants its role with no second factor: having the node's key file on this host, which
creating one requires, stands in for it. So tokens are for machines run by the node's operators;
people log in with a password and a second factor (POST /auth/login, or /auth/ui) and get
sessions, and apps use OAuth2 (`medvault client register`). Tokens expire (30 days unless
--days says otherwise, at most 365) and can be revoked; `token list` shows when each was last
used. A running server honours a revocation within 30 seconds (it trusts a token it checked
that long).";

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a bearer token and print it (one line; its id and expiry go to standard error).
    /// Only its hash is stored: copy it now.
    #[command(
        after_help = "Example:\n  TOKEN=$(medvault token create --data-dir DIR --role admin --days 7)"
    )]
    Create {
        #[command(flatten)]
        dir: DataDir,
        /// Role the token grants.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Days until the token expires (at most 365).
        #[arg(long, value_name = "DAYS", default_value_t = medvault_node::identity::api_tokens::TOKEN_DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(medvault_node::identity::api_tokens::TOKEN_MAX_DAYS)))]
        days: u32,
    },
    /// List tokens: id, role, created, expires, last used, state. Never the token itself.
    #[command(after_help = "Example:\n  medvault token list --data-dir DIR")]
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Revoke a token by its id (`tok_…`, from `token list` or the audit trail). Running
    /// servers refuse it within 30 seconds.
    #[command(after_help = "Example:\n  medvault token revoke --data-dir DIR tok_0123456789abcdef")]
    Revoke {
        #[command(flatten)]
        dir: DataDir,
        /// The token's id.
        token_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account and print its user id. The password is read from MEDVAULT_NEW_PASSWORD
    /// or, if that is unset, from the first line of standard input; it must have at least 12
    /// characters and not be a common password. The user then logs in (POST /auth/login) and
    /// enrolls an authenticator app (POST /auth/totp/enroll, /auth/totp/confirm) before
    /// reaching any data.
    #[command(after_help = "Example:\n  \
        printf '%s\\n' \"$PW\" | medvault user create --data-dir DIR --username j.doe --role clinician")]
    Create {
        #[command(flatten)]
        dir: DataDir,
        /// Login name: 1-64 characters, letters, digits, '.', '_', '-', '@' (case-insensitive).
        #[arg(long)]
        username: String,
        /// The person's role.
        #[arg(long, value_enum)]
        role: PersonRole,
        /// For a patient: the id of their Patient resource (what their apps' patient/… scopes
        /// and their own access are limited to).
        #[arg(long, value_name = "ID", conflicts_with = "practitioner")]
        patient: Option<String>,
        /// For clinical staff: the id of their Practitioner resource. The access policy finds
        /// their care relationships through it (CareTeam members, Encounter participants);
        /// without it a clinician reaches no patient's data except by break-glass.
        #[arg(long, value_name = "ID")]
        practitioner: Option<String>,
    },
    /// Link a staff account to its Practitioner resource (or unlink it with --none).
    #[command(
        after_help = "Example:\n  medvault user link --data-dir DIR j.doe --practitioner 7f3e…"
    )]
    Link {
        #[command(flatten)]
        dir: DataDir,
        /// Login name.
        username: String,
        /// The Practitioner resource's id.
        #[arg(long, value_name = "ID", required_unless_present = "none")]
        practitioner: Option<String>,
        /// Remove the link.
        #[arg(long, conflicts_with = "practitioner")]
        none: bool,
    },
    /// Refuse the user's logins and end their sessions (running servers notice within 30 s).
    #[command(after_help = "Example:\n  medvault user disable --data-dir DIR j.doe")]
    Disable {
        #[command(flatten)]
        dir: DataDir,
        /// Login name.
        username: String,
    },
    /// Allow a disabled user to log in again.
    #[command(after_help = "Example:\n  medvault user enable --data-dir DIR j.doe")]
    Enable {
        #[command(flatten)]
        dir: DataDir,
        /// Login name.
        username: String,
    },
    /// Clear a lockout after repeated failed logins.
    #[command(after_help = "Example:\n  medvault user unlock --data-dir DIR j.doe")]
    Unlock {
        #[command(flatten)]
        dir: DataDir,
        /// Login name.
        username: String,
    },
    /// List accounts: id, name, role, state, second factor.
    #[command(after_help = "Example:\n  medvault user list --data-dir DIR")]
    List {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print the Cedar schema policies are written against (users, resources, request context).
    Schema,
    /// Print the default policy (care relationship, consent, labels, break-glass).
    Default,
    /// Check policy files as `serve --policy` would, without starting anything.
    #[command(after_help = "Example:\n  medvault policy check --policy site.cedar")]
    Check {
        /// A Cedar policy file (repeat for several).
        #[arg(long = "policy", value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Check the files alone, without the default policy.
        #[arg(long)]
        replace_default_policy: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client and print its client id. With --jwks: a backend service (SMART Backend
    /// Services: client_credentials with a private_key_jwt assertion signed RS384 or ES384;
    /// system/… scopes). With --redirect-uri: a user-facing app (authorization code with PKCE
    /// S256; the user signs in with MFA and approves; user/… scopes, openid, fhirUser,
    /// offline_access). Either way the client gets 5-minute access tokens from POST
    /// /auth/token, limited to the scopes it asks for within those registered here.
    #[command(after_help = "Example:\n  \
        medvault client register --data-dir DIR --name \"Lab feed\" --jwks lab-feed.jwks.json \\\n    \
        --scope \"system/Observation.rs system/Patient.r\"")]
    Register {
        #[command(flatten)]
        dir: DataDir,
        /// A name for people reading the audit trail.
        #[arg(long)]
        name: String,
        /// File with the service's public JWK Set ({"keys": [...]}): RSA keys for RS384, EC P-384
        /// keys for ES384, each with a kid.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "redirect_uris",
            conflicts_with = "redirect_uris"
        )]
        jwks: Option<PathBuf>,
        /// Where a user-facing app receives authorization codes (exact match; https, or http on
        /// localhost). Repeat for several.
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// The SMART scopes the service may be granted, space-separated (system/… only; v1
        /// suffixes .read/.write/.* are accepted and stored as v2).
        #[arg(long)]
        scope: String,
    },
    /// Stop issuing tokens to a client; its tokens stop working within 30 s.
    #[command(after_help = "Example:\n  medvault client disable --data-dir DIR cli_0123…")]
    Disable {
        #[command(flatten)]
        dir: DataDir,
        /// Client id.
        client_id: String,
    },
    /// List registered clients: id, name, scopes, state.
    #[command(after_help = "Example:\n  medvault client list --data-dir DIR")]
    List {
        #[command(flatten)]
        dir: DataDir,
    },
}

fn run_client(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Register {
            dir,
            name,
            jwks,
            redirect_uris,
            scope,
        } => {
            use medvault_node::identity::oauth::clients::ClientKind;
            let kind = match jwks {
                Some(path) => ClientKind::Backend {
                    jwks: std::fs::read_to_string(&path)
                        .with_context(|| format!("reading --jwks {}", path.display()))?,
                },
                None => ClientKind::App { redirect_uris },
            };
            let node = open_node(&dir, true)?;
            let id = medvault_node::identity::oauth::clients::register_client(
                &node, &name, &kind, &scope,
            )
            .map_err(fail)?;
            audit_admin(&node, "client-register", Some(&id))?;
            println!("{id}");
        }
        ClientCommand::Disable { dir, client_id } => {
            let node = open_node(&dir, true)?;
            if !medvault_node::identity::oauth::clients::set_client_disabled(
                &node, &client_id, true,
            )
            .map_err(fail)?
            {
                bail!("no client {client_id}: see `medvault client list`");
            }
            audit_admin(&node, "client-disable", Some(&client_id))?;
            println!("{client_id} disabled");
        }
        ClientCommand::List { dir } => {
            let node = open_node(&dir, true)?;
            for c in node.store.clients()? {
                let state = if c.disabled { "disabled" } else { "enabled" };
                println!("{}\t{}\t{}\t{state}", c.client_id, c.name, c.scopes);
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PersonRole {
    /// Administers the node; full FHIR access; shorter session idle timeout (AAL3 limits).
    Admin,
    /// A physician or other licensed clinician.
    Clinician,
    /// A nurse.
    Nurse,
    /// A researcher (no FHIR data until a policy grants it).
    Researcher,
    /// A patient: reads their own records only (give --patient).
    Patient,
    /// Reads the audit trail only.
    Auditor,
    /// Reads the audit trail; investigates access.
    PrivacyOfficer,
}

impl PersonRole {
    fn role(self) -> Role {
        match self {
            Self::Admin => Role::Admin,
            Self::Clinician => Role::Clinician,
            Self::Nurse => Role::Nurse,
            Self::Researcher => Role::Researcher,
            Self::Patient => Role::Patient,
            Self::Auditor => Role::Auditor,
            Self::PrivacyOfficer => Role::PrivacyOfficer,
        }
    }
}

fn new_password() -> anyhow::Result<medvault_auth::password::Password> {
    let text = match std::env::var("MEDVAULT_NEW_PASSWORD") {
        Ok(p) => zeroize::Zeroizing::new(p),
        Err(_) => {
            let mut line = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the new password from standard input")?;
            line
        }
    };
    let trimmed = text.trim_end_matches(['\r', '\n']);
    if trimmed.is_empty() {
        bail!("no password given: set MEDVAULT_NEW_PASSWORD or pipe it on standard input");
    }
    Ok(medvault_auth::password::Password::new(trimmed))
}

/// Applies an account change as an audited admin action.
fn change(
    dir: &DataDir,
    username: &str,
    how: medvault_node::identity::accounts::AccountChange,
    action: &str,
    done: &str,
) -> anyhow::Result<()> {
    let node = open_node(dir, true)?;
    let id = medvault_node::identity::accounts::change_account(&node, username, how)
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    audit_admin(&node, action, Some(&id))?;
    println!("{id} {done}");
    Ok(())
}

/// The access policy: the default one (unless replaced) and the given files, validated.
fn load_policy(
    files: &[PathBuf],
    replace_default: bool,
) -> anyhow::Result<medvault_policy::PolicyEngine> {
    let mut sources = Vec::new();
    if !replace_default {
        sources.push((
            "default policy".to_owned(),
            medvault_policy::DEFAULT_POLICY.to_owned(),
        ));
    }
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("--policy {}: {e}", f.display()))?;
        sources.push((f.display().to_string(), text));
    }
    let refs: Vec<(&str, &str)> = sources
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    medvault_policy::PolicyEngine::from_sources(&refs).map_err(|e| anyhow::anyhow!("--policy: {e}"))
}

/// Parses an optional resource id given as `flag`.
fn resource_id(flag: &str, id: Option<String>) -> anyhow::Result<Option<ResourceId>> {
    id.map(|p| ResourceId::new(&p).map_err(|e| anyhow::anyhow!("{flag} {p:?}: {e}")))
        .transpose()
}

fn run_user(command: UserCommand) -> anyhow::Result<()> {
    use medvault_node::identity::accounts::{self as identity, AccountChange};
    match command {
        UserCommand::Create {
            dir,
            username,
            role,
            patient,
            practitioner,
        } => {
            let patient = resource_id("--patient", patient)?;
            let practitioner = resource_id("--practitioner", practitioner)?;
            let link = match (&patient, &practitioner) {
                (Some(p), _) => identity::FhirUser::Patient(p),
                (None, Some(p)) => identity::FhirUser::Practitioner(p),
                (None, None) => identity::FhirUser::None,
            };
            let node = open_node(&dir, false)?;
            let password = new_password()?;
            let id = identity::create_user(&node, &username, role.role(), link, &password)
                .map_err(fail)?;
            audit_admin(
                &node,
                "user-create",
                Some(&format!("{id} ({})", role.role().as_str())),
            )?;
            println!("{id}");
        }
        UserCommand::Link {
            dir,
            username,
            practitioner,
            none: _,
        } => {
            let practitioner = resource_id("--practitioner", practitioner)?;
            change(
                &dir,
                &username,
                AccountChange::Practitioner(practitioner),
                "user-link",
                "linked",
            )?;
        }
        UserCommand::Disable { dir, username } => {
            change(
                &dir,
                &username,
                AccountChange::Disable,
                "user-disable",
                "disabled",
            )?;
        }
        UserCommand::Enable { dir, username } => {
            change(
                &dir,
                &username,
                AccountChange::Enable,
                "user-enable",
                "enabled",
            )?;
        }
        UserCommand::Unlock { dir, username } => {
            change(
                &dir,
                &username,
                AccountChange::Unlock,
                "user-unlock",
                "unlocked",
            )?;
        }
        UserCommand::List { dir } => {
            let node = open_node(&dir, true)?;
            for (u, name) in identity::list_users(&node).map_err(fail)? {
                let state = if u.disabled { "disabled" } else { "enabled" };
                let factor = if u.totp.is_some() { "totp" } else { "none" };
                let fhir_user = match (&u.patient_id, &u.practitioner) {
                    (Some(p), _) => format!("Patient/{p}"),
                    (None, Some(p)) => p.clone(),
                    (None, None) => "-".to_owned(),
                };
                println!(
                    "{}\t{name}\t{}\t{state}\tsecond-factor={factor}\t{fhir_user}",
                    u.id, u.role
                );
            }
        }
    }
    Ok(())
}

fn run_token(command: TokenCommand) -> anyhow::Result<()> {
    use medvault_node::clock::instant;
    use medvault_node::identity::api_tokens::{self as auth, Revoked};
    match command {
        TokenCommand::Create { dir, role, days } => {
            let node = open_node(&dir, false)?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Auditor => Role::Auditor,
            };
            let (token, row) =
                auth::create_token(node.store.as_ref(), role, node.clock.now_micros(), days)
                    .map_err(fail)?;
            audit_admin(
                &node,
                "token-create",
                Some(&format!(
                    "{} ({}, expires {})",
                    row.token_id,
                    role.as_str(),
                    instant(row.expires_micros)
                )),
            )?;
            eprintln!(
                "created {} ({}), expires {}",
                row.token_id,
                role.as_str(),
                instant(row.expires_micros)
            );
            println!("{token}");
        }
        TokenCommand::List { dir } => {
            let node = open_node(&dir, true)?;
            let now = node.clock.now_micros();
            for t in node.store.tokens()? {
                let state = match t.revoked_micros {
                    Some(at) => format!("revoked={}", instant(at)),
                    None if now >= t.expires_micros => "expired".to_owned(),
                    None => "active".to_owned(),
                };
                let used = t
                    .last_used_micros
                    .map_or_else(|| "never".to_owned(), instant);
                println!(
                    "{}\t{}\tcreated={}\texpires={}\tlast-used={used}\t{state}",
                    t.token_id,
                    t.role,
                    instant(t.created_micros),
                    instant(t.expires_micros)
                );
            }
        }
        TokenCommand::Revoke { dir, token_id } => {
            let node = open_node(&dir, true)?;
            match auth::revoke_token(node.store.as_ref(), &token_id, node.clock.now_micros())
                .map_err(fail)?
            {
                Revoked::Unknown => bail!("no token {token_id}: see `medvault token list`"),
                Revoked::Already(at) => {
                    println!("{token_id} was already revoked at {}", instant(at));
                }
                Revoked::Now => {
                    audit_admin(&node, "token-revoke", Some(&token_id))?;
                    println!("{token_id} revoked; running servers refuse it within 30 seconds");
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    /// Full access to the FHIR API.
    Admin,
    /// Reads the audit trail (GET /fhir/AuditEvent) and nothing else.
    Auditor,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new key-encryption-key (KEK) version and rewrap every data key under it.
    /// Records are not re-encrypted and stay readable throughout, also by a running server.
    #[command(after_help = "Example:\n  medvault keys rotate --data-dir DIR")]
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
enum RecordCommand {
    /// Remove the content of one superseded version of a resource, e.g. another patient's
    /// result that was filed here and has since been corrected. The version's ledger
    /// commitment stays (so `ledger verify` still accounts for it) and a new leaf records the
    /// expunged state; reads of the version answer 410 Gone. The current version cannot be
    /// expunged: update or delete the resource first. This cannot be undone.
    #[command(
        after_help = "Example:\n  medvault record expunge --data-dir DIR Observation/3f1c6d0e-…/_history/1 \\\n      --reason \"filed under the wrong patient, corrected in version 2\""
    )]
    Expunge {
        #[command(flatten)]
        dir: DataDir,
        /// The version, as `Type/id/_history/N`.
        version: String,
        /// Why (kept sealed in the access log with the action).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum PatientCommand {
    /// Crypto-shred a patient (GDPR Art. 17): destroy the patient's data key, so every version of
    /// every resource in their compartment becomes unreadable (reads answer 410 Gone) and leaves
    /// search. Other patients are untouched. This cannot be undone.
    #[command(after_help = "Example:\n  medvault patient erase --data-dir DIR 3f1c6d0e-…")]
    Erase {
        #[command(flatten)]
        dir: DataDir,
        /// The Patient resource id.
        patient_id: String,
    },
}

fn passphrase() -> Option<Passphrase> {
    std::env::var("MEDVAULT_PASSPHRASE")
        .ok()
        .and_then(Passphrase::new)
}

/// Opens the node in `dir` (and its `--database`); with `must_exist`, refuses to create one
/// (administrative commands on a mistyped directory must not silently start a new, empty node).
fn open_node(dir: &DataDir, must_exist: bool) -> anyhow::Result<Node> {
    let database =
        Database::parse(dir.database.as_deref()).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    let data_dir = &dir.data_dir;
    if must_exist && !data_dir.join(KEY_FILE).exists() {
        bail!(
            "no medvault node in {}: check --data-dir (a node is created by `medvault serve --data-dir DIR`)",
            data_dir.display()
        );
    }
    let node = Node::open_in(data_dir, &database, passphrase().as_ref()).with_context(|| {
        format!(
            "cannot open the node in {} ({})",
            data_dir.display(),
            database.describe(data_dir)
        )
    })?;
    if node.created && node.key_file_kind == KeyFileKind::Unprotected {
        eprintln!(
            "warning: MEDVAULT_PASSPHRASE is not set, so the new root key file {} is protected only by its file permissions (0600); for production, start over with MEDVAULT_PASSPHRASE set",
            data_dir.join(KEY_FILE).display()
        );
    }
    Ok(node)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta} left)") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_owned());
    pb
}

fn rotate(node: &Node) -> anyhow::Result<(u32, usize)> {
    let mut bar: Option<ProgressBar> = None;
    let out = medvault_node::admin::rotate_keys(node, |done, total| {
        bar.get_or_insert_with(|| progress(total, "rewrapping data keys"))
            .set_position(done);
    });
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    out.map_err(|e| anyhow::anyhow!("key rotation failed: {}", e.message))
}

fn erase(node: &Node, patient: &str) -> anyhow::Result<String> {
    use medvault_node::admin::{Erased, erase_patient};
    let id = ResourceId::new(patient).map_err(|e| anyhow::anyhow!("{e}"))?;
    match erase_patient(node, &id) {
        Ok(Erased::Already) => Ok(format!("patient {patient} was already erased")),
        Ok(Erased::Now(n)) => Ok(format!(
            "erased patient {patient}: data key destroyed, {n} resource(s) in the compartment are now unreadable"
        )),
        Err(e) if e.kind == medvault_node::ErrorKind::NotFound => {
            bail!("no data is stored for patient {patient}")
        }
        Err(e) => bail!("erasure failed: {}", e.message),
    }
}

/// `Type/id/_history/N` → (type, id, N).
fn parse_version_ref(text: &str) -> anyhow::Result<(String, ResourceId, u64)> {
    let parts: Vec<&str> = text.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [rt, id, "_history", v] => {
            let id = ResourceId::new(id).map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
            let v =
                v.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                    anyhow::anyhow!("{text}: the version must be a number from 1")
                })?;
            Ok(((*rt).to_owned(), id, v))
        }
        _ => bail!("{text}: name the version as Type/id/_history/N"),
    }
}

/// Records an administrative action in the access log and signs checkpoints covering it.
fn audit_admin(node: &Node, action: &str, target: Option<&str>) -> anyhow::Result<()> {
    audit_admin_with(node, action, target, None)
}

/// [`audit_admin`] with more detail (sealed like every audit detail).
fn audit_admin_with(
    node: &Node,
    action: &str,
    target: Option<&str>,
    extra: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let now = node.clock.now_micros();
    let record = medvault_node::audit::AuditRecord::admin(now, action, target).with("extra", extra);
    node.ledger
        .record_audit(node.access.as_ref(), now, &record)
        .and_then(|_| {
            node.ledger
                .checkpoint_now(node.store.as_ref(), node.access.as_ref())
        })
        .map_err(|e| anyhow::anyhow!("recording the action in the ledger failed: {}", e.message))?;
    Ok(())
}

fn parse_vkeys(texts: &[String], what: &str) -> anyhow::Result<Vec<VerifierKey>> {
    texts
        .iter()
        .map(|t| VerifierKey::parse_vkey(t).map_err(|e| anyhow::anyhow!("{what} {t:?}: {e}")))
        .collect()
}

fn verify_ledger(node: &Node, extra_witnesses: &[String]) -> anyhow::Result<String> {
    let mut keys = node
        .store
        .meta(medvault_node::witness::WITNESS_KEYS_META)?
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    keys.extend(extra_witnesses.iter().cloned());
    let witnesses = parse_vkeys(&keys, "--witness")?;
    let mut bar: Option<ProgressBar> = None;
    let report = medvault_node::verify::verify(
        node.store.as_ref(),
        node.access.as_ref(),
        &node.ledger,
        &witnesses,
        |done, total| {
            let pb = bar.get_or_insert_with(|| progress(total, "verifying ledger"));
            pb.set_position(done);
        },
    );
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let r = report.map_err(|e| anyhow::anyhow!("ledger verification failed: {e}"))?;
    let log = |name: &str, l: &medvault_node::verify::LogReport| {
        let witnessed = match &l.cosigned_size {
            Some(n) => format!(
                "newest witness-cosigned checkpoint covers {n} (cosigned by {})",
                l.cosigned_by.join(", ")
            ),
            None => "no witness has cosigned a checkpoint".to_owned(),
        };
        format!(
            "{name} log {} leaves, newest signed checkpoint covers {}, {witnessed}",
            l.leaves, l.checkpoint_size
        )
    };
    Ok(format!(
        "ledger verified: {}; {}; {} resource versions ({} amended: their original leaves checked too), {} audit records, {} pinned records tree heads reproduced",
        log("records", &r.records),
        log("access", &r.access),
        r.versions,
        r.amendments,
        r.audit_records,
        r.pins
    ))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let ServeArgs {
                config: _,
                dir,
                listen,
                max_body_bytes,
                request_timeout_seconds,
                base_url,
                log_format,
                witnesses,
                witness_for,
                session_idle_minutes,
                admin_session_idle_minutes,
                session_max_hours,
                webauthn_origin,
                step_up_seconds,
                policies,
                replace_default_policy,
                break_glass_max_minutes,
                tls_cert,
                tls_key,
                tls_dev_cert,
                peer_listen,
                clients,
            } = *args;
            let ClientArgs {
                trusted_proxies,
                client_address_header,
                anonymous_requests_per_minute,
                anonymous_summary_seconds,
            } = clients;
            init_logging(log_format);
            let policy = load_policy(&policies, replace_default_policy)?;
            let witnesses = witnesses
                .iter()
                .map(|w| {
                    RemoteWitness::parse(w).map_err(|e| anyhow::anyhow!("--witness {w:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let witness_for = parse_vkeys(&witness_for, "--witness-for")?;
            if let Some(o) = &webauthn_origin {
                let url = o
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--webauthn-origin {o:?}: {e}"))?;
                medvault_node::identity::passkeys::relying_party(&url)
                    .map_err(|e| anyhow::anyhow!("--webauthn-origin: {e}"))?;
            }
            let node = open_node(&dir, false)?;
            // The node's identity keys exist before anyone asks for its document.
            medvault_node::node_identity::NodeIdentity::load(&node)?;
            // After the node opened: the data directory exists (mode 0700) for a dev certificate.
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(medvault_server::tls::server_config(&cert, &key)?),
                _ if tls_dev_cert => {
                    let (cert, key, fingerprint) = medvault_server::tls::dev_cert(&dir.data_dir)?;
                    tracing::info!(
                        certificate = %cert.display(),
                        sha256 = %fingerprint,
                        "serving with the development certificate"
                    );
                    Some(medvault_server::tls::server_config(&cert, &key)?)
                }
                _ => None,
            };
            // Recorded so `ledger verify` can check cosignatures without being told the keys.
            let known = witnesses
                .iter()
                .map(|w| w.key.to_vkey())
                .collect::<Vec<_>>()
                .join("\n");
            if !known.is_empty() {
                node.store.write(Box::new(move |tx| {
                    tx.set_meta(medvault_node::witness::WITNESS_KEYS_META, &known)
                }))?;
            }
            if !node.created && node.key_file_kind == KeyFileKind::Unprotected {
                tracing::warn!(
                    "the root key file is not sealed with a passphrase (MEDVAULT_PASSPHRASE)"
                );
            }
            let config = ServerConfig {
                max_body_bytes,
                request_timeout: Duration::from_secs(request_timeout_seconds),
                base_url,
                witnesses: witnesses.into(),
                witness_for: witness_for.into(),
                sessions: SessionLimits {
                    aal2_idle: Duration::from_secs(60 * session_idle_minutes),
                    aal2_max: Duration::from_secs(3600 * session_max_hours),
                    aal3_idle: Duration::from_secs(60 * admin_session_idle_minutes),
                    aal3_max: Duration::from_secs(3600 * session_max_hours),
                },
                step_up_window: Duration::from_secs(step_up_seconds),
                policy: std::sync::Arc::new(policy),
                break_glass_max: Duration::from_secs(60 * break_glass_max_minutes),
                peer_listen,
                trusted_proxies: medvault_server::client_addr::TrustedProxies::new(
                    trusted_proxies,
                    match client_address_header {
                        ClientAddressHeader::XForwardedFor => {
                            medvault_server::client_addr::ForwardedHeader::XForwardedFor
                        }
                        ClientAddressHeader::Forwarded => {
                            medvault_server::client_addr::ForwardedHeader::Forwarded
                        }
                    },
                ),
                anonymous_requests_per_minute,
                anonymous_summary_interval: Duration::from_secs(anonymous_summary_seconds),
                webauthn_origin: Some(webauthn_origin.unwrap_or_else(|| {
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    format!("{scheme}://localhost:{}", listen.port())
                })),
                ..ServerConfig::default()
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let state = AppState::new(node, config);
            runtime
                .block_on(async {
                    match tls {
                        Some(tls) => medvault_server::serve_tls(state, listen, tls).await,
                        None => medvault_server::serve(state, listen).await,
                    }
                })
                .with_context(|| format!("cannot listen on {listen}"))?;
        }
        Command::Policy { command } => match command {
            PolicyCommand::Schema => print!("{}", medvault_policy::SCHEMA),
            PolicyCommand::Default => print!("{}", medvault_policy::DEFAULT_POLICY),
            PolicyCommand::Check {
                files,
                replace_default_policy,
            } => {
                let engine = load_policy(&files, replace_default_policy)?;
                println!("valid: {} policies", engine.len());
            }
        },
        Command::User { command } => run_user(command)?,
        Command::Peer { command } => sharing::run_peer(command)?,
        Command::Share { command } => sharing::run_share(command)?,
        Command::Client { command } => run_client(command)?,
        Command::Token { command } => run_token(command)?,
        Command::Keys {
            command: KeysCommand::Rotate { dir },
        } => {
            let node = open_node(&dir, true)?;
            let (version, n) = rotate(&node)?;
            audit_admin(&node, "keys-rotate", Some(&format!("KEK v{version}")))?;
            println!("KEK v{version} added; {n} data key(s) rewrapped under it");
        }
        Command::Patient {
            command: PatientCommand::Erase { dir, patient_id },
        } => {
            ResourceId::new(&patient_id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let node = open_node(&dir, true)?;
            let message = erase(&node, &patient_id)?;
            audit_admin(
                &node,
                "patient-erase",
                Some(&format!("Patient/{patient_id}")),
            )?;
            println!("{message}");
        }
        Command::Record {
            command:
                RecordCommand::Expunge {
                    dir,
                    version,
                    reason,
                },
        } => {
            let (rt, id, v) = parse_version_ref(&version)?;
            if reason.trim().len() < 10 {
                bail!("--reason must say why in at least 10 characters");
            }
            let node = open_node(&dir, true)?;
            let out = medvault_node::admin::expunge_version(&node, &rt, &id, v)
                .map_err(|e| anyhow::anyhow!("cannot expunge {version}: {}", e.message))?;
            audit_admin_with(
                &node,
                "record-expunge",
                Some(&format!("{rt}/{id}/_history/{v}")),
                Some(serde_json::json!({"reason": reason})),
            )?;
            match out {
                medvault_node::admin::Expunged::Now => {
                    println!("expunged {rt}/{id}/_history/{v}; its ledger commitment stays");
                }
                medvault_node::admin::Expunged::Already => {
                    println!("{rt}/{id}/_history/{v} was already expunged");
                }
            }
        }
        Command::Ledger {
            command: LedgerCommand::Verify { dir, witnesses },
        } => {
            let node = open_node(&dir, true)?;
            println!("{}", verify_ledger(&node, &witnesses)?);
        }
        Command::Node {
            command: NodeCommand::Show { dir },
        } => {
            let node = open_node(&dir, true)?;
            let id = medvault_node::node_identity::NodeIdentity::load(&node)?;
            let doc = id
                .document(node.ledger.base())
                .map_err(|e| anyhow::anyhow!("signing the node document: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Command::Node {
            command: NodeCommand::RotateKeys { dir },
        } => {
            let node = open_node(&dir, true)?;
            let old = medvault_node::node_identity::NodeIdentity::load(&node)?;
            let new = medvault_node::node_identity::NodeIdentity::rotate(&node)?;
            audit_admin(
                &node,
                "node-keys-rotate",
                Some(&format!(
                    "v{} {} -> v{} {}",
                    old.version,
                    old.fingerprint(),
                    new.version,
                    new.fingerprint()
                )),
            )?;
            println!(
                "node keys v{} replaced by v{}; new fingerprint {}",
                old.version,
                new.version,
                new.fingerprint()
            );
        }
        Command::Backup { dir, out, force } => {
            let database = Database::parse(dir.database.as_deref())
                .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
            let (counts, bytes) =
                transfer::backup(&dir.data_dir, &database, &out, force, passphrase().as_ref())?;
            println!(
                "backup written to {} ({bytes} bytes, {} rows; records log {} leaves, access log {} leaves); it holds no root key: keep {} safe separately",
                out.display(),
                counts.rows,
                counts.records_leaves,
                counts.access_leaves,
                dir.data_dir.join(KEY_FILE).display()
            );
        }
        Command::Restore { dir, file, force } => {
            let database = Database::parse(dir.database.as_deref())
                .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
            let rows = transfer::restore(
                &dir.data_dir,
                &database,
                &file,
                force,
                passphrase().as_ref(),
            )?;
            let node = open_node(&dir, true)?;
            let verified = verify_ledger(&node, &[])?;
            audit_admin(&node, "restore", None)?;
            println!("restored {rows} rows from {}; {verified}", file.display());
        }
        Command::Migrate { from, to, force } => {
            let database = Database::parse(Some(&to)).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
            let counts = transfer::migrate(&from, &database, force)?;
            let dir = DataDir {
                data_dir: from,
                database: Some(to),
            };
            let node = open_node(&dir, true)?;
            let verified = verify_ledger(&node, &[])?;
            audit_admin(&node, "migrate", None)?;
            println!(
                "migrated {} rows to {}; {verified}; start the node with --database pointing there",
                counts.rows,
                database.describe(&dir.data_dir)
            );
        }
        Command::Ledger {
            command: LedgerCommand::Keys { dir },
        } => {
            let node = open_node(&dir, true)?;
            println!(
                "records log key: {}",
                node.ledger.records().verifier().to_vkey()
            );
            println!(
                "access log key:  {}",
                node.ledger.access().verifier().to_vkey()
            );
            println!("witness key:     {}", node.ledger.cosigner().to_vkey());
            println!(
                "ML-DSA-44 cosigner key (on both logs' checkpoints): {}",
                node.ledger.pq_cosigner().to_vkey()
            );
        }
    }
    Ok(())
}

/// The command line, with `serve`'s settings from `--config` and `MEDVAULT__…` variables added
/// where no flag gave them (see [`config`]).
fn parse_command_line() -> anyhow::Result<Cli> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = Cli::command();
    let matches = cmd.clone().get_matches_from(argv.clone());
    let matches = match matches.subcommand() {
        Some(("serve", serve)) => {
            let settings =
                config::Settings::load(config::path(serve).as_deref(), std::env::vars())?;
            if settings.is_empty() {
                matches
            } else {
                let argv = config::with_settings(&cmd, serve, argv, &settings)?;
                cmd.get_matches_from(argv)
            }
        }
        _ => matches,
    };
    Ok(Cli::from_arg_matches(&matches)?)
}

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("medvault: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medvault: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A node error as the CLI's one plain line: its message, safe to show.
fn fail(e: impl Into<medvault_node::Error>) -> anyhow::Error {
    anyhow::anyhow!("{}", e.into().message)
}
