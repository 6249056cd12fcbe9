//! How a build's resources are recognised: the build tags every create puts on them (so
//! Cleanup and the janitor find them), and the ClientTokens and deterministic names that
//! make a retried create find what the first attempt made instead of making it twice.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use uuid::Uuid;

pub use crate::state::{BUILD_TAG, STATE_MACHINE_TAG};
use crate::BuildState;

/// A stable UUID for (state machine, execution, build, what): the same on every retry of a
/// step, and another for each stack's execution of the same name (EC2 ClientTokens are the
/// account's: two stacks' "nightly" builds must not find each other's instances).
pub fn stable_uuid(state: &BuildState, what: &str) -> Uuid {
    let seed = if state.state_machine.is_empty() {
        format!("amiflow/{}/{}/{}", state.execution, state.build.name, what)
    } else {
        format!(
            "amiflow/{}/{}/{}/{}",
            state.state_machine, state.execution, state.build.name, what
        )
    };
    Uuid::new_v5(&Uuid::NAMESPACE_OID, seed.as_bytes())
}

/// Whose a build's SSM parameters are (its temporary key, its sensitive variables, the
/// tokens it awaits with): deployed `<state machine>/<execution>`, so that they live under
/// `/amiflow/<stack>/` (the state machine is named after its stack), which only that stack's
/// roles reach; locally the execution alone.
pub fn parameter_owner(state_machine: &str, execution: &str) -> String {
    if state_machine.is_empty() {
        execution.to_string()
    } else {
        format!("{state_machine}/{execution}")
    }
}

/// The first `digits` hex digits of `text`'s SHA-256: the hashes in build ids and command
/// owners (every digit counts, unlike a UUID's, whose version digit is fixed).
pub fn digest_hex(text: &str, digits: usize) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..digits]
        .to_string()
}

/// Sixteen hex digits naming whom a build's SSM commands belong to: the state machine and
/// the execution (two stacks' executions may share a name; a local build has no state
/// machine). Their comments carry it, so that a janitor cancels its own stack's commands
/// only, whatever the names, in the 100 characters SSM allows a comment; 64 bits, so that
/// nobody finds an execution name whose janitor would cancel another build's commands.
pub fn command_owner(state_machine: &str, execution: &str) -> String {
    digest_hex(&format!("{state_machine}/{execution}"), 16)
}

/// EC2's idempotency token for one create of one step.
pub fn client_token(state: &BuildState, step: &str) -> String {
    stable_uuid(state, step).to_string()
}

/// A temporary resource name that is the same on every retry: `<prefix>_<uuid>`.
pub fn temp_name(state: &BuildState, prefix: &str, what: &str) -> String {
    format!("{prefix}_{}", stable_uuid(state, what).simple())
}

/// The state machine's name in an execution ARN
/// (`arn:PARTITION:states:REGION:ACCOUNT:execution:STATE_MACHINE:NAME`), if it is one.
pub fn state_machine_of(execution_arn: &str) -> Option<&str> {
    let parts: Vec<&str> = execution_arn.split(':').collect();
    (parts.len() >= 8 && parts[0] == "arn" && parts[2] == "states" && parts[5] == "execution")
        .then(|| parts[6])
        .filter(|m| !m.is_empty())
}

/// The `tag:amiflow:build = execution` filter that finds everything this build created.
pub fn build_filter(execution: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{BUILD_TAG}"))
        .values(execution)
        .build()
}

pub fn filter(name: &str, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
    let mut b = Filter::builder().name(name);
    for v in values {
        b = b.values(v);
    }
    b.build()
}

/// Tag naming the build (of possibly several in one execution) that created a resource:
/// a build's Cleanup and idempotent lookups match it, the janitor matches the execution only.
pub const BUILD_NAME_TAG: &str = "amiflow:build-name";

/// The build's own tags: `amiflow:build` = execution, `amiflow:build-name` = build name,
/// `amiflow:state-machine` = the state machine running it.
pub fn build_tags(state: &BuildState) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([
        (BUILD_TAG.to_string(), state.execution.clone()),
        (BUILD_NAME_TAG.to_string(), state.build.name.clone()),
    ]);
    if !state.state_machine.is_empty() {
        tags.insert(STATE_MACHINE_TAG.to_string(), state.state_machine.clone());
    }
    tags
}

/// The given (already rendered) tags plus the build's own; the build's own always win.
pub fn tags_with_build(state: &BuildState, extra: &BTreeMap<String, String>) -> Vec<Tag> {
    let mut all = extra.clone();
    all.extend(build_tags(state));
    all.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub fn tag_spec(
    rt: ResourceType,
    state: &BuildState,
    extra: &BTreeMap<String, String>,
) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .set_tags(Some(tags_with_build(state, extra)))
        .build()
}

/// Filters matching what this build (not just this execution) created.
pub fn own_filters(state: &BuildState) -> Vec<Filter> {
    vec![
        build_filter(&state.execution),
        filter(&format!("tag:{BUILD_NAME_TAG}"), [state.build.name.clone()]),
    ]
}

#[cfg(test)]
mod tests {
    use super::{client_token, parameter_owner, state_machine_of, temp_name};
    use crate::BuildState;

    fn state(state_machine: &str, execution: &str) -> BuildState {
        let template =
            serde_json::json!({"builders": [{"type": "amazon-ebs", "region": "us-east-1",
            "source_ami": "ami-12345678", "instance_type": "t3.micro", "communicator": "none",
            "ami_name": "identity-test"}]})
            .to_string();
        let opts = amiflow_template::PrepareOptions::new(chrono::Utc::now());
        let build = amiflow_template::prepare(&template, &opts)
            .expect("fixture prepares")
            .builds
            .remove(0);
        BuildState::new(
            execution.into(),
            state_machine.into(),
            build,
            Default::default(),
        )
    }

    /// EC2 ClientTokens and key pair names are the account's and the region's: the same
    /// execution name in two stacks (or a stack and `amiflow build`) must not share them, or
    /// one stack's RunInstances would answer with the other's instance.
    #[test]
    fn idempotency_tokens_are_each_stacks_own() {
        let a = state("stack-a", "nightly");
        let b = state("stack-b", "nightly");
        let local = state("", "nightly");
        assert_ne!(
            client_token(&a, "RunSourceInstance"),
            client_token(&b, "RunSourceInstance")
        );
        assert_ne!(
            client_token(&a, "RunSourceInstance"),
            client_token(&local, "RunSourceInstance")
        );
        assert_ne!(
            temp_name(&a, "packer", "key"),
            temp_name(&b, "packer", "key")
        );
        // Retries of one step find what the first attempt made.
        assert_eq!(
            client_token(&a, "RunSourceInstance"),
            client_token(&state("stack-a", "nightly"), "RunSourceInstance")
        );
    }

    #[test]
    fn a_deployed_builds_parameters_are_its_stacks() {
        use crate::resources::key_pair::{parameter_name, parameters_root};
        assert_eq!(
            parameter_name(&parameter_owner("amiflow", "nightly-1"), "web"),
            "/amiflow/amiflow/nightly-1/web/ssh-key"
        );
        assert!(
            parameter_name(&parameter_owner("amiflow", "nightly-1"), "web")
                .starts_with(&parameters_root(Some("amiflow")))
        );
        assert_ne!(
            parameter_owner("stack-a", "nightly-1"),
            parameter_owner("stack-b", "nightly-1")
        );
        // A local build has no stack.
        assert_eq!(
            parameter_name(&parameter_owner("", "nightly-1"), "web"),
            "/amiflow/nightly-1/web/ssh-key"
        );
        assert_eq!(parameters_root(None), "/amiflow/");
    }

    #[test]
    fn the_state_machine_is_read_from_an_execution_arn_only() {
        assert_eq!(
            state_machine_of(
                "arn:aws:states:eu-west-1:123456789012:execution:amiflow-prod:nightly-7"
            ),
            Some("amiflow-prod")
        );
        assert_eq!(
            state_machine_of("arn:aws-cn:states:cn-north-1:123456789012:execution:sm:run"),
            Some("sm")
        );
        for not_one in [
            "nightly-7",
            "arn:aws:states:eu-west-1:123456789012:stateMachine:amiflow-prod",
            "arn:aws:lambda:eu-west-1:123456789012:function:x:y:z",
        ] {
            assert_eq!(state_machine_of(not_one), None, "{not_one}");
        }
    }
}
