//! amiflow's builder steps and what they share.
//!
//! Every step is `async fn(&Ctx, BuildState) -> Result<BuildState, StepError>`; the
//! [`steps`] registry maps handler names to them for the Lambda binary, the local
//! engine and `serve-lambdas`, and [`flows`] chains them per builder.

pub mod aws;
pub mod ctx;
pub mod error;
pub mod flows;
pub mod infra;
pub mod lambda_api;
pub mod local;
pub mod provision;
pub mod state;
pub mod steps;

pub use ctx::Ctx;
pub use error::StepError;
pub use state::BuildState;
