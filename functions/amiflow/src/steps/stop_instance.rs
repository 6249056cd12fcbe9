//! StopInstance: stops the source instance before imaging (not for spot instances, and
//! not with `disable_stop_instance`, where the provisioners stop it themselves).

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "StopInstance",
    iam_actions: &["ec2:StopInstances"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: StopInstances, unless the instance is spot or the
/// provisioners stop it (`disable_stop_instance`) ([`stops`]).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if stops(&build.config) {
        vec!["ec2:StopInstances"]
    } else {
        Vec::new()
    }
}

/// Whether StopInstance stops the instance: not a spot one (Packer's rule), nor with
/// `disable_stop_instance`.
pub(crate) fn stops(cfg: &amiflow_template::BuilderConfig) -> bool {
    !cfg.is_spot() && cfg.run().is_some_and(|r| !r.disable_stop_instance)
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    if cfg.is_spot() {
        return Ok(state);
    }
    let id =
        state.data.instance_id.clone().ok_or_else(|| {
            StepError::BuildFailed("StopInstance: no instance in the state".into())
        })?;
    run_config(&state, SPEC.name)?;
    if stops(&cfg) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn spot_and_disable_stop_instance_stop_nothing() {
        assert_eq!(local_calls(&build(json!({}))), ["ec2:StopInstances"]);
        assert!(local_calls(&build(json!({"spot_price": "auto"}))).is_empty());
        assert!(local_calls(&build(json!({"disable_stop_instance": true}))).is_empty());
    }
}
