//! IAM principal patterns: `*` matches any run, `?` one character; an STS
//! assumed-role ARN also matches patterns written for its IAM role, in any
//! partition (`aws`, `aws-cn`, `aws-us-gov`, ...) and with or without a role
//! path.

/// `arn:<partition>:<service>::<account>:<resource>` (a global service: no
/// region) read as (partition, account, resource).
fn global_arn<'a>(arn: &'a str, service: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some(s), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (s == service).then_some((partition, account, resource))
}

/// An STS assumed-role session ARN, read:
/// `arn:<partition>:sts::<account>:assumed-role/<role name>/<session>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session<'a> {
    pub partition: &'a str,
    pub account: &'a str,
    pub role_name: &'a str,
}

/// The session an ARN names, if it is an assumed-role session (exact case,
/// as IAM writes it; [`canonical_principal`] folds case itself).
pub fn assumed_role_session(arn: &str) -> Option<Session<'_>> {
    let (partition, account, resource) = global_arn(arn, "sts")?;
    let (role_name, _session) = resource.strip_prefix("assumed-role/")?.split_once('/')?;
    (!partition.is_empty()).then_some(Session {
        partition,
        account,
        role_name,
    })
}

/// Whether `arn` matches one of `patterns` (`*` any run, `?` one character).
///
/// An STS assumed-role session also matches patterns written for its IAM
/// role, in the session's own partition and account (never another: the
/// role ARN is built from the session's fields, and the pattern is matched
/// against it as written). A session does not carry the role's path, so a
/// pattern with a path (`arn:aws:iam::123456789012:role/team/ci`) matches a
/// session of role `ci` by the role name alone: IAM role names are unique
/// in an account whatever their path, so a literal name names one role.
/// A pattern whose role name holds a wildcard under a path
/// (`role/team/*`) cannot be checked against a session and matches none;
/// list the names, or write the pattern for the sessions
/// (`arn:aws:sts::123456789012:assumed-role/ci-*/*`).
pub fn principal_allowed(arn: &str, patterns: &[String]) -> bool {
    let Some(session) = assumed_role_session(arn) else {
        return patterns.iter().any(|p| glob(p.as_bytes(), arn.as_bytes()));
    };
    let role = format!(
        "arn:{}:iam::{}:role/{}",
        session.partition, session.account, session.role_name
    );
    patterns.iter().any(|p| {
        glob(p.as_bytes(), arn.as_bytes())
            || glob(p.as_bytes(), role.as_bytes())
            || pattern_without_path(p).is_some_and(|p| glob(p.as_bytes(), role.as_bytes()))
    })
}

/// `arn:P:iam::A:role/path/.../name` → `arn:P:iam::A:role/name`, when the
/// name is literal (no `*` or `?`) and there is a path; otherwise `None`.
fn pattern_without_path(pattern: &str) -> Option<String> {
    let (partition, account, resource) = global_arn(pattern, "iam")?;
    let path_and_name = resource.strip_prefix("role/")?;
    let (_path, name) = path_and_name.rsplit_once('/')?;
    if name.is_empty() || name.contains(['*', '?']) {
        return None;
    }
    Some(format!("arn:{partition}:iam::{account}:role/{name}"))
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
    if let Some((partition, account, resource)) = global_arn(&arn, "sts")
        && let Some(role) = resource.strip_prefix("assumed-role/")
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

    /// Issue 11, item 6: only `arn:aws:sts::` sessions were read as their
    /// role, so a session in aws-cn or aws-us-gov never matched its role's
    /// pattern, and a pattern with a role path matched no session.
    #[test]
    fn sessions_match_their_role_in_every_partition_and_with_a_path() {
        let allowed = |arn: &str, p: &str| principal_allowed(arn, &[p.to_string()]);
        for partition in ["aws", "aws-cn", "aws-us-gov"] {
            let session = format!("arn:{partition}:sts::123456789012:assumed-role/ci/run");
            let role = format!("arn:{partition}:iam::123456789012:role/ci");
            let with_path = format!("arn:{partition}:iam::123456789012:role/team/ci");
            assert!(allowed(&session, &role), "{session} vs {role}");
            assert!(allowed(&session, &with_path), "{session} vs {with_path}");
            assert!(allowed(
                &session,
                &format!("arn:{partition}:iam::123456789012:role/*/ci")
            ));
        }
        let session = "arn:aws-cn:sts::123456789012:assumed-role/ci/run";
        // Never across partitions or accounts, nor to another name.
        assert!(!allowed(session, "arn:aws:iam::123456789012:role/ci"));
        assert!(!allowed(
            session,
            "arn:aws-us-gov:iam::123456789012:role/team/ci"
        ));
        assert!(!allowed(session, "arn:aws-cn:iam::999999999999:role/ci"));
        assert!(!allowed(
            session,
            "arn:aws-cn:iam::999999999999:role/team/ci"
        ));
        assert!(!allowed(
            session,
            "arn:aws-cn:iam::123456789012:role/team/cid"
        ));
        assert!(!allowed(session, "arn:aws-cn:iam::123456789012:role/c"));
        // A wildcard role name under a path cannot be checked against a
        // session (which does not carry the path): it matches no session.
        assert!(!allowed(
            session,
            "arn:aws-cn:iam::123456789012:role/team/*"
        ));
        // Role ARNs themselves carry the path and match as written.
        assert!(allowed(
            "arn:aws:iam::123456789012:role/team/ci",
            "arn:aws:iam::123456789012:role/team/*"
        ));
        assert_eq!(
            canonical_principal("arn:aws-us-gov:sts::123456789012:assumed-role/CI/run"),
            "arn:aws-us-gov:iam::123456789012:role/ci"
        );
    }

    #[test]
    fn globs() {
        assert!(glob(b"a?c*", b"abcdef"));
        assert!(!glob(b"a?c", b"abcd"));
        assert!(glob(b"*", b""));
    }
}
