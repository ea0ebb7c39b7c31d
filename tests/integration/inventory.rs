//! Inventory, classification, report outputs, findings to EventBridge and
//! audit events — with moto seeding the states it can hold, an injectable
//! clock, and named fixtures for the states it cannot (it never sets
//! LastAccessedDate, stamps dates with the current time and keeps no failed
//! rotations).

use std::sync::Arc;

use libtest_mimic::Trial;
use rotor::SecretString;
use rotor::inventory::classify::{Rules, classify};
use rotor::inventory::events::{EventRules, analyse};
use rotor::inventory::report::Report;
use rotor::inventory::{SecretRecord, publish, scan};
use rotor::store::{LocalStore, SecretStore};
use rotor_tests::{MotoService, TestEnv, unique, validate_schema};
use serde_json::{Value, json};

use crate::trial;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    vec![
        trial(
            "inventory::moto_states_are_classified_exactly",
            env,
            moto_states,
        ),
        trial(
            "inventory::fixture_states_are_classified_exactly",
            env,
            |_env| fixture_states(),
        ),
        trial(
            "inventory::plaintext_credentials_in_lambda_and_ssm_reported_by_location",
            env,
            plaintext,
        ),
        trial(
            "inventory::findings_are_published_to_eventbridge",
            env,
            eventbridge,
        ),
        trial(
            "inventory::report_json_validates_against_the_documented_schema",
            env,
            schema,
        ),
        trial(
            "inventory::cloudtrail_samples_give_expected_findings",
            env,
            |_env| cloudtrail_samples(),
        ),
        trial("inventory::report_is_written_to_s3", env, s3_upload),
    ]
}

const DAY: u64 = 86_400;

/// Seeds secrets in the states moto can hold, under a unique prefix.
async fn seed(env: &TestEnv) -> (String, MotoService) {
    let moto = MotoService::new(env);
    let prefix = format!("{}/", unique("inv"));
    let sm = &moto.client;
    let tag = |k: &str, v: &str| {
        aws_sdk_secretsmanager::types::Tag::builder()
            .key(k)
            .value(v)
            .build()
    };
    let value =
        r#"{"engine":"postgres","host":"db","username":"u","password":"seeded-password-1"}"#;
    // compliant: rotated, owner tag.
    let arn = sm
        .create_secret()
        .name(format!("{prefix}compliant"))
        .secret_string(value)
        .tags(tag("owner", "payments"))
        .send()
        .await
        .expect("create")
        .arn
        .expect("arn");
    let token = moto.start_rotation(&arn).await;
    finish(&moto, &arn, &token).await;
    // rotation disabled, never rotated.
    sm.create_secret()
        .name(format!("{prefix}never"))
        .secret_string(value)
        .tags(tag("owner", "payments"))
        .send()
        .await
        .expect("create");
    // no owner tag.
    let arn = sm
        .create_secret()
        .name(format!("{prefix}untagged"))
        .secret_string(value)
        .send()
        .await
        .expect("create")
        .arn
        .expect("arn");
    let token = moto.start_rotation(&arn).await;
    finish(&moto, &arn, &token).await;
    // scheduled for deletion.
    sm.create_secret()
        .name(format!("{prefix}deleting"))
        .secret_string(value)
        .tags(tag("owner", "payments"))
        .send()
        .await
        .expect("create");
    sm.delete_secret()
        .secret_id(format!("{prefix}deleting"))
        .recovery_window_in_days(7)
        .send()
        .await
        .expect("delete");
    // stuck: a rotation started and never finished.
    let arn = sm
        .create_secret()
        .name(format!("{prefix}stuck"))
        .secret_string(value)
        .tags(tag("owner", "payments"))
        .send()
        .await
        .expect("create")
        .arn
        .expect("arn");
    let token = moto.start_rotation(&arn).await;
    finish(&moto, &arn, &token).await;
    moto.start_rotation(&arn).await;
    (prefix, moto)
}

/// What the service does after finishSecret: the token becomes AWSCURRENT.
async fn finish(moto: &MotoService, arn: &str, token: &str) {
    let labels = moto.labels(arn).await;
    let current = labels
        .iter()
        .find(|(_, s)| s.iter().any(|x| x == "AWSCURRENT"))
        .map(|(id, _)| id.clone())
        .expect("current");
    moto.client
        .put_secret_value()
        .secret_id(arn)
        .client_request_token(token)
        .secret_string(
            r#"{"engine":"postgres","host":"db","username":"u","password":"seeded-password-2"}"#,
        )
        .version_stages("AWSPENDING")
        .send()
        .await
        .expect("put");
    moto.client
        .update_secret_version_stage()
        .secret_id(arn)
        .version_stage("AWSCURRENT")
        .move_to_version_id(token)
        .remove_from_version_id(current)
        .send()
        .await
        .expect("move");
    moto.client
        .update_secret_version_stage()
        .secret_id(arn)
        .version_stage("AWSPENDING")
        .remove_from_version_id(token)
        .send()
        .await
        .expect("drop pending");
}

async fn moto_inventory(env: &TestEnv, prefix: &str) -> rotor::inventory::Inventory {
    let mut inventory = scan::from_secrets_manager(&env.sm_client())
        .await
        .expect("inventory");
    inventory.secrets.retain(|s| s.name.starts_with(prefix));
    inventory
}

async fn moto_states(env: TestEnv) {
    let (prefix, _moto) = seed(&env).await;
    let inventory = moto_inventory(&env, &prefix).await;
    assert_eq!(
        inventory.secrets.len(),
        5,
        "{:?}",
        inventory
            .secrets
            .iter()
            .map(|s| &s.name)
            .collect::<Vec<_>>()
    );
    // Two days from now: the unfinished rotation has waited past the window.
    let now = rotor::time::now() + 2 * DAY;
    let report = Report::build(&inventory, now, &Rules::default());
    let status = |name: &str| {
        let s = report
            .secrets
            .iter()
            .find(|s| s.secret.name == format!("{prefix}{name}"))
            .unwrap_or_else(|| panic!("{name} missing"));
        let mut f: Vec<String> = s.findings.iter().map(|f| f.status.clone()).collect();
        f.sort();
        (s.status.clone(), f)
    };
    assert_eq!(status("compliant"), ("compliant".into(), vec![]));
    assert_eq!(
        status("never"),
        (
            "never_rotated".into(),
            vec!["never_rotated".into(), "rotation_disabled".into()]
        )
    );
    assert_eq!(
        status("untagged"),
        ("no_owner_tag".into(), vec!["no_owner_tag".into()])
    );
    assert_eq!(status("deleting").0, "never_rotated");
    assert!(
        status("deleting")
            .1
            .contains(&"scheduled_for_deletion".to_string())
    );
    assert_eq!(
        status("stuck"),
        ("rotation_stuck".into(), vec!["rotation_stuck".into()])
    );
    assert_eq!(report.summary.total, 5);
    assert_eq!(report.summary.compliant, 1);
    assert!(inventory.api_calls.get("ListSecrets").copied().unwrap_or(0) >= 1);
    // --fail-on gates.
    assert!(report.has_any(&["rotation_stuck".into()]));
    assert!(!report.has_any(&["rotation_overdue".into()]));
    // The report names no secret value.
    for out in [report.to_json(), report.to_csv(), report.to_html()] {
        assert!(
            !out.contains("seeded-password"),
            "a secret value in the report"
        );
    }
}

/// Named fixtures: states moto cannot hold, with the expected outcome.
async fn fixture_states() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/inventory-states.json"
    );
    let text = std::fs::read_to_string(path).expect("fixtures");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("fixture json");
    assert!(cases.len() >= 6);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let now = case["now"].as_u64().expect("now");
        let record: SecretRecord = serde_json::from_value(case["record"].clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = classify(&record, now, &Rules::default());
        assert_eq!(
            c.status,
            case["expected_status"].as_str().expect("expected"),
            "{name}: {:?}",
            c.findings
        );
        let mut got: Vec<String> = c.findings.iter().map(|f| f.status.clone()).collect();
        got.sort();
        let mut want: Vec<String> = case["expected_findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

async fn plaintext(env: TestEnv) {
    let sdk = env.sdk_config();
    let lambda = rotor::aws_sdk_lambda::Client::new(&sdk);
    let ssm = rotor::aws_sdk_ssm::Client::new(&sdk);
    let function = unique("rotor-inv-fn");
    let zip = rotor::aws_sdk_lambda::primitives::Blob::new(vec![
        0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    lambda
        .create_function()
        .function_name(&function)
        .runtime(rotor::aws_sdk_lambda::types::Runtime::Python312)
        .role("arn:aws:iam::123456789012:role/rotor-test-stub")
        .handler("x.h")
        .code(
            rotor::aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(zip)
                .build(),
        )
        .environment(
            rotor::aws_sdk_lambda::types::Environment::builder()
                .variables("DB_PASSWORD", "plain-lambda-secret-value")
                .variables("LOG_LEVEL", "info")
                .variables(
                    "DB_PASSWORD_ARN",
                    "arn:aws:secretsmanager:us-east-1:123456789012:secret:x",
                )
                .build(),
        )
        .send()
        .await
        .expect("create function");
    let param = format!("/{}/db_password", unique("rotor-inv"));
    ssm.put_parameter()
        .name(&param)
        .value("plain-ssm-secret-value")
        .r#type(rotor::aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("put parameter");
    let secure = format!("/{}/db_password", unique("rotor-inv-secure"));
    ssm.put_parameter()
        .name(&secure)
        .value("fine-in-securestring")
        .r#type(rotor::aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put secure");
    let mut inventory = rotor::inventory::Inventory::default();
    scan::scan_lambda(&lambda, &mut inventory)
        .await
        .expect("scan lambda");
    scan::scan_ssm(&ssm, &mut inventory)
        .await
        .expect("scan ssm");
    let mine: Vec<_> = inventory
        .plaintext
        .iter()
        .filter(|p| p.location.contains(&function) || p.name == param || p.name == secure)
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(
        mine.iter()
            .any(|p| p.kind == "lambda-environment" && p.name == "DB_PASSWORD")
    );
    assert!(
        mine.iter()
            .any(|p| p.kind == "ssm-parameter" && p.name == param)
    );
    let report = Report::build(&inventory, rotor::time::now(), &Rules::default());
    for out in [report.to_json(), report.to_csv(), report.to_html()] {
        assert!(
            !out.contains("plain-lambda-secret-value") && !out.contains("plain-ssm-secret-value"),
            "reported by location, never by value"
        );
    }
}

async fn eventbridge(env: TestEnv) {
    let sdk = env.sdk_config();
    let events = rotor::aws_sdk_eventbridge::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let bus = unique("rotor-bus");
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .expect("bus");
    let queue = sqs
        .create_queue()
        .queue_name(unique("rotor-findings"))
        .send()
        .await
        .expect("queue")
        .queue_url
        .expect("url");
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("attributes")
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .expect("queue arn");
    let rule = unique("rotor-findings");
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(
            json!({"source": ["rotor"], "detail-type": ["Secret Compliance Finding"]}).to_string(),
        )
        .send()
        .await
        .expect("rule");
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(
            rotor::aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn(&queue_arn)
                .build()
                .expect("target"),
        )
        .send()
        .await
        .expect("targets");
    let (prefix, _moto) = seed(&env).await;
    let inventory = moto_inventory(&env, &prefix).await;
    let report = Report::build(&inventory, rotor::time::now() + 2 * DAY, &Rules::default());
    let details = publish::finding_details(&report);
    assert_eq!(
        details.len(),
        4,
        "one finding event per non-compliant secret"
    );
    let accepted = publish::publish(&events, &bus, &details)
        .await
        .expect("publish");
    assert_eq!(accepted, 4);
    let mut received: Vec<Value> = Vec::new();
    for _ in 0..20 {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive");
        for m in out.messages.unwrap_or_default() {
            received
                .push(serde_json::from_str(m.body.as_deref().unwrap_or("{}")).expect("event json"));
        }
        if received.len() >= 4 {
            break;
        }
    }
    assert_eq!(received.len(), 4, "{received:?}");
    for e in &received {
        assert_eq!(e["source"], "rotor");
        assert_eq!(e["detail-type"], "Secret Compliance Finding");
        assert!(e["detail"]["secret_arn"].as_str().is_some());
        assert!(
            !e.to_string().contains("seeded-password"),
            "no secret values in events"
        );
    }
}

async fn schema(env: TestEnv) {
    let (prefix, _moto) = seed(&env).await;
    let mut inventory = moto_inventory(&env, &prefix).await;
    inventory
        .plaintext
        .push(rotor::inventory::PlaintextCredential {
            kind: "ssm-parameter".into(),
            location: "arn:aws:ssm:x".into(),
            name: "/x/password".into(),
            reason: "name matches \"password\"".into(),
        });
    let report = Report::build(&inventory, rotor::time::now(), &Rules::default());
    let value: Value = serde_json::from_str(&report.to_json()).expect("json");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/report-schema.json"
        ))
        .expect("schema"),
    )
    .expect("schema json");
    let errors = validate_schema(&schema, &value);
    assert!(errors.is_empty(), "{errors:#?}");
    // The validator does reject a broken report.
    let mut broken = value.clone();
    broken["secrets"][0]["status"] = json!("fine");
    broken.as_object_mut().expect("object").remove("summary");
    assert_eq!(validate_schema(&schema, &broken).len(), 2);
}

async fn cloudtrail_samples() {
    // A local store holding the secrets the sample events name.
    let store = Arc::new(LocalStore::in_memory());
    let v = SecretString::new(
        r#"{"engine":"postgres","host":"db","username":"u","password":"sample-pw-1"}"#,
    );
    for name in [
        "audit/stale",
        "audit/guarded",
        "audit/policy",
        "audit/failing",
    ] {
        store.put_current(name, &v).expect("put");
    }
    // A rotation: a new AWSCURRENT (the old value becomes AWSPREVIOUS).
    let old = store
        .describe("audit/stale")
        .await
        .expect("describe")
        .version_with("AWSCURRENT")
        .expect("current")
        .to_string();
    let token = uuid::Uuid::new_v4().to_string();
    store
        .put_pending(
            "audit/stale",
            &token,
            &SecretString::new(
                r#"{"engine":"postgres","host":"db","username":"u","password":"sample-pw-2"}"#,
            ),
            None,
        )
        .await
        .expect("pending");
    store
        .update_stage("audit/stale", "AWSCURRENT", Some(&token), Some(&old))
        .await
        .expect("rotate");
    store
        .set_tag(
            "audit/guarded",
            "rotor:allowed-readers",
            "arn:aws:iam::123456789012:role/orders-*",
        )
        .expect("tag");
    // The stale secret was rotated "two days ago" for the clock below.
    let now = rotor::time::now() + 2 * DAY;
    let rules = EventRules {
        stale_read_after: DAY,
        ignore: vec!["arn:aws:iam::123456789012:role/rotor-*".into()],
        roles_prefix: "rotor/roles/".into(),
    };
    let expected: &[(&str, &[&str])] = &[
        ("get-previous-version.json", &["stale_version_read"]),
        ("get-by-unexpected-reader.json", &["unexpected_reader"]),
        ("get-current-by-allowed-reader.json", &[]),
        ("put-public-policy.json", &["public_policy"]),
        ("put-cross-account-policy.json", &["cross_account_policy"]),
        ("cancel-rotate-secret.json", &["rotation_disabled"]),
        ("delete-secret.json", &["deletion_scheduled"]),
        ("rotation-failed.json", &["rotation_failed"]),
        ("unrelated-describe-by-rotor.json", &[]),
        ("unrelated-list-secrets.json", &[]),
    ];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../events/audit-events");
    let files = std::fs::read_dir(dir).expect("events/audit-events").count();
    assert_eq!(files, expected.len(), "every sample has an expectation");
    for (file, want) in expected {
        let event: Value =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{file}")).expect("read"))
                .expect("json");
        let findings = analyse(&event, store.as_ref(), &rules, now)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let got: Vec<&str> = findings.iter().map(|f| f.status.as_str()).collect();
        assert_eq!(&got, want, "{file}: {findings:?}");
    }
    // A second failure in a row is "repeated".
    let event: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/rotation-failed.json")).expect("read"),
    )
    .expect("json");
    let again = analyse(&event, store.as_ref(), &rules, now)
        .await
        .expect("again");
    assert_eq!(again[0].status, "repeated_rotation_failures");
    let _ = store.describe("audit/failing").await.expect("still there");
}

async fn s3_upload(env: TestEnv) {
    let sdk = env.sdk_config();
    let s3 = rotor::aws_sdk_s3::Client::from_conf(
        rotor::aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let bucket = unique("rotor-reports").replace('_', "-");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("bucket");
    let (prefix, _moto) = seed(&env).await;
    let report = Report::build(
        &moto_inventory(&env, &prefix).await,
        rotor::time::now(),
        &Rules::default(),
    );
    let keys = publish::upload(&s3, &bucket, "rotor-reports", &report)
        .await
        .expect("upload");
    assert_eq!(keys.len(), 6, "{keys:?}");
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list")
        .contents
        .unwrap_or_default();
    assert_eq!(listed.len(), 6);
    let latest = s3
        .get_object()
        .bucket(&bucket)
        .key("rotor-reports/latest/report.json")
        .send()
        .await
        .expect("get");
    let body = latest.body.collect().await.expect("body").into_bytes();
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["summary"]["total"], 5);
}
