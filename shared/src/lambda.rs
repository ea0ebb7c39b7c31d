//! The runners the functions' `main`s call: JSON logging, the Secrets
//! Manager store, AWS's environment variables, and the Lambda runtime loop.
//! Rotation errors go back to Lambda, so Secrets Manager records the failed
//! step and retries it; the issue function answers HTTP (function URL).

use std::sync::Arc;

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::error::Error;
use crate::event::RotationEvent;
use crate::password::PasswordPolicy;
use crate::rotation::Rotator;
use crate::store::SecretsManagerStore;
use crate::strategy::Strategy;

impl From<Error> for Diagnostic {
    fn from(e: Error) -> Self {
        Diagnostic {
            error_type: format!("rotor::{}", e.kind()),
            error_message: e.to_string(),
        }
    }
}

/// The answer to every invocation of a function that could not start
/// because of its configuration (an environment variable out of range, a
/// password policy that excludes every character, ...).
///
/// Exiting instead, before the runtime loop starts, leaves Lambda with
/// "Runtime exited with error: exit status 1" and Secrets Manager with
/// nothing better: the reason sits only in the function's log. Answering
/// each invocation with the error puts the message where the caller looks:
/// the step's failure in Secrets Manager, `aws lambda invoke`, the
/// console's test result. Lambda's `/runtime/init/error` endpoint would do
/// the same for the first invocation only (and `lambda_runtime` offers it
/// to SnapStart hooks only), then restart the process for every invocation.
fn startup_diagnostic(e: &Error) -> Diagnostic {
    Diagnostic {
        error_type: format!("rotor::{}", e.kind()),
        error_message: format!(
            "the function cannot start: {e}. Fix the function's environment variables; every invocation fails with this message until then"
        ),
    }
}

/// Runs the Lambda runtime loop answering every invocation with `e`, the
/// error that stopped the function from starting (see
/// [`startup_diagnostic`]).
pub async fn serve_startup_error(e: Error) -> Result<(), lambda_runtime::Error> {
    tracing::error!(error_kind = e.kind(), error = %e, "cannot start: every invocation is answered with this error");
    let diagnostic = startup_diagnostic(&e);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| {
        let diagnostic = diagnostic.clone();
        async move { Err::<Value, Diagnostic>(diagnostic) }
    }))
    .await
}

/// Runs a rotation function until Lambda stops the process.
pub async fn run_rotation(
    make_engine: impl FnOnce() -> crate::Result<Arc<dyn Engine>>,
    strategy: Strategy,
) -> Result<(), lambda_runtime::Error> {
    crate::logging::init_json();
    let rotator = match build(make_engine, strategy).await {
        Ok(r) => r,
        Err(e) => return serve_startup_error(e).await,
    };
    let rotator = &rotator;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = crate::deadline::from_epoch_millis(event.context.deadline);
        let event = RotationEvent::from_json(&event.payload).inspect_err(|e| {
            tracing::error!(outcome = "failed", error_kind = e.kind(), retryable = false, error = %e, "step failed");
        })?;
        // Every connection and statement of this step is bounded by what is
        // left of the invocation (see `rotor::deadline`).
        let outcome = crate::deadline::scope(deadline, rotator.handle(&event)).await?;
        Ok::<Value, Error>(json!({ "step": event.step, "outcome": outcome.as_str() }))
    }))
    .await
}

async fn build(
    make_engine: impl FnOnce() -> crate::Result<Arc<dyn Engine>>,
    strategy: Strategy,
) -> crate::Result<Rotator> {
    let engine = make_engine()?;
    let policy = PasswordPolicy::from_env(engine.default_excluded_characters())?;
    let sdk_config = aws_config::load_from_env().await;
    let store = Arc::new(SecretsManagerStore::from_sdk_config(&sdk_config));
    let rotator = Rotator::new(store, engine, strategy, policy)
        .with_username_limit(crate::rotation::username_limit_from_env()?)
        .allow_privileged_clone(crate::rotation::allow_privileged_clone_from_env()?);
    #[cfg(feature = "rds")]
    let rotator = if strategy.uses_master() {
        rotator.with_rds(Arc::new(crate::rds::RdsApi::from_sdk_config(&sdk_config)))
    } else {
        rotator
    };
    Ok(rotator)
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
mod dynamic_functions {
    use std::sync::Arc;

    use base64::Engine as _;
    use lambda_runtime::{LambdaEvent, service_fn};
    use serde_json::{Value, json};

    use crate::dynamic::revoke::{EventPolicy, from_event_with};
    use crate::dynamic::sweep::SweepOptions;
    use crate::dynamic::{Caller, Dynamic};
    use crate::engine::ConnectOptions;
    use crate::error::Error;
    use crate::rds::RdsLookup;
    use crate::store::SecretsManagerStore;

    /// The dynamic-credential functions' common start. Logging is set up
    /// by the caller first, so a configuration error here is logged too.
    async fn setup() -> Result<(Dynamic, Option<Arc<dyn RdsLookup>>), Error> {
        let options = ConnectOptions::from_env()?;
        let sdk_config = aws_config::load_from_env().await;
        let store = Arc::new(SecretsManagerStore::from_sdk_config(&sdk_config));
        #[cfg(feature = "rds")]
        let rds: Option<Arc<dyn RdsLookup>> =
            Some(Arc::new(crate::rds::RdsApi::from_sdk_config(&sdk_config)));
        #[cfg(not(feature = "rds"))]
        let rds: Option<Arc<dyn RdsLookup>> = None;
        Ok((Dynamic::new(store, options), rds))
    }

    fn http(status: u16, body: Value) -> Value {
        json!({
            "statusCode": status,
            "headers": {"content-type": "application/json"},
            "body": body.to_string(),
        })
    }

    /// The caller's IAM ARN, from a function URL request with `AWS_IAM` auth.
    ///
    /// A function URL hands the function a payload it builds itself (format
    /// 2.0): `version`, `requestContext.apiId` (the URL id),
    /// `requestContext.domainName` (`<url id>.lambda-url.<region>.on.aws`),
    /// `requestContext.http`, and, with `AWS_IAM` auth,
    /// `requestContext.authorizer.iam` with the signer's `accessKey`,
    /// `accountId` and `userArn`. A direct `Invoke` hands the function
    /// whatever JSON the invoker wrote. This check refuses a payload that
    /// lacks those fields or whose parts disagree (the ARN's account is not
    /// the signer's, the domain is not this region's function URL domain).
    ///
    /// It is a second line of defence only: a direct invoker can write every
    /// one of these fields. The defence is the function's resource policy
    /// and the callers' grants, which allow `lambda:InvokeFunction` only
    /// with `lambda:InvokedViaFunctionUrl` (see infra/README.md).
    pub fn url_caller(event: &Value) -> Result<String, Error> {
        let text = |path: &str| {
            event
                .pointer(path)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        };
        let refuse = |why: &str| {
            Err(Error::Forbidden(format!(
                "the request did not come through the function URL ({why}); call the function URL with AuthType AWS_IAM, not lambda:InvokeFunction"
            )))
        };
        if text("/version") != Some("2.0") {
            return refuse("payload version is not 2.0");
        }
        if text("/requestContext/http/method").is_none() {
            return refuse("no requestContext.http.method");
        }
        let Some(url_id) = text("/requestContext/apiId") else {
            return refuse("no requestContext.apiId");
        };
        let Some(domain) = text("/requestContext/domainName") else {
            return refuse("no requestContext.domainName");
        };
        let region = domain
            .strip_prefix(url_id)
            .and_then(|d| d.strip_prefix(".lambda-url."))
            .and_then(|d| d.strip_suffix(".on.aws"))
            .filter(|r| !r.is_empty() && !r.contains('.'));
        let Some(region) = region else {
            return refuse("requestContext.domainName is not <apiId>.lambda-url.<region>.on.aws");
        };
        if let Ok(own) = std::env::var("AWS_REGION")
            && !own.is_empty()
            && own != region
        {
            return refuse("the function URL domain names another region");
        }
        if text("/requestContext/domainPrefix").is_some_and(|p| p != url_id) {
            return refuse("requestContext.domainPrefix is not the apiId");
        }
        let (Some(arn), Some(account), Some(_key)) = (
            text("/requestContext/authorizer/iam/userArn"),
            text("/requestContext/authorizer/iam/accountId"),
            text("/requestContext/authorizer/iam/accessKey"),
        ) else {
            return refuse("no IAM caller: the function URL must use AuthType AWS_IAM");
        };
        if arn.split(':').nth(4) != Some(account) {
            return refuse("the caller's ARN is not in the signer's account");
        }
        Ok(arn.to_string())
    }

    /// The JSON body of a function URL request.
    pub fn url_body(event: &Value) -> Result<Value, Error> {
        let raw = event.get("body").and_then(Value::as_str).unwrap_or("");
        let text = if event
            .get("isBase64Encoded")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|e| Error::BadRequest(format!("body is not base64: {e}")))?;
            String::from_utf8(bytes).map_err(|_| Error::BadRequest("body is not UTF-8".into()))?
        } else {
            raw.to_string()
        };
        serde_json::from_str(&text).map_err(|e| {
            Error::BadRequest(format!(
                "body is not JSON ({e}); send {{\"role\": \"<name>\", \"ttl\": \"15m\"}}"
            ))
        })
    }

    /// Handles one function URL request (`issue-credential`).
    pub async fn issue_from_url(dynamic: &Dynamic, event: &Value) -> Value {
        let request_id = request_id(event);
        let arn = match url_caller(event) {
            Ok(arn) => arn,
            Err(e) => {
                tracing::error!(error_kind = e.kind(), error = %e, request_id = %request_id, "issue refused: not a function URL request");
                crate::audit::record(&crate::audit::AuditRecord {
                    action: "issue-credential",
                    actor: "unknown",
                    target: "(none)",
                    outcome: "refused",
                    detail: json!({
                        "reason": e.to_string(),
                        "claimed_caller": event.pointer("/requestContext/authorizer/iam/userArn"),
                    }),
                });
                return http_error(&e, &request_id);
            }
        };
        let caller = Caller {
            arn,
            via: "function-url",
        };
        let result = async {
            let body = url_body(event)?;
            let role = body
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::BadRequest("the body needs \"role\"".into()))?
                .to_string();
            let ttl = match body.get("ttl") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .ok_or_else(|| Error::BadRequest("\"ttl\" must be positive".into()))?,
                ),
                Some(Value::String(s)) => Some(
                    crate::time::parse_duration(s).map_err(|e| Error::BadRequest(e.to_string()))?,
                ),
                Some(_) => {
                    return Err(Error::BadRequest(
                        "\"ttl\" must be a duration like \"15m\"".into(),
                    ));
                }
            };
            dynamic.issue(&role, ttl, &caller, true).await
        }
        .await;
        match result {
            Ok(credential) => http(200, json!(credential)),
            Err(e) => {
                tracing::error!(error_kind = e.kind(), error = %e, caller = %caller.arn, request_id = %request_id, "issue refused or failed");
                http_error(&e, &request_id)
            }
        }
    }

    /// The id a caller quotes to the operators: the function URL's request
    /// id (what the caller's `x-amzn-RequestId` shows), else a new one.
    fn request_id(event: &Value) -> String {
        event
            .pointer("/requestContext/requestId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 128)
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
    }

    /// What an HTTP caller is told about a failure: a stable code, a message
    /// that names nothing inside the deployment, and the request id. The
    /// error's own text (hosts, statements, secret names: never a password,
    /// see `rotor::error`) goes to the log only, under the same request id.
    /// Refusals about the caller's own request keep their text: it describes
    /// what the caller sent, and `Forbidden` texts are written for callers.
    pub fn http_error(e: &Error, request_id: &str) -> Value {
        let (status, code, message): (u16, &str, String) = match e {
            Error::Forbidden(_) => (403, "forbidden", e.to_string()),
            Error::BadRequest(_) => (400, "bad_request", e.to_string()),
            // Reached only by callers the role allows (the cap is counted
            // after the principal check); still no cap or count in the
            // answer: those are in the log and the audit record.
            Error::TooManyLeases { .. } => (
                429,
                "too_many_leases",
                "too many credentials of this role are outstanding; retry after one expires or is revoked".into(),
            ),
            Error::Refused { .. } => (
                403,
                "role_refused",
                "this deployment refuses the role's definition; its owner must change it".into(),
            ),
            Error::BadSecret { .. } => (
                500,
                "role_invalid",
                "the role's definition or its master secret is invalid; an operator must fix it"
                    .into(),
            ),
            e if e.is_retryable() => (
                503,
                "unavailable",
                "the database or the secret store did not answer in time; retry later".into(),
            ),
            _ => (
                500,
                "issue_failed",
                "the credential could not be issued; give the request id to the operators".into(),
            ),
        };
        http(
            status,
            json!({"error": code, "message": message, "request_id": request_id}),
        )
    }

    /// `issue-credential`'s answer to every request while its configuration
    /// is invalid: an HTTP 500 that names nothing inside the deployment (as
    /// [`http_error`] does), with the request id; the configuration error
    /// itself goes to the log under that id.
    async fn serve_issue_startup_error(e: Error) -> Result<(), lambda_runtime::Error> {
        tracing::error!(error_kind = e.kind(), error = %e, "cannot start: every request is answered 500 misconfigured");
        let e = &e;
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            let request_id = request_id(&event.payload);
            tracing::error!(error_kind = e.kind(), error = %e, request_id = %request_id, "issue refused: the function cannot start");
            Ok::<Value, Error>(http(
                500,
                json!({
                    "error": "misconfigured",
                    "message": "the credential service is misconfigured and cannot issue credentials; give the request id to the operators",
                    "request_id": request_id,
                }),
            ))
        }))
        .await
    }

    /// `issue-credential`: behind a function URL with `AWS_IAM` auth.
    pub async fn run_issue_credential() -> Result<(), lambda_runtime::Error> {
        crate::logging::init_json();
        let (dynamic, _) = match setup().await {
            Ok(s) => s,
            Err(e) => return serve_issue_startup_error(e).await,
        };
        let dynamic = &dynamic;
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            // Connections, statements and the issue lock's wait are bounded
            // by what is left of the invocation (see `rotor::deadline`).
            let deadline = crate::deadline::from_epoch_millis(event.context.deadline);
            let answer =
                crate::deadline::scope(deadline, issue_from_url(dynamic, &event.payload)).await;
            Ok::<Value, Error>(answer)
        }))
        .await
    }

    /// `expire-credentials`: on an EventBridge Scheduler schedule. The
    /// payload may say `{"dry_run": true}`.
    pub async fn run_expire_credentials() -> Result<(), lambda_runtime::Error> {
        crate::logging::init_json();
        let (dynamic, rds) = match setup().await {
            Ok(s) => s,
            Err(e) => return super::serve_startup_error(e).await,
        };
        let (dynamic, rds) = (&dynamic, &rds);
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            let options = SweepOptions {
                dry_run: event
                    .payload
                    .get("dry_run")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                ..SweepOptions::default()
            };
            let caller = Caller {
                arn: "schedule:expire-credentials".into(),
                via: "schedule",
            };
            let deadline = crate::deadline::from_epoch_millis(event.context.deadline);
            let report =
                crate::deadline::scope(deadline, dynamic.sweep(&options, &caller, rds.clone()))
                    .await?;
            tracing::info!(report = %json!(report), failures = report.failures, "sweep finished");
            if report.failures > 0 {
                return Err(Error::Config(format!(
                    "{} of {} sweep actions failed; see the sweep report in the logs",
                    report.failures,
                    report.actions.len()
                )));
            }
            Ok::<Value, Error>(json!(report))
        }))
        .await
    }

    /// `revoke-on-event`: on EventBridge rules (custom events, GuardDuty,
    /// CloudTrail). Events caused by `ROTOR_IGNORE_PRINCIPALS` are ignored.
    pub async fn run_revoke_on_event() -> Result<(), lambda_runtime::Error> {
        crate::logging::init_json();
        let started = async { Ok::<_, Error>((setup().await?, EventPolicy::from_env()?)) };
        let ((dynamic, rds), policy) = match started.await {
            Ok(s) => s,
            Err(e) => return super::serve_startup_error(e).await,
        };
        let (dynamic, rds, policy) = (&dynamic, &rds, &policy);
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            revoke_from_event(
                dynamic,
                rds.clone(),
                policy,
                &event.payload,
                event.context.deadline,
            )
            .await
        }))
        .await
    }

    /// Handles one `revoke-on-event` invocation. `deadline_ms` is the Lambda
    /// context's deadline (milliseconds since the epoch): every connection,
    /// statement, Secrets Manager call and wait for a secret's rotation
    /// lock (a burst of events for one secret) is bounded by it, so an
    /// invocation that waits ends with a clear, retryable error before
    /// Lambda stops it.
    pub async fn revoke_from_event(
        dynamic: &Dynamic,
        rds: Option<Arc<dyn RdsLookup>>,
        policy: &EventPolicy,
        payload: &Value,
        deadline_ms: u64,
    ) -> Result<Value, Error> {
        let parsed = from_event_with(payload, policy).inspect_err(|e| {
            tracing::error!(error_kind = e.kind(), error = %e, "event refused");
        })?;
        let Some((target, dry_run)) = parsed else {
            tracing::info!(
                "event ignored: caused by Rotor itself, a CloudTrail record of a call that failed, or a GuardDuty finding of a failed login (ROTOR_REVOKE_ON_FAILED_LOGINS)"
            );
            return Ok(json!({"ignored": true}));
        };
        let caller = Caller {
            arn: format!(
                "event:{}",
                payload
                    .get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
            ),
            via: "event",
        };
        let deadline = crate::deadline::from_epoch_millis(deadline_ms);
        let report = crate::deadline::scope(deadline, dynamic.revoke(&target, dry_run, &caller, rds))
            .await
            .inspect_err(|e| {
                tracing::error!(error_kind = e.kind(), retryable = e.is_retryable(), error = %e, "revocation failed");
            })?;
        tracing::info!(report = %json!(report), "revocation finished");
        if !report.failures.is_empty() {
            let retryable = report.retryable_failures == report.failures.len();
            return Err(Error::RevocationsFailed {
                failed: report.failures.len(),
                retryable,
                detail: format!("{:?}", report.failures),
                advice: if retryable {
                    "Each may succeed when retried (EventBridge retries the event): a server did not answer in time, or another revocation of the same secret held its lock"
                } else {
                    "See each failure; an operator must act on those that are not timeouts"
                },
            });
        }
        Ok(json!(report))
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use dynamic_functions::{
    http_error, issue_from_url, revoke_from_event, run_expire_credentials, run_issue_credential,
    run_revoke_on_event, url_body, url_caller,
};

#[cfg(feature = "inventory-aws")]
mod audit_functions {
    use lambda_runtime::{LambdaEvent, service_fn};
    use serde_json::{Value, json};

    use crate::error::Error;
    use crate::inventory::classify::Rules;
    use crate::inventory::events::{EventRules, analyse};
    use crate::inventory::publish;
    use crate::inventory::report::Report;
    use crate::inventory::scan;
    use crate::store::SecretsManagerStore;

    fn flag(name: &str, default: bool) -> bool {
        std::env::var(name).map_or(default, |v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// `audit-report`: on an EventBridge schedule. Inventories Secrets
    /// Manager (and Lambda environments and SSM String parameters unless
    /// `ROTOR_SCAN_LAMBDA`/`ROTOR_SCAN_SSM` are `false`), classifies, publishes
    /// each finding to `ROTOR_EVENT_BUS` (`default`) and writes the report to
    /// `ROTOR_REPORT_BUCKET` under `ROTOR_REPORT_PREFIX` (`rotor-reports`).
    pub async fn run_audit_report() -> Result<(), lambda_runtime::Error> {
        crate::logging::init_json();
        let sdk = aws_config::load_from_env().await;
        let store = SecretsManagerStore::from_sdk_config(&sdk);
        let lambda = aws_sdk_lambda::Client::new(&sdk);
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let s3 = aws_sdk_s3::Client::new(&sdk);
        let rules = match Rules::from_env() {
            Ok(rules) => rules,
            Err(e) => return crate::lambda::serve_startup_error(e).await,
        };
        let (store, lambda, ssm, events, s3, rules) = (&store, &lambda, &ssm, &events, &s3, &rules);
        lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| async move {
            let mut inventory = scan::from_secrets_manager(store.client()).await?;
            if flag("ROTOR_SCAN_LAMBDA", true) {
                scan::scan_lambda(lambda, &mut inventory).await?;
            }
            if flag("ROTOR_SCAN_SSM", true) {
                scan::scan_ssm(ssm, &mut inventory).await?;
            }
            let report = Report::build(&inventory, crate::time::now(), rules);
            let bus = std::env::var("ROTOR_EVENT_BUS").unwrap_or_else(|_| "default".into());
            let published = publish::publish(events, &bus, &publish::finding_details(&report)).await?;
            let keys = match std::env::var("ROTOR_REPORT_BUCKET") {
                Ok(bucket) if !bucket.is_empty() => {
                    let prefix = std::env::var("ROTOR_REPORT_PREFIX").unwrap_or_else(|_| "rotor-reports".into());
                    publish::upload(s3, &bucket, &prefix, &report).await?
                }
                _ => Vec::new(),
            };
            crate::audit::record(&crate::audit::AuditRecord {
                action: "audit-report",
                actor: "schedule:audit-report",
                target: "(all secrets)",
                outcome: "ok",
                detail: json!({"summary": report.summary, "published": published, "objects": keys}),
            });
            Ok::<Value, Error>(json!({"summary": report.summary, "findings_published": published, "objects": keys}))
        }))
        .await
    }

    /// `audit-events`: on EventBridge rules for Secrets Manager's CloudTrail
    /// and rotation events; publishes each finding.
    pub async fn run_audit_events() -> Result<(), lambda_runtime::Error> {
        crate::logging::init_json();
        let sdk = aws_config::load_from_env().await;
        let store = SecretsManagerStore::from_sdk_config(&sdk);
        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let rules = match crate::dynamic::revoke::ignored_principals_from_env() {
            Ok(ignore) => EventRules {
                ignore,
                ..EventRules::default()
            },
            Err(e) => return crate::lambda::serve_startup_error(e).await,
        };
        let (store, events, rules) = (&store, &events, &rules);
        lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
            let findings = analyse(&event.payload, store, rules, crate::time::now()).await?;
            let bus = std::env::var("ROTOR_EVENT_BUS").unwrap_or_else(|_| "default".into());
            let published =
                publish::publish(events, &bus, &publish::event_finding_details(&findings)).await?;
            for f in &findings {
                crate::audit::record(&crate::audit::AuditRecord {
                    action: "audit-event",
                    actor: &f.actor,
                    target: &f.secret,
                    outcome: &f.status,
                    detail: json!({"rule": f.rule, "event": f.event_name}),
                });
            }
            Ok::<Value, Error>(json!({"findings": findings, "published": published}))
        }))
        .await
    }
}

#[cfg(feature = "inventory-aws")]
pub use audit_functions::{run_audit_events, run_audit_report};
