//! The sweep, on an EventBridge Scheduler schedule: drops expired dynamic
//! users (sessions ended, objects handed to the role's owner), rotates
//! secrets past their `rotor:max-age`, revokes secrets past their
//! `rotor:expires-at`. `{"dry_run": true}` reports without changing anything.
//! All logic lives in `rotor::dynamic::sweep`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_expire_credentials().await
}
