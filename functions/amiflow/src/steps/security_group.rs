//! SecurityGroup: existing groups (ids or filter), or a temporary group whose only
//! ingress is the communicator port from `temporary_security_group_source_cidrs`; no rule
//! at all when the communicator needs no inbound port (SSM). With communicator none no
//! group is made: nothing connects, and EC2 gives the instance its VPC's default group.

use aws_sdk_ec2::types::{IpPermission, IpRange, Ipv6Range};

use crate::prelude::*;
use crate::resources::security_group;

pub const SPEC: StepSpec = StepSpec {
    name: "SecurityGroup",
    iam_actions: &[
        "ec2:DescribeSecurityGroups",
        "ec2:CreateSecurityGroup",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:CreateTags",
        // Tags may use sensitive variables (resources/sensitive_var.rs).
        "ssm:GetParameter",
    ],
    reach: &[("ssm:GetParameter", Reach::SensitiveVars)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: DescribeSecurityGroups for the groups the template names
/// ([`security_group::names_groups`]); for a temporary group ([`security_group::made_for`]) CreateSecurityGroup
/// tagged at creation (CreateTags) and, when the communicator needs an inbound port,
/// AuthorizeSecurityGroupIngress; with neither (communicator none) nothing.
/// DescribeSecurityGroups for a temporary group only finds a retry's own.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if build.config.run().is_some_and(security_group::names_groups) {
        return vec!["ec2:DescribeSecurityGroups"];
    }
    if !security_group::made_for(&build.config) {
        return Vec::new();
    }
    let mut calls = vec!["ec2:CreateSecurityGroup", "ec2:CreateTags"];
    if build.config.communicator_port().is_some() {
        calls.push("ec2:AuthorizeSecurityGroupIngress");
    }
    calls
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    let run = run_config(&state, SPEC.name)?.clone();
    let region = cfg.build_region().to_string();
    let ec2 = ctx.ec2(&region);
    let mut ids: Vec<String> = run.security_group_ids.clone();
    if let Some(id) = run.security_group_id.as_deref().filter(|s| !s.is_empty()) {
        if !ids.iter().any(|i| i == id) {
            ids.push(id.to_string());
        }
    }
    if !ids.is_empty() {
        let out = ec2
            .describe_security_groups()
            .set_group_ids(Some(ids.clone()))
            .send()
            .await
            .map_err(|e| classify("DescribeSecurityGroups", &ids.join(","), e))?;
        if out.security_groups().len() != ids.len() {
            return Err(StepError::BuildFailed(format!(
                "security_group_ids {}: not all of them exist in {region}",
                ids.join(", ")
            )));
        }
        state.data.security_group_ids = ids;
        return Ok(state);
    }
    if let Some(f) = run
        .security_group_filter
        .as_ref()
        .filter(|f| !f.filters.is_empty())
    {
        let mut req = ec2.describe_security_groups();
        for (k, v) in &f.filters {
            req = req.filters(filter(k, v.split(',').map(|s| s.trim().to_string())));
        }
        if let Some(vpc) = &state.data.vpc_id {
            req = req.filters(filter("vpc-id", [vpc.clone()]));
        }
        let out = req
            .send()
            .await
            .map_err(|e| classify("DescribeSecurityGroups", "security_group_filter", e))?;
        if out.security_groups().is_empty() {
            return Err(StepError::BuildFailed(
                "security_group_filter matched no security group".into(),
            ));
        }
        state.data.security_group_ids = out
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(String::from))
            .collect();
        return Ok(state);
    }

    if !security_group::made_for(&cfg) {
        return Ok(state);
    }
    let name = temp_name(&state, "amiflow", "SecurityGroup");
    // Created straight away under the build's deterministic name: EC2 refuses a second
    // group of that name in the VPC, so a retried step learns from InvalidGroup.Duplicate
    // that its first attempt made the group, and only then looks it up (by name and tag).
    let run_tags = render_tags(
        &ctx.secrets,
        "run_tags",
        &run.run_tags,
        &state.data,
        &region,
    )?;
    let created = ec2
        .create_security_group()
        .group_name(&name)
        .description("Temporary group for amiflow")
        .set_vpc_id(state.data.vpc_id.clone())
        .tag_specifications(tag_spec(ResourceType::SecurityGroup, &state, &run_tags))
        .send()
        .await;
    let group_id = match created {
        Ok(out) => out.group_id().unwrap_or_default().to_string(),
        Err(e) if error_code(&e) == Some("InvalidGroup.Duplicate") => {
            let found = ec2
                .describe_security_groups()
                .set_filters(Some({
                    let mut f = own_filters(&state);
                    f.push(filter("group-name", [name.clone()]));
                    f
                }))
                .send()
                .await
                .map_err(|e| classify("DescribeSecurityGroups", &name, e))?;
            found
                .security_groups()
                .first()
                .and_then(|g| g.group_id())
                .map(String::from)
                .ok_or_else(|| {
                    StepError::BuildFailed(format!(
                        "CreateSecurityGroup {name}: a group of that name exists in {region} but is not this build's (no {BUILD_TAG} tag of it)"
                    ))
                })?
        }
        Err(e) => return Err(classify("CreateSecurityGroup", &name, e)),
    };
    state
        .ledger
        .record(ResourceKind::SecurityGroup, &region, &group_id, false);

    if let Some(port) = cfg.communicator_port() {
        // Never empty: Prepare puts Packer's default (0.0.0.0/0, ::/0 for ipv6) there.
        let cidrs = &run.temporary_security_group_source_cidrs;
        let mut perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port as i32)
            .to_port(port as i32);
        for c in cidrs {
            if c.contains(':') {
                perm = perm.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).build());
            } else {
                perm = perm.ip_ranges(IpRange::builder().cidr_ip(c).build());
            }
        }
        match ec2
            .authorize_security_group_ingress()
            .group_id(&group_id)
            .ip_permissions(perm.build())
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("InvalidPermission.Duplicate") => {}
            Err(e) => return Err(classify("AuthorizeSecurityGroupIngress", &group_id, e)),
        }
    }
    state.data.security_group_ids = vec![group_id];
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn named_groups_are_looked_up_and_a_temporary_one_opens_the_port_it_needs() {
        let calls = |keys| local_calls(&build(keys));
        assert!(calls(json!({})).is_empty(), "communicator none");
        assert_eq!(
            calls(json!({"security_group_ids": ["sg-1"]})),
            ["ec2:DescribeSecurityGroups"]
        );
        assert_eq!(
            calls(json!({"communicator": "ssh", "ssh_username": "u"})),
            [
                "ec2:CreateSecurityGroup",
                "ec2:CreateTags",
                "ec2:AuthorizeSecurityGroupIngress"
            ]
        );
        assert_eq!(
            calls(json!({"communicator": "ssm", "iam_instance_profile": "ssm"})),
            ["ec2:CreateSecurityGroup", "ec2:CreateTags"]
        );
    }
}
