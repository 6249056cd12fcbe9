//! End-to-end tests. Each module needs a piece of the local stack; a test whose
//! prerequisite is missing says so and skips.
mod asl;
mod chroot_build;
mod chroot_host;
mod deploy;
mod ebs;
mod engines;
mod infra;
mod lambda_runtime;
mod builders;
mod provision_ebs;
mod provision_ssh;
mod provision_ssm;
