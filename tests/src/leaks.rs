//! The leak check: every log line the integration suite produced, and the
//! test PostgreSQL's own statement log, must contain no password that any
//! rotation generated and no planted canary.
//!
//! [`capture`] installs the production JSON log format (at `debug` for Rotor)
//! writing into memory, plus a panic hook that records panic messages there
//! too; tests [`remember`] every secret value they see; [`check`] runs last.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Default)]
struct State {
    logs: Vec<u8>,
    secrets: Vec<String>,
}

fn state() -> &'static Arc<Mutex<State>> {
    static STATE: OnceLock<Arc<Mutex<State>>> = OnceLock::new();
    STATE.get_or_init(Default::default)
}

#[derive(Clone)]
struct Buffer;

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut s) = state().lock() {
            s.logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        Buffer
    }
}

/// Installs the capturing subscriber and panic hook (once per process).
pub fn capture() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::new(format!(
            "{},rotor=debug",
            rotor::logging::DEFAULT_FILTER
        )))
        .with_current_span(true)
        .with_span_list(true)
        .flatten_event(true)
        .with_ansi(false)
        .with_writer(Buffer)
        .try_init();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = writeln!(Buffer, "{{\"panic\":{:?}}}", info.to_string());
        previous(info);
    }));
}

/// Records a secret value (a password, or a whole JSON secret whose
/// `password` is extracted) that must never appear in any log.
pub fn remember(value: &str) {
    let password = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| {
            v.get("password")
                .and_then(|p| p.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| value.to_string());
    if let Ok(mut s) = state().lock() {
        s.secrets.push(password);
    }
}

/// The captured log text so far.
pub fn captured() -> String {
    state()
        .lock()
        .map(|s| String::from_utf8_lossy(&s.logs).into_owned())
        .unwrap_or_default()
}

/// Lines captured so far that mention `needle`.
pub fn lines_with(needle: &str) -> usize {
    captured().lines().filter(|l| l.contains(needle)).count()
}

/// What the check found.
pub struct Report {
    pub log_lines: usize,
    pub server_log_lines: usize,
    pub secrets_checked: usize,
}

/// Fails when a remembered secret appears in the captured logs or in the
/// server log text, or when too little was captured to mean anything.
pub fn check(server_log: &str, min_log_lines: usize, min_secrets: usize) -> Result<Report, String> {
    let logs = captured();
    let secrets = state()
        .lock()
        .map(|s| s.secrets.clone())
        .map_err(|_| "leak state poisoned".to_string())?;
    let log_lines = logs.lines().count();
    if log_lines < min_log_lines {
        return Err(format!(
            "only {log_lines} log lines captured (expected at least {min_log_lines}): the capture is not working"
        ));
    }
    for needle in ["\"step succeeded\"", "\"step failed\"", "rotation_step"] {
        if !logs.contains(needle) {
            return Err(format!(
                "captured logs contain no {needle}: step spans or error paths were not captured"
            ));
        }
    }
    if secrets.len() < min_secrets {
        return Err(format!(
            "only {} secrets remembered (expected at least {min_secrets})",
            secrets.len()
        ));
    }
    // One pass over each text for every password at once (thousands of
    // them, over logs of a few hundred MB): Aho-Corasick, not a scan each.
    let mut needles: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| s.len() >= 8)
        .collect();
    needles.sort_unstable();
    needles.dedup();
    let finder = aho_corasick::AhoCorasick::new(&needles)
        .map_err(|e| format!("cannot build the leak search: {e}"))?;
    if finder.is_match(&logs) {
        return Err("a password appears in the captured Rotor logs".into());
    }
    if finder.is_match(server_log) {
        return Err("a password appears in the PostgreSQL server log".into());
    }
    Ok(Report {
        log_lines,
        server_log_lines: server_log.lines().count(),
        secrets_checked: secrets.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_password_in_either_text_fails_the_check() {
        for i in 0..300 {
            remember(&format!("{{\"password\": \"pw-{i:04}-not-in-the-logs\"}}"));
        }
        remember("short"); // under 8 bytes: not searched
        for _ in 0..200 {
            let _ = writeln!(
                Buffer,
                "{{\"message\":\"step succeeded\",\"span\":\"rotation_step\"}}\n{{\"message\":\"step failed\"}}"
            );
        }
        let report = check("server log", 200, 300).expect("nothing leaked");
        assert_eq!(report.secrets_checked, 301);
        let err = check(
            "LOG: ALTER ROLE x PASSWORD 'pw-0123-not-in-the-logs'",
            200,
            300,
        )
        .err()
        .expect("a password in the server log fails the check");
        assert!(err.contains("server log"), "{err}");
        let _ = writeln!(Buffer, "{{\"oops\":\"pw-0299-not-in-the-logs\"}}");
        let err = check("", 200, 300)
            .err()
            .expect("a password in Rotor's logs fails the check");
        assert!(err.contains("Rotor logs"), "{err}");
    }
}
