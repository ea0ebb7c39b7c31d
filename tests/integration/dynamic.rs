//! Dynamic credentials against the password-checking PostgreSQL and
//! MariaDB: issue (with caller checks), TTL, connection limits, the sweep,
//! revocation by user, role, tag and secret, `rotor exec`.

use std::sync::Arc;

use libtest_mimic::Trial;
use rotor::dynamic::revoke::RevokeTarget;
use rotor::dynamic::sweep::SweepOptions;
use rotor::dynamic::{Caller, Dynamic, parse_lease};
use rotor::secret::Require;
use rotor::store::{SecretStore, SecretsManagerStore};
use rotor::{DbSecret, Error, SecretString, Strategy};
use rotor_tests::{Admin, DynamicRole, Kind, TestDb, TestEnv, dynamic_role, leaks, unique};
use serde_json::{Value, json};

use crate::rotation::{assert_rotated, fixture};
use crate::trial;

type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        let k = kind.name();
        let mut add = |name: &str, f: fn(TestDb) -> Scenario| {
            t.push(trial(format!("dynamic::{k}::{name}"), env, move |env| {
                f(TestDb::new(kind, &env))
            }));
        };
        add("issue_checks_the_caller_from_the_function_url", |d| {
            Box::pin(issue_checks_caller(d))
        });
        add("ttl_above_max_ttl_refused", |d| Box::pin(ttl_above_max(d)));
        add("connection_limit_enforced", |d| {
            Box::pin(connection_limit(d))
        });
        add("sweep_drops_expired_users_and_ends_sessions", |d| {
            Box::pin(sweep_expired(d))
        });
        add("revoke_by_user_role_and_tag_then_again", |d| {
            Box::pin(revoke_dynamic(d))
        });
        add("revoke_static_secret_single_user", |d| {
            Box::pin(revoke_static(d, Strategy::SingleUser))
        });
        add("revoke_static_secret_alternating_users", |d| {
            Box::pin(revoke_static(d, Strategy::AlternatingUsers))
        });
        add("exec_revokes_even_when_the_command_fails", |d| {
            Box::pin(exec_revokes(d))
        });
        add("bad_role_definitions_change_nothing", |d| {
            Box::pin(bad_roles(d))
        });
        add("sweep_acts_on_static_secret_tags", |d| {
            Box::pin(sweep_static_tags(d))
        });
    }
    t.push(trial(
        "dynamic::postgres::refused_after_ttl_by_valid_until_alone",
        env,
        |env| valid_until(TestDb::new(Kind::Postgres, &env)),
    ));
    t
}

fn cli() -> Caller {
    Caller {
        arn: "cli:test".into(),
        via: "cli",
    }
}

trait RoleExt {
    async fn issue(&self, ttl: Option<u64>) -> rotor::dynamic::issue::IssuedCredential;
    fn secret_of(&self, c: &rotor::dynamic::issue::IssuedCredential) -> DbSecret;
    async fn exists(&self, user: &str) -> bool;
    /// Users of this role that exist now (other tests' users do not count).
    async fn user_count(&self) -> i64;
}

impl RoleExt for DynamicRole {
    async fn user_count(&self) -> i64 {
        let prefix = self
            .dynamic
            .role(&self.name)
            .await
            .expect("role")
            .user_prefix();
        self.admin.users_starting_with(&prefix).await
    }

    async fn issue(&self, ttl: Option<u64>) -> rotor::dynamic::issue::IssuedCredential {
        let c = self
            .dynamic
            .issue(&self.name, ttl, &cli(), false)
            .await
            .unwrap_or_else(|e| panic!("issue: {e}"));
        leaks::remember(c.password.expose());
        c
    }

    fn secret_of(&self, c: &rotor::dynamic::issue::IssuedCredential) -> DbSecret {
        let v = self.db.secret(&c.username, c.password.expose(), json!({}));
        DbSecret::parse(&SecretString::new(v), "dyn", "v", Require::Connection).expect("parse")
    }

    async fn exists(&self, user: &str) -> bool {
        self.admin.users_starting_with(user).await > 0
    }
}

async fn logs_in(db: &TestDb, secret: &DbSecret) -> rotor::Result<Box<dyn rotor::engine::Session>> {
    db.engine().connect(secret, "test").await
}

fn url_event(arn: &str, body: &str) -> Value {
    crate::dynamic_authz::url_event(arn, body)
}

async fn issue_checks_caller(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let body = json!({"role": r.name, "ttl": "10m"}).to_string();
    let before = r.user_count().await;
    let refused = rotor::lambda::issue_from_url(
        &r.dynamic,
        &url_event("arn:aws:sts::123456789012:assumed-role/intruder/s", &body),
    )
    .await;
    assert_eq!(refused["statusCode"], 403, "{refused}");
    assert!(
        refused["body"]
            .as_str()
            .unwrap_or("")
            .contains("allowed_principals")
    );
    let anonymous = rotor::lambda::issue_from_url(&r.dynamic, &json!({"body": body})).await;
    assert_eq!(anonymous["statusCode"], 403);
    assert_eq!(
        r.user_count().await,
        before,
        "a refused caller created nothing"
    );
    let bad = rotor::lambda::issue_from_url(
        &r.dynamic,
        &url_event("arn:aws:iam::123456789012:role/ci-deploy", "not json"),
    )
    .await;
    assert_eq!(bad["statusCode"], 400);
    let ok = rotor::lambda::issue_from_url(
        &r.dynamic,
        &url_event(
            "arn:aws:sts::123456789012:assumed-role/ci-deploy/run-7",
            &body,
        ),
    )
    .await;
    assert_eq!(ok["statusCode"], 200, "{ok}");
    let c: Value = serde_json::from_str(ok["body"].as_str().expect("body")).expect("json");
    let (user, pw) = (
        c["username"].as_str().expect("u"),
        c["password"].as_str().expect("p"),
    );
    leaks::remember(pw);
    assert!(user.len() <= 32, "{user} fits MySQL's 32 characters");
    let lease = parse_lease(user).expect("lease name");
    assert!(
        lease.expires_at > rotor::time::now() + 500 && lease.expires_at <= rotor::time::now() + 600
    );
    let secret = DbSecret::parse(
        &SecretString::new(db.secret(user, pw, json!({}))),
        "d",
        "v",
        Require::Connection,
    )
    .expect("parse");
    logs_in(&db, &secret)
        .await
        .expect("the issued credential logs in");
    assert!(
        leaks::lines_with("issue-credential") >= 2,
        "issue and refusal are audited"
    );
    r.dynamic
        .revoke(&RevokeTarget::User(user.into()), false, &cli(), None)
        .await
        .expect("cleanup");
}

async fn ttl_above_max(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let before = r.user_count().await;
    let err = r
        .dynamic
        .issue(&r.name, Some(7200), &cli(), false)
        .await
        .expect_err("2h > 1h");
    assert_eq!(err.kind(), "BadRequest");
    assert!(err.to_string().contains("max_ttl 1h"), "{err}");
    assert_eq!(r.user_count().await, before);
}

async fn connection_limit(db: TestDb) {
    let r = dynamic_role(&db, json!({"max_connections": 1})).await;
    let c = r.issue(None).await;
    let secret = r.secret_of(&c);
    let _first = logs_in(&db, &secret).await.expect("first connection");
    let err = match logs_in(&db, &secret).await {
        Ok(_) => panic!("a second connection must be refused"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("connections"), "{err}");
}

async fn valid_until(db: TestDb) {
    let r = dynamic_role(&db, json!({"default_ttl": "2s"})).await;
    let c = r.issue(None).await;
    let secret = r.secret_of(&c);
    logs_in(&db, &secret).await.expect("logs in before expiry");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    match logs_in(&db, &secret).await {
        Err(Error::LoginRefused { .. }) => {}
        other => panic!(
            "after VALID UNTIL the login must be refused, before any sweep: {:?}",
            other.err()
        ),
    }
    assert!(
        r.exists(&c.username).await,
        "no sweep ran: the user still exists"
    );
}

async fn sweep_expired(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let doomed = r.issue(Some(60)).await;
    let survivor = r.issue(Some(3600)).await;
    // An open session, and (PostgreSQL) a table the user owns.
    let mut session = logs_in(&db, &r.secret_of(&doomed)).await.expect("login");
    let table = unique("rotor_t");
    if db.kind == Kind::Postgres {
        let pg = tokio_postgres_connect(&db, &doomed).await;
        pg.batch_execute(&format!("CREATE TABLE public.\"{table}\" (id int)"))
            .await
            .expect("create table");
        std::mem::forget(pg); // keep that session open too
    }
    let later = SweepOptions {
        now: rotor::time::now() + 120,
        ..SweepOptions::default()
    };
    // Dry run: reported, nothing changed.
    let dry = r
        .dynamic
        .sweep(
            &SweepOptions {
                dry_run: true,
                ..later.clone()
            },
            &cli(),
            None,
        )
        .await
        .expect("dry run");
    assert!(
        dry.actions
            .iter()
            .any(|a| a.target == doomed.username && a.outcome == "would-do"),
        "{dry:?}"
    );
    assert!(r.exists(&doomed.username).await);
    let report = r.dynamic.sweep(&later, &cli(), None).await.expect("sweep");
    assert_eq!(report.failures, 0, "{report:?}");
    let action = report
        .actions
        .iter()
        .find(|a| a.target == doomed.username)
        .expect("dropped");
    assert_eq!(action.outcome, "done");
    assert!(
        action
            .evidence
            .as_ref()
            .and_then(|e| e["sessions_ended"].as_u64())
            .unwrap_or(0)
            >= 1,
        "{action:?}"
    );
    assert!(!r.exists(&doomed.username).await, "expired user dropped");
    assert!(r.exists(&survivor.username).await, "unexpired user kept");
    assert!(session.check().await.is_err(), "the open session was ended");
    if db.kind == Kind::Postgres {
        let Admin::Pg(pg) = &r.admin else {
            unreachable!()
        };
        let owner: String = pg
            .query_one(
                "SELECT tableowner::text FROM pg_tables WHERE tablename = $1",
                &[&table],
            )
            .await
            .expect("table still exists")
            .get(0);
        assert_eq!(owner, r.owner, "the table now belongs to owner_role");
    }
    // Again: nothing to do, nothing fails.
    let again = r
        .dynamic
        .sweep(&later, &cli(), None)
        .await
        .expect("sweep again");
    assert_eq!(again.failures, 0);
    assert!(!again.actions.iter().any(|a| a.target == doomed.username));
    r.dynamic
        .revoke(&RevokeTarget::Role(r.name.clone()), false, &cli(), None)
        .await
        .expect("cleanup");
}

async fn tokio_postgres_connect(
    db: &TestDb,
    c: &rotor::dynamic::issue::IssuedCredential,
) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(db.host())
        .port(db.port())
        .user(&c.username)
        .password(c.password.expose())
        .dbname(db.dbname());
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("psql login");
    tokio::spawn(conn);
    client
}

async fn revoke_dynamic(db: TestDb) {
    let a = dynamic_role(&db, json!({})).await;
    let u1 = a.issue(None).await;
    let u2 = a.issue(None).await;
    let by_user = a
        .dynamic
        .revoke(
            &RevokeTarget::User(u1.username.clone()),
            false,
            &cli(),
            None,
        )
        .await
        .expect("revoke user");
    assert_eq!(by_user.revoked[0].action, "dropped-user");
    assert!(!a.exists(&u1.username).await && a.exists(&u2.username).await);
    assert!(
        logs_in(&db, &a.secret_of(&u1)).await.is_err(),
        "revoked user refused"
    );
    let again = a
        .dynamic
        .revoke(
            &RevokeTarget::User(u1.username.clone()),
            false,
            &cli(),
            None,
        )
        .await
        .expect("already gone");
    assert_eq!(again.revoked[0].action, "already-gone");
    let by_role = a
        .dynamic
        .revoke(&RevokeTarget::Role(a.name.clone()), false, &cli(), None)
        .await
        .expect("revoke role");
    assert!(by_role.failures.is_empty() && !a.exists(&u2.username).await);
    // By tag: the role's secret carries it.
    let u3 = a.issue(None).await;
    let team = unique("team");
    a.moto
        .client
        .tag_resource()
        .secret_id(&a.name)
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("team")
                .value(&team)
                .build(),
        )
        .send()
        .await
        .expect("tag");
    let by_tag = a
        .dynamic
        .revoke(
            &RevokeTarget::Tag {
                key: "team".into(),
                value: team,
            },
            false,
            &cli(),
            None,
        )
        .await
        .expect("revoke tag");
    assert!(by_tag.failures.is_empty(), "{by_tag:?}");
    assert!(
        !a.exists(&u3.username).await,
        "revoked through the role's tag"
    );
    // A revocation event naming a user that is gone also succeeds.
    let event = json!({"source": "rotor", "detail-type": "Revoke Credential", "detail": {"lease": u3.username}});
    let (target, dry) = rotor::dynamic::revoke::from_event(&event, &[])
        .expect("event")
        .expect("not ignored");
    assert!(
        a.dynamic
            .revoke(&target, dry, &cli(), None)
            .await
            .expect("gone")
            .failures
            .is_empty()
    );
    let _ = (&a.group, &a.prefix);
}

async fn revoke_static(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_revoke"), json!({})).await;
    let rotator = f.rotator();
    let (previous, current) = f.rotate(&rotator).await;
    let prev = f.secret(&previous).await;
    let cur = f.secret(&current).await;
    let mut open = db
        .engine()
        .connect(&cur, "test")
        .await
        .expect("session with the compromised credential");
    let store: Arc<dyn SecretStore> = Arc::new(SecretsManagerStore::new(db.env.sm_client()));
    let dynamic = Dynamic::new(store, rotor_tests::dynamic_options(&db));
    // Through the event path: a CloudTrail event naming the secret.
    let event = json!({"source": "aws.secretsmanager", "detail-type": "AWS API Call via CloudTrail", "detail": {"eventName": "GetSecretValue", "userIdentity": {"arn": "arn:aws:sts::123456789012:assumed-role/attacker/x"}, "requestParameters": {"secretId": f.arn}}});
    let (target, _) = rotor::dynamic::revoke::from_event(
        &event,
        &["arn:aws:iam::123456789012:role/rotor-*".into()],
    )
    .expect("parse")
    .expect("not ignored");
    let report = dynamic
        .revoke(&target, false, &cli(), None)
        .await
        .expect("revoke");
    assert!(report.failures.is_empty(), "{report:?}");
    f.remember_values().await;
    let evidence = &report.revoked[0];
    assert!(
        evidence.password_changed && evidence.sessions_ended >= 1,
        "{evidence:?}"
    );
    assert!(open.check().await.is_err(), "the compromised session ended");
    let new = f.secret(&f.current_version().await).await;
    assert!(f.logs_in(&new).await, "the new credential works");
    assert!(
        !f.logs_in(&cur).await,
        "the compromised credential is refused"
    );
    assert!(
        !f.logs_in(&prev).await,
        "the previous credential is refused too"
    );
    if strategy == Strategy::AlternatingUsers {
        assert!(evidence.previous_invalidated);
    }
}

async fn exec_revokes(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let before = r.user_count().await;
    let out = r
        .dynamic
        .exec(
            &r.name,
            Some(300),
            &cli(),
            &[
                "sh".into(),
                "-c".into(),
                "test -n \"$DATABASE_URL\" && exit 3".into(),
            ],
        )
        .await
        .expect("exec");
    assert_eq!(
        out.code,
        Some(3),
        "the command saw DATABASE_URL and failed on purpose"
    );
    assert!(out.revoked.existed);
    assert!(
        !r.exists(&out.username).await,
        "revoked after the command failed"
    );
    assert_eq!(r.user_count().await, before);
}

async fn bad_roles(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let before = r.admin.users_starting_with("v_bad").await;
    for (what, value) in [
        ("not JSON", "{".to_string()),
        ("SQL template", json!({"engine": db.engine_key(), "masterarn": "x", "creation_statements": "CREATE ROLE"}).to_string()),
        ("ttl order", json!({"engine": db.engine_key(), "masterarn": "x", "default_ttl": "2h", "max_ttl": "1h"}).to_string()),
        ("no master", json!({"engine": db.engine_key()}).to_string()),
    ] {
        let name = format!("{}{}", r.prefix, unique("bad").replace('_', ""));
        r.moto.create_secret(&name, &value).await;
        let err = r.dynamic.issue(&name, None, &cli(), false).await.expect_err(what);
        assert_eq!(err.kind(), "BadSecret", "{what}: {err}");
    }
    assert_eq!(
        r.admin.users_starting_with("v_bad").await,
        before,
        "bad roles created nothing"
    );
    // The sweep reports them and goes on.
    let report = r
        .dynamic
        .sweep(&SweepOptions::default(), &cli(), None)
        .await
        .expect("sweep");
    assert_eq!(report.invalid_roles.len(), 4, "{report:?}");
}

async fn sweep_static_tags(db: TestDb) {
    let aged = fixture(&db, Strategy::SingleUser, &unique("rotor_aged"), json!({})).await;
    let expiring = fixture(&db, Strategy::SingleUser, &unique("rotor_exp"), json!({})).await;
    let tag = |arn: &str, k: &str, v: &str| {
        let c = aged.moto.client.clone();
        let (arn, k, v) = (arn.to_string(), k.to_string(), v.to_string());
        async move {
            c.tag_resource()
                .secret_id(arn)
                .tags(
                    aws_sdk_secretsmanager::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .build(),
                )
                .send()
                .await
                .expect("tag")
        }
    };
    tag(&aged.arn, "rotor:max-age", "1d").await;
    tag(
        &expiring.arn,
        "rotor:expires-at",
        &rotor::time::rfc3339(rotor::time::now() + 3600),
    )
    .await;
    let before_aged = aged.current_version().await;
    let before_exp = expiring.current_version().await;
    let store: Arc<dyn SecretStore> = Arc::new(SecretsManagerStore::new(db.env.sm_client()));
    let dynamic =
        Dynamic::new(store, rotor_tests::dynamic_options(&db)).with_roles_prefix(unique("none/"));
    // Two days later: the max-age secret is rotated, the other revoked once.
    let later = SweepOptions {
        now: rotor::time::now() + 2 * 86_400,
        ..SweepOptions::default()
    };
    let report = dynamic.sweep(&later, &cli(), None).await.expect("sweep");
    let mine: Vec<_> = report
        .actions
        .iter()
        .filter(|a| a.target == aged.arn || a.target == expiring.arn)
        .collect();
    assert_eq!(mine.len(), 2, "{report:?}");
    assert!(mine.iter().all(|a| a.outcome == "done"), "{mine:?}");
    aged.remember_values().await;
    expiring.remember_values().await;
    assert_ne!(
        aged.current_version().await,
        before_aged,
        "rotated for max-age"
    );
    assert_ne!(
        expiring.current_version().await,
        before_exp,
        "revoked when expired"
    );
    assert!(!expiring.logs_in(&expiring.secret(&before_exp).await).await);
    let tags = aged
        .moto
        .client
        .describe_secret()
        .secret_id(&expiring.arn)
        .send()
        .await
        .expect("describe")
        .tags
        .unwrap_or_default();
    assert!(
        tags.iter()
            .any(|t| t.key.as_deref() == Some("rotor:expired")),
        "tagged rotor:expired"
    );
    // The next sweep leaves the expired secret alone.
    let again = dynamic
        .sweep(&later, &cli(), None)
        .await
        .expect("sweep again");
    assert!(
        !again.actions.iter().any(|a| a.target == expiring.arn),
        "revoked once only"
    );
    let _ = assert_rotated;
}
