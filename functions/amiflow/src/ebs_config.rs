//! The amazon-ebs settings the steps read, by their Packer JSON keys.
//!
//! A stand-in until the typed configs (functions/template config/) land: it reads the
//! prepared builder config whether it is flat (Packer's shape) or grouped
//! (`{access, ami, run, comm, ...}`), so the steps do not depend on the grouping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ctx::AssumeRoleConfig;
use crate::{BuildState, StepError};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EbsView {
    // access
    pub region: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub token: Option<String>,
    pub profile: Option<String>,
    pub shared_credentials_file: Option<String>,
    pub custom_endpoint_ec2: Option<String>,
    pub max_retries: Option<u32>,
    pub skip_region_validation: bool,
    pub skip_metadata_api_check: bool,
    pub assume_role: Option<AssumeRoleConfig>,
    pub aws_polling: Option<AwsPolling>,
    // ami
    pub ami_name: String,
    pub ami_description: String,
    pub ami_users: Vec<String>,
    pub ami_groups: Vec<String>,
    pub ami_org_arns: Vec<String>,
    pub ami_ou_arns: Vec<String>,
    pub ami_product_codes: Vec<String>,
    pub ami_regions: Vec<String>,
    pub ami_virtualization_type: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub snapshot_tags: BTreeMap<String, String>,
    pub snapshot_users: Vec<String>,
    pub snapshot_groups: Vec<String>,
    pub ena_support: Option<bool>,
    pub sriov_support: bool,
    pub force_deregister: bool,
    pub force_delete_snapshot: bool,
    pub encrypt_boot: Option<bool>,
    pub kms_key_id: Option<String>,
    pub region_kms_key_ids: BTreeMap<String, String>,
    pub skip_save_build_region: bool,
    pub deprecate_at: Option<String>,
    pub imds_support: Option<String>,
    pub skip_create_ami: bool,
    pub skip_ami_run_tags: bool,
    pub ami_block_device_mappings: Vec<BlockDevice>,
    // run
    pub source_ami: Option<String>,
    pub source_ami_filter: Option<SourceAmiFilter>,
    pub instance_type: String,
    pub availability_zone: Option<String>,
    pub subnet_id: Option<String>,
    pub subnet_filter: Option<SubnetFilter>,
    pub vpc_id: Option<String>,
    pub vpc_filter: Option<Filters>,
    pub associate_public_ip_address: Option<bool>,
    pub security_group_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub security_group_filter: Option<Filters>,
    pub temporary_security_group_source_cidrs: Vec<String>,
    pub iam_instance_profile: Option<String>,
    pub skip_profile_validation: bool,
    pub temporary_iam_instance_profile_policy_document: Option<Value>,
    pub user_data: Option<String>,
    pub user_data_file: Option<String>,
    pub run_tags: BTreeMap<String, String>,
    pub run_volume_tags: BTreeMap<String, String>,
    pub ebs_optimized: bool,
    pub shutdown_behavior: Option<String>,
    pub disable_stop_instance: bool,
    pub spot_price: Option<String>,
    pub spot_instance_types: Vec<String>,
    pub spot_tags: BTreeMap<String, String>,
    pub metadata_options: Option<MetadataOptions>,
    pub launch_block_device_mappings: Vec<BlockDevice>,
    pub no_ephemeral: bool,
    pub ssh_interface: Option<String>,
    // communicator
    pub communicator: Option<String>,
    pub ssh_port: Option<u16>,
    pub ssh_keypair_name: Option<String>,
    pub ssh_private_key_file: Option<String>,
    pub ssh_agent_auth: bool,
    pub ssh_password: Option<String>,
    pub temporary_key_pair_name: Option<String>,
    pub temporary_key_pair_type: Option<String>,
    pub winrm_port: Option<u16>,
    pub winrm_use_ssl: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AwsPolling {
    pub max_attempts: Option<u64>,
    pub delay_seconds: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SourceAmiFilter {
    pub filters: BTreeMap<String, String>,
    pub owners: Vec<String>,
    pub most_recent: bool,
    pub include_deprecated: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SubnetFilter {
    pub filters: BTreeMap<String, String>,
    pub most_free: bool,
    pub random: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Filters {
    pub filters: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MetadataOptions {
    pub http_endpoint: Option<String>,
    pub http_tokens: Option<String>,
    pub http_put_response_hop_limit: Option<i32>,
    pub instance_metadata_tags: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BlockDevice {
    pub device_name: String,
    pub delete_on_termination: bool,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub no_device: bool,
    pub snapshot_id: Option<String>,
    pub virtual_name: Option<String>,
    pub volume_type: Option<String>,
    pub volume_size: Option<i32>,
}

/// Group names the typed config may nest the Packer keys under.
const GROUPS: &[&str] = &["access", "ami", "run", "comm", "communicator", "snapshot", "ebs", "block_devices"];

impl EbsView {
    pub fn of(state: &BuildState) -> Result<EbsView, StepError> {
        let mut raw = serde_json::to_value(&state.build.config)?;
        // The typed config serializes externally tagged: `{"amazon-ebs": {...}}`.
        if let Value::Object(m) = &raw {
            if m.len() == 1 && amiflow_template::BuilderType::parse(m.keys().next().unwrap()).is_some() {
                raw = m.values().next().unwrap().clone();
            }
        }
        let mut flat = serde_json::Map::new();
        flatten_into(&raw, &mut flat);
        // Unset options serialize as null; the view's defaults stand for them.
        flat.retain(|_, v| !v.is_null());
        // amazon-ebsvolume launches with `ebs_volumes` (block devices plus what to keep).
        if let Some(v) = flat.remove("ebs_volumes") {
            flat.insert("launch_block_device_mappings".into(), v);
        }
        serde_json::from_value(Value::Object(flat)).map_err(|e| {
            StepError::BuildFailed(format!("build {}: the prepared amazon-ebs config is not readable: {e}", state.build.name))
        })
    }


    /// The regions the AMI ends up in, build region first, deduplicated.
    pub fn target_regions(&self) -> Vec<String> {
        let mut out = vec![self.region.clone()];
        for r in &self.ami_regions {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// Regions the copy step copies into (Packer: `ami_regions` minus the build region,
    /// plus the build region itself when the build-region image is intermediary).
    pub fn copy_regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.ami_regions {
            if r != &self.region && !out.contains(r) {
                out.push(r.clone());
            }
        }
        if self.intermediary_image() && !self.skip_save_build_region {
            out.insert(0, self.region.clone());
        }
        out
    }

    /// The build-region image is a temporary one (random name, removed after the copies).
    pub fn intermediary_image(&self) -> bool {
        self.encrypt_boot == Some(true) || self.skip_save_build_region
    }

    pub fn communicator(&self) -> &str {
        self.communicator.as_deref().unwrap_or("ssh")
    }

    /// The port the communicator connects to, or None when it needs no inbound port.
    pub fn communicator_port(&self) -> Option<u16> {
        match self.communicator() {
            "none" | "ssm" => None,
            "winrm" => Some(self.winrm_port.unwrap_or(if self.winrm_use_ssl { 5986 } else { 5985 })),
            _ if self.ssh_interface.as_deref() == Some("session_manager") => None,
            _ => Some(self.ssh_port.unwrap_or(22)),
        }
    }

    pub fn is_spot(&self) -> bool {
        matches!(self.spot_price.as_deref(), Some(p) if !p.is_empty() && p != "0")
    }
}

fn flatten_into(v: &Value, out: &mut serde_json::Map<String, Value>) {
    if let Value::Object(m) = v {
        for (k, val) in m {
            if val.is_null() {
                // An unset option of the typed config: the view's default applies.
                continue;
            }
            if GROUPS.contains(&k.as_str()) && val.is_object() {
                flatten_into(val, out);
            } else {
                out.insert(k.clone(), val.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_and_flat_configs_read_the_same() {
        let flat = serde_json::json!({"region": "us-east-1", "ami_name": "x", "instance_type": "t3.micro", "communicator": "none"});
        let grouped = serde_json::json!({"access": {"region": "us-east-1"}, "ami": {"ami_name": "x"}, "run": {"instance_type": "t3.micro"}, "comm": {"communicator": "none"}});
        let mut a = serde_json::Map::new();
        flatten_into(&flat, &mut a);
        let mut b = serde_json::Map::new();
        flatten_into(&grouped, &mut b);
        assert_eq!(a, b);
        let v: EbsView = serde_json::from_value(Value::Object(a)).unwrap();
        assert_eq!(v.communicator_port(), None);
    }

    #[test]
    fn intermediary_when_encrypting() {
        let v = EbsView { region: "us-east-1".into(), ami_regions: vec!["us-east-1".into(), "eu-west-1".into()], encrypt_boot: Some(true), ..Default::default() };
        assert_eq!(v.copy_regions(), vec!["us-east-1", "eu-west-1"]);
        let plain = EbsView { encrypt_boot: None, ..v };
        assert_eq!(plain.copy_regions(), vec!["eu-west-1"]);
    }
}
