//! Looking once at an instance's state: shared by the instance wait steps and Cleanup.

use aws_sdk_ec2::types::Instance;

use super::prelude::*;

/// The instance, or None when EC2 does not know it (yet, or any more).
pub async fn describe(ctx: &Ctx, region: &str, id: &str) -> Result<Option<Instance>, StepError> {
    match ctx
        .ec2(region)
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()),
        Err(e) if error_code(&e) == Some("InvalidInstanceID.NotFound") => Ok(None),
        Err(e) => Err(classify("DescribeInstances", id, e)),
    }
}

pub fn state_name(i: &Instance) -> &str {
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str())
        .unwrap_or("unknown")
}

/// AWS's reason for the instance's last transition, for error messages.
pub fn reason(i: &Instance) -> String {
    let r = i.state_reason().and_then(|r| r.message()).unwrap_or("");
    let t = i.state_transition_reason().unwrap_or("");
    match (r.is_empty(), t.is_empty()) {
        (false, false) => format!("{r} ({t})"),
        (false, true) => r.to_string(),
        (true, false) => t.to_string(),
        _ => "AWS gave no reason".to_string(),
    }
}
