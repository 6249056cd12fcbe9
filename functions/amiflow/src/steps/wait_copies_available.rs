//! WaitCopiesAvailable: `NotReady` until every copy is available, then records their
//! snapshots; `BuildFailed` with AWS's StateReason for a failed copy.

use super::copy_image::copies;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitCopiesAvailable",
    iam_actions: &["ec2:DescribeImages"],
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::COPIES_AVAILABLE),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: DescribeImages when the image is copied
/// ([`super::copy_image::copy_regions`]); else nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if super::copy_image::copy_regions(&build.config).is_empty() {
        Vec::new()
    } else {
        vec!["ec2:DescribeImages"]
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn waits_only_for_copies() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(json!({"ami_regions": ["us-west-2"]}))),
            ["ec2:DescribeImages"]
        );
    }
}
