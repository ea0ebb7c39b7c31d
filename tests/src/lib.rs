//! The integration-test rig: the servers `scripts/test-env` starts, and
//! helpers that play Secrets Manager's part against moto.
//!
//! Everything is reached on loopback only: a password-checking PostgreSQL
//! with TLS (its own cluster) and moto's Secrets Manager, through the real
//! AWS SDK with an endpoint override and static dummy credentials.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_secretsmanager::Client as SmClient;
use aws_sdk_secretsmanager::types::RotationRulesType;
use rotor::dynamic::Dynamic;
use rotor::engine::mysql::MysqlEngine;
use rotor::engine::postgres::PostgresEngine;
use rotor::engine::{ConnectOptions, Engine, TlsSettings};
use rotor::store::SecretStore;
use rotor::store::SecretsManagerStore;
use rotor::{PasswordPolicy, Rotator, SecretString, Strategy};
use serde_json::{Value, json};

pub mod eventbridge;
pub mod faults;
pub mod leaks;
pub mod probe;

/// Settings exported by `scripts/test-env`.
#[derive(Clone, Debug)]
pub struct TestEnv {
    pub moto_url: String,
    pub pg_host: String,
    pub pg_port: u16,
    pub superuser: String,
    pub superpass: String,
    pub pg_db: String,
    pub pg_log: String,
    pub ca: String,
    pub wrong_ca: String,
    pub stub_lambda_arn: String,
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set: run the tests with scripts/test (it starts the servers and exports the settings)")
    })
}

impl TestEnv {
    pub fn from_env() -> Result<TestEnv, String> {
        Ok(TestEnv {
            moto_url: var("ROTOR_TEST_MOTO_URL")?,
            pg_host: var("ROTOR_TEST_PG_HOST")?,
            pg_port: var("ROTOR_TEST_PG_PORT")?
                .parse()
                .map_err(|_| "ROTOR_TEST_PG_PORT is not a port".to_string())?,
            superuser: var("ROTOR_TEST_PG_SUPERUSER")?,
            superpass: var("ROTOR_TEST_PG_SUPERPASS")?,
            pg_db: var("ROTOR_TEST_PG_DB")?,
            pg_log: var("ROTOR_TEST_PG_LOG")?,
            ca: var("ROTOR_TEST_CA")?,
            wrong_ca: var("ROTOR_TEST_WRONG_CA")?,
            stub_lambda_arn: var("ROTOR_TEST_STUB_LAMBDA_ARN")?,
        })
    }

    /// A Secrets Manager client for moto: static credentials, a region, no
    /// retries (fail fast), endpoint override.
    pub fn sm_client(&self) -> SmClient {
        self.sm_client_at(&self.moto_url)
    }

    /// The Secrets Manager store over moto, naming moto's endpoint in errors.
    pub fn sm_store(&self) -> SecretsManagerStore {
        SecretsManagerStore::new(self.sm_client()).with_endpoint_name(&self.moto_url)
    }

    /// Same, through another endpoint (a counting proxy in benchmarks).
    pub fn sm_client_at(&self, url: &str) -> SmClient {
        let creds = aws_sdk_secretsmanager::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "rotor-tests",
        );
        let config = aws_sdk_secretsmanager::Config::builder()
            .behavior_version(aws_sdk_secretsmanager::config::BehaviorVersion::latest())
            .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(url)
            // moto answers HTTP 500 now and then when calls race inside it
            // ("dictionary changed size during iteration"); the SDK retries
            // server errors as it does against the real service.
            .retry_config(
                aws_sdk_secretsmanager::config::retry::RetryConfig::standard()
                    .with_max_attempts(3)
                    .with_initial_backoff(std::time::Duration::from_millis(50)),
            )
            .build();
        SmClient::from_conf(config)
    }

    /// An SDK configuration at `url` with production's retries
    /// (`aws_config`'s defaults: standard mode, 3 attempts, 1 s initial
    /// backoff), for the outage tests. Build the store from it with
    /// `SecretsManagerStore::from_sdk_config`, as the functions do.
    pub fn sdk_config_production_at(&self, url: &str) -> aws_config::SdkConfig {
        sdk_config_at(url, aws_config::retry::RetryConfig::standard())
    }

    pub fn rds_client(&self) -> aws_sdk_rds::Client {
        let creds =
            aws_sdk_rds::config::Credentials::new("testing", "testing", None, None, "rotor-tests");
        let config = aws_sdk_rds::Config::builder()
            .behavior_version(aws_sdk_rds::config::BehaviorVersion::latest())
            .region(aws_sdk_rds::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(&self.moto_url)
            .retry_config(aws_sdk_rds::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_rds::Client::from_conf(config)
    }

    /// A primary instance and its read replica in moto's RDS, on the test
    /// cluster's port: (primary endpoint, replica id, replica endpoint).
    /// The endpoints do not resolve; tests map them with host overrides.
    pub async fn rds_primary_and_replica(&self) -> (String, String, String) {
        let rds = self.rds_client();
        let primary = unique("rotor-primary").replace('_', "-");
        let replica = unique("rotor-replica").replace('_', "-");
        rds.create_db_instance()
            .db_instance_identifier(&primary)
            .engine("postgres")
            .db_instance_class("db.t3.micro")
            .master_username("admin")
            .master_user_password("not-used-1234")
            .allocated_storage(20)
            .port(i32::from(self.pg_port))
            .send()
            .await
            .expect("create primary");
        rds.create_db_instance_read_replica()
            .db_instance_identifier(&replica)
            .source_db_instance_identifier(&primary)
            .send()
            .await
            .expect("create replica");
        let mut hosts = Vec::new();
        for id in [&primary, &replica] {
            let out = rds
                .describe_db_instances()
                .db_instance_identifier(id)
                .send()
                .await
                .expect("describe");
            hosts.push(
                out.db_instances
                    .unwrap_or_default()
                    .remove(0)
                    .endpoint
                    .and_then(|e| e.address)
                    .expect("address"),
            );
        }
        let replica_host = hosts.pop().expect("replica host");
        let primary_host = hosts.pop().expect("primary host");
        assert_ne!(primary_host, replica_host);
        (primary_host, replica, replica_host)
    }

    /// An alternating-users rotator over moto and RDS whose engine trusts
    /// the test CA and dials the test cluster for each of `hosts` (moto's
    /// RDS endpoint names, which do not resolve), verifying TLS for them.
    pub fn rds_rotator(&self, hosts: &[&str]) -> Rotator {
        let ip: std::net::IpAddr = [127, 0, 0, 1].into();
        let engine = PostgresEngine::new(ConnectOptions {
            tls: TlsSettings::with_ca_bundle(Some(self.ca.clone().into())),
            host_overrides: hosts.iter().map(|h| (h.to_string(), ip)).collect(),
            ..ConnectOptions::default()
        });
        Rotator::new(
            Arc::new(self.sm_store()),
            Arc::new(engine),
            Strategy::AlternatingUsers,
            PasswordPolicy::with_default_exclusions(":/@\"'\\"),
        )
        .with_rds(Arc::new(rotor::rds::RdsApi::new(self.rds_client())))
    }

    /// The PostgreSQL engine trusting the test CA.
    pub fn engine_with_ca(&self, ca: &str) -> PostgresEngine {
        PostgresEngine::new(ConnectOptions {
            tls: TlsSettings::with_ca_bundle(Some(ca.into())),
            ..ConnectOptions::default()
        })
    }

    pub fn engine(&self) -> PostgresEngine {
        self.engine_with_ca(&self.ca)
    }

    /// A rotator over moto for the given strategy.
    pub fn rotator(&self, strategy: Strategy) -> Rotator {
        let store = Arc::new(self.sm_store());
        Rotator::new(
            store,
            Arc::new(self.engine()),
            strategy,
            PasswordPolicy::with_default_exclusions(":/@\"'\\"),
        )
        .with_rds(Arc::new(rotor::rds::RdsApi::new(self.rds_client())))
    }

    /// A superuser session on the test cluster.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.pg_host)
            .port(self.pg_port)
            .user(&self.superuser)
            .password(&self.superpass)
            .dbname(&self.pg_db);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot log in to the test cluster as superuser: {e}"));
        tokio::spawn(connection);
        client
    }

    /// A secret value for a user on the test cluster.
    pub fn pg_secret(&self, user: &str, password: &str, extra: Value) -> String {
        let mut doc = json!({
            "engine": "postgres",
            "host": self.pg_host,
            "port": self.pg_port,
            "username": user,
            "password": password,
            "dbname": self.pg_db,
            "ssl": true,
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
            d.extend(e);
        }
        doc.to_string()
    }
}

/// The servers' settings for benchmark `bench`, or the exit to take: none
/// without `--bench` (`cargo test --benches` only builds them), a hint
/// instead of a panic halfway through when scripts/test-env has not run.
pub fn bench_env(bench: &str) -> Result<TestEnv, std::process::ExitCode> {
    let run = format!("eval \"$(scripts/test-env)\" && cargo bench -p rotor-tests --bench {bench}");
    if !std::env::args().any(|a| a == "--bench") {
        println!("{bench} bench: not run; run it with `{run}`");
        return Err(std::process::ExitCode::SUCCESS);
    }
    TestEnv::from_env()
        .and_then(|env| MariaDbEnv::from_env().map(|_| env))
        .map_err(|e| {
            eprintln!("{bench} bench: {e}\n  run: {run}");
            std::process::ExitCode::FAILURE
        })
}

/// The 1, 5 and 15 minute load averages, for the record (benchmarks print it beside their figures).
pub fn load_average() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(text) => format!(
            "{} ({cpus} CPUs)",
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Err(_) => "unknown".into(),
    }
}

/// A secret to rotate, made on a test server: its user (alternating users:
/// with a master that may manage the user and its clone).
pub struct RotatedSecret {
    pub arn: String,
    pub user: String,
    /// Alternating users: (master user, master secret ARN).
    pub master: Option<(String, String)>,
}

impl RotatedSecret {
    /// Creates `user` (and a master) on `db` and the secret(s) in moto;
    /// `extra` keys go into the secret. Every value is remembered for the
    /// leak check.
    pub async fn create(
        db: &TestDb,
        admin: &Admin,
        moto: &MotoService,
        strategy: Strategy,
        user: &str,
        extra: Value,
    ) -> RotatedSecret {
        let password = new_password();
        let mut extra = extra;
        admin.create_user(user, &password).await;
        let master = match strategy {
            Strategy::SingleUser => None,
            Strategy::AlternatingUsers => {
                let master = unique("rotor_master");
                let master_pw = new_password();
                admin.create_master(&master, &master_pw, user).await;
                let master_value = db.secret(&master, master_pw.expose(), json!({}));
                leaks::remember(&master_value);
                let master_arn = moto
                    .create_secret(&unique("rotor/master"), &master_value)
                    .await;
                extra["masterarn"] = json!(master_arn);
                Some((master, master_arn))
            }
        };
        let value = db.secret(user, password.expose(), extra);
        leaks::remember(&value);
        let arn = moto.create_secret(&unique("rotor/test"), &value).await;
        RotatedSecret {
            arn,
            user: user.to_string(),
            master,
        }
    }
}

/// A name no other test run used: `<prefix>_<8 hex>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A password that the policy could generate, for seeding.
pub fn new_password() -> SecretString {
    PasswordPolicy::with_default_exclusions(":/@\"'\\")
        .generate()
        .expect("password policy")
}

/// Creates a login role with a password (set as a verifier, so the
/// plaintext never reaches the server's statement log).
pub async fn create_role(
    admin: &tokio_postgres::Client,
    name: &str,
    password: &SecretString,
    options: &str,
) {
    admin
        .batch_execute(&format!("CREATE ROLE {} LOGIN {options}", pg_ident(name)))
        .await
        .unwrap_or_else(|e| panic!("create role {name}: {e}"));
    admin
        .batch_execute(&rotor::engine::postgres::alter_password_sql(name, password))
        .await
        .unwrap_or_else(|e| panic!("set password of {name}: {e}"));
}

/// The stored verifier of a role (to prove "no new verifier written").
pub async fn verifier(admin: &tokio_postgres::Client, role: &str) -> Option<String> {
    admin
        .query_opt(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("read pg_authid")
        .and_then(|r| r.get(0))
}

/// Plays the parts of Secrets Manager that moto does not (see the testing
/// notes): starting a rotation the way the real service leaves a secret
/// before createSecret, and removing AWSPENDING after finishSecret.
#[derive(Clone)]
pub struct MotoService {
    pub client: SmClient,
    pub stub_lambda_arn: String,
}

impl MotoService {
    pub fn new(env: &TestEnv) -> Self {
        MotoService {
            client: env.sm_client(),
            stub_lambda_arn: env.stub_lambda_arn.clone(),
        }
    }

    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        self.client
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateSecret {name}: {e:?}"))
            .arn
            .expect("arn")
    }

    /// RotateSecret with the stub function: afterwards AWSPENDING names a
    /// fresh token with no value, exactly as before the service's createSecret.
    pub async fn start_rotation(&self, arn: &str) -> String {
        let before = self.labels(arn).await;
        self.client
            .rotate_secret()
            .secret_id(arn)
            .rotation_lambda_arn(&self.stub_lambda_arn)
            .rotation_rules(
                RotationRulesType::builder()
                    .automatically_after_days(30)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("RotateSecret {arn}: {e:?}"));
        let after = self.labels(arn).await;
        after
            .iter()
            .find(|(id, stages)| {
                stages.iter().any(|s| s == "AWSPENDING") && !before.contains_key(*id)
            })
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("RotateSecret staged no new AWSPENDING token: {after:?}"))
    }

    /// Version id → labels, without moto's unlabelled deprecated versions.
    pub async fn labels(&self, arn: &str) -> BTreeMap<String, Vec<String>> {
        let out = self
            .client
            .describe_secret()
            .secret_id(arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeSecret {arn}: {e:?}"));
        out.version_ids_to_stages
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(id, mut s)| {
                s.sort();
                (id, s)
            })
            .collect()
    }

    /// The value of one version id.
    pub async fn value(&self, arn: &str, version: &str) -> Option<String> {
        self.client
            .get_secret_value()
            .secret_id(arn)
            .version_id(version)
            .send()
            .await
            .ok()
            .and_then(|o| o.secret_string)
    }

    /// Every version's value (deprecated ones too): what the leak check
    /// collects as "generated passwords".
    pub async fn all_values(&self, arn: &str) -> Vec<String> {
        let out = self
            .client
            .list_secret_version_ids()
            .secret_id(arn)
            .include_deprecated(true)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ListSecretVersionIds {arn}: {e:?}"));
        let mut values = Vec::new();
        for v in out.versions.unwrap_or_default() {
            if let Some(id) = v.version_id
                && let Some(value) = self.value(arn, &id).await
            {
                values.push(value);
            }
        }
        values
    }

    pub async fn set_rotation_enabled_false(&self, arn: &str) {
        self.client
            .cancel_rotate_secret()
            .secret_id(arn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CancelRotateSecret {arn}: {e:?}"));
    }
}

/// The database servers the conformance suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MariaDb,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Postgres, Kind::MariaDb];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::MariaDb => "mariadb",
        }
    }
}

/// Settings of the test MariaDB (`scripts/test-env`).
#[derive(Clone, Debug)]
pub struct MariaDbEnv {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub pass: String,
    pub db: String,
    pub log: String,
}

impl MariaDbEnv {
    pub fn from_env() -> Result<MariaDbEnv, String> {
        Ok(MariaDbEnv {
            host: var("ROTOR_TEST_MARIADB_HOST")?,
            port: var("ROTOR_TEST_MARIADB_PORT")?
                .parse()
                .map_err(|_| "ROTOR_TEST_MARIADB_PORT is not a port".to_string())?,
            user: var("ROTOR_TEST_MARIADB_USER")?,
            pass: var("ROTOR_TEST_MARIADB_PASS")?,
            db: var("ROTOR_TEST_MARIADB_DB")?,
            log: var("ROTOR_TEST_MARIADB_LOG")?,
        })
    }
}

/// One test database server, whatever its kind.
#[derive(Clone)]
pub struct TestDb {
    pub kind: Kind,
    pub env: TestEnv,
    pub maria: Option<MariaDbEnv>,
}

impl TestDb {
    pub fn new(kind: Kind, env: &TestEnv) -> TestDb {
        let maria = match kind {
            Kind::Postgres => None,
            Kind::MariaDb => Some(MariaDbEnv::from_env().unwrap_or_else(|e| panic!("{e}"))),
        };
        TestDb {
            kind,
            env: env.clone(),
            maria,
        }
    }

    fn maria(&self) -> &MariaDbEnv {
        self.maria.as_ref().expect("MariaDB settings")
    }

    pub fn host(&self) -> &str {
        match self.kind {
            Kind::Postgres => &self.env.pg_host,
            Kind::MariaDb => &self.maria().host,
        }
    }

    pub fn port(&self) -> u16 {
        match self.kind {
            Kind::Postgres => self.env.pg_port,
            Kind::MariaDb => self.maria().port,
        }
    }

    pub fn dbname(&self) -> &str {
        match self.kind {
            Kind::Postgres => &self.env.pg_db,
            Kind::MariaDb => &self.maria().db,
        }
    }

    /// The server's own statement log (PostgreSQL's log, MariaDB's general log).
    pub fn statement_log(&self) -> &str {
        match self.kind {
            Kind::Postgres => &self.env.pg_log,
            Kind::MariaDb => &self.maria().log,
        }
    }

    /// The `engine` value of secrets for this server.
    pub fn engine_key(&self) -> &'static str {
        self.kind.name()
    }

    pub fn engine_with(&self, options: ConnectOptions) -> Arc<dyn Engine> {
        match self.kind {
            Kind::Postgres => Arc::new(PostgresEngine::new(options)),
            Kind::MariaDb => Arc::new(MysqlEngine::new(options)),
        }
    }

    pub fn engine_with_ca(&self, ca: &str) -> Arc<dyn Engine> {
        self.engine_with(ConnectOptions {
            tls: TlsSettings::with_ca_bundle(Some(ca.into())),
            ..ConnectOptions::default()
        })
    }

    pub fn engine(&self) -> Arc<dyn Engine> {
        self.engine_with_ca(&self.env.ca)
    }

    pub fn policy(&self) -> PasswordPolicy {
        PasswordPolicy::with_default_exclusions(self.engine().default_excluded_characters())
    }

    /// A rotator over moto with `engine`.
    pub fn rotator_with(
        &self,
        engine: Arc<dyn Engine>,
        strategy: Strategy,
        policy: PasswordPolicy,
    ) -> Rotator {
        Rotator::new(Arc::new(self.env.sm_store()), engine, strategy, policy)
            .with_rds(Arc::new(rotor::rds::RdsApi::new(self.env.rds_client())))
    }

    pub fn rotator(&self, strategy: Strategy) -> Rotator {
        self.rotator_with(self.engine(), strategy, self.policy())
    }

    /// A secret value for a user of this server (verified TLS by default).
    pub fn secret(&self, user: &str, password: &str, extra: Value) -> String {
        let mut doc = json!({
            "engine": self.engine_key(),
            "host": self.host(),
            "port": self.port(),
            "username": user,
            "password": password,
            "dbname": self.dbname(),
            "ssl": true,
        });
        if let (Value::Object(d), Value::Object(e)) = (&mut doc, extra) {
            d.extend(e);
        }
        doc.to_string()
    }

    pub async fn admin(&self) -> Admin {
        match self.kind {
            Kind::Postgres => Admin::Pg(self.env.admin().await),
            Kind::MariaDb => {
                let m = self.maria();
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(m.host.clone())
                    .tcp_port(m.port)
                    .user(Some(m.user.clone()))
                    .pass(Some(m.pass.clone()))
                    .db_name(Some(m.db.clone()))
                    .prefer_socket(Some(false));
                let conn = mysql_async::Conn::new(opts)
                    .await
                    .unwrap_or_else(|e| panic!("cannot log in to the test MariaDB as root: {e}"));
                Admin::My(tokio::sync::Mutex::new(conn))
            }
        }
    }
}

/// An administrator session on a test server.
pub enum Admin {
    Pg(tokio_postgres::Client),
    My(tokio::sync::Mutex<mysql_async::Conn>),
}

impl Admin {
    pub async fn exec(&self, sql: &str) {
        match self {
            Admin::Pg(c) => c
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                c.lock()
                    .await
                    .query_drop(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// A login user with `password` (sent as a verifier/hash, never plaintext).
    pub async fn create_user(&self, name: &str, password: &SecretString) {
        match self {
            Admin::Pg(c) => create_role(c, name, password, "").await,
            Admin::My(_) => {
                self.exec(&format!(
                    "CREATE USER {} IDENTIFIED BY PASSWORD '{}'",
                    mysql_account(name),
                    rotor::engine::mysql::native_password_hash(password.expose())
                ))
                .await;
                self.exec(&format!(
                    "GRANT SELECT ON rotor_test.* TO {}",
                    mysql_account(name)
                ))
                .await;
            }
        }
    }

    /// A master user that may create and manage `managed`'s alternate.
    pub async fn create_master(&self, name: &str, password: &SecretString, managed: &str) {
        match self {
            Admin::Pg(c) => {
                // pg_signal_backend: ending other users' sessions (RDS's master has it).
                create_role(c, name, password, "CREATEROLE IN ROLE pg_signal_backend").await;
                self.exec(&format!(
                    "GRANT {} TO {} WITH ADMIN OPTION",
                    pg_ident(managed),
                    pg_ident(name)
                ))
                .await;
            }
            Admin::My(_) => {
                self.create_user(name, password).await;
                self.exec(&format!(
                    "GRANT ALL PRIVILEGES ON *.* TO {} WITH GRANT OPTION",
                    mysql_account(name)
                ))
                .await;
            }
        }
    }

    /// The stored credential(s) of a user, to prove "nothing written".
    pub async fn stored_credential(&self, user: &str) -> Option<String> {
        match self {
            Admin::Pg(c) => verifier(c, user).await,
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                let rows: Vec<String> = c
                    .lock()
                    .await
                    .exec("SELECT CONCAT(Host, ':', authentication_string) FROM mysql.user WHERE User = ? ORDER BY Host", (user,))
                    .await
                    .expect("read mysql.user");
                (!rows.is_empty()).then(|| rows.join(","))
            }
        }
    }

    /// How many users' names start with `prefix`.
    pub async fn users_starting_with(&self, prefix: &str) -> i64 {
        match self {
            Admin::Pg(c) => c
                .query_one(
                    "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)",
                    &[&prefix],
                )
                .await
                .expect("count")
                .get(0),
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                let n: Option<i64> = c
                    .lock()
                    .await
                    .exec_first(
                        "SELECT COUNT(*) FROM mysql.user WHERE LEFT(User, CHAR_LENGTH(?)) = ?",
                        (prefix, prefix),
                    )
                    .await
                    .expect("count");
                n.unwrap_or(0)
            }
        }
    }

    /// Text rows of a query (MariaDB: SHOW GRANTS and friends).
    pub async fn rows(&self, sql: &str) -> Vec<String> {
        match self {
            Admin::Pg(c) => c
                .simple_query(sql)
                .await
                .expect("query")
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                })
                .collect(),
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                c.lock()
                    .await
                    .query::<String, _>(sql)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }
}

/// `'name'@'%'` for MariaDB, quoted.
pub fn mysql_account(name: &str) -> String {
    rotor::engine::mysql::account(name, "%")
}

/// `"name"` for PostgreSQL, quoted.
pub fn pg_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Admin {
    /// The PostgreSQL client (PostgreSQL-only scenarios).
    pub fn pg(&self) -> &tokio_postgres::Client {
        match self {
            Admin::Pg(c) => c,
            Admin::My(_) => panic!("a PostgreSQL-only scenario got a MariaDB admin"),
        }
    }

    /// Drops a user if it exists (benchmarks leave the servers as they were).
    pub async fn drop_user(&self, user: &str) -> Result<(), String> {
        match self {
            Admin::Pg(c) => c
                .batch_execute(&format!("DROP ROLE IF EXISTS {}", pg_ident(user)))
                .await
                .map_err(|e| e.to_string()),
            Admin::My(c) => {
                use mysql_async::prelude::Queryable;
                c.lock()
                    .await
                    .query_drop(format!("DROP USER IF EXISTS {}", mysql_account(user)))
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sets a user's password behind Rotor's back (as a restore would).
    pub async fn set_password(&self, user: &str, password: &SecretString) {
        match self {
            Admin::Pg(c) => c
                .batch_execute(&rotor::engine::postgres::alter_password_sql(user, password))
                .await
                .expect("set password"),
            Admin::My(_) => {
                self.exec(&format!(
                    "SET PASSWORD FOR {} = '{}'",
                    mysql_account(user),
                    rotor::engine::mysql::native_password_hash(password.expose())
                ))
                .await
            }
        }
    }
}

/// Dynamic-credential fixtures: a role with its group, owner and master.
/// A role for tests: group, owner, master and the role secret.
pub struct DynamicRole {
    pub db: TestDb,
    pub admin: Admin,
    pub dynamic: Dynamic,
    pub moto: MotoService,
    /// Roles prefix unique to this test, so sweeps see only its roles.
    pub prefix: String,
    pub name: String,
    pub group: String,
    pub owner: String,
}

pub const ALLOWED: &str = "arn:aws:iam::123456789012:role/ci-*";

pub async fn dynamic_role(db: &TestDb, extra: Value) -> DynamicRole {
    let admin = db.admin().await;
    let moto = MotoService::new(&db.env);
    let group = unique("rotor_grp");
    let owner = unique("rotor_own");
    let master = unique("rotor_dmaster");
    let master_pw = new_password();
    match db.kind {
        Kind::Postgres => {
            // Concurrent GRANTs on one schema can fail with "tuple concurrently
            // updated": retry a few times.
            let sql = format!(
                "BEGIN; CREATE ROLE \"{group}\" NOLOGIN; GRANT USAGE, CREATE ON SCHEMA public TO \"{group}\"; CREATE ROLE \"{owner}\" NOLOGIN; COMMIT;"
            );
            let pg = admin.pg();
            for attempt in 0..5 {
                match pg.batch_execute(&sql).await {
                    Ok(()) => break,
                    Err(e) if attempt < 4 => {
                        let _ = pg.batch_execute("ROLLBACK").await;
                        tracing::debug!("retrying role setup: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1)))
                            .await;
                    }
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
            admin.create_master(&master, &master_pw, &group).await;
            admin
                .exec(&format!("GRANT \"{owner}\" TO \"{master}\""))
                .await;
        }
        Kind::MariaDb => {
            admin.exec(&format!("CREATE ROLE `{group}`")).await;
            admin
                .exec(&format!(
                    "GRANT SELECT, CREATE ON rotor_test.* TO `{group}`"
                ))
                .await;
            admin.create_master(&master, &master_pw, &group).await;
            admin
                .exec(&format!(
                    "GRANT `{group}` TO {} WITH ADMIN OPTION",
                    mysql_account(&master)
                ))
                .await;
            // Every test has its own master, but the server has one lease
            // marker role: a master that did not create it needs ADMIN OPTION.
            let marker = rotor::engine::LEASE_MARKER;
            admin
                .exec(&format!("CREATE ROLE IF NOT EXISTS `{marker}`"))
                .await;
            admin
                .exec(&format!(
                    "GRANT `{marker}` TO {} WITH ADMIN OPTION",
                    mysql_account(&master)
                ))
                .await;
        }
    }
    let master_value = db.secret(&master, master_pw.expose(), json!({}));
    leaks::remember(&master_value);
    let master_arn = moto
        .create_secret(&unique("rotor/dmaster"), &master_value)
        .await;
    let prefix = format!("{}/", unique("rotor-roles"));
    let short = unique("r").replace('_', "");
    let name = format!("{prefix}{short}");
    let mut role = json!({
        "engine": db.engine_key(),
        "masterarn": master_arn,
        "dbname": db.dbname(),
        "member_of": [group],
        "owner_role": owner,
        "default_ttl": "15m",
        "max_ttl": "1h",
        "allowed_principals": [ALLOWED],
    });
    if let (Value::Object(r), Value::Object(e)) = (&mut role, extra) {
        r.extend(e);
    }
    moto.create_secret(&name, &role.to_string()).await;
    let store: Arc<dyn SecretStore> = Arc::new(db.env.sm_store());
    let dynamic = Dynamic::new(store, dynamic_options(db)).with_roles_prefix(prefix.clone());
    DynamicRole {
        db: db.clone(),
        admin,
        dynamic,
        moto,
        prefix,
        name,
        group,
        owner,
    }
}

pub fn dynamic_options(db: &TestDb) -> ConnectOptions {
    ConnectOptions {
        tls: TlsSettings::with_ca_bundle(Some(db.env.ca.clone().into())),
        // Every test has its own master, each holding ADMIN OPTION on the
        // lease marker (MariaDB). The marker-squatting test adds a holder of
        // its own (`rotor_squat_…`) for a moment; other tests issuing on the
        // shared server meanwhile must not be refused, so they trust it.
        lease_marker_admins: vec!["rotor_dmaster_*".into(), "rotor_squat_*".into()],
        ..ConnectOptions::default()
    }
}

/// A validator for the subset of JSON Schema that `docs/report-schema.json`
/// uses: `type` (one or several), `required`, `properties`,
/// `additionalProperties` (a schema), `items`, `enum`. Returns every
/// violation with its JSON pointer.
pub fn validate_schema(schema: &Value, value: &Value) -> Vec<String> {
    fn type_ok(t: &str, v: &Value) -> bool {
        match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        }
    }
    fn walk(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !types.iter().any(|t| type_ok(t, value)) {
                errors.push(format!("{path}: expected {types:?}, found {value}"));
                return;
            }
        }
        if let Some(Value::Array(allowed)) = schema.get("enum")
            && !allowed.contains(value)
        {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
        if let Some(obj) = value.as_object() {
            if let Some(Value::Array(required)) = schema.get("required") {
                for r in required.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(r) {
                        errors.push(format!("{path}: missing required {r:?}"));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in obj {
                let sub = format!("{path}/{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => walk(s, v, &sub, errors),
                    None => {
                        if let Some(extra) = schema.get("additionalProperties")
                            && extra.is_object()
                        {
                            walk(extra, v, &sub, errors);
                        }
                    }
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
            for (i, v) in arr.iter().enumerate() {
                walk(items, v, &format!("{path}/{i}"), errors);
            }
        }
    }
    let mut errors = Vec::new();
    walk(schema, value, "", &mut errors);
    errors
}

impl TestEnv {
    /// An SDK configuration for any service in moto: static credentials, a
    /// region, three attempts (moto answers HTTP 500 now and then), the moto
    /// endpoint.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config_at(
            &self.moto_url,
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(std::time::Duration::from_millis(50)),
        )
    }
}

/// Static dummy credentials, a region, `url` and `retry`: moto does not
/// check signatures, and without credentials the SDK would look for them
/// beyond loopback.
fn sdk_config_at(url: &str, retry: aws_config::retry::RetryConfig) -> aws_config::SdkConfig {
    use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "rotor-tests",
        )))
        .endpoint_url(url)
        .retry_config(retry)
        .build()
}

/// The repository's layout, for the tests that check it (events, template).
pub mod layout {
    use std::path::{Path, PathBuf};

    /// Crates under `functions/` that are not Lambda functions (the CLI).
    pub const NOT_FUNCTIONS: &[&str] = &["rotor"];

    /// The repository root (the parent of `tests/`).
    pub fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent directory")
            .to_path_buf()
    }

    /// Whether a function crate is a Secrets Manager rotation function.
    pub fn is_rotation_function(name: &str) -> bool {
        name.starts_with("postgres-") || name.starts_with("mysql-")
    }

    /// The Lambda function crates under `functions/` (directories holding a
    /// Cargo.toml, less [`NOT_FUNCTIONS`]), sorted.
    pub fn function_crates(root: &Path) -> Vec<String> {
        let dir = root.join("functions");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("Cargo.toml").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !NOT_FUNCTIONS.contains(&n.as_str()))
            .collect();
        names.sort();
        assert!(
            !names.is_empty(),
            "no function crate found under {}; is the repository root {}?",
            dir.display(),
            root.display()
        );
        names
    }
}
