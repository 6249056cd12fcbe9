//! WaitRootVolumeAttached: `NotReady` until the surrogate volume is `attached` in the
//! instance's root slot (Packer's VolumeAttached waiter). A no-op without `use_create_image`.

use aws_sdk_ec2::types::VolumeAttachmentState;

use super::swap_volumes::{swap, swaps};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitRootVolumeAttached",
    iam_actions: &["ec2:DescribeVolumes"],
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::ROOT_VOLUME_ATTACHED),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: DescribeVolumes with `use_create_image` ([`swaps`]);
/// without it nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if swaps(build) {
        vec!["ec2:DescribeVolumes"]
    } else {
        Vec::new()
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let Some(plan) = swap(&state) else {
        return Ok(state);
    };
    let region = state.build.config.build_region().to_string();
    let out = ctx
        .ec2(&region)
        .describe_volumes()
        .volume_ids(&plan.source_volume)
        .send()
        .await
        .map_err(|e| classify("DescribeVolumes", &plan.source_volume, e))?;
    let attachment = out.volumes().first().and_then(|v| {
        v.attachments()
            .iter()
            .find(|a| a.instance_id() == Some(plan.instance_id.as_str()))
            .cloned()
    });
    match attachment.as_ref().and_then(|a| a.state()) {
        Some(VolumeAttachmentState::Attached) => {
            waits::ROOT_VOLUME_ATTACHED.end(&mut state);
            Ok(state)
        }
        // Just after AttachVolume, DescribeVolumes may not show the attachment yet.
        None | Some(VolumeAttachmentState::Attaching) => {
            Err(waits::ROOT_VOLUME_ATTACHED.not_ready(&state, format!("volume {} is attaching to {} as {}", plan.source_volume, plan.instance_id, plan.root_device)))
        }
        other => Err(StepError::BuildFailed(format!(
            "volume {} is not attaching to {} as {} ({other:?}); was the instance started or changed meanwhile?",
            plan.source_volume, plan.instance_id, plan.root_device
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn waits_only_with_create_image() {
        let surrogate = |create_image: bool| {
            local_calls(&build(
                "amazon-ebssurrogate",
                serde_json::json!({"use_create_image": create_image}),
            ))
        };
        assert_eq!(surrogate(true), vec!["ec2:DescribeVolumes"]);
        assert!(surrogate(false).is_empty());
    }
}
