//! What the volume and snapshot steps of amazon-ebssurrogate and amazon-ebsvolume share:
//! their typed configs, and the instance's device → volume map.

use std::collections::BTreeMap;

use amiflow_template::config::{EbsSurrogateConfig, EbsVolumeConfig};
use amiflow_template::BuilderConfig;

use crate::prelude::*;

pub fn surrogate(state: &BuildState) -> Option<&EbsSurrogateConfig> {
    match &state.build.config {
        BuilderConfig::EbsSurrogate(c) => Some(c),
        _ => None,
    }
}

pub fn ebsvolume(state: &BuildState) -> Option<&EbsVolumeConfig> {
    match &state.build.config {
        BuilderConfig::EbsVolume(c) => Some(c),
        _ => None,
    }
}

/// `/dev/xvdf` and `xvdf` name the same device (EC2 reports what was asked for, mostly).
pub fn same_device(a: &str, b: &str) -> bool {
    a.trim_start_matches("/dev/") == b.trim_start_matches("/dev/")
}

/// Device name → EBS volume id of the instance's attached volumes.
pub async fn instance_volumes(
    ctx: &Ctx,
    region: &str,
    instance: &str,
) -> Result<BTreeMap<String, String>, StepError> {
    let Some(i) = crate::resources::instance::describe(ctx, region, instance).await? else {
        return Err(StepError::BuildFailed(format!(
            "instance {instance} in {region} no longer exists"
        )));
    };
    Ok(i.block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some((
                m.device_name()?.to_string(),
                m.ebs()?.volume_id()?.to_string(),
            ))
        })
        .collect())
}

/// The volume attached at `device`, or a BuildFailed naming the device and the key.
pub fn volume_at(
    volumes: &BTreeMap<String, String>,
    device: &str,
    key: &str,
) -> Result<String, StepError> {
    volumes
        .iter()
        .find(|(d, _)| same_device(d, device))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            StepError::BuildFailed(format!(
            "{key}: no EBS volume is attached at {device} (attached: {}); check the device_name",
            volumes.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
        })
}

/// Device → snapshot id, written by SnapshotVolumes.
pub fn snapshot_ids(state: &BuildState) -> BTreeMap<String, String> {
    state
        .data
        .extra
        .get("snapshot_ids")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}
