//! ModifyInstance: ENA and SR-IOV attributes on the stopped instance, so the image
//! inherits them.

use aws_sdk_ec2::types::{AttributeBooleanValue, AttributeValue};

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "ModifyInstance",
    iam_actions: &["ec2:ModifyInstanceAttribute"],
    reach: &[],
    calls: None,
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

pub async fn run(ctx: &Ctx, state: BuildState) -> Result<BuildState, StepError> {
    let cfg = state.build.config.clone();
    let Some(id) = state.data.instance_id.clone() else {
        return Ok(state);
    };
    let ec2 = ctx.ec2(cfg.build_region());
    if cfg.sriov_support() {
        ec2.modify_instance_attribute()
            .instance_id(&id)
            .sriov_net_support(AttributeValue::builder().value("simple").build())
            .send()
            .await
            .map_err(|e| classify("ModifyInstanceAttribute (SriovNetSupport)", &id, e))?;
    }
    if let Some(ena) = cfg.ena_support() {
        ec2.modify_instance_attribute()
            .instance_id(&id)
            .ena_support(AttributeBooleanValue::builder().value(ena).build())
            .send()
            .await
            .map_err(|e| classify("ModifyInstanceAttribute (EnaSupport)", &id, e))?;
    }
    Ok(state)
}
