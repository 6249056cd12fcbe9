//! amazon-ebs: launch, provision, stop, CreateImage. Its own keys and their rules.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::block_device::{check_ami_and_launch_mappings, BlockDevice};
use super::check::Check;
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
    // No boot_mode, uefi_data or tpm_support: Packer's amazon-ebs refuses them (CreateImage
    // keeps the source's), so they are unknown keys here, pointed to the builders that take them.
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

impl EbsConfig {
    /// The rules of amazon-ebs's own keys (its groups check themselves).
    pub(super) fn check(&self, c: &mut Check) {
        check_ami_and_launch_mappings(
            c,
            &self.ami_block_device_mappings,
            &self.launch_block_device_mappings,
            false,
        );
        if let Some(f) = &self.fast_launch {
            f.check(c);
        }
    }
}

impl FastLaunch {
    fn check(&self, c: &mut Check) {
        let enabled = match self.enable_fast_launch {
            Some(on) => on,
            None => *self != FastLaunch::default(),
        };
        if enabled {
            c.err(
                "fast_launch",
                "not supported by amiflow yet: remove it and enable Windows fast launch after the \
                 build (aws ec2 enable-fast-launch --image-id AMI_ID)",
            );
        }
        if let Some(n) = self.max_parallel_launches.filter(|n| *n < 6) {
            c.err(
                "fast_launch.max_parallel_launches",
                format!("out of range: {n}; at least 6"),
            );
        }
        if let Some(n) = self.target_resource_count.filter(|n| *n < 1) {
            c.err(
                "fast_launch.target_resource_count",
                format!("out of range: {n}; at least 1"),
            );
        }
        c.conflict(
            "fast_launch.template_id",
            self.template_id.is_some(),
            "fast_launch.template_name",
            self.template_name.is_some(),
            "name the launch template one way",
        );
        for (i, t) in self.region_launch_templates.iter().enumerate() {
            let at = format!("fast_launch.region_launch_templates[{i}]");
            if t.region.is_empty() {
                c.err(format!("{at}.region"), "required");
            }
            c.conflict(
                &format!("{at}.template_id"),
                t.template_id.is_some(),
                "template_name",
                t.template_name.is_some(),
                "name the launch template one way",
            );
        }
    }
}
