//! FHIR primitive formats: `id`, `code`, `dateTime`, `instant` and `base64Binary` checks (the FHIR R4
//! regexes plus the calendar and canonical-padding rules they leave out), and reading and writing
//! instants without a date-time crate.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use regex::Regex;

pub use crate::json::is_valid_base64;

static ID_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9\-\.]{1,64}$").expect("FHIR id regex compiles"));

static CODE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[^\s]+(\s[^\s]+)*$").expect("FHIR code regex compiles"));

static DATE_TIME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?)$",
    )
    .expect("FHIR dateTime regex compiles")
});

static INSTANT_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))$",
    )
    .expect("FHIR instant regex compiles")
});

/// True if `s` is a FHIR `id`: 1 to 64 characters from `A-Z a-z 0-9 - .`.
pub fn is_valid_id(s: &str) -> bool {
    ID_RE.is_match(s)
}

/// True if `s` matches the FHIR R4 `dateTime` regex (year, year-month, date,
/// or full date-time with timezone) and names a real calendar date.
pub fn is_valid_date_time(s: &str) -> bool {
    DATE_TIME_RE.is_match(s) && calendar_date_exists(s)
}

/// True if `s` matches the FHIR R4 `instant` regex (full date-time with
/// timezone) and names a real calendar date.
pub fn is_valid_instant(s: &str) -> bool {
    INSTANT_RE.is_match(s) && calendar_date_exists(s)
}

pub(crate) fn is_valid_code(s: &str) -> bool {
    CODE_RE.is_match(s)
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Checks the day against the month length for a string that already matched
/// the dateTime or instant regex (`YYYY[-MM[-DD[...]]]`).
fn calendar_date_exists(s: &str) -> bool {
    let (Some(year), Some(month), Some(day)) = (s.get(0..4), s.get(5..7), s.get(8..10)) else {
        // Year or year-month precision: nothing calendar-dependent to check.
        return true;
    };
    match (year.parse::<u32>(), month.parse::<u32>(), day.parse::<u32>()) {
        (Ok(y), Ok(m), Ok(d)) => (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m),
        _ => false,
    }
}

/// Parses a FHIR instant (already validated) into a SystemTime, honouring its offset.
pub fn parse_instant(v: &str) -> Option<SystemTime> {
    let date: Vec<i64> = v.get(..10)?.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let time: Vec<i64> = v.get(11..19)?.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let (y, m, d) = (date[0], date[1], date[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let mut secs = days * 86_400 + time[0] * 3600 + time[1] * 60 + time[2];
    let tz = &v[19..];
    let tz = tz.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(sign @ ('+' | '-')) = tz.chars().next() {
        let h: i64 = tz.get(1..3)?.parse().ok()?;
        let mi: i64 = tz.get(4..6)?.parse().ok()?;
        let off = h * 3600 + mi * 60;
        secs -= if sign == '+' { off } else { -off };
    }
    if secs < 0 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// RFC 3339 / FHIR instant text (UTC, seconds) of a time.
pub fn rfc3339(t: SystemTime) -> String {
    chrono_free::Iso::from(t).0
}

/// Minimal RFC 3339 formatting of a SystemTime (UTC), without a date-time crate.
mod chrono_free {
    use std::time::SystemTime;

    pub struct Iso(pub String);

    impl From<SystemTime> for Iso {
        fn from(t: SystemTime) -> Self {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            // Civil from days (Howard Hinnant's algorithm).
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(m <= 2);
            Iso(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60))
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn date_time_formats() {
        for ok in [
            "2018",
            "1973-06",
            "1905-08-23",
            "2015-02-07T13:28:17-05:00",
            "2017-01-01T00:00:00.000Z",
            "2017-01-01T00:00:00Z",
            "2016-12-31T23:59:60Z",
            "2024-06-30T12:00:00+14:00",
            "0001-01-01",
            "9999-12-31",
        ] {
            assert!(is_valid_date_time(ok), "{ok}");
        }
        for bad in [
            "",
            "18",
            "0000",
            "2018-1",
            "2018-00",
            "2018-13",
            "2018-01-00",
            "2018-01-32",
            "2015-02-07T13:28:17", // time without timezone
            "2015-02-07T13:28Z",   // seconds required
            "2015-02-07T24:00:00Z",
            "2015-02-07T13:28:17+14:01",
            "2015-02-07T13:28:17+15:00",
            "2015-02-07 13:28:17Z",
            "2015-02-07T13:28:17.Z",
            " 2015",
            "2015 ",
            "2015-02-07\n",
        ] {
            assert!(!is_valid_date_time(bad), "{bad:?}");
        }
    }

    #[test]
    fn calendar_edge_cases() {
        // Month lengths.
        for ok in ["2023-01-31", "2023-03-31", "2023-04-30", "2023-12-31", "2023-02-28"] {
            assert!(is_valid_date_time(ok), "{ok}");
        }
        for bad in ["2023-02-30", "2023-02-31", "2023-04-31", "2023-06-31", "2023-09-31", "2023-11-31"] {
            assert!(!is_valid_date_time(bad), "{bad}");
        }
        // Leap years.
        assert!(is_valid_date_time("2024-02-29"));
        assert!(is_valid_date_time("2000-02-29"));
        assert!(is_valid_date_time("1600-02-29"));
        assert!(!is_valid_date_time("2023-02-29"));
        assert!(!is_valid_date_time("1900-02-29"));
        assert!(!is_valid_date_time("2100-02-29"));
        assert!(is_valid_instant("2024-02-29T00:00:00Z"));
        assert!(!is_valid_instant("2023-02-29T00:00:00Z"));
        assert!(!is_valid_instant("2023-02-30T12:00:00+01:00"));
        assert!(!is_valid_date_time("2023-02-30T12:00:00+01:00"));
        // Partial precision cannot be checked against a calendar.
        assert!(is_valid_date_time("2023-02"));
    }

    #[test]
    fn instant_formats() {
        for ok in ["2015-02-07T13:28:17.239+02:00", "2017-01-01T00:00:00Z", "2017-01-01T00:00:00.1-14:00"] {
            assert!(is_valid_instant(ok), "{ok}");
        }
        for bad in [
            "2017",
            "2017-01",
            "2017-01-01",
            "2017-01-01T00:00:00",
            "2017-01-01T00:00Z",
            "2017-01-01T00:00:00z",
            "2017-01-01T00:00:00+0100",
            "2017-01-01T00:00:00Z ",
        ] {
            assert!(!is_valid_instant(bad), "{bad:?}");
        }
    }

    #[test]
    fn id_format() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("A-z.0-9"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("é"));
        assert!(!is_valid_id("abc\n"));
    }

    #[test]
    fn base64_edge_cases() {
        for ok in ["aGVsbG8=", "aGk=", "QQ==", "AAAA", "+/+/", "aGVsbG8gd29ybGQh"] {
            assert!(is_valid_base64(ok), "{ok}");
        }
        for bad in [
            "",           // empty
            "a",          // not a multiple of 4
            "aGk",        // missing padding
            "aGVsbG8",    // missing padding
            "====",       // padding only
            "a===",       // too much padding
            "aG=k",       // padding in the middle
            "aGk=aGk=",   // padding then more data
            "aG k",       // whitespace
            "aGk=\n",     // trailing newline
            "aGVs\nbG8=", // line break
            "aGk-",       // URL-safe alphabet
            "aGk_",       // URL-safe alphabet
            "QR==",       // non-canonical trailing bits
            "aGl=",       // non-canonical trailing bits
            "é===",       // non-ASCII
        ] {
            assert!(!is_valid_base64(bad), "{bad:?}");
        }
    }

    #[test]
    fn base64_agrees_with_strict_decoder() {
        let alphabet = ["A", "Q", "g", "w", "/", "+", "=", "a", "-", " "];
        // All strings of length 4 and 8 over a small alphabet.
        let mut candidates = vec![String::new()];
        for _ in 0..4 {
            candidates = candidates.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
        }
        for s in &candidates {
            let decodes = STANDARD.decode(s).is_ok();
            assert_eq!(is_valid_base64(s), decodes, "{s:?}");
            let longer = format!("AAAA{s}");
            assert_eq!(is_valid_base64(&longer), STANDARD.decode(&longer).is_ok(), "{longer:?}");
        }
        for len in 1..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            assert!(is_valid_base64(&STANDARD.encode(&bytes)));
        }
    }

    #[test]
    fn instants_parse_with_offsets() {
        let utc = parse_instant("2024-01-31T10:00:00Z").unwrap();
        let plus = parse_instant("2024-01-31T12:00:00.123+02:00").unwrap();
        assert_eq!(utc, plus);
        assert_eq!(chrono_free::Iso::from(utc).0, "2024-01-31T10:00:00Z");
    }
}
