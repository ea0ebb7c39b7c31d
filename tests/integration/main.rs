//! Integration tests against real servers: the password-checking PostgreSQL
//! with TLS and moto's Secrets Manager that `scripts/test-env` starts.
//!
//! One process, libtest-style output (libtest-mimic), so one log capture
//! covers every scenario; the leak check runs after all of them. The
//! rotation scenarios are generic over strategy (and the store conformance
//! suite over stores); later engines add themselves to [`engines`].

mod rotation;
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
    let pg_log_start = std::fs::metadata(&env.pg_log).map(|m| m.len()).unwrap_or(0);
    let mut trials = Vec::new();
    trials.extend(stores::trials(&env));
    trials.extend(rotation::trials(&env));
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
        let text = std::fs::read(&env.pg_log).map_err(|e| format!("read {}: {e}", env.pg_log))?;
        let start = (pg_log_start as usize).min(text.len());
        let server_log = String::from_utf8_lossy(&text[start..]);
        if !server_log.contains("ALTER ROLE") {
            return Err(
                "the server log shows no ALTER ROLE: log_statement=all is not capturing".into(),
            );
        }
        let report = leaks::check(&server_log, 200, 40)?;
        println!(
            "leak check: {} Rotor log lines, {} server log lines, {} passwords and canaries checked",
            report.log_lines, report.pg_log_lines, report.secrets_checked
        );
        Ok(())
    });
    libtest_mimic::run(&leak_args, vec![leak]).exit();
}
