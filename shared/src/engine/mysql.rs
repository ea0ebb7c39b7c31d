//! MySQL, Aurora MySQL and MariaDB (mysql_async, rustls).
//!
//! The password statement depends on the server actually connected, decided
//! from `SELECT VERSION()` (read with `@@sql_mode` in one query): MariaDB,
//! MySQL < 5.7.6, 5.7.6+, 8.0, 8.4 and 9.x each get the right one (AWS's
//! function only asks whether the version starts with "8"); see
//! [`own_password_statements`] and the version x statement table test.
//!
//! The plaintext stays out of SQL text wherever the server reads a hash for
//! that statement at that privilege level (`'*' + HEX(SHA1(SHA1(pw)))` for
//! `mysql_native_password` accounts). Where it does not (caching_sha2
//! accounts, MySQL 9, a single user refused the hash form for lack of
//! privilege), the literal is sent only over TLS; without TLS Rotor refuses
//! before changing anything. A server's request for the password in
//! cleartext (mysql_clear_password) is never answered.
//!
//! Alternating users: the `_clone` of a pair carries a marker grant
//! ([`ALTERNATE_MARKER_DB`]) and is never taken over without it; privileged
//! templates are refused unless [`ClonePolicy::allow_privileged`]; the
//! alternate gets exactly the template's grants, roles, default roles,
//! REQUIRE clause and connection limit, on every host account.
//!
//! Every network call and statement is bounded ([`crate::deadline`]), and
//! the session's server-side lock and statement limits sit below that bound.
//! Account names are always quoted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};
use sha1::{Digest, Sha1};

use super::{
    AlternateSync, ClonePolicy, ConnectOptions, DropReport, DynamicUser, Engine, LEASE_MARKER,
    Role, Session, endpoint,
};
use crate::deadline;
use crate::error::{Error, Result};
use crate::fault;
use crate::secret::{DbSecret, SecretString, TlsMode};
use crate::strategy::CLONE_SUFFIX;

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
    /// The session's `sql_mode` has `NO_BACKSLASH_ESCAPES`: string
    /// literals must not escape backslashes. Not part of the version, but
    /// read with it at connect, and every statement builder that writes a
    /// literal needs both.
    pub no_backslash_escapes: bool,
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
            no_backslash_escapes: false,
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
fn literal(value: &str, version: ServerVersion) -> String {
    string_literal(value, version.no_backslash_escapes)
}

/// A quoted string literal that the server reads back as `value`:
/// quotes doubled; backslashes doubled unless the session's `sql_mode`
/// has `NO_BACKSLASH_ESCAPES` (then a backslash is an ordinary character).
pub fn string_literal(value: &str, no_backslash_escapes: bool) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if !no_backslash_escapes => out.push_str("\\\\"),
            '\0' if !no_backslash_escapes => out.push_str("\\0"),
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
    /// The SQL contains the plaintext (sent only over TLS).
    pub carries_plaintext: bool,
}

impl PasswordStatement {
    fn hash(sql: String) -> Self {
        PasswordStatement {
            sql,
            carries_plaintext: false,
        }
    }

    fn plaintext(sql: String) -> Self {
        PasswordStatement {
            sql,
            carries_plaintext: true,
        }
    }
}

const NATIVE: &str = "mysql_native_password";

impl ServerVersion {
    fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        (self.major, self.minor, self.patch) >= (major, minor, patch)
    }

    /// MySQL 5.7.6 changed `SET PASSWORD = '<string>'` from "a hash" to
    /// "cleartext" and added `ALTER USER … IDENTIFIED WITH … AS '<hash>'`
    /// (MySQL 5.7 manual, 13.7.1.7 SET PASSWORD and 13.7.1.1 ALTER USER).
    fn mysql_5_7_6_or_later(&self) -> bool {
        self.flavor == Flavor::MySql && self.at_least(5, 7, 6)
    }

    /// Whether an account using `plugin` (`None`: unknown) may be given the
    /// `mysql_native_password` hash. MySQL 9.0 removed that plugin (MySQL 9.0
    /// manual, 8.4.1.1 "Native Pluggable Authentication": removed); 8.4 ships
    /// it disabled, so on 8.x the hash is used only for accounts that already
    /// use it (the plugin is then loaded). MySQL 5.x and MariaDB default to it.
    fn native_hash_fits(&self, plugin: Option<&str>) -> bool {
        let native = matches!(plugin, None | Some("") | Some(NATIVE));
        match self.flavor {
            Flavor::MariaDb => native,
            Flavor::MySql if self.major >= 9 => false,
            Flavor::MySql if self.major >= 8 => plugin == Some(NATIVE),
            Flavor::MySql => native,
        }
    }
}

/// The statements with which the logged-in user changes its own password,
/// best first. A later one is tried only when the server refuses an earlier
/// one for lack of privilege (an access-denied error: nothing changed).
/// `plugin` is the account's authentication plugin when known (MySQL:
/// `SHOW CREATE USER CURRENT_USER()`, which needs no privilege for oneself).
///
/// - MariaDB, MySQL < 5.7.6: `SET PASSWORD = '<hash>'` reads the string as
///   the hash and needs no privilege for one's own account (MySQL 5.6 / 5.7
///   manual, SET PASSWORD, "before 5.7.6: 'hash_string'"; MariaDB, SET PASSWORD).
/// - MySQL 5.7.6+ with a native account: `ALTER USER CURRENT_USER()
///   IDENTIFIED WITH mysql_native_password AS '<hash>'`. The manual's
///   own-password exception (ALTER USER: "any client … can change the
///   password for that account") is stated for `IDENTIFIED BY`; the
///   `USER()` form accepts only `IDENTIFIED BY` (MySQL 8.0 manual,
///   15.7.1.1 ALTER USER, `user_func_auth_option`). Without the CREATE
///   USER privilege the server may refuse the `AS` form, so:
/// - then `SET PASSWORD = '<literal>'`: cleartext that the server hashes
///   with the account's own plugin (MySQL 8.0 manual, 15.7.1.10 SET
///   PASSWORD), needing no privilege; sent only over TLS.
pub fn own_password_statements(
    version: ServerVersion,
    plugin: Option<&str>,
    password: &str,
) -> Vec<PasswordStatement> {
    let hash = native_password_hash(password);
    if !version.mysql_5_7_6_or_later() {
        // The plugin is not read here (one round trip saved): a MariaDB
        // account on another plugin (ed25519) refuses the native hash with
        // 1372, which becomes a clear Refused ([`own_password_refusal`]).
        return vec![PasswordStatement::hash(format!("SET PASSWORD = '{hash}'"))];
    }
    let literal =
        PasswordStatement::plaintext(format!("SET PASSWORD = {}", literal(password, version)));
    if version.native_hash_fits(plugin) {
        vec![
            PasswordStatement::hash(format!(
                "ALTER USER CURRENT_USER() IDENTIFIED WITH {NATIVE} AS '{hash}'"
            )),
            literal,
        ]
    } else {
        vec![literal]
    }
}

/// The statement with which an administrator sets `user@host`'s password;
/// `plugin` is the account's authentication plugin when known.
///
/// - MariaDB: `SET PASSWORD FOR … = '<hash>'` (native accounts); other
///   plugins are switched to native with the hash (`ALTER USER … IDENTIFIED
///   VIA mysql_native_password USING '<hash>'`, MariaDB ALTER USER), which
///   keeps the password out of SQL text and logs in as before.
/// - MySQL < 5.7.6: `SET PASSWORD FOR … = '<hash>'` (no `ALTER USER …
///   IDENTIFIED` before 5.7.6; MySQL 5.6 manual, 13.7.1.7 SET PASSWORD).
/// - MySQL 5.7.6+, native account: `ALTER USER … IDENTIFIED WITH
///   mysql_native_password AS '<hash>'` (MySQL 5.7 manual, 13.7.1.1).
/// - Otherwise (caching_sha2_password, MySQL 9): `SET PASSWORD FOR … =
///   '<literal>'`, hashed by the account's own plugin (MySQL 8.0 manual,
///   15.7.1.10), only over TLS.
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
        Flavor::MariaDb if version.native_hash_fits(plugin) => {
            PasswordStatement::hash(format!("SET PASSWORD FOR {who} = '{hash}'"))
        }
        Flavor::MariaDb => PasswordStatement::hash(format!(
            "ALTER USER {who} IDENTIFIED VIA {NATIVE} USING '{hash}'"
        )),
        Flavor::MySql if !version.mysql_5_7_6_or_later() => {
            PasswordStatement::hash(format!("SET PASSWORD FOR {who} = '{hash}'"))
        }
        Flavor::MySql if version.native_hash_fits(plugin) => PasswordStatement::hash(format!(
            "ALTER USER {who} IDENTIFIED WITH {NATIVE} AS '{hash}'"
        )),
        Flavor::MySql => PasswordStatement::plaintext(format!(
            "SET PASSWORD FOR {who} = {}",
            literal(password, version)
        )),
    }
}

/// The statement creating `user@host` with a password (dynamic users: the
/// server's default plugin).
pub fn create_user_statement(
    version: ServerVersion,
    user: &str,
    host: &str,
    password: &str,
) -> PasswordStatement {
    create_account_statement(version, user, host, None, password)
}

/// The statement creating `user@host` with a password, using `plugin` (the
/// template account's plugin, when known).
///
/// - MariaDB, MySQL < 5.7.6: `CREATE USER … IDENTIFIED BY PASSWORD
///   '<hash>'` (MySQL 5.6 manual, 13.7.1.2 CREATE USER; MariaDB CREATE USER).
/// - MySQL 5.7.6+ where the native hash fits: `IDENTIFIED WITH
///   mysql_native_password AS '<hash>'` (MySQL 5.7 manual, 13.7.1.2).
/// - Otherwise (MySQL 8.x non-native, 8.x unknown, 9.x): `IDENTIFIED WITH
///   <plugin> BY '<literal>'` (or the server default), only over TLS.
pub fn create_account_statement(
    version: ServerVersion,
    user: &str,
    host: &str,
    plugin: Option<&str>,
    password: &str,
) -> PasswordStatement {
    let who = account(user, host);
    let hash = native_password_hash(password);
    if !version.mysql_5_7_6_or_later() {
        return PasswordStatement::hash(format!(
            "CREATE USER {who} IDENTIFIED BY PASSWORD '{hash}'"
        ));
    }
    let plugin = plugin.filter(|p| !p.is_empty());
    if version.native_hash_fits(plugin) {
        return PasswordStatement::hash(format!(
            "CREATE USER {who} IDENTIFIED WITH {NATIVE} AS '{hash}'"
        ));
    }
    match plugin.filter(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        Some(plugin) => PasswordStatement::plaintext(format!(
            "CREATE USER {who} IDENTIFIED WITH {plugin} BY {}",
            literal(password, version)
        )),
        None => PasswordStatement::plaintext(format!(
            "CREATE USER {who} IDENTIFIED BY {}",
            literal(password, version)
        )),
    }
}

/// The database named in the grant that marks an account as Rotor's
/// alternate (`GRANT SELECT ON `rotor_alternate_marker`.* TO <clone>`).
///
/// Why a grant: MariaDB has no account comment or attribute, MySQL 5.7 has
/// neither, and MySQL 8.0.21+'s `ATTRIBUTE` cannot be tested here. A
/// database-level grant on a schema nobody creates exists on every server
/// family and version, survives upgrades and dumps (`SHOW GRANTS`), is set
/// only by someone who may grant (Rotor's master, or a DBA marking a clone
/// by hand), and gives nothing: the schema does not exist.
pub const ALTERNATE_MARKER_DB: &str = "rotor_alternate_marker";

/// The statement marking `user@host` as Rotor's alternate.
pub fn marker_grant(user: &str, host: &str) -> String {
    format!(
        "GRANT SELECT ON {}.* TO {}",
        quote_name(ALTERNATE_MARKER_DB),
        account(user, host)
    )
}

/// One `SHOW GRANTS` line about an account, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `GRANT <privileges> ON <object> TO … [WITH GRANT OPTION]`.
    Privileges {
        object: String,
        privileges: BTreeSet<String>,
        grant_option: bool,
    },
    /// `GRANT <role> TO … [WITH ADMIN OPTION]`.
    Role { role: String, admin_option: bool },
    /// MySQL 8 partial revoke (`partial_revokes=ON`): `REVOKE <privileges>
    /// ON <schema>.* FROM …`, an exception to a global privilege.
    PartialRevoke {
        object: String,
        privileges: BTreeSet<String>,
    },
}

/// Splits `text` at `sep` where it is outside backticks and quotes.
fn split_outside_quotes<'a>(text: &'a str, sep: &str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut depth = 0usize;
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        match quote {
            Some(q) if c == q => {
                // A doubled quote stays inside the name.
                if bytes.get(i + 1) == Some(&(q as u8)) {
                    i += 1;
                } else {
                    quote = None;
                }
            }
            Some(_) => {}
            None if c == '`' || c == '\'' || c == '"' => quote = Some(c),
            None if c == '(' => depth += 1,
            None if c == ')' => depth = depth.saturating_sub(1),
            // Bytes, not `text[i..]`: `i` may sit inside a multi-byte
            // character; an ASCII `sep` only matches on a boundary.
            None if depth == 0 && bytes[i..].starts_with(sep.as_bytes()) => {
                parts.push(&text[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    parts.push(&text[start..]);
    parts
}

/// The ways a server writes `user@host` in `SHOW GRANTS`.
fn grantee_forms(user: &str, host: &str) -> [String; 3] {
    [
        account(user, host),
        format!(
            "'{}'@'{}'",
            user.replace('\\', "\\\\").replace('\'', "\\'"),
            host.replace('\\', "\\\\").replace('\'', "\\'")
        ),
        format!("{user}@{host}"),
    ]
}

/// Parses one `SHOW GRANTS` line of `user@host`. The grantee is found from
/// the END of the line (the last ` TO <grantee>` / ` FROM <grantee>` that
/// only options follow), so an object or role whose name contains the
/// grantee's text cannot confuse it. `None` for lines about someone else
/// and for PROXY grants (never replayed).
pub fn parse_grant(line: &str, user: &str, host: &str) -> Option<Grant> {
    let line = line.trim();
    let upper = line.to_ascii_uppercase();
    let revoke = upper.starts_with("REVOKE ");
    let (verb, keyword) = if revoke {
        ("REVOKE ", " FROM ")
    } else {
        ("GRANT ", " TO ")
    };
    if !upper.starts_with(verb) {
        return None;
    }
    let (at, grantee_len) = grantee_forms(user, host)
        .iter()
        .filter_map(|g| {
            let needle = format!("{keyword}{g}");
            line.rfind(&needle).map(|i| (i, needle.len()))
        })
        .max()?;
    parse_grant_at(line, verb, keyword.len(), at, grantee_len, revoke)
}

/// Parses a `SHOW GRANTS` line of a role (its grantee is the role itself,
/// written without a host on MariaDB): the grantee is whatever follows the
/// last ` TO ` / ` FROM ` outside quotes.
pub fn parse_grant_of_role(line: &str) -> Option<Grant> {
    let line = line.trim();
    let upper = line.to_ascii_uppercase();
    let revoke = upper.starts_with("REVOKE ");
    let (verb, keyword) = if revoke {
        ("REVOKE ", " FROM ")
    } else {
        ("GRANT ", " TO ")
    };
    if !upper.starts_with(verb) {
        return None;
    }
    let parts = split_outside_quotes(line, keyword);
    let last = parts.last()?;
    if parts.len() < 2 {
        return None;
    }
    let at = line.len() - last.len() - keyword.len();
    let grantee_len = keyword.len()
        + split_outside_quotes(last, " ")
            .first()
            .map_or(0, |g| g.len());
    parse_grant_at(line, verb, keyword.len(), at, grantee_len, revoke)
}

fn parse_grant_at(
    line: &str,
    verb: &str,
    _keyword_len: usize,
    at: usize,
    grantee_len: usize,
    revoke: bool,
) -> Option<Grant> {
    let suffix = line[at + grantee_len..].trim();
    let suffix_upper = suffix.to_ascii_uppercase();
    // Only options may follow the grantee.
    let options_only = suffix.is_empty()
        || [
            "WITH ",
            "IDENTIFIED ",
            "REQUIRE ",
            "PASSWORD ",
            "VIA ",
            "AS ",
        ]
        .iter()
        .any(|k| suffix_upper.starts_with(k));
    if !options_only {
        return None;
    }
    // `GRANT TO x`: the ` TO ` overlaps the verb's space; nothing is granted.
    let body = line.get(verb.len()..at)?;
    let parts = split_outside_quotes(body, " ON ");
    match parts.as_slice() {
        [role] => (!revoke).then(|| Grant::Role {
            role: role.trim().to_string(),
            admin_option: suffix_upper.contains("WITH ADMIN OPTION"),
        }),
        [privileges, object] => {
            let privileges: BTreeSet<String> = split_outside_quotes(privileges, ",")
                .into_iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            if privileges.iter().any(|p| p.eq_ignore_ascii_case("PROXY")) {
                return None;
            }
            // No privilege holds the word ON (outside its column list): such
            // a line is not one grant, and its replay would not read back.
            if privileges.iter().any(|p| {
                split_outside_quotes(&format!(" {} ", p.to_ascii_uppercase()), " ON ").len() > 1
            }) {
                return None;
            }
            let object = object.trim().to_string();
            Some(if revoke {
                Grant::PartialRevoke { object, privileges }
            } else {
                Grant::Privileges {
                    object,
                    privileges,
                    grant_option: suffix_upper.contains("WITH GRANT OPTION"),
                }
            })
        }
        _ => None,
    }
}

/// Rewrites one `SHOW GRANTS` line of `from@host` as the same grant to
/// `to@host`. Keeps `WITH GRANT OPTION` / `WITH ADMIN OPTION`; drops the
/// password, REQUIRE and resource clauses (synced separately). `None` for
/// lines with nothing to replay (USAGE, PROXY) or not about `from@host`.
pub fn replay_grant(line: &str, from: &str, host: &str, to: &str) -> Option<String> {
    let who = account(to, host);
    match parse_grant(line, from, host)? {
        Grant::Privileges {
            object,
            privileges,
            grant_option,
        } => {
            if privileges.iter().all(|p| p.eq_ignore_ascii_case("USAGE")) && !grant_option {
                return None;
            }
            let option = if grant_option {
                " WITH GRANT OPTION"
            } else {
                ""
            };
            Some(format!(
                "GRANT {} ON {object} TO {who}{option}",
                join(&privileges)
            ))
        }
        Grant::Role { role, admin_option } => {
            let option = if admin_option {
                " WITH ADMIN OPTION"
            } else {
                ""
            };
            Some(format!("GRANT {role} TO {who}{option}"))
        }
        Grant::PartialRevoke { object, privileges } => Some(format!(
            "REVOKE {} ON {object} FROM {who}",
            join(&privileges)
        )),
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_marker_object(object: &str) -> bool {
    object == format!("{}.*", quote_name(ALTERNATE_MARKER_DB))
}

/// Whether a template's grant gives superuser-like power that a clone must
/// not receive without an opt-in; the reason when it does.
///
/// Refused: global GRANT OPTION; global ALL PRIVILEGES, CREATE USER, SUPER,
/// FILE, SHUTDOWN, RELOAD and the MySQL 8 / MariaDB 10.5 administrative
/// privileges that split SUPER (SYSTEM_USER, ROLE_ADMIN, SET_USER_ID,
/// CONNECTION_ADMIN, SET USER, …), MySQL 8 CREATE ROLE / DROP ROLE; write
/// access to the `mysql` schema, globally (INSERT, UPDATE, DELETE, CREATE,
/// DROP, ALTER on `*.*`) or on it (the manual: UPDATE on `mysql` is enough
/// for ALTER USER / SET PASSWORD FOR);
/// a role held WITH ADMIN OPTION (it can be handed on).
pub fn privileged_reason(grant: &Grant) -> Option<String> {
    const GLOBAL_ADMIN: &[&str] = &[
        "ALL",
        "ALL PRIVILEGES",
        "CREATE USER",
        "SUPER",
        "FILE",
        "SHUTDOWN",
        "RELOAD",
        "CREATE TABLESPACE",
        "REPLICATION SLAVE ADMIN",
        "REPLICATION MASTER ADMIN",
        "BINLOG ADMIN",
        "CONNECTION ADMIN",
        "READ_ONLY ADMIN",
        "SET USER",
        "FEDERATED ADMIN",
        // MySQL 8: roles and users are both accounts, so DROP ROLE can drop
        // users (MySQL 8.0 manual, 8.2.2 "Privileges Provided by MySQL").
        "CREATE ROLE",
        "DROP ROLE",
        "SYSTEM_USER",
        "ROLE_ADMIN",
        "SET_USER_ID",
        "SET_ANY_DEFINER",
        "ALLOW_NONEXISTENT_DEFINER",
        "SYSTEM_VARIABLES_ADMIN",
        "PERSIST_RO_VARIABLES_ADMIN",
        "CONNECTION_ADMIN",
        "BINLOG_ADMIN",
        "REPLICATION_SLAVE_ADMIN",
        "GROUP_REPLICATION_ADMIN",
        "ENCRYPTION_KEY_ADMIN",
        "AUTHENTICATION_POLICY_ADMIN",
        "PASSWORDLESS_USER_ADMIN",
        "AUDIT_ADMIN",
        "FIREWALL_ADMIN",
    ];
    const SCHEMA_WRITE: &[&str] = &[
        "ALL",
        "ALL PRIVILEGES",
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "DROP",
        "ALTER",
    ];
    match grant {
        Grant::Privileges {
            object,
            privileges,
            grant_option,
        } => {
            let upper: Vec<String> = privileges.iter().map(|p| p.to_ascii_uppercase()).collect();
            if object == "*.*" {
                if *grant_option {
                    return Some("global GRANT OPTION".into());
                }
                if let Some(p) = upper.iter().find(|p| GLOBAL_ADMIN.contains(&p.as_str())) {
                    return Some(format!("the global {p} privilege"));
                }
                // A write privilege on *.* covers the `mysql` schema too.
                if let Some(p) = upper.iter().find(|p| SCHEMA_WRITE.contains(&p.as_str())) {
                    return Some(format!(
                        "the global {p} privilege (it covers the mysql schema: enough to change any account)"
                    ));
                }
            }
            let mysql_schema = object.eq_ignore_ascii_case("`mysql`.*")
                || object.to_ascii_lowercase().starts_with("`mysql`.");
            if mysql_schema
                && let Some(p) = upper.iter().find(|p| SCHEMA_WRITE.contains(&p.as_str()))
            {
                return Some(format!("{p} on {object} (enough to change any account)"));
            }
            None
        }
        Grant::Role {
            role,
            admin_option: true,
        } => Some(format!("role {role} WITH ADMIN OPTION")),
        _ => None,
    }
}

/// The statements that make `to@host`'s grants exactly `template`'s, in
/// both directions: adds what is missing, revokes what the template lacks
/// (privileges per object, GRANT OPTION, roles and their ADMIN OPTION), and
/// replays MySQL 8 partial revokes (or lifts ones the template lacks). The
/// marker grant is left alone. Order: privileges per object (global first),
/// then roles, then partial revokes (which need the global privilege to
/// exist first). An object whose privileges must shrink or change is reset
/// (`REVOKE ALL PRIVILEGES`, `REVOKE GRANT OPTION`) and given the template's
/// privileges: `SHOW GRANTS` tokens (`ALL PRIVILEGES`, column lists) are not
/// subtractable sets.
pub fn grant_plan(template: &[Grant], alternate: &[Grant], to: &str, host: &str) -> Vec<String> {
    use std::collections::BTreeMap;
    let who = account(to, host);
    type Privs = BTreeMap<String, (BTreeSet<String>, bool)>;
    let privileges = |grants: &[Grant]| -> Privs {
        let mut out = Privs::new();
        for g in grants {
            if let Grant::Privileges {
                object,
                privileges,
                grant_option,
            } = g
                && !is_marker_object(object)
            {
                let entry = out.entry(object.clone()).or_default();
                entry.0.extend(
                    privileges
                        .iter()
                        .filter(|p| !p.eq_ignore_ascii_case("USAGE"))
                        .cloned(),
                );
                entry.1 |= *grant_option;
            }
        }
        out
    };
    let roles = |grants: &[Grant]| -> BTreeMap<String, bool> {
        grants
            .iter()
            .filter_map(|g| match g {
                Grant::Role { role, admin_option } => Some((role.clone(), *admin_option)),
                _ => None,
            })
            .collect()
    };
    let partial = |grants: &[Grant]| -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for g in grants {
            if let Grant::PartialRevoke { object, privileges } = g {
                out.entry(object.clone())
                    .or_default()
                    .extend(privileges.iter().cloned());
            }
        }
        out
    };
    let (want, have) = (privileges(template), privileges(alternate));
    let mut grants = Vec::new();
    let mut revokes = Vec::new();
    // Global grants first: a partial revoke needs them.
    let mut objects: Vec<&String> = want.keys().chain(have.keys()).collect();
    objects.sort_by_key(|o| (o.as_str() != "*.*", o.to_string()));
    objects.dedup();
    let empty = (BTreeSet::new(), false);
    let mut global_reset = false;
    for object in objects {
        let (want_p, want_go) = want.get(object).unwrap_or(&empty);
        let (have_p, have_go) = have.get(object).unwrap_or(&empty);
        if (want_p, want_go) == (have_p, have_go) {
            continue;
        }
        let option = if *want_go { " WITH GRANT OPTION" } else { "" };
        // SHOW GRANTS writes ALL PRIVILEGES and each column grant
        // (`SELECT (`a`, `b`)`) as one token, so tokens cannot be
        // subtracted. Only gaining: grant the missing tokens (the result is
        // the union, which is the template's). Anything else: reset the
        // object and grant the template's privileges. Between the two
        // statements (one round trip each, milliseconds) the alternate
        // lacks that object's privileges; it is the account not in use as
        // AWSCURRENT, and the grants must shrink anyway.
        if have_p.is_subset(want_p) && (*want_go || !have_go) {
            let add: BTreeSet<String> = want_p.difference(have_p).cloned().collect();
            let list = if add.is_empty() {
                "USAGE".to_string()
            } else {
                join(&add)
            };
            grants.push(format!("GRANT {list} ON {object} TO {who}{option}"));
            continue;
        }
        global_reset |= object == "*.*";
        if !have_p.is_empty() {
            grants.push(format!("REVOKE ALL PRIVILEGES ON {object} FROM {who}"));
        }
        if *have_go {
            grants.push(format!("REVOKE GRANT OPTION ON {object} FROM {who}"));
        }
        if !want_p.is_empty() || *want_go {
            let list = if want_p.is_empty() {
                "USAGE".to_string()
            } else {
                join(want_p)
            };
            grants.push(format!("GRANT {list} ON {object} TO {who}{option}"));
        }
    }
    let (want_r, have_r) = (roles(template), roles(alternate));
    for (role, admin) in &want_r {
        match have_r.get(role) {
            Some(have_admin) if have_admin == admin => {}
            Some(true) => {
                // Only the ADMIN OPTION is too much: take the role back, grant it plainly.
                revokes.push(format!("REVOKE {role} FROM {who}"));
                revokes.push(format!("GRANT {role} TO {who}"));
            }
            _ => {
                let option = if *admin { " WITH ADMIN OPTION" } else { "" };
                grants.push(format!("GRANT {role} TO {who}{option}"));
            }
        }
    }
    for role in have_r.keys().filter(|r| !want_r.contains_key(*r)) {
        revokes.push(format!("REVOKE {role} FROM {who}"));
    }
    let want_pr = partial(template);
    // REVOKE ALL on *.* also removed the alternate's partial revokes.
    let have_pr = if global_reset {
        BTreeMap::new()
    } else {
        partial(alternate)
    };
    let mut partials = Vec::new();
    for (object, privs) in &want_pr {
        let missing: BTreeSet<String> = privs
            .difference(have_pr.get(object).unwrap_or(&BTreeSet::new()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            partials.push(format!("REVOKE {} ON {object} FROM {who}", join(&missing)));
        }
    }
    for (object, privs) in &have_pr {
        let extra: BTreeSet<String> = privs
            .difference(want_pr.get(object).unwrap_or(&BTreeSet::new()))
            .cloned()
            .collect();
        if !extra.is_empty() {
            // Granting at the schema level lifts the partial revoke.
            partials.push(format!("GRANT {} ON {object} TO {who}", join(&extra)));
        }
    }
    grants.into_iter().chain(revokes).chain(partials).collect()
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
            .prefer_socket(Some(false))
            // Never answer a server's request for the password in cleartext
            // (mysql_clear_password): a man in the middle who stripped TLS
            // asks for exactly that. mysql_async's default is off; pinned
            // here so no default or URL option can turn it on.
            .enable_cleartext_plugin(false);
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

    /// TCP connect, TLS and the login handshake, bounded together.
    ///
    /// The handshake runs in its own task: the driver panics when a server
    /// asks for an authentication plugin this build cannot answer (MariaDB
    /// `client_ed25519` without mysql_common's `client_ed25519` feature), and
    /// a hostile or misconfigured server must produce an error, not take the
    /// whole function down.
    async fn dial(
        &self,
        secret: &DbSecret,
        which: Role,
        tls: bool,
        bound: Duration,
    ) -> Result<Conn> {
        let endpoint = endpoint(secret, 3306);
        let call = "the TCP connect, TLS and login handshake";
        let started = Instant::now();
        let mut handshake = tokio::spawn(Conn::new(self.opts(secret, tls)));
        let joined =
            deadline::bounded(&endpoint, call, bound, async { Ok((&mut handshake).await) }).await;
        if joined.is_err() {
            handshake.abort();
        }
        match joined? {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(match classify(e, &endpoint, &secret.username, which) {
                // Which call failed, and after how long: a refused
                // connection answers at once, a filtered one does not.
                Error::Unreachable { endpoint, detail } => Error::Unreachable {
                    detail: format!(
                        "{call} failed after {} ms: {detail}",
                        started.elapsed().as_millis()
                    ),
                    endpoint,
                },
                other => other,
            }),
            Err(e) if e.is_panic() => Err(Error::Refused {
                endpoint,
                reason: format!(
                    "the server asked {:?} to log in with an authentication method Rotor cannot answer (the MySQL driver gave up; MariaDB's client_ed25519 is one); give the account mysql_native_password or caching_sha2_password",
                    secret.username
                ),
            }),
            Err(e) => Err(Error::Unreachable {
                endpoint,
                detail: format!("the login was cancelled: {e}"),
            }),
        }
    }
}

/// The first statement that would carry the alternate's password as a
/// literal: creating a missing host account (with the template account's
/// plugin) or setting an existing one's (with its own plugin). The
/// password itself does not matter here, only the statement's form.
fn first_plaintext_password_statement(
    version: ServerVersion,
    alternate: &str,
    wanted: &[Account],
    existing: &[Account],
) -> Option<PasswordStatement> {
    wanted.iter().find_map(|w| {
        let statement = match existing.iter().find(|a| a.host == w.host) {
            Some(a) => set_password_statement(version, alternate, &a.host, Some(&a.plugin), ""),
            None => create_account_statement(version, alternate, &w.host, Some(&w.plugin), ""),
        };
        statement.carries_plaintext.then_some(statement)
    })
}

/// The statement giving `who` these default roles (as read by
/// `accounts`): MariaDB `SET DEFAULT ROLE role FOR who` (one role);
/// MySQL 8 `ALTER USER who DEFAULT ROLE r1, r2` (MySQL 8.0 manual, 15.7.1.1
/// "ALTER USER Role Options"). Empty: NONE.
fn default_role_statement(version: ServerVersion, who: &str, roles: &str) -> String {
    match version.flavor {
        Flavor::MariaDb if roles.is_empty() => format!("SET DEFAULT ROLE NONE FOR {who}"),
        Flavor::MariaDb => format!("SET DEFAULT ROLE {} FOR {who}", quote_name(roles)),
        Flavor::MySql if roles.is_empty() => format!("ALTER USER {who} DEFAULT ROLE NONE"),
        Flavor::MySql => format!("ALTER USER {who} DEFAULT ROLE {roles}"),
    }
}

/// Whether a `sql_mode` value has `NO_BACKSLASH_ESCAPES`.
pub fn has_no_backslash_escapes(sql_mode: &str) -> bool {
    sql_mode
        .split(',')
        .any(|m| m.trim().eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"))
}

/// Why the server refused a user's own password statement, when the error
/// means "this account is not a mysql_native_password account": MariaDB
/// 1372 (ER_PASSWD_LENGTH) for `SET PASSWORD = '<native hash>'` on an
/// ed25519 (or other plugin) account, whose plugin a single user's login
/// does not read. Nothing changed.
fn own_password_refusal(version: ServerVersion, code: u16) -> Option<String> {
    (version.flavor == Flavor::MariaDb && code == 1372).then(|| {
        "the account does not use mysql_native_password (ed25519 or another plugin), and Rotor sets a MariaDB user's own password only as a mysql_native_password hash (never as plaintext). Give the account mysql_native_password (ALTER USER … IDENTIFIED VIA mysql_native_password USING PASSWORD(…)), or rotate it with alternating users".to_string()
    })
}

/// Server errors that mean a session time limit ended the statement (it
/// was rolled back): 1205 lock wait timeout, 1969 MariaDB
/// max_statement_time exceeded, 3024 MySQL max_execution_time exceeded.
fn is_server_timeout(code: u16) -> bool {
    matches!(code, 1205 | 1969 | 3024)
}

/// Server errors that mean "this login may not do that" (nothing changed):
/// 1044 access denied to database, 1142 command denied, 1227 specific
/// privilege needed, 1370 routine access denied.
fn is_access_denied(code: u16) -> bool {
    matches!(code, 1044 | 1142 | 1227 | 1370)
}

/// The plugin named in a `SHOW CREATE USER` line: `IDENTIFIED WITH
/// 'caching_sha2_password' AS …` (MySQL) or `IDENTIFIED VIA ed25519 …`
/// (MariaDB). `None` when no plugin is named.
pub fn plugin_of_create_user(text: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    let at = ["IDENTIFIED WITH ", "IDENTIFIED VIA "]
        .iter()
        .find_map(|k| upper.find(k).map(|i| i + k.len()))?;
    let rest = &text[at..];
    let name: String = rest
        .trim_start_matches(['\'', '`', '"'])
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
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
        E::Driver(DriverError::CleartextPluginDisabled) => Error::Refused {
            endpoint: endpoint.to_string(),
            reason: format!(
                "the server asked for {user:?}'s password in cleartext (mysql_clear_password), and Rotor never sends it: over a connection without TLS that request is what an attacker who stripped TLS would make. Use verified TLS (\"ssl\": true) and a password plugin (mysql_native_password, caching_sha2_password)"
            ),
        },
        E::Driver(DriverError::NoClientSslFlagFromServer) => Error::Tls {
            endpoint: endpoint.to_string(),
            detail: "the server does not offer TLS".into(),
        },
        other => {
            let mut detail = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(s) = source {
                // The driver's messages often repeat their source's already.
                let text = s.to_string();
                if !detail.contains(&text) {
                    detail.push_str(": ");
                    detail.push_str(&text);
                }
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
        // One budget for the whole login: handshake(s), version, limits.
        let bound = deadline::budget(self.options.connect_timeout);
        let until = Instant::now() + bound;
        let left = || {
            until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let (mut conn, tls) = match secret.tls {
            TlsMode::Disabled => (self.dial(secret, which, false, left()).await?, false),
            TlsMode::Required => (self.dial(secret, which, true, left()).await?, true),
            TlsMode::Preferred => match self.dial(secret, which, true, left()).await {
                Ok(conn) => (conn, true),
                Err(Error::Tls { detail, .. }) if detail == "the server does not offer TLS" => {
                    tracing::warn!(
                        endpoint = %endpoint,
                        "server offers no TLS: connected in plaintext because the secret has no \"ssl\" key; set \"ssl\": true to refuse plaintext"
                    );
                    (self.dial(secret, which, false, left()).await?, false)
                }
                Err(e) => return Err(e),
            },
        };
        let database_error = |action: &str| {
            let endpoint = endpoint.clone();
            let action = action.to_string();
            move |e: mysql_async::Error| Error::Database {
                endpoint,
                action,
                detail: match e {
                    mysql_async::Error::Server(s) => s.message,
                    other => other.to_string(),
                },
            }
        };
        // The server gives up on a lock wait (and rolls back) before Rotor does.
        let server_limit = deadline::server_limit(bound);
        // One round trip for the limits and the version: the limits'
        // statement depends on the family, guessed from the handshake's
        // version (MariaDB is 10+, MySQL below). A wrong guess fails the SET
        // (unknown variable), and nothing after it runs: then the two
        // statements go separately.
        let (major, minor, patch) = conn.server_version();
        let guess = ServerVersion {
            flavor: if major >= 10 {
                Flavor::MariaDb
            } else {
                Flavor::MySql
            },
            major: major.into(),
            minor: minor.into(),
            patch: patch.into(),
            no_backslash_escapes: false,
        };
        let guessed_limits = session_limits_statement(guess, server_limit);
        let together = deadline::bounded(&endpoint, "report its version", left(), async {
            Ok(limits_then_version(&mut conn, &guessed_limits).await)
        })
        .await?;
        let (row, limits_set) = match together {
            Ok(row) => (row, Some(guessed_limits)),
            Err(mysql_async::Error::Server(e)) => {
                tracing::info!(
                    code = e.code,
                    "session limits guessed from the handshake refused; setting them after the version"
                );
                let row: Option<(String, String)> =
                    deadline::bounded(&endpoint, "report its version", left(), async {
                        conn.query_first("SELECT VERSION(), @@SESSION.sql_mode")
                            .await
                            .map_err(database_error("report its version"))
                    })
                    .await?;
                (row, None)
            }
            Err(e) => return Err(database_error("report its version")(e)),
        };
        let (text, sql_mode) = row.unzip();
        let version = text
            .as_deref()
            .and_then(ServerVersion::parse)
            .map(|v| ServerVersion {
                no_backslash_escapes: sql_mode.as_deref().is_some_and(has_no_backslash_escapes),
                ..v
            })
            .ok_or_else(|| Error::Database {
                endpoint: endpoint.clone(),
                action: "report a version Rotor understands".into(),
                detail: format!("VERSION() returned {text:?}"),
            })?;
        let limits = session_limits_statement(version, server_limit);
        if limits_set.as_deref() != Some(limits.as_str()) {
            deadline::bounded(&endpoint, "set its session time limits", left(), async {
                conn.query_drop(&limits)
                    .await
                    .map_err(database_error("set session time limits"))
            })
            .await?;
        }
        Ok(Box::new(MySession {
            conn: Some(conn),
            endpoint: Arc::from(endpoint),
            marker_admins: self.options.lease_marker_admins.clone(),
            version,
            tls,
            bound: self.options.connect_timeout,
            server_limit,
        }))
    }
}

/// Runs `limits` and `SELECT VERSION(), @@SESSION.sql_mode` in one round
/// trip (mysql_async asks for CLIENT_MULTI_STATEMENTS); the version row.
async fn limits_then_version(
    conn: &mut Conn,
    limits: &str,
) -> std::result::Result<Option<(String, String)>, mysql_async::Error> {
    let mut result = conn
        .query_iter(format!("{limits}; SELECT VERSION(), @@SESSION.sql_mode"))
        .await?;
    let mut row = None;
    // Two result sets: the SET's (no rows), then the version's.
    for _ in 0..4 {
        if result.is_empty() {
            break;
        }
        let rows: Vec<(String, String)> = result.collect().await?;
        if row.is_none() {
            row = rows.into_iter().next();
        }
    }
    result.drop_result().await?;
    Ok(row)
}

/// `SET SESSION` of the server-side limits for a session whose statements
/// Rotor waits for at most a little longer than `limit`: `lock_wait_timeout`
/// (metadata and table locks, whole seconds, at least 1) and
/// `innodb_lock_wait_timeout` (row locks) on both families; MariaDB also
/// `max_statement_time` (any statement, fractional seconds; MariaDB
/// "Aborting Statements that Exceed a Certain Time to Execute"); MySQL
/// 5.7.8+ also `max_execution_time` (milliseconds, read-only SELECTs only).
pub fn session_limits_statement(version: ServerVersion, limit: Duration) -> String {
    let secs = limit.as_secs().max(1);
    match version.flavor {
        Flavor::MariaDb => format!(
            "SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}, max_statement_time = {:.3}",
            limit.as_secs_f64()
        ),
        Flavor::MySql if version.at_least(5, 7, 8) => format!(
            "SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}, max_execution_time = {}",
            limit.as_millis().max(1)
        ),
        Flavor::MySql => {
            format!("SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}")
        }
    }
}

/// How long the server may take to give up on a statement under a session
/// limit of `limit`: MariaDB's `max_statement_time` ends any statement at
/// `limit`, but lock waits end at `lock_wait_timeout` (whole seconds, at
/// least 1), and MySQL's `max_execution_time` covers SELECT only.
fn server_gives_up_within(limit: Duration) -> Duration {
    limit.max(Duration::from_secs(limit.as_secs().max(1)))
}

/// Time for the server's "aborted" answer to reach Rotor.
const SERVER_ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// One row of `mysql.user`: what an alternate account must mirror.
#[derive(Clone, Debug)]
struct Account {
    host: String,
    plugin: String,
    ssl_type: String,
    max_user_connections: u64,
    /// `REQUIRE CIPHER / ISSUER / SUBJECT` values (ssl_type `SPECIFIED`).
    ssl_cipher: String,
    x509_issuer: String,
    x509_subject: String,
    /// Default roles as SQL: MariaDB one role name (`mysql.user.default_role`),
    /// MySQL 8 a list of `` `role`@`host` `` (`mysql.default_roles`).
    default_roles: String,
}

type AccountRow = (
    String,
    Option<String>,
    Option<String>,
    Option<u64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The `REQUIRE` clause that gives an account these TLS requirements
/// (MySQL 8.0 manual 15.7.1.1 "ALTER USER SSL/TLS Options"; MariaDB
/// ALTER USER `tls_option`): `SPECIFIED` carries ISSUER, SUBJECT and CIPHER.
fn require_clause(account: &Account, version: ServerVersion) -> String {
    match account.ssl_type.as_str() {
        "ANY" => "SSL".into(),
        "X509" => "X509".into(),
        "SPECIFIED" => {
            let parts: Vec<String> = [
                ("ISSUER", &account.x509_issuer),
                ("SUBJECT", &account.x509_subject),
                ("CIPHER", &account.ssl_cipher),
            ]
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| format!("{key} {}", literal(value, version)))
            .collect();
            if parts.is_empty() {
                "SSL".into()
            } else {
                parts.join(" AND ")
            }
        }
        _ => "NONE".into(),
    }
}

struct MySession {
    conn: Option<Conn>,
    endpoint: Arc<str>,
    /// `ConnectOptions::lease_marker_admins`.
    marker_admins: Vec<String>,
    version: ServerVersion,
    tls: bool,
    /// Each statement's bound before the Lambda deadline is applied
    /// ([`deadline::budget`]).
    bound: Duration,
    /// The session's server-side limit (set at connect, lowered when a
    /// statement gets less time: [`MySession::statement_bound`]).
    server_limit: Duration,
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

    /// The client-side bound for the next statement, with the server sure to
    /// give up first. The statement's bound follows the Lambda deadline
    /// ([`deadline::budget`]) and can fall below the limits the session set
    /// at connect; the server would then keep running (and commit) a
    /// statement Rotor already reported as timed out. So: when the session's
    /// limit is above what this bound allows, lower it first (one more round
    /// trip, only near the deadline). `lock_wait_timeout` counts whole
    /// seconds (at least 1) and MySQL's `max_execution_time` covers SELECT
    /// only, so the server's own give-up time can stay above a very short
    /// bound: the client then waits for it (plus a margin), which the
    /// deadline's report reserve ([`deadline::REPORT_RESERVE`]) covers.
    async fn statement_bound(&mut self, what: &str) -> Result<Duration> {
        let bound = deadline::budget(self.bound);
        let wanted = deadline::server_limit(bound);
        if wanted < self.server_limit {
            let sql = session_limits_statement(self.version, wanted);
            let fail = self.fail(format!(
                "lower its session time limits before it may {what}"
            ));
            let endpoint = self.endpoint.clone();
            let conn = self.conn()?;
            let what = "lower its session time limits";
            deadline::bounded(
                &endpoint,
                what,
                bound,
                fault::call(&endpoint, what, async {
                    conn.query_drop(&sql).await.map_err(fail)
                }),
            )
            .await?;
            self.server_limit = wanted;
        }
        Ok(bound.max(server_gives_up_within(self.server_limit) + SERVER_ANSWER_MARGIN))
    }

    /// Runs `sql` (no result rows) within the statement bound; the outer
    /// error is a timeout, the inner one the server's answer.
    async fn drop_bounded(
        &mut self,
        sql: &str,
        what: &str,
    ) -> Result<std::result::Result<(), mysql_async::Error>> {
        let bound = self.statement_bound(what).await?;
        let endpoint = self.endpoint.clone();
        let conn = self.conn()?;
        deadline::bounded(
            &endpoint,
            what,
            bound,
            fault::call(&endpoint, what, async { Ok(conn.query_drop(sql).await) }),
        )
        .await
    }

    /// Text query returning rows, within the statement bound.
    async fn rows_bounded<T>(
        &mut self,
        sql: &str,
        what: &str,
    ) -> Result<std::result::Result<Vec<T>, mysql_async::Error>>
    where
        T: mysql_async::prelude::FromRow + Send + 'static,
    {
        let bound = self.statement_bound(what).await?;
        let endpoint = self.endpoint.clone();
        let conn = self.conn()?;
        deadline::bounded(
            &endpoint,
            what,
            bound,
            fault::call(&endpoint, what, async { Ok(conn.query(sql).await) }),
        )
        .await
    }

    /// Prepared statement returning rows, within the statement bound.
    async fn exec_bounded<T, P>(
        &mut self,
        sql: &str,
        params: P,
        what: &str,
    ) -> Result<std::result::Result<Vec<T>, mysql_async::Error>>
    where
        T: mysql_async::prelude::FromRow + Send + 'static,
        P: Into<mysql_async::Params> + Send,
    {
        let bound = self.statement_bound(what).await?;
        let endpoint = self.endpoint.clone();
        let conn = self.conn()?;
        deadline::bounded(
            &endpoint,
            what,
            bound,
            fault::call(&endpoint, what, async { Ok(conn.exec(sql, params).await) }),
        )
        .await
    }

    /// The error for a failed `action`. A statement the server aborted
    /// at the session's time limits is a (retryable) timeout.
    fn fail(&self, action: String) -> impl Fn(mysql_async::Error) -> Error + use<> {
        let endpoint = self.endpoint.clone();
        let server_limit_ms = u64::try_from(self.server_limit.as_millis()).unwrap_or(u64::MAX);
        move |e| match e {
            mysql_async::Error::Server(s) if is_server_timeout(s.code) => Error::Timeout {
                endpoint: endpoint.to_string(),
                what: format!("{action} (the server aborted it: {})", s.message),
                after_ms: server_limit_ms,
            },
            e => Error::Database {
                endpoint: endpoint.to_string(),
                action: action.clone(),
                detail: match e {
                    mysql_async::Error::Server(s) => s.message,
                    other => other.to_string(),
                },
            },
        }
    }

    /// Refuses, before anything is sent, a statement that would carry the
    /// plaintext over a connection without TLS.
    fn refuse_plaintext_without_tls(
        &self,
        statement: &PasswordStatement,
        action: &str,
    ) -> Result<()> {
        if statement.carries_plaintext && !self.tls {
            return Err(Error::Refused {
                endpoint: self.endpoint.to_string(),
                reason: format!(
                    "to {action}, {} {}.{}.{} has no form of the statement that takes a password hash for this account, so the new password would travel as a literal in SQL, and this connection is not encrypted; set \"ssl\": true in the secret (verified TLS)",
                    match self.version.flavor {
                        Flavor::MySql => "MySQL",
                        Flavor::MariaDb => "MariaDB",
                    },
                    self.version.major,
                    self.version.minor,
                    self.version.patch,
                ),
            });
        }
        Ok(())
    }

    async fn run(&mut self, statement: &PasswordStatement, action: &str) -> Result<()> {
        self.refuse_plaintext_without_tls(statement, action)?;
        let fail = self.fail(action.to_string());
        self.drop_bounded(&statement.sql, action)
            .await?
            .map_err(fail)
    }

    /// Runs the first of `statements` the server accepts; moves on only when
    /// the server refuses one for lack of privilege (nothing changed then).
    async fn run_first_allowed(
        &mut self,
        statements: &[PasswordStatement],
        action: &str,
    ) -> Result<()> {
        let mut refused = None;
        for (i, statement) in statements.iter().enumerate() {
            self.refuse_plaintext_without_tls(statement, action)
                .map_err(|e| match (&refused, e) {
                    (Some(earlier), Error::Refused { endpoint, reason }) => Error::Refused {
                        endpoint,
                        reason: format!("{reason} (the hash form was refused: {earlier})"),
                    },
                    (_, e) => e,
                })?;
            let result = self.drop_bounded(&statement.sql, action).await?;
            match result {
                Ok(()) => return Ok(()),
                Err(mysql_async::Error::Server(e))
                    if i + 1 < statements.len() && is_access_denied(e.code) =>
                {
                    tracing::info!(
                        code = e.code,
                        "password hash form refused for lack of privilege; trying the next form"
                    );
                    refused = Some(e.message);
                }
                Err(mysql_async::Error::Server(e))
                    if let Some(reason) = own_password_refusal(self.version, e.code) =>
                {
                    return Err(Error::Refused {
                        endpoint: self.endpoint.to_string(),
                        reason,
                    });
                }
                // A statement the server aborted at the session's time
                // limits (a lock wait) is a retryable timeout.
                Err(e) => return Err(self.fail(action.to_string())(e)),
            }
        }
        Ok(())
    }

    /// A user changing its own password changes only the account its login
    /// matched (`SET PASSWORD` / `ALTER USER CURRENT_USER()`): any other
    /// host account of the same name would keep the old password, and the
    /// clients that match it would be locked out after finishSecret. When
    /// this login may read `mysql.user` and sees such accounts, refuse
    /// before changing anything, naming them. (A login that may not read
    /// `mysql.user` cannot see them; the README says so.)
    async fn refuse_other_host_accounts(&mut self, user: &str) -> Result<()> {
        let rows: std::result::Result<Vec<(String, String)>, _> = self
            .exec_bounded(
                "SELECT CURRENT_USER(), Host FROM mysql.user WHERE User = ? ORDER BY Host",
                (user,),
                "read its host accounts",
            )
            .await?;
        let rows = match rows {
            Ok(rows) => rows,
            Err(mysql_async::Error::Server(e)) if is_access_denied(e.code) => return Ok(()),
            Err(e) => return Err(self.fail("read mysql.user".into())(e)),
        };
        let Some((matched, _)) = rows.first() else {
            return Ok(());
        };
        let matched_host = matched
            .strip_prefix(user)
            .and_then(|rest| rest.strip_prefix('@'))
            .unwrap_or_default()
            .to_string();
        let others: Vec<String> = rows
            .iter()
            .filter(|(_, host)| *host != matched_host)
            .map(|(_, host)| account(user, host))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        Err(Error::Refused {
            endpoint: self.endpoint.to_string(),
            reason: format!(
                "user {user:?} has accounts on several hosts: this login matched {}, and {} would keep the old password, locking out the clients that match them. Drop the accounts you do not need, or rotate with alternating users (the master then sets every host account)",
                account(user, &matched_host),
                others.join(", ")
            ),
        })
    }

    /// The logged-in account's authentication plugin, from `SHOW CREATE USER
    /// CURRENT_USER()` (allowed for oneself without privileges on MySQL
    /// 5.7+ and MariaDB 10.2+); `None` when the server does not say.
    async fn own_plugin(&mut self) -> Option<String> {
        let rows: Vec<String> = self
            .rows_bounded("SHOW CREATE USER CURRENT_USER()", "show its own account")
            .await
            .ok()?
            .ok()?;
        rows.first().and_then(|text| plugin_of_create_user(text))
    }

    /// Whether `user@host` is a clone Rotor began and did not finish: it
    /// stores exactly `password` (a native password hash; other plugins
    /// cannot be compared and are not adopted). The caller has checked that
    /// it holds no privileges.
    async fn half_made_clone(
        &mut self,
        user: &str,
        host: &str,
        password: &SecretString,
    ) -> Result<bool> {
        let rows: std::result::Result<Vec<(Option<String>, Option<String>)>, _> = self
            .exec_bounded(
                "SELECT plugin, authentication_string FROM mysql.user WHERE User = ? AND Host = ?",
                (user, host),
                &format!("read the stored credential of {}", account(user, host)),
            )
            .await?;
        let hash = native_password_hash(password.expose());
        Ok(rows.is_ok_and(|rows| {
            rows.iter().any(|(plugin, stored)| {
                matches!(plugin.as_deref(), Some("mysql_native_password" | "") | None)
                    && stored.as_deref() == Some(hash.as_str())
            })
        }))
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        let action = format!("run {sql:?}");
        let fail = self.fail(action.clone());
        self.drop_bounded(sql, &action).await?.map_err(fail)
    }

    /// Every account named `user`, one per host part.
    async fn accounts(&mut self, user: &str) -> Result<Vec<Account>> {
        let default_roles = match self.version.flavor {
            Flavor::MariaDb => "u.default_role",
            // MySQL 8 keeps default roles in their own table (none before 8).
            Flavor::MySql if self.version.major >= 8 => {
                "(SELECT GROUP_CONCAT(CONCAT('`', REPLACE(d.DEFAULT_ROLE_USER, '`', '``'), '`@`', REPLACE(d.DEFAULT_ROLE_HOST, '`', '``'), '`') ORDER BY d.DEFAULT_ROLE_USER, d.DEFAULT_ROLE_HOST SEPARATOR ', ') FROM mysql.default_roles d WHERE d.USER = u.User AND d.HOST = u.Host)"
            }
            Flavor::MySql => "NULL",
        };
        let sql = format!(
            "SELECT u.Host, u.plugin, CAST(u.ssl_type AS CHAR), u.max_user_connections, CAST(u.ssl_cipher AS CHAR), CAST(u.x509_issuer AS CHAR), CAST(u.x509_subject AS CHAR), {default_roles} FROM mysql.user u WHERE u.User = ? ORDER BY u.Host"
        );
        let action = format!("read mysql.user for {user:?}");
        let fail = self.fail(action.clone());
        let rows: Vec<AccountRow> = self
            .exec_bounded(&sql, (user,), &action)
            .await?
            .map_err(fail)?;
        Ok(rows
            .into_iter()
            .map(
                |(host, plugin, ssl_type, max, cipher, issuer, subject, roles)| Account {
                    host,
                    plugin: plugin.unwrap_or_default(),
                    ssl_type: ssl_type.unwrap_or_default(),
                    max_user_connections: max.unwrap_or(0),
                    ssl_cipher: cipher.unwrap_or_default(),
                    x509_issuer: issuer.unwrap_or_default(),
                    x509_subject: subject.unwrap_or_default(),
                    default_roles: roles.unwrap_or_default(),
                },
            )
            .collect())
    }

    /// Refuses, before any change, to take over the `_clone` of the pair
    /// when Rotor did not make it: every existing account of it must carry
    /// the marker grant ([`ALTERNATE_MARKER_DB`]).
    fn refuse_unmarked_clone(
        &self,
        template: &str,
        alternate: &str,
        wanted: &[Account],
        template_grants: &[Vec<Grant>],
        alternate_grants: &[(String, Vec<Grant>)],
    ) -> Result<()> {
        let marked = |grants: &[Grant]| {
            grants
                .iter()
                .any(|g| matches!(g, Grant::Privileges { object, .. } if is_marker_object(object)))
        };
        let (clone, unmarked): (&str, Vec<&str>) = if alternate.ends_with(CLONE_SUFFIX) {
            (
                alternate,
                alternate_grants
                    .iter()
                    .filter(|(_, g)| !marked(g))
                    .map(|(h, _)| h.as_str())
                    .collect(),
            )
        } else if template.ends_with(CLONE_SUFFIX) {
            (
                template,
                wanted
                    .iter()
                    .zip(template_grants)
                    .filter(|(_, g)| !marked(g))
                    .map(|(a, _)| a.host.as_str())
                    .collect(),
            )
        } else {
            return Ok(());
        };
        let Some(host) = unmarked.first() else {
            return Ok(());
        };
        Err(Error::Refused {
            endpoint: self.endpoint.to_string(),
            reason: format!(
                "account {} exists but is not marked as Rotor's alternate (Rotor never takes over an account it did not make, and an AWS-made or hand-made clone looks the same as any other user). If it is this secret's alternate, mark each of its accounts by hand as an administrator: {}; otherwise rename or drop it",
                account(clone, host),
                marker_grant(clone, host)
            ),
        })
    }

    /// Refuses, before any change, to clone superuser-like powers (also
    /// through roles, followed a few levels deep).
    async fn refuse_privileged(
        &mut self,
        template: &str,
        wanted: &[Account],
        template_grants: &[Vec<Grant>],
    ) -> Result<()> {
        let mut seen_roles = BTreeSet::new();
        for (a, grants) in wanted.iter().zip(template_grants) {
            let mut queue: Vec<(Grant, String)> = grants
                .iter()
                .map(|g| (g.clone(), account(template, &a.host)))
                .collect();
            let mut depth = 0;
            while !queue.is_empty() && depth < 4 {
                let mut next = Vec::new();
                for (grant, holder) in queue {
                    if let Some(reason) = privileged_reason(&grant) {
                        return Err(Error::Refused {
                            endpoint: self.endpoint.to_string(),
                            reason: format!(
                                "{holder} holds {reason}, and Rotor does not copy superuser-like powers onto an alternate user unless the owner opts in: set ROTOR_ALLOW_PRIVILEGED_CLONE=true on the rotation function or \"rotor_allow_privileged_clone\": true in the master secret (never in the app secret)"
                            ),
                        });
                    }
                    if let Grant::Role { role, .. } = &grant
                        && seen_roles.insert(role.clone())
                    {
                        let action = format!("show the grants of role {role}");
                        let fail = self.fail(action.clone());
                        let lines: Vec<String> = self
                            .rows_bounded(&format!("SHOW GRANTS FOR {role}"), &action)
                            .await?
                            .map_err(fail)?;
                        next.extend(
                            lines
                                .iter()
                                .filter_map(|l| parse_grant_of_role(l))
                                .map(|g| (g, format!("{holder} (through role {role})"))),
                        );
                    }
                }
                queue = next;
                depth += 1;
            }
        }
        Ok(())
    }

    async fn grants(&mut self, user: &str, host: &str) -> Result<Vec<String>> {
        let sql = format!("SHOW GRANTS FOR {}", account(user, host));
        let action = format!("show the grants of {}", account(user, host));
        let fail = self.fail(action.clone());
        self.rows_bounded(&sql, &action).await?.map_err(fail)
    }
}

#[async_trait]
impl Session for MySession {
    async fn check(&mut self) -> Result<()> {
        let fail = self.fail("run SELECT 1".into());
        self.drop_bounded("SELECT 1", "run SELECT 1")
            .await?
            .map_err(fail)
    }

    async fn set_own_password(&mut self, user: &str, password: &SecretString) -> Result<()> {
        // Only MySQL 5.7.6+ chooses by plugin; elsewhere the hash always fits.
        let plugin = if self.version.mysql_5_7_6_or_later() {
            self.own_plugin().await
        } else {
            None
        };
        let statements =
            own_password_statements(self.version, plugin.as_deref(), password.expose());
        let action = "change its own password";
        if let Some(first) = statements.first() {
            // No hash form at all: refuse before any other query.
            self.refuse_plaintext_without_tls(first, action)?;
        }
        self.refuse_other_host_accounts(user).await?;
        self.run_first_allowed(&statements, action).await
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
        if self.conn.is_none() {
            return Ok(None);
        }
        let rows: std::result::Result<Vec<(Option<String>, Option<String>)>, _> = self
            .exec_bounded(
                "SELECT plugin, authentication_string FROM mysql.user WHERE User = ?",
                (user,),
                &format!("read the stored credential of {user:?}"),
            )
            .await?;
        let Ok(rows) = rows else {
            return Ok(None); // no privilege to read mysql.user: try a login instead
        };
        if rows.is_empty() {
            return Ok(Some(false));
        }
        let hash = native_password_hash(password.expose());
        let several_hosts = rows.len() > 1;
        let mut all = true;
        for (plugin, stored) in rows {
            match plugin.as_deref() {
                Some("mysql_native_password") | Some("") | None => {
                    all &= stored.as_deref() == Some(hash.as_str());
                }
                // A login would match one host account only: after a crash
                // between host accounts it could say "already set" while
                // others keep the old password. Setting them all again is
                // harmless (the same password), so say "not set".
                _ if several_hosts => return Ok(Some(false)),
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
        policy: ClonePolicy,
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
        // Read everything before changing anything: every refusal below
        // leaves the server as it was.
        let mut template_grants = Vec::with_capacity(wanted.len());
        for a in &wanted {
            let grants: Vec<Grant> = self
                .grants(template, &a.host)
                .await?
                .iter()
                .filter_map(|g| parse_grant(g, template, &a.host))
                .collect();
            template_grants.push(grants);
        }
        let mut alternate_grants = Vec::with_capacity(existing.len());
        for a in &existing {
            let grants: Vec<Grant> = self
                .grants(alternate, &a.host)
                .await?
                .iter()
                .filter_map(|g| parse_grant(g, alternate, &a.host))
                .collect();
            alternate_grants.push((a.host.clone(), grants));
        }
        // Creating the clone takes two statements (CREATE USER, then the
        // marker grant) that no transaction joins: a crash between them
        // leaves an unmarked clone. Such a half-made account holds nothing
        // and has the password Rotor generated for this very rotation, which
        // only Rotor and the readers of this secret know: it is adopted
        // (marked below) rather than refused forever.
        let mut adopted = Vec::new();
        if alternate.ends_with(CLONE_SUFFIX) {
            for (host, grants) in &mut alternate_grants {
                let holds_nothing = grants.iter().all(|g| {
                    matches!(g, Grant::Privileges { privileges, grant_option: false, .. }
                        if privileges.iter().all(|p| p.eq_ignore_ascii_case("USAGE")))
                });
                if holds_nothing && self.half_made_clone(alternate, host, password).await? {
                    adopted.push(host.clone());
                    grants.push(Grant::Privileges {
                        object: format!("{}.*", quote_name(ALTERNATE_MARKER_DB)),
                        privileges: BTreeSet::from(["SELECT".to_string()]),
                        grant_option: false,
                    });
                }
            }
        }
        self.refuse_unmarked_clone(
            template,
            alternate,
            &wanted,
            &template_grants,
            &alternate_grants,
        )?;
        // A password that can only travel as a literal (and then only over
        // TLS) is refused here, before the grants are aligned.
        if let Some(statement) =
            first_plaintext_password_statement(self.version, alternate, &wanted, &existing)
        {
            self.refuse_plaintext_without_tls(
                &statement,
                &format!("set the password of {alternate:?}"),
            )?;
        }
        if !policy.allow_privileged {
            self.refuse_privileged(template, &wanted, &template_grants)
                .await?;
        }
        let alternate_is_clone = alternate.ends_with(CLONE_SUFFIX);
        let mut sync = AlternateSync::default();
        let mut created_hosts = 0;
        for (wanted_account, template_grants) in wanted.iter().zip(&template_grants) {
            let Account {
                host,
                plugin,
                max_user_connections: max_conn,
                ..
            } = wanted_account;
            let have = existing.iter().find(|a| &a.host == host).cloned();
            if adopted.contains(host) {
                let sql = marker_grant(alternate, host);
                self.exec(&sql).await?;
                sync.changes
                    .push(format!("{sql} (adopting a clone left half-made)"));
            }
            let mut have_grants = alternate_grants
                .iter()
                .find(|(h, _)| h == host)
                .map(|(_, g)| g.clone())
                .unwrap_or_default();
            if have.is_none() {
                let statement = create_account_statement(
                    self.version,
                    alternate,
                    host,
                    Some(plugin),
                    password.expose(),
                );
                self.run(&statement, &format!("create {}", account(alternate, host)))
                    .await?;
                created_hosts += 1;
                sync.changes.push(format!(
                    "CREATE USER {} IDENTIFIED …",
                    account(alternate, host)
                ));
                if alternate_is_clone {
                    let sql = marker_grant(alternate, host);
                    self.exec(&sql).await?;
                    sync.changes.push(sql);
                }
                have_grants.clear();
            }
            let want_require = require_clause(wanted_account, self.version);
            let have_require = have
                .as_ref()
                .map_or_else(|| "NONE".to_string(), |a| require_clause(a, self.version));
            if have_require != want_require {
                let sql = format!(
                    "ALTER USER {} REQUIRE {want_require}",
                    account(alternate, host)
                );
                self.exec(&sql).await?;
                sync.changes.push(sql);
            }
            let have_max = have.as_ref().map_or(0, |a| a.max_user_connections);
            if have_max != *max_conn {
                let sql = format!(
                    "ALTER USER {} WITH MAX_USER_CONNECTIONS {max_conn}",
                    account(alternate, host)
                );
                self.exec(&sql).await?;
                sync.changes.push(sql);
            }
            for sql in grant_plan(template_grants, &have_grants, alternate, host) {
                self.exec(&sql).await?;
                sync.changes.push(sql);
            }
            // After the grants: a default role must be granted first.
            let have_roles = have.as_ref().map_or("", |a| a.default_roles.as_str());
            if have_roles != wanted_account.default_roles {
                let sql = default_role_statement(
                    self.version,
                    &account(alternate, host),
                    &wanted_account.default_roles,
                );
                self.exec(&sql).await?;
                sync.changes.push(sql);
            }
        }
        // "Created" only when no account of the alternate existed: the new
        // ones then hold the pending password. When some existed, the
        // caller still sets (and checks) the password of every one.
        sync.created = created_hosts > 0 && existing.is_empty();
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
        let started = Instant::now();
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
            // NULL: the server interrupted the wait (the session's
            // max_statement_time, a KILL): a wait that did not end in time.
            _ => Err(Error::Timeout {
                endpoint,
                what: format!(
                    "wait for the lock {name:?} (the server interrupted GET_LOCK, which answered NULL)"
                ),
                after_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    async fn release_lock(&mut self, name: &str) -> Result<()> {
        let action = format!("release the lock {name:?}");
        let fail = self.fail(action.clone());
        let _: Vec<Option<i64>> = self
            .exec_bounded("SELECT RELEASE_LOCK(?)", (name,), &action)
            .await?
            .map_err(fail)?;
        Ok(())
    }

    async fn users_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>> {
        self.require_roles()?;
        let sql = marked_users_sql(self.version.flavor);
        let fail = self.fail("list dynamic users".into());
        self.exec_bounded(sql, (LEASE_MARKER, prefix, prefix), "list dynamic users")
            .await?
            .map_err(fail)
    }

    async fn end_sessions(&mut self, user: &str, _before: Option<f64>) -> Result<u64> {
        // The process list has no connection start time: every session of
        // the user ends (a revocation is an emergency; clients reconnect).
        let action = format!("list the sessions of {user:?}");
        let fail = self.fail(action.clone());
        let ids: Vec<u64> = self
            .exec_bounded(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ? AND ID <> CONNECTION_ID()",
                (user,),
                &action,
            )
            .await?
            .map_err(fail)?;
        let mut ended = 0;
        for id in ids {
            // A session that ended meanwhile is not an error.
            if self
                .drop_bounded(&format!("KILL CONNECTION {id}"), "end a session")
                .await?
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

/// Who holds ADMIN OPTION on the marker role (parameter: its name), other
/// than the logged-in master (`CURRENT_USER()` is `user@host`) and accounts
/// with SUPER: `(User, Host)` rows.
/// - MariaDB: `mysql.roles_mapping.Admin_option = 'Y'` (MariaDB Knowledge
///   Base, "mysql.roles_mapping Table").
/// - MySQL 8: `mysql.role_edges.WITH_ADMIN_OPTION = 'Y'` (MySQL 8.0
///   Reference Manual, 6.2.3 "Grant Tables"). Accounts with ROLE_ADMIN can
///   grant any role and are not listed here.
pub fn marker_admins_sql(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::MariaDb => {
            "SELECT DISTINCT m.User, m.Host FROM mysql.roles_mapping m WHERE m.Role = ? AND m.Admin_option = 'Y' AND NOT (m.User = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AND m.Host = SUBSTRING_INDEX(CURRENT_USER(), '@', -1)) AND NOT EXISTS (SELECT 1 FROM mysql.user u WHERE u.User = m.User AND u.Host = m.Host AND u.Super_priv = 'Y') ORDER BY m.User, m.Host"
        }
        Flavor::MySql => {
            "SELECT DISTINCT e.TO_USER, e.TO_HOST FROM mysql.role_edges e WHERE e.FROM_USER = ? AND e.FROM_HOST = '%' AND e.WITH_ADMIN_OPTION = 'Y' AND NOT (e.TO_USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AND e.TO_HOST = SUBSTRING_INDEX(CURRENT_USER(), '@', -1)) AND NOT EXISTS (SELECT 1 FROM mysql.user u WHERE u.User = e.TO_USER AND u.Host = e.TO_HOST AND u.Super_priv = 'Y') ORDER BY e.TO_USER, e.TO_HOST"
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
pub fn lease_default_role_statement(
    flavor: Flavor,
    who: &str,
    member_of: &[String],
) -> Option<String> {
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
        let fail_admins = self.fail(format!(
            "list who holds ADMIN OPTION on the lease marker role {LEASE_MARKER}"
        ));
        let admins_sql = marker_admins_sql(self.version.flavor);
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
        // Whoever else holds ADMIN OPTION on the marker (the login that
        // created it gets it) could mark any user as a lease.
        let holders: Vec<(String, String)> = conn
            .exec(admins_sql, (LEASE_MARKER,))
            .await
            .map_err(&fail_admins)?;
        let holders = holders
            .into_iter()
            .map(|(user, host)| {
                let shown = format!("'{user}'@'{host}'");
                (user, shown)
            })
            .collect();
        let untrusted = crate::engine::untrusted_marker_admins(holders, &self.marker_admins);
        if !untrusted.is_empty() {
            return Err(crate::engine::marker_admin_refusal(
                &self.endpoint,
                &untrusted,
            ));
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
        if let Some(sql) = lease_default_role_statement(self.version.flavor, who, &user.member_of) {
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
        for flavor in [Flavor::MariaDb, Flavor::MySql] {
            let sql = marker_admins_sql(flavor);
            assert_eq!(sql.matches('?').count(), 1, "{sql}");
            assert!(sql.contains("CURRENT_USER()") && sql.contains("Super_priv = 'Y'"));
        }
        assert!(marker_admins_sql(Flavor::MariaDb).contains("Admin_option = 'Y'"));
        assert!(marker_admins_sql(Flavor::MySql).contains("WITH_ADMIN_OPTION = 'Y'"));
        let groups = vec!["app_rw".to_string(), "audit".to_string()];
        assert_eq!(
            lease_default_role_statement(Flavor::MySql, "`v_a_1_abcdef`@`%`", &groups).as_deref(),
            Some("SET DEFAULT ROLE `app_rw`, `audit` TO `v_a_1_abcdef`@`%`"),
            "the marker is not made active"
        );
        assert_eq!(
            lease_default_role_statement(Flavor::MariaDb, "`v_a_1_abcdef`@`%`", &groups).as_deref(),
            Some("SET DEFAULT ROLE `app_rw` FOR `v_a_1_abcdef`@`%`")
        );
        assert_eq!(lease_default_role_statement(Flavor::MySql, "u", &[]), None);
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

    /// One row per server family and version: which statement each builder
    /// sends, and whether it carries the plaintext (then only over TLS).
    /// `H` = the native hash only; `P` = the literal (TLS only).
    ///
    /// Manual sections: MySQL 5.6 13.7.1.7 SET PASSWORD ('hash_string'
    /// before 5.7.6); MySQL 5.7 13.7.1.7 SET PASSWORD ("'auth_string'
    /// represents a cleartext password", 5.7.6+) and 13.7.1.1 ALTER USER
    /// (`IDENTIFIED WITH auth_plugin AS 'auth_string'`, needs CREATE USER or
    /// UPDATE on mysql except for one's own password, whose `USER()` form
    /// takes only `IDENTIFIED BY`); MySQL 8.0 15.7.1.10 SET PASSWORD (the
    /// cleartext is hashed by the account's plugin); MySQL 8.4 8.4.1.1
    /// (mysql_native_password deprecated and disabled by default); MySQL 9.0
    /// release notes (mysql_native_password removed); MariaDB SET PASSWORD /
    /// CREATE USER (`'hash'`, `IDENTIFIED BY PASSWORD 'hash'`).
    #[test]
    fn password_statements_per_server_family_and_version() {
        let pw = "p'w\\x";
        let hash = native_password_hash(pw);
        let native = Some(NATIVE);
        let sha2 = Some("caching_sha2_password");
        type Row = (
            &'static str,
            Option<&'static str>,
            &'static [&'static str],
            &'static str,
            &'static str,
        );
        // (version, account plugin, own statements in order, set for other, create)
        let table: &[Row] = &[
            (
                "10.11.6-MariaDB",
                native,
                &["H SET PASSWORD = '*"],
                "H SET PASSWORD FOR `u`@`%` = '*",
                "H CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*",
            ),
            (
                "10.11.6-MariaDB",
                None,
                &["H SET PASSWORD = '*"],
                "H SET PASSWORD FOR `u`@`%` = '*",
                "H CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*",
            ),
            (
                "10.11.6-MariaDB",
                Some("ed25519"),
                // The plugin is never read for a MariaDB single user: one
                // form; a non-native account's refusal (1372) becomes a
                // clear Refused (own_password_refusal).
                &["H SET PASSWORD = '*"],
                "H ALTER USER `u`@`%` IDENTIFIED VIA mysql_native_password USING '*",
                "H CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*",
            ),
            (
                "5.6.51",
                native,
                &["H SET PASSWORD = '*"],
                "H SET PASSWORD FOR `u`@`%` = '*",
                "H CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*",
            ),
            (
                "5.7.5",
                native,
                &["H SET PASSWORD = '*"],
                "H SET PASSWORD FOR `u`@`%` = '*",
                "H CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*",
            ),
            (
                "5.7.6",
                native,
                &[
                    "H ALTER USER CURRENT_USER() IDENTIFIED WITH mysql_native_password AS '*",
                    "P SET PASSWORD = '",
                ],
                "H ALTER USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
                "H CREATE USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
            ),
            (
                "5.7.44-log",
                None,
                &[
                    "H ALTER USER CURRENT_USER() IDENTIFIED WITH mysql_native_password AS '*",
                    "P SET PASSWORD = '",
                ],
                "H ALTER USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
                "H CREATE USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
            ),
            (
                "5.7.44",
                Some("sha256_password"),
                &["P SET PASSWORD = '"],
                "P SET PASSWORD FOR `u`@`%` = '",
                "P CREATE USER `u`@`%` IDENTIFIED WITH sha256_password BY '",
            ),
            (
                "8.0.36",
                native,
                &[
                    "H ALTER USER CURRENT_USER() IDENTIFIED WITH mysql_native_password AS '*",
                    "P SET PASSWORD = '",
                ],
                "H ALTER USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
                "H CREATE USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
            ),
            (
                "8.0.36",
                sha2,
                &["P SET PASSWORD = '"],
                "P SET PASSWORD FOR `u`@`%` = '",
                "P CREATE USER `u`@`%` IDENTIFIED WITH caching_sha2_password BY '",
            ),
            (
                "8.0.36",
                None,
                &["P SET PASSWORD = '"],
                "P SET PASSWORD FOR `u`@`%` = '",
                "P CREATE USER `u`@`%` IDENTIFIED BY '",
            ),
            (
                "8.4.3",
                native,
                &[
                    "H ALTER USER CURRENT_USER() IDENTIFIED WITH mysql_native_password AS '*",
                    "P SET PASSWORD = '",
                ],
                "H ALTER USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
                "H CREATE USER `u`@`%` IDENTIFIED WITH mysql_native_password AS '*",
            ),
            (
                "8.4.3",
                sha2,
                &["P SET PASSWORD = '"],
                "P SET PASSWORD FOR `u`@`%` = '",
                "P CREATE USER `u`@`%` IDENTIFIED WITH caching_sha2_password BY '",
            ),
            (
                "9.1.0",
                native,
                &["P SET PASSWORD = '"],
                "P SET PASSWORD FOR `u`@`%` = '",
                "P CREATE USER `u`@`%` IDENTIFIED WITH mysql_native_password BY '",
            ),
            (
                "9.1.0",
                sha2,
                &["P SET PASSWORD = '"],
                "P SET PASSWORD FOR `u`@`%` = '",
                "P CREATE USER `u`@`%` IDENTIFIED WITH caching_sha2_password BY '",
            ),
        ];
        let check = |row: &str, expected: &str, got: &PasswordStatement| {
            let (kind, prefix) = expected.split_at(2);
            assert!(
                got.sql.starts_with(prefix),
                "{row}: expected {prefix:?}…, got {}",
                got.sql
            );
            match kind {
                "H " => {
                    assert!(!got.carries_plaintext, "{row}: {}", got.sql);
                    assert!(
                        got.sql.contains(&hash) && !got.sql.contains("p'"),
                        "{row}: {}",
                        got.sql
                    );
                }
                _ => {
                    assert!(got.carries_plaintext, "{row}: {}", got.sql);
                    assert!(!got.sql.contains(&hash), "{row}: {}", got.sql);
                }
            }
        };
        for (version, plugin, own, set, create) in table {
            let row = format!("{version} {plugin:?}");
            let got = own_password_statements(v(version), *plugin, pw);
            assert_eq!(got.len(), own.len(), "{row}: {got:?}");
            for (expected, got) in own.iter().zip(&got) {
                check(&row, expected, got);
            }
            check(
                &row,
                set,
                &set_password_statement(v(version), "u", "%", *plugin, pw),
            );
            check(
                &row,
                create,
                &create_account_statement(v(version), "u", "%", *plugin, pw),
            );
        }
        // Dynamic users (no template): the server's default plugin.
        let s = create_user_statement(v("9.1.0"), "u", "%", pw);
        assert!(s.carries_plaintext && s.sql.starts_with("CREATE USER `u`@`%` IDENTIFIED BY '"));
        let s = create_user_statement(v("5.7.44"), "u", "%", pw);
        assert!(!s.carries_plaintext && s.sql.contains("AS '*"));
        // The literal is escaped; the hash is the password's.
        let s = set_password_statement(v("10.11.6-MariaDB"), "a`b", "%", None, pw);
        assert_eq!(s.sql, format!("SET PASSWORD FOR `a``b`@`%` = '{hash}'"));
    }

    fn offline_session(version: &str, tls: bool) -> MySession {
        MySession {
            conn: None,
            endpoint: Arc::from("db.example:3306"),
            marker_admins: Vec::new(),
            version: v(version),
            tls,
            bound: Duration::from_secs(5),
            server_limit: Duration::from_secs(4),
        }
    }

    /// Without TLS, a server with no hash form for the statement gets a
    /// refusal before anything is sent (the session has no connection: any
    /// attempt to send would fail differently).
    #[tokio::test(flavor = "current_thread")]
    async fn literal_password_refused_without_tls_before_anything_is_sent() {
        let password = SecretString::new("new-password".to_string());
        for version in ["9.1.0", "8.0.36"] {
            let err = offline_session(version, false)
                .set_own_password("u", &password)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "Refused", "{version}: {err}");
            let text = err.to_string();
            assert!(
                text.contains("\"ssl\": true") && text.contains("nothing was changed"),
                "{text}"
            );
            assert!(!text.contains("new-password"), "{text}");
            // Over TLS the same plan goes to the server.
            let err = offline_session(version, true)
                .set_own_password("u", &password)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "Database", "{version}: {err}");
        }
        // MariaDB and old MySQL send the hash: no TLS needed.
        for version in ["10.11.6-MariaDB", "5.6.51"] {
            let err = offline_session(version, false)
                .set_own_password("u", &password)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), "Database", "{version}: {err}");
        }
    }

    #[test]
    fn plugin_named_by_show_create_user() {
        assert_eq!(
            plugin_of_create_user("CREATE USER `u`@`%` IDENTIFIED WITH 'caching_sha2_password' AS '$A$005$x' REQUIRE NONE").as_deref(),
            Some("caching_sha2_password")
        );
        assert_eq!(
            plugin_of_create_user(
                "CREATE USER 'root'@'localhost' IDENTIFIED WITH 'mysql_native_password' AS '*24'"
            )
            .as_deref(),
            Some(NATIVE)
        );
        assert_eq!(
            plugin_of_create_user("CREATE USER `u`@`%` IDENTIFIED VIA ed25519 USING 'x'")
                .as_deref(),
            Some("ed25519")
        );
        assert_eq!(
            plugin_of_create_user("CREATE USER `u`@`%` IDENTIFIED BY PASSWORD '*24'"),
            None
        );
    }

    /// A line whose ` TO ` overlaps the verb's own space sliced `line[6..5]`
    /// (found by `scripts/fuzz`, target `grant`), and a non-ASCII character
    /// outside quotes was sliced inside (found while writing that target);
    /// both panicked.
    #[test]
    fn malformed_grant_lines_are_refused_without_a_panic() {
        assert_eq!(parse_grant("GRANT TO `app`@`%`", "app", "%"), None);
        assert_eq!(
            parse_grant_of_role("GRANT TO `app_clone`@`%` WITH ADMIN OPTION"),
            None
        );
        assert_eq!(
            replay_grant("GRANT SELECT ON é.* TO `app`@`%`", "app", "%", "app_clone").as_deref(),
            Some("GRANT SELECT ON é.* TO `app_clone`@`%`")
        );
        assert_eq!(
            parse_grant_of_role("GRANT `rôle` TO r√").map(|_| ()),
            Some(())
        );
    }

    /// Found by `scripts/fuzz` (target `grant`): a "privilege" that is
    /// the word ON plus more (`GRANT ON X,Y ON *.*`) was accepted, and its
    /// replay, with the privileges sorted, no longer parsed as one grant.
    #[test]
    fn a_privilege_list_holding_the_word_on_is_refused() {
        assert_eq!(
            parse_grant("GRANT ON  X,Y ON *.* TO `app`@`%`", "app", "%"),
            None
        );
        assert_eq!(
            replay_grant("GRANT ON  X,Y ON *.* TO `app`@`%`", "app", "%", "app_clone"),
            None
        );
    }

    #[test]
    fn grants_are_replayed_with_grant_option() {
        let r = |line: &str| replay_grant(line, "app", "%", "app_clone");
        assert_eq!(
            r("GRANT SELECT, INSERT ON `shop`.* TO `app`@`%` WITH GRANT OPTION").as_deref(),
            Some("GRANT INSERT, SELECT ON `shop`.* TO `app_clone`@`%` WITH GRANT OPTION")
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

    /// Issue 9 item 10a: a grantee text inside an object name (MySQL 5.7
    /// writes the grantee as 'user'@'host' and names in backticks).
    #[test]
    fn grantee_parsed_from_the_end_of_the_line() {
        let r = |line: &str| replay_grant(line, "app", "%", "app_clone");
        assert_eq!(
            r("GRANT SELECT ON `x TO 'app'@'%'`.* TO 'app'@'%'").as_deref(),
            Some("GRANT SELECT ON `x TO 'app'@'%'`.* TO `app_clone`@`%`")
        );
        assert_eq!(
            r("GRANT SELECT ON `x TO ``app``@``%```.* TO `app`@`%` WITH GRANT OPTION").as_deref(),
            Some("GRANT SELECT ON `x TO ``app``@``%```.* TO `app_clone`@`%` WITH GRANT OPTION")
        );
        assert_eq!(
            r("GRANT `r TO app@%` TO `app`@`%`").as_deref(),
            Some("GRANT `r TO app@%` TO `app_clone`@`%`")
        );
        // About someone else whose object mentions app: not ours.
        assert_eq!(r("GRANT SELECT ON `x TO 'app'@'%'`.* TO 'other'@'%'"), None);
    }

    #[test]
    fn privileged_grants_recognised() {
        let p = |line: &str| {
            parse_grant(line, "app", "%")
                .as_ref()
                .and_then(privileged_reason)
        };
        assert!(p("GRANT CREATE USER ON *.* TO `app`@`%`").is_some());
        assert!(p("GRANT SELECT ON *.* TO `app`@`%` WITH GRANT OPTION").is_some());
        assert!(p("GRANT ALL PRIVILEGES ON *.* TO 'app'@'%'").is_some());
        assert!(p("GRANT SYSTEM_USER,ROLE_ADMIN ON *.* TO `app`@`%`").is_some());
        assert!(p("GRANT UPDATE ON `mysql`.* TO `app`@`%`").is_some());
        assert!(p("GRANT `dba`@`%` TO `app`@`%` WITH ADMIN OPTION").is_some());
        assert!(p("GRANT SELECT, INSERT ON `shop`.* TO `app`@`%` WITH GRANT OPTION").is_none());
        assert!(p("GRANT SELECT ON *.* TO `app`@`%`").is_none());
        assert!(p("GRANT `reader` TO `app`@`%`").is_none());
        assert!(
            parse_grant_of_role("GRANT RELOAD ON *.* TO `r`")
                .as_ref()
                .and_then(privileged_reason)
                .is_some()
        );
    }

    /// MariaDB answers 1372 "Password hash should be 43 characters long"
    /// when a non-native (ed25519) account is given a native hash by `SET
    /// PASSWORD = '<hash>'` (MariaDB SET PASSWORD: the string is the hash for
    /// the account's plugin): a Refused naming the way out, not that text.
    #[test]
    fn mariadb_non_native_own_password_refusal_is_clear() {
        let reason = own_password_refusal(v("10.11.6-MariaDB"), 1372).expect("refused");
        assert!(
            reason.contains("mysql_native_password") && reason.contains("ed25519"),
            "{reason}"
        );
        assert!(own_password_refusal(v("10.11.6-MariaDB"), 1045).is_none());
        assert!(own_password_refusal(v("8.0.36"), 1372).is_none());
    }

    /// Global write privileges reach the `mysql` schema (MySQL 8.0 manual,
    /// 8.2.2 "Privileges Provided by MySQL": a privilege granted on `*.*`
    /// applies to every database, and 8.2.3 "Grant Tables": accounts live in
    /// `mysql.user` / `mysql.global_priv`, so UPDATE there changes any
    /// password); MySQL 8 CREATE ROLE / DROP ROLE (8.2.2: "roles and users are
    /// both accounts", so DROP ROLE can drop users and CREATE ROLE makes
    /// locked accounts). Refused without the opt-in.
    #[test]
    fn global_write_and_role_privileges_are_privileged() {
        let p = |line: &str| {
            parse_grant(line, "app", "%")
                .as_ref()
                .and_then(privileged_reason)
        };
        for privilege in [
            "INSERT",
            "UPDATE",
            "DELETE",
            "CREATE",
            "DROP",
            "ALTER",
            "CREATE ROLE",
            "DROP ROLE",
        ] {
            let line = format!("GRANT SELECT, {privilege} ON *.* TO `app`@`%`");
            assert!(p(&line).is_some_and(|r| r.contains(privilege)), "{line}");
        }
        // The same on one schema is ordinary.
        assert!(
            p("GRANT INSERT, UPDATE, DELETE, CREATE, DROP, ALTER ON `shop`.* TO `app`@`%`")
                .is_none()
        );
    }

    /// `SHOW GRANTS` writes ALL PRIVILEGES and each column grant as one
    /// token (MySQL 8.0 manual, 15.7.7.22 SHOW GRANTS; 15.7.1.6 GRANT
    /// "Column Privileges": `SELECT (col1, col2)`), so tokens cannot be
    /// subtracted: an object whose privileges must shrink or change is reset
    /// (REVOKE ALL PRIVILEGES, GRANT OPTION when held) and given the
    /// template's privileges; one that only gains gets the missing tokens.
    #[test]
    fn grant_plan_resets_objects_whose_privileges_are_not_a_subset() {
        let parse = |user: &str, lines: &[&str]| -> Vec<Grant> {
            lines
                .iter()
                .filter_map(|l| parse_grant(l, user, "%"))
                .collect()
        };
        let all = parse("app", &["GRANT ALL PRIVILEGES ON `shop`.* TO `app`@`%`"]);
        let narrow = parse(
            "app_clone",
            &["GRANT SELECT, INSERT ON `shop`.* TO `app_clone`@`%` WITH GRANT OPTION"],
        );
        assert_eq!(
            grant_plan(&all, &narrow, "app_clone", "%"),
            vec![
                "REVOKE ALL PRIVILEGES ON `shop`.* FROM `app_clone`@`%`",
                "REVOKE GRANT OPTION ON `shop`.* FROM `app_clone`@`%`",
                "GRANT ALL PRIVILEGES ON `shop`.* TO `app_clone`@`%`",
            ]
        );
        let narrow = parse("app", &["GRANT SELECT, INSERT ON `shop`.* TO `app`@`%`"]);
        let all = parse(
            "app_clone",
            &["GRANT ALL PRIVILEGES ON `shop`.* TO `app_clone`@`%`"],
        );
        assert_eq!(
            grant_plan(&narrow, &all, "app_clone", "%"),
            vec![
                "REVOKE ALL PRIVILEGES ON `shop`.* FROM `app_clone`@`%`",
                "GRANT INSERT, SELECT ON `shop`.* TO `app_clone`@`%`",
            ]
        );
        let columns = parse(
            "app",
            &["GRANT SELECT (`a`), INSERT (`c`) ON `shop`.`t` TO `app`@`%`"],
        );
        let wider = parse(
            "app_clone",
            &["GRANT SELECT (`a`, `b`), UPDATE (`c`) ON `shop`.`t` TO `app_clone`@`%`"],
        );
        assert_eq!(
            grant_plan(&columns, &wider, "app_clone", "%"),
            vec![
                "REVOKE ALL PRIVILEGES ON `shop`.`t` FROM `app_clone`@`%`",
                "GRANT INSERT (`c`), SELECT (`a`) ON `shop`.`t` TO `app_clone`@`%`",
            ]
        );
        // Only gaining: the missing tokens, no reset (no window without them).
        let less = parse(
            "app_clone",
            &["GRANT SELECT ON `shop`.* TO `app_clone`@`%`"],
        );
        assert_eq!(
            grant_plan(&narrow, &less, "app_clone", "%"),
            vec!["GRANT INSERT ON `shop`.* TO `app_clone`@`%`"]
        );
    }

    /// MySQL 8 partial revokes (MySQL 8.0 manual, 8.2.12 "Privilege
    /// Restriction Using Partial Revokes": with `partial_revokes=ON`,
    /// `SHOW GRANTS` lists `REVOKE … ON schema.* FROM user` after the
    /// global grant) are replayed after the global grant, and lifted
    /// (schema-level GRANT) when the template has none; grants, GRANT
    /// OPTION and roles the template lacks are revoked.
    #[test]
    fn grant_plan_aligns_both_directions_with_partial_revokes() {
        let parse = |user: &str, lines: &[&str]| -> Vec<Grant> {
            lines
                .iter()
                .filter_map(|l| parse_grant(l, user, "%"))
                .collect()
        };
        let template = parse(
            "app",
            &[
                "GRANT SELECT, INSERT, UPDATE ON *.* TO `app`@`%`",
                "REVOKE INSERT, UPDATE ON `mysql`.* FROM `app`@`%`",
                "GRANT SELECT ON `shop`.* TO `app`@`%`",
                "GRANT `reader`@`%` TO `app`@`%`",
            ],
        );
        let alternate = parse(
            "app_clone",
            &[
                "GRANT USAGE ON *.* TO `app_clone`@`%`",
                "GRANT SELECT ON `rotor_alternate_marker`.* TO `app_clone`@`%`",
                "GRANT SELECT, DELETE ON `shop`.* TO `app_clone`@`%` WITH GRANT OPTION",
                "GRANT `writer`@`%` TO `app_clone`@`%`",
            ],
        );
        assert_eq!(
            grant_plan(&template, &alternate, "app_clone", "%"),
            vec![
                "GRANT INSERT, SELECT, UPDATE ON *.* TO `app_clone`@`%`",
                "REVOKE ALL PRIVILEGES ON `shop`.* FROM `app_clone`@`%`",
                "REVOKE GRANT OPTION ON `shop`.* FROM `app_clone`@`%`",
                "GRANT SELECT ON `shop`.* TO `app_clone`@`%`",
                "GRANT `reader`@`%` TO `app_clone`@`%`",
                "REVOKE `writer`@`%` FROM `app_clone`@`%`",
                "REVOKE INSERT, UPDATE ON `mysql`.* FROM `app_clone`@`%`",
            ]
        );
        // The other way round: the alternate's partial revoke the template lacks is lifted.
        let template = parse("app", &["GRANT SELECT, INSERT ON *.* TO `app`@`%`"]);
        let alternate = parse(
            "app_clone",
            &[
                "GRANT SELECT, INSERT ON *.* TO `app_clone`@`%`",
                "REVOKE INSERT ON `mysql`.* FROM `app_clone`@`%`",
            ],
        );
        assert_eq!(
            grant_plan(&template, &alternate, "app_clone", "%"),
            vec!["GRANT INSERT ON `mysql`.* TO `app_clone`@`%`"]
        );
        // Aligned: nothing to do (the marker is never touched).
        let same = parse("app", &["GRANT SELECT ON `shop`.* TO `app`@`%`"]);
        let aligned = parse(
            "app_clone",
            &[
                "GRANT SELECT ON `shop`.* TO `app_clone`@`%`",
                "GRANT SELECT ON `rotor_alternate_marker`.* TO `app_clone`@`%`",
            ],
        );
        assert!(grant_plan(&same, &aligned, "app_clone", "%").is_empty());
    }

    #[test]
    fn literals_follow_the_sessions_sql_mode() {
        assert!(has_no_backslash_escapes(
            "STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES"
        ));
        assert!(!has_no_backslash_escapes(
            "STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION"
        ));
        let mut version = v("8.0.36");
        let s = set_password_statement(version, "u", "%", None, r"a\b'");
        assert_eq!(s.sql, r"SET PASSWORD FOR `u`@`%` = 'a\\b'''");
        version.no_backslash_escapes = true;
        let s = set_password_statement(version, "u", "%", None, r"a\b'");
        assert_eq!(s.sql, r"SET PASSWORD FOR `u`@`%` = 'a\b'''");
    }

    /// MySQL 8 default roles (manual 15.7.1.1 "ALTER USER Role Options") and
    /// the full REQUIRE clause (15.7.1.1 "ALTER USER SSL/TLS Options").
    #[test]
    fn default_roles_and_require_clause_statements() {
        let mysql = v("8.0.36");
        assert_eq!(
            default_role_statement(mysql, "`u`@`%`", "`r`@`%`, `s`@`%`"),
            "ALTER USER `u`@`%` DEFAULT ROLE `r`@`%`, `s`@`%`"
        );
        assert_eq!(
            default_role_statement(mysql, "`u`@`%`", ""),
            "ALTER USER `u`@`%` DEFAULT ROLE NONE"
        );
        assert_eq!(
            default_role_statement(v("10.11.6-MariaDB"), "`u`@`%`", "r`x"),
            "SET DEFAULT ROLE `r``x` FOR `u`@`%`"
        );
        let a = Account {
            host: "%".into(),
            plugin: String::new(),
            ssl_type: "SPECIFIED".into(),
            max_user_connections: 0,
            ssl_cipher: "AES".into(),
            x509_issuer: "/CN=CA".into(),
            x509_subject: "/CN=it's".into(),
            default_roles: String::new(),
        };
        assert_eq!(
            require_clause(&a, mysql),
            "ISSUER '/CN=CA' AND SUBJECT '/CN=it''s' AND CIPHER 'AES'"
        );
    }

    /// A server that accepts TCP and never says a word: the connect (TCP,
    /// TLS and login handshake) ends in Error::Timeout within the bound.
    #[tokio::test(flavor = "current_thread")]
    async fn silent_server_times_out_in_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds connections, answers nothing; ends with the test's runtime.
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let engine = MysqlEngine::new(ConnectOptions {
            connect_timeout: std::time::Duration::from_millis(300),
            ..ConnectOptions::default()
        });
        for ssl in ["false", "true"] {
            let secret = DbSecret::parse(
                &SecretString::new(format!(
                    r#"{{"engine":"mysql","host":"127.0.0.1","port":{port},"username":"u","password":"p","ssl":{ssl}}}"#
                )),
                "s",
                "v",
                crate::secret::Require::Connection,
            )
            .unwrap();
            let started = std::time::Instant::now();
            let err = match engine.connect(&secret, "current").await {
                Ok(_) => panic!("a silent server cannot log anyone in"),
                Err(e) => e,
            };
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(err.kind(), "Timeout", "ssl {ssl}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("127.0.0.1:{port}")) && text.contains("handshake"),
                "{text}"
            );
        }
    }

    /// Server-side limits per family (MariaDB max_statement_time; MySQL
    /// 5.7.8+ max_execution_time, MySQL 5.7 manual 5.1.7; lock waits on both).
    #[test]
    fn session_limits_per_family() {
        let limit = Duration::from_millis(1200);
        assert_eq!(
            session_limits_statement(v("10.11.6-MariaDB"), limit),
            "SET SESSION lock_wait_timeout = 1, innodb_lock_wait_timeout = 1, max_statement_time = 1.200"
        );
        assert_eq!(
            session_limits_statement(v("8.0.36"), Duration::from_secs(4)),
            "SET SESSION lock_wait_timeout = 4, innodb_lock_wait_timeout = 4, max_execution_time = 4000"
        );
        assert_eq!(
            session_limits_statement(v("5.6.51"), limit),
            "SET SESSION lock_wait_timeout = 1, innodb_lock_wait_timeout = 1"
        );
    }

    /// Logs in with `password` (no TLS) to a fake server whose handshake
    /// offers mysql_native_password and then switches to `plugin`
    /// (NUL-terminated). Returns the login's error and every byte the client
    /// sent, to look for the password in.
    async fn login_through_auth_switch(plugin: &'static [u8], password: &str) -> (Error, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let packet = |seq: u8, payload: &[u8]| {
                let mut out = (payload.len() as u32).to_le_bytes()[..3].to_vec();
                out.push(seq);
                out.extend_from_slice(payload);
                out
            };
            // Protocol 10 handshake: 4.1 protocol, plugin auth, no CLIENT_SSL.
            let mut hello = vec![10u8];
            hello.extend_from_slice(b"8.0.36\0");
            hello.extend_from_slice(&7u32.to_le_bytes());
            hello.extend_from_slice(b"abcdefgh\0");
            hello.extend_from_slice(&0xA209u16.to_le_bytes());
            hello.push(0x21);
            hello.extend_from_slice(&2u16.to_le_bytes());
            hello.extend_from_slice(&0x0038u16.to_le_bytes());
            hello.push(21);
            hello.extend_from_slice(&[0u8; 10]);
            hello.extend_from_slice(b"ijklmnopqrst\0");
            hello.extend_from_slice(b"mysql_native_password\0");
            socket.write_all(&packet(0, &hello)).await.unwrap();
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            received.extend_from_slice(&buf[..n]);
            // "Switch to <plugin>".
            let mut switch = vec![0xFEu8];
            switch.extend_from_slice(plugin);
            socket.write_all(&packet(2, &switch)).await.unwrap();
            // Collect whatever the client sends next, until it closes or goes quiet.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
            received
        });
        let engine = MysqlEngine::new(ConnectOptions {
            connect_timeout: Duration::from_secs(3),
            ..ConnectOptions::default()
        });
        let secret = DbSecret::parse(
            &SecretString::new(format!(
                r#"{{"engine":"mysql","host":"127.0.0.1","port":{port},"username":"app","password":"{password}","ssl":false}}"#
            )),
            "s",
            "v",
            crate::secret::Require::Connection,
        )
        .unwrap();
        let err = match engine.connect(&secret, "current").await {
            Ok(_) => panic!("the fake server never accepts a login"),
            Err(e) => e,
        };
        let received = fake.await.unwrap();
        (err, received)
    }

    /// A fake server without TLS that asks for the password in cleartext
    /// (an attacker who stripped TLS asks for exactly that): Rotor never
    /// sends it and refuses with a clear error.
    #[tokio::test(flavor = "current_thread")]
    async fn cleartext_password_request_refused_without_tls() {
        let password = "cleartext-canary-Pw1";
        let (err, received) = login_through_auth_switch(b"mysql_clear_password\0", password).await;
        assert!(
            !received
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the password was sent in cleartext"
        );
        assert_eq!(err.kind(), "Refused", "{err}");
        assert!(err.to_string().contains("mysql_clear_password"), "{err}");
    }

    /// A fake server that switches to an authentication plugin this build's
    /// driver cannot answer (MariaDB client_ed25519: mysql_common panics
    /// without its `client_ed25519` feature): a clear error, never a panic
    /// of the function, and the password is not sent.
    #[tokio::test(flavor = "current_thread")]
    async fn unsupported_auth_plugin_request_is_an_error_not_a_panic() {
        let password = "cleartext-canary-Pw1";
        let (err, received) = login_through_auth_switch(b"client_ed25519\0", password).await;
        assert!(
            !received
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "the password was sent in cleartext"
        );
        assert_eq!(err.kind(), "Refused", "{err}");
        assert!(err.to_string().contains("authentication"), "{err}");
    }

    /// Alternating users on a server where the alternate's password can
    /// only travel as a literal: known before any grant is aligned, so the
    /// refusal without TLS comes before any change.
    #[test]
    fn alternate_needing_a_literal_is_known_before_any_change() {
        let account = |host: &str, plugin: &str| Account {
            host: host.into(),
            plugin: plugin.into(),
            ssl_type: String::new(),
            max_user_connections: 0,
            ssl_cipher: String::new(),
            x509_issuer: String::new(),
            x509_subject: String::new(),
            default_roles: String::new(),
        };
        let native = [account("%", NATIVE), account("10.%", NATIVE)];
        let sha2 = [
            account("%", NATIVE),
            account("10.%", "caching_sha2_password"),
        ];
        let none: [Account; 0] = [];
        assert!(first_plaintext_password_statement(v("8.0.36"), "a", &native, &native).is_none());
        assert!(first_plaintext_password_statement(v("8.0.36"), "a", &native, &none).is_none());
        assert!(first_plaintext_password_statement(v("8.0.36"), "a", &native, &sha2).is_some());
        assert!(first_plaintext_password_statement(v("8.0.36"), "a", &sha2, &none).is_some());
        assert!(first_plaintext_password_statement(v("9.1.0"), "a", &native, &native).is_some());
        assert!(
            first_plaintext_password_statement(v("10.11.6-MariaDB"), "a", &sha2, &sha2).is_none()
        );
    }
}
