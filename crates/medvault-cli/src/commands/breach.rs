//! `medvault breach`: assess a breach from the access log, and keep the breach register.

use std::path::PathBuf;

use anyhow::Context as _;
use medvault_compliance::breach::{self, Window};
use medvault_compliance::register::{self, Given, NewBreach, Recipient};
use medvault_node::Node;
use serde_json::{Value, json};

use medvault_node::audit::{os_agent, os_user};

use super::{DataDir, audit_admin_with, open_node, plain, print_json, progress};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BreachCommand {
    /// What a principal (a user, an app, an API token) disclosed in a window, read from the
    /// access log; or, with --key, what a compromised key could open. Prints the affected
    /// patients, the resource types touched, counts by state and country (from the patients'
    /// addresses), whether HITECH's 500-person thresholds are crossed (HHS at once, media in a
    /// State), the deadlines (GDPR 72 hours, HITECH 60 days) and draft notices. Making it is
    /// recorded in the access log.
    #[command(
        after_help = "Examples:\n  medvault breach assess --data-dir /var/lib/medvault --principal usr_3f… --from 2026-11-01 --to 2026-11-30\n  medvault breach assess --data-dir DIR --principal jdoe --from 2026-11-01T08:00:00Z --to 2026-11-01T18:00:00Z --out assessment.json\n  medvault breach assess --data-dir DIR --key kek-1\n  medvault breach assess --data-dir DIR --principal tok_… --from 2026-11-01 --to 2026-11-02 --notice patient"
    )]
    Assess {
        #[command(flatten)]
        dir: DataDir,
        #[command(flatten)]
        target: Target,
        /// When the breach was discovered (deadlines run from it); now if not given.
        #[arg(long, value_name = "TIME")]
        discovered: Option<String>,
        /// Write the assessment (JSON) here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print one draft notice as text instead of the JSON.
        #[arg(long, value_enum, value_name = "TO")]
        notice: Option<NoticeKind>,
    },
    /// Open a breach register entry (GDPR Art. 33(5)). With --principal/--from/--to or --key
    /// the assessment is made again from the log and kept in the entry (so the entry's
    /// affected patients are the log's, not a file's). Prints the entry's id; deadlines run
    /// from --discovered.
    #[command(
        after_help = "Example:\n  medvault breach record --data-dir DIR --title \"Clinician browsed records without a reason\" --description \"…\" --discovered 2026-12-01T09:30:00Z --principal jdoe --from 2026-11-01 --to 2026-11-30"
    )]
    Record {
        #[command(flatten)]
        dir: DataDir,
        /// One line naming the breach.
        #[arg(long)]
        title: String,
        /// What happened, as far as known.
        #[arg(long)]
        description: String,
        /// When it was discovered; now if not given.
        #[arg(long, value_name = "TIME")]
        discovered: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Record a notice given (to the authority, individuals, HHS or the media), or that none
    /// was required (--not-required with --reason).
    Notify {
        #[command(flatten)]
        dir: DataDir,
        /// The entry (brc_…).
        id: String,
        /// authority, individuals, hhs or media.
        #[arg(long, value_name = "RECIPIENT")]
        to: String,
        /// When the notice was given; now if not given.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// The recipient's case number, or why no notice was required.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// No notice was required (GDPR Art. 33(1): unlikely to result in a risk).
        #[arg(long)]
        not_required: bool,
    },
    /// Close an entry, saying why.
    Close {
        #[command(flatten)]
        dir: DataDir,
        /// The entry (brc_…).
        id: String,
        /// Why it is closed.
        #[arg(long)]
        reason: String,
    },
    /// List the register (newest first) with each entry's deadlines.
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Show one entry with its assessment.
    Show {
        #[command(flatten)]
        dir: DataDir,
        /// The entry (brc_…).
        id: String,
    },
}

/// Whose actions (or which key) an assessment covers.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// A user id (usr_…) or user name, an API token id (tok_…) or an app's client id.
    #[arg(long, value_name = "USER|CLIENT|TOKEN", conflicts_with = "key")]
    principal: Option<String>,
    /// A compromised key: a KEK version (kek-1), a patient's data key (Patient/<id>) or a
    /// shared key (@tenant).
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Start of the window: RFC 3339 or a date (its start, UTC).
    #[arg(long, value_name = "TIME", requires = "principal")]
    from: Option<String>,
    /// End of the window: RFC 3339 or a date (its end, UTC).
    #[arg(long, value_name = "TIME", requires = "principal")]
    to: Option<String>,
}

impl Target {
    fn given(&self) -> bool {
        self.principal.is_some() || self.key.is_some()
    }

    /// Assesses it (recorded in the access log first), with a progress bar.
    fn assess(&self, node: &Node, discovered: i64) -> anyhow::Result<breach::Assessment> {
        if let Some(key) = &self.key {
            audit_admin_with(node, "breach-assess", Some(key), None)?;
            return breach::assess_key(node, key, discovered).map_err(plain);
        }
        let (Some(p), Some(f), Some(t)) = (&self.principal, &self.from, &self.to) else {
            anyhow::bail!("give --principal with --from and --to, or --key");
        };
        let from = time_arg(node, "--from", Some(f), false)?;
        let to = time_arg(node, "--to", Some(t), true)?;
        let window = Window::new(from, to, discovered).map_err(plain)?;
        let who = breach::principal(node, p).map_err(plain)?;
        audit_admin_with(
            node,
            "breach-assess",
            Some(&who.id),
            Some(json!({"from": f, "to": t})),
        )?;
        let mut bar = None;
        let a = breach::assess_principal(node, who, window, |done, total| {
            bar.get_or_insert_with(|| progress(total, "reading the access log"))
                .set_position(done);
        })
        .map_err(plain)?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(a)
    }
}

/// Which draft notice to print.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum NoticeKind {
    /// To each affected person.
    Patient,
    /// To the regulator.
    Regulator,
}

fn time_arg(node: &Node, what: &str, text: Option<&str>, end: bool) -> anyhow::Result<i64> {
    match text {
        Some(t) => breach::parse_time(what, t, end).map_err(|e| anyhow::anyhow!("{e}")),
        None => Ok(node.clock.now_micros()),
    }
}

pub(crate) fn run(cmd: BreachCommand) -> anyhow::Result<()> {
    match cmd {
        BreachCommand::Assess {
            dir,
            target,
            discovered,
            out,
            notice,
        } => {
            if !target.given() {
                anyhow::bail!("give --principal with --from and --to, or --key");
            }
            let node = open_node(&dir, true)?;
            let discovered = time_arg(&node, "--discovered", discovered.as_deref(), false)?;
            let a = target.assess(&node, discovered)?;
            if let Some(kind) = notice {
                let text = match kind {
                    NoticeKind::Patient => &a.notices.patient,
                    NoticeKind::Regulator => &a.notices.regulator,
                };
                print!("{text}");
                return Ok(());
            }
            let v = serde_json::to_value(&a)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
                        .with_context(|| format!("{}", path.display()))?;
                    println!(
                        "{} patients affected{}; supervisory authority by {}, individuals by {}{}",
                        a.patients.len(),
                        if a.hitech.hhs_immediate {
                            " (500 or more: HHS at once)"
                        } else {
                            ""
                        },
                        a.gdpr.authority_due,
                        a.hitech.individuals_due,
                        if a.hitech.media.is_empty() {
                            String::new()
                        } else {
                            format!("; media in {}", a.hitech.media.join(", "))
                        }
                    );
                }
                None => print_json(&v)?,
            }
            Ok(())
        }
        BreachCommand::Record {
            dir,
            title,
            description,
            discovered,
            target,
        } => {
            let node = open_node(&dir, true)?;
            let discovered = time_arg(&node, "--discovered", discovered.as_deref(), false)?;
            let assessment = target
                .given()
                .then(|| target.assess(&node, discovered))
                .transpose()?;
            let by = os_user();
            let entry = register::record_breach(
                &node,
                &NewBreach {
                    title: &title,
                    description: &description,
                    discovered_micros: discovered,
                    by: &by,
                    assessment: assessment.as_ref(),
                },
                &os_agent(),
            )
            .map_err(plain)?;
            checkpoint(&node)?;
            println!(
                "breach {} recorded; supervisory authority by {}",
                entry["id"].as_str().unwrap_or_default(),
                entry["deadlines"]["authority"]["due"]
                    .as_str()
                    .unwrap_or_default()
            );
            Ok(())
        }
        BreachCommand::Notify {
            dir,
            id,
            to,
            at,
            reason,
            not_required,
        } => {
            let node = open_node(&dir, true)?;
            let at = time_arg(&node, "--at", at.as_deref(), false)?;
            let to = Recipient::parse(&to).map_err(plain)?;
            let by = os_user();
            register::notify(
                &node,
                &id,
                &Given {
                    to,
                    at_micros: at,
                    reference: reason.as_deref(),
                    not_required,
                    by: &by,
                },
                &os_agent(),
            )
            .map_err(plain)?;
            checkpoint(&node)?;
            println!("breach {id}: notice to {} recorded", to.as_str());
            Ok(())
        }
        BreachCommand::Close { dir, id, reason } => {
            let node = open_node(&dir, true)?;
            register::close(&node, &id, &reason, &os_user(), &os_agent()).map_err(plain)?;
            checkpoint(&node)?;
            println!("breach {id} closed");
            Ok(())
        }
        BreachCommand::List { dir } => {
            let node = open_node(&dir, true)?;
            print_json(&Value::Array(
                register::list(&node, register::Page::ALL).map_err(plain)?.0,
            ))
        }
        BreachCommand::Show { dir, id } => {
            let node = open_node(&dir, true)?;
            print_json(&register::show(&node, &id).map_err(plain)?)
        }
    }
}

/// Signs checkpoints covering the register change just recorded.
fn checkpoint(node: &Node) -> anyhow::Result<()> {
    node.ledger
        .checkpoint_now(node.store.as_ref(), node.access.as_ref())
        .map(drop)
        .map_err(|e| anyhow::anyhow!("recording the action in the ledger failed: {}", e.message))
}
