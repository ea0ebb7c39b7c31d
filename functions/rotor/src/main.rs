//! `rotor`: the Lambda functions' code, run from a terminal.
//!
//! `rotate` runs a whole rotation in this process (playing Secrets Manager:
//! it stages a fresh token, then runs the four steps) or asks the service to
//! rotate (`--service`); `step` runs one step as a console test event would;
//! `secrets` manages the local store; `demo` shows the main job end to end.
//! Every command works against Secrets Manager or, with `--local FILE`, the
//! embedded local store. Logic lives in the `rotor` crate; this file parses
//! arguments and prints results.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rotor::dynamic::revoke::RevokeTarget;
use rotor::dynamic::{Caller, Dynamic};
use rotor::store::{AWSCURRENT, LocalStore, SecretStore, SecretsManagerStore, VersionRef};
use rotor::{Error, Result, RotationEvent, Rotator, SecretString, Strategy};

#[derive(Parser)]
#[command(
    name = "rotor",
    version,
    about = "Rotate database credentials kept in AWS Secrets Manager (or a local store)"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Rotate a secret now: all four steps in this process, or via the service with --service.
    Rotate {
        /// Secret name or ARN.
        secret_id: String,
        #[command(flatten)]
        target: Target,
        /// Ask Secrets Manager to rotate with the function configured on the secret (RotateSecret).
        #[arg(long, conflicts_with = "local")]
        service: bool,
        /// Abandon an unfinished rotation (remove its AWSPENDING label) and start a new one,
        /// instead of resuming it.
        #[arg(long, conflicts_with = "service")]
        restart: bool,
    },
    /// Run one rotation step, as a console test event would.
    Step {
        /// createSecret, setSecret, testSecret or finishSecret.
        step: String,
        /// Secret name or ARN.
        secret_id: String,
        /// The ClientRequestToken (version id) being rotated.
        token: String,
        #[command(flatten)]
        target: Target,
    },
    /// Manage secrets in the local store.
    Secrets {
        #[command(subcommand)]
        action: SecretsAction,
    },
    /// Issue a dynamic credential for a role (prints it as JSON, or as shell exports).
    Issue {
        /// Role name (under ROTOR_ROLES_PREFIX, default rotor/roles/) or ARN.
        role: String,
        /// Lifetime, e.g. 15m, 1h (default: the role's default_ttl; at most its max_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// Print `export NAME=value` lines instead of JSON.
        #[arg(long)]
        env: bool,
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
    },
    /// Revoke now: a static secret (rotated, previous invalidated), a dynamic user, a role's users, or secrets by tag.
    Revoke {
        #[arg(long, group = "what")]
        secret: Option<String>,
        /// A dynamic user (its name is the lease id).
        #[arg(long, visible_alias = "lease", group = "what")]
        user: Option<String>,
        /// Every user issued for this role.
        #[arg(long, group = "what")]
        role: Option<String>,
        /// Every secret with this tag, as KEY=VALUE.
        #[arg(long, value_name = "KEY=VALUE", group = "what")]
        tag: Option<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
    },
    /// Drop expired dynamic users; rotate or revoke static secrets by their rotor:max-age / rotor:expires-at tags.
    Sweep {
        #[arg(long)]
        dry_run: bool,
        /// Master connections per database at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
    },
    /// List issued dynamic users and their expiry, read from the databases.
    Leases {
        #[arg(long)]
        role: Option<String>,
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
    },
    /// Run a command with a fresh credential in its environment (PG*/MYSQL_*, DATABASE_URL);
    /// revoke it when the command exits, even if it fails.
    Exec {
        #[arg(long)]
        role: String,
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
        /// The command and its arguments (after --).
        #[arg(trailing_var_arg = true, required = true, num_args = 1..)]
        command: Vec<String>,
    },
    /// Inventory and classify every secret; write the report (JSON, CSV or HTML).
    Report {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
        format: ReportFormat,
        /// Write to FILE instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Exit with status 3 when any secret has one of these statuses
        /// (comma-separated, e.g. rotation_overdue,rotation_stuck; `plaintext` for
        /// credentials found outside the store). An unknown status is refused.
        #[arg(long, value_delimiter = ',')]
        fail_on: Vec<String>,
        /// Also scan Lambda environment variables and SSM String parameters.
        #[arg(long)]
        scan: bool,
        /// Publish each finding to this EventBridge bus.
        #[arg(long, value_name = "BUS")]
        publish: Option<String>,
        #[arg(long, value_name = "FILE", conflicts_with_all = ["scan", "publish"])]
        local: Option<PathBuf>,
    },
    /// Run the main job end to end against a local PostgreSQL with the local store.
    Demo {
        /// Administrator login used to create the demo roles.
        #[arg(
            long,
            env = "ROTOR_DEMO_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
        /// Local store file to create (replaced if it exists).
        #[arg(long, default_value_os_t = std::env::temp_dir().join("rotor-demo-store.json"))]
        store: PathBuf,
        /// Keep the demo roles afterwards.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Args)]
struct Target {
    /// Use the local store in FILE instead of Secrets Manager.
    #[arg(long, value_name = "FILE")]
    local: Option<PathBuf>,
    /// Rotation strategy; auto picks alternating-users when the secret has a masterarn.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    strategy: StrategyArg,
    /// Rotate even if the secret says rotation is disabled.
    #[arg(long)]
    ignore_disabled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Json,
    Csv,
    Html,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StrategyArg {
    Auto,
    SingleUser,
    AlternatingUsers,
}

#[derive(Subcommand)]
enum SecretsAction {
    /// Store a value as the secret's new AWSCURRENT version (creating the secret).
    Put {
        name: String,
        /// The JSON value; read from stdin when absent.
        #[arg(long)]
        value: Option<String>,
        #[arg(long, value_name = "FILE")]
        local: PathBuf,
    },
    /// Print one version's value (AWSCURRENT by default).
    Get {
        secret_id: String,
        #[arg(long, default_value = AWSCURRENT, conflicts_with = "version_id")]
        stage: String,
        #[arg(long)]
        version_id: Option<String>,
        #[arg(long, value_name = "FILE")]
        local: PathBuf,
    },
    /// Stage a fresh token as AWSPENDING with no value, as RotateSecret does before
    /// createSecret; prints the token for `rotor step`.
    StartRotation {
        secret_id: String,
        #[arg(long, value_name = "FILE")]
        local: PathBuf,
    },
    /// List secrets and their labelled versions.
    List {
        #[arg(long, value_name = "FILE")]
        local: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own report; step lines would only repeat it.
    let level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    match cli.log_format {
        LogFormat::Text => rotor::logging::init_text(level),
        LogFormat::Json => rotor::logging::init_json_stderr(),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rotor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotor: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Rotate {
            secret_id,
            target,
            service,
            restart,
        } => {
            if service {
                let store = SecretsManagerStore::from_env().await;
                let version = store.rotate_with_service(&secret_id).await?;
                println!(
                    "Secrets Manager started rotating {secret_id}: version {}",
                    version.unwrap_or_default()
                );
                return Ok(());
            }
            let rotator = rotator_for(&secret_id, &target).await?;
            if restart && let Some(token) = rotator.abandon_unfinished(&secret_id).await? {
                println!("abandoned the unfinished rotation {token}");
            }
            let report = rotator.rotate(&secret_id).await?;
            println!(
                "rotated {} ({}) to version {}{}",
                report.secret_arn,
                rotator.strategy(),
                report.token,
                if report.resumed {
                    " (resumed an unfinished rotation)"
                } else {
                    ""
                }
            );
            for s in &report.steps {
                println!(
                    "  {:<13} {:<16} {:>8.1} ms",
                    s.step.as_str(),
                    s.outcome.as_str(),
                    s.millis
                );
            }
            Ok(())
        }
        Command::Step {
            step,
            secret_id,
            token,
            target,
        } => {
            let rotator = rotator_for(&secret_id, &target).await?;
            let event = RotationEvent {
                step,
                secret_id,
                token,
                rotation_token: None,
            };
            let outcome = rotator.handle(&event).await?;
            println!("{}: {}", event.step, outcome.as_str());
            Ok(())
        }
        Command::Secrets { action } => secrets(action).await,
        Command::Report {
            format,
            output,
            fail_on,
            scan,
            publish,
            local,
        } => {
            use rotor::inventory::{classify::Rules, publish as out, report::Report, scan as inv};
            // Before reading anything: a typo would otherwise open the gate.
            rotor::inventory::report::check_fail_on(&fail_on)?;
            let inventory = match &local {
                Some(path) => inv::from_store(&LocalStore::open(path)?).await?,
                None => {
                    let sdk = rotor::aws_config::load_from_env().await;
                    let store = SecretsManagerStore::from_sdk_config(&sdk);
                    let mut inventory = inv::from_secrets_manager(store.client()).await?;
                    if scan {
                        inv::scan_lambda(&rotor::aws_sdk_lambda::Client::new(&sdk), &mut inventory)
                            .await?;
                        inv::scan_ssm(&rotor::aws_sdk_ssm::Client::new(&sdk), &mut inventory)
                            .await?;
                    }
                    if let Some(bus) = &publish {
                        let report =
                            Report::build(&inventory, rotor::time::now(), &Rules::from_env()?);
                        let n = out::publish(
                            &rotor::aws_sdk_eventbridge::Client::new(&sdk),
                            bus,
                            &out::finding_details(&report),
                        )
                        .await?;
                        eprintln!("rotor: published {n} findings to {bus}");
                    }
                    inventory
                }
            };
            let report = Report::build(&inventory, rotor::time::now(), &Rules::from_env()?);
            let text = match format {
                ReportFormat::Json => report.to_json(),
                ReportFormat::Csv => report.to_csv(),
                ReportFormat::Html => report.to_html(),
            };
            match &output {
                Some(path) => std::fs::write(path, text)
                    .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?,
                None => print!("{text}"),
            }
            let s = &report.summary;
            eprintln!(
                "rotor: {} secrets, {} compliant, {} non-compliant, {} plaintext credentials",
                s.total, s.compliant, s.non_compliant, s.plaintext_credentials
            );
            if !fail_on.is_empty() && report.has_any(&fail_on) {
                eprintln!("rotor: failing: a secret has one of {}", fail_on.join(", "));
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Issue {
            role,
            ttl,
            env,
            local,
        } => {
            let dynamic = dynamic(local.as_deref()).await?;
            let ttl = ttl
                .as_deref()
                .map(rotor::time::parse_duration)
                .transpose()?;
            let credential = dynamic.issue(&role, ttl, &cli_caller(), false).await?;
            if env {
                for (k, v) in credential.environment() {
                    println!("export {k}='{}'", v.replace('\'', "'\\''"));
                }
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&credential).unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Revoke {
            secret,
            user,
            role,
            tag,
            dry_run,
            local,
        } => {
            let target = if let Some(s) = secret {
                RevokeTarget::Secret(s)
            } else if let Some(u) = user {
                RevokeTarget::User(u)
            } else if let Some(r) = role {
                RevokeTarget::Role(r)
            } else if let Some(t) = tag {
                let (key, value) = t
                    .split_once('=')
                    .ok_or_else(|| Error::Config(format!("--tag {t:?} is not KEY=VALUE")))?;
                RevokeTarget::Tag {
                    key: key.into(),
                    value: value.into(),
                }
            } else {
                return Err(Error::Config(
                    "name what to revoke: --secret, --user, --role or --tag".into(),
                ));
            };
            let dynamic = dynamic(local.as_deref()).await?;
            let rds = rds_for(local.as_deref()).await;
            let report = dynamic.revoke(&target, dry_run, &cli_caller(), rds).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report.failures.is_empty() {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{} revocations failed",
                    report.failures.len()
                )))
            }
        }
        Command::Sweep {
            dry_run,
            concurrency,
            local,
        } => {
            let dynamic = dynamic(local.as_deref()).await?;
            let options = rotor::dynamic::sweep::SweepOptions {
                dry_run,
                concurrency,
                ..Default::default()
            };
            let report = dynamic
                .sweep(&options, &cli_caller(), rds_for(local.as_deref()).await)
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            if report.failures == 0 {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{} sweep actions failed",
                    report.failures
                )))
            }
        }
        Command::Leases { role, local } => {
            let dynamic = dynamic(local.as_deref()).await?;
            let now = rotor::time::now();
            for (role, lease) in dynamic.leases(role.as_deref()).await? {
                let state = if lease.expires_at <= now {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{}\t{}\t{}\t{state}",
                    lease.username,
                    role,
                    rotor::time::rfc3339(lease.expires_at)
                );
            }
            Ok(())
        }
        Command::Exec {
            role,
            ttl,
            local,
            command,
        } => {
            let dynamic = dynamic(local.as_deref()).await?;
            let ttl = ttl
                .as_deref()
                .map(rotor::time::parse_duration)
                .transpose()?;
            let outcome = dynamic.exec(&role, ttl, &cli_caller(), &command).await?;
            eprintln!(
                "rotor: revoked {} (sessions ended: {})",
                outcome.username, outcome.revoked.sessions_ended
            );
            match outcome.code {
                Some(0) => Ok(()),
                code => Err(Error::Config(format!(
                    "the command exited with {code:?}; the credential was revoked"
                ))),
            }
        }
        Command::Demo {
            database_url,
            store,
            keep,
        } => {
            let report = rotor::demo::run(&rotor::demo::DemoOptions {
                database_url,
                store_path: store,
                keep,
            })
            .await?;
            print!("{report}");
            Ok(())
        }
    }
}

/// The store, engine and strategy for a secret, chosen from its current value.
async fn rotator_for(secret_id: &str, target: &Target) -> Result<Rotator> {
    let store: Arc<dyn SecretStore> = match &target.local {
        Some(path) => Arc::new(LocalStore::open(path)?),
        None => Arc::new(SecretsManagerStore::from_env().await),
    };
    let strategy = match target.strategy {
        StrategyArg::SingleUser => Some(Strategy::SingleUser),
        StrategyArg::AlternatingUsers => Some(Strategy::AlternatingUsers),
        StrategyArg::Auto => None,
    };
    let rds: Option<Arc<dyn rotor::rds::RdsLookup>> = match target.local {
        Some(_) => None,
        None => Some(Arc::new(rotor::rds::RdsApi::from_env().await)),
    };
    let rotator = rotor::rotation::rotator_for_secret(
        store,
        &rotor::engine::ConnectOptions::from_env()?,
        secret_id,
        strategy,
        rds,
    )
    .await?;
    Ok(rotator.ignore_disabled(target.ignore_disabled))
}

/// Who the CLI acts for, in audit records.
fn cli_caller() -> Caller {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    Caller {
        arn: format!("cli:{user}"),
        via: "cli",
    }
}

async fn store_for(local: Option<&std::path::Path>) -> Result<Arc<dyn SecretStore>> {
    Ok(match local {
        Some(path) => Arc::new(LocalStore::open(path)?),
        None => Arc::new(SecretsManagerStore::from_env().await),
    })
}

async fn dynamic(local: Option<&std::path::Path>) -> Result<Dynamic> {
    Ok(Dynamic::new(
        store_for(local).await?,
        rotor::engine::ConnectOptions::from_env()?,
    ))
}

async fn rds_for(local: Option<&std::path::Path>) -> Option<Arc<dyn rotor::rds::RdsLookup>> {
    match local {
        Some(_) => None,
        None => Some(Arc::new(rotor::rds::RdsApi::from_env().await)),
    }
}

async fn secrets(action: SecretsAction) -> Result<()> {
    match action {
        SecretsAction::Put { name, value, local } => {
            let value = match value {
                Some(v) => v,
                None => {
                    let mut v = String::new();
                    std::io::stdin().read_to_string(&mut v).map_err(|e| {
                        Error::Config(format!("cannot read the value from stdin: {e}"))
                    })?;
                    v
                }
            };
            let value = SecretString::new(value.trim().to_string());
            serde_json::from_str::<serde_json::Value>(value.expose()).map_err(|e| {
                Error::Config(format!("the value is not JSON ({e}); nothing stored"))
            })?;
            let arn = LocalStore::open(&local)?.put_current(&name, &value)?;
            println!("{arn}");
            Ok(())
        }
        SecretsAction::Get {
            secret_id,
            stage,
            version_id,
            local,
        } => {
            let store = LocalStore::open(&local)?;
            let version = match &version_id {
                Some(id) => VersionRef::Id(id),
                None => VersionRef::Stage(&stage),
            };
            let value = store
                .get(&secret_id, version)
                .await?
                .ok_or_else(|| Error::NotFound {
                    what: format!("{version} of {secret_id}"),
                })?;
            // Printing the value is what the user asked for.
            println!("{}", value.expose());
            Ok(())
        }
        SecretsAction::StartRotation { secret_id, local } => {
            println!("{}", LocalStore::open(&local)?.start_rotation(&secret_id)?);
            Ok(())
        }
        SecretsAction::List { local } => {
            for s in LocalStore::open(&local)?.list()? {
                let versions: Vec<String> = s
                    .versions
                    .iter()
                    .map(|(id, stages)| format!("{id} [{}]", stages.join(",")))
                    .collect();
                println!("{}\t{}\t{}", s.name, s.arn, versions.join(" "));
            }
            Ok(())
        }
    }
}
