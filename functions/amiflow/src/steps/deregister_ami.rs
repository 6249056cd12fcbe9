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
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: with `force_deregister` (and an AMI to make: not
/// `skip_create_ami`) ([`replaces`]) DescribeImages and DeregisterImage, and DeleteSnapshot
/// with `force_delete_snapshot`; else nothing. (The last two only when an image of that
/// name exists: what the option is for.)
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if !replaces(&build.config) {
        return Vec::new();
    }
    let mut calls = vec!["ec2:DescribeImages", "ec2:DeregisterImage"];
    if build.config.ami().is_some_and(|a| a.force_delete_snapshot) {
        calls.push("ec2:DeleteSnapshot");
    }
    calls
}

/// Whether an existing image named `ami_name` is replaced: `force_deregister`, and the
/// build makes an AMI (not `skip_create_ami`).
pub(crate) fn replaces(cfg: &amiflow_template::BuilderConfig) -> bool {
    cfg.ami().is_some_and(|a| a.force_deregister) && !cfg.skip_create_ami()
}

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let cfg = &state.build.config;
    let ami = ami_config(&state, SPEC.name)?;
    if !replaces(cfg) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn only_force_deregister_replaces_and_force_delete_snapshot_deletes() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(json!({"force_deregister": true}))),
            ["ec2:DescribeImages", "ec2:DeregisterImage"]
        );
        assert_eq!(
            local_calls(&build(
                json!({"force_deregister": true, "force_delete_snapshot": true})
            ))
            .len(),
            3
        );
        assert!(local_calls(&build(
            json!({"force_deregister": true, "skip_create_ami": true})
        ))
        .is_empty());
    }
}
