//! What the steps read across builders, answered once from the typed config: keys that
//! several builders keep in different places, and Packer's rules derived from several keys
//! (target regions, the intermediary image, the communicator port).

use super::access::AwsPolling;
use super::block_device::BlockDevice;
use super::builder::BuilderConfig;
use super::common::Tags;
use super::run::RunConfig;

/// The answer for a builder that has no such tags.
static NO_TAGS: Tags = Tags::new();

impl BuilderConfig {
    /// The region the build runs in, `""` when the template leaves it to the environment.
    pub fn build_region(&self) -> &str {
        self.region().unwrap_or("")
    }

    /// `aws_polling`, which bounds every wait.
    pub fn aws_polling(&self) -> Option<&AwsPolling> {
        self.access().aws_polling.as_ref()
    }

    /// The regions the AMI ends up in: the build region first, then `ami_regions`.
    pub fn target_regions(&self) -> Vec<String> {
        let mut out = vec![self.build_region().to_string()];
        for r in self
            .ami()
            .map(|a| a.ami_regions.as_slice())
            .unwrap_or_default()
        {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// The build-region image is a temporary one (random name, removed after the copies):
    /// with `encrypt_boot: true` (copied to an encrypted image) or `skip_save_build_region`.
    pub fn intermediary_image(&self) -> bool {
        self.ami()
            .is_some_and(|a| a.encrypt_boot == Some(true) || a.skip_save_build_region)
    }

    /// Regions the copy step copies into (Packer: `ami_regions` without the build region,
    /// plus the build region itself first when its image is intermediary and kept).
    pub fn copy_regions(&self) -> Vec<String> {
        let region = self.build_region();
        let mut out: Vec<String> = Vec::new();
        for r in self
            .ami()
            .map(|a| a.ami_regions.as_slice())
            .unwrap_or_default()
        {
            if r != region && !out.contains(r) {
                out.push(r.clone());
            }
        }
        if self.intermediary_image() && !self.ami().is_some_and(|a| a.skip_save_build_region) {
            out.insert(0, region.to_string());
        }
        out
    }

    /// `ami_block_device_mappings`; none for ebsvolume.
    pub fn ami_block_device_mappings(&self) -> &[BlockDevice] {
        match self {
            Self::Ebs(c) => &c.ami_block_device_mappings,
            Self::Chroot(c) => &c.ami_block_device_mappings,
            Self::Instance(c) => &c.ami_block_device_mappings,
            Self::EbsSurrogate(c) => &c.ami_block_device_mappings,
            Self::EbsVolume(_) => &[],
        }
    }

    /// The devices the source instance launches with: `launch_block_device_mappings`, or
    /// ebsvolume's `ebs_volumes`; none for chroot.
    pub fn launch_block_device_mappings(&self) -> Vec<&BlockDevice> {
        match self {
            Self::Ebs(c) => c.launch_block_device_mappings.iter().collect(),
            Self::Instance(c) => c.launch_block_device_mappings.iter().collect(),
            Self::EbsSurrogate(c) => c.launch_block_device_mappings.iter().collect(),
            Self::EbsVolume(c) => c.ebs_volumes.iter().map(|v| &v.device).collect(),
            Self::Chroot(_) => Vec::new(),
        }
    }

    /// `run_volume_tags` (ebs, ebssurrogate, ebsvolume), rendered later with build data.
    pub fn run_volume_tags(&self) -> &Tags {
        match self {
            Self::Ebs(c) => &c.run_volume_tags,
            Self::EbsSurrogate(c) => &c.run_volume_tags,
            Self::EbsVolume(c) => &c.run_volume_tags,
            Self::Chroot(_) | Self::Instance(_) => &NO_TAGS,
        }
    }

    /// `run_tags`, rendered later with build data; none for chroot.
    pub fn run_tags(&self) -> &Tags {
        self.run().map(|r| &r.run_tags).unwrap_or(&NO_TAGS)
    }

    /// amazon-ebs's `skip_create_ami`.
    pub fn skip_create_ami(&self) -> bool {
        matches!(self, Self::Ebs(c) if c.skip_create_ami)
    }

    /// `skip_ami_run_tags` (ebs, ebssurrogate): keep `run_tags` off the AMI.
    pub fn skip_ami_run_tags(&self) -> bool {
        match self {
            Self::Ebs(c) => c.skip_ami_run_tags,
            Self::EbsSurrogate(c) => c.skip_ami_run_tags,
            _ => false,
        }
    }

    /// amazon-ebs's `no_ephemeral`.
    pub fn no_ephemeral(&self) -> bool {
        matches!(self, Self::Ebs(c) if c.no_ephemeral)
    }

    /// `ena_support` (trilean), in the AMI config or ebsvolume's own keys.
    pub fn ena_support(&self) -> Option<bool> {
        match self {
            Self::EbsVolume(c) => c.ena_support,
            other => other.ami().and_then(|a| a.ena_support),
        }
    }

    /// `sriov_support`, in the AMI config or ebsvolume's own keys.
    pub fn sriov_support(&self) -> bool {
        match self {
            Self::EbsVolume(c) => c.sriov_support,
            other => other.ami().is_some_and(|a| a.sriov_support),
        }
    }

    /// A spot build (Packer's rule on `spot_price`).
    pub fn is_spot(&self) -> bool {
        self.run().is_some_and(RunConfig::is_spot)
    }

    /// The port the temporary security group opens for the communicator, or None when it
    /// needs no inbound port (`none`, `ssm`, SSH through `session_manager`, chroot).
    pub fn communicator_port(&self) -> Option<u16> {
        let comm = self.comm()?;
        if comm.ssh_interface.as_deref() == Some("session_manager") {
            return None;
        }
        comm.port()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::EbsVolumeConfig;

    fn ebs(extra: serde_json::Value) -> BuilderConfig {
        let mut m = json!({"region": "us-east-1", "ami_name": "x", "instance_type": "t3.micro", "source_ami": "ami-1", "communicator": "none"});
        m.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        BuilderConfig::Ebs(serde_json::from_value(m).unwrap())
    }

    #[test]
    fn regions_and_the_intermediary_image() {
        let c = ebs(json!({"ami_regions": ["us-east-1", "eu-west-1", "eu-west-1"]}));
        assert_eq!(c.target_regions(), vec!["us-east-1", "eu-west-1"]);
        assert_eq!(c.copy_regions(), vec!["eu-west-1"]);
        assert!(!c.intermediary_image());
        let encrypted = ebs(json!({"ami_regions": ["eu-west-1"], "encrypt_boot": true}));
        assert!(encrypted.intermediary_image());
        assert_eq!(encrypted.copy_regions(), vec!["us-east-1", "eu-west-1"]);
        let skipped = ebs(json!({"ami_regions": ["eu-west-1"], "skip_save_build_region": true}));
        assert!(skipped.intermediary_image());
        assert_eq!(skipped.copy_regions(), vec!["eu-west-1"]);
    }

    #[test]
    fn communicator_ports() {
        assert_eq!(ebs(json!({})).communicator_port(), None);
        assert_eq!(
            ebs(json!({"communicator": "ssh", "ssh_port": 2222})).communicator_port(),
            Some(2222)
        );
        assert_eq!(
            ebs(json!({"communicator": "ssh", "ssh_interface": "session_manager"}))
                .communicator_port(),
            None
        );
        assert_eq!(
            ebs(json!({"communicator": "ssm"})).communicator_port(),
            None
        );
    }

    #[test]
    fn ebsvolume_keeps_its_own_keys() {
        let c: EbsVolumeConfig = serde_json::from_value(json!({
            "region": "us-east-1", "ena_support": true, "sriov_support": true,
            "ebs_volumes": [{"device_name": "/dev/xvdf", "volume_size": 8, "tags": {"k": "v"}}]
        }))
        .unwrap();
        let c = BuilderConfig::EbsVolume(c);
        assert_eq!((c.ena_support(), c.sriov_support()), (Some(true), true));
        assert_eq!(
            c.launch_block_device_mappings()
                .iter()
                .map(|d| d.device_name.as_str())
                .collect::<Vec<_>>(),
            vec!["/dev/xvdf"]
        );
        assert!(
            c.ami_block_device_mappings().is_empty() && c.target_regions() == vec!["us-east-1"]
        );
    }
}
