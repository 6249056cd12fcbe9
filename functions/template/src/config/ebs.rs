//! amazon-ebs (reference §3.1, §4.6): launch, provision, stop, CreateImage.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::block_device::BlockDevice;
use super::common::Tags;
use super::communicator::CommunicatorConfig;
use super::run::RunConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EbsConfig {
    #[serde(flatten)]
    pub access: AccessConfig,
    #[serde(flatten)]
    pub ami: AmiConfig,
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub comm: CommunicatorConfig,

    #[serde(default)]
    pub ami_block_device_mappings: Vec<BlockDevice>,
    #[serde(default)]
    pub launch_block_device_mappings: Vec<BlockDevice>,
    /// On the launched volumes; values may hold `{{...}}` rendered with build data.
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub run_volume_tags: Tags,
    /// Provision and tear down without creating an AMI.
    #[serde(default)]
    pub skip_create_ami: bool,
    /// Don't copy `run_tags` onto the AMI and snapshots.
    #[serde(default)]
    pub skip_ami_run_tags: bool,
    /// Map `xvdca`–`xvdcz` to NoDevice so no ephemeral volume is attached.
    #[serde(default)]
    pub no_ephemeral: bool,
    /// `legacy-bios`, `uefi` or `uefi-preferred`.
    #[serde(default)]
    pub boot_mode: Option<String>,
    #[serde(default)]
    pub uefi_data: Option<String>,
    /// `v2.0`.
    #[serde(default)]
    pub tpm_support: Option<String>,
    #[serde(default)]
    pub fast_launch: Option<FastLaunch>,
}

/// `fast_launch` (Windows fast launch); any field set enables it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct FastLaunch {
    #[serde(default, deserialize_with = "crate::config::weak::opt_bool")]
    pub enable_fast_launch: Option<bool>,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub template_name: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::opt_i64")]
    pub template_version: Option<i64>,
    #[serde(default)]
    pub region_launch_templates: Vec<FastLaunchTemplate>,
    /// At least 6.
    #[serde(default, deserialize_with = "crate::config::weak::opt_i64")]
    pub max_parallel_launches: Option<i64>,
    /// At least 1.
    #[serde(default, deserialize_with = "crate::config::weak::opt_i64")]
    pub target_resource_count: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct FastLaunchTemplate {
    #[serde(default, deserialize_with = "crate::config::weak::opt_bool")]
    pub enable_fast_launch: Option<bool>,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub template_name: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::opt_i64")]
    pub template_version: Option<i64>,
}
