//! Know every secret: an inventory of what the secret store holds, the
//! credentials kept outside it, a classification of each secret with the
//! rule that fired, and the reports and alerts built from them.
//!
//! Data flows one way here too: **sources → inventory → classification →
//! outputs**. Sources are Secrets Manager (ListSecrets, one call per 100
//! secrets, with tags, rotation settings, dates and version labels), the
//! local store, Lambda environment variables and SSM String parameters (see
//! [`scan`]). Classification ([`classify`]) is pure: it takes the records,
//! a clock and the settings, so every rule is testable with fixtures for
//! states the emulator cannot hold. Outputs ([`report`]) are JSON (a
//! documented, stable schema), CSV and one self-contained HTML page.

pub mod classify;
pub mod events;
#[cfg(feature = "inventory-aws")]
pub mod publish;
pub mod report;
pub mod scan;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything known about one secret, without its value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub arn: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub rotation_enabled: bool,
    #[serde(default)]
    pub rotation_lambda_arn: Option<String>,
    /// `AutomaticallyAfterDays`, or the days a schedule expression implies.
    #[serde(default)]
    pub rotation_interval_days: Option<u64>,
    #[serde(default)]
    pub rotation_schedule: Option<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: Option<u64>,
    #[serde(default)]
    pub last_rotated: Option<u64>,
    #[serde(default)]
    pub last_changed: Option<u64>,
    /// Day granularity in Secrets Manager.
    #[serde(default)]
    pub last_accessed: Option<u64>,
    #[serde(default)]
    pub next_rotation: Option<u64>,
    /// Set when deletion is scheduled.
    #[serde(default)]
    pub deleted_date: Option<u64>,
    /// Version id → labels.
    #[serde(default)]
    pub versions: BTreeMap<String, Vec<String>>,
    /// When the AWSPENDING version (not AWSCURRENT) was created, if any.
    #[serde(default)]
    pub pending_since: Option<u64>,
    /// The last rotation failed (from RotationFailed events or an audit trail).
    #[serde(default)]
    pub last_rotation_failed: bool,
    /// Dynamic users of this role past their expiry, or in a database with
    /// no matching role (filled by the dynamic-credentials module).
    #[serde(default)]
    pub orphaned_dynamic_users: Vec<String>,
}

/// A credential found outside the secret store: reported by location and
/// name, never by value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaintextCredential {
    /// `lambda-environment` or `ssm-parameter`.
    pub kind: String,
    /// Function ARN or parameter ARN/name.
    pub location: String,
    /// Variable or parameter name.
    pub name: String,
    /// Why it looks like a credential (`name pattern "password"`, `high entropy`…).
    pub reason: String,
}

/// The whole inventory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub secrets: Vec<SecretRecord>,
    pub plaintext: Vec<PlaintextCredential>,
    /// API calls made to build it, by operation.
    #[serde(default)]
    pub api_calls: BTreeMap<String, u64>,
}
