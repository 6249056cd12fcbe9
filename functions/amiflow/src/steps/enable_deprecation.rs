//! EnableDeprecation: `deprecate_at` on every AMI.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "EnableDeprecation",
    iam_actions: &["ec2:EnableImageDeprecation"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: EnableImageDeprecation with `deprecate_at`, when the
/// build ends with AMIs ([`crate::steps::copy_image::leaves_amis`]); else nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let deprecates = build
        .config
        .ami()
        .and_then(|a| a.deprecate_at.as_deref())
        .is_some_and(|at| !at.is_empty());
    if deprecates && crate::steps::copy_image::leaves_amis(&build.config) {
        vec!["ec2:EnableImageDeprecation"]
    } else {
        Vec::new()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn only_deprecate_at_deprecates() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(json!({"deprecate_at": "2030-01-01T00:00:00Z"}))),
            ["ec2:EnableImageDeprecation"]
        );
    }
}
