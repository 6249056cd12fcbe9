//! AMI configuration (reference §4.2): ebs, ebssurrogate, chroot, instance.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::Tags;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AmiConfig {
    /// Required; rendered at prepare time (3–128 chars of `[A-Za-z0-9()[] ./-'@_]`).
    #[serde(default)]
    pub ami_name: String,
    /// May hold `{{ .SourceAMI }}` etc.: rendered by the step that sets it.
    #[serde(default)]
    pub ami_description: Option<String>,
    /// `hvm` or `paravirtual`; unset = inherit from the source.
    #[serde(default)]
    pub ami_virtualization_type: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_users: Vec<String>,
    /// Only `all` is accepted by AWS.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_groups: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_org_arns: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_ou_arns: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_product_codes: Vec<String>,
    /// Regions to copy to; de-duplicated, and the build region removed, by `from_builder`.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ami_regions: Vec<String>,
    #[serde(default)]
    pub snapshot_copy_duration_minutes: Option<i64>,
    /// On the AMI and its snapshots; values may hold `{{...}}` rendered with build data.
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub tags: Tags,
    /// Trilean: unset keeps the source's setting.
    #[serde(default)]
    pub ena_support: Option<bool>,
    #[serde(default)]
    pub sriov_support: bool,
    /// Legacy (seed documents, Packer ≤ 1.0): `true` means `sriov_support` and `ena_support`.
    /// `from_builder` folds it into those two; steps read only the new keys.
    #[serde(default)]
    pub enhanced_networking: Option<bool>,
    #[serde(default)]
    pub force_deregister: bool,
    #[serde(default)]
    pub force_delete_snapshot: bool,
    /// Trilean: unset keeps the source's encryption; true copies to an encrypted AMI.
    #[serde(default)]
    pub encrypt_boot: Option<bool>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Region → KMS key for the copies; must cover `ami_regions` (and the build region).
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub region_kms_key_ids: BTreeMap<String, String>,
    #[serde(default)]
    pub skip_save_build_region: bool,
    /// Only `v2.0`.
    #[serde(default)]
    pub imds_support: Option<String>,
    /// RFC 3339 time, e.g. `2030-01-01T00:00:00Z`.
    #[serde(default)]
    pub deprecate_at: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub snapshot_tags: Tags,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub snapshot_users: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub snapshot_groups: Vec<String>,
    #[serde(default)]
    pub deregistration_protection: Option<DeregistrationProtection>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeregistrationProtection {
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub with_cooldown: bool,
}
