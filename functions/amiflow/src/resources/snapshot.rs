//! EBS snapshots: SnapshotVolumes' and CreateSnapshot's (an image's until registered,
//! amazon-ebsvolume's artifact), and those behind every image. A snapshot an image still
//! holds cannot go yet.

use super::{is_artifact, ledger_ids, union, Kind, Reach, Scope, Swept};
use crate::error::{classify, error_code};
use crate::state::{Ledger, ResourceKind};
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidSnapshot.NotFound";

/// What finding and removing snapshots needs.
/// Deleting or sharing a snapshot: only the builds' own.
pub const REACH: &[(&str, Reach)] = &[
    ("ec2:DeleteSnapshot", Reach::BuildTagged),
    ("ec2:ModifySnapshotAttribute", Reach::BuildTagged),
];

pub const CLEANUP_ACTIONS: &[&str] = &["ec2:DescribeSnapshots", "ec2:DeleteSnapshot"];

/// Whether an amazon-ebsvolume build snapshots one of its volumes (`snapshot_volume`).
pub fn made_by_ebsvolume(config: &amiflow_template::BuilderConfig) -> bool {
    matches!(config, amiflow_template::BuilderConfig::EbsVolume(c)
        if c.ebs_volumes.iter().any(|v| v.snapshot_volume))
}

/// Deletes a snapshot: Ok(true) when deleted, Ok(false) when gone already, `NotReady`
/// while an image still uses it.
pub async fn remove(ctx: &Ctx, region: &str, id: &str) -> Result<bool, StepError> {
    match ctx
        .ec2(region)
        .delete_snapshot()
        .snapshot_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(false),
        Err(e) if error_code(&e) == Some("InvalidSnapshot.InUse") => Err(StepError::NotReady(
            format!("snapshot {id} in {region} is still in use by an image"),
        )),
        Err(e) => Err(classify("DeleteSnapshot", id, e)),
    }
}

/// Removes a failed build's snapshots (those behind images went with them): by tag, but
/// not marked artifacts, and by the ledger.
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    if !scope.delete_artifacts {
        return Ok(swept);
    }
    for region in &scope.regions {
        let tagged = if scope.searches(Kind::Snapshot) {
            ctx.ec2(region)
                .describe_snapshots()
                .owner_ids("self")
                .set_filters(Some(scope.filters()))
                .send()
                .await
                .map_err(|e| classify("DescribeSnapshots", &scope.execution, e))?
                .snapshots
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let snaps = union(
            ledger_ids(ledger, ResourceKind::Snapshot, region),
            tagged
                .iter()
                .filter(|s| !is_artifact(s.tags()))
                .filter_map(|s| s.snapshot_id().map(String::from)),
        );
        for s in snaps {
            let removed = remove(ctx, region, &s).await;
            swept.note(removed, format!("snapshot {s} ({region})"))?;
        }
    }
    Ok(swept)
}
