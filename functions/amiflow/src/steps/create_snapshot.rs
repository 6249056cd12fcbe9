//! CreateSnapshot: snapshots the detached build volume (Packer's description
//! "Packer: <time>"), tagged at creation with `snapshot_tags` and the build's tags, recorded
//! as part of the artifact. A retried step finds its snapshot by volume and build tag.

use crate::builders::chroot;
use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "CreateSnapshot",
    iam_actions: &[
        "ec2:DescribeSnapshots",
        "ec2:CreateSnapshot",
        "ec2:CreateTags",
        // Tags may use sensitive variables (resources/sensitive_var.rs).
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let vol = chroot::volume(&state, "CreateSnapshot")?;
    let ec2 = ctx.ec2(&region);
    let mut lookup = own_filters(&state);
    lookup.push(filter("volume-id", [vol.volume_id.clone()]));
    let found = ec2
        .describe_snapshots()
        .owner_ids("self")
        .set_filters(Some(lookup))
        .send()
        .await
        .map_err(|e| classify("DescribeSnapshots", &vol.volume_id, e))?;
    let id = match found.snapshots().first().and_then(|s| s.snapshot_id()) {
        Some(id) => id.to_string(),
        None => {
            let tags = render_tags(
                &ctx.secrets,
                "snapshot_tags",
                &ami_config(&state, SPEC.name)?.snapshot_tags,
                &state.data,
                &region,
            )?;
            let out = ec2
                .create_snapshot()
                .volume_id(&vol.volume_id)
                .description(format!("Packer: {}", chrono::Utc::now().to_rfc3339()))
                .tag_specifications(tag_spec(ResourceType::Snapshot, &state, &tags))
                .send()
                .await
                .map_err(|e| classify("CreateSnapshot", &vol.volume_id, e))?;
            out.snapshot_id().unwrap_or_default().to_string()
        }
    };
    state
        .ledger
        .record(ResourceKind::Snapshot, &region, &id, true);
    state.data.snapshots.insert(region, vec![id]);
    waits::SNAPSHOTS_COMPLETED.begin(&mut state);
    Ok(state)
}
