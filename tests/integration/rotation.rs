//! The rotation conformance suite: the same scenarios for every strategy
//! (and, as engines are added, every engine), against the password-checking
//! PostgreSQL and moto, through the real AWS SDK.

use std::collections::BTreeMap;
use std::sync::Arc;

use libtest_mimic::Trial;
use rotor::engine::Engine;
use rotor::secret::{Require, TlsMode};
use rotor::store::{LocalStore, SecretStore};
use rotor::{
    DbSecret, Error, Outcome, PasswordPolicy, RotationEvent, Rotator, SecretString, Step, Strategy,
};
use rotor_tests::{
    Admin, Kind, MotoService, RotatedSecret, TestDb, TestEnv, leaks, new_password, unique,
};
use serde_json::{Value, json};

use crate::trial;

const STRATEGIES: [Strategy; 2] = [Strategy::SingleUser, Strategy::AlternatingUsers];

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        let k = kind.name();
        // The conformance suite: every scenario for every engine and strategy.
        for strategy in STRATEGIES {
            let s = strategy.name().replace('-', "_");
            let mut add = |name: &str, f: fn(TestDb, Strategy) -> Scenario| {
                t.push(trial(
                    format!("rotation::{k}::{s}::{name}"),
                    env,
                    move |env| f(TestDb::new(kind, &env), strategy),
                ));
            };
            add("full_rotation_twice", |d, s| {
                Box::pin(full_rotation_twice(d, s))
            });
            add("every_step_twice_changes_nothing", |d, s| {
                Box::pin(every_step_twice(d, s))
            });
            add("interrupted_after_step_1_then_resumed", |d, s| {
                Box::pin(interrupted(d, s, 1))
            });
            add("interrupted_after_step_2_then_resumed", |d, s| {
                Box::pin(interrupted(d, s, 2))
            });
            add("interrupted_after_step_3_then_resumed", |d, s| {
                Box::pin(interrupted(d, s, 3))
            });
            add("set_done_finish_never_ran_completed_by_rerun", |d, s| {
                Box::pin(finish_never_ran(d, s))
            });
            add("bad_events_change_nothing", |d, s| {
                Box::pin(bad_events(d, s))
            });
            add("bad_secrets_change_nothing", |d, s| {
                Box::pin(bad_secrets(d, s))
            });
            add("awkward_username", |d, s| Box::pin(awkward_username(d, s)));
            add("every_printable_character_in_passwords", |d, s| {
                Box::pin(every_printable(d, s))
            });
            add("finish_before_set_is_refused", |d, s| {
                Box::pin(finish_before_set(d, s))
            });
            add("out_of_order_steps_by_hand_change_nothing", |d, s| {
                Box::pin(out_of_order(d, s))
            });
            add("rotate_immediately_false_runs_only_test", |d, s| {
                Box::pin(rotate_immediately_false(d, s))
            });
            add("local_store_in_process_rotation", |d, s| {
                Box::pin(local_store_rotation(d, s))
            });
        }
        let mut add = |name: &str, f: fn(TestDb) -> Scenario| {
            t.push(trial(format!("{name}::{k}"), env, move |env| {
                f(TestDb::new(kind, &env))
            }));
        };
        add(
            "rotation::alternating_users::clone_name_too_long_refused",
            |d| Box::pin(clone_name_too_long(d)),
        );
        add(
            "rotation::single_user::lost_current_password_falls_back_to_previous",
            |d| Box::pin(falls_back_to_previous(d)),
        );
        add("tls::verified_with_test_ca", |d| Box::pin(tls_verified(d)));
        add("tls::wrong_ca_refused_when_required_or_absent", |d| {
            Box::pin(tls_wrong_ca(d))
        });
    }
    // What only one engine has.
    t.push(trial(
        "rotation::postgres::alternating_users::memberships_and_attributes_resynced",
        env,
        resync,
    ));
    t.push(trial(
        "rotation::postgres::alternating_users::master_on_read_replica_source_accepted",
        env,
        replica_accepted,
    ));
    t.push(trial(
        "rotation::postgres::alternating_users::rds_managed_master_secret",
        env,
        rds_managed_master,
    ));
    t.push(trial(
        "tls::postgres::absent_falls_back_to_plaintext_only_when_server_has_no_tls",
        env,
        tls_absent_falls_back_only_without_server_tls,
    ));
    t.push(trial(
        "demo::proves_rotations_by_logins_on_a_password_checking_server",
        env,
        demo_on_password_checking_server,
    ));
    t.push(trial(
        "rotation::mariadb::alternating_users::grants_require_and_limits_replayed_and_resynced",
        env,
        mysql_grants_resynced,
    ));
    t.push(trial(
        "rotation::mariadb::alternating_users::username_character_limit_honoured",
        env,
        mysql_username_limit,
    ));
    t.push(trial(
        "tls::mysql::absent_falls_back_to_plaintext_only_when_server_has_no_tls",
        env,
        mysql_tls_fallback,
    ));
    t
}

type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

// ---- fixtures --------------------------------------------------------------

/// A secret under rotation and what the test needs to check it.
pub(crate) struct Fixture {
    pub(crate) db: TestDb,
    pub(crate) moto: MotoService,
    pub(crate) admin: Admin,
    pub(crate) arn: String,
    /// Base username (single user: the user; alternating: `<base>`, with `<base>_clone`).
    pub(crate) user: String,
    pub(crate) strategy: Strategy,
}

pub(crate) async fn fixture(db: &TestDb, strategy: Strategy, user: &str, extra: Value) -> Fixture {
    let moto = MotoService::new(&db.env);
    let admin = db.admin().await;
    let mut extra = extra;
    extra["team"] = json!("payments"); // an unknown key that must survive
    let secret = RotatedSecret::create(db, &admin, &moto, strategy, user, extra).await;
    Fixture {
        db: db.clone(),
        moto,
        admin,
        arn: secret.arn,
        user: user.to_string(),
        strategy,
    }
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Fixture {
    pub(crate) fn rotator(&self) -> Rotator {
        self.db.rotator(self.strategy)
    }

    pub(crate) fn event(&self, step: &str, token: &str) -> RotationEvent {
        RotationEvent {
            step: step.to_string(),
            secret_id: self.arn.clone(),
            token: token.to_string(),
            rotation_token: None,
        }
    }

    pub(crate) async fn step(
        &self,
        rotator: &Rotator,
        step: Step,
        token: &str,
    ) -> rotor::Result<Outcome> {
        rotator.handle(&self.event(step.as_str(), token)).await
    }

    pub(crate) async fn steps(&self, rotator: &Rotator, token: &str, steps: &[Step]) {
        for step in steps {
            self.step(rotator, *step, token)
                .await
                .unwrap_or_else(|e| panic!("{step} failed: {e}"));
        }
    }

    /// One service-driven rotation; returns (old version, token).
    pub(crate) async fn rotate(&self, rotator: &Rotator) -> (String, String) {
        let old = self.current_version().await;
        let token = self.moto.start_rotation(&self.arn).await;
        self.steps(rotator, &token, &Step::ALL).await;
        self.remember_values().await;
        (old, token)
    }

    pub(crate) async fn labels(&self) -> BTreeMap<String, Vec<String>> {
        self.moto.labels(&self.arn).await
    }

    pub(crate) async fn current_version(&self) -> String {
        self.labels()
            .await
            .into_iter()
            .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
            .map(|(id, _)| id)
            .expect("AWSCURRENT")
    }

    pub(crate) async fn secret(&self, version: &str) -> DbSecret {
        let value = self
            .moto
            .value(&self.arn, version)
            .await
            .expect("version value");
        leaks::remember(&value);
        DbSecret::parse(
            &SecretString::new(value),
            &self.arn,
            version,
            Require::Connection,
        )
        .expect("parse")
    }

    /// The AWSCURRENT value of this fixture's master secret, as JSON.
    pub(crate) async fn master_json(&self) -> Value {
        let current = self.secret(&self.current_version().await).await;
        let arn = current.masterarn.clone().expect("masterarn");
        let value = self
            .moto
            .client
            .get_secret_value()
            .secret_id(&arn)
            .version_stage("AWSCURRENT")
            .send()
            .await
            .expect("master value")
            .secret_string
            .expect("master string");
        serde_json::from_str(&value).expect("master json")
    }

    /// The AWSCURRENT value of the secret, as JSON.
    pub(crate) async fn current_json(&self) -> Value {
        let value = self
            .moto
            .value(&self.arn, &self.current_version().await)
            .await
            .expect("value");
        serde_json::from_str(&value).expect("json")
    }

    pub(crate) async fn remember_values(&self) {
        for v in self.moto.all_values(&self.arn).await {
            leaks::remember(&v);
        }
    }

    /// Whether `secret` logs in (over verified TLS).
    pub(crate) async fn logs_in(&self, secret: &DbSecret) -> bool {
        match self.db.engine().connect(secret, "test").await {
            Ok(_) => true,
            Err(Error::LoginRefused { .. }) => false,
            Err(e) => panic!(
                "login as {} failed for another reason: {e}",
                secret.username
            ),
        }
    }

    /// Verifiers of both users of this fixture (to prove nothing changed).
    pub(crate) async fn verifiers(&self) -> (Option<String>, Option<String>) {
        (
            self.admin.stored_credential(&self.user).await,
            self.admin
                .stored_credential(&format!("{}_clone", self.user))
                .await,
        )
    }
}

/// After a finished rotation from `old` to `new`: labels moved, the new
/// credentials log in, and per strategy the old ones are refused (single
/// user) or still accepted as AWSPREVIOUS (alternating).
pub(crate) async fn assert_rotated(f: &Fixture, old: &str, new: &str) {
    let labels = f.labels().await;
    assert_eq!(
        labels.get(new).map(Vec::as_slice),
        Some(&["AWSCURRENT".to_string()][..]),
        "{labels:?}"
    );
    assert_eq!(
        labels.get(old).map(Vec::as_slice),
        Some(&["AWSPREVIOUS".to_string()][..]),
        "{labels:?}"
    );
    assert_eq!(
        labels.len(),
        2,
        "only AWSCURRENT and AWSPREVIOUS remain: {labels:?}"
    );
    let new_secret = f.secret(new).await;
    let old_secret = f.secret(old).await;
    assert_eq!(
        new_secret.other_fields().get("team"),
        Some(&json!("payments")),
        "unknown keys survive"
    );
    assert!(
        f.logs_in(&new_secret).await,
        "the new credentials must log in"
    );
    match f.strategy {
        Strategy::SingleUser => {
            assert_eq!(new_secret.username, old_secret.username);
            assert!(
                !f.logs_in(&old_secret).await,
                "the old password must be refused"
            );
        }
        Strategy::AlternatingUsers => {
            assert_ne!(new_secret.username, old_secret.username);
            assert!(
                f.logs_in(&old_secret).await,
                "AWSPREVIOUS (the other user) still logs in"
            );
        }
    }
}

// ---- scenarios -------------------------------------------------------------

async fn full_rotation_twice(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_full"), json!({})).await;
    let rotator = f.rotator();
    let original = f.secret(&f.current_version().await).await;
    let (old1, new1) = f.rotate(&rotator).await;
    assert_rotated(&f, &old1, &new1).await;
    let (old2, new2) = f.rotate(&rotator).await;
    assert_eq!(old2, new1);
    assert_rotated(&f, &old2, &new2).await;
    if strategy == Strategy::AlternatingUsers {
        // Two rotations bring the base user back, with a new password; the
        // original password of the base user no longer works.
        let now = f.secret(&new2).await;
        assert_eq!(now.username, original.username);
        assert!(
            !f.logs_in(&original).await,
            "the original password must be refused"
        );
    }
}

async fn every_step_twice(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_twice"), json!({})).await;
    // Rotate once first so that alternating users have both users (the
    // second run of setSecret must then not rewrite an existing verifier).
    let rotator = f.rotator();
    f.rotate(&rotator).await;
    let token = f.moto.start_rotation(&f.arn).await;
    for step in Step::ALL {
        let first = f
            .step(&rotator, step, &token)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        let labels = f.labels().await;
        let versions = f.moto.all_values(&f.arn).await.len();
        let verifiers = f.verifiers().await;
        // A second invocation, from a new process (nothing remembered) and
        // from the same warm process, changes nothing.
        let fresh = f.rotator();
        for rotator in [&fresh, &rotator] {
            let second = f
                .step(rotator, step, &token)
                .await
                .unwrap_or_else(|e| panic!("{step} again: {e}"));
            assert!(
                !second.changed(),
                "{step} repeated did something: {second:?} (first: {first:?})"
            );
        }
        assert_eq!(f.labels().await, labels, "{step} repeated moved labels");
        assert_eq!(
            f.moto.all_values(&f.arn).await.len(),
            versions,
            "{step} repeated added a version"
        );
        assert_eq!(
            f.verifiers().await,
            verifiers,
            "{step} repeated wrote a new verifier"
        );
    }
    f.remember_values().await;
}

async fn interrupted(db: TestDb, strategy: Strategy, crash_after: usize) {
    let f = fixture(&db, strategy, &unique("rotor_crash"), json!({})).await;
    let old = f.current_version().await;
    let token = f.moto.start_rotation(&f.arn).await;
    {
        let first_process = f.rotator();
        f.steps(&first_process, &token, &Step::ALL[..crash_after])
            .await;
    } // the process dies here
    // Secrets Manager retries the last step in a new process, then goes on.
    let second_process = f.rotator();
    f.steps(&second_process, &token, &Step::ALL[crash_after - 1..])
        .await;
    f.remember_values().await;
    assert_rotated(&f, &old, &token).await;
}

async fn finish_never_ran(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_unfinished"), json!({})).await;
    let old = f.current_version().await;
    let token = f.moto.start_rotation(&f.arn).await;
    f.steps(&f.rotator(), &token, &Step::ALL[..2]).await;
    // Re-running the rotation (as `rotor rotate` does) resumes this token.
    let report = f.rotator().rotate(&f.arn).await.expect("resume");
    assert!(report.resumed, "the unfinished rotation must be resumed");
    assert_eq!(report.token, token);
    let outcomes: Vec<_> = report.steps.iter().map(|s| s.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::AlreadyCreated,
            Outcome::AlreadySet,
            Outcome::Tested,
            Outcome::Finished
        ]
    );
    f.remember_values().await;
    assert_rotated(&f, &old, &token).await;
}

async fn bad_events(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_badevent"), json!({})).await;
    let rotator = f.rotator();
    let (previous, current) = f.rotate(&rotator).await;
    let token = f.moto.start_rotation(&f.arn).await;
    f.step(&rotator, Step::CreateSecret, &token)
        .await
        .expect("create");
    let labels = f.labels().await;
    let verifiers = f.verifiers().await;
    let cases: Vec<(RotationEvent, &str, &str)> = vec![
        (
            f.event("setSecret", "00000000-0000-0000-0000-000000000000"),
            "UnknownToken",
            "has no stage for rotation",
        ),
        (
            f.event("setSecret", &previous),
            "NotPending",
            "not set as AWSPENDING",
        ),
        (f.event("fooSecret", &token), "UnknownStep", "invalid step"),
    ];
    for (event, kind, text) in cases {
        let err = rotator.handle(&event).await.expect_err(kind);
        assert_eq!(err.kind(), kind, "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(text) && msg.contains(&f.arn),
            "message must name the secret and the problem: {msg}"
        );
    }
    // The token already AWSCURRENT: success without doing anything.
    assert_eq!(
        f.step(&rotator, Step::SetSecret, &current)
            .await
            .expect("current"),
        Outcome::AlreadyCurrent
    );
    // Malformed payloads never reach the store.
    for payload in [
        json!({"Step": "createSecret"}),
        json!({"Step": "createSecret", "SecretId": "", "ClientRequestToken": "t"}),
        json!([1]),
    ] {
        assert_eq!(
            RotationEvent::from_json(&payload)
                .expect_err("bad payload")
                .kind(),
            "BadEvent"
        );
    }
    // Rotation explicitly disabled.
    f.moto.set_rotation_enabled_false(&f.arn).await;
    let err = f
        .step(&rotator, Step::SetSecret, &token)
        .await
        .expect_err("disabled");
    assert_eq!(err.kind(), "RotationDisabled", "{err}");
    assert!(
        err.to_string().contains("not enabled for rotation"),
        "{err}"
    );
    assert_eq!(f.labels().await, labels, "bad events moved labels");
    assert_eq!(
        f.verifiers().await,
        verifiers,
        "bad events changed the database"
    );
    f.remember_values().await;
}

async fn bad_secrets(db: TestDb, strategy: Strategy) {
    let moto = MotoService::new(&db.env);
    let admin = db.admin().await;
    let user = unique("rotor_badsecret");
    let password = new_password();
    admin.create_user(&user, &password).await;
    let base = serde_json::from_str::<Value>(&db.secret(
        &user,
        password.expose(),
        json!({"masterarn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope"}),
    ))
    .expect("json");
    let without = |key: &str| {
        let mut v = base.clone();
        v.as_object_mut().expect("object").remove(key);
        v.to_string()
    };
    let with = |key: &str, value: Value| {
        let mut v = base.clone();
        v[key] = value;
        v.to_string()
    };
    let wrong_engine = if db.kind == Kind::Postgres {
        "mysql"
    } else {
        "postgres"
    };
    let wrong_message = format!("engine \"{wrong_engine}\" is not handled");
    let mut cases = vec![
        (
            "malformed JSON",
            format!(
                "{{\"engine\":\"{}\",\"password\":\"{}\"",
                db.engine_key(),
                password.expose()
            ),
            "not valid JSON",
        ),
        ("missing host", without("host"), "\"host\""),
        ("missing username", without("username"), "\"username\""),
        (
            "missing password",
            without("password"),
            "\"password\" is missing",
        ),
        (
            "wrong engine",
            with("engine", json!(wrong_engine)),
            &wrong_message,
        ),
    ];
    if strategy == Strategy::AlternatingUsers {
        cases.push(("missing masterarn", without("masterarn"), "masterarn"));
    }
    for (what, value, expected) in cases {
        leaks::remember(password.expose());
        let arn = moto.create_secret(&unique("rotor/bad"), &value).await;
        let token = moto.start_rotation(&arn).await;
        let labels = moto.labels(&arn).await;
        let before = admin.stored_credential(&user).await;
        let rotator = db.rotator(strategy);
        let event = RotationEvent {
            step: "createSecret".into(),
            secret_id: arn.clone(),
            token: token.clone(),
            rotation_token: None,
        };
        let err = rotator.handle(&event).await.expect_err(what);
        assert_eq!(err.kind(), "BadSecret", "{what}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(expected), "{what}: {msg}");
        assert!(
            !msg.contains(password.expose()),
            "{what}: the error quotes the password"
        );
        assert_eq!(moto.labels(&arn).await, labels, "{what}: labels changed");
        assert!(
            moto.value(&arn, &token).await.is_none(),
            "{what}: a pending value was stored"
        );
        assert_eq!(
            admin.stored_credential(&user).await,
            before,
            "{what}: the database changed"
        );
    }
    if strategy == Strategy::AlternatingUsers {
        // A pending version that names a role other than the alternate (put
        // by someone who may write versions): the master must not touch it.
        let f = fixture(&db, strategy, &unique("rotor_escalate"), json!({})).await;
        let victim = unique("rotor_victim");
        let victim_pw = new_password();
        f.admin.create_user(&victim, &victim_pw).await;
        let before = f.admin.stored_credential(&victim).await;
        let token = f.moto.start_rotation(&f.arn).await;
        let mut forged: Value = serde_json::from_str(
            &f.moto
                .value(&f.arn, &f.current_version().await)
                .await
                .expect("v"),
        )
        .expect("json");
        forged["username"] = json!(victim);
        forged["password"] = json!(new_password().expose());
        leaks::remember(&forged.to_string());
        f.moto
            .client
            .put_secret_value()
            .secret_id(&f.arn)
            .client_request_token(&token)
            .secret_string(forged.to_string())
            .version_stages("AWSPENDING")
            .send()
            .await
            .expect("forge pending");
        let err = f
            .step(&f.rotator(), Step::SetSecret, &token)
            .await
            .expect_err("forged pending user");
        assert_eq!(err.kind(), "BadSecret", "{err}");
        assert!(
            err.to_string().contains("is not the alternate") || err.to_string().contains("not \""),
            "{err}"
        );
        assert_eq!(
            f.admin.stored_credential(&victim).await,
            before,
            "the other role was changed"
        );
        leaks::remember(victim_pw.expose());
        // A master secret on another host (and not its read replica's source).
        let f = fixture(&db, strategy, &unique("rotor_otherhost"), json!({})).await;
        let mut master = f.master_json().await;
        master["host"] = json!("localhost");
        let other_master = f
            .moto
            .create_secret(&unique("rotor/master-elsewhere"), &master.to_string())
            .await;
        let mut value = f.current_json().await;
        value["masterarn"] = json!(other_master);
        let arn = f
            .moto
            .create_secret(&unique("rotor/bad-master"), &value.to_string())
            .await;
        let token = f.moto.start_rotation(&arn).await;
        let rotator = db.rotator(strategy);
        let ev = |step: &str| RotationEvent {
            step: step.into(),
            secret_id: arn.clone(),
            token: token.clone(),
            rotation_token: None,
        };
        rotator.handle(&ev("createSecret")).await.expect("create");
        let labels = f.moto.labels(&arn).await;
        let err = rotator
            .handle(&ev("setSecret"))
            .await
            .expect_err("master elsewhere");
        assert_eq!(err.kind(), "BadSecret", "{err}");
        assert!(err.to_string().contains("is not the same host as"), "{err}");
        assert_eq!(f.moto.labels(&arn).await, labels);
        assert!(
            f.admin
                .stored_credential(&format!("{}_clone", f.user))
                .await
                .is_none(),
            "no clone may be created"
        );
        for v in f.moto.all_values(&arn).await {
            leaks::remember(&v);
        }
    }
}

async fn awkward_username(db: TestDb, strategy: Strategy) {
    // Quotes, spaces, capitals, a backslash; 50 bytes (the clone adds 6).
    let mut user = format!(
        "We\"ird Us'er\\`{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let max = if db.kind == Kind::Postgres { 63 } else { 80 };
    let limit = match strategy {
        Strategy::SingleUser => max,
        Strategy::AlternatingUsers => max - "_clone".len(),
    };
    while user.len() < limit {
        user.push('X');
    }
    assert_eq!(user.len(), limit);
    let f = fixture(&db, strategy, &user, json!({})).await;
    let rotator = f.rotator();
    let (old, new) = f.rotate(&rotator).await;
    assert_rotated(&f, &old, &new).await;
    let (old, new) = f.rotate(&rotator).await;
    assert_rotated(&f, &old, &new).await;
}

async fn every_printable(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_printable"), json!({})).await;
    let policy = PasswordPolicy {
        length: 300,
        ..PasswordPolicy::with_default_exclusions("")
    };
    let alphabet = policy.alphabet().expect("alphabet");
    assert_eq!(
        alphabet.len(),
        94,
        "every printable ASCII character but space"
    );
    let rotator = db.rotator_with(db.engine(), strategy, policy);
    for _ in 0..2 {
        let (old, new) = f.rotate(&rotator).await;
        assert_rotated(&f, &old, &new).await;
        let pw = f.secret(&new).await.password;
        assert!(
            pw.expose().contains(['\'', '"', '\\', ':', '/', '@', '$']),
            "a password with quotes, backslash and URL characters"
        );
    }
}

async fn finish_before_set(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_handfinish"), json!({})).await;
    let rotator = f.rotator();
    if strategy == Strategy::AlternatingUsers {
        f.rotate(&rotator).await; // both users exist from now on
    }
    let old = f.current_version().await;
    let token = f.moto.start_rotation(&f.arn).await;
    f.step(&rotator, Step::CreateSecret, &token)
        .await
        .expect("create");
    let labels = f.labels().await;
    // A person runs finishSecret by hand before setSecret.
    let err = f
        .step(&f.rotator(), Step::FinishSecret, &token)
        .await
        .expect_err("must refuse");
    assert_eq!(err.kind(), "LoginRefused", "{err}");
    assert!(
        err.to_string().contains("refusing to move AWSCURRENT"),
        "{err}"
    );
    assert_eq!(f.labels().await, labels, "AWSCURRENT must not move");
    assert!(
        f.logs_in(&f.secret(&old).await).await,
        "AWSCURRENT still logs in"
    );
    // The rotation then completes normally.
    f.steps(&rotator, &token, &Step::ALL[1..]).await;
    f.remember_values().await;
    assert_rotated(&f, &old, &token).await;
}

/// Everything a step may change: labels, versions, both users' stored
/// credentials, and how many users carry the secret's name.
async fn snapshot(f: &Fixture) -> impl PartialEq + std::fmt::Debug {
    (
        f.labels().await,
        f.moto.all_values(&f.arn).await.len(),
        f.verifiers().await,
        f.admin.users_starting_with(&f.user).await,
    )
}

/// Steps run by hand in the wrong order (from the console or `rotor step`):
/// each fails with a message that says what to run first, and changes
/// nothing; finishSecret never moves AWSCURRENT to credentials that do not
/// log in; and the rotation then completes in order.
async fn out_of_order(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_order"), json!({})).await;
    let old = f.current_version().await;
    let token = f.moto.start_rotation(&f.arn).await;
    let by_hand = |step: Step| {
        let f = &f;
        let token = token.clone();
        async move { f.step(&f.rotator(), step, &token).await }
    };
    let before = snapshot(&f).await;
    for (step, hint) in [
        (Step::SetSecret, "createSecret"),
        (Step::TestSecret, "createSecret"),
        (Step::FinishSecret, "createSecret"),
    ] {
        let err = by_hand(step)
            .await
            .expect_err(&format!("{step} before createSecret must fail"));
        assert!(
            err.to_string().contains(hint),
            "{step} before createSecret: the message must say to run {hint} first: {err}"
        );
        assert_eq!(
            snapshot(&f).await,
            before,
            "{step} before createSecret changed something"
        );
    }
    by_hand(Step::CreateSecret).await.expect("createSecret");
    let created = snapshot(&f).await;
    for step in [Step::TestSecret, Step::FinishSecret] {
        let err = by_hand(step)
            .await
            .expect_err(&format!("{step} before setSecret must fail"));
        assert_eq!(err.kind(), "LoginRefused", "{step} before setSecret: {err}");
        assert!(
            err.to_string().contains("setSecret"),
            "{step} before setSecret: the message must say to run setSecret first: {err}"
        );
        assert_eq!(
            snapshot(&f).await,
            created,
            "{step} before setSecret changed something"
        );
        assert!(
            f.logs_in(&f.secret(&old).await).await,
            "{step} before setSecret: AWSCURRENT must still log in"
        );
    }
    by_hand(Step::SetSecret).await.expect("setSecret");
    // finishSecret before testSecret verifies the login itself, then moves.
    assert_eq!(
        by_hand(Step::FinishSecret).await.expect("finishSecret"),
        Outcome::Finished
    );
    assert_eq!(
        by_hand(Step::TestSecret)
            .await
            .expect("testSecret after finish"),
        Outcome::AlreadyCurrent
    );
    f.remember_values().await;
    assert_rotated(&f, &old, &token).await;
}

async fn rotate_immediately_false(db: TestDb, strategy: Strategy) {
    // With RotateImmediately=false the service runs only testSecret, on a
    // temporary AWSPENDING copy of the current value, then drops the label.
    let f = fixture(&db, strategy, &unique("rotor_notnow"), json!({})).await;
    let current = f.current_version().await;
    let value = f.moto.value(&f.arn, &current).await.expect("value");
    let token = uuid::Uuid::new_v4().to_string();
    f.moto
        .client
        .put_secret_value()
        .secret_id(&f.arn)
        .client_request_token(&token)
        .secret_string(&value)
        .version_stages("AWSPENDING")
        .send()
        .await
        .expect("put copy");
    let verifiers = f.verifiers().await;
    assert_eq!(
        f.step(&f.rotator(), Step::TestSecret, &token)
            .await
            .expect("testSecret"),
        Outcome::Tested
    );
    f.moto
        .client
        .update_secret_version_stage()
        .secret_id(&f.arn)
        .version_stage("AWSPENDING")
        .remove_from_version_id(&token)
        .send()
        .await
        .expect("drop label");
    assert_eq!(f.current_version().await, current);
    assert_eq!(f.verifiers().await, verifiers);
}

async fn local_store_rotation(db: TestDb, strategy: Strategy) {
    // The same rotation through the embedded local store, as the CLI runs it.
    let admin = db.admin().await;
    let dir = std::env::temp_dir().join(unique("rotor-local"));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Arc::new(LocalStore::open(dir.join("store.json")).expect("open"));
    let user = unique("rotor_local");
    let password = new_password();
    admin.create_user(&user, &password).await;
    let mut extra = json!({});
    if strategy == Strategy::AlternatingUsers {
        let master = unique("rotor_lmaster");
        let master_pw = new_password();
        admin.create_master(&master, &master_pw, &user).await;
        let value = db.secret(&master, master_pw.expose(), json!({}));
        leaks::remember(&value);
        extra["masterarn"] = json!(
            store
                .put_current("master", &SecretString::new(value))
                .expect("put")
        );
    }
    let value = db.secret(&user, password.expose(), extra);
    leaks::remember(&value);
    let arn = store
        .put_current("app", &SecretString::new(value))
        .expect("put");
    let rotator = Rotator::new(store.clone(), db.engine(), strategy, db.policy());
    for _ in 0..2 {
        let report = rotator.rotate(&arn).await.expect("rotate");
        assert!(!report.resumed);
        let meta = store.describe(&arn).await.expect("describe");
        assert_eq!(meta.version_with("AWSCURRENT"), Some(report.token.as_str()));
        let value = store
            .get(&arn, rotor::store::VersionRef::Id(&report.token))
            .await
            .expect("get")
            .expect("value");
        leaks::remember(value.expose());
        let secret = DbSecret::parse(&value, &arn, "new", Require::Connection).expect("parse");
        assert!(
            db.engine().connect(&secret, "test").await.is_ok(),
            "new credentials log in"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

async fn resync(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_sync"),
        json!({}),
    )
    .await;
    let group = unique("rotor_group");
    let stray_group = unique("rotor_stray");
    f.admin.pg().batch_execute(&format!("CREATE ROLE {g} NOLOGIN; CREATE ROLE {l} NOLOGIN; GRANT {g} TO {u}; ALTER ROLE {u} CONNECTION LIMIT 7", g = ident(&group), l = ident(&stray_group), u = ident(&f.user))).await.expect("setup");
    let rotator = f.rotator();
    f.rotate(&rotator).await;
    let clone = format!("{}_clone", f.user);
    let roles = |user: String| {
        let admin = f.admin.pg();
        async move {
            let rows = admin.query("SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1", &[&user]).await.expect("memberships");
            let attrs = admin
                .query_one(
                    "SELECT rolinherit, rolconnlimit, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                    &[&user],
                )
                .await
                .expect("attrs");
            (
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>(),
                attrs.get::<_, bool>(0),
                attrs.get::<_, i32>(1),
                attrs.get::<_, Option<String>>(2),
            )
        }
    };
    let (groups, inherit, limit, comment) = roles(clone.clone()).await;
    assert_eq!(
        groups,
        vec![f.user.clone()],
        "the clone is a member of the user and of nothing else (it acts as the user)"
    );
    assert!(
        inherit && limit == 7,
        "clone inherits and copies the connection limit"
    );
    assert_eq!(
        comment.as_deref(),
        Some(format!("rotor:alternate-of:{}", f.user).as_str()),
        "Rotor marks the clone it made"
    );
    // A membership granted to the clone by hand and a changed attribute are
    // put back at the next rotation: the clone holds exactly what the user holds.
    f.admin
        .pg()
        .batch_execute(&format!(
            "GRANT {l} TO {c}; ALTER ROLE {c} CONNECTION LIMIT 9",
            l = ident(&stray_group),
            c = ident(&clone)
        ))
        .await
        .expect("change clone");
    f.rotate(&rotator).await;
    let (groups, _, limit, _) = roles(clone.clone()).await;
    assert_eq!(groups, vec![f.user.clone()], "stray membership revoked");
    assert_eq!(limit, 7, "connection limit realigned with the user");
    let (groups, _, limit, _) = roles(f.user.clone()).await;
    assert_eq!(
        groups,
        vec![group.clone()],
        "the user itself is never changed"
    );
    assert_eq!(limit, 7);
}

async fn replica_accepted(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    // moto's RDS: a primary and its read replica. Their endpoints do not
    // resolve, so the engine maps them to the test server.
    let (primary_host, _, replica_host) = env.rds_primary_and_replica().await;
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_replica"),
        json!({"ssl": false}),
    )
    .await;
    // Point the secret at the replica and the master at the primary.
    let mut master = f.master_json().await;
    master["host"] = json!(primary_host);
    master["ssl"] = json!(false);
    let master_arn = f
        .moto
        .create_secret(&unique("rotor/primary-master"), &master.to_string())
        .await;
    let mut value = f.current_json().await;
    value["host"] = json!(replica_host);
    value["masterarn"] = json!(master_arn);
    let arn = f
        .moto
        .create_secret(&unique("rotor/on-replica"), &value.to_string())
        .await;
    let rotator = env.rds_rotator(&[&primary_host, &replica_host]);
    let token = f.moto.start_rotation(&arn).await;
    for step in Step::ALL {
        let ev = RotationEvent {
            step: step.as_str().into(),
            secret_id: arn.clone(),
            token: token.clone(),
            rotation_token: None,
        };
        rotator
            .handle(&ev)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    for v in f.moto.all_values(&arn).await {
        leaks::remember(&v);
    }
    assert!(
        f.admin
            .stored_credential(&format!("{}_clone", f.user))
            .await
            .is_some(),
        "the clone was created through the primary"
    );
}

async fn rds_managed_master(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    // An RDS-managed master secret holds only username and password; its
    // tag names the instance, whose endpoint comes from the RDS API.
    let rds = env.rds_client();
    let instance = unique("rotor-managed").replace('_', "-");
    let created = rds
        .create_db_instance()
        .db_instance_identifier(&instance)
        .engine("postgres")
        .db_instance_class("db.t3.micro")
        .master_username("admin")
        .master_user_password("not-used-1234")
        .allocated_storage(20)
        .port(i32::from(env.pg_port))
        .send()
        .await
        .expect("create instance");
    let instance_info = created.db_instance.expect("instance");
    let instance_arn = instance_info.db_instance_arn.clone().expect("arn");
    let out = rds
        .describe_db_instances()
        .db_instance_identifier(&instance)
        .send()
        .await
        .expect("describe");
    let host = out
        .db_instances
        .unwrap_or_default()
        .remove(0)
        .endpoint
        .and_then(|e| e.address)
        .expect("address");
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_managed"),
        json!({"ssl": false}),
    )
    .await;
    let m = f.master_json().await;
    let managed = json!({"username": m["username"], "password": m["password"]}).to_string();
    let managed_arn = f
        .moto
        .client
        .create_secret()
        .name(unique("rds!db"))
        .secret_string(&managed)
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("aws:rds:primarydbinstancearn")
                .value(&instance_arn)
                .build(),
        )
        .send()
        .await
        .expect("create managed")
        .arn
        .expect("arn");
    let mut value = f.current_json().await;
    value["host"] = json!(host);
    value["masterarn"] = json!(managed_arn);
    let arn = f
        .moto
        .create_secret(&unique("rotor/managed-master"), &value.to_string())
        .await;
    // The master secret has no "ssl": the master logs in over verified TLS
    // whatever the app secret says (the test certificate covers moto's RDS
    // endpoint names).
    let rotator = env.rds_rotator(&[&host]);
    let report = rotator
        .rotate(&arn)
        .await
        .expect("rotation with an RDS-managed master");
    assert_eq!(report.steps[1].outcome, Outcome::UserCreated);
    for v in f.moto.all_values(&arn).await {
        leaks::remember(&v);
    }
}

async fn clone_name_too_long(db: TestDb) {
    let max = db.engine().max_username_bytes();
    let mut user = unique("rotor_long");
    while user.len() < max {
        user.push('y');
    }
    let f = fixture(&db, Strategy::AlternatingUsers, &user, json!({})).await;
    let token = f.moto.start_rotation(&f.arn).await;
    let labels = f.labels().await;
    let err = f
        .step(&f.rotator(), Step::CreateSecret, &token)
        .await
        .expect_err("too long");
    assert_eq!(err.kind(), "BadSecret");
    assert!(
        err.to_string().contains(&format!("keeps at most {max}")),
        "{err}"
    );
    assert_eq!(f.labels().await, labels);
    assert!(
        f.moto.value(&f.arn, &token).await.is_none(),
        "nothing stored"
    );
    let roles = f.admin.users_starting_with(&user).await;
    assert_eq!(roles, 1, "no clone (truncated or not) may exist");
    // One byte too many in the secret itself: refused before any change too.
    let long = format!("{user}z");
    let value = db.secret(&long, "irrelevant-password-1", json!({}));
    let arn = f.moto.create_secret(&unique("rotor/long"), &value).await;
    let token = f.moto.start_rotation(&arn).await;
    let rotator = db.rotator(Strategy::SingleUser);
    let err = rotator
        .handle(&RotationEvent {
            step: "createSecret".into(),
            secret_id: arn.clone(),
            token,
            rotation_token: None,
        })
        .await
        .expect_err("one byte too many");
    assert!(
        err.to_string().contains(&format!("{} bytes", max + 1)),
        "{err}"
    );
}

async fn falls_back_to_previous(db: TestDb) {
    let f = fixture(
        &db,
        Strategy::SingleUser,
        &unique("rotor_fallback"),
        json!({}),
    )
    .await;
    let rotator = f.rotator();
    let (previous, current) = f.rotate(&rotator).await;
    // Someone restores the previous password on the server (e.g. a snapshot
    // restore): AWSCURRENT no longer logs in, AWSPREVIOUS does.
    let prev = f.secret(&previous).await;
    f.admin.set_password(&f.user, &prev.password).await;
    assert!(!f.logs_in(&f.secret(&current).await).await);
    let (old, new) = f.rotate(&rotator).await;
    assert_eq!(old, current);
    assert!(
        f.logs_in(&f.secret(&new).await).await,
        "rotation recovered through AWSPREVIOUS"
    );
}

async fn tls_verified(db: TestDb) {
    let admin = db.admin().await;
    let user = unique("rotor_tls");
    let password = new_password();
    admin.create_user(&user, &password).await;
    leaks::remember(password.expose());
    for ssl in [json!(true), json!("true"), Value::Null] {
        let doc: Value =
            serde_json::from_str(&db.secret(&user, password.expose(), json!({}))).expect("json");
        let secret = with_ssl(doc, ssl);
        db.engine()
            .connect(&secret, "test")
            .await
            .unwrap_or_else(|e| panic!("verified TLS with the test CA ({:?}): {e}", secret.tls));
    }
}

async fn tls_wrong_ca(db: TestDb) {
    let admin = db.admin().await;
    let user = unique("rotor_wrongca");
    let password = new_password();
    admin.create_user(&user, &password).await;
    leaks::remember(password.expose());
    let engine = db.engine_with_ca(&db.env.wrong_ca);
    for (ssl, mode) in [
        (json!(true), TlsMode::Required),
        (Value::Null, TlsMode::Preferred),
    ] {
        let doc: Value =
            serde_json::from_str(&db.secret(&user, password.expose(), json!({}))).expect("json");
        let secret = with_ssl(doc, ssl);
        assert_eq!(secret.tls, mode);
        let err = match engine.connect(&secret, "test").await {
            Ok(_) => panic!(
                "{mode:?}: a server with an unknown CA must be refused (no silent downgrade)"
            ),
            Err(e) => e,
        };
        assert_eq!(err.kind(), "Tls", "{mode:?}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("ROTOR_CA_BUNDLE") && msg.contains("\"ssl\": false"),
            "{msg}"
        );
    }
    // ssl: false is plaintext, and the server (which allows it) accepts.
    let doc: Value =
        serde_json::from_str(&db.secret(&user, password.expose(), json!({}))).expect("json");
    let secret = with_ssl(doc, json!(false));
    engine
        .connect(&secret, "test")
        .await
        .expect("plaintext when ssl is false");
}

/// A connection secret from `doc` with `"ssl"` set to `ssl`, or without the
/// key when `ssl` is null.
fn with_ssl(mut doc: Value, ssl: Value) -> DbSecret {
    match ssl {
        Value::Null => {
            doc.as_object_mut().expect("object").remove("ssl");
        }
        other => doc["ssl"] = other,
    }
    DbSecret::parse(
        &SecretString::new(doc.to_string()),
        "tls",
        "v",
        Require::Connection,
    )
    .expect("parse")
}

/// A server that answers the TLS request with "no" and then accepts any
/// login: enough of the protocol to see what the client does without TLS.
async fn no_tls_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if sock.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                if sock.read_exact(&mut body).await.is_err() {
                    return;
                }
                if body == [0x04, 0xd2, 0x16, 0x2f] {
                    // SSLRequest: no TLS here. Then the startup message.
                    let _ = sock.write_all(b"N").await;
                    if sock.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut startup =
                        vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
                    if sock.read_exact(&mut startup).await.is_err() {
                        return;
                    }
                }
                let mut reply = Vec::new();
                reply.extend_from_slice(b"R\0\0\0\x08\0\0\0\0"); // AuthenticationOk
                reply.extend_from_slice(b"Z\0\0\0\x05I"); // ReadyForQuery
                let _ = sock.write_all(&reply).await;
                let mut sink = [0u8; 512];
                while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    port
}

async fn tls_absent_falls_back_only_without_server_tls(env: TestEnv) {
    let port = no_tls_server().await;
    let secret = |ssl: Value| {
        with_ssl(
            json!({"engine": "postgres", "host": "127.0.0.1", "port": port, "username": "u", "password": "irrelevant-pw-123", "dbname": "d"}),
            ssl,
        )
    };
    let engine = env.engine();
    let warnings = leaks::lines_with("server offers no TLS");
    engine
        .connect(&secret(Value::Null), "test")
        .await
        .expect("ssl absent: plaintext when the server offers no TLS");
    assert!(
        leaks::lines_with("server offers no TLS") > warnings,
        "the plaintext fallback is logged as a warning"
    );
    let err = match engine.connect(&secret(json!(true)), "test").await {
        Ok(_) => panic!("ssl: true must never fall back to plaintext"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "Tls", "{err}");
}

async fn demo_on_password_checking_server(env: TestEnv) {
    let store = std::env::temp_dir()
        .join(unique("rotor-demo"))
        .with_extension("json");
    let url = format!(
        "postgres://{}:{}@{}:{}/{}",
        env.superuser, env.superpass, env.pg_host, env.pg_port, env.pg_db
    );
    let report = rotor::demo::run(&rotor::demo::DemoOptions {
        database_url: url,
        store_path: store.clone(),
        keep: false,
    })
    .await
    .unwrap_or_else(|e| panic!("demo: {e}"));
    let text = std::fs::read_to_string(&store).expect("demo store");
    remember_store_values(&text);
    let _ = std::fs::remove_file(&store);
    assert!(report.contains("checks passwords"), "{report}");
    assert!(report.contains("all proofs passed"), "{report}");
    assert_eq!(
        report.matches("old password refused: yes").count(),
        2,
        "{report}"
    );
}

/// Every `value` in a local store file, for the leak check.
fn remember_store_values(text: &str) {
    fn walk(v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("value", Value::String(s)) => leaks::remember(s),
                        _ => walk(v),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(walk),
            _ => {}
        }
    }
    walk(&serde_json::from_str(text).expect("store json"));
}

async fn mysql_grants_resynced(env: TestEnv) {
    let db = TestDb::new(Kind::MariaDb, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_grants"),
        json!({}),
    )
    .await;
    let who = rotor_tests::mysql_account(&f.user);
    f.admin
        .exec(&format!(
            "GRANT INSERT, DELETE ON rotor_test.* TO {who} WITH GRANT OPTION"
        ))
        .await;
    f.admin
        .exec(&format!(
            "ALTER USER {who} REQUIRE SSL WITH MAX_USER_CONNECTIONS 5"
        ))
        .await;
    let rotator = f.rotator();
    let (old, new) = f.rotate(&rotator).await;
    assert_rotated(&f, &old, &new).await;
    let clone = format!("{}_clone", f.user);
    let grants = f
        .admin
        .rows(&format!(
            "SHOW GRANTS FOR {}",
            rotor_tests::mysql_account(&clone)
        ))
        .await
        .join("\n");
    assert!(
        grants.contains("INSERT, DELETE ON `rotor_test`.*") && grants.contains("WITH GRANT OPTION"),
        "grants replayed with GRANT OPTION: {grants}"
    );
    assert!(
        grants.contains("REQUIRE SSL"),
        "REQUIRE SSL replayed: {grants}"
    );
    assert!(
        grants.contains("MAX_USER_CONNECTIONS 5"),
        "limits replayed: {grants}"
    );
    assert_eq!(
        leaks::lines_with("IDENTIFIED BY PASSWORD '*"),
        0,
        "no password hash from SHOW GRANTS reaches Rotor's logs"
    );
    // The second rotation (where AWS's function fails with error 1045) and a
    // grant added to the current user meanwhile, re-synced to the other one.
    f.admin
        .exec(&format!(
            "GRANT UPDATE ON rotor_test.* TO {}",
            rotor_tests::mysql_account(&clone)
        ))
        .await;
    let (old, new) = f.rotate(&rotator).await;
    assert_rotated(&f, &old, &new).await;
    let grants = f
        .admin
        .rows(&format!("SHOW GRANTS FOR {who}"))
        .await
        .join("\n");
    assert!(
        grants.contains("UPDATE"),
        "grant re-synced to the base user: {grants}"
    );
    let (old, new) = f.rotate(&rotator).await;
    assert_rotated(&f, &old, &new).await;
}

async fn mysql_username_limit(env: TestEnv) {
    let db = TestDb::new(Kind::MariaDb, &env);
    let f = fixture(&db, Strategy::AlternatingUsers, &unique("rl"), json!({})).await;
    assert!(f.user.len() <= 16 && f.user.len() + 6 > 16);
    let rotator = f.rotator().with_username_limit(Some(16));
    let token = f.moto.start_rotation(&f.arn).await;
    let labels = f.labels().await;
    let err = f
        .step(&rotator, Step::CreateSecret, &token)
        .await
        .expect_err("clone name too long");
    assert_eq!(err.kind(), "BadSecret");
    assert!(
        err.to_string().contains("USERNAME_CHARACTER_LIMIT is 16"),
        "{err}"
    );
    assert_eq!(f.labels().await, labels);
    assert!(f.moto.value(&f.arn, &token).await.is_none());
    // Unset, the server's own limit (80 on MariaDB) applies and the rotation goes through.
    f.steps(&f.rotator(), &token, &Step::ALL).await;
    f.remember_values().await;
}

async fn mysql_tls_fallback(env: TestEnv) {
    // The machine's own MariaDB (127.0.0.1:3306) runs without TLS.
    let db = TestDb::new(Kind::MariaDb, &env);
    let secret = |ssl: Value| {
        with_ssl(
            json!({"engine": "mariadb", "host": "127.0.0.1", "port": 3306, "username": "rotor_nobody", "password": "wrong-password-123"}),
            ssl,
        )
    };
    let engine = db.engine();
    let warnings = leaks::lines_with("server offers no TLS");
    let err = match engine.connect(&secret(Value::Null), "test").await {
        Ok(_) => panic!("a wrong password must be refused"),
        Err(e) => e,
    };
    assert_eq!(
        err.kind(),
        "LoginRefused",
        "fell back to plaintext, then the login was refused: {err}"
    );
    assert!(
        leaks::lines_with("server offers no TLS") > warnings,
        "the fallback is logged"
    );
    let err = match engine.connect(&secret(json!(true)), "test").await {
        Ok(_) => panic!("ssl: true must never fall back"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "Tls", "{err}");
}
