//! The SSM communicator (`communicator: "ssm"`): provisioners run through RunCommand
//! (`AWS-RunShellScript`), files are staged in S3 and fetched on the instance with
//! `aws s3 cp`. A Windows build's provisioners run as PowerShell (`AWS-RunPowerShellScript`,
//! `provision/windows.rs`) through the same session.
//!
//! Requirements on the instance: the SSM agent running and registered, an instance profile
//! granting SSM (the managed policy `AmazonSSMManagedInstanceCore`) and read access to the
//! staging bucket (`s3:GetObject` on `ssm_output_s3_bucket`, plus `s3:PutObject` for full output), and
//! the AWS CLI for staged files. No inbound port and no key material are needed.
//!
//! No Lambda runs while a command runs: [`SsmSession`] sends one command per provisioner
//! and answers `Sent`, so Provision raises `CommandSent`: deployed, a callback state awaits
//! SSM's event on the command's end, then invokes Provision again (`waits::PROVISION`);
//! a look that finds the command still running answers `Pending` (`NotReady`, which the
//! state's Retry polls). Progress needs no state: each
//! command carries the comment `amiflow <execution> #<index>`, and the next invocation
//! finds the newest one with ListCommands (so a retried invocation with the same input
//! resumes where the build is, never re-sending a command). The command ids are recorded
//! in the build state (`data.extra["ssm_commands"]`) once every provisioner is done.

use std::collections::BTreeMap;

use aws_smithy_types::error::display::DisplayErrorContext;

use super::communicator::{s3, ssm, Communication};
use super::config::Provisioner;
use super::plan::{plan, Action, ExitCheck};
use super::render::Secrets;
use super::session::{failed, Progress, RunOptions, Session};
use super::transport::{shell_quote, tail_text, OutputSink};
use crate::error::{classify, error_code};
use crate::{BuildState, Ctx, StepError};

pub const DOCUMENT: &str = crate::resources::ssm_command::SHELL_DOCUMENT;

/// The comment that identifies a provisioner's command (SSM allows 100 characters): the
/// execution, cut to 60, and whose it is ([`crate::identity::command_owner`]).
pub fn comment(state_machine: &str, execution: &str, index: usize) -> String {
    format!("{}{index}", comment_prefix(state_machine, execution))
}

fn comment_prefix(state_machine: &str, execution: &str) -> String {
    let exec: String = execution.chars().take(60).collect();
    let owner = crate::identity::command_owner(state_machine, execution);
    format!("amiflow {exec} {owner} #")
}

/// Whether `comment` is that of one of this execution's provisioner commands ([`comment`]).
pub fn is_provisioner_command_of(comment: &str, state_machine: &str, execution: &str) -> bool {
    index_of(comment, state_machine, execution).is_some()
}

fn index_of(comment: &str, state_machine: &str, execution: &str) -> Option<usize> {
    comment
        .strip_prefix(&comment_prefix(state_machine, execution))?
        .parse()
        .ok()
}

/// What a command invocation's `Status` and `StatusDetails` mean for the build.
///
/// GetCommandInvocation reports Pending, InProgress, Delayed, Success, Cancelled,
/// Cancelling, TimedOut and Failed as the status; Undeliverable, Terminated and the two
/// kinds of time-out only appear in the details, so the details are looked at first.
pub fn decide(
    label: &str,
    status: &str,
    details: &str,
    response_code: i32,
    output: &[String],
) -> Result<(), StepError> {
    let tail = tail_text(output);
    let squeezed: String = details.chars().filter(|c| !c.is_whitespace()).collect();
    match (squeezed.as_str(), status) {
        ("Undeliverable", _) | (_, "Undeliverable") => Err(StepError::BuildFailed(format!(
            "{label}: the SSM command could not be delivered: the instance is not managed by SSM (is the agent \
             running, does the instance profile grant AmazonSSMManagedInstanceCore, can it reach the SSM endpoints?)"
        ))),
        ("Terminated", _) | (_, "Terminated") => Err(StepError::BuildFailed(format!(
            "{label}: the SSM command was terminated: a child process was stopped or the instance went away{tail}"
        ))),
        ("DeliveryTimedOut", _) => Err(StepError::BuildFailed(format!(
            "{label}: the SSM command timed out before the agent picked it up (is the instance running and its agent online?)"
        ))),
        ("ExecutionTimedOut", _) | (_, "TimedOut") => Err(StepError::BuildFailed(format!(
            "{label}: the SSM command timed out while running; raise the provisioner's \"timeout\" if the work is just long{tail}"
        ))),
        (_, "Pending" | "InProgress" | "Delayed") => Err(StepError::NotReady(format!("{label}: SSM command is {status}"))),
        (_, "Success") => Ok(()),
        (_, "Failed") => {
            Err(StepError::BuildFailed(format!("{label}: the command failed on the instance with exit code {response_code}{tail}")))
        }
        (_, "Cancelled" | "Cancelling") => Err(StepError::BuildFailed(format!(
            "{label}: the SSM command was cancelled (by someone or something outside this build){tail}"
        ))),
        (_, other) => Err(StepError::BuildFailed(format!("{label}: unexpected SSM command status {other:?} ({details}){tail}"))),
    }
}

fn still_running(status: &str, details: &str) -> bool {
    matches!(
        decide("", status, details, 0, &[]),
        Err(StepError::NotReady(_))
    )
}

/// A provisioner as one shell script plus the objects to stage for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub script: String,
    /// (S3 key, bytes) to upload before sending.
    pub staged: Vec<(String, Vec<u8>)>,
}

/// Where staged scripts and files go in the bucket: a prefix the stack's artifacts bucket
/// expires (infra.rs), as a stopped build's staged scripts hold revealed secrets.
pub const STAGED_ROOT: &str = "staged/";
/// Where SSM writes command output in the bucket, expired likewise.
pub const OUTPUT_ROOT: &str = "ssm-output/";

/// `<execution>/<build>/`, the part of every key of one build's (per build: the builds of
/// one execution run at once, and each instance must fetch its own build's files).
fn build_part(execution: &str, build: &str) -> String {
    let build = crate::resources::key_pair::parameter_part(build);
    format!("{execution}/{build}/")
}

/// Where one build stages files: `staged/<execution>/<build>/`.
pub fn build_staging_prefix(execution: &str, build: &str) -> String {
    format!("{STAGED_ROOT}{}", build_part(execution, build))
}

/// Staging location of a provisioner's files:
/// `staged/<execution>/<build>/provision/<index>/`.
pub fn staging_prefix(execution: &str, build: &str, index: usize) -> String {
    format!(
        "{}provision/{index}/",
        build_staging_prefix(execution, build)
    )
}

/// Where a build's commands write their output: `ssm-output/<execution>/<build>` (SSM
/// adds `/<command id>/<instance id>/...`).
fn output_prefix(execution: &str, build: &str) -> String {
    let part = build_part(execution, build);
    format!("{OUTPUT_ROOT}{}", part.trim_end_matches('/'))
}

/// Everything SSM provisioning may leave in `bucket` (staged files, command output) for one
/// build, or for every build of the execution (`build` None), as `bucket/prefix`: what
/// Cleanup and the janitor sweep (`resources/mod.rs`, `Scope::staging`).
pub fn staging_prefixes(bucket: &str, execution: &str, build: Option<&str>) -> Vec<String> {
    let part = build.map_or_else(|| format!("{execution}/"), |b| build_part(execution, b));
    [STAGED_ROOT, OUTPUT_ROOT]
        .iter()
        .map(|root| format!("{bucket}/{root}{part}"))
        .collect()
}

const HEREDOC_END: &str = "AMIFLOW_FILE_END";

/// The file as here-document text, when it can be one: UTF-8, small, ends with a newline
/// (a here-document always does) and never contains the end marker line.
fn heredoc(data: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(data).ok()?;
    let fits =
        text.len() <= 16 * 1024 && text.ends_with('\n') && !text.lines().any(|l| l == HEREDOC_END);
    fits.then_some(text)
}

/// Turns the actions into one POSIX sh script; uploads become `aws s3 cp` from `bucket`.
pub fn compile(
    label: &str,
    actions: &[Action],
    bucket: Option<&str>,
    prefix: &str,
) -> Result<Compiled, String> {
    let mut script = String::from("#!/bin/sh\n");
    let mut staged = Vec::new();
    for action in actions {
        match action {
            Action::Mkdir { path } => {
                script.push_str(&format!("mkdir -p {} || exit $?\n", shell_quote(path)))
            }
            Action::Upload {
                data,
                remote,
                mode,
                from,
            } => {
                let fetch = match (bucket, heredoc(data)) {
                    (Some(bucket), _) => {
                        let key = format!("{prefix}{}", staged.len());
                        staged.push((key.clone(), data.clone()));
                        format!(
                            "aws s3 cp --only-show-errors {} {} || exit $?\n",
                            shell_quote(&format!("s3://{bucket}/{key}")),
                            shell_quote(remote)
                        )
                    }
                    // Small text files travel inside the command when there is no bucket.
                    (None, Some(text)) => {
                        format!(
                            "cat > {} <<'{HEREDOC_END}' || exit $?\n{text}{HEREDOC_END}\n",
                            shell_quote(remote)
                        )
                    }
                    (None, None) => {
                        return Err(format!(
                        "uploading {from} over SSM needs a staging bucket (binary or large file): \
                             set \"ssm_output_s3_bucket\" in the builder"
                    ))
                    }
                };
                script.push_str(&format!(
                    "{fetch}chmod {:o} {} || exit $?\n",
                    mode,
                    shell_quote(remote)
                ));
            }
            Action::Exec {
                command,
                check: ExitCheck::Main { valid, .. },
            } => {
                let codes: Vec<String> = valid.iter().map(|c| c.to_string()).collect();
                script.push_str(&format!(
                    "{command}\nrc=$?\ncase \" {} \" in *\" $rc \"*) ;; *) echo \"amiflow: {} exited with $rc\" >&2; exit $rc ;; esac\n",
                    codes.join(" "),
                    label.replace('"', "'")
                ));
            }
            Action::Exec {
                command,
                check: ExitCheck::Housekeeping,
            } => script.push_str(&format!("{command} || exit $?\n")),
            Action::Download { remote, .. } => {
                return Err(format!(
                    "downloading {remote} is not supported over SSM; use the SSH communicator"
                ));
            }
        }
    }
    script.push_str("exit 0\n");
    Ok(Compiled { script, staged })
}

/// Whether the agent answers, as far as SSM can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Online,
    NotYet(String),
    /// DescribeInstanceInformation failed (not permitted, or an emulator without it): the
    /// first SendCommand finds out (InvalidInstanceId → NotReady).
    CannotTell(String),
}

pub async fn agent_status(ctx: &Ctx, region: &str, instance_id: &str) -> AgentStatus {
    let filter = aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
        .key("InstanceIds")
        .values(instance_id)
        .build();
    let filter = match filter {
        Ok(f) => f,
        Err(e) => return AgentStatus::CannotTell(e.to_string()),
    };
    // An advisory look: when SSM cannot answer it (an emulator without the call answers
    // 500), the first SendCommand finds out, so one retry rather than the clients' ten
    // (which took ~40 s of backoff).
    let once = aws_sdk_ssm::config::Builder::default()
        .retry_config(aws_smithy_types::retry::RetryConfig::standard().with_max_attempts(2));
    match ssm(ctx, region)
        .describe_instance_information()
        .filters(filter)
        .customize()
        .config_override(once)
        .send()
        .await
    {
        Err(e) => AgentStatus::CannotTell(DisplayErrorContext(&e).to_string()),
        Ok(out) => match out
            .instance_information_list()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id))
        {
            None => AgentStatus::NotYet(format!(
                "the SSM agent on {instance_id} has not registered yet"
            )),
            Some(info) => match info.ping_status() {
                Some(aws_sdk_ssm::types::PingStatus::Online) => AgentStatus::Online,
                other => AgentStatus::NotYet(format!(
                    "the SSM agent on {instance_id} is {}",
                    other
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|| "unknown".into())
                )),
            },
        },
    }
}

/// Removes a provisioner's staged files: they hold revealed values, so a removal that fails
/// fails the build (Cleanup's staging sweep then tries again), never silently.
async fn remove_staged(ctx: &Ctx, cfg: &Communication, prefix: &str) -> Result<(), StepError> {
    let Some(bucket) = &cfg.ssm_bucket else {
        return Ok(());
    };
    remove_revealed(
        ctx,
        &cfg.region,
        &format!("{bucket}/{prefix}"),
        "the staged files",
    )
    .await
}

/// Removes the objects under `bucket/prefix`, which may hold revealed values (`what` they
/// are): a removal refused fails the build and says what is left where; a throttled one is
/// retried.
async fn remove_revealed(ctx: &Ctx, region: &str, at: &str, what: &str) -> Result<(), StepError> {
    crate::resources::s3::delete_objects_under(ctx, region, at, &[])
        .await
        .map(|_| ())
        .map_err(|e| match e {
            StepError::BuildFailed(why) => StepError::BuildFailed(format!(
                "{what} under s3://{at} may hold revealed values and could not be removed ({why}): allow s3:ListBucket and s3:DeleteObject on the bucket"
            )),
            retried => retried,
        })
}

/// [`remove_staged`] on a path that fails already: the removal's own failure is told, and
/// Cleanup's staging sweep tries again.
async fn remove_staged_after_failure(ctx: &Ctx, cfg: &Communication, prefix: &str) {
    if let Err(e) = remove_staged(ctx, cfg, prefix).await {
        tracing::error!(error = %e, "staged files left for Cleanup");
    }
}

/// The SSM communicator of one Provision invocation (see the module doc).
pub struct SsmSession<'a> {
    ctx: &'a Ctx,
    cfg: &'a Communication,
    client: aws_sdk_ssm::Client,
    instance_id: String,
    execution: String,
    /// The state machine running it (empty locally): its commands' comments name both.
    state_machine: String,
    /// The build's name: its staged files are its own.
    build: String,
    /// Provisioner index → the newest command sent for it, from ListCommands.
    sent: BTreeMap<usize, String>,
    /// The build provisions Windows (it has a Windows provisioner): every provisioner,
    /// `file` uploads included, runs as PowerShell ([`super::windows`]).
    windows: bool,
}

impl<'a> SsmSession<'a> {
    /// Finds where the build is: the commands of this build on its instance.
    pub async fn open(
        ctx: &'a Ctx,
        state: &BuildState,
        cfg: &'a Communication,
    ) -> Result<SsmSession<'a>, StepError> {
        let instance_id = state.data.instance_id.clone().ok_or_else(|| {
            StepError::BuildFailed(
                "the SSM communicator needs an instance: the build state has no instance_id".into(),
            )
        })?;
        let client = ssm(ctx, &cfg.region);
        let execution = state.execution.clone();
        let mut sent = BTreeMap::new();
        let mut commands = commands_on(&client, &instance_id, 1).await?;
        commands.sort_by_key(|c| c.requested_date_time().map(|t| t.as_nanos()).unwrap_or(0));
        for c in &commands {
            if let (Some(i), Some(id)) = (
                c.comment()
                    .and_then(|s| index_of(s, &state.state_machine, &execution)),
                c.command_id(),
            ) {
                sent.insert(i, id.to_string());
            }
        }
        let windows = state
            .build
            .provisioners
            .iter()
            .enumerate()
            .any(|(i, p)| Provisioner::parse(i, p).is_ok_and(|p| p.kind.is_windows()));
        Ok(SsmSession {
            ctx,
            cfg,
            client,
            instance_id,
            execution,
            state_machine: state.state_machine.clone(),
            build: state.build.name.clone(),
            sent,
            windows,
        })
    }

    /// The command of each provisioner sent so far, by index: `data.extra["ssm_commands"]`
    /// once every provisioner is done.
    pub fn command_ids(&self) -> BTreeMap<String, String> {
        self.sent
            .iter()
            .map(|(i, id)| (i.to_string(), id.clone()))
            .collect()
    }

    /// Looks at the command sent for provisioner `index`: still running, or what it came to
    /// (its staged files are removed either way).
    async fn check(
        &self,
        index: usize,
        label: &str,
        command_id: &str,
        secrets: &Secrets,
    ) -> Result<Progress, StepError> {
        let inv = self
            .client
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(&self.instance_id)
            .send()
            .await
            .map_err(|e| match error_code(&e) {
                // Right after SendCommand the invocation may not be visible yet.
                Some("InvocationDoesNotExist") => StepError::NotReady(format!(
                    "{label}: command {command_id} not visible yet: {}",
                    DisplayErrorContext(&e)
                )),
                // Throttling retried; AccessDenied, InvalidCommandId… fail now, not in hours.
                _ => classify("GetCommandInvocation", command_id, e),
            })?;
        let status = inv
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "Pending".into());
        let details = inv.status_details().unwrap_or("").to_string();
        if still_running(&status, &details) {
            return Ok(Progress::Pending(format!(
                "{label}: SSM command {command_id} is {status}"
            )));
        }
        let (stdout, stderr) = command_output(
            self.ctx,
            self.cfg,
            &output_prefix(&self.execution, &self.build),
            command_id,
            &self.instance_id,
            self.windows,
            &inv,
        )
        .await?;
        let mut sink = OutputSink::new(label, secrets);
        sink.push(false, stdout.as_bytes());
        sink.push(false, b"\n");
        sink.push(true, stderr.as_bytes());
        sink.finish();
        remove_staged(
            self.ctx,
            self.cfg,
            &staging_prefix(&self.execution, &self.build, index),
        )
        .await?;
        decide(label, &status, &details, inv.response_code(), &sink.tail())?;
        Ok(Progress::Done)
    }

    /// Stages provisioner `index`'s files and sends its command.
    async fn send(
        &mut self,
        index: usize,
        p: &Provisioner,
        opts: &RunOptions,
    ) -> Result<Progress, StepError> {
        let (ctx, cfg) = (self.ctx, self.cfg);
        let label = p.label();
        let fail = |m: String| failed(&label, m);
        let prefix = staging_prefix(&self.execution, &self.build, index);
        let bucket = cfg.ssm_bucket.as_deref();
        let (document, mut compiled) = if self.windows {
            let compiled = super::windows::compile(p, &opts.env, bucket, &prefix).map_err(fail)?;
            (super::windows::DOCUMENT, compiled)
        } else {
            let actions = plan(p, &opts.env).map_err(fail)?;
            (
                DOCUMENT,
                compile(&label, &actions, bucket, &prefix).map_err(fail)?,
            )
        };
        let revealed = opts.secrets.reveal(&compiled.script);
        let commands: Vec<String> = if let Some(bucket) = &cfg.ssm_bucket {
            // The script goes through S3 so that revealed secrets never appear in the
            // command's parameters (visible in SSM's command history).
            let key = format!("{prefix}script.{}", if self.windows { "ps1" } else { "sh" });
            compiled.staged.push((key.clone(), revealed.into_bytes()));
            if self.windows {
                super::windows::staged_command(bucket, &key, index)
            } else {
                let path = format!("/tmp/amiflow-{index}.sh");
                vec![
                    format!(
                        "aws s3 cp --only-show-errors {} {path} || exit $?",
                        shell_quote(&format!("s3://{bucket}/{key}"))
                    ),
                    format!("sh {path}; rc=$?; rm -f {path}; exit $rc"),
                ]
            }
        } else {
            if revealed != compiled.script {
                return Err(fail(
                    "this provisioner uses sensitive variables; over SSM they would be stored in the command's history. \
                     Set \"ssm_output_s3_bucket\" so the script is staged in S3 instead"
                        .into(),
                ));
            }
            vec![compiled.script.clone()]
        };
        if let Some(bucket) = &cfg.ssm_bucket {
            self.stage(&label, bucket, &prefix, &compiled.staged, &opts.secrets)
                .await?;
        }
        let mut send = self
            .client
            .send_command()
            .document_name(document)
            .instance_ids(&self.instance_id)
            .comment(comment(&self.state_machine, &self.execution, index))
            .parameters("commands", commands);
        let limit = super::windows::execution_timeout(p, cfg.ssm_execution_timeout);
        send = send.parameters(
            "executionTimeout",
            vec![limit.as_secs().clamp(1, 172_800).to_string()],
        );
        if let Some(bucket) = &cfg.ssm_bucket {
            send = send
                .output_s3_bucket_name(bucket)
                .output_s3_key_prefix(output_prefix(&self.execution, &self.build));
        }
        match send.send().await {
            Ok(out) => {
                let id = out
                    .command()
                    .and_then(|c| c.command_id())
                    .unwrap_or_default();
                tracing::info!(provisioner = %label, command_id = id, "sent SSM command");
                self.sent.insert(index, id.to_string());
                // The next invocations find where the build is by ListCommands (AwaitEvent
                // the command to await, Provision the provisioner to go on with): the command
                // must be listed before this one ends, or a look too soon would send it again.
                listed(&self.client, &self.instance_id, id).await?;
                Ok(Progress::Sent(format!(
                    "{label}: sent SSM command {id}, waiting for it"
                )))
            }
            Err(e) => {
                let text = DisplayErrorContext(&e).to_string();
                remove_staged_after_failure(ctx, cfg, &prefix).await;
                if text.contains("InvalidInstanceId") {
                    return Ok(Progress::Pending(format!(
                        "{label}: {} is not ready for SSM commands yet (agent not registered or instance not running)",
                        self.instance_id
                    )));
                }
                Err(fail(format!("SendCommand: {text}")))
            }
        }
    }

    /// Uploads a provisioner's files to `bucket` (revealed: they are used on the instance).
    /// On a failure, what was staged already goes too: it may hold revealed secrets.
    async fn stage(
        &self,
        label: &str,
        bucket: &str,
        prefix: &str,
        staged: &[(String, Vec<u8>)],
        secrets: &Secrets,
    ) -> Result<(), StepError> {
        let s3 = s3(self.ctx, &self.cfg.region);
        for (key, data) in staged {
            let put = s3
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(secrets.reveal_bytes(data).into())
                .send()
                .await;
            if let Err(e) = put {
                remove_staged_after_failure(self.ctx, self.cfg, prefix).await;
                return Err(match classify("PutObject", key, e) {
                    StepError::BuildFailed(why) => {
                        failed(label, format!("staging s3://{bucket}/{key}: {why}"))
                    }
                    retried => retried,
                });
            }
        }
        Ok(())
    }
}

impl Session for SsmSession<'_> {
    const WITHIN_INVOCATION: bool = false;

    /// The provisioner of the newest command: those before it have succeeded (each command
    /// is sent only once the previous one has).
    async fn resume(&mut self, provisioners: &[Provisioner]) -> Result<usize, StepError> {
        match self.sent.last_key_value() {
            None => Ok(0),
            Some((&index, command_id)) if index >= provisioners.len() => {
                Err(StepError::BuildFailed(format!(
                    "SSM command {command_id} names provisioner {index}, which this build does not have"
                )))
            }
            Some((&index, _)) => Ok(index),
        }
    }

    async fn advance(
        &mut self,
        index: usize,
        p: &Provisioner,
        opts: &RunOptions,
    ) -> Result<Progress, StepError> {
        match self.sent.get(&index) {
            Some(command_id) => {
                self.check(index, &p.label(), command_id, &opts.secrets)
                    .await
            }
            None => self.send(index, p, opts).await,
        }
    }
}

/// stdout and stderr of an invocation: from the output bucket when one is set (complete),
/// else what GetCommandInvocation returns (truncated by SSM to 24 000 characters).
async fn command_output(
    ctx: &Ctx,
    cfg: &Communication,
    output_prefix: &str,
    command_id: &str,
    instance_id: &str,
    windows: bool,
    inv: &aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput,
) -> Result<(String, String), StepError> {
    let fallback = (
        inv.standard_output_content().unwrap_or("").to_string(),
        inv.standard_error_content().unwrap_or("").to_string(),
    );
    let Some(bucket) = &cfg.ssm_bucket else {
        return Ok(fallback);
    };
    let s3 = s3(ctx, &cfg.region);
    // The plugin's folder: the shell document's, or the PowerShell document's.
    let plugin = if windows {
        "awsrunPowerShellScript/0.awsrunPowerShellScript"
    } else {
        "awsrunShellScript/0.awsrunshellscript"
    };
    let base = format!("{output_prefix}/{command_id}/{instance_id}/{plugin}");
    let mut got = Vec::new();
    for stream in ["stdout", "stderr"] {
        let key = format!("{base}/{stream}");
        let text = match s3.get_object().bucket(bucket).key(&key).send().await {
            Ok(o) => match o.body.collect().await {
                Ok(b) => Some(String::from_utf8_lossy(&b.into_bytes()).to_string()),
                Err(_) => None,
            },
            // No such stream: the command wrote nothing to it.
            Err(e) if crate::error::error_code(&e) == Some("NoSuchKey") => None,
            Err(e) => {
                tracing::warn!(
                    output = %format!("s3://{bucket}/{key}"),
                    error = %crate::error::classify("GetObject", &key, e),
                    "cannot read the command's whole output (s3:GetObject); showing what SSM kept (24 000 characters)"
                );
                None
            }
        };
        got.push(text);
    }
    // Everything the command wrote goes, whatever the plugin named it: it may print what
    // it was given (revealed values), so what cannot go fails the build, never silently.
    let written = format!("{bucket}/{output_prefix}/{command_id}/");
    remove_revealed(ctx, &cfg.region, &written, "the command's output").await?;
    Ok(match (got[0].take(), got[1].take()) {
        (None, None) => fallback,
        (o, e) => (o.unwrap_or(fallback.0), e.unwrap_or(fallback.1)),
    })
}

/// Waits (at most ~5 s) until ListCommands on `instance` lists `command_id`.
async fn listed(
    client: &aws_sdk_ssm::Client,
    instance: &str,
    command_id: &str,
) -> Result<(), StepError> {
    for attempt in 0..20 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        let commands = commands_on(client, instance, 1).await?;
        if commands.iter().any(|c| c.command_id() == Some(command_id)) {
            return Ok(());
        }
    }
    Err(StepError::Transient(format!(
        "SSM command {command_id} was sent to {instance} but ListCommands does not list it yet"
    )))
}

/// The newest provisioner command this build sent to its instance (the one Provision's
/// `CommandSent` is about), by its comment: what AwaitEvent awaits SSM's event on.
pub async fn newest_command(
    ctx: &Ctx,
    region: &str,
    instance: &str,
    state: &BuildState,
) -> Result<Option<String>, StepError> {
    let commands = commands_on(&ssm(ctx, region), instance, 1).await?;
    Ok(commands
        .iter()
        .filter(|c| {
            c.comment().is_some_and(|s| {
                is_provisioner_command_of(s, &state.state_machine, &state.execution)
            })
        })
        .max_by_key(|c| c.requested_date_time().map(|t| t.as_nanos()).unwrap_or(0))
        .and_then(|c| c.command_id())
        .map(String::from))
}

/// The commands sent to `instance`, up to `pages` pages of 50 (in the order SSM lists them).
pub async fn commands_on(
    client: &aws_sdk_ssm::Client,
    instance: &str,
    pages: usize,
) -> Result<Vec<aws_sdk_ssm::types::Command>, StepError> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..pages {
        let page = client
            .list_commands()
            .instance_id(instance)
            .max_results(50)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| classify("ListCommands", instance, e))?;
        out.extend(page.commands().iter().cloned());
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_a_decision() {
        let out = vec!["last line".to_string()];
        for (s, d) in [
            ("Pending", "Pending"),
            ("InProgress", "In Progress"),
            ("Delayed", "Delayed"),
        ] {
            assert!(
                matches!(decide("p", s, d, 0, &out), Err(StepError::NotReady(_))),
                "{s}"
            );
        }
        assert_eq!(decide("p", "Success", "Success", 0, &out), Ok(()));
        let failed = decide("provisioner 1 (shell)", "Failed", "Failed", 3, &out).unwrap_err();
        assert!(
            matches!(&failed, StepError::BuildFailed(m) if m.contains("exit code 3") && m.contains("last line") && m.contains("provisioner 1 (shell)"))
        );
        let reasons = [
            ("TimedOut", "Execution Timed Out", "while running"),
            (
                "TimedOut",
                "Delivery Timed Out",
                "before the agent picked it up",
            ),
            ("Cancelled", "Canceled", "cancelled"),
            ("Cancelling", "Cancelling", "cancelled"),
            ("Failed", "Undeliverable", "not managed by SSM"),
            ("Undeliverable", "", "not managed by SSM"),
            ("Failed", "Terminated", "terminated"),
            ("Terminated", "", "terminated"),
            ("Weird", "", "unexpected"),
        ];
        for (s, d, word) in reasons {
            match decide("p", s, d, -1, &out) {
                Err(StepError::BuildFailed(m)) => assert!(m.contains(word), "{s}/{d}: {m}"),
                other => panic!("{s}/{d}: {other:?}"),
            }
        }
    }

    #[test]
    fn each_build_of_an_execution_stages_apart() {
        let web = staging_prefix("exec-1", "web", 0);
        let db = staging_prefix("exec-1", "db", 0);
        assert_ne!(
            web, db,
            "parallel builds must not overwrite each other's files"
        );
        assert_eq!(web, "staged/exec-1/web/provision/0/");
        assert_eq!(
            staging_prefix("exec-1", "hcl.amazon-ebs.a b", 2),
            "staged/exec-1/hcl.amazon-ebs.a-b/provision/2/"
        );
    }

    #[test]
    fn comments_round_trip() {
        assert_eq!(index_of(&comment("", "exec-1", 4), "", "exec-1"), Some(4));
        assert_eq!(index_of(&comment("", "exec-1", 4), "", "exec-2"), None);
        // Another stack's execution of the same name is not this one.
        assert_eq!(
            index_of(&comment("sm-a", "exec-1", 4), "sm-b", "exec-1"),
            None
        );
        assert_eq!(
            index_of(&comment("sm-a", "exec-1", 4), "sm-a", "exec-1"),
            Some(4)
        );
        // Names that share the cut are told apart.
        let long = "x".repeat(80);
        let a = comment("sm-a", &format!("{long}a"), 999);
        assert!(a.len() <= 100, "{a}");
        assert_eq!(index_of(&a, "sm-a", &format!("{long}b")), None);
        assert!(comment("sm", &"x".repeat(200), 999).len() <= 100);
    }

    #[test]
    fn compiled_script_checks_valid_exit_codes() {
        let actions = vec![
            Action::Upload {
                data: b"x".to_vec(),
                remote: "/tmp/s.sh".into(),
                mode: 0o755,
                from: "inline".into(),
            },
            Action::Exec {
                command: "/tmp/s.sh".into(),
                check: ExitCheck::Main {
                    valid: vec![0, 2],
                    expect_disconnect: false,
                },
            },
            Action::Exec {
                command: "rm -f /tmp/s.sh".into(),
                check: ExitCheck::Housekeeping,
            },
        ];
        let c = compile("p", &actions, Some("b"), "amiflow/e/provision/0/").unwrap();
        assert_eq!(
            c.staged,
            vec![("amiflow/e/provision/0/0".to_string(), b"x".to_vec())]
        );
        assert!(c
            .script
            .contains("aws s3 cp --only-show-errors s3://b/amiflow/e/provision/0/0 /tmp/s.sh"));
        // Run it for real (with the staging replaced) to prove the exit-code logic.
        for (cmd, want) in [("(exit 2)", 0), ("(exit 3)", 3), ("true", 0)] {
            let actions = vec![Action::Exec {
                command: cmd.into(),
                check: ExitCheck::Main {
                    valid: vec![0, 2],
                    expect_disconnect: false,
                },
            }];
            let c = compile("p", &actions, None, "").unwrap();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(&c.script)
                .status()
                .unwrap();
            assert_eq!(status.code(), Some(want), "{cmd}");
        }
        assert!(compile(
            "p",
            &[Action::Download {
                remote: "/x".into(),
                local: "/y".into(),
                directory: false
            }],
            None,
            ""
        )
        .is_err());
        let binary = vec![Action::Upload {
            data: vec![0, 159, 146, 150],
            remote: "/b".into(),
            mode: 0o644,
            from: "b".into(),
        }];
        assert!(compile("p", &binary, None, "")
            .unwrap_err()
            .contains("ssm_output_s3_bucket"));
        // Without a bucket, a text file is written by a here-document: run it for real.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("motd");
        let text = vec![Action::Upload {
            data: b"it's $HOME\n`x`\n".to_vec(),
            remote: target.display().to_string(),
            mode: 0o600,
            from: "content".into(),
        }];
        let c = compile("p", &text, None, "").unwrap();
        assert!(c.staged.is_empty());
        assert!(std::process::Command::new("sh")
            .arg("-c")
            .arg(&c.script)
            .status()
            .unwrap()
            .success());
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "it's $HOME\n`x`\n"
        );
    }
}
