//! Moving old access-log details to cold storage: `medvault ledger archive` and the archive
//! file it writes (format in `docs/formats/ledger.md`, "Archived details").
//!
//! The leaves stay in the database (they are the tree the checkpoints sign); only the sealed
//! details, most of each entry's bytes, move to a file. Each archived detail is still bound to
//! its leaf by the leaf's commitment, so the file is as tamper-evident as the database was:
//! `ledger verify --archive FILE` checks every detail in it against its leaf and the audit key.
//! The database records how far it was archived (`meta.access_archived_before`) only together
//! with the archive's own access-log record (an admin `ledger-archive` record naming the range
//! and the file's SHA-256), so verify can tell an archived detail from a deleted one.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use medvault_crypto::Sealed;
use medvault_crypto::Sha256Stream;
use medvault_ledger::{Checkpoint, Note};
use medvault_store::{AuditDetail, LogRead, LogStore, StoreError, write_log_with};

use crate::audit::AuditRecord;
use crate::node::Node;

/// `meta` key of the access log: details of leaves below this index are archived.
pub const ARCHIVED_BEFORE: &str = "access_archived_before";
/// `meta` key of the access log: the leaf of the newest archive's own record.
pub const ARCHIVED_BY: &str = "access_archived_by";
/// The interaction of an archive's own access-log record.
pub const ARCHIVE_INTERACTION: &str = "ledger-archive";

const MAGIC: &str = "medvault access-log archive v1";
/// The largest sealed detail an archive may hold (a summary record is a few kilobytes).
const MAX_SEALED: u32 = 1 << 20;
/// Details read, or rows removed, per step.
const STEP: u64 = 10_000;

/// Why archiving or reading an archive failed (one plain line each).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The request cannot be done as asked (the message says what to change).
    #[error("{0}")]
    Refused(String),
    /// The archive file is not a whole, intact archive.
    #[error("{path}: {why}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The ledger failed (sealing the archive's own record, signing).
    #[error("{0}")]
    Ledger(String),
}

/// What an archive run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// First leaf archived.
    pub from: u64,
    /// One past the last leaf archived.
    pub to: u64,
    /// Bytes written to the file.
    pub bytes: u64,
    /// The file's SHA-256, hex (also in the archive's access-log record).
    pub sha256: String,
    /// The archive's own access-log leaf.
    pub leaf: u64,
}

/// How far the access log's details are archived, as its `meta` says (checked against the
/// archive record by [`backed_mark`]), and the leaf of the record that says so.
///
/// # Errors
/// Store failures; a stored value that is not a leaf index.
pub fn archived(access: &dyn LogRead) -> Result<(u64, Option<u64>), ArchiveError> {
    let num = |key: &str| -> Result<Option<u64>, ArchiveError> {
        access
            .meta(key)?
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ArchiveError::Refused(format!(
                        "the access log's meta {key} is not a leaf index: the database was altered"
                    ))
                })
            })
            .transpose()
    };
    Ok((num(ARCHIVED_BEFORE)?.unwrap_or(0), num(ARCHIVED_BY)?))
}

/// One archive run: the leaves whose details it moved, and its file's SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    /// First leaf.
    pub from: u64,
    /// One past the last leaf.
    pub to: u64,
    /// The archive file's SHA-256, hex.
    pub sha256: String,
}

/// The archive mark, checked: every archive run so far, contiguous from leaf 0 to `before`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    /// Details of leaves below this are archived.
    pub before: u64,
    /// The runs that archived them, oldest first.
    pub chain: Vec<Link>,
}

/// The access log's archive mark, backed by its newest archive's own record: the leaf
/// `meta.access_archived_by` names (at or past the mark, inside the log) opens to a
/// `ledger-archive` record whose `chain` of runs is contiguous from leaf 0 to the mark and ends
/// with the record's own range. A mark without one means details were deleted, not archived.
///
/// # Errors
/// [`ArchiveError::Refused`] naming what does not hold; store failures.
pub fn backed_mark(
    access: &dyn LogRead,
    ledger: &crate::ledger::Ledger,
) -> Result<Mark, ArchiveError> {
    let (before, by) = archived(access)?;
    if before == 0 {
        return Ok(Mark::default());
    }
    let unbacked = || {
        ArchiveError::Refused(format!(
            "the access log says the details of leaves below {before} were archived, but no archive record of its own says so: details were deleted"
        ))
    };
    let size = access.ledger_size()?;
    let leaf = by
        .filter(|l| *l >= before && *l < size)
        .ok_or_else(unbacked)?;
    let detail = access.audit_detail(leaf)?.ok_or_else(unbacked)?;
    // The record must be that leaf's own (a genuine record copied into another row is not).
    check_detail(access, ledger, leaf, &detail).map_err(|_| unbacked())?;
    let record = ledger.open_audit(&detail).map_err(|_| unbacked())?;
    if record["interaction"] != ARCHIVE_INTERACTION {
        return Err(unbacked());
    }
    let chain: Vec<Link> =
        serde_json::from_value(record["chain"].clone()).map_err(|_| unbacked())?;
    let contiguous = chain.first().is_some_and(|l| l.from == 0)
        && chain.windows(2).all(|w| w[0].to == w[1].from)
        && chain.iter().all(|l| l.from < l.to);
    let last = chain.last().ok_or_else(unbacked)?;
    if !contiguous
        || last.to != before
        || record["from"].as_u64() != Some(last.from)
        || record["to"].as_u64() != Some(last.to)
        || record["sha256"].as_str() != Some(last.sha256.as_str())
    {
        return Err(unbacked());
    }
    Ok(Mark { before, chain })
}

/// Size of the newest signed checkpoint of the access log (0 when none).
fn checkpointed(access: &dyn LogRead) -> Result<u64, ArchiveError> {
    let Some((_, note)) = access.checkpoint(None)? else {
        return Ok(0);
    };
    let bad = |e: &dyn std::fmt::Display| ArchiveError::Ledger(format!("newest checkpoint: {e}"));
    let note = Note::parse(note.as_bytes()).map_err(|e| bad(&e))?;
    Ok(Checkpoint::parse(&note.text).map_err(|e| bad(&e))?.size)
}

/// Moves the sealed details of the access log's leaves below `before` (those not archived
/// yet) into a new file `out`, then removes them from the database. `before` may be at most
/// the size of the newest signed checkpoint, so every archived leaf is one a checkpoint (and
/// its witnesses) already fixed. `progress` gets (done, total) as details are written.
///
/// # Errors
/// [`ArchiveError::Refused`] for a range with nothing to archive or beyond the newest
/// checkpoint, or an `out` that exists; file and store failures. Nothing is removed from the
/// database unless the file was written, synced and read back whole.
pub fn archive(
    node: &Node,
    before: u64,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<Archived, ArchiveError> {
    let access: &dyn LogStore = node.access.as_ref();
    // The mark must be the one the newest archive's own record names (so nothing deleted
    // behind the log's back is laundered into an archived range) before anything is removed.
    let mark = backed_mark(access, &node.ledger).map_err(|e| {
        ArchiveError::Refused(format!(
            "{e}; nothing was archived (run `medvault ledger verify`)"
        ))
    })?;
    let from = mark.before;
    // Rows an interrupted run left below the mark go first.
    remove_details(access, 0, from)?;
    let signed = checkpointed(access)?;
    if before <= from {
        return Err(ArchiveError::Refused(format!(
            "the details of leaves below {from} are archived already: --before must be above {from}"
        )));
    }
    if before > signed {
        return Err(ArchiveError::Refused(format!(
            "--before {before} is past the newest signed checkpoint (size {signed}): archive at most up to {signed}"
        )));
    }
    if out.exists() {
        return Err(ArchiveError::Refused(format!(
            "{} exists: archives are never overwritten; name a new file",
            out.display()
        )));
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ArchiveError::Io { path, source }
    };
    // A temporary name of its own beside the archive (never a file the command did not make).
    let mut tmp_name = out
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    tmp_name.push(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
    let tmp = out.with_file_name(tmp_name);
    let (bytes, digest) = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let mut w = HashingWriter {
            inner: std::io::BufWriter::new(file),
            hash: Sha256Stream::default(),
            bytes: 0,
        };
        let header = format!("{MAGIC}\norigin {}\nleaves {from} {before}\n\n", node.ledger.access().origin());
        w.write_all(header.as_bytes()).map_err(io(&tmp))?;
        let mut at = from;
        while at < before {
            let n = STEP.min(before - at);
            let details = access.audit_details(at, n)?;
            if details.len() as u64 != n
                || details.iter().enumerate().any(|(i, (l, _))| *l != at + i as u64)
            {
                return Err(ArchiveError::Refused(format!(
                    "an access-log leaf between {at} and {} has no stored detail: run `medvault ledger verify`",
                    at + n
                )));
            }
            for (leaf, d) in &details {
                write_entry(&mut w, *leaf, d).map_err(io(&tmp))?;
            }
            at += n;
            progress(at - from, before - from);
        }
        let digest = w.hash.finish();
        let mut inner = w.inner;
        inner.write_all(&digest).map_err(io(&tmp))?;
        let file = inner.into_inner().map_err(|e| ArchiveError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp))?;
        Ok((w.bytes + 32, digest))
    })()
    .inspect_err(|e| {
        // Only a file this run created (`create_new` refused anything already there).
        let exists = matches!(e, ArchiveError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::AlreadyExists);
        if !exists {
            let _ = std::fs::remove_file(&tmp);
        }
    })?;
    // A link, not a rename: it fails if `out` appeared meanwhile instead of replacing it.
    let linked = std::fs::hard_link(&tmp, out).map_err(io(out));
    let _ = std::fs::remove_file(&tmp);
    linked?;
    // Synced into its directory and read back whole before anything leaves the database; a
    // file that fails either is not an archive and goes.
    (|| {
        if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        let mut checked = 0u64;
        let header = read_archive(out, |leaf, d| {
            check_detail(access, &node.ledger, leaf, &d)?;
            checked += 1;
            Ok(())
        })?;
        if (header.from, header.to, header.sha256) != (from, before, digest)
            || checked != before - from
        {
            return Err(ArchiveError::BadFile {
                path: out.to_owned(),
                why: "reads back as another range than was written".into(),
            });
        }
        Ok(())
    })()
    .inspect_err(|_| {
        let _ = std::fs::remove_file(out);
    })?;
    let sha256 = hex::encode(digest);
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut chain = mark.chain;
    chain.push(Link {
        from,
        to: before,
        sha256: sha256.clone(),
    });
    let chain = serde_json::to_value(&chain).map_err(|e| ArchiveError::Ledger(e.to_string()))?;
    let record = {
        let sha = sha256.clone();
        move |now: i64| {
            AuditRecord::admin(now, ARCHIVE_INTERACTION, Some(&name))
                .with("from", from)
                .with("to", before)
                .with("sha256", sha)
                .with("chain", chain)
        }
    };
    let ledger = std::sync::Arc::clone(&node.ledger);
    let now = node.clock.now_micros();
    let leaf = write_log_with(access, move |tx| {
        let (mark, _) = archived(tx).map_err(|e| StoreError::Backend(e.to_string().into()))?;
        if mark != from {
            return Err(StoreError::Conflict);
        }
        let leaf = ledger
            .append_audit(tx, now, &record(now))
            .map_err(|e| StoreError::Backend(e.message.into()))?;
        tx.set_meta(ARCHIVED_BEFORE, &before.to_string())?;
        tx.set_meta(ARCHIVED_BY, &leaf.to_string())?;
        Ok(leaf)
    })
    .map_err(|e| match e {
        // Certainly not recorded, so not an archive: the file this run wrote goes. (After any
        // other failure the write may have committed; the file stays, the details too.)
        StoreError::Conflict => {
            let _ = std::fs::remove_file(out);
            ArchiveError::Refused("another archive ran at the same time: run it again".into())
        }
        e => ArchiveError::Store(e),
    })?;
    remove_details(access, from, before)?;
    node.ledger
        .checkpoint_now(node.store.as_ref(), access)
        .map_err(|e| ArchiveError::Ledger(e.message))?;
    Ok(Archived {
        from,
        to: before,
        bytes,
        sha256,
        leaf,
    })
}

/// Removes stored details of leaves `[start, end)` a step at a time (each its own write, so
/// requests are not held behind one long transaction).
fn remove_details(access: &dyn LogStore, start: u64, end: u64) -> Result<(), ArchiveError> {
    let mut at = start;
    while at < end {
        let to = end.min(at + STEP);
        write_log_with(access, move |tx| {
            tx.remove_audit_details(at, to).map(|_| ())
        })?;
        at = to;
    }
    Ok(())
}

/// Checks an archived detail against its leaf in the access log: the leaf's commitment and the
/// audit key.
pub(crate) fn check_detail(
    access: &dyn LogRead,
    ledger: &crate::ledger::Ledger,
    leaf: u64,
    d: &AuditDetail,
) -> Result<(), ArchiveError> {
    let entries = access.ledger_entries(leaf, 1)?;
    let entry = entries
        .first()
        .filter(|(i, _)| *i == leaf)
        .and_then(|(_, e)| medvault_ledger::Entry::decode(e).ok())
        .ok_or_else(|| ArchiveError::Refused(format!("access-log leaf {leaf} is missing")))?;
    if medvault_ledger::audit_commitment(&d.salt, d.sealed.as_bytes()) != entry.commitment
        || !ledger.audit_opens(d)
    {
        return Err(ArchiveError::Refused(format!(
            "the archived detail of leaf {leaf} does not match its leaf"
        )));
    }
    Ok(())
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256Stream,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_entry(w: &mut impl Write, leaf: u64, d: &AuditDetail) -> std::io::Result<()> {
    let sealed = d.sealed.as_bytes();
    let len = u32::try_from(sealed.len())
        .map_err(|_| std::io::Error::other("an audit detail over 4 GiB"))?;
    w.write_all(&leaf.to_be_bytes())?;
    w.write_all(&d.salt)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(sealed)
}

/// What an archive's header and trailer say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The access log it came from.
    pub origin: String,
    /// First leaf.
    pub from: u64,
    /// One past the last leaf.
    pub to: u64,
    /// The file's SHA-256 (checked).
    pub sha256: [u8; 32],
}

/// Reads the archive at `path`, giving each (leaf, detail) to `each` in order, and returns its
/// header. The whole file is checked: header, entries contiguous over the range, no byte after
/// them but the SHA-256 of everything before it.
///
/// # Errors
/// [`ArchiveError::BadFile`] for anything that is not a whole, intact archive; what `each`
/// returns.
pub fn read_archive(
    path: &Path,
    each: impl FnMut(u64, AuditDetail) -> Result<(), ArchiveError>,
) -> Result<Header, ArchiveError> {
    let file = std::fs::File::open(path).map_err(|source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_archive(file, each).map_err(|e| match e {
        ParseError::Bad(why) => ArchiveError::BadFile {
            path: path.to_owned(),
            why,
        },
        ParseError::Io(source) => ArchiveError::Io {
            path: path.to_owned(),
            source,
        },
        ParseError::Visit(e) => e,
    })
}

/// Why an archive did not parse.
#[derive(Debug)]
pub enum ParseError<E> {
    /// Not a whole, intact archive.
    Bad(String),
    /// Reading failed.
    Io(std::io::Error),
    /// The visitor refused an entry.
    Visit(E),
}

/// Parses an archive from `input` (untrusted bytes: a file back from cold storage), giving
/// each entry to `each`; returns its header.
///
/// # Errors
/// [`ParseError::Bad`] for anything but a whole, intact archive.
pub fn parse_archive<E>(
    input: impl Read,
    mut each: impl FnMut(u64, AuditDetail) -> Result<(), E>,
) -> Result<Header, ParseError<E>> {
    let bad = |why: &str| ParseError::Bad(why.to_owned());
    let mut r = BufReader::new(input);
    let mut hash = Sha256Stream::default();
    let line = |r: &mut BufReader<_>, hash: &mut Sha256Stream| -> Result<String, ParseError<E>> {
        let mut buf = Vec::new();
        r.by_ref()
            .take(1024)
            .read_until(b'\n', &mut buf)
            .map_err(ParseError::Io)?;
        hash.update(&buf);
        if buf.pop() != Some(b'\n') {
            return Err(bad("the header is cut short"));
        }
        String::from_utf8(buf).map_err(|_| bad("the header is not text"))
    };
    if line(&mut r, &mut hash)? != MAGIC {
        return Err(bad("not a medvault access-log archive (v1)"));
    }
    let origin = line(&mut r, &mut hash)?
        .strip_prefix("origin ")
        .filter(|o| !o.is_empty() && !o.contains(' '))
        .map(str::to_owned)
        .ok_or_else(|| bad("the header has no origin line"))?;
    let leaves = line(&mut r, &mut hash)?;
    let range: Option<Vec<u64>> = leaves
        .strip_prefix("leaves ")
        .and_then(|s| s.split(' ').map(|n| n.parse().ok()).collect());
    let Some([from, to]) = range.and_then(|r| <[u64; 2]>::try_from(r).ok()) else {
        return Err(bad("the header has no leaves line"));
    };
    if from >= to {
        return Err(bad("the header names an empty range"));
    }
    if !line(&mut r, &mut hash)?.is_empty() {
        return Err(bad("the header does not end with an empty line"));
    }
    let mut next = from;
    loop {
        let mut head = [0u8; 28];
        let got = read_full(&mut r, &mut head).map_err(ParseError::Io)?;
        if next == to {
            // The trailer: the SHA-256 of everything before it, and nothing after.
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).map_err(ParseError::Io)?;
            let mut trailer = head[..got].to_vec();
            trailer.extend_from_slice(&rest);
            let sha256 = hash.finish();
            if trailer.len() != 32 || trailer[..] != sha256[..] {
                return Err(bad(
                    "the file's checksum does not match: it is damaged or was altered",
                ));
            }
            return Ok(Header {
                origin,
                from,
                to,
                sha256,
            });
        }
        if got < head.len() {
            return Err(bad("the file is cut short"));
        }
        hash.update(&head);
        let (leaf_bytes, rest) = head.split_at(8);
        let (salt_bytes, len_bytes) = rest.split_at(16);
        let leaf = u64::from_be_bytes(leaf_bytes.try_into().map_err(|_| bad("entry"))?);
        let salt: [u8; 16] = salt_bytes.try_into().map_err(|_| bad("entry"))?;
        let len = u32::from_be_bytes(len_bytes.try_into().map_err(|_| bad("entry"))?);
        if leaf != next {
            return Err(bad("the entries are not the header's leaves in order"));
        }
        if len > MAX_SEALED {
            return Err(bad("an entry is larger than any audit detail"));
        }
        let mut sealed = vec![0u8; len as usize];
        if read_full(&mut r, &mut sealed).map_err(ParseError::Io)? < sealed.len() {
            return Err(bad("the file is cut short"));
        }
        hash.update(&sealed);
        each(
            leaf,
            AuditDetail {
                salt,
                sealed: Sealed::from_stored(sealed),
            },
        )
        .map_err(ParseError::Visit)?;
        next += 1;
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn archive_bytes(from: u64, to: u64) -> Vec<u8> {
        let mut w = HashingWriter {
            inner: Vec::new(),
            hash: Sha256Stream::default(),
            bytes: 0,
        };
        w.write_all(format!("{MAGIC}\norigin o/access\nleaves {from} {to}\n\n").as_bytes())
            .unwrap();
        for leaf in from..to {
            let d = AuditDetail {
                salt: [leaf as u8; 16],
                sealed: Sealed::from_stored(vec![leaf as u8; 40 + leaf as usize]),
            };
            write_entry(&mut w, leaf, &d).unwrap();
        }
        let digest = w.hash.finish();
        let mut out = w.inner;
        out.extend_from_slice(&digest);
        out
    }

    fn parse(bytes: &[u8]) -> Result<(u64, u64, Vec<u64>), String> {
        let mut seen = Vec::new();
        let mut salts_match = true;
        parse_archive::<()>(bytes, |leaf, d| {
            // (A damaged entry is handed over before the checksum at the end refuses the file.)
            salts_match &= d.salt == [leaf as u8; 16];
            seen.push(leaf);
            Ok(())
        })
        .map(|h| {
            assert!(
                salts_match,
                "an accepted archive handed over a changed entry"
            );
            assert_eq!(h.origin, "o/access");
            (h.from, h.to, seen)
        })
        .map_err(|e| match e {
            ParseError::Bad(w) => w,
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn an_archive_reads_back_whole_and_any_change_is_refused() {
        let good = archive_bytes(5, 9);
        assert_eq!(parse(&good).unwrap(), (5, 9, vec![5, 6, 7, 8]));
        // Every single-byte change, every truncation and an appended byte are refused.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(parse(&bad).is_err(), "flipped byte {i} accepted");
        }
        for cut in 0..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(parse(&longer).is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"medvault access-log archive v1\norigin x\nleaves 3 3\n\n").is_err());
        // A header is read strictly: no stray fields, no empty origin.
        let body = &good[good.windows(2).position(|w| w == b"\n\n").unwrap() + 2..];
        for header in [
            "origin o/access\nleaves 5 x 9",
            "origin \nleaves 5 9",
            "origin o/access\nleaves 5 9 10",
        ] {
            let mut b = format!("medvault access-log archive v1\n{header}\n\n").into_bytes();
            b.extend_from_slice(body);
            assert!(parse(&b).is_err(), "{header}");
        }
    }
}
