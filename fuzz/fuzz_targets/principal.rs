//! Principal matching (`allowed_principals`, revoke-on-event's ignore list).
//! Input: pattern, newline, ARN. Properties: the matcher agrees with a
//! plain recursive reference matcher; a literal pattern matches itself;
//! `*` matches everything; an assumed-role session matches its IAM role's
//! pattern; the canonical principal is idempotent and case-folded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::principal::{canonical_principal, principal_allowed};

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
    if !arn.starts_with("arn:aws:sts::") {
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
    if let Some(rest) = arn.strip_prefix("arn:aws:sts::")
        && let Some((account, path)) = rest.split_once(':')
        && let Some(role) = path.strip_prefix("assumed-role/")
        && let Some((name, _session)) = role.split_once('/')
    {
        let role_arn = format!("arn:aws:iam::{account}:role/{name}");
        assert!(
            principal_allowed(arn, &[role_arn.clone()]),
            "{arn:?} is not {role_arn:?}"
        );
    }
});
