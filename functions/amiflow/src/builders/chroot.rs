//! What the amazon-chroot steps share: the typed config, what the build learnt about the
//! host and the volume (kept in `data.extra`), the host script's job.

use amiflow_template::config::chroot::ChrootConfig;
use amiflow_template::BuilderConfig;
use serde::{Deserialize, Serialize};

use crate::prelude::*;

/// The host script, carried in the binary so SSM can run it inline and a local run needs
/// no checkout.
pub const HOST_SCRIPT: &str = include_str!("../../../../infra/chroot-host.sh");

/// Environment switch: `local` runs the host script on this machine, `ssm` sends it by SSM
/// RunCommand. Unset: local when HostInfo found the host through this machine's IMDS.
pub const RUN_MODE_ENV: &str = "AMIFLOW_CHROOT_RUN";
/// Environment: an SSM Command document (one String parameter `job`, the base64 job) to
/// use instead of sending the script inline with AWS-RunShellScript.
pub const DOCUMENT_ENV: &str = "AMIFLOW_CHROOT_DOCUMENT";

pub fn config(state: &BuildState) -> Result<&ChrootConfig, StepError> {
    match &state.build.config {
        BuilderConfig::Chroot(c) => Ok(c),
        _ => Err(StepError::BuildFailed(format!(
            "build {}: a chroot step was given a {} build",
            state.build.name,
            state.build.builder_type.as_str()
        ))),
    }
}

/// The build host as HostInfo found it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub instance_id: String,
    pub availability_zone: String,
    /// `imds` (this machine), `instance_id`, `filter` or `stack` (BuildHostInstanceId).
    pub found_by: String,
}

/// The build volume as CreateVolume/AttachVolume left it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildVolume {
    pub volume_id: String,
    /// The name given to AttachVolume (`/dev/sdf`), once attached.
    #[serde(default)]
    pub device: Option<String>,
    /// The source image's facts RegisterImage needs (absent with from_scratch).
    #[serde(default)]
    pub source: Option<SourceImage>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceImage {
    pub root_device_name: String,
    pub architecture: Option<String>,
    pub virtualization_type: Option<String>,
    pub kernel_id: Option<String>,
    pub ramdisk_id: Option<String>,
    pub ena_support: Option<bool>,
    pub boot_mode: Option<String>,
    /// The source's mappings: (device name, snapshot, size, type, iops, throughput, delete, virtual name, no device).
    pub mappings: Vec<SourceMapping>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceMapping {
    pub device_name: String,
    pub snapshot_id: Option<String>,
    pub volume_size: Option<i32>,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub delete_on_termination: Option<bool>,
    pub virtual_name: Option<String>,
    pub no_device: bool,
}

const HOST_KEY: &str = "chroot_host";
const VOLUME_KEY: &str = "chroot_volume";
const COMMAND_KEY: &str = "chroot_command";

fn get<T: for<'de> Deserialize<'de>>(
    state: &BuildState,
    key: &str,
    step: &str,
) -> Result<T, StepError> {
    let v = state.data.extra.get(key).cloned().ok_or_else(|| {
        StepError::BuildFailed(format!(
            "{step}: the build state has no {key} (an earlier step did not run)"
        ))
    })?;
    serde_json::from_value(v).map_err(|e| {
        StepError::BuildFailed(format!(
            "{step}: {key} in the build state is unreadable: {e}"
        ))
    })
}

pub fn host(state: &BuildState, step: &str) -> Result<Host, StepError> {
    get(state, HOST_KEY, step)
}
pub fn set_host(state: &mut BuildState, host: &Host) {
    state.data.extra.insert(
        HOST_KEY.into(),
        serde_json::to_value(host).unwrap_or_default(),
    );
}
pub fn volume(state: &BuildState, step: &str) -> Result<BuildVolume, StepError> {
    get(state, VOLUME_KEY, step)
}
pub fn has_volume(state: &BuildState) -> bool {
    state.data.extra.contains_key(VOLUME_KEY)
}
pub fn set_volume(state: &mut BuildState, v: &BuildVolume) {
    state.data.extra.insert(
        VOLUME_KEY.into(),
        serde_json::to_value(v).unwrap_or_default(),
    );
}

/// How the host script was started: an SSM command, or a local run already finished.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum HostCommand {
    Ssm {
        command_id: String,
        instance_id: String,
        /// The job, when it carries revealed secrets: staged in S3 (`s3://bucket/key`, see
        /// [`staged_job`]) rather than sent in the command's parameters, which SSM keeps in
        /// its command history. WaitHostScript removes it when the command has ended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_s3: Option<String>,
    },
    Local {
        exit_code: i32,
        last_marker: String,
    },
}
pub fn command(state: &BuildState, step: &str) -> Result<HostCommand, StepError> {
    get(state, COMMAND_KEY, step)
}
/// The host script's SSM command and the host it runs on, once sent (none for a local run).
pub fn ssm_command(state: &BuildState) -> Option<(String, String)> {
    match command(state, "AwaitEvent") {
        Ok(HostCommand::Ssm {
            command_id,
            instance_id,
            ..
        }) => Some((command_id, instance_id)),
        _ => None,
    }
}
pub fn set_command(state: &mut BuildState, c: &HostCommand) {
    state.data.extra.insert(
        COMMAND_KEY.into(),
        serde_json::to_value(c).unwrap_or_default(),
    );
}

/// Where RunHostScript stages a job that carries revealed secrets: the stack's artifacts
/// bucket (deployed; None otherwise), under the build's `staged/` prefix, in the stack's own
/// region. The build host's role may read `staged/*` (infra.rs); the bucket expires it, and
/// WaitHostScript, or a failed build's Cleanup, removes it.
pub fn staged_job(state: &BuildState) -> Option<(String, String)> {
    let bucket = std::env::var(crate::provision::communicator::ARTIFACTS_BUCKET_ENV)
        .ok()
        .filter(|b| !b.is_empty())?;
    let prefix = crate::provision::ssm::build_staging_prefix(&state.execution, &state.build.name);
    Some((bucket, format!("{prefix}host-script/job")))
}

/// Packer's `mount_partition` as the host script takes it: only HVM images are partitioned.
pub fn mount_partition(cfg: &ChrootConfig, virtualization: Option<&str>) -> String {
    let virt = if cfg.from_scratch {
        cfg.ami.ami_virtualization_type.as_deref()
    } else {
        cfg.ami
            .ami_virtualization_type
            .as_deref()
            .or(virtualization)
    };
    if virt == Some("hvm") {
        cfg.mount_partition.clone()
    } else {
        "0".into()
    }
}

/// The host script's job (env-style lines, see infra/chroot-host.sh) for this build, every
/// value and file passed through `reveal` before it is encoded (the sensitive values in
/// place, or the placeholders kept with `|t| t.to_string()`).
pub fn job(
    state: &BuildState,
    cfg: &ChrootConfig,
    vol: &BuildVolume,
    files: &crate::template_files::TemplateFiles,
    reveal: &dyn Fn(&str) -> String,
) -> Result<String, StepError> {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| lines.push((k.to_string(), v.to_string()));
    put("VOLUME_ID", &vol.volume_id);
    if let Some(d) = &vol.device {
        put("DEVICE", d);
    }
    if let Some(n) = cfg.nvme_device_path.as_deref().filter(|s| !s.is_empty()) {
        put("NVME_DEVICE_PATH", n);
    }
    put("MOUNT_PATH", &cfg.mount_path);
    put(
        "MOUNT_PARTITION",
        &mount_partition(
            cfg,
            vol.source
                .as_ref()
                .and_then(|s| s.virtualization_type.as_deref()),
        ),
    );
    for o in &cfg.mount_options {
        put("MOUNT_OPTION", o);
    }
    for c in &cfg.pre_mount_commands {
        put("PRE_MOUNT_COMMAND", c);
    }
    for c in &cfg.post_mount_commands {
        put("POST_MOUNT_COMMAND", c);
    }
    for m in &cfg.chroot_mounts {
        if m.len() != 3
            || m.iter()
                .any(|f| f.is_empty() || f.contains(char::is_whitespace))
        {
            return Err(StepError::BuildFailed(format!("chroot_mounts entry {m:?}: needs exactly [fstype, source, destination], without spaces")));
        }
        put("CHROOT_MOUNT", &m.join(" "));
    }
    if cfg.copy_files.is_empty() {
        put("COPY_FILE", "");
    }
    for f in &cfg.copy_files {
        put("COPY_FILE", f);
    }
    put("COMMAND_WRAPPER", &cfg.command_wrapper);
    for (i, p) in state.build.provisioners.iter().enumerate() {
        provisioner_lines(i, p, files, reveal, &mut put)?;
    }
    let mut out = String::new();
    for (k, v) in lines {
        let v = reveal(&v);
        if v.contains(['\n', '\r']) {
            out.push_str(&format!("{k}.b64={}\n", b64(v.as_bytes())));
        } else {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    Ok(out)
}

/// `body` with `exports` after its `#!` line (or first, without one).
fn with_exports(body: &str, exports: &str) -> String {
    if exports.is_empty() {
        return body.to_string();
    }
    match body
        .strip_prefix("#!")
        .and_then(|rest| rest.split_once('\n'))
    {
        Some((shebang, rest)) => format!("#!{shebang}\n{exports}{rest}"),
        None => format!("{exports}{body}"),
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Shell provisioners become an uploaded script plus its run (Packer's shell provisioner:
/// `inline` is written to a script with `inline_shebang`, default `/bin/sh -e`); `file`
/// provisioners with `content` become an upload.
fn provisioner_lines(
    i: usize,
    p: &serde_json::Value,
    files: &crate::template_files::TemplateFiles,
    reveal: &dyn Fn(&str) -> String,
    put: &mut impl FnMut(&str, &str),
) -> Result<(), StepError> {
    let kind = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let str_list = |key: &str| -> Vec<String> {
        match p.get(key) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => vec![],
        }
    };
    match kind {
        "shell" => {
            let mut scripts: Vec<String> = Vec::new();
            let inline = str_list("inline");
            if !inline.is_empty() {
                let shebang = p.get("inline_shebang").and_then(|s| s.as_str()).unwrap_or("/bin/sh -e");
                scripts.push(format!("#!{shebang}\n{}\n", inline.join("\n")));
            }
            for path in str_list("script").into_iter().chain(str_list("scripts")) {
                let body = files.read_to_string("script", &path).map_err(|e| {
                    StepError::BuildFailed(format!("provisioner {i} (shell): {e}; chroot builds read scripts on the machine running the build"))
                })?;
                scripts.push(body);
            }
            // The environment goes into the uploaded script, not the command line: the host
            // script prints each command it runs, and a value may be a revealed secret.
            let exports: String = str_list("environment_vars").iter().map(|kv| match kv.split_once('=') {
                Some((k, v)) => format!("export {k}='{}'\n", v.replace('\'', "'\\''")),
                None => format!("export {kv}\n"),
            }).collect();
            for (n, body) in scripts.iter().enumerate() {
                let remote = format!("/tmp/amiflow-script-{i}-{n}.sh");
                let body = with_exports(body, &exports);
                put("UPLOAD", &format!("0700 {remote} {}", b64(reveal(&body).as_bytes())));
                put("COMMAND", &format!("{remote}; rc=$?; rm -f {remote}; exit $rc"));
            }
            Ok(())
        }
        "file" if p.get("content").is_some() => {
            let content = p.get("content").and_then(|c| c.as_str()).unwrap_or("");
            let dest = p.get("destination").and_then(|c| c.as_str()).unwrap_or("");
            if !dest.starts_with('/') {
                return Err(StepError::BuildFailed(format!("provisioner {i} (file): destination must be an absolute path inside the chroot, got {dest:?}")));
            }
            put("UPLOAD", &format!("0644 {dest} {}", b64(reveal(content).as_bytes())));
            Ok(())
        }
        other => Err(StepError::BuildFailed(format!(
            "provisioner {i} ({other}): amazon-chroot in amiflow runs shell provisioners (inline, script, scripts) and file provisioners with content; use one of those"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_only_for_hvm() {
        let mut cfg: ChrootConfig =
            serde_json::from_value(serde_json::json!({"ami_name": "x"})).unwrap();
        assert_eq!(mount_partition(&cfg, Some("hvm")), "1");
        assert_eq!(mount_partition(&cfg, Some("paravirtual")), "0");
        cfg.ami.ami_virtualization_type = Some("hvm".into());
        assert_eq!(mount_partition(&cfg, Some("paravirtual")), "1");
    }

    #[test]
    fn shell_inline_becomes_an_upload_and_a_command() {
        let mut lines = Vec::new();
        provisioner_lines(0, &serde_json::json!({"type": "shell", "inline": ["echo a", "echo b"], "environment_vars": ["X=it's"]}), &crate::template_files::TemplateFiles::default(), &|t| t.to_string(), &mut |k: &str, v: &str| lines.push((k.to_string(), v.to_string()))).unwrap();
        assert_eq!(lines[0].0, "UPLOAD");
        // The environment is in the script (readable by root only), not on the command line
        // the host script prints.
        let upload = lines[0]
            .1
            .strip_prefix("0700 /tmp/amiflow-script-0-0.sh ")
            .unwrap();
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD
            .decode(upload)
            .unwrap();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "#!/bin/sh -e\nexport X='it'\\''s'\necho a\necho b\n"
        );
        assert_eq!(
            lines[1],
            (
                "COMMAND".into(),
                "/tmp/amiflow-script-0-0.sh; rc=$?; rm -f /tmp/amiflow-script-0-0.sh; exit $rc"
                    .into()
            )
        );
        let err = provisioner_lines(
            1,
            &serde_json::json!({"type": "ansible"}),
            &crate::template_files::TemplateFiles::default(),
            &|t| t.to_string(),
            &mut |_: &str, _: &str| {},
        )
        .unwrap_err();
        assert!(err.message().contains("ansible"));
    }
}
