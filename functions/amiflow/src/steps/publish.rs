//! Publish (after a successful build): a pipeline's `publish.ssm_parameter` set to its
//! current image in every region that has a copy, data type `aws:ec2:image` so that launch
//! templates and `resolve:ssm:` can use it. A parameter that already names the image is left
//! alone: a run that changes nothing writes nothing, and a run after one whose Publish
//! failed writes what that one could not.
//!
//! A gated run's images (its `test` passed, its `approval` given: Publish comes after both)
//! are first marked `amiflow:gates-passed` (`resources/image.rs`), so that the janitor keeps them if the run is
//! stopped from here on, published or not.
//!
//! Input and output: Finalize's output. Without a pipeline, or ungated and without
//! `publish`, it is passed on unchanged and no AWS call is made.

use crate::pipeline::RunStatus;
use crate::prelude::*;
use crate::resources::image::mark_gates_passed;
use crate::resources::Reach;
use crate::steps::finalize::FinalizeOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "Publish",
    iam_actions: &["ssm:GetParameter", "ssm:PutParameter", "ec2:CreateTags"],
    // Only under the stack's PublishParameterPrefix: a pipeline file must not overwrite
    // any other parameter of the account (amiflow's own temporary keys included).
    reach: &[
        ("ssm:GetParameter", Reach::PublishedParameters),
        ("ssm:PutParameter", Reach::PublishedParameters),
    ],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// The data type that makes SSM check the value is an image id.
const IMAGE_DATA_TYPE: &str = "aws:ec2:image";

/// The image the published parameter `name` names in `region`; None when it does not exist.
pub async fn named_image(ctx: &Ctx, region: &str, name: &str) -> Result<Option<String>, StepError> {
    let got = ctx.ssm(region).get_parameter().name(name).send().await;
    Ok(
        or_absent(got, &["ParameterNotFound"], "GetParameter", name)?
            .and_then(|o| o.parameter().and_then(|p| p.value()).map(String::from)),
    )
}

pub async fn run(ctx: &Ctx, mut output: FinalizeOutput) -> Result<FinalizeOutput, StepError> {
    let Some(run) = output.pipeline.as_mut() else {
        return Ok(output);
    };
    if run.status == RunStatus::Building {
        // The build's images, by region, are what this run leaves current.
        let Some(build) = output.builds.iter().find(|b| b.error.is_none()) else {
            return Err(StepError::BuildFailed(format!(
                "pipeline {}: no successful build to publish",
                run.pipeline.name
            )));
        };
        run.current = build.amis.clone();
        if run.pipeline.is_gated() {
            mark_gates_passed(ctx, &run.current).await?;
        }
    }
    let Some(publish) = run.pipeline.publish.clone() else {
        return Ok(output);
    };
    let name = &publish.ssm_parameter;
    for (region, ami) in &run.current {
        if named_image(ctx, region, name).await?.as_deref() == Some(ami.as_str()) {
            continue;
        }
        ctx.ssm(region)
            .put_parameter()
            .name(name)
            .value(ami)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .data_type(IMAGE_DATA_TYPE)
            .overwrite(true)
            .description(format!(
                "Newest image of amiflow pipeline {}",
                run.pipeline.name
            ))
            .send()
            .await
            .map_err(|e| classify("PutParameter", &format!("{name} in {region}"), e))?;
        run.published.insert(region.clone(), ami.clone());
    }
    Ok(output)
}
