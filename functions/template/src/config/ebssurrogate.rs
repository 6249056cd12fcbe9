//! amazon-ebssurrogate: launch with extra volumes, snapshot one of them and register it as
//! the root of a new AMI. Its own keys and their rules.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::{check_boot, AmiConfig};
use super::block_device::{check_ami_and_launch_mappings, BlockDevice, RootBlockDevice};
use super::check::Check;
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

impl EbsSurrogateConfig {
    /// The rules of amazon-ebssurrogate's own keys (its groups check themselves).
    pub(super) fn check(&self, c: &mut Check) {
        check_ami_and_launch_mappings(
            c,
            &self.ami_block_device_mappings,
            &self.launch_block_device_mappings,
            true,
        );
        check_boot(
            c,
            &self.ami_architecture,
            self.boot_mode.as_deref(),
            self.tpm_support.as_deref(),
        );
        if self.ami.ami_virtualization_type.is_none() {
            c.err(
                "ami_virtualization_type",
                "required for amazon-ebssurrogate: \"hvm\" or \"paravirtual\"",
            );
        }
        let launch = &self.launch_block_device_mappings;
        if launch.is_empty() {
            c.err(
                "launch_block_device_mappings",
                "required for amazon-ebssurrogate: map the volume that becomes the AMI's root",
            );
        }
        match &self.ami_root_device {
            None => c.err("ami_root_device", "required for amazon-ebssurrogate: { \"source_device_name\": <a launch mapping>, \"device_name\": <root device in the AMI> }"),
            Some(root) => {
                root.check(c);
                if root.source_device_name.is_empty() {
                    c.err("ami_root_device.source_device_name", "required: the launch_block_device_mappings device to snapshot");
                } else if !launch.is_empty() && !launch.iter().any(|d| d.device_name == root.source_device_name) {
                    c.err("ami_root_device.source_device_name", format!("{} is not in launch_block_device_mappings; map it there", root.source_device_name));
                }
                if root.device_name.is_empty() {
                    c.err("ami_root_device.device_name", "required: the root device name in the AMI, e.g. \"/dev/xvda\"");
                }
            }
        }
        if self.use_create_image
            && self.ami.ami_virtualization_type.as_deref() == Some("paravirtual")
        {
            c.err(
                "use_create_image",
                "conflicts with ami_virtualization_type \"paravirtual\"",
            );
        }
    }
}
