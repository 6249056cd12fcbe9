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
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

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
        if cfg.snapshot_users.is_empty() && cfg.snapshot_groups.is_empty() {
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
