//! Whole builds (the committed state machine on the local engine, the real steps
//! in-process) against moto behind the fault proxy (tests/fault_proxy.rs):
//!
//! - each mutating call in turn fails ([`each_mutating_call_fails_in_turn`], for amazon-ebs
//!   here, for amazon-chroot in chroot_build.rs, for the other builders in builders.rs): every run ends built or failed with a
//!   clear cause, and after a failed run nothing tagged with its execution is left;
//! - describes answer `pending` N times: the build still succeeds, the polls show as retries;
//! - RequestLimitExceeded: retried (SDK retries, then the state machine's Transient Retry).
//!
//! Delays run on a scaled clock (1/1000): a 5 s poll interval takes 5 ms.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amiflow::local::LocalInvoker;
use amiflow::Ctx;
use amiflow_statemachine::{Engine, Event, RealClock, StateMachine};
use amiflow_tests::fault_proxy::{is_removal, FaultProxy, Faults, Injected};
use amiflow_tests::Moto;
use futures::future::BoxFuture;
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const COPY_REGION: &str = "us-west-2";

/// Most amazon-ebs options that create something without a communicator: a temporary
/// instance profile, an extra non-deleted volume, a copy to a second region, sharing, tags.
fn template() -> String {
    json!({
        "variables": {"run": ""},
        "builders": [{
            "type": "amazon-ebs",
            "name": "faulty",
            "region": REGION,
            "ami_name": "amiflow-fault-{{user `run`}}",
            "instance_type": "t3.micro",
            "source_ami_filter": {
                "filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2", "virtualization-type": "hvm", "root-device-type": "ebs"},
                "owners": ["amazon"],
                "most_recent": true
            },
            "communicator": "none",
            "ami_regions": [COPY_REGION],
            "ami_users": ["111122223333"],
            "snapshot_users": ["111122223333"],
            "tags": {"Name": "fault {{ .SourceAMIName }}"},
            "snapshot_tags": {"Kind": "snapshot"},
            "run_tags": {"Purpose": "fault proxy"},
            "launch_block_device_mappings": [
                {"device_name": "/dev/xvda", "volume_size": 8, "volume_type": "gp3", "delete_on_termination": true},
                {"device_name": "/dev/xvdb", "volume_size": 2, "volume_type": "gp2", "delete_on_termination": false}
            ],
            "ena_support": true,
            "temporary_iam_instance_profile_policy_document": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["*"]}]
            }
        }]
    })
    .to_string()
}

async fn ctx_via(proxy: &FaultProxy) -> Arc<Ctx> {
    let sdk = amiflow_tests::sdk_config_at(&proxy.url(), REGION).await;
    Arc::new(Ctx::from_sdk_config(sdk))
}

struct Outcome {
    result: Result<Value, amiflow_statemachine::ExecutionError>,
    events: Vec<Event>,
}

impl Outcome {
    fn retries(&self, state: &str, error: &str) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::RetryScheduled { name, error: err, .. } if name == state && err == error))
            .count()
    }
}

async fn build(ctx: Arc<Ctx>, execution: &str, template: String, vars: Value) -> Outcome {
    let machine =
        StateMachine::from_json(include_str!("../../statemachine/amiflow.asl.json")).unwrap();
    let events: Arc<Mutex<Vec<Event>>> = Default::default();
    let sink = events.clone();
    let engine = Engine::new(LocalInvoker::new(ctx))
        .with_clock(RealClock { scale: 0.001 })
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let input = json!({"template": template, "vars": vars});
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        engine.run(&machine, execution, input),
    )
    .await
    .unwrap_or_else(|_| panic!("{execution}: the build did not end within 120 s"));
    let events = events.lock().unwrap().clone();
    Outcome { result, events }
}

/// What a builder's run left, read from moto directly (not through the proxy): given the
/// execution and, for a run that built, its output (whose artifacts are not leftovers).
pub(crate) type LeftoversCheck =
    Box<dyn Fn(String, Option<Value>) -> BoxFuture<'static, Vec<String>>>;

/// Leftovers, read from moto directly (not through the proxy).
async fn leftovers(moto: &Moto, execution: &str, include_artifacts: bool) -> Vec<String> {
    let ctx = moto.ctx(REGION).await;
    crate::ebs::tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], include_artifacts).await
}

/// A run that failed at a fault point: the point, its fault, the removals its Cleanup made
/// (nth call, action).
type FailedRun = (usize, Injected, Vec<(usize, String)>);

/// Which of `total` failure points to try: all of them, or `max` spread evenly from the
/// first to the last.
fn sample(total: usize, max: usize) -> Vec<usize> {
    if total <= max || max < 2 {
        return (1..=total).collect();
    }
    let mut points: Vec<usize> = (0..max).map(|i| 1 + i * (total - 1) / (max - 1)).collect();
    points.dedup();
    points
}

/// A clean run of `template` records the mutating calls a build makes; then each (or an
/// even sample of at most `max_points`) fails in turn. Every run must end built (nothing
/// temporary left) or BuildFailed naming the failed call (nothing tagged with it left).
/// moto is reset before each run, so one run's artifacts do not meet the next.
/// A template for one run, made after moto's reset (amazon-chroot starts its host then).
pub(crate) type TemplateForRun = Box<dyn Fn() -> BoxFuture<'static, String>>;

/// [`TemplateForRun`] for a template that needs nothing from the fresh moto.
pub(crate) fn same_template(template: impl Fn() -> String + 'static) -> TemplateForRun {
    Box::new(move || {
        let t = template();
        Box::pin(async move { t })
    })
}

pub(crate) async fn each_mutating_call_fails_in_turn(
    moto: &Moto,
    builder: &str,
    template: TemplateForRun,
    leftovers: LeftoversCheck,
    max_points: usize,
) {
    let proxy = FaultProxy::start(moto.port).await;
    let ctx = ctx_via(&proxy).await;

    moto.reset().unwrap();
    proxy.set(Faults::default());
    let clean = build(
        ctx.clone(),
        &format!("{builder}-clean"),
        template().await,
        json!({}),
    )
    .await;
    let output = clean
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{builder}: the build succeeds without faults: {e}"));
    assert_eq!(output["failed"], 0, "{builder}: {output}");
    let actions: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|c| amiflow_tests::fault_proxy::is_mutating(&c.action) && c.service != "sts")
        .map(|c| format!("{}:{}", c.service, c.action))
        .collect();
    let total = proxy.mutating_seen();
    assert_eq!(total, actions.len());
    assert!(
        total >= 5,
        "{builder}: a build makes several mutating calls: {actions:?}"
    );
    let left = leftovers(format!("{builder}-clean"), Some(output.clone())).await;
    assert!(left.is_empty(), "{builder}: the clean build left {left:?}");

    let points = sample(total, max_points);
    let (mut built, mut failed) = (0, 0);
    // Each failed run: (point, its fault, the removals its Cleanup made).
    let mut cleanups: Vec<FailedRun> = Vec::new();
    for &n in &points {
        moto.reset().unwrap();
        let action = actions[n - 1].clone();
        let (service, call) = action.split_once(':').unwrap();
        // A creating call fails for good (not retryable); a removal fails with InternalError
        // through every SDK attempt, so Cleanup's Retry is what saves the run: a permanent
        // error there would leave things for the janitor.
        let injected = if is_removal(call) {
            Injected {
                code: "InternalError".into(),
                status: 500,
                times: 3,
            }
        } else if service == "s3" {
            Injected {
                code: "AccessDenied".into(),
                status: 403,
                times: 1,
            }
        } else {
            Injected {
                code: "UnauthorizedOperation".into(),
                status: 403,
                times: 1,
            }
        };
        proxy.set(Faults {
            fail_mutating: Some((n, injected.clone())),
            ..Default::default()
        });
        let execution = format!("{builder}-fault-{n}");
        let outcome = build(ctx.clone(), &execution, template().await, json!({})).await;
        let log = proxy.log();
        let hit: Vec<String> = log
            .iter()
            .filter(|c| c.fate.starts_with("failed"))
            .map(|c| c.action.clone())
            .collect();
        assert!(
            !hit.is_empty(),
            "{execution}: call #{n} ({action}) was never made: the build is not deterministic"
        );
        let removals: Vec<(usize, String)> = log
            .iter()
            .filter(|c| c.nth > n && is_removal(&c.action))
            .map(|c| (c.nth, format!("{}:{}", c.service, c.action)))
            .collect();
        match &outcome.result {
            Ok(output) => {
                built += 1;
                assert_eq!(output["failed"], 0, "{execution}: {output}");
                let left = leftovers(execution.clone(), Some(output.clone())).await;
                assert!(
                    left.is_empty(),
                    "{execution} (fail {action} with {}) built but left: {left:?}",
                    injected.code
                );
                println!(
                    "  {builder} #{n:>2} {action:<36} {:<22} → built",
                    injected.code
                );
            }
            Err(e) => {
                failed += 1;
                assert_eq!(e.error, "BuildFailed", "{execution}: {e}");
                assert!(
                    e.cause.contains(&hit[0]) && e.cause.contains(&injected.code),
                    "{execution}: the cause names the failed call {} and its error: {}",
                    hit[0],
                    e.cause
                );
                let left = leftovers(execution.clone(), None).await;
                assert!(
                    left.is_empty(),
                    "{execution} failed at {action} and left: {left:?}\ncause: {}",
                    e.cause
                );
                println!(
                    "  {builder} #{n:>2} {action:<36} {:<22} → failed: {}",
                    injected.code,
                    e.cause.lines().next().unwrap_or("")
                );
                cleanups.push((n, injected.clone(), removals));
            }
        }
    }

    // Then Cleanup's own removals fail in turn (InternalError through every SDK attempt):
    // all of them after the failure whose Cleanup removes the most, and each kind of
    // removal that Cleanup leaves out there after another failure that makes it. Cleanup's
    // Retry must still remove everything.
    cleanups.sort_by_key(|(_, _, r)| std::cmp::Reverse(r.len()));
    let mut second_faults: Vec<(usize, Injected, usize, String)> = Vec::new();
    for (i, (first, fault, removals)) in cleanups.iter().enumerate() {
        for (k, removal) in removals {
            if i == 0 || !second_faults.iter().any(|(_, _, _, r)| r == removal) {
                second_faults.push((*first, fault.clone(), *k, removal.clone()));
            }
        }
    }
    for (first, first_fault, k, removal) in &second_faults {
        let (first, k) = (*first, *k);
        moto.reset().unwrap();
        let too = Injected {
            code: "InternalError".into(),
            status: 500,
            times: 3,
        };
        proxy.set(Faults {
            fail_mutating: Some((first, first_fault.clone())),
            fail_mutating_too: Some((k, too)),
            ..Default::default()
        });
        let execution = format!("{builder}-fault-{first}-{k}");
        let outcome = build(ctx.clone(), &execution, template().await, json!({})).await;
        let hit: Vec<String> = proxy
            .log()
            .into_iter()
            .filter(|c| c.fate.starts_with("failed"))
            .map(|c| format!("{}:{}", c.service, c.action))
            .collect();
        assert!(
            hit.iter().any(|h| h == removal),
            "{execution}: Cleanup's call #{k} ({removal}) was not made again: {hit:?}"
        );
        match &outcome.result {
            Err(e) => {
                assert_eq!(e.error, "BuildFailed", "{execution}: {e}");
                let left = leftovers(execution.clone(), None).await;
                assert!(left.is_empty(), "{execution}: failed at #{first}, Cleanup's {removal} failed transiently, and left: {left:?}");
                println!("  {builder} #{first:>2} then Cleanup #{k:>2} {removal:<28} InternalError ×3 → removed all");
            }
            // The removal was the failing step's own (RegisterImage removing the image it
            // could not tag): its transient failure made the step retry, and the retry built.
            Ok(output) => {
                assert_eq!(output["failed"], 0, "{execution}: {output}");
                let left = leftovers(execution.clone(), Some(output.clone())).await;
                assert!(
                    left.is_empty(),
                    "{execution}: built after #{first} and #{k} failed, and left: {left:?}"
                );
                println!("  {builder} #{first:>2} then #{k:>2} {removal:<28} InternalError ×3 → retried and built");
            }
        }
    }
    println!(
        "{builder}: Cleanup removals failed in turn: {} (after a first failure)",
        second_faults.len()
    );
    println!(
        "{builder}: fault proxy tried {} of {total} failure points {points:?} ({built} runs built, {failed} failed, nothing left behind)",
        points.len()
    );
    assert!(
        failed > 0,
        "{builder}: injected permanent errors fail some builds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mutating_call_failing_in_turn_leaves_nothing_behind() {
    let Some(moto) =
        Moto::start_or_skip("each_mutating_call_failing_in_turn_leaves_nothing_behind")
    else {
        return;
    };
    let direct = Arc::new(moto.ctx(REGION).await);
    let check: LeftoversCheck = Box::new(move |execution, built| {
        let ctx = direct.clone();
        Box::pin(async move {
            crate::ebs::tagged_leftovers(&ctx, &execution, &[REGION, COPY_REGION], built.is_none())
                .await
        })
    });
    each_mutating_call_fails_in_turn(
        &moto,
        "amazon-ebs",
        same_template(template),
        check,
        usize::MAX,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_describes_are_polled_until_ready() {
    let Some(moto) = Moto::start_or_skip("pending_describes_are_polled_until_ready") else {
        return;
    };
    let proxy = FaultProxy::start(moto.port).await;
    let ctx = ctx_via(&proxy).await;
    proxy.set(Faults {
        pending_describes: 4,
        ..Default::default()
    });
    let outcome = build(ctx, "fault-pending", template(), json!({"run": "pending"})).await;
    let output = outcome
        .result
        .as_ref()
        .expect("the build succeeds after the pending answers");
    assert_eq!(output["failed"], 0);
    let rewritten = proxy.log().iter().filter(|c| c.fate == "pending").count();
    assert_eq!(
        rewritten, 8,
        "4 DescribeInstances and 4 DescribeImages answered pending"
    );
    let instance_polls = outcome.retries("amazon-ebs.WaitInstanceRunning", "NotReady");
    let image_polls = outcome.retries("amazon-ebs.WaitImageAvailable", "NotReady");
    println!("pending ×4: WaitInstanceRunning polled {instance_polls} more times, WaitImageAvailable {image_polls}");
    assert!(
        instance_polls >= 1 && image_polls >= 1,
        "the waits were retried on NotReady"
    );
    assert!(leftovers(&moto, "fault-pending", false).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limit_exceeded_is_retried() {
    let Some(moto) = Moto::start_or_skip("request_limit_exceeded_is_retried") else {
        return;
    };
    let proxy = FaultProxy::start(moto.port).await;
    let ctx = ctx_via(&proxy).await;
    // Twice: within the SDK's 3 attempts. CopyImage 4 times: beyond them, so the step
    // reports Transient and the state machine retries it.
    let throttle = [
        ("RunInstances", 2),
        ("DescribeImages", 2),
        ("CreateImage", 2),
        ("CopyImage", 4),
    ]
    .into_iter()
    .map(|(a, n)| (a.to_string(), n))
    .collect();
    proxy.set(Faults {
        throttle,
        ..Default::default()
    });
    let outcome = build(
        ctx,
        "fault-throttle",
        template(),
        json!({"run": "throttle"}),
    )
    .await;
    let output = outcome
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("the build succeeds despite throttling: {e}"));
    assert_eq!(output["failed"], 0);
    let throttled = proxy.log().iter().filter(|c| c.fate == "throttled").count();
    assert_eq!(throttled, 10, "every throttled answer was sent");
    let copy_retries = outcome.retries("amazon-ebs.CopyImage", "Transient");
    println!("RequestLimitExceeded ×{throttled}: CopyImage retried {copy_retries} times by the state machine");
    assert!(
        copy_retries >= 1,
        "CopyImage past the SDK's attempts is a Transient retry"
    );
    assert!(leftovers(&moto, "fault-throttle", false).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_without_capacity_for_the_first_type_launches_the_next() {
    let Some(moto) =
        Moto::start_or_skip("spot_without_capacity_for_the_first_type_launches_the_next")
    else {
        return;
    };
    let proxy = FaultProxy::start(moto.port).await;
    let ctx = ctx_via(&proxy).await;
    let spot = || {
        let mut t: Value = serde_json::from_str(&template()).unwrap();
        let b = &mut t["builders"][0];
        let o = b.as_object_mut().unwrap();
        o.remove("instance_type");
        o.remove("ena_support"); // a spot instance cannot be modified
        b["spot_price"] = json!("auto");
        b["spot_instance_types"] = json!(["t3.micro", "t2.micro"]);
        b["spot_tags"] = json!({"Purpose": "spot of {{ .SourceAMI }}"});
        t.to_string()
    };
    // Where the launch stands among the mutating calls, from a clean spot build (the last
    // RunInstances: IamInstanceProfile's dry run comes first).
    proxy.set(Faults::default());
    let clean = build(ctx.clone(), "spot-clean", spot(), json!({"run": "clean"})).await;
    clean.result.as_ref().expect("a spot build succeeds");
    let n = proxy
        .log()
        .iter()
        .rfind(|c| c.nth > 0 && c.action == "RunInstances")
        .expect("RunInstances was called")
        .nth;

    moto.reset().unwrap();
    // EC2 has no t3.micro capacity (one attempt: no SDK retries while another type waits).
    proxy.set(Faults {
        fail_mutating: Some((
            n,
            Injected {
                code: "InsufficientInstanceCapacity".into(),
                status: 500,
                times: 1,
            },
        )),
        ..Default::default()
    });
    let outcome = build(
        ctx.clone(),
        "spot-fallback",
        spot(),
        json!({"run": "fallback"}),
    )
    .await;
    let output = outcome.result.as_ref().expect("built on the next type");
    assert_eq!(output["failed"], 0, "{output}");
    let log = proxy.log();
    let launch = log.iter().rfind(|c| c.action == "RunInstances").unwrap();
    // The one-time spot request carries spot_tags (rendered) and the build tag.
    let body = percent_decode(&launch.body);
    assert!(
        body.contains("ResourceType=spot-instances-request")
            && body.contains("Value=spot of ami-")
            && body.contains("Value=spot-fallback"),
        "{body}"
    );
    let runs: Vec<String> = log
        .into_iter()
        .filter(|c| c.action == "RunInstances")
        .map(|c| c.fate)
        .skip(1) // the dry run
        .collect();
    assert_eq!(
        runs,
        vec!["failed:InsufficientInstanceCapacity", "forwarded"],
        "t3.micro once (no SDK retries), then t2.micro"
    );

    let direct = moto.ctx(REGION).await;
    let launched: Vec<String> = direct
        .ec2(REGION)
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", amiflow::state::BUILD_TAG))
                .values("spot-fallback")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            i.instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        launched,
        vec!["t2.micro".to_string()],
        "one instance, of the second type"
    );
    let left = leftovers(&moto, "spot-fallback", false).await;
    assert!(left.is_empty(), "left: {left:?}");
}

fn percent_decode(form: &str) -> String {
    percent_encoding::percent_decode_str(&form.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
