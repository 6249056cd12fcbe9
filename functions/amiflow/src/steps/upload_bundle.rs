//! UploadBundle (Packer's StepUploadBundle): makes sure `s3_bucket` exists (created,
//! tagged with the build, when missing), renders `bundle_upload_command` (Packer's variables:
//! `.BucketName .ManifestPath .BundleDirectory .Region .AccessKey .SecretKey .Token`) and
//! runs it on the instance, then checks the manifest arrived at
//! `<bucket>/<prefix>.manifest.xml`, the location RegisterImage registers.
//!
//! The credentials are this step's own (the template's keys, else the credential chain's),
//! revealed only in the command sent to the instance and masked everywhere else. With an
//! instance profile the default command passes none.

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration, Tagging};

use crate::builders::instance_store::{
    bucket_path, bundle_prefix, config, object_prefix, render_command, run_remote, session,
};
use crate::prelude::*;
use crate::provision::transport::ExecStatus;
use crate::provision::Secrets;

pub const SPEC: StepSpec = StepSpec {
    name: "UploadBundle",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ssm:GetParameter",
        "s3:ListBucket",
        "s3:CreateBucket",
        "s3:PutBucketTagging",
        "s3:GetObject",
        // The upload command on the instance writes the bundle with this step's credentials
        // (.AccessKey/.SecretKey/.Token); ec2-upload-bundle sets the objects' ACL too.
        "s3:PutObject",
        "s3:PutObjectAcl",
    ],
    reach: &[],
    wait: None,
    timeout_seconds: 900,
    handler: handler!(run),
};

/// Creates the bucket when it does not exist; refuses one we cannot use.
async fn ensure_bucket(
    ctx: &Ctx,
    state: &mut BuildState,
    region: &str,
    bucket: &str,
) -> Result<(), StepError> {
    let s3 = ctx.s3(region);
    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(e) => {
            let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
            if status == 403 {
                return Err(StepError::BuildFailed(format!(
                    "s3_bucket {bucket}: access denied. The bucket may be owned by somebody else (bucket names are global): \
                     choose another name, or allow s3:ListBucket and s3:PutObject on it"
                )));
            }
            if status != 404 && !e.as_service_error().is_some_and(|s| s.is_not_found()) {
                return Err(StepError::Transient(format!(
                    "HeadBucket {bucket}: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                )));
            }
        }
    }
    let mut req = s3.create_bucket().bucket(bucket);
    if region != "us-east-1" {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match req.send().await {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => {}
        Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_exists()) => {
            return Err(StepError::BuildFailed(format!(
                "s3_bucket {bucket}: the name is taken by somebody else's bucket (bucket names are global); choose another"
            )))
        }
        Err(e) => return Err(classify("CreateBucket", bucket, e)),
    }
    state
        .ledger
        .record(ResourceKind::S3Bucket, region, bucket, true);
    let tags: Vec<aws_sdk_s3::types::Tag> = build_tags(state)
        .into_iter()
        .filter_map(|(k, v)| {
            aws_sdk_s3::types::Tag::builder()
                .key(k)
                .value(v)
                .build()
                .ok()
        })
        .collect();
    let tagging = Tagging::builder()
        .set_tag_set(Some(tags))
        .build()
        .map_err(|e| StepError::BuildFailed(e.to_string()))?;
    if let Err(e) = s3
        .put_bucket_tagging()
        .bucket(bucket)
        .tagging(tagging)
        .send()
        .await
    {
        // The error loses this state's ledger, and Cleanup knows the bucket as ours only by
        // these tags: remove the empty bucket now or it is left behind.
        let removed = match s3.delete_bucket().bucket(bucket).send().await {
            Ok(_) => "the bucket was removed again".to_string(),
            Err(d) => format!(
                "the bucket could not be removed again ({}): delete s3://{bucket} by hand",
                aws_smithy_types::error::display::DisplayErrorContext(&d)
            ),
        };
        return Err(StepError::BuildFailed(format!(
            "PutBucketTagging {bucket}: {}; {removed}",
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        )));
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let c = config(&state)?.clone();
    let region = c.access.region.clone().unwrap_or_default();
    let prefix = bundle_prefix(&state).ok_or_else(|| {
        StepError::BuildFailed(
            "UploadBundle: no bundle in the state (BundleVolume must run first)".into(),
        )
    })?;
    ensure_bucket(ctx, &mut state, &region, &c.s3_bucket).await?;

    let mut secrets = Secrets::default();
    let (access_key, secret_key, token) = match ctx.sdk.credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            Ok(creds) => (
                creds.access_key_id().to_string(),
                creds.secret_access_key().to_string(),
                creds.session_token().unwrap_or_default().to_string(),
            ),
            Err(e) if c.run.iam_instance_profile.is_some() => {
                tracing::warn!("no local credentials for bundle_upload_command ({e}); the instance profile's are used");
                Default::default()
            }
            Err(e) => {
                return Err(StepError::BuildFailed(format!(
                    "bundle_upload_command needs AWS credentials for .AccessKey/.SecretKey: {e}"
                )))
            }
        },
        None => Default::default(),
    };
    secrets.add_value(secret_key.clone());
    secrets.add_value(token.clone());
    secrets.add_value(access_key.clone());
    let destination = c.bundle_destination.trim_end_matches('/').to_string();
    let vars = BTreeMap::from([
        ("BucketName".to_string(), bucket_path(&c)),
        (
            "ManifestPath".to_string(),
            format!("{destination}/{prefix}.manifest.xml"),
        ),
        ("BundleDirectory".to_string(), c.bundle_destination.clone()),
        ("Region".to_string(), region.clone()),
        ("AccessKey".to_string(), access_key),
        ("SecretKey".to_string(), secret_key),
        ("Token".to_string(), token),
    ]);
    let command = render_command("bundle_upload_command", &c.bundle_upload_command, &vars)?;
    let mut t = session(ctx, &state, &mut secrets).await?;
    let result = run_remote(&mut t, "bundle_upload_command", &command, &secrets).await;
    t.close().await;
    let (status, tail) = result?;
    match status {
        ExecStatus::Exited(0) => {}
        ExecStatus::Exited(3) => {
            return Err(StepError::BuildFailed(format!(
                "Bundle upload failed (exit code 3): the bucket {} may be owned by somebody else (bucket names are global), \
                 or the credentials may not allow s3:PutObject/s3:PutObjectAcl on it. Last output:\n{}",
                c.s3_bucket,
                tail.join("\n")
            )))
        }
        other => {
            return Err(StepError::BuildFailed(format!(
                "Bundle upload failed ({other}). Please check that ec2-ami-tools (ec2-upload-bundle) is installed on the \
                 instance, that the credentials (or the instance profile) may write to s3://{}, and the output:\n{}",
                bucket_path(&c),
                tail.join("\n")
            )))
        }
    }
    let manifest_key = format!("{}manifest.xml", object_prefix(&c, &prefix));
    let s3 = ctx.s3(&region);
    if let Err(e) = s3
        .head_object()
        .bucket(&c.s3_bucket)
        .key(&manifest_key)
        .send()
        .await
    {
        let missing = e.as_service_error().is_some_and(|s| s.is_not_found());
        return Err(StepError::BuildFailed(format!(
            "bundle_upload_command succeeded but s3://{}/{manifest_key} {}: check that the command uploads the bundle made by \
             bundle_vol_command to {{{{.BucketName}}}}",
            c.s3_bucket,
            if missing { "does not exist".to_string() } else { format!("cannot be read: {}", aws_smithy_types::error::display::DisplayErrorContext(&e)) }
        )));
    }
    state.data.extra.insert(
        "remote_manifest_path".into(),
        serde_json::json!(format!("{}/{manifest_key}", c.s3_bucket)),
    );
    Ok(state)
}
