//! `shell-local`: runs on the machine running amiflow, as Packer's does.
//!
//! Refused inside Lambda: the "local machine" there is a throwaway sandbox the template's
//! author never sees, so a command meant for their workstation or CI runner would silently do
//! the wrong thing.

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use super::config::{ShellLocalConfig, DEFAULT_ENV_VAR_FORMAT};
use super::plan::{flatten_env_vars, PlanEnv};
use super::render::{render, RenderContext};
use super::run::{tail_text, RunOptions};
use super::transport::OutputSink;
use crate::StepError;

pub async fn run_shell_local(
    label: &str,
    c: &ShellLocalConfig,
    env: &PlanEnv,
    opts: &RunOptions,
) -> Result<(), StepError> {
    let fail = |msg: String| StepError::BuildFailed(opts.secrets.mask(&format!("{label}: {msg}")));
    if opts.in_lambda {
        return Err(fail(
            "shell-local provisioners cannot run inside Lambda (there is no local machine of yours there); \
             run this template with `amiflow build` on your machine, or limit the provisioner with \"only\"/\"except\""
                .into(),
        ));
    }
    let ctx = RenderContext::with_build(&env.build);
    let dir = tempfile::tempdir()
        .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
    let mut scripts = Vec::new();
    let inline: Vec<String> = c
        .command
        .iter()
        .cloned()
        .chain(c.inline.iter().cloned())
        .collect();
    if !inline.is_empty() {
        let mut text = format!(
            "#!{}\n",
            c.inline_shebang.as_deref().unwrap_or("/bin/sh -e")
        );
        for line in &inline {
            text.push_str(
                &opts
                    .secrets
                    .reveal(&render(line, &ctx).map_err(|e| fail(format!("inline: {e}")))?),
            );
            text.push('\n');
        }
        let path = dir.path().join("inline.sh");
        std::fs::write(&path, text)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
        set_executable(&path);
        scripts.push(path);
    }
    for s in c.script.iter().chain(c.scripts.iter()) {
        scripts.push(env.local_path(s));
    }
    let vars = flatten_env_vars(
        &c.environment_vars,
        c.env_var_format
            .as_deref()
            .unwrap_or(DEFAULT_ENV_VAR_FORMAT),
        env,
    )
    .map_err(fail)?;
    let valid = c.valid_exit_codes();
    for script in scripts {
        let script_str = script.display().to_string();
        let argv: Vec<String> = c
            .execute_command()
            .iter()
            .map(|a| {
                render(
                    a,
                    &ctx.clone()
                        .set("Vars", vars.clone())
                        .set("Script", script_str.clone())
                        .set("Command", script_str.clone()),
                )
            })
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("execute_command: {e}")))?;
        let revealed: Vec<String> = argv.iter().map(|a| opts.secrets.reveal(a)).collect();
        let shown = opts.secrets.mask(&argv.join(" "));
        tracing::info!(provisioner = %label, "running locally: {shown}");
        let mut child = tokio::process::Command::new(&revealed[0])
            .args(&revealed[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start `{shown}`: {e}")))?;
        let mut sink = OutputSink::new(label, &opts.secrets);
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (mut out_buf, mut err_buf) = ([0u8; 4096], [0u8; 4096]);
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = stdout.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => sink.push(false, &out_buf[..n]),
                },
                n = stderr.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => sink.push(true, &err_buf[..n]),
                },
            }
        }
        sink.finish();
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("waiting for `{shown}`: {e}")))?;
        let code = status.code().map(i64::from);
        if !code.is_some_and(|c| valid.contains(&c)) {
            let how = code
                .map(|c| format!("exit code {c}"))
                .unwrap_or_else(|| "killed by a signal".into());
            return Err(fail(format!(
                "`{shown}` failed: {how} (valid exit codes: {valid:?}){}",
                tail_text(&sink.tail())
            )));
        }
    }
    Ok(())
}

fn set_executable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
}
