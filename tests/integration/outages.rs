//! Outages and slowness (issue 10, item 4): every rotation step against a
//! database that refuses connections, one that accepts TCP and never
//! answers, a statement stuck behind a lock, and Secrets Manager answering
//! throttling errors and 5xx, or not answering at all (a loopback fault
//! proxy in front of moto; the
//! rotator's client retries as production's does).
//!
//! Each case runs the step under a short Lambda deadline and checks that it
//! fails with a retryable error before the deadline's report reserve, that
//! labels, versions and stored passwords are unchanged (and AWSCURRENT
//! still logs in), and that the "step failed" log line names the server,
//! the call and how long it waited.
//!
//! Cases that do not apply, and why:
//! - createSecret never talks to the database (the next username is checked
//!   against `USERNAME_CHARACTER_LIMIT` and the engine's limit locally; the
//!   server's own limit is read by setSecret on the master session): it is
//!   run against Secrets Manager faults only.
//! - testSecret and finishSecret only log in and run `SELECT 1`: no
//!   statement of theirs can wait on a lock. Their slowness is the server
//!   that never answers.
//! - The database faults use single-user rotation: the proxy gives the
//!   secret another port than the master's, which alternating users refuse
//!   (a master on another port of the same host is another server).

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use rotor::store::SecretsManagerStore;
use rotor::{Rotator, Step, Strategy};
use rotor_tests::faults::{DbFault, DbFaultProxy, SmFault, SmFaultProxy};
use rotor_tests::{Kind, TestDb, TestEnv, leaks, unique};
use serde_json::json;

use crate::rotation::{Fixture, fixture};
use crate::trial;

/// The invocation's deadline in these tests: the step gets this less
/// [`rotor::deadline::REPORT_RESERVE`].
const DEADLINE: Duration = Duration::from_millis(4000);
/// Scheduling slack on top of the bound (the bound is the guarantee).
const SLACK: Duration = Duration::from_millis(700);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    DbRefuses,
    DbNeverAnswers,
    DbLockWait,
    SmThrottling,
    SmInternalError,
    SmUnavailable,
    SmNeverAnswers,
    /// Only the step's write (PutSecretValue, UpdateSecretVersionStage) is
    /// throttled: every read before it succeeded.
    SmThrottlesTheWrite,
}

impl Fault {
    const ALL: [Fault; 8] = [
        Fault::DbRefuses,
        Fault::DbNeverAnswers,
        Fault::DbLockWait,
        Fault::SmThrottling,
        Fault::SmInternalError,
        Fault::SmUnavailable,
        Fault::SmNeverAnswers,
        Fault::SmThrottlesTheWrite,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::DbRefuses => "server_refuses_connections",
            Fault::DbNeverAnswers => "server_never_answers",
            Fault::DbLockWait => "statement_stuck_behind_a_lock",
            Fault::SmThrottling => "secrets_manager_throttling",
            Fault::SmInternalError => "secrets_manager_http_500",
            Fault::SmUnavailable => "secrets_manager_http_503_not_json",
            Fault::SmNeverAnswers => "secrets_manager_never_answers",
            Fault::SmThrottlesTheWrite => "secrets_manager_throttles_the_write",
        }
    }

    fn on_database(self) -> bool {
        matches!(
            self,
            Fault::DbRefuses | Fault::DbNeverAnswers | Fault::DbLockWait
        )
    }

    /// Whether this fault can meet this step (see the module comment).
    fn applies_to(self, step: Step) -> bool {
        match self {
            Fault::DbRefuses | Fault::DbNeverAnswers => step != Step::CreateSecret,
            Fault::DbLockWait => step == Step::SetSecret,
            Fault::SmThrottling
            | Fault::SmInternalError
            | Fault::SmUnavailable
            | Fault::SmNeverAnswers => true,
            Fault::SmThrottlesTheWrite => write_of(step).is_some(),
        }
    }
}

/// The Secrets Manager call that writes in `step`.
fn write_of(step: Step) -> Option<&'static str> {
    match step {
        Step::CreateSecret => Some("PutSecretValue"),
        Step::FinishSecret => Some("UpdateSecretVersionStage"),
        Step::SetSecret | Step::TestSecret => None,
    }
}

fn snake(step: Step) -> &'static str {
    match step {
        Step::CreateSecret => "create_secret",
        Step::SetSecret => "set_secret",
        Step::TestSecret => "test_secret",
        Step::FinishSecret => "finish_secret",
    }
}

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        for step in Step::ALL {
            for fault in Fault::ALL {
                if !fault.applies_to(step) {
                    continue;
                }
                t.push(trial(
                    format!(
                        "outages::{}::{}::{}",
                        kind.name(),
                        snake(step),
                        fault.name()
                    ),
                    env,
                    move |env| outage(TestDb::new(kind, &env), step, fault),
                ));
            }
        }
    }
    t
}

/// The database's address, for the proxy in front of it.
fn upstream(db: &TestDb) -> std::net::SocketAddr {
    format!("{}:{}", db.host(), db.port())
        .parse()
        .expect("the test database listens on an IP address")
}

/// Holds what a statement of setSecret must wait for, until dropped
/// (then released).
enum Held {
    PgRow(tokio::task::JoinHandle<()>),
    MariaDbTable,
}

async fn hold_lock(f: &Fixture) -> Held {
    match f.db.kind {
        Kind::Postgres => Held::PgRow(crate::safety::hold_role_row(&f.db.env, &f.user, 8).await),
        Kind::MariaDb => {
            // Another administrator holds the account table (briefly: other
            // tests' account changes on this server wait as long).
            f.admin.exec("LOCK TABLES mysql.global_priv READ").await;
            Held::MariaDbTable
        }
    }
}

async fn release(f: &Fixture, held: Held) {
    match held {
        Held::PgRow(handle) => handle.abort(),
        Held::MariaDbTable => f.admin.exec("UNLOCK TABLES").await,
    }
}

async fn outage(db: TestDb, step: Step, fault: Fault) {
    let db_proxy = DbFaultProxy::start(upstream(&db)).await;
    let sm_proxy = SmFaultProxy::start(&db.env.moto_url).await;
    let extra = if fault.on_database() {
        json!({"host": "127.0.0.1", "port": db_proxy.port})
    } else {
        json!({})
    };
    let f = fixture(&db, Strategy::SingleUser, &unique("rotor_outage"), extra).await;
    // The service starts a rotation; the steps before this one succeed.
    let healthy = f.rotator();
    let token = f.moto.start_rotation(&f.arn).await;
    for before in Step::ALL.into_iter().take_while(|s| *s != step) {
        f.step(&healthy, before, &token)
            .await
            .unwrap_or_else(|e| panic!("{before} before the outage: {e}"));
    }
    f.remember_values().await;
    let labels = f.labels().await;
    let versions = f.moto.all_values(&f.arn).await;
    let verifiers = f.verifiers().await;
    // The credentials the database accepts at this point of the rotation:
    // AWSCURRENT, or the pending ones once single-user setSecret has run.
    let working = if Step::ALL.iter().position(|s| *s == step) > Some(1) {
        f.secret(&token).await
    } else {
        f.secret(&f.current_version().await).await
    };
    assert!(f.logs_in(&working).await, "logs in before the outage");

    // A cold process (nothing remembered) whose client goes through the
    // Secrets Manager proxy with production's retries.
    let store =
        SecretsManagerStore::from_sdk_config(&db.env.sdk_config_production_at(&sm_proxy.url));
    let rotator = Rotator::new(
        Arc::new(store),
        db.engine(),
        Strategy::SingleUser,
        db.policy(),
    );
    let mut held = None;
    match fault {
        Fault::DbRefuses => db_proxy.set(DbFault::Refuse).await,
        Fault::DbNeverAnswers => db_proxy.set(DbFault::Hang).await,
        Fault::DbLockWait => held = Some(hold_lock(&f).await),
        Fault::SmThrottling => sm_proxy.set(SmFault::Throttle, None, 0),
        Fault::SmInternalError => sm_proxy.set(SmFault::InternalError, None, 0),
        Fault::SmUnavailable => sm_proxy.set(SmFault::Unavailable, None, 0),
        Fault::SmNeverAnswers => sm_proxy.set(SmFault::Hang, None, 0),
        Fault::SmThrottlesTheWrite => sm_proxy.set(SmFault::Throttle, write_of(step), 0),
    }
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        rotor::deadline::scope(Some(deadline), f.step(&rotator, step, &token)),
    )
    .await;
    let elapsed = started.elapsed();
    if let Some(held) = held {
        release(&f, held).await;
    }
    db_proxy.set(DbFault::None).await;
    sm_proxy.set(SmFault::None, None, 0);
    f.remember_values().await;

    let result =
        result.unwrap_or_else(|_| panic!("{step} still running 30 s into a {DEADLINE:?} deadline"));
    let err = match result {
        Ok(outcome) => panic!("{step} succeeded ({outcome:?}) during {fault:?}"),
        Err(e) => e,
    };
    println!(
        "{step} under {fault:?}: {} after {elapsed:?}: {err}",
        err.kind()
    );
    assert!(
        err.is_retryable(),
        "{step} under {fault:?} must fail retryably; got {}: {err}",
        err.kind()
    );
    let bound = DEADLINE - rotor::deadline::REPORT_RESERVE;
    assert!(
        elapsed <= bound + SLACK,
        "{step} under {fault:?} answered after {elapsed:?}, past its bound {bound:?} (deadline {DEADLINE:?} less the report reserve): {err}"
    );
    if fault.on_database() {
        // The log line's server is the one the secret names.
        assert!(
            db_proxy.port != db.port(),
            "the fault proxy is another port"
        );
    } else {
        let faulted = sm_proxy.calls().iter().filter(|(_, f)| *f).count();
        assert!(faulted > 0, "the proxy answered no call with the fault");
    }

    // Nothing changed, and AWSCURRENT still logs in.
    assert_eq!(
        f.labels().await,
        labels,
        "{step} under {fault:?} moved labels"
    );
    assert_eq!(
        f.moto.all_values(&f.arn).await.len(),
        versions.len(),
        "{step} under {fault:?} added a version"
    );
    assert_eq!(
        f.verifiers().await,
        verifiers,
        "{step} under {fault:?} changed a stored password"
    );
    assert!(
        f.logs_in(&working).await,
        "the credentials that logged in before the outage still do"
    );

    // The log line: which server, which call, how long it waited.
    let logs = leaks::captured();
    let line = logs
        .lines()
        .rev()
        .find(|l| l.contains("\"step failed\"") && l.contains(&token))
        .unwrap_or_else(|| panic!("no \"step failed\" log line for token {token}"));
    let server = if fault.on_database() {
        format!("127.0.0.1:{}", db_proxy.port)
    } else {
        sm_proxy.url.trim_start_matches("http://").to_string()
    };
    assert!(
        line.contains(&server),
        "the log line names the server {server}: {line}"
    );
    let calls: &[&str] = match fault {
        Fault::DbRefuses => &["TCP connect"],
        Fault::DbNeverAnswers => &["handshake"],
        Fault::DbLockWait => &["password"],
        Fault::SmThrottlesTheWrite => &[write_of(step).unwrap_or_default()],
        _ => &["DescribeSecret"],
    };
    assert!(
        calls.iter().any(|c| line.contains(c)),
        "the log line names the call ({calls:?}): {line}"
    );
    let waited = waited_ms(line).unwrap_or_else(|| {
        panic!("the log line says how long the call waited (\"… N ms\"): {line}")
    });
    if matches!(
        fault,
        Fault::DbNeverAnswers | Fault::DbLockWait | Fault::SmNeverAnswers
    ) {
        // The wait is most of the step: the figure must not be a bound
        // recomputed later (a fraction of what was waited).
        let elapsed_ms = elapsed.as_millis() as u64;
        assert!(
            waited * 2 >= elapsed_ms,
            "the log line says the call waited {waited} ms, but the step waited {elapsed_ms} ms on it: {line}"
        );
    }
}

/// The first "<number> ms" in the error text of a log line.
fn waited_ms(line: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let error = value.get("error")?.as_str()?;
    let words: Vec<&str> = error.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches([',', ';', ':', ')', '.']) == "ms")
        .and_then(|w| w[0].parse().ok())
}
