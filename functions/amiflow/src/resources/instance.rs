//! Instances: the source instance (RunSourceInstance, also for spot) and what Cleanup does
//! with them. Terminated before anything else goes; their spot requests are cancelled first
//! so that no replacement is launched.

use aws_sdk_ec2::types::{Instance, InstanceStateName};

use super::{ledger_ids, spot_request, union, Kind, Reach, Scope, Swept};
use crate::error::{classify, or_absent};
use crate::state::{Ledger, ResourceKind};
use crate::{Ctx, StepError};

pub const NOT_FOUND: &str = "InvalidInstanceID.NotFound";

/// What finding and terminating instances (and their spot requests) needs.
/// Terminating, stopping, changing an instance or cancelling its spot request: only the
/// builds' own.
pub const REACH: &[(&str, Reach)] = &[
    ("ec2:TerminateInstances", Reach::BuildTagged),
    ("ec2:StopInstances", Reach::BuildTagged),
    ("ec2:ModifyInstanceAttribute", Reach::BuildTagged),
    ("ec2:CancelSpotInstanceRequests", Reach::BuildTagged),
];

pub const CLEANUP_ACTIONS: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:TerminateInstances",
    "ec2:CancelSpotInstanceRequests",
];

/// The instance, or None when EC2 does not know it (yet, or any more).
pub async fn describe(ctx: &Ctx, region: &str, id: &str) -> Result<Option<Instance>, StepError> {
    let out = ctx
        .ec2(region)
        .describe_instances()
        .instance_ids(id)
        .send()
        .await;
    Ok(
        or_absent(out, &[NOT_FOUND], "DescribeInstances", id)?.and_then(|out| {
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .next()
                .cloned()
        }),
    )
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

/// An instance as a sweep sees it: id, state, the spot request that launched it.
struct Seen {
    id: String,
    state: InstanceStateName,
    spot_request: Option<String>,
}

impl Seen {
    fn of(i: &Instance) -> Option<Seen> {
        Some(Seen {
            id: i.instance_id()?.to_string(),
            state: i.state()?.name()?.clone(),
            spot_request: i.spot_instance_request_id().map(String::from),
        })
    }
}

/// Cancels the spot requests and terminates the instances of the scope (by tag and by the
/// ledger). `not_yet` lists every instance not terminated yet, as "instance ID (REGION)".
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    if !scope.searches(Kind::Instance) {
        return terminate_recorded(ctx, scope, ledger).await;
    }
    let mut swept = Swept::default();
    for region in &scope.instance_regions {
        let ec2 = ctx.ec2(region);
        let tagged = ec2
            .describe_instances()
            .set_filters(Some(scope.filters()))
            .send()
            .await
            .map_err(|e| classify("DescribeInstances", &scope.execution, e))?;
        let mut instances: Vec<Seen> = tagged
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(Seen::of)
            .collect();
        for id in ledger_ids(ledger, ResourceKind::Instance, region) {
            if !instances.iter().any(|i| i.id == id) {
                if let Some(i) = describe(ctx, region, &id).await? {
                    instances.push(Seen {
                        id,
                        state: i
                            .state()
                            .and_then(|s| s.name())
                            .cloned()
                            .unwrap_or(InstanceStateName::Terminated),
                        spot_request: i.spot_instance_request_id().map(String::from),
                    });
                }
            }
        }
        let spot = union(
            ledger_ids(ledger, ResourceKind::SpotRequest, region),
            instances.iter().filter_map(|i| i.spot_request.clone()),
        );
        if spot_request::cancel(ctx, region, &spot).await? {
            swept
                .removed
                .extend(spot.iter().map(|s| format!("spot request {s} ({region})")));
        }
        let live: Vec<String> = instances
            .iter()
            .filter(|i| {
                !matches!(
                    i.state,
                    InstanceStateName::Terminated | InstanceStateName::ShuttingDown
                )
            })
            .map(|i| i.id.clone())
            .collect();
        if !live.is_empty() {
            ec2.terminate_instances()
                .set_instance_ids(Some(live.clone()))
                .send()
                .await
                .map_err(|e| classify("TerminateInstances", &live.join(","), e))?;
            swept
                .removed
                .extend(live.iter().map(|i| format!("instance {i} ({region})")));
        }
        for i in &instances {
            if live.contains(&i.id) || i.state != InstanceStateName::Terminated {
                swept.not_yet.push(format!("instance {} ({region})", i.id));
            }
        }
    }
    Ok(swept)
}

/// The sweep when the ledger vouches for instances: its spot requests cancelled and its
/// instances terminated by id, with no search and no DescribeInstances: TerminateInstances
/// answers each instance's state before and after (terminating twice is a no-op, so a
/// NotReady pass that runs again is idempotent and learns from it whether the instance is
/// gone).
async fn terminate_recorded(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
    let mut swept = Swept::default();
    for region in &scope.instance_regions {
        let spot = ledger_ids(ledger, ResourceKind::SpotRequest, region);
        if spot_request::cancel(ctx, region, &spot).await? {
            swept
                .removed
                .extend(spot.iter().map(|s| format!("spot request {s} ({region})")));
        }
        for id in ledger_ids(ledger, ResourceKind::Instance, region) {
            let out = ctx
                .ec2(region)
                .terminate_instances()
                .instance_ids(&id)
                .send()
                .await;
            let Some(out) = or_absent(out, &[NOT_FOUND], "TerminateInstances", &id)? else {
                continue;
            };
            for change in out.terminating_instances() {
                let before = change.previous_state().and_then(|s| s.name());
                let now = change.current_state().and_then(|s| s.name());
                if !matches!(
                    before,
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                ) {
                    swept.removed.push(format!("instance {id} ({region})"));
                }
                // A later pass terminates again: the state before that call is the truth
                // (moto, unlike EC2, always answers "shutting-down" as the state after).
                let gone = before == Some(&InstanceStateName::Terminated)
                    || now == Some(&InstanceStateName::Terminated);
                if !gone {
                    swept.not_yet.push(format!("instance {id} ({region})"));
                }
            }
        }
    }
    Ok(swept)
}
