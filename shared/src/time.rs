//! Wall-clock helpers without a date library: seconds since the Unix epoch,
//! RFC 3339 formatting and parsing (UTC), and durations such as `15m`.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// Days since 1970-01-01 → (year, month, day). Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-28T19:21:17Z`.
pub fn rfc3339(epoch: u64) -> String {
    let secs = epoch as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` or a date `YYYY-MM-DD`.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let t = text.trim();
    let num = |s: &str| s.parse::<i64>().ok();
    let (date, rest) = t.split_at(t.find(['T', 't', ' ']).unwrap_or(t.len()));
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    // Four-digit years only, as RFC 3339 writes them: larger ones are typos,
    // and would overflow the arithmetic below.
    if parts.next().is_some()
        || !(0..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let mut secs = days_from_civil(y, m as u32, d as u32) * 86_400;
    if !rest.is_empty() {
        let rest = &rest[1..];
        let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
            Some(i) => rest.split_at(i),
            None => (rest, "Z"),
        };
        let clock = clock.split('.').next()?;
        let mut c = clock.split(':');
        let (h, mi, s) = (
            num(c.next()?)?,
            num(c.next()?)?,
            num(c.next().unwrap_or("0"))?,
        );
        if h > 23 || mi > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + s;
        if let Some(sign) = offset.chars().next().filter(|c| *c == '+' || *c == '-') {
            let mut o = offset[1..].split(':');
            let (oh, om) = (num(o.next()?)?, num(o.next().unwrap_or("0"))?);
            if !(0..=23).contains(&oh) || !(0..=59).contains(&om) {
                return None;
            }
            let off = oh * 3600 + om * 60;
            secs += if sign == '+' { -off } else { off };
        }
    }
    u64::try_from(secs).ok()
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
