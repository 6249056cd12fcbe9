//! Access configuration (reference §4.1): credentials, region, endpoint, API retries, polling.

use serde::{Deserialize, Serialize};

use super::common::Tags;

fn default_max_retries() -> u32 {
    10
}

/// How the builder reaches AWS. Present in every builder.
///
/// Credentials follow the seeds' order; the `amiflow` crate's `Ctx` implements it, this
/// config only says which source the template asks for ([`AccessConfig::credential_source`]):
/// 1. **Static**: `access_key` + `secret_key` (+ `token`) in the template.
/// 2. **Environment**: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
///    with Packer's fallbacks `AWS_ACCESS_KEY` / `AWS_SECRET_KEY`; they override the shared file.
/// 3. **Shared credentials file**: `shared_credentials_file` or `AWS_SHARED_CREDENTIALS_FILE`
///    (default `~/.aws/credentials`), profile from `profile`, else `AWS_PROFILE`, else `default`.
/// 4. **Task or instance role**: ECS container credentials, then EC2 instance metadata
///    (unless `skip_metadata_api_check`); in Lambda, the function's role.
///
/// `assume_role` applies on top of whichever source answered. The region comes from `region`,
/// else `AWS_REGION` / `AWS_DEFAULT_REGION`, else the profile (chroot: the build host's region).
///
/// Secrets (`access_key`, `secret_key`, `token`, `mfa_code`) are never serialized: the build
/// state carries none of them, and a deserialized config has them as `None`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccessConfig {
    #[serde(default, skip_serializing)]
    pub access_key: Option<String>,
    #[serde(default, skip_serializing)]
    pub secret_key: Option<String>,
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    #[serde(default, skip_serializing)]
    pub mfa_code: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub shared_credentials_file: Option<String>,
    /// EC2 endpoint override (e.g. a local emulator `http://127.0.0.1:5000`).
    #[serde(default)]
    pub custom_endpoint_ec2: Option<String>,
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    #[serde(default)]
    pub decode_authorization_messages: bool,
    /// SDK API retry count; 0 means Packer's default 10.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    #[serde(default)]
    pub skip_metadata_api_check: bool,
    #[serde(default)]
    pub skip_credential_validation: bool,
    /// Skip the region-name checks on `region`, `ami_regions` and `region_kms_key_ids`.
    #[serde(default)]
    pub skip_region_validation: bool,
    #[serde(default)]
    pub assume_role: Option<AssumeRoleConfig>,
    #[serde(default)]
    pub aws_polling: Option<AwsPolling>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AssumeRoleConfig {
    #[serde(default)]
    pub role_arn: String,
    #[serde(default, deserialize_with = "crate::config::weak::opt_u32")]
    pub duration_seconds: Option<u32>,
    #[serde(default)]
    pub external_id: Option<String>,
    /// An inline IAM policy (JSON text) limiting the session.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub policy_arns: Vec<String>,
    #[serde(default)]
    pub session_name: Option<String>,
    #[serde(default, deserialize_with = "crate::config::weak::string_map")]
    pub tags: Tags,
    #[serde(default, deserialize_with = "crate::config::weak::strings")]
    pub transitive_tag_keys: Vec<String>,
}

/// `aws_polling`: overrides `AWS_MAX_ATTEMPTS` / `AWS_POLL_DELAY_SECONDS` for waits (reference §7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsPolling {
    #[serde(default, deserialize_with = "crate::config::weak::opt_u32")]
    pub max_attempts: Option<u32>,
    #[serde(default, deserialize_with = "crate::config::weak::opt_u32")]
    pub delay_seconds: Option<u32>,
}

/// Which credential source the template itself selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `access_key`/`secret_key` (and `token`) given in the template.
    Static,
    /// `profile` and/or `shared_credentials_file` given: read the shared credentials file
    /// (`file` None = `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`; `profile` None =
    /// `AWS_PROFILE` or `default`).
    SharedFile {
        profile: Option<String>,
        file: Option<String>,
    },
    /// Nothing in the template: environment, then shared file with `AWS_PROFILE`, then the
    /// task or instance role (not the metadata service when `skip_metadata_api_check`).
    DefaultChain { skip_metadata_api_check: bool },
}

impl AccessConfig {
    pub fn credential_source(&self) -> CredentialSource {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if set(&self.access_key) && set(&self.secret_key) {
            CredentialSource::Static
        } else if set(&self.profile) || set(&self.shared_credentials_file) {
            CredentialSource::SharedFile {
                profile: self.profile.clone().filter(|s| !s.is_empty()),
                file: self
                    .shared_credentials_file
                    .clone()
                    .filter(|s| !s.is_empty()),
            }
        } else {
            CredentialSource::DefaultChain {
                skip_metadata_api_check: self.skip_metadata_api_check,
            }
        }
    }

    /// `max_retries` with Packer's rule: 0 means 10.
    pub fn effective_max_retries(&self) -> u32 {
        if self.max_retries == 0 {
            10
        } else {
            self.max_retries
        }
    }
}

impl Default for AccessConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every key has a default")
    }
}
