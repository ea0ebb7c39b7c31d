//! Principal matching (`allowed_principals`, revoke-on-event's ignore list).
//! Input: pattern, newline, ARN. Properties: the matcher agrees with a
//! plain recursive reference matcher; a literal pattern matches itself;
//! `*` matches everything; an assumed-role session matches its IAM role's
//! pattern (any partition, with or without a role path) and no other
//! partition's or account's; the canonical principal is idempotent and case-folded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::principal::{assumed_role_session, canonical_principal, principal_allowed};

/// `*` any run, `?` one byte: by definition, memoised.
fn reference(p: &[u8], t: &[u8]) -> bool {
    let mut memo = vec![vec![None; t.len() + 1]; p.len() + 1];
    fn go(p: &[u8], t: &[u8], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(v) = memo[i][j] {
            return v;
        }
        let v = match p.get(i) {
            None => j == t.len(),
            Some(b'*') => go(p, t, i + 1, j, memo) || (j < t.len() && go(p, t, i, j + 1, memo)),
            Some(&c) => j < t.len() && (c == b'?' || c == t[j]) && go(p, t, i + 1, j + 1, memo),
        };
        memo[i][j] = Some(v);
        v
    }
    go(p, t, 0, 0, &mut memo)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 512 {
        return;
    }
    let (pattern, arn) = text.split_once('\n').unwrap_or((text, text));
    let patterns = vec![pattern.to_string()];
    let allowed = principal_allowed(arn, &patterns);
    // Only the ARN itself is compared unless it is an assumed-role session.
    let session = assumed_role_session(arn);
    if session.is_none() {
        assert_eq!(
            allowed,
            reference(pattern.as_bytes(), arn.as_bytes()),
            "{pattern:?} vs {arn:?}"
        );
    } else if reference(pattern.as_bytes(), arn.as_bytes()) {
        assert!(allowed);
    }
    assert!(
        principal_allowed(arn, &[arn.to_string()]),
        "{arn:?} does not match itself"
    );
    assert!(principal_allowed(arn, &["*".to_string()]));
    assert!(!principal_allowed(arn, &[]));

    let canonical = canonical_principal(arn);
    assert_eq!(canonical_principal(&canonical), canonical);
    assert_eq!(canonical, canonical.to_ascii_lowercase());
    if let Some(session) = session {
        // In every partition, with or without a role path; never in
        // another partition or account.
        let (partition, account, name) = (session.partition, session.account, session.role_name);
        let role_arn = format!("arn:{partition}:iam::{account}:role/{name}");
        let with_path = format!("arn:{partition}:iam::{account}:role/team/{name}");
        for pattern in [&role_arn, &with_path] {
            if pattern == &with_path && (name.is_empty() || name.contains(['*', '?'])) {
                continue;
            }
            assert!(
                principal_allowed(arn, std::slice::from_ref(pattern)),
                "{arn:?} is not {pattern:?}"
            );
        }
        if !partition.contains(['*', '?']) && !account.contains(['*', '?']) {
            let elsewhere = format!("arn:{partition}x:iam::{account}:role/{name}");
            assert!(
                !principal_allowed(arn, &[elsewhere.clone()]),
                "{arn:?} is {elsewhere:?}"
            );
            let elsewhere = format!("arn:{partition}:iam::{account}0:role/team/{name}");
            assert!(
                !principal_allowed(arn, &[elsewhere.clone()]),
                "{arn:?} is {elsewhere:?}"
            );
        }
    }
});
