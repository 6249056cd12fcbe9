//! UploadX509Cert (Packer's StepUploadX509Cert): puts the account's X.509 certificate and
//! key on the instance as `<x509_upload_path>/cert.pem` and `key.pem`, for
//! ec2-bundle-vol. The contents are read at the moment of use (local file, `s3://` URI or
//! SSM parameter) and never enter the state or the logs.

use amiflow_template::{BuilderConfig, PreparedBuild};

use crate::builders::instance_store::{config, read_source, session};
use crate::prelude::*;
use crate::provision::transport::Transport;
use crate::provision::Secrets;
use crate::resources::key_pair;

pub const SPEC: StepSpec = StepSpec {
    name: "UploadX509Cert",
    iam_actions: &["ec2:DescribeInstances", "ssm:GetParameter", "s3:GetObject"],
    // Only where the stack keeps X.509 pairs (builders/instance_store.rs).
    reach: &[
        ("ssm:GetParameter", Reach::X509Parameters),
        ("s3:GetObject", Reach::X509Objects),
    ],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: reading `x509_cert_path` / `x509_key_path` ([`read_call`]:
/// `s3://` GetObject, `ssm:` GetParameter, a local file nothing), then the SSH session's
/// calls ([`session_calls`]).
fn local_calls(build: &PreparedBuild) -> Vec<&'static str> {
    let BuilderConfig::Instance(c) = &build.config else {
        return Vec::new();
    };
    let mut calls: Vec<&'static str> = [&c.x509_cert_path, &c.x509_key_path]
        .into_iter()
        .filter_map(|p| read_call(p))
        .collect();
    calls.extend(session_calls(build));
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// The call a local build makes to read an X.509 file ([`read_source`]).
fn read_call(source: &str) -> Option<&'static str> {
    if source.starts_with("s3://") {
        Some("s3:GetObject")
    } else if source.starts_with("ssm:") {
        Some("ssm:GetParameter")
    } else {
        None
    }
}

/// What opening the SSH session to the instance calls (`instance_store::session`, the
/// amazon-instance steps' own): DescribeInstances for its address unless `ssh_host` names
/// it; ssm:GetParameter for the temporary key pair's private key when KeyPair made one
/// ([`key_pair::made_for`]; these steps are not handed `ssh_password`, so without a key
/// file the temporary key is the only one they can use).
pub(crate) fn session_calls(build: &PreparedBuild) -> Vec<&'static str> {
    let mut calls = Vec::new();
    let ssh_host = build
        .config
        .comm()
        .and_then(|c| c.ssh_host.as_deref())
        .is_some_and(|h| !h.is_empty());
    if !ssh_host {
        calls.push("ec2:DescribeInstances");
    }
    if key_pair::made_for(&build.config) {
        calls.push("ssm:GetParameter");
    }
    calls
}

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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn reads_x509_files_from_where_they_are_and_the_session_key() {
        let calls = |c: serde_json::Value| local_calls(&build("amazon-instance", c));
        assert_eq!(
            calls(
                serde_json::json!({"x509_cert_path": "cert.pem", "x509_key_path": "key.pem",
                "ssh_private_key_file": "id", "ssh_host": "10.0.0.1"})
            ),
            Vec::<&str>::new()
        );
        assert_eq!(
            calls(
                serde_json::json!({"x509_cert_path": "s3://b/cert.pem", "x509_key_path": "ssm:/x509/key"})
            ),
            vec!["ec2:DescribeInstances", "s3:GetObject", "ssm:GetParameter"]
        );
        // The temporary key pair's private key is a parameter too.
        assert_eq!(
            calls(serde_json::json!({"x509_cert_path": "cert.pem", "x509_key_path": "key.pem"})),
            vec!["ec2:DescribeInstances", "ssm:GetParameter"]
        );
    }
}
