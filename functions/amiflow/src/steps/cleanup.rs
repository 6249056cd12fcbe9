//! Cleanup: removes everything the build created except its artifact, found by the ledger
//! AND by tag search (`tag:amiflow:build` = execution), idempotently, through
//! [`resources::sweep`]. After a success the ledger alone vouches for what it records
//! ([`vouched_kinds`]): no tag search, no waiting for an instance nothing else waits on. Runs on success and, through the Catch, on failure, where the
//! partial AMIs and their snapshots go too. `NotReady` while instances terminate or
//! something else cannot go yet. `on_error: abort` keeps everything of a failed build and
//! says what was kept. A successful build's artifacts are then marked `amiflow:artifact`,
//! so that no later sweep of the execution removes them.
//!
//! The janitor (`steps/janitor.rs`) runs the same sweep knowing only the execution
//! ([`resources::sweep_execution`]).

use std::collections::BTreeSet;

use crate::prelude::*;
pub use crate::resources::CleanupReport;
use crate::resources::{self, Kind, Scope, CLEANUP_ACTIONS};
use crate::state::ARTIFACT_TAG;

pub const SPEC: StepSpec = StepSpec {
    name: "Cleanup",
    // Marking the artifacts, and every resource kind's finding and removal.
    iam_actions: &ACTIONS,
    reach: &[],
    calls: Some(local_calls),
    wait: Some(waits::INSTANCE_TERMINATED),
    timeout_seconds: 300,
    handler: handler!(run),
};

const MARK_ACTIONS: &[&str] = &["ec2:CreateTags"];

/// What a local build calls here, on success or after a failure: the finding and removal
/// of each kind its config can make ([`Kind::cleanup_calls`]), and the marking of its
/// artifacts.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let mut calls: Vec<&'static str> = Kind::CLEANUP_ORDER
        .into_iter()
        .flat_map(|k| k.cleanup_calls(build))
        .collect();
    calls.extend(MARK_ACTIONS);
    calls
}
const ACTIONS: [&str; MARK_ACTIONS.len() + CLEANUP_ACTIONS.len()] = {
    let mut out = [""; MARK_ACTIONS.len() + CLEANUP_ACTIONS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = if i < MARK_ACTIONS.len() {
            MARK_ACTIONS[i]
        } else {
            CLEANUP_ACTIONS[i - MARK_ACTIONS.len()]
        };
        i += 1;
    }
    out
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let failed = state.error.is_some();
    if failed && state.on_error.keeps_resources() {
        let kept: Vec<String> = state
            .ledger
            .resources
            .iter()
            .map(|r| format!("{:?} {} ({})", r.kind, r.id, r.region))
            .collect();
        tracing::warn!(kept = ?kept, "on_error={:?}: keeping every resource of the failed build for debugging; delete them by tag {BUILD_TAG}={}", state.on_error, state.execution);
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
        state_machine: Some(state.state_machine.clone()).filter(|m| !m.is_empty()),
        build_name: Some(state.build.name.clone()),
        regions,
        instance_regions,
        key_pairs: resources::key_pair::made_for(&state.build.config),
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
        iam_names: state
            .build
            .config
            .run()
            .filter(|r| r.temporary_iam_instance_profile_policy_document.is_some())
            .map(|_| vec![resources::iam::temporary_name(&state)])
            .unwrap_or_default(),
        vouched: if failed {
            Vec::new()
        } else {
            vouched_kinds(&state)
        },
        staging: if failed {
            ssm_staging(ctx, &state)
        } else {
            Vec::new()
        },
        kinds: Kind::CLEANUP_ORDER
            .into_iter()
            .filter(|k| k.made_by(&state.build))
            .collect(),
    };
    let mut ledger = state.ledger.clone();
    crate::builders::instance_store::discover(ctx, &state, &mut ledger).await?;
    let mut report = resources::sweep(ctx, &scope, &ledger).await?;
    // A deployed wait whose event never came (the callback state timed out into polling)
    // leaves its token (`resources/await_token.rs`).
    if ctx.in_lambda
        && resources::await_token::remove(ctx, &state.execution, &state.build.name).await?
    {
        report.removed.push(format!(
            "parameter {}",
            resources::await_token::parameter_name(
                &ctx.parameter_owner(&state.execution),
                &state.build.name,
            )
        ));
    }
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
                resources::sweep(ctx, &everything, &ledger).await?;
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

/// Where the build's SSM provisioning may have left staged scripts and command output: a
/// command that ran to its end removed its own, so only a failed build has any to sweep.
/// amazon-chroot's staged job (`chroot::staged_job`) likewise, in the stack's region.
fn ssm_staging(ctx: &Ctx, state: &BuildState) -> Vec<(String, String)> {
    let (region, bucket) = if state.build.builder_type == amiflow_template::BuilderType::Chroot {
        let Some((bucket, _)) = crate::builders::chroot::staged_job(state) else {
            return Vec::new();
        };
        (ctx.own_region(), bucket)
    } else {
        let Ok(comm) = crate::provision::communicator::Communication::of_state(state) else {
            return Vec::new();
        };
        match (&comm.communicator, comm.ssm_bucket) {
            (crate::provision::communicator::Communicator::Ssm, Some(bucket)) => {
                (comm.region, bucket)
            }
            _ => return Vec::new(),
        }
    };
    crate::provision::ssm::staging_prefixes(&bucket, &state.execution, Some(&state.build.name))
        .into_iter()
        .map(|at| (region.clone(), at))
        .collect()
}

/// What the ledger of a build that succeeded vouches for: every kind, except volumes when
/// the source instance launches some that outlive it (`delete_on_termination: false` in
/// amazon-ebs, -ebssurrogate or -instance launch mappings): RunInstances makes those, and
/// only a search by tag finds them. amazon-ebsvolume records its kept volumes (TagVolumes).
fn vouched_kinds(state: &BuildState) -> Vec<resources::Kind> {
    let untracked_volumes = state.build.builder_type != amiflow_template::BuilderType::EbsVolume
        && resources::volume::launch_volume_outlives_instance(&state.build.config);
    resources::Kind::CLEANUP_ORDER
        .into_iter()
        .filter(|k| !(untracked_volumes && *k == resources::Kind::Volume))
        .collect()
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
