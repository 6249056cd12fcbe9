//! Packer's `build` flags and the error-cleanup-provisioner, through the real `amiflow`
//! binary against moto: `-force`, `-debug`, `-on-error=ask|run-cleanup-provisioner`,
//! `-machine-readable`. Builds use `communicator: none` and shell-local provisioners, so
//! they need nothing but the emulator.

use std::path::Path;
use std::process::Stdio;

use amiflow_tests::lambda_harness::workspace_binary;
use amiflow_tests::Moto;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const REGION: &str = "us-east-1";

/// An amazon-ebs template with no communicator; `extra` is merged into the template.
fn template(ami_name: &str, extra: Value) -> Value {
    let mut t = json!({"builders": [{
        "type": "amazon-ebs", "name": "web", "region": REGION,
        "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro",
        "communicator": "none", "ami_name": ami_name
    }]});
    for (k, v) in extra.as_object().unwrap() {
        t[k] = v.clone();
    }
    t
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `amiflow build ARGS TEMPLATE` in `dir`, stdin from `stdin` (a pipe) or /dev/null.
async fn build(moto: &Moto, dir: &Path, tpl: &Value, args: &[&str], stdin: Option<&str>) -> Run {
    let path = dir.join("template.json");
    std::fs::write(&path, tpl.to_string()).unwrap();
    let mut cmd = tokio::process::Command::new(workspace_binary("amiflow"));
    cmd.arg("build")
        .args(args)
        .arg(&path)
        .envs(moto.env(REGION))
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("run amiflow build");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).await.unwrap();
        // Dropped: the build sees the end of its input after these answers.
    }
    let out = child.wait_with_output().await.unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Instance states in the emulator, e.g. `["terminated"]`.
async fn instance_states(moto: &Moto) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(REGION).await);
    let out = ec2.describe_instances().send().await.unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.state().and_then(|s| s.name()))
        .map(|s| s.as_str().to_string())
        .collect()
}

async fn images_named(moto: &Moto, name: &str) -> Vec<String> {
    let ec2 = aws_sdk_ec2::Client::new(&moto.sdk_config(REGION).await);
    let out = ec2.describe_images().owners("self").send().await.unwrap();
    out.images()
        .iter()
        .filter(|i| i.name() == Some(name))
        .filter_map(|i| i.image_id().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_replaces_an_existing_ami_of_the_same_name() {
    let Some(moto) = Moto::start_or_skip("force_replaces_an_existing_ami_of_the_same_name") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tpl = template("force-e2e", json!({}));
    let first = build(&moto, dir.path(), &tpl, &[], None).await;
    assert!(first.ok, "{}\n{}", first.stdout, first.stderr);
    let before = images_named(&moto, "force-e2e").await;
    assert_eq!(before.len(), 1);

    let again = build(&moto, dir.path(), &tpl, &[], None).await;
    assert!(!again.ok, "the name is taken without -force");
    assert!(
        again.stderr.contains("is used by an existing AMI"),
        "{}",
        again.stderr
    );

    let forced = build(&moto, dir.path(), &tpl, &["-force"], None).await;
    assert!(forced.ok, "{}\n{}", forced.stdout, forced.stderr);
    let after = images_named(&moto, "force-e2e").await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the old image was replaced");
}

/// A build whose provisioner fails, with an error-cleanup-provisioner that writes a file.
fn failing(ami_name: &str) -> Value {
    template(
        ami_name,
        json!({
            "provisioners": [{"type": "shell-local", "inline": ["exit 3"]}],
            "error-cleanup-provisioner": {
                "type": "shell-local", "inline": ["echo {{build_name}} > cleanup-ran.txt"]
            }
        }),
    )
}

/// The order of a build's finished steps in `build`'s plain progress lines.
fn position(stderr: &str, step: &str) -> Option<usize> {
    stderr.find(&format!("    web: {step} ("))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_cleanup_provisioner_runs_on_failure_before_cleanup() {
    let Some(moto) =
        Moto::start_or_skip("the_error_cleanup_provisioner_runs_on_failure_before_cleanup")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("cleanup-ran.txt");

    let run = build(&moto, dir.path(), &failing("ecp-e2e"), &[], None).await;
    assert!(!run.ok, "the provisioner fails the build");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "web");
    let (ecp, cleanup) = (
        position(&run.stderr, "ErrorCleanupProvision"),
        position(&run.stderr, "Cleanup"),
    );
    assert!(
        ecp.is_some() && cleanup.is_some() && ecp < cleanup,
        "ErrorCleanupProvision, then Cleanup:\n{}",
        run.stderr
    );
    assert_eq!(instance_states(&moto).await, ["terminated"], "cleaned up");

    // -on-error=abort: no error-cleanup-provisioner, everything kept.
    std::fs::remove_file(&marker).unwrap();
    let run = build(
        &moto,
        dir.path(),
        &failing("ecp-e2e"),
        &["-on-error=abort"],
        None,
    )
    .await;
    assert!(!run.ok);
    assert!(
        !marker.exists(),
        "abort skips the error-cleanup-provisioner"
    );
    let mut states = instance_states(&moto).await;
    states.sort();
    assert_eq!(
        states,
        ["running", "terminated"],
        "abort keeps the instance"
    );

    // -on-error=run-cleanup-provisioner: it runs, then everything is kept.
    let run = build(
        &moto,
        dir.path(),
        &failing("ecp-e2e"),
        &["-on-error=run-cleanup-provisioner"],
        None,
    )
    .await;
    assert!(!run.ok);
    assert!(marker.exists(), "{}", run.stderr);
    let running = instance_states(&moto)
        .await
        .iter()
        .filter(|s| *s == "running")
        .count();
    assert_eq!(running, 2, "kept, as with abort");

    // A build that succeeds never runs it.
    std::fs::remove_file(&marker).unwrap();
    let ok = template(
        "ecp-ok-e2e",
        json!({"error-cleanup-provisioner": {"type": "shell-local", "inline": ["touch cleanup-ran.txt"]}}),
    );
    let run = build(&moto, dir.path(), &ok, &[], None).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_and_ask_need_someone_to_answer_and_follow_the_answers() {
    let Some(moto) =
        Moto::start_or_skip("debug_and_ask_need_someone_to_answer_and_follow_the_answers")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tpl = template("debug-e2e", json!({}));

    // Nobody to answer (stdin is /dev/null): refused before anything exists.
    for flag in ["-debug", "-on-error=ask"] {
        let run = build(&moto, dir.path(), &tpl, &[flag], None).await;
        assert!(!run.ok);
        assert!(
            run.stderr
                .contains(&format!("{flag} waits for answers on stdin")),
            "{}",
            run.stderr
        );
    }
    assert!(instance_states(&moto).await.is_empty());

    // Enter at every pause: the build runs, pausing before each step.
    let run = build(
        &moto,
        dir.path(),
        &tpl,
        &["-debug"],
        Some(&"\n".repeat(100)),
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    for step in ["PreValidate", "RunSourceInstance", "CreateImage", "Cleanup"] {
        assert!(
            run.stderr
                .contains(&format!("web: pausing before step {step}.")),
            "{step}:\n{}",
            run.stderr
        );
    }

    // "stop" at the third pause: the build fails there and cleans up.
    let run = build(
        &moto,
        dir.path(),
        &template("debug-stop-e2e", json!({})),
        &["-debug"],
        Some("\n\nstop\n"),
    )
    .await;
    assert!(!run.ok);
    assert!(run.stderr.contains("stopped before"), "{}", run.stderr);
    assert!(images_named(&moto, "debug-stop-e2e").await.is_empty());

    // -on-error=ask, answered "a": the failed build keeps its instance.
    let before = instance_states(&moto).await.len();
    let run = build(
        &moto,
        dir.path(),
        &failing("ask-e2e"),
        &["-on-error=ask"],
        Some("a\n"),
    )
    .await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("step Provision failed") && run.stderr.contains("[a] abort"),
        "{}",
        run.stderr
    );
    let states = instance_states(&moto).await;
    assert_eq!(states.len(), before + 1);
    assert!(states.contains(&"running".to_string()), "{states:?}");
    assert!(
        !dir.path().join("cleanup-ran.txt").exists(),
        "abort skips the error-cleanup-provisioner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_readable_output_is_packers_format() {
    let Some(moto) = Moto::start_or_skip("machine_readable_output_is_packers_format") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = build(
        &moto,
        dir.path(),
        &template("mr-e2e", json!({})),
        &["-machine-readable"],
        None,
    )
    .await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert!(
            fields.len() >= 3 && fields[0].parse::<i64>().is_ok() && !fields[2].is_empty(),
            "not timestamp,target,type,data: {line:?}"
        );
    }
    let ami = images_named(&moto, "mr-e2e").await;
    assert_eq!(ami.len(), 1);
    let tail: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(",web,artifact"))
        .map(|l| l.split_once(',').unwrap().1.to_string())
        .collect();
    assert_eq!(
        tail,
        [
            "web,artifact-count,1".to_string(),
            "web,artifact,0,builder-id,mitchellh.amazonebs".into(),
            format!("web,artifact,0,id,{REGION}:{}", ami[0]),
            format!(
                "web,artifact,0,string,AMIs were created:\\n{REGION}: {}\\n",
                ami[0]
            ),
            "web,artifact,0,files-count,0".into(),
            "web,artifact,0,end".into(),
        ],
        "{}",
        run.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(",,ui,say,web: CreateImage (")),
        "progress as ui,say lines:\n{}",
        run.stdout
    );
}

/// Post-processors run in the template's order after a successful build: `manifest`
/// writes its file, `checksum` its (empty) one, then a `shell-local` post-processor reads it (Packer's common CI
/// pattern), with `PACKER_BUILD_NAME`/`PACKER_BUILDER_TYPE`; a failing one fails the run
/// and keeps the AMI, as Packer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_local_post_processor_runs_after_the_manifest() {
    let Some(moto) = Moto::start_or_skip("shell_local_post_processor_runs_after_the_manifest")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let tpl = template(
        "pp-{{timestamp}}",
        json!({"post-processors": [[
            {"type": "manifest", "output": "manifest.json"},
            {"type": "checksum", "checksum_types": ["sha256"], "output": "sums/{{.BuildName}}.{{.ChecksumType}}"},
            {"type": "shell-local", "inline": [
                "cp manifest.json seen-by-pp.json",
                "echo \"$PACKER_BUILD_NAME $PACKER_BUILDER_TYPE\" > pp-env.txt"
            ]}
        ]]}),
    );
    let run = build(&moto, root, &tpl, &[], None).await;
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let seen: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("seen-by-pp.json")).unwrap())
            .unwrap();
    let artifact = seen["builds"][0]["artifact_id"].as_str().unwrap();
    assert!(artifact.starts_with(&format!("{REGION}:ami-")), "{seen:#}");
    assert_eq!(
        std::fs::read_to_string(root.join("pp-env.txt"))
            .unwrap()
            .trim(),
        "web amazon-ebs"
    );
    // An AMI has no files to hash: the checksum file is there, empty, as Packer leaves it.
    assert_eq!(std::fs::read(root.join("sums/web.sha256")).unwrap(), b"");

    let failing = template(
        "pp-fail-{{timestamp}}",
        json!({"post-processors": [{"type": "shell-local", "inline": ["exit 3"]}]}),
    );
    let run = build(&moto, root, &failing, &[], None).await;
    assert!(!run.ok, "a failing post-processor fails the run");
    assert!(
        run.stderr.contains("post-processor shell-local failed") && run.stderr.contains('3'),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("AMIs were created"),
        "the artifact stays: {}",
        run.stdout
    );

    // Checked like the provisioner: a typo is named, nothing runs.
    let typo = template(
        "pp-typo",
        json!({"post-processors": [{"type": "shell-local", "inlin": ["true"]}]}),
    );
    let run = build(&moto, root, &typo, &[], None).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("post-processors[0].inlin")
            || run.stdout.contains("post-processors[0].inlin"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
}
