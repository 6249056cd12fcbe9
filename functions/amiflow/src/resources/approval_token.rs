//! The task token of a deployed run waiting for approval (the Approve state,
//! `steps/approve.rs`): whoever holds it can approve the run's images, so it is kept as a
//! SecureString parameter under the execution's path (`/amiflow/<execution>/approval/token`),
//! in the stack's own region, never in the execution's history beyond the state's input.
//! Approve stores it; `amiflow approve|reject` takes it (reads, answers, removes); Withdraw
//! removes it when the run was not approved; the janitor removes one left behind (an
//! execution stopped while it waited), in the stack's own region, and takes it as the sign
//! that the run's images were never approved (`steps/janitor.rs`).

use aws_sdk_ssm::types::ParameterType;

use super::key_pair::{parameter_path, PARAMETER_NOT_FOUND};
use crate::error::{classify, or_absent};
use crate::StepError;

/// Approve: stores the token (a retried Approve gets a new token: it overwrites).
pub const STORE_ACTIONS: &[&str] = &["ssm:PutParameter"];
/// Withdraw: removes a token nobody answered.
pub const REMOVE_ACTIONS: &[&str] = &["ssm:DeleteParameter"];

/// `/amiflow/<execution>/approval/token` (`execution` as [`crate::state::build_id`] makes it).
pub fn parameter_name(execution: &str) -> String {
    format!("{}approval/token", parameter_path(execution, None))
}

pub async fn store(
    ssm: &aws_sdk_ssm::Client,
    execution: &str,
    token: &str,
) -> Result<String, StepError> {
    let name = parameter_name(execution);
    ssm.put_parameter()
        .name(&name)
        .description("amiflow: the task token of a run waiting for approval")
        .r#type(ParameterType::SecureString)
        .value(token)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| classify("PutParameter", &name, e))?;
    Ok(name)
}

/// The token of `execution`'s waiting Approve state, or None when none waits (answered
/// already, timed out, or never asked).
pub async fn read(ssm: &aws_sdk_ssm::Client, execution: &str) -> Result<Option<String>, StepError> {
    let name = parameter_name(execution);
    let out = ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await;
    Ok(
        or_absent(out, &[PARAMETER_NOT_FOUND], "GetParameter", &name)?
            .and_then(|o| o.parameter().and_then(|p| p.value()).map(String::from)),
    )
}

/// Removes the token; absent counts as removed. Returns whether one was there.
pub async fn remove(ssm: &aws_sdk_ssm::Client, execution: &str) -> Result<bool, StepError> {
    let name = parameter_name(execution);
    let out = ssm.delete_parameter().name(&name).send().await;
    Ok(or_absent(out, &[PARAMETER_NOT_FOUND], "DeleteParameter", &name)?.is_some())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_lives_under_the_execution_path() {
        assert_eq!(
            super::parameter_name("nightly-1"),
            "/amiflow/nightly-1/approval/token"
        );
    }
}
