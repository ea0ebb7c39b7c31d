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

    /// Whether instance `replica_id` is a read replica of `source_id`.
    async fn is_read_replica_of(&self, replica_id: &str, source_id: &str) -> Result<bool>;
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

    async fn is_read_replica_of(&self, replica_id: &str, source_id: &str) -> Result<bool> {
        // As AWS's function: any lookup failure means "not a replica".
        let Ok(out) = self
            .client
            .describe_db_instances()
            .db_instance_identifier(replica_id)
            .send()
            .await
        else {
            return Ok(false);
        };
        let instances = out.db_instances.unwrap_or_default();
        let [instance] = instances.as_slice() else {
            return Ok(false);
        };
        Ok(instance
            .read_replica_source_db_instance_identifier
            .as_deref()
            .is_some_and(|src| identifier_of(src) == source_id))
    }
}
