//! Revokes credentials when an EventBridge event says so: Rotor's own
//! `Revoke Credential` events (a secret, a dynamic user, a role, a tag),
//! GuardDuty RDS Protection login findings and CloudTrail events naming a
//! secret. Events caused by Rotor's own roles are ignored. All logic lives
//! in `rotor::dynamic::revoke`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_revoke_on_event().await
}
