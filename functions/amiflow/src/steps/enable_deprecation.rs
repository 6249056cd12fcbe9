//! EnableDeprecation: `deprecate_at` on every AMI.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "EnableDeprecation",
    iam_actions: &["ec2:EnableImageDeprecation"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let Some(at) = ami_config(&state, SPEC.name)?
        .deprecate_at
        .clone()
        .filter(|s| !s.is_empty())
    else {
        return Ok(state);
    };
    let when = chrono::DateTime::parse_from_rfc3339(&at).map_err(|e| {
        StepError::BuildFailed(format!(
            "deprecate_at {at:?}: not an RFC 3339 time ({e}); e.g. 2030-01-01T00:00:00Z"
        ))
    })?;
    let when = aws_sdk_ec2::primitives::DateTime::from_secs(when.timestamp());
    for (region, ami) in &state.data.amis {
        ctx.ec2(region)
            .enable_image_deprecation()
            .image_id(ami)
            .deprecate_at(when)
            .send()
            .await
            .map_err(|e| classify("EnableImageDeprecation", ami, e))?;
    }
    Ok(state)
}
