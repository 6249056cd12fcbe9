//! Temporary security groups (the SecurityGroup step): removed once the instance is gone;
//! a group still referenced by a detaching network interface cannot go yet.

use super::{ledger_ids, union, Kind, Reach, Scope, Swept};
use crate::error::{classify, error_code};
use crate::state::{Ledger, ResourceKind};
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidGroup.NotFound";

/// What finding and removing security groups needs.
/// Opening or deleting a group: only the builds' own.
pub const REACH: &[(&str, Reach)] = &[
    ("ec2:AuthorizeSecurityGroupIngress", Reach::BuildTagged),
    ("ec2:DeleteSecurityGroup", Reach::BuildTagged),
];

pub const CLEANUP_ACTIONS: &[&str] = &["ec2:DescribeSecurityGroups", "ec2:DeleteSecurityGroup"];

/// Whether SecurityGroup makes a temporary group for this build: it launches an instance,
/// names no group of its own (`security_group_id(s)`, `security_group_filter`) and has a
/// communicator (`none` needs no group).
pub fn made_for(config: &amiflow_template::BuilderConfig) -> bool {
    let Some(run) = config.run() else {
        return false;
    };
    !names_groups(run) && !config.comm().is_some_and(|c| c.is_none())
}

/// The template names the instance's groups (`security_group_id(s)`,
/// `security_group_filter`): they are looked up, none is made.
pub fn names_groups(run: &amiflow_template::config::RunConfig) -> bool {
    !run.security_group_ids.is_empty()
        || run
            .security_group_id
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        || run
            .security_group_filter
            .as_ref()
            .is_some_and(|f| !f.filters.is_empty())
}

/// Deletes a group: Ok(true) when deleted, Ok(false) when gone already, `NotReady` while
/// it is in use.
pub async fn remove(ctx: &Ctx, region: &str, id: &str) -> Result<bool, StepError> {
    match ctx
        .ec2(region)
        .delete_security_group()
        .group_id(id)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(false),
        Err(e) if error_code(&e) == Some("DependencyViolation") => Err(StepError::NotReady(
            format!("security group {id} ({region}) is still in use (network interface detaching)"),
        )),
        Err(e) => Err(classify("DeleteSecurityGroup", id, e)),
    }
}

/// Removes the scope's groups in every region where the build launched.
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    for region in scope.launch_regions() {
        let mut groups = ledger_ids(ledger, ResourceKind::SecurityGroup, region);
        if scope.searches(Kind::SecurityGroup) {
            let tagged = ctx
                .ec2(region)
                .describe_security_groups()
                .set_filters(Some(scope.filters()))
                .send()
                .await
                .map_err(|e| classify("DescribeSecurityGroups", &scope.execution, e))?;
            groups = union(
                groups,
                tagged
                    .security_groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(String::from)),
            );
        }
        for g in groups {
            let removed = remove(ctx, region, &g).await;
            swept.note(removed, format!("security group {g} ({region})"))?;
        }
    }
    Ok(swept)
}
