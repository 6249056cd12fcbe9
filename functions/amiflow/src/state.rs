//! The build state: the small JSON document that flows from state to state.
//!
//! It holds the prepared build, what the build has learnt and created so far (the
//! ledger), timings and wait start times. It never holds a secret: key material lives in
//! SSM Parameter Store, sensitive variables stay placeholders until the moment of use.

use std::collections::BTreeMap;

use amiflow_template::PreparedBuild;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Tag put on every resource a build creates; its value is the execution name as
/// [`build_id`] normalizes it.
pub const BUILD_TAG: &str = "amiflow:build";

/// The execution name as every build resource carries it ([`BUILD_TAG`] values, SSM
/// parameter paths, S3 staging keys, ClientToken seeds): letters, digits and `_.-` only.
/// Step Functions accepts names (`@ + ( ) ! =` …) that SSM parameter names and IAM tag
/// values refuse; each other character becomes `-`, and a name that had to change gets
/// `-` and 16 hex digits of a hash of the original.
///
/// Distinct names give distinct ids, whoever picks them: a name is kept as it is only if it
/// is safe and does not end the way a hashed one does, so nobody can name an execution after
/// another's id (`a--0123…` for `a@`) and have its janitor sweep, or its ClientTokens find,
/// that build's resources. Apply it once, to the name Step Functions knows (an id passed
/// again may change: `amiflow clean`, which takes either, sweeps both).
pub fn build_id(execution: &str) -> String {
    let safe: String = execution
        .chars()
        .map(|c| if is_safe_char(c) { c } else { '-' })
        .collect();
    if safe == execution && !looks_hashed(execution) {
        return safe;
    }
    format!(
        "{safe}-{}",
        crate::identity::digest_hex(execution, BUILD_ID_HASH_DIGITS)
    )
}

/// Hex digits of the hash a changed name gets: 64 bits, beyond anyone's search for a second
/// name with the same id.
const BUILD_ID_HASH_DIGITS: usize = 16;

/// Whether `text` is a hashed id as [`build_id`] makes them (safe characters, `-` and 16
/// lowercase hex digits at the end): the tag value of a name that had to change, whose own
/// id differs (`amiflow clean` takes it as given).
pub fn is_hashed_id(text: &str) -> bool {
    text.chars().all(is_safe_char) && looks_hashed(text)
}

/// The characters a build id keeps: what SSM parameter names and IAM tag values all take
/// (`resources/key_pair.rs` names parameters with them too).
pub fn is_safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-".contains(c)
}

/// Whether `name` ends as [`build_id`]'s hashed ids do: `-` and 16 lowercase hex digits.
fn looks_hashed(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > BUILD_ID_HASH_DIGITS
        && bytes[bytes.len() - BUILD_ID_HASH_DIGITS - 1] == b'-'
        && bytes[bytes.len() - BUILD_ID_HASH_DIGITS..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Tag naming the state machine whose execution created a resource (`$$.StateMachine.Name`;
/// `amiflow-local` for `amiflow build`): the janitor of one stack sweeps only its own state
/// machine's resources, so an execution named like another stack's cannot take that
/// stack's resources with it.
pub const STATE_MACHINE_TAG: &str = "amiflow:state-machine";
/// Set by a successful build's Cleanup on what it delivers (AMIs, their snapshots, kept
/// volumes), value the build name: no later sweep by [`BUILD_TAG`] removes these, not even
/// the janitor's after another build of the same execution failed it.
pub const ARTIFACT_TAG: &str = "amiflow:artifact";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildState {
    /// The execution's name as [`build_id`] normalizes it: the value of the [`BUILD_TAG`] on
    /// everything this build creates, and the seed of every ClientToken.
    pub execution: String,
    /// The state machine running the execution: the value of [`STATE_MACHINE_TAG`]. Empty
    /// when a step runs outside a state machine (tests), and then not tagged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_machine: String,
    pub build: PreparedBuild,
    #[serde(default)]
    pub on_error: OnError,
    /// What the build has learnt so far (source AMI, network, instance, images, ...).
    #[serde(default)]
    pub data: BuildData,
    #[serde(default)]
    pub ledger: Ledger,
    /// Wait name → when that wait began, so `aws_polling` budgets hold across retries.
    #[serde(default)]
    pub waits: BTreeMap<String, DateTime<Utc>>,
    #[serde(default)]
    pub timings: Vec<StepTiming>,
    /// Set by the state machine's Catch (`ResultPath: $.error`) when a step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CaughtError>,
    /// A deployed build's sensitive variables: name → the SecureString parameter holding
    /// the value (`resources/sensitive_var.rs`), never the value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive_vars: BTreeMap<String, String>,
}

impl BuildState {
    /// A build about to start: nothing learnt, created or timed yet.
    pub fn new(
        execution: String,
        state_machine: String,
        build: PreparedBuild,
        on_error: OnError,
    ) -> BuildState {
        BuildState {
            execution,
            state_machine,
            build,
            on_error,
            data: BuildData::default(),
            ledger: Ledger::default(),
            waits: BTreeMap::new(),
            timings: Vec::new(),
            error: None,
            sensitive_vars: BTreeMap::new(),
        }
    }
}

/// Packer's `-on-error`: clean up (default), keep everything for debugging, or run the
/// `error-cleanup-provisioner` and then keep everything (`ask` is the CLI's: it asks, then
/// the build goes on with one of these); deployed builds may also keep a failed build for
/// Step Functions' RedriveExecution.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    #[default]
    Cleanup,
    Abort,
    /// The build runs the chain without Catch (flows.rs): a failed step fails the
    /// execution with everything in place, and a redrive resumes at that step.
    Redrive,
    RunCleanupProvisioner,
}

impl OnError {
    /// A failed build keeps what it created (Cleanup removes nothing).
    pub fn keeps_resources(self) -> bool {
        matches!(
            self,
            OnError::Abort | OnError::RunCleanupProvisioner | OnError::Redrive
        )
    }

    /// A failed build runs its `error-cleanup-provisioner` (Packer skips it on abort).
    pub fn runs_error_cleanup_provisioner(self) -> bool {
        !matches!(self, OnError::Abort)
    }
}

/// The error a Catch stores, in Step Functions' own shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaughtError {
    #[serde(rename = "Error")]
    pub error: String,
    #[serde(rename = "Cause", default)]
    pub cause: String,
}

impl CaughtError {
    /// The human-readable message: Lambda wraps a handler's error as a JSON cause.
    pub fn message(&self) -> String {
        serde_json::from_str::<crate::error::ErrorPayload>(&self.cause)
            .map(|p| p.error_message)
            .unwrap_or_else(|_| self.cause.clone())
    }
}

/// Facts gathered by the steps, Packer's "generated data" and state-bag keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BuildData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ami: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ami_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ami_creation_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ami_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ami_owner_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_ami_tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair_name: Option<String>,
    /// SSM parameter holding the temporary private key (never the key itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_parameter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_host: Option<String>,
    /// Region → AMI id, Packer's `amis`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub amis: BTreeMap<String, String>,
    /// Region → snapshot ids, Packer's `snapshots`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub snapshots: BTreeMap<String, Vec<String>>,
    /// Region → volume ids kept as the artifact (amazon-ebsvolume).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Vec<String>>,
    /// Anything else a builder needs to pass along (device, mount path, command id, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Instance,
    SpotRequest,
    LaunchTemplate,
    SecurityGroup,
    KeyPair,
    Parameter,
    InstanceProfile,
    Role,
    Volume,
    Snapshot,
    Image,
    /// A key prefix `bucket/prefix`: every object under it (amazon-instance's bundle).
    S3Object,
    /// A bucket the build created (amazon-instance's `s3_bucket` when it was missing).
    S3Bucket,
}

/// One resource the build created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resource {
    pub kind: ResourceKind,
    pub id: String,
    pub region: String,
    /// Part of the artifact: kept when the build succeeds, removed when it fails.
    #[serde(default)]
    pub artifact: bool,
    /// For an S3 key prefix ([`ResourceKind::S3Object`]): the keys that were already under
    /// it before this build wrote there (another build's bundle, perhaps backing a
    /// registered AMI). Removing the prefix never removes these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ours: Vec<String>,
}

/// Every resource the build created, written by the handler that created it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ledger {
    #[serde(default)]
    pub resources: Vec<Resource>,
}

impl Ledger {
    /// Records a resource once; recording the same one again is a no-op (retried handlers).
    pub fn record(&mut self, kind: ResourceKind, region: &str, id: &str, artifact: bool) {
        if !self.contains(kind, id) {
            self.resources.push(Resource {
                kind,
                id: id.to_string(),
                region: region.to_string(),
                artifact,
                not_ours: Vec::new(),
            });
        }
    }

    /// Records an S3 key prefix the build is about to write under; `not_ours` are the keys
    /// already there, which stay when the prefix is removed.
    pub fn record_prefix(&mut self, region: &str, id: &str, artifact: bool, not_ours: Vec<String>) {
        self.forget(ResourceKind::S3Object, id);
        self.resources.push(Resource {
            kind: ResourceKind::S3Object,
            id: id.to_string(),
            region: region.to_string(),
            artifact,
            not_ours,
        });
    }

    pub fn contains(&self, kind: ResourceKind, id: &str) -> bool {
        self.resources.iter().any(|r| r.kind == kind && r.id == id)
    }

    pub fn forget(&mut self, kind: ResourceKind, id: &str) {
        self.resources.retain(|r| !(r.kind == kind && r.id == id));
    }

    pub fn of_kind(&self, kind: ResourceKind) -> impl Iterator<Item = &Resource> {
        self.resources.iter().filter(move |r| r.kind == kind)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepTiming {
    pub step: String,
    pub started: DateTime<Utc>,
    pub millis: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_twice_keeps_one_entry() {
        let mut ledger = Ledger::default();
        ledger.record(ResourceKind::Instance, "us-east-1", "i-1", false);
        ledger.record(ResourceKind::Instance, "us-east-1", "i-1", false);
        assert_eq!(ledger.resources.len(), 1);
        ledger.forget(ResourceKind::Instance, "i-1");
        assert!(ledger.resources.is_empty());
    }

    #[test]
    fn caught_error_message_unwraps_lambda_cause() {
        let e = CaughtError {
            error: "BuildFailed".into(),
            cause: r#"{"errorType":"BuildFailed","errorMessage":"boom"}"#.into(),
        };
        assert_eq!(e.message(), "boom");
        let plain = CaughtError {
            error: "States.Timeout".into(),
            cause: "took too long".into(),
        };
        assert_eq!(plain.message(), "took too long");
    }
}

#[cfg(test)]
mod build_id_tests {
    use super::build_id;

    #[test]
    fn build_ids_are_ssm_safe_and_distinct() {
        assert_eq!(
            build_id("amiflow-20261203-1200-ab12"),
            "amiflow-20261203-1200-ab12"
        );
        let odd = build_id("web@+(1)!=x");
        assert!(odd.starts_with("web---1---x-"), "{odd}");
        assert_eq!(odd.len(), "web@+(1)!=x".len() + 17, "{odd}");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "{odd}"
        );
        assert_ne!(
            odd,
            build_id("web-+(1)!=x"),
            "different names stay different"
        );
        assert_eq!(build_id("web@+(1)!=x"), odd, "the same name, the same id");
    }

    /// A starter who sees an execution named `a@b` must not be able to start one whose id is
    /// the same (its janitor would sweep that build, its ClientTokens find its instance).
    #[test]
    fn no_name_is_another_names_id() {
        for victim in ["a@b", "nightly (retry)", "x=1", "web-0123456789abcdef"] {
            let id = build_id(victim);
            assert_ne!(id, victim, "{victim} is normalized");
            assert_ne!(
                build_id(&id),
                id,
                "a starter naming an execution {id} gets an id of its own"
            );
        }
        // Names that only look hashed (wrong length, upper case) are kept.
        for kept in [
            "build-0123456789abcde",
            "build-0123456789ABCDEF",
            "0123456789abcdef",
        ] {
            assert_eq!(build_id(kept), kept);
        }
    }
}
