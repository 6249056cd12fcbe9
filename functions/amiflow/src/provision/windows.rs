//! Windows provisioners over SSM: `powershell`, `windows-shell`, `windows-restart`, and
//! `file` uploads on a Windows build, each compiled to one PowerShell script that
//! `AWS-RunPowerShellScript` runs as LocalSystem (already elevated, so Packer's
//! `elevated_user` needs no scheduled task). No WinRM port is opened and no password is
//! read: every AWS Windows AMI runs the SSM agent.
//!
//! Files reach the instance as in [`super::ssm`]: staged in S3 (`ssm_output_s3_bucket`) and
//! fetched with `Copy-S3Object` (AWS Tools for PowerShell, on every AWS Windows AMI), or,
//! without a bucket, small text inside the command as a here-string.
//!
//! `windows-restart` uses the agent's own reboot protocol: the command exits 3010, the agent
//! restarts Windows and runs the command again once it is back; a marker file tells the
//! second run to run `restart_check_command` and finish. The command stays in progress
//! throughout, so Provision's wait covers the restart; `restart_timeout` bounds it.

use super::config::{Kind, Provisioner};
use super::plan::{flatten_env_vars, inline_script, PlanEnv};
use super::render::render;
use super::ssm::Compiled;
use amiflow_template::provisioner::{PowerShellConfig, WindowsRestartConfig, WindowsShellConfig};

/// The document Windows provisioners run with.
pub const DOCUMENT: &str = crate::resources::ssm_command::POWERSHELL_DOCUMENT;

/// The exit code that asks the SSM agent to restart Windows and run the command again.
pub const AGENT_REBOOT: i64 = 3010;

/// Where scripts go on the instance unless `remote_path` says otherwise.
const TEMP: &str = "C:/Windows/Temp";

/// A PowerShell single-quoted string: nothing in it is expanded; `'` is doubled.
pub fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The script that writes `data` to `remote` on the instance: from S3 with a bucket, else
/// inline when it is text that fits.
fn write_file(
    data: &[u8],
    remote: &str,
    from: &str,
    bucket: Option<&str>,
    prefix: &str,
    staged: &mut Vec<(String, Vec<u8>)>,
) -> Result<String, String> {
    let dir = format!(
        "New-Item -ItemType Directory -Force -Path (Split-Path -Parent {}) | Out-Null\n",
        ps_quote(remote)
    );
    if let Some(bucket) = bucket {
        let key = format!("{prefix}{}", staged.len());
        staged.push((key.clone(), data.to_vec()));
        return Ok(format!(
            "{dir}Copy-S3Object -BucketName {} -Key {} -LocalFile {} | Out-Null\n",
            ps_quote(bucket),
            ps_quote(&key),
            ps_quote(remote)
        ));
    }
    let text = std::str::from_utf8(data)
        .ok()
        .filter(|t| t.len() <= 16 * 1024 && !t.lines().any(|l| l.starts_with("'@")));
    let Some(text) = text else {
        return Err(format!(
            "uploading {from} over SSM needs a staging bucket (binary or large file): \
             set \"ssm_output_s3_bucket\" in the builder"
        ));
    };
    // A here-string's last line break is not part of it; the file keeps its own.
    Ok(format!(
        "{dir}Set-Content -LiteralPath {} -NoNewline -Encoding UTF8 -Value @'\n{text}\n'@\n",
        ps_quote(remote)
    ))
}

/// Runs `run` (which leaves the exit code in `$rc`) and fails the command unless the code
/// is one of `valid`. A failing 3010 becomes 1: the agent would take 3010 as "restart me".
fn checked(label: &str, run: &str, valid: &[i64]) -> String {
    let codes: Vec<String> = valid.iter().map(i64::to_string).collect();
    let label = label.replace('\'', "''");
    format!(
        "{run}\nif (@({}) -notcontains $rc) {{\n  [Console]::Error.WriteLine(\"amiflow: {label} exited with $rc\")\n  \
         if ($rc -eq {AGENT_REBOOT}) {{ [Console]::Error.WriteLine('amiflow: 3010 asks for a restart: add it to valid_exit_codes and follow with a windows-restart provisioner'); exit 1 }}\n  exit $rc\n}}\n",
        codes.join(",")
    )
}

/// `$env:NAME = 'value'` for Packer's variables (PACKER_BUILD_NAME, PACKER_BUILDER_TYPE,
/// `environment_vars`, `env`): set in the command's session, so the script's process
/// inherits them.
fn env_lines(
    vars: &[String],
    env_map: &std::collections::BTreeMap<String, String>,
    env: &PlanEnv,
) -> Result<String, String> {
    // The one flattening of Packer's variables, in a format that cannot be confused:
    // NAME, a unit separator, the value, a record separator.
    let flat = flatten_env_vars(vars, env_map, "%s\u{1f}%s\u{1e}", env)?;
    let mut out = String::new();
    for record in flat.split('\u{1e}').filter(|r| !r.is_empty()) {
        let (k, v) = record.split_once('\u{1f}').unwrap_or((record, ""));
        // flatten_env_vars escapes quotes for sh; undo it for PowerShell's own quoting.
        let v = v.replace("'\"'\"'", "'");
        out.push_str(&format!("$env:{k} = {}\n", ps_quote(&v)));
    }
    Ok(out)
}

/// The scripts a `powershell` or `windows-shell` provisioner runs: inline lines as one
/// script, then each file.
fn scripts(
    inline: &[String],
    script: &Option<String>,
    list: &[String],
    env: &PlanEnv,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    if !inline.is_empty() {
        let text = inline_script("", inline, env)?;
        // inline_script starts with a shebang line ("#!"); Windows scripts have none.
        let text = text
            .strip_prefix("#!\n")
            .unwrap_or(&text)
            .replace('\n', "\r\n");
        out.push(("inline script".to_string(), text.into_bytes()));
    }
    for s in script.iter().chain(list) {
        let path = env.local_path("script", s)?;
        let data = std::fs::read(&path)
            .map_err(|e| format!("script {s:?}: cannot read {} ({e})", path.display()))?;
        out.push((s.clone(), data));
    }
    Ok(out)
}

fn remote_path(
    given: &Option<String>,
    random: &str,
    n: usize,
    ext: &str,
    env: &PlanEnv,
) -> Result<String, String> {
    match given {
        Some(p) => render(p, &env.ctx()).map_err(|e| format!("remote_path: {e}")),
        None => Ok(format!("{TEMP}/amiflow-{random}-{n}.{ext}")),
    }
}

/// A Windows provisioner that runs scripts (`powershell`, `windows-shell`): its scripts,
/// variables, where they go and how each is run.
struct ScriptRun<'a> {
    inline: &'a [String],
    script: &'a Option<String>,
    scripts: &'a [String],
    environment_vars: &'a [String],
    env: &'a std::collections::BTreeMap<String, String>,
    remote_path: &'a Option<String>,
    ext: &'static str,
    /// Put before each script's text (powershell's `debug_mode`).
    prelude: String,
    /// The command that runs the quoted script path given to it.
    runner: Box<dyn Fn(&str) -> String + 'a>,
    valid: Vec<i64>,
    clean: bool,
}

fn run_scripts(
    label: &str,
    index: usize,
    run: ScriptRun,
    env: &PlanEnv,
    bucket: Option<&str>,
    prefix: &str,
    staged: &mut Vec<(String, Vec<u8>)>,
) -> Result<String, String> {
    let mut out = env_lines(run.environment_vars, run.env, env)?;
    let random = format!("{}_{index}", env.random);
    for (n, (from, data)) in scripts(run.inline, run.script, run.scripts, env)?
        .into_iter()
        .enumerate()
    {
        let mut text = run.prelude.clone().into_bytes();
        text.extend(data);
        let remote = remote_path(run.remote_path, &random, n, run.ext, env)?;
        out.push_str(&write_file(&text, &remote, &from, bucket, prefix, staged)?);
        let command = format!(
            "{}\n$rc = $LASTEXITCODE; if ($null -eq $rc) {{ $rc = 0 }}",
            (run.runner)(&ps_quote(&remote))
        );
        out.push_str(&checked(label, &command, &run.valid));
        if run.clean {
            out.push_str(&format!(
                "Remove-Item -LiteralPath {} -Force\n",
                ps_quote(&remote)
            ));
        }
    }
    Ok(out)
}

fn powershell(c: &PowerShellConfig) -> ScriptRun<'_> {
    let exe = if c.use_pwsh {
        "pwsh.exe"
    } else {
        "powershell.exe"
    };
    let policy = match c.execution_policy().to_ascii_lowercase().as_str() {
        "none" => String::new(),
        p => format!(" -ExecutionPolicy {p}"),
    };
    ScriptRun {
        inline: &c.inline,
        script: &c.script,
        scripts: &c.scripts,
        environment_vars: &c.environment_vars,
        env: &c.env,
        remote_path: &c.remote_path,
        ext: "ps1",
        prelude: if c.debug_mode > 0 {
            format!("Set-PSDebug -Trace {}\r\n", c.debug_mode)
        } else {
            String::new()
        },
        runner: Box::new(move |path| {
            format!("& {exe} -NoProfile -NonInteractive{policy} -File {path}")
        }),
        valid: c.valid_exit_codes(),
        clean: !c.skip_clean,
    }
}

fn windows_shell(c: &WindowsShellConfig) -> ScriptRun<'_> {
    ScriptRun {
        inline: &c.inline,
        script: &c.script,
        scripts: &c.scripts,
        environment_vars: &c.environment_vars,
        env: &c.env,
        remote_path: &c.remote_path,
        ext: "bat",
        prelude: String::new(),
        runner: Box::new(|path| format!("& cmd.exe /c {path}")),
        valid: c.valid_exit_codes(),
        clean: true,
    }
}

/// The marker that tells the second run of a `windows-restart` command that Windows has
/// restarted: one per build and provisioner, stable across Provision's retries.
pub fn restart_marker(env: &PlanEnv, index: usize) -> String {
    format!("{TEMP}/amiflow-restarted-{}_{index}", env.random)
}

fn restart(label: &str, index: usize, c: &WindowsRestartConfig, env: &PlanEnv) -> String {
    let marker = ps_quote(&restart_marker(env, index));
    let check = c
        .restart_check_command
        .clone()
        .unwrap_or_else(|| "Write-Output \"$env:COMPUTERNAME restarted.\"".into());
    let run = format!("{check}\n$rc = $LASTEXITCODE; if ($null -eq $rc) {{ $rc = 0 }}");
    format!(
        "if (-not (Test-Path -LiteralPath {marker})) {{\n  New-Item -ItemType File -Force -Path {marker} | Out-Null\n  \
         Write-Output 'amiflow: restarting Windows through the SSM agent'\n  exit {AGENT_REBOOT}\n}}\n\
         Remove-Item -LiteralPath {marker} -Force\n{}",
        checked(label, &run, &[0])
    )
}

/// One provisioner of a Windows build as one PowerShell script (and what to stage in S3).
pub fn compile(
    p: &Provisioner,
    env: &PlanEnv,
    bucket: Option<&str>,
    prefix: &str,
) -> Result<Compiled, String> {
    let label = p.label();
    let mut staged = Vec::new();
    let body = match &p.kind {
        Kind::PowerShell(c) => run_scripts(
            &label,
            p.index,
            powershell(c),
            env,
            bucket,
            prefix,
            &mut staged,
        )?,
        Kind::WindowsShell(c) => run_scripts(
            &label,
            p.index,
            windows_shell(c),
            env,
            bucket,
            prefix,
            &mut staged,
        )?,
        Kind::WindowsRestart(c) => restart(&label, p.index, c, env),
        Kind::File(_) => {
            let mut out = String::new();
            for action in super::plan::plan(p, env)? {
                match action {
                    super::plan::Action::Upload {
                        data, remote, from, ..
                    } => out.push_str(&write_file(
                        &data,
                        &remote,
                        &from,
                        bucket,
                        prefix,
                        &mut staged,
                    )?),
                    super::plan::Action::Mkdir { path } => out.push_str(&format!(
                        "New-Item -ItemType Directory -Force -Path {} | Out-Null\n",
                        ps_quote(&path)
                    )),
                    other => {
                        return Err(format!(
                            "{other:?} is not supported over SSM on Windows; upload files only"
                        ))
                    }
                }
            }
            out
        }
        Kind::Shell(_) | Kind::AnsibleLocal(_) => {
            return Err(format!(
                "a {} provisioner runs /bin/sh, which a Windows instance does not have: use \
                 \"powershell\" or \"windows-shell\"",
                p.kind.type_name()
            ))
        }
        Kind::ShellLocal(_) => return Err("shell-local runs on this machine, not over SSM".into()),
    };
    Ok(Compiled {
        script: format!(
            "$ErrorActionPreference = 'Stop'\n$ProgressPreference = 'SilentlyContinue'\n{body}exit 0\n"
        ),
        staged,
    })
}

/// The command that runs a script staged at `s3://bucket/key` (so revealed secrets never
/// appear in the command's parameters), keeping its exit code (3010 included).
pub fn staged_command(bucket: &str, key: &str, index: usize) -> Vec<String> {
    let path = format!("{TEMP}/amiflow-{index}.ps1");
    vec![
        "$ErrorActionPreference = 'Stop'".into(),
        format!(
            "Copy-S3Object -BucketName {} -Key {} -LocalFile {} | Out-Null",
            ps_quote(bucket),
            ps_quote(key),
            ps_quote(&path)
        ),
        format!(
            "& powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File {}; $rc = $LASTEXITCODE; Remove-Item -LiteralPath {} -Force; exit $rc",
            ps_quote(&path),
            ps_quote(&path)
        ),
    ]
}

/// The time one command may take: the provisioner's `timeout`, a restart's
/// `restart_timeout`, else the builder's `ssm_execution_timeout`.
pub fn execution_timeout(p: &Provisioner, default: std::time::Duration) -> std::time::Duration {
    match (&p.kind, p.common.timeout) {
        (_, Some(t)) => t,
        (Kind::WindowsRestart(c), None) => c.restart_timeout(),
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(p: serde_json::Value, bucket: Option<&str>) -> Result<Compiled, String> {
        let p = Provisioner::parse(3, &p).expect("a valid provisioner");
        let env = PlanEnv {
            build_name: "win".into(),
            builder_type: "amazon-ebs".into(),
            random: "r4nd".into(),
            ..PlanEnv::default()
        };
        compile(&p, &env, bucket, "amiflow/x/win/provision/3/")
    }

    #[test]
    fn powershell_sets_packers_variables_runs_with_the_policy_and_checks_the_exit_code() {
        let c = compiled(
            json!({"type": "powershell", "inline": ["Write-Output $env:GREETING", "exit 5"],
                   "environment_vars": ["GREETING=it's here"], "valid_exit_codes": [0, 5],
                   "execution_policy": "RemoteSigned", "debug_mode": 1}),
            None,
        )
        .unwrap();
        let s = &c.script;
        for want in [
            "$ErrorActionPreference = 'Stop'",
            "$env:GREETING = 'it''s here'",
            "$env:PACKER_BUILD_NAME = 'win'",
            "$env:PACKER_BUILDER_TYPE = 'amazon-ebs'",
            "Set-Content -LiteralPath 'C:/Windows/Temp/amiflow-r4nd_3-0.ps1'",
            "Set-PSDebug -Trace 1\r\nWrite-Output $env:GREETING\r\nexit 5\r\n",
            "& powershell.exe -NoProfile -NonInteractive -ExecutionPolicy remotesigned -File 'C:/Windows/Temp/amiflow-r4nd_3-0.ps1'",
            "if (@(0,5) -notcontains $rc)",
            "exited with $rc",
            "Remove-Item -LiteralPath 'C:/Windows/Temp/amiflow-r4nd_3-0.ps1' -Force",
        ] {
            assert!(s.contains(want), "missing {want:?} in:\n{s}");
        }
        assert!(s.ends_with("exit 0\n"), "{s}");
        assert!(c.staged.is_empty(), "no bucket: the script travels inline");
    }

    #[test]
    fn a_failing_3010_is_not_taken_for_a_restart() {
        let s = compiled(json!({"type": "powershell", "inline": ["exit 3010"]}), None)
            .unwrap()
            .script;
        assert!(s.contains("if ($rc -eq 3010)"), "{s}");
        assert!(s.contains("add it to valid_exit_codes"), "{s}");
    }

    #[test]
    fn with_a_bucket_scripts_and_files_are_fetched_from_s3() {
        let c = compiled(
            json!({"type": "windows-shell", "inline": ["echo %PACKER_BUILD_NAME%"]}),
            Some("stage-bucket"),
        )
        .unwrap();
        assert!(c.script.contains(
            "Copy-S3Object -BucketName 'stage-bucket' -Key 'amiflow/x/win/provision/3/0' -LocalFile 'C:/Windows/Temp/amiflow-r4nd_3-0.bat'"
        ), "{}", c.script);
        assert!(c
            .script
            .contains("& cmd.exe /c 'C:/Windows/Temp/amiflow-r4nd_3-0.bat'"));
        assert_eq!(c.staged.len(), 1);
        assert_eq!(c.staged[0].1, b"echo %PACKER_BUILD_NAME%\r\n");
        let file = compiled(
            json!({"type": "file", "content": "key=value\n", "destination": "C:/app/app.conf"}),
            None,
        )
        .unwrap();
        assert!(file.script.contains("Set-Content -LiteralPath 'C:/app/app.conf' -NoNewline -Encoding UTF8 -Value @'\nkey=value\n\n'@"), "{}", file.script);
    }

    #[test]
    fn a_restart_exits_3010_once_then_runs_the_check() {
        let c = compiled(
            json!({"type": "windows-restart", "restart_check_command": "Get-Service sshd", "restart_timeout": "15m"}),
            None,
        )
        .unwrap();
        let s = &c.script;
        let marker = "'C:/Windows/Temp/amiflow-restarted-r4nd_3'";
        let first = s.find("exit 3010").expect("asks the agent to restart");
        let check = s.find("Get-Service sshd").expect("runs the check");
        assert!(first < check, "{s}");
        assert!(
            s.contains(&format!("if (-not (Test-Path -LiteralPath {marker}))")),
            "{s}"
        );
        assert!(
            s.contains(&format!("Remove-Item -LiteralPath {marker} -Force")),
            "{s}"
        );
        let p = Provisioner::parse(
            0,
            &json!({"type": "windows-restart", "restart_timeout": "15m"}),
        )
        .unwrap();
        assert_eq!(
            execution_timeout(&p, std::time::Duration::from_secs(3600)).as_secs(),
            900
        );
    }

    #[test]
    fn a_shell_provisioner_on_windows_says_what_to_use() {
        let e = compiled(json!({"type": "shell", "inline": ["true"]}), None).unwrap_err();
        assert!(e.contains("a shell provisioner runs /bin/sh"), "{e}");
        assert!(e.contains("use \"powershell\" or \"windows-shell\""), "{e}");
    }

    #[test]
    fn staged_runs_keep_the_scripts_exit_code_for_the_agent() {
        let lines = staged_command("b", "k/script.ps1", 2).join("\n");
        assert!(
            lines.contains("Copy-S3Object -BucketName 'b' -Key 'k/script.ps1'"),
            "{lines}"
        );
        assert!(lines.ends_with("exit $rc"), "{lines}");
    }
}
