//! Running the state machine on this machine: the local engine's Task dispatch.
//!
//! Every Task resource (`${CreateImageFunctionArn}`, or a Lambda ARN) names a step; the
//! step's handler runs in-process with the run's [`Ctx`]. Errors come back as Step
//! Functions reports a Lambda error: the error name is the `errorType`, the cause is the
//! Lambda error document, so Retry/Catch and `CaughtError::message` behave as deployed.

use std::sync::Arc;

use amiflow_statemachine::{resource_name, TaskError, TaskInvoker};
use serde_json::Value;

use crate::{flows, Ctx};

pub struct LocalInvoker {
    ctx: Arc<Ctx>,
}

impl LocalInvoker {
    pub fn new(ctx: Arc<Ctx>) -> LocalInvoker {
        LocalInvoker { ctx }
    }
}

impl TaskInvoker for LocalInvoker {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
        let name = resource_name(resource);
        let Some(step) = flows::find(name) else {
            // What Lambda answers for a function that does not exist.
            return Err(TaskError::new(
                "Lambda.ResourceNotFoundException",
                format!(
                    "no step handler named {name:?} (resource {resource}); known: {}",
                    crate::lambda_api::known_handlers()
                ),
            ));
        };
        (step.handler)(self.ctx.clone(), input).await.map_err(|e| {
            let cause = serde_json::to_string(&e.payload()).expect("an error payload serializes");
            TaskError::new(e.name(), cause)
        })
    }
}
