//! ModifyInstance: ENA and SR-IOV attributes on the stopped instance, so the image
//! inherits them.

use aws_sdk_ec2::types::{AttributeBooleanValue, AttributeValue};

use crate::prelude::*;

pub const SPEC: StepSpec = StepSpec {
    name: "ModifyInstance",
    iam_actions: &["ec2:ModifyInstanceAttribute"],
    reach: &[],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: SHORT_TIMEOUT,
    handler: handler!(run),
};

/// What a local build calls here: ModifyInstanceAttribute with `sriov_support` or
/// `ena_support` (either value) ([`modifies`]); else nothing.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    if modifies(&build.config) {
        vec!["ec2:ModifyInstanceAttribute"]
    } else {
        Vec::new()
    }
}

/// Whether an attribute of the instance is set: SR-IOV (`sriov_support`) or ENA
/// (`ena_support`, true or false).
pub(crate) fn modifies(cfg: &amiflow_template::BuilderConfig) -> bool {
    cfg.sriov_support() || cfg.ena_support().is_some()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::prepare::fixture::build;
    use serde_json::json;

    #[test]
    fn only_sriov_or_ena_modifies_the_instance() {
        assert!(local_calls(&build(json!({}))).is_empty());
        assert_eq!(
            local_calls(&build(json!({"ena_support": false}))),
            ["ec2:ModifyInstanceAttribute"]
        );
        assert_eq!(
            local_calls(&build(json!({"sriov_support": true}))),
            ["ec2:ModifyInstanceAttribute"]
        );
    }
}
