//! BundleVolume (Packer's StepBundleVolume): renders `bundle_vol_command` (Packer's variables:
//! `.KeyPath .AccountId .CertPath .Architecture .PrivatePath .Destination .Prefix`) and
//! runs it on the instance. Records where the bundle will land in S3 before anything is
//! uploaded, so Cleanup can remove it whatever happens next.

use crate::builders::instance_store::{config, object_prefix, render_command, run_remote, session};
use crate::prelude::*;
use crate::provision::transport::ExecStatus;
use crate::provision::Secrets;

pub const SPEC: StepSpec = StepSpec {
    name: "BundleVolume",
    // s3:ListBucket: the keys already under the bundle's prefix, which are not this build's.
    iam_actions: &["ec2:DescribeInstances", "ssm:GetParameter", "s3:ListBucket"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    // A bundle of a large volume takes a while: Lambda's maximum.
    timeout_seconds: 900,
    handler: handler!(run),
};

/// What a local build calls here: DescribeInstances (the architecture) and ListBucket (the
/// keys already under the bundle's prefix) always, plus the SSH session's calls
/// ([`super::upload_x509_cert::session_calls`]: the temporary key's GetParameter).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let mut calls = vec!["ec2:DescribeInstances", "s3:ListBucket"];
    for call in super::upload_x509_cert::session_calls(build) {
        if !calls.contains(&call) {
            calls.push(call);
        }
    }
    calls
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let c = config(&state)?.clone();
    let region = c.access.region.clone().unwrap_or_default();
    let instance =
        state.data.instance_id.clone().ok_or_else(|| {
            StepError::BuildFailed("BundleVolume: no instance in the state".into())
        })?;
    let architecture = crate::resources::instance::describe(ctx, &region, &instance)
        .await?
        .and_then(|i| i.architecture().map(|a| a.as_str().to_string()))
        .unwrap_or_else(|| "x86_64".into());
    let upload = c.x509_upload_path.trim_end_matches('/').to_string();
    let prefix = c.bundle_prefix.clone();
    let vars = BTreeMap::from([
        ("AccountId".to_string(), c.account_id.replace('-', "")),
        ("Architecture".to_string(), architecture),
        ("CertPath".to_string(), format!("{upload}/cert.pem")),
        ("KeyPath".to_string(), format!("{upload}/key.pem")),
        ("PrivatePath".to_string(), upload.clone()),
        ("Destination".to_string(), c.bundle_destination.clone()),
        ("Prefix".to_string(), prefix.clone()),
    ]);
    let command = render_command("bundle_vol_command", &c.bundle_vol_command, &vars)?;
    // Where UploadBundle puts it: recorded first, an artifact (it backs the AMI), with the
    // keys already under that prefix (another bundle's), which are never this build's to
    // remove.
    let objects = format!("{}/{}", c.s3_bucket, object_prefix(&c, &prefix));
    let not_ours = crate::resources::s3::keys_under(ctx, &region, &objects).await?;
    state
        .ledger
        .record_prefix(&region, &objects, true, not_ours);
    let mut secrets = Secrets::default();
    let mut t = session(ctx, &state, &mut secrets).await?;
    let result = run_remote(&mut t, "bundle_vol_command", &command, &secrets).await;
    t.close().await;
    let (status, tail) = result?;
    if status != ExecStatus::Exited(0) {
        return Err(StepError::BuildFailed(format!(
            "Volume bundling failed ({status}). Please check that ec2-ami-tools (ec2-bundle-vol) is installed on the source \
             instance (a provisioner can install it), that the X.509 certificate and key are valid and that {} has room for \
             the bundle. Last output:\n{}",
            c.bundle_destination,
            tail.join("\n")
        )));
    }
    let manifest = format!("{prefix}.manifest.xml");
    state
        .data
        .extra
        .insert("bundle_prefix".into(), serde_json::json!(prefix));
    state.data.extra.insert(
        "manifest_path".into(),
        serde_json::json!(format!(
            "{}/{manifest}",
            c.bundle_destination.trim_end_matches('/')
        )),
    );
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn reads_the_temporary_key_only_without_a_key_file() {
        let calls = |c: serde_json::Value| local_calls(&build("amazon-instance", c));
        assert_eq!(
            calls(serde_json::json!({})),
            vec!["ec2:DescribeInstances", "s3:ListBucket", "ssm:GetParameter"]
        );
        assert_eq!(
            calls(serde_json::json!({"ssh_private_key_file": "id", "ssh_host": "10.0.0.1"})),
            vec!["ec2:DescribeInstances", "s3:ListBucket"]
        );
    }
}
