//! UploadBundle (Packer's StepUploadBundle): makes sure `s3_bucket` exists (created,
//! tagged with the build, when missing), renders `bundle_upload_command` (Packer's variables:
//! `.BucketName .ManifestPath .BundleDirectory .Region .AccessKey .SecretKey .Token`) and
//! runs it on the instance, then checks the manifest arrived at
//! `<bucket>/<prefix>.manifest.xml`, the location RegisterImage registers.
//!
//! The credentials the command is handed go to an instance and a command the template
//! controls, so they are never the function's own. Deployed, they are the stack's bundle
//! upload role ([`BUNDLE_UPLOAD_ROLE_PATH`]), assumed with a session policy that allows only
//! writing this bundle's objects ([`upload_session_policy`]) for an hour. A local build hands
//! over the caller's own credentials, as Packer does (they are the template author's). Either
//! way they are masked everywhere but in the command; with an instance profile the default
//! command passes none.

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration, Tagging};

use crate::builders::instance_store::{
    bucket_path, bundle_prefix, config, object_prefix, render_command, run_remote, session,
};
use crate::ctx::StackDefaults;
use crate::prelude::*;
use crate::provision::transport::ExecStatus;
use crate::provision::Secrets;

/// IAM path of the stack's bundle upload role: outside `/amiflow/`, so the temporary
/// instance profile rights (which reach `role/amiflow/*`) never reach it.
pub const BUNDLE_UPLOAD_ROLE_PATH: &str = "/amiflow-bundle-upload/";

/// What the bundle upload role itself may do (a session narrows it to one bundle).
pub const BUNDLE_UPLOAD_ACTIONS: &[&str] = &["s3:PutObject", "s3:PutObjectAcl"];

/// How long the handed credentials last: the most a role assumed by a role may have.
const UPLOAD_SESSION_SECONDS: i32 = 3600;

pub const SPEC: StepSpec = StepSpec {
    name: "UploadBundle",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ssm:GetParameter",
        "s3:ListBucket",
        "s3:CreateBucket",
        "s3:PutBucketTagging",
        // Removing the new bucket again when it cannot be tagged (nothing else would find it).
        "s3:DeleteBucket",
        "s3:GetObject",
        // The upload command writes the bundle with the bundle upload role's credentials,
        // scoped to this bundle: this step's own role never writes objects.
        "sts:AssumeRole",
    ],
    reach: &[("sts:AssumeRole", Reach::BundleUploadRole)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: 900,
    handler: handler!(run),
};

/// What a local build calls here: ListBucket (HeadBucket), CreateBucket and PutBucketTagging
/// (`s3_bucket` made when missing: whether it exists is the account's, not the template's,
/// so the policy allows making it), the SSH session's calls
/// ([`super::upload_x509_cert::session_calls`]) and GetObject (HeadObject on the manifest).
/// Never DeleteBucket (only when tagging a new bucket failed) nor AssumeRole (a local build
/// hands over the caller's own keys).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let mut calls = vec!["s3:ListBucket", "s3:CreateBucket", "s3:PutBucketTagging"];
    calls.extend(super::upload_x509_cert::session_calls(build));
    calls.push("s3:GetObject");
    calls
}

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

/// The session policy of the handed credentials: writing objects under `scope`
/// (`bucket/key-prefix`), nothing else.
pub fn upload_session_policy(partition: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": BUNDLE_UPLOAD_ACTIONS,
            "Resource": format!("arn:{partition}:s3:::{scope}*")
        }]
    })
}

/// The AWS partition of `region` (`aws`, `aws-cn`, `aws-us-gov`).
fn partition_of(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// (access key, secret key, session token) for `bundle_upload_command`: the bundle upload
/// role's, scoped to `scope`, when the stack has one; refused in Lambda without one (the
/// function's own keys would go to the instance); else the local credential chain's.
async fn upload_credentials(
    ctx: &Ctx,
    state: &BuildState,
    c: &amiflow_template::config::InstanceConfig,
    region: &str,
    scope: &str,
) -> Result<(String, String, String), StepError> {
    if let Some(role) = &ctx.stack.bundle_upload_role {
        let policy = upload_session_policy(partition_of(region), scope);
        let session: String = state.execution.chars().take(64).collect();
        let out = ctx
            .sts(region)
            .assume_role()
            .role_arn(role)
            .role_session_name(session)
            .policy(policy.to_string())
            .duration_seconds(UPLOAD_SESSION_SECONDS)
            .send()
            .await
            .map_err(|e| classify("AssumeRole", role, e))?;
        let creds = out.credentials().ok_or_else(|| {
            StepError::BuildFailed(format!(
                "AssumeRole {role}: the answer carries no credentials"
            ))
        })?;
        return Ok((
            creds.access_key_id().to_string(),
            creds.secret_access_key().to_string(),
            creds.session_token().to_string(),
        ));
    }
    if ctx.in_lambda {
        if c.run.iam_instance_profile.is_some() {
            return Ok(Default::default());
        }
        return Err(StepError::BuildFailed(format!(
            "bundle_upload_command would be handed this function's own credentials: the function has no {} \
             (deploy the stack's template, which defines the bundle upload role), or give the build an \
             iam_instance_profile allowed to write to s3://{} and a bundle_upload_command without .AccessKey/.SecretKey",
            StackDefaults::BUNDLE_UPLOAD_ROLE_ENV,
            c.s3_bucket
        )));
    }
    match ctx.sdk.credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            Ok(creds) => Ok((
                creds.access_key_id().to_string(),
                creds.secret_access_key().to_string(),
                creds.session_token().unwrap_or_default().to_string(),
            )),
            Err(e) if c.run.iam_instance_profile.is_some() => {
                tracing::warn!("no local credentials for bundle_upload_command ({e}); the instance profile's are used");
                Ok(Default::default())
            }
            Err(e) => Err(StepError::BuildFailed(format!(
                "bundle_upload_command needs AWS credentials for .AccessKey/.SecretKey: {e}"
            ))),
        },
        None => Ok(Default::default()),
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let c = config(&state)?.clone();
    let region = c.access.region.clone().unwrap_or_default();
    let prefix = bundle_prefix(&state).ok_or_else(|| {
        StepError::BuildFailed(
            "UploadBundle: no bundle in the state (BundleVolume must run first)".into(),
        )
    })?;
    // The credentials first: a build that may not have them creates no bucket.
    let scope = format!("{}/{}", c.s3_bucket, object_prefix(&c, &prefix));
    let (access_key, secret_key, token) =
        upload_credentials(ctx, &state, &c, &region, &scope).await?;
    ensure_bucket(ctx, &mut state, &region, &c.s3_bucket).await?;

    let mut secrets = Secrets::default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_may_write_only_the_bundles_objects() {
        let policy = upload_session_policy("aws", "bucket/images/web-1.");
        let statements = policy["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Effect"], "Allow");
        assert_eq!(
            statements[0]["Action"],
            serde_json::json!(["s3:PutObject", "s3:PutObjectAcl"])
        );
        assert_eq!(
            statements[0]["Resource"],
            "arn:aws:s3:::bucket/images/web-1.*"
        );
        assert_eq!(
            upload_session_policy(partition_of("cn-north-1"), "b/p.")["Statement"][0]["Resource"],
            "arn:aws-cn:s3:::b/p.*"
        );
        assert_eq!(partition_of("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition_of("eu-west-1"), "aws");
    }

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn local_calls_follow_the_session_and_never_assume_the_role() {
        let calls = |c: serde_json::Value| local_calls(&build("amazon-instance", c));
        assert_eq!(
            calls(serde_json::json!({})),
            vec![
                "s3:ListBucket",
                "s3:CreateBucket",
                "s3:PutBucketTagging",
                "ec2:DescribeInstances",
                "ssm:GetParameter",
                "s3:GetObject"
            ]
        );
        let keyed = calls(serde_json::json!({"ssh_private_key_file": "id", "ssh_host": "h"}));
        assert!(!keyed.contains(&"ssm:GetParameter") && !keyed.contains(&"ec2:DescribeInstances"));
        assert!(!keyed.contains(&"sts:AssumeRole") && !keyed.contains(&"s3:DeleteBucket"));
    }
}
