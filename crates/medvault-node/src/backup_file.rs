//! The backup file format (`medvault-backup`, version 1), written by `medvault backup` and read
//! by `medvault restore`. A backup file is untrusted input: everything here refuses what does
//! not fit, with a message, and never panics.
//!
//! JSON lines: a header object; one line per row, `["n"|"a", table, [cells]]` (`n` the node
//! database, `a` the access log; bytes in base64, booleans as 0/1); a trailer
//! `{"end": {"rows": N, "hmac": HEX}}` whose HMAC-SHA256 covers every byte before it, under a
//! key derived from the node's root key (`RootKey::backup_mac`, the tenant from the header):
//! a file edited without the key file — a planted admin token hash, a swapped password hash,
//! tables the ledger does not cover — does not restore.

use std::io::BufRead;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use medvault_crypto::{MacStream, WrappedKey};
use medvault_store::dump::{Cell, Kind, LOG_TABLES, NODE_TABLES, Table};
use serde_json::{Value, json};

/// The format's name, in the header.
pub const FORMAT: &str = "medvault-backup";
/// The format version this build writes and reads.
pub const VERSION: u64 = 1;
/// The longest line accepted (a row carries at most one sealed resource, whose size the API
/// limits far below this).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Which of a node's two databases a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The node database (records, keys, identities, the records log).
    Node,
    /// The access log's database.
    Access,
}

impl Part {
    /// The tag of the part in a row line.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Node => "n",
            Self::Access => "a",
        }
    }

    /// The tables of the part.
    pub fn tables(self) -> &'static [Table] {
        match self {
            Self::Node => NODE_TABLES,
            Self::Access => LOG_TABLES,
        }
    }
}

fn encode(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Int(n) => json!(n),
        Cell::Text(t) => json!(t),
        Cell::Bytes(b) => json!(B64.encode(b)),
    }
}

fn decode(v: &Value, kind: Kind) -> Option<Cell> {
    Some(match (v, kind) {
        (Value::Null, _) => Cell::Null,
        (Value::Number(n), Kind::Int | Kind::Bool) => Cell::Int(n.as_i64()?),
        (Value::String(s), Kind::Text) => Cell::Text(s.clone()),
        (Value::String(s), Kind::Bytes) => Cell::Bytes(B64.decode(s).ok()?),
        _ => return None,
    })
}

/// The line of one row.
pub fn row_line(part: Part, table: &Table, row: &[Cell]) -> Value {
    let cells: Vec<Value> = row.iter().map(encode).collect();
    json!([part.tag(), table.name, cells])
}

/// Parses one row line against the tables of its part.
///
/// # Errors
/// What does not fit, naming the table and column.
pub fn parse_row(line: &str) -> Result<(Part, &'static Table, Vec<Cell>), String> {
    let v: Value = serde_json::from_str(line).map_err(|_| "a line is not JSON".to_owned())?;
    let parts = v.as_array().ok_or("a row is not an array")?;
    let [tag, name, cells] = parts.as_slice() else {
        return Err("a row does not have three parts".into());
    };
    let part = match tag.as_str() {
        Some("n") => Part::Node,
        Some("a") => Part::Access,
        _ => return Err("a row names no database".into()),
    };
    let name = name.as_str().ok_or("a row names no table")?;
    let table = part
        .tables()
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format!("unknown table {name:?}"))?;
    let cells = cells.as_array().ok_or("a row has no values")?;
    if cells.len() != table.columns.len() {
        return Err(format!("{name}: a row has the wrong number of values"));
    }
    let row = cells
        .iter()
        .zip(table.columns)
        .map(|(c, (col, kind))| {
            decode(c, *kind).ok_or_else(|| format!("{name}.{col}: a value of the wrong type"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    table.check(&row)?;
    Ok((part, table, row))
}

/// The header line.
pub fn header(tenant: &str, node_schema: &str, access_schema: &str, created: &str) -> Value {
    json!({
        "format": FORMAT,
        "version": VERSION,
        "created": created,
        "tenant": tenant,
        "node_schema": node_schema,
        "access_schema": access_schema,
        "root_key": "not included: restoring needs the node's key file",
    })
}

/// The trailer line.
pub fn trailer(rows: u64, tag: &[u8; 32]) -> Value {
    json!({"end": {"rows": rows, "hmac": hex::encode(tag)}})
}

/// What checking a whole backup file learned.
#[derive(Debug)]
pub struct Checked {
    /// Rows in the file.
    pub rows: u64,
    /// The node's tenant id.
    pub tenant: String,
    /// Schema versions of the two databases.
    pub node_schema: String,
    /// See `node_schema`.
    pub access_schema: String,
    /// The node's wrapped KEKs (to check the key file opens them before loading).
    pub keks: Vec<(u32, WrappedKey)>,
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf` (cleared first); `Ok(false)` at the
/// end of the input.
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<bool, String> {
    buf.clear();
    loop {
        let available = r.fill_buf().map_err(|e| e.to_string())?;
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if buf.len() + take > MAX_LINE {
            return Err("a line is too long".into());
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take);
        if done {
            return Ok(true);
        }
    }
}

/// Checks a whole backup: header, every row, the trailer's count and MAC, nothing after it.
/// `mac_for` gives the MAC of the tenant the header names (an error if this node's key cannot
/// make it); `each` sees every row in order (restore loads them in a second pass only once the
/// whole file checked out).
///
/// # Errors
/// What is wrong, with its line number.
pub fn check(
    mut r: impl BufRead,
    mac_for: impl FnOnce(&str) -> Result<MacStream, String>,
    mut each: impl FnMut(Part, &'static Table, Vec<Cell>) -> Result<(), String>,
) -> Result<Checked, String> {
    let mut mac_for = Some(mac_for);
    let mut mac: Option<MacStream> = None;
    let mut buf = Vec::new();
    let mut n = 0u64;
    let mut head: Option<Value> = None;
    let mut keks = Vec::new();
    let mut rows = 0u64;
    let mut ended = false;
    while read_line(&mut r, &mut buf).map_err(|e| format!("line {}: {e}", n + 1))? {
        n += 1;
        if ended {
            return Err(format!("line {n} follows the end marker"));
        }
        let Some(text) = buf.strip_suffix(b"\n") else {
            return Err(format!("line {n} is cut off"));
        };
        let text = std::str::from_utf8(text).map_err(|_| format!("line {n} is not UTF-8"))?;
        if n == 1 {
            let h: Value = serde_json::from_str(text).map_err(|_| "no header".to_owned())?;
            if h["format"] != FORMAT {
                return Err("no medvault-backup header".into());
            }
            if h["version"] != VERSION {
                return Err(format!(
                    "format version {} (this medvault reads {VERSION})",
                    h["version"]
                ));
            }
            let tenant = h["tenant"].as_str().unwrap_or_default();
            mac = match mac_for.take() {
                Some(f) => Some(f(tenant)?),
                None => None,
            };
            head = Some(h);
        } else if text.starts_with('{') {
            let t: Value = serde_json::from_str(text).map_err(|_| format!("line {n}"))?;
            let tag = t["end"]["hmac"]
                .as_str()
                .and_then(|h| hex::decode(h).ok())
                .unwrap_or_default();
            if !mac.take().is_some_and(|m| m.verify(&tag)) {
                return Err(
                    "its MAC does not verify: the file was changed or damaged, or belongs to another node"
                        .into(),
                );
            }
            if t["end"]["rows"] != rows {
                return Err("the row count does not match".into());
            }
            ended = true;
            continue;
        } else {
            let (part, table, row) = parse_row(text).map_err(|e| format!("line {n}: {e}"))?;
            rows += 1;
            if part == Part::Node
                && table.name == "keks"
                && let [Cell::Int(v), Cell::Bytes(w)] = row.as_slice()
                && let Ok(v) = u32::try_from(*v)
            {
                keks.push((v, WrappedKey::from_stored(w.clone())));
            }
            each(part, table, row).map_err(|e| format!("line {n}: {e}"))?;
        }
        if let Some(m) = mac.as_mut() {
            m.update(&buf);
        }
    }
    let Some(head) = head else {
        return Err("the file is empty".into());
    };
    if !ended {
        return Err("the end marker is missing (the file was cut short)".into());
    }
    let field = |k: &str| head[k].as_str().unwrap_or_default().to_owned();
    Ok(Checked {
        rows,
        tenant: field("tenant"),
        node_schema: field("node_schema"),
        access_schema: field("access_schema"),
        keks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> medvault_crypto::RootKey {
        let dir = tempfile::tempdir().unwrap();
        medvault_crypto::RootKey::create_file(&dir.path().join("k"), None).unwrap()
    }

    fn file(root: &medvault_crypto::RootKey, rows: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut mac = root.backup_mac("t").unwrap();
        let mut push = |v: &Value, mac: &mut MacStream| {
            let mut line = serde_json::to_vec(v).unwrap();
            line.push(b'\n');
            mac.update(&line);
            out.extend_from_slice(&line);
        };
        push(&header("t", "10", "2", "now"), &mut mac);
        for r in rows {
            push(r, &mut mac);
        }
        let tag = mac.finish();
        let mut line = serde_json::to_vec(&trailer(rows.len() as u64, &tag)).unwrap();
        line.push(b'\n');
        out.extend_from_slice(&line);
        out
    }

    #[test]
    fn a_file_round_trips_and_every_damage_is_named() {
        let root = key();
        let mac = |t: &str| root.backup_mac(t).map_err(|e| e.to_string());
        let keks = &NODE_TABLES[1];
        let kek_row = vec![Cell::Int(1), Cell::Bytes(vec![7; 40])];
        let good = file(&root, &[row_line(Part::Node, keks, &kek_row)]);
        let mut seen = Vec::new();
        let checked = check(&good[..], mac, |p, t, r| {
            seen.push((p, t.name, r));
            Ok(())
        })
        .unwrap();
        assert_eq!(checked.rows, 1);
        assert_eq!(checked.keks.len(), 1);
        assert_eq!(seen, vec![(Part::Node, "keks", kek_row)]);
        let refused = |bytes: &[u8]| check(bytes, mac, |_, _, _| Ok(())).unwrap_err();
        assert!(refused(&good[..good.len() - 3]).contains("cut off"));
        assert!(refused(b"").contains("empty"));
        let mut flipped = good.clone();
        let at = flipped.iter().position(|&b| b == b'1').unwrap();
        flipped[at] = b'2';
        assert!(!refused(&flipped).is_empty());
        let mut extra = good.clone();
        extra.extend_from_slice(b"[]\n");
        assert!(refused(&extra).contains("follows the end"));
        // Another node's key: the MAC does not verify.
        let other = key();
        let foreign = check(
            &good[..],
            |t| other.backup_mac(t).map_err(|e| e.to_string()),
            |_, _, _| Ok(()),
        );
        assert!(foreign.unwrap_err().contains("MAC"));
        for bad in [
            r#"["x","keks",[1,"AA=="]]"#,
            r#"["n","nope",[1]]"#,
            r#"["n","keks",["one","AA=="]]"#,
            r#"["n","keks",[1,"not base64!"]]"#,
            r#"["n","keks",[1]]"#,
            r#"["a","keks",[1,"AA=="]]"#,
            r#"["n","current",["P","1",1,1,7,"k",0]]"#,
            "not json",
        ] {
            assert!(parse_row(bad).is_err(), "{bad}");
        }
    }
}
