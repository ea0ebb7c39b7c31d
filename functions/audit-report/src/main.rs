//! The compliance report, on an EventBridge schedule: every secret in
//! Secrets Manager classified with the rule that fired, credentials found in
//! Lambda environments and SSM String parameters (by location, never by
//! value), each finding published to EventBridge, the JSON/CSV/HTML report
//! written to S3. All logic lives in `rotor::inventory`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_audit_report().await
}
