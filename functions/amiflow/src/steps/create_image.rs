//! CreateImage: images the stopped instance, tagged at creation (image and snapshots);
//! the image is recorded at once (an artifact, or the intermediary when encrypting).

use crate::builders::block_devices::mappings;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "CreateImage",
    iam_actions: &[
        "ec2:CreateImage",
        "ec2:DescribeImages",
        "ec2:CreateTags",
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeImages (a retry's own image) and CreateImage
/// tagged at creation (CreateTags), unless `skip_create_ami`.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if build.config.skip_create_ami() {
        return Vec::new();
    }
    vec!["ec2:DescribeImages", "ec2:CreateImage", "ec2:CreateTags"]
}

/// CreateImage's error: "not in state" means the instance is still stopping (Transient,
/// retried by the state); anything else as [`classify`] sees it.
pub fn create_image_error(
    instance: &str,
    name: &str,
    e: aws_sdk_ec2::error::SdkError<
        aws_sdk_ec2::operation::create_image::CreateImageError,
        aws_sdk_ec2::config::http::HttpResponse,
    >,
) -> StepError {
    if error_code(&e) == Some("InvalidParameterValue") && format!("{e:?}").contains("not in state")
    {
        StepError::Transient(format!(
            "CreateImage {instance}: the instance is not stopped yet"
        ))
    } else {
        classify("CreateImage", name, e)
    }
}

/// `data.extra` key: CreateImage's snapshot tag specification was honoured, so the image's
/// snapshots carry the build's tags from creation and WaitImageAvailable need not tag them.
pub const SNAPSHOTS_TAGGED: &str = "snapshots_tagged_at_creation";

pub fn image_name(state: &BuildState) -> String {
    if state.build.config.intermediary_image() {
        format!(
            "amiflow-intermediary-{}",
            &stable_uuid(state, "IntermediaryImage").simple().to_string()[..12]
        )
    } else {
        state
            .build
            .config
            .ami()
            .map(|a| a.ami_name.clone())
            .unwrap_or_default()
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    if cfg.skip_create_ami() {
        return Ok(state);
    }
    let region = cfg.build_region().to_string();
    let ec2 = ctx.ec2(&region);
    let instance =
        state.data.instance_id.clone().ok_or_else(|| {
            StepError::BuildFailed("CreateImage: no instance in the state".into())
        })?;
    let name = image_name(&state);
    let intermediary = cfg.intermediary_image();

    // EC2 takes no ClientToken here: a retried step finds its image by name and build tag.
    let mut lookup = own_filters(&state);
    lookup.push(filter("name", [name.clone()]));
    let found = ec2
        .describe_images()
        .owners("self")
        .set_filters(Some(lookup))
        .send()
        .await
        .map_err(|e| classify("DescribeImages", &name, e))?;
    let id = match found.images().first().and_then(|i| i.image_id()) {
        Some(id) => id.to_string(),
        None => {
            let tags = crate::build_render::image_run_tags(ctx, &state, &region)?;
            let request = ec2
                .create_image()
                .instance_id(&instance)
                .name(&name)
                .set_block_device_mappings(
                    Some(mappings(cfg.ami_block_device_mappings(), false))
                        .filter(|m| !m.is_empty()),
                );
            let out = send_tagged(&mut state, request, &tags)
                .await
                .map_err(|e| create_image_error(&instance, &name, e))?;
            out.image_id().unwrap_or_default().to_string()
        }
    };
    state
        .ledger
        .record(ResourceKind::Image, &region, &id, !intermediary);
    if intermediary {
        state.data.extra.insert(
            "intermediary_image".into(),
            serde_json::json!({"region": region, "id": id}),
        );
    }
    state.data.amis.insert(region, id);
    waits::IMAGE_AVAILABLE.begin(&mut state);
    Ok(state)
}

/// Sends a CreateImage with the image and its snapshots tagged at creation, so that no
/// untagged snapshot of the build ever exists (a role may tag and remove only what carries
/// the build tag). An emulator without snapshot tag specifications (moto answers 500) gets
/// the image tagged at creation and its snapshots tagged by WaitImageAvailable, which
/// [`SNAPSHOTS_TAGGED`] tells otherwise. amazon-ebs's CreateImage, and amazon-ebssurrogate's
/// with `use_create_image` (steps/register_image.rs).
pub(crate) async fn send_tagged(
    state: &mut BuildState,
    request: aws_sdk_ec2::operation::create_image::builders::CreateImageFluentBuilder,
    tags: &BTreeMap<String, String>,
) -> Result<
    aws_sdk_ec2::operation::create_image::CreateImageOutput,
    aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::create_image::CreateImageError>,
> {
    let request = request.tag_specifications(tag_spec(ResourceType::Image, state, tags));
    // No SDK retries on this first form: a 500 here means "not supported" (below).
    let result = request
        .clone()
        .tag_specifications(tag_spec(ResourceType::Snapshot, state, tags))
        .customize()
        .config_override(
            aws_sdk_ec2::config::Config::builder()
                .retry_config(aws_config::retry::RetryConfig::disabled()),
        )
        .send()
        .await;
    if matches!(&result, Err(aws_sdk_ec2::error::SdkError::ServiceError(e)) if e.raw().status().as_u16() == 500)
    {
        return request.send().await;
    }
    if result.is_ok() {
        state
            .data
            .extra
            .insert(SNAPSHOTS_TAGGED.into(), serde_json::Value::Bool(true));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn skip_create_ami_creates_nothing() {
        assert_eq!(local_calls(&build(json!({}))).len(), 3);
        assert!(local_calls(&build(json!({"skip_create_ami": true}))).is_empty());
    }
}
