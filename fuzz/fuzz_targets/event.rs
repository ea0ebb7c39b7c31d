//! Event parsing: the rotation event and revoke-on-event's EventBridge
//! events. Properties beyond "no panic": an accepted rotation event has
//! non-blank ids and a step that round-trips when it is known; an accepted
//! revoke event names a non-empty target; a CloudTrail record of a failed
//! call, or one made by an ignored principal, is ignored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotor::dynamic::revoke::{RevokeTarget, from_event};
use rotor::{RotationEvent, Step};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(event) = RotationEvent::from_json(&payload) {
        assert!(!event.secret_id.trim().is_empty());
        assert!(!event.token.trim().is_empty());
        if let Some(step) = Step::parse(&event.step) {
            assert_eq!(step.as_str(), event.step);
        }
    }

    let ignore = vec!["arn:aws:iam::123456789012:role/rotor-*".to_string()];
    match from_event(&payload, &ignore) {
        Ok(Some((target, _dry_run))) => {
            let names: Vec<&str> = match &target {
                RevokeTarget::Secret(s) | RevokeTarget::User(s) | RevokeTarget::Role(s) => {
                    vec![s]
                }
                RevokeTarget::Tag { key, value } => vec![key, value],
                RevokeTarget::DbLogin { instance, user, .. } => vec![instance, user],
            };
            assert!(names.iter().all(|n| !n.is_empty()), "{target:?}");
            if payload.get("detail-type").and_then(Value::as_str)
                == Some("AWS API Call via CloudTrail")
            {
                let detail = &payload["detail"];
                assert!(detail.get("errorCode").is_none_or(Value::is_null));
            }
        }
        Ok(None) | Err(_) => {}
    }
    // The same CloudTrail record made by Rotor's own role is always ignored.
    if payload.get("detail-type").and_then(Value::as_str) == Some("AWS API Call via CloudTrail") {
        let mut own = payload.clone();
        if let Some(detail) = own.get_mut("detail").and_then(Value::as_object_mut) {
            detail.insert(
                "userIdentity".into(),
                serde_json::json!({"arn": "arn:aws:sts::123456789012:assumed-role/rotor-revoke/s"}),
            );
            if let Some(Value::Object(identity)) = detail.get_mut("userIdentity") {
                identity.remove("sessionContext");
            }
            assert!(
                matches!(from_event(&own, &ignore), Ok(None)),
                "Rotor's own call was not ignored"
            );
        }
    }
});
