//! A real amazon-ebs build against moto whose "instance" is the local sshd: `ssh_host` and
//! `ssh_port` point Connect and Provision at it, `ssh_keypair_name` names a key pair
//! imported into moto whose private half (`ssh_private_key_file`) the sshd authorizes.

use std::sync::Arc;
use std::sync::LazyLock;

use amiflow::{BuildState, Ctx, StepError};
use amiflow_template::BuilderType;
use amiflow_tests::sshd::Sshd;
use amiflow_tests::Moto;

use super::chain::{fail_and_clean, invoke_with_retry, retry_up_to};
use serde_json::{json, Value};

const REGION: &str = "us-east-1";

/// The production chain: every test runs what is deployed.
static CHAIN: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| amiflow::flows::chain_names(amiflow_template::BuilderType::Ebs));

/// Runs the chain with Catch → Cleanup; returns the final state or the error and the cleaned state.
async fn run(
    ctx: &Arc<Ctx>,
    mut state: BuildState,
    connect_attempts: u32,
) -> Result<BuildState, (StepError, BuildState)> {
    for step in CHAIN.iter() {
        let max = if *step == "Connect" {
            connect_attempts
        } else {
            30
        };
        match retry_up_to(ctx, step, &state, max).await {
            Ok(s) => state = s,
            Err(e) => {
                let cleaned = fail_and_clean(ctx, state, &e).await;
                return Err((e, cleaned));
            }
        }
    }
    Ok(invoke_with_retry(ctx, "Cleanup", &state)
        .await
        .expect("Cleanup succeeds"))
}

fn state(execution: &str, sshd: &Sshd, port: u16, provisioners: Value, extra: Value) -> BuildState {
    let mut raw = json!({
        "region": REGION,
        "ami_name": format!("amiflow-{execution}"),
        "instance_type": "t3.micro",
        "source_ami": "ami-0f8848d57eb4fe2d2",
        "communicator": "ssh",
        "ssh_username": sshd.user,
        "ssh_host": "127.0.0.1",
        "ssh_port": port,
        "ssh_keypair_name": "amiflow-e2e-sshd",
        "ssh_private_key_file": sshd.client_key,
    });
    for (k, v) in extra.as_object().unwrap() {
        raw[k] = v.clone();
    }
    let config = amiflow_template::config::from_builder(
        "ebs-ssh",
        BuilderType::Ebs,
        raw.as_object().unwrap(),
    )
    .expect("valid builder");
    serde_json::from_value(json!({
        "execution": execution,
        "build": {"name": "ebs-ssh", "builder_type": "amazon-ebs", "config": config, "provisioners": provisioners},
    }))
    .unwrap()
}

async fn import_key(ctx: &Ctx, sshd: &Sshd) {
    let public = std::fs::read(sshd.client_key.with_extension("pub")).unwrap();
    let ec2 = ctx.ec2(REGION);
    let _ = ec2
        .delete_key_pair()
        .key_name("amiflow-e2e-sshd")
        .send()
        .await;
    ec2.import_key_pair()
        .key_name("amiflow-e2e-sshd")
        .public_key_material(aws_sdk_ec2::primitives::Blob::new(public))
        .send()
        .await
        .expect("ImportKeyPair");
}

async fn instance_state(ctx: &Ctx, id: &str) -> String {
    let out = ctx
        .ec2(REGION)
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    let i = out.reservations()[0].instances()[0].clone();
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default()
}

macro_rules! stack_or_skip {
    ($name:expr) => {{
        let Some(moto) = Moto::start_or_skip($name) else {
            return;
        };
        let sshd = match Sshd::start() {
            Ok(s) => s,
            Err(why) => {
                eprintln!("SKIPPED {}: no local sshd: {why}", $name);
                return;
            }
        };
        (moto, sshd)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amazon_ebs_build_provisions_over_ssh_and_makes_the_ami() {
    let (moto, sshd) = stack_or_skip!("amazon_ebs_build_provisions_over_ssh_and_makes_the_ami");
    // A local run's sensitive variable reaches the registered handlers through Ctx::secrets.
    let secret = "db-Pa55-e2e";
    let mut local_ctx = moto.ctx(REGION).await;
    local_ctx.secrets =
        amiflow::provision::Secrets::from_pairs([("db_password".to_string(), secret.to_string())]);
    let ctx = Arc::new(local_ctx);
    import_key(&ctx, &sshd).await;
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("motd"), "built by amiflow\n").unwrap();
    let m = |rel: &str| sshd.path(rel).display().to_string();
    let provisioners = json!([
        {"type": "shell", "inline": [format!("echo \"{{{{build `ID`}}}} from {{{{build `SourceAMI`}}}}\" > {}", m("instance.marker"))]},
        {"type": "shell", "inline": [format!("echo $ROLE > {}", m("env.marker"))], "environment_vars": ["ROLE=web"]},
        {"type": "shell", "inline": [format!("printf %s \"$DB\" > {}", m("secret.marker"))], "environment_vars": ["DB=<sensitive:db_password>"]},
        {"type": "file", "source": local.path().join("motd"), "destination": m("motd")}
    ]);
    let st = state("e2e-ebs-ssh-ok", &sshd, sshd.port, provisioners, json!({}));
    let built = run(&ctx, st, 5)
        .await
        .map_err(|(e, _)| e)
        .expect("the build succeeds");
    let instance = built.data.instance_id.clone().unwrap();
    assert_eq!(
        std::fs::read_to_string(sshd.path("instance.marker")).unwrap(),
        format!("{instance} from ami-0f8848d57eb4fe2d2\n")
    );
    assert_eq!(
        std::fs::read_to_string(sshd.path("env.marker")).unwrap(),
        "web\n"
    );
    assert_eq!(
        std::fs::read_to_string(sshd.path("motd")).unwrap(),
        "built by amiflow\n"
    );
    assert_eq!(
        std::fs::read_to_string(sshd.path("secret.marker")).unwrap(),
        secret
    );
    assert!(!serde_json::to_string(&built).unwrap().contains(secret));
    assert_eq!(built.data.amis.len(), 1, "{:?}", built.data.amis);
    assert_eq!(instance_state(&ctx, &instance).await, "terminated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_provisioner_fails_the_build_and_cleanup_runs() {
    let (moto, sshd) = stack_or_skip!("failing_provisioner_fails_the_build_and_cleanup_runs");
    let ctx = Arc::new(moto.ctx(REGION).await);
    import_key(&ctx, &sshd).await;
    let provisioners = json!([{"type": "shell", "inline": ["echo broken package", "exit 42"]}]);
    let st = state(
        "e2e-ebs-ssh-fail",
        &sshd,
        sshd.port,
        provisioners,
        json!({}),
    );
    let (err, cleaned) = run(&ctx, st, 5).await.expect_err("the build fails");
    assert!(
        matches!(&err, StepError::BuildFailed(m) if m.contains("exit code 42") && m.contains("broken package")),
        "{err:?}"
    );
    assert!(cleaned.data.amis.is_empty());
    assert_eq!(
        instance_state(&ctx, cleaned.data.instance_id.as_deref().unwrap()).await,
        "terminated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ssh_retries_then_fails_after_ssh_timeout_and_cleanup_runs() {
    let (moto, sshd) =
        stack_or_skip!("unreachable_ssh_retries_then_fails_after_ssh_timeout_and_cleanup_runs");
    let ctx = Arc::new(moto.ctx(REGION).await);
    import_key(&ctx, &sshd).await;
    let closed = amiflow_tests::sshd::free_port();
    let st = state(
        "e2e-ebs-ssh-unreachable",
        &sshd,
        closed,
        json!([{"type": "shell", "inline": ["true"]}]),
        json!({"ssh_timeout": "1s"}),
    );
    let started = std::time::Instant::now();
    let (err, cleaned) = run(&ctx, st, 50).await.expect_err("the build fails");
    let StepError::BuildFailed(m) = &err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains(&format!("127.0.0.1:{closed}"))
            && m.contains("ssh_timeout")
            && m.contains("last error"),
        "{m}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(
        instance_state(&ctx, cleaned.data.instance_id.as_deref().unwrap()).await,
        "terminated"
    );
}
