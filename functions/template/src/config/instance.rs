//! amazon-instance: launch an instance-store AMI, provision, bundle the root filesystem on
//! the instance, upload it to S3 and register it. Its own keys, defaults and rules.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::block_device::{check_ami_and_launch_mappings, BlockDevice};
use super::check::{is_account, templated, Check};
use super::communicator::CommunicatorConfig;
use super::run::RunConfig;

/// Packer's `bundle_vol_command`; rendered on the instance with `.KeyPath .AccountId .CertPath
/// .Architecture .PrivatePath .Destination .Prefix`.
pub const DEFAULT_BUNDLE_VOL_COMMAND: &str = "sudo -i -n ec2-bundle-vol -k {{.KeyPath}} -u {{.AccountId}} -c {{.CertPath}} -r {{.Architecture}} -e {{.PrivatePath}}/* -d {{.Destination}} -p {{.Prefix}} --batch --no-filter";
/// Without `iam_instance_profile`: keys passed on the command line.
pub const DEFAULT_BUNDLE_UPLOAD_COMMAND: &str = "sudo -i -n ec2-upload-bundle -b {{.BucketName}} -m {{.ManifestPath}} -a {{.AccessKey}} -s {{.SecretKey}} -d {{.BundleDirectory}} --batch --region {{.Region}} --retry";
/// With `iam_instance_profile`: the instance role's credentials.
pub const DEFAULT_BUNDLE_UPLOAD_COMMAND_WITH_PROFILE: &str = "sudo -i -n ec2-upload-bundle -b {{.BucketName}} -m {{.ManifestPath}} -d {{.BundleDirectory}} --batch --region {{.Region}} --retry";

fn tmp() -> String {
    "/tmp".into()
}
/// Packer's default `bundle_prefix`: a template itself, which Prepare renders as if the
/// builder had written it (`template/prepare.rs`).
pub const DEFAULT_BUNDLE_PREFIX: &str = "image-{{timestamp}}";

fn bundle_prefix() -> String {
    DEFAULT_BUNDLE_PREFIX.into()
}
fn bundle_vol_command() -> String {
    DEFAULT_BUNDLE_VOL_COMMAND.into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceConfig {
    #[serde(flatten)]
    pub access: AccessConfig,
    #[serde(flatten)]
    pub ami: AmiConfig,
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub comm: CommunicatorConfig,

    /// Required; dashes are removed by `from_builder` (`0123-4567-0890` → `012345670890`).
    #[serde(default)]
    pub account_id: String,
    /// Required.
    #[serde(default)]
    pub s3_bucket: String,
    /// Prefix of the bundle's objects in the bucket (amiflow: bundle uploaded under it).
    #[serde(default)]
    pub s3_key_prefix: Option<String>,
    /// Required: local path of the account's X.509 certificate.
    #[serde(default)]
    pub x509_cert_path: String,
    /// Required: local path of its private key.
    #[serde(default)]
    pub x509_key_path: String,
    #[serde(default = "tmp")]
    pub x509_upload_path: String,
    #[serde(default = "tmp")]
    pub bundle_destination: String,
    /// Rendered by the bundle step (`{{timestamp}}` = the build's fixed time).
    #[serde(default = "bundle_prefix")]
    pub bundle_prefix: String,
    #[serde(default = "bundle_vol_command")]
    pub bundle_vol_command: String,
    /// Default depends on `iam_instance_profile` (filled by `from_builder`).
    #[serde(default)]
    pub bundle_upload_command: String,
    #[serde(default)]
    pub ami_block_device_mappings: Vec<BlockDevice>,
    #[serde(default)]
    pub launch_block_device_mappings: Vec<BlockDevice>,
    #[serde(default)]
    pub tpm_support: Option<String>,
    /// amiflow: delete the uploaded bundle objects from S3 once the AMI is registered
    /// (Packer leaves them; an instance-store AMI needs them to launch, so default false).
    #[serde(default)]
    pub delete_bundle_after_register: bool,
}

impl InstanceConfig {
    /// Removes the dashes from `account_id`; fills `bundle_upload_command` by whether the
    /// instance has a profile (its credentials) or not (the keys on the command line).
    pub(super) fn normalize(&mut self) {
        self.account_id = self.account_id.replace('-', "");
        if self.bundle_upload_command.is_empty() {
            self.bundle_upload_command = if self.run.iam_instance_profile.is_some() {
                DEFAULT_BUNDLE_UPLOAD_COMMAND_WITH_PROFILE.into()
            } else {
                DEFAULT_BUNDLE_UPLOAD_COMMAND.into()
            };
        }
    }

    /// The rules of amazon-instance's own keys (its groups check themselves).
    pub(super) fn check(&self, c: &mut Check) {
        check_ami_and_launch_mappings(
            c,
            &self.ami_block_device_mappings,
            &self.launch_block_device_mappings,
            false,
        );
        c.one_of("tpm_support", self.tpm_support.as_deref(), &["v2.0"]);
        for (key, value, what) in [
            (
                "account_id",
                &self.account_id,
                "your 12-digit AWS account id (dashes allowed), used by ec2-bundle-vol",
            ),
            (
                "s3_bucket",
                &self.s3_bucket,
                "the S3 bucket the bundle is uploaded to",
            ),
            (
                "x509_cert_path",
                &self.x509_cert_path,
                "the local path of the X.509 certificate registered with your account",
            ),
            (
                "x509_key_path",
                &self.x509_key_path,
                "the local path of that certificate's private key",
            ),
        ] {
            if value.is_empty() {
                c.err(key, format!("required for amazon-instance: {what}"));
            }
        }
        let account = &self.account_id;
        if !account.is_empty() && !templated(account) && !is_account(account) {
            c.err(
                "account_id",
                format!("{account:?} is not a 12-digit AWS account id"),
            );
        }
        let b = &self.s3_bucket;
        if !b.is_empty() && !templated(b) {
            let ok_chars = b
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '.' || ch == '-');
            if !(3..=63).contains(&b.len())
                || !ok_chars
                || b.starts_with(['.', '-'])
                || b.ends_with(['.', '-'])
            {
                c.err("s3_bucket", format!("{b:?} is not a valid S3 bucket name (3–63 lowercase letters, digits, dots and hyphens)"));
            }
        }
    }
}
