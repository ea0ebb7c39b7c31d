//! Integration tests against real servers: the password-checking PostgreSQL
//! with TLS and moto's Secrets Manager that `scripts/test-env` starts.
//!
//! One process, libtest-style output (libtest-mimic), so one log capture
//! covers every scenario; the leak check runs after all of them. The
//! rotation scenarios are generic over strategy (and the store conformance
//! suite over stores); later engines add themselves to [`engines`].

mod config_errors;
mod crash_points;
mod dynamic;
mod dynamic_authz;
mod dynamic_scope;
mod hostile;
mod inventory;
mod lockout;
mod mysql_safety;
mod outages;
mod races;
mod rotation;
mod safety;
mod stores;

use std::future::Future;

use libtest_mimic::{Arguments, Trial};
use rotor_tests::{TestEnv, leaks};

/// Builds a trial that runs an async scenario on its own runtime.
pub fn trial<F, Fut>(name: impl Into<String>, env: &TestEnv, f: F) -> Trial
where
    F: FnOnce(TestEnv) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let env = env.clone();
    Trial::test(name, move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        runtime.block_on(f(env));
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    leaks::capture();
    let env = match TestEnv::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let maria_log = rotor_tests::MariaDbEnv::from_env()
        .map(|m| m.log)
        .unwrap_or_else(|e| panic!("{e}"));
    let log_start = |path: &str| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let pg_log_start = log_start(&env.pg_log);
    let maria_log_start = log_start(&maria_log);
    let mut trials = Vec::new();
    trials.extend(stores::trials(&env));
    trials.extend(config_errors::trials(&env));
    trials.extend(hostile::trials(&env));
    trials.extend(rotation::trials(&env));
    trials.extend(crash_points::trials(&env));
    trials.extend(lockout::trials(&env));
    trials.extend(safety::trials(&env));
    trials.extend(dynamic::trials(&env));
    trials.extend(dynamic_scope::trials(&env));
    trials.extend(dynamic_authz::trials(&env));
    trials.extend(inventory::trials(&env));
    trials.extend(mysql_safety::trials(&env));
    trials.extend(outages::trials(&env));
    trials.extend(races::trials(&env));
    let filtered = args.filter.is_some() || !args.skip.is_empty();
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed() {
        conclusion.exit();
    }
    // The leak check needs the whole suite's output: skip it for filtered runs.
    if filtered || args.list {
        conclusion.exit();
    }
    let leak_args = Arguments {
        test_threads: Some(1),
        ..Arguments::default()
    };
    let leak = Trial::test("leak_check::no_password_in_logs_or_server_log", move || {
        let read_from = |path: &str, start: u64| -> Result<String, String> {
            let text = std::fs::read(path).map_err(|e| format!("read {path}: {e}"))?;
            let start = (start as usize).min(text.len());
            Ok(String::from_utf8_lossy(&text[start..]).into_owned())
        };
        let pg = read_from(&env.pg_log, pg_log_start)?;
        let maria = read_from(&maria_log, maria_log_start)?;
        if !pg.contains("ALTER ROLE") {
            return Err(
                "the PostgreSQL log shows no ALTER ROLE: log_statement=all is not capturing".into(),
            );
        }
        if !maria.contains("SET PASSWORD FOR") {
            return Err(
                "the MariaDB general log shows no SET PASSWORD: general_log is not capturing"
                    .into(),
            );
        }
        let server_log = format!("{pg}\n{maria}");
        let report = leaks::check(&server_log, 200, 40)?;
        println!(
            "leak check: {} Rotor log lines, {} server log lines (PostgreSQL and MariaDB), {} passwords and canaries checked",
            report.log_lines, report.server_log_lines, report.secrets_checked
        );
        Ok(())
    });
    libtest_mimic::run(&leak_args, vec![leak]).exit();
}
