//! AwaitEvent: before a waiting step whose wait AWS announces (`waits.rs`, [`Wait::event`]:
//! EC2's state changes, SSM's command ends),
//! the build waits for the event instead of polling.
//!
//! Deployed, the state is a callback Task (`arn:aws:states:::lambda:invoke.waitForTaskToken`,
//! flows.rs) with `ResultPath: null`: this function stores the task token with the awaited
//! resource (`resources/await_token.rs`), then looks at the resource once. Already settled
//! (a fast instance, or the event came before the token was stored): it answers the token
//! itself. Otherwise it returns, and the state waits until DeliverEvent
//! (`steps/deliver_event.rs`) answers on EC2's state-change event, or until the wait's
//! [`EventWait::timeout_seconds`], after which (like after any failure here) the state's
//! Catch goes on to the waiting step, which polls. Either way the waiting step then decides
//! from what it sees, so an early or lost event changes the cost, never the build.
//!
//! Locally there are no events: the engine's callback task is this handler, which returns at
//! once and leaves the waiting to the waiting step's polls.
//!
//! Input: `{"state": <build state>, "wait": <wait name>, "token": $$.Task.Token}`.
//! Output (discarded by the state): what it did, for the function's log and tests.

use serde::{Deserialize, Serialize};

use crate::prelude::*;
use crate::resources::await_token::{self, Awaited};
use crate::resources::{image, instance};
use crate::waits::{EventWait, Watched};

pub const SPEC: StepSpec = StepSpec {
    name: "AwaitEvent",
    iam_actions: &[
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
        "ssm:DeleteParameter",
        await_token::ANSWER,
        "ec2:DescribeInstances",
        "ec2:DescribeImages",
        "ec2:DescribeSnapshots",
        "ssm:GetCommandInvocation",
        // Which provisioner command Provision just sent (`CommandSent` carries no state).
        "ssm:ListCommands",
    ],
    reach: &[
        ("ssm:PutParameter", Reach::AmiflowParameters),
        ("ssm:AddTagsToResource", Reach::AmiflowParameters),
        ("ssm:DeleteParameter", Reach::AmiflowParameters),
        (await_token::ANSWER, Reach::StackStateMachine),
    ],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

#[derive(Debug, Clone, Deserialize)]
pub struct AwaitInput {
    pub state: BuildState,
    pub wait: String,
    pub token: String,
}

/// What AwaitEvent did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Awaiting {
    /// Not deployed: the waiting step polls.
    Local,
    /// The build runs outside the stack's region, whose EventBridge rules see none of its
    /// events: answered at once, the waiting step polls.
    OtherRegion { region: String },
    /// The resources were settled already (or the build has none): answered at once.
    Settled { resources: Vec<String> },
    /// The token is stored; the event (or the timeout) ends the wait.
    Event { resources: Vec<String> },
}

pub async fn run(ctx: &Ctx, input: AwaitInput) -> Result<Awaiting, StepError> {
    if !ctx.in_lambda {
        return Ok(Awaiting::Local);
    }
    let event = crate::waits::named(&input.wait)
        .and_then(|w| w.event)
        .ok_or_else(|| {
            StepError::BuildFailed(format!(
                "AwaitEvent: {:?} is not a wait AWS announces (waits.rs)",
                input.wait
            ))
        })?;
    let state = &input.state;
    let region = state.build.config.build_region();
    if region != ctx.own_region() {
        answer(ctx, &input, Vec::new()).await?;
        return Ok(Awaiting::OtherRegion {
            region: region.to_string(),
        });
    }
    let (resources, host) = awaited(ctx, &input.wait, state).await?;
    if resources.is_empty() {
        answer(ctx, &input, Vec::new()).await?;
        return Ok(Awaiting::Settled { resources });
    }
    let awaited = Awaited {
        token: input.token.clone(),
        resources: resources.clone(),
        wait: input.wait.clone(),
        execution: state.execution.clone(),
        build: state.build.name.clone(),
    };
    // Stored before the look: an event that comes between the two finds the token.
    let stored = await_token::store(ctx, &state.execution, &state.build.name, &awaited).await?;
    if !event.watched.carries_build_tags() {
        for resource in &resources {
            await_token::index(ctx, &stored, resource).await?;
        }
    }
    if settled(ctx, &event, region, &resources, host.as_deref()).await? {
        await_token::answer(ctx, &awaited).await?;
        await_token::remove(ctx, &state.execution, &state.build.name).await?;
        return Ok(Awaiting::Settled { resources });
    }
    tracing::info!(wait = %input.wait, resources = ?resources, "awaiting the state-change event");
    Ok(Awaiting::Event { resources })
}

/// What the wait is on, and for an SSM command the instance it runs on: the chroot host
/// script's command (in the state), or the provisioner command Provision just sent (its
/// `CommandSent` carries no state: the newest of the build's commands on its instance).
async fn awaited(
    ctx: &Ctx,
    wait: &str,
    state: &BuildState,
) -> Result<(Vec<String>, Option<String>), StepError> {
    if wait == crate::waits::PROVISION.name {
        let Some(instance) = state.data.instance_id.clone() else {
            return Ok((Vec::new(), None));
        };
        let region = state.build.config.build_region();
        let newest = crate::provision::ssm::newest_command(ctx, region, &instance, state).await?;
        return Ok((newest.into_iter().collect(), Some(instance)));
    }
    let event = crate::waits::named(wait).and_then(|w| w.event);
    let resources = event
        .map(|e| e.watched.resources(state))
        .unwrap_or_default();
    let host = crate::builders::chroot::ssm_command(state).map(|(_, host)| host);
    Ok((resources, host))
}

/// Answers the token without having stored it (nothing to wait for).
async fn answer(ctx: &Ctx, input: &AwaitInput, resources: Vec<String>) -> Result<bool, StepError> {
    await_token::answer(
        ctx,
        &Awaited {
            token: input.token.clone(),
            resources,
            wait: input.wait.clone(),
            execution: input.state.execution.clone(),
            build: input.state.build.name.clone(),
        },
    )
    .await
}

/// Whether every resource is past the wait's pending states (ready or failed; the waiting
/// step tells which). Not visible yet counts as pending: its event is still to come.
/// DeliverEvent asks too, when a wait is on several resources. `host`: the instance an SSM
/// command runs on (a command's status is asked per instance).
pub async fn settled(
    ctx: &Ctx,
    event: &EventWait,
    region: &str,
    ids: &[String],
    host: Option<&str>,
) -> Result<bool, StepError> {
    let mut states: Vec<Option<String>> = Vec::new();
    match event.watched {
        Watched::Command => {
            let Some(host) = host else {
                return Ok(false);
            };
            for id in ids {
                let found = ctx
                    .ssm(region)
                    .get_command_invocation()
                    .command_id(id)
                    .instance_id(host)
                    .send()
                    .await;
                states.push(match found {
                    Ok(out) => out.status().map(|s| s.as_str().to_string()),
                    Err(e) if crate::resources::ssm_command::not_visible_yet(&e) => None,
                    Err(e) => return Err(classify("GetCommandInvocation", id, e)),
                });
            }
        }
        Watched::Instance => {
            for id in ids {
                let found = instance::describe(ctx, region, id).await?;
                states.push(found.map(|i| instance::state_name(&i).to_string()));
            }
        }
        Watched::BuildImage => {
            for id in ids {
                let found = image::describe(ctx, region, id).await?;
                states.push(found.and_then(|i| i.state().map(|s| s.as_str().to_string())));
            }
        }
        Watched::BuildSnapshots => {
            let found = ctx
                .ec2(region)
                .describe_snapshots()
                .set_snapshot_ids(Some(ids.to_vec()))
                .send()
                .await;
            let Some(found) = or_absent(
                found,
                &["InvalidSnapshot.NotFound"],
                "DescribeSnapshots",
                &ids.join(","),
            )?
            else {
                return Ok(false);
            };
            states.extend(ids.iter().map(|id| {
                found
                    .snapshots()
                    .iter()
                    .find(|s| s.snapshot_id() == Some(id.as_str()))
                    .and_then(|s| s.state().map(|st| st.as_str().to_string()))
            }));
        }
    }
    Ok(states
        .iter()
        .all(|s| s.as_deref().is_some_and(|s| !event.pending.contains(&s))))
}
