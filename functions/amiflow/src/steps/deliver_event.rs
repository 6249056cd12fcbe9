//! DeliverEvent: EC2's state-change events, and SSM's on a build's commands (the chroot
//! host's script, provisioners'), end the waits AwaitEvent stored (`steps/await_event.rs`).
//!
//! Invoked by the stack's EventBridge rules (infra.rs, one per [`Watched`] kind, patterns
//! from `waits.rs`), never by the state machine. From the event's resource it finds the
//! build by the resource's tags (`amiflow:build`, `amiflow:build-name`), or for an SSM
//! command the token tagged with it, reads that build's
//! token (`resources/await_token.rs`), and answers it when the token awaits this resource
//! and the event's state is past the wait's pending ones; then removes it. Anything else
//! (not a build's resource, nobody waiting, another resource, a state still pending) is
//! left alone: events are best-effort, and the waiting step decides from what it sees.
//!
//! Only `aws.ec2` and `aws.ssm` can send these events (EventBridge refuses `aws.*` sources from
//! PutEvents), and an answer only ends a wait early: nothing a caller controls reaches
//! further.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::prelude::*;
use crate::resources::await_token;
use crate::waits::Watched;

pub const SPEC: StepSpec = StepSpec {
    name: "DeliverEvent",
    iam_actions: &[
        "ec2:DescribeTags",
        // Whether a build's other snapshots are done too.
        "ec2:DescribeSnapshots",
        // The token awaiting an SSM command, by its tag (no resource-level permission).
        "ssm:DescribeParameters",
        "ssm:GetParameter",
        "ssm:DeleteParameter",
        await_token::ANSWER,
    ],
    reach: &[
        ("ssm:GetParameter", Reach::AmiflowParameters),
        ("ssm:DeleteParameter", Reach::AmiflowParameters),
        (await_token::ANSWER, Reach::StackStateMachine),
    ],
    calls: None,
    wait: None,
    timeout_seconds: 30,
    handler: handler!(run),
};

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivered {
    /// Not an event of the rules' patterns.
    Ignored,
    /// The resource carries no build tags (not made by amiflow), or, an SSM command, no
    /// build's token awaits it.
    NotABuild { resource: String },
    /// The build awaits nothing, or something else, or this state is not the one awaited.
    NotAwaited { resource: String, state: String },
    /// This resource settled, but the wait is on others too, still pending.
    OthersPending { resource: String, state: String },
    /// The wait is over: its token answered (or found answered already) and removed.
    Answered {
        resource: String,
        state: String,
        wait: String,
        execution: String,
        build: String,
    },
}

pub async fn run(ctx: &Ctx, event: Value) -> Result<Delivered, StepError> {
    let Some((watched, resource, new_state)) = Watched::of_event(&event) else {
        return Ok(Delivered::Ignored);
    };
    // The rule sees every Run Command of the region; a build's host script runs the stack's
    // own document and its provisioners the two shell documents, never another of AWS's
    // (State Manager's, Patch Manager's).
    let document = event["detail"]["document-name"]
        .as_str()
        .unwrap_or_default();
    let provisioning = [
        crate::provision::ssm::DOCUMENT,
        crate::provision::windows::DOCUMENT,
    ];
    if watched == Watched::Command
        && document.starts_with("AWS-")
        && !provisioning.contains(&document)
    {
        return Ok(Delivered::Ignored);
    }
    let region = event
        .get("region")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| ctx.own_region());
    let parameter = if watched.carries_build_tags() {
        build_of(ctx, &region, &resource)
            .await?
            .map(|(execution, build)| {
                await_token::parameter_name(&ctx.parameter_owner(&execution), &build)
            })
    } else {
        await_token::find(ctx, &resource).await?
    };
    let Some(parameter) = parameter else {
        return Ok(Delivered::NotABuild { resource });
    };
    let not_awaited = || Delivered::NotAwaited {
        resource: resource.clone(),
        state: new_state.clone(),
    };
    let Some(awaited) = await_token::read_at(ctx, &parameter).await? else {
        return Ok(not_awaited());
    };
    let Some(wait) = crate::waits::named(&awaited.wait)
        .and_then(|w| w.event)
        .filter(|e| e.watched == watched && !e.pending.contains(&new_state.as_str()))
    else {
        return Ok(not_awaited());
    };
    if !awaited.resources.contains(&resource) {
        return Ok(not_awaited());
    }
    // Several resources (a build's snapshots): the last one to settle ends the wait.
    if awaited.resources.len() > 1
        && !super::await_event::settled(ctx, &wait, &region, &awaited.resources, None).await?
    {
        return Ok(Delivered::OthersPending {
            resource,
            state: new_state,
        });
    }
    await_token::answer(ctx, &awaited).await?;
    await_token::remove_at(ctx, &parameter).await?;
    tracing::info!(%resource, state = %new_state, wait = %awaited.wait, execution = %awaited.execution, build = %awaited.build, "wait answered by the state-change event");
    Ok(Delivered::Answered {
        resource,
        state: new_state,
        wait: awaited.wait,
        execution: awaited.execution,
        build: awaited.build,
    })
}

/// The execution and build name the resource is tagged with, if both are there.
async fn build_of(
    ctx: &Ctx,
    region: &str,
    resource: &str,
) -> Result<Option<(String, String)>, StepError> {
    let out = ctx
        .ec2(region)
        .describe_tags()
        .filters(filter("resource-id", [resource]))
        .filters(filter("key", [BUILD_TAG, BUILD_NAME_TAG]))
        .send()
        .await
        .map_err(|e| classify("DescribeTags", resource, e))?;
    let value = |key: &str| {
        out.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(String::from)
    };
    Ok(value(BUILD_TAG).zip(value(BUILD_NAME_TAG)))
}
