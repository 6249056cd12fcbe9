//! `from_builder`: raw builder object → typed config, with Packer's defaults and validation.

use serde_json::{Map, Value};

use super::{BuilderConfig, BuilderType};
use crate::problem::Problem;

/// Parse and validate one builder (`name` = the build's name, used in every problem).
pub fn from_builder(name: &str, builder_type: BuilderType, raw: &Map<String, Value>) -> Result<BuilderConfig, Vec<Problem>> {
    from_builder_with_env(name, builder_type, raw, &|k| std::env::var(k).ok())
}

/// [`from_builder`] with the environment given (for the region fallback), so tests stay pure.
pub fn from_builder_with_env(
    name: &str,
    builder_type: BuilderType,
    raw: &Map<String, Value>,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<BuilderConfig, Vec<Problem>> {
    let mut raw = raw.clone();
    raw.remove("type");
    raw.remove("name");
    let value = Value::Object(raw);
    let parsed = match builder_type {
        BuilderType::Ebs => serde_json::from_value(value).map(BuilderConfig::Ebs),
        BuilderType::Chroot => serde_json::from_value(value).map(BuilderConfig::Chroot),
        BuilderType::Instance => serde_json::from_value(value).map(BuilderConfig::Instance),
        BuilderType::EbsSurrogate => serde_json::from_value(value).map(BuilderConfig::EbsSurrogate),
        BuilderType::EbsVolume => serde_json::from_value(value).map(BuilderConfig::EbsVolume),
    };
    parsed.map_err(|e| vec![Problem::new(e.to_string()).in_builder(name)])
}
