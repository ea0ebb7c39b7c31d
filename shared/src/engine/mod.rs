//! Database engines: a narrow trait in the spirit of Vault's database plugin
//! interface, one module per kind of backend.
//!
//! An [`Engine`] turns a [`DbSecret`] into a logged-in [`Session`]; a session
//! performs the few operations rotation needs. Every operation is idempotent
//! and reports what it changed, so the protocol can keep its promise that a
//! repeated step changes nothing. Engines never see staging labels.

use async_trait::async_trait;

use crate::error::Result;
use crate::secret::{DbSecret, SecretString};

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod tls;

pub use tls::TlsSettings;

/// Which credentials a login uses, for messages (`current`, `pending`, …).
pub type Role = &'static str;

/// One kind of database.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Short name for logs (`postgres`, `mysql`).
    fn name(&self) -> &'static str;

    /// Whether the secret's `engine` value belongs to this engine.
    fn accepts(&self, engine: &str) -> bool;

    /// The `engine` values accepted, for error messages.
    fn engines(&self) -> &'static [&'static str];

    fn default_port(&self) -> u16;

    /// Longest username, in bytes, the server keeps without truncating.
    fn max_username_bytes(&self) -> usize;

    /// `EXCLUDE_CHARACTERS` default for this engine.
    fn default_excluded_characters(&self) -> &'static str;

    /// Logs in with `secret`; `Error::LoginRefused` when the server says no.
    async fn connect(&self, secret: &DbSecret, which: Role) -> Result<Box<dyn Session>>;
}

/// What `sync_alternate_user` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlternateSync {
    /// The user did not exist and was created with the given password.
    pub created: bool,
    /// Statements issued to align memberships and attributes (empty: nothing to do).
    pub changes: Vec<String>,
}

/// A logged-in connection.
#[async_trait]
pub trait Session: Send {
    /// Runs a trivial query.
    async fn check(&mut self) -> Result<()>;

    /// The logged-in user changes its own password.
    async fn set_own_password(&mut self, user: &str, password: &SecretString) -> Result<()>;

    /// A privileged login sets another user's password.
    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<()>;

    /// Whether the stored credential of `user` is `password`, checked without
    /// logging in; `None` when this login may not read stored credentials.
    async fn password_matches(
        &mut self,
        user: &str,
        password: &SecretString,
    ) -> Result<Option<bool>>;

    /// The longest username the connected server keeps, when it differs
    /// from [`Engine::max_username_bytes`] (MySQL: depends on the version).
    fn username_limit(&self) -> Option<usize> {
        None
    }

    /// Makes `alternate` a login user that holds what `template` holds:
    /// creates it with `password` when missing, then aligns memberships and
    /// attributes. Issues no statement when everything already matches.
    async fn sync_alternate_user(
        &mut self,
        template: &str,
        alternate: &str,
        password: &SecretString,
    ) -> Result<AlternateSync>;
}

/// `host:port` for messages.
pub fn endpoint(secret: &DbSecret, default_port: u16) -> String {
    format!("{}:{}", secret.host, secret.port.unwrap_or(default_port))
}

/// How engines reach servers: trust settings, host overrides, timeout.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub tls: TlsSettings,
    /// `ROTOR_HOST_OVERRIDES=name=ip,…`: connect to `ip` while verifying TLS
    /// for `name` (SSH tunnels, tests that follow an RDS endpoint locally).
    pub host_overrides: Vec<(String, std::net::IpAddr)>,
    pub connect_timeout: std::time::Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            tls: TlsSettings::default(),
            host_overrides: Vec::new(),
            connect_timeout: std::time::Duration::from_secs(5),
        }
    }
}

impl ConnectOptions {
    /// `ROTOR_CA_BUNDLE`, `ROTOR_HOST_OVERRIDES`, `ROTOR_CONNECT_TIMEOUT_SECS` (5).
    pub fn from_env() -> Result<Self> {
        let mut options = ConnectOptions {
            tls: TlsSettings::from_env(),
            ..ConnectOptions::default()
        };
        if let Ok(spec) = std::env::var("ROTOR_HOST_OVERRIDES") {
            options.host_overrides = parse_host_overrides(&spec)?;
        }
        if let Ok(secs) = std::env::var("ROTOR_CONNECT_TIMEOUT_SECS") {
            let secs: u64 = secs.trim().parse().map_err(|_| {
                crate::Error::Config(format!(
                    "ROTOR_CONNECT_TIMEOUT_SECS={secs:?} is not a whole number of seconds"
                ))
            })?;
            options.connect_timeout = std::time::Duration::from_secs(secs.max(1));
        }
        Ok(options)
    }

    /// The address to dial for `host`, when overridden.
    pub fn address_for(&self, host: &str) -> Option<std::net::IpAddr> {
        self.host_overrides
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host))
            .map(|(_, ip)| *ip)
    }
}

/// Parses `name=ip,name=ip`.
pub fn parse_host_overrides(spec: &str) -> Result<Vec<(String, std::net::IpAddr)>> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, ip) = pair.split_once('=').ok_or_else(|| {
                crate::Error::Config(format!(
                    "ROTOR_HOST_OVERRIDES entry {pair:?} is not name=ip"
                ))
            })?;
            let ip = ip.trim().parse().map_err(|_| {
                crate::Error::Config(format!(
                    "ROTOR_HOST_OVERRIDES entry {pair:?}: {ip:?} is not an IP address"
                ))
            })?;
            Ok((name.trim().to_string(), ip))
        })
        .collect()
}
