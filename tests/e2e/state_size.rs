//! Step Functions refuses a state's input or output over 256 KiB (the build would fail
//! with States.DataLimitExceeded): the largest state of a build with most options that
//! grow the build state (two builders, copies to three regions, sharing, many tags, block
//! devices, a temporary instance profile), run through the committed state machine on the
//! local engine against moto, must stay under a quarter of that.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amiflow::local::LocalInvoker;
use amiflow_statemachine::{Engine, Event, RealClock, StateMachine};
use amiflow_tests::Moto;
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const COPY_REGIONS: [&str; 3] = ["us-west-2", "eu-west-1", "ap-southeast-2"];
/// Step Functions' limit on a state's input or output.
const LIMIT: usize = 256 * 1024;
/// What the largest state may take: room for templates four times as large.
const BOUND: usize = LIMIT / 4;

fn builder(name: &str) -> Value {
    let tags: serde_json::Map<String, Value> = (0..20)
        .map(|i| {
            (
                format!("Tag{i:02}"),
                json!(format!("value {i} of {{{{ .SourceAMIName }}}}")),
            )
        })
        .collect();
    json!({
        "type": "amazon-ebs",
        "name": name,
        "region": REGION,
        "ami_name": format!("amiflow-size-{name}-{{{{timestamp}}}}"),
        "ami_description": "a description of some length, as real templates have".repeat(4),
        "instance_type": "t3.micro",
        "source_ami_filter": {
            "filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2", "virtualization-type": "hvm", "root-device-type": "ebs"},
            "owners": ["amazon"],
            "most_recent": true
        },
        "communicator": "none",
        "ami_regions": COPY_REGIONS,
        "ami_users": ["111122223333", "444455556666"],
        "snapshot_users": ["111122223333"],
        "tags": tags.clone(),
        "snapshot_tags": tags.clone(),
        "run_tags": tags.clone(),
        "run_volume_tags": tags,
        "launch_block_device_mappings": [
            {"device_name": "/dev/xvda", "volume_size": 8, "volume_type": "gp3", "delete_on_termination": true},
            {"device_name": "/dev/xvdb", "volume_size": 2, "volume_type": "gp2", "delete_on_termination": true},
            {"device_name": "/dev/xvdc", "volume_size": 2, "volume_type": "gp2", "delete_on_termination": true}
        ],
        "ami_block_device_mappings": [
            {"device_name": "/dev/xvdd", "virtual_name": "ephemeral0"}
        ],
        "temporary_iam_instance_profile_policy_document": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": ["*"]}]
        },
        "user_data": "#!/bin/bash\n# a user data script of some size\n".repeat(40)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_build_state_stays_well_below_the_step_functions_limit() {
    let Some(moto) =
        Moto::start_or_skip("the_largest_build_state_stays_well_below_the_step_functions_limit")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let machine =
        StateMachine::from_json(include_str!("../../statemachine/amiflow.asl.json")).unwrap();
    let largest: Arc<Mutex<(usize, String)>> = Default::default();
    let sink = largest.clone();
    let engine = Engine::new(LocalInvoker::new(ctx))
        .with_clock(RealClock { scale: 0.001 })
        .on_event(move |e| {
            let (name, value) = match e {
                Event::StateEntered { name, input, .. } => (format!("{name} input"), input),
                Event::StateExited { name, output, .. } => (format!("{name} output"), output),
                Event::ExecutionSucceeded { output } => ("execution output".into(), output),
                _ => return,
            };
            let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0);
            let mut largest = sink.lock().unwrap();
            if size > largest.0 {
                *largest = (size, name);
            }
        });
    let template = json!({ "builders": [builder("first"), builder("second")] });
    let result = tokio::time::timeout(
        Duration::from_secs(180),
        engine.run(
            &machine,
            "state-size-1",
            json!({ "template": template, "vars": {} }),
        ),
    )
    .await
    .expect("the build ends within 180 s");
    let output = result.expect("the build succeeds");
    assert_eq!(
        output["builds"].as_array().map(|b| b.len()),
        Some(2),
        "both builds ran: {output}"
    );
    let (size, state) = largest.lock().unwrap().clone();
    println!(
        "largest state: {state}, {size} bytes ({:.1} % of Step Functions' {LIMIT})",
        size as f64 * 100.0 / LIMIT as f64
    );
    assert!(size > 1000, "the sizes were measured");
    assert!(
        size < BOUND,
        "{state} takes {size} bytes, more than a quarter of Step Functions' {LIMIT}: the build state grows too much"
    );
}
