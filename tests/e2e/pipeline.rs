//! `amiflow build TEMPLATE --pipeline FILE` against moto: a pipeline run tags its image,
//! publishes the id in every region with a copy, builds nothing when nothing changed, and
//! after a change retires the older image with its snapshots and moves the parameter.
//! Images without the pipeline's tag are never touched; a bad pipeline file creates nothing.

use std::collections::BTreeSet;
use std::path::Path;

use amiflow_template::pipeline::{FINGERPRINT_TAG, PIPELINE_TAG};
use amiflow_tests::lambda_harness::workspace_binary;
use amiflow_tests::Moto;
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const COPY_REGION: &str = "us-west-2";
const PARAMETER: &str = "/images/web/latest";

fn template() -> Value {
    json!({"builders": [{
        "type": "amazon-ebs", "name": "web", "region": REGION,
        "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro",
        "communicator": "none", "ami_name": "pipeline-web {{timestamp}}",
        "ami_regions": [COPY_REGION]
    }],
    "provisioners": [{"type": "shell-local", "script": "setup.sh"}]})
}

fn pipeline(retain: Value) -> Value {
    json!({"name": "web-nightly", "rebuild": "on_change",
           "publish": {"ssm_parameter": PARAMETER}, "retain": retain})
}

/// The provisioner file: shell-local runs it as Packer does, so it is executable.
fn write_script(dir: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("setup.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Build {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn build(moto: &Moto, dir: &Path, extra: &[&str]) -> Build {
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(dir.join("web.json"))
        .arg("--pipeline")
        .arg(dir.join("pipeline.json"))
        .args(extra)
        .envs(moto.env(REGION))
        .current_dir(dir)
        .output()
        .await
        .expect("run amiflow build");
    Build {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Image id → (tags, snapshots) of the account's images in a region.
async fn images(moto: &Moto, region: &str) -> Vec<(String, Vec<(String, String)>, Vec<String>)> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(region).await);
    let out = ec2.describe_images().owners("self").send().await.unwrap();
    out.images()
        .iter()
        .map(|i| {
            let tags = i
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let snaps = i
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(String::from))
                .collect();
            (i.image_id().unwrap_or_default().to_string(), tags, snaps)
        })
        .collect()
}

async fn snapshots(moto: &Moto, region: &str) -> BTreeSet<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(region).await);
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    out.snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id().map(String::from))
        .collect()
}

async fn pipeline_images(moto: &Moto, region: &str) -> Vec<String> {
    images(moto, region)
        .await
        .into_iter()
        .filter(|(_, tags, _)| {
            tags.iter()
                .any(|(k, v)| k == PIPELINE_TAG && v == "web-nightly")
        })
        .map(|(id, _, _)| id)
        .collect()
}

async fn parameter(moto: &Moto, region: &str) -> Option<String> {
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config(region).await);
    ssm.get_parameter()
        .name(PARAMETER)
        .send()
        .await
        .ok()
        .and_then(|o| o.parameter().and_then(|p| p.value()).map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_builds_once_publishes_and_retires_the_older_image() {
    let Some(moto) =
        Moto::start_or_skip("on_change_builds_once_publishes_and_retires_the_older_image")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("web.json"), template().to_string()).unwrap();
    write_script(root, "echo one");
    std::fs::write(
        root.join("pipeline.json"),
        pipeline(json!({"keep_latest": 0})).to_string(),
    )
    .unwrap();

    // An image of the account without the pipeline's tag: never the pipeline's to retire.
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(REGION).await);
    let outsider = ec2
        .copy_image()
        .source_image_id("ami-0f8848d57eb4fe2d2")
        .source_region(REGION)
        .name("not-the-pipelines")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();

    // First run: builds, tags with the pipeline and fingerprint, publishes in both regions.
    let first = build(&moto, root, &[]).await;
    assert!(
        first.ok,
        "first run failed:\n{}\n{}",
        first.stdout, first.stderr
    );
    let made = pipeline_images(&moto, REGION).await;
    assert_eq!(made.len(), 1, "{made:?}");
    let first_image = made[0].clone();
    let first_copy = pipeline_images(&moto, COPY_REGION).await;
    assert_eq!(first_copy.len(), 1, "the copy carries the pipeline tag too");
    let all = images(&moto, REGION).await;
    let (_, tags, first_snaps) = all.iter().find(|(id, _, _)| *id == first_image).unwrap();
    let fingerprint = tags
        .iter()
        .find(|(k, _)| k == FINGERPRINT_TAG)
        .map(|(_, v)| v.clone())
        .expect("the fingerprint tag");
    assert_eq!(fingerprint.len(), 64);
    assert!(!first_snaps.is_empty());
    assert_eq!(
        parameter(&moto, REGION).await.as_deref(),
        Some(first_image.as_str())
    );
    assert_eq!(
        parameter(&moto, COPY_REGION).await.as_deref(),
        Some(first_copy[0].as_str())
    );

    // Second run, nothing changed: up to date, nothing made, the parameter unchanged.
    let images_before = images(&moto, REGION).await.len();
    let second = build(&moto, root, &[]).await;
    assert!(
        second.ok,
        "second run failed:\n{}\n{}",
        second.stdout, second.stderr
    );
    assert!(
        second.stderr.contains("up to date") && second.stderr.contains(&first_image),
        "{}",
        second.stderr
    );
    assert_eq!(
        images(&moto, REGION).await.len(),
        images_before,
        "nothing was built"
    );
    assert_eq!(
        parameter(&moto, REGION).await.as_deref(),
        Some(first_image.as_str())
    );

    // A provisioner file changed: a new image, published; the older one retired with its
    // snapshots in both regions; the outsider untouched.
    write_script(root, "echo two");
    // Two runs in one second would give the same AMI name.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let third = build(&moto, root, &[]).await;
    assert!(
        third.ok,
        "third run failed:\n{}\n{}",
        third.stdout, third.stderr
    );
    let now = pipeline_images(&moto, REGION).await;
    assert_eq!(now.len(), 1, "the older image is retired: {now:?}");
    assert_ne!(now[0], first_image);
    assert_eq!(
        parameter(&moto, REGION).await.as_deref(),
        Some(now[0].as_str())
    );
    let copies = pipeline_images(&moto, COPY_REGION).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_ne!(copies, first_copy);
    assert_eq!(
        parameter(&moto, COPY_REGION).await.as_deref(),
        Some(copies[0].as_str())
    );
    let left = snapshots(&moto, REGION).await;
    for s in first_snaps {
        assert!(
            !left.contains(s),
            "snapshot {s} of the retired image is left"
        );
    }
    assert!(
        third
            .stderr
            .contains(&format!("retain: deregister {first_image} in {REGION}")),
        "{}",
        third.stderr
    );
    let ids: Vec<String> = images(&moto, REGION)
        .await
        .into_iter()
        .map(|i| i.0)
        .collect();
    assert!(
        ids.contains(&outsider),
        "an image without the pipeline tag was removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_dry_run_and_keep_latest_touch_nothing_and_a_bad_pipeline_creates_nothing() {
    let Some(moto) = Moto::start_or_skip(
        "retain_dry_run_and_keep_latest_touch_nothing_and_a_bad_pipeline_creates_nothing",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut one_region = template();
    one_region["builders"][0]
        .as_object_mut()
        .unwrap()
        .remove("ami_regions");
    std::fs::write(root.join("web.json"), one_region.to_string()).unwrap();
    write_script(root, "echo one");

    // A bad pipeline file: every problem named, exit 1, nothing created.
    std::fs::write(
        root.join("pipeline.json"),
        json!({"name": "web nightly", "publsh": {}, "retain": {"keep_latest": "3"}}).to_string(),
    )
    .unwrap();
    let before = images(&moto, REGION).await.len();
    let bad = build(&moto, root, &[]).await;
    assert!(!bad.ok);
    for want in [
        "name: \"web nightly\"",
        "publsh: unknown key in the pipeline; did you mean publish?",
        "retain.keep_latest: must be a whole number",
    ] {
        assert!(
            bad.stderr.contains(want),
            "missing {want:?}:\n{}",
            bad.stderr
        );
    }
    assert_eq!(
        images(&moto, REGION).await.len(),
        before,
        "nothing was created"
    );

    // rebuild: always builds each time; keep_latest 1 keeps the one older image.
    let mut always = pipeline(json!({"keep_latest": 1}));
    always["rebuild"] = json!("always");
    std::fs::write(root.join("pipeline.json"), always.to_string()).unwrap();
    for _ in 0..2 {
        let run = build(&moto, root, &[]).await;
        assert!(run.ok, "run failed:\n{}\n{}", run.stdout, run.stderr);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    assert_eq!(
        pipeline_images(&moto, REGION).await.len(),
        2,
        "keep_latest 1 keeps one older"
    );

    // keep_latest 0 with --retain-dry-run: says what would go, removes nothing.
    std::fs::write(
        root.join("pipeline.json"),
        {
            let mut p = pipeline(json!({"keep_latest": 0}));
            p["rebuild"] = json!("always");
            p
        }
        .to_string(),
    )
    .unwrap();
    let dry = build(&moto, root, &["--retain-dry-run"]).await;
    assert!(dry.ok, "dry run failed:\n{}\n{}", dry.stdout, dry.stderr);
    assert_eq!(
        dry.stderr.matches("retain: would deregister").count(),
        2,
        "{}",
        dry.stderr
    );
    assert_eq!(
        pipeline_images(&moto, REGION).await.len(),
        3,
        "a dry run removes nothing"
    );
}

/// A pipeline run through the local engine with every step in-process, its AWS calls through
/// `ctx` (the fault proxy).
async fn engine_run(
    ctx: std::sync::Arc<amiflow::Ctx>,
    execution: &str,
    flavor: &str,
) -> Result<Value, amiflow_statemachine::ExecutionError> {
    engine_run_with(ctx, execution, flavor, pipeline(json!({"keep_latest": 0}))).await
}

async fn engine_run_with(
    ctx: std::sync::Arc<amiflow::Ctx>,
    execution: &str,
    flavor: &str,
    pipeline: Value,
) -> Result<Value, amiflow_statemachine::ExecutionError> {
    use amiflow_statemachine::{Engine, RealClock, StateMachine};
    let machine =
        StateMachine::from_json(include_str!("../../statemachine/amiflow.asl.json")).unwrap();
    let template = json!({"variables": {"flavor": ""}, "builders": [{
        "type": "amazon-ebs", "name": "web", "region": REGION,
        "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro",
        "communicator": "none", "ami_name": "pipeline-fault-{{user `flavor`}}",
        "ami_regions": [COPY_REGION]
    }]});
    let input = json!({"template": template.to_string(), "vars": {"flavor": flavor},
        "pipeline": pipeline});
    let engine =
        Engine::new(amiflow::local::LocalInvoker::new(ctx)).with_clock(RealClock { scale: 0.001 });
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        engine.run(&machine, execution, input),
    )
    .await
    .unwrap_or_else(|_| panic!("{execution} did not end within 120 s"))
}

/// Each mutating call of Publish and Retain fails in turn (after a first image exists, on a
/// run that changed the template): a failed Publish fails the run naming the call, leaves no
/// temporary resource, and the next run, up to date, publishes and retires what it could
/// not; a failed removal in Retain is retried and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mutating_call_of_publish_and_retain_fails_in_turn() {
    use amiflow_tests::fault_proxy::{is_removal, FaultProxy, Faults, Injected};
    let Some(moto) = Moto::start_or_skip("each_mutating_call_of_publish_and_retain_fails_in_turn")
    else {
        return;
    };
    let proxy = FaultProxy::start(moto.port).await;
    let ctx = std::sync::Arc::new(amiflow::Ctx::from_sdk_config(
        amiflow_tests::sdk_config_at(&proxy.url(), REGION).await,
    ));
    const PIPELINE_CALLS: [&str; 3] = ["PutParameter", "DeregisterImage", "DeleteSnapshot"];

    // A clean pair of runs: the second's pipeline calls are the fault points.
    async fn seed(moto: &Moto, proxy: &FaultProxy, ctx: &std::sync::Arc<amiflow::Ctx>, n: &str) {
        moto.reset().unwrap();
        proxy.set(Faults::default());
        engine_run(ctx.clone(), &format!("{n}-seed"), "one")
            .await
            .expect("the first run builds");
    }
    seed(&moto, &proxy, &ctx, "clean").await;
    proxy.set(Faults::default());
    let out = engine_run(ctx.clone(), "clean-change", "two")
        .await
        .unwrap();
    assert_eq!(out["failed"], 0, "{out}");
    let log = proxy.log();
    let last_tags = log
        .iter()
        .filter(|c| c.action == "CreateTags")
        .map(|c| c.nth)
        .max()
        .unwrap();
    let points: Vec<(usize, String)> = log
        .iter()
        .filter(|c| c.nth > last_tags && PIPELINE_CALLS.contains(&c.action.as_str()))
        .map(|c| (c.nth, c.action.clone()))
        .collect();
    let kinds: BTreeSet<&str> = points.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(
        kinds.len(),
        3,
        "Publish and Retain make all three calls: {points:?}"
    );

    for (n, action) in &points {
        seed(&moto, &proxy, &ctx, &format!("fault-{n}")).await;
        let (injected, removal) = if is_removal(action) {
            (
                Injected {
                    code: "InternalError".into(),
                    status: 500,
                    times: 3,
                },
                true,
            )
        } else {
            (
                Injected {
                    code: "AccessDeniedException".into(),
                    status: 400,
                    times: 1,
                },
                false,
            )
        };
        proxy.set(Faults {
            fail_mutating: Some((*n, injected.clone())),
            ..Default::default()
        });
        let execution = format!("fault-{n}");
        let result = engine_run(ctx.clone(), &execution, "two").await;
        let left = crate::ebs::tagged_leftovers(
            &moto.ctx(REGION).await,
            &execution,
            &[REGION, COPY_REGION],
            false,
        )
        .await;
        assert!(left.is_empty(), "{execution} ({action}) left {left:?}");
        if removal {
            let out = result
                .unwrap_or_else(|e| panic!("{execution}: a transient {action} is retried: {e}"));
            assert_eq!(out["failed"], 0, "{out}");
            println!("  pipeline #{n:>2} {action:<16} InternalError ×3 → retried, succeeded");
        } else {
            let e = result.expect_err("a refused PutParameter fails the run");
            assert!(
                e.cause.contains("PutParameter") && e.cause.contains("AccessDeniedException"),
                "{execution}: {e}"
            );
            println!(
                "  pipeline #{n:>2} {action:<16} AccessDeniedException → failed: {}",
                e.cause.lines().next().unwrap_or("")
            );
        }
        // The next run, nothing changed: up to date; the parameter names the new image and
        // the older one is retired in every region.
        proxy.set(Faults::default());
        let healed = engine_run(ctx.clone(), &format!("{execution}-next"), "two")
            .await
            .unwrap();
        assert_eq!(healed["pipeline"]["status"], "up_to_date", "{healed}");
        for region in [REGION, COPY_REGION] {
            let current = healed["pipeline"]["current"][region]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(
                parameter(&moto, region).await.as_deref(),
                Some(current.as_str()),
                "{execution} {region}"
            );
            assert_eq!(
                pipeline_images(&moto, region).await,
                [current],
                "{execution} {region}: the older image is retired"
            );
        }
    }
}

/// Messages waiting in an SQS queue, each parsed from its body (SNS wraps its own).
async fn queued(sqs: &aws_sdk_sqs::Client, queue: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            return out;
        }
        for m in got.messages() {
            let body: Value = serde_json::from_str(m.body().unwrap_or("null")).unwrap();
            out.push(body);
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// `notify`: every run is announced, on SNS (read through an SQS subscription) and as an
/// EventBridge event (read through a rule's SQS target): built, then up to date (skipped),
/// then a failing build (failed, naming it), each with the pipeline, images and fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_announces_each_run_on_sns_and_eventbridge() {
    let Some(moto) = Moto::start_or_skip("notify_announces_each_run_on_sns_and_eventbridge") else {
        return;
    };
    let sdk = moto.sdk_config(REGION).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = |name: &'static str| {
        let sqs = sqs.clone();
        async move {
            let url = sqs
                .create_queue()
                .queue_name(name)
                .send()
                .await
                .unwrap()
                .queue_url()
                .unwrap()
                .to_string();
            let arn = sqs
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes()
                .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
                .clone();
            (url, arn)
        }
    };
    let (sns_queue, sns_queue_arn) = queue("from-sns").await;
    let (events_queue, events_queue_arn) = queue("from-events").await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic = sns
        .create_topic()
        .name("amiflow-web")
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&sns_queue_arn)
        .send()
        .await
        .unwrap();
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    events
        .put_rule()
        .name("amiflow-pipelines")
        .event_pattern(
            json!({"source": [amiflow::steps::notify::EVENT_SOURCE],
                   "detail-type": [amiflow::steps::notify::DETAIL_TYPE]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("amiflow-pipelines")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(&events_queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("web.json"), template().to_string()).unwrap();
    write_script(root, "echo one");
    let mut file = pipeline(json!({"keep_latest": 1}));
    file["notify"] = json!({"sns_topic_arn": topic, "eventbridge": true});
    std::fs::write(root.join("pipeline.json"), file.to_string()).unwrap();

    let mut statuses = Vec::new();
    for (run, script) in [
        ("built", "echo one"),
        ("up to date", "echo one"),
        ("failing", "exit 7"),
    ] {
        write_script(root, script);
        let out = build(&moto, root, &[]).await;
        assert_eq!(
            out.ok,
            run != "failing",
            "{run}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        let from_sns = queued(&sqs, &sns_queue).await;
        assert_eq!(from_sns.len(), 1, "{run}: one SNS message: {from_sns:#?}");
        let message: Value =
            serde_json::from_str(from_sns[0]["Message"].as_str().unwrap()).unwrap();
        let from_events = queued(&sqs, &events_queue).await;
        assert_eq!(from_events.len(), 1, "{run}: one event: {from_events:#?}");
        assert_eq!(
            from_events[0]["detail"], message,
            "{run}: the same report on both"
        );
        assert_eq!(
            from_events[0]["detail-type"],
            amiflow::steps::notify::DETAIL_TYPE
        );
        assert_eq!(message["pipeline"], "web-nightly");
        statuses.push(message["status"].as_str().unwrap().to_string());
        match run {
            "failing" => {
                let failure = message["failures"][0].to_string();
                assert!(
                    failure.contains("web") && failure.contains('7'),
                    "{message:#}"
                );
            }
            _ => {
                let images = message["images"].as_object().unwrap();
                assert!(
                    images.contains_key(REGION) && images.contains_key(COPY_REGION),
                    "{message:#}"
                );
                assert_eq!(message["fingerprint"].as_str().map(str::len), Some(64));
            }
        }
    }
    assert_eq!(statuses, ["succeeded", "skipped", "failed"]);
}

/// `amiflow build --pipeline` with stdin a pipe: `answer` is written to it, and it stays
/// open until the build ends (no answer: the approval waits until its timeout).
async fn build_answering(moto: &Moto, dir: &Path, answer: Option<&str>) -> Build {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(dir.join("web.json"))
        .arg("--pipeline")
        .arg(dir.join("pipeline.json"))
        .envs(moto.env(REGION))
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run amiflow build");
    let mut stdin = child.stdin.take().unwrap();
    if let Some(a) = answer {
        stdin.write_all(a.as_bytes()).await.unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    drop(stdin);
    Build {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gates_publishing_and_every_refusal_leaves_nothing() {
    let Some(moto) =
        Moto::start_or_skip("approval_gates_publishing_and_every_refusal_leaves_nothing")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("web.json"), template().to_string()).unwrap();
    write_script(d, "echo ready");
    let mut file = pipeline(json!({"keep_latest": 1}));
    file["approval"] = json!({"timeout": "1h"});
    std::fs::write(d.join("pipeline.json"), file.to_string()).unwrap();
    let before = (
        snapshots(&moto, REGION).await,
        snapshots(&moto, COPY_REGION).await,
    );
    let nothing_left = |what: &'static str| {
        let moto = &moto;
        let before = before.clone();
        async move {
            for region in [REGION, COPY_REGION] {
                assert!(
                    pipeline_images(moto, region).await.is_empty(),
                    "{what}: an image is left in {region}"
                );
            }
            let after = (
                snapshots(moto, REGION).await,
                snapshots(moto, COPY_REGION).await,
            );
            assert_eq!(after, before, "{what}: snapshots are left");
            assert_eq!(parameter(moto, REGION).await, None, "{what}: published");
        }
    };

    // Nobody to ask (stdin is not a terminal or a pipe): refused before anything exists.
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg(d.join("web.json"))
        .arg("--pipeline")
        .arg(d.join("pipeline.json"))
        .envs(moto.env(REGION))
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--approve"),
        "{stderr}"
    );
    nothing_left("no approver").await;

    // Refused ahead, answered "n", and not answered in time: built, then withdrawn.
    let rejected = build(&moto, d, &["--reject"]).await;
    assert!(!rejected.ok, "{}", rejected.stderr);
    assert!(rejected.stderr.contains("Rejected"), "{}", rejected.stderr);
    nothing_left("--reject").await;
    let no = build_answering(&moto, d, Some("n\n")).await;
    assert!(
        !no.ok && no.stderr.contains("did not approve"),
        "{}",
        no.stderr
    );
    nothing_left("answered n").await;
    file["approval"] = json!({"timeout": "2s"});
    std::fs::write(d.join("pipeline.json"), file.to_string()).unwrap();
    let late = build_answering(&moto, d, None).await;
    assert!(
        !late.ok && late.stderr.contains("States.Timeout"),
        "{}",
        late.stderr
    );
    nothing_left("timed out").await;

    // Approved at the prompt: published in both regions.
    file["approval"] = json!({"timeout": "1h"});
    std::fs::write(d.join("pipeline.json"), file.to_string()).unwrap();
    let yes = build_answering(&moto, d, Some("y\n")).await;
    assert!(yes.ok, "{}\n{}", yes.stdout, yes.stderr);
    for region in [REGION, COPY_REGION] {
        let made = pipeline_images(&moto, region).await;
        assert_eq!(made.len(), 1, "{region}: {made:?}");
        assert_eq!(
            parameter(&moto, region).await.as_ref(),
            Some(&made[0]),
            "{region}"
        );
    }
}

/// What the test stage launched in `region` (tag `amiflow:build-name` = `web.test`): each
/// instance's state, and the security groups and key pairs still there.
async fn test_stage_resources(moto: &Moto, region: &str) -> (Vec<String>, usize, usize) {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(region).await);
    let by_test = || {
        aws_sdk_ec2::types::Filter::builder()
            .name("tag:amiflow:build-name")
            .values("web.test")
            .build()
    };
    let states = ec2
        .describe_instances()
        .filters(by_test())
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            i.state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default()
        })
        .collect();
    let groups = ec2
        .describe_security_groups()
        .filters(by_test())
        .send()
        .await
        .unwrap()
        .security_groups()
        .len();
    let keys = ec2
        .describe_key_pairs()
        .filters(by_test())
        .send()
        .await
        .unwrap()
        .key_pairs()
        .len();
    (states, groups, keys)
}

/// The test stage against moto and a throwaway sshd standing in for the test instance: a
/// passing test publishes and leaves only the image; a failing one withdraws the new images
/// (both regions), publishes nothing, names the test, and leaves no test resource either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_stage_gates_publishing_and_a_failing_test_leaves_nothing() {
    let Some(moto) =
        Moto::start_or_skip("a_test_stage_gates_publishing_and_a_failing_test_leaves_nothing")
    else {
        return;
    };
    let sshd = match amiflow_tests::sshd::Sshd::start() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED: no local sshd: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marker = d.join("tested");
    let mut web = template();
    let b = &mut web["builders"][0];
    b["communicator"] = json!("ssh");
    b["ssh_host"] = json!("127.0.0.1");
    b["ssh_port"] = json!(sshd.port);
    b["ssh_username"] = json!(sshd.user);
    b["ssh_private_key_file"] = json!(sshd.client_key);
    web["provisioners"] = json!([{"type": "shell", "inline": ["echo building"]}]);
    std::fs::write(d.join("web.json"), web.to_string()).unwrap();
    let mut file = pipeline(json!({"keep_latest": 1}));
    file["rebuild"] = json!("always");
    file["test"] = json!({"instance_type": "t3.nano", "timeout": "5m",
        "provisioners": [{"type": "shell", "inline": [format!("echo image-ok >> {}", marker.display())]}]});
    std::fs::write(d.join("pipeline.json"), file.to_string()).unwrap();
    let before = (
        snapshots(&moto, REGION).await,
        snapshots(&moto, COPY_REGION).await,
    );

    // Passing: tested on its own instance, then published in both regions.
    let passed = build(&moto, d, &[]).await;
    assert!(passed.ok, "{}\n{}", passed.stdout, passed.stderr);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "image-ok\n",
        "the test provisioner ran once"
    );
    let made = pipeline_images(&moto, REGION).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(
        passed
            .stderr
            .contains(&format!("==> tested {} in {REGION}", made[0])),
        "{}",
        passed.stderr
    );
    assert_eq!(parameter(&moto, REGION).await.as_ref(), Some(&made[0]));
    for region in [REGION, COPY_REGION] {
        let marked = images(&moto, region).await.into_iter().any(|(_, tags, _)| {
            tags.iter()
                .any(|(k, _)| k == amiflow::resources::image::GATES_PASSED_TAG)
        });
        assert!(
            marked,
            "{region}: Publish marks the tested image past its gates"
        );
    }
    let (instances, groups, keys) = test_stage_resources(&moto, REGION).await;
    assert_eq!(instances, ["terminated"], "one test instance, terminated");
    assert_eq!(
        (groups, keys),
        (0, 0),
        "the test's temporary group and key are gone"
    );
    let first_copy = pipeline_images(&moto, COPY_REGION).await;

    // Failing: the new images go in both regions, the parameter stays, the test is named.
    file["test"]["provisioners"] =
        json!([{"type": "shell", "inline": ["echo checking", "exit 3"]}]);
    std::fs::write(d.join("pipeline.json"), file.to_string()).unwrap();
    let failed = build(&moto, d, &[]).await;
    assert!(
        !failed.ok,
        "a failing test fails the run:\n{}",
        failed.stdout
    );
    for want in ["TestFailed", "test web.test of image", "exit"] {
        assert!(
            failed.stderr.contains(want),
            "missing {want:?}:\n{}",
            failed.stderr
        );
    }
    assert_eq!(
        pipeline_images(&moto, REGION).await,
        made,
        "only the tested image"
    );
    assert_eq!(pipeline_images(&moto, COPY_REGION).await, first_copy);
    assert_eq!(
        parameter(&moto, REGION).await.as_ref(),
        Some(&made[0]),
        "nothing new published"
    );
    let kept: BTreeSet<String> = images(&moto, REGION)
        .await
        .into_iter()
        .chain(images(&moto, COPY_REGION).await)
        .flat_map(|(_, _, snaps)| snaps)
        .collect();
    let after: BTreeSet<String> = snapshots(&moto, REGION)
        .await
        .union(&snapshots(&moto, COPY_REGION).await)
        .cloned()
        .collect();
    let mut allowed = kept;
    allowed.extend(before.0.iter().chain(&before.1).cloned());
    assert!(
        after.is_subset(&allowed),
        "snapshots of withdrawn images are left: {:?}",
        after.difference(&allowed).collect::<Vec<_>>()
    );
    let (instances, groups, keys) = test_stage_resources(&moto, REGION).await;
    assert_eq!(instances, ["terminated", "terminated"], "{instances:?}");
    assert_eq!((groups, keys), (0, 0));
}

/// Each mutating call of the test stage (its launch, its Cleanup's removals, and Withdraw's
/// after a failed test) fails in turn: a refused create fails the test, the new images are
/// withdrawn and nothing is published; a removal failing transiently is retried and the run
/// succeeds. Either way nothing tagged with the execution is left but a published image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mutating_call_of_the_test_stage_fails_in_turn() {
    use amiflow_tests::fault_proxy::{is_removal, FaultProxy, Faults, Injected};
    let Some(moto) = Moto::start_or_skip("each_mutating_call_of_the_test_stage_fails_in_turn")
    else {
        return;
    };
    let proxy = FaultProxy::start(moto.port).await;
    let ctx = std::sync::Arc::new(amiflow::Ctx::from_sdk_config(
        amiflow_tests::sdk_config_at(&proxy.url(), REGION).await,
    ));
    let mut file = pipeline(json!({"keep_latest": 0}));
    file["rebuild"] = json!("always");
    // communicator none: the test instance is launched, waited for and removed, and a
    // shell-local test runs beside it.
    file["test"] = json!({"instance_type": "t3.nano",
        "provisioners": [{"type": "shell-local", "inline": ["true"]}]});
    let clean = engine_run_with(ctx.clone(), "test-clean", "one", file.clone())
        .await
        .expect("a clean run passes its test");
    assert_eq!(clean["pipeline"]["tested"]["region"], REGION, "{clean}");
    let log = proxy.log();
    let launches: Vec<usize> = log
        .iter()
        .filter(|c| c.action == "RunInstances")
        .map(|c| c.nth)
        .collect();
    assert_eq!(launches.len(), 2, "the build's instance, then the test's");
    let published = log
        .iter()
        .find(|c| c.action == "PutParameter")
        .map(|c| c.nth)
        .unwrap();
    // Publish begins by marking the tested images past their gates (its failures are
    // each_mutating_call_of_publish_and_retain_fails_in_turn's): the test stage ends there.
    let test_cleanup = log
        .iter()
        .filter(|c| c.action == "TerminateInstances" && c.nth < published)
        .map(|c| c.nth)
        .max()
        .unwrap();
    let marked = log
        .iter()
        .filter(|c| c.action == "CreateTags" && c.nth > test_cleanup && c.nth < published)
        .map(|c| c.nth)
        .min()
        .unwrap();
    let points: Vec<(usize, String)> = log
        .iter()
        .filter(|c| c.nth >= launches[1] && c.nth < marked)
        .map(|c| (c.nth, c.action.clone()))
        .collect();
    assert!(
        points.iter().any(|(_, a)| a == "TerminateInstances"),
        "the test's Cleanup is among the fault points: {points:?}"
    );
    let mut seen = 0;
    for (n, action) in &points {
        moto.reset().unwrap();
        let removal = is_removal(action);
        let injected = if removal {
            Injected {
                code: "InternalError".into(),
                status: 500,
                times: 3,
            }
        } else {
            Injected {
                code: "UnauthorizedOperation".into(),
                status: 403,
                times: 1,
            }
        };
        proxy.set(Faults {
            fail_mutating: Some((*n, injected)),
            ..Default::default()
        });
        let execution = format!("test-fault-{n}");
        let result = engine_run_with(ctx.clone(), &execution, "one", file.clone()).await;
        proxy.set(Faults::default());
        let left = crate::ebs::tagged_leftovers(
            &moto.ctx(REGION).await,
            &execution,
            &[REGION, COPY_REGION],
            false,
        )
        .await;
        assert!(left.is_empty(), "{execution} ({action}) left {left:?}");
        if removal {
            let out = result
                .unwrap_or_else(|e| panic!("{execution}: a transient {action} is retried: {e}"));
            assert!(out["pipeline"]["tested"].is_object(), "{execution}: {out}");
            println!(
                "  test stage #{n:>2} {action:<22} InternalError ×3 → retried, passed, published"
            );
        } else {
            let e = result.expect_err("a refused create fails the test");
            assert!(
                e.cause.contains("TestFailed") || e.cause.contains(action.as_str()),
                "{execution}: {e}"
            );
            for region in [REGION, COPY_REGION] {
                assert!(
                    pipeline_images(&moto, region).await.is_empty(),
                    "{execution}: withdrawn in {region}"
                );
                assert_eq!(
                    parameter(&moto, region).await,
                    None,
                    "{execution}: nothing published"
                );
            }
            println!("  test stage #{n:>2} {action:<22} UnauthorizedOperation → test failed, images withdrawn");
        }
        seen += 1;
    }
    assert!(seen >= 2, "{points:?}");
}
