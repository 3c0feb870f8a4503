//! The report as a page a non-engineer reads: a summary, then one row per control with its
//! status in words (not colour alone), its finding and its evidence. The signed JSON is
//! embedded whole (`<script type="application/json" id="medvault-report">`), so
//! `medvault compliance verify` checks the page as it checks the file.

use serde_json::Value;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const ID: &str = "medvault-report";

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a;line-height:1.5}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #bbb;padding:.5rem;text-align:left;vertical-align:top}
.pass{color:#0a5c2b}.warn{color:#7a4a00}.fail{color:#a01010}.not-applicable{color:#444}
.status{font-weight:700;white-space:nowrap}details pre{white-space:pre-wrap;font-size:.85rem;background:#f4f4f4;padding:.5rem}
@media (max-width:40rem){td,th{display:block}}";

/// The report as one self-contained HTML page (no scripts run, nothing fetched).
pub fn render(report: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let node = s(&report["node"]["node"]);
    let fingerprint = s(&report["node"]["fingerprint"]);
    let generated = s(&report["generated"]);
    let count = |k: &str| report["summary"][k].as_u64().unwrap_or(0);
    let mut rows = String::new();
    for c in report["controls"].as_array().into_iter().flatten() {
        let status = s(&c["status"]);
        let evidence = serde_json::to_string_pretty(&c["evidence"]).unwrap_or_default();
        rows.push_str(&format!(
            "<tr><td>{framework}<br>{reference}</td><td>{title}</td><td class=\"status {status}\">{status}</td><td>{finding}<details><summary>Evidence</summary><pre>{evidence}</pre></details></td></tr>\n",
            framework = esc(&s(&c["framework"])),
            reference = esc(&s(&c["reference"])),
            title = esc(&s(&c["title"])),
            status = esc(&status),
            finding = esc(&s(&c["finding"])),
            evidence = esc(&evidence),
        ));
    }
    let size = |log: &str| {
        report["checkpoints"][log]["size"]
            .as_u64()
            .map_or_else(|| "none yet".to_owned(), |n| n.to_string())
    };
    // Inside <script>, only "</" could end the element early; JSON allows "\/" for "/".
    let embedded = serde_json::to_string(report)
        .unwrap_or_default()
        .replace("</", "<\\/");
    format!(
        "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Compliance report: {node}</title><style>{STYLE}</style></head>
<body><main>
<h1>Compliance report</h1>
<p>Node <strong>{node}</strong> (key fingerprint <code>{fingerprint}</code>), from its live state at {generated}.
It rests on the records log up to entry {records} and the access log up to entry {access}, both checked
(<code>ledger verify</code>) while it was made. The node signed it; <code>medvault compliance verify</code> checks
this page or its JSON was not changed.</p>
<h2>Summary</h2>
<ul><li>{pass} passed</li><li>{warn} need a look (warn)</li><li>{fail} failed</li><li>{na} not applicable (no evidence on the node)</li></ul>
<h2>Controls</h2>
<table><caption>Each control, its status and what it rests on</caption>
<thead><tr><th scope=\"col\">Reference</th><th scope=\"col\">Control</th><th scope=\"col\">Status</th><th scope=\"col\">Finding</th></tr></thead>
<tbody>
{rows}</tbody></table>
</main>
<script type=\"application/json\" id=\"{ID}\">{embedded}</script>
</body></html>
",
        node = esc(&node),
        fingerprint = esc(&fingerprint),
        generated = esc(&generated),
        records = size("records"),
        access = size("access"),
        pass = count("pass"),
        warn = count("warn"),
        fail = count("fail"),
        na = count("not-applicable"),
    )
}

/// Walks JSON and refuses an object that names a member twice: parsers disagree on which of
/// the two counts, so a report holding one could show a reader what the signature does not
/// cover.
struct Unique;

impl<'de> serde::de::DeserializeSeed<'de> for Unique {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Unique {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("an object names a member twice"));
            }
            map.next_value_seed(Unique)?;
        }
        Ok(())
    }
}

/// Parses JSON that names no object member twice (a signed document's: see [`Unique`]).
///
/// # Errors
/// Not JSON, or a member named twice.
pub fn parse_unique(text: &str) -> Result<Value, String> {
    let mut d = serde_json::Deserializer::from_str(text);
    serde::de::DeserializeSeed::deserialize(Unique, &mut d).map_err(|e| e.to_string())?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The signed JSON a page made by [`render`] embeds, or the text itself when it is JSON.
///
/// # Errors
/// Neither JSON nor a page holding the report; JSON naming an object's member twice.
pub fn extract(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return parse_unique(trimmed).map_err(|e| format!("not valid JSON: {e}"));
    }
    let open = format!("<script type=\"application/json\" id=\"{ID}\">");
    let start = text
        .find(&open)
        .map(|i| i + open.len())
        .ok_or("neither a JSON report nor a report page (no embedded report found)")?;
    let end = text[start..]
        .find("</script>")
        .ok_or("the embedded report is not closed")?;
    let report = parse_unique(&text[start..start + end])
        .map_err(|e| format!("the embedded report is not valid JSON: {e}"))?;
    // The signature covers the embedded JSON only: the page a person reads must be exactly
    // the one rendered from it, or it could show other statuses than those signed.
    if render(&report) != text {
        return Err(
            "the page differs from the one its signed report renders (something was changed or added around the report)"
                .into(),
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows_and_embeds_the_report_unchanged() {
        let report = serde_json::json!({
            "node": {"node": "n<1>", "fingerprint": "SHA-256:ab"},
            "generated": "2026-12-07T00:00:00Z",
            "summary": {"pass": 1},
            "controls": [{"framework": "HIPAA", "reference": "§1", "title": "T & U",
                          "status": "pass", "finding": "</script><b>x</b>", "evidence": {"a": 1}}],
        });
        let page = render(&report);
        assert!(page.contains("n&lt;1&gt;") && page.contains("T &amp; U"));
        assert!(!page.contains("<b>x</b>"));
        assert_eq!(extract(&page).unwrap(), report);
        let shown = page.replacen(
            "class=\"status pass\">pass<",
            "class=\"status fail\">fail<",
            1,
        );
        assert_ne!(shown, page);
        assert!(extract(&shown).unwrap_err().contains("differs"));
        assert!(extract(&format!("{page}<div>ALL PASS</div>")).is_err());
        assert!(extract("<html></html>").is_err());
        let twice = r#"{"status": "pass", "status": "fail"}"#;
        assert!(extract(twice).unwrap_err().contains("twice"));
        assert!(extract(r#"{"a": [{"b": 1, "c": {"b": 2}}]}"#).is_ok());
        assert!(extract(&format!("{page}{page}")).is_err());
    }
}
