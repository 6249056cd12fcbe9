//! The task token of a deployed build's callback state awaiting an EC2 event
//! (`steps/await_event.rs`): kept as a SecureString parameter under the build's path
//! (`/amiflow/<execution>/<build>/await`) in the stack's own region, with the resource and
//! the wait it is for. A build awaits one thing at a time, so one parameter per build.
//!
//! AwaitEvent stores it (overwriting an earlier wait's); DeliverEvent
//! (`steps/deliver_event.rs`) reads it when an event names the resource, answers it and
//! removes it; Cleanup removes one left behind (a wait that timed out into polling), and the
//! janitor's parameter sweep takes whatever is under the execution's path.
//!
//! An SSM command carries no build tags, so a wait on one is found the other way round: the
//! parameter is tagged [`AWAITS_TAG`] = the command's id ([`index`]), which DeliverEvent
//! looks up ([`find`]).
//!
//! Whoever holds the token can only end a wait early: the waiting step after the callback
//! state looks at the resource itself, so a wrong or early answer costs a poll, never a
//! wrong build.

use aws_sdk_ssm::types::ParameterType;
use serde::{Deserialize, Serialize};

use super::key_pair::{parameter_path, PARAMETER_NOT_FOUND};
use crate::error::{classify, error_code, or_absent};
use crate::{Ctx, StepError};

/// The tag on a token's parameter naming the awaited resource, for resources that carry no
/// build tags (an SSM command).
pub const AWAITS_TAG: &str = "amiflow:awaits";
/// Step Functions' callback answer, on the stack's own state machine only
/// ([`Reach::StackStateMachine`](crate::resources::Reach::StackStateMachine)).
pub const ANSWER: &str = "states:SendTaskSuccess";

/// What is awaited, and the token that ends the wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Awaited {
    pub token: String,
    /// The resource ids (`i-…`, `ami-…`, `snap-…`) whose events end the wait: the last of
    /// them to settle does.
    pub resources: Vec<String>,
    /// The wait's name (`waits.rs`).
    pub wait: String,
    /// The build awaiting (what DeliverEvent reports; empty in tokens stored before it was kept).
    #[serde(default)]
    pub execution: String,
    #[serde(default)]
    pub build: String,
}

/// `/amiflow/<execution>/<build>/await`.
pub fn parameter_name(execution: &str, build: &str) -> String {
    format!("{}await", parameter_path(execution, Some(build)))
}

pub async fn store(
    ctx: &Ctx,
    execution: &str,
    build: &str,
    awaited: &Awaited,
) -> Result<String, StepError> {
    let name = parameter_name(&ctx.parameter_owner(execution), build);
    ctx.ssm(&ctx.own_region())
        .put_parameter()
        .name(&name)
        .description("amiflow: the task token of a build awaiting an EC2 event")
        .r#type(ParameterType::SecureString)
        .value(serde_json::to_string(awaited)?)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| classify("PutParameter", &name, e))?;
    Ok(name)
}

/// Tags the stored token with the resource it awaits, for [`find`].
pub async fn index(ctx: &Ctx, name: &str, resource: &str) -> Result<(), StepError> {
    ctx.ssm(&ctx.own_region())
        .add_tags_to_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(name)
        .tags(
            aws_sdk_ssm::types::Tag::builder()
                .key(AWAITS_TAG)
                .value(resource)
                .build()
                .map_err(|e| StepError::BuildFailed(format!("tag {AWAITS_TAG}: {e}")))?,
        )
        .send()
        .await
        .map_err(|e| classify("AddTagsToResource", name, e))?;
    Ok(())
}

/// The parameter of the token awaiting `resource` (tagged by [`index`]), if any. SSM
/// filters page by page (a page may come back empty with more to follow): read them all.
pub async fn find(ctx: &Ctx, resource: &str) -> Result<Option<String>, StepError> {
    let filter = |key: String, option: Option<&str>, value: &str| {
        aws_sdk_ssm::types::ParameterStringFilter::builder()
            .key(key.clone())
            .set_option(option.map(String::from))
            .values(value)
            .build()
            .map_err(|e| StepError::BuildFailed(format!("filter {key}: {e}")))
    };
    // This stack's parameters only (`/amiflow/<stack>/`): another stack's are not its own.
    let root = super::key_pair::parameters_root(ctx.stack.stack_name.as_deref());
    let mut pages = ctx
        .ssm(&ctx.own_region())
        .describe_parameters()
        .parameter_filters(filter(
            "Path".into(),
            Some("Recursive"),
            root.trim_end_matches('/'),
        )?)
        .parameter_filters(filter(format!("tag:{AWAITS_TAG}"), None, resource)?)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify("DescribeParameters", resource, e))?;
        if let Some(name) = page
            .parameters()
            .iter()
            .filter_map(|p| p.name())
            .find(|n| n.starts_with(&root) && n.ends_with("/await"))
        {
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// The build's awaited resource and token, or None when it awaits nothing.
pub async fn read(ctx: &Ctx, execution: &str, build: &str) -> Result<Option<Awaited>, StepError> {
    read_at(ctx, &parameter_name(&ctx.parameter_owner(execution), build)).await
}

/// [`read`] of the parameter `name`.
pub async fn read_at(ctx: &Ctx, name: &str) -> Result<Option<Awaited>, StepError> {
    let out = ctx
        .ssm(&ctx.own_region())
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await;
    let Some(value) = or_absent(out, &[PARAMETER_NOT_FOUND], "GetParameter", name)?
        .and_then(|o| o.parameter().and_then(|p| p.value()).map(String::from))
    else {
        return Ok(None);
    };
    // Not ours to judge: a value that does not parse awaits nothing we can answer.
    Ok(serde_json::from_str(&value).ok())
}

/// Removes the build's token; absent counts as removed. Returns whether one was there.
pub async fn remove(ctx: &Ctx, execution: &str, build: &str) -> Result<bool, StepError> {
    remove_at(ctx, &parameter_name(&ctx.parameter_owner(execution), build)).await
}

/// [`remove`] of the parameter `name`.
pub async fn remove_at(ctx: &Ctx, name: &str) -> Result<bool, StepError> {
    let out = ctx
        .ssm(&ctx.own_region())
        .delete_parameter()
        .name(name)
        .send()
        .await;
    Ok(or_absent(out, &[PARAMETER_NOT_FOUND], "DeleteParameter", name)?.is_some())
}

/// Ends the wait. Returns false when it was over already (answered by the other side of
/// the race, timed out, or its execution gone): Step Functions answers `TaskTimedOut` or
/// `InvalidToken` then, and that is no error here.
pub async fn answer(ctx: &Ctx, awaited: &Awaited) -> Result<bool, StepError> {
    let sent = aws_sdk_sfn::Client::new(&ctx.sdk)
        .send_task_success()
        .task_token(&awaited.token)
        .output(serde_json::json!({"resources": awaited.resources}).to_string())
        .send()
        .await;
    match sent {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e).is_some_and(|c| c == "TaskTimedOut" || c == "InvalidToken") => {
            Ok(false)
        }
        Err(e) => Err(classify("SendTaskSuccess", &awaited.wait, e)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_token_lives_under_the_build_path() {
        assert_eq!(
            super::parameter_name("nightly-1", "web"),
            "/amiflow/nightly-1/web/await"
        );
    }
}
