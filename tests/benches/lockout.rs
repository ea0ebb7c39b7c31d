//! The lockout window, measured: a live application (`rotor_tests::probe`)
//! logs in every 5 ms with AWSCURRENT, re-reading it once on a refused
//! login, while Rotor rotates its secret 200 times (the service's four steps
//! back to back), for each engine and strategy.
//!
//! Prints, per engine and strategy: logins, logins refused at the first try
//! (a stale cached value), logins refused even after re-reading AWSCURRENT
//! (the application is locked out), and for single user the window from the
//! end of setSecret (the database has the new password) to AWSCURRENT's move,
//! median and maximum.
//!
//! `cargo bench -p rotor-tests --bench lockout` with scripts/test-env's
//! servers; `ROTOR_BENCH_LOCKOUT_ROTATIONS` (default 200) sets the count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rotor::{Rotator, Strategy};
use rotor_tests::probe::{AppProbe, ObservedStore, median_max, rotate_observed};
use rotor_tests::{Kind, MotoService, RotatedSecret, TestDb, unique};
use serde_json::json;

fn main() -> std::process::ExitCode {
    let env = match rotor_tests::bench_env("lockout") {
        Ok(env) => env,
        Err(exit) => return exit,
    };
    let rotations: usize = std::env::var("ROTOR_BENCH_LOCKOUT_ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "lockout window: {rotations} rotations per engine and strategy; the application logs in every 5 ms and re-reads AWSCURRENT once on a refused login"
    );
    println!(
        "{:<9} {:<18} {:>9} {:>8} {:>13} {:>15} {:>16} {:>13}",
        "engine",
        "strategy",
        "rotations",
        "logins",
        "refused-first",
        "refused-reread",
        "window-median-ms",
        "window-max-ms"
    );
    let mut failed = false;
    for kind in Kind::ALL {
        for strategy in [Strategy::SingleUser, Strategy::AlternatingUsers] {
            let db = TestDb::new(kind, &env);
            let (report, windows, took) = runtime.block_on(measure(&db, strategy, rotations));
            let window = match (strategy, median_max(&windows)) {
                (Strategy::SingleUser, Some((median, max))) => {
                    (format!("{median:.1}"), format!("{max:.1}"))
                }
                _ => ("none".into(), "none".into()),
            };
            println!(
                "{:<9} {:<18} {:>9} {:>8} {:>13} {:>15} {:>16} {:>13}   ({:.1} s; {} re-reads unanswered by the store)",
                kind.name(),
                strategy.name(),
                rotations,
                report.attempts,
                report.first_try_refused,
                report.failed_after_reread,
                window.0,
                window.1,
                took.as_secs_f64(),
                report.reread_failed
            );
            failed |= report.other_errors > 0
                || (strategy == Strategy::AlternatingUsers && report.failed_after_reread > 0);
        }
    }
    if failed {
        eprintln!("alternating users refused the application, or logins failed for another reason");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

async fn measure(
    db: &TestDb,
    strategy: Strategy,
    rotations: usize,
) -> (rotor_tests::probe::ProbeReport, Vec<Duration>, Duration) {
    let admin = db.admin().await;
    let moto = MotoService::new(&db.env);
    let user = unique("rotor_lockout");
    let secret = RotatedSecret::create(db, &admin, &moto, strategy, &user, json!({})).await;
    let store = Arc::new(ObservedStore::new(Arc::new(db.env.sm_store())));
    let rotator = Rotator::new(store.clone(), db.engine(), strategy, db.policy());
    let probe = AppProbe::start(
        db.engine(),
        db.env.sm_client(),
        secret.arn.clone(),
        Duration::from_millis(5),
    )
    .await;
    let started = Instant::now();
    let mut windows = Vec::with_capacity(rotations);
    for _ in 0..rotations {
        windows.push(rotate_observed(&rotator, &store, &moto, &secret.arn).await);
    }
    let report = probe.stop().await;
    let took = started.elapsed();
    // Leave the servers as they were.
    let mut users = vec![format!("{user}_clone"), user];
    users.extend(secret.master.iter().map(|(m, _)| m.clone()));
    for u in users {
        if let Err(e) = admin.drop_user(&u).await {
            eprintln!("cleanup: cannot drop {u}: {e}");
        }
    }
    (report, windows, took)
}
