//! `amiflow watch EXECUTION_ARN`: follow a deployed execution's history until it ends,
//! with a live progress line; print the artifact (`region: ami-id`) at the end.
//! Exit code: 0 succeeded, 1 failed, 2 aborted or timed out.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEvent, HistoryEventType};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// The execution to follow (printed by `amiflow start`).
    pub execution_arn: String,
    /// Seconds between polls of the history.
    #[arg(long, default_value_t = 2)]
    pub interval: u64,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    // The execution's own region (from its ARN), whatever the environment configures.
    let (_, client) = crate::redrive::sfn_for(&args.execution_arn).await?;
    let outcome = follow(
        &client,
        &args.execution_arn,
        Duration::from_secs(args.interval.max(1)),
        None,
    )
    .await?;
    Ok(outcome.exit_code())
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: String,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
    /// Every line printed for the history, in order (what the user saw).
    pub lines: Vec<String>,
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        exit_code(&self.status)
    }
}

pub fn exit_code(status: &str) -> u8 {
    match status {
        "SUCCEEDED" => 0,
        "ABORTED" | "TIMED_OUT" => 2,
        _ => 1,
    }
}

/// Polls the status and the history's new events ([`new_events`], without execution data
/// unless a failure's cause is to be shown) until the execution is no longer RUNNING, or
/// until `deadline` has passed (then the status is whatever it was).
pub async fn follow(
    client: &aws_sdk_sfn::Client,
    arn: &str,
    interval: Duration,
    deadline: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("static template"),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = std::time::Instant::now();
    let mut render = Renderer::default();
    let mut lines = Vec::new();
    let mut last_id = 0i64;
    loop {
        // Status first: a history read after it then holds every event up to the end.
        let described = client
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "DescribeExecution {arn}: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(e)
                )
            })?;
        let mut events = new_events(client, arn, last_id, false).await?;
        // A failure's cause may count as execution data: read those events again with it.
        if events.iter().any(lacks_cause) {
            events = new_events(client, arn, last_id, true).await?;
        }
        for event in &events {
            last_id = last_id.max(event.id());
            if let Some(line) = render.line(event) {
                emit(&bar, &line);
                lines.push(line);
            }
            bar.set_message(render.current());
        }
        let status = described.status().as_str().to_string();
        let ended = *described.status() != ExecutionStatus::Running;
        if ended || deadline.is_some_and(|d| started.elapsed() >= d) {
            bar.finish_and_clear();
            let output = described
                .output()
                .and_then(|o| serde_json::from_str::<Value>(o).ok());
            let outcome = Outcome {
                status: status.clone(),
                error: described.error().map(String::from),
                cause: described.cause().map(String::from),
                output,
                lines,
            };
            print_summary(&outcome);
            return Ok(outcome);
        }
        tokio::time::sleep(interval).await;
    }
}

/// The history events after `after` (event ids count up from 1), oldest first. Read newest
/// first, page by page, stopping at the first page that reaches `after`: a poll costs the
/// new events, not the whole history. `with_data`: include inputs, outputs and causes.
pub async fn new_events(
    client: &aws_sdk_sfn::Client,
    arn: &str,
    after: i64,
    with_data: bool,
) -> anyhow::Result<Vec<HistoryEvent>> {
    collect_new_events(after, |token| async move {
        let page = client
            .get_execution_history()
            .execution_arn(arn)
            .reverse_order(true)
            .include_execution_data(with_data)
            .max_results(HISTORY_PAGE)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "GetExecutionHistory {arn}: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(e)
                )
            })?;
        Ok((page.events().to_vec(), page.next_token().map(String::from)))
    })
    .await
}

/// Events per GetExecutionHistory page. A poll reads pages newest first until it reaches an
/// event it has: 100 per page keeps a poll of a long history to about the new events (a
/// build's history runs to a few hundred), while the first read takes a few pages.
const HISTORY_PAGE: i32 = 100;

/// [`new_events`] over any source of pages: `fetch(token)` gives a page and the next token.
/// Pages are taken newest first, but the events are sorted by id, so a source that
/// ignores the order (moto does) is read right too, only not as cheaply.
pub async fn collect_new_events<F, Fut>(
    after: i64,
    mut fetch: F,
) -> anyhow::Result<Vec<HistoryEvent>>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<HistoryEvent>, Option<String>)>>,
{
    let mut found: Vec<HistoryEvent> = Vec::new();
    let mut token = None;
    loop {
        let (events, next) = fetch(token).await?;
        let reached_old = events.iter().any(|e| e.id() <= after);
        found.extend(events.into_iter().filter(|e| e.id() > after));
        match next {
            Some(next) if !reached_old => token = Some(next),
            _ => break,
        }
    }
    found.sort_by_key(|e| e.id());
    found.dedup_by_key(|e| e.id());
    Ok(found)
}

/// A failure whose cause was left out with the execution data.
fn lacks_cause(event: &HistoryEvent) -> bool {
    use HistoryEventType as T;
    let cause = match event.r#type() {
        T::LambdaFunctionFailed => event
            .lambda_function_failed_event_details()
            .map(|d| d.cause()),
        T::TaskFailed => event.task_failed_event_details().map(|d| d.cause()),
        T::ExecutionFailed => event.execution_failed_event_details().map(|d| d.cause()),
        _ => return false,
    };
    cause.flatten().is_none()
}

fn emit(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn print_summary(outcome: &Outcome) {
    let artifacts = outcome
        .output
        .as_ref()
        .map(artifact_lines)
        .unwrap_or_default();
    match outcome.status.as_str() {
        "SUCCEEDED" => eprintln!("execution succeeded"),
        other => eprintln!(
            "execution {}: {}{}",
            other.to_lowercase(),
            outcome.error.as_deref().unwrap_or(""),
            outcome
                .cause
                .as_deref()
                .map(|c| format!(" — {c}"))
                .unwrap_or_default()
        ),
    }
    for line in artifacts {
        println!("{line}");
    }
    if let Some(output) = &outcome.output {
        for line in crate::pipeline_file::outcome_lines(output) {
            eprintln!("{line}");
        }
    }
}

/// Turns history events into the lines a person follows: states entered and left, task
/// failures (a retry follows when the state's Retry matches), the execution's end.
#[derive(Default)]
pub struct Renderer {
    /// Event id → state name, to name the state of a task event.
    entered: BTreeMap<i64, String>,
    /// The innermost state being run.
    current: Option<String>,
    /// Failures per state: the second try onwards is a retry.
    attempts: BTreeMap<String, u32>,
}

impl Renderer {
    pub fn current(&self) -> String {
        self.current.clone().unwrap_or_else(|| "starting".into())
    }

    pub fn line(&mut self, event: &HistoryEvent) -> Option<String> {
        use HistoryEventType as T;
        if let Some(details) = event.state_entered_event_details() {
            let name = details.name().to_string();
            self.entered.insert(event.id(), name.clone());
            self.current = Some(name.clone());
            return Some(format!("→ {name}"));
        }
        if let Some(details) = event.state_exited_event_details() {
            let name = details.name().to_string();
            return Some(format!("✓ {name}"));
        }
        let state = self.current.clone().unwrap_or_default();
        let failure = |error: Option<&str>, cause: Option<&str>| {
            let cause = cause.map(short_cause).unwrap_or_default();
            format!(
                "{}{}{}",
                error.unwrap_or("error"),
                if cause.is_empty() { "" } else { ": " },
                cause
            )
        };
        match event.r#type() {
            T::LambdaFunctionScheduled | T::TaskScheduled => {
                let n = self.attempts.entry(state.clone()).or_insert(0);
                *n += 1;
                (*n > 1).then(|| format!("↻ {state}: attempt {n}"))
            }
            T::LambdaFunctionFailed => event
                .lambda_function_failed_event_details()
                .map(|d| format!("✗ {state}: {}", failure(d.error(), d.cause()))),
            T::LambdaFunctionTimedOut => Some(format!("✗ {state}: timed out")),
            T::TaskFailed => event
                .task_failed_event_details()
                .map(|d| format!("✗ {state}: {}", failure(d.error(), d.cause()))),
            T::ExecutionFailed => event
                .execution_failed_event_details()
                .map(|d| format!("execution failed: {}", failure(d.error(), d.cause()))),
            T::ExecutionAborted => Some("execution aborted".into()),
            T::ExecutionTimedOut => Some("execution timed out".into()),
            T::ExecutionSucceeded => Some("execution succeeded".into()),
            _ => None,
        }
    }
}

/// A Lambda error's cause is `{"errorType":..,"errorMessage":..}`: show the message.
fn short_cause(cause: &str) -> String {
    serde_json::from_str::<Value>(cause)
        .ok()
        .and_then(|v| v["errorMessage"].as_str().map(String::from))
        .unwrap_or_else(|| cause.to_string())
}

/// `region: ami-id` per AMI of every build in Finalize's output (Packer's artifact lines),
/// then kept volumes (`region: vol-id`), with the build's name above when there are several.
pub fn artifact_lines(output: &Value) -> Vec<String> {
    let builds = output["builds"].as_array().cloned().unwrap_or_default();
    let several = builds.len() > 1;
    let mut lines = Vec::new();
    for build in builds {
        let mut build_lines = Vec::new();
        for (region, ami) in build["amis"].as_object().into_iter().flatten() {
            build_lines.push(format!("{region}: {}", ami.as_str().unwrap_or_default()));
        }
        for (region, volumes) in build["volumes"].as_object().into_iter().flatten() {
            for v in volumes.as_array().into_iter().flatten() {
                build_lines.push(format!("{region}: {}", v.as_str().unwrap_or_default()));
            }
        }
        if let Some(error) = build["error"].as_str() {
            build_lines.push(format!("error: {error}"));
        }
        if several {
            lines.push(format!(
                "==> {}:",
                build["name"].as_str().unwrap_or("build")
            ));
        }
        lines.extend(build_lines);
    }
    lines
}

/// For tests: parse an output document the way `follow` does.
pub fn parse_output(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).context("execution output is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sfn::primitives::DateTime;
    use aws_sdk_sfn::types::{
        LambdaFunctionFailedEventDetails, StateEnteredEventDetails, StateExitedEventDetails,
    };

    fn event(id: i64, t: HistoryEventType) -> aws_sdk_sfn::types::builders::HistoryEventBuilder {
        HistoryEvent::builder()
            .id(id)
            .r#type(t)
            .timestamp(DateTime::from_secs(0))
    }

    #[test]
    fn history_renders_entries_exits_and_retries() {
        let mut r = Renderer::default();
        let entered = event(2, HistoryEventType::TaskStateEntered)
            .state_entered_event_details(
                StateEnteredEventDetails::builder()
                    .name("WaitImageAvailable")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let scheduled = |id| {
            event(id, HistoryEventType::LambdaFunctionScheduled)
                .build()
                .unwrap()
        };
        let failed = event(4, HistoryEventType::LambdaFunctionFailed)
            .lambda_function_failed_event_details(
                LambdaFunctionFailedEventDetails::builder()
                    .error("NotReady")
                    .cause(r#"{"errorType":"NotReady","errorMessage":"ami-1 is pending"}"#)
                    .build(),
            )
            .build()
            .unwrap();
        let exited = event(6, HistoryEventType::TaskStateExited)
            .state_exited_event_details(
                StateExitedEventDetails::builder()
                    .name("WaitImageAvailable")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let lines: Vec<String> = [entered, scheduled(3), failed, scheduled(5), exited]
            .iter()
            .filter_map(|e| r.line(e))
            .collect();
        assert_eq!(
            lines,
            vec![
                "→ WaitImageAvailable",
                "✗ WaitImageAvailable: NotReady: ami-1 is pending",
                "↻ WaitImageAvailable: attempt 2",
                "✓ WaitImageAvailable",
            ]
        );
    }

    /// A history of `total` events served as the API does with reverseOrder: newest first,
    /// `page` per call; returns the events read and the pages fetched.
    fn read_new(total: i64, page: usize, after: i64) -> (Vec<i64>, usize) {
        let newest_first: Vec<HistoryEvent> = (1..=total)
            .rev()
            .map(|id| {
                event(id, HistoryEventType::PassStateEntered)
                    .build()
                    .unwrap()
            })
            .collect();
        let fetched = std::cell::Cell::new(0);
        let events = futures::executor::block_on(collect_new_events(after, |token| {
            fetched.set(fetched.get() + 1);
            let start: usize = token.map(|t| t.parse().unwrap()).unwrap_or(0);
            let end = (start + page).min(newest_first.len());
            let next = (end < newest_first.len()).then(|| end.to_string());
            let events = newest_first[start..end].to_vec();
            async move { Ok((events, next)) }
        }))
        .unwrap();
        (events.iter().map(|e| e.id()).collect(), fetched.get())
    }

    #[test]
    fn a_poll_reads_only_the_pages_holding_new_events() {
        let (ids, pages) = read_new(2500, 1000, 2490);
        assert_eq!(ids, (2491..=2500).collect::<Vec<_>>(), "oldest first");
        assert_eq!(pages, 1, "the newest page holds every new event");
        let (ids, pages) = read_new(2500, 1000, 1400);
        assert_eq!(ids.len(), 1100);
        assert_eq!(pages, 2);
        let (ids, pages) = read_new(2500, 1000, 0);
        assert_eq!(ids.len(), 2500);
        assert_eq!(pages, 3, "the first poll reads the whole history");
        let (ids, pages) = read_new(2500, 1000, 2500);
        assert!(ids.is_empty());
        assert_eq!(pages, 1);
    }

    #[test]
    fn artifact_lines_and_exit_codes() {
        let output = parse_output(r#"{"builds":[{"name":"a","amis":{"us-east-1":"ami-1","eu-west-1":"ami-2"}},{"name":"b","amis":{},"error":"boom"}],"failed":1}"#).unwrap();
        assert_eq!(
            artifact_lines(&output),
            vec![
                "==> a:",
                "eu-west-1: ami-2",
                "us-east-1: ami-1",
                "==> b:",
                "error: boom"
            ]
        );
        let single =
            parse_output(r#"{"builds":[{"name":"a","amis":{"us-east-1":"ami-1"}}]}"#).unwrap();
        assert_eq!(artifact_lines(&single), vec!["us-east-1: ami-1"]);
        assert_eq!(
            (
                exit_code("SUCCEEDED"),
                exit_code("FAILED"),
                exit_code("ABORTED"),
                exit_code("TIMED_OUT")
            ),
            (0, 1, 2, 2)
        );
    }
}
