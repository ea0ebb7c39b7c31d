//! Hostile input: a generated corpus over every input Rotor parses.
//!
//! The corpus is a list of hostile values (wrong types, missing and extra
//! keys, huge values, NUL bytes, invalid UTF-8 where bytes are possible,
//! Unicode look-alikes and bidirectional marks, SQL meta-characters,
//! `%s`/`{}` markers, names one byte or one multi-byte character over an
//! engine's limit, dbnames a driver could read as connection settings, ARNs
//! of other accounts and partitions, JSON nesting bombs) crossed with the
//! fields of each input kind: secrets, rotation events, role definitions,
//! function URL requests, EventBridge events, settings and the CLI's
//! arguments. Every case must end in a clear error or correct handling,
//! never a panic, and leave the store (and, for the cases that reach a
//! server, the database) unchanged. Parsing cases run in-process against
//! the local store; a smaller set per engine runs whole rotations against
//! the test servers. `hostile::corpus_size` prints the size by category.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libtest_mimic::Trial;
use rotor::dynamic::revoke::{RevokeTarget, from_event};
use rotor::dynamic::{Caller, Dynamic, RoleDefinition};
use rotor::engine::ConnectOptions;
use rotor::engine::mysql::MysqlEngine;
use rotor::engine::postgres::PostgresEngine;
use rotor::password::PasswordPolicy;
use rotor::secret::{DbSecret, Require};
use rotor::store::LocalStore;
use rotor::{Error, RotationEvent, Rotator, SecretString, Strategy};
use rotor_tests::{TestEnv, unique};
use serde_json::{Value, json};

use crate::trial;

/// A password that must never appear in an error message.
const CANARY: &str = "Canary-pw-7f3a9c";
/// Longest error message accepted as clear: a message that quotes a whole
/// megabyte of input is not.
const MAX_MESSAGE: usize = 4096;
/// Cases of one kind in flight at once.
const CONCURRENCY: usize = 16;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut trials = vec![
        trial("hostile::corpus_size", env, |_env| async {
            print_corpus_size();
        }),
        trial("hostile::secrets::parse_and_create_secret", env, |_env| {
            run_kind("secrets", secret_cases(), secret_case)
        }),
        trial("hostile::events::rotation_step", env, |_env| {
            run_kind("events", event_cases(), event_case)
        }),
        trial("hostile::roles::parse", env, |_env| {
            run_kind("roles", role_cases(), role_case)
        }),
        trial("hostile::function_url::issue_credential", env, |_env| {
            run_kind("function_url", url_cases(), url_case)
        }),
        trial("hostile::eventbridge::revoke_on_event", env, |_env| {
            run_kind("eventbridge", eventbridge_cases(), eventbridge_case)
        }),
        trial("hostile::settings::environment", env, |_env| {
            run_kind("settings", settings_cases(), settings_case)
        }),
        trial("hostile::cli::arguments", env, |_env| {
            run_kind("cli", cli_cases(), cli_case)
        }),
    ];
    for kind in rotor_tests::Kind::ALL {
        for strategy in [Strategy::SingleUser, Strategy::AlternatingUsers] {
            trials.push(trial(
                format!(
                    "hostile::{}::{}::rotation_refuses_and_changes_nothing",
                    kind.name(),
                    strategy.name().replace('-', "_")
                ),
                env,
                move |env| db_cases(rotor_tests::TestDb::new(kind, &env), strategy),
            ));
        }
    }
    for kind in rotor_tests::Kind::ALL {
        trials.push(trial(
            format!(
                "hostile::{}::dynamic::issue_with_hostile_role_changes_nothing",
                kind.name()
            ),
            env,
            move |env| dynamic_cases(rotor_tests::TestDb::new(kind, &env)),
        ));
    }
    trials
}

// ---- the hostile values ---------------------------------------------------

/// One hostile value and the class it belongs to (for the size report).
#[derive(Clone, Debug)]
pub(crate) struct Hostile {
    pub(crate) class: &'static str,
    pub(crate) name: String,
    pub(crate) value: Value,
}

fn h(class: &'static str, name: &str, value: impl Into<Value>) -> Hostile {
    Hostile {
        class,
        name: name.to_string(),
        value: value.into(),
    }
}

/// Hostile strings (usable wherever text goes, CLI arguments included).
pub(crate) fn hostile_strings() -> Vec<Hostile> {
    let mut v = vec![
        h("huge", "empty", ""),
        h("huge", "blank", "   "),
        h("huge", "one_megabyte", "x".repeat(1 << 20)),
        h("huge", "long_line_64k", "a".repeat(65_536)),
        h("nul", "nul", "\0"),
        h("nul", "nul_inside", "app\0user"),
        h("nul", "crlf", "app\r\nX-Injected: 1"),
        h("nul", "control_chars", "\u{1b}[31mred\u{7}\u{8}"),
        h("unicode", "rtl_override", "\u{202e}nimda"),
        h("unicode", "rtl_isolate", "app\u{2067}txt.exe\u{2069}"),
        h("unicode", "zero_width", "ap\u{200b}p"),
        h("unicode", "bom", "\u{feff}app"),
        h("unicode", "cyrillic_lookalike", "\u{0430}pp"),
        h("unicode", "fullwidth", "\u{ff41}\u{ff50}\u{ff50}"),
        h("unicode", "combining", "app\u{0301}\u{0301}\u{0301}"),
        h("unicode", "emoji", "\u{1f511}\u{1f480}"),
        h("unicode", "replacement_char", "\u{fffd}\u{fffd}"),
        h("unicode", "noncharacter", "\u{ffff}\u{10ffff}"),
        h("sql", "single_quote", "app'; DROP TABLE users; --"),
        h("sql", "double_quote", "app\"; DROP ROLE postgres; --"),
        h("sql", "backtick", "app`; DROP USER root; --"),
        h("sql", "backslash_quote", "app\\' OR '1'='1"),
        h("sql", "dollar_quote", "$$; DROP TABLE t; $$"),
        h("sql", "comment", "app/* x */--"),
        h("sql", "wildcards", "%_%"),
        h("sql", "semicolon", "a;b"),
        h("format", "percent_s", "%s%s%s%s%n"),
        h("format", "percent_x", "%x%08x%p"),
        h("format", "braces", "{}{0}{name}{:?}"),
        h("format", "shell", "${HOME}$(id)`id`"),
        h(
            "conninfo",
            "pg_keywords",
            "app host=evil.example sslmode=disable",
        ),
        h(
            "conninfo",
            "url",
            "postgres://evil.example:5432/app?sslmode=disable",
        ),
        h("conninfo", "query", "app?sslmode=disable&host=evil.example"),
        h(
            "conninfo",
            "semicolons",
            "app;host=evil.example;ssl-mode=DISABLED",
        ),
        h("conninfo", "path_traversal", "../../etc/passwd"),
        h(
            "arn",
            "other_account",
            "arn:aws:secretsmanager:us-east-1:999999999999:secret:app/db-AbCdEf",
        ),
        h(
            "arn",
            "other_partition",
            "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:app/db-AbCdEf",
        ),
        h(
            "arn",
            "gov_partition",
            "arn:aws-us-gov:iam::123456789012:role/Rotor",
        ),
        h("arn", "malformed", "arn:aws:::::::"),
    ];
    for (name, n) in [("depth_100", 100), ("depth_127", 127)] {
        v.push(h("nesting", name, "[".repeat(n) + &"]".repeat(n)));
    }
    v
}

/// Values of the wrong JSON type.
fn wrong_types() -> Vec<Hostile> {
    let mut nested = json!("x");
    for _ in 0..100 {
        nested = json!([nested]);
    }
    vec![
        h("types", "null", Value::Null),
        h("types", "true", true),
        h("types", "zero", 0),
        h("types", "negative", -1),
        h("types", "float", 1.5),
        h("types", "huge_float", 1e300),
        h(
            "types",
            "u64_overflow",
            serde_json::from_str::<Value>("18446744073709551616").expect("number"),
        ),
        h("types", "empty_array", json!([])),
        h("types", "array", json!(["x"])),
        h("types", "empty_object", json!({})),
        h("types", "object", json!({"a": "b"})),
        h("nesting", "nested_value_100", nested),
    ]
}

/// Hostile values for a field: every string and every wrong type.
fn field_values() -> Vec<Hostile> {
    let mut v = hostile_strings();
    v.extend(wrong_types());
    v
}

/// Whole documents that are not what they should be (secret values,
/// role definitions, request bodies).
fn hostile_documents() -> Vec<Hostile> {
    let bomb = |open: &str, close: &str, n: usize| open.repeat(n) + &close.repeat(n);
    vec![
        h("nesting", "array_bomb_100k", bomb("[", "]", 100_000)),
        h("nesting", "object_bomb_50k", bomb("{\"a\":", "}", 50_000)),
        h("nesting", "unclosed_bomb_1m", "[".repeat(1 << 20)),
        h("types", "empty_text", ""),
        h("types", "null_doc", "null"),
        h("types", "array_doc", "[]"),
        h("types", "string_doc", "\"app\""),
        h("types", "number_doc", "42"),
        h("keys", "truncated", "{\"username\":"),
        h("keys", "trailing_garbage", "{\"a\":1} trailing"),
        h("unicode", "bom_before_object", "\u{feff}{\"a\":1}"),
        h(
            "unicode",
            "lone_surrogate_escape",
            "{\"username\":\"\\ud800\"}",
        ),
        h("unicode", "nul_escape", "{\"username\":\"a\\u0000b\"}"),
        h("types", "nan", "{\"port\":NaN}"),
        h(
            "huge",
            "many_keys_100k",
            format!(
                "{{{}}}",
                (0..100_000)
                    .map(|i| format!("\"k{i}\":{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    ]
}

// ---- cases and their runner -----------------------------------------------

/// One generated case: a name (for failures), its hostile class, and the
/// input (whatever the kind's runner needs).
pub(crate) struct Case<I> {
    pub(crate) name: String,
    pub(crate) class: &'static str,
    pub(crate) input: I,
}

/// Runs every case of a kind, each on its own task (a panic is caught and
/// reported, not fatal), and fails with every violation found.
async fn run_kind<I, F, Fut>(kind: &'static str, cases: Vec<Case<I>>, run: F)
where
    I: Send + 'static,
    F: Fn(String, I) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let total = cases.len();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    // Cases run concurrently (bounded): most of their time is the local
    // store's file writes.
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(total);
    for case in cases {
        *by_class.entry(case.class).or_default() += 1;
        let permit = limit.clone().acquire_owned().await.expect("semaphore");
        let name = case.name.clone();
        tasks.push((
            name,
            tokio::spawn(async move {
                let outcome = run(case.name, case.input).await;
                drop(permit);
                outcome
            }),
        ));
    }
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(format!("{name}: {why}")),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{name}: PANIC {}", truncate(&text)));
            }
            Err(e) => failures.push(format!("{name}: task failed: {e}")),
        }
    }
    println!(
        "hostile {kind}: {total} cases in {:.1} s {by_class:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} hostile {kind} cases failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .map(|f| truncate(f))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn truncate(s: &str) -> String {
    if s.len() <= 400 {
        return s.to_string();
    }
    let mut end = 400;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Why a message is not a clear error, if it is not: empty, longer than
/// [`MAX_MESSAGE`], carrying raw NUL, control or bidirectional characters
/// (which make a console show something other than what was sent), or the
/// canary password.
pub(crate) fn unclear(message: &str) -> Option<String> {
    if message.trim().is_empty() {
        return Some("empty message".into());
    }
    if message.len() > MAX_MESSAGE {
        return Some(format!(
            "message of {} bytes (more than {MAX_MESSAGE}): {}",
            message.len(),
            truncate(message)
        ));
    }
    if let Some(c) = message.chars().find(|c| {
        (c.is_control() && *c != '\n')
            || matches!(*c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
    }) {
        return Some(format!(
            "raw character U+{:04X} in the message: {}",
            c as u32,
            truncate(&message.escape_debug().to_string())
        ));
    }
    if message.contains(CANARY) {
        return Some("the message quotes the password".into());
    }
    None
}

fn check_error(e: &Error, must_name: Option<&str>) -> Result<(), String> {
    let message = e.to_string();
    if let Some(why) = unclear(&message) {
        return Err(format!("{} error not clear: {why}", e.kind()));
    }
    if let Some(field) = must_name
        && !message.to_lowercase().contains(&field.to_lowercase())
    {
        return Err(format!(
            "{} error does not name {field:?}: {}",
            e.kind(),
            truncate(&message)
        ));
    }
    Ok(())
}

/// Runs a synchronous parser, turning a panic into a failure.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let text = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("PANIC {}", truncate(&text))
    })
}

/// A local store in a fresh directory holding `value` as `app/db`, with a
/// rotation started; returns (store, path, token).
fn local_store_with(value: &str) -> (Arc<LocalStore>, PathBuf, String) {
    local_store_in(&scratch_dir(), value)
}

fn local_store_in(root: &Path, value: &str) -> (Arc<LocalStore>, PathBuf, String) {
    let dir = root.join(unique("rotor-hostile"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("store.json");
    let store = LocalStore::open(&path).expect("open store");
    store
        .put_current("app/db", &SecretString::new(value))
        .expect("put");
    let token = store.start_rotation("app/db").expect("start rotation");
    (Arc::new(store), path, token)
}

/// Where the cases' stores live: memory-backed when the machine has it
/// (the local store syncs every write to disk; thousands of cases add up).
fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly()) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn remove_store(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn rotator(store: Arc<LocalStore>, engine: &str, strategy: Strategy) -> Rotator {
    let (engine, exclusions): (Arc<dyn rotor::engine::Engine>, &str) = if engine == "mysql" {
        (
            Arc::new(MysqlEngine::new(ConnectOptions::default())),
            "/@\"'\\",
        )
    } else {
        (
            Arc::new(PostgresEngine::new(ConnectOptions::default())),
            ":/@\"'\\",
        )
    };
    Rotator::new(
        store,
        engine,
        strategy,
        PasswordPolicy::with_default_exclusions(exclusions),
    )
}

fn event_for(step: &str, token: &str) -> RotationEvent {
    RotationEvent {
        step: step.to_string(),
        secret_id: "app/db".into(),
        token: token.to_string(),
        rotation_token: None,
    }
}

/// A field set to a value, or removed (`None`), in a JSON object.
fn with_field(base: &Value, pointer: &str, value: Option<&Value>) -> Value {
    let mut doc = base.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    let slot = if parent.is_empty() {
        Some(&mut doc)
    } else {
        doc.pointer_mut(parent)
    };
    if let Some(Value::Object(map)) = slot {
        match value {
            Some(v) => {
                map.insert(key.to_string(), v.clone());
            }
            None => {
                map.remove(key);
            }
        }
    }
    doc
}

/// Cases for each field of `base` (JSON pointers): every hostile value,
/// the field missing; plus extra keys with hostile names and values.
fn field_cases(base: &Value, fields: &[&str]) -> Vec<Case<(String, Value)>> {
    let mut cases = Vec::new();
    for field in fields {
        for hv in field_values() {
            cases.push(Case {
                name: format!("{field}={}", hv.name),
                class: hv.class,
                input: (field.to_string(), with_field(base, field, Some(&hv.value))),
            });
        }
        cases.push(Case {
            name: format!("{field} missing"),
            class: "keys",
            input: (field.to_string(), with_field(base, field, None)),
        });
    }
    for hv in hostile_strings().into_iter().take(30) {
        let key = hv.value.as_str().unwrap_or_default().to_string();
        cases.push(Case {
            name: format!("extra key named {}", hv.name),
            class: "keys",
            input: (String::new(), {
                let mut doc = base.clone();
                if let Value::Object(map) = &mut doc {
                    map.insert(key, json!("x"));
                }
                doc
            }),
        });
    }
    cases
}

// ---- secrets ----------------------------------------------------------------

fn secret_base(engine: &str) -> Value {
    json!({
        "engine": engine,
        "host": "db.example.internal",
        "port": 5432,
        "username": "app",
        "password": CANARY,
        "dbname": "app",
        "ssl": true,
        "masterarn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:master",
        "team": "payments",
    })
}

/// Names one byte and one multi-byte character over each engine's limit
/// (PostgreSQL: 63 bytes; MySQL/MariaDB: Rotor keeps at most 80 bytes, the
/// most any server allows), and the alternate's name over it by `_clone`.
fn length_cases() -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("postgres", "pg_64_bytes", "a".repeat(64)),
        ("postgres", "pg_62_plus_2_byte_char", "a".repeat(62) + "é"),
        ("postgres", "pg_61_plus_3_byte_char", "a".repeat(61) + "€"),
        ("postgres", "pg_clone_over_by_one", "a".repeat(58)),
        ("mysql", "my_81_bytes", "a".repeat(81)),
        ("mysql", "my_79_plus_2_byte_char", "a".repeat(79) + "é"),
        ("mysql", "my_clone_over_by_one", "a".repeat(75)),
    ]
}

#[derive(Clone)]
struct SecretInput {
    engine: &'static str,
    field: String,
    text: String,
    /// The length case's name, when this is one: it must be refused.
    over_limit: Option<Strategy>,
}

fn secret_cases() -> Vec<Case<SecretInput>> {
    let mut cases = Vec::new();
    for engine in ["postgres", "mysql"] {
        let base = secret_base(engine);
        let fields = [
            "/engine",
            "/host",
            "/port",
            "/username",
            "/password",
            "/dbname",
            "/ssl",
            "/masterarn",
        ];
        for c in field_cases(&base, &fields) {
            cases.push(Case {
                name: format!("{engine} {}", c.name),
                class: c.class,
                input: SecretInput {
                    engine,
                    field: c.input.0.trim_start_matches('/').to_string(),
                    text: c.input.1.to_string(),
                    over_limit: None,
                },
            });
        }
        for doc in hostile_documents() {
            cases.push(Case {
                name: format!("{engine} document {}", doc.name),
                class: doc.class,
                input: SecretInput {
                    engine,
                    field: String::new(),
                    text: doc.value.as_str().unwrap_or_default().to_string(),
                    over_limit: None,
                },
            });
        }
        for (limit_engine, name, user) in length_cases() {
            if limit_engine != engine {
                continue;
            }
            let strategy = if name.contains("clone") {
                Strategy::AlternatingUsers
            } else {
                Strategy::SingleUser
            };
            let doc = with_field(&base, "/username", Some(&json!(user)));
            cases.push(Case {
                name: format!("{engine} username {name}"),
                class: "length",
                input: SecretInput {
                    engine,
                    field: "username".into(),
                    text: doc.to_string(),
                    over_limit: Some(strategy),
                },
            });
        }
    }
    cases
}

/// Parses the secret; then runs createSecret with the local store (both
/// strategies): refused with a clear error and the store unchanged, or the
/// pending version equals the current one but for the password (and the
/// username, alternating).
async fn secret_case(_name: String, input: SecretInput) -> Result<(), String> {
    let value = SecretString::new(input.text.clone());
    let field = (!input.field.is_empty()).then_some(input.field.as_str());
    for require in [Require::Connection, Require::Login] {
        match no_panic(|| DbSecret::parse(&value, "app/db", "AWSCURRENT", require))? {
            Err(e) => {
                // A value of the wrong type or a missing key names the key;
                // a document that is not an object says so.
                check_error(&e, None)?;
                if e.kind() != "BadSecret" {
                    return Err(format!(
                        "parse failed with {} instead of BadSecret",
                        e.kind()
                    ));
                }
                let message = e.to_string();
                if let Some(field) = field
                    && !message.contains(field)
                    && !message.contains("not valid JSON")
                {
                    return Err(format!(
                        "the error does not name {field:?}: {}",
                        truncate(&message)
                    ));
                }
            }
            Ok(secret) => {
                // Correct handling: nothing normalised or truncated, unknown
                // keys kept, the password where it was.
                let again = DbSecret::parse(&secret.to_json(), "app/db", "v", require)
                    .map_err(|e| format!("the stored form does not parse again: {e}"))?;
                if again.username != secret.username
                    || again.host != secret.host
                    || again.dbname != secret.dbname
                    || again.other_fields() != secret.other_fields()
                    || again.password.expose() != secret.password.expose()
                {
                    return Err("the secret changed in a parse/store round trip".into());
                }
                let original: Value = serde_json::from_str(&input.text).unwrap_or(Value::Null);
                if let Some(u) = original.get("username").and_then(Value::as_str)
                    && u != secret.username
                {
                    return Err("the username was altered by parsing".into());
                }
            }
        }
    }
    for strategy in [Strategy::SingleUser, Strategy::AlternatingUsers] {
        let (store, path, token) = local_store_with(&input.text);
        let before = std::fs::read(&path).expect("read store");
        let rotator = rotator(store.clone(), input.engine, strategy);
        let result = rotator.handle(&event_for("createSecret", &token)).await;
        let after = std::fs::read(&path).expect("read store");
        let outcome = match result {
            Err(e) => {
                check_error(&e, None)?;
                if before != after {
                    return Err(format!(
                        "{strategy}: createSecret failed ({}) but changed the store",
                        e.kind()
                    ));
                }
                Ok(())
            }
            Ok(_)
                if input.over_limit == Some(strategy)
                    || (input.over_limit == Some(Strategy::SingleUser)) =>
            {
                Err(format!(
                    "{strategy}: a username over the engine's limit was accepted"
                ))
            }
            Ok(_) => {
                let current = DbSecret::parse(
                    &SecretString::new(input.text.clone()),
                    "c",
                    "c",
                    Require::Connection,
                )
                .map_err(|e| format!("createSecret accepted a secret that does not parse: {e}"))?;
                let pending_value = rotor::store::SecretStore::get(
                    store.as_ref(),
                    "app/db",
                    rotor::store::VersionRef::Id(&token),
                )
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no pending value after createSecret")?;
                let pending = DbSecret::parse(&pending_value, "p", "p", Require::Connection)
                    .map_err(|e| format!("the pending value does not parse: {e}"))?;
                let mut expected_fields = current.other_fields().clone();
                let expected_user = match strategy {
                    Strategy::SingleUser => current.username.clone(),
                    Strategy::AlternatingUsers => format!("{}_clone", current.username),
                };
                if strategy == Strategy::AlternatingUsers {
                    expected_fields.insert("username".into(), json!(expected_user));
                }
                if pending.username != expected_user || pending.other_fields() != &expected_fields {
                    Err(format!(
                        "{strategy}: the pending version differs from the current one beyond the credentials"
                    ))
                } else if pending.password.expose() == current.password.expose() {
                    Err(format!(
                        "{strategy}: the pending password is the current one"
                    ))
                } else {
                    Ok(())
                }
            }
        };
        remove_store(&path);
        outcome?;
    }
    Ok(())
}

// ---- rotation events --------------------------------------------------------

fn event_cases() -> Vec<Case<(String, Value)>> {
    let base = json!({
        "Step": "createSecret",
        "SecretId": "app/db",
        "ClientRequestToken": "<token>",
        "RotationToken": "rt",
    });
    let mut cases = field_cases(
        &base,
        &[
            "/Step",
            "/SecretId",
            "/ClientRequestToken",
            "/RotationToken",
        ],
    );
    for (name, secret_id) in [
        ("secret_id_uppercase", "APP/DB"),
        ("secret_id_trailing_space", "app/db "),
        ("secret_id_lookalike", "\u{0430}pp/db"),
        ("secret_id_zero_width", "app/\u{200b}db"),
        (
            "secret_id_other_account_arn",
            "arn:aws:secretsmanager:us-east-1:999999999999:secret:app/db",
        ),
        (
            "secret_id_other_partition_arn",
            "arn:aws-cn:secretsmanager:cn-north-1:000000000000:secret:app/db",
        ),
        (
            "secret_id_local_arn_other_account",
            "arn:rotor:local:999999999999:secret:app/db",
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            class: if name.contains("arn") {
                "arn"
            } else {
                "unicode"
            },
            input: (
                "/SecretId".into(),
                with_field(&base, "/SecretId", Some(&json!(secret_id))),
            ),
        });
    }
    for (name, step) in [
        ("step_case", "CreateSecret"),
        ("step_space", "createSecret "),
        ("step_lookalike", "cr\u{0435}ateSecret"),
        ("step_nul_suffix", "createSecret\0"),
    ] {
        cases.push(Case {
            name: name.into(),
            class: "unicode",
            input: (
                "/Step".into(),
                with_field(&base, "/Step", Some(&json!(step))),
            ),
        });
    }
    for doc in hostile_documents() {
        let value = serde_json::from_str::<Value>(doc.value.as_str().unwrap_or_default())
            .unwrap_or_else(|_| json!(doc.value));
        cases.push(Case {
            name: format!("document {}", doc.name),
            class: doc.class,
            input: (String::new(), value),
        });
    }
    cases
}

/// Parses the event; a parsed event runs on a local store holding a good
/// secret: it must be refused with a clear error and the store unchanged,
/// unless only `RotationToken` or an extra key was hostile (then the step
/// runs as usual).
async fn event_case(_name: String, (field, payload): (String, Value)) -> Result<(), String> {
    let (store, path, token) = local_store_with(&secret_base("postgres").to_string());
    let payload = match payload.get("ClientRequestToken") {
        Some(Value::String(t)) if t == "<token>" => {
            with_field(&payload, "/ClientRequestToken", Some(&json!(token)))
        }
        _ => payload,
    };
    let before = std::fs::read(&path).expect("read store");
    let harmless = field == "/RotationToken" || field.is_empty();
    let result = async {
        let event = match no_panic(|| RotationEvent::from_json(&payload))? {
            Ok(event) => event,
            Err(e) => {
                check_error(&e, None)?;
                if e.kind() != "BadEvent" {
                    return Err(format!("parse failed with {}", e.kind()));
                }
                // The message ends with the event's expected shape, which
                // names every key: the part before it must name this one.
                let name = field.trim_start_matches('/');
                let message = e.to_string();
                let detail = message.split(". Send {").next().unwrap_or_default();
                if !name.is_empty() && !detail.contains(name) {
                    return Err(format!(
                        "the error does not name {name}: {}",
                        truncate(&message)
                    ));
                }
                return Ok(());
            }
        };
        let rotator = rotator(store.clone(), "postgres", Strategy::SingleUser);
        match rotator.handle(&event).await {
            Err(e) => {
                check_error(&e, None)?;
                if std::fs::read(&path).expect("read store") != before {
                    return Err(format!(
                        "the step failed ({}) but changed the store",
                        e.kind()
                    ));
                }
                if harmless && field == "/RotationToken" && payload["RotationToken"].is_string() {
                    return Err(format!("a string RotationToken made the step fail: {e}"));
                }
                Ok(())
            }
            Ok(outcome) if harmless => {
                if outcome.as_str() != "created" {
                    return Err(format!("unexpected outcome {}", outcome.as_str()));
                }
                Ok(())
            }
            Ok(outcome) => Err(format!(
                "a hostile {field} was accepted: {}",
                outcome.as_str()
            )),
        }
    }
    .await;
    remove_store(&path);
    result
}

// ---- role definitions -------------------------------------------------------

fn role_base() -> Value {
    json!({
        "engine": "postgres",
        "masterarn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:master",
        "dbname": "app",
        "member_of": ["app_read"],
        "owner_role": "app_owner",
        "default_ttl": "15m",
        "max_ttl": "1h",
        "max_connections": 2,
        "username_prefix": "ci",
        "allowed_principals": ["arn:aws:iam::123456789012:role/ci"],
        "max_active": 5,
        "max_active_per_principal": 2,
    })
}

fn role_cases() -> Vec<Case<(String, String, String)>> {
    let base = role_base();
    let fields = [
        "/engine",
        "/masterarn",
        "/dbname",
        "/member_of",
        "/owner_role",
        "/default_ttl",
        "/max_ttl",
        "/max_connections",
        "/username_prefix",
        "/allowed_principals",
        "/max_active",
        "/max_active_per_principal",
        "/sql",
    ];
    let mut cases: Vec<Case<(String, String, String)>> = field_cases(&base, &fields)
        .into_iter()
        .map(|c| Case {
            name: c.name,
            class: c.class,
            input: (
                c.input.0,
                "rotor/roles/ci".to_string(),
                c.input.1.to_string(),
            ),
        })
        .collect();
    // The role's own name, with no username_prefix to fall back on.
    let mut unnamed = base.clone();
    unnamed
        .as_object_mut()
        .expect("object")
        .remove("username_prefix");
    for hv in hostile_strings() {
        cases.push(Case {
            name: format!("role name {}", hv.name),
            class: hv.class,
            input: (
                "name".into(),
                format!("rotor/roles/{}", hv.value.as_str().unwrap_or_default()),
                unnamed.to_string(),
            ),
        });
    }
    for doc in hostile_documents() {
        cases.push(Case {
            name: format!("document {}", doc.name),
            class: doc.class,
            input: (
                String::new(),
                "rotor/roles/ci".into(),
                doc.value.as_str().unwrap_or_default().to_string(),
            ),
        });
    }
    cases
}

async fn role_case(
    _name: String,
    (field, name, text): (String, String, String),
) -> Result<(), String> {
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rotor/roles/ci";
    match no_panic(|| RoleDefinition::parse(&SecretString::new(text.clone()), &name, arn))? {
        Err(e) => {
            check_error(&e, None)?;
            if e.kind() != "BadSecret" {
                return Err(format!("failed with {}", e.kind()));
            }
            let key = field.trim_start_matches('/');
            let message = e.to_string();
            if !key.is_empty()
                && key != "name"
                && !message.contains(key)
                && !message.contains("ttl")
            {
                return Err(format!(
                    "the error does not name {key:?}: {}",
                    truncate(&message)
                ));
            }
            Ok(())
        }
        Ok(role) => {
            let prefix_ok = !role.username_prefix.is_empty()
                && role.username_prefix.len() <= rotor::dynamic::MAX_PREFIX
                && role
                    .username_prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !prefix_ok {
                return Err(format!(
                    "accepted username prefix {:?}",
                    role.username_prefix
                ));
            }
            if role.default_ttl == 0
                || role.default_ttl > role.max_ttl
                || role.max_ttl > rotor::dynamic::MAX_TTL
            {
                return Err(format!(
                    "accepted ttls {} / {}",
                    role.default_ttl, role.max_ttl
                ));
            }
            if serde_json::from_str::<Value>(&text).is_ok_and(|d| d.get("sql").is_some()) {
                return Err("a role with raw SQL was accepted".into());
            }
            Ok(())
        }
    }
}

// ---- function URL requests --------------------------------------------------

fn url_base() -> Value {
    json!({
        "version": "2.0",
        "rawPath": "/",
        "requestContext": {
            "apiId": "abc123",
            "domainName": "abc123.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abc123",
            "requestId": "req-hostile",
            "http": {"method": "POST", "path": "/"},
            "authorizer": {"iam": {
                "userArn": "arn:aws:iam::123456789012:role/ci",
                "accountId": "123456789012",
                "accessKey": "AKIAEXAMPLE",
            }},
        },
        "body": "{\"role\":\"ci\",\"ttl\":\"15m\"}",
        "isBase64Encoded": false,
    })
}

fn url_cases() -> Vec<Case<(String, Value)>> {
    let base = url_base();
    let mut cases = field_cases(
        &base,
        &[
            "/version",
            "/requestContext/apiId",
            "/requestContext/domainName",
            "/requestContext/domainPrefix",
            "/requestContext/requestId",
            "/requestContext/http/method",
            "/requestContext/authorizer/iam/userArn",
            "/requestContext/authorizer/iam/accountId",
            "/requestContext/authorizer/iam/accessKey",
            "/body",
            "/isBase64Encoded",
        ],
    );
    // The body's own fields.
    for hv in field_values() {
        for key in ["role", "ttl"] {
            let mut body = json!({"role": "ci", "ttl": "15m"});
            body[key] = hv.value.clone();
            cases.push(Case {
                name: format!("body {key}={}", hv.name),
                class: hv.class,
                input: (
                    format!("body.{key}"),
                    with_field(&base, "/body", Some(&json!(body.to_string()))),
                ),
            });
        }
    }
    for doc in hostile_documents() {
        cases.push(Case {
            name: format!("body document {}", doc.name),
            class: doc.class,
            input: ("/body".into(), with_field(&base, "/body", Some(&doc.value))),
        });
    }
    // Bytes: a base64 body that is not UTF-8, and one that is not base64.
    use base64::Engine as _;
    for (name, body) in [
        (
            "invalid_utf8",
            base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, b'{', 0xc3, 0x28, b'}']),
        ),
        (
            "overlong_nul",
            base64::engine::general_purpose::STANDARD.encode([b'{', 0xc0, 0x80, b'}']),
        ),
        ("not_base64", "!!!not base64!!!".into()),
    ] {
        let mut event = with_field(&base, "/body", Some(&json!(body)));
        event["isBase64Encoded"] = json!(true);
        cases.push(Case {
            name: format!("base64 body {name}"),
            class: "bytes",
            input: ("/body".into(), event),
        });
    }
    // The signer's ARN in another account or partition than the signer.
    for (name, arn, account) in [
        (
            "arn_other_account",
            "arn:aws:iam::999999999999:role/ci",
            "123456789012",
        ),
        (
            "arn_other_partition",
            "arn:aws-cn:iam::999999999999:role/ci",
            "123456789012",
        ),
        (
            "sts_other_account",
            "arn:aws:sts::999999999999:assumed-role/ci/s",
            "123456789012",
        ),
        (
            "account_with_suffix",
            "arn:aws:iam::123456789012:role/ci",
            "123456789012 ",
        ),
    ] {
        let mut event = with_field(
            &base,
            "/requestContext/authorizer/iam/userArn",
            Some(&json!(arn)),
        );
        event["requestContext"]["authorizer"]["iam"]["accountId"] = json!(account);
        cases.push(Case {
            name: format!("caller {name}"),
            class: "arn",
            input: ("caller_mismatch".into(), event),
        });
    }
    cases
}

/// Every request ends in an HTTP answer with a stable code, a clear
/// message and the request id (the store holds no role, so nothing can be
/// issued); a caller whose ARN is not in the signer's account is refused
/// before anything else.
async fn url_case(_name: String, (field, event): (String, Value)) -> Result<(), String> {
    let caller = no_panic(|| rotor::lambda::url_caller(&event))?;
    if field == "caller_mismatch" {
        match &caller {
            Ok(arn) => {
                return Err(format!(
                    "caller {arn} accepted though not the signer's account"
                ));
            }
            Err(e) => check_error(e, None)?,
        }
    }
    if let Err(e) = no_panic(|| rotor::lambda::url_body(&event))? {
        check_error(&e, None)?;
        if e.kind() != "BadRequest" {
            return Err(format!("body error is {}", e.kind()));
        }
    }
    let dir = scratch_dir().join(unique("rotor-hostile-url"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("store.json");
    let store = LocalStore::open(&path).expect("store");
    store
        .put_current(
            "app/db",
            &SecretString::new(secret_base("postgres").to_string()),
        )
        .expect("put");
    let before = std::fs::read(&path).expect("read");
    let dynamic = Dynamic::new(Arc::new(store), ConnectOptions::default());
    let answer = rotor::lambda::issue_from_url(&dynamic, &event).await;
    let after = std::fs::read(&path).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    if before != after {
        return Err("the request changed the store".into());
    }
    let status = answer["statusCode"].as_u64().unwrap_or(0);
    if !matches!(status, 400 | 403 | 429 | 500 | 503) {
        return Err(format!("status {status}: {answer}"));
    }
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or_default())
        .map_err(|e| format!("the answer's body is not JSON: {e}"))?;
    let message = body["message"].as_str().unwrap_or_default();
    if let Some(why) = unclear(message) {
        return Err(format!("answer message not clear: {why}"));
    }
    if body["error"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no error code: {body}"));
    }
    let request_id = body["request_id"].as_str().unwrap_or_default();
    if request_id.is_empty() || request_id.len() > 128 {
        return Err(format!("request id of {} bytes", request_id.len()));
    }
    Ok(())
}

// ---- EventBridge events ------------------------------------------------------

fn eventbridge_cases() -> Vec<Case<(String, Value)>> {
    let custom = json!({
        "source": "rotor",
        "detail-type": "Revoke Credential",
        "detail": {"secret": "other/secret", "dry_run": false},
    });
    let guardduty = json!({
        "source": "aws.guardduty",
        "detail-type": "GuardDuty Finding",
        "detail": {"resource": {
            "rdsDbInstanceDetails": {"dbInstanceIdentifier": "db1", "dbClusterIdentifier": "c1", "engine": "postgres"},
            "rdsDbUserDetails": {"user": "app"},
        }},
    });
    let cloudtrail = json!({
        "source": "aws.secretsmanager",
        "detail-type": "AWS API Call via CloudTrail",
        "detail": {
            "eventName": "GetSecretValue",
            "userIdentity": {"arn": "arn:aws:iam::123456789012:user/someone"},
            "requestParameters": {"secretId": "other/secret"},
        },
    });
    let mut cases = Vec::new();
    for (kind, base, fields) in [
        (
            "custom",
            &custom,
            &[
                "/source",
                "/detail-type",
                "/detail",
                "/detail/secret",
                "/detail/dry_run",
            ][..],
        ),
        (
            "user",
            &with_field(
                &with_field(&custom, "/detail/secret", None),
                "/detail/user",
                Some(&json!("v_ci_abc_def123")),
            ),
            &["/detail/user"][..],
        ),
        (
            "role",
            &with_field(
                &with_field(&custom, "/detail/secret", None),
                "/detail/role",
                Some(&json!("rotor/roles/none")),
            ),
            &["/detail/role"][..],
        ),
        (
            "tag",
            &with_field(
                &with_field(&custom, "/detail/secret", None),
                "/detail/tag",
                Some(&json!({"key": "team", "value": "none"})),
            ),
            &["/detail/tag/key", "/detail/tag/value"][..],
        ),
        (
            "guardduty",
            &guardduty,
            &[
                "/detail/resource/rdsDbInstanceDetails/dbInstanceIdentifier",
                "/detail/resource/rdsDbUserDetails/user",
                "/detail/resource/rdsDbInstanceDetails/engine",
            ][..],
        ),
        (
            "cloudtrail",
            &cloudtrail,
            &[
                "/detail/userIdentity/arn",
                "/detail/requestParameters/secretId",
                "/detail/errorCode",
            ][..],
        ),
    ] {
        for c in field_cases(base, fields) {
            cases.push(Case {
                name: format!("{kind} {}", c.name),
                class: c.class,
                input: c.input,
            });
        }
    }
    // Look-alikes of the stored secret must not revoke it.
    for (name, id) in [
        ("lookalike", "\u{0430}pp/db"),
        ("zero_width", "app/\u{200b}db"),
        ("uppercase", "APP/DB"),
        (
            "other_account_arn",
            "arn:aws:secretsmanager:us-east-1:999999999999:secret:app/db",
        ),
        (
            "other_partition_arn",
            "arn:aws-cn:secretsmanager:cn-north-1:000000000000:secret:app/db",
        ),
    ] {
        cases.push(Case {
            name: format!("custom secret {name} of the stored one"),
            class: if name.contains("arn") {
                "arn"
            } else {
                "unicode"
            },
            input: (
                "/detail/secret".into(),
                with_field(&custom, "/detail/secret", Some(&json!(id))),
            ),
        });
    }
    // Rotor's own roles are ignored; the same names in other accounts and
    // partitions are not.
    for (name, arn, ignored) in [
        (
            "own_role",
            "arn:aws:iam::123456789012:role/RotorRevoke",
            true,
        ),
        (
            "own_role_session",
            "arn:aws:sts::123456789012:assumed-role/RotorRevoke/s1",
            true,
        ),
        (
            "other_account_role",
            "arn:aws:iam::999999999999:role/RotorRevoke",
            false,
        ),
        (
            "other_account_session",
            "arn:aws:sts::999999999999:assumed-role/RotorRevoke/s1",
            false,
        ),
        (
            "other_partition_role",
            "arn:aws-cn:iam::123456789012:role/RotorRevoke",
            false,
        ),
        (
            "lookalike_role",
            "arn:aws:iam::123456789012:role/R\u{043e}torRevoke",
            false,
        ),
    ] {
        cases.push(Case {
            name: format!("cloudtrail actor {name}"),
            class: "arn",
            input: (
                if ignored {
                    "ignored".into()
                } else {
                    "not_ignored".into()
                },
                with_field(&cloudtrail, "/detail/userIdentity/arn", Some(&json!(arn))),
            ),
        });
    }
    cases
}

/// Parses the event; a parsed target is revoked against a local store that
/// holds `app/db` (its database unreachable): the revocation fails or finds
/// nothing, clearly, and `app/db` is never touched.
async fn eventbridge_case(_name: String, (field, event): (String, Value)) -> Result<(), String> {
    let ignore = vec!["arn:aws:iam::123456789012:role/Rotor*".to_string()];
    let parsed = no_panic(|| from_event(&event, &ignore))?;
    match (field.as_str(), &parsed) {
        ("ignored", Ok(None)) | ("not_ignored", Ok(Some(_))) => {}
        ("ignored", other) => return Err(format!("Rotor's own role was not ignored: {other:?}")),
        ("not_ignored", other) => {
            return Err(format!("a foreign actor was ignored or refused: {other:?}"));
        }
        _ => {}
    }
    let (target, dry_run) = match parsed {
        Err(e) => {
            check_error(&e, None)?;
            return if e.kind() == "BadEvent" {
                Ok(())
            } else {
                Err(format!("refused with {}", e.kind()))
            };
        }
        Ok(None) => return Ok(()),
        Ok(Some(t)) => t,
    };
    let mut secret = secret_base("postgres");
    secret["host"] = json!("127.0.0.1");
    secret["port"] = json!(9);
    secret["ssl"] = json!(false);
    let (store, path, _token) = local_store_with(&secret.to_string());
    let before = std::fs::read(&path).expect("read");
    let dynamic = Dynamic::new(store, ConnectOptions::default());
    let caller = Caller {
        arn: "event:hostile".into(),
        via: "event",
    };
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        dynamic.revoke(&target, dry_run, &caller, None),
    )
    .await
    .map_err(|_| format!("revoke of {target:?} did not finish in 20 s"))?;
    let after = std::fs::read(&path).expect("read");
    remove_store(&path);
    if before != after {
        return Err(format!("revoking {target:?} changed the store"));
    }
    match result {
        Err(e) => check_error(&e, None),
        Ok(report) => {
            if !report.revoked.is_empty() && !dry_run {
                return Err(format!("revoked something: {:?}", report.revoked));
            }
            for (what, why) in &report.failures {
                if let Some(u) = unclear(why) {
                    return Err(format!("failure for {} not clear: {u}", truncate(what)));
                }
            }
            if matches!(target, RevokeTarget::Secret(_)) && report.failures.is_empty() {
                return Err("revoking an unknown secret reported no failure".into());
            }
            Ok(())
        }
    }
}

// ---- settings ---------------------------------------------------------------

#[derive(Clone)]
enum Setting {
    Policy(&'static str, String),
    HostOverrides(String),
    IgnorePrincipals(String),
    Duration(String),
}

fn settings_cases() -> Vec<Case<Setting>> {
    let mut cases = Vec::new();
    let mut texts: Vec<Hostile> = hostile_strings();
    for (name, text) in [
        ("zero", "0"),
        ("minus_one", "-1"),
        ("over_max", "4097"),
        ("u64_overflow", "18446744073709551616"),
        ("exponent", "1e3"),
        ("hex", "0x20"),
        ("padded", " 32 "),
        ("arabic_indic_digits", "\u{0663}\u{0662}"),
        ("fullwidth_digits", "\u{ff13}\u{ff12}"),
        (
            "every_character",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        ),
    ] {
        texts.push(h("types", name, text));
    }
    for hv in &texts {
        let text = hv.value.as_str().unwrap_or_default().to_string();
        for var in [
            "PASSWORD_LENGTH",
            "EXCLUDE_CHARACTERS",
            "EXCLUDE_PUNCTUATION",
            "REQUIRE_EACH_INCLUDED_TYPE",
        ] {
            cases.push(Case {
                name: format!("{var}={}", hv.name),
                class: hv.class,
                input: Setting::Policy(var, text.clone()),
            });
        }
        for (kind, setting) in [
            (
                "ROTOR_HOST_OVERRIDES",
                Setting::HostOverrides(format!("db.internal={text}")),
            ),
            (
                "ROTOR_IGNORE_PRINCIPALS",
                Setting::IgnorePrincipals(text.clone()),
            ),
            ("ttl", Setting::Duration(text.clone())),
        ] {
            cases.push(Case {
                name: format!("{kind}={}", hv.name),
                class: hv.class,
                input: setting,
            });
        }
    }
    cases
}

async fn settings_case(_name: String, setting: Setting) -> Result<(), String> {
    match setting {
        Setting::Policy(var, value) => {
            let lookup = |k: &str| (k == var).then(|| value.clone());
            match no_panic(|| PasswordPolicy::from_lookup(":/@\"'\\", lookup))? {
                Err(e) => {
                    check_error(&e, None)?;
                    let m = e.to_string();
                    if !(m.contains(var) || m.contains("EXCLUDE_") || m.contains("REQUIRE_EACH")) {
                        return Err(format!("the error does not name {var}: {m}"));
                    }
                    Ok(())
                }
                Ok(policy) => {
                    let pw = policy
                        .generate()
                        .map_err(|e| format!("accepted policy cannot generate: {e}"))?;
                    if pw.expose().chars().count() != policy.length {
                        return Err("password of the wrong length".into());
                    }
                    if pw
                        .expose()
                        .chars()
                        .any(|c| policy.exclude_characters.contains(c))
                    {
                        return Err("password holds an excluded character".into());
                    }
                    Ok(())
                }
            }
        }
        Setting::HostOverrides(spec) => {
            match no_panic(|| rotor::engine::parse_host_overrides(&spec))? {
                Err(e) => check_error(&e, Some("ROTOR_HOST_OVERRIDES")),
                Ok(list) if list.iter().all(|(n, _)| n == "db.internal") => Ok(()),
                Ok(list) => Err(format!("parsed as {list:?}")),
            }
        }
        Setting::IgnorePrincipals(spec) => {
            match no_panic(|| rotor::dynamic::revoke::parse_ignored_principals(&spec))? {
                Err(e) => check_error(&e, Some("ROTOR_IGNORE_PRINCIPALS")),
                Ok(list) if list.iter().all(|p| p.starts_with("arn:")) => Ok(()),
                Ok(list) => Err(format!("accepted {list:?}")),
            }
        }
        Setting::Duration(text) => match no_panic(|| rotor::time::parse_duration(&text))? {
            Err(e) => check_error(&e, None),
            Ok(_) => Ok(()),
        },
    }
}

// ---- the size report --------------------------------------------------------

pub(crate) fn print_corpus_size() {
    let mut by_kind: Vec<(&str, usize)> = Vec::new();
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut count = |kind: &'static str, classes: Vec<&'static str>| {
        by_kind.push((kind, classes.len()));
        for c in classes {
            *by_class.entry(c).or_default() += 1;
        }
    };
    count("secrets", secret_cases().iter().map(|c| c.class).collect());
    count("events", event_cases().iter().map(|c| c.class).collect());
    count("roles", role_cases().iter().map(|c| c.class).collect());
    count(
        "function_url",
        url_cases().iter().map(|c| c.class).collect(),
    );
    count(
        "eventbridge",
        eventbridge_cases().iter().map(|c| c.class).collect(),
    );
    count(
        "settings",
        settings_cases().iter().map(|c| c.class).collect(),
    );
    count("cli", cli_cases().iter().map(|c| c.class).collect());
    for kind in rotor_tests::Kind::ALL {
        // The same cases run with single and alternating users; a
        // single-user secret's masterarn is never used.
        let classes: Vec<&'static str> = db_secret_cases(kind, "rhx_0")
            .into_iter()
            .map(|(class, _, _)| class)
            .collect();
        let single_user = classes.iter().copied().filter(|c| *c != "arn");
        count(
            if kind == rotor_tests::Kind::Postgres {
                "postgres_rotations"
            } else {
                "mariadb_rotations"
            },
            classes.iter().copied().chain(single_user).collect(),
        );
        count(
            if kind == rotor_tests::Kind::Postgres {
                "postgres_issues"
            } else {
                "mariadb_issues"
            },
            dynamic_role_cases(kind, "rotor_grp_0", "rotor_own_0")
                .into_iter()
                .map(|(class, _, _)| class)
                .collect(),
        );
    }
    let total: usize = by_kind.iter().map(|(_, n)| n).sum();
    println!(
        "hostile corpus: {total} cases: {}",
        by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "hostile corpus by class: {}",
        by_class
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        total >= 500,
        "the corpus must hold at least 500 cases, not {total}"
    );
}

// ---- the CLI's arguments ------------------------------------------------------

/// One `rotor` command line with `{}` where the hostile argument goes and
/// `STORE`/`TOKEN` for the case's local store and pending token.
const CLI_SLOTS: &[&[&str]] = &[
    &["step", "{}", "app/db", "TOKEN", "--local", "STORE"],
    &["step", "createSecret", "{}", "TOKEN", "--local", "STORE"],
    &["step", "createSecret", "app/db", "{}", "--local", "STORE"],
    &[
        "step",
        "createSecret",
        "app/db",
        "TOKEN",
        "--strategy",
        "{}",
        "--local",
        "STORE",
    ],
    &["rotate", "{}", "--local", "STORE"],
    &["secrets", "get", "{}", "--local", "STORE"],
    &[
        "secrets", "get", "app/db", "--stage", "{}", "--local", "STORE",
    ],
    &[
        "secrets",
        "get",
        "app/db",
        "--version-id",
        "{}",
        "--local",
        "STORE",
    ],
    &[
        "secrets", "put", "app/db", "--value", "{}", "--local", "STORE",
    ],
    &["secrets", "start-rotation", "{}", "--local", "STORE"],
    &["secrets", "list", "--local", "{}"],
    &["revoke", "--secret", "{}", "--local", "STORE"],
    &["revoke", "--user", "{}", "--local", "STORE"],
    &["revoke", "--role", "{}", "--local", "STORE"],
    &["revoke", "--tag", "{}", "--local", "STORE"],
    &["issue", "{}", "--local", "STORE"],
    &["issue", "ci", "--ttl", "{}", "--local", "STORE"],
    &["leases", "--role", "{}", "--local", "STORE"],
    &[
        "sweep",
        "--dry-run",
        "--concurrency",
        "{}",
        "--local",
        "STORE",
    ],
    &["exec", "--role", "{}", "--local", "STORE", "--", "true"],
    &[
        "report",
        "--format",
        "json",
        "--fail-on",
        "{}",
        "--local",
        "STORE",
    ],
    &["--log-format", "{}", "secrets", "list", "--local", "STORE"],
];

#[derive(Clone)]
struct CliInput {
    slot: usize,
    arg: std::ffi::OsString,
}

fn cli_cases() -> Vec<Case<CliInput>> {
    use std::os::unix::ffi::OsStringExt;
    let mut values: Vec<(&'static str, String, std::ffi::OsString)> = Vec::new();
    for hv in hostile_strings() {
        let text = hv.value.as_str().unwrap_or_default().to_string();
        // An argument cannot hold NUL (execve), nor exceed 128 KiB.
        if text.contains('\0') {
            continue;
        }
        let text = if text.len() > 100_000 {
            "x".repeat(100_000)
        } else {
            text
        };
        values.push((hv.class, hv.name, text.clone().into()));
    }
    values.push((
        "bytes",
        "invalid_utf8".into(),
        std::ffi::OsString::from_vec(vec![b'a', 0xff, 0xfe, b'b']),
    ));
    // Each case spawns a process: two values of each class are enough
    // here (the in-process kinds take every value).
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    values.retain(|(class, _, _)| {
        let n = per_class.entry(class).or_default();
        *n += 1;
        *n <= 2
    });
    let mut cases = Vec::new();
    for (slot, args) in CLI_SLOTS.iter().enumerate() {
        for (class, name, arg) in &values {
            cases.push(Case {
                name: format!("rotor {} <- {name}", args.join(" ")),
                class,
                input: CliInput {
                    slot,
                    arg: arg.clone(),
                },
            });
        }
    }
    cases
}

/// Runs `rotor` with the hostile argument on a copy of a local store that
/// holds `app/db` (database unreachable) mid-rotation: a usage error (exit
/// 2) or a clear `rotor: …` error (exit 1), or success for a harmless
/// argument; never a panic or a signal; the store byte-identical.
async fn cli_case(_name: String, input: CliInput) -> Result<(), String> {
    let rotor = crate::config_errors::built_binaries().await.join("rotor");
    // A copy of one template store (writing a fresh one per case would
    // cost three synced writes).
    static TEMPLATE: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    let (template, token) = TEMPLATE.get_or_init(|| {
        let mut secret = secret_base("postgres");
        secret["host"] = json!("127.0.0.1");
        secret["port"] = json!(9);
        secret["ssl"] = json!(false);
        // Kept for the whole run: on disk, not in memory-backed /dev/shm.
        let (_store, path, token) = local_store_in(&std::env::temp_dir(), &secret.to_string());
        (path, token)
    });
    let token = token.clone();
    let dir = scratch_dir().join(unique("rotor-hostile-cli"));
    // Relative paths in arguments resolve inside the case's directory.
    let cwd = dir.join("a").join("b").join("c");
    std::fs::create_dir_all(&cwd).expect("cwd");
    let path = dir.join("store.json");
    std::fs::copy(template, &path).expect("copy the template store");
    let before = std::fs::read(&path).expect("read");
    let args: Vec<std::ffi::OsString> = CLI_SLOTS[input.slot]
        .iter()
        .map(|a| match *a {
            "{}" => input.arg.clone(),
            "STORE" => path.clone().into_os_string(),
            "TOKEN" => token.clone().into(),
            other => other.into(),
        })
        .collect();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(&rotor)
            .args(&args)
            .current_dir(&cwd)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ROTOR_CONNECT_TIMEOUT_SECS", "2")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "rotor did not finish within 30 s".to_string())?
    .map_err(|e| format!("spawn rotor: {e}"))?;
    let after = std::fs::read(&path).expect("read");
    remove_store(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("panicked") {
        return Err(format!("panic: {}", truncate(&stderr)));
    }
    let Some(code) = output.status.code() else {
        return Err(format!("killed by a signal: {:?}", output.status));
    };
    // `secrets put` stores a value that is JSON (a nested array is one).
    let stored_json = CLI_SLOTS[input.slot][1] == "put"
        && input
            .arg
            .to_str()
            .is_some_and(|a| serde_json::from_str::<Value>(a.trim()).is_ok());
    if before != after && !(stored_json && code == 0) {
        return Err(format!("the store changed (exit {code})"));
    }
    if stored_json && code != 0 {
        return Err(format!("a JSON value was not stored (exit {code})"));
    }
    match code {
        0 | 2 | 3 => Ok(()),
        1 => {
            let message = stderr
                .lines()
                .rev()
                .find(|l| l.starts_with("rotor: "))
                .ok_or_else(|| {
                    format!("exit 1 without a `rotor: …` line: {}", truncate(&stderr))
                })?;
            match unclear(message) {
                Some(why) => Err(format!("error not clear: {why}")),
                None => Ok(()),
            }
        }
        other => Err(format!("exit {other}: {}", truncate(&stderr))),
    }
}

// ---- whole rotations against the test servers ------------------------------

/// The hostile secrets that reach a server: usernames built around a real
/// user (SQL that would change its password if it ran, look-alikes, names
/// that a server would truncate to it), dbnames a driver could read as
/// connection settings, hosts with settings appended, master ARNs of other
/// accounts and partitions. Each rotation must stop with a clear error
/// before changing anything: the real user's stored credential, the set of
/// users and the secret's labels and current value stay as they were.
fn db_secret_cases(
    kind: rotor_tests::Kind,
    real: &str,
) -> Vec<(&'static str, &'static str, Value)> {
    let pg = kind == rotor_tests::Kind::Postgres;
    let user = |u: String| json!({"username": u});
    let mut cases = vec![
        (
            "sql",
            "quote_alter_password",
            user(if pg {
                format!("{real}'; ALTER ROLE {real} PASSWORD 'x'; --")
            } else {
                format!("{real}'@'%'; SET PASSWORD FOR {real} = PASSWORD('x'); --")
            }),
        ),
        (
            "sql",
            "double_quote_drop",
            user(format!("{real}\"; DROP ROLE {real}; --")),
        ),
        (
            "sql",
            "backtick_drop",
            user(format!("{real}`; DROP USER {real}; --")),
        ),
        ("sql", "backslash", user(format!("{real}\\' OR '1'='1"))),
        ("sql", "wildcard", user(format!("{real}%"))),
        ("format", "percent_s", user(format!("{real}%s%n"))),
        ("format", "braces", user(format!("{real}{{}}{{0}}"))),
        ("nul", "nul_inside", user(format!("{real}\0x"))),
        ("unicode", "rtl_override", user(format!("\u{202e}{real}"))),
        ("unicode", "zero_width", user(format!("{real}\u{200b}"))),
        (
            "unicode",
            "cyrillic_lookalike",
            user(real.replacen('x', "\u{0445}", 1)),
        ),
        ("unicode", "uppercase", user(real.to_uppercase())),
        (
            "conninfo",
            "dbname_keywords",
            json!({"dbname": "rotor_test host=evil.example sslmode=disable"}),
        ),
        (
            "conninfo",
            "dbname_url",
            json!({"dbname": "postgres://evil.example:5432/rotor_test?sslmode=disable"}),
        ),
        (
            "conninfo",
            "dbname_query",
            json!({"dbname": "rotor_test?ssl-mode=DISABLED&host=evil.example"}),
        ),
        (
            "conninfo",
            "dbname_semicolons",
            json!({"dbname": "rotor_test;host=evil.example;sslmode=disable"}),
        ),
        (
            "conninfo",
            "host_with_settings",
            json!({"host": "127.0.0.1 sslmode=disable"}),
        ),
        (
            "conninfo",
            "host_with_path",
            json!({"host": "127.0.0.1/evil"}),
        ),
        (
            "arn",
            "master_other_account",
            json!({"masterarn": "arn:aws:secretsmanager:us-east-1:999999999999:secret:rotor/master-AbCdEf"}),
        ),
        (
            "arn",
            "master_other_partition",
            json!({"masterarn": "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:rotor/master-AbCdEf"}),
        ),
    ];
    // Over the limit by one byte and by one multi-byte character, where the
    // shorter name (what a server that truncates would use) is a real user.
    let pad = |n: usize| {
        let mut name = real.to_string();
        while name.len() < n {
            name.push('a');
        }
        name
    };
    if pg {
        cases.push((
            "length",
            "pg_64_bytes_truncates_to_real",
            user(pad(63) + "a"),
        ));
        cases.push((
            "length",
            "pg_62_bytes_plus_2_byte_char",
            user(pad(62) + "é"),
        ));
    } else {
        cases.push(("length", "mariadb_81_chars", user(pad(80) + "a")));
        cases.push((
            "length",
            "mariadb_80_chars_plus_2_byte_char",
            user(pad(80) + "é"),
        ));
    }
    cases
}

async fn db_cases(db: rotor_tests::TestDb, strategy: Strategy) {
    let real = unique("rhx");
    let f = crate::rotation::fixture(&db, strategy, &real, json!({})).await;
    // The names a truncating server would log in as: real users too.
    let pad = |n: usize| {
        let mut name = real.clone();
        while name.len() < n {
            name.push('a');
        }
        name
    };
    let truncated: Vec<String> = if db.kind == rotor_tests::Kind::Postgres {
        vec![pad(63), pad(62)]
    } else {
        vec![pad(80)]
    };
    // With the secret's password: a server that truncated the secret's
    // name would log in as one of them.
    let base = f.current_json().await;
    let password = SecretString::new(base["password"].as_str().expect("password"));
    for name in &truncated {
        f.admin.create_user(name, &password).await;
    }
    let users_before = f.admin.users_starting_with(&real).await;
    let mut credentials_before = vec![f.verifiers().await];
    for name in &truncated {
        credentials_before.push((f.admin.stored_credential(name).await, None));
    }
    let rotator = f.rotator();
    // A single-user secret's masterarn is never used.
    let cases: Vec<_> = db_secret_cases(db.kind, &real)
        .into_iter()
        .filter(|(class, _, _)| *class != "arn" || strategy == Strategy::AlternatingUsers)
        .collect();
    let total = cases.len();
    let mut failures = Vec::new();
    for (class, name, overrides) in cases {
        let mut value = base.clone();
        if let (Value::Object(v), Value::Object(o)) = (&mut value, overrides) {
            v.extend(o);
        }
        let value = value.to_string();
        rotor_tests::leaks::remember(&value);
        let arn = f.moto.create_secret(&unique("rotor/hostile"), &value).await;
        let labels_before = f.moto.labels(&arn).await;
        let token = f.moto.start_rotation(&arn).await;
        let mut refused = None;
        for step in rotor::event::Step::ALL {
            let event = RotationEvent {
                step: step.as_str().into(),
                secret_id: arn.clone(),
                token: token.clone(),
                rotation_token: None,
            };
            if let Err(e) = rotator.handle(&event).await {
                refused = Some((step, e));
                break;
            }
        }
        for v in f.moto.all_values(&arn).await {
            rotor_tests::leaks::remember(&v);
        }
        let mut why = Vec::new();
        match &refused {
            None => why.push("the rotation finished".to_string()),
            Some((step, e)) => {
                if let Some(u) = unclear(&e.to_string()) {
                    why.push(format!("{step}: {} not clear: {u}", e.kind()));
                }
                // A dbname or host is taken literally: the error comes from
                // the test server (or DNS), never from another server or TLS.
                if name.starts_with("dbname") && !matches!(e.kind(), "LoginRefused" | "Database") {
                    why.push(format!("{step}: dbname case failed with {}: {e}", e.kind()));
                }
                // Only a person can fix these secrets: an error that says
                // "retry" (network, timeout) would have Secrets Manager
                // retry for nothing and send the operator to the network.
                if !name.starts_with("host") && e.is_retryable() {
                    why.push(format!("{step}: refused as retryable {}: {e}", e.kind()));
                }
            }
        }
        let labels_after = f.moto.labels(&arn).await;
        let current = |labels: &BTreeMap<String, Vec<String>>| {
            labels
                .iter()
                .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
                .map(|(id, _)| id.clone())
        };
        if current(&labels_after) != current(&labels_before)
            || labels_after.values().flatten().any(|s| s == "AWSPREVIOUS")
        {
            why.push(format!(
                "labels changed: {labels_before:?} -> {labels_after:?}"
            ));
        }
        let current_id = current(&labels_after).unwrap_or_default();
        if f.moto.value(&arn, &current_id).await.as_deref() != Some(value.as_str()) {
            why.push("the AWSCURRENT value changed".into());
        }
        let mut credentials_after = vec![f.verifiers().await];
        for name in &truncated {
            credentials_after.push((f.admin.stored_credential(name).await, None));
        }
        if credentials_after != credentials_before {
            why.push("a real user's stored credential changed".into());
        }
        if f.admin.users_starting_with(&real).await != users_before {
            why.push("users were created or dropped".into());
        }
        let outcome = match &refused {
            Some((step, e)) => format!("{step} {}", e.kind()),
            None => "finished".into(),
        };
        println!(
            "hostile {} {}: {class}/{name}: {outcome}",
            db.kind.name(),
            strategy.name()
        );
        if !why.is_empty() {
            failures.push(format!("{class}/{name}: {}", why.join("; ")));
        }
    }
    println!(
        "hostile {} {}: {total} rotations against the server",
        db.kind.name(),
        strategy.name()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- dynamic credentials with hostile role definitions ----------------------

/// Role definitions whose `member_of`, `owner_role` or `dbname` are
/// hostile, built around the real group and owner roles.
fn dynamic_role_cases(
    kind: rotor_tests::Kind,
    group: &str,
    owner: &str,
) -> Vec<(&'static str, &'static str, Value)> {
    let pg = kind == rotor_tests::Kind::Postgres;
    let mut cases = Vec::new();
    for (field, real) in [("member_of", group), ("owner_role", owner)] {
        let wrap = |v: String| {
            if field == "member_of" {
                json!({ field: [v] })
            } else {
                json!({ field: v })
            }
        };
        let drop_other = if field == "member_of" { owner } else { group };
        cases.extend([
            (
                "sql",
                field,
                wrap(if pg {
                    format!("{real}\"; DROP ROLE \"{drop_other}\"; --")
                } else {
                    format!("{real}`; DROP ROLE `{drop_other}`; --")
                }),
            ),
            (
                "sql",
                field,
                wrap(format!("{real}'; DROP ROLE {drop_other}; --")),
            ),
            ("format", field, wrap(format!("{real}%s{{}}"))),
            ("nul", field, wrap(format!("{real}\0x"))),
            ("unicode", field, wrap(format!("\u{202e}{real}"))),
            ("unicode", field, wrap(real.replacen('o', "\u{043e}", 1))),
            ("length", field, wrap(format!("{real}{}", "é".repeat(40)))),
        ]);
    }
    for dbname in [
        "rotor_test host=evil.example sslmode=disable",
        "postgres://evil.example/rotor_test?sslmode=disable",
        "rotor_test;host=evil.example",
        "rotor_test\0x",
    ] {
        cases.push(("conninfo", "dbname", json!({ "dbname": dbname })));
    }
    cases
}

/// Issues a credential for each hostile role: the issue fails with a clear
/// error, leaves no user behind, and the group and owner roles survive.
async fn dynamic_cases(db: rotor_tests::TestDb) {
    let r = rotor_tests::dynamic_role(&db, json!({})).await;
    let caller = Caller {
        arn: "arn:aws:iam::123456789012:role/ci-hostile".into(),
        via: "test",
    };
    let cases = dynamic_role_cases(db.kind, &r.group, &r.owner);
    let total = cases.len();
    // The fixture's own role definition, one field changed per case.
    let base: Value = r
        .moto
        .all_values(&r.name)
        .await
        .first()
        .and_then(|v| serde_json::from_str(v).ok())
        .expect("the fixture's role definition");
    let mut failures = Vec::new();
    for (i, (class, field, overrides)) in cases.into_iter().enumerate() {
        let mut role = base.clone();
        if let (Value::Object(d), Value::Object(o)) = (&mut role, overrides) {
            d.extend(o);
        }
        let short = format!("hx{i}{}", &unique("r")[2..8]);
        let name = format!("{}{short}", r.prefix);
        r.moto.create_secret(&name, &role.to_string()).await;
        let result = r.dynamic.issue(&name, None, &caller, false).await;
        let mut why = Vec::new();
        match &result {
            Ok(c) => {
                // MariaDB hands nothing to an owner role: owner_role is
                // unused there, and the lease must simply revoke cleanly.
                if !(field == "owner_role" && db.kind == rotor_tests::Kind::MariaDb) {
                    why.push(format!("issued {}", c.username));
                }
                let _ = r
                    .dynamic
                    .revoke(
                        &RevokeTarget::User(c.username.clone()),
                        false,
                        &caller,
                        None,
                    )
                    .await;
            }
            Err(e) => {
                if let Some(u) = unclear(&e.to_string()) {
                    why.push(format!("{} not clear: {u}", e.kind()));
                }
                if e.is_retryable() {
                    why.push(format!("refused as retryable {}: {e}", e.kind()));
                }
            }
        }
        let prefix = format!("v_{short}_");
        if r.admin.users_starting_with(&prefix).await != 0 {
            why.push(format!("a user {prefix}… was left behind"));
        }
        // MariaDB has no object ownership: its fixture makes no owner role.
        let survivors = if db.kind == rotor_tests::Kind::Postgres {
            vec![&r.group, &r.owner]
        } else {
            vec![&r.group]
        };
        for survivor in survivors {
            if r.admin.users_starting_with(survivor).await != 1 {
                why.push(format!("role {survivor} was dropped or duplicated"));
            }
        }
        let outcome = match &result {
            Ok(_) => "issued".to_string(),
            Err(e) => e.kind().to_string(),
        };
        println!(
            "hostile {} dynamic: {class}/{field}: {outcome}",
            db.kind.name()
        );
        if !why.is_empty() {
            failures.push(format!("{class}/{field} #{i}: {}", why.join("; ")));
        }
    }
    println!(
        "hostile {} dynamic: {total} issues against the server",
        db.kind.name()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
