//! RunHostScript: starts the host script (infra/chroot-host.sh) for this build: mount the
//! attached volume, chroot_mounts, copy_files, the provisioners through command_wrapper,
//! undo. Sent to the host by SSM RunCommand, or run right here when the build runs on the
//! host itself (HostInfo found it by IMDS, or `AMIFLOW_CHROOT_RUN=local`).

use std::process::Stdio;

use amiflow_template::config::chroot::ChrootConfig;
use amiflow_template::BuilderConfig;
use aws_sdk_ssm::types::CloudWatchOutputConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::builders::chroot::{self, HostCommand, DOCUMENT_ENV, HOST_SCRIPT, RUN_MODE_ENV};
use crate::prelude::*;
use crate::provision::Secrets;

pub const SPEC: StepSpec = StepSpec {
    name: "RunHostScript",
    iam_actions: &[
        "ssm:SendCommand",
        "ssm:ListCommands",
        // The build's sensitive variables, revealed in the job (resources/sensitive_var.rs),
        // which then goes to the host through the artifacts bucket (`chroot::staged_job`).
        "ssm:GetParameter",
        "s3:PutObject",
    ],
    // Root on the stack's own build host with its own document, and nowhere else.
    reach: &[
        ("ssm:SendCommand", Reach::BuildHostCommand),
        ("ssm:GetParameter", Reach::SensitiveVars),
    ],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: ListCommands (the look for an earlier send) and SendCommand
/// when the template names the build host ([`sends_to_host`]); nothing when the script runs on
/// this machine. Never s3:PutObject: a job is staged only through the deployed stack's
/// artifacts bucket (a local run whose job holds sensitive values is refused without one).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    match &build.config {
        BuilderConfig::Chroot(c) if sends_to_host(c) => vec!["ssm:ListCommands", "ssm:SendCommand"],
        _ => Vec::new(),
    }
}

/// Whether a local build sends the host script by SSM RunCommand: when the template names the
/// build host (`chroot_host_instance_id` / `chroot_host_filter`). Without one, HostInfo finds
/// this machine by its metadata and the script runs here. The environment can turn either
/// way at run time ([`RUN_MODE_ENV`]: `local` runs a named host's script here, `ssm` sends
/// it to this machine by SSM); what the template asks for is what the policy follows.
pub(crate) fn sends_to_host(cfg: &ChrootConfig) -> bool {
    super::host_info::named_host(cfg).is_some()
}

/// Environment: run this script file instead of the copy built into the binary (local runs).
pub const SCRIPT_ENV: &str = "AMIFLOW_CHROOT_HOST_SCRIPT";
/// The SSM command's execution limit, seconds (AWS-RunShellScript's own default is 1 h).
const EXECUTION_TIMEOUT: &str = "43200";

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = chroot::config(&state)?.clone();
    let region = state.build.config.build_region().to_string();
    let host = chroot::host(&state, "RunHostScript")?;
    let vol = chroot::volume(&state, "RunHostScript")?;
    let files = crate::template_files::TemplateFiles::of(ctx);
    let job = chroot::job(&state, &cfg, &vol, &files, &|t| t.to_string())?;
    // The job as the host must run it: the template's sensitive values in place.
    let revealed = chroot::job(&state, &cfg, &vol, &files, &|t| ctx.secrets.reveal(t))?;
    let local = match std::env::var(RUN_MODE_ENV).as_deref() {
        Ok("local") => true,
        Ok("ssm") => false,
        _ => host.found_by == "imds",
    };
    if local {
        let (exit_code, last_marker) = run_locally(&revealed, &ctx.secrets).await?;
        chroot::set_command(
            &mut state,
            &HostCommand::Local {
                exit_code,
                last_marker,
            },
        );
        return Ok(state);
    }
    let ssm = ctx.ssm(&region);
    let comment = command_comment(&state);
    // A job with revealed secrets goes through S3: SSM keeps a command's parameters.
    let staged = (revealed != job).then(|| chroot::staged_job(&state));
    let staged_url = staged
        .clone()
        .flatten()
        .map(|(bucket, key)| format!("s3://{bucket}/{key}"));
    // A retried invocation (its first answer lost) must not start a second script on the
    // same volume: SendCommand takes no ClientToken, so look for our own command first.
    if let Some(command_id) = sent_before(&ssm, &host.instance_id, &comment).await? {
        tracing::info!(%command_id, "the host script was already sent for this build");
        return Ok(sent(state, command_id, host.instance_id, staged_url));
    }
    let source = match staged {
        None => JobSource::Inline(chroot::b64(job.as_bytes())),
        Some(None) => {
            return Err(StepError::BuildFailed(
                "amazon-chroot: the provisioners use sensitive variables, and an SSM command's parameters stay in \
                 SSM's command history; deployed, the job goes to the host through the stack's artifacts bucket \
                 ($AMIFLOW_ARTIFACTS_BUCKET), which this run does not name. Run the build on the host itself \
                 (AMIFLOW_CHROOT_RUN=local) or from the deployed stack"
                    .into(),
            ))
        }
        Some(Some((bucket, key))) => {
            let url = staged_url.unwrap_or_default();
            ctx.s3(&ctx.own_region())
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .body(revealed.into_bytes().into())
                .send()
                .await
                .map_err(|e| classify("PutObject", &url, e))?;
            JobSource::S3(url)
        }
    };
    let mut req = ssm
        .send_command()
        .instance_ids(&host.instance_id)
        .comment(comment);
    req = match std::env::var(DOCUMENT_ENV) {
        Ok(doc) if !doc.is_empty() => {
            let (job, job_s3) = match &source {
                JobSource::Inline(b64) => (b64.clone(), String::new()),
                JobSource::S3(url) => (String::new(), url.clone()),
            };
            req.document_name(doc)
                .parameters(crate::infra::CHROOT_JOB_PARAMETER, vec![job])
                .parameters(crate::infra::CHROOT_JOB_S3_PARAMETER, vec![job_s3])
        }
        _ => req
            .document_name("AWS-RunShellScript")
            .parameters("commands", vec![inline_command(&source)])
            .parameters("executionTimeout", vec![EXECUTION_TIMEOUT.to_string()]),
    };
    req = req.cloud_watch_output_config(
        CloudWatchOutputConfig::builder()
            .cloud_watch_output_enabled(false)
            .build(),
    );
    let out = req
        .send()
        .await
        .map_err(|e| classify("SendCommand", &host.instance_id, e))?;
    let command_id = out
        .command()
        .and_then(|c| c.command_id())
        .unwrap_or_default()
        .to_string();
    let job_s3 = match source {
        JobSource::S3(url) => Some(url),
        JobSource::Inline(_) => None,
    };
    Ok(sent(state, command_id, host.instance_id, job_s3))
}

/// How the job reaches the host: in the command (base64), or staged in S3 when it carries
/// revealed secrets.
enum JobSource {
    Inline(String),
    S3(String),
}

/// Records the host script's command and starts its wait.
fn sent(
    mut state: BuildState,
    command_id: String,
    instance_id: String,
    job_s3: Option<String>,
) -> BuildState {
    chroot::set_command(
        &mut state,
        &HostCommand::Ssm {
            command_id,
            instance_id,
            job_s3,
        },
    );
    waits::HOST_SCRIPT.begin(&mut state);
    state
}

/// The command's comment: readable in the console, and unique to this build. SSM comments
/// are at most 100 characters, so a long execution name is cut; a hash of the whole name
/// tells executions apart whose names share the cut (the janitor finds an execution's
/// commands by it, [`is_host_script_of`]), and a hash of the build keeps builds apart.
fn command_comment(state: &BuildState) -> String {
    let id = stable_uuid(state, "RunHostScript").simple().to_string();
    format!(
        "{}{id}",
        execution_prefix(&state.state_machine, &state.execution)
    )
}

/// `amiflow chroot <execution, cut to 32> <whose: crate::identity::command_owner> `.
fn execution_prefix(state_machine: &str, execution: &str) -> String {
    let cut: String = execution.chars().take(32).collect();
    let owner = crate::identity::command_owner(state_machine, execution);
    format!("amiflow chroot {cut} {owner} ")
}

/// Whether `comment` is that of one of this execution's host scripts ([`command_comment`]).
pub fn is_host_script_of(comment: &str, state_machine: &str, execution: &str) -> bool {
    comment
        .strip_prefix(&execution_prefix(state_machine, execution))
        .is_some_and(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The id of the command this build already sent to the host, if any. The host runs every
/// chroot build of the account: a few pages of its newest commands reach back far enough.
async fn sent_before(
    ssm: &aws_sdk_ssm::Client,
    instance: &str,
    comment: &str,
) -> Result<Option<String>, StepError> {
    let commands = crate::provision::ssm::commands_on(ssm, instance, 4).await?;
    Ok(commands
        .iter()
        .find(|c| c.comment() == Some(comment))
        .and_then(|c| c.command_id().map(String::from)))
}

/// AWS-RunShellScript's command: the script written to a temporary file, run with the job.
fn inline_command(source: &JobSource) -> String {
    let run = match source {
        JobSource::Inline(job_b64) => format!("bash \"$f\" --job-base64 '{job_b64}'"),
        // The job holds revealed secrets: readable by root only, and gone however the
        // command ends (a cancelled one included).
        JobSource::S3(url) => format!(
            "umask 077; trap 'rm -f \"$f.job\"' EXIT; aws s3 cp --only-show-errors {} \"$f.job\" && bash \"$f\" \"$f.job\"",
            crate::provision::transport::shell_quote(url)
        ),
    };
    format!(
        "f=$(mktemp /tmp/amiflow-chroot-host.XXXXXX) || exit 1\ncat > \"$f\" <<'AMIFLOW_CHROOT_HOST_SCRIPT_END'\n{HOST_SCRIPT}AMIFLOW_CHROOT_HOST_SCRIPT_END\n{run}\nrc=$?\nrm -f \"$f\" \"$f.job\"\nexit $rc\n"
    )
}

/// Runs the host script on this machine; its output goes to this process's stderr as it
/// comes. Returns the exit status and the last `amiflow-chroot:` marker.
async fn run_locally(job: &str, secrets: &Secrets) -> Result<(i32, String), StepError> {
    let (script, _keep) = match std::env::var(SCRIPT_ENV) {
        Ok(p) if !p.is_empty() => (std::path::PathBuf::from(p), None),
        _ => {
            let dir = std::env::temp_dir()
                .join(format!("amiflow-chroot-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).map_err(|e| {
                StepError::BuildFailed(format!(
                    "cannot write the host script under {}: {e}",
                    dir.display()
                ))
            })?;
            let path = dir.join("chroot-host.sh");
            std::fs::write(&path, HOST_SCRIPT).map_err(|e| {
                StepError::BuildFailed(format!("cannot write {}: {e}", path.display()))
            })?;
            (path, Some(TempDir(dir)))
        }
    };
    let mut child = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            StepError::BuildFailed(format!(
                "cannot run the chroot host script {}: {e}",
                script.display()
            ))
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let job = job.to_string();
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(job.as_bytes()).await;
    });
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut errs = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mut last_marker = String::new();
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        tokio::select! {
            l = lines.next_line(), if !out_done => match l {
                Ok(Some(l)) => {
                    let l = secrets.mask(&l);
                    if l.starts_with("amiflow-chroot:") && !l.contains(": cleanup:") && !l.ends_with(": done") && !l.contains("finished with exit") {
                        last_marker = l.clone();
                    }
                    eprintln!("    {l}");
                }
                _ => out_done = true,
            },
            l = errs.next_line(), if !err_done => match l {
                Ok(Some(l)) => eprintln!("    {}", secrets.mask(&l)),
                _ => err_done = true,
            },
        }
    }
    let _ = feed.await;
    let status = child
        .wait()
        .await
        .map_err(|e| StepError::BuildFailed(format!("the chroot host script: {e}")))?;
    let code = status.code().unwrap_or(-1);
    if code != 0 {
        return Err(StepError::BuildFailed(format!(
            "the chroot host script failed (exit {code}): {last_marker}"
        )));
    }
    Ok((code, last_marker))
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn inline_command_carries_the_whole_script() {
        let c = super::inline_command(&super::JobSource::Inline("Sk9C".into()));
        assert!(c.contains(super::HOST_SCRIPT));
        assert!(c.contains("--job-base64 'Sk9C'"));
        assert!(!super::HOST_SCRIPT.contains("AMIFLOW_CHROOT_HOST_SCRIPT_END"));
    }

    #[test]
    fn the_command_comment_fits_ssm_and_tells_builds_apart() {
        let state = |execution: &str| -> crate::BuildState {
            serde_json::from_value(serde_json::json!({"execution": execution, "build": {
                "name": "c", "builder_type": "amazon-chroot",
                "config": {"amazon-chroot": {"region": "us-east-1"}}}}))
            .unwrap()
        };
        let long = "x".repeat(80);
        let a = super::command_comment(&state(&format!("{long}a")));
        let b = super::command_comment(&state(&format!("{long}b")));
        assert!(a.len() <= 100, "{} characters: {a}", a.len());
        assert_ne!(a, b);
        assert_eq!(a, super::command_comment(&state(&format!("{long}a"))));
        assert!(
            super::command_comment(&state("nightly-42")).starts_with("amiflow chroot nightly-42 ")
        );
        assert!(super::is_host_script_of(&a, "", &format!("{long}a")));
        assert!(
            !super::is_host_script_of(&a, "another-stack", &format!("{long}a")),
            "another stack's execution of the same name"
        );
        // Names that share the cut are told apart by the whole name's hash.
        assert!(!super::is_host_script_of(&a, "", &format!("{long}b")));
        assert!(super::is_host_script_of(
            &super::command_comment(&state("nightly-42")),
            "",
            "nightly-42"
        ));
        assert!(!super::is_host_script_of(
            &super::command_comment(&state("nightly-42")),
            "",
            "nightly-4"
        ));
    }

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn the_script_goes_by_ssm_only_to_a_named_host() {
        let chroot = |c: serde_json::Value| super::local_calls(&build("amazon-chroot", c));
        let ssm = vec!["ssm:ListCommands", "ssm:SendCommand"];
        assert_eq!(
            chroot(serde_json::json!({"chroot_host_instance_id": "i-1"})),
            ssm
        );
        assert_eq!(
            chroot(serde_json::json!({"chroot_host_filter": {"filters": {"tag:Role": "host"}}})),
            ssm
        );
        // On this machine (found by its metadata): no SSM.
        assert!(chroot(serde_json::json!({})).is_empty());
        assert!(chroot(serde_json::json!({"chroot_host_instance_id": "", "chroot_host_filter": {"filters": {}}})).is_empty());
    }
}
