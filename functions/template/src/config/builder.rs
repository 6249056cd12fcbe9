//! The builder types and the typed config of each, with the groups they share.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::chroot::ChrootConfig;
use super::common::AmiFilter;
use super::communicator::CommunicatorConfig;
use super::ebs::EbsConfig;
use super::ebssurrogate::EbsSurrogateConfig;
use super::ebsvolume::EbsVolumeConfig;
use super::instance::InstanceConfig;
use super::run::RunConfig;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum BuilderType {
    #[serde(rename = "amazon-ebs")]
    Ebs,
    #[serde(rename = "amazon-chroot")]
    Chroot,
    #[serde(rename = "amazon-instance")]
    Instance,
    #[serde(rename = "amazon-ebssurrogate")]
    EbsSurrogate,
    #[serde(rename = "amazon-ebsvolume")]
    EbsVolume,
}

impl BuilderType {
    pub const ALL: [BuilderType; 5] = [
        Self::Ebs,
        Self::Chroot,
        Self::Instance,
        Self::EbsSurrogate,
        Self::EbsVolume,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ebs => "amazon-ebs",
            Self::Chroot => "amazon-chroot",
            Self::Instance => "amazon-instance",
            Self::EbsSurrogate => "amazon-ebssurrogate",
            Self::EbsVolume => "amazon-ebsvolume",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A builder's typed config. Serialized externally tagged by builder type
/// (`{"amazon-ebs": {...}}`); secrets are never serialized.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum BuilderConfig {
    #[serde(rename = "amazon-ebs")]
    Ebs(EbsConfig),
    #[serde(rename = "amazon-chroot")]
    Chroot(ChrootConfig),
    #[serde(rename = "amazon-instance")]
    Instance(InstanceConfig),
    #[serde(rename = "amazon-ebssurrogate")]
    EbsSurrogate(EbsSurrogateConfig),
    #[serde(rename = "amazon-ebsvolume")]
    EbsVolume(EbsVolumeConfig),
}

impl BuilderConfig {
    pub fn builder_type(&self) -> BuilderType {
        match self {
            Self::Ebs(_) => BuilderType::Ebs,
            Self::Chroot(_) => BuilderType::Chroot,
            Self::Instance(_) => BuilderType::Instance,
            Self::EbsSurrogate(_) => BuilderType::EbsSurrogate,
            Self::EbsVolume(_) => BuilderType::EbsVolume,
        }
    }

    pub fn access(&self) -> &AccessConfig {
        match self {
            Self::Ebs(c) => &c.access,
            Self::Chroot(c) => &c.access,
            Self::Instance(c) => &c.access,
            Self::EbsSurrogate(c) => &c.access,
            Self::EbsVolume(c) => &c.access,
        }
    }

    pub fn access_mut(&mut self) -> &mut AccessConfig {
        match self {
            Self::Ebs(c) => &mut c.access,
            Self::Chroot(c) => &mut c.access,
            Self::Instance(c) => &mut c.access,
            Self::EbsSurrogate(c) => &mut c.access,
            Self::EbsVolume(c) => &mut c.access,
        }
    }

    /// None for ebsvolume, which makes no AMI.
    pub fn ami(&self) -> Option<&AmiConfig> {
        match self {
            Self::Ebs(c) => Some(&c.ami),
            Self::Chroot(c) => Some(&c.ami),
            Self::Instance(c) => Some(&c.ami),
            Self::EbsSurrogate(c) => Some(&c.ami),
            Self::EbsVolume(_) => None,
        }
    }

    /// [`BuilderConfig::ami`], to change: a pipeline adds its tags to the image's, Packer's
    /// `-force` sets `force_deregister`.
    pub fn ami_mut(&mut self) -> Option<&mut AmiConfig> {
        match self {
            Self::Ebs(c) => Some(&mut c.ami),
            Self::Chroot(c) => Some(&mut c.ami),
            Self::Instance(c) => Some(&mut c.ami),
            Self::EbsSurrogate(c) => Some(&mut c.ami),
            Self::EbsVolume(_) => None,
        }
    }

    /// None for chroot, which launches no instance.
    pub fn run(&self) -> Option<&RunConfig> {
        match self {
            Self::Ebs(c) => Some(&c.run),
            Self::Chroot(_) => None,
            Self::Instance(c) => Some(&c.run),
            Self::EbsSurrogate(c) => Some(&c.run),
            Self::EbsVolume(c) => Some(&c.run),
        }
    }

    /// None for chroot, which runs commands on its build host.
    pub fn comm(&self) -> Option<&CommunicatorConfig> {
        match self {
            Self::Ebs(c) => Some(&c.comm),
            Self::Chroot(_) => None,
            Self::Instance(c) => Some(&c.comm),
            Self::EbsSurrogate(c) => Some(&c.comm),
            Self::EbsVolume(c) => Some(&c.comm),
        }
    }

    /// The template's `region`; None means the environment/profile (chroot: the host) decides.
    pub fn region(&self) -> Option<&str> {
        self.access().region.as_deref().filter(|r| !r.is_empty())
    }

    /// The source AMI id, wherever the builder keeps it.
    pub fn source_ami(&self) -> Option<&str> {
        match self {
            Self::Chroot(c) => c.source_ami.as_deref(),
            other => other.run().and_then(|r| r.source_ami.as_deref()),
        }
        .filter(|s| !s.is_empty())
    }

    pub fn source_ami_filter(&self) -> Option<&AmiFilter> {
        match self {
            Self::Chroot(c) => c.source_ami_filter.as_ref(),
            other => other.run().and_then(|r| r.source_ami_filter.as_ref()),
        }
    }
}
