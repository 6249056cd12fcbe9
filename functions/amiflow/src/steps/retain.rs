//! Retain (after Publish): a pipeline's older images retired by its `retain` rules
//! ([`amiflow_template::pipeline::Retain::action`]), in every region the new image has a
//! copy: kept, deprecated (EnableImageDeprecation), or deregistered with their snapshots.
//!
//! Only images tagged `amiflow:pipeline` with this pipeline's name, available, and not the
//! run's current ones (built, or found up to date) are considered ([`crate::resources::image::of_pipeline`]); nothing
//! else is ever touched. With `retain_dry_run` it records what it would do and does nothing.
//!
//! Input and output: Publish's output (Finalize's shape). Without a pipeline or without
//! `retain` it is passed on unchanged. An up-to-date run retires too: older images age past
//! `delete_after_days` between builds, and an earlier run may have stopped before Retain.

use amiflow_template::pipeline::RetainAction;

use crate::pipeline::Retired;
use crate::prelude::*;
use crate::steps::finalize::FinalizeOutput;

pub const SPEC: StepSpec = StepSpec {
    name: "Retain",
    iam_actions: &[
        "ec2:DescribeImages",
        "ec2:EnableImageDeprecation",
        "ec2:DeregisterImage",
        "ec2:DeleteSnapshot",
    ],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: 300,
    handler: handler!(run),
};

/// EC2 refuses a deprecation time in the past: deprecate a minute from now.
const DEPRECATE_IN_SECONDS: i64 = 60;

pub async fn run(ctx: &Ctx, mut output: FinalizeOutput) -> Result<FinalizeOutput, StepError> {
    let Some(run) = output.pipeline.as_mut() else {
        return Ok(output);
    };
    let Some(rules) = run.pipeline.retain.clone() else {
        return Ok(output);
    };
    let now = chrono::Utc::now();
    let current = run.current.clone();
    for (region, new_image) in &current {
        let older = crate::resources::image::of_pipeline(ctx, region, &run.pipeline.name).await?;
        let older = older
            .iter()
            .filter(|i| i.image_id().is_some_and(|id| id != new_image));
        for (position, img) in older.enumerate() {
            let id = img.image_id().unwrap_or_default().to_string();
            let age_days = img
                .creation_date()
                .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
                .map_or(0, |created| {
                    (now - created.with_timezone(&chrono::Utc)).num_days()
                });
            let action = rules.action(position, age_days);
            let already_deprecated = img.deprecation_time().is_some_and(|t| !t.is_empty());
            let mut retired = Retired {
                region: region.clone(),
                image: id.clone(),
                action,
                snapshots: Vec::new(),
            };
            match action {
                RetainAction::Keep => continue,
                RetainAction::Deprecate if already_deprecated => continue,
                _ if run.dry_run => {
                    retired.snapshots = crate::resources::image::snapshots(img);
                }
                RetainAction::Deprecate => {
                    let at = aws_sdk_ec2::primitives::DateTime::from_secs(
                        now.timestamp() + DEPRECATE_IN_SECONDS,
                    );
                    ctx.ec2(region)
                        .enable_image_deprecation()
                        .image_id(&id)
                        .deprecate_at(at)
                        .send()
                        .await
                        .map_err(|e| classify("EnableImageDeprecation", &id, e))?;
                }
                RetainAction::Deregister => {
                    retired.snapshots = crate::resources::image::destroy(ctx, region, &id).await?;
                }
            }
            run.retired.push(retired);
        }
    }
    Ok(output)
}
