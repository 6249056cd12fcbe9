//! Approve (a pipeline with `approval`, after a successful build, before Publish): a person
//! says whether the run's images may be published.
//!
//! Deployed, the state is a callback Task (`arn:aws:states:::lambda:invoke.waitForTaskToken`,
//! flows.rs): this function stores the task token (`resources/approval_token.rs`) and
//! returns; the state then waits until `amiflow approve EXECUTION` answers SendTaskSuccess,
//! `amiflow reject EXECUTION` SendTaskFailure([`REJECTED`]), or `approval.timeout` (its
//! `TimeoutSecondsPath`) ends it with `States.Timeout`. Locally the engine's callback task
//! is this handler: it asks the CLI's [`LocalApprover`] (the terminal, or `--approve` /
//! `--reject` given ahead) and returns the answer, or fails with [`REJECTED`].
//!
//! Every way of not approving is caught into Withdraw (`steps/withdraw.rs`), which removes
//! the images: nothing unapproved is published or left behind.
//!
//! Input: `{"output": <Finalize's output>, "token": $$.Task.Token, "execution":
//! $$.Execution.Name}`. Output (the state's `$.approval`): `{"approved_by": WHO}`.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::REJECTED;
use crate::prelude::*;
use crate::resources::approval_token;
use crate::steps::finalize::FinalizeOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "Approve",
    iam_actions: approval_token::STORE_ACTIONS,
    reach: &[("ssm:PutParameter", Reach::AmiflowParameters)],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// A local run's answer to [`question`]: `Ok(who approved)` or `Err(why not)`.
pub type LocalApprover =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

#[derive(Debug, Clone, Deserialize)]
pub struct ApproveInput {
    pub output: FinalizeOutput,
    pub token: String,
    pub execution: String,
}

/// What the approver said (the Approve state's result, kept at `$.approval`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Approved {
    pub approved_by: String,
}

/// What a person is asked: the pipeline, its images by region, its fingerprint.
pub fn question(output: &FinalizeOutput) -> String {
    let images: Vec<String> = output
        .builds
        .iter()
        .flat_map(|b| b.amis.iter().map(|(r, id)| format!("{r}: {id}")))
        .collect();
    let (name, fingerprint) = output.pipeline.as_ref().map_or(("?", "?"), |p| {
        (
            p.pipeline.name.as_str(),
            p.fingerprint.as_deref().unwrap_or("?"),
        )
    });
    format!(
        "pipeline {name}: publish {} (fingerprint {fingerprint})?",
        images.join(", ")
    )
}

pub async fn run(ctx: &Ctx, input: ApproveInput) -> Result<Option<Approved>, StepError> {
    let question = question(&input.output);
    if ctx.in_lambda {
        let execution = crate::state::build_id(&input.execution);
        let region = ctx.own_region();
        let parameter = approval_token::store(
            &ctx.ssm(&region),
            &ctx.parameter_owner(&execution),
            &input.token,
        )
        .await?;
        tracing::warn!(
            %parameter,
            "{question} Waiting for `amiflow approve {0}` or `amiflow reject {0}`",
            input.execution
        );
        // Step Functions ignores a callback function's own result: the answer is the result.
        return Ok(None);
    }
    let Some(ask) = &ctx.approver else {
        return Err(StepError::Rejected(format!(
            "{question} Nobody was asked: run `amiflow build` on a terminal, or with --approve or --reject"
        )));
    };
    match ask(question).await {
        Ok(approved_by) => Ok(Some(Approved { approved_by })),
        Err(why) => Err(StepError::Rejected(format!("{REJECTED}: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(approver: Option<LocalApprover>) -> (Ctx, ApproveInput) {
        let sdk = aws_config::SdkConfig::builder().build();
        let mut ctx = Ctx::from_sdk_config(sdk);
        ctx.approver = approver;
        let output: FinalizeOutput = serde_json::from_value(serde_json::json!({
            "builds": [{"name": "web", "builder_type": "amazon-ebs",
                        "amis": {"us-east-1": "ami-1"}, "snapshots": {}}],
            "failed": 0
        }))
        .unwrap();
        let input = ApproveInput {
            output,
            token: "t".into(),
            execution: "e".into(),
        };
        (ctx, input)
    }

    #[tokio::test]
    async fn a_local_run_publishes_only_what_its_approver_approved() {
        let yes: LocalApprover = Arc::new(|q| {
            Box::pin(async move {
                assert!(q.contains("us-east-1: ami-1"), "{q}");
                Ok("ana".to_string())
            })
        });
        let (ctx, input) = waiting(Some(yes));
        assert_eq!(
            run(&ctx, input).await.unwrap(),
            Some(Approved {
                approved_by: "ana".into()
            })
        );
        let no: LocalApprover = Arc::new(|_| Box::pin(async { Err("not today".to_string()) }));
        let (ctx, input) = waiting(Some(no));
        let e = run(&ctx, input).await.unwrap_err();
        assert_eq!((e.name(), e.message()), (REJECTED, "Rejected: not today"));
        // Nobody to ask is a refusal, never an approval.
        let (ctx, input) = waiting(None);
        assert_eq!(run(&ctx, input).await.unwrap_err().name(), REJECTED);
    }
}
