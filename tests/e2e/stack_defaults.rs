//! The deployed stack's DefaultVpcId, DefaultSubnetId and BuildHostInstanceId (the
//! functions' AMIFLOW_DEFAULT_VPC_ID, AMIFLOW_DEFAULT_SUBNET_ID and
//! AMIFLOW_BUILD_HOST_INSTANCE_ID, read into `Ctx::stack`) are used when a template names
//! no network or build host, and only then: NetworkInfo and HostInfo against moto.

use std::sync::Arc;

use amiflow::builders::chroot;
use amiflow::ctx::StackDefaults;
use amiflow::{BuildState, Ctx, StepError};
use amiflow_tests::Moto;
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const SOURCE_AMI: &str = "ami-0f8848d57eb4fe2d2";

fn state(builder_type: &str, mut config: Value) -> BuildState {
    config["region"] = json!(REGION);
    config["ami_name"] = json!("stack-defaults");
    config["source_ami"] = json!(SOURCE_AMI);
    serde_json::from_value(json!({
        "execution": "stack-defaults-1",
        "build": { "name": "b", "builder_type": builder_type, "config": { (builder_type): config } },
    }))
    .expect("a build state")
}

async fn run(ctx: &Arc<Ctx>, step: &str, state: &BuildState) -> Result<BuildState, StepError> {
    let spec = amiflow::flows::find(step).unwrap();
    let out = (spec.handler)(ctx.clone(), serde_json::to_value(state).unwrap()).await?;
    Ok(serde_json::from_value(out).unwrap())
}

async fn ctx_with(moto: &Moto, stack: StackDefaults) -> Arc<Ctx> {
    let mut ctx = moto.ctx(REGION).await;
    ctx.stack = stack;
    Arc::new(ctx)
}

/// A VPC with one subnet in `{REGION}b`: (vpc, subnet).
async fn network(ctx: &Ctx) -> (String, String) {
    let ec2 = ctx.ec2(REGION);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.42.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block("10.42.1.0/24")
        .availability_zone(format!("{REGION}b"))
        .send()
        .await
        .unwrap();
    (
        vpc,
        subnet.subnet().unwrap().subnet_id().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_info_uses_the_stacks_default_network_only_when_the_template_names_none() {
    let Some(moto) = Moto::start_or_skip(
        "network_info_uses_the_stacks_default_network_only_when_the_template_names_none",
    ) else {
        return;
    };
    let plain = moto.ctx(REGION).await;
    let (vpc, subnet) = network(&plain).await;
    let (own_vpc, own_subnet) = {
        let ec2 = plain.ec2(REGION);
        let v = ec2
            .create_vpc()
            .cidr_block("10.43.0.0/16")
            .send()
            .await
            .unwrap();
        let v = v.vpc().unwrap().vpc_id().unwrap().to_string();
        let s = ec2
            .create_subnet()
            .vpc_id(&v)
            .cidr_block("10.43.1.0/24")
            .availability_zone(format!("{REGION}c"))
            .send()
            .await
            .unwrap();
        (v, s.subnet().unwrap().subnet_id().unwrap().to_string())
    };
    let ctx = ctx_with(
        &moto,
        StackDefaults {
            region: Some(REGION.into()),
            vpc_id: Some(vpc.clone()),
            subnet_id: Some(subnet.clone()),
            build_host_instance_id: None,
            ..Default::default()
        },
    )
    .await;
    let ebs = json!({ "instance_type": "t3.micro", "communicator": "none" });

    let out = run(&ctx, "NetworkInfo", &state("amazon-ebs", ebs.clone()))
        .await
        .unwrap();
    assert_eq!(out.data.vpc_id.as_deref(), Some(vpc.as_str()));
    assert_eq!(out.data.subnet_id.as_deref(), Some(subnet.as_str()));
    assert_eq!(
        out.data.availability_zone.as_deref(),
        Some(format!("{REGION}b").as_str()),
        "the zone of the stack's subnet"
    );

    // The template's own subnet wins, and the stack's VPC is not mixed in.
    let mut named = ebs.clone();
    named["subnet_id"] = json!(own_subnet);
    let out = run(&ctx, "NetworkInfo", &state("amazon-ebs", named))
        .await
        .unwrap();
    assert_eq!(out.data.subnet_id.as_deref(), Some(own_subnet.as_str()));
    assert_eq!(out.data.vpc_id.as_deref(), Some(own_vpc.as_str()));

    // A template naming only a VPC gets no subnet from the stack.
    let mut vpc_only = ebs.clone();
    vpc_only["vpc_id"] = json!(own_vpc);
    let out = run(&ctx, "NetworkInfo", &state("amazon-ebs", vpc_only))
        .await
        .unwrap();
    assert_eq!(out.data.vpc_id.as_deref(), Some(own_vpc.as_str()));
    assert_eq!(out.data.subnet_id, None);

    // Without stack defaults (a local build), nothing is chosen: EC2's default VPC.
    let local = Arc::new(moto.ctx(REGION).await);
    let out = run(&local, "NetworkInfo", &state("amazon-ebs", ebs))
        .await
        .unwrap();
    assert_eq!((out.data.vpc_id, out.data.subnet_id), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_info_uses_the_stacks_build_host_when_the_template_names_none() {
    let Some(moto) =
        Moto::start_or_skip("host_info_uses_the_stacks_build_host_when_the_template_names_none")
    else {
        return;
    };
    let plain = moto.ctx(REGION).await;
    let ec2 = plain.ec2(REGION);
    let launch = || async {
        let out = ec2
            .run_instances()
            .image_id(SOURCE_AMI)
            .instance_type("t3.micro".into())
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap();
        out.instances()[0].instance_id().unwrap().to_string()
    };
    let stack_host = launch().await;
    let own_host = launch().await;
    let ctx = ctx_with(
        &moto,
        StackDefaults {
            build_host_instance_id: Some(stack_host.clone()),
            ..Default::default()
        },
    )
    .await;

    let out = run(&ctx, "HostInfo", &state("amazon-chroot", json!({})))
        .await
        .unwrap();
    let host = chroot::host(&out, "test").unwrap();
    assert_eq!(host.instance_id, stack_host);
    assert_eq!(host.found_by, "stack");
    assert!(!host.availability_zone.is_empty());

    let named = json!({ "chroot_host_instance_id": own_host });
    let out = run(&ctx, "HostInfo", &state("amazon-chroot", named))
        .await
        .unwrap();
    let host = chroot::host(&out, "test").unwrap();
    assert_eq!(
        (host.instance_id.as_str(), host.found_by.as_str()),
        (own_host.as_str(), "instance_id")
    );

    // A stack host that does not exist is named in the error.
    let gone = ctx_with(
        &moto,
        StackDefaults {
            build_host_instance_id: Some("i-0000000000000dead".into()),
            ..Default::default()
        },
    )
    .await;
    let err = run(&gone, "HostInfo", &state("amazon-chroot", json!({})))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("BuildHostInstanceId")
            && err.message().contains("i-0000000000000dead"),
        "{err:?}"
    );
}

/// In Lambda, UploadBundle hands `bundle_upload_command` a session of the stack's bundle
/// upload role or nothing: without that role (and without an instance profile) it refuses,
/// naming the variable, before it creates the bucket.
#[tokio::test]
async fn upload_bundle_in_lambda_never_hands_over_the_functions_own_keys() {
    let Some(moto) = Moto::start_or_skip(
        "stack_defaults::upload_bundle_in_lambda_never_hands_over_the_functions_own_keys",
    ) else {
        return;
    };
    let mut ctx = moto.ctx(REGION).await;
    ctx.in_lambda = true;
    let ctx = Arc::new(ctx);
    let instance = json!({
        "instance_type": "m3.medium", "communicator": "none", "account_id": "0123-4567-0890",
        "s3_bucket": "lambda-keys-stay-home", "x509_cert_path": "/amiflow-x509/c",
        "x509_key_path": "/amiflow-x509/k",
    });
    let mut state = state("amazon-instance", instance);
    state
        .data
        .extra
        .insert("bundle_prefix".into(), json!("image-1"));
    let err = run(&ctx, "UploadBundle", &state).await.unwrap_err();
    assert!(
        err.message()
            .contains(StackDefaults::BUNDLE_UPLOAD_ROLE_ENV)
            && err.message().contains("own credentials"),
        "{}",
        err.message()
    );
    let buckets = ctx.s3(REGION).list_buckets().send().await.unwrap();
    assert!(buckets.buckets().is_empty(), "{buckets:?}");
}
