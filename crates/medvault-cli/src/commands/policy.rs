//! `medvault policy …`: the access policy's schema and default, and checking policy files.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
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

/// The access policy: the default one (unless replaced) and the given files, validated.
pub(crate) fn load_policy(
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

pub(crate) fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Schema => print!("{}", medvault_policy::SCHEMA),
        PolicyCommand::Default => print!("{}", medvault_policy::DEFAULT_POLICY),
        PolicyCommand::Check {
            files,
            replace_default_policy,
        } => {
            let engine = load_policy(&files, replace_default_policy)?;
            println!("valid: {} policies", engine.len());
        }
    }
    Ok(())
}
