//! DetachVolume: detaches the provisioned volume from the host (Packer's early cleanup);
//! a volume already detached is fine.

use crate::builders::chroot;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "DetachVolume",
    iam_actions: &["ec2:DescribeVolumes", "ec2:DetachVolume"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "DetachVolume")?;
    let v = crate::resources::volume::describe(ctx, &region, &vol.volume_id)
        .await?
        .ok_or_else(|| StepError::BuildFailed(format!("volume {} is gone", vol.volume_id)))?;
    crate::resources::volume::detach(ctx, &region, &v).await?;
    waits::VOLUME_DETACHED.begin(&mut state);
    Ok(state)
}
