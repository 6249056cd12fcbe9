//! Block device mappings and the ebssurrogate / ebsvolume variants, with their rules.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::check::{templated, Check};
use super::common::Tags;
use super::weak;

/// The EBS volume types.
pub(super) const VOLUME_TYPES: [&str; 7] = ["standard", "io1", "io2", "gp2", "gp3", "sc1", "st1"];

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

/// The rules of a list of mappings (`key`): each device's own, and no device mapped twice.
/// `omit_allowed`: the list may keep devices out of the AMI (ebssurrogate's launch mappings).
pub(super) fn check_mappings(c: &mut Check, key: &str, list: &[BlockDevice], omit_allowed: bool) {
    let mut names = BTreeSet::new();
    for (i, d) in list.iter().enumerate() {
        d.check(c, &format!("{key}[{i}]"), omit_allowed);
        d.check_mapped_once(c, key, i, &mut names);
    }
}

/// The mappings of a builder that launches an instance to make an AMI: the AMI's
/// (`ami_block_device_mappings`), then the instance's (`launch_block_device_mappings`, where
/// `omit_allowed` lets devices stay out of the AMI: ebssurrogate).
pub(super) fn check_ami_and_launch_mappings(
    c: &mut Check,
    ami: &[BlockDevice],
    launch: &[BlockDevice],
    omit_allowed: bool,
) {
    check_mappings(c, "ami_block_device_mappings", ami, false);
    check_mappings(c, "launch_block_device_mappings", launch, omit_allowed);
}

/// IOPS, whatever the volume type: EBS's bounds over every type (io2 Block Express: 256000).
const IOPS: std::ops::RangeInclusive<i64> = 100..=256_000;

/// A volume size in GiB, which EBS takes from 1 to 65536.
pub(super) fn check_volume_size(c: &mut Check, key: &str, size: Option<i64>) {
    if let Some(size) = size.filter(|s| !(1..=65536).contains(s)) {
        c.err(
            key,
            format!("out of range: {size} GiB; must be from 1 to 65536"),
        );
    }
}

impl BlockDevice {
    /// The rules of the device at `at` (`launch_block_device_mappings[0]`).
    pub(super) fn check(&self, c: &mut Check, at: &str, omit_allowed: bool) {
        if self.device_name.is_empty() {
            c.err(
                format!("{at}.device_name"),
                "required: every block device mapping names its device, e.g. \"/dev/sdb\"",
            );
        }
        if self.omit_from_artifact && !omit_allowed {
            c.err(
                format!("{at}.omit_from_artifact"),
                "only applies to amazon-ebssurrogate launch_block_device_mappings",
            );
        }
        let vt = self.volume_type.as_deref().filter(|t| !templated(t));
        c.one_of(&format!("{at}.volume_type"), vt, &VOLUME_TYPES);
        check_volume_size(c, &format!("{at}.volume_size"), self.volume_size);
        if let Some(iops) = self.iops {
            match vt {
                Some(io @ ("io1" | "io2")) => {
                    if !(100..=64000).contains(&iops) {
                        c.err(
                            format!("{at}.iops"),
                            format!("out of range: {iops}; {io} takes 100 to 64000 IOPS"),
                        );
                    }
                    let ratio = if io == "io1" { 50 } else { 500 };
                    if let Some(size) = self.volume_size.filter(|s| *s > 0) {
                        if iops > size.saturating_mul(ratio) {
                            c.err(format!("{at}.iops"), format!("out of range: {iops} IOPS on {size} GiB exceeds {ratio} IOPS per GiB for {io}"));
                        }
                    }
                }
                Some("gp3") if !(3000..=16000).contains(&iops) => {
                    c.err(
                        format!("{at}.iops"),
                        format!("out of range: {iops}; gp3 takes 3000 to 16000 IOPS"),
                    );
                }
                Some("gp3") => {}
                Some(other) => c.err(
                    format!("{at}.iops"),
                    format!("iops only applies to io1, io2 and gp3 volumes, not {other}"),
                ),
                // The type is the snapshot's or not known yet: EBS's bounds over all types.
                None => c.range(&format!("{at}.iops"), Some(iops), IOPS, " IOPS"),
            }
        } else if let Some(io @ ("io1" | "io2")) = vt.filter(|_| self.snapshot_id.is_none()) {
            c.err(
                format!("{at}.iops"),
                format!("required: {io} volumes need iops"),
            );
        }
        if let Some(t) = self.throughput {
            if vt != Some("gp3") {
                c.err(
                    format!("{at}.throughput"),
                    "throughput only applies to gp3 volumes (set volume_type: \"gp3\")",
                );
            } else if !(125..=1000).contains(&t) {
                c.err(
                    format!("{at}.throughput"),
                    format!("out of range: {t}; gp3 takes 125 to 1000 MiB/s"),
                );
            }
        }
        if let Some(k) = self.kms_key_id.as_deref() {
            if self.encrypted != Some(true) {
                c.err(
                    format!("{at}.kms_key_id"),
                    "requires encrypted: true on the same device",
                );
            }
            c.kms_key(&format!("{at}.kms_key_id"), k);
        }
        if let Some(v) = self.virtual_name.as_deref().filter(|v| !templated(v)) {
            if !v.starts_with("ephemeral") {
                c.err(
                    format!("{at}.virtual_name"),
                    format!(
                        "{v:?}: only instance store names ephemeral0..ephemeral23 are honoured"
                    ),
                );
            }
        }
    }

    /// The device, entry `i` of the list `key`, names a device that no earlier entry (`names`) did.
    fn check_mapped_once<'d>(
        &'d self,
        c: &mut Check,
        key: &str,
        i: usize,
        names: &mut BTreeSet<&'d str>,
    ) {
        if !self.device_name.is_empty() && !names.insert(self.device_name.as_str()) {
            c.err(
                format!("{key}[{i}].device_name"),
                format!("{} is mapped twice in {key}", self.device_name),
            );
        }
    }
}

impl RootBlockDevice {
    /// The rules of ebssurrogate's `ami_root_device` (its names are checked by the builder).
    pub(super) fn check(&self, c: &mut Check) {
        let at = "ami_root_device";
        let vt = self.volume_type.as_deref().filter(|t| !templated(t));
        c.one_of(&format!("{at}.volume_type"), vt, &VOLUME_TYPES);
        check_volume_size(c, &format!("{at}.volume_size"), self.volume_size);
        c.range(&format!("{at}.iops"), self.iops, IOPS, " IOPS");
    }
}

impl EbsVolumeMapping {
    /// The rules of entry `i` of ebsvolume's `ebs_volumes`: its device's and its snapshot's.
    /// `names`: the devices of the entries before it.
    pub(super) fn check<'d>(&'d self, c: &mut Check, i: usize, names: &mut BTreeSet<&'d str>) {
        let at = format!("ebs_volumes[{i}]");
        self.device.check(c, &at, false);
        self.device.check_mapped_once(c, "ebs_volumes", i, names);
        if !self.snapshot_volume {
            for (key, set) in [
                ("snapshot_description", self.snapshot_description.is_some()),
                ("snapshot_tags", !self.snapshot_tags.is_empty()),
                ("snapshot_users", !self.snapshot_users.is_empty()),
                ("snapshot_groups", !self.snapshot_groups.is_empty()),
            ] {
                if set {
                    c.err(
                        format!("{at}.{key}"),
                        "requires snapshot_volume: true on the same volume",
                    );
                }
            }
        }
        c.accounts(&format!("{at}.snapshot_users"), &self.snapshot_users);
    }
}
