//! One file per step: the handler, the IAM actions it calls and its wait together. Each
//! exports its `SPEC`; `flows.rs` chains them per builder and derives the registry the
//! Lambda binary, the local engine and `serve-lambdas` dispatch through, and the roles.

pub mod await_event;
pub mod cleanup;
pub mod connect;
pub mod copy_image;
pub mod create_image;
pub mod create_tags;
pub mod deliver_event;
pub mod deregister_ami;
pub mod enable_deprecation;
pub mod error_cleanup_provision;
pub mod iam_instance_profile;
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
pub mod modify_snapshot_attributes;
pub mod snapshot_volumes;
pub mod swap_volumes;
pub mod tag_volumes;
pub mod upload_bundle;
pub mod upload_x509_cert;
pub mod wait_root_volume_attached;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{Ctx, StepError};

pub mod finalize;
pub mod prepare;
// pipelines (around the builds)
pub mod approve;
pub mod fingerprint;
pub mod judge_tests;
pub mod notify;
pub mod plan_tests;
pub mod publish;
pub mod retain;
pub mod scheduled_start;
pub mod withdraw;

/// The boxed form every handler is called through.
pub type Handler = fn(Arc<Ctx>, Value) -> BoxFuture<'static, Result<Value, StepError>>;

/// A step as the rest of the system sees it.
#[derive(Clone, Copy)]
pub struct StepSpec {
    /// The state and handler name (Packer's step name), e.g. `CreateImage`.
    pub name: &'static str,
    /// IAM actions the handler calls, e.g. `ec2:CreateImage`.
    pub iam_actions: &'static [&'static str],
    /// Actions this step may use less widely than their kind's module declares
    /// ([`crate::resources::declared_reach`]); checked to be among `iam_actions`.
    pub reach: &'static [(&'static str, crate::resources::Reach)],
    /// Set for waiting steps: the handler raises `NotReady` until the resource is ready,
    /// and the state retries on the wait's policy.
    pub wait: Option<crate::waits::Wait>,
    /// Lambda timeout for this step, seconds.
    pub timeout_seconds: u32,
    pub handler: Handler,
}

impl StepSpec {
    /// How far `action` reaches in this step's deployed role: the step's own narrowing,
    /// else what the action's kind declares.
    pub fn reach_of(&self, action: &str) -> crate::resources::Reach {
        self.reach
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(action))
            .map_or_else(|| crate::resources::declared_reach(action), |(_, r)| *r)
    }
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
