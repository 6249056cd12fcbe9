//! WaitSnapshotsCompleted: `NotReady` while the build's snapshots are pending; a snapshot in
//! `error` fails the build with AWS's state message.

use aws_sdk_ec2::types::SnapshotState;

use super::create_snapshot::WAIT;
use super::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitSnapshotsCompleted",
    iam_actions: &["ec2:DescribeSnapshots"],
    wait: Some(LONG_WAIT),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// Packer's SnapshotCompleted waiter (plugin: 30 min and more).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(3600);

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let view = EbsView::of(&state)?;
    let region = view.region.clone();
    let ids = state.data.snapshots.get(&region).cloned().unwrap_or_default();
    if ids.is_empty() {
        return Ok(state);
    }
    let out = ctx.ec2(&region).describe_snapshots().set_snapshot_ids(Some(ids.clone())).send().await.map_err(|e| classify("DescribeSnapshots", &ids.join(","), e))?;
    let mut pending = Vec::new();
    for s in out.snapshots() {
        let id = s.snapshot_id().unwrap_or_default();
        match s.state() {
            Some(SnapshotState::Completed) => {}
            Some(SnapshotState::Error) => {
                return Err(StepError::BuildFailed(format!("snapshot {id} failed: {}", s.state_message().unwrap_or("AWS gave no reason"))));
            }
            _ => pending.push(format!("{id} ({})", s.progress().unwrap_or("0%"))),
        }
    }
    if out.snapshots().len() < ids.len() {
        pending.push("not yet listed".into());
    }
    if !pending.is_empty() {
        return Err(not_ready(&state, &view, WAIT, DEFAULT_BUDGET, format!("snapshots pending: {}", pending.join(", "))));
    }
    end_wait(&mut state, WAIT);
    Ok(state)
}
