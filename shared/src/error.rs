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
        "invalid event: {0}. Send {{\"Step\": \"createSecret|setSecret|testSecret|finishSecret\", \"SecretId\": \"<arn or name>\", \"ClientRequestToken\": \"<version id>\"}}"
    )]
    BadEvent(String),

    /// The step name is not one of the four rotation steps.
    #[error(
        "secret {secret}: invalid step parameter {step:?}; expected createSecret, setSecret, testSecret or finishSecret"
    )]
    UnknownStep { secret: String, step: String },

    /// Rotation was explicitly turned off on the secret.
    #[error(
        "secret {secret} is not enabled for rotation; enable rotation on it (or run the step from the CLI with --ignore-disabled) before rotating"
    )]
    RotationDisabled { secret: String },

    /// The token is not a version of the secret.
    #[error(
        "secret version {token} has no stage for rotation of secret {secret}; start a new rotation (RotateSecret) instead of replaying an old token"
    )]
    UnknownToken { secret: String, token: String },

    /// The token is a version of the secret, but not the one being rotated.
    #[error(
        "secret version {token} is not set as AWSPENDING for rotation of secret {secret}; the rotation this token belonged to is over — start a new one"
    )]
    NotPending { secret: String, token: String },

    /// A secret value is malformed or lacks what the engine needs.
    #[error("secret {secret} ({version}): {reason}")]
    BadSecret {
        secret: String,
        version: String,
        reason: String,
    },

    /// The secret or one of its versions does not exist.
    #[error("{what} not found; check the secret id and that the version was not removed")]
    NotFound { what: String },

    /// A database refused a login (wrong password, unknown user, pg_hba).
    #[error(
        "login refused for user {user:?} at {endpoint}: {detail}; check that the {which} credentials in the secret match the database"
    )]
    LoginRefused {
        user: String,
        endpoint: String,
        which: &'static str,
        detail: String,
    },

    /// The database could not be reached (DNS, refused, timeout).
    #[error(
        "cannot reach database at {endpoint}: {detail}; check the host/port in the secret, the VPC route and security groups from this function to the database"
    )]
    Unreachable { endpoint: String, detail: String },

    /// A server took longer than the time left for this invocation allows.
    #[error(
        "{endpoint} did not finish {what} within {after_ms} ms (bounded by the function's remaining time); nothing further was changed by Rotor. Check that the server is not overloaded or waiting on a lock, then retry; raise the function's timeout if the server is merely slow"
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
        "TLS to {endpoint} failed: {detail}; add the server's CA to the PEM bundle named by ROTOR_CA_BUNDLE, or set \"ssl\": false in the secret to allow plaintext"
    )]
    Tls { endpoint: String, detail: String },

    /// The database accepted the login but refused an operation.
    #[error("database at {endpoint} refused to {action}: {detail}")]
    Database {
        endpoint: String,
        action: String,
        detail: String,
    },

    /// A call to the secret store failed.
    #[error("secret store: {operation} on {secret} failed: {detail}")]
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
    #[error("RDS: {0}")]
    Rds(String),

    /// Rotor will not do this with a master credential: it would give the
    /// secret's writer more than the secret's owner could do, or touch a
    /// user Rotor did not make.
    #[error("refused at {endpoint}: {reason}; nothing was changed")]
    Refused { endpoint: String, reason: String },

    /// The caller may not do this (not in a role's allowed_principals).
    #[error("refused: {0}")]
    Forbidden(String),

    /// A role's cap on outstanding leases is reached (`max_active`,
    /// `max_active_per_principal`); nothing was created.
    #[error(
        "role {role} already has {active} unexpired leases, its {cap}; nothing was created. Wait until one expires or revoke one (rotor revoke --user <lease>), or raise the cap in the role definition"
    )]
    TooManyLeases {
        role: String,
        cap: String,
        active: usize,
    },

    /// A request is well-formed but asks for something the policy refuses.
    #[error("bad request: {0}")]
    BadRequest(String),

    /// The environment or command line is inconsistent.
    #[error("configuration: {0}")]
    Config(String),

    /// A local file (the local store, a CA bundle) could not be used.
    #[error("{path}: {detail}")]
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
