//! Where findings and reports go: EventBridge events (`source` `rotor`,
//! `detail-type` `Secret Compliance Finding`), so users route them to SNS,
//! Slack or a ticket; and S3 objects for the report. No secret values.

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::{Value, json};

use super::events::EventFinding;
use super::report::Report;
use crate::error::{Error, Result};

pub const SOURCE: &str = "rotor";
pub const DETAIL_TYPE: &str = "Secret Compliance Finding";

fn publish_error(e: impl std::fmt::Display) -> Error {
    Error::Store {
        operation: "PutEvents",
        secret: "(findings)".into(),
        detail: e.to_string(),
        retryable: true,
    }
}

/// The event details for every non-compliant secret and plaintext credential.
pub fn finding_details(report: &Report) -> Vec<Value> {
    let mut out = Vec::new();
    for s in report.secrets.iter().filter(|s| s.status != "compliant") {
        out.push(json!({
            "kind": "secret",
            "secret_arn": s.secret.arn,
            "secret_name": s.secret.name,
            "status": s.status,
            "findings": s.findings,
            "generated_at": report.generated_at,
        }));
    }
    for p in &report.plaintext_credentials {
        out.push(json!({
            "kind": "plaintext",
            "status": "plaintext_credential",
            "location": p.location,
            "name": p.name,
            "reason": p.reason,
            "credential_kind": p.kind,
            "generated_at": report.generated_at,
        }));
    }
    out
}

/// Event details of `audit-events` findings.
pub fn event_finding_details(findings: &[EventFinding]) -> Vec<Value> {
    findings
        .iter()
        .map(|f| json!({"kind": "event", "secret_arn": f.secret, "status": f.status, "findings": [{"status": f.status, "rule": f.rule}], "actor": f.actor, "event_name": f.event_name, "event_time": f.event_time}))
        .collect()
}

/// Puts the details on `bus` (10 per call). Returns how many were accepted.
pub async fn publish(
    client: &aws_sdk_eventbridge::Client,
    bus: &str,
    details: &[Value],
) -> Result<usize> {
    let mut accepted = 0;
    for chunk in details.chunks(10) {
        let entries: Vec<PutEventsRequestEntry> = chunk
            .iter()
            .map(|d| {
                PutEventsRequestEntry::builder()
                    .source(SOURCE)
                    .detail_type(DETAIL_TYPE)
                    .detail(d.to_string())
                    .event_bus_name(bus)
                    .set_resources(
                        d.get("secret_arn")
                            .and_then(Value::as_str)
                            .map(|a| vec![a.to_string()]),
                    )
                    .build()
            })
            .collect();
        let out = client
            .put_events()
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| publish_error(aws_sdk_eventbridge::error::DisplayErrorContext(e)))?;
        let failed = out.failed_entry_count.max(0) as usize;
        accepted += chunk.len() - failed;
        if failed > 0 {
            tracing::warn!(failed, "EventBridge refused some findings");
        }
    }
    Ok(accepted)
}

/// Writes `report.{json,csv,html}` under `<prefix>/<date>/` and `<prefix>/latest/`.
pub async fn upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    report: &Report,
) -> Result<Vec<String>> {
    let date = report.generated_at.get(..10).unwrap_or("undated");
    let prefix = prefix.trim_end_matches('/');
    let mut keys = Vec::new();
    for (ext, body, content_type) in [
        ("json", report.to_json(), "application/json"),
        ("csv", report.to_csv(), "text/csv"),
        ("html", report.to_html(), "text/html; charset=utf-8"),
    ] {
        for folder in [date, "latest"] {
            let key = if prefix.is_empty() {
                format!("{folder}/report.{ext}")
            } else {
                format!("{prefix}/{folder}/report.{ext}")
            };
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .content_type(content_type)
                .body(body.clone().into_bytes().into())
                .send()
                .await
                .map_err(|e| Error::Store {
                    operation: "PutObject",
                    secret: format!("s3://{bucket}/{key}"),
                    detail: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                    retryable: true,
                })?;
            keys.push(key);
        }
    }
    Ok(keys)
}
