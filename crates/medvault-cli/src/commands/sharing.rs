//! `medvault peer …` (register other nodes) and `medvault share …` (the offline form of
//! sealed sharing: a bundle file carried to a site without a live link).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use medvault_core::ResourceId;
use medvault_node::audit::{AuditKind, AuditOutcome, AuditRecord};
use medvault_node::share;

use super::{DataDir, audit_admin, open_node};

#[derive(Debug, Subcommand)]
pub(crate) enum PeerCommand {
    /// Register another medvault node, so this node accepts its bundles and may share with it.
    /// Get its document (`medvault node show` there, or its /.well-known/medvault-node), and
    /// confirm the fingerprint with its administrator by a separate channel (phone, in person)
    /// before typing it here: the fingerprint is what makes the keys trustworthy.
    #[command(
        after_help = "Example:\n  medvault peer add --url https://hospital-b.example:7443 --document hospital-b.json \\\n      --fingerprint SHA-256:3f2a…"
    )]
    Add {
        #[command(flatten)]
        dir: DataDir,
        /// The peer's node-to-node endpoint (its `serve --peer-listen` address), https://HOST[:PORT].
        #[arg(long, value_name = "URL")]
        url: String,
        /// The peer's node document (JSON file).
        #[arg(long, value_name = "FILE")]
        document: PathBuf,
        /// The fingerprint its administrator confirmed to you out of band.
        #[arg(long, value_name = "SHA-256:HEX")]
        fingerprint: String,
        /// The Organization resource (here) that stands for the peer's institution in patients'
        /// consents, e.g. Organization/5c1…: a consent naming it as actor decides what may go
        /// to this peer. Without it, only consents that name no actor apply.
        #[arg(long, value_name = "Organization/ID")]
        organization: Option<String>,
        /// Replace the registration of a node already registered with other keys (after it
        /// rotated them and you confirmed the new fingerprint).
        #[arg(long)]
        replace: bool,
    },
    /// List the registered peers.
    List {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Remove a peer's registration: its bundles are refused from then on.
    Remove {
        #[command(flatten)]
        dir: DataDir,
        /// The peer's node id (from `medvault peer list`).
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ShareCommand {
    /// Seal a patient's records for a registered peer into a file (for sites without a live
    /// link). What the patient's consent withholds from that peer is left out; the export is
    /// recorded in the access log, whose leaf the bundle carries.
    #[command(
        after_help = "Example:\n  medvault share export --patient 6f1c… --to hospital-b.json --purpose TREAT --out p.mvshare"
    )]
    Export {
        #[command(flatten)]
        dir: DataDir,
        /// The Patient's id.
        #[arg(long, value_name = "ID")]
        patient: String,
        /// The recipient: its node document (a file), or its node id; it must be registered.
        #[arg(long, value_name = "NODE_DOC")]
        to: String,
        /// Purpose of use (HL7 v3 PurposeOfUse): TREAT, ETREAT, COC, CAREMGT, PATRQT, HPAYMT,
        /// HOPERAT, PUBHLTH or HRESCH.
        #[arg(long, default_value = "TREAT")]
        purpose: String,
        /// How long the bundle may be imported for: a number with s, m, h or d (at most 30d).
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_validity)]
        valid_for: Duration,
        /// The file to write (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check and import a bundle file from a registered peer: all of it or nothing, with a
    /// Provenance resource naming the sender. The outcome is recorded in the access log either
    /// way; a bundle is imported once.
    #[command(after_help = "Example:\n  medvault share import p.mvshare --receipt p.receipt.json")]
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// The bundle file.
        file: PathBuf,
        /// Write the signed receipt here, for the sender's `medvault share confirm`.
        #[arg(long, value_name = "FILE")]
        receipt: Option<PathBuf>,
    },
    /// Record a peer's signed receipt for a bundle this node exported, so this node's ledger
    /// cites the recipient's leaf.
    Confirm {
        #[command(flatten)]
        dir: DataDir,
        /// The bundle file that was sent.
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// The receipt file the recipient wrote.
        receipt: PathBuf,
    },
}

/// `30d`, `12h`, `90m`, `45s`: a validity of 1 second to 30 days.
fn parse_validity(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    let (number, factor) = t
        .char_indices()
        .last()
        .and_then(|(i, c)| unit(c).map(|f| (&t[..i], f)))
        .ok_or("give a number with s, m, h or d, e.g. 7d")?;
    let n: u64 = number
        .parse()
        .map_err(|_| "give a number with s, m, h or d, e.g. 7d")?;
    let secs = n.saturating_mul(factor);
    if secs == 0 || secs > share::MAX_VALIDITY.as_secs() {
        return Err("must be between 1s and 30d".into());
    }
    Ok(Duration::from_secs(secs))
}

fn os_user() -> serde_json::Value {
    serde_json::json!({"os_user": std::env::var("USER").unwrap_or_else(|_| "unknown".into())})
}

/// Reads a bundle file, refusing one over the size limit before reading it.
fn read_bundle(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let limit = share::MAX_BUNDLE_BYTES as u64;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{} is larger than a bundle may be ({limit} bytes)",
            path.display()
        );
    }
    Ok(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    medvault_node::node::write_private_file(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn checkpoint_api(node: &medvault_node::Node) -> Result<(), medvault_node::Error> {
    node.ledger
        .checkpoint_now(node.store.as_ref(), node.access.as_ref())
        .map(drop)
}

fn checkpoint(node: &medvault_node::Node) -> anyhow::Result<()> {
    checkpoint_api(node).map_err(|e| anyhow::anyhow!("signing a checkpoint failed: {}", e.message))
}

pub(crate) fn run_peer(command: PeerCommand) -> anyhow::Result<()> {
    match command {
        PeerCommand::Add {
            dir,
            url,
            document,
            fingerprint,
            organization,
            replace,
        } => {
            let text = std::fs::read_to_string(&document)
                .with_context(|| format!("cannot read {}", document.display()))?;
            let node = open_node(&dir, true)?;
            let user = os_user()["os_user"].as_str().unwrap_or("cli").to_owned();
            let row = share::register_peer(
                &node,
                &url,
                &text,
                &fingerprint,
                organization.as_deref(),
                replace,
                &user,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit_admin(
                &node,
                "peer-register",
                Some(&format!("{} {} {}", row.node, row.fingerprint, row.url)),
            )?;
            println!(
                "registered peer {} at {} (fingerprint {})",
                row.node, row.url, row.fingerprint
            );
        }
        PeerCommand::List { dir } => {
            let node = open_node(&dir, true)?;
            let peers = node.store.peers()?;
            if peers.is_empty() {
                println!("no peers registered (medvault peer add registers one)");
            }
            for p in peers {
                println!(
                    "{}  {}  {}  {}  registered {} by {}",
                    p.node,
                    p.url,
                    p.fingerprint,
                    p.organization.as_deref().unwrap_or("(no organization)"),
                    medvault_node::clock::instant(p.registered_micros),
                    p.registered_by
                );
            }
        }
        PeerCommand::Remove { dir, node: peer } => {
            let node = open_node(&dir, true)?;
            let p = peer.clone();
            let removed =
                medvault_store::write_with(node.store.as_ref(), move |tx| tx.delete_peer(&p))?;
            if !removed {
                bail!("{peer} is not a registered peer");
            }
            audit_admin(&node, "peer-remove", Some(&peer))?;
            println!("removed peer {peer}: its bundles are refused from now on");
        }
    }
    Ok(())
}

/// The registered peer named by `to`: a node document file, or a node id.
fn recipient(node: &medvault_node::Node, to: &str) -> anyhow::Result<String> {
    let path = Path::new(to);
    if !path.is_file() {
        return Ok(to.to_owned());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| anyhow::anyhow!("{} is not a node document (JSON)", path.display()))?;
    let checked = medvault_node::node_identity::verify_document(&doc)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match node.store.peer(&checked.node)? {
        None => bail!(
            "node {} is not a registered peer: register it first (medvault peer add), after confirming its fingerprint {}",
            checked.node,
            checked.fingerprint
        ),
        Some(p) if p.fingerprint != checked.fingerprint => bail!(
            "{} holds other keys than node {}'s registration: confirm the new fingerprint and register it again",
            path.display(),
            checked.node
        ),
        Some(p) => Ok(p.node),
    }
}

pub(crate) fn run_share(command: ShareCommand) -> anyhow::Result<()> {
    match command {
        ShareCommand::Export {
            dir,
            patient,
            to,
            purpose,
            valid_for,
            out,
        } => {
            let id = ResourceId::new(&patient).map_err(|e| anyhow::anyhow!("--patient: {e}"))?;
            let node = open_node(&dir, true)?;
            let to = recipient(&node, &to)?;
            let ctx = medvault_node::ops::Ctx::unrestricted_node_work(&node);
            let made = share::prepare(&node, &ctx, &id, &to, &purpose, valid_for, &os_user())
                .map_err(|e| {
                    if let Some(rule) = &e.denied_by {
                        // A refused disclosure is recorded like any refused access, in the
                        // patient's accounting of disclosures.
                        if let Err(a) = node
                            .record_audit_now(|now| {
                                AuditRecord::new(
                                    AuditKind::Share,
                                    now,
                                    "share-send",
                                    AuditOutcome::Denied,
                                )
                                .agent(os_user())
                                .patient(Some(patient.clone()))
                                .denied_by(Some(rule.clone()))
                                .with("share", serde_json::json!({"to": to, "purpose": purpose}))
                            })
                            .and_then(|_| checkpoint_api(&node))
                        {
                            return anyhow::anyhow!("recording the refusal failed: {}", a.message);
                        }
                    }
                    anyhow::anyhow!("{}", e.message)
                })?;
            write_private(&out, &made.bytes)?;
            checkpoint(&node)?;
            println!(
                "sealed {} resources of Patient/{patient} for {} ({} withheld by the patient's consent) into {} (bundle {}, valid until {}, recorded at access-log leaf {})",
                made.resources,
                made.peer.node,
                made.withheld,
                out.display(),
                made.header.id,
                made.header.expires,
                made.header.sender_leaf
            );
        }
        ShareCommand::Import { dir, file, receipt } => {
            let bytes = read_bundle(&file)?;
            let node = open_node(&dir, true)?;
            let ctx = medvault_node::ops::Ctx::unrestricted_node_work(&node);
            let result = share::receive(&node, &ctx, &bytes, None, &os_user());
            // The receipt first: the import is committed, and a second import is a replay.
            if let (Ok(imported), Some(path)) = (&result, &receipt) {
                write_private(
                    path,
                    serde_json::to_string_pretty(&imported.receipt)?.as_bytes(),
                )?;
            }
            checkpoint(&node)?;
            match result {
                Ok(imported) => {
                    println!(
                        "imported {} resources from {} as Patient/{} (bundle {}; sender's leaf {}; recorded at access-log leaf {})",
                        imported.resources,
                        imported.header.sender.node,
                        imported.patient,
                        imported.header.id,
                        imported.header.sender_leaf,
                        imported.leaf
                    );
                }
                Err(refused) => {
                    let recorded = refused
                        .leaf
                        .map(|l| format!(" (recorded at access-log leaf {l})"))
                        .unwrap_or_default();
                    // A replay of a bundle imported before: the receipt given then, again.
                    let again = match (&refused.earlier_receipt, &receipt) {
                        (Some(r), Some(path)) => {
                            write_private(path, serde_json::to_string_pretty(r)?.as_bytes())?;
                            format!(
                                "; the receipt given when it was imported is in {}",
                                path.display()
                            )
                        }
                        _ => String::new(),
                    };
                    bail!(
                        "bundle refused: {}{recorded}; nothing was imported{again}",
                        refused.refusal
                    )
                }
            }
        }
        ShareCommand::Confirm {
            dir,
            bundle,
            receipt,
        } => {
            let bytes = read_bundle(&bundle)?;
            let text = std::fs::read_to_string(&receipt)
                .with_context(|| format!("cannot read {}", receipt.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| anyhow::anyhow!("{} is not a receipt (JSON)", receipt.display()))?;
            let header = share::peek_header(&bytes)
                .ok_or_else(|| anyhow::anyhow!("{} is not a medvault bundle", bundle.display()))?;
            let node = open_node(&dir, true)?;
            let me = medvault_node::node_identity::NodeIdentity::load(&node)?;
            if header.sender.node != me.node
                || medvault_crypto::verify_bundle(&bytes, me.signing.public_key()).is_err()
            {
                bail!("{} was not sealed by this node", bundle.display());
            }
            share::check_sent(&node, &header).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (_, doc) = share::registered(&node, &header.recipient.node)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let peer_leaf = share::check_receipt(&value, &doc, &header, &bytes)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let n = value["resources"].as_u64().unwrap_or(0);
            let leaf = share::record_receipt(&node, &header, peer_leaf, n, &os_user())
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            checkpoint(&node)?;
            println!(
                "{} confirmed bundle {} at its access-log leaf {peer_leaf}; recorded here at leaf {leaf}",
                header.recipient.node, header.id
            );
        }
    }
    Ok(())
}
