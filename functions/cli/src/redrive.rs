//! `amiflow redrive EXECUTION_ARN` and `amiflow abandon EXECUTION_ARN`: the two ways out of
//! a deployed build started with `--on-error redrive` that failed.
//!
//! Redrive resumes the execution at the step that failed (Step Functions'
//! RedriveExecution re-runs only the failed iterations, from their failed state); abandon
//! gives up on it and removes what it kept, by the janitor's sweep (`amiflow clean`'s).

use anyhow::{bail, Context as _};

use crate::clean::{arn_region, clean, execution_name, print_sweep, BUDGET, INTERVAL};

#[derive(clap::Args)]
pub struct RedriveArgs {
    /// The execution's ARN (printed by `amiflow start`).
    pub execution: String,
    /// Follow the execution until it ends again (as `amiflow watch`).
    #[arg(long)]
    pub watch: bool,
}

#[derive(clap::Args)]
pub struct AbandonArgs {
    /// The execution's ARN (printed by `amiflow start`).
    pub execution: String,
    /// A region to sweep (repeatable); default: the regions the execution's input names.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
}

pub(crate) async fn sfn_for(
    execution: &str,
) -> anyhow::Result<(amiflow::Ctx, aws_sdk_sfn::Client)> {
    if !execution.starts_with("arn:") {
        bail!("{execution:?} is not an execution ARN: pass the ARN `amiflow start` printed (arn:aws:states:REGION:ACCOUNT:execution:MACHINE:NAME)");
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = arn_region(execution) {
        loader = loader.region(aws_config::Region::new(region));
    }
    let sdk = loader.load().await;
    let client = aws_sdk_sfn::Client::new(&sdk);
    Ok((amiflow::Ctx::from_sdk_config(sdk), client))
}

pub async fn redrive(args: RedriveArgs) -> anyhow::Result<u8> {
    let (_, client) = sfn_for(&args.execution).await?;
    client
        .redrive_execution()
        .execution_arn(&args.execution)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sfn::error::DisplayErrorContext(e)))
        .with_context(|| {
            format!(
                "RedriveExecution {} (only FAILED, TIMED_OUT or ABORTED executions of the last 14 days can be redriven; a build started without --on-error redrive cleaned up and must be started again)",
                args.execution
            )
        })?;
    eprintln!(
        "redriving {}: it resumes at the step that failed",
        args.execution
    );
    if args.watch {
        let outcome = crate::watch::follow(
            &client,
            &args.execution,
            std::time::Duration::from_secs(2),
            None,
        )
        .await?;
        return Ok(outcome.exit_code());
    }
    Ok(0)
}

pub async fn abandon(args: AbandonArgs) -> anyhow::Result<u8> {
    let (ctx, client) = sfn_for(&args.execution).await?;
    let described = client
        .describe_execution()
        .execution_arn(&args.execution)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sfn::error::DisplayErrorContext(e)))
        .with_context(|| format!("DescribeExecution {}", args.execution))?;
    let status = described.status().as_str();
    if refuses_abandon(status) {
        bail!(
            "{} is {status}: stop it first (`aws stepfunctions stop-execution --execution-arn {}`), then abandon it",
            args.execution,
            args.execution
        );
    }
    let report = clean(&ctx, &args.execution, &args.regions, INTERVAL, BUDGET).await?;
    print_sweep(&report);
    eprintln!(
        "{} abandoned: {} resources removed",
        execution_name(&args.execution),
        report.removed.len()
    );
    Ok(0)
}

/// A running execution still creates resources: sweeping under it would race its steps.
fn refuses_abandon(status: &str) -> bool {
    matches!(status, "RUNNING" | "PENDING_REDRIVE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ended_executions_are_abandoned() {
        assert!(refuses_abandon("RUNNING"));
        assert!(refuses_abandon("PENDING_REDRIVE"));
        for ended in ["FAILED", "TIMED_OUT", "ABORTED", "SUCCEEDED"] {
            assert!(!refuses_abandon(ended), "{ended}");
        }
    }
}
