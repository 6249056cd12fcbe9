//! amazon-ebsvolume (reference §3.3, §4.9): launch with volumes, provision, keep the volumes.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::block_device::EbsVolumeMapping;
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
