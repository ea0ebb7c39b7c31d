//! The AWS Secrets Manager store (aws-sdk-secretsmanager).
//!
//! Endpoint: `SECRETS_MANAGER_ENDPOINT` (the variable AWS's functions honour)
//! wins over the SDK's own `AWS_ENDPOINT_URL_SECRETS_MANAGER` /
//! `AWS_ENDPOINT_URL`. Retries are the SDK's standard ones in production.
//!
//! Every call (the SDK's retries included) is bounded by the time left in
//! the invocation ([`crate::deadline`]), and every failure names the
//! endpoint, the call and how long it took, so a throttled or failing
//! service reads in the log as which server, which call, how long.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;

use super::{SecretMetadata, SecretStore, VersionRef};
use crate::error::{Error, Result};
use crate::secret::SecretString;

/// Secrets Manager behind the [`SecretStore`] trait.
#[derive(Clone, Debug)]
pub struct SecretsManagerStore {
    client: Client,
    /// Where calls go, for errors and logs (the override or the regional name).
    endpoint: String,
}

/// One call's own bound, retries included, when no Lambda deadline is closer.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Maps an SDK error to Rotor's, keeping the service's error code.
pub(crate) fn store_error<E>(
    operation: &'static str,
    secret: &str,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let (detail, retryable) = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let status = service.raw().status().as_u16();
            // A 5xx or 429 is the service (or a load balancer, a VPC
            // endpoint in front of it) being unwell, whatever the body says.
            let retryable = status == 429
                || (500..600).contains(&status)
                || matches!(
                    e.code(),
                    Some(
                        "ThrottlingException"
                            | "InternalServiceError"
                            | "ServiceUnavailable"
                            | "RequestTimeout"
                    )
                );
            let detail = match e.code() {
                Some(code) => format!("{code}: {}", e.message().unwrap_or("no message")),
                None => format!("HTTP {status} without a Secrets Manager error in the body"),
            };
            (detail, retryable)
        }
        SdkError::TimeoutError(_) => ("timed out".to_string(), true),
        SdkError::DispatchFailure(d) => (
            format!(
                "could not send the request ({}); check the route to Secrets Manager (VPC endpoint or NAT) or SECRETS_MANAGER_ENDPOINT",
                d.as_connector_error()
                    .map_or_else(|| "dispatch failure".to_string(), |c| c.to_string())
            ),
            true,
        ),
        SdkError::ResponseError(_) => ("unreadable response".to_string(), true),
        other => (other.to_string(), false),
    };
    Error::Store {
        operation,
        secret: secret.to_string(),
        detail,
        retryable,
    }
}

/// Pages of ListSecretVersionIds read at most (100 versions each).
const MAX_VERSION_PAGES: usize = 20;

fn is_not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(err, SdkError::ServiceError(s) if s.err().code() == Some("ResourceNotFoundException"))
}

impl SecretsManagerStore {
    pub fn new(client: Client) -> Self {
        let endpoint = client.config().region().map_or_else(
            || "Secrets Manager".to_string(),
            |r| format!("https://secretsmanager.{r}.amazonaws.com"),
        );
        SecretsManagerStore { client, endpoint }
    }

    /// The endpoint named in errors, when the client has an override.
    pub fn with_endpoint_name(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Runs one SDK call (its retries included) within the time left and
    /// says where it went and how long it took when it fails.
    async fn call<T>(
        &self,
        operation: &'static str,
        secret_id: &str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let what = format!("{operation} on {secret_id} (the SDK's retries included)");
        let bound = crate::deadline::budget(CALL_TIMEOUT);
        crate::deadline::bounded(&self.endpoint, &what, bound, f)
            .await
            .map_err(|e| match e {
                Error::Store {
                    operation,
                    secret,
                    detail,
                    retryable,
                } => Error::Store {
                    operation,
                    secret,
                    detail: format!(
                        "{detail} (from {} after {} ms, the SDK's retries included)",
                        self.endpoint,
                        started.elapsed().as_millis()
                    ),
                    retryable,
                },
                other => other,
            })
    }

    /// A client from the environment (credentials chain, region), with
    /// `SECRETS_MANAGER_ENDPOINT` applied.
    pub async fn from_env() -> Self {
        Self::from_sdk_config(&aws_config::load_from_env().await)
    }

    /// A client from an already loaded SDK configuration.
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        let mut builder = aws_sdk_secretsmanager::config::Builder::from(config);
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL_SECRETS_MANAGER")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .or_else(|| config.endpoint_url().map(str::to_string));
        if let Ok(url) = std::env::var("SECRETS_MANAGER_ENDPOINT")
            && !url.trim().is_empty()
        {
            builder = builder.endpoint_url(url.trim());
            endpoint = Some(url.trim().to_string());
        }
        let store = SecretsManagerStore::new(Client::from_conf(builder.build()));
        match endpoint {
            Some(url) => store.with_endpoint_name(url),
            None => store,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Asks the service to rotate with the function configured on the secret
    /// (`rotor rotate --service`). Returns the new version id.
    pub async fn rotate_with_service(&self, secret_id: &str) -> Result<Option<String>> {
        let out = self
            .call("RotateSecret", secret_id, async {
                self.client
                    .rotate_secret()
                    .secret_id(secret_id)
                    .send()
                    .await
                    .map_err(|e| store_error("RotateSecret", secret_id, e))
            })
            .await?;
        Ok(out.version_id)
    }
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    fn kind(&self) -> &'static str {
        "secretsmanager"
    }

    async fn describe(&self, secret_id: &str) -> Result<SecretMetadata> {
        let out = self
            .call("DescribeSecret", secret_id, async {
                self.client
                    .describe_secret()
                    .secret_id(secret_id)
                    .send()
                    .await
                    .map_err(|e| {
                        if is_not_found(&e) {
                            Error::NotFound {
                                what: format!("secret {secret_id}"),
                            }
                        } else {
                            store_error("DescribeSecret", secret_id, e)
                        }
                    })
            })
            .await?;
        Ok(SecretMetadata {
            arn: out.arn.clone().unwrap_or_else(|| secret_id.to_string()),
            name: out.name.clone().unwrap_or_default(),
            rotation_enabled: out.rotation_enabled,
            rotation_lambda_arn: out.rotation_lambda_arn.clone(),
            // moto lists deprecated versions with no label; the service omits them.
            versions: out
                .version_ids_to_stages
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, stages)| !stages.is_empty())
                .collect(),
            tags: out
                .tags
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t: Tag| Some((t.key?, t.value.unwrap_or_default())))
                .collect(),
            last_rotated: out.last_rotated_date.map(|d| d.secs().max(0) as u64),
            last_changed: out.last_changed_date.map(|d| d.secs().max(0) as u64),
            created: out.created_date.map(|d| d.secs().max(0) as u64),
        })
    }

    async fn get(&self, secret_id: &str, version: VersionRef<'_>) -> Result<Option<SecretString>> {
        let request = self.client.get_secret_value().secret_id(secret_id);
        // Always name a stage or id: moto's "default version" is not AWSCURRENT.
        let request = match version {
            VersionRef::Stage(stage) => request.version_stage(stage),
            VersionRef::Id(id) => request.version_id(id),
        };
        self.call("GetSecretValue", secret_id, async {
            match request.send().await {
                Ok(out) => match out.secret_string {
                    Some(s) => Ok(Some(SecretString::new(s))),
                    None => Err(Error::bad_secret(
                        secret_id,
                        version,
                        "holds SecretBinary, not a JSON SecretString; store the credentials as a JSON string",
                    )),
                },
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(store_error("GetSecretValue", secret_id, e)),
            }
        })
        .await
    }

    async fn put_pending(
        &self,
        secret_id: &str,
        token: &str,
        value: &SecretString,
        rotation_token: Option<&str>,
    ) -> Result<()> {
        self.call("PutSecretValue", secret_id, async {
            self.client
                .put_secret_value()
                .secret_id(secret_id)
                .client_request_token(token)
                .secret_string(value.expose())
                .version_stages(super::AWSPENDING)
                .set_rotation_token(rotation_token.map(str::to_string))
                .send()
                .await
                .map_err(|e| store_error("PutSecretValue", secret_id, e))
        })
        .await?;
        Ok(())
    }

    async fn update_stage(
        &self,
        secret_id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> Result<()> {
        self.call("UpdateSecretVersionStage", secret_id, async {
            self.client
                .update_secret_version_stage()
                .secret_id(secret_id)
                .version_stage(stage)
                .set_move_to_version_id(move_to.map(str::to_string))
                .set_remove_from_version_id(remove_from.map(str::to_string))
                .send()
                .await
                .map_err(|e| store_error("UpdateSecretVersionStage", secret_id, e))
        })
        .await?;
        Ok(())
    }

    async fn list_secrets(&self, filter: &super::ListFilter) -> Result<Vec<super::SecretSummary>> {
        use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        // Bounded: 10,000 pages of 100 is far beyond any account's quota.
        for _ in 0..10_000 {
            let mut request = self
                .client
                .list_secrets()
                .max_results(100)
                .set_next_token(next.take());
            if let Some(prefix) = &filter.name_prefix {
                request = request.filters(
                    Filter::builder()
                        .key(FilterNameStringType::Name)
                        .values(prefix)
                        .build(),
                );
            }
            if let Some(key) = &filter.tag_key {
                request = request.filters(
                    Filter::builder()
                        .key(FilterNameStringType::TagKey)
                        .values(key)
                        .build(),
                );
            }
            let page = self
                .call("ListSecrets", "(all)", async {
                    request
                        .send()
                        .await
                        .map_err(|e| store_error("ListSecrets", "(all)", e))
                })
                .await?;
            for s in page.secret_list.unwrap_or_default() {
                let name = s.name.unwrap_or_default();
                let tags = s
                    .tags
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
                    .collect();
                // The service's Name filter matches prefixes of any word;
                // keep exactly what the filter means.
                if filter.matches(&name, &tags) {
                    out.push(super::SecretSummary {
                        arn: s.arn.unwrap_or_default(),
                        name,
                        tags,
                    });
                }
            }
            match page.next_token {
                Some(t) if !t.is_empty() => next = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn tag(&self, secret_id: &str, key: &str, value: &str) -> Result<()> {
        self.call("TagResource", secret_id, async {
            self.client
                .tag_resource()
                .secret_id(secret_id)
                .tags(Tag::builder().key(key).value(value).build())
                .send()
                .await
                .map_err(|e| store_error("TagResource", secret_id, e))
        })
        .await?;
        Ok(())
    }

    async fn request_rotation(&self, secret_id: &str) -> Result<bool> {
        self.rotate_with_service(secret_id).await?;
        Ok(true)
    }

    async fn list_versions(&self, secret_id: &str) -> Result<Vec<String>> {
        // Every page: the newest versions may be on any of them.
        let mut versions = Vec::new();
        let mut next_token: Option<String> = None;
        // Secrets Manager keeps about 100 versions; a service that repeats
        // its token must not keep the step busy until the deadline.
        for _ in 0..MAX_VERSION_PAGES {
            let request = self
                .client
                .list_secret_version_ids()
                .secret_id(secret_id)
                .include_deprecated(true)
                .max_results(100)
                .set_next_token(next_token.take());
            let out = self
                .call("ListSecretVersionIds", secret_id, async {
                    request
                        .send()
                        .await
                        .map_err(|e| store_error("ListSecretVersionIds", secret_id, e))
                })
                .await?;
            versions.extend(
                out.versions
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|v| {
                        let created = v
                            .created_date
                            .map_or((0, 0), |d| (d.secs(), d.subsec_nanos()));
                        Some((created, v.version_id?))
                    }),
            );
            match out.next_token {
                Some(token) if !token.is_empty() => next_token = Some(token),
                _ => break,
            }
        }
        // Newest first, to the sub-second. Equal dates (moto gives every
        // version the time of the call) keep the reverse of the listing
        // order, which is the order of creation.
        versions.reverse();
        versions.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
        Ok(versions.into_iter().map(|(_, id)| id).collect())
    }
}
