//! Provision (Packer's `StepProvision` + `StepCleanupTempKeys`): runs the build's
//! provisioners in order through the driver (`provision::run`), over the session of the
//! build's communicator.
//!
//! - SSH: one connection, every provisioner within this one invocation. Lambda allows at
//!   most 15 minutes per invocation (this step's timeout); when the remaining time would be
//!   exceeded the build fails with that explanation (see `provision::run`). Afterwards, with
//!   `ssh_clear_authorized_keys` and the temporary key pair, the key is removed from
//!   `~/.ssh/authorized_keys` (Packer's `sed`).
//! - SSM: sends one command per provisioner and raises `NotReady` until it finishes, so no
//!   Lambda runs while it runs (see `provision::ssm`); the command ids end up in
//!   `data.extra["ssm_commands"]`.
//! - none: only `shell-local` provisioners can run.
//!
//! What the provisioners run with comes from the `Ctx`: its secrets, its base directory
//! (else the current one), the invocation's deadline and whether this is Lambda.

use std::collections::BTreeMap;

use crate::provision::communicator::{ssh_target, Communication, Communicator};
use crate::provision::config::Kind;
use crate::provision::plan::PlanEnv;
use crate::provision::run::run_all;
use crate::provision::session::{NoSession, RunOptions};
use crate::provision::ssh::{SshAuth, SshTransport};
use crate::provision::ssm::SsmSession;
use crate::provision::transport::{ExecStatus, OutputSink, Transport};
use crate::provision::{parse_all, Secrets};
use crate::steps::StepSpec;
use crate::waits;
use crate::{handler, BuildState, Ctx, StepError};

pub const SPEC: StepSpec = StepSpec {
    name: "Provision",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ssm:GetParameter",
        "ssm:SendCommand",
        "ssm:ListCommands",
        "ssm:GetCommandInvocation",
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:DeleteObject",
    ],
    // Polls SSM commands (SSH never raises NotReady): up to about 8 hours.
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::PROVISION),
    // Lambda's maximum: an SSH provisioning runs within one invocation.
    timeout_seconds: 900,
    handler: handler!(provision),
};

/// What a local build calls here: what running its provisioners calls ([`calls_running`]).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    calls_running(build, &build.provisioners, Purpose::Build)
}

/// What running `provisioners` (a build's, or its error-cleanup provisioner) calls in a
/// local build, by communicator: none nothing (`shell-local` runs here); SSH, when there
/// is a provisioner or (the build's) the temporary key to clear from `authorized_keys`,
/// what logging in calls ([`crate::steps::connect::ssh_calls`]); SSM ListCommands (where
/// the build is), and when a provisioner runs on the instance (not only `shell-local`)
/// SendCommand and GetCommandInvocation, with a staging bucket (`ssm_output_s3_bucket`)
/// also PutObject (the staged script and files), GetObject (the output), ListBucket and
/// DeleteObject (both removed).
pub(crate) fn calls_running(
    build: &amiflow_template::PreparedBuild,
    provisioners: &[serde_json::Value],
    purpose: Purpose,
) -> Vec<&'static str> {
    let Some(c) = build.config.comm() else {
        return Vec::new();
    };
    let (Ok(comm), Ok(provisioners)) = (
        Communication::from_config(c, build.config.build_region()),
        parse_all(provisioners),
    ) else {
        return Vec::new();
    };
    match comm.communicator {
        Communicator::None => Vec::new(),
        Communicator::Ssh => {
            let secrets = crate::steps::connect::local_secrets(build);
            if provisioners.is_empty() && !clears_keys(&comm, &secrets, purpose) {
                return Vec::new();
            }
            crate::steps::connect::ssh_calls(build)
        }
        Communicator::Ssm => {
            let mut calls = vec!["ssm:ListCommands"];
            if provisioners
                .iter()
                .any(|p| !matches!(p.kind, Kind::ShellLocal(_)))
            {
                calls.extend(["ssm:SendCommand", "ssm:GetCommandInvocation"]);
                if comm.ssm_bucket.is_some() {
                    calls.extend([
                        "s3:PutObject",
                        "s3:GetObject",
                        "s3:ListBucket",
                        "s3:DeleteObject",
                    ]);
                }
            }
            calls
        }
    }
}

/// Whether the provisioning over SSH ends by clearing the temporary key from
/// `authorized_keys` (`ssh_clear_authorized_keys`, the build's own provisioners).
fn clears_keys(comm: &Communication, secrets: &Secrets, purpose: Purpose) -> bool {
    purpose == Purpose::Build && comm.ssh_clear_authorized_keys && comm.uses_temporary_key(secrets)
}

/// Packer's build data for `{{build `Key`}}` (the SSH key pair is added once connected).
pub fn build_data(
    state: &BuildState,
    comm: &Communication,
    host: &str,
) -> BTreeMap<String, String> {
    let d = &state.data;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        m.insert(k.to_string(), v.cloned().unwrap_or_default());
    };
    put("ID", d.instance_id.as_ref());
    put("SourceAMI", d.source_ami.as_ref());
    put("SourceAMIName", d.source_ami_name.as_ref());
    put("SourceAMICreationDate", d.source_ami_creation_date.as_ref());
    put("SourceAMIOwner", d.source_ami_owner.as_ref());
    put("SourceAMIOwnerName", d.source_ami_owner_name.as_ref());
    put("BuildRegion", Some(&comm.region));
    put("PackerRunUUID", Some(&state.execution));
    put("Host", Some(&host.to_string()));
    put("Port", Some(&comm.ssh_port.to_string()));
    put("User", comm.ssh_username.as_ref());
    let conn = match comm.communicator {
        Communicator::Ssh => "ssh",
        Communicator::Ssm => "ssm",
        Communicator::None => "none",
    };
    put("ConnType", Some(&conn.to_string()));
    // Set from the SSH key once connected (`with_ssh_key`); empty otherwise, as in Packer.
    put("SSHPublicKey", None);
    put("SSHPrivateKey", None);
    m
}

/// `{{build `SSHPublicKey`}}` and `{{build `SSHPrivateKey`}}` (OpenSSH format) from the
/// key the SSH session logs in with; the private key is masked like every secret.
fn with_ssh_key(opts: &mut RunOptions, auth: &SshAuth) {
    let SshAuth::Key(key) = auth else { return };
    if let Ok(public) = key.public_key().to_openssh() {
        opts.env.build.insert("SSHPublicKey".into(), public);
    }
    if let Ok(private) = key.to_openssh(russh::keys::ssh_key::LineEnding::LF) {
        let private = private.to_string();
        opts.secrets.add_value(private.clone());
        opts.env.build.insert("SSHPrivateKey".into(), private);
    }
}

/// What every provisioner runs with, from the `Ctx` and the build state; `host` is what
/// `{{build `Host`}}` gives.
fn run_options(
    ctx: &Ctx,
    state: &BuildState,
    comm: &Communication,
    host: &str,
    secrets: Secrets,
) -> RunOptions {
    let random = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, state.execution.as_bytes())
        .simple()
        .to_string()[..8]
        .to_string();
    let files = crate::template_files::TemplateFiles::of(ctx);
    RunOptions {
        secrets,
        deadline: ctx.deadline,
        in_lambda: ctx.in_lambda,
        env: PlanEnv {
            build_name: state.build.name.clone(),
            builder_type: state.build.builder_type.as_str().to_string(),
            build: build_data(state, comm, host),
            random,
            base_dir: files.base_dir,
            deployed: files.deployed,
        },
    }
}

pub async fn provision(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let provisioners = parse_all(&state.build.provisioners).map_err(|p| {
        StepError::BuildFailed(format!(
            "the build's provisioners are invalid:\n* {}",
            p.join("\n* ")
        ))
    })?;
    run_provisioners(ctx, state, &provisioners, Purpose::Build).await
}

/// Why provisioners run: the build's own, or the `error-cleanup-provisioner` of a failed
/// build (`steps::error_cleanup_provision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Build,
    ErrorCleanup,
}

/// Prefix of the execution in the SSM command comments of the error-cleanup provisioner,
/// so its command is never taken for one of the build's provisioners (`provision::ssm`
/// finds where a build is by those comments).
const ERROR_CLEANUP_SSM_KEY: &str = "error-cleanup-";

/// Runs `provisioners` over the build's communicator (see the module's documentation).
pub async fn run_provisioners(
    ctx: &Ctx,
    mut state: BuildState,
    provisioners: &[crate::provision::Provisioner],
    purpose: Purpose,
) -> Result<BuildState, StepError> {
    let comm = Communication::of_state(&state)?;
    let mut secrets = ctx.secrets.clone();
    match comm.communicator {
        Communicator::None => {
            let mut session = NoSession::for_provisioners(provisioners)?;
            let opts = run_options(ctx, &state, &comm, "", secrets);
            run_all(&mut session, provisioners, &opts).await?;
            Ok(state)
        }
        Communicator::Ssm => {
            let opts = run_options(ctx, &state, &comm, "", secrets);
            let keyed;
            let session_state = match purpose {
                Purpose::Build => &state,
                Purpose::ErrorCleanup => {
                    let mut s = state.clone();
                    s.execution = format!("{ERROR_CLEANUP_SSM_KEY}{}", state.execution);
                    keyed = s;
                    &keyed
                }
            };
            let mut session = SsmSession::open(ctx, session_state, &comm).await?;
            run_all(&mut session, provisioners, &opts).await?;
            if purpose == Purpose::Build {
                state.data.extra.insert(
                    "ssm_commands".into(),
                    serde_json::to_value(session.command_ids())?,
                );
            }
            Ok(state)
        }
        Communicator::Ssh => {
            let clear_keys = clears_keys(&comm, &secrets, purpose);
            if provisioners.is_empty() && !clear_keys {
                return Ok(state);
            }
            let target = ssh_target(
                ctx,
                &state,
                &comm,
                &mut secrets,
                crate::steps::connect::ATTEMPT_TIMEOUT,
            )
            .await?;
            let mut transport = connect_retrying(&target, &secrets).await?;
            let mut opts = run_options(ctx, &state, &comm, &target.host, secrets);
            with_ssh_key(&mut opts, &target.auth);
            let result = run_all(&mut transport, provisioners, &opts).await;
            if result.is_ok() && clear_keys {
                if let Some(name) = &state.data.key_pair_name {
                    clear_authorized_key(&mut transport, name, &opts.secrets).await;
                }
            }
            transport.close().await;
            result.map(|()| state)
        }
    }
}

/// Connect has already seen SSH answer; a few quick attempts cover a flaky moment.
async fn connect_retrying(
    target: &crate::provision::ssh::SshTarget,
    secrets: &Secrets,
) -> Result<SshTransport, StepError> {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        match SshTransport::connect(target).await {
            Ok(t) => return Ok(t),
            Err(e) => last = secrets.mask(&e.0),
        }
    }
    Err(StepError::BuildFailed(format!(
        "cannot connect to {} for provisioning: {last}",
        target.address()
    )))
}

/// Packer's StepCleanupTempKeys: drop the temporary key's line from authorized_keys (the
/// user's and root's); failures are reported, not fatal, as in Packer.
async fn clear_authorized_key(transport: &mut SshTransport, key_name: &str, secrets: &Secrets) {
    let pattern = key_name.replace('/', "\\/");
    for cmd in [
        format!("sed -i.bak '/ {pattern}$/d' ~/.ssh/authorized_keys; rm ~/.ssh/authorized_keys.bak"),
        format!("sudo sed -i.bak '/ {pattern}$/d' /root/.ssh/authorized_keys; sudo rm /root/.ssh/authorized_keys.bak"),
    ] {
        let mut sink = OutputSink::new("ssh_clear_authorized_keys", secrets);
        match transport.exec(&cmd, &mut sink).await {
            Ok(ExecStatus::Exited(0)) => {}
            Ok(status) => tracing::warn!("clearing the temporary key from authorized_keys: `{cmd}` ended with {status}"),
            Err(e) => tracing::warn!("clearing the temporary key from authorized_keys: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::{builder, template};
    use serde_json::{json, Value};

    fn calls(keys: Value, provisioners: Value) -> Vec<&'static str> {
        local_calls(&template(
            json!({"builders": [builder(keys)], "provisioners": provisioners}),
        ))
    }

    #[test]
    fn the_communicator_and_the_provisioners_decide() {
        let shell = json!([{"type": "shell", "inline": ["true"]}]);
        let local = json!([{"type": "shell-local", "inline": ["true"]}]);
        assert!(calls(json!({}), local.clone()).is_empty(), "none");
        let ssh = json!({"communicator": "ssh", "ssh_username": "u"});
        assert!(calls(ssh.clone(), json!([])).is_empty(), "nothing to run");
        assert_eq!(
            calls(ssh.clone(), shell.clone()),
            ["ssm:GetParameter", "ec2:DescribeInstances"]
        );
        let mut clear = ssh.clone();
        clear["ssh_clear_authorized_keys"] = json!(true);
        assert_eq!(calls(clear, json!([])).len(), 2, "the key is cleared");
        let ssm = json!({"communicator": "ssm", "iam_instance_profile": "ssm"});
        assert_eq!(calls(ssm.clone(), json!([])), ["ssm:ListCommands"]);
        assert_eq!(calls(ssm.clone(), local), ["ssm:ListCommands"]);
        assert_eq!(
            calls(ssm.clone(), shell.clone()),
            [
                "ssm:ListCommands",
                "ssm:SendCommand",
                "ssm:GetCommandInvocation"
            ]
        );
        let mut staged = ssm;
        staged["ssm_output_s3_bucket"] = json!("bucket");
        assert!(calls(staged, shell).contains(&"s3:PutObject"));
    }
}
