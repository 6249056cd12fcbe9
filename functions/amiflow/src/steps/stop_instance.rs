//! StopInstance: stops the source instance before imaging (not for spot instances, and
//! not with `disable_stop_instance`, where the provisioners stop it themselves).

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "StopInstance",
    iam_actions: &["ec2:StopInstances"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    if cfg.is_spot() {
        return Ok(state);
    }
    let id =
        state.data.instance_id.clone().ok_or_else(|| {
            StepError::BuildFailed("StopInstance: no instance in the state".into())
        })?;
    if !run_config(&state, SPEC.name)?.disable_stop_instance {
        ctx.ec2(cfg.build_region())
            .stop_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| match error_code(&e) {
                Some("InvalidInstanceID.NotFound") => {
                    StepError::Transient(format!("StopInstances {id}: not visible yet"))
                }
                _ => classify("StopInstances", &id, e),
            })?;
    }
    waits::INSTANCE_STOPPED.begin(&mut state);
    Ok(state)
}
