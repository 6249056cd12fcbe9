//! DeregisterAmi: with `force_deregister`, removes images named `ami_name` in every
//! target region (and their snapshots with `force_delete_snapshot`).

use crate::prelude::*;
use crate::resources::{image, snapshot};

pub const SPEC: StepSpec = StepSpec {
    name: "DeregisterAmi",
    iam_actions: &[
        "ec2:DescribeImages",
        "ec2:DeregisterImage",
        "ec2:DeleteSnapshot",
    ],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let cfg = &state.build.config;
    let ami = ami_config(&state, SPEC.name)?;
    if !ami.force_deregister || cfg.skip_create_ami() {
        return Ok(state);
    }
    for region in cfg.target_regions() {
        let taken = image::named(ctx, &region, &ami.ami_name).await?;
        for img in &taken {
            // Never the image this very build made (a retried late step).
            if img
                .tags()
                .iter()
                .any(|t| t.key() == Some(BUILD_TAG) && t.value() == Some(state.execution.as_str()))
            {
                continue;
            }
            let id = img.image_id().unwrap_or_default();
            image::deregister(ctx, &region, id).await?;
            if ami.force_delete_snapshot {
                for snap in img
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                {
                    // Still in use by another image: that is the user's to sort out.
                    match snapshot::remove(ctx, &region, snap).await {
                        Ok(_) => {}
                        Err(StepError::NotReady(why)) => return Err(StepError::BuildFailed(why)),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(state)
}
