//! PostgreSQL and Aurora PostgreSQL (tokio-postgres, rustls).
//!
//! - Identifiers are quoted with `postgres-protocol`'s escaping, so any name
//!   PostgreSQL allows works (quotes, spaces, capitals, 63 bytes).
//! - A new password is sent as a SCRAM-SHA-256 verifier computed here, never
//!   as plaintext: `log_statement = all` and `pg_stat_activity` see only the
//!   verifier.
//! - `ssl: true` → TLS required and verified; absent → verified TLS when the
//!   server offers it, plaintext with a warning when it offers none;
//!   `false` → plaintext.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls, config::SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    AlternateSync, ClonePolicy, ConnectOptions, DropReport, DynamicUser, Engine, LEASE_MARKER,
    Role, Session, endpoint,
};
use crate::deadline;
use crate::error::{Error, Result};
use crate::fault;
use crate::secret::{DbSecret, SecretString, TlsMode};
use crate::strategy::CLONE_SUFFIX;

/// The PostgreSQL engine.
#[derive(Clone, Debug, Default)]
pub struct PostgresEngine {
    options: ConnectOptions,
}

impl PostgresEngine {
    pub fn new(options: ConnectOptions) -> Self {
        PostgresEngine { options }
    }

    pub fn from_env() -> Result<Self> {
        Ok(PostgresEngine::new(ConnectOptions::from_env()?))
    }

    fn config(&self, secret: &DbSecret) -> Config {
        let mut config = Config::new();
        config
            .host(&secret.host)
            .port(secret.port.unwrap_or(5432))
            .user(&secret.username)
            .password(secret.password.expose())
            .dbname(secret.dbname.as_deref().unwrap_or("postgres"))
            .application_name("rotor");
        config
    }

    /// TCP to the server (or its override address), bounded.
    async fn dial(&self, secret: &DbSecret, endpoint: &str, bound: Duration) -> Result<TcpStream> {
        let port = secret.port.unwrap_or(5432);
        let started = std::time::Instant::now();
        let dial = async {
            let stream = match self.options.address_for(&secret.host) {
                Some(ip) => TcpStream::connect((ip, port)).await,
                None => TcpStream::connect((secret.host.as_str(), port)).await,
            };
            // Which call failed, and after how long: a refused connection
            // answers at once, a filtered one does not.
            stream.map_err(|e| Error::Unreachable {
                endpoint: endpoint.to_string(),
                detail: format!(
                    "the TCP connection failed after {} ms: {e}",
                    started.elapsed().as_millis()
                ),
            })
        };
        let stream = deadline::bounded(endpoint, "the TCP connection", bound, dial).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

#[async_trait]
impl Engine for PostgresEngine {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn hands_objects_to_owner_role(&self) -> bool {
        true
    }

    fn accepts(&self, engine: &str) -> bool {
        self.engines().contains(&engine)
    }

    fn engines(&self) -> &'static [&'static str] {
        &["postgres", "aurora-postgresql"]
    }

    fn default_port(&self) -> u16 {
        5432
    }

    fn max_username_bytes(&self) -> usize {
        63
    }

    fn default_excluded_characters(&self) -> &'static str {
        ":/@\"'\\"
    }

    async fn connect(&self, secret: &DbSecret, which: Role) -> Result<Box<dyn Session>> {
        let endpoint = endpoint(secret, 5432);
        let mut config = self.config(secret);
        // One bound covers the TCP connect, the TLS handshake and the
        // authentication exchange: a server that accepts TCP and then says
        // nothing cannot hold the function until Lambda kills it.
        let bound = deadline::budget(self.options.connect_timeout);
        let started = std::time::Instant::now();
        let stream = self.dial(secret, &endpoint, bound).await?;
        let handshake_bound = bound
            .saturating_sub(started.elapsed())
            .max(deadline::MIN_BOUND);
        let fail = |e: tokio_postgres::Error| classify(e, &endpoint, &secret.username, which);
        let handshake = "the TLS and login handshake";
        let client = match secret.tls {
            TlsMode::Disabled => {
                config.ssl_mode(SslMode::Disable);
                let stream = CleartextGuard::new(stream, false);
                let (client, connection) =
                    deadline::bounded(&endpoint, handshake, handshake_bound, async {
                        config.connect_raw(stream, NoTls).await.map_err(fail)
                    })
                    .await?;
                tokio::spawn(connection);
                client
            }
            TlsMode::Required | TlsMode::Preferred => {
                let required = secret.tls == TlsMode::Required;
                config.ssl_mode(if required {
                    SslMode::Require
                } else {
                    SslMode::Prefer
                });
                let used = Arc::new(AtomicBool::new(false));
                let mut tls = TrackedTls {
                    inner: MakeRustlsConnect::new((*self.options.tls.client_config()?).clone()),
                    used: used.clone(),
                };
                let connector =
                    <TrackedTls as MakeTlsConnect<CleartextGuard<TcpStream>>>::make_tls_connect(
                        &mut tls,
                        &secret.host,
                    )
                    .map_err(|e| Error::Tls {
                        endpoint: endpoint.clone(),
                        detail: e.to_string(),
                    })?;
                let stream = CleartextGuard::new(stream, true);
                let (client, connection) =
                    deadline::bounded(&endpoint, handshake, handshake_bound, async {
                        config.connect_raw(stream, connector).await.map_err(fail)
                    })
                    .await?;
                tokio::spawn(connection);
                if !used.load(Ordering::SeqCst) {
                    tracing::warn!(
                        endpoint = %endpoint,
                        "server offers no TLS: connected in plaintext because the secret has no \"ssl\" key; set \"ssl\": true to refuse plaintext"
                    );
                }
                client
            }
        };
        Ok(Box::new(PgSession {
            client,
            endpoint,
            marker_admins: self.options.lease_marker_admins.clone(),
        }))
    }
}

/// A statement's own bound when no Lambda deadline is closer (CLI, tests).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The client-side bound of a call made now: what is left of the deadline
/// (see [`deadline`]), at most [`STATEMENT_TIMEOUT`]. Computed per call, so
/// it shrinks as the invocation runs out.
fn statement_bound() -> Duration {
    deadline::budget(STATEMENT_TIMEOUT)
}

/// `SET statement_timeout …; SET lock_timeout …;` just below `bound`, sent
/// in the same round trip as each change: the server gives up (and rolls
/// back) before the client does, so a change never lands after Rotor
/// reported a timeout.
fn limits_sql(bound: Duration) -> String {
    let ms = deadline::server_limit(bound).as_millis();
    format!("SET statement_timeout = {ms}; SET lock_timeout = {ms}; ")
}

/// Watches what a server sends until authentication ends, and refuses a
/// request for the cleartext password on a connection without TLS: that is
/// exactly what a man in the middle who stripped TLS would ask for, and
/// answering it hands over the password. (Over TLS, or once TLS starts, the
/// guard steps aside: the server is then the verified one.)
pub struct CleartextGuard<S> {
    inner: S,
    state: GuardState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GuardState {
    /// The one-byte answer to SSLRequest comes next.
    SslAnswer,
    /// Reading a message header: type, length and (for 'R') the auth code.
    Header {
        bytes: [u8; 9],
        have: usize,
    },
    /// Skipping the rest of a message body.
    Skip(usize),
    Off,
}

impl<S> CleartextGuard<S> {
    pub fn new(inner: S, ssl_requested: bool) -> Self {
        CleartextGuard {
            inner,
            state: if ssl_requested {
                GuardState::SslAnswer
            } else {
                GuardState::Header {
                    bytes: [0; 9],
                    have: 0,
                }
            },
        }
    }

    /// Feeds bytes read from the server; `Err` on a cleartext request.
    fn inspect(&mut self, data: &[u8]) -> std::io::Result<()> {
        let fresh = GuardState::Header {
            bytes: [0; 9],
            have: 0,
        };
        for &byte in data {
            self.state = match self.state {
                GuardState::Off => return Ok(()),
                GuardState::SslAnswer if byte == b'S' => GuardState::Off,
                GuardState::SslAnswer => fresh,
                GuardState::Skip(n) if n > 1 => GuardState::Skip(n - 1),
                GuardState::Skip(_) => fresh,
                GuardState::Header { mut bytes, have } => {
                    bytes[have] = byte;
                    let have = have + 1;
                    let len =
                        || u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                    match (bytes[0], have) {
                        (b'R', 9) => {
                            let code = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
                            match code {
                                3 => {
                                    return Err(std::io::Error::new(
                                        std::io::ErrorKind::PermissionDenied,
                                        "the server asked for the password in cleartext on a connection without TLS; refused (a server that does this is misconfigured, or someone is in the middle): use scram-sha-256 authentication, or TLS with \"ssl\": true",
                                    ));
                                }
                                0 => GuardState::Off,
                                _ if len() > 8 => GuardState::Skip(len() - 8),
                                _ => fresh,
                            }
                        }
                        (b'R', _) => GuardState::Header { bytes, have },
                        (_, 5) if len() > 4 => GuardState::Skip(len() - 4),
                        (_, 5) => fresh,
                        _ => GuardState::Header { bytes, have },
                    }
                }
            };
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CleartextGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if this.state != GuardState::Off => {
                let fresh = buf.filled()[before..].to_vec();
                if let Err(e) = this.inspect(&fresh) {
                    buf.set_filled(before);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CleartextGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A failed statement as Rotor's error: a lock or statement timeout set by
/// Rotor is a [`Error::Timeout`] (retryable; the server rolled it back).
fn database_error(
    endpoint: &str,
    action: &str,
    bound: Duration,
    e: tokio_postgres::Error,
) -> Error {
    match e.code() {
        Some(code)
            if *code == SqlState::LOCK_NOT_AVAILABLE || *code == SqlState::QUERY_CANCELED =>
        {
            Error::Timeout {
                endpoint: endpoint.to_string(),
                what: format!(
                    "{action} ({}; the server rolled it back)",
                    e.as_db_error().map_or("timed out", |d| d.message())
                ),
                after_ms: u64::try_from(deadline::server_limit(bound).as_millis())
                    .unwrap_or(u64::MAX),
            }
        }
        // Two invocations creating the same role at once (a step the
        // service retried while it still ran): the loser changed nothing.
        Some(code)
            if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::DUPLICATE_OBJECT =>
        {
            Error::Conflict {
                endpoint: endpoint.to_string(),
                what: format!(
                    "{action} ({})",
                    e.as_db_error().map_or("already exists", |d| d.message())
                ),
            }
        }
        _ => Error::Database {
            endpoint: endpoint.to_string(),
            action: action.to_string(),
            detail: e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string()),
        },
    }
}

/// A server-side timeout says how long the statement actually waited (the
/// limits are computed when it starts; the time left when it fails is less).
fn waited(e: Error, started: std::time::Instant) -> Error {
    match e {
        Error::Timeout { endpoint, what, .. } => Error::Timeout {
            endpoint,
            what,
            after_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
        other => other,
    }
}

/// Sorts a driver error into Rotor's kinds. Driver messages never contain the
/// password: it travels inside SCRAM messages, not text.
fn classify(e: tokio_postgres::Error, endpoint: &str, user: &str, which: Role) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return Error::LoginRefused {
                user: user.to_string(),
                endpoint: endpoint.to_string(),
                which,
                detail: db.message().to_string(),
            };
        }
        if *code == SqlState::TOO_MANY_CONNECTIONS || *code == SqlState::CANNOT_CONNECT_NOW {
            return Error::Unreachable {
                endpoint: endpoint.to_string(),
                detail: db.message().to_string(),
            };
        }
        return Error::Database {
            endpoint: endpoint.to_string(),
            action: format!("accept the {which} login"),
            detail: db.message().to_string(),
        };
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake") {
        Error::Tls {
            endpoint: endpoint.to_string(),
            detail,
        }
    } else {
        Error::Unreachable {
            endpoint: endpoint.to_string(),
            detail,
        }
    }
}

/// Wraps the rustls connector to learn whether the server accepted TLS
/// (tokio-postgres calls the connector only after the server says yes).
#[derive(Clone)]
struct TrackedTls {
    inner: MakeRustlsConnect,
    used: Arc<AtomicBool>,
}

impl<S> MakeTlsConnect<S> for TrackedTls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = TrackedConnect<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(
        &mut self,
        domain: &str,
    ) -> std::result::Result<Self::TlsConnect, Self::Error> {
        Ok(TrackedConnect {
            inner: self.inner.make_tls_connect(domain)?,
            used: self.used.clone(),
        })
    }
}

struct TrackedConnect<T> {
    inner: T,
    used: Arc<AtomicBool>,
}

impl<S, T: TlsConnect<S>> TlsConnect<S> for TrackedConnect<T> {
    type Stream = T::Stream;
    type Error = T::Error;
    type Future = T::Future;

    fn connect(self, stream: S) -> Self::Future {
        self.used.store(true, Ordering::SeqCst);
        self.inner.connect(stream)
    }
}

/// `ALTER ROLE <user> PASSWORD '<SCRAM verifier>'`: the plaintext never
/// enters SQL text.
pub fn alter_password_sql(user: &str, password: &SecretString) -> String {
    let verifier = postgres_protocol::password::scram_sha_256(password.expose().as_bytes());
    format!(
        "ALTER ROLE {} PASSWORD {}",
        escape_identifier(user),
        escape_literal(&verifier)
    )
}

/// Role attributes the clone mirrors from its user.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RoleAttributes {
    createdb: bool,
    createrole: bool,
    inherit: bool,
    replication: bool,
    bypassrls: bool,
    connlimit: i32,
    canlogin: bool,
}

/// The `pg_roles` columns [`RoleAttributes::from_row`] reads, in order.
const ROLE_ATTRIBUTE_COLUMNS: &str = "rolcreatedb, rolcreaterole, rolinherit, rolreplication, rolbypassrls, rolconnlimit, rolcanlogin";

impl RoleAttributes {
    /// The first columns of a row selected with [`ROLE_ATTRIBUTE_COLUMNS`].
    fn from_row(r: &tokio_postgres::Row) -> Self {
        RoleAttributes {
            createdb: r.get(0),
            createrole: r.get(1),
            inherit: r.get(2),
            replication: r.get(3),
            bypassrls: r.get(4),
            connlimit: r.get(5),
            canlogin: r.get(6),
        }
    }

    /// The `ALTER ROLE … WITH` options that make `self` look like `want`.
    fn diff(&self, want: &RoleAttributes) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |have: bool, want: bool, name: &str| {
            if have != want {
                out.push(if want {
                    name.to_string()
                } else {
                    format!("NO{name}")
                });
            }
        };
        flag(self.createdb, want.createdb, "CREATEDB");
        flag(self.createrole, want.createrole, "CREATEROLE");
        flag(self.inherit, want.inherit, "INHERIT");
        flag(self.replication, want.replication, "REPLICATION");
        flag(self.bypassrls, want.bypassrls, "BYPASSRLS");
        flag(self.canlogin, true, "LOGIN");
        if self.connlimit != want.connlimit {
            out.push(format!("CONNECTION LIMIT {}", want.connlimit));
        }
        out
    }
}

/// What makes a role superuser-like: cloning any of these would hand the
/// app secret's writer powers over other roles, the server or its files.
const SUPERUSER_LIKE_ROLES: &[&str] = &[
    "pg_execute_server_program",
    "pg_write_server_files",
    "pg_read_server_files",
    "rds_superuser",
    "rds_replication",
    "azure_pg_admin",
    "cloudsqlsuperuser",
];

/// The comment Rotor puts on a clone it made: `rotor:alternate-of:<base>`.
fn alternate_marker(base: &str) -> String {
    format!("rotor:alternate-of:{base}")
}

/// `(base, clone)` of a template/alternate pair, in either direction.
fn alternate_pair<'a>(template: &'a str, alternate: &'a str) -> Option<(&'a str, &'a str)> {
    if alternate.strip_suffix(CLONE_SUFFIX) == Some(template) {
        Some((template, alternate))
    } else if template.strip_suffix(CLONE_SUFFIX) == Some(alternate) {
        Some((alternate, template))
    } else {
        None
    }
}

/// An existing clone, as the catalogs show it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CloneState {
    attrs: RoleAttributes,
    superuser: bool,
    comment: Option<String>,
    /// It owns objects or holds privileges of its own somewhere
    /// (`pg_shdepend`, every database): not a bare alternate.
    has_own_objects_or_grants: bool,
    /// (group, with ADMIN OPTION).
    memberships: Vec<(String, bool)>,
    /// (database, or "" for every database; `name=value` as stored).
    settings: BTreeSet<(String, String)>,
}

/// What the clone of a base must look like.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WantedClone {
    attrs: RoleAttributes,
    settings: BTreeSet<(String, String)>,
}

/// One change to a clone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CloneChange {
    Sql(String),
    /// Copy one per-role setting of the base (`ALTER ROLE … SET … FROM CURRENT`).
    Setting {
        database: String,
        name: String,
        value: String,
    },
}

impl CloneChange {
    fn describe(&self) -> String {
        match self {
            CloneChange::Sql(sql) => sql.clone(),
            CloneChange::Setting { database, name, .. } if database.is_empty() => {
                format!("copy setting {name}")
            }
            CloneChange::Setting { database, name, .. } => {
                format!("copy setting {name} in database {database}")
            }
        }
    }
}

/// `ALTER ROLE clone [IN DATABASE db] SET name FROM CURRENT; RESET name`.
fn setting_sql(clone: &str, database: &str, name: &str) -> String {
    let name: Vec<String> = name.split('.').map(escape_identifier).collect();
    let name = name.join(".");
    let scope = if database.is_empty() {
        String::new()
    } else {
        format!(" IN DATABASE {}", escape_identifier(database))
    };
    format!(
        "ALTER ROLE {}{scope} SET {name} FROM CURRENT; RESET {name}",
        escape_identifier(clone)
    )
}

/// The clone is the base's alternate: it logs in, is a member of the base
/// and of nothing else, and starts every session as the base (`SET role`),
/// so it has exactly the base's privileges, NOINHERIT included, and what it
/// creates belongs to the base and stays usable after the next rotation. The
/// base is the user its owner manages; Rotor never changes it, only its
/// password.
///
/// Refused (the reason says what to do): a base with superuser-like powers
/// without the opt-in, and an existing clone Rotor did not make.
fn plan_alternate(
    base: &str,
    clone: &str,
    powers: &[String],
    have: Option<&CloneState>,
    want: &WantedClone,
    policy: ClonePolicy,
) -> std::result::Result<Vec<CloneChange>, String> {
    if !powers.is_empty() && !policy.allow_privileged {
        return Err(format!(
            "role {base:?} holds superuser-like powers ({}); Rotor will not make or keep an alternate with them for whoever can write the app secret. Use an unprivileged application user, or opt in with ROTOR_ALLOW_PRIVILEGED_CLONE=true on the function or \"rotor_allow_privileged_clone\": true in the master secret",
            powers.join(", ")
        ));
    }
    let ident = escape_identifier(clone);
    let base_ident = escape_identifier(base);
    let marker = alternate_marker(base);
    let mut plan = Vec::new();
    let (have_settings, settings_differ) = match have {
        None => {
            let fresh = RoleAttributes {
                createdb: false,
                createrole: false,
                inherit: true,
                replication: false,
                bypassrls: false,
                connlimit: -1,
                canlogin: true,
            };
            let options: String = fresh
                .diff(&want.attrs)
                .iter()
                .map(|o| format!(" {o}"))
                .collect();
            plan.push(CloneChange::Sql(format!(
                "CREATE ROLE {ident} WITH LOGIN INHERIT{options}"
            )));
            plan.push(CloneChange::Sql(format!("GRANT {base_ident} TO {ident}")));
            plan.push(CloneChange::Sql(format!(
                "COMMENT ON ROLE {ident} IS {}",
                escape_literal(&marker)
            )));
            (BTreeSet::new(), true)
        }
        Some(have) => {
            let member = have.memberships.iter().find(|(g, _)| g == base);
            // Membership alone (what AWS's function leaves) counts only for a
            // bare role: up to PostgreSQL 15 the base user may grant itself
            // to any role, so membership proves nothing about a role that
            // owns objects or holds grants of its own.
            let bare_member = member.is_some() && !have.has_own_objects_or_grants;
            if have.comment.as_deref() != Some(marker.as_str()) && !bare_member {
                return Err(format!(
                    "role {clone:?} exists but Rotor did not make it as the alternate of {base:?} (it has no comment {marker:?}, and is not a bare member of {base:?} that owns nothing and holds no grants of its own); Rotor never takes over a role it did not make. If it is this user's alternate, mark it with COMMENT ON ROLE {ident} IS {}; otherwise rename or drop it",
                    escape_literal(&marker)
                ));
            }
            if have.superuser && !policy.allow_privileged {
                return Err(format!(
                    "role {clone:?} is a superuser; Rotor will not hand out its password. Remove SUPERUSER from it or opt in with ROTOR_ALLOW_PRIVILEGED_CLONE=true"
                ));
            }
            let diff = have.attrs.diff(&want.attrs);
            if !diff.is_empty() {
                plan.push(CloneChange::Sql(format!(
                    "ALTER ROLE {ident} WITH {}",
                    diff.join(" ")
                )));
            }
            match member {
                None => plan.push(CloneChange::Sql(format!("GRANT {base_ident} TO {ident}"))),
                Some((_, true)) => plan.push(CloneChange::Sql(format!(
                    "REVOKE ADMIN OPTION FOR {base_ident} FROM {ident}"
                ))),
                Some((_, false)) => {}
            }
            for (group, _) in have.memberships.iter().filter(|(g, _)| g != base) {
                plan.push(CloneChange::Sql(format!(
                    "REVOKE {} FROM {ident}",
                    escape_identifier(group)
                )));
            }
            if have.comment.as_deref() != Some(marker.as_str()) {
                plan.push(CloneChange::Sql(format!(
                    "COMMENT ON ROLE {ident} IS {}",
                    escape_literal(&marker)
                )));
            }
            (have.settings.clone(), have.settings != want.settings)
        }
    };
    if settings_differ {
        let databases: BTreeSet<&str> = have_settings.iter().map(|(d, _)| d.as_str()).collect();
        for database in databases {
            plan.push(CloneChange::Sql(if database.is_empty() {
                format!("ALTER ROLE {ident} RESET ALL")
            } else {
                format!(
                    "ALTER ROLE {ident} IN DATABASE {} RESET ALL",
                    escape_identifier(database)
                )
            }));
        }
        for (database, entry) in &want.settings {
            let Some((name, value)) = entry.split_once('=') else {
                continue;
            };
            if database.is_empty() && name == "role" {
                plan.push(CloneChange::Sql(format!(
                    "ALTER ROLE {ident} SET role = {}",
                    escape_literal(value)
                )));
            } else {
                plan.push(CloneChange::Setting {
                    database: database.clone(),
                    name: name.to_string(),
                    value: value.to_string(),
                });
            }
        }
    }
    Ok(plan)
}

/// The 64-bit advisory lock key for a lock name: the first 8 bytes of its
/// SHA-256, so names Rotor uses do not land on keys an application picked
/// by counting from 1.
fn advisory_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("rotor:{name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Who holds ADMIN OPTION on the marker role (parameter: its name), other
/// than the logged-in master and superusers (PostgreSQL 15 manual,
/// `pg_auth_members.admin_option`).
const MARKER_ADMINS_SQL: &str = "SELECT u.rolname::text FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE m.roleid = (SELECT oid FROM pg_roles WHERE rolname = $1) AND m.admin_option AND u.rolname <> current_user AND NOT u.rolsuper ORDER BY 1";

struct PgSession {
    client: Client,
    endpoint: String,
    /// `ConnectOptions::lease_marker_admins`.
    marker_admins: Vec<String>,
}

/// What a dynamic user owns that would run or read with `owner_role`'s
/// rights once `REASSIGN OWNED` hands it over, and what it opened to
/// PUBLIC; one row per object: owner, what it is, how it goes.
///
/// - SECURITY DEFINER functions and procedures run as their owner, and
///   PUBLIC may execute functions by default: all of them go (a body is
///   opaque, so there is no telling what it reads).
/// - Views, materialized views and rules are checked with their owner's
///   rights: those over a table (or view) the user did not own go. Views
///   only over the user's own tables stay, handed over with them.
/// - Grants to PUBLIC on its tables, views, sequences and schemas are
///   revoked: they would remain, granted by `owner_role`.
const OWNER_ROLE_HAZARDS: &str = "
SELECT o.rolname::text, 'revoke', 'PUBLIC grant on ' || c.oid::regclass::text,
       format('REVOKE ALL ON TABLE %s FROM PUBLIC', c.oid::regclass)
  FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner
 WHERE o.rolname = ANY($1) AND EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0)
UNION ALL
SELECT o.rolname::text, 'revoke', 'PUBLIC grant on schema ' || quote_ident(n.nspname),
       format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', n.nspname)
  FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
 WHERE o.rolname = ANY($1) AND EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0)
UNION ALL
SELECT DISTINCT o.rolname::text,
       CASE WHEN r.rulename = '_RETURN' THEN c.relkind::text ELSE 'rule' END,
       CASE WHEN r.rulename <> '_RETURN' THEN 'rule ' || quote_ident(r.rulename) || ' on ' || c.oid::regclass::text
            WHEN c.relkind = 'm' THEN 'materialized view ' || c.oid::regclass::text
            ELSE 'view ' || c.oid::regclass::text END,
       CASE WHEN r.rulename <> '_RETURN' THEN format('DROP RULE %I ON %s', r.rulename, c.oid::regclass)
            ELSE c.oid::regclass::text END
  FROM pg_rewrite r
  JOIN pg_class c ON c.oid = r.ev_class
  JOIN pg_roles o ON o.oid = c.relowner
  JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                  AND d.refclassid = 'pg_class'::regclass
  JOIN pg_class ref ON ref.oid = d.refobjid
 WHERE o.rolname = ANY($1) AND ref.relowner <> c.relowner
UNION ALL
SELECT o.rolname::text, 'routine', CASE p.prokind WHEN 'p' THEN 'security definer procedure ' ELSE 'security definer function ' END || p.oid::regprocedure::text,
       p.oid::regprocedure::text
  FROM pg_proc p JOIN pg_roles o ON o.oid = p.proowner
 WHERE o.rolname = ANY($1) AND p.prosecdef";

/// One object found by [`OWNER_ROLE_HAZARDS`].
struct Hazard {
    owner: String,
    /// `revoke`, `rule`, `v` (view), `m` (materialized view), `routine`.
    kind: String,
    what: String,
    /// The statement, or for views and routines the name to drop.
    target: String,
}

/// The statements that remove `hazards`, in an order that respects their
/// dependencies: grants first, then rules, views, materialized views and
/// routines; each kind in one statement, so objects of the same kind that
/// depend on each other go together. Anything else depending on them makes
/// the drop fail (RESTRICT), and nothing changes.
fn hazard_statements(hazards: &[Hazard]) -> Vec<String> {
    let of = |kind: &str| -> Vec<&str> {
        hazards
            .iter()
            .filter(|h| h.kind == kind)
            .map(|h| h.target.as_str())
            .collect()
    };
    let mut out: Vec<String> = of("revoke").into_iter().map(str::to_string).collect();
    out.extend(of("rule").into_iter().map(str::to_string));
    for (kind, drop) in [
        ("v", "DROP VIEW"),
        ("m", "DROP MATERIALIZED VIEW"),
        ("routine", "DROP ROUTINE"),
    ] {
        let names = of(kind);
        if !names.is_empty() {
            out.push(format!("{drop} {}", names.join(", ")));
        }
    }
    out
}

/// The evidence for one user: what of its objects went, what grants were revoked.
fn hazard_report(user: &str, hazards: &[Hazard]) -> DropReport {
    let mine = |revoke: bool| -> Vec<String> {
        hazards
            .iter()
            .filter(|h| h.owner == user && (h.kind == "revoke") == revoke)
            .map(|h| h.what.clone())
            .collect()
    };
    DropReport {
        objects_dropped: mine(false),
        public_grants_revoked: mine(true),
        ..DropReport::default()
    }
}

/// What a failed drop was doing, naming the objects it had to remove first
/// (so the operator can deal with them: usually something else depends on
/// one of them).
fn hazard_action(action: &str, hazards: &[Hazard]) -> String {
    if hazards.is_empty() {
        return action.to_string();
    }
    let what: Vec<&str> = hazards.iter().map(|h| h.what.as_str()).collect();
    format!(
        "{action} after removing what would run with owner_role's rights ({}); nothing was changed: drop or re-own those objects by hand (something else may depend on them), then revoke again",
        what.join(", ")
    )
}

/// SQL: whether the role `r` directly holds the lease marker named by `$2`.
const HOLDS_MARKER: &str = "EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid AND g.rolname = $2)";

impl PgSession {
    /// Which of `users` exist, each with whether it carries the lease marker.
    async fn existing_with_marker(&self, users: &[String]) -> Result<Vec<(String, bool)>> {
        let sql = format!(
            "SELECT r.rolname::text, {HOLDS_MARKER} FROM pg_roles r WHERE r.rolname = ANY($1)"
        );
        Ok(self
            .client
            .query(&sql, &[&users, &LEASE_MARKER])
            .await
            .map_err(self.db_error("list the users to drop"))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// What `users` own that must not be handed to `owner_role` as it is.
    async fn owner_role_hazards(&self, users: &[String]) -> Result<Vec<Hazard>> {
        Ok(self
            .client
            .query(OWNER_ROLE_HAZARDS, &[&users])
            .await
            .map_err(
                self.db_error("list what the users own that would run with owner_role's rights"),
            )?
            .into_iter()
            .map(|r| Hazard {
                owner: r.get(0),
                kind: r.get(1),
                what: r.get(2),
                target: r.get(3),
            })
            .collect())
    }

    fn not_a_lease(&self, user: &str) -> Error {
        Error::Refused {
            endpoint: self.endpoint.clone(),
            reason: format!(
                "{user:?} is not a dynamic user Rotor created (it does not hold the {LEASE_MARKER} marker role); Rotor drops only its own users: drop it by hand if it must go"
            ),
        }
    }

    /// Makes sure the marker role exists and confers nothing: it must not
    /// log in, be a superuser or be a member of anything, since every
    /// dynamic user inherits from it.
    async fn ensure_lease_marker(&self) -> Result<()> {
        let unsafe_marker: Option<bool> = self
            .client
            .query_opt(
                "SELECT rolcanlogin OR rolsuper OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = $1",
                &[&LEASE_MARKER],
            )
            .await
            .map_err(self.db_error(format!("look up the lease marker role {LEASE_MARKER}")))?
            .map(|r| r.get(0));
        match unsafe_marker {
            Some(false) => self.check_marker_admins().await,
            Some(true) => Err(Error::Refused {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "the lease marker role {LEASE_MARKER} can log in, is a superuser or belongs to other roles, and every dynamic user would inherit that; make it NOLOGIN NOSUPERUSER and revoke its memberships"
                ),
            }),
            None => match self
                .client
                .batch_execute(&format!(
                    "CREATE ROLE {} NOLOGIN",
                    escape_identifier(LEASE_MARKER)
                ))
                .await
            {
                Ok(()) => Ok(()),
                // Another issue created it meanwhile.
                Err(e)
                    if e.code() == Some(&SqlState::DUPLICATE_OBJECT)
                        || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
                {
                    Ok(())
                }
                Err(e) => Err(self.db_error(format!(
                    "create the lease marker role {LEASE_MARKER} (the master needs CREATEROLE)"
                ))(e)),
            },
        }
    }

    /// Refuses while a login other than this master, a superuser or a
    /// trusted master holds ADMIN OPTION on the marker (PostgreSQL 16+
    /// gives it to whoever creates the role; anyone may be granted it):
    /// such a login could mark any user as a lease.
    async fn check_marker_admins(&self) -> Result<()> {
        let holders: Vec<(String, String)> = self
            .client
            .query(MARKER_ADMINS_SQL, &[&LEASE_MARKER])
            .await
            .map_err(self.db_error(format!(
                "list who holds ADMIN OPTION on the lease marker role {LEASE_MARKER}"
            )))?
            .iter()
            .map(|r| {
                let user: String = r.get(0);
                (user.clone(), user)
            })
            .collect();
        let untrusted = crate::engine::untrusted_marker_admins(holders, &self.marker_admins);
        if untrusted.is_empty() {
            Ok(())
        } else {
            Err(crate::engine::marker_admin_refusal(
                &self.endpoint,
                &untrusted,
            ))
        }
    }

    /// Drops a batch of users in one transaction (see `drop_users`).
    async fn drop_batch(
        &mut self,
        users: &[String],
        owner_role: Option<&str>,
    ) -> Result<Vec<(String, Result<DropReport>)>> {
        let found = self.existing_with_marker(users).await?;
        let existing: Vec<String> = found
            .iter()
            .filter(|(_, marked)| *marked)
            .map(|(u, _)| u.clone())
            .collect();
        let unmarked: Vec<&String> = found
            .iter()
            .filter(|(_, marked)| !*marked)
            .map(|(u, _)| u)
            .collect();
        let mut ended: std::collections::HashMap<String, u64> = Default::default();
        let mut hazards: Vec<Hazard> = Vec::new();
        if !existing.is_empty() {
            let idents: Vec<String> = existing.iter().map(|u| escape_identifier(u)).collect();
            let lock: String = idents
                .iter()
                .map(|i| format!("ALTER ROLE {i} NOLOGIN;"))
                .collect();
            self.client
                .batch_execute(&lock)
                .await
                .map_err(self.db_error("lock the users to drop"))?;
            for row in self
                .client
                .query(
                    "SELECT usename::text, count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = ANY($1) AND pid <> pg_backend_pid() GROUP BY usename",
                    &[&existing],
                )
                .await
                .map_err(self.db_error("end the sessions of the users to drop"))?
            {
                ended.insert(row.get(0), row.get::<_, i64>(1).max(0) as u64);
            }
            let list = idents.join(", ");
            let mut sql = String::from("BEGIN;");
            if let Some(owner) = owner_role {
                // The users can no longer log in: what they own is final.
                hazards = self.owner_role_hazards(&existing).await?;
                for statement in hazard_statements(&hazards) {
                    sql.push_str(&statement);
                    sql.push(';');
                }
                sql.push_str(&format!(
                    "REASSIGN OWNED BY {list} TO {}; DROP OWNED BY {list};",
                    escape_identifier(owner)
                ));
            }
            sql.push_str(&format!("DROP ROLE IF EXISTS {list}; COMMIT;"));
            if let Err(e) = self.client.batch_execute(&sql).await {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(self
                    .db_error(hazard_action("drop a batch of users", &hazards))(
                    e
                ));
            }
        }
        Ok(users
            .iter()
            .map(|u| {
                if unmarked.contains(&u) {
                    return (u.clone(), Err(self.not_a_lease(u)));
                }
                let existed = existing.contains(u);
                (
                    u.clone(),
                    Ok(DropReport {
                        existed,
                        sessions_ended: ended.get(u).copied().unwrap_or(0),
                        objects_reassigned: existed && owner_role.is_some(),
                        ..hazard_report(u, &hazards)
                    }),
                )
            })
            .collect())
    }

    fn db_error(&self, action: impl Into<String>) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        let action = action.into();
        move |e| database_error(&self.endpoint, &action, statement_bound(), e)
    }

    /// Runs statements that change something, after the session's
    /// server-side time limits (same round trip), within the client bound.
    async fn change(&self, action: &str, sql: &str) -> Result<()> {
        let bound = statement_bound();
        let text = format!("{}{sql}", limits_sql(bound));
        let started = std::time::Instant::now();
        deadline::bounded(&self.endpoint, action, bound, async {
            fault::call(&self.endpoint, action, async {
                self.client
                    .batch_execute(&text)
                    .await
                    .map_err(|e| waited(self.db_error(action)(e), started))
            })
            .await
        })
        .await
    }

    async fn attributes(&self, user: &str) -> Result<Option<RoleAttributes>> {
        fault::point(&self.endpoint, "read role attributes").await?;
        let row = self
            .client
            .query_opt(
                &format!("SELECT {ROLE_ATTRIBUTE_COLUMNS} FROM pg_roles WHERE rolname = $1"),
                &[&user],
            )
            .await
            .map_err(self.db_error(format!("read the attributes of role {user:?}")))?;
        Ok(row.as_ref().map(RoleAttributes::from_row))
    }

    async fn align_alternate(
        &mut self,
        template: &str,
        alternate: &str,
        password: &SecretString,
        policy: ClonePolicy,
        bound: Duration,
    ) -> Result<AlternateSync> {
        let (base, clone) = alternate_pair(template, alternate).ok_or_else(|| Error::Refused {
            endpoint: self.endpoint.clone(),
            reason: format!(
                "{alternate:?} is not the alternate of {template:?} (one must be the other plus \"{CLONE_SUFFIX}\")"
            ),
        })?;
        let powers = self.powers(base).await?.ok_or_else(|| Error::Database {
            endpoint: self.endpoint.clone(),
            action: format!("find role {base:?}"),
            detail: "the rotated user does not exist on this server; check the secret's host and username".into(),
        })?;
        let have = self.clone_state(clone).await?;
        let want = self.wanted_clone(base).await?;
        let plan = plan_alternate(base, clone, &powers, have.as_ref(), &want, policy).map_err(
            |reason| Error::Refused {
                endpoint: self.endpoint.clone(),
                reason,
            },
        )?;
        if plan.is_empty() {
            return Ok(AlternateSync::default());
        }
        let created = have.is_none();
        let endpoint = self.endpoint.clone();
        let fail = |action: String| {
            let endpoint = endpoint.clone();
            move |e: tokio_postgres::Error| database_error(&endpoint, &action, bound, e)
        };
        // One transaction: the clone never exists half-made or without its
        // password, and a refusal half-way changes nothing.
        // Inside the transaction an answer lost after a statement ends like
        // a failure before it: the dropped connection rolls everything back.
        fault::point(&endpoint, "begin a transaction").await?;
        let tx = self
            .client
            .transaction()
            .await
            .map_err(fail("begin a transaction".into()))?;
        fault::point(&endpoint, "set time limits").await?;
        tx.batch_execute(&limits_sql(bound))
            .await
            .map_err(fail("set time limits".into()))?;
        for change in &plan {
            match change {
                CloneChange::Sql(sql) => {
                    fault::point(&endpoint, sql).await?;
                    tx.batch_execute(sql)
                        .await
                        .map_err(fail(format!("run {sql:?}")))?;
                }
                CloneChange::Setting {
                    database,
                    name,
                    value,
                } => {
                    // set_config parses the stored text exactly as the server
                    // wrote it (lists included); FROM CURRENT then stores it
                    // for the clone without Rotor ever quoting a value.
                    fault::point(&endpoint, "set_config").await?;
                    tx.query("SELECT set_config($1, $2, true)", &[name, value])
                        .await
                        .map_err(fail(format!(
                            "copy setting {name:?} of {base:?} to {clone:?} (set it on {clone:?} by hand if this login may not)"
                        )))?;
                    fault::point(&endpoint, "ALTER ROLE … SET … FROM CURRENT").await?;
                    tx.batch_execute(&setting_sql(clone, database, name))
                        .await
                        .map_err(fail(format!("store setting {name:?} for {clone:?}")))?;
                }
            }
        }
        if created {
            fault::point(&endpoint, "set the password of the new clone").await?;
            tx.batch_execute(&alter_password_sql(clone, password))
                .await
                .map_err(fail(format!("set the password of new role {clone:?}")))?;
        }
        fault::call(&endpoint, "COMMIT", async {
            tx.commit().await.map_err(fail("commit".into()))
        })
        .await?;
        Ok(AlternateSync {
            created,
            changes: plan.iter().map(CloneChange::describe).collect(),
        })
    }

    /// Whether `user`'s stored SCRAM verifier was made from `password`;
    /// `None` when this login may not read it or it is not SCRAM.
    async fn stored_verifier_matches(
        &self,
        user: &str,
        password: &SecretString,
    ) -> Result<Option<bool>> {
        // Ask first: reading pg_authid without the privilege would put an
        // ERROR in the server log on every rotation (RDS masters lack it).
        fault::point(&self.endpoint, "may it read pg_authid").await?;
        let readable: bool = self
            .client
            .query_one(
                "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(false);
        if !readable {
            return Ok(None);
        }
        fault::point(&self.endpoint, "read pg_authid").await?;
        match self
            .client
            .query_opt(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&user],
            )
            .await
        {
            Ok(None) => Ok(Some(false)),
            Ok(Some(row)) => {
                let stored: Option<String> = row.get(0);
                Ok(match stored {
                    None => Some(false),
                    Some(v) if v.starts_with("SCRAM-SHA-256$") => {
                        Some(scram_verifier_matches(&v, password.expose()))
                    }
                    // md5 or other formats: let the caller try a login instead.
                    Some(_) => None,
                })
            }
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(None),
            Err(e) => Err(self.db_error("read pg_authid")(e)),
        }
    }

    /// Superuser-like powers `user` holds directly or through any role it
    /// is a member of; `None` when the role does not exist.
    async fn powers(&self, user: &str) -> Result<Option<Vec<String>>> {
        fault::point(&self.endpoint, "read role powers").await?;
        let rows = self
            .client
            .query(
                "WITH RECURSIVE closure(oid) AS (SELECT oid FROM pg_roles WHERE rolname = $1 UNION SELECT a.roleid FROM pg_auth_members a JOIN closure c ON a.member = c.oid) \
                 SELECT r.rolname::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls, \
                        EXISTS (SELECT 1 FROM pg_auth_members a WHERE a.member = r.oid AND a.admin_option) \
                 FROM closure c JOIN pg_roles r ON r.oid = c.oid",
                &[&user],
            )
            .await
            .map_err(self.db_error(format!("read the powers of role {user:?}")))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut powers = Vec::new();
        for row in rows {
            let name: String = row.get(0);
            let via = if name == user {
                String::new()
            } else {
                format!(" via {name:?}")
            };
            for (i, power) in [
                (1, "SUPERUSER"),
                (2, "CREATEROLE"),
                (3, "CREATEDB"),
                (4, "REPLICATION"),
                (5, "BYPASSRLS"),
                (6, "ADMIN OPTION on a membership"),
            ] {
                if row.get::<_, bool>(i) {
                    powers.push(format!("{power}{via}"));
                }
            }
            if SUPERUSER_LIKE_ROLES.contains(&name.as_str()) {
                powers.push(format!("membership in {name}"));
            }
        }
        Ok(Some(powers))
    }

    /// Per-role settings: (database or "", `name=value`).
    async fn settings(&self, user: &str) -> Result<BTreeSet<(String, String)>> {
        fault::point(&self.endpoint, "read role settings").await?;
        let rows = self
            .client
            .query(
                "SELECT coalesce(d.datname::text, ''), unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole LEFT JOIN pg_database d ON d.oid = s.setdatabase WHERE r.rolname = $1",
                &[&user],
            )
            .await
            .map_err(self.db_error(format!("read the settings of role {user:?}")))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The clone as it is, or `None` when it does not exist.
    async fn clone_state(&self, clone: &str) -> Result<Option<CloneState>> {
        fault::point(&self.endpoint, "read the clone").await?;
        let row = self
            .client
            .query_opt(
                &format!("SELECT {ROLE_ATTRIBUTE_COLUMNS}, rolsuper, shobj_description(oid, 'pg_authid'), EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = pg_roles.oid) FROM pg_roles WHERE rolname = $1"),
                &[&clone],
            )
            .await
            .map_err(self.db_error(format!("read role {clone:?}")))?;
        let Some(r) = row else {
            return Ok(None);
        };
        fault::point(&self.endpoint, "read the clone's memberships").await?;
        let memberships = self
            .client
            .query(
                "SELECT g.rolname::text, m.admin_option FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1",
                &[&clone],
            )
            .await
            .map_err(self.db_error(format!("read the memberships of role {clone:?}")))?
            .into_iter()
            .map(|m| (m.get(0), m.get(1)))
            .collect();
        Ok(Some(CloneState {
            attrs: RoleAttributes::from_row(&r),
            superuser: r.get(7),
            comment: r.get(8),
            has_own_objects_or_grants: r.get(9),
            memberships,
            settings: self.settings(clone).await?,
        }))
    }

    /// What the clone of `base` must look like: the base's connection limit
    /// (and, when opted in, its attributes), INHERIT and LOGIN, the base's
    /// settings, and `role = <base>`.
    async fn wanted_clone(&self, base: &str) -> Result<WantedClone> {
        let attrs = self.attributes(base).await?.ok_or_else(|| Error::Database {
            endpoint: self.endpoint.clone(),
            action: format!("find role {base:?}"),
            detail: "the rotated user does not exist on this server; check the secret's host and username".into(),
        })?;
        let mut settings: BTreeSet<(String, String)> = self
            .settings(base)
            .await?
            .into_iter()
            .filter(|(db, entry)| !(db.is_empty() && entry.starts_with("role=")))
            .collect();
        settings.insert((String::new(), format!("role={base}")));
        Ok(WantedClone {
            attrs: RoleAttributes {
                inherit: true,
                canlogin: true,
                ..attrs
            },
            settings,
        })
    }
}

#[async_trait]
impl Session for PgSession {
    async fn check(&mut self) -> Result<()> {
        deadline::bounded(&self.endpoint, "SELECT 1", statement_bound(), async {
            fault::point(&self.endpoint, "SELECT 1").await?;
            self.client
                .simple_query("SELECT 1")
                .await
                .map_err(self.db_error("run SELECT 1"))
        })
        .await?;
        Ok(())
    }

    async fn set_own_password(&mut self, user: &str, password: &SecretString) -> Result<()> {
        self.set_password(user, password).await
    }

    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<()> {
        self.change(
            &format!("set the password of role {user:?}"),
            &alter_password_sql(user, password),
        )
        .await
    }

    async fn password_matches(
        &mut self,
        user: &str,
        password: &SecretString,
    ) -> Result<Option<bool>> {
        let endpoint = self.endpoint.clone();
        deadline::bounded(
            &endpoint,
            "reading the stored password verifier",
            statement_bound(),
            self.stored_verifier_matches(user, password),
        )
        .await
    }

    async fn sync_alternate_user(
        &mut self,
        template: &str,
        alternate: &str,
        password: &SecretString,
        policy: ClonePolicy,
    ) -> Result<AlternateSync> {
        let endpoint = self.endpoint.clone();
        let bound = statement_bound();
        let what = format!("aligning {alternate:?} with {template:?}");
        deadline::bounded(
            &endpoint,
            &what,
            bound,
            self.align_alternate(template, alternate, password, policy, bound),
        )
        .await
    }

    async fn create_dynamic_user(&mut self, user: &DynamicUser) -> Result<()> {
        let verifier =
            postgres_protocol::password::scram_sha_256(user.password.expose().as_bytes());
        let mut sql = format!(
            "CREATE ROLE {} WITH LOGIN INHERIT PASSWORD {} VALID UNTIL {}",
            escape_identifier(&user.username),
            escape_literal(&verifier),
            escape_literal(&crate::time::rfc3339(user.expires_at)),
        );
        if let Some(limit) = user.max_connections {
            sql.push_str(&format!(" CONNECTION LIMIT {limit}"));
        }
        // The marker is granted in the same statement: the user never
        // exists unmarked.
        let groups: Vec<String> = std::iter::once(LEASE_MARKER)
            .chain(user.member_of.iter().map(String::as_str))
            .map(escape_identifier)
            .collect();
        sql.push_str(&format!(" IN ROLE {}", groups.join(", ")));
        // The master joins the new role so that it may later REASSIGN and
        // DROP what the user owns (PostgreSQL requires membership in both).
        self.ensure_lease_marker().await?;
        let sql = format!(
            "BEGIN; {sql}; GRANT {} TO CURRENT_USER; COMMIT;",
            escape_identifier(&user.username)
        );
        if let Err(e) = self.client.batch_execute(&sql).await {
            let _ = self.client.batch_execute("ROLLBACK").await;
            return Err(self
                .db_error(format!("create dynamic user {:?}", user.username))(
                e
            ));
        }
        Ok(())
    }

    async fn acquire_lock(&mut self, name: &str, wait: Duration) -> Result<()> {
        // The lock's wait is bounded on the server (lock_timeout, set for
        // this statement after the session's limits) and by the client.
        let wait_ms = deadline::server_limit(wait).as_millis().max(1);
        let sql = format!(
            "{}SET lock_timeout = {wait_ms}; SELECT pg_advisory_lock({}); SET lock_timeout = {};",
            limits_sql(statement_bound()),
            advisory_key(name),
            deadline::server_limit(statement_bound()).as_millis()
        );
        let action = format!("wait for the lock {name:?}");
        let started = std::time::Instant::now();
        deadline::bounded(&self.endpoint, &action, wait, async {
            self.client
                .batch_execute(&sql)
                .await
                .map_err(|e| waited(self.db_error(action.clone())(e), started))
        })
        .await
    }

    async fn release_lock(&mut self, name: &str) -> Result<()> {
        self.change(
            &format!("release the lock {name:?}"),
            &format!("SELECT pg_advisory_unlock({})", advisory_key(name)),
        )
        .await
    }

    async fn role_exists(&mut self, name: &str) -> Result<Option<bool>> {
        let row = self
            .client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map_err(self.db_error("look up the owner role"))?;
        Ok(Some(row.is_some()))
    }

    async fn users_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT r.rolname::text FROM pg_roles r WHERE starts_with(r.rolname, $1) AND {HOLDS_MARKER} ORDER BY 1"
        );
        let rows = self
            .client
            .query(&sql, &[&prefix, &LEASE_MARKER])
            .await
            .map_err(self.db_error("list dynamic users"))?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    async fn end_sessions(&mut self, user: &str, before: Option<f64>) -> Result<u64> {
        let row = self
            .client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid() AND ($2::float8 IS NULL OR backend_start < to_timestamp($2::float8))",
                &[&user, &before],
            )
            .await
            .map_err(self.db_error(format!("end the sessions of {user:?}")))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn drop_users(
        &mut self,
        users: &[String],
        owner_role: Option<&str>,
    ) -> Vec<(String, Result<DropReport>)> {
        let mut out = Vec::with_capacity(users.len());
        // Batches: one catalog pass per statement instead of one per user.
        for chunk in users.chunks(100) {
            match self.drop_batch(chunk, owner_role).await {
                Ok(results) => out.extend(results),
                Err(e) => {
                    tracing::warn!(error = %e, "batch drop failed; dropping one by one");
                    for user in chunk {
                        out.push((user.clone(), self.drop_user(user, owner_role).await));
                    }
                }
            }
        }
        out
    }

    async fn drop_user(&mut self, user: &str, owner_role: Option<&str>) -> Result<DropReport> {
        match self
            .existing_with_marker(&[user.to_string()])
            .await?
            .first()
        {
            None => return Ok(DropReport::default()),
            Some((_, false)) => return Err(self.not_a_lease(user)),
            Some((_, true)) => {}
        }
        let ident = escape_identifier(user);
        // No new logins while the sessions end and the role goes.
        self.client
            .batch_execute(&format!("ALTER ROLE {ident} NOLOGIN"))
            .await
            .map_err(self.db_error(format!("lock {user:?}")))?;
        let sessions_ended = self.end_sessions(user, None).await?;
        let mut sql = String::from("BEGIN;");
        let mut hazards = Vec::new();
        if let Some(owner) = owner_role {
            hazards = self.owner_role_hazards(&[user.to_string()]).await?;
            for statement in hazard_statements(&hazards) {
                sql.push_str(&statement);
                sql.push(';');
            }
            sql.push_str(&format!(
                "REASSIGN OWNED BY {ident} TO {}; DROP OWNED BY {ident};",
                escape_identifier(owner)
            ));
        }
        sql.push_str(&format!("DROP ROLE IF EXISTS {ident}; COMMIT;"));
        if let Err(e) = self.client.batch_execute(&sql).await {
            let _ = self.client.batch_execute("ROLLBACK").await;
            let action = if owner_role.is_none() {
                format!("drop {user:?} (it may own objects: set owner_role on its role)")
            } else {
                hazard_action(&format!("drop {user:?}"), &hazards)
            };
            return Err(self.db_error(action)(e));
        }
        Ok(DropReport {
            existed: true,
            sessions_ended,
            objects_reassigned: owner_role.is_some(),
            ..hazard_report(user, &hazards)
        })
    }
}

/// Whether a stored `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey` verifier
/// was made from `password` (RFC 5802/7677, with SASLprep as PostgreSQL does).
pub fn scram_verifier_matches(verifier: &str, password: &str) -> bool {
    let parse = || -> Option<bool> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored_key, _server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b64.decode(salt).ok()?;
        let stored_key = b64.decode(stored_key).ok()?;
        let prepared = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.as_bytes().to_vec(),
        };
        let salted = pbkdf2_sha256(&prepared, &salt, iterations)?;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&salted).ok()?;
        mac.update(b"Client Key");
        let client_key = mac.finalize().into_bytes();
        let computed = Sha256::digest(client_key);
        // Constant-time comparison.
        Some(
            computed.len() == stored_key.len()
                && computed
                    .iter()
                    .zip(&stored_key)
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0,
        )
    };
    parse().unwrap_or(false)
}

/// SCRAM's Hi(): PBKDF2-HMAC-SHA-256 with one output block.
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(password).ok()?;
    mac.update(salt);
    mac.update(&[0, 0, 0, 1]);
    let mut prev: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = prev;
    for _ in 1..iterations {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(password).ok()?;
        mac.update(&prev);
        prev = mac.finalize().into_bytes().into();
        out.iter_mut().zip(prev).for_each(|(o, p)| *o ^= p);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_round_trip() {
        let pw = SecretString::new("Tr0ub4dor&3 'quoted' \\ ünïcode");
        let v = postgres_protocol::password::scram_sha_256(pw.expose().as_bytes());
        assert!(scram_verifier_matches(&v, pw.expose()));
        assert!(!scram_verifier_matches(&v, "wrong"));
        assert!(!scram_verifier_matches("md5abc", pw.expose()));
        assert!(!scram_verifier_matches(
            "SCRAM-SHA-256$x:y$z:w",
            pw.expose()
        ));
    }

    #[test]
    fn alter_sql_carries_a_verifier_not_the_password() {
        let pw = SecretString::new("s3cr3t-'\"-p@ss");
        let sql = alter_password_sql("we\"ird User", &pw);
        assert!(sql.starts_with("ALTER ROLE \"we\"\"ird User\" PASSWORD 'SCRAM-SHA-256$4096:"));
        assert!(!sql.contains(pw.expose()));
    }

    fn plain() -> RoleAttributes {
        RoleAttributes {
            createdb: false,
            createrole: false,
            inherit: true,
            replication: false,
            bypassrls: false,
            connlimit: -1,
            canlogin: true,
        }
    }

    fn want(settings: &[(&str, &str)]) -> WantedClone {
        WantedClone {
            attrs: plain(),
            settings: settings
                .iter()
                .map(|(d, e)| (d.to_string(), e.to_string()))
                .collect(),
        }
    }

    fn sql(plan: &[CloneChange]) -> Vec<String> {
        plan.iter().map(CloneChange::describe).collect()
    }

    #[test]
    fn a_new_clone_acts_as_its_user_and_is_marked() {
        let plan = plan_alternate(
            "app",
            "app_clone",
            &[],
            None,
            &want(&[("", "role=app"), ("", "search_path=a, b")]),
            ClonePolicy::default(),
        )
        .unwrap();
        assert_eq!(
            sql(&plan),
            [
                "CREATE ROLE \"app_clone\" WITH LOGIN INHERIT",
                "GRANT \"app\" TO \"app_clone\"",
                "COMMENT ON ROLE \"app_clone\" IS 'rotor:alternate-of:app'",
                "ALTER ROLE \"app_clone\" SET role = 'app'",
                "copy setting search_path",
            ]
        );
    }

    #[test]
    fn superuser_like_powers_need_the_opt_in() {
        let powers = vec!["CREATEROLE".to_string()];
        let e = plan_alternate(
            "app",
            "app_clone",
            &powers,
            None,
            &want(&[]),
            ClonePolicy::default(),
        )
        .unwrap_err();
        assert!(
            e.contains("CREATEROLE") && e.contains("ROTOR_ALLOW_PRIVILEGED_CLONE"),
            "{e}"
        );
        let allowed = ClonePolicy {
            allow_privileged: true,
        };
        assert!(plan_alternate("app", "app_clone", &powers, None, &want(&[]), allowed).is_ok());
    }

    #[test]
    fn an_unmarked_clone_is_refused_and_a_marked_one_realigned() {
        let mut have = CloneState {
            attrs: RoleAttributes {
                createdb: true,
                ..plain()
            },
            superuser: false,
            comment: None,
            has_own_objects_or_grants: false,
            memberships: vec![("stray".into(), false)],
            settings: BTreeSet::new(),
        };
        let wanted = want(&[("", "role=app")]);
        let e = plan_alternate(
            "app",
            "app_clone",
            &[],
            Some(&have),
            &wanted,
            ClonePolicy::default(),
        )
        .unwrap_err();
        assert!(e.contains("did not make"), "{e}");
        // AWS's clones are members of the user: accepted, then marked…
        have.memberships.push(("app".into(), true));
        // …unless they own objects or hold grants of their own (the base user
        // may grant itself to any role up to PostgreSQL 15).
        let mut owner = have.clone();
        owner.has_own_objects_or_grants = true;
        let e = plan_alternate(
            "app",
            "app_clone",
            &[],
            Some(&owner),
            &wanted,
            ClonePolicy::default(),
        )
        .unwrap_err();
        assert!(e.contains("owns nothing"), "{e}");
        let plan = plan_alternate(
            "app",
            "app_clone",
            &[],
            Some(&have),
            &wanted,
            ClonePolicy::default(),
        )
        .unwrap();
        assert_eq!(
            sql(&plan),
            [
                "ALTER ROLE \"app_clone\" WITH NOCREATEDB",
                "REVOKE ADMIN OPTION FOR \"app\" FROM \"app_clone\"",
                "REVOKE \"stray\" FROM \"app_clone\"",
                "COMMENT ON ROLE \"app_clone\" IS 'rotor:alternate-of:app'",
                "ALTER ROLE \"app_clone\" SET role = 'app'",
            ]
        );
        // Aligned: nothing to do.
        let aligned = CloneState {
            attrs: plain(),
            superuser: false,
            comment: Some("rotor:alternate-of:app".into()),
            has_own_objects_or_grants: true,
            memberships: vec![("app".into(), false)],
            settings: wanted.settings.clone(),
        };
        assert!(
            plan_alternate(
                "app",
                "app_clone",
                &[],
                Some(&aligned),
                &wanted,
                ClonePolicy::default()
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn pairs_in_both_directions() {
        assert_eq!(
            alternate_pair("app", "app_clone"),
            Some(("app", "app_clone"))
        );
        assert_eq!(
            alternate_pair("app_clone", "app"),
            Some(("app", "app_clone"))
        );
        assert_eq!(alternate_pair("app", "dba"), None);
    }

    #[test]
    fn cleartext_request_refused_only_without_tls() {
        let cleartext = b"R\0\0\0\x08\0\0\0\x03";
        // No SSLRequest: the first message is the request.
        let mut guard = CleartextGuard::new((), false);
        assert!(guard.inspect(cleartext).is_err());
        // SSLRequest answered 'N', a notice first, the request split in two reads.
        let mut guard = CleartextGuard::new((), true);
        assert!(guard.inspect(b"NN\0\0\0\x06hi").is_ok());
        assert!(guard.inspect(&cleartext[..4]).is_ok());
        assert!(guard.inspect(&cleartext[4..]).is_err());
        // TLS accepted: the guard steps aside.
        let mut guard = CleartextGuard::new((), true);
        assert!(guard.inspect(b"S").is_ok());
        assert!(guard.inspect(cleartext).is_ok());
        // SCRAM then AuthenticationOk: the guard ends.
        let mut guard = CleartextGuard::new((), false);
        assert!(
            guard
                .inspect(b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0")
                .is_ok()
        );
        assert!(guard.inspect(b"R\0\0\0\x08\0\0\0\0").is_ok());
        assert!(guard.inspect(cleartext).is_ok());
    }

    #[test]
    fn owner_role_hazards_go_in_dependency_order() {
        let h = |kind: &str, target: &str| Hazard {
            owner: "v_a_1_abcdef".into(),
            kind: kind.into(),
            what: format!("{kind} {target}"),
            target: target.into(),
        };
        let hazards = [
            h("routine", "f()"),
            h("v", "v1"),
            h("revoke", "REVOKE ALL ON TABLE t FROM PUBLIC"),
            h("v", "v2"),
            h("m", "mv"),
            h("rule", "DROP RULE r ON t"),
        ];
        assert_eq!(
            hazard_statements(&hazards),
            [
                "REVOKE ALL ON TABLE t FROM PUBLIC",
                "DROP RULE r ON t",
                "DROP VIEW v1, v2",
                "DROP MATERIALIZED VIEW mv",
                "DROP ROUTINE f()",
            ]
        );
        let report = hazard_report("v_a_1_abcdef", &hazards);
        assert_eq!(report.public_grants_revoked.len(), 1);
        assert_eq!(report.objects_dropped.len(), 5);
        assert!(
            hazard_report("someone_else", &hazards)
                .objects_dropped
                .is_empty()
        );
        assert!(hazard_action("drop x", &hazards).contains("v v1"));
    }

    #[test]
    fn attribute_diff() {
        let base = RoleAttributes {
            createdb: false,
            createrole: false,
            inherit: true,
            replication: false,
            bypassrls: false,
            connlimit: -1,
            canlogin: true,
        };
        assert!(base.diff(&base).is_empty());
        let want = RoleAttributes {
            createdb: true,
            connlimit: 5,
            inherit: false,
            ..base.clone()
        };
        assert_eq!(
            base.diff(&want),
            ["CREATEDB", "NOINHERIT", "CONNECTION LIMIT 5"]
        );
    }
}
