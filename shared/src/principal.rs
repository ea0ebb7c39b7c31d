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

/// The principal an ARN stands for, for counting what it holds: an STS
/// assumed-role session is its IAM role (`arn:<partition>:iam::<account>:role/<name>`),
/// whatever the session name, so a caller cannot become a new principal by
/// choosing a new session name; anything else is itself. Lowercased: IAM
/// names are unique without regard to case.
pub fn canonical_principal(arn: &str) -> String {
    // Lowercase first, so `ARN:` and `STS` read as what they name and the
    // result is its own canonical form.
    let arn = arn.trim().to_ascii_lowercase();
    let mut parts = arn.splitn(6, ':');
    if let (Some("arn"), Some(partition), Some("sts"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) && let Some(role) = resource.strip_prefix("assumed-role/")
        && let Some((name, _session)) = role.split_once('/')
    {
        // Trimmed like the input, so the result is its own canonical form.
        return format!("arn:{partition}:iam::{account}:role/{name}")
            .trim_end()
            .to_string();
    }
    arn
}

pub(crate) fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        // `*` first: a `*` in the text is not a reason to read it literally.
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
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
    fn sessions_of_a_role_are_one_principal() {
        let role = "arn:aws:iam::123456789012:role/ci-deploy";
        for arn in [
            "arn:aws:sts::123456789012:assumed-role/ci-deploy/run-7",
            "arn:aws:sts::123456789012:assumed-role/ci-deploy/another-session",
            "arn:aws:sts::123456789012:assumed-role/CI-Deploy/x",
            "arn:aws:iam::123456789012:role/ci-deploy",
        ] {
            assert_eq!(canonical_principal(arn), role, "{arn}");
        }
        assert_eq!(
            canonical_principal("arn:aws-cn:sts::123456789012:assumed-role/r/s"),
            "arn:aws-cn:iam::123456789012:role/r"
        );
        for other in [
            "arn:aws:sts::999999999999:assumed-role/ci-deploy/run-7",
            "arn:aws:iam::123456789012:user/ci-deploy",
            "arn:aws:sts::123456789012:federated-user/ci-deploy",
        ] {
            assert_ne!(canonical_principal(other), role, "{other}");
        }
    }

    /// Found by `scripts/fuzz` (target `principal`): `ARN:…:assumed-role/…`
    /// was lowercased but not read as a session, so its canonical form was
    /// a session ARN whose own canonical form is the role: not idempotent.
    #[test]
    fn canonical_principal_is_idempotent_whatever_the_case() {
        let arn = "arN:aws:sts::123456789012:assumed-role/ci-deploy/run-7";
        let once = canonical_principal(arn);
        assert_eq!(canonical_principal(&once), once);
        assert_eq!(once, "arn:aws:iam::123456789012:role/ci-deploy");
    }

    /// Found by `scripts/fuzz` (target `principal`, long run): a session
    /// of a role whose name ended in whitespace gave a role ARN that the
    /// next call trimmed: not idempotent.
    #[test]
    fn canonical_principal_of_a_canonical_principal_is_itself() {
        let once =
            canonical_principal("arn:aws:sts::123456789012:assumed-role/ci-deploy\x0c/run-7");
        assert_eq!(canonical_principal(&once), once);
    }

    /// Found by `scripts/fuzz` (target `principal`): a `*` in the pattern
    /// facing a `*` in the text was taken as a literal, so `*` no longer
    /// matched any run.
    #[test]
    fn a_star_facing_a_star_is_still_a_wildcard() {
        assert!(glob(b"*", b"*!aa:r7"));
        assert!(glob(b"a*c", b"a*bc"));
        assert!(principal_allowed("*x", &["*".to_string()]));
    }

    #[test]
    fn globs() {
        assert!(glob(b"a?c*", b"abcdef"));
        assert!(!glob(b"a?c", b"abcd"));
        assert!(glob(b"*", b""));
    }
}
