//! Small shapes shared by several config groups, and their rules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::check::{templated, Check};

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

/// The source image, named by id (`source_ami`) or by filter (`source_ami_filter`): run
/// configs and chroot keep these keys, and say themselves whether one of them is required.
pub(super) fn check_source_ami(c: &mut Check, id: Option<&str>, filter: Option<&AmiFilter>) {
    if let Some(id) = id.filter(|s| !templated(s)) {
        if !id.starts_with("ami-") {
            c.err("source_ami", format!("{id:?} is not an AMI id (ami-…); to find an image by name use source_ami_filter"));
        }
    }
    if filter.is_some_and(|f| f.owners.is_empty()) {
        c.err("source_ami_filter.owners", "required: for security, name who owns the source image (account ids, \"self\" or an alias such as \"amazon\")");
    }
}
