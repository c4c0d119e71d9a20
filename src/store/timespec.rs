//! Time handling for queries: parsing `--since`/`--until` and printing
//! stored timestamps.
//!
//! Stored times are UTC epoch milliseconds (`ts_ms`); users type either a
//! duration meaning "that long before now" (`90s`, `15m`, `1h`, `2d`, `1w`,
//! `1h30m`) or an RFC 3339 timestamp (`2024-05-01T12:00:00Z`,
//! `2024-05-01T14:00:00.5+02:00`, or a bare date `2024-05-01` for UTC
//! midnight).

use crate::error::{ExitClass, HasExitClass};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a time argument should look like; appended to every parse error.
const EXPECTED: &str = "expected a duration before now such as 90s, 15m, 1h, 2d or 1w, \
    or an RFC 3339 timestamp such as 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00";

/// The last millisecond RFC 3339 can print (9999-12-31T23:59:59.999Z).
const MAX_TS_MS: i64 = 253_402_300_799_999;

/// A `--since`/`--until` value that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeSpecError {
    #[error("invalid time {input:?}: {reason}; {EXPECTED}")]
    Invalid { input: String, reason: String },
    #[error("time {input:?} is before 1970-01-01, where history cannot start")]
    BeforeEpoch { input: String },
}

impl HasExitClass for TimeSpecError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Usage
    }
}

/// Now, as UTC epoch milliseconds. A clock set before 1970 reads as 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Formats UTC epoch milliseconds as RFC 3339 with milliseconds, e.g.
/// `2024-05-01T12:00:00.123Z`. Values outside years 1970–9999 are clamped
/// (they cannot come from a working clock, and must not abort a listing).
pub fn format_ts_ms(ts_ms: i64) -> String {
    let ms = u64::try_from(ts_ms.clamp(0, MAX_TS_MS)).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses a `--since`/`--until` value into UTC epoch milliseconds.
///
/// A duration is subtracted from `now_ms` (passed in so tests and a whole
/// query use one "now"); `now` means `now_ms` itself.
pub fn parse_time_spec(spec: &str, now_ms: i64) -> Result<i64, TimeSpecError> {
    let s = spec.trim();
    let invalid = |reason: &str| TimeSpecError::Invalid {
        input: spec.to_string(),
        reason: reason.to_string(),
    };
    if s.is_empty() {
        return Err(invalid("it is empty"));
    }
    if s.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    // `-1h` reads as "an hour ago" too (the sign the shell user typed is the direction).
    let s = match s.strip_prefix('-') {
        Some(d) if d.starts_with(|c: char| c.is_ascii_digit()) => d,
        _ => s,
    };
    let b = s.as_bytes();
    let looks_like_date = b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
    if !looks_like_date {
        let d = humantime::parse_duration(s).map_err(|e| invalid(&e.to_string()))?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let t = now_ms.saturating_sub(ms);
        if t < 0 {
            return Err(TimeSpecError::BeforeEpoch {
                input: spec.to_string(),
            });
        }
        return Ok(t);
    }
    parse_rfc3339_ms(s).map_err(|reason| match reason {
        Rfc3339Error::BeforeEpoch => TimeSpecError::BeforeEpoch {
            input: spec.to_string(),
        },
        Rfc3339Error::Invalid(r) => invalid(&r),
    })
}

enum Rfc3339Error {
    BeforeEpoch,
    Invalid(String),
}

/// RFC 3339 with any offset. `humantime` parses only UTC, so the offset is
/// split off here, the local time parsed as if UTC, and the offset then
/// subtracted.
fn parse_rfc3339_ms(s: &str) -> Result<i64, Rfc3339Error> {
    let mut s = s.to_ascii_uppercase();
    if s.len() == 10 {
        // A full-date alone: midnight UTC.
        s.push_str("T00:00:00Z");
    }
    if s.as_bytes().get(10) == Some(&b' ') {
        // RFC 3339 allows a space between date and time.
        s.replace_range(10..11, "T");
    }
    let (body, offset_min) = if let Some(body) = s.strip_suffix('Z') {
        (body, 0i64)
    } else {
        let n = s.len();
        let b = s.as_bytes();
        if n < 6 || !(b[n - 6] == b'+' || b[n - 6] == b'-') || b[n - 3] != b':' {
            return Err(Rfc3339Error::Invalid(
                "it has no time zone (end it with Z for UTC, or an offset such as +02:00)".into(),
            ));
        }
        let num = |r: std::ops::Range<usize>| {
            s.get(r)
                .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|t| t.parse::<i64>().ok())
        };
        let (Some(h), Some(m)) = (num(n - 5..n - 3), num(n - 2..n)) else {
            return Err(Rfc3339Error::Invalid(
                "its offset is not +HH:MM or -HH:MM".into(),
            ));
        };
        if h > 23 || m > 59 {
            return Err(Rfc3339Error::Invalid(format!(
                "offset {h:02}:{m:02} is out of range"
            )));
        }
        let sign = if b[n - 6] == b'-' { -1 } else { 1 };
        (&s[..n - 6], sign * (h * 60 + m))
    };
    let t = humantime::parse_rfc3339(&format!("{body}Z")).map_err(|e| match e {
        humantime::TimestampError::OutOfRange
            if body
                .get(..4)
                .and_then(|y| y.parse::<u32>().ok())
                .is_some_and(|y| y < 1970) =>
        {
            Rfc3339Error::BeforeEpoch
        }
        e => Rfc3339Error::Invalid(e.to_string()),
    })?;
    let local_ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .map_err(|_| Rfc3339Error::BeforeEpoch)?;
    let utc = local_ms - offset_min * 60_000;
    if utc < 0 {
        return Err(Rfc3339Error::BeforeEpoch);
    }
    Ok(utc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-05-01T12:00:00Z
    const NOW: i64 = 1_714_564_800_000;

    #[test]
    fn relative_durations() {
        let cases = [
            ("90s", 90_000),
            ("15m", 15 * 60_000),
            ("1h", 3_600_000),
            ("2d", 2 * 86_400_000),
            ("1w", 7 * 86_400_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("0s", 0),
        ];
        for (spec, ago) in cases {
            assert_eq!(parse_time_spec(spec, NOW), Ok(NOW - ago), "{spec}");
        }
        assert_eq!(parse_time_spec("now", NOW), Ok(NOW));
        assert_eq!(parse_time_spec(" 1h ", NOW), Ok(NOW - 3_600_000));
        assert_eq!(
            parse_time_spec("-1h", NOW),
            Ok(NOW - 3_600_000),
            "a leading minus"
        );
        assert!(parse_time_spec("-x", NOW).is_err());
    }

    #[test]
    fn rfc3339_timestamps() {
        let cases = [
            ("2024-05-01T12:00:00Z", NOW),
            ("2024-05-01t12:00:00z", NOW),
            ("2024-05-01 12:00:00Z", NOW),
            ("2024-05-01T12:00:00.250Z", NOW + 250),
            ("2024-05-01T14:00:00+02:00", NOW),
            ("2024-05-01T07:30:00-04:30", NOW),
            ("2024-05-01T12:00:00+00:00", NOW),
            ("2024-05-01", NOW - 12 * 3_600_000),
            ("1970-01-01T00:00:00Z", 0),
        ];
        for (spec, want) in cases {
            assert_eq!(parse_time_spec(spec, 0), Ok(want), "{spec}");
        }
    }

    #[test]
    fn bad_input_says_what_is_expected() {
        for spec in [
            "",
            "yesterday",
            "15",
            "1x",
            "2024-05-01T12:00:00",
            "2024-13-01T12:00:00Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T25:00:00Z",
            "2024/05/01",
        ] {
            let err = parse_time_spec(spec, NOW).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, TimeSpecError::Invalid { .. }),
                "{spec}: {msg}"
            );
            assert!(
                msg.contains("RFC 3339") && msg.contains("15m"),
                "{spec}: {msg}"
            );
        }
        let msg = parse_time_spec("2024-05-01T12:00:00", NOW)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("time zone"), "{msg}");
        assert!(matches!(
            parse_time_spec("1969-12-31T23:00:00Z", NOW),
            Err(TimeSpecError::BeforeEpoch { .. })
        ));
        assert!(matches!(
            parse_time_spec("1970-01-01T01:00:00+02:00", NOW),
            Err(TimeSpecError::BeforeEpoch { .. })
        ));
        assert!(matches!(
            parse_time_spec("100y", NOW),
            Err(TimeSpecError::BeforeEpoch { .. })
        ));
    }

    #[test]
    fn formats_rfc3339_millis() {
        assert_eq!(format_ts_ms(NOW + 7), "2024-05-01T12:00:00.007Z");
        assert_eq!(format_ts_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ts_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ts_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        let round = parse_time_spec(&format_ts_ms(NOW + 123), 0).unwrap();
        assert_eq!(round, NOW + 123);
        assert!(now_ms() > NOW);
    }
}
