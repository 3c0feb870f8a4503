//! C2SP `tlog-tiles` resource paths: `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`.

use crate::LedgerError;
use crate::checkpoint::parse_decimal;

/// Hashes (or entries) per full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels spanned by one tile level.
pub const TILE_HEIGHT: u32 = 8;

/// A tile resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePath {
    /// `None` for an entry bundle, else the tile level.
    pub level: Option<u8>,
    /// Index of the tile within its level.
    pub index: u64,
    /// Width of a partial tile (1..=255); `None` for a full tile.
    pub partial: Option<u16>,
}

fn err() -> LedgerError {
    LedgerError::TilePath
}

/// Encodes `n` as zero-padded 3-digit path elements, all but the last prefixed with `x`.
pub fn encode_index(mut n: u64) -> String {
    let mut parts = vec![format!("{:03}", n % 1000)];
    n /= 1000;
    while n > 0 {
        parts.push(format!("x{:03}", n % 1000));
        n /= 1000;
    }
    parts.reverse();
    parts.join("/")
}

impl TilePath {
    /// Parses the part of a URL after `<prefix>/tile/`.
    ///
    /// # Errors
    /// [`LedgerError::TilePath`] on anything but a well-formed path.
    pub fn parse(rest: &str) -> Result<Self, LedgerError> {
        let (head, tail) = rest.split_once('/').ok_or_else(err)?;
        let level = if head == "entries" {
            None
        } else {
            let l = parse_decimal(head).ok_or_else(err)?;
            Some(u8::try_from(l).ok().filter(|l| *l <= 63).ok_or_else(err)?)
        };
        let (index_part, partial) = match tail.split_once(".p/") {
            Some((i, w)) => {
                let w = parse_decimal(w).ok_or_else(err)?;
                if !(1..TILE_WIDTH).contains(&w) {
                    return Err(err());
                }
                (i, Some(w as u16))
            }
            None => (tail, None),
        };
        let elems: Vec<&str> = index_part.split('/').collect();
        let mut index: u64 = 0;
        for (i, e) in elems.iter().enumerate() {
            let digits = if i + 1 < elems.len() {
                e.strip_prefix('x').ok_or_else(err)?
            } else {
                e
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            let d: u64 = digits.parse().map_err(|_| err())?;
            index = index
                .checked_mul(1000)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(err)?;
        }
        // One canonical spelling per index: no leading "x000" elements.
        if elems.len() > 1 && elems[0] == "x000" {
            return Err(err());
        }
        Ok(Self {
            level,
            index,
            partial,
        })
    }

    /// The path after `<prefix>/`.
    pub fn render(&self) -> String {
        let head = self
            .level
            .map_or_else(|| "entries".to_owned(), |l| l.to_string());
        let mut out = format!("tile/{head}/{}", encode_index(self.index));
        if let Some(w) = self.partial {
            out.push_str(&format!(".p/{w}"));
        }
        out
    }
}
