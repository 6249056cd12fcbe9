//! UploadX509Cert (Packer's StepUploadX509Cert): puts the account's X.509 certificate and
//! key on the instance as `<x509_upload_path>/cert.pem` and `key.pem`, for
//! ec2-bundle-vol. The contents are read at the moment of use (local file, `s3://` URI or
//! SSM parameter) and never enter the state or the logs.

use crate::builders::instance_store::{config, read_source, session};
use crate::prelude::*;
use crate::provision::transport::Transport;
use crate::provision::Secrets;

pub const SPEC: StepSpec = StepSpec {
    name: "UploadX509Cert",
    iam_actions: &["ec2:DescribeInstances", "ssm:GetParameter", "s3:GetObject"],
    // Only where the stack keeps X.509 pairs (builders/instance_store.rs).
    reach: &[
        ("ssm:GetParameter", Reach::X509Parameters),
        ("s3:GetObject", Reach::X509Objects),
    ],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let c = config(&state)?;
    let region = c.access.region.clone().unwrap_or_default();
    let mut secrets = Secrets::default();
    let cert = read_source(ctx, &region, "x509_cert_path", &c.x509_cert_path).await?;
    let key = read_source(ctx, &region, "x509_key_path", &c.x509_key_path).await?;
    secrets.add_value(String::from_utf8_lossy(&key).to_string());
    let dir = c.x509_upload_path.trim_end_matches('/').to_string();
    let dir = if dir.is_empty() { "/".to_string() } else { dir };
    let mut t = session(ctx, &state, &mut secrets).await?;
    let result = async {
        t.mkdir_all(&dir).await?;
        t.upload(&cert, &format!("{dir}/cert.pem"), 0o600).await?;
        t.upload(&key, &format!("{dir}/key.pem"), 0o600).await
    }
    .await;
    t.close().await;
    result.map_err(|e| {
        StepError::BuildFailed(format!(
            "uploading the X.509 certificate and key to {dir}: {}",
            secrets.mask(&e.0)
        ))
    })?;
    Ok(state)
}
