//! SwapVolumes (amazon-ebssurrogate with `use_create_image`, Packer's StepSwapVolumes, first
//! half): on the stopped instance, detaches the original root, the surrogate volume at
//! `ami_root_device.source_device_name`, whatever sits at `ami_root_device.device_name`
//! and every `omit_from_artifact` launch volume, so that AttachRootVolume can put the
//! surrogate in the root slot and CreateImage images it. A no-op without `use_create_image`.
//!
//! The swapped-out volumes are in the ledger (and carry the build's launch-time volume
//! tags): Cleanup removes them once the instance is gone, whether the build succeeds or not.
//! A retried step finds the surrogate again by the `amiflow:swap-source` tag it puts on the
//! volume before detaching anything.

use serde::{Deserialize, Serialize};

use crate::builders::launch_volumes::{same_device, surrogate};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "SwapVolumes",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ec2:DescribeVolumes",
        "ec2:CreateTags",
        "ec2:DetachVolume",
    ],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: with `use_create_image` ([`swaps`]) DescribeInstances,
/// CreateTags (marking the surrogate) and DetachVolume; without it nothing. DescribeVolumes
/// only finds the surrogate again for a step retried after it detached it.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if !swaps(build) {
        return Vec::new();
    }
    vec![
        "ec2:DescribeInstances",
        "ec2:CreateTags",
        "ec2:DetachVolume",
    ]
}

/// amazon-ebssurrogate with `use_create_image`: the surrogate is swapped into the root slot
/// (SwapVolumes, AttachRootVolume, WaitRootVolumeAttached) and CreateImage images the
/// instance, instead of SnapshotVolumes' snapshots being registered.
pub(crate) fn swaps(build: &amiflow_template::PreparedBuild) -> bool {
    matches!(&build.config, amiflow_template::BuilderConfig::EbsSurrogate(c) if c.use_create_image)
}

/// Marks the surrogate volume, so a retried step finds it after it was detached; the value
/// is its DeleteOnTermination at launch.
pub const SOURCE_TAG: &str = "amiflow:swap-source";

/// What SwapVolumes did, for AttachRootVolume and WaitRootVolumeAttached.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Swap {
    pub instance_id: String,
    /// The surrogate volume, to become the root.
    pub source_volume: String,
    /// `ami_root_device.device_name`.
    pub root_device: String,
    /// The surrogate's DeleteOnTermination at launch, kept in the root slot.
    pub delete_on_termination: bool,
    /// Every volume detached (the surrogate included).
    pub detached: Vec<String>,
}

const KEY: &str = "swap_volumes";

pub fn swap(state: &BuildState) -> Option<Swap> {
    state
        .data
        .extra
        .get(KEY)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// The devices Packer detaches: omitted launch devices, the AMI root's device name, the
/// surrogate's, and the instance's own root (Packer hard-codes `/dev/sda1`).
pub fn to_detach(
    device: &str,
    omitted: &[String],
    root_device: &str,
    source_device: &str,
    instance_root: Option<&str>,
) -> bool {
    omitted.iter().any(|o| same_device(o, device))
        || same_device(device, root_device)
        || same_device(device, source_device)
        || same_device(device, "/dev/sda1")
        || instance_root.is_some_and(|r| same_device(device, r))
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    if !swaps(&state.build) {
        return Ok(state);
    }
    let Some(c) = surrogate(&state).cloned() else {
        return Ok(state);
    };
    let region = state.build.config.build_region().to_string();
    let instance =
        state.data.instance_id.clone().ok_or_else(|| {
            StepError::BuildFailed("SwapVolumes: no instance in the state".into())
        })?;
    let root = c.ami_root_device.clone().unwrap_or_default();
    let ec2 = ctx.ec2(&region);
    let Some(i) = crate::resources::instance::describe(ctx, &region, &instance).await? else {
        return Err(StepError::BuildFailed(format!(
            "SwapVolumes: instance {instance} in {region} no longer exists"
        )));
    };
    let attached: Vec<(String, String, bool)> = i
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some((
                m.device_name()?.to_string(),
                m.ebs()?.volume_id()?.to_string(),
                m.ebs()?.delete_on_termination().unwrap_or(true),
            ))
        })
        .collect();

    let (source_volume, delete_on_termination) = match attached
        .iter()
        .find(|(d, _, _)| same_device(d, &root.source_device_name))
    {
        Some((_, v, dot)) => {
            ec2.create_tags()
                .resources(v)
                .set_tags(Some(tags_with_build(
                    &state,
                    &BTreeMap::from([(SOURCE_TAG.to_string(), dot.to_string())]),
                )))
                .send()
                .await
                .map_err(|e| classify("CreateTags", v, e))?;
            (v.clone(), *dot)
        }
        None => {
            // Already detached by an earlier attempt of this step: found by its mark.
            let mut f = own_filters(&state);
            f.push(filter("tag-key", [SOURCE_TAG]));
            let found = ec2
                .describe_volumes()
                .set_filters(Some(f))
                .send()
                .await
                .map_err(|e| classify("DescribeVolumes", SOURCE_TAG, e))?;
            let v = found.volumes().first().ok_or_else(|| {
                StepError::BuildFailed(format!(
                    "ami_root_device.source_device_name: no EBS volume is attached to {instance} at {} (attached: {}); it must name a launch_block_device_mappings device",
                    root.source_device_name,
                    attached.iter().map(|(d, _, _)| d.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?;
            let dot = v
                .tags()
                .iter()
                .find(|t| t.key() == Some(SOURCE_TAG))
                .and_then(|t| t.value())
                .is_none_or(|s| s != "false");
            (v.volume_id().unwrap_or_default().to_string(), dot)
        }
    };

    let omitted: Vec<String> = c
        .launch_block_device_mappings
        .iter()
        .filter(|d| d.omit_from_artifact)
        .map(|d| d.device_name.clone())
        .collect();
    let mut detached = Vec::new();
    for (device, volume, _) in attached.iter().filter(|(d, _, _)| {
        to_detach(
            d,
            &omitted,
            &root.device_name,
            &root.source_device_name,
            i.root_device_name(),
        )
    }) {
        // moto answers 500 to a DetachVolume without the instance.
        match ec2
            .detach_volume()
            .volume_id(volume)
            .instance_id(&instance)
            .device(device)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if matches!(
                    error_code(&e),
                    Some("IncorrectState" | "InvalidAttachment.NotFound")
                ) => {}
            Err(e) => {
                return Err(classify(
                    "DetachVolume",
                    &format!("{volume} ({device}) from {instance}"),
                    e,
                ))
            }
        }
        if *volume != source_volume {
            state
                .ledger
                .record(ResourceKind::Volume, &region, volume, false);
        }
        detached.push(volume.clone());
    }
    if !detached.contains(&source_volume) {
        detached.push(source_volume.clone());
    }
    let plan = Swap {
        instance_id: instance,
        source_volume,
        root_device: root.device_name.clone(),
        delete_on_termination,
        detached,
    };
    state
        .data
        .extra
        .insert(KEY.into(), serde_json::to_value(&plan)?);
    waits::VOLUMES_DETACHED.begin(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detaches_the_roots_the_surrogate_and_omitted_devices_only() {
        let omitted = vec!["/dev/xvdg".to_string()];
        let pick = |d: &str| to_detach(d, &omitted, "/dev/xvda", "/dev/xvdf", Some("/dev/xvda"));
        assert!(pick("/dev/xvda") && pick("xvdf") && pick("/dev/xvdg") && pick("/dev/sda1"));
        assert!(
            !pick("/dev/xvdh"),
            "other launch volumes stay attached and go into the image"
        );
        assert!(
            to_detach("/dev/sdb", &[], "/dev/xvda", "/dev/xvdf", Some("/dev/sdb")),
            "the instance's own root, whatever its name"
        );
    }

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn swaps_only_with_create_image() {
        let surrogate = |create_image: bool| {
            build(
                "amazon-ebssurrogate",
                serde_json::json!({"use_create_image": create_image}),
            )
        };
        assert_eq!(
            local_calls(&surrogate(true)),
            vec![
                "ec2:DescribeInstances",
                "ec2:CreateTags",
                "ec2:DetachVolume"
            ]
        );
        assert!(local_calls(&surrogate(false)).is_empty());
        assert!(!swaps(&build("amazon-ebsvolume", serde_json::json!({}))));
    }
}
