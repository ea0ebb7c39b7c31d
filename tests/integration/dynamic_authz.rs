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
    let _ = unique;
}
