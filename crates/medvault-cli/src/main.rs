//! `medvault`: run and administer a medvault node.

use std::path::PathBuf;
use std::process::ExitCode;

mod commands;
mod config;

/// mimalloc instead of the system allocator: the request and import paths allocate many small
/// JSON values, and glibc's malloc spent about 40 % of an import's CPU (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use commands::DataDir;
use commands::accounts::{ClientCommand, TOKEN_ABOUT, TokenCommand, UserCommand};
use commands::ledger::{LedgerCommand, NodeCommand};
use commands::policy::PolicyCommand;
use commands::records::{KeysCommand, PatientCommand, RecordCommand};
use commands::serve::ServeArgs;
use commands::sharing;

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
    /// Load FHIR data in bulk: Bundles (transaction, batch or collection) and ndjson files, e.g.
    /// Synthea's output/fhir directory. Each file is one transaction (all of it or nothing).
    /// An import only adds resources: they keep the ids they carry, and a file naming a
    /// Type/id that already exists on the node is refused (pass --update to replace existing
    /// resources); deletes, patches and conditional requests are refused. Resources are held to
    /// the API's size limits (1 MiB, 8 MiB for documents and definitions), a file to 512 MiB.
    /// An interrupted or failed import resumes where it stopped when run again: files already
    /// imported (by content) are skipped. Works while `medvault serve` runs.
    #[command(
        after_help = "Example:\n  medvault import --data-dir /var/lib/medvault synthea/output/fhir\n  medvault import --data-dir DIR export/Patient.ndjson export/Observation.ndjson\n  medvault import --data-dir DIR --update corrected/Observation.ndjson"
    )]
    Import(Box<commands::import::ImportArgs>),
    /// Compliance from live evidence: a signed report answering HIPAA, GDPR and ISO/IEC 27001
    /// controls from the node's state, and checking such a report.
    Compliance {
        #[command(subcommand)]
        command: commands::compliance::ComplianceCommand,
    },
    /// Breach response (GDPR Art. 33/34, HITECH): assess from the access log what a principal
    /// disclosed or a key could open, with thresholds, deadlines and draft notices; keep the
    /// breach register.
    Breach {
        #[command(subcommand)]
        command: commands::breach::BreachCommand,
    },
    /// Data subjects' rights (GDPR Art. 15–21): requests with their one-month deadline, and
    /// the patient's signed export (record, history, disclosures, processing).
    Subject {
        #[command(subcommand)]
        command: commands::subject::SubjectCommand,
    },
    /// Sentinel, the insider-snooping and attack detector: export a node's access log and score
    /// it offline (live scoring, alerts and responses run inside `serve`).
    Sentinel {
        #[command(subcommand)]
        command: commands::sentinel::SentinelCommand,
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Policy { command } => commands::policy::run(command),
        Command::User { command } => commands::accounts::run_user(command),
        Command::Peer { command } => sharing::run_peer(command),
        Command::Share { command } => sharing::run_share(command),
        Command::Client { command } => commands::accounts::run_client(command),
        Command::Token { command } => commands::accounts::run_token(command),
        Command::Keys { command } => commands::records::run_keys(command),
        Command::Patient { command } => commands::records::run_patient(command),
        Command::Record { command } => commands::records::run_record(command),
        Command::Ledger { command } => commands::ledger::run_ledger(command),
        Command::Node { command } => commands::ledger::run_node(command),
        Command::Import(args) => commands::import::run(*args),
        Command::Compliance { command } => commands::compliance::run(command),
        Command::Breach { command } => commands::breach::run(command),
        Command::Subject { command } => commands::subject::run(command),
        Command::Sentinel { command } => commands::sentinel::run(command),
        Command::Backup { dir, out, force } => commands::transfer::run_backup(dir, out, force),
        Command::Restore { dir, file, force } => commands::transfer::run_restore(dir, file, force),
        Command::Migrate { from, to, force } => commands::transfer::run_migrate(from, to, force),
    }
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
