//! EBS volumes: amazon-chroot's build volume (CreateVolume, attached to a host the build
//! does not own), amazon-ebssurrogate's and amazon-ebsvolume's launch volumes (kept ones
//! are the ebsvolume artifact). An attached volume is detached by the sweep and cannot go
//! until it is available.

use aws_sdk_ec2::types::{Volume, VolumeAttachmentState, VolumeState};

use super::{is_artifact, ledger_ids, Kind, Reach, Scope, Swept};
use crate::error::{classify, error_code, or_absent};
use crate::state::{Ledger, ResourceKind};
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidVolume.NotFound";

/// What finding, detaching and removing volumes needs.
/// Deleting a volume: only the builds' own; attaching and detaching: the builds' own
/// volumes and instances, and the stack's chroot build host.
pub const REACH: &[(&str, Reach)] = &[
    ("ec2:DeleteVolume", Reach::BuildTagged),
    ("ec2:AttachVolume", Reach::BuildTaggedOrBuildHost),
    ("ec2:DetachVolume", Reach::BuildTaggedOrBuildHost),
];

pub const CLEANUP_ACTIONS: &[&str] = &["ec2:DescribeVolumes", "ec2:DeleteVolume", DETACH_ACTION];

/// Whether the source instance launches a volume that outlives it (`delete_on_termination:
/// false` in a launch mapping): RunInstances makes it, and only a search by tag finds it.
pub fn launch_volume_outlives_instance(config: &amiflow_template::BuilderConfig) -> bool {
    config
        .launch_block_device_mappings()
        .iter()
        .any(|d| !d.delete_on_termination)
}

/// The sweep detaches a build's volume still attached to an instance it does not
/// terminate (amazon-chroot's, on the build host).
pub const DETACH_ACTION: &str = "ec2:DetachVolume";

/// The volume, or None when EC2 does not know it.
pub async fn describe(ctx: &Ctx, region: &str, id: &str) -> Result<Option<Volume>, StepError> {
    let out = ctx
        .ec2(region)
        .describe_volumes()
        .volume_ids(id)
        .send()
        .await;
    Ok(or_absent(out, &[NOT_FOUND], "DescribeVolumes", id)?
        .and_then(|out| out.volumes().first().cloned()))
}

/// The volume's attachment to `instance`, if any, and its state.
pub fn attachment_to(v: &Volume, instance: &str) -> Option<(String, VolumeAttachmentState)> {
    v.attachments()
        .iter()
        .find(|a| a.instance_id() == Some(instance))
        .map(|a| {
            (
                a.device().unwrap_or_default().to_string(),
                a.state()
                    .cloned()
                    .unwrap_or(VolumeAttachmentState::Attached),
            )
        })
}

/// Detaches a volume from whatever instance holds it (with InstanceId: emulators answer
/// 500 without it). Ok(true) when a detach was asked for.
pub async fn detach(ctx: &Ctx, region: &str, v: &Volume) -> Result<bool, StepError> {
    let id = v.volume_id().unwrap_or_default();
    let mut asked = false;
    for a in v.attachments() {
        if matches!(
            a.state(),
            Some(VolumeAttachmentState::Detached | VolumeAttachmentState::Detaching)
        ) {
            continue;
        }
        let mut req = ctx.ec2(region).detach_volume().volume_id(id);
        if let Some(i) = a.instance_id() {
            req = req.instance_id(i);
        }
        if let Some(d) = a.device() {
            req = req.device(d);
        }
        let gone = ["IncorrectState", "InvalidAttachment.NotFound", NOT_FOUND];
        asked |= or_absent(req.send().await, &gone, "DetachVolume", id)?.is_some();
    }
    Ok(asked)
}

/// Deletes a volume: Ok(true) when deleted, Ok(false) when gone already, `NotReady` while
/// it is still attached.
pub async fn remove(ctx: &Ctx, region: &str, id: &str) -> Result<bool, StepError> {
    match ctx.ec2(region).delete_volume().volume_id(id).send().await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(false),
        Err(e) if error_code(&e) == Some("VolumeInUse") => Err(StepError::NotReady(id.into())),
        Err(e) => Err(classify("DeleteVolume", id, e)),
    }
}

/// Removes the scope's volumes where the build launched, but not artifacts nor the ones
/// to keep; attached ones are detached and waited for.
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    for region in scope.launch_regions() {
        let tagged = if scope.searches(Kind::Volume) {
            ctx.ec2(region)
                .describe_volumes()
                .set_filters(Some(scope.filters()))
                .send()
                .await
                .map_err(|e| classify("DescribeVolumes", &scope.execution, e))?
                .volumes
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut in_use = Vec::new();
        let mut volumes: Vec<String> = Vec::new();
        for v in tagged.iter().filter(|v| !is_artifact(v.tags())) {
            let id = v.volume_id().unwrap_or_default().to_string();
            match v.state() {
                Some(VolumeState::Available) => volumes.push(id),
                Some(VolumeState::InUse) => {
                    // A chroot build volume stays attached to a host the build does not own.
                    detach(ctx, region, v).await?;
                    in_use.push(id)
                }
                Some(VolumeState::Creating) => in_use.push(id),
                _ => {}
            }
        }
        for id in ledger_ids(ledger, ResourceKind::Volume, region) {
            if !volumes.contains(&id) && !in_use.contains(&id) {
                volumes.push(id);
            }
        }
        for v in volumes {
            if scope.keep_volumes.contains(&v) {
                swept.kept.push(format!("volume {v} ({region})"));
                continue;
            }
            match remove(ctx, region, &v).await {
                Ok(true) => swept.removed.push(format!("volume {v} ({region})")),
                Ok(false) => {}
                Err(StepError::NotReady(_)) => {
                    // Known from the ledger alone (no tag search) and still attached: to the
                    // build host, when the chain stopped before DetachVolume.
                    if let Some(attached) = describe(ctx, region, &v).await? {
                        detach(ctx, region, &attached).await?;
                    }
                    in_use.push(v)
                }
                Err(e) => return Err(e),
            }
        }
        if !in_use.is_empty() {
            swept.not_yet.push(format!(
                "volumes {} ({region}) are still attached",
                in_use.join(", ")
            ));
        }
    }
    Ok(swept)
}
