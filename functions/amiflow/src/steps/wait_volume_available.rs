//! WaitVolumeAvailable: `NotReady` while the build volume is `creating`.

use aws_sdk_ec2::types::VolumeState;

use super::chroot;
use super::create_volume::WAIT;
use super::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitVolumeAvailable",
    iam_actions: &["ec2:DescribeVolumes"],
    wait: Some(VOLUME_WAIT),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// Polls every 2 s growing to 10 s, ~18 min: above Packer's 15 s × 40.
pub const VOLUME_WAIT: WaitPolicy = WaitPolicy {
    interval_seconds: 2,
    backoff_rate: 1.5,
    max_delay_seconds: 10,
    max_attempts: 120,
};
/// Packer's VolumeAvailable waiter (SDK v1: 15 s × 40).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(600);

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "WaitVolumeAvailable")?;
    let v = chroot::describe_volume(ctx, &region, &vol.volume_id).await?;
    match v.as_ref().and_then(|v| v.state()) {
        Some(VolumeState::Available) => {
            end_wait(&mut state, WAIT);
            Ok(state)
        }
        Some(VolumeState::Creating) | None => Err(not_ready(
            &state,
            WAIT,
            DEFAULT_BUDGET,
            format!("volume {} is being created", vol.volume_id),
        )),
        Some(other) => Err(StepError::BuildFailed(format!(
            "volume {} is {} instead of available",
            vol.volume_id,
            other.as_str()
        ))),
    }
}
