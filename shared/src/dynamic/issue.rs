//! Issuing a dynamic credential: check the caller against the role, mint a
//! user whose name is its lease, return it once, audit it.

use serde::Serialize;
use serde_json::json;

use super::{
    Caller, Dynamic, leases_of_role, principal_allowed, principal_tag, tagged_lease_username,
};
use crate::audit::{AuditRecord, record};
use crate::deadline;
use crate::engine::DynamicUser;
use crate::error::{Error, Result};
use crate::secret::SecretString;
use crate::time::{now, rfc3339};

/// The one answer for every caller that may not use the role it named,
/// whether the role exists or not.
pub const NOT_ALLOWED: &str = "no role of that name exists that this caller may use; ask the role's owner to add your IAM principal to its allowed_principals";

/// Longest an issue waits for the role's issue lock (less when the
/// invocation has less time left). Holders keep it for a count and a
/// CREATE, milliseconds each.
const ISSUE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A freshly issued credential. Serialised only into the caller's response.
#[derive(Clone, Debug, Serialize)]
pub struct IssuedCredential {
    pub role: String,
    pub username: String,
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    pub expires_at: String,
    pub expires_at_epoch: u64,
    pub engine: String,
    pub host: String,
    pub port: u16,
    pub dbname: Option<String>,
}

fn expose<S: serde::Serializer>(p: &SecretString, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(p.expose())
}

impl Dynamic {
    /// Issues a credential for `role_id`. `enforce_principals` is set when the
    /// caller's identity comes from the transport (a function URL with IAM
    /// auth); the CLI acts with its operator's own permissions instead.
    pub async fn issue(
        &self,
        role_id: &str,
        ttl: Option<u64>,
        caller: &Caller,
        enforce_principals: bool,
    ) -> Result<IssuedCredential> {
        let audit = |outcome: &str, target: &str, detail: serde_json::Value| {
            record(&AuditRecord {
                action: "issue-credential",
                actor: &caller.arn,
                target,
                outcome,
                detail,
            })
        };
        let role = match self.role(role_id).await {
            Ok(role) => role,
            // A caller whose identity the transport vouches for learns
            // nothing from a failed lookup: "no such secret", "not under the
            // roles prefix", "does not parse" and "not allowed" are one
            // answer. The detail goes to the audit record and the log.
            Err(e) if enforce_principals && !e.is_retryable() => {
                audit(
                    "refused",
                    role_id,
                    json!({"reason": "no usable role", "error": e.to_string(), "via": caller.via}),
                );
                return Err(Error::Forbidden(NOT_ALLOWED.into()));
            }
            Err(e) => return Err(e),
        };
        if enforce_principals && !principal_allowed(&caller.arn, &role.allowed_principals) {
            audit(
                "refused",
                &role.name,
                json!({"reason": "principal not allowed", "via": caller.via}),
            );
            return Err(Error::Forbidden(NOT_ALLOWED.into()));
        }
        if let Err(e) = role.check_privileges(self.allow_privileged_roles()) {
            audit(
                "refused",
                &role.name,
                json!({"reason": "privileged member_of/owner_role", "roles": role.privileged_roles(), "via": caller.via}),
            );
            return Err(e);
        }
        let (ttl, expires_at) = match role.lease_expiry(ttl, now()) {
            Ok(granted) => granted,
            Err(e) => {
                audit(
                    "refused",
                    &role.name,
                    json!({"reason": "ttl outside 1s..max_ttl", "ttl": ttl, "max_ttl": role.max_ttl}),
                );
                return Err(e);
            }
        };
        let tag = principal_tag(&role.username_prefix, &caller.arn);
        let password = self.password(&role.engine)?;
        let (mut session, master) = self.master_session(&role).await?;
        // A user's objects go to owner_role when it is dropped: with no such
        // role, the drop fails, and the lease could be neither revoked nor
        // swept. Refuse to issue it.
        if let Some(owner) = role.owner_role.as_deref()
            && session.role_exists(owner).await? == Some(false)
        {
            let e = Error::bad_secret(
                &role.arn,
                "role definition",
                format!(
                    "owner_role {owner:?} does not exist on the server, so a user issued now could not be revoked; create that role or fix owner_role"
                ),
            );
            audit(
                "refused",
                &role.name,
                json!({"reason": "owner_role does not exist", "via": caller.via}),
            );
            return Err(e);
        }
        // With a cap, count and create under the role's server-side lock:
        // concurrent issues (other warm functions, the CLI) wait their turn,
        // so none can pass the count before another's user exists.
        let locked = role.has_caps();
        if locked
            && let Err(e) = session
                .acquire_lock(&role.issue_lock_name(), deadline::budget(ISSUE_LOCK_WAIT))
                .await
        {
            audit(
                "failed",
                &role.name,
                json!({"reason": "issue lock not taken", "error": e.to_string(), "via": caller.via}),
            );
            return Err(e);
        }
        let created = self
            .create_within_caps(session.as_mut(), &role, &tag, expires_at, &password)
            .await;
        if locked && let Err(e) = session.release_lock(&role.issue_lock_name()).await {
            // The lock goes with the session, which ends with this request.
            tracing::warn!(role = %role.name, error = %e, "could not release the issue lock; it ends with the session");
        }
        let username = match created {
            Ok(username) => username,
            Err(e @ Error::TooManyLeases { .. }) => {
                audit(
                    "refused",
                    &role.name,
                    json!({"reason": "lease cap reached", "error": e.to_string(), "max_active": role.max_active, "max_active_per_principal": role.max_active_per_principal, "via": caller.via}),
                );
                return Err(e);
            }
            Err(e) => {
                audit(
                    "failed",
                    &role.name,
                    json!({"role": role.name, "error": e.to_string()}),
                );
                return Err(e);
            }
        };
        audit(
            "ok",
            &username,
            json!({"role": role.name, "expires_at": rfc3339(expires_at), "ttl": ttl, "via": caller.via}),
        );
        tracing::info!(role = %role.name, username = %username, expires_at = %rfc3339(expires_at), "issued a dynamic credential");
        let port = master
            .port
            .unwrap_or_else(|| self.engine(&role.engine).map_or(0, |e| e.default_port()));
        Ok(IssuedCredential {
            role: role.name,
            username,
            password,
            expires_at: rfc3339(expires_at),
            expires_at_epoch: expires_at,
            engine: role.engine,
            host: master.host,
            port,
            dbname: role.dbname.or(master.dbname),
        })
    }

    /// Creates a lease for the principal tagged `tag` when the role's caps
    /// allow one more (counted from the database: the role's marked,
    /// exactly named leases), under a name no existing lease has. Returns
    /// the username.
    async fn create_within_caps(
        &self,
        session: &mut dyn crate::engine::Session,
        role: &super::RoleDefinition,
        tag: &str,
        expires_at: u64,
        password: &SecretString,
    ) -> Result<String> {
        let existing = leases_of_role(session, role).await?;
        role.check_caps(&existing, tag)?;
        // Three random characters follow the tag: avoid a name that exists.
        let mut username = tagged_lease_username(&role.username_prefix, expires_at, tag)?;
        for _ in 0..8 {
            if !existing.iter().any(|l| l.username == username) {
                break;
            }
            username = tagged_lease_username(&role.username_prefix, expires_at, tag)?;
        }
        session
            .create_dynamic_user(&DynamicUser {
                username: username.clone(),
                password: password.clone(),
                expires_at,
                member_of: role.member_of.clone(),
                max_connections: role.max_connections,
            })
            .await?;
        Ok(username)
    }

    /// The dynamic users that exist now, from the database (optionally one role's).
    pub async fn leases(&self, role_id: Option<&str>) -> Result<Vec<(String, super::Lease)>> {
        let roles = match role_id {
            Some(id) => vec![self.role(id).await?],
            None => self.roles().await?.0,
        };
        let mut out = Vec::new();
        for role in roles {
            let (mut session, _) = self.master_session(&role).await?;
            // The same filter as the sweep, revoke and the caps: marked users
            // whose names are exactly this role's lease names.
            for lease in leases_of_role(session.as_mut(), &role).await? {
                out.push((role.name.clone(), lease));
            }
        }
        Ok(out)
    }
}

/// Percent-encodes a URL userinfo part.
fn url_part(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl IssuedCredential {
    /// The environment a client program reads: libpq's `PG*` variables or
    /// the MySQL client's, plus `DATABASE_URL`.
    pub fn environment(&self) -> Vec<(String, String)> {
        let db = self.dbname.clone().unwrap_or_default();
        let postgres = self.engine.contains("postgres");
        let scheme = if postgres { "postgres" } else { "mysql" };
        let url = format!(
            "{scheme}://{}:{}@{}:{}/{}",
            url_part(&self.username),
            url_part(self.password.expose()),
            self.host,
            self.port,
            url_part(&db)
        );
        let mut env = vec![("DATABASE_URL".to_string(), url)];
        let pairs: Vec<(&str, String)> = if postgres {
            vec![
                ("PGHOST", self.host.clone()),
                ("PGPORT", self.port.to_string()),
                ("PGUSER", self.username.clone()),
                ("PGPASSWORD", self.password.expose().to_string()),
                ("PGDATABASE", db),
            ]
        } else {
            vec![
                ("MYSQL_HOST", self.host.clone()),
                ("MYSQL_TCP_PORT", self.port.to_string()),
                ("MYSQL_USER", self.username.clone()),
                ("MYSQL_PWD", self.password.expose().to_string()),
                ("MYSQL_DATABASE", db),
            ]
        };
        env.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
        env
    }
}

/// What `rotor exec` did.
#[derive(Debug)]
pub struct ExecOutcome {
    /// The command's exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    pub username: String,
    pub revoked: crate::engine::DropReport,
}

impl Dynamic {
    /// Issues a credential, runs `command` with it in the environment, and
    /// revokes it when the command exits — whether it succeeded, failed or
    /// could not start.
    pub async fn exec(
        &self,
        role_id: &str,
        ttl: Option<u64>,
        caller: &Caller,
        command: &[String],
    ) -> Result<ExecOutcome> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::BadRequest("no command to run".into()))?;
        let credential = self.issue(role_id, ttl, caller, false).await?;
        let status = tokio::process::Command::new(program)
            .args(args)
            .envs(credential.environment())
            .status()
            .await;
        // Revoke first, then report the command's fate. The role is read
        // again (it may have changed while the command ran) and its
        // owner_role checked before the drop hands anything to it.
        let role = self.role(role_id).await?;
        let dropped = async {
            let owner = self.owner_role_for_drop(&role)?;
            let (mut session, _) = self.master_session(&role).await?;
            session.drop_user(&credential.username, owner).await
        }
        .await;
        let revoked = match dropped {
            Ok(revoked) => revoked,
            Err(e) => {
                record(&AuditRecord {
                    action: "revoke",
                    actor: &caller.arn,
                    target: &credential.username,
                    outcome: "failed",
                    detail: json!({"reason": "rotor exec finished", "role": role.name, "error": e.to_string()}),
                });
                return Err(e);
            }
        };
        record(&AuditRecord {
            action: "revoke",
            actor: &caller.arn,
            target: &credential.username,
            outcome: "ok",
            detail: json!({"reason": "rotor exec finished", "evidence": revoked}),
        });
        let status =
            status.map_err(|e| Error::BadRequest(format!("cannot run {program:?}: {e}")))?;
        Ok(ExecOutcome {
            code: status.code(),
            username: credential.username,
            revoked,
        })
    }
}
