//! Running the state machine on this machine: the local engine's Task dispatch.
//!
//! Every Task resource (`${CreateImageFunctionArn}`, or a Lambda ARN) names a step; the
//! step's handler runs in-process with the run's [`Ctx`]. Errors come back as Step
//! Functions reports a Lambda error: the error name is the `errorType`, the cause is the
//! Lambda error document, so Retry/Catch and `CaughtError::message` behave as deployed.
//!
//! Two things Lambda gives a deployed build are done here too:
//! - a handler that panics fails its invocation with `Runtime.Panic` (as the Lambda
//!   runtime reports it) instead of taking the engine down, so the build's Catch still
//!   sends it to Cleanup;
//! - an [`Interrupt`] (the first SIGINT/SIGTERM of `amiflow build`) cancels the step in
//!   progress and every later one with [`CANCELLED`], which the chain's Catch routes to
//!   Cleanup; Cleanup and Finalize themselves are never cancelled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amiflow_statemachine::{
    lambda_callback, resource_name, Clock, RealClock, TaskError, TaskInvoker,
};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::ErrorPayload;
use crate::steps::StepSpec;
use crate::{flows, Ctx};

/// The error a step cancelled by an [`Interrupt`] fails with. No Retrier names it, so the
/// chain's `States.ALL` Catch takes the build to Cleanup.
pub const CANCELLED: &str = "Cancelled";

/// The error name Lambda gives a handler that panicked (see `lambda_api.rs` too).
pub const PANIC: &str = "Runtime.Panic";

/// Steps that run to completion even after an interrupt: they are how an interrupted
/// build removes what it created and reports it.
const UNINTERRUPTIBLE: [&str; 2] = [flows::CLEANUP.name, flows::FINALIZE.name];

/// A one-way switch shared by the signal handler, the invoker and the clock.
#[derive(Clone)]
pub struct Interrupt {
    state: Arc<watch::Sender<Option<String>>>,
}

impl Default for Interrupt {
    fn default() -> Interrupt {
        Interrupt {
            state: Arc::new(watch::channel(None).0),
        }
    }
}

impl Interrupt {
    /// Cancels the run; `why` (e.g. `SIGINT`) ends up in the cancelled steps' error.
    /// Only the first call counts.
    pub fn trigger(&self, why: &str) {
        self.state.send_if_modified(|state| {
            if state.is_some() {
                return false;
            }
            *state = Some(why.to_string());
            true
        });
    }

    /// Why the run was cancelled, once it was.
    pub fn reason(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// Resolves when the run is cancelled (at once if it already is).
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.state.subscribe();
        async move {
            let _ = rx.wait_for(Option::is_some).await;
        }
    }
}

pub struct LocalInvoker {
    ctx: Arc<Ctx>,
    /// Each build's own context (its credentials and secrets), by build name: a step of that
    /// build runs with it; anything else (the run's own steps) with `ctx`.
    builds: HashMap<String, Arc<Ctx>>,
    interrupt: Interrupt,
    find: fn(&str) -> Option<StepSpec>,
}

impl LocalInvoker {
    pub fn new(ctx: Arc<Ctx>) -> LocalInvoker {
        LocalInvoker::with_steps(ctx, Interrupt::default(), flows::find)
    }

    /// An invoker whose running step `interrupt` cancels.
    pub fn interruptible(ctx: Arc<Ctx>, interrupt: Interrupt) -> LocalInvoker {
        LocalInvoker::with_steps(ctx, interrupt, flows::find)
    }

    /// An invoker looking handlers up with `find` instead of [`flows::find`] (tests replace
    /// a step's handler with one that misbehaves).
    pub fn with_steps(
        ctx: Arc<Ctx>,
        interrupt: Interrupt,
        find: fn(&str) -> Option<StepSpec>,
    ) -> LocalInvoker {
        LocalInvoker {
            ctx,
            builds: HashMap::new(),
            interrupt,
            find,
        }
    }

    /// Runs each build's steps with its own context (`amiflow build` makes one per build).
    pub fn with_build_contexts(mut self, builds: HashMap<String, Arc<Ctx>>) -> LocalInvoker {
        self.builds = builds;
        self
    }

    /// The context of the build whose state `input` is (a step's input, or a callback
    /// task's payload around it).
    fn ctx_for(&self, input: &Value) -> Arc<Ctx> {
        ["/build/name", "/state/build/name"]
            .iter()
            .find_map(|p| input.pointer(p).and_then(Value::as_str))
            .and_then(|name| self.builds.get(name))
            .unwrap_or(&self.ctx)
            .clone()
    }

    fn cancelled(&self, step: &str) -> TaskError {
        let why = self
            .interrupt
            .reason()
            .unwrap_or_else(|| "interrupt".into());
        lambda_error(
            CANCELLED,
            format!("{step} was cancelled by {why}; the build cleans up what it created"),
        )
    }
}

fn lambda_error(name: &str, message: String) -> TaskError {
    let payload = ErrorPayload {
        error_type: name.to_string(),
        error_message: message,
    };
    let cause = serde_json::to_string(&payload).expect("an error payload serializes");
    TaskError::new(name, cause)
}

impl TaskInvoker for LocalInvoker {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
        // A callback task's handler answers by returning (steps/approve.rs asks locally).
        let (resource, input) = match lambda_callback(resource, &input) {
            Some((function, payload)) => (function, payload),
            None => (resource.to_string(), input),
        };
        let resource = resource.as_str();
        let name = resource_name(resource);
        let Some(step) = (self.find)(name) else {
            // What Lambda answers for a function that does not exist.
            return Err(TaskError::new(
                "Lambda.ResourceNotFoundException",
                format!(
                    "no step handler named {name:?} (resource {resource}); known: {}",
                    crate::lambda_api::known_handlers()
                ),
            ));
        };
        let interruptible = !UNINTERRUPTIBLE.contains(&step.name);
        if interruptible && self.interrupt.reason().is_some() {
            return Err(self.cancelled(step.name));
        }
        // Spawned, so that a panic ends this invocation only (as in Lambda) and an
        // interrupt can abort the handler wherever it is waiting.
        let mut handler = tokio::spawn((step.handler)(self.ctx_for(&input), input));
        let joined = if interruptible {
            tokio::select! {
                joined = &mut handler => joined,
                _ = self.interrupt.triggered() => {
                    handler.abort();
                    return Err(self.cancelled(step.name));
                }
            }
        } else {
            handler.await
        };
        match joined {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => {
                let cause =
                    serde_json::to_string(&e.payload()).expect("an error payload serializes");
                Err(TaskError::new(e.name(), cause))
            }
            Err(join) if join.is_panic() => Err(lambda_error(
                PANIC,
                format!("handler {} panicked: {}", step.name, panic_message(join)),
            )),
            Err(_) => Err(self.cancelled(step.name)),
        }
    }
}

fn panic_message(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Real time, except that a Retry interval or Wait already running when the run is
/// interrupted ends at once, so the cancelled build reaches its Cleanup without waiting out
/// a poll. Delays that start later (Cleanup's own polls) run their full length.
pub struct InterruptibleClock {
    pub inner: RealClock,
    pub interrupt: Interrupt,
}

impl Clock for InterruptibleClock {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now()
    }

    fn delay(&self, d: Duration) -> BoxFuture<'static, ()> {
        let sleep = self.inner.delay(d);
        if self.interrupt.reason().is_some() {
            return sleep;
        }
        let interrupted = self.interrupt.triggered();
        Box::pin(async move {
            tokio::select! {
                _ = sleep => {}
                _ = interrupted => {}
            }
        })
    }

    fn timeout(&self, d: Duration) -> BoxFuture<'static, ()> {
        self.inner.timeout(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_interrupt_fires_once_and_ends_running_delays() {
        let interrupt = Interrupt::default();
        let clock = InterruptibleClock {
            inner: RealClock::default(),
            interrupt: interrupt.clone(),
        };
        let long = clock.delay(Duration::from_secs(3600));
        let trigger = interrupt.clone();
        tokio::spawn(async move { trigger.trigger("SIGINT") });
        tokio::time::timeout(Duration::from_secs(10), long)
            .await
            .expect("a delay running at the interrupt ends");
        interrupt.trigger("SIGTERM");
        assert_eq!(interrupt.reason().as_deref(), Some("SIGINT"));
        // A delay started after the interrupt is not cut short.
        let after = clock.delay(Duration::from_secs(3600));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), after)
                .await
                .is_err(),
            "a delay started after the interrupt runs its length"
        );
    }
}
