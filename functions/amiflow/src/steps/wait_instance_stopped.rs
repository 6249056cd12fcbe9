//! WaitInstanceStopped: `NotReady` until stopped; terminated is a failure.

use crate::prelude::*;
use crate::resources::instance::{describe, reason, state_name};

pub const SPEC: StepSpec = StepSpec {
    name: "WaitInstanceStopped",
    iam_actions: &["ec2:DescribeInstances"],
    reach: &[],
    calls: None,
    wait: Some(waits::INSTANCE_STOPPED),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    if state.build.config.is_spot() {
        return Ok(state);
    }
    let id = state.data.instance_id.clone().ok_or_else(|| {
        StepError::BuildFailed("WaitInstanceStopped: no instance in the state".into())
    })?;
    let Some(i) = describe(ctx, &region, &id).await? else {
        return Err(StepError::BuildFailed(format!(
            "instance {id} disappeared while stopping"
        )));
    };
    match state_name(&i) {
        "stopped" => {
            waits::INSTANCE_STOPPED.end(&mut state);
            Ok(state)
        }
        "stopping" | "running" | "pending" => Err(waits::INSTANCE_STOPPED
            .not_ready(&state, format!("instance {id} is {}", state_name(&i)))),
        other => Err(StepError::BuildFailed(format!(
            "instance {id} is {other} instead of stopped: {}",
            reason(&i)
        ))),
    }
}
