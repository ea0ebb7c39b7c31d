//! # Load benchmark: many rotations at once, connections counted by the servers
//!
//! ```text
//! eval "$(scripts/test-env)" && cargo bench -p rotor-tests --bench load
//! ```
//!
//! Rotates `ROTOR_BENCH_LOAD_SECRETS` secrets (default 1000), split evenly
//! over the test PostgreSQL and the test MariaDB, and on each over single
//! user and alternating users (one master per server), with at most
//! `ROTOR_BENCH_LOAD_CONCURRENCY` rotations in flight (default 16).
//! Each rotation is driven as the service drives it (RotateSecret with the
//! stub Lambda, then createSecret … finishSecret through one shared
//! `Rotator` per server and strategy, as warm Lambda processes do).
//!
//! Rotor itself has no concurrency setting for rotations: Secrets Manager
//! invokes one function per rotation. The bound here is the semaphore, and
//! the connection bound follows from the code: a rotation holds at most
//! [`MAX_SESSIONS_PER_ROTATION`] database sessions at once (single user: the
//! current login, or its fallback; alternating users: the master session,
//! plus a pending login while it is open when the master may not read
//! stored verifiers). So neither server may ever see more than
//! `concurrency × 2` of this run's connections.
//!
//! Connections are sampled from the servers, not from Rotor, every
//! [`SAMPLE_EVERY`] from an administrator session that the count excludes:
//! PostgreSQL `pg_stat_activity`, MariaDB `information_schema.PROCESSLIST`,
//! both counting only this run's users (their names start with the run's
//! unique tag), so other clients of the shared servers do not count.
//!
//! Checked: zero failed rotations, and every secret's AWSCURRENT logs in at
//! the end (nobody locked out); peak connections per server at most the
//! bound. Printed: rotations per second, peak connections per server,
//! counts. Not a timed test: figures depend on the machine and on moto.
//!
//! Loopback only; every call has a timeout and every loop a fixed bound.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rotor::secret::{DbSecret, Require, SecretString};
use rotor::{Outcome, RotationEvent, Rotator, Step, Strategy};
use rotor_tests::{
    Admin, Kind, MotoService, TestDb, TestEnv, mysql_account, new_password, pg_ident, unique,
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Most database sessions one rotation holds at once (see the module docs).
const MAX_SESSIONS_PER_ROTATION: usize = 2;
/// One step, one service call, one setup statement.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How often each server's connections are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Setup and the final login check run this many at once.
const SETUP_CONCURRENCY: usize = 8;

fn main() -> ExitCode {
    let env = match rotor_tests::bench_env("load") {
        Ok(env) => env,
        Err(exit) => return exit,
    };
    let (secrets, concurrency) = match (
        count_from_env("ROTOR_BENCH_LOAD_SECRETS", 1000, 10_000),
        count_from_env("ROTOR_BENCH_LOAD_CONCURRENCY", 16, 256),
    ) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("load bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let ok = runtime.block_on(run(env, secrets, concurrency));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .map_err(|_| format!("{what} did not finish within {CALL_TIMEOUT:?}"))
}

/// One secret to rotate.
#[derive(Clone)]
struct Subject {
    server: usize,
    strategy: Strategy,
    arn: String,
}

/// A server under load: settings, an administrator session, what this run
/// created there.
struct Server {
    db: TestDb,
    admin: Admin,
    users: Vec<String>,
    master_arn: Option<String>,
}

async fn run(env: TestEnv, secrets: usize, concurrency: usize) -> bool {
    let tag = unique("rl");
    let service = MotoService::new(&env);
    let bound = concurrency * MAX_SESSIONS_PER_ROTATION;
    println!(
        "Rotor load benchmark: {secrets} secrets (ROTOR_BENCH_LOAD_SECRETS) over PostgreSQL and MariaDB, single user and alternating users, at most {concurrency} rotations at once (ROTOR_BENCH_LOAD_CONCURRENCY)"
    );
    println!(
        "connection bound per server: {concurrency} × {MAX_SESSIONS_PER_ROTATION} sessions per rotation = {bound}; run tag {tag}"
    );
    println!("load average at start: {}", rotor_tests::load_average());

    let mut servers = Vec::new();
    for kind in [Kind::Postgres, Kind::MariaDb] {
        let db = TestDb::new(kind, &env);
        let admin = bounded("administrator login", db.admin())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        servers.push(Server {
            db,
            admin,
            users: Vec::new(),
            master_arn: None,
        });
    }

    // Setup: users and secrets, untimed.
    let started = Instant::now();
    let subjects = setup(&mut servers, &service, &tag, secrets).await;
    let setup_s = started.elapsed().as_secs_f64();
    println!(
        "setup: {} users and {} secrets in {setup_s:.1} s",
        servers.iter().map(|s| s.users.len()).sum::<usize>(),
        subjects.len()
    );

    // Samplers: one administrator session per server, counting only this
    // run's users (never itself).
    // Each on a thread and runtime of its own, so busy rotation workers
    // cannot stretch the sampling interval.
    let stop = Arc::new(AtomicBool::new(false));
    let samplers: Vec<std::thread::JoinHandle<(Kind, usize, usize)>> = servers
        .iter()
        .map(|server| {
            let db = server.db.clone();
            let (tag, stop) = (tag.clone(), stop.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the sampler's runtime")
                    .block_on(sample(db, &tag, stop))
            })
        })
        .collect();

    let rotators: Vec<[Arc<Rotator>; 2]> = servers
        .iter()
        .map(|s| {
            [
                Arc::new(s.db.rotator(Strategy::SingleUser)),
                Arc::new(s.db.rotator(Strategy::AlternatingUsers)),
            ]
        })
        .collect();
    let permits = Arc::new(Semaphore::new(concurrency));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak_in_flight = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut rotations = JoinSet::new();
    for subject in subjects.clone() {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let rotator = rotators[subject.server]
            [usize::from(subject.strategy == Strategy::AlternatingUsers)]
        .clone();
        let service = service.clone();
        let (in_flight, peak_in_flight) = (in_flight.clone(), peak_in_flight.clone());
        rotations.spawn(async move {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak_in_flight.fetch_max(now, Ordering::SeqCst);
            let result = rotate(&rotator, &service, &subject).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            (subject, result)
        });
    }
    let mut failures = Vec::new();
    let mut done = [[0usize; 2]; 2];
    while let Some(joined) = rotations.join_next().await {
        match joined {
            Ok((subject, Ok(()))) => {
                done[subject.server][usize::from(subject.strategy == Strategy::AlternatingUsers)] +=
                    1
            }
            Ok((subject, Err(e))) => failures.push(format!("{}: {e}", subject.arn)),
            Err(e) => failures.push(format!("a rotation task failed: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let mut peaks = vec![(0usize, 0usize); servers.len()];
    for sampler in samplers {
        let (kind, peak, samples) = tokio::task::spawn_blocking(move || sampler.join())
            .await
            .expect("join the sampler thread")
            .expect("a sampler thread");
        peaks[usize::from(kind == Kind::MariaDb)] = (peak, samples);
    }

    // Nobody is locked out: every AWSCURRENT logs in.
    let lockouts = check_logins(&servers, &service, &subjects).await;

    cleanup(&servers, &service, &subjects).await;

    let rotated: usize = done.iter().flatten().sum();
    println!();
    println!(
        "rotations: {rotated} of {} in {elapsed:.1} s = {:.1} rotations/s (peak {} in flight, bound {concurrency})",
        subjects.len(),
        rotated as f64 / elapsed,
        peak_in_flight.load(Ordering::SeqCst)
    );
    for (i, server) in servers.iter().enumerate() {
        let name = match server.db.kind {
            Kind::Postgres => "PostgreSQL",
            Kind::MariaDb => "MariaDB",
        };
        println!(
            "  {name:<10} single user {:>4}, alternating users {:>4}; peak connections {} (bound {bound}) over {} samples",
            done[i][0], done[i][1], peaks[i].0, peaks[i].1
        );
    }
    println!("failed rotations: {}", failures.len());
    for f in failures.iter().take(20) {
        println!("  {f}");
    }
    println!(
        "secrets whose AWSCURRENT does not log in: {}",
        lockouts.len()
    );
    for l in lockouts.iter().take(20) {
        println!("  {l}");
    }
    println!("load average at the end: {}", rotor_tests::load_average());
    let within = peaks.iter().all(|(peak, _)| *peak <= bound);
    let ok = failures.is_empty() && lockouts.is_empty() && within;
    println!(
        "{}",
        json!({
            "bench": "load",
            "secrets": subjects.len(),
            "concurrency": concurrency,
            "connection_bound": bound,
            "rotated": rotated,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "rotations_per_second": (rotated as f64 / elapsed * 100.0).round() / 100.0,
            "peak_in_flight": peak_in_flight.load(Ordering::SeqCst),
            "peak_connections": { "postgres": peaks[0].0, "mariadb": peaks[1].0 },
            "samples": { "postgres": peaks[0].1, "mariadb": peaks[1].1 },
            "failures": failures.len(),
            "lockouts": lockouts.len(),
            "ok": ok,
        })
    );
    if !within {
        eprintln!("load bench: a server saw more than {bound} connections of this run");
    }
    ok
}

/// Creates the users, the masters and the secrets: per server, half the
/// share single user, half alternating users.
async fn setup(
    servers: &mut [Server],
    service: &MotoService,
    tag: &str,
    secrets: usize,
) -> Vec<Subject> {
    let mut subjects = Vec::with_capacity(secrets);
    for (index, server) in servers.iter_mut().enumerate() {
        // Shares: PostgreSQL gets the odd one out.
        let share = secrets / 2 + if index == 0 { secrets % 2 } else { 0 };
        let alternating = share / 2;
        let master = format!("{tag}_master");
        let master_password = new_password();
        if alternating > 0 {
            // The first managed user is granted with the master; the rest below.
            let first = format!("{tag}_0");
            server.admin.create_user(&first, &new_password()).await;
            server
                .admin
                .create_master(&master, &master_password, &first)
                .await;
            server.users.push(first);
            server.users.push(master.clone());
            let value = server
                .db
                .secret(&master, master_password.expose(), json!({}));
            let arn = bounded(
                "CreateSecret",
                service.create_secret(&unique(&format!("{tag}-master")), &value),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            server.master_arn = Some(arn);
        }
        let jobs: Vec<(usize, Strategy)> = (0..share)
            .map(|i| {
                let strategy = if i < alternating {
                    Strategy::AlternatingUsers
                } else {
                    Strategy::SingleUser
                };
                (i, strategy)
            })
            .collect();
        let permits = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
        let mut tasks = JoinSet::new();
        let admin = Arc::new(
            bounded("administrator login", server.db.admin())
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        for (i, strategy) in jobs {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("open semaphore");
            let (db, admin, service) = (server.db.clone(), admin.clone(), service.clone());
            let (tag, master, master_arn) =
                (tag.to_string(), master.clone(), server.master_arn.clone());
            tasks.spawn(async move {
                let user = format!("{tag}_{i}");
                let password = new_password();
                if i > 0 || strategy == Strategy::SingleUser {
                    admin.create_user(&user, &password).await;
                    if strategy == Strategy::AlternatingUsers && db.kind == Kind::Postgres {
                        admin
                            .exec(&format!(
                                "GRANT {} TO {} WITH ADMIN OPTION",
                                pg_ident(&user),
                                pg_ident(&master)
                            ))
                            .await;
                    }
                } else {
                    // User 0 exists already (made with the master): set a known password.
                    admin.set_password(&user, &password).await;
                }
                let extra = match (&master_arn, strategy) {
                    (Some(arn), Strategy::AlternatingUsers) => json!({ "masterarn": arn }),
                    _ => json!({}),
                };
                let value = db.secret(&user, password.expose(), extra);
                let arn = service
                    .create_secret(&unique(&format!("{tag}-{i}")), &value)
                    .await;
                drop(permit);
                (user, strategy, arn)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (user, strategy, arn) = joined.expect("a setup task");
            if strategy == Strategy::AlternatingUsers {
                server
                    .users
                    .push(format!("{user}{}", rotor::strategy::CLONE_SUFFIX));
            }
            if user != format!("{tag}_0") || strategy == Strategy::SingleUser {
                server.users.push(user);
            }
            subjects.push(Subject {
                server: index,
                strategy,
                arn,
            });
        }
    }
    // Interleave servers and strategies so the load is mixed throughout.
    subjects.sort_by_key(|s| s.arn.chars().rev().collect::<String>());
    subjects
}

/// One full rotation as the service drives it; any error or unexpected
/// outcome is a failure.
async fn rotate(rotator: &Rotator, service: &MotoService, subject: &Subject) -> Result<(), String> {
    let arn = &subject.arn;
    let token = bounded("RotateSecret", service.start_rotation(arn)).await?;
    for step in Step::ALL {
        let event = RotationEvent {
            step: step.as_str().to_string(),
            secret_id: arn.clone(),
            token: token.clone(),
            rotation_token: None,
        };
        let outcome = bounded(step.as_str(), rotator.handle(&event))
            .await?
            .map_err(|e| format!("{step}: {e}"))?;
        let expected = matches!(
            (step, outcome),
            (Step::CreateSecret, Outcome::Created)
                | (Step::SetSecret, Outcome::PasswordSet | Outcome::UserCreated)
                | (Step::TestSecret, Outcome::Tested)
                | (Step::FinishSecret, Outcome::Finished)
        );
        if !expected {
            return Err(format!("{step} returned {outcome:?}"));
        }
    }
    // As the service does after finishSecret: AWSPENDING off the new version.
    let labels = bounded("DescribeSecret", service.labels(arn)).await?;
    let stages = labels.get(&token).cloned().unwrap_or_default();
    if !stages.iter().any(|s| s == "AWSCURRENT") {
        return Err(format!(
            "{token} is not AWSCURRENT after finishSecret: {labels:?}"
        ));
    }
    if stages.iter().any(|s| s == "AWSPENDING") {
        let remove = service
            .client
            .update_secret_version_stage()
            .secret_id(arn)
            .version_stage("AWSPENDING")
            .remove_from_version_id(&token)
            .send();
        bounded("UpdateSecretVersionStage", remove)
            .await?
            .map_err(|e| format!("remove AWSPENDING: {e:?}"))?;
    }
    Ok(())
}

/// Counts this run's connections on one server every [`SAMPLE_EVERY`] until
/// `stop`: (server, peak, samples).
async fn sample(db: TestDb, tag: &str, stop: Arc<AtomicBool>) -> (Kind, usize, usize) {
    let admin = bounded("sampler login", db.admin())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("{tag}_");
    let (mut peak, mut samples) = (0usize, 0usize);
    // At most an hour of samples.
    for _ in 0..(3600 * 1000 / SAMPLE_EVERY.as_millis() as usize) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let count: i64 = match &admin {
            Admin::Pg(c) => c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND starts_with(usename, $1)",
                    &[&prefix],
                )
                .await
                .expect("count pg_stat_activity")
                .get(0),
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                c.lock()
                    .await
                    .exec_first::<i64, _, _>(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND LEFT(USER, CHAR_LENGTH(?)) = ?",
                        (&prefix, &prefix),
                    )
                    .await
                    .expect("count PROCESSLIST")
                    .unwrap_or(0)
            }
        };
        peak = peak.max(usize::try_from(count).unwrap_or(0));
        samples += 1;
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    (db.kind, peak, samples)
}

/// The secrets whose AWSCURRENT version does not log in.
async fn check_logins(
    servers: &[Server],
    service: &MotoService,
    subjects: &[Subject],
) -> Vec<String> {
    let permits = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for subject in subjects {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("open semaphore");
        let (service, arn) = (service.clone(), subject.arn.clone());
        let engine = servers[subject.server].db.engine();
        tasks.spawn(async move {
            let result = async {
                let value = bounded(
                    "GetSecretValue",
                    service
                        .client
                        .get_secret_value()
                        .secret_id(&arn)
                        .version_stage("AWSCURRENT")
                        .send(),
                )
                .await?
                .map_err(|e| format!("GetSecretValue: {e:?}"))?
                .secret_string
                .ok_or("AWSCURRENT has no value")?;
                let secret = DbSecret::parse(
                    &SecretString::new(value),
                    &arn,
                    "AWSCURRENT",
                    Require::Connection,
                )
                .map_err(|e| e.to_string())?;
                bounded("login", engine.connect(&secret, "current"))
                    .await?
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            .await;
            drop(permit);
            result.err().map(|e| format!("{arn}: {e}"))
        });
    }
    let mut lockouts = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(l) = joined.expect("a login check task") {
            lockouts.push(l);
        }
    }
    lockouts
}

/// Drops this run's users (clones before the users they are members of,
/// masters last) and deletes its secrets.
async fn cleanup(servers: &[Server], service: &MotoService, subjects: &[Subject]) {
    for server in servers {
        let mut users = server.users.clone();
        users.sort_by_key(|u| {
            (
                u.ends_with("_master"),
                !u.ends_with(rotor::strategy::CLONE_SUFFIX),
            )
        });
        for user in users {
            let sql = match server.db.kind {
                Kind::Postgres => format!("DROP ROLE IF EXISTS {}", pg_ident(&user)),
                Kind::MariaDb => format!("DROP USER IF EXISTS {}", mysql_account(&user)),
            };
            if let Err(e) = bounded("DROP USER", server.admin.exec(&sql)).await {
                eprintln!("cleanup: {user}: {e}");
            }
        }
    }
    let mut arns: Vec<String> = subjects.iter().map(|s| s.arn.clone()).collect();
    arns.extend(servers.iter().filter_map(|s| s.master_arn.clone()));
    for arn in arns {
        let delete = service
            .client
            .delete_secret()
            .secret_id(&arn)
            .force_delete_without_recovery(true)
            .send();
        if let Ok(Err(e)) = bounded("DeleteSecret", delete).await {
            eprintln!("cleanup: cannot delete secret {arn}: {e:?}");
        }
    }
}
