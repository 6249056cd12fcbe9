//! WaitSnapshotsCompleted: `NotReady` until every snapshot the build took (SnapshotVolumes'
//! per device, chroot's CreateSnapshot's in `data.snapshots`) is `completed` (Packer's
//! SnapshotCompleted waiter, 30 minutes unless `aws_polling`); `BuildFailed` when one went
//! to `error`. amazon-ebsvolume's snapshots are its artifact: they go to `data.snapshots` here.

use aws_sdk_ec2::types::SnapshotState;

use crate::builders::launch_volumes::snapshot_ids;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitSnapshotsCompleted",
    iam_actions: &["ec2:DescribeSnapshots"],
    reach: &[],
    calls: None,
    wait: Some(waits::SNAPSHOTS_COMPLETED),
    timeout_seconds: 60,
    handler: handler!(run),
};

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
    if state.build.builder_type == amiflow_template::BuilderType::EbsVolume {
        let mut sorted = ids;
        sorted.sort();
        state.data.snapshots.insert(region, sorted);
    }
    Ok(state)
}
