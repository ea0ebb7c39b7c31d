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
    /// Parses and checks an event payload. Each refusal names the key at
    /// fault (serde's own message for a value of the wrong type does not).
    pub fn from_json(payload: &serde_json::Value) -> Result<Self> {
        use serde_json::Value;
        let Value::Object(fields) = payload else {
            return Err(Error::BadEvent(format!(
                "the payload is {}, not a JSON object",
                json_kind(payload)
            )));
        };
        let text = |key: &str, required: bool| -> Result<Option<String>> {
            match fields.get(key) {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                None | Some(Value::Null) if !required => Ok(None),
                None => Err(Error::BadEvent(format!("the key \"{key}\" is missing"))),
                Some(other) => Err(Error::BadEvent(format!(
                    "\"{key}\" must be a string, not {}",
                    json_kind(other)
                ))),
            }
        };
        let event = RotationEvent {
            step: text("Step", true)?.unwrap_or_default(),
            secret_id: text("SecretId", true)?.unwrap_or_default(),
            token: text("ClientRequestToken", true)?.unwrap_or_default(),
            rotation_token: text("RotationToken", false)?,
        };
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

/// What kind of JSON value this is, for messages (never the value itself).
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
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

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        for (payload, key) in [
            (
                json!({"Step":0,"SecretId":"s","ClientRequestToken":"t"}),
                "\"Step\" must be a string, not a number",
            ),
            (
                json!({"Step":"x","SecretId":null,"ClientRequestToken":"t"}),
                "\"SecretId\" must be a string, not null",
            ),
            (
                json!({"Step":"x","SecretId":"s","ClientRequestToken":["t"]}),
                "\"ClientRequestToken\" must be a string, not an array",
            ),
            (
                json!({"Step":"x","SecretId":"s","ClientRequestToken":"t","RotationToken":{}}),
                "\"RotationToken\" must be a string, not an object",
            ),
        ] {
            let err = RotationEvent::from_json(&payload).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
