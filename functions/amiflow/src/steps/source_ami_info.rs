//! SourceAmiInfo: resolves `source_ami` / `source_ami_filter` to one image and records
//! Packer's build data about it (SourceAMI, SourceAMIName, ...).

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "SourceAmiInfo",
    // The sensitive variables, to conceal them in the image tags it reads back
    // (resources/sensitive_var.rs).
    iam_actions: &["ec2:DescribeImages", "ssm:GetParameter"],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeImages, except for an amazon-chroot build
/// `from_scratch` ([`from_scratch`]), which has no source.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if from_scratch(&build.config) {
        return Vec::new();
    }
    vec!["ec2:DescribeImages"]
}

/// An amazon-chroot build `from_scratch`: no source image to resolve.
pub(crate) fn from_scratch(cfg: &amiflow_template::BuilderConfig) -> bool {
    matches!(cfg, amiflow_template::BuilderConfig::Chroot(c) if c.from_scratch)
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    let Some(img) = resolve(ctx, &cfg).await? else {
        return Ok(state);
    };
    // EC2's root device types are `ebs` and `instance-store`; moto reports `standard` for
    // the images it creates from instances, which are EBS-backed.
    if img.root_device_type().map(|t| t.as_str()) == Some("instance-store") {
        return Err(StepError::BuildFailed(format!(
            "source AMI {} has root device type {:?}; amazon-ebs needs an EBS-backed source (use amazon-instance for instance-store images)",
            img.image_id().unwrap_or("?"),
            img.root_device_type().map(|t| t.as_str()).unwrap_or("unknown")
        )));
    }
    if cfg.ena_support() == Some(true) || cfg.sriov_support() {
        let virt = cfg
            .ami()
            .and_then(|a| a.ami_virtualization_type.clone())
            .or_else(|| img.virtualization_type().map(|v| v.as_str().to_string()));
        if virt.as_deref() != Some("hvm") {
            return Err(StepError::BuildFailed(
                "Enhanced Networking (ena_support / sriov_support) requires an HVM source AMI or ami_virtualization_type \"hvm\"".into(),
            ));
        }
    }
    let d = &mut state.data;
    d.source_ami = img.image_id().map(String::from);
    d.source_ami_name = img.name().map(String::from);
    d.source_ami_creation_date = img.creation_date().map(String::from);
    d.source_ami_owner = img.owner_id().map(String::from);
    d.source_ami_owner_name = img.image_owner_alias().map(String::from);
    d.source_ami_tags = img
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect();
    d.extra
        .insert("source_root_device_type".into(), "ebs".into());
    Ok(state)
}

/// The one image `source_ami` / `source_ami_filter` names (the newest when `most_recent`),
/// or None for a chroot build from scratch. The pipeline's Fingerprint resolves the same way.
pub async fn resolve(
    ctx: &Ctx,
    cfg: &amiflow_template::BuilderConfig,
) -> Result<Option<aws_sdk_ec2::types::Image>, StepError> {
    if from_scratch(cfg) {
        return Ok(None);
    }
    let mut req = ctx.ec2(cfg.build_region()).describe_images();
    let mut most_recent = false;
    if let Some(id) = cfg.source_ami() {
        req = req.image_ids(id);
    }
    if let Some(f) = cfg.source_ami_filter() {
        for (name, values) in &f.filters {
            req = req.filters(filter(
                name,
                values.split(',').map(|v| v.trim().to_string()),
            ));
        }
        for o in &f.owners {
            req = req.owners(o);
        }
        if f.include_deprecated {
            req = req.include_deprecated(true);
        }
        most_recent = f.most_recent;
    }
    let what = cfg.source_ami().unwrap_or("source_ami_filter").to_string();
    let out = req
        .send()
        .await
        .map_err(|e| classify("DescribeImages", &what, e))?;
    let mut images = out.images().to_vec();
    if images.is_empty() {
        return Err(StepError::BuildFailed(format!(
            "No AMI was found matching filters ({what}) in {}: check source_ami / source_ami_filter and its owners",
            cfg.build_region()
        )));
    }
    if images.len() > 1 && !most_recent {
        return Err(StepError::BuildFailed(format!(
            "Your query returned more than one result ({} images). Please try a more specific search, or set most_recent to true",
            images.len()
        )));
    }
    images.sort_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    Ok(images.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::{build, template};
    use serde_json::json;

    #[test]
    fn a_chroot_build_from_scratch_looks_up_no_source() {
        assert_eq!(local_calls(&build(json!({}))), ["ec2:DescribeImages"]);
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/chroot-from-scratch.json"),
        )
        .unwrap();
        let scratch = template(serde_json::from_str(&example).unwrap());
        assert!(local_calls(&scratch).is_empty());
    }
}
