//! Issuing a dynamic credential: check the caller against the role, mint a
//! user whose name is its lease, return it once, audit it.

use serde::Serialize;
use serde_json::json;

use super::{Caller, Dynamic, lease_username, principal_allowed};
use crate::audit::{AuditRecord, record};
use crate::engine::DynamicUser;
use crate::error::{Error, Result};
use crate::secret::SecretString;
use crate::time::{format_duration, now, rfc3339};

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
        let role = self.role(role_id).await?;
        let audit = |outcome: &str, target: &str, detail: serde_json::Value| {
            record(&AuditRecord {
                action: "issue-credential",
                actor: &caller.arn,
                target,
                outcome,
                detail,
            })
        };
        if enforce_principals && !principal_allowed(&caller.arn, &role.allowed_principals) {
            audit(
                "refused",
                &role.name,
                json!({"reason": "principal not allowed", "via": caller.via}),
            );
            return Err(Error::Forbidden(format!(
                "{} may not request credentials for role {}; add it to the role's allowed_principals",
                caller.arn, role.name
            )));
        }
        let ttl = ttl.unwrap_or(role.default_ttl);
        if ttl > role.max_ttl {
            audit(
                "refused",
                &role.name,
                json!({"reason": "ttl above max_ttl", "ttl": ttl, "max_ttl": role.max_ttl}),
            );
            return Err(Error::BadRequest(format!(
                "ttl {} is longer than role {}'s max_ttl {}; ask for at most {}",
                format_duration(ttl),
                role.name,
                format_duration(role.max_ttl),
                format_duration(role.max_ttl)
            )));
        }
        let expires_at = now() + ttl;
        let username = lease_username(&role.username_prefix, expires_at)?;
        let password = self.password(&role.engine)?;
        let (mut session, master) = self.master_session(&role).await?;
        let created = session
            .create_dynamic_user(&DynamicUser {
                username: username.clone(),
                password: password.clone(),
                expires_at,
                member_of: role.member_of.clone(),
                max_connections: role.max_connections,
            })
            .await;
        if let Err(e) = created {
            audit(
                "failed",
                &username,
                json!({"role": role.name, "error": e.to_string()}),
            );
            return Err(e);
        }
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

    /// The dynamic users that exist now, from the database (optionally one role's).
    pub async fn leases(&self, role_id: Option<&str>) -> Result<Vec<(String, super::Lease)>> {
        let roles = match role_id {
            Some(id) => vec![self.role(id).await?],
            None => self.roles().await?.0,
        };
        let mut out = Vec::new();
        for role in roles {
            let (mut session, _) = self.master_session(&role).await?;
            for user in session.users_with_prefix(&role.user_prefix()).await? {
                if let Some(lease) = super::parse_lease(&user) {
                    out.push((role.name.clone(), lease));
                }
            }
        }
        Ok(out)
    }
}
