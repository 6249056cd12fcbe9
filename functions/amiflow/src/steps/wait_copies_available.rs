//! WaitCopiesAvailable: `NotReady` until every copy is available, then records their
//! snapshots; `BuildFailed` with AWS's StateReason for a failed copy.

use super::copy_image::copies;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitCopiesAvailable",
    iam_actions: &["ec2:DescribeImages"],
    reach: &[],
    calls: None,
    wait: Some(waits::COPIES_AVAILABLE),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let mut pending = Vec::new();
    for (region, id) in copies(&state) {
        match crate::resources::image::available(ctx, &region, &id).await? {
            Some(img) => {
                let snaps = crate::resources::image::snapshots(&img);
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
        return Err(waits::COPIES_AVAILABLE.not_ready(
            &state,
            format!("image copies pending: {}", pending.join(", ")),
        ));
    }
    waits::COPIES_AVAILABLE.end(&mut state);
    Ok(state)
}
