//! Run configuration (reference §4.3): the source instance — ebs, ebssurrogate, ebsvolume, instance.

use serde::{Deserialize, Serialize};

use super::common::{AmiFilter, Filter, SubnetFilter, Tags};
use super::duration::Duration;
use super::weak;

fn default_shutdown_behavior() -> String {
    "stop".into()
}

fn default_windows_password_timeout() -> Duration {
    Duration::from_secs(20 * 60)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    /// One of `source_ami` / `source_ami_filter` is required.
    #[serde(default)]
    pub source_ami: Option<String>,
    #[serde(default)]
    pub source_ami_filter: Option<AmiFilter>,
    /// Required unless `spot_instance_types` is given.
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub subnet_filter: Option<SubnetFilter>,
    /// Derived from the subnet when unset.
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub vpc_filter: Option<Filter>,
    /// Trilean: unset keeps the subnet's setting.
    #[serde(default)]
    pub associate_public_ip_address: Option<bool>,
    /// Legacy single id; `from_builder` folds it into `security_group_ids`.
    #[serde(default)]
    pub security_group_id: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub security_group_filter: Option<Filter>,
    /// Sources allowed into the temporary security group on the communicator port.
    /// `from_builder` fills Packer's default `["0.0.0.0/0"]` (`["::/0"]` with `ssh_interface: ipv6`).
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub temporary_security_group_source_cidrs: Vec<String>,
    #[serde(default)]
    pub temporary_security_group_source_public_ip: bool,
    #[serde(default)]
    pub iam_instance_profile: Option<String>,
    #[serde(default)]
    pub skip_profile_validation: bool,
    /// A temporary role + instance profile with this policy is created for the build.
    #[serde(default)]
    pub temporary_iam_instance_profile_policy_document: Option<PolicyDocument>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub user_data_file: Option<String>,
    /// Values may hold `{{...}}` rendered with build data.
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub run_tags: Tags,
    #[serde(default)]
    pub ebs_optimized: bool,
    /// `stop` (default) or `terminate`.
    #[serde(default = "default_shutdown_behavior")]
    pub shutdown_behavior: String,
    #[serde(default)]
    pub disable_stop_instance: bool,
    #[serde(default = "default_windows_password_timeout")]
    pub windows_password_timeout: Duration,
    /// Unset or `"0"` = on-demand; `"auto"` = capped at the on-demand price.
    #[serde(default)]
    pub spot_price: Option<String>,
    /// Deprecated in Packer; accepted and ignored.
    #[serde(default)]
    pub spot_price_auto_product: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub spot_instance_types: Vec<String>,
    #[serde(default)]
    pub spot_allocation_strategy: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub spot_tags: Tags,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub fleet_tags: Tags,
    /// Deprecated; multiple of 60.
    #[serde(default)]
    pub block_duration_minutes: Option<i64>,
    /// Deprecated alias of `enable_unlimited_credits`.
    #[serde(default)]
    pub enable_t2_unlimited: bool,
    #[serde(default)]
    pub enable_unlimited_credits: bool,
    #[serde(default)]
    pub enable_nitro_enclave: bool,
    /// `none` or `open`.
    #[serde(default)]
    pub capacity_reservation_preference: Option<String>,
    #[serde(default)]
    pub capacity_reservation_id: Option<String>,
    #[serde(default)]
    pub capacity_reservation_group_arn: Option<String>,
    #[serde(default)]
    pub license_specifications: Vec<LicenseSpecification>,
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Deprecated: `placement.tenancy`. `default`, `dedicated` or `host`.
    #[serde(default)]
    pub tenancy: Option<String>,
    #[serde(default)]
    pub metadata_options: MetadataOptions,
}

impl RunConfig {
    /// The instance types a launch may use, in the order to try them: `instance_type`, or
    /// else `spot_instance_types`.
    pub fn instance_types(&self) -> Vec<String> {
        match self.instance_type.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => vec![t.to_string()],
            None => self.spot_instance_types.clone(),
        }
    }

    /// A spot build: `spot_price` set to something other than `"0"` (Packer's rule).
    pub fn is_spot(&self) -> bool {
        self.spot_price
            .as_deref()
            .is_some_and(|p| !p.is_empty() && p != "0")
    }
}

/// `temporary_iam_instance_profile_policy_document`, IAM's own capitalised keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(rename = "Version", default = "default_policy_version")]
    pub version: String,
    #[serde(rename = "Statement", default)]
    pub statement: Vec<PolicyStatement>,
}

fn default_policy_version() -> String {
    "2012-10-17".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyStatement {
    #[serde(rename = "Effect", default)]
    pub effect: String,
    #[serde(rename = "Action", default, deserialize_with = "weak::strings")]
    pub action: Vec<String>,
    #[serde(rename = "Resource", default, deserialize_with = "weak::strings")]
    pub resource: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct LicenseSpecification {
    pub license_configuration_request: LicenseConfigurationRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct LicenseConfigurationRequest {
    pub license_configuration_arn: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    #[serde(default)]
    pub host_resource_group_arn: Option<String>,
    #[serde(default)]
    pub host_id: Option<String>,
    /// `default`, `dedicated` or `host` (implied by the host_* keys).
    #[serde(default)]
    pub tenancy: Option<String>,
}

/// `metadata_options`, with Packer's defaults (IMDS enabled, tokens optional, hop limit 1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    #[serde(default = "enabled")]
    pub http_endpoint: String,
    #[serde(default = "optional")]
    pub http_tokens: String,
    #[serde(default = "one", deserialize_with = "hop_limit")]
    pub http_put_response_hop_limit: i64,
    #[serde(default = "disabled")]
    pub instance_metadata_tags: String,
}

fn enabled() -> String {
    "enabled".into()
}
fn optional() -> String {
    "optional".into()
}
fn disabled() -> String {
    "disabled".into()
}
fn one() -> i64 {
    1
}
fn hop_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(weak::opt_i64(d)?.unwrap_or(1))
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_endpoint: enabled(),
            http_tokens: optional(),
            http_put_response_hop_limit: 1,
            instance_metadata_tags: disabled(),
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every key has a default")
    }
}
