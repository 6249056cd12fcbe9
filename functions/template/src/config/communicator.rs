//! Communicator configuration: `ssh` (Packer's default), `none`, and `ssm`, amiflow's own
//! communicator (SSM RunCommand: no inbound port, no key material); with its defaults and rules.

use serde::{Deserialize, Serialize};

use super::check::Check;
use super::duration::Duration;

fn ssh() -> String {
    "ssh".into()
}
fn port_22() -> u16 {
    22
}
fn port_1080() -> u16 {
    1080
}
fn rsa() -> String {
    "rsa".into()
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn one_hour() -> Duration {
    Duration::from_secs(3600)
}
fn ten() -> u32 {
    10
}

/// The longest `ssh_timeout` / `ssm_timeout`: the Connect step's retry policy polls for about
/// an hour (functions/amiflow/src/steps/connect.rs), so a longer timeout would never be reached.
pub const MAX_CONNECT_WAIT: Duration = Duration::from_secs(55 * 60);

/// The longest `ssm_execution_timeout`: the Provision step's retry policy polls SSM commands
/// for about 8 hours (functions/amiflow/src/steps/provision.rs); SSM itself allows 48 hours.
pub const MAX_SSM_EXECUTION: Duration = Duration::from_secs(7 * 3600);

/// Present in ebs, ebssurrogate, ebsvolume and instance (chroot runs commands on its host).
///
/// SSH as in Packer: `ssh_password` ⇒ password auth;
/// `ssh_private_key_file` ⇒ that key; plus `ssh_keypair_name` ⇒ launch with that existing
/// pair; neither ⇒ a temporary key pair `temporary_key_pair_name` (default `packer_<uuid>`).
///
/// SSM (`communicator: "ssm"`): commands go through `AWS-RunShellScript`; the instance needs
/// an instance profile allowing SSM (`iam_instance_profile`, or a temporary one the build
/// creates). `ssm_timeout` bounds the wait for the agent to come online, `ssm_execution_timeout`
/// each command; output is also written to `ssm_output_s3_bucket` when set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommunicatorConfig {
    /// `ssh` (default), `none` or `ssm`.
    #[serde(default = "ssh")]
    pub communicator: String,
    #[serde(default)]
    pub pause_before_connecting: Option<Duration>,

    #[serde(default)]
    pub ssh_host: Option<String>,
    #[serde(default = "port_22")]
    pub ssh_port: u16,
    /// Required with `communicator: ssh`.
    #[serde(default)]
    pub ssh_username: Option<String>,
    #[serde(default, skip_serializing)]
    pub ssh_password: Option<String>,
    /// An existing key pair; needs `ssh_private_key_file` or `ssh_agent_auth`.
    #[serde(default)]
    pub ssh_keypair_name: Option<String>,
    #[serde(default)]
    pub ssh_private_key_file: Option<String>,
    #[serde(default)]
    pub ssh_certificate_file: Option<String>,
    #[serde(default)]
    pub ssh_agent_auth: bool,
    /// Default `packer_<uuid>`, chosen by the key pair step.
    #[serde(default)]
    pub temporary_key_pair_name: Option<String>,
    /// `rsa` (default) or `ed25519`.
    #[serde(default = "rsa")]
    pub temporary_key_pair_type: String,
    /// Accepted for compatibility; AWS picks the size.
    #[serde(default)]
    pub temporary_key_pair_bits: Option<u32>,
    /// `ssh_wait_timeout` is Packer's old name for it.
    #[serde(default = "five_minutes", alias = "ssh_wait_timeout")]
    pub ssh_timeout: Duration,
    #[serde(default = "ten")]
    pub ssh_handshake_attempts: u32,
    #[serde(default = "five_seconds")]
    pub ssh_keep_alive_interval: Duration,
    #[serde(default)]
    pub ssh_read_write_timeout: Option<Duration>,
    #[serde(default)]
    pub ssh_pty: bool,
    #[serde(default)]
    pub ssh_disable_agent_forwarding: bool,
    /// Remove the temporary public key from `~/.ssh/authorized_keys` before the image is taken.
    #[serde(default)]
    pub ssh_clear_authorized_keys: bool,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ssh_ciphers: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ssh_key_exchange_algorithms: Vec<String>,
    /// Files always go over SFTP: `sftp` is accepted, `scp` (Packer's default) refused.
    #[serde(default)]
    pub ssh_file_transfer_method: Option<String>,
    /// `public_ip`, `private_ip`, `public_dns`, `private_dns` or `ipv6`; unset = Packer's
    /// automatic choice. Packer's `session_manager` is refused (`communicator: ssm` instead).
    #[serde(default)]
    pub ssh_interface: Option<String>,
    /// Legacy: `true` means `ssh_interface: private_ip`; folded by `from_builder`.
    #[serde(default)]
    pub ssh_private_ip: Option<bool>,
    #[serde(default)]
    pub pause_before_ssm: Option<Duration>,
    #[serde(default)]
    pub session_manager_port: Option<u16>,

    #[serde(default)]
    pub ssh_bastion_host: Option<String>,
    #[serde(default = "port_22")]
    pub ssh_bastion_port: u16,
    #[serde(default)]
    pub ssh_bastion_username: Option<String>,
    #[serde(default, skip_serializing)]
    pub ssh_bastion_password: Option<String>,
    #[serde(default)]
    pub ssh_bastion_private_key_file: Option<String>,
    #[serde(default)]
    pub ssh_bastion_certificate_file: Option<String>,
    #[serde(default)]
    pub ssh_bastion_agent_auth: bool,
    #[serde(default)]
    pub ssh_bastion_interactive: bool,
    #[serde(default)]
    pub ssh_proxy_host: Option<String>,
    #[serde(default = "port_1080")]
    pub ssh_proxy_port: u16,
    #[serde(default)]
    pub ssh_proxy_username: Option<String>,
    #[serde(default, skip_serializing)]
    pub ssh_proxy_password: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ssh_local_tunnels: Vec<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub ssh_remote_tunnels: Vec<String>,

    /// How long to wait for the instance's SSM agent to come online (like `ssh_timeout`).
    #[serde(default = "five_minutes")]
    pub ssm_timeout: Duration,
    /// Limit for each provisioning command run through SSM.
    #[serde(default = "one_hour")]
    pub ssm_execution_timeout: Duration,
    /// Keep full command output in this bucket (SSM truncates inline output at 24 KB).
    #[serde(default)]
    pub ssm_output_s3_bucket: Option<String>,
    #[serde(default)]
    pub ssm_output_s3_key_prefix: Option<String>,
}

/// The WinRM keys that only describe the connection SSM makes unnecessary (credentials,
/// port, transport): a template written for WinRM keeps them, and they have nothing to do.
pub const WINRM_CONNECTION_KEYS: [&str; 7] = [
    "winrm_username",
    "winrm_password",
    "winrm_port",
    "winrm_use_ssl",
    "winrm_insecure",
    "winrm_use_ntlm",
    // The wait for the Administrator password WinRM would log in with.
    "windows_password_timeout",
];

/// A template written for WinRM, as amiflow runs it: over SSM (every AWS Windows AMI runs
/// the SSM agent; no inbound port, no password). `communicator: "winrm"` becomes `"ssm"`,
/// `winrm_timeout` becomes `ssm_timeout` (the wait for the agent, as it was the wait for
/// WinRM), and [`WINRM_CONNECTION_KEYS`] are dropped. Any other `winrm_*` key stays, to be
/// refused by name. Returns what was translated, for the warning validation prints.
pub fn from_winrm(raw: &mut serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut done = Vec::new();
    if raw.get("communicator").and_then(|v| v.as_str()) != Some("winrm") {
        return done;
    }
    raw.insert("communicator".into(), "ssm".into());
    done.push("communicator \"winrm\" runs over SSM (AWS-RunPowerShellScript)".to_string());
    if let Some(t) = raw.remove("winrm_timeout") {
        if !raw.contains_key("ssm_timeout") {
            raw.insert("ssm_timeout".into(), t);
            done.push("winrm_timeout is the wait for the SSM agent (ssm_timeout)".into());
        }
    }
    let dropped: Vec<&str> = WINRM_CONNECTION_KEYS
        .into_iter()
        .filter(|k| raw.remove(*k).is_some())
        .collect();
    if !dropped.is_empty() {
        done.push(format!(
            "{} not needed: SSM needs no credentials or port",
            dropped.join(", ")
        ));
    }
    done
}

/// Every communicator key a template may write, secrets (`ssh_password`, ...) excepted:
/// the keys of the serialized default (every field is serialized but the secrets).
pub fn keys() -> std::collections::BTreeSet<String> {
    let serde_json::Value::Object(fields) =
        serde_json::to_value(CommunicatorConfig::default()).expect("the config serializes")
    else {
        unreachable!("a struct serializes to an object")
    };
    fields.into_iter().map(|(k, _)| k).collect()
}

impl Default for CommunicatorConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every communicator key has a default")
    }
}

impl CommunicatorConfig {
    pub fn is_ssh(&self) -> bool {
        self.communicator == "ssh"
    }
    pub fn is_ssm(&self) -> bool {
        self.communicator == "ssm"
    }
    pub fn is_none(&self) -> bool {
        self.communicator == "none"
    }
    /// The port the temporary security group opens: `ssh_port` for SSH, none otherwise.
    pub fn port(&self) -> Option<u16> {
        self.is_ssh().then_some(self.ssh_port)
    }
}

impl CommunicatorConfig {
    /// Folds the legacy `ssh_private_ip` into `ssh_interface`; an explicit 0 for `ssh_port` or
    /// `ssh_handshake_attempts` means Packer's default (22, 10).
    pub(super) fn normalize(&mut self) {
        if self.ssh_private_ip == Some(true) && self.ssh_interface.is_none() {
            self.ssh_interface = Some("private_ip".into());
        }
        if self.ssh_port == 0 {
            self.ssh_port = 22;
        }
        if self.ssh_handshake_attempts == 0 {
            self.ssh_handshake_attempts = 10;
        }
        if self.ssh_bastion_port == 0 {
            self.ssh_bastion_port = 22;
        }
    }

    /// Packer's rules, and amiflow's for `ssm`. `instance_profile`: the run config gives the
    /// instance an instance profile (`session_manager` needs one).
    pub(super) fn check(&self, c: &mut Check, instance_profile: bool) {
        match self.communicator.as_str() {
            "ssh" | "none" | "ssm" => {}
            // A template's "winrm" became "ssm" before this check (`from_winrm`).
            "winrm" => c.err(
                "communicator",
                "not supported: amiflow runs WinRM templates over SSM; use \"ssm\"",
            ),
            other => c.err(
                "communicator",
                format!("invalid value {other:?}: must be one of ssh, ssm, none"),
            ),
        }
        if self.is_ssh() {
            self.check_ssh(c);
        }
        if self.is_ssm() {
            self.check_ssm(c);
        }
        if self.ssh_port == 0 {
            c.err("ssh_port", "out of range: must be from 1 to 65535");
        }
        c.one_of(
            "temporary_key_pair_type",
            Some(&self.temporary_key_pair_type),
            &["rsa", "ed25519"],
        );
        c.one_of(
            "ssh_file_transfer_method",
            self.ssh_file_transfer_method.as_deref(),
            &["scp", "sftp"],
        );
        let wait_key = if self.is_ssm() {
            "ssm_timeout"
        } else {
            "ssh_timeout"
        };
        let wait = if self.is_ssm() {
            self.ssm_timeout
        } else {
            self.ssh_timeout
        };
        if wait > MAX_CONNECT_WAIT {
            c.err(
                wait_key,
                format!("out of range: {wait}; at most {MAX_CONNECT_WAIT}: the Connect step polls for about an hour"),
            );
        }
        self.check_unsupported(c);
        c.one_of(
            "ssh_interface",
            self.ssh_interface.as_deref(),
            &[
                "public_ip",
                "private_ip",
                "public_dns",
                "private_dns",
                "ipv6",
                "session_manager",
            ],
        );
        if self.ssh_private_ip == Some(true)
            && self
                .ssh_interface
                .as_deref()
                .is_some_and(|i| i != "private_ip")
        {
            c.err("ssh_private_ip", "conflicts with ssh_interface: ssh_private_ip is the old spelling of ssh_interface \"private_ip\"; keep ssh_interface");
        }
        if self.ssh_interface.as_deref() == Some("session_manager") {
            if !self.is_ssh() {
                c.err("ssh_interface", "session_manager requires communicator ssh");
            }
            if !instance_profile {
                c.err("ssh_interface", "session_manager requires iam_instance_profile or temporary_iam_instance_profile_policy_document (the instance must reach SSM)");
            }
        }
    }

    fn check_ssh(&self, c: &mut Check) {
        if self.ssh_username.is_none() {
            c.err("ssh_username", "required with communicator ssh: the user to log in as (e.g. \"ec2-user\", \"ubuntu\"); or use communicator \"ssm\"");
        }
        if self.ssh_keypair_name.is_some()
            && self.ssh_private_key_file.is_none()
            && !self.ssh_agent_auth
        {
            c.err("ssh_keypair_name", "requires ssh_private_key_file: amiflow cannot log in with a key pair whose private key it does not have");
        }
        c.conflict(
            "ssh_password",
            self.ssh_password.is_some(),
            "ssh_private_key_file",
            self.ssh_private_key_file.is_some(),
            "choose password or key authentication",
        );
        if self.ssh_bastion_host.is_some()
            && !self.ssh_bastion_agent_auth
            && self.ssh_bastion_password.is_none()
            && self.ssh_bastion_private_key_file.is_none()
        {
            c.err(
                "ssh_bastion_host",
                "requires ssh_bastion_private_key_file: the key that logs in to the bastion",
            );
        }
    }

    fn check_ssm(&self, c: &mut Check) {
        for (key, set) in [
            ("ssh_password", self.ssh_password.is_some()),
            ("ssh_private_key_file", self.ssh_private_key_file.is_some()),
            ("ssh_keypair_name", self.ssh_keypair_name.is_some()),
        ] {
            if set {
                c.err(key, "conflicts with communicator ssm: SSM needs no SSH credentials; remove it or use communicator \"ssh\"");
            }
        }
        if self.ssm_output_s3_key_prefix.is_some() && self.ssm_output_s3_bucket.is_none() {
            c.err("ssm_output_s3_key_prefix", "requires ssm_output_s3_bucket");
        }
        let exec = self.ssm_execution_timeout.as_std().as_secs();
        if !(30..=MAX_SSM_EXECUTION.as_std().as_secs()).contains(&exec) {
            c.err(
                "ssm_execution_timeout",
                format!(
                    "out of range: {}; from 30s to {MAX_SSM_EXECUTION}: SSM runs a command for 30s to 48h, and the Provision step polls SSM commands for about 8 hours in all",
                    self.ssm_execution_timeout
                ),
            );
        }
    }

    /// Keys whose effect Connect and the SSH transport do not give, refused with the way round.
    fn check_unsupported(&self, c: &mut Check) {
        let defaults = CommunicatorConfig::default();
        c.unsupported(
            "pause_before_connecting",
            self.pause_before_connecting.is_some(),
            "Connect does not pause before connecting: give the first provisioner a \
             \"pause_before\" instead",
        );
        c.unsupported(
            "ssh_certificate_file",
            self.ssh_certificate_file.is_some(),
            "SSH certificates are not used: log in with ssh_private_key_file, or leave the keys \
             out for a temporary key pair",
        );
        c.unsupported(
            "ssh_agent_auth",
            self.ssh_agent_auth,
            "amiflow has no SSH agent: give ssh_private_key_file, or leave the keys out for a \
             temporary key pair",
        );
        c.unsupported(
            "temporary_key_pair_bits",
            self.temporary_key_pair_bits.is_some_and(|b| b != 0),
            "EC2 creates the temporary key pair and chooses its size: remove it \
             (temporary_key_pair_type chooses rsa or ed25519)",
        );
        c.unsupported(
            "ssh_handshake_attempts",
            self.ssh_handshake_attempts != defaults.ssh_handshake_attempts,
            "Connect retries the handshake until ssh_timeout, however many attempts that takes: \
             remove it and set ssh_timeout",
        );
        c.unsupported(
            "ssh_keep_alive_interval",
            self.ssh_keep_alive_interval != defaults.ssh_keep_alive_interval,
            "the SSH client sends a keep-alive every 5s (Packer's default): remove it",
        );
        c.unsupported(
            "ssh_read_write_timeout",
            self.ssh_read_write_timeout.is_some(),
            "bound a command with its provisioner's \"timeout\" instead: remove it",
        );
        for (key, set) in [
            ("ssh_ciphers", !self.ssh_ciphers.is_empty()),
            (
                "ssh_key_exchange_algorithms",
                !self.ssh_key_exchange_algorithms.is_empty(),
            ),
        ] {
            c.unsupported(
                key,
                set,
                "the SSH client (russh) negotiates among its own modern algorithms: remove it",
            );
        }
        c.unsupported(
            "ssh_file_transfer_method",
            self.ssh_file_transfer_method.as_deref() == Some("scp"),
            "files always go over SFTP (the instance's sshd needs its sftp subsystem, as most \
             have): set \"sftp\" or remove it",
        );
        c.unsupported(
            "ssh_interface",
            self.ssh_interface.as_deref() == Some("session_manager"),
            "SSH through a Session Manager tunnel is not supported: use \"communicator\": \"ssm\" \
             (commands through SSM RunCommand, no inbound port) instead",
        );
        for (key, set) in [
            ("pause_before_ssm", self.pause_before_ssm.is_some()),
            ("session_manager_port", self.session_manager_port.is_some()),
        ] {
            c.unsupported(
                key,
                set,
                "it only applies to ssh_interface \"session_manager\", which amiflow does not \
                 support: use \"communicator\": \"ssm\" instead",
            );
        }
        c.unsupported(
            "ssh_bastion_password",
            self.ssh_bastion_password.is_some(),
            "the bastion is reached with a key: set ssh_bastion_private_key_file",
        );
        for (key, set) in [
            (
                "ssh_bastion_certificate_file",
                self.ssh_bastion_certificate_file.is_some(),
            ),
            ("ssh_bastion_agent_auth", self.ssh_bastion_agent_auth),
            ("ssh_bastion_interactive", self.ssh_bastion_interactive),
        ] {
            c.unsupported(
                key,
                set,
                "the bastion is reached with ssh_bastion_private_key_file only: use that",
            );
        }
        for (key, set) in [
            ("ssh_proxy_host", self.ssh_proxy_host.is_some()),
            (
                "ssh_proxy_port",
                self.ssh_proxy_port != defaults.ssh_proxy_port,
            ),
            ("ssh_proxy_username", self.ssh_proxy_username.is_some()),
            ("ssh_proxy_password", self.ssh_proxy_password.is_some()),
        ] {
            c.unsupported(
                key,
                set,
                "SOCKS proxies are not supported: reach the instance directly or through \
                 ssh_bastion_host",
            );
        }
        for (key, set) in [
            ("ssh_local_tunnels", !self.ssh_local_tunnels.is_empty()),
            ("ssh_remote_tunnels", !self.ssh_remote_tunnels.is_empty()),
        ] {
            c.unsupported(key, set, "SSH tunnels are not opened: remove it");
        }
        c.unsupported(
            "ssm_output_s3_key_prefix",
            self.ssm_output_s3_key_prefix.is_some(),
            "command output goes under amiflow/<execution>/output in ssm_output_s3_bucket: remove it",
        );
    }
}
