//! Inventory benchmark: time and API calls to inventory
//! `ROTOR_BENCH_SECRETS` (10,000) secrets in moto's Secrets Manager.
//!
//! Run: `eval "$(scripts/test-env)" && cargo bench -p rotor-tests --bench inventory`.
//! The secrets are created (4 requests at a time, retried: moto's server is
//! not safe under heavy concurrency) under a unique prefix,
//! inventoried `ROTOR_BENCH_RUNS` (3) times with the same code the
//! `audit-report` function runs, classified and rendered, then deleted.

use std::sync::Arc;
use std::time::Instant;

use rotor::inventory::classify::Rules;
use rotor::inventory::report::Report;
use rotor::inventory::scan;
use rotor_tests::{TestEnv, unique};
use serde_json::json;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let env = match TestEnv::from_env() {
        Ok(env) => env,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let count: usize = std::env::var("ROTOR_BENCH_SECRETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runs: usize = std::env::var("ROTOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = env.sm_client();
        let prefix = format!("{}/", unique("bench-inv"));
        let created = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..count {
            let (client, sem, name) = (client.clone(), sem.clone(), format!("{prefix}{i:05}"));
            set.spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore");
                let mut result = Err(());
                for _ in 0..3 {
                    result = client
                        .create_secret()
                        .name(&name)
                        .secret_string(r#"{"engine":"postgres","host":"db","username":"u","password":"bench-value-1"}"#)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|_| ());
                    if result.is_ok() {
                        break;
                    }
                }
                result
            });
        }
        let mut failed = 0;
        while let Some(r) = set.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                failed += 1;
            }
        }
        println!("created {count} secrets in {:.1} s ({failed} failed)", created.elapsed().as_secs_f64());
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let started = Instant::now();
            let inventory = scan::from_secrets_manager(&client).await.expect("inventory");
            let inventoried = started.elapsed().as_secs_f64();
            let report = Report::build(&inventory, rotor::time::now(), &Rules::default());
            let html = report.to_html();
            let total = started.elapsed().as_secs_f64();
            times.push(total);
            last = Some((inventory, inventoried, total, html.len()));
        }
        let (inventory, inventoried, total, html_bytes) = last.expect("at least one run");
        let mine = inventory.secrets.iter().filter(|s| s.name.starts_with(&prefix)).count();
        let calls: u64 = inventory.api_calls.values().sum();
        println!(
            "inventory of {} secrets ({mine} from this bench): median {:.2} s over {runs} runs (last: {:.2} s listing, {:.2} s with classification and HTML of {} KiB); API calls {calls} {:?}",
            inventory.secrets.len(),
            median(&mut times),
            inventoried,
            total,
            html_bytes / 1024,
            inventory.api_calls
        );
        println!("{}", json!({"bench": "inventory", "secrets": inventory.secrets.len(), "median_seconds": median(&mut times), "runs": runs, "api_calls": inventory.api_calls}));
        let deleting = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..count {
            let (client, sem, name) = (client.clone(), sem.clone(), format!("{prefix}{i:05}"));
            set.spawn(async move {
                let _permit = sem.acquire().await.expect("semaphore");
                let _ = client.delete_secret().secret_id(name).force_delete_without_recovery(true).send().await;
            });
        }
        while set.join_next().await.is_some() {}
        println!("deleted them in {:.1} s", deleting.elapsed().as_secs_f64());
    });
}
