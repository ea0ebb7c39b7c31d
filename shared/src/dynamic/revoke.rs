//! Revocation: a dynamic user is dropped at once with its sessions; a static
//! secret is rotated immediately and its previous credential invalidated
//! too (alternating users: the AWSPREVIOUS user gets a random password it
//! will never learn, and its sessions end). Every result carries evidence.
//!
//! Events understood (`from_event`): Rotor's own custom event
//! (`source` `rotor`, `detail-type` `Revoke Credential`), a GuardDuty RDS
//! Protection login finding, and a CloudTrail event naming a secret. Events
//! caused by Rotor's own roles (`ROTOR_IGNORE_PRINCIPALS`) are ignored, so
//! Rotor's writes never trigger Rotor.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use super::{Caller, Dynamic, parse_lease, principal_allowed};
use crate::audit::{AuditRecord, record};
use crate::engine::DropReport;
use crate::error::{Error, Result};
use crate::rds::RdsLookup;
use crate::secret::{DbSecret, Require};
use crate::store::{AWSCURRENT, AWSPENDING, AWSPREVIOUS, ListFilter, VersionRef};

/// The staging label on the version the last revocation of a static secret
/// made: how concurrent revocations of one secret tell that one of them
/// already covered their event (see [`Dynamic::rotate_and_invalidate`]).
pub const REVOKED_STAGE: &str = "ROTOR_REVOKED";
use crate::strategy::Strategy;

/// What to revoke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeTarget {
    /// A static secret (name or ARN).
    Secret(String),
    /// A dynamic user (its name is its lease id).
    User(String),
    /// Every user of a role.
    Role(String),
    /// Every secret carrying this tag.
    Tag { key: String, value: String },
    /// A login a detector reported: a dynamic user, or the static secret
    /// whose host is on `instance` (or `cluster`) and whose username is
    /// `user`. `engine` as the detector names it (`postgres`,
    /// `aurora-mysql`, …), when known.
    DbLogin {
        instance: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        engine: Option<String>,
        user: String,
    },
}

/// The evidence for one revoked credential.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Revoked {
    pub target: String,
    /// `dropped-user`, `already-gone`, `rotated`, `would-revoke`, or
    /// `coalesced`: a revocation of the same secret that started after this
    /// one's event finished while it waited, and covers it (`new_version`
    /// names the version it made; nothing else was done).
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop: Option<DropReport>,
    /// Static secrets: the version now AWSCURRENT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_version: Option<String>,
    /// Static secrets: the password of the compromised login was changed.
    pub password_changed: bool,
    /// The previous credential was invalidated too (alternating users).
    pub previous_invalidated: bool,
    pub sessions_ended: u64,
}

/// A revocation's result: what was done and what failed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RevokeReport {
    pub dry_run: bool,
    pub revoked: Vec<Revoked>,
    pub failures: Vec<(String, String)>,
    /// How many of `failures` may succeed when retried unchanged (a server
    /// that did not answer in time, another revocation of the same secret
    /// holding its lock).
    pub retryable_failures: usize,
}

/// What revoke-on-event acts on besides Rotor's own custom events.
#[derive(Clone, Debug, Default)]
pub struct EventPolicy {
    /// `ROTOR_IGNORE_PRINCIPALS`: events these principals caused are ignored.
    pub ignore: Vec<String>,
    /// `ROTOR_REVOKE_ON_FAILED_LOGINS=true`: GuardDuty findings of *failed*
    /// logins (brute force, a malicious or Tor caller that did not get in)
    /// revoke too. Off by default: anyone who can reach the database could
    /// otherwise rotate secrets and end sessions at will just by failing to
    /// log in.
    pub failed_logins: bool,
}

impl EventPolicy {
    pub fn from_env() -> Result<EventPolicy> {
        let failed_logins = match std::env::var("ROTOR_REVOKE_ON_FAILED_LOGINS") {
            Err(_) => false,
            Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("false") => false,
            Ok(v) if v.trim().eq_ignore_ascii_case("true") => true,
            Ok(v) => {
                return Err(Error::Config(format!(
                    "ROTOR_REVOKE_ON_FAILED_LOGINS={v:?}; use true or false"
                )));
            }
        };
        Ok(EventPolicy {
            ignore: ignored_principals_from_env()?,
            failed_logins,
        })
    }
}

/// Whether a GuardDuty RDS Protection finding type reports a login that
/// failed (`…FailedLogin`): nobody got in with the credential.
pub fn finding_is_failed_login(finding_type: &str) -> bool {
    finding_type.ends_with("FailedLogin")
}

/// [`from_event_with`] with the defaults: failed-login findings ignored.
pub fn from_event(event: &Value, ignore: &[String]) -> Result<Option<(RevokeTarget, bool)>> {
    from_event_with(
        event,
        &EventPolicy {
            ignore: ignore.to_vec(),
            failed_logins: false,
        },
    )
}

/// Parses an EventBridge event; `Ok(None)` when it is to be ignored
/// (caused by one of `policy.ignore` — Rotor's own roles —, a CloudTrail
/// record of a call that failed, a GuardDuty finding of a failed login
/// unless `policy.failed_logins`, or not about credentials).
pub fn from_event_with(
    event: &Value,
    policy: &EventPolicy,
) -> Result<Option<(RevokeTarget, bool)>> {
    let ignore = policy.ignore.as_slice();
    let source = event
        .get("source")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let detail_type = event
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let detail = event.get("detail").cloned().unwrap_or(Value::Null);
    let text = |v: &Value, path: &[&str]| -> Option<String> {
        let mut cur = v;
        for p in path {
            cur = cur.get(p)?;
        }
        cur.as_str().filter(|s| !s.is_empty()).map(str::to_string)
    };
    match (source, detail_type) {
        ("rotor", "Revoke Credential") => {
            let dry_run = detail
                .get("dry_run")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let target = if let Some(s) = text(&detail, &["secret"]) {
                RevokeTarget::Secret(s)
            } else if let Some(u) = text(&detail, &["user"]).or_else(|| text(&detail, &["lease"])) {
                RevokeTarget::User(u)
            } else if let Some(r) = text(&detail, &["role"]) {
                RevokeTarget::Role(r)
            } else if let (Some(key), Some(value)) = (
                text(&detail, &["tag", "key"]),
                text(&detail, &["tag", "value"]),
            ) {
                RevokeTarget::Tag { key, value }
            } else {
                return Err(Error::BadEvent(
                    "a Revoke Credential event's detail names one of \"secret\", \"user\" (or \"lease\"), \"role\" or \"tag\": {\"key\", \"value\"}".into(),
                ));
            };
            Ok(Some((target, dry_run)))
        }
        ("aws.guardduty", "GuardDuty Finding") => {
            let finding = text(&detail, &["type"]).unwrap_or_default();
            if finding_is_failed_login(&finding) && !policy.failed_logins {
                return Ok(None);
            }
            let resource = detail.get("resource").cloned().unwrap_or(Value::Null);
            let cluster = text(&resource, &["rdsDbInstanceDetails", "dbClusterIdentifier"]);
            let instance = text(&resource, &["rdsDbInstanceDetails", "dbInstanceIdentifier"])
                .or_else(|| cluster.clone());
            let engine = text(&resource, &["rdsDbInstanceDetails", "engine"]);
            let user = text(&resource, &["rdsDbUserDetails", "user"]);
            match (instance, user) {
                (Some(instance), Some(user)) => Ok(Some((
                    RevokeTarget::DbLogin {
                        cluster: cluster.filter(|c| *c != instance),
                        instance,
                        engine,
                        user,
                    },
                    false,
                ))),
                _ => Err(Error::BadEvent(
                    "the GuardDuty finding names no RDS instance and user (resource.rdsDbInstanceDetails / rdsDbUserDetails)".into(),
                )),
            }
        }
        (_, "AWS API Call via CloudTrail") => {
            // A call that failed (AccessDenied, ResourceNotFound, …) changed
            // nothing; acting on it would let anyone force a rotation just by
            // trying. The rule filters these out too (errorCode exists: false).
            if detail.get("errorCode").is_some_and(|code| !code.is_null()) {
                return Ok(None);
            }
            let actor = text(
                &detail,
                &["userIdentity", "sessionContext", "sessionIssuer", "arn"],
            )
            .or_else(|| text(&detail, &["userIdentity", "arn"]))
            .unwrap_or_default();
            if !actor.is_empty() && principal_allowed(&actor, ignore) {
                return Ok(None);
            }
            let secret = text(&detail, &["requestParameters", "secretId"])
                .or_else(|| text(&detail, &["responseElements", "arn"]))
                .or_else(|| {
                    detail
                        .get("resources")
                        .and_then(Value::as_array)
                        .and_then(|r| r.iter().find_map(|x| text(x, &["ARN"])))
                });
            match secret {
                Some(s) => Ok(Some((RevokeTarget::Secret(s), false))),
                None => Err(Error::BadEvent(
                    "the CloudTrail event names no secret (requestParameters.secretId)".into(),
                )),
            }
        }
        _ => Err(Error::BadEvent(format!(
            "revoke-on-event does not handle events from {source:?} of type {detail_type:?}; send a \"Revoke Credential\" event (source \"rotor\"), a GuardDuty finding or a CloudTrail event"
        ))),
    }
}

/// The static secrets a revocation may rotate: those whose name starts
/// with `secret_prefix` or that carry the tag `secret_tag` (key, value) —
/// the same scope the deployment's IAM policies give the functions
/// (`ROTOR_SECRET_PREFIX`, `ROTOR_SECRET_TAG_KEY`/`ROTOR_SECRET_TAG_VALUE`,
/// set by the template from SecretNamePrefix and SecretTagKey/Value).
/// Neither set: every secret (the CLI, acting with its operator's rights).
/// Roles are scoped by the roles prefix already.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevokeScope {
    pub secret_prefix: Option<String>,
    pub secret_tag: Option<(String, String)>,
}

impl RevokeScope {
    pub fn from_env() -> RevokeScope {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        RevokeScope {
            secret_prefix: var("ROTOR_SECRET_PREFIX"),
            secret_tag: var("ROTOR_SECRET_TAG_KEY")
                .map(|k| (k, var("ROTOR_SECRET_TAG_VALUE").unwrap_or_default())),
        }
    }

    /// Whether this deployment's scope has any limit at all.
    pub fn is_limited(&self) -> bool {
        self.secret_prefix.is_some() || self.secret_tag.is_some()
    }

    /// Whether a secret with this name and these tags is in scope.
    pub fn contains(&self, name: &str, tags: &std::collections::BTreeMap<String, String>) -> bool {
        if !self.is_limited() {
            return true;
        }
        self.secret_prefix
            .as_deref()
            .is_some_and(|p| name.starts_with(p))
            || self
                .secret_tag
                .as_ref()
                .is_some_and(|(k, v)| tags.get(k) == Some(v))
    }
}

/// Whether `host` is the endpoint of one of `on` (instance or cluster ids):
/// the id itself or a name under it (`<id>.<…>.rds.amazonaws.com`,
/// `<cluster>.cluster-ro-…`). RDS identifiers are case-insensitive.
fn host_is_on(host: &str, on: &[&str]) -> bool {
    let host = host.to_ascii_lowercase();
    on.iter().any(|id| {
        let id = id.to_ascii_lowercase();
        host == id
            || host
                .strip_prefix(&id)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Whether a secret's name or tags point at one of `on`: the name contains
/// the id, or a tag value is the id or an RDS ARN of it (`…:db:<id>`,
/// `…:cluster:<id>`).
fn metadata_points_at(
    name: &str,
    tags: &std::collections::BTreeMap<String, String>,
    on: &[&str],
) -> bool {
    let name = name.to_ascii_lowercase();
    on.iter().any(|id| {
        let id = id.to_ascii_lowercase();
        name.contains(&id)
            || tags.values().any(|v| {
                let v = v.to_ascii_lowercase();
                v == id
                    || v.ends_with(&format!(":db:{id}"))
                    || v.ends_with(&format!(":cluster:{id}"))
            })
    })
}

/// `postgres` or `mysql` for an engine name as secrets, roles and GuardDuty
/// write it (`aurora-postgresql`, `mariadb`, `aurora-mysql`, `aurora`).
fn engine_family(engine: &str) -> &'static str {
    let engine = engine.to_ascii_lowercase();
    if engine.contains("postgres") {
        "postgres"
    } else if engine.contains("mysql") || engine.contains("mariadb") || engine == "aurora" {
        "mysql"
    } else {
        "other"
    }
}

/// `ROTOR_IGNORE_PRINCIPALS`: comma-separated ARN patterns of Rotor's roles.
pub fn ignored_principals_from_env() -> Result<Vec<String>> {
    parse_ignored_principals(&std::env::var("ROTOR_IGNORE_PRINCIPALS").unwrap_or_default())
}

/// Parses `ROTOR_IGNORE_PRINCIPALS`. Every entry must be an ARN pattern: an
/// entry that is not (a role name, a typo) would match nothing, and the
/// functions would then act on the events their own writes cause.
pub fn parse_ignored_principals(spec: &str) -> Result<Vec<String>> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("arn:") && s.split(':').count() >= 6 {
                Ok(s.to_string())
            } else {
                Err(Error::Config(format!(
                    "ROTOR_IGNORE_PRINCIPALS entry {s:?} is not an IAM ARN pattern; list Rotor's role ARNs (arn:aws:iam::<account>:role/<name>), comma-separated"
                )))
            }
        })
        .collect()
}

impl Dynamic {
    /// Revokes a target. Keeps going past one failure.
    pub async fn revoke(
        &self,
        target: &RevokeTarget,
        dry_run: bool,
        caller: &Caller,
        rds: Option<Arc<dyn RdsLookup>>,
    ) -> Result<RevokeReport> {
        let mut report = RevokeReport {
            dry_run,
            ..Default::default()
        };
        match target {
            RevokeTarget::User(user) => {
                self.revoke_user(user, dry_run, caller, &mut report).await;
            }
            RevokeTarget::Role(role) => {
                let role = self.role(role).await?;
                self.check_prefix_unique(&role).await?;
                let (mut session, _) = self.master_session(&role).await?;
                // Only this role's leases that Rotor created (marked, exact names).
                let users: Vec<String> = super::leases_of_role(session.as_mut(), &role)
                    .await?
                    .into_iter()
                    .map(|l| l.username)
                    .collect();
                self.revoke_users(&role, &users, Some(session), dry_run, caller, &mut report)
                    .await;
            }
            RevokeTarget::Secret(secret) => {
                self.check_in_scope(secret, caller).await?;
                self.revoke_secret(secret, dry_run, caller, rds.clone(), &mut report)
                    .await;
            }
            RevokeTarget::Tag { key, value } => {
                let listed = self
                    .store()
                    .list_secrets(&ListFilter {
                        name_prefix: None,
                        tag_key: Some(key.clone()),
                    })
                    .await?;
                for s in listed
                    .into_iter()
                    .filter(|s| s.tags.get(key) == Some(value))
                {
                    if super::is_role_name(&s.name, self.roles_prefix()) {
                        let r = RevokeTarget::Role(s.name.clone());
                        let sub = Box::pin(self.revoke(&r, dry_run, caller, rds.clone())).await?;
                        report.revoked.extend(sub.revoked);
                        report.failures.extend(sub.failures);
                    } else if self.revoke_scope().contains(&s.name, &s.tags) {
                        self.revoke_secret(&s.arn, dry_run, caller, rds.clone(), &mut report)
                            .await;
                    } else {
                        // Whoever may tag a secret must not thereby make
                        // Rotor rotate it: only secrets in scope count.
                        tracing::info!(secret = %s.name, "tagged secret outside the deployment's scope: left alone");
                    }
                }
            }
            RevokeTarget::DbLogin {
                instance,
                cluster,
                engine,
                user,
            } => {
                if parse_lease(user).is_some() {
                    self.revoke_user(user, dry_run, caller, &mut report).await;
                } else {
                    let on: Vec<&str> = std::iter::once(instance.as_str())
                        .chain(cluster.as_deref())
                        .collect();
                    let secrets = self.secrets_for_login(&on, engine.as_deref(), user).await?;
                    if secrets.is_empty() {
                        return Err(Error::NotFound {
                            what: format!(
                                "a secret in this deployment's scope for user {user:?} on {} (looked at secrets whose name or RDS tags name it, and the masters of roles on it)",
                                on.join(" / ")
                            ),
                        });
                    }
                    for arn in secrets {
                        self.revoke_secret(&arn, dry_run, caller, rds.clone(), &mut report)
                            .await;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Refuses a static secret outside the deployment's [`RevokeScope`].
    async fn check_in_scope(&self, secret: &str, caller: &Caller) -> Result<()> {
        if !self.revoke_scope().is_limited() {
            return Ok(());
        }
        let meta = self.store().describe(secret).await?;
        if self.revoke_scope().contains(&meta.name, &meta.tags) {
            return Ok(());
        }
        record(&AuditRecord {
            action: "revoke",
            actor: &caller.arn,
            target: &meta.arn,
            outcome: "refused",
            detail: json!({"reason": "secret outside the deployment's scope"}),
        });
        Err(Error::Forbidden(format!(
            "secret {} is outside this deployment's scope (ROTOR_SECRET_PREFIX, ROTOR_SECRET_TAG_KEY/VALUE); nothing was changed. Revoke it from the CLI or from the deployment that rotates it",
            meta.name
        )))
    }

    /// Static secrets in the deployment's scope for a login a detector saw
    /// on `on` (the instance id, and the cluster id when there is one):
    /// those whose host is on it and whose username is `user` (or its
    /// alternate). Values are read only for candidates:
    ///
    /// - secrets in scope whose *metadata* points at the instance: the name
    ///   contains its id, or a tag value is the id or an RDS ARN ending in
    ///   `:db:<id>` / `:cluster:<id>` (RDS-managed secrets carry
    ///   `aws:rds:primaryDBInstanceArn` / `…ClusterArn`; operators may tag
    ///   theirs the same way);
    /// - the master secrets (in scope) of roles under the roles prefix whose
    ///   master's host is on the instance, for roles of the detector's
    ///   engine family.
    ///
    /// So a finding costs a listing plus reads bounded by the candidates
    /// and the roles, however many other secrets the account holds.
    async fn secrets_for_login(
        &self,
        on: &[&str],
        engine: Option<&str>,
        user: &str,
    ) -> Result<Vec<String>> {
        let mut candidates: Vec<String> = Vec::new();
        for s in self.secrets_in_scope().await? {
            if metadata_points_at(&s.name, &s.tags, on) && !candidates.contains(&s.arn) {
                candidates.push(s.arn);
            }
        }
        let (roles, _) = self.roles().await?;
        let mut masters: Vec<String> = Vec::new();
        for role in roles {
            let same_family =
                engine.is_none_or(|e| engine_family(e) == engine_family(&role.engine));
            if same_family && !masters.contains(&role.masterarn) {
                masters.push(role.masterarn);
            }
        }
        for master in masters {
            let host = match self.login_at(&master).await {
                Some(secret) => secret.host,
                None => continue,
            };
            if !host_is_on(&host, on) {
                continue;
            }
            let meta = match self.store().describe(&master).await {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::warn!(secret = %master, error = %e, "cannot describe a role's master");
                    continue;
                }
            };
            if !self.revoke_scope().contains(&meta.name, &meta.tags) {
                tracing::info!(secret = %meta.name, "a role's master on the instance is outside the deployment's scope: left alone");
                continue;
            }
            if !candidates.contains(&meta.arn) {
                candidates.push(meta.arn);
            }
        }
        let user_base = user
            .strip_suffix(crate::strategy::CLONE_SUFFIX)
            .unwrap_or(user);
        let mut out = Vec::new();
        for arn in candidates {
            let Some(secret) = self.login_at(&arn).await else {
                continue;
            };
            let base = secret
                .username
                .strip_suffix(crate::strategy::CLONE_SUFFIX)
                .unwrap_or(&secret.username);
            let same_family =
                engine.is_none_or(|e| engine_family(e) == engine_family(&secret.engine));
            if host_is_on(&secret.host, on) && base == user_base && same_family {
                out.push(arn);
            }
        }
        Ok(out)
    }

    /// The secrets of the deployment's scope, metadata only (no values):
    /// by its name prefix and its tag; every secret when unlimited (CLI).
    async fn secrets_in_scope(&self) -> Result<Vec<crate::store::SecretSummary>> {
        let scope = self.revoke_scope();
        if !scope.is_limited() {
            return self.store().list_secrets(&ListFilter::default()).await;
        }
        let mut out: Vec<crate::store::SecretSummary> = Vec::new();
        if let Some(prefix) = &scope.secret_prefix {
            out.extend(
                self.store()
                    .list_secrets(&ListFilter {
                        name_prefix: Some(prefix.clone()),
                        tag_key: None,
                    })
                    .await?,
            );
        }
        if let Some((key, value)) = &scope.secret_tag {
            for s in self
                .store()
                .list_secrets(&ListFilter {
                    name_prefix: None,
                    tag_key: Some(key.clone()),
                })
                .await?
            {
                if s.tags.get(key) == Some(value) && !out.iter().any(|o| o.arn == s.arn) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// The connection fields of a secret's AWSCURRENT value, if it has them.
    async fn login_at(&self, arn: &str) -> Option<DbSecret> {
        let value = self
            .store()
            .get(arn, VersionRef::Stage(AWSCURRENT))
            .await
            .ok()??;
        DbSecret::parse(&value, arn, AWSCURRENT, Require::Connection).ok()
    }

    /// Revokes one dynamic user: finds its role by the lease prefix, then as
    /// [`revoke_users`](Self::revoke_users).
    async fn revoke_user(
        &self,
        user: &str,
        dry_run: bool,
        caller: &Caller,
        report: &mut RevokeReport,
    ) {
        let role = async {
            let lease = parse_lease(user).ok_or_else(|| {
                Error::BadRequest(format!(
                    "{user:?} is not a dynamic user (v_<prefix>_<expiry>_<random>)"
                ))
            })?;
            let (roles, _) = self.roles().await?;
            roles
                .into_iter()
                .find(|r| r.username_prefix == lease.prefix)
                .ok_or_else(|| Error::NotFound {
                    what: format!(
                        "a role with username_prefix {:?} for user {user}",
                        lease.prefix
                    ),
                })
        }
        .await;
        match role {
            Ok(role) => {
                self.revoke_users(&role, &[user.to_string()], None, dry_run, caller, report)
                    .await
            }
            Err(e) => {
                let failed = Err(e.to_string());
                self.audit_revocation(user, caller, &failed);
                if e.is_retryable() {
                    report.retryable_failures += 1;
                }
                report.failures.push((user.to_string(), e.to_string()));
            }
        }
    }

    /// Drops users of one role over one master session (`session`, or a new
    /// one), in the engine's batches; audits and reports each user.
    async fn revoke_users(
        &self,
        role: &super::RoleDefinition,
        users: &[String],
        session: Option<Box<dyn crate::engine::Session>>,
        dry_run: bool,
        caller: &Caller,
        report: &mut RevokeReport,
    ) {
        // Checked before any drop (dry runs too, so they show the refusal):
        // a role edited to a privileged owner_role must not receive its
        // users' objects.
        let owner = self.owner_role_for_drop(role);
        let results: Vec<(String, std::result::Result<Revoked, String>)> = if let Err(e) = &owner {
            users
                .iter()
                .map(|u| (u.clone(), Err(e.to_string())))
                .collect()
        } else if dry_run {
            users
                .iter()
                .map(|u| {
                    let r = Revoked {
                        target: u.clone(),
                        action: "would-revoke".into(),
                        ..Default::default()
                    };
                    (u.clone(), Ok(r))
                })
                .collect()
        } else {
            let session = match session {
                Some(s) => Ok(s),
                None => self.master_session(role).await.map(|(s, _)| s),
            };
            match session {
                Ok(mut session) => session
                    .drop_users(users, owner.ok().flatten())
                    .await
                    .into_iter()
                    .map(|(user, drop)| {
                        let revoked = drop.map_err(|e| e.to_string()).map(|drop| Revoked {
                            target: user.clone(),
                            action: if drop.existed {
                                "dropped-user"
                            } else {
                                "already-gone"
                            }
                            .into(),
                            sessions_ended: drop.sessions_ended,
                            drop: Some(drop),
                            ..Default::default()
                        });
                        (user, revoked)
                    })
                    .collect(),
                Err(e) => users
                    .iter()
                    .map(|u| (u.clone(), Err(e.to_string())))
                    .collect(),
            }
        };
        for (user, result) in results {
            self.audit_revocation(&user, caller, &result);
            match result {
                Ok(r) => report.revoked.push(r),
                Err(e) => report.failures.push((user, e)),
            }
        }
    }

    async fn revoke_secret(
        &self,
        secret: &str,
        dry_run: bool,
        caller: &Caller,
        rds: Option<Arc<dyn RdsLookup>>,
        report: &mut RevokeReport,
    ) {
        let result = self.rotate_and_invalidate(secret, dry_run, rds).await;
        if result.as_ref().is_err_and(Error::is_retryable) {
            report.retryable_failures += 1;
        }
        let result = result.map_err(|e| e.to_string());
        self.audit_revocation(secret, caller, &result);
        match result {
            Ok(r) => report.revoked.push(r),
            Err(e) => report.failures.push((secret.to_string(), e)),
        }
    }

    fn audit_revocation(
        &self,
        target: &str,
        caller: &Caller,
        result: &std::result::Result<Revoked, String>,
    ) {
        let (outcome, detail) = match result {
            Ok(r) if r.action == "would-revoke" => ("dry-run", json!(r)),
            Ok(r) if r.action == "coalesced" => ("coalesced", json!(r)),
            Ok(r) => ("ok", json!(r)),
            Err(e) => ("failed", json!({"error": e})),
        };
        record(&AuditRecord {
            action: "revoke",
            actor: &caller.arn,
            target,
            outcome,
            detail,
        });
    }

    /// Rotates a static secret now and invalidates what it replaced.
    pub async fn rotate_and_invalidate(
        &self,
        secret: &str,
        dry_run: bool,
        rds: Option<Arc<dyn RdsLookup>>,
    ) -> Result<Revoked> {
        let rotator = crate::rotation::rotator_for_secret(
            self.store().clone(),
            self.options(),
            secret,
            None,
            rds,
        )
        .await?
        .ignore_disabled(true);
        let meta = self.store().describe(secret).await?;
        if dry_run {
            return Ok(Revoked {
                target: meta.arn,
                action: "would-revoke".into(),
                ..Default::default()
            });
        }
        // A burst of events for one secret (several invocations at once):
        // one rotation, the others coalesced into it. What this invocation
        // saw before waiting tells a rotation that covers its event (made
        // after it began) from one that was already under way.
        let seen_current = meta.version_with(AWSCURRENT).map(str::to_string);
        let seen_pending = meta.version_with(AWSPENDING).map(str::to_string);
        let lock = match rotator
            .lock(&meta.arn, crate::rotation::ROTATION_LOCK_WAIT)
            .await
        {
            Ok(lock) => lock,
            Err(e) => {
                // Single user: the revocation that held the lock ends the
                // compromised user's sessions, this waiting one included.
                return match self
                    .coalesced_into(&meta.arn, &seen_current, &seen_pending)
                    .await?
                {
                    Some(revoked) => Ok(revoked),
                    None => Err(e),
                };
            }
        };
        let result = async {
            if let Some(revoked) = self
                .coalesced_into(&meta.arn, &seen_current, &seen_pending)
                .await?
            {
                return Ok(revoked);
            }
            self.rotate_and_invalidate_locked(&rotator, &meta.arn).await
        }
        .await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        result
    }

    /// The evidence of a revocation that covers this one, if one finished
    /// while this invocation waited: AWSCURRENT moved away from what it saw
    /// at its start, to a version that a revocation made (labelled
    /// [`REVOKED_STAGE`]) and that was not already pending at its start (so
    /// its password was generated after the event that caused this one).
    async fn coalesced_into(
        &self,
        arn: &str,
        seen_current: &Option<String>,
        seen_pending: &Option<String>,
    ) -> Result<Option<Revoked>> {
        let now = self.store().describe(arn).await?;
        let Some(current) = now.version_with(AWSCURRENT) else {
            return Ok(None);
        };
        let covered = Some(current) != seen_current.as_deref()
            && Some(current) != seen_pending.as_deref()
            && now.has_stage(current, REVOKED_STAGE);
        if !covered {
            return Ok(None);
        }
        tracing::info!(secret_arn = %arn, version = %current, "a revocation that started after this one's event finished meanwhile: coalesced");
        Ok(Some(Revoked {
            target: arn.to_string(),
            action: "coalesced".into(),
            new_version: Some(current.to_string()),
            ..Default::default()
        }))
    }

    /// The revocation itself, under the secret's rotation lock.
    async fn rotate_and_invalidate_locked(
        &self,
        rotator: &crate::rotation::Rotator,
        arn: &str,
    ) -> Result<Revoked> {
        let meta = self.store().describe(arn).await?;
        // An emergency does not wait for a stuck rotation.
        rotator.abandon_unfinished(&meta.arn).await?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let report = rotator.rotate_locked(&meta.arn).await?;
        // Marks the version a revocation made, before any session ends
        // (those of invocations waiting to coalesce into this one, too).
        let previous_mark = meta.version_with(REVOKED_STAGE).map(str::to_string);
        self.store()
            .update_stage(
                &meta.arn,
                REVOKED_STAGE,
                Some(&report.token),
                previous_mark.as_deref(),
            )
            .await?;
        let after = self.store().describe(&meta.arn).await?;
        let current = self.version(&meta.arn, &report.token).await?;
        let mut revoked = Revoked {
            target: meta.arn.clone(),
            action: "rotated".into(),
            new_version: Some(report.token.clone()),
            password_changed: true,
            ..Default::default()
        };
        match rotator.strategy() {
            Strategy::SingleUser => {
                // The old password no longer works; end sessions opened with it.
                let mut session = rotator.engine().connect(&current, "current").await?;
                revoked.sessions_ended = session
                    .end_sessions(&current.username, Some(started))
                    .await?;
            }
            Strategy::AlternatingUsers => {
                let previous_id =
                    after
                        .version_with(AWSPREVIOUS)
                        .ok_or_else(|| Error::NotFound {
                            what: format!("the AWSPREVIOUS version of {}", meta.arn),
                        })?;
                let previous = self.version(&meta.arn, previous_id).await?;
                let master = rotator.master_of(&current).await?;
                let mut session = rotator.engine().connect(&master, "master").await?;
                // A password nobody will ever learn.
                let unknown = self.password(&current.engine)?;
                session.set_password(&previous.username, &unknown).await?;
                revoked.previous_invalidated = true;
                revoked.sessions_ended = session.end_sessions(&previous.username, None).await?;
            }
        }
        Ok(revoked)
    }

    async fn version(&self, arn: &str, version: &str) -> Result<DbSecret> {
        self.store()
            .db_secret(arn, VersionRef::Id(version), Require::Connection)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed call (AccessDenied, ResourceNotFound, …) changed nothing:
    /// it must not force a rotation. CloudTrail records the failure's
    /// `errorCode` at the top of `detail` (CloudTrail record contents,
    /// "errorCode"); the rule filters on it and so does the handler.
    #[test]
    fn cloudtrail_calls_that_failed_are_ignored() {
        let call = |extra: Value| {
            let mut detail = json!({"eventName": "PutResourcePolicy", "userIdentity": {"arn": "arn:aws:sts::1:assumed-role/contractor/x"}, "requestParameters": {"secretId": "s"}});
            if let (Some(d), Value::Object(e)) = (detail.as_object_mut(), extra) {
                d.extend(e);
            }
            json!({"source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail", "detail": detail})
        };
        for error in [
            "AccessDenied",
            "ResourceNotFoundException",
            "ValidationException",
        ] {
            let failed =
                call(json!({"errorCode": error, "errorMessage": "User is not authorized"}));
            assert_eq!(
                from_event(&failed, &[]).unwrap(),
                None,
                "a call that failed with {error} forced a revocation"
            );
        }
        assert_eq!(
            from_event(&call(json!({"errorCode": null})), &[]).unwrap(),
            Some((RevokeTarget::Secret("s".into()), false)),
            "no error code: the call happened"
        );
        assert_eq!(
            from_event(&call(json!({})), &[]).unwrap(),
            Some((RevokeTarget::Secret("s".into()), false))
        );
    }

    #[test]
    fn finding_instance_matches_hosts_names_and_rds_tags() {
        let on = ["orders-db", "orders-cluster"];
        assert!(host_is_on(
            "orders-db.abc123.us-east-1.rds.amazonaws.com",
            &on
        ));
        assert!(host_is_on(
            "ORDERS-CLUSTER.cluster-ro-abc.us-east-1.rds.amazonaws.com",
            &on
        ));
        assert!(host_is_on("orders-db", &on));
        assert!(!host_is_on(
            "orders-db2.abc123.us-east-1.rds.amazonaws.com",
            &on
        ));
        assert!(!host_is_on(
            "billing.abc123.us-east-1.rds.amazonaws.com",
            &on
        ));
        let none = std::collections::BTreeMap::new();
        assert!(metadata_points_at("prod/orders-db/app", &none, &on));
        assert!(!metadata_points_at("prod/billing/app", &none, &on));
        let tagged: std::collections::BTreeMap<String, String> = [(
            "aws:rds:primaryDBInstanceArn".to_string(),
            "arn:aws:rds:us-east-1:123456789012:db:orders-db".to_string(),
        )]
        .into();
        assert!(metadata_points_at("rds!db-1234", &tagged, &on));
        let cluster: std::collections::BTreeMap<String, String> = [(
            "aws:rds:primaryDBClusterArn".to_string(),
            "arn:aws:rds:us-east-1:123456789012:cluster:orders-cluster".to_string(),
        )]
        .into();
        assert!(metadata_points_at("rds!cluster-1234", &cluster, &on));
        assert!(!metadata_points_at("rds!db-9", &cluster, &["billing"]));
        assert_eq!(
            engine_family("aurora-postgresql"),
            engine_family("postgres")
        );
        assert_eq!(engine_family("aurora-mysql"), engine_family("mariadb"));
        assert_ne!(engine_family("mysql"), engine_family("postgres"));
    }

    #[test]
    fn failed_login_findings_revoke_only_when_opted_in() {
        let finding = |kind: &str| json!({"source": "aws.guardduty", "detail-type": "GuardDuty Finding", "detail": {"type": kind, "resource": {"rdsDbInstanceDetails": {"dbInstanceIdentifier": "db1"}, "rdsDbUserDetails": {"user": "app"}}}});
        let opted_in = EventPolicy {
            ignore: vec![],
            failed_logins: true,
        };
        for failed in [
            "CredentialAccess:RDS/AnomalousBehavior.FailedLogin",
            "CredentialAccess:RDS/MaliciousIPCaller.FailedLogin",
            "CredentialAccess:RDS/TorIPCaller.FailedLogin",
        ] {
            assert_eq!(
                from_event(&finding(failed), &[]).unwrap(),
                None,
                "{failed}: a failed login must not rotate or end sessions by default"
            );
            assert!(
                from_event_with(&finding(failed), &opted_in)
                    .unwrap()
                    .is_some()
            );
        }
        for got_in in [
            "CredentialAccess:RDS/AnomalousBehavior.SuccessfulLogin",
            "CredentialAccess:RDS/AnomalousBehavior.SuccessfulBruteForce",
            "CredentialAccess:RDS/TorIPCaller.SuccessfulLogin",
        ] {
            assert!(
                from_event(&finding(got_in), &[]).unwrap().is_some(),
                "{got_in}"
            );
        }
    }

    #[test]
    fn guardduty_finding_carries_cluster_and_engine() {
        let gd = json!({"source": "aws.guardduty", "detail-type": "GuardDuty Finding", "detail": {"resource": {"rdsDbInstanceDetails": {"dbInstanceIdentifier": "db1", "dbClusterIdentifier": "c1", "engine": "aurora-postgresql"}, "rdsDbUserDetails": {"user": "app"}}}});
        assert_eq!(
            from_event(&gd, &[]).unwrap(),
            Some((
                RevokeTarget::DbLogin {
                    instance: "db1".into(),
                    cluster: Some("c1".into()),
                    engine: Some("aurora-postgresql".into()),
                    user: "app".into()
                },
                false
            ))
        );
    }

    #[test]
    fn events_are_understood_or_refused_clearly() {
        let custom = json!({"source": "rotor", "detail-type": "Revoke Credential", "detail": {"role": "ci", "dry_run": true}});
        assert_eq!(
            from_event(&custom, &[]).unwrap(),
            Some((RevokeTarget::Role("ci".into()), true))
        );
        let tag = json!({"source": "rotor", "detail-type": "Revoke Credential", "detail": {"tag": {"key": "team", "value": "x"}}});
        assert!(matches!(
            from_event(&tag, &[]).unwrap(),
            Some((RevokeTarget::Tag { .. }, false))
        ));
        let gd = json!({"source": "aws.guardduty", "detail-type": "GuardDuty Finding", "detail": {"resource": {"rdsDbInstanceDetails": {"dbInstanceIdentifier": "db1"}, "rdsDbUserDetails": {"user": "app"}}}});
        assert_eq!(
            from_event(&gd, &[]).unwrap(),
            Some((
                RevokeTarget::DbLogin {
                    instance: "db1".into(),
                    cluster: None,
                    engine: None,
                    user: "app".into()
                },
                false
            ))
        );
        let ct = json!({"source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail", "detail": {"eventName": "GetSecretValue", "userIdentity": {"arn": "arn:aws:sts::1:assumed-role/rotor-fn/x"}, "requestParameters": {"secretId": "s"}}});
        assert_eq!(
            from_event(&ct, &[]).unwrap(),
            Some((RevokeTarget::Secret("s".into()), false))
        );
        assert_eq!(
            from_event(&ct, &["arn:aws:iam::1:role/rotor-*".into()]).unwrap(),
            None,
            "Rotor's own calls are ignored"
        );
        for bad in [
            json!({"source": "rotor", "detail-type": "Revoke Credential", "detail": {}}),
            json!({"source": "x", "detail-type": "y"}),
            json!(42),
        ] {
            assert_eq!(from_event(&bad, &[]).unwrap_err().kind(), "BadEvent");
        }
    }
}
