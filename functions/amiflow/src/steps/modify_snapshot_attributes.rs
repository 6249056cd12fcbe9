//! ModifySnapshotAttributes (amazon-ebsvolume): each `ebs_volumes` entry's
//! `snapshot_users` / `snapshot_groups` get create-volume permission on its snapshot.

use aws_sdk_ec2::types::{OperationType, SnapshotAttributeName};

use crate::builders::launch_volumes::{ebsvolume, same_device, snapshot_ids};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "ModifySnapshotAttributes",
    iam_actions: &["ec2:ModifySnapshotAttribute"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let Some(cfg) = ebsvolume(&state) else {
        return Ok(state);
    };
    let region = cfg.access.region.clone().unwrap_or_default();
    let snaps = snapshot_ids(&state);
    for v in cfg.ebs_volumes.iter().filter(|v| v.snapshot_volume) {
        if v.snapshot_users.is_empty() && v.snapshot_groups.is_empty() {
            continue;
        }
        let Some(snap) = snaps
            .iter()
            .find(|(d, _)| same_device(d, &v.device.device_name))
            .map(|(_, s)| s.clone())
        else {
            return Err(StepError::BuildFailed(format!(
                "ModifySnapshotAttributes: no snapshot of {} in the state",
                v.device.device_name
            )));
        };
        // The OperationType + UserIds/GroupNames form (see ModifyImageAttributes).
        ctx.ec2(&region)
            .modify_snapshot_attribute()
            .snapshot_id(&snap)
            .attribute(SnapshotAttributeName::CreateVolumePermission)
            .operation_type(OperationType::Add)
            .set_user_ids(Some(v.snapshot_users.clone()).filter(|u| !u.is_empty()))
            .set_group_names(Some(v.snapshot_groups.clone()).filter(|g| !g.is_empty()))
            .send()
            .await
            .map_err(|e| classify("ModifySnapshotAttribute (createVolumePermission)", &snap, e))?;
    }
    Ok(state)
}
