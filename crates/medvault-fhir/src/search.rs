//! Search parameters: which values a resource offers to each parameter, the plaintext index keys
//! derived from them (blinded by the caller), parsing of search values, and the exact match
//! re-checked after decryption.
//!
//! Index key forms (documented with what each leaks in `ARCHITECTURE.md`):
//!
//! | type | keys |
//! |---|---|
//! | string | `e:<exact text>`, `p:<first n chars of the normalized text>` for n in [`PREFIX_LENGTHS`] |
//! | token | `c:<code>` (the system is checked after decryption) |
//! | reference | `r:<Type>/<id>` |
//! | date | `y:<year>` (≤ 10 years) or `y:wide`; `m:<year-month>` (≤ 12 months) or `m:wide` |
//! | number | `n:d:<fine bucket>`, `n:m:<coarse bucket>` (see `number.rs`) |
//! | quantity | `q:<bucket>`, `qc:<code or unit>|<bucket>` for both buckets (the system is checked after decryption) |
//! | uri | `u:<uri>`; for a `url` parameter also `ub:<uri up to a />` for each path prefix (at most 16) |
//!
//! Narrower forms (a token's `system|code`, a quantity's system, the prefix lengths between the
//! listed ones) were indexed once and are still recognised in older databases, but nothing new
//! writes them: each was a row per value, and an equality a database reader could count, for a
//! narrowing the decrypted re-check does almost as well (codes rarely repeat across systems).

use serde_json::Value;
use unicode_normalization::UnicodeNormalization as _;

use crate::date;
use crate::number::{self, Prefix};
use crate::path::{Expr, Node, local_reference, relative_reference};

/// Prefix lengths (in normalized characters) that get an index key. A query whose length is in
/// this list is answered exactly by the index; any other is narrowed by the longest listed
/// prefix it has and filtered exactly after decryption. Fewer lengths mean fewer index rows per
/// value (each a random B-tree insert) and less prefix leakage.
/// A one-character query has no key: it is answered by walking the type's resources and
/// filtering them (a page stops as soon as it is full), and the first letter's frequency is the
/// coarsest thing a database reader could otherwise count.
pub(crate) const PREFIX_LENGTHS: [usize; 4] = [2, 3, 5, 8];
/// Above this many months a date window is searched through year buckets.
const MAX_QUERY_MONTHS: usize = 36;

/// The search parameter types medvault supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Text, matched by normalized prefix or exactly.
    String,
    /// Coded values and identifiers.
    Token,
    /// References to other resources.
    Reference,
    /// Dates and periods.
    Date,
    /// Decimal and integer values, with prefixes and implied precision.
    Number,
    /// Quantities (and Money): a number with a unit.
    Quantity,
    /// URIs, matched exactly or by path (`:below`, `:above`).
    Uri,
    /// Several components matched on the same element (`code$value`).
    Composite,
}

impl ParamKind {
    /// Parses the `type` of a SearchParameter definition; unsupported types give `None`.
    pub fn from_fhir(t: &str) -> Option<Self> {
        match t {
            "string" => Some(Self::String),
            "token" => Some(Self::Token),
            "reference" => Some(Self::Reference),
            "date" => Some(Self::Date),
            "number" => Some(Self::Number),
            "quantity" => Some(Self::Quantity),
            "uri" => Some(Self::Uri),
            "composite" => Some(Self::Composite),
            _ => None,
        }
    }

    /// The FHIR name of the type.
    pub fn as_fhir(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Token => "token",
            Self::Reference => "reference",
            Self::Date => "date",
            Self::Number => "number",
            Self::Quantity => "quantity",
            Self::Uri => "uri",
            Self::Composite => "composite",
        }
    }
}

/// One search parameter of one resource type, built from its official definition.
#[derive(Debug, Clone)]
pub struct SearchParam {
    /// The parameter code (`family`, `code`, …).
    pub code: String,
    /// Its type.
    pub kind: ParamKind,
    /// Canonical URL of the definition.
    pub url: String,
    /// Target resource types (reference parameters).
    pub targets: Vec<String>,
    /// A composite's components, each with its expression relative to the composite's element.
    components: Vec<SearchParam>,
    /// The parameter of the same type whose index narrows this one: the parameter defining a
    /// composite's first component (it indexes a superset of that component's values); the
    /// parameter itself otherwise. `None` for a composite whose first component no parameter of
    /// the type defines: it is only filtered after decryption.
    index_param: Option<String>,
    expr: Expr,
}

/// Why a search value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// The modifier is not supported for this parameter.
    #[error("modifier ':{0}' is not supported for this parameter")]
    Modifier(String),
    /// The value is not valid for the parameter's type.
    #[error("invalid value for a {0} parameter")]
    Value(&'static str),
    /// `:missing` takes `true` or `false`.
    #[error(":missing takes true or false")]
    Missing,
    /// A composite value does not have one part per component.
    #[error("a composite value needs {0} parts separated by '$'")]
    Composite(usize),
    /// The parameter cannot order results.
    #[error("results cannot be sorted by a composite parameter")]
    Sort,
    /// The prefix (comparator) is not supported for this parameter.
    #[error(
        "prefix '{0}' is not supported here (dates take eq, gt, lt, ge, le, sa and eb; numbers and quantities also ne and ap)"
    )]
    Comparator(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Extracted {
    Str(String),
    Token {
        system: Option<String>,
        code: String,
        /// An Identifier's `type` codings (system, code), for `:of-type`.
        types: Vec<(Option<String>, String)>,
    },
    Ref(String),
    Date(i64, i64),
    Number(f64),
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Prefix(String),
    Exact(String),
    /// `system`: `None` = any system, `Some(None)` = no system, `Some(Some(s))` = that system.
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
    },
    Ref(Vec<String>),
    Date {
        cmp: Prefix,
        start: i64,
        end: i64,
    },
    Number(number::Query),
    /// `system`/`code` as in a token; the code also matches a quantity's `unit`.
    Quantity {
        query: number::Query,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        value: String,
        how: UriMatch,
    },
    /// Normalized text found anywhere in a string (`:contains`).
    Contains(String),
    /// An Identifier of this type (system, code) with this value (`:of-type`).
    OfType {
        system: String,
        code: String,
        value: String,
    },
    /// No value matches the token (`:not`; a clause's alternatives are all excluded).
    Not(Box<Matcher>),
    /// The parameter has no value (`true`) or has one (`false`).
    Missing(bool),
    /// One matcher per component, all met by the same element.
    Composite(Vec<Matcher>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UriMatch {
    Exact,
    /// The stored URI is the value or below it (`value/…`).
    Below,
    /// The stored URI is the value or above it (the value is `stored/…`).
    Above,
}

/// Most path prefixes of one URI that get a `:below` index key.
const MAX_URI_PREFIXES: usize = 16;

/// The proper prefixes of `uri` that end just before a `/` of its path (after any `scheme://`).
fn uri_prefixes(uri: &str) -> impl Iterator<Item = &str> {
    let start = uri.find("://").map_or(0, |p| p + 3);
    uri.char_indices()
        .filter(move |&(i, c)| c == '/' && i > start)
        .map(move |(i, _)| &uri[..i])
        .filter(|p| !p.ends_with('/'))
        .take(MAX_URI_PREFIXES)
}

/// One comma-separated alternative of a search clause.
#[derive(Debug, Clone)]
pub struct Alternative {
    /// Plaintext index keys; a resource matches the index when it has any of them.
    pub keys: Vec<Vec<u8>>,
    /// True when an index hit is already an exact match (no filtering after decryption needed,
    /// barring a 2^-128 blind-value collision, which the re-check still catches).
    pub exact: bool,
    matcher: Matcher,
}

/// A parsed `param[:modifier]=v1,v2` clause: the alternatives are ORed.
#[derive(Debug, Clone)]
pub struct Clause {
    /// Parameter code.
    pub param: String,
    /// The parameter whose blind index the keys are looked up in (`None`: the clause has no
    /// index keys and is only checked after decryption: `:missing`, `:not`, `:contains`).
    pub index_param: Option<String>,
    /// Alternatives.
    pub alternatives: Vec<Alternative>,
}

impl Clause {
    /// True when the index cannot narrow this clause: every candidate is checked after
    /// decryption.
    pub fn filter_only(&self) -> bool {
        self.index_param.is_none() || self.alternatives.iter().any(|a| a.keys.is_empty())
    }

    /// True when every alternative is answered exactly by the index.
    pub fn exact(&self) -> bool {
        self.alternatives.iter().all(|a| a.exact)
    }

    /// All index keys of all alternatives.
    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.alternatives.iter().flat_map(|a| a.keys.iter())
    }
}

/// Lower-cases and strips accents (NFD, then drops combining marks), as FHIR string search
/// requires.
pub fn normalize(text: &str) -> String {
    text.nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn prefix(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn key(tag: &str, parts: &[&str]) -> Vec<u8> {
    let mut k = tag.as_bytes().to_vec();
    k.push(b':');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(b'|');
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// Splits `raw` on `sep` where it is not escaped with `\`, keeping every escape as written.
fn split_escaped(raw: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in raw.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&raw[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&raw[start..]);
    out
}

/// Splits a search value on commas that are not escaped with `\`, unescaping `\,` `\|` `\$` `\\`.
fn split_values(raw: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next()
                    && let Some(last) = out.last_mut()
                {
                    last.push(n);
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn date_keys(start: i64, end: i64, query: bool) -> Vec<Vec<u8>> {
    let start = start.max(date::DOMAIN_START);
    let end = end.min(date::DOMAIN_END).max(start + 1);
    let mut keys = Vec::new();
    let month_cap = if query { MAX_QUERY_MONTHS } else { 12 };
    let months = date::months(start, end, month_cap);
    if months.len() <= month_cap {
        keys.extend(
            months
                .iter()
                .map(|(y, m)| key("m", &[&format!("{y:04}-{m:02}")])),
        );
        if query {
            keys.push(key("m", &["wide"]));
        }
        if query {
            return keys;
        }
    } else if !query {
        keys.push(key("m", &["wide"]));
    }
    let (y0, _) = date::year_month(start);
    let (y1, _) = date::year_month(end - 1);
    if !query && y1 - y0 >= 10 {
        keys.push(key("y", &["wide"]));
    } else {
        keys.extend((y0..=y1).map(|y| key("y", &[&format!("{y:04}")])));
        if query {
            keys.push(key("y", &["wide"]));
        }
    }
    keys
}

impl SearchParam {
    /// Builds a parameter from its definition for `resource_type`; `None` when its type or
    /// expression is outside what medvault supports.
    /// A composite's components are found with `definition` (a SearchParameter definition by
    /// URL) and `index_param` (the code of this type's parameter with that URL, if any).
    pub fn from_definition(def: &Value, resource_type: &str) -> Option<Self> {
        Self::build(
            def,
            Expr::parse(def.get("expression")?.as_str()?, resource_type)?,
        )
    }

    fn build(def: &Value, expr: Expr) -> Option<Self> {
        let kind = ParamKind::from_fhir(def.get("type")?.as_str()?)?;
        let code = def.get("code")?.as_str()?.to_owned();
        Some(Self {
            index_param: (kind != ParamKind::Composite).then(|| code.clone()),
            code,
            kind,
            url: def
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            targets: crate::strings(def.get("target")),
            components: Vec::new(),
            expr,
        })
    }

    /// Builds a composite parameter: `definition` finds a component's SearchParameter by URL,
    /// `index_param` the code of this type's parameter with a URL (the one whose index narrows
    /// the composite by its first component). `None` when a component is unsupported.
    pub fn composite<'d>(
        def: &Value,
        resource_type: &str,
        definition: impl Fn(&str) -> Option<&'d Value>,
        index_param: impl Fn(&str) -> Option<String>,
    ) -> Option<Self> {
        let mut param = Self::from_definition(def, resource_type)?;
        if param.kind != ParamKind::Composite {
            return None;
        }
        let mut first_url = None;
        for c in def.get("component")?.as_array()? {
            let url = c.get("definition")?.as_str()?;
            let component_def = definition(url)?;
            let expr = Expr::parse_relative(c.get("expression")?.as_str()?)?;
            let component = Self::build(component_def, expr)?;
            if component.kind == ParamKind::Composite {
                return None;
            }
            first_url.get_or_insert(url);
            param.components.push(component);
        }
        param.index_param = first_url.and_then(index_param);
        (param.components.len() >= 2).then_some(param)
    }

    /// True for the parameters whose URIs get path-prefix keys (`:below` through the index):
    /// the canonical `url` of conformance resources, where `ValueSet?url:below=…` is how a
    /// publisher's artefacts are listed. A profile or a system URI repeats on every resource
    /// that has it, and its prefixes would be rows that narrow nothing.
    fn uri_hierarchy(&self) -> bool {
        self.kind == ParamKind::Uri && self.code == "url"
    }

    fn values(&self, resource: &Value) -> Vec<Extracted> {
        let mut out = Vec::new();
        for node in self.expr.evaluate(resource) {
            extract(self.kind, node, &mut out);
        }
        out
    }

    /// The plaintext index keys `resource` offers to this parameter (deduplicated).
    pub fn index_keys(&self, resource: &Value) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        for v in self.values(resource) {
            match v {
                Extracted::Str(s) => {
                    keys.push(key("e", &[&s]));
                    let n = normalize(&s);
                    let chars = n.chars().count();
                    for len in PREFIX_LENGTHS.into_iter().filter(|&l| l <= chars) {
                        keys.push(key("p", &[prefix(&n, len)]));
                    }
                }
                Extracted::Token { code, .. } => keys.push(key("c", &[&code])),
                Extracted::Ref(r) => keys.push(key("r", &[&r])),
                Extracted::Date(s, e) => keys.extend(date_keys(s, e, false)),
                Extracted::Number(x) => {
                    keys.extend(number::value_buckets(x).iter().map(|b| key("n", &[b])));
                }
                Extracted::Quantity {
                    value, code, unit, ..
                } => {
                    for b in number::value_buckets(value) {
                        keys.push(key("q", &[&b]));
                        for c in code
                            .iter()
                            .chain(unit.iter().filter(|u| Some(*u) != code.as_ref()))
                        {
                            keys.push(key("qc", &[c, &b]));
                        }
                    }
                }
                Extracted::Uri(u) => {
                    if self.uri_hierarchy() {
                        keys.extend(uri_prefixes(&u).map(|p| key("ub", &[p])));
                    }
                    keys.push(key("u", &[&u]));
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The `Reference` elements this parameter selects in `resource` (empty unless it is a
    /// reference parameter).
    pub fn reference_nodes<'a>(&self, resource: &'a Value) -> Vec<&'a Value> {
        if self.kind != ParamKind::Reference {
            return Vec::new();
        }
        self.expr
            .evaluate(resource)
            .into_iter()
            .map(|n| n.value)
            .filter(|v| v.is_object())
            .collect()
    }

    /// The references (`Type/id`) this parameter finds in `resource`.
    pub fn references(&self, resource: &Value) -> Vec<String> {
        self.values(resource)
            .into_iter()
            .filter_map(|v| match v {
                Extracted::Ref(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The references to Patients this parameter finds in `resource` (`Patient/<id>` → id).
    pub fn patient_ids(&self, resource: &Value) -> Vec<String> {
        self.values(resource)
            .into_iter()
            .filter_map(|v| match v {
                Extracted::Ref(r) => r.strip_prefix("Patient/").map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    /// Parses `param[:modifier]=raw`.
    ///
    /// # Errors
    /// [`SearchError`] for unsupported modifiers or comparators and malformed values.
    pub fn parse_clause(&self, modifier: Option<&str>, raw: &str) -> Result<Clause, SearchError> {
        let mut alternatives = Vec::new();
        if self.kind == ParamKind::Composite {
            if modifier.is_some_and(|m| m != "missing") {
                return Err(SearchError::Modifier(
                    modifier.unwrap_or_default().to_owned(),
                ));
            }
            for value in split_escaped(raw, ',') {
                alternatives.push(match modifier {
                    Some(_) => missing(value)?,
                    None => self.parse_composite(value)?,
                });
            }
        } else {
            for value in split_values(raw) {
                alternatives.push(self.parse_value(modifier, &value)?);
            }
        }
        let filter_only = alternatives.iter().any(|a| a.keys.is_empty());
        Ok(Clause {
            param: self.code.clone(),
            index_param: self.index_param.clone().filter(|_| !filter_only),
            alternatives,
        })
    }

    fn parse_composite(&self, value: &str) -> Result<Alternative, SearchError> {
        let parts = split_escaped(value, '$');
        if parts.len() != self.components.len() {
            return Err(SearchError::Composite(self.components.len()));
        }
        let mut matchers = Vec::with_capacity(parts.len());
        let mut keys = Vec::new();
        for (i, (component, part)) in self.components.iter().zip(parts).enumerate() {
            let alt = component.parse_value(None, &split_values(part).concat())?;
            if i == 0 && self.index_param.is_some() {
                keys = alt.keys;
            }
            matchers.push(alt.matcher);
        }
        Ok(Alternative {
            keys,
            exact: false,
            matcher: Matcher::Composite(matchers),
        })
    }

    fn parse_value(&self, modifier: Option<&str>, value: &str) -> Result<Alternative, SearchError> {
        let bad_modifier = || SearchError::Modifier(modifier.unwrap_or_default().to_owned());
        if modifier == Some("missing") {
            return missing(value);
        }
        match self.kind {
            ParamKind::String => {
                if value.is_empty() {
                    return Err(SearchError::Value("string"));
                }
                match modifier {
                    None => {
                        let n = normalize(value);
                        let chars = n.chars().count();
                        // The longest indexed prefix the query has narrows it; shorter than
                        // every indexed prefix, only the other clauses do.
                        let len = PREFIX_LENGTHS.into_iter().filter(|&l| l <= chars).max();
                        Ok(Alternative {
                            keys: len
                                .map(|len| vec![key("p", &[prefix(&n, len)])])
                                .unwrap_or_default(),
                            exact: len == Some(chars),
                            matcher: Matcher::Prefix(n),
                        })
                    }
                    Some("exact") => Ok(Alternative {
                        keys: vec![key("e", &[value])],
                        exact: true,
                        matcher: Matcher::Exact(value.to_owned()),
                    }),
                    // No index answers a substring: only the other clauses narrow.
                    Some("contains") => Ok(Alternative {
                        keys: Vec::new(),
                        exact: false,
                        matcher: Matcher::Contains(normalize(value)),
                    }),
                    Some(_) => Err(bad_modifier()),
                }
            }
            ParamKind::Token => {
                match modifier {
                    None => {}
                    Some("not") => {
                        // Resources without the code match too: only the other clauses narrow.
                        let inner = self.parse_value(None, value)?;
                        return Ok(Alternative {
                            keys: Vec::new(),
                            exact: false,
                            matcher: Matcher::Not(Box::new(inner.matcher)),
                        });
                    }
                    Some("of-type") => {
                        let mut parts = value.splitn(3, '|');
                        let (Some(system), Some(code), Some(v)) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            return Err(SearchError::Value("of-type (system|code|value)"));
                        };
                        if [system, code, v].iter().any(|p| p.is_empty()) {
                            return Err(SearchError::Value("of-type (system|code|value)"));
                        }
                        return Ok(Alternative {
                            keys: vec![key("c", &[v])],
                            exact: false,
                            matcher: Matcher::OfType {
                                system: system.to_owned(),
                                code: code.to_owned(),
                                value: v.to_owned(),
                            },
                        });
                    }
                    Some(_) => return Err(bad_modifier()),
                }
                // Only the code is indexed: `code` is answered by the index alone; a system
                // (`system|code`, `|code`) is checked after decryption, and `system|` alone has
                // no key (only the other clauses narrow it).
                let (system, code) = match value.split_once('|') {
                    None if !value.is_empty() => (None, Some(value)),
                    Some(("", code)) if !code.is_empty() => (Some(None), Some(code)),
                    Some((sys, "")) if !sys.is_empty() => (Some(Some(sys)), None),
                    Some((sys, code)) if !sys.is_empty() && !code.is_empty() => {
                        (Some(Some(sys)), Some(code))
                    }
                    _ => return Err(SearchError::Value("token")),
                };
                Ok(Alternative {
                    keys: code.map(|c| vec![key("c", &[c])]).unwrap_or_default(),
                    exact: system.is_none(),
                    matcher: Matcher::Token {
                        system: system.map(|s| s.map(str::to_owned)),
                        code: code.map(str::to_owned),
                    },
                })
            }
            ParamKind::Reference => {
                let refs: Vec<String> = match (modifier, local_reference(value)) {
                    (None, Some((t, id))) => vec![format!("{t}/{id}")],
                    (Some(m), _) if m.starts_with(|c: char| c.is_ascii_uppercase()) => {
                        if !self.targets.iter().any(|t| t == m) {
                            return Err(bad_modifier());
                        }
                        medvault_core::ResourceId::new(value)
                            .map_err(|_| SearchError::Value("reference"))?;
                        vec![format!("{m}/{value}")]
                    }
                    (Some(_), _) => return Err(bad_modifier()),
                    (None, None) => {
                        medvault_core::ResourceId::new(value)
                            .map_err(|_| SearchError::Value("reference"))?;
                        self.targets
                            .iter()
                            .map(|t| format!("{t}/{value}"))
                            .collect()
                    }
                };
                Ok(Alternative {
                    keys: refs.iter().map(|r| key("r", &[r])).collect(),
                    exact: true,
                    matcher: Matcher::Ref(refs),
                })
            }
            ParamKind::Date => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                let (cmp, rest) = Prefix::split(value).map_err(SearchError::Comparator)?;
                let (start, end) = date::parse_range(rest).ok_or(SearchError::Value("date"))?;
                let (ws, we) = match cmp {
                    Prefix::Eq => (start, end),
                    Prefix::Gt | Prefix::Sa => (end, date::DOMAIN_END),
                    Prefix::Ge => (start, date::DOMAIN_END),
                    Prefix::Lt | Prefix::Eb => (date::DOMAIN_START, start),
                    Prefix::Le => (date::DOMAIN_START, end),
                    Prefix::Ne | Prefix::Ap => {
                        return Err(SearchError::Comparator(value[..2].to_owned()));
                    }
                };
                Ok(Alternative {
                    keys: date_keys(ws, we, true),
                    exact: false,
                    matcher: Matcher::Date { cmp, start, end },
                })
            }
            ParamKind::Number => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                let query = number_query(value, "number")?;
                Ok(Alternative {
                    keys: query.buckets().iter().map(|b| key("n", &[b])).collect(),
                    exact: false,
                    matcher: Matcher::Number(query),
                })
            }
            ParamKind::Quantity => {
                if modifier.is_some() {
                    return Err(bad_modifier());
                }
                let mut parts = value.splitn(3, '|');
                let number = parts.next().unwrap_or_default();
                let (system, code) = match (parts.next(), parts.next()) {
                    (None, _) => (None, None),
                    (Some(s), Some(c)) if !c.is_empty() => (
                        Some(s).filter(|s| !s.is_empty()).map(str::to_owned),
                        Some(c.to_owned()),
                    ),
                    _ => return Err(SearchError::Value("quantity")),
                };
                let query = number_query(number, "quantity")?;
                let keys = query
                    .buckets()
                    .iter()
                    .map(|b| match &code {
                        Some(c) => key("qc", &[c, b]),
                        None => key("q", &[b]),
                    })
                    .collect();
                Ok(Alternative {
                    keys,
                    exact: false,
                    matcher: Matcher::Quantity {
                        query,
                        system,
                        code,
                    },
                })
            }
            ParamKind::Composite => Err(SearchError::Composite(self.components.len())),
            ParamKind::Uri => {
                if value.is_empty() {
                    return Err(SearchError::Value("uri"));
                }
                let (how, keys) = match modifier {
                    None => (UriMatch::Exact, vec![key("u", &[value])]),
                    // Path prefixes are indexed for canonical `url`s only; elsewhere `:below`
                    // is narrowed by the other clauses and checked after decryption.
                    Some("below") if self.uri_hierarchy() => (
                        UriMatch::Below,
                        vec![key("u", &[value]), key("ub", &[value])],
                    ),
                    Some("below") => (UriMatch::Below, Vec::new()),
                    Some("above") => (
                        UriMatch::Above,
                        std::iter::once(value)
                            .chain(uri_prefixes(value))
                            .map(|p| key("u", &[p]))
                            .collect(),
                    ),
                    Some(_) => return Err(bad_modifier()),
                };
                Ok(Alternative {
                    exact: !keys.is_empty(),
                    keys,
                    matcher: Matcher::Uri {
                        value: value.to_owned(),
                        how,
                    },
                })
            }
        }
    }

    /// Re-checks a clause against a decrypted resource.
    pub fn matches(&self, clause: &Clause, resource: &Value) -> bool {
        if self.kind == ParamKind::Composite {
            return self.composite_matches(clause, resource);
        }
        let values = self.values(resource);
        // `:not=a,b` excludes both codes (every alternative of the clause is a `Not`).
        if clause
            .alternatives
            .iter()
            .all(|a| matches!(a.matcher, Matcher::Not(_)))
            && !clause.alternatives.is_empty()
        {
            return !clause.alternatives.iter().any(|alt| match &alt.matcher {
                Matcher::Not(inner) => values.iter().any(|v| matches_one(inner, v)),
                _ => false,
            });
        }
        clause.alternatives.iter().any(|alt| match &alt.matcher {
            Matcher::Missing(missing) => values.is_empty() == *missing,
            m => values.iter().any(|v| matches_one(m, v)),
        })
    }

    fn composite_matches(&self, clause: &Clause, resource: &Value) -> bool {
        let elements = self.expr.evaluate(resource);
        clause.alternatives.iter().any(|alt| match &alt.matcher {
            Matcher::Missing(missing) => elements.is_empty() == *missing,
            Matcher::Composite(parts) => elements.iter().any(|element| {
                self.components.iter().zip(parts).all(|(component, m)| {
                    let mut values = Vec::new();
                    for node in component.expr.evaluate(element.value) {
                        extract(component.kind, node, &mut values);
                    }
                    values.iter().any(|v| matches_one(m, v))
                })
            }),
            _ => false,
        })
    }

    /// The value `resource` sorts by under this parameter: the lowest value ascending, the
    /// highest descending (a date range by its start ascending, its end descending); `None`
    /// when it has none (such resources sort last).
    ///
    /// # Errors
    /// [`SearchError::Sort`] for a composite parameter.
    pub fn sort_key(
        &self,
        resource: &Value,
        descending: bool,
    ) -> Result<Option<SortKey>, SearchError> {
        if self.kind == ParamKind::Composite {
            return Err(SearchError::Sort);
        }
        let keys = self.values(resource).into_iter().map(|v| match v {
            Extracted::Str(s) => SortKey::Text(normalize(&s)),
            Extracted::Token { code, .. } => SortKey::Text(code),
            Extracted::Ref(r) | Extracted::Uri(r) => SortKey::Text(r),
            Extracted::Date(start, end) => SortKey::Time(if descending { end } else { start }),
            Extracted::Number(x) | Extracted::Quantity { value: x, .. } => SortKey::Number(x),
        });
        Ok(if descending {
            keys.max_by(SortKey::compare)
        } else {
            keys.min_by(SortKey::compare)
        })
    }
}

/// A value results are ordered by (`_sort`).
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// Normalized text, a code, a reference or a URI.
    Text(String),
    /// A number or a quantity's value.
    Number(f64),
    /// A date's start or end (Unix seconds).
    Time(i64),
}

impl SortKey {
    /// Total order: by kind, then by value (one parameter gives one kind).
    pub fn compare(a: &Self, b: &Self) -> std::cmp::Ordering {
        match (a, b) {
            (Self::Text(x), Self::Text(y)) => x.cmp(y),
            (Self::Number(x), Self::Number(y)) => x.total_cmp(y),
            (Self::Time(x), Self::Time(y)) => x.cmp(y),
            _ => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Self::Text(_) => 0,
            Self::Number(_) => 1,
            Self::Time(_) => 2,
        }
    }
}

/// A `:missing=true|false` alternative (checked after decryption).
fn missing(value: &str) -> Result<Alternative, SearchError> {
    let missing = match value {
        "true" => true,
        "false" => false,
        _ => return Err(SearchError::Missing),
    };
    Ok(Alternative {
        keys: Vec::new(),
        exact: false,
        matcher: Matcher::Missing(missing),
    })
}

fn matches_one(m: &Matcher, v: &Extracted) -> bool {
    match (m, v) {
        (Matcher::Prefix(p), Extracted::Str(s)) => normalize(s).starts_with(p.as_str()),
        (Matcher::Exact(p), Extracted::Str(s)) => p == s,
        (Matcher::Contains(p), Extracted::Str(s)) => normalize(s).contains(p.as_str()),
        (
            Matcher::OfType {
                system,
                code,
                value,
            },
            Extracted::Token {
                code: vc, types, ..
            },
        ) => {
            vc == value
                && types
                    .iter()
                    .any(|(s, c)| s.as_deref() == Some(system.as_str()) && c == code)
        }
        (
            Matcher::Token { system, code },
            Extracted::Token {
                system: vs,
                code: vc,
                ..
            },
        ) => {
            code.as_ref().is_none_or(|c| c == vc)
                && match system {
                    None => true,
                    Some(None) => vs.is_none(),
                    Some(Some(s)) => vs.as_deref() == Some(s.as_str()),
                }
        }
        (Matcher::Ref(refs), Extracted::Ref(r)) => refs.iter().any(|x| x == r),
        (Matcher::Date { cmp, start, end }, Extracted::Date(rs, re)) => match cmp {
            Prefix::Eq => start <= rs && re <= end,
            Prefix::Gt => re > end,
            Prefix::Lt => rs < start,
            Prefix::Ge => re > start,
            Prefix::Le => rs < end,
            Prefix::Sa => rs >= end,
            Prefix::Eb => re <= start,
            Prefix::Ne | Prefix::Ap => false,
        },
        (Matcher::Number(q), Extracted::Number(x)) => q.matches(*x),
        (
            Matcher::Quantity {
                query,
                system,
                code,
            },
            Extracted::Quantity {
                value,
                system: vs,
                code: vc,
                unit,
            },
        ) => {
            query.matches(*value)
                && code.as_ref().is_none_or(|c| {
                    vc.as_ref() == Some(c) || (system.is_none() && unit.as_ref() == Some(c))
                })
                && system.as_ref().is_none_or(|s| vs.as_ref() == Some(s))
        }
        (Matcher::Uri { value, how }, Extracted::Uri(u)) => match how {
            UriMatch::Exact => u == value,
            UriMatch::Below => {
                u == value
                    || u.strip_prefix(value.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            }
            UriMatch::Above => {
                u == value
                    || value
                        .strip_prefix(u.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            }
        },
        _ => false,
    }
}

/// Parses a number or quantity's `[prefix]number`.
fn number_query(text: &str, kind: &'static str) -> Result<number::Query, SearchError> {
    number::Query::parse(text).map_err(|e| match e {
        Some(prefix) => SearchError::Comparator(prefix),
        None => SearchError::Value(kind),
    })
}

fn push_str(out: &mut Vec<Extracted>, v: Option<&Value>) {
    match v {
        Some(Value::String(s)) if !s.is_empty() => out.push(Extracted::Str(s.clone())),
        Some(Value::Array(items)) => items.iter().for_each(|i| push_str(out, Some(i))),
        _ => {}
    }
}

fn push_coding(out: &mut Vec<Extracted>, c: &Value) {
    if let Some(code) = c.get("code").and_then(Value::as_str) {
        out.push(Extracted::Token {
            system: c.get("system").and_then(Value::as_str).map(str::to_owned),
            code: code.to_owned(),
            types: Vec::new(),
        });
    }
}

fn extract(kind: ParamKind, node: Node<'_>, out: &mut Vec<Extracted>) {
    let v = node.value;
    match kind {
        ParamKind::String => match v {
            Value::String(_) => push_str(out, Some(v)),
            Value::Object(_) => {
                for field in [
                    "family",
                    "given",
                    "prefix",
                    "suffix",
                    "text",
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                ] {
                    push_str(out, v.get(field));
                }
            }
            _ => {}
        },
        ParamKind::Token => match v {
            Value::String(s) => out.push(Extracted::Token {
                system: None,
                code: s.clone(),
                types: Vec::new(),
            }),
            Value::Bool(b) => out.push(Extracted::Token {
                system: None,
                code: b.to_string(),
                types: Vec::new(),
            }),
            Value::Object(map) => {
                if let Some(Value::Array(codings)) = map.get("coding") {
                    codings.iter().for_each(|c| push_coding(out, c));
                } else if map.contains_key("code") {
                    push_coding(out, v);
                } else if let Some(value) = map.get("value").and_then(Value::as_str) {
                    // Identifier (system is a URI) or ContactPoint (system is phone/email/…).
                    let system = map
                        .get("system")
                        .and_then(Value::as_str)
                        .filter(|s| s.contains(':'));
                    let types = map
                        .get("type")
                        .and_then(|t| t.get("coding"))
                        .and_then(Value::as_array)
                        .map(|codings| {
                            codings
                                .iter()
                                .filter_map(|c| {
                                    let code = c.get("code").and_then(Value::as_str)?;
                                    let system = c.get("system").and_then(Value::as_str);
                                    Some((system.map(str::to_owned), code.to_owned()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Extracted::Token {
                        system: system.map(str::to_owned),
                        code: value.to_owned(),
                        types,
                    });
                }
            }
            _ => {}
        },
        ParamKind::Reference => {
            if let Some((t, id)) = v
                .get("reference")
                .and_then(Value::as_str)
                .and_then(relative_reference)
            {
                out.push(Extracted::Ref(format!("{t}/{id}")));
            }
        }
        ParamKind::Number => {
            if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
                out.push(Extracted::Number(x));
            }
        }
        ParamKind::Quantity => {
            // Quantity (and its profiles Age, Duration…) and Money (its currency as the code).
            if let Some(value) = v
                .get("value")
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite())
            {
                let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                let currency = text("currency");
                out.push(Extracted::Quantity {
                    value,
                    system: text("system")
                        .or_else(|| currency.as_ref().map(|_| "urn:iso:std:iso:4217".to_owned())),
                    code: text("code").or(currency),
                    unit: text("unit"),
                });
            }
        }
        ParamKind::Composite => {}
        ParamKind::Uri => {
            if let Some(u) = v.as_str().filter(|u| !u.is_empty()) {
                out.push(Extracted::Uri(u.to_owned()));
            }
        }
        ParamKind::Date => match v {
            Value::String(s) => {
                if let Some((a, b)) = date::parse_range(s) {
                    out.push(Extracted::Date(a, b));
                }
            }
            Value::Object(_) => {
                let start = v
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(date::parse_range);
                let end = v
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(date::parse_range);
                if start.is_some() || end.is_some() {
                    out.push(Extracted::Date(
                        start.map_or(i64::MIN / 2, |s| s.0),
                        end.map_or(i64::MAX / 2, |e| e.1),
                    ));
                }
            }
            _ => {}
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(kind: &str, expr: &str, rt: &str) -> SearchParam {
        coded("x", kind, expr, rt)
    }

    fn coded(code: &str, kind: &str, expr: &str, rt: &str) -> SearchParam {
        SearchParam::from_definition(
            &json!({"code":code,"type":kind,"expression":expr,"target":["Patient","Group"]}),
            rt,
        )
        .unwrap()
    }

    fn hit(p: &SearchParam, modifier: Option<&str>, q: &str, r: &Value) -> bool {
        let clause = p.parse_clause(modifier, q).unwrap();
        let keys = p.index_keys(r);
        // A clause without keys is narrowed by the others and decided after decryption.
        let index_hit = clause.filter_only() || clause.keys().any(|k| keys.contains(k));
        let exact = p.matches(&clause, r);
        assert!(
            !exact || index_hit,
            "index must never miss a true match: {q}"
        );
        exact
    }

    #[test]
    fn strings_match_by_normalized_prefix_and_exactly() {
        let p = param("string", "Patient.name", "Patient");
        let r = json!({"name":[{"family":"Müller-Lüdenscheidt","given":["Ève"]}]});
        assert!(hit(&p, None, "muller", &r));
        assert!(
            hit(&p, None, "MÜLLER-LÜDENSCHEIDT", &r),
            "long query is filtered exactly"
        );
        assert!(hit(&p, None, "eve", &r));
        assert!(!hit(&p, None, "muller-x", &r));
        assert!(hit(&p, Some("exact"), "Ève", &r));
        assert!(!hit(&p, Some("exact"), "eve", &r));
        assert!(p.parse_clause(Some("text"), "x").is_err());
        assert!(hit(&p, None, "zzz,eve", &r), "comma means OR");
        let one = p.parse_clause(None, "m").unwrap();
        assert!(
            one.filter_only() && p.matches(&one, &r),
            "one character has no key of its own"
        );
        let keys = p.index_keys(&json!({"name":[{"family":"Abcdefghij"}]}));
        let prefixes: Vec<&[u8]> = keys
            .iter()
            .filter(|k| k.starts_with(b"p:"))
            .map(Vec::as_slice)
            .collect();
        assert_eq!(
            prefixes,
            [&b"p:ab"[..], b"p:abc", b"p:abcde", b"p:abcdefgh"],
            "prefixes of 2, 3, 5 and 8 characters only"
        );
        let four = p.parse_clause(None, "abcd").unwrap();
        assert!(!four.exact() && four.keys().any(|k| k == b"p:abc"));
        assert!(p.parse_clause(None, "abcde").unwrap().exact());
        let contains = p.parse_clause(Some("contains"), "LUDEN").unwrap();
        assert!(contains.filter_only() && p.matches(&contains, &r));
        let no = p.parse_clause(Some("contains"), "xyz").unwrap();
        assert!(!p.matches(&no, &r));
    }

    #[test]
    fn missing_not_and_of_type() {
        let g = param("token", "Patient.gender", "Patient");
        let female = json!({"gender":"female"});
        let unknown = json!({});
        let yes = g.parse_clause(Some("missing"), "true").unwrap();
        let no = g.parse_clause(Some("missing"), "false").unwrap();
        assert!(yes.filter_only());
        assert!(g.matches(&yes, &unknown) && !g.matches(&yes, &female));
        assert!(g.matches(&no, &female) && !g.matches(&no, &unknown));
        assert_eq!(
            g.parse_clause(Some("missing"), "maybe").unwrap_err(),
            SearchError::Missing
        );
        let not = g.parse_clause(Some("not"), "male,other").unwrap();
        assert!(g.matches(&not, &female) && g.matches(&not, &unknown));
        let not_female = g.parse_clause(Some("not"), "male,female").unwrap();
        assert!(!g.matches(&not_female, &female), ":not=a,b excludes both");

        let id = param("token", "Patient.identifier", "Patient");
        let r = json!({"identifier":[{"type":{"coding":[{
            "system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},
            "system":"urn:oid:1.2","value":"123"}]});
        let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
        assert!(hit(&id, Some("of-type"), &format!("{v2}|MR|123"), &r));
        assert!(!hit(&id, Some("of-type"), &format!("{v2}|SS|123"), &r));
        assert!(!hit(&id, Some("of-type"), &format!("{v2}|MR|124"), &r));
        assert!(id.parse_clause(Some("of-type"), "MR|123").is_err());
    }

    #[test]
    fn composites_match_on_one_element() {
        let defs = json!({
            "code": {"code":"code","type":"token","url":"u:code","expression":"Observation.code"},
            "value": {"code":"value-quantity","type":"quantity","url":"u:value",
                "expression":"Observation.value"},
            "composite": {"code":"component-code-value-quantity","type":"composite",
                "url":"u:composite","expression":"Observation.component",
                "component":[{"definition":"u:code","expression":"code"},
                    {"definition":"u:value","expression":"value.as(Quantity)"}]},
        });
        let by_url = |u: &str| match u {
            "u:code" => defs.get("code"),
            "u:value" => defs.get("value"),
            _ => None,
        };
        let p = SearchParam::composite(&defs["composite"], "Observation", by_url, |u| {
            (u == "u:code").then(|| "component-code".to_owned())
        })
        .unwrap();
        let bp = json!({"component":[
            {"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},
             "valueQuantity":{"value":120,"unit":"mmHg"}},
            {"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},
             "valueQuantity":{"value":80,"unit":"mmHg"}}]});
        let clause = |v: &str| p.parse_clause(None, v).unwrap();
        assert!(p.matches(&clause("http://loinc.org|8480-6$gt100"), &bp));
        assert!(p.matches(&clause("8462-4$80"), &bp));
        assert!(
            !p.matches(&clause("http://loinc.org|8462-4$gt100"), &bp),
            "both parts on the same component"
        );
        let c = clause("8480-6$gt100");
        assert_eq!(c.index_param.as_deref(), Some("component-code"));
        assert!(!c.filter_only() && !c.exact());
        assert!(c.keys().any(|k| k == b"c:8480-6"));
        assert_eq!(
            p.parse_clause(None, "8480-6").unwrap_err(),
            SearchError::Composite(2)
        );
        assert!(p.sort_key(&bp, false).is_err());
    }

    #[test]
    fn sort_keys_take_the_lowest_ascending_and_highest_descending() {
        let d = param("date", "Encounter.period", "Encounter");
        let e = json!({"period":{"start":"2020-01-01","end":"2020-03-01"}});
        let (Some(SortKey::Time(a)), Some(SortKey::Time(b))) = (
            d.sort_key(&e, false).unwrap(),
            d.sort_key(&e, true).unwrap(),
        ) else {
            panic!("dates sort by time");
        };
        assert!(a < b);
        let n = param("string", "Patient.name", "Patient");
        let r = json!({"name":[{"family":"Zed","given":["Ann"]}]});
        assert_eq!(
            n.sort_key(&r, false).unwrap(),
            Some(SortKey::Text("ann".into()))
        );
        assert_eq!(
            n.sort_key(&r, true).unwrap(),
            Some(SortKey::Text("zed".into()))
        );
        assert_eq!(n.sort_key(&json!({}), true).unwrap(), None);
    }

    #[test]
    fn tokens() {
        let p = param("token", "Observation.code", "Observation");
        let r = json!({"code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]}});
        assert!(hit(&p, None, "1-8", &r));
        assert!(hit(&p, None, "http://loinc.org|1-8", &r));
        assert!(hit(&p, None, "http://loinc.org|", &r));
        assert!(!hit(&p, None, "|1-8", &r));
        assert!(!hit(&p, None, "http://snomed.info/sct|1-8", &r));
        let nosys = json!({"code":{"coding":[{"code":"1-8"}]}});
        assert!(hit(&p, None, "|1-8", &nosys));
        assert!(p.parse_clause(None, "|").is_err());
        assert!(p.parse_clause(Some("text"), "a").is_err());
        let g = param("token", "Patient.gender", "Patient");
        assert!(hit(&g, None, "female", &json!({"gender":"female"})));
        let id = param("token", "Patient.identifier", "Patient");
        let pr = json!({"identifier":[{"system":"urn:oid:1.2","value":"MRN-1"}]});
        assert!(hit(&id, None, "urn:oid:1.2|MRN-1", &pr));
        assert!(hit(&id, None, "MRN-1", &pr));

        // Only the code is a key: the system is decided after decryption.
        assert_eq!(p.index_keys(&r), vec![b"c:1-8".to_vec()]);
        let with_system = p.parse_clause(None, "http://loinc.org|1-8").unwrap();
        assert!(!with_system.exact() && with_system.keys().eq([b"c:1-8"]));
        assert!(p.parse_clause(None, "1-8").unwrap().exact());
        assert!(
            p.parse_clause(None, "http://loinc.org|")
                .unwrap()
                .filter_only()
        );
    }

    #[test]
    fn references() {
        let p = param("reference", "Observation.subject", "Observation");
        let r = json!({"subject":{"reference":"Patient/p1"}});
        assert!(hit(&p, None, "p1", &r));
        assert!(hit(&p, None, "Patient/p1", &r));
        assert!(hit(&p, Some("Patient"), "p1", &r));
        assert!(!hit(&p, None, "p2", &r));
        assert!(p.parse_clause(Some("Device"), "p1").is_err());
        assert!(p.parse_clause(Some("identifier"), "p1").is_err());
        assert_eq!(p.patient_ids(&r), vec!["p1".to_owned()]);
    }

    #[test]
    fn dates_follow_fhir_range_semantics() {
        let p = param("date", "Patient.birthDate", "Patient");
        let r = json!({"birthDate":"1980-05-17"});
        for (q, want) in [
            ("1980-05-17", true),
            ("1980-05", true),
            ("1980", true),
            ("1980-05-18", false),
            ("eq1980", true),
            ("ge1980-05-17", true),
            ("gt1980-05-17", false),
            ("gt1980-05-16", true),
            ("le1980-05-17", true),
            ("lt1980-05-17", false),
            ("lt1980-05-18", true),
            ("ge1990", false),
            ("le1900", false),
            ("lt2100", true),
            ("ge1800", true),
        ] {
            assert_eq!(hit(&p, None, q, &r), want, "{q}");
        }
        assert!(matches!(
            p.parse_clause(None, "ap1980"),
            Err(SearchError::Comparator(_))
        ));
        assert!(hit(&p, None, "sa1979", &r) && !hit(&p, None, "sa1980-05", &r));
        assert!(hit(&p, None, "eb1981", &r) && !hit(&p, None, "eb1980-05-17", &r));
        assert!(p.parse_clause(None, "19800").is_err());
        let period = param("date", "Encounter.period", "Encounter");
        let e = json!({"period":{"start":"2020-01-01T10:00:00Z"}});
        assert!(
            hit(&period, None, "ge2030", &e),
            "open period extends forever"
        );
        assert!(!hit(&period, None, "lt2019", &e));
    }

    #[test]
    fn numbers_quantities_and_uris() {
        let n = param(
            "number",
            "RiskAssessment.prediction.probability",
            "RiskAssessment",
        );
        let r = json!({"prediction":[{"probabilityDecimal":0.25},{"probabilityDecimal":0.8}]});
        let cases = [
            ("0.25", true),
            ("0.3", true), // [0.25, 0.35): the precision written decides
            ("0.30", false),
            ("gt0.7", true),
            ("lt0.2", false),
            ("ap0.24", true),
            ("ne0.25", true),
            ("ge0.9", false),
        ];
        for (q, want) in cases {
            assert_eq!(hit(&n, None, q, &r), want, "number {q}");
        }
        assert!(matches!(
            n.parse_clause(None, "xx1"),
            Err(SearchError::Comparator(_))
        ));
        assert!(n.parse_clause(None, "one").is_err());

        let q = param("quantity", "Observation.value", "Observation");
        let obs = json!({"valueQuantity":{"value":5.4,"unit":"mmol/L",
            "system":"http://unitsofmeasure.org","code":"mmol/L"}});
        let cases = [
            ("5.4", true),
            ("5.4|http://unitsofmeasure.org|mmol/L", true),
            ("5.4||mmol/L", true),
            ("5.4|http://unitsofmeasure.org|mg", false),
            ("gt5|http://unitsofmeasure.org|mmol/L", true),
            ("lt5", false),
            ("ap5.0", true),
            ("5.40", true),
            ("5.41", false),
        ];
        for (query, want) in cases {
            assert_eq!(hit(&q, None, query, &obs), want, "quantity {query}");
        }
        let by_unit = json!({"valueQuantity":{"value":80,"unit":"kg"}});
        assert!(
            hit(&q, None, "80||kg", &by_unit),
            "a unit without a code matches ||unit"
        );
        assert!(q.parse_clause(None, "5|x").is_err());

        assert!(
            !q.index_keys(&obs).iter().any(|k| k.starts_with(b"qs:")),
            "a quantity's system is not a key"
        );
        let with_system = q
            .parse_clause(None, "5.4|http://unitsofmeasure.org|mmol/L")
            .unwrap();
        assert!(with_system.keys().all(|k| k.starts_with(b"qc:mmol/L|")));

        let profile = coded("_profile", "uri", "Resource.meta.profile", "Observation");
        let o = json!({"meta":{"profile":["http://acme.org/fhir/StructureDefinition/lab"]}});
        assert_eq!(
            profile.index_keys(&o),
            vec![b"u:http://acme.org/fhir/StructureDefinition/lab".to_vec()],
            "no path prefixes outside `url`"
        );
        assert!(
            profile
                .parse_clause(Some("below"), "http://acme.org/fhir")
                .unwrap()
                .filter_only()
        );
        assert!(hit(&profile, Some("below"), "http://acme.org/fhir", &o));
        assert!(!hit(&profile, Some("below"), "http://acme.org/fh", &o));

        let u = coded("url", "uri", "ValueSet.url", "ValueSet");
        let vs = json!({"url":"http://acme.org/fhir/ValueSet/blood"});
        for (modifier, query, want) in [
            (None, "http://acme.org/fhir/ValueSet/blood", true),
            (None, "http://acme.org/fhir", false),
            (Some("below"), "http://acme.org/fhir", true),
            (Some("below"), "http://acme.org/fh", false),
            (
                Some("above"),
                "http://acme.org/fhir/ValueSet/blood/v2",
                true,
            ),
            (Some("above"), "http://acme.org/fhir/ValueSet/bloodx", false),
        ] {
            assert_eq!(
                hit(&u, modifier, query, &vs),
                want,
                "uri {modifier:?} {query}"
            );
        }
        assert!(u.parse_clause(Some("contains"), "x").is_err());
    }
}
