//! Notify (the last state of a pipeline run, whatever its outcome): the pipeline's `notify`
//! section told what happened — an SNS message to `sns_topic_arn` and, with
//! `eventbridge: true`, an event on the default bus (source `amiflow`, detail-type
//! [`DETAIL_TYPE`]). Both carry the same JSON ([`message`]): pipeline, execution, status
//! (`succeeded`, `failed`, `skipped` when the run was up to date, `rejected` when its
//! approval was refused or timed out), images by region, what was withdrawn, the
//! fingerprint, the duration, what failed.
//!
//! Input: `{"output": <Finalize's output, through Publish and Retain>, "execution": NAME,
//! "started": TIME}`; a failed Publish or Retain arrives with its error as
//! `output.pipeline_error`. Output: Finalize's shape, with `cause` set when the run failed,
//! which the next Choice turns into the execution's failure. Without `notify` no AWS call
//! is made, but for removing the sensitive variables a test stage kept
//! (`pipeline.sensitive_vars`, which Finalize left for the test).

use amiflow_template::pipeline::Notify;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::pipeline::RunStatus;
use crate::prelude::*;
use crate::state::CaughtError;
use crate::steps::finalize::FinalizeOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "Notify",
    iam_actions: &[
        "sns:Publish",
        "events:PutEvents",
        "ssm:GetParametersByPath",
        "ssm:DeleteParameter",
    ],
    // Only the topics a stack's pipelines may name (`amiflow-*`) and the default bus: a
    // pipeline file must not post to any other topic of the account.
    reach: &[
        ("sns:Publish", Reach::NotifyTopics),
        ("events:PutEvents", Reach::DefaultEventBus),
    ],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// The names of the SNS topics a deployed pipeline may notify: the Notify role may publish
/// to no other (a pipeline file is a starter's, the topics are the operator's).
pub const NOTIFY_TOPIC_PREFIX: &str = "amiflow-";

/// The EventBridge detail-type of a pipeline's events.
pub const DETAIL_TYPE: &str = "amiflow Pipeline State Change";
/// Their source.
pub const EVENT_SOURCE: &str = "amiflow";

#[derive(Debug, Deserialize)]
pub struct NotifyInput {
    pub output: NotifiedOutput,
    pub execution: String,
    #[serde(default)]
    pub started: Option<DateTime<Utc>>,
}

/// Finalize's output as it reaches Notify: a Publish or Retain that failed adds its error.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotifiedOutput {
    #[serde(flatten)]
    pub output: FinalizeOutput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_error: Option<CaughtError>,
}

/// What the run came to.
pub fn status(out: &NotifiedOutput) -> &'static str {
    let run_status = out.output.pipeline.as_ref().map(|p| p.status);
    let up_to_date = run_status == Some(RunStatus::UpToDate);
    if run_status == Some(RunStatus::Rejected) {
        "rejected"
    } else if out.output.failed > 0 || out.pipeline_error.is_some() {
        "failed"
    } else if up_to_date {
        "skipped"
    } else {
        "succeeded"
    }
}

/// The JSON both the SNS message and the event's detail carry.
pub fn message(input: &NotifyInput, now: DateTime<Utc>) -> Value {
    let out = &input.output;
    let run = out.output.pipeline.as_ref();
    let images = match run.map(|r| &r.current).filter(|c| !c.is_empty()) {
        Some(current) => current.clone(),
        None => out
            .output
            .builds
            .iter()
            .flat_map(|b| b.amis.clone())
            .collect(),
    };
    let mut failures: Vec<Value> = out
        .output
        .builds
        .iter()
        .filter_map(|b| {
            b.error
                .as_ref()
                .map(|e| json!({"build": b.name, "error": e}))
        })
        .collect();
    if let Some(e) = &out.pipeline_error {
        failures.push(json!({"step": e.error, "error": e.cause}));
    }
    json!({
        "pipeline": run.map(|r| r.pipeline.name.clone()),
        "execution": input.execution,
        "status": status(out),
        "images": images,
        "published": run.map(|r| r.published.clone()).unwrap_or_default(),
        "withdrawn": run.map(|r| r.withdrawn.clone()).unwrap_or_default(),
        "fingerprint": run.and_then(|r| r.fingerprint.clone()),
        "duration_seconds": input.started.map(|s| (now - s).num_seconds()),
        "failures": failures,
    })
}

pub async fn run(ctx: &Ctx, input: NotifyInput) -> Result<FinalizeOutput, StepError> {
    let kept = input
        .output
        .output
        .pipeline
        .as_ref()
        .is_some_and(|r| !r.sensitive_vars.is_empty());
    if kept {
        let execution = crate::state::build_id(&input.execution);
        crate::resources::sensitive_var::remove_all_best_effort(ctx, &execution).await;
    }
    let notify: Option<Notify> = input
        .output
        .output
        .pipeline
        .as_ref()
        .and_then(|r| r.pipeline.notify.clone());
    if let Some(notify) = notify {
        let body = message(&input, Utc::now());
        let subject = format!(
            "amiflow pipeline {}: {}",
            body["pipeline"].as_str().unwrap_or_default(),
            body["status"].as_str().unwrap_or_default()
        );
        if let Some(topic) = &notify.sns_topic_arn {
            // The topic's region is in its ARN (arn:aws:sns:REGION:ACCOUNT:NAME).
            let region = topic.split(':').nth(3).unwrap_or_default();
            ctx.sns(region)
                .publish()
                .topic_arn(topic)
                .subject(subject.chars().take(100).collect::<String>())
                .message(body.to_string())
                .send()
                .await
                .map_err(|e| classify("Publish", topic, e))?;
        }
        if notify.eventbridge {
            let region = ctx.sdk.region().map(|r| r.to_string()).unwrap_or_default();
            let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                .source(EVENT_SOURCE)
                .detail_type(DETAIL_TYPE)
                .detail(body.to_string())
                .build();
            let out = ctx
                .events(&region)
                .put_events()
                .entries(entry)
                .send()
                .await
                .map_err(|e| classify("PutEvents", DETAIL_TYPE, e))?;
            if out.failed_entry_count() > 0 {
                let why = out
                    .entries()
                    .iter()
                    .filter_map(|e| e.error_message())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(StepError::Transient(format!(
                    "PutEvents refused the event: {why}"
                )));
            }
        }
    }
    let NotifiedOutput {
        mut output,
        pipeline_error,
    } = input.output;
    if let Some(e) = pipeline_error {
        let line = format!("{}: {}", e.error, e.cause);
        output.cause = Some(match output.cause {
            Some(c) => format!("{c}\n{line}"),
            None => line,
        });
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(output: Value) -> NotifyInput {
        serde_json::from_value(
            json!({"output": output, "execution": "ex-1", "started": "2026-12-04T00:00:00Z"}),
        )
        .unwrap()
    }

    #[test]
    fn the_message_says_what_the_run_came_to() {
        let now = "2026-12-04T00:02:00Z".parse().unwrap();
        let ok = input(
            json!({"builds": [{"name": "web", "builder_type": "amazon-ebs", "amis": {"us-east-1": "ami-1"}, "snapshots": {}}], "failed": 0}),
        );
        let m = message(&ok, now);
        assert_eq!(m["status"], "succeeded");
        assert_eq!(m["images"], json!({"us-east-1": "ami-1"}));
        assert_eq!(m["duration_seconds"], 120);
        let failed = input(
            json!({"builds": [{"name": "web", "builder_type": "amazon-ebs", "amis": {}, "snapshots": {}, "error": "RunInstances: no capacity"}], "failed": 1, "cause": "x"}),
        );
        let m = message(&failed, now);
        assert_eq!(m["status"], "failed");
        assert_eq!(m["failures"][0]["error"], "RunInstances: no capacity");
        let publish_failed = input(
            json!({"builds": [], "failed": 0, "pipeline_error": {"Error": "BuildFailed", "Cause": "PutParameter: denied"}}),
        );
        assert_eq!(message(&publish_failed, now)["status"], "failed");
    }
}
