//! What step files import: the build state, the clients, the errors, the build's identity
//! (tags, tokens, names), late rendering, the waits, and accessors for the config parts a
//! step needs.

pub use std::collections::BTreeMap;
pub use std::time::Duration;

pub use amiflow_template::config::{AmiConfig, CommunicatorConfig, RunConfig};
pub use aws_sdk_ec2::types::{Filter, ResourceType};

pub use crate::build_render::{render, render_tags};
pub use crate::error::{classify, error_code, or_absent};
pub use crate::identity::*;
pub use crate::resources::Reach;
pub use crate::state::{ResourceKind, BUILD_TAG};
pub use crate::steps::StepSpec;
pub use crate::waits;
pub use crate::{handler, BuildState, Ctx, StepError};

/// Lambda timeout for steps that make a handful of API calls.
pub const SHORT_TIMEOUT: u32 = 120;

/// The build's AMI settings, for a step that only runs in builders that make an AMI.
pub fn ami_config<'a>(state: &'a BuildState, step: &str) -> Result<&'a AmiConfig, StepError> {
    state
        .build
        .config
        .ami()
        .ok_or_else(|| wrong_builder(state, step, "AMI"))
}

/// The source instance's settings, for a step that only runs in builders that launch one.
pub fn run_config<'a>(state: &'a BuildState, step: &str) -> Result<&'a RunConfig, StepError> {
    state
        .build
        .config
        .run()
        .ok_or_else(|| wrong_builder(state, step, "source instance"))
}

/// The communicator's settings, for a step that only runs in builders that connect.
pub fn comm_config<'a>(
    state: &'a BuildState,
    step: &str,
) -> Result<&'a CommunicatorConfig, StepError> {
    state
        .build
        .config
        .comm()
        .ok_or_else(|| wrong_builder(state, step, "communicator"))
}

fn wrong_builder(state: &BuildState, step: &str, what: &str) -> StepError {
    StepError::BuildFailed(format!(
        "build {}: {step} needs {what} settings, which a {} build has none of (the step is not in that builder's flow)",
        state.build.name,
        state.build.builder_type.as_str()
    ))
}
