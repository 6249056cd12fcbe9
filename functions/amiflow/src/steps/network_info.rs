//! NetworkInfo: the VPC, subnet and availability zone the instance launches into. A
//! template that names no network (no VPC, subnet, filter or availability zone) gets the
//! deployed stack's `DefaultVpcId`/`DefaultSubnetId` in the stack's own region, else EC2's
//! defaults.

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "NetworkInfo",
    iam_actions: &["ec2:DescribeVpcs", "ec2:DescribeSubnets"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here (no stack defaults: the network is what the template
/// names): DescribeVpcs for a `vpc_filter` without `vpc_id`; DescribeSubnets for a
/// `subnet_filter` without `subnet_id`, or for a `subnet_id` whose VPC (no `vpc_id` nor
/// `vpc_filter`) or availability zone is not given.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let Some(cfg) = build.config.run() else {
        return Vec::new();
    };
    let mut calls = Vec::new();
    let vpc_by_filter = given(&cfg.vpc_id).is_none() && vpc_filter(cfg).is_some();
    if vpc_by_filter {
        calls.push("ec2:DescribeVpcs");
    }
    let subnet = given(&cfg.subnet_id).is_some();
    let subnet_by_filter = !subnet && subnet_filter(cfg).is_some();
    let vpc_known = given(&cfg.vpc_id).is_some() || vpc_by_filter;
    let subnet_read = subnet && !(vpc_known && given(&cfg.availability_zone).is_some());
    if subnet_by_filter || subnet_read {
        calls.push("ec2:DescribeSubnets");
    }
    calls
}

/// A network setting the template gives (set and not empty).
fn given(setting: &Option<String>) -> Option<String> {
    setting.clone().filter(|s| !s.is_empty())
}

/// `vpc_filter`, when it filters.
fn vpc_filter(cfg: &RunConfig) -> Option<&amiflow_template::config::Filter> {
    cfg.vpc_filter.as_ref().filter(|f| !f.filters.is_empty())
}

/// `subnet_filter`, when it filters.
fn subnet_filter(cfg: &RunConfig) -> Option<&amiflow_template::config::SubnetFilter> {
    cfg.subnet_filter.as_ref().filter(|f| !f.filters.is_empty())
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let region = state.build.config.build_region().to_string();
    let cfg = run_config(&state, SPEC.name)?.clone();
    let ec2 = ctx.ec2(&region);
    let mut vpc = given(&cfg.vpc_id);
    let mut subnet = given(&cfg.subnet_id);
    let mut az = given(&cfg.availability_zone);
    let names_network = vpc.is_some()
        || subnet.is_some()
        || az.is_some()
        || vpc_filter(&cfg).is_some()
        || subnet_filter(&cfg).is_some();
    if !names_network {
        (vpc, subnet) = ctx.stack.network_in(&region);
    }
    if vpc.is_none() {
        if let Some(f) = vpc_filter(&cfg) {
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
        if let Some(f) = subnet_filter(&cfg) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn filters_and_a_subnet_of_unknown_vpc_or_zone_are_looked_up() {
        let calls = |keys| local_calls(&build(keys));
        assert!(calls(json!({})).is_empty());
        assert!(calls(
            json!({"vpc_id": "vpc-1", "subnet_id": "subnet-1", "availability_zone": "us-east-1a"})
        )
        .is_empty());
        assert_eq!(
            calls(json!({"subnet_id": "subnet-1"})),
            ["ec2:DescribeSubnets"]
        );
        assert_eq!(
            calls(json!({"vpc_filter": {"filters": {"tag:Name": "build"}}})),
            ["ec2:DescribeVpcs"]
        );
        assert_eq!(
            calls(json!({"subnet_filter": {"filters": {"tag:Name": "build"}}})),
            ["ec2:DescribeSubnets"]
        );
    }
}
