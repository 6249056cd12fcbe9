//! The local engine: runs an ASL definition in-process.
//!
//! Why not the `asl` crate (0.2.0, Jun 2024, evaluated): its Map and Parallel states are
//! no-ops marked TODO, Pass ignores Result/Parameters, its task handler is synchronous and
//! Wait sleeps the thread, and it has no clock to replace, no events and no Retry timing we
//! could observe. The JSONPath crates (serde_json_path, jsonpath-rust) only read paths, and
//! ResultPath must write, so [`path`] is our own small reference-path implementation.
//!
//! Behaviour follows the States Language spec and, where the spec is silent, what
//! aws-local-stepfunctions 3.0 (the reference interpreter the e2e tests compare against) does:
//! the first retrier whose ErrorEquals matches decides (its own attempt counter; when
//! exhausted, no later retrier is tried); `States.ALL` and `States.TaskFailed` do not match
//! `States.Runtime`; `States.TaskFailed` does not match `States.Timeout`; FULL jitter picks
//! the delay uniformly in [0, computed delay].
//!
//! ```ignore
//! let engine = Engine::new(MyInvoker).with_clock(VirtualClock::default()).on_event(|e| println!("{e:?}"));
//! let output = engine.run(&machine, "exec-1", json!({"template": {...}})).await?;
//! ```

pub mod choice;
pub mod clock;
pub mod intrinsics;
pub mod path;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};

pub use clock::{Clock, RealClock, VirtualClock};

use crate::model::{
    errors, Catcher, JitterStrategy, Retrier, State, StateMachine, States, SubMachine, Transition,
};

/// A task's failure as Step Functions sees it: the error name Retry/Catch match on, and
/// the cause text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub error: String,
    pub cause: String,
}

impl TaskError {
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> TaskError {
        TaskError {
            error: error.into(),
            cause: cause.into(),
        }
    }
}

/// The Resource of a callback Task invoking a Lambda function: the state waits for
/// `SendTaskSuccess`/`SendTaskFailure` with its `$$.Task.Token`.
pub const LAMBDA_CALLBACK: &str = "arn:aws:states:::lambda:invoke.waitForTaskToken";

/// For a callback Task ([`LAMBDA_CALLBACK`]): the function its Parameters name
/// (`FunctionName`) and the event they give it (`Payload`). None for any other Task.
pub fn lambda_callback(resource: &str, input: &Value) -> Option<(String, Value)> {
    if resource != LAMBDA_CALLBACK {
        return None;
    }
    let function = input.get("FunctionName")?.as_str()?.to_string();
    Some((
        function,
        input.get("Payload").cloned().unwrap_or(Value::Null),
    ))
}

/// How a Task state's work is done. `resource` is the `Resource` string exactly as in the
/// definition (e.g. `${PrepareFunctionArn}`); [`resource_name`] extracts the step name.
/// Implementors may write `async fn invoke(&self, resource: &str, input: Value) -> …`.
pub trait TaskInvoker: Send + Sync + 'static {
    fn invoke(
        &self,
        resource: &str,
        input: Value,
    ) -> impl Future<Output = Result<Value, TaskError>> + Send;
}

/// `${PrepareFunctionArn}` → `Prepare`; `arn:aws:lambda:r:a:function:name[:alias]` → `name`;
/// anything else as it is.
pub fn resource_name(resource: &str) -> &str {
    if let Some(inner) = resource
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
    {
        return inner.strip_suffix("FunctionArn").unwrap_or(inner);
    }
    if let Some((_, rest)) = resource.split_once(":function:") {
        return rest.split(':').next().unwrap_or(rest);
    }
    resource
}

/// How an execution ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}: {cause}")]
pub struct ExecutionError {
    pub error: String,
    pub cause: String,
}

impl ExecutionError {
    fn new(error: &str, cause: impl Into<String>) -> ExecutionError {
        ExecutionError {
            error: error.into(),
            cause: cause.into(),
        }
    }
    fn runtime(cause: impl Into<String>) -> ExecutionError {
        ExecutionError::new(errors::RUNTIME, cause)
    }
}

/// Where a state runs: the Map iteration or Parallel branch it is in, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The Map or Parallel state's name.
    pub state: String,
    /// The iteration index (Map) or branch index (Parallel).
    pub index: usize,
}

/// What the engine reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ExecutionStarted {
        name: String,
        input: Value,
    },
    StateEntered {
        name: String,
        scope: Vec<Scope>,
        input: Value,
    },
    StateExited {
        name: String,
        scope: Vec<Scope>,
        output: Value,
    },
    TaskFailed {
        name: String,
        scope: Vec<Scope>,
        error: String,
        cause: String,
    },
    RetryScheduled {
        name: String,
        scope: Vec<Scope>,
        error: String,
        attempt: u32,
        delay: Duration,
    },
    Caught {
        name: String,
        scope: Vec<Scope>,
        error: String,
        next: String,
    },
    ExecutionSucceeded {
        output: Value,
    },
    ExecutionFailed {
        error: String,
        cause: String,
    },
}

type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

pub struct Engine<I> {
    invoker: Arc<I>,
    clock: Arc<dyn Clock>,
    listeners: Vec<Listener>,
}

impl<I> Clone for Engine<I> {
    fn clone(&self) -> Self {
        Engine {
            invoker: self.invoker.clone(),
            clock: self.clock.clone(),
            listeners: self.listeners.clone(),
        }
    }
}

/// Per-execution facts for the context object.
struct Execution {
    name: String,
    id: String,
    start_time: String,
    input: Value,
    state_machine_id: String,
}

enum Next {
    State(String),
    End,
}

impl<I: TaskInvoker> Engine<I> {
    /// An engine on the real clock.
    pub fn new(invoker: I) -> Engine<I> {
        Engine::from_arc(Arc::new(invoker))
    }

    pub fn from_arc(invoker: Arc<I>) -> Engine<I> {
        Engine {
            invoker,
            clock: Arc::new(RealClock::default()),
            listeners: Vec::new(),
        }
    }

    pub fn with_clock(mut self, clock: impl Clock) -> Engine<I> {
        self.clock = Arc::new(clock);
        self
    }

    /// Calls `f` for every event, synchronously, from the task that produced it.
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Engine<I> {
        self.listeners.push(Arc::new(f));
        self
    }

    /// The events on a channel instead of a callback.
    pub fn event_channel(self) -> (Engine<I>, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (self.on_event(move |e| drop(tx.send(e.clone()))), rx)
    }

    fn emit(&self, event: Event) {
        for l in &self.listeners {
            l(&event);
        }
    }

    /// Runs `machine` to its end. `name` is the execution name (`$$.Execution.Name`).
    pub async fn run(
        &self,
        machine: &StateMachine,
        name: &str,
        input: Value,
    ) -> Result<Value, ExecutionError> {
        let sm_name = "amiflow-local";
        let exec = Execution {
            name: name.to_string(),
            id: format!("arn:aws:states:local:000000000000:execution:{sm_name}:{name}"),
            start_time: self
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            input: input.clone(),
            state_machine_id: format!("arn:aws:states:local:000000000000:stateMachine:{sm_name}"),
        };
        self.emit(Event::ExecutionStarted {
            name: name.to_string(),
            input: input.clone(),
        });
        let run = self.run_scope(&exec, &machine.states, &machine.start_at, input, Vec::new());
        let result = match machine.timeout_seconds {
            Some(t) => {
                let timeout = self.clock.timeout(Duration::from_secs(t));
                futures::pin_mut!(run);
                match futures::future::select(run, timeout).await {
                    futures::future::Either::Left((r, _)) => r,
                    futures::future::Either::Right(_) => Err(ExecutionError::new(
                        errors::TIMEOUT,
                        format!("the execution ran longer than its TimeoutSeconds ({t} s)"),
                    )),
                }
            }
            None => run.await,
        };
        match &result {
            Ok(output) => self.emit(Event::ExecutionSucceeded {
                output: output.clone(),
            }),
            Err(e) => self.emit(Event::ExecutionFailed {
                error: e.error.clone(),
                cause: e.cause.clone(),
            }),
        }
        result
    }

    fn run_scope<'a>(
        &'a self,
        exec: &'a Execution,
        states: &'a States,
        start_at: &'a str,
        input: Value,
        scope: Vec<Scope>,
    ) -> BoxFuture<'a, Result<Value, ExecutionError>> {
        Box::pin(async move {
            let mut current = start_at.to_string();
            let mut value = input;
            loop {
                let state = states.get(&current).ok_or_else(|| {
                    ExecutionError::runtime(format!(
                        "the definition has no state named {current:?}"
                    ))
                })?;
                self.emit(Event::StateEntered {
                    name: current.clone(),
                    scope: scope.clone(),
                    input: value.clone(),
                });
                let (output, next) = self.run_state(exec, &current, state, value, &scope).await?;
                self.emit(Event::StateExited {
                    name: current.clone(),
                    scope: scope.clone(),
                    output: output.clone(),
                });
                match next {
                    Next::End => return Ok(output),
                    Next::State(n) => {
                        current = n;
                        value = output;
                    }
                }
            }
        })
    }

    fn context(&self, exec: &Execution, state_name: &str, retry_count: u32) -> Value {
        json!({
            "Execution": {
                "Id": exec.id,
                "Name": exec.name,
                "StartTime": exec.start_time,
                "Input": exec.input,
                "RoleArn": "arn:aws:iam::000000000000:role/amiflow-local",
            },
            "StateMachine": {"Id": exec.state_machine_id, "Name": "amiflow-local"},
            // A callback Task's token (`.waitForTaskToken`): the engine's own tasks answer
            // by returning, so it only has to be unique per attempt.
            "Task": {"Token": format!("{}#{state_name}#{retry_count}", exec.id)},
            "State": {
                "Name": state_name,
                "EnteredTime": self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "RetryCount": retry_count,
            },
        })
    }

    /// One state: retries and catches around its work.
    async fn run_state(
        &self,
        exec: &Execution,
        name: &str,
        state: &State,
        raw: Value,
        scope: &[Scope],
    ) -> Result<(Value, Next), ExecutionError> {
        let retriers = state.retriers();
        let mut attempts = vec![0u32; retriers.len()];
        let mut retry_count = 0;
        loop {
            let ctx = self.context(exec, name, retry_count);
            let failure = match self
                .attempt_state(exec, name, state, raw.clone(), &ctx, scope)
                .await
            {
                Ok(done) => return Ok(done),
                Err(f) => f,
            };
            let is_task = matches!(state, State::Task(_));
            if is_task {
                self.emit(Event::TaskFailed {
                    name: name.into(),
                    scope: scope.to_vec(),
                    error: failure.error.clone(),
                    cause: failure.cause.clone(),
                });
            }
            if let Some(i) = retriers
                .iter()
                .position(|r| error_matches(&r.error_equals, &failure.error, is_task))
            {
                let retrier = &retriers[i];
                if attempts[i] < retrier.attempts() {
                    let delay = retry_delay(retrier, attempts[i]);
                    attempts[i] += 1;
                    retry_count += 1;
                    self.emit(Event::RetryScheduled {
                        name: name.into(),
                        scope: scope.to_vec(),
                        error: failure.error.clone(),
                        attempt: attempts[i],
                        delay,
                    });
                    self.clock.delay(delay).await;
                    continue;
                }
            }
            if let Some(catcher) = state
                .catchers()
                .iter()
                .find(|c| error_matches(&c.error_equals, &failure.error, is_task))
            {
                let output = caught_output(catcher, raw, &failure)?;
                self.emit(Event::Caught {
                    name: name.into(),
                    scope: scope.to_vec(),
                    error: failure.error.clone(),
                    next: catcher.next.clone(),
                });
                return Ok((output, Next::State(catcher.next.clone())));
            }
            return Err(failure);
        }
    }

    /// One attempt at a state's work, with its input and output processing.
    async fn attempt_state(
        &self,
        exec: &Execution,
        name: &str,
        state: &State,
        raw: Value,
        ctx: &Value,
        scope: &[Scope],
    ) -> Result<(Value, Next), ExecutionError> {
        match state {
            State::Task(t) => {
                let effective = apply_input(&t.input_path, t.parameters.as_ref(), &raw, ctx)?;
                let invoke = self.invoker.invoke(&t.resource, effective);
                let timeout = match &t.timeout_seconds_path {
                    Some(p) => Some(timeout_from_path(p, &raw, ctx)?),
                    None => t.timeout_seconds,
                };
                let result = match timeout {
                    Some(secs) => {
                        let timeout = self.clock.timeout(Duration::from_secs(secs));
                        futures::pin_mut!(invoke);
                        match futures::future::select(invoke, timeout).await {
                            futures::future::Either::Left((r, _)) => r,
                            futures::future::Either::Right(_) => Err(TaskError::new(
                                errors::TIMEOUT,
                                format!("{name} ran longer than its TimeoutSeconds ({secs} s)"),
                            )),
                        }
                    }
                    None => invoke.await,
                };
                let result = result.map_err(|e| ExecutionError {
                    error: e.error,
                    cause: e.cause,
                })?;
                let output = apply_output(
                    t.result_selector.as_ref(),
                    &t.result_path,
                    &t.output_path,
                    raw,
                    result,
                    ctx,
                )?;
                Ok((output, next_of(state)))
            }
            State::Pass(p) => {
                let effective = apply_input(&p.input_path, p.parameters.as_ref(), &raw, ctx)?;
                let result = p.result.clone().unwrap_or(effective);
                let output = apply_output(None, &p.result_path, &p.output_path, raw, result, ctx)?;
                Ok((output, next_of(state)))
            }
            State::Choice(c) => {
                let effective = apply_input(&c.input_path, None, &raw, ctx)?;
                let mut chosen = None;
                for rule in &c.choices {
                    if choice::matches(rule, &effective, ctx).map_err(ExecutionError::runtime)? {
                        chosen = rule.next.clone();
                        break;
                    }
                }
                let next = chosen.or_else(|| c.default.clone()).ok_or_else(|| {
                    ExecutionError::new(
                        errors::NO_CHOICE_MATCHED,
                        format!("no choice rule of {name} matched the input and it has no Default"),
                    )
                })?;
                let output = apply_output_path(&c.output_path, effective, ctx)?;
                Ok((output, Next::State(next)))
            }
            State::Wait(w) => {
                let effective = apply_input(&w.input_path, None, &raw, ctx)?;
                let read = |p: &str| -> Result<Value, ExecutionError> {
                    path::read(p, &effective, ctx)
                        .map_err(ExecutionError::runtime)?
                        .ok_or_else(|| {
                            ExecutionError::runtime(format!(
                                "{name}: the path {p} selects nothing in the input"
                            ))
                        })
                };
                let seconds: f64 = if let Some(s) = w.seconds {
                    s as f64
                } else if let Some(p) = &w.seconds_path {
                    read(p)?.as_f64().filter(|s| *s >= 0.0).ok_or_else(|| {
                        ExecutionError::runtime(format!(
                            "{name}: SecondsPath {p} must select a non-negative number"
                        ))
                    })?
                } else {
                    let ts = match (&w.timestamp, &w.timestamp_path) {
                        (Some(t), _) => Value::String(t.clone()),
                        (None, Some(p)) => read(p)?,
                        (None, None) => {
                            return Err(ExecutionError::runtime(format!(
                            "{name}: a Wait needs Seconds, SecondsPath, Timestamp or TimestampPath"
                        )))
                        }
                    };
                    let at = ts
                        .as_str()
                        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                        .ok_or_else(|| {
                            ExecutionError::runtime(format!(
                                "{name}: {ts} is not an RFC 3339 timestamp"
                            ))
                        })?;
                    ((at.with_timezone(&chrono::Utc) - self.clock.now())
                        .num_milliseconds()
                        .max(0) as f64)
                        / 1000.0
                };
                self.clock.delay(Duration::from_secs_f64(seconds)).await;
                let output = apply_output_path(&w.output_path, effective, ctx)?;
                Ok((output, next_of(state)))
            }
            State::Succeed(s) => {
                let effective = apply_input(&s.input_path, None, &raw, ctx)?;
                Ok((
                    apply_output_path(&s.output_path, effective, ctx)?,
                    Next::End,
                ))
            }
            State::Fail(f) => {
                let read_string = |p: &str| -> Result<String, ExecutionError> {
                    match path::read(p, &raw, ctx).map_err(ExecutionError::runtime)? {
                        Some(Value::String(s)) => Ok(s),
                        other => Err(ExecutionError::runtime(format!(
                            "{name}: the path {p} must select a string, got {other:?}"
                        ))),
                    }
                };
                let error = match (&f.error, &f.error_path) {
                    (Some(e), _) => e.clone(),
                    (None, Some(p)) => read_string(p)?,
                    (None, None) => String::new(),
                };
                let cause = match (&f.cause, &f.cause_path) {
                    (Some(c), _) => c.clone(),
                    (None, Some(p)) => read_string(p)?,
                    (None, None) => String::new(),
                };
                Err(ExecutionError { error, cause })
            }
            State::Map(m) => {
                let effective = apply_input(&m.input_path, None, &raw, ctx)?;
                let items_path = m.items_path.as_deref().unwrap_or("$");
                let items = match path::read(items_path, &effective, ctx)
                    .map_err(ExecutionError::runtime)?
                {
                    Some(Value::Array(items)) => items,
                    other => {
                        return Err(ExecutionError::runtime(format!(
                            "{name}: ItemsPath {items_path} must select an array, got {other:?}"
                        )))
                    }
                };
                let processor = m.processor().ok_or_else(|| {
                    ExecutionError::runtime(format!("{name}: Map has no ItemProcessor"))
                })?;
                let mut iterations = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    let iteration_input = match m.selector() {
                        Some(selector) => {
                            let mut item_ctx = ctx.clone();
                            item_ctx["Map"] = json!({"Item": {"Index": index, "Value": item}});
                            payload(selector, &effective, &item_ctx)
                                .map_err(ExecutionError::runtime)?
                        }
                        None => item,
                    };
                    let mut inner = scope.to_vec();
                    inner.push(Scope {
                        state: name.to_string(),
                        index,
                    });
                    iterations.push(self.run_sub(exec, processor, iteration_input, inner));
                }
                let concurrency = match m.max_concurrency {
                    Some(n) if n > 0 => n as usize,
                    _ => iterations.len().max(1),
                };
                let results: Vec<Value> = futures::stream::iter(iterations)
                    .buffered(concurrency)
                    .try_collect()
                    .await?;
                let output = apply_output(
                    m.result_selector.as_ref(),
                    &m.result_path,
                    &m.output_path,
                    raw,
                    Value::Array(results),
                    ctx,
                )?;
                Ok((output, next_of(state)))
            }
            State::Parallel(p) => {
                let effective = apply_input(&p.input_path, p.parameters.as_ref(), &raw, ctx)?;
                let branches = p.branches.iter().enumerate().map(|(index, b)| {
                    let mut inner = scope.to_vec();
                    inner.push(Scope {
                        state: name.to_string(),
                        index,
                    });
                    self.run_sub(exec, b, effective.clone(), inner)
                });
                let results = futures::future::try_join_all(branches).await?;
                let output = apply_output(
                    p.result_selector.as_ref(),
                    &p.result_path,
                    &p.output_path,
                    raw,
                    Value::Array(results),
                    ctx,
                )?;
                Ok((output, next_of(state)))
            }
        }
    }

    fn run_sub<'a>(
        &'a self,
        exec: &'a Execution,
        sub: &'a SubMachine,
        input: Value,
        scope: Vec<Scope>,
    ) -> BoxFuture<'a, Result<Value, ExecutionError>> {
        self.run_scope(exec, &sub.states, &sub.start_at, input, scope)
    }
}

fn next_of(state: &State) -> Next {
    match state.transition() {
        Some(Transition::Next(n)) => Next::State(n.to_string()),
        _ => Next::End,
    }
}

/// Whether an ErrorEquals list matches `error` (see the module comment for the wildcards).
pub fn error_matches(list: &[String], error: &str, is_task: bool) -> bool {
    if list.iter().any(|e| e == error) {
        return true;
    }
    if error == errors::RUNTIME {
        return false;
    }
    list.iter().any(|e| {
        e == errors::ALL || (e == errors::TASK_FAILED && is_task && error != errors::TIMEOUT)
    })
}

/// The delay before the retry after `attempt` earlier retries of this retrier.
fn retry_delay(retrier: &Retrier, attempt: u32) -> Duration {
    let seconds = retrier.delay_seconds(attempt);
    let seconds = match retrier.jitter() {
        JitterStrategy::Full => rand::random::<f64>() * seconds,
        JitterStrategy::None => seconds,
    };
    Duration::from_secs_f64(seconds.max(0.0))
}

fn caught_output(
    catcher: &Catcher,
    mut raw: Value,
    failure: &ExecutionError,
) -> Result<Value, ExecutionError> {
    let error_output = json!({"Error": failure.error, "Cause": failure.cause});
    match &catcher.result_path {
        Some(None) => Ok(raw),
        Some(Some(p)) => {
            path::Path::parse(p)
                .and_then(|p| p.set(&mut raw, error_output))
                .map_err(|e| {
                    ExecutionError::new(
                        errors::RESULT_PATH_MATCH_FAILURE,
                        format!("Catch ResultPath {p}: {e}"),
                    )
                })?;
            Ok(raw)
        }
        None => Ok(error_output),
    }
}

/// InputPath then Parameters.
fn apply_input(
    input_path: &Option<Option<String>>,
    parameters: Option<&Value>,
    raw: &Value,
    ctx: &Value,
) -> Result<Value, ExecutionError> {
    let effective = match input_path {
        None => raw.clone(),
        Some(None) => json!({}),
        Some(Some(p)) => path::read(p, raw, ctx)
            .map_err(ExecutionError::runtime)?
            .ok_or_else(|| {
                ExecutionError::runtime(format!(
                    "Invalid path '{p}': the InputPath selects nothing in the state's input"
                ))
            })?,
    };
    match parameters {
        Some(template) => payload(template, &effective, ctx).map_err(ExecutionError::runtime),
        None => Ok(effective),
    }
}

/// ResultSelector, ResultPath (into the raw input), then OutputPath.
fn apply_output(
    result_selector: Option<&Value>,
    result_path: &Option<Option<String>>,
    output_path: &Option<Option<String>>,
    mut raw: Value,
    result: Value,
    ctx: &Value,
) -> Result<Value, ExecutionError> {
    let result = match result_selector {
        Some(selector) => payload(selector, &result, ctx).map_err(ExecutionError::runtime)?,
        None => result,
    };
    let combined = match result_path {
        None => result,
        Some(None) => raw,
        Some(Some(p)) => {
            path::Path::parse(p)
                .and_then(|path| path.set(&mut raw, result))
                .map_err(|e| {
                    ExecutionError::new(
                        errors::RESULT_PATH_MATCH_FAILURE,
                        format!("ResultPath {p}: {e}"),
                    )
                })?;
            raw
        }
    };
    apply_output_path(output_path, combined, ctx)
}

fn apply_output_path(
    output_path: &Option<Option<String>>,
    value: Value,
    ctx: &Value,
) -> Result<Value, ExecutionError> {
    match output_path {
        None => Ok(value),
        Some(None) => Ok(json!({})),
        Some(Some(p)) => path::read(p, &value, ctx)
            .map_err(ExecutionError::runtime)?
            .ok_or_else(|| {
                ExecutionError::runtime(format!(
                    "Invalid path '{p}': the OutputPath selects nothing in the state's output"
                ))
            }),
    }
}

/// `TimeoutSecondsPath`: a positive whole number of seconds in the state's input.
fn timeout_from_path(p: &str, input: &Value, ctx: &Value) -> Result<u64, ExecutionError> {
    path::read(p, input, ctx)
        .map_err(ExecutionError::runtime)?
        .and_then(|v| v.as_u64())
        .filter(|secs| *secs > 0)
        .ok_or_else(|| {
            ExecutionError::runtime(format!(
                "Invalid path '{p}': the TimeoutSecondsPath must select a positive integer in the state's input"
            ))
        })
}

/// A payload template (Parameters, ResultSelector, ItemSelector): keys ending in `.$` take
/// their value from a path, a context path (`$$.`) or an intrinsic function.
pub fn payload(template: &Value, input: &Value, ctx: &Value) -> Result<Value, String> {
    match template {
        Value::Object(obj) => {
            let mut out = Map::new();
            for (key, value) in obj {
                match key.strip_suffix(".$") {
                    Some(field) => {
                        let expr = value.as_str().ok_or_else(|| format!("the value of {key:?} must be a path or an intrinsic function (a string)"))?;
                        let v = if intrinsics::is_call(expr) {
                            intrinsics::evaluate(expr, input, ctx)
                                .map_err(|e| format!("{key}: {e}"))?
                        } else {
                            path::read(expr, input, ctx)?
                                .ok_or_else(|| format!("The JSONPath '{expr}' specified for the field '{key}' could not be found in the input"))?
                        };
                        out.insert(field.to_string(), v);
                    }
                    None => {
                        out.insert(key.clone(), payload(value, input, ctx)?);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => Ok(Value::Array(
            items
                .iter()
                .map(|v| payload(v, input, ctx))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests;
