//! The classification rules: each secret gets every finding whose rule
//! fires, or `compliant`. Pure functions of the records, a clock (`now`)
//! and [`Rules`], so fixtures can hold states the emulator cannot.

use serde::{Deserialize, Serialize};

use super::SecretRecord;
use crate::time::format_duration;

/// The statuses, most severe first.
pub const STATUSES: [&str; 9] = [
    "rotation_stuck",
    "rotation_overdue",
    "never_rotated",
    "rotation_disabled",
    "orphaned_dynamic_users",
    "unused",
    "no_owner_tag",
    "scheduled_for_deletion",
    "compliant",
];

/// Settings of the rules.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rules {
    /// `unused` after this many days without access.
    pub unused_days: u64,
    /// Tags every secret must carry (`no_owner_tag` otherwise).
    pub required_tags: Vec<String>,
    /// Grace after a rotation was due, and the age at which an AWSPENDING
    /// version counts as stuck, in seconds.
    pub rotation_window: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            unused_days: 90,
            required_tags: vec!["owner".into()],
            rotation_window: 86_400,
        }
    }
}

impl Rules {
    /// `ROTOR_UNUSED_DAYS` (90), `ROTOR_REQUIRED_TAGS` (`owner`, comma-separated,
    /// empty for none), `ROTOR_ROTATION_WINDOW` (a duration, `1d`).
    pub fn from_env() -> crate::Result<Rules> {
        let mut rules = Rules::default();
        if let Ok(v) = std::env::var("ROTOR_UNUSED_DAYS") {
            rules.unused_days = v.trim().parse().map_err(|_| {
                crate::Error::Config(format!("ROTOR_UNUSED_DAYS={v:?} is not a number of days"))
            })?;
        }
        if let Ok(v) = std::env::var("ROTOR_REQUIRED_TAGS") {
            rules.required_tags = v
                .split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
        }
        if let Ok(v) = std::env::var("ROTOR_ROTATION_WINDOW") {
            rules.rotation_window = crate::time::parse_duration(&v)?;
        }
        Ok(rules)
    }
}

/// One rule that fired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub status: String,
    /// What the rule saw, in words.
    pub rule: String,
}

/// A secret with its findings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Classified {
    #[serde(flatten)]
    pub secret: SecretRecord,
    /// The most severe finding's status (`compliant` when none).
    pub status: String,
    pub findings: Vec<Finding>,
    /// Days since the last rotation (or creation, if never rotated).
    pub rotation_age_days: Option<u64>,
}

fn days(secs: u64) -> u64 {
    secs / 86_400
}

/// Classifies one secret.
pub fn classify(secret: &SecretRecord, now: u64, rules: &Rules) -> Classified {
    let mut findings = Vec::new();
    let mut fire = |status: &str, rule: String| {
        findings.push(Finding {
            status: status.to_string(),
            rule,
        })
    };
    if let Some(deleted) = secret.deleted_date {
        fire(
            "scheduled_for_deletion",
            format!("deletion scheduled for {}", crate::time::rfc3339(deleted)),
        );
    }
    if !secret.rotation_enabled {
        fire("rotation_disabled", "rotation is not enabled".into());
    }
    match secret.last_rotated {
        None => fire("never_rotated", "the secret has never been rotated".into()),
        Some(last) if secret.rotation_enabled => {
            if let Some(interval) = secret.rotation_interval_days {
                let due = last + interval * 86_400;
                if now > due + rules.rotation_window {
                    fire(
                        "rotation_overdue",
                        format!(
                            "last rotated {} ago; the schedule allows {interval} days",
                            format_duration(now - last)
                        ),
                    );
                }
            }
        }
        Some(_) => {}
    }
    if let Some(since) = secret.pending_since
        && now.saturating_sub(since) > rules.rotation_window
    {
        fire(
            "rotation_stuck",
            format!(
                "an AWSPENDING version has waited {} (window {})",
                format_duration(now - since),
                format_duration(rules.rotation_window)
            ),
        );
    }
    if secret.last_rotation_failed {
        fire("rotation_stuck", "the last rotation failed".into());
    }
    let reference = secret.last_accessed.or(secret.created);
    if let Some(at) = reference
        && days(now.saturating_sub(at)) >= rules.unused_days
    {
        fire(
            "unused",
            match secret.last_accessed {
                Some(_) => format!("not accessed for {} days", days(now - at)),
                None => format!("never accessed in {} days since creation", days(now - at)),
            },
        );
    }
    let missing: Vec<&str> = rules
        .required_tags
        .iter()
        .filter(|t| !secret.tags.contains_key(t.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        fire(
            "no_owner_tag",
            format!("missing tag(s): {}", missing.join(", ")),
        );
    }
    if !secret.orphaned_dynamic_users.is_empty() {
        fire(
            "orphaned_dynamic_users",
            format!(
                "{} dynamic user(s) past expiry or without a role: {}",
                secret.orphaned_dynamic_users.len(),
                secret.orphaned_dynamic_users.join(", ")
            ),
        );
    }
    let status = STATUSES
        .iter()
        .find(|s| findings.iter().any(|f| f.status == **s))
        .copied()
        .unwrap_or("compliant")
        .to_string();
    Classified {
        rotation_age_days: secret
            .last_rotated
            .or(secret.created)
            .map(|t| days(now.saturating_sub(t))),
        secret: secret.clone(),
        status,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const NOW: u64 = 1_800_000_000;

    fn base() -> SecretRecord {
        SecretRecord {
            arn: "arn".into(),
            name: "n".into(),
            tags: [("owner".to_string(), "team".to_string())].into(),
            rotation_enabled: true,
            rotation_interval_days: Some(30),
            created: Some(NOW - 100 * DAY),
            last_rotated: Some(NOW - 10 * DAY),
            last_accessed: Some(NOW - DAY),
            ..Default::default()
        }
    }

    fn statuses(s: &SecretRecord) -> Vec<String> {
        classify(s, NOW, &Rules::default())
            .findings
            .into_iter()
            .map(|f| f.status)
            .collect()
    }

    #[test]
    fn each_rule_fires_exactly() {
        assert_eq!(
            classify(&base(), NOW, &Rules::default()).status,
            "compliant"
        );
        let s = SecretRecord {
            rotation_enabled: false,
            ..base()
        };
        assert_eq!(statuses(&s), ["rotation_disabled"]);
        let s = SecretRecord {
            last_rotated: Some(NOW - 40 * DAY),
            ..base()
        };
        assert_eq!(statuses(&s), ["rotation_overdue"]);
        let s = SecretRecord {
            last_rotated: Some(NOW - 30 * DAY - 3600),
            ..base()
        };
        assert!(statuses(&s).is_empty(), "within the rotation window");
        let s = SecretRecord {
            last_rotated: None,
            ..base()
        };
        assert_eq!(statuses(&s), ["never_rotated"]);
        let s = SecretRecord {
            last_accessed: Some(NOW - 91 * DAY),
            ..base()
        };
        assert_eq!(statuses(&s), ["unused"]);
        let s = SecretRecord {
            pending_since: Some(NOW - 2 * DAY),
            ..base()
        };
        assert_eq!(statuses(&s), ["rotation_stuck"]);
        let s = SecretRecord {
            last_rotation_failed: true,
            ..base()
        };
        assert_eq!(statuses(&s), ["rotation_stuck"]);
        let s = SecretRecord {
            deleted_date: Some(NOW + 7 * DAY),
            ..base()
        };
        assert_eq!(statuses(&s), ["scheduled_for_deletion"]);
        let s = SecretRecord {
            tags: Default::default(),
            ..base()
        };
        assert_eq!(statuses(&s), ["no_owner_tag"]);
        let s = SecretRecord {
            orphaned_dynamic_users: vec!["v_x_1_abcdef".into()],
            ..base()
        };
        assert_eq!(statuses(&s), ["orphaned_dynamic_users"]);
    }

    #[test]
    fn the_most_severe_finding_is_the_status() {
        let s = SecretRecord {
            tags: Default::default(),
            last_rotation_failed: true,
            ..base()
        };
        let c = classify(&s, NOW, &Rules::default());
        assert_eq!(c.status, "rotation_stuck");
        assert_eq!(c.findings.len(), 2);
    }
}
