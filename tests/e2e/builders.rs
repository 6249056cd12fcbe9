//! amazon-ebssurrogate, amazon-ebsvolume and amazon-instance against moto, each run through
//! the committed state machine on the local engine with the real handlers in-process; the
//! instance builder bundles over SSH on the throwaway sshd. Then what moto holds is checked,
//! and a failure injected after each step must leave nothing tagged with the build.

use std::sync::{Arc, Mutex};

use amiflow::state::BUILD_TAG;
use amiflow::{flows, Ctx, StepError};
use amiflow_statemachine::{
    resource_name, Engine, ExecutionError, StateMachine, TaskError, TaskInvoker, VirtualClock,
};
use amiflow_template::BuilderType;
use amiflow_tests::sshd::Sshd;
use amiflow_tests::Moto;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::ebs::tagged_leftovers;
use crate::faults::{each_mutating_call_fails_in_turn, same_template, LeftoversCheck};

/// At most this many failure points per builder in the fault-proxy runs (sampled evenly
/// when a build makes more mutating calls): keeps each builder's loop near a minute.
const FAULT_POINTS: usize = 40;

const REGION: &str = "us-east-1";
pub(crate) const COPY_REGION: &str = "us-west-2";
const SHARE_USER: &str = "210987654321";

/// Runs every Task with the registry's real handler; optionally fails right after one
/// step has done its work (its result is lost, as when a Lambda dies after the AWS call);
/// `replayed` steps run twice on the same input, the first result lost (a retried Lambda).
struct InProcess {
    ctx: Arc<Ctx>,
    fail_after: Option<String>,
    replayed: Vec<String>,
    calls: Mutex<Vec<String>>,
}

impl TaskInvoker for InProcess {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
        let step = resource_name(resource).to_string();
        self.calls.lock().unwrap().push(step.clone());
        let spec = flows::find(&step).ok_or_else(|| {
            TaskError::new("BuildFailed", format!("step {step} is not registered"))
        })?;
        if self.replayed.contains(&step) {
            let first = (spec.handler)(self.ctx.clone(), input.clone()).await;
            assert!(
                first.is_ok() || matches!(first, Err(StepError::NotReady(_))),
                "{step}, first run: {first:?}"
            );
        }
        match (spec.handler)(self.ctx.clone(), input).await {
            Ok(out) if self.fail_after.as_deref() == Some(step.as_str()) => {
                let _ = out;
                Err(TaskError::new(
                    "BuildFailed",
                    format!("injected failure after {step}"),
                ))
            }
            Ok(out) => Ok(out),
            Err(e) => {
                if matches!(e, StepError::NotReady(_) | StepError::Transient(_)) {
                    // The virtual clock does not wait: give moto a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(TaskError::new(e.name(), e.message()))
            }
        }
    }
}

/// A whole build that must succeed, with moto's EC2 recorder on; prints the number of EC2
/// calls and task invocations under `label` (the figures compare-packer reports).
async fn recorded_build(
    moto: &Moto,
    ctx: &Arc<Ctx>,
    execution: &str,
    template: Value,
    label: &str,
) -> Value {
    moto.start_recording().unwrap();
    let (out, calls) = run_build(ctx, execution, template, None).await;
    moto.stop_recording().unwrap();
    let out = out.unwrap_or_else(|e| panic!("the build fails: {e:?}\ncalls: {calls:?}"));
    println!(
        "{label}: {} EC2 calls, {} task invocations",
        moto.ec2_calls().unwrap().len(),
        calls.len()
    );
    out
}

async fn run_build(
    ctx: &Arc<Ctx>,
    execution: &str,
    template: Value,
    fail_after: Option<&str>,
) -> (Result<Value, ExecutionError>, Vec<String>) {
    run_build_replaying(ctx, execution, template, fail_after, &[]).await
}

async fn run_build_replaying(
    ctx: &Arc<Ctx>,
    execution: &str,
    template: Value,
    fail_after: Option<&str>,
    replayed: &[&str],
) -> (Result<Value, ExecutionError>, Vec<String>) {
    let replayed = replayed.iter().map(|s| s.to_string()).collect();
    let invoker = Arc::new(InProcess {
        ctx: ctx.clone(),
        fail_after: fail_after.map(String::from),
        replayed,
        calls: Mutex::default(),
    });
    let engine = Engine::from_arc(invoker.clone()).with_clock(VirtualClock::default());
    let def = StateMachine::from_json(&flows::render()).expect("the flows render valid ASL");
    let out = engine
        .run(&def, execution, json!({"template": template}))
        .await;
    let calls = invoker.calls.lock().unwrap().clone();
    (out, calls)
}

fn amzn2_filter() -> Value {
    json!({"filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2", "root-device-type": "ebs"}, "owners": ["amazon"], "most_recent": true})
}

pub(crate) fn surrogate_template(ami_name: &str) -> Value {
    json!({"builders": [{
        "type": "amazon-ebssurrogate",
        "name": "surrogate",
        "region": REGION,
        "source_ami_filter": amzn2_filter(),
        "instance_type": "t3.micro",
        "communicator": "none",
        "launch_block_device_mappings": [
            {"device_name": "/dev/xvdf", "volume_size": 8, "volume_type": "gp3", "delete_on_termination": true},
            {"device_name": "/dev/xvdg", "volume_size": 4, "volume_type": "gp2", "delete_on_termination": false, "omit_from_artifact": true}
        ],
        "ami_root_device": {"source_device_name": "/dev/xvdf", "device_name": "/dev/xvda", "delete_on_termination": true, "volume_size": 8, "volume_type": "gp3"},
        "ami_virtualization_type": "hvm",
        "ami_architecture": "x86_64",
        "boot_mode": "uefi",
        "tpm_support": "v2.0",
        "ena_support": true,
        "snapshot_description": "surrogate root",
        "snapshot_tags": {"Kind": "surrogate"},
        "tags": {"Name": "surrogate {{ .SourceAMIName }}"},
        "run_volume_tags": {"Building": "yes"},
        "ami_name": ami_name,
        "ami_regions": [COPY_REGION]
    }]})
}

pub(crate) fn ebsvolume_template() -> Value {
    json!({"builders": [{
        "type": "amazon-ebsvolume",
        "name": "volumes",
        "region": REGION,
        "source_ami_filter": amzn2_filter(),
        "instance_type": "t3.micro",
        "communicator": "none",
        "run_volume_tags": {"Building": "true"},
        "ebs_volumes": [
            {"device_name": "/dev/xvdf", "volume_type": "gp3", "volume_size": 10, "delete_on_termination": false,
             "tags": {"Name": "dataset", "Source": "{{ .SourceAMI }}"},
             "snapshot_volume": true, "snapshot_description": "dataset snapshot", "snapshot_tags": {"Name": "dataset-snapshot"},
             "snapshot_users": [SHARE_USER]},
            {"device_name": "/dev/xvdg", "volume_type": "gp2", "volume_size": 2, "delete_on_termination": false, "tags": {"Name": "scratch"}},
            {"device_name": "/dev/xvdh", "volume_type": "gp2", "volume_size": 1, "delete_on_termination": true}
        ]
    }]})
}

pub(crate) struct InstanceFixture {
    pub(crate) sshd: Sshd,
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

pub(crate) const BUCKET: &str = "amiflow-e2e-bundles";

pub(crate) fn instance_fixture() -> Option<InstanceFixture> {
    let sshd = match Sshd::start() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIP amazon-instance e2e: {why}");
            return None;
        }
    };
    let (cert, key) = fake_x509_pair(&sshd, "local");
    Some(InstanceFixture { sshd, cert, key })
}

/// The key material of [`fake_x509_pair`]'s key, which no output may show.
pub(crate) const FAKE_X509_KEY_MATERIAL: &str = "FAKEX509KEYMATERIAL";

/// A fake X.509 certificate and key for amazon-instance, `<name>-cert.pem` and
/// `<name>-key.pem` in the sshd's folder.
pub(crate) fn fake_x509_pair(sshd: &Sshd, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = sshd.path(&format!("{name}-cert.pem"));
    let key = sshd.path(&format!("{name}-key.pem"));
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nFAKECERT\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &key,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{FAKE_X509_KEY_MATERIAL}\n-----END PRIVATE KEY-----\n"
        ),
    )
    .unwrap();
    (cert, key)
}

/// A stand-in for `ec2-bundle-vol`: checks the uploaded X.509 pair is there and writes a
/// manifest and one part where the bundle goes.
pub(crate) const FAKE_BUNDLE_VOL_COMMAND: &str = "mkdir -p {{.Destination}} && test -s {{.KeyPath}} && test -s {{.CertPath}} && \
               printf '<manifest account=\"{{.AccountId}}\" arch=\"{{.Architecture}}\" exclude=\"{{.PrivatePath}}/*\"/>' > {{.Destination}}/{{.Prefix}}.manifest.xml && \
               echo part0 > {{.Destination}}/{{.Prefix}}.part.00";

/// `bundle_vol_command` writes a fake bundle (checking the uploaded key is there);
/// `bundle_upload_command` PUTs it into moto's S3 with curl (moto does not check signatures).
pub(crate) fn instance_template(
    f: &InstanceFixture,
    moto: &Moto,
    upload_override: Option<&str>,
) -> Value {
    let dest = f.sshd.path("bundle");
    let x509 = f.sshd.path("x509");
    let vol = FAKE_BUNDLE_VOL_COMMAND;
    let upload = format!(
        "m={{{{.ManifestPath}}}}; for f in $m ${{m%.manifest.xml}}.part.00; do \
         curl -sf -T $f {}/{{{{.BucketName}}}}/$(basename $f) >/dev/null || exit 1; done; \
         test -n '{{{{.AccessKey}}}}' && test -n '{{{{.SecretKey}}}}' && test '{{{{.Region}}}}' = {REGION} && test -d {{{{.BundleDirectory}}}}",
        moto.url()
    );
    json!({"builders": [{
        "type": "amazon-instance",
        "name": "instance-store",
        "region": REGION,
        "source_ami_filter": amzn2_filter(),
        "instance_type": "m3.medium",
        "communicator": "ssh",
        "ssh_host": "127.0.0.1",
        "ssh_port": f.sshd.port,
        "ssh_username": f.sshd.user,
        "ssh_private_key_file": f.sshd.client_key.to_string_lossy(),
        "account_id": "0123-4567-0890",
        "s3_bucket": BUCKET,
        "x509_cert_path": f.cert.to_string_lossy(),
        "x509_key_path": f.key.to_string_lossy(),
        "x509_upload_path": x509.to_string_lossy(),
        "bundle_destination": dest.to_string_lossy(),
        "bundle_prefix": "web-{{timestamp}}",
        "bundle_vol_command": vol,
        "bundle_upload_command": upload_override.map(String::from).unwrap_or(upload),
        "ami_name": "amiflow-e2e-instance-store",
        "ami_virtualization_type": "hvm",
        "tags": {"Name": "instance-store"}
    }]})
}

/// Request bodies moto's recorder saw for one EC2 action (URL-encoded query strings).
fn recorded_bodies(moto: &Moto, action: &str) -> Vec<String> {
    let (_, body) = moto
        .http("GET", "/moto-api/recorder/download-recording", "")
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    body.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let raw = v["body"].as_str().unwrap_or("").to_string();
            if v["body_encoded"].as_bool() == Some(true) {
                String::from_utf8_lossy(&b64.decode(raw).unwrap_or_default()).to_string()
            } else {
                raw
            }
        })
        .filter(|b| b.contains(&format!("Action={action}&")))
        .map(|b| b.replace("%2F", "/"))
        .collect()
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn only_build(out: &Value) -> &Value {
    let builds = out["builds"].as_array().expect("Finalize lists the builds");
    assert_eq!(builds.len(), 1, "{out:#}");
    &builds[0]
}

async fn bucket_objects(ctx: &Ctx) -> Vec<String> {
    match ctx.s3(REGION).list_objects_v2().bucket(BUCKET).send().await {
        Ok(out) => out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn bucket_exists(ctx: &Ctx) -> bool {
    ctx.s3(REGION)
        .head_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebssurrogate_build_registers_the_surrogate_volume_as_root() {
    let Some(moto) =
        Moto::start_or_skip("ebssurrogate_build_registers_the_surrogate_volume_as_root")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-surrogate";
    let out = recorded_build(
        &moto,
        &ctx,
        execution,
        surrogate_template("amiflow-e2e-surrogate"),
        "ebssurrogate",
    )
    .await;
    let b = only_build(&out);
    assert!(b.get("error").is_none(), "{b:#}");
    let east = b["amis"][REGION]
        .as_str()
        .expect("an AMI in the build region")
        .to_string();
    let west = b["amis"][COPY_REGION]
        .as_str()
        .expect("a copy in ami_regions")
        .to_string();
    assert_eq!(
        b["artifact_id"],
        json!(format!("{REGION}:{east},{COPY_REGION}:{west}"))
    );
    assert_eq!(
        b["artifact"],
        json!(format!(
            "AMIs were created:\n{REGION}: {east}\n{COPY_REGION}: {west}\n"
        ))
    );

    // RegisterImage as Packer calls it: xvdf's snapshot renamed to the root, xvdg omitted.
    let reg = recorded_bodies(&moto, "RegisterImage");
    assert_eq!(reg.len(), 1, "{reg:?}");
    let r = &reg[0];
    for want in [
        "RootDeviceName=/dev/xvda",
        "VirtualizationType=hvm",
        "Architecture=x86_64",
        "BootMode=uefi",
        "TpmSupport=v2.0",
        "EnaSupport=true",
        "DeviceName=/dev/xvda",
    ] {
        assert!(r.contains(want), "RegisterImage lacks {want}: {r}");
    }
    assert!(
        !r.contains("xvdg") && !r.contains("xvdf"),
        "omitted/renamed devices in RegisterImage: {r}"
    );
    let snaps = recorded_bodies(&moto, "CreateSnapshot");
    assert_eq!(
        snaps.len(),
        1,
        "one snapshot: the non-omitted launch volume"
    );
    let snap_id = r
        .split('&')
        .find_map(|kv| kv.strip_prefix("BlockDeviceMapping.1.Ebs.SnapshotId="))
        .expect("the root mapping has a snapshot")
        .to_string();

    let ec2 = ctx.ec2(REGION);
    let s = ec2
        .describe_snapshots()
        .snapshot_ids(&snap_id)
        .send()
        .await
        .unwrap();
    let s = &s.snapshots()[0];
    assert_eq!(tag(s.tags(), "Kind"), Some("surrogate"));
    assert_eq!(tag(s.tags(), BUILD_TAG), Some(execution));
    assert_eq!(s.description(), Some("surrogate root"));
    let img = ec2.describe_images().image_ids(&east).send().await.unwrap();
    let img = &img.images()[0];
    assert!(
        tag(img.tags(), "Name")
            .unwrap_or("")
            .starts_with("surrogate amzn2-ami-hvm-"),
        "{:?}",
        img.tags()
    );

    let left = tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], false).await;
    assert!(
        left.is_empty(),
        "left behind after a successful build: {left:#?}"
    );
}

/// The surrogate template with `use_create_image`: the surrogate volume is swapped into the
/// root slot and CreateImage images the instance. The source's own root is launched
/// explicitly (moto gives an instance no root volume when mappings are given) and omitted.
fn surrogate_create_image_template(ami_name: &str) -> Value {
    let mut t = surrogate_template(ami_name);
    let b = &mut t["builders"][0];
    b["use_create_image"] = json!(true);
    let root = json!({"device_name": "/dev/xvda", "volume_size": 8, "volume_type": "gp2", "delete_on_termination": true, "omit_from_artifact": true});
    b["launch_block_device_mappings"]
        .as_array_mut()
        .unwrap()
        .insert(0, root);
    t
}

/// The CreateImage requests moto took: it answers 500 to one tagging the image's snapshots at
/// creation (steps/create_image.rs `send_tagged`), which then comes again without.
fn accepted_create_images(moto: &Moto) -> Vec<String> {
    recorded_bodies(moto, "CreateImage")
        .into_iter()
        .filter(|b| !b.contains("ResourceType=snapshot"))
        .collect()
}

fn form_value<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebssurrogate_use_create_image_swaps_the_surrogate_into_the_root_slot() {
    let Some(moto) =
        Moto::start_or_skip("ebssurrogate_use_create_image_swaps_the_surrogate_into_the_root_slot")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-surrogate-swap";
    let out = recorded_build(
        &moto,
        &ctx,
        execution,
        surrogate_create_image_template("amiflow-e2e-surrogate-swap"),
        "ebssurrogate use_create_image",
    )
    .await;
    let b = only_build(&out);
    assert!(b.get("error").is_none(), "{b:#}");
    let east = b["amis"][REGION]
        .as_str()
        .expect("an AMI in the build region")
        .to_string();
    assert!(
        b["amis"][COPY_REGION].is_string(),
        "a copy in ami_regions: {b:#}"
    );

    // Packer's StepSwapVolumes: the original root, the surrogate and the omitted volume
    // come off (each DetachVolume names the instance), the surrogate goes on as the root.
    let detached = recorded_bodies(&moto, "DetachVolume");
    assert_eq!(
        detached.len(),
        3,
        "root, /dev/xvdf, /dev/xvdg: {detached:#?}"
    );
    assert!(
        detached
            .iter()
            .all(|d| form_value(d, "InstanceId").is_some()),
        "{detached:#?}"
    );
    let attached = recorded_bodies(&moto, "AttachVolume");
    assert_eq!(attached.len(), 1, "{attached:#?}");
    assert_eq!(form_value(&attached[0], "Device"), Some("/dev/xvda"));
    let surrogate_volume = form_value(&attached[0], "VolumeId").unwrap().to_string();
    let detached_ids: Vec<&str> = detached
        .iter()
        .filter_map(|d| form_value(d, "VolumeId"))
        .collect();
    assert!(
        detached_ids.contains(&surrogate_volume.as_str()),
        "the surrogate was detached first"
    );
    let created = accepted_create_images(&moto);
    assert_eq!(
        created.len(),
        1,
        "CreateImage instead of RegisterImage: {created:#?}"
    );
    assert!(
        recorded_bodies(&moto, "CreateImage")
            .iter()
            .any(|b| b.contains("ResourceType=snapshot")),
        "the image's snapshots are tagged at creation where EC2 takes it"
    );
    assert!(
        recorded_bodies(&moto, "RegisterImage").is_empty()
            && recorded_bodies(&moto, "CreateSnapshot").is_empty(),
        "no snapshot path"
    );
    let c = &created[0];
    assert!(
        c.contains("DeviceName=/dev/xvda") && !c.contains("xvdg") && !c.contains("xvdf"),
        "CreateImage mappings: {c}"
    );

    let ec2 = ctx.ec2(REGION);
    let img = ec2.describe_images().image_ids(&east).send().await.unwrap();
    assert_eq!(img.images().len(), 1);
    // The swapped-out volumes (original root, omitted xvdg) are gone with the instance.
    for v in detached_ids.iter().filter(|v| **v != surrogate_volume) {
        let left = ec2
            .describe_volumes()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("volume-id")
                    .values(*v)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert!(
            left.volumes().is_empty(),
            "swapped-out volume {v} left: {:?}",
            left.volumes()
        );
    }
    let left = tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], false).await;
    assert!(
        left.is_empty(),
        "left behind after a successful build: {left:#?}"
    );
}

/// Each swap step run twice on the same input (the first result lost, as when a Lambda
/// times out after its calls): the second run finds the surrogate by its mark and its own
/// attachment, and the build still makes its AMI and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebssurrogate_swap_steps_survive_a_lost_result() {
    let Some(moto) = Moto::start_or_skip("ebssurrogate_swap_steps_survive_a_lost_result") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-surrogate-swap-replay";
    moto.start_recording().unwrap();
    let replayed = [
        "SwapVolumes",
        "AttachRootVolume",
        "WaitRootVolumeAttached",
        "RegisterImage",
    ];
    let (out, calls) = run_build_replaying(
        &ctx,
        execution,
        surrogate_create_image_template("amiflow-e2e-surrogate-replay"),
        None,
        &replayed,
    )
    .await;
    moto.stop_recording().unwrap();
    let out = out.unwrap_or_else(|e| panic!("the build fails: {e:?}\ncalls: {calls:?}"));
    let b = only_build(&out);
    assert!(b["amis"][REGION].is_string(), "{b:#}");
    assert_eq!(
        recorded_bodies(&moto, "AttachVolume").len(),
        1,
        "the retried AttachRootVolume found its attachment"
    );
    assert_eq!(
        accepted_create_images(&moto).len(),
        1,
        "the retried RegisterImage found its image"
    );
    let left = tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], false).await;
    assert!(left.is_empty(), "left behind: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebsvolume_build_keeps_the_volumes_with_their_tags() {
    let Some(moto) = Moto::start_or_skip("ebsvolume_build_keeps_the_volumes_with_their_tags")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebsvolume";
    let out = recorded_build(&moto, &ctx, execution, ebsvolume_template(), "ebsvolume").await;
    let b = only_build(&out);
    let vols: Vec<String> =
        serde_json::from_value(b["volumes"][REGION].clone()).expect("volumes per region");
    let snaps: Vec<String> =
        serde_json::from_value(b["snapshots"][REGION].clone()).expect("snapshots per region");
    assert_eq!((vols.len(), snaps.len()), (2, 1), "{b:#}");
    let mut pairs: Vec<String> = vols
        .iter()
        .chain(&snaps)
        .map(|id| format!("{REGION}:{id}"))
        .collect();
    pairs.sort();
    assert_eq!(b["artifact_id"], json!(pairs.join(",")));
    let lines: Vec<String> = pairs.iter().map(|p| p.replacen(':', ": ", 1)).collect();
    assert_eq!(
        b["artifact"],
        json!(format!(
            "EBS Volumes were created:\n\n{}\n",
            lines.join("\n")
        )),
        "Packer's artifact string"
    );

    let ec2 = ctx.ec2(REGION);
    let source = ec2
        .describe_instances()
        .filters(amiflow::identity::build_filter(execution))
        .send()
        .await
        .unwrap();
    let instance = &source.reservations()[0].instances()[0];
    assert_eq!(
        instance.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("terminated"),
        "the instance is terminated"
    );
    let described = ec2
        .describe_volumes()
        .set_volume_ids(Some(vols.clone()))
        .send()
        .await
        .unwrap();
    let mut names = Vec::new();
    for v in described.volumes() {
        assert_eq!(
            v.state().map(|s| s.as_str()),
            Some("available"),
            "kept volume {:?}",
            v.volume_id()
        );
        assert_eq!(
            tag(v.tags(), "Building"),
            None,
            "run_volume_tags removed from {:?}",
            v.volume_id()
        );
        names.push(tag(v.tags(), "Name").unwrap_or("").to_string());
        if tag(v.tags(), "Name") == Some("dataset") {
            assert_eq!(
                tag(v.tags(), "Source"),
                instance.image_id(),
                "tags rendered with build data"
            );
        }
    }
    names.sort();
    assert_eq!(names, vec!["dataset", "scratch"]);
    let s = ec2
        .describe_snapshots()
        .snapshot_ids(&snaps[0])
        .send()
        .await
        .unwrap();
    let s = &s.snapshots()[0];
    assert_eq!(
        (tag(s.tags(), "Name"), s.description()),
        (Some("dataset-snapshot"), Some("dataset snapshot"))
    );
    let perm = ec2
        .describe_snapshot_attribute()
        .snapshot_id(&snaps[0])
        .attribute("createVolumePermission".into())
        .send()
        .await
        .unwrap();
    assert!(
        perm.create_volume_permissions()
            .iter()
            .any(|p| p.user_id() == Some(SHARE_USER)),
        "{perm:?}"
    );
    // Nothing else of the build: the only tagged volumes are the kept ones.
    let left: Vec<String> = tagged_leftovers(&ctx, execution, &[REGION], false)
        .await
        .into_iter()
        .filter(|l| !vols.iter().any(|v| l.contains(v.as_str())))
        .collect();
    assert!(
        left.is_empty(),
        "left behind after a successful build: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_build_bundles_over_ssh_and_registers_from_s3() {
    let Some(moto) = Moto::start_or_skip("instance_build_bundles_over_ssh_and_registers_from_s3")
    else {
        return;
    };
    let Some(f) = instance_fixture() else { return };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-instance";
    let out = recorded_build(
        &moto,
        &ctx,
        execution,
        instance_template(&f, &moto, None),
        "instance",
    )
    .await;
    let b = only_build(&out);
    let ami = b["amis"][REGION].as_str().expect("an AMI").to_string();

    // The X.509 files went to x509_upload_path; the bundle landed in the created bucket.
    assert_eq!(
        std::fs::read(f.sshd.path("x509/key.pem")).unwrap(),
        std::fs::read(&f.key).unwrap()
    );
    assert_eq!(
        std::fs::read(f.sshd.path("x509/cert.pem")).unwrap(),
        std::fs::read(&f.cert).unwrap()
    );
    let objects = bucket_objects(&ctx).await;
    let manifest = objects
        .iter()
        .find(|k| k.ends_with(".manifest.xml"))
        .unwrap_or_else(|| panic!("no manifest in {objects:?}"))
        .clone();
    assert!(
        manifest.starts_with("web-") && !manifest.contains("{{"),
        "bundle_prefix rendered: {manifest}"
    );
    let body = ctx
        .s3(REGION)
        .get_object()
        .bucket(BUCKET)
        .key(&manifest)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let body = String::from_utf8_lossy(&body).to_string();
    assert!(
        body.contains("account=\"012345670890\"")
            && body.contains("arch=\"x86_64\"")
            && body.contains("/x509/*"),
        "template variables rendered: {body}"
    );
    let reg = recorded_bodies(&moto, "RegisterImage");
    assert_eq!(reg.len(), 1);
    assert!(
        reg[0].contains(&format!("ImageLocation={BUCKET}/{manifest}")),
        "{}",
        reg[0]
    );
    let img = ctx
        .ec2(REGION)
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .unwrap();
    assert_eq!(tag(img.images()[0].tags(), "Name"), Some("instance-store"));
    // The secrets are not in the output or the state.
    let text = out.to_string();
    assert!(
        !text.contains(FAKE_X509_KEY_MATERIAL) && !text.contains(amiflow_tests::FAKE_SECRET_KEY),
        "secret in the execution output"
    );

    let left = tagged_leftovers(&ctx, execution, &[REGION], false).await;
    assert!(
        left.is_empty(),
        "left behind after a successful build: {left:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_upload_failure_says_what_to_check_and_masks_the_keys() {
    let Some(moto) =
        Moto::start_or_skip("instance_upload_failure_says_what_to_check_and_masks_the_keys")
    else {
        return;
    };
    let Some(f) = instance_fixture() else { return };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let failing = "echo uploading with {{.AccessKey}} {{.SecretKey}}; exit 3";
    let (out, _) = run_build(
        &ctx,
        "e2e-instance-exit3",
        instance_template(&f, &moto, Some(failing)),
        None,
    )
    .await;
    let err = out.expect_err("the upload fails");
    assert!(
        err.cause.contains("owned by somebody else"),
        "{}",
        err.cause
    );
    assert!(
        !err.cause.contains(amiflow_tests::FAKE_SECRET_KEY),
        "secret key in the error: {}",
        err.cause
    );
    assert!(
        err.cause.contains("<sensitive>"),
        "masked output kept: {}",
        err.cause
    );
    assert!(
        tagged_leftovers(&ctx, "e2e-instance-exit3", &[REGION], true)
            .await
            .is_empty()
    );
    assert!(
        !bucket_exists(&ctx).await,
        "the bucket this build created is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_failure_removes_only_the_objects_this_build_uploaded() {
    let Some(moto) =
        Moto::start_or_skip("instance_failure_removes_only_the_objects_this_build_uploaded")
    else {
        return;
    };
    let Some(f) = instance_fixture() else { return };
    let ctx = Arc::new(moto.ctx(REGION).await);
    // An earlier build's bundle under the same bundle_prefix (it backs a registered AMI):
    // a part this build does not write.
    let s3 = ctx.s3(REGION);
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let earlier = "web-fixed.part.01";
    s3.put_object()
        .bucket(BUCKET)
        .key(earlier)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"earlier"))
        .send()
        .await
        .unwrap();
    let mut template = instance_template(&f, &moto, None);
    let builder = &mut template["builders"][0];
    builder["bundle_prefix"] = json!("web-fixed");
    // The upload puts this build's manifest and part, then fails.
    let upload = builder["bundle_upload_command"]
        .as_str()
        .unwrap()
        .to_string();
    builder["bundle_upload_command"] = json!(format!("{upload}; exit 1"));
    let (out, _) = run_build(&ctx, "e2e-instance-shared-prefix", template, None).await;
    out.expect_err("the upload fails");
    assert_eq!(
        bucket_objects(&ctx).await,
        vec![earlier.to_string()],
        "this build's objects are removed, the earlier bundle's part stays"
    );
}

/// Steps whose failure is injected: from KeyPair (the first create) to the end.
fn failure_points(builder: BuilderType) -> Vec<&'static str> {
    let chain = flows::chain_names(builder);
    let first = chain.iter().position(|s| *s == "KeyPair").unwrap();
    chain[first..].to_vec()
}

async fn assert_failures_leave_nothing(
    moto: &Moto,
    ctx: &Arc<Ctx>,
    builder: BuilderType,
    template: impl Fn() -> Value,
    regions: &[&str],
) {
    let mut tried = 0;
    for step in failure_points(builder) {
        moto.reset().unwrap();
        let execution = format!("e2e-{}-fail-{step}", builder.as_str());
        let (out, calls) = run_build(ctx, &execution, template(), Some(step)).await;
        let err = out.expect_err("the injected failure fails the execution");
        assert!(
            err.cause
                .contains(&format!("injected failure after {step}")),
            "{step}: {}",
            err.cause
        );
        assert_eq!(
            calls.last().map(String::as_str),
            Some("Finalize"),
            "{step}: {calls:?}"
        );
        let left = tagged_leftovers(ctx, &execution, regions, true).await;
        assert!(
            left.is_empty(),
            "{}: left behind after a failure after {step}: {left:#?}",
            builder.as_str()
        );
        assert!(
            bucket_objects(ctx).await.is_empty() && !bucket_exists(ctx).await,
            "{step}: S3 bundle or bucket left"
        );
        tried += 1;
    }
    println!(
        "{}: failure points tried: {tried}, resources left: 0",
        builder.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_any_step_leaves_nothing_tagged_for_each_builder() {
    let Some(moto) =
        Moto::start_or_skip("a_failure_after_any_step_leaves_nothing_tagged_for_each_builder")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    assert_failures_leave_nothing(
        &moto,
        &ctx,
        BuilderType::EbsSurrogate,
        || surrogate_template("amiflow-e2e-surrogate-fail"),
        &[REGION, COPY_REGION],
    )
    .await;
    assert_failures_leave_nothing(
        &moto,
        &ctx,
        BuilderType::EbsSurrogate,
        || surrogate_create_image_template("amiflow-e2e-surrogate-swap-fail"),
        &[REGION, COPY_REGION],
    )
    .await;
    assert_failures_leave_nothing(
        &moto,
        &ctx,
        BuilderType::EbsVolume,
        ebsvolume_template,
        &[REGION],
    )
    .await;
    let Some(f) = instance_fixture() else { return };
    assert_failures_leave_nothing(
        &moto,
        &ctx,
        BuilderType::Instance,
        || instance_template(&f, &moto, None),
        &[REGION],
    )
    .await;
}

/// Kept volumes of an ebsvolume build are its artifact, not leftovers.
fn artifact_volumes(output: &Value) -> Vec<String> {
    output["builds"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["volumes"][REGION].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebssurrogate_each_mutating_call_failing_in_turn_leaves_nothing_behind() {
    let Some(moto) = Moto::start_or_skip(
        "ebssurrogate_each_mutating_call_failing_in_turn_leaves_nothing_behind",
    ) else {
        return;
    };
    let direct = Arc::new(moto.ctx(REGION).await);
    let check: LeftoversCheck = Box::new(move |execution, built| {
        let ctx = direct.clone();
        Box::pin(async move {
            tagged_leftovers(&ctx, &execution, &[REGION, COPY_REGION], built.is_none()).await
        })
    });
    let template = || surrogate_template("amiflow-e2e-surrogate-faults").to_string();
    each_mutating_call_fails_in_turn(
        &moto,
        "amazon-ebssurrogate",
        same_template(template),
        check,
        FAULT_POINTS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebsvolume_each_mutating_call_failing_in_turn_leaves_nothing_behind() {
    let Some(moto) =
        Moto::start_or_skip("ebsvolume_each_mutating_call_failing_in_turn_leaves_nothing_behind")
    else {
        return;
    };
    let direct = Arc::new(moto.ctx(REGION).await);
    let check: LeftoversCheck = Box::new(move |execution, built| {
        let ctx = direct.clone();
        Box::pin(async move {
            let kept = built.as_ref().map(artifact_volumes).unwrap_or_default();
            let left = tagged_leftovers(&ctx, &execution, &[REGION], built.is_none()).await;
            left.into_iter()
                .filter(|l| !kept.iter().any(|v| l.starts_with(&format!("volume {v} "))))
                .collect()
        })
    });
    each_mutating_call_fails_in_turn(
        &moto,
        "amazon-ebsvolume",
        same_template(|| ebsvolume_template().to_string()),
        check,
        FAULT_POINTS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_each_mutating_call_failing_in_turn_leaves_nothing_behind() {
    let Some(moto) =
        Moto::start_or_skip("instance_each_mutating_call_failing_in_turn_leaves_nothing_behind")
    else {
        return;
    };
    let Some(f) = instance_fixture() else { return };
    let direct = Arc::new(moto.ctx(REGION).await);
    // No bundle object is left either way (delete_bundle_after_register); a failed build
    // also leaves no bucket it created, a build that succeeded keeps it.
    let check: LeftoversCheck = Box::new(move |execution, built| {
        let ctx = direct.clone();
        Box::pin(async move {
            let mut left = tagged_leftovers(&ctx, &execution, &[REGION], built.is_none()).await;
            left.extend(
                bucket_objects(&ctx)
                    .await
                    .into_iter()
                    .map(|k| format!("s3 object {BUCKET}/{k}")),
            );
            if built.is_none() && bucket_exists(&ctx).await {
                left.push(format!("bucket {BUCKET}"));
            }
            left
        })
    });
    // delete_bundle_after_register: the bundle's removal is among the calls that fail.
    let mut t = instance_template(&f, &moto, None);
    t["builders"][0]["delete_bundle_after_register"] = json!(true);
    let template = same_template(move || t.to_string());
    each_mutating_call_fails_in_turn(&moto, "amazon-instance", template, check, FAULT_POINTS).await;
}
