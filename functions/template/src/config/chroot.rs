//! amazon-chroot (reference §3.4, §4.7, §5): a volume from the source AMI's snapshot, attached
//! to a build host, mounted, provisioned in a chroot, snapshotted and registered.
//!
//! Packer runs on the host itself and asks the metadata service who it is; amiflow's steps
//! run in Lambda, so the host is named: `chroot_host_instance_id`, or `chroot_host_filter`
//! (EC2 DescribeInstances filters matching exactly one running instance). With neither,
//! a local `amiflow build` on the host falls back to the host's own metadata, as Packer does.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::block_device::BlockDevice;
use super::common::{AmiFilter, Filter, Tags};

pub const DEFAULT_MOUNT_PATH: &str = "/mnt/packer-amazon-chroot-volumes/{{.Device}}";
pub const DEFAULT_COMMAND_WRAPPER: &str = "{{.Command}}";
pub const DEFAULT_COPY_FILES: [&str; 1] = ["/etc/resolv.conf"];

/// Packer's default mounts, in mount order (`[fstype, source, destination]`, reference §5.2).
pub fn default_chroot_mounts() -> Vec<Vec<String>> {
    [
        ["proc", "proc", "/proc"],
        ["sysfs", "sysfs", "/sys"],
        ["bind", "/dev", "/dev"],
        ["devpts", "devpts", "/dev/pts"],
        ["binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
    ]
    .iter()
    .map(|m| m.iter().map(|s| s.to_string()).collect())
    .collect()
}

fn mount_path() -> String {
    DEFAULT_MOUNT_PATH.into()
}
fn command_wrapper() -> String {
    DEFAULT_COMMAND_WRAPPER.into()
}
fn partition_1() -> String {
    "1".into()
}
fn x86_64() -> String {
    "x86_64".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChrootConfig {
    #[serde(flatten)]
    pub access: AccessConfig,
    #[serde(flatten)]
    pub ami: AmiConfig,

    /// One of `source_ami` / `source_ami_filter` unless `from_scratch`.
    #[serde(default)]
    pub source_ami: Option<String>,
    #[serde(default)]
    pub source_ami_filter: Option<AmiFilter>,

    /// The build host (instance id `i-…`).
    #[serde(default)]
    pub chroot_host_instance_id: Option<String>,
    /// Filters that match exactly one running build host.
    #[serde(default)]
    pub chroot_host_filter: Option<Filter>,

    /// `[fstype, source, destination]` triples; empty means Packer's defaults (filled by `from_builder`).
    #[serde(default = "default_chroot_mounts")]
    pub chroot_mounts: Vec<Vec<String>>,
    /// Default `["/etc/resolv.conf"]` unless `from_scratch`; an explicit `[]` copies nothing.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub copy_files: Vec<String>,
    /// "" = find a free device.
    #[serde(default)]
    pub device_path: Option<String>,
    #[serde(default)]
    pub nvme_device_path: Option<String>,
    /// Rendered with `{{.Device}}` by the mount step.
    #[serde(default = "mount_path")]
    pub mount_path: String,
    /// `"1"` (default); `"0"` mounts the whole device.
    #[serde(default = "partition_1")]
    pub mount_partition: String,
    /// Each becomes `-o <opt>`.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub mount_options: Vec<String>,
    /// Rendered with `{{.Command}}` around every command run on the host.
    #[serde(default = "command_wrapper")]
    pub command_wrapper: String,
    /// Rendered with `{{.Device}}`.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub pre_mount_commands: Vec<String>,
    /// Rendered with `{{.Device}}` and `{{.MountPath}}`.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub post_mount_commands: Vec<String>,
    #[serde(default)]
    pub from_scratch: bool,

    /// GiB; only grows the source size; required with `from_scratch`.
    #[serde(default)]
    pub root_volume_size: Option<i64>,
    /// Source's type; `gp2` from scratch.
    #[serde(default)]
    pub root_volume_type: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub root_volume_tags: Tags,
    #[serde(default)]
    pub root_volume_encrypt_boot: Option<bool>,
    #[serde(default)]
    pub root_volume_kms_key_id: Option<String>,
    /// Required with `from_scratch` or `ami_block_device_mappings`.
    #[serde(default)]
    pub root_device_name: Option<String>,
    /// Replaces the source's mappings entirely.
    #[serde(default)]
    pub ami_block_device_mappings: Vec<BlockDevice>,

    /// Only used by `from_scratch` registration.
    #[serde(default = "x86_64")]
    pub ami_architecture: String,
    #[serde(default)]
    pub boot_mode: Option<String>,
    #[serde(default)]
    pub uefi_data: Option<String>,
    #[serde(default)]
    pub tpm_support: Option<String>,
}
