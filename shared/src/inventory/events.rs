//! `audit-events`: findings from Secrets Manager's CloudTrail events and
//! its rotation events, as they happen. Each event yields zero or more
//! [`EventFinding`]s, published like the report's (no secret values):
//!
//! - `stale_version_read` — GetSecretValue of a version that is no longer
//!   AWSCURRENT, long after the rotation (`ROTOR_STALE_READ_HOURS`, 24);
//! - `unexpected_reader` — a read by a principal outside the allow-list in
//!   the secret's `rotor:allowed-readers` tag (comma-separated ARN patterns);
//! - `public_policy` / `cross_account_policy` — PutResourcePolicy granting
//!   `*` or another account;
//! - `rotation_disabled` — CancelRotateSecret;
//! - `deletion_scheduled` — DeleteSecret;
//! - `role_definition_changed` — any modification (below) of a secret under
//!   the roles prefix (`ROTOR_ROLES_PREFIX`, `rotor/roles/`), CreateSecret
//!   included: who may get which database powers changed;
//! - `secret_modified` — any other modification by someone not Rotor
//!   ([`MODIFICATIONS`]) that no finding above already covers;
//! - `rotation_failed` / `repeated_rotation_failures` — RotationFailed or
//!   RotationAbandoned; the count lives in the `rotor:rotation-failures` tag.
//!
//! GetSecretValue is a read-only *management* event: it reaches EventBridge
//! only when a trail logs read management events and a rule matches them
//! (see the README and infra/template.yaml).

use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::principal::principal_allowed;
use crate::store::{AWSCURRENT, SecretStore};

pub const TAG_ALLOWED_READERS: &str = "rotor:allowed-readers";
pub const TAG_ROTATION_FAILURES: &str = "rotor:rotation-failures";

/// CloudTrail event names that change a secret, its versions, policy,
/// replicas, tags or rotation. Each one by someone not Rotor is a finding
/// (actor, action, target, time); infra/template.yaml's audit rule sends them.
pub const MODIFICATIONS: &[&str] = &[
    "CreateSecret",
    "PutSecretValue",
    "UpdateSecret",
    "UpdateSecretVersionStage",
    "DeleteSecret",
    "RestoreSecret",
    "PutResourcePolicy",
    "DeleteResourcePolicy",
    "ReplicateSecretToRegions",
    "RemoveRegionsFromReplication",
    "TagResource",
    "UntagResource",
    "RotateSecret",
    "CancelRotateSecret",
];

/// One finding from one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventFinding {
    pub status: String,
    pub secret: String,
    pub rule: String,
    /// Who caused the event.
    pub actor: String,
    pub event_name: String,
    pub event_time: String,
}

/// Settings.
#[derive(Clone, Debug)]
pub struct EventRules {
    pub stale_read_after: u64,
    /// Rotor's own roles: their events are not findings.
    pub ignore: Vec<String>,
    /// Where role definitions live (secret name prefix).
    pub roles_prefix: String,
}

impl Default for EventRules {
    fn default() -> Self {
        EventRules {
            stale_read_after: std::env::var("ROTOR_STALE_READ_HOURS")
                .ok()
                .and_then(|h| h.trim().parse::<u64>().ok())
                .unwrap_or(24)
                * 3600,
            ignore: Vec::new(),
            roles_prefix: std::env::var("ROTOR_ROLES_PREFIX")
                .ok()
                .filter(|p| !p.trim().is_empty())
                .unwrap_or_else(|| "rotor/roles/".into()),
        }
    }
}

/// A secret's name from its id: the name itself, or the ARN's
/// `secret:<name>` part (the ARN adds a six-character suffix after `-`).
fn secret_name(id: &str) -> &str {
    match id
        .strip_prefix("arn:")
        .and_then(|_| id.split_once(":secret:"))
    {
        Some((_, name)) => name,
        None => id,
    }
}

fn text(v: &Value, path: &str) -> Option<String> {
    v.pointer(path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The account a principal names: a bare account id, or the account field
/// of any IAM or STS ARN in any partition
/// (`arn:<partition>:iam|sts::<account>:…`, assumed-role and federated-user
/// sessions included). `None` for service and other non-account principals.
fn principal_account(principal: &str) -> Option<&str> {
    if !principal.is_empty() && principal.chars().all(|c| c.is_ascii_digit()) {
        return Some(principal);
    }
    let mut fields = principal.split(':');
    let (arn, _partition, service, _region, account) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    (arn == "arn" && matches!(service, "iam" | "sts") && !account.is_empty()).then_some(account)
}

/// Whether a resource policy grants anyone (`*`) or another account.
/// Returns the status that fires. An `Allow` with `NotPrincipal` grants
/// everyone but the principals it lists, so it is public.
pub fn policy_exposure(policy: &str, own_account: &str) -> Option<&'static str> {
    let doc: Value = serde_json::from_str(policy).ok()?;
    let statements = match doc.get("Statement")? {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    let mut worst = None;
    for st in statements {
        if st.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        if st.get("NotPrincipal").is_some() {
            return Some("public_policy");
        }
        let principals: Vec<String> = match st.get("Principal") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Object(m)) => m
                .values()
                .flat_map(|v| match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => vec![],
                })
                .collect(),
            _ => vec![],
        };
        for p in principals {
            if p == "*" {
                return Some("public_policy");
            }
            if let Some(a) = principal_account(&p)
                && a != own_account
            {
                worst = Some("cross_account_policy");
            }
        }
    }
    worst
}

/// Analyses one EventBridge event against the store.
pub async fn analyse(
    event: &Value,
    store: &dyn SecretStore,
    rules: &EventRules,
    now: u64,
) -> Result<Vec<EventFinding>> {
    let detail = event.get("detail").cloned().unwrap_or(Value::Null);
    let event_name = text(&detail, "/eventName").unwrap_or_default();
    let actor = text(&detail, "/userIdentity/sessionContext/sessionIssuer/arn")
        .or_else(|| text(&detail, "/userIdentity/arn"))
        .or_else(|| text(&detail, "/userIdentity/invokedBy"))
        .unwrap_or_default();
    if !actor.is_empty() && principal_allowed(&actor, &rules.ignore) {
        return Ok(Vec::new());
    }
    let secret = text(&detail, "/requestParameters/secretId")
        .or_else(|| text(&detail, "/additionalEventData/SecretId"))
        .or_else(|| text(&detail, "/serviceEventDetails/secretId"))
        .or_else(|| text(&detail, "/responseElements/arn"))
        .or_else(|| text(&detail, "/requestParameters/name"))
        .or_else(|| {
            event
                .get("resources")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let Some(secret) = secret else {
        return Ok(Vec::new());
    };
    let event_time = text(&detail, "/eventTime")
        .or_else(|| text(event, "/time"))
        .unwrap_or_default();
    let finding = |status: &str, rule: String| EventFinding {
        status: status.into(),
        secret: secret.clone(),
        rule,
        actor: actor.clone(),
        event_name: event_name.clone(),
        event_time: event_time.clone(),
    };
    let mut out = Vec::new();
    match event_name.as_str() {
        "GetSecretValue" => {
            let meta = match store.describe(&secret).await {
                Ok(m) => m,
                Err(crate::Error::NotFound { .. }) => return Ok(out),
                Err(e) => return Err(e),
            };
            let stage = text(&detail, "/requestParameters/versionStage");
            let version = text(&detail, "/requestParameters/versionId");
            let not_current = match (&version, &stage) {
                (Some(v), _) => !meta.has_stage(v, AWSCURRENT),
                (None, Some(s)) => s != AWSCURRENT,
                (None, None) => false,
            };
            if not_current
                && let Some(rotated) = meta.last_rotated
                && now.saturating_sub(rotated) > rules.stale_read_after
            {
                out.push(finding(
                    "stale_version_read",
                    format!(
                        "read {} {} after the rotation made it stale",
                        version.or(stage).unwrap_or_default(),
                        crate::time::format_duration(now - rotated)
                    ),
                ));
            }
            if let Some(allowed) = meta.tags.get(TAG_ALLOWED_READERS) {
                let patterns: Vec<String> = allowed
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if !actor.is_empty() && !principal_allowed(&actor, &patterns) {
                    out.push(finding(
                        "unexpected_reader",
                        format!("{actor} is not in {TAG_ALLOWED_READERS}"),
                    ));
                }
            }
        }
        "PutResourcePolicy" => {
            let policy = text(&detail, "/requestParameters/resourcePolicy").unwrap_or_default();
            let account = text(&detail, "/recipientAccountId")
                .or_else(|| text(event, "/account"))
                .unwrap_or_default();
            if let Some(status) = policy_exposure(&policy, &account) {
                out.push(finding(
                    status,
                    "the resource policy grants access beyond this account".into(),
                ));
            }
        }
        "CancelRotateSecret" => out.push(finding(
            "rotation_disabled",
            "rotation was turned off".into(),
        )),
        "DeleteSecret" => out.push(finding(
            "deletion_scheduled",
            "deletion was scheduled".into(),
        )),
        "RotationFailed" | "RotationAbandoned" => {
            let count = match store.describe(&secret).await {
                Ok(meta) => {
                    meta.tags
                        .get(TAG_ROTATION_FAILURES)
                        .and_then(|c| c.parse::<u64>().ok())
                        .unwrap_or(0)
                        + 1
                }
                Err(_) => 1,
            };
            // Best effort: a missing TagResource permission must not hide the finding.
            let _ = store
                .tag(&secret, TAG_ROTATION_FAILURES, &count.to_string())
                .await;
            if count >= 2 {
                out.push(finding(
                    "repeated_rotation_failures",
                    format!("{count} rotation failures in a row ({event_name})"),
                ));
            } else {
                out.push(finding("rotation_failed", event_name.clone()));
            }
        }
        "RotationSucceeded" => {
            let _ = store.tag(&secret, TAG_ROTATION_FAILURES, "0").await;
        }
        _ => {}
    }
    if MODIFICATIONS.contains(&event_name.as_str()) {
        let who = if actor.is_empty() {
            "an unknown principal"
        } else {
            actor.as_str()
        };
        if !rules.roles_prefix.is_empty() && secret_name(&secret).starts_with(&rules.roles_prefix) {
            out.push(finding(
                "role_definition_changed",
                format!("{event_name} by {who} changed a role definition"),
            ));
        } else if out.is_empty() {
            out.push(finding("secret_modified", format!("{event_name} by {who}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies() {
        let public = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"secretsmanager:GetSecretValue","Resource":"*"}]}"#;
        assert_eq!(
            policy_exposure(public, "123456789012"),
            Some("public_policy")
        );
        let other = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::999999999999:root"]},"Action":"*"}}"#;
        assert_eq!(
            policy_exposure(other, "123456789012"),
            Some("cross_account_policy")
        );
        let own = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:role/app"},"Action":"*"}}"#;
        assert_eq!(policy_exposure(own, "123456789012"), None);
        let deny = r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"*"}}"#;
        assert_eq!(policy_exposure(deny, "123456789012"), None);
    }

    #[test]
    fn not_principal_allow_is_public() {
        // Allow with NotPrincipal: everyone except the listed principals.
        let all_but_one = r#"{"Statement":[{"Effect":"Allow","NotPrincipal":{"AWS":"arn:aws:iam::123456789012:role/app"},"Action":"secretsmanager:GetSecretValue","Resource":"*"}]}"#;
        assert_eq!(
            policy_exposure(all_but_one, "123456789012"),
            Some("public_policy")
        );
        // Deny with NotPrincipal narrows access: nothing to report.
        let deny_others = r#"{"Statement":{"Effect":"Deny","NotPrincipal":{"AWS":"arn:aws:iam::123456789012:role/app"},"Action":"*"}}"#;
        assert_eq!(policy_exposure(deny_others, "123456789012"), None);
    }

    #[test]
    fn other_accounts_sessions_and_partitions_are_cross_account() {
        for principal in [
            "arn:aws:sts::999999999999:assumed-role/admin/session",
            "arn:aws-cn:iam::999999999999:role/reader",
            "arn:aws-us-gov:iam::999999999999:user/ops",
            "arn:aws:sts::999999999999:federated-user/bob",
        ] {
            let policy = format!(
                r#"{{"Statement":{{"Effect":"Allow","Principal":{{"AWS":"{principal}"}},"Action":"*"}}}}"#
            );
            assert_eq!(
                policy_exposure(&policy, "123456789012"),
                Some("cross_account_policy"),
                "{principal}"
            );
        }
        let own_session = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:sts::123456789012:assumed-role/app/x"},"Action":"*"}}"#;
        assert_eq!(policy_exposure(own_session, "123456789012"), None);
        let service = r#"{"Statement":{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"*"}}"#;
        assert_eq!(policy_exposure(service, "123456789012"), None);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A sample from events/eventbridge/ (recorded CloudTrail shape).
    fn sample(name: &str) -> Value {
        let path = format!(
            "{}/../events/eventbridge/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).expect("sample")).expect("JSON")
    }

    fn rules() -> EventRules {
        EventRules {
            stale_read_after: 24 * 3600,
            ignore: vec!["arn:aws:iam::123456789012:role/rotor-*".into()],
            roles_prefix: "rotor/roles/".into(),
        }
    }

    fn findings(event: &Value) -> Vec<EventFinding> {
        let store = crate::store::LocalStore::in_memory();
        rt().block_on(analyse(event, &store, &rules(), 1_800_000_000))
            .expect("analyse")
    }

    const APP: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rotor/app-AbCdEf";

    /// Issue 11, item 1: every modification by someone not Rotor is a
    /// finding that names actor, action, target and time, whoever the
    /// caller is (IAM user, root, assumed role, AWS service).
    #[test]
    fn modifications_by_anyone_but_rotor_are_findings_with_actor_action_target_time() {
        let cases = [
            (
                "put-secret-value-by-iam-user",
                "secret_modified",
                "arn:aws:iam::123456789012:user/ci-deployer",
            ),
            (
                "update-secret-version-stage-by-assumed-role",
                "secret_modified",
                "arn:aws:iam::123456789012:role/ops-admin",
            ),
            (
                "untag-resource-by-iam-user",
                "secret_modified",
                "arn:aws:iam::123456789012:user/ci-deployer",
            ),
            (
                "delete-resource-policy-by-aws-service",
                "secret_modified",
                "cloudformation.amazonaws.com",
            ),
            (
                "replicate-secret-to-regions-by-root",
                "secret_modified",
                "arn:aws:iam::123456789012:root",
            ),
            (
                "put-resource-policy-by-root",
                "cross_account_policy",
                "arn:aws:iam::123456789012:root",
            ),
        ];
        for (file, status, actor) in cases {
            let event = sample(file);
            let got = findings(&event);
            assert_eq!(got.len(), 1, "{file}: {got:?}");
            let f = &got[0];
            assert_eq!(f.status, status, "{file}");
            assert_eq!(f.actor, actor, "{file}");
            assert_eq!(f.event_name, event["detail"]["eventName"], "{file}");
            assert_eq!(f.secret, APP, "{file}");
            assert_eq!(f.event_time, "2026-11-28T19:30:00Z", "{file}");
        }
    }

    #[test]
    fn every_modification_name_yields_a_finding() {
        let mut event = sample("put-secret-value-by-iam-user");
        for name in MODIFICATIONS {
            event["detail"]["eventName"] = Value::from(*name);
            let got = findings(&event);
            assert_eq!(got.len(), 1, "{name}: {got:?}");
            assert_eq!(got[0].event_name, *name);
            assert_eq!(got[0].actor, "arn:aws:iam::123456789012:user/ci-deployer");
        }
    }

    #[test]
    fn role_definition_changes_are_their_own_finding() {
        let got = findings(&sample("role-definition-update-by-iam-user"));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].status, "role_definition_changed");
        assert_eq!(got[0].actor, "arn:aws:iam::123456789012:user/ci-deployer");
        let mut create = sample("role-definition-update-by-iam-user");
        create["detail"]["eventName"] = Value::from("CreateSecret");
        create["detail"]["requestParameters"] = serde_json::json!({"name": "rotor/roles/new"});
        let got = findings(&create);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].status.as_str(), got[0].secret.as_str()),
            ("role_definition_changed", "rotor/roles/new")
        );
    }

    #[test]
    fn rotor_own_modifications_and_plain_reads_are_not_modification_findings() {
        assert_eq!(findings(&sample("rotate-secret-by-rotor")), vec![]);
        assert_eq!(findings(&sample("put-resource-policy-by-rotor")), vec![]);
        // A read of a secret the store does not hold yields nothing here.
        assert_eq!(findings(&sample("get-by-iam-user")), vec![]);
    }

    #[test]
    fn secret_names_come_from_ids_and_arns() {
        assert_eq!(secret_name("rotor/roles/x"), "rotor/roles/x");
        assert_eq!(secret_name(APP), "rotor/app-AbCdEf");
    }
}
