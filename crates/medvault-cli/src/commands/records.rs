//! Keys and records administration: `medvault keys rotate`, `medvault record expunge`,
//! `medvault patient erase`.

use anyhow::bail;
use clap::Subcommand;
use indicatif::ProgressBar;
use medvault_core::{ResourceId, ResourceType};
use medvault_node::node::Node;

use super::{DataDir, audit_admin, audit_admin_with, open_node, progress};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Add a new key-encryption-key (KEK) version and rewrap every data key under it.
    /// Records are not re-encrypted and stay readable throughout, also by a running server.
    #[command(after_help = "Example:\n  medvault keys rotate --data-dir DIR")]
    Rotate {
        #[command(flatten)]
        dir: DataDir,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RecordCommand {
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
pub(crate) enum PatientCommand {
    /// Crypto-shred a patient (GDPR Art. 17): destroy the patient's data key, so every version of
    /// every resource in their compartment becomes unreadable (reads answer 410 Gone) and leaves
    /// search. Other patients are untouched. This cannot be undone. Refused while a legal hold
    /// is in force (`medvault subject hold`). Writes the node's signed erasure certificate
    /// with --certificate; with --request, answers that erasure request.
    #[command(
        after_help = "Example:\n  medvault patient erase --data-dir DIR 3f1c6d0e-… --request dsr_… --certificate erasure.json\n  medvault subject verify erasure.json --data-dir DIR"
    )]
    Erase {
        #[command(flatten)]
        dir: DataDir,
        /// The Patient resource id.
        patient_id: String,
        /// The erasure request (dsr_…) this answers.
        #[arg(long, value_name = "ID")]
        request: Option<String>,
        /// Write the signed erasure certificate here.
        #[arg(long, value_name = "FILE")]
        certificate: Option<std::path::PathBuf>,
    },
}

pub(crate) fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate { dir } => {
            let node = open_node(&dir, true)?;
            let (version, n) = rotate(&node)?;
            audit_admin(&node, "keys-rotate", Some(&format!("KEK v{version}")))?;
            println!("KEK v{version} added; {n} data key(s) rewrapped under it");
        }
    }
    Ok(())
}

pub(crate) fn run_record(command: RecordCommand) -> anyhow::Result<()> {
    match command {
        RecordCommand::Expunge {
            dir,
            version,
            reason,
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
    }
    Ok(())
}

pub(crate) fn run_patient(command: PatientCommand) -> anyhow::Result<()> {
    match command {
        PatientCommand::Erase {
            dir,
            patient_id,
            request,
            certificate,
        } => {
            ResourceId::new(&patient_id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let node = open_node(&dir, true)?;
            let message = erase(
                &node,
                &patient_id,
                request.as_deref(),
                certificate.as_deref(),
            )?;
            audit_admin(
                &node,
                "patient-erase",
                Some(&format!("Patient/{patient_id}")),
            )?;
            println!("{message}");
        }
    }
    Ok(())
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

fn erase(
    node: &Node,
    patient: &str,
    request: Option<&str>,
    certificate: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let id = ResourceId::new(patient).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (by, agent) = (
        medvault_node::audit::os_user(),
        medvault_node::audit::os_agent(),
    );
    match medvault_compliance::erasure::erase(node, &id, request, &by, &agent) {
        Ok(None) => Ok(format!("patient {patient} was already erased")),
        Ok(Some(cert)) => {
            if let Some(path) = certificate {
                std::fs::write(path, serde_json::to_string_pretty(&cert)? + "\n")
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            Ok(format!(
                "erased patient {patient}: data key destroyed, {} resource(s) in the compartment are now unreadable{}",
                cert["destroyed"]["resources"],
                certificate.map_or(String::new(), |p| format!(
                    "; certificate in {}",
                    p.display()
                ))
            ))
        }
        Err(medvault_compliance::Error::Node(e))
            if e.kind == medvault_node::ErrorKind::NotFound =>
        {
            bail!("no data is stored for patient {patient}")
        }
        Err(e) => bail!("erasure refused: {e}"),
    }
}

/// `Type/id/_history/N` → (type, id, N).
fn parse_version_ref(text: &str) -> anyhow::Result<(ResourceType, ResourceId, u64)> {
    let parts: Vec<&str> = text.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [rt, id, "_history", v] => {
            // (Whether the node serves the type is checked on the node, as the server does.)
            let rt = ResourceType::new(rt)
                .map_err(|_| anyhow::anyhow!("cannot expunge {text}: unknown resource type"))?;
            let id = ResourceId::new(id).map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
            let v =
                v.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
                    anyhow::anyhow!("{text}: the version must be a number from 1")
                })?;
            Ok((rt, id, v))
        }
        _ => bail!("{text}: name the version as Type/id/_history/N"),
    }
}
