//! JSON log lines through `tracing`: one object per line, the event's fields
//! at the top level and the current span's fields (secret ARN, step, token,
//! strategy) under `span`, which CloudWatch Logs Insights queries as
//! `span.secret_arn`. Nothing here ever formats a secret: the
//! types that hold one print `<redacted>`.

use tracing_subscriber::EnvFilter;

/// The default filter: Rotor at `info`, chatty dependencies at `warn`.
pub const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,aws_sdk_secretsmanager=warn,hyper=warn,rustls=warn,tokio_postgres=warn";

fn filter() -> EnvFilter {
    filter_from("info")
}

/// The filter with `level` for Rotor's own lines when neither `RUST_LOG`
/// nor `AWS_LAMBDA_LOG_LEVEL` says otherwise.
fn filter_from(level: &str) -> EnvFilter {
    // RUST_LOG wins; AWS_LAMBDA_LOG_LEVEL (set by Lambda's advanced logging
    // controls) is honoured next.
    if let Ok(f) = EnvFilter::try_from_env("RUST_LOG") {
        return f;
    }
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| l.to_ascii_lowercase())
        .unwrap_or_else(|_| level.to_string());
    EnvFilter::try_new(DEFAULT_FILTER.replacen("info", &level, 1))
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the JSON subscriber on stdout (ignored if one is installed).
pub fn init_json() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// Human-readable logs on stderr for the CLI (`--log-format text`), at
/// `level` unless `RUST_LOG` says otherwise.
pub fn init_text(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter_from(level))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// JSON logs on stderr (the CLI's default, so stdout stays for results).
pub fn init_json_stderr() {
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
