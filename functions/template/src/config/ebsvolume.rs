//! amazon-ebsvolume: launch with volumes, provision, keep the volumes. Its own keys and
//! their rules.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::access::AccessConfig;
use super::block_device::EbsVolumeMapping;
use super::check::{closest, Check};
use super::common::Tags;
use super::communicator::CommunicatorConfig;
use super::run::RunConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EbsVolumeConfig {
    #[serde(flatten)]
    pub access: AccessConfig,
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub comm: CommunicatorConfig,

    /// Launch mappings whose volumes outlive the instance.
    #[serde(default)]
    pub ebs_volumes: Vec<EbsVolumeMapping>,
    #[serde(default)]
    pub ena_support: Option<bool>,
    #[serde(default)]
    pub sriov_support: bool,
    /// Temporary tags on the volumes while the instance runs.
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub run_volume_tags: Tags,
}

impl EbsVolumeConfig {
    /// The rules of amazon-ebsvolume's own keys (its groups check themselves).
    pub(super) fn check(&self, c: &mut Check) {
        // `ebs_volumes` entries flatten a block device, so serde cannot refuse their unknown
        // keys: look for them in the entries as written.
        let known: BTreeSet<String> = match serde_json::to_value(EbsVolumeMapping::default()) {
            Ok(Value::Object(o)) => o.keys().cloned().collect(),
            _ => BTreeSet::new(),
        };
        if let Some(Value::Array(raw)) = c.raw("ebs_volumes") {
            for (i, entry) in raw.iter().enumerate() {
                for k in entry.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !known.contains(k) {
                        let hint = closest(k, known.iter().map(String::as_str))
                            .map_or("remove it".to_string(), |s| format!("did you mean {s}?"));
                        c.err(
                            format!("ebs_volumes[{i}].{k}"),
                            format!("unknown key in ebs_volumes; {hint}"),
                        );
                    }
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, vol) in self.ebs_volumes.iter().enumerate() {
            vol.check(c, i, &mut names);
        }
    }
}
