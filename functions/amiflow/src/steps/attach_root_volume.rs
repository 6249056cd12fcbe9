//! AttachRootVolume (amazon-ebssurrogate with `use_create_image`, Packer's StepSwapVolumes,
//! second half): `NotReady` until every volume SwapVolumes detached is `available`, then
//! attaches the surrogate volume at `ami_root_device.device_name` and gives the root slot
//! the surrogate's DeleteOnTermination; WaitRootVolumeAttached follows. A no-op without
//! `use_create_image`. A retried step finds the attachment it made.

use aws_sdk_ec2::types::{
    EbsInstanceBlockDeviceSpecification, InstanceBlockDeviceMappingSpecification, VolumeState,
};

use super::swap_volumes::{swap, swaps};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "AttachRootVolume",
    iam_actions: &[
        "ec2:DescribeVolumes",
        "ec2:DescribeInstances",
        "ec2:AttachVolume",
        "ec2:ModifyInstanceAttribute",
    ],
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::VOLUMES_DETACHED),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: with `use_create_image` ([`swaps`]) every one of its
/// actions (the detached volumes, the free root slot, the attach, DeleteOnTermination);
/// without it nothing (SwapVolumes planned no swap).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if swaps(build) {
        SPEC.iam_actions.to_vec()
    } else {
        Vec::new()
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let Some(plan) = swap(&state) else {
        return Ok(state);
    };
    let region = state.build.config.build_region().to_string();
    let ec2 = ctx.ec2(&region);
    let out = ec2
        .describe_volumes()
        .set_volume_ids(Some(plan.detached.clone()))
        .send()
        .await
        .map_err(|e| classify("DescribeVolumes", &plan.detached.join(","), e))?;
    let source = out
        .volumes()
        .iter()
        .find(|v| v.volume_id() == Some(plan.source_volume.as_str()))
        .ok_or_else(|| {
            StepError::BuildFailed(format!(
                "AttachRootVolume: the surrogate volume {} is gone",
                plan.source_volume
            ))
        })?;
    let ours = source.attachments().iter().any(|a| {
        a.instance_id() == Some(plan.instance_id.as_str())
            && a.device()
                .is_some_and(|d| crate::builders::launch_volumes::same_device(d, &plan.root_device))
    });
    if !ours {
        let busy: Vec<String> = out
            .volumes()
            .iter()
            .filter(|v| v.state() != Some(&VolumeState::Available))
            .filter_map(|v| v.volume_id().map(String::from))
            .collect();
        if !busy.is_empty() {
            return Err(waits::VOLUMES_DETACHED.not_ready(
                &state,
                format!(
                    "volumes {} are detaching from {}",
                    busy.join(", "),
                    plan.instance_id
                ),
            ));
        }
        // A retried SwapVolumes knows only what was still attached: look at the slot itself.
        let instance = crate::resources::instance::describe(ctx, &region, &plan.instance_id)
            .await?
            .ok_or_else(|| {
                StepError::BuildFailed(format!(
                    "AttachRootVolume: instance {} in {region} no longer exists",
                    plan.instance_id
                ))
            })?;
        if let Some(held) = instance.block_device_mappings().iter().find(|m| {
            m.device_name()
                .is_some_and(|d| crate::builders::launch_volumes::same_device(d, &plan.root_device))
        }) {
            let by = held.ebs().and_then(|e| e.volume_id()).unwrap_or("?");
            return Err(waits::VOLUMES_DETACHED.not_ready(
                &state,
                format!(
                    "{} on {} is still held by volume {by}",
                    plan.root_device, plan.instance_id
                ),
            ));
        }
        ec2.attach_volume()
            .volume_id(&plan.source_volume)
            .instance_id(&plan.instance_id)
            .device(&plan.root_device)
            .send()
            .await
            .map_err(|e| {
                classify(
                    "AttachVolume",
                    &format!(
                        "{} as {} on {}",
                        plan.source_volume, plan.root_device, plan.instance_id
                    ),
                    e,
                )
            })?;
    }
    waits::VOLUMES_DETACHED.end(&mut state);
    ec2.modify_instance_attribute()
        .instance_id(&plan.instance_id)
        .block_device_mappings(
            InstanceBlockDeviceMappingSpecification::builder()
                .device_name(&plan.root_device)
                .ebs(
                    EbsInstanceBlockDeviceSpecification::builder()
                        .volume_id(&plan.source_volume)
                        .delete_on_termination(plan.delete_on_termination)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            classify(
                "ModifyInstanceAttribute (BlockDeviceMappings)",
                &plan.instance_id,
                e,
            )
        })?;
    waits::ROOT_VOLUME_ATTACHED.begin(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn attaches_only_with_create_image() {
        let surrogate = |create_image: bool| {
            local_calls(&build(
                "amazon-ebssurrogate",
                serde_json::json!({"use_create_image": create_image}),
            ))
        };
        assert_eq!(surrogate(true), SPEC.iam_actions);
        assert!(surrogate(false).is_empty());
    }
}
