//! What Rotor may drop: only the dynamic users it created. Users a DBA made
//! with names that look like leases survive the sweep and every revocation,
//! on the password-checking PostgreSQL and MariaDB.

use libtest_mimic::Trial;
use rotor::dynamic::revoke::RevokeTarget;
use rotor::dynamic::sweep::SweepOptions;
use rotor::dynamic::{Caller, lease_username};
use rotor_tests::{DynamicRole, Kind, TestDb, TestEnv, dynamic_role, leaks, new_password};
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
    }
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
    assert_eq!(report.failures, 0, "{report:?}");

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
