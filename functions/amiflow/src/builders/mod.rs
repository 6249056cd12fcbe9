//! What the steps of one builder share, beside the steps themselves.
//!
//! - [`chroot`]: amazon-chroot — the config, the host and build volume the steps learn, the
//!   host script's job.
//! - [`instance_store`]: amazon-instance — the config, the SSH session for the bundle
//!   commands, the bundle's place in S3.
//! - [`launch_volumes`]: amazon-ebssurrogate and amazon-ebsvolume — their configs and the
//!   instance's device → volume map.
//! - [`block_devices`]: a template's block device entry as EC2's mapping, for every builder
//!   that launches or registers.

pub mod block_devices;
pub mod chroot;
pub mod instance_store;
pub mod launch_volumes;
