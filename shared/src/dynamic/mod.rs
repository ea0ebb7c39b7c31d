//! Dynamic credentials: logins minted on demand that die on their own, and
//! revocation of any credential the moment an event says so.
//!
//! There is no lease table. The database is the source of truth: a dynamic
//! user's *name* is its lease id and carries its role and expiry,
//! `v_<prefix>_<expiry, base 36 seconds>_<random>` — at most 29 characters,
//! within MySQL's 32 — so listing users with a role's prefix lists its leases,
//! and the sweep needs nothing but the database to know what has expired.
//! A name is not enough to make a user Rotor's: Rotor grants every user it
//! creates the marker role [`crate::engine::LEASE_MARKER`], and lists, sweeps
//! and drops only users that hold it and whose names are exactly one of the
//! role's lease names ([`leases_of_role`]). Users a DBA made with similar
//! names are never touched.
//! PostgreSQL enforces the expiry itself (`VALID UNTIL`); MySQL and MariaDB
//! have no such clause, so the sweep removes their users on time.
//!
//! A *role* is a secret (in Secrets Manager or the local store, under the
//! name prefix `ROTOR_ROLES_PREFIX`, default `rotor/roles/`) describing how to
//! mint: structured fields, no SQL templates (see [`RoleDefinition`]).
//! Objects a dynamic user creates are handed to the role's non-login
//! `owner_role` when it is dropped, so tables outlive the logins that made them.

pub mod issue;
pub mod revoke;
pub mod sweep;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::engine::{ConnectOptions, Engine, Session};
use crate::error::{Error, Result};
use crate::password::PasswordPolicy;
use crate::secret::{DbSecret, Require, SecretString};
use crate::store::{AWSCURRENT, ListFilter, SecretStore, VersionRef};

/// Every dynamic user's name starts with this.
pub const DYNAMIC_PREFIX: &str = "v_";
/// Longest role prefix inside a username.
pub const MAX_PREFIX: usize = 10;
/// Longest lifetime any role may allow (`max_ttl`): 32 days, Vault's
/// default system maximum TTL. Dynamic credentials are meant to be short;
/// a login that must live longer belongs in a rotated static secret.
pub const MAX_TTL: u64 = 32 * 86_400;

/// How to mint credentials for one role.
#[derive(Clone, Debug)]
pub struct RoleDefinition {
    /// The secret's name (e.g. `rotor/roles/ci-deploy`) and ARN.
    pub name: String,
    pub arn: String,
    pub engine: String,
    /// The master secret whose login creates and drops users.
    pub masterarn: String,
    pub dbname: Option<String>,
    /// Group roles granted to every user.
    pub member_of: Vec<String>,
    /// The non-login role that owns what the users create.
    pub owner_role: Option<String>,
    pub default_ttl: u64,
    pub max_ttl: u64,
    /// Connection limit per issued user.
    pub max_connections: Option<u32>,
    /// Lowercase letters and digits, unique per role: the lease id prefix.
    pub username_prefix: String,
    /// IAM ARNs (wildcards `*` and `?`) that may request credentials.
    pub allowed_principals: Vec<String>,
    /// Most unexpired leases the role may have at once; `None`: no cap.
    pub max_active: Option<u32>,
    /// Most unexpired leases one principal may hold of this role at once
    /// (counted by the principal tag in the lease name); `None`: no cap.
    pub max_active_per_principal: Option<u32>,
}

/// A positive whole number field (`max_connections`, `max_active`, …).
fn count_field(doc: &Value, key: &str, bad: &dyn Fn(String) -> Error) -> Result<Option<u32>> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| bad(format!("\"{key}\" must be a positive whole number"))),
        Some(_) => Err(bad(format!("\"{key}\" must be a positive whole number"))),
    }
}

fn string_list(doc: &Value, key: &str, bad: &dyn Fn(String) -> Error) -> Result<Vec<String>> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.contains('\0') => Err(bad(format!(
            "\"{key}\" holds a name with a NUL character, which no database accepts"
        ))),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) if s.contains('\0') => Err(bad(format!(
                    "\"{key}\" holds a name with a NUL character, which no database accepts"
                ))),
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(bad(format!(
                    "\"{key}\" must be a list of non-empty strings"
                ))),
            })
            .collect(),
        Some(_) => Err(bad(format!("\"{key}\" must be a list of strings"))),
    }
}

fn duration_field(doc: &Value, key: &str, bad: &dyn Fn(String) -> Error) -> Result<Option<u64>> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| bad(format!("\"{key}\" must be a positive number of seconds"))),
        Some(Value::String(s)) => crate::time::parse_duration(s)
            .map(Some)
            .map_err(|e| bad(format!("\"{key}\": {e}"))),
        Some(_) => Err(bad(format!(
            "\"{key}\" must be a duration like \"15m\" or seconds"
        ))),
    }
}

/// The short name of a role secret: the last path component, lowercased,
/// letters and digits only, at most [`MAX_PREFIX`] characters.
/// Splits off the roles whose username prefix another role also uses, each
/// as a `BadSecret` naming the other roles and what to do.
pub fn split_colliding_prefixes(
    roles: Vec<RoleDefinition>,
) -> (Vec<RoleDefinition>, Vec<(String, Error)>) {
    let mut by_prefix: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in &roles {
        by_prefix
            .entry(r.username_prefix.clone())
            .or_default()
            .push(r.name.clone());
    }
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for r in roles {
        let sharing = &by_prefix[&r.username_prefix];
        if sharing.len() > 1 {
            let others: Vec<&str> = sharing
                .iter()
                .filter(|n| **n != r.name)
                .map(String::as_str)
                .collect();
            let e = Error::bad_secret(
                &r.name,
                AWSCURRENT,
                format!(
                    "username_prefix {:?} is also the prefix of {}; their leases could not be told apart, so Rotor issues, sweeps and revokes none of them by role until each has a distinct \"username_prefix\"",
                    r.username_prefix,
                    others.join(", ")
                ),
            );
            bad.push((r.name, e));
        } else {
            good.push(r);
        }
    }
    (good, bad)
}

pub fn derived_prefix(name: &str) -> String {
    name.rsplit('/')
        .next()
        .unwrap_or(name)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(MAX_PREFIX)
        .collect()
}

impl RoleDefinition {
    pub fn parse(value: &SecretString, name: &str, arn: &str) -> Result<RoleDefinition> {
        let bad = |reason: String| Error::bad_secret(arn, "role definition", reason);
        let doc: Value = serde_json::from_str(value.expose())
            .map_err(|e| bad(format!("not valid JSON ({e})")))?;
        if !doc.is_object() {
            return Err(bad("not a JSON object".into()));
        }
        for forbidden in ["creation_statements", "revocation_statements", "sql"] {
            if doc.get(forbidden).is_some() {
                return Err(bad(format!(
                    "\"{forbidden}\": raw SQL templates are not supported; use member_of and owner_role"
                )));
            }
        }
        let text = |key: &str| -> Result<Option<String>> {
            match doc.get(key) {
                None | Some(Value::Null) => Ok(None),
                // See `DbSecret::parse`: drivers disagree about a NUL.
                Some(Value::String(s)) if s.contains('\0') => Err(bad(format!(
                    "\"{key}\" contains a NUL character, which no database accepts in a name"
                ))),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("\"{key}\" must be a non-empty string"))),
            }
        };
        let engine = text("engine")?.ok_or_else(|| bad("the key \"engine\" is missing".into()))?;
        if !crate::engine::known_engine_keys().contains(&engine.as_str()) {
            return Err(bad(format!(
                "engine {engine:?} is not supported; use one of {}",
                crate::engine::known_engine_keys().join(", ")
            )));
        }
        let masterarn = text("masterarn")?.ok_or_else(|| {
            bad(
                "the key \"masterarn\" is missing: name the master secret that creates users"
                    .into(),
            )
        })?;
        let default_ttl = duration_field(&doc, "default_ttl", &bad)?.unwrap_or(3600);
        let max_ttl = duration_field(&doc, "max_ttl", &bad)?.unwrap_or(default_ttl.max(86_400));
        if max_ttl > MAX_TTL || default_ttl > MAX_TTL {
            return Err(bad(format!(
                "max_ttl {} (or default_ttl {}) is longer than Rotor's maximum of {}; use a rotated static secret for longer-lived logins",
                crate::time::format_duration(max_ttl),
                crate::time::format_duration(default_ttl),
                crate::time::format_duration(MAX_TTL)
            )));
        }
        if default_ttl > max_ttl {
            return Err(bad(format!(
                "default_ttl {} is longer than max_ttl {}",
                crate::time::format_duration(default_ttl),
                crate::time::format_duration(max_ttl)
            )));
        }
        let max_connections = count_field(&doc, "max_connections", &bad)?;
        let max_active = count_field(&doc, "max_active", &bad)?;
        let max_active_per_principal = count_field(&doc, "max_active_per_principal", &bad)?;
        let username_prefix = match text("username_prefix")? {
            Some(p) => {
                if p.is_empty()
                    || p.len() > MAX_PREFIX
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                {
                    return Err(bad(format!(
                        "\"username_prefix\" {p:?} must be 1–{MAX_PREFIX} lowercase letters or digits"
                    )));
                }
                p
            }
            None => derived_prefix(name),
        };
        if username_prefix.is_empty() {
            return Err(bad(
                "cannot derive a username prefix from the name; set \"username_prefix\"".into(),
            ));
        }
        let member_of = string_list(&doc, "member_of", &bad)?;
        let allowed_principals = string_list(&doc, "allowed_principals", &bad)?;
        Ok(RoleDefinition {
            name: name.to_string(),
            arn: arn.to_string(),
            engine,
            masterarn,
            dbname: text("dbname")?,
            member_of,
            owner_role: text("owner_role")?,
            default_ttl,
            max_ttl,
            max_connections,
            username_prefix,
            allowed_principals,
            max_active,
            max_active_per_principal,
        })
    }

    /// The lifetime granted for a requested `ttl` (`None`: the role's
    /// default) and the expiry it gives from `now`: `(ttl, expires_at)`.
    /// A zero ttl, one above `max_ttl`, or an expiry beyond the clock's
    /// range is refused.
    pub fn lease_expiry(&self, ttl: Option<u64>, now: u64) -> Result<(u64, u64)> {
        let ttl = ttl.unwrap_or(self.default_ttl);
        if ttl == 0 {
            return Err(Error::BadRequest(format!(
                "ttl 0 gives a credential that is expired when issued; ask for at least 1s (role {}'s default is {})",
                self.name,
                crate::time::format_duration(self.default_ttl)
            )));
        }
        if ttl > self.max_ttl {
            return Err(Error::BadRequest(format!(
                "ttl {} is longer than role {}'s max_ttl {}; ask for at most {}",
                crate::time::format_duration(ttl),
                self.name,
                crate::time::format_duration(self.max_ttl),
                crate::time::format_duration(self.max_ttl)
            )));
        }
        let expires_at = now.checked_add(ttl).ok_or_else(|| {
            Error::BadRequest(format!(
                "ttl {} from now is beyond the clock's range; ask for at most {}",
                crate::time::format_duration(ttl),
                crate::time::format_duration(self.max_ttl)
            ))
        })?;
        Ok((ttl, expires_at))
    }

    /// The prefix every user of this role carries.
    pub fn user_prefix(&self) -> String {
        format!("{DYNAMIC_PREFIX}{}_", self.username_prefix)
    }

    /// Whether issuing must count this role's leases first.
    pub fn has_caps(&self) -> bool {
        self.max_active.is_some() || self.max_active_per_principal.is_some()
    }

    /// The server-side lock that serialises issuing for this role, so two
    /// concurrent issues cannot both pass the count (the lease prefix is
    /// what the users of one role share on one server).
    pub fn issue_lock_name(&self) -> String {
        format!("rotor_issue_{}", self.username_prefix)
    }

    /// Refuses an issue for the caller tagged `tag` when `leases` (this
    /// role's leases that exist now) already reach a cap. Every lease that
    /// still exists counts, expired or not, until a revoke or the sweep
    /// drops it: on MySQL/MariaDB an expired user still logs in until then,
    /// and on PostgreSQL sessions opened before `VALID UNTIL` stay open. So
    /// short TTLs cannot be used to hold more than the cap at once.
    pub fn check_caps(&self, leases: &[Lease], tag: &str) -> Result<()> {
        let active: Vec<&Lease> = leases.iter().collect();
        if let Some(cap) = self.max_active
            && active.len() >= cap as usize
        {
            return Err(Error::TooManyLeases {
                role: self.name.clone(),
                cap: format!("max_active {cap}"),
                active: active.len(),
            });
        }
        if let Some(cap) = self.max_active_per_principal {
            let mine = active.iter().filter(|l| l.principal_tag() == tag).count();
            if mine >= cap as usize {
                return Err(Error::TooManyLeases {
                    role: self.name.clone(),
                    cap: format!("max_active_per_principal {cap} (for this caller's principal)"),
                    active: mine,
                });
            }
        }
        Ok(())
    }
}

/// What a dynamic username says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub username: String,
    /// The role's username prefix.
    pub prefix: String,
    /// Seconds since the epoch.
    pub expires_at: u64,
}

impl Lease {
    /// The principal tag: the first [`PRINCIPAL_TAG_LEN`] characters of the
    /// name's random part (see [`principal_tag`]). Leases issued before
    /// tags existed carry random characters here: they count against
    /// whichever principal's tag they happen to equal, until they expire.
    pub fn principal_tag(&self) -> &str {
        let random = &self.username[self.username.len().saturating_sub(RANDOM_LEN)..];
        &random[..PRINCIPAL_TAG_LEN.min(random.len())]
    }
}

/// `v_<prefix>_<expiry base 36>_<6 random base-36 characters>`.
pub fn lease_username(prefix: &str, expires_at: u64) -> Result<String> {
    tagged_lease_username(prefix, expires_at, &random_base36(PRINCIPAL_TAG_LEN)?)
}

/// `v_<prefix>_<expiry base 36>_<tag><3 random base-36 characters>`: the
/// name of a lease issued to the principal whose [`principal_tag`] is `tag`.
/// The shape is the one [`parse_lease`] accepts (six lowercase letters or
/// digits after the expiry).
pub fn tagged_lease_username(prefix: &str, expires_at: u64, tag: &str) -> Result<String> {
    let random = random_base36(RANDOM_LEN - PRINCIPAL_TAG_LEN)?;
    Ok(format!(
        "{DYNAMIC_PREFIX}{prefix}_{}_{tag}{random}",
        to_base36(expires_at)
    ))
}

fn random_base36(len: usize) -> Result<String> {
    let mut bytes = vec![0u8; len];
    rand::TryRng::try_fill_bytes(&mut rand::rngs::SysRng, &mut bytes)
        .map_err(|e| Error::Config(format!("the OS random number generator failed: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| char::from_digit(u32::from(*b) % 36, 36).unwrap_or('0'))
        .collect())
}

/// Length of the principal tag at the start of a lease name's random part.
pub const PRINCIPAL_TAG_LEN: usize = 3;

/// The tag that marks the leases of one principal of one role: the first
/// [`PRINCIPAL_TAG_LEN`] base-36 digits of SHA-256 over the role's
/// username prefix and the caller's canonical principal
/// ([`crate::principal::canonical_principal`]: every session of an IAM role
/// is that role).
///
/// Why it cannot be gamed: the caller's ARN comes from the signed request,
/// never from the body, and the tag is computed by Rotor; the caller
/// chooses nothing in the name. A new session name is the same principal,
/// so the count cannot be escaped that way. Distinct principals share a tag
/// with probability 1/46656: their leases then count together, which can
/// refuse early but never lets anyone hold more than the cap. Only a
/// caller who may create IAM principals that `allowed_principals` admits
/// could aim at a collision or spread leases over many principals, and
/// such a caller is inside the trust boundary: `max_active` bounds the role
/// whatever the principals.
pub fn principal_tag(username_prefix: &str, caller_arn: &str) -> String {
    use sha2::Digest;
    let principal = crate::principal::canonical_principal(caller_arn);
    let digest = sha2::Sha256::digest(format!("{username_prefix}\0{principal}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let mut n = u64::from_be_bytes(first) % 36u64.pow(PRINCIPAL_TAG_LEN as u32);
    let mut tag = vec!['0'; PRINCIPAL_TAG_LEN];
    for slot in tag.iter_mut().rev() {
        *slot = char::from_digit((n % 36) as u32, 36).unwrap_or('0');
        n /= 36;
    }
    tag.into_iter().collect()
}

fn to_base36(mut n: u64) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit((n % 36) as u32, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}

/// Length of a lease name's random part.
const RANDOM_LEN: usize = 6;

/// Reads a dynamic username; `None` for any other name.
///
/// The name must be exactly what [`lease_username`] makes: a prefix of 1 to
/// [`MAX_PREFIX`] lowercase letters or digits, an expiry in canonical base 36
/// (lowercase, no leading zero, so it round-trips) and six lowercase
/// letters or digits. A name that merely resembles one (`v_orders_2024_x`,
/// `v_orders_00ab_abcdef`, `v_a_b_1_abcdef`) is not a lease. Shape alone does
/// not make a user Rotor's: the engines also require the lease marker
/// ([`crate::engine::LEASE_MARKER`]) that Rotor sets when it creates one.
pub fn parse_lease(username: &str) -> Option<Lease> {
    let lower_alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let rest = username.strip_prefix(DYNAMIC_PREFIX)?;
    let mut parts = rest.split('_');
    let (prefix, expiry, random) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || prefix.is_empty()
        || prefix.len() > MAX_PREFIX
        || !lower_alnum(prefix)
        || random.len() != RANDOM_LEN
        || !lower_alnum(random)
        || expiry.is_empty()
        || !lower_alnum(expiry)
    {
        return None;
    }
    let expires_at = u64::from_str_radix(expiry, 36).ok()?;
    if to_base36(expires_at) != expiry {
        return None;
    }
    Some(Lease {
        username: username.to_string(),
        prefix: prefix.to_string(),
        expires_at,
    })
}

impl RoleDefinition {
    /// The lease `username` stands for, when it is exactly one of this
    /// role's lease names (see [`parse_lease`]; the prefix must be the
    /// role's own, not merely start with it).
    pub fn lease_of(&self, username: &str) -> Option<Lease> {
        parse_lease(username).filter(|l| l.prefix == self.username_prefix)
    }
}

/// This role's leases that exist now: users that carry Rotor's lease marker
/// (the engine lists only those) and whose names are exactly this role's
/// lease names. Everything else with a similar name is left alone.
pub async fn leases_of_role(
    session: &mut dyn Session,
    role: &RoleDefinition,
) -> Result<Vec<Lease>> {
    Ok(session
        .users_with_prefix(&role.user_prefix())
        .await?
        .iter()
        .filter_map(|user| role.lease_of(user))
        .collect())
}

/// Whether a secret name is a role's: under the roles prefix, with a name
/// of its own after it.
pub fn is_role_name(name: &str, roles_prefix: &str) -> bool {
    name.strip_prefix(roles_prefix)
        .is_some_and(|rest| !rest.is_empty())
}

/// Database roles that make whoever holds them a superuser in all but name,
/// or let them read, write or run files on the server, or end other
/// sessions. Compared without regard to case.
///
/// PostgreSQL: the `pg_*` server-file, signal and all-data roles
/// (PostgreSQL 15 manual, "Predefined Roles"), RDS's `rds_superuser`,
/// `rds_replication`, `rds_password` and `rdsadmin`, Azure's
/// `azure_pg_admin`/`azure_superuser`, Cloud SQL's `cloudsqlsuperuser`,
/// AlloyDB's `alloydbsuperuser`. MySQL and MariaDB: `root`, RDS's
/// `rdsadmin`, Aurora MySQL 3's `rds_superuser_role`, Azure's
/// `azure_superuser`, the `mysql.*` system accounts. MySQL roles whose
/// *privileges* are administrative under another name are not caught here.
pub const PRIVILEGED_ROLES: &[&str] = &[
    "postgres",
    "rds_superuser",
    "rdsadmin",
    "rds_replication",
    "rds_password",
    "rdstopmgr",
    "pg_execute_server_program",
    "pg_write_server_files",
    "pg_read_server_files",
    "pg_signal_backend",
    "pg_signal_autovacuum_worker",
    "pg_read_all_data",
    "pg_write_all_data",
    "pg_checkpoint",
    "pg_create_subscription",
    "pg_use_reserved_connections",
    "azure_pg_admin",
    "azure_superuser",
    "cloudsqlsuperuser",
    "cloudsqladmin",
    "alloydbsuperuser",
    "alloydbadmin",
    "root",
    "rds_superuser_role",
    "mysql.sys",
    "mysql.session",
    "mysql.infoschema",
    "mariadb.sys",
];

/// Whether `name` is one of [`PRIVILEGED_ROLES`] (any case).
pub fn is_privileged_role(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    PRIVILEGED_ROLES.contains(&name.as_str())
}

/// `ROTOR_ALLOW_PRIVILEGED_ROLES=true`: roles may name [`PRIVILEGED_ROLES`].
pub fn allow_privileged_roles_from_env() -> bool {
    std::env::var("ROTOR_ALLOW_PRIVILEGED_ROLES")
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl RoleDefinition {
    /// The privileged roles among `member_of` and `owner_role`.
    pub fn privileged_roles(&self) -> Vec<String> {
        self.member_of
            .iter()
            .chain(self.owner_role.as_ref())
            .filter(|r| is_privileged_role(r))
            .cloned()
            .collect()
    }

    /// Refuses a role whose `owner_role` is one of [`PRIVILEGED_ROLES`]
    /// unless `allowed`: dropping its users would hand what they own to
    /// that role. `member_of` is not checked here: a role edited to grant
    /// something privileged must still have its users dropped.
    pub fn check_owner_role(&self, allowed: bool) -> Result<()> {
        match &self.owner_role {
            Some(owner) if !allowed && is_privileged_role(owner) => Err(Error::Refused {
                endpoint: format!("role {}", self.name),
                reason: format!(
                    "owner_role names {owner}, which gives superuser-like or server-file powers, and dropping this role's users would hand what they own to it (REASSIGN OWNED). Set owner_role to a plain NOLOGIN role in the role secret (the next sweep then drops them), or set ROTOR_ALLOW_PRIVILEGED_ROLES=true if the deployment means it"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses a role that grants [`PRIVILEGED_ROLES`] unless `allowed`.
    pub fn check_privileges(&self, allowed: bool) -> Result<()> {
        let privileged = self.privileged_roles();
        if privileged.is_empty() || allowed {
            return Ok(());
        }
        Err(Error::Refused {
            endpoint: format!("role {}", self.name),
            reason: format!(
                "member_of/owner_role names {}, which gives superuser-like or server-file powers; remove it, or set ROTOR_ALLOW_PRIVILEGED_ROLES=true on the function if the deployment means to hand these out",
                privileged.join(", ")
            ),
        })
    }
}

pub use crate::principal::principal_allowed;

/// Who asked, as established by the caller's transport (never the body).
#[derive(Clone, Debug, Serialize)]
pub struct Caller {
    pub arn: String,
    /// `function-url`, `cli`, `event`, `schedule`.
    pub via: &'static str,
}

/// Roles, master logins and engines: what every dynamic operation needs.
pub struct Dynamic {
    store: Arc<dyn SecretStore>,
    options: ConnectOptions,
    roles_prefix: String,
    /// `ROTOR_ALLOW_PRIVILEGED_ROLES`.
    allow_privileged_roles: bool,
    /// Which static secrets revocation may act on.
    revoke_scope: revoke::RevokeScope,
    /// Role definitions read recently, by the id they were asked for: a warm
    /// function serves repeated requests without Secrets Manager calls.
    role_cache:
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, RoleDefinition)>>,
    /// `ROTOR_ROLE_CACHE_SECS` (60; 0 turns the cache off).
    role_cache_ttl: std::time::Duration,
}

/// Most role definitions a warm function keeps.
const ROLE_CACHE_MAX: usize = 256;

impl Dynamic {
    pub fn new(store: Arc<dyn SecretStore>, options: ConnectOptions) -> Self {
        Dynamic {
            store,
            options,
            roles_prefix: std::env::var("ROTOR_ROLES_PREFIX")
                .unwrap_or_else(|_| "rotor/roles/".into()),
            allow_privileged_roles: allow_privileged_roles_from_env(),
            revoke_scope: revoke::RevokeScope::from_env(),
            role_cache: std::sync::Mutex::default(),
            role_cache_ttl: std::time::Duration::from_secs(
                std::env::var("ROTOR_ROLE_CACHE_SECS")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(60),
            ),
        }
    }

    /// How long a role definition is reused; zero reads it every time.
    pub fn with_role_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.role_cache_ttl = ttl;
        self
    }

    pub fn with_revoke_scope(mut self, scope: revoke::RevokeScope) -> Self {
        self.revoke_scope = scope;
        self
    }

    pub fn revoke_scope(&self) -> &revoke::RevokeScope {
        &self.revoke_scope
    }

    pub fn with_allow_privileged_roles(mut self, allowed: bool) -> Self {
        self.allow_privileged_roles = allowed;
        self
    }

    pub fn allow_privileged_roles(&self) -> bool {
        self.allow_privileged_roles
    }

    pub fn with_roles_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.roles_prefix = prefix.into();
        self
    }

    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    pub fn roles_prefix(&self) -> &str {
        &self.roles_prefix
    }

    /// A role by ARN, full name or short name under the roles prefix.
    ///
    /// Only a secret whose *name* is under the roles prefix is a role: a
    /// short name is looked up there and nowhere else, and an ARN is
    /// described and its name checked. Any other JSON secret with `engine`
    /// and `masterarn` (an alternating-users app secret has both) is not a
    /// role, whoever may write it. Every "no such role" is
    /// [`Error::NotFound`].
    ///
    /// Definitions are reused for `ROTOR_ROLE_CACHE_SECS` (60 s): a change to
    /// a role (a principal removed) takes effect within that time.
    pub async fn role(&self, id: &str) -> Result<RoleDefinition> {
        if !self.role_cache_ttl.is_zero()
            && let Ok(cache) = self.role_cache.lock()
            && let Some((at, role)) = cache.get(id)
            && at.elapsed() < self.role_cache_ttl
        {
            return Ok(role.clone());
        }
        let role = self.read_role(id).await?;
        if !self.role_cache_ttl.is_zero()
            && let Ok(mut cache) = self.role_cache.lock()
        {
            if cache.len() >= ROLE_CACHE_MAX {
                let ttl = self.role_cache_ttl;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= ROLE_CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(id.to_string(), (std::time::Instant::now(), role.clone()));
        }
        Ok(role)
    }

    async fn read_role(&self, id: &str) -> Result<RoleDefinition> {
        let candidate = if id.starts_with("arn:") || id.starts_with(&self.roles_prefix) {
            id.to_string()
        } else {
            format!("{}{id}", self.roles_prefix)
        };
        let not_a_role = |why: String| Error::NotFound {
            what: format!("role {id} ({why})"),
        };
        let meta = match self.store.describe(&candidate).await {
            Ok(meta) => meta,
            Err(Error::NotFound { .. }) => {
                return Err(not_a_role(format!("no secret {candidate}")));
            }
            Err(e) => return Err(e),
        };
        if !is_role_name(&meta.name, &self.roles_prefix) {
            return Err(not_a_role(format!(
                "secret {} is not under the roles prefix {}",
                meta.name, self.roles_prefix
            )));
        }
        let value = self
            .store
            .get(&meta.arn, VersionRef::Stage(AWSCURRENT))
            .await?
            .ok_or_else(|| not_a_role(format!("{} has no AWSCURRENT value", meta.name)))?;
        RoleDefinition::parse(&value, &meta.name, &meta.arn)
    }

    /// Every role under the prefix; definitions that do not parse are
    /// returned as errors beside the good ones.
    pub async fn roles(&self) -> Result<(Vec<RoleDefinition>, Vec<(String, Error)>)> {
        let listed = self
            .store
            .list_secrets(&ListFilter {
                name_prefix: Some(self.roles_prefix.clone()),
                tag_key: None,
            })
            .await?;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for s in listed {
            let value = match self.store.get(&s.arn, VersionRef::Stage(AWSCURRENT)).await {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    bad.push((s.name, e));
                    continue;
                }
            };
            match RoleDefinition::parse(&value, &s.name, &s.arn) {
                Ok(r) => good.push(r),
                Err(e) => bad.push((s.name, e)),
            }
        }
        // Leases carry only the username prefix: two roles sharing one could
        // not tell their users apart (a revocation or sweep of one would act
        // on the other's). Both are refused until one is renamed.
        let (good, colliding) = split_colliding_prefixes(good);
        bad.extend(colliding);
        Ok((good, bad))
    }

    /// Refuses `role` when another role shares its username prefix (see
    /// [`split_colliding_prefixes`]); lists every role once. (`role` itself
    /// parsed, so if the listing sets it aside, that is why.)
    pub async fn check_prefix_unique(&self, role: &RoleDefinition) -> Result<()> {
        let (_, bad) = self.roles().await?;
        match bad.into_iter().find(|(name, _)| *name == role.name) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The engine for a role or secret's `engine` value.
    pub fn engine(&self, key: &str) -> Result<Arc<dyn Engine>> {
        crate::engine::for_engine_key(key, &self.options).ok_or_else(|| {
            Error::Config(format!(
                "engine {key:?} is not supported by this build; supported: {}",
                crate::engine::known_engine_keys().join(", ")
            ))
        })
    }

    /// The master secret of a role, connected to the role's database.
    pub async fn master_secret(&self, role: &RoleDefinition) -> Result<DbSecret> {
        let value = self
            .store
            .get(&role.masterarn, VersionRef::Stage(AWSCURRENT))
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("master secret {} of role {}", role.masterarn, role.name),
            })?;
        let master = DbSecret::parse(&value, &role.masterarn, AWSCURRENT, Require::Connection)?;
        Ok(match &role.dbname {
            Some(db) => master.with_dbname(Some(db.clone())),
            None => master,
        })
    }

    /// A master session for a role.
    pub async fn master_session(
        &self,
        role: &RoleDefinition,
    ) -> Result<(Box<dyn Session>, DbSecret)> {
        let master = self.master_secret(role).await?;
        let engine = self.engine(&role.engine)?;
        let session = engine.connect(&master, "master").await?;
        Ok((session, master))
    }

    /// The `owner_role` to pass to a drop of `role`'s users, checked first:
    /// on an engine that hands a dropped user's objects to it, a
    /// privileged `owner_role` (the role may have been edited since its
    /// users were issued) is refused unless the deployment allows it, and
    /// then nothing may be dropped.
    pub fn owner_role_for_drop<'a>(&self, role: &'a RoleDefinition) -> Result<Option<&'a str>> {
        if self.engine(&role.engine)?.hands_objects_to_owner_role() {
            role.check_owner_role(self.allow_privileged_roles)?;
        }
        Ok(role.owner_role.as_deref())
    }

    /// A new password for a user of this engine.
    pub fn password(&self, engine_key: &str) -> Result<SecretString> {
        let engine = self.engine(engine_key)?;
        PasswordPolicy::from_env(engine.default_excluded_characters())?.generate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_cap_fields_are_positive_whole_numbers() {
        let parse =
            |doc: &str| RoleDefinition::parse(&SecretString::new(doc), "rotor/roles/r", "arn:r");
        let ok = parse(
            r#"{"engine":"postgres","masterarn":"m","max_active":5,"max_active_per_principal":2}"#,
        )
        .unwrap();
        assert_eq!(
            (ok.max_active, ok.max_active_per_principal),
            (Some(5), Some(2))
        );
        let none = parse(r#"{"engine":"postgres","masterarn":"m"}"#).unwrap();
        assert_eq!(
            (none.max_active, none.max_active_per_principal),
            (None, None)
        );
        for field in ["max_active", "max_active_per_principal"] {
            for bad in ["0", "-1", "1.5", "\"3\"", "true", "4294967296"] {
                let doc = format!(r#"{{"engine":"postgres","masterarn":"m","{field}":{bad}}}"#);
                let e = parse(&doc).expect_err(&doc);
                assert!(
                    e.to_string().contains("positive whole number"),
                    "{doc}: {e}"
                );
            }
        }
    }

    #[test]
    fn principal_tags_name_the_principal_not_the_session() {
        let a = principal_tag("ord", "arn:aws:sts::123456789012:assumed-role/ci/run-1");
        assert_eq!(a.len(), PRINCIPAL_TAG_LEN);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "{a}"
        );
        assert_eq!(
            a,
            principal_tag("ord", "arn:aws:sts::123456789012:assumed-role/ci/run-2")
        );
        assert_eq!(a, principal_tag("ord", "arn:aws:iam::123456789012:role/ci"));
        assert_ne!(
            a,
            principal_tag("ord", "arn:aws:sts::123456789012:assumed-role/cd/run-1")
        );
        let name = tagged_lease_username("ord", 1_900_000_000, &a).unwrap();
        let lease = parse_lease(&name).expect("a tagged name is a lease name");
        assert_eq!(lease.principal_tag(), a);
    }

    #[test]
    fn caps_count_every_existing_lease_and_the_callers_own() {
        let role = RoleDefinition::parse(
            &SecretString::new(r#"{"engine":"postgres","masterarn":"m","max_active":3,"max_active_per_principal":2}"#),
            "rotor/roles/ord",
            "arn:r",
        )
        .unwrap();
        let now = 1_900_000_000;
        let mine = principal_tag("ord", "arn:aws:iam::1:role/me");
        let theirs = principal_tag("ord", "arn:aws:iam::1:role/them");
        assert_ne!(mine, theirs);
        let lease = |tag: &str, expires_at: u64| {
            parse_lease(&tagged_lease_username("ord", expires_at, tag).unwrap()).unwrap()
        };
        role.check_caps(&[lease(&mine, now + 60), lease(&theirs, now + 60)], &mine)
            .expect("1 of mine, 2 of 3");
        // An expired lease not yet dropped still counts, for the role and
        // for its principal: it may still log in (MySQL) or hold sessions.
        let leases = vec![
            lease(&mine, now + 60),
            lease(&mine, now - 1),
            lease(&theirs, now + 60),
        ];
        let e = role.check_caps(&leases, &mine).expect_err("role cap");
        assert!(e.to_string().contains("max_active 3"), "{e}");
        let leases = vec![lease(&mine, now + 60), lease(&mine, now - 3600)];
        let e = role.check_caps(&leases, &mine).expect_err("principal cap");
        assert!(e.to_string().contains("max_active_per_principal 2"), "{e}");
        role.check_caps(&leases, &theirs)
            .expect("the other principal is not counted");
    }

    #[test]
    fn lease_names_fit_mysql_and_round_trip() {
        let name = lease_username("abcdefghij", 4_102_444_800).unwrap();
        assert!(name.len() <= 32, "{name} is {} characters", name.len());
        let lease = parse_lease(&name).unwrap();
        assert_eq!(lease.prefix, "abcdefghij");
        assert_eq!(lease.expires_at, 4_102_444_800);
        assert!(parse_lease("app_user").is_none());
        assert!(parse_lease("v_x_y").is_none());
    }

    /// A `Dynamic` over an in-memory store holding one role (whose master
    /// secret does not exist: nothing here may get as far as connecting).
    fn dynamic_with_role(role_json: &str) -> Dynamic {
        let store = crate::store::LocalStore::in_memory();
        store
            .put_current("rotor/roles/ttl", &SecretString::new(role_json))
            .unwrap();
        Dynamic::new(Arc::new(store), ConnectOptions::default()).with_roles_prefix("rotor/roles/")
    }

    fn cli() -> Caller {
        Caller {
            arn: "cli:test".into(),
            via: "cli",
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ttl_zero_is_refused() {
        let dynamic = dynamic_with_role(r#"{"engine":"postgres","masterarn":"missing"}"#);
        let err = dynamic
            .issue("ttl", Some(0), &cli(), false)
            .await
            .expect_err("a zero ttl");
        assert_eq!(err.kind(), "BadRequest", "{err}");
        assert!(err.to_string().contains("ttl"), "{err}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn huge_ttl_fails_cleanly_without_overflow() {
        // A role that allows anything, and a caller that asks for everything:
        // now + ttl must not overflow (a panic, or a wrapped expiry in 1970).
        let dynamic = dynamic_with_role(
            r#"{"engine":"postgres","masterarn":"missing","default_ttl":60,"max_ttl":18446744073709551615}"#,
        );
        let err = dynamic
            .issue("ttl", Some(u64::MAX), &cli(), false)
            .await
            .expect_err("an overflowing ttl");
        assert!(
            matches!(err.kind(), "BadRequest" | "BadSecret"),
            "refused before connecting: {err}"
        );
    }

    #[test]
    fn max_ttl_is_capped() {
        let parse =
            |json: &str| RoleDefinition::parse(&SecretString::new(json), "rotor/roles/ci", "arn:x");
        let at_cap = parse(r#"{"engine":"postgres","masterarn":"m","max_ttl":"32d"}"#).unwrap();
        assert_eq!(at_cap.max_ttl, MAX_TTL);
        for json in [
            r#"{"engine":"postgres","masterarn":"m","max_ttl":"33d"}"#,
            r#"{"engine":"postgres","masterarn":"m","max_ttl":18446744073709551615}"#,
            r#"{"engine":"postgres","masterarn":"m","default_ttl":"40d"}"#,
        ] {
            let err = parse(json).expect_err(json).to_string();
            assert!(err.contains("32d"), "{json}: {err}");
        }
        let role = at_cap;
        assert_eq!(
            role.lease_expiry(Some(60), 1_000).unwrap(),
            (60, 1_060),
            "ttl and expiry"
        );
        assert_eq!(role.lease_expiry(None, 1_000).unwrap(), (3600, 4_600));
        assert!(
            role.lease_expiry(Some(60), u64::MAX - 10).is_err(),
            "overflow"
        );
        assert!(role.lease_expiry(Some(0), 1_000).is_err());
    }

    #[test]
    fn only_exact_lease_names_parse() {
        let name = lease_username("orders", 1_900_000_000).unwrap();
        let expiry = name.rsplit('_').nth(1).unwrap().to_string();
        assert!(parse_lease(&name).is_some());
        for lookalike in [
            // A leading zero: the expiry does not round-trip.
            format!("v_orders_0{expiry}_abcdef"),
            // Upper case: Rotor never writes it.
            format!("v_orders_{}_abcdef", expiry.to_ascii_uppercase()),
            format!("v_orders_{expiry}_ABCDEF"),
            // A fourth part: the prefix would read as "orders_x".
            format!("v_orders_x_{expiry}_abcdef"),
            // Random part of the wrong length or alphabet.
            format!("v_orders_{expiry}_abcde"),
            format!("v_orders_{expiry}_abc-ef"),
            // A prefix longer than any role's.
            format!("v_abcdefghijk_{expiry}_abcdef"),
            // Beyond u64.
            "v_orders_zzzzzzzzzzzzzzzzzzzz_abcdef".to_string(),
            format!("v__{expiry}_abcdef"),
        ] {
            assert!(parse_lease(&lookalike).is_none(), "{lookalike} parsed");
        }
        let role = RoleDefinition::parse(
            &SecretString::new(r#"{"engine":"postgres","masterarn":"m","username_prefix":"ord"}"#),
            "rotor/roles/ord",
            "arn:x",
        )
        .unwrap();
        assert!(role.lease_of(&name).is_none(), "another role's prefix");
        let own = lease_username("ord", 1_900_000_000).unwrap();
        assert_eq!(role.lease_of(&own).map(|l| l.prefix), Some("ord".into()));
    }

    #[test]
    fn principals_match_with_wildcards_and_assumed_roles() {
        let allowed = vec!["arn:aws:iam::123456789012:role/ci-*".to_string()];
        assert!(principal_allowed(
            "arn:aws:iam::123456789012:role/ci-deploy",
            &allowed
        ));
        assert!(principal_allowed(
            "arn:aws:sts::123456789012:assumed-role/ci-deploy/run-42",
            &allowed
        ));
        assert!(!principal_allowed(
            "arn:aws:sts::123456789012:assumed-role/admin/x",
            &allowed
        ));
        assert!(!principal_allowed(
            "arn:aws:iam::999999999999:role/ci-deploy",
            &allowed
        ));
        assert!(!principal_allowed("anything", &[]));
    }

    #[test]
    fn privileged_roles_need_the_deployment_setting() {
        let role = |json: &str| {
            RoleDefinition::parse(&SecretString::new(json), "rotor/roles/x", "arn:x").unwrap()
        };
        let bad = role(
            r#"{"engine":"postgres","masterarn":"m","member_of":["app_rw","PG_Write_Server_Files"],"owner_role":"rds_superuser"}"#,
        );
        assert_eq!(
            bad.privileged_roles(),
            ["PG_Write_Server_Files", "rds_superuser"]
        );
        let err = bad.check_privileges(false).unwrap_err();
        assert_eq!(err.kind(), "Refused");
        assert!(err.to_string().contains("ROTOR_ALLOW_PRIVILEGED_ROLES"));
        assert!(bad.check_privileges(true).is_ok(), "allowed by the setting");
        // Drops check only owner_role (what REASSIGN OWNED hands objects to):
        // a privileged member_of must not stop its users being dropped.
        let e = bad.check_owner_role(false).unwrap_err().to_string();
        assert!(
            e.contains("rds_superuser") && e.contains("rotor/roles/x"),
            "{e}"
        );
        assert!(bad.check_owner_role(true).is_ok());
        let member_only = role(
            r#"{"engine":"postgres","masterarn":"m","member_of":["pg_read_all_data"],"owner_role":"app_owner"}"#,
        );
        assert!(member_only.check_owner_role(false).is_ok());
        let ok = role(
            r#"{"engine":"postgres","masterarn":"m","member_of":["app_rw"],"owner_role":"app_owner"}"#,
        );
        assert!(ok.check_privileges(false).is_ok());
        assert!(is_role_name("rotor/roles/ci", "rotor/roles/"));
        assert!(!is_role_name("rotor/roles/", "rotor/roles/"));
        assert!(!is_role_name("rotor/app/ci", "rotor/roles/"));
    }

    #[test]
    fn role_definitions_are_checked() {
        let parse = |json: &str| {
            RoleDefinition::parse(&SecretString::new(json), "rotor/roles/ci-deploy", "arn:x")
        };
        let ok = parse(r#"{"engine":"postgres","masterarn":"m","default_ttl":"15m","max_ttl":"1h","member_of":["app_rw"],"owner_role":"app_owner","max_connections":2,"allowed_principals":["arn:aws:iam::1:role/ci"]}"#).unwrap();
        assert_eq!(
            (ok.default_ttl, ok.max_ttl, ok.username_prefix.as_str()),
            (900, 3600, "cideploy")
        );
        for (json, needle) in [
            (r#"{"engine":"oracle","masterarn":"m"}"#, "not supported"),
            (r#"{"engine":"postgres"}"#, "masterarn"),
            (
                r#"{"engine":"postgres","masterarn":"m","default_ttl":"2h","max_ttl":"1h"}"#,
                "longer than max_ttl",
            ),
            (
                r#"{"engine":"postgres","masterarn":"m","default_ttl":"soon"}"#,
                "not a duration",
            ),
            (
                r#"{"engine":"postgres","masterarn":"m","username_prefix":"Bad_Prefix"}"#,
                "lowercase",
            ),
            (
                r#"{"engine":"postgres","masterarn":"m","creation_statements":"CREATE ROLE"}"#,
                "raw SQL",
            ),
            (
                r#"{"engine":"postgres","masterarn":"m","member_of":[1]}"#,
                "member_of",
            ),
            ("[]", "not a JSON object"),
        ] {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
    #[test]
    fn roles_sharing_a_username_prefix_are_both_refused() {
        let role = |name: &str, prefix: &str| {
            RoleDefinition::parse(
                &SecretString::new(format!(
                    r#"{{"engine":"postgres","masterarn":"m","username_prefix":"{prefix}"}}"#
                )),
                name,
                name,
            )
            .unwrap()
        };
        let (good, bad) = split_colliding_prefixes(vec![
            role("roles/a-ro", "analytics"),
            role("roles/a-rw", "analytics"),
            role("roles/orders", "orders"),
        ]);
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].name, "roles/orders");
        let names: Vec<&str> = bad.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["roles/a-ro", "roles/a-rw"]);
        assert!(bad[0].1.to_string().contains("roles/a-rw"), "{}", bad[0].1);
    }
}
