//! Janitor: sweeps a build that ended where no Catch could run Cleanup (stopped by hand,
//! timed out, or failed outside a Catch).
//!
//! Invoked by the EventBridge rule on "Step Functions Execution Status Change" (ABORTED,
//! TIMED_OUT, FAILED) for amiflow's state machine, never by the state machine itself. The
//! execution's name is the `amiflow:build` tag value on everything the build created; the
//! regions come from the template in the execution's input (builder `region`s and
//! `ami_regions`), plus `AMIFLOW_JANITOR_REGIONS`, or else the function's own region.
//! A build that ran with `on_error: abort` and failed keeps its resources, and so does one
//! kept for redrive (`on_error: redrive`) ([`kept_by_on_error`]); `amiflow clean` and
//! `amiflow abandon` remove them later.
//!
//! A pipeline run stopped while it waited for approval (its approval token is still there)
//! loses its images too: they were made, never approved, and never published. So does any
//! pipeline run with a `test` or `approval` stage stopped (aborted, timed out) before its
//! gates passed: what Publish marked past its gates (`resources/image.rs`,
//! `GATES_PASSED_TAG`) and what its `publish.ssm_parameter` names stay.
//!
//! The janitor's daily rule sends [`RedriveWindowEvent`] instead: builds kept for redrive
//! whose redrive window (14 days after they stopped) has closed are swept then.
//!
//! A sweep that failed writes the [`FAILURES_METRIC`] (CloudWatch's embedded metric format,
//! [`failure_metric_line`]), which the stack's JanitorErrorsAlarm watches; a sweep handed
//! over to Lambda's retry of the event ([`Then::HandOver`]) fails the invocation without it,
//! being no failure of the sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StepSpec;
use crate::resources::{
    ssm_command, sweep_execution_until_done, CleanupReport, Reach, CLEANUP_ACTIONS,
};
use crate::state::OnError;
use crate::{Ctx, StepError};
use amiflow_template::pipeline::Pipeline;

pub const SPEC: StepSpec = StepSpec {
    name: "Janitor",
    iam_actions: &IAM_ACTIONS,
    // It reads only the parameters pipelines publish, to keep what a stopped run published,
    // and a scheduled run's pipeline file where Prepare read it.
    reach: &[
        ("ssm:GetParameter", Reach::PublishedParameters),
        ("s3:GetObject", Reach::TemplateObjects),
        (DESCRIBE_EXECUTION, Reach::StackExecutions),
        (READ_HISTORY, Reach::StackExecutions),
        (LIST_EXECUTIONS, Reach::StackStateMachine),
    ],
    calls: None,
    wait: None,
    timeout_seconds: 900,
    handler: crate::handler!(run),
};

/// It removes exactly what Cleanup removes, by the same code (and marks nothing), reads an
/// execution's input when the event does not carry it and its history (what was still
/// running at the stop), and reads a pipeline's published parameter.
const IAM_ACTIONS: [&str; CLEANUP_ACTIONS.len() + 7] = super::actions(
    CLEANUP_ACTIONS,
    &[
        DESCRIBE_EXECUTION,
        LIST_EXECUTIONS,
        READ_PUBLISHED,
        READ_PIPELINE_FILE,
        ssm_command::CANCEL_ACTIONS[0],
        ssm_command::CANCEL_ACTIONS[1],
        READ_HISTORY,
    ],
);
const DESCRIBE_EXECUTION: &str = "states:DescribeExecution";
/// Which invocations were still running at the stop ([`in_flight`]).
const READ_HISTORY: &str = "states:GetExecutionHistory";
const READ_PUBLISHED: &str = "ssm:GetParameter";
const READ_PIPELINE_FILE: &str = "s3:GetObject";
const LIST_EXECUTIONS: &str = "states:ListExecutions";

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
    /// When the execution started, epoch milliseconds: its SSM commands were sent since.
    #[serde(default)]
    pub start_date: Option<i64>,
    /// When it stopped, epoch milliseconds: a Lambda still in flight then may create
    /// resources until its timeout after.
    #[serde(default)]
    pub stop_date: Option<i64>,
}

impl StatusChangeDetail {
    fn started(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.start_date
            .and_then(chrono::DateTime::from_timestamp_millis)
    }
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
    /// The build ran with `on_error: redrive` and may still be redriven: its resources stay
    /// until the redrive window closes (`amiflow abandon EXECUTION` removes them sooner).
    #[serde(default)]
    pub kept_for_redrive: bool,
    /// The steps whose invocations were still running when the execution stopped, and
    /// could still create: the sweep was repeated once each had surely ended.
    #[serde(default)]
    pub in_flight: Vec<String>,
}

/// What the janitor's daily rule sends: sweep the builds kept for redrive whose window has
/// closed.
#[derive(Debug, Clone, Deserialize)]
pub struct RedriveWindowEvent {
    pub redrive_window: RedriveWindow,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedriveWindow {
    pub state_machine_arn: String,
    /// Step Functions redrives an execution up to 14 days after it stopped.
    #[serde(default = "RedriveWindow::default_days")]
    pub days: u32,
}

impl RedriveWindow {
    fn default_days() -> u32 {
        14
    }
}

/// How many days after a redrive window closed its build is still looked at (the sweep is
/// idempotent; this bounds the daily DescribeExecution calls and covers missed days).
const REDRIVE_GRACE_DAYS: i64 = 7;

/// The janitor's input: an execution's status change, or the daily redrive-window check.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum JanitorEvent {
    StatusChange(StatusChangeEvent),
    RedriveWindow(RedriveWindowEvent),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum JanitorOutput {
    One(JanitorReport),
    /// One report per build whose redrive window closed.
    Many(Vec<JanitorReport>),
}

/// How long the handler keeps sweeping while resources terminate: the function's timeout
/// less a margin. EventBridge's async invoke retries only twice, so the waiting is done here.
const SWEEP_BUDGET: Duration = Duration::from_secs(SPEC.timeout_seconds as u64 - 60);
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(ctx: &Ctx, event: JanitorEvent) -> Result<JanitorOutput, StepError> {
    let result = run_event(ctx, event).await;
    if let Err(e) = &result {
        if !is_hand_over(e) {
            if let Some(stack) = ctx.stack.stack_name.as_deref().filter(|s| !s.is_empty()) {
                // One line on stdout: CloudWatch takes the metric from the function's log.
                println!(
                    "{}",
                    failure_metric_line(stack, e, chrono::Utc::now().timestamp_millis())
                );
            }
        }
    }
    result
}

/// The janitor's own failures, counted in the stack's namespace (`amiflow/<stack>`): the
/// JanitorErrorsAlarm's metric (infra.rs).
pub const FAILURES_METRIC: &str = "JanitorFailures";

/// How a hand-over's error begins ([`is_hand_over`]).
const HAND_OVER: &str = "Janitor hands the sweep over to Lambda's retry of this event";

/// The error that hands the sweep over to Lambda's retry of the event: `steps` of
/// `execution_arn` may create until `until`, beyond this invocation's time.
fn hand_over(
    steps: &[String],
    execution_arn: &str,
    until: chrono::DateTime<chrono::Utc>,
) -> StepError {
    StepError::Transient(format!(
        "{HAND_OVER}: {} of execution {execution_arn} may create until {until} (started before the stop, within its Lambda timeout), past this invocation's time; the retry sweeps again after it",
        steps.join(", ")
    ))
}

/// Whether `e` is the janitor handing its sweep over to Lambda's retry ([`Then::HandOver`]):
/// not a failure of the sweep.
pub fn is_hand_over(e: &StepError) -> bool {
    matches!(e, StepError::Transient(m) if m.starts_with(HAND_OVER))
}

/// The line in CloudWatch's embedded metric format that counts one failure of the janitor
/// (`now_ms`: its time), with the error beside it for whoever reads the log.
pub fn failure_metric_line(stack: &str, error: &StepError, now_ms: i64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": format!("amiflow/{stack}"),
                "Dimensions": [[]],
                "Metrics": [{ "Name": FAILURES_METRIC, "Unit": "Count" }]
            }]
        },
        FAILURES_METRIC: 1,
        "errorType": error.name(),
        "errorMessage": error.message()
    })
    .to_string()
}

async fn run_event(ctx: &Ctx, event: JanitorEvent) -> Result<JanitorOutput, StepError> {
    match event {
        JanitorEvent::StatusChange(event) => sweep(ctx, event, SWEEP_INTERVAL, SWEEP_BUDGET)
            .await
            .map(JanitorOutput::One),
        JanitorEvent::RedriveWindow(event) => {
            sweep_closed_redrive_windows(ctx, &event.redrive_window, chrono::Utc::now())
                .await
                .map(JanitorOutput::Many)
        }
    }
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
        kept_for_redrive: false,
        in_flight: Vec::new(),
    };
    if !SWEPT_STATUSES.contains(&detail.status.as_str()) {
        tracing::info!(execution = %detail.execution_arn, status = %detail.status, "status needs no sweep");
        return Ok(report);
    }
    let input = execution_input(ctx, detail).await?;
    let regions = janitor_regions(
        with_template_text(ctx, input.as_deref()).await.as_deref(),
        event.region.as_deref(),
    );
    report.regions = regions.clone();
    match kept_by_on_error(&detail.status, input.as_deref()) {
        Some(OnError::Abort) => {
            tracing::warn!(execution = %detail.execution_arn, status = %detail.status,
                "on_error=abort: leaving the failed build's resources for debugging; remove them with `amiflow clean {}`", detail.execution_arn);
            report.kept_on_error_abort = true;
            return Ok(report);
        }
        Some(_) => {
            tracing::warn!(execution = %detail.execution_arn, status = %detail.status,
                "on_error=redrive: leaving the build's resources for `amiflow redrive {0}`; `amiflow abandon {0}` removes them, and the janitor does when the redrive window closes", detail.execution_arn);
            report.kept_for_redrive = true;
            return Ok(report);
        }
        None => {}
    }
    if regions.is_empty() {
        return Err(StepError::BuildFailed(format!(
            "Janitor cannot tell which regions execution {} used: its input names none, AMIFLOW_JANITOR_REGIONS is empty and AWS_REGION is unset; set the stack's JanitorRegions parameter",
            detail.execution_arn
        )));
    }
    tracing::info!(execution = %detail.execution_arn, status = %detail.status, ?regions, "sweeping the build's resources by tag");
    let (CleanupReport { removed, kept, .. }, in_flight) =
        sweep_until_done(ctx, detail, input.as_deref(), &regions, interval, budget).await?;
    report.swept = true;
    report.removed = removed;
    report.kept = kept;
    report.in_flight = in_flight;
    Ok(report)
}

/// Sweeps everything tagged for the execution (by this state machine) in `regions`, again
/// while resources are still going (`NotReady`), within `budget`; and once more after the
/// invocations still running at the stop have surely ended ([`in_flight`]): Step Functions
/// stops an execution without stopping its Lambda invocations, and one may create after the
/// first sweep. Returns what it removed and kept, and the steps it waited for.
async fn sweep_until_done(
    ctx: &Ctx,
    detail: &StatusChangeDetail,
    input: Option<&str>,
    regions: &[String],
    interval: Duration,
    budget: Duration,
) -> Result<(CleanupReport, Vec<String>), StepError> {
    let began = std::time::Instant::now();
    let execution = detail.name.as_str();
    let state_machine = crate::identity::state_machine_of(&detail.execution_arn);
    let id = crate::state::build_id(execution);
    let id = id.as_str();
    let late = still_running_at_stop(ctx, detail).await;
    let sweep = |budget: Duration| async move {
        // A command still running (a stopped chroot build's host script holds its volume
        // mounted) is cancelled first: the script unmounts as it ends, and the sweep can
        // detach.
        let mut cancelled = Vec::new();
        for region in regions {
            cancelled.extend(
                ssm_command::cancel_running(
                    ctx,
                    region,
                    state_machine.unwrap_or_default(),
                    id,
                    detail.started(),
                )
                .await,
            );
        }
        let mut report = sweep_execution_until_done(
            ctx,
            state_machine,
            id,
            regions,
            interval,
            budget,
            |why| tracing::info!(%why, "waiting before sweeping again"),
        )
        .await?;
        report.removed.splice(0..0, cancelled);
        Ok::<_, StepError>(report)
    };
    let mut report = sweep(budget).await?;
    if let Some(late) = &late {
        let now = chrono::Utc::now();
        let deadline = now
            + chrono::Duration::from_std(budget.saturating_sub(began.elapsed()))
                .unwrap_or_default();
        match after_first_sweep(now, late.until, deadline) {
            Then::SweepNow => {}
            Then::WaitUntil(at) => {
                tracing::info!(steps = ?late.steps, until = %at, "invocations still running at the stop may create until then: sweeping again after");
                sleep_until(at).await;
            }
            Then::HandOver(at) => {
                // Lambda retries a failed event invocation a minute or more later, with the
                // whole of its time: that one sweeps after `late.until`.
                sleep_until(at).await;
                return Err(hand_over(&late.steps, &detail.execution_arn, late.until));
            }
        }
        let again = sweep(budget.saturating_sub(began.elapsed())).await?;
        report.removed.extend(
            again
                .removed
                .into_iter()
                .map(|r| format!("{r} (after the invocations in flight ended)")),
        );
        report.kept = again.kept;
    }
    let in_flight = late.map(|l| l.steps).unwrap_or_default();
    // The execution's sensitive variables and approval token are in the stack's own
    // region, which need not be one of the build's.
    for name in crate::resources::sensitive_var::remove_all(ctx, id).await? {
        report
            .removed
            .push(format!("parameter {name} (sensitive variable)"));
    }
    if let Some(bucket) = std::env::var(crate::provision::communicator::ARTIFACTS_BUCKET_ENV)
        .ok()
        .filter(|b| !b.is_empty())
    {
        report
            .removed
            .extend(remove_staging(ctx, &bucket, id).await?);
    }
    // A token left means the run stopped while it waited for approval: its images were
    // made and marked as delivered, and nobody approved them. They go, as Withdraw would
    // have removed them.
    let ssm = ctx.ssm(&ctx.own_region());
    if crate::resources::approval_token::remove(&ssm, &ctx.parameter_owner(id)).await? {
        report.removed.push(format!(
            "parameter {} (approval token)",
            crate::resources::approval_token::parameter_name(&ctx.parameter_owner(id))
        ));
        let none = std::collections::BTreeSet::new();
        for r in crate::resources::image::withdraw_execution(ctx, id, regions, &none).await? {
            report.removed.push(format!("{r} (never approved)"));
        }
    } else if let Some(pipeline) =
        gated_pipeline(&detail.status, input_pipeline(ctx, input).await.as_ref())
    {
        // Stopped with its test or approval maybe not passed: what it did not publish, and
        // Publish did not mark as past its gates, goes.
        let keep = published(ctx, &pipeline, regions).await;
        for r in crate::resources::image::withdraw_execution(ctx, id, regions, &keep).await? {
            report
                .removed
                .push(format!("{r} (stopped before it was published)"));
        }
    }
    Ok((report, in_flight))
}

// ---------------------------------------------------------------- invocations in flight

/// Time after a Lambda invocation's timeout before it surely creates nothing any more (its
/// last call's answer, clock skew).
const IN_FLIGHT_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// What the final sweep is given once the invocations in flight have ended.
const FINAL_SWEEP_RESERVE: chrono::TimeDelta = chrono::TimeDelta::seconds(180);

/// When an invocation that started at `started`, of a function timing out after
/// `timeout_seconds`, has surely ended.
fn surely_ended(
    started: chrono::DateTime<chrono::Utc>,
    timeout_seconds: u32,
) -> chrono::DateTime<chrono::Utc> {
    started + chrono::TimeDelta::seconds(i64::from(timeout_seconds)) + IN_FLIGHT_MARGIN
}

/// Invocations of steps that may create, still running when their execution stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct InFlight {
    /// Their states' steps, e.g. `RunSourceInstance`.
    pub steps: Vec<String>,
    /// When the last of them has surely ended: its start, plus its step's Lambda timeout,
    /// plus [`IN_FLIGHT_MARGIN`].
    pub until: chrono::DateTime<chrono::Utc>,
}

/// One event of an execution's history, as much as [`in_flight`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEvent {
    pub id: i64,
    pub previous: i64,
    /// `LambdaFunctionScheduled`, `TaskStateEntered`, ...
    pub kind: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// The state's name, on a `*StateEntered` event.
    pub state: Option<String>,
}

/// The invocations a history (oldest first) leaves running: scheduled, never ended. Each
/// attempt's events chain by `previousEventId` as Step Functions writes them (scheduled ←
/// started ← ended; a state's entry ← its first attempt ← the next attempt), which keeps
/// the parallel iterations of a Map apart. Only steps whose role can create count
/// ([`StepSpec::may_create`]); None when there is none.
pub fn in_flight(history: &[HistoryEvent]) -> Option<InFlight> {
    const SCHEDULED: [&str; 2] = ["LambdaFunctionScheduled", "TaskScheduled"];
    // A callback task's invocation has ended once the task is submitted (its token then
    // awaits an answer, and no Lambda runs).
    const ENDED: [&str; 11] = [
        "TaskSubmitted",
        "LambdaFunctionSucceeded",
        "LambdaFunctionFailed",
        "LambdaFunctionTimedOut",
        "LambdaFunctionStartFailed",
        "LambdaFunctionScheduleFailed",
        "TaskSucceeded",
        "TaskFailed",
        "TaskTimedOut",
        "TaskStartFailed",
        "TaskSubmitFailed",
    ];
    let by_id: std::collections::HashMap<i64, &HistoryEvent> =
        history.iter().map(|e| (e.id, e)).collect();
    let back = |e: &HistoryEvent| by_id.get(&e.previous).copied();
    let mut open: BTreeSet<i64> = history
        .iter()
        .filter(|e| SCHEDULED.contains(&e.kind.as_str()))
        .map(|e| e.id)
        .collect();
    for ended in history.iter().filter(|e| ENDED.contains(&e.kind.as_str())) {
        // Back to its scheduled event: through its started (and submitted) ones.
        let mut at = back(ended);
        for _ in 0..3 {
            match at {
                Some(e) if SCHEDULED.contains(&e.kind.as_str()) => {
                    open.remove(&e.id);
                    break;
                }
                Some(e) => at = back(e),
                None => break,
            }
        }
    }
    let state_of = |scheduled: &HistoryEvent| {
        let mut at = back(scheduled);
        for _ in 0..history.len() {
            let e = at?;
            if let Some(state) = &e.state {
                return Some(state.clone());
            }
            at = back(e);
        }
        None
    };
    let mut steps = Vec::new();
    let mut until: Option<chrono::DateTime<chrono::Utc>> = None;
    for scheduled in history.iter().filter(|e| open.contains(&e.id)) {
        // A state that cannot be named counts with the longest timeout of all.
        let step = state_of(scheduled).and_then(|s| crate::flows::step_of_state(&s));
        let (name, timeout) = match step {
            Some(step) if !step.may_create() => continue,
            Some(step) => (step.name.to_string(), step.timeout_seconds),
            None => ("an unnamed step".to_string(), longest_timeout()),
        };
        let ends = surely_ended(scheduled.at, timeout);
        until = Some(until.map_or(ends, |u| u.max(ends)));
        if !steps.contains(&name) {
            steps.push(name);
        }
    }
    until.map(|until| InFlight { steps, until })
}

/// The longest Lambda timeout of any step that may create: nothing started before a stop
/// creates later than this after it.
fn longest_timeout() -> u32 {
    crate::flows::all_steps()
        .iter()
        .filter(|s| s.may_create())
        .map(|s| s.timeout_seconds)
        .max()
        .unwrap_or(900)
}

/// What follows the first sweep when invocations are in flight until `until`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Then {
    /// They have ended: sweep again now.
    SweepNow,
    /// Wait until then, and sweep again within this invocation.
    WaitUntil(chrono::DateTime<chrono::Utc>),
    /// Beyond this invocation's time: wait until then, and fail, for Lambda's retry of the
    /// event (a minute or more later, with its whole time) to sweep after `until`.
    HandOver(chrono::DateTime<chrono::Utc>),
}

/// [`Then`], given the time now, when the invocations surely ended, and when this
/// invocation must have finished.
pub fn after_first_sweep(
    now: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
    deadline: chrono::DateTime<chrono::Utc>,
) -> Then {
    if until <= now {
        Then::SweepNow
    } else if until + FINAL_SWEEP_RESERVE <= deadline {
        Then::WaitUntil(until)
    } else {
        Then::HandOver((deadline - FINAL_SWEEP_RESERVE).max(now))
    }
}

async fn sleep_until(at: chrono::DateTime<chrono::Utc>) {
    if let Ok(left) = (at - chrono::Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}

/// The invocations still running when the execution stopped, from its history; None when
/// nothing can be in flight any more (stopped longer ago than any step's timeout) or none
/// was. A history that cannot be read counts as "anything may be": the longest timeout after
/// the stop.
async fn still_running_at_stop(ctx: &Ctx, detail: &StatusChangeDetail) -> Option<InFlight> {
    let stopped = detail
        .stop_date
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_else(chrono::Utc::now);
    let surely_ended = surely_ended(stopped, longest_timeout());
    if surely_ended <= chrono::Utc::now() {
        return None;
    }
    match execution_history(ctx, &detail.execution_arn).await {
        Ok(history) => in_flight(&history),
        Err(e) => {
            tracing::warn!(execution = %detail.execution_arn, error = %e, "cannot read the execution's history: sweeping again when any step started before the stop has surely ended");
            Some(InFlight {
                steps: vec!["any step".to_string()],
                until: surely_ended,
            })
        }
    }
}

/// The execution's whole history, oldest first, without its data.
async fn execution_history(ctx: &Ctx, execution_arn: &str) -> Result<Vec<HistoryEvent>, StepError> {
    let mut pages = aws_sdk_sfn::Client::new(&ctx.sdk)
        .get_execution_history()
        .execution_arn(execution_arn)
        .include_execution_data(false)
        .max_results(1000)
        .into_paginator()
        .send();
    let mut history = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            StepError::Transient(format!(
                "GetExecutionHistory of {execution_arn}: {}",
                aws_sdk_sfn::error::DisplayErrorContext(e)
            ))
        })?;
        history.extend(page.events().iter().map(|e| {
            HistoryEvent {
                id: e.id(),
                previous: e.previous_event_id(),
                kind: e.r#type().as_str().to_string(),
                at: chrono::DateTime::from_timestamp(
                    e.timestamp().secs(),
                    e.timestamp().subsec_nanos(),
                )
                .unwrap_or_default(),
                state: e
                    .state_entered_event_details()
                    .map(|d| d.name().to_string()),
            }
        }));
    }
    Ok(history)
}

/// Sweeps the builds kept for redrive (`on_error: redrive`) whose redrive window closed:
/// executions of the state machine stopped FAILED, TIMED_OUT or ABORTED more than
/// `window.days` (and less than `window.days` + [`REDRIVE_GRACE_DAYS`]) days before `now`.
pub async fn sweep_closed_redrive_windows(
    ctx: &Ctx,
    window: &RedriveWindow,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<JanitorReport>, StepError> {
    use aws_sdk_sfn::types::ExecutionStatus;
    let sfn = aws_sdk_sfn::Client::new(&ctx.sdk);
    let mut reports = Vec::new();
    for status in [
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Aborted,
    ] {
        let mut pages = sfn
            .list_executions()
            .state_machine_arn(&window.state_machine_arn)
            .status_filter(status.clone())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                StepError::Transient(format!(
                    "ListExecutions of {} ({status}): {}",
                    window.state_machine_arn,
                    aws_sdk_sfn::error::DisplayErrorContext(e)
                ))
            })?;
            for execution in page.executions() {
                let Some(stopped) = execution.stop_date() else {
                    continue;
                };
                let stopped = chrono::DateTime::from_timestamp(stopped.secs(), 0).unwrap_or(now);
                if !redrive_window_closed(stopped, now, window.days) {
                    continue;
                }
                let detail = StatusChangeDetail {
                    execution_arn: execution.execution_arn().to_string(),
                    name: execution.name().to_string(),
                    status: status.as_str().to_string(),
                    input: None,
                    start_date: Some(execution.start_date().to_millis().unwrap_or_default()),
                    stop_date: stopped.timestamp_millis().into(),
                };
                let input = execution_input(ctx, &detail).await?;
                if kept_by_on_error(status.as_str(), input.as_deref()) != Some(OnError::Redrive) {
                    continue;
                }
                let regions = janitor_regions(
                    with_template_text(ctx, input.as_deref()).await.as_deref(),
                    None,
                );
                tracing::info!(execution = %detail.execution_arn, ?regions, "redrive window closed: sweeping the kept build");
                let (CleanupReport { removed, kept, .. }, in_flight) = sweep_until_done(
                    ctx,
                    &detail,
                    input.as_deref(),
                    &regions,
                    SWEEP_INTERVAL,
                    SWEEP_BUDGET,
                )
                .await?;
                reports.push(JanitorReport {
                    execution: detail.name.clone(),
                    status: detail.status.clone(),
                    regions,
                    swept: true,
                    removed,
                    kept,
                    kept_on_error_abort: false,
                    kept_for_redrive: false,
                    in_flight,
                });
            }
        }
    }
    Ok(reports)
}

/// Whether an execution that stopped at `stopped` can no longer be redriven at `now` (and
/// is still inside the grace period the daily check looks at).
pub fn redrive_window_closed(
    stopped: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
    days: u32,
) -> bool {
    let age = now - stopped;
    age >= chrono::Duration::days(days.into())
        && age < chrono::Duration::days(i64::from(days) + REDRIVE_GRACE_DAYS)
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

/// Why the janitor leaves an ended execution's resources alone, if it does: it ran with
/// `on_error: abort` or `run-cleanup-provisioner` (Packer's -on-error, kept for debugging)
/// and failed or timed out (one stopped by hand is swept, as Packer cleans up after an
/// interrupt); or it ran with `on_error: redrive` and ended in any state RedriveExecution
/// resumes from.
pub fn kept_by_on_error(status: &str, input: Option<&str>) -> Option<OnError> {
    let on_error = input
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|input| serde_json::from_value::<OnError>(input["on_error"].clone()).ok())
        .unwrap_or_default();
    let kept = match on_error {
        OnError::Cleanup => false,
        OnError::Abort | OnError::RunCleanupProvisioner => matches!(status, "FAILED" | "TIMED_OUT"),
        OnError::Redrive => matches!(status, "FAILED" | "TIMED_OUT" | "ABORTED"),
    };
    kept.then_some(on_error)
}

/// The pipeline of an execution stopped from outside (ABORTED, TIMED_OUT) whose images are
/// delivered only once its `test` and `approval` pass: the janitor withdraws the images such
/// a run did not publish. None for any other execution (a FAILED pipeline run ended in
/// Notify, after Withdraw when its test or approval failed). `pipeline` is the input's, or
/// the file its `pipeline_s3` names (a scheduled run's).
pub fn gated_pipeline(status: &str, pipeline: Option<&Value>) -> Option<Pipeline> {
    if !matches!(status, "ABORTED" | "TIMED_OUT") {
        return None;
    }
    let pipeline = Pipeline::from_value(pipeline?).ok()?;
    pipeline.is_gated().then_some(pipeline)
}

/// The pipeline an execution ran with: its input's `pipeline`, or the file `pipeline_s3`
/// names, read as Prepare read it; None without one or when it cannot be read any more.
async fn input_pipeline(ctx: &Ctx, input: Option<&str>) -> Option<Value> {
    let input: Value = serde_json::from_str(input?).ok()?;
    if let Some(p) = input.get("pipeline").filter(|p| p.is_object()) {
        return Some(p.clone());
    }
    let url = input
        .get("pipeline_s3")?
        .as_str()
        .filter(|u| !u.is_empty())?;
    let text = super::prepare::fetch_s3(ctx, url, "pipeline_s3")
        .await
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// What SSM provisioning staged (scripts, with revealed secrets) or SSM wrote (command
/// output) for the execution's builds in the stack's artifacts bucket, in the stack's
/// region: a build stopped mid-command leaves them.
pub async fn remove_staging(
    ctx: &Ctx,
    bucket: &str,
    build_id: &str,
) -> Result<Vec<String>, StepError> {
    let mut removed = Vec::new();
    for at in crate::provision::ssm::staging_prefixes(bucket, build_id, None) {
        removed.extend(
            crate::resources::s3::delete_objects_under(ctx, &ctx.own_region(), &at, &[]).await?,
        );
    }
    Ok(removed)
}

/// The images `pipeline`'s `publish.ssm_parameter` names in `regions` (none without it, or
/// where it cannot be read).
async fn published(ctx: &Ctx, pipeline: &Pipeline, regions: &[String]) -> BTreeSet<String> {
    let Some(name) = pipeline.publish.as_ref().map(|p| p.ssm_parameter.clone()) else {
        return BTreeSet::new();
    };
    let mut images = BTreeSet::new();
    for region in regions {
        if let Ok(image) = super::publish::named_image(ctx, region, &name).await {
            images.extend(image);
        }
    }
    images
}

/// The execution input with the template's text in `template` when it names the template
/// by `template_s3` (a scheduled build), read where Prepare read it, so that the regions a
/// template computes (`ami_regions` from a variable) are found as for an inline template.
/// As given when it has its template, or the object cannot be read any more.
async fn with_template_text(ctx: &Ctx, input: Option<&str>) -> Option<String> {
    let text = input?;
    let mut value: Value = serde_json::from_str(text).ok()?;
    let url = value
        .get("template_s3")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty() && value.get("template").is_none_or(Value::is_null))
        .map(String::from);
    if let Some(url) = url {
        match super::prepare::fetch_s3(ctx, &url, "template_s3").await {
            Ok(template) => value["template"] = Value::String(template),
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot read the execution's template: its regions are the configured ones")
            }
        }
    }
    Some(value.to_string())
}

/// [`build_regions`] with the janitor's configuration: the stack's `JanitorRegions`
/// (`AMIFLOW_JANITOR_REGIONS`), and the event's region or else the function's own.
fn janitor_regions(input: Option<&str>, event_region: Option<&str>) -> Vec<String> {
    let configured = std::env::var("AMIFLOW_JANITOR_REGIONS").unwrap_or_default();
    let own_region = event_region
        .map(String::from)
        .or_else(|| std::env::var("AWS_REGION").ok());
    build_regions(input, &configured, own_region.as_deref())
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

    /// A history from (kind, previous id, seconds, state) rows, ids from 1.
    fn history(rows: &[(&str, i64, i64, Option<&str>)]) -> Vec<HistoryEvent> {
        rows.iter()
            .enumerate()
            .map(|(i, (kind, previous, secs, state))| HistoryEvent {
                id: i as i64 + 1,
                previous: *previous,
                kind: kind.to_string(),
                at: chrono::DateTime::from_timestamp(*secs, 0).unwrap(),
                state: state.map(str::to_string),
            })
            .collect()
    }

    fn at(secs: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn ends(started: i64, step: &StepSpec) -> chrono::DateTime<chrono::Utc> {
        at(started + i64::from(step.timeout_seconds) + IN_FLIGHT_MARGIN.num_seconds())
    }

    #[test]
    fn an_invocation_running_at_the_stop_is_waited_for_until_its_timeout() {
        let key_pair = crate::steps::key_pair::SPEC;
        let h = history(&[
            ("ExecutionStarted", 0, 100, None),
            ("TaskStateEntered", 1, 101, Some("amazon-ebs.KeyPair")),
            ("LambdaFunctionScheduled", 2, 102, None),
            ("LambdaFunctionStarted", 3, 102, None),
            ("ExecutionAborted", 4, 105, None),
        ]);
        let got = in_flight(&h).expect("KeyPair was running");
        assert_eq!(got.steps, ["KeyPair"]);
        assert_eq!(got.until, ends(102, &key_pair));
        // Ended, it is not waited for.
        let mut done = h.clone();
        done.insert(
            4,
            HistoryEvent {
                id: 6,
                previous: 4,
                kind: "LambdaFunctionSucceeded".into(),
                at: at(103),
                state: None,
            },
        );
        assert_eq!(in_flight(&done), None);
        // A callback task's invocation (AwaitEvent stores its token) ends when the task is
        // submitted, long before its answer.
        let await_event = crate::steps::await_event::SPEC;
        assert!(await_event.may_create());
        let mut callback = history(&[
            (
                "TaskStateEntered",
                0,
                101,
                Some("amazon-ebs.AwaitImageAvailable"),
            ),
            ("TaskScheduled", 1, 102, None),
            ("TaskStarted", 2, 102, None),
            ("TaskSubmitted", 3, 103, None),
            ("ExecutionAborted", 4, 105, None),
        ]);
        assert_eq!(in_flight(&callback), None);
        callback.remove(3);
        callback[3].previous = 3;
        let got = in_flight(&callback).expect("AwaitEvent's invocation may be running");
        assert_eq!(got.steps, ["AwaitEvent"]);
        assert_eq!(got.until, ends(102, &await_event));
    }

    #[test]
    fn only_steps_that_can_create_keep_the_janitor_waiting() {
        assert!(!crate::steps::wait_instance_running::SPEC.may_create());
        let h = history(&[
            (
                "TaskStateEntered",
                0,
                101,
                Some("amazon-ebs.WaitInstanceRunning"),
            ),
            ("LambdaFunctionScheduled", 1, 102, None),
            ("LambdaFunctionStarted", 2, 102, None),
        ]);
        assert_eq!(in_flight(&h), None);
        // A state that names no step counts, with the longest timeout.
        let h = history(&[
            ("LambdaFunctionScheduled", 0, 102, None),
            ("LambdaFunctionStarted", 1, 102, None),
        ]);
        let got = in_flight(&h).unwrap();
        assert_eq!(got.until, at(102 + i64::from(longest_timeout()) + 10));
        assert_eq!(longest_timeout(), 900, "Provision, UploadBundle, ...");
    }

    #[test]
    fn retries_and_parallel_iterations_are_paired_by_their_previous_event() {
        let security_group = crate::steps::security_group::SPEC;
        let run = crate::steps::run_source_instance::SPEC;
        // Two builds in a Map: build 0's RunSourceInstance failed once and its retry is
        // running; build 1's SecurityGroup ended while build 0's was still starting.
        let h = history(&[
            (
                "TaskStateEntered",
                0,
                100,
                Some("amazon-ebs.RunSourceInstance"),
            ), // 1
            ("TaskStateEntered", 0, 100, Some("amazon-ebs.SecurityGroup")), // 2
            ("LambdaFunctionScheduled", 1, 101, None),                      // 3 (build 0)
            ("LambdaFunctionScheduled", 2, 101, None),                      // 4 (build 1)
            ("LambdaFunctionStarted", 3, 101, None),                        // 5
            ("LambdaFunctionStarted", 4, 101, None),                        // 6
            ("LambdaFunctionFailed", 5, 110, None),                         // 7 (build 0)
            ("LambdaFunctionSucceeded", 6, 111, None),                      // 8 (build 1)
            ("LambdaFunctionScheduled", 7, 130, None),                      // 9 (retry)
            ("LambdaFunctionStarted", 9, 130, None),                        // 10
            ("ExecutionAborted", 10, 131, None),
        ]);
        let got = in_flight(&h).unwrap();
        assert_eq!(got.steps, ["RunSourceInstance"]);
        assert_eq!(got.until, ends(130, &run));
        assert!(security_group.may_create());
    }

    /// The alarm counts failed sweeps, not a sweep handed over to Lambda's retry (which was
    /// counted as a Lambda error before).
    #[test]
    fn a_failed_sweep_is_counted_and_a_hand_over_is_not() {
        let handed = hand_over(
            &["Provision".into()],
            "arn:aws:states:us-east-1:1:execution:sm:x",
            at(900),
        );
        assert!(is_hand_over(&handed), "{handed:?}");
        for failed in [
            StepError::NotReady("instance i-1 (us-east-1) still shutting down".into()),
            StepError::Transient("DescribeInstances: could not reach AWS".into()),
            StepError::BuildFailed(format!("{HAND_OVER} in a BuildFailed is no hand-over")),
        ] {
            assert!(!is_hand_over(&failed), "{failed:?}");
        }
        let line = failure_metric_line(
            "prod",
            &StepError::NotReady("stuck".into()),
            1_700_000_000_000,
        );
        assert!(!line.contains('\n'), "one log line");
        let emf: Value = serde_json::from_str(&line).unwrap();
        let directive = &emf["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "amiflow/prod");
        assert_eq!(directive["Metrics"][0]["Name"], FAILURES_METRIC);
        assert_eq!(directive["Dimensions"], serde_json::json!([[]]));
        assert_eq!(emf[FAILURES_METRIC], 1);
        assert_eq!(emf["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(emf["errorMessage"], "stuck");
    }

    #[test]
    fn the_second_sweep_waits_here_or_hands_over_to_lambdas_retry() {
        let reserve = FINAL_SWEEP_RESERVE.num_seconds();
        assert_eq!(after_first_sweep(at(100), at(90), at(900)), Then::SweepNow);
        assert_eq!(
            after_first_sweep(at(100), at(200), at(900)),
            Then::WaitUntil(at(200))
        );
        // Past this invocation's time (less the final sweep's): it waits as long as it may,
        // then fails for the retry.
        assert_eq!(
            after_first_sweep(at(100), at(900), at(900)),
            Then::HandOver(at(900 - reserve))
        );
        assert_eq!(
            after_first_sweep(at(850), at(1000), at(900)),
            Then::HandOver(at(850))
        );
    }

    #[test]
    fn only_a_stopped_pipeline_run_with_a_gate_loses_what_it_did_not_publish() {
        let gated = serde_json::json!({"name": "web", "approval": {"timeout": "1h"},
            "publish": {"ssm_parameter": "/images/web"}});
        for status in ["ABORTED", "TIMED_OUT"] {
            let p = gated_pipeline(status, Some(&gated)).expect("gated");
            assert_eq!(p.publish.unwrap().ssm_parameter, "/images/web");
        }
        assert!(
            gated_pipeline("FAILED", Some(&gated)).is_none(),
            "a failed run went through Withdraw or keeps what it published"
        );
        let tested = serde_json::json!({"name": "web", "test": {"instance_type": "t3.micro",
            "communicator": "ssm", "provisioners": [{"type": "shell", "inline": ["true"]}]}});
        assert!(gated_pipeline("ABORTED", Some(&tested)).is_some());
        let ungated = serde_json::json!({"name": "web", "retain": {"keep_latest": 2}});
        assert!(
            gated_pipeline("ABORTED", Some(&ungated)).is_none(),
            "nothing gates its images"
        );
        assert!(gated_pipeline("ABORTED", None).is_none());
    }

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
        let kept = |status, input| kept_by_on_error(status, input) == Some(OnError::Abort);
        assert!(kept("FAILED", Some(abort)));
        assert!(kept("TIMED_OUT", Some(abort)));
        assert!(!kept("ABORTED", Some(abort)));
        assert_eq!(kept_by_on_error("FAILED", Some(cleanup)), None);
        assert_eq!(kept_by_on_error("FAILED", Some(r#"{"template":{}}"#)), None);
        assert_eq!(kept_by_on_error("FAILED", None), None);
        let run_cleanup = r#"{"template":{},"on_error":"run-cleanup-provisioner"}"#;
        assert_eq!(
            kept_by_on_error("FAILED", Some(run_cleanup)),
            Some(OnError::RunCleanupProvisioner)
        );
    }

    #[test]
    fn on_error_redrive_keeps_every_redrivable_ending() {
        let redrive = r#"{"template":{},"on_error":"redrive"}"#;
        for status in ["FAILED", "TIMED_OUT", "ABORTED"] {
            assert_eq!(
                kept_by_on_error(status, Some(redrive)),
                Some(OnError::Redrive),
                "{status}"
            );
        }
        assert_eq!(kept_by_on_error("SUCCEEDED", Some(redrive)), None);
    }

    #[test]
    fn the_redrive_window_closes_after_its_days_and_is_looked_at_for_a_week() {
        let now = chrono::DateTime::from_timestamp(2_000_000_000, 0).unwrap();
        let days = |d: i64| now - chrono::Duration::days(d);
        assert!(
            !redrive_window_closed(days(13), now, 14),
            "still redrivable"
        );
        assert!(redrive_window_closed(days(14), now, 14));
        assert!(redrive_window_closed(days(20), now, 14));
        assert!(!redrive_window_closed(days(21), now, 14), "past the grace");
        assert!(redrive_window_closed(days(0), now, 0));
    }

    #[test]
    fn both_inputs_parse() {
        let window: JanitorEvent = serde_json::from_value(serde_json::json!({
            "redrive_window": { "state_machine_arn": "arn:aws:states:us-east-1:123456789012:stateMachine:amiflow" }
        }))
        .unwrap();
        let JanitorEvent::RedriveWindow(w) = window else {
            panic!("not a window event: {window:?}")
        };
        assert_eq!(w.redrive_window.days, 14);
    }

    #[test]
    fn the_janitor_may_do_what_cleanup_does_read_the_execution_and_what_pipelines_publish() {
        let cleanup = super::super::cleanup::SPEC.iam_actions;
        assert_eq!(&SPEC.iam_actions[..CLEANUP_ACTIONS.len()], CLEANUP_ACTIONS);
        assert!(CLEANUP_ACTIONS.iter().all(|a| cleanup.contains(a)));
        assert_eq!(
            &SPEC.iam_actions[CLEANUP_ACTIONS.len()..],
            &[
                "states:DescribeExecution",
                "states:ListExecutions",
                "ssm:GetParameter",
                "s3:GetObject",
                "ssm:ListCommands",
                "ssm:CancelCommand",
                "states:GetExecutionHistory"
            ]
        );
        assert_eq!(SPEC.reach_of("s3:GetObject"), Reach::TemplateObjects);
        // Only this stack's state machine and executions.
        assert_eq!(SPEC.reach_of(DESCRIBE_EXECUTION), Reach::StackExecutions);
        assert_eq!(SPEC.reach_of(READ_HISTORY), Reach::StackExecutions);
        assert_eq!(SPEC.reach_of(LIST_EXECUTIONS), Reach::StackStateMachine);
        assert_eq!(
            SPEC.reach_of("ssm:GetParameter"),
            Reach::PublishedParameters,
            "only the published parameters"
        );
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
