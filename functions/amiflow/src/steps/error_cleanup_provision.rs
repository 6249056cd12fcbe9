//! ErrorCleanupProvision: runs the template's `error-cleanup-provisioner` when the build
//! has failed, before Cleanup, as Packer does (Packer runs it from its provisioning step's
//! cleanup, so only for a build that got as far as provisioning).
//!
//! The state machine's Catch leads every failed step of a chain that provisions here, then
//! to Cleanup (`flows.rs`). It does nothing when the build has not failed, has no
//! error-cleanup-provisioner, never connected to its instance (the [`CONNECTED`] mark of
//! Connect) or runs with `on_error: abort`. Its own failure is reported as a warning and in
//! `data.extra["error_cleanup"]`, never instead of the build's error: Cleanup must run.
//! Over SSM it raises `NotReady` while its command runs (a command it just sent included:
//! no callback state follows it, unlike Provision).

use crate::provision::Provisioner;
use crate::steps::connect::CONNECTED;
use crate::steps::provision::{calls_running, run_provisioners, Purpose, SPEC as PROVISION};
use crate::steps::StepSpec;
use crate::waits;
use crate::{handler, BuildState, Ctx, StepError};

pub const SPEC: StepSpec = StepSpec {
    name: "ErrorCleanupProvision",
    // What Provision calls: the same communicators.
    iam_actions: PROVISION.iam_actions,
    reach: PROVISION.reach,
    calls: Some(local_calls),
    wait: Some(waits::PROVISION),
    timeout_seconds: 900,
    handler: handler!(run),
};

/// What a local build calls here: what Provision calls running the
/// `error-cleanup-provisioner` alone ([`calls_running`]); nothing without one.
fn local_calls(build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    match &build.error_cleanup_provisioner {
        Some(p) => calls_running(build, std::slice::from_ref(p), Purpose::ErrorCleanup),
        None => Vec::new(),
    }
}

/// Where the outcome is recorded in `data.extra`.
pub const OUTCOME: &str = "error_cleanup";

/// Why the error-cleanup-provisioner does not run for this state, or None when it runs.
pub fn skipped_because(state: &BuildState) -> Option<&'static str> {
    if state.error.is_none() {
        Some("the build has not failed")
    } else if state.build.error_cleanup_provisioner.is_none() {
        Some("the template has no error-cleanup-provisioner for this build")
    } else if !state.on_error.runs_error_cleanup_provisioner() {
        Some("on_error is abort")
    } else if state.data.extra.get(CONNECTED) != Some(&serde_json::Value::Bool(true)) {
        Some("the build failed before it reached provisioning")
    } else {
        None
    }
}

pub async fn run(ctx: &Ctx, mut state: BuildState) -> Result<BuildState, StepError> {
    if let Some(why) = skipped_because(&state) {
        tracing::debug!(
            step = SPEC.name,
            "not running the error-cleanup-provisioner: {why}"
        );
        return Ok(state);
    }
    let value = state
        .build
        .error_cleanup_provisioner
        .clone()
        .expect("checked by skipped_because");
    let outcome = match Provisioner::parse(0, &value) {
        Err(problems) => Err(format!("it is invalid: {}", problems.join("; "))),
        Ok(mut p) => {
            p.common
                .name
                .get_or_insert_with(|| "error-cleanup-provisioner".into());
            match run_provisioners(ctx, state.clone(), &[p], Purpose::ErrorCleanup).await {
                Ok(_) => Ok(()),
                Err(e @ StepError::NotReady(_)) => return Err(e),
                // No callback state follows this one: a command just sent is polled too.
                Err(StepError::CommandSent(m)) => return Err(StepError::NotReady(m)),
                Err(e) => Err(e.message().to_string()),
            }
        }
    };
    let recorded = match outcome {
        Ok(()) => {
            tracing::info!(step = SPEC.name, "the error-cleanup-provisioner ran");
            "ran".to_string()
        }
        Err(message) => {
            tracing::warn!(
                step = SPEC.name,
                "the error-cleanup-provisioner failed (Cleanup goes on): {message}"
            );
            format!("failed: {message}")
        }
    };
    state
        .data
        .extra
        .insert(OUTCOME.into(), serde_json::Value::String(recorded));
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CaughtError, OnError};
    use serde_json::json;

    fn state(error: bool, provisioner: bool, connected: bool, on_error: OnError) -> BuildState {
        let prepared = amiflow_template::prepare(
            &json!({"builders": [{"type": "amazon-ebs", "region": "us-east-1", "source_ami": "ami-1",
                "instance_type": "t3.micro", "ssh_username": "u", "ami_name": "image"}]})
            .to_string(),
            &amiflow_template::PrepareOptions::default(),
        )
        .unwrap();
        let mut build = prepared.builds[0].clone();
        if provisioner {
            build.error_cleanup_provisioner =
                Some(json!({"type": "shell-local", "inline": ["true"]}));
        }
        let mut s: BuildState = serde_json::from_value(json!({
            "execution": "e", "build": build, "on_error": on_error
        }))
        .unwrap();
        if error {
            s.error = Some(CaughtError {
                error: "BuildFailed".into(),
                cause: "x".into(),
            });
        }
        if connected {
            s.data.extra.insert(CONNECTED.into(), json!(true));
        }
        s
    }

    #[test]
    fn calls_what_its_provisioner_calls_over_the_communicator() {
        use crate::steps::prepare::fixture::{builder, template};
        let with = |keys: serde_json::Value, provisioner: Option<serde_json::Value>| {
            let mut t = json!({"builders": [builder(keys)]});
            if let Some(p) = provisioner {
                t["error-cleanup-provisioner"] = p;
            }
            local_calls(&template(t))
        };
        let ssm = json!({"communicator": "ssm", "iam_instance_profile": "ssm"});
        assert!(with(ssm.clone(), None).is_empty());
        assert_eq!(
            with(ssm, Some(json!({"type": "shell", "inline": ["true"]}))),
            [
                "ssm:ListCommands",
                "ssm:SendCommand",
                "ssm:GetCommandInvocation"
            ]
        );
        // Over SSH it logs in whatever the provisioner, as Provision does.
        let ssh = json!({"communicator": "ssh", "ssh_username": "u"});
        assert_eq!(
            with(
                ssh,
                Some(json!({"type": "shell-local", "inline": ["true"]}))
            ),
            ["ssm:GetParameter", "ec2:DescribeInstances"]
        );
    }

    #[test]
    fn runs_only_for_a_failed_build_that_reached_provisioning_and_is_not_aborted() {
        assert_eq!(
            skipped_because(&state(true, true, true, OnError::Cleanup)),
            None
        );
        assert_eq!(
            skipped_because(&state(true, true, true, OnError::RunCleanupProvisioner)),
            None
        );
        for (s, why) in [
            (state(false, true, true, OnError::Cleanup), "has not failed"),
            (
                state(true, false, true, OnError::Cleanup),
                "no error-cleanup",
            ),
            (
                state(true, true, false, OnError::Cleanup),
                "before it reached",
            ),
            (state(true, true, true, OnError::Abort), "abort"),
        ] {
            let got = skipped_because(&s).unwrap_or("runs");
            assert!(got.contains(why), "{got:?} should say {why:?}");
        }
    }
}
