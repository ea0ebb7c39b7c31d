//! The sample payloads in `events/` stay valid.
//!
//! - Every `*.json` under `events/` is JSON.
//! - A file under a rotation function's folder (`postgres-*`, `mysql-*`) is a
//!   rotation event that `rotor::RotationEvent::from_json` accepts, with one
//!   of the four steps, and the folder names a crate under `functions/`.
//! - Every function crate under `functions/` except the CLI (`rotor`) has a
//!   folder in `events/`; a rotation function's folder holds
//!   `createSecret.json`, `setSecret.json`, `testSecret.json` and
//!   `finishSecret.json`, each with the step its name says.
//!
//! - Every file in `events/eventbridge/` is an EventBridge envelope, and
//!   revoke-on-event accepts the ones its rules send it.
//!
//! Needs no server: `cargo test -p rotor-tests --test events`.

use std::path::{Path, PathBuf};

use rotor::{RotationEvent, Step};
use rotor_tests::layout::{function_crates, is_rotation_function, repo_root};

/// Every `*.json` file under `dir`, recursively, sorted.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The rotation function folder a file sits in (nearest such ancestor under `events/`).
fn rotation_folder(events: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(events).ok()?;
    relative
        .parent()?
        .components()
        .rev()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|name| is_rotation_function(name))
        .map(str::to_string)
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("not valid JSON: {e}"))
}

/// Checks one event file; `Err` says what is wrong with it.
fn check_event_file(root: &Path, events: &Path, path: &Path) -> Result<(), String> {
    let value = read_json(path)?;
    let Some(folder) = rotation_folder(events, path) else {
        return Ok(());
    };
    let event =
        RotationEvent::from_json(&value).map_err(|e| format!("not a rotation event: {e}"))?;
    if Step::parse(&event.step).is_none() {
        return Err(format!(
            "\"Step\": {:?} is not createSecret, setSecret, testSecret or finishSecret",
            event.step
        ));
    }
    if !root
        .join("functions")
        .join(&folder)
        .join("Cargo.toml")
        .is_file()
    {
        return Err(format!(
            "it sits in events/{folder}/, but there is no function crate functions/{folder}/"
        ));
    }
    Ok(())
}

fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} problem(s) in events/:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn every_event_file_is_valid() {
    let root = repo_root();
    let events = root.join("events");
    assert!(events.is_dir(), "{} is missing", events.display());
    let files = json_files(&events);
    assert!(
        !files.is_empty(),
        "no *.json file under {}",
        events.display()
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            check_event_file(&root, &events, path).err().map(|why| {
                let shown = path.strip_prefix(&root).unwrap_or(path);
                format!("{}: {why}", shown.display())
            })
        })
        .collect();
    report(&failures);
}

#[test]
fn every_function_has_sample_events() {
    let root = repo_root();
    let mut failures = Vec::new();
    for name in function_crates(&root) {
        let folder = root.join("events").join(&name);
        if !folder.is_dir() || json_files(&folder).is_empty() {
            failures.push(format!(
                "functions/{name} has no sample payloads: add events/{name}/*.json"
            ));
            continue;
        }
        if !is_rotation_function(&name) {
            continue;
        }
        for step in Step::ALL {
            let file = folder.join(format!("{step}.json"));
            let shown = format!("events/{name}/{step}.json");
            if !file.is_file() {
                failures.push(format!(
                    "{shown}: missing (functions/{name} is a rotation function)"
                ));
                continue;
            }
            match read_json(&file).and_then(|v| {
                RotationEvent::from_json(&v).map_err(|e| format!("not a rotation event: {e}"))
            }) {
                Ok(event) if event.step == step.as_str() => {}
                Ok(event) => failures.push(format!(
                    "{shown}: \"Step\" is {:?}, expected {:?}",
                    event.step,
                    step.as_str()
                )),
                Err(why) => failures.push(format!("{shown}: {why}")),
            }
        }
    }
    report(&failures);
}

#[test]
fn rotation_folder_is_found_at_any_depth() {
    let events = Path::new("/r/events");
    assert_eq!(
        rotation_folder(
            events,
            Path::new("/r/events/postgres-single-user/createSecret.json")
        )
        .as_deref(),
        Some("postgres-single-user")
    );
    assert_eq!(
        rotation_folder(
            events,
            Path::new("/r/events/mysql-multi-user/errors/bad.json")
        )
        .as_deref(),
        Some("mysql-multi-user")
    );
    assert_eq!(
        rotation_folder(events, Path::new("/r/events/other/x.json")),
        None
    );
    assert_eq!(
        rotation_folder(events, Path::new("/r/events/postgres-x.json")),
        None
    );
}

/// The sample events of the dynamic-credential functions are what those
/// functions accept.
#[test]
fn dynamic_function_events_parse() {
    let events = repo_root().join("events");
    let mut checked = 0;
    for file in json_files(&events.join("revoke-on-event")) {
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        let parsed = rotor::dynamic::revoke::from_event(&value, &[])
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(parsed.is_some(), "{}: ignored", file.display());
        checked += 1;
    }
    for file in json_files(&events.join("issue-credential")) {
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert!(
            rotor::lambda::url_caller(&value).is_ok(),
            "{}: not a function URL request: {:?}",
            file.display(),
            rotor::lambda::url_caller(&value).err()
        );
        let body =
            rotor::lambda::url_body(&value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(body.get("role").is_some(), "{}: no role", file.display());
        checked += 1;
    }
    for file in json_files(&events.join("expire-credentials")) {
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert!(value.is_object(), "{}", file.display());
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} dynamic-function events found");
}

/// `events/eventbridge/` holds events as EventBridge delivers them (the
/// template test runs every rule against them): each has the envelope's
/// `source`, `detail-type` and `detail`, and what revoke-on-event's rules
/// send it, it accepts, whoever the caller (root here: no sessionIssuer).
#[test]
fn eventbridge_samples_are_envelopes_that_the_functions_read() {
    let dir = repo_root().join("events/eventbridge");
    let files = json_files(&dir);
    assert!(!files.is_empty(), "no samples in {}", dir.display());
    for file in &files {
        let value = read_json(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for key in ["source", "detail-type", "account", "time", "region"] {
            assert!(
                value.get(key).and_then(serde_json::Value::as_str).is_some(),
                "{}: no \"{key}\"",
                file.display()
            );
        }
        assert!(value["detail"].is_object(), "{}: no detail", file.display());
    }
    for name in [
        "put-resource-policy-by-root",
        "guardduty-rds-successful-login",
        "custom-revoke-secret",
    ] {
        let value = read_json(&dir.join(format!("{name}.json"))).expect("sample");
        let parsed = rotor::dynamic::revoke::from_event(&value, &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(parsed.is_some(), "{name}: revoke-on-event ignores it");
    }
}
