//! MySQL grant-line replay (alternating users copy the template's
//! `SHOW GRANTS` lines to the clone). Input: a `SHOW GRANTS` line; a first
//! line, when there are two, is the template user's name (host `%`).
//! Properties: a replayed line is about the clone, parses back to the very
//! grant it replays (privileges, object, options), replays onto itself
//! unchanged, and is privileged exactly when the original is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::engine::mysql::{parse_grant, parse_grant_of_role, privileged_reason, replay_grant};

const HOST: &str = "%";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (from, line) = text.split_once('\n').unwrap_or(("app", text));
    let to = format!("{from}_clone");
    let _ = parse_grant_of_role(line);
    let original = parse_grant(line, from, HOST);
    let Some(replayed) = replay_grant(line, from, HOST, &to) else {
        return;
    };
    let original = original.expect("a replayed line parses");
    let again = parse_grant(&replayed, &to, HOST)
        .unwrap_or_else(|| panic!("the replayed line {replayed:?} does not parse"));
    assert_eq!(
        again, original,
        "replaying {line:?} changed the grant: {replayed:?}"
    );
    assert_eq!(
        replay_grant(&replayed, &to, HOST, &to).as_deref(),
        Some(replayed.as_str()),
        "replay is not a fixed point"
    );
    assert_eq!(
        privileged_reason(&again).is_some(),
        privileged_reason(&original).is_some()
    );
});
