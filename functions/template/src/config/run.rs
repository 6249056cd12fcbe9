//! Run configuration: the source instance (ebs, ebssurrogate, ebsvolume, instance), with its
//! defaults and rules.

use serde::{Deserialize, Serialize};

use super::check::{is_cidr, templated, Check};
use super::common::{check_source_ami, AmiFilter, Filter, SubnetFilter, Tags};
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

impl RunConfig {
    /// Folds the legacy `security_group_id` and `enable_t2_unlimited` into their successors,
    /// and fills Packer's default source CIDR: any address, IPv6 when the communicator's
    /// `ssh_interface` is `ipv6`.
    pub(super) fn normalize(&mut self, ssh_interface: Option<&str>) {
        if let Some(id) = self.security_group_id.take() {
            if !self.security_group_ids.contains(&id) {
                self.security_group_ids.insert(0, id);
            }
        }
        if self.temporary_security_group_source_cidrs.is_empty()
            && !self.temporary_security_group_source_public_ip
        {
            let any = if ssh_interface == Some("ipv6") {
                "::/0"
            } else {
                "0.0.0.0/0"
            };
            self.temporary_security_group_source_cidrs = vec![any.into()];
        }
        if self.enable_t2_unlimited {
            self.enable_unlimited_credits = true;
        }
    }

    /// The instance gets an instance profile: an existing one or a temporary one.
    pub(super) fn gets_instance_profile(&self) -> bool {
        self.iam_instance_profile.is_some()
            || self
                .temporary_iam_instance_profile_policy_document
                .is_some()
    }

    /// Packer's rules.
    pub(super) fn check(&self, c: &mut Check) {
        if self.temporary_security_group_source_public_ip {
            c.err(
                "temporary_security_group_source_public_ip",
                "not supported: the steps run in Lambda, whose public address is not the one that \
                 connects to the instance; set temporary_security_group_source_cidrs to the \
                 addresses allowed to connect, or use \"communicator\": \"ssm\" (no inbound rule)",
            );
        }
        if self.source_ami.is_none() && self.source_ami_filter.is_none() {
            c.err(
                "source_ami",
                "required: set source_ami (an AMI id) or source_ami_filter",
            );
        }
        check_source_ami(
            c,
            self.source_ami.as_deref(),
            self.source_ami_filter.as_ref(),
        );
        match (&self.instance_type, self.spot_instance_types.is_empty()) {
            (None, true) => c.err(
                "instance_type",
                "required: set instance_type (e.g. \"t3.micro\") or spot_instance_types",
            ),
            (Some(_), false) => c.err(
                "instance_type",
                "conflicts with spot_instance_types: give one of them",
            ),
            _ => {}
        }
        c.conflict(
            "security_group_id",
            c.given("security_group_id"),
            "security_group_ids",
            c.given("security_group_ids"),
            "put every id in security_group_ids",
        );
        c.conflict(
            "user_data",
            self.user_data.is_some(),
            "user_data_file",
            self.user_data_file.is_some(),
            "give the user data inline or as a file, not both",
        );
        c.conflict(
            "iam_instance_profile",
            self.iam_instance_profile.is_some(),
            "temporary_iam_instance_profile_policy_document",
            self.temporary_iam_instance_profile_policy_document
                .is_some(),
            "use an existing profile or have a temporary one created, not both",
        );
        c.conflict(
            "temporary_security_group_source_cidrs",
            c.given("temporary_security_group_source_cidrs"),
            "temporary_security_group_source_public_ip",
            self.temporary_security_group_source_public_ip,
            "give the CIDRs or let the public IP be detected, not both",
        );
        for cidr in self
            .temporary_security_group_source_cidrs
            .iter()
            .filter(|s| !templated(s))
        {
            if !is_cidr(cidr) {
                c.err(
                    "temporary_security_group_source_cidrs",
                    format!("{cidr:?} is not a CIDR block (like 10.0.0.0/8 or ::/0)"),
                );
            }
        }
        c.one_of(
            "shutdown_behavior",
            Some(&self.shutdown_behavior),
            &["stop", "terminate"],
        );
        self.check_spot(c);
        self.check_instance_type(c);
        self.check_placement(c);
        self.check_metadata_options(c);
        self.check_policy_document(c);
        self.check_unsupported(c);
    }

    /// Keys whose effect RunSourceInstance does not give, refused with the way round.
    fn check_unsupported(&self, c: &mut Check) {
        c.unsupported(
            "windows_password_timeout",
            self.windows_password_timeout != default_windows_password_timeout(),
            "it bounds the wait for a Windows password, which only WinRM uses; amiflow provisions \
             Windows over SSM, which needs none: remove it (a template with \"communicator\": \"winrm\" \
             may keep it)",
        );
        c.unsupported(
            "spot_price_auto_product",
            self.spot_price_auto_product.is_some(),
            "Packer no longer uses it either (spot_price \"auto\" finds the price): remove it",
        );
        const NO_FLEET: &str = "spot builds launch one instance with RunInstances, trying \
             spot_instance_types in order: there is no fleet";
        c.unsupported(
            "spot_allocation_strategy",
            self.spot_allocation_strategy.is_some(),
            &format!("{NO_FLEET} to allocate; remove it"),
        );
        c.unsupported(
            "fleet_tags",
            !self.fleet_tags.is_empty(),
            &format!("{NO_FLEET} to tag; put these tags in spot_tags (the spot request) or run_tags (the instance)"),
        );
        c.unsupported(
            "block_duration_minutes",
            self.block_duration_minutes.is_some(),
            "AWS no longer offers spot blocks (spot instances of a set duration): remove it",
        );
        const CREDITS: &str = "the build instance runs with its type's default credit \
             specification: remove it, or use a non-burstable instance_type for a build that needs \
             sustained CPU";
        c.unsupported(
            "enable_unlimited_credits",
            c.given("enable_unlimited_credits") && self.enable_unlimited_credits,
            CREDITS,
        );
        c.unsupported("enable_t2_unlimited", self.enable_t2_unlimited, CREDITS);
        c.unsupported(
            "enable_nitro_enclave",
            self.enable_nitro_enclave,
            "the build instance is launched without Nitro Enclaves: remove it (the instances \
             launched from the AMI enable enclaves themselves)",
        );
        const CAPACITY: &str = "the build instance is launched without targeting a capacity \
             reservation: remove it";
        for (key, set) in [
            (
                "capacity_reservation_preference",
                self.capacity_reservation_preference.is_some(),
            ),
            (
                "capacity_reservation_id",
                self.capacity_reservation_id.is_some(),
            ),
            (
                "capacity_reservation_group_arn",
                self.capacity_reservation_group_arn.is_some(),
            ),
        ] {
            c.unsupported(key, set, CAPACITY);
        }
        c.unsupported(
            "license_specifications",
            !self.license_specifications.is_empty(),
            "the build instance is launched without License Manager configurations: remove it \
             (associate the license configuration with the AMI after the build)",
        );
        const TENANCY: &str = "the build instance is launched with default tenancy on shared \
             hardware (no dedicated instance or host): remove it";
        c.unsupported("tenancy", self.tenancy.is_some(), TENANCY);
        if let Some(p) = &self.placement {
            for (key, set) in [
                ("placement.tenancy", p.tenancy.is_some()),
                ("placement.host_id", p.host_id.is_some()),
                (
                    "placement.host_resource_group_arn",
                    p.host_resource_group_arn.is_some(),
                ),
            ] {
                c.unsupported(key, set, TENANCY);
            }
        }
    }

    fn check_spot(&self, c: &mut Check) {
        if let Some(p) = self
            .spot_price
            .as_deref()
            .filter(|p| !templated(p) && *p != "auto")
        {
            if p.parse::<f64>().map_or(true, |v| v < 0.0) {
                c.err(
                    "spot_price",
                    format!(
                        "invalid value {p:?}: a maximum hourly price such as \"0.05\", or \"auto\""
                    ),
                );
            }
        }
        if !self.is_spot() {
            for (key, set) in [
                ("spot_instance_types", !self.spot_instance_types.is_empty()),
                ("spot_tags", !self.spot_tags.is_empty()),
                ("fleet_tags", !self.fleet_tags.is_empty()),
                (
                    "spot_allocation_strategy",
                    self.spot_allocation_strategy.is_some(),
                ),
            ] {
                if set {
                    c.err(
                        key,
                        "only applies to spot instances: set spot_price (e.g. \"auto\") or remove it",
                    );
                }
            }
        }
        c.one_of(
            "spot_allocation_strategy",
            self.spot_allocation_strategy.as_deref(),
            &[
                "lowest-price",
                "diversified",
                "capacity-optimized",
                "capacity-optimized-prioritized",
                "price-capacity-optimized",
            ],
        );
        if let Some(m) = self.block_duration_minutes {
            if m < 0 || m % 60 != 0 {
                c.err(
                    "block_duration_minutes",
                    format!("out of range: {m}; must be a multiple of 60"),
                );
            }
        }
    }

    /// What the instance type allows: Nitro Enclaves, unlimited credits.
    fn check_instance_type(&self, c: &mut Check) {
        let spot = self.is_spot();
        if spot && self.enable_nitro_enclave {
            c.err(
                "enable_nitro_enclave",
                "conflicts with spot_price: Nitro Enclaves cannot run on spot instances",
            );
        }
        let itype = self.instance_type.as_deref().filter(|t| !templated(t));
        if self.enable_nitro_enclave && itype.is_some_and(|t| t.starts_with('t')) {
            c.err(
                "enable_nitro_enclave",
                "burstable (t*) instance types do not support Nitro Enclaves",
            );
        }
        if self.enable_unlimited_credits {
            if let Some(t) = itype {
                if !["t2.", "t3.", "t3a.", "t4g."]
                    .iter()
                    .any(|p| t.starts_with(p))
                {
                    c.err(
                        "enable_unlimited_credits",
                        format!(
                            "only applies to burstable instance types (t2, t3, t3a, t4g), not {t}"
                        ),
                    );
                }
                if spot && t.starts_with("t2.") {
                    c.err(
                        "enable_unlimited_credits",
                        "t2 spot instances cannot use unlimited credits",
                    );
                }
            }
        }
    }

    /// Capacity reservations, tenancy and `placement`.
    fn check_placement(&self, c: &mut Check) {
        c.one_of(
            "capacity_reservation_preference",
            self.capacity_reservation_preference.as_deref(),
            &["none", "open"],
        );
        let cap = [
            (
                "capacity_reservation_preference",
                self.capacity_reservation_preference.is_some(),
            ),
            (
                "capacity_reservation_id",
                self.capacity_reservation_id.is_some(),
            ),
            (
                "capacity_reservation_group_arn",
                self.capacity_reservation_group_arn.is_some(),
            ),
        ];
        for i in 0..cap.len() {
            for j in i + 1..cap.len() {
                c.conflict(
                    cap[i].0,
                    cap[i].1,
                    cap[j].0,
                    cap[j].1,
                    "give only one way to choose a capacity reservation",
                );
            }
        }
        const TENANCIES: [&str; 3] = ["default", "dedicated", "host"];
        c.one_of("tenancy", self.tenancy.as_deref(), &TENANCIES);
        if let Some(p) = &self.placement {
            c.one_of("placement.tenancy", p.tenancy.as_deref(), &TENANCIES);
            c.conflict(
                "tenancy",
                self.tenancy.is_some(),
                "placement.tenancy",
                p.tenancy.is_some(),
                "tenancy is deprecated; keep placement.tenancy",
            );
            let host = p.host_id.is_some() || p.host_resource_group_arn.is_some();
            let tenancy = p.tenancy.as_deref().or(self.tenancy.as_deref());
            if host && tenancy.is_some_and(|t| t != "host") {
                c.err("placement.tenancy", "must be \"host\" when placement.host_id or placement.host_resource_group_arn is set");
            }
        }
    }

    fn check_metadata_options(&self, c: &mut Check) {
        let m = &self.metadata_options;
        c.one_of(
            "metadata_options.http_endpoint",
            Some(&m.http_endpoint),
            &["enabled", "disabled"],
        );
        c.one_of(
            "metadata_options.http_tokens",
            Some(&m.http_tokens),
            &["optional", "required"],
        );
        c.one_of(
            "metadata_options.instance_metadata_tags",
            Some(&m.instance_metadata_tags),
            &["enabled", "disabled"],
        );
        if !(1..=64).contains(&m.http_put_response_hop_limit) {
            c.err(
                "metadata_options.http_put_response_hop_limit",
                format!(
                    "out of range: {}; must be from 1 to 64",
                    m.http_put_response_hop_limit
                ),
            );
        }
    }

    fn check_policy_document(&self, c: &mut Check) {
        let Some(doc) = &self.temporary_iam_instance_profile_policy_document else {
            return;
        };
        if doc.statement.is_empty() {
            c.err(
                "temporary_iam_instance_profile_policy_document.Statement",
                "required: at least one statement",
            );
        }
        for s in &doc.statement {
            c.one_of(
                "temporary_iam_instance_profile_policy_document.Statement.Effect",
                Some(&s.effect),
                &["Allow", "Deny"],
            );
            if s.action.is_empty() {
                c.err(
                    "temporary_iam_instance_profile_policy_document.Statement.Action",
                    "required: list the actions the statement allows or denies",
                );
            }
        }
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

/// `metadata_options`: Packer's defaults (IMDS enabled, hop limit 1) except that session
/// tokens are required (IMDSv2 only) unless the template sets `http_tokens: "optional"`:
/// a build instance runs template-supplied scripts, and IMDSv1 hands its role's
/// credentials to any request a script can be tricked into making (README, "Defaults").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    #[serde(default = "enabled")]
    pub http_endpoint: String,
    #[serde(default = "required")]
    pub http_tokens: String,
    #[serde(default = "one", deserialize_with = "hop_limit")]
    pub http_put_response_hop_limit: i64,
    #[serde(default = "disabled")]
    pub instance_metadata_tags: String,
}

fn enabled() -> String {
    "enabled".into()
}
fn required() -> String {
    "required".into()
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
            http_tokens: required(),
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
