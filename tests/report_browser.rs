//! The HTML secrets report, opened as a person would: in headless Chromium.
//!
//! A [`Report`] built from fixture records (seven secrets, one per kind of
//! status, and two credentials found outside the store) at a fixed `now` is
//! written to a temporary file and loaded over `file://` in Debian's Chromium,
//! driven by ChromeDriver over the W3C WebDriver protocol (a few lines of
//! HTTP/1.1 over `std::net::TcpStream`, no WebDriver crate). Checked:
//!
//! - no console error and no uncaught exception, after loading and after the
//!   clicks, read twice: from ChromeDriver's browser log
//!   (`POST /session/{id}/se/log`) and from a capture installed before the
//!   page's own script runs (window `error` events, `unhandledrejection`,
//!   `console.error`); a probe error at the end proves that both would have
//!   seen one;
//! - one row per secret in `#secrets` and one per credential in `#plaintext`;
//! - both SVG charts are there, visible, with at least one `rect.bar`;
//! - the summary cards show the report's counts;
//! - clicking "Name" sorts ascending (case-insensitively), again descending;
//!   clicking "Rotation age (days)" sorts by the cells' `data-sort` numbers;
//! - a screenshot is saved to `target/report-screenshot.png`.
//!
//! Needs `ROTOR_TEST_CHROMIUM` and `ROTOR_TEST_CHROMEDRIVER`, which
//! `scripts/test-env` installs and exports:
//! `eval "$(scripts/test-env)" && cargo test -p rotor-tests --test report_browser`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rotor::inventory::classify::Rules;
use rotor::inventory::report::Report;
use rotor::inventory::{Inventory, PlaintextCredential, SecretRecord};
use serde_json::{Value, json};

const DAY: u64 = 86_400;
/// 2027-01-15T08:00:00Z.
const NOW: u64 = 1_800_000_000;

/// The W3C name of an element reference in WebDriver JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's flags as root on a machine with no network (see the env notes).
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1500",
];

/// Installed before the page's own script runs: records uncaught errors,
/// failed resource loads, unhandled rejections and `console.error` calls.
const ERROR_CAPTURE: &str = r#"
window.__rotorErrors = [];
window.addEventListener("error", function (e) {
  var what = e.message || (e.target && (e.target.src || e.target.href || e.target.tagName)) || String(e);
  window.__rotorErrors.push("error: " + what);
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__rotorErrors.push("unhandledrejection: " + String(e.reason));
});
(function () {
  var original = console.error;
  console.error = function () {
    window.__rotorErrors.push("console.error: " + Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
"#;

// ---------------------------------------------------------------- fixture

fn secret(name: &str) -> SecretRecord {
    SecretRecord {
        arn: format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}-AbCdEf"),
        name: name.to_string(),
        tags: [("owner".to_string(), "platform".to_string())].into(),
        rotation_enabled: true,
        rotation_lambda_arn: Some(
            "arn:aws:lambda:us-east-1:123456789012:function:rotor-postgres".into(),
        ),
        rotation_interval_days: Some(30),
        created: Some(NOW - 500 * DAY),
        last_rotated: Some(NOW - 5 * DAY),
        last_accessed: Some(NOW - DAY),
        ..Default::default()
    }
}

/// Seven secrets, each with the status named beside it.
fn fixture() -> (Inventory, Vec<(String, &'static str)>) {
    let secrets = vec![
        (secret("app/orders-db"), "compliant"),
        (
            SecretRecord {
                rotation_enabled: false,
                last_rotated: Some(NOW - 40 * DAY),
                ..secret("batch/etl-user")
            },
            "rotation_disabled",
        ),
        (
            SecretRecord {
                last_rotated: Some(NOW - 120 * DAY),
                ..secret("billing/payments")
            },
            "rotation_overdue",
        ),
        // Capitalised: byte order and a person's (case-insensitive) order differ.
        // No creation date either: its rotation age is unknown ("–", data-sort -1).
        (
            SecretRecord {
                created: None,
                last_rotated: None,
                ..secret("Legacy/reporting-ro")
            },
            "never_rotated",
        ),
        (
            SecretRecord {
                rotation_interval_days: Some(365),
                last_rotated: Some(NOW - 300 * DAY),
                last_accessed: Some(NOW - 100 * DAY),
                ..secret("ml/feature-store")
            },
            "unused",
        ),
        (
            SecretRecord {
                tags: [("team".to_string(), "search".to_string())].into(),
                last_rotated: Some(NOW - 3 * DAY),
                ..secret("search/indexer")
            },
            "no_owner_tag",
        ),
        (
            SecretRecord {
                last_rotated: Some(NOW - 20 * DAY),
                pending_since: Some(NOW - 2 * DAY),
                ..secret("web/session-key")
            },
            "rotation_stuck",
        ),
    ];
    let expected = secrets
        .iter()
        .map(|(s, st)| (s.name.clone(), *st))
        .collect();
    let inventory = Inventory {
        secrets: secrets.into_iter().map(|(s, _)| s).collect(),
        plaintext: vec![
            PlaintextCredential {
                kind: "lambda-environment".into(),
                location: "arn:aws:lambda:us-east-1:123456789012:function:legacy-export".into(),
                name: "DB_PASSWORD".into(),
                reason: "name pattern \"password\"".into(),
            },
            PlaintextCredential {
                kind: "ssm-parameter".into(),
                location: "arn:aws:ssm:us-east-1:123456789012:parameter/app/api-token".into(),
                name: "/app/api-token".into(),
                reason: "high entropy".into(),
            },
        ],
        api_calls: BTreeMap::new(),
    };
    (inventory, expected)
}

// ---------------------------------------------------------------- the test

#[test]
fn html_report_in_headless_chromium() {
    let chromedriver = required_env("ROTOR_TEST_CHROMEDRIVER");
    let chromium = required_env("ROTOR_TEST_CHROMIUM");

    let (inventory, expected) = fixture();
    let report = Report::build(&inventory, NOW, &Rules::default());
    for (name, status) in &expected {
        let got = report
            .secrets
            .iter()
            .find(|s| &s.secret.name == name)
            .map(|s| s.status.as_str());
        assert_eq!(
            got,
            Some(*status),
            "fixture: secret {name} should classify as {status}"
        );
    }

    let work = TempDir::new("rotor-report-browser");
    let page = work.path().join("report.html");
    std::fs::write(&page, report.to_html())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", page.display()));
    let profile = work.path().join("chromium-profile");
    std::fs::create_dir(&profile)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", profile.display()));

    let started = Instant::now();
    let mut browser = Browser::start(Path::new(&chromedriver), &work);
    eprintln!(
        "chromedriver up on 127.0.0.1:{} in {:?}",
        browser.port,
        started.elapsed()
    );

    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "pageLoadStrategy": "normal",
                "timeouts": { "pageLoad": 30_000, "script": 10_000, "implicit": 0 },
                "goog:chromeOptions": { "binary": chromium, "args": args },
                "goog:loggingPrefs": { "browser": "ALL" },
            }
        }
    });
    browser.new_session(&caps);
    eprintln!(
        "session {} in {:?}",
        browser.session_id(),
        started.elapsed()
    );

    // The capture must run before the page's script: Chromium's DevTools
    // command, through ChromeDriver, adds it to every new document.
    browser.cmd(
        "POST",
        "goog/cdp/execute",
        json!({ "cmd": "Page.addScriptToEvaluateOnNewDocument", "params": { "source": ERROR_CAPTURE } }),
        "install the error capture (Page.addScriptToEvaluateOnNewDocument)",
    );

    let url = format!("file://{}", page.display());
    browser.cmd(
        "POST",
        "url",
        json!({ "url": url }),
        "navigate to the report",
    );
    let title = browser.cmd("GET", "title", Value::Null, "read the title");
    assert!(
        title
            .as_str()
            .is_some_and(|t| t.starts_with("Rotor secrets report")),
        "the page at {url} has the title {title}, not the report's"
    );

    // No console errors, seen both ways.
    let log = browser.browser_log();
    let log_errors: Vec<&Value> = log
        .iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(
        log_errors.is_empty(),
        "the browser log has errors after loading the report: {log_errors:#?}"
    );
    let captured = browser.captured_errors();
    assert!(
        captured.is_empty(),
        "the page raised errors while loading: {captured:#?}"
    );
    eprintln!(
        "no console errors (browser log: {}; in-page capture: installed)",
        match &log {
            Some(entries) => format!("{} entries", entries.len()),
            None => "not offered by this ChromeDriver".into(),
        }
    );

    // Rows.
    let rows = browser.find_all("#secrets tbody tr");
    assert_eq!(
        rows.len(),
        expected.len(),
        "#secrets should have one row per secret"
    );
    let rows = browser.find_all("#plaintext tbody tr");
    assert_eq!(
        rows.len(),
        inventory.plaintext.len(),
        "#plaintext should have one row per plaintext credential"
    );
    let statuses = browser.texts("#secrets tbody tr td:nth-child(2)");
    let report_statuses: Vec<&str> = report.secrets.iter().map(|s| s.status.as_str()).collect();
    assert_eq!(
        statuses, report_statuses,
        "the Status column, in the report's order"
    );

    // Charts.
    for chart in ["#status-chart", "#age-chart"] {
        let found = browser.find_all(chart);
        assert_eq!(found.len(), 1, "expected exactly one {chart} element");
        let class = browser.attribute(&found[0], "class");
        assert_eq!(
            class.as_deref(),
            Some("chart"),
            "{chart} should have class \"chart\""
        );
        let rect = browser.cmd(
            "GET",
            &format!("element/{}/rect", found[0]),
            Value::Null,
            "read the chart's size",
        );
        let (w, h) = (
            rect["width"].as_f64().unwrap_or(0.0),
            rect["height"].as_f64().unwrap_or(0.0),
        );
        assert!(
            w > 0.0 && h > 0.0,
            "{chart} is not rendered with a size: {rect}"
        );
        let bars = browser.find_all(&format!("{chart} rect.bar"));
        assert!(!bars.is_empty(), "{chart} has no rect.bar");
        eprintln!("{chart}: {w}x{h} px, {} bars", bars.len());
    }

    // Summary cards.
    let summary = &report.summary;
    for (id, want) in [
        ("summary-total", summary.total),
        ("summary-compliant", summary.compliant),
        ("summary-non-compliant", summary.non_compliant),
        ("summary-plaintext", summary.plaintext_credentials),
    ] {
        let text = browser.texts(&format!("#{id}.card > b"));
        assert_eq!(
            text.len(),
            1,
            "expected one <b> in the .card #{id}, found {text:?}"
        );
        let got: usize = text[0]
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("#{id} <b> is {:?}, not a number", text[0]));
        assert_eq!(
            got, want,
            "#{id} shows {got}, the report's summary says {want}"
        );
    }

    // Sorting by clicks on the headers.
    let headers = browser.find_all("#secrets thead th");
    let header_texts: Vec<String> = headers.iter().map(|h| browser.text(h)).collect();
    let header = |label: &str| {
        let i = header_texts
            .iter()
            .position(|t| t.trim() == label)
            .unwrap_or_else(|| {
                panic!("no <th> {label:?} in #secrets; headers are {header_texts:?}")
            });
        headers[i].clone()
    };
    let name_th = header("Name");
    let age_th = header("Rotation age (days)");

    let mut names_asc: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    names_asc.sort_by_key(|n| n.to_lowercase());
    let mut names_desc = names_asc.clone();
    names_desc.reverse();
    let report_order: Vec<String> = report
        .secrets
        .iter()
        .map(|s| s.secret.name.clone())
        .collect();
    assert_eq!(
        browser.texts("#secrets tbody tr td:first-child"),
        report_order,
        "the rows before any click"
    );

    browser.click(&name_th, "the Name header");
    assert_eq!(
        browser.texts("#secrets tbody tr td:first-child"),
        names_asc,
        "Name after one click: ascending"
    );
    assert_eq!(
        browser.attribute(&name_th, "class").as_deref(),
        Some("sorted-asc"),
        "Name's class after one click"
    );
    browser.click(&name_th, "the Name header");
    assert_eq!(
        browser.texts("#secrets tbody tr td:first-child"),
        names_desc,
        "Name after a second click: descending"
    );
    assert_eq!(
        browser.attribute(&name_th, "class").as_deref(),
        Some("sorted-desc"),
        "Name's class after two clicks"
    );

    let mut ages: Vec<i64> = report
        .secrets
        .iter()
        .map(|s| s.rotation_age_days.map_or(-1, |d| d as i64))
        .collect();
    ages.sort_unstable();
    browser.click(&age_th, "the Rotation age header");
    let sorted = browser.age_column();
    assert_eq!(
        sorted.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
        ages,
        "Rotation age after one click: ascending by data-sort ({sorted:?})"
    );
    check_age_rows(&report, &sorted);
    assert_eq!(
        browser.attribute(&name_th, "class").as_deref(),
        Some(""),
        "Name's sort mark should go when another column sorts"
    );
    browser.click(&age_th, "the Rotation age header");
    let sorted = browser.age_column();
    ages.reverse();
    assert_eq!(
        sorted.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(),
        ages,
        "Rotation age after a second click: descending by data-sort ({sorted:?})"
    );
    check_age_rows(&report, &sorted);
    // From an order that is not by name, one click sorts by name again.
    browser.click(&name_th, "the Name header");
    assert_eq!(
        browser.texts("#secrets tbody tr td:first-child"),
        names_asc,
        "Name after sorting by age: ascending"
    );
    eprintln!(
        "sorting by Name and by Rotation age works ({:?})",
        started.elapsed()
    );
    // The clicks raised no error either.
    let log_errors: Vec<Value> = browser
        .browser_log()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(
        log_errors.is_empty(),
        "the browser log has errors after sorting: {log_errors:#?}"
    );
    let captured = browser.captured_errors();
    assert!(
        captured.is_empty(),
        "the page raised errors while sorting: {captured:#?}"
    );

    // Screenshot.
    let png_b64 = browser.cmd("GET", "screenshot", Value::Null, "take a screenshot");
    let png = base64_decode(
        png_b64
            .as_str()
            .unwrap_or_else(|| panic!("the screenshot is not a string: {png_b64}")),
    )
    .unwrap_or_else(|e| panic!("the screenshot is not base64: {e}"));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG (starts with {:?})",
        &png[..png.len().min(8)]
    );
    assert!(
        png.len() > 20_000,
        "the screenshot is only {} bytes: is the page blank?",
        png.len()
    );
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    assert!(
        width >= 800 && height >= 600,
        "the screenshot is only {width}x{height}"
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .join("target");
    std::fs::create_dir_all(&target)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", target.display()));
    let shot = target.join("report-screenshot.png");
    std::fs::write(&shot, &png).unwrap_or_else(|e| panic!("cannot write {}: {e}", shot.display()));
    eprintln!(
        "screenshot {width}x{height}, {} bytes: {}",
        png.len(),
        shot.display()
    );

    // The error checks above would have seen an error: a probe proves it.
    browser.cmd(
        "POST",
        "execute/sync",
        json!({ "script": "console.error('rotor-probe-error'); return true;", "args": [] }),
        "log a probe error",
    );
    let captured = browser.captured_errors();
    assert!(
        captured.iter().any(|e| e.contains("rotor-probe-error")),
        "the in-page capture missed a probe console.error: {captured:?}"
    );
    if let Some(log) = browser.browser_log() {
        assert!(
            log.iter().any(|e| e["level"] == "SEVERE"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("rotor-probe-error"))),
            "the browser log missed a probe console.error: {log:#?}"
        );
    }

    browser.delete_session();
    eprintln!("done in {:?}", started.elapsed());
}

/// Each row's age text agrees with its data-sort and with the report.
fn check_age_rows(report: &Report, rows: &[(i64, String, String)]) {
    for (sort, text, name) in rows {
        let s = report
            .secrets
            .iter()
            .find(|s| &s.secret.name == name)
            .unwrap_or_else(|| panic!("row {name:?} is not a secret of the report"));
        let want = s.rotation_age_days.map_or(-1, |d| d as i64);
        assert_eq!(*sort, want, "data-sort of the age of {name}");
        let want_text = s
            .rotation_age_days
            .map_or("–".to_string(), |d| d.to_string());
        assert_eq!(text, &want_text, "the age shown for {name}");
    }
}

fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs Debian's Chromium and ChromeDriver. Run it through scripts/test \
             (or `eval \"$(scripts/test-env)\"` first), which installs them and sets ROTOR_TEST_CHROMIUM and \
             ROTOR_TEST_CHROMEDRIVER"
        ),
    }
}

// ---------------------------------------------------------------- browser

/// ChromeDriver, its browser and session; torn down on drop, also on panic.
struct Browser {
    child: Child,
    port: u16,
    session: Option<String>,
    log_path: PathBuf,
    profile: PathBuf,
}

/// One WebDriver error answer (or a transport failure).
#[derive(Debug)]
struct WdError {
    status: u16,
    error: String,
    message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}: {}", self.status, self.error, self.message)
    }
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and waits until it is ready.
    fn start(chromedriver: &Path, work: &TempDir) -> Browser {
        let log_path = work.path().join("chromedriver.log");
        let profile = work.path().join("chromium-profile");
        let mut last_error = String::new();
        for attempt in 1..=3 {
            // A free port now; another process could take it before ChromeDriver does: retry then.
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"));
            let child = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log_path.display()))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
            let mut browser = Browser {
                child,
                port,
                session: None,
                log_path: log_path.clone(),
                profile: profile.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = browser.child.try_wait() {
                    last_error = format!(
                        "chromedriver exited with {status} (attempt {attempt}, port {port})"
                    );
                    break;
                }
                match http(port, "GET", "/status", None, Duration::from_secs(5)) {
                    Ok((200, v)) if v["value"]["ready"] == true => return browser,
                    Ok((code, v)) => last_error = format!("GET /status answered {code}: {v}"),
                    Err(e) => last_error = format!("GET /status: {e}"),
                }
                if Instant::now() > deadline {
                    last_error = format!(
                        "chromedriver was not ready within 20 s on port {port}: {last_error}"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(browser); // kills it
        }
        panic!("could not start {}: {last_error}", chromedriver.display());
    }

    fn new_session(&mut self, caps: &Value) {
        let (code, v) = http(
            self.port,
            "POST",
            "/session",
            Some(caps),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("POST /session (starting Chromium) failed: {e}"));
        let id = v["value"]["sessionId"].as_str();
        match (code, id) {
            (200, Some(id)) => self.session = Some(id.to_string()),
            _ => panic!(
                "ChromeDriver could not start Chromium (HTTP {code}): {} {}",
                v["value"]["error"], v["value"]["message"]
            ),
        }
    }

    fn session_id(&self) -> &str {
        self.session.as_deref().expect("a session was started")
    }

    /// A command in the session; `Err` carries WebDriver's error.
    fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, WdError> {
        let url = format!("/session/{}/{path}", self.session_id());
        let body = if body.is_null() { None } else { Some(&body) };
        let (status, v) =
            http(self.port, method, &url, body, Duration::from_secs(60)).map_err(|e| WdError {
                status: 0,
                error: "transport".into(),
                message: e,
            })?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(WdError {
                status,
                error: v["value"]["error"].as_str().unwrap_or("?").to_string(),
                message: v["value"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(600)
                    .collect(),
            })
        }
    }

    /// A command that must succeed: panics saying `what` failed.
    fn cmd(&self, method: &str, path: &str, body: Value, what: &str) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver: could not {what} ({method} {path}): {e}"))
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd(
            "POST",
            "elements",
            json!({ "using": "css selector", "value": css }),
            &format!("find {css:?}"),
        );
        v.as_array()
            .unwrap_or_else(|| panic!("find {css:?}: not a list: {v}"))
            .iter()
            .map(|e| {
                e[ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("find {css:?}: not an element reference: {e}"))
                    .to_string()
            })
            .collect()
    }

    fn text(&self, element: &str) -> String {
        let v = self.cmd(
            "GET",
            &format!("element/{element}/text"),
            Value::Null,
            "read an element's text",
        );
        v.as_str().unwrap_or_default().to_string()
    }

    fn texts(&self, css: &str) -> Vec<String> {
        self.find_all(css).iter().map(|e| self.text(e)).collect()
    }

    fn attribute(&self, element: &str, name: &str) -> Option<String> {
        let v = self.cmd(
            "GET",
            &format!("element/{element}/attribute/{name}"),
            Value::Null,
            &format!("read attribute {name}"),
        );
        v.as_str().map(str::to_string)
    }

    fn click(&self, element: &str, what: &str) {
        self.cmd(
            "POST",
            &format!("element/{element}/click"),
            json!({}),
            &format!("click {what}"),
        );
    }

    /// The Rotation age column top to bottom: (data-sort, text, name).
    fn age_column(&self) -> Vec<(i64, String, String)> {
        let names = self.texts("#secrets tbody tr td:first-child");
        let cells = self.find_all("#secrets tbody tr td:nth-child(3)");
        assert_eq!(
            cells.len(),
            names.len(),
            "every row has a Rotation age cell"
        );
        cells
            .iter()
            .zip(names)
            .map(|(cell, name)| {
                let sort = self.attribute(cell, "data-sort");
                let n = sort
                    .as_deref()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("the age cell of {name} has data-sort {sort:?}, not a number")
                    });
                (n, self.text(cell), name)
            })
            .collect()
    }

    /// The browser's console log since the last read, or `None` where this
    /// ChromeDriver does not offer `se/log`.
    fn browser_log(&self) -> Option<Vec<Value>> {
        match self.try_cmd("POST", "se/log", json!({ "type": "browser" })) {
            Ok(v) => Some(
                v.as_array()
                    .unwrap_or_else(|| panic!("se/log: not a list: {v}"))
                    .clone(),
            ),
            Err(e)
                if e.status == 404
                    || e.error == "unknown command"
                    || e.error == "unknown method" =>
            {
                None
            }
            Err(e) => panic!("WebDriver: could not read the browser log (POST se/log): {e}"),
        }
    }

    /// What the in-page capture recorded.
    fn captured_errors(&self) -> Vec<String> {
        let v = self.cmd(
            "POST",
            "execute/sync",
            json!({ "script": "return window.__rotorErrors === undefined ? null : window.__rotorErrors;", "args": [] }),
            "read the in-page error capture",
        );
        let list = v.as_array().unwrap_or_else(|| {
            panic!("the in-page error capture was not installed before the page loaded (got {v})")
        });
        list.iter()
            .map(|e| e.as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn delete_session(&mut self) {
        if let Some(id) = self.session.take()
            && let Err(e) = http(
                self.port,
                "DELETE",
                &format!("/session/{id}"),
                None,
                Duration::from_secs(20),
            )
        {
            eprintln!("DELETE /session/{id} failed: {e}");
        }
    }

    /// Live (not zombie) processes started by ChromeDriver, directly or not,
    /// or carrying this test's Chromium profile.
    fn our_processes(&self, tree: &[u32]) -> Vec<u32> {
        let marker = format!("--user-data-dir={}", self.profile.display());
        procs()
            .into_iter()
            .filter(|p| p.state != 'Z')
            .filter(|p| tree.contains(&p.pid) || p.args.iter().any(|a| a == &marker))
            .map(|p| p.pid)
            .collect()
    }
}

/// One process in /proc.
struct Proc {
    pid: u32,
    ppid: u32,
    state: char,
    args: Vec<String>,
}

fn procs() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(Proc {
                pid,
                ppid,
                state,
                args,
            })
        })
        .collect()
}

/// `root` and every process below it.
fn process_tree(root: u32) -> Vec<u32> {
    let all = procs();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    tree
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Normally ChromeDriver quits Chromium here...
        self.delete_session();
        // ...otherwise (no session, or ChromeDriver stuck) Chromium's processes,
        // noted while ChromeDriver is still their ancestor, end by pid.
        let tree = process_tree(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        let mut killed = false;
        loop {
            let left = self.our_processes(&tree);
            if left.is_empty() {
                break;
            }
            if started.elapsed() > Duration::from_secs(12) {
                eprintln!("processes {left:?} (Chromium) did not end within 10 s of SIGKILL");
                break;
            }
            // A browser that is quitting gets 2 s.
            if !killed && started.elapsed() > Duration::from_secs(2) {
                eprintln!("ending leftover Chromium processes {left:?}");
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(left.iter().map(u32::to_string))
                    .stderr(Stdio::null())
                    .status();
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(&self.log_path)
        {
            // Entries start with "[time][LEVEL]"; their JSON continuation lines are left out.
            let entries: Vec<String> = log
                .lines()
                .filter(|l| l.starts_with('['))
                .map(|l| l.chars().take(400).collect())
                .collect();
            let tail = &entries[entries.len().saturating_sub(25)..];
            eprintln!(
                "---- last entries of {} ----\n{}\n----",
                self.log_path.display(),
                tail.join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------- HTTP/1.1

/// One request to ChromeDriver on 127.0.0.1:`port`, JSON in and out,
/// bounded by `timeout` for connecting, writing and each read.
fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{method} {path}: write: {e}"))?;
    let started = Instant::now();
    let mut reader = BufReader::new(stream);
    let read_err =
        |e: std::io::Error| format!("{method} {path}: read after {:?}: {e}", started.elapsed());

    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(read_err)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(read_err)? == 0 {
            return Err(format!(
                "{method} {path}: connection closed inside the headers"
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    let mut bytes = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).map_err(read_err)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("{method} {path}: bad chunk size {size:?}"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).map_err(read_err)?;
            if size == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = content_length {
        bytes.resize(n, 0);
        reader.read_exact(&mut bytes).map_err(read_err)?;
    } else {
        reader.read_to_end(&mut bytes).map_err(read_err)?;
    }
    let _ = reader.get_ref().shutdown(Shutdown::Both);
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{method} {path}: HTTP {status} with a body that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })?;
    Ok((status, value))
}

fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("unexpected character {:?}", c as char)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- temp dir

/// A new directory under the system's temp dir, removed on drop unless the
/// test failed (then it is kept, with the page and ChromeDriver's log).
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept {} (the report page and chromedriver.log)",
                self.0.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
