//! ModifyImageAttributes: description, launch permissions (users, groups, organization and
//! OU ARNs), product codes and IMDS support on every AMI; create-volume permissions on
//! every snapshot. EC2 takes one attribute kind per call.

use aws_sdk_ec2::types::{
    AttributeValue, LaunchPermission, LaunchPermissionModifications, OperationType,
    PermissionGroup, SnapshotAttributeName,
};

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "ModifyImageAttributes",
    iam_actions: &["ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here, when it ends with AMIs
/// ([`crate::steps::copy_image::leaves_amis`]): ModifyImageAttribute with an image
/// attribute to set ([`sets_image_attributes`]), ModifySnapshotAttribute with
/// `snapshot_users` / `snapshot_groups` when the images have snapshots
/// ([`crate::steps::wait_image_available::has_snapshots`]); else nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    let Some(ami) = build.config.ami() else {
        return Vec::new();
    };
    if !crate::steps::copy_image::leaves_amis(&build.config) {
        return Vec::new();
    }
    let mut calls = Vec::new();
    if sets_image_attributes(ami) {
        calls.push("ec2:ModifyImageAttribute");
    }
    if shares_snapshots(ami) && crate::steps::wait_image_available::has_snapshots(build) {
        calls.push("ec2:ModifySnapshotAttribute");
    }
    calls
}

/// Whether an attribute of the images is set: `ami_description`, launch permissions
/// (`ami_groups`, `ami_users`, `ami_org_arns`, `ami_ou_arns`), `ami_product_codes` or
/// `imds_support`.
pub(crate) fn sets_image_attributes(ami: &AmiConfig) -> bool {
    let set = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
    set(&ami.ami_description)
        || !ami.ami_groups.is_empty()
        || !ami.ami_users.is_empty()
        || !ami.ami_org_arns.is_empty()
        || !ami.ami_ou_arns.is_empty()
        || !ami.ami_product_codes.is_empty()
        || set(&ami.imds_support)
}

/// Whether the snapshots are shared (`snapshot_users`, `snapshot_groups`).
pub(crate) fn shares_snapshots(ami: &AmiConfig) -> bool {
    !ami.snapshot_users.is_empty() || !ami.snapshot_groups.is_empty()
}

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let cfg = ami_config(&state, SPEC.name)?;
    for (region, ami) in &state.data.amis {
        let ec2 = ctx.ec2(region);
        let op = |what: &str| format!("ModifyImageAttribute ({what})");
        if let Some(desc) = cfg.ami_description.as_deref().filter(|d| !d.is_empty()) {
            let desc = render("ami_description", desc, &state.data, region)?;
            ec2.modify_image_attribute()
                .image_id(ami)
                .description(AttributeValue::builder().value(desc).build())
                .send()
                .await
                .map_err(|e| classify(&op("description"), ami, e))?;
        }
        if !cfg.ami_groups.is_empty() {
            let mut add = LaunchPermissionModifications::builder();
            for g in &cfg.ami_groups {
                add = add.add(
                    LaunchPermission::builder()
                        .group(PermissionGroup::from(g.as_str()))
                        .build(),
                );
            }
            ec2.modify_image_attribute()
                .image_id(ami)
                .launch_permission(add.build())
                .send()
                .await
                .map_err(|e| classify(&op("groups"), ami, e))?;
        }
        for (what, list, kind) in [
            ("users", &cfg.ami_users, 0),
            ("organization ARNs", &cfg.ami_org_arns, 1),
            ("OU ARNs", &cfg.ami_ou_arns, 2),
        ] {
            if list.is_empty() {
                continue;
            }
            let mut add = LaunchPermissionModifications::builder();
            for v in list {
                let p = match kind {
                    0 => LaunchPermission::builder().user_id(v),
                    1 => LaunchPermission::builder().organization_arn(v),
                    _ => LaunchPermission::builder().organizational_unit_arn(v),
                };
                add = add.add(p.build());
            }
            ec2.modify_image_attribute()
                .image_id(ami)
                .launch_permission(add.build())
                .send()
                .await
                .map_err(|e| classify(&op(what), ami, e))?;
        }
        if !cfg.ami_product_codes.is_empty() {
            ec2.modify_image_attribute()
                .image_id(ami)
                .set_product_codes(Some(cfg.ami_product_codes.clone()))
                .send()
                .await
                .map_err(|e| classify(&op("product codes"), ami, e))?;
        }
        if let Some(v) = cfg.imds_support.as_deref().filter(|v| !v.is_empty()) {
            ec2.modify_image_attribute()
                .image_id(ami)
                .imds_support(AttributeValue::builder().value(v).build())
                .send()
                .await
                .map_err(|e| classify(&op("imds_support"), ami, e))?;
        }
        if !shares_snapshots(cfg) {
            continue;
        }
        // The OperationType + UserIds/GroupNames form: AWS takes it as well as
        // CreateVolumePermission.Add, and emulators (moto) only this one.
        for snap in state.data.snapshots.get(region).into_iter().flatten() {
            ec2.modify_snapshot_attribute()
                .snapshot_id(snap)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .operation_type(OperationType::Add)
                .set_user_ids(Some(cfg.snapshot_users.clone()).filter(|v| !v.is_empty()))
                .set_group_names(Some(cfg.snapshot_groups.clone()).filter(|v| !v.is_empty()))
                .send()
                .await
                .map_err(|e| {
                    classify("ModifySnapshotAttribute (createVolumePermission)", snap, e)
                })?;
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
    fn each_attribute_kind_brings_its_call() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(json!({"ami_users": ["210987654321"]}))),
            ["ec2:ModifyImageAttribute"]
        );
        assert_eq!(
            local_calls(&build(json!({"snapshot_users": ["210987654321"]}))),
            ["ec2:ModifySnapshotAttribute"]
        );
        assert!(local_calls(&build(
            json!({"ami_description": "d", "skip_create_ami": true})
        ))
        .is_empty());
    }
}
