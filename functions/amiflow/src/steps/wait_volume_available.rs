//! WaitVolumeAvailable: `NotReady` while the build volume is `creating`.

use aws_sdk_ec2::types::VolumeState;

use crate::builders::chroot;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitVolumeAvailable",
    iam_actions: &["ec2:DescribeVolumes"],
    reach: &[],
    calls: None,
    wait: Some(waits::VOLUME_AVAILABLE),
    timeout_seconds: 60,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "WaitVolumeAvailable")?;
    let v = crate::resources::volume::describe(ctx, &region, &vol.volume_id).await?;
    match v.as_ref().and_then(|v| v.state()) {
        Some(VolumeState::Available) => {
            waits::VOLUME_AVAILABLE.end(&mut state);
            Ok(state)
        }
        Some(VolumeState::Creating) | None => Err(waits::VOLUME_AVAILABLE
            .not_ready(&state, format!("volume {} is being created", vol.volume_id))),
        Some(other) => Err(StepError::BuildFailed(format!(
            "volume {} is {} instead of available",
            vol.volume_id,
            other.as_str()
        ))),
    }
}
