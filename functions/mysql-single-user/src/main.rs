//! Secrets Manager rotation function for MySQL, Aurora MySQL and MariaDB,
//! single user: the user in the secret changes its own password.
//!
//! Drop-in for AWS's `SecretsManagerRDSMySQLRotationSingleUser` (and the
//! MariaDB one): same secret JSON, same environment variables. All logic
//! lives in the `rotor` crate.

use std::sync::Arc;

use rotor::Strategy;
use rotor::engine::mysql::MysqlEngine;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_rotation(
        || Ok(Arc::new(MysqlEngine::from_env()?)),
        Strategy::SingleUser,
    )
    .await
}
