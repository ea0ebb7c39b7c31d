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

    /// Whether dropping a user hands what it owns to the role's
    /// `owner_role` (PostgreSQL's `REASSIGN OWNED`). MySQL and MariaDB have
    /// no object owners, so their drops ignore `owner_role`.
    fn hands_objects_to_owner_role(&self) -> bool {
        false
    }

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

/// What a master may do when it makes or aligns an alternate user.
///
/// Opt-ins come from places the app secret's writer cannot reach: the
/// function's environment (`ROTOR_ALLOW_PRIVILEGED_CLONE=true`) or the master
/// secret (`"rotor_allow_privileged_clone": true`). Never from the app secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClonePolicy {
    /// Clone superuser-like powers (PostgreSQL SUPERUSER, CREATEROLE,
    /// CREATEDB, REPLICATION, BYPASSRLS, ADMIN OPTION on a membership; MySQL
    /// global GRANT OPTION or CREATE USER). Off: such a template is refused.
    pub allow_privileged: bool,
}

/// The marker that makes a user one of Rotor's dynamic users: a role with
/// no login and no privileges, granted to every dynamic user when Rotor
/// creates it (PostgreSQL: a NOLOGIN group role; MySQL 8 and MariaDB: a
/// role). Rotor lists, sweeps and drops only users that hold it directly,
/// whatever their names look like. Only a login that may grant this role
/// (PostgreSQL: CREATEROLE up to 15, ADMIN OPTION on it from 16; MySQL:
/// ROLE_ADMIN or ADMIN OPTION; MariaDB: ADMIN OPTION) can put it on a user.
/// Grant it nothing: every dynamic user would inherit what it holds.
pub const LEASE_MARKER: &str = "rotor_lease";

/// Of the logins holding ADMIN OPTION on [`LEASE_MARKER`] (the connected
/// master and superusers already left out by the engine's query), those
/// not named by `trusted` (`ROTOR_LEASE_MARKER_ADMINS`, `*`/`?` patterns
/// over the user name). Each is `(user, shown)`, `shown` being how the
/// refusal names it.
pub fn untrusted_marker_admins(holders: Vec<(String, String)>, trusted: &[String]) -> Vec<String> {
    holders
        .into_iter()
        .filter(|(user, _)| {
            !trusted
                .iter()
                .any(|p| crate::principal::glob(p.as_bytes(), user.as_bytes()))
        })
        .map(|(_, shown)| shown)
        .collect()
}

/// The refusal while others hold ADMIN OPTION on [`LEASE_MARKER`]: they
/// could grant it to any user and so make Rotor's sweep and revocations
/// drop that user (handing what it owns to `owner_role`), or fill a role's
/// lease caps.
pub fn marker_admin_refusal(endpoint: &str, holders: &[String]) -> crate::Error {
    crate::Error::Refused {
        endpoint: endpoint.to_string(),
        reason: format!(
            "{} hold ADMIN OPTION on the lease marker role {LEASE_MARKER}, so they can mark any user as one of Rotor's leases (which the sweep and revocations would drop, handing its objects to owner_role); revoke it (REVOKE ADMIN OPTION FOR {LEASE_MARKER} FROM <login>), or, if they are other Rotor masters on this server, list them in ROTOR_LEASE_MARKER_ADMINS",
            holders.join(", ")
        ),
    }
}

/// A dynamic user to create: a login that dies on its own.
#[derive(Clone, Debug)]
pub struct DynamicUser {
    pub username: String,
    pub password: SecretString,
    /// Seconds since the Unix epoch; PostgreSQL enforces it (`VALID UNTIL`),
    /// MySQL relies on the sweep.
    pub expires_at: u64,
    /// Group roles to grant.
    pub member_of: Vec<String>,
    /// `CONNECTION LIMIT` / `MAX_USER_CONNECTIONS`; `None`: unlimited.
    pub max_connections: Option<u32>,
}

/// What dropping a user did (the revocation evidence).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropReport {
    /// The user existed before (false: already gone, nothing to do).
    pub existed: bool,
    /// Sessions that were open and were ended.
    pub sessions_ended: u64,
    /// Objects it owned were handed to the owner role first.
    pub objects_reassigned: bool,
    /// Objects it owned that would have run or read with the owner role's
    /// rights once handed over, dropped before the hand-over (PostgreSQL:
    /// SECURITY DEFINER functions and procedures, views and rules over
    /// tables it did not own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects_dropped: Vec<String>,
    /// Grants to PUBLIC it had made on what it owned, revoked before the
    /// hand-over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub public_grants_revoked: Vec<String>,
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

    /// Makes `alternate` a login user that holds exactly what `template`
    /// holds: creates it with `password` when missing, then aligns
    /// memberships, privileges and attributes in both directions (adds what
    /// is missing, revokes what the template lacks). Issues no statement when
    /// everything already matches.
    ///
    /// Of the pair, the name ending in `_clone` is the one Rotor makes. It
    /// refuses with [`crate::Error::Refused`], before changing anything, when
    /// that clone already exists but is not marked as Rotor's alternate of
    /// the other (Rotor never takes over a user it did not make), and when
    /// `template` holds superuser-like powers and `policy` does not allow
    /// cloning them. It marks the clone when it creates it.
    async fn sync_alternate_user(
        &mut self,
        template: &str,
        alternate: &str,
        password: &SecretString,
        policy: ClonePolicy,
    ) -> Result<AlternateSync>;

    /// Creates a dynamic user (fails if the name exists) and marks it as
    /// Rotor's with [`LEASE_MARKER`] (creating the marker role when missing).
    /// A user that cannot be marked is not left behind.
    async fn create_dynamic_user(&mut self, user: &DynamicUser) -> Result<()>;

    /// Whether the role `name` exists, where the engine hands a dropped
    /// user's objects to an owner role (PostgreSQL); `None` elsewhere.
    async fn role_exists(&mut self, name: &str) -> Result<Option<bool>> {
        let _ = name;
        Ok(None)
    }

    /// Takes the server-wide exclusive lock `name` for this session, waiting
    /// at most `wait` ([`crate::Error::Timeout`] after that). Held until
    /// [`release_lock`](Self::release_lock) or the session ends, so a
    /// crashed holder never keeps it. PostgreSQL: an advisory lock (in the
    /// session's database); MySQL and MariaDB: `GET_LOCK`.
    async fn acquire_lock(&mut self, name: &str, wait: std::time::Duration) -> Result<()>;

    /// Releases a lock taken with [`acquire_lock`](Self::acquire_lock).
    async fn release_lock(&mut self, name: &str) -> Result<()>;

    /// Users whose names start with `prefix` and that carry
    /// [`LEASE_MARKER`]: the dynamic users Rotor created. Users without the
    /// marker are never listed, whatever their names.
    async fn users_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>>;

    /// Ends `user`'s sessions (only those started before `before`, seconds
    /// since the epoch, when given). Returns how many were ended.
    async fn end_sessions(&mut self, user: &str, before: Option<f64>) -> Result<u64>;

    /// Ends the user's sessions, hands what it owns to `owner_role` (when
    /// given and the engine has object ownership), and drops it. Dropping a
    /// user that is already gone succeeds with `existed: false`. A user that
    /// exists without [`LEASE_MARKER`] is refused ([`crate::Error::Refused`])
    /// and left untouched: Rotor drops only users it created.
    async fn drop_user(&mut self, user: &str, owner_role: Option<&str>) -> Result<DropReport>;

    /// Drops many users; engines may batch. One result per user, in order.
    async fn drop_users(
        &mut self,
        users: &[String],
        owner_role: Option<&str>,
    ) -> Vec<(String, Result<DropReport>)> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            out.push((user.clone(), self.drop_user(user, owner_role).await));
        }
        out
    }
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
    /// `ROTOR_LEASE_MARKER_ADMINS=name,…` (`*`, `?` allowed): logins besides
    /// the connected master and superusers trusted to hold ADMIN OPTION on
    /// [`LEASE_MARKER`] — other Rotor masters on the same server.
    pub lease_marker_admins: Vec<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            tls: TlsSettings::default(),
            host_overrides: Vec::new(),
            connect_timeout: std::time::Duration::from_secs(5),
            lease_marker_admins: Vec::new(),
        }
    }
}

impl ConnectOptions {
    /// `ROTOR_CA_BUNDLE`, `ROTOR_HOST_OVERRIDES`, `ROTOR_CONNECT_TIMEOUT_SECS` (5),
    /// `ROTOR_LEASE_MARKER_ADMINS`.
    pub fn from_env() -> Result<Self> {
        let mut options = ConnectOptions {
            tls: TlsSettings::from_env(),
            ..ConnectOptions::default()
        };
        if let Ok(spec) = std::env::var("ROTOR_HOST_OVERRIDES") {
            options.host_overrides = parse_host_overrides(&spec)?;
        }
        if let Ok(names) = std::env::var("ROTOR_LEASE_MARKER_ADMINS") {
            options.lease_marker_admins = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
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

/// The engine for a secret's `engine` value, with these connect options.
pub fn for_engine_key(key: &str, options: &ConnectOptions) -> Option<std::sync::Arc<dyn Engine>> {
    match key {
        #[cfg(feature = "postgres")]
        "postgres" | "aurora-postgresql" => Some(std::sync::Arc::new(
            postgres::PostgresEngine::new(options.clone()),
        )),
        #[cfg(feature = "mysql")]
        "mysql" | "aurora-mysql" | "mariadb" => Some(std::sync::Arc::new(mysql::MysqlEngine::new(
            options.clone(),
        ))),
        _ => None,
    }
}

/// Every `engine` value this build understands, for messages.
pub fn known_engine_keys() -> Vec<&'static str> {
    let mut keys = Vec::new();
    #[cfg(feature = "postgres")]
    keys.extend(["postgres", "aurora-postgresql"]);
    #[cfg(feature = "mysql")]
    keys.extend(["mysql", "aurora-mysql", "mariadb"]);
    keys
}
