//! Bad configuration reaches whoever invoked the function.
//!
//! A function whose environment is invalid (`PASSWORD_LENGTH=0`, a policy
//! that excludes every character, an unreadable override) must not exit
//! before the runtime loop starts: Lambda would then record only "Runtime
//! exited" and the operator would have to dig through logs. Each function's
//! real binary runs here against a loopback fake of the Lambda Runtime API
//! with one bad setting; the test waits for its answer to the first
//! invocation and requires the error (or, for the function URL, an HTTP 500)
//! with a message that names the setting. `rotor step` must print it too.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::Trial;
use rotor_tests::{TestEnv, unique};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};

use crate::trial;

/// How long a function may take from spawn to its first answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on `cargo build` of the function binaries (a no-op when fresh).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
const RUNTIME_PREFIX: &str = "/2018-06-01/runtime/";

/// The functions' binaries (named as their packages) and the CLI's.
const BINARIES: [&str; 10] = [
    "postgres-single-user",
    "postgres-multi-user",
    "mysql-single-user",
    "mysql-multi-user",
    "issue-credential",
    "expire-credentials",
    "revoke-on-event",
    "audit-report",
    "audit-events",
    "rotor",
];

const ROTATION_EVENT: &str = r#"{"Step":"createSecret","SecretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:app-AbCdEf","ClientRequestToken":"00000000-0000-4000-8000-000000000001"}"#;

/// Every character GetRandomPassword could use.
const EVERY_CHARACTER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// One function, one bad setting, the event it gets, and what its answer
/// must say.
struct Case {
    name: &'static str,
    package: &'static str,
    env: &'static [(&'static str, &'static str)],
    event: &'static str,
    /// Substrings the answer must contain.
    expect: &'static [&'static str],
    /// A substring the function's log must contain (what CloudWatch keeps).
    log: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "postgres_single_user::password_length_zero_answers_every_invocation",
        package: "postgres-single-user",
        env: &[("PASSWORD_LENGTH", "0")],
        event: ROTATION_EVENT,
        expect: &["rotor::Config", "PASSWORD_LENGTH=0", "between 1 and 4096"],
        log: "PASSWORD_LENGTH=0",
    },
    Case {
        name: "postgres_single_user::policy_excluding_everything_answers_every_invocation",
        package: "postgres-single-user",
        env: &[("EXCLUDE_CHARACTERS", EVERY_CHARACTER)],
        event: ROTATION_EVENT,
        expect: &["rotor::Config", "excludes every character", "EXCLUDE_"],
        log: "excludes every character",
    },
    Case {
        name: "postgres_multi_user::password_length_zero_answers_every_invocation",
        package: "postgres-multi-user",
        env: &[("PASSWORD_LENGTH", "0")],
        event: ROTATION_EVENT,
        expect: &["rotor::Config", "PASSWORD_LENGTH=0"],
        log: "PASSWORD_LENGTH=0",
    },
    Case {
        name: "mysql_single_user::policy_excluding_everything_answers_every_invocation",
        package: "mysql-single-user",
        env: &[("EXCLUDE_CHARACTERS", EVERY_CHARACTER)],
        event: ROTATION_EVENT,
        expect: &["rotor::Config", "excludes every character"],
        log: "excludes every character",
    },
    Case {
        name: "mysql_multi_user::bad_username_limit_answers_every_invocation",
        package: "mysql-multi-user",
        env: &[("USERNAME_CHARACTER_LIMIT", "thirty-two")],
        event: ROTATION_EVENT,
        expect: &["rotor::Config", "USERNAME_CHARACTER_LIMIT"],
        log: "USERNAME_CHARACTER_LIMIT",
    },
    Case {
        name: "issue_credential::bad_connect_timeout_answers_http_500",
        package: "issue-credential",
        env: &[("ROTOR_CONNECT_TIMEOUT_SECS", "soon")],
        event: r#"{"version":"2.0","requestContext":{"requestId":"req-config-1"},"body":"{\"role\":\"x\"}"}"#,
        expect: &["\"statusCode\":500", "misconfigured", "req-config-1"],
        log: "ROTOR_CONNECT_TIMEOUT_SECS",
    },
    Case {
        name: "expire_credentials::bad_host_override_answers_every_invocation",
        package: "expire-credentials",
        env: &[("ROTOR_HOST_OVERRIDES", "db.internal")],
        event: r#"{"dry_run":true}"#,
        expect: &["rotor::Config", "ROTOR_HOST_OVERRIDES", "name=ip"],
        log: "ROTOR_HOST_OVERRIDES",
    },
    Case {
        name: "revoke_on_event::bad_ignore_principals_answers_every_invocation",
        package: "revoke-on-event",
        env: &[("ROTOR_IGNORE_PRINCIPALS", "RotorExpireCredentialsRole")],
        event: r#"{"source":"rotor","detail-type":"Revoke Credential","detail":{"secret":"app"}}"#,
        expect: &["rotor::Config", "ROTOR_IGNORE_PRINCIPALS", "not an IAM ARN"],
        log: "ROTOR_IGNORE_PRINCIPALS",
    },
    Case {
        name: "audit_report::bad_unused_days_answers_every_invocation",
        package: "audit-report",
        env: &[("ROTOR_UNUSED_DAYS", "ninety")],
        event: r#"{}"#,
        expect: &["rotor::Config", "ROTOR_UNUSED_DAYS"],
        log: "ROTOR_UNUSED_DAYS",
    },
    Case {
        name: "audit_events::bad_ignore_principals_answers_every_invocation",
        package: "audit-events",
        env: &[(
            "ROTOR_IGNORE_PRINCIPALS",
            "arn:aws:iam::123456789012:role/Ok,rotor-role",
        )],
        event: r#"{"source":"aws.secretsmanager","detail-type":"AWS API Call via CloudTrail","detail":{}}"#,
        expect: &[
            "rotor::Config",
            "ROTOR_IGNORE_PRINCIPALS",
            "\\\"rotor-role\\\"",
        ],
        log: "ROTOR_IGNORE_PRINCIPALS",
    },
];

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut trials: Vec<Trial> = CASES
        .iter()
        .map(|case| {
            trial(format!("config_errors::{}", case.name), env, move |_env| {
                function_answers_with_config_error(case)
            })
        })
        .collect();
    trials.push(trial(
        "config_errors::rotor_cli::step_prints_the_configuration_error",
        env,
        |_env| cli_step_prints_config_error(),
    ));
    trials.push(trial(
        "config_errors::rotor_cli::report_fail_on_refuses_unknown_statuses",
        env,
        |_env| cli_fail_on_refuses_unknown_statuses(),
    ));
    trials
}

/// Issue 11, item 6: a typo in `--fail-on` (`rotation_stuk`) matched no
/// secret, so the gate passed (exit 0) whatever the report held. It must
/// stop with the list of known statuses, before reading anything.
async fn cli_fail_on_refuses_unknown_statuses() {
    let rotor = built_binaries().await.join("rotor");
    let dir = std::env::temp_dir().join(unique("rotor-fail-on"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = dir.join("store.json");
    let store_arg = store.display().to_string();
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&rotor);
        command
            .args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(ANSWER_TIMEOUT, command.output())
                .await
                .expect("rotor did not finish in time")
                .expect("run rotor")
        }
    };
    let secret = json!({"engine":"postgres","host":"127.0.0.1","port":9,"username":"app","password":"Old-pw-1","ssl":false}).to_string();
    let out = run(&[
        "secrets", "put", "app/db", "--value", &secret, "--local", &store_arg,
    ])
    .await;
    assert!(out.status.success(), "secrets put: {out:?}");
    // Every known status: the one secret has one of them, so the gate fires.
    let every = [&rotor::inventory::classify::STATUSES[..], &["plaintext"]].concat();
    let every = every.join(",");
    let out = run(&[
        "report",
        "--format",
        "json",
        "--fail-on",
        &every,
        "--local",
        &store_arg,
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "--fail-on {every}: {out:?}");
    for typo in ["rotation_stuk", "rotation_stuck,Rotation_Overdue"] {
        let out = run(&[
            "report",
            "--format",
            "json",
            "--fail-on",
            typo,
            "--local",
            &store_arg,
        ])
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--fail-on {typo} must be refused, not ignored: {out:?}"
        );
        assert!(
            stderr.contains("--fail-on")
                && rotor::inventory::classify::STATUSES
                    .iter()
                    .all(|s| stderr.contains(s))
                && stderr.contains("plaintext"),
            "the error must list the known statuses: {stderr}"
        );
        assert!(out.stdout.is_empty(), "no report after a refused gate");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the fake Runtime API saw the function post.
#[derive(Debug)]
enum Posted {
    Response(String),
    Error(String),
    InitError(String),
}

async fn function_answers_with_config_error(case: &'static Case) {
    let binaries = built_binaries().await;
    let binary = binaries.join(case.package);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, mut posted) = mpsc::unbounded_channel();
    let api = Arc::new(FakeRuntime {
        event: Mutex::new(Some(case.event.to_string())),
        posted: tx,
    });
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(runtime_connection(stream, api.clone()));
        }
    });
    let dir = std::env::temp_dir().join(unique("rotor-config-errors"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let stderr_path = dir.join("stderr");
    let stdout_path = dir.join("stdout");
    let mut command = tokio::process::Command::new(&binary);
    command
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", case.package)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        // Loopback only: never ask the instance-metadata address for anything.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .kill_on_drop(true);
    for (k, v) in case.env {
        command.env(k, v);
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
    let output = |dir: &Path| {
        format!(
            "stdout: {}\nstderr: {}",
            std::fs::read_to_string(dir.join("stdout")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
        )
    };
    let answer = tokio::select! {
        p = tokio::time::timeout(ANSWER_TIMEOUT, posted.recv()) => p,
        status = child.wait() => {
            // A last look: the answer may have been posted just before exit.
            match posted.try_recv() {
                Ok(p) => Ok(Some(p)),
                Err(_) => panic!(
                    "{}: the process exited ({:?}) without answering the invocation; the caller would see only \"Runtime exited\"\n{}",
                    case.package, status, output(&dir)
                ),
            }
        }
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    server.abort();
    let answer = match answer {
        Ok(Some(p)) => p,
        Ok(None) => panic!("the fake runtime stopped"),
        Err(_) => panic!(
            "{}: no answer within {ANSWER_TIMEOUT:?}\n{}",
            case.package,
            output(&dir)
        ),
    };
    let body = match &answer {
        Posted::Error(body) | Posted::InitError(body) => body,
        // issue-credential answers HTTP: the 500 is a response.
        Posted::Response(body) if case.package == "issue-credential" => body,
        Posted::Response(body) => panic!(
            "{}: answered success to an invocation it cannot serve: {body}",
            case.package
        ),
    };
    for needle in case.expect {
        assert!(
            body.contains(needle),
            "{}: the answer {answer:?} does not contain {needle:?}\n{}",
            case.package,
            output(&dir)
        );
    }
    // The log says it too (what CloudWatch keeps).
    let log = output(&dir);
    assert!(
        log.contains(case.log),
        "{}: the log does not say {:?}: {log}",
        case.package,
        case.log
    );
    assert!(!log.contains("panicked"), "{}: {log}", case.package);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rotor step` with a bad password policy: a clear message naming the
/// setting, exit status 1, the local store untouched.
async fn cli_step_prints_config_error() {
    let binaries = built_binaries().await;
    let rotor = binaries.join("rotor");
    let dir = std::env::temp_dir().join(unique("rotor-config-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = dir.join("store.json");
    let run = |args: Vec<String>, env: &'static [(&'static str, &'static str)]| {
        let mut command = tokio::process::Command::new(&rotor);
        command
            .args(args)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("PASSWORD_LENGTH")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        async move {
            tokio::time::timeout(ANSWER_TIMEOUT, command.output())
                .await
                .expect("rotor did not finish in time")
                .expect("run rotor")
        }
    };
    let store_arg = store.display().to_string();
    let secret = json!({"engine":"postgres","host":"127.0.0.1","port":9,"username":"app","password":"Old-pw-1","ssl":false}).to_string();
    let out = run(
        vec![
            "secrets".into(),
            "put".into(),
            "app/db".into(),
            "--value".into(),
            secret,
            "--local".into(),
            store_arg.clone(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "secrets put: {out:?}");
    let out = run(
        vec![
            "secrets".into(),
            "start-rotation".into(),
            "app/db".into(),
            "--local".into(),
            store_arg.clone(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "start-rotation: {out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let before = std::fs::read(&store).expect("read store");
    for (env, needle) in [
        (&[("PASSWORD_LENGTH", "0")][..], "PASSWORD_LENGTH=0"),
        (
            &[("EXCLUDE_CHARACTERS", EVERY_CHARACTER)][..],
            "excludes every character",
        ),
    ] {
        let out = run(
            vec![
                "step".into(),
                "createSecret".into(),
                "app/db".into(),
                token.clone(),
                "--local".into(),
                store_arg.clone(),
            ],
            env,
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "rotor step: {out:?}");
        assert!(
            stderr.contains("rotor: configuration:") && stderr.contains(needle),
            "rotor step must print the configuration error naming the setting: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(
            std::fs::read(&store).expect("read store"),
            before,
            "the store changed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

struct FakeRuntime {
    /// The one invocation to hand out; later long polls hang.
    event: Mutex<Option<String>>,
    posted: mpsc::UnboundedSender<Posted>,
}

/// One HTTP/1.1 connection of the runtime client (keep-alive: several
/// requests in a row). Enough of HTTP for the runtime client: a request
/// line, headers, a Content-Length body.
async fn runtime_connection(mut stream: TcpStream, api: Arc<FakeRuntime>) {
    let mut buffer = Vec::new();
    // Bounded: the client makes a handful of requests per test.
    for _ in 0..64 {
        let Some((head, body)) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let mut words = head.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or_default().to_string(),
            words.next().unwrap_or_default().to_string(),
        );
        let route = path.strip_prefix(RUNTIME_PREFIX).unwrap_or_default();
        let response = if method == "GET" && route == "invocation/next" {
            let Some(event) = api.event.lock().await.take() else {
                // No more invocations: hold the long poll until the test ends.
                tokio::time::sleep(ANSWER_TIMEOUT * 2).await;
                return;
            };
            let deadline_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
                + 60_000;
            let headers = format!(
                "Lambda-Runtime-Aws-Request-Id: req-1\r\nLambda-Runtime-Deadline-Ms: {deadline_ms}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:f\r\n"
            );
            http_response("200 OK", &headers, &event)
        } else if method == "POST" {
            let body = String::from_utf8_lossy(&body).into_owned();
            let posted = if route == "init/error" {
                Some(Posted::InitError(body))
            } else if route == "invocation/req-1/response" {
                Some(Posted::Response(body))
            } else if route == "invocation/req-1/error" {
                Some(Posted::Error(body))
            } else {
                None
            };
            match posted {
                Some(p) => {
                    let _ = api.posted.send(p);
                    http_response("202 Accepted", "", r#"{"status":"OK"}"#)
                }
                None => http_response("404 Not Found", "", "{}"),
            }
        } else {
            http_response("404 Not Found", "", "{}")
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn http_response(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
}

/// Reads one request: (request line and headers, body).
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = buffer[end + 4..end + 4 + length].to_vec();
            buffer.drain(..end + 4 + length);
            return Some((head, body));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The directory of this build's binaries (beside `deps/`, where this test
/// runs from), after `cargo build` of every function crate and the CLI.
/// `cargo test` builds a package's binaries only for that package's own
/// tests, so this builds them, once per test run; a no-op when fresh. The
/// whole workspace's binaries are built together so the `rotor` crate is
/// built with the same features as for this test (one build, not six).
pub(crate) async fn built_binaries() -> PathBuf {
    static BUILT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    BUILT
        .get_or_init(|| async {
            let exe = std::env::current_exe().expect("current_exe");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test runs from <target>/<profile>/deps")
                .to_path_buf();
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the tests crate sits in the workspace")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut args = vec![
                "build".to_string(),
                "--workspace".into(),
                "--bins".into(),
                "--locked".into(),
            ];
            if dir.file_name().is_some_and(|n| n == "release") {
                args.push("--release".into());
            }
            let target = dir.parent().expect("target dir").to_path_buf();
            let status = tokio::time::timeout(
                BUILD_TIMEOUT,
                tokio::process::Command::new(&cargo)
                    .args(&args)
                    .env("CARGO_TARGET_DIR", &target)
                    .current_dir(&root)
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .status(),
            )
            .await
            .unwrap_or_else(|_| panic!("cargo {args:?} did not finish within {BUILD_TIMEOUT:?}"))
            .expect("run cargo build");
            assert!(status.success(), "cargo {args:?} failed ({status})");
            for binary in BINARIES {
                assert!(
                    dir.join(binary).exists(),
                    "{} is missing after cargo build",
                    dir.join(binary).display()
                );
            }
            dir
        })
        .await
        .clone()
}
