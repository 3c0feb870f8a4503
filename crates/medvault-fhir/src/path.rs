//! The FHIRPath subset used by R4 search-parameter expressions.
//!
//! Supported (this covers the expressions of every parameter of the served types except a
//! handful, which are simply not offered): `Type.a.b`, unions with `|`, choice elements
//! (`Observation.effective` finds `effectiveDateTime`, `effectivePeriod`, …), `(path as T)`,
//! `path.as(T)`, `path.ofType(T)`, `path.where(resolve() is T)` and `path.where(field='literal')`.
//! Anything else makes [`Expr::parse`] return `None` and the parameter is left out.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Field(String),
    As(String),
    ResolveIs(String),
    WhereEq(String, String),
}

/// One parsed union branch: a path from a resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Branch {
    resource_type: String,
    steps: Vec<Step>,
}

/// A parsed search-parameter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expr {
    branches: Vec<Branch>,
}

/// A node reached by an expression, with the choice-type suffix it was found under (e.g.
/// `DateTime` for `effectiveDateTime`), if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    /// The JSON value.
    pub(crate) value: &'a Value,
    /// Choice-type suffix.
    pub(crate) choice: Option<&'a str>,
}

fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_call(step: &str) -> Option<Step> {
    let (name, rest) = step.split_once('(')?;
    let arg = rest.strip_suffix(')')?.trim();
    match name {
        "as" | "ofType" if is_name(arg) => Some(Step::As(arg.to_owned())),
        "where" => {
            if let Some(t) = arg.strip_prefix("resolve() is ") {
                let t = t.trim();
                return is_name(t).then(|| Step::ResolveIs(t.to_owned()));
            }
            let (field, lit) = arg.split_once('=')?;
            let (field, lit) = (field.trim(), lit.trim());
            let lit = lit.strip_prefix('\'')?.strip_suffix('\'')?;
            (is_name(field) && !lit.contains('\''))
                .then(|| Step::WhereEq(field.to_owned(), lit.to_owned()))
        }
        _ => None,
    }
}

fn parse_chain(text: &str, steps: &mut Vec<Step>) -> Option<()> {
    for part in split_top_level(text, '.') {
        let part = part.trim();
        if part.contains('(') {
            steps.push(parse_call(part)?);
        } else if is_name(part) {
            steps.push(Step::Field(part.to_owned()));
        } else {
            return None;
        }
    }
    Some(())
}

fn parse_branch(text: &str) -> Option<Branch> {
    let text = text.trim();
    let mut steps = Vec::new();
    let head: &str;
    if let Some(inner) = text.strip_prefix('(') {
        // `(A.b as T)` optionally followed by `.c`.
        let close = inner.rfind(')')?;
        let (group, tail) = (&inner[..close], &inner[close + 1..]);
        let (path, ty) = group.split_once(" as ")?;
        let (h, rest) = path.trim().split_once('.')?;
        head = h;
        parse_chain(rest, &mut steps)?;
        let ty = ty.trim();
        if !is_name(ty) {
            return None;
        }
        steps.push(Step::As(ty.to_owned()));
        if let Some(tail) = tail.strip_prefix('.') {
            parse_chain(tail, &mut steps)?;
        } else if !tail.trim().is_empty() {
            return None;
        }
    } else if let Some((h, rest)) = text.split_once('.') {
        head = h;
        parse_chain(rest, &mut steps)?;
    } else {
        // A bare type name selects the resource itself (a composite's base, `Observation`).
        head = text;
    }
    is_name(head).then(|| Branch {
        resource_type: head.to_owned(),
        steps,
    })
}

fn capitalize(t: &str) -> String {
    let mut c = t.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn push_flat<'a>(out: &mut Vec<Node<'a>>, value: &'a Value, choice: Option<&'a str>) {
    match value {
        Value::Array(items) => out.extend(items.iter().map(|v| Node { value: v, choice })),
        Value::Null => {}
        v => out.push(Node { value: v, choice }),
    }
}

impl Expr {
    /// Parses the branches of `expression` that apply to `resource_type` (branches for other
    /// types, and `Resource.`/`DomainResource.` ones, are kept only when they match).
    /// Returns `None` when a relevant branch uses syntax outside the subset, or none applies.
    pub(crate) fn parse(expression: &str, resource_type: &str) -> Option<Self> {
        let mut branches = Vec::new();
        for part in split_top_level(expression, '|') {
            let b = parse_branch(part)?;
            if b.resource_type == resource_type
                || b.resource_type == "Resource"
                || b.resource_type == "DomainResource"
            {
                branches.push(b);
            }
        }
        (!branches.is_empty()).then_some(Self { branches })
    }

    /// Parses an expression relative to an element (a composite parameter's component: `code`,
    /// `value.as(Quantity) | value.as(Range)`), evaluated with [`Self::evaluate`] on that element.
    pub(crate) fn parse_relative(expression: &str) -> Option<Self> {
        let mut branches = Vec::new();
        for part in split_top_level(expression, '|') {
            let mut steps = Vec::new();
            parse_chain(part.trim(), &mut steps)?;
            branches.push(Branch {
                resource_type: String::new(),
                steps,
            });
        }
        (!branches.is_empty()).then_some(Self { branches })
    }

    /// Every node the expression reaches in `resource`.
    pub(crate) fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        for b in &self.branches {
            let mut nodes = vec![Node {
                value: resource,
                choice: None,
            }];
            for step in &b.steps {
                nodes = apply(step, &nodes);
                if nodes.is_empty() {
                    break;
                }
            }
            out.extend(nodes);
        }
        out
    }
}

fn apply<'a>(step: &Step, nodes: &[Node<'a>]) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    match step {
        Step::Field(name) => {
            for n in nodes {
                let Value::Object(map) = n.value else {
                    continue;
                };
                if let Some(v) = map.get(name.as_str()) {
                    push_flat(&mut out, v, None);
                    continue;
                }
                // Choice element: `value` → `valueQuantity`, `valueString`, …
                for (k, v) in map {
                    if let Some(suffix) = k.strip_prefix(name.as_str())
                        && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                    {
                        push_flat(&mut out, v, Some(suffix));
                    }
                }
            }
        }
        Step::As(ty) => {
            let want = capitalize(ty);
            out.extend(
                nodes
                    .iter()
                    .filter(|n| n.choice.is_none_or(|c| c == want))
                    .copied(),
            );
        }
        Step::ResolveIs(ty) => {
            out.extend(nodes.iter().filter(|n| {
                n.value
                    .get("reference")
                    .and_then(Value::as_str)
                    .is_some_and(|r| reference_type(r) == Some(ty.as_str()))
            }));
        }
        Step::WhereEq(field, lit) => {
            out.extend(nodes.iter().filter(|n| {
                n.value.get(field.as_str()).and_then(Value::as_str) == Some(lit.as_str())
            }));
        }
    }
    out
}

/// The resource type a literal reference points to: `Patient/1`, `Patient/1/_history/2` or an
/// absolute URL ending in `Patient/1`.
pub(crate) fn reference_type(reference: &str) -> Option<&str> {
    local_reference(reference).map(|(t, _)| t)
}

/// Splits a literal reference into `(type, id)`, dropping a base URL and a `_history` suffix.
pub fn local_reference(reference: &str) -> Option<(&str, &str)> {
    // `#…` points inside the resource (a contained resource), never at a stored one.
    if reference.starts_with('#') {
        return None;
    }
    let trimmed = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = trimmed.rsplitn(3, '/');
    let id = parts.next()?;
    let ty = parts.next()?;
    let ok_type = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphabetic());
    (ok_type && medvault_core::ResourceId::new(id).is_ok()).then_some((ty, id))
}

/// Splits a *relative* literal reference to a resource on this server — exactly `Type/id` or
/// `Type/id/_history/N` — into `(type, id)`. Anything else (an absolute URL, which may name
/// another server's resource; `./`, `..` or other extra segments; `#…`) is not a reference to
/// a stored resource: it is neither indexed nor used to choose a compartment.
pub fn relative_reference(reference: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = reference.split('/').collect();
    let (ty, id) = match parts.as_slice() {
        [ty, id] => (*ty, *id),
        [ty, id, "_history", v] if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            (*ty, *id)
        }
        _ => return None,
    };
    let ok_type = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphabetic());
    (ok_type && medvault_core::ResourceId::new(id).is_ok()).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Asserts what `split` makes of each reference.
    fn assert_splits(
        split: fn(&str) -> Option<(&str, &str)>,
        cases: &[(&str, Option<(&str, &str)>)],
    ) {
        for &(reference, want) in cases {
            assert_eq!(split(reference), want, "{reference}");
        }
    }

    #[test]
    fn only_canonical_relative_references_name_stored_resources() {
        let p1 = Some(("Patient", "p1"));
        assert_splits(
            relative_reference,
            &[
                ("Patient/p1", p1),
                ("Patient/p1/_history/2", p1),
                ("http://evil.example/fhir/Patient/p1", None),
                ("Patient/../Patient/p1", None),
                ("./Patient/p1", None),
                ("Patient/p1/", None),
                ("/Patient/p1", None),
                ("Patient/p1/_history/x", None),
                ("#p1", None),
                ("patient/p1", None),
            ],
        );
    }

    #[test]
    fn local_references_drop_base_and_history_and_contained_ones_name_nothing() {
        assert_splits(
            local_reference,
            &[
                ("#/Patient/p1", None),
                ("#p1", None),
                ("#c1", None),
                ("urn:uuid:abc", None),
                ("Patient/p1", Some(("Patient", "p1"))),
                (
                    "https://a.example/fhir/Patient/p1/_history/2",
                    Some(("Patient", "p1")),
                ),
                ("Patient/1", Some(("Patient", "1"))),
                ("http://x/fhir/Patient/1/_history/2", Some(("Patient", "1"))),
            ],
        );
    }

    fn eval(expr: &str, rt: &str, v: &Value) -> Vec<Value> {
        Expr::parse(expr, rt)
            .unwrap()
            .evaluate(v)
            .into_iter()
            .map(|n| n.value.clone())
            .collect()
    }

    #[test]
    fn paths_unions_and_choices() {
        let obs = json!({"resourceType":"Observation","subject":{"reference":"Patient/p1"},
            "effectiveDateTime":"2020-01-02","valueQuantity":{"value":1},
            "code":{"coding":[{"system":"s","code":"a"},{"code":"b"}]}});
        assert_eq!(
            eval("Observation.code.coding", "Observation", &obs).len(),
            2
        );
        assert_eq!(
            eval("Observation.effective", "Observation", &obs),
            vec![json!("2020-01-02")]
        );
        assert_eq!(
            eval("(Observation.effective as dateTime)", "Observation", &obs),
            vec![json!("2020-01-02")]
        );
        assert!(eval("Observation.effective.as(Period)", "Observation", &obs).is_empty());
        assert_eq!(
            eval(
                "Observation.subject.where(resolve() is Patient)",
                "Observation",
                &obs
            )
            .len(),
            1
        );
        assert!(
            eval(
                "Observation.subject.where(resolve() is Group)",
                "Observation",
                &obs
            )
            .is_empty()
        );
        assert_eq!(
            eval(
                "Condition.subject | Observation.subject",
                "Observation",
                &obs
            )
            .len(),
            1
        );
        let p =
            json!({"telecom":[{"system":"email","value":"a@b"},{"system":"phone","value":"1"}]});
        assert_eq!(
            eval("Patient.telecom.where(system='email')", "Patient", &p),
            vec![json!({"system":"email","value":"a@b"})]
        );
    }

    #[test]
    fn unsupported_syntax_is_refused() {
        assert!(
            Expr::parse(
                "Patient.deceased.exists() and Patient.deceased != false",
                "Patient"
            )
            .is_none()
        );
        assert!(Expr::parse("Observation.code", "Patient").is_none());
    }
}
