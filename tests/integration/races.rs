//! Races (issue 10, item 3), each against the real servers with two or
//! more invocations running at once, as separate Lambda processes would
//! (one `Rotator` / `Dynamic` each, nothing shared but the servers):
//!
//! - two in-process rotations of one secret started together, two tokens;
//! - the same step invoked twice at once, for every step;
//! - `revoke-on-event` receiving a burst of events for one secret: one
//!   rotation, the others recorded as coalesced;
//! - the sweep dropping expired users while `issue-credential` creates
//!   users with the same prefix.
//!
//! In each case: no lockout, at most one winner, and a clear outcome for
//! the loser.

use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use rotor::dynamic::revoke::RevokeTarget;
use rotor::dynamic::sweep::SweepOptions;
use rotor::dynamic::{Caller, Dynamic};
use rotor::store::{SecretStore, SecretsManagerStore};
use rotor::{Rotator, Step, Strategy};
use rotor_tests::faults::SmFaultProxy;
use rotor_tests::{Kind, TestDb, TestEnv, dynamic_role, leaks, unique};
use serde_json::json;

use crate::rotation::{Fixture, assert_rotated, fixture};
use crate::trial;

const STRATEGIES: [Strategy; 2] = [Strategy::SingleUser, Strategy::AlternatingUsers];
/// Revocation events arriving at once for one secret.
const BURST: usize = 4;
/// Any one racing operation.
const BOUND: Duration = Duration::from_secs(60);

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        let k = kind.name();
        for strategy in STRATEGIES {
            let s = strategy.name().replace('-', "_");
            t.push(trial(
                format!("races::{k}::{s}::two_rotations_two_tokens"),
                env,
                move |env| two_rotations(TestDb::new(kind, &env), strategy),
            ));
            t.push(trial(
                format!("races::{k}::{s}::same_step_twice_at_once"),
                env,
                move |env| same_step_twice(TestDb::new(kind, &env), strategy),
            ));
            t.push(trial(
                format!("races::{k}::{s}::revoke_burst_rotates_once_and_coalesces_the_rest"),
                env,
                move |env| revoke_burst(TestDb::new(kind, &env), strategy),
            ));
        }
        t.push(trial(
            format!(
                "races::{k}::single_user::revoke_waiting_for_the_lock_ends_before_the_deadline"
            ),
            env,
            move |env| revoke_waits_within_deadline(TestDb::new(kind, &env)),
        ));
        t.push(trial(
            format!("races::{k}::dynamic::sweep_while_issuing_with_the_same_prefix"),
            env,
            move |env| sweep_while_issuing(TestDb::new(kind, &env)),
        ));
    }
    t
}

fn cli(n: usize) -> Caller {
    Caller {
        arn: format!("event:race-{n}"),
        via: "event",
    }
}

/// No lockout: AWSCURRENT logs in; with alternating users AWSPREVIOUS too.
async fn assert_no_lockout(f: &Fixture, context: &str) {
    f.remember_values().await;
    let labels = f.labels().await;
    let current = f.secret(&f.current_version().await).await;
    assert!(
        f.logs_in(&current).await,
        "{context}: AWSCURRENT does not log in (locked out): {labels:?}"
    );
    if f.strategy == Strategy::AlternatingUsers
        && let Some((previous, _)) = labels
            .iter()
            .find(|(_, s)| s.iter().any(|x| x == "AWSPREVIOUS"))
    {
        let previous = f.secret(previous).await;
        if previous.username != current.username {
            assert!(
                f.logs_in(&previous).await,
                "{context}: AWSPREVIOUS ({}) does not log in: {labels:?}",
                previous.username
            );
        }
    }
}

// ---- two rotations, two tokens ------------------------------------------------

async fn two_rotations(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_race2"), json!({})).await;
    // Prime alternating users (both users exist) so both races are alike.
    f.rotate(&f.rotator()).await;
    let before = f.current_version().await;
    // Two processes, each rotating in process (`rotor rotate`, a revocation):
    // both see no rotation in progress and make up a token each.
    let (a, b) = (f.rotator(), f.rotator());
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(BOUND, a.rotate(&f.arn)),
        tokio::time::timeout(BOUND, b.rotate(&f.arn)),
    );
    let results = [
        ra.expect("first rotation bounded"),
        rb.expect("second rotation bounded"),
    ];
    for (n, r) in results.iter().enumerate() {
        match r {
            Ok(report) => println!("rotation {n}: finished {}", report.token),
            Err(e) => println!("rotation {n}: {}: {e}", e.kind()),
        }
    }
    assert_no_lockout(&f, "after two racing rotations").await;
    let labels = f.labels().await;
    let current = f.current_version().await;
    let winners: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|r| r.token.as_str())
        .collect();
    assert!(
        !winners.is_empty() || current == before,
        "nobody reported success, yet AWSCURRENT moved: {labels:?}"
    );
    // Every rotation that reported success is in the record: its token is
    // AWSCURRENT or (the first of two in a row) AWSPREVIOUS.
    for token in &winners {
        let stages = labels.get(*token).cloned().unwrap_or_default();
        assert!(
            stages
                .iter()
                .any(|s| s == "AWSCURRENT" || s == "AWSPREVIOUS"),
            "rotation {token} reported success but holds no label: {labels:?}"
        );
    }
    // A loser says clearly what happened.
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e.kind(), "NotPending" | "UnknownToken" | "Timeout") || e.is_retryable(),
                "the losing rotation's error is not a clear 'another rotation took over': {}: {e}",
                e.kind()
            );
        }
    }
    // Nothing left half-done that blocks the next rotation.
    let (old, new) = f.rotate(&f.rotator()).await;
    assert_rotated(&f, &old, &new).await;
}

// ---- the same step twice at once ------------------------------------------------

async fn same_step_twice(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_twice_race"), json!({})).await;
    let old = f.current_version().await;
    let token = f.moto.start_rotation(&f.arn).await;
    // Through a proxy that keeps versions immutable as the real service
    // does (moto overwrites a version put twice with another value).
    let service = SmFaultProxy::start(&db.env.moto_url)
        .await
        .like_the_service();
    let via_service = || {
        Rotator::new(
            Arc::new(
                SecretsManagerStore::new(db.env.sm_client_at(&service.url))
                    .with_endpoint_name(&service.url),
            ),
            db.engine(),
            strategy,
            db.policy(),
        )
    };
    for step in Step::ALL {
        // The service retried (or a person replayed) the step while the
        // first invocation was still running: two cold processes.
        let (a, b) = (via_service(), via_service());
        let (ra, rb) = tokio::join!(
            tokio::time::timeout(BOUND, f.step(&a, step, &token)),
            tokio::time::timeout(BOUND, f.step(&b, step, &token)),
        );
        let results = [ra.expect("bounded"), rb.expect("bounded")];
        println!("{step}: {results:?}");
        let changed = results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|o| o.changed()))
            .count();
        assert!(
            changed <= 1 || step == Step::SetSecret && strategy == Strategy::SingleUser,
            "{step}: both invocations report a change: {results:?}"
        );
        for r in &results {
            if let Err(e) = r {
                assert!(
                    e.is_retryable(),
                    "{step}: the losing invocation's error is not retryable: {}: {e}",
                    e.kind()
                );
            }
        }
        // The service retries a failed step: it must then succeed.
        if results.iter().any(|r| r.is_err()) {
            f.step(&f.rotator(), step, &token)
                .await
                .unwrap_or_else(|e| panic!("{step} retried after the race: {e}"));
        }
        let single_user_mid_rotation =
            strategy == Strategy::SingleUser && matches!(step, Step::SetSecret | Step::TestSecret);
        if single_user_mid_rotation {
            // Single user, between setSecret and finishSecret: only the
            // pending password works, by design.
            assert!(
                f.logs_in(&f.secret(&token).await).await,
                "after {step} twice at once, the pending credentials log in"
            );
        } else {
            assert_no_lockout(&f, &format!("after {step} twice at once")).await;
        }
    }
    assert_rotated(&f, &old, &token).await;
}

// ---- a burst of revocation events for one secret ------------------------------------

async fn revoke_burst(db: TestDb, strategy: Strategy) {
    let f = fixture(&db, strategy, &unique("rotor_burst"), json!({})).await;
    f.rotate(&f.rotator()).await;
    let before = f.labels().await;
    let versions_before = f.moto.all_values(&f.arn).await.len();
    let dynamics: Vec<Dynamic> = (0..BURST)
        .map(|_| {
            let store: Arc<dyn SecretStore> = Arc::new(db.env.sm_store());
            Dynamic::new(store, rotor_tests::dynamic_options(&db))
        })
        .collect();
    let target = RevokeTarget::Secret(f.arn.clone());
    let mut burst = Vec::new();
    for (n, d) in dynamics.iter().enumerate() {
        let target = target.clone();
        burst.push(async move {
            tokio::time::timeout(BOUND, d.revoke(&target, false, &cli(n), None))
                .await
                .expect("revocation bounded")
        });
    }
    let reports = futures_join_all(burst).await;
    f.remember_values().await;
    let mut actions = Vec::new();
    for (n, r) in reports.iter().enumerate() {
        let report = r
            .as_ref()
            .unwrap_or_else(|e| panic!("revocation {n} failed: {e}"));
        assert!(
            report.failures.is_empty(),
            "revocation {n} failed: {:?}",
            report.failures
        );
        actions.extend(report.revoked.iter().map(|r| r.action.clone()));
    }
    println!("{strategy:?} burst of {BURST}: {actions:?}");
    let rotated = actions.iter().filter(|a| *a == "rotated").count();
    let coalesced = actions.iter().filter(|a| *a == "coalesced").count();
    assert_eq!(
        (rotated, coalesced),
        (1, BURST - 1),
        "one rotation, the rest coalesced: {actions:?}"
    );
    assert_eq!(
        f.moto.all_values(&f.arn).await.len(),
        versions_before + 1,
        "exactly one new version"
    );
    // The compromised credentials are refused; the new one works.
    let old_current = before
        .iter()
        .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
        .map(|(id, _)| id.clone())
        .expect("AWSCURRENT before");
    let compromised = f.secret(&old_current).await;
    let now = f.secret(&f.current_version().await).await;
    assert!(f.logs_in(&now).await, "the new credential logs in");
    assert!(
        !f.logs_in(&compromised).await,
        "the compromised credential is refused"
    );
    // The coalesced ones name the rotation that covered them, and the audit
    // records say "coalesced".
    for r in reports.iter().flatten() {
        for revoked in &r.revoked {
            if revoked.action == "coalesced" {
                assert_eq!(
                    revoked.new_version.as_deref(),
                    Some(f.current_version().await.as_str()),
                    "a coalesced revocation names the version that covered it"
                );
            }
        }
    }
    let audits = leaks::captured()
        .lines()
        .filter(|l| {
            l.contains("\"audit\"") && l.contains(&f.arn) && l.contains("\"action\":\"revoke\"")
        })
        .map(str::to_string)
        .collect::<Vec<_>>();
    let coalesced_audits = audits.iter().filter(|l| l.contains("coalesced")).count();
    assert_eq!(
        coalesced_audits,
        BURST - 1,
        "every coalesced revocation has an audit record saying so: {audits:#?}"
    );
}

/// Runs futures at once on this task (no extra crate for join_all).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

// ---- the sweep and issue-credential on one prefix -------------------------------------

async fn sweep_while_issuing(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let issue = |ttl: Option<u64>| {
        let r = &r;
        async move {
            r.dynamic
                .issue(&r.name, ttl, &cli(0), false)
                .await
                .inspect(|c| leaks::remember(c.password.expose()))
        }
    };
    // Leases that will have expired when the sweep runs.
    let mut expired = Vec::new();
    for _ in 0..3 {
        expired.push(issue(Some(1)).await.expect("issue a short lease"));
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Another process (its own `Dynamic`) sweeps while this one issues.
    let store: Arc<dyn SecretStore> = Arc::new(db.env.sm_store());
    let sweeper =
        Dynamic::new(store, rotor_tests::dynamic_options(&db)).with_roles_prefix(r.prefix.clone());
    let caller = Caller {
        arn: "schedule:expire-credentials".into(),
        via: "schedule",
    };
    let options = SweepOptions::default();
    let (swept, fresh) = tokio::join!(
        tokio::time::timeout(BOUND, sweeper.sweep(&options, &caller, None)),
        tokio::time::timeout(BOUND, async {
            let mut out = Vec::new();
            for _ in 0..3 {
                out.push(issue(None).await);
            }
            out
        }),
    );
    let swept = swept.expect("sweep bounded").expect("sweep");
    let fresh = fresh.expect("issues bounded");
    println!(
        "sweep: {} actions, {} failures; issues: {:?}",
        swept.actions.len(),
        swept.failures,
        fresh
            .iter()
            .map(|r| r
                .as_ref()
                .map(|c| c.username.clone())
                .map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(swept.failures, 0, "the sweep failed: {swept:?}");
    for c in &expired {
        assert_eq!(
            r.admin.users_starting_with(&c.username).await,
            0,
            "the expired lease {} was dropped",
            c.username
        );
    }
    for issued in &fresh {
        let c = match issued {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "an issue that lost the race must fail retryably: {}: {e}",
                    e.kind()
                );
                continue;
            }
        };
        let secret = rotor::DbSecret::parse(
            &rotor::SecretString::new(db.secret(&c.username, c.password.expose(), json!({}))),
            "dyn",
            "v",
            rotor::secret::Require::Connection,
        )
        .expect("parse");
        db.engine()
            .connect(&secret, "test")
            .await
            .unwrap_or_else(|e| panic!("the fresh lease {} must log in: {e}", c.username));
    }
    assert!(
        fresh.iter().any(|r| r.is_ok()),
        "at least one issue got through"
    );
}

// ---- a revocation waiting for the lock, in Lambda -----------------------------------------

/// The `revoke-on-event` handler (as the Lambda runtime calls it) while
/// another invocation holds the secret's rotation lock and does not let go:
/// it must end before the function's deadline with a clear error naming the
/// server, the wait and its bound, and change nothing.
async fn revoke_waits_within_deadline(db: TestDb) {
    let f = fixture(
        &db,
        Strategy::SingleUser,
        &unique("rotor_lockwait"),
        json!({}),
    )
    .await;
    let holder = f.rotator();
    let lock = holder
        .lock(&f.arn, Duration::from_secs(10))
        .await
        .expect("take the rotation lock")
        .expect("the lock's login works");
    let labels = f.labels().await;
    let versions = f.moto.all_values(&f.arn).await.len();
    let dynamic = Dynamic::new(
        Arc::new(db.env.sm_store()),
        rotor_tests::dynamic_options(&db),
    );
    let payload =
        json!({"source": "rotor", "detail-type": "Revoke Credential", "detail": {"secret": f.arn}});
    let deadline = Duration::from_millis(4000);
    let deadline_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + deadline.as_millis() as u64;
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        rotor::lambda::revoke_from_event(
            &dynamic,
            None,
            &Default::default(),
            &payload,
            deadline_ms,
        ),
    )
    .await
    .expect("the handler still waits 30 s into a 4 s deadline");
    let elapsed = started.elapsed();
    lock.release().await;
    let err = result.expect_err("the revocation cannot rotate while the lock is held");
    let text = err.to_string();
    println!("after {elapsed:?}: {}: {text}", err.kind());
    assert!(
        err.is_retryable(),
        "a revocation that only waited for the lock must fail retryably: {}: {text}",
        err.kind()
    );
    let bound = deadline - rotor::deadline::REPORT_RESERVE;
    assert!(
        elapsed <= bound + Duration::from_millis(700),
        "answered after {elapsed:?}, past the bound {bound:?}: {text}"
    );
    let server = format!("127.0.0.1:{}", db.port());
    assert!(
        text.contains(&server) && text.contains("wait for the lock") && text.contains(" ms"),
        "names the server, the wait and how long: {text}"
    );
    assert_eq!(f.labels().await, labels, "nothing was rotated");
    assert_eq!(f.moto.all_values(&f.arn).await.len(), versions);
    // Once the lock is free the same event revokes.
    let again = rotor::lambda::revoke_from_event(&dynamic, None, &Default::default(), &payload, 0)
        .await
        .expect("revocation after the lock was released");
    f.remember_values().await;
    assert_eq!(again["revoked"][0]["action"], "rotated", "{again}");
}
