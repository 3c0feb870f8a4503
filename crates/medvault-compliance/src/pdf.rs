//! The report as a PDF a non-engineer reads or files (written with `pdf-writer`): the same
//! content as the HTML page — a summary, then each control with its status in words (not
//! colour alone), its finding and its evidence — on A4 pages numbered "page i of n", in the
//! standard Helvetica fonts (nothing embedded but the report). The signed JSON is attached
//! to the document as an embedded file (`medvault-report.json`), and the PDF is a pure
//! function of it, so `medvault compliance verify report.pdf` re-renders the document from
//! the attachment and refuses any byte that differs, as it does for the page.

use pdf_writer::types::PageMode;
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use serde_json::Value;

/// The attachment's name.
const ATTACHMENT: &str = "medvault-report.json";

/// A4, in points.
const PAGE: (f32, f32) = (595.0, 842.0);
const MARGIN: f32 = 56.0;
/// The footer's baseline.
const FOOTER: f32 = 32.0;

/// Helvetica's advance widths (thousandths of the font size) for ASCII 32–126, from Adobe's
/// Helvetica font metrics (AFM).
const HELVETICA: [u16; 95] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278,
    278, // ' '–'/'
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584,
    556, // '0'–'?'
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722,
    778, // '@'–'O'
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469,
    556, // 'P'–'_'
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556,
    556, // '`'–'o'
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, // 'p'–'~'
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Face {
    Regular,
    Bold,
}

/// One line of text placed on a page.
#[derive(Debug, Clone)]
struct Line {
    face: Face,
    size: f32,
    indent: f32,
    /// Space above the line besides its own leading.
    gap: f32,
    rgb: (f32, f32, f32),
    text: Vec<u8>,
}

/// `c` in WinAnsiEncoding (the standard fonts' encoding): ASCII and Latin-1 as themselves,
/// the typographic marks the report uses at their code points, anything else as ASCII
/// approximations or `?`.
fn win_ansi(c: char, out: &mut Vec<u8>) {
    let byte = match c {
        ' '..='~' => u8::try_from(u32::from(c)).ok(),
        '\u{a0}'..='\u{ff}' => u8::try_from(u32::from(c)).ok(),
        '\u{2013}' => Some(0x96),
        '\u{2014}' => Some(0x97),
        '\u{2018}' => Some(0x91),
        '\u{2019}' => Some(0x92),
        '\u{201c}' => Some(0x93),
        '\u{201d}' => Some(0x94),
        '\u{2022}' => Some(0x95),
        '\u{2026}' => Some(0x85),
        '\u{2265}' => {
            out.extend_from_slice(b">=");
            return;
        }
        '\u{2264}' => {
            out.extend_from_slice(b"<=");
            return;
        }
        '\u{2192}' => {
            out.extend_from_slice(b"->");
            return;
        }
        _ => None,
    };
    out.push(byte.unwrap_or(b'?'));
}

fn encode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        // Control characters (a newline in a finding) become spaces.
        win_ansi(if c.is_control() { ' ' } else { c }, &mut out);
    }
    out
}

/// One encoded character's advance width, thousandths of the font size.
fn units(b: u8) -> u64 {
    match b {
        32..=126 => u64::from(HELVETICA[usize::from(b - 32)]),
        0x97 => 1000,
        _ => 556,
    }
}

/// The most units a line of `face` at `size` points may hold within `max` points; bold is
/// measured a tenth wider than regular (an over-estimate, so a line never runs past the
/// margin).
fn capacity(face: Face, size: f32, max: f32) -> u64 {
    let bold = if face == Face::Bold { 1.1 } else { 1.0 };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a positive page width
    let cap = (max * 1000.0 / (size * bold)).max(0.0) as u64;
    cap
}

/// The width of `bytes` at `size` points (see [`capacity`] for bold).
#[cfg(test)]
fn width(bytes: &[u8], face: Face, size: f32) -> f32 {
    let total: u64 = bytes.iter().map(|b| units(*b)).sum();
    let bold = if face == Face::Bold { 1.1 } else { 1.0 };
    #[allow(clippy::cast_precision_loss)]
    let w = total as f32 * size * bold / 1000.0;
    w
}

/// Breaks `text` into lines no wider than `max`: at spaces, and inside a word only when the
/// word alone is wider than a line (an id, a fingerprint, JSON). Linear in the text's length.
fn wrap(text: &str, face: Face, size: f32, max: f32) -> Vec<Vec<u8>> {
    let cap = capacity(face, size, max);
    let space = units(b' ');
    let mut lines = Vec::new();
    let (mut line, mut used): (Vec<u8>, u64) = (Vec::new(), 0);
    for word in encode(text).split(|b| *b == b' ').filter(|w| !w.is_empty()) {
        let word_units: u64 = word.iter().map(|b| units(*b)).sum();
        let needed = if line.is_empty() {
            word_units
        } else {
            used + space + word_units
        };
        if needed <= cap {
            if !line.is_empty() {
                line.push(b' ');
            }
            line.extend_from_slice(word);
            used = needed;
            continue;
        }
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
            used = 0;
        }
        for &b in word {
            let u = units(b);
            if used + u > cap && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                used = 0;
            }
            line.push(b);
            used += u;
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Items of an evidence list shown in the PDF; the rest are counted (all are in the attached
/// report).
const MAX_LISTED: usize = 50;

/// An evidence value as text: strings as they are, lists of more than [`MAX_LISTED`] items
/// cut with a count of the rest, the rest as compact JSON.
fn shown(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        Value::Array(items) if items.len() > MAX_LISTED => format!(
            "{} \u{2026} and {} more (all in the attached report)",
            Value::Array(items[..MAX_LISTED].to_vec()),
            items.len() - MAX_LISTED
        ),
        other => other.to_string(),
    }
}

const BLACK: (f32, f32, f32) = (0.1, 0.1, 0.1);

/// The colour of a status (always beside its name: colour is never the only signal). Each
/// has at least 4.5:1 contrast on white.
fn status_rgb(status: &str) -> (f32, f32, f32) {
    match status {
        "pass" => (0.04, 0.36, 0.17),
        "warn" => (0.48, 0.29, 0.0),
        "fail" => (0.63, 0.06, 0.06),
        _ => (0.27, 0.27, 0.27),
    }
}

struct Layout {
    lines: Vec<Line>,
}

impl Layout {
    fn text(&mut self, text: &str, face: Face, size: f32, indent: f32, gap: f32) {
        self.colored(text, face, size, indent, gap, BLACK);
    }

    fn colored(
        &mut self,
        text: &str,
        face: Face,
        size: f32,
        indent: f32,
        gap: f32,
        rgb: (f32, f32, f32),
    ) {
        let max = PAGE.0 - 2.0 * MARGIN - indent;
        for (i, bytes) in wrap(text, face, size, max).into_iter().enumerate() {
            self.lines.push(Line {
                face,
                size,
                indent,
                gap: if i == 0 { gap } else { 0.0 },
                rgb,
                text: bytes,
            });
        }
    }
}

/// The lines of the report, in order.
fn lay_out(report: &Value) -> Vec<Line> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let count = |k: &str| report["summary"][k].as_u64().unwrap_or(0);
    let size = |log: &str| {
        report["checkpoints"][log]["size"]
            .as_u64()
            .map_or_else(|| "none yet".to_owned(), |n| n.to_string())
    };
    let mut l = Layout { lines: Vec::new() };
    l.text("Compliance report", Face::Bold, 20.0, 0.0, 0.0);
    l.text(
        &format!(
            "Node {} (key fingerprint {}), from its live state at {}.",
            s(&report["node"]["node"]),
            s(&report["node"]["fingerprint"]),
            s(&report["generated"])
        ),
        Face::Regular,
        10.0,
        0.0,
        8.0,
    );
    l.text(
        &format!(
            "It rests on the records log up to entry {} and the access log up to entry {}, both checked (ledger verify) while it was made. The node signed it; the signed report is attached to this document ({ATTACHMENT}), and \"medvault compliance verify\" checks that this file was not changed.",
            size("records"),
            size("access")
        ),
        Face::Regular,
        10.0,
        0.0,
        4.0,
    );
    l.text("Summary", Face::Bold, 14.0, 0.0, 14.0);
    for (n, what) in [
        (count("pass"), "passed"),
        (count("warn"), "need a look (warn)"),
        (count("fail"), "failed"),
        (
            count("not-applicable"),
            "not applicable (no evidence on the node)",
        ),
    ] {
        l.text(
            &format!("\u{2022} {n} {what}"),
            Face::Regular,
            10.0,
            8.0,
            2.0,
        );
    }
    l.text("Controls", Face::Bold, 14.0, 0.0, 14.0);
    for c in report["controls"].as_array().into_iter().flatten() {
        let status = s(&c["status"]);
        l.colored(
            &format!("{} \u{2014} {}", status.to_uppercase(), s(&c["title"])),
            Face::Bold,
            11.0,
            0.0,
            12.0,
            status_rgb(&status),
        );
        l.text(
            &format!("{} {}", s(&c["framework"]), s(&c["reference"])),
            Face::Regular,
            9.0,
            0.0,
            1.0,
        );
        l.text(&s(&c["finding"]), Face::Regular, 10.0, 0.0, 3.0);
        if let Some(evidence) = c["evidence"].as_object().filter(|e| !e.is_empty()) {
            l.text("Evidence:", Face::Bold, 8.0, 8.0, 3.0);
            for (k, v) in evidence {
                l.text(&format!("{k}: {}", shown(v)), Face::Regular, 8.0, 16.0, 1.0);
            }
        }
    }
    l.lines
}

/// Places `lines` on pages: each page's lines and their baselines.
fn paginate(lines: Vec<Line>) -> Vec<Vec<(Line, f32)>> {
    let top = PAGE.1 - MARGIN;
    let bottom = MARGIN;
    let mut pages = vec![Vec::new()];
    let mut y = top;
    for line in lines {
        let advance = line.size * 1.3;
        let first_on_page = pages.last().is_none_or(Vec::is_empty);
        let gap = if first_on_page { 0.0 } else { line.gap };
        if !first_on_page && y - gap - advance < bottom {
            pages.push(Vec::new());
            y = top;
        }
        let first_on_page = pages.last().is_none_or(Vec::is_empty);
        y -= if first_on_page {
            line.size
        } else {
            gap + advance
        };
        if let Some(page) = pages.last_mut() {
            page.push((line, y));
        }
    }
    pages
}

/// The report as a PDF document (deterministic: the same report gives the same bytes).
pub fn render(report: &Value) -> Vec<u8> {
    let pages = paginate(lay_out(report));
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let file = Ref::new(5);
    let spec = Ref::new(6);
    let info = Ref::new(7);
    let first_page = 8;
    let page_ref = |i: usize, content: bool| {
        let n = i32::try_from(first_page + 2 * i + usize::from(content)).unwrap_or(i32::MAX);
        Ref::new(n)
    };
    let json = serde_json::to_vec(report).unwrap_or_default();

    let mut cat = pdf.catalog(catalog);
    cat.pages(tree);
    cat.lang(TextStr("en"));
    cat.page_mode(PageMode::UseAttachments);
    cat.names()
        .embedded_files()
        .names()
        .insert(Str(ATTACHMENT.as_bytes()), spec);
    cat.finish();
    pdf.pages(tree)
        .kids((0..pages.len()).map(|i| page_ref(i, false)))
        .count(i32::try_from(pages.len()).unwrap_or(i32::MAX));
    for (id, name) in [(regular, "Helvetica"), (bold, "Helvetica-Bold")] {
        pdf.type1_font(id)
            .base_font(Name(name.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    pdf.embedded_file(file, &json)
        .subtype(Name(b"application#2Fjson"))
        .params()
        .size(i32::try_from(json.len()).unwrap_or(i32::MAX));
    pdf.file_spec(spec)
        .path(Str(ATTACHMENT.as_bytes()))
        .unic_file(TextStr(ATTACHMENT))
        .description(TextStr("The signed compliance report this document shows"))
        .embedded_file_with_unicode(file);
    pdf.document_info(info)
        .title(TextStr(&format!(
            "Compliance report: {}",
            report["node"]["node"].as_str().unwrap_or_default()
        )))
        .producer(TextStr("medvault"));

    let total = pages.len();
    for (i, lines) in pages.into_iter().enumerate() {
        let mut content = Content::new();
        for (line, y) in &lines {
            let font = if line.face == Face::Bold {
                b"F2"
            } else {
                b"F1"
            };
            content
                .set_fill_rgb(line.rgb.0, line.rgb.1, line.rgb.2)
                .begin_text()
                .set_font(Name(font), line.size)
                .next_line(MARGIN + line.indent, *y)
                .show(Str(&line.text))
                .end_text();
        }
        let footer = encode(&format!("Page {} of {total}", i + 1));
        content
            .set_fill_rgb(0.27, 0.27, 0.27)
            .begin_text()
            .set_font(Name(b"F1"), 8.0)
            .next_line(MARGIN, FOOTER)
            .show(Str(&footer))
            .end_text();
        let bytes = content.finish();
        let mut page = pdf.page(page_ref(i, false));
        page.media_box(Rect::new(0.0, 0.0, PAGE.0, PAGE.1))
            .parent(tree)
            .contents(page_ref(i, true));
        page.resources()
            .fonts()
            .pair(Name(b"F1"), regular)
            .pair(Name(b"F2"), bold);
        page.finish();
        pdf.stream(page_ref(i, true), &bytes);
    }
    pdf.finish()
}

/// The signed report a document made by [`render`] carries, if `bytes` is one; the whole
/// document must be exactly what that report renders.
///
/// # Errors
/// Not such a PDF; an attachment that is not a signed report's JSON; anything changed or
/// added around it.
pub fn extract(bytes: &[u8]) -> Result<Value, String> {
    let report = attached(bytes)?;
    // The signature first: rendering is the costly part, and only a signed report earns it.
    crate::report::verify(&report, None, None).map_err(|e| e.to_string())?;
    same_document(&report, bytes)?;
    Ok(report)
}

/// The report attached to `bytes`, parsed (not yet checked).
fn attached(bytes: &[u8]) -> Result<Value, String> {
    if !bytes.starts_with(b"%PDF-") {
        return Err("not a PDF".into());
    }
    let marker = b"/Type /EmbeddedFile";
    let mut found = occurrences(bytes, marker);
    let (Some(at), None) = (found.next(), found.next()) else {
        return Err("not a medvault report PDF (no single attached report)".into());
    };
    let rest = bytes.get(at..).unwrap_or_default();
    let open = b">>\nstream\n";
    let start = find(rest, open).ok_or("the attached report is not a stream")? + open.len();
    let data = rest.get(start..).unwrap_or_default();
    // Compact JSON holds no raw newline, so the first end of stream ends it.
    let end = find(data, b"\nendstream").ok_or("the attached report is not closed")?;
    let text = std::str::from_utf8(data.get(..end).unwrap_or_default())
        .map_err(|_| "the attached report is not UTF-8 text")?;
    crate::html::parse_unique(text)
        .map_err(|e| format!("the attached report is not valid JSON: {e}"))
}

/// `bytes` is exactly the document `report` renders.
fn same_document(report: &Value, bytes: &[u8]) -> Result<(), String> {
    if render(report) == bytes {
        Ok(())
    } else {
        Err(
            "the document differs from the one its signed report renders (something was changed or added around the report)"
                .into(),
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn occurrences<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn report(finding: &str) -> Value {
        serde_json::json!({
            "node": {"node": "node-1", "fingerprint": "SHA-256:ab"},
            "generated": "2026-12-07T00:00:00Z",
            "checkpoints": {"records": {"size": 3}, "access": {"size": 9}},
            "summary": {"pass": 1, "fail": 1},
            "controls": [
                {"framework": "HIPAA", "reference": "§164.312(a)(1)", "title": "Unique user identification",
                 "status": "pass", "finding": finding, "evidence": {"users": 3, "ids": ["usr_1", "usr_2"]}},
                {"framework": "GDPR", "reference": "Art. 32", "title": "Security — of processing",
                 "status": "fail", "finding": "x".repeat(400), "evidence": {}},
            ],
        })
    }

    #[test]
    fn the_document_carries_its_report_and_refuses_any_change() {
        // (Signatures are checked by `extract` before this, and by the e2e tests with a node.)
        let check = |bytes: &[u8]| -> Result<Value, String> {
            let r = attached(bytes)?;
            same_document(&r, bytes)?;
            Ok(r)
        };
        let r = report("every account is one person's (≥ 1 factor) </script>");
        let doc = render(&r);
        assert!(doc.starts_with(b"%PDF-"));
        assert_eq!(render(&r), doc, "deterministic");
        assert_eq!(check(&doc).unwrap(), r);
        assert!(extract(&doc).unwrap_err().contains("signed"), "unsigned");
        // A status changed in the page's text, bytes appended, the attachment edited.
        let replace = |from: &[u8], to: &[u8]| {
            let at = find(&doc, from).unwrap();
            [&doc[..at], to, &doc[at + from.len()..]].concat()
        };
        assert!(
            check(&replace(b"(Evidence:)", b"(Evidenze:)"))
                .unwrap_err()
                .contains("differs")
        );
        let mut more = doc.clone();
        more.extend_from_slice(b"%%EOF\n");
        assert!(check(&more).unwrap_err().contains("differs"));
        assert!(check(&replace(b"\"pass\":1", b"\"pass\":7")).is_err());
        assert!(check(b"%PDF-1.7\n").is_err());
        assert!(check(b"{}").is_err());
        let twice = [doc.clone(), doc.clone()].concat();
        assert!(check(&twice).is_err());
        // Every truncation is a plain refusal.
        for n in (0..doc.len()).step_by(89) {
            assert!(check(&doc[..n]).is_err());
        }
        // A finding of millions of characters with no space, and a huge list: rendered, in
        // bounded time (no overflow, lists cut).
        let mut huge = report(&"@".repeat(2_000_000));
        huge["controls"][0]["evidence"]["ids"] = Value::Array(
            (0..100_000)
                .map(|i| Value::String(format!("usr_{i}")))
                .collect(),
        );
        let big = render(&huge);
        assert!(big.len() < 60_000_000);
        assert!(
            lay_out(&huge)
                .iter()
                .any(|l| find(&l.text, b"99950").is_some())
        );
    }

    #[test]
    fn lines_wrap_inside_the_margins_and_pages_fill_in_order() {
        let max = PAGE.0 - 2.0 * MARGIN;
        for line in wrap(&"word ".repeat(200), Face::Regular, 10.0, max) {
            assert!(width(&line, Face::Regular, 10.0) <= max);
        }
        let long = wrap(&"x".repeat(1000), Face::Bold, 11.0, max);
        assert!(long.len() > 1 && long.iter().all(|l| width(l, Face::Bold, 11.0) <= max));
        assert_eq!(encode("§ — ≥ 😀"), b"\xa7 \x97 >= ?");
        let mut r = report("short");
        let controls: Vec<Value> = (0..120).map(|_| r["controls"][0].clone()).collect();
        r["controls"] = Value::Array(controls);
        let pages = paginate(lay_out(&r));
        assert!(pages.len() > 3);
        for page in &pages {
            assert!(
                page.iter()
                    .all(|(_, y)| *y >= MARGIN && *y <= PAGE.1 - MARGIN)
            );
            assert!(page.windows(2).all(|w| w[0].1 > w[1].1), "top to bottom");
        }
    }
}
