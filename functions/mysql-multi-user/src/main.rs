//! Secrets Manager rotation function for MySQL, Aurora MySQL and MariaDB,
//! alternating users: the master secret named in `masterarn` maintains
//! `<user>` and `<user>_clone` (same host part, every grant replayed), and
//! the two take turns. `USERNAME_CHARACTER_LIMIT` caps the clone's name.
//!
//! Drop-in for AWS's `SecretsManagerRDSMySQLRotationMultiUser` (and the
//! MariaDB one). All logic lives in the `rotor` crate.

use std::sync::Arc;

use rotor::Strategy;
use rotor::engine::mysql::MysqlEngine;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_rotation(
        || Ok(Arc::new(MysqlEngine::from_env()?)),
        Strategy::AlternatingUsers,
    )
    .await
}
