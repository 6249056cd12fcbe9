//! S3 objects and buckets: amazon-instance's bundle (objects under `bucket/prefix`, made on
//! the instance by UploadBundle) and the bucket UploadBundle creates when `s3_bucket` is
//! missing (tagged with the build's tags). The SSM communicator's staging objects live in
//! the stack's bucket and are removed by Provision itself.

use std::collections::BTreeMap;

use super::{Reach, Scope, Swept};
use crate::error::classify;
use crate::state::{Ledger, ResourceKind};
use crate::{Ctx, StepError};

/// What removing a bundle's objects (and listing the keys already there) needs.
/// Buckets and objects: only the stack's (its artifacts bucket, the bundle buckets it names).
pub const REACH: &[(&str, Reach)] = &[
    ("s3:ListBucket", Reach::StackBuckets),
    ("s3:GetObject", Reach::StackBuckets),
    ("s3:PutObject", Reach::StackBuckets),
    ("s3:PutObjectAcl", Reach::StackBuckets),
    ("s3:DeleteObject", Reach::StackBuckets),
    ("s3:CreateBucket", Reach::StackBuckets),
    ("s3:GetBucketTagging", Reach::StackBuckets),
    ("s3:PutBucketTagging", Reach::StackBuckets),
    ("s3:DeleteBucket", Reach::StackBuckets),
];

pub const OBJECT_CLEANUP_ACTIONS: &[&str] = &["s3:ListBucket", "s3:DeleteObject"];
/// What recognising and removing a build's bucket needs.
pub const BUCKET_CLEANUP_ACTIONS: &[&str] = &["s3:GetBucketTagging", "s3:DeleteBucket"];

/// The bucket and key of `s3://bucket/key` (both non-empty), if it is one.
pub fn split_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
}

/// Every key under `bucket/prefix` (none when the bucket does not exist).
pub async fn keys_under(
    ctx: &Ctx,
    region: &str,
    bucket_and_prefix: &str,
) -> Result<Vec<String>, StepError> {
    let (bucket, prefix) = bucket_and_prefix
        .split_once('/')
        .unwrap_or((bucket_and_prefix, ""));
    let s3 = ctx.s3(region);
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = match s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_bucket()) => {
                return Ok(keys)
            }
            // classify: a 5xx or throttling is Transient, so Cleanup's Retry gets another go.
            Err(e) => {
                return Err(classify(
                    "ListObjectsV2",
                    &format!("s3://{bucket}/{prefix}"),
                    e,
                ))
            }
        };
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        token = out.next_continuation_token().map(String::from);
        if token.is_none() {
            return Ok(keys);
        }
    }
}

/// Deletes every object under `bucket/prefix` except the keys in `not_ours`; a missing
/// bucket is fine. Returns the `s3://` URLs removed.
pub async fn delete_objects_under(
    ctx: &Ctx,
    region: &str,
    bucket_and_prefix: &str,
    not_ours: &[String],
) -> Result<Vec<String>, StepError> {
    let bucket = bucket_and_prefix
        .split_once('/')
        .map_or(bucket_and_prefix, |(b, _)| b);
    let s3 = ctx.s3(region);
    let mut removed = Vec::new();
    for key in keys_under(ctx, region, bucket_and_prefix).await? {
        if not_ours.contains(&key) {
            continue;
        }
        s3.delete_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| classify("DeleteObject", &format!("s3://{bucket}/{key}"), e))?;
        removed.push(format!("s3://{bucket}/{key}"));
    }
    Ok(removed)
}

/// Whether the bucket carries every one of `tags` (a build's own tags: it created it).
/// A bucket without tags, or one that cannot be read, is not the build's.
pub async fn bucket_has_tags(
    ctx: &Ctx,
    region: &str,
    bucket: &str,
    tags: &BTreeMap<String, String>,
) -> bool {
    match ctx
        .s3(region)
        .get_bucket_tagging()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => tags
            .iter()
            .all(|(k, v)| out.tag_set().iter().any(|t| t.key() == k && t.value() == v)),
        Err(_) => false,
    }
}

/// What removing a bucket came to.
pub enum BucketRemoval {
    Removed,
    Gone,
    /// Holds objects the build did not put there: kept.
    NotEmpty,
}

/// Deletes a bucket, unless it holds objects (then it is kept, with a warning).
pub async fn remove_bucket(
    ctx: &Ctx,
    region: &str,
    bucket: &str,
) -> Result<BucketRemoval, StepError> {
    match ctx.s3(region).delete_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(BucketRemoval::Removed),
        Err(e) => match e.as_service_error().and_then(|s| s.meta().code()) {
            Some("NoSuchBucket") => Ok(BucketRemoval::Gone),
            Some("BucketNotEmpty") => {
                tracing::warn!(
                    "bucket {bucket} was created by this build but holds other objects now: kept"
                );
                Ok(BucketRemoval::NotEmpty)
            }
            // Throttling and 5xx retried; AccessDenied and the like fail, naming the bucket.
            _ => Err(classify("DeleteBucket", bucket, e)),
        },
    }
}

/// Removes the ledger's object prefixes, unless they are the delivered artifact, and what
/// SSM provisioning may have left ([`Scope::staging`]).
pub async fn sweep_objects(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    for (region, at) in &scope.staging {
        swept
            .removed
            .extend(delete_objects_under(ctx, region, at, &[]).await?);
    }
    for r in ledger
        .of_kind(ResourceKind::S3Object)
        .filter(|r| !r.artifact || scope.delete_artifacts)
    {
        swept
            .removed
            .extend(delete_objects_under(ctx, &r.region, &r.id, &r.not_ours).await?);
    }
    Ok(swept)
}

/// Removes the bucket the build created, when the build failed.
pub async fn sweep_buckets(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    if !scope.delete_artifacts {
        return Ok(swept);
    }
    for r in ledger.of_kind(ResourceKind::S3Bucket) {
        match remove_bucket(ctx, &r.region, &r.id).await? {
            BucketRemoval::Removed => swept
                .removed
                .push(format!("bucket {} ({})", r.id, r.region)),
            BucketRemoval::Gone => {}
            BucketRemoval::NotEmpty => swept
                .kept
                .push(format!("bucket {} ({}): not empty", r.id, r.region)),
        }
    }
    Ok(swept)
}
