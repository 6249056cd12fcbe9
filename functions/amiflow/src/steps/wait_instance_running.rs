//! WaitInstanceRunning: `NotReady` while pending; the instance's address once running;
//! `BuildFailed` with AWS's StateReason when it went away instead.

use crate::prelude::*;
use crate::resources::instance::{describe, reason, state_name};

pub const SPEC: StepSpec = StepSpec {
    name: "WaitInstanceRunning",
    iam_actions: &["ec2:DescribeInstances"],
    reach: &[],
    calls: None,
    wait: Some(waits::INSTANCE_RUNNING),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let id = state.data.instance_id.clone().ok_or_else(|| {
        StepError::BuildFailed("WaitInstanceRunning: no instance in the state".into())
    })?;
    let Some(i) = describe(ctx, &region, &id).await? else {
        return Err(
            waits::INSTANCE_RUNNING.not_ready(&state, format!("instance {id} is not visible yet"))
        );
    };
    match state_name(&i) {
        "running" => {
            state.data.instance_host = i
                .public_ip_address()
                .or(i.private_ip_address())
                .or(i.public_dns_name().filter(|s| !s.is_empty()))
                .map(String::from);
            waits::INSTANCE_RUNNING.end(&mut state);
            // Connect's ssh_timeout counts from here (its retries re-run with this input).
            waits::CONNECT.begin(&mut state);
            Ok(state)
        }
        "pending" => {
            Err(waits::INSTANCE_RUNNING.not_ready(&state, format!("instance {id} is pending")))
        }
        other => Err(StepError::BuildFailed(format!(
            "instance {id} is {other} instead of running: {}",
            reason(&i)
        ))),
    }
}
