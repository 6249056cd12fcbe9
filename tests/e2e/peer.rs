//! Side by side with Packer 1.6.6 (scripts/setup.sh packer): the same amazon-ebs templates
//! against the same moto, `amiflow build` and `packer build`, counting the API calls each
//! makes per build with moto's recorder. Opt-in (AMIFLOW_PEER=1): it prints numbers, it
//! does not assert a ratio.
//!
//! ```sh
//! AMIFLOW_PEER=1 cargo test --workspace --test e2e peer -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::process::Command;

use amiflow_tests::lambda_harness::workspace_binary;
use amiflow_tests::{Moto, RecordedCall};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";

/// What both tools need against moto; amiflow reads the same keys (custom_endpoint_ec2 is
/// the moto URL either way).
fn against(moto: &Moto, mut builder: Value) -> Value {
    let extra = json!({
        "custom_endpoint_ec2": moto.url(),
        "skip_credential_validation": true,
        "skip_metadata_api_check": true,
        "skip_region_validation": true,
    });
    for (k, v) in extra.as_object().unwrap() {
        builder[k] = v.clone();
    }
    json!({"builders": [builder]})
}

fn basic(name: &str) -> Value {
    json!({
        "type": "amazon-ebs", "region": REGION, "source_ami": "ami-0f8848d57eb4fe2d2",
        "instance_type": "t3.micro", "communicator": "none", "ami_name": name,
    })
}

fn full(name: &str) -> Value {
    json!({
        "type": "amazon-ebs", "region": REGION, "instance_type": "t3.micro", "ami_name": name,
        "source_ami_filter": {
            "filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2", "virtualization-type": "hvm", "root-device-type": "ebs"},
            "owners": ["amazon"], "most_recent": true
        },
        "communicator": "none",
        "ami_regions": ["us-west-2"],
        "ami_users": ["111122223333"],
        "ami_groups": ["all"],
        "snapshot_users": ["111122223333"],
        "tags": {"Name": "peer {{ .SourceAMIName }}", "Base": "{{ .SourceAMI }}"},
        "snapshot_tags": {"Kind": "snapshot"},
        "run_tags": {"Purpose": "peer"},
        "ena_support": true,
        "launch_block_device_mappings": [
            {"device_name": "/dev/xvda", "volume_size": 8, "volume_type": "gp2", "delete_on_termination": true}
        ]
    })
}

fn count_by_action(calls: &[RecordedCall]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in calls {
        *m.entry(c.action.clone()).or_insert(0) += 1;
    }
    m
}

/// Runs one tool on one template; the EC2 calls it made, or the tool's output on failure.
fn run(moto: &Moto, tool: &str, template: &Value) -> Result<Vec<RecordedCall>, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("template.json");
    std::fs::write(&path, serde_json::to_string_pretty(template).unwrap()).unwrap();
    moto.start_recording().unwrap();
    let mut cmd = match tool {
        "packer" => {
            let mut c = Command::new("packer");
            c.args(["build", "-color=false"]).env("PACKER_CACHE_DIR", dir.path()).env("CHECKPOINT_DISABLE", "1").env("HOME", dir.path());
            c
        }
        _ => {
            let mut c = Command::new(workspace_binary("amiflow"));
            c.arg("build");
            c
        }
    };
    let out = cmd.arg(&path).envs(moto.env(REGION)).current_dir(dir.path()).output().map_err(|e| format!("{tool}: {e}"))?;
    moto.stop_recording().unwrap();
    if !out.status.success() {
        return Err(format!("{tool} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(moto.ec2_calls().unwrap())
}

#[test]
fn ec2_calls_per_build_amiflow_vs_packer() {
    if std::env::var("AMIFLOW_PEER").as_deref() != Ok("1") {
        eprintln!("SKIP ec2_calls_per_build_amiflow_vs_packer: opt-in, set AMIFLOW_PEER=1");
        return;
    }
    if Command::new("packer").arg("version").output().is_err() {
        eprintln!("SKIP ec2_calls_per_build_amiflow_vs_packer: packer not installed (scripts/setup.sh packer)");
        return;
    }
    let Some(moto) = Moto::start_or_skip("ec2_calls_per_build_amiflow_vs_packer") else { return };
    println!("EC2 API calls per amazon-ebs build against moto (moto's recorder):");
    for (label, make) in [("communicator none", basic as fn(&str) -> Value), ("full (copy, sharing, tags, ENA)", full)] {
        let mut counts = Vec::new();
        for tool in ["packer", "amiflow"] {
            let template = against(&moto, make(&format!("peer-{tool}-{}", label.len())));
            let calls = run(&moto, tool, &template).unwrap_or_else(|e| panic!("{label}: {e}"));
            println!("  {label:<34} {tool:<8} {:>3} calls  {:?}", calls.len(), count_by_action(&calls));
            if std::env::var_os("AMIFLOW_PEER_SEQUENCE").is_some() {
                let seq: Vec<String> = calls.iter().map(|c| format!("{}@{}", c.action, c.region)).collect();
                println!("    sequence: {}", seq.join(" "));
            }
            counts.push(calls.len());
        }
        println!("  {label:<34} amiflow/packer = {:.2}", counts[1] as f64 / counts[0] as f64);
    }
}
