//! RegisterImage: registers the AMI, tagged with the build; WaitImageAvailable follows.
//!
//! - amazon-ebssurrogate (Packer's StepRegisterAMI): the block devices are
//!   `ami_block_device_mappings` overlaid by the non-omitted launch mappings (launch wins)
//!   with the snapshots SnapshotVolumes took, `Encrypted`/`KmsKeyId` cleared (they come
//!   with the snapshot); `ami_root_device.source_device_name` becomes
//!   `ami_root_device.device_name`, the root. With `use_create_image`, CreateImage on the
//!   stopped instance with the same mappings instead.
//! - amazon-chroot: from the build snapshot, with the source's mappings and
//!   root device name, or `ami_block_device_mappings` + `root_device_name` (always with
//!   `from_scratch`); the root entry gets the snapshot and `root_volume_size`; architecture,
//!   virtualization type, kernel/ramdisk, ENA/SR-IOV, boot mode, UEFI, TPM.
//! - amazon-instance: from the uploaded manifest `<bucket>/<prefix>.manifest.xml`; with
//!   `delete_bundle_after_register`, the bundle objects are removed once registered.
//!
//! The image is an artifact in the ledger at once: Cleanup deregisters it if a later step
//! fails. EC2 takes no ClientToken here: a retried step finds its image by name and owner.

use amiflow_template::config::BlockDevice as TypedDevice;
use amiflow_template::BuilderConfig;
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, TpmSupportValues,
    VolumeType,
};

use super::create_image::{create_image_error, image_name};
use super::swap_volumes::swaps;
use crate::builders::block_devices::mapping;
use crate::builders::chroot::{self, SourceMapping};
use crate::builders::launch_volumes::{same_device, snapshot_ids};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "RegisterImage",
    iam_actions: &[
        "ec2:RegisterImage",
        "ec2:CreateImage",
        "ec2:DescribeImages",
        "ec2:CreateTags",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:DeleteObject",
        // Tags may use sensitive variables (resources/sensitive_var.rs).
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeImages (a retry's own image) and CreateTags
/// always; CreateImage for amazon-ebssurrogate with `use_create_image`, else RegisterImage;
/// amazon-instance's `delete_bundle_after_register` lists and deletes the bundle's objects.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let mut calls = vec!["ec2:DescribeImages"];
    calls.push(if swaps(build) {
        "ec2:CreateImage"
    } else {
        "ec2:RegisterImage"
    });
    calls.push("ec2:CreateTags");
    if matches!(&build.config, BuilderConfig::Instance(c) if c.delete_bundle_after_register) {
        calls.extend(["s3:ListBucket", "s3:DeleteObject"]);
    }
    calls
}

/// SR-IOV and ENA as the AMI config asks (ENA only when set true: unset leaves EC2's default).
fn with_network_support(
    req: aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder,
    ami: &amiflow_template::config::AmiConfig,
) -> aws_sdk_ec2::operation::register_image::builders::RegisterImageFluentBuilder {
    let req = if ami.sriov_support {
        req.sriov_net_support("simple")
    } else {
        req
    };
    if ami.ena_support == Some(true) {
        req.ena_support(true)
    } else {
        req
    }
}

/// amazon-ebssurrogate's AMI block devices (Packer's `combineDevices` + root rename).
pub fn surrogate_mappings(
    ami: &[TypedDevice],
    launch: &[TypedDevice],
    snapshots: &BTreeMap<String, String>,
    root_source: &str,
    root_name: &str,
    with_snapshots: bool,
) -> Result<Vec<BlockDeviceMapping>, StepError> {
    let mut out: Vec<(String, BlockDeviceMapping)> = Vec::new();
    for d in ami {
        out.push((d.device_name.clone(), mapping(d, &d.device_name, None)));
    }
    for d in launch.iter().filter(|d| !d.omit_from_artifact) {
        let snap = if with_snapshots && !d.no_device && d.virtual_name.is_none() {
            Some(snapshots.iter().find(|(dev, _)| same_device(dev, &d.device_name)).map(|(_, s)| s.as_str()).ok_or_else(|| {
                StepError::BuildFailed(format!("RegisterImage: no snapshot of launch device {} in the state (SnapshotVolumes must run first)", d.device_name))
            })?)
        } else {
            None
        };
        let name = if same_device(&d.device_name, root_source) {
            root_name.to_string()
        } else {
            d.device_name.clone()
        };
        let m = mapping(d, &name, snap);
        // Packer combines by device name first (launch wins), then renames the root.
        out.retain(|(n, _)| !same_device(n, &d.device_name) && !same_device(n, &name));
        out.push((name, m));
    }
    Ok(out.into_iter().map(|(_, m)| m).collect())
}

/// The image an earlier attempt of this step registered: by name AND this build's tags
/// (tagged at creation), so an image of that name someone else registered since PreValidate
/// is never taken for ours (RegisterImage then fails on the duplicate name instead).
async fn find_own(
    ctx: &Ctx,
    state: &BuildState,
    region: &str,
    name: &str,
) -> Result<Option<String>, StepError> {
    let found = ctx
        .ec2(region)
        .describe_images()
        .owners("self")
        .set_filters(Some(own_filters(state)))
        .filters(filter("name", [name.to_string()]))
        .filters(filter("state", ["pending", "available"]))
        .send()
        .await
        .map_err(|e| classify("DescribeImages", name, e))?;
    Ok(found
        .images()
        .first()
        .and_then(|i| i.image_id())
        .map(String::from))
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    let region = cfg.build_region().to_string();
    let name = image_name(&state);
    let intermediary = cfg.intermediary_image();
    let ec2 = ctx.ec2(&region);
    let id = match find_own(ctx, &state, &region, &name).await? {
        Some(id) => id,
        None => match &state.build.config {
            BuilderConfig::EbsSurrogate(c) => {
                let root = c.ami_root_device.clone().unwrap_or_default();
                if swaps(&state.build) {
                    let instance = state.data.instance_id.clone().ok_or_else(|| {
                        StepError::BuildFailed("RegisterImage: no instance in the state".into())
                    })?;
                    let devices = surrogate_mappings(
                        &c.ami_block_device_mappings,
                        &c.launch_block_device_mappings,
                        &BTreeMap::new(),
                        &root.source_device_name,
                        &root.device_name,
                        false,
                    )?;
                    let mut tags = if c.skip_ami_run_tags {
                        BTreeMap::new()
                    } else {
                        render_tags(
                            &ctx.secrets,
                            "run_tags",
                            &c.run.run_tags,
                            &state.data,
                            &region,
                        )?
                    };
                    tags.extend(build_tags(&state));
                    let request = ec2
                        .create_image()
                        .instance_id(&instance)
                        .name(&name)
                        .set_block_device_mappings(Some(devices));
                    let out = crate::steps::create_image::send_tagged(&mut state, request, &tags)
                        .await
                        .map_err(|e| create_image_error(&instance, &name, e))?;
                    out.image_id().unwrap_or_default().to_string()
                } else {
                    let devices = surrogate_mappings(
                        &c.ami_block_device_mappings,
                        &c.launch_block_device_mappings,
                        &snapshot_ids(&state),
                        &root.source_device_name,
                        &root.device_name,
                        true,
                    )?;
                    let mut req = ec2
                        .register_image()
                        .name(&name)
                        .architecture(ArchitectureValues::from(c.ami_architecture.as_str()))
                        .root_device_name(&root.device_name)
                        .set_virtualization_type(c.ami.ami_virtualization_type.clone())
                        .set_block_device_mappings(Some(devices))
                        .set_boot_mode(c.boot_mode.as_deref().map(BootModeValues::from))
                        .set_uefi_data(c.uefi_data.clone())
                        .set_tpm_support(c.tpm_support.as_deref().map(TpmSupportValues::from))
                        // Tagged at creation: the roles may tag later only what carries the tags.
                        .tag_specifications(tag_spec(
                            ResourceType::Image,
                            &state,
                            &BTreeMap::new(),
                        ));
                    req = with_network_support(req, &c.ami);
                    let out = req
                        .send()
                        .await
                        .map_err(|e| classify("RegisterImage", &name, e))?;
                    out.image_id().unwrap_or_default().to_string()
                }
            }
            BuilderConfig::Instance(c) => {
                let location = state
                    .data
                    .extra
                    .get("remote_manifest_path")
                    .and_then(|v| v.as_str())
                    .map(String::from)
                    .ok_or_else(|| StepError::BuildFailed("RegisterImage: no uploaded manifest in the state (UploadBundle must run first)".into()))?;
                let devices: Vec<BlockDeviceMapping> = c
                    .ami_block_device_mappings
                    .iter()
                    .map(|d| mapping(d, &d.device_name, None))
                    .collect();
                let mut req = ec2
                    .register_image()
                    .name(&name)
                    .image_location(&location)
                    .set_virtualization_type(c.ami.ami_virtualization_type.clone())
                    .set_block_device_mappings(Some(devices).filter(|d| !d.is_empty()))
                    .set_tpm_support(c.tpm_support.as_deref().map(TpmSupportValues::from))
                    .tag_specifications(tag_spec(ResourceType::Image, &state, &BTreeMap::new()));
                req = with_network_support(req, &c.ami);
                let out = req
                    .send()
                    .await
                    .map_err(|e| classify("RegisterImage", &location, e))?;
                out.image_id().unwrap_or_default().to_string()
            }
            BuilderConfig::Chroot(c) => register_chroot(ctx, &state, c, &name, &region).await?,
            other => {
                return Err(StepError::BuildFailed(format!(
                    "RegisterImage has no registration for {}",
                    other.builder_type().as_str()
                )));
            }
        },
    };
    state
        .ledger
        .record(ResourceKind::Image, &region, &id, !intermediary);
    // Tagged at creation above, but not by every emulator (moto drops RegisterImage's tags):
    // tag explicitly too so Cleanup and the janitor find it.
    let tagged = ec2
        .create_tags()
        .resources(&id)
        .set_tags(Some(tags_with_build(&state, &BTreeMap::new())))
        .send()
        .await
        .map_err(|e| classify("CreateTags", &id, e));
    match tagged {
        Ok(_) => {}
        // A retry finds the image by name and tags it. A permanent failure: this handler's
        // state (and ledger) is dropped with its error, and nothing could find the untagged
        // image afterwards, so it goes now.
        Err(StepError::BuildFailed(why)) => {
            crate::resources::image::destroy(ctx, &region, &id).await?;
            return Err(StepError::BuildFailed(format!(
                "{why} (the image {id} it was for was removed)"
            )));
        }
        Err(retried) => return Err(retried),
    }
    if intermediary {
        state.data.extra.insert(
            "intermediary_image".into(),
            serde_json::json!({"region": region, "id": id}),
        );
    }
    state.data.amis.insert(region.clone(), id);
    if let BuilderConfig::Instance(c) = &state.build.config {
        if c.delete_bundle_after_register {
            crate::builders::instance_store::delete_bundle(ctx, &mut state).await?;
        }
    }
    waits::IMAGE_AVAILABLE.begin(&mut state);
    Ok(state)
}

/// The mappings to register and the root device name.
pub fn registration_mappings(
    cfg: &amiflow_template::config::chroot::ChrootConfig,
    source: Option<&chroot::SourceImage>,
    snapshot: &str,
) -> Result<(Vec<BlockDeviceMapping>, String), StepError> {
    let generate = cfg.from_scratch || !cfg.ami_block_device_mappings.is_empty();
    let (entries, root): (Vec<SourceMapping>, String) = if generate {
        let root = cfg
            .root_device_name
            .clone()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                StepError::BuildFailed(
                    "root_device_name is required with from_scratch or ami_block_device_mappings"
                        .into(),
                )
            })?;
        let entries = cfg
            .ami_block_device_mappings
            .iter()
            .map(|d| SourceMapping {
                device_name: d.device_name.clone(),
                snapshot_id: d.snapshot_id.clone(),
                volume_size: d.volume_size.map(|s| s as i32),
                volume_type: d.volume_type.clone(),
                iops: d.iops.map(|s| s as i32),
                throughput: d.throughput.map(|s| s as i32),
                delete_on_termination: Some(d.delete_on_termination),
                virtual_name: d.virtual_name.clone(),
                no_device: d.no_device,
            })
            .collect();
        (entries, root)
    } else {
        let src = source.ok_or_else(|| {
            StepError::BuildFailed(
                "RegisterImage: the source image's mappings are not in the build state".into(),
            )
        })?;
        (src.mappings.clone(), src.root_device_name.clone())
    };
    let mut out = Vec::new();
    let mut root_found = false;
    for mut m in entries {
        if m.device_name == root {
            root_found = true;
            m.snapshot_id = Some(snapshot.to_string());
            if let Some(size) = cfg.root_volume_size.map(|s| s as i32) {
                if generate || size > m.volume_size.unwrap_or(0) {
                    m.volume_size = Some(size);
                }
            }
        }
        let b = BlockDeviceMapping::builder().device_name(&m.device_name);
        if m.no_device {
            out.push(b.no_device("").build());
            continue;
        }
        if let Some(v) = m
            .virtual_name
            .as_deref()
            .filter(|v| v.starts_with("ephemeral"))
        {
            out.push(b.virtual_name(v).build());
            continue;
        }
        // Snapshot-backed mappings may not say `encrypted`: it is left out on every entry.
        let mut ebs = EbsBlockDevice::builder()
            .set_delete_on_termination(m.delete_on_termination)
            .set_snapshot_id(m.snapshot_id.clone())
            .set_volume_size(m.volume_size);
        if let Some(t) = &m.volume_type {
            ebs = ebs.volume_type(VolumeType::from(t.as_str()));
            if matches!(t.as_str(), "io1" | "io2" | "gp3") {
                ebs = ebs.set_iops(m.iops);
            }
            if t == "gp3" {
                ebs = ebs.set_throughput(m.throughput);
            }
        }
        out.push(b.ebs(ebs.build()).build());
    }
    if !root_found {
        return Err(StepError::BuildFailed(format!(
            "no block device mapping is named like the root device {root}: add it to ami_block_device_mappings"
        )));
    }
    Ok((out, root))
}

/// amazon-chroot: registers the build snapshot (the source's mappings or the template's).
async fn register_chroot(
    ctx: &Ctx,
    state: &BuildState,
    cfg: &amiflow_template::config::chroot::ChrootConfig,
    name: &str,
    region: &str,
) -> Result<String, StepError> {
    let vol = chroot::volume(state, "RegisterImage")?;
    let snapshot = state
        .data
        .snapshots
        .get(region)
        .and_then(|s| s.first().cloned())
        .ok_or_else(|| {
            StepError::BuildFailed(
                "RegisterImage: no snapshot in the build state (CreateSnapshot did not run)".into(),
            )
        })?;
    let intermediary = state.build.config.intermediary_image();
    let ec2 = ctx.ec2(region);
    let source = vol.source.as_ref();
    let (mappings, root) = registration_mappings(cfg, source, &snapshot)?;
    let virt = cfg
        .ami
        .ami_virtualization_type
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| source.and_then(|s| s.virtualization_type.clone()))
        .unwrap_or_else(|| "hvm".into());
    let arch = if cfg.from_scratch {
        Some(cfg.ami_architecture.clone())
    } else {
        source.and_then(|s| s.architecture.clone())
    };
    let mut req = ec2
        .register_image()
        .name(name)
        .root_device_name(&root)
        .set_block_device_mappings(Some(mappings))
        .virtualization_type(&virt)
        .set_architecture(arch.map(|a| ArchitectureValues::from(a.as_str())));
    if let Some(d) = cfg
        .ami
        .ami_description
        .as_deref()
        .filter(|d| !d.is_empty() && !intermediary)
    {
        req = req.description(render("ami_description", d, &state.data, region)?);
    }
    if virt != "hvm" {
        if let Some(s) = source {
            req = req
                .set_kernel_id(s.kernel_id.clone())
                .set_ramdisk_id(s.ramdisk_id.clone());
        }
    }
    req = with_network_support(req, &cfg.ami);
    if let Some(b) = cfg.boot_mode.as_deref().filter(|b| !b.is_empty()) {
        req = req.boot_mode(BootModeValues::from(b));
    }
    if let Some(u) = cfg.uefi_data.as_deref().filter(|u| !u.is_empty()) {
        req = req.uefi_data(u);
    }
    if let Some(t) = cfg.tpm_support.as_deref().filter(|t| !t.is_empty()) {
        req = req.tpm_support(TpmSupportValues::from(t));
    }
    req = req.tag_specifications(tag_spec(ResourceType::Image, state, &BTreeMap::new()));
    let out = req
        .send()
        .await
        .map_err(|e| classify("RegisterImage", name, e))?;
    Ok(out.image_id().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str) -> TypedDevice {
        TypedDevice {
            device_name: name.into(),
            volume_size: Some(8),
            volume_type: Some("gp3".into()),
            delete_on_termination: true,
            ..Default::default()
        }
    }

    #[test]
    fn launch_devices_win_the_root_is_renamed_and_omitted_ones_stay_out() {
        let ami = vec![
            TypedDevice {
                device_name: "/dev/xvdf".into(),
                volume_size: Some(100),
                ..Default::default()
            },
            TypedDevice {
                device_name: "/dev/sdb".into(),
                virtual_name: Some("ephemeral0".into()),
                ..Default::default()
            },
        ];
        let mut omitted = dev("/dev/xvdg");
        omitted.omit_from_artifact = true;
        let mut encrypted = dev("/dev/xvdf");
        encrypted.encrypted = Some(true);
        encrypted.kms_key_id = Some("alias/k".into());
        let launch = vec![encrypted, omitted];
        let snaps = BTreeMap::from([
            ("/dev/xvdf".to_string(), "snap-1".to_string()),
            ("/dev/xvdg".to_string(), "snap-2".to_string()),
        ]);
        let m = surrogate_mappings(&ami, &launch, &snaps, "/dev/xvdf", "/dev/xvda", true).unwrap();
        let names: Vec<&str> = m.iter().filter_map(|d| d.device_name()).collect();
        assert_eq!(
            names,
            vec!["/dev/sdb", "/dev/xvda"],
            "the AMI's /dev/xvdf is replaced by the launch device, renamed"
        );
        let root = m
            .iter()
            .find(|d| d.device_name() == Some("/dev/xvda"))
            .unwrap()
            .ebs()
            .unwrap();
        assert_eq!(
            (
                root.snapshot_id(),
                root.encrypted(),
                root.kms_key_id(),
                root.volume_size()
            ),
            (Some("snap-1"), None, None, Some(8))
        );
        assert_eq!(m[0].virtual_name(), Some("ephemeral0"));
        let missing = surrogate_mappings(
            &[],
            &[dev("/dev/xvdh")],
            &snaps,
            "/dev/xvdf",
            "/dev/xvda",
            true,
        )
        .unwrap_err();
        assert!(missing.message().contains("/dev/xvdh"), "{missing:?}");
    }

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn local_calls_follow_create_image_and_the_bundle_removal() {
        let surrogate = |create_image: bool| {
            local_calls(&build(
                "amazon-ebssurrogate",
                serde_json::json!({"use_create_image": create_image}),
            ))
        };
        assert_eq!(
            surrogate(true),
            vec!["ec2:DescribeImages", "ec2:CreateImage", "ec2:CreateTags"]
        );
        assert_eq!(
            surrogate(false),
            vec!["ec2:DescribeImages", "ec2:RegisterImage", "ec2:CreateTags"]
        );
        assert_eq!(
            local_calls(&build("amazon-chroot", serde_json::json!({}))),
            surrogate(false)
        );
        let instance = |delete: bool| {
            local_calls(&build(
                "amazon-instance",
                serde_json::json!({"delete_bundle_after_register": delete}),
            ))
        };
        assert_eq!(instance(false), surrogate(false));
        assert_eq!(
            instance(true),
            vec![
                "ec2:DescribeImages",
                "ec2:RegisterImage",
                "ec2:CreateTags",
                "s3:ListBucket",
                "s3:DeleteObject"
            ]
        );
    }
}
