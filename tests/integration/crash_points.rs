//! The crash-point matrix: every external call of a rotation fails in turn.
//!
//! For each engine, strategy and fault ([`Fault::Fail`]: the call is never
//! made; [`Fault::Drop`]: it is made and its answer lost), position N runs
//! from 1 until a rotation makes fewer than N external calls. Calls are
//! counted over the whole rotation: each Secrets Manager request
//! ([`ObservedStore`]), each database login (the engine wrapper below) and each
//! database statement (the engines' own `rotor::fault` points). Each
//! position starts from a fresh secret, so first rotations (the alternate
//! user does not exist yet) are what is drilled.
//!
//! After the fault, Secrets Manager's retry is played from a new process:
//! the failed step again, then the remaining steps; then a second rotation
//! with a new token. Throughout, DESIGN.md's invariants are checked: some
//! labelled credential logs in after every step (with alternating users,
//! AWSCURRENT does); in the end AWSCURRENT is the token and logs in; every
//! version is still there with its value; each label sits on one version
//! and AWSPENDING is gone; no user is left behind but the secret's own.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use libtest_mimic::Trial;
use rotor::engine::{Engine, Role, Session};
use rotor::fault::{self, Fault, Plan};
use rotor::secret::Require;
use rotor::{DbSecret, Result, Rotator, SecretString, Step, Strategy};
use rotor_tests::probe::ObservedStore;
use rotor_tests::{Kind, TestDb, TestEnv, unique};
use serde_json::json;

use crate::rotation::{Fixture, assert_rotated, fixture};
use crate::trial;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        for strategy in [Strategy::SingleUser, Strategy::AlternatingUsers] {
            for fault in [Fault::Fail, Fault::Drop] {
                let name = format!(
                    "crash_points::{}::{}::{}_at_every_external_call",
                    kind.name(),
                    strategy.name().replace('-', "_"),
                    fault.name()
                );
                t.push(trial(name, env, move |env| {
                    matrix(TestDb::new(kind, &env), strategy, fault)
                }));
            }
        }
    }
    t
}

/// The engine with each login counted as one external call (statements are
/// counted inside the engines).
struct FaultEngine(Arc<dyn Engine>);

#[async_trait]
impl Engine for FaultEngine {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn accepts(&self, engine: &str) -> bool {
        self.0.accepts(engine)
    }
    fn engines(&self) -> &'static [&'static str] {
        self.0.engines()
    }
    fn default_port(&self) -> u16 {
        self.0.default_port()
    }
    fn max_username_bytes(&self) -> usize {
        self.0.max_username_bytes()
    }
    fn default_excluded_characters(&self) -> &'static str {
        self.0.default_excluded_characters()
    }
    fn hands_objects_to_owner_role(&self) -> bool {
        self.0.hands_objects_to_owner_role()
    }
    async fn connect(&self, secret: &DbSecret, which: Role) -> Result<Box<dyn Session>> {
        let endpoint = format!("{}:{}", secret.host, secret.port.unwrap_or(0));
        fault::call(
            &endpoint,
            &format!("log in as {which} ({})", secret.username),
            self.0.connect(secret, which),
        )
        .await
    }
}

fn faulty_rotator(db: &TestDb, strategy: Strategy) -> Rotator {
    Rotator::new(
        Arc::new(ObservedStore::new(Arc::new(db.env.sm_store()))),
        Arc::new(FaultEngine(db.engine())),
        strategy,
        db.policy(),
    )
    .with_rds(Arc::new(rotor::rds::RdsApi::new(db.env.rds_client())))
}

/// Every version id (deprecated ones too) with its value.
async fn values(f: &Fixture) -> BTreeMap<String, String> {
    let out = f
        .moto
        .client
        .list_secret_version_ids()
        .secret_id(&f.arn)
        .include_deprecated(true)
        .send()
        .await
        .expect("ListSecretVersionIds");
    let mut values = BTreeMap::new();
    for v in out.versions.unwrap_or_default() {
        if let Some(id) = v.version_id
            && let Some(value) = f.moto.value(&f.arn, &id).await
        {
            rotor_tests::leaks::remember(&value);
            values.insert(id, value);
        }
    }
    values
}

/// "At every moment, some labelled credential logs in" (alternating users:
/// AWSCURRENT does), and each label sits on one version at most.
async fn some_labelled_login(f: &Fixture, moment: &str) {
    let labels = f.labels().await;
    for stage in ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"] {
        let on = labels
            .values()
            .filter(|s| s.iter().any(|x| x == stage))
            .count();
        assert!(on <= 1, "{moment}: {stage} on {on} versions: {labels:?}");
    }
    let mut working = Vec::new();
    for (version, stages) in &labels {
        let Some(value) = f.moto.value(&f.arn, version).await else {
            continue; // the service's placeholder for a token: no value yet
        };
        rotor_tests::leaks::remember(&value);
        let Ok(secret) = DbSecret::parse(
            &SecretString::new(value),
            &f.arn,
            version,
            Require::Connection,
        ) else {
            continue;
        };
        if f.logs_in(&secret).await {
            working.extend(stages.iter().cloned());
        }
    }
    assert!(
        !working.is_empty(),
        "{moment}: LOCKED OUT: no labelled credential logs in ({labels:?})"
    );
    if f.strategy == Strategy::AlternatingUsers {
        assert!(
            working.iter().any(|s| s == "AWSCURRENT"),
            "{moment}: alternating users: AWSCURRENT does not log in (working: {working:?}, {labels:?})"
        );
    }
}

/// Which step the rotation stopped at, and the call the fault hit.
struct Stopped {
    step: usize,
    at: String,
}

async fn matrix(db: TestDb, strategy: Strategy, fault: Fault) {
    let mut covered = 0;
    let mut stopped_in = [0usize; 4];
    let mut absorbed = 0;
    for n in 1.. {
        assert!(n < 500, "more than 500 external calls in one rotation");
        let f = fixture(&db, strategy, &unique("rotor_cp"), json!({})).await;
        let before = values(&f).await;
        let old = f.current_version().await;
        let token = f.moto.start_rotation(&f.arn).await;
        let plan = Plan::new(n, fault);
        let first_process = faulty_rotator(&db, strategy);
        let mut stopped = None;
        for (i, step) in Step::ALL.iter().enumerate() {
            let result = fault::scope(plan.clone(), f.step(&first_process, *step, &token)).await;
            let moment = format!(
                "fault {} at call {n} ({:?}), after {step}",
                fault.name(),
                plan.fired()
            );
            some_labelled_login(&f, &moment).await;
            if let Err(e) = result {
                let at = plan
                    .fired()
                    .unwrap_or_else(|| panic!("{step} failed without the fault firing: {e}"));
                assert!(
                    e.is_retryable(),
                    "{step} failed at {at} with a non-retryable error (Secrets Manager would give up): {e}"
                );
                stopped = Some(Stopped { step: i, at });
                break;
            }
        }
        if plan.fired().is_none() {
            // Position n is past the rotation's last call: the matrix is done.
            f.remember_values().await;
            assert_rotated(&f, &old, &token).await;
            break;
        }
        covered += 1;
        let resume_from = match &stopped {
            Some(s) => {
                stopped_in[s.step] += 1;
                s.step
            }
            None => {
                // The fault hit a call the step could do without.
                absorbed += 1;
                Step::ALL.len()
            }
        };
        let at = stopped.as_ref().map_or("absorbed", |s| s.at.as_str());
        // Secrets Manager retries the failed step (here from a new process),
        // then runs the remaining ones.
        let second_process = faulty_rotator(&db, strategy);
        for step in &Step::ALL[resume_from..] {
            f.step(&second_process, *step, &token)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "after fault {} at call {n} ({at}): retried {step} failed: {e}",
                        fault.name()
                    )
                });
            some_labelled_login(&f, &format!("retry after call {n} ({at}), after {step}")).await;
        }
        f.remember_values().await;
        assert_rotated(&f, &old, &token).await;
        let after = values(&f).await;
        for (version, value) in &before {
            assert_eq!(
                after.get(version),
                Some(value),
                "fault at call {n} ({at}): version {version} was lost or changed"
            );
        }
        let users = f.admin.users_starting_with(&f.user).await;
        let expected = if strategy == Strategy::AlternatingUsers {
            2
        } else {
            1
        };
        assert_eq!(
            users, expected,
            "fault at call {n} ({at}): stray users left behind"
        );
        // A second full rotation with a new token.
        let (old2, new2) = f.rotate(&f.rotator()).await;
        assert_eq!(old2, token);
        assert_rotated(&f, &old2, &new2).await;
        assert_eq!(
            f.admin.users_starting_with(&f.user).await,
            expected,
            "after a second rotation: stray users"
        );
    }
    println!(
        "crash points: {} {} {}: {covered} external calls failed in turn (stopped in createSecret {}, setSecret {}, testSecret {}, finishSecret {}; absorbed {absorbed}); every one recovered by the service's retry",
        db.kind.name(),
        strategy.name(),
        fault.name(),
        stopped_in[0],
        stopped_in[1],
        stopped_in[2],
        stopped_in[3],
    );
}
