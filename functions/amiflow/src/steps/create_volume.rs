//! CreateVolume: the build volume in the host's AZ, from the source image's root snapshot
//! (or empty with `from_scratch`), with `root_volume_*` options. Tagged at
//! creation and recorded in the ledger; the ClientToken makes a retry create nothing new.

use amiflow_template::BuilderConfig;
use aws_sdk_ec2::types::VolumeType;

use crate::builders::chroot::{self, BuildVolume, SourceImage, SourceMapping};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "CreateVolume",
    iam_actions: &IAM_ACTIONS,
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// Its own, and what EC2 needs of it to encrypt the volume (`resources/kms.rs`).
const IAM_ACTIONS: [&str; 9] = crate::steps::actions(
    &[
        "ec2:DescribeImages",
        "ec2:CreateVolume",
        "ec2:CreateTags",
        "ssm:GetParameter",
    ],
    &crate::resources::kms::EBS_ENCRYPTION_ACTIONS,
);

/// What a local build calls here: DescribeImages (the source's root snapshot) unless
/// `from_scratch`; CreateVolume, tagged at creation (CreateTags), always; the KMS actions
/// EC2 uses on the caller's behalf when the volume is encrypted (`root_volume_encrypt_boot`,
/// which `root_volume_kms_key_id` requires).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let from_scratch = matches!(&build.config, BuilderConfig::Chroot(c) if c.from_scratch);
    let encrypted = matches!(&build.config, BuilderConfig::Chroot(c)
        if c.root_volume_encrypt_boot == Some(true));
    let mut calls = Vec::new();
    if !from_scratch {
        calls.push("ec2:DescribeImages");
    }
    calls.extend(["ec2:CreateVolume", "ec2:CreateTags"]);
    if encrypted {
        calls.extend(crate::resources::kms::EBS_ENCRYPTION_ACTIONS);
    }
    calls
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = chroot::config(&state)?.clone();
    let region = state.build.config.build_region().to_string();
    let host = chroot::host(&state, "CreateVolume")?;
    let ec2 = ctx.ec2(&region);
    let mut req = ec2
        .create_volume()
        .availability_zone(&host.availability_zone)
        .client_token(client_token(&state, "CreateVolume"));
    let mut source = None;
    if cfg.from_scratch {
        let size = cfg
            .root_volume_size
            .ok_or_else(|| StepError::BuildFailed("from_scratch needs root_volume_size".into()))?;
        req = req.size(size as i32).volume_type(VolumeType::from(
            cfg.root_volume_type.as_deref().unwrap_or("gp2"),
        ));
    } else {
        let ami = state.data.source_ami.clone().ok_or_else(|| {
            StepError::BuildFailed(
                "CreateVolume: no source AMI in the state (SourceAmiInfo did not run)".into(),
            )
        })?;
        let img = crate::resources::image::describe(ctx, &region, &ami)
            .await?
            .ok_or_else(|| StepError::BuildFailed(format!("source AMI {ami} is gone")))?;
        let src = source_image(&img);
        let root = src
            .mappings
            .iter()
            .find(|m| m.device_name == src.root_device_name)
            .cloned()
            .ok_or_else(|| {
                StepError::BuildFailed(format!(
                    "Couldn't find root device! source AMI {ami} has no mapping named {}",
                    src.root_device_name
                ))
            })?;
        let snap = root.snapshot_id.clone().ok_or_else(|| {
            StepError::BuildFailed(format!(
                "source AMI {ami}: root device {} has no snapshot",
                src.root_device_name
            ))
        })?;
        let size = root
            .volume_size
            .unwrap_or(0)
            .max(cfg.root_volume_size.unwrap_or(0) as i32);
        req = req.snapshot_id(snap).size(size);
        match cfg
            .root_volume_type
            .as_deref()
            .filter(|t| Some(*t) != root.volume_type.as_deref())
        {
            Some(t) => {
                if t == "io1" {
                    return Err(StepError::BuildFailed(
                        "root_volume_type io1 is only allowed when the source root volume is io1"
                            .into(),
                    ));
                }
                req = req.volume_type(VolumeType::from(t));
            }
            None => {
                if let Some(t) = &root.volume_type {
                    req = req.volume_type(VolumeType::from(t.as_str()));
                    if matches!(t.as_str(), "io1" | "io2" | "gp3") {
                        req = req.set_iops(root.iops);
                    }
                }
            }
        }
        if cfg.root_volume_encrypt_boot == Some(true) {
            req = req
                .encrypted(true)
                .set_kms_key_id(cfg.root_volume_kms_key_id.clone());
        }
        source = Some(src);
    }
    let tags = render_tags(
        &ctx.secrets,
        "root_volume_tags",
        &cfg.root_volume_tags,
        &state.data,
        &region,
    )?;
    req = req.tag_specifications(tag_spec(ResourceType::Volume, &state, &tags));
    let out = req
        .send()
        .await
        .map_err(|e| classify("CreateVolume", &host.availability_zone, e))?;
    let id = out.volume_id().unwrap_or_default().to_string();
    state
        .ledger
        .record(ResourceKind::Volume, &region, &id, false);
    chroot::set_volume(
        &mut state,
        &BuildVolume {
            volume_id: id,
            device: None,
            source,
        },
    );
    waits::VOLUME_AVAILABLE.begin(&mut state);
    Ok(state)
}

pub fn source_image(img: &aws_sdk_ec2::types::Image) -> SourceImage {
    SourceImage {
        root_device_name: img.root_device_name().unwrap_or_default().to_string(),
        architecture: img.architecture().map(|a| a.as_str().to_string()),
        virtualization_type: img.virtualization_type().map(|v| v.as_str().to_string()),
        kernel_id: img.kernel_id().map(String::from),
        ramdisk_id: img.ramdisk_id().map(String::from),
        ena_support: img.ena_support(),
        boot_mode: img.boot_mode().map(|b| b.as_str().to_string()),
        mappings: img
            .block_device_mappings()
            .iter()
            .map(|m| {
                let ebs = m.ebs();
                SourceMapping {
                    device_name: m.device_name().unwrap_or_default().to_string(),
                    snapshot_id: ebs.and_then(|e| e.snapshot_id()).map(String::from),
                    volume_size: ebs.and_then(|e| e.volume_size()),
                    volume_type: ebs
                        .and_then(|e| e.volume_type())
                        .map(|t| t.as_str().to_string()),
                    iops: ebs.and_then(|e| e.iops()),
                    throughput: ebs.and_then(|e| e.throughput()),
                    delete_on_termination: ebs.and_then(|e| e.delete_on_termination()),
                    virtual_name: m.virtual_name().map(String::from),
                    no_device: m.no_device().is_some(),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn from_scratch_reads_no_source_image() {
        let from_source = local_calls(&build("amazon-chroot", serde_json::json!({})));
        assert_eq!(
            from_source,
            vec!["ec2:DescribeImages", "ec2:CreateVolume", "ec2:CreateTags"]
        );
        let scratch = local_calls(&build(
            "amazon-chroot",
            serde_json::json!({"from_scratch": true}),
        ));
        assert_eq!(scratch, vec!["ec2:CreateVolume", "ec2:CreateTags"]);
    }

    #[test]
    fn an_encrypted_root_volume_needs_what_ebs_encryption_asks_of_the_caller() {
        let encrypted = local_calls(&build(
            "amazon-chroot",
            serde_json::json!({"root_volume_encrypt_boot": true, "root_volume_kms_key_id": "alias/k"}),
        ));
        for action in crate::resources::kms::EBS_ENCRYPTION_ACTIONS {
            assert!(encrypted.contains(&action), "{action}: {encrypted:?}");
            assert!(SPEC.iam_actions.contains(&action), "{action}");
        }
        let plain = local_calls(&build("amazon-chroot", serde_json::json!({})));
        assert!(plain.iter().all(|a| !a.starts_with("kms:")), "{plain:?}");
    }
}
