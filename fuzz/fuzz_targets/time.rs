//! Duration and date parsing (`15m`, `ttl`, `max_ttl`, the expires-at tag
//! the sweep reads). Properties: an accepted duration is positive and reads
//! the same written as plain seconds; an accepted timestamp prints as
//! RFC 3339 and parses back to itself; a valid date-time with an offset is
//! the same instant as its UTC form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::time::{format_duration, parse_duration, parse_rfc3339, rfc3339};

/// 9999-12-31T23:59:59Z: the last instant RFC 3339 can write.
const LAST: u64 = 253_402_300_799;

fuzz_target!(|data: &[u8]| {
    if data.len() == 8 {
        let t = u64::from_le_bytes(data.try_into().expect("8 bytes")) % (LAST + 1);
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(secs) = parse_duration(text) {
        assert!(secs > 0);
        assert_eq!(parse_duration(&secs.to_string()).ok(), Some(secs));
        assert_eq!(parse_duration(&format!("{secs}s")).ok(), Some(secs));
        let _ = format_duration(secs);
    }
    if let Some(t) = parse_rfc3339(text) {
        if t <= LAST {
            assert_eq!(
                parse_rfc3339(&rfc3339(t)),
                Some(t),
                "{text:?} → {}",
                rfc3339(t)
            );
        }
    }
});
