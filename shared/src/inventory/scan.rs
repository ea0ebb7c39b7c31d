//! Inventory sources: the secret store, and credentials kept outside it —
//! Lambda environment variables and SSM String parameters whose names or
//! values look like credentials (name patterns and entropy). Those are
//! reported by location and name; their values are never kept or printed.

use std::collections::BTreeMap;

use super::{Inventory, SecretRecord};
use crate::error::Result;
use crate::store::{AWSCURRENT, AWSPENDING, ListFilter, SecretStore};

/// Name fragments that mark a credential.
const NAME_PATTERNS: [&str; 14] = [
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "auth",
    "conn_str",
    "connection_string",
    "database_url",
];

/// Why `name = value` looks like a credential, if it does. The value is
/// examined, never returned.
pub fn looks_like_credential(name: &str, value: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase().replace('-', "_");
    if let Some(p) = NAME_PATTERNS.iter().find(|p| lower.contains(*p)) {
        // An ARN or a reference to a secret is not a credential.
        if !value.starts_with("arn:") && !value.starts_with("{{resolve:") && !value.is_empty() {
            return Some(format!("name matches {p:?}"));
        }
    }
    // user:password@host in a URL.
    if let Some(rest) = value.split("://").nth(1)
        && let Some((userinfo, _)) = rest.split_once('@')
        && userinfo.contains(':')
    {
        return Some("URL with an embedded password".into());
    }
    if value.len() >= 20 && !value.contains(char::is_whitespace) && !value.starts_with("arn:") {
        let entropy = shannon_entropy(value);
        let classes = [
            value.chars().any(|c| c.is_ascii_lowercase()),
            value.chars().any(|c| c.is_ascii_uppercase()),
            value.chars().any(|c| c.is_ascii_digit()),
            value.chars().any(|c| c.is_ascii_punctuation()),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if entropy >= 4.0 && classes >= 3 {
            return Some(format!(
                "high-entropy value ({entropy:.1} bits per character)"
            ));
        }
    }
    None
}

/// Shannon entropy in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts: BTreeMap<char, usize> = BTreeMap::new();
    for c in s.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let n = s.chars().count() as f64;
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Inventory of any store through the trait (the local store, tests):
/// one describe per secret.
pub async fn from_store(store: &dyn SecretStore) -> Result<Inventory> {
    let mut inventory = Inventory::default();
    let listed = store.list_secrets(&ListFilter::default()).await?;
    *inventory.api_calls.entry("ListSecrets".into()).or_default() += 1;
    for s in listed {
        let meta = store.describe(&s.arn).await?;
        *inventory
            .api_calls
            .entry("DescribeSecret".into())
            .or_default() += 1;
        let current = meta.version_with(AWSCURRENT);
        let pending = meta
            .version_with(AWSPENDING)
            .filter(|p| Some(*p) != current);
        inventory.secrets.push(SecretRecord {
            arn: meta.arn.clone(),
            name: meta.name.clone(),
            tags: meta.tags.clone(),
            rotation_enabled: meta.rotation_enabled.unwrap_or(false),
            rotation_lambda_arn: meta.rotation_lambda_arn.clone(),
            created: meta.created,
            last_rotated: meta.last_rotated,
            last_changed: meta.last_changed,
            versions: meta.versions.clone(),
            pending_since: pending.and(meta.last_changed),
            ..Default::default()
        });
    }
    Ok(inventory)
}

#[cfg(feature = "inventory-aws")]
pub use aws::*;

#[cfg(feature = "inventory-aws")]
mod aws {
    use aws_sdk_secretsmanager::types::SecretListEntry;

    use super::*;
    use crate::error::Error;
    use crate::inventory::PlaintextCredential;

    fn secs(d: Option<&aws_sdk_secretsmanager::primitives::DateTime>) -> Option<u64> {
        d.map(|d| d.secs().max(0) as u64)
    }

    fn record(e: &SecretListEntry) -> SecretRecord {
        let rules = e.rotation_rules.as_ref();
        let schedule = rules.and_then(|r| r.schedule_expression.clone());
        let interval = rules
            .and_then(|r| r.automatically_after_days)
            .map(|d| d.max(0) as u64)
            .or_else(|| schedule.as_deref().and_then(days_of_schedule));
        SecretRecord {
            arn: e.arn.clone().unwrap_or_default(),
            name: e.name.clone().unwrap_or_default(),
            description: e.description.clone(),
            tags: e
                .tags
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
                .collect(),
            rotation_enabled: e.rotation_enabled.unwrap_or(false),
            rotation_lambda_arn: e.rotation_lambda_arn.clone(),
            rotation_interval_days: interval,
            rotation_schedule: schedule,
            created: secs(e.created_date.as_ref()),
            last_rotated: secs(e.last_rotated_date.as_ref()),
            last_changed: secs(e.last_changed_date.as_ref()),
            last_accessed: secs(e.last_accessed_date.as_ref()),
            next_rotation: secs(e.next_rotation_date.as_ref()),
            deleted_date: secs(e.deleted_date.as_ref()),
            versions: e
                .secret_versions_to_stages
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, s)| !s.is_empty())
                .collect(),
            ..Default::default()
        }
    }

    /// Days implied by `rate(N days)`, `rate(N hours)` (rounded up) or a cron
    /// schedule (taken as daily or more often: 1).
    pub fn days_of_schedule(expr: &str) -> Option<u64> {
        let e = expr.trim();
        if let Some(inner) = e.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            let mut parts = inner.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            return match parts.next()? {
                "day" | "days" => Some(n),
                "hour" | "hours" => Some(n.div_ceil(24)),
                _ => None,
            };
        }
        e.starts_with("cron(").then_some(1)
    }

    /// Every secret in Secrets Manager (ListSecrets, 100 per call, versions
    /// included), and for secrets with an unfinished rotation the pending
    /// version's age (ListSecretVersionIds).
    pub async fn from_secrets_manager(
        client: &aws_sdk_secretsmanager::Client,
    ) -> Result<Inventory> {
        let mut inventory = Inventory::default();
        let mut next: Option<String> = None;
        for _ in 0..100_000 {
            let page = client
                .list_secrets()
                .max_results(100)
                .include_planned_deletion(true)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| {
                    crate::store::secretsmanager::store_error("ListSecrets", "(all)", e)
                })?;
            *inventory.api_calls.entry("ListSecrets".into()).or_default() += 1;
            for entry in page.secret_list.unwrap_or_default() {
                inventory.secrets.push(record(&entry));
            }
            match page.next_token {
                Some(t) if !t.is_empty() => next = Some(t),
                _ => break,
            }
        }
        for s in &mut inventory.secrets {
            let current = s
                .versions
                .iter()
                .find(|(_, st)| st.iter().any(|x| x == AWSCURRENT))
                .map(|(id, _)| id.clone());
            let Some(pending) = s
                .versions
                .iter()
                .find(|(id, st)| {
                    st.iter().any(|x| x == AWSPENDING) && Some(*id) != current.as_ref()
                })
                .map(|(id, _)| id.clone())
            else {
                continue;
            };
            let out = client
                .list_secret_version_ids()
                .secret_id(&s.arn)
                .send()
                .await
                .map_err(|e| {
                    crate::store::secretsmanager::store_error("ListSecretVersionIds", &s.arn, e)
                })?;
            *inventory
                .api_calls
                .entry("ListSecretVersionIds".into())
                .or_default() += 1;
            s.pending_since = out
                .versions
                .unwrap_or_default()
                .into_iter()
                .find(|v| v.version_id.as_deref() == Some(pending.as_str()))
                .and_then(|v| secs(v.created_date.as_ref()));
        }
        Ok(inventory)
    }

    fn aws_err(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Store {
            operation: "inventory",
            secret: what.to_string(),
            detail: e.to_string(),
            retryable: true,
        }
    }

    /// Lambda functions' environment variables that look like credentials.
    pub async fn scan_lambda(
        client: &aws_sdk_lambda::Client,
        inventory: &mut Inventory,
    ) -> Result<()> {
        let mut marker: Option<String> = None;
        for _ in 0..10_000 {
            let page = client
                .list_functions()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| {
                    aws_err(
                        "ListFunctions",
                        aws_sdk_lambda::error::DisplayErrorContext(e),
                    )
                })?;
            *inventory
                .api_calls
                .entry("lambda:ListFunctions".into())
                .or_default() += 1;
            for f in page.functions.unwrap_or_default() {
                let location = f.function_arn.clone().unwrap_or_default();
                let vars = f.environment.and_then(|e| e.variables).unwrap_or_default();
                for (name, value) in vars {
                    if let Some(reason) = looks_like_credential(&name, &value) {
                        inventory.plaintext.push(PlaintextCredential {
                            kind: "lambda-environment".into(),
                            location: location.clone(),
                            name,
                            reason,
                        });
                    }
                }
            }
            match page.next_marker {
                Some(m) if !m.is_empty() => marker = Some(m),
                _ => break,
            }
        }
        Ok(())
    }

    /// SSM String parameters that look like credentials (SecureString is
    /// the right place: it is not reported).
    pub async fn scan_ssm(client: &aws_sdk_ssm::Client, inventory: &mut Inventory) -> Result<()> {
        let mut next: Option<String> = None;
        let mut names: Vec<String> = Vec::new();
        for _ in 0..10_000 {
            let page = client
                .describe_parameters()
                .max_results(50)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| {
                    aws_err(
                        "DescribeParameters",
                        aws_sdk_ssm::error::DisplayErrorContext(e),
                    )
                })?;
            *inventory
                .api_calls
                .entry("ssm:DescribeParameters".into())
                .or_default() += 1;
            for p in page.parameters.unwrap_or_default() {
                if p.r#type == Some(aws_sdk_ssm::types::ParameterType::String)
                    && let Some(n) = p.name
                {
                    names.push(n);
                }
            }
            match page.next_token {
                Some(t) if !t.is_empty() => next = Some(t),
                _ => break,
            }
        }
        for chunk in names.chunks(10) {
            let out = client
                .get_parameters()
                .set_names(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| {
                    aws_err("GetParameters", aws_sdk_ssm::error::DisplayErrorContext(e))
                })?;
            *inventory
                .api_calls
                .entry("ssm:GetParameters".into())
                .or_default() += 1;
            for p in out.parameters.unwrap_or_default() {
                let name = p.name.unwrap_or_default();
                let value = p.value.unwrap_or_default();
                if let Some(reason) = looks_like_credential(&name, &value) {
                    inventory.plaintext.push(PlaintextCredential {
                        kind: "ssm-parameter".into(),
                        location: p.arn.unwrap_or_else(|| name.clone()),
                        name,
                        reason,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_recognised_by_name_url_and_entropy() {
        assert!(looks_like_credential("DB_PASSWORD", "hunter2").is_some());
        assert!(looks_like_credential("db-password", "x").is_some());
        assert!(looks_like_credential("DB_PASSWORD_ARN", "arn:aws:secretsmanager:x").is_none());
        assert!(looks_like_credential("DATABASE", "postgres://app:s3cret@db:5432/x").is_some());
        assert!(looks_like_credential("SIGNING", "kP9#xQ2!mZ7$wL4@vB8%nR1^").is_some());
        assert!(looks_like_credential("LOG_LEVEL", "info").is_none());
        assert!(looks_like_credential("REGION", "us-east-1").is_none());
        assert!(
            looks_like_credential("MESSAGE", "the quick brown fox jumps over the lazy dog")
                .is_none()
        );
        let reason = looks_like_credential("DB_PASSWORD", "hunter2").unwrap();
        assert!(!reason.contains("hunter2"), "never the value");
    }
}
