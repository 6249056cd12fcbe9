//! The communicator keys of a build (Packer's `communicator.Config` subset amiflow uses),
//! where to connect, and with which credentials.
//!
//! Read from the builder's config object; a stand-in until the `config` helper's typed
//! communicator config is merged. Credentials never enter the build state: the temporary
//! key's private half is read from SSM Parameter Store (the parameter *name* is in the
//! state), a key file from disk, a password from the template's sensitive variables.

use std::time::Duration;

use serde_json::{Map, Value};

use super::config::parse_duration;
use super::render::Secrets;
use super::ssh::{SshAuth, SshTarget};
use crate::{BuildState, Ctx, StepError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Communicator {
    Ssh,
    /// amiflow's own: SSM RunCommand, no inbound port, no key material.
    Ssm,
    None,
}

/// Packer's default `ssh_timeout`.
pub const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct CommunicatorConfig {
    pub communicator: Communicator,
    pub region: String,
    pub ssh_host: Option<String>,
    pub ssh_port: u16,
    pub ssh_username: Option<String>,
    /// May be a sensitive-variable placeholder; revealed only when connecting.
    pub ssh_password: Option<String>,
    pub ssh_private_key_file: Option<String>,
    pub ssh_keypair_name: Option<String>,
    pub ssh_interface: Option<String>,
    /// How long Connect waits for the communicator (`ssh_timeout`, also used for the SSM agent).
    pub timeout: Duration,
    pub ssh_pty: bool,
    pub ssh_clear_authorized_keys: bool,
    /// S3 bucket for SSM file staging and full command output (`ssm_bucket`).
    pub ssm_bucket: Option<String>,
}

fn str_of(m: &Map<String, Value>, k: &str) -> Option<String> {
    match m.get(k)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn bool_of(m: &Map<String, Value>, k: &str) -> Result<bool, String> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(other) => Err(format!("{k}: expected true or false, got {other}")),
    }
}

impl CommunicatorConfig {
    /// Reads the keys from a builder's config object; every problem names its key.
    pub fn from_builder(m: &Map<String, Value>) -> Result<CommunicatorConfig, Vec<String>> {
        let mut problems = Vec::new();
        let communicator = match str_of(m, "communicator").as_deref() {
            None | Some("ssh") => Communicator::Ssh,
            Some("ssm") => Communicator::Ssm,
            Some("none") => Communicator::None,
            Some(other) => {
                problems.push(format!("communicator: {other:?} is not supported; use \"ssh\", \"ssm\" or \"none\""));
                Communicator::None
            }
        };
        let ssh_port = match str_of(m, "ssh_port") {
            None => 22,
            Some(p) => p.parse().unwrap_or_else(|_| {
                problems.push(format!("ssh_port: {p:?} is not a port number"));
                22
            }),
        };
        let timeout = match str_of(m, "ssh_timeout").or_else(|| str_of(m, "ssh_wait_timeout")) {
            None => DEFAULT_SSH_TIMEOUT,
            Some(t) => parse_duration(&t).unwrap_or_else(|e| {
                problems.push(format!("ssh_timeout: {e}"));
                DEFAULT_SSH_TIMEOUT
            }),
        };
        let ssh_interface = str_of(m, "ssh_interface");
        if let Some(i) = &ssh_interface {
            if !["public_ip", "private_ip", "public_dns", "private_dns", "ipv6"].contains(&i.as_str()) {
                problems.push(format!(
                    "ssh_interface: {i:?} is not supported; use public_ip, private_ip, public_dns, private_dns or ipv6 \
                     (for session_manager use \"communicator\": \"ssm\")"
                ));
            }
        }
        let ssh_pty = bool_of(m, "ssh_pty").unwrap_or_else(|e| {
            problems.push(e);
            false
        });
        let ssh_clear_authorized_keys = bool_of(m, "ssh_clear_authorized_keys").unwrap_or_else(|e| {
            problems.push(e);
            false
        });
        let cfg = CommunicatorConfig {
            communicator,
            region: str_of(m, "region").unwrap_or_default(),
            ssh_host: str_of(m, "ssh_host"),
            ssh_port,
            ssh_username: str_of(m, "ssh_username"),
            ssh_password: str_of(m, "ssh_password"),
            ssh_private_key_file: str_of(m, "ssh_private_key_file"),
            ssh_keypair_name: str_of(m, "ssh_keypair_name"),
            ssh_interface,
            timeout,
            ssh_pty,
            ssh_clear_authorized_keys,
            ssm_bucket: str_of(m, "ssm_bucket"),
        };
        if cfg.communicator == Communicator::Ssh && cfg.ssh_username.is_none() {
            problems.push("ssh_username: required for the SSH communicator (e.g. \"ec2-user\" or \"ubuntu\")".into());
        }
        if cfg.ssh_keypair_name.is_some() && cfg.ssh_private_key_file.is_none() {
            problems.push("ssh_keypair_name: needs ssh_private_key_file (the private half of that key pair)".into());
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems)
        }
    }

    pub fn of_state(state: &BuildState) -> Result<CommunicatorConfig, StepError> {
        CommunicatorConfig::from_builder(&state.build.config.0).map_err(|p| StepError::BuildFailed(p.join("; ")))
    }

    /// The temporary key pair is used when neither a password nor a key file is given.
    pub fn uses_temporary_key(&self) -> bool {
        self.ssh_password.is_none() && self.ssh_private_key_file.is_none()
    }
}

pub fn ec2(ctx: &Ctx, region: &str) -> aws_sdk_ec2::Client {
    ctx.ec2(region)
}

pub fn ssm(ctx: &Ctx, region: &str) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::config::Builder::from(&ctx.sdk).region(aws_types::region::Region::new(region.to_string())).build();
    aws_sdk_ssm::Client::from_conf(conf)
}

pub fn s3(ctx: &Ctx, region: &str) -> aws_sdk_s3::Client {
    // Path-style works against every S3 endpoint and is required by local emulators.
    let conf = aws_sdk_s3::config::Builder::from(&ctx.sdk)
        .region(aws_types::region::Region::new(region.to_string()))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The address to connect to: `ssh_host`, else the instance's address chosen by
/// `ssh_interface` (default: public IP, else private IP, as Packer does in a VPC).
pub async fn resolve_host(ctx: &Ctx, state: &BuildState, cfg: &CommunicatorConfig) -> Result<String, StepError> {
    if let Some(h) = &cfg.ssh_host {
        return Ok(h.clone());
    }
    let Some(instance_id) = &state.data.instance_id else {
        return state.data.instance_host.clone().ok_or_else(|| {
            StepError::BuildFailed("no instance to connect to: the build state has no instance_id (did RunSourceInstance run?)".into())
        });
    };
    let out = ec2(ctx, &cfg.region)
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| StepError::Transient(format!("DescribeInstances {instance_id}: {}", aws_smithy_types::error::display::DisplayErrorContext(&e))))?;
    let instance = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| StepError::BuildFailed(format!("instance {instance_id} no longer exists")))?;
    let pick = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(String::from);
    let host = match cfg.ssh_interface.as_deref() {
        Some("public_ip") => pick(instance.public_ip_address()),
        Some("private_ip") => pick(instance.private_ip_address()),
        Some("public_dns") => pick(instance.public_dns_name()),
        Some("private_dns") => pick(instance.private_dns_name()),
        Some("ipv6") => pick(instance.ipv6_address()),
        _ => pick(instance.public_ip_address()).or_else(|| pick(instance.private_ip_address())),
    };
    host.or_else(|| state.data.instance_host.clone()).ok_or_else(|| {
        StepError::NotReady(format!(
            "instance {instance_id} has no {} address yet",
            cfg.ssh_interface.as_deref().unwrap_or("public or private IP")
        ))
    })
}

/// The SSH target with its credentials; every secret value is added to `secrets` for masking.
pub async fn ssh_target(
    ctx: &Ctx,
    state: &BuildState,
    cfg: &CommunicatorConfig,
    secrets: &mut Secrets,
    connect_timeout: Duration,
) -> Result<SshTarget, StepError> {
    let username = cfg
        .ssh_username
        .clone()
        .ok_or_else(|| StepError::BuildFailed("ssh_username: required for the SSH communicator".into()))?;
    let auth = if let Some(password) = &cfg.ssh_password {
        let revealed = secrets.reveal(password);
        secrets.add_value(revealed.clone());
        SshAuth::Password(revealed)
    } else if let Some(file) = &cfg.ssh_private_key_file {
        let pem = std::fs::read_to_string(file)
            .map_err(|e| StepError::BuildFailed(format!("ssh_private_key_file: cannot read {file:?} ({e})")))?;
        secrets.add_value(pem.clone());
        SshAuth::from_pem(&pem).map_err(|e| StepError::BuildFailed(format!("ssh_private_key_file {file:?}: {e}")))?
    } else {
        let parameter = state.data.private_key_parameter.clone().ok_or_else(|| {
            StepError::BuildFailed(
                "no SSH credentials: give ssh_password or ssh_private_key_file, or let KeyPair create the temporary key pair".into(),
            )
        })?;
        let out = ssm(ctx, &cfg.region)
            .get_parameter()
            .name(&parameter)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                StepError::BuildFailed(format!(
                    "cannot read the temporary private key from SSM parameter {parameter}: {} (the role needs ssm:GetParameter on it)",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                ))
            })?;
        let pem = out.parameter().and_then(|p| p.value()).unwrap_or_default().to_string();
        secrets.add_value(pem.clone());
        SshAuth::from_pem(&pem).map_err(|e| StepError::BuildFailed(format!("SSM parameter {parameter}: {e}")))?
    };
    let host = resolve_host(ctx, state, cfg).await?;
    Ok(SshTarget { host, port: cfg.ssh_port, username, auth, pty: cfg.ssh_pty, connect_timeout })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_problems() {
        let m = json!({"ssh_username": "ec2-user", "region": "us-east-1"});
        let c = CommunicatorConfig::from_builder(m.as_object().unwrap()).unwrap();
        assert_eq!((c.communicator, c.ssh_port, c.timeout), (Communicator::Ssh, 22, DEFAULT_SSH_TIMEOUT));
        assert!(c.uses_temporary_key());
        let bad = json!({"ssh_port": "x", "ssh_timeout": "soon", "ssh_interface": "session_manager", "ssh_keypair_name": "k"});
        let problems = CommunicatorConfig::from_builder(bad.as_object().unwrap()).unwrap_err();
        for key in ["ssh_port", "ssh_timeout", "ssh_interface", "ssh_username", "ssh_keypair_name"] {
            assert!(problems.iter().any(|p| p.starts_with(key)), "{key} missing in {problems:?}");
        }
        let ssm = json!({"communicator": "ssm"});
        assert_eq!(CommunicatorConfig::from_builder(ssm.as_object().unwrap()).unwrap().communicator, Communicator::Ssm);
    }
}
