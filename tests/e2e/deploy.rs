//! Operating a deployed amiflow, against moto: the janitor sweeps an aborted build by tag,
//! `amiflow start` and `amiflow watch` drive Step Functions' API (moto's executions run no
//! Lambdas: they stay RUNNING until stopped and return a canned history).

use std::time::Duration;

use amiflow::state::{BUILD_TAG, STATE_MACHINE_TAG};
use amiflow::steps::janitor::{sweep, sweep_closed_redrive_windows, StatusChangeEvent};
use amiflow_tests::Moto;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use serde_json::json;

const REGION: &str = "us-east-1";
/// The stack's own region in the janitor tests: none of the builds'.
const STACK_REGION: &str = "ap-southeast-2";
const COPY_REGION: &str = "eu-west-1";
const AMI: &str = "ami-0f8848d57eb4fe2d2";

/// The state machine the janitor tests' executions belong to (their events' ARNs name it).
const MACHINE: &str = "amiflow";

fn tags(kind: ResourceType, build: Option<&str>) -> Vec<TagSpecification> {
    build
        .map(|b| {
            vec![TagSpecification::builder()
                .resource_type(kind)
                .tags(Tag::builder().key(BUILD_TAG).value(b).build())
                .tags(Tag::builder().key(STATE_MACHINE_TAG).value(MACHINE).build())
                .build()]
        })
        .unwrap_or_default()
}

/// Every live resource of each kind in a region, as "kind id" strings.
async fn inventory(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    let mut out = Vec::new();
    for r in ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
    {
        for i in r.instances() {
            let state = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if state != "terminated" && state != "shutting-down" {
                out.push(format!("instance {}", i.instance_id().unwrap()));
            }
        }
    }
    for g in ec2
        .describe_security_groups()
        .send()
        .await
        .unwrap()
        .security_groups()
    {
        out.push(format!("sg {}", g.group_id().unwrap()));
    }
    for k in ec2.describe_key_pairs().send().await.unwrap().key_pairs() {
        out.push(format!("key {}", k.key_name().unwrap()));
    }
    for v in ec2.describe_volumes().send().await.unwrap().volumes() {
        out.push(format!("volume {}", v.volume_id().unwrap()));
    }
    for i in ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()
    {
        out.push(format!("image {}", i.image_id().unwrap()));
    }
    for s in ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
    {
        out.push(format!("snapshot {}", s.snapshot_id().unwrap()));
    }
    out
}

/// One of each resource a build makes, tagged for `build` (or untagged): (kind id) list.
async fn make_build_resources(
    ec2: &aws_sdk_ec2::Client,
    build: Option<&str>,
    label: &str,
) -> Vec<String> {
    let mut made = Vec::new();
    let sg = ec2
        .create_security_group()
        .group_name(format!("amiflow-{label}"))
        .description("e2e")
        .set_tag_specifications(Some(tags(ResourceType::SecurityGroup, build)))
        .send()
        .await
        .unwrap();
    made.push(format!("sg {}", sg.group_id().unwrap()));
    let key = ec2
        .create_key_pair()
        .key_name(format!("amiflow-{label}"))
        .set_tag_specifications(Some(tags(ResourceType::KeyPair, build)))
        .send()
        .await
        .unwrap();
    made.push(format!("key {}", key.key_name().unwrap()));
    let run = ec2
        .run_instances()
        .image_id(AMI)
        .instance_type(aws_sdk_ec2::types::InstanceType::T2Micro)
        .min_count(1)
        .max_count(1)
        .set_tag_specifications(Some(tags(ResourceType::Instance, build)))
        .send()
        .await
        .unwrap();
    let instance = run.instances()[0].instance_id().unwrap().to_string();
    made.push(format!("instance {instance}"));
    let volume = ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(1)
        .set_tag_specifications(Some(tags(ResourceType::Volume, build)))
        .send()
        .await
        .unwrap();
    made.push(format!("volume {}", volume.volume_id().unwrap()));
    let image = ec2
        .create_image()
        .instance_id(&instance)
        .name(format!("amiflow-{label}"))
        .send()
        .await
        .unwrap();
    let image_id = image.image_id().unwrap().to_string();
    made.push(format!("image {image_id}"));
    let described = ec2
        .describe_images()
        .image_ids(&image_id)
        .send()
        .await
        .unwrap();
    let snapshots: Vec<String> = described.images()[0]
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(String::from))
        .collect();
    made.extend(snapshots.iter().map(|s| format!("snapshot {s}")));
    if let Some(b) = build {
        let mut ids = vec![image_id.clone()];
        ids.extend(snapshots);
        ec2.create_tags()
            .set_resources(Some(ids))
            .tags(Tag::builder().key(BUILD_TAG).value(b).build())
            .tags(Tag::builder().key(STATE_MACHINE_TAG).value(MACHINE).build())
            .send()
            .await
            .unwrap();
    }
    made
}

/// An image registered as a run's delivered artifact: tagged with `execution`, this state
/// machine and the artifact mark.
async fn delivered_image(ec2: &aws_sdk_ec2::Client, execution: &str, name: &str) -> String {
    tagged_image(
        ec2,
        name,
        &[
            (BUILD_TAG, execution),
            (STATE_MACHINE_TAG, MACHINE),
            (amiflow::state::ARTIFACT_TAG, "web"),
        ],
    )
    .await
}

/// An image registered in the client's region, carrying `tags`.
pub(crate) async fn tagged_image(
    ec2: &aws_sdk_ec2::Client,
    name: &str,
    tags: &[(&str, &str)],
) -> String {
    let id = ec2
        .register_image()
        .name(name)
        .root_device_name("/dev/xvda")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    let tags = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect();
    ec2.create_tags()
        .resources(&id)
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
    id
}

/// Every image of the account in the client's region.
async fn image_ids(ec2: &aws_sdk_ec2::Client) -> Vec<String> {
    ec2.describe_images()
        .owners("self")
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .filter_map(|i| i.image_id().map(String::from))
        .collect()
}

/// The janitor's sweep after `execution` was aborted with `input`.
async fn sweep_aborted(
    ctx: &amiflow::Ctx,
    execution: &str,
    input: serde_json::Value,
) -> amiflow::steps::janitor::JanitorReport {
    sweep(
        ctx,
        aborted_event(execution, input),
        Duration::from_millis(100),
        Duration::from_secs(60),
    )
    .await
    .expect("the janitor sweeps")
}

fn aborted_event(name: &str, input: serde_json::Value) -> StatusChangeEvent {
    serde_json::from_value(json!({
        "version": "0", "id": "1", "detail-type": "Step Functions Execution Status Change", "source": "aws.states",
        "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": REGION,
        "resources": [format!("arn:aws:states:{REGION}:123456789012:execution:amiflow:{name}")],
        "detail": {
            "executionArn": format!("arn:aws:states:{REGION}:123456789012:execution:amiflow:{name}"),
            "stateMachineArn": format!("arn:aws:states:{REGION}:123456789012:stateMachine:amiflow"),
            "name": name, "status": "ABORTED", "startDate": 1, "stopDate": 2,
            "input": input.to_string(), "inputDetails": { "included": true }, "output": null
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_removes_everything_tagged_with_the_aborted_build_and_nothing_else() {
    let Some(moto) = Moto::start_or_skip(
        "janitor_removes_everything_tagged_with_the_aborted_build_and_nothing_else",
    ) else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let ec2 = ctx.ec2(REGION);
    let copy_ec2 = ctx.ec2(COPY_REGION);
    let baseline = inventory(&ec2).await;
    let doomed = make_build_resources(&ec2, Some("aborted-1"), "aborted").await;
    let other = make_build_resources(&ec2, Some("still-running-2"), "other").await;
    let untagged = make_build_resources(&ec2, None, "untagged").await;
    // Another stack's execution of the same name: its state machine is not the janitor's.
    let other_stack = ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(Tag::builder().key(BUILD_TAG).value("aborted-1").build())
                .tags(
                    Tag::builder()
                        .key(STATE_MACHINE_TAG)
                        .value("another-stack")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let other_stack = format!("volume {}", other_stack.volume_id().unwrap());
    // A copy region named only through a template variable.
    let copied = copy_ec2
        .create_volume()
        .availability_zone(format!("{COPY_REGION}a"))
        .size(1)
        .set_tag_specifications(Some(tags(ResourceType::Volume, Some("aborted-1"))))
        .send()
        .await
        .unwrap();
    let copied = format!("volume {}", copied.volume_id().unwrap());
    let copy_baseline: Vec<String> = inventory(&copy_ec2)
        .await
        .into_iter()
        .filter(|r| *r != copied)
        .collect();

    let input = json!({
        "template": {
            "variables": { "copy_to": COPY_REGION },
            "builders": [{ "type": "amazon-ebs", "region": REGION, "ami_regions": ["{{user `copy_to`}}"] }]
        },
        "vars": {}
    });
    // Images both runs delivered (marked artifacts): the aborted one was waiting for
    // approval (its token is there), so its image goes; the other run's stays.
    let unapproved = delivered_image(&ec2, "aborted-1", "delivered-aborted-1").await;
    let approved_elsewhere =
        delivered_image(&ec2, "still-running-2", "delivered-still-running-2").await;
    // The stack's own region is none of the build's: the approval token a run stopped while
    // waiting left there goes too, another execution's stays.
    let stack_ctx = moto.ctx(STACK_REGION).await;
    let stack_ssm = stack_ctx.ssm(STACK_REGION);
    for execution in ["aborted-1", "still-running-2"] {
        amiflow::resources::approval_token::store(&stack_ssm, execution, "token")
            .await
            .unwrap();
    }
    let report = sweep(
        &stack_ctx,
        aborted_event("aborted-1", input),
        Duration::from_millis(100),
        Duration::from_secs(60),
    )
    .await
    .expect("the janitor sweeps");
    assert!(report.swept);
    assert_eq!(
        report.regions,
        vec![COPY_REGION.to_string(), REGION.to_string()]
    );
    println!(
        "janitor removed {} resources: {:?}",
        report.removed.len(),
        report.removed
    );

    let left = inventory(&ec2).await;
    for r in &doomed {
        assert!(!left.contains(r), "{r} of the aborted build is still there");
    }
    for r in other
        .iter()
        .chain(&untagged)
        .chain(&baseline)
        .chain([&other_stack])
    {
        assert!(
            left.contains(r),
            "{r} (not the aborted build's) was removed"
        );
    }
    let copy_left = inventory(&copy_ec2).await;
    assert!(
        !copy_left.contains(&copied),
        "{copied} in {COPY_REGION} is still there"
    );
    for r in &copy_baseline {
        assert!(copy_left.contains(r), "{r} in {COPY_REGION} was removed");
    }
    // Still tagged for this state machine's execution and alive elsewhere: nothing.
    let tagged_left = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name(format!("tag:{BUILD_TAG}"))
                .values("aborted-1")
                .build(),
        )
        .filters(
            Filter::builder()
                .name(format!("tag:{STATE_MACHINE_TAG}"))
                .values(MACHINE)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(tagged_left.volumes().is_empty());
    let token = |execution: &str| {
        stack_ssm
            .get_parameter()
            .name(amiflow::resources::approval_token::parameter_name(
                execution,
            ))
            .send()
    };
    assert!(
        token("aborted-1").await.is_err(),
        "the aborted run's approval token is left"
    );
    assert!(
        token("still-running-2").await.is_ok(),
        "another run's token was removed"
    );
    let images = image_ids(&ec2).await;
    assert!(
        !images.contains(&unapproved),
        "the never-approved image is left"
    );
    assert!(
        images.contains(&approved_elsewhere),
        "another run's image was removed"
    );
    assert!(
        report
            .removed
            .iter()
            .any(|r| r == &format!("image {unapproved} ({REGION}) (never approved)")),
        "{:?}",
        report.removed
    );
    assert!(
        report
            .removed
            .iter()
            .any(|r| r.ends_with("(approval token)")),
        "{:?}",
        report.removed
    );
}

/// A scheduled build names its template by `template_s3`: the janitor reads it there, and
/// sweeps the copy region the template computes from a variable (before, it swept only the
/// event's region and left the copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_reads_a_scheduled_builds_template_for_its_regions() {
    let Some(moto) =
        Moto::start_or_skip("janitor_reads_a_scheduled_builds_template_for_its_regions")
    else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let copy_ec2 = ctx.ec2(COPY_REGION);
    let copied = copy_ec2
        .create_volume()
        .availability_zone(format!("{COPY_REGION}a"))
        .size(1)
        .set_tag_specifications(Some(tags(ResourceType::Volume, Some("scheduled-7"))))
        .send()
        .await
        .unwrap();
    let copied = format!("volume {}", copied.volume_id().unwrap());
    let template = json!({
        "variables": { "copy_to": "" },
        "builders": [{ "type": "amazon-ebs", "region": REGION, "ami_regions": ["{{user `copy_to`}}"] }]
    });
    let s3 = ctx.s3(REGION);
    s3.create_bucket().bucket("schedules").send().await.unwrap();
    s3.put_object()
        .bucket("schedules")
        .key("nightly.json")
        .body(template.to_string().into_bytes().into())
        .send()
        .await
        .unwrap();
    let input =
        json!({"template_s3": "s3://schedules/nightly.json", "vars": {"copy_to": COPY_REGION}});
    let report = sweep_aborted(&ctx, "scheduled-7", input).await;
    assert_eq!(
        report.regions,
        vec![COPY_REGION.to_string(), REGION.to_string()]
    );
    assert!(
        !inventory(&copy_ec2).await.contains(&copied),
        "{copied} in {COPY_REGION} is still there: {report:?}"
    );
}

/// Temporary roles are found as EC2 resources are: the execution's tag AND this state
/// machine's. Another stack's role for an execution of the same name stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_removes_only_its_own_stacks_temporary_roles() {
    let Some(moto) = Moto::start_or_skip("janitor_removes_only_its_own_stacks_temporary_roles")
    else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let iam = ctx.iam();
    for (role, machine) in [
        ("amiflow-ours", MACHINE),
        ("amiflow-theirs", "another-stack"),
    ] {
        iam.create_role()
            .role_name(role)
            .path(amiflow::resources::iam::IAM_PATH)
            .assume_role_policy_document(
                json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                    "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
                .to_string(),
            )
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key(BUILD_TAG)
                    .value("shared-9")
                    .build()
                    .unwrap(),
            )
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key(STATE_MACHINE_TAG)
                    .value(machine)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let input =
        json!({"template": {"builders": [{"type": "amazon-ebs", "region": REGION}]}, "vars": {}});
    let report = sweep_aborted(&ctx, "shared-9", input).await;
    let exists = |role: &'static str| {
        let iam = iam.clone();
        async move { iam.get_role().role_name(role).send().await.is_ok() }
    };
    assert!(
        !exists("amiflow-ours").await,
        "this stack's role is left: {report:?}"
    );
    assert!(
        exists("amiflow-theirs").await,
        "another stack's role was removed: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_ignores_statuses_that_need_no_sweep() {
    let Some(moto) = Moto::start_or_skip("janitor_ignores_statuses_that_need_no_sweep") else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let ec2 = ctx.ec2(REGION);
    let made = make_build_resources(&ec2, Some("succeeded-3"), "succeeded").await;
    let mut event = aborted_event(
        "succeeded-3",
        json!({ "template": { "builders": [{ "type": "amazon-ebs", "region": REGION }] } }),
    );
    event.detail.status = "SUCCEEDED".into();
    let report = sweep(
        &ctx,
        event,
        Duration::from_millis(100),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(!report.swept);
    let left = inventory(&ec2).await;
    assert!(
        made.iter().all(|r| left.contains(r)),
        "a succeeded build's artifacts must stay"
    );
}

async fn sfn_client(moto: &Moto) -> aws_sdk_sfn::Client {
    aws_sdk_sfn::Client::new(&moto.sdk_config(REGION).await)
}

async fn create_state_machine(sfn: &aws_sdk_sfn::Client) -> String {
    let definition =
        json!({ "StartAt": "Prepare", "States": { "Prepare": { "Type": "Pass", "End": true } } });
    sfn.create_state_machine()
        .name("amiflow")
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/amiflow-state-machine")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_sends_the_prepared_input_and_watch_follows_to_the_end() {
    let Some(moto) =
        Moto::start_or_skip("start_sends_the_prepared_input_and_watch_follows_to_the_end")
    else {
        return;
    };
    let sfn = sfn_client(&moto).await;
    let machine = create_state_machine(&sfn).await;
    let template = json!({
        "variables": { "region": REGION },
        "builders": [{ "type": "amazon-ebs", "region": "{{user `region`}}", "source_ami": AMI, "instance_type": "t2.micro",
            "ssh_username": "ec2-user", "ami_name": "e2e {{timestamp}}" }]
    });
    let vars = std::collections::BTreeMap::from([("region".to_string(), REGION.to_string())]);
    let input = amiflow_cli::start::execution_input(&template, &vars, "cleanup").unwrap();
    let name = amiflow_cli::start::execution_name(std::path::Path::new("basic.json"));
    let arn = amiflow_cli::start::start(&sfn, &machine, &name, &input)
        .await
        .unwrap();
    assert!(arn.ends_with(&format!(":{name}")), "{arn}");

    let described = sfn
        .describe_execution()
        .execution_arn(&arn)
        .send()
        .await
        .unwrap();
    assert_eq!(described.name(), Some(name.as_str()));
    let sent: serde_json::Value = serde_json::from_str(described.input().unwrap()).unwrap();
    assert_eq!(sent, input, "the execution got exactly the prepared input");
    assert_eq!(sent["template"]["builders"][0]["source_ami"], AMI);
    assert_eq!(described.status().as_str(), "RUNNING");

    // Stopped by hand while watched: watch renders moto's history and ends with exit code 2.
    let stopper = {
        let sfn = sfn.clone();
        let arn = arn.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            sfn.stop_execution()
                .execution_arn(arn)
                .error("Manual")
                .cause("stopped by the e2e test")
                .send()
                .await
                .unwrap();
        })
    };
    let outcome = amiflow_cli::watch::follow(
        &sfn,
        &arn,
        Duration::from_millis(200),
        Some(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    stopper.await.unwrap();
    assert_eq!(outcome.status, "ABORTED");
    assert_eq!(outcome.exit_code(), 2);
    let history = sfn
        .get_execution_history()
        .execution_arn(&arn)
        .send()
        .await
        .unwrap();
    let entered: Vec<String> = history
        .events()
        .iter()
        .filter_map(|e| e.state_entered_event_details())
        .map(|d| format!("→ {}", d.name()))
        .collect();
    assert!(!entered.is_empty(), "moto returns a history with states");
    for line in &entered {
        assert!(
            outcome.lines.contains(line),
            "watch did not show {line}: {:?}",
            outcome.lines
        );
    }
    assert_eq!(
        outcome.lines.iter().filter(|l| l.starts_with('→')).count(),
        entered.len(),
        "each event once: {:?}",
        outcome.lines
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_static_credentials_and_invalid_templates_before_calling_aws() {
    let Some(moto) = Moto::start_or_skip(
        "start_refuses_static_credentials_and_invalid_templates_before_calling_aws",
    ) else {
        return;
    };
    let sfn = sfn_client(&moto).await;
    let machine = create_state_machine(&sfn).await;
    let template = json!({ "builders": [{ "type": "amazon-ebs", "region": REGION, "access_key": "AKIAEXAMPLE", "secret_key": "wJalr" }] });
    let err = amiflow_cli::start::execution_input(&template, &Default::default(), "cleanup")
        .unwrap_err()
        .to_string();
    assert!(err.contains("history"), "{err}");
    // A template Prepare rejects is refused locally, with every problem listed.
    let incomplete = json!({ "builders": [{ "type": "amazon-ebs", "region": REGION }] });
    let input =
        amiflow_cli::start::execution_input(&incomplete, &Default::default(), "cleanup").unwrap();
    let err = amiflow_cli::start::validate_locally(&input, "e2e-invalid")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ami_name") && err.contains("source_ami"),
        "{err}"
    );
    let executions = sfn
        .list_executions()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap();
    assert!(executions.executions().is_empty(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_a_timeout_deadline_without_hanging() {
    let Some(moto) = Moto::start_or_skip("watch_reports_a_timeout_deadline_without_hanging") else {
        return;
    };
    let sfn = sfn_client(&moto).await;
    let machine = create_state_machine(&sfn).await;
    let arn =
        amiflow_cli::start::start(&sfn, &machine, "still-running", &json!({ "template": {} }))
            .await
            .unwrap();
    let outcome = amiflow_cli::watch::follow(
        &sfn,
        &arn,
        Duration::from_millis(100),
        Some(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    assert_eq!(outcome.status, "RUNNING");
    assert_eq!(
        outcome.exit_code(),
        1,
        "a watch that gave up is not a success"
    );
}

/// A Step Functions status change for the execution `name` of the state machine `amiflow`
/// (moto's ARN for it), with or without its input in the event.
fn status_event(name: &str, status: &str, input: Option<&serde_json::Value>) -> StatusChangeEvent {
    let mut event = aborted_event(name, json!({}));
    event.detail.status = status.into();
    event.detail.input = input.map(|i| i.to_string());
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_leaves_a_failed_on_error_abort_build_and_amiflow_clean_removes_it() {
    let Some(moto) = Moto::start_or_skip(
        "janitor_leaves_a_failed_on_error_abort_build_and_amiflow_clean_removes_it",
    ) else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let ec2 = ctx.ec2(REGION);
    let kept = make_build_resources(&ec2, Some("kept-1"), "kept").await;
    let other = make_build_resources(&ec2, Some("other-2"), "other").await;
    let sfn = sfn_client(&moto).await;
    let machine = create_state_machine(&sfn).await;
    let input = json!({
        "template": { "builders": [{ "type": "amazon-ebs", "region": REGION }] },
        "vars": {},
        "on_error": "abort"
    });
    let arn = amiflow_cli::start::start(&sfn, &machine, "kept-1", &input)
        .await
        .unwrap();
    assert_eq!(
        arn,
        status_event("kept-1", "FAILED", None).detail.execution_arn,
        "the event names moto's execution"
    );

    // Failed or timed out, with the input in the event or only in the execution: kept.
    for (status, event_input) in [
        ("FAILED", Some(&input)),
        ("TIMED_OUT", Some(&input)),
        ("FAILED", None),
    ] {
        let report = sweep(
            &ctx,
            status_event("kept-1", status, event_input),
            Duration::from_millis(100),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(
            report.kept_on_error_abort && !report.swept,
            "{status}, input in the event: {}: {report:?}",
            event_input.is_some()
        );
        let left = inventory(&ec2).await;
        for r in &kept {
            assert!(
                left.contains(r),
                "{status}: the janitor removed {r} of a kept build"
            );
        }
    }

    // `amiflow clean` finds the regions in the execution's input and removes the build.
    let report = amiflow_cli::clean::clean(
        &ctx,
        &arn,
        &[],
        Duration::from_millis(100),
        Duration::from_secs(60),
    )
    .await
    .expect("amiflow clean");
    assert!(!report.removed.is_empty(), "{report:?}");
    let left = inventory(&ec2).await;
    for r in &kept {
        assert!(!left.contains(r), "{r} of the cleaned build is still there");
    }
    for r in &other {
        assert!(left.contains(r), "{r} (another build's) was removed");
    }

    // Stopped by hand, a build is swept whatever on_error says (as Packer after an interrupt).
    let report = sweep(
        &ctx,
        status_event("other-2", "ABORTED", Some(&input)),
        Duration::from_millis(100),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(report.swept && !report.kept_on_error_abort, "{report:?}");
    let left = inventory(&ec2).await;
    assert!(other.iter().all(|r| !left.contains(r)), "{left:?}");
}

/// `amiflow watch` polls the history newest first, without execution data, and still shows
/// every state once (moto ignores both settings and sends its whole canned history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reads_the_history_newest_first_without_execution_data() {
    let Some(moto) =
        Moto::start_or_skip("watch_reads_the_history_newest_first_without_execution_data")
    else {
        return;
    };
    let proxy = amiflow_tests::fault_proxy::FaultProxy::start(moto.port).await;
    let sfn = aws_sdk_sfn::Client::new(&amiflow_tests::sdk_config_at(&proxy.url(), REGION).await);
    let machine = create_state_machine(&sfn).await;
    let arn = amiflow_cli::start::start(&sfn, &machine, "watched-1", &json!({ "template": {} }))
        .await
        .unwrap();
    let outcome = amiflow_cli::watch::follow(
        &sfn,
        &arn,
        Duration::from_millis(100),
        Some(Duration::from_millis(700)),
    )
    .await
    .unwrap();
    let reads: Vec<serde_json::Value> = proxy
        .log()
        .into_iter()
        .filter(|c| c.action == "GetExecutionHistory")
        .map(|c| serde_json::from_str(&c.body).unwrap())
        .collect();
    assert!(reads.len() >= 3, "watch polled: {reads:?}");
    for read in &reads {
        assert_eq!(read["reverseOrder"], true, "{read}");
        assert_eq!(read["includeExecutionData"], false, "{read}");
    }
    let entered = outcome.lines.iter().filter(|l| l.starts_with('→')).count();
    assert!(entered > 0, "{:?}", outcome.lines);
    let mut unique = outcome.lines.clone();
    unique.dedup();
    assert_eq!(unique, outcome.lines, "each event shown once");
}

/// A build kept for redrive: the janitor leaves it on every redrivable ending, and its daily
/// check sweeps it once the redrive window has closed (window of 0 days here: moto's
/// executions stop "now"), leaving builds of other modes to their own rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_keeps_a_redrive_build_until_its_redrive_window_closes() {
    let Some(moto) =
        Moto::start_or_skip("janitor_keeps_a_redrive_build_until_its_redrive_window_closes")
    else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let ec2 = ctx.ec2(REGION);
    let kept = make_build_resources(&ec2, Some("redrive-1"), "redrive").await;
    let other = make_build_resources(&ec2, Some("abort-2"), "abort").await;
    let sfn = sfn_client(&moto).await;
    let machine = create_state_machine(&sfn).await;
    let input = |on_error: &str| {
        json!({
            "template": { "builders": [{ "type": "amazon-ebs", "region": REGION }] },
            "vars": {},
            "on_error": on_error
        })
    };
    let redrive_arn = amiflow_cli::start::start(&sfn, &machine, "redrive-1", &input("redrive"))
        .await
        .unwrap();
    let abort_arn = amiflow_cli::start::start(&sfn, &machine, "abort-2", &input("abort"))
        .await
        .unwrap();
    for arn in [&redrive_arn, &abort_arn] {
        sfn.stop_execution()
            .execution_arn(arn)
            .send()
            .await
            .unwrap();
    }

    for status in ["FAILED", "TIMED_OUT", "ABORTED"] {
        let report = sweep(
            &ctx,
            status_event("redrive-1", status, None),
            Duration::from_millis(100),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(
            report.kept_for_redrive && !report.swept,
            "{status}: {report:?}"
        );
    }
    let window = |days| amiflow::steps::janitor::RedriveWindow {
        state_machine_arn: machine.clone(),
        days,
    };
    let now = chrono::Utc::now();
    let open = sweep_closed_redrive_windows(&ctx, &window(14), now)
        .await
        .unwrap();
    assert!(open.is_empty(), "still redrivable: {open:?}");
    let left = inventory(&ec2).await;
    assert!(kept.iter().all(|r| left.contains(r)), "{left:?}");

    let closed = sweep_closed_redrive_windows(&ctx, &window(0), now + chrono::Duration::minutes(1))
        .await
        .unwrap();
    let swept: Vec<&str> = closed.iter().map(|r| r.execution.as_str()).collect();
    assert_eq!(swept, vec!["redrive-1"], "only the build kept for redrive");
    let left = inventory(&ec2).await;
    for r in &kept {
        assert!(!left.contains(r), "{r} outlived its redrive window");
    }
    for r in &other {
        assert!(
            left.contains(r),
            "{r} (an aborted on_error=abort build's) was swept"
        );
    }
}

/// A pipeline run with a test stage, aborted after its images were made: the janitor removes
/// the images it did not publish, with their snapshots, and keeps the one its publish
/// parameter names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_withdraws_what_a_stopped_gated_pipeline_run_did_not_publish() {
    let Some(moto) =
        Moto::start_or_skip("janitor_withdraws_what_a_stopped_gated_pipeline_run_did_not_publish")
    else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let ec2 = ctx.ec2(REGION);
    let pipeline = json!({"name": "web", "test": {"instance_type": "t3.micro", "communicator": "ssm",
                          "provisioners": [{"type": "shell", "inline": ["true"]}]},
                          "publish": {"ssm_parameter": "/images/web/latest"}});
    // A scheduled run names its pipeline file in S3, as the stack's schedule does.
    ctx.s3(REGION)
        .create_bucket()
        .bucket("pipelines")
        .send()
        .await
        .unwrap();
    ctx.s3(REGION)
        .put_object()
        .bucket("pipelines")
        .key("web.json")
        .body(pipeline.to_string().into_bytes().into())
        .send()
        .await
        .unwrap();
    let template = json!({"builders": [{"type": "amazon-ebs", "region": REGION}]});
    for (execution, input) in [
        (
            "pipe-1",
            json!({"template": template, "vars": {}, "pipeline": pipeline}),
        ),
        (
            "pipe-2",
            json!({"template": template, "vars": {}, "pipeline_s3": "s3://pipelines/web.json"}),
        ),
    ] {
        let published = delivered_image(&ec2, execution, &format!("{execution}-published")).await;
        let untested = delivered_image(&ec2, execution, &format!("{execution}-untested")).await;
        ctx.ssm(REGION)
            .put_parameter()
            .name("/images/web/latest")
            .value(&published)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .unwrap();
        let report = sweep_aborted(&ctx, execution, input).await;
        let images = image_ids(&ec2).await;
        assert!(
            images.contains(&published),
            "{execution}: the published image was removed"
        );
        assert!(
            !images.contains(&untested),
            "{execution}: the unpublished image is left"
        );
        assert!(
            report.removed.contains(&format!(
                "image {untested} ({REGION}) (stopped before it was published)"
            )),
            "{execution}: {:?}",
            report.removed
        );
    }
    // Without `publish`: Publish's mark says the gates passed; the image that lacks it goes.
    let ungated_publish = json!({"name": "web", "approval": {"timeout": "1h"}});
    let passed = delivered_image(&ec2, "pipe-3", "pipe-3-passed").await;
    let waiting = delivered_image(&ec2, "pipe-3", "pipe-3-waiting").await;
    let amis = std::collections::BTreeMap::from([(REGION.to_string(), passed.clone())]);
    amiflow::resources::image::mark_gates_passed(&ctx, &amis)
        .await
        .unwrap();
    sweep_aborted(
        &ctx,
        "pipe-3",
        json!({"template": template, "vars": {}, "pipeline": ungated_publish}),
    )
    .await;
    let images = image_ids(&ec2).await;
    assert!(
        images.contains(&passed),
        "the image past its gates was removed"
    );
    assert!(!images.contains(&waiting), "the image still gated is left");
}

/// DeliverEvent ends a wait only on the awaited resource's event, once past the wait's
/// pending states: an event for something amiflow did not make, for a build awaiting
/// nothing or something else, or still pending, leaves the token where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_event_answers_only_the_awaited_resource_past_its_pending_states() {
    use amiflow::resources::await_token::{self, Awaited};
    use amiflow::steps::deliver_event::{run as deliver, Delivered};
    let Some(moto) = Moto::start_or_skip(
        "deliver_event_answers_only_the_awaited_resource_past_its_pending_states",
    ) else {
        return;
    };
    let ctx = moto.ctx(REGION).await;
    let ec2 = ctx.ec2(REGION);
    let build = [
        (BUILD_TAG, "ev-1"),
        (amiflow::identity::BUILD_NAME_TAG, "web"),
    ];
    let awaited_image = tagged_image(&ec2, "ev-awaited", &build).await;
    let other_image = tagged_image(&ec2, "ev-other", &build).await;
    let event = |id: &str, state: &str| {
        json!({"version": "0", "source": "aws.ec2", "detail-type": "EC2 AMI State Change",
               "region": REGION, "detail": {"ImageId": id, "State": state}})
    };
    let not_awaited = |id: &str, state: &str| Delivered::NotAwaited {
        resource: id.into(),
        state: state.into(),
    };

    assert_eq!(
        deliver(&ctx, event("ami-00000000", "available"))
            .await
            .unwrap(),
        Delivered::NotABuild {
            resource: "ami-00000000".into()
        },
        "not made by amiflow"
    );
    assert_eq!(
        deliver(&ctx, event(&awaited_image, "available"))
            .await
            .unwrap(),
        not_awaited(&awaited_image, "available"),
        "the build awaits nothing"
    );
    let token = Awaited {
        token: "token-1".into(),
        resources: vec![awaited_image.clone()],
        wait: "ImageAvailable".into(),
        execution: "ev-1".into(),
        build: "web".into(),
    };
    await_token::store(&ctx, "ev-1", "web", &token)
        .await
        .unwrap();
    for (id, state) in [
        (awaited_image.as_str(), "pending"),
        (other_image.as_str(), "available"),
    ] {
        assert_eq!(
            deliver(&ctx, event(id, state)).await.unwrap(),
            not_awaited(id, state),
            "{id} {state}"
        );
        assert_eq!(
            await_token::read(&ctx, "ev-1", "web").await.unwrap(),
            Some(token.clone()),
            "the token stays after {id} {state}"
        );
    }
    assert_eq!(
        deliver(&ctx, event(&awaited_image, "failed"))
            .await
            .unwrap(),
        Delivered::Answered {
            resource: awaited_image.clone(),
            state: "failed".into(),
            wait: "ImageAvailable".into(),
            execution: "ev-1".into(),
            build: "web".into(),
        },
        "a failed image ends the wait too: the waiting step reports it"
    );
    assert_eq!(await_token::read(&ctx, "ev-1", "web").await.unwrap(), None);
    assert_eq!(
        deliver(&ctx, event(&awaited_image, "available"))
            .await
            .unwrap(),
        not_awaited(&awaited_image, "available"),
        "answered once"
    );

    // The chroot host's SSM command carries no build tags: its wait is found by the tag on
    // the token's parameter.
    let command_event = |id: &str, status: &str| {
        json!({"version": "0", "source": "aws.ssm",
               "detail-type": "EC2 Command Invocation Status-change Notification",
               "region": REGION,
               "detail": {"command-id": id, "instance-id": "i-host", "status": status}})
    };
    let host_script = Awaited {
        token: "token-2".into(),
        resources: vec!["cmd-1".into()],
        wait: "HostScript".into(),
        execution: "ev-1".into(),
        build: "chroot".into(),
    };
    let stored = await_token::store(&ctx, "ev-1", "chroot", &host_script)
        .await
        .unwrap();
    assert_eq!(
        deliver(&ctx, command_event("cmd-1", "Success"))
            .await
            .unwrap(),
        Delivered::NotABuild {
            resource: "cmd-1".into()
        },
        "a token not yet tagged with its command is not found"
    );
    await_token::index(&ctx, &stored, "cmd-1").await.unwrap();
    let mut patching = command_event("cmd-1", "Success");
    patching["detail"]["document-name"] = json!("AWS-RunPatchBaseline");
    assert_eq!(
        deliver(&ctx, patching).await.unwrap(),
        Delivered::Ignored,
        "a command of one of AWS's documents is never a build's host script"
    );
    assert_eq!(
        deliver(&ctx, command_event("cmd-2", "Success"))
            .await
            .unwrap(),
        Delivered::NotABuild {
            resource: "cmd-2".into()
        },
        "another command"
    );
    assert_eq!(
        deliver(&ctx, command_event("cmd-1", "InProgress"))
            .await
            .unwrap(),
        not_awaited("cmd-1", "InProgress"),
        "still running"
    );
    assert_eq!(
        deliver(&ctx, command_event("cmd-1", "Failed"))
            .await
            .unwrap(),
        Delivered::Answered {
            resource: "cmd-1".into(),
            state: "Failed".into(),
            wait: "HostScript".into(),
            execution: "ev-1".into(),
            build: "chroot".into(),
        },
        "a failed script ends the wait: WaitHostScript reports it"
    );
    assert_eq!(
        await_token::read(&ctx, "ev-1", "chroot").await.unwrap(),
        None
    );
}
