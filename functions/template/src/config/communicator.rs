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
    /// `scp` (default) or `sftp`.
    #[serde(default)]
    pub ssh_file_transfer_method: Option<String>,
    /// `public_ip`, `private_ip`, `public_dns`, `private_dns`, `ipv6` or `session_manager`;
    /// unset = Packer's automatic choice.
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
    }

    /// Packer's rules, and amiflow's for `ssm`. `instance_profile`: the run config gives the
    /// instance an instance profile (`session_manager` needs one).
    pub(super) fn check(&self, c: &mut Check, instance_profile: bool) {
        match self.communicator.as_str() {
            "ssh" | "none" | "ssm" => {}
            "winrm" => c.err("communicator", "not supported: WinRM is not supported by amiflow; use \"ssm\" (no inbound port) or \"ssh\""),
            other => c.err("communicator", format!("invalid value {other:?}: must be one of ssh, ssm, none")),
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
            c.err("ssh_keypair_name", "requires ssh_private_key_file (or ssh_agent_auth: true): amiflow cannot log in with a key pair whose private key it does not have");
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
            c.err("ssh_bastion_host", "requires ssh_bastion_password, ssh_bastion_private_key_file or ssh_bastion_agent_auth: true");
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
        if !(30..=172_800).contains(&exec) {
            c.err(
                "ssm_execution_timeout",
                format!(
                    "out of range: {}; SSM runs a command for 30s to 48h",
                    self.ssm_execution_timeout
                ),
            );
        }
    }
}
