//! Fingerprint (after Prepare, before the builds): a pipeline's build fingerprint, and
//! whether the run builds at all.
//!
//! The fingerprint is the resolved source image (so a new image behind
//! `source_ami_filter` changes it), the build rendered at a fixed time, and the hashes of
//! the provisioner files ([`amiflow_template::pipeline::FingerprintParts`]). With
//! `rebuild: on_change`, when the newest image tagged with the pipeline carries the same
//! fingerprint, the run builds nothing: the builds list is emptied (the Map runs no
//! iteration), and the images with that fingerprint stay current for Publish and Retain
//! (which then change nothing unless an earlier run stopped short of them). Otherwise the build's
//! `tags` get the pipeline and fingerprint tags, which CreateTags puts on every image and
//! snapshot it makes.
//!
//! Input and output: Prepare's output `{"builds": [...], "pipeline": ...}`; without a
//! pipeline it is passed on unchanged and no AWS call is made.

use amiflow_template::pipeline::{Rebuild, FINGERPRINT_TAG, PIPELINE_TAG};

use crate::pipeline::RunStatus;
use crate::prelude::*;
use crate::steps::prepare::PrepareOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "Fingerprint",
    iam_actions: &["ec2:DescribeImages"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut input: PrepareOutput) -> Result<PrepareOutput, StepError> {
    let Some(run) = input.pipeline.as_mut() else {
        return Ok(input);
    };
    // Prepare lets a pipeline through with exactly one build that makes an image.
    let Some(build) = input.builds.first_mut() else {
        return Ok(input);
    };
    let cfg = &build.build.config;
    let region = cfg.build_region().to_string();
    run.regions = std::iter::once(region.clone())
        .chain(cfg.ami().map(|a| a.ami_regions.clone()).unwrap_or_default())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Some(img) = super::source_ami_info::resolve(ctx, cfg).await? {
        let id = img.image_id().unwrap_or_default().to_string();
        run.parts.source_images.insert(region.clone(), id);
    }
    let fingerprint = run.parts.fingerprint();
    run.fingerprint = Some(fingerprint.clone());
    let images = crate::resources::image::of_pipeline(ctx, &region, &run.pipeline.name).await?;
    // CreationDate has whole seconds: images made in the same second are all "the newest".
    let newest_date = images.first().and_then(|i| i.creation_date());
    let newest: Vec<_> = images
        .iter()
        .take_while(|i| i.creation_date() == newest_date)
        .collect();
    run.previous_image = newest.first().and_then(|i| i.image_id()).map(String::from);
    let same = newest
        .iter()
        .any(|i| crate::resources::image::tag(i, FINGERPRINT_TAG) == Some(fingerprint.as_str()));
    if run.pipeline.rebuild == Rebuild::OnChange && same {
        // The images with this fingerprint stay current: Publish makes sure the parameter
        // names them (a run whose Publish failed is healed by the next), Retain spares them.
        for r in &run.regions {
            let same_in_region = crate::resources::image::of_pipeline(ctx, r, &run.pipeline.name)
                .await?
                .into_iter()
                .find(|i| {
                    crate::resources::image::tag(i, FINGERPRINT_TAG) == Some(fingerprint.as_str())
                });
            if let Some(id) = same_in_region.as_ref().and_then(|i| i.image_id()) {
                run.current.insert(r.clone(), id.to_string());
            }
        }
        run.status = RunStatus::UpToDate;
        input.builds.clear();
        return Ok(input);
    }
    let ami = build.build.config.ami_mut().ok_or_else(|| {
        StepError::InvalidTemplate(format!(
            "pipeline: build {} makes no image",
            build.build.name
        ))
    })?;
    ami.tags
        .insert(PIPELINE_TAG.into(), run.pipeline.name.clone());
    ami.tags.insert(FINGERPRINT_TAG.into(), fingerprint);
    Ok(input)
}
