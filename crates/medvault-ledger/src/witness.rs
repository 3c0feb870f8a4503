//! C2SP `tlog-witness`: the `add-checkpoint` request body and the checks a witness makes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::checkpoint::{parse_decimal, parse_hash};
use crate::hash::Hash;
use crate::note::MAX_NOTE_LEN;
use crate::{Checkpoint, LedgerError, Note};

/// Most consistency proof lines a request may carry.
pub const MAX_PROOF_LINES: usize = 63;

/// A parsed `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// Size of the checkpoint the log believes the witness last cosigned.
    pub old_size: u64,
    /// Consistency proof from `old_size` to the new checkpoint.
    pub proof: Vec<Hash>,
    /// The new signed checkpoint note.
    pub note: Note,
    /// Its parsed body (not yet trusted).
    pub checkpoint: Checkpoint,
}

fn err(what: &'static str) -> LedgerError {
    LedgerError::WitnessRequest(what)
}

impl AddCheckpoint {
    /// Parses a request body.
    ///
    /// # Errors
    /// [`LedgerError::WitnessRequest`], [`LedgerError::Note`] or [`LedgerError::Checkpoint`].
    pub fn parse(body: &[u8]) -> Result<Self, LedgerError> {
        if body.len() > MAX_NOTE_LEN + 64 * 64 {
            return Err(err("request body is too large"));
        }
        let s = std::str::from_utf8(body).map_err(|_| err("request body is not UTF-8"))?;
        let (first, mut rest) = s
            .split_once('\n')
            .ok_or(err("request has no old size line"))?;
        let old_size = first
            .strip_prefix("old ")
            .and_then(parse_decimal)
            .ok_or(err("first line is not `old <size>`"))?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or(err("request has no blank line before the checkpoint"))?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(err("consistency proof has more than 63 lines"));
            }
            proof.push(parse_hash(line).ok_or(err("proof line is not a base64 SHA-256 hash"))?);
        }
        let note = Note::parse(rest.as_bytes())?;
        let checkpoint = Checkpoint::parse(&note.text)?;
        if old_size > checkpoint.size {
            return Err(err("old size is larger than the checkpoint size"));
        }
        Ok(Self {
            old_size,
            proof,
            note,
            checkpoint,
        })
    }

    /// The request body for `note` with a proof from `old_size`.
    pub fn render(old_size: u64, proof: &[Hash], note: &Note) -> String {
        let mut out = format!("old {old_size}\n");
        for h in proof {
            out.push_str(&B64.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&note.render());
        out
    }
}
