//! amazon-ebs against moto: the chain of steps run the way the state machine runs it
//! (Retry on NotReady/Transient, Catch into Cleanup), then what moto holds is checked.

use std::sync::Arc;
use std::sync::LazyLock;

use amiflow::state::BUILD_TAG;
use amiflow::{BuildState, Ctx, StepError};
use amiflow_tests::Moto;

use super::chain::{fail_and_clean, invoke, invoke_with_retry};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const COPY_REGION: &str = "us-west-2";
const SHARE_USER: &str = "111122223333";

/// The production amazon-ebs chain without Connect and Provision: the template asks for
/// SSH (so that the key pair and security group steps make something) but provisions
/// nothing, and the instance's address is one moto invents, which nothing may dial.
static CHAIN: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    amiflow::flows::chain_names(amiflow_template::BuilderType::Ebs)
        .into_iter()
        .filter(|s| !["Connect", "Provision"].contains(s))
        .collect()
});

/// Steps that create something: each must create one resource when invoked twice.
const CREATING: &[&str] = &[
    "KeyPair",
    "SecurityGroup",
    "IamInstanceProfile",
    "RunSourceInstance",
    "CreateImage",
    "CopyImage",
];

fn template(ami_name: &str) -> Value {
    json!({
        "region": REGION,
        "ami_name": ami_name,
        "ami_description": "built from {{ .SourceAMIName }}",
        "instance_type": "t3.micro",
        "source_ami_filter": {
            "filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2", "virtualization-type": "hvm", "root-device-type": "ebs"},
            "owners": ["amazon"],
            "most_recent": true
        },
        "ami_regions": [COPY_REGION],
        "ami_users": [SHARE_USER],
        "ami_groups": ["all"],
        "snapshot_users": [SHARE_USER],
        "tags": {"Name": "amiflow {{ .SourceAMIName }}", "Region": "{{ .BuildRegion }}", "Base": "{{ .SourceAMI }}"},
        "snapshot_tags": {"Kind": "snapshot of {{ .SourceAMIName }}"},
        "run_tags": {"Purpose": "amiflow e2e from {{ .SourceAMI }}"},
        "run_volume_tags": {"Purpose": "amiflow e2e volume"},
        "launch_block_device_mappings": [
            {"device_name": "/dev/xvda", "volume_size": 8, "volume_type": "gp3", "delete_on_termination": true},
            {"device_name": "/dev/xvdb", "volume_size": 2, "volume_type": "gp2", "delete_on_termination": false}
        ],
        "ena_support": true,
        "metadata_options": {"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 2},
        "temporary_iam_instance_profile_policy_document": {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["*"]}]
        },
        "communicator": "ssh",
        "ssh_username": "ec2-user",
        "temporary_key_pair_type": "ed25519",
        "temporary_security_group_source_cidrs": ["10.0.0.0/8"],
        "user_data": "#!/bin/sh\necho hello\n"
    })
}

fn state(execution: &str, config: Value) -> BuildState {
    serde_json::from_value(json!({
        "execution": execution,
        "build": {"name": "ebs-e2e", "builder_type": "amazon-ebs", "config": {"amazon-ebs": config}},
    }))
    .expect("a build state")
}

/// Runs the first `upto` steps of the chain; a failure runs Cleanup like the Catch does.
async fn run_chain(
    ctx: &Arc<Ctx>,
    mut state: BuildState,
    upto: usize,
) -> Result<BuildState, (StepError, BuildState)> {
    for step in &CHAIN[..upto] {
        match invoke_with_retry(ctx, step, &state).await {
            Ok(s) => state = s,
            Err(e) => {
                let cleaned = fail_and_clean(ctx, state, &e).await;
                return Err((e, cleaned));
            }
        }
    }
    Ok(state)
}

/// Everything still in moto that carries the build tag (and is not gone): the leak list.
pub(crate) async fn tagged_leftovers(
    ctx: &Ctx,
    execution: &str,
    regions: &[&str],
    include_artifacts: bool,
) -> Vec<String> {
    let f = || {
        aws_sdk_ec2::types::Filter::builder()
            .name(format!("tag:{BUILD_TAG}"))
            .values(execution)
            .build()
    };
    let mut out = Vec::new();
    for region in regions {
        let ec2 = ctx.ec2(region);
        let inst = ec2.describe_instances().filters(f()).send().await.unwrap();
        for i in inst.reservations().iter().flat_map(|r| r.instances()) {
            let st = i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default();
            if st != "terminated" {
                out.push(format!(
                    "instance {} {st} ({region})",
                    i.instance_id().unwrap()
                ));
            }
        }
        for k in ec2
            .describe_key_pairs()
            .filters(f())
            .send()
            .await
            .unwrap()
            .key_pairs()
        {
            out.push(format!("key pair {} ({region})", k.key_name().unwrap()));
        }
        for g in ec2
            .describe_security_groups()
            .filters(f())
            .send()
            .await
            .unwrap()
            .security_groups()
        {
            out.push(format!(
                "security group {} ({region})",
                g.group_id().unwrap()
            ));
        }
        for v in ec2
            .describe_volumes()
            .filters(f())
            .send()
            .await
            .unwrap()
            .volumes()
        {
            out.push(format!(
                "volume {} {:?} ({region})",
                v.volume_id().unwrap(),
                v.state()
            ));
        }
        if include_artifacts {
            for i in ec2
                .describe_images()
                .owners("self")
                .filters(f())
                .send()
                .await
                .unwrap()
                .images()
            {
                out.push(format!("image {} ({region})", i.image_id().unwrap()));
            }
            for s in ec2
                .describe_snapshots()
                .owner_ids("self")
                .filters(f())
                .send()
                .await
                .unwrap()
                .snapshots()
            {
                out.push(format!("snapshot {} ({region})", s.snapshot_id().unwrap()));
            }
        }
        let params = ctx
            .ssm(region)
            .get_parameters_by_path()
            .path(format!("/amiflow/{execution}/"))
            .recursive(true)
            .send()
            .await
            .unwrap();
        for p in params.parameters() {
            out.push(format!("parameter {} ({region})", p.name().unwrap()));
        }
    }
    let profiles = ctx
        .iam()
        .list_instance_profiles()
        .path_prefix("/amiflow/")
        .send()
        .await
        .unwrap();
    for p in profiles.instance_profiles() {
        out.push(format!("instance profile {}", p.instance_profile_name()));
    }
    let roles = ctx
        .iam()
        .list_roles()
        .path_prefix("/amiflow/")
        .send()
        .await
        .unwrap();
    for r in roles.roles() {
        out.push(format!("role {}", r.role_name()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebs_build_with_most_options_leaves_only_the_amis() {
    let Some(moto) = Moto::start_or_skip("ebs_build_with_most_options_leaves_only_the_amis") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebs-full";
    moto.start_recording().unwrap();
    let built = run_chain(
        &ctx,
        state(execution, template("amiflow-e2e-full")),
        CHAIN.len(),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("the build succeeds");
    let built = invoke_with_retry(&ctx, "Cleanup", &built)
        .await
        .expect("Cleanup succeeds");
    moto.stop_recording().unwrap();
    let calls = moto.ec2_calls().unwrap();
    let mut by_action = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls {
        *by_action.entry(c.action.clone()).or_default() += 1;
    }
    println!(
        "EC2 calls per build (amazon-ebs, most options, 2 regions, incl. Cleanup): {}",
        calls.len()
    );
    println!("  by action: {by_action:?}");
    let all = moto.recorded_calls().unwrap();
    println!(
        "  all services: {} calls ({} ssm, {} iam)",
        all.len(),
        all.iter().filter(|c| c.service == "ssm").count(),
        all.iter().filter(|c| c.service == "iam").count()
    );

    // The AMI in each region, and nothing else.
    assert_eq!(built.data.amis.len(), 2, "amis: {:?}", built.data.amis);
    let source_name = built.data.source_ami_name.clone().unwrap();
    let source_id = built.data.source_ami.clone().unwrap();
    assert!(source_name.starts_with("amzn2-ami-hvm-"), "{source_name}");
    for region in [REGION, COPY_REGION] {
        let ec2 = ctx.ec2(region);
        let ami = built
            .data
            .amis
            .get(region)
            .unwrap_or_else(|| panic!("no AMI in {region}"));
        let imgs = ec2
            .describe_images()
            .owners("self")
            .filters(amiflow::identity::filter("name", ["amiflow-e2e-full"]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            imgs.images().len(),
            1,
            "one image named amiflow-e2e-full in {region}"
        );
        let img = &imgs.images()[0];
        assert_eq!(img.image_id(), Some(ami.as_str()));
        assert_eq!(img.state().map(|s| s.as_str()), Some("available"));
        let tag = |k: &str| {
            img.tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value())
                .map(String::from)
        };
        assert_eq!(tag("Name"), Some(format!("amiflow {source_name}")));
        assert_eq!(
            tag("Region").as_deref(),
            Some(region),
            "BuildRegion rendered per region"
        );
        assert_eq!(tag("Base"), Some(source_id.clone()));
        assert_eq!(tag(BUILD_TAG).as_deref(), Some(execution));

        let perms = ec2
            .describe_image_attribute()
            .image_id(ami)
            .attribute("launchPermission".into())
            .send()
            .await
            .unwrap();
        let lp = perms.launch_permissions();
        assert!(
            lp.iter().any(|p| p.user_id() == Some(SHARE_USER)),
            "ami_users in {region}: {lp:?}"
        );
        assert!(
            lp.iter()
                .any(|p| p.group().map(|g| g.as_str()) == Some("all")),
            "ami_groups in {region}: {lp:?}"
        );

        let snaps = built
            .data
            .snapshots
            .get(region)
            .cloned()
            .unwrap_or_default();
        assert!(!snaps.is_empty(), "snapshots recorded for {region}");
        for s in &snaps {
            let attr = ec2
                .describe_snapshot_attribute()
                .snapshot_id(s)
                .attribute("createVolumePermission".into())
                .send()
                .await
                .unwrap();
            assert!(
                attr.create_volume_permissions()
                    .iter()
                    .any(|p| p.user_id() == Some(SHARE_USER)),
                "snapshot_users on {s} in {region}: {attr:?}"
            );
            let st = ec2
                .describe_snapshots()
                .snapshot_ids(s)
                .send()
                .await
                .unwrap();
            let kind = st.snapshots()[0]
                .tags()
                .iter()
                .find(|t| t.key() == Some("Kind"))
                .and_then(|t| t.value())
                .map(String::from);
            assert_eq!(
                kind,
                Some(format!("snapshot of {source_name}")),
                "snapshot_tags on {s}"
            );
        }
    }
    // Run tags rendered on the (terminated) instance; the key pair was ed25519.
    let inst = ctx
        .ec2(REGION)
        .describe_instances()
        .filters(amiflow::identity::build_filter(execution))
        .send()
        .await
        .unwrap();
    let i = inst.reservations()[0].instances()[0].clone();
    let purpose = i
        .tags()
        .iter()
        .find(|t| t.key() == Some("Purpose"))
        .and_then(|t| t.value())
        .map(String::from);
    assert_eq!(purpose, Some(format!("amiflow e2e from {source_id}")));

    let left = tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], false).await;
    assert!(
        left.is_empty(),
        "left behind after a successful build: {left:#?}"
    );
    // The secret never entered the state.
    let text = serde_json::to_string(&built).unwrap();
    assert!(
        !text.contains("PRIVATE KEY"),
        "private key material in the build state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_step_leaves_nothing_tagged() {
    let Some(moto) = Moto::start_or_skip("a_failure_at_any_step_leaves_nothing_tagged") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let mut tried = 0;
    // Fail right after each step, from the first create on (KeyPair is index 3).
    for upto in 4..=CHAIN.len() {
        moto.reset().unwrap();
        let execution = format!("e2e-ebs-fail-{upto}");
        let st = run_chain(
            &ctx,
            state(&execution, template(&format!("amiflow-e2e-fail-{upto}"))),
            upto,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the chain runs");
        let injected =
            StepError::BuildFailed(format!("injected failure after {}", CHAIN[upto - 1]));
        let cleaned = fail_and_clean(&ctx, st, &injected).await;
        assert!(
            cleaned.data.amis.is_empty(),
            "a failed build reports no AMI"
        );
        let left = tagged_leftovers(&ctx, &execution, &[REGION, COPY_REGION], true).await;
        assert!(
            left.is_empty(),
            "left behind after a failure after {}: {left:#?}",
            CHAIN[upto - 1]
        );
        tried += 1;
    }
    println!("failure points tried: {tried}, resources left: 0");

    // A real failure: a source AMI that does not exist fails early and creates nothing.
    moto.reset().unwrap();
    let mut cfg = template("amiflow-e2e-bad-source");
    cfg.as_object_mut().unwrap().remove("source_ami_filter");
    cfg["source_ami"] = json!("ami-00000000000000000");
    let err = run_chain(&ctx, state("e2e-ebs-bad", cfg), CHAIN.len())
        .await
        .expect_err("the build fails")
        .0;
    assert!(
        matches!(&err, StepError::BuildFailed(m) if m.contains("ami-00000000000000000")),
        "{err:?}"
    );
    assert!(
        tagged_leftovers(&ctx, "e2e-ebs-bad", &[REGION, COPY_REGION], true)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_creating_step_twice_creates_one_resource() {
    let Some(moto) = Moto::start_or_skip("each_creating_step_twice_creates_one_resource") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebs-twice";
    let mut st = state(execution, template("amiflow-e2e-twice"));
    for step in CHAIN.iter() {
        let first = invoke_with_retry(&ctx, step, &st)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        if CREATING.contains(step) {
            let second = invoke_with_retry(&ctx, step, &st)
                .await
                .unwrap_or_else(|e| panic!("{step} again: {e}"));
            assert_eq!(
                first.ledger, second.ledger,
                "{step} twice recorded different resources"
            );
            assert_eq!(
                first.data, second.data,
                "{step} twice learnt different things"
            );
        }
        st = first;
    }
    let f = || amiflow::identity::build_filter(execution);
    let ec2 = ctx.ec2(REGION);
    let n_inst = ec2
        .describe_instances()
        .filters(f())
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .map(|r| r.instances().len())
        .sum::<usize>();
    assert_eq!(n_inst, 1, "one instance");
    assert_eq!(
        ec2.describe_key_pairs()
            .filters(f())
            .send()
            .await
            .unwrap()
            .key_pairs()
            .len(),
        1,
        "one key pair"
    );
    assert_eq!(
        ec2.describe_security_groups()
            .filters(f())
            .send()
            .await
            .unwrap()
            .security_groups()
            .len(),
        1,
        "one security group"
    );
    assert_eq!(
        ctx.iam()
            .list_instance_profiles()
            .path_prefix("/amiflow/")
            .send()
            .await
            .unwrap()
            .instance_profiles()
            .len(),
        1,
        "one profile"
    );
    for region in [REGION, COPY_REGION] {
        let imgs = ctx
            .ec2(region)
            .describe_images()
            .owners("self")
            .send()
            .await
            .unwrap();
        assert_eq!(imgs.images().len(), 1, "one image in {region}");
    }
    let st = invoke_with_retry(&ctx, "Cleanup", &st).await.unwrap();
    let again = invoke_with_retry(&ctx, "Cleanup", &st)
        .await
        .expect("Cleanup is idempotent");
    assert_eq!(again.data.amis, st.data.amis);
    assert!(
        tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], false)
            .await
            .is_empty()
    );
}

/// An image of the build's name that someone else registers in a copy region after
/// PreValidate is not this build's copy: CopyImage must not adopt it (and so neither tag it
/// nor have Cleanup delete it with the build's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_image_never_adopts_an_image_it_did_not_create() {
    let Some(moto) = Moto::start_or_skip("copy_image_never_adopts_an_image_it_did_not_create")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebs-foreign-copy";
    let name = "amiflow-e2e-foreign-copy";
    let copy_at = CHAIN.iter().position(|s| *s == "CopyImage").unwrap();
    let st = run_chain(&ctx, state(execution, template(name)), copy_at)
        .await
        .map_err(|(e, _)| e)
        .expect("the chain runs up to CopyImage");
    // Someone else's image of that name, in the copy region, untagged.
    let copy = ctx.ec2(COPY_REGION);
    let foreign = super::deploy::tagged_image(&copy, name, &[("Owner", "someone else")]).await;
    let copied = invoke_with_retry(&ctx, "CopyImage", &st)
        .await
        .expect("CopyImage");
    let ours = copied.data.amis.get(COPY_REGION).cloned();
    assert!(
        ours.is_some() && ours.as_deref() != Some(foreign.as_str()),
        "CopyImage took {ours:?} for its copy; {foreign} is someone else's"
    );
    let cleaned = fail_and_clean(
        &ctx,
        copied,
        &StepError::BuildFailed("injected failure after CopyImage".into()),
    )
    .await;
    assert!(cleaned.data.amis.is_empty());
    let left = copy
        .describe_images()
        .image_ids(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(
        left.images()
            .first()
            .and_then(|i| i.state())
            .map(|s| s.as_str()),
        Some("available"),
        "the other image survives the build's Cleanup"
    );
    let tags: Vec<&str> = left.images()[0]
        .tags()
        .iter()
        .filter_map(|t| t.key())
        .collect();
    assert!(
        !tags.contains(&BUILD_TAG),
        "the other image was tagged as the build's: {tags:?}"
    );
    assert!(
        tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], true)
            .await
            .is_empty()
    );
}

/// The janitor's sweep of `execution` in both regions, its NotReady polled quickly.
async fn janitor(ctx: &Arc<Ctx>, execution: &str) -> amiflow::resources::CleanupReport {
    let regions = vec![REGION.to_string(), COPY_REGION.to_string()];
    for _ in 0..30 {
        match amiflow::resources::sweep_execution(ctx, None, execution, &regions).await {
            Ok(r) => return r,
            Err(StepError::NotReady(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("janitor: {e}"),
        }
    }
    panic!("the janitor did not finish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_keeps_what_a_successful_build_delivered() {
    let Some(moto) = Moto::start_or_skip("janitor_keeps_what_a_successful_build_delivered") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebs-janitor-keeps";
    let built = run_chain(
        &ctx,
        state(execution, template("amiflow-e2e-keeps")),
        CHAIN.len(),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("the build succeeds");
    let built = invoke_with_retry(&ctx, "Cleanup", &built)
        .await
        .expect("Cleanup succeeds");
    assert_eq!(built.data.amis.len(), 2, "{:?}", built.data.amis);
    // Another build of the same execution failed, so the execution failed and the janitor
    // sweeps it by tag: this build's AMIs and their snapshots must survive it.
    let report = janitor(&ctx, execution).await;
    for (region, ami) in &built.data.amis {
        let img = amiflow::resources::image::describe(&ctx, region, ami)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{ami} ({region}) was removed: {report:?}"));
        assert_eq!(img.state().map(|s| s.as_str()), Some("available"));
        for snap in amiflow::resources::image::snapshots(&img) {
            let found = ctx
                .ec2(region)
                .describe_snapshots()
                .snapshot_ids(&snap)
                .send()
                .await;
            assert!(
                found.is_ok(),
                "snapshot {snap} of {ami} ({region}) was removed: {report:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_sweeps_an_aborted_execution_by_tag_alone() {
    let Some(moto) = Moto::start_or_skip("janitor_sweeps_an_aborted_execution_by_tag_alone") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebs-aborted";
    // The execution died after copying: the state (and its ledger) is lost.
    let _ = run_chain(&ctx, state(execution, template("amiflow-e2e-aborted")), 16)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(
        !tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], true)
            .await
            .is_empty()
    );
    let report = janitor(&ctx, execution).await;
    println!("janitor removed {} resources", report.removed.len());
    let left = tagged_leftovers(&ctx, execution, &[REGION, COPY_REGION], true).await;
    assert!(left.is_empty(), "janitor left: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_abort_keeps_everything_and_says_so() {
    let Some(moto) = Moto::start_or_skip("on_error_abort_keeps_everything_and_says_so") else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let execution = "e2e-ebs-abort";
    let mut st = state(execution, template("amiflow-e2e-abort"));
    st.on_error = amiflow::state::OnError::Abort;
    let st = run_chain(&ctx, st, 8).await.map_err(|(e, _)| e).unwrap();
    let kept = fail_and_clean(&ctx, st, &StepError::BuildFailed("injected".into())).await;
    let report = kept.data.extra.get("cleanup").expect("a cleanup report");
    assert!(
        report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().contains("Instance")),
        "{report}"
    );
    assert!(
        !tagged_leftovers(&ctx, execution, &[REGION], false)
            .await
            .is_empty(),
        "abort keeps the resources"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_pair_never_replaces_a_key_pair_that_is_not_the_builds() {
    let Some(moto) =
        Moto::start_or_skip("key_pair_never_replaces_a_key_pair_that_is_not_the_builds")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    ctx.ec2(REGION)
        .create_key_pair()
        .key_name("team-key")
        .send()
        .await
        .unwrap();
    let mut config = template("amiflow-e2e-keyname");
    config["temporary_key_pair_name"] = json!("team-key");
    let err = invoke(&ctx, "KeyPair", &state("e2e-ebs-keyname", config))
        .await
        .expect_err("a key pair that is not the build's is refused");
    assert_eq!(err.name(), "BuildFailed");
    assert!(
        err.message().contains("team-key already exists")
            && err.message().contains("temporary_key_pair_name"),
        "{err}"
    );
    let kept = ctx
        .ec2(REGION)
        .describe_key_pairs()
        .key_names("team-key")
        .send()
        .await
        .unwrap();
    assert_eq!(
        kept.key_pairs().len(),
        1,
        "the user's key pair is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_not_removable_yet_does_not_hold_up_the_others() {
    let Some(moto) =
        Moto::start_or_skip("a_resource_not_removable_yet_does_not_hold_up_the_others")
    else {
        return;
    };
    let ctx = Arc::new(moto.ctx(REGION).await);
    let ec2 = ctx.ec2(REGION);
    let execution = "e2e-ebs-stuck";
    let tag = aws_sdk_ec2::types::Tag::builder()
        .key(BUILD_TAG)
        .value(execution)
        .build();
    // A build-tagged volume attached to an instance that is not the build's (a chroot host)
    // cannot go in this pass; the build's image can.
    let host = ec2
        .run_instances()
        .image_id("ami-0f8848d57eb4fe2d2")
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_string();
    let volume = ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(1)
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    ec2.attach_volume()
        .volume_id(&volume)
        .instance_id(&host)
        .device("/dev/sdf")
        .send()
        .await
        .unwrap();
    let image = ec2
        .create_image()
        .instance_id(&host)
        .name("amiflow-e2e-stuck")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();
    ec2.create_tags()
        .resources(&volume)
        .resources(&image)
        .tags(tag)
        .send()
        .await
        .unwrap();

    let first =
        amiflow::resources::sweep_execution(&ctx, None, execution, &[REGION.to_string()]).await;
    let Err(StepError::NotReady(why)) = first else {
        panic!("the attached volume makes the pass NotReady: {first:?}")
    };
    assert!(why.contains(&volume), "{why}");
    assert!(
        amiflow::resources::image::describe(&ctx, REGION, &image)
            .await
            .unwrap()
            .is_none_or(|i| i.state().map(|s| s.as_str()) == Some("deregistered")),
        "the image went in the same pass"
    );
    let report = janitor(&ctx, execution).await;
    println!("second pass removed {:?}", report.removed);
    let left = tagged_leftovers(&ctx, execution, &[REGION], true).await;
    assert!(left.is_empty(), "left: {left:?}");
}
