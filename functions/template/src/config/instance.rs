//! amazon-instance (reference §3.5, §4.10, §6): launch an instance-store AMI, provision,
//! bundle the root filesystem on the instance, upload it to S3 and register it.

use serde::{Deserialize, Serialize};

use super::access::AccessConfig;
use super::ami::AmiConfig;
use super::block_device::BlockDevice;
use super::communicator::CommunicatorConfig;
use super::run::RunConfig;

/// Reference §6.1; rendered on the instance with `.KeyPath .AccountId .CertPath
/// .Architecture .PrivatePath .Destination .Prefix`.
pub const DEFAULT_BUNDLE_VOL_COMMAND: &str = "sudo -i -n ec2-bundle-vol -k {{.KeyPath}} -u {{.AccountId}} -c {{.CertPath}} -r {{.Architecture}} -e {{.PrivatePath}}/* -d {{.Destination}} -p {{.Prefix}} --batch --no-filter";
/// Without `iam_instance_profile`: keys passed on the command line.
pub const DEFAULT_BUNDLE_UPLOAD_COMMAND: &str = "sudo -i -n ec2-upload-bundle -b {{.BucketName}} -m {{.ManifestPath}} -a {{.AccessKey}} -s {{.SecretKey}} -d {{.BundleDirectory}} --batch --region {{.Region}} --retry";
/// With `iam_instance_profile`: the instance role's credentials.
pub const DEFAULT_BUNDLE_UPLOAD_COMMAND_WITH_PROFILE: &str = "sudo -i -n ec2-upload-bundle -b {{.BucketName}} -m {{.ManifestPath}} -d {{.BundleDirectory}} --batch --region {{.Region}} --retry";

fn tmp() -> String {
    "/tmp".into()
}
fn bundle_prefix() -> String {
    "image-{{timestamp}}".into()
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
