//! Role definitions (dynamic credentials). Input: the role secret's name on
//! the first line, its JSON after. Properties of an accepted role: a
//! username prefix of 1–10 lowercase letters or digits; 0 < default_ttl <=
//! max_ttl <= MAX_TTL; every lease name it mints fits MySQL's 32-character
//! user names and reads back as the same role and expiry; a ttl above
//! max_ttl is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::SecretString;
use rotor::dynamic::{
    MAX_PREFIX, MAX_TTL, RoleDefinition, lease_username, parse_lease, principal_tag,
    tagged_lease_username,
};

/// 2100-01-01: lease names must still fit then.
const LATE: u64 = 4_102_444_800;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (name, json) = text.split_once('\n').unwrap_or(("rotor/roles/app", text));
    let arn = format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}");
    let Ok(role) = RoleDefinition::parse(&SecretString::new(json), name, &arn) else {
        return;
    };
    let prefix = &role.username_prefix;
    assert!((1..=MAX_PREFIX).contains(&prefix.len()), "{prefix:?}");
    assert!(
        prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{prefix:?}"
    );
    assert!(role.default_ttl > 0);
    assert!(role.default_ttl <= role.max_ttl, "{role:?}");
    assert!(role.max_ttl <= MAX_TTL, "{role:?}");
    assert!(role.max_connections.is_none_or(|n| n > 0));
    assert!(role.max_active.is_none_or(|n| n > 0));

    let (ttl, expires_at) = role
        .lease_expiry(None, LATE)
        .expect("the default ttl is allowed");
    assert_eq!(
        (ttl, expires_at),
        (role.default_ttl, LATE + role.default_ttl)
    );
    assert!(role.lease_expiry(Some(role.max_ttl + 1), LATE).is_err());
    assert!(role.lease_expiry(Some(0), LATE).is_err());

    let (_, latest) = role
        .lease_expiry(Some(role.max_ttl), LATE)
        .expect("max_ttl is allowed");
    let tag = principal_tag(prefix, "arn:aws:sts::123456789012:assumed-role/ci/run");
    for user in [
        lease_username(prefix, latest).expect("OS random"),
        tagged_lease_username(prefix, latest, &tag).expect("OS random"),
    ] {
        assert!(
            user.len() <= 32,
            "{user} is longer than MySQL's 32 characters"
        );
        assert!(user.starts_with(&role.user_prefix()));
        let lease = parse_lease(&user).expect("a minted lease name parses");
        assert_eq!(&lease.prefix, prefix);
        assert_eq!(lease.expires_at, latest);
        assert_eq!(role.lease_of(&user), Some(lease));
    }
});
