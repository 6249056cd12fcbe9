//! WaitSnapshotsCompleted: `NotReady` until every snapshot the build took (SnapshotVolumes'
//! per device, chroot's CreateSnapshot's in `data.snapshots`) is `completed` (Packer's
//! SnapshotCompleted waiter, 30 minutes unless `aws_polling`); `BuildFailed` when one went
//! to `error`. amazon-ebsvolume's snapshots are its artifact: they go to `data.snapshots` here.

use amiflow_template::BuilderType;
use aws_sdk_ec2::types::SnapshotState;

use crate::builders::launch_volumes::snapshot_ids;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitSnapshotsCompleted",
    iam_actions: &["ec2:DescribeSnapshots"],
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::SNAPSHOTS_COMPLETED),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: DescribeSnapshots when there is a snapshot to wait for:
/// always for amazon-chroot (CreateSnapshot's), for amazon-ebssurrogate and amazon-ebsvolume
/// when SnapshotVolumes took some ([`super::snapshot_volumes::takes_snapshots`]).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let waits = match build.builder_type {
        BuilderType::Chroot => true,
        BuilderType::EbsSurrogate | BuilderType::EbsVolume => {
            super::snapshot_volumes::takes_snapshots(build)
        }
        BuilderType::Ebs | BuilderType::Instance => false,
    };
    if waits {
        vec!["ec2:DescribeSnapshots"]
    } else {
        Vec::new()
    }
}

/// The snapshots this step waits for: SnapshotVolumes' per device, then CreateSnapshot's.
pub fn awaited(state: &BuildState) -> Vec<String> {
    let region = state.build.config.build_region();
    let mut ids: Vec<String> = snapshot_ids(state).into_values().collect();
    for id in state.data.snapshots.get(region).into_iter().flatten() {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let ids = awaited(&state);
    if ids.is_empty() {
        return Ok(state);
    }
    let out = match ctx
        .ec2(&region)
        .describe_snapshots()
        .set_snapshot_ids(Some(ids.clone()))
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if error_code(&e) == Some("InvalidSnapshot.NotFound") => {
            return Err(waits::SNAPSHOTS_COMPLETED.not_ready(
                &state,
                format!("snapshots {} are not visible yet", ids.join(", ")),
            ));
        }
        Err(e) => return Err(classify("DescribeSnapshots", &ids.join(","), e)),
    };
    let mut pending = Vec::new();
    for s in out.snapshots() {
        let id = s.snapshot_id().unwrap_or_default();
        match s.state() {
            Some(SnapshotState::Completed) => {}
            Some(SnapshotState::Error) => {
                return Err(StepError::BuildFailed(format!(
                    "snapshot {id} of volume {} in {region} failed: {}",
                    s.volume_id().unwrap_or("?"),
                    s.state_message().unwrap_or("AWS gave no reason")
                )))
            }
            _ => pending.push(format!("{id} ({})", s.progress().unwrap_or("0%"))),
        }
    }
    if !pending.is_empty() || out.snapshots().len() < ids.len() {
        return Err(waits::SNAPSHOTS_COMPLETED.not_ready(
            &state,
            format!("snapshots pending in {region}: {}", pending.join(", ")),
        ));
    }
    waits::SNAPSHOTS_COMPLETED.end(&mut state);
    if state.build.builder_type == BuilderType::EbsVolume {
        let mut sorted = ids;
        sorted.sort();
        state.data.snapshots.insert(region, sorted);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn waits_only_when_a_snapshot_was_taken() {
        let waits = |b: &str, c: serde_json::Value| !local_calls(&build(b, c)).is_empty();
        assert!(waits("amazon-chroot", serde_json::json!({})));
        let volume = |snapshot: bool| serde_json::json!({"ebs_volumes": [{"device_name": "/dev/xvdf", "snapshot_volume": snapshot}]});
        assert!(waits("amazon-ebsvolume", volume(true)));
        assert!(!waits("amazon-ebsvolume", volume(false)));
        let surrogate = |create_image: bool| {
            serde_json::json!({"use_create_image": create_image,
                "launch_block_device_mappings": [{"device_name": "/dev/xvdf"}]})
        };
        assert!(waits("amazon-ebssurrogate", surrogate(false)));
        assert!(!waits("amazon-ebssurrogate", surrogate(true)));
    }
}
