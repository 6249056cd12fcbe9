//! JudgeTests (after the `Tests` Map): every test build ran its provisioners and cleaned
//! up, or the run fails with `TestFailed` naming the test, its image and the reason, which
//! the state machine catches into Withdraw (the new images go, nothing is published) and
//! Notify reports. A test whose own Cleanup failed fails too: its leftovers are the
//! janitor's, and an image whose test did not finish cleanly is not published.
//!
//! Input: PlanTests' output with the Map's results as `tests`. Output: Finalize's output,
//! `pipeline.tested` saying what was tested. No AWS call.

use crate::error::TEST_FAILED;
use crate::pipeline::Tested;
use crate::prelude::*;
use crate::steps::finalize::FinalizeOutput;
use crate::steps::plan_tests::TestingOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "JudgeTests",
    iam_actions: &[],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: 30,
    handler: handler!(run),
};

pub async fn run(_ctx: &Ctx, input: TestingOutput) -> Result<FinalizeOutput, StepError> {
    let mut output = input.output;
    let failures: Vec<String> = input
        .tests
        .iter()
        .filter_map(|t| {
            let e = t.error.as_ref()?;
            Some(format!(
                "test {} of image {} ({}) failed: {}",
                t.build.name,
                t.build.config.source_ami().unwrap_or("?"),
                t.build.config.build_region(),
                e.message()
            ))
        })
        .collect();
    if !failures.is_empty() {
        return Err(StepError::TestFailed(format!(
            "{TEST_FAILED}: {}",
            failures.join("; ")
        )));
    }
    if let (Some(run), Some(t)) = (output.pipeline.as_mut(), input.tests.first()) {
        run.tested = Some(Tested {
            region: t.build.config.build_region().to_string(),
            image: t.build.config.source_ami().unwrap_or_default().to_string(),
            instance: t.data.instance_id.clone(),
        });
    }
    Ok(output)
}
