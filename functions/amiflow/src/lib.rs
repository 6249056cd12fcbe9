//! amiflow's builder steps and what they share.
//!
//! Every step is `async fn(&Ctx, BuildState) -> Result<BuildState, StepError>`; the Lambda
//! binary (`functions/lambda`), the local engine ([`local`]) and `serve-lambdas`
//! ([`lambda_api`]) dispatch to it by handler name through [`flows::registry`].
//!
//! # Layout
//!
//! - [`steps`]: one file per step — its handler, the IAM actions it calls, its wait.
//!   Prepare turns a template into builds; Cleanup and Finalize close them.
//! - [`flows`]: each builder's chain of steps as typed data; the state machine definition
//!   (`statemachine/amiflow.asl.json`), the roles ([`infra`]) and the tests derive from it.
//! - [`resources`]: one module per kind of AWS resource a build creates — look at it, find
//!   it by the build tag, remove it, its IAM actions. Creating steps, Cleanup and the
//!   janitor share them; Cleanup is a loop over them.
//! - [`waits`]: every wait as one value — name, budget, Retry policy, begin and end, and
//!   for the waits EC2 announces the event that ends them deployed (`steps/await_event.rs`
//!   awaits it, `steps/deliver_event.rs` delivers it).
//! - [`builders`]: what the steps of one builder share (amazon-chroot's host script job,
//!   amazon-instance's bundle, the launch volumes of ebssurrogate/ebsvolume, block devices).
//! - [`provision`]: the provisioners and the communicators (SSH, SSM, local).
//! - [`identity`]: build tags, ClientTokens and deterministic names (how retries and sweeps
//!   find a build's resources); [`build_render`]: fields rendered late with build data.
//! - [`state`]: the build state every step takes and returns, with the ledger of what the
//!   build created; [`ctx`]: the AWS clients and the invocation's context;
//!   [`error`]: step errors and how AWS errors are classified.
//! - [`data_sources`]: the AWS reads behind an HCL2 template's data sources, handed to the
//!   template crate by the CLI.
//!
//! Data flows one way: template (the `amiflow-template` crate) → [`steps::prepare`] →
//! one [`BuildState`] per build → each step of its flow → Cleanup → [`steps::finalize`],
//! which reports the artifacts.

pub mod build_render;
pub mod builders;
pub mod ctx;
pub mod data_sources;
pub mod error;
pub mod flows;
pub mod identity;
pub mod infra;
pub mod lambda_api;
pub mod local;
pub mod pipeline;
pub mod prelude;
pub mod provision;
pub mod resources;
pub mod state;
pub mod steps;
pub mod template_files;
pub mod waits;

pub use ctx::Ctx;
pub use error::StepError;
pub use state::BuildState;
