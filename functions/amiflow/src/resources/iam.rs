//! Temporary IAM roles and instance profiles (IamInstanceProfile, from
//! `temporary_iam_instance_profile_policy_document`): one of each, with the same
//! deterministic name, under [`IAM_PATH`] and tagged with the build's tags. IAM is global.
//! Found by the ledger, by that name, and by path + the role's tags; removed profile first
//! (after taking its roles out), then the role's inline policies, then the role.

use super::{union, Reach, Scope, Swept};
use crate::error::{classify, or_absent};
use crate::identity::{temp_name, BUILD_NAME_TAG};
use crate::state::{Ledger, ResourceKind, BUILD_TAG, STATE_MACHINE_TAG};
use crate::{BuildState, Ctx, StepError};

/// Path of every temporary role and profile: sweeps list them under it.
pub const IAM_PATH: &str = "/amiflow/";

pub const NOT_FOUND: &str = "NoSuchEntity";
pub const ALREADY_EXISTS: &str = "EntityAlreadyExists";

/// Changing roles and profiles: only amiflow's temporary ones (under [`IAM_PATH`]); a role
/// is created only with the stack's permissions boundary. Reads reach every role and
/// profile (an existing `iam_instance_profile` is validated).
pub const REACH: &[(&str, Reach)] = &[
    ("iam:CreateRole", Reach::TemporaryRoleWithBoundary),
    ("iam:PutRolePolicy", Reach::TemporaryIam),
    ("iam:DeleteRolePolicy", Reach::TemporaryIam),
    ("iam:DeleteRole", Reach::TemporaryIam),
    ("iam:TagRole", Reach::TemporaryIam),
    ("iam:CreateInstanceProfile", Reach::TemporaryIam),
    ("iam:AddRoleToInstanceProfile", Reach::TemporaryIam),
    ("iam:RemoveRoleFromInstanceProfile", Reach::TemporaryIam),
    ("iam:DeleteInstanceProfile", Reach::TemporaryIam),
    ("iam:TagInstanceProfile", Reach::TemporaryIam),
];

/// What finding and removing temporary roles and profiles needs.
pub const CLEANUP_ACTIONS: &[&str] = &[
    "iam:ListInstanceProfiles",
    "iam:ListRoles",
    "iam:GetRole",
    "iam:GetInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:ListRolePolicies",
    "iam:DeleteRolePolicy",
    "iam:DeleteRole",
];

/// Whether IamInstanceProfile makes a temporary role and profile for this build
/// (`temporary_iam_instance_profile_policy_document`).
pub fn made_for(config: &amiflow_template::BuilderConfig) -> bool {
    config
        .run()
        .is_some_and(|r| r.temporary_iam_instance_profile_policy_document.is_some())
}

/// The name of the build's temporary role and instance profile: the same on every retry.
pub fn temporary_name(state: &BuildState) -> String {
    temp_name(state, "amiflow", "Iam").replace('_', "-")
}

/// Roles under [`IAM_PATH`] tagged for the scope (GetRole returns the tags; every page:
/// an account keeps one role per build until its Cleanup, easily over 100).
async fn tagged_roles(ctx: &Ctx, scope: &Scope) -> Result<Vec<String>, StepError> {
    let iam = ctx.iam();
    let listed: Vec<_> = iam
        .list_roles()
        .path_prefix(IAM_PATH)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| classify("ListRoles", IAM_PATH, e))?;
    let mut ours = Vec::new();
    for r in &listed {
        let name = r.role_name().to_string();
        let out = iam.get_role().role_name(&name).send().await;
        let Some(out) = or_absent(out, &[NOT_FOUND], "GetRole", &name)? else {
            continue;
        };
        let tags = out.role.and_then(|r| r.tags).unwrap_or_default();
        let has = |k: &str, v: &str| tags.iter().any(|t| t.key() == k && t.value() == v);
        // As EC2's sweep filters (`Scope::filters`): the execution, the state machine when
        // known (another stack's execution of the same name is not ours), the build.
        if has(BUILD_TAG, &scope.execution)
            && scope
                .state_machine
                .as_ref()
                .is_none_or(|m| has(STATE_MACHINE_TAG, m))
            && scope
                .build_name
                .as_ref()
                .is_none_or(|b| has(BUILD_NAME_TAG, b))
        {
            ours.push(name);
        }
    }
    Ok(ours)
}

/// Profiles under [`IAM_PATH`] holding one of `roles` or named like one.
async fn profiles_of(ctx: &Ctx, roles: &[String]) -> Result<Vec<String>, StepError> {
    let listed: Vec<_> = ctx
        .iam()
        .list_instance_profiles()
        .path_prefix(IAM_PATH)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<_, _>>()
        .await
        .map_err(|e| classify("ListInstanceProfiles", IAM_PATH, e))?;
    Ok(listed
        .iter()
        .filter(|p| {
            p.roles()
                .iter()
                .any(|r| roles.iter().any(|n| n == r.role_name()))
                || roles.iter().any(|n| n == p.instance_profile_name())
        })
        .map(|p| p.instance_profile_name().to_string())
        .collect())
}

/// Removes a profile after taking its roles out. Returns the roles it held (to be removed
/// too) and whether the profile was deleted (false: gone already).
pub async fn remove_profile(ctx: &Ctx, name: &str) -> Result<(Vec<String>, bool), StepError> {
    let iam = ctx.iam();
    let out = iam
        .get_instance_profile()
        .instance_profile_name(name)
        .send()
        .await;
    let Some(out) = or_absent(out, &[NOT_FOUND], "GetInstanceProfile", name)? else {
        return Ok((Vec::new(), false));
    };
    let roles: Vec<String> = out
        .instance_profile()
        .map(|p| p.roles())
        .unwrap_or_default()
        .iter()
        .map(|r| r.role_name().to_string())
        .collect();
    for role in &roles {
        let out = iam
            .remove_role_from_instance_profile()
            .instance_profile_name(name)
            .role_name(role)
            .send()
            .await;
        or_absent(out, &[NOT_FOUND], "RemoveRoleFromInstanceProfile", name)?;
    }
    let out = iam
        .delete_instance_profile()
        .instance_profile_name(name)
        .send()
        .await;
    let deleted = or_absent(out, &[NOT_FOUND], "DeleteInstanceProfile", name)?.is_some();
    Ok((roles, deleted))
}

/// Removes a role with its inline policies; Ok(false) when it was gone already.
pub async fn remove_role(ctx: &Ctx, name: &str) -> Result<bool, StepError> {
    let iam = ctx.iam();
    let out = iam.list_role_policies().role_name(name).send().await;
    let Some(out) = or_absent(out, &[NOT_FOUND], "ListRolePolicies", name)? else {
        return Ok(false);
    };
    for p in out.policy_names() {
        let out = iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(p)
            .send()
            .await;
        or_absent(out, &[NOT_FOUND], "DeleteRolePolicy", name)?;
    }
    let out = iam.delete_role().role_name(name).send().await;
    Ok(or_absent(out, &[NOT_FOUND], "DeleteRole", name)?.is_some())
}

/// Removes the scope's temporary profiles and roles. A build that makes none (no
/// temporary profile in its config, none in its ledger) lists nothing; the janitor, knowing
/// nothing of the builds, always lists.
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    let recorded = ledger.of_kind(ResourceKind::Role).next().is_some()
        || ledger
            .of_kind(ResourceKind::InstanceProfile)
            .next()
            .is_some();
    if scope.build_name.is_some() && scope.iam_names.is_empty() && !recorded {
        return Ok(swept);
    }
    let ids = |kind| ledger.of_kind(kind).map(|r| r.id.clone()).collect();
    let mut roles = union(ids(ResourceKind::Role), scope.iam_names.iter().cloned());
    roles = union(roles, tagged_roles(ctx, scope).await?);
    let mut profiles = union(
        ids(ResourceKind::InstanceProfile),
        scope.iam_names.iter().cloned(),
    );
    profiles = union(profiles, profiles_of(ctx, &roles).await?);
    for p in &profiles {
        let (held, deleted) = remove_profile(ctx, p).await?;
        roles = union(roles, held);
        if deleted {
            swept.removed.push(format!("instance profile {p}"));
        }
    }
    for r in &roles {
        if remove_role(ctx, r).await? {
            swept.removed.push(format!("role {r}"));
        }
    }
    Ok(swept)
}
