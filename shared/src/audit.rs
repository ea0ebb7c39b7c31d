//! The audit trail: one structured record per action a Rotor function or
//! the CLI takes, written as a JSON log line with `"audit": true` so that
//! CloudWatch Logs Insights or Splunk can select them:
//!
//! ```text
//! fields @timestamp, action, actor, target, outcome, detail
//! | filter audit = 1 | sort @timestamp desc
//! ```
//!
//! Fields: `action` (e.g. `issue-credential`, `drop-user`, `rotate`),
//! `actor` (the IAM ARN or `cli:<user>` that asked), `target` (secret ARN,
//! role or database user), `outcome` (`ok`, `refused`, `failed`, `dry-run`),
//! `detail` (JSON: expiry, evidence, error). Never a secret value.

use serde::Serialize;

/// One audit record.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord<'a> {
    pub action: &'a str,
    pub actor: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub detail: serde_json::Value,
}

/// Writes the record as one JSON log line.
pub fn record(r: &AuditRecord<'_>) {
    tracing::info!(
        audit = true,
        action = r.action,
        actor = r.actor,
        target = r.target,
        outcome = r.outcome,
        detail = %r.detail,
        "audit"
    );
}
