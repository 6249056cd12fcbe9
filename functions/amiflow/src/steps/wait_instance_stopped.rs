//! WaitInstanceStopped: `NotReady` until stopped; terminated is a failure.

use crate::prelude::*;
use crate::resources::instance::{describe, reason, state_name};

pub const SPEC: StepSpec = StepSpec {
    name: "WaitInstanceStopped",
    iam_actions: &["ec2:DescribeInstances"],
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::INSTANCE_STOPPED),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: DescribeInstances, except for a spot instance (not
/// stopped). With `disable_stop_instance` it waits for the provisioners' stop.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if build.config.is_spot() {
        Vec::new()
    } else {
        vec!["ec2:DescribeInstances"]
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn a_spot_instance_is_not_waited_for() {
        assert_eq!(local_calls(&build(json!({}))), ["ec2:DescribeInstances"]);
        assert!(local_calls(&build(json!({"spot_price": "0.05"}))).is_empty());
    }
}
