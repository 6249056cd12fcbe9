//! ModifySnapshotAttributes (amazon-ebsvolume): each `ebs_volumes` entry's
//! `snapshot_users` / `snapshot_groups` get create-volume permission on its snapshot.

use amiflow_template::config::EbsVolumeMapping;
use amiflow_template::BuilderConfig;
use aws_sdk_ec2::types::{OperationType, SnapshotAttributeName};

use crate::builders::launch_volumes::{ebsvolume, same_device, snapshot_ids};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "ModifySnapshotAttributes",
    iam_actions: &["ec2:ModifySnapshotAttribute"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: ModifySnapshotAttribute when an `ebs_volumes` entry
/// shares its snapshot ([`shares`]: `snapshot_volume` with `snapshot_users` or
/// `snapshot_groups`); else nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    match &build.config {
        BuilderConfig::EbsVolume(c) if c.ebs_volumes.iter().any(shares) => {
            vec!["ec2:ModifySnapshotAttribute"]
        }
        _ => Vec::new(),
    }
}

/// Whether this entry's snapshot gets create-volume permission for someone.
fn shares(v: &EbsVolumeMapping) -> bool {
    v.snapshot_volume && !(v.snapshot_users.is_empty() && v.snapshot_groups.is_empty())
}

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let Some(cfg) = ebsvolume(&state) else {
        return Ok(state);
    };
    let region = cfg.access.region.clone().unwrap_or_default();
    let snaps = snapshot_ids(&state);
    for v in cfg.ebs_volumes.iter().filter(|v| shares(v)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn shares_only_snapshots_with_users_or_groups() {
        let volume = |snapshot: bool, users: &[&str]| {
            local_calls(&build(
                "amazon-ebsvolume",
                serde_json::json!({"ebs_volumes": [{"device_name": "/dev/xvdf",
                    "snapshot_volume": snapshot, "snapshot_users": users}]}),
            ))
        };
        assert_eq!(
            volume(true, &["123456789012"]),
            vec!["ec2:ModifySnapshotAttribute"]
        );
        assert!(volume(true, &[]).is_empty());
        assert!(volume(false, &["123456789012"]).is_empty());
    }
}
