//! The flows: each builder's chain of steps, declared once and rendered to ASL.
//!
//! ```text
//! Prepare ─► HasPipeline? ─► [Fingerprint] ─► Builds (Map over $.builds) ─► Finalize ─► AnyBuildFailed?
//!   │                                            │          ─► BuildFailed (Fail) | Succeeded | [pipeline:
//!   │                                            │             NeedsTest? ─► PlanTests ─► Tests (Map: test.<Step> … test.Cleanup) ─► JudgeTests
//!   │                                            │             ─► NeedsApproval? ─► Approve ─► Publish ─► Retain ─► Notify ─► RunFailed?]
//!   │                                            └─ BuilderType (Choice on $.build.builder_type and $.on_error)
//!   │                 ├─ <builder>.<Step> … ─► <builder>.Cleanup (end of the iteration)
//!   │                 └─ <builder>.redrive.<Step> … ─► <builder>.redrive.Cleanup (no Catch)
//!   │                      (on failure ─► <builder>.ErrorCleanupProvision ─► <builder>.Cleanup)
//!   └─ InvalidTemplate ─► TemplateInvalid (Fail, nothing was created)
//! ```
//!
//! State names are `<builder type>.<Packer step name>` (`amazon-ebs.CreateImage`): Step
//! Functions wants names unique in the whole definition, and the builders share steps.
//! Task resources are `${<Step>FunctionArn}` DefinitionSubstitutions, one Lambda function
//! per step whatever the builder; the handler reads the builder type from the build state.
//!
//! A Map iteration never fails: every Task catches `States.ALL` into `$.error` (the build
//! state's [`crate::state::CaughtError`]) and goes to its chain's Cleanup (through
//! ErrorCleanupProvision in the chains that provision, amazon-chroot's excepted); Cleanup's own
//! failure is caught the same way. Other builds therefore finish and clean up, and
//! Finalize sees every build with its artifact or its error.
//!
//! Redrive mode (`"on_error": "redrive"`) takes the same chain without the Catch: a failed
//! step fails its iteration, the Map and the execution, leaving the build's resources in
//! place, and Step Functions' RedriveExecution re-runs exactly the failed step of the failed
//! iterations (a Catch cannot re-raise, so the catching chain could never be redriven).
//! Cleanup then runs when the chain completes; a build never redriven is swept by the
//! janitor when the redrive window closes, or by `amiflow abandon`.
//!
//! The deployed definition (infra.rs) substitutes the Map's `MaxConcurrency` (rendered here
//! as 0, unlimited) and the execution timeout from the stack's parameters.
//!
//! The pipeline states (Fingerprint, the test stage, Approve, Publish, Retain, Withdraw, Notify:
//! [`PIPELINE_BEFORE`], [`PLAN_TESTS`] [`TEST_CHAIN`] [`JUDGE_TESTS`], [`APPROVE`],
//! [`PIPELINE_AFTER`], [`WITHDRAW`], [`NOTIFY`]) run only when Prepare's output has
//! `$.pipeline` (Choices, so a plain build invokes no extra function). The test stage is a
//! second Map whose one iteration is a build of its own (`<build>.test`, amazon-ebs from the
//! new image): the launch and provision steps of the builds, the same Catch into its Cleanup,
//! so it is tagged, in its ledger, cleaned up and swept like a build. A failed test, like a
//! refused approval, goes to Withdraw. A run found up to date empties `$.builds`, so
//! the Map runs no iteration. Every pipeline run ends in Notify: after Retain, after a failed
//! build, or after a failed Publish or Retain (caught into `$.pipeline_error`), or after
//! Withdraw removed the images of a run that was not approved.

use amiflow_statemachine::{
    Catcher, Choice, ChoiceRule, Fail, JitterStrategy, MapState, Pass, Retrier, StateMachine,
    States, SubMachine, Succeed, Task,
};
use amiflow_template::BuilderType;
use serde_json::json;

use crate::steps::*;
use crate::waits::{Wait, WaitPolicy};

/// Prepare: the template becomes one build state per build (first state).
pub const PREPARE: StepSpec = prepare::STEP;
/// Cleanup ends every build's chain, on success and through the Catch on failure.
pub const CLEANUP: StepSpec = cleanup::SPEC;
/// Between a failed step and Cleanup in the chains that provision: runs the template's
/// `error-cleanup-provisioner` (a no-op when there is none or the build never connected).
pub const ERROR_CLEANUP_PROVISION: StepSpec = error_cleanup_provision::SPEC;
/// Finalize reports every build (after the Map).
pub const FINALIZE: StepSpec = finalize::STEP;
/// The janitor: invoked by the EventBridge rule, not a state of the state machine.
pub const JANITOR: StepSpec = janitor::SPEC;
/// Before a waiting step whose wait EC2 announces: a callback state that waits for the event
/// (deployed), then the waiting step polls as the last word ([`await_task`]).
pub const AWAIT_EVENT: StepSpec = await_event::SPEC;
/// Answers AWAIT_EVENT's tokens: invoked by the EventBridge rules on EC2's state-change
/// events, not a state of the state machine.
pub const DELIVER_EVENT: StepSpec = deliver_event::SPEC;
/// The schedule's target: starts a build with the operator's sensitive variables; not a
/// state of the state machine.
pub const SCHEDULED_START: StepSpec = scheduled_start::SPEC;
/// A pipeline's states between Prepare and the builds: decide whether to build, tag the build.
pub const PIPELINE_BEFORE: [StepSpec; 1] = [fingerprint::SPEC];
/// A pipeline's states after every build succeeded, in order: publish the image id, then
/// retire the older images.
pub const PIPELINE_AFTER: [StepSpec; 2] = [publish::SPEC, retain::SPEC];
/// Between a successful build and Publish, when the pipeline has `approval` and built:
/// a callback Task that waits for `amiflow approve|reject` (or the local approver).
pub const APPROVE: StepSpec = approve::SPEC;
/// After the builds of a pipeline with `test`: the test build gets the new image.
pub const PLAN_TESTS: StepSpec = plan_tests::SPEC;
/// The test instance's chain (before its Cleanup): launch from the new image, connect, run
/// the test provisioners, as a build does.
pub const TEST_CHAIN: [StepSpec; 9] = concat::<9>(&[&LAUNCH, &PROVISION]);
/// After the test Map: every test passed, or `TestFailed` into Withdraw.
pub const JUDGE_TESTS: StepSpec = judge_tests::SPEC;
/// After Approve did not approve, or a test failed: removes the run's images; then Notify.
pub const WITHDRAW: StepSpec = withdraw::SPEC;
/// Ends every pipeline run, whatever its outcome (builds failed, Publish or Retain failed,
/// up to date, succeeded): the pipeline's `notify`.
pub const NOTIFY: StepSpec = notify::SPEC;

// The phases the builders share, in Packer's order.

/// Resolve the source, make the temporary access, launch and wait for the instance.
const LAUNCH: [StepSpec; 7] = [
    source_ami_info::SPEC,
    network_info::SPEC,
    key_pair::SPEC,
    security_group::SPEC,
    iam_instance_profile::SPEC,
    run_source_instance::SPEC,
    wait_instance_running::SPEC,
];
/// Reach the instance and run the provisioners.
const PROVISION: [StepSpec; 2] = [connect::SPEC, provision::SPEC];
/// Stop the instance and apply the attribute changes an image of it needs.
const STOP: [StepSpec; 3] = [
    stop_instance::SPEC,
    wait_instance_stopped::SPEC,
    modify_instance::SPEC,
];
/// Register the image from snapshots or a bundle (amazon-ebssurrogate with
/// `use_create_image` makes it with CreateImage inside RegisterImage).
const REGISTER: [StepSpec; 3] = [
    deregister_ami::SPEC,
    register_image::SPEC,
    wait_image_available::SPEC,
];
/// Copy to the other regions, then deprecation, sharing and tags on every copy.
const DISTRIBUTE: [StepSpec; 5] = [
    copy_image::SPEC,
    wait_copies_available::SPEC,
    enable_deprecation::SPEC,
    modify_image_attributes::SPEC,
    create_tags::SPEC,
];

/// amazon-ebs: launch, provision, stop, create the image from the instance. Spot
/// instances go through RunSourceInstance too.
pub const EBS: &[StepSpec] = &concat::<{ 1 + 7 + 2 + 3 + 3 + 5 }>(&[
    &[pre_validate::SPEC],
    &LAUNCH,
    &PROVISION,
    &STOP,
    &[
        deregister_ami::SPEC,
        create_image::SPEC,
        wait_image_available::SPEC,
    ],
    &DISTRIBUTE,
]);

/// amazon-chroot: a volume from the source image on the build host; the
/// mount/chroot/provision/unmount work is the host script (`infra/chroot-host.sh`),
/// started by RunHostScript and polled by WaitHostScript; the image is registered from
/// its snapshot.
pub const CHROOT: &[StepSpec] = &concat::<{ 13 + 3 + 5 }>(&[
    &[
        pre_validate::SPEC,
        host_info::SPEC,
        source_ami_info::SPEC,
        create_volume::SPEC,
        wait_volume_available::SPEC,
        attach_volume::SPEC,
        wait_volume_attached::SPEC,
        run_host_script::SPEC,
        wait_host_script::SPEC,
        detach_volume::SPEC,
        wait_volume_detached::SPEC,
        create_snapshot::SPEC,
        wait_snapshots_completed::SPEC,
    ],
    &REGISTER,
    &DISTRIBUTE,
]);

/// amazon-instance: no stop; the bundle is made and uploaded on the running instance, then
/// registered from S3.
pub const INSTANCE: &[StepSpec] = &concat::<{ 1 + 7 + 2 + 3 + 3 + 5 }>(&[
    &[pre_validate::SPEC],
    &LAUNCH,
    &PROVISION,
    &[
        upload_x509_cert::SPEC,
        bundle_volume::SPEC,
        upload_bundle::SPEC,
    ],
    &REGISTER,
    &DISTRIBUTE,
]);

/// amazon-ebssurrogate. By default SnapshotVolumes snapshots the launch volumes and
/// RegisterImage registers them; the swap steps do nothing. With `use_create_image`
/// SnapshotVolumes does nothing, the swap steps put the surrogate volume in the root slot
/// (Packer's StepSwapVolumes) and RegisterImage calls CreateImage.
pub const EBSSURROGATE: &[StepSpec] = &concat::<{ 1 + 7 + 2 + 3 + 5 + 3 + 5 }>(&[
    &[pre_validate::SPEC],
    &LAUNCH,
    &PROVISION,
    &STOP,
    &[
        snapshot_volumes::SPEC,
        wait_snapshots_completed::SPEC,
        swap_volumes::SPEC,
        attach_root_volume::SPEC,
        wait_root_volume_attached::SPEC,
    ],
    &REGISTER,
    &DISTRIBUTE,
]);

/// amazon-ebsvolume: no AMI; the kept volumes (and their snapshots when
/// `snapshot_volume`) are the artifact.
pub const EBSVOLUME: &[StepSpec] = &concat::<{ 7 + 1 + 2 + 3 + 3 }>(&[
    &LAUNCH,
    &[tag_volumes::SPEC],
    &PROVISION,
    &STOP,
    &[
        snapshot_volumes::SPEC,
        wait_snapshots_completed::SPEC,
        modify_snapshot_attributes::SPEC,
    ],
]);

/// The phases one after the other; `N` must be their total length (checked at compile time).
const fn concat<const N: usize>(phases: &[&[StepSpec]]) -> [StepSpec; N] {
    let mut out = [phases[0][0]; N];
    let mut n = 0;
    let mut i = 0;
    while i < phases.len() {
        let mut j = 0;
        while j < phases[i].len() {
            out[n] = phases[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == N, "a chain's length does not match its phases");
    out
}

/// Each builder's chain, without its Cleanup (every chain ends in [`CLEANUP`]).
pub fn chain(builder: BuilderType) -> &'static [StepSpec] {
    match builder {
        BuilderType::Ebs => EBS,
        BuilderType::Chroot => CHROOT,
        BuilderType::Instance => INSTANCE,
        BuilderType::EbsSurrogate => EBSSURROGATE,
        BuilderType::EbsVolume => EBSVOLUME,
    }
}

/// Whether `builder`'s chain runs provisioners through Provision, and so has an
/// [`ERROR_CLEANUP_PROVISION`] on its failure path (amazon-chroot's run in its host script).
pub fn provisions(builder: BuilderType) -> bool {
    chain(builder)
        .iter()
        .any(|s| s.name == provision::SPEC.name)
}

/// The state a failed step of `builder`'s chain goes to.
pub fn on_failure(builder: BuilderType) -> String {
    if provisions(builder) {
        state_name(builder, ERROR_CLEANUP_PROVISION.name)
    } else {
        state_name(builder, CLEANUP.name)
    }
}

/// The handler names of `builder`'s chain, in order (what tests compare runs against).
pub fn chain_names(builder: BuilderType) -> Vec<&'static str> {
    chain(builder).iter().map(|s| s.name).collect()
}

/// The states of `builder`'s chain in the order a build passes them, without the builder
/// prefix: each step's, the callback state of an announced wait before its step's.
pub fn chain_states(builder: BuilderType) -> Vec<String> {
    chain(builder)
        .iter()
        .flat_map(|s| {
            announced(s)
                .map(|w| await_step_name(&w))
                .into_iter()
                .chain([s.name.to_string()])
        })
        .collect()
}

/// The state name of `step` in `builder`'s chain.
pub fn state_name(builder: BuilderType, step: &str) -> String {
    format!("{}.{step}", builder.as_str())
}

/// The state name of `step` in `builder`'s redrive chain (the chain without Catch).
pub fn redrive_state_name(builder: BuilderType, step: &str) -> String {
    format!("{}.{REDRIVE}.{step}", builder.as_str())
}

/// `on_error` value (and state-name segment) of redrive mode.
pub const REDRIVE: &str = "redrive";

/// The step (handler) name of a state name: `amazon-ebs.CreateImage` → `CreateImage`.
pub fn step_of(state_name: &str) -> &str {
    state_name
        .rsplit_once('.')
        .map_or(state_name, |(_, step)| step)
}

/// The step a state of the definition invokes: its handler's, or AwaitEvent for an
/// announced wait's callback state; None for states that invoke nothing.
pub fn step_of_state(state_name: &str) -> Option<StepSpec> {
    if is_await_state(state_name) {
        return Some(AWAIT_EVENT);
    }
    find(step_of(state_name))
}

/// Every step the definition invokes, once each, in first-use order.
pub fn all_steps() -> Vec<StepSpec> {
    let mut all = vec![PREPARE];
    all.extend(PIPELINE_BEFORE);
    for builder in BuilderType::ALL {
        all.extend(chain(builder).iter().copied());
    }
    all.push(AWAIT_EVENT);
    all.extend([ERROR_CLEANUP_PROVISION, CLEANUP, FINALIZE]);
    all.extend([PLAN_TESTS, JUDGE_TESTS, APPROVE]);
    all.extend(PIPELINE_AFTER);
    all.extend([WITHDRAW, NOTIFY]);
    let mut seen = std::collections::BTreeSet::new();
    all.retain(|s| seen.insert(s.name));
    all
}

/// The steps a build of `build` passes in a local run, in order: Prepare, its builder's
/// chain, ErrorCleanupProvision (which calls nothing without an
/// `error-cleanup-provisioner`), Cleanup (on success and after a failure) and Finalize.
/// `amiflow policy` grants what each calls for the build ([`StepSpec::local_calls`]).
pub fn local_path(build: &amiflow_template::PreparedBuild) -> Vec<StepSpec> {
    let mut path = vec![PREPARE];
    path.extend(chain(build.builder_type).iter().copied());
    if provisions(build.builder_type) && build.error_cleanup_provisioner.is_some() {
        path.push(ERROR_CLEANUP_PROVISION);
    }
    path.extend([CLEANUP, FINALIZE]);
    path
}

/// The pipelines' steps: a plain build (no `$.pipeline`) invokes none of them.
pub fn pipeline_steps() -> Vec<StepSpec> {
    let mut all = PIPELINE_BEFORE.to_vec();
    all.extend([PLAN_TESTS, JUDGE_TESTS, APPROVE]);
    all.extend(PIPELINE_AFTER);
    all.extend([WITHDRAW, NOTIFY]);
    all
}

/// Every handler, by name: the steps of the flows, and the janitor. The Lambda binary, the
/// local engine and `serve-lambdas` dispatch through it; the roles are made from it.
pub fn registry() -> Vec<StepSpec> {
    let mut all = all_steps();
    all.extend([JANITOR, DELIVER_EVENT, SCHEDULED_START]);
    all
}

/// The handler with this name.
pub fn find(name: &str) -> Option<StepSpec> {
    registry().into_iter().find(|s| s.name == name)
}

/// The policy a step's `NotReady` retry is rendered from, for steps that wait.
pub fn wait_policy(step: &StepSpec) -> Option<WaitPolicy> {
    step.wait.map(|w| w.policy)
}

/// Lambda service errors, retried as AWS recommends for Lambda tasks (with full jitter, so
/// throttled builds started together do not retry in step).
pub const LAMBDA_SERVICE_ERRORS: &[&str] = &[
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Lambda.ClientExecutionTimeoutException",
];

fn retriers(step: &StepSpec) -> Vec<Retrier> {
    let mut retry = Vec::new();
    if let Some(w) = wait_policy(step) {
        retry.push(Retrier {
            error_equals: vec!["NotReady".into()],
            interval_seconds: Some(w.interval_seconds.into()),
            max_attempts: Some(w.max_attempts),
            backoff_rate: Some(w.backoff_rate),
            max_delay_seconds: Some(w.max_delay_seconds.into()),
            jitter_strategy: None,
        });
    }
    retry.push(Retrier {
        error_equals: vec!["Transient".into()],
        interval_seconds: Some(2),
        max_attempts: Some(6),
        backoff_rate: Some(2.0),
        max_delay_seconds: Some(60),
        jitter_strategy: Some(JitterStrategy::Full),
    });
    retry.push(Retrier {
        error_equals: LAMBDA_SERVICE_ERRORS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        interval_seconds: Some(2),
        max_attempts: Some(6),
        backoff_rate: Some(2.0),
        max_delay_seconds: Some(60),
        jitter_strategy: Some(JitterStrategy::Full),
    });
    retry
}

fn resource(step: &StepSpec) -> String {
    format!("${{{}FunctionArn}}", step.name)
}

fn task(step: &StepSpec, next: Option<String>, catch: Vec<Catcher>) -> Task {
    Task {
        resource: resource(step),
        retry: retriers(step),
        catch,
        end: next.is_none().then_some(true),
        next,
        ..Task::default()
    }
}

fn catch_all_into_error(next: String) -> Vec<Catcher> {
    vec![Catcher {
        error_equals: vec!["States.ALL".into()],
        result_path: Some(Some("$.error".into())),
        next,
    }]
}

/// The wait of `step` when AWS announces it and the step is entered through
/// [`await_task`] (the step before it started the thing waited for).
fn announced(step: &StepSpec) -> Option<Wait> {
    step.wait
        .filter(|w| w.event.is_some_and(|e| e.entered_on.is_none()))
}

/// The wait of `step` when AWS announces it and the step starts the thing itself, failing
/// with this error: its Catch enters [`await_task`], which goes back to the step.
fn announced_after(step: &StepSpec) -> Option<(Wait, &'static str)> {
    let wait = step.wait?;
    Some((wait, wait.event?.entered_on?))
}

/// The handler-like name of the callback state awaiting `wait`'s event: `Await<Wait>`.
pub fn await_step_name(wait: &Wait) -> String {
    format!("Await{}", wait.name)
}

/// Whether `state_name` is an announced wait's callback state (`<prefix>.Await<Wait>`):
/// a local build passes through it at once, so its progress shows only the waiting step.
pub fn is_await_state(state_name: &str) -> bool {
    step_of(state_name)
        .strip_prefix("Await")
        .and_then(crate::waits::named)
        .is_some_and(|w| w.event.is_some())
}

/// The state a chain enters `step` by, named by `name`: its callback state when its wait
/// is announced, else its own.
fn entry(step: &StepSpec, name: &dyn Fn(&str) -> String) -> String {
    match announced(step) {
        Some(wait) => name(&await_step_name(&wait)),
        None => name(step.name),
    }
}

/// Adds `step`'s state (and before it its callback state, when its wait is announced).
fn add_chain_step(
    states: &mut States,
    step: &StepSpec,
    name: &dyn Fn(&str) -> String,
    next: Option<String>,
    catch: Vec<Catcher>,
) {
    if let Some(wait) = announced(step) {
        states.add(
            name(&await_step_name(&wait)),
            await_task(&wait, name(step.name)),
        );
    }
    if let Some((wait, _)) = announced_after(step) {
        states.add(
            name(&await_step_name(&wait)),
            await_task(&wait, name(step.name)),
        );
    }
    states.add(
        name(step.name),
        task(step, next, step_catch(step, name, catch)),
    );
}

/// `catch`, after the Catch that enters the step's callback state when it has just started
/// what it waits for ([`announced_after`]): first, as that is no failure.
fn step_catch(step: &StepSpec, name: &dyn Fn(&str) -> String, catch: Vec<Catcher>) -> Vec<Catcher> {
    let Some((wait, error)) = announced_after(step) else {
        return catch;
    };
    let mut all = vec![Catcher {
        error_equals: vec![error.into()],
        result_path: Some(None),
        next: name(&await_step_name(&wait)),
    }];
    all.extend(catch);
    all
}

/// The callback state before an announced wait's step: AwaitEvent gets the task token and
/// the build state, and EC2's event ends the state (steps/await_event.rs). Its result is
/// dropped (`ResultPath: null`); a timeout, like any failure, goes on to the waiting step
/// too, which polls: events are best-effort, and the waiting step has the last word.
fn await_task(wait: &Wait, waiting_state: String) -> Task {
    let event = wait.event.expect("await_task is for announced waits");
    Task {
        comment: Some(format!(
            "Deployed: waits for EC2's event on {} (at most {} s), then {} looks",
            wait.name, event.timeout_seconds, waiting_state
        )),
        resource: amiflow_statemachine::LAMBDA_CALLBACK.into(),
        parameters: Some(json!({
            "FunctionName": resource(&AWAIT_EVENT),
            "Payload": {"state.$": "$", "wait": wait.name, "token.$": "$$.Task.Token"}
        })),
        timeout_seconds: Some(event.timeout_seconds.into()),
        result_path: Some(None),
        retry: retriers(&AWAIT_EVENT),
        catch: vec![Catcher {
            error_equals: vec!["States.ALL".into()],
            result_path: Some(None),
            next: waiting_state.clone(),
        }],
        next: Some(waiting_state),
        ..Task::default()
    }
}

const BUILDER_CHOICE: &str = "BuilderType";
const UNSUPPORTED_BUILDER: &str = "UnsupportedBuilder";

/// The Map's iteration: choose the chain by builder type (and redrive mode), run it, clean up.
fn build_iteration() -> SubMachine {
    let mut states = States::new();
    let mut rules = Vec::new();
    for builder in BuilderType::ALL {
        let first = chain(builder)[0].name;
        let is_builder =
            || ChoiceRule::compare("$.build.builder_type", "StringEquals", builder.as_str());
        rules.push(
            ChoiceRule::and(vec![
                is_builder(),
                // A missing variable would be a runtime error in the Choice.
                ChoiceRule::compare("$.on_error", "IsPresent", true),
                ChoiceRule::compare("$.on_error", "StringEquals", REDRIVE),
            ])
            .then(redrive_state_name(builder, first)),
        );
        rules.push(is_builder().then(state_name(builder, first)));
    }
    states.add(
        BUILDER_CHOICE,
        Choice {
            choices: rules,
            default: Some(UNSUPPORTED_BUILDER.into()),
            ..Choice::default()
        },
    );
    states.add(
        UNSUPPORTED_BUILDER,
        Pass {
            comment: Some("Prepare accepts only the five Amazon builders; this keeps the Map from failing if one slips through".into()),
            result: Some(json!({"Error": "BuildFailed", "Cause": "this builder type has no flow in amiflow"})),
            result_path: Some(Some("$.error".into())),
            end: Some(true),
            ..Pass::default()
        },
    );
    for builder in BuilderType::ALL {
        let steps = chain(builder);
        let cleanup = state_name(builder, CLEANUP.name);
        let name = |step: &str| state_name(builder, step);
        for (i, step) in steps.iter().enumerate() {
            let next = entry(steps.get(i + 1).unwrap_or(&CLEANUP), &name);
            add_chain_step(
                &mut states,
                step,
                &name,
                Some(next),
                catch_all_into_error(on_failure(builder)),
            );
        }
        if provisions(builder) {
            let mut error_cleanup = task(
                &ERROR_CLEANUP_PROVISION,
                Some(cleanup.clone()),
                vec![Catcher {
                    error_equals: vec!["States.ALL".into()],
                    // Keep the build's own error in $.error: that is what failed the build.
                    result_path: Some(None),
                    next: cleanup.clone(),
                }],
            );
            error_cleanup.comment = Some(
                "Only after a failed step: the template's error-cleanup-provisioner, then Cleanup whatever it does".into(),
            );
            states.add(on_failure(builder), error_cleanup);
        }
        let cleanup_failed = state_name(builder, "CleanupFailed");
        let mut cleanup_task = task(&CLEANUP, None, catch_all_into_error(cleanup_failed.clone()));
        cleanup_task.comment =
            Some("Runs on success and on failure; ends the iteration so other builds go on".into());
        states.add(cleanup, cleanup_task);
        states.add(
            cleanup_failed,
            Pass {
                comment: Some("Cleanup's error is in $.error: Finalize reports the build failed; the janitor sweeps what is left by tag".into()),
                end: Some(true),
                ..Pass::default()
            },
        );
        // The redrive chain: the same steps and retries, no Catch.
        let redrive_chain: Vec<&StepSpec> = steps.iter().chain([&CLEANUP]).collect();
        let redrive_name = |step: &str| redrive_state_name(builder, step);
        for (i, step) in redrive_chain.iter().enumerate() {
            let next = redrive_chain.get(i + 1).map(|s| entry(s, &redrive_name));
            if i == 0 {
                // The builder Choice enters here (no chain starts with a wait).
                let mut redrivable = task(step, next, Vec::new());
                redrivable.comment = Some("on_error=redrive: a failure fails the execution here, resources kept, for RedriveExecution to resume".into());
                states.add(redrive_name(step.name), redrivable);
            } else {
                add_chain_step(&mut states, step, &redrive_name, next, Vec::new());
            }
        }
    }
    SubMachine {
        comment: None,
        processor_config: Some(json!({"Mode": "INLINE"})),
        start_at: BUILDER_CHOICE.into(),
        states,
    }
}

pub const TEMPLATE_INVALID: &str = "TemplateInvalid";
pub const HAS_PIPELINE: &str = "HasPipeline";
/// Where Prepare, Fingerprint and Finalize carry a pipeline's state; absent without one.
const PIPELINE_PATH: &str = "$.pipeline";
/// Where a failed Publish or Retain leaves its error for Notify.
const PIPELINE_ERROR_PATH: &str = "$.pipeline_error";
pub const BUILDS: &str = "Builds";
pub const ANY_BUILD_FAILED: &str = "AnyBuildFailed";
pub const BUILD_FAILED: &str = "BuildFailed";
pub const SUCCEEDED: &str = "Succeeded";
/// After Notify: the run failed (Notify's output has a `cause`) or succeeded.
pub const RUN_FAILED: &str = "RunFailed";
/// After a successful build of a pipeline: the test stage first when it has `test`.
pub const NEEDS_TEST: &str = "NeedsTest";
/// The test stage's Map: one iteration per test build ([`TEST_CHAIN`], then Cleanup).
pub const TESTS: &str = "Tests";
/// The state-name prefix of the test chain's states (`test.RunSourceInstance`).
pub const TEST_PREFIX: &str = "test";
/// After the tests (or without any): Approve first when the pipeline has `approval`.
pub const NEEDS_APPROVAL: &str = "NeedsApproval";
const APPROVAL_SECONDS_PATH: &str = "$.pipeline.approval_seconds";

/// A pipeline state's Catch when its failure means the new images must not stay: the error
/// rides along as `$.pipeline_error` to Withdraw, then Notify.
fn into_withdraw() -> Vec<Catcher> {
    vec![Catcher {
        error_equals: vec!["States.ALL".into()],
        result_path: Some(Some(PIPELINE_ERROR_PATH.into())),
        next: WITHDRAW.name.into(),
    }]
}

/// Approve as a callback Task: the function gets the task token with the run's output, and
/// the state waits (at most the pipeline's `approval.timeout`) for the answer, kept at
/// `$.approval`. Not approving, in any way, is caught into Withdraw.
fn approve_task() -> Task {
    Task {
        resource: amiflow_statemachine::LAMBDA_CALLBACK.into(),
        parameters: Some(json!({
            "FunctionName": resource(&APPROVE),
            "Payload": {"output.$": "$", "token.$": "$$.Task.Token", "execution.$": "$$.Execution.Name"}
        })),
        timeout_seconds_path: Some(APPROVAL_SECONDS_PATH.into()),
        result_path: Some(Some("$.approval".into())),
        retry: retriers(&APPROVE),
        catch: into_withdraw(),
        next: Some(PIPELINE_AFTER[0].name.into()),
        ..Task::default()
    }
}

/// The state name of `step` in the test chain: `test.<Step>`.
pub fn test_state_name(step: &str) -> String {
    format!("{TEST_PREFIX}.{step}")
}

/// The test Map's iteration: [`TEST_CHAIN`], each step caught into the test's Cleanup, as a
/// build's chain is (no error-cleanup-provisioner: a test has none).
fn test_iteration() -> SubMachine {
    let mut states = States::new();
    let cleanup = test_state_name(CLEANUP.name);
    let name = |step: &str| test_state_name(step);
    for (i, step) in TEST_CHAIN.iter().enumerate() {
        let next = entry(TEST_CHAIN.get(i + 1).unwrap_or(&CLEANUP), &name);
        add_chain_step(
            &mut states,
            step,
            &name,
            Some(next),
            catch_all_into_error(cleanup.clone()),
        );
    }
    let cleanup_failed = test_state_name("CleanupFailed");
    states.add(
        cleanup,
        task(&CLEANUP, None, catch_all_into_error(cleanup_failed.clone())),
    );
    states.add(
        cleanup_failed,
        Pass {
            comment: Some("Cleanup's error is in $.error: JudgeTests fails the test; the janitor sweeps what is left by tag".into()),
            end: Some(true),
            ..Pass::default()
        },
    );
    SubMachine {
        comment: None,
        processor_config: Some(json!({"Mode": "INLINE"})),
        start_at: entry(&TEST_CHAIN[0], &name),
        states,
    }
}

/// The whole definition.
pub fn definition() -> StateMachine {
    let mut states = States::new();
    let mut prepare = task(
        &PREPARE,
        Some(HAS_PIPELINE.into()),
        vec![Catcher {
            error_equals: vec!["InvalidTemplate".into()],
            result_path: None,
            next: TEMPLATE_INVALID.into(),
        }],
    );
    prepare.parameters = Some(json!({
        "input.$": "$", "execution.$": "$$.Execution.Name", "state_machine.$": "$$.StateMachine.Name"
    }));
    states.add(PREPARE.name, prepare);
    states.add(
        HAS_PIPELINE,
        Choice {
            choices: vec![
                ChoiceRule::compare(PIPELINE_PATH, "IsPresent", true).then(PIPELINE_BEFORE[0].name)
            ],
            default: Some(BUILDS.into()),
            ..Choice::default()
        },
    );
    for (i, step) in PIPELINE_BEFORE.iter().enumerate() {
        let next = PIPELINE_BEFORE.get(i + 1).map_or(BUILDS, |s| s.name);
        states.add(step.name, task(step, Some(next.into()), Vec::new()));
    }
    states.add(
        TEMPLATE_INVALID,
        Fail {
            comment: Some(
                "Prepare lists every problem of the template; nothing was created".into(),
            ),
            error: Some("InvalidTemplate".into()),
            cause_path: Some("$.Cause".into()),
            ..Fail::default()
        },
    );
    states.add(
        BUILDS,
        MapState {
            comment: Some(
                "One iteration per build; an iteration records its error instead of failing".into(),
            ),
            input_path: None,
            items_path: Some("$.builds".into()),
            item_selector: None,
            parameters: None,
            // 0 = unlimited; the deployed definition substitutes the stack's parameter.
            max_concurrency: Some(0),
            item_processor: Some(build_iteration()),
            iterator: None,
            result_selector: None,
            result_path: Some(Some("$.builds".into())),
            output_path: None,
            retry: Vec::new(),
            catch: Vec::new(),
            next: Some(FINALIZE.name.into()),
            end: None,
        },
    );
    states.add(
        FINALIZE.name,
        task(&FINALIZE, Some(ANY_BUILD_FAILED.into()), Vec::new()),
    );
    states.add(
        ANY_BUILD_FAILED,
        Choice {
            choices: vec![
                // A failed pipeline run is announced before the execution fails.
                ChoiceRule::and(vec![
                    ChoiceRule::compare("$.failed", "NumericGreaterThan", 0),
                    ChoiceRule::compare(PIPELINE_PATH, "IsPresent", true),
                ])
                .then(NOTIFY.name),
                ChoiceRule::compare("$.failed", "NumericGreaterThan", 0).then(BUILD_FAILED),
                ChoiceRule::compare(PIPELINE_PATH, "IsPresent", true).then(NEEDS_TEST),
            ],
            default: Some(SUCCEEDED.into()),
            ..Choice::default()
        },
    );
    states.add(
        NEEDS_TEST,
        Choice {
            choices: vec![ChoiceRule::and(vec![
                ChoiceRule::compare("$.pipeline.test_build", "IsPresent", true),
                // An up-to-date run built nothing to test.
                ChoiceRule::compare("$.pipeline.status", "StringEquals", "building"),
            ])
            .then(PLAN_TESTS.name)],
            default: Some(NEEDS_APPROVAL.into()),
            ..Choice::default()
        },
    );
    let mut plan_tests = task(&PLAN_TESTS, Some(TESTS.into()), into_withdraw());
    plan_tests.parameters = Some(json!({
        "output.$": "$", "execution.$": "$$.Execution.Name", "state_machine.$": "$$.StateMachine.Name"
    }));
    states.add(PLAN_TESTS.name, plan_tests);
    states.add(
        TESTS,
        MapState {
            comment: Some(
                "The test stage: an instance of the new image runs the test provisioners; an iteration records its error instead of failing".into(),
            ),
            input_path: None,
            items_path: Some("$.tests".into()),
            item_selector: None,
            parameters: None,
            // One test build per run; the builds Map's limit is the stack's to set.
            max_concurrency: None,
            item_processor: Some(test_iteration()),
            iterator: None,
            result_selector: None,
            result_path: Some(Some("$.tests".into())),
            output_path: None,
            retry: Vec::new(),
            catch: Vec::new(),
            next: Some(JUDGE_TESTS.name.into()),
            end: None,
        },
    );
    states.add(
        JUDGE_TESTS.name,
        task(&JUDGE_TESTS, Some(NEEDS_APPROVAL.into()), into_withdraw()),
    );
    states.add(
        NEEDS_APPROVAL,
        Choice {
            choices: vec![ChoiceRule::and(vec![
                ChoiceRule::compare(APPROVAL_SECONDS_PATH, "IsPresent", true),
                // An up-to-date run built nothing to approve.
                ChoiceRule::compare("$.pipeline.status", "StringEquals", "building"),
            ])
            .then(APPROVE.name)],
            default: Some(PIPELINE_AFTER[0].name.into()),
            ..Choice::default()
        },
    );
    states.add(APPROVE.name, approve_task());
    let mut withdraw = task(
        &WITHDRAW,
        Some(NOTIFY.name.into()),
        vec![Catcher {
            error_equals: vec!["States.ALL".into()],
            result_path: Some(Some(PIPELINE_ERROR_PATH.into())),
            next: NOTIFY.name.into(),
        }],
    );
    withdraw.parameters = Some(json!({"output.$": "$", "execution.$": "$$.Execution.Name"}));
    states.add(WITHDRAW.name, withdraw);
    for (i, step) in PIPELINE_AFTER.iter().enumerate() {
        let next = PIPELINE_AFTER.get(i + 1).map_or(NOTIFY.name, |s| s.name);
        // A failed Publish or Retain is announced too: its error rides along to Notify.
        let catch = vec![Catcher {
            error_equals: vec!["States.ALL".into()],
            result_path: Some(Some(PIPELINE_ERROR_PATH.into())),
            next: NOTIFY.name.into(),
        }];
        states.add(step.name, task(step, Some(next.into()), catch));
    }
    let mut notify = task(&NOTIFY, Some(RUN_FAILED.into()), Vec::new());
    notify.parameters = Some(json!({
        "output.$": "$", "execution.$": "$$.Execution.Name", "started.$": "$$.Execution.StartTime"
    }));
    states.add(NOTIFY.name, notify);
    states.add(
        RUN_FAILED,
        Choice {
            choices: vec![ChoiceRule::compare("$.cause", "IsPresent", true).then(BUILD_FAILED)],
            default: Some(SUCCEEDED.into()),
            ..Choice::default()
        },
    );
    states.add(
        BUILD_FAILED,
        Fail {
            comment: Some("Finalize's cause: one line per failed build".into()),
            error: Some("BuildFailed".into()),
            cause_path: Some("$.cause".into()),
            ..Fail::default()
        },
    );
    states.add(SUCCEEDED, Succeed::default());
    StateMachine {
        comment: Some("amiflow: Packer's Amazon builders as a workflow. Generated by functions/amiflow/src/flows.rs; do not edit.".into()),
        start_at: PREPARE.name.into(),
        timeout_seconds: None,
        states,
    }
}

/// The definition as committed in `statemachine/amiflow.asl.json`.
pub fn render() -> String {
    definition().to_json_pretty()
}

/// Where the rendered definition is committed.
pub fn committed_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../statemachine/amiflow.asl.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use amiflow_statemachine::{State, Transition};

    #[test]
    fn committed_definition_is_up_to_date() {
        let rendered = render();
        let path = committed_path();
        if std::env::var_os("AMIFLOW_UPDATE_ASL").is_some() {
            std::fs::write(&path, &rendered).unwrap();
            eprintln!("rewrote {}", path.display());
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == rendered,
            "{} is out of date with flows.rs: run `AMIFLOW_UPDATE_ASL=1 cargo test --workspace committed_definition_is_up_to_date` and commit it",
            path.display()
        );
        // And it parses back to the same model.
        assert_eq!(StateMachine::from_json(&committed).unwrap(), definition());
    }

    #[test]
    fn every_chain_step_has_catch_to_its_cleanup_and_the_retries() {
        let def = definition();
        def.check().unwrap();
        let Some(State::Map(map)) = def.states.get(BUILDS) else {
            panic!("no Map")
        };
        let inner = &map.processor().unwrap().states;
        for builder in BuilderType::ALL {
            let cleanup = state_name(builder, CLEANUP.name);
            let steps = chain(builder);
            for (i, step) in steps.iter().enumerate() {
                let name = state_name(builder, step.name);
                let Some(State::Task(t)) = inner.get(&name) else {
                    panic!("{name} is not a Task")
                };
                assert_eq!(t.resource, format!("${{{}FunctionArn}}", step.name));
                assert_eq!(
                    t.catch,
                    step_catch(
                        step,
                        &|s| state_name(builder, s),
                        catch_all_into_error(on_failure(builder))
                    ),
                    "{name}"
                );
                assert_eq!(
                    t.catch.last(),
                    catch_all_into_error(on_failure(builder)).last(),
                    "{name}: every failure goes to the build's cleanup"
                );
                let expect_next = entry(steps.get(i + 1).unwrap_or(&CLEANUP), &|s| {
                    state_name(builder, s)
                });
                assert_eq!(
                    State::Task(t.clone()).transition(),
                    Some(Transition::Next(&expect_next))
                );
                let names: Vec<&str> = t.retry.iter().map(|r| r.error_equals[0].as_str()).collect();
                let transient = t
                    .retry
                    .iter()
                    .find(|r| r.error_equals == ["Transient"])
                    .unwrap();
                assert_eq!(transient.jitter_strategy, Some(JitterStrategy::Full));
                assert!(names.contains(&"Lambda.ServiceException"), "{name}");
                assert_eq!(
                    names.contains(&"NotReady"),
                    wait_policy(step).is_some(),
                    "{name}"
                );
            }
            if provisions(builder) {
                let name = on_failure(builder);
                let Some(State::Task(t)) = inner.get(&name) else {
                    panic!("{name} is not a Task")
                };
                assert_eq!(
                    State::Task(t.clone()).transition(),
                    Some(Transition::Next(&cleanup))
                );
                assert_eq!(t.catch.len(), 1);
                assert_eq!(t.catch[0].next, cleanup, "its own failure still cleans up");
                assert_eq!(
                    t.catch[0].result_path,
                    Some(None),
                    "the build's error stays in $.error"
                );
            } else {
                assert_eq!(on_failure(builder), cleanup);
            }
            let Some(State::Task(c)) = inner.get(&cleanup) else {
                panic!("no {cleanup}")
            };
            assert_eq!(c.end, Some(true));
            assert!(
                c.retry.iter().any(|r| r.error_equals == ["NotReady"]),
                "Cleanup retries NotReady while things terminate"
            );
        }
    }

    #[test]
    fn announced_waits_are_awaited_before_they_are_polled_and_fall_back_to_polling() {
        let def = definition();
        let Some(State::Map(map)) = def.states.get(BUILDS) else {
            panic!("no Map")
        };
        let inner = &map.processor().unwrap().states;
        let mut awaited = Vec::new();
        for builder in BuilderType::ALL {
            for namer in [
                &(|s: &str| state_name(builder, s)) as &dyn Fn(&str) -> String,
                &|s: &str| redrive_state_name(builder, s),
            ] {
                let steps = chain(builder);
                for (i, step) in steps.iter().enumerate() {
                    let Some(wait) = step.wait.filter(|w| w.event.is_some()) else {
                        continue;
                    };
                    let event = wait.event.unwrap();
                    let name = namer(&format!("Await{}", wait.name));
                    let Some(State::Task(t)) = inner.get(&name) else {
                        panic!("{name}: an announced wait has its callback state")
                    };
                    let waiting = namer(step.name);
                    assert_eq!(t.resource, amiflow_statemachine::LAMBDA_CALLBACK);
                    assert_eq!(
                        t.parameters.as_ref().unwrap()["FunctionName"],
                        "${AwaitEventFunctionArn}"
                    );
                    assert_eq!(t.parameters.as_ref().unwrap()["Payload"]["wait"], wait.name);
                    assert_eq!(t.timeout_seconds, Some(u64::from(event.timeout_seconds)));
                    assert_eq!(
                        t.result_path,
                        Some(None),
                        "{name}: the build state goes on unchanged"
                    );
                    assert_eq!(t.next.as_deref(), Some(waiting.as_str()));
                    assert_eq!(t.catch.len(), 1);
                    assert_eq!(t.catch[0].error_equals, ["States.ALL"]);
                    assert_eq!(t.catch[0].next, waiting, "{name}: a timeout polls");
                    assert_eq!(t.catch[0].result_path, Some(None));
                    if let Some(error) = event.entered_on {
                        // The step enters it when it has started the thing (its first
                        // Catch), and is entered again after it: a loop.
                        let Some(State::Task(step_state)) = inner.get(&waiting) else {
                            panic!("no {waiting}")
                        };
                        assert_eq!(step_state.catch[0].error_equals, [error], "{waiting}");
                        assert_eq!(step_state.catch[0].next, name, "{waiting}");
                        assert_eq!(step_state.catch[0].result_path, Some(None), "{waiting}");
                        assert!(
                            step_state
                                .retry
                                .iter()
                                .any(|r| r.error_equals == ["NotReady"]),
                            "{waiting}: a look that finds it still running polls"
                        );
                    } else {
                        // The step before enters through it.
                        let Some(State::Task(before)) = inner.get(&namer(steps[i - 1].name)) else {
                            panic!("no step before {name}")
                        };
                        assert_eq!(before.next.as_deref(), Some(name.as_str()));
                    }
                    awaited.push(name);
                }
            }
        }
        // Instance running and stopped, the image: in the chains that have them.
        for name in [
            "amazon-ebs.AwaitInstanceRunning",
            "amazon-ebs.AwaitInstanceStopped",
            "amazon-ebs.AwaitImageAvailable",
            "amazon-chroot.AwaitImageAvailable",
            "amazon-ebsvolume.redrive.AwaitInstanceStopped",
            "amazon-ebs.AwaitProvision",
            "amazon-instance.redrive.AwaitProvision",
        ] {
            assert!(awaited.iter().any(|a| a == name), "{name} missing");
        }
        assert!(
            !inner
                .names()
                .any(|n| n.contains("AwaitVolume") || n.contains("AwaitConnect")),
            "only announced waits are awaited"
        );
        assert!(awaited.iter().all(|a| is_await_state(a)));
        assert!(!is_await_state("amazon-ebs.WaitInstanceRunning"));
        assert!(!is_await_state("amazon-ebs.AwaitConnect"));
    }

    #[test]
    fn every_builder_has_a_redrive_chain_without_catch_with_the_same_retries() {
        let def = definition();
        let Some(State::Map(map)) = def.states.get(BUILDS) else {
            panic!("no Map")
        };
        assert_eq!(map.max_concurrency, Some(0), "infra.rs substitutes it");
        let inner = &map.processor().unwrap().states;
        for builder in BuilderType::ALL {
            let steps: Vec<&StepSpec> = chain(builder).iter().chain([&CLEANUP]).collect();
            for (i, step) in steps.iter().enumerate() {
                let name = redrive_state_name(builder, step.name);
                let Some(State::Task(t)) = inner.get(&name) else {
                    panic!("{name} is not a Task")
                };
                assert!(
                    t.catch.iter().all(|c| c
                        .error_equals
                        .iter()
                        .all(|e| e == crate::error::COMMAND_SENT)),
                    "{name} must not catch a failure"
                );
                let Some(State::Task(caught)) = inner.get(&state_name(builder, step.name)) else {
                    panic!("no catching twin of {name}")
                };
                assert_eq!(t.retry, caught.retry, "{name}");
                assert_eq!(t.resource, caught.resource, "{name}");
                match steps.get(i + 1) {
                    Some(next) => assert_eq!(
                        State::Task(t.clone()).transition(),
                        Some(Transition::Next(&entry(next, &|s| redrive_state_name(
                            builder, s
                        ))))
                    ),
                    None => assert_eq!(t.end, Some(true), "{name} ends the iteration"),
                }
            }
        }
    }

    #[test]
    fn pipeline_states_run_before_the_builds_and_after_their_success_only() {
        let def = definition();
        let next = |name: &str| match def.states.get(name) {
            Some(State::Task(t)) => t.next.clone(),
            other => panic!("{name} is not a Task: {other:?}"),
        };
        let choice = |name: &str| match def.states.get(name) {
            Some(State::Choice(c)) => c.clone(),
            other => panic!("{name} is not a Choice: {other:?}"),
        };
        assert_eq!(next(PREPARE.name).as_deref(), Some(HAS_PIPELINE));
        let has = choice(HAS_PIPELINE);
        assert_eq!(
            has.default.as_deref(),
            Some(BUILDS),
            "a plain build skips Fingerprint"
        );
        assert_eq!(has.choices.len(), 1);
        assert_eq!(has.choices[0].next.as_deref(), Some("Fingerprint"));
        assert_eq!(next("Fingerprint").as_deref(), Some(BUILDS));
        let any = choice(ANY_BUILD_FAILED);
        let nexts: Vec<Option<&str>> = any.choices.iter().map(|r| r.next.as_deref()).collect();
        assert_eq!(
            nexts,
            [Some("Notify"), Some(BUILD_FAILED), Some(NEEDS_TEST)],
            "a failure never publishes: a pipeline's is announced, a plain build's fails at once"
        );
        // The test stage only when asked for and something was built; it comes before
        // approval, and a failed test withdraws the images.
        let test = choice(NEEDS_TEST);
        assert_eq!(test.choices[0].next.as_deref(), Some("PlanTests"));
        assert_eq!(test.default.as_deref(), Some(NEEDS_APPROVAL));
        assert_eq!(next("PlanTests").as_deref(), Some(TESTS));
        assert_eq!(next("JudgeTests").as_deref(), Some(NEEDS_APPROVAL));
        for judged in ["PlanTests", "JudgeTests"] {
            let Some(State::Task(t)) = def.states.get(judged) else {
                panic!("{judged} is a Task")
            };
            assert_eq!(t.catch[0].next, "Withdraw", "{judged}'s failure withdraws");
        }
        let Some(State::Map(tests)) = def.states.get(TESTS) else {
            panic!("Tests is a Map")
        };
        assert_eq!(tests.next.as_deref(), Some("JudgeTests"));
        assert!(
            tests.catch.is_empty(),
            "an iteration never fails: it cleans up"
        );
        let inner = &tests.processor().unwrap().states;
        let cleanup = test_state_name(CLEANUP.name);
        for (i, step) in TEST_CHAIN.iter().enumerate() {
            let Some(State::Task(t)) = inner.get(&test_state_name(step.name)) else {
                panic!("{} is a Task of the test chain", step.name)
            };
            assert_eq!(
                t.catch,
                step_catch(
                    step,
                    &test_state_name,
                    catch_all_into_error(cleanup.clone())
                ),
                "{}",
                step.name
            );
            let want = TEST_CHAIN
                .get(i + 1)
                .map_or(cleanup.clone(), |s| entry(s, &test_state_name));
            assert_eq!(t.next.as_deref(), Some(want.as_str()));
        }
        // Approval only when asked for and something was built; never publish around it.
        let needs = choice(NEEDS_APPROVAL);
        assert_eq!(needs.choices[0].next.as_deref(), Some("Approve"));
        assert_eq!(needs.default.as_deref(), Some("Publish"));
        let Some(State::Task(approve)) = def.states.get("Approve") else {
            panic!("Approve is a Task")
        };
        assert_eq!(approve.resource, amiflow_statemachine::LAMBDA_CALLBACK);
        assert_eq!(
            approve.parameters.as_ref().unwrap()["Payload"]["token.$"],
            "$$.Task.Token"
        );
        assert_eq!(
            approve.timeout_seconds_path.as_deref(),
            Some(APPROVAL_SECONDS_PATH)
        );
        assert_eq!(approve.next.as_deref(), Some("Publish"));
        assert_eq!(
            (
                approve.catch.len(),
                approve.catch[0].error_equals.as_slice(),
                approve.catch[0].next.as_str()
            ),
            (1, ["States.ALL".to_string()].as_slice(), "Withdraw"),
            "every way of not approving withdraws the images"
        );
        assert_eq!(next("Withdraw").as_deref(), Some("Notify"));
        assert_eq!(
            any.default.as_deref(),
            Some(SUCCEEDED),
            "a plain build ends"
        );
        assert_eq!(next("Publish").as_deref(), Some("Retain"));
        assert_eq!(next("Retain").as_deref(), Some("Notify"));
        for after in PIPELINE_AFTER {
            let Some(State::Task(t)) = def.states.get(after.name) else {
                panic!()
            };
            assert_eq!(
                t.catch[0].next, "Notify",
                "{}'s failure is announced",
                after.name
            );
        }
        assert_eq!(next("Notify").as_deref(), Some(RUN_FAILED));
        let ended = choice(RUN_FAILED);
        assert_eq!(ended.choices[0].next.as_deref(), Some(BUILD_FAILED));
        assert_eq!(ended.default.as_deref(), Some(SUCCEEDED));
        for step in pipeline_steps() {
            assert!(find(step.name).is_some(), "{} is registered", step.name);
        }
    }

    #[test]
    fn lambda_errors_are_retried_with_jitter_including_client_timeouts() {
        let retry = retriers(&CLEANUP);
        let lambda = retry
            .iter()
            .find(|r| {
                r.error_equals
                    .iter()
                    .any(|e| e == "Lambda.ServiceException")
            })
            .unwrap();
        assert!(lambda
            .error_equals
            .contains(&"Lambda.ClientExecutionTimeoutException".to_string()));
        assert_eq!(lambda.jitter_strategy, Some(JitterStrategy::Full));
    }

    #[test]
    fn wait_budgets_are_at_least_packers() {
        let budget = |s: &StepSpec| {
            wait_policy(s)
                .unwrap_or_else(|| panic!("{} has no wait policy", s.name))
                .budget_seconds()
        };
        for s in [
            wait_image_available::SPEC,
            wait_copies_available::SPEC,
            wait_snapshots_completed::SPEC,
        ] {
            assert!(
                budget(&s) >= 1800.0,
                "{}: {} s < 30 min",
                s.name,
                budget(&s)
            );
        }
        for s in [
            wait_instance_running::SPEC,
            wait_instance_stopped::SPEC,
            CLEANUP,
        ] {
            assert!(budget(&s) >= 600.0, "{}: {} s < 10 min", s.name, budget(&s));
        }
        for s in [
            wait_volume_available::SPEC,
            wait_volume_attached::SPEC,
            wait_volume_detached::SPEC,
        ] {
            assert!(
                budget(&s) >= 200.0,
                "{}: {} s < Packer's 5 s × 40",
                s.name,
                budget(&s)
            );
        }
        for s in all_steps() {
            if s.name.starts_with("Wait") {
                assert!(
                    wait_policy(&s).is_some(),
                    "{} waits but has no policy",
                    s.name
                );
            }
        }
    }

    #[test]
    fn the_registry_is_the_flows_steps_and_the_janitor() {
        let names: Vec<&str> = registry().iter().map(|s| s.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a handler is registered twice");
        for builder in BuilderType::ALL {
            for step in chain(builder) {
                assert_eq!(find(step.name).map(|s| s.name), Some(step.name));
            }
        }
        assert!(find("Janitor").is_some() && find("Nope").is_none());
    }

    #[test]
    fn state_names_are_unique_and_short_enough() {
        let def = definition();
        let mut names: Vec<String> = def.states.names().map(String::from).collect();
        let Some(State::Map(map)) = def.states.get(BUILDS) else {
            panic!()
        };
        names.extend(map.processor().unwrap().states.names().map(String::from));
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate state names");
        assert!(
            names.iter().all(|n| n.chars().count() <= 80),
            "Step Functions allows 80 characters"
        );
        assert_eq!(step_of("amazon-ebs.CreateImage"), "CreateImage");
    }

    /// The rendered flow run by the local engine with scripted steps: two builds, one of
    /// which fails mid-chain; both clean up, Finalize sees both, the execution fails with
    /// Finalize's cause.
    mod run {
        use std::sync::{Arc, Mutex};

        use amiflow_statemachine::{
            resource_name, Engine, Event, TaskError, TaskInvoker, VirtualClock,
        };
        use serde_json::{json, Value};

        use super::super::*;

        #[derive(Default)]
        struct Scripted {
            calls: Mutex<Vec<(String, String)>>,
            polls: Mutex<u32>,
        }

        impl TaskInvoker for Scripted {
            async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
                let step = resource_name(resource).to_string();
                let build = input
                    .pointer("/build/name")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string();
                self.calls
                    .lock()
                    .unwrap()
                    .push((build.clone(), step.clone()));
                match step.as_str() {
                    "Prepare" => {
                        if input.pointer("/input/bad") == Some(&json!(true)) {
                            return Err(TaskError::new(
                                "InvalidTemplate",
                                "builders[0].region: required",
                            ));
                        }
                        let exec = input["execution"].clone();
                        let on_error = input
                            .pointer("/input/on_error")
                            .cloned()
                            .unwrap_or(json!("cleanup"));
                        Ok(json!({"builds": [
                            {"execution": exec, "on_error": on_error, "build": {"name": "good", "builder_type": "amazon-ebs"}},
                            {"execution": exec, "on_error": on_error, "build": {"name": "bad", "builder_type": "amazon-ebs"}}
                        ]}))
                    }
                    "WaitImageAvailable" if build == "good" => {
                        let mut polls = self.polls.lock().unwrap();
                        *polls += 1;
                        if *polls <= 3 {
                            Err(TaskError::new("NotReady", "ami-1 is pending"))
                        } else {
                            Ok(input)
                        }
                    }
                    "CreateImage" if build == "bad" => Err(TaskError::new(
                        "BuildFailed",
                        "CreateImage: InvalidParameter",
                    )),
                    "Finalize" => {
                        let builds = input["builds"].as_array().unwrap();
                        let failed: Vec<String> = builds
                            .iter()
                            .filter(|b| b.get("error").is_some())
                            .map(|b| {
                                format!(
                                    "{}: {}",
                                    b["build"]["name"].as_str().unwrap(),
                                    b["error"]["Cause"].as_str().unwrap()
                                )
                            })
                            .collect();
                        Ok(
                            json!({"builds": builds.len(), "failed": failed.len(), "cause": failed.join("\n")}),
                        )
                    }
                    _ => Ok(input),
                }
            }
        }

        #[tokio::test]
        async fn one_failing_build_cleans_up_both_and_fails_the_execution_with_a_readable_cause() {
            let script = Arc::new(Scripted::default());
            let clock = VirtualClock::default();
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink = events.clone();
            let engine = Engine::from_arc(script.clone())
                .with_clock(clock.clone())
                .on_event(move |e| sink.lock().unwrap().push(e.clone()));
            let def = StateMachine::from_json(&render()).unwrap();
            let err = engine
                .run(&def, "exec-7", json!({"template": {}}))
                .await
                .unwrap_err();
            assert_eq!(err.error, "BuildFailed");
            assert_eq!(err.cause, "bad: CreateImage: InvalidParameter");

            let calls = script.calls.lock().unwrap().clone();
            let of = |b: &str| {
                calls
                    .iter()
                    .filter(|(n, _)| n == b)
                    .map(|(_, s)| s.as_str())
                    .collect::<Vec<_>>()
            };
            let mut good_expected: Vec<&str> = chain_names(BuilderType::Ebs);
            let wait_at = good_expected
                .iter()
                .position(|s| *s == "WaitImageAvailable")
                .unwrap();
            for _ in 0..3 {
                good_expected.insert(wait_at, "WaitImageAvailable");
            }
            good_expected.push(CLEANUP.name);
            assert_eq!(of("good"), good_expected);
            let ebs = chain_names(BuilderType::Ebs);
            let create_at = ebs.iter().position(|s| *s == "CreateImage").unwrap();
            let mut bad_expected: Vec<&str> = ebs[..=create_at].to_vec();
            bad_expected.push(ERROR_CLEANUP_PROVISION.name);
            bad_expected.push(CLEANUP.name);
            assert_eq!(
                of("bad"),
                bad_expected,
                "the failed build goes through its error cleanup to its Cleanup"
            );
            assert_eq!(calls.last().unwrap().1, "Finalize");

            // The image wait polled on its NotReady policy: 5 s, 7.5 s, 11.25 s.
            let delays: Vec<f64> = clock.delays().iter().map(|d| d.as_secs_f64()).collect();
            assert_eq!(delays, vec![5.0, 7.5, 11.25]);
            let events = events.lock().unwrap();
            assert!(events.iter().any(|e| matches!(e, Event::Caught { name, error, next, scope }
                if name == "amazon-ebs.CreateImage" && error == "BuildFailed" && next == "amazon-ebs.ErrorCleanupProvision" && scope[0].index == 1)));
            assert!(events
                .iter()
                .any(|e| matches!(e, Event::StateEntered { name, .. } if name == BUILD_FAILED)));
        }

        /// Redrive mode: the failed step fails the execution where it stands, nothing is
        /// caught, no Cleanup or Finalize runs: RedriveExecution can resume at that step.
        #[tokio::test]
        async fn in_redrive_mode_a_failing_step_fails_the_execution_at_that_step() {
            let script = Arc::new(Scripted::default());
            let events = Arc::new(Mutex::new(Vec::new()));
            let sink = events.clone();
            let engine = Engine::from_arc(script.clone())
                .with_clock(VirtualClock::default())
                .on_event(move |e| sink.lock().unwrap().push(e.clone()));
            let def = StateMachine::from_json(&render()).unwrap();
            let err = engine
                .run(
                    &def,
                    "exec-8",
                    json!({"template": {}, "on_error": "redrive"}),
                )
                .await
                .unwrap_err();
            assert_eq!(err.error, "BuildFailed");
            assert_eq!(err.cause, "CreateImage: InvalidParameter");
            let calls = script.calls.lock().unwrap().clone();
            let bad: Vec<&str> = calls
                .iter()
                .filter(|(n, _)| n == "bad")
                .map(|(_, s)| s.as_str())
                .collect();
            let ebs = chain_names(BuilderType::Ebs);
            let create_at = ebs.iter().position(|s| *s == "CreateImage").unwrap();
            assert_eq!(
                bad,
                ebs[..=create_at].to_vec(),
                "no Cleanup after the failure"
            );
            assert!(calls.iter().all(|(_, s)| s != "Finalize"));
            let events = events.lock().unwrap();
            assert!(
                !events.iter().any(|e| matches!(e, Event::Caught { .. })),
                "nothing is caught in redrive mode"
            );
            assert!(events
                .iter()
                .any(|e| matches!(e, Event::StateEntered { name, .. }
                if name == &redrive_state_name(BuilderType::Ebs, "CreateImage"))));
        }

        #[tokio::test]
        async fn an_invalid_template_fails_at_once_without_any_build_step() {
            let script = Arc::new(Scripted::default());
            let engine = Engine::from_arc(script.clone()).with_clock(VirtualClock::default());
            let def = StateMachine::from_json(&render()).unwrap();
            let err = engine
                .run(&def, "exec-8", json!({"bad": true}))
                .await
                .unwrap_err();
            assert_eq!(
                (err.error.as_str(), err.cause.as_str()),
                ("InvalidTemplate", "builders[0].region: required")
            );
            assert_eq!(script.calls.lock().unwrap().len(), 1, "only Prepare ran");
        }
    }
}
