//! WaitVolumeDetached: `NotReady` while the build volume still has an attachment.

use aws_sdk_ec2::types::VolumeAttachmentState;

use crate::builders::chroot;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitVolumeDetached",
    iam_actions: &["ec2:DescribeVolumes"],
    reach: &[],
    calls: None,
    wait: Some(waits::VOLUME_DETACHED),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "WaitVolumeDetached")?;
    let v = crate::resources::volume::describe(ctx, &region, &vol.volume_id)
        .await?
        .ok_or_else(|| StepError::BuildFailed(format!("volume {} is gone", vol.volume_id)))?;
    let attached = v
        .attachments()
        .iter()
        .any(|a| a.state() != Some(&VolumeAttachmentState::Detached));
    if attached {
        return Err(waits::VOLUME_DETACHED
            .not_ready(&state, format!("volume {} is detaching", vol.volume_id)));
    }
    waits::VOLUME_DETACHED.end(&mut state);
    Ok(state)
}
