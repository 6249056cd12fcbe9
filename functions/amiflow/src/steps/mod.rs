//! One file per step: the handler, the IAM actions it calls and its wait policy together.
//!
//! [`registry`] lists every step; the Lambda binary, the local engine and `serve-lambdas`
//! dispatch through it by handler name, the flows chain them, the SAM template's roles
//! are checked against their `iam_actions`.

pub mod cleanup;
pub mod connect;
pub mod copy_image;
pub mod create_image;
pub mod create_tags;
pub mod deregister_ami;
pub mod enable_deprecation;
pub mod iam_instance_profile;
pub mod images;
pub mod instance_state;
pub mod janitor;
pub mod key_pair;
pub mod modify_image_attributes;
pub mod modify_instance;
pub mod network_info;
pub mod pre_validate;
pub mod provision;
pub mod run_source_instance;
pub mod security_group;
pub mod source_ami_info;
pub mod stop_instance;
pub mod wait_copies_available;
pub mod wait_image_available;
pub mod wait_instance_running;
pub mod wait_instance_stopped;
// amazon-chroot
pub mod attach_volume;
pub mod block_devices;
pub mod chroot;
pub mod create_snapshot;
pub mod create_volume;
pub mod detach_volume;
pub mod host_info;
pub mod register_image;
pub mod run_host_script;
pub mod wait_host_script;
pub mod wait_snapshots_completed;
pub mod wait_volume_attached;
pub mod wait_volume_available;
pub mod wait_volume_detached;
// amazon-ebssurrogate, amazon-ebsvolume, amazon-instance
pub mod attach_root_volume;
pub mod bundle_volume;
pub mod instance_store;
pub mod modify_snapshot_attributes;
mod prelude;
pub mod snapshot_volumes;
pub mod swap_volumes;
pub mod tag_volumes;
pub mod upload_bundle;
pub mod upload_x509_cert;
pub mod volumes;
pub mod wait_root_volume_attached;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{Ctx, StepError};

pub mod finalize;
pub mod prepare;

/// How a wait step is polled: rendered as the state's `Retry` on `NotReady`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitPolicy {
    pub interval_seconds: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: u32,
    pub max_attempts: u32,
}

impl WaitPolicy {
    /// The longest this policy keeps polling, in seconds (interval grows by the backoff,
    /// capped at max_delay).
    pub fn budget_seconds(&self) -> f64 {
        let mut total = 0.0;
        let mut delay = self.interval_seconds as f64;
        for _ in 0..self.max_attempts {
            total += delay.min(self.max_delay_seconds as f64);
            delay *= self.backoff_rate;
        }
        total
    }
}

/// The boxed form every handler is called through.
pub type Handler = fn(Arc<Ctx>, Value) -> BoxFuture<'static, Result<Value, StepError>>;

/// A step as the rest of the system sees it.
#[derive(Clone, Copy)]
pub struct StepSpec {
    /// The state and handler name (Packer's step name), e.g. `CreateImage`.
    pub name: &'static str,
    /// IAM actions the handler calls, e.g. `ec2:CreateImage`.
    pub iam_actions: &'static [&'static str],
    /// Set for wait steps: the handler raises `NotReady` until the resource is ready.
    pub wait: Option<WaitPolicy>,
    /// Lambda timeout for this step, seconds.
    pub timeout_seconds: u32,
    pub handler: Handler,
}

impl std::fmt::Debug for StepSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepSpec")
            .field("name", &self.name)
            .field("wait", &self.wait)
            .finish()
    }
}

/// Adapts `async fn(&Ctx, T) -> Result<U, StepError>` to a [`Handler`], where `T` and `U`
/// are the step's typed input and output (usually [`crate::BuildState`]).
#[macro_export]
macro_rules! handler {
    ($f:path) => {{
        fn boxed(
            ctx: ::std::sync::Arc<$crate::Ctx>,
            input: ::serde_json::Value,
        ) -> ::futures::future::BoxFuture<'static, Result<::serde_json::Value, $crate::StepError>>
        {
            Box::pin(async move {
                let input = ::serde_json::from_value(input)?;
                let output = $f(&ctx, input).await?;
                Ok(::serde_json::to_value(output)?)
            })
        }
        boxed as $crate::steps::Handler
    }};
}

/// Every step, by handler name.
pub fn registry() -> Vec<StepSpec> {
    vec![
        prepare::STEP,
        pre_validate::SPEC,
        source_ami_info::SPEC,
        network_info::SPEC,
        key_pair::SPEC,
        security_group::SPEC,
        iam_instance_profile::SPEC,
        run_source_instance::SPEC,
        wait_instance_running::SPEC,
        connect::SPEC,
        provision::SPEC,
        stop_instance::SPEC,
        wait_instance_stopped::SPEC,
        modify_instance::SPEC,
        deregister_ami::SPEC,
        create_image::SPEC,
        wait_image_available::SPEC,
        copy_image::SPEC,
        wait_copies_available::SPEC,
        modify_image_attributes::SPEC,
        create_tags::SPEC,
        enable_deprecation::SPEC,
        cleanup::SPEC,
        tag_volumes::SPEC,
        snapshot_volumes::SPEC,
        wait_snapshots_completed::SPEC,
        swap_volumes::SPEC,
        attach_root_volume::SPEC,
        wait_root_volume_attached::SPEC,
        modify_snapshot_attributes::SPEC,
        register_image::SPEC,
        upload_x509_cert::SPEC,
        bundle_volume::SPEC,
        upload_bundle::SPEC,
        janitor::SPEC,
        finalize::STEP,
        host_info::SPEC,
        create_volume::SPEC,
        wait_volume_available::SPEC,
        attach_volume::SPEC,
        wait_volume_attached::SPEC,
        run_host_script::SPEC,
        wait_host_script::SPEC,
        detach_volume::SPEC,
        wait_volume_detached::SPEC,
        create_snapshot::SPEC,
    ]
}

/// The step with this handler name.
pub fn find(name: &str) -> Option<StepSpec> {
    registry().into_iter().find(|s| s.name == name)
}
