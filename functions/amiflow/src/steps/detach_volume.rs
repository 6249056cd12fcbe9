//! DetachVolume: detaches the provisioned volume from the host (Packer's early cleanup);
//! a volume already detached is fine.

use super::chroot;
use super::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "DetachVolume",
    iam_actions: &["ec2:DescribeVolumes", "ec2:DetachVolume"],
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub const WAIT: &str = "VolumeDetached";

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "DetachVolume")?;
    let v = chroot::describe_volume(ctx, &region, &vol.volume_id)
        .await?
        .ok_or_else(|| StepError::BuildFailed(format!("volume {} is gone", vol.volume_id)))?;
    chroot::detach(ctx, &region, &v).await?;
    begin_wait(&mut state, WAIT);
    Ok(state)
}
