//! MySQL, Aurora MySQL and MariaDB (mysql_async, rustls).
//!
//! The password statement depends on the server actually connected, decided
//! from `SELECT VERSION()`: MariaDB 10/11, MySQL 5.7, 8.x and 9.x each get the
//! right one (AWS's function only asks whether the version starts with "8").
//!
//! The plaintext stays out of SQL text wherever the server allows it:
//! MariaDB and `mysql_native_password` accounts get the hash computed here
//! (`'*' + HEX(SHA1(SHA1(password)))`). Only MySQL 8/9 accounts using
//! `caching_sha2_password` need the literal (`IDENTIFIED BY '…'`, escaped by
//! the driver's quoting rules): Rotor sends it only over TLS and refuses on a
//! plaintext connection. Account names are always quoted.

use std::sync::Arc;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use sha1::{Digest, Sha1};

use super::{
    AlternateSync, ClonePolicy, ConnectOptions, DropReport, DynamicUser, Engine, LEASE_MARKER,
    Role, Session, endpoint,
};
use crate::error::{Error, Result};
use crate::secret::{DbSecret, SecretString, TlsMode};

/// Which server answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    MySql,
    MariaDb,
}

/// A server version, from `SELECT VERSION()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    pub flavor: Flavor,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    /// Parses `8.0.36`, `5.7.44-log`, `9.1.0`, `10.11.6-MariaDB-0+deb12u1`,
    /// and the replication prefix `5.5.5-10.11.6-MariaDB`.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mariadb = text.to_ascii_lowercase().contains("mariadb");
        let text = if mariadb {
            text.strip_prefix("5.5.5-").unwrap_or(text)
        } else {
            text
        };
        let numbers: Vec<u32> = text
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .next()?
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        Some(ServerVersion {
            flavor: if mariadb {
                Flavor::MariaDb
            } else {
                Flavor::MySql
            },
            major: *numbers.first()?,
            minor: numbers.get(1).copied().unwrap_or(0),
            patch: numbers.get(2).copied().unwrap_or(0),
        })
    }

    /// Longest user name the server keeps.
    pub fn username_limit(&self) -> usize {
        match self.flavor {
            Flavor::MariaDb => 80,
            Flavor::MySql if (self.major, self.minor, self.patch) >= (5, 7, 8) => 32,
            Flavor::MySql => 16,
        }
    }

    /// Whether the server still speaks `SET PASSWORD … = '<hash>'` and
    /// `IDENTIFIED … AS '<hash>'` for native accounts.
    fn is_mysql8_or_later(&self) -> bool {
        self.flavor == Flavor::MySql && self.major >= 8
    }
}

/// `'*' + HEX(SHA1(SHA1(password)))`: the `mysql_native_password` hash.
pub fn native_password_hash(password: &str) -> String {
    let stage1 = Sha1::digest(password.as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut out = String::with_capacity(41);
    out.push('*');
    for b in stage2 {
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// Quotes one part of an account name: `` `na``me` ``.
pub fn quote_name(part: &str) -> String {
    format!("`{}`", part.replace('`', "``"))
}

/// `` `user`@`host` ``.
pub fn account(user: &str, host: &str) -> String {
    format!("{}@{}", quote_name(user), quote_name(host))
}

/// A string literal with MySQL's escaping (the driver's rules: backslash
/// and quote escaped), for the one statement that needs the plaintext.
fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// How a password statement carries the password.
#[derive(Debug, PartialEq, Eq)]
pub struct PasswordStatement {
    pub sql: String,
    /// The SQL contains the plaintext (only over TLS).
    pub carries_plaintext: bool,
}

/// The statement with which a user changes its own password.
pub fn own_password_statement(version: ServerVersion, password: &str) -> PasswordStatement {
    if version.is_mysql8_or_later() {
        PasswordStatement {
            sql: format!(
                "ALTER USER CURRENT_USER() IDENTIFIED BY {}",
                literal(password)
            ),
            carries_plaintext: true,
        }
    } else {
        PasswordStatement {
            sql: format!("SET PASSWORD = '{}'", native_password_hash(password)),
            carries_plaintext: false,
        }
    }
}

/// The statement with which an administrator sets `user@host`'s password;
/// `plugin` is the account's authentication plugin when known.
pub fn set_password_statement(
    version: ServerVersion,
    user: &str,
    host: &str,
    plugin: Option<&str>,
    password: &str,
) -> PasswordStatement {
    let who = account(user, host);
    let hash = native_password_hash(password);
    match version.flavor {
        Flavor::MariaDb => PasswordStatement {
            sql: format!("SET PASSWORD FOR {who} = '{hash}'"),
            carries_plaintext: false,
        },
        Flavor::MySql if !version.is_mysql8_or_later() => PasswordStatement {
            sql: format!("ALTER USER {who} IDENTIFIED WITH mysql_native_password AS '{hash}'"),
            carries_plaintext: false,
        },
        Flavor::MySql if plugin == Some("mysql_native_password") => PasswordStatement {
            sql: format!("ALTER USER {who} IDENTIFIED WITH mysql_native_password AS '{hash}'"),
            carries_plaintext: false,
        },
        Flavor::MySql => PasswordStatement {
            sql: format!("ALTER USER {who} IDENTIFIED BY {}", literal(password)),
            carries_plaintext: true,
        },
    }
}

/// The statement creating `user@host` with a password.
pub fn create_user_statement(
    version: ServerVersion,
    user: &str,
    host: &str,
    password: &str,
) -> PasswordStatement {
    let who = account(user, host);
    let hash = native_password_hash(password);
    match version.flavor {
        Flavor::MariaDb => PasswordStatement {
            sql: format!("CREATE USER {who} IDENTIFIED BY PASSWORD '{hash}'"),
            carries_plaintext: false,
        },
        Flavor::MySql if !version.is_mysql8_or_later() => PasswordStatement {
            sql: format!("CREATE USER {who} IDENTIFIED WITH mysql_native_password AS '{hash}'"),
            carries_plaintext: false,
        },
        Flavor::MySql => PasswordStatement {
            sql: format!("CREATE USER {who} IDENTIFIED BY {}", literal(password)),
            carries_plaintext: true,
        },
    }
}

/// Rewrites one `SHOW GRANTS` line of `from@host` as the same grant to
/// `to@host`. Keeps `WITH GRANT OPTION` / `WITH ADMIN OPTION`; drops the
/// password, REQUIRE and resource clauses (synced separately). `None` for
/// lines with nothing to replay (USAGE, PROXY) or not about `from@host`.
pub fn replay_grant(line: &str, from: &str, host: &str, to: &str) -> Option<String> {
    let candidates = [
        format!(" TO {}", account(from, host)),
        format!(
            " TO '{}'@'{}'",
            from.replace('\'', "\\'"),
            host.replace('\'', "\\'")
        ),
        format!(" TO {from}@{host}"),
    ];
    let (prefix, suffix) = candidates.iter().find_map(|grantee| {
        line.find(grantee.as_str())
            .map(|i| (&line[..i], &line[i + grantee.len()..]))
    })?;
    let upper = prefix.to_ascii_uppercase();
    if upper.starts_with("GRANT USAGE ON *.*") || upper.starts_with("GRANT PROXY ON") {
        return None;
    }
    let suffix_upper = suffix.to_ascii_uppercase();
    let option = if suffix_upper.contains("WITH GRANT OPTION") {
        " WITH GRANT OPTION"
    } else if suffix_upper.contains("WITH ADMIN OPTION") {
        " WITH ADMIN OPTION"
    } else {
        ""
    };
    Some(format!("{prefix} TO {}{option}", account(to, host)))
}

/// The MySQL-family engine.
#[derive(Clone, Debug, Default)]
pub struct MysqlEngine {
    options: ConnectOptions,
}

impl MysqlEngine {
    pub fn new(options: ConnectOptions) -> Self {
        MysqlEngine { options }
    }

    pub fn from_env() -> Result<Self> {
        Ok(MysqlEngine::new(ConnectOptions::from_env()?))
    }

    fn opts(&self, secret: &DbSecret, tls: bool) -> OptsBuilder {
        let address = self
            .options
            .address_for(&secret.host)
            .map_or_else(|| secret.host.clone(), |ip| ip.to_string());
        let mut opts = OptsBuilder::default()
            .ip_or_hostname(address)
            .tcp_port(secret.port.unwrap_or(3306))
            .user(Some(secret.username.clone()))
            .pass(Some(secret.password.expose().to_string()))
            .db_name(secret.dbname.clone())
            .prefer_socket(Some(false));
        if tls {
            let mut ssl = SslOpts::default();
            if let Some(bundle) = self.options.tls.ca_bundle() {
                ssl = ssl.with_root_certs(vec![bundle.to_path_buf().into()]);
            }
            if self.options.address_for(&secret.host).is_some() {
                ssl = ssl.with_danger_tls_hostname_override(Some(secret.host.clone()));
            }
            opts = opts.ssl_opts(Some(ssl));
        }
        opts
    }

    async fn dial(&self, secret: &DbSecret, which: Role, tls: bool) -> Result<Conn> {
        let endpoint = endpoint(secret, 3306);
        match tokio::time::timeout(
            self.options.connect_timeout,
            Conn::new(self.opts(secret, tls)),
        )
        .await
        {
            Err(_) => Err(Error::Unreachable {
                endpoint,
                detail: format!(
                    "no answer within {} s",
                    self.options.connect_timeout.as_secs()
                ),
            }),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(classify(e, &endpoint, &secret.username, which)),
        }
    }
}

fn classify(e: mysql_async::Error, endpoint: &str, user: &str, which: Role) -> Error {
    use mysql_async::{DriverError, Error as E};
    match e {
        E::Server(s) if matches!(s.code, 1044 | 1045 | 1698 | 1820 | 1862 | 3118) => {
            Error::LoginRefused {
                user: user.to_string(),
                endpoint: endpoint.to_string(),
                which,
                detail: s.message,
            }
        }
        E::Server(s) if matches!(s.code, 1040 | 1203 | 1226) => Error::Unreachable {
            endpoint: endpoint.to_string(),
            detail: s.message,
        },
        E::Server(s) => Error::Database {
            endpoint: endpoint.to_string(),
            action: format!("accept the {which} login"),
            detail: s.message,
        },
        E::Driver(DriverError::NoClientSslFlagFromServer) => Error::Tls {
            endpoint: endpoint.to_string(),
            detail: "the server does not offer TLS".into(),
        },
        other => {
            let mut detail = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(s) = source {
                detail.push_str(": ");
                detail.push_str(&s.to_string());
                source = s.source();
            }
            let lower = detail.to_ascii_lowercase();
            if lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake")
            {
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
    }
}

#[async_trait]
impl Engine for MysqlEngine {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn accepts(&self, engine: &str) -> bool {
        self.engines().contains(&engine)
    }

    fn engines(&self) -> &'static [&'static str] {
        &["mysql", "aurora-mysql", "mariadb"]
    }

    fn default_port(&self) -> u16 {
        3306
    }

    fn max_username_bytes(&self) -> usize {
        // The most any server allows (MariaDB); the connected server's own
        // limit is checked before anything changes in setSecret.
        80
    }

    fn default_excluded_characters(&self) -> &'static str {
        "/@\"'\\"
    }

    async fn connect(&self, secret: &DbSecret, which: Role) -> Result<Box<dyn Session>> {
        let endpoint = endpoint(secret, 3306);
        let (mut conn, tls) = match secret.tls {
            TlsMode::Disabled => (self.dial(secret, which, false).await?, false),
            TlsMode::Required => (self.dial(secret, which, true).await?, true),
            TlsMode::Preferred => match self.dial(secret, which, true).await {
                Ok(conn) => (conn, true),
                Err(Error::Tls { detail, .. }) if detail == "the server does not offer TLS" => {
                    tracing::warn!(
                        endpoint = %endpoint,
                        "server offers no TLS: connected in plaintext because the secret has no \"ssl\" key; set \"ssl\": true to refuse plaintext"
                    );
                    (self.dial(secret, which, false).await?, false)
                }
                Err(e) => return Err(e),
            },
        };
        let text: Option<String> =
            conn.query_first("SELECT VERSION()")
                .await
                .map_err(|e| Error::Database {
                    endpoint: endpoint.clone(),
                    action: "report its version".into(),
                    detail: e.to_string(),
                })?;
        let version = text
            .as_deref()
            .and_then(ServerVersion::parse)
            .ok_or_else(|| Error::Database {
                endpoint: endpoint.clone(),
                action: "report a version Rotor understands".into(),
                detail: format!("VERSION() returned {text:?}"),
            })?;
        Ok(Box::new(MySession {
            conn: Some(conn),
            endpoint: Arc::from(endpoint),
            version,
            tls,
        }))
    }
}

/// One row of `mysql.user`: what an alternate account must mirror.
#[derive(Clone, Debug)]
struct Account {
    host: String,
    plugin: String,
    ssl_type: String,
    max_user_connections: u64,
}

type AccountRow = (String, Option<String>, Option<String>, Option<u64>);

struct MySession {
    conn: Option<Conn>,
    endpoint: Arc<str>,
    version: ServerVersion,
    tls: bool,
}

impl Drop for MySession {
    fn drop(&mut self) {
        // Close politely so the server does not log an aborted connection.
        if let Some(conn) = self.conn.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = conn.disconnect().await;
            });
        }
    }
}

impl MySession {
    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn.as_mut().ok_or_else(|| Error::Database {
            endpoint: self.endpoint.to_string(),
            action: "keep the session".into(),
            detail: "the connection was closed".into(),
        })
    }

    fn fail(&self, action: String) -> impl Fn(mysql_async::Error) -> Error + use<> {
        let endpoint = self.endpoint.clone();
        move |e| Error::Database {
            endpoint: endpoint.to_string(),
            action: action.clone(),
            detail: match e {
                mysql_async::Error::Server(s) => s.message,
                other => other.to_string(),
            },
        }
    }

    async fn run(&mut self, statement: &PasswordStatement, action: &str) -> Result<()> {
        if statement.carries_plaintext && !self.tls {
            return Err(Error::Config(format!(
                "refusing to send a password in SQL over an unencrypted connection to {} ({action}); MySQL {}.{} with caching_sha2_password needs the plaintext in ALTER USER, so set \"ssl\": true",
                self.endpoint, self.version.major, self.version.minor
            )));
        }
        let endpoint = self.endpoint.clone();
        self.conn()?
            .query_drop(&statement.sql)
            .await
            .map_err(|e| Error::Database {
                endpoint: endpoint.to_string(),
                action: action.to_string(),
                detail: match e {
                    mysql_async::Error::Server(s) => s.message,
                    other => other.to_string(),
                },
            })
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        let endpoint = self.endpoint.clone();
        self.conn()?
            .query_drop(sql)
            .await
            .map_err(|e| Error::Database {
                endpoint: endpoint.to_string(),
                action: format!("run {sql:?}"),
                detail: match e {
                    mysql_async::Error::Server(s) => s.message,
                    other => other.to_string(),
                },
            })
    }

    /// Every account named `user`, one per host part.
    async fn accounts(&mut self, user: &str) -> Result<Vec<Account>> {
        let fail = self.fail(format!("read mysql.user for {user:?}"));
        let conn = self.conn()?;
        let rows: Vec<AccountRow> = conn
            .exec(
                "SELECT Host, plugin, CAST(ssl_type AS CHAR), max_user_connections FROM mysql.user WHERE User = ? ORDER BY Host",
                (user,),
            )
            .await
            .map_err(&fail)?;
        Ok(rows
            .into_iter()
            .map(|(host, plugin, ssl_type, max)| Account {
                host,
                plugin: plugin.unwrap_or_default(),
                ssl_type: ssl_type.unwrap_or_default(),
                max_user_connections: max.unwrap_or(0),
            })
            .collect())
    }

    async fn grants(&mut self, user: &str, host: &str) -> Result<Vec<String>> {
        let sql = format!("SHOW GRANTS FOR {}", account(user, host));
        let fail = self.fail(format!("show the grants of {}", account(user, host)));
        let conn = self.conn()?;
        conn.query::<String, _>(sql).await.map_err(&fail)
    }
}

#[async_trait]
impl Session for MySession {
    async fn check(&mut self) -> Result<()> {
        let fail = self.fail("run SELECT 1".into());
        let conn = self.conn()?;
        conn.query_drop("SELECT 1").await.map_err(&fail)
    }

    async fn set_own_password(&mut self, _user: &str, password: &SecretString) -> Result<()> {
        let statement = own_password_statement(self.version, password.expose());
        self.run(&statement, "change its own password").await
    }

    async fn set_password(&mut self, user: &str, password: &SecretString) -> Result<()> {
        let accounts = self.accounts(user).await?;
        if accounts.is_empty() {
            return Err(Error::Database {
                endpoint: self.endpoint.to_string(),
                action: format!("find user {user:?}"),
                detail: "no such account".into(),
            });
        }
        for Account { host, plugin, .. } in accounts {
            let statement =
                set_password_statement(self.version, user, &host, Some(&plugin), password.expose());
            self.run(
                &statement,
                &format!("set the password of {}", account(user, &host)),
            )
            .await?;
        }
        Ok(())
    }

    async fn password_matches(
        &mut self,
        user: &str,
        password: &SecretString,
    ) -> Result<Option<bool>> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let rows: std::result::Result<Vec<(Option<String>, Option<String>)>, _> = conn
            .exec(
                "SELECT plugin, authentication_string FROM mysql.user WHERE User = ?",
                (user,),
            )
            .await;
        let Ok(rows) = rows else {
            return Ok(None); // no privilege to read mysql.user: try a login instead
        };
        if rows.is_empty() {
            return Ok(Some(false));
        }
        let hash = native_password_hash(password.expose());
        let mut all = true;
        for (plugin, stored) in rows {
            match plugin.as_deref() {
                Some("mysql_native_password") | Some("") | None => {
                    all &= stored.as_deref() == Some(hash.as_str());
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(all))
    }

    fn username_limit(&self) -> Option<usize> {
        Some(self.version.username_limit())
    }

    async fn sync_alternate_user(
        &mut self,
        template: &str,
        alternate: &str,
        password: &SecretString,
        _policy: ClonePolicy,
    ) -> Result<AlternateSync> {
        let wanted = self.accounts(template).await?;
        if wanted.is_empty() {
            return Err(Error::Database {
                endpoint: self.endpoint.to_string(),
                action: format!("find user {template:?}"),
                detail: "the current user does not exist on this server; check the secret's host and username".into(),
            });
        }
        let existing = self.accounts(alternate).await?;
        let mut sync = AlternateSync::default();
        for Account {
            host,
            ssl_type,
            max_user_connections: max_conn,
            ..
        } in wanted
        {
            let have = existing.iter().find(|a| a.host == host).cloned();
            if have.is_none() {
                let statement =
                    create_user_statement(self.version, alternate, &host, password.expose());
                self.run(&statement, &format!("create {}", account(alternate, &host)))
                    .await?;
                sync.created = true;
                sync.changes.push(format!(
                    "CREATE USER {} IDENTIFIED …",
                    account(alternate, &host)
                ));
            }
            let (have_ssl, have_max) =
                have.map_or((String::new(), 0), |a| (a.ssl_type, a.max_user_connections));
            if have_ssl != ssl_type {
                let require = match ssl_type.as_str() {
                    "ANY" => "SSL",
                    "X509" | "SPECIFIED" => "X509",
                    _ => "NONE",
                };
                let sql = format!("ALTER USER {} REQUIRE {require}", account(alternate, &host));
                self.exec(&sql).await?;
                sync.changes.push(sql);
            }
            if have_max != max_conn {
                let sql = format!(
                    "ALTER USER {} WITH MAX_USER_CONNECTIONS {max_conn}",
                    account(alternate, &host)
                );
                self.exec(&sql).await?;
                sync.changes.push(sql);
            }
            let current: Vec<String> = self
                .grants(alternate, &host)
                .await?
                .iter()
                .filter_map(|g| replay_grant(g, alternate, &host, alternate))
                .collect();
            for grant in self.grants(template, &host).await? {
                let Some(replayed) = replay_grant(&grant, template, &host, alternate) else {
                    continue;
                };
                if !current.contains(&replayed) {
                    self.exec(&replayed).await?;
                    sync.changes.push(replayed);
                }
            }
        }
        Ok(sync)
    }

    async fn create_dynamic_user(&mut self, user: &DynamicUser) -> Result<()> {
        self.ensure_lease_marker().await?;
        let statement =
            create_user_statement(self.version, &user.username, "%", user.password.expose());
        let statement = PasswordStatement {
            sql: match user.max_connections {
                Some(n) => format!("{} WITH MAX_USER_CONNECTIONS {n}", statement.sql),
                None => statement.sql,
            },
            carries_plaintext: statement.carries_plaintext,
        };
        self.run(
            &statement,
            &format!("create dynamic user {:?}", user.username),
        )
        .await?;
        // MySQL has no transactional DDL: the marker follows at once, and a
        // user that cannot be marked (or given its roles) is removed again,
        // so no unmarked login is left behind.
        let who = account(&user.username, "%");
        let finished = self.mark_and_grant(&who, user).await;
        if let Err(e) = finished {
            if let Err(cleanup) = self.exec(&format!("DROP USER IF EXISTS {who}")).await {
                tracing::warn!(user = %user.username, error = %cleanup, "could not remove a dynamic user that was created but not finished");
            }
            return Err(e);
        }
        Ok(())
    }

    async fn acquire_lock(&mut self, name: &str, wait: std::time::Duration) -> Result<()> {
        // GET_LOCK waits at most its timeout (whole seconds, at least 1) and
        // answers 1 (taken), 0 (timed out) or NULL (error); the client bound
        // is a little longer so the server's answer arrives first.
        let secs = wait.as_secs().max(1);
        let fail = self.fail(format!("wait for the lock {name:?}"));
        let endpoint = self.endpoint.to_string();
        let conn = self.conn()?;
        let taken: Option<Option<i64>> = crate::deadline::bounded(
            &endpoint,
            &format!("wait for the lock {name:?}"),
            std::time::Duration::from_secs(secs + 1),
            async {
                conn.exec_first("SELECT GET_LOCK(?, ?)", (name, secs))
                    .await
                    .map_err(&fail)
            },
        )
        .await?;
        match taken.flatten() {
            Some(1) => Ok(()),
            Some(0) => Err(Error::Timeout {
                endpoint,
                what: format!("wait for the lock {name:?} (held by another session)"),
                after_ms: secs * 1000,
            }),
            _ => Err(Error::Database {
                endpoint,
                action: format!("take the lock {name:?}"),
                detail: "GET_LOCK returned NULL".into(),
            }),
        }
    }

    async fn release_lock(&mut self, name: &str) -> Result<()> {
        let fail = self.fail(format!("release the lock {name:?}"));
        let conn = self.conn()?;
        let _: Option<Option<i64>> = conn
            .exec_first("SELECT RELEASE_LOCK(?)", (name,))
            .await
            .map_err(&fail)?;
        Ok(())
    }

    async fn users_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>> {
        self.require_roles()?;
        let sql = marked_users_sql(self.version.flavor);
        let fail = self.fail("list dynamic users".into());
        let conn = self.conn()?;
        conn.exec(sql, (LEASE_MARKER, prefix, prefix))
            .await
            .map_err(&fail)
    }

    async fn end_sessions(&mut self, user: &str, _before: Option<f64>) -> Result<u64> {
        // The process list has no connection start time: every session of
        // the user ends (a revocation is an emergency; clients reconnect).
        let fail = self.fail(format!("list the sessions of {user:?}"));
        let conn = self.conn()?;
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
                (user,),
            )
            .await
            .map_err(&fail)?;
        let mut ended = 0;
        for id in ids {
            // A session that ended meanwhile is not an error.
            if conn
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                ended += 1;
            }
        }
        Ok(ended)
    }

    async fn drop_user(&mut self, user: &str, _owner_role: Option<&str>) -> Result<DropReport> {
        let accounts = self.accounts(user).await?;
        if accounts.is_empty() {
            return Ok(DropReport::default());
        }
        // Only the accounts Rotor marked; same-named accounts on other
        // hosts that a DBA made are left alone.
        let marked = self.marked_hosts(user).await?;
        let accounts: Vec<Account> = accounts
            .into_iter()
            .filter(|a| marked.contains(&a.host))
            .collect();
        if accounts.is_empty() {
            return Err(Error::Refused {
                endpoint: self.endpoint.to_string(),
                reason: format!(
                    "{user:?} is not a dynamic user Rotor created (no account of it holds the {LEASE_MARKER} marker role); Rotor drops only its own users: drop it by hand if it must go"
                ),
            });
        }
        for a in &accounts {
            // No new logins while the sessions end.
            self.exec(&format!(
                "ALTER USER {} ACCOUNT LOCK",
                account(user, &a.host)
            ))
            .await?;
        }
        let sessions_ended = self.end_sessions(user, None).await?;
        for a in &accounts {
            self.exec(&format!("DROP USER IF EXISTS {}", account(user, &a.host)))
                .await?;
        }
        Ok(DropReport {
            existed: true,
            sessions_ended,
            ..DropReport::default()
        })
    }
}

/// Lists users carrying the lease marker whose names start with a prefix;
/// parameters: marker, prefix, prefix.
///
/// - MariaDB keeps role grants in `mysql.roles_mapping` (`User`, `Host`,
///   `Role`; MariaDB Knowledge Base, "mysql.roles_mapping Table").
/// - MySQL 8 keeps them in `mysql.role_edges` (`FROM_USER`@`FROM_HOST` is the
///   role, `TO_USER`@`TO_HOST` the grantee; MySQL 8.0 Reference Manual,
///   6.2.3 "Grant Tables"); a role created by name alone has host `%`.
pub fn marked_users_sql(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => {
            "SELECT DISTINCT u.User FROM mysql.user u JOIN mysql.roles_mapping m ON m.User = u.User AND m.Host = u.Host WHERE m.Role = ? AND LEFT(u.User, CHAR_LENGTH(?)) = ? AND u.is_role <> 'Y' ORDER BY u.User"
        }
        Flavor::MySql => {
            "SELECT DISTINCT u.User FROM mysql.user u JOIN mysql.role_edges e ON e.TO_USER = u.User AND e.TO_HOST = u.Host WHERE e.FROM_USER = ? AND e.FROM_HOST = '%' AND LEFT(u.User, CHAR_LENGTH(?)) = ? ORDER BY u.User"
        }
    }
}

/// The host parts of a user's accounts that carry the lease marker;
/// parameters: marker, user. Same tables as [`marked_users_sql`].
pub fn marked_hosts_sql(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => {
            "SELECT DISTINCT Host FROM mysql.roles_mapping WHERE Role = ? AND User = ? ORDER BY Host"
        }
        Flavor::MySql => {
            "SELECT DISTINCT TO_HOST FROM mysql.role_edges WHERE FROM_USER = ? AND FROM_HOST = '%' AND TO_USER = ? ORDER BY TO_HOST"
        }
    }
}

/// The statement that makes a dynamic user's roles active at login.
///
/// MariaDB keeps one default role (`SET DEFAULT ROLE role FOR user`, MariaDB
/// Knowledge Base "SET DEFAULT ROLE"); MySQL 8 takes a list
/// (`SET DEFAULT ROLE role [, role] TO user`, MySQL 8.0 Reference Manual
/// 15.7.1.9). The marker role is never made active: it confers nothing.
pub fn default_role_statement(flavor: Flavor, who: &str, member_of: &[String]) -> Option<String> {
    let first = member_of.first()?;
    Some(match flavor {
        Flavor::MariaDb => format!("SET DEFAULT ROLE {} FOR {who}", quote_name(first)),
        Flavor::MySql => format!(
            "SET DEFAULT ROLE {} TO {who}",
            member_of
                .iter()
                .map(|g| quote_name(g))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Dynamic users: the lease marker.
impl MySession {
    /// Roles exist on MariaDB and on MySQL 8.0 and later; without them Rotor
    /// cannot mark the users it creates, so it makes none.
    fn require_roles(&self) -> Result<()> {
        if self.version.flavor == Flavor::MySql && self.version.major < 8 {
            return Err(Error::Refused {
                endpoint: self.endpoint.to_string(),
                reason: format!(
                    "dynamic credentials need MySQL 8.0 or later, or MariaDB: Rotor marks the users it creates with the role {LEASE_MARKER}, and MySQL {}.{} has no roles",
                    self.version.major, self.version.minor
                ),
            });
        }
        Ok(())
    }

    /// Creates the marker role when missing and checks that it holds
    /// nothing (only `GRANT USAGE ON *.*`): a dynamic user could use
    /// whatever it held.
    async fn ensure_lease_marker(&mut self) -> Result<()> {
        self.require_roles()?;
        let marker = quote_name(LEASE_MARKER);
        self.exec(&format!("CREATE ROLE IF NOT EXISTS {marker}"))
            .await?;
        let fail = self.fail(format!(
            "show the grants of the lease marker role {LEASE_MARKER}"
        ));
        let conn = self.conn()?;
        let grants: Vec<String> = conn
            .query(format!("SHOW GRANTS FOR {marker}"))
            .await
            .map_err(&fail)?;
        if let Some(extra) = grants
            .iter()
            .find(|g| !g.to_ascii_uppercase().starts_with("GRANT USAGE ON *.* TO"))
        {
            return Err(Error::Refused {
                endpoint: self.endpoint.to_string(),
                reason: format!(
                    "the lease marker role {LEASE_MARKER} holds more than USAGE ({extra}), and every dynamic user would get it; revoke it from {LEASE_MARKER}"
                ),
            });
        }
        Ok(())
    }

    /// Grants the marker, then the role's groups and default role.
    async fn mark_and_grant(&mut self, who: &str, user: &DynamicUser) -> Result<()> {
        let marker = quote_name(LEASE_MARKER);
        self.exec(&format!("GRANT {marker} TO {who}"))
            .await
            .map_err(|e| match e {
                Error::Database {
                    endpoint, detail, ..
                } => Error::Database {
                    endpoint,
                    action: format!(
                        "grant the lease marker role {LEASE_MARKER} to a new dynamic user (the master needs ADMIN OPTION on it: GRANT {LEASE_MARKER} TO <master> WITH ADMIN OPTION, or ROLE_ADMIN on MySQL)"
                    ),
                    detail,
                },
                other => other,
            })?;
        for group in &user.member_of {
            self.exec(&format!("GRANT {} TO {who}", quote_name(group)))
                .await?;
        }
        if let Some(sql) = default_role_statement(self.version.flavor, who, &user.member_of) {
            self.exec(&sql).await?;
        }
        Ok(())
    }

    /// The host parts of `user`'s accounts that carry the marker.
    async fn marked_hosts(&mut self, user: &str) -> Result<Vec<String>> {
        self.require_roles()?;
        let sql = marked_hosts_sql(self.version.flavor);
        let fail = self.fail(format!("read the role grants of {user:?}"));
        let conn = self.conn()?;
        conn.exec(sql, (LEASE_MARKER, user)).await.map_err(&fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_marker_statements_per_server() {
        // MariaDB: roles_mapping; MySQL 8: role_edges, roles at host '%'.
        let m = marked_users_sql(Flavor::MariaDb);
        assert!(m.contains("mysql.roles_mapping") && m.contains("is_role <> 'Y'"));
        let m = marked_users_sql(Flavor::MySql);
        assert!(m.contains("mysql.role_edges") && m.contains("FROM_HOST = '%'"));
        assert_eq!(marked_users_sql(Flavor::MySql).matches('?').count(), 3);
        assert_eq!(marked_hosts_sql(Flavor::MariaDb).matches('?').count(), 2);
        assert!(marked_hosts_sql(Flavor::MySql).contains("TO_USER = ?"));
        let groups = vec!["app_rw".to_string(), "audit".to_string()];
        assert_eq!(
            default_role_statement(Flavor::MySql, "`v_a_1_abcdef`@`%`", &groups).as_deref(),
            Some("SET DEFAULT ROLE `app_rw`, `audit` TO `v_a_1_abcdef`@`%`"),
            "the marker is not made active"
        );
        assert_eq!(
            default_role_statement(Flavor::MariaDb, "`v_a_1_abcdef`@`%`", &groups).as_deref(),
            Some("SET DEFAULT ROLE `app_rw` FOR `v_a_1_abcdef`@`%`")
        );
        assert_eq!(default_role_statement(Flavor::MySql, "u", &[]), None);
    }

    fn v(s: &str) -> ServerVersion {
        ServerVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_and_limits() {
        assert_eq!(v("8.0.36").flavor, Flavor::MySql);
        assert_eq!(v("5.7.44-log").username_limit(), 32);
        assert_eq!(v("5.7.5").username_limit(), 16);
        assert_eq!(v("8.0.36").username_limit(), 32);
        assert_eq!(v("9.1.0").username_limit(), 32);
        let m = v("10.11.6-MariaDB-0+deb12u1");
        assert_eq!((m.flavor, m.major, m.minor), (Flavor::MariaDb, 10, 11));
        assert_eq!(m.username_limit(), 80);
        let m = v("5.5.5-11.4.2-MariaDB");
        assert_eq!((m.flavor, m.major), (Flavor::MariaDb, 11));
        assert!(ServerVersion::parse("garbage").is_none());
    }

    #[test]
    fn native_hash_matches_mysql() {
        // SELECT PASSWORD('password') on MySQL 5.7 / MariaDB.
        assert_eq!(
            native_password_hash("password"),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }

    #[test]
    fn password_statements_per_server() {
        let pw = "p'w\\x";
        // MySQL 9 (AWS's function takes the 5.7 branch here: "9" does not start with "8").
        let s = own_password_statement(v("9.1.0"), pw);
        assert_eq!(s.sql, "ALTER USER CURRENT_USER() IDENTIFIED BY 'p''w\\\\x'");
        assert!(s.carries_plaintext);
        let s = own_password_statement(v("8.0.36"), pw);
        assert!(s.carries_plaintext && s.sql.starts_with("ALTER USER CURRENT_USER()"));
        for old in ["5.7.44", "10.11.6-MariaDB", "11.4.2-MariaDB"] {
            let s = own_password_statement(v(old), pw);
            assert!(
                !s.carries_plaintext && !s.sql.contains("p'w"),
                "{old}: {}",
                s.sql
            );
            assert!(s.sql.starts_with("SET PASSWORD = '*"));
        }
        let s = set_password_statement(v("10.11.6-MariaDB"), "a`b", "%", None, pw);
        assert_eq!(
            s.sql,
            format!(
                "SET PASSWORD FOR `a``b`@`%` = '{}'",
                native_password_hash(pw)
            )
        );
        let s = set_password_statement(
            v("5.7.44"),
            "u",
            "10.0.0.%",
            Some("mysql_native_password"),
            pw,
        );
        assert!(
            s.sql.starts_with(
                "ALTER USER `u`@`10.0.0.%` IDENTIFIED WITH mysql_native_password AS '*"
            )
        );
        let s = set_password_statement(v("8.0.36"), "u", "%", Some("mysql_native_password"), pw);
        assert!(!s.carries_plaintext);
        let s = set_password_statement(v("8.0.36"), "u", "%", Some("caching_sha2_password"), pw);
        assert!(s.carries_plaintext && s.sql.starts_with("ALTER USER `u`@`%` IDENTIFIED BY '"));
        let s = create_user_statement(v("9.1.0"), "u", "%", pw);
        assert!(s.carries_plaintext && s.sql.starts_with("CREATE USER `u`@`%` IDENTIFIED BY '"));
        let s = create_user_statement(v("10.6.1-MariaDB"), "u", "%", pw);
        assert!(!s.carries_plaintext && s.sql.contains("IDENTIFIED BY PASSWORD '*"));
    }

    #[test]
    fn grants_are_replayed_with_grant_option() {
        let r = |line: &str| replay_grant(line, "app", "%", "app_clone");
        assert_eq!(
            r("GRANT SELECT, INSERT ON `shop`.* TO `app`@`%` WITH GRANT OPTION").as_deref(),
            Some("GRANT SELECT, INSERT ON `shop`.* TO `app_clone`@`%` WITH GRANT OPTION")
        );
        assert_eq!(
            r("GRANT SELECT ON `shop`.`orders` TO 'app'@'%'").as_deref(),
            Some("GRANT SELECT ON `shop`.`orders` TO `app_clone`@`%`")
        );
        assert_eq!(
            r("GRANT `reader`@`%` TO `app`@`%` WITH ADMIN OPTION").as_deref(),
            Some("GRANT `reader`@`%` TO `app_clone`@`%` WITH ADMIN OPTION")
        );
        assert_eq!(
            r("GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*ABC' REQUIRE SSL"),
            None
        );
        assert_eq!(r("GRANT SELECT ON *.* TO `other`@`%`"), None);
    }
}
