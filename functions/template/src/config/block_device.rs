//! Block device mappings (reference §4.4) and the ebssurrogate / ebsvolume variants.

use serde::{Deserialize, Serialize};

use super::common::Tags;
use super::weak;

/// One entry of `ami_block_device_mappings` / `launch_block_device_mappings`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct BlockDevice {
    /// Required, e.g. `/dev/sda1`, `/dev/xvdf`.
    #[serde(default)]
    pub device_name: String,
    /// Packer's default is false, which leaves volumes behind: say true for launch mappings.
    #[serde(default, deserialize_with = "weak::bool")]
    pub delete_on_termination: bool,
    /// Trilean: unset inherits from the snapshot.
    #[serde(default, deserialize_with = "weak::opt_bool")]
    pub encrypted: Option<bool>,
    #[serde(default, deserialize_with = "weak::opt_string")]
    pub kms_key_id: Option<String>,
    /// io1/io2: 100–64000; gp3: 3000–16000.
    #[serde(default, deserialize_with = "weak::opt_i64")]
    pub iops: Option<i64>,
    /// gp3 only, 125–1000 MiB/s.
    #[serde(default, deserialize_with = "weak::opt_i64")]
    pub throughput: Option<i64>,
    #[serde(default, deserialize_with = "weak::bool")]
    pub no_device: bool,
    #[serde(default, deserialize_with = "weak::opt_string")]
    pub snapshot_id: Option<String>,
    /// Only `ephemeral<N>` is honoured.
    #[serde(default, deserialize_with = "weak::opt_string")]
    pub virtual_name: Option<String>,
    #[serde(default, deserialize_with = "weak::opt_string")]
    pub volume_type: Option<String>,
    /// GiB.
    #[serde(default, deserialize_with = "weak::opt_i64")]
    pub volume_size: Option<i64>,
    /// ebssurrogate launch mappings only: keep this device out of the AMI.
    #[serde(default, deserialize_with = "weak::bool")]
    pub omit_from_artifact: bool,
}

/// ebssurrogate's `ami_root_device`: which launched device becomes the AMI's root.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RootBlockDevice {
    /// Required: the launch mapping whose snapshot becomes the root (e.g. `/dev/xvdf`).
    #[serde(default)]
    pub source_device_name: String,
    /// Required: the root device name in the AMI (e.g. `/dev/xvda`).
    #[serde(default)]
    pub device_name: String,
    #[serde(default, deserialize_with = "weak::bool")]
    pub delete_on_termination: bool,
    #[serde(default, deserialize_with = "weak::opt_i64")]
    pub iops: Option<i64>,
    #[serde(default, deserialize_with = "weak::opt_string")]
    pub volume_type: Option<String>,
    #[serde(default, deserialize_with = "weak::opt_i64")]
    pub volume_size: Option<i64>,
}

/// One entry of ebsvolume's `ebs_volumes`: a block device plus what to keep on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct EbsVolumeMapping {
    #[serde(flatten)]
    pub device: BlockDevice,
    /// Kept on the volume; values may hold `{{...}}` rendered with build data.
    #[serde(default, deserialize_with = "weak::string_map")]
    pub tags: Tags,
    #[serde(default, deserialize_with = "weak::bool")]
    pub snapshot_volume: bool,
    /// Requires `snapshot_volume`.
    #[serde(default, deserialize_with = "weak::opt_string")]
    pub snapshot_description: Option<String>,
    #[serde(default, deserialize_with = "weak::string_map")]
    pub snapshot_tags: Tags,
    #[serde(default, deserialize_with = "weak::strings")]
    pub snapshot_users: Vec<String>,
    #[serde(default, deserialize_with = "weak::strings")]
    pub snapshot_groups: Vec<String>,
}
