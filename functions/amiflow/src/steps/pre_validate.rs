//! PreValidate: the regions exist and the AMI name is free in every target region
//! (unless `force_deregister`), before anything is created.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "PreValidate",
    iam_actions: &[
        "ec2:DescribeRegions",
        "ec2:DescribeImages",
        "ec2:DescribeVpcs",
    ],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeRegions unless `skip_region_validation`,
/// DescribeVpcs for a `vpc_id` without a subnet ([`vpc_to_check`]), DescribeImages unless
/// `force_deregister` or `skip_create_ami` ([`checks_ami_name`]).
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let cfg = &build.config;
    let mut calls = Vec::new();
    if !cfg.access().skip_region_validation {
        calls.push("ec2:DescribeRegions");
    }
    if vpc_to_check(cfg).is_some() {
        calls.push("ec2:DescribeVpcs");
    }
    if checks_ami_name(cfg) {
        calls.push("ec2:DescribeImages");
    }
    calls
}

/// The `vpc_id` to check is a default VPC: one given without `subnet_id` or
/// `subnet_filter` to launch into.
pub(crate) fn vpc_to_check(cfg: &amiflow_template::BuilderConfig) -> Option<&str> {
    match cfg
        .run()
        .map(|r| (&r.vpc_id, &r.subnet_id, &r.subnet_filter))
    {
        Some((Some(vpc), None, None)) => Some(vpc.as_str()),
        _ => None,
    }
}

/// Whether the AMI name is looked up in every target region: not when an image of that
/// name is to be replaced (`force_deregister`) or none is made (`skip_create_ami`).
pub(crate) fn checks_ami_name(cfg: &amiflow_template::BuilderConfig) -> bool {
    cfg.ami().is_some_and(|a| !a.force_deregister) && !cfg.skip_create_ami()
}

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let cfg = &state.build.config;
    let ec2 = ctx.ec2(cfg.build_region());
    if !cfg.access().skip_region_validation {
        let out = ec2
            .describe_regions()
            .all_regions(true)
            .send()
            .await
            .map_err(|e| classify("DescribeRegions", "", e))?;
        let known: Vec<String> = out
            .regions()
            .iter()
            .filter_map(|r| r.region_name().map(String::from))
            .collect();
        let bad: Vec<String> = cfg
            .target_regions()
            .into_iter()
            .filter(|r| !known.contains(r))
            .collect();
        if !bad.is_empty() {
            return Err(StepError::BuildFailed(format!(
                "Invalid region(s): {}: check `region` and `ami_regions` (or set skip_region_validation)",
                bad.join(", ")
            )));
        }
    }
    if let Some(vpc) = vpc_to_check(cfg) {
        let out = ec2
            .describe_vpcs()
            .vpc_ids(vpc)
            .send()
            .await
            .map_err(|e| classify("DescribeVpcs", vpc, e))?;
        if !out.vpcs().iter().any(|v| v.is_default() == Some(true)) {
            return Err(StepError::BuildFailed(format!(
                "vpc_id {vpc}: subnet_id or subnet_filter must be provided for non-default VPCs"
            )));
        }
    }
    let ami = ami_config(&state, SPEC.name)?;
    if !checks_ami_name(cfg) {
        return Ok(state);
    }
    for region in cfg.target_regions() {
        let taken = crate::resources::image::named(ctx, &region, &ami.ami_name).await?;
        if let Some(img) = taken.first() {
            return Err(StepError::BuildFailed(format!(
                "AMI Name: '{}' is used by an existing AMI: {} in {region}. Choose another ami_name (e.g. add {{{{timestamp}}}}) or set force_deregister",
                ami.ami_name,
                img.image_id().unwrap_or("?")
            )));
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn the_options_turn_the_checks_off_and_a_vpc_without_subnet_on() {
        let all = ["ec2:DescribeRegions", "ec2:DescribeImages"];
        assert_eq!(local_calls(&build(json!({}))), all);
        assert_eq!(
            local_calls(&build(json!({"skip_region_validation": true}))),
            ["ec2:DescribeImages"]
        );
        assert_eq!(
            local_calls(&build(json!({"force_deregister": true}))),
            ["ec2:DescribeRegions"]
        );
        assert_eq!(
            local_calls(&build(json!({"vpc_id": "vpc-1"}))),
            [
                "ec2:DescribeRegions",
                "ec2:DescribeVpcs",
                "ec2:DescribeImages"
            ]
        );
        assert_eq!(
            local_calls(&build(json!({"vpc_id": "vpc-1", "subnet_id": "subnet-1"}))),
            all
        );
    }
}
