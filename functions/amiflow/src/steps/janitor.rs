//! Janitor: sweeps a build that ended where no Catch could run Cleanup (stopped by hand,
//! timed out, or failed outside a Catch).
//!
//! Invoked by the EventBridge rule on "Step Functions Execution Status Change" (ABORTED,
//! TIMED_OUT, FAILED) for amiflow's state machine, never by the state machine itself. The
//! execution's name is the `amiflow:build` tag value on everything the build created; the
//! regions come from the template in the execution's input (builder `region`s and
//! `ami_regions`), plus `AMIFLOW_JANITOR_REGIONS`, or else the function's own region.
//! A build that ran with `on_error: abort` and failed keeps its resources
//! ([`kept_on_error_abort`]); `amiflow clean` removes them later.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StepSpec;
use crate::resources::{sweep_execution, CleanupReport, CLEANUP_ACTIONS};
use crate::state::OnError;
use crate::{Ctx, StepError};

pub const SPEC: StepSpec = StepSpec {
    name: "Janitor",
    iam_actions: &IAM_ACTIONS,
    wait: None,
    timeout_seconds: 900,
    handler: crate::handler!(run),
};

/// It removes exactly what Cleanup removes, by the same code (and marks nothing), and reads
/// an execution's input when the event does not carry it.
const IAM_ACTIONS: [&str; CLEANUP_ACTIONS.len() + 1] = {
    let cleanup = CLEANUP_ACTIONS;
    let mut all = [DESCRIBE_EXECUTION; CLEANUP_ACTIONS.len() + 1];
    let mut i = 0;
    while i < cleanup.len() {
        all[i] = cleanup[i];
        i += 1;
    }
    all
};
const DESCRIBE_EXECUTION: &str = "states:DescribeExecution";

/// Execution statuses after which the build's resources must be swept.
pub const SWEPT_STATUSES: [&str; 3] = ["ABORTED", "TIMED_OUT", "FAILED"];

/// The EventBridge event, as much of it as the janitor reads.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusChangeEvent {
    #[serde(default)]
    pub source: String,
    #[serde(rename = "detail-type", default)]
    pub detail_type: String,
    /// The region the event came from (the state machine's).
    #[serde(default)]
    pub region: Option<String>,
    pub detail: StatusChangeDetail,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChangeDetail {
    pub execution_arn: String,
    /// The execution's name: the `amiflow:build` tag value.
    pub name: String,
    pub status: String,
    /// The execution's input as JSON text; absent or null when too large for the event.
    #[serde(default)]
    pub input: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JanitorReport {
    pub execution: String,
    pub status: String,
    pub regions: Vec<String>,
    /// False when the status needs no sweep (the rule should not send those).
    pub swept: bool,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    /// The build ran with `on_error: abort` and failed: its resources stay for debugging
    /// (`amiflow clean EXECUTION` removes them).
    #[serde(default)]
    pub kept_on_error_abort: bool,
}

/// How long the handler keeps sweeping while resources terminate: the function's timeout
/// less a margin. EventBridge's async invoke retries only twice, so the waiting is done here.
const SWEEP_BUDGET: Duration = Duration::from_secs(SPEC.timeout_seconds as u64 - 60);
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx, event: StatusChangeEvent) -> Result<JanitorReport, StepError> {
    sweep(ctx, event, SWEEP_INTERVAL, SWEEP_BUDGET).await
}

/// [`run`] with the polling made explicit (tests poll fast).
pub async fn sweep(
    ctx: &Ctx,
    event: StatusChangeEvent,
    interval: Duration,
    budget: Duration,
) -> Result<JanitorReport, StepError> {
    if event.source != "aws.states" || event.detail_type != "Step Functions Execution Status Change"
    {
        return Err(StepError::BuildFailed(format!(
            "Janitor expects a Step Functions Execution Status Change event from aws.states, got detail-type {:?} from {:?}: check the JanitorRule's event pattern",
            event.detail_type, event.source
        )));
    }
    let detail = &event.detail;
    let mut report = JanitorReport {
        execution: detail.name.clone(),
        status: detail.status.clone(),
        regions: Vec::new(),
        swept: false,
        removed: Vec::new(),
        kept: Vec::new(),
        kept_on_error_abort: false,
    };
    if !SWEPT_STATUSES.contains(&detail.status.as_str()) {
        tracing::info!(execution = %detail.execution_arn, status = %detail.status, "status needs no sweep");
        return Ok(report);
    }
    let input = execution_input(ctx, detail).await?;
    let configured = std::env::var("AMIFLOW_JANITOR_REGIONS").unwrap_or_default();
    let own_region = event
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok());
    let regions = build_regions(input.as_deref(), &configured, own_region.as_deref());
    report.regions = regions.clone();
    if kept_on_error_abort(&detail.status, input.as_deref()) {
        tracing::warn!(execution = %detail.execution_arn, status = %detail.status,
            "on_error=abort: leaving the failed build's resources for debugging; remove them with `amiflow clean {}`", detail.execution_arn);
        report.kept_on_error_abort = true;
        return Ok(report);
    }
    if regions.is_empty() {
        return Err(StepError::BuildFailed(format!(
            "Janitor cannot tell which regions execution {} used: its input names none, AMIFLOW_JANITOR_REGIONS is empty and AWS_REGION is unset; set the stack's JanitorRegions parameter",
            detail.execution_arn
        )));
    }
    tracing::info!(execution = %detail.execution_arn, status = %detail.status, ?regions, "sweeping the build's resources by tag");
    let started = Instant::now();
    let CleanupReport { removed, kept, .. } = loop {
        match sweep_execution(ctx, &detail.name, &regions).await {
            Err(StepError::NotReady(why)) if started.elapsed() + interval < budget => {
                tracing::info!(%why, "waiting before sweeping again");
                tokio::time::sleep(interval).await;
            }
            other => break other?,
        }
    };
    report.swept = true;
    report.removed = removed;
    report.kept = kept;
    Ok(report)
}

/// The execution's input: the event's, or, when it was too large for the event,
/// DescribeExecution's.
async fn execution_input(
    ctx: &Ctx,
    detail: &StatusChangeDetail,
) -> Result<Option<String>, StepError> {
    if detail.input.is_some() {
        return Ok(detail.input.clone());
    }
    let described = aws_sdk_sfn::Client::new(&ctx.sdk)
        .describe_execution()
        .execution_arn(&detail.execution_arn)
        .send()
        .await
        .map_err(|e| {
            StepError::Transient(format!(
                "DescribeExecution {} (the event carries no input; needed for on_error and the regions): {}",
                detail.execution_arn,
                aws_sdk_sfn::error::DisplayErrorContext(e)
            ))
        })?;
    Ok(described.input().map(String::from))
}

/// Whether the janitor leaves an ended execution's resources alone: it ran with
/// `on_error: abort` or `run-cleanup-provisioner` (Packer's -on-error, kept for debugging) and failed or timed
/// out. One stopped by hand is swept whatever on_error says, as Packer cleans up after an
/// interrupt.
pub fn kept_on_error_abort(status: &str, input: Option<&str>) -> bool {
    let on_error = input
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|input| serde_json::from_value::<OnError>(input["on_error"].clone()).ok())
        .unwrap_or_default();
    on_error.keeps_resources() && matches!(status, "FAILED" | "TIMED_OUT")
}

/// The regions a build may have touched: every builder's `region` and `ami_regions` in the
/// execution input's template (with `{{user `x`}}` resolved from the input's vars and the
/// template's variable defaults), then the configured list; the function's own region only
/// when neither names one.
pub fn build_regions(
    input: Option<&str>,
    configured: &str,
    own_region: Option<&str>,
) -> Vec<String> {
    let mut regions = BTreeSet::new();
    if let Some(input) = input.and_then(|text| serde_json::from_str::<Value>(text).ok()) {
        regions.extend(template_regions(&input));
    }
    regions.extend(
        configured
            .split(',')
            .map(str::trim)
            .filter(|r| looks_like_region(r))
            .map(String::from),
    );
    if regions.is_empty() {
        regions.extend(
            own_region
                .filter(|r| looks_like_region(r))
                .map(String::from),
        );
    }
    regions.into_iter().collect()
}

fn template_regions(input: &Value) -> Vec<String> {
    let template = match &input["template"] {
        Value::String(text) => serde_json::from_str::<Value>(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    let mut variables: BTreeMap<String, String> = BTreeMap::new();
    for (source, is_default) in [(&template["variables"], true), (&input["vars"], false)] {
        if let Some(map) = source.as_object() {
            for (name, value) in map {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => continue,
                    other => other.to_string(),
                };
                // Input vars override the template's defaults.
                if is_default {
                    variables.entry(name.clone()).or_insert(text);
                } else {
                    variables.insert(name.clone(), text);
                }
            }
        }
    }
    let mut found = Vec::new();
    for builder in template["builders"].as_array().into_iter().flatten() {
        let mut values: Vec<&Value> = vec![&builder["region"]];
        values.extend(builder["ami_regions"].as_array().into_iter().flatten());
        for value in values {
            if let Some(text) = value.as_str() {
                let resolved =
                    resolve_user_variable(text, &variables).unwrap_or_else(|| text.to_string());
                // A comma list is how `ami_regions` arrives from a single variable.
                for region in resolved.split(',').map(str::trim) {
                    if looks_like_region(region) {
                        found.push(region.to_string());
                    }
                }
            }
        }
    }
    found
}

/// `{{user `name`}}` or `{{ user "name" }}` alone in a string → that variable's value.
fn resolve_user_variable(text: &str, variables: &BTreeMap<String, String>) -> Option<String> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    let name = inner
        .strip_prefix("user")?
        .trim()
        .trim_matches(|c| c == '`' || c == '"');
    variables.get(name).cloned()
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`…, and nothing with a template action.
fn looks_like_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
        && parts[0].len() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_the_templates_builders_and_copies() {
        let input = serde_json::json!({
            "template": {
                "variables": { "region": "eu-west-1", "copies": "us-west-2" },
                "builders": [
                    { "type": "amazon-ebs", "region": "{{user `region`}}", "ami_regions": ["{{ user \"copies\" }}", "ap-south-1"] },
                    { "type": "amazon-ebs", "region": "us-east-2" }
                ]
            },
            "vars": { "region": "eu-central-1" }
        });
        let regions = build_regions(Some(&input.to_string()), "", Some("us-east-1"));
        assert_eq!(
            regions,
            vec!["ap-south-1", "eu-central-1", "us-east-2", "us-west-2"]
        );
    }

    #[test]
    fn a_template_given_as_text_is_read_too() {
        let template = r#"{"builders":[{"type":"amazon-ebs","region":"sa-east-1"}]}"#;
        let input = serde_json::json!({ "template": template });
        assert_eq!(
            build_regions(Some(&input.to_string()), "", None),
            vec!["sa-east-1"]
        );
    }

    #[test]
    fn without_regions_in_the_input_configured_then_own_region() {
        let s3_input = r#"{"template_s3":"s3://b/t.json"}"#;
        assert_eq!(
            build_regions(Some(s3_input), "us-west-1, eu-north-1", Some("us-east-1")),
            vec!["eu-north-1", "us-west-1"]
        );
        assert_eq!(
            build_regions(Some(s3_input), "", Some("us-east-1")),
            vec!["us-east-1"]
        );
        assert_eq!(build_regions(None, "", None), Vec::<String>::new());
        // Unresolvable actions are not regions.
        let odd = r#"{"template":{"builders":[{"region":"{{env `R`}}"}]}}"#;
        assert_eq!(
            build_regions(Some(odd), "", Some("us-east-1")),
            vec!["us-east-1"]
        );
    }

    #[test]
    fn on_error_abort_keeps_failed_and_timed_out_builds_only() {
        let abort = r#"{"template":{},"on_error":"abort"}"#;
        let cleanup = r#"{"template":{},"on_error":"cleanup"}"#;
        assert!(kept_on_error_abort("FAILED", Some(abort)));
        assert!(kept_on_error_abort("TIMED_OUT", Some(abort)));
        assert!(!kept_on_error_abort("ABORTED", Some(abort)));
        assert!(!kept_on_error_abort("FAILED", Some(cleanup)));
        assert!(!kept_on_error_abort("FAILED", Some(r#"{"template":{}}"#)));
        assert!(!kept_on_error_abort("FAILED", None));
        let run_cleanup = r#"{"template":{},"on_error":"run-cleanup-provisioner"}"#;
        assert!(kept_on_error_abort("FAILED", Some(run_cleanup)));
    }

    #[test]
    fn the_janitor_may_do_what_cleanup_does_and_read_the_execution() {
        let cleanup = super::super::cleanup::SPEC.iam_actions;
        assert_eq!(&SPEC.iam_actions[..CLEANUP_ACTIONS.len()], CLEANUP_ACTIONS);
        assert!(CLEANUP_ACTIONS.iter().all(|a| cleanup.contains(a)));
        assert_eq!(SPEC.iam_actions.last(), Some(&"states:DescribeExecution"));
    }

    #[test]
    fn the_event_parses_as_eventbridge_sends_it() {
        let event: StatusChangeEvent = serde_json::from_value(serde_json::json!({
            "version": "0", "id": "e", "detail-type": "Step Functions Execution Status Change",
            "source": "aws.states", "account": "123456789012", "time": "2026-01-01T00:00:00Z",
            "region": "us-east-1", "resources": ["arn:aws:states:us-east-1:123456789012:execution:amiflow:b1"],
            "detail": { "executionArn": "arn:aws:states:us-east-1:123456789012:execution:amiflow:b1",
                "stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:amiflow",
                "name": "b1", "status": "ABORTED", "startDate": 1, "stopDate": 2,
                "input": "{}", "inputDetails": {"included": true}, "output": null }
        }))
        .unwrap();
        assert_eq!(event.detail.name, "b1");
        assert_eq!(event.detail.status, "ABORTED");
        assert_eq!(event.region.as_deref(), Some("us-east-1"));
    }
}
