//! `medvault subject`: data subjects' requests (GDPR Art. 15–21) and the patient's signed
//! export.

use std::path::PathBuf;

use anyhow::Context as _;
use medvault_compliance::flags::{self, Flag};
use medvault_compliance::subject::{self, Requester, Right};
use serde_json::Value;

use medvault_node::audit::{os_agent, os_user};

use super::{DataDir, open_node, plain, print_json, read_document, resource_id};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum SubjectCommand {
    /// Open a data subject's request (access, rectification, erasure, restriction,
    /// portability or objection), due in one calendar month (GDPR Art. 12(3)). Prints its id.
    #[command(
        after_help = "Example:\n  medvault subject request --data-dir DIR --patient 7f3c… --right access --note \"letter of 2026-12-01\""
    )]
    Request {
        #[command(flatten)]
        dir: DataDir,
        /// The patient's resource id.
        #[arg(long, value_name = "ID")]
        patient: String,
        /// access, rectification, erasure, restriction, portability or objection.
        #[arg(long)]
        right: String,
        /// What was asked, as received.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// List the requests with their deadlines (newest first).
    Requests {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Record the answer to a request (a refusal says why).
    Answer {
        #[command(flatten)]
        dir: DataDir,
        /// The request (dsr_…).
        id: String,
        /// answered or refused.
        #[arg(long)]
        outcome: String,
        /// What was done, or why refused.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
    /// Answer an access or portability request with the patient's export: their record
    /// (ndjson), earlier versions, the accounting of disclosures and how the node processes
    /// their data, signed by the node and pinned to both logs.
    #[command(
        after_help = "Example:\n  medvault subject export --data-dir DIR dsr_… --out export.json\n  medvault subject verify export.json --data-dir DIR"
    )]
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// The request answered (dsr_…).
        id: String,
        /// Write it here (replaced if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Place a legal hold on a patient's records: their erasure is refused until it is
    /// released. Prints its id.
    Hold {
        #[command(flatten)]
        dir: DataDir,
        /// The patient's resource id.
        #[arg(long, value_name = "ID")]
        patient: String,
        /// Why (a case, a regulation).
        #[arg(long)]
        reason: String,
    },
    /// Release a legal hold, saying why.
    Release {
        #[command(flatten)]
        dir: DataDir,
        /// The hold (hold_…).
        id: String,
        /// Why it ends.
        #[arg(long)]
        reason: String,
    },
    /// List legal holds.
    Holds {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Restrict processing of a patient's records (GDPR Art. 18): until it is lifted the
    /// policy lets nobody but the patient read or write them (break-glass excepted, and
    /// admins managing consents); they are only stored. Prints its id.
    #[command(
        after_help = "Example:\n  medvault subject restrict --data-dir DIR --patient 7f3c… --request dsr_… --reason \"accuracy contested (Art. 18(1)(a))\"\n  medvault subject lift --data-dir DIR rst_… --reason \"record corrected\""
    )]
    Restrict {
        #[command(flatten)]
        dir: DataDir,
        /// The patient's resource id.
        #[arg(long, value_name = "ID")]
        patient: String,
        /// Why (which ground of Art. 18(1)).
        #[arg(long)]
        reason: String,
        /// The patient's restriction request it answers (dsr_…).
        #[arg(long, value_name = "ID")]
        request: Option<String>,
    },
    /// Lift a restriction of processing, saying why (tell the patient first, Art. 18(3)).
    Lift {
        #[command(flatten)]
        dir: DataDir,
        /// The restriction (rst_…).
        id: String,
        /// Why it ends.
        #[arg(long)]
        reason: String,
    },
    /// List restrictions of processing.
    Restrictions {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Record a patient's objection to research use (GDPR Art. 21): an active Consent that
    /// denies every research purpose (HRESCH, CLINTRCH), which the policy applies at once.
    /// With --request, answers the patient's objection request. Prints the Consent's id.
    Object {
        #[command(flatten)]
        dir: DataDir,
        /// The patient's resource id.
        #[arg(long, value_name = "ID")]
        patient: String,
        /// The patient's objection request it answers (dsr_…).
        #[arg(long, value_name = "ID")]
        request: Option<String>,
    },
    /// Check an export or an erasure certificate: the node's signature over all of it, its
    /// checkpoints, an export's counts; with --data-dir, that it comes from that node's
    /// history. One line; non-zero if it fails.
    Verify {
        /// The export file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The signing node's fingerprint expected (SHA-256:…).
        #[arg(long, value_name = "SHA-256:HEX")]
        fingerprint: Option<String>,
        /// Also check its checkpoints against this node's logs.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// With --data-dir: its PostgreSQL database, if not the embedded one.
        #[arg(long, value_name = "URL", requires = "data_dir")]
        database: Option<String>,
    },
}

/// Places `flag` on `patient`; prints its id.
fn place(
    dir: &DataDir,
    flag: &'static Flag,
    patient: String,
    reason: &str,
    request: Option<&str>,
) -> anyhow::Result<()> {
    let node = open_node(dir, true)?;
    let patient = resource_id("--patient", Some(patient))?
        .ok_or_else(|| anyhow::anyhow!("--patient is required"))?;
    let h = flags::place(
        &node,
        flag,
        &patient,
        reason,
        request,
        &os_user(),
        &os_agent(),
    )
    .map_err(plain)?;
    println!("{}", h["id"].as_str().unwrap_or_default());
    Ok(())
}

fn end(dir: &DataDir, flag: &'static Flag, id: &str, reason: &str) -> anyhow::Result<()> {
    let node = open_node(dir, true)?;
    flags::end(&node, flag, id, reason, &os_user(), &os_agent()).map_err(plain)?;
    println!("{id} {}", flag.ended);
    Ok(())
}

fn list(dir: &DataDir, flag: &'static Flag) -> anyhow::Result<()> {
    let node = open_node(dir, true)?;
    print_json(&Value::Array(flags::list(&node, flag).map_err(plain)?))
}

/// Most bytes of an export `verify` reads.
const MAX_EXPORT_BYTES: u64 = 512 * 1024 * 1024;

pub(crate) fn run(cmd: SubjectCommand) -> anyhow::Result<()> {
    match cmd {
        SubjectCommand::Request {
            dir,
            patient,
            right,
            note,
        } => {
            let node = open_node(&dir, true)?;
            let patient = resource_id("--patient", Some(patient))?
                .ok_or_else(|| anyhow::anyhow!("--patient is required"))?;
            let right = Right::parse(&right).map_err(plain)?;
            let r = subject::open_request(
                &node,
                &patient,
                right,
                note.as_deref(),
                &os_user(),
                &os_agent(),
            )
            .map_err(plain)?;
            println!(
                "{} ({} request, due {})",
                r["id"].as_str().unwrap_or_default(),
                right.as_str(),
                r["due"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        SubjectCommand::Requests { dir } => {
            let node = open_node(&dir, true)?;
            print_json(&Value::Array(
                subject::requests(&node, medvault_compliance::register::Page::ALL)
                    .map_err(plain)?
                    .0,
            ))
        }
        SubjectCommand::Answer {
            dir,
            id,
            outcome,
            note,
        } => {
            let node = open_node(&dir, true)?;
            subject::answer_request(
                &node,
                &id,
                &outcome,
                note.as_deref(),
                &os_user(),
                &os_agent(),
            )
            .map_err(plain)?;
            println!("{id}: {outcome}");
            Ok(())
        }
        SubjectCommand::Export { dir, id, out } => {
            let node = open_node(&dir, true)?;
            let request = subject::show_request(&node, &id).map_err(plain)?;
            let patient = request["patient"]
                .as_str()
                .and_then(|p| p.strip_prefix("Patient/"))
                .map(str::to_owned);
            let patient = resource_id("the request's patient", patient)?
                .ok_or_else(|| anyhow::anyhow!("{id} names no patient"))?;
            let by = os_user();
            let export = subject::export(
                &node,
                &patient,
                &Requester::Staff {
                    request: &id,
                    by: &by,
                },
                &os_agent(),
            )
            .map_err(plain)?;
            std::fs::write(&out, serde_json::to_string(&export)? + "\n")
                .with_context(|| format!("{}", out.display()))?;
            let c = &export["counts"];
            println!(
                "{id} answered: {} resources, {} earlier versions, {} disclosures in {}",
                c["resources"],
                c["earlier_versions"],
                c["disclosures"],
                out.display()
            );
            Ok(())
        }
        SubjectCommand::Hold {
            dir,
            patient,
            reason,
        } => place(&dir, &flags::HOLD, patient, &reason, None),
        SubjectCommand::Release { dir, id, reason } => end(&dir, &flags::HOLD, &id, &reason),
        SubjectCommand::Holds { dir } => list(&dir, &flags::HOLD),
        SubjectCommand::Restrict {
            dir,
            patient,
            reason,
            request,
        } => place(
            &dir,
            &flags::RESTRICTION,
            patient,
            &reason,
            request.as_deref(),
        ),
        SubjectCommand::Lift { dir, id, reason } => end(&dir, &flags::RESTRICTION, &id, &reason),
        SubjectCommand::Restrictions { dir } => list(&dir, &flags::RESTRICTION),
        SubjectCommand::Object {
            dir,
            patient,
            request,
        } => {
            let node = open_node(&dir, true)?;
            let patient = resource_id("--patient", Some(patient))?
                .ok_or_else(|| anyhow::anyhow!("--patient is required"))?;
            let consent = subject::object_to_research(
                &node,
                &patient,
                request.as_deref(),
                &os_user(),
                &os_agent(),
            )
            .map_err(plain)?;
            println!(
                "{} (Consent denying research use of Patient/{patient})",
                consent["id"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        SubjectCommand::Verify {
            file,
            fingerprint,
            data_dir,
            database,
        } => {
            let text = read_document(&file, MAX_EXPORT_BYTES, "an export")?;
            let value = medvault_compliance::html::parse_unique(&text)
                .map_err(|e| anyhow::anyhow!("{}: not an export ({e})", file.display()))?;
            let node = data_dir
                .map(|data_dir| open_node(&DataDir { data_dir, database }, true))
                .transpose()?;
            if value.get("format").and_then(Value::as_str)
                == Some(medvault_compliance::erasure::CERTIFICATE_FORMAT)
            {
                let c = medvault_compliance::erasure::verify_certificate(
                    &value,
                    fingerprint.as_deref(),
                    node.as_ref(),
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                println!(
                    "erasure certificate verified: {} erased by node {} ({}) at {}: {} resources made unreadable{}",
                    c.patient,
                    c.node,
                    c.fingerprint,
                    c.generated,
                    c.resources,
                    if node.is_some() {
                        ", from this node's history"
                    } else {
                        ""
                    }
                );
                return Ok(());
            }
            let v = subject::verify(&value, fingerprint.as_deref(), node.as_ref())
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!(
                "export verified: {} signed by node {} ({}) at {}: {} resources, {} earlier versions, {} disclosures{}",
                v.patient,
                v.node,
                v.fingerprint,
                v.generated,
                v.counts[0],
                v.counts[1],
                v.counts[2],
                if node.is_some() {
                    ", from this node's history"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}
