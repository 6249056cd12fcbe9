//! HostInfo: the build host the volume is attached to (Packer's StepInstanceInfo). Lambda
//! has no instance identity, so the template names the host (`chroot_host_instance_id`
//! or `chroot_host_filter`, exactly one running instance), else the deployed stack's
//! `BuildHostInstanceId`; with none of them, a local run on the host asks its own metadata
//! service, as Packer does. A deployed stack runs commands as root on the host, so it takes
//! only a host the operator tagged `amiflow:build-host` = the stack's name, whoever named it.

use amiflow_template::config::chroot::ChrootConfig;
use aws_sdk_ec2::types::Tag;

use crate::builders::chroot::{self, Host};
use crate::prelude::*;
use crate::resources::BUILD_HOST_TAG;

pub const SPEC: StepSpec = StepSpec {
    name: "HostInfo",
    iam_actions: &["ec2:DescribeInstances"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// The build host as the template names it.
pub(crate) enum NamedHost<'a> {
    /// `chroot_host_instance_id`.
    Id(&'a str),
    /// `chroot_host_filter`'s filters.
    Filter(&'a BTreeMap<String, String>),
}

/// The build host the template names: `chroot_host_instance_id`, else a non-empty
/// `chroot_host_filter`; None leaves it to the stack's `BuildHostInstanceId`, else to this
/// machine's own metadata (a local run on the host).
pub(crate) fn named_host(cfg: &ChrootConfig) -> Option<NamedHost<'_>> {
    if let Some(id) = cfg
        .chroot_host_instance_id
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        return Some(NamedHost::Id(id));
    }
    cfg.chroot_host_filter
        .as_ref()
        .filter(|f| !f.filters.is_empty())
        .map(|f| NamedHost::Filter(&f.filters))
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    let cfg = chroot::config(&state)?;
    let region = state.build.config.build_region().to_string();
    let ec2 = ctx.ec2(&region);
    let (req, found_by, what) = match (named_host(cfg), &ctx.stack.build_host_instance_id) {
        (Some(NamedHost::Id(id)), _) => (
            ec2.describe_instances().instance_ids(id),
            "instance_id",
            id.to_string(),
        ),
        (Some(NamedHost::Filter(filters)), _) => {
            let mut req = ec2
                .describe_instances()
                .filters(filter("instance-state-name", ["running"]));
            for (name, values) in filters {
                req = req.filters(filter(
                    name,
                    values.split(',').map(|v| v.trim().to_string()),
                ));
            }
            (req, "filter", format!("chroot_host_filter {filters:?}"))
        }
        (None, Some(id)) => (
            ec2.describe_instances().instance_ids(id),
            "stack",
            format!("the stack's BuildHostInstanceId {id}"),
        ),
        (None, None) => {
            let id = own_instance_id().await?;
            (ec2.describe_instances().instance_ids(&id), "imds", id)
        }
    };
    let out = req
        .send()
        .await
        .map_err(|e| classify("DescribeInstances", &what, e))?;
    let hosts: Vec<_> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    let host = match hosts.as_slice() {
        [one] => *one,
        [] => {
            return Err(StepError::BuildFailed(format!(
                "the chroot build host ({what}) was not found in {region}: check chroot_host_instance_id / chroot_host_filter / the stack's BuildHostInstanceId and the region"
            )))
        }
        many => {
            return Err(StepError::BuildFailed(format!(
                "{what} matches {} instances ({}); it must match exactly one build host",
                many.len(),
                many.iter().filter_map(|i| i.instance_id()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let id = host.instance_id().unwrap_or_default().to_string();
    refuse_foreign_host(ctx.stack.stack_name.as_deref(), &id, host.tags())?;
    if host.state().and_then(|s| s.name()).map(|n| n.as_str()) != Some("running") {
        return Err(StepError::BuildFailed(format!(
            "the chroot build host {id} is not running"
        )));
    }
    let az = host
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default()
        .to_string();
    state.data.availability_zone = Some(az.clone());
    chroot::set_host(
        &mut state,
        &Host {
            instance_id: id,
            availability_zone: az,
            found_by: found_by.into(),
        },
    );
    Ok(state)
}

/// Deployed (`stack` = the stack's name), a host must carry [`BUILD_HOST_TAG`] = that name:
/// a template may not pick any SSM-managed instance to run its commands on as root.
fn refuse_foreign_host(stack: Option<&str>, id: &str, tags: &[Tag]) -> Result<(), StepError> {
    let Some(stack) = stack else {
        return Ok(());
    };
    let tagged = tags
        .iter()
        .find(|t| t.key() == Some(BUILD_HOST_TAG))
        .and_then(|t| t.value());
    if tagged == Some(stack) {
        return Ok(());
    }
    let has = match tagged {
        Some(other) => format!("is tagged {BUILD_HOST_TAG}={other}"),
        None => format!("has no {BUILD_HOST_TAG} tag"),
    };
    Err(StepError::BuildFailed(format!(
        "the chroot build host {id} {has}: this stack runs builds only on hosts its operator tagged {BUILD_HOST_TAG}={stack} \
         (tag the instance so, or name such a host with chroot_host_instance_id / chroot_host_filter / the stack's BuildHostInstanceId)"
    )))
}

/// This machine's instance id from IMDS (Packer: "Please verify Packer is running on a
/// proper AWS EC2 instance").
async fn own_instance_id() -> Result<String, StepError> {
    let client = aws_config::imds::Client::builder().build();
    match client.get("/latest/meta-data/instance-id").await {
        Ok(id) => Ok(id.as_ref().trim().to_string()),
        Err(e) => Err(StepError::BuildFailed(format!(
            "amazon-chroot: no build host named and this machine's instance metadata did not answer ({e}). \
             Set chroot_host_instance_id or chroot_host_filter, or run the build on an EC2 instance"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(k: &str, v: &str) -> Tag {
        Tag::builder().key(k).value(v).build()
    }

    #[test]
    fn a_deployed_stack_refuses_a_host_not_tagged_for_it() {
        let untagged = refuse_foreign_host(Some("amiflow"), "i-0abc", &[tag("Name", "db")])
            .expect_err("an untagged host must be refused");
        let why = untagged.to_string();
        assert!(
            why.contains("i-0abc") && why.contains("has no amiflow:build-host tag"),
            "{why}"
        );
        assert!(why.contains("amiflow:build-host=amiflow"), "{why}");
        let other = refuse_foreign_host(
            Some("amiflow"),
            "i-0abc",
            &[tag(BUILD_HOST_TAG, "other-stack")],
        )
        .expect_err("another stack's host must be refused");
        assert!(
            other
                .to_string()
                .contains("is tagged amiflow:build-host=other-stack"),
            "{other}"
        );
        refuse_foreign_host(Some("amiflow"), "i-0abc", &[tag(BUILD_HOST_TAG, "amiflow")]).unwrap();
        // A local build (no stack) runs where its user says, as Packer does.
        refuse_foreign_host(None, "i-0abc", &[]).unwrap();
    }
}
