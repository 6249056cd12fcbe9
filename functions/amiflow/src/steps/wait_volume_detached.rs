//! WaitVolumeDetached: `NotReady` while the build volume still has an attachment.

use aws_sdk_ec2::types::VolumeAttachmentState;

use super::chroot;
use super::detach_volume::WAIT;
use super::prelude::*;
use super::wait_volume_available::{DEFAULT_BUDGET, VOLUME_WAIT};

pub const SPEC: StepSpec = StepSpec {
    name: "WaitVolumeDetached",
    iam_actions: &["ec2:DescribeVolumes"],
    wait: Some(VOLUME_WAIT),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "WaitVolumeDetached")?;
    let v = chroot::describe_volume(ctx, &region, &vol.volume_id)
        .await?
        .ok_or_else(|| StepError::BuildFailed(format!("volume {} is gone", vol.volume_id)))?;
    let attached = v
        .attachments()
        .iter()
        .any(|a| a.state() != Some(&VolumeAttachmentState::Detached));
    if attached {
        return Err(not_ready(
            &state,
            WAIT,
            DEFAULT_BUDGET,
            format!("volume {} is detaching", vol.volume_id),
        ));
    }
    end_wait(&mut state, WAIT);
    Ok(state)
}
