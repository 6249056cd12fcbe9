//! WaitHostScript: `NotReady` while the host script's SSM command runs; its failure fails
//! the build with the script's own `FAILED at <step>` line and the output's tail.

use aws_sdk_ssm::types::CommandInvocationStatus;

use crate::builders::chroot::{self, HostCommand};
use crate::prelude::*;
use crate::resources::ssm_command;

pub const SPEC: StepSpec = StepSpec {
    name: "WaitHostScript",
    iam_actions: &[
        "ssm:GetCommandInvocation",
        // Removing the job RunHostScript staged, once the command has ended.
        "s3:DeleteObject",
        // The build's sensitive variables, to mask the script's output (it may print them).
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: Some(waits::HOST_SCRIPT),
    timeout_seconds: 60,
    handler: handler!(run),
};

/// What a local build calls here: GetCommandInvocation when the host script went by SSM
/// ([`super::run_host_script::sends_to_host`]); nothing after a run on this machine. Never
/// s3:DeleteObject: only a deployed build stages the job.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    match &build.config {
        amiflow_template::BuilderConfig::Chroot(c) if super::run_host_script::sends_to_host(c) => {
            vec!["ssm:GetCommandInvocation"]
        }
        _ => Vec::new(),
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let (command_id, instance_id, job_s3) = match chroot::command(&state, "WaitHostScript")? {
        HostCommand::Local { .. } => return Ok(state),
        HostCommand::Ssm {
            command_id,
            instance_id,
            job_s3,
        } => (command_id, instance_id, job_s3),
    };
    let out = match ctx
        .ssm(&region)
        .get_command_invocation()
        .command_id(&command_id)
        .instance_id(&instance_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if ssm_command::not_visible_yet(&e) => {
            return Err(StepError::NotReady(format!(
                "command {command_id} not yet delivered to {instance_id}"
            )));
        }
        Err(e) => return Err(classify("GetCommandInvocation", &command_id, e)),
    };
    let status = out
        .status()
        .cloned()
        .unwrap_or(CommandInvocationStatus::Pending);
    let running = matches!(
        status,
        CommandInvocationStatus::Pending
            | CommandInvocationStatus::InProgress
            | CommandInvocationStatus::Delayed
    );
    if let (false, Some(url)) = (running, &job_s3) {
        remove_staged_job(ctx, url).await?;
    }
    match status {
        CommandInvocationStatus::Success => {
            waits::HOST_SCRIPT.end(&mut state);
            Ok(state)
        }
        CommandInvocationStatus::Pending
        | CommandInvocationStatus::InProgress
        | CommandInvocationStatus::Delayed => Err(StepError::NotReady(format!(
            "the host script runs on {instance_id} (command {command_id})"
        ))),
        other => {
            let stdout = out.standard_output_content().unwrap_or("");
            let failed = stdout
                .lines()
                .rev()
                .find(|l| l.contains("amiflow-chroot: FAILED"))
                .unwrap_or("");
            let tail: Vec<&str> = stdout
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let stderr = out.standard_error_content().unwrap_or("");
            // The output may hold a value revealed on the host: masked, as every revealing
            // step's is.
            Err(StepError::BuildFailed(ctx.secrets.mask(&format!(
                "the chroot host script on {instance_id} ended {} (exit {}): {failed}\n{}\n{}",
                other.as_str(),
                out.response_code(),
                tail.join("\n"),
                stderr
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            ))))
        }
    }
}

/// The job RunHostScript staged (revealed secrets): gone once the host has read it.
async fn remove_staged_job(ctx: &Ctx, url: &str) -> Result<(), StepError> {
    let Some((bucket, key)) = crate::resources::s3::split_url(url) else {
        return Ok(());
    };
    ctx.s3(&ctx.own_region())
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| classify("DeleteObject", url, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn only_an_ssm_command_is_polled() {
        let named = local_calls(&build(
            "amazon-chroot",
            serde_json::json!({"chroot_host_instance_id": "i-1"}),
        ));
        assert_eq!(named, vec!["ssm:GetCommandInvocation"]);
        assert!(local_calls(&build("amazon-chroot", serde_json::json!({}))).is_empty());
    }
}
