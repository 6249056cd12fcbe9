//! TagVolumes (amazon-ebsvolume's stepTagEBSVolumes): finds the kept volumes (the
//! `ebs_volumes` with `delete_on_termination: false`), removes the temporary
//! `run_volume_tags` from them and puts each volume's own `tags` on it. The kept volumes
//! are the artifact: recorded in `data.volumes` and in the ledger as artifacts (removed if
//! the build fails later, kept when it succeeds).

use amiflow_template::config::EbsVolumeMapping;
use amiflow_template::BuilderConfig;
use aws_sdk_ec2::types::Tag;

use crate::builders::launch_volumes::{ebsvolume, instance_volumes, volume_at};
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "TagVolumes",
    iam_actions: &[
        "ec2:DescribeInstances",
        "ec2:DeleteTags",
        "ec2:CreateTags",
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeInstances always; DeleteTags when `run_volume_tags`
/// has tags other than the build's own and an `ebs_volumes` entry is kept ([`is_kept`]);
/// CreateTags when an `ebs_volumes` entry has `tags`.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let BuilderConfig::EbsVolume(c) = &build.config else {
        return Vec::new();
    };
    let mut calls = vec!["ec2:DescribeInstances"];
    let own = [BUILD_TAG, BUILD_NAME_TAG, STATE_MACHINE_TAG];
    let temporary = c.run_volume_tags.keys().any(|k| !own.contains(&k.as_str()));
    if temporary && c.ebs_volumes.iter().any(is_kept) {
        calls.push("ec2:DeleteTags");
    }
    if c.ebs_volumes.iter().any(|v| !v.tags.is_empty()) {
        calls.push("ec2:CreateTags");
    }
    calls
}

/// A kept volume (the artifact): EC2 does not delete it with the instance.
fn is_kept(v: &EbsVolumeMapping) -> bool {
    !v.device.delete_on_termination
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let Some(cfg) = ebsvolume(&state).cloned() else {
        return Err(StepError::BuildFailed(format!(
            "TagVolumes is an amazon-ebsvolume step, not {}",
            state.build.builder_type.as_str()
        )));
    };
    let region = cfg.access.region.clone().unwrap_or_default();
    let instance = state
        .data
        .instance_id
        .clone()
        .ok_or_else(|| StepError::BuildFailed("TagVolumes: no instance in the state".into()))?;
    let ec2 = ctx.ec2(&region);
    let attached = instance_volumes(ctx, &region, &instance).await?;
    let mut ids = Vec::new();
    for (i, v) in cfg.ebs_volumes.iter().enumerate() {
        ids.push(volume_at(
            &attached,
            &v.device.device_name,
            &format!("ebs_volumes[{i}].device_name"),
        )?);
    }
    let kept: Vec<String> = cfg
        .ebs_volumes
        .iter()
        .zip(&ids)
        .filter(|(v, _)| is_kept(v))
        .map(|(_, id)| id.clone())
        .collect();
    // Packer's order: the launch-time tags go first, then each volume gets its own. The
    // build's own tags stay until the build ends (Cleanup finds the volumes by them if a
    // later step fails).
    let own = build_tags(&state);
    let temporary: Vec<Tag> = render_tags(
        &ctx.secrets,
        "run_volume_tags",
        &cfg.run_volume_tags,
        &state.data,
        &region,
    )?
    .into_iter()
    .filter(|(k, _)| !own.contains_key(k))
    .map(|(k, v)| Tag::builder().key(k).value(v).build())
    .collect();
    if !temporary.is_empty() && !kept.is_empty() {
        ec2.delete_tags()
            .set_resources(Some(kept.clone()))
            .set_tags(Some(temporary))
            .send()
            .await
            .map_err(|e| classify("DeleteTags (run_volume_tags)", &kept.join(","), e))?;
    }
    for (v, id) in cfg.ebs_volumes.iter().zip(&ids) {
        if v.tags.is_empty() {
            continue;
        }
        let tags: Vec<Tag> = render_tags(
            &ctx.secrets,
            &format!("ebs_volumes tags of {}", v.device.device_name),
            &v.tags,
            &state.data,
            &region,
        )?
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
        ec2.create_tags()
            .resources(id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| classify("CreateTags", id, e))?;
    }
    for id in &kept {
        state.ledger.record(ResourceKind::Volume, &region, id, true);
    }
    state.data.volumes.insert(region, kept);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::steps::prepare::fixture::of_config as build;

    #[test]
    fn deletes_run_volume_tags_from_kept_volumes_and_tags_those_with_tags() {
        let calls = |c: serde_json::Value| local_calls(&build("amazon-ebsvolume", c));
        assert_eq!(
            calls(serde_json::json!({"run_volume_tags": {"stage": "run"},
                "ebs_volumes": [{"device_name": "/dev/xvdf", "tags": {"k": "v"}}]})),
            vec!["ec2:DescribeInstances", "ec2:DeleteTags", "ec2:CreateTags"]
        );
        // Every volume goes with the instance: no run_volume_tags to take off.
        assert_eq!(
            calls(serde_json::json!({"run_volume_tags": {"stage": "run"},
                "ebs_volumes": [{"device_name": "/dev/xvdf", "delete_on_termination": true}]})),
            vec!["ec2:DescribeInstances"]
        );
        assert_eq!(
            calls(serde_json::json!({"ebs_volumes": [{"device_name": "/dev/xvdf"}]})),
            vec!["ec2:DescribeInstances"]
        );
    }
}
