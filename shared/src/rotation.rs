//! The Secrets Manager rotation protocol, once, for every engine and strategy.
//!
//! # The staging-label state machine
//!
//! A secret has versions; three staging labels mark the ones that matter.
//! Secrets Manager starts a rotation by staging a fresh token as
//! `AWSPENDING` (no value yet) and invokes the function four times with it:
//!
//! ```text
//!               createSecret          setSecret            testSecret        finishSecret
//! AWSCURRENT ── v1 ─────────────────── v1 ───────────────── v1 ────────────── v2 (token)
//! AWSPENDING ── token (no value) ───── token = v2 value ─── v2 ────────────── (removed)
//! AWSPREVIOUS ─ v0 ─────────────────── v0 ───────────────── v0 ────────────── v1
//! database ──── accepts v1 ─────────── accepts v1 ───────── accepts v2 ─────── accepts v2
//!                                       (single user: v2 only; alternating: v1 and v2)
//! ```
//!
//! - **createSecret** copies AWSCURRENT, puts a new password (and, for
//!   alternating users, the other username) as the token's value.
//! - **setSecret** makes the database accept the pending credentials.
//! - **testSecret** logs in with them.
//! - **finishSecret** moves AWSCURRENT to the token; the service moves
//!   AWSPREVIOUS to the old current version; Rotor removes AWSPENDING.
//!
//! Every invocation is first validated exactly as AWS's functions do:
//! rotation explicitly disabled → error; token not a version → error; token
//! already AWSCURRENT → success, nothing done; token not AWSPENDING → error;
//! unknown step → error.
//!
//! # Promises
//!
//! - *Idempotent*: each step checks whether its effect already exists and
//!   then changes nothing — no new version, no label moved, no new password
//!   verifier written.
//! - *Never lock out*: finishSecret moves AWSCURRENT only to credentials that
//!   log in — verified here unless this same process verified the token in
//!   testSecret — so a finishSecret run by hand before setSecret fails
//!   harmlessly. setSecret for a single user falls back from the current to
//!   the previous credentials, then to recent unlabelled versions (an
//!   abandoned rotation), to find a login that can change the password.
//! - *Few round trips*: version values are immutable, so values read or
//!   written by an earlier step of this warm process are reused (keyed by
//!   secret ARN and version id); passwords are generated locally.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{Instrument, field};

use crate::engine::{ClonePolicy, Engine, Session};
use crate::error::{Error, Result};
use crate::event::{RotationEvent, Step};
use crate::password::PasswordPolicy;
use crate::rds::RdsLookup;
use crate::secret::{DbSecret, Require, SecretString};
use crate::store::{AWSCURRENT, AWSPENDING, AWSPREVIOUS, SecretMetadata, SecretStore, VersionRef};
use crate::strategy::Strategy;

/// Values kept per warm process before the cache is reset.
const CACHE_LIMIT: usize = 64;
/// Unlabelled versions setSecret tries when no labelled credential logs in.
const RECOVERY_VERSIONS: usize = 3;

/// What a step did, for logs, the CLI and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The token was already AWSCURRENT: nothing to do.
    AlreadyCurrent,
    Created,
    AlreadyCreated,
    /// The database now accepts the pending credentials.
    PasswordSet,
    /// An alternate user was created with the pending password.
    UserCreated,
    AlreadySet,
    Tested,
    Finished,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::AlreadyCurrent => "already-current",
            Outcome::Created => "created",
            Outcome::AlreadyCreated => "already-created",
            Outcome::PasswordSet => "password-set",
            Outcome::UserCreated => "user-created",
            Outcome::AlreadySet => "already-set",
            Outcome::Tested => "tested",
            Outcome::Finished => "finished",
        }
    }

    /// Whether the step changed anything.
    pub fn changed(self) -> bool {
        matches!(
            self,
            Outcome::Created | Outcome::PasswordSet | Outcome::UserCreated | Outcome::Finished
        )
    }
}

/// How a step was invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Invocation {
    /// By Secrets Manager (or a person replaying its event).
    Service,
    /// By `Rotator::rotate`, which plays the service: createSecret may use a
    /// token it just made up, since the API cannot stage an empty version.
    InProcessNewToken,
}

/// Timing of one step of an in-process rotation.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: Step,
    pub outcome: Outcome,
    pub millis: f64,
}

/// What an in-process rotation did.
#[derive(Clone, Debug)]
pub struct RotationReport {
    pub secret_arn: String,
    pub token: String,
    pub resumed: bool,
    pub steps: Vec<StepReport>,
}

#[derive(Default)]
struct ProcessMemory {
    /// (secret ARN, version id) → value. Versions never change once written.
    values: HashMap<(String, String), SecretString>,
    /// (secret ARN, token) whose pending login testSecret verified.
    verified: HashSet<(String, String)>,
}

/// Runs rotation steps for one engine and strategy.
pub struct Rotator {
    store: Arc<dyn SecretStore>,
    engine: Arc<dyn Engine>,
    strategy: Strategy,
    policy: PasswordPolicy,
    rds: Option<Arc<dyn RdsLookup>>,
    ignore_disabled: bool,
    username_limit: Option<usize>,
    allow_privileged_clone: bool,
    memory: Mutex<ProcessMemory>,
}

/// The key of a master secret that lets alternating users clone
/// superuser-like powers (see [`ClonePolicy`]).
pub const ALLOW_PRIVILEGED_CLONE_KEY: &str = "rotor_allow_privileged_clone";

/// `ROTOR_ALLOW_PRIVILEGED_CLONE` on the function: the same opt-in for every
/// secret it rotates.
pub fn allow_privileged_clone_from_env() -> Result<bool> {
    match std::env::var("ROTOR_ALLOW_PRIVILEGED_CLONE") {
        Err(_) => Ok(false),
        Ok(v) if v.trim().is_empty() || v.trim().eq_ignore_ascii_case("false") => Ok(false),
        Ok(v) if v.trim().eq_ignore_ascii_case("true") => Ok(true),
        Ok(v) => Err(Error::Config(format!(
            "ROTOR_ALLOW_PRIVILEGED_CLONE={v:?}; use true or false"
        ))),
    }
}

/// `USERNAME_CHARACTER_LIMIT`, when set.
pub fn username_limit_from_env() -> Result<Option<usize>> {
    match std::env::var("USERNAME_CHARACTER_LIMIT") {
        Err(_) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
            Error::Config(format!(
                "USERNAME_CHARACTER_LIMIT={v:?} is not a whole number; unset it to use the server's own limit"
            ))
        }),
    }
}

impl Rotator {
    pub fn new(
        store: Arc<dyn SecretStore>,
        engine: Arc<dyn Engine>,
        strategy: Strategy,
        policy: PasswordPolicy,
    ) -> Self {
        Rotator {
            store,
            engine,
            strategy,
            policy,
            rds: None,
            ignore_disabled: false,
            username_limit: None,
            allow_privileged_clone: false,
            memory: Mutex::new(ProcessMemory::default()),
        }
    }

    /// Lets alternating rotation resolve RDS-managed master secrets and replicas.
    pub fn with_rds(mut self, rds: Arc<dyn RdsLookup>) -> Self {
        self.rds = Some(rds);
        self
    }

    /// `USERNAME_CHARACTER_LIMIT`: new usernames longer than this are refused
    /// in createSecret, before anything changes. Unset: the engine's and the
    /// connected server's own limits apply.
    pub fn with_username_limit(mut self, limit: Option<usize>) -> Self {
        self.username_limit = limit;
        self
    }

    /// Lets alternating users clone superuser-like powers for every secret
    /// (`ROTOR_ALLOW_PRIVILEGED_CLONE`); the master secret can also opt in.
    pub fn allow_privileged_clone(mut self, yes: bool) -> Self {
        self.allow_privileged_clone = yes;
        self
    }

    /// Rotates even when the secret says rotation is disabled (CLI only).
    pub fn ignore_disabled(mut self, yes: bool) -> Self {
        self.ignore_disabled = yes;
        self
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn store(&self) -> &Arc<dyn SecretStore> {
        &self.store
    }

    /// Forgets what this process verified and read, as a cold start would.
    pub fn forget(&self) {
        if let Ok(mut m) = self.memory.lock() {
            *m = ProcessMemory::default();
        }
    }

    /// Handles one rotation event, inside a span that carries the secret,
    /// step, token, strategy, outcome and duration, and logs one line.
    pub async fn handle(&self, event: &RotationEvent) -> Result<Outcome> {
        self.handle_as(event, Invocation::Service).await
    }

    async fn handle_as(&self, event: &RotationEvent, how: Invocation) -> Result<Outcome> {
        let span = tracing::info_span!(
            "rotation_step",
            step = %event.step,
            secret_id = %event.secret_id,
            secret_arn = field::Empty,
            token = %event.token,
            strategy = self.strategy.name(),
            engine = self.engine.name(),
            store = self.store.kind(),
        );
        let started = Instant::now();
        let step = self.step(event, how).instrument(span.clone());
        // In Lambda, the whole step (Secrets Manager calls included) ends
        // while there is still time to log and report; each database call
        // has its own, shorter bound inside.
        let result = match crate::deadline::remaining() {
            Some(left) => {
                let what = format!("the {} step", event.step);
                let backstop = left + crate::deadline::BACKSTOP_GRACE;
                crate::deadline::bounded(&event.secret_id, &what, backstop, step).await
            }
            None => step.await,
        };
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        let _enter = span.enter();
        match &result {
            Ok(outcome) => tracing::info!(
                outcome = outcome.as_str(),
                changed = outcome.changed(),
                duration_ms = millis,
                "step succeeded"
            ),
            Err(e) => tracing::error!(
                outcome = "failed",
                error_kind = e.kind(),
                retryable = e.is_retryable(),
                duration_ms = millis,
                error = %e,
                "step failed"
            ),
        }
        result
    }

    async fn step(&self, event: &RotationEvent, how: Invocation) -> Result<Outcome> {
        event.check()?;
        let meta = self.store.describe(&event.secret_id).await?;
        tracing::Span::current().record("secret_arn", meta.arn.as_str());
        let token = event.token.as_str();
        if meta.rotation_enabled == Some(false) && !self.ignore_disabled {
            return Err(Error::RotationDisabled {
                secret: meta.arn.clone(),
            });
        }
        let known = meta.versions.contains_key(token);
        let fresh = how == Invocation::InProcessNewToken && !known;
        if !known && !fresh {
            return Err(Error::UnknownToken {
                secret: meta.arn.clone(),
                token: token.to_string(),
            });
        }
        if meta.has_stage(token, AWSCURRENT) {
            // A finishSecret cut off between moving AWSCURRENT and removing
            // AWSPENDING is completed by its retry; nothing else is done.
            if meta.has_stage(token, AWSPENDING)
                && Step::parse(&event.step) == Some(Step::FinishSecret)
            {
                self.remove_pending(&meta.arn, token).await?;
                tracing::info!("version is already AWSCURRENT: removed its leftover AWSPENDING");
            } else {
                tracing::info!("version is already AWSCURRENT: nothing to do");
            }
            return Ok(Outcome::AlreadyCurrent);
        }
        if !fresh && !meta.has_stage(token, AWSPENDING) {
            return Err(Error::NotPending {
                secret: meta.arn.clone(),
                token: token.to_string(),
            });
        }
        let step = Step::parse(&event.step).ok_or_else(|| Error::UnknownStep {
            secret: meta.arn.clone(),
            step: event.step.clone(),
        })?;
        if fresh && step != Step::CreateSecret {
            return Err(Error::UnknownToken {
                secret: meta.arn.clone(),
                token: token.to_string(),
            });
        }
        match step {
            Step::CreateSecret => {
                self.create_secret(&meta, token, event.rotation_token.as_deref())
                    .await
            }
            Step::SetSecret => self.set_secret(&meta, token).await,
            Step::TestSecret => self.test_secret(&meta, token).await,
            Step::FinishSecret => self.finish_secret(&meta, token).await,
        }
    }

    // ---- version values -------------------------------------------------

    fn remembered(&self, arn: &str, version: &str) -> Option<SecretString> {
        let memory = self.memory.lock().ok()?;
        memory
            .values
            .get(&(arn.to_string(), version.to_string()))
            .cloned()
    }

    fn remember(&self, arn: &str, version: &str, value: &SecretString) {
        if let Ok(mut memory) = self.memory.lock() {
            if memory.values.len() >= CACHE_LIMIT {
                memory.values.clear();
            }
            memory
                .values
                .insert((arn.to_string(), version.to_string()), value.clone());
        }
    }

    /// The raw value of a version id, from this process's memory or the store.
    async fn version_value(&self, arn: &str, version: &str) -> Result<Option<SecretString>> {
        if let Some(v) = self.remembered(arn, version) {
            return Ok(Some(v));
        }
        let value = self.store.get(arn, VersionRef::Id(version)).await?;
        if let Some(v) = &value {
            self.remember(arn, version, v);
        }
        Ok(value)
    }

    /// The parsed AWSCURRENT secret, checked against this engine.
    async fn current(&self, meta: &SecretMetadata) -> Result<(String, DbSecret)> {
        let id = meta
            .version_with(AWSCURRENT)
            .ok_or_else(|| {
                Error::bad_secret(
                    &meta.arn,
                    AWSCURRENT,
                    "no version is labelled AWSCURRENT; store a value first",
                )
            })?
            .to_string();
        let value = self.version_value(&meta.arn, &id).await?.ok_or_else(|| {
            Error::bad_secret(&meta.arn, AWSCURRENT, "the AWSCURRENT version has no value")
        })?;
        let secret = self.parse(&meta.arn, AWSCURRENT, &value)?;
        Ok((id, secret))
    }

    /// The parsed pending secret of `token`.
    async fn pending(&self, meta: &SecretMetadata, token: &str) -> Result<DbSecret> {
        let value = self.version_value(&meta.arn, token).await?.ok_or_else(|| {
            Error::bad_secret(
                &meta.arn,
                format!("AWSPENDING {token}"),
                "the pending version has no value yet; run createSecret first",
            )
        })?;
        self.parse(&meta.arn, AWSPENDING, &value)
    }

    fn parse(&self, arn: &str, label: &str, value: &SecretString) -> Result<DbSecret> {
        let secret = DbSecret::parse(value, arn, label, Require::Connection)?;
        if !self.engine.accepts(&secret.engine) {
            return Err(Error::bad_secret(
                arn,
                label,
                format!(
                    "engine {:?} is not handled by this function; it rotates {}",
                    secret.engine,
                    self.engine.engines().join(", ")
                ),
            ));
        }
        if self.strategy.uses_master() && secret.masterarn.is_none() {
            return Err(Error::bad_secret(
                arn,
                label,
                "the key \"masterarn\" is missing; alternating-users rotation needs the ARN of a master secret",
            ));
        }
        self.check_username(arn, label, &secret.username)?;
        Ok(secret)
    }

    fn check_username(&self, arn: &str, label: &str, username: &str) -> Result<()> {
        if let Some(limit) = self.username_limit
            && username.chars().count() > limit
        {
            return Err(Error::bad_secret(
                arn,
                label,
                format!(
                    "username {username:?} is {} characters; USERNAME_CHARACTER_LIMIT is {limit} — choose a shorter username or raise the limit",
                    username.chars().count()
                ),
            ));
        }
        let limit = self.engine.max_username_bytes();
        if username.len() > limit {
            return Err(Error::bad_secret(
                arn,
                label,
                format!(
                    "username {username:?} is {} bytes; {} keeps at most {limit} and would silently truncate it — choose a shorter username",
                    username.len(),
                    self.engine.name()
                ),
            ));
        }
        Ok(())
    }

    // ---- the four steps -------------------------------------------------

    async fn create_secret(
        &self,
        meta: &SecretMetadata,
        token: &str,
        rotation_token: Option<&str>,
    ) -> Result<Outcome> {
        let (_, current) = self.current(meta).await?;
        // Idempotency is decided here, not by the store: moto silently
        // overwrites a pending version that is put twice.
        if self.version_value(&meta.arn, token).await?.is_some() {
            tracing::info!("pending version already exists: nothing to do");
            return Ok(Outcome::AlreadyCreated);
        }
        let username = self.strategy.next_username(&current.username);
        self.check_username(&meta.arn, "next version", &username)?;
        let password = self.policy.generate()?;
        let pending = current.with_credentials(Some(&username), password);
        let value = pending.to_json();
        match self
            .store
            .put_pending(&meta.arn, token, &value, rotation_token)
            .await
        {
            Ok(()) => {}
            // The same step, invoked twice at once: the other invocation's
            // value is the version now, and versions never change.
            Err(Error::Store { detail, .. }) if detail.starts_with("ResourceExistsException") => {
                tracing::info!(
                    "another invocation created the pending version first: nothing to do"
                );
                return Ok(Outcome::AlreadyCreated);
            }
            Err(e) => return Err(e),
        }
        self.remember(&meta.arn, token, &value);
        Ok(Outcome::Created)
    }

    async fn set_secret(&self, meta: &SecretMetadata, token: &str) -> Result<Outcome> {
        let (_, current) = self.current(meta).await?;
        let pending = self.pending(meta, token).await?;
        if pending.host != current.host {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSPENDING,
                format!(
                    "pending host {:?} differs from current host {:?}; a rotation cannot move a secret to another server",
                    pending.host, current.host
                ),
            ));
        }
        match self.strategy {
            Strategy::SingleUser => self.set_single_user(meta, &current, &pending).await,
            Strategy::AlternatingUsers => self.set_alternating(meta, &current, &pending).await,
        }
    }

    async fn set_single_user(
        &self,
        meta: &SecretMetadata,
        current: &DbSecret,
        pending: &DbSecret,
    ) -> Result<Outcome> {
        if pending.username != current.username {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSPENDING,
                format!(
                    "pending username {:?} differs from current username {:?}; single-user rotation changes a password, not a user",
                    pending.username, current.username
                ),
            ));
        }
        // The happy path needs one login: the current credentials.
        let mut session = match self.engine.connect(current, "current").await {
            Ok(session) => session,
            Err(Error::LoginRefused { .. }) => {
                // Either an earlier attempt already set the pending password…
                match self.engine.connect(pending, "pending").await {
                    Ok(_) => {
                        tracing::info!("pending password already works: nothing to do");
                        return Ok(Outcome::AlreadySet);
                    }
                    Err(Error::LoginRefused { .. }) => {}
                    Err(e) => return Err(e),
                }
                // …or the current password was lost: find one that still works.
                self.fallback_login(meta, current).await?
            }
            Err(e) => return Err(e),
        };
        session
            .set_own_password(&current.username, &pending.password)
            .await?;
        Ok(Outcome::PasswordSet)
    }

    /// AWSPREVIOUS, then recent unlabelled versions (a rotation that was
    /// abandoned after setSecret), as long as they name the same user and host.
    async fn fallback_login(
        &self,
        meta: &SecretMetadata,
        current: &DbSecret,
    ) -> Result<Box<dyn Session>> {
        let mut candidates: Vec<String> = Vec::new();
        if let Some(previous) = meta.version_with(AWSPREVIOUS) {
            candidates.push(previous.to_string());
        }
        // Best effort: a store that cannot list versions still has AWSPREVIOUS.
        if let Ok(all) = self.store.list_versions(&meta.arn).await {
            candidates.extend(
                all.into_iter()
                    .filter(|v| meta.stages_of(v).is_empty())
                    .take(RECOVERY_VERSIONS),
            );
        }
        for version in candidates {
            let Some(value) = self.version_value(&meta.arn, &version).await? else {
                continue;
            };
            let Ok(candidate) = DbSecret::parse(&value, &meta.arn, &version, Require::Connection)
            else {
                continue;
            };
            if candidate.username != current.username || candidate.host != current.host {
                continue;
            }
            // Only the password comes from the older version: where and how
            // to connect (port, database, TLS) are what AWSCURRENT says now.
            let candidate = current.with_credentials(None, candidate.password.clone());
            match self.engine.connect(&candidate, "previous").await {
                Ok(session) => {
                    tracing::warn!(version = %version, "current credentials refused; changing the password with an older version's credentials");
                    return Ok(session);
                }
                Err(Error::LoginRefused { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::LoginRefused {
            user: current.username.clone(),
            endpoint: crate::engine::endpoint(current, self.engine.default_port()),
            which: "previous, current and pending",
            detail: format!(
                "no version of secret {} logs in, so the password cannot be changed",
                meta.arn
            ),
        })
    }

    async fn set_alternating(
        &self,
        meta: &SecretMetadata,
        current: &DbSecret,
        pending: &DbSecret,
    ) -> Result<Outcome> {
        // Only the one alternate user may be touched: a pending version that
        // names any other role (written by someone who may write versions but
        // not log in as master) must not make the master change it.
        let expected = self.strategy.next_username(&current.username);
        if pending.username != expected {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSPENDING,
                format!(
                    "pending username {:?} is not {expected:?}, the alternate of current user {:?}; restart the rotation",
                    pending.username, current.username
                ),
            ));
        }
        // No confused deputy: whoever wrote AWSCURRENT must also know a
        // password that logs in as its user before the master acts for it
        // (AWS's multi-user functions do the same).
        match self.engine.connect(current, "current").await {
            Ok(_) => {}
            Err(Error::LoginRefused { user, endpoint, .. }) => {
                return Err(Error::LoginRefused {
                    user,
                    endpoint,
                    which: "current",
                    detail: "alternating-users rotation logs in with the AWSCURRENT credentials before it acts as master, and they were refused; nothing was changed".into(),
                });
            }
            Err(e) => return Err(e),
        }
        let master_arn = current.masterarn.clone().unwrap_or_default();
        let master = self.master(&master_arn, current).await?;
        if master.username == pending.username || master.username == current.username {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSCURRENT,
                format!(
                    "the master secret's user {:?} is the rotated user; use a separate master user",
                    master.username
                ),
            ));
        }
        let port = |s: &DbSecret| s.port.unwrap_or(self.engine.default_port());
        if master.host == current.host && port(&master) != port(current) {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSCURRENT,
                format!(
                    "current database {}:{} and master {}:{} are different servers on the same host; the login that proves AWSCURRENT and the master must reach the same server",
                    current.host,
                    port(current),
                    master.host,
                    port(&master)
                ),
            ));
        }
        if master.host != current.host && !self.is_replica(current, &master).await? {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSCURRENT,
                format!(
                    "current database host {:?} is not the same host as, nor an RDS read replica of, master {:?} ({master_arn})",
                    current.host, master.host
                ),
            ));
        }
        let mut session = self.engine.connect(&master, "master").await?;
        if let Some(limit) = session.username_limit()
            && pending.username.chars().count() > limit
        {
            return Err(Error::bad_secret(
                &meta.arn,
                AWSPENDING,
                format!(
                    "username {:?} is {} characters; the server keeps at most {limit} — choose a shorter username or set USERNAME_CHARACTER_LIMIT",
                    pending.username,
                    pending.username.chars().count()
                ),
            ));
        }
        let sync = session
            .sync_alternate_user(
                &current.username,
                &pending.username,
                &pending.password,
                self.clone_policy(&master),
            )
            .await?;
        for change in &sync.changes {
            tracing::info!(statement = %change, "aligned alternate user");
        }
        if sync.created {
            return Ok(Outcome::UserCreated);
        }
        let already = match session
            .password_matches(&pending.username, &pending.password)
            .await?
        {
            Some(matches) => matches,
            // This login may not read stored verifiers (RDS): try the login itself.
            None => match self.engine.connect(pending, "pending").await {
                Ok(_) => true,
                Err(Error::LoginRefused { .. }) => false,
                Err(e) => return Err(e),
            },
        };
        if already {
            tracing::info!("pending password already set: nothing to do");
            return Ok(Outcome::AlreadySet);
        }
        session
            .set_password(&pending.username, &pending.password)
            .await?;
        Ok(Outcome::PasswordSet)
    }

    /// The master secret, with host/port/engine filled from RDS when it is an
    /// RDS-managed secret that holds only username and password.
    async fn master(&self, master_arn: &str, current: &DbSecret) -> Result<DbSecret> {
        let value = self
            .store
            .get(master_arn, VersionRef::Stage(AWSCURRENT))
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("master secret {master_arn} (AWSCURRENT)"),
            })?;
        let master = DbSecret::parse(&value, master_arn, AWSCURRENT, Require::Login)?;
        let master = if master.host.is_empty() {
            let meta = self.store.describe(master_arn).await?;
            let (arn, cluster) = if let Some(a) = meta.tags.get("aws:rds:primarydbinstancearn") {
                (a.clone(), false)
            } else if let Some(a) = meta.tags.get("aws:rds:primarydbclusterarn") {
                (a.clone(), true)
            } else {
                return Err(Error::bad_secret(
                    master_arn,
                    AWSCURRENT,
                    "the master secret has no \"host\" and no aws:rds:primarydbinstancearn / aws:rds:primarydbclusterarn tag to find it",
                ));
            };
            let rds = self.rds.as_ref().ok_or_else(|| {
                Error::Config("this build cannot query RDS for an RDS-managed master secret; use a function built with the `rds` feature".into())
            })?;
            let ep = rds.endpoint(&arn, cluster).await?;
            master.with_endpoint(&ep.engine, &ep.host, ep.port)
        } else {
            master
        };
        if !master.engine.is_empty() && !self.engine.accepts(&master.engine) {
            return Err(Error::bad_secret(
                master_arn,
                AWSCURRENT,
                format!(
                    "master engine {:?} is not {}",
                    master.engine,
                    self.engine.engines().join(" or ")
                ),
            ));
        }
        // Same database as the rotated user. TLS is never weaker than the
        // master secret itself says, whatever the app secret (written by
        // someone else) asks: the stronger of the two applies.
        let mut master = master.with_dbname(current.dbname.clone());
        master.tls = master.tls.stronger(current.tls);
        Ok(master)
    }

    /// Whether the master may clone superuser-like powers: only the
    /// function's environment or the master secret can say so, never the app
    /// secret, whose writer is who this guards against.
    fn clone_policy(&self, master: &DbSecret) -> ClonePolicy {
        let master_opt_in = master
            .other_fields()
            .get(ALLOW_PRIVILEGED_CLONE_KEY)
            .is_some_and(|v| v == &serde_json::Value::Bool(true) || v == "true");
        ClonePolicy {
            allow_privileged: self.allow_privileged_clone || master_opt_in,
        }
    }

    async fn is_replica(&self, current: &DbSecret, master: &DbSecret) -> Result<bool> {
        let Some(rds) = &self.rds else {
            return Ok(false);
        };
        rds.is_read_replica_of(&current.host, &master.host).await
    }

    async fn test_secret(&self, meta: &SecretMetadata, token: &str) -> Result<Outcome> {
        let pending = self.pending(meta, token).await?;
        let mut session = match self.engine.connect(&pending, "pending").await {
            Ok(s) => s,
            Err(Error::LoginRefused {
                user,
                endpoint,
                which,
                detail,
            }) => {
                return Err(Error::LoginRefused {
                    user,
                    endpoint,
                    which,
                    detail: format!(
                        "{detail} (has setSecret run for this token? Run setSecret, then testSecret again; nothing was changed)"
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        session.check().await?;
        if let Ok(mut memory) = self.memory.lock() {
            if memory.verified.len() >= CACHE_LIMIT {
                memory.verified.clear();
            }
            memory
                .verified
                .insert((meta.arn.clone(), token.to_string()));
        }
        Ok(Outcome::Tested)
    }

    async fn finish_secret(&self, meta: &SecretMetadata, token: &str) -> Result<Outcome> {
        let current_id = meta
            .version_with(AWSCURRENT)
            .ok_or_else(|| {
                Error::bad_secret(&meta.arn, AWSCURRENT, "no version is labelled AWSCURRENT")
            })?
            .to_string();
        let verified = self
            .memory
            .lock()
            .map(|m| m.verified.contains(&(meta.arn.clone(), token.to_string())))
            .unwrap_or(false);
        if !verified {
            let pending = self.pending(meta, token).await?;
            let mut session = match self.engine.connect(&pending, "pending").await {
                Ok(s) => s,
                Err(Error::LoginRefused { user, endpoint, .. }) => {
                    return Err(Error::LoginRefused {
                        user,
                        endpoint,
                        which: "pending",
                        detail: "refusing to move AWSCURRENT to credentials that do not log in (has setSecret run?); nothing was changed".into(),
                    });
                }
                Err(e) => return Err(e),
            };
            session.check().await?;
        }
        let mut outcome = Outcome::Finished;
        if let Err(e) = self
            .store
            .update_stage(&meta.arn, AWSCURRENT, Some(token), Some(&current_id))
            .await
        {
            // The same step, invoked twice at once: the other invocation
            // moved AWSCURRENT first (the service then refuses this move);
            // or the move was made and only its answer lost. Either way
            // AWSPENDING still has to go.
            let now = self.store.describe(&meta.arn).await?;
            if !now.has_stage(token, AWSCURRENT) {
                return Err(e);
            }
            tracing::info!(
                "AWSCURRENT is already on this version (another invocation, or a lost answer)"
            );
            outcome = Outcome::AlreadyCurrent;
        }
        self.remove_pending(&meta.arn, token).await?;
        if let Ok(mut memory) = self.memory.lock() {
            memory
                .verified
                .remove(&(meta.arn.clone(), token.to_string()));
        }
        Ok(outcome)
    }

    /// The last act of finishSecret, also run by its retry when AWSCURRENT
    /// already moved: AWSPENDING off the token. A failure is one only if
    /// the label is still there (a twin invocation may have removed it).
    async fn remove_pending(&self, arn: &str, token: &str) -> Result<()> {
        if let Err(e) = self
            .store
            .update_stage(arn, AWSPENDING, None, Some(token))
            .await
        {
            let now = self.store.describe(arn).await?;
            if now.has_stage(token, AWSPENDING) {
                return Err(e);
            }
        }
        Ok(())
    }

    // ---- the whole rotation, in process ---------------------------------

    /// Removes AWSPENDING from an unfinished rotation's version, so that the
    /// next rotation starts afresh (`rotor rotate --restart`). Returns the
    /// abandoned token. Safe for logins: AWSCURRENT and AWSPREVIOUS are not
    /// touched, and a later single-user setSecret still finds a password that
    /// works among recent unlabelled versions.
    pub async fn abandon_unfinished(&self, secret_id: &str) -> Result<Option<String>> {
        let meta = self.store.describe(secret_id).await?;
        let current = meta.version_with(AWSCURRENT);
        let Some(pending) = meta
            .version_with(AWSPENDING)
            .filter(|p| Some(*p) != current)
            .map(str::to_string)
        else {
            return Ok(None);
        };
        self.store
            .update_stage(&meta.arn, AWSPENDING, None, Some(&pending))
            .await?;
        tracing::warn!(secret_arn = %meta.arn, token = %pending, "abandoned the unfinished rotation");
        Ok(Some(pending))
    }

    /// Takes the secret's rotation lock: a lock on the database server
    /// (PostgreSQL advisory lock, MySQL `GET_LOCK`) named after the secret,
    /// held by a session of the login that rotates it (the master for
    /// alternating users, the user itself otherwise). Every in-process
    /// rotation takes it, so two of them (two `rotor rotate`, a burst of
    /// revocations) run one after the other instead of abandoning each
    /// other's pending versions. Waits at most `wait` (bounded by the
    /// deadline). `None` when no login for the lock works: the rotation
    /// then runs unlocked (its own fallbacks may still find a login), since
    /// not rotating is worse than racing.
    pub async fn lock(&self, secret_id: &str, wait: Duration) -> Result<Option<RotationLock>> {
        let meta = self.store.describe(secret_id).await?;
        let (_, current) = self.current(&meta).await?;
        let login = match self.strategy {
            Strategy::SingleUser => current.clone(),
            Strategy::AlternatingUsers => self.master_of(&current).await?,
        };
        let which = if self.strategy.uses_master() {
            "master"
        } else {
            "current"
        };
        let mut session = match self.engine.connect(&login, which).await {
            Ok(session) => session,
            Err(e @ Error::LoginRefused { .. }) => {
                tracing::warn!(secret_arn = %meta.arn, error = %e, "cannot log in to take the rotation lock; rotating without it");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let name = rotation_lock_name(&meta.arn);
        session
            .acquire_lock(&name, crate::deadline::budget(wait))
            .await?;
        Ok(Some(RotationLock { session, name }))
    }

    /// Rotates a secret in this process, playing the service: resumes an
    /// unfinished rotation (AWSPENDING on a version that is not AWSCURRENT)
    /// or starts one with a fresh token, then runs the four steps; under the
    /// secret's rotation lock (see [`lock`](Self::lock)).
    pub async fn rotate(&self, secret_id: &str) -> Result<RotationReport> {
        let lock = self.lock(secret_id, ROTATION_LOCK_WAIT).await?;
        let result = self.rotate_locked(secret_id).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        result
    }

    /// [`rotate`](Self::rotate) for a caller that holds the secret's
    /// rotation lock already.
    pub async fn rotate_locked(&self, secret_id: &str) -> Result<RotationReport> {
        let meta = self.store.describe(secret_id).await?;
        let current = meta.version_with(AWSCURRENT);
        let unfinished = meta
            .version_with(AWSPENDING)
            .filter(|p| Some(*p) != current)
            .map(str::to_string);
        let resumed = unfinished.is_some();
        let token = unfinished.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if resumed {
            tracing::info!(token = %token, "resuming the unfinished rotation");
        }
        let mut steps = Vec::with_capacity(4);
        for step in Step::ALL {
            let event = RotationEvent {
                step: step.as_str().to_string(),
                secret_id: meta.arn.clone(),
                token: token.clone(),
                rotation_token: None,
            };
            let how = if step == Step::CreateSecret {
                Invocation::InProcessNewToken
            } else {
                Invocation::Service
            };
            let started = Instant::now();
            let outcome = self.handle_as(&event, how).await?;
            steps.push(StepReport {
                step,
                outcome,
                millis: started.elapsed().as_secs_f64() * 1000.0,
            });
        }
        Ok(RotationReport {
            secret_arn: meta.arn,
            token,
            resumed,
            steps,
        })
    }
}

/// How long an in-process rotation waits for another one of the same
/// secret (bounded by the deadline).
pub const ROTATION_LOCK_WAIT: Duration = Duration::from_secs(120);

/// The name of a secret's rotation lock: short enough for MySQL's 64
/// characters whatever the ARN.
pub fn rotation_lock_name(arn: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(arn.as_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("rotor_rotate_{hex}")
}

/// A held rotation lock (see [`Rotator::lock`]). It goes with its session:
/// a crashed holder never keeps it.
pub struct RotationLock {
    session: Box<dyn Session>,
    name: String,
}

impl RotationLock {
    pub async fn release(mut self) {
        if let Err(e) = self.session.release_lock(&self.name).await {
            tracing::warn!(lock = %self.name, error = %e, "could not release the rotation lock; it ends with the session");
        }
    }
}

/// A rotator for one secret: the engine its `engine` names, and the
/// strategy given or, when `None`, alternating users if it has `masterarn`.
pub async fn rotator_for_secret(
    store: Arc<dyn SecretStore>,
    options: &crate::engine::ConnectOptions,
    secret_id: &str,
    strategy: Option<Strategy>,
    rds: Option<Arc<dyn RdsLookup>>,
) -> Result<Rotator> {
    let current = store
        .db_secret(
            secret_id,
            VersionRef::Stage(AWSCURRENT),
            Require::Connection,
        )
        .await?;
    let engine = crate::engine::for_engine_key(&current.engine, options).ok_or_else(|| {
        Error::bad_secret(
            secret_id,
            AWSCURRENT,
            format!(
                "engine {:?} is not supported; supported: {}",
                current.engine,
                crate::engine::known_engine_keys().join(", ")
            ),
        )
    })?;
    let strategy = strategy.unwrap_or(if current.masterarn.is_some() {
        Strategy::AlternatingUsers
    } else {
        Strategy::SingleUser
    });
    let policy = PasswordPolicy::from_env(engine.default_excluded_characters())?;
    let mut rotator = Rotator::new(store, engine, strategy, policy)
        .with_username_limit(username_limit_from_env()?)
        .allow_privileged_clone(allow_privileged_clone_from_env()?);
    if let Some(rds) = rds {
        rotator = rotator.with_rds(rds);
    }
    Ok(rotator)
}

impl Rotator {
    /// The engine this rotator speaks to.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The master secret named by a current secret (alternating users).
    pub async fn master_of(&self, current: &DbSecret) -> Result<DbSecret> {
        let arn = current.masterarn.clone().ok_or_else(|| {
            Error::bad_secret(&current.host, AWSCURRENT, "the secret has no masterarn")
        })?;
        self.master(&arn, current).await
    }
}

#[cfg(test)]
mod tests {
    //! Staging decisions and event validation, with the in-memory local store
    //! and an engine that keeps passwords in a map.

    use std::collections::HashMap;

    use async_trait::async_trait;

    use super::*;
    use crate::engine::{AlternateSync, Role};
    use crate::store::LocalStore;

    #[derive(Default)]
    struct FakeDb {
        users: Mutex<HashMap<String, String>>,
        logins: Mutex<usize>,
        writes: Mutex<usize>,
    }

    struct FakeEngine(Arc<FakeDb>);
    struct FakeSession(Arc<FakeDb>);

    #[async_trait]
    impl Engine for FakeEngine {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn accepts(&self, engine: &str) -> bool {
            engine == "postgres"
        }
        fn engines(&self) -> &'static [&'static str] {
            &["postgres"]
        }
        fn default_port(&self) -> u16 {
            5432
        }
        fn max_username_bytes(&self) -> usize {
            63
        }
        fn default_excluded_characters(&self) -> &'static str {
            ""
        }
        async fn connect(&self, s: &DbSecret, which: Role) -> Result<Box<dyn Session>> {
            *self.0.logins.lock().unwrap() += 1;
            let ok = self
                .0
                .users
                .lock()
                .unwrap()
                .get(&s.username)
                .map(String::as_str)
                == Some(s.password.expose());
            if ok {
                Ok(Box::new(FakeSession(self.0.clone())))
            } else {
                Err(Error::LoginRefused {
                    user: s.username.clone(),
                    endpoint: "fake".into(),
                    which,
                    detail: "refused".into(),
                })
            }
        }
    }

    #[async_trait]
    impl Session for FakeSession {
        async fn check(&mut self) -> Result<()> {
            Ok(())
        }
        async fn set_own_password(&mut self, user: &str, p: &SecretString) -> Result<()> {
            self.set_password(user, p).await
        }
        async fn set_password(&mut self, user: &str, p: &SecretString) -> Result<()> {
            *self.0.writes.lock().unwrap() += 1;
            self.0
                .users
                .lock()
                .unwrap()
                .insert(user.into(), p.expose().into());
            Ok(())
        }
        async fn password_matches(&mut self, user: &str, p: &SecretString) -> Result<Option<bool>> {
            Ok(Some(
                self.0.users.lock().unwrap().get(user).map(String::as_str) == Some(p.expose()),
            ))
        }
        async fn create_dynamic_user(&mut self, _u: &crate::engine::DynamicUser) -> Result<()> {
            Ok(())
        }
        async fn users_with_prefix(&mut self, _p: &str) -> Result<Vec<String>> {
            Ok(vec![])
        }
        async fn acquire_lock(&mut self, _n: &str, _w: std::time::Duration) -> Result<()> {
            Ok(())
        }
        async fn release_lock(&mut self, _n: &str) -> Result<()> {
            Ok(())
        }
        async fn end_sessions(&mut self, _u: &str, _b: Option<f64>) -> Result<u64> {
            Ok(0)
        }
        async fn drop_user(
            &mut self,
            _u: &str,
            _o: Option<&str>,
        ) -> Result<crate::engine::DropReport> {
            Ok(Default::default())
        }
        async fn sync_alternate_user(
            &mut self,
            _template: &str,
            alternate: &str,
            p: &SecretString,
            _policy: ClonePolicy,
        ) -> Result<AlternateSync> {
            if self.0.users.lock().unwrap().contains_key(alternate) {
                return Ok(AlternateSync::default());
            }
            self.set_password(alternate, p).await?;
            Ok(AlternateSync {
                created: true,
                changes: vec![format!("CREATE ROLE {alternate}")],
            })
        }
    }

    struct Setup {
        store: Arc<LocalStore>,
        db: Arc<FakeDb>,
        arn: String,
    }

    fn setup(strategy: Strategy) -> Setup {
        let store = Arc::new(LocalStore::in_memory());
        let db = Arc::new(FakeDb::default());
        db.users.lock().unwrap().insert("app".into(), "pw0".into());
        db.users
            .lock()
            .unwrap()
            .insert("master".into(), "mpw".into());
        let master = store
            .put_current(
                "master",
                &SecretString::new(
                    r#"{"engine":"postgres","host":"db","username":"master","password":"mpw"}"#,
                ),
            )
            .unwrap();
        let extra = if strategy.uses_master() {
            format!(r#","masterarn":"{master}""#)
        } else {
            String::new()
        };
        let arn = store
            .put_current(
                "app",
                &SecretString::new(format!(
                    r#"{{"engine":"postgres","host":"db","username":"app","password":"pw0","x":1{extra}}}"#
                )),
            )
            .unwrap();
        Setup { store, db, arn }
    }

    fn rotator(s: &Setup, strategy: Strategy) -> Rotator {
        Rotator::new(
            s.store.clone(),
            Arc::new(FakeEngine(s.db.clone())),
            strategy,
            PasswordPolicy::with_default_exclusions(""),
        )
    }

    fn event(s: &Setup, step: &str, token: &str) -> RotationEvent {
        RotationEvent {
            step: step.into(),
            secret_id: s.arn.clone(),
            token: token.into(),
            rotation_token: None,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn validation_order_matches_aws() {
        rt().block_on(async {
            let s = setup(Strategy::SingleUser);
            let r = rotator(&s, Strategy::SingleUser);
            let meta = s.store.describe(&s.arn).await.unwrap();
            let current = meta.version_with(AWSCURRENT).unwrap().to_string();
            // Unknown token is checked before the step name.
            let e = r.handle(&event(&s, "bogus", "nope")).await.unwrap_err();
            assert_eq!(e.kind(), "UnknownToken");
            // A current token succeeds without doing anything, whatever the step.
            assert_eq!(
                r.handle(&event(&s, "bogus", &current)).await.unwrap(),
                Outcome::AlreadyCurrent
            );
            let token = s.store.start_rotation(&s.arn).unwrap();
            let e = r.handle(&event(&s, "bogus", &token)).await.unwrap_err();
            assert_eq!(e.kind(), "UnknownStep");
            // Disabled rotation is checked first of all.
            s.store.set_rotation_enabled(&s.arn, Some(false)).unwrap();
            let e = r.handle(&event(&s, "bogus", "nope")).await.unwrap_err();
            assert_eq!(e.kind(), "RotationDisabled");
            assert!(e.to_string().contains(&s.arn));
        });
    }

    #[test]
    fn single_user_rotation_moves_labels_and_keeps_unknown_keys() {
        rt().block_on(async {
            let s = setup(Strategy::SingleUser);
            let r = rotator(&s, Strategy::SingleUser);
            let before = s.store.describe(&s.arn).await.unwrap();
            let old = before.version_with(AWSCURRENT).unwrap().to_string();
            let report = r.rotate(&s.arn).await.unwrap();
            let after = s.store.describe(&s.arn).await.unwrap();
            assert_eq!(after.version_with(AWSCURRENT), Some(report.token.as_str()));
            assert_eq!(after.version_with(AWSPREVIOUS), Some(old.as_str()));
            assert_eq!(after.version_with(AWSPENDING), None);
            let new = s
                .store
                .get(&s.arn, VersionRef::Id(&report.token))
                .await
                .unwrap()
                .unwrap();
            let v: serde_json::Value = serde_json::from_str(new.expose()).unwrap();
            assert_eq!(v["x"], 1);
            assert_eq!(
                s.db.users.lock().unwrap()["app"],
                v["password"].as_str().unwrap()
            );
            // Warm process: setSecret and testSecret log in once each; finish
            // reuses the test; one more login holds the rotation lock.
            assert_eq!(*s.db.logins.lock().unwrap(), 3);
        });
    }

    #[test]
    fn alternating_users_take_turns() {
        rt().block_on(async {
            let s = setup(Strategy::AlternatingUsers);
            let r = rotator(&s, Strategy::AlternatingUsers);
            let first = r.rotate(&s.arn).await.unwrap();
            assert_eq!(first.steps[1].outcome, Outcome::UserCreated);
            let v = s
                .store
                .get(&s.arn, VersionRef::Stage(AWSCURRENT))
                .await
                .unwrap()
                .unwrap();
            assert!(v.expose().contains("\"app_clone\""));
            // The old user keeps its password: AWSPREVIOUS still logs in.
            assert_eq!(s.db.users.lock().unwrap()["app"], "pw0");
            let second = r.rotate(&s.arn).await.unwrap();
            assert_eq!(second.steps[1].outcome, Outcome::PasswordSet);
            let v = s
                .store
                .get(&s.arn, VersionRef::Stage(AWSCURRENT))
                .await
                .unwrap()
                .unwrap();
            assert!(v.expose().contains("\"app\""));
            assert_ne!(s.db.users.lock().unwrap()["app"], "pw0");
        });
    }

    #[test]
    fn repeated_steps_change_nothing_and_finish_refuses_unset_credentials() {
        rt().block_on(async {
            let s = setup(Strategy::SingleUser);
            let r = rotator(&s, Strategy::SingleUser);
            let token = s.store.start_rotation(&s.arn).unwrap();
            assert_eq!(
                r.handle(&event(&s, "createSecret", &token)).await.unwrap(),
                Outcome::Created
            );
            assert_eq!(
                r.handle(&event(&s, "createSecret", &token)).await.unwrap(),
                Outcome::AlreadyCreated
            );
            // finishSecret by hand before setSecret: refused, labels unchanged.
            let labels = s.store.describe(&s.arn).await.unwrap().versions;
            let e = rotator(&s, Strategy::SingleUser)
                .handle(&event(&s, "finishSecret", &token))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), "LoginRefused");
            assert_eq!(s.store.describe(&s.arn).await.unwrap().versions, labels);
            assert_eq!(
                r.handle(&event(&s, "setSecret", &token)).await.unwrap(),
                Outcome::PasswordSet
            );
            let writes = *s.db.writes.lock().unwrap();
            assert_eq!(
                r.handle(&event(&s, "setSecret", &token)).await.unwrap(),
                Outcome::AlreadySet
            );
            assert_eq!(
                *s.db.writes.lock().unwrap(),
                writes,
                "no second password write"
            );
            for step in ["testSecret", "testSecret", "finishSecret"] {
                r.handle(&event(&s, step, &token)).await.unwrap();
            }
            assert_eq!(
                r.handle(&event(&s, "finishSecret", &token)).await.unwrap(),
                Outcome::AlreadyCurrent
            );
        });
    }

    #[test]
    fn alternating_refuses_a_master_on_another_port_of_the_same_host() {
        rt().block_on(async {
            let s = setup(Strategy::AlternatingUsers);
            let mut value: serde_json::Value = serde_json::from_str(
                s.store
                    .get(&s.arn, VersionRef::Stage(AWSCURRENT))
                    .await
                    .unwrap()
                    .unwrap()
                    .expose(),
            )
            .unwrap();
            value["port"] = 6543.into();
            s.store
                .put_current("app", &SecretString::new(value.to_string()))
                .unwrap();
            let e = rotator(&s, Strategy::AlternatingUsers)
                .rotate(&s.arn)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), "BadSecret", "{e}");
            assert!(!s.db.users.lock().unwrap().contains_key("app_clone"));
        });
    }

    #[test]
    fn single_user_refuses_a_pending_version_for_another_user_or_host() {
        rt().block_on(async {
            let s = setup(Strategy::SingleUser);
            let r = rotator(&s, Strategy::SingleUser);
            for (field, value) in [("username", "other"), ("host", "elsewhere")] {
                let token = uuid::Uuid::new_v4().to_string();
                let mut pending = serde_json::json!({"engine":"postgres","host":"db","username":"app","password":"new"});
                pending[field] = value.into();
                let pending = pending.to_string();
                s.store.put_pending(&s.arn, &token, &SecretString::new(pending), None).await.unwrap();
                let e = r.handle(&event(&s, "setSecret", &token)).await.unwrap_err();
                assert_eq!(e.kind(), "BadSecret", "{field}: {e}");
                assert_eq!(s.db.users.lock().unwrap()["app"], "pw0");
            }
        });
    }
}
