//! Runs provisioners in order over a [`Transport`] (SSH) or locally (`shell-local`), with
//! Packer's `pause_before`, `pause_after`, `max_retries` and `timeout`, and an invocation
//! deadline.
//!
//! Inside Lambda an SSH provisioning must finish within one invocation (at most 15
//! minutes, less what the step already spent): the connection cannot outlive it. When the
//! deadline would be passed the build fails with that explanation rather than being killed
//! silently by Lambda; long provisioning belongs to `communicator: "ssm"` (no Lambda runs
//! while its command runs) or to a local `amiflow build`.

use std::time::Duration;

use tokio::time::Instant;

use super::config::{Kind, Provisioner};
use super::local;
use super::plan::{plan, Action, ExitCheck, PlanEnv};
use super::render::Secrets;
use super::transport::{ExecStatus, OutputSink, Transport};
use crate::StepError;

/// Time kept back before the deadline to report the failure and let the state machine catch it.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub secrets: Secrets,
    /// When the current invocation must have returned (Lambda's deadline), if any.
    pub deadline: Option<Instant>,
    /// Running inside Lambda: `shell-local` is refused there.
    pub in_lambda: bool,
}

impl RunOptions {
    fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .saturating_sub(DEADLINE_MARGIN)
        })
    }
}

fn lambda_limit_message(label: &str) -> String {
    format!(
        "{label} did not finish before this Lambda invocation's deadline. Over SSH the whole \
         provisioning must run within one invocation (Lambda allows at most 15 minutes). Use \
         \"communicator\": \"ssm\" for long provisioning (no Lambda runs while the command runs), \
         split the work, or run the build locally with `amiflow build`."
    )
}

/// Runs every provisioner in order; the first failure stops the build.
pub async fn run_all<T: Transport>(
    transport: &mut T,
    provisioners: &[Provisioner],
    env: &PlanEnv,
    opts: &RunOptions,
) -> Result<(), StepError> {
    for p in provisioners {
        run_one(transport, p, env, opts).await?;
    }
    Ok(())
}

/// One provisioner, with its pause, retries and time limits.
pub async fn run_one<T: Transport>(
    transport: &mut T,
    p: &Provisioner,
    env: &PlanEnv,
    opts: &RunOptions,
) -> Result<(), StepError> {
    let label = p.label();
    if let Some(pause) = p.common.pause_before {
        if opts.remaining().is_some_and(|r| r < pause) {
            return Err(StepError::BuildFailed(lambda_limit_message(&label)));
        }
        tracing::info!(provisioner = %label, "pausing {pause:?} before running (pause_before)");
        tokio::time::sleep(pause).await;
    }
    let attempts = p.common.max_retries + 1;
    let mut last = None;
    for attempt in 1..=attempts {
        tracing::info!(provisioner = %label, attempt, "running");
        let limit = match (p.common.timeout, opts.remaining()) {
            (Some(t), Some(r)) => Some((t.min(r), r < t)),
            (Some(t), None) => Some((t, false)),
            (None, Some(r)) => Some((r, true)),
            (None, None) => None,
        };
        let result = match limit {
            None => attempt_once(transport, p, env, opts).await,
            Some((limit, is_deadline)) => {
                match tokio::time::timeout(limit, attempt_once(transport, p, env, opts)).await {
                    Ok(r) => r,
                    Err(_) if is_deadline => {
                        return Err(StepError::BuildFailed(lambda_limit_message(&label)))
                    }
                    Err(_) => Err(StepError::BuildFailed(format!(
                        "{label} timed out after {limit:?} (its \"timeout\")"
                    ))),
                }
            }
        };
        match result {
            Ok(()) => return pause_after(p, &label, opts).await,
            Err(e) => {
                if attempt < attempts {
                    tracing::warn!(provisioner = %label, attempt, "failed, retrying (max_retries {}): {}", p.common.max_retries, e.message());
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Packer's shell `pause_after`: once the provisioner has succeeded, wait before the next.
async fn pause_after(p: &Provisioner, label: &str, opts: &RunOptions) -> Result<(), StepError> {
    let Kind::Shell(c) = &p.kind else {
        return Ok(());
    };
    let Some(pause) = c.pause_after() else {
        return Ok(());
    };
    if opts.remaining().is_some_and(|r| r < pause) {
        return Err(StepError::BuildFailed(lambda_limit_message(label)));
    }
    tracing::info!(provisioner = %label, "pausing {pause:?} after running (pause_after)");
    tokio::time::sleep(pause).await;
    Ok(())
}

async fn attempt_once<T: Transport>(
    transport: &mut T,
    p: &Provisioner,
    env: &PlanEnv,
    opts: &RunOptions,
) -> Result<(), StepError> {
    let label = p.label();
    if let Kind::ShellLocal(c) = &p.kind {
        return local::run_shell_local(&label, c, env, opts).await;
    }
    let actions = plan(p, env)
        .map_err(|e| StepError::BuildFailed(opts.secrets.mask(&format!("{label}: {e}"))))?;
    let fail = |msg: String| StepError::BuildFailed(opts.secrets.mask(&format!("{label}: {msg}")));
    let mut reconnect = false;
    let mut actions = actions.into_iter().peekable();
    while let Some(action) = actions.next() {
        if reconnect {
            tracing::info!(provisioner = %label, "reconnecting after the expected disconnect");
            transport.reconnect().await.map_err(|e| {
                fail(format!(
                    "could not reconnect after the expected disconnect: {e}"
                ))
            })?;
            reconnect = false;
        }
        match action {
            Action::Mkdir { path } => transport.mkdir_all(&path).await.map_err(|e| fail(e.0))?,
            Action::Upload {
                data,
                remote,
                mode,
                from,
            } => {
                tracing::info!(provisioner = %label, "uploading {from} to {remote}");
                transport
                    .upload(&opts.secrets.reveal_bytes(&data), &remote, mode)
                    .await
                    .map_err(|e| fail(e.0))?
            }
            Action::Download {
                remote,
                local,
                directory,
            } => download(transport, &remote, &local, directory)
                .await
                .map_err(fail)?,
            Action::Exec { command, check } => {
                let shown = opts.secrets.mask(&command);
                let revealed = opts.secrets.reveal(&command);
                let mut sink = OutputSink::new(&label, &opts.secrets);
                let status = transport
                    .exec(&revealed, &mut sink)
                    .await
                    .map_err(|e| fail(format!("running `{shown}`: {}", e.0)))?;
                match (&check, &status) {
                    (
                        ExitCheck::Main {
                            expect_disconnect: true,
                            ..
                        },
                        ExecStatus::Disconnected,
                    ) => {
                        tracing::info!(provisioner = %label, "the command disconnected, as expect_disconnect allows");
                        reconnect = true;
                    }
                    (ExitCheck::Main { valid, .. }, ExecStatus::Exited(code))
                        if valid.contains(code) => {}
                    (ExitCheck::Housekeeping, ExecStatus::Exited(0)) => {}
                    (ExitCheck::Main { valid, .. }, _) => {
                        // The connection is still up after a plain non-zero exit: remove the
                        // uploaded script anyway, so a failed build on a long-lived host (or a
                        // retry) leaves no stale copy behind. Its own failure is secondary.
                        if let (
                            ExecStatus::Exited(_),
                            Some(Action::Exec {
                                command,
                                check: ExitCheck::Housekeeping,
                            }),
                        ) = (&status, actions.peek())
                        {
                            let mut quiet = OutputSink::new(&label, &opts.secrets);
                            if let Err(e) = transport.exec(command, &mut quiet).await {
                                tracing::warn!(provisioner = %label, "could not remove the script after its failure: {}", e.0);
                            }
                        }
                        return Err(fail(format!(
                            "`{shown}` failed: {status} (valid exit codes: {valid:?}){}",
                            tail_text(&sink.tail())
                        )));
                    }
                    (ExitCheck::Housekeeping, _) => {
                        return Err(fail(format!(
                            "cleaning up with `{shown}` failed: {status}{}",
                            tail_text(&sink.tail())
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

/// `\nLast output:\n  line…` or nothing.
pub fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(". Last output:\n  {}", tail.join("\n  "))
    }
}

async fn download<T: Transport>(
    transport: &mut T,
    remote: &str,
    local: &std::path::Path,
    directory: bool,
) -> Result<(), String> {
    let write = |path: &std::path::Path, data: &[u8]| -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if directory {
        for rel in transport.list_files(remote).await.map_err(|e| e.0)? {
            let data = transport
                .download(&format!("{}/{rel}", remote.trim_end_matches('/')))
                .await
                .map_err(|e| e.0)?;
            write(&local.join(&rel), &data)?;
        }
        Ok(())
    } else {
        let data = transport.download(remote).await.map_err(|e| e.0)?;
        write(local, &data)
    }
}

/// The transport of `communicator: "none"`: only `shell-local` provisioners can run.
pub struct NoTransport;

fn no_communicator<T>() -> Result<T, super::transport::TransportError> {
    Err(super::transport::TransportError(
        "the build has \"communicator\": \"none\", so nothing can run on the instance; use \"ssh\" or \"ssm\"".into(),
    ))
}

impl Transport for NoTransport {
    async fn exec(
        &mut self,
        _: &str,
        _: &mut OutputSink,
    ) -> Result<ExecStatus, super::transport::TransportError> {
        no_communicator()
    }
    async fn upload(
        &mut self,
        _: &[u8],
        _: &str,
        _: u32,
    ) -> Result<(), super::transport::TransportError> {
        no_communicator()
    }
    async fn mkdir_all(&mut self, _: &str) -> Result<(), super::transport::TransportError> {
        no_communicator()
    }
    async fn download(&mut self, _: &str) -> Result<Vec<u8>, super::transport::TransportError> {
        no_communicator()
    }
    async fn list_files(
        &mut self,
        _: &str,
    ) -> Result<Vec<String>, super::transport::TransportError> {
        no_communicator()
    }
    async fn reconnect(&mut self) -> Result<(), super::transport::TransportError> {
        no_communicator()
    }
}

tokio::task_local! {
    /// The current Lambda invocation's deadline (epoch milliseconds, the Runtime API's
    /// `Lambda-Runtime-Deadline-Ms`), set by the Lambda binary around each invocation.
    /// A task-local rather than a process variable: setting the environment while other
    /// threads read it is unsound, and the value changes with every invocation.
    pub static INVOCATION_DEADLINE_MS: i64;
}

/// Lambda's invocation deadline: the task-local the Lambda binary sets for the invocation,
/// else `AMIFLOW_DEADLINE_MS` (epoch milliseconds) from the environment; None outside Lambda.
pub fn deadline_from_env() -> Option<Instant> {
    let ms: i64 = match INVOCATION_DEADLINE_MS.try_with(|ms| *ms) {
        Ok(ms) => ms,
        Err(_) => std::env::var(DEADLINE_ENV).ok()?.parse().ok()?,
    };
    let left = ms - chrono::Utc::now().timestamp_millis();
    Some(Instant::now() + Duration::from_millis(left.max(0) as u64))
}

pub const DEADLINE_ENV: &str = "AMIFLOW_DEADLINE_MS";

/// Whether this process is a Lambda function.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::transport::TransportError;
    use serde_json::json;

    /// Records when each command ran; every command exits 0.
    #[derive(Default)]
    struct Recorder {
        ran: Vec<(String, Instant)>,
    }

    impl Transport for Recorder {
        async fn exec(
            &mut self,
            c: &str,
            _: &mut OutputSink,
        ) -> Result<ExecStatus, TransportError> {
            self.ran.push((c.to_string(), Instant::now()));
            Ok(ExecStatus::Exited(0))
        }
        async fn upload(&mut self, _: &[u8], _: &str, _: u32) -> Result<(), TransportError> {
            Ok(())
        }
        async fn mkdir_all(&mut self, _: &str) -> Result<(), TransportError> {
            Ok(())
        }
        async fn download(&mut self, _: &str) -> Result<Vec<u8>, TransportError> {
            Ok(Vec::new())
        }
        async fn list_files(&mut self, _: &str) -> Result<Vec<String>, TransportError> {
            Ok(Vec::new())
        }
        async fn reconnect(&mut self) -> Result<(), TransportError> {
            Ok(())
        }
    }

    fn provisioners(pause_after: &str) -> Vec<Provisioner> {
        vec![
            Provisioner::parse(0, &json!({"type": "shell", "inline": ["first"], "pause_after": pause_after, "skip_clean": true})).unwrap(),
            Provisioner::parse(1, &json!({"type": "shell", "inline": ["second"], "skip_clean": true})).unwrap(),
        ]
    }

    #[tokio::test]
    async fn pause_after_waits_between_a_successful_shell_and_the_next() {
        let mut t = Recorder::default();
        run_all(
            &mut t,
            &provisioners("300ms"),
            &PlanEnv::default(),
            &RunOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(t.ran.len(), 2, "{:?}", t.ran);
        let gap = t.ran[1].1 - t.ran[0].1;
        assert!(
            gap >= Duration::from_millis(300),
            "second ran {gap:?} after the first"
        );
    }

    #[tokio::test]
    async fn pause_after_past_the_invocation_deadline_fails_at_once() {
        let mut t = Recorder::default();
        let opts = RunOptions {
            deadline: Some(Instant::now() + DEADLINE_MARGIN + Duration::from_secs(2)),
            ..Default::default()
        };
        let started = Instant::now();
        let err = run_all(&mut t, &provisioners("10m"), &PlanEnv::default(), &opts)
            .await
            .unwrap_err();
        assert!(err.message().contains("deadline"), "{err}");
        assert_eq!(t.ran.len(), 1, "the next provisioner never ran");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "it did not sleep first"
        );
    }
}
