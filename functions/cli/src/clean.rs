//! `amiflow clean EXECUTION`: removes what a build kept with `--on-error abort` once it has
//! been debugged: everything tagged `amiflow:build=<execution name>`, by the janitor's sweep
//! (which leaves such failed builds alone).
//!
//! The regions are the `--region`s given, else those the execution's input names (read
//! with DescribeExecution when EXECUTION is an execution ARN), else the configured region.

use std::time::Duration;

use amiflow::resources::{sweep_execution_until_done, CleanupReport};
use amiflow::steps::janitor::build_regions;
use amiflow::Ctx;
use anyhow::{bail, Context as _};

#[derive(clap::Args)]
pub struct Args {
    /// The execution: its ARN (printed by `amiflow start`), its name, or the `amiflow:build`
    /// tag value its resources carry.
    pub execution: String,
    /// A region to sweep (repeatable); default: the regions the execution's input names.
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
}

/// How long to keep sweeping while instances terminate and security groups free up.
pub const BUDGET: Duration = Duration::from_secs(15 * 60);
pub const INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = arn_region(&args.execution) {
        loader = loader.region(aws_config::Region::new(region));
    }
    let ctx = Ctx::from_sdk_config(loader.load().await);
    let report = clean(&ctx, &args.execution, &args.regions, INTERVAL, BUDGET).await?;
    print_sweep(&report);
    eprintln!(
        "{} resources of {} removed",
        report.removed.len(),
        execution_name(&args.execution)
    );
    Ok(0)
}

/// One line per resource removed or kept, on stdout.
pub fn print_sweep(report: &CleanupReport) {
    for r in &report.removed {
        println!("removed {r}");
    }
    for r in &report.kept {
        println!("kept {r}");
    }
}

/// The sweep behind `amiflow clean`, polling every `interval` for at most `budget` while
/// resources are still going away.
pub async fn clean(
    ctx: &Ctx,
    execution: &str,
    regions: &[String],
    interval: Duration,
    budget: Duration,
) -> anyhow::Result<CleanupReport> {
    let name = execution_name(execution);
    let regions = if regions.is_empty() {
        regions_of(ctx, execution).await?
    } else {
        regions.to_vec()
    };
    if regions.is_empty() {
        bail!("no region to sweep for {name}: pass --region, or configure a default region (AWS_REGION or the profile's)");
    }
    let state_machine = amiflow::identity::state_machine_of(execution);
    let mut report = CleanupReport::default();
    for id in build_ids(execution, &name) {
        eprintln!("sweeping everything tagged amiflow:build={id} in {regions:?}");
        let swept = sweep_execution_until_done(
            ctx,
            state_machine,
            &id,
            &regions,
            interval,
            budget,
            |why| eprintln!("waiting: {why}"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cleaning {name} in {regions:?}: {}", e.message()))?;
        report.removed.extend(swept.removed);
        report.kept.extend(swept.kept);
    }
    Ok(report)
}

/// The build tag values to sweep for `execution` (an ARN, or a name: `name`): the id of the
/// execution's name, and, given a name that is already a build tag value (as the resources
/// show it, which the id of that text is not when the name was hashed), that value too. The
/// operator names what to remove here: unlike the janitor, which takes Step Functions' name.
fn build_ids(execution: &str, name: &str) -> Vec<String> {
    let id = amiflow::state::build_id(name);
    if !execution.starts_with("arn:") && amiflow::state::is_hashed_id(name) {
        vec![id, name.to_string()]
    } else {
        vec![id]
    }
}

/// The regions the execution's input names, else the configured region.
async fn regions_of(ctx: &Ctx, execution: &str) -> anyhow::Result<Vec<String>> {
    let own = ctx.sdk.region().map(|r| r.to_string());
    let input = if execution.starts_with("arn:") {
        let described = aws_sdk_sfn::Client::new(&ctx.sdk)
            .describe_execution()
            .execution_arn(execution)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sfn::error::DisplayErrorContext(e)))
            .with_context(|| {
                format!("DescribeExecution {execution} (to find its regions; or pass --region)")
            })?;
        described.input().map(String::from)
    } else {
        None
    };
    Ok(build_regions(input.as_deref(), "", own.as_deref()))
}

/// `arn:aws:states:REGION:ACCOUNT:execution:MACHINE:NAME` → NAME; a name stays itself.
pub fn execution_name(execution: &str) -> String {
    if execution.starts_with("arn:") {
        execution
            .rsplit(':')
            .next()
            .unwrap_or(execution)
            .to_string()
    } else {
        execution.to_string()
    }
}

pub fn arn_region(execution: &str) -> Option<String> {
    let parts: Vec<&str> = execution.split(':').collect();
    (parts.len() >= 8 && parts[0] == "arn" && !parts[3].is_empty()).then(|| parts[3].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_execution_is_named_by_its_arn_or_itself() {
        let arn =
            "arn:aws:states:eu-west-1:123456789012:execution:amiflow-StateMachine:amiflow-web-1";
        assert_eq!(execution_name(arn), "amiflow-web-1");
        assert_eq!(arn_region(arn).as_deref(), Some("eu-west-1"));
        assert_eq!(execution_name("amiflow-web-1"), "amiflow-web-1");
        assert_eq!(arn_region("amiflow-web-1"), None);
    }

    /// `amiflow clean` takes the name or the tag value its resources carry (README): a hashed
    /// tag value is swept as given too, since its own id differs.
    #[test]
    fn clean_sweeps_the_tag_value_it_is_given() {
        let odd = "web@+(1)";
        let tag = amiflow::state::build_id(odd);
        assert_eq!(build_ids(odd, odd), vec![tag.clone()]);
        assert_eq!(
            build_ids(&tag, &tag),
            vec![amiflow::state::build_id(&tag), tag.clone()]
        );
        assert_eq!(
            build_ids("nightly-1", "nightly-1"),
            vec!["nightly-1".to_string()]
        );
        let arn = format!("arn:aws:states:eu-west-1:123456789012:execution:amiflow:{odd}");
        assert_eq!(build_ids(&arn, odd), vec![tag]);
    }
}
