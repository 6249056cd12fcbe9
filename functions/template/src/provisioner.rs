//! Typed provisioner configs: Packer's keys and defaults for `shell`, `file`,
//! `shell-local`, and the Windows ones (`powershell`, `windows-shell`, `windows-restart`,
//! which run over SSM: `AWS-RunPowerShellScript`), plus the keys every provisioner has (`only`/`except` are applied at
//! prepare time and only tolerated here).
//!
//! Here rather than next to the code that runs them so that `prepare` (and so `amiflow
//! validate`) refuses a bad provisioner before any instance exists; the Provision step
//! parses the same values again into these types. Unknown keys are errors, with the key
//! named, so a typo does not silently do nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::problem::Problem;

/// Keys every provisioner accepts besides its own.
const COMMON_KEYS: &[&str] = &[
    "type",
    "only",
    "except",
    "override",
    "pause_before",
    "max_retries",
    "timeout",
    "name",
];

/// Packer's defaults for the shell provisioner.
pub const DEFAULT_EXECUTE_COMMAND: &str = "chmod +x {{.Path}}; {{.Vars}} {{.Path}}";
pub const DEFAULT_INLINE_SHEBANG: &str = "/bin/sh -e";
pub const DEFAULT_REMOTE_FOLDER: &str = "/tmp";
pub const DEFAULT_ENV_VAR_FORMAT: &str = "%s='%s' ";
/// Packer's defaults with `use_env_var_file`: the variables go to a file the command sources.
pub const ENV_VAR_FILE_EXECUTE_COMMAND: &str = "chmod +x {{.Path}}; . {{.EnvVarFile}} && {{.Path}}";
pub const ENV_VAR_FILE_FORMAT: &str = "export %s='%s'\n";

/// The most retries a provisioner may ask for: each retry runs it again from the start.
pub const MAX_RETRIES: u32 = 100;

/// One provisioner of the build, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Provisioner {
    /// Position in the template's `provisioners` list (0-based), used in every message.
    pub index: usize,
    pub common: Common,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Common {
    /// Packer's `name` (HCL) or nothing; the log label falls back to the type.
    pub name: Option<String>,
    pub pause_before: Option<Duration>,
    /// Packer retries a failed provisioner this many times (0 = no retry).
    pub max_retries: u32,
    /// Whole-provisioner time limit.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Shell(ShellConfig),
    File(FileConfig),
    ShellLocal(ShellLocalConfig),
    PowerShell(PowerShellConfig),
    WindowsShell(WindowsShellConfig),
    WindowsRestart(WindowsRestartConfig),
    AnsibleLocal(AnsibleLocalConfig),
}

/// The provisioner types that run on a Windows instance: only over SSM (`communicator:
/// "ssm"`, or `"winrm"`, which amiflow runs over SSM).
pub const WINDOWS_PROVISIONERS: [&str; 3] = ["powershell", "windows-shell", "windows-restart"];

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Shell(_) => "shell",
            Kind::File(_) => "file",
            Kind::ShellLocal(_) => "shell-local",
            Kind::PowerShell(_) => "powershell",
            Kind::WindowsShell(_) => "windows-shell",
            Kind::WindowsRestart(_) => "windows-restart",
            Kind::AnsibleLocal(_) => "ansible-local",
        }
    }

    /// Runs on a Windows instance (through `AWS-RunPowerShellScript`).
    pub fn is_windows(&self) -> bool {
        WINDOWS_PROVISIONERS.contains(&self.type_name())
    }
}

/// Packer's defaults for `ansible-local`.
pub const DEFAULT_ANSIBLE_COMMAND: &str =
    "ANSIBLE_FORCE_COLOR=1 PYTHONUNBUFFERED=1 ansible-playbook";
pub const DEFAULT_ANSIBLE_STAGING: &str = "/tmp/packer-provisioner-ansible-local";

/// `ansible-local`: Packer's keys. Ansible runs on the instance in local mode, over the
/// communicator, from files uploaded to `staging_directory`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AnsibleLocalConfig {
    #[serde(default)]
    pub playbook_file: Option<String>,
    #[serde(default)]
    pub playbook_files: Vec<String>,
    /// Uploaded whole to the staging directory.
    #[serde(default)]
    pub playbook_dir: Option<String>,
    /// Directories uploaded to `<staging>/playbooks/`.
    #[serde(default)]
    pub playbook_paths: Vec<String>,
    /// Directories uploaded to `<staging>/roles/`.
    #[serde(default)]
    pub role_paths: Vec<String>,
    #[serde(default)]
    pub group_vars: Option<String>,
    #[serde(default)]
    pub host_vars: Option<String>,
    #[serde(default)]
    pub inventory_file: Option<String>,
    /// Groups 127.0.0.1 is put in, in the generated inventory.
    #[serde(default)]
    pub inventory_groups: Vec<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub extra_arguments: Vec<String>,
    /// Default `/tmp/packer-provisioner-ansible-local/<unique>`.
    #[serde(default)]
    pub staging_directory: Option<String>,
    #[serde(default)]
    pub clean_staging_directory: bool,
    /// Roles installed with `galaxy_command install -r FILE` before the playbooks run.
    #[serde(default)]
    pub galaxy_file: Option<String>,
    #[serde(default)]
    pub galaxy_command: Option<String>,
}

impl AnsibleLocalConfig {
    /// `playbook_file`, or `playbook_files`, in order.
    pub fn playbooks(&self) -> Vec<&str> {
        self.playbook_file
            .iter()
            .chain(&self.playbook_files)
            .map(String::as_str)
            .collect()
    }
    pub fn command(&self) -> &str {
        self.command.as_deref().unwrap_or(DEFAULT_ANSIBLE_COMMAND)
    }
    pub fn galaxy_command(&self) -> &str {
        self.galaxy_command.as_deref().unwrap_or("ansible-galaxy")
    }
}

/// Packer's defaults for the Windows provisioners.
pub const DEFAULT_EXECUTION_POLICY: &str = "bypass";
pub const DEFAULT_POWERSHELL_REMOTE_PATH: &str = "c:/Windows/Temp/script-{{.Random}}.ps1";
pub const DEFAULT_WINDOWS_SHELL_REMOTE_PATH: &str = "c:/Windows/Temp/script-{{.Random}}.bat";
pub const DEFAULT_RESTART_COMMAND: &str = "shutdown /r /f /t 0 /c \"packer restart\"";
pub const DEFAULT_RESTART_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// `powershell`: Packer's keys. Over SSM the script runs as LocalSystem, which is already
/// elevated: `elevated_user`/`elevated_password` (Packer's way to elevation through WinRM)
/// are satisfied without a scheduled task.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PowerShellConfig {
    #[serde(default)]
    pub inline: Vec<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub scripts: Vec<String>,
    #[serde(default)]
    pub environment_vars: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `bypass` (default), `allsigned`, `default`, `remotesigned`, `restricted`,
    /// `undefined`, `unrestricted` or `none` (no `-ExecutionPolicy`).
    #[serde(default)]
    pub execution_policy: Option<String>,
    #[serde(default)]
    pub elevated_user: Option<String>,
    #[serde(default)]
    pub elevated_password: Option<String>,
    #[serde(default)]
    pub remote_path: Option<String>,
    #[serde(default)]
    pub skip_clean: bool,
    #[serde(default)]
    pub valid_exit_codes: Vec<i64>,
    /// Packer's `Set-PSDebug -Trace` level (0 = off, 1, 2).
    #[serde(default)]
    pub debug_mode: i64,
    #[serde(default)]
    pub binary: bool,
    #[serde(default)]
    pub start_retry_timeout: Option<String>,
    /// PowerShell 7 (`pwsh`) instead of Windows PowerShell.
    #[serde(default)]
    pub use_pwsh: bool,
}

impl PowerShellConfig {
    pub fn valid_exit_codes(&self) -> Vec<i64> {
        valid_exit_codes(&self.valid_exit_codes)
    }
    pub fn execution_policy(&self) -> &str {
        self.execution_policy
            .as_deref()
            .unwrap_or(DEFAULT_EXECUTION_POLICY)
    }
}

/// `windows-shell`: Packer's keys; the scripts run with `cmd /c`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WindowsShellConfig {
    #[serde(default)]
    pub inline: Vec<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub scripts: Vec<String>,
    #[serde(default)]
    pub environment_vars: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub remote_path: Option<String>,
    #[serde(default)]
    pub valid_exit_codes: Vec<i64>,
    #[serde(default)]
    pub binary: bool,
    #[serde(default)]
    pub start_retry_timeout: Option<String>,
}

impl WindowsShellConfig {
    pub fn valid_exit_codes(&self) -> Vec<i64> {
        valid_exit_codes(&self.valid_exit_codes)
    }
}

/// `windows-restart`: over SSM the agent restarts the instance (the command exits 3010)
/// and runs the command again once Windows is back, which then runs
/// `restart_check_command`; `restart_timeout` bounds the whole.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WindowsRestartConfig {
    /// Packer's default only: over SSM the agent restarts the instance, and a command of
    /// one's own would restart it behind the agent's back.
    #[serde(default)]
    pub restart_command: Option<String>,
    #[serde(default)]
    pub restart_check_command: Option<String>,
    #[serde(default)]
    pub restart_timeout: Option<String>,
    /// Packer: wait for pending reboots the registry announces. Over SSM the agent comes
    /// back only once Windows has finished restarting.
    #[serde(default)]
    pub check_registry: bool,
}

impl WindowsRestartConfig {
    pub fn restart_timeout(&self) -> Duration {
        self.restart_timeout
            .as_deref()
            .and_then(|t| duration(t).ok())
            .unwrap_or(DEFAULT_RESTART_TIMEOUT)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    #[serde(default)]
    pub inline: Vec<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub scripts: Vec<String>,
    #[serde(default)]
    pub environment_vars: Vec<String>,
    /// Packer's `env`: more variables, as a map; they win over `environment_vars`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Packer: write the variables to a file in `remote_folder` that the command sources
    /// (`{{.EnvVarFile}}`) instead of putting them on the command line.
    #[serde(default)]
    pub use_env_var_file: bool,
    #[serde(default)]
    pub execute_command: Option<String>,
    #[serde(default)]
    pub inline_shebang: Option<String>,
    #[serde(default)]
    pub remote_folder: Option<String>,
    #[serde(default)]
    pub remote_file: Option<String>,
    #[serde(default)]
    pub remote_path: Option<String>,
    #[serde(default)]
    pub skip_clean: bool,
    #[serde(default)]
    pub expect_disconnect: bool,
    #[serde(default)]
    pub valid_exit_codes: Vec<i64>,
    #[serde(default)]
    pub env_var_format: Option<String>,
    /// Packer: upload scripts without converting line endings. Accepted; we never convert.
    #[serde(default)]
    pub binary: bool,
    #[serde(default)]
    pub pause_after: Option<String>,
    /// Packer retries starting the command for this long; accepted for compatibility
    /// (our Connect wait already guarantees the communicator answers).
    #[serde(default)]
    pub start_retry_timeout: Option<String>,
}

impl ShellConfig {
    /// `pause_after`, validated at prepare (an unreadable value never gets this far).
    pub fn pause_after(&self) -> Option<Duration> {
        self.pause_after.as_deref().and_then(|p| duration(p).ok())
    }
    pub fn execute_command(&self) -> &str {
        let default = if self.use_env_var_file {
            ENV_VAR_FILE_EXECUTE_COMMAND
        } else {
            DEFAULT_EXECUTE_COMMAND
        };
        self.execute_command.as_deref().unwrap_or(default)
    }
    pub fn inline_shebang(&self) -> &str {
        self.inline_shebang
            .as_deref()
            .unwrap_or(DEFAULT_INLINE_SHEBANG)
    }
    pub fn env_var_format(&self) -> &str {
        let default = if self.use_env_var_file {
            ENV_VAR_FILE_FORMAT
        } else {
            DEFAULT_ENV_VAR_FORMAT
        };
        self.env_var_format.as_deref().unwrap_or(default)
    }
    /// Packer's `varfile_<random>.sh` in `remote_folder`, with `use_env_var_file`.
    pub fn env_var_file(&self, random: &str) -> String {
        let folder = self
            .remote_folder
            .as_deref()
            .unwrap_or(DEFAULT_REMOTE_FOLDER);
        format!("{}/varfile_{random}.sh", folder.trim_end_matches('/'))
    }
    pub fn valid_exit_codes(&self) -> Vec<i64> {
        valid_exit_codes(&self.valid_exit_codes)
    }
    /// Packer: `remote_path` wins; else `remote_folder`/`remote_file`, the file name being
    /// `script_<random>.sh` (the random part is given so the path is stable across retries).
    pub fn remote_path(&self, random: &str) -> String {
        if let Some(p) = &self.remote_path {
            return p.clone();
        }
        let folder = self
            .remote_folder
            .as_deref()
            .unwrap_or(DEFAULT_REMOTE_FOLDER);
        let file = self
            .remote_file
            .clone()
            .unwrap_or_else(|| format!("script_{random}.sh"));
        format!("{}/{}", folder.trim_end_matches('/'), file)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
    /// Packer: the source is created by an earlier step; we check existence at run time anyway.
    #[serde(default)]
    pub generated: bool,
}

impl FileConfig {
    pub fn is_download(&self) -> bool {
        self.direction.as_deref() == Some("download")
    }
    pub fn sources(&self) -> Vec<String> {
        let mut all: Vec<String> = self.source.iter().cloned().collect();
        all.extend(self.sources.iter().cloned());
        all
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShellLocalConfig {
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub inline: Vec<String>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub scripts: Vec<String>,
    #[serde(default)]
    pub environment_vars: Vec<String>,
    /// As the shell provisioner's `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Packer's default: `["/bin/sh", "-c", "{{.Vars}} {{.Script}}"]`.
    #[serde(default)]
    pub execute_command: Vec<String>,
    #[serde(default)]
    pub inline_shebang: Option<String>,
    /// Operating systems (Go's names: `linux`, `darwin`, `windows` …) this runs on;
    /// elsewhere it is skipped. Empty: everywhere.
    #[serde(default)]
    pub only_on: Vec<String>,
    #[serde(default)]
    pub valid_exit_codes: Vec<i64>,
    #[serde(default)]
    pub env_var_format: Option<String>,
    #[serde(default)]
    pub use_linux_pathing: bool,
}

impl ShellLocalConfig {
    pub fn execute_command(&self) -> Vec<String> {
        if self.execute_command.is_empty() {
            vec![
                "/bin/sh".into(),
                "-c".into(),
                "{{.Vars}} {{.Script}}".into(),
            ]
        } else {
            self.execute_command.clone()
        }
    }
    pub fn valid_exit_codes(&self) -> Vec<i64> {
        valid_exit_codes(&self.valid_exit_codes)
    }
    /// Whether `only_on` lets it run on `os` (Rust's `std::env::consts::OS`).
    pub fn runs_on(&self, os: &str) -> bool {
        let go_name = match os {
            "macos" => "darwin",
            other => other,
        };
        self.only_on.is_empty() || self.only_on.iter().any(|o| o == go_name)
    }
}

/// `valid_exit_codes` with Packer's default: only 0.
fn valid_exit_codes(given: &[i64]) -> Vec<i64> {
    if given.is_empty() {
        vec![0]
    } else {
        given.to_vec()
    }
}

impl Provisioner {
    /// Parses one provisioner; every problem is listed, each naming the key.
    pub fn parse(index: usize, value: &Value) -> Result<Provisioner, Vec<String>> {
        Provisioner::parse_keyed(index, value)
            .map_err(|ps| ps.iter().map(Problem::to_string).collect())
    }

    /// [`Provisioner::parse`] with each problem's key kept apart (the provisioner's own key,
    /// such as `inline` or `pause_before`), for Prepare to place it in the template.
    pub fn parse_keyed(index: usize, value: &Value) -> Result<Provisioner, Vec<Problem>> {
        let Some(obj) = value.as_object() else {
            return Err(vec![Problem::new(
                "a provisioner must be a JSON object with a \"type\"",
            )]);
        };
        let mut problems = Vec::new();
        let common = parse_common(obj, &mut problems);
        let own: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !COMMON_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let type_name = obj.get("type").and_then(Value::as_str).unwrap_or("");
        let kind = match type_name {
            "shell" => typed::<ShellConfig>(own, &mut problems).map(Kind::Shell),
            "file" => typed::<FileConfig>(own, &mut problems).map(Kind::File),
            "shell-local" => typed::<ShellLocalConfig>(own, &mut problems).map(Kind::ShellLocal),
            "powershell" => typed::<PowerShellConfig>(own, &mut problems).map(Kind::PowerShell),
            "windows-shell" => {
                typed::<WindowsShellConfig>(own, &mut problems).map(Kind::WindowsShell)
            }
            "windows-restart" => {
                typed::<WindowsRestartConfig>(own, &mut problems).map(Kind::WindowsRestart)
            }
            "ansible-local" => {
                typed::<AnsibleLocalConfig>(own, &mut problems).map(Kind::AnsibleLocal)
            }
            "" => {
                problems.push(Problem::key(
                    "type",
                    format!("missing; amiflow runs {}", supported_list()),
                ));
                None
            }
            other => {
                problems.push(Problem::key(
                    "type",
                    format!(
                        "provisioner type {other:?} is not supported; amiflow runs {}",
                        supported_list()
                    ),
                ));
                None
            }
        };
        if let Some(kind) = &kind {
            validate_kind(kind, &mut problems);
        }
        match kind {
            Some(kind) if problems.is_empty() => Ok(Provisioner {
                index,
                common,
                kind,
            }),
            _ => Err(problems),
        }
    }

    /// How messages and log lines name this provisioner: `provisioner 2 (shell)`.
    pub fn label(&self) -> String {
        match &self.common.name {
            Some(n) => format!(
                "provisioner {} ({} {n:?})",
                self.index,
                self.kind.type_name()
            ),
            None => format!("provisioner {} ({})", self.index, self.kind.type_name()),
        }
    }
}

/// Every problem of one provisioner, as messages naming the key; empty when it is valid.
pub fn validate_provisioner(value: &Value) -> Vec<String> {
    check(value).iter().map(Problem::to_string).collect()
}

/// Every problem of one provisioner, each keyed by the provisioner's own key; empty when it
/// is valid. Prepare places them in the template (`provisioners[2] (shell)`).
pub fn check(value: &Value) -> Vec<Problem> {
    match Provisioner::parse_keyed(0, value) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    }
}

/// Every provisioner of a build, or every problem of all of them (prefixed with their index).
pub fn parse_all(values: &[Value]) -> Result<Vec<Provisioner>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match Provisioner::parse(i, v) {
            Ok(p) => out.push(p),
            Err(ps) => problems.extend(ps.into_iter().map(|p| format!("provisioners[{i}]: {p}"))),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Decodes the provisioner's own keys; when that fails, each key alone again, so every
/// problem names its key (serde's message alone does not say which key had the wrong type).
fn typed<T: DeserializeOwned>(own: Map<String, Value>, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_json::from_value::<T>(Value::Object(own.clone())) {
        Ok(t) => Some(t),
        Err(whole) => {
            let before = problems.len();
            for (key, value) in own {
                let alone = Map::from_iter([(key.clone(), value)]);
                if let Err(e) = serde_json::from_value::<T>(Value::Object(alone)) {
                    problems.push(Problem::key(key, e.to_string()));
                }
            }
            if problems.len() == before {
                problems.push(Problem::new(whole.to_string()));
            }
            None
        }
    }
}

/// A Go duration string, parsed by the one parser of the template crate.
fn duration(text: &str) -> Result<Duration, String> {
    text.parse::<crate::config::Duration>()
        .map(crate::config::Duration::as_std)
        .map_err(|e| e.to_string())
}

fn parse_common(obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Common {
    let mut common = Common {
        name: obj.get("name").and_then(Value::as_str).map(String::from),
        ..Default::default()
    };
    for key in ["pause_before", "timeout"] {
        match obj.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => match duration(s) {
                Ok(d) => {
                    if key == "pause_before" {
                        common.pause_before = Some(d)
                    } else {
                        common.timeout = Some(d)
                    }
                }
                Err(e) => problems.push(Problem::key(key, e)),
            },
            Some(other) => problems.push(Problem::key(
                key,
                format!("expected a duration string such as \"30s\" or \"5m\", got {other}"),
            )),
        }
    }
    let retries = match obj.get("max_retries") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match (obj.get("max_retries"), retries) {
        (None | Some(Value::Null), _) => {}
        (_, Some(n)) if n <= u64::from(MAX_RETRIES) => common.max_retries = n as u32,
        (_, Some(n)) => problems.push(Problem::key(
            "max_retries",
            format!("out of range: {n}; must be from 0 to {MAX_RETRIES}"),
        )),
        (Some(other), None) => problems.push(Problem::key(
            "max_retries",
            format!("expected a non-negative number, got {other}"),
        )),
    }
    for key in ["only", "except"] {
        if let Some(v) = obj.get(key) {
            if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                problems.push(Problem::key(key, "expected a list of build names"));
            }
        }
    }
    common
}

fn validate_env_vars(vars: &[String], problems: &mut Vec<Problem>) {
    for v in vars {
        match v.split_once('=') {
            Some((k, _)) if !k.trim().is_empty() => {}
            _ => problems.push(Problem::key(
                "environment_vars",
                format!("{v:?} must be KEY=VALUE with a non-empty KEY"),
            )),
        }
    }
}

fn validate_env_map(env: &BTreeMap<String, String>, problems: &mut Vec<Problem>) {
    for k in env.keys() {
        if k.trim().is_empty() || k.contains('=') {
            problems.push(Problem::key(
                "env",
                format!("{k:?} is not a variable name (non-empty, without `=`)"),
            ));
        }
    }
}

/// What the provisioner runs is given by exactly one of these keys (`(key, given)`); `why`
/// follows the message when none is.
fn exactly_one(keys: &[(&str, bool)], why: &str, problems: &mut Vec<Problem>) {
    let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
    match keys.iter().filter(|(_, given)| *given).count() {
        0 => {
            let (last, rest) = names.split_last().expect("at least one key");
            problems.push(Problem::key(
                format!("{} or {last}", rest.join(", ")),
                format!("one of them must be given{why}"),
            ));
        }
        1 => {}
        _ => problems.push(Problem::key(names.join(", "), "give only one of them")),
    }
}

/// The provisioner types amiflow runs, for messages.
fn supported_list() -> String {
    crate::template::SUPPORTED_PROVISIONERS
        .iter()
        .map(|t| format!("{t:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rules of the provisioners that run scripts (`shell`, `powershell`, `windows-shell`):
/// exactly one of `inline`, `script`, `scripts` (`given`, in that order), and well-formed
/// variables.
fn check_script_sources(
    type_name: &str,
    given: [bool; 3],
    environment_vars: &[String],
    env: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) {
    let keys = ["inline", "script", "scripts"];
    let pairs: Vec<(&str, bool)> = keys.into_iter().zip(given).collect();
    exactly_one(
        &pairs,
        &format!(" (what should the {type_name} provisioner run?)"),
        problems,
    );
    validate_env_vars(environment_vars, problems);
    validate_env_map(env, problems);
}

fn validate_kind(kind: &Kind, problems: &mut Vec<Problem>) {
    match kind {
        Kind::AnsibleLocal(c) => {
            exactly_one(
                &[
                    ("playbook_file", c.playbook_file.is_some()),
                    ("playbook_files", !c.playbook_files.is_empty()),
                ],
                " (which playbook should ansible run?)",
                problems,
            );
            if c.inventory_file.is_some() && !c.inventory_groups.is_empty() {
                problems.push(Problem::key(
                    "inventory_groups",
                    "applies to the generated inventory only: give inventory_file or inventory_groups, not both",
                ));
            }
        }
        Kind::PowerShell(c) => {
            check_script_sources(
                "powershell",
                [
                    !c.inline.is_empty(),
                    c.script.is_some(),
                    !c.scripts.is_empty(),
                ],
                &c.environment_vars,
                &c.env,
                problems,
            );
            const POLICIES: [&str; 8] = [
                "allsigned",
                "bypass",
                "default",
                "remotesigned",
                "restricted",
                "undefined",
                "unrestricted",
                "none",
            ];
            if !POLICIES.contains(&c.execution_policy().to_ascii_lowercase().as_str()) {
                problems.push(Problem::key(
                    "execution_policy",
                    format!(
                        "{:?} must be one of {}",
                        c.execution_policy(),
                        POLICIES.join(", ")
                    ),
                ));
            }
            if !(0..=2).contains(&c.debug_mode) {
                problems.push(Problem::key(
                    "debug_mode",
                    "must be 0, 1 or 2 (Set-PSDebug -Trace)",
                ));
            }
            if c.elevated_password.is_some() && c.elevated_user.is_none() {
                problems.push(Problem::key(
                    "elevated_password",
                    "given without elevated_user",
                ));
            }
        }
        Kind::WindowsShell(c) => {
            check_script_sources(
                "windows-shell",
                [
                    !c.inline.is_empty(),
                    c.script.is_some(),
                    !c.scripts.is_empty(),
                ],
                &c.environment_vars,
                &c.env,
                problems,
            );
        }
        Kind::WindowsRestart(c) => {
            if c.restart_command
                .as_deref()
                .is_some_and(|r| r != DEFAULT_RESTART_COMMAND)
            {
                problems.push(Problem::key(
                    "restart_command",
                    "over SSM the agent restarts the instance itself (so it can tell when Windows is back); \
                     a restart command of one's own would restart it behind the agent's back: remove the key, \
                     and run any preparation in a powershell provisioner before this one",
                ));
            }
            if let Some(t) = &c.restart_timeout {
                if let Err(e) = duration(t) {
                    problems.push(Problem::key("restart_timeout", e));
                }
            }
        }
        Kind::Shell(c) => {
            check_script_sources(
                "shell",
                [
                    !c.inline.is_empty(),
                    c.script.is_some(),
                    !c.scripts.is_empty(),
                ],
                &c.environment_vars,
                &c.env,
                problems,
            );
            if c.remote_path.is_some() && (c.remote_folder.is_some() || c.remote_file.is_some()) {
                problems.push(Problem::key(
                    "remote_path",
                    "give either remote_path or remote_folder/remote_file, not both",
                ));
            }
            if let Some(f) = &c.env_var_format {
                if f.matches("%s").count() != 2 {
                    problems.push(Problem::key(
                        "env_var_format",
                        format!("{f:?} must contain %s twice (name, then value)"),
                    ));
                }
            }
            if let Some(p) = &c.pause_after {
                if let Err(e) = duration(p) {
                    problems.push(Problem::key("pause_after", e));
                }
            }
        }
        Kind::File(c) => {
            if c.destination.as_deref().unwrap_or("").is_empty() {
                problems.push(Problem::key(
                    "destination",
                    "required (where the file goes)",
                ));
            }
            match c.direction.as_deref() {
                None | Some("upload") | Some("download") => {}
                Some(d) => problems.push(Problem::key(
                    "direction",
                    format!("{d:?} must be \"upload\" or \"download\""),
                )),
            }
            let sources = c.sources().len();
            if c.content.is_some() && sources > 0 {
                problems.push(Problem::key(
                    "content, source",
                    "give either content or source/sources, not both",
                ));
            } else if c.content.is_none() && sources == 0 {
                problems.push(Problem::key(
                    "source",
                    "required (or content, for an inline file)",
                ));
            }
            if c.is_download() && c.content.is_some() {
                problems.push(Problem::key(
                    "content",
                    "cannot be used with direction \"download\"",
                ));
            }
        }
        Kind::ShellLocal(c) => {
            exactly_one(
                &[
                    ("command", c.command.is_some()),
                    ("inline", !c.inline.is_empty()),
                    ("script", c.script.is_some()),
                    ("scripts", !c.scripts.is_empty()),
                ],
                "",
                problems,
            );
            validate_env_vars(&c.environment_vars, problems);
            validate_env_map(&c.env, problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shell_with_defaults() {
        let p = Provisioner::parse(1, &json!({"type": "shell", "inline": ["echo hi"], "pause_before": "2s", "max_retries": "3"})).unwrap();
        assert_eq!(p.common.pause_before, Some(Duration::from_secs(2)));
        assert_eq!(p.common.max_retries, 3);
        let Kind::Shell(s) = &p.kind else { panic!() };
        assert_eq!(
            s.execute_command(),
            "chmod +x {{.Path}}; {{.Vars}} {{.Path}}"
        );
        assert_eq!(s.inline_shebang(), "/bin/sh -e");
        assert_eq!(s.remote_path("abc"), "/tmp/script_abc.sh");
        assert_eq!(s.valid_exit_codes(), vec![0]);
        assert_eq!(p.label(), "provisioner 1 (shell)");
    }

    #[test]
    fn use_env_var_file_changes_packers_defaults_and_only_on_names_go_oses() {
        let p = Provisioner::parse(
            0,
            &json!({"type": "shell", "inline": ["x"], "use_env_var_file": true,
                "remote_folder": "/var/tmp/", "env": {"B": "2"}}),
        )
        .unwrap();
        let Kind::Shell(s) = &p.kind else { panic!() };
        assert_eq!(
            s.execute_command(),
            "chmod +x {{.Path}}; . {{.EnvVarFile}} && {{.Path}}"
        );
        assert_eq!(s.env_var_format(), "export %s='%s'\n");
        assert_eq!(s.env_var_file("r1"), "/var/tmp/varfile_r1.sh");
        assert_eq!(s.env["B"], "2");
        let bad =
            validate_provisioner(&json!({"type": "shell", "inline": ["x"], "env": {"A=B": "1"}}));
        assert!(bad.iter().any(|p| p.starts_with("env: ")), "{bad:?}");

        let local = |only_on: Value| {
            let p = Provisioner::parse(
                0,
                &json!({"type": "shell-local", "inline": ["x"], "only_on": only_on}),
            )
            .unwrap();
            let Kind::ShellLocal(c) = p.kind else {
                panic!()
            };
            c
        };
        assert!(local(json!([])).runs_on("linux"));
        assert!(local(json!(["darwin"])).runs_on("macos"));
        assert!(!local(json!(["windows", "darwin"])).runs_on("linux"));
    }

    #[test]
    fn retries_are_bounded() {
        // u32::MAX used to make `max_retries + 1` overflow when the provisioner ran, and
        // 2^32 was truncated to 0.
        for n in [json!(4294967295u64), json!(4294967296u64), json!("101")] {
            let problems =
                validate_provisioner(&json!({"type": "shell", "inline": ["x"], "max_retries": n}));
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with("max_retries: out of range")
                        && p.contains("must be from 0 to 100")),
                "{n}: {problems:?}"
            );
        }
        let p = Provisioner::parse(
            0,
            &json!({"type": "shell", "inline": ["x"], "max_retries": 100}),
        )
        .unwrap();
        assert_eq!(p.common.max_retries, 100);
        let problems =
            validate_provisioner(&json!({"type": "shell", "inline": ["x"], "max_retries": -1}));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("expected a non-negative number")),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let problems = validate_provisioner(&json!({"type": "shell", "inlin": ["x"]}));
        assert!(problems.iter().any(|p| p.contains("inlin")), "{problems:?}");
    }

    #[test]
    fn every_problem_is_listed() {
        let problems = validate_provisioner(
            &json!({"type": "shell", "environment_vars": ["NOEQUALS"], "timeout": "5 parsecs"}),
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("inline, script or scripts")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("environment_vars")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("timeout")),
            "{problems:?}"
        );
        assert!(validate_provisioner(&json!({"type": "ansible"}))[0].contains("not supported"));
        assert!(
            validate_provisioner(&json!({"type": "file", "source": "a"}))[0]
                .starts_with("destination")
        );
        assert!(validate_provisioner(
            &json!({"type": "file", "destination": "/x", "direction": "sideways", "content": "c"})
        )
        .iter()
        .any(|p| p.starts_with("direction")));
        assert!(
            validate_provisioner(&json!({"type": "shell-local", "command": "true"})).is_empty()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        // Go's time.ParseDuration, as Packer: a number needs its unit (only "0" goes without).
        assert!(duration("10").unwrap_err().contains("is not a duration"));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert!(duration("5 minutes").is_err());
    }
}
