//! A live application during rotation: [`AppProbe`] logs in every 5 ms with
//! AWSCURRENT as a caching client does (re-reading it once on a refused
//! login) while Rotor rotates the secret, steps driven back to back as the
//! service drives them. Alternating users must never refuse it after the
//! re-read; single user has a window (the database has the new password,
//! AWSCURRENT still the old one) whose length the rotation benchmark
//! (`cargo bench -p rotor-tests --bench lockout`) measures over 200
//! rotations. Here a few rotations prove the probe sees what it must.

use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use rotor::{Rotator, Strategy};
use rotor_tests::probe::{AppProbe, ObservedStore, rotate_observed};
use rotor_tests::{Kind, TestDb, TestEnv, unique};
use serde_json::json;

use crate::rotation::fixture;
use crate::trial;

const ROTATIONS: usize = 8;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        for strategy in [Strategy::SingleUser, Strategy::AlternatingUsers] {
            t.push(trial(
                format!(
                    "lockout::{}::{}::live_application_during_rotations",
                    kind.name(),
                    strategy.name().replace('-', "_")
                ),
                env,
                move |env| live_application(TestDb::new(kind, &env), strategy),
            ));
        }
    }
    t
}

async fn live_application(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_live"), json!({})).await;
    let store = Arc::new(ObservedStore::new(Arc::new(db.env.sm_store())));
    let rotator = Rotator::new(store.clone(), db.engine(), strategy, db.policy());
    let probe = AppProbe::start(
        db.engine(),
        db.env.sm_client(),
        f.arn.clone(),
        Duration::from_millis(5),
    )
    .await;
    let mut windows = Vec::new();
    for _ in 0..ROTATIONS {
        windows.push(rotate_observed(&rotator, &store, &f.moto, &f.arn).await);
        // Let the application log in between rotations too.
        let seen = probe.attempts();
        while probe.attempts() < seen + 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let report = probe.stop().await;
    f.remember_values().await;
    let window = match (strategy, rotor_tests::probe::median_max(&windows)) {
        (Strategy::SingleUser, Some((median, max))) => {
            format!(
                "window (end of setSecret to AWSCURRENT moved) median {median:.1} ms, max {max:.1} ms"
            )
        }
        _ => "no window".to_string(),
    };
    println!(
        "lockout: {} {}: {ROTATIONS} rotations, {} logins, {} refused at first try, {} refused after re-reading AWSCURRENT; {window}",
        db.kind.name(),
        strategy.name(),
        report.attempts,
        report.first_try_refused,
        report.failed_after_reread,
    );
    assert_eq!(
        report.other_errors, 0,
        "logins failed for another reason: {report:?}"
    );
    assert!(
        report.attempts > ROTATIONS as u64 * 3,
        "the probe barely ran: {report:?}"
    );
    if strategy == Strategy::AlternatingUsers {
        assert_eq!(
            report.failed_after_reread, 0,
            "alternating users locked the application out: {report:?}"
        );
    }
}
