//! What Rotor asks the RDS API: where an RDS-managed master secret's database
//! is, and whether a host is a read replica of the master's instance (AWS's
//! functions accept a master secret for the source of a replica).

use async_trait::async_trait;

#[cfg(feature = "rds")]
use crate::error::Error;
use crate::error::Result;

/// The database an ARN names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbEndpoint {
    pub engine: String,
    pub host: String,
    pub port: Option<u16>,
}

/// The two RDS questions, behind a trait so tests can answer them.
#[async_trait]
pub trait RdsLookup: Send + Sync {
    /// Endpoint of a DB instance (`cluster = false`) or cluster, by ARN or id.
    async fn endpoint(&self, arn: &str, cluster: bool) -> Result<DbEndpoint>;

    /// Whether the instance whose endpoint is exactly `replica_host` is a
    /// read replica of the instance whose endpoint is exactly `source_host`.
    /// Endpoints are compared whole (case-insensitively, as DNS names are):
    /// a look-alike such as `prod-replica.evil.example` is not a replica.
    async fn is_read_replica_of(&self, replica_host: &str, source_host: &str) -> Result<bool>;
}

/// The RDS API (aws-sdk-rds). `ROTOR_RDS_ENDPOINT` overrides the endpoint
/// (besides the SDK's own `AWS_ENDPOINT_URL_RDS`).
#[cfg(feature = "rds")]
#[derive(Clone, Debug)]
pub struct RdsApi {
    client: aws_sdk_rds::Client,
}

#[cfg(feature = "rds")]
impl RdsApi {
    pub fn new(client: aws_sdk_rds::Client) -> Self {
        RdsApi { client }
    }

    pub async fn from_env() -> Self {
        Self::from_sdk_config(&aws_config::load_from_env().await)
    }

    /// A client from an already loaded SDK configuration.
    pub fn from_sdk_config(config: &aws_config::SdkConfig) -> Self {
        let mut builder = aws_sdk_rds::config::Builder::from(config);
        if let Ok(endpoint) = std::env::var("ROTOR_RDS_ENDPOINT")
            && !endpoint.trim().is_empty()
        {
            builder = builder.endpoint_url(endpoint.trim());
        }
        RdsApi::new(aws_sdk_rds::Client::from_conf(builder.build()))
    }
}

#[cfg(feature = "rds")]
fn endpoint_is(endpoint: &Option<aws_sdk_rds::types::Endpoint>, host: &str) -> bool {
    endpoint
        .as_ref()
        .and_then(|e| e.address.as_deref())
        .is_some_and(|address| !host.is_empty() && address.eq_ignore_ascii_case(host))
}

#[cfg(feature = "rds")]
fn rds_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Rds(format!(
        "{what} failed: {e}; the function's role needs rds:DescribeDBInstances and rds:DescribeDBClusters"
    ))
}

/// The identifier at the end of an ARN, or the string itself.
pub fn identifier_of(arn_or_id: &str) -> &str {
    arn_or_id.rsplit(':').next().unwrap_or(arn_or_id)
}

#[cfg(feature = "rds")]
#[async_trait]
impl RdsLookup for RdsApi {
    async fn endpoint(&self, arn: &str, cluster: bool) -> Result<DbEndpoint> {
        use aws_sdk_rds::error::DisplayErrorContext;
        if cluster {
            let out = self
                .client
                .describe_db_clusters()
                .db_cluster_identifier(arn)
                .send()
                .await
                .map_err(|e| rds_error("DescribeDBClusters", DisplayErrorContext(e)))?;
            let c = out
                .db_clusters
                .and_then(|c| c.into_iter().next())
                .ok_or_else(|| Error::Rds(format!("no DB cluster {arn}")))?;
            Ok(DbEndpoint {
                engine: c.engine.unwrap_or_default(),
                host: c
                    .endpoint
                    .ok_or_else(|| Error::Rds(format!("DB cluster {arn} has no endpoint yet")))?,
                port: c.port.and_then(|p| u16::try_from(p).ok()),
            })
        } else {
            let out = self
                .client
                .describe_db_instances()
                .db_instance_identifier(arn)
                .send()
                .await
                .map_err(|e| rds_error("DescribeDBInstances", DisplayErrorContext(e)))?;
            let i = out
                .db_instances
                .and_then(|i| i.into_iter().next())
                .ok_or_else(|| Error::Rds(format!("no DB instance {arn}")))?;
            let endpoint = i
                .endpoint
                .ok_or_else(|| Error::Rds(format!("DB instance {arn} has no endpoint yet")))?;
            Ok(DbEndpoint {
                engine: i.engine.unwrap_or_default(),
                host: endpoint.address.unwrap_or_default(),
                port: endpoint.port.and_then(|p| u16::try_from(p).ok()),
            })
        }
    }

    async fn is_read_replica_of(&self, replica_host: &str, source_host: &str) -> Result<bool> {
        // As AWS's function: any lookup failure means "not a replica". The
        // instance id is the endpoint's first label; the endpoint RDS reports
        // for that id must then be the whole host, for both instances.
        let describe = |id: String| async move {
            let out = self
                .client
                .describe_db_instances()
                .db_instance_identifier(id)
                .send()
                .await
                .ok()?;
            let mut instances = out.db_instances.unwrap_or_default();
            (instances.len() == 1).then(|| instances.remove(0))
        };
        let first_label = |host: &str| host.split('.').next().unwrap_or_default().to_string();
        let Some(replica) = describe(first_label(replica_host)).await else {
            return Ok(false);
        };
        if !endpoint_is(&replica.endpoint, replica_host) {
            return Ok(false);
        }
        let Some(source_id) = replica
            .read_replica_source_db_instance_identifier
            .as_deref()
        else {
            return Ok(false);
        };
        let Some(source) = describe(identifier_of(source_id).to_string()).await else {
            return Ok(false);
        };
        Ok(endpoint_is(&source.endpoint, source_host))
    }
}
