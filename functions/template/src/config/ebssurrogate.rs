//! amazon-ebssurrogate (reference §3.2, §4.8): launch with extra volumes, snapshot one of them
//! and register it as the root of a new AMI.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::block_device::{BlockDevice, RootBlockDevice};
use super::common::Tags;
use super::communicator::CommunicatorConfig;
use super::run::RunConfig;

fn x86_64() -> String {
    "x86_64".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EbsSurrogateConfig {
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
    /// Must contain `ami_root_device.source_device_name`; `omit_from_artifact` allowed here.
    #[serde(default)]
    pub launch_block_device_mappings: Vec<BlockDevice>,
    /// Required.
    #[serde(default)]
    pub ami_root_device: Option<RootBlockDevice>,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub run_volume_tags: Tags,
    #[serde(default)]
    pub skip_ami_run_tags: bool,
    #[serde(default)]
    pub snapshot_description: Option<String>,
    /// `x86_64` (default), `arm64`, `i386`, `x86_64_mac`, `arm64_mac`.
    #[serde(default = "x86_64")]
    pub ami_architecture: String,
    #[serde(default)]
    pub boot_mode: Option<String>,
    #[serde(default)]
    pub uefi_data: Option<String>,
    #[serde(default)]
    pub tpm_support: Option<String>,
    /// CreateImage from the instance instead of RegisterImage from the snapshot.
    #[serde(default)]
    pub use_create_image: bool,
}
