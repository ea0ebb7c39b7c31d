//! MySQL-family safety scenarios (issue 9) against the test MariaDB: what
//! an alternating-users master refuses to touch, host accounts, exact
//! privilege sync, literals, and bounded time.

use libtest_mimic::Trial;
use rotor::engine::ClonePolicy;
use rotor::secret::Require;
use rotor::{DbSecret, SecretString, Step, Strategy};
use rotor_tests::{Kind, TestDb, TestEnv, leaks, mysql_account, new_password, unique};
use serde_json::json;

use crate::rotation::{Fixture, fixture};
use crate::trial;

type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
type Named = (&'static str, fn(TestEnv) -> Scenario);

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let scenarios: Vec<Named> = vec![
        ("unmarked_existing_clone_is_not_taken_over", |e| {
            Box::pin(unmarked_clone_not_taken_over(e))
        }),
        (
            "unmarked_clone_holding_nothing_adopted_only_with_the_pending_password",
            |e| Box::pin(half_made_clone(e)),
        ),
        ("privileged_template_refused_without_opt_in", |e| {
            Box::pin(privileged_template_refused(e))
        }),
        ("privileged_template_cloned_with_opt_in", |e| {
            Box::pin(privileged_template_cloned_with_opt_in(e))
        }),
        (
            "alternating_every_host_account_of_the_alternate_gets_the_pending_password",
            |e| Box::pin(every_host_account_of_the_alternate(e)),
        ),
        (
            "single_user_on_several_hosts_refused_naming_the_others",
            |e| Box::pin(single_user_on_several_hosts_refused(e)),
        ),
        ("alternate_loses_grants_and_roles_the_template_lost", |e| {
            Box::pin(alternate_loses_what_template_lost(e))
        }),
        (
            "password_literal_read_back_exactly_with_and_without_no_backslash_escapes",
            |e| Box::pin(literal_under_both_sql_modes(e)),
        ),
        ("alternate_gets_full_require_clause_and_default_role", |e| {
            Box::pin(full_require_and_default_role(e))
        }),
        (
            "statement_waiting_on_a_lock_ends_in_time_and_changes_nothing",
            |e| Box::pin(statement_waiting_on_a_lock(e)),
        ),
        (
            "current_user_named_clone_does_not_take_over_its_base",
            |e| Box::pin(clone_named_current_user_does_not_take_over_base(e)),
        ),
        (
            "alternate_grants_equal_the_templates_through_all_privileges_and_column_grants",
            |e| Box::pin(alternate_grants_equal_templates(e)),
        ),
        (
            "template_with_a_global_write_privilege_refused_without_opt_in",
            |e| Box::pin(global_write_privilege_refused(e)),
        ),
        (
            "statement_under_a_deadline_shorter_than_the_session_limit_times_out_and_never_lands",
            |e| Box::pin(deadline_shorter_than_session_limit(e)),
        ),
        (
            "retry_after_a_crash_between_host_accounts_sets_every_host_account",
            |e| Box::pin(retry_after_crash_between_host_accounts(e)),
        ),
    ];
    scenarios
        .into_iter()
        .map(|(name, f)| trial(format!("mysql_safety::mariadb::{name}"), env, f))
        .collect()
}

fn maria(env: &TestEnv) -> TestDb {
    TestDb::new(Kind::MariaDb, env)
}

/// The master secret of a fixture, parsed.
async fn master_secret(f: &Fixture) -> DbSecret {
    let value = f.master_json().await.to_string();
    leaks::remember(&value);
    DbSecret::parse(
        &SecretString::new(value),
        "master",
        "AWSCURRENT",
        Require::Login,
    )
    .expect("master secret")
}

/// Runs createSecret and setSecret of a fresh rotation; returns setSecret's result.
async fn create_then_set(f: &Fixture) -> (String, rotor::Result<rotor::Outcome>) {
    let rotator = f.rotator();
    let token = f.moto.start_rotation(&f.arn).await;
    f.step(&rotator, Step::CreateSecret, &token)
        .await
        .expect("createSecret");
    f.remember_values().await;
    let result = f.step(&rotator, Step::SetSecret, &token).await;
    (token, result)
}

/// A crash between CREATE USER and the marker grant leaves a clone that
/// holds nothing and stores the pending password: the retry adopts it (the
/// crash-point matrix drills that). An account that holds nothing but has
/// another password is someone else's: still refused, nothing changed.
async fn half_made_clone(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_halfmade"),
        json!({}),
    )
    .await;
    let clone = format!("{}_clone", f.user);
    f.admin
        .exec(&format!(
            "CREATE USER {} IDENTIFIED BY PASSWORD '{}'",
            mysql_account(&clone),
            rotor::engine::mysql::native_password_hash(new_password().expose())
        ))
        .await;
    let before = f.admin.stored_credential(&clone).await;
    let (token, result) = create_then_set(&f).await;
    let err = result.expect_err("a clone with another password must be refused");
    assert_eq!(err.kind(), "Refused", "{err}");
    assert_eq!(
        f.admin.stored_credential(&clone).await,
        before,
        "password unchanged"
    );
    // Now the half-made clone Rotor itself would leave: the pending password.
    let pending = f.secret(&token).await;
    f.admin.set_password(&clone, &pending.password).await;
    f.steps(&f.rotator(), &token, &Step::ALL[1..]).await;
    f.remember_values().await;
    let grants = f
        .admin
        .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&clone)))
        .await;
    assert!(
        grants.iter().any(|g| g.contains("rotor_alternate_marker")),
        "the adopted clone is marked: {grants:?}"
    );
}

async fn unmarked_clone_not_taken_over(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_victim"),
        json!({}),
    )
    .await;
    // Someone else's account that happens to be named like the alternate.
    let clone = format!("{}_clone", f.user);
    f.admin.create_user(&clone, &new_password()).await;
    let before = f.admin.stored_credential(&clone).await;
    let grants_before = f
        .admin
        .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&clone)))
        .await;
    let (_, result) = create_then_set(&f).await;
    let err = result.expect_err("an unmarked clone must be refused");
    assert_eq!(err.kind(), "Refused", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("rotor_alternate_marker") && text.contains("nothing was changed"),
        "the error says how to mark it by hand: {text}"
    );
    assert_eq!(
        f.admin.stored_credential(&clone).await,
        before,
        "password unchanged"
    );
    assert_eq!(
        f.admin
            .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&clone)))
            .await,
        grants_before,
        "grants unchanged"
    );
    // Marked by hand, the same account is accepted as the alternate.
    f.admin
        .exec(&rotor::engine::mysql::marker_grant(&clone, "%"))
        .await;
    let rotator = f.rotator();
    let token = f.moto.start_rotation(&f.arn).await;
    f.steps(&rotator, &token, &Step::ALL).await;
    f.remember_values().await;
    assert_ne!(f.admin.stored_credential(&clone).await, before);
}

async fn privileged_template_refused(env: TestEnv) {
    let db = maria(&env);
    for (how, grant) in [
        ("global CREATE USER", "GRANT CREATE USER ON *.* TO {who}"),
        (
            "global GRANT OPTION",
            "GRANT SELECT ON *.* TO {who} WITH GRANT OPTION",
        ),
        ("a role holding RELOAD", "GRANT {role} TO {who}"),
    ] {
        let f = fixture(
            &db,
            Strategy::AlternatingUsers,
            &unique("rotor_priv"),
            json!({}),
        )
        .await;
        let who = mysql_account(&f.user);
        let role = unique("rotor_role");
        f.admin.exec(&format!("CREATE ROLE `{role}`")).await;
        f.admin
            .exec(&format!("GRANT RELOAD ON *.* TO `{role}`"))
            .await;
        f.admin
            .exec(
                &grant
                    .replace("{who}", &who)
                    .replace("{role}", &format!("`{role}`")),
            )
            .await;
        let (_, result) = create_then_set(&f).await;
        let err = result.expect_err(how);
        assert_eq!(err.kind(), "Refused", "{how}: {err}");
        assert!(
            err.to_string().contains("ROTOR_ALLOW_PRIVILEGED_CLONE"),
            "{how}: the error names the opt-in: {err}"
        );
        assert_eq!(
            f.admin
                .users_starting_with(&format!("{}_clone", f.user))
                .await,
            0,
            "{how}: no clone created"
        );
        f.admin.exec(&format!("DROP ROLE `{role}`")).await;
    }
}

async fn privileged_template_cloned_with_opt_in(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_optin"),
        json!({}),
    )
    .await;
    f.admin
        .exec(&format!(
            "GRANT CREATE USER ON *.* TO {}",
            mysql_account(&f.user)
        ))
        .await;
    let master = master_secret(&f).await;
    let mut session = db
        .engine()
        .connect(&master, "master")
        .await
        .expect("master login");
    let clone = format!("{}_clone", f.user);
    let password = new_password();
    let sync = session
        .sync_alternate_user(
            &f.user,
            &clone,
            &password,
            ClonePolicy {
                allow_privileged: true,
            },
        )
        .await
        .expect("opt-in allows a privileged template");
    assert!(sync.created);
    let grants = f
        .admin
        .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&clone)))
        .await
        .join("\n");
    assert!(grants.contains("CREATE USER ON *.*"), "{grants}");
    assert!(
        grants.contains("`rotor_alternate_marker`.*"),
        "marked: {grants}"
    );
}

/// A second host account of `user` (`user`@`127.0.0.1`), with the same
/// stored password and grants as `user`@`%`: logins from the tests match it.
async fn add_loopback_account(admin: &rotor_tests::Admin, user: &str) {
    let stored = admin.stored_credential(user).await.expect("user exists");
    let hash = stored
        .split_once(':')
        .map(|(_, h)| h.to_string())
        .expect("host:hash");
    let loopback = rotor::engine::mysql::account(user, "127.0.0.1");
    admin
        .exec(&format!(
            "CREATE USER {loopback} IDENTIFIED BY PASSWORD '{hash}'"
        ))
        .await;
    admin
        .exec(&format!("GRANT SELECT ON rotor_test.* TO {loopback}"))
        .await;
}

async fn every_host_account_of_the_alternate(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_hosts"),
        json!({}),
    )
    .await;
    add_loopback_account(&f.admin, &f.user).await;
    // The alternate exists on one host only (made when the user had one host).
    let clone = format!("{}_clone", f.user);
    f.admin.create_user(&clone, &new_password()).await;
    f.admin
        .exec(&rotor::engine::mysql::marker_grant(&clone, "%"))
        .await;
    let rotator = f.rotator();
    let (old, new) = f.rotate(&rotator).await;
    crate::rotation::assert_rotated(&f, &old, &new).await;
    let current = f.secret(&new).await;
    assert_eq!(current.username, clone);
    let hash = rotor::engine::mysql::native_password_hash(current.password.expose());
    assert_eq!(
        f.admin.stored_credential(&clone).await.as_deref(),
        Some(format!("%:{hash},127.0.0.1:{hash}").as_str()),
        "every host account of the alternate holds the pending password"
    );
}

async fn single_user_on_several_hosts_refused(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::SingleUser,
        &unique("rotor_single_hosts"),
        json!({}),
    )
    .await;
    add_loopback_account(&f.admin, &f.user).await;
    // This login may read mysql.user, so it can see the other account.
    f.admin
        .exec(&format!(
            "GRANT SELECT ON mysql.user TO {}",
            rotor::engine::mysql::account(&f.user, "127.0.0.1")
        ))
        .await;
    let before = f.admin.stored_credential(&f.user).await;
    let labels = f.labels().await;
    let (_, result) = create_then_set(&f).await;
    let err = result.expect_err("a single user on two hosts must be refused");
    assert_eq!(err.kind(), "Refused", "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("`{}`@`%`", f.user)) && text.contains("127.0.0.1"),
        "the error names the other account and the matched one: {text}"
    );
    assert_eq!(
        f.admin.stored_credential(&f.user).await,
        before,
        "nothing changed"
    );
    let after = f.labels().await;
    assert_eq!(
        after
            .values()
            .filter(|s| s.contains(&"AWSCURRENT".to_string()))
            .count(),
        1
    );
    assert_eq!(
        labels
            .iter()
            .find(|(_, s)| s.contains(&"AWSCURRENT".to_string())),
        after
            .iter()
            .find(|(_, s)| s.contains(&"AWSCURRENT".to_string()))
    );
}

async fn alternate_loses_what_template_lost(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_exact"),
        json!({}),
    )
    .await;
    let role = unique("rotor_exact_role");
    f.admin.exec(&format!("CREATE ROLE `{role}`")).await;
    let master = f.master_json().await["username"]
        .as_str()
        .expect("master username")
        .to_string();
    // The master may hand the role on (as RDS's master may for its roles).
    f.admin
        .exec(&format!(
            "GRANT `{role}` TO {} WITH ADMIN OPTION",
            mysql_account(&master)
        ))
        .await;
    let who = mysql_account(&f.user);
    f.admin
        .exec(&format!(
            "GRANT INSERT, DELETE ON rotor_test.* TO {who} WITH GRANT OPTION"
        ))
        .await;
    f.admin.exec(&format!("GRANT `{role}` TO {who}")).await;
    let rotator = f.rotator();
    let grants_of = |user: String| {
        let admin = &f.admin;
        async move {
            admin
                .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&user)))
                .await
                .join("\n")
        }
    };
    // 1: app -> app_clone; the clone gets everything.
    f.rotate(&rotator).await;
    let clone = format!("{}_clone", f.user);
    let g = grants_of(clone.clone()).await;
    assert!(g.contains("DELETE") && g.contains(&role), "{g}");
    // The DBA takes INSERT, GRANT OPTION and the role away from the current user.
    let current = mysql_account(&clone);
    f.admin
        .exec(&format!("REVOKE INSERT ON rotor_test.* FROM {current}"))
        .await;
    f.admin
        .exec(&format!(
            "REVOKE GRANT OPTION ON rotor_test.* FROM {current}"
        ))
        .await;
    f.admin
        .exec(&format!("REVOKE `{role}` FROM {current}"))
        .await;
    // 2: app_clone -> app: the alternate (app) must lose them too.
    let (old, new) = f.rotate(&rotator).await;
    crate::rotation::assert_rotated(&f, &old, &new).await;
    let g = grants_of(f.user.clone()).await;
    assert!(
        g.contains("DELETE")
            && !g.contains("INSERT")
            && !g.contains("GRANT OPTION")
            && !g.contains(&role),
        "the alternate holds exactly the template's grants: {g}"
    );
    // 3: app -> app_clone: nothing comes back.
    f.rotate(&rotator).await;
    let g = grants_of(clone.clone()).await;
    assert!(
        g.contains("DELETE")
            && !g.contains("INSERT")
            && !g.contains("GRANT OPTION")
            && !g.contains(&role),
        "{g}"
    );
    assert!(
        g.contains("rotor_alternate_marker"),
        "the marker stays: {g}"
    );
    f.admin.exec(&format!("DROP ROLE `{role}`")).await;
}

async fn literal_under_both_sql_modes(env: TestEnv) {
    let db = maria(&env);
    let admin = db.admin().await;
    let password = "a\\b'c\\'d\\\\e\\0f\\n";
    for (mode, no_backslash_escapes) in [("''", false), ("'NO_BACKSLASH_ESCAPES'", true)] {
        admin.exec(&format!("SET SESSION sql_mode = {mode}")).await;
        let literal = rotor::engine::mysql::string_literal(password, no_backslash_escapes);
        let read = admin.rows(&format!("SELECT {literal}")).await;
        assert_eq!(
            read,
            vec![password.to_string()],
            "sql_mode {mode}: {literal}"
        );
    }
}

async fn full_require_and_default_role(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_req"),
        json!({}),
    )
    .await;
    let who = mysql_account(&f.user);
    let role = unique("rotor_req_role");
    f.admin.exec(&format!("CREATE ROLE `{role}`")).await;
    let master = f.master_json().await["username"]
        .as_str()
        .expect("master username")
        .to_string();
    f.admin
        .exec(&format!(
            "GRANT `{role}` TO {} WITH ADMIN OPTION",
            mysql_account(&master)
        ))
        .await;
    f.admin.exec(&format!("GRANT `{role}` TO {who}")).await;
    f.admin
        .exec(&format!("SET DEFAULT ROLE `{role}` FOR {who}"))
        .await;
    f.admin
        .exec(&format!(
            "ALTER USER {who} REQUIRE ISSUER '/CN=Rotor Test CA' AND SUBJECT '/CN=it''s app' AND CIPHER 'ECDHE-RSA-AES256-GCM-SHA384'"
        ))
        .await;
    let master = master_secret(&f).await;
    let mut session = db
        .engine()
        .connect(&master, "master")
        .await
        .expect("master login");
    let clone = format!("{}_clone", f.user);
    session
        .sync_alternate_user(&f.user, &clone, &new_password(), ClonePolicy::default())
        .await
        .expect("sync");
    let show = |user: String| {
        let admin = &f.admin;
        async move {
            admin
                .rows(&format!(
                    "SELECT CONCAT_WS('|', CAST(ssl_type AS CHAR), CAST(ssl_cipher AS CHAR), CAST(x509_issuer AS CHAR), CAST(x509_subject AS CHAR), default_role) FROM mysql.user WHERE User = '{user}'"
                ))
                .await
        }
    };
    let want = show(f.user.clone()).await;
    assert!(want[0].contains("/CN=it's app"), "{want:?}");
    assert_eq!(
        show(clone.clone()).await,
        want,
        "the clone mirrors REQUIRE and the default role"
    );
    // Aligned: a second sync changes nothing.
    let again = session
        .sync_alternate_user(&f.user, &clone, &new_password(), ClonePolicy::default())
        .await
        .expect("sync again");
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    drop(session);
    f.admin.exec(&format!("DROP ROLE `{role}`")).await;
}

async fn statement_waiting_on_a_lock(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_lock"),
        json!({}),
    )
    .await;
    let master = master_secret(&f).await;
    let engine = db.engine_with(rotor::engine::ConnectOptions {
        tls: rotor::engine::TlsSettings::with_ca_bundle(Some(env.ca.clone().into())),
        connect_timeout: std::time::Duration::from_millis(1500),
        ..rotor::engine::ConnectOptions::default()
    });
    let mut session = engine
        .connect(&master, "master")
        .await
        .expect("master login");
    let before = f.admin.stored_credential(&f.user).await;
    // Another administrator holds the account table; Rotor's SET PASSWORD must wait for it.
    // (Held briefly: other tests' account changes wait as long.)
    f.admin.exec("LOCK TABLES mysql.global_priv READ").await;
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(6),
        session.set_password(&f.user, &new_password()),
    )
    .await;
    let elapsed = started.elapsed();
    f.admin.exec("UNLOCK TABLES").await;
    let err = match result {
        Err(_) => panic!("set_password still waiting on the lock after 6 s"),
        Ok(Ok(())) => panic!("set_password cannot succeed while the table is locked"),
        Ok(Err(e)) => e,
    };
    println!(
        "lock wait ended after {elapsed:?} with {}: {err}",
        err.kind()
    );
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
    let text = err.to_string();
    // The server's own limit (below Rotor's bound) aborts and rolls back
    // the statement; either way the error is a retryable timeout.
    assert_eq!(err.kind(), "Timeout", "{text}");
    assert!(err.is_retryable(), "{text}");
    assert!(
        text.contains(&db.port().to_string()),
        "names the server: {text}"
    );
    assert_eq!(
        f.admin.stored_credential(&f.user).await,
        before,
        "nothing changed"
    );
}

/// The secret's writer names an unmarked `<victim>_clone` as the current
/// user: its alternate would be `<victim>` (say a DBA). Rotor must not
/// touch the victim.
async fn clone_named_current_user_does_not_take_over_base(env: TestEnv) {
    let db = maria(&env);
    let victim = unique("rotor_dba");
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &format!("{victim}_clone"),
        json!({}),
    )
    .await;
    f.admin.create_user(&victim, &new_password()).await;
    let before = f.admin.stored_credential(&victim).await;
    let grants_before = f
        .admin
        .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&victim)))
        .await;
    let (_, result) = create_then_set(&f).await;
    let err = result.expect_err("an unmarked current _clone must be refused");
    assert_eq!(err.kind(), "Refused", "{err}");
    assert_eq!(
        f.admin.stored_credential(&victim).await,
        before,
        "victim's password unchanged"
    );
    assert_eq!(
        f.admin
            .rows(&format!("SHOW GRANTS FOR {}", mysql_account(&victim)))
            .await,
        grants_before,
        "victim's grants unchanged"
    );
}

/// SHOW GRANTS of `user`@`%` as two accounts compare: the grantee written
/// out, the password hash cut off, the marker left out, sorted.
async fn grants_modulo_grantee(admin: &rotor_tests::Admin, user: &str) -> Vec<String> {
    let who = mysql_account(user);
    let mut lines: Vec<String> = admin
        .rows(&format!("SHOW GRANTS FOR {who}"))
        .await
        .into_iter()
        .filter(|l| !l.contains("rotor_alternate_marker"))
        .map(|l| {
            let l = l.replace(&who, "<grantee>");
            match l.find(" IDENTIFIED BY PASSWORD ") {
                Some(i) => l[..i].to_string(),
                None => l,
            }
        })
        .collect();
    lines.sort();
    lines
}

/// SHOW GRANTS writes `ALL PRIVILEGES` and column grants (`SELECT (`a`,
/// `b`)`) as single tokens: widening the template to ALL, narrowing it back,
/// and changing column grants must each leave the alternate with exactly
/// the template's grants (it used to lose SELECT/INSERT or everything).
async fn alternate_grants_equal_templates(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_all"),
        json!({}),
    )
    .await;
    let table = unique("rotor_cols");
    f.admin
        .exec(&format!(
            "CREATE TABLE rotor_test.`{table}` (a INT, b INT, c INT)"
        ))
        .await;
    let clone = format!("{}_clone", f.user);
    let rotator = f.rotator();
    let mut current = f.user.clone();
    let steps: [(&str, &[&str]); 5] = [
        ("SELECT on rotor_test.*", &[]),
        (
            "widened to ALL on rotor_test.*",
            &["GRANT ALL PRIVILEGES ON rotor_test.* TO {who}"],
        ),
        (
            "narrowed back to SELECT, INSERT",
            &[
                "REVOKE ALL PRIVILEGES ON rotor_test.* FROM {who}",
                "GRANT SELECT, INSERT ON rotor_test.* TO {who}",
            ],
        ),
        (
            "column grants",
            &["GRANT SELECT (a, b), UPDATE (c) ON rotor_test.{table} TO {who}"],
        ),
        (
            "column grants changed",
            &[
                "REVOKE SELECT (b), UPDATE (c) ON rotor_test.{table} FROM {who}",
                "GRANT INSERT (c) ON rotor_test.{table} TO {who}",
            ],
        ),
    ];
    for (what, statements) in steps {
        // The change is made on the current user: the next rotation's template.
        for sql in statements {
            f.admin
                .exec(
                    &sql.replace("{who}", &mysql_account(&current))
                        .replace("{table}", &format!("`{table}`")),
                )
                .await;
        }
        for round in 1..=2 {
            let (_, new) = f.rotate(&rotator).await;
            current = f.secret(&new).await.username;
            let alternate = if current == f.user { &clone } else { &f.user };
            let (want, have) = (
                grants_modulo_grantee(&f.admin, &current).await,
                grants_modulo_grantee(&f.admin, alternate).await,
            );
            assert_eq!(
                have, want,
                "{what}, rotation {round}: alternate {alternate} vs template {current}"
            );
        }
    }
    f.admin
        .exec(&format!("DROP TABLE rotor_test.`{table}`"))
        .await;
}

/// UPDATE on *.* covers the `mysql` schema: enough to change any account
/// (the master's included). Refused without the opt-in; nothing changes.
async fn global_write_privilege_refused(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_gw"),
        json!({}),
    )
    .await;
    f.admin
        .exec(&format!(
            "GRANT UPDATE ON *.* TO {}",
            mysql_account(&f.user)
        ))
        .await;
    let before = f.admin.stored_credential(&f.user).await;
    let (_, result) = create_then_set(&f).await;
    let err = result.expect_err("a template with global UPDATE must be refused");
    assert_eq!(err.kind(), "Refused", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("UPDATE") && text.contains("ROTOR_ALLOW_PRIVILEGED_CLONE"),
        "names the privilege and the opt-in: {text}"
    );
    assert_eq!(
        f.admin
            .users_starting_with(&format!("{}_clone", f.user))
            .await,
        0,
        "no clone created"
    );
    assert_eq!(f.admin.stored_credential(&f.user).await, before);
}

/// The session's server-side limits were set at connect (here 3.2 s); a
/// later statement gets less time from the Lambda deadline (here 1 s). The
/// server must give up first: Rotor reports a timeout, and after the lock
/// is released the statement has NOT landed.
async fn deadline_shorter_than_session_limit(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_dl"),
        json!({}),
    )
    .await;
    let master = master_secret(&f).await;
    let engine = db.engine_with(rotor::engine::ConnectOptions {
        tls: rotor::engine::TlsSettings::with_ca_bundle(Some(env.ca.clone().into())),
        connect_timeout: std::time::Duration::from_secs(4),
        ..rotor::engine::ConnectOptions::default()
    });
    let mut session = engine
        .connect(&master, "master")
        .await
        .expect("master login");
    let before = f.admin.stored_credential(&f.user).await;
    f.admin.exec("LOCK TABLES mysql.global_priv READ").await;
    let deadline = std::time::Instant::now()
        + rotor::deadline::REPORT_RESERVE
        + std::time::Duration::from_millis(1000);
    let started = std::time::Instant::now();
    let result = rotor::deadline::scope(
        Some(deadline),
        session.set_password(&f.user, &new_password()),
    )
    .await;
    let elapsed = started.elapsed();
    // Held a moment longer, then released: a statement the server still
    // runs would now land.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    f.admin.exec("UNLOCK TABLES").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = f.admin.stored_credential(&f.user).await;
    drop(session);
    let err = match result {
        Ok(()) => panic!("set_password cannot succeed while the table is locked"),
        Err(e) => e,
    };
    println!("ended after {elapsed:?} with {}: {err}", err.kind());
    assert_eq!(err.kind(), "Timeout", "{err}");
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(after, before, "the timed-out statement landed after all");
}

/// setSecret crashed after setting one host account of the alternate (here
/// the one a login from this machine matches); the other is an ed25519
/// account, whose hash Rotor cannot compare. The retry must not let one
/// login decide: both host accounts end with the pending password.
async fn retry_after_crash_between_host_accounts(env: TestEnv) {
    let db = maria(&env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_crash"),
        json!({}),
    )
    .await;
    add_loopback_account(&f.admin, &f.user).await;
    let rotator = f.rotator();
    // app -> app_clone: the next rotation's alternate is app, on two hosts.
    let (_, new) = f.rotate(&rotator).await;
    assert_ne!(f.secret(&new).await.username, f.user);
    f.admin
        .exec("INSTALL PLUGIN IF NOT EXISTS ed25519 SONAME 'auth_ed25519'")
        .await;
    f.admin
        .exec(&format!(
            "ALTER USER {} IDENTIFIED VIA ed25519 USING PASSWORD('old-Password-1')",
            mysql_account(&f.user)
        ))
        .await;
    let token = f.moto.start_rotation(&f.arn).await;
    f.step(&rotator, Step::CreateSecret, &token)
        .await
        .expect("createSecret");
    f.remember_values().await;
    let pending = f.secret(&token).await;
    assert_eq!(pending.username, f.user);
    let hash = rotor::engine::mysql::native_password_hash(pending.password.expose());
    // The crash: one host account already holds the pending password.
    f.admin
        .exec(&format!(
            "SET PASSWORD FOR {} = '{hash}'",
            rotor::engine::mysql::account(&f.user, "127.0.0.1")
        ))
        .await;
    let outcome = f
        .step(&rotator, Step::SetSecret, &token)
        .await
        .expect("setSecret retried");
    println!("retried setSecret: {outcome:?}");
    assert_eq!(
        f.admin.stored_credential(&f.user).await.as_deref(),
        Some(format!("%:{hash},127.0.0.1:{hash}").as_str()),
        "every host account holds the pending password"
    );
}
