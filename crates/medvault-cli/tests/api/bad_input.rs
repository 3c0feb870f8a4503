use reqwest::Method;
use serde_json::json;

use medvault_testkit::e2e::send;
use medvault_testkit::fhir::{assert_outcome, patient};

use crate::MEDVAULT;

/// (what, method, path, content type, extra headers, body, expected status)
type Case<'a> = (
    &'a str,
    Method,
    String,
    Option<&'a str>,
    Vec<(&'a str, String)>,
    String,
    u16,
);

#[test]
fn bad_requests_get_operation_outcomes_and_write_nothing() {
    let s = MEDVAULT.start_with(&["--max-body-bytes", "65536"]);
    let existing = s.create(&patient("Existing", "One"));
    let fhir = "application/fhir+json";
    let big = format!(
        "{{\"resourceType\":\"Patient\",\"text\":{{\"div\":\"{}\"}}}}",
        "x".repeat(100 * 1024)
    );
    let cases: Vec<Case<'_>> = vec![
        ("malformed JSON", Method::POST, "Patient".into(), Some(fhir), vec![], "{\"resourceType\":".into(), 400),
        ("JSON array", Method::POST, "Patient".into(), Some(fhir), vec![], "[1,2]".into(), 400),
        ("wrong resourceType", Method::POST, "Patient".into(), Some(fhir), vec![], json!({"resourceType":"Observation"}).to_string(), 400),
        ("missing resourceType", Method::POST, "Patient".into(), Some(fhir), vec![], json!({"name":[]}).to_string(), 400),
        ("schema violation", Method::POST, "Patient".into(), Some(fhir), vec![], json!({"resourceType":"Patient","gender":"sometimes"}).to_string(), 400),
        ("unknown element", Method::POST, "Patient".into(), Some(fhir), vec![], json!({"resourceType":"Patient","favouriteColour":"red"}).to_string(), 400),
        ("bad reference", Method::POST, "Observation".into(), Some(fhir), vec![], json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Nothing/1"}}).to_string(), 400),
        ("id mismatch", Method::PUT, format!("Patient/{existing}"), Some(fhir), vec![], json!({"resourceType":"Patient","id":"other"}).to_string(), 400),
        ("id missing on update", Method::PUT, format!("Patient/{existing}"), Some(fhir), vec![], json!({"resourceType":"Patient"}).to_string(), 400),
        ("invalid id in URL", Method::PUT, "Patient/bad$id".into(), Some(fhir), vec![], json!({"resourceType":"Patient","id":"bad$id"}).to_string(), 400),
        ("unknown type", Method::POST, "Banana".into(), Some(fhir), vec![], json!({"resourceType":"Banana"}).to_string(), 404),
        ("type not served", Method::POST, "AuditEvent".into(), Some(fhir), vec![], json!({"resourceType":"AuditEvent"}).to_string(), 405),
        ("body over the limit", Method::POST, "Patient".into(), Some(fhir), vec![], big, 413),
        ("stale If-Match", Method::PUT, format!("Patient/{existing}"), Some(fhir), vec![("if-match", "W/\"7\"".into())], json!({"resourceType":"Patient","id":existing}).to_string(), 412),
        ("malformed If-Match", Method::PUT, format!("Patient/{existing}"), Some(fhir), vec![("if-match", "seven".into())], json!({"resourceType":"Patient","id":existing}).to_string(), 400),
        ("wrong content type", Method::POST, "Patient".into(), Some("text/plain"), vec![], json!({"resourceType":"Patient"}).to_string(), 415),
        ("invalid search value", Method::GET, "Patient?birthdate=tomorrow".into(), None, vec![], String::new(), 400),
        ("unsupported method", Method::PATCH, format!("Patient/{existing}/_history"), Some(fhir), vec![], "{}".into(), 405),
        ("malformed patch", Method::PATCH, format!("Patient/{existing}"), Some(fhir), vec![], "{}".into(), 400),
        ("patch of another type", Method::PATCH, format!("Patient/{existing}"), Some("application/json-patch+json"), vec![], json!([{"op":"replace","path":"/resourceType","value":"Group"}]).to_string(), 422),
        ("bad version id", Method::GET, format!("Patient/{existing}/_history/abc"), None, vec![], String::new(), 400),
        ("not a Bundle", Method::POST, String::new(), Some(fhir), vec![], json!({"resourceType":"Patient"}).to_string(), 400),
        ("bundle of wrong type", Method::POST, String::new(), Some(fhir), vec![], json!({"resourceType":"Bundle","type":"collection"}).to_string(), 400),
    ];
    let n = cases.len();
    for (what, method, path, ct, headers, body, want) in cases {
        let mut rb = s.req(method, &path);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        let (st, v) = send(rb.body(body));
        assert_eq!(st, want, "{what}: {v}");
        assert_outcome(&v);
        let text = v.to_string();
        assert!(
            !text.contains("sqlite") && !text.contains("panick") && !text.contains("src/"),
            "{what} leaks internals: {text}"
        );
    }
    assert_eq!(n, 23);
    // Nothing was written by any of them.
    let (_, all) = s.get("Patient/_history");
    assert_eq!(all["total"], 1, "{all}");
    assert_eq!(s.get("Observation/_history").1["total"], 0);
}

#[test]
fn missing_or_bad_tokens_are_401() {
    let s = MEDVAULT.start();
    let client = reqwest::blocking::Client::new();
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer mvt_wrong"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer not-our-format"),
    ] {
        let mut rb = client
            .post(s.url("Patient"))
            .header("content-type", "application/fhir+json")
            .body(patient("No", "Auth").to_string());
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let (st, v) = send(rb);
        assert_eq!(st, 401, "{auth:?}");
        assert_outcome(&v);
    }
    assert_eq!(s.get("Patient/_history").1["total"], 0);
}
