//! Spot requests: RunSourceInstance makes a one-time request per attempt (tagged with
//! `spot_tags` and the build's tags); the instance sweep cancels them before terminating
//! the instance, so EC2 does not launch a replacement.

use crate::error::or_absent;
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidSpotInstanceRequestID.NotFound";

/// What the instance sweep calls about spot requests (of a spot build only).
pub const ACTIONS: &[&str] = &["ec2:CancelSpotInstanceRequests"];

/// Cancels these requests; Ok(false) when there were none or EC2 knows none of them.
pub async fn cancel(ctx: &Ctx, region: &str, ids: &[String]) -> Result<bool, StepError> {
    if ids.is_empty() {
        return Ok(false);
    }
    let out = ctx
        .ec2(region)
        .cancel_spot_instance_requests()
        .set_spot_instance_request_ids(Some(ids.to_vec()))
        .send()
        .await;
    Ok(or_absent(
        out,
        &[NOT_FOUND],
        "CancelSpotInstanceRequests",
        &ids.join(","),
    )?
    .is_some())
}
