//! The embedded local store: one JSON file (or memory) with Secrets Manager's
//! versions and staging-label semantics, for the demo, local runs and tests.
//!
//! The file is created with mode 0600 and every change is written to a
//! temporary file in the same directory, synced, then renamed over the old
//! one, so a crash leaves either the old or the new document, never a torn
//! one. An advisory lock on `<file>.lock` serialises processes; each
//! operation re-reads the file so that two CLIs see each other's changes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{AWSCURRENT, AWSPENDING, AWSPREVIOUS, SecretMetadata, SecretStore, VersionRef};
use crate::error::{Error, Result};
use crate::secret::SecretString;

/// Unlabelled (deprecated) versions kept per secret, newest first.
const DEPRECATED_VERSIONS_KEPT: usize = 5;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Document {
    #[serde(default)]
    secrets: BTreeMap<String, StoredSecret>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StoredSecret {
    arn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_rotated: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_changed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotation_enabled: Option<bool>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    versions: BTreeMap<String, StoredVersion>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct StoredVersion {
    /// `None` for a token staged before its value exists (as RotateSecret does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default)]
    stages: Vec<String>,
    created: u64,
    /// Order of creation within the secret: versions made in the same second
    /// must still sort newest first (recovery tries the newest ones).
    #[serde(default)]
    seq: u64,
}

/// The next creation number of a secret's versions.
fn next_seq(secret: &StoredSecret) -> u64 {
    secret
        .versions
        .values()
        .map(|v| v.seq)
        .max()
        .map_or(0, |m| m + 1)
}

impl std::fmt::Debug for StoredVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredVersion")
            .field("stages", &self.stages)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// A summary line for `rotor secrets list`.
#[derive(Clone, Debug, Serialize)]
pub struct LocalSecretSummary {
    pub name: String,
    pub arn: String,
    pub versions: BTreeMap<String, Vec<String>>,
}

/// The local store. See the module docs.
#[derive(Debug)]
pub struct LocalStore {
    path: Option<PathBuf>,
    memory: Mutex<Document>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LocalStore {
    /// A store in a file, created (mode 0600) on first write.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let store = LocalStore {
            path: Some(path.as_ref().to_path_buf()),
            memory: Mutex::new(Document::default()),
        };
        // Fail early on a file that exists but cannot be parsed.
        store.with_document(false, |_| Ok(()))?;
        Ok(store)
    }

    /// A store that lives only in memory (unit tests).
    pub fn in_memory() -> Self {
        LocalStore {
            path: None,
            memory: Mutex::new(Document::default()),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Runs `f` on the current document; writes it back when `write` is set
    /// and `f` succeeded.
    fn with_document<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Document) -> Result<T>,
    ) -> Result<T> {
        let mut memory = self
            .memory
            .lock()
            .map_err(|_| Error::Config("local store lock poisoned by an earlier panic".into()))?;
        let Some(path) = &self.path else {
            let mut doc = memory.clone();
            let out = f(&mut doc)?;
            if write {
                *memory = doc;
            }
            return Ok(out);
        };
        let lock_path = path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(lock_path.display(), e))?;
        lock.lock().map_err(|e| Error::io(lock_path.display(), e))?;
        let mut doc = match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    path.display(),
                    format!(
                        "not a Rotor local store ({e}); move it away or point --local elsewhere"
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Document::default(),
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        let out = f(&mut doc)?;
        if write {
            write_atomically(path, &doc)?;
        }
        *memory = doc;
        drop(lock);
        Ok(out)
    }

    fn find<'d>(doc: &'d mut Document, id: &str) -> Result<(String, &'d mut StoredSecret)> {
        let name = if doc.secrets.contains_key(id) {
            id.to_string()
        } else {
            doc.secrets
                .iter()
                .find(|(_, s)| s.arn == id)
                .map(|(n, _)| n.clone())
                .ok_or_else(|| Error::NotFound {
                    what: format!("secret {id} in the local store"),
                })?
        };
        let secret = doc.secrets.get_mut(&name).ok_or_else(|| Error::NotFound {
            what: format!("secret {id}"),
        })?;
        Ok((name, secret))
    }

    /// Creates a secret, or stores a new AWSCURRENT value for an existing one
    /// (like CreateSecret / PutSecretValue without a stage). Returns the ARN.
    pub fn put_current(&self, name: &str, value: &SecretString) -> Result<String> {
        if name.is_empty() || name.starts_with("arn:") {
            return Err(Error::Config(format!(
                "{name:?} is not a secret name; use letters, digits and /_+=.@-"
            )));
        }
        self.with_document(true, |doc| {
            let secret = doc
                .secrets
                .entry(name.to_string())
                .or_insert_with(|| StoredSecret {
                    arn: format!("arn:rotor:local:000000000000:secret:{name}"),
                    created: Some(now()),
                    ..Default::default()
                });
            secret.last_changed = Some(now());
            let id = uuid::Uuid::new_v4().to_string();
            let seq = next_seq(secret);
            secret.versions.insert(
                id.clone(),
                StoredVersion {
                    value: Some(value.expose().to_string()),
                    stages: vec![],
                    created: now(),
                    seq,
                },
            );
            move_stage(name, secret, AWSCURRENT, Some(&id), None, true)?;
            Ok(secret.arn.clone())
        })
    }

    /// Stages a fresh token as AWSPENDING with no value, as RotateSecret does
    /// before it invokes createSecret. Refuses while another rotation is
    /// unfinished (AWSPENDING on a version that is not AWSCURRENT).
    pub fn start_rotation(&self, secret_id: &str) -> Result<String> {
        self.with_document(true, |doc| {
            let (name, secret) = Self::find(doc, secret_id)?;
            if let Some((id, v)) = secret.versions.iter().find(|(_, v)| {
                v.stages.iter().any(|s| s == AWSPENDING) && !v.stages.iter().any(|s| s == AWSCURRENT)
            }) {
                let _ = v;
                return Err(Error::Config(format!(
                    "secret {name} has an unfinished rotation (AWSPENDING on version {id}); finish it with `rotor rotate` or remove the label"
                )));
            }
            let token = uuid::Uuid::new_v4().to_string();
            let seq = next_seq(secret);
            secret.versions.insert(
                token.clone(),
                StoredVersion {
                    value: None,
                    stages: vec![],
                    created: now(),
                    seq,
                },
            );
            move_stage(&name, secret, AWSPENDING, Some(&token), None, true)?;
            Ok(token)
        })
    }

    /// Turns rotation on or off (what describe reports as RotationEnabled).
    pub fn set_rotation_enabled(&self, secret_id: &str, enabled: Option<bool>) -> Result<()> {
        self.with_document(true, |doc| {
            Self::find(doc, secret_id)?.1.rotation_enabled = enabled;
            Ok(())
        })
    }

    pub fn set_tag(&self, secret_id: &str, key: &str, value: &str) -> Result<()> {
        self.with_document(true, |doc| {
            Self::find(doc, secret_id)?
                .1
                .tags
                .insert(key.to_string(), value.to_string());
            Ok(())
        })
    }

    /// Every secret with its labelled versions.
    pub fn list(&self) -> Result<Vec<LocalSecretSummary>> {
        self.with_document(false, |doc| {
            Ok(doc
                .secrets
                .iter()
                .map(|(name, s)| LocalSecretSummary {
                    name: name.clone(),
                    arn: s.arn.clone(),
                    versions: labelled(s),
                })
                .collect())
        })
    }
}

fn labelled(s: &StoredSecret) -> BTreeMap<String, Vec<String>> {
    s.versions
        .iter()
        .filter(|(_, v)| !v.stages.is_empty())
        .map(|(id, v)| (id.clone(), v.stages.clone()))
        .collect()
}

/// UpdateSecretVersionStage semantics. `internal` skips the RemoveFromVersionId
/// check for the store's own bookkeeping (PutSecretValue moves labels freely).
fn move_stage(
    name: &str,
    secret: &mut StoredSecret,
    stage: &str,
    move_to: Option<&str>,
    remove_from: Option<&str>,
    internal: bool,
) -> Result<()> {
    let invalid = |detail: String| Error::Store {
        operation: "UpdateSecretVersionStage",
        secret: name.to_string(),
        detail,
        retryable: false,
    };
    let holder = secret
        .versions
        .iter()
        .find(|(_, v)| v.stages.iter().any(|s| s == stage))
        .map(|(id, _)| id.clone());
    if let Some(from) = remove_from
        && holder.as_deref() != Some(from)
    {
        return Err(invalid(format!(
            "InvalidParameterException: stage {stage} is not attached to version {from}"
        )));
    }
    if let Some(to) = move_to {
        if !secret.versions.contains_key(to) {
            return Err(invalid(format!(
                "ResourceNotFoundException: version {to} does not exist"
            )));
        }
        if holder.as_deref() == Some(to) {
            return Ok(());
        }
        if let Some(h) = &holder
            && remove_from.is_none()
            && !internal
        {
            return Err(invalid(format!(
                "InvalidParameterException: stage {stage} is attached to version {h}; pass RemoveFromVersionId"
            )));
        }
    } else if stage == AWSCURRENT {
        return Err(invalid(
            "InvalidParameterException: AWSCURRENT cannot be removed, only moved".into(),
        ));
    }
    if let Some(h) = &holder
        && let Some(v) = secret.versions.get_mut(h)
    {
        v.stages.retain(|s| s != stage);
    }
    if let Some(to) = move_to {
        if stage == AWSCURRENT
            && let Some(old) = &holder
        {
            for v in secret.versions.values_mut() {
                v.stages.retain(|s| s != AWSPREVIOUS);
            }
            if let Some(v) = secret.versions.get_mut(old) {
                v.stages.push(AWSPREVIOUS.to_string());
            }
        }
        if let Some(v) = secret.versions.get_mut(to) {
            v.stages.push(stage.to_string());
        }
    }
    prune(secret);
    Ok(())
}

fn prune(secret: &mut StoredSecret) {
    let mut deprecated: Vec<(String, u64)> = secret
        .versions
        .iter()
        .filter(|(_, v)| v.stages.is_empty())
        .map(|(id, v)| (id.clone(), v.created))
        .collect();
    deprecated.sort_by_key(|d| std::cmp::Reverse(d.1));
    for (id, _) in deprecated.into_iter().skip(DEPRECATED_VERSIONS_KEPT) {
        secret.versions.remove(&id);
    }
}

fn write_atomically(path: &Path, doc: &Document) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store.json".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let bytes = serde_json::to_vec_pretty(doc)
        .map_err(|e| Error::io(path.display(), format!("cannot serialise: {e}")))?;
    let result = (|| -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file: File = options.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path.display(), e))
}

#[async_trait]
impl SecretStore for LocalStore {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn describe(&self, secret_id: &str) -> Result<SecretMetadata> {
        self.with_document(false, |doc| {
            let (name, s) = Self::find(doc, secret_id)?;
            Ok(SecretMetadata {
                arn: s.arn.clone(),
                name,
                rotation_enabled: s.rotation_enabled,
                rotation_lambda_arn: None,
                versions: labelled(s),
                tags: s.tags.clone(),
                last_rotated: s.last_rotated,
                last_changed: s.last_changed,
                created: s.created,
            })
        })
    }

    async fn get(&self, secret_id: &str, version: VersionRef<'_>) -> Result<Option<SecretString>> {
        self.with_document(false, |doc| {
            let (_, s) = Self::find(doc, secret_id)?;
            let found = match version {
                VersionRef::Id(id) => s.versions.get(id),
                VersionRef::Stage(stage) => s
                    .versions
                    .values()
                    .find(|v| v.stages.iter().any(|x| x == stage)),
            };
            Ok(found.and_then(|v| v.value.clone()).map(SecretString::new))
        })
    }

    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        _rotation_token: Option<&str>,
    ) -> Result<()> {
        self.with_document(true, |doc| {
            let (name, s) = Self::find(doc, secret_id)?;
            match s.versions.get_mut(token) {
                Some(v) if v.value.is_none() => v.value = Some(value.expose().to_string()),
                Some(v) if v.value.as_deref() == Some(value.expose()) => {}
                Some(_) => {
                    return Err(Error::Store {
                        operation: "PutSecretValue",
                        secret: name,
                        detail: format!(
                            "ResourceExistsException: version {token} already exists with a different value"
                        ),
                        retryable: false,
                    });
                }
                None => {
                    let seq = next_seq(s);
                    s.versions.insert(
                        token.to_string(),
                        StoredVersion {
                            value: Some(value.expose().to_string()),
                            stages: vec![],
                            created: now(),
                            seq,
                        },
                    );
                }
            }
            move_stage(&name, s, AWSPENDING, Some(token), None, true)
        })
    }

    async fn update_stage(
        &self,
        secret_id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<()> {
        self.with_document(true, |doc| {
            let (name, s) = Self::find(doc, secret_id)?;
            move_stage(&name, s, stage, move_to, remove_from, false)?;
            s.last_changed = Some(now());
            if stage == AWSCURRENT && move_to.is_some() {
                s.last_rotated = Some(now());
            }
            Ok(())
        })
    }

    async fn list_secrets(&self, filter: &super::ListFilter) -> Result<Vec<super::SecretSummary>> {
        self.with_document(false, |doc| {
            Ok(doc
                .secrets
                .iter()
                .filter(|(name, s)| filter.matches(name, &s.tags))
                .map(|(name, s)| super::SecretSummary {
                    arn: s.arn.clone(),
                    name: name.clone(),
                    tags: s.tags.clone(),
                })
                .collect())
        })
    }

    async fn tag(&self, secret_id: &str, key: &str, value: &str) -> Result<()> {
        self.set_tag(secret_id, key, value)
    }

    async fn request_rotation(&self, _secret_id: &str) -> Result<bool> {
        Ok(false)
    }

    async fn list_versions(&self, secret_id: &str) -> Result<Vec<String>> {
        self.with_document(false, |doc| {
            let (_, s) = Self::find(doc, secret_id)?;
            let mut v: Vec<(&String, &StoredVersion)> = s
                .versions
                .iter()
                .filter(|(_, v)| v.value.is_some())
                .collect();
            // Newest first, by second and then by order of creation.
            v.sort_by_key(|(_, v)| std::cmp::Reverse((v.created, v.seq)));
            Ok(v.into_iter().map(|(id, _)| id.clone()).collect())
        })
    }
}
