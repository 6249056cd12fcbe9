//! What amazon-instance's bundle steps share: the config, an SSH session to the instance,
//! the X.509 sources, rendering the bundle commands and the bundle's place in S3.
//!
//! The bundle commands run on the instance over the communicator (SSH). Their template
//! variables (Packer's: `.Destination`, `.Prefix`, `.BucketName`, …) are rendered at the moment of use; credentials
//! (`.AccessKey`, `.SecretKey`, `.Token`) are never in the state and are masked in every
//! log line and error.

use std::collections::BTreeMap;

use amiflow_template::config::InstanceConfig;
use amiflow_template::BuilderConfig;

use crate::prelude::*;
use crate::provision::communicator::{ssh_target, Communication, Communicator};
use crate::provision::ssh::SshTransport;
use crate::provision::transport::{ExecStatus, OutputSink, Transport};
use crate::provision::Secrets;

pub fn config(state: &BuildState) -> Result<&InstanceConfig, StepError> {
    match &state.build.config {
        BuilderConfig::Instance(c) => Ok(c),
        other => Err(StepError::BuildFailed(format!(
            "this step belongs to amazon-instance, not {}",
            other.builder_type().as_str()
        ))),
    }
}

/// An SSH session to the source instance, with the secrets to mask.
pub async fn session(
    ctx: &Ctx,
    state: &BuildState,
    secrets: &mut Secrets,
) -> Result<SshTransport, StepError> {
    let comm = Communication::of_state(state)?;
    if comm.communicator != Communicator::Ssh {
        return Err(StepError::BuildFailed(
            "amazon-instance bundles the volume over SSH: set \"communicator\": \"ssh\" (the bundle commands and the X.509 upload need it)".into(),
        ));
    }
    let target = ssh_target(
        ctx,
        state,
        &comm,
        secrets,
        crate::steps::connect::ATTEMPT_TIMEOUT,
    )
    .await?;
    SshTransport::connect(&target).await.map_err(|e| {
        StepError::BuildFailed(format!(
            "cannot connect to {} over SSH: {}",
            target.address(),
            secrets.mask(&e.0)
        ))
    })
}

/// Reads an X.509 file from where the template says: `s3://bucket/key`, `ssm:NAME` (or, in
/// Lambda, a bare SSM parameter name), or a local path (local runs).
pub async fn read_source(
    ctx: &Ctx,
    region: &str,
    key: &str,
    source: &str,
) -> Result<Vec<u8>, StepError> {
    if ctx.in_lambda {
        let bucket =
            std::env::var(crate::provision::communicator::ARTIFACTS_BUCKET_ENV).unwrap_or_default();
        deployed_source_allowed(key, source, &bucket).map_err(StepError::BuildFailed)?;
    }
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, object) = rest.split_once('/').ok_or_else(|| {
            StepError::BuildFailed(format!("{key}: {source:?} is not s3://bucket/key"))
        })?;
        let out = ctx
            .s3(region)
            .get_object()
            .bucket(bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| {
                StepError::BuildFailed(format!(
                    "{key}: cannot read {source}: {} (the role needs s3:GetObject on it)",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                ))
            })?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| StepError::Transient(format!("{key}: reading {source}: {e}")))?;
        return Ok(body.into_bytes().to_vec());
    }
    let parameter = match source.strip_prefix("ssm:") {
        Some(p) => Some(p),
        None if crate::provision::run::in_lambda() => Some(source),
        None => None,
    };
    if let Some(name) = parameter {
        let out = ctx.ssm(region).get_parameter().name(name).with_decryption(true).send().await.map_err(|e| {
            StepError::BuildFailed(format!(
                "{key}: cannot read SSM parameter {name}: {} (in Lambda, {key} is an s3:// URI or an SSM parameter name; the role needs ssm:GetParameter on it)",
                aws_smithy_types::error::display::DisplayErrorContext(&e)
            ))
        })?;
        return Ok(out
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default()
            .as_bytes()
            .to_vec());
    }
    std::fs::read(source).map_err(|e| {
        StepError::BuildFailed(format!("{key}: cannot read the local file {source:?}: {e}"))
    })
}

/// Where a deployed stack keeps the X.509 pairs its operator stores for amazon-instance: SSM
/// parameters under this path... It is outside `/amiflow/`, where the builds' own
/// parameters live (`/amiflow/<stack>/<execution>/`, `identity::parameter_owner`): under
/// `/amiflow/x509/`, a stack named `x509` would keep its builds' keys among the operator's
/// pairs, and its roles would reach them.
pub const X509_PARAMETER_PATH: &str = "/amiflow-x509/";
/// ...or objects under this prefix of the artifacts bucket.
pub const X509_OBJECT_PREFIX: &str = "x509/";

/// A deployed build reads `x509_cert_path`/`x509_key_path` only where the stack keeps them:
/// an SSM parameter under [`X509_PARAMETER_PATH`] or `s3://<artifacts bucket>/x509/...`.
pub fn deployed_source_allowed(
    key: &str,
    source: &str,
    artifacts_bucket: &str,
) -> Result<(), String> {
    let allowed = match source.strip_prefix("s3://") {
        Some(rest) => {
            !artifacts_bucket.is_empty()
                && rest
                    .strip_prefix(artifacts_bucket)
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(|k| {
                        k.starts_with(X509_OBJECT_PREFIX) && !k.split('/').any(|p| p == "..")
                    })
        }
        None => {
            let name = source.strip_prefix("ssm:").unwrap_or(source);
            name.starts_with(X509_PARAMETER_PATH) && !name.split('/').any(|p| p == "..")
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{key} {source:?}: a deployed stack reads X.509 files only where it keeps them: an SSM parameter under \
             {X509_PARAMETER_PATH} or an object s3://{bucket}/{X509_OBJECT_PREFIX}...; store the pair there",
            bucket = if artifacts_bucket.is_empty() { "<artifacts bucket>" } else { artifacts_bucket }
        ))
    }
}

/// Renders a bundle command with its variables; `{{timestamp}}`-style functions were
/// rendered by Prepare, so only `.Name` references are left.
pub fn render_command(
    key: &str,
    template: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, StepError> {
    crate::provision::render::render(
        template,
        &crate::provision::render::RenderContext::with_build(vars),
    )
    .map_err(|e| StepError::BuildFailed(format!("{key}: {e}")))
}

/// Runs a command on the instance, its output logged (masked) under `label`.
pub async fn run_remote(
    t: &mut SshTransport,
    label: &str,
    command: &str,
    secrets: &Secrets,
) -> Result<(ExecStatus, Vec<String>), StepError> {
    tracing::info!(step = label, "running: {}", secrets.mask(command));
    let mut sink = OutputSink::new(label, secrets);
    let status = t
        .exec(command, &mut sink)
        .await
        .map_err(|e| StepError::BuildFailed(format!("{label}: {}", secrets.mask(&e.0))))?;
    sink.finish();
    Ok((status, sink.tail()))
}

/// `s3_bucket` plus `s3_key_prefix`: what `-b` of ec2-upload-bundle takes.
pub fn bucket_path(c: &InstanceConfig) -> String {
    match c
        .s3_key_prefix
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        Some(p) => format!("{}/{p}", c.s3_bucket),
        None => c.s3_bucket.clone(),
    }
}

/// The key prefix under which the bundle's objects (`<prefix>.manifest.xml`,
/// `<prefix>.part.NN`) land.
pub fn object_prefix(c: &InstanceConfig, bundle_prefix: &str) -> String {
    match c
        .s3_key_prefix
        .as_deref()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
    {
        Some(p) => format!("{p}/{bundle_prefix}."),
        None => format!("{bundle_prefix}."),
    }
}

/// The bundle's name on the instance (`bundle_prefix`), fixed by BundleVolume.
pub fn bundle_prefix(state: &BuildState) -> Option<String> {
    state
        .data
        .extra
        .get("bundle_prefix")
        .and_then(|v| v.as_str())
        .map(String::from)
}

/// Deletes every object of the bundle (`delete_bundle_after_register`, Cleanup) and
/// forgets it in the ledger.
pub async fn delete_bundle(ctx: &Ctx, state: &mut BuildState) -> Result<(), StepError> {
    let entries: Vec<(String, String, Vec<String>)> = state
        .ledger
        .of_kind(ResourceKind::S3Object)
        .map(|r| (r.region.clone(), r.id.clone(), r.not_ours.clone()))
        .collect();
    for (region, id, not_ours) in entries {
        crate::resources::s3::delete_objects_under(ctx, &region, &id, &not_ours).await?;
        state.ledger.forget(ResourceKind::S3Object, &id);
    }
    Ok(())
}

/// For Cleanup: the bucket, when it carries this build's tags — found from the config
/// alone, so a step that failed before its state was saved leaks nothing. The bundle's
/// objects are not found this way: BundleVolume records their prefix, with the keys that
/// were there before, ahead of any upload; a state without that entry uploaded nothing.
/// No-op for other builders.
pub async fn discover(
    ctx: &Ctx,
    state: &BuildState,
    ledger: &mut crate::state::Ledger,
) -> Result<(), StepError> {
    let Ok(c) = config(state) else { return Ok(()) };
    let region = c.access.region.clone().unwrap_or_default();
    if c.s3_bucket.is_empty() {
        return Ok(());
    }
    if crate::resources::s3::bucket_has_tags(ctx, &region, &c.s3_bucket, &build_tags(state)).await {
        ledger.record(ResourceKind::S3Bucket, &region, &c.s3_bucket, true);
    }
    Ok(())
}

#[cfg(test)]
mod x509_location_tests {
    use super::*;

    #[test]
    fn a_deployed_build_reads_x509_files_only_where_the_stack_keeps_them() {
        let bucket = "amiflow-artifacts-1";
        for ok in [
            "/amiflow-x509/prod/cert",
            "ssm:/amiflow-x509/k",
            "s3://amiflow-artifacts-1/x509/cert.pem",
        ] {
            deployed_source_allowed("x509_cert_path", ok, bucket).unwrap();
        }
        for refused in [
            "/amiflow/exec-1/web/ssh-key",
            // The builds' own path: a stack named `x509` keeps its builds' keys here.
            "/amiflow/x509/exec-1/web/ssh-key",
            "/prod/db-password",
            "ssm:/amiflow-x509/../exec-1/web/ssh-key",
            "s3://other-bucket/x509/cert.pem",
            "s3://amiflow-artifacts-1/staged/script.sh",
            "s3://amiflow-artifacts-1-evil/x509/cert.pem",
        ] {
            let why = deployed_source_allowed("x509_key_path", refused, bucket).unwrap_err();
            assert!(why.contains("only where it keeps them"), "{refused}: {why}");
        }
    }
}
