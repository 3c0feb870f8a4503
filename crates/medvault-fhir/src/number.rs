//! Number and quantity search: FHIR's prefixes and implied precision, and the magnitude buckets
//! their blind-index keys name.
//!
//! A value's bucket is its sign, its decimal exponent (clamped to ±[`EXP_LIMIT`]) and, for the
//! fine bucket, its leading digit: `1234` is in `+3` and `+3.1`. A query enumerates the buckets
//! its interval touches (fine ones while at most [`MAX_FINE_BUCKETS`], else coarse ones), and
//! every candidate is re-checked exactly after decryption.

/// Decimal exponents beyond this (either way) share the outermost bucket.
const EXP_LIMIT: i32 = 30;
/// A query enumerates fine (exponent and leading digit) buckets up to this many, coarse
/// (exponent) buckets beyond.
const MAX_FINE_BUCKETS: i64 = 64;
/// `ap` (approximately) matches within this fraction of the value (FHIR suggests 10 %).
const APPROXIMATE: f64 = 0.1;

/// A number or quantity search prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading two-letter prefix off `value` (`eq` when there is none). `Err` carries an
    /// unknown lower-case prefix.
    pub(crate) fn split(value: &str) -> Result<(Self, &str), String> {
        let p = match value.get(..2) {
            Some("eq") => Self::Eq,
            Some("ne") => Self::Ne,
            Some("gt") => Self::Gt,
            Some("lt") => Self::Lt,
            Some("ge") => Self::Ge,
            Some("le") => Self::Le,
            Some("sa") => Self::Sa,
            Some("eb") => Self::Eb,
            Some("ap") => Self::Ap,
            Some(p) if p.chars().all(|c| c.is_ascii_lowercase()) => return Err(p.to_owned()),
            _ => return Ok((Self::Eq, value)),
        };
        Ok((p, &value[2..]))
    }
}

/// A parsed search number: its value and the half-width its precision implies (`100` is
/// `[99.5, 100.5)`, `1e2` is `[50, 150)`, `100.00` is `[99.995, 100.005)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Query {
    pub(crate) prefix: Prefix,
    value: f64,
    half: f64,
}

/// Parses a FHIR decimal as a search value writes it (an exponent is allowed). `None` for
/// anything else, including NaN and infinities.
fn decimal(text: &str) -> Option<(f64, f64)> {
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let digits = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || digits.ends_with('.') {
        return None;
    }
    let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
    // The last significant place is the mantissa's last digit written, shifted by the
    // exponent: `1e2` is ±50, `1.5e2` ±5, `100.00` ±0.005.
    let places = i32::try_from(frac.len()).ok()?;
    let scale = exp.checked_sub(places)?;
    Some((value, 0.5 * 10f64.powi(scale)))
}

impl Query {
    /// Parses `[prefix]number`.
    pub(crate) fn parse(text: &str) -> Result<Self, Option<String>> {
        let (prefix, rest) = Prefix::split(text).map_err(Some)?;
        let (value, half) = decimal(rest).ok_or(None)?;
        Ok(Self {
            prefix,
            value,
            half,
        })
    }

    /// True if the stored value `x` satisfies the query.
    pub(crate) fn matches(&self, x: f64) -> bool {
        let (lo, hi) = (self.value - self.half, self.value + self.half);
        match self.prefix {
            Prefix::Eq => lo <= x && x < hi,
            Prefix::Ne => !(lo <= x && x < hi),
            Prefix::Gt | Prefix::Sa => x > self.value,
            Prefix::Lt | Prefix::Eb => x < self.value,
            Prefix::Ge => x >= self.value,
            Prefix::Le => x <= self.value,
            Prefix::Ap => {
                let tolerance = (self.value.abs() * APPROXIMATE).max(self.half);
                (x - self.value).abs() <= tolerance
            }
        }
    }

    /// The interval of stored values that can match, for choosing buckets (`None`: all of
    /// them, for `ne`).
    fn window(&self) -> Option<(f64, f64)> {
        let (lo, hi) = (self.value - self.half, self.value + self.half);
        match self.prefix {
            Prefix::Eq => Some((lo, hi)),
            Prefix::Ne => None,
            Prefix::Gt | Prefix::Sa | Prefix::Ge => Some((self.value, f64::INFINITY)),
            Prefix::Lt | Prefix::Eb | Prefix::Le => Some((f64::NEG_INFINITY, self.value)),
            Prefix::Ap => {
                let tolerance = (self.value.abs() * APPROXIMATE).max(self.half);
                Some((self.value - tolerance, self.value + tolerance))
            }
        }
    }

    /// The bucket names (`d:<rank>` fine, `m:<rank>` coarse) a matching value can be in.
    pub(crate) fn buckets(&self) -> Vec<String> {
        let (lo, hi) = self.window().unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        let (f0, f1) = (fine_rank(lo), fine_rank(hi));
        if f1 - f0 < MAX_FINE_BUCKETS {
            return (f0..=f1).map(|r| format!("d:{r}")).collect();
        }
        (coarse_rank(lo)..=coarse_rank(hi))
            .map(|r| format!("m:{r}"))
            .collect()
    }
}

/// Sign, clamped decimal exponent and leading digit of a non-zero finite or infinite `x`.
fn parts(x: f64) -> (i64, i32, i64) {
    let sign = if x < 0.0 { -1 } else { 1 };
    let a = x.abs();
    if !a.is_finite() || a >= 10f64.powi(EXP_LIMIT + 1) {
        return (sign, EXP_LIMIT, 9);
    }
    if a < 10f64.powi(-EXP_LIMIT) {
        return (sign, -EXP_LIMIT, 1);
    }
    // The shortest scientific form names the exponent and first digit without log10's
    // rounding at exact powers of ten.
    let sci = format!("{a:e}");
    let (m, e) = sci.split_once('e').unwrap_or(("1", "0"));
    let exp = e.parse::<i32>().unwrap_or(0).clamp(-EXP_LIMIT, EXP_LIMIT);
    let lead = m
        .bytes()
        .next()
        .filter(u8::is_ascii_digit)
        .map_or(1, |d| i64::from(d - b'0'));
    (sign, exp, lead.max(1))
}

/// Rank of `x`'s fine bucket: 0 for zero, ±(1 + 9·(exp + limit) + digit − 1) otherwise, so ranks
/// increase with the value.
fn fine_rank(x: f64) -> i64 {
    if x == 0.0 {
        return 0;
    }
    let (sign, exp, lead) = parts(x);
    sign * (1 + 9 * i64::from(exp + EXP_LIMIT) + lead - 1)
}

/// Rank of `x`'s coarse (exponent) bucket: 0 for zero, ±(1 + exp + limit) otherwise.
fn coarse_rank(x: f64) -> i64 {
    if x == 0.0 {
        return 0;
    }
    let (sign, exp, _) = parts(x);
    sign * (1 + i64::from(exp + EXP_LIMIT))
}

/// The bucket names of a stored value: its fine and coarse buckets.
pub(crate) fn value_buckets(x: f64) -> [String; 2] {
    [
        format!("d:{}", fine_rank(x)),
        format!("m:{}", coarse_rank(x)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_follows_the_digits_written() {
        for (text, value, half) in [
            ("100", 100.0, 0.5),
            ("100.00", 100.0, 0.005),
            ("0.5", 0.5, 0.05),
            ("-3", -3.0, 0.5),
            ("1e2", 100.0, 50.0),
            ("1.5e2", 150.0, 5.0),
        ] {
            let (v, h) = decimal(text).unwrap();
            assert_eq!(v, value, "{text}");
            assert!((h - half).abs() < 1e-12, "{text}: {h}");
        }
        for bad in ["", "abc", "1.", ".5", "1e", "NaN", "inf", "1,5", "1e400"] {
            assert!(decimal(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn prefixes_and_buckets_never_miss_a_match() {
        let stored = [
            0.0, 0.004, 0.05, 1.0, 9.99, 10.0, 99.4, 99.5, 100.0, 100.49, 100.5, 150.0, 1e6, -1.0,
            -100.0, 1e40, -1e-40,
        ];
        let queries = [
            "100", "eq100", "ne100", "gt100", "lt100", "ge100", "le100", "sa100", "eb100", "ap100",
            "1e2", "100.00", "0", "lt0", "ge-100", "ap0.05", "gt1e35", "eq-1",
        ];
        let mut checked = 0;
        for q in queries {
            let query = Query::parse(q).unwrap();
            let buckets = query.buckets();
            for x in stored {
                if query.matches(x) {
                    let [fine, coarse] = value_buckets(x);
                    assert!(
                        buckets.contains(&fine) || buckets.contains(&coarse),
                        "{q} matches {x} but its buckets {buckets:?} miss {fine}/{coarse}"
                    );
                }
                checked += 1;
            }
        }
        assert_eq!(checked, stored.len() * queries.len());
        let q = |t: &str| Query::parse(t).unwrap();
        assert!(q("100").matches(99.5) && q("100").matches(100.49) && !q("100").matches(100.5));
        assert!(q("100.00").matches(100.0) && !q("100.00").matches(100.01));
        assert!(q("1e2").matches(140.0) && !q("1e2").matches(150.0));
        assert!(q("ap100").matches(109.0) && !q("ap100").matches(111.0));
        assert!(q("ne100").matches(101.0) && !q("ne100").matches(100.2));
        assert!(q("gt100").matches(100.1) && !q("gt100").matches(100.0));
        assert!(q("le100").matches(100.0) && !q("le100").matches(100.1));
        assert_eq!(Query::parse("xx100"), Err(Some("xx".into())));
        assert_eq!(Query::parse("10O"), Err(None));
    }

    #[test]
    fn bucket_ranks_are_ordered_and_exact_at_powers_of_ten() {
        assert_eq!(
            value_buckets(1000.0),
            ["d:298".to_owned(), "m:34".to_owned()]
        );
        assert_eq!(fine_rank(999.0) + 1, fine_rank(1000.0));
        assert!(fine_rank(-5.0) < fine_rank(-0.5) && fine_rank(-0.5) < 0);
        assert!(fine_rank(1e-3) < fine_rank(1.0));
        let mut last = i64::MIN;
        for x in [
            -1e50, -2e3, -1.0, -1e-9, 0.0, 1e-40, 3e-5, 1.0, 9.0, 10.0, 5e29, 1e50,
        ] {
            let r = fine_rank(x);
            assert!(r >= last, "{x}");
            last = r;
        }
    }
}
