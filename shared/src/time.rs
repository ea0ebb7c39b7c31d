//! Wall-clock helpers: seconds since the Unix epoch, RFC 3339 formatting
//! and parsing (UTC) with the `time` crate, and durations such as `15m`.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch of a `SystemTime` (0 before 1970).
pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 9999-12-31T23:59:59Z: the last instant RFC 3339's four-digit years can write.
pub const LAST_RFC3339: u64 = 253_402_300_799;

/// `2026-11-28T19:21:17Z`. An instant past year 9999 prints as the last
/// one RFC 3339 can write (such instants only stand for "never").
pub fn rfc3339(epoch: u64) -> String {
    let secs = i64::try_from(epoch.min(LAST_RFC3339)).unwrap_or(0);
    match OffsetDateTime::from_unix_timestamp(secs) {
        // Written field by field: `time`'s `formatting` feature is not
        // needed for one fixed layout.
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "9999-12-31T23:59:59Z".to_string(),
    }
}

/// Parses an RFC 3339 date-time (`2026-12-31T00:00:00Z`,
/// `2026-12-31T01:00:00.5+01:00`) or a date (`2026-12-31`, midnight UTC)
/// into seconds since the epoch. Dates that are not on the calendar
/// (`2026-02-31`, `2026-13-01`, `24:00:00`) and instants before 1970 are
/// refused, saying what to write instead.
pub fn parse_timestamp(text: &str) -> Result<u64> {
    let t = text.trim();
    let parsed = if t.len() == 10 {
        // A date alone: the same parser, at midnight UTC.
        OffsetDateTime::parse(&format!("{t}T00:00:00Z"), &Rfc3339)
    } else {
        OffsetDateTime::parse(t, &Rfc3339)
    };
    let bad = |why: String| {
        Error::Config(format!(
            "{text:?} is not a date-time ({why}); write RFC 3339 in UTC like 2026-12-31T00:00:00Z, or a date like 2026-12-31"
        ))
    };
    let instant = parsed.map_err(|e| bad(e.to_string()))?;
    u64::try_from(instant.unix_timestamp()).map_err(|_| bad("before 1970".into()))
}

/// [`parse_timestamp`], for callers that only need to know whether the
/// text is a timestamp.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    parse_timestamp(text).ok()
}

/// `90`, `90s`, `15m`, `1h`, `7d`, `2w` → seconds. Zero is refused.
pub fn parse_duration(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = || {
        Error::Config(format!(
            "{text:?} is not a duration; use seconds or a number with s, m, h, d or w (e.g. 15m, 1h, 7d)"
        ))
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(factor).ok_or_else(bad)?;
    if secs == 0 {
        return Err(bad());
    }
    Ok(secs)
}

/// `15m`, `1h30m`, `7d` for messages.
pub fn format_duration(secs: u64) -> String {
    let mut out = String::new();
    let mut rest = secs;
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 || out.is_empty() {
        out.push_str(&format!("{rest}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for t in [0, 951_782_400, 1_700_000_000, 1_795_889_477, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            parse_rfc3339("2026-11-28T20:21:17+01:00"),
            parse_rfc3339("2026-11-28T19:21:17Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-28"),
            parse_rfc3339("2026-11-28T00:00:00Z")
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T19:21:17.123Z"),
            parse_rfc3339("2026-11-28T19:21:17Z")
        );
        assert!(parse_rfc3339("yesterday").is_none());
        assert!(parse_rfc3339("2026-13-01").is_none());
    }

    /// Found by `scripts/fuzz` (target `time`): a huge year or offset
    /// overflowed (a panic in debug builds, a wrapped and wrong instant in
    /// release ones, where the sweep reads `rotor:expires-at` with it).
    #[test]
    fn out_of_range_years_and_offsets_are_not_timestamps() {
        assert_eq!(parse_rfc3339("9223372036854775807-01-01T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00+9999999999999999:00"),
            None
        );
        // RFC 3339 writes four-digit years; anything beyond is a typo.
        assert_eq!(parse_rfc3339("100000000000-01-01"), None);
        assert_eq!(parse_rfc3339("2026-01-01T00:00:00+24:00"), None);
        assert_eq!(parse_rfc3339("9999-12-31T23:59:59Z"), Some(253_402_300_799));
    }

    /// Issue 11, item 6: the hand-rolled parser took `2026-02-31` as 3 March.
    #[test]
    fn impossible_calendar_dates_are_refused() {
        for text in [
            "2026-02-31",
            "2026-02-29T00:00:00Z",
            "2026-04-31T12:00:00Z",
            "2026-13-01",
            "2026-00-10",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:60:00Z",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text:?} was accepted");
        }
        assert_eq!(
            parse_rfc3339("2028-02-29"),
            parse_rfc3339("2028-02-29T00:00:00Z")
        );
        assert!(parse_rfc3339("2028-02-29").is_some());
        let e = parse_timestamp("2026-02-31").unwrap_err().to_string();
        assert!(
            e.contains("2026-02-31") && e.contains("2026-12-31T00:00:00Z"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("7d").unwrap(), 604_800);
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("-5m").is_err());
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(45), "45s");
    }
}
