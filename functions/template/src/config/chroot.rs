//! amazon-chroot: a volume from the source AMI's snapshot, attached to a build host, mounted,
//! provisioned in a chroot, snapshotted and registered. Its own keys, defaults and rules.
//!
//! Packer runs on the host itself and asks the metadata service who it is; amiflow's steps
//! run in Lambda, so the host is named: `chroot_host_instance_id`, or `chroot_host_filter`
//! (EC2 DescribeInstances filters matching exactly one running instance). With neither,
//! a local `amiflow build` on the host falls back to the host's own metadata, as Packer does.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::access::AccessConfig;
use super::ami::{check_boot, AmiConfig};
use super::block_device::{check_mappings, check_volume_size, BlockDevice, VOLUME_TYPES};
use super::check::{templated, Check};
use super::common::{check_source_ami, AmiFilter, Filter, Tags};

pub const DEFAULT_MOUNT_PATH: &str = "/mnt/packer-amazon-chroot-volumes/{{.Device}}";
pub const DEFAULT_COMMAND_WRAPPER: &str = "{{.Command}}";
pub const DEFAULT_COPY_FILES: [&str; 1] = ["/etc/resolv.conf"];

/// Packer's default mounts, in mount order (`[fstype, source, destination]`).
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

impl ChrootConfig {
    /// Packer's default mounts for an empty `chroot_mounts`; `copy_files` defaults to
    /// [`DEFAULT_COPY_FILES`] unless the template (`raw`) gives it or builds `from_scratch`.
    pub(super) fn normalize(&mut self, raw: &Map<String, Value>) {
        if self.chroot_mounts.is_empty() {
            self.chroot_mounts = default_chroot_mounts();
        }
        if !raw.contains_key("copy_files") && !self.from_scratch {
            self.copy_files = DEFAULT_COPY_FILES.iter().map(|s| s.to_string()).collect();
        }
    }

    /// The rules of amazon-chroot's own keys (its groups check themselves).
    pub(super) fn check(&self, c: &mut Check) {
        check_mappings(
            c,
            "ami_block_device_mappings",
            &self.ami_block_device_mappings,
            false,
        );
        check_boot(
            c,
            &self.ami_architecture,
            self.boot_mode.as_deref(),
            self.tpm_support.as_deref(),
        );
        if self.from_scratch {
            self.check_from_scratch(c);
        } else {
            self.check_from_source(c);
        }
        check_source_ami(
            c,
            self.source_ami.as_deref(),
            self.source_ami_filter.as_ref(),
        );
        for (i, m) in self.chroot_mounts.iter().enumerate() {
            if m.len() != 3 {
                c.err(
                    format!("chroot_mounts[{i}]"),
                    format!(
                        "each mount is [fstype, source, destination]: 3 strings, found {}",
                        m.len()
                    ),
                );
            }
        }
        if !self.mount_partition.chars().all(|d| d.is_ascii_digit()) {
            c.err(
                "mount_partition",
                format!(
                    "invalid value {:?}: a partition number (\"1\"), or \"0\" for the whole device",
                    self.mount_partition
                ),
            );
        }
        if !self.command_wrapper.contains(".Command") {
            c.err(
                "command_wrapper",
                "must contain {{.Command}}, where each command goes",
            );
        }
        check_volume_size(c, "root_volume_size", self.root_volume_size);
        c.one_of(
            "root_volume_type",
            self.root_volume_type.as_deref(),
            &VOLUME_TYPES,
        );
        if self.root_volume_kms_key_id.is_some() && self.root_volume_encrypt_boot != Some(true) {
            c.err(
                "root_volume_kms_key_id",
                "requires root_volume_encrypt_boot: true",
            );
        }
        if self.nvme_device_path.is_some() && self.device_path.is_none() {
            c.err("nvme_device_path", "requires device_path: the NVMe name replaces the device in the mount command, so fix the attach device too");
        }
        c.conflict(
            "chroot_host_instance_id",
            self.chroot_host_instance_id.is_some(),
            "chroot_host_filter",
            self.chroot_host_filter.is_some(),
            "name the build host one way",
        );
        if let Some(id) = self
            .chroot_host_instance_id
            .as_deref()
            .filter(|s| !templated(s))
        {
            if !id.starts_with("i-") {
                c.err(
                    "chroot_host_instance_id",
                    format!("{id:?} is not an instance id (i-…)"),
                );
            }
        }
    }

    /// A volume built from nothing needs what the source image would have given.
    fn check_from_scratch(&self, c: &mut Check) {
        for (key, missing) in [
            ("root_volume_size", self.root_volume_size.is_none()),
            ("pre_mount_commands", self.pre_mount_commands.is_empty()),
            (
                "ami_virtualization_type",
                self.ami.ami_virtualization_type.is_none(),
            ),
            ("root_device_name", self.root_device_name.is_none()),
            (
                "ami_block_device_mappings",
                self.ami_block_device_mappings.is_empty(),
            ),
        ] {
            if missing {
                c.err(key, "required with from_scratch: a volume built from nothing needs root_volume_size, pre_mount_commands (to partition and format it), ami_virtualization_type, root_device_name and ami_block_device_mappings");
            }
        }
    }

    /// A source image, and mappings that replace its own.
    fn check_from_source(&self, c: &mut Check) {
        if self.source_ami.is_none() && self.source_ami_filter.is_none() {
            c.err("source_ami", "required for amazon-chroot: set source_ami or source_ami_filter (or from_scratch: true)");
        }
        let mappings = !self.ami_block_device_mappings.is_empty();
        if self.root_device_name.is_some() && !mappings {
            c.err(
                "root_device_name",
                "requires ami_block_device_mappings (which must include the root device)",
            );
        }
        if mappings && self.root_device_name.is_none() {
            c.err("ami_block_device_mappings", "requires root_device_name: amazon-chroot replaces the source's mappings, so name the root device");
        }
        if mappings && self.root_volume_size.is_none() {
            c.err(
                "root_volume_size",
                "required with ami_block_device_mappings",
            );
        }
    }
}
