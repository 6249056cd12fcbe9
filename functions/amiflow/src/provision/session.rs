//! What the driver ([`super::run`]) needs from a communicator, and what every provisioner
//! of a Provision invocation runs with.
//!
//! A [`Session`] carries out the remote provisioners (`shell`, `file`): over SSH
//! ([`super::ssh`]) each one runs to its end within the call; over SSM ([`super::ssm`]) a
//! call sends the provisioner's command, or looks at the one an earlier invocation sent,
//! and the step raises `NotReady` until it has finished; with `communicator: "none"`
//! ([`NoSession`]) there is nothing to run them on. `shell-local` never reaches a session:
//! the driver runs it on this machine ([`super::local`]).

use std::future::Future;

use tokio::time::Instant;

use super::config::{Kind, Provisioner};
use super::plan::PlanEnv;
use super::render::Secrets;
use crate::StepError;

/// Where a provisioner stands after [`Session::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// It finished successfully.
    Done,
    /// It runs outside this invocation (an SSM command): the step raises `NotReady` with
    /// this reason and is invoked again later.
    Pending(String),
    /// Its command was just sent: the step raises `CommandSent` with this reason (deployed,
    /// SSM's event on the command's end invokes it again; `waits::PROVISION`).
    Sent(String),
}

/// A communicator as the driver uses it. A failure is an `Err`: the driver retries it when
/// the provisioner has `max_retries` and the work ran within the invocation, else the build
/// fails (or, for a `Transient` error, the state's Retry invokes the step again).
pub trait Session: Send {
    /// Whether a remote provisioner's work happens within [`Session::advance`]. The driver
    /// then applies `pause_before`, `pause_after`, `max_retries`, `timeout` and the
    /// invocation deadline around it. SSM's commands run detached from any invocation: the
    /// command carries the provisioner's `timeout` as its execution limit, and the driver
    /// only forwards what the command came to.
    const WITHIN_INVOCATION: bool;

    /// The first provisioner this invocation has to look at: those before it finished in
    /// earlier invocations (SSM finds where the build is from its commands; the others
    /// start at the beginning).
    fn resume(
        &mut self,
        _provisioners: &[Provisioner],
    ) -> impl Future<Output = Result<usize, StepError>> + Send {
        async { Ok(0) }
    }

    /// Runs, starts or looks at the remote provisioner `p`, the `index`th of the build.
    fn advance(
        &mut self,
        index: usize,
        p: &Provisioner,
        opts: &RunOptions,
    ) -> impl Future<Output = Result<Progress, StepError>> + Send;
}

/// What every provisioner of one Provision invocation runs with, built once by the step
/// from the `Ctx` (secrets, deadline, Lambda or not, template directory) and the build state.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Revealed at the moment of use, masked in everything logged or reported: the run's
    /// secrets plus the credentials read for this connection (key material).
    pub secrets: Secrets,
    /// When this invocation must have returned (Lambda's deadline), if any.
    pub deadline: Option<Instant>,
    /// Running as a Lambda function: `shell-local` is refused there.
    pub in_lambda: bool,
    /// What the provisioners are rendered with: build data, the template's directory.
    pub env: PlanEnv,
}

/// A provisioner's failure, named by its label (the driver masks the secrets).
pub fn failed(label: &str, message: impl std::fmt::Display) -> StepError {
    StepError::BuildFailed(format!("{label}: {message}"))
}

/// The session of `communicator: "none"`: only `shell-local` provisioners can run.
#[derive(Debug)]
pub struct NoSession;

impl NoSession {
    /// Refuses a build with a remote provisioner before anything runs.
    pub fn for_provisioners(provisioners: &[Provisioner]) -> Result<NoSession, StepError> {
        match provisioners
            .iter()
            .find(|p| !matches!(p.kind, Kind::ShellLocal(_)))
        {
            Some(p) => Err(needs_a_communicator(p)),
            None => Ok(NoSession),
        }
    }
}

fn needs_a_communicator(p: &Provisioner) -> StepError {
    StepError::BuildFailed(format!(
        "{} needs a communicator, but the build has \"communicator\": \"none\"; use \"ssh\" or \"ssm\"",
        p.label()
    ))
}

impl Session for NoSession {
    const WITHIN_INVOCATION: bool = true;

    async fn advance(
        &mut self,
        _: usize,
        p: &Provisioner,
        _: &RunOptions,
    ) -> Result<Progress, StepError> {
        Err(needs_a_communicator(p))
    }
}
