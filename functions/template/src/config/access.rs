//! Access configuration: credentials, region, endpoint, API retries, polling; with its
//! defaults and rules.

use serde::{Deserialize, Serialize};

use super::check::{is_role_arn, templated, Check};
use super::common::Tags;

fn default_max_retries() -> u32 {
    10
}

/// The most API retries a template may ask for: the SDK retries each call that many times
/// with backoff, so a larger count only makes a failing build hang.
pub const MAX_RETRIES: u32 = 100;

/// The longest wait `aws_polling` may ask for (max_attempts × delay_seconds), in seconds.
pub const MAX_POLLING_SECONDS: u64 = 7 * 24 * 3600;

/// How the builder reaches AWS. Present in every builder.
///
/// Credentials are looked for in this order; the `amiflow` crate's `Ctx` implements it, this
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

/// `aws_polling`: overrides `AWS_MAX_ATTEMPTS` / `AWS_POLL_DELAY_SECONDS` for waits.
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

impl AccessConfig {
    /// Packer's defaults: an explicit `max_retries: 0` means 10.
    pub(super) fn normalize(&mut self) {
        if self.max_retries == 0 {
            self.max_retries = 10;
        }
    }

    /// Packer's rules. `region_from_host`: the builder may leave `region` to its build host
    /// (chroot); the others need it, or `AWS_REGION` / `AWS_DEFAULT_REGION` in `env`.
    pub(super) fn check(
        &self,
        c: &mut Check,
        region_from_host: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        match self.region.as_deref() {
            None => {
                let from_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                    .iter()
                    .any(|k| env(k).is_some_and(|v| !v.is_empty()));
                if !region_from_host && !from_env {
                    c.err("region", "required: set the AWS region to build in, e.g. \"us-east-1\" (or export AWS_REGION / AWS_DEFAULT_REGION)");
                }
            }
            Some(r) => {
                if !self.skip_region_validation {
                    c.region("region", r);
                }
            }
        }
        let key_set = self.access_key.is_some();
        let secret_set = self.secret_key.is_some();
        if key_set != secret_set {
            let (has, lacks) = if key_set {
                ("access_key", "secret_key")
            } else {
                ("secret_key", "access_key")
            };
            c.err(has, format!("required together: {has} is set but {lacks} is not; give both, or neither to use the environment, profile or role"));
        }
        if let Some(ar) = &self.assume_role {
            if ar.role_arn.is_empty() {
                c.err("assume_role.role_arn", "required: assume_role needs role_arn, e.g. \"arn:aws:iam::123456789012:role/packer\"");
            } else if !templated(&ar.role_arn) && !is_role_arn(&ar.role_arn) {
                c.err(
                    "assume_role.role_arn",
                    format!(
                        "{:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)",
                        ar.role_arn
                    ),
                );
            }
            if let Some(d) = ar.duration_seconds {
                if !(900..=43200).contains(&d) {
                    c.err(
                        "assume_role.duration_seconds",
                        format!("out of range: {d}; must be from 900 to 43200 seconds"),
                    );
                }
            }
        }
        c.range(
            "max_retries",
            Some(i64::from(self.max_retries)),
            0..=i64::from(MAX_RETRIES),
            " (0 means 10)",
        );
        if let Some(p) = &self.aws_polling {
            p.check(c);
        }
        self.check_unsupported(c);
        if let Some(endpoint) = &self.custom_endpoint_ec2 {
            if endpoint.contains("://")
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                c.err(
                    "custom_endpoint_ec2",
                    format!("{endpoint:?} must be an http:// or https:// URL"),
                );
            }
        }
    }
}

impl AccessConfig {
    /// Keys whose effect the steps do not give, refused with the way round.
    fn check_unsupported(&self, c: &mut Check) {
        c.unsupported(
            "mfa_code",
            self.mfa_code.as_deref().is_some_and(|m| !m.is_empty()),
            "the steps run unattended and cannot use a one-time code: make session credentials \
             first (aws sts get-session-token --serial-number ARN --token-code CODE) and give them \
             through the environment or a profile",
        );
        c.unsupported(
            "insecure_skip_tls_verify",
            self.insecure_skip_tls_verify,
            "TLS certificates are always verified: give custom_endpoint_ec2 an http:// URL for a \
             local emulator, or an endpoint whose certificate is trusted",
        );
        c.unsupported(
            "decode_authorization_messages",
            self.decode_authorization_messages,
            "errors keep their encoded authorization message: decode one with \
             aws sts decode-authorization-message --encoded-message MESSAGE",
        );
        c.unsupported(
            "skip_metadata_api_check",
            self.skip_metadata_api_check
                && matches!(
                    self.credential_source(),
                    CredentialSource::DefaultChain { .. }
                ),
            "the default credential chain ends with the instance metadata service: to leave it \
             out, export AWS_EC2_METADATA_DISABLED=true, or give a profile or access_key",
        );
        if let Some(ar) = &self.assume_role {
            c.unsupported(
                "assume_role.transitive_tag_keys",
                !ar.transitive_tag_keys.is_empty(),
                "the role is assumed without transitive session tags: remove it, or assume the \
                 role beforehand (aws sts assume-role --transitive-tag-keys ...) and give the \
                 session's credentials",
            );
        }
    }
}

impl AwsPolling {
    /// The wait it asks for stays within [`MAX_POLLING_SECONDS`].
    fn check(&self, c: &mut Check) {
        c.range(
            "aws_polling.delay_seconds",
            self.delay_seconds.map(i64::from),
            0..=3600,
            " seconds between two polls",
        );
        let delay = u64::from(self.delay_seconds.filter(|d| *d > 0).unwrap_or(2));
        if let Some(n) = self.max_attempts {
            let wait = u64::from(n) * delay;
            if wait > MAX_POLLING_SECONDS {
                c.err(
                    "aws_polling.max_attempts",
                    format!(
                        "out of range: {n} polls {delay} s apart wait {wait} s; at most {MAX_POLLING_SECONDS} s (7 days) in all"
                    ),
                );
            }
        }
    }
}

impl Default for AccessConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every key has a default")
    }
}
