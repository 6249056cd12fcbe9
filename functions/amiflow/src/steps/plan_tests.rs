//! PlanTests (after a successful build of a pipeline with `test`): the test build that
//! Prepare checked (`pipeline.test_build`, amazon-ebs, named `<build>.test`) gets the new
//! image of its region as its source and becomes the one item of the `Tests` Map, a build
//! state of its own: what the test creates carries its own build-name tag and its own
//! ledger, so the test's Cleanup never touches the images under test, and the janitor
//! sweeps it with the execution's.
//!
//! Input: `{"output": <Finalize's output>, "execution": $$.Execution.Name}`. Output:
//! Finalize's output with `tests`, the test build states. No AWS call.

use serde::{Deserialize, Serialize};

use crate::prelude::*;
use crate::state::{build_id, OnError};
use crate::steps::finalize::FinalizeOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "PlanTests",
    iam_actions: &[],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: 30,
    handler: handler!(run),
};

#[derive(Debug, Deserialize)]
pub struct PlanTestsInput {
    pub output: FinalizeOutput,
    pub execution: String,
    /// `$$.StateMachine.Name`, tagged on what the test creates as on the build's.
    #[serde(default)]
    pub state_machine: Option<String>,
}

/// Finalize's output while the test stage runs: the test builds beside it (the `Tests`
/// Map's items, then its results).
#[derive(Debug, Serialize, Deserialize)]
pub struct TestingOutput {
    #[serde(flatten)]
    pub output: FinalizeOutput,
    pub tests: Vec<BuildState>,
}

pub async fn run(_ctx: &Ctx, input: PlanTestsInput) -> Result<TestingOutput, StepError> {
    let output = input.output;
    let Some(mut build) = output
        .pipeline
        .as_ref()
        .and_then(|run| run.test_build.clone())
    else {
        return Err(StepError::BuildFailed(
            "PlanTests runs only for a pipeline with a test stage, and this run has none".into(),
        ));
    };
    let region = build.config.build_region().to_string();
    let image = output
        .builds
        .iter()
        .filter(|b| b.error.is_none())
        .find_map(|b| b.amis.get(&region))
        .cloned()
        .ok_or_else(|| {
            StepError::BuildFailed(format!(
                "the test stage needs the new image in {region}, and the build made none there"
            ))
        })?;
    if let amiflow_template::BuilderConfig::Ebs(config) = &mut build.config {
        config.run.source_ami = Some(image);
    }
    // A test always cleans up: its instance is of no use once the images are withdrawn.
    let mut test = BuildState::new(
        build_id(&input.execution),
        input.state_machine.unwrap_or_default(),
        build,
        OnError::Cleanup,
    );
    // Its communicator and launch settings are the template's: sensitive ones too.
    if let Some(run) = output.pipeline.as_ref() {
        test.sensitive_vars = run.sensitive_vars.clone();
    }
    Ok(TestingOutput {
        output,
        tests: vec![test],
    })
}
