//! The rotation event Secrets Manager sends to a rotation function.

use serde::Deserialize;

use crate::error::{Error, Result};

/// `{"Step", "SecretId", "ClientRequestToken", "RotationToken"?}`.
///
/// `Step` stays a string here: an unknown step is reported only after the
/// token checks, in the order AWS's functions use.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RotationEvent {
    #[serde(rename = "Step")]
    pub step: String,
    #[serde(rename = "SecretId")]
    pub secret_id: String,
    #[serde(rename = "ClientRequestToken")]
    pub token: String,
    /// Sent by the service when the function's role is not the secret's
    /// owner's; passed on to PutSecretValue.
    #[serde(rename = "RotationToken", default)]
    pub rotation_token: Option<String>,
}

impl RotationEvent {
    /// Parses and checks an event payload.
    pub fn from_json(payload: &serde_json::Value) -> Result<Self> {
        let event: RotationEvent =
            serde_json::from_value(payload.clone()).map_err(|e| Error::BadEvent(e.to_string()))?;
        event.check()?;
        Ok(event)
    }

    /// Rejects empty identifiers before any call is made.
    pub fn check(&self) -> Result<()> {
        if self.secret_id.trim().is_empty() {
            return Err(Error::BadEvent("SecretId is empty".into()));
        }
        if self.token.trim().is_empty() {
            return Err(Error::BadEvent("ClientRequestToken is empty".into()));
        }
        Ok(())
    }
}

/// The four steps of the rotation contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    CreateSecret,
    SetSecret,
    TestSecret,
    FinishSecret,
}

impl Step {
    pub const ALL: [Step; 4] = [
        Step::CreateSecret,
        Step::SetSecret,
        Step::TestSecret,
        Step::FinishSecret,
    ];

    pub fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreateSecret => "createSecret",
            Step::SetSecret => "setSecret",
            Step::TestSecret => "testSecret",
            Step::FinishSecret => "finishSecret",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_with_and_without_rotation_token() {
        let e = RotationEvent::from_json(
            &json!({"Step":"createSecret","SecretId":"s","ClientRequestToken":"t"}),
        )
        .unwrap();
        assert_eq!(e.rotation_token, None);
        let e = RotationEvent::from_json(
            &json!({"Step":"x","SecretId":"s","ClientRequestToken":"t","RotationToken":"r"}),
        )
        .unwrap();
        assert_eq!(e.rotation_token.as_deref(), Some("r"));
        assert_eq!(Step::parse(&e.step), None);
    }

    #[test]
    fn missing_or_empty_fields_are_bad_events() {
        for payload in [
            json!({"SecretId":"s","ClientRequestToken":"t"}),
            json!({"Step":"createSecret","ClientRequestToken":"t"}),
            json!({"Step":"createSecret","SecretId":"","ClientRequestToken":"t"}),
            json!({"Step":"createSecret","SecretId":"s","ClientRequestToken":" "}),
            json!("createSecret"),
        ] {
            let err = RotationEvent::from_json(&payload).unwrap_err();
            assert_eq!(err.kind(), "BadEvent", "{payload}");
        }
    }
}
