//! The one runner every rotation function's `main` calls: JSON logging, the
//! Secrets Manager store, the password policy from AWS's environment
//! variables, and the Lambda runtime loop. Errors go back to Lambda, so
//! Secrets Manager records the failed step and retries it.

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::error::Error;
use crate::event::RotationEvent;
use crate::password::PasswordPolicy;
use crate::rotation::Rotator;
use crate::store::SecretsManagerStore;
use crate::strategy::Strategy;

impl From<Error> for Diagnostic {
    fn from(e: Error) -> Self {
        Diagnostic {
            error_type: format!("rotor::{}", e.kind()),
            error_message: e.to_string(),
        }
    }
}

/// Runs a rotation function until Lambda stops the process.
pub async fn run_rotation(
    make_engine: impl FnOnce() -> crate::Result<Arc<dyn Engine>>,
    strategy: Strategy,
) -> Result<(), lambda_runtime::Error> {
    crate::logging::init_json();
    let rotator = match build(make_engine, strategy).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error_kind = e.kind(), error = %e, "cannot start");
            return Err(Box::new(e));
        }
    };
    let rotator = &rotator;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let event = RotationEvent::from_json(&event.payload).inspect_err(|e| {
            tracing::error!(outcome = "failed", error_kind = e.kind(), retryable = false, error = %e, "step failed");
        })?;
        let outcome = rotator.handle(&event).await?;
        Ok::<Value, Error>(json!({ "step": event.step, "outcome": outcome.as_str() }))
    }))
    .await
}

async fn build(
    make_engine: impl FnOnce() -> crate::Result<Arc<dyn Engine>>,
    strategy: Strategy,
) -> crate::Result<Rotator> {
    let engine = make_engine()?;
    let policy = PasswordPolicy::from_env(engine.default_excluded_characters())?;
    let sdk_config = aws_config::load_from_env().await;
    let store = Arc::new(SecretsManagerStore::from_sdk_config(&sdk_config));
    let rotator = Rotator::new(store, engine, strategy, policy)
        .with_username_limit(crate::rotation::username_limit_from_env()?);
    #[cfg(feature = "rds")]
    let rotator = if strategy.uses_master() {
        rotator.with_rds(Arc::new(crate::rds::RdsApi::from_sdk_config(&sdk_config)))
    } else {
        rotator
    };
    Ok(rotator)
}
