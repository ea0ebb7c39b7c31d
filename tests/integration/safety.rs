//! Lockout and escalation paths of rotation (issue 9), each shown against the
//! real servers: a secret writer who tries to use the master as a deputy, a
//! clone Rotor did not make, powers that must not be cloned, a clone that
//! must behave like its user, a look-alike replica host, TLS downgrades and
//! servers that hang. Every scenario here failed on the code before its fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::Trial;
use rotor::engine::Engine;
use rotor::store::SecretsManagerStore;
use rotor::{PasswordPolicy, RotationEvent, Rotator, Step, Strategy};
use rotor_tests::{Kind, TestDb, TestEnv, leaks, new_password, pg_ident, unique};
use serde_json::{Value, json};

use crate::rotation::{Fixture, fixture};
use crate::trial;

type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    for kind in Kind::ALL {
        let k = kind.name();
        t.push(trial(
            format!(
                "safety::{k}::alternating_users::confused_deputy_refused_before_the_master_acts"
            ),
            env,
            move |env| confused_deputy(TestDb::new(kind, &env)),
        ));
    }
    let mut add = |name: &str, f: fn(TestEnv) -> Scenario| {
        t.push(trial(format!("safety::postgres::{name}"), env, f));
    };
    add(
        "alternating_users::unmarked_clone_is_never_taken_over",
        |e| Box::pin(unmarked_clone(e)),
    );
    add(
        "alternating_users::base_of_an_unmarked_clone_is_never_taken_over",
        |e| Box::pin(unmarked_clone_as_current(e)),
    );
    add(
        "alternating_users::superuser_like_powers_refused_unless_master_opts_in",
        |e| Box::pin(privileged_refused(e)),
    );
    add(
        "alternating_users::noinherit_user_clone_has_its_privileges_and_shares_objects",
        |e| Box::pin(noinherit_and_objects(e)),
    );
    add(
        "alternating_users::per_role_settings_copied_to_the_clone",
        |e| Box::pin(settings_copied(e)),
    );
    add(
        "alternating_users::revoked_membership_does_not_come_back",
        |e| Box::pin(revoked_membership(e)),
    );
    add("alternating_users::look_alike_replica_host_refused", |e| {
        Box::pin(look_alike_replica(e))
    });
    add("tls::master_never_weaker_than_its_own_secret", |e| {
        Box::pin(master_tls(e))
    });
    add("tls::fallback_login_uses_the_current_secrets_tls", |e| {
        Box::pin(fallback_tls(e))
    });
    add("tls::cleartext_password_request_refused_without_tls", |e| {
        Box::pin(cleartext_refused(e))
    });
    add(
        "time::server_that_never_answers_times_out_within_the_deadline",
        |e| Box::pin(hung_server(e)),
    );
    add(
        "time::statement_waiting_on_a_lock_times_out_and_changes_nothing",
        |e| Box::pin(lock_wait(e)),
    );
    add(
        "alternating_users::member_clone_with_objects_of_its_own_is_never_taken_over",
        |e| Box::pin(member_clone_with_objects(e)),
    );
    add("time::statement_bound_shrinks_with_the_time_left", |e| {
        Box::pin(bound_shrinks(e))
    });
    add(
        "single_user::recovery_tries_the_newest_unlabelled_versions",
        |e| Box::pin(recovery_newest(e)),
    );
    t.push(trial(
        "safety::store::secretsmanager_list_versions_reads_every_page_newest_first",
        env,
        list_versions_pages,
    ));
    t
}

// ---- helpers ---------------------------------------------------------------

/// Stores `value` as the new AWSCURRENT (what a writer of the secret can do).
async fn put_current(f: &Fixture, arn: &str, value: &Value) {
    leaks::remember(&value.to_string());
    f.moto
        .client
        .put_secret_value()
        .secret_id(arn)
        .secret_string(value.to_string())
        .send()
        .await
        .expect("put secret value");
}

async fn master_arn(f: &Fixture) -> String {
    f.current_json().await["masterarn"]
        .as_str()
        .expect("masterarn")
        .to_string()
}

/// createSecret then setSecret of a fresh rotation; setSecret's result.
async fn create_and_set(f: &Fixture, rotator: &Rotator) -> rotor::Result<rotor::Outcome> {
    let token = f.moto.start_rotation(&f.arn).await;
    f.step(rotator, Step::CreateSecret, &token)
        .await
        .expect("createSecret");
    let result = f.step(rotator, Step::SetSecret, &token).await;
    f.remember_values().await;
    result
}

/// A plaintext session as `user` on the test cluster (it accepts plaintext
/// and checks passwords), for running SQL as the application would.
async fn login_as(env: &TestEnv, user: &str, password: &str) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&env.pg_host)
        .port(env.pg_port)
        .user(user)
        .password(password)
        .dbname(&env.pg_db);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("login as {user}: {e}"));
    tokio::spawn(connection);
    client
}

/// Logs in with the AWSCURRENT credentials of the fixture.
async fn login_current(f: &Fixture) -> (String, tokio_postgres::Client) {
    let current = f.current_json().await;
    let user = current["username"].as_str().expect("username").to_string();
    let client = login_as(&f.db.env, &user, current["password"].as_str().expect("pw")).await;
    (user, client)
}

fn pg(f: &Fixture) -> &tokio_postgres::Client {
    f.admin.pg()
}

/// setSecret of a fresh rotation must fail with `Refused` and leave
/// `role`'s password as it was; returns the error for further checks.
async fn refused_and_unchanged(f: &Fixture, role: &str, why: &str) -> rotor::Error {
    let before = f.admin.stored_credential(role).await;
    let err = create_and_set(f, &f.rotator()).await.expect_err(why);
    assert_eq!(err.kind(), "Refused", "{err}");
    assert_eq!(
        f.admin.stored_credential(role).await,
        before,
        "the password of {role} is unchanged"
    );
    err
}

/// Another session changes `user` and keeps its transaction open (holding
/// the role's row) for `secs` seconds, then rolls back.
pub(crate) async fn hold_role_row(
    env: &TestEnv,
    user: &str,
    secs: u64,
) -> tokio::task::JoinHandle<()> {
    let holder = env.admin().await;
    holder
        .batch_execute(&format!(
            "BEGIN; ALTER ROLE {} CONNECTION LIMIT 5",
            pg_ident(user)
        ))
        .await
        .expect("hold the role's row");
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let _ = holder.batch_execute("ROLLBACK").await;
    })
}

// ---- 2. confused deputy ----------------------------------------------------

async fn confused_deputy(db: TestDb) {
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_deputy"),
        json!({}),
    )
    .await;
    // A DBA's user whose password the secret's writer does not know.
    let victim = unique("rotor_dba");
    f.admin.create_user(&victim, &new_password()).await;
    let mut forged = f.current_json().await;
    forged["username"] = json!(victim);
    forged["password"] = json!("a-guess-that-does-not-log-in-1");
    put_current(&f, &f.arn, &forged).await;
    let current = f.current_version().await;
    let err = create_and_set(&f, &f.rotator())
        .await
        .expect_err("setSecret must refuse to act for a user whose AWSCURRENT does not log in");
    assert_eq!(err.kind(), "LoginRefused", "{err}");
    assert!(
        err.to_string().contains("before it acts as master"),
        "{err}"
    );
    assert_eq!(
        f.admin.stored_credential(&format!("{victim}_clone")).await,
        None,
        "no clone of the victim was made"
    );
    assert_eq!(f.current_version().await, current, "AWSCURRENT unchanged");
}

// ---- 2. never take over a role Rotor did not make --------------------------

async fn unmarked_clone(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_unmarked"),
        json!({}),
    )
    .await;
    let clone = format!("{}_clone", f.user);
    f.admin.create_user(&clone, &new_password()).await;
    let err = refused_and_unchanged(
        &f,
        &clone,
        "an existing clone Rotor did not make must not be taken over",
    )
    .await;
    assert!(
        err.to_string().contains("COMMENT ON ROLE"),
        "says how to mark it: {err}"
    );
}

async fn unmarked_clone_as_current(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    // The secret's writer knows the password of some role named like a
    // clone, and points AWSCURRENT at it: the next user would be the base.
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_target"),
        json!({}),
    )
    .await;
    let decoy = format!("{}_clone", f.user);
    let decoy_pw = new_password();
    f.admin.create_user(&decoy, &decoy_pw).await;
    let mut forged = f.current_json().await;
    forged["username"] = json!(decoy);
    forged["password"] = json!(decoy_pw.expose());
    put_current(&f, &f.arn, &forged).await;
    refused_and_unchanged(
        &f,
        &f.user,
        "the base of a clone Rotor did not make must not be taken over",
    )
    .await;
}

// ---- 2. superuser-like powers ------------------------------------------------

async fn privileged_refused(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_priv"),
        json!({}),
    )
    .await;
    let clone = format!("{}_clone", f.user);
    pg(&f)
        .batch_execute(&format!("ALTER ROLE {} CREATEROLE", pg_ident(&f.user)))
        .await
        .expect("make the user privileged");
    let err = create_and_set(&f, &f.rotator())
        .await
        .expect_err("a CREATEROLE user must not be cloned without the opt-in");
    assert_eq!(err.kind(), "Refused", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("CREATEROLE") && text.contains("rotor_allow_privileged_clone"),
        "names the power and the opt-in: {text}"
    );
    assert_eq!(
        f.admin.stored_credential(&clone).await,
        None,
        "no clone made"
    );
    // The app secret cannot opt in for itself…
    let mut app = f.current_json().await;
    app["rotor_allow_privileged_clone"] = json!(true);
    put_current(&f, &f.arn, &app).await;
    let err = create_and_set(&f, &f.rotator())
        .await
        .expect_err("app secret opt-in ignored");
    assert_eq!(err.kind(), "Refused", "{err}");
    // …the master secret can.
    let master = master_arn(&f).await;
    let mut value = f.master_json().await;
    value["rotor_allow_privileged_clone"] = json!(true);
    put_current(&f, &master, &value).await;
    let rotator = f.rotator();
    let (_, token) = f.rotate(&rotator).await;
    assert!(f.logs_in(&f.secret(&token).await).await, "clone logs in");
}

// ---- 6. the clone behaves like the user ------------------------------------

async fn noinherit_and_objects(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_noinh"),
        json!({}),
    )
    .await;
    let schema = unique("rotor_schema");
    let u = pg_ident(&f.user);
    pg(&f)
        .batch_execute(&format!(
            "ALTER ROLE {u} NOINHERIT; CREATE SCHEMA {s}; GRANT USAGE, CREATE ON SCHEMA {s} TO {u}; CREATE TABLE {s}.orders (id int); GRANT SELECT ON {s}.orders TO {u}",
            s = pg_ident(&schema)
        ))
        .await
        .expect("setup");
    let rotator = f.rotator();
    f.rotate(&rotator).await;
    let (user, clone) = login_current(&f).await;
    assert!(user.ends_with("_clone"));
    clone
        .query(
            &format!("SELECT count(*) FROM {}.orders", pg_ident(&schema)),
            &[],
        )
        .await
        .expect("the clone reads what the NOINHERIT user may read");
    clone
        .batch_execute(&format!(
            "CREATE TABLE {}.made_by_clone (id int); INSERT INTO {0}.made_by_clone VALUES (1)",
            pg_ident(&schema)
        ))
        .await
        .expect("the clone creates a table");
    drop(clone);
    f.rotate(&rotator).await;
    let (user, base) = login_current(&f).await;
    assert_eq!(user, f.user);
    base.query(
        &format!("SELECT id FROM {}.made_by_clone", pg_ident(&schema)),
        &[],
    )
    .await
    .expect("what the clone created stays usable by the user");
}

async fn settings_copied(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_settings"),
        json!({}),
    )
    .await;
    pg(&f)
        .batch_execute(&format!(
            "ALTER ROLE {u} SET search_path = app, public; ALTER ROLE {u} IN DATABASE {d} SET work_mem = '8MB'",
            u = pg_ident(&f.user),
            d = pg_ident(&env.pg_db)
        ))
        .await
        .expect("settings");
    let rotator = f.rotator();
    f.rotate(&rotator).await;
    let (_, clone) = login_current(&f).await;
    let show = |name: &'static str| {
        let clone = &clone;
        async move {
            clone
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .expect("show")
                .get::<_, String>(0)
        }
    };
    assert_eq!(show("search_path").await, "app, public");
    assert_eq!(show("work_mem").await, "8MB");
    // A second rotation back and forth changes nothing more.
    f.rotate(&rotator).await;
    f.rotate(&rotator).await;
    let (_, clone) = login_current(&f).await;
    let path: String = clone
        .query_one("SHOW search_path", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(path, "app, public");
}

// ---- 5. exactly the user's privileges ---------------------------------------

async fn revoked_membership(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_revoke"),
        json!({}),
    )
    .await;
    let group = unique("rotor_readers");
    let table = unique("rotor_secret_table");
    pg(&f)
        .batch_execute(&format!(
            "CREATE ROLE {g} NOLOGIN; CREATE TABLE public.{t} (id int); GRANT SELECT ON public.{t} TO {g}; GRANT {g} TO {u}",
            g = pg_ident(&group),
            t = pg_ident(&table),
            u = pg_ident(&f.user)
        ))
        .await
        .expect("setup");
    let rotator = f.rotator();
    f.rotate(&rotator).await; // the clone is made while the user is a reader
    pg(&f)
        .batch_execute(&format!(
            "REVOKE {} FROM {}",
            pg_ident(&group),
            pg_ident(&f.user)
        ))
        .await
        .expect("revoke");
    f.rotate(&rotator).await;
    f.rotate(&rotator).await; // the clone is current again
    let (user, clone) = login_current(&f).await;
    assert!(user.ends_with("_clone"));
    let read = clone
        .query(&format!("SELECT * FROM public.{}", pg_ident(&table)), &[])
        .await;
    assert!(
        read.is_err(),
        "the clone must lose what was revoked from the user"
    );
}

// ---- 3. replica check -------------------------------------------------------

async fn look_alike_replica(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let (primary_host, replica, _) = env.rds_primary_and_replica().await;
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_lookalike"),
        json!({"ssl": false}),
    )
    .await;
    let mut master = f.master_json().await;
    master["host"] = json!(primary_host);
    master["ssl"] = json!(false);
    let master_arn = f
        .moto
        .create_secret(&unique("rotor/prim-master"), &master.to_string())
        .await;
    // Same first label as the replica, somebody else's domain.
    let evil_host = format!("{replica}.evil.example");
    let mut value = f.current_json().await;
    value["host"] = json!(evil_host);
    value["masterarn"] = json!(master_arn);
    let arn = f
        .moto
        .create_secret(&unique("rotor/lookalike"), &value.to_string())
        .await;
    let rotator = env.rds_rotator(&[&primary_host, &evil_host]);
    let token = f.moto.start_rotation(&arn).await;
    let event = |step: Step| RotationEvent {
        step: step.as_str().into(),
        secret_id: arn.clone(),
        token: token.clone(),
        rotation_token: None,
    };
    rotator
        .handle(&event(Step::CreateSecret))
        .await
        .expect("createSecret");
    for v in f.moto.all_values(&arn).await {
        leaks::remember(&v);
    }
    let err = rotator
        .handle(&event(Step::SetSecret))
        .await
        .expect_err("a host that only shares the replica's first label is not the replica");
    assert_eq!(err.kind(), "BadSecret", "{err}");
    assert_eq!(
        f.admin
            .stored_credential(&format!("{}_clone", f.user))
            .await,
        None,
        "nothing was created"
    );
}

// ---- 7. TLS -----------------------------------------------------------------

async fn master_tls(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    // The app secret's writer asks for plaintext; the master secret says
    // nothing about TLS, so the master must still try verified TLS first.
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_mtls"),
        json!({"ssl": false}),
    )
    .await;
    let master = master_arn(&f).await;
    let mut value = f.master_json().await;
    value.as_object_mut().expect("object").remove("ssl");
    put_current(&f, &master, &value).await;
    // An engine that does not trust the server's CA: verified TLS fails, so
    // any master login that succeeds went over plaintext.
    let rotator = Rotator::new(
        Arc::new(SecretsManagerStore::new(env.sm_client())),
        Arc::new(env.engine_with_ca(&env.wrong_ca)),
        Strategy::AlternatingUsers,
        PasswordPolicy::with_default_exclusions(":/@\"'\\"),
    );
    let err = create_and_set(&f, &rotator)
        .await
        .expect_err("the master must not follow the app secret into plaintext");
    assert_eq!(err.kind(), "Tls", "{err}");
    assert_eq!(
        f.admin
            .stored_credential(&format!("{}_clone", f.user))
            .await,
        None
    );
}

/// Lines of the test cluster's log that authorised `user`'s connections.
fn authorised_connections(env: &TestEnv, user: &str) -> Vec<String> {
    // Lossy: the log holds whatever bytes clients sent (PostgreSQL cuts a
    // long user name at 63 bytes, possibly inside a UTF-8 character), and
    // one such line must not hide every other.
    let log = std::fs::read(&env.pg_log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let needle = format!("connection authorized: user={user} ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

async fn fallback_tls(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let user = unique("rotor_fbtls");
    let f = fixture(&db, Strategy::SingleUser, &user, json!({"ssl": false})).await;
    // AWSPREVIOUS (the only working password) says plaintext; AWSCURRENT,
    // whose password was lost, says TLS. The fallback login must use TLS.
    let mut current = f.current_json().await;
    current["ssl"] = json!(true);
    current["password"] = json!("lost-password-that-fails-1");
    put_current(&f, &f.arn, &current).await;
    let rotator = f.rotator();
    create_and_set(&f, &rotator)
        .await
        .expect("setSecret through the previous password");
    // The server writes its log a moment later under load: wait for it (bounded).
    let mut lines = authorised_connections(&env, &user);
    for _ in 0..30 {
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lines = authorised_connections(&env, &user);
    }
    assert!(!lines.is_empty(), "the server log shows the logins");
    for line in &lines {
        assert!(
            line.contains("SSL enabled"),
            "every login of {user} used TLS: {line}"
        );
    }
}

/// One length-prefixed message of the startup phase (no type byte).
async fn read_message(sock: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    sock.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// A server that asks for the password in cleartext over plaintext (as a
/// man in the middle who stripped TLS would) and records whether it got it.
async fn cleartext_server() -> (u16, tokio::sync::mpsc::Receiver<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some(first) = read_message(&mut sock).await else {
                    return;
                };
                if first == [0x04, 0xd2, 0x16, 0x2f] {
                    // SSLRequest: no TLS here; then the startup message.
                    let _ = sock.write_all(b"N").await;
                    if read_message(&mut sock).await.is_none() {
                        return;
                    }
                }
                let _ = sock.write_all(b"R\0\0\0\x08\0\0\0\x03").await; // cleartext, please
                let mut reply = [0u8; 1];
                let got_password =
                    tokio::time::timeout(Duration::from_secs(3), sock.read_exact(&mut reply))
                        .await
                        .is_ok_and(|r| r.is_ok() && reply[0] == b'p');
                let _ = tx.send(got_password).await;
            });
        }
    });
    (port, rx)
}

async fn cleartext_refused(env: TestEnv) {
    let (port, mut answers) = cleartext_server().await;
    let engine = env.engine();
    for ssl in [json!(false), Value::Null] {
        let mut doc = json!({"engine": "postgres", "host": "127.0.0.1", "port": port, "username": "u", "password": "would-be-stolen-pw-1", "dbname": "d"});
        if !ssl.is_null() {
            doc["ssl"] = ssl.clone();
        }
        let secret = rotor::DbSecret::parse(
            &rotor::SecretString::new(doc.to_string()),
            "mitm",
            "v",
            rotor::secret::Require::Connection,
        )
        .expect("parse");
        let result = tokio::time::timeout(Duration::from_secs(10), engine.connect(&secret, "test"))
            .await
            .expect("bounded");
        let err = result
            .err()
            .unwrap_or_else(|| panic!("ssl {ssl}: login must fail"));
        assert!(err.to_string().contains("cleartext"), "ssl {ssl}: {err}");
        let got = tokio::time::timeout(Duration::from_secs(5), answers.recv())
            .await
            .expect("server answered")
            .expect("a result");
        assert!(
            !got,
            "ssl {ssl}: the password was sent to a server asking for cleartext"
        );
    }
}

// ---- 8. bounded time --------------------------------------------------------

async fn hung_server(env: TestEnv) {
    // Accepts TCP (and reads what it is sent) but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..2 {
            if let Ok(Ok((sock, _))) =
                tokio::time::timeout(Duration::from_secs(30), listener.accept()).await
            {
                held.push(sock);
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let engine = env.engine();
    for ssl in [json!(false), json!(true)] {
        let secret = rotor::DbSecret::parse(
            &rotor::SecretString::new(
                json!({"engine": "postgres", "host": "127.0.0.1", "port": port, "username": "u", "password": "irrelevant-pw-123", "dbname": "d", "ssl": ssl}).to_string(),
            ),
            "hung",
            "v",
            rotor::secret::Require::Connection,
        )
        .expect("parse");
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(4);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            rotor::deadline::scope(Some(deadline), engine.connect(&secret, "test")),
        )
        .await
        .unwrap_or_else(|_| panic!("ssl {ssl}: the login hung past the function's deadline"));
        let err = result.err().expect("no login");
        assert_eq!(err.kind(), "Timeout", "ssl {ssl}: {err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}"))
                && err.to_string().contains("handshake"),
            "names the server and what timed out: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "ended before the deadline"
        );
    }
}

async fn lock_wait(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(&db, Strategy::SingleUser, &unique("rotor_lock"), json!({})).await;
    let before = f.admin.stored_credential(&f.user).await;
    let release = hold_role_row(&env, &f.user, 12).await;
    let rotator = f.rotator();
    let token = f.moto.start_rotation(&f.arn).await;
    f.step(&rotator, Step::CreateSecret, &token)
        .await
        .expect("createSecret");
    let deadline = Instant::now() + Duration::from_secs(5);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        rotor::deadline::scope(Some(deadline), f.step(&rotator, Step::SetSecret, &token)),
    )
    .await
    .expect("bounded");
    f.remember_values().await;
    let err = result.expect_err("setSecret must give up while the row is locked");
    assert_eq!(err.kind(), "Timeout", "{err}");
    assert!(err.is_retryable());
    release.await.expect("release");
    assert_eq!(
        f.admin.stored_credential(&f.user).await,
        before,
        "the server rolled the change back: the password is unchanged"
    );
}

// ---- 10. recovery and version listing ----------------------------------------

async fn recovery_newest(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::SingleUser,
        &unique("rotor_recover"),
        json!({}),
    )
    .await;
    let mut doc = f.current_json().await;
    // Abandoned rotations left unlabelled versions; only the newest holds the
    // password the database has now. AWSCURRENT and AWSPREVIOUS were lost.
    let working = new_password();
    let mut ids = Vec::new();
    for n in 0..5 {
        let password = if n == 4 {
            working.expose().to_string()
        } else {
            format!("stale-password-{n}-x9")
        };
        doc["password"] = json!(password);
        leaks::remember(&password);
        let id = uuid::Uuid::new_v4().to_string();
        f.moto
            .client
            .put_secret_value()
            .secret_id(&f.arn)
            .client_request_token(&id)
            .secret_string(doc.to_string())
            .version_stages("rotor-test")
            .send()
            .await
            .expect("put version");
        ids.push(id);
    }
    f.moto
        .client
        .update_secret_version_stage()
        .secret_id(&f.arn)
        .version_stage("rotor-test")
        .remove_from_version_id(ids.last().expect("ids"))
        .send()
        .await
        .expect("unlabel");
    for lost in ["lost-current-password-1", "lost-previous-password-1"] {
        doc["password"] = json!(lost);
        put_current(&f, &f.arn, &doc).await;
    }
    f.admin.set_password(&f.user, &working).await;
    let rotator = f.rotator();
    let outcome = create_and_set(&f, &rotator)
        .await
        .expect("setSecret finds the newest working version");
    assert_eq!(outcome, rotor::Outcome::PasswordSet);
}

/// A Secrets Manager endpoint that answers ListSecretVersionIds in two pages
/// (moto answers in one), newest version on the second page.
async fn two_page_endpoint() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok(Ok((mut sock, _))) =
                tokio::time::timeout(Duration::from_secs(20), listener.accept()).await
            else {
                return;
            };
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            // Headers, then the body by Content-Length.
            let body = loop {
                let Ok(n) = sock.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                request.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + len {
                        break text[end + 4..].to_string();
                    }
                }
            };
            let second = body.contains("\"NextToken\":\"page-2\"");
            let reply = if second {
                json!({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:paged-AbCdEf", "Name": "paged",
                       "Versions": [{"VersionId": "newest-on-page-2", "VersionStages": [], "CreatedDate": 1_700_000_100.5}]})
            } else {
                json!({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:paged-AbCdEf", "Name": "paged",
                       "Versions": [{"VersionId": "older-on-page-1", "VersionStages": ["AWSCURRENT"], "CreatedDate": 1_700_000_100.25}],
                       "NextToken": "page-2"})
            }
            .to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = sock.write_all(response.as_bytes()).await;
        }
    });
    url
}

async fn list_versions_pages(env: TestEnv) {
    use rotor::store::SecretStore;
    let url = two_page_endpoint().await;
    let store = SecretsManagerStore::new(env.sm_client_at(&url));
    let versions = store.list_versions("paged").await.expect("list");
    assert_eq!(
        versions,
        vec![
            "newest-on-page-2".to_string(),
            "older-on-page-1".to_string()
        ],
        "every page, newest first to the sub-second"
    );
}

// ---- review follow-ups --------------------------------------------------------

async fn member_clone_with_objects(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::AlternatingUsers,
        &unique("rotor_owned"),
        json!({}),
    )
    .await;
    // Somebody's role that happens to be named like the clone, with a table
    // of its own; up to PostgreSQL 15 the user may grant itself to it.
    let clone = format!("{}_clone", f.user);
    f.admin.create_user(&clone, &new_password()).await;
    let table = unique("rotor_theirs");
    pg(&f)
        .batch_execute(&format!(
            "CREATE TABLE public.{t} (id int); ALTER TABLE public.{t} OWNER TO {c}; GRANT {u} TO {c}",
            t = pg_ident(&table),
            c = pg_ident(&clone),
            u = pg_ident(&f.user)
        ))
        .await
        .expect("setup");
    refused_and_unchanged(
        &f,
        &clone,
        "membership in the user must not make a role with objects of its own Rotor's",
    )
    .await;
}

async fn bound_shrinks(env: TestEnv) {
    let db = TestDb::new(Kind::Postgres, &env);
    let f = fixture(
        &db,
        Strategy::SingleUser,
        &unique("rotor_shrink"),
        json!({}),
    )
    .await;
    let before = f.admin.stored_credential(&f.user).await;
    let release = hold_role_row(&env, &f.user, 14).await;
    let current = f.secret(&f.current_version().await).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(8);
    let engine = env.engine();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        rotor::deadline::scope(Some(deadline), async {
            let mut session = engine.connect(&current, "current").await?;
            // The step did other work after logging in: less time is left
            // for the statement than when the session opened.
            tokio::time::sleep(Duration::from_secs(4)).await;
            session.set_own_password(&f.user, &new_password()).await
        }),
    )
    .await
    .expect("bounded");
    let err = result.expect_err("the change must give up while the row is locked");
    assert_eq!(err.kind(), "Timeout", "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered within the deadline, not {:?} after the start",
        started.elapsed()
    );
    release.await.expect("release");
    assert_eq!(
        f.admin.stored_credential(&f.user).await,
        before,
        "the server rolled the change back"
    );
}
