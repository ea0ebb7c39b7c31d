//! Secrets Manager rotation function for PostgreSQL and Aurora PostgreSQL,
//! alternating users: the secret alternates between `<user>` and `<user>_clone`, maintained by the master secret named in `masterarn`.
//!
//! Drop-in for AWS's `SecretsManagerRDSPostgreSQLRotationMultiUser`: same
//! secret JSON, same environment variables. All logic lives in the `rotor` crate.

use std::sync::Arc;

use rotor::Strategy;
use rotor::engine::postgres::PostgresEngine;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_rotation(
        || Ok(Arc::new(PostgresEngine::from_env()?)),
        Strategy::AlternatingUsers,
    )
    .await
}
