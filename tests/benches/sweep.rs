//! Sweep benchmark: how fast `expire-credentials` drops expired dynamic
//! users on the local password-checking PostgreSQL, and how many
//! connections it holds while doing so.
//!
//! Run: `eval "$(scripts/test-env)" && cargo bench -p rotor-tests --bench sweep`.
//! `ROTOR_BENCH_SWEEP_USERS` (10,000) users are created in bulk with expired
//! lease names, exactly as `issue` names them, each a member of the role's
//! group and joined to the master (as `issue` does); then one sweep per
//! concurrency setting in `ROTOR_BENCH_SWEEP_CONCURRENCY` (4) drops them.
//! Connections are counted by the server: `connection authorized` lines of
//! the master user in its log while the sweep runs, and the peak from
//! `pg_stat_activity`, sampled every 20 ms.

use std::time::{Duration, Instant};

use rotor::dynamic::sweep::SweepOptions;
use rotor::dynamic::{Caller, lease_username};
use rotor_tests::{Admin, Kind, TestDb, TestEnv, dynamic_role};
use serde_json::json;

fn main() {
    let env = match TestEnv::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let users: usize = std::env::var("ROTOR_BENCH_SWEEP_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let lanes: Vec<usize> = std::env::var("ROTOR_BENCH_SWEEP_CONCURRENCY")
        .unwrap_or_else(|_| "4".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let db = TestDb::new(Kind::Postgres, &env);
        let mut results = Vec::new();
        for concurrency in lanes {
            results.push(run(&db, users, concurrency).await);
        }
        println!("{}", json!({"bench": "sweep", "results": results}));
    });
}

async fn run(db: &TestDb, users: usize, concurrency: usize) -> serde_json::Value {
    let role = dynamic_role(db, json!({})).await;
    let Admin::Pg(admin) = &role.admin else {
        unreachable!()
    };
    let definition = role.dynamic.role(&role.name).await.expect("role");
    let master_value = role
        .dynamic
        .master_secret(&definition)
        .await
        .expect("master");
    let master = master_value.username.clone();
    // Bulk creation, 500 users per statement batch.
    let created = Instant::now();
    let expired_at = rotor::time::now() - 60;
    let names: Vec<String> = (0..users)
        .map(|_| lease_username(&definition.username_prefix, expired_at).expect("name"))
        .collect();
    // Marked as Rotor's, as `issue` does (the sweep drops nothing else).
    let marker = rotor::engine::LEASE_MARKER;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{marker}') THEN CREATE ROLE \"{marker}\" NOLOGIN; END IF; END $$"
        ))
        .await
        .expect("marker role");
    for chunk in names.chunks(500) {
        let mut sql = String::from("BEGIN;");
        for n in chunk {
            sql.push_str(&format!(
                "CREATE ROLE \"{n}\" LOGIN VALID UNTIL '{}' IN ROLE \"{marker}\", \"{}\"; GRANT \"{n}\" TO \"{master}\";",
                rotor::time::rfc3339(expired_at),
                role.group
            ));
        }
        sql.push_str("COMMIT;");
        admin.batch_execute(&sql).await.expect("bulk create");
    }
    let create_secs = created.elapsed().as_secs_f64();
    // Sample the master's connections while the sweep runs.
    let sampler_db = db.clone();
    let sampler_master = master.clone();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let admin = sampler_db.admin().await;
        let Admin::Pg(admin) = &admin else {
            unreachable!()
        };
        let mut peak = 0i64;
        for _ in 0..30_000 {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                    &[&sampler_master],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            peak = peak.max(n);
            if stop_rx.try_recv().is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    let log_start = std::fs::metadata(&db.env.pg_log)
        .map(|m| m.len())
        .unwrap_or(0);
    let caller = Caller {
        arn: "bench".into(),
        via: "cli",
    };
    let started = Instant::now();
    let report = role
        .dynamic
        .sweep(
            &SweepOptions {
                concurrency,
                ..SweepOptions::default()
            },
            &caller,
            None,
        )
        .await
        .expect("sweep");
    let secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let peak_sampled = sampler.await.unwrap_or(0);
    let log = std::fs::read(&db.env.pg_log).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[(log_start as usize).min(log.len())..]).into_owned();
    let authorized = log
        .lines()
        .filter(|l| l.contains("connection authorized") && l.contains(&format!("user={master} ")))
        .count();
    let dropped = report
        .actions
        .iter()
        .filter(|a| a.outcome == "done")
        .count();
    let remaining = role
        .admin
        .users_starting_with(&definition.user_prefix())
        .await;
    println!(
        "sweep of {users} expired users, concurrency {concurrency}: {dropped} dropped in {secs:.2} s = {:.0} users/s; failures {}; remaining {remaining}; master connections opened {authorized}, peak open {peak_sampled}; bulk creation took {create_secs:.1} s",
        dropped as f64 / secs,
        report.failures
    );
    json!({
        "users": users,
        "concurrency": concurrency,
        "dropped": dropped,
        "failures": report.failures,
        "remaining": remaining,
        "seconds": secs,
        "users_per_second": dropped as f64 / secs,
        "master_connections_opened": authorized,
        "peak_connections_sampled": peak_sampled,
    })
}
