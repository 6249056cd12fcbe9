//! The driver: runs a build's provisioners in order over a [`Session`], with Packer's
//! `pause_before`, `pause_after`, `max_retries` and `timeout` and the invocation deadline,
//! and runs `shell-local` on this machine. Every error it returns is masked.
//!
//! Inside Lambda an SSH provisioning must finish within one invocation (at most 15
//! minutes, less what the step already spent): the connection cannot outlive it. When the
//! deadline would be passed the build fails with that explanation rather than being killed
//! silently by Lambda; long provisioning belongs to `communicator: "ssm"` (no Lambda runs
//! while its command runs) or to a local `amiflow build`.

use std::time::Duration;

use tokio::time::Instant;

use super::config::{Kind, Provisioner};
use super::local::run_shell_local;
use super::session::{failed, Progress, RunOptions, Session};
use crate::StepError;

/// Time kept back before the deadline to report the failure and let the state machine catch it.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// Runs the provisioners from where the session says the build is; the first failure stops
/// the build, a provisioner still running elsewhere (SSM) ends the invocation with `NotReady`.
pub async fn run_all<S: Session>(
    session: &mut S,
    provisioners: &[Provisioner],
    opts: &RunOptions,
) -> Result<(), StepError> {
    let first = session.resume(provisioners).await?;
    for (index, p) in provisioners.iter().enumerate().skip(first) {
        let within_invocation = S::WITHIN_INVOCATION || matches!(p.kind, Kind::ShellLocal(_));
        let progress = if within_invocation {
            run_one(session, index, p, opts).await
        } else {
            session.advance(index, p, opts).await
        };
        match progress
            .map_err(|e| StepError::from_name(e.name(), opts.secrets.mask(e.message())))?
        {
            Progress::Done => {}
            Progress::Pending(reason) => {
                return Err(StepError::NotReady(opts.secrets.mask(&reason)))
            }
            Progress::Sent(reason) => {
                return Err(StepError::CommandSent(opts.secrets.mask(&reason)))
            }
        }
    }
    Ok(())
}

/// One provisioner that runs within the invocation, with its pauses, retries and time limits.
async fn run_one<S: Session>(
    session: &mut S,
    index: usize,
    p: &Provisioner,
    opts: &RunOptions,
) -> Result<Progress, StepError> {
    let label = p.label();
    if let Some(pause) = p.common.pause_before {
        pause_within_deadline(&label, pause, "before running (pause_before)", opts).await?;
    }
    let attempts = p.common.max_retries + 1;
    let mut last = None;
    for attempt in 1..=attempts {
        tracing::info!(provisioner = %label, attempt, "running");
        let remaining = remaining(opts);
        let limit = match (p.common.timeout, remaining) {
            (Some(t), Some(r)) => Some((t.min(r), r < t)),
            (Some(t), None) => Some((t, false)),
            (None, Some(r)) => Some((r, true)),
            (None, None) => None,
        };
        let result = match limit {
            None => attempt_once(session, index, p, opts).await,
            Some((limit, is_deadline)) => {
                match tokio::time::timeout(limit, attempt_once(session, index, p, opts)).await {
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
            Ok(Progress::Done) => {
                if let Some(pause) = pause_after(p) {
                    pause_within_deadline(&label, pause, "after running (pause_after)", opts)
                        .await?;
                }
                return Ok(Progress::Done);
            }
            Ok(pending) => return Ok(pending),
            Err(e) => {
                if attempt < attempts {
                    tracing::warn!(provisioner = %label, attempt, "failed, retrying (max_retries {}): {}", p.common.max_retries, opts.secrets.mask(e.message()));
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

async fn attempt_once<S: Session>(
    session: &mut S,
    index: usize,
    p: &Provisioner,
    opts: &RunOptions,
) -> Result<Progress, StepError> {
    let Kind::ShellLocal(c) = &p.kind else {
        return session.advance(index, p, opts).await;
    };
    let label = p.label();
    if opts.in_lambda {
        // The "local machine" in Lambda is a throwaway sandbox the template's author never
        // sees: a command meant for their workstation or CI runner would silently do the
        // wrong thing there.
        return Err(failed(
            &label,
            "shell-local provisioners cannot run inside Lambda (there is no local machine of yours there); \
             run this template with `amiflow build` on your machine, or limit the provisioner with \"only\"/\"except\"",
        ));
    }
    run_shell_local(&label, c, &opts.env, &opts.secrets).await?;
    Ok(Progress::Done)
}

/// Packer's shell `pause_after`: once the provisioner has succeeded, wait before the next.
fn pause_after(p: &Provisioner) -> Option<Duration> {
    match &p.kind {
        Kind::Shell(c) => c.pause_after(),
        _ => None,
    }
}

/// Sleeps `pause`, unless the invocation's deadline comes first: then the build fails now.
async fn pause_within_deadline(
    label: &str,
    pause: Duration,
    when: &str,
    opts: &RunOptions,
) -> Result<(), StepError> {
    if remaining(opts).is_some_and(|r| r < pause) {
        return Err(StepError::BuildFailed(lambda_limit_message(label)));
    }
    tracing::info!(provisioner = %label, "pausing {pause:?} {when}");
    tokio::time::sleep(pause).await;
    Ok(())
}

/// The time left in this invocation, less [`DEADLINE_MARGIN`]; None outside Lambda.
fn remaining(opts: &RunOptions) -> Option<Duration> {
    opts.deadline.map(|d| {
        d.saturating_duration_since(Instant::now())
            .saturating_sub(DEADLINE_MARGIN)
    })
}

fn lambda_limit_message(label: &str) -> String {
    format!(
        "{label} did not finish before this Lambda invocation's deadline. Over SSH the whole \
         provisioning must run within one invocation (Lambda allows at most 15 minutes). Use \
         \"communicator\": \"ssm\" for long provisioning (no Lambda runs while the command runs), \
         split the work, or run the build locally with `amiflow build`."
    )
}

/// Whether this process is a Lambda function, from its environment. Steps have
/// `Ctx::in_lambda`, set by the Lambda binary; this remains for the code that has no `Ctx`
/// at hand.
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Records when each provisioner ran; every one succeeds.
    #[derive(Default)]
    struct Recorder {
        ran: Vec<(usize, Instant)>,
    }

    impl Session for Recorder {
        const WITHIN_INVOCATION: bool = true;

        async fn advance(
            &mut self,
            index: usize,
            _: &Provisioner,
            _: &RunOptions,
        ) -> Result<Progress, StepError> {
            self.ran.push((index, Instant::now()));
            Ok(Progress::Done)
        }
    }

    /// A detached session (as SSM's): provisioner 0 finished in an earlier invocation,
    /// provisioner 1 is running elsewhere, or has failed.
    struct Detached {
        advanced: Vec<usize>,
        failed: bool,
    }

    impl Session for Detached {
        const WITHIN_INVOCATION: bool = false;

        async fn resume(&mut self, _: &[Provisioner]) -> Result<usize, StepError> {
            Ok(1)
        }

        async fn advance(
            &mut self,
            index: usize,
            p: &Provisioner,
            _: &RunOptions,
        ) -> Result<Progress, StepError> {
            self.advanced.push(index);
            if self.failed {
                Err(failed(&p.label(), "exit code 3"))
            } else {
                Ok(Progress::Pending(format!("{}: still running", p.label())))
            }
        }
    }

    #[tokio::test]
    async fn a_detached_session_resumes_and_is_neither_paused_nor_retried() {
        let provisioners = vec![
            Provisioner::parse(0, &json!({"type": "shell", "inline": ["first"]})).unwrap(),
            Provisioner::parse(1, &json!({"type": "shell", "inline": ["second"], "pause_before": "10m", "max_retries": 2})).unwrap(),
        ];
        let mut running = Detached {
            advanced: Vec::new(),
            failed: false,
        };
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            run_all(&mut running, &provisioners, &RunOptions::default()),
        )
        .await
        .expect("no pause_before: the command runs elsewhere")
        .unwrap_err();
        assert!(
            matches!(&err, StepError::NotReady(m) if m == "provisioner 1 (shell): still running"),
            "{err:?}"
        );
        assert_eq!(running.advanced, vec![1], "provisioner 0 is behind");
        let mut failing = Detached {
            advanced: Vec::new(),
            failed: true,
        };
        let err = run_all(&mut failing, &provisioners, &RunOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StepError::BuildFailed(m) if m.contains("exit code 3")),
            "{err:?}"
        );
        assert_eq!(failing.advanced, vec![1], "sent once, not retried");
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
        run_all(&mut t, &provisioners("300ms"), &RunOptions::default())
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
        let err = run_all(&mut t, &provisioners("10m"), &opts)
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
