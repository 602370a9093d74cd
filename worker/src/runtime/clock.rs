//! Wall-clock formatting: the ISO-8601 UTC timestamps with milliseconds
//! that every JSON body carries (`2026-11-28T10:40:10.123Z`, the format of
//! JavaScript's `Date.prototype.toISOString`), epoch milliseconds for
//! request ids, and epoch seconds for tokens, windows and `created`.
//!
//! The conversion is done here with Howard Hinnant's `civil_from_days`
//! algorithm rather than a date crate: it is a dozen lines, exact over the
//! whole proleptic Gregorian calendar, and it is all the service needs.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970, so a
/// badly set clock degrades a timestamp instead of failing a request.
pub fn epoch_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Seconds since the Unix epoch now (0 before 1970): JWT `exp`/`nbf`,
/// rate-limit windows, `created`.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_iso8601() -> String {
    iso8601_from_millis(epoch_millis(SystemTime::now()))
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
///
/// Negative inputs (before 1970) are floored, as JavaScript does, so
/// `-1` is `1969-12-31T23:59:59.999Z`.
pub fn iso8601_from_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month 1–12, day 1–31) civil
/// date. See <https://howardhinnant.github.io/date_algorithms.html>.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn epoch_is_1970() {
        assert_eq!(iso8601_from_millis(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn known_instants() {
        // Values cross-checked with `new Date(ms).toISOString()`.
        assert_eq!(
            iso8601_from_millis(1_000_000_000_123),
            "2001-09-09T01:46:40.123Z"
        );
        assert_eq!(
            iso8601_from_millis(1_795_862_410_123),
            "2026-11-28T10:40:10.123Z"
        );
        assert_eq!(iso8601_from_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn leap_days() {
        // 2000 is a leap year (divisible by 400), 1900 and 2100 are not.
        assert_eq!(
            iso8601_from_millis(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            iso8601_from_millis(951_868_800_000),
            "2000-03-01T00:00:00.000Z"
        );
        assert_eq!(
            iso8601_from_millis(1_709_164_800_000),
            "2024-02-29T00:00:00.000Z"
        );
        assert_eq!(
            iso8601_from_millis(1_709_251_199_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(civil_from_days(-25_508), (1900, 3, 1));
        assert_eq!(civil_from_days(-25_509), (1900, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
    }

    #[test]
    fn year_end() {
        assert_eq!(
            iso8601_from_millis(1_767_225_599_999),
            "2025-12-31T23:59:59.999Z"
        );
        assert_eq!(
            iso8601_from_millis(1_767_225_600_000),
            "2026-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn now_has_the_fixed_shape() {
        let s = now_iso8601();
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.ends_with('Z') && s.as_bytes()[10] == b'T', "{s}");
        assert_eq!(epoch_millis(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
    }
}
