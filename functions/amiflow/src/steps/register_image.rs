//! RegisterImage: registers the AMI from the build snapshot (reference §5.4): the source's
//! mappings and root device name, or `ami_block_device_mappings` + `root_device_name`
//! (always with `from_scratch`); the root entry gets the snapshot and `root_volume_size`;
//! architecture, virtualization type, kernel/ramdisk, ENA/SR-IOV, boot mode, UEFI, TPM.
//! A retried step finds its image by name and build tag.

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, TpmSupportValues, VolumeType,
};

use super::chroot::{self, SourceMapping};
use super::create_image::{image_name, WAIT};
use super::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "RegisterImage",
    iam_actions: &["ec2:DescribeImages", "ec2:RegisterImage", "ec2:CreateTags"],
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// The mappings to register and the root device name.
pub fn registration_mappings(
    cfg: &amiflow_template::config::chroot::ChrootConfig,
    source: Option<&chroot::SourceImage>,
    snapshot: &str,
) -> Result<(Vec<BlockDeviceMapping>, String), StepError> {
    let generate = cfg.from_scratch || !cfg.ami_block_device_mappings.is_empty();
    let (entries, root): (Vec<SourceMapping>, String) = if generate {
        let root = cfg.root_device_name.clone().filter(|r| !r.is_empty()).ok_or_else(|| {
            StepError::BuildFailed("root_device_name is required with from_scratch or ami_block_device_mappings".into())
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
        let src = source.ok_or_else(|| StepError::BuildFailed("RegisterImage: the source image's mappings are not in the build state".into()))?;
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
        if let Some(v) = m.virtual_name.as_deref().filter(|v| v.starts_with("ephemeral")) {
            out.push(b.virtual_name(v).build());
            continue;
        }
        // Snapshot-backed mappings may not say `encrypted`: it is left out on every entry.
        let mut ebs = EbsBlockDevice::builder().set_delete_on_termination(m.delete_on_termination).set_snapshot_id(m.snapshot_id.clone()).set_volume_size(m.volume_size);
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

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = chroot::config(&state)?.clone();
    let view = EbsView::of(&state)?;
    let region = view.region.clone();
    let vol = chroot::volume(&state, "RegisterImage")?;
    let snapshot = state
        .data
        .snapshots
        .get(&region)
        .and_then(|s| s.first().cloned())
        .ok_or_else(|| StepError::BuildFailed("RegisterImage: no snapshot in the build state (CreateSnapshot did not run)".into()))?;
    let name = image_name(&state, &view);
    let intermediary = view.intermediary_image();
    let ec2 = ctx.ec2(&region);

    let mut lookup = own_filters(&state);
    lookup.push(filter("name", [name.clone()]));
    let found = ec2.describe_images().owners("self").set_filters(Some(lookup)).send().await.map_err(|e| classify("DescribeImages", &name, e))?;
    let id = match found.images().first().and_then(|i| i.image_id()) {
        Some(id) => id.to_string(),
        None => {
            let source = vol.source.as_ref();
            let (mappings, root) = registration_mappings(&cfg, source, &snapshot)?;
            let virt = cfg
                .ami
                .ami_virtualization_type
                .clone()
                .filter(|v| !v.is_empty())
                .or_else(|| source.and_then(|s| s.virtualization_type.clone()))
                .unwrap_or_else(|| "hvm".into());
            let arch = if cfg.from_scratch { Some(cfg.ami_architecture.clone()) } else { source.and_then(|s| s.architecture.clone()) };
            let mut req = ec2
                .register_image()
                .name(&name)
                .root_device_name(&root)
                .set_block_device_mappings(Some(mappings))
                .virtualization_type(&virt)
                .set_architecture(arch.map(|a| ArchitectureValues::from(a.as_str())));
            if !view.ami_description.is_empty() && !intermediary {
                req = req.description(render(&view.ami_description, &state.data, &region));
            }
            if virt != "hvm" {
                if let Some(s) = source {
                    req = req.set_kernel_id(s.kernel_id.clone()).set_ramdisk_id(s.ramdisk_id.clone());
                }
            }
            if view.sriov_support {
                req = req.sriov_net_support("simple");
            }
            if view.ena_support == Some(true) {
                req = req.ena_support(true);
            }
            if let Some(b) = cfg.boot_mode.as_deref().filter(|b| !b.is_empty()) {
                req = req.boot_mode(BootModeValues::from(b));
            }
            if let Some(u) = cfg.uefi_data.as_deref().filter(|u| !u.is_empty()) {
                req = req.uefi_data(u);
            }
            if let Some(t) = cfg.tpm_support.as_deref().filter(|t| !t.is_empty()) {
                req = req.tpm_support(TpmSupportValues::from(t));
            }
            req = req.tag_specifications(tag_spec(ResourceType::Image, &state, &BTreeMap::new()));
            let out = req.send().await.map_err(|e| classify("RegisterImage", &name, e))?;
            let id = out.image_id().unwrap_or_default().to_string();
            // Tags at registration are not honoured everywhere; the build's tags make the
            // image findable by Cleanup and the janitor.
            ec2.create_tags()
                .resources(&id)
                .set_tags(Some(tags_with_build(&state, &BTreeMap::new())))
                .send()
                .await
                .map_err(|e| classify("CreateTags", &id, e))?;
            id
        }
    };
    state.ledger.record(ResourceKind::Image, &region, &id, !intermediary);
    if intermediary {
        state.data.extra.insert("intermediary_image".into(), serde_json::json!({"region": region, "id": id}));
    }
    state.data.amis.insert(region, id);
    begin_wait(&mut state, WAIT);
    Ok(state)
}
