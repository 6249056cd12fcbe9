//! Withdraw (when Approve did not approve: refused, timed out, or failed; or when the test
//! stage failed or could not run): the run's images
//! are deregistered and their snapshots deleted in every region, the waiting task token is
//! removed, and the pipeline's status becomes `rejected`, or `test_failed` (or stays a
//! failure when Approve or PlanTests itself failed), so that Notify says so and nothing unapproved is published or kept.
//!
//! Input: `{"output": <Finalize's shape with Approve's error as `pipeline_error`>,
//! "execution": NAME}`. Output: that output (Notify's [`NotifiedOutput`]), the builds'
//! images cleared and listed in `pipeline.withdrawn`.

use crate::error::{REJECTED, TEST_FAILED};
use crate::pipeline::RunStatus;
use crate::prelude::*;
use crate::resources::approval_token;
use crate::steps::notify::NotifiedOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "Withdraw",
    iam_actions: &IAM_ACTIONS,
    reach: &[("ssm:DeleteParameter", Reach::AmiflowParameters)],
    calls: None,
    wait: None,
    timeout_seconds: 300,
    handler: handler!(run),
};

/// The image's life ends as Retain ends an old one's (`resources/image.rs` `destroy`), and
/// the token as `resources/approval_token.rs` removes it.
const IAM_ACTIONS: [&str; 4] = [
    "ec2:DescribeImages",
    "ec2:DeregisterImage",
    "ec2:DeleteSnapshot",
    approval_token::REMOVE_ACTIONS[0],
];

/// A refusal (as opposed to Approve failing): `amiflow reject`, a local "no", or the wait
/// running out.
pub fn is_refusal(error: &str) -> bool {
    error == REJECTED || error == "States.Timeout"
}

/// `{"output": <the state's input>, "execution": $$.Execution.Name}`.
#[derive(Debug, serde::Deserialize)]
pub struct WithdrawInput {
    pub output: NotifiedOutput,
    pub execution: String,
}

pub async fn run(ctx: &Ctx, input: WithdrawInput) -> Result<NotifiedOutput, StepError> {
    let mut out = input.output;
    let mut withdrawn = BTreeMap::new();
    for build in &mut out.output.builds {
        for (region, image) in std::mem::take(&mut build.amis) {
            crate::resources::image::destroy(ctx, &region, &image).await?;
            withdrawn.insert(region, image);
        }
        build.snapshots.clear();
        build.artifact_id = None;
        build.artifact = None;
    }
    if ctx.in_lambda {
        let region = ctx.own_region();
        let execution = crate::state::build_id(&input.execution);
        approval_token::remove(&ctx.ssm(&region), &ctx.parameter_owner(&execution)).await?;
    }
    let refused = out
        .pipeline_error
        .as_ref()
        .is_some_and(|e| is_refusal(&e.error));
    if let Some(run) = out.output.pipeline.as_mut() {
        run.current.clear();
        run.withdrawn = withdrawn;
        if refused {
            run.status = RunStatus::Rejected;
        } else if out
            .pipeline_error
            .as_ref()
            .is_some_and(|e| e.error == TEST_FAILED)
        {
            run.status = RunStatus::TestFailed;
        }
    }
    Ok(out)
}
