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
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

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
    if let Some((Some(vpc), None, None)) = cfg
        .run()
        .map(|r| (&r.vpc_id, &r.subnet_id, &r.subnet_filter))
    {
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
    if ami.force_deregister || cfg.skip_create_ami() {
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
