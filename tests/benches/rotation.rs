//! # Rotation benchmark: full rotations against the local servers
//!
//! ```text
//! eval "$(scripts/test-env)" && cargo bench -p rotor-tests --bench rotation
//! ```
//!
//! Covers PostgreSQL (single user and alternating users) and MySQL, as the
//! test MariaDB with TLS (single user), with the same figures for each.
//! Prints plain text, then one JSON summary as the last line of stdout
//! (PostgreSQL at the top level, MySQL under `"mysql"`).
//! Settings: `ROTOR_BENCH_ROTATIONS` (warm rotations per strategy, default 20),
//! `ROTOR_BENCH_COLD_RUNS` (fresh processes per function, default 10; 0 skips
//! the cold start and its release build),
//! `ROTOR_BENCH_BUILD=1` (run `cargo build --release -p postgres-single-user`
//! and `-p mysql-single-user` even when the binaries exist). Run without
//! `--bench` (as `cargo test --benches` does) it only says how to run it.
//!
//! ## What is measured, and how
//!
//! 1. **Warm rotations**: PostgreSQL single user and alternating users (a
//!    master secret whose role has CREATEROLE, named by the rotated secret's
//!    `masterarn`), MySQL single user.
//!    One `Rotator` handles every step of every rotation, as one warm Lambda
//!    process does. Each rotation is driven like the service drives it:
//!    `MotoService::start_rotation` (RotateSecret with the stub Lambda; the
//!    service's call, neither timed nor counted), then `Rotator::handle` for
//!    createSecret, setSecret, testSecret and finishSecret. The process's first
//!    rotation (which also creates the `_clone` user) is a warm-up reported
//!    apart; the next N are timed per step and per rotation (a rotation's
//!    time is the sum of its four steps: the service's RotateSecret and the
//!    bench's own checks in between are not in it).
//! 2. **Secrets Manager calls** are counted outside the code under test: the
//!    rotator's client talks to moto through a small HTTP/1.1 proxy in this
//!    file that records each request's `X-Amz-Target`. The service side talks
//!    to moto directly and is not counted. The warm timings include the
//!    proxy's hop; its cost per call is measured and printed.
//! 3. **Database connections** are counted by the server, from the lines it
//!    writes to its log during each step, attributed to this run's unique
//!    user names, so other clients of the server do not count.
//!    PostgreSQL (`$ROTOR_TEST_PG_LOG`): `connection received`, `connection
//!    authorized: user=…`, `password authentication failed for user "…"`,
//!    tied together by backend pid. MariaDB's general log
//!    (`$ROTOR_TEST_MARIADB_LOG`): every connection attempt is a thread with
//!    a `Connect  user@host on db using …` line, and a refused one adds
//!    `Connect  Access denied for user '…'@'…'`, tied together by thread id.
//! 4. **Cold start** of each release function binary (`postgres-single-user`,
//!    `mysql-single-user`; built with `cargo build --release -p <package>`
//!    when missing). Each run spawns a fresh process against a fake Lambda
//!    Runtime API in this file:
//!    spawn → first `GET …/invocation/next` ("ready"), then the four step
//!    events of a freshly staged rotation, until the fourth response. The
//!    process's stdout/stderr must not contain any password of the secret.
//!    Each process is killed after its run. One more cold rotation, untimed,
//!    points the function at the counting proxy to count its Secrets Manager
//!    calls (a real rotation, days after the last, always runs cold).
//!
//! The machine's load average is printed at the start and the end: other
//! builds on the same cores move every figure.
//!
//! Everything listens and connects on 127.0.0.1 only. Every loop has a fixed
//! bound and every wait a timeout; the servers in this file are tasks that are
//! aborted when their owner is dropped, so the bench ends by itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rotor::store::SecretsManagerStore;
use rotor::{Outcome, RotationEvent, Rotator, Step, Strategy};
use rotor_tests::{Admin, Kind, MotoService, TestDb, TestEnv, create_role, new_password, unique};
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// Any single network read, write or connect.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A keep-alive connection waiting for its next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// One rotation step in process, or one service-side call.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// One cold run: spawn, four events, four responses.
const COLD_RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// A clean `cargo build --release -p <function>` (8–11 min here).
const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// Bounds for the little servers in this file.
const MAX_CONNECTIONS: usize = 100_000;
const MAX_REQUESTS_PER_CONNECTION: usize = 10_000;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// DescribeSecret calls timed directly and through the proxy.
const CALIBRATION_CALLS: usize = 30;

const SM_CALL_TARGET: f64 = 10.0;
const DB_CONNECTION_TARGET: f64 = 2.0;

/// Alternating users log in once more, with AWSCURRENT, before the master
/// acts (the confused-deputy check); that one login is allowed on top.
fn db_connection_target(strategy: Strategy) -> f64 {
    match strategy {
        Strategy::SingleUser => DB_CONNECTION_TARGET,
        Strategy::AlternatingUsers => DB_CONNECTION_TARGET + 1.0,
    }
}

fn main() -> ExitCode {
    let env = match rotor_tests::bench_env("rotation") {
        Ok(env) => env,
        Err(exit) => return exit,
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rotation bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let summary = runtime.block_on(run(env, config));
    println!("{summary}");
    ExitCode::SUCCESS
}

struct Config {
    rotations: usize,
    cold_runs: usize,
    force_build: bool,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        Ok(Config {
            rotations: count_from_env("ROTOR_BENCH_ROTATIONS", 20, 1000)?,
            // 0 skips the cold start (no release build).
            cold_runs: match std::env::var("ROTOR_BENCH_COLD_RUNS") {
                Ok(v) if v.trim() == "0" => 0,
                _ => count_from_env("ROTOR_BENCH_COLD_RUNS", 10, 200)?,
            },
            force_build: std::env::var("ROTOR_BENCH_BUILD").is_ok_and(|v| v == "1"),
        })
    }
}

fn count_from_env(name: &str, default: usize, max: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name}={v:?}: expected a whole number from 1 to {max}"
            )),
        },
    }
}

async fn run(env: TestEnv, config: Config) -> Value {
    let mut pg = Server::open(Kind::Postgres, &env).await;
    let mut my = Server::open(Kind::MariaDb, &env).await;
    println!(
        "Rotor rotation benchmark (PostgreSQL {} at {}:{}, MariaDB {} at {}:{}, Secrets Manager {})",
        pg.version,
        pg.db.host(),
        pg.db.port(),
        my.version,
        my.db.host(),
        my.db.port(),
        env.moto_url
    );
    println!(
        "warm rotations per strategy: {} (ROTOR_BENCH_ROTATIONS), cold runs per function: {} (ROTOR_BENCH_COLD_RUNS)",
        config.rotations, config.cold_runs
    );
    println!("load average at start: {}", rotor_tests::load_average());
    let service = MotoService::new(&env);
    let proxy = SmProxy::start(&env.moto_url).await;
    let mut cleanup = Cleanup::default();

    // PostgreSQL.
    let single = single_user_subject(&pg, &service, &mut cleanup, "su").await;
    let calibration = proxy_overhead(&env, &proxy, &single.arn).await;
    let single = warm(&mut pg, &service, &proxy, &single, config.rotations).await;
    let alternating = alternating_subject(&pg, &service, &mut cleanup).await;
    let alternating = warm(&mut pg, &service, &proxy, &alternating, config.rotations).await;
    let cold = cold_start(&mut pg, &service, &proxy, &mut cleanup, &config).await;

    // MySQL (the test MariaDB).
    let my_single = single_user_subject(&my, &service, &mut cleanup, "my_su").await;
    let my_single = warm(&mut my, &service, &proxy, &my_single, config.rotations).await;
    let my_cold = cold_start(&mut my, &service, &proxy, &mut cleanup, &config).await;

    cleanup.run(&[&pg, &my], &service).await;

    let targets_met = [&single, &alternating, &cold, &my_single, &my_cold]
        .iter()
        .all(|w| w["targets_met"] == json!(true));
    println!();
    println!(
        "targets (≤ {SM_CALL_TARGET} Secrets Manager calls and ≤ {DB_CONNECTION_TARGET} authorized database connections per rotation, warm and cold, PostgreSQL and MySQL): {}",
        if targets_met { "met" } else { "NOT met" }
    );
    println!("load average at the end: {}", rotor_tests::load_average());
    json!({
        "bench": "rotation",
        "warm_rotations": config.rotations,
        "cold_runs": config.cold_runs,
        "proxy_overhead_ms_per_call": calibration,
        "server_version": pg.version,
        "warm": { "single-user": single, "alternating-users": alternating },
        "cold": cold,
        "mysql": {
            "server_version": my.version,
            "warm": { "single-user": my_single },
            "cold": my_cold,
        },
        "targets": {
            "sm_calls_per_rotation_max": SM_CALL_TARGET,
            "db_connections_per_rotation_max": DB_CONNECTION_TARGET,
            "met": targets_met,
        },
    })
}

/// Awaits `fut` for at most [`STEP_TIMEOUT`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP_TIMEOUT:?}"))
}

// ---- servers, users and secrets ---------------------------------------------

/// A database server under test: its settings, an administrator session
/// and its log.
struct Server {
    db: TestDb,
    admin: Admin,
    log: ServerLog,
    /// What the server reports as its version.
    version: String,
}

impl Server {
    async fn open(kind: Kind, env: &TestEnv) -> Server {
        let db = TestDb::new(kind, env);
        let admin = bounded(
            &format!("administrator login to the test {}", server_name(kind)),
            db.admin(),
        )
        .await;
        let sql = match kind {
            Kind::Postgres => "SHOW server_version",
            Kind::MariaDb => "SELECT VERSION()",
        };
        let version = bounded("the server's version", admin.rows(sql))
            .await
            .concat();
        let log = ServerLog::at_end(kind, db.statement_log());
        Server {
            db,
            admin,
            log,
            version,
        }
    }

    /// The function package that rotates single-user secrets on this server.
    fn single_user_function(&self) -> &'static str {
        match self.db.kind {
            Kind::Postgres => "postgres-single-user",
            Kind::MariaDb => "mysql-single-user",
        }
    }
}

fn server_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "PostgreSQL",
        Kind::MariaDb => "MySQL (MariaDB)",
    }
}

/// A secret to rotate and the users whose logins count as its connections.
struct Subject {
    server: Kind,
    strategy: Strategy,
    arn: String,
    /// (kind shown in reports, user name).
    users: Vec<(String, String)>,
}

/// What the bench created, dropped again at the end.
#[derive(Default)]
struct Cleanup {
    /// Dropped in this order.
    users: Vec<(Kind, String)>,
    secrets: Vec<String>,
}

impl Cleanup {
    async fn run(&self, servers: &[&Server], service: &MotoService) {
        for (kind, user) in &self.users {
            let Some(server) = servers.iter().find(|s| s.db.kind == *kind) else {
                continue;
            };
            if let Err(e) = bounded("DROP USER", server.admin.drop_user(user)).await {
                eprintln!(
                    "cleanup: cannot drop {} user {user}: {e}",
                    server_name(*kind)
                );
            }
        }
        for arn in &self.secrets {
            let delete = service
                .client
                .delete_secret()
                .secret_id(arn)
                .force_delete_without_recovery(true)
                .send();
            if let Err(e) = bounded("DeleteSecret", delete).await {
                eprintln!("cleanup: cannot delete secret {arn}: {e:?}");
            }
        }
    }
}

async fn single_user_subject(
    server: &Server,
    service: &MotoService,
    cleanup: &mut Cleanup,
    tag: &str,
) -> Subject {
    let user = unique(&format!("rotor_bench_{tag}"));
    let password = new_password();
    bounded("CREATE USER", server.admin.create_user(&user, &password)).await;
    cleanup.users.push((server.db.kind, user.clone()));
    let value = server.db.secret(&user, password.expose(), json!({}));
    let arn = bounded(
        "CreateSecret",
        service.create_secret(&unique(&format!("rotor-bench-{tag}")), &value),
    )
    .await;
    cleanup.secrets.push(arn.clone());
    Subject {
        server: server.db.kind,
        strategy: Strategy::SingleUser,
        arn,
        users: vec![("user".into(), user)],
    }
}

/// PostgreSQL only: a master role with CREATEROLE.
async fn alternating_subject(
    server: &Server,
    service: &MotoService,
    cleanup: &mut Cleanup,
) -> Subject {
    let admin = server.admin.pg();
    let master = unique("rotor_bench_master");
    let master_password = new_password();
    bounded(
        "CREATE ROLE",
        create_role(admin, &master, &master_password, "CREATEROLE"),
    )
    .await;
    let master_value = server
        .db
        .secret(&master, master_password.expose(), json!({}));
    let master_arn = bounded(
        "CreateSecret",
        service.create_secret(&unique("rotor-bench-master"), &master_value),
    )
    .await;

    let user = unique("rotor_bench_alt");
    let clone = format!("{user}{}", rotor::strategy::CLONE_SUFFIX);
    let password = new_password();
    bounded("CREATE ROLE", create_role(admin, &user, &password, "")).await;
    let value = server
        .db
        .secret(&user, password.expose(), json!({ "masterarn": master_arn }));
    let arn = bounded(
        "CreateSecret",
        service.create_secret(&unique("rotor-bench-alt"), &value),
    )
    .await;

    // The clone is a member of the user: drop it first.
    let kind = server.db.kind;
    cleanup.users.extend([
        (kind, clone.clone()),
        (kind, user.clone()),
        (kind, master.clone()),
    ]);
    cleanup.secrets.extend([arn.clone(), master_arn]);
    Subject {
        server: kind,
        strategy: Strategy::AlternatingUsers,
        arn,
        users: vec![
            ("user".into(), user),
            ("user".into(), clone),
            ("master".into(), master),
        ],
    }
}

// ---- warm rotations ----------------------------------------------------------

struct StepSample {
    ms: f64,
    outcome: Outcome,
    /// `X-Amz-Target` of each Secrets Manager call, in order.
    sm_calls: Vec<String>,
    db: DbCounts,
}

struct RotationSample {
    ms: f64,
    steps: Vec<StepSample>,
}

impl RotationSample {
    fn sm_total(&self) -> usize {
        self.steps.iter().map(|s| s.sm_calls.len()).sum()
    }

    fn db(&self) -> DbCounts {
        let mut total = DbCounts::default();
        for step in &self.steps {
            total.add(&step.db);
        }
        total
    }
}

fn expected_outcome(step: Step, outcome: Outcome) -> bool {
    matches!(
        (step, outcome),
        (Step::CreateSecret, Outcome::Created)
            | (Step::SetSecret, Outcome::PasswordSet | Outcome::UserCreated)
            | (Step::TestSecret, Outcome::Tested)
            | (Step::FinishSecret, Outcome::Finished)
    )
}

/// The rotator `TestDb::rotator` builds, with its Secrets Manager client
/// going through the counting proxy.
fn rotator_via(db: &TestDb, proxy: &SmProxy, strategy: Strategy) -> Rotator {
    let store = Arc::new(SecretsManagerStore::new(db.env.sm_client_at(&proxy.url)));
    Rotator::new(store, db.engine(), strategy, db.policy())
        .with_rds(Arc::new(rotor::rds::RdsApi::new(db.env.rds_client())))
}

/// One full rotation, driven as the service drives it.
async fn rotate_once(
    rotator: &Rotator,
    service: &MotoService,
    proxy: &SmProxy,
    log: &mut ServerLog,
    subject: &Subject,
) -> RotationSample {
    let token = bounded(
        "RotateSecret (service side)",
        service.start_rotation(&subject.arn),
    )
    .await;
    log.skip();
    let mut steps = Vec::with_capacity(Step::ALL.len());
    for step in Step::ALL {
        let event = RotationEvent {
            step: step.as_str().to_string(),
            secret_id: subject.arn.clone(),
            token: token.clone(),
            rotation_token: None,
        };
        let calls_before = proxy.count();
        let started = Instant::now();
        let outcome = tokio::time::timeout(STEP_TIMEOUT, rotator.handle(&event))
            .await
            .unwrap_or_else(|_| panic!("{step} did not finish within {STEP_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{step} of {} failed: {e}", subject.arn));
        let ms = millis(started.elapsed());
        assert!(
            expected_outcome(step, outcome),
            "{step} of {} returned {outcome:?}",
            subject.arn
        );
        steps.push(StepSample {
            ms,
            outcome,
            sm_calls: proxy.calls_since(calls_before),
            db: log.connections(&subject.users),
        });
    }
    finish_like_service(service, &subject.arn, &token).await;
    RotationSample {
        ms: steps.iter().map(|s| s.ms).sum(),
        steps,
    }
}

/// Checks that the token is AWSCURRENT and, as the real service does after
/// finishSecret, takes AWSPENDING off it if the function left it there.
async fn finish_like_service(service: &MotoService, arn: &str, token: &str) {
    let labels = bounded("DescribeSecret (service side)", service.labels(arn)).await;
    let stages = labels.get(token).unwrap_or_else(|| {
        panic!("version {token} of {arn} has no label after finishSecret: {labels:?}")
    });
    assert!(
        stages.iter().any(|s| s == "AWSCURRENT"),
        "version {token} of {arn} is not AWSCURRENT after finishSecret: {labels:?}"
    );
    if stages.iter().any(|s| s == "AWSPENDING") {
        let remove = service
            .client
            .update_secret_version_stage()
            .secret_id(arn)
            .version_stage("AWSPENDING")
            .remove_from_version_id(token)
            .send();
        bounded("UpdateSecretVersionStage (service side)", remove)
            .await
            .unwrap_or_else(|e| panic!("remove AWSPENDING from {token} of {arn}: {e:?}"));
    }
}

async fn warm(
    server: &mut Server,
    service: &MotoService,
    proxy: &SmProxy,
    subject: &Subject,
    rotations: usize,
) -> Value {
    let rotator = rotator_via(&server.db, proxy, subject.strategy);
    let log = &mut server.log;
    let warmup = rotate_once(&rotator, service, proxy, log, subject).await;
    let mut samples = Vec::with_capacity(rotations);
    for _ in 0..rotations {
        samples.push(rotate_once(&rotator, service, proxy, log, subject).await);
    }
    report_warm(subject, &warmup, &samples)
}

/// Median time of a DescribeSecret straight to moto and through the proxy.
async fn proxy_overhead(env: &TestEnv, proxy: &SmProxy, arn: &str) -> Value {
    let direct = env.sm_client();
    let proxied = env.sm_client_at(&proxy.url);
    let (mut d, mut p) = (Vec::new(), Vec::new());
    for i in 0..CALIBRATION_CALLS {
        // Alternate which goes first.
        let mut pair = [(&direct, &mut d), (&proxied, &mut p)];
        if i % 2 == 1 {
            pair.reverse();
        }
        for (client, times) in pair {
            let started = Instant::now();
            bounded(
                "DescribeSecret (calibration)",
                client.describe_secret().secret_id(arn).send(),
            )
            .await
            .unwrap_or_else(|e| panic!("DescribeSecret {arn} (calibration): {e:?}"));
            times.push(millis(started.elapsed()));
        }
    }
    let (d, p) = (Stats::of(&d), Stats::of(&p));
    println!();
    println!(
        "Secrets Manager call (DescribeSecret, median of {CALIBRATION_CALLS}): {:.2} ms direct to moto, {:.2} ms through the counting proxy ({:+.2} ms per call in the warm figures)",
        d.median,
        p.median,
        p.median - d.median
    );
    json!({ "direct": round3(d.median), "proxied": round3(p.median), "added": round3(p.median - d.median) })
}

// ---- statistics and reports ------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Stats {
    n: usize,
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Stats {
                n,
                median: f64::NAN,
                p90: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank.
        let p90 = v[((n as f64 * 0.9).ceil() as usize).clamp(1, n) - 1];
        Stats {
            n,
            median,
            p90,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "median": round3(self.median),
            "p90": round3(self.p90),
            "min": round3(self.min),
            "max": round3(self.max),
        })
    }

    /// A count: "4", or "4 [3..5]" when it varies.
    fn count_text(&self) -> String {
        if self.min == self.max {
            num(self.median)
        } else {
            format!(
                "{} [{}..{}]",
                num(self.median),
                num(self.min),
                num(self.max)
            )
        }
    }

    fn count_json(&self) -> Value {
        json!({ "median": round3(self.median), "min": round3(self.min), "max": round3(self.max) })
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn print_time_header() {
    println!("  wall time (ms)          n    median       p90       min       max");
}

fn print_time_row(label: &str, s: &Stats) {
    println!(
        "  {label:<20} {:>4} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        s.n, s.median, s.p90, s.min, s.max
    );
}

/// "DescribeSecret" from "secretsmanager.DescribeSecret".
fn operation_name(target: &str) -> &str {
    target.strip_prefix("secretsmanager.").unwrap_or(target)
}

fn count_ops<'a>(calls: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, usize> {
    let mut ops = BTreeMap::new();
    for call in calls {
        *ops.entry(operation_name(call).to_string()).or_default() += 1;
    }
    ops
}

/// Per-rotation counts of each operation, over all samples.
fn op_stats<'a>(
    per_rotation: impl Iterator<Item = BTreeMap<String, usize>> + 'a,
) -> BTreeMap<String, Stats> {
    let rows: Vec<BTreeMap<String, usize>> = per_rotation.collect();
    let names: BTreeSet<&String> = rows.iter().flat_map(|r| r.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let v: Vec<f64> = rows
                .iter()
                .map(|r| r.get(name).copied().unwrap_or(0) as f64)
                .collect();
            (name.clone(), Stats::of(&v))
        })
        .collect()
}

fn report_warm(subject: &Subject, warmup: &RotationSample, samples: &[RotationSample]) -> Value {
    let strategy = subject.strategy.name();
    let user_list: Vec<String> = subject
        .users
        .iter()
        .map(|(kind, name)| format!("{kind} {name}"))
        .collect();
    println!();
    println!(
        "== Warm rotations, {} {strategy}: {} measured in one warm Rotator (after 1 warm-up rotation)",
        server_name(subject.server),
        samples.len()
    );
    println!("   secret {}; users: {}", subject.arn, user_list.join(", "));
    print_time_header();
    let mut steps_json = Map::new();
    for (i, step) in Step::ALL.iter().enumerate() {
        let s = Stats::of(&samples.iter().map(|r| r.steps[i].ms).collect::<Vec<_>>());
        print_time_row(step.as_str(), &s);
        steps_json.insert(step.as_str().into(), s.json());
    }
    let rotation = Stats::of(&samples.iter().map(|r| r.ms).collect::<Vec<_>>());
    print_time_row("rotation (sum of 4)", &rotation);
    let warmup_steps: Vec<String> = Step::ALL
        .iter()
        .zip(&warmup.steps)
        .map(|(step, s)| format!("{step} {:.1} ({})", s.ms, s.outcome.as_str()))
        .collect();
    println!(
        "  warm-up (first rotation of the process, not above): {:.2} ms = {}",
        warmup.ms,
        warmup_steps.join(", ")
    );

    // Secrets Manager.
    let totals = Stats::of(
        &samples
            .iter()
            .map(|r| r.sm_total() as f64)
            .collect::<Vec<_>>(),
    );
    let by_op = op_stats(
        samples
            .iter()
            .map(|r| count_ops(r.steps.iter().flat_map(|s| &s.sm_calls))),
    );
    let sm_met = totals.max <= SM_CALL_TARGET;
    println!("  Secrets Manager calls per rotation, counted by the proxy (median [min..max]):");
    for (op, s) in &by_op {
        println!("    {op:<26} {}", s.count_text());
    }
    println!(
        "    {:<26} {}   target ≤ {SM_CALL_TARGET}: {}   (warm-up: {})",
        "total",
        totals.count_text(),
        if sm_met { "met" } else { "NOT met" },
        warmup.sm_total()
    );
    let mut sm_by_step = Map::new();
    for (i, step) in Step::ALL.iter().enumerate() {
        let ops = op_stats(samples.iter().map(|r| count_ops(&r.steps[i].sm_calls)));
        let text: Vec<String> = ops
            .iter()
            .map(|(op, s)| format!("{op} {}", s.count_text()))
            .collect();
        println!(
            "      {:<14} {}",
            step.as_str(),
            if text.is_empty() {
                "-".into()
            } else {
                text.join(", ")
            }
        );
        sm_by_step.insert(
            step.as_str().into(),
            ops.iter()
                .map(|(op, s)| (op.clone(), json!(round3(s.median))))
                .collect::<Map<_, _>>()
                .into(),
        );
    }

    // Database.
    let dbs: Vec<DbCounts> = samples.iter().map(RotationSample::db).collect();
    let authorized = Stats::of(&dbs.iter().map(|d| d.authorized as f64).collect::<Vec<_>>());
    let failed = Stats::of(&dbs.iter().map(|d| d.failed as f64).collect::<Vec<_>>());
    let received = Stats::of(&dbs.iter().map(|d| d.received as f64).collect::<Vec<_>>());
    let db_target = db_connection_target(subject.strategy);
    let db_met = authorized.max <= db_target;
    let warmup_db = warmup.db();
    println!("  Database connections per rotation, from the server log (median [min..max]):");
    println!(
        "    {:<26} {}   target ≤ {db_target}: {}   (warm-up: {})",
        "authorized logins",
        authorized.count_text(),
        if db_met { "met" } else { "NOT met" },
        warmup_db.authorized
    );
    println!(
        "    {:<26} {}   (warm-up: {})",
        "failed logins",
        failed.count_text(),
        warmup_db.failed
    );
    println!(
        "    {:<26} {}   (warm-up: {})",
        received_label(subject.server),
        received.count_text(),
        warmup_db.received
    );
    let mut db_by_step = Map::new();
    for (i, step) in Step::ALL.iter().enumerate() {
        let a = Stats::of(
            &samples
                .iter()
                .map(|r| r.steps[i].db.authorized as f64)
                .collect::<Vec<_>>(),
        );
        let f = Stats::of(
            &samples
                .iter()
                .map(|r| r.steps[i].db.failed as f64)
                .collect::<Vec<_>>(),
        );
        let mut kinds: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for r in samples {
            for (kind, (ok, bad)) in &r.steps[i].db.by_kind {
                let entry = kinds.entry(kind.clone()).or_default();
                entry.0.push(*ok as f64);
                entry.1.push(*bad as f64);
            }
        }
        let detail: Vec<String> = kinds
            .iter()
            .map(|(kind, (ok, bad))| {
                // Steps without any line for this kind count as zero.
                let pad = |v: &Vec<f64>| {
                    let mut v = v.clone();
                    v.resize(samples.len(), 0.0);
                    Stats::of(&v)
                };
                format!(
                    "{kind}: {} ok, {} failed",
                    pad(ok).count_text(),
                    pad(bad).count_text()
                )
            })
            .collect();
        println!(
            "      {:<14} authorized {}, failed {}{}",
            step.as_str(),
            a.count_text(),
            f.count_text(),
            if detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", detail.join("; "))
            }
        );
        db_by_step.insert(
            step.as_str().into(),
            json!({ "authorized": round3(a.median), "failed": round3(f.median) }),
        );
    }

    json!({
        "engine": subject.server.name(),
        "strategy": strategy,
        "rotations": samples.len(),
        "step_ms": steps_json,
        "rotation_ms": rotation.json(),
        "warmup_rotation_ms": round3(warmup.ms),
        "sm_calls_per_rotation": {
            "total": totals.count_json(),
            "by_operation": by_op.iter().map(|(op, s)| (op.clone(), s.count_json())).collect::<Map<_, _>>(),
            "by_step_median": sm_by_step,
            "warmup_total": warmup.sm_total(),
        },
        "db_per_rotation": {
            "authorized": authorized.count_json(),
            "failed_logins": failed.count_json(),
            "received": received.count_json(),
            "by_step_median": db_by_step,
            "warmup": { "authorized": warmup_db.authorized, "failed_logins": warmup_db.failed, "received": warmup_db.received },
        },
        "targets_met": sm_met && db_met,
    })
}

// ---- a minimal HTTP/1.1 reader ----------------------------------------------

/// One HTTP/1.1 message as read from the wire.
struct Message {
    start_line: String,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    /// The body without chunked framing.
    body: Vec<u8>,
    /// Exactly the bytes read, to relay unchanged.
    raw: Vec<u8>,
    /// A response without length that ended when the peer closed.
    close_delimited: bool,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.close_delimited
            || self.start_line.starts_with("HTTP/1.0")
            || self.start_line.ends_with("HTTP/1.0")
            || self
                .header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    fn status(&self) -> Option<u16> {
        self.start_line.split_whitespace().nth(1)?.parse().ok()
    }

    /// A 1xx response, followed by the real one.
    fn is_interim(&self) -> bool {
        self.status().is_some_and(|s| (100..200).contains(&s))
    }
}

#[derive(Clone, Copy)]
enum MessageKind {
    Request,
    Response { to_head: bool },
}

/// A TCP stream with a read buffer (tokio's `net` feature only: no io-util).
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads what is available (waiting at most `wait`); 0 means closed.
    async fn fill(&mut self, wait: Duration) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        let read = async {
            loop {
                self.stream.readable().await?;
                match self.stream.try_read(&mut chunk) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let n = tokio::time::timeout(wait, read)
            .await
            .map_err(|_| format!("no data within {wait:?}"))?
            .map_err(|e| format!("read: {e}"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn fill_to(&mut self, len: usize) -> Result<(), String> {
        while self.buf.len() < len {
            if self.fill(IO_TIMEOUT).await? == 0 {
                return Err("connection closed inside a message".into());
            }
        }
        Ok(())
    }

    /// The position just after the next CRLF at or after `from`.
    async fn line_end(&mut self, from: usize) -> Result<usize, String> {
        loop {
            if let Some(i) = find(&self.buf[from..], b"\r\n") {
                return Ok(from + i + 2);
            }
            if self.buf.len() - from > MAX_HEAD_BYTES {
                return Err("line too long".into());
            }
            if self.fill(IO_TIMEOUT).await? == 0 {
                return Err("connection closed inside a message".into());
            }
        }
    }

    /// Reads one message. `Ok(None)`: the peer closed, or stayed silent for
    /// `idle`, before sending any byte of it.
    async fn read_message(
        &mut self,
        kind: MessageKind,
        idle: Duration,
    ) -> Result<Option<Message>, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err("message head too long".into());
            }
            let empty = self.buf.is_empty();
            match self.fill(if empty { idle } else { IO_TIMEOUT }).await {
                Ok(0) | Err(_) if empty => return Ok(None),
                Ok(0) => return Err("connection closed inside a message head".into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end - 4])
            .map_err(|_| "message head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let start_line = lines.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let chunked =
            get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = get("content-length")
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {v:?}"))
            })
            .transpose()?;
        let bodyless = match kind {
            MessageKind::Request => false,
            MessageKind::Response { to_head } => {
                let status: u16 = start_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                to_head || (100..200).contains(&status) || status == 204 || status == 304
            }
        };
        let mut body = Vec::new();
        let mut close_delimited = false;
        let end = if bodyless {
            head_end
        } else if chunked {
            let mut pos = head_end;
            loop {
                let eol = self.line_end(pos).await?;
                let size_line = String::from_utf8_lossy(&self.buf[pos..eol - 2]).to_string();
                let size_hex = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| format!("bad chunk size {size_line:?}"))?;
                pos = eol;
                if size == 0 {
                    // Trailers, then an empty line.
                    for _ in 0..1000 {
                        let eol = self.line_end(pos).await?;
                        let empty = eol - pos == 2;
                        pos = eol;
                        if empty {
                            break;
                        }
                    }
                    break pos;
                }
                if body.len() + size > MAX_BODY_BYTES {
                    return Err("body too large".into());
                }
                self.fill_to(pos + size + 2).await?;
                body.extend_from_slice(&self.buf[pos..pos + size]);
                pos += size + 2;
            }
        } else if let Some(n) = length {
            if n > MAX_BODY_BYTES {
                return Err("body too large".into());
            }
            self.fill_to(head_end + n).await?;
            body.extend_from_slice(&self.buf[head_end..head_end + n]);
            head_end + n
        } else if matches!(kind, MessageKind::Request) {
            head_end
        } else {
            // A response that ends when the server closes.
            close_delimited = true;
            while self.fill(IO_TIMEOUT).await? != 0 {
                if self.buf.len() > MAX_BODY_BYTES {
                    return Err("body too large".into());
                }
            }
            body.extend_from_slice(&self.buf[head_end..]);
            self.buf.len()
        };
        let raw = self.buf.drain(..end).collect();
        Ok(Some(Message {
            start_line,
            headers,
            body,
            raw,
            close_delimited,
        }))
    }

    async fn write_all(&mut self, mut data: &[u8]) -> Result<(), String> {
        let write = async {
            while !data.is_empty() {
                self.stream.writable().await?;
                match self.stream.try_write(data) {
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        };
        tokio::time::timeout(IO_TIMEOUT, write)
            .await
            .map_err(|_| format!("write not done within {IO_TIMEOUT:?}"))?
            .map_err(|e| format!("write: {e}"))
    }
}

/// Accepts connections (a bounded number) and runs `handler` on each; the
/// connections end when this task is aborted (its `JoinSet` aborts them).
async fn serve<F, Fut>(name: &'static str, listener: TcpListener, handler: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    for _ in 0..MAX_CONNECTIONS {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("{name}: accept: {e}");
                break;
            }
        };
        while connections.try_join_next().is_some() {}
        let connection = handler(stream);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("{name}: {e}");
            }
        });
    }
}

fn loopback_addr(url: &str) -> SocketAddr {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = hostport
        .parse()
        .unwrap_or_else(|_| panic!("moto URL {url:?} is not http://<ip>:<port>"));
    assert!(
        addr.ip().is_loopback(),
        "moto URL {url:?} is not a loopback address"
    );
    addr
}

// ---- the counting Secrets Manager proxy -------------------------------------

/// An HTTP/1.1 proxy in front of moto that records each request's
/// `X-Amz-Target`. Keeps the client connection open when both sides allow it.
struct SmProxy {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    server: JoinHandle<()>,
}

/// One Secrets Manager request seen by the proxy.
struct Call {
    at: Instant,
    target: String,
}

impl SmProxy {
    async fn start(moto_url: &str) -> SmProxy {
        let upstream = loopback_addr(moto_url);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the counting proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("the counting proxy's address");
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let recorded = calls.clone();
        let server = tokio::spawn(serve("Secrets Manager proxy", listener, move |stream| {
            proxy_connection(stream, upstream, recorded.clone())
        }));
        SmProxy {
            url: format!("http://{addr}"),
            calls,
            server,
        }
    }

    fn count(&self) -> usize {
        self.calls.lock().expect("proxy call list").len()
    }

    fn calls_since(&self, from: usize) -> Vec<String> {
        self.calls.lock().expect("proxy call list")[from..]
            .iter()
            .map(|c| c.target.clone())
            .collect()
    }

    /// The calls after index `from` that arrived within `[start, end]`.
    fn calls_between(&self, from: usize, start: Instant, end: Instant) -> Vec<String> {
        self.calls.lock().expect("proxy call list")[from..]
            .iter()
            .filter(|c| c.at >= start && c.at <= end)
            .map(|c| c.target.clone())
            .collect()
    }
}

impl Drop for SmProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn proxy_connection(
    client: TcpStream,
    upstream: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
) -> Result<(), String> {
    let mut client = Conn::new(client);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let Some(request) = client
            .read_message(MessageKind::Request, IDLE_TIMEOUT)
            .await?
        else {
            return Ok(());
        };
        let target = request.header("x-amz-target").map_or_else(
            || format!("(no X-Amz-Target) {}", request.start_line),
            str::to_string,
        );
        let at = Instant::now();
        calls
            .lock()
            .map_err(|_| "proxy call list poisoned")?
            .push(Call { at, target });
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(upstream))
            .await
            .map_err(|_| format!("connect to moto at {upstream}: timed out"))?
            .map_err(|e| format!("connect to moto at {upstream}: {e}"))?;
        let mut moto = Conn::new(stream);
        moto.write_all(&request.raw).await?;
        let to_head = request.start_line.starts_with("HEAD ");
        let mut close = request.wants_close();
        // Interim (1xx) responses, then the final one.
        for _ in 0..8 {
            let response = moto
                .read_message(MessageKind::Response { to_head }, IO_TIMEOUT)
                .await?
                .ok_or("moto closed the connection without answering")?;
            client.write_all(&response.raw).await?;
            if !response.is_interim() {
                close |= response.wants_close();
                break;
            }
        }
        if close {
            return Ok(());
        }
    }
    Ok(())
}

// ---- database connections from the server log ----------------------------------

/// Reads the lines a server appends to its log (PostgreSQL's log, MariaDB's
/// general log).
struct ServerLog {
    kind: Kind,
    path: PathBuf,
    offset: u64,
}

impl ServerLog {
    fn at_end(kind: Kind, path: &str) -> ServerLog {
        let mut log = ServerLog {
            kind,
            path: PathBuf::from(path),
            offset: 0,
        };
        log.skip();
        log
    }

    fn describe(&self) -> String {
        format!("the {} log {}", server_name(self.kind), self.path.display())
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.describe()))
            .len()
    }

    /// Forgets everything written so far.
    fn skip(&mut self) {
        self.offset = self.len();
    }

    /// The complete lines written since the last call.
    fn read_new(&mut self) -> Vec<String> {
        let len = self.len();
        if len < self.offset {
            eprintln!("{} shrank: reading it from the start", self.describe());
            self.offset = 0;
        }
        let mut file = std::fs::File::open(&self.path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.describe()));
        file.seek(SeekFrom::Start(self.offset))
            .unwrap_or_else(|e| panic!("seek in {}: {e}", self.describe()));
        let mut bytes = Vec::new();
        file.take(len - self.offset)
            .read_to_end(&mut bytes)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.describe()));
        let Some(last_newline) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        self.offset += last_newline as u64 + 1;
        String::from_utf8_lossy(&bytes[..last_newline])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The logins of `users` (kind, name) logged since the last read.
    fn connections(&mut self, users: &[(String, String)]) -> DbCounts {
        let lines = self.read_new();
        match self.kind {
            Kind::Postgres => count_pg_connections(&lines, users),
            Kind::MariaDb => count_mariadb_connections(&lines, users),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct DbCounts {
    /// Connection attempts that named one of our users: PostgreSQL's
    /// `connection received` whose backend then logged one, MariaDB's
    /// connection threads.
    received: usize,
    authorized: usize,
    failed: usize,
    /// User kind → (authorized, failed).
    by_kind: BTreeMap<String, (usize, usize)>,
}

impl DbCounts {
    fn add(&mut self, other: &DbCounts) {
        self.received += other.received;
        self.authorized += other.authorized;
        self.failed += other.failed;
        for (kind, (ok, bad)) in &other.by_kind {
            let entry = self.by_kind.entry(kind.clone()).or_default();
            entry.0 += ok;
            entry.1 += bad;
        }
    }

    /// One login of a user of `kind`.
    fn login(&mut self, kind: String, authorized: bool) {
        let entry = self.by_kind.entry(kind).or_default();
        if authorized {
            self.authorized += 1;
            entry.0 += 1;
        } else {
            self.failed += 1;
            entry.1 += 1;
        }
    }
}

/// What [`DbCounts::received`] counts on this server.
fn received_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "TCP connections received",
        Kind::MariaDb => "connection attempts",
    }
}

/// The kind of the user named `user`, if it is one of `users`.
fn kind_of(users: &[(String, String)], user: &str) -> Option<String> {
    users
        .iter()
        .find(|(_, name)| name == user)
        .map(|(kind, _)| kind.clone())
}

/// The backend pid in a line with log_line_prefix '%m [%p] %q%u@%d '.
fn backend_pid(line: &str) -> Option<&str> {
    let start = line.find(" [")? + 2;
    let len = line[start..].find(']')?;
    let pid = &line[start..start + len];
    pid.bytes().all(|b| b.is_ascii_digit()).then_some(pid)
}

/// Counts the logins of `users` (kind, name) in PostgreSQL log lines.
fn count_pg_connections(lines: &[String], users: &[(String, String)]) -> DbCounts {
    let mut counts = DbCounts::default();
    let mut received: Vec<&str> = Vec::new();
    let mut user_of: HashMap<&str, &str> = HashMap::new();
    for line in lines {
        let Some(pid) = backend_pid(line) else {
            continue;
        };
        if line.contains("LOG:  connection received:") {
            received.push(pid);
            continue;
        }
        let (user, authorized) =
            if let Some((_, rest)) = line.split_once("LOG:  connection authorized: user=") {
                (rest.split_whitespace().next().unwrap_or_default(), true)
            } else if let Some((_, rest)) =
                line.split_once("FATAL:  password authentication failed for user \"")
            {
                (rest.split('"').next().unwrap_or_default(), false)
            } else {
                continue;
            };
        user_of.insert(pid, user);
        if let Some(kind) = kind_of(users, user) {
            counts.login(kind, authorized);
        }
    }
    counts.received = received
        .iter()
        .filter(|pid| {
            user_of
                .get(*pid)
                .is_some_and(|u| kind_of(users, u).is_some())
        })
        .count();
    counts
}

/// (thread id, command, argument) of a MariaDB general-log line:
/// `[YYMMDD HH:MM:SS]\t<spaces><id> <Command>\t<argument>`.
fn general_log_entry(line: &str) -> Option<(&str, &str, &str)> {
    let (_time, rest) = line.split_once('\t')?;
    let rest = rest.trim_start_matches('\t').trim_start_matches(' ');
    let (id, rest) = rest.split_once(' ')?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (command, argument) = rest.split_once('\t')?;
    Some((id, command, argument))
}

/// Counts the logins of `users` (kind, name) in MariaDB general-log lines.
/// Each attempt is a thread that logs `Connect  user@host on db using …`;
/// a refused one then logs `Connect  Access denied for user 'user'@'host' …`.
fn count_mariadb_connections(lines: &[String], users: &[(String, String)]) -> DbCounts {
    // Thread id → (user, refused), in order of first appearance.
    let mut threads: Vec<(&str, &str, bool)> = Vec::new();
    for line in lines {
        let Some((id, "Connect", argument)) = general_log_entry(line) else {
            continue;
        };
        let (user, refused) = if let Some(rest) = argument.strip_prefix("Access denied for user '")
        {
            (rest.split('\'').next().unwrap_or_default(), true)
        } else if let Some((who, _)) = argument.split_once(" on ") {
            (who.rsplit_once('@').map_or(who, |(u, _)| u), false)
        } else {
            continue;
        };
        match threads.iter_mut().find(|(t, _, _)| *t == id) {
            Some(thread) => thread.2 |= refused,
            None => threads.push((id, user, refused)),
        }
    }
    let mut counts = DbCounts::default();
    for (_, user, refused) in threads {
        if let Some(kind) = kind_of(users, user) {
            counts.received += 1;
            counts.login(kind, !refused);
        }
    }
    counts
}

// ---- cold start: the release binary under a fake Lambda Runtime API ----------

/// The release binary of `package`, built when missing (or when
/// `ROTOR_BENCH_BUILD=1`).
async fn release_binary(package: &str, force_build: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = match std::env::var("CARGO_TARGET_DIR") {
        Ok(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        _ => {
            let output = tokio::time::timeout(
                Duration::from_secs(120),
                tokio::process::Command::new(&cargo)
                    .args(["metadata", "--format-version", "1", "--no-deps"])
                    .current_dir(&root)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("cargo metadata did not finish within 120 s")
            .expect("run cargo metadata");
            assert!(
                output.status.success(),
                "cargo metadata failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let meta: Value =
                serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
            PathBuf::from(
                meta["target_directory"]
                    .as_str()
                    .expect("cargo metadata names target_directory"),
            )
        }
    };
    let binary = target_dir.join("release").join(package);
    if force_build || !binary.exists() {
        println!(
            "building the release function: cargo build --release -p {package} (a clean build takes about 10 min on 2 cores)"
        );
        let status = tokio::time::timeout(
            BUILD_TIMEOUT,
            tokio::process::Command::new(&cargo)
                .args(["build", "--release", "-p", package])
                .current_dir(&root)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await
        .unwrap_or_else(|_| {
            panic!("cargo build --release -p {package} did not finish within {BUILD_TIMEOUT:?}")
        })
        .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --release -p {package} failed ({status})"
        );
        assert!(
            binary.exists(),
            "cargo build succeeded but {} is missing",
            binary.display()
        );
    } else {
        let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
        let sources = [
            root.join("Cargo.toml"),
            root.join("Cargo.lock"),
            root.join("shared"),
            root.join("functions").join(package),
        ];
        let newest = sources.iter().filter_map(|p| newest_mtime(p, 8)).max();
        if let (Some(built), Some(newest)) = (built, newest)
            && newest > built
        {
            println!(
                "note: {} is older than its sources; ROTOR_BENCH_BUILD=1 rebuilds it (cargo build --release -p {package})",
                binary.display()
            );
        }
    }
    binary
}

/// The newest modification time of a file, or of any file below a directory.
fn newest_mtime(path: &Path, depth: usize) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    if depth == 0 {
        return None;
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path(), depth - 1))
        .max()
}

/// One event queued for the function.
struct Invocation {
    id: String,
    body: String,
}

/// What the fake Runtime API saw, in order.
enum RuntimeNote {
    NextRequested(Instant),
    Delivered {
        id: String,
        at: Instant,
    },
    Response {
        id: String,
        at: Instant,
        body: Vec<u8>,
    },
    Error {
        id: String,
        body: Vec<u8>,
    },
    InitError {
        body: Vec<u8>,
    },
    Unexpected(String),
}

struct RuntimeApi {
    function_arn: String,
    queue: Mutex<VecDeque<Invocation>>,
    notes: mpsc::UnboundedSender<RuntimeNote>,
}

const RUNTIME_PREFIX: &str = "/2018-06-01/runtime/";

fn http_response(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The Lambda Runtime API, as far as a buffered-response function uses it.
async fn runtime_connection(stream: TcpStream, api: Arc<RuntimeApi>) -> Result<(), String> {
    let mut conn = Conn::new(stream);
    let note = |n: RuntimeNote| {
        // The receiver is gone only after the run ended.
        let _ = api.notes.send(n);
    };
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let Some(request) = conn
            .read_message(MessageKind::Request, IDLE_TIMEOUT)
            .await?
        else {
            return Ok(());
        };
        let at = Instant::now();
        let mut parts = request.start_line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let accepted = || http_response("202 Accepted", "", "{\"status\":\"OK\"}");
        let route = path.strip_prefix(RUNTIME_PREFIX).unwrap_or_default();
        let mut delivered = None;
        let response = if method == "GET" && route == "invocation/next" {
            note(RuntimeNote::NextRequested(at));
            let next = api
                .queue
                .lock()
                .map_err(|_| "runtime queue poisoned")?
                .pop_front();
            let Some(invocation) = next else {
                // Nothing more in this run: hold the long poll until the
                // process is killed and this server is dropped.
                tokio::time::sleep(COLD_RUN_TIMEOUT).await;
                return Ok(());
            };
            let deadline_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                + 300_000;
            let headers = format!(
                "Lambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {deadline_ms}\r\nLambda-Runtime-Invoked-Function-Arn: {arn}\r\nLambda-Runtime-Trace-Id: Root=1-00000000-{trace};Parent=0000000000000000;Sampled=0\r\n",
                id = invocation.id,
                arn = api.function_arn,
                trace = &invocation.id.replace('-', "")[..24],
            );
            delivered = Some(invocation.id.clone());
            http_response("200 OK", &headers, &invocation.body)
        } else if method == "POST" && route == "init/error" {
            note(RuntimeNote::InitError {
                body: request.body.clone(),
            });
            accepted()
        } else if let (true, Some(id)) = (
            method == "POST",
            route
                .strip_prefix("invocation/")
                .and_then(|r| r.strip_suffix("/response")),
        ) {
            note(RuntimeNote::Response {
                id: id.to_string(),
                at,
                body: request.body.clone(),
            });
            accepted()
        } else if let (true, Some(id)) = (
            method == "POST",
            route
                .strip_prefix("invocation/")
                .and_then(|r| r.strip_suffix("/error")),
        ) {
            note(RuntimeNote::Error {
                id: id.to_string(),
                body: request.body.clone(),
            });
            accepted()
        } else {
            note(RuntimeNote::Unexpected(format!("{method} {path}")));
            http_response("404 Not Found", "", "{\"errorMessage\":\"not found\"}")
        };
        conn.write_all(&response).await?;
        if let Some(id) = delivered {
            note(RuntimeNote::Delivered {
                id,
                at: Instant::now(),
            });
        }
        if request.wants_close() {
            return Ok(());
        }
    }
    Ok(())
}

struct ColdRun {
    /// Spawn → first GET /next.
    ready_ms: f64,
    /// Spawn → fourth response.
    total_ms: f64,
    /// First event delivered → fourth response.
    handling_ms: f64,
    /// Per step: event delivered → its response.
    step_ms: Vec<f64>,
    /// Per step: (event delivered, response received).
    windows: Vec<(Instant, Instant)>,
    outcomes: Vec<String>,
    output: Vec<u8>,
}

/// Spawns the function with Secrets Manager at `sm_endpoint`, delivers the
/// four events of `token`, kills it. `run` names its output files.
async fn cold_run(bench: &ColdBench<'_>, sm_endpoint: &str, token: &str, run: &str) -> ColdRun {
    let ColdBench {
        binary,
        function,
        env,
        subject,
        out_dir,
        ..
    } = *bench;
    let arn = subject.arn.as_str();
    let function_name = format!("rotor-bench-{function}");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake Lambda Runtime API on 127.0.0.1");
    let port = listener
        .local_addr()
        .expect("the fake Runtime API's address")
        .port();
    let invocations: VecDeque<Invocation> = Step::ALL
        .iter()
        .map(|step| Invocation {
            id: uuid::Uuid::new_v4().to_string(),
            body: json!({ "Step": step.as_str(), "SecretId": arn, "ClientRequestToken": token })
                .to_string(),
        })
        .collect();
    let ids: Vec<String> = invocations.iter().map(|i| i.id.clone()).collect();
    let (tx, mut notes) = mpsc::unbounded_channel();
    let api = Arc::new(RuntimeApi {
        function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function_name}"),
        queue: Mutex::new(invocations),
        notes: tx,
    });
    let server = tokio::spawn(serve("fake Lambda Runtime API", listener, move |stream| {
        runtime_connection(stream, api.clone())
    }));

    let stdout_path = out_dir.join(format!("cold-{run}.stdout"));
    let stderr_path = out_dir.join(format!("cold-{run}.stderr"));
    let create = |p: &Path| {
        std::fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
    };
    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", &function_name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        // Loopback only: never ask the instance-metadata address for anything.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("SECRETS_MANAGER_ENDPOINT", sm_endpoint)
        .env("ROTOR_CA_BUNDLE", &env.ca)
        .current_dir(out_dir)
        .stdin(Stdio::null())
        .stdout(create(&stdout_path))
        .stderr(create(&stderr_path))
        .kill_on_drop(true);

    let spawned = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
    let deadline = spawned + COLD_RUN_TIMEOUT;
    let mut first_next = None;
    let mut delivered: HashMap<String, Instant> = HashMap::new();
    let mut responses: HashMap<String, (Instant, Vec<u8>)> = HashMap::new();
    let mut failure = None;
    for _ in 0..64 {
        if responses.len() == ids.len() || failure.is_some() {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            note = notes.recv() => match note {
                Some(RuntimeNote::NextRequested(at)) => {
                    first_next.get_or_insert(at);
                }
                Some(RuntimeNote::Delivered { id, at }) => {
                    delivered.insert(id, at);
                }
                Some(RuntimeNote::Response { id, at, body }) => {
                    responses.insert(id, (at, body));
                }
                Some(RuntimeNote::Error { id, body }) => {
                    failure = Some(format!("the function answered invocation {id} with an error: {}", String::from_utf8_lossy(&body)));
                }
                Some(RuntimeNote::InitError { body }) => {
                    failure = Some(format!("the function reported an init error: {}", String::from_utf8_lossy(&body)));
                }
                Some(RuntimeNote::Unexpected(what)) => {
                    failure = Some(format!("unexpected request to the Runtime API: {what}"));
                }
                None => failure = Some("the fake Runtime API stopped".into()),
            },
            status = child.wait() => {
                failure = Some(format!("the function exited before answering all four events ({status:?})"));
            }
            () = tokio::time::sleep(remaining) => {
                failure = Some(format!("no four responses within {COLD_RUN_TIMEOUT:?}"));
            }
        }
    }
    if failure.is_none() && responses.len() < ids.len() {
        failure = Some("too many Runtime API requests".into());
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    server.abort();
    if let Some(failure) = failure {
        panic!(
            "cold run {run}: {failure}\n  the function's output is in {} and {}",
            stdout_path.display(),
            stderr_path.display()
        );
    }

    let mut output = std::fs::read(&stdout_path).unwrap_or_default();
    output.extend(std::fs::read(&stderr_path).unwrap_or_default());
    let first_next = first_next.expect("a response implies a GET /next");
    let first_delivery = delivered
        .get(&ids[0])
        .copied()
        .expect("the first event was delivered");
    let last_response = responses
        .values()
        .map(|(at, _)| *at)
        .max()
        .expect("four responses");
    let windows: Vec<(Instant, Instant)> = ids
        .iter()
        .map(|id| {
            let sent = delivered.get(id).copied().unwrap_or(first_delivery);
            (sent, responses[id].0)
        })
        .collect();
    let step_ms = windows
        .iter()
        .map(|(sent, answered)| millis(answered.saturating_duration_since(*sent)))
        .collect();
    let outcomes = ids
        .iter()
        .map(|id| {
            serde_json::from_slice::<Value>(&responses[id].1)
                .ok()
                .and_then(|v| v["outcome"].as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    format!(
                        "unreadable response {:?}",
                        String::from_utf8_lossy(&responses[id].1)
                    )
                })
        })
        .collect();
    ColdRun {
        ready_ms: millis(first_next - spawned),
        total_ms: millis(last_response - spawned),
        handling_ms: millis(last_response.saturating_duration_since(first_delivery)),
        step_ms,
        windows,
        outcomes,
        output,
    }
}

/// Every password any version of the secret ever held.
async fn all_passwords(service: &MotoService, arn: &str) -> Vec<String> {
    bounded(
        "ListSecretVersionIds (service side)",
        service.all_values(arn),
    )
    .await
    .iter()
    .filter_map(|v| serde_json::from_str::<Value>(v).ok())
    .filter_map(|v| v["password"].as_str().map(str::to_string))
    .filter(|p| !p.is_empty())
    .collect()
}

/// What every cold run of one benchmark shares.
struct ColdBench<'a> {
    binary: &'a Path,
    /// The function's package name.
    function: &'a str,
    env: &'a TestEnv,
    service: &'a MotoService,
    subject: &'a Subject,
    /// Where each process's stdout/stderr go.
    out_dir: &'a Path,
}

/// One cold rotation, staged by the service, checked afterwards (outcomes,
/// labels, no password in the function's output).
async fn cold_rotation(
    bench: &ColdBench<'_>,
    log: &mut ServerLog,
    sm_endpoint: &str,
    run: &str,
) -> (ColdRun, DbCounts) {
    let ColdBench {
        service,
        subject,
        out_dir,
        ..
    } = *bench;
    let token = bounded(
        "RotateSecret (service side)",
        service.start_rotation(&subject.arn),
    )
    .await;
    log.skip();
    let result = cold_run(bench, sm_endpoint, &token, run).await;
    let db = log.connections(&subject.users);
    let want = ["created", "password-set", "tested", "finished"];
    assert_eq!(result.outcomes, want, "cold run {run}: unexpected outcomes");
    finish_like_service(service, &subject.arn, &token).await;
    let leaked = all_passwords(service, &subject.arn)
        .await
        .iter()
        .any(|p| find(&result.output, p.as_bytes()).is_some());
    assert!(
        !leaked,
        "cold run {run}: a password of {} appeared in the function's output (kept in {})",
        subject.arn,
        out_dir.display()
    );
    (result, db)
}

/// The cold start and cold rotations of the server's single-user function.
async fn cold_start(
    server: &mut Server,
    service: &MotoService,
    proxy: &SmProxy,
    cleanup: &mut Cleanup,
    config: &Config,
) -> Value {
    println!();
    let function = server.single_user_function();
    if config.cold_runs == 0 {
        println!("== Cold start of {function}: skipped (ROTOR_BENCH_COLD_RUNS=0)");
        return json!({"skipped": true, "targets_met": true});
    }
    let binary = release_binary(function, config.force_build).await;
    let size = std::fs::metadata(&binary)
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()))
        .len();
    let tag = match server.db.kind {
        Kind::Postgres => "cold",
        Kind::MariaDb => "my_cold",
    };
    let subject = single_user_subject(server, service, cleanup, tag).await;
    println!(
        "== Cold start of the release {function} binary ({}), {} runs with a fresh process each (single-user)",
        server_name(subject.server),
        config.cold_runs
    );
    println!(
        "   {} ({:.2} MB, {size} bytes)",
        binary.display(),
        size as f64 / 1e6
    );
    println!("   secret {}; user {}", subject.arn, subject.users[0].1);
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rotor-bench-{}-{function}", std::process::id()));
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));

    let env = &server.db.env;
    let log = &mut server.log;
    let bench = ColdBench {
        binary: &binary,
        function,
        env,
        service,
        subject: &subject,
        out_dir: &out_dir,
    };
    let mut runs = Vec::with_capacity(config.cold_runs);
    let mut dbs = Vec::with_capacity(config.cold_runs);
    for run in 0..config.cold_runs {
        let (result, db) = cold_rotation(&bench, log, &env.moto_url, &run.to_string()).await;
        runs.push(result);
        dbs.push(db);
    }
    // One more, untimed, with the function's Secrets Manager calls counted.
    let calls_before = proxy.count();
    let (counted, counted_db) = cold_rotation(&bench, log, &proxy.url, "counted").await;
    let sm_by_step: Vec<Vec<String>> = counted
        .windows
        .iter()
        .map(|(sent, answered)| proxy.calls_between(calls_before, *sent, *answered))
        .collect();
    let sm_all = proxy.calls_since(calls_before);
    let output_lines: usize = runs
        .iter()
        .chain([&counted])
        .map(|r| {
            r.output
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .sum();
    let _ = std::fs::remove_dir_all(&out_dir);

    let ready = Stats::of(&runs.iter().map(|r| r.ready_ms).collect::<Vec<_>>());
    let total = Stats::of(&runs.iter().map(|r| r.total_ms).collect::<Vec<_>>());
    let handling = Stats::of(&runs.iter().map(|r| r.handling_ms).collect::<Vec<_>>());
    print_time_header();
    print_time_row("spawn → ready", &ready);
    let mut steps_json = Map::new();
    for (i, step) in Step::ALL.iter().enumerate() {
        let s = Stats::of(&runs.iter().map(|r| r.step_ms[i]).collect::<Vec<_>>());
        print_time_row(&format!("  {step}"), &s);
        steps_json.insert(step.as_str().into(), s.json());
    }
    print_time_row("4 events (1st→4th)", &handling);
    print_time_row("spawn → 4th response", &total);
    let authorized = Stats::of(&dbs.iter().map(|d| d.authorized as f64).collect::<Vec<_>>());
    let failed = Stats::of(&dbs.iter().map(|d| d.failed as f64).collect::<Vec<_>>());
    let received = Stats::of(&dbs.iter().map(|d| d.received as f64).collect::<Vec<_>>());
    println!(
        "  database connections per cold rotation (server log): authorized {}, failed logins {}, {} {}",
        authorized.count_text(),
        failed.count_text(),
        received_label(subject.server),
        received.count_text()
    );
    let ops = count_ops(&sm_all);
    let ops_text: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
    let met = |yes: bool| if yes { "met" } else { "NOT met" };
    let sm_met = sm_all.len() as f64 <= SM_CALL_TARGET;
    let db_met = authorized.max <= DB_CONNECTION_TARGET
        && counted_db.authorized as f64 <= DB_CONNECTION_TARGET;
    println!(
        "  Secrets Manager calls in one more cold rotation (through the counting proxy, untimed): {} ({})   target ≤ {SM_CALL_TARGET}: {}",
        sm_all.len(),
        ops_text.join(", "),
        met(sm_met)
    );
    let mut sm_steps_json = Map::new();
    for (step, calls) in Step::ALL.iter().zip(&sm_by_step) {
        let text: Vec<String> = count_ops(calls)
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect();
        println!("      {:<14} {}", step.as_str(), text.join(", "));
        sm_steps_json.insert(step.as_str().into(), json!(count_ops(calls)));
    }
    println!(
        "      (that run: {} authorized database logins, {} failed)",
        counted_db.authorized, counted_db.failed
    );
    println!(
        "  function output: {output_lines} lines over {} processes; no password found in it",
        runs.len() + 1
    );
    json!({
        "engine": subject.server.name(),
        "function": function,
        "binary": binary.display().to_string(),
        "binary_bytes": size,
        "runs": runs.len(),
        "ready_ms": ready.json(),
        "step_ms": steps_json,
        "events_ms": handling.json(),
        "spawn_to_4th_response_ms": total.json(),
        "db_per_rotation": { "authorized": authorized.count_json(), "failed_logins": failed.count_json(), "received": received.count_json() },
        "sm_calls_per_rotation": { "total": sm_all.len(), "by_operation": ops, "by_step": sm_steps_json },
        "targets_met": sm_met && db_met,
        "output_lines": output_lines,
        "passwords_in_output": 0,
    })
}
