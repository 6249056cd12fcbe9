//! Cleanup: removes everything the build created except its artifact, found by the ledger
//! AND by tag search (`tag:amiflow:build` = execution), idempotently. Runs on success and,
//! through the Catch, on failure, where the partial AMIs and their snapshots go too.
//! `NotReady` while instances terminate or a security group is still referenced.
//! `on_error: abort` keeps everything of a failed build and says what was kept.
//!
//! [`cleanup_by_tag`] is the same sweep for the janitor, knowing only the execution.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{InstanceStateName, VolumeState};
use serde::{Deserialize, Serialize};

use super::iam_instance_profile::IAM_PATH;
use super::prelude::*;
use crate::aws::BUILD_NAME_TAG;
use crate::state::{Ledger, OnError, ARTIFACT_TAG};

pub const SPEC: StepSpec = StepSpec {
    name: "Cleanup",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ec2:TerminateInstances",
        "ec2:DescribeSpotInstanceRequests",
        "ec2:CancelSpotInstanceRequests",
        "ec2:DescribeKeyPairs",
        "ec2:DeleteKeyPair",
        "ec2:DescribeSecurityGroups",
        "ec2:DeleteSecurityGroup",
        "ec2:DescribeVolumes",
        "ec2:DeleteVolume",
        "ec2:DetachVolume",
        "ec2:DescribeImages",
        "ec2:DeregisterImage",
        "ec2:DescribeSnapshots",
        "ec2:DeleteSnapshot",
        "ec2:CreateTags",
        "ssm:GetParametersByPath",
        "ssm:DeleteParameter",
        "ssm:DeleteParameters",
        "iam:ListInstanceProfiles",
        "iam:ListRoles",
        "iam:GetRole",
        "iam:GetInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile",
        "iam:DeleteInstanceProfile",
        "iam:ListRolePolicies",
        "iam:DeleteRolePolicy",
        "iam:DeleteRole",
        "s3:ListBucket",
        // instance_store::discover tells the build's own bundle bucket by its tags.
        "s3:GetBucketTagging",
        "s3:DeleteObject",
        "s3:DeleteBucket",
    ],
    wait: Some(INSTANCE_WAIT),
    timeout_seconds: 300,
    handler: handler!(run),
};

/// What a sweep covers.
#[derive(Debug, Clone)]
pub struct Scope {
    pub execution: String,
    /// One build of the execution; None = every build (the janitor).
    pub build_name: Option<String>,
    pub regions: Vec<String>,
    /// Where instances, key pairs, security groups, volumes and key parameters can be: the
    /// build region and any region the ledger names for them (a build launches only in its
    /// own region; other target regions only receive image copies and their snapshots).
    /// The janitor, knowing nothing, gives every region.
    pub instance_regions: Vec<String>,
    /// Whether to search for temporary key pairs and their parameters by tag: only when
    /// the build's config makes one (the ledger's are removed either way).
    pub key_pairs: bool,
    /// The build failed or was aborted: its AMIs and snapshots go too.
    pub delete_artifacts: bool,
    /// AMIs to keep (the artifact of a successful build).
    pub keep_images: BTreeSet<String>,
    /// Volumes to keep (amazon-ebsvolume's artifact of a successful build).
    pub keep_volumes: BTreeSet<String>,
}

/// What a sweep removed (or, with `on_error: abort`, kept).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

impl Scope {
    fn filters(&self) -> Vec<Filter> {
        let mut f = vec![build_filter(&self.execution)];
        if let Some(b) = &self.build_name {
            f.push(filter(&format!("tag:{BUILD_NAME_TAG}"), [b.clone()]));
        }
        f
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let failed = state.error.is_some();
    if failed && state.on_error == OnError::Abort {
        let kept: Vec<String> = state
            .ledger
            .resources
            .iter()
            .map(|r| format!("{:?} {} ({})", r.kind, r.id, r.region))
            .collect();
        tracing::warn!(kept = ?kept, "on_error=abort: keeping every resource of the failed build for debugging; delete them by tag {BUILD_TAG}={}", state.execution);
        state.data.extra.insert(
            "cleanup".into(),
            serde_json::to_value(CleanupReport {
                removed: vec![],
                kept,
            })?,
        );
        return Ok(state);
    }
    let mut regions = state.build.config.target_regions();
    for r in &state.ledger.resources {
        if r.region != "global" && !regions.contains(&r.region) {
            regions.push(r.region.clone());
        }
    }
    let mut instance_regions = vec![state.build.config.build_region().to_string()];
    for r in &state.ledger.resources {
        let launched = !matches!(r.kind, ResourceKind::Image | ResourceKind::Snapshot);
        if launched && r.region != "global" && !instance_regions.contains(&r.region) {
            instance_regions.push(r.region.clone());
        }
    }
    let scope = Scope {
        execution: state.execution.clone(),
        build_name: Some(state.build.name.clone()),
        regions,
        instance_regions,
        key_pairs: super::key_pair::creates_temporary_key(&state.build.config),
        delete_artifacts: failed,
        keep_images: if failed {
            BTreeSet::new()
        } else {
            state.data.amis.values().cloned().collect()
        },
        keep_volumes: if failed {
            BTreeSet::new()
        } else {
            state.data.volumes.values().flatten().cloned().collect()
        },
    };
    let mut iam_names = Vec::new();
    if state
        .build
        .config
        .run()
        .is_some_and(|r| r.temporary_iam_instance_profile_policy_document.is_some())
    {
        iam_names.push(temp_name(&state, "amiflow", "Iam").replace('_', "-"));
    }
    let mut ledger = state.ledger.clone();
    super::instance_store::discover(ctx, &state, &mut ledger).await?;
    let report = sweep(ctx, &scope, &ledger, &iam_names).await?;
    // Marked once everything else is gone (a NotReady pass above does not mark twice).
    // Unmarked, a later sweep of the execution could remove them unannounced: a build whose
    // artifacts cannot be marked fails, and they go too.
    if !failed {
        match mark_artifacts(ctx, &state).await {
            Ok(()) => {}
            Err(StepError::BuildFailed(why)) => {
                let everything = Scope {
                    delete_artifacts: true,
                    keep_images: BTreeSet::new(),
                    keep_volumes: BTreeSet::new(),
                    ..scope
                };
                sweep(ctx, &everything, &ledger, &iam_names).await?;
                return Err(StepError::BuildFailed(format!(
                    "the build's artifacts could not be marked {ARTIFACT_TAG} (so they were removed): {why}"
                )));
            }
            Err(retried) => return Err(retried),
        }
    }
    state.ledger.resources.retain(|r| !failed && r.artifact);
    if failed {
        state.data.amis.clear();
        state.data.snapshots.clear();
    }
    state
        .data
        .extra
        .insert("cleanup".into(), serde_json::to_value(report)?);
    Ok(state)
}

/// Tags what a successful build delivers with [`ARTIFACT_TAG`]: its AMIs with their
/// snapshots, and kept volumes with theirs; one CreateTags per region. Idempotent.
async fn mark_artifacts(ctx: &Ctx, state: &BuildState) -> Result<(), StepError> {
    let mut regions: BTreeSet<&String> = state.data.amis.keys().collect();
    regions.extend(state.data.volumes.keys());
    regions.extend(state.data.snapshots.keys());
    for region in regions {
        // data.snapshots already holds each final AMI's snapshots (WaitImageAvailable,
        // WaitCopiesAvailable) and ebsvolume's: no need to describe the images again.
        let mut ids: Vec<String> = state.data.amis.get(region).into_iter().cloned().collect();
        ids.extend(
            state
                .data
                .volumes
                .get(region)
                .into_iter()
                .flatten()
                .cloned(),
        );
        ids.extend(
            state
                .data
                .snapshots
                .get(region)
                .into_iter()
                .flatten()
                .cloned(),
        );
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            continue;
        }
        ctx.ec2(region)
            .create_tags()
            .set_resources(Some(ids.clone()))
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key(ARTIFACT_TAG)
                    .value(&state.build.name)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateTags", &ids.join(" "), e))?;
    }
    Ok(())
}

/// Whether a resource carries [`ARTIFACT_TAG`]: delivered by a build that succeeded.
fn is_artifact(tags: &[aws_sdk_ec2::types::Tag]) -> bool {
    tags.iter().any(|t| t.key() == Some(ARTIFACT_TAG))
}

/// The janitor's entry: removes everything tagged with the execution in these regions,
/// partial AMIs included, but not what a build that succeeded delivered ([`ARTIFACT_TAG`]).
pub async fn cleanup_by_tag(
    ctx: &Ctx,
    execution: &str,
    regions: &[String],
) -> Result<CleanupReport, StepError> {
    let scope = Scope {
        execution: execution.to_string(),
        build_name: None,
        regions: regions.to_vec(),
        instance_regions: regions.to_vec(),
        key_pairs: true,
        delete_artifacts: true,
        keep_images: BTreeSet::new(),
        keep_volumes: BTreeSet::new(),
    };
    sweep(ctx, &scope, &Ledger::default(), &[]).await
}

fn ledger_ids(ledger: &Ledger, kind: ResourceKind, region: &str) -> Vec<String> {
    ledger
        .of_kind(kind)
        .filter(|r| r.region == region)
        .map(|r| r.id.clone())
        .collect()
}

fn union(mut a: Vec<String>, b: impl IntoIterator<Item = String>) -> Vec<String> {
    for x in b {
        if !a.contains(&x) {
            a.push(x);
        }
    }
    a
}

pub async fn sweep(
    ctx: &Ctx,
    scope: &Scope,
    ledger: &Ledger,
    iam_names: &[String],
) -> Result<CleanupReport, StepError> {
    let mut report = CleanupReport::default();
    let mut waiting: Vec<String> = Vec::new();
    // Removals not possible yet: noted, and the sweep goes on with the other resources.
    let mut pending: Vec<String> = Vec::new();

    // Instances first: everything else waits for them to be gone.
    for region in &scope.instance_regions {
        let ec2 = ctx.ec2(region);
        let tagged = ec2
            .describe_instances()
            .set_filters(Some(scope.filters()))
            .send()
            .await
            .map_err(|e| classify("DescribeInstances", &scope.execution, e))?;
        let mut instances: Vec<(String, InstanceStateName, Option<String>)> = tagged
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                Some((
                    i.instance_id()?.to_string(),
                    i.state()?.name()?.clone(),
                    i.spot_instance_request_id().map(String::from),
                ))
            })
            .collect();
        for id in ledger_ids(ledger, ResourceKind::Instance, region) {
            if !instances.iter().any(|(i, _, _)| *i == id) {
                if let Some(i) = super::instance_state::describe(ctx, region, &id).await? {
                    instances.push((
                        id,
                        i.state()
                            .and_then(|s| s.name())
                            .cloned()
                            .unwrap_or(InstanceStateName::Terminated),
                        i.spot_instance_request_id().map(String::from),
                    ));
                }
            }
        }
        let spot = union(
            ledger_ids(ledger, ResourceKind::SpotRequest, region),
            instances.iter().filter_map(|(_, _, s)| s.clone()),
        );
        if !spot.is_empty() {
            match ec2
                .cancel_spot_instance_requests()
                .set_spot_instance_request_ids(Some(spot.clone()))
                .send()
                .await
            {
                Ok(_) => report
                    .removed
                    .extend(spot.iter().map(|s| format!("spot request {s} ({region})"))),
                Err(e) if error_code(&e) == Some("InvalidSpotInstanceRequestID.NotFound") => {}
                Err(e) => return Err(classify("CancelSpotInstanceRequests", &spot.join(","), e)),
            }
        }
        let live: Vec<String> = instances
            .iter()
            .filter(|(_, s, _)| {
                !matches!(
                    s,
                    InstanceStateName::Terminated | InstanceStateName::ShuttingDown
                )
            })
            .map(|(i, _, _)| i.clone())
            .collect();
        if !live.is_empty() {
            ec2.terminate_instances()
                .set_instance_ids(Some(live.clone()))
                .send()
                .await
                .map_err(|e| classify("TerminateInstances", &live.join(","), e))?;
            report
                .removed
                .extend(live.iter().map(|i| format!("instance {i} ({region})")));
        }
        for (id, s, _) in &instances {
            if live.contains(id) || *s != InstanceStateName::Terminated {
                waiting.push(format!("instance {id} ({region})"));
            }
        }

        // Key pairs and their private keys do not depend on the instance being gone.
        let tagged_keys: Vec<String> = if !scope.key_pairs {
            Vec::new()
        } else {
            match ec2
                .describe_key_pairs()
                .set_filters(Some(scope.filters()))
                .send()
                .await
            {
                Ok(out) => out
                    .key_pairs()
                    .iter()
                    .filter_map(|k| k.key_name().map(String::from))
                    .collect(),
                Err(e) => return Err(classify("DescribeKeyPairs", &scope.execution, e)),
            }
        };
        for name in union(
            ledger_ids(ledger, ResourceKind::KeyPair, region),
            tagged_keys,
        ) {
            match ec2.delete_key_pair().key_name(&name).send().await {
                Ok(_) => report.removed.push(format!("key pair {name} ({region})")),
                Err(e) if error_code(&e) == Some("InvalidKeyPair.NotFound") => {}
                Err(e) => return Err(classify("DeleteKeyPair", &name, e)),
            }
        }
        let ssm = ctx.ssm(region);
        let mut path = format!("/amiflow/{}/", scope.execution);
        if let Some(b) = &scope.build_name {
            let clean: String = b
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            path.push_str(&clean);
            path.push('/');
        }
        let mut params = ledger_ids(ledger, ResourceKind::Parameter, region);
        let mut next: Option<String> = None;
        while scope.key_pairs {
            let out = ssm
                .get_parameters_by_path()
                .path(&path)
                .recursive(true)
                .set_next_token(next.clone())
                .send()
                .await
                .map_err(|e| classify("GetParametersByPath", &path, e))?;
            params = union(
                params,
                out.parameters()
                    .iter()
                    .filter_map(|p| p.name().map(String::from)),
            );
            next = out.next_token().map(String::from);
            if next.is_none() {
                break;
            }
        }
        for p in params {
            match ssm.delete_parameter().name(&p).send().await {
                Ok(_) => report.removed.push(format!("parameter {p} ({region})")),
                Err(e) if error_code(&e) == Some("ParameterNotFound") => {}
                Err(e) => return Err(classify("DeleteParameter", &p, e)),
            }
        }
    }
    if !waiting.is_empty() {
        return Err(StepError::NotReady(format!(
            "waiting for {} to terminate before removing the rest",
            waiting.join(", ")
        )));
    }

    for region in &scope.regions {
        let ec2 = ctx.ec2(region);
        if scope.instance_regions.contains(region) {
            defer(
                sweep_groups_and_volumes(ctx, scope, ledger, region, &mut report).await,
                &mut pending,
            )?;
        }
        // Images: the intermediary always; every image of a failed build.
        let tagged = ec2
            .describe_images()
            .owners("self")
            .set_filters(Some(scope.filters()))
            .send()
            .await
            .map_err(|e| classify("DescribeImages", &scope.execution, e))?;
        let mut images: Vec<String> = tagged
            .images()
            .iter()
            .filter(|i| !is_artifact(i.tags()))
            .filter_map(|i| i.image_id().map(String::from))
            .collect();
        for r in ledger
            .of_kind(ResourceKind::Image)
            .filter(|r| &r.region == region)
        {
            if (!r.artifact || scope.delete_artifacts) && !images.contains(&r.id) {
                images.push(r.id.clone());
            }
        }
        for img in images {
            if scope.keep_images.contains(&img) {
                report.kept.push(format!("image {img} ({region})"));
                continue;
            }
            let Some(snaps) = defer(
                super::images::destroy(ctx, region, &img).await,
                &mut pending,
            )?
            else {
                continue;
            };
            report.removed.push(format!("image {img} ({region})"));
            report
                .removed
                .extend(snaps.iter().map(|s| format!("snapshot {s} ({region})")));
        }
        if scope.delete_artifacts {
            let tagged = ec2
                .describe_snapshots()
                .owner_ids("self")
                .set_filters(Some(scope.filters()))
                .send()
                .await
                .map_err(|e| classify("DescribeSnapshots", &scope.execution, e))?;
            let snaps = union(
                ledger_ids(ledger, ResourceKind::Snapshot, region),
                tagged
                    .snapshots()
                    .iter()
                    .filter(|s| !is_artifact(s.tags()))
                    .filter_map(|s| s.snapshot_id().map(String::from)),
            );
            for s in snaps {
                let deleted = super::images::delete_snapshot(ctx, region, &s).await;
                if defer(deleted, &mut pending)?.is_some() {
                    report.removed.push(format!("snapshot {s} ({region})"));
                }
            }
        }
    }

    // S3 (amazon-instance): the bundle and the bucket the build created, when not kept.
    for r in ledger
        .of_kind(ResourceKind::S3Object)
        .filter(|r| !r.artifact || scope.delete_artifacts)
    {
        let removed = super::instance_store::delete_objects_under(ctx, &r.region, &r.id).await?;
        report.removed.extend(removed);
    }
    for r in ledger
        .of_kind(ResourceKind::S3Bucket)
        .filter(|_| scope.delete_artifacts)
    {
        match ctx.s3(&r.region).delete_bucket().bucket(&r.id).send().await {
            Ok(_) => report
                .removed
                .push(format!("bucket {} ({})", r.id, r.region)),
            Err(e)
                if e.as_service_error().and_then(|s| s.meta().code()) == Some("NoSuchBucket") => {}
            Err(e)
                if e.as_service_error().and_then(|s| s.meta().code()) == Some("BucketNotEmpty") =>
            {
                tracing::warn!(
                    "bucket {} was created by this build but holds other objects now: kept",
                    r.id
                );
                report
                    .kept
                    .push(format!("bucket {} ({}): not empty", r.id, r.region));
            }
            // Throttling and 5xx retried; AccessDenied and the like fail, naming the bucket.
            Err(e) => return Err(classify("DeleteBucket", &r.id, e)),
        }
    }

    // IAM (global): by ledger, by the build's deterministic name, and by path + tag.
    let iam = ctx.iam();
    let mut profiles = union(
        ledger
            .of_kind(ResourceKind::InstanceProfile)
            .map(|r| r.id.clone())
            .collect(),
        iam_names.iter().cloned(),
    );
    let mut roles = union(
        ledger
            .of_kind(ResourceKind::Role)
            .map(|r| r.id.clone())
            .collect(),
        iam_names.iter().cloned(),
    );
    // Found by path + the role's tags (GetRole returns them; profile tags need a call
    // emulators lack), then every profile under the path holding such a role.
    // Every page: an account keeps one role per build until its Cleanup, easily over 100.
    let listed: Vec<_> = iam
        .list_roles()
        .path_prefix(IAM_PATH)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| classify("ListRoles", IAM_PATH, e))?;
    for r in &listed {
        let name = r.role_name().to_string();
        let role = match iam.get_role().role_name(&name).send().await {
            Ok(out) => out.role,
            Err(e) if error_code(&e) == Some("NoSuchEntity") => continue,
            Err(e) => return Err(classify("GetRole", &name, e)),
        };
        let tags = role.map(|r| r.tags.unwrap_or_default()).unwrap_or_default();
        let ours = tags
            .iter()
            .any(|t| t.key() == BUILD_TAG && t.value() == scope.execution)
            && scope.build_name.as_ref().is_none_or(|b| {
                tags.iter()
                    .any(|t| t.key() == BUILD_NAME_TAG && t.value() == b)
            });
        if ours {
            roles = union(roles, [name]);
        }
    }
    let listed: Vec<_> = iam
        .list_instance_profiles()
        .path_prefix(IAM_PATH)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| classify("ListInstanceProfiles", IAM_PATH, e))?;
    for p in &listed {
        if p.roles()
            .iter()
            .any(|r| roles.iter().any(|n| n == r.role_name()))
            || roles.iter().any(|n| n == p.instance_profile_name())
        {
            profiles = union(profiles, [p.instance_profile_name().to_string()]);
        }
    }
    for p in &profiles {
        match iam
            .get_instance_profile()
            .instance_profile_name(p)
            .send()
            .await
        {
            Ok(out) => {
                for r in out
                    .instance_profile()
                    .map(|p| p.roles())
                    .unwrap_or_default()
                {
                    roles = union(roles, [r.role_name().to_string()]);
                    match iam
                        .remove_role_from_instance_profile()
                        .instance_profile_name(p)
                        .role_name(r.role_name())
                        .send()
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if error_code(&e) == Some("NoSuchEntity") => {}
                        Err(e) => return Err(classify("RemoveRoleFromInstanceProfile", p, e)),
                    }
                }
                match iam
                    .delete_instance_profile()
                    .instance_profile_name(p)
                    .send()
                    .await
                {
                    Ok(_) => report.removed.push(format!("instance profile {p}")),
                    Err(e) if error_code(&e) == Some("NoSuchEntity") => {}
                    Err(e) => return Err(classify("DeleteInstanceProfile", p, e)),
                }
            }
            Err(e) if error_code(&e) == Some("NoSuchEntity") => {}
            Err(e) => return Err(classify("GetInstanceProfile", p, e)),
        }
    }
    for r in &roles {
        let policies = match iam.list_role_policies().role_name(r).send().await {
            Ok(out) => out.policy_names().to_vec(),
            Err(e) if error_code(&e) == Some("NoSuchEntity") => continue,
            Err(e) => return Err(classify("ListRolePolicies", r, e)),
        };
        for p in policies {
            match iam
                .delete_role_policy()
                .role_name(r)
                .policy_name(&p)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if error_code(&e) == Some("NoSuchEntity") => {}
                Err(e) => return Err(classify("DeleteRolePolicy", r, e)),
            }
        }
        match iam.delete_role().role_name(r).send().await {
            Ok(_) => report.removed.push(format!("role {r}")),
            Err(e) if error_code(&e) == Some("NoSuchEntity") => {}
            Err(e) => return Err(classify("DeleteRole", r, e)),
        }
    }
    if !pending.is_empty() {
        return Err(StepError::NotReady(pending.join("; ")));
    }
    Ok(report)
}

/// A NotReady result becomes a note in `pending` (None); other errors stay errors.
fn defer<T>(
    result: Result<T, StepError>,
    pending: &mut Vec<String>,
) -> Result<Option<T>, StepError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(StepError::NotReady(why)) => {
            pending.push(why);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Security groups and volumes of one region where the build launched.
async fn sweep_groups_and_volumes(
    ctx: &Ctx,
    scope: &Scope,
    ledger: &Ledger,
    region: &str,
    report: &mut CleanupReport,
) -> Result<(), StepError> {
    let ec2 = ctx.ec2(region);
    let mut stuck: Vec<String> = Vec::new();
    let tagged = ec2
        .describe_security_groups()
        .set_filters(Some(scope.filters()))
        .send()
        .await
        .map_err(|e| classify("DescribeSecurityGroups", &scope.execution, e))?;
    let groups = union(
        ledger_ids(ledger, ResourceKind::SecurityGroup, region),
        tagged
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(String::from)),
    );
    for g in groups {
        match ec2.delete_security_group().group_id(&g).send().await {
            Ok(_) => report
                .removed
                .push(format!("security group {g} ({region})")),
            Err(e) if error_code(&e) == Some("InvalidGroup.NotFound") => {}
            Err(e) if error_code(&e) == Some("DependencyViolation") => stuck.push(format!(
                "security group {g} ({region}) is still in use (network interface detaching)"
            )),
            Err(e) => return Err(classify("DeleteSecurityGroup", &g, e)),
        }
    }
    let vols = ec2
        .describe_volumes()
        .set_filters(Some(scope.filters()))
        .send()
        .await
        .map_err(|e| classify("DescribeVolumes", &scope.execution, e))?;
    let mut in_use = Vec::new();
    let mut volumes: Vec<String> = Vec::new();
    for v in vols.volumes().iter().filter(|v| !is_artifact(v.tags())) {
        let id = v.volume_id().unwrap_or_default().to_string();
        match v.state() {
            Some(VolumeState::Available) => volumes.push(id),
            Some(VolumeState::InUse) => {
                // A chroot build volume stays attached to a host the build does not own.
                super::chroot::detach(ctx, region, v).await?;
                in_use.push(id)
            }
            Some(VolumeState::Creating) => in_use.push(id),
            _ => {}
        }
    }
    for id in ledger_ids(ledger, ResourceKind::Volume, region) {
        if !volumes.contains(&id) && !in_use.contains(&id) {
            volumes.push(id);
        }
    }
    for v in volumes {
        if scope.keep_volumes.contains(&v) {
            report.kept.push(format!("volume {v} ({region})"));
            continue;
        }
        match ec2.delete_volume().volume_id(&v).send().await {
            Ok(_) => report.removed.push(format!("volume {v} ({region})")),
            Err(e) if error_code(&e) == Some("InvalidVolume.NotFound") => {}
            Err(e) if error_code(&e) == Some("VolumeInUse") => in_use.push(v),
            Err(e) => return Err(classify("DeleteVolume", &v, e)),
        }
    }
    if !in_use.is_empty() {
        stuck.push(format!(
            "volumes {} ({region}) are still attached",
            in_use.join(", ")
        ));
    }
    if !stuck.is_empty() {
        return Err(StepError::NotReady(stuck.join("; ")));
    }
    Ok(())
}
