//! A live application during rotation, and the store that drills and
//! measures rotations.
//!
//! [`AppProbe`] plays an application that opens a new connection in a
//! tight loop with the secret's AWSCURRENT value, as a caching client does:
//! it keeps the value it read, and on an authentication failure re-reads
//! AWSCURRENT once and tries again. A login that fails even after that
//! re-read is what "locked out" means for an application.
//!
//! [`ObservedStore`] wraps the store Rotor uses: each request is one
//! external call for `rotor::fault` (the crash-point matrix), and the moment
//! AWSCURRENT moves is recorded (the single-user window: from the end of
//! setSecret, when the database stops accepting AWSCURRENT, to that move).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client as SmClient;
use rotor::engine::Engine;
use rotor::fault;
use rotor::secret::Require;
use rotor::store::{ListFilter, SecretMetadata, SecretStore, SecretSummary, VersionRef};
use rotor::{DbSecret, Error, Result, SecretString};

const SM: &str = "secretsmanager";

/// A store whose requests count as external calls and whose AWSCURRENT
/// moves are timed.
pub struct ObservedStore {
    inner: Arc<dyn SecretStore>,
    current_moved: Mutex<Option<Instant>>,
}

impl ObservedStore {
    pub fn new(inner: Arc<dyn SecretStore>) -> ObservedStore {
        ObservedStore {
            inner,
            current_moved: Mutex::new(None),
        }
    }

    /// When UpdateSecretVersionStage last moved AWSCURRENT (its answer came back).
    pub fn current_moved(&self) -> Option<Instant> {
        self.current_moved.lock().ok().and_then(|t| *t)
    }
}

#[async_trait]
impl SecretStore for ObservedStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn describe(&self, secret_id: &str) -> Result<SecretMetadata> {
        fault::call(SM, "DescribeSecret", self.inner.describe(secret_id)).await
    }
    async fn get(&self, secret_id: &str, version: VersionRef<'_>) -> Result<Option<SecretString>> {
        fault::call(SM, "GetSecretValue", self.inner.get(secret_id, version)).await
    }
    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        rotation_token: Option<&str>,
    ) -> Result<()> {
        let put = self
            .inner
            .put_pending(secret_id, token, value, rotation_token);
        fault::call(SM, "PutSecretValue", put).await
    }
    async fn update_stage(
        &self,
        secret_id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<()> {
        let update = self
            .inner
            .update_stage(secret_id, stage, move_to, remove_from);
        fault::call(SM, "UpdateSecretVersionStage", update).await?;
        if stage == rotor::store::AWSCURRENT
            && move_to.is_some()
            && let Ok(mut t) = self.current_moved.lock()
        {
            *t = Some(Instant::now());
        }
        Ok(())
    }
    async fn list_versions(&self, secret_id: &str) -> Result<Vec<String>> {
        fault::call(
            SM,
            "ListSecretVersionIds",
            self.inner.list_versions(secret_id),
        )
        .await
    }
    async fn list_secrets(&self, filter: &ListFilter) -> Result<Vec<SecretSummary>> {
        fault::call(SM, "ListSecrets", self.inner.list_secrets(filter)).await
    }
    async fn tag(&self, secret_id: &str, key: &str, value: &str) -> Result<()> {
        fault::call(SM, "TagResource", self.inner.tag(secret_id, key, value)).await
    }
    async fn request_rotation(&self, secret_id: &str) -> Result<bool> {
        fault::call(SM, "RotateSecret", self.inner.request_rotation(secret_id)).await
    }
}

/// What the application saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Logins tried with the cached value.
    pub attempts: u64,
    /// Of those, refused (the cached value was stale or the window was open).
    pub first_try_refused: u64,
    /// Refused again after re-reading AWSCURRENT: the application is locked out.
    pub failed_after_reread: u64,
    /// Re-reads of AWSCURRENT that the store did not answer (moto's HTTP
    /// 500 under load); the login is then tried with the cached value.
    pub reread_failed: u64,
    /// Failures that were not a refused login (network, TLS): must be 0.
    pub other_errors: u64,
}

/// The application: a task logging in every `interval` until stopped.
pub struct AppProbe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<ProbeReport>,
    attempts: Arc<AtomicU64>,
}

/// AWSCURRENT, read as an application reads it.
async fn read_current(sm: &SmClient, arn: &str) -> Option<DbSecret> {
    let value = sm
        .get_secret_value()
        .secret_id(arn)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .ok()?
        .secret_string?;
    crate::leaks::remember(&value);
    DbSecret::parse(
        &SecretString::new(value),
        arn,
        "AWSCURRENT",
        Require::Connection,
    )
    .ok()
}

impl AppProbe {
    pub async fn start(
        engine: Arc<dyn Engine>,
        sm: SmClient,
        arn: String,
        interval: Duration,
    ) -> AppProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let mut cached = read_current(&sm, &arn)
            .await
            .expect("the probe reads AWSCURRENT");
        let (stop_flag, counter) = (stop.clone(), attempts.clone());
        let task = tokio::spawn(async move {
            let mut report = ProbeReport::default();
            while !stop_flag.load(Ordering::SeqCst) {
                report.attempts += 1;
                counter.fetch_add(1, Ordering::SeqCst);
                match engine.connect(&cached, "app").await {
                    Ok(_) => {}
                    Err(Error::LoginRefused { .. }) => {
                        report.first_try_refused += 1;
                        match read_current(&sm, &arn).await {
                            Some(fresh) => cached = fresh,
                            None => report.reread_failed += 1,
                        }
                        match engine.connect(&cached, "app").await {
                            Ok(_) => {}
                            Err(Error::LoginRefused { .. }) => report.failed_after_reread += 1,
                            Err(_) => report.other_errors += 1,
                        }
                    }
                    Err(_) => report.other_errors += 1,
                }
                tokio::time::sleep(interval).await;
            }
            report
        });
        AppProbe {
            stop,
            task,
            attempts,
        }
    }

    /// Logins tried so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    pub async fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("probe task")
    }
}

/// Median and maximum of durations (milliseconds); `None` when empty.
pub fn median_max(samples: &[Duration]) -> Option<(f64, f64)> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let max = *ms.last()?;
    Some((ms[ms.len() / 2], max))
}

/// One rotation as the service drives it (RotateSecret, then the four steps
/// back to back, without Lambda's invocation overhead). Returns the time
/// from the end of setSecret to AWSCURRENT's move: for a single user, the
/// window in which the database accepts only the pending password.
pub async fn rotate_observed(
    rotator: &rotor::Rotator,
    store: &ObservedStore,
    moto: &crate::MotoService,
    arn: &str,
) -> Duration {
    let token = moto.start_rotation(arn).await;
    let mut set_done = None;
    for step in rotor::Step::ALL {
        let event = rotor::RotationEvent {
            step: step.as_str().to_string(),
            secret_id: arn.to_string(),
            token: token.clone(),
            rotation_token: None,
        };
        // As the service does: a step that fails retryably (moto answers
        // HTTP 500 now and then under load) is invoked again.
        let mut attempt = 1;
        loop {
            match rotator.handle(&event).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() && attempt < 5 => attempt += 1,
                Err(e) => panic!("{step} (attempt {attempt}): {e}"),
            }
        }
        if step == rotor::Step::SetSecret {
            set_done = Some(Instant::now());
        }
    }
    let (Some(set), Some(moved)) = (set_done, store.current_moved()) else {
        panic!("the rotation did not move AWSCURRENT");
    };
    moved.saturating_duration_since(set)
}
