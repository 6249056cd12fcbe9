//! CreateTags: `tags` on every AMI and its snapshots, then `snapshot_tags` on the
//! snapshots, keys and values rendered with build data (`{{ .SourceAMIName }}`, ...).

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "CreateTags",
    iam_actions: &["ec2:CreateTags", "ec2:DescribeImages", "ssm:GetParameter"],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here, when it ends with AMIs
/// ([`crate::steps::copy_image::leaves_amis`]): CreateTags with `tags`, or with
/// `snapshot_tags` when the images have snapshots
/// ([`crate::steps::wait_image_available::has_snapshots`]); else nothing. DescribeImages
/// only finds the snapshots of an image the waits recorded none for, which they always do.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let Some(ami) = build.config.ami() else {
        return Vec::new();
    };
    let tags = !ami.tags.is_empty()
        || (!ami.snapshot_tags.is_empty()
            && crate::steps::wait_image_available::has_snapshots(build));
    if tags && crate::steps::copy_image::leaves_amis(&build.config) {
        vec!["ec2:CreateTags"]
    } else {
        Vec::new()
    }
}

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let cfg = ami_config(&state, SPEC.name)?;
    if cfg.tags.is_empty() && cfg.snapshot_tags.is_empty() {
        return Ok(state);
    }
    for (region, ami) in &state.data.amis {
        let ec2 = ctx.ec2(region);
        // WaitImageAvailable and WaitCopiesAvailable recorded each final AMI's snapshots:
        // an image is described only where they did not.
        let snaps = match state.data.snapshots.get(region) {
            Some(snaps) => snaps.clone(),
            None => match crate::resources::image::describe(ctx, region, ami).await? {
                Some(img) => crate::resources::image::snapshots(&img),
                None => {
                    return Err(StepError::Transient(format!(
                        "CreateTags: image {ami} in {region} is not visible yet"
                    )))
                }
            },
        };
        let to_tags = |key: &str,
                       m: &BTreeMap<String, String>|
         -> Result<Vec<aws_sdk_ec2::types::Tag>, StepError> {
            Ok(render_tags(&ctx.secrets, key, m, &state.data, region)?
                .into_iter()
                .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
                .collect())
        };
        if !cfg.tags.is_empty() {
            let mut resources = vec![ami.clone()];
            resources.extend(snaps.iter().cloned());
            ec2.create_tags()
                .set_resources(Some(resources))
                .set_tags(Some(to_tags("tags", &cfg.tags)?))
                .send()
                .await
                .map_err(|e| match error_code(&e) {
                    Some("InvalidAMIID.NotFound" | "InvalidSnapshot.NotFound") => {
                        StepError::Transient(format!("CreateTags {ami}: not visible yet"))
                    }
                    _ => classify("CreateTags", ami, e),
                })?;
        }
        if !cfg.snapshot_tags.is_empty() && !snaps.is_empty() {
            ec2.create_tags()
                .set_resources(Some(snaps.clone()))
                .set_tags(Some(to_tags("snapshot_tags", &cfg.snapshot_tags)?))
                .send()
                .await
                .map_err(|e| match error_code(&e) {
                    Some("InvalidSnapshot.NotFound") => StepError::Transient(format!(
                        "CreateTags: snapshots of {ami} not visible yet"
                    )),
                    _ => classify("CreateTags", &snaps.join(","), e),
                })?;
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
    fn only_tags_tag() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(json!({"tags": {"Team": "images"}}))),
            ["ec2:CreateTags"]
        );
        assert_eq!(
            local_calls(&build(json!({"snapshot_tags": {"Team": "images"}}))),
            ["ec2:CreateTags"]
        );
    }
}
