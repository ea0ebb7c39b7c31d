//! The sweep (`expire-credentials`, `rotor sweep`): every few minutes,
//!
//! - drop every dynamic user (a lease Rotor created: marked, exactly named,
//!   see [`super::leases_of_role`]) whose expiry has passed (ending its sessions,
//!   handing its objects to the role's `owner_role`), with bounded
//!   concurrency and connections per database;
//! - rotate static secrets tagged `rotor:max-age` whose last rotation is
//!   older than that (via RotateSecret when the secret has a rotation
//!   function — the service then refuses a second rotation while one is in
//!   progress — otherwise in process, after checking no rotation is
//!   unfinished);
//! - revoke once, and tag `rotor:expired`, static secrets whose
//!   `rotor:expires-at` has passed.
//!
//! It keeps going past any one failure and reports each action; `dry_run`
//! lists what it would do and changes nothing. Dropping a user that is
//! already gone succeeds, so overlapping sweeps are harmless.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::{Caller, Dynamic, RoleDefinition, leases_of_role, parse_lease};
use crate::audit::{AuditRecord, record};
use crate::engine::DropReport;
use crate::error::Result;
use crate::rds::RdsLookup;
use crate::store::{AWSCURRENT, AWSPENDING, ListFilter};
use crate::time::{parse_duration, parse_timestamp, rfc3339};

pub const TAG_MAX_AGE: &str = "rotor:max-age";
pub const TAG_EXPIRES_AT: &str = "rotor:expires-at";
pub const TAG_EXPIRED: &str = "rotor:expired";

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    pub dry_run: bool,
    /// Seconds since the epoch that count as "now" (tests move it).
    pub now: u64,
    /// Master connections per database working at once.
    pub concurrency: usize,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            dry_run: false,
            now: crate::time::now(),
            concurrency: 4,
        }
    }
}

/// One thing the sweep did or would do.
#[derive(Clone, Debug, Serialize)]
pub struct SweepAction {
    /// `drop-expired-user`, `rotate-max-age`, `revoke-expired-secret`,
    /// `invalid-role` (a role definition that does not parse: always failed).
    pub kind: &'static str,
    pub target: String,
    pub reason: String,
    /// `done`, `would-do`, `failed`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    pub dry_run: bool,
    pub at: String,
    pub roles_checked: usize,
    pub users_seen: usize,
    pub secrets_checked: usize,
    pub actions: Vec<SweepAction>,
    pub failures: usize,
    /// Role definitions that do not parse (name, error); each is also a
    /// failed `invalid-role` action, counted in `failures`.
    pub invalid_roles: Vec<(String, String)>,
    /// Most master connections open at once to one database.
    pub peak_connections: usize,
    pub millis: f64,
}

impl SweepReport {
    fn push(&mut self, action: SweepAction) {
        if action.outcome == "failed" {
            self.failures += 1;
        }
        self.actions.push(action);
    }
}

impl Dynamic {
    /// Runs one sweep. See the module docs.
    pub async fn sweep(
        &self,
        options: &SweepOptions,
        caller: &Caller,
        rds: Option<Arc<dyn RdsLookup>>,
    ) -> Result<SweepReport> {
        let started = Instant::now();
        let mut report = SweepReport {
            dry_run: options.dry_run,
            at: rfc3339(options.now),
            ..Default::default()
        };
        let (roles, invalid) = self.roles().await?;
        // A role that cannot be read is a failure, not a note: its users
        // would never be swept (on MySQL they would never expire).
        for (name, e) in invalid {
            let error = e.to_string();
            record(&AuditRecord {
                action: "sweep-role",
                actor: &caller.arn,
                target: &name,
                outcome: "failed",
                detail: json!({"reason": "invalid role definition", "error": error}),
            });
            report.push(SweepAction {
                kind: "invalid-role",
                target: name.clone(),
                reason: format!(
                    "role definition {name} cannot be read, so its users are not swept; fix the secret's value"
                ),
                outcome: "failed",
                error: Some(error.clone()),
                evidence: None,
            });
            report.invalid_roles.push((name, error));
        }
        report.roles_checked = roles.len();
        for role in &roles {
            self.sweep_role(role, options, caller, &mut report).await;
        }
        self.sweep_static(options, caller, rds, &mut report).await?;
        report.millis = started.elapsed().as_secs_f64() * 1000.0;
        Ok(report)
    }

    async fn sweep_role(
        &self,
        role: &RoleDefinition,
        options: &SweepOptions,
        caller: &Caller,
        report: &mut SweepReport,
    ) {
        let failed = |target: &str, e: crate::Error| SweepAction {
            kind: "drop-expired-user",
            target: target.to_string(),
            reason: format!("role {}", role.name),
            outcome: "failed",
            error: Some(e.to_string()),
            evidence: None,
        };
        // The master secret is read once; the listing session becomes the
        // first lane's.
        let listed = async {
            let master = self.master_secret(role).await?;
            let engine = self.engine(&role.engine)?;
            let mut session = engine.connect(&master, "master").await?;
            let leases = leases_of_role(session.as_mut(), role).await?;
            Ok::<_, crate::Error>((master, engine, session, leases))
        }
        .await;
        let (master, engine, first_session, leases) = match listed {
            Ok(l) => l,
            Err(e) => {
                report.push(failed(&role.name, e));
                return;
            }
        };
        report.users_seen += leases.len();
        let expired: Vec<String> = leases
            .into_iter()
            .filter(|l| l.expires_at <= options.now)
            .map(|l| l.username)
            .collect();
        if expired.is_empty() {
            return;
        }
        // Checked before any drop: a role edited to a privileged owner_role
        // must not receive its users' objects. Each user is a failure.
        let owner = match self.owner_role_for_drop(role) {
            Ok(owner) => owner.map(str::to_string),
            Err(e) => {
                let error = e.to_string();
                for user in expired {
                    record(&AuditRecord {
                        action: "drop-expired-user",
                        actor: &caller.arn,
                        target: &user,
                        outcome: "refused",
                        detail: json!({"role": role.name, "reason": "privileged owner_role", "error": error}),
                    });
                    report.push(SweepAction {
                        kind: "drop-expired-user",
                        target: user,
                        reason: format!("role {}", role.name),
                        outcome: "failed",
                        error: Some(error.clone()),
                        evidence: None,
                    });
                }
                return;
            }
        };
        if options.dry_run {
            for user in expired {
                let expiry = parse_lease(&user).map_or(0, |l| l.expires_at);
                report.push(SweepAction {
                    kind: "drop-expired-user",
                    target: user,
                    reason: format!("role {}: expired at {}", role.name, rfc3339(expiry)),
                    outcome: "would-do",
                    error: None,
                    evidence: None,
                });
            }
            return;
        }
        // Split the users into lanes, one master connection each.
        let lanes = options.concurrency.clamp(1, 32).min(expired.len());
        let mut work: Vec<Vec<String>> = vec![Vec::new(); lanes];
        for (i, user) in expired.into_iter().enumerate() {
            work[i % lanes].push(user);
        }
        report.peak_connections = report.peak_connections.max(lanes);
        let mut set = tokio::task::JoinSet::new();
        let mut first_session = Some(first_session);
        for lane in work {
            let session = match first_session.take() {
                Some(s) => Ok(s),
                None => engine.connect(&master, "master").await,
            };
            let owner = owner.clone();
            set.spawn(async move {
                let mut results: Vec<(String, Result<DropReport>)> = Vec::with_capacity(lane.len());
                match session {
                    Ok(mut session) => results = session.drop_users(&lane, owner.as_deref()).await,
                    Err(e) => {
                        let msg = e.to_string();
                        results.extend(
                            lane.into_iter()
                                .map(|u| (u, Err(crate::Error::Config(msg.clone())))),
                        );
                    }
                }
                results
            });
        }
        while let Some(joined) = set.join_next().await {
            let Ok(results) = joined else {
                report.failures += 1;
                continue;
            };
            for (user, result) in results {
                let expiry = parse_lease(&user).map_or(0, |l| l.expires_at);
                let reason = format!("role {}: expired at {}", role.name, rfc3339(expiry));
                let action = match result {
                    Ok(drop) => SweepAction {
                        kind: "drop-expired-user",
                        target: user.clone(),
                        reason,
                        outcome: "done",
                        error: None,
                        evidence: Some(json!(drop)),
                    },
                    Err(e) => SweepAction {
                        reason,
                        ..failed(&user, e)
                    },
                };
                record(&AuditRecord {
                    action: "drop-expired-user",
                    actor: &caller.arn,
                    target: &user,
                    outcome: if action.outcome == "done" {
                        "ok"
                    } else {
                        "failed"
                    },
                    detail: json!({"role": role.name, "evidence": action.evidence, "error": action.error}),
                });
                report.push(action);
            }
        }
    }

    async fn sweep_static(
        &self,
        options: &SweepOptions,
        caller: &Caller,
        rds: Option<Arc<dyn RdsLookup>>,
        report: &mut SweepReport,
    ) -> Result<()> {
        let mut secrets = self
            .store()
            .list_secrets(&ListFilter {
                name_prefix: None,
                tag_key: Some(TAG_MAX_AGE.into()),
            })
            .await?;
        for s in self
            .store()
            .list_secrets(&ListFilter {
                name_prefix: None,
                tag_key: Some(TAG_EXPIRES_AT.into()),
            })
            .await?
        {
            if !secrets.iter().any(|x| x.arn == s.arn) {
                secrets.push(s);
            }
        }
        report.secrets_checked = secrets.len();
        for s in secrets {
            if let Some(at) = s.tags.get(TAG_EXPIRES_AT)
                && !s.tags.contains_key(TAG_EXPIRED)
            {
                match parse_timestamp(at) {
                    Err(e) => report.push(SweepAction {
                        kind: "revoke-expired-secret",
                        target: s.arn.clone(),
                        reason: format!("{TAG_EXPIRES_AT}={at:?}"),
                        outcome: "failed",
                        error: Some(format!("{TAG_EXPIRES_AT}: {e}")),
                        evidence: None,
                    }),
                    Ok(at_secs) if at_secs <= options.now => {
                        let reason = format!("{TAG_EXPIRES_AT} {at} has passed");
                        let action = if options.dry_run {
                            SweepAction {
                                kind: "revoke-expired-secret",
                                target: s.arn.clone(),
                                reason,
                                outcome: "would-do",
                                error: None,
                                evidence: None,
                            }
                        } else {
                            match self.rotate_and_invalidate(&s.arn, false, rds.clone()).await {
                                Ok(revoked) => {
                                    let tagged = self
                                        .store()
                                        .tag(&s.arn, TAG_EXPIRED, &rfc3339(options.now))
                                        .await;
                                    SweepAction {
                                        kind: "revoke-expired-secret",
                                        target: s.arn.clone(),
                                        reason,
                                        outcome: if tagged.is_ok() { "done" } else { "failed" },
                                        error: tagged.err().map(|e| e.to_string()),
                                        evidence: Some(json!(revoked)),
                                    }
                                }
                                Err(e) => SweepAction {
                                    kind: "revoke-expired-secret",
                                    target: s.arn.clone(),
                                    reason,
                                    outcome: "failed",
                                    error: Some(e.to_string()),
                                    evidence: None,
                                },
                            }
                        };
                        record(&AuditRecord {
                            action: "revoke-expired-secret",
                            actor: &caller.arn,
                            target: &s.arn,
                            outcome: action.outcome,
                            detail: json!({"evidence": action.evidence, "error": action.error}),
                        });
                        report.push(action);
                        continue;
                    }
                    Ok(_) => {}
                }
            }
            let Some(max_age) = s.tags.get(TAG_MAX_AGE) else {
                continue;
            };
            let action = self
                .rotate_if_too_old(&s.arn, max_age, options, rds.clone())
                .await;
            if let Some(action) = action {
                record(&AuditRecord {
                    action: "rotate-max-age",
                    actor: &caller.arn,
                    target: &s.arn,
                    outcome: action.outcome,
                    detail: json!({"reason": action.reason, "error": action.error}),
                });
                report.push(action);
            }
        }
        Ok(())
    }

    async fn rotate_if_too_old(
        &self,
        arn: &str,
        max_age: &str,
        options: &SweepOptions,
        rds: Option<Arc<dyn RdsLookup>>,
    ) -> Option<SweepAction> {
        let action = |reason: String, outcome, error: Option<String>| SweepAction {
            kind: "rotate-max-age",
            target: arn.to_string(),
            reason,
            outcome,
            error,
            evidence: None,
        };
        let max = match parse_duration(max_age) {
            Ok(m) => m,
            Err(e) => {
                return Some(action(
                    format!("{TAG_MAX_AGE}={max_age:?}"),
                    "failed",
                    Some(e.to_string()),
                ));
            }
        };
        let meta = match self.store().describe(arn).await {
            Ok(m) => m,
            Err(e) => {
                return Some(action(
                    format!("{TAG_MAX_AGE} {max_age}"),
                    "failed",
                    Some(e.to_string()),
                ));
            }
        };
        let last = meta.last_rotated.or(meta.created).unwrap_or(0);
        let age = options.now.saturating_sub(last);
        if age <= max {
            return None;
        }
        let reason = format!(
            "last rotated {} ago, {TAG_MAX_AGE} is {max_age}",
            crate::time::format_duration(age)
        );
        if options.dry_run {
            return Some(action(reason, "would-do", None));
        }
        let unfinished = meta
            .version_with(AWSPENDING)
            .filter(|p| Some(*p) != meta.version_with(AWSCURRENT))
            .is_some();
        let result = if meta.rotation_lambda_arn.is_some() && meta.rotation_enabled == Some(true) {
            // The service refuses while a rotation is in progress.
            self.store().request_rotation(arn).await.map(|_| ())
        } else if unfinished {
            Err(crate::Error::Config(format!(
                "a rotation of {arn} is unfinished (AWSPENDING on another version); finish it with `rotor rotate` first"
            )))
        } else {
            match crate::rotation::rotator_for_secret(
                self.store().clone(),
                self.options(),
                arn,
                None,
                rds,
            )
            .await
            {
                Ok(r) => r.ignore_disabled(true).rotate(arn).await.map(|_| ()),
                Err(e) => Err(e),
            }
        };
        Some(match result {
            Ok(()) => action(reason, "done", None),
            Err(e) => action(reason, "failed", Some(e.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ConnectOptions;
    use crate::secret::SecretString;
    use crate::store::LocalStore;

    #[tokio::test(flavor = "current_thread")]
    async fn invalid_role_counts_as_a_failure_naming_the_role() {
        let store = LocalStore::in_memory();
        // Valid JSON, but no master: this role's users would never expire.
        store
            .put_current(
                "rotor/roles/broken",
                &SecretString::new(r#"{"engine":"mysql"}"#),
            )
            .unwrap();
        let dynamic = Dynamic::new(Arc::new(store), ConnectOptions::default())
            .with_roles_prefix("rotor/roles/");
        let caller = Caller {
            arn: "cli:test".into(),
            via: "cli",
        };
        let report = dynamic
            .sweep(&SweepOptions::default(), &caller, None)
            .await
            .expect("the sweep itself runs");
        assert_eq!(
            report.failures, 1,
            "an unreadable role is a failure (alarm, exit status): {report:?}"
        );
        let action = report
            .actions
            .iter()
            .find(|a| a.outcome == "failed")
            .expect("a failed action");
        assert_eq!(action.kind, "invalid-role");
        assert_eq!(action.target, "rotor/roles/broken");
        assert!(
            action.error.as_deref().unwrap_or("").contains("masterarn"),
            "{action:?}"
        );
        assert_eq!(report.invalid_roles.len(), 1);
    }
}
