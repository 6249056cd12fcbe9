//! Every kind of AWS resource a build creates, one module each, holding that kind's whole
//! life after its creating step: how to look at it, how to find it by the build tag, how to
//! remove it (idempotently: absent counts as removed), what "cannot go yet" looks like (in
//! use, still attached, still terminating) and the IAM actions all of that needs.
//!
//! The creating steps (`steps/<name>.rs`), Cleanup (`steps/cleanup.rs`) and the janitor
//! (`steps/janitor.rs`) all go through these modules. [`sweep`] is the removal both of them
//! run: one loop over [`Kind::CLEANUP_ORDER`].
//!
//! Adding a resource kind: a module here (find, remove, IAM actions), a [`Kind`] variant in
//! its place in the order, and the `Ledger::record` call in the step that creates it.

pub mod approval_token;
pub mod await_token;
pub mod iam;
pub mod image;
pub mod instance;
pub mod key_pair;
pub mod kms;
pub mod s3;
pub mod security_group;
pub mod sensitive_var;
pub mod snapshot;
pub mod spot_request;
pub mod ssm_command;
pub mod volume;

use std::collections::BTreeSet;

use aws_sdk_ec2::types::Filter;
use serde::{Deserialize, Serialize};

use crate::identity::{build_filter, filter, BUILD_NAME_TAG};
use crate::state::{Ledger, ResourceKind, ARTIFACT_TAG};
use crate::{Ctx, StepError};

/// What a sweep covers.
#[derive(Debug, Clone)]
pub struct Scope {
    pub execution: String,
    /// The state machine whose execution it is ([`crate::state::STATE_MACHINE_TAG`]), when
    /// known: a tag search then matches its resources only.
    pub state_machine: Option<String>,
    /// One build of the execution; None = every build (the janitor).
    pub build_name: Option<String>,
    /// Where images and snapshots can be: the target regions and any region the ledger names.
    pub regions: Vec<String>,
    /// Where instances, key pairs, security groups, volumes and key parameters can be: the
    /// build region and any region the ledger names for them (a build launches only in its
    /// own region; other target regions only receive image copies and their snapshots).
    /// The janitor, knowing nothing, gives every region.
    pub instance_regions: Vec<String>,
    /// Whether to search for temporary key pairs and their parameters by tag: only when
    /// the build's config makes one (the ledger's are removed either way).
    pub key_pairs: bool,
    /// The build failed or was aborted: its AMIs and snapshots go too.
    pub delete_artifacts: bool,
    /// AMIs to keep (the artifact of a successful build).
    pub keep_images: BTreeSet<String>,
    /// Volumes to keep (amazon-ebsvolume's artifact of a successful build).
    pub keep_volumes: BTreeSet<String>,
    /// Deterministic names of the temporary IAM role and profile the build may have made
    /// (found even when the step failed before recording them).
    pub iam_names: Vec<String>,
    /// Kinds the ledger vouches for: every resource of theirs the build made is recorded
    /// there, so the sweep takes the ledger's word and searches no tag (and skips a kind the
    /// ledger holds nothing to remove of). Cleanup of a build that succeeded gives these:
    /// every creating step returned, having recorded what it made (a retried step finds its
    /// first attempt's resource: ClientToken or look-up, tests/e2e/ebs.rs
    /// `each_creating_step_twice_creates_one_resource`). After a failure, and for the
    /// janitor, none: a step that failed midway may have made something it never recorded.
    pub vouched: Vec<Kind>,
    /// Where SSM provisioning may have left staged scripts (revealed secrets among them)
    /// and command output: (region, `bucket/prefix`), from
    /// [`crate::provision::ssm::staging_prefixes`]. A command that ran to its end removed
    /// its own; a failed or stopped build's stay until swept here.
    pub staging: Vec<(String, String)>,
    /// The kinds the sweep searches by tag: for a build's Cleanup those its config can
    /// make ([`Kind::made_by`]); for the janitor every kind.
    pub kinds: Vec<Kind>,
}

impl Scope {
    /// The janitor's scope: everything tagged with the execution in these regions, partial
    /// AMIs included.
    pub fn execution(execution: &str, regions: &[String]) -> Scope {
        Scope {
            execution: execution.to_string(),
            state_machine: None,
            build_name: None,
            regions: regions.to_vec(),
            instance_regions: regions.to_vec(),
            key_pairs: true,
            delete_artifacts: true,
            keep_images: BTreeSet::new(),
            keep_volumes: BTreeSet::new(),
            iam_names: Vec::new(),
            vouched: Vec::new(),
            staging: Vec::new(),
            kinds: Kind::CLEANUP_ORDER.to_vec(),
        }
    }

    /// Whether the sweep of `kind` searches by tag: the build can make it, and the ledger
    /// does not vouch for it. (What the ledger holds is removed either way.)
    pub fn searches(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind) && !self.vouched.contains(&kind)
    }

    /// EC2 filters matching what the scope covers: the execution, and the build when one.
    pub fn filters(&self) -> Vec<Filter> {
        let mut f = vec![build_filter(&self.execution)];
        if let Some(m) = &self.state_machine {
            f.push(filter(
                &format!("tag:{}", crate::state::STATE_MACHINE_TAG),
                [m.clone()],
            ));
        }
        if let Some(b) = &self.build_name {
            f.push(filter(&format!("tag:{BUILD_NAME_TAG}"), [b.clone()]));
        }
        f
    }

    /// The regions where the build launched and images may be: security groups and volumes.
    fn launch_regions(&self) -> impl Iterator<Item = &String> {
        self.regions
            .iter()
            .filter(|r| self.instance_regions.contains(r))
    }
}

/// What a sweep removed (or, with `on_error: abort`, kept).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// What one kind's sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    /// Resources that cannot go yet (terminating, in use, attached), one phrase each; the
    /// sweep goes on with the other kinds and ends `NotReady` naming them.
    pub not_yet: Vec<String>,
}

impl Swept {
    /// Records a removal's outcome: removed (`Ok(true)`), gone already (`Ok(false)`), or
    /// not possible yet (`NotReady`, noted); other errors stay errors.
    fn note(&mut self, result: Result<bool, StepError>, what: String) -> Result<(), StepError> {
        match result {
            Ok(true) => self.removed.push(what),
            Ok(false) => {}
            Err(StepError::NotReady(why)) => self.not_yet.push(why),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Where an action may act in a deployed role, as AWS recommends scoping it. Each kind's
/// module declares the reach of the actions it owns next to them (`REACH`); a step may
/// narrow an action further in its `StepSpec::reach`; everything else reaches `Any`
/// (reads, and creates, which EC2 scopes by the tags they carry). infra.rs renders each
/// reach as the statements of the role's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Every resource: reads and creates.
    Any,
    /// EC2 resources carrying [`BUILD_TAG`](crate::state::BUILD_TAG) (any build's) that this
    /// stack's state machine made ([`STATE_MACHINE_TAG`](crate::state::STATE_MACHINE_TAG) =
    /// the stack's name): what a build destroys or changes.
    BuildTagged,
    /// [`BUILD_TAG`](crate::state::BUILD_TAG)ged volumes and instances, and the stack's own build host (tagged
    /// [`BUILD_HOST_TAG`] with the stack's name): attaching and detaching the chroot volume.
    BuildTaggedOrBuildHost,
    /// `ec2:CreateTags` in the calls that create (tags at creation), or on resources that
    /// already carry [`BUILD_TAG`](crate::state::BUILD_TAG).
    TagOnCreateOrBuildTagged,
    /// Roles and instance profiles under [`iam::IAM_PATH`].
    TemporaryIam,
    /// `iam:CreateRole` under [`iam::IAM_PATH`], only with the stack's permissions boundary.
    TemporaryRoleWithBoundary,
    /// KMS keys used through EC2 (`kms:ViaService`), for the encrypted copies it makes.
    KmsViaEc2,
    /// KMS grants only for AWS resources (`kms:GrantIsForAWSResource`): EC2's, for encrypted
    /// volumes and snapshots.
    KmsGrantForAwsResource,
    /// SSM parameters under `/amiflow/<stack>/`: its builds' temporary keys and tokens
    /// (`identity::parameter_owner`).
    AmiflowParameters,
    /// SSM parameters a pipeline may publish image ids to: under the stack's
    /// `PublishParameterPrefix` (`/images/` by default), never amiflow's own.
    PublishedParameters,
    /// The stack's artifacts bucket, and the bundle buckets it names for amazon-instance.
    StackBuckets,
    /// Objects a build may read its template from: the artifacts bucket and the schedule's
    /// template object.
    TemplateObjects,
    /// The X.509 pairs the operator keeps for amazon-instance: parameters under
    /// `/amiflow-x509/`.
    X509Parameters,
    /// ...and objects under `x509/` in the artifacts bucket.
    X509Objects,
    /// SSM commands with `AWS-RunShellScript` or `AWS-RunPowerShellScript` on instances of
    /// this stack's builds ([`BUILD_TAG`](crate::state::BUILD_TAG)ged, and tagged with the
    /// stack's state machine).
    BuildInstanceCommand,
    /// SSM commands with the stack's chroot document on the stack's build host.
    BuildHostCommand,
    /// The bundle upload roles (under `/amiflow-bundle-upload/`), each trusting only its own
    /// stack's UploadBundle role: see `steps/upload_bundle.rs`.
    BundleUploadRole,
    /// The sensitive variables of executions (`/amiflow/*/vars/*`), for the steps that
    /// reveal them and read nothing else under `/amiflow/` (`resources/sensitive_var.rs`).
    SensitiveVars,
    /// SNS topics a pipeline may notify: named `amiflow-*` (`steps/notify.rs`).
    NotifyTopics,
    /// The account's default event bus, in any region.
    DefaultEventBus,
    /// The stack's own state machine (named after the stack): answering its task tokens,
    /// starting scheduled builds.
    StackStateMachine,
    /// The executions of the stack's own state machine: the janitor reads how one ended.
    StackExecutions,
    /// The operator's values of scheduled builds' sensitive variables: parameters under
    /// `/amiflow-schedule/` in the stack's region (`steps/scheduled_start.rs`).
    ScheduleSecrets,
}

/// Tag the operator puts on the amazon-chroot build hosts a stack may use, valued with the
/// stack's name: HostInfo refuses any other host and RunHostScript's role may send
/// commands only to such hosts.
pub const BUILD_HOST_TAG: &str = "amiflow:build-host";

/// Tags, on every kind: added at creation or to what a build already tagged (so no build
/// can mark somebody else's resource as its own); removed from the builds' own.
const TAGGING_REACH: &[(&str, Reach)] = &[
    ("ec2:CreateTags", Reach::TagOnCreateOrBuildTagged),
    ("ec2:DeleteTags", Reach::BuildTagged),
];

/// Every kind's declared reaches (the module that owns an action says how far it reaches).
const DECLARED_REACH: &[&[(&str, Reach)]] = &[
    TAGGING_REACH,
    instance::REACH,
    key_pair::REACH,
    security_group::REACH,
    volume::REACH,
    image::REACH,
    snapshot::REACH,
    s3::REACH,
    iam::REACH,
    ssm_command::REACH,
    kms::REACH,
];

/// The reach of `action` as its kind's module declares it; `Any` when none does.
pub fn declared_reach(action: &str) -> Reach {
    DECLARED_REACH
        .iter()
        .flat_map(|r| r.iter())
        .find(|(a, _)| a.eq_ignore_ascii_case(action))
        .map_or(Reach::Any, |(_, r)| *r)
}

/// Whether an EC2 call (`RunInstances`, without `ec2:`) creates something, and so may tag
/// it at creation (`ec2:CreateAction`).
pub fn is_creating_ec2_call(call: &str) -> bool {
    ["Create", "Run", "Copy", "Register", "Import", "Request"]
        .iter()
        .any(|verb| call.starts_with(verb))
        && call != "CreateTags"
}

/// The calls outside EC2 that make something a sweep removes: temporary roles and profiles,
/// objects and buckets, SSM commands (cancelled), parameters (keys, variables, tokens).
const CREATING_CALLS: &[&str] = &[
    "iam:CreateRole",
    "iam:CreateInstanceProfile",
    "s3:PutObject",
    "s3:CreateBucket",
    "ssm:SendCommand",
    "ssm:PutParameter",
];

/// Whether `action` (`ec2:RunInstances`) makes something a sweep removes.
pub fn is_creating_action(action: &str) -> bool {
    match action.split_once(':') {
        Some(("ec2", call)) => is_creating_ec2_call(call),
        _ => CREATING_CALLS.contains(&action),
    }
}

/// The kinds Cleanup removes, each through its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Instances and the spot requests that launched them.
    Instance,
    /// Temporary key pairs and the parameters holding their private keys.
    KeyPair,
    SecurityGroup,
    Volume,
    /// Images and the snapshots behind them.
    Image,
    /// Snapshots no image holds (a failed build's).
    Snapshot,
    /// Objects under a prefix (amazon-instance's bundle, SSM provisioning's staged files
    /// and command output).
    S3Object,
    /// A bucket the build created.
    S3Bucket,
    /// Temporary instance profiles and their roles.
    Iam,
}

impl Kind {
    /// Cleanup's order: instances first (the rest waits for them to be gone, except key
    /// pairs), images before the snapshots they hold, objects before their bucket,
    /// instance profiles (global) last.
    pub const CLEANUP_ORDER: [Kind; 9] = [
        Kind::Instance,
        Kind::KeyPair,
        Kind::SecurityGroup,
        Kind::Volume,
        Kind::Image,
        Kind::Snapshot,
        Kind::S3Object,
        Kind::S3Bucket,
        Kind::Iam,
    ];

    /// The IAM actions finding and removing this kind needs.
    pub const fn cleanup_actions(self) -> &'static [&'static str] {
        match self {
            Kind::Instance => instance::CLEANUP_ACTIONS,
            Kind::KeyPair => key_pair::CLEANUP_ACTIONS,
            Kind::SecurityGroup => security_group::CLEANUP_ACTIONS,
            Kind::Volume => volume::CLEANUP_ACTIONS,
            Kind::Image => image::CLEANUP_ACTIONS,
            Kind::Snapshot => snapshot::CLEANUP_ACTIONS,
            Kind::S3Object => s3::OBJECT_CLEANUP_ACTIONS,
            Kind::S3Bucket => s3::BUCKET_CLEANUP_ACTIONS,
            Kind::Iam => iam::CLEANUP_ACTIONS,
        }
    }

    /// Whether a build of this config can make a resource of this kind: Cleanup of a
    /// failed build searches only these ([`Scope::kinds`]), and `amiflow policy` grants only
    /// their finding and removal. The janitor, knowing no config, searches every kind.
    pub fn made_by(self, build: &amiflow_template::PreparedBuild) -> bool {
        use amiflow_template::BuilderType as B;
        let config = &build.config;
        match self {
            Kind::Instance => config.run().is_some(),
            Kind::KeyPair => key_pair::made_for(config),
            Kind::SecurityGroup => security_group::made_for(config),
            // A launch volume outlives the instance when it is not deleted on termination,
            // or when amazon-ebssurrogate's `use_create_image` swaps the root out.
            Kind::Volume => match config {
                amiflow_template::BuilderConfig::Chroot(_)
                | amiflow_template::BuilderConfig::EbsVolume(_) => true,
                amiflow_template::BuilderConfig::EbsSurrogate(c) if c.use_create_image => true,
                _ => volume::launch_volume_outlives_instance(config),
            },
            Kind::Image => match build.builder_type {
                B::EbsVolume => false,
                _ => !config.skip_create_ami(),
            },
            // An image's snapshots go with it (Image); these are the ones no image holds yet.
            Kind::Snapshot => match build.builder_type {
                B::Instance => false,
                B::EbsVolume => snapshot::made_by_ebsvolume(config),
                _ => !config.skip_create_ami(),
            },
            Kind::S3Object => {
                build.builder_type == B::Instance || config.comm().is_some_and(|c| c.is_ssm())
            }
            Kind::S3Bucket => build.builder_type == B::Instance,
            Kind::Iam => iam::made_for(config),
        }
    }

    /// The actions Cleanup calls for this kind in a build of this config (after a failure,
    /// or on success for what the ledger holds): its finding and removal, spot requests
    /// only for a spot build, detaching only amazon-chroot's volume (the only one attached
    /// to an instance the build does not terminate: the build host).
    pub fn cleanup_calls(self, build: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
        if !self.made_by(build) {
            return Vec::new();
        }
        let spot = build.config.is_spot();
        let on_a_host = build.builder_type == amiflow_template::BuilderType::Chroot;
        self.cleanup_actions()
            .iter()
            .copied()
            .filter(|a| spot || !spot_request::ACTIONS.contains(a))
            .filter(|a| on_a_host || *a != volume::DETACH_ACTION)
            .collect()
    }

    /// Whether this kind is removed only once every instance is gone (security groups and
    /// volumes are held by instances; the rest simply follows, as Packer's cleanup does).
    fn waits_for_instances(self) -> bool {
        !matches!(self, Kind::Instance | Kind::KeyPair)
    }

    /// Whether the ledger holds anything of this kind the sweep would remove (what
    /// `scope` keeps and, unless it deletes artifacts, what is marked artifact, does not
    /// count). For a vouched kind, nothing here means nothing to do: no call at all.
    fn in_ledger(self, scope: &Scope, ledger: &Ledger) -> bool {
        let kinds: &[ResourceKind] = match self {
            Kind::Instance => &[ResourceKind::Instance, ResourceKind::SpotRequest],
            Kind::KeyPair => &[ResourceKind::KeyPair, ResourceKind::Parameter],
            Kind::SecurityGroup => &[ResourceKind::SecurityGroup],
            Kind::Volume => &[ResourceKind::Volume],
            Kind::Image => &[ResourceKind::Image],
            Kind::Snapshot if !scope.delete_artifacts => &[],
            Kind::Snapshot => &[ResourceKind::Snapshot],
            Kind::S3Object if !scope.staging.is_empty() => return true,
            Kind::S3Object => &[ResourceKind::S3Object],
            Kind::S3Bucket if !scope.delete_artifacts => &[],
            Kind::S3Bucket => &[ResourceKind::S3Bucket],
            Kind::Iam if !scope.iam_names.is_empty() => return true,
            Kind::Iam => &[ResourceKind::InstanceProfile, ResourceKind::Role],
        };
        ledger.resources.iter().any(|r| {
            kinds.contains(&r.kind)
                && (!r.artifact || scope.delete_artifacts)
                && !scope.keep_images.contains(&r.id)
                && !scope.keep_volumes.contains(&r.id)
        })
    }

    async fn sweep(self, ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<Swept, StepError> {
        match self {
            Kind::Instance => instance::sweep(ctx, scope, ledger).await,
            Kind::KeyPair => key_pair::sweep(ctx, scope, ledger).await,
            Kind::SecurityGroup => security_group::sweep(ctx, scope, ledger).await,
            Kind::Volume => volume::sweep(ctx, scope, ledger).await,
            Kind::Image => image::sweep(ctx, scope, ledger).await,
            Kind::Snapshot => snapshot::sweep(ctx, scope, ledger).await,
            Kind::S3Object => s3::sweep_objects(ctx, scope, ledger).await,
            Kind::S3Bucket => s3::sweep_buckets(ctx, scope, ledger).await,
            Kind::Iam => iam::sweep(ctx, scope, ledger).await,
        }
    }
}

/// Every kind's cleanup actions, in [`Kind::CLEANUP_ORDER`] (duplicates left for the
/// policy writers to fold): Cleanup's and the janitor's IAM list.
pub const CLEANUP_ACTIONS: &[&str] = &ALL_CLEANUP_ACTIONS;

const ALL_CLEANUP_ACTIONS: [&str; cleanup_actions_len()] = cleanup_actions();

const fn cleanup_actions_len() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < Kind::CLEANUP_ORDER.len() {
        n += Kind::CLEANUP_ORDER[i].cleanup_actions().len();
        i += 1;
    }
    n
}

const fn cleanup_actions() -> [&'static str; cleanup_actions_len()] {
    let mut out = [""; cleanup_actions_len()];
    let mut n = 0;
    let mut i = 0;
    while i < Kind::CLEANUP_ORDER.len() {
        let actions = Kind::CLEANUP_ORDER[i].cleanup_actions();
        let mut j = 0;
        while j < actions.len() {
            out[n] = actions[j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// Removes everything in `scope` (found by the ledger and by tag), kind by kind in
/// [`Kind::CLEANUP_ORDER`]. `NotReady` while instances terminate (nothing after key pairs is
/// tried then) or while something else cannot go yet (everything else is removed first).
pub async fn sweep(ctx: &Ctx, scope: &Scope, ledger: &Ledger) -> Result<CleanupReport, StepError> {
    match sweep_pass(ctx, scope, ledger).await? {
        (report, None) => Ok(report),
        (_, Some(why)) => Err(StepError::NotReady(why)),
    }
}

/// One pass of [`sweep`]: what it removed and kept, and, when something cannot go yet, why
/// (what `sweep` raises as `NotReady`), so that a caller sweeping again reports every pass's
/// removals.
async fn sweep_pass(
    ctx: &Ctx,
    scope: &Scope,
    ledger: &Ledger,
) -> Result<(CleanupReport, Option<String>), StepError> {
    let mut report = CleanupReport::default();
    let mut terminating: Vec<String> = Vec::new();
    // Whether this pass terminated an instance that was running: then, as an AWS waiter
    // does, the first look at it comes at once rather than after the wait's first interval
    // (a terminated instance may already be gone, and the build's result waits on it).
    let mut terminated_now = false;
    let mut not_yet: Vec<String> = Vec::new();
    for kind in Kind::CLEANUP_ORDER {
        if !scope.searches(kind) && !kind.in_ledger(scope, ledger) {
            continue;
        }
        if kind.waits_for_instances() && !terminating.is_empty() && terminated_now {
            terminated_now = false;
            terminating = Kind::Instance.sweep(ctx, scope, ledger).await?.not_yet;
        }
        if kind.waits_for_instances() && !terminating.is_empty() {
            let why = format!(
                "waiting for {} to terminate before removing the rest",
                terminating.join(", ")
            );
            return Ok((report, Some(why)));
        }
        let swept = kind.sweep(ctx, scope, ledger).await?;
        if kind == Kind::Instance {
            // Not the spot requests cancelled with them: `resources/instance.rs` names each
            // instance it terminates "instance ID (REGION)".
            terminated_now = swept.removed.iter().any(|r| r.starts_with("instance "));
        }
        report.removed.extend(swept.removed);
        report.kept.extend(swept.kept);
        match kind {
            Kind::Instance => terminating = swept.not_yet,
            _ => not_yet.extend(swept.not_yet),
        }
    }
    Ok((report, (!not_yet.is_empty()).then(|| not_yet.join("; "))))
}

/// The janitor's sweep: everything tagged with the execution in these regions, partial
/// AMIs included, but not what a build that succeeded delivered (`amiflow:artifact`).
/// `build_id` is the value of the build tag ([`crate::state::build_id`] of the name Step
/// Functions knows). With `state_machine`, only that state machine's resources
/// ([`crate::state::STATE_MACHINE_TAG`]) are looked for.
pub async fn sweep_execution(
    ctx: &Ctx,
    state_machine: Option<&str>,
    build_id: &str,
    regions: &[String],
) -> Result<CleanupReport, StepError> {
    sweep(
        ctx,
        &execution_scope(state_machine, build_id, regions),
        &Ledger::default(),
    )
    .await
}

fn execution_scope(state_machine: Option<&str>, build_id: &str, regions: &[String]) -> Scope {
    let mut scope = Scope::execution(build_id, regions);
    scope.state_machine = state_machine.map(String::from);
    scope
}

/// [`sweep_execution`] again while resources are still going (`NotReady`), every `interval`
/// within `budget`, telling `waiting` why each time: the janitor and `amiflow clean`. The
/// report holds every pass's removals (an instance terminated in the first, its volume
/// removed in a later one); what the last pass kept.
pub async fn sweep_execution_until_done(
    ctx: &Ctx,
    state_machine: Option<&str>,
    build_id: &str,
    regions: &[String],
    interval: std::time::Duration,
    budget: std::time::Duration,
    waiting: impl Fn(&str),
) -> Result<CleanupReport, StepError> {
    let started = std::time::Instant::now();
    let scope = execution_scope(state_machine, build_id, regions);
    let mut removed = Vec::new();
    loop {
        let (pass, not_ready) = sweep_pass(ctx, &scope, &Ledger::default()).await?;
        removed = union(removed, pass.removed);
        match not_ready {
            None => {
                return Ok(CleanupReport {
                    removed,
                    kept: pass.kept,
                })
            }
            Some(why) if started.elapsed() + interval < budget => {
                waiting(&why);
                tokio::time::sleep(interval).await;
            }
            Some(why) => return Err(StepError::NotReady(why)),
        }
    }
}

/// The ledger's ids of one kind in one region.
fn ledger_ids(ledger: &Ledger, kind: ResourceKind, region: &str) -> Vec<String> {
    ledger
        .of_kind(kind)
        .filter(|r| r.region == region)
        .map(|r| r.id.clone())
        .collect()
}

/// `a` with the items of `b` it lacks appended, order kept.
fn union(mut a: Vec<String>, b: impl IntoIterator<Item = String>) -> Vec<String> {
    for x in b {
        if !a.contains(&x) {
            a.push(x);
        }
    }
    a
}

/// Whether a resource carries [`ARTIFACT_TAG`]: delivered by a build that succeeded, so no
/// sweep removes it.
fn is_artifact(tags: &[aws_sdk_ec2::types::Tag]) -> bool {
    tags.iter().any(|t| t.key() == Some(ARTIFACT_TAG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_actions_are_every_kinds_in_order() {
        let expected: Vec<&str> = Kind::CLEANUP_ORDER
            .iter()
            .flat_map(|k| k.cleanup_actions().iter().copied())
            .collect();
        assert_eq!(CLEANUP_ACTIONS, expected.as_slice());
        for needed in [
            "ec2:TerminateInstances",
            "ec2:DeleteKeyPair",
            "ec2:DeleteSecurityGroup",
            "ec2:DeleteVolume",
            "ec2:DeregisterImage",
            "ec2:DeleteSnapshot",
            "s3:DeleteObject",
            "s3:DeleteBucket",
            "iam:DeleteRole",
        ] {
            assert!(CLEANUP_ACTIONS.contains(&needed), "{needed}");
        }
    }

    #[test]
    fn a_vouched_kind_is_swept_only_for_what_the_ledger_holds_to_remove() {
        let mut scope = Scope::execution("exec-1", &["us-east-1".to_string()]);
        scope.delete_artifacts = false;
        scope.keep_images = ["ami-final".to_string()].into();
        scope.vouched = Kind::CLEANUP_ORDER.to_vec();
        let mut ledger = Ledger::default();
        ledger.record(ResourceKind::Image, "us-east-1", "ami-final", true);
        ledger.record(ResourceKind::Snapshot, "us-east-1", "snap-1", true);
        assert!(!scope.searches(Kind::Image));
        // The kept artifact and its snapshot: nothing for a success's Cleanup to do.
        for k in Kind::CLEANUP_ORDER {
            assert!(!k.in_ledger(&scope, &ledger), "{k:?}");
        }
        // An intermediary image (not an artifact) goes, and the instance.
        ledger.record(ResourceKind::Image, "us-east-1", "ami-intermediary", false);
        ledger.record(ResourceKind::Instance, "us-east-1", "i-1", false);
        assert!(Kind::Image.in_ledger(&scope, &ledger));
        assert!(Kind::Instance.in_ledger(&scope, &ledger));
        assert!(!Kind::SecurityGroup.in_ledger(&scope, &ledger));
        // After a failure the artifacts go too.
        scope.delete_artifacts = true;
        scope.keep_images.clear();
        assert!(Kind::Snapshot.in_ledger(&scope, &ledger));
        // A temporary instance profile is looked for by its deterministic name.
        scope.iam_names = vec!["amiflow-x".into()];
        assert!(Kind::Iam.in_ledger(&scope, &ledger));
        // The janitor vouches for nothing: it searches every kind.
        let janitor = Scope::execution("exec-1", &["us-east-1".to_string()]);
        assert!(Kind::CLEANUP_ORDER.iter().all(|k| janitor.searches(*k)));
    }

    #[test]
    fn instances_go_before_everything_they_hold() {
        let at = |k: Kind| Kind::CLEANUP_ORDER.iter().position(|x| *x == k).unwrap();
        assert_eq!(at(Kind::Instance), 0);
        for k in Kind::CLEANUP_ORDER {
            assert_eq!(k.waits_for_instances(), at(k) > at(Kind::KeyPair), "{k:?}");
        }
        assert!(at(Kind::Image) < at(Kind::Snapshot));
        assert!(at(Kind::S3Object) < at(Kind::S3Bucket));
    }
}
