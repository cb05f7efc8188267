//! Dates and times in athena's formats (`MM/DD/YYYY`, `hh24:mi`, ISO-8601 with offset) and its fixed Eastern time.

use std::time::{SystemTime, UNIX_EPOCH};

/// athena's sandbox runs on US Eastern time; responses carry this fixed offset.
const UTC_OFFSET_SECS: i64 = -5 * 3600;
const UTC_OFFSET_TEXT: &str = "-05:00";

/// A calendar date as (year, month, day); tuples order chronologically.
pub(super) type CivilDate = (i64, u32, u32);

pub(super) fn valid_date(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() != 10 || b[2] != b'/' || b[5] != b'/' {
        return false;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let s = value.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) { s.parse().ok() } else { None }
    };
    matches!((digits(0..2), digits(3..5), digits(6..10)), (Some(m), Some(d), Some(_)) if (1..=12).contains(&m) && (1..=31).contains(&d))
}

pub(super) fn valid_time(value: &str) -> bool {
    let Some((h, m)) = value.split_once(':') else {
        return false;
    };
    h.len() == 2
        && m.len() == 2
        && h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit())
        && h.parse::<u32>().is_ok_and(|h| h < 24)
        && m.parse::<u32>().is_ok_and(|m| m < 60)
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The calendar date of an instant in athena's (fixed Eastern) local time.
pub(super) fn local_date(secs: i64) -> CivilDate {
    civil_from_days(secs.saturating_add(UTC_OFFSET_SECS).div_euclid(86_400))
}

/// `MM/DD/YYYY` in athena's (fixed Eastern) local time.
pub(super) fn fmt_date(secs: i64) -> String {
    let (y, m, d) = local_date(secs);
    format!("{m:02}/{d:02}/{y:04}")
}

/// A request date in athena's `MM/DD/YYYY` format; `None` when it is malformed.
pub(super) fn parse_date(value: &str) -> Option<CivilDate> {
    if !valid_date(value) {
        return None;
    }
    Some((value.get(6..10)?.parse().ok()?, value.get(0..2)?.parse().ok()?, value.get(3..5)?.parse().ok()?))
}

/// ISO-8601 with offset, e.g. `2020-11-17T12:33:37-05:00`.
pub(super) fn fmt_datetime(secs: i64) -> String {
    let local = secs.saturating_add(UTC_OFFSET_SECS);
    let (y, m, d) = civil_from_days(local.div_euclid(86_400));
    let rem = local.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{UTC_OFFSET_TEXT}", rem / 3600, rem % 3600 / 60, rem % 60)
}
