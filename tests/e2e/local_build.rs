//! A local build (`amiflow build`, functions/cli/src/build.rs) that is interrupted or whose
//! handler panics still removes what it created, against moto. The SSH "instance" is never
//! an address moto invents: `ssh_host` is 127.0.0.1 (a closed port, or the test sshd).

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amiflow::local::{Interrupt, LocalInvoker, PANIC};
use amiflow::steps::StepSpec;
use amiflow::{Ctx, StepError};
use amiflow_statemachine::{Engine, Event, RealClock, StateMachine};
use amiflow_tests::lambda_harness::{workspace_binary, ChildGuard};
use amiflow_tests::sshd::{free_port, Sshd};
use amiflow_tests::Moto;
use futures::future::BoxFuture;
use serde_json::{json, Value};

use crate::ebs::tagged_leftovers;

const REGION: &str = "us-east-1";
const DEFINITION: &str = include_str!("../../statemachine/amiflow.asl.json");

/// An SSH build whose "instance" is 127.0.0.1:`port`, with `provisioners`; `key` is the
/// client key for a real sshd (none: the build makes a temporary key pair).
fn ssh_template(port: u16, user: &str, key: Option<&Path>, provisioners: Value) -> Value {
    let mut builder = json!({
        "type": "amazon-ebs",
        "region": REGION,
        "source_ami": "ami-0f8848d57eb4fe2d2",
        "instance_type": "t3.micro",
        "ami_name": "amiflow-interrupted-{{timestamp}}",
        "ssh_username": user,
        "ssh_host": "127.0.0.1",
        "ssh_port": port,
        "ssh_timeout": "10m",
    });
    if let Some(key) = key {
        builder["ssh_private_key_file"] = json!(key);
    }
    json!({"builders": [builder], "provisioners": provisioners})
}

/// `amiflow build` running against moto, its stderr collected line by line.
struct RunningBuild {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
}

impl RunningBuild {
    fn start(moto: &Moto, template: &Value) -> RunningBuild {
        RunningBuild::start_at(moto, template, None)
    }

    /// [`RunningBuild::start`] through `endpoint` (a fault proxy in front of moto).
    fn start_at(moto: &Moto, template: &Value, endpoint: Option<String>) -> RunningBuild {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("template.json");
        std::fs::write(&path, template.to_string()).unwrap();
        let mut child = Command::new(workspace_binary("amiflow"))
            .arg("build")
            .arg(&path)
            .envs(moto.env(REGION))
            .envs(endpoint.map(|url| ("AWS_ENDPOINT_URL".to_string(), url)))
            .env_remove("AWS_LAMBDA_FUNCTION_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn amiflow build");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
                let _ = tx.send(());
            }
        });
        RunningBuild {
            child: ChildGuard(child),
            lines,
            new_line,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (at most `limit`) for a stderr line containing `text`.
    fn wait_for_line(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.lines.lock().unwrap().iter().any(|l| l.contains(text)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no line with {text:?} within {limit:?}:\n{}",
                self.log()
            );
            let _ = self
                .new_line
                .recv_timeout(left.min(Duration::from_millis(500)));
        }
    }

    /// The execution name the build announces (`==> NAME: 1 build(s): ...`).
    fn execution(&self) -> String {
        self.wait_for_line("build(s):", Duration::from_secs(60));
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                l.strip_prefix("==> ")
                    .and_then(|r| r.split_once(": "))
                    .filter(|(_, rest)| rest.contains("build(s)"))
                    .map(|(e, _)| e.to_string())
            })
            .expect("the build names its execution")
    }

    /// Sends `signal` (`INT`, `TERM`) to the build, by its own PID.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most `limit`) for the build to exit: its exit code, or the signal that
    /// ended it as a negative number.
    fn wait_exit(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                use std::os::unix::process::ExitStatusExt;
                return status
                    .code()
                    .unwrap_or_else(|| -status.signal().unwrap_or(0));
            }
            assert!(
                Instant::now() < deadline,
                "the build did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Everything the build could have left, tagged or not: instances, key pairs, security
/// groups other than the default one, volumes, images, snapshots, and the tagged rest.
async fn leftovers(moto: &Moto, execution: &str) -> Vec<String> {
    let ctx = moto.ctx(REGION).await;
    let mut out = tagged_leftovers(&ctx, execution, &[REGION], true).await;
    let ec2 = ctx.ec2(REGION);
    for r in ec2
        .describe_instances()
        .send()
        .await
        .unwrap()
        .reservations()
    {
        for i in r.instances() {
            let state = i.state().and_then(|s| s.name()).map(|n| n.as_str());
            if !matches!(state, Some("terminated" | "shutting-down")) {
                out.push(format!("untagged? instance {}", i.instance_id().unwrap()));
            }
        }
    }
    for k in ec2.describe_key_pairs().send().await.unwrap().key_pairs() {
        out.push(format!("key pair {}", k.key_name().unwrap()));
    }
    for g in ec2
        .describe_security_groups()
        .send()
        .await
        .unwrap()
        .security_groups()
    {
        if g.group_name() != Some("default") {
            out.push(format!("security group {}", g.group_id().unwrap()));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn assert_cleaned_up_after(build: &RunningBuild, code: i32, signal_code: i32) {
    let log = build.log();
    assert_eq!(code, signal_code, "exit status:\n{log}");
    assert!(
        log.contains("failed (Cancelled); cleaning up"),
        "the running step is cancelled and Cleanup announced:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(": Cleanup (")),
        "Cleanup's progress is shown:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_while_connect_waits_cleans_up_and_exits_nonzero() {
    let Some(moto) = Moto::start_or_skip("sigint_while_connect_waits") else {
        return;
    };
    // Nobody listens on this port: Connect polls (NotReady) until the interrupt.
    let template = ssh_template(free_port(), "ec2-user", None, json!([]));
    let mut build = RunningBuild::start(&moto, &template);
    let execution = build.execution();
    build.wait_for_line("Connect:", Duration::from_secs(120));
    let before = leftovers(&moto, &execution).await;
    assert!(
        before.iter().any(|l| l.contains("instance"))
            && before.iter().any(|l| l.contains("key pair")),
        "the build had created its instance and key pair: {before:?}"
    );
    build.signal("INT");
    let code = build.wait_exit(Duration::from_secs(180));
    assert_cleaned_up_after(&build, code, 130);
    assert_eq!(leftovers(&moto, &execution).await, Vec::<String>::new());
}

/// SIGINT later in the build: while its image is still pending (WaitImageAvailable polls;
/// a fault proxy shows it pending). The image exists by then: Cleanup deregisters it and
/// deletes its snapshots, besides the instance.
#[tokio::test(flavor = "multi_thread")]
async fn sigint_while_the_image_is_pending_removes_the_image_too() {
    let Some(moto) = Moto::start_or_skip("sigint_while_the_image_is_pending") else {
        return;
    };
    let proxy = amiflow_tests::fault_proxy::FaultProxy::start(moto.port).await;
    proxy.set(amiflow_tests::fault_proxy::Faults {
        pending_describes: 2,
        ..Default::default()
    });
    let template = json!({"builders": [{
        "type": "amazon-ebs", "region": REGION, "source_ami": "ami-0f8848d57eb4fe2d2",
        "instance_type": "t3.micro", "communicator": "none",
        "ami_name": "amiflow-interrupted-image-{{timestamp}}"
    }]});
    let mut build = RunningBuild::start_at(&moto, &template, Some(proxy.url()));
    let execution = build.execution();
    build.wait_for_line("WaitImageAvailable:", Duration::from_secs(120));
    let before = leftovers(&moto, &execution).await;
    assert!(
        before.iter().any(|l| l.contains("image")) && before.iter().any(|l| l.contains("instance")),
        "the build had made its image: {before:?}"
    );
    build.signal("INT");
    let code = build.wait_exit(Duration::from_secs(180));
    assert_cleaned_up_after(&build, code, 130);
    assert_eq!(leftovers(&moto, &execution).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_provisioner_runs_cleans_up_and_exits_nonzero() {
    let Some(moto) = Moto::start_or_skip("sigterm_while_a_provisioner_runs") else {
        return;
    };
    let sshd = match Sshd::start() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("SKIPPED: no local sshd: {why}");
            return;
        }
    };
    let marker = sshd.path("provisioner-started");
    let template = ssh_template(
        sshd.port,
        &sshd.user,
        Some(&sshd.client_key),
        json!([{"type": "shell", "inline": [format!("touch {}", marker.display()), "sleep 120"]}]),
    );
    let mut build = RunningBuild::start(&moto, &template);
    let execution = build.execution();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the provisioner never started:\n{}",
            build.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    build.signal("TERM");
    let code = build.wait_exit(Duration::from_secs(180));
    assert_cleaned_up_after(&build, code, 143);
    assert_eq!(leftovers(&moto, &execution).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_and_names_the_clean_command() {
    let Some(moto) = Moto::start_or_skip("a_second_signal_exits_at_once") else {
        return;
    };
    let template = ssh_template(free_port(), "ec2-user", None, json!([]));
    // Cleanup is slowed down by nothing here, so the second signal has to come right
    // after the first: both are sent while Connect polls.
    let mut build = RunningBuild::start(&moto, &template);
    let execution = build.execution();
    build.wait_for_line("Connect:", Duration::from_secs(120));
    build.signal("TERM");
    build.signal("INT");
    let code = build.wait_exit(Duration::from_secs(30));
    let log = build.log();
    // Both are pending before the build handles either, so it may take them in either order:
    // the one it takes second ends it, with that signal's exit code.
    let second = if log.contains("SIGINT again") {
        ("SIGINT", 130)
    } else {
        ("SIGTERM", 143)
    };
    assert!(
        log.contains(&format!("{} again", second.0)),
        "the second signal is reported:\n{log}"
    );
    assert_eq!(
        code, second.1,
        "the second signal ({}) ends the build:\n{log}",
        second.0
    );
    let command = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("amiflow clean "))
        .unwrap_or_else(|| panic!("no `amiflow clean` command printed:\n{log}"))
        .to_string();
    assert!(
        command.starts_with(&format!("{execution} "))
            && command.contains(&format!("--region {REGION}")),
        "{command}"
    );
    // Whatever the first signal's Cleanup did not get to, the printed command removes.
    let args: Vec<&str> = command.split_whitespace().collect();
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("clean")
        .args(&args)
        .envs(moto.env(REGION))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "amiflow clean {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leftovers(&moto, &execution).await, Vec::<String>::new());
}

/// The committed state machine with the real handlers, except Connect, which panics.
fn panicking_connect(name: &str) -> Option<StepSpec> {
    let mut step = amiflow::flows::find(name)?;
    if step.name == "Connect" {
        step.handler = panics;
    }
    Some(step)
}

fn panics(_: Arc<Ctx>, _: Value) -> BoxFuture<'static, Result<Value, StepError>> {
    Box::pin(async { panic!("a handler bug, planted by the test") })
}

/// A communicator-none amazon-ebs build with `extra` keys.
fn ebs_template(extra: Value) -> Value {
    let mut builder = json!({
        "type": "amazon-ebs", "region": REGION, "source_ami": "ami-0f8848d57eb4fe2d2",
        "instance_type": "t3.micro", "communicator": "none", "ami_name": "amiflow-local-{{timestamp}}"
    });
    for (k, v) in extra.as_object().unwrap() {
        builder[k] = v.clone();
    }
    json!({"builders": [builder]})
}

/// Runs the committed state machine in-process against moto, as `amiflow build` does
/// (spawned: a panic escaping the engine ends that task), with handlers from `find`.
/// Returns the execution name, the outcome (None if the engine's task panicked) and the
/// states entered.
async fn run_engine(
    moto: &Moto,
    template: &Value,
    find: fn(&str) -> Option<StepSpec>,
) -> (
    String,
    Option<Result<Value, amiflow_statemachine::ExecutionError>>,
    Vec<String>,
) {
    let execution = format!("e2e-local-{}", &uuid::Uuid::new_v4().to_string()[..8]);
    let input = json!({"template": template.to_string(), "vars": {}});
    run_engine_as(moto, &execution, input, find).await
}

/// [`run_engine`] with the execution's name and input given.
async fn run_engine_as(
    moto: &Moto,
    execution: &str,
    input: Value,
    find: fn(&str) -> Option<StepSpec>,
) -> (
    String,
    Option<Result<Value, amiflow_statemachine::ExecutionError>>,
    Vec<String>,
) {
    let machine = StateMachine::from_json(DEFINITION).unwrap();
    let invoker =
        LocalInvoker::with_steps(Arc::new(moto.ctx(REGION).await), Interrupt::default(), find);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let engine = Engine::new(invoker)
        .with_clock(RealClock { scale: 0.01 })
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let execution = execution.to_string();
    let name = execution.clone();
    let outcome = tokio::spawn(async move { engine.run(&machine, &name, input).await })
        .await
        .ok();
    let entered = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::StateEntered { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    (execution, outcome, entered)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_fails_its_build_and_cleanup_still_runs() {
    let Some(moto) = Moto::start_or_skip("a_panicking_handler_fails_its_build") else {
        return;
    };
    let (execution, outcome, entered) =
        run_engine(&moto, &ebs_template(json!({})), panicking_connect).await;
    let failure = outcome
        .expect("the handler's panic stays inside its invocation")
        .expect_err("the build fails");
    assert!(
        failure.cause.contains(PANIC) && failure.cause.contains("planted by the test"),
        "{failure:?}"
    );
    assert!(
        entered.iter().any(|n| n == "amazon-ebs.RunSourceInstance"),
        "the instance was launched before the panic: {entered:?}"
    );
    assert!(
        entered.iter().any(|n| n == "amazon-ebs.Cleanup"),
        "Cleanup runs after the panic: {entered:?}"
    );
    assert_eq!(leftovers(&moto, &execution).await, Vec::<String>::new());
}

/// The HttpTokens moto recorded for the instance `execution` launched.
async fn http_tokens_of(moto: &Moto, execution: &str) -> String {
    let ec2 = moto.ctx(REGION).await.ec2(REGION);
    let described = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{}", amiflow::state::BUILD_TAG))
                .values(execution)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let instances: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(instances.len(), 1, "{instances:?}");
    instances[0]
        .metadata_options()
        .and_then(|m| m.http_tokens())
        .map(|t| t.as_str().to_string())
        .expect("moto records the metadata options")
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_require_imdsv2_unless_the_template_allows_v1() {
    let Some(moto) = Moto::start_or_skip("instances_require_imdsv2") else {
        return;
    };
    let (default, outcome, _) =
        run_engine(&moto, &ebs_template(json!({})), amiflow::flows::find).await;
    outcome.unwrap().expect("the default build succeeds");
    assert_eq!(http_tokens_of(&moto, &default).await, "required");

    // Its own AMI name: two builds within one second would share `{{timestamp}}`.
    let allows_v1 = ebs_template(json!({
        "metadata_options": {"http_tokens": "optional"},
        "ami_name": "amiflow-local-v1-{{timestamp}}"
    }));
    let (optional, outcome, _) = run_engine(&moto, &allows_v1, amiflow::flows::find).await;
    outcome.unwrap().expect("the IMDSv1 build succeeds");
    assert_eq!(http_tokens_of(&moto, &optional).await, "optional");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execution_name_ssm_refuses_is_normalized_everywhere_and_swept() {
    let Some(moto) = Moto::start_or_skip("an_execution_name_ssm_refuses") else {
        return;
    };
    // Step Functions accepts these characters; SSM parameter names and IAM tags do not.
    let execution = format!("e2e@+(x)!={}", &uuid::Uuid::new_v4().to_string()[..8]);
    let id = amiflow::state::build_id(&execution);
    let template = ssh_template(free_port(), "ec2-user", None, json!([]));
    let mut template = template;
    template["builders"][0]["temporary_iam_instance_profile_policy_document"] = json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["*"]}]
    });
    // Connect panics, and on_error=abort keeps everything: what the janitor then finds.
    let input = json!({"template": template.to_string(), "vars": {}, "on_error": "abort"});
    let (_, outcome, entered) = run_engine_as(&moto, &execution, input, panicking_connect).await;
    outcome.unwrap().expect_err("the build fails at Connect");
    assert!(
        entered.iter().any(|n| n == "amazon-ebs.Connect"),
        "{entered:?}"
    );
    let ctx = moto.ctx(REGION).await;
    let tags = ctx
        .ec2(REGION)
        .describe_tags()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("key")
                .values(amiflow::state::BUILD_TAG)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let values: std::collections::BTreeSet<String> = tags
        .tags()
        .iter()
        .filter_map(|t| t.value().map(String::from))
        .collect();
    assert_eq!(
        values,
        [id.clone()].into_iter().collect(),
        "every EC2 resource carries the normalized name"
    );
    let kept = tagged_leftovers(&ctx, &id, &[REGION], true).await;
    for wanted in [
        "instance",
        "key pair",
        "security group",
        "parameter",
        "role",
    ] {
        assert!(
            kept.iter().any(|k| k.starts_with(wanted)),
            "{wanted} kept under {id}: {kept:?}"
        );
    }
    for k in &kept {
        if let Some(name) = k.strip_prefix("parameter ") {
            assert!(name.starts_with(&format!("/amiflow/{id}/")), "{name}");
        }
    }
    let roles = ctx
        .iam()
        .list_roles()
        .path_prefix("/amiflow/")
        .send()
        .await
        .unwrap();
    for role in roles.roles() {
        let tags = ctx
            .iam()
            .list_role_tags()
            .role_name(role.role_name())
            .send()
            .await
            .unwrap();
        for tag in tags.tags() {
            if tag.key() == amiflow::state::BUILD_TAG {
                assert_eq!(tag.value(), id, "the role's tag");
            }
        }
    }
    // `amiflow clean` (and the janitor, through the same sweep) is given the name Step
    // Functions knows.
    amiflow_cli::clean::clean(
        &ctx,
        &execution,
        &[REGION.to_string()],
        Duration::from_millis(500),
        Duration::from_secs(120),
    )
    .await
    .expect("the sweep by the raw name works");
    assert_eq!(leftovers(&moto, &id).await, Vec::<String>::new());
}
