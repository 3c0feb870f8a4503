//! FHIR date/dateTime/instant values as half-open ranges of Unix seconds.
//!
//! `2020` is all of 2020, `2020-03` all of March, `2020-03-04` that day (UTC when no zone is
//! given), a dateTime to the second its precision names.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Earliest instant the date index enumerates buckets from.
pub(crate) const DOMAIN_START: i64 = -5_364_662_400; // 1800-01-01T00:00:00Z
/// End of the date index domain.
pub(crate) const DOMAIN_END: i64 = 7_258_118_400; // 2200-01-01T00:00:00Z

fn num(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

fn ts(d: Date, t: Time, off: UtcOffset) -> i64 {
    PrimitiveDateTime::new(d, t)
        .assume_offset(off)
        .unix_timestamp()
}

fn next_month(y: i32, m: Month) -> Option<Date> {
    let (y, m) = if m == Month::December {
        (y + 1, Month::January)
    } else {
        (y, m.next())
    };
    Date::from_calendar_date(y, m, 1).ok()
}

/// Parses a FHIR date, dateTime or instant (also a search value, which may omit seconds) into
/// `[start, end)` Unix seconds. `None` when the text is not such a value.
pub(crate) fn parse_range(text: &str) -> Option<(i64, i64)> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year = i32::try_from(num(fields.next()?, 4)?).ok()?;
    let month = fields
        .next()
        .map(|m| num(m, 2))
        .map(|m| m.and_then(|m| Month::try_from(u8::try_from(m).ok()?).ok()));
    let day = fields.next().map(|d| num(d, 2));
    if fields.next().is_some() {
        return None;
    }
    let utc = UtcOffset::UTC;
    match (month, day, time_part) {
        (None, None, None) => {
            let start = Date::from_calendar_date(year, Month::January, 1).ok()?;
            let end = Date::from_calendar_date(year + 1, Month::January, 1).ok()?;
            Some((ts(start, Time::MIDNIGHT, utc), ts(end, Time::MIDNIGHT, utc)))
        }
        (Some(m), None, None) => {
            let m = m?;
            let start = Date::from_calendar_date(year, m, 1).ok()?;
            Some((
                ts(start, Time::MIDNIGHT, utc),
                ts(next_month(year, m)?, Time::MIDNIGHT, utc),
            ))
        }
        (Some(m), Some(d), time_part) => {
            let date = Date::from_calendar_date(year, m?, u8::try_from(d?).ok()?).ok()?;
            match time_part {
                None => {
                    let start = ts(date, Time::MIDNIGHT, utc);
                    Some((start, start + 86_400))
                }
                Some(t) => parse_time(date, t),
            }
        }
        _ => None,
    }
}

fn parse_time(date: Date, t: &str) -> Option<(i64, i64)> {
    let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
        (c, UtcOffset::UTC)
    } else if let Some(i) = t.rfind(['+', '-']) {
        let (c, off) = t.split_at(i);
        let sign: i8 = if off.starts_with('-') { -1 } else { 1 };
        let (h, m) = off[1..].split_once(':')?;
        let (h, m) = (
            i8::try_from(num(h, 2)?).ok()?,
            i8::try_from(num(m, 2)?).ok()?,
        );
        (c, UtcOffset::from_hms(sign * h, sign * m, 0).ok()?)
    } else {
        (t, UtcOffset::UTC)
    };
    let mut parts = clock.split(':');
    let h = u8::try_from(num(parts.next()?, 2)?).ok()?;
    let m = u8::try_from(num(parts.next()?, 2)?).ok()?;
    let (sec, precision) = match parts.next() {
        None => (0u8, 60),
        Some(s) => {
            let whole = s.split('.').next()?;
            if let Some(frac) = s.split_once('.').map(|(_, f)| f)
                && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()))
            {
                return None;
            }
            (u8::try_from(num(whole, 2)?).ok()?.min(59), 1)
        }
    };
    if parts.next().is_some() {
        return None;
    }
    let start = ts(date, Time::from_hms(h, m, sec).ok()?, offset);
    Some((start, start + precision))
}

/// `(year, month)` of an instant, clamped into the index domain.
pub(crate) fn year_month(t: i64) -> (i32, u8) {
    let t = t.clamp(DOMAIN_START, DOMAIN_END - 1);
    OffsetDateTime::from_unix_timestamp(t)
        .map(|d| (d.year(), u8::from(d.month())))
        .unwrap_or((1800, 1))
}

/// Months touched by `[start, end)`, as `(year, month)`, stopping after `cap` months.
pub(crate) fn months(start: i64, end: i64, cap: usize) -> Vec<(i32, u8)> {
    let (mut y, mut m) = year_month(start);
    let last = year_month(end.saturating_sub(1).max(start));
    let mut out = Vec::new();
    while (y, m) <= last && out.len() <= cap {
        out.push((y, m));
        if m == 12 {
            y += 1;
            m = 1;
        } else {
            m += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions() {
        assert_eq!(parse_range("1970"), Some((0, 31_536_000)));
        assert_eq!(
            parse_range("1970-02"),
            Some((2_678_400, 2_678_400 + 28 * 86_400))
        );
        assert_eq!(parse_range("1970-01-02"), Some((86_400, 172_800)));
        assert_eq!(parse_range("1970-01-01T01:00:00Z"), Some((3600, 3601)));
        assert_eq!(parse_range("1970-01-01T01:00:00+01:00"), Some((0, 1)));
        assert_eq!(parse_range("1970-01-01T01:00"), Some((3600, 3660)));
        assert_eq!(parse_range("1970-01-01T00:00:00.123Z"), Some((0, 1)));
        assert_eq!(parse_range("2020-12"), Some((1_606_780_800, 1_609_459_200)));
        for bad in [
            "",
            "70",
            "1970-13",
            "1970-02-30",
            "1970-01-01T25:00",
            "x",
            "1970-01-01T00:00:00.Z",
            "1970--01",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn month_buckets() {
        let (s, e) = parse_range("2020-11-15").unwrap();
        assert_eq!(months(s, e, 12), vec![(2020, 11)]);
        let (s, _) = parse_range("2020-11").unwrap();
        let (_, e) = parse_range("2021-02").unwrap();
        assert_eq!(months(s, e, 12).len(), 4);
        assert_eq!(months(s, e, 2).len(), 3, "stops past the cap");
    }
}
