//! WaitImageAvailable: `NotReady` while the build-region image is pending; its snapshots
//! recorded once available; `BuildFailed` with AWS's StateReason when it failed.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitImageAvailable",
    iam_actions: &["ec2:DescribeImages", "ec2:CreateTags", "ssm:GetParameter"],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: Some(waits::IMAGE_AVAILABLE),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: DescribeImages, and CreateTags on the image's snapshots
/// ([`has_snapshots`]: not amazon-instance's instance-store image) where they were not
/// tagged at creation (RegisterImage's; CreateImage's where EC2 refuses the snapshot tag
/// specification, as emulators do); nothing with `skip_create_ami` (no image).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if build.config.skip_create_ami() {
        return Vec::new();
    }
    let mut calls = vec!["ec2:DescribeImages"];
    if has_snapshots(build) {
        calls.push("ec2:CreateTags");
    }
    calls
}

/// Whether the build's images have snapshots: EBS-backed, not amazon-instance's
/// instance-store image (registered from its bundle in S3).
pub(crate) fn has_snapshots(build: &amiflow_template::PreparedBuild) -> bool {
    build.builder_type != amiflow_template::BuilderType::Instance
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    let region = cfg.build_region().to_string();
    let Some(id) = state.data.amis.get(&region).cloned() else {
        return Ok(state);
    };
    let Some(img) = crate::resources::image::available(ctx, &region, &id).await? else {
        return Err(
            waits::IMAGE_AVAILABLE.not_ready(&state, format!("image {id} in {region} is pending"))
        );
    };
    let artifact = !cfg.intermediary_image();
    let snaps = crate::resources::image::snapshots(&img);
    let tagged_at_creation = state
        .data
        .extra
        .get(crate::steps::create_image::SNAPSHOTS_TAGGED)
        .is_some_and(|v| v == true);
    if !snaps.is_empty() && !tagged_at_creation {
        // Snapshot tags at creation are not honoured everywhere (RegisterImage takes none,
        // emulators refuse them on CreateImage): make sure the build's are on.
        let tags = crate::build_render::image_run_tags(ctx, &state, &region)?;
        ctx.ec2(&region)
            .create_tags()
            .set_resources(Some(snaps.clone()))
            .set_tags(Some(tags_with_build(&state, &tags)))
            .send()
            .await
            .map_err(|e| classify("CreateTags", &snaps.join(","), e))?;
    }
    for s in &snaps {
        state
            .ledger
            .record(ResourceKind::Snapshot, &region, s, artifact);
    }
    state.data.snapshots.insert(region, snaps);
    waits::IMAGE_AVAILABLE.end(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::{build, template};
    use serde_json::json;

    #[test]
    fn snapshots_are_tagged_unless_the_image_has_none() {
        assert_eq!(
            local_calls(&build(json!({}))),
            ["ec2:DescribeImages", "ec2:CreateTags"]
        );
        assert!(local_calls(&build(json!({"skip_create_ami": true}))).is_empty());
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/instance-basic.json"),
        )
        .unwrap();
        let instance = template(serde_json::from_str(&example).unwrap());
        assert_eq!(local_calls(&instance), ["ec2:DescribeImages"]);
    }
}
