//! WaitInstanceRunning: `NotReady` while pending; the instance's address once running;
//! `BuildFailed` with AWS's StateReason when it went away instead.

use super::instance_state::{describe, reason, state_name};
use super::prelude::*;
use super::run_source_instance::WAIT;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitInstanceRunning",
    iam_actions: &["ec2:DescribeInstances"],
    wait: Some(INSTANCE_WAIT),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// Packer's InstanceRunning waiter: 10 minutes.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(600);

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let id = state.data.instance_id.clone().ok_or_else(|| {
        StepError::BuildFailed("WaitInstanceRunning: no instance in the state".into())
    })?;
    let Some(i) = describe(ctx, &region, &id).await? else {
        return Err(not_ready(
            &state,
            WAIT,
            DEFAULT_BUDGET,
            format!("instance {id} is not visible yet"),
        ));
    };
    match state_name(&i) {
        "running" => {
            state.data.instance_host = i
                .public_ip_address()
                .or(i.private_ip_address())
                .or(i.public_dns_name().filter(|s| !s.is_empty()))
                .map(String::from);
            end_wait(&mut state, WAIT);
            // Connect's ssh_timeout counts from here (its retries re-run with this input).
            begin_wait(&mut state, super::connect::WAIT);
            Ok(state)
        }
        "pending" => Err(not_ready(
            &state,
            WAIT,
            DEFAULT_BUDGET,
            format!("instance {id} is pending"),
        )),
        other => Err(StepError::BuildFailed(format!(
            "instance {id} is {other} instead of running: {}",
            reason(&i)
        ))),
    }
}
