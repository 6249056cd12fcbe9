//! WaitVolumeAttached: `NotReady` until the build volume is `attached` to the host.

use aws_sdk_ec2::types::VolumeAttachmentState;

use crate::builders::chroot;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitVolumeAttached",
    iam_actions: &["ec2:DescribeVolumes"],
    reach: &[],
    calls: None,
    wait: Some(waits::VOLUME_ATTACHED),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let host = chroot::host(&state, "WaitVolumeAttached")?;
    let vol = chroot::volume(&state, "WaitVolumeAttached")?;
    let v = crate::resources::volume::describe(ctx, &region, &vol.volume_id)
        .await?
        .ok_or_else(|| StepError::BuildFailed(format!("volume {} is gone", vol.volume_id)))?;
    match crate::resources::volume::attachment_to(&v, &host.instance_id) {
        Some((_, VolumeAttachmentState::Attached)) => {
            waits::VOLUME_ATTACHED.end(&mut state);
            Ok(state)
        }
        // Just after AttachVolume, DescribeVolumes may not show the attachment yet.
        None | Some((_, VolumeAttachmentState::Attaching)) => Err(waits::VOLUME_ATTACHED
            .not_ready(
                &state,
                format!(
                    "volume {} is attaching to {}",
                    vol.volume_id, host.instance_id
                ),
            )),
        other => Err(StepError::BuildFailed(format!(
            "volume {} is not attaching to {} ({other:?})",
            vol.volume_id, host.instance_id
        ))),
    }
}
