//! `medvault compliance`: the node's signed compliance report, and checking one.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::ValueEnum;

use super::{DataDir, audit_admin, open_node, progress, read_bytes};

/// The report's form.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// The signed JSON (what `compliance verify` checks).
    Json,
    /// A page for people, with the signed JSON embedded (verifiable too).
    Html,
    /// A PDF for people, with the signed JSON attached (verifiable too).
    Pdf,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ComplianceCommand {
    /// Answer HIPAA (45 CFR §164.312, §164.308(a)(1)(ii)(D), §164.528), GDPR (Art. 5(1)(f),
    /// 25, 30, 32) and ISO/IEC 27001:2022 Annex A controls from the node's live state: one
    /// row per control, pass | warn | fail | not-applicable, with the evidence behind it.
    /// Both logs are verified as part of it (a progress bar shows how far). The report is
    /// signed by the node's identity key (Ed25519 + ML-DSA-65) and pinned to the newest
    /// checkpoint of each log; making it is recorded in the access log.
    /// docs/compliance.md explains each control's rule.
    #[command(
        after_help = "Examples:\n  medvault compliance report --data-dir /var/lib/medvault --out report.json\n  medvault compliance report --data-dir /var/lib/medvault --format html --out report.html\n  medvault compliance report --data-dir /var/lib/medvault --format pdf --out report.pdf\n  medvault compliance verify report.pdf --data-dir /var/lib/medvault"
    )]
    Report {
        #[command(flatten)]
        dir: DataDir,
        /// json (signed), html or pdf (for people, the signed JSON embedded).
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// Write it here (replaced if it exists) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check a report (JSON or HTML): the node document's proof, the signature over the
    /// report, the checkpoints' signatures; with --fingerprint, that this node signed it;
    /// with --data-dir, that its checkpoints are ones that node signed and still holds (the
    /// report was made from this history). Prints one line; exits non-zero if any check fails.
    Verify {
        /// The report file.
        #[arg(value_name = "REPORT")]
        report: PathBuf,
        /// The signing node's key fingerprint expected (SHA-256:…, the `fingerprint` of its
        /// /.well-known/medvault-node document, compared out of band).
        #[arg(long, value_name = "SHA-256:HEX")]
        fingerprint: Option<String>,
        /// Also check the checkpoints against this node's logs.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// With --data-dir: its PostgreSQL database, if not the embedded one.
        #[arg(long, value_name = "URL", requires = "data_dir")]
        database: Option<String>,
    },
}

pub(crate) fn run(cmd: ComplianceCommand) -> anyhow::Result<()> {
    match cmd {
        ComplianceCommand::Report { dir, format, out } => {
            let node = open_node(&dir, true)?;
            // First in the access log, so the checkpoints the report pins cover its making.
            audit_admin(&node, "compliance-report", None)?;
            let mut bar = None;
            let report = medvault_compliance::report(&node, |done, total| {
                bar.get_or_insert_with(|| progress(total, "verifying both logs"))
                    .set_position(done);
            })
            .map_err(|e| anyhow::anyhow!("the report could not be made: {e}"))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let text = match format {
                Format::Json => (serde_json::to_string_pretty(&report)? + "\n").into_bytes(),
                Format::Html => medvault_compliance::html::render(&report).into_bytes(),
                Format::Pdf => medvault_compliance::pdf::render(&report),
            };
            match &out {
                Some(path) => {
                    std::fs::write(path, &text).with_context(|| format!("{}", path.display()))?
                }
                None => std::io::stdout().write_all(&text)?,
            }
            let summary = &report["summary"];
            if out.is_some() {
                println!(
                    "compliance report: {} pass, {} warn, {} fail, {} not applicable",
                    summary["pass"], summary["warn"], summary["fail"], summary["not-applicable"]
                );
            }
            Ok(())
        }
        ComplianceCommand::Verify {
            report,
            fingerprint,
            data_dir,
            database,
        } => {
            // A report is tens of kilobytes: anything far larger, or not a file, is refused
            // before it is read.
            const MAX_REPORT_BYTES: u64 = 16 * 1024 * 1024;
            let bytes = read_bytes(&report, MAX_REPORT_BYTES, "a report")?;
            let value = medvault_compliance::extract_report(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", report.display()))?;
            let node = data_dir
                .map(|data_dir| open_node(&DataDir { data_dir, database }, true))
                .transpose()?;
            let v =
                medvault_compliance::report::verify(&value, fingerprint.as_deref(), node.as_ref())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", report.display()))?;
            let size = |s: Option<u64>| s.map_or_else(|| "none".to_owned(), |n| n.to_string());
            println!(
                "report verified: signed by node {} ({}) at {}, pinned to the records log at {} and the access log at {}{}; {} pass, {} warn, {} fail, {} not applicable",
                v.node,
                v.fingerprint,
                v.generated,
                size(v.records_size),
                size(v.access_size),
                if node.is_some() {
                    ", both in this node's history"
                } else {
                    ""
                },
                v.summary[0],
                v.summary[1],
                v.summary[2],
                v.summary[3]
            );
            Ok(())
        }
    }
}
