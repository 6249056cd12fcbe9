//! WaitImageAvailable: `NotReady` while the build-region image is pending; its snapshots
//! recorded once available; `BuildFailed` with AWS's StateReason when it failed.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitImageAvailable",
    iam_actions: &["ec2:DescribeImages", "ec2:CreateTags", "ssm:GetParameter"],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: None,
    wait: Some(waits::IMAGE_AVAILABLE),
    timeout_seconds: 60,
    handler: handler!(run),
};

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
