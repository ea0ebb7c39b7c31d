//! What Rotor may drop: only the dynamic users it created. Users a DBA made
//! with names that look like leases survive the sweep and every revocation,
//! on the password-checking PostgreSQL and MariaDB.

use libtest_mimic::Trial;
use rotor::dynamic::revoke::RevokeTarget;
use rotor::dynamic::sweep::SweepOptions;
use rotor::dynamic::{Caller, lease_username};
use rotor_tests::{
    DynamicRole, Kind, TestDb, TestEnv, dynamic_role, leaks, new_password, pg_ident, unique,
};
use serde_json::json;

use crate::trial;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        let k = kind.name();
        t.push(trial(
            format!("dynamic_scope::{k}::lookalike_users_survive_sweep_and_revoke"),
            env,
            move |env| lookalikes_survive(TestDb::new(kind, &env)),
        ));
        t.push(trial(
            format!("dynamic_scope::{k}::another_holder_of_the_marker_admin_option_refuses_issue"),
            env,
            move |env| marker_admin_squatted(TestDb::new(kind, &env)),
        ));
    }
    t.push(trial(
        "dynamic_scope::postgres::roles_sharing_a_username_prefix_never_act_on_each_others_leases",
        env,
        |env| colliding_prefixes(TestDb::new(Kind::Postgres, &env)),
    ));
    t.push(trial(
        "dynamic_scope::postgres::dropped_lease_leaves_owner_role_no_escalation_path",
        env,
        |env| no_escalation_through_owner_role(TestDb::new(Kind::Postgres, &env)),
    ));
    t.push(trial(
        "dynamic_scope::postgres::privileged_owner_role_set_after_issue_blocks_every_drop",
        env,
        |env| privileged_owner_role_blocks_drops(TestDb::new(Kind::Postgres, &env)),
    ));
    t
}

fn cli() -> Caller {
    Caller {
        arn: "cli:test".into(),
        via: "cli",
    }
}

/// Whether a user of exactly this name exists (names here are plain
/// letters, digits and underscores, so they can be inlined).
async fn exists(r: &DynamicRole, user: &str) -> bool {
    assert!(user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let sql = match r.db.kind {
        Kind::Postgres => format!("SELECT rolname::text FROM pg_roles WHERE rolname = '{user}'"),
        Kind::MariaDb => format!("SELECT User FROM mysql.user WHERE User = '{user}'"),
    };
    !r.admin.rows(&sql).await.is_empty()
}

async fn drop_by_hand(r: &DynamicRole, user: &str) {
    let sql = match r.db.kind {
        Kind::Postgres => format!("DROP ROLE IF EXISTS \"{user}\""),
        Kind::MariaDb => format!("DROP USER IF EXISTS '{user}'@'%'"),
    };
    r.admin.exec(&sql).await;
}

async fn lookalikes_survive(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let role = r.dynamic.role(&r.name).await.expect("role");
    let p = role.username_prefix.clone();
    let now = rotor::time::now();
    let expired_shape = lease_username(&p, now - 3600).expect("name");
    let canonical_expiry = expired_shape
        .rsplit('_')
        .nth(1)
        .expect("expiry")
        .to_string();
    // Users a DBA made: none carries Rotor's marker.
    let lookalikes = vec![
        // Exactly a lease's shape, expired and unexpired.
        expired_shape.clone(),
        lease_username(&p, now + 3600).expect("name"),
        // "2024" reads as base 36: "expired" in 1970.
        format!("v_{p}_2024_backup"),
        // A non-canonical expiry (leading zero).
        format!("v_{p}_0{canonical_expiry}_abcdef"),
        // Another prefix that starts with the role's.
        format!("v_{p}_x_{canonical_expiry}_abcdef"),
    ];
    for user in &lookalikes {
        r.admin.create_user(user, &new_password()).await;
    }
    // Real leases: one that will have expired at sweep time, one that will not.
    let issue = |ttl: u64| {
        let (dynamic, name) = (&r.dynamic, r.name.clone());
        async move {
            let c = dynamic
                .issue(&name, Some(ttl), &cli(), false)
                .await
                .unwrap_or_else(|e| panic!("issue: {e}"));
            leaks::remember(c.password.expose());
            c
        }
    };
    let expiring = issue(60).await;
    let lasting = issue(3000).await;

    let later = SweepOptions {
        now: now + 120,
        ..SweepOptions::default()
    };
    let report = r.dynamic.sweep(&later, &cli(), None).await.expect("sweep");
    assert!(
        !exists(&r, &expiring.username).await,
        "the expired lease is dropped: {report:?}"
    );
    assert!(exists(&r, &lasting.username).await);
    for user in &lookalikes {
        assert!(
            exists(&r, user).await,
            "the sweep dropped {user}, a user Rotor never created: {report:?}"
        );
        assert!(
            !report.actions.iter().any(|a| &a.target == user),
            "the sweep acted on {user}: {report:?}"
        );
    }
    // Only this role's actions: the sweep also visits every tagged secret
    // in the shared moto, which other tests own.
    assert!(
        report
            .actions
            .iter()
            .filter(|a| a.reason.contains(&r.name))
            .all(|a| a.outcome == "done"),
        "{report:?}"
    );

    let by_role = r
        .dynamic
        .revoke(&RevokeTarget::Role(r.name.clone()), false, &cli(), None)
        .await
        .expect("revoke role");
    assert!(
        !exists(&r, &lasting.username).await,
        "revoking the role drops its leases: {by_role:?}"
    );
    for user in &lookalikes {
        assert!(
            exists(&r, user).await,
            "revoking the role dropped {user}, a user Rotor never created: {by_role:?}"
        );
    }

    // Named one by one (as an event would), they are refused, not dropped.
    for user in &lookalikes[..3] {
        let by_user = r
            .dynamic
            .revoke(&RevokeTarget::User(user.clone()), false, &cli(), None)
            .await
            .expect("revoke user");
        assert!(
            exists(&r, user).await,
            "revoking {user} by name dropped a user Rotor never created: {by_user:?}"
        );
        assert_eq!(by_user.failures.len(), 1, "{by_user:?}");
        assert!(
            by_user.failures[0].1.contains("marker"),
            "the refusal says why: {by_user:?}"
        );
    }
    for user in &lookalikes {
        drop_by_hand(&r, user).await;
    }
}

/// A plain login on the test PostgreSQL.
async fn pg_login(db: &TestDb, user: &str, password: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(db.host())
        .port(db.port())
        .user(user)
        .password(password)
        .dbname(db.dbname());
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("login as {user}: {e}"));
    tokio::spawn(conn);
    client
}

/// PostgreSQL 15: when a lease is dropped, `REASSIGN OWNED` hands what it
/// owns to `owner_role`. A SECURITY DEFINER function or a view the lease
/// made over a table it cannot read would then run with `owner_role`'s
/// rights for anyone (functions are executable by PUBLIC by default; the
/// lease granted the view to PUBLIC), and a PUBLIC grant it made on its own
/// table would stay. None of that may survive the drop; the lease's own
/// table does, owned by `owner_role`.
async fn no_escalation_through_owner_role(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let admin = r.admin.pg();
    let secret_table = unique("rotor_secret");
    let (function, view, own_table) = (
        unique("rotor_fn"),
        unique("rotor_view"),
        unique("rotor_mig"),
    );
    let (st, f, v, t) = (
        pg_ident(&secret_table),
        pg_ident(&function),
        pg_ident(&view),
        pg_ident(&own_table),
    );
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.{st} (v text); INSERT INTO public.{st} VALUES ('owner only'); ALTER TABLE public.{st} OWNER TO {o}; GRANT USAGE, CREATE ON SCHEMA public TO {o}",
            o = pg_ident(&r.owner)
        ))
        .await
        .expect("owner's table");
    let c = r
        .dynamic
        .issue(&r.name, Some(600), &cli(), false)
        .await
        .expect("issue");
    leaks::remember(c.password.expose());
    let lease = pg_login(&db, &c.username, c.password.expose()).await;
    lease
        .batch_execute(&format!(
            "CREATE FUNCTION public.{f}() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS $$ SELECT count(*) FROM public.{st} $$;
             CREATE VIEW public.{v} AS SELECT * FROM public.{st};
             GRANT SELECT ON public.{v} TO PUBLIC;
             CREATE TABLE public.{t} (id int);
             GRANT ALL ON public.{t} TO PUBLIC;"
        ))
        .await
        .expect("the lease creates its objects");
    assert!(
        lease
            .query_one(&format!("SELECT public.{f}()"), &[])
            .await
            .is_err(),
        "the lease itself cannot read the owner's table"
    );
    drop(lease);
    // Anyone: a login with nothing granted.
    let probe = unique("rotor_probe");
    let probe_pw = new_password();
    r.admin.create_user(&probe, &probe_pw).await;

    let report = r
        .dynamic
        .revoke(&RevokeTarget::User(c.username.clone()), false, &cli(), None)
        .await
        .expect("revoke");
    assert!(report.failures.is_empty(), "{report:?}");

    let anyone = pg_login(&db, &probe, probe_pw.expose()).await;
    let through_function = anyone.query_one(&format!("SELECT public.{f}()"), &[]).await;
    assert!(
        through_function.is_err(),
        "after the drop, anyone reads owner_role's table through the lease's SECURITY DEFINER function: {:?}; report: {report:?}",
        through_function.map(|r| r.get::<_, i64>(0))
    );
    let through_view = anyone
        .query(&format!("SELECT v FROM public.{v}"), &[])
        .await;
    assert!(
        through_view.is_err(),
        "after the drop, anyone reads owner_role's table through the lease's view: {:?}",
        through_view.map(|rows| rows.len())
    );
    let public_write = anyone
        .batch_execute(&format!("INSERT INTO public.{t} VALUES (1)"))
        .await;
    assert!(
        public_write.is_err(),
        "the lease's PUBLIC grant on its table survived the drop"
    );
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = $1",
            &[&own_table],
        )
        .await
        .expect("the lease's table is kept")
        .get(0);
    assert_eq!(
        owner, r.owner,
        "the lease's table now belongs to owner_role"
    );
    let evidence = serde_json::to_string(&report.revoked[0]).expect("json");
    for name in [&function, &view] {
        assert!(
            evidence.contains(name.as_str()),
            "the revocation evidence names {name}: {evidence}"
        );
    }
    drop(anyone);
    admin
        .batch_execute(&format!(
            "DROP FUNCTION IF EXISTS public.{f}(); DROP VIEW IF EXISTS public.{v}; DROP TABLE public.{t}; DROP TABLE public.{st}; DROP ROLE {}",
            pg_ident(&probe)
        ))
        .await
        .expect("cleanup");
}

/// Review of issue 17: `owner_role` was checked only at issue. A role edited
/// afterwards to name a privileged owner would have every later drop (the
/// sweep, a revoke, `rotor exec`) `REASSIGN OWNED` the leases' objects to
/// it. Every drop that hands objects over checks the role first: refused,
/// counted as a failure naming the role, and nothing is touched (the lease
/// still logs in and still owns its table).
async fn privileged_owner_role_blocks_drops(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let role = r.dynamic.role(&r.name).await.expect("role");
    let master = r.dynamic.master_secret(&role).await.expect("master");
    // The master may act as the privileged role, so REASSIGN to it would work.
    let privileged = "pg_signal_backend";
    r.admin
        .exec(&format!(
            "GRANT {privileged} TO {}",
            pg_ident(&master.username)
        ))
        .await;
    let expiring = r
        .dynamic
        .issue(&r.name, Some(3), &cli(), false)
        .await
        .expect("issue");
    leaks::remember(expiring.password.expose());
    let table = unique("rotor_leasetab");
    let lease = pg_login(&db, &expiring.username, expiring.password.expose()).await;
    lease
        .batch_execute(&format!(
            "CREATE TABLE public.{} (id int)",
            pg_ident(&table)
        ))
        .await
        .expect("the lease creates a table");
    drop(lease);
    let current = r
        .dynamic
        .issue(&r.name, Some(600), &cli(), false)
        .await
        .expect("issue");
    leaks::remember(current.password.expose());
    // The role is edited after the leases were issued.
    let value = r
        .moto
        .client
        .get_secret_value()
        .secret_id(&r.name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .expect("role value")
        .secret_string
        .expect("string");
    let mut edited: serde_json::Value = serde_json::from_str(&value).expect("json");
    edited["owner_role"] = json!(privileged);
    r.moto
        .client
        .put_secret_value()
        .secret_id(&r.name)
        .secret_string(edited.to_string())
        .send()
        .await
        .expect("edit the role");
    // A function that reads the role every time, as after a cold start.
    let dynamic = rotor::dynamic::Dynamic::new(
        std::sync::Arc::new(rotor::store::SecretsManagerStore::new(db.env.sm_client())),
        rotor_tests::dynamic_options(&db),
    )
    .with_roles_prefix(r.prefix.clone())
    .with_role_cache_ttl(std::time::Duration::ZERO);
    let expires_at = rotor::dynamic::parse_lease(&expiring.username)
        .expect("lease")
        .expires_at;
    while rotor::time::now() <= expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let refused = |what: &str, error: &str| {
        assert!(
            error.contains(&r.name) && error.contains(privileged) && error.contains("owner_role"),
            "{what}: the failure names the role and its privileged owner_role: {error}"
        );
    };
    let swept = dynamic
        .sweep(&SweepOptions::default(), &cli(), None)
        .await
        .expect("sweep");
    let action = swept
        .actions
        .iter()
        .find(|a| a.target == expiring.username)
        .unwrap_or_else(|| panic!("the sweep reports {}: {swept:?}", expiring.username));
    assert_eq!(
        action.outcome, "failed",
        "the sweep dropped a lease handing its objects to a privileged owner_role: {swept:?}"
    );
    refused("sweep", action.error.as_deref().unwrap_or(""));
    assert!(swept.failures >= 1, "{swept:?}");
    for target in [
        RevokeTarget::User(expiring.username.clone()),
        RevokeTarget::Role(r.name.clone()),
    ] {
        let report = dynamic
            .revoke(&target, false, &cli(), None)
            .await
            .unwrap_or_else(|e| panic!("{target:?}: {e}"));
        assert!(
            report.revoked.is_empty() && !report.failures.is_empty(),
            "{target:?}: a revoke went ahead with a privileged owner_role: {report:?}"
        );
        for (_, error) in &report.failures {
            refused(&format!("{target:?}"), error);
        }
    }
    for user in [&expiring.username, &current.username] {
        assert!(exists(&r, user).await, "{user} was dropped");
        let can_login = r
            .admin
            .rows(&format!(
                "SELECT rolcanlogin::text FROM pg_roles WHERE rolname = '{user}'"
            ))
            .await;
        assert_eq!(
            can_login,
            ["true"],
            "{user} was touched (NOLOGIN) before the refusal"
        );
    }
    let owner = r
        .admin
        .rows(&format!(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = '{table}'"
        ))
        .await;
    assert_eq!(
        owner,
        std::slice::from_ref(&expiring.username),
        "the lease's table was reassigned"
    );
    // Put the role back; now the drops go through.
    r.admin
        .exec(&format!("DROP TABLE public.{}", pg_ident(&table)))
        .await;
    r.moto
        .client
        .put_secret_value()
        .secret_id(&r.name)
        .secret_string(value)
        .send()
        .await
        .expect("restore the role");
    let report = dynamic
        .revoke(&RevokeTarget::Role(r.name.clone()), false, &cli(), None)
        .await
        .expect("revoke");
    assert!(
        report.failures.is_empty() && report.revoked.len() == 2,
        "{report:?}"
    );
}

/// Review of issue 17: whoever holds ADMIN OPTION on `rotor_lease` can mark
/// any user as a lease (a CREATEROLE user who created the role before Rotor
/// did, on PostgreSQL 16+ or MariaDB). The sweep and revocations would then
/// drop users of its choosing and hand their objects to `owner_role`, and
/// it could fill the caps. Issuing refuses while anyone but the master,
/// superusers and the deployment's trusted masters holds it.
///
/// The holder is this test's own (`rotor_squat_…`); the shared fixture's
/// options trust that name so that other tests issuing on the same server
/// meanwhile are not refused. This test's function trusts only the test
/// masters, as a deployment would.
async fn marker_admin_squatted(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    // The marker exists once a lease was issued.
    let first = r
        .dynamic
        .issue(&r.name, Some(600), &cli(), false)
        .await
        .expect("issue before anyone else holds the marker");
    leaks::remember(first.password.expose());
    let holder = unique("rotor_squat");
    let marker = rotor::engine::LEASE_MARKER;
    let (grant, drop_holder) = match db.kind {
        Kind::Postgres => (
            format!(
                "CREATE ROLE {h} NOLOGIN; GRANT {marker} TO {h} WITH ADMIN OPTION",
                h = pg_ident(&holder)
            ),
            format!("DROP ROLE IF EXISTS {}", pg_ident(&holder)),
        ),
        Kind::MariaDb => (
            format!(
                "CREATE USER '{holder}'@'%' ACCOUNT LOCK; GRANT {marker} TO '{holder}'@'%' WITH ADMIN OPTION"
            ),
            format!("DROP USER IF EXISTS '{holder}'@'%'"),
        ),
    };
    for sql in grant.split("; ") {
        r.admin.exec(sql).await;
    }
    let mut options = rotor_tests::dynamic_options(&db);
    options.lease_marker_admins = vec!["rotor_dmaster_*".into()];
    let dynamic = rotor::dynamic::Dynamic::new(
        std::sync::Arc::new(rotor::store::SecretsManagerStore::new(db.env.sm_client())),
        options,
    )
    .with_roles_prefix(r.prefix.clone());
    let squatted = dynamic.issue(&r.name, Some(600), &cli(), false).await;
    // Restore the server before judging: nothing else may see the holder.
    r.admin.exec(&drop_holder).await;
    let after = dynamic.issue(&r.name, Some(600), &cli(), false).await;
    let refusal = match squatted {
        Ok(c) => {
            leaks::remember(c.password.expose());
            panic!(
                "issued {} while {holder} holds ADMIN OPTION on {marker} and could mark any user as a lease",
                c.username
            );
        }
        Err(e) => e,
    };
    assert_eq!(refusal.kind(), "Refused", "{refusal}");
    let text = refusal.to_string();
    assert!(
        text.contains(&holder) && text.contains(marker) && text.contains("ADMIN OPTION"),
        "the refusal names the holder, the marker and what to revoke: {text}"
    );
    let after = after.expect("issue once the holder is gone");
    leaks::remember(after.password.expose());
    let prefix = r.dynamic.role(&r.name).await.expect("role").user_prefix();
    assert_eq!(
        r.admin.users_starting_with(&prefix).await,
        2,
        "the refused issue created nothing"
    );
    r.dynamic
        .revoke(&RevokeTarget::Role(r.name.clone()), false, &cli(), None)
        .await
        .expect("cleanup");
}

/// Two roles whose leases carry the same username prefix: revoking or
/// sweeping one must not touch the other's leases.
async fn colliding_prefixes(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let c = r
        .dynamic
        .issue(&r.name, Some(600), &cli(), false)
        .await
        .expect("issue");
    leaks::remember(c.password.expose());
    // A second role under the same roles prefix, spelled to share the
    // first one's username prefix.
    let value = r
        .moto
        .client
        .get_secret_value()
        .secret_id(&r.name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .expect("role value")
        .secret_string
        .expect("role string");
    let mut other: serde_json::Value = serde_json::from_str(&value).expect("role json");
    let first_prefix = c
        .username
        .strip_prefix("v_")
        .and_then(|rest| rest.split('_').next())
        .expect("lease prefix")
        .to_string();
    other["username_prefix"] = json!(first_prefix);
    let other_name = format!("{}other", r.name);
    r.moto.create_secret(&other_name, &other.to_string()).await;
    let err = r
        .dynamic
        .revoke(&RevokeTarget::Role(other_name.clone()), false, &cli(), None)
        .await
        .expect_err("revoking a role whose prefix another role shares must be refused");
    assert!(err.to_string().contains("username_prefix"), "{err}");
    assert!(
        exists(&r, &c.username).await,
        "the first role's lease survives a revocation of the other role"
    );
    // Past the lease's expiry: a sweep that took either role for the other
    // would drop it (and hand its objects to the wrong owner_role).
    let later = SweepOptions {
        now: rotor::time::now() + 1200,
        ..SweepOptions::default()
    };
    let report = r.dynamic.sweep(&later, &cli(), None).await.expect("sweep");
    for name in [&r.name, &other_name] {
        assert!(
            report.invalid_roles.iter().any(|(n, _)| n == name),
            "{name} is a sweep failure (the alarm fires): {report:?}"
        );
    }
    assert!(
        exists(&r, &c.username).await,
        "the sweep drops nothing of theirs: {report:?}"
    );
}
