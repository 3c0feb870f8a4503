//! People and apps: `medvault user …` (accounts), `medvault client …` (OAuth2 clients) and
//! `medvault token …` (API bearer tokens).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Subcommand, ValueEnum};
use medvault_core::Role;

use super::{DataDir, audit_admin, fail, open_node, resource_id};

pub(crate) const TOKEN_ABOUT: &str = "\
API bearer tokens, for automation on this host (scripts, integrations, monitoring).

A token grants its role with no second factor: having the node's key file on this host, which
creating one requires, stands in for it. So tokens are for machines run by the node's operators;
people log in with a password and a second factor (POST /auth/login, or /auth/ui) and get
sessions, and apps use OAuth2 (`medvault client register`). Tokens expire (30 days unless
--days says otherwise, at most 365) and can be revoked; `token list` shows when each was last
used. A running server honours a revocation within 30 seconds (it trusts a token it checked
that long).";

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum RoleArg {
    /// Full access to the FHIR API.
    Admin,
    /// Reads the audit trail (GET /fhir/AuditEvent) and nothing else.
    Auditor,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
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
    /// Print a one-time enrolment code for an admin's, auditor's or privacy officer's first
    /// second factor (code on standard output, what it is for on standard error). Their
    /// password alone does not let them enrol an authenticator: they send the code with
    /// POST /auth/totp/enroll {"enrolment_code": "…"}. Give it to the person over another
    /// channel than their password. A new code replaces the last; it is spent by the enrolment.
    #[command(
        after_help = "Example:\n  medvault user enrolment-code --data-dir DIR a.admin --hours 4"
    )]
    EnrolmentCode {
        #[command(flatten)]
        dir: DataDir,
        /// Login name.
        username: String,
        /// How long the code is valid, in hours (1 to 168).
        #[arg(long, default_value_t = medvault_node::identity::login::ENROLMENT_CODE_HOURS,
              value_parser = clap::value_parser!(u32).range(1..=168))]
        hours: u32,
    },
    /// List accounts: id, name, role, state, second factor.
    #[command(after_help = "Example:\n  medvault user list --data-dir DIR")]
    List {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PersonRole {
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

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
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

pub(crate) fn run_user(command: UserCommand) -> anyhow::Result<()> {
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
        UserCommand::EnrolmentCode {
            dir,
            username,
            hours,
        } => {
            let node = open_node(&dir, true)?;
            let user = medvault_node::identity::accounts::find_user(&node, &username)
                .map_err(fail)?
                .ok_or_else(|| anyhow::anyhow!("no such user: {username}"))?;
            if !medvault_node::identity::login::needs_enrolment_code(&user) {
                bail!(
                    "{username} is a {} account: it enrols its first second factor with its password alone (codes are for admins, auditors and privacy officers)",
                    user.role
                );
            }
            let (code, expires) =
                medvault_node::identity::login::issue_enrolment_code(&node, &user, hours)
                    .map_err(fail)?;
            audit_admin(&node, "user-enrolment-code", Some(&user.id))?;
            eprintln!(
                "one-time enrolment code for {username} ({}), valid until {}:",
                user.id,
                medvault_node::clock::instant(expires)
            );
            println!("{}", code.as_str());
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

pub(crate) fn run_client(command: ClientCommand) -> anyhow::Result<()> {
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

pub(crate) fn run_token(command: TokenCommand) -> anyhow::Result<()> {
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
