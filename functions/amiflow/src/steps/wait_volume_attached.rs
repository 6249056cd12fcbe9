//! WaitVolumeAttached: `NotReady` until the build volume is `attached` to the host.

use aws_sdk_ec2::types::VolumeAttachmentState;

use super::attach_volume::WAIT;
use super::chroot;
use super::prelude::*;
use super::wait_volume_available::{DEFAULT_BUDGET, VOLUME_WAIT};

pub const SPEC: StepSpec = StepSpec {
    name: "WaitVolumeAttached",
    iam_actions: &["ec2:DescribeVolumes"],
    wait: Some(VOLUME_WAIT),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let host = chroot::host(&state, "WaitVolumeAttached")?;
    let vol = chroot::volume(&state, "WaitVolumeAttached")?;
    let v = chroot::describe_volume(ctx, &region, &vol.volume_id)
        .await?
        .ok_or_else(|| StepError::BuildFailed(format!("volume {} is gone", vol.volume_id)))?;
    match chroot::attachment_to(&v, &host.instance_id) {
        Some((_, VolumeAttachmentState::Attached)) => {
            end_wait(&mut state, WAIT);
            Ok(state)
        }
        // Just after AttachVolume, DescribeVolumes may not show the attachment yet.
        None | Some((_, VolumeAttachmentState::Attaching)) => Err(not_ready(
            &state,
            WAIT,
            DEFAULT_BUDGET,
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
