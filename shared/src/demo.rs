//! `rotor demo`: the main job end to end against a PostgreSQL the user has,
//! with the embedded local store — no AWS account needed.
//!
//! It creates demo roles, stores their secrets in a local store file, rotates
//! the single-user secret twice and the alternating-users secret once with
//! the same [`Rotator`] the Lambda functions run, and proves each rotation:
//! by logins (old password refused, new accepted) on a server that checks
//! passwords, or — on a server that trusts every loopback login, like a
//! fresh machine's — by checking the role's stored SCRAM verifier against
//! the new and old passwords. It says which proof it used.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use postgres_protocol::escape::escape_identifier;
use serde_json::json;
use tokio_postgres::{Client, Config, NoTls};

use crate::engine::postgres::{PostgresEngine, alter_password_sql, scram_verifier_matches};
use crate::engine::{ConnectOptions, Engine};
use crate::error::{Error, Result};
use crate::password::PasswordPolicy;
use crate::rotation::Rotator;
use crate::secret::{DbSecret, Require, SecretString};
use crate::store::{AWSCURRENT, AWSPREVIOUS, LocalStore, SecretStore, VersionRef};
use crate::strategy::Strategy;

const USER: &str = "rotor_demo";
const APP: &str = "rotor_demo_app";
const MASTER: &str = "rotor_demo_master";

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// An administrator login (`postgres://user[:password]@host:port/db`).
    pub database_url: String,
    /// Local store file; created fresh.
    pub store_path: PathBuf,
    /// Keep the demo roles afterwards.
    pub keep: bool,
}

/// How a rotation was proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The server checks passwords: logins decided.
    Logins,
    /// The server trusts loopback logins: stored verifiers decided.
    Verifiers,
}

struct Demo {
    admin: Client,
    rotator_single: Rotator,
    rotator_multi: Rotator,
    store: Arc<LocalStore>,
    engine: PostgresEngine,
    proof: Proof,
    host: String,
    port: u16,
    dbname: String,
    ssl: bool,
    out: String,
}

fn db_err(action: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Database {
        endpoint: "demo database".into(),
        action: action.to_string(),
        detail: e
            .as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string()),
    }
}

/// Runs the demo and returns its report.
pub async fn run(options: &DemoOptions) -> Result<String> {
    let admin_config: Config = options.database_url.parse().map_err(|e| {
        Error::Config(format!(
            "--database-url is not a PostgreSQL URL ({e}); use postgres://user[:password]@host:port/db"
        ))
    })?;
    let host = match admin_config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = admin_config.get_ports().first().copied().unwrap_or(5432);
    let dbname = admin_config.get_dbname().unwrap_or("postgres").to_string();
    let ssl = matches!(
        admin_config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    // The error names host and port only: the URL may carry a password.
    let unreachable = |e: tokio_postgres::Error| Error::Unreachable {
        endpoint: format!("{host}:{port}"),
        detail: format!("{e}; is PostgreSQL running? pass --database-url for another server"),
    };
    let admin = if ssl {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            (*crate::engine::TlsSettings::from_env().client_config()?).clone(),
        );
        let (admin, connection) = admin_config.connect(tls).await.map_err(unreachable)?;
        tokio::spawn(connection);
        admin
    } else {
        let (admin, connection) = admin_config.connect(NoTls).await.map_err(unreachable)?;
        tokio::spawn(connection);
        admin
    };
    if std::fs::metadata(&options.store_path).is_ok() {
        std::fs::remove_file(&options.store_path)
            .map_err(|e| Error::io(options.store_path.display(), e))?;
    }
    let store = Arc::new(LocalStore::open(&options.store_path)?);
    let engine = PostgresEngine::new(ConnectOptions::from_env()?);
    let policy = PasswordPolicy::from_env(engine.default_excluded_characters())?;
    let mut demo = Demo {
        rotator_single: Rotator::new(
            store.clone(),
            Arc::new(engine.clone()),
            Strategy::SingleUser,
            policy.clone(),
        ),
        rotator_multi: Rotator::new(
            store.clone(),
            Arc::new(engine.clone()),
            Strategy::AlternatingUsers,
            policy,
        ),
        admin,
        store,
        engine,
        proof: Proof::Logins,
        host,
        port,
        dbname,
        ssl,
        out: String::new(),
    };
    let result = demo.play(options).await;
    if !options.keep {
        let _ = demo.drop_roles().await;
    }
    result?;
    Ok(demo.out)
}

impl Demo {
    fn say(&mut self, line: impl AsRef<str>) {
        self.out.push_str(line.as_ref());
        self.out.push('\n');
    }

    async fn drop_roles(&self) -> Result<()> {
        for role in [USER, APP, &format!("{APP}_clone"), MASTER] {
            self.admin
                .batch_execute(&format!("DROP ROLE IF EXISTS {}", escape_identifier(role)))
                .await
                .map_err(db_err("drop a demo role"))?;
        }
        Ok(())
    }

    async fn create_role(&self, name: &str, extra: &str, password: &SecretString) -> Result<()> {
        self.admin
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN {extra}",
                escape_identifier(name)
            ))
            .await
            .map_err(db_err(
                "create a demo role (the --database-url login needs CREATEROLE)",
            ))?;
        self.admin
            .batch_execute(&alter_password_sql(name, password))
            .await
            .map_err(db_err("set a demo password"))
    }

    fn secret(&self, user: &str, password: &SecretString, master: Option<&str>) -> SecretString {
        let mut doc = json!({
            "engine": "postgres",
            "host": self.host,
            "port": self.port,
            "username": user,
            "password": password.expose(),
            "dbname": self.dbname,
            "ssl": self.ssl,
        });
        if let Some(arn) = master {
            doc["masterarn"] = json!(arn);
        }
        SecretString::new(doc.to_string())
    }

    async fn play(&mut self, options: &DemoOptions) -> Result<()> {
        let started = Instant::now();
        self.drop_roles().await?;
        let policy = PasswordPolicy::from_env(self.engine.default_excluded_characters())?;
        let user_pw = policy.generate()?;
        let app_pw = policy.generate()?;
        let master_pw = policy.generate()?;
        self.create_role(USER, "", &user_pw).await?;
        self.create_role(APP, "CONNECTION LIMIT 20", &app_pw)
            .await?;
        self.create_role(MASTER, "CREATEROLE", &master_pw).await?;
        // The master must be able to grant the app role to its clone.
        self.admin
            .batch_execute(&format!(
                "GRANT {} TO {} WITH ADMIN OPTION",
                escape_identifier(APP),
                escape_identifier(MASTER)
            ))
            .await
            .map_err(db_err("grant the demo app role to the demo master"))?;

        // Does this server check passwords? Try a login with a wrong one.
        let wrong = policy.generate()?;
        let probe = DbSecret::parse(
            &self.secret(USER, &wrong, None),
            "probe",
            "probe",
            Require::Connection,
        )?;
        self.proof = match self.engine.connect(&probe, "probe").await {
            Ok(_) => Proof::Verifiers,
            Err(Error::LoginRefused { .. }) => Proof::Logins,
            Err(e) => return Err(e),
        };
        let target = format!("{}:{}/{}", self.host, self.port, self.dbname);
        self.say(format!(
            "Rotor demo against PostgreSQL at {target}, local store {}",
            options.store_path.display()
        ));
        self.say(match self.proof {
            Proof::Logins => "proof: this server checks passwords, so each rotation is proven by logins (old refused, new accepted)".to_string(),
            Proof::Verifiers => "proof: this server accepts any password on this connection (trust auth), so logins prove nothing; each rotation is proven by checking the role's stored SCRAM verifier against the new and old passwords".to_string(),
        });

        let single = self
            .store
            .put_current("demo/single-user", &self.secret(USER, &user_pw, None))?;
        let master = self
            .store
            .put_current("demo/master", &self.secret(MASTER, &master_pw, None))?;
        let multi = self.store.put_current(
            "demo/alternating-users",
            &self.secret(APP, &app_pw, Some(&master)),
        )?;

        for round in 1..=2 {
            self.rotate_and_prove(
                &single,
                Strategy::SingleUser,
                &format!("single-user rotation {round}"),
            )
            .await?;
        }
        self.rotate_and_prove(
            &multi,
            Strategy::AlternatingUsers,
            "alternating-users rotation",
        )
        .await?;
        let total = started.elapsed().as_secs_f64();
        self.say(format!("all proofs passed in {total:.2} s"));
        Ok(())
    }

    async fn rotate_and_prove(&mut self, arn: &str, strategy: Strategy, title: &str) -> Result<()> {
        let before = self.store.describe(arn).await?;
        let old_version = before
            .version_with(AWSCURRENT)
            .unwrap_or_default()
            .to_string();
        let old = self.value(arn, &old_version).await?;
        let rotator = match strategy {
            Strategy::SingleUser => &self.rotator_single,
            Strategy::AlternatingUsers => &self.rotator_multi,
        };
        let report = rotator.rotate(arn).await?;
        let after = self.store.describe(arn).await?;
        let new = self.value(arn, &report.token).await?;
        let mut lines = String::new();
        let timings: Vec<String> = report
            .steps
            .iter()
            .map(|s| format!("{} {:.1} ms ({})", s.step, s.millis, s.outcome.as_str()))
            .collect();
        let total: f64 = report.steps.iter().map(|s| s.millis).sum();
        let _ = writeln!(lines, "\n{title}: {total:.1} ms — {}", timings.join(", "));
        let labels_ok = after.version_with(AWSCURRENT) == Some(report.token.as_str())
            && after.version_with(AWSPREVIOUS) == Some(old_version.as_str())
            && after.stages_of(&report.token).len() == 1;
        let _ = writeln!(
            lines,
            "  labels: AWSCURRENT {} -> {}, AWSPREVIOUS -> {}, AWSPENDING removed: {}",
            short(&old_version),
            short(&report.token),
            short(&old_version),
            if labels_ok { "ok" } else { "WRONG" }
        );
        let (new_ok, old_refused) = self.prove(&new, &old, strategy).await?;
        match strategy {
            Strategy::SingleUser => {
                let _ = writeln!(
                    lines,
                    "  user {}: new password accepted: {}, old password refused: {}",
                    new.username,
                    yes(new_ok),
                    yes(old_refused)
                );
            }
            Strategy::AlternatingUsers => {
                let _ = writeln!(
                    lines,
                    "  new user {} accepted with the new password: {}; previous user {} still accepted (kept as AWSPREVIOUS): {}",
                    new.username,
                    yes(new_ok),
                    old.username,
                    yes(old_refused)
                );
            }
        }
        self.out.push_str(&lines);
        if !(labels_ok && new_ok && old_refused) {
            return Err(Error::Config(format!(
                "{title}: a proof failed; see the lines above"
            )));
        }
        Ok(())
    }

    async fn value(&self, arn: &str, version: &str) -> Result<DbSecret> {
        self.store
            .db_secret(arn, VersionRef::Id(version), Require::Connection)
            .await
    }

    /// (new credentials work, old credentials no longer work — or, for
    /// alternating users, the previous user still works).
    async fn prove(
        &self,
        new: &DbSecret,
        old: &DbSecret,
        strategy: Strategy,
    ) -> Result<(bool, bool)> {
        let works = |s: &DbSecret| {
            let s = s.clone();
            async move {
                match self.proof {
                    Proof::Logins => match self.engine.connect(&s, "demo").await {
                        Ok(_) => Ok(true),
                        Err(Error::LoginRefused { .. }) => Ok(false),
                        Err(e) => Err(e),
                    },
                    Proof::Verifiers => self.verifier_matches(&s.username, &s.password).await,
                }
            }
        };
        let new_ok = works(new).await?;
        let old_ok = works(old).await?;
        Ok(match strategy {
            Strategy::SingleUser => (new_ok, !old_ok),
            Strategy::AlternatingUsers => (new_ok, old_ok),
        })
    }

    async fn verifier_matches(&self, user: &str, password: &SecretString) -> Result<bool> {
        let row = self
            .admin
            .query_opt("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&user])
            .await
            .map_err(db_err("read pg_authid (the --database-url login must be a superuser on a trust-auth server)"))?;
        let stored: Option<String> = row.and_then(|r| r.get(0));
        Ok(stored.is_some_and(|v| scram_verifier_matches(&v, password.expose())))
    }
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}
