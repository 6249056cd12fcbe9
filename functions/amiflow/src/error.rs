//! Step errors and how an AWS error becomes one.
//!
//! [`StepError`]'s names are what the state machine's Retry and Catch match on. [`classify`]
//! maps an SDK error to one (throttling and 5xx are `Transient`, the rest `BuildFailed`
//! with the operation, the resource and a troubleshooting [`hint`]); [`or_absent`] is the
//! one place where "the resource is already gone" counts as success.

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    /// A wait looked once and the resource is not ready yet: the state's Retry polls again.
    #[error("{0}")]
    NotReady(String),
    /// Provision only: an SSM command was just sent (the message says which provisioner).
    /// Deployed, the Catch on it awaits SSM's event on the command, then invokes the step
    /// again (`waits::PROVISION`); locally that is at once, and the step's look polls.
    #[error("{0}")]
    CommandSent(String),
    /// Throttling or eventual consistency beyond the SDK's own retries: retried with jitter.
    #[error("{0}")]
    Transient(String),
    /// A real failure: caught into Cleanup; the execution fails with this message.
    #[error("{0}")]
    BuildFailed(String),
    /// Prepare only: the template is wrong; nothing has been created.
    #[error("{0}")]
    InvalidTemplate(String),
    /// Approve only: a person refused the pipeline's images (or nobody could be asked).
    #[error("{0}")]
    Rejected(String),
    /// JudgeTests only: the pipeline's test stage failed on the new image (which test, and
    /// why, in the message); caught into Withdraw.
    #[error("{0}")]
    TestFailed(String),
}

/// The error a refused approval fails the Approve state with: what `amiflow reject` sends
/// (SendTaskFailure) and what a local run's refusal raises.
pub const REJECTED: &str = "Rejected";
/// The error a failed test stage fails JudgeTests with.
pub const TEST_FAILED: &str = "TestFailed";
/// The error Provision raises when it has just sent an SSM command.
pub const COMMAND_SENT: &str = "CommandSent";

impl StepError {
    /// The `errorType` reported to Step Functions.
    pub fn name(&self) -> &'static str {
        match self {
            StepError::NotReady(_) => "NotReady",
            StepError::CommandSent(_) => COMMAND_SENT,
            StepError::Transient(_) => "Transient",
            StepError::BuildFailed(_) => "BuildFailed",
            StepError::InvalidTemplate(_) => "InvalidTemplate",
            StepError::Rejected(_) => REJECTED,
            StepError::TestFailed(_) => TEST_FAILED,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::NotReady(m)
            | StepError::CommandSent(m)
            | StepError::Transient(m)
            | StepError::BuildFailed(m)
            | StepError::InvalidTemplate(m)
            | StepError::Rejected(m)
            | StepError::TestFailed(m) => m,
        }
    }

    /// Rebuild from an error name and message, as a task failure comes back from Lambda.
    pub fn from_name(name: &str, message: impl Into<String>) -> StepError {
        let message = message.into();
        match name {
            "NotReady" => StepError::NotReady(message),
            COMMAND_SENT => StepError::CommandSent(message),
            "Transient" => StepError::Transient(message),
            "InvalidTemplate" => StepError::InvalidTemplate(message),
            REJECTED => StepError::Rejected(message),
            TEST_FAILED => StepError::TestFailed(message),
            _ => StepError::BuildFailed(message),
        }
    }

    pub fn payload(&self) -> ErrorPayload {
        ErrorPayload {
            error_type: self.name().to_string(),
            error_message: self.message().to_string(),
        }
    }
}

/// Lambda's error document: `{"errorType": ..., "errorMessage": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorPayload {
    #[serde(rename = "errorType")]
    pub error_type: String,
    #[serde(rename = "errorMessage")]
    pub error_message: String,
}

impl From<serde_json::Error> for StepError {
    fn from(e: serde_json::Error) -> Self {
        StepError::BuildFailed(format!(
            "the step's input is not a build state amiflow understands: {e}"
        ))
    }
}

/// Error codes that mean "slow down" or "try again shortly".
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "Unavailable",
];

/// The troubleshooting hint for an error code (Packer's troubleshooting advice for these
/// codes: the clock, and the policy).
pub fn hint(code: &str) -> Option<&'static str> {
    match code {
        "AuthFailure" | "RequestExpired" | "SignatureDoesNotMatch" | "InvalidSignatureException" => Some(
            "AWS was not able to validate the provided access credentials. Amazon signs every request with \
             the current time: if your system clock is skewed, requests fail this way. Compare `date` with \
             http://www.time.gov/ (on Linux: `sudo ntpd -q` or `chronyc makestep`), and check the access \
             key, secret key and session token in use",
        ),
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => Some(
            "You are not authorized to perform this operation: the credentials' policy must allow this \
             action (`amiflow policy TEMPLATE` prints the minimal policy); with an IAM instance profile \
             also allow iam:PassRole for the profile's role",
        ),
        _ => None,
    }
}

/// Maps an SDK error to a step error: throttling and 5xx are `Transient`, everything else
/// `BuildFailed`, naming the operation, the resource and AWS's own message.
pub fn classify<E, R>(operation: &str, resource: &str, err: SdkError<E, R>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    let code = err.code().unwrap_or("").to_string();
    let message = err.message().unwrap_or("").to_string();
    let status = err.raw_response().map(|r| r.status_code()).unwrap_or(0);
    let what = if resource.is_empty() {
        operation.to_string()
    } else {
        format!("{operation} {resource}")
    };
    let detail = if code.is_empty() {
        if let Some(refusal) = refused_credentials(std::error::Error::source(&err)) {
            return StepError::BuildFailed(format!(
                "{what}: no credentials: {refusal}. {CREDENTIALS_HINT}"
            ));
        }
        match &err {
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => {
                return StepError::Transient(format!(
                    "{what}: could not reach AWS: {}",
                    error_chain(&err)
                ));
            }
            _ => error_chain(&err),
        }
    } else {
        format!("{code}: {message}")
    };
    if THROTTLING.contains(&code.as_str()) || status >= 500 {
        return StepError::Transient(format!("{what}: {detail}"));
    }
    match hint(&code) {
        Some(h) => StepError::BuildFailed(format!("{what}: {detail}. {h}")),
        None => StepError::BuildFailed(format!("{what}: {detail}")),
    }
}

/// What to check when the credentials provider was refused.
const CREDENTIALS_HINT: &str = "Check the keys or profile in use; with assume_role, your identity \
     needs sts:AssumeRole on the role (`amiflow policy TEMPLATE` prints it) and the role's trust \
     policy must let it in, with the template's external_id if the trust asks for one";

/// STS's answers to AssumeRole that no retry changes (the role refuses the caller, keys
/// unknown or expired), as the SDK writes them: `(Code)` for an error STS does not model,
/// `CodeException:` for one it does. STS's MalformedPolicyDocument and RegionDisabled come
/// back as the provider's InvalidConfiguration, refused as such.
const REFUSED_CREDENTIAL_CODES: &[&str] = &[
    "(AccessDenied)",
    "(InvalidClientTokenId)",
    "(SignatureDoesNotMatch)",
    "(ExpiredToken)",
    "ExpiredTokenException:",
    "PackedPolicyTooLargeException:",
];

/// The credentials provider's error behind a call that never left (the SDK loads credentials
/// first, then reports a failure to load them as a dispatch failure), when retrying cannot
/// help: a configuration that is wrong (a profile that does not exist), or STS refusing
/// (assume_role with a role that does not trust the caller). A provider that timed out, STS
/// unreachable, or no credentials found (instance metadata may answer again) is left to
/// retry. An assume_role provider's error wraps its base credentials' own: the walk goes on
/// through it.
fn refused_credentials(source: Option<&(dyn std::error::Error + 'static)>) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut next = source;
    while let Some(e) = next {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            match c {
                CredentialsError::ProviderTimedOut(_)
                | CredentialsError::CredentialsNotLoaded(_) => return None,
                CredentialsError::ProviderError(_) | CredentialsError::Unhandled(_) => {
                    let chain = error_chain(c);
                    if REFUSED_CREDENTIAL_CODES
                        .iter()
                        .any(|code| chain.contains(code))
                    {
                        return Some(chain);
                    }
                }
                _ => return Some(error_chain(c)),
            }
        }
        next = e.source();
    }
    None
}

/// The AWS error code of an SDK error, if AWS answered with one.
pub fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        out.push_str(": ");
        out.push_str(&e.to_string());
        src = e.source();
    }
    out
}

/// The HTTP status of a raw response, whatever the SDK's response type.
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_ec2::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// The result of a call on a resource that may already be gone: `Ok(None)` when AWS
/// answered with one of the `absent` codes (removed already, or never made), `Ok(Some)` on
/// success, any other error [`classify`]d with the operation and the resource.
pub fn or_absent<T, E, R>(
    result: Result<T, SdkError<E, R>>,
    absent: &[&str],
    operation: &str,
    resource: &str,
) -> Result<Option<T>, StepError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus,
{
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if error_code(&e).is_some_and(|c| absent.contains(&c)) => Ok(None),
        Err(e) => Err(classify(operation, resource, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_clock_and_the_policy() {
        assert!(hint("AuthFailure").unwrap().contains("clock"));
        assert!(hint("RequestExpired").unwrap().contains("clock"));
        assert!(hint("UnauthorizedOperation")
            .unwrap()
            .contains("iam:PassRole"));
        assert!(hint("InvalidAMIID.NotFound").is_none());
    }

    /// An error as the SDK reports credentials it could not load: a dispatch failure whose
    /// source is the provider's error.
    fn credentials_failure(
        e: aws_credential_types::provider::error::CredentialsError,
    ) -> SdkError<
        aws_sdk_ec2::operation::describe_instances::DescribeInstancesError,
        aws_sdk_ec2::config::http::HttpResponse,
    > {
        SdkError::dispatch_failure(aws_sdk_ec2::error::ConnectorError::other(Box::new(e), None))
    }

    #[derive(Debug)]
    struct StsAnswer(&'static str);
    impl std::fmt::Display for StsAnswer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for StsAnswer {}

    /// assume_role refused (a trust policy that does not let the caller in, another external
    /// id) fails the step at once with what to check; it was retried as unreachable AWS for
    /// minutes.
    #[test]
    fn refused_credentials_fail_at_once_and_say_what_to_check() {
        use aws_credential_types::provider::error::CredentialsError;
        let refused = classify(
            "DescribeInstances",
            "",
            credentials_failure(CredentialsError::provider_error(StsAnswer(
                "service error: unhandled error (AccessDenied): User is not authorized to perform: sts:AssumeRole",
            ))),
        );
        match refused {
            StepError::BuildFailed(m) => {
                assert!(
                    m.contains("AccessDenied") && m.contains("external_id"),
                    "{m}"
                )
            }
            other => panic!("refused credentials are permanent: {other:?}"),
        }
        assert!(matches!(
            classify(
                "DescribeInstances",
                "",
                credentials_failure(CredentialsError::invalid_configuration(
                    "profile build not found"
                ))
            ),
            StepError::BuildFailed(_)
        ));
        // A modeled STS error reads `CodeException: message`.
        assert!(matches!(
            classify(
                "DescribeInstances",
                "",
                credentials_failure(CredentialsError::provider_error(StsAnswer(
                    "ExpiredTokenException: the security token included in the request is expired"
                )))
            ),
            StepError::BuildFailed(_)
        ));
        // assume_role's provider wraps its base credentials' error: a base profile that does
        // not exist is found under it.
        let nested = CredentialsError::provider_error(credentials_failure(
            CredentialsError::invalid_configuration("profile build not found"),
        ));
        assert!(matches!(
            classify("DescribeInstances", "", credentials_failure(nested)),
            StepError::BuildFailed(_)
        ));
        // STS unreachable, slow, or no credentials found yet (instance metadata may answer
        // again): worth another try.
        for transient in [
            CredentialsError::provider_error(StsAnswer(
                "dispatch failure: io error: connection refused",
            )),
            CredentialsError::provider_timed_out(std::time::Duration::from_secs(5)),
            CredentialsError::not_loaded("no credentials in the chain"),
        ] {
            assert!(
                matches!(
                    classify("DescribeInstances", "", credentials_failure(transient)),
                    StepError::Transient(_)
                ),
                "retried"
            );
        }
    }
}
