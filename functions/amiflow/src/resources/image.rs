//! AMIs: made by CreateImage/RegisterImage, copied by CopyImage, replaced by DeregisterAmi
//! (`force_deregister`). Removing one deregisters it and deletes the snapshots behind it.
//! A build's sweep keeps the images it delivers; no sweep touches an image marked
//! `amiflow:artifact`.

use aws_sdk_ec2::types::Image;

use super::{is_artifact, snapshot, Kind, Reach, Scope, Swept};
use crate::error::{classify, or_absent};
use crate::state::{Ledger, ResourceKind, ARTIFACT_TAG};
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidAMIID.NotFound";

/// On the images of a gated pipeline run (`test`, `approval`) that passed its gates: Publish
/// puts it on before anything else, and the janitor withdraws no image carrying it (a run
/// stopped after its gates but before it ended keeps its images, published or not).
pub const GATES_PASSED_TAG: &str = "amiflow:gates-passed";

/// What finding and removing images (with their snapshots) needs.
/// Deregistering or changing an image: only the builds' own.
pub const REACH: &[(&str, Reach)] = &[
    ("ec2:DeregisterImage", Reach::BuildTagged),
    ("ec2:ModifyImageAttribute", Reach::BuildTagged),
    ("ec2:EnableImageDeprecation", Reach::BuildTagged),
];

pub const CLEANUP_ACTIONS: &[&str] = &[
    "ec2:DescribeImages",
    "ec2:DeregisterImage",
    "ec2:DeleteSnapshot",
];

/// The image, or None when EC2 does not know it.
pub async fn describe(ctx: &Ctx, region: &str, id: &str) -> Result<Option<Image>, StepError> {
    let out = ctx.ec2(region).describe_images().image_ids(id).send().await;
    Ok(or_absent(out, &[NOT_FOUND], "DescribeImages", id)?
        .and_then(|out| out.images().first().cloned()))
}

/// The account's own images called `name` in a region (AMI names are unique per account
/// and region: PreValidate refuses a taken one, DeregisterAmi replaces it).
pub async fn named(ctx: &Ctx, region: &str, name: &str) -> Result<Vec<Image>, StepError> {
    let out = ctx
        .ec2(region)
        .describe_images()
        .owners("self")
        .filters(crate::identity::filter("name", [name]))
        .send()
        .await
        .map_err(|e| classify("DescribeImages", name, e))?;
    Ok(out.images().to_vec())
}

/// The account's available images tagged with the pipeline `name` in a region (deprecated
/// ones included), newest first. Only these are a pipeline's to compare with and retire.
pub async fn of_pipeline(ctx: &Ctx, region: &str, name: &str) -> Result<Vec<Image>, StepError> {
    let out = ctx
        .ec2(region)
        .describe_images()
        .owners("self")
        .include_deprecated(true)
        .filters(crate::identity::filter(
            &format!("tag:{}", amiflow_template::pipeline::PIPELINE_TAG),
            [name],
        ))
        .filters(crate::identity::filter("state", ["available"]))
        .send()
        .await
        .map_err(|e| classify("DescribeImages", name, e))?;
    let mut images: Vec<Image> = out
        .images()
        .iter()
        // The filter is the API's; the tag is checked again so that nothing else is touched.
        .filter(|i| tag(i, amiflow_template::pipeline::PIPELINE_TAG) == Some(name))
        .cloned()
        .collect();
    images.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
    Ok(images)
}

/// An image's tag value.
pub fn tag<'a>(img: &'a Image, key: &str) -> Option<&'a str> {
    img.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The snapshots behind an image's block devices.
pub fn snapshots(img: &Image) -> Vec<String> {
    img.block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(String::from))
        .collect()
}

pub fn state_reason(img: &Image) -> String {
    img.state_reason()
        .and_then(|r| r.message())
        .unwrap_or("AWS gave no reason")
        .to_string()
}

/// One look at an image: Ok(Some) when available, Ok(None) while pending, BuildFailed on failed.
pub async fn available(ctx: &Ctx, region: &str, id: &str) -> Result<Option<Image>, StepError> {
    let Some(img) = describe(ctx, region, id).await? else {
        return Ok(None);
    };
    match img.state().map(|s| s.as_str()).unwrap_or("") {
        "available" => Ok(Some(img)),
        "failed" | "error" | "invalid" | "deregistered" => Err(StepError::BuildFailed(format!(
            "image {id} in {region} is {}: {}",
            img.state().map(|s| s.as_str()).unwrap_or(""),
            state_reason(&img)
        ))),
        _ => Ok(None),
    }
}

/// Deregisters an image; Ok(false) when it was gone already.
pub async fn deregister(ctx: &Ctx, region: &str, id: &str) -> Result<bool, StepError> {
    let out = ctx.ec2(region).deregister_image().image_id(id).send().await;
    let gone = [NOT_FOUND, "InvalidAMIID.Unavailable"];
    Ok(or_absent(out, &gone, "DeregisterImage", id)?.is_some())
}

/// Deregisters an image and deletes its snapshots; absent ones are fine. Returns the
/// snapshots it removed.
pub async fn destroy(ctx: &Ctx, region: &str, id: &str) -> Result<Vec<String>, StepError> {
    let snaps = describe(ctx, region, id)
        .await?
        .map(|i| snapshots(&i))
        .unwrap_or_default();
    deregister(ctx, region, id).await?;
    for s in &snaps {
        snapshot::remove(ctx, region, s).await?;
    }
    Ok(snaps)
}

/// Marks the run's images as having passed its gates ([`GATES_PASSED_TAG`]), by region.
pub async fn mark_gates_passed(
    ctx: &Ctx,
    images: &std::collections::BTreeMap<String, String>,
) -> Result<(), StepError> {
    for (region, id) in images {
        ctx.ec2(region)
            .create_tags()
            .resources(id)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(GATES_PASSED_TAG)
                    .value("true")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateTags", &format!("{id} ({region})"), e))?;
    }
    Ok(())
}

/// Removes the images a run delivered (marked [`ARTIFACT_TAG`], tagged with `execution`) in
/// `regions`, with their snapshots, but those in `keep` and those marked
/// [`GATES_PASSED_TAG`]: the janitor's answer to a pipeline run stopped before its gates
/// passed, whose images nobody approved or tested. Returns what it removed.
pub async fn withdraw_execution(
    ctx: &Ctx,
    execution: &str,
    regions: &[String],
    keep: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>, StepError> {
    let mut removed = Vec::new();
    for region in regions {
        let delivered = ctx
            .ec2(region)
            .describe_images()
            .owners("self")
            .filters(crate::identity::build_filter(execution))
            .filters(crate::identity::filter("tag-key", [ARTIFACT_TAG]))
            .send()
            .await
            .map_err(|e| classify("DescribeImages", execution, e))?;
        for id in delivered
            .images()
            .iter()
            .filter(|i| tag(i, GATES_PASSED_TAG).is_none())
            .filter_map(|i| i.image_id())
            .filter(|id| !keep.contains(*id))
        {
            let snaps = destroy(ctx, region, id).await?;
            removed.push(format!("image {id} ({region})"));
            removed.extend(snaps.iter().map(|s| format!("snapshot {s} ({region})")));
        }
    }
    Ok(removed)
}

/// Removes the scope's images in every region: the intermediary ones always, every one
/// of a failed build; never those to keep nor marked artifacts (unless the ledger says the
/// failed build made them).
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    for region in &scope.regions {
        let tagged = if scope.searches(Kind::Image) {
            ctx.ec2(region)
                .describe_images()
                .owners("self")
                .set_filters(Some(scope.filters()))
                .send()
                .await
                .map_err(|e| classify("DescribeImages", &scope.execution, e))?
                .images
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut images: Vec<String> = tagged
            .iter()
            .filter(|i| !is_artifact(i.tags()))
            .filter_map(|i| i.image_id().map(String::from))
            .collect();
        for r in ledger
            .of_kind(ResourceKind::Image)
            .filter(|r| &r.region == region)
        {
            if (!r.artifact || scope.delete_artifacts) && !images.contains(&r.id) {
                images.push(r.id.clone());
            }
        }
        for img in images {
            if scope.keep_images.contains(&img) {
                swept.kept.push(format!("image {img} ({region})"));
                continue;
            }
            match destroy(ctx, region, &img).await {
                Ok(snaps) => {
                    swept.removed.push(format!("image {img} ({region})"));
                    swept
                        .removed
                        .extend(snaps.iter().map(|s| format!("snapshot {s} ({region})")));
                }
                Err(StepError::NotReady(why)) => swept.not_yet.push(why),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(swept)
}
