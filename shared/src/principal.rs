//! IAM principal patterns: `*` matches any run, `?` one character; an STS
//! assumed-role ARN also matches patterns written for its IAM role.

/// Whether `arn` matches one of `patterns` (`*` any run, `?` one character).
/// An STS assumed-role ARN also matches patterns written for its IAM role.
pub fn principal_allowed(arn: &str, patterns: &[String]) -> bool {
    let mut candidates = vec![arn.to_string()];
    // arn:aws:sts::123456789012:assumed-role/Name/session → arn:aws:iam::123456789012:role/Name
    if let Some(rest) = arn.strip_prefix("arn:aws:sts::")
        && let Some((account, path)) = rest.split_once(':')
        && let Some(role) = path.strip_prefix("assumed-role/")
        && let Some((name, _session)) = role.split_once('/')
    {
        candidates.push(format!("arn:aws:iam::{account}:role/{name}"));
    }
    patterns
        .iter()
        .any(|p| candidates.iter().any(|c| glob(p.as_bytes(), c.as_bytes())))
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"a?c*", b"abcdef"));
        assert!(!glob(b"a?c", b"abcd"));
        assert!(glob(b"*", b""));
    }
}
