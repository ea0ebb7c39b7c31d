//! Who may issue and revoke, and what a caller learns (issue 17, items 1, 2,
//! 3, 6 and 10): the function URL request path of `issue-credential` and the
//! request scoping of `revoke-on-event`, against moto and the test servers.

use libtest_mimic::Trial;
use rotor::dynamic::revoke::RevokeTarget;
use rotor::dynamic::{Caller, parse_lease};
use rotor_tests::{DynamicRole, Kind, TestDb, TestEnv, dynamic_role, leaks, unique};
use serde_json::{Value, json};

use crate::trial;

type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

pub fn trials(env: &TestEnv) -> Vec<Trial> {
    let mut t = Vec::new();
    let mut add = |name: &str, kind: Kind, f: fn(TestDb) -> Scenario| {
        t.push(trial(
            format!("dynamic_authz::{}::{name}", kind.name()),
            env,
            move |env| f(TestDb::new(kind, &env)),
        ));
    };
    add(
        "direct_invoke_with_forged_user_arn_refused",
        Kind::Postgres,
        |d| Box::pin(direct_invoke_forged(d)),
    );
    add(
        "role_outside_the_prefix_refused_with_the_generic_answer",
        Kind::Postgres,
        |d| Box::pin(outside_prefix(d)),
    );
    add(
        "app_secret_with_masterarn_is_not_a_role",
        Kind::Postgres,
        |d| Box::pin(app_secret_not_a_role(d)),
    );
    add(
        "revoke_event_outside_the_scope_refused_and_changes_nothing",
        Kind::Postgres,
        |d| Box::pin(revoke_outside_scope(d)),
    );
    add(
        "role_definition_cached_between_issues",
        Kind::Postgres,
        |d| Box::pin(role_cached(d)),
    );
    add(
        "guardduty_finding_reads_only_secrets_that_point_at_the_instance",
        Kind::Postgres,
        |d| Box::pin(guardduty_reads_candidates_only(d)),
    );
    for kind in Kind::ALL {
        add("privileged_member_of_or_owner_role_refused", kind, |d| {
            Box::pin(privileged_refused(d))
        });
        add(
            "database_error_text_not_returned_to_http_callers",
            kind,
            |d| Box::pin(database_error_sanitised(d)),
        );
        add(
            "max_active_refuses_the_next_issue_until_one_is_revoked",
            kind,
            |d| Box::pin(max_active_per_role(d)),
        );
        add(
            "max_active_per_principal_counts_only_that_principal",
            kind,
            |d| Box::pin(max_active_per_principal(d)),
        );
        add("concurrent_issues_never_exceed_max_active", kind, |d| {
            Box::pin(concurrent_issues_capped(d))
        });
        add(
            "expired_leases_count_against_max_active_until_dropped",
            kind,
            |d| Box::pin(expired_leases_count_until_dropped(d)),
        );
    }
    t
}

/// A function URL request (payload format 2.0) as Lambda builds it for a
/// SigV4-signed request with `AuthType: AWS_IAM`.
pub fn url_event(arn: &str, body: &str) -> Value {
    let account = arn.split(':').nth(4).unwrap_or("123456789012");
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abcdefghij0123456789abcdefghij01.lambda-url.us-east-1.on.aws"},
        "requestContext": {
            "accountId": account,
            "apiId": "abcdefghij0123456789abcdefghij01",
            "authorizer": {"iam": {
                "accessKey": "ASIAEXAMPLE",
                "accountId": account,
                "callerId": "AROAEXAMPLE:run-7",
                "userArn": arn,
                "userId": "AROAEXAMPLE:run-7",
            }},
            "domainName": "abcdefghij0123456789abcdefghij01.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefghij0123456789abcdefghij01",
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "198.51.100.7", "userAgent": "curl/8"},
            "requestId": uuid::Uuid::new_v4().to_string(),
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:19:30:00 +0000",
            "timeEpoch": 1_795_894_200_000u64,
        },
        "body": body,
        "isBase64Encoded": false,
    })
}

pub const CALLER: &str = "arn:aws:sts::123456789012:assumed-role/ci-deploy/run-7";

fn body_of(response: &Value) -> Value {
    serde_json::from_str(response["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

async fn user_count(r: &DynamicRole) -> i64 {
    let prefix = r.dynamic.role(&r.name).await.expect("role").user_prefix();
    r.admin.users_starting_with(&prefix).await
}

async fn cleanup(r: &DynamicRole) {
    let cli = Caller {
        arn: "cli:test".into(),
        via: "cli",
    };
    r.dynamic
        .revoke(&RevokeTarget::Role(r.name.clone()), false, &cli, None)
        .await
        .expect("cleanup");
}

/// Item 1: a principal allowed `lambda:InvokeFunction` can invoke the
/// function directly with any payload. The resource policy is the real
/// defence; the handler refuses what does not have the shape of a function
/// URL request, so a forged `userArn` alone mints nothing.
async fn direct_invoke_forged(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let body = json!({"role": r.name, "ttl": "10m"}).to_string();
    let before = user_count(&r).await;
    let mut forged = Vec::new();
    // What `aws lambda invoke --payload` with a hand-written requestContext sends.
    forged.push((
        "bare authorizer",
        json!({"requestContext": {"authorizer": {"iam": {"userArn": CALLER}}}, "body": body}),
    ));
    // Payload format 2.0 without the URL's own fields (apiId, domainName, http).
    let mut no_url = url_event(CALLER, &body);
    for key in ["apiId", "domainName", "domainPrefix", "http"] {
        no_url["requestContext"]
            .as_object_mut()
            .expect("object")
            .remove(key);
    }
    forged.push(("no URL fields", no_url));
    // An IAM authorizer without the signature's key and account.
    let mut no_key = url_event(CALLER, &body);
    no_key["requestContext"]["authorizer"]["iam"] = json!({"userArn": CALLER});
    forged.push(("no access key", no_key));
    // The account of the ARN differs from the signer's account.
    let mut other_account = url_event(CALLER, &body);
    other_account["requestContext"]["authorizer"]["iam"]["accountId"] = json!("999999999999");
    forged.push(("account mismatch", other_account));
    // Not a function URL domain.
    let mut other_domain = url_event(CALLER, &body);
    other_domain["requestContext"]["domainName"] = json!("example.com");
    forged.push(("not a lambda-url domain", other_domain));
    let mut no_version = url_event(CALLER, &body);
    no_version
        .as_object_mut()
        .expect("object")
        .remove("version");
    forged.push(("no version", no_version));
    for (what, event) in forged {
        let response = rotor::lambda::issue_from_url(&r.dynamic, &event).await;
        assert_eq!(
            response["statusCode"], 403,
            "{what}: a direct invoke with a forged userArn must be refused: {response}"
        );
    }
    assert_eq!(
        user_count(&r).await,
        before,
        "a forged caller created nothing"
    );
    // The genuine shape still works.
    let ok = rotor::lambda::issue_from_url(&r.dynamic, &url_event(CALLER, &body)).await;
    assert_eq!(ok["statusCode"], 200, "{ok}");
    let c = body_of(&ok);
    leaks::remember(c["password"].as_str().expect("password"));
    assert!(parse_lease(c["username"].as_str().expect("username")).is_some());
    cleanup(&r).await;
}

/// The HTTP answer without its per-request id.
fn answer_without_request_id(response: &Value) -> (Value, Value) {
    let mut body = body_of(response);
    if let Some(o) = body.as_object_mut() {
        o.remove("request_id");
    }
    (response["statusCode"].clone(), body)
}

/// Item 2: only secrets under the roles prefix are roles, by name or ARN;
/// and whoever is not allowed learns nothing about what exists.
async fn outside_prefix(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let master = r.dynamic.role(&r.name).await.expect("role").masterarn;
    // Somebody who may write secrets elsewhere writes a "role" naming
    // themselves, any master, and superuser powers.
    let outside = format!("{}app/{}", r.prefix.trim_end_matches('/'), unique("x"));
    let outside_arn = r
        .moto
        .create_secret(
            &outside,
            &json!({"engine": db.engine_key(), "masterarn": master, "dbname": db.dbname(), "allowed_principals": [CALLER]}).to_string(),
        )
        .await;
    let before = user_count(&r).await;
    let ask = |role: &str, caller: &str| {
        let event = url_event(caller, &json!({"role": role}).to_string());
        let dynamic = &r.dynamic;
        async move { rotor::lambda::issue_from_url(dynamic, &event).await }
    };
    let intruder = "arn:aws:sts::123456789012:assumed-role/intruder/s";
    let answers = vec![
        ("outside the prefix, by name", ask(&outside, CALLER).await),
        (
            "outside the prefix, by ARN",
            ask(&outside_arn, CALLER).await,
        ),
        (
            "no such secret",
            ask(&format!("{}{}", r.prefix, unique("nope")), CALLER).await,
        ),
        ("no such short name", ask(&unique("nope"), CALLER).await),
        (
            "a real role, caller not allowed",
            ask(&r.name, intruder).await,
        ),
        (
            "a secret outside the prefix, caller not allowed",
            ask(&outside, intruder).await,
        ),
    ];
    assert_eq!(user_count(&r).await, before, "nothing was issued");
    let first = answer_without_request_id(&answers[0].1);
    assert_eq!(first.0, 403, "{}: {}", answers[0].0, answers[0].1);
    for (what, response) in &answers {
        assert_eq!(
            answer_without_request_id(response),
            first,
            "{what}: every refusal before the principal check must be the same answer"
        );
        let text = response["body"].as_str().unwrap_or("");
        for leak in [
            outside.as_str(),
            r.name.as_str(),
            "masterarn",
            "not found",
            "prefix",
        ] {
            assert!(
                !text.contains(leak),
                "{what}: the answer mentions {leak:?}: {text}"
            );
        }
    }
    cleanup(&r).await;
}

/// Item 2: an alternating-users app secret has `engine` and `masterarn`, so
/// it parsed as a role; asked for by its name it must not be one.
async fn app_secret_not_a_role(db: TestDb) {
    let r = dynamic_role(&db, json!({})).await;
    let master = r.dynamic.role(&r.name).await.expect("role").masterarn;
    let app = unique("rotor/app");
    let value = db.secret(
        "app_user",
        "not-a-real-password",
        json!({"masterarn": master}),
    );
    let arn = r.moto.create_secret(&app, &value).await;
    let cli = Caller {
        arn: "cli:test".into(),
        via: "cli",
    };
    let before = user_count(&r).await;
    for id in [app.as_str(), arn.as_str()] {
        match r.dynamic.issue(id, None, &cli, false).await {
            Ok(c) => {
                leaks::remember(c.password.expose());
                panic!(
                    "{id}: an app secret was taken as a role and issued {}",
                    c.username
                )
            }
            Err(e) => assert_eq!(e.kind(), "NotFound", "{id}: {e}"),
        }
    }
    assert_eq!(user_count(&r).await, before);
}

/// Item 2: `member_of` and `owner_role` refuse superuser-like and
/// server-file roles unless the deployment allows them.
async fn privileged_refused(db: TestDb) {
    let cases: Vec<Value> = match db.kind {
        Kind::Postgres => vec![
            json!({"member_of": ["pg_write_server_files"]}),
            json!({"member_of": ["rds_superuser"]}),
            json!({"member_of": ["PG_EXECUTE_SERVER_PROGRAM"]}),
            json!({"owner_role": "pg_read_server_files"}),
            json!({"member_of": ["cloudsqlsuperuser"]}),
        ],
        Kind::MariaDb => vec![
            json!({"member_of": ["rds_superuser_role"]}),
            json!({"owner_role": "root"}),
        ],
    };
    for extra in cases {
        let r = dynamic_role(&db, extra.clone()).await;
        let before = user_count(&r).await;
        let cli = Caller {
            arn: "cli:test".into(),
            via: "cli",
        };
        match r.dynamic.issue(&r.name, None, &cli, false).await {
            Ok(c) => {
                leaks::remember(c.password.expose());
                panic!("{extra}: issued {} with a privileged role", c.username)
            }
            Err(e) => {
                assert_eq!(e.kind(), "Refused", "{extra}: {e}");
                assert!(
                    e.to_string().contains("ROTOR_ALLOW_PRIVILEGED_ROLES"),
                    "{extra}: says how to allow it: {e}"
                );
            }
        }
        assert_eq!(user_count(&r).await, before, "{extra}: nothing created");
    }
}

/// Item 10: what the database said (hosts, statements, object names) stays
/// in the logs; the HTTP caller gets a stable code, a generic message and a
/// request id to quote.
async fn database_error_sanitised(db: TestDb) {
    let missing = unique("rotor_nosuchgrp");
    let r = dynamic_role(&db, json!({"member_of": [missing]})).await;
    let event = url_event(CALLER, &json!({"role": r.name}).to_string());
    let request_id = event["requestContext"]["requestId"]
        .as_str()
        .expect("request id")
        .to_string();
    let response = rotor::lambda::issue_from_url(&r.dynamic, &event).await;
    let status = response["statusCode"].as_u64().unwrap_or(0);
    assert!(
        status >= 500,
        "a database failure is the server's: {response}"
    );
    let text = response["body"].as_str().unwrap_or("").to_string();
    for internal in [
        db.host(),
        &db.port().to_string(),
        &missing,
        "GRANT",
        "does not exist",
        "Invalid role",
        "v_",
    ] {
        assert!(
            !text.contains(internal),
            "the HTTP body carries {internal:?}: {text}"
        );
    }
    let body = body_of(&response);
    assert_eq!(body["request_id"], json!(request_id), "{text}");
    assert!(
        body["error"].as_str().is_some_and(|c| !c.contains(' ')),
        "a stable error code: {text}"
    );
    assert!(body["message"].as_str().is_some(), "{text}");
    // The detail is in the log, under the same request id.
    let logged = leaks::captured();
    assert!(
        logged
            .lines()
            .any(|l| l.contains(&request_id) && l.contains(&missing)),
        "the log keeps the database's detail with the request id"
    );
}

/// Item 3: a revocation event may act only on secrets in the deployment's
/// scope (the prefix or tag its IAM policies use): one naming a secret
/// outside it, directly or through a tag, is refused and changes nothing.
async fn revoke_outside_scope(db: TestDb) {
    use rotor::dynamic::revoke::{RevokeScope, from_event};
    use rotor::store::{SecretStore, SecretsManagerStore};
    use std::sync::Arc;
    let f = crate::rotation::fixture(
        &db,
        rotor::Strategy::SingleUser,
        &unique("rotor_scope"),
        json!({}),
    )
    .await;
    let before = f.current_version().await;
    let old = f.secret(&before).await;
    let team = unique("team");
    f.moto
        .client
        .tag_resource()
        .secret_id(&f.arn)
        .tags(
            aws_sdk_secretsmanager::types::Tag::builder()
                .key("team")
                .value(&team)
                .build(),
        )
        .send()
        .await
        .expect("tag");
    let store: Arc<dyn SecretStore> = Arc::new(SecretsManagerStore::new(db.env.sm_client()));
    let dynamic = rotor::dynamic::Dynamic::new(store, rotor_tests::dynamic_options(&db))
        .with_roles_prefix(unique("none/"))
        .with_revoke_scope(RevokeScope {
            secret_prefix: Some(unique("rotor/inscope/")),
            secret_tag: Some(("RotorRotation".into(), "true".into())),
        });
    let caller = Caller {
        arn: "event:rotor".into(),
        via: "event",
    };
    for detail in [
        json!({"secret": f.arn}),
        json!({"tag": {"key": "team", "value": team}}),
    ] {
        let event =
            json!({"source": "rotor", "detail-type": "Revoke Credential", "detail": detail});
        let (target, dry) = from_event(&event, &[])
            .expect("parse")
            .expect("not ignored");
        match dynamic.revoke(&target, dry, &caller, None).await {
            Err(e) => assert_eq!(e.kind(), "Forbidden", "{detail}: {e}"),
            Ok(report) => assert!(
                report.revoked.is_empty(),
                "{detail}: revoked a secret outside the scope: {report:?}"
            ),
        }
        assert_eq!(
            f.current_version().await,
            before,
            "{detail}: the secret was not rotated"
        );
    }
    assert!(f.logs_in(&old).await, "its credential still works");
}

/// A store that counts the calls naming each secret.
struct CountingStore {
    inner: std::sync::Arc<dyn rotor::store::SecretStore>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl CountingStore {
    fn calls_naming(&self, needle: &str) -> usize {
        self.calls
            .lock()
            .map(|c| c.iter().filter(|s| s.contains(needle)).count())
            .unwrap_or(0)
    }
    fn note(&self, op: &str, id: &str) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(format!("{op} {id}"));
        }
    }
}

#[async_trait::async_trait]
impl rotor::store::SecretStore for CountingStore {
    fn kind(&self) -> &'static str {
        "counting"
    }
    async fn describe(&self, id: &str) -> rotor::Result<rotor::store::SecretMetadata> {
        self.note("DescribeSecret", id);
        self.inner.describe(id).await
    }
    async fn get(
        &self,
        id: &str,
        version: rotor::store::VersionRef<'_>,
    ) -> rotor::Result<Option<rotor::SecretString>> {
        self.note("GetSecretValue", id);
        self.inner.get(id, version).await
    }
    async fn put_pending(
        &self,
        id: &str,
        token: &str,
        value: &rotor::SecretString,
        rotation_token: Option<&str>,
    ) -> rotor::Result<()> {
        self.note("PutSecretValue", id);
        self.inner
            .put_pending(id, token, value, rotation_token)
            .await
    }
    async fn update_stage(
        &self,
        id: &str,
        stage: &str,
        move_to: Option<&str>,
        remove_from: Option<&str>,
    ) -> rotor::Result<()> {
        self.note("UpdateSecretVersionStage", id);
        self.inner
            .update_stage(id, stage, move_to, remove_from)
            .await
    }
    async fn list_versions(&self, id: &str) -> rotor::Result<Vec<String>> {
        self.note("ListSecretVersionIds", id);
        self.inner.list_versions(id).await
    }
    async fn list_secrets(
        &self,
        filter: &rotor::store::ListFilter,
    ) -> rotor::Result<Vec<rotor::store::SecretSummary>> {
        self.note("ListSecrets", "*");
        self.inner.list_secrets(filter).await
    }
    async fn tag(&self, id: &str, key: &str, value: &str) -> rotor::Result<()> {
        self.note("TagResource", id);
        self.inner.tag(id, key, value).await
    }
    async fn request_rotation(&self, id: &str) -> rotor::Result<bool> {
        self.note("RotateSecret", id);
        self.inner.request_rotation(id).await
    }
}

/// Item 6: every request read the role's secret again. Within the cache's
/// lifetime a second issue makes no Secrets Manager call for the role.
async fn role_cached(db: TestDb) {
    use std::sync::Arc;
    let r = dynamic_role(&db, json!({})).await;
    let counting = Arc::new(CountingStore {
        inner: Arc::new(rotor::store::SecretsManagerStore::new(db.env.sm_client())),
        calls: std::sync::Mutex::new(Vec::new()),
    });
    let dynamic = rotor::dynamic::Dynamic::new(counting.clone(), rotor_tests::dynamic_options(&db))
        .with_roles_prefix(r.prefix.clone());
    let short = r.name.trim_start_matches(&r.prefix).to_string();
    let first = rotor::lambda::issue_from_url(
        &dynamic,
        &url_event(CALLER, &json!({"role": short}).to_string()),
    )
    .await;
    assert_eq!(first["statusCode"], 200, "{first}");
    leaks::remember(body_of(&first)["password"].as_str().unwrap_or(""));
    let after_first = counting.calls_naming(&short);
    assert!(after_first >= 1, "the first issue reads the role");
    let second = rotor::lambda::issue_from_url(
        &dynamic,
        &url_event(CALLER, &json!({"role": short}).to_string()),
    )
    .await;
    assert_eq!(second["statusCode"], 200, "{second}");
    leaks::remember(body_of(&second)["password"].as_str().unwrap_or(""));
    assert_eq!(
        counting.calls_naming(&short),
        after_first,
        "the second issue within the cache lifetime made Secrets Manager calls for the role: {:?}",
        counting.calls.lock().map(|c| c.clone()).unwrap_or_default()
    );
    cleanup(&r).await;
}

/// One function URL request for `role` from `caller`; the password of a
/// credential it returns is remembered for the leak check.
async fn issue_via_url(r: &DynamicRole, caller: &str) -> Value {
    let event = url_event(caller, &json!({"role": r.name, "ttl": "10m"}).to_string());
    let response = rotor::lambda::issue_from_url(&r.dynamic, &event).await;
    if let Some(p) = body_of(&response)["password"].as_str() {
        leaks::remember(p);
    }
    response
}

fn issued_username(response: &Value) -> String {
    assert_eq!(response["statusCode"], 200, "{response}");
    body_of(response)["username"]
        .as_str()
        .expect("username")
        .to_string()
}

/// A refusal because a cap is reached: 429 with a stable code, and a
/// message that tells nothing about the cap or the leases.
fn assert_over_the_cap(what: &str, response: &Value) {
    assert_eq!(response["statusCode"], 429, "{what}: {response}");
    let body = body_of(response);
    assert_eq!(
        body["error"],
        json!("too_many_leases"),
        "{what}: {response}"
    );
    let message = body["message"].as_str().unwrap_or("");
    assert!(
        !message.contains("max_active") && !message.chars().any(|c| c.is_ascii_digit()),
        "{what}: the answer names the cap or a count: {message}"
    );
}

async fn revoke_user(r: &DynamicRole, username: &str) {
    let cli = Caller {
        arn: "cli:test".into(),
        via: "cli",
    };
    let report = r
        .dynamic
        .revoke(&RevokeTarget::User(username.to_string()), false, &cli, None)
        .await
        .expect("revoke one lease");
    assert!(
        report.failures.is_empty() && report.revoked.len() == 1,
        "revoking {username}: {report:?}"
    );
}

/// Item 6: `max_active` caps the role's unexpired leases, counted from the
/// database. The next issue is refused (429, audited) until one is revoked;
/// a caller who may not use the role still gets the one generic answer.
async fn max_active_per_role(db: TestDb) {
    let r = dynamic_role(&db, json!({"max_active": 2})).await;
    let first = issued_username(&issue_via_url(&r, CALLER).await);
    issued_username(&issue_via_url(&r, "arn:aws:sts::123456789012:assumed-role/ci-build/b1").await);
    let third = issue_via_url(&r, CALLER).await;
    assert_eq!(
        third["statusCode"], 429,
        "the 3rd issue must be refused (max_active 2): {third}"
    );
    assert_over_the_cap("the 3rd issue", &third);
    assert_eq!(user_count(&r).await, 2, "nothing was created over the cap");
    let logged = leaks::captured();
    assert!(
        logged.lines().any(|l| l.contains("\"audit\"")
            && l.contains(&r.name)
            && l.contains("refused")
            && l.contains("max_active")),
        "the refusal is audited, naming the role and the cap"
    );
    // Somebody not allowed learns nothing, not even that the role is full.
    let intruder = "arn:aws:sts::123456789012:assumed-role/intruder/s";
    let full = issue_via_url(&r, intruder).await;
    let nowhere = rotor::lambda::issue_from_url(
        &r.dynamic,
        &url_event(intruder, &json!({"role": unique("nope")}).to_string()),
    )
    .await;
    assert_eq!(
        answer_without_request_id(&full),
        answer_without_request_id(&nowhere),
        "an unauthorised caller gets the generic answer whether the role is full or absent"
    );
    // One revoked: room for one more, and only one.
    revoke_user(&r, &first).await;
    issued_username(&issue_via_url(&r, CALLER).await);
    assert_over_the_cap("after refilling", &issue_via_url(&r, CALLER).await);
    cleanup(&r).await;
}

/// Item 6: `max_active_per_principal` counts the caller's own leases only.
/// Another session of the same IAM role is the same principal (a new
/// session name does not escape the count); another principal is counted
/// apart and is not refused because of the first one's leases.
async fn max_active_per_principal(db: TestDb) {
    let r = dynamic_role(&db, json!({"max_active_per_principal": 1})).await;
    let deploy = CALLER;
    let deploy_other_session = "arn:aws:sts::123456789012:assumed-role/ci-deploy/run-8";
    let build = "arn:aws:sts::123456789012:assumed-role/ci-build/b1";
    let mine = issued_username(&issue_via_url(&r, deploy).await);
    let second = issue_via_url(&r, deploy).await;
    assert_eq!(
        second["statusCode"], 429,
        "the principal's 2nd lease must be refused (max_active_per_principal 1): {second}"
    );
    assert_over_the_cap("the same principal again", &second);
    assert_over_the_cap(
        "another session of the same role",
        &issue_via_url(&r, deploy_other_session).await,
    );
    let theirs = issue_via_url(&r, build).await;
    assert_eq!(
        theirs["statusCode"], 200,
        "another principal is not counted with the first: {theirs}"
    );
    assert_over_the_cap("the other principal's 2nd", &issue_via_url(&r, build).await);
    assert_eq!(user_count(&r).await, 2);
    revoke_user(&r, &mine).await;
    issued_username(&issue_via_url(&r, deploy_other_session).await);
    cleanup(&r).await;
}

/// Item 6: issues that run at once cannot all pass the count before any of
/// them has created its user: issuing is serialised per role on the
/// server (advisory lock / GET_LOCK), so the cap holds exactly.
async fn concurrent_issues_capped(db: TestDb) {
    let r = dynamic_role(&db, json!({"max_active": 2})).await;
    let (a, b, c, d, e, f) = tokio::join!(
        issue_via_url(&r, CALLER),
        issue_via_url(&r, CALLER),
        issue_via_url(&r, CALLER),
        issue_via_url(&r, CALLER),
        issue_via_url(&r, CALLER),
        issue_via_url(&r, CALLER),
    );
    let answers = [a, b, c, d, e, f];
    let statuses: Vec<u64> = answers
        .iter()
        .map(|x| x["statusCode"].as_u64().unwrap_or(0))
        .collect();
    let issued = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        issued, 2,
        "6 concurrent issues with max_active 2 issued {issued}: {statuses:?}"
    );
    for answer in answers.iter().filter(|x| x["statusCode"] != 200) {
        assert_over_the_cap("a concurrent issue over the cap", answer);
    }
    assert_eq!(user_count(&r).await, 2);
    cleanup(&r).await;
}

/// One function URL request for `role` from [`CALLER`] with a 1-second
/// ttl; returns the lease name once its expiry has passed (nothing swept).
async fn issue_and_outlive(r: &DynamicRole) -> String {
    let event = url_event(CALLER, &json!({"role": r.name, "ttl": "1s"}).to_string());
    let response = rotor::lambda::issue_from_url(&r.dynamic, &event).await;
    if let Some(p) = body_of(&response)["password"].as_str() {
        leaks::remember(p);
    }
    let username = issued_username(&response);
    let expires_at = parse_lease(&username).expect("a lease name").expires_at;
    while rotor::time::now() <= expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    username
}

/// Review of issue 17 item 6: caps cannot be dodged with short TTLs. An
/// expired lease that still exists still counts: on MySQL/MariaDB it logs
/// in until the sweep drops it, and on PostgreSQL sessions opened before
/// VALID UNTIL stay open. Only a revoke or the sweep frees the slot.
async fn expired_leases_count_until_dropped(db: TestDb) {
    let r = dynamic_role(&db, json!({"max_active": 1})).await;
    let cli = Caller {
        arn: "cli:test".into(),
        via: "cli",
    };
    // Freed by the sweep.
    let swept = issue_and_outlive(&r).await;
    assert_eq!(user_count(&r).await, 1, "nothing dropped {swept} yet");
    assert_over_the_cap(
        "an expired lease that still exists counts (max_active 1)",
        &issue_via_url(&r, CALLER).await,
    );
    let report = r
        .dynamic
        .sweep(&rotor::dynamic::sweep::SweepOptions::default(), &cli, None)
        .await
        .expect("sweep");
    assert!(
        report
            .actions
            .iter()
            .any(|a| a.target == swept && a.outcome == "done"),
        "the sweep dropped {swept}: {report:?}"
    );
    // Freed by a revoke.
    let revoked = issue_and_outlive(&r).await;
    assert_over_the_cap(
        "an expired lease counts until it is revoked",
        &issue_via_url(&r, CALLER).await,
    );
    revoke_user(&r, &revoked).await;
    issued_username(&issue_via_url(&r, CALLER).await);
    cleanup(&r).await;
}

/// Item 6: a GuardDuty finding for a login that is not a lease read the
/// value of every secret in the account to find the one whose host and
/// username match. Candidates now come from the finding's instance: secrets
/// in scope whose metadata names it (name, RDS tags), and the masters of
/// roles whose host is on it. Only their values are read, so the count of
/// GetSecretValue calls does not grow with unrelated secrets.
async fn guardduty_reads_candidates_only(db: TestDb) {
    use rotor::dynamic::revoke::{RevokeScope, from_event};
    use std::sync::Arc;
    let moto = rotor_tests::MotoService::new(&db.env);
    let instance = unique("orders").replace('_', "-");
    let host = format!("{instance}.aaaaaaaaaa.us-east-1.rds.amazonaws.com");
    let scope = format!("{}/", unique("rotor/gd"));
    let roles_prefix = format!("{}/", unique("rotor-gdroles"));
    let on_instance = json!({"host": host});
    // The app's secret names the instance in its name.
    let app_user = unique("gd_app");
    let app = moto
        .create_secret(
            &format!("{scope}{instance}/app"),
            &db.secret(&app_user, "not-a-real-password-1", on_instance.clone()),
        )
        .await;
    // A role's master on that instance, under a name that does not say so.
    let master_user = unique("gd_master");
    let master = moto
        .create_secret(
            &format!("{scope}{}", unique("master")),
            &db.secret(&master_user, "not-a-real-password-2", on_instance.clone()),
        )
        .await;
    moto.create_secret(
        &format!("{roles_prefix}{}", unique("r").replace('_', "")),
        &json!({"engine": db.engine_key(), "masterarn": master, "allowed_principals": [CALLER]})
            .to_string(),
    )
    .await;
    let unrelated = |n: usize| {
        let moto = &moto;
        let scope = &scope;
        let db = &db;
        async move {
            for _ in 0..n {
                let other = format!(
                    "{}.aaaaaaaaaa.us-east-1.rds.amazonaws.com",
                    unique("other").replace('_', "-")
                );
                moto.create_secret(
                    &format!("{scope}{}", unique("svc")),
                    &db.secret(
                        &unique("svc"),
                        "not-a-real-password-3",
                        json!({"host": other}),
                    ),
                )
                .await;
            }
        }
    };
    unrelated(2).await;
    let counting = Arc::new(CountingStore {
        inner: Arc::new(rotor::store::SecretsManagerStore::new(db.env.sm_client())),
        calls: std::sync::Mutex::new(Vec::new()),
    });
    let dynamic = rotor::dynamic::Dynamic::new(counting.clone(), rotor_tests::dynamic_options(&db))
        .with_roles_prefix(roles_prefix.clone())
        .with_revoke_scope(RevokeScope {
            secret_prefix: Some(scope.clone()),
            secret_tag: None,
        });
    let caller = Caller {
        arn: "event:aws.guardduty".into(),
        via: "event",
    };
    let finding = |user: &str| {
        json!({"source": "aws.guardduty", "detail-type": "GuardDuty Finding", "detail": {"resource": {
            "resourceType": "RDSDBInstance",
            "rdsDbInstanceDetails": {"dbInstanceIdentifier": instance, "engine": "postgres", "dbClusterIdentifier": null},
            "rdsDbUserDetails": {"user": user}}}})
    };
    let reads = || counting.calls_naming("GetSecretValue ");
    let revoke = |user: String| {
        let dynamic = &dynamic;
        let caller = &caller;
        let event = finding(&user);
        async move {
            let (target, _) = from_event(&event, &[])
                .expect("parse")
                .expect("not ignored");
            dynamic
                .revoke(&target, true, caller, None)
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"))
        }
    };
    let mut per_user = Vec::new();
    for (user, expected) in [(&app_user, &app), (&master_user, &master)] {
        let before = reads();
        let report = revoke(user.clone()).await;
        assert_eq!(
            report
                .revoked
                .iter()
                .map(|r| r.target.as_str())
                .collect::<Vec<_>>(),
            vec![expected.as_str()],
            "{user}: the finding's login is found: {report:?}"
        );
        per_user.push(reads() - before);
    }
    // Six more secrets in scope that have nothing to do with the instance.
    unrelated(6).await;
    for (i, user) in [&app_user, &master_user].into_iter().enumerate() {
        let before = reads();
        revoke(user.clone()).await;
        let now = reads() - before;
        assert_eq!(
            now,
            per_user[i],
            "{user}: GetSecretValue calls grew with unrelated secrets ({} before, {now} after adding 6): {:?}",
            per_user[i],
            counting
                .calls
                .lock()
                .map(|c| c.iter().filter(|x| x.starts_with("GetSecretValue")).count())
                .unwrap_or(0)
        );
    }
}
