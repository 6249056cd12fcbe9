//! WaitCopiesAvailable: `NotReady` until every copy is available, then records their
//! snapshots; `BuildFailed` with AWS's StateReason for a failed copy.

use super::copy_image::{copies, WAIT};
use super::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitCopiesAvailable",
    iam_actions: &["ec2:DescribeImages"],
    wait: Some(LONG_WAIT),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub const DEFAULT_BUDGET: Duration = Duration::from_secs(1800);

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let mut pending = Vec::new();
    for (region, id) in copies(&state) {
        match super::images::available(ctx, &region, &id).await? {
            Some(img) => {
                let snaps = super::images::snapshots(&img);
                for s in &snaps {
                    state
                        .ledger
                        .record(ResourceKind::Snapshot, &region, s, true);
                }
                state.data.snapshots.insert(region, snaps);
            }
            None => pending.push(format!("{id} in {region}")),
        }
    }
    if !pending.is_empty() {
        return Err(not_ready(
            &state,
            WAIT,
            DEFAULT_BUDGET,
            format!("image copies pending: {}", pending.join(", ")),
        ));
    }
    end_wait(&mut state, WAIT);
    Ok(state)
}
