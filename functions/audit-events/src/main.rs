//! Watches Secrets Manager as it happens (EventBridge rules on its CloudTrail
//! and rotation events): stale-version reads, unexpected readers, public or
//! cross-account policies, rotation disabled, deletion scheduled, repeated
//! rotation failures — each published as a finding. All logic lives in
//! `rotor::inventory::events`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_audit_events().await
}
