//! SnapshotVolumes: snapshots the stopped instance's volumes, all at once (Packer's
//! StepSnapshotVolumes / stepSnapshotEBSVolumes), each tagged at creation; the wait is
//! WaitSnapshotsCompleted.
//!
//! - amazon-ebssurrogate: every `launch_block_device_mappings` device not
//!   `omit_from_artifact`, described by `snapshot_description`, tagged `snapshot_tags`.
//! - amazon-ebsvolume: every `ebs_volumes` entry with `snapshot_volume`, with its own
//!   `snapshot_description` and `snapshot_tags`.
//!
//! With `use_create_image` it does nothing: SwapVolumes and CreateImage take over.
//!
//! The snapshots are artifacts in the ledger: kept when the build succeeds (they back the
//! AMI, or are the ebsvolume artifact), removed when a later step fails.

use amiflow_template::{BuilderConfig, PreparedBuild};
use aws_sdk_ec2::types::SnapshotState;
use futures::future::try_join_all;

use super::swap_volumes::swaps;
use crate::builders::launch_volumes::{instance_volumes, snapshot_ids, volume_at};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "SnapshotVolumes",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ec2:DescribeSnapshots",
        "ec2:CreateSnapshot",
        "ec2:CreateTags",
        // Tags may use sensitive variables (resources/sensitive_var.rs).
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: when it snapshots devices ([`takes_snapshots`]: not with
/// `use_create_image`, and only devices not omitted / ebs_volumes with `snapshot_volume`),
/// DescribeInstances, then per device DescribeSnapshots (a retry's own) and CreateSnapshot
/// tagged at creation (CreateTags); else nothing.
fn local_calls(build: &PreparedBuild) -> Vec<&'static str> {
    if !takes_snapshots(build) {
        return Vec::new();
    }
    vec![
        "ec2:DescribeInstances",
        "ec2:DescribeSnapshots",
        "ec2:CreateSnapshot",
        "ec2:CreateTags",
    ]
}

/// One snapshot to take: device, description, tags (unrendered).
struct Wanted {
    device: String,
    key: String,
    description: Option<String>,
    tags: BTreeMap<String, String>,
}

fn wanted(build: &PreparedBuild) -> Result<Vec<Wanted>, StepError> {
    match &build.config {
        BuilderConfig::EbsSurrogate(c) => Ok(c
            .launch_block_device_mappings
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                !d.omit_from_artifact
                    && !d.no_device
                    && d.virtual_name
                        .as_deref()
                        .is_none_or(|v| !v.starts_with("ephemeral"))
            })
            .map(|(i, d)| Wanted {
                device: d.device_name.clone(),
                key: format!("launch_block_device_mappings[{i}].device_name"),
                description: c.snapshot_description.clone(),
                tags: c.ami.snapshot_tags.clone(),
            })
            .collect()),
        BuilderConfig::EbsVolume(c) => Ok(c
            .ebs_volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| v.snapshot_volume)
            .map(|(i, v)| Wanted {
                device: v.device.device_name.clone(),
                key: format!("ebs_volumes[{i}].device_name"),
                description: v.snapshot_description.clone(),
                tags: v.snapshot_tags.clone(),
            })
            .collect()),
        _ => Err(StepError::BuildFailed(format!(
            "SnapshotVolumes serves amazon-ebssurrogate and amazon-ebsvolume, not {}",
            build.builder_type.as_str()
        ))),
    }
}

/// Whether this step snapshots anything: not with `use_create_image` (SwapVolumes and
/// CreateImage take over), nor when no device is wanted.
pub(crate) fn takes_snapshots(build: &PreparedBuild) -> bool {
    !swaps(build) && wanted(build).is_ok_and(|w| !w.is_empty())
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    if swaps(&state.build) {
        // SwapVolumes puts the surrogate in the root slot instead; CreateImage snapshots it.
        return Ok(state);
    }
    let wanted = wanted(&state.build)?;
    if wanted.is_empty() {
        return Ok(state);
    }
    let instance = state.data.instance_id.clone().ok_or_else(|| {
        StepError::BuildFailed("SnapshotVolumes: no instance in the state".into())
    })?;
    let attached = instance_volumes(ctx, &region, &instance).await?;
    let mut done = snapshot_ids(&state);
    let now = chrono::Utc::now().to_rfc3339();
    let state_ref = &state;
    let attached = &attached;
    let jobs = wanted
        .iter()
        .filter(|w| !done.contains_key(&w.device))
        .map(|w| {
            let ec2 = ctx.ec2(&region);
            let region = region.clone();
            let now = now.clone();
            async move {
                let volume = volume_at(attached, &w.device, &w.key)?;
                // EC2 takes no ClientToken for snapshots: a retried step finds its snapshot of
                // this volume by the build's tags.
                let mut lookup = own_filters(state_ref);
                lookup.push(filter("volume-id", [volume.clone()]));
                let found = ec2
                    .describe_snapshots()
                    .owner_ids("self")
                    .set_filters(Some(lookup))
                    .send()
                    .await
                    .map_err(|e| classify("DescribeSnapshots", &volume, e))?;
                let live = found
                    .snapshots()
                    .iter()
                    .find(|s| s.state() != Some(&SnapshotState::Error))
                    .and_then(|s| s.snapshot_id())
                    .map(String::from);
                let id = match live {
                    Some(id) => id,
                    None => {
                        let description = w
                            .description
                            .clone()
                            .filter(|d| !d.is_empty())
                            .map(|d| {
                                render(
                                    &format!("{}.snapshot_description", w.key),
                                    &d,
                                    &state_ref.data,
                                    &region,
                                )
                            })
                            .transpose()?
                            .unwrap_or_else(|| format!("amiflow: {now}"));
                        let tags = render_tags(
                            &ctx.secrets,
                            &format!("{}.snapshot_tags", w.key),
                            &w.tags,
                            &state_ref.data,
                            &region,
                        )?;
                        let out = ec2
                            .create_snapshot()
                            .volume_id(&volume)
                            .description(description)
                            .tag_specifications(tag_spec(ResourceType::Snapshot, state_ref, &tags))
                            .send()
                            .await
                            .map_err(|e| {
                                classify("CreateSnapshot", &format!("{volume} ({})", w.device), e)
                            })?;
                        out.snapshot_id().unwrap_or_default().to_string()
                    }
                };
                Ok::<_, StepError>((w.device.clone(), id))
            }
        });
    let taken = try_join_all(jobs).await?;
    for (device, id) in taken {
        state
            .ledger
            .record(ResourceKind::Snapshot, &region, &id, true);
        done.insert(device, id);
    }
    state
        .data
        .extra
        .insert("snapshot_ids".into(), serde_json::to_value(&done)?);
    waits::SNAPSHOTS_COMPLETED.begin(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn snapshots_only_wanted_devices_and_not_with_create_image() {
        let takes = |b: &str, c: serde_json::Value| !local_calls(&build(b, c)).is_empty();
        let surrogate = |create_image: bool, omit: bool| {
            serde_json::json!({"use_create_image": create_image,
                "launch_block_device_mappings": [{"device_name": "/dev/xvdf", "omit_from_artifact": omit}]})
        };
        assert!(takes("amazon-ebssurrogate", surrogate(false, false)));
        assert!(!takes("amazon-ebssurrogate", surrogate(true, false)));
        assert!(!takes("amazon-ebssurrogate", surrogate(false, true)));
        let volume = |snapshot: bool| serde_json::json!({"ebs_volumes": [{"device_name": "/dev/xvdf", "snapshot_volume": snapshot}]});
        assert_eq!(
            local_calls(&build("amazon-ebsvolume", volume(true))),
            vec![
                "ec2:DescribeInstances",
                "ec2:DescribeSnapshots",
                "ec2:CreateSnapshot",
                "ec2:CreateTags"
            ]
        );
        assert!(!takes("amazon-ebsvolume", volume(false)));
    }
}
