//! Issues a dynamic database credential on request, behind a Lambda function
//! URL with `AWS_IAM` auth: the caller's IAM ARN comes from the signed
//! request, is checked against the role's `allowed_principals`, and is
//! recorded in the audit trail. Body: `{"role": "<name>", "ttl": "15m"}`.
//! All logic lives in `rotor::dynamic`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    rotor::lambda::run_issue_credential().await
}
