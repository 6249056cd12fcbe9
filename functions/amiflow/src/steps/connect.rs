//! Connect (Packer's `communicator.StepConnect`): a wait that raises `NotReady` until the
//! communicator answers — SSH connect and authentication succeed, or the SSM agent is
//! online — and fails the build after `ssh_timeout` (`ssm_timeout` for SSM), counted from
//! the wait's start time in `BuildState.waits["Connect"]`. A no-op for `communicator: none`.
//!
//! Each invocation makes one attempt bounded by [`ATTEMPT_TIMEOUT`]; the state's Retry
//! spaces the attempts, so no Lambda sleeps while an instance boots.

use std::time::Duration;

use chrono::Utc;

use crate::provision::communicator::{ssh_target, Communication, Communicator};
use crate::provision::ssh::SshTransport;
use crate::provision::ssm::{agent_status, AgentStatus};
use crate::provision::Secrets;
use crate::steps::StepSpec;
use crate::waits;
use crate::{handler, BuildState, Ctx, StepError};

/// One connection attempt (TCP + handshake + auth).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

pub const SPEC: StepSpec = StepSpec {
    name: "Connect",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ssm:GetParameter",
        "ssm:DescribeInstanceInformation",
    ],
    // About an hour of polling: longer than any sensible ssh_timeout, which the handler enforces.
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::CONNECT),
    timeout_seconds: 60,
    handler: handler!(connect),
};

/// What a local build calls here: over SSH what logging in calls ([`ssh_calls`]); over
/// SSM DescribeInstanceInformation (whether the agent is online); with `none` nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let Some(comm) = build.config.comm() else {
        return Vec::new();
    };
    match Communication::from_config(comm, build.config.build_region()).map(|c| c.communicator) {
        Ok(Communicator::Ssh) => ssh_calls(build),
        Ok(Communicator::Ssm) => vec!["ssm:DescribeInstanceInformation"],
        Ok(Communicator::None) | Err(_) => Vec::new(),
    }
}

/// What logging in to the instance over SSH calls ([`ssh_target`]), for Connect and
/// Provision: GetParameter for the temporary key's private half (no `ssh_password` nor
/// `ssh_private_key_file`), then DescribeInstances for its address unless `ssh_host`
/// names it; nothing without credentials (the build fails first).
pub(crate) fn ssh_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let Some(comm) = build.config.comm() else {
        return Vec::new();
    };
    let Ok(cfg) = Communication::from_config(comm, build.config.build_region()) else {
        return Vec::new();
    };
    let mut calls = Vec::new();
    if cfg.uses_temporary_key(&local_secrets(build)) {
        if !crate::resources::key_pair::made_for(&build.config) {
            return calls;
        }
        calls.push("ssm:GetParameter");
    }
    if cfg.ssh_host.is_none() {
        calls.push("ec2:DescribeInstances");
    }
    calls
}

/// The secrets a local run of `build` logs in with: its `ssh_password` (`amiflow build`
/// hands it over, as the config never serializes it).
pub(crate) fn local_secrets(build: &amiflow_template::PreparedBuild) -> Secrets {
    let mut secrets = Secrets::new();
    if let Some(password) = build.config.comm().and_then(|c| c.ssh_password.clone()) {
        secrets.set_ssh_password(password);
    }
    secrets
}

pub async fn connect(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    connect_with(ctx, state, &ctx.secrets).await
}

/// Set in `data.extra` once the communicator answered: from then on the build has reached
/// Provision, so a failure runs the `error-cleanup-provisioner` (Packer runs it only for a
/// build whose provisioning step ran).
pub const CONNECTED: &str = "connected";

/// [`connect`] with the secrets of a local run (e.g. `ssh_password`).
pub async fn connect_with(
    ctx: &Ctx,
    state: BuildState,
    secrets: &Secrets,
) -> Result<BuildState, StepError> {
    let mut state = wait_for_communicator(ctx, state, secrets).await?;
    state
        .data
        .extra
        .insert(CONNECTED.into(), serde_json::Value::Bool(true));
    Ok(state)
}

async fn wait_for_communicator(
    ctx: &Ctx,
    mut state: BuildState,
    secrets: &Secrets,
) -> Result<BuildState, StepError> {
    let comm = Communication::of_state(&state)?;
    let started = waits::CONNECT.started(&state).unwrap_or_else(Utc::now);
    let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
    let timed_out = elapsed >= comm.timeout;
    match comm.communicator {
        Communicator::None => Ok(state),
        Communicator::Ssh => {
            let mut secrets = secrets.clone();
            let (address, error) =
                match ssh_target(ctx, &state, &comm, &mut secrets, ATTEMPT_TIMEOUT).await {
                    Ok(target) => match SshTransport::connect(&target).await {
                        Ok(t) => {
                            tracing::info!(
                                step = "Connect",
                                "SSH on {} answers with host key {}",
                                t.address(),
                                t.host_key()
                            );
                            // Trust on first use: later sessions accept this key only.
                            crate::provision::communicator::pin_host_key(&mut state, t.host_key());
                            t.close().await;
                            waits::CONNECT.end(&mut state);
                            return Ok(state);
                        }
                        Err(e) => (target.address(), secrets.mask(&e.0)),
                    },
                    // No address yet (instance still getting one): keep waiting.
                    Err(StepError::NotReady(m)) => (
                        format!(
                            "{}:{}",
                            comm.ssh_host.as_deref().unwrap_or("instance"),
                            comm.ssh_port
                        ),
                        m,
                    ),
                    Err(e) => return Err(e),
                };
            if timed_out {
                Err(StepError::BuildFailed(format!(
                    "SSH on {address} did not answer within ssh_timeout ({:?}); last error: {error}. Check that the \
                     security group allows port {} from here, that ssh_username is right, and that the instance boots",
                    comm.timeout, comm.ssh_port
                )))
            } else {
                Err(StepError::NotReady(format!(
                    "waiting for SSH on {address}: {error}"
                )))
            }
        }
        Communicator::Ssm => {
            let instance_id = state.data.instance_id.clone().ok_or_else(|| {
                StepError::BuildFailed(
                    "the SSM communicator needs an instance: the build state has no instance_id"
                        .into(),
                )
            })?;
            match agent_status(ctx, &comm.region, &instance_id).await {
                AgentStatus::Online => {
                    waits::CONNECT.end(&mut state);
                    Ok(state)
                }
                AgentStatus::CannotTell(why) => {
                    // Provision's SendCommand answers InvalidInstanceId until the agent registers.
                    tracing::warn!(step = "Connect", "cannot tell whether the SSM agent is online ({why}); Provision will find out");
                    waits::CONNECT.end(&mut state);
                    Ok(state)
                }
                AgentStatus::NotYet(why) if timed_out => Err(StepError::BuildFailed(format!(
                    "{why} after ssm_timeout ({:?}): the instance needs the SSM agent and an instance profile with \
                     AmazonSSMManagedInstanceCore, and must reach the SSM endpoints",
                    comm.timeout
                ))),
                AgentStatus::NotYet(why) => Err(StepError::NotReady(why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn the_communicator_decides_and_ssh_reads_the_temporary_key_and_the_address() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(
                json!({"communicator": "ssm", "iam_instance_profile": "ssm"})
            )),
            ["ssm:DescribeInstanceInformation"]
        );
        assert_eq!(
            local_calls(&build(json!({"communicator": "ssh", "ssh_username": "u"}))),
            ["ssm:GetParameter", "ec2:DescribeInstances"]
        );
        assert_eq!(
            local_calls(&build(
                json!({"communicator": "ssh", "ssh_username": "u", "ssh_password": "pw", "ssh_host": "127.0.0.1"})
            )),
            Vec::<&str>::new()
        );
        assert_eq!(
            local_calls(&build(
                json!({"communicator": "ssh", "ssh_username": "u", "ssh_private_key_file": "k"})
            )),
            ["ec2:DescribeInstances"]
        );
    }
}
