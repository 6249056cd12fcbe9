//! NetworkInfo: the VPC, subnet and availability zone the instance launches into. A
//! template that names no network (no VPC, subnet, filter or availability zone) gets the
//! deployed stack's `DefaultVpcId`/`DefaultSubnetId` in the stack's own region, else EC2's
//! defaults.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "NetworkInfo",
    iam_actions: &["ec2:DescribeVpcs", "ec2:DescribeSubnets"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let cfg = run_config(&state, SPEC.name)?.clone();
    let ec2 = ctx.ec2(&region);
    let mut vpc = cfg.vpc_id.clone().filter(|s| !s.is_empty());
    let mut subnet = cfg.subnet_id.clone().filter(|s| !s.is_empty());
    let mut az = cfg.availability_zone.clone().filter(|s| !s.is_empty());
    let names_network = vpc.is_some()
        || subnet.is_some()
        || az.is_some()
        || cfg
            .vpc_filter
            .as_ref()
            .is_some_and(|f| !f.filters.is_empty())
        || cfg
            .subnet_filter
            .as_ref()
            .is_some_and(|f| !f.filters.is_empty());
    if !names_network {
        (vpc, subnet) = ctx.stack.network_in(&region);
    }
    if vpc.is_none() {
        if let Some(f) = cfg.vpc_filter.as_ref().filter(|f| !f.filters.is_empty()) {
            let mut req = ec2.describe_vpcs();
            for (k, v) in &f.filters {
                req = req.filters(filter(k, v.split(',').map(|s| s.trim().to_string())));
            }
            let out = req
                .send()
                .await
                .map_err(|e| classify("DescribeVpcs", "vpc_filter", e))?;
            if out.vpcs().len() != 1 {
                return Err(StepError::BuildFailed(format!(
                    "vpc_filter matched {} VPCs; it must match exactly one",
                    out.vpcs().len()
                )));
            }
            vpc = out.vpcs()[0].vpc_id().map(String::from);
        }
    }
    if subnet.is_none() {
        if let Some(f) = cfg.subnet_filter.as_ref().filter(|f| !f.filters.is_empty()) {
            let mut req = ec2
                .describe_subnets()
                .filters(filter("state", ["available"]));
            for (k, v) in &f.filters {
                req = req.filters(filter(k, v.split(',').map(|s| s.trim().to_string())));
            }
            if let Some(v) = &vpc {
                req = req.filters(filter("vpc-id", [v.clone()]));
            }
            if let Some(a) = &az {
                req = req.filters(filter("availabilityZone", [a.clone()]));
            }
            let out = req
                .send()
                .await
                .map_err(|e| classify("DescribeSubnets", "subnet_filter", e))?;
            let mut subnets = out.subnets().to_vec();
            if subnets.is_empty() {
                return Err(StepError::BuildFailed(
                    "No subnets matched subnet_filter: check its filters".into(),
                ));
            }
            if subnets.len() > 1 && !f.most_free && !f.random {
                return Err(StepError::BuildFailed(format!(
                    "subnet_filter matched {} subnets: set most_free or random, or narrow the filters",
                    subnets.len()
                )));
            }
            let pick = if f.random && !f.most_free {
                use rand::Rng;
                rand::rng().random_range(0..subnets.len())
            } else {
                subnets.sort_by_key(|s| s.available_ip_address_count().unwrap_or(0));
                subnets.len() - 1
            };
            let s = &subnets[pick];
            subnet = s.subnet_id().map(String::from);
            vpc = s.vpc_id().map(String::from);
            az = s.availability_zone().map(String::from);
        }
    }
    if let Some(id) = &subnet {
        if vpc.is_none() || az.is_none() {
            let out = ec2
                .describe_subnets()
                .subnet_ids(id)
                .send()
                .await
                .map_err(|e| classify("DescribeSubnets", id, e))?;
            let s = out.subnets().first().ok_or_else(|| {
                StepError::BuildFailed(format!("subnet_id {id} was not found in {region}"))
            })?;
            vpc = vpc.or(s.vpc_id().map(String::from));
            az = az.or(s.availability_zone().map(String::from));
        }
    }
    state.data.vpc_id = vpc;
    state.data.subnet_id = subnet;
    state.data.availability_zone = az;
    Ok(state)
}
