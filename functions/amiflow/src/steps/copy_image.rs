//! CopyImage: copies the build-region image to every `ami_regions` region (and, when
//! encrypting, back into the build region from the intermediary), with `encrypt_boot`,
//! `kms_key_id` / `region_kms_key_ids`, a ClientToken per region and the build tags.

use crate::prelude::*;
use crate::resources::kms;

pub const SPEC: StepSpec = StepSpec {
    name: "CopyImage",
    iam_actions: &IAM_ACTIONS,
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// Its own, and what EC2 needs of it to encrypt a copy (`resources/kms.rs`).
const IAM_ACTIONS: [&str; 8] = crate::steps::actions(
    &["ec2:CopyImage", "ec2:DescribeImages", "ec2:CreateTags"],
    &kms::EBS_ENCRYPTION_ACTIONS,
);

/// What a local build calls here: for each region copied into ([`copy_regions`]:
/// `ami_regions`, and the build region when `encrypt_boot` copies the intermediary there)
/// DescribeImages (a retry's own copy), CopyImage with its snapshots tagged (CreateTags)
/// and CreateTags; the KMS actions EC2 uses the key with on the caller's behalf when the
/// copies are encrypted ([`copies_encrypted`]); nothing without a region to copy into.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if copy_regions(&build.config).is_empty() {
        return Vec::new();
    }
    let mut calls = vec!["ec2:DescribeImages", "ec2:CopyImage", "ec2:CreateTags"];
    if copies_encrypted(&build.config) {
        calls.extend(kms::EBS_ENCRYPTION_ACTIONS);
    }
    calls
}

/// The regions the image is copied into: none without an image (`skip_create_ami`), else
/// [`amiflow_template::BuilderConfig::copy_regions`].
pub(crate) fn copy_regions(cfg: &amiflow_template::BuilderConfig) -> Vec<String> {
    if cfg.skip_create_ami() {
        Vec::new()
    } else {
        cfg.copy_regions()
    }
}

/// Whether the copies are encrypted: `encrypt_boot`, or an encrypted volume in the image
/// (a mapping with `encrypted` or a `kms_key_id`), whose copy EC2 makes encrypted too.
pub(crate) fn copies_encrypted(cfg: &amiflow_template::BuilderConfig) -> bool {
    cfg.ami().is_some_and(|a| a.encrypt_boot == Some(true))
        || cfg.ami_block_device_mappings().iter().any(kms::encrypts)
        || cfg
            .launch_block_device_mappings()
            .into_iter()
            .any(|d| !d.omit_from_artifact && kms::encrypts(d))
}

/// Whether the build ends with AMIs (`data.amis`) for the steps after the copies to
/// deprecate, share and tag: not with `skip_create_ami`, nor when the build region's image
/// is not kept (`skip_save_build_region`) and nothing is copied.
pub(crate) fn leaves_amis(cfg: &amiflow_template::BuilderConfig) -> bool {
    let kept = !cfg.ami().is_some_and(|a| a.skip_save_build_region);
    !cfg.skip_create_ami() && (kept || !copy_regions(cfg).is_empty())
}

pub fn copies(state: &BuildState) -> BTreeMap<String, String> {
    state
        .data
        .extra
        .get("copies")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    if cfg.skip_create_ami() {
        return Ok(state);
    }
    let ami = ami_config(&state, SPEC.name)?.clone();
    let build_region = cfg.build_region().to_string();
    let source = state.data.amis.get(&build_region).cloned();
    let source = match state
        .data
        .extra
        .get("intermediary_image")
        .and_then(|v| v["id"].as_str())
    {
        Some(id) => id.to_string(),
        None => source.ok_or_else(|| {
            StepError::BuildFailed("CopyImage: no image in the build region".into())
        })?,
    };
    let mut copies = copies(&state);
    for region in copy_regions(&cfg) {
        if copies.contains_key(&region) {
            continue;
        }
        let ec2 = ctx.ec2(&region);
        let token = client_token(&state, &format!("CopyImage/{region}"));
        // Idempotent: this build's copy from an earlier attempt has the name and, copied
        // from the tagged source (CopyImageTags), this build's tags. An image of that name
        // anyone else made since PreValidate is never taken for ours (CopyImage then fails
        // on the duplicate name).
        let found = ec2
            .describe_images()
            .owners("self")
            .set_filters(Some(own_filters(&state)))
            .filters(filter("name", [ami.ami_name.clone()]))
            .filters(filter("state", ["pending", "available"]))
            .send()
            .await
            .map_err(|e| classify("DescribeImages", &ami.ami_name, e))?;
        let id = match found.images().first().and_then(|i| i.image_id()) {
            Some(id) => id.to_string(),
            None => {
                let mut req = ec2
                    .copy_image()
                    .client_token(&token)
                    .name(&ami.ami_name)
                    .source_image_id(&source)
                    .source_region(&build_region)
                    .copy_image_tags(true)
                    // The copy's snapshots carry no tags of the source's: tagged at creation,
                    // as the roles may change or delete only what carries the build's tags.
                    .tag_specifications(tag_spec(ResourceType::Snapshot, &state, &BTreeMap::new()));
                if ami.encrypt_boot == Some(true) {
                    req = req.encrypted(true);
                    let key = ami.region_kms_key_ids.get(&region).cloned().or_else(|| {
                        if region == build_region {
                            ami.kms_key_id.clone()
                        } else {
                            None
                        }
                    });
                    if let Some(k) = key.filter(|k| !k.is_empty()) {
                        req = req.kms_key_id(k);
                    }
                } else if ami.encrypt_boot == Some(false) {
                    req = req.encrypted(false);
                }
                let out = req
                    .send()
                    .await
                    .map_err(|e| classify("CopyImage", &format!("{source} to {region}"), e))?;
                out.image_id().unwrap_or_default().to_string()
            }
        };
        state.ledger.record(ResourceKind::Image, &region, &id, true);
        copies.insert(region.clone(), id.clone());
        state
            .data
            .extra
            .insert("copies".into(), serde_json::to_value(&copies)?);
        // CopyImageTags carries the source's tags; tag explicitly too so the build tag is
        // there whatever the copy carried over.
        ec2.create_tags()
            .resources(&id)
            .set_tags(Some(tags_with_build(&state, &BTreeMap::new())))
            .send()
            .await
            .map_err(|e| classify("CreateTags", &id, e))?;
    }
    for (region, id) in &copies {
        if region == &build_region {
            state.data.snapshots.remove(region);
        }
        state.data.amis.insert(region.clone(), id.clone());
    }
    if ami.skip_save_build_region && !copies.contains_key(&build_region) {
        state.data.amis.remove(&build_region);
        state.data.snapshots.remove(&build_region);
    }
    waits::COPIES_AVAILABLE.begin(&mut state);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn copies_only_into_other_regions_and_uses_kms_only_when_encrypted() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert!(leaves_amis(&build(json!({})).config));
        let copy = build(json!({"ami_regions": ["us-west-2"]}));
        assert_eq!(
            local_calls(&copy),
            ["ec2:DescribeImages", "ec2:CopyImage", "ec2:CreateTags"]
        );
        let encrypted = local_calls(&build(
            json!({"ami_regions": ["us-west-2"], "encrypt_boot": true}),
        ));
        assert!(encrypted.contains(&"kms:CreateGrant"), "{encrypted:?}");
        // encrypt_boot alone copies the intermediary image back into the build region.
        assert!(local_calls(&build(json!({"encrypt_boot": true}))).contains(&"ec2:CopyImage"));
        assert!(local_calls(&build(
            json!({"ami_regions": ["us-west-2"], "skip_create_ami": true})
        ))
        .is_empty());
    }
}
