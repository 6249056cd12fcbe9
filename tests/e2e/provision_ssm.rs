//! SSM provisioning against moto, for what moto can show: the command it is sent (document,
//! parameters, target instance, comment, output bucket), the files staged in S3, the step
//! raising NotReady while a command runs and resuming from ListCommands, cleanup of the
//! staged objects. (moto reports every command as Success at once and runs nothing; the
//! decision for every other status is unit-tested in `provision::ssm`.)

use std::sync::Arc;

use amiflow::provision::Secrets;
use amiflow::steps::connect::connect;
use amiflow::steps::provision::provision;
use amiflow::{BuildState, Ctx, StepError};
use amiflow_template::BuilderType;
use amiflow_tests::fault_proxy::{FaultProxy, Faults, Injected};
use amiflow_tests::Moto;
use serde_json::{json, Value};

const REGION: &str = "us-east-1";
const BUCKET: &str = "amiflow-ssm-staging";

async fn instance(ctx: &Ctx) -> String {
    let out = ctx
        .ec2(REGION)
        .run_instances()
        .image_id("ami-0f8848d57eb4fe2d2")
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_string()
}

fn state(execution: &str, instance_id: &str, provisioners: Value, bucket: bool) -> BuildState {
    let mut raw = json!({
        "region": REGION, "ami_name": "amiflow-ssm", "instance_type": "t3.micro",
        "source_ami": "ami-0f8848d57eb4fe2d2", "communicator": "ssm",
    });
    if bucket {
        raw["ssm_output_s3_bucket"] = json!(BUCKET);
    }
    let config =
        amiflow_template::config::from_builder("ssm", BuilderType::Ebs, raw.as_object().unwrap())
            .expect("valid builder");
    serde_json::from_value(json!({
        "execution": execution,
        "build": {"name": "ssm", "builder_type": "amazon-ebs", "config": config, "provisioners": provisioners},
        "data": {"instance_id": instance_id},
    }))
    .unwrap()
}

/// A run's context whose sensitive `api_token` is `secret`, with the staging bucket made
/// and an instance launched for the commands.
async fn staging_run(moto: &Moto, secret: &str) -> (Arc<Ctx>, String) {
    let mut ctx = moto.ctx(REGION).await;
    ctx.secrets = Secrets::from_pairs([("api_token".to_string(), secret.to_string())]);
    let ctx = Arc::new(ctx);
    ctx.s3(REGION)
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let id = instance(&ctx).await;
    (ctx, id)
}

async fn staged_keys(ctx: &Ctx, prefix: &str) -> Vec<String> {
    let out = ctx
        .s3(REGION)
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect()
}

async fn object(ctx: &Ctx, key: &str) -> String {
    let o = ctx
        .s3(REGION)
        .get_object()
        .bucket(BUCKET)
        .key(key)
        .send()
        .await
        .unwrap();
    String::from_utf8(o.body.collect().await.unwrap().into_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_sends_one_command_per_provisioner_with_files_staged_in_s3() {
    let Some(moto) =
        Moto::start_or_skip("ssm_sends_one_command_per_provisioner_with_files_staged_in_s3")
    else {
        return;
    };
    let execution = "e2e-ssm";
    let secret = "tok-9f8e7d6c5b";
    let (ctx, id) = staging_run(&moto, secret).await;
    let provisioners = json!([
        {"type": "shell", "inline": ["echo using <sensitive:api_token>"], "environment_vars": ["STAGE=prod"]},
        {"type": "file", "content": "welcome\n", "destination": "/etc/motd"},
        {"type": "shell", "inline": ["systemctl enable app"], "timeout": "10m"}
    ]);
    let st = state(execution, &id, provisioners, true);

    // Connect: moto lacks DescribeInstanceInformation, so "cannot tell" lets the build go on.
    connect(&ctx, st.clone())
        .await
        .expect("Connect cannot tell, and says so");

    // 1st invocation: sends provisioner 0 and waits.
    let err = provision(&ctx, st.clone()).await.unwrap_err();
    assert!(
        matches!(&err, StepError::CommandSent(m) if m.contains("provisioner 0 (shell)") && m.contains("sent SSM command")),
        "{err:?}"
    );
    let listed = ctx
        .ssm(REGION)
        .list_commands()
        .instance_id(&id)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.commands().len(), 1);
    let c = &listed.commands()[0];
    assert_eq!(c.document_name(), Some("AWS-RunShellScript"));
    assert_eq!(c.instance_ids(), std::slice::from_ref(&id));
    assert_eq!(
        c.comment(),
        Some(amiflow::provision::ssm::comment("", "e2e-ssm", 0).as_str())
    );
    assert!(c.comment().unwrap().starts_with("amiflow e2e-ssm "));
    assert_eq!(c.output_s3_bucket_name(), Some(BUCKET));
    let params = c.parameters().unwrap();
    let commands = params["commands"].join("\n");
    assert!(
        commands.contains(&format!(
            "aws s3 cp --only-show-errors s3://{BUCKET}/staged/{execution}/ssm/provision/0/script.sh"
        )),
        "{commands}"
    );
    assert_eq!(params["executionTimeout"], vec!["3600".to_string()]);
    assert!(
        !format!("{:?}", c).contains(secret),
        "the secret must not be in the command's parameters"
    );
    // What was staged: the inline script (secret revealed: it runs there) and the wrapper.
    let keys = staged_keys(&ctx, &format!("staged/{execution}/ssm/provision/0/")).await;
    assert_eq!(
        keys,
        vec![
            format!("staged/{execution}/ssm/provision/0/0"),
            format!("staged/{execution}/ssm/provision/0/script.sh")
        ]
    );
    assert!(object(&ctx, &keys[0])
        .await
        .contains(&format!("echo using {secret}")));
    let wrapper = object(&ctx, &keys[1]).await;
    assert!(
        wrapper.contains("STAGE='prod'") && wrapper.contains("rm -f /tmp/script_"),
        "{wrapper}"
    );

    // 2nd: moto says Success → staging of #0 removed, #1 (file) sent.
    let err = provision(&ctx, st.clone()).await.unwrap_err();
    assert!(
        matches!(&err, StepError::CommandSent(m) if m.contains("provisioner 1 (file)")),
        "{err:?}"
    );
    assert!(
        staged_keys(&ctx, &format!("staged/{execution}/ssm/provision/0/"))
            .await
            .is_empty()
    );
    let file_keys = staged_keys(&ctx, &format!("staged/{execution}/ssm/provision/1/")).await;
    assert_eq!(object(&ctx, &file_keys[0]).await, "welcome\n");
    assert!(object(&ctx, &file_keys[1])
        .await
        .contains("chmod 644 /etc/motd"));

    // 3rd: #2 sent with its own timeout.
    provision(&ctx, st.clone()).await.unwrap_err();
    let listed = ctx
        .ssm(REGION)
        .list_commands()
        .instance_id(&id)
        .send()
        .await
        .unwrap();
    let third = listed
        .commands()
        .iter()
        .find(|c| c.comment() == Some(amiflow::provision::ssm::comment("", "e2e-ssm", 2).as_str()))
        .expect("command #2");
    assert_eq!(
        third.parameters().unwrap()["executionTimeout"],
        vec!["600".to_string()]
    );

    // 4th: everything done; a retried invocation with the same input resends nothing.
    let done = provision(&ctx, st.clone())
        .await
        .expect("provisioning done");
    assert_eq!(
        done.data.extra["ssm_commands"].as_object().unwrap().len(),
        3
    );
    provision(&ctx, st).await.expect("still done");
    assert_eq!(
        ctx.ssm(REGION)
            .list_commands()
            .instance_id(&id)
            .send()
            .await
            .unwrap()
            .commands()
            .len(),
        3
    );
    assert!(
        staged_keys(&ctx, &format!("staged/{execution}/ssm/provision/"))
            .await
            .is_empty(),
        "staged objects removed"
    );
    assert!(!serde_json::to_string(&done).unwrap().contains(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_without_a_bucket_refuses_files_and_secrets_and_sends_nothing() {
    let Some(moto) =
        Moto::start_or_skip("ssm_without_a_bucket_refuses_files_and_secrets_and_sends_nothing")
    else {
        return;
    };
    let mut ctx = moto.ctx(REGION).await;
    ctx.secrets = Secrets::from_pairs([("pw".to_string(), "s3cret-pw".to_string())]);
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("blob.bin"), [0u8, 159, 146, 150]).unwrap();
    ctx.base_dir = Some(local.path().to_path_buf());
    let ctx = Arc::new(ctx);
    let id = instance(&ctx).await;
    let file = state(
        "e2e-ssm-nobucket",
        &id,
        json!([{"type": "file", "source": "blob.bin", "destination": "/tmp/x"}]),
        false,
    );
    let err = provision(&ctx, file).await.unwrap_err();
    assert!(
        matches!(&err, StepError::BuildFailed(m) if m.contains("ssm_output_s3_bucket")),
        "{err:?}"
    );
    let secret = state(
        "e2e-ssm-nobucket",
        &id,
        json!([{"type": "shell", "inline": ["echo <sensitive:pw>"]}]),
        false,
    );
    let err = provision(&ctx, secret).await.unwrap_err();
    assert!(
        matches!(&err, StepError::BuildFailed(m) if m.contains("sensitive") && !m.contains("s3cret-pw")),
        "{err:?}"
    );
    assert!(ctx
        .ssm(REGION)
        .list_commands()
        .instance_id(&id)
        .send()
        .await
        .unwrap()
        .commands()
        .is_empty());
    // A plain inline script needs no bucket: it travels in the command itself.
    let plain = state(
        "e2e-ssm-nobucket",
        &id,
        json!([{"type": "shell", "inline": ["uname -a"]}]),
        false,
    );
    assert!(matches!(
        provision(&ctx, plain.clone()).await,
        Err(StepError::CommandSent(_))
    ));
    let listed = ctx
        .ssm(REGION)
        .list_commands()
        .instance_id(&id)
        .send()
        .await
        .unwrap();
    let sent = &listed.commands()[0].parameters().unwrap()["commands"][0];
    assert!(
        sent.contains("uname -a") && sent.contains("<<'AMIFLOW_FILE_END'"),
        "{sent}"
    );
    provision(&ctx, plain).await.expect("done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_staging_upload_removes_what_was_staged_before_it() {
    let Some(moto) =
        Moto::start_or_skip("a_failed_staging_upload_removes_what_was_staged_before_it")
    else {
        return;
    };
    let direct = Arc::new(moto.ctx(REGION).await);
    direct
        .s3(REGION)
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    let id = instance(&direct).await;
    // A binary file is staged in S3, then the script (with the secret revealed) after it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blob.bin"), [0xffu8, 0xfe, 0x00, 0x01]).unwrap();
    let provisioners = json!([
        {"type": "file", "source": dir.path().join("blob.bin").display().to_string(), "destination": "/opt/blob.bin"},
    ]);
    let st = state("e2e-ssm-staging", &id, provisioners, true);
    let proxy = FaultProxy::start(moto.port).await;
    // The second mutating call: the script's PutObject, after the file's.
    proxy.set(Faults {
        fail_mutating: Some((
            2,
            Injected {
                code: "AccessDenied".into(),
                status: 403,
                times: 1,
            },
        )),
        ..Default::default()
    });
    let via_proxy = Arc::new(Ctx::from_sdk_config(
        amiflow_tests::sdk_config_at(&proxy.url(), REGION).await,
    ));
    let err = provision(&via_proxy, st).await.unwrap_err();
    let puts: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|c| c.action == "PutObject")
        .map(|c| c.fate)
        .collect();
    assert_eq!(puts, ["forwarded", "failed:AccessDenied"], "{err:?}");
    assert!(
        matches!(&err, StepError::BuildFailed(m) if m.contains("staging s3://") && m.contains("AccessDenied")),
        "{err:?}"
    );
    let left = staged_keys(&direct, "staged/e2e-ssm-staging/").await;
    assert!(left.is_empty(), "staged objects left: {left:?}");
}

/// A template written for WinRM, provisioned over SSM: every provisioner (powershell, a
/// restart between steps, windows-shell, a file) is one `AWS-RunPowerShellScript` command,
/// in order, with its script staged in S3 and fetched by `Copy-S3Object`; the restart's
/// limit is its `restart_timeout`; the secret is revealed only in the staged script, never
/// in a command's parameters or the build state. (moto reports each command Success at
/// once and runs nothing: the scripts' own logic is unit-tested in `provision::windows`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winrm_template_provisions_windows_over_ssm_with_a_restart_between_steps() {
    let Some(moto) = Moto::start_or_skip(
        "a_winrm_template_provisions_windows_over_ssm_with_a_restart_between_steps",
    ) else {
        return;
    };
    let execution = "e2e-win";
    let secret = "win-tok-5b4c3d";
    let (ctx, id) = staging_run(&moto, secret).await;
    let raw = json!({
        "region": REGION, "ami_name": "amiflow-win", "instance_type": "t3.large",
        "source_ami": "ami-0f8848d57eb4fe2d2", "communicator": "winrm",
        "winrm_username": "Administrator", "winrm_password": "not-needed", "winrm_timeout": "20m",
        "iam_instance_profile": "ssm-core", "ssm_output_s3_bucket": BUCKET,
    });
    let config =
        amiflow_template::config::from_builder("win", BuilderType::Ebs, raw.as_object().unwrap())
            .expect("a WinRM template is valid");
    assert!(config.comm().unwrap().is_ssm());
    let provisioners = json!([
        {"type": "powershell", "inline": ["Install-WindowsFeature Web-Server", "Write-Output <sensitive:api_token>"],
         "environment_vars": ["STAGE=prod"], "elevated_user": "Administrator", "elevated_password": "x"},
        {"type": "windows-restart", "restart_timeout": "15m"},
        {"type": "powershell", "inline": ["exit 5"], "valid_exit_codes": [0, 5]},
        {"type": "windows-shell", "inline": ["sc query w3svc"]},
        {"type": "file", "content": "<h1>ok</h1>\n", "destination": "C:/inetpub/wwwroot/index.html"}
    ]);
    let st: BuildState = serde_json::from_value(json!({
        "execution": execution,
        "build": {"name": "win", "builder_type": "amazon-ebs", "config": config, "provisioners": provisioners},
        "data": {"instance_id": id},
    }))
    .unwrap();
    let mut staged_scripts = Vec::new();
    let done = loop {
        match provision(&ctx, st.clone()).await {
            Ok(done) => break done,
            Err(StepError::CommandSent(_) | StepError::NotReady(_)) => {
                // The wrapper just staged for the newest command: what the instance runs.
                let keys = staged_keys(&ctx, &format!("staged/{execution}/win/provision/")).await;
                let mut scripts = Vec::new();
                for k in keys {
                    scripts.push(object(&ctx, &k).await);
                }
                staged_scripts.push(scripts.join("\n----\n"));
                assert!(staged_scripts.len() <= 10, "provisioning never ends");
            }
            Err(e) => panic!("{e}"),
        }
    };
    let listed = ctx
        .ssm(REGION)
        .list_commands()
        .instance_id(&id)
        .send()
        .await
        .unwrap();
    let mut commands: Vec<_> = listed.commands().to_vec();
    commands.sort_by_key(|c| c.comment().unwrap_or_default().to_string());
    assert_eq!(commands.len(), 5, "one command per provisioner");
    for (i, c) in commands.iter().enumerate() {
        assert_eq!(c.document_name(), Some("AWS-RunPowerShellScript"), "#{i}");
        assert_eq!(
            c.comment(),
            Some(amiflow::provision::ssm::comment("", execution, i).as_str())
        );
        let params = c.parameters().unwrap();
        assert!(
            params["commands"]
                .join("\n")
                .contains("Copy-S3Object -BucketName"),
            "#{i}: {params:?}"
        );
        assert!(
            !format!("{c:?}").contains(secret),
            "#{i}: the secret is in the command"
        );
    }
    let timeouts: Vec<String> = commands
        .iter()
        .map(|c| c.parameters().unwrap()["executionTimeout"][0].clone())
        .collect();
    assert_eq!(
        timeouts,
        ["3600", "900", "3600", "3600", "3600"],
        "the restart's own limit"
    );
    for (i, want) in [
        (0, "$env:STAGE = 'prod'"),
        (0, &format!("Write-Output {secret}")),
        (1, "exit 3010"),
        (2, "if (@(0,5) -notcontains $rc)"),
        (3, "& cmd.exe /c"),
        (4, "-LocalFile 'C:/inetpub/wwwroot/index.html'"),
    ] {
        assert!(
            staged_scripts[i].contains(want),
            "#{i}: missing {want:?} in:\n{}",
            staged_scripts[i]
        );
    }
    assert_eq!(
        done.data.extra["ssm_commands"].as_object().unwrap().len(),
        5
    );
    assert!(
        staged_keys(&ctx, &format!("staged/{execution}/win/provision/"))
            .await
            .is_empty(),
        "staged objects removed"
    );
    assert!(!serde_json::to_string(&done).unwrap().contains(secret));
}

/// A build that fails, or is stopped, while its command runs leaves the staged script (its
/// secret revealed) and SSM's output in the bucket: Cleanup removes the build's, and the
/// janitor's sweep the execution's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_failing_mid_command_leaves_no_staged_script_or_output() {
    let Some(moto) =
        Moto::start_or_skip("a_build_failing_mid_command_leaves_no_staged_script_or_output")
    else {
        return;
    };
    let secret = "tok-mid-command-31415";
    let (ctx, id) = staging_run(&moto, secret).await;
    let provisioners = json!([{"type": "shell", "inline": ["echo <sensitive:api_token>"]}]);
    let output = |execution: &str| {
        format!(
            "ssm-output/{execution}/ssm/cmd-1/{id}/awsrunShellScript/0.awsrunshellscript/stdout"
        )
    };
    for (execution, by_janitor) in [("e2e-ssm-mid", false), ("e2e-ssm-mid-janitor", true)] {
        let st = state(execution, &id, provisioners.clone(), true);
        let err = provision(&ctx, st.clone()).await.unwrap_err();
        assert!(matches!(&err, StepError::CommandSent(_)), "{err:?}");
        // What SSM writes while the command runs (moto writes none).
        ctx.s3(REGION)
            .put_object()
            .bucket(BUCKET)
            .key(output(execution))
            .body(secret.as_bytes().to_vec().into())
            .send()
            .await
            .unwrap();
        let staged = staged_keys(&ctx, &format!("staged/{execution}/")).await;
        assert!(
            staged.iter().any(|k| k.ends_with("script.sh")),
            "the script is staged while the command runs: {staged:?}"
        );
        if by_janitor {
            let removed = amiflow::steps::janitor::remove_staging(&ctx, BUCKET, execution)
                .await
                .expect("the janitor's staging sweep");
            assert!(
                removed.iter().any(|r| r.ends_with("script.sh")),
                "{removed:?}"
            );
        } else {
            let failed = StepError::BuildFailed("injected failure while the command runs".into());
            super::chain::fail_and_clean(&ctx, st, &failed).await;
        }
        let left: Vec<String> = [
            format!("staged/{execution}/"),
            format!("ssm-output/{execution}/"),
        ]
        .iter()
        .map(|p| staged_keys(&ctx, p))
        .collect::<futures::future::JoinAll<_>>()
        .await
        .concat();
        assert!(left.is_empty(), "{execution}: left in the bucket: {left:?}");
    }
}
