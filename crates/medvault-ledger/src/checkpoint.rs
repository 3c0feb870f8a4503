//! C2SP `tlog-checkpoint`: the note text `<origin>\n<size>\n<base64 root>\n[extension lines]`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::LedgerError;
use crate::hash::{HASH_LEN, Hash};

/// A checkpoint body (the text of a signed note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Names the log (a schema-less URL).
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Root hash of the tree of that size.
    pub root: Hash,
    /// Extension lines, if any.
    pub extensions: Vec<String>,
}

fn err(what: &'static str) -> LedgerError {
    LedgerError::Checkpoint(what)
}

/// Parses a decimal with no sign and no leading zeros (except `0` itself).
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Decodes one base64 hash.
pub(crate) fn parse_hash(s: &str) -> Option<Hash> {
    let raw = B64.decode(s).ok()?;
    <[u8; HASH_LEN]>::try_from(raw.as_slice()).ok()
}

/// Reads a tree head, a decimal size then a base64 root hash, from the next two of `fields`
/// (a checkpoint's lines or a pin line's words).
///
/// # Errors
/// [`LedgerError::Checkpoint`] with `bad_size` or `bad_root`.
fn tree_head<'a>(
    fields: &mut impl Iterator<Item = &'a str>,
    bad_size: &'static str,
    bad_root: &'static str,
) -> Result<(u64, Hash), LedgerError> {
    let size = fields.next().and_then(parse_decimal).ok_or(err(bad_size))?;
    let root = fields.next().and_then(parse_hash).ok_or(err(bad_root))?;
    Ok((size, root))
}

impl Checkpoint {
    /// Parses the text of a checkpoint note (signatures already split off).
    ///
    /// # Errors
    /// [`LedgerError::Checkpoint`] naming the malformed line.
    pub fn parse(text: &str) -> Result<Self, LedgerError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(err("checkpoint does not end with a newline"))?;
        let mut lines = body.split('\n');
        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(err("checkpoint origin line is empty"));
        }
        let (size, root) = tree_head(
            &mut lines,
            "checkpoint size line is not a decimal tree size",
            "checkpoint root line is not a base64 SHA-256 hash",
        )?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(err("checkpoint has an empty extension line"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            extensions,
        })
    }

    /// The tree head of another log that this checkpoint pins in an extension line
    /// `<label> <size> <base64 root>` (see [`pin_line`]), if it carries one for `label`.
    ///
    /// # Errors
    /// [`LedgerError::Checkpoint`] if a line with that label is malformed or repeated.
    pub fn pin(&self, label: &str) -> Result<Option<(u64, Hash)>, LedgerError> {
        let mut found = None;
        for line in &self.extensions {
            let mut parts = line.split(' ');
            if parts.next() != Some(label) {
                continue;
            }
            if found.is_some() {
                return Err(err("checkpoint pins the same log twice"));
            }
            let (size, root) = tree_head(
                &mut parts,
                "pin line size is not a decimal tree size",
                "pin line root is not a base64 SHA-256 hash",
            )?;
            if parts.next().is_some() {
                return Err(err("pin line has trailing fields"));
            }
            found = Some((size, root));
        }
        Ok(found)
    }

    /// The note text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            out.push_str(e);
            out.push('\n');
        }
        out
    }
}

/// An extension line pinning another log's tree head: `<label> <size> <base64 root>`.
pub fn pin_line(label: &str, size: u64, root: &Hash) -> String {
    format!("{label} {size} {}", B64.encode(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_lines_round_trip_and_malformed_ones_are_refused() {
        let mut cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 3,
            root: [1; 32],
            extensions: vec!["other 1 x".into(), pin_line("records", 9, &[2; 32])],
        };
        let parsed = Checkpoint::parse(&cp.text()).unwrap();
        assert_eq!(parsed.pin("records").unwrap(), Some((9, [2; 32])));
        assert_eq!(parsed.pin("absent").unwrap(), None);
        for bad in [
            "records 09 AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
            "records 9 AgIC",
            "records 9",
            "records 9 AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI= extra",
        ] {
            cp.extensions = vec![bad.into()];
            assert!(cp.pin("records").is_err(), "{bad}");
        }
        cp.extensions = vec![
            pin_line("records", 1, &[0; 32]),
            pin_line("records", 1, &[0; 32]),
        ];
        assert!(cp.pin("records").is_err(), "repeated");
    }
}
