//! End-to-end tests. Each module needs a piece of the local stack; a test whose
//! prerequisite is missing says so and skips.

mod asl;
mod builders;
mod chain;
mod chroot_build;
mod chroot_host;
mod cli_flags;
mod deploy;
mod ebs;
mod engines;
mod faults;
mod hcl2;
mod infra;
mod lambda_runtime;
mod limits;
mod local_build;
mod pipeline;
mod policy;
mod provision_ebs;
mod provision_ssh;
mod provision_ssm;
mod simacct;
mod stack_defaults;
mod state_size;
