//! The secret store: a narrow trait over a service that keeps versioned
//! secrets with staging labels, and its implementations.
//!
//! The trait has exactly the operations the rotation protocol needs —
//! describe, get a version by stage or id, put a pending version, move or
//! remove a stage — with Secrets Manager's semantics, which every
//! implementation reproduces:
//!
//! - a version id (the rotation token) names one immutable value; putting the
//!   same id again with the same value is a no-op, with another value an error;
//! - a staging label sits on at most one version; moving `AWSCURRENT` to a
//!   version moves `AWSPREVIOUS` to the version that was current;
//! - versions that lose every label are deprecated, not listed by describe.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::Result;
use crate::secret::SecretString;

pub mod local;
#[cfg(feature = "secretsmanager")]
pub mod secretsmanager;

pub use local::LocalStore;
#[cfg(feature = "secretsmanager")]
pub use secretsmanager::SecretsManagerStore;

pub const AWSCURRENT: &str = "AWSCURRENT";
pub const AWSPENDING: &str = "AWSPENDING";
pub const AWSPREVIOUS: &str = "AWSPREVIOUS";

/// What describe returns: enough to validate a rotation event.
#[derive(Clone, Debug, Default)]
pub struct SecretMetadata {
    pub arn: String,
    pub name: String,
    /// `None` when the service did not say (never configured).
    pub rotation_enabled: Option<bool>,
    pub rotation_lambda_arn: Option<String>,
    /// Version id → staging labels; versions without a label are left out.
    pub versions: BTreeMap<String, Vec<String>>,
    pub tags: BTreeMap<String, String>,
    /// Seconds since the epoch of the last finished rotation, if any.
    pub last_rotated: Option<u64>,
    /// Seconds since the epoch of the last change of value or labels.
    pub last_changed: Option<u64>,
    pub created: Option<u64>,
}

impl SecretMetadata {
    /// The version that carries `stage`, if any.
    pub fn version_with(&self, stage: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == stage))
            .map(|(id, _)| id.as_str())
    }

    /// The labels of one version (empty when it has none or does not exist).
    pub fn stages_of(&self, version: &str) -> &[String] {
        self.versions.get(version).map_or(&[], Vec::as_slice)
    }

    pub fn has_stage(&self, version: &str, stage: &str) -> bool {
        self.stages_of(version).iter().any(|s| s == stage)
    }
}

/// One secret of a listing.
#[derive(Clone, Debug, Default)]
pub struct SecretSummary {
    pub arn: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

/// Which secrets to list.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Names starting with this.
    pub name_prefix: Option<String>,
    /// Secrets carrying a tag with this key.
    pub tag_key: Option<String>,
}

impl ListFilter {
    pub fn matches(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.name_prefix
            .as_deref()
            .is_none_or(|p| name.starts_with(p))
            && self.tag_key.as_deref().is_none_or(|k| tags.contains_key(k))
    }
}

/// Which version to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionRef<'a> {
    Stage(&'a str),
    Id(&'a str),
}

impl std::fmt::Display for VersionRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionRef::Stage(s) => write!(f, "stage {s}"),
            VersionRef::Id(id) => write!(f, "version {id}"),
        }
    }
}

/// A store of versioned, staged secrets.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// A short name for logs: `secretsmanager`, `local`.
    fn kind(&self) -> &'static str;

    async fn describe(&self, secret_id: &str) -> Result<SecretMetadata>;

    /// The value of one version; `None` when the version or stage does not
    /// exist or holds no value yet (the service's placeholder for a token).
    async fn get(&self, secret_id: &str, version: VersionRef<'_>) -> Result<Option<SecretString>>;

    /// Stores `value` as version `token` labelled `AWSPENDING`.
    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        rotation_token: Option<&str>,
    ) -> Result<()>;

    /// UpdateSecretVersionStage: moves `stage` to `move_to` and/or removes it
    /// from `remove_from`.
    async fn update_stage(
        &self,
        secret_id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<()>;

    /// One version parsed as a database secret; `NotFound` when it has no value.
    async fn db_secret(
        &self,
        secret_id: &str,
        version: VersionRef<'_>,
        require: crate::secret::Require,
    ) -> Result<crate::secret::DbSecret> {
        let value = self
            .get(secret_id, version)
            .await?
            .ok_or_else(|| crate::Error::NotFound {
                what: format!("{version} of {secret_id}"),
            })?;
        let label = match version {
            VersionRef::Stage(s) | VersionRef::Id(s) => s,
        };
        crate::secret::DbSecret::parse(&value, secret_id, label, require)
    }

    /// Every version id, labelled or not, newest first (recovery from an
    /// abandoned rotation looks at unlabelled ones).
    async fn list_versions(&self, secret_id: &str) -> Result<Vec<String>>;

    /// Secrets matching the filter (all pages).
    async fn list_secrets(&self, filter: &ListFilter) -> Result<Vec<SecretSummary>>;

    /// Sets one tag on a secret.
    async fn tag(&self, secret_id: &str, key: &str, value: &str) -> Result<()>;

    /// Asks the service to rotate with the secret's configured function
    /// (RotateSecret). `Ok(false)` when this store has no such service.
    async fn request_rotation(&self, secret_id: &str) -> Result<bool>;
}
