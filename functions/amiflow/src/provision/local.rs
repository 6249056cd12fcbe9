//! `shell-local`: runs on the machine running amiflow, as Packer's does. The driver
//! ([`super::run`]) calls it, and refuses it inside Lambda.

use std::process::Stdio;

use tokio::io::AsyncReadExt;

use super::config::{ShellLocalConfig, DEFAULT_ENV_VAR_FORMAT};
use super::plan::{flatten_env_vars, inline_script, PlanEnv};
use super::render::{render, RenderContext, Secrets};
use super::session::failed;
use super::transport::{tail_text, OutputSink};
use crate::StepError;

/// Writes the inline lines to a script, then runs each script with `execute_command`.
/// Errors are not masked yet: the driver masks them.
pub async fn run_shell_local(
    label: &str,
    c: &ShellLocalConfig,
    env: &PlanEnv,
    secrets: &Secrets,
) -> Result<(), StepError> {
    if !c.runs_on(std::env::consts::OS) {
        tracing::info!(provisioner = %label, "skipped: only_on {:?} does not include this system ({})", c.only_on, std::env::consts::OS);
        return Ok(());
    }
    let fail = |msg: String| failed(label, msg);
    let ctx = RenderContext::with_build(&env.build);
    let dir = tempfile::tempdir()
        .map_err(|e| fail(format!("cannot create a temporary directory: {e}")))?;
    let mut scripts = Vec::new();
    if c.command.is_some() || !c.inline.is_empty() {
        let shebang = c.inline_shebang.as_deref().unwrap_or("/bin/sh -e");
        let text = inline_script(shebang, c.command.iter().chain(&c.inline), env).map_err(fail)?;
        let text = secrets.reveal(&text);
        let path = dir.path().join("inline.sh");
        std::fs::write(&path, text)
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
        set_executable(&path);
        scripts.push(path);
    }
    for s in c.script.iter().chain(c.scripts.iter()) {
        scripts.push(env.local_path("script", s).map_err(fail)?);
    }
    let vars = flatten_env_vars(
        &c.environment_vars,
        &c.env,
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
        let revealed: Vec<String> = argv.iter().map(|a| secrets.reveal(a)).collect();
        let shown = secrets.mask(&argv.join(" "));
        tracing::info!(provisioner = %label, "running locally: {shown}");
        let mut child = tokio::process::Command::new(&revealed[0])
            .args(&revealed[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot start `{shown}`: {e}")))?;
        let mut sink = OutputSink::new(label, secrets);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::config::{Kind, Provisioner};

    fn shell_local(only_on: serde_json::Value) -> ShellLocalConfig {
        let p = Provisioner::parse(
            0,
            &serde_json::json!({"type": "shell-local", "inline": ["exit 7"], "only_on": only_on}),
        )
        .unwrap();
        let Kind::ShellLocal(c) = p.kind else {
            panic!()
        };
        c
    }

    #[tokio::test]
    async fn only_on_skips_other_systems_and_runs_on_this_one() {
        let env = PlanEnv::default();
        let secrets = Secrets::new();
        let elsewhere = shell_local(serde_json::json!(["plan9"]));
        run_shell_local("p", &elsewhere, &env, &secrets)
            .await
            .expect("skipped: not this system");
        let here = shell_local(serde_json::json!([std::env::consts::OS]));
        let err = run_shell_local("p", &here, &env, &secrets)
            .await
            .expect_err("runs here, and exit 7 fails");
        assert!(err.message().contains("exit code 7"), "{}", err.message());
    }
}
