//! One typed config per builder, with Packer's defaults and validation.
//!
//! Field names are the Packer JSON keys. Every builder config flattens its groups:
//! `access` ([`AccessConfig`], all builders), `ami` ([`AmiConfig`]: ebs, ebssurrogate,
//! chroot, instance), `run` ([`RunConfig`]) and `comm` ([`CommunicatorConfig`]): ebs,
//! ebssurrogate, ebsvolume, instance), then the builder's own keys.
//! [`from_builder`] turns an interpolated builder object into a config, or every problem.
//!
//! Each config's file holds its struct, its defaults (`normalize`) and its rules (`check`),
//! as Packer keeps each config's `Prepare` beside its struct. validate.rs runs the passes
//! and calls them; check.rs is the machinery they share. Calls go one way:
//! validate.rs → builder.rs and the config files → check.rs.

pub mod access;
pub mod ami;
pub mod block_device;
mod builder;
pub(crate) mod check;
pub mod chroot;
pub mod common;
pub mod communicator;
mod derived;
pub mod duration;
pub mod ebs;
pub mod ebssurrogate;
pub mod ebsvolume;
pub mod instance;
pub mod run;
mod validate;
pub(crate) mod weak;

pub use access::{AccessConfig, AssumeRoleConfig, AwsPolling, CredentialSource};
pub use ami::{AmiConfig, DeregistrationProtection};
pub use block_device::{BlockDevice, EbsVolumeMapping, RootBlockDevice};
pub use builder::{BuilderConfig, BuilderType};
pub use chroot::ChrootConfig;
pub use common::{AmiFilter, Filter, SubnetFilter, Tags};
pub use communicator::CommunicatorConfig;
pub use duration::Duration;
pub use ebs::{EbsConfig, FastLaunch, FastLaunchTemplate};
pub use ebssurrogate::EbsSurrogateConfig;
pub use ebsvolume::EbsVolumeConfig;
pub use instance::InstanceConfig;
pub use run::{MetadataOptions, Placement, PolicyDocument, PolicyStatement, RunConfig};
pub use validate::{from_builder, from_builder_with_env, known_keys};

#[cfg(test)]
mod key_coverage;
#[cfg(test)]
mod tests;
