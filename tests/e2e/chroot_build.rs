//! amazon-chroot against moto: the whole chain, with the host script run on this machine
//! (moto's SendCommand executes nothing) and the attached volume standing as a loop device
//! with a busybox root filesystem. Checks the registered AMI, the marker written by the
//! provisioner, that the volume is gone and that no mount or loop device is left.
//! Needs root (loop devices) and moto.

use std::sync::Arc;
use std::sync::LazyLock;

use amiflow::state::BUILD_TAG;
use amiflow::{BuildState, Ctx, StepError};
use amiflow_tests::Moto;
use serde_json::json;

use super::chain::{fail_and_clean, invoke_with_retry};
use super::chroot_host::{loop_devices_usable, mounts_under, LoopDisk};
use super::ebs::tagged_leftovers;
use super::faults::{each_mutating_call_fails_in_turn, LeftoversCheck, TemplateForRun};

const REGION: &str = "us-east-1";
const SOURCE_AMI: &str = "ami-0f8848d57eb4fe2d2";

/// The production chain: every test runs what is deployed.
static CHAIN: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| amiflow::flows::chain_names(amiflow_template::BuilderType::Chroot));

fn state(
    execution: &str,
    host: &str,
    mount_dir: &std::path::Path,
    ami_name: &str,
    inline: &[&str],
) -> BuildState {
    serde_json::from_value(json!({
        "execution": execution,
        "build": {
            "name": "chroot-e2e",
            "builder_type": "amazon-chroot",
            "config": {"amazon-chroot": config(host, mount_dir, ami_name)},
            "provisioners": [{"type": "shell", "inline": inline}],
        },
    }))
    .expect("a build state")
}

/// The amazon-chroot builder settings every test here uses (a template's builder, less `type`).
fn config(host: &str, mount_dir: &std::path::Path, ami_name: &str) -> serde_json::Value {
    json!({
        "region": REGION,
        "ami_name": ami_name,
        "source_ami": SOURCE_AMI,
        "chroot_host_instance_id": host,
        "mount_path": format!("{}/{{{{.Device}}}}", mount_dir.display()),
        "copy_files": ["/etc/resolv.conf"],
        "root_volume_size": 10,
        "root_volume_tags": {"Purpose": "chroot of {{ .SourceAMI }}"},
        "tags": {"Name": "amiflow chroot {{ .SourceAMIName }}"},
        "ena_support": true,
    })
}

/// The chain, then Cleanup (with `$.error` on failure), as the state machine runs it.
async fn build(ctx: &Arc<Ctx>, state: BuildState) -> (Option<StepError>, BuildState) {
    build_from(ctx, state, 0).await
}

async fn build_from(
    ctx: &Arc<Ctx>,
    mut state: BuildState,
    first: usize,
) -> (Option<StepError>, BuildState) {
    for step in &CHAIN[first..] {
        match invoke_with_retry(ctx, step, &state).await {
            Ok(s) => state = s,
            Err(e) => {
                eprintln!("  {step} failed: {e}");
                let cleaned = fail_and_clean(ctx, state, &e).await;
                return (Some(e), cleaned);
            }
        }
    }
    let cleaned = invoke_with_retry(ctx, "Cleanup", &state)
        .await
        .expect("Cleanup succeeds");
    (None, cleaned)
}

async fn start_host(ctx: &Ctx) -> String {
    let out = ctx
        .ec2(REGION)
        .run_instances()
        .image_id(SOURCE_AMI)
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

/// What the build tag still finds in moto (volumes always; images and snapshots too).
async fn tagged(ctx: &Ctx, execution: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let f = || {
        aws_sdk_ec2::types::Filter::builder()
            .name(format!("tag:{BUILD_TAG}"))
            .values(execution)
            .build()
    };
    let ec2 = ctx.ec2(REGION);
    let vols = ec2
        .describe_volumes()
        .filters(f())
        .send()
        .await
        .unwrap()
        .volumes()
        .iter()
        .map(|v| v.volume_id().unwrap().to_string())
        .collect();
    let imgs = ec2
        .describe_images()
        .owners("self")
        .filters(f())
        .send()
        .await
        .unwrap()
        .images()
        .iter()
        .map(|i| i.image_id().unwrap().to_string())
        .collect();
    let snaps = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(f())
        .send()
        .await
        .unwrap()
        .snapshots()
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_string())
        .collect();
    (vols, imgs, snaps)
}

/// The device pool is process environment, so these tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn setup(test: &str) -> Option<Moto> {
    if !loop_devices_usable(test) {
        return None;
    }
    let moto = Moto::start_or_skip(test)?;
    // moto's SendCommand runs nothing: the host script runs here, on the test's loop devices.
    std::env::set_var(amiflow::builders::chroot::RUN_MODE_ENV, "local");
    Some(moto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_build_registers_the_provisioned_volume_and_leaves_no_volume() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(moto) =
        setup("chroot_build::chroot_build_registers_the_provisioned_volume_and_leaves_no_volume")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let host = start_host(&ctx).await;
    let disk = LoopDisk::new();
    let mounts = disk.dir.path().join("mnt");
    std::env::set_var("AMIFLOW_CHROOT_TEST_DEVICES", &disk.device);
    let execution = "chroot-e2e-ok";
    moto.start_recording().unwrap();
    let s = state(
        execution,
        &host,
        &mounts,
        "amiflow-chroot-e2e",
        &[
            "echo built-by-amiflow > /etc/amiflow-marker",
            "test -s /etc/resolv.conf",
        ],
    );
    let (failure, done) = build(&ctx, s).await;
    moto.stop_recording().unwrap();
    assert!(failure.is_none(), "the build failed: {failure:?}");

    let ami = done
        .data
        .amis
        .get(REGION)
        .cloned()
        .expect("an AMI in the state");
    let img = ctx
        .ec2(REGION)
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .unwrap()
        .images()[0]
        .clone();
    assert_eq!(img.name(), Some("amiflow-chroot-e2e"));
    // moto does not echo EnaSupport from RegisterImage, so ena_support is not checked here.
    let root = img.root_device_name().unwrap().to_string();
    let root_map = img
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some(root.as_str()))
        .expect("root mapping");
    assert!(
        root_map.ebs().and_then(|e| e.snapshot_id()).is_some(),
        "the root mapping has no snapshot"
    );
    // The build's own snapshot (ledger) and the image's: the same on EC2; moto's RegisterImage
    // makes an extra "Auto-created snapshot for AMI" instead of using the given one.
    let mut artifact_snaps: Vec<String> = done
        .ledger
        .of_kind(amiflow::state::ResourceKind::Snapshot)
        .map(|r| r.id.clone())
        .collect();
    for m in img.block_device_mappings() {
        if let Some(id) = m.ebs().and_then(|e| e.snapshot_id()) {
            if !artifact_snaps.iter().any(|s| s == id) {
                artifact_snaps.push(id.to_string());
            }
        }
    }
    artifact_snaps.sort();
    assert!(
        img.tags().iter().any(|t| t.key() == Some("Name")
            && t.value()
                .is_some_and(|v| v.starts_with("amiflow chroot amzn2-ami-hvm"))),
        "tags rendered with the source AMI's name: {:?}",
        img.tags()
    );

    assert_eq!(
        disk.read_file("/etc/amiflow-marker").as_deref(),
        Some("built-by-amiflow\n"),
        "the provisioner's marker is not on the volume"
    );
    assert_eq!(
        disk.read_file("/etc/resolv.conf"),
        None,
        "copy_files not undone"
    );
    let (vols, imgs, snaps) = tagged(&ctx, execution).await;
    assert!(vols.is_empty(), "build volumes left: {vols:?}");
    assert_eq!(imgs, vec![ami.clone()], "only the artifact image stays");
    let mut snaps = snaps;
    snaps.sort();
    assert_eq!(snaps, artifact_snaps, "only the artifact's snapshots stay");
    assert!(mounts_under(disk.dir.path()).is_empty());
    let ec2 = moto.ec2_calls().unwrap();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for c in &ec2 {
        *counts.entry(c.action.clone()).or_default() += 1;
    }
    eprintln!(
        "amiflow amazon-chroot: {} EC2 calls per build: {counts:?}",
        ec2.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_build_with_a_failing_provisioner_leaves_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(moto) = setup("chroot_build::chroot_build_with_a_failing_provisioner_leaves_nothing")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let host = start_host(&ctx).await;
    let disk = LoopDisk::new();
    std::env::set_var("AMIFLOW_CHROOT_TEST_DEVICES", &disk.device);
    let execution = "chroot-e2e-fail";
    let s = state(
        execution,
        &host,
        &disk.dir.path().join("mnt"),
        "amiflow-chroot-fail",
        &["echo half > /half", "exit 3"],
    );
    let (failure, done) = build(&ctx, s).await;
    let failure = failure.expect("the build must fail");
    assert!(
        failure.message().contains("FAILED at provision (exit 3)"),
        "{failure}"
    );
    assert!(done.data.amis.is_empty());
    let (vols, imgs, snaps) = tagged(&ctx, execution).await;
    assert!(
        vols.is_empty() && imgs.is_empty() && snaps.is_empty(),
        "left after a failure: {vols:?} {imgs:?} {snaps:?}"
    );
    assert!(mounts_under(disk.dir.path()).is_empty(), "mounts left");
    assert_eq!(disk.read_file("/half").as_deref(), Some("half\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chroot_builds_on_one_host_at_once_both_succeed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(moto) = setup("chroot_build::two_chroot_builds_on_one_host_at_once_both_succeed")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let host = start_host(&ctx).await;
    let (a, b) = (LoopDisk::new(), LoopDisk::new());
    let mnt = a.dir.path().join("mnt");
    let sa = state(
        "chroot-e2e-par-a",
        &host,
        &mnt,
        "amiflow-chroot-par-a",
        &["echo a > /who"],
    );
    let sb = state(
        "chroot-e2e-par-b",
        &host,
        &mnt,
        "amiflow-chroot-par-b",
        &["echo b > /who"],
    );
    // moto does not refuse a device name already in use (EC2 answers InvalidParameterValue and
    // AttachVolume takes the next), so A attaches first and B chooses while A's volume is
    // attached. Each volume is then bound to its own loop device (on EC2 the volume id finds
    // it), and both run their host scripts, snapshots and registrations at once.
    let attached = CHAIN
        .iter()
        .position(|s| *s == "WaitVolumeAttached")
        .unwrap();
    let (mut sa, mut sb) = (sa, sb);
    for step in &CHAIN[..attached] {
        sa = invoke_with_retry(&ctx, step, &sa)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    for step in &CHAIN[..attached] {
        sb = invoke_with_retry(&ctx, step, &sb)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    let volume = |s: &BuildState| {
        s.data.extra["chroot_volume"]["volume_id"]
            .as_str()
            .expect("the build's volume")
            .to_string()
    };
    std::env::set_var(
        "AMIFLOW_CHROOT_TEST_DEVICES",
        format!("{}={} {}={}", volume(&sa), a.device, volume(&sb), b.device),
    );
    let ((fa, da), (fb, db)) = tokio::join!(
        build_from(&ctx, sa, attached),
        build_from(&ctx, sb, attached)
    );
    assert!(
        fa.is_none() && fb.is_none(),
        "a parallel build failed: {fa:?} {fb:?}"
    );
    let dev = |s: &BuildState| {
        s.data.extra["chroot_volume"]["device"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(
        dev(&da),
        dev(&db),
        "both builds attached under the same device name"
    );
    assert_eq!(
        (
            a.read_file("/who").unwrap_or_default(),
            b.read_file("/who").unwrap_or_default()
        ),
        ("a\n".to_string(), "b\n".to_string()),
        "each build provisioned its own volume's device"
    );
    for e in ["chroot-e2e-par-a", "chroot-e2e-par-b"] {
        let (vols, imgs, _) = tagged(&ctx, e).await;
        assert!(vols.is_empty(), "{e}: volumes left: {vols:?}");
        assert_eq!(imgs.len(), 1, "{e}: one AMI");
    }
    assert!(mounts_under(a.dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_mode_sends_the_script_inline_and_waits_for_the_invocation() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(moto) =
        setup("chroot_build::ssm_mode_sends_the_script_inline_and_waits_for_the_invocation")
    else {
        return;
    };
    std::env::set_var(amiflow::builders::chroot::RUN_MODE_ENV, "ssm");
    let ctx = Arc::new(moto.ctx(REGION).await);
    let host = start_host(&ctx).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = state(
        "chroot-e2e-ssm",
        &host,
        dir.path(),
        "amiflow-chroot-ssm",
        &["true"],
    );
    let upto = CHAIN.iter().position(|s| *s == "DetachVolume").unwrap();
    let mut before_send = None;
    for step in &CHAIN[..upto] {
        if *step == "RunHostScript" {
            before_send = Some(s.clone());
        }
        s = invoke_with_retry(&ctx, step, &s)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    // RunHostScript replayed (its first answer lost): the same command, not a second script.
    let replayed = invoke_with_retry(&ctx, "RunHostScript", &before_send.unwrap())
        .await
        .expect("RunHostScript replayed");
    std::env::set_var(amiflow::builders::chroot::RUN_MODE_ENV, "local");
    let cmd = &s.data.extra["chroot_command"];
    assert_eq!(cmd["via"], "ssm", "{cmd}");
    assert_eq!(cmd["instance_id"], host.as_str());
    assert_eq!(replayed.data.extra["chroot_command"], *cmd);
    let on_host = ctx
        .ssm(REGION)
        .list_commands()
        .instance_id(&host)
        .send()
        .await
        .unwrap();
    assert_eq!(on_host.commands().len(), 1, "one command sent to the host");
    let id = cmd["command_id"].as_str().unwrap();
    let sent = ctx
        .ssm(REGION)
        .list_commands()
        .command_id(id)
        .send()
        .await
        .unwrap();
    let params = sent.commands()[0].parameters().cloned().unwrap_or_default();
    let inline = params
        .get("commands")
        .and_then(|c| c.first())
        .cloned()
        .unwrap_or_default();
    assert!(
        inline.contains("amiflow chroot host script") && inline.contains("--job-base64"),
        "the command does not carry the host script"
    );
    let cleaned = invoke_with_retry(&ctx, "Cleanup", &s)
        .await
        .expect("Cleanup");
    assert!(cleaned
        .ledger
        .of_kind(amiflow::state::ResourceKind::Volume)
        .next()
        .is_none());
    let (vols, _, _) = tagged(&ctx, "chroot-e2e-ssm").await;
    assert!(
        vols.is_empty(),
        "volume left after Cleanup detached it: {vols:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chroot_each_mutating_call_failing_in_turn_leaves_nothing_behind() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(moto) =
        setup("chroot_build::chroot_each_mutating_call_failing_in_turn_leaves_nothing_behind")
    else {
        return;
    };
    let disk = LoopDisk::new();
    std::env::set_var("AMIFLOW_CHROOT_TEST_DEVICES", &disk.device);
    let direct = Arc::new(moto.ctx(REGION).await);
    // moto is reset before every run: each run starts its own host, directly (not through
    // the proxy, so the host is no failure point and no leftover).
    let template: TemplateForRun = {
        let ctx = direct.clone();
        let mount_dir = disk.dir.path().join("mnt");
        Box::new(move || {
            let (ctx, mount_dir) = (ctx.clone(), mount_dir.clone());
            Box::pin(async move {
                let host = start_host(&ctx).await;
                let mut builder = config(&host, &mount_dir, "amiflow-chroot-faults");
                builder["type"] = json!("amazon-chroot");
                json!({
                    "builders": [builder],
                    "provisioners": [{"type": "shell", "inline": ["echo faults > /marker"]}],
                })
                .to_string()
            })
        })
    };
    let check: LeftoversCheck = Box::new(move |execution, built| {
        let ctx = direct.clone();
        Box::pin(
            async move { tagged_leftovers(&ctx, &execution, &[REGION], built.is_none()).await },
        )
    });
    each_mutating_call_fails_in_turn(&moto, "amazon-chroot", template, check, usize::MAX).await;
    assert!(
        mounts_under(disk.dir.path()).is_empty(),
        "a run left mounts under {}",
        disk.dir.path().display()
    );
}
