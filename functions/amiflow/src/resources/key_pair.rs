//! Temporary key pairs and the SecureString parameters holding their private keys: the
//! KeyPair step makes both, Connect and Provision read the parameter, Cleanup removes both.
//! Parameters live under `/amiflow/<execution>/<build>/`, so one path per build (and one
//! per execution, for the janitor) finds them all.

use aws_sdk_ec2::types::KeyPairInfo;

use super::{ledger_ids, union, Kind, Reach, Scope, Swept};
use crate::error::{classify, or_absent};
use crate::state::{Ledger, ResourceKind};
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidKeyPair.NotFound";
pub const PARAMETER_NOT_FOUND: &str = "ParameterNotFound";

/// What finding and removing key pairs and their parameters needs.
/// Key pairs: only the builds' own; their private keys: only under `/amiflow/`.
pub const REACH: &[(&str, Reach)] = &[
    ("ec2:DeleteKeyPair", Reach::BuildTagged),
    ("ssm:PutParameter", Reach::AmiflowParameters),
    ("ssm:GetParameter", Reach::AmiflowParameters),
    ("ssm:GetParametersByPath", Reach::AmiflowParameters),
    ("ssm:AddTagsToResource", Reach::AmiflowParameters),
    ("ssm:DeleteParameter", Reach::AmiflowParameters),
    ("ssm:DeleteParameters", Reach::AmiflowParameters),
];

/// What the life of a temporary key's parameter calls: stored tagged (KeyPair), read
/// (Connect, Provision), found by the build's path and removed (Cleanup).
pub const PARAMETER_ACTIONS: &[&str] = &[
    "ssm:PutParameter",
    "ssm:AddTagsToResource",
    "ssm:GetParameter",
    "ssm:GetParametersByPath",
    "ssm:DeleteParameter",
    "ssm:DeleteParameters",
];

pub const CLEANUP_ACTIONS: &[&str] = &[
    "ec2:DescribeKeyPairs",
    "ec2:DeleteKeyPair",
    "ssm:GetParametersByPath",
    "ssm:DeleteParameter",
    "ssm:DeleteParameters",
];

/// Whether this build makes a temporary key pair (and its SSM parameter); Cleanup sweeps
/// for them only then.
pub fn made_for(config: &amiflow_template::BuilderConfig) -> bool {
    let Some(comm) = config.comm() else {
        return false;
    };
    let no_temp_key = comm
        .ssh_keypair_name
        .as_deref()
        .is_some_and(|s| !s.is_empty())
        || matches!(comm.communicator.as_str(), "none" | "ssm")
        || comm
            .ssh_private_key_file
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        || comm.ssh_agent_auth
        || comm.ssh_password.as_deref().is_some_and(|s| !s.is_empty());
    !no_temp_key
}

/// A name part as SSM parameter names allow it: letters, digits, `_.-`; anything else `-`.
pub fn parameter_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if crate::state::is_safe_char(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `/amiflow/<execution>/` or, for one build, `/amiflow/<execution>/<build>/`, where
/// `execution` is the parameters' owner ([`crate::identity::parameter_owner`]): deployed
/// `<stack>/<execution>`, a path only the stack's roles reach.
pub fn parameter_path(execution: &str, build: Option<&str>) -> String {
    let owner: Vec<String> = execution.split('/').map(parameter_part).collect();
    let mut path = format!("/amiflow/{}/", owner.join("/"));
    if let Some(b) = build {
        path.push_str(&parameter_part(b));
        path.push('/');
    }
    path
}

/// `/amiflow/<stack>/` (deployed: [`crate::identity::parameter_owner`]), or `/amiflow/`.
pub fn parameters_root(stack: Option<&str>) -> String {
    match stack.filter(|s| !s.is_empty()) {
        Some(stack) => format!("/amiflow/{}/", parameter_part(stack)),
        None => "/amiflow/".to_string(),
    }
}

/// Where a build's private key is kept: `/amiflow/<execution>/<build>/ssh-key`.
pub fn parameter_name(execution: &str, build: &str) -> String {
    format!("{}ssh-key", parameter_path(execution, Some(build)))
}

/// The key pair of this name, or None.
pub async fn describe(
    ctx: &Ctx,
    region: &str,
    name: &str,
) -> Result<Option<KeyPairInfo>, StepError> {
    let out = ctx
        .ec2(region)
        .describe_key_pairs()
        .key_names(name)
        .send()
        .await;
    Ok(or_absent(out, &[NOT_FOUND], "DescribeKeyPairs", name)?
        .and_then(|out| out.key_pairs().first().cloned()))
}

/// Whether the parameter exists.
pub async fn parameter_exists(ctx: &Ctx, region: &str, name: &str) -> Result<bool, StepError> {
    let out = ctx.ssm(region).get_parameter().name(name).send().await;
    Ok(or_absent(out, &[PARAMETER_NOT_FOUND], "GetParameter", name)?.is_some())
}

/// Deletes a key pair; Ok(false) when it was gone already.
pub async fn remove(ctx: &Ctx, region: &str, name: &str) -> Result<bool, StepError> {
    let out = ctx
        .ec2(region)
        .delete_key_pair()
        .key_name(name)
        .send()
        .await;
    Ok(or_absent(out, &[NOT_FOUND], "DeleteKeyPair", name)?.is_some())
}

/// Deletes a parameter; Ok(false) when it was gone already.
pub async fn remove_parameter(ctx: &Ctx, region: &str, name: &str) -> Result<bool, StepError> {
    let out = ctx.ssm(region).delete_parameter().name(name).send().await;
    Ok(or_absent(out, &[PARAMETER_NOT_FOUND], "DeleteParameter", name)?.is_some())
}

/// Every parameter under `path`, every page.
pub(crate) async fn parameters_under(
    ctx: &Ctx,
    region: &str,
    path: &str,
) -> Result<Vec<String>, StepError> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let out = ctx
            .ssm(region)
            .get_parameters_by_path()
            .path(path)
            .recursive(true)
            .set_next_token(next.clone())
            .send()
            .await
            .map_err(|e| classify("GetParametersByPath", path, e))?;
        names.extend(
            out.parameters()
                .iter()
                .filter_map(|p| p.name().map(String::from)),
        );
        next = out.next_token().map(String::from);
        if next.is_none() {
            return Ok(names);
        }
    }
}

/// Removes the scope's key pairs and their parameters: the ledger's always, the tagged
/// ones and those under the build's path when the build makes a temporary key.
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    for region in &scope.instance_regions {
        let mut tagged = Vec::new();
        let search = scope.key_pairs && scope.searches(Kind::KeyPair);
        if search {
            let out = ctx
                .ec2(region)
                .describe_key_pairs()
                .set_filters(Some(scope.filters()))
                .send()
                .await
                .map_err(|e| classify("DescribeKeyPairs", &scope.execution, e))?;
            tagged.extend(
                out.key_pairs()
                    .iter()
                    .filter_map(|k| k.key_name().map(String::from)),
            );
        }
        for name in union(ledger_ids(ledger, ResourceKind::KeyPair, region), tagged) {
            if remove(ctx, region, &name).await? {
                swept.removed.push(format!("key pair {name} ({region})"));
            }
        }
        let mut params = ledger_ids(ledger, ResourceKind::Parameter, region);
        if search {
            let owner = crate::identity::parameter_owner(
                scope.state_machine.as_deref().unwrap_or_default(),
                &scope.execution,
            );
            let path = parameter_path(&owner, scope.build_name.as_deref());
            params = union(params, parameters_under(ctx, region, &path).await?);
        }
        for p in params {
            if remove_parameter(ctx, region, &p).await? {
                swept.removed.push(format!("parameter {p} ({region})"));
            }
        }
    }
    Ok(swept)
}
