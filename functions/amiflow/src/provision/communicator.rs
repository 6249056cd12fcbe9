//! The communicator of a build resolved for use: where to connect, with which credentials.
//!
//! Built from the typed `amiflow_template::config::CommunicatorConfig`. Credentials never
//! enter the build state: the temporary key's private half is read from SSM Parameter
//! Store (the parameter *name* is in the state), a key file from disk, a password from
//! [`Secrets`] (the config never serialises `ssh_password`, so the local runner hands it
//! over with [`Secrets::set_ssh_password`]; deployed builds use keys).

use std::time::Duration;

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

/// Env var naming the deployed stack's artifacts bucket, the SSM staging fallback.
pub const ARTIFACTS_BUCKET_ENV: &str = "AMIFLOW_ARTIFACTS_BUCKET";

#[derive(Debug, Clone)]
pub struct Communication {
    pub communicator: Communicator,
    pub region: String,
    pub ssh_host: Option<String>,
    pub ssh_port: u16,
    pub ssh_username: Option<String>,
    pub ssh_private_key_file: Option<String>,
    pub ssh_keypair_name: Option<String>,
    pub ssh_interface: Option<String>,
    /// How long Connect waits: `ssh_timeout` for SSH, `ssm_timeout` for the SSM agent.
    pub timeout: Duration,
    pub ssh_pty: bool,
    pub ssh_clear_authorized_keys: bool,
    /// SSM: staging and full-output bucket (`ssm_output_s3_bucket`, else $AMIFLOW_ARTIFACTS_BUCKET).
    pub ssm_bucket: Option<String>,
    /// SSM: limit of each command unless the provisioner has a `timeout`.
    pub ssm_execution_timeout: Duration,
    /// `ssh_bastion_host` and friends.
    pub bastion: Option<Bastion>,
}

#[derive(Debug, Clone)]
pub struct Bastion {
    pub host: String,
    pub port: u16,
    /// `ssh_bastion_username`, else `ssh_username`.
    pub username: Option<String>,
    pub private_key_file: Option<String>,
}

impl Communication {
    pub fn from_config(
        c: &amiflow_template::config::CommunicatorConfig,
        region: &str,
    ) -> Result<Communication, StepError> {
        let communicator = match c.communicator.as_str() {
            "ssh" => Communicator::Ssh,
            "ssm" => Communicator::Ssm,
            "none" => Communicator::None,
            other => {
                return Err(StepError::BuildFailed(format!(
                    "communicator: {other:?} is not supported; use \"ssh\", \"ssm\" or \"none\""
                )))
            }
        };
        let ssh_interface = match (&c.ssh_interface, c.ssh_private_ip) {
            (Some(i), _) => Some(i.clone()),
            (None, Some(true)) => Some("private_ip".to_string()),
            _ => None,
        };
        Ok(Communication {
            communicator,
            region: region.to_string(),
            ssh_host: c.ssh_host.clone().filter(|h| !h.is_empty()),
            ssh_port: c.ssh_port,
            ssh_username: c.ssh_username.clone(),
            ssh_private_key_file: c.ssh_private_key_file.clone().filter(|f| !f.is_empty()),
            ssh_keypair_name: c.ssh_keypair_name.clone(),
            ssh_interface,
            timeout: if communicator == Communicator::Ssm {
                c.ssm_timeout.0
            } else {
                c.ssh_timeout.0
            },
            ssh_pty: c.ssh_pty,
            ssh_clear_authorized_keys: c.ssh_clear_authorized_keys,
            ssm_bucket: c
                .ssm_output_s3_bucket
                .clone()
                .or_else(|| std::env::var(ARTIFACTS_BUCKET_ENV).ok())
                .filter(|b| !b.is_empty()),
            ssm_execution_timeout: c.ssm_execution_timeout.0,
            bastion: c
                .ssh_bastion_host
                .clone()
                .filter(|h| !h.is_empty())
                .map(|host| Bastion {
                    host,
                    port: c.ssh_bastion_port,
                    username: c
                        .ssh_bastion_username
                        .clone()
                        .or_else(|| c.ssh_username.clone()),
                    private_key_file: c
                        .ssh_bastion_private_key_file
                        .clone()
                        .filter(|f| !f.is_empty()),
                }),
        })
    }

    /// The build's communicator; builders without one (chroot) count as `none`.
    pub fn of_state(state: &BuildState) -> Result<Communication, StepError> {
        let region = state.build.config.region().unwrap_or_default().to_string();
        match state.build.config.comm() {
            Some(c) => Communication::from_config(c, &region),
            None => Communication::from_config(&Default::default(), &region).map(|mut c| {
                c.communicator = Communicator::None;
                c
            }),
        }
    }

    /// The temporary key pair is used when neither a password nor a key file is given.
    pub fn uses_temporary_key(&self, secrets: &Secrets) -> bool {
        secrets.ssh_password().is_none() && self.ssh_private_key_file.is_none()
    }
}

pub fn ec2(ctx: &Ctx, region: &str) -> aws_sdk_ec2::Client {
    ctx.ec2(region)
}

pub fn ssm(ctx: &Ctx, region: &str) -> aws_sdk_ssm::Client {
    ctx.ssm(region)
}

pub fn s3(ctx: &Ctx, region: &str) -> aws_sdk_s3::Client {
    ctx.s3(region)
}

/// The address to connect to: `ssh_host`, else the instance's address chosen by
/// `ssh_interface` (default: public IP, else private IP, as Packer does in a VPC).
pub async fn resolve_host(
    ctx: &Ctx,
    state: &BuildState,
    cfg: &Communication,
) -> Result<String, StepError> {
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
        .map_err(|e| {
            StepError::Transient(format!(
                "DescribeInstances {instance_id}: {}",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            ))
        })?;
    let instance = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| {
            StepError::BuildFailed(format!("instance {instance_id} no longer exists"))
        })?;
    let pick = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(String::from);
    let host = match cfg.ssh_interface.as_deref() {
        Some("public_ip") => pick(instance.public_ip_address()),
        Some("private_ip") => pick(instance.private_ip_address()),
        Some("public_dns") => pick(instance.public_dns_name()),
        Some("private_dns") => pick(instance.private_dns_name()),
        Some("ipv6") => pick(instance.ipv6_address()),
        _ => pick(instance.public_ip_address()).or_else(|| pick(instance.private_ip_address())),
    };
    host.or_else(|| state.data.instance_host.clone())
        .ok_or_else(|| {
            StepError::NotReady(format!(
                "instance {instance_id} has no {} address yet",
                cfg.ssh_interface
                    .as_deref()
                    .unwrap_or("public or private IP")
            ))
        })
}

/// The SSH target with its credentials; every secret value is added to `secrets` for masking.
pub async fn ssh_target(
    ctx: &Ctx,
    state: &BuildState,
    cfg: &Communication,
    secrets: &mut Secrets,
    connect_timeout: Duration,
) -> Result<SshTarget, StepError> {
    let username = cfg.ssh_username.clone().ok_or_else(|| {
        StepError::BuildFailed("ssh_username: required for the SSH communicator".into())
    })?;
    let auth = if let Some(password) = secrets.ssh_password() {
        SshAuth::Password(password.to_string())
    } else if let Some(file) = &cfg.ssh_private_key_file {
        key_file_auth("ssh_private_key_file", file, secrets)?
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
        let pem = out
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default()
            .to_string();
        secrets.add_value(pem.clone());
        SshAuth::from_pem(&pem)
            .map_err(|e| StepError::BuildFailed(format!("SSM parameter {parameter}: {e}")))?
    };
    let host = resolve_host(ctx, state, cfg).await?;
    let bastion = match &cfg.bastion {
        None => None,
        Some(b) => {
            let auth = if let Some(file) = &b.private_key_file {
                key_file_auth("ssh_bastion_private_key_file", file, secrets)?
            } else if let Some(p) = secrets.bastion_password() {
                SshAuth::Password(p.to_string())
            } else {
                return Err(StepError::BuildFailed(
                    "ssh_bastion_host: needs ssh_bastion_private_key_file here (ssh_bastion_password never enters \
                     the build state; a local run passes it with the secrets)"
                        .into(),
                ));
            };
            let username = b.username.clone().ok_or_else(|| {
                StepError::BuildFailed("ssh_bastion_username: required (or ssh_username)".into())
            })?;
            Some(Box::new(SshTarget {
                host: b.host.clone(),
                port: b.port,
                username,
                auth,
                pty: false,
                connect_timeout,
                bastion: None,
            }))
        }
    };
    Ok(SshTarget {
        host,
        port: cfg.ssh_port,
        username,
        auth,
        pty: cfg.ssh_pty,
        connect_timeout,
        bastion,
    })
}

/// Logs in with the private key in `file` (the setting `option`); the key is added to
/// `secrets` for masking.
fn key_file_auth(option: &str, file: &str, secrets: &mut Secrets) -> Result<SshAuth, StepError> {
    let pem = std::fs::read_to_string(file)
        .map_err(|e| StepError::BuildFailed(format!("{option}: cannot read {file:?} ({e})")))?;
    secrets.add_value(pem.clone());
    SshAuth::from_pem(&pem).map_err(|e| StepError::BuildFailed(format!("{option} {file:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amiflow_template::config::CommunicatorConfig;
    use serde_json::json;

    fn comm(v: serde_json::Value) -> Communication {
        let c: CommunicatorConfig = serde_json::from_value(v).unwrap();
        Communication::from_config(&c, "eu-west-1").unwrap()
    }

    #[test]
    fn from_the_typed_config() {
        let c = comm(json!({"ssh_username": "ec2-user"}));
        assert_eq!(
            (c.communicator, c.ssh_port, c.timeout),
            (Communicator::Ssh, 22, Duration::from_secs(300))
        );
        assert!(c.uses_temporary_key(&Secrets::new()));
        let mut with_pw = Secrets::new();
        with_pw.set_ssh_password("pw");
        assert!(!c.uses_temporary_key(&with_pw));
        // Legacy ssh_private_ip folds into ssh_interface; ssm uses ssm_timeout.
        assert_eq!(
            comm(json!({"ssh_private_ip": true}))
                .ssh_interface
                .as_deref(),
            Some("private_ip")
        );
        let s =
            comm(json!({"communicator": "ssm", "ssm_timeout": "2m", "ssm_output_s3_bucket": "b"}));
        assert_eq!(
            (s.communicator, s.timeout, s.ssm_bucket.as_deref()),
            (Communicator::Ssm, Duration::from_secs(120), Some("b"))
        );
        let b = comm(json!({"ssh_username": "u", "ssh_bastion_host": "jump", "ssh_bastion_private_key_file": "/k"})).bastion.unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.username.as_deref()),
            ("jump", 22, Some("u"))
        );
        let bad: CommunicatorConfig =
            serde_json::from_value(json!({"communicator": "winrm"})).unwrap();
        assert!(Communication::from_config(&bad, "r")
            .unwrap_err()
            .message()
            .contains("winrm"));
    }
}
