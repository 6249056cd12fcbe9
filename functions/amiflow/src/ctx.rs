//! AWS clients for a step, built from the credential chain Packer documents.
//!
//! Order (local runs): the template's static keys (`access_key`/`secret_key`/`token`),
//! environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or Packer's
//! `AWS_ACCESS_KEY`/`AWS_SECRET_KEY`), the shared credentials file (`profile` or
//! `AWS_PROFILE`; `shared_credentials_file` or `AWS_SHARED_CREDENTIALS_FILE`), then the
//! container or instance role; `assume_role` goes on top of whichever answered.
//!
//! Endpoints: aws-config honours `AWS_ENDPOINT_URL` and the per-service
//! `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_SSM`, … (checked by a test below), which is how
//! the demo and the tests point every client at the local emulator; the template's
//! `custom_endpoint_ec2` overrides the EC2 one. Retries: the SDK's standard mode with
//! `max_retries` attempts (Packer's default 10; the SDK's 3 "regularly gets tripped").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

use crate::StepError;

/// Packer's default for `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 10;

pub use amiflow_template::config::{AccessConfig, AssumeRoleConfig};

/// The clients a step uses, cached per region, and what a step needs to know about the
/// invocation running it. A clone shares the client caches (the Lambda binary clones its
/// cold-start `Ctx` for each invocation, to set that invocation's deadline).
#[derive(Clone)]
pub struct Ctx {
    pub sdk: SdkConfig,
    /// The template's `custom_endpoint_ec2`, when given.
    pub ec2_endpoint: Option<String>,
    ec2: Arc<Mutex<HashMap<String, aws_sdk_ec2::Client>>>,
    ssm: Arc<Mutex<HashMap<String, aws_sdk_ssm::Client>>>,
    s3: Arc<Mutex<HashMap<String, aws_sdk_s3::Client>>>,
    iam: Arc<Mutex<Option<aws_sdk_iam::Client>>>,
    sts: Arc<Mutex<HashMap<String, aws_sdk_sts::Client>>>,
    /// Sensitive values of a local run (sensitive variables, `ssh_password`), revealed by
    /// Connect/Provision at the moment of use; empty in Lambda, where nothing carries them.
    pub secrets: crate::provision::Secrets,
    /// Where a local run resolves relative script and file paths (the template's directory).
    pub base_dir: Option<std::path::PathBuf>,
    /// What `{{env}}` sees when Prepare runs locally. Empty in Lambda, where the process
    /// environment holds the function's own credentials.
    pub env: std::collections::BTreeMap<String, String>,
    /// When the current invocation must have returned: Lambda's deadline for this
    /// invocation, set by the Lambda binary; None outside Lambda (no limit).
    pub deadline: Option<tokio::time::Instant>,
    /// Running as a Lambda function (set by the Lambda binary): steps refuse what cannot
    /// work there, such as `shell-local` provisioners.
    pub in_lambda: bool,
    /// The deployed stack's defaults for what a template leaves out; none in a local build.
    pub stack: StackDefaults,
    /// Who answers a local run's Approve state (`amiflow build` sets it for a pipeline with
    /// `approval`); None in Lambda, where `amiflow approve|reject` answers the task token.
    pub approver: Option<crate::steps::approve::LocalApprover>,
}

/// What the stack's parameters `DefaultVpcId`, `DefaultSubnetId` and `BuildHostInstanceId`
/// give every function (as `AMIFLOW_DEFAULT_VPC_ID`, `AMIFLOW_DEFAULT_SUBNET_ID`,
/// `AMIFLOW_BUILD_HOST_INSTANCE_ID`; infra.rs): used when a template names none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackDefaults {
    /// The stack's own region (`AWS_REGION` of the function): the default VPC and subnet
    /// exist only there, so a build in another region falls back to EC2's defaults.
    pub region: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    /// amazon-chroot's build host: Lambda has no instance metadata to find one by.
    pub build_host_instance_id: Option<String>,
    /// The stack's name: the value of the `amiflow:build-host` tag on the build hosts it may
    /// use (HostInfo refuses any other). None when not deployed.
    pub stack_name: Option<String>,
    /// The managed policy every temporary instance profile role gets as its permissions
    /// boundary (the deployed roles may create one only with it).
    pub temporary_role_boundary: Option<String>,
    /// The role UploadBundle assumes, scoped down to the bundle's own objects, for the
    /// credentials `bundle_upload_command` is handed: never the function's own.
    pub bundle_upload_role: Option<String>,
}

impl StackDefaults {
    pub const VPC_ENV: &'static str = "AMIFLOW_DEFAULT_VPC_ID";
    pub const SUBNET_ENV: &'static str = "AMIFLOW_DEFAULT_SUBNET_ID";
    pub const BUILD_HOST_ENV: &'static str = "AMIFLOW_BUILD_HOST_INSTANCE_ID";
    pub const STACK_NAME_ENV: &'static str = "AMIFLOW_STACK_NAME";
    pub const ROLE_BOUNDARY_ENV: &'static str = "AMIFLOW_TEMPORARY_ROLE_BOUNDARY";
    pub const BUNDLE_UPLOAD_ROLE_ENV: &'static str = "AMIFLOW_BUNDLE_UPLOAD_ROLE_ARN";

    /// The stack's default VPC and subnet for a build in `region`: none elsewhere.
    pub fn network_in(&self, region: &str) -> (Option<String>, Option<String>) {
        if self.region.as_deref() == Some(region) {
            (self.vpc_id.clone(), self.subnet_id.clone())
        } else {
            (None, None)
        }
    }

    /// From the function's environment; an empty variable (the parameter's default) is none.
    pub fn from_env() -> StackDefaults {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        StackDefaults {
            region: var("AWS_REGION"),
            vpc_id: var(Self::VPC_ENV),
            subnet_id: var(Self::SUBNET_ENV),
            build_host_instance_id: var(Self::BUILD_HOST_ENV),
            stack_name: var(Self::STACK_NAME_ENV),
            temporary_role_boundary: var(Self::ROLE_BOUNDARY_ENV),
            bundle_upload_role: var(Self::BUNDLE_UPLOAD_ROLE_ENV),
        }
    }
}

impl Ctx {
    /// Whose `execution`'s SSM parameters are, as this function sees it: its stack's
    /// deployed ([`crate::identity::parameter_owner`]), the execution's alone locally.
    pub fn parameter_owner(&self, execution: &str) -> String {
        crate::identity::parameter_owner(
            self.stack.stack_name.as_deref().unwrap_or_default(),
            execution,
        )
    }

    /// The function's own region: where the stack is, and so the parameters it keeps for an
    /// execution (sensitive variables, the approval token).
    pub fn own_region(&self) -> String {
        self.sdk
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// Clients from the environment's credential chain (Lambda: the function's role).
    pub async fn from_env() -> Ctx {
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(DEFAULT_MAX_RETRIES))
            .load()
            .await;
        let mut ctx = Ctx::from_sdk_config(sdk);
        ctx.stack = StackDefaults::from_env();
        ctx
    }

    /// Clients from an already loaded SDK config (tests, callers with their own chain).
    pub fn from_sdk_config(sdk: SdkConfig) -> Ctx {
        Ctx {
            sdk,
            ec2_endpoint: None,
            ec2: Arc::default(),
            ssm: Arc::default(),
            s3: Arc::default(),
            iam: Arc::default(),
            sts: Arc::default(),
            secrets: Default::default(),
            base_dir: None,
            env: Default::default(),
            deadline: None,
            in_lambda: false,
            approver: None,
            stack: StackDefaults::default(),
        }
    }

    /// Clients for a local build of a template, following Packer's credential order.
    pub async fn for_build(access: &AccessConfig) -> Result<Ctx, StepError> {
        let max_attempts = Some(access.max_retries)
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_RETRIES);
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(max_attempts));
        if let Some(region) = access.region.as_deref().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(region.to_string()));
        }
        match (&access.access_key, &access.secret_key) {
            (Some(key), Some(secret)) if !key.is_empty() => {
                let token = access
                    .token
                    .clone()
                    .or_else(|| std::env::var("AWS_SESSION_TOKEN").ok());
                loader = loader
                    .credentials_provider(Credentials::new(key, secret, token, None, "template"));
            }
            (Some(_), None) | (None, Some(_)) => return Err(StepError::BuildFailed(
                "access_key and secret_key must be set together: set both, or neither to use the \
                     environment, the shared credentials file or the instance role"
                    .into(),
            )),
            _ => {
                if let Some(creds) = packer_env_credentials() {
                    loader = loader.credentials_provider(creds);
                }
            }
        }
        if let Some(profile) = access.profile.as_deref().filter(|p| !p.is_empty()) {
            loader = loader.profile_name(profile);
        }
        // The re-export is deprecated in favour of aws-runtime, not a direct dependency.
        #[allow(deprecated)]
        if let Some(file) = access
            .shared_credentials_file
            .as_deref()
            .filter(|p| !p.is_empty())
        {
            use aws_config::profile::profile_file::{ProfileFileKind, ProfileFiles};
            let files = ProfileFiles::builder()
                .include_default_config_file(true)
                .with_file(ProfileFileKind::Credentials, file)
                .build();
            loader = loader.profile_files(files);
        }
        let mut sdk = loader.load().await;
        if let Some(role) = &access.assume_role {
            let base = sdk.credentials_provider().ok_or_else(|| {
                StepError::BuildFailed(format!(
                    "assume_role {}: no base credentials were found to assume it with",
                    role.role_arn
                ))
            })?;
            let mut builder = aws_config::sts::AssumeRoleProvider::builder(&role.role_arn)
                .session_name(
                    role.session_name
                        .clone()
                        .unwrap_or_else(|| "amiflow".into()),
                )
                .configure(&sdk);
            if let Some(id) = &role.external_id {
                builder = builder.external_id(id);
            }
            if let Some(p) = &role.policy {
                builder = builder.policy(p);
            }
            if !role.policy_arns.is_empty() {
                builder = builder.policy_arns(role.policy_arns.clone());
            }
            if let Some(s) = role.duration_seconds {
                builder = builder.session_length(Duration::from_secs(u64::from(s)));
            }
            if !role.tags.is_empty() {
                builder = builder.tags(role.tags.clone());
            }
            let provider = builder.build_from_provider(base).await;
            sdk = sdk
                .into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build();
        }
        let mut ctx = Ctx::from_sdk_config(sdk);
        ctx.ec2_endpoint = access.custom_endpoint_ec2.clone().filter(|e| !e.is_empty());
        Ok(ctx)
    }

    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let mut cache = self.ec2.lock().unwrap();
        cache
            .entry(region.to_string())
            .or_insert_with(|| {
                let mut conf = aws_sdk_ec2::config::Builder::from(&self.sdk)
                    .region(Region::new(region.to_string()));
                if let Some(url) = &self.ec2_endpoint {
                    conf = conf.endpoint_url(url);
                }
                aws_sdk_ec2::Client::from_conf(conf.build())
            })
            .clone()
    }

    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let mut cache = self.ssm.lock().unwrap();
        cache
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_ssm::config::Builder::from(&self.sdk)
                    .region(Region::new(region.to_string()));
                aws_sdk_ssm::Client::from_conf(conf.build())
            })
            .clone()
    }

    pub fn s3(&self, region: &str) -> aws_sdk_s3::Client {
        let mut cache = self.s3.lock().unwrap();
        cache
            .entry(region.to_string())
            .or_insert_with(|| {
                // Path style: moto and custom endpoints do not resolve bucket subdomains.
                let path_style = self.sdk.endpoint_url().is_some();
                let conf = aws_sdk_s3::config::Builder::from(&self.sdk)
                    .region(Region::new(region.to_string()))
                    .force_path_style(path_style);
                aws_sdk_s3::Client::from_conf(conf.build())
            })
            .clone()
    }

    /// IAM is global: one client.
    pub fn iam(&self) -> aws_sdk_iam::Client {
        self.iam
            .lock()
            .unwrap()
            .get_or_insert_with(|| aws_sdk_iam::Client::new(&self.sdk))
            .clone()
    }

    /// SNS, EventBridge and Secrets Manager are called once a run (a pipeline's
    /// notification, a template's secrets): built when asked, not cached.
    pub fn sns(&self, region: &str) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(&self.sdk)
                .region(Region::new(region.to_string()))
                .build(),
        )
    }

    pub fn events(&self, region: &str) -> aws_sdk_eventbridge::Client {
        aws_sdk_eventbridge::Client::from_conf(
            aws_sdk_eventbridge::config::Builder::from(&self.sdk)
                .region(Region::new(region.to_string()))
                .build(),
        )
    }

    pub fn secrets_manager(&self, region: &str) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::from_conf(
            aws_sdk_secretsmanager::config::Builder::from(&self.sdk)
                .region(Region::new(region.to_string()))
                .build(),
        )
    }

    pub fn sts(&self, region: &str) -> aws_sdk_sts::Client {
        let mut cache = self.sts.lock().unwrap();
        cache
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_sdk_sts::config::Builder::from(&self.sdk)
                    .region(Region::new(region.to_string()));
                aws_sdk_sts::Client::from_conf(conf.build())
            })
            .clone()
    }
}

/// Packer also reads `AWS_ACCESS_KEY`/`AWS_SECRET_KEY` when the SDK's names are unset.
fn packer_env_credentials() -> Option<Credentials> {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return None; // the SDK's own environment provider picks these up
    }
    let key = std::env::var("AWS_ACCESS_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    let secret = std::env::var("AWS_SECRET_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    let token = std::env::var("AWS_SESSION_TOKEN").ok();
    Some(Credentials::new(
        key,
        secret,
        token,
        None,
        "environment (AWS_ACCESS_KEY/AWS_SECRET_KEY)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn template_keys_win_and_half_a_pair_is_refused() {
        let access = AccessConfig {
            region: Some("eu-west-1".into()),
            access_key: Some("AKIDTEMPLATE".into()),
            secret_key: Some("secret".into()),
            ..Default::default()
        };
        let ctx = Ctx::for_build(&access).await.unwrap();
        use aws_credential_types::provider::ProvideCredentials;
        let creds = ctx
            .sdk
            .credentials_provider()
            .unwrap()
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(creds.access_key_id(), "AKIDTEMPLATE");
        assert_eq!(ctx.sdk.region().unwrap().as_ref(), "eu-west-1");
        let half = AccessConfig {
            access_key: Some("AKID".into()),
            ..Default::default()
        };
        assert!(
            matches!(Ctx::for_build(&half).await, Err(StepError::BuildFailed(m)) if m.contains("together"))
        );
    }
}
