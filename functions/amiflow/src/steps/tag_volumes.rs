//! TagVolumes (amazon-ebsvolume's stepTagEBSVolumes): finds the kept volumes (the
//! `ebs_volumes` with `delete_on_termination: false`), removes the temporary
//! `run_volume_tags` from them and puts each volume's own `tags` on it. The kept volumes
//! are the artifact: recorded in `data.volumes` and in the ledger as artifacts (removed if
//! the build fails later, kept when it succeeds).

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
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

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
        .filter(|(v, _)| !v.device.delete_on_termination)
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
