//! The password policy (AWS's EXCLUDE_* / PASSWORD_LENGTH variables).
//! Properties: a policy is refused only when it is impossible, and a
//! generated password has exactly the length, uses only allowed characters
//! (never an excluded one), and has one of each included type when
//! REQUIRE_EACH_INCLUDED_TYPE asks for it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::PasswordPolicy;

const SETS: [&str; 4] = [
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // Lengths up to 600 (the limit is 4096; longer only slows the run),
    // with 0 and just-too-short cases in reach.
    let length = usize::from(u16::from_le_bytes([data[0], data[1]]) % 600);
    let flags = data[2];
    let exclude_characters = String::from_utf8_lossy(&data[3..]).into_owned();
    let policy = PasswordPolicy {
        length,
        exclude_characters,
        exclude_numbers: flags & 1 != 0,
        exclude_punctuation: flags & 2 != 0,
        exclude_uppercase: flags & 4 != 0,
        exclude_lowercase: flags & 8 != 0,
        require_each_included_type: flags & 16 != 0,
    };
    let excluded = [
        policy.exclude_uppercase,
        policy.exclude_lowercase,
        policy.exclude_numbers,
        policy.exclude_punctuation,
    ];
    let classes: Vec<Vec<char>> = SETS
        .iter()
        .zip(excluded)
        .filter(|(_, excluded)| !excluded)
        .map(|(set, _)| {
            set.chars()
                .filter(|c| !policy.exclude_characters.contains(*c))
                .collect::<Vec<char>>()
        })
        .filter(|class| !class.is_empty())
        .collect();
    let possible = (1..=4096).contains(&length)
        && !classes.is_empty()
        && (!policy.require_each_included_type || classes.len() <= length);

    match policy.generate() {
        Ok(password) => {
            assert!(
                possible,
                "an impossible policy generated a password: {policy:?}"
            );
            let chars: Vec<char> = password.expose().chars().collect();
            assert_eq!(chars.len(), length);
            for c in &chars {
                assert!(
                    !policy.exclude_characters.contains(*c),
                    "excluded {c:?} drawn"
                );
                assert!(
                    classes.iter().any(|class| class.contains(c)),
                    "{c:?} not allowed"
                );
            }
            if policy.require_each_included_type {
                for class in &classes {
                    assert!(chars.iter().any(|c| class.contains(c)), "a type is missing");
                }
            }
        }
        Err(e) => {
            assert!(!possible, "a possible policy was refused: {policy:?}: {e}");
            assert_eq!(e.kind(), "Config");
        }
    }

    // The same policy through the environment variables' parser.
    let flag = |on: bool| if on { "true" } else { "false" }.to_string();
    let parsed = PasswordPolicy::from_lookup(":/@\"'\\", |k| match k {
        "PASSWORD_LENGTH" => Some(length.to_string()),
        "EXCLUDE_CHARACTERS" => Some(policy.exclude_characters.clone()),
        "EXCLUDE_NUMBERS" => Some(flag(policy.exclude_numbers)),
        "EXCLUDE_PUNCTUATION" => Some(flag(policy.exclude_punctuation)),
        "EXCLUDE_UPPERCASE" => Some(flag(policy.exclude_uppercase)),
        "EXCLUDE_LOWERCASE" => Some(flag(policy.exclude_lowercase)),
        "REQUIRE_EACH_INCLUDED_TYPE" => Some(flag(policy.require_each_included_type)),
        _ => None,
    });
    match parsed {
        Ok(p) => assert_eq!(p, policy),
        Err(_) => assert!(!possible),
    }
});
