//! Step errors. Their names are what the state machine's Retry and Catch match on.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    /// A wait looked once and the resource is not ready yet: the state's Retry polls again.
    #[error("{0}")]
    NotReady(String),
    /// Throttling or eventual consistency beyond the SDK's own retries: retried with jitter.
    #[error("{0}")]
    Transient(String),
    /// A real failure: caught into Cleanup; the execution fails with this message.
    #[error("{0}")]
    BuildFailed(String),
    /// Prepare only: the template is wrong; nothing has been created.
    #[error("{0}")]
    InvalidTemplate(String),
}

impl StepError {
    /// The `errorType` reported to Step Functions.
    pub fn name(&self) -> &'static str {
        match self {
            StepError::NotReady(_) => "NotReady",
            StepError::Transient(_) => "Transient",
            StepError::BuildFailed(_) => "BuildFailed",
            StepError::InvalidTemplate(_) => "InvalidTemplate",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::NotReady(m)
            | StepError::Transient(m)
            | StepError::BuildFailed(m)
            | StepError::InvalidTemplate(m) => m,
        }
    }

    /// Rebuild from an error name and message, as a task failure comes back from Lambda.
    pub fn from_name(name: &str, message: impl Into<String>) -> StepError {
        let message = message.into();
        match name {
            "NotReady" => StepError::NotReady(message),
            "Transient" => StepError::Transient(message),
            "InvalidTemplate" => StepError::InvalidTemplate(message),
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
