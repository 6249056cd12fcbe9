//! Looking at and removing images: shared by the image steps and Cleanup.

use aws_sdk_ec2::types::Image;

use super::prelude::*;

pub async fn describe(ctx: &Ctx, region: &str, id: &str) -> Result<Option<Image>, StepError> {
    match ctx.ec2(region).describe_images().image_ids(id).send().await {
        Ok(out) => Ok(out.images().first().cloned()),
        Err(e) if error_code(&e) == Some("InvalidAMIID.NotFound") => Ok(None),
        Err(e) => Err(classify("DescribeImages", id, e)),
    }
}

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

/// Deregisters an image and deletes its snapshots; absent ones are fine.
pub async fn destroy(ctx: &Ctx, region: &str, id: &str) -> Result<Vec<String>, StepError> {
    let ec2 = ctx.ec2(region);
    let snaps = describe(ctx, region, id)
        .await?
        .map(|i| snapshots(&i))
        .unwrap_or_default();
    match ec2.deregister_image().image_id(id).send().await {
        Ok(_) => {}
        Err(e)
            if matches!(
                error_code(&e),
                Some("InvalidAMIID.NotFound" | "InvalidAMIID.Unavailable")
            ) => {}
        Err(e) => return Err(classify("DeregisterImage", id, e)),
    }
    for s in &snaps {
        delete_snapshot(ctx, region, s).await?;
    }
    Ok(snaps)
}

pub async fn delete_snapshot(ctx: &Ctx, region: &str, id: &str) -> Result<(), StepError> {
    match ctx
        .ec2(region)
        .delete_snapshot()
        .snapshot_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some("InvalidSnapshot.NotFound") => Ok(()),
        Err(e) if error_code(&e) == Some("InvalidSnapshot.InUse") => Err(StepError::NotReady(
            format!("snapshot {id} in {region} is still in use by an image"),
        )),
        Err(e) => Err(classify("DeleteSnapshot", id, e)),
    }
}
