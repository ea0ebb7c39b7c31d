//! JSON log lines through `tracing`: one object per line, with the current
//! span's fields (secret ARN, step, token, strategy) flattened in, as
//! CloudWatch Logs Insights expects. Nothing here ever formats a secret: the
//! types that hold one print `<redacted>`.

use tracing_subscriber::EnvFilter;

/// The default filter: Rotor at `info`, chatty dependencies at `warn`.
pub const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,aws_sdk_secretsmanager=warn,hyper=warn,rustls=warn,tokio_postgres=warn";

fn filter() -> EnvFilter {
    // RUST_LOG wins; AWS_LAMBDA_LOG_LEVEL (set by Lambda's advanced logging
    // controls) is honoured next.
    if let Ok(f) = EnvFilter::try_from_env("RUST_LOG") {
        return f;
    }
    if let Ok(level) = std::env::var("AWS_LAMBDA_LOG_LEVEL") {
        let level = level.to_ascii_lowercase();
        if let Ok(f) = EnvFilter::try_new(DEFAULT_FILTER.replacen("info", &level, 1)) {
            return f;
        }
    }
    EnvFilter::new(DEFAULT_FILTER)
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

/// Human-readable logs on stderr for the CLI (`--log-format text`).
pub fn init_text() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
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
