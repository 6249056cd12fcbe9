//! Every wait of a build, one value each: its name in `BuildState::waits`, its default
//! budget, and the Retry policy its waiting state is polled with.
//!
//! A wait spans two steps: the one that starts the thing waited for calls [`Wait::begin`]
//! (so the start survives the waiting state's retries, which re-run with the same input);
//! the waiting step answers `NotReady` through [`Wait::not_ready`] until the thing is
//! ready, then calls [`Wait::end`]. Step Functions' Retry on `NotReady`, rendered from
//! [`Wait::policy`] by `flows.rs`, does the polling; the budget (Packer's waiter default, or
//! the template's `aws_polling`) turns an endless `NotReady` into `BuildFailed`.
//!
//! Deployed, a wait that AWS announces ([`Wait::event`]: EC2's state changes, and the end of
//! the chroot host's SSM command) is first awaited, not polled: `flows.rs` puts a callback
//! state (`steps/await_event.rs`) before its waiting step, which EventBridge's
//! state-change event ends through `steps/deliver_event.rs`. Events are
//! best-effort, so the callback state gives up after [`EventWait::timeout_seconds`] and the
//! waiting step polls as above; either way the waiting step has the last word.

use std::time::Duration;

use chrono::Utc;

use amiflow_template::config::AwsPolling;
use serde_json::{json, Value};

use crate::{BuildState, StepError};

/// How a waiting state is polled: rendered as the state's `Retry` on `NotReady`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitPolicy {
    pub interval_seconds: u32,
    pub backoff_rate: f64,
    pub max_delay_seconds: u32,
    pub max_attempts: u32,
}

impl WaitPolicy {
    /// The longest this policy keeps polling, in seconds (interval grows by the backoff,
    /// capped at max_delay).
    pub fn budget_seconds(&self) -> f64 {
        let mut total = 0.0;
        let mut delay = self.interval_seconds as f64;
        for _ in 0..self.max_attempts {
            total += delay.min(self.max_delay_seconds as f64);
            delay *= self.backoff_rate;
        }
        total
    }
}

/// Polls every `interval` seconds, growing by half each time up to `max_delay`, at most
/// `attempts` times.
const fn growing(interval: u32, max_delay: u32, attempts: u32) -> WaitPolicy {
    WaitPolicy {
        interval_seconds: interval,
        backoff_rate: 1.5,
        max_delay_seconds: max_delay,
        max_attempts: attempts,
    }
}

/// 5 s growing to 30 s: ~2 h of retries, above every waiter's default; the budget ends
/// the wait earlier.
const LONG: WaitPolicy = growing(5, 30, 250);
/// Instance state changes: 3 s growing to 15 s, ~1 h.
const INSTANCE: WaitPolicy = growing(3, 15, 250);
/// Volume attach, detach, create: 2 s growing to 10 s, ~20 min.
const VOLUME: WaitPolicy = growing(2, 10, 120);
/// Commands that run for as long as provisioning does: 2 s growing to 60 s, ~8 h. A short
/// command (an `echo` provisioner, a quick host script) is seen done within seconds; a long
/// one costs one poll a minute.
const COMMAND: WaitPolicy = growing(2, 60, 487);

/// What bounds a wait beyond its Retry policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// An AWS waiter: this default, or the template's `aws_polling` when set (Packer's
    /// v2 semantics: attempts × delay, delay 2 s unless set).
    Waiter(Duration),
    /// Not an AWS waiter: only the Retry policy (and the handler's own limit, such as
    /// `ssh_timeout` or a command's execution timeout) bound it.
    Policy,
}

/// One wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wait {
    /// Its key in `BuildState::waits`.
    pub name: &'static str,
    pub budget: Budget,
    /// How its waiting state is polled.
    pub policy: WaitPolicy,
    /// The EC2 event that ends it, for a wait awaited deployed before it is polled.
    pub event: Option<EventWait>,
}

/// The kinds of resource whose state changes EventBridge announces, each with the rule
/// that delivers them to `steps/deliver_event.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// The build's instance (`state.data.instance_id`): "EC2 Instance State-change Notification".
    Instance,
    /// The build-region image (`state.data.amis[build region]`): "EC2 AMI State Change".
    BuildImage,
    /// The snapshots the build took in its region (`steps/wait_snapshots_completed.rs`):
    /// "EBS Snapshot Notification". Several at once: their wait ends when the last settles.
    BuildSnapshots,
    /// An SSM command of the build: the chroot host's running the build's host script
    /// (`steps/run_host_script.rs`), or a provisioner's on the build instance
    /// (`provision/ssm.rs`): "EC2 Command Invocation Status-change Notification".
    /// The command carries no build tags: DeliverEvent finds the build's token by the tag
    /// AwaitEvent puts on it (`resources/await_token.rs`).
    Command,
}

impl Watched {
    pub const ALL: [Watched; 4] = [
        Watched::Instance,
        Watched::BuildImage,
        Watched::BuildSnapshots,
        Watched::Command,
    ];

    /// The EventBridge pattern of the events that settle a wait on this kind: every state
    /// a wait on it ends in, ready or failed (the waiting step tells which).
    pub fn event_pattern(self) -> Value {
        match self {
            Watched::Instance => json!({
                "source": ["aws.ec2"],
                "detail-type": ["EC2 Instance State-change Notification"],
                "detail": {"state": ["running", "stopped", "shutting-down", "terminated"]}
            }),
            Watched::BuildImage => json!({
                "source": ["aws.ec2"],
                "detail-type": ["EC2 AMI State Change"],
                "detail": {"State": ["available", "failed"]}
            }),
            Watched::BuildSnapshots => json!({
                "source": ["aws.ec2"],
                "detail-type": ["EBS Snapshot Notification"],
                "detail": {"event": ["createSnapshot"], "result": ["succeeded", "failed"]}
            }),
            Watched::Command => json!({
                "source": ["aws.ssm"],
                "detail-type": ["EC2 Command Invocation Status-change Notification"],
                "detail": {"status": ["Success", "Failed", "Cancelled", "TimedOut"]}
            }),
        }
    }

    /// What an event of [`Self::event_pattern`]'s says: the kind, the resource id (`i-…`,
    /// `ami-…`) and its new state; None for any other event.
    pub fn of_event(event: &Value) -> Option<(Watched, String, String)> {
        let detail = event.get("detail")?;
        let field = |key: &str| detail.get(key).and_then(Value::as_str).map(String::from);
        match event.get("detail-type")?.as_str()? {
            "EC2 Instance State-change Notification" => {
                Some((Watched::Instance, field("instance-id")?, field("state")?))
            }
            "EC2 AMI State Change" => {
                Some((Watched::BuildImage, field("ImageId")?, field("State")?))
            }
            // `snapshot_id` is an ARN (`arn:aws:ec2::REGION:snapshot/snap-…`); the result is
            // told in the snapshot's own states.
            "EBS Snapshot Notification" => {
                let arn = field("snapshot_id")?;
                let id = arn.rsplit_once('/').map_or(arn.as_str(), |(_, id)| id);
                let state = match field("result")?.as_str() {
                    "succeeded" => "completed",
                    _ => "error",
                };
                Some((Watched::BuildSnapshots, id.to_string(), state.to_string()))
            }
            "EC2 Command Invocation Status-change Notification" => {
                Some((Watched::Command, field("command-id")?, field("status")?))
            }
            _ => None,
        }
    }

    /// Whether the resources carry the build's tags (EC2's do; an SSM command has none, so
    /// its wait's token is tagged with the command instead: `resources/await_token.rs`).
    pub fn carries_build_tags(self) -> bool {
        self != Watched::Command
    }

    /// The resources of this kind a build is waiting on (none before the build has them).
    pub fn resources(self, state: &BuildState) -> Vec<String> {
        match self {
            Watched::Instance => state.data.instance_id.iter().cloned().collect(),
            Watched::BuildImage => state
                .data
                .amis
                .get(state.build.config.build_region())
                .into_iter()
                .cloned()
                .collect(),
            Watched::BuildSnapshots => crate::steps::wait_snapshots_completed::awaited(state),
            // A host script run locally (not through SSM) announces nothing. A provisioner's
            // command is not in the state (Provision raised `CommandSent`): AwaitEvent finds
            // it on the instance (`steps/await_event.rs`).
            Watched::Command => crate::builders::chroot::ssm_command(state)
                .map(|(command_id, _)| command_id)
                .into_iter()
                .collect(),
        }
    }
}

/// A wait EC2 announces: which resource, which of its states mean "not yet", and how long
/// the callback state waits for the event before the waiting step polls instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventWait {
    pub watched: Watched,
    /// The resource's states while the wait is not over (any other state settles it).
    pub pending: &'static [&'static str],
    /// The callback state's `TimeoutSeconds`: a lost event costs this, then polling.
    pub timeout_seconds: u32,
    /// How the callback state is entered. None: before the waiting step, after the step
    /// that started the thing. Some(error): the waiting step starts the thing itself and
    /// then fails with this error (Provision sends a command and raises `CommandSent`); its
    /// Catch enters the callback state, which goes back to the step. `flows.rs` renders both.
    pub entered_on: Option<&'static str>,
}

const fn waiter(name: &'static str, minutes: u64, policy: WaitPolicy) -> Wait {
    Wait {
        name,
        budget: Budget::Waiter(Duration::from_secs(minutes * 60)),
        policy,
        event: None,
    }
}

/// `wait`, awaited deployed through `event` before it is polled.
const fn announced(wait: Wait, event: EventWait) -> Wait {
    Wait {
        event: Some(event),
        ..wait
    }
}

/// RunSourceInstance → WaitInstanceRunning (Packer's InstanceRunning waiter: 10 min).
/// Announced: most instances run within a minute; a lost event costs 3 minutes.
pub const INSTANCE_RUNNING: Wait = announced(
    waiter("InstanceRunning", 10, INSTANCE),
    EventWait {
        watched: Watched::Instance,
        pending: &["pending"],
        timeout_seconds: 180,
        entered_on: None,
    },
);
/// StopInstance → WaitInstanceStopped (InstanceStopped: 10 min). Announced like
/// InstanceRunning.
pub const INSTANCE_STOPPED: Wait = announced(
    waiter("InstanceStopped", 10, INSTANCE),
    EventWait {
        watched: Watched::Instance,
        pending: &["pending", "running", "stopping"],
        timeout_seconds: 300,
        entered_on: None,
    },
);
/// Cleanup's own polling while instances terminate (InstanceTerminated: 10 min). Its first
/// look comes after 1 s (a terminating instance is often gone by then, and the build's
/// result waits on it), growing to 15 s.
pub const INSTANCE_TERMINATED: Wait = waiter("InstanceTerminated", 10, growing(1, 15, 250));
/// CreateImage/RegisterImage → WaitImageAvailable (ImageAvailable: 30 min).
/// Announced: images take minutes; a lost event costs 10, then polling.
pub const IMAGE_AVAILABLE: Wait = announced(
    waiter("ImageAvailable", 30, LONG),
    EventWait {
        watched: Watched::BuildImage,
        pending: &["pending"],
        timeout_seconds: 600,
        entered_on: None,
    },
);
/// CopyImage → WaitCopiesAvailable (ImageAvailable per copy: 30 min).
pub const COPIES_AVAILABLE: Wait = waiter("CopiesAvailable", 30, LONG);
/// SnapshotVolumes/CreateSnapshot → WaitSnapshotsCompleted (SnapshotCompleted: 30 min).
/// Announced: a lost event costs 10 minutes, then polling.
pub const SNAPSHOTS_COMPLETED: Wait = announced(
    waiter("SnapshotsCompleted", 30, LONG),
    EventWait {
        watched: Watched::BuildSnapshots,
        pending: &["pending"],
        timeout_seconds: 600,
        entered_on: None,
    },
);
/// CreateVolume → WaitVolumeAvailable (VolumeAvailable: 10 min).
pub const VOLUME_AVAILABLE: Wait = waiter("VolumeAvailable", 10, VOLUME);
/// AttachVolume → WaitVolumeAttached (10 min).
pub const VOLUME_ATTACHED: Wait = waiter("VolumeAttached", 10, VOLUME);
/// DetachVolume → WaitVolumeDetached (10 min).
pub const VOLUME_DETACHED: Wait = waiter("VolumeDetached", 10, VOLUME);
/// SwapVolumes → AttachRootVolume, which waits for the detached volumes (VolumeDetached,
/// SDK v2 default: 5 min).
pub const VOLUMES_DETACHED: Wait = waiter("VolumesDetached", 5, VOLUME);
/// AttachRootVolume → WaitRootVolumeAttached (5 min).
pub const ROOT_VOLUME_ATTACHED: Wait = waiter("RootVolumeAttached", 5, VOLUME);
/// IamInstanceProfile's own polling until EC2 accepts the new profile (~1 min).
pub const PROFILE_USABLE: Wait = Wait {
    name: "ProfileUsable",
    budget: Budget::Policy,
    policy: growing(2, 10, 12),
    event: None,
};
/// WaitInstanceRunning → Connect: about an hour of polling, longer than any sensible
/// `ssh_timeout`, which Connect enforces from the wait's start.
pub const CONNECT: Wait = Wait {
    name: "Connect",
    budget: Budget::Policy,
    policy: growing(5, 30, 120),
    event: None,
};
/// Provision's SSM provisioner commands (SSH never raises NotReady or CommandSent).
/// Provisioning is not an AWS waiter: `aws_polling` does not bound it, as in Packer; each
/// command's own execution limit does. Announced by SSM: after sending a command Provision
/// raises `CommandSent`, the callback state awaits the command's end, and Provision then
/// looks (polling, as below, only while a look finds it still running).
pub const PROVISION: Wait = command_wait("Provision", Some(crate::error::COMMAND_SENT));
/// An SSM command's statuses before its end.
const COMMAND_PENDING: &[&str] = &["Pending", "InProgress", "Delayed", "Cancelling"];
/// RunHostScript → WaitHostScript (amazon-chroot's host script): bounded by the
/// command's own execution limit and the policy, not by `aws_polling`. Announced by SSM:
/// the script takes minutes; a lost event costs 15, then polling.
pub const HOST_SCRIPT: Wait = command_wait("HostScript", None);

/// A wait on an SSM command: polled as [`COMMAND`], bounded by the command's own execution
/// limit (not an AWS waiter); announced by SSM, whose lost event costs 15 minutes, then
/// polling. `entered_on`: see [`EventWait::entered_on`].
const fn command_wait(name: &'static str, entered_on: Option<&'static str>) -> Wait {
    announced(
        Wait {
            name,
            budget: Budget::Policy,
            policy: COMMAND,
            event: None,
        },
        EventWait {
            watched: Watched::Command,
            pending: COMMAND_PENDING,
            timeout_seconds: 900,
            entered_on,
        },
    )
}

/// The wait of this name.
pub fn named(name: &str) -> Option<Wait> {
    ALL.into_iter().find(|w| w.name == name)
}

/// Every wait, for tests and documentation.
pub const ALL: [Wait; 15] = [
    INSTANCE_RUNNING,
    INSTANCE_STOPPED,
    INSTANCE_TERMINATED,
    IMAGE_AVAILABLE,
    COPIES_AVAILABLE,
    SNAPSHOTS_COMPLETED,
    VOLUME_AVAILABLE,
    VOLUME_ATTACHED,
    VOLUME_DETACHED,
    VOLUMES_DETACHED,
    ROOT_VOLUME_ATTACHED,
    PROFILE_USABLE,
    CONNECT,
    PROVISION,
    HOST_SCRIPT,
];

/// The longest a waiter may last: `aws_polling` when set (Packer v2 semantics:
/// attempts × delay, delay 2 s unless set), else the waiter's own default.
pub fn waiter_budget(polling: Option<&AwsPolling>, default: Duration) -> Duration {
    match polling {
        Some(p) if p.max_attempts.unwrap_or(0) > 0 => Duration::from_secs(
            u64::from(p.max_attempts.unwrap())
                * u64::from(p.delay_seconds.filter(|d| *d > 0).unwrap_or(2)),
        ),
        _ => default,
    }
}

impl Wait {
    /// Marks the start; called by the step that starts the thing waited for. A second call
    /// (a retried step) keeps the first start.
    pub fn begin(&self, state: &mut BuildState) {
        state
            .waits
            .entry(self.name.to_string())
            .or_insert_with(Utc::now);
    }

    /// When the wait began, if it did.
    pub fn started(&self, state: &BuildState) -> Option<chrono::DateTime<Utc>> {
        state.waits.get(self.name).copied()
    }

    /// Not ready yet: `NotReady` while within the budget, `BuildFailed` past it.
    pub fn not_ready(&self, state: &BuildState, what: String) -> StepError {
        let Budget::Waiter(default) = self.budget else {
            return StepError::NotReady(what);
        };
        if let Some(start) = self.started(state) {
            let budget = waiter_budget(state.build.config.aws_polling(), default);
            let elapsed = (Utc::now() - start).to_std().unwrap_or_default();
            if elapsed > budget {
                return StepError::BuildFailed(format!(
                    "{what}: still not ready after {}s (limit {}s). Raise aws_polling.max_attempts / \
                     aws_polling.delay_seconds in the template to wait longer",
                    elapsed.as_secs(),
                    budget.as_secs()
                ));
            }
        }
        StepError::NotReady(what)
    }

    /// The wait is over: forget its start.
    pub fn end(&self, state: &mut BuildState) {
        state.waits.remove(self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_waits_poll_soon_and_last_about_eight_hours() {
        let p = super::COMMAND;
        assert_eq!(p.interval_seconds, 2);
        let hours = p.budget_seconds() / 3600.0;
        assert!((7.9..8.1).contains(&hours), "{hours} h");
    }

    #[test]
    fn polling_budget_follows_packer_v2() {
        assert_eq!(
            waiter_budget(None, Duration::from_secs(600)),
            Duration::from_secs(600)
        );
        let attempts = AwsPolling {
            max_attempts: Some(240),
            delay_seconds: None,
        };
        assert_eq!(
            waiter_budget(Some(&attempts), Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        let both = AwsPolling {
            max_attempts: Some(240),
            delay_seconds: Some(15),
        };
        assert_eq!(
            waiter_budget(Some(&both), Duration::from_secs(600)),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn an_announced_wait_is_settled_by_its_rules_events_and_not_before() {
        for w in ALL {
            let Some(e) = w.event else { continue };
            let pattern = e.watched.event_pattern();
            let key = match e.watched {
                Watched::Instance => "state",
                Watched::BuildImage => "State",
                Watched::BuildSnapshots => "result",
                Watched::Command => "status",
            };
            let delivered: Vec<&str> = pattern["detail"][key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            // One rule per kind serves every wait on it (DeliverEvent skips a state still
            // pending for the wait at hand), and no wait ends on `pending`.
            assert!(!delivered.contains(&"pending"), "{}", w.name);
            assert!(
                delivered.iter().any(|d| !e.pending.contains(d)),
                "{}: no delivered event settles it",
                w.name
            );
            // A lost event costs the timeout, never the build: the budget outlasts it.
            if let Budget::Waiter(d) = w.budget {
                assert!(u64::from(e.timeout_seconds) < d.as_secs(), "{}", w.name);
            }
        }
        let running = json!({"detail-type": "EC2 Instance State-change Notification",
            "detail": {"instance-id": "i-1", "state": "running"}});
        assert_eq!(
            Watched::of_event(&running),
            Some((Watched::Instance, "i-1".into(), "running".into()))
        );
        let image = json!({"detail-type": "EC2 AMI State Change",
            "detail": {"ImageId": "ami-1", "State": "available"}});
        assert_eq!(
            Watched::of_event(&image),
            Some((Watched::BuildImage, "ami-1".into(), "available".into()))
        );
        let snapshot = json!({"detail-type": "EBS Snapshot Notification",
            "detail": {"event": "createSnapshot", "result": "succeeded",
                       "snapshot_id": "arn:aws:ec2::us-west-2:snapshot/snap-1"}});
        assert_eq!(
            Watched::of_event(&snapshot),
            Some((Watched::BuildSnapshots, "snap-1".into(), "completed".into()))
        );
        let command = json!({"detail-type": "EC2 Command Invocation Status-change Notification",
            "source": "aws.ssm",
            "detail": {"command-id": "c-1", "instance-id": "i-host", "status": "Success"}});
        assert_eq!(
            Watched::of_event(&command),
            Some((Watched::Command, "c-1".into(), "Success".into()))
        );
        assert_eq!(
            Watched::of_event(&json!({"detail-type": "Other", "detail": {}})),
            None
        );
    }

    #[test]
    fn names_are_unique_and_retries_outlast_waiter_budgets() {
        let mut names: Vec<&str> = ALL.iter().map(|w| w.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "two waits share a name");
        for w in ALL {
            if let Budget::Waiter(d) = w.budget {
                assert!(
                    w.policy.budget_seconds() >= d.as_secs_f64(),
                    "{}: the Retry gives up ({} s) before the waiter's budget ({} s)",
                    w.name,
                    w.policy.budget_seconds(),
                    d.as_secs()
                );
            }
        }
    }
}
