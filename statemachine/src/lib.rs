//! Amazon States Language: the model the flows are declared in, its JSON rendering, and
//! the local engine that interprets a definition in-process.

pub mod engine;
pub mod model;

pub use engine::{
    lambda_callback, resource_name, Clock, Engine, Event, ExecutionError, RealClock, Scope,
    TaskError, TaskInvoker, VirtualClock, LAMBDA_CALLBACK,
};
pub use model::*;
