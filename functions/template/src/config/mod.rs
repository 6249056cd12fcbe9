//! One typed config per builder, with Packer's defaults and validation.

use serde::{Deserialize, Serialize};

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
    pub const ALL: [BuilderType; 5] = [Self::Ebs, Self::Chroot, Self::Instance, Self::EbsSurrogate, Self::EbsVolume];

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

/// Placeholder until the typed configs land: the raw builder object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct BuilderConfig(pub serde_json::Map<String, serde_json::Value>);

/// Stand-in until the typed configs land (branch `config`): keeps the rendered map.
pub fn from_builder(
    _name: &str,
    _builder_type: BuilderType,
    raw: &serde_json::Map<String, serde_json::Value>,
) -> Result<BuilderConfig, Vec<crate::problem::Problem>> {
    Ok(BuilderConfig(raw.clone()))
}
