//! # Rotor
//!
//! Everything the Rotor Lambda functions and CLI share. Data flows one way:
//! **event → protocol → store / engine**.
//!
//! - [`rotation`] — the Secrets Manager rotation contract, once: event
//!   validation, the four steps, every staging-label decision (its module
//!   docs hold the state machine). It knows nothing about SQL.
//! - [`store`] — a narrow trait over the secret service, with Secrets Manager
//!   and an embedded local file store that share its semantics.
//! - [`engine`] — one module per kind of database behind a small trait
//!   (log in, set a password, create or sync an alternate user).
//! - [`strategy`] — single user or alternating users, as data.
//! - [`secret`], [`password`], [`event`] — the contracts with AWS: secret
//!   JSON, password policy variables, the event shape.
//! - [`lambda`] — the runner each function's `main` calls.
//!
//! Secrets are [`SecretString`]s from the moment they are read: they never
//! reach a log line, an error message or a `Debug` print.

pub mod audit;
pub mod deadline;
#[cfg(feature = "postgres")]
pub mod demo;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod dynamic;
pub mod engine;
pub mod error;
pub mod event;
pub mod fault;
pub mod inventory;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod logging;
pub mod password;
pub mod principal;
pub mod rds;
pub mod rotation;
pub mod secret;
pub mod store;
pub mod strategy;
pub mod time;

pub use error::{Error, Result};

// The SDK crates the CLI and tests build clients from, at the versions Rotor uses.
#[cfg(feature = "secretsmanager")]
pub use aws_config;
pub use event::{RotationEvent, Step};
pub use password::PasswordPolicy;
pub use rotation::{Outcome, RotationReport, Rotator};
pub use secret::{DbSecret, SecretString};
pub use strategy::Strategy;
#[cfg(feature = "inventory-aws")]
pub use {aws_sdk_eventbridge, aws_sdk_lambda, aws_sdk_s3, aws_sdk_ssm};
