//! Small shapes shared by several config groups.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Tags as Packer takes them: key → value, values may hold `{{...}}` rendered later with
/// build data (`{{ .SourceAMI }}`, `{{ .BuildRegion }}` …).
pub type Tags = BTreeMap<String, String>;

/// A `{ "filters": { name: value } }` block (`vpc_filter`, `security_group_filter`,
/// `chroot_host_filter`). Values are comma-separated lists, as in Packer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub filters: BTreeMap<String, String>,
}

/// `source_ami_filter`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct AmiFilter {
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub filters: BTreeMap<String, String>,
    /// Account ids, `self`, or aliases such as `amazon`; Packer requires at least one.
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub owners: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub most_recent: bool,
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub include_deprecated: bool,
}

/// `subnet_filter`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SubnetFilter {
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub filters: BTreeMap<String, String>,
    /// Pick the matching subnet with the most free addresses.
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub most_free: bool,
    /// Pick a random matching subnet.
    #[serde(default, deserialize_with = "crate::config::weak::bool")]
    pub random: bool,
}
