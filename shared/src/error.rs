//! The one error type of Rotor.
//!
//! Every message says what went wrong *and what to do next*, because it ends up
//! in a CloudWatch log or in the Secrets Manager console where an operator reads
//! it at 3 a.m. No message ever contains a password: variants carry names,
//! hosts, ARNs and tokens only, and database/SDK errors are reduced to their
//! message text (which never includes the credentials Rotor sent — passwords
//! travel as SCRAM verifiers or protocol messages, never inside SQL text).
//!
//! Errors are classified as *retryable* (network, throttling, timeouts: the
//! next attempt may succeed) or not (bad secret, bad event, refused login:
//! a person must act).

use std::fmt;

/// Shorthand used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can make a Rotor operation fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The invocation payload is not a rotation event Rotor understands.
    #[error(
        "invalid event: {}. Send {{\"Step\": \"createSecret|setSecret|testSecret|finishSecret\", \"SecretId\": \"<arn or name>\", \"ClientRequestToken\": \"<version id>\"}}", shown(.0)
    )]
    BadEvent(String),

    /// The step name is not one of the four rotation steps.
    #[error(
        "secret {}: invalid step parameter \"{}\"; expected createSecret, setSecret, testSecret or finishSecret", shown(.secret), shown(.step)
    )]
    UnknownStep { secret: String, step: String },

    /// Rotation was explicitly turned off on the secret.
    #[error(
        "secret {} is not enabled for rotation; enable rotation on it (or run the step from the CLI with --ignore-disabled) before rotating", shown(.secret)
    )]
    RotationDisabled { secret: String },

    /// The token is not a version of the secret.
    #[error(
        "secret version {} has no stage for rotation of secret {}; start a new rotation (RotateSecret) instead of replaying an old token", shown(.token), shown(.secret)
    )]
    UnknownToken { secret: String, token: String },

    /// The token is a version of the secret, but not the one being rotated.
    #[error(
        "secret version {} is not set as AWSPENDING for rotation of secret {}; the rotation this token belonged to is over — start a new one", shown(.token), shown(.secret)
    )]
    NotPending { secret: String, token: String },

    /// A secret value is malformed or lacks what the engine needs.
    #[error(
        "secret {} ({}): {}", shown(.secret), shown(.version), shown(.reason)
    )]
    BadSecret {
        secret: String,
        version: String,
        reason: String,
    },

    /// The secret or one of its versions does not exist.
    #[error(
        "{} not found; check the secret id and that the version was not removed", shown(.what)
    )]
    NotFound { what: String },

    /// A database refused a login (wrong password, unknown user, pg_hba).
    #[error(
        "login refused for user \"{}\" at {}: {}; check that the {} credentials in the secret match the database", shown(.user), shown(.endpoint), shown(.detail), shown(.which)
    )]
    LoginRefused {
        user: String,
        endpoint: String,
        which: &'static str,
        detail: String,
    },

    /// The database could not be reached (DNS, refused, timeout).
    #[error(
        "cannot reach database at {}: {}; check the host/port in the secret, the VPC route and security groups from this function to the database", shown(.endpoint), shown(.detail)
    )]
    Unreachable { endpoint: String, detail: String },

    /// A server took longer than the time left for this invocation allows.
    #[error(
        "{} did not finish {} within {after_ms} ms (bounded by the function's remaining time); nothing further was changed by Rotor. Check that the server is not overloaded or waiting on a lock, then retry; raise the function's timeout if the server is merely slow", shown(.endpoint), shown(.what)
    )]
    Timeout {
        endpoint: String,
        what: String,
        after_ms: u64,
    },

    /// Another invocation changed the same thing at the same moment (the
    /// same step run twice at once); this one changed nothing.
    #[error(
        "{endpoint}: {what} was done by another invocation at the same moment; this one changed nothing. Retry: the step will find the work done"
    )]
    Conflict { endpoint: String, what: String },

    /// TLS could not be established or verified.
    #[error(
        "TLS to {} failed: {}; add the server's CA to the PEM bundle named by ROTOR_CA_BUNDLE, or set \"ssl\": false in the secret to allow plaintext", shown(.endpoint), shown(.detail)
    )]
    Tls { endpoint: String, detail: String },

    /// The database accepted the login but refused an operation.
    #[error(
        "database at {} refused to {}: {}", shown(.endpoint), shown(.action), shown(.detail)
    )]
    Database {
        endpoint: String,
        action: String,
        detail: String,
    },

    /// A call to the secret store failed.
    #[error(
        "secret store: {} on {} failed: {}", shown(.operation), shown(.secret), shown(.detail)
    )]
    Store {
        operation: &'static str,
        secret: String,
        detail: String,
        retryable: bool,
    },

    /// Some revocations of one event failed (each failure is also in the
    /// report and the audit records).
    #[error("{failed} revocations failed: {detail}. {advice}")]
    RevocationsFailed {
        failed: usize,
        retryable: bool,
        detail: String,
        advice: &'static str,
    },

    /// The RDS API call needed to resolve a master secret failed.
    #[error(
        "RDS: {}", shown(.0)
    )]
    Rds(String),

    /// Rotor will not do this with a master credential: it would give the
    /// secret's writer more than the secret's owner could do, or touch a
    /// user Rotor did not make.
    #[error(
        "refused at {}: {}; nothing was changed", shown(.endpoint), shown(.reason)
    )]
    Refused { endpoint: String, reason: String },

    /// The caller may not do this (not in a role's allowed_principals).
    #[error(
        "refused: {}", shown(.0)
    )]
    Forbidden(String),

    /// A role's cap on outstanding leases is reached (`max_active`,
    /// `max_active_per_principal`); nothing was created.
    #[error(
        "role {} already has {active} unexpired leases, its {}; nothing was created. Wait until one expires or revoke one (rotor revoke --user <lease>), or raise the cap in the role definition", shown(.role), shown(.cap)
    )]
    TooManyLeases {
        role: String,
        cap: String,
        active: usize,
    },

    /// A request is well-formed but asks for something the policy refuses.
    #[error(
        "bad request: {}", shown(.0)
    )]
    BadRequest(String),

    /// The environment or command line is inconsistent.
    #[error(
        "configuration: {}", shown(.0)
    )]
    Config(String),

    /// A local file (the local store, a CA bundle) could not be used.
    #[error(
        "{}: {}", shown(.path), shown(.detail)
    )]
    Io { path: String, detail: String },
}

impl Error {
    /// Whether trying again later may succeed without anybody changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } | Error::Conflict { .. } => true,
            Error::Store { retryable, .. } | Error::RevocationsFailed { retryable, .. } => {
                *retryable
            }
            _ => false,
        }
    }

    /// A short, stable name for the kind of failure (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadEvent(_) => "BadEvent",
            Error::UnknownStep { .. } => "UnknownStep",
            Error::RotationDisabled { .. } => "RotationDisabled",
            Error::UnknownToken { .. } => "UnknownToken",
            Error::NotPending { .. } => "NotPending",
            Error::BadSecret { .. } => "BadSecret",
            Error::NotFound { .. } => "NotFound",
            Error::LoginRefused { .. } => "LoginRefused",
            Error::Unreachable { .. } => "Unreachable",
            Error::Timeout { .. } => "Timeout",
            Error::Conflict { .. } => "Conflict",
            Error::Tls { .. } => "Tls",
            Error::Database { .. } => "Database",
            Error::Store { .. } => "Store",
            Error::RevocationsFailed { .. } => "RevocationsFailed",
            Error::Rds(_) => "Rds",
            Error::Refused { .. } => "Refused",
            Error::Forbidden(_) => "Forbidden",
            Error::TooManyLeases { .. } => "TooManyLeases",
            Error::BadRequest(_) => "BadRequest",
            Error::Config(_) => "Config",
            Error::Io { .. } => "Io",
        }
    }

    /// A [`Error::BadSecret`] naming the secret and version.
    pub fn bad_secret(
        secret: impl fmt::Display,
        version: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Error::BadSecret {
            secret: secret.to_string(),
            version: version.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl fmt::Display, err: impl fmt::Display) -> Self {
        Error::Io {
            path: path.to_string(),
            detail: err.to_string(),
        }
    }
}

/// Bytes of a long text kept before and after the part a message omits.
const SHOWN_HEAD: usize = 600;
const SHOWN_TAIL: usize = 300;

/// Text from outside (an event, a secret, a request, a server's answer) as
/// every error message shows it. Control characters (but newline) and
/// invisible formatting characters (bidirectional overrides and isolates,
/// zero-width marks, the BOM) are written as `\u{…}`, so a console, a log
/// viewer or a terminal shows what was sent rather than what it pretends to
/// be. A text longer than about 900 bytes loses its middle, so a megabyte of
/// input does not become a megabyte of message, and what the message says
/// to do next, at its end, survives.
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

/// See [`shown`].
pub struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        if text.len() <= SHOWN_HEAD + SHOWN_TAIL + 64 {
            return write_escaped(f, text);
        }
        let mut head = SHOWN_HEAD;
        while !text.is_char_boundary(head) {
            head -= 1;
        }
        let mut tail = text.len() - SHOWN_TAIL;
        while !text.is_char_boundary(tail) {
            tail += 1;
        }
        write_escaped(f, &text[..head])?;
        write!(f, "…[{} bytes omitted]…", tail - head)?;
        write_escaped(f, &text[tail..])
    }
}

fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    use fmt::Write as _;
    for c in text.chars() {
        if needs_escape(c) {
            write!(f, "{}", c.escape_unicode())?;
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

/// Characters a message must not carry raw: controls (newline aside) and
/// Unicode format characters that are invisible or reorder text.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_escape_invisible_characters_and_cut_long_input() {
        let e = Error::NotFound {
            what: "secret a\u{202e}b\0c\r\nd\u{200b}".into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("secret a\\u{202e}b\\u{0}c\\u{d}\nd\\u{200b} not found"),
            "{text}"
        );
        let e = Error::BadSecret {
            secret: "s".into(),
            version: "v".into(),
            reason: format!("\"port\" {:?} is not a TCP port", "x".repeat(1 << 20)),
        };
        let text = e.to_string();
        assert!(text.len() < 1200, "{} bytes", text.len());
        assert!(text.contains("bytes omitted"), "{text}");
        assert!(text.ends_with("is not a TCP port"), "{text}");
        // Multi-byte characters at the cut.
        let e = Error::Config("é".repeat(2000));
        assert!(e.to_string().contains("bytes omitted"));
    }
}
