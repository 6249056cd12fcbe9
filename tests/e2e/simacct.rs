//! amiflow as deployed, in a simulated account on this machine (tests/simacct/, Python):
//! infra/template.json packaged and translated as `sam deploy` does, created by moto's
//! CloudFormation with IAM enforced, and compared resource by resource with the template;
//! every function the real `bootstrap` behind a local Lambda (Invoke + Runtime API) with its
//! stack environment and its own role's credentials; the state machine's definition with its
//! DefinitionSubstitutions resolved from the stack, run by aws-local-stepfunctions.
//!
//! A build of each builder must succeed with no AccessDenied and leave nothing but its
//! artifact in the account (an inventory before and after); wall time, Lambda invocations and
//! state transitions are printed. Then: a role missing one action fails the build naming
//! the function and the action; the janitor, fed the event its rule delivers, sweeps what that
//! failed build left; the schedule's input starts a build that reads its template from S3;
//! a build that would connect anywhere but this machine is refused before it starts.
//!
//! The account is written in Python because its parts are Python already (the SAM translator,
//! boto3, moto's own event-pattern matcher); this file is the customer: templates, sshd, loop
//! devices, executions and judgements. What the account does not emulate, and how each gap is
//! covered, is in tests/simacct/README.md.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use amiflow_tests::lambda_harness::{workspace_binary, Als, ChildGuard};
use amiflow_tests::{cache_dir, http_request, Moto};
use aws_sdk_s3::error::ProvideErrorMetadata;
use serde_json::{json, Value};

use super::builders::{
    ebsvolume_template, instance_fixture, instance_template, surrogate_template, BUCKET,
    COPY_REGION,
};
use super::chroot_host::{loop_devices_usable, mounts_under, LoopDisk};

const REGION: &str = "us-east-1";
/// The stack's name, and so its state machine's.
const STACK: &str = "amiflow";
const REGIONS: [&str; 2] = [REGION, COPY_REGION];
const SOURCE_AMI: &str = "ami-0f8848d57eb4fe2d2";
/// The waits a deployed build awaits EC2's event for (a callback state `<builder>.Await<wait>`
/// before the polled `<builder>.Wait<wait>`).
/// The waits awaited deployed before they are polled (waits.rs).
fn awaited_waits() -> Vec<&'static str> {
    amiflow::waits::ALL
        .iter()
        .filter(|w| w.event.is_some())
        .map(|w| w.name)
        .collect()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The simulated account: moto (IAM enforced) and tests/simacct/account.py serving Lambda,
/// the front door to moto and the control API. Stopped by PID when dropped.
pub(super) struct Account {
    pub(super) ready: Value,
    control_port: u16,
    stdin: Option<ChildStdin>,
    child: ChildGuard,
    work: tempfile::TempDir,
    moto: Moto,
}

impl Drop for Account {
    fn drop(&mut self) {
        // Closing stdin lets the account stop its sandboxes; the guard kills it otherwise.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // A failed test's account (logs, the executions' event files) on request.
        if std::thread::panicking() && std::env::var_os("AMIFLOW_KEEP_SIMACCT").is_some() {
            let kept = std::mem::replace(&mut self.work, tempfile::tempdir().unwrap()).keep();
            eprintln!(
                "simacct: the account's work directory is kept at {}",
                kept.display()
            );
        }
    }
}

/// The SDK's configuration for `endpoint`, in the account's region, signed with these keys.
async fn sdk_as(
    endpoint: &str,
    key_id: &str,
    secret: &str,
    token: Option<&str>,
) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_credential_types::Credentials::new(
            key_id,
            secret,
            token.map(String::from),
            None,
            "simacct",
        ))
        .load()
        .await
}

pub(super) fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a 127.0.0.1:PORT url")
}

impl Account {
    /// Starts moto and the account, or says why the test must skip.
    pub(super) fn start(host_env: Value, als: &Als) -> Result<Account, String> {
        let python = cache_dir().join("venv/bin/python");
        let probe = Command::new(&python)
            .args(["-c", "import samtranslator, moto, boto3"])
            .output()
            .map_err(|e| {
                format!(
                    "{} not runnable ({e}); run scripts/setup.sh",
                    python.display()
                )
            })?;
        if !probe.status.success() {
            return Err(
                "the venv lacks samtranslator/moto/boto3: run scripts/setup.sh moto lint".into(),
            );
        }
        let amis = repo_root().join("tests/simacct/amis.json");
        let amis = amis.to_string_lossy().to_string();
        let moto = Moto::start_with_env(&[
            // IAM enforcement after the three requests that create the admin user and key.
            ("INITIAL_NO_AUTH_ACTION_COUNT", "3"),
            // A one-image catalogue: quick first EC2 call, small inventories.
            ("MOTO_AMIS_PATH", &amis),
        ])
        .map_err(|e| format!("moto: {e:#}"))?;
        let work = tempfile::Builder::new()
            .prefix("amiflow-simacct-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let config = json!({
            "moto_url": moto.url(),
            "bootstrap": workspace_binary("bootstrap"),
            "repo": repo_root(),
            "work_dir": work.path(),
            "region": REGION,
            "stack_name": STACK,
            "host_env": host_env,
            // The account's Step Functions runs executions with tests/als/run.mjs.
            "node": als.node,
            "node_modules": als.modules,
            // amazon-instance's bundles go to this bucket: the stack's roles reach no other.
            "parameters": { "BundleBuckets": BUCKET },
        });
        let config_path = work.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = std::fs::File::create(work.path().join("account.log")).unwrap();
        let mut child = ChildGuard(
            Command::new(&python)
                .arg(repo_root().join("tests/simacct/account.py"))
                .arg(&config_path)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting the account: {e}"))?,
        );
        let stdin = child.0.stdin.take();
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let log = std::fs::read_to_string(work.path().join("account.log")).unwrap_or_default();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the account printed no ready line ({e}): {line}\n{log}"));
        assert_eq!(
            ready["ready"],
            true,
            "the account did not come up: {}\n{}\n{log}",
            ready["error"],
            ready["trace"].as_str().unwrap_or_default()
        );
        eprint!("{log}");
        let control_port = port_of(ready["control"].as_str().unwrap());
        Ok(Account {
            ready,
            control_port,
            stdin,
            child,
            work,
            moto,
        })
    }

    pub(super) fn control(&self, method: &str, path: &str, body: &Value) -> Value {
        let (status, text) = http_request(self.control_port, method, path, &body.to_string())
            .unwrap_or_else(|e| panic!("control {path}: {e:#}"));
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert_eq!(status, 200, "control {path} answered {status}: {v:#}");
        v
    }

    /// Counts since the last call: invocations per function, cold starts, refusals, AWS calls.
    pub(super) fn stats(&self) -> Value {
        self.control("GET", "/stats?reset=1", &Value::Null)
    }

    pub(super) fn inventory(&self) -> BTreeSet<String> {
        let query: Vec<String> = REGIONS.iter().map(|r| format!("region={r}")).collect();
        let v = self.control(
            "GET",
            &format!("/inventory?{}", query.join("&")),
            &Value::Null,
        );
        serde_json::from_value(v).expect("inventory lines")
    }

    fn credentials(&self) -> Vec<(&'static str, String)> {
        let c = &self.ready["state_machine"]["credentials"];
        vec![
            (
                "AWS_ACCESS_KEY_ID",
                c["AccessKeyId"].as_str().unwrap().to_string(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY",
                c["SecretAccessKey"].as_str().unwrap().to_string(),
            ),
            (
                "AWS_SESSION_TOKEN",
                c["SessionToken"].as_str().unwrap().to_string(),
            ),
        ]
    }

    /// amiflow's clients with the admin's key, straight to moto (checks, not builds).
    pub(super) async fn admin(&self) -> amiflow::Ctx {
        let key = &self.ready["admin"];
        amiflow::Ctx::from_sdk_config(
            sdk_as(
                &self.moto.url(),
                key["access_key_id"].as_str().unwrap(),
                key["secret_access_key"].as_str().unwrap(),
                None,
            )
            .await,
        )
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.work.path().join("account.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs one execution as Step Functions would, signed as the state machine's role.
    async fn execute(&self, als: &Als, name: &str, input: Value) -> Run {
        self.execute_with(als, name, input, &[]).await
    }

    /// [`Account::execute`] with more of run.mjs's environment (`env`).
    async fn execute_with(&self, als: &Als, name: &str, input: Value, env: &[(&str, &str)]) -> Run {
        self.stats();
        let before = self.inventory();
        let creds = self.credentials();
        let mut creds: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // The deployed state machine, as its executions see themselves ($$.StateMachine).
        let machine = self.ready["state_machine"]["arn"].as_str().unwrap();
        creds.push(("AMIFLOW_STATE_MACHINE_ARN", machine));
        // Callback tasks wait for their token's answer, given to the account's Step Functions.
        creds.push((
            "AMIFLOW_CALLBACK_URL",
            self.ready["callback_url"].as_str().unwrap(),
        ));
        creds.extend_from_slice(env);
        let started = Instant::now();
        let record = als
            .run_as(
                Path::new(self.ready["state_machine"]["definition"].as_str().unwrap()),
                &input,
                name,
                self.ready["lambda_endpoint"].as_str().unwrap(),
                &creds,
            )
            .await;
        self.ended(name, input, record, &before, started)
    }

    /// The run of execution `name` that ended with `record`: its wall time from `started`,
    /// the counts since the last stats, and what it added to and removed from `before`.
    fn ended(
        &self,
        name: &str,
        input: Value,
        record: Value,
        before: &BTreeSet<String>,
        started: Instant,
    ) -> Run {
        let wall = started.elapsed();
        let stats = self.stats();
        let after = self.inventory();
        Run {
            name: name.to_string(),
            input,
            record,
            stats,
            wall,
            added: after.difference(before).cloned().collect(),
            removed: before.difference(&after).cloned().collect(),
        }
    }
}

impl Account {
    /// An execution the account's Step Functions runs (started through its API: by the
    /// schedule, by `amiflow start`), once it has ended; `before`: the inventory and
    /// `started` the time before it was started.
    async fn hosted(&self, name: &str, before: BTreeSet<String>, started: Instant) -> Run {
        let state = loop {
            let state = self.execution(name);
            if state["status"] != "RUNNING" && state["ended"] == true {
                break state;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{name} is still running after 10 min: {state:#}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let input = serde_json::from_str(state["input"].as_str().unwrap_or("{}")).unwrap();
        self.ended(name, input, state["record"].clone(), &before, started)
    }

    /// A Step Functions client with the admin's key, through the front door: the account's
    /// Step Functions (the `aws stepfunctions` an operator would use).
    async fn sfn(&self) -> aws_sdk_sfn::Client {
        let key = &self.ready["admin"];
        aws_sdk_sfn::Client::new(
            &sdk_as(
                self.ready["aws_endpoint"].as_str().unwrap(),
                key["access_key_id"].as_str().unwrap(),
                key["secret_access_key"].as_str().unwrap(),
                None,
            )
            .await,
        )
    }

    /// An EC2 client signed with `function`'s role keys, through the front door (as the
    /// function's own calls go).
    async fn ec2_as(&self, function: &str) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.config_as(function).await)
    }

    /// The SDK's configuration signed as one function's role (the credentials the account
    /// gave it).
    async fn config_as(&self, function: &str) -> aws_config::SdkConfig {
        let key = &self.ready["functions"][function]["credentials"];
        sdk_as(
            self.ready["aws_endpoint"].as_str().unwrap(),
            key["AccessKeyId"].as_str().unwrap(),
            key["SecretAccessKey"].as_str().unwrap(),
            key["SessionToken"].as_str(),
        )
        .await
    }

    /// What the account holds beyond `before`, once the janitor (which runs on the
    /// execution's end event, in the background) has had up to 10 s to sweep.
    async fn left_since(&self, before: &BTreeSet<String>) -> Vec<String> {
        let mut left = Vec::new();
        for _ in 0..40 {
            left = self.inventory().difference(before).cloned().collect();
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        left
    }

    /// What the janitor did for execution `name`, which ended with `status`: its rule's
    /// first delivery, checked to be the janitor's.
    fn janitor_on(&self, name: &str, status: &str) -> Value {
        let ended = self.execution(name);
        assert_eq!(ended["status"], status, "{ended:#}");
        let janitor = &ended["deliveries"][0]["deliveries"][0];
        assert_eq!(janitor["target"], "Janitor", "{ended:#}");
        janitor.clone()
    }

    /// Starts execution `name` with `input` through the account's Step Functions (as
    /// `aws stepfunctions start-execution` would), returning its ARN.
    async fn start_execution(&self, name: &str, input: &Value) -> String {
        self.sfn()
            .await
            .start_execution()
            .state_machine_arn(self.ready["state_machine"]["arn"].as_str().unwrap())
            .name(name)
            .input(input.to_string())
            .send()
            .await
            .expect("StartExecution")
            .execution_arn()
            .to_string()
    }

    /// Waits, polling, until `reached` holds, at most `limit` after `began`.
    async fn wait_until(
        &self,
        began: Instant,
        limit: Duration,
        what: &str,
        reached: impl Fn() -> bool,
    ) {
        while !reached() {
            assert!(
                began.elapsed() < limit,
                "{what} within {limit:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops execution `name` (`arn`) with `cause` and waits for its end: its run, the
    /// janitor's answer to its ABORTED, and what the janitor removed.
    async fn stop_execution(
        &self,
        name: &str,
        arn: &str,
        cause: &str,
        before: &BTreeSet<String>,
        began: Instant,
    ) -> (Run, Value, Vec<String>) {
        self.sfn()
            .await
            .stop_execution()
            .execution_arn(arn)
            .cause(cause)
            .send()
            .await
            .expect("StopExecution");
        let run = self.hosted(name, before.clone(), began).await;
        let janitor = self.janitor_on(name, "ABORTED");
        let removed = janitor["result"]["removed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(String::from))
            .collect();
        (run, janitor, removed)
    }

    /// SSM as one function's role.
    async fn ssm_as(&self, function: &str) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.config_as(function).await)
    }

    /// The execution as the account's Step Functions describes it (executions.py).
    fn execution(&self, name: &str) -> Value {
        self.control("GET", &format!("/executions/{name}"), &Value::Null)
    }

    /// Runs the `amiflow` CLI as the account's admin (an operator), through the front door.
    async fn amiflow(&self, args: &[&str]) -> (std::process::ExitStatus, String, String) {
        let admin_key = &self.ready["admin"];
        let key = |k: &str| admin_key[k].as_str().unwrap();
        self.amiflow_as(
            args,
            &[
                ("AWS_ACCESS_KEY_ID", key("access_key_id")),
                ("AWS_SECRET_ACCESS_KEY", key("secret_access_key")),
            ],
        )
        .await
    }

    /// Runs the `amiflow` CLI with `credentials` (its AWS_* variables), through the front door.
    async fn amiflow_as(
        &self,
        args: &[&str],
        credentials: &[(&str, &str)],
    ) -> (std::process::ExitStatus, String, String) {
        let out = tokio::process::Command::new(workspace_binary("amiflow"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "AWS_ENDPOINT_URL",
                self.ready["aws_endpoint"].as_str().unwrap(),
            )
            .envs(credentials.iter().copied())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .await
            .expect("run amiflow");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// How EC2's state changes come (front.py's Ec2Events): the delay of each transition
    /// and whether its event is sent; returns the settings.
    pub(super) fn ec2_events(&self, settings: Value) -> Value {
        self.control("POST", "/ec2-events", &settings)
    }

    /// [`Account::execute`] with one action removed from one function's role (restored
    /// after): what the account said of the removal, and the run.
    async fn execute_without(
        &self,
        als: &Als,
        (function, action): (&str, &str),
        name: &str,
        input: Value,
    ) -> (Value, Run) {
        let removed = self.control(
            "POST",
            "/remove-action",
            &json!({"function": function, "action": action}),
        );
        let run = self.execute(als, name, input).await;
        self.control("POST", "/restore-roles", &Value::Null);
        (removed, run)
    }
}

/// How EC2's event ended one awaiting state (milliseconds, this machine's clock).
struct EventLatency {
    state: String,
    /// The function whose role answered the state's token.
    by: String,
    /// From AwaitEvent's return (the token stored, the resource seen pending) to the event.
    returned_before: i64,
    /// From the event's emission to the token's answer.
    answered: i64,
    /// From the event's emission to the next state's entry.
    next: i64,
}

/// One execution and what it did to the account.
struct Run {
    name: String,
    input: Value,
    record: Value,
    stats: Value,
    wall: Duration,
    added: Vec<String>,
    removed: Vec<String>,
}

impl Run {
    fn invocations(&self) -> u64 {
        self.stats["invocations"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }

    /// Step Functions bills a transition per state entered, retries included.
    fn transitions(&self) -> usize {
        self.record["path"].as_array().map_or(0, Vec::len)
            + self.record["retries"].as_array().map_or(0, Vec::len)
    }

    fn aws_calls(&self) -> u64 {
        self.stats["aws_calls"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }

    /// Every refusal, as "function X was refused action Y: message" lines.
    fn denials(&self) -> Vec<String> {
        self.stats["denied"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "function {} was refused {}: {}",
                    d["function"].as_str().unwrap_or("?"),
                    d["action"].as_str().unwrap_or("?"),
                    d["message"]
                        .as_str()
                        .or(d["resource"].as_str())
                        .unwrap_or("")
                )
            })
            .collect()
    }

    /// The execution succeeded, with no AccessDenied and no refused connection target.
    fn succeeded(&self) -> Result<(), String> {
        let denials = self.denials();
        if !denials.is_empty() {
            return Err(format!(
                "{}: AccessDenied in the simulated account (a role misses an action its step needs; add it to the step's iam_actions):\n  {}\nexecution error: {}",
                self.name,
                denials.join("\n  "),
                self.record["error"]
            ));
        }
        if let Some(refused) = self.stats["refused"].as_array().filter(|r| !r.is_empty()) {
            return Err(format!(
                "{}: the account refused to run steps: {refused:?}",
                self.name
            ));
        }
        if !self.record["error"].is_null() {
            return Err(format!(
                "{}: the execution failed: {}",
                self.name, self.record["error"]
            ));
        }
        if self.record["output"]["failed"] != 0 {
            return Err(format!(
                "{}: a build failed: {:#}",
                self.name, self.record["output"]
            ));
        }
        Ok(())
    }

    /// run.mjs's record of each attempt of the callback states awaiting EC2's events.
    /// `<Await state> <how it was answered>` for each await of the run, in order.
    fn await_outcomes(&self) -> Vec<String> {
        self.awaits()
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["state"].as_str().unwrap().rsplit('.').next().unwrap(),
                    c["answered"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    fn awaits(&self) -> Vec<&Value> {
        self.record["callbacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["state"].as_str().is_some_and(|s| {
                    awaited_waits()
                        .iter()
                        .any(|w| s.ends_with(&format!(".Await{w}")))
                })
            })
            .collect()
    }

    /// The retries of the polled waits the awaiting states precede, as "state (iteration)".
    fn wait_retries(&self) -> Vec<String> {
        self.record["retries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["state"].as_str().is_some_and(|s| {
                    awaited_waits()
                        .iter()
                        .any(|w| s.ends_with(&format!(".Wait{w}")))
                })
            })
            .map(|r| format!("{} ({})", r["state"], r["index"]))
            .collect()
    }

    /// How EC2's events ended each awaiting state.
    fn event_latencies(&self) -> Vec<EventLatency> {
        let answers = self.stats["task_answers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let events = self.stats["ec2_events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let path = self.record["path"].as_array().cloned().unwrap_or_default();
        let mut out = Vec::new();
        for c in self.awaits() {
            let state = c["state"].as_str().unwrap().to_string();
            let answer = answers
                .iter()
                .find(|a| a["token"] == c["token"])
                .unwrap_or_else(|| {
                    panic!("{}: {state}'s token was never answered: {c:#}", self.name)
                });
            let by = answer["by"].as_str().unwrap_or_default().to_string();
            let answered_ms = answer["at_ms"].as_i64().unwrap();
            let resources: Vec<String> = answer["output"]
                .as_str()
                .and_then(|o| serde_json::from_str::<Value>(o).ok())
                .and_then(|o| {
                    o["resources"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                })
                .unwrap_or_default();
            let event = events
                .iter()
                .rev()
                .find(|e| {
                    let detail = &e["event"]["detail"];
                    let id = detail["command-id"]
                        .as_str()
                        .or(detail["instance-id"].as_str())
                        .or(detail["ImageId"].as_str())
                        .or(detail["snapshot_id"]
                            .as_str()
                            .and_then(|arn| arn.rsplit('/').next()));
                    id.is_some_and(|id| resources.iter().any(|r| r == id))
                        && e["emitted_ms"].as_i64().unwrap() <= answered_ms
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no EC2 event for {resources:?} before {state}'s answer by {by}",
                        self.name
                    )
                });
            let emitted = event["emitted_ms"].as_i64().unwrap();
            let answered_at = c["answered_at"].as_i64().unwrap();
            let next = path
                .iter()
                .find(|p| p["index"] == c["index"] && p["t"].as_i64().unwrap() >= answered_at)
                .unwrap_or_else(|| panic!("{}: no state after {state}", self.name));
            let returned = c["started_at"].as_i64().unwrap() + c["invoked_ms"].as_i64().unwrap();
            out.push(EventLatency {
                state,
                by,
                returned_before: emitted - returned,
                answered: answered_ms - emitted,
                next: next["t"].as_i64().unwrap() - emitted,
            });
        }
        out
    }

    fn report(&self) -> String {
        format!(
            "{:<18} {:>6.1}s  {:>3} Lambda invocations ({:>2} cold starts)  {:>3} state transitions  {:>4} AWS calls from functions",
            self.name,
            self.wall.as_secs_f64(),
            self.invocations(),
            self.stats["cold_starts"].as_u64().unwrap_or(0),
            self.transitions(),
            self.aws_calls()
        )
    }
}

/// What the build's output names as its artifact, and what an artifact AMI references
/// (moto's RegisterImage makes its own snapshot), as inventory lines.
async fn artifact_lines(admin: &amiflow::Ctx, output: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for b in output["builds"].as_array().into_iter().flatten() {
        for (region, ami) in b["amis"].as_object().into_iter().flatten() {
            let ami = ami.as_str().unwrap();
            out.insert(format!("{region} image {ami}"));
            let images = admin
                .ec2(region)
                .describe_images()
                .image_ids(ami)
                .send()
                .await
                .unwrap();
            for m in images
                .images()
                .iter()
                .flat_map(|i| i.block_device_mappings())
            {
                if let Some(s) = m.ebs().and_then(|e| e.snapshot_id()) {
                    out.insert(format!("{region} snapshot {s}"));
                }
            }
        }
        for (kind, key) in [("snapshot", "snapshots"), ("volume", "volumes")] {
            for (region, ids) in b[key].as_object().into_iter().flatten() {
                for id in ids.as_array().into_iter().flatten() {
                    out.insert(format!("{region} {kind} {}", id.as_str().unwrap()));
                }
            }
        }
    }
    out
}

/// The run succeeded and left nothing but its artifact; `also`: inventory lines it is
/// expected to add or remove besides (a bundle bucket, the parameters of its sensitive
/// variables).
async fn assert_clean_success(account: &Account, run: &Run, also: impl Fn(&str) -> bool) {
    if let Err(why) = run.succeeded() {
        panic!("{why}\naccount log:\n{}", account.log_tail());
    }
    let admin = account.admin().await;
    let mut artifact = artifact_lines(&admin, &run.record["output"]).await;
    // moto's RegisterImage makes a snapshot of its own instead of using the one it is given.
    for line in run.stats["registered_snapshots"]
        .as_array()
        .into_iter()
        .flatten()
    {
        artifact.insert(line.as_str().unwrap().to_string());
    }
    let left: Vec<&String> = run
        .added
        .iter()
        .filter(|l| !artifact.contains(*l) && !also(l))
        .collect();
    assert!(
        left.is_empty(),
        "{}: left in the account besides its artifact {artifact:?}: {left:#?}",
        run.name
    );
    let removed: Vec<&String> = run.removed.iter().filter(|l| !also(l)).collect();
    assert!(
        removed.is_empty(),
        "{}: removed from the account: {removed:?}",
        run.name
    );
    assert!(
        !artifact.is_empty(),
        "{}: no artifact: {:#}",
        run.name,
        run.record["output"]
    );
}

fn ebs_template() -> Value {
    json!({
        "variables": {"copy_to": COPY_REGION},
        "builders": [{
            "type": "amazon-ebs",
            "region": REGION,
            "source_ami_filter": {"filters": {"name": "amzn2-ami-hvm-*-x86_64-gp2"}, "owners": ["amazon"], "most_recent": true},
            "instance_type": "t3.micro",
            "communicator": "none",
            // amiflow's own temporary role and profile: RunSourceInstance passes that role.
            "temporary_iam_instance_profile_policy_document": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}]
            },
            "ami_name": "simacct-ebs-{{timestamp}}",
            "ami_regions": ["{{user `copy_to`}}"],
            "tags": {"Built": "deployed"}
        }]
    })
}

/// [`ebs_template`] without its copy to a second region.
fn single_region_ebs_template() -> Value {
    let mut template = ebs_template();
    template["builders"][0]
        .as_object_mut()
        .unwrap()
        .remove("ami_regions");
    template
}

/// A temporary key stored at `key` (by the admin) read as `function`'s role, then removed:
/// what the read answered.
async fn read_key_as(
    account: &Account,
    admin: &amiflow::Ctx,
    function: &str,
    key: &str,
) -> Result<(), String> {
    admin
        .ssm(REGION)
        .put_parameter()
        .name(key)
        .value("-----BEGIN OPENSSH PRIVATE KEY----- a build's")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let read = account
        .ssm_as(function)
        .await
        .get_parameter()
        .name(key)
        .with_decryption(true)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string());
    admin
        .ssm(REGION)
        .delete_parameter()
        .name(key)
        .send()
        .await
        .unwrap();
    read
}

/// A run of `template` started as `amiflow start` starts it with the sensitive variable
/// `canary` = `value`: a SecureString parameter of the execution (its name returned), which
/// the input names.
async fn canary_input(
    admin: &amiflow::Ctx,
    template: &Value,
    execution: &str,
    value: &str,
) -> (Value, String) {
    let (vars, sensitive) = amiflow_cli::start::split_sensitive(
        template,
        [("canary".to_string(), value.to_string())].into(),
    );
    let mut input = amiflow_cli::start::execution_input(template, &vars, "cleanup").unwrap();
    let stored =
        amiflow_cli::start::store_sensitive(&admin.ssm(REGION), STACK, execution, &sensitive)
            .await
            .unwrap();
    let parameter = stored["canary"].clone();
    input["sensitive_vars"] = json!(stored);
    (input, parameter)
}

/// Where `value` is: the run's input, history and output, the account's counters, every
/// file of the account's work directory (functions' logs among them); and how many places
/// were searched.
fn places_holding(account: &Account, run: &Run, value: &str) -> (Vec<String>, usize) {
    let mut places = vec![
        ("execution input".to_string(), run.input.to_string()),
        ("history and output".to_string(), run.record.to_string()),
        ("account's counters".to_string(), run.stats.to_string()),
    ];
    for entry in walk(account.work.path()) {
        if let Ok(text) = std::fs::read_to_string(&entry) {
            places.push((entry.display().to_string(), text));
        }
    }
    let found = places
        .iter()
        .filter(|(_, text)| text.contains(value))
        .map(|(place, _)| place.clone())
        .collect();
    (found, places.len())
}

/// The chroot builder naming no host: HostInfo takes the stack's BuildHostInstanceId.
fn chroot_template(mount_dir: &Path) -> Value {
    json!({
        "builders": [{
            "type": "amazon-chroot",
            "region": REGION,
            "source_ami": SOURCE_AMI,
            "ami_name": "simacct-chroot-{{timestamp}}",
            "mount_path": format!("{}/{{{{.Device}}}}", mount_dir.display()),
            "copy_files": ["/etc/resolv.conf"],
            "root_volume_size": 10,
            "ena_support": true
        }],
        "provisioners": [{"type": "shell", "inline": ["echo built-by-deployed-amiflow > /etc/amiflow-marker"]}]
    })
}

/// The bundle upload signs with the credentials UploadBundle hands over (a session of the
/// stack's bundle upload role, token included) and goes through the account's front door,
/// so a refusal is seen. (curl cannot hash a streamed upload: the payload is declared
/// unsigned, as S3 allows.) Like a hostile template, it also keeps the credentials, in
/// `handed` (a file of the test's sshd), for the test to try them.
fn signed_upload_command(front: &str, handed: &Path) -> String {
    format!(
        "printf '%s\\n' '{{{{.AccessKey}}}}' '{{{{.SecretKey}}}}' '{{{{.Token}}}}' > {handed}; \
         m={{{{.ManifestPath}}}}; for f in $m ${{m%.manifest.xml}}.part.00; do \
         curl -sf --aws-sigv4 'aws:amz:{{{{.Region}}}}:s3' --user '{{{{.AccessKey}}}}:{{{{.SecretKey}}}}' \
         -H 'x-amz-security-token: {{{{.Token}}}}' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T $f {front}/{{{{.BucketName}}}}/$(basename $f) >/dev/null || exit 3; done",
        handed = handed.display()
    )
}

/// What the credentials a bundle upload command was handed can do beyond its bundle: each
/// refused call's name, or what it was allowed to do (a failure of the scoping).
async fn try_handed_credentials(front: &str, handed: &[String], bundle_key: &str) -> Vec<String> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(front)
        .credentials_provider(aws_credential_types::Credentials::new(
            &handed[0],
            &handed[1],
            Some(handed[2].clone()),
            None,
            "handed-to-bundle_upload_command",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let ctx = amiflow::Ctx::from_sdk_config(sdk);
    let s3 = ctx.s3(REGION);
    let mut outcomes = Vec::new();
    let put = |key: String| {
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .body(b"overwritten".to_vec().into())
            .send()
    };
    outcomes.push(match put("another-build.manifest.xml".into()).await {
        Ok(_) => "ALLOWED PutObject outside the bundle".to_string(),
        Err(e) => format!(
            "refused PutObject outside the bundle ({})",
            e.code().unwrap_or("?")
        ),
    });
    outcomes.push(
        match s3.get_object().bucket(BUCKET).key(bundle_key).send().await {
            Ok(_) => "ALLOWED GetObject".to_string(),
            Err(e) => format!("refused GetObject ({})", e.code().unwrap_or("?")),
        },
    );
    outcomes.push(match ctx.ec2(REGION).describe_instances().send().await {
        Ok(_) => "ALLOWED DescribeInstances".to_string(),
        Err(e) => format!("refused DescribeInstances ({})", e.code().unwrap_or("?")),
    });
    outcomes
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn status_change_event(account: &Account, run: &Run, status: &str) -> Value {
    let machine = account.ready["state_machine"]["arn"].as_str().unwrap();
    let execution = format!(
        "{}:{}",
        machine.replace(":stateMachine:", ":execution:"),
        run.name
    );
    json!({
        "version": "0", "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Step Functions Execution Status Change", "source": "aws.states",
        "account": "123456789012", "time": chrono::Utc::now().to_rfc3339(), "region": REGION,
        "resources": [execution],
        "detail": {
            "executionArn": execution, "stateMachineArn": machine, "name": run.name, "status": status,
            "startDate": 1, "stopDate": 2, "input": run.input.to_string(),
            "inputDetails": {"included": true}, "output": null, "outputDetails": {"included": true}
        }
    })
}

/// Every AMIFLOW_* variable the stack gives its functions is read somewhere outside the
/// template generator (a variable nothing reads is a setting that silently does nothing).
fn variables_nothing_reads(functions_env: &BTreeSet<String>) -> Vec<String> {
    fn sources(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("infra.rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut code = String::new();
    sources(&repo_root().join("functions"), &mut code);
    functions_env
        .iter()
        .filter(|v| !code.contains(&format!("\"{v}\"")))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_stack_builds_every_builder_under_its_own_roles() {
    let test = "simacct::deployed_stack_builds_every_builder_under_its_own_roles";
    let als = match Als::find() {
        Ok(als) => als,
        Err(missing) => return eprintln!("SKIP {test}: {missing}"),
    };
    // The chroot host's "disk": a loop device the host script takes for the attached volume.
    let disk = loop_devices_usable(test).then(LoopDisk::new);
    let host_env = match &disk {
        Some(d) => json!({"AMIFLOW_CHROOT_TEST_DEVICES": d.device}),
        None => json!({}),
    };
    let started = Instant::now();
    let account = match Account::start(host_env, &als) {
        Ok(a) => a,
        Err(why) => return eprintln!("SKIP {test}: {why}"),
    };
    let deployed = started.elapsed();

    // 1. The stack as the template declares it.
    let stack = &account.ready["stack"];
    assert_eq!(stack["status"], "CREATE_COMPLETE", "{stack:#}");
    let report = &stack["report"];
    assert_eq!(
        report["problems"],
        json!([]),
        "the stack differs from infra/template.json:\n{:#}",
        report["problems"]
    );
    let functions = account.ready["functions"].as_object().unwrap();
    let registry: BTreeSet<&str> = amiflow::flows::registry().iter().map(|s| s.name).collect();
    let deployed_steps: BTreeSet<&str> = functions.keys().map(String::as_str).collect();
    assert_eq!(deployed_steps, registry, "one function per registered step");
    let counts = &stack["counts"];
    assert_eq!(counts["AWS::Lambda::Function"], functions.len());
    let roles_per_function = counts["AWS::IAM::Role"].as_u64().unwrap() as usize - functions.len();
    eprintln!(
        "simacct: stack {} in {:.1}s: {} checks held; resources by type {counts}; {} functions, {} roles ({} of them not a function's)",
        stack["status"],
        deployed.as_secs_f64(),
        report["verified"],
        functions.len(),
        counts["AWS::IAM::Role"],
        roles_per_function
    );
    for gap in report["not_emulated"].as_array().unwrap() {
        eprintln!("simacct: not emulated: {}", gap.as_str().unwrap());
    }
    for fix in report["repaired"].as_array().unwrap() {
        eprintln!(
            "simacct: set right after moto's CloudFormation: {}",
            fix.as_str().unwrap()
        );
    }
    let admin = account.admin().await;
    let env_names: BTreeSet<String> = functions
        .values()
        .flat_map(|f| f["environment"].as_object().unwrap().keys().cloned())
        .collect();
    assert_eq!(
        variables_nothing_reads(&env_names),
        Vec::<String>::new(),
        "the stack sets variables no code reads"
    );
    assert!(
        account.ready["schedule"]["target_arn"]
            .as_str()
            .unwrap()
            .ends_with(&format!(
                "{}:{}",
                account.ready["functions"]["ScheduledStart"]["name"]
                    .as_str()
                    .unwrap(),
                amiflow::infra::FUNCTION_ALIAS
            )),
        "the schedule targets ScheduledStart's alias: {}",
        account.ready["schedule"]
    );
    assert_eq!(
        account.ready["schedule"]["role_may_invoke"], true,
        "the schedule's role may not invoke ScheduledStart"
    );
    assert_eq!(
        account.ready["schedule"]["role_may_start_execution"], false,
        "the schedule's role may start executions itself, without the operator's secrets step"
    );

    let mut runs: Vec<String> = Vec::new();

    // 2. amazon-ebs, communicator none: temporary instance profile, a copy in another region,
    //    the stack's default subnet. EC2 takes a second for each state change here (400 ms
    //    elsewhere), so that AwaitEvent, cold, surely sees each resource pending: its token is
    //    then answered on the event, never by AwaitEvent itself.
    account.ec2_events(json!({"delay_ms": 1000}));
    let run = account
        .execute(
            &als,
            "simacct-ebs",
            json!({"template": ebs_template(), "vars": {}}),
        )
        .await;
    account.ec2_events(json!({"delay_ms": 400}));
    assert_clean_success(&account, &run, |_| false).await;
    let subnet = account.ready["setup"]["subnet"].as_str().unwrap();
    let launched = admin
        .ec2(REGION)
        .describe_instances()
        .filters(amiflow::identity::build_filter("simacct-ebs"))
        .send()
        .await
        .unwrap();
    let instance = &launched.reservations()[0].instances()[0];
    assert_eq!(
        instance.subnet_id(),
        Some(subnet),
        "a template naming no subnet launches in the stack's DefaultSubnetId"
    );
    let passed: Vec<&str> = run.stats["passed_roles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert!(
        passed.iter().any(|r| r.contains(":role/amiflow/")),
        "RunInstances passed amiflow's temporary profile role (iam:PassRole checked): {passed:?}"
    );
    // Each wait was awaited: its callback state's token answered by DeliverEvent on EC2's
    // state-change event (its rule, its resource policy, its role's states:SendTaskSuccess),
    // so the polled step after it found the resource ready at once.
    let awaited = run.await_outcomes();
    assert_eq!(
        awaited,
        [
            "AwaitInstanceRunning success",
            "AwaitInstanceStopped success",
            "AwaitImageAvailable success"
        ],
        "{:#}",
        run.record["callbacks"]
    );
    let latencies = run.event_latencies();
    for l in &latencies {
        assert_eq!(
            l.by, "DeliverEvent",
            "{} was answered by {}, not by DeliverEvent on the event: {:#}",
            l.state, l.by, run.stats["task_answers"]
        );
    }
    assert_eq!(
        run.wait_retries(),
        Vec::<String>::new(),
        "a polled wait after an answered event found its resource not ready"
    );
    eprintln!("simacct: {}", run.report());
    let mut retried: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in run.record["retries"].as_array().into_iter().flatten() {
        *retried
            .entry(r["state"].as_str().unwrap_or("?"))
            .or_default() += 1;
    }
    eprintln!(
        "simacct:   {} state transitions, {} of them retries (ALS retries at once: polls of the copies, which no event announces, are many): {retried:?}",
        run.transitions(),
        retried.values().sum::<usize>()
    );
    for l in &latencies {
        eprintln!(
            "simacct:   {}: AwaitEvent returned {} ms before EC2's event; event → DeliverEvent's answer {} ms, → next state entered {} ms",
            l.state, l.returned_before, l.answered, l.next
        );
    }
    runs.push(run.report());

    // 2b. The same build with EC2's events lost (the transitions still take their time): each
    //     awaiting state times out (TimeoutSeconds scaled down) into its polled step, and the
    //     build still succeeds and leaves nothing.
    account.ec2_events(json!({"emit": false, "delay_ms": 1500}));
    let run = account
        .execute_with(
            &als,
            "simacct-ebs-no-events",
            json!({"template": single_region_ebs_template(), "vars": {}}),
            &[("AMIFLOW_CALLBACK_TIMEOUT_SCALE", "0.005")],
        )
        .await;
    account.ec2_events(json!({"emit": true, "delay_ms": 400}));
    assert_clean_success(&account, &run, |_| false).await;
    let awaited = run.await_outcomes();
    assert_eq!(
        awaited,
        [
            "AwaitInstanceRunning timeout",
            "AwaitInstanceStopped timeout",
            "AwaitImageAvailable timeout"
        ],
        "{:#}",
        run.record["callbacks"]
    );
    let caught: Vec<String> = run.record["caught"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} → {}",
                c["state"].as_str().unwrap(),
                c["next"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        caught,
        ["InstanceRunning", "InstanceStopped", "ImageAvailable"]
            .iter()
            .map(|w| format!("amazon-ebs.Await{w} → amazon-ebs.Wait{w}"))
            .collect::<Vec<_>>(),
        "each timeout is caught into the polled wait"
    );
    assert_eq!(
        run.stats["ec2_events"],
        json!([]),
        "no event was sent with events off"
    );
    eprintln!(
        "simacct: {} ({} polls of the waits after the timeouts)",
        run.report(),
        run.wait_retries().len()
    );
    runs.push(run.report());

    // 3. amazon-ebssurrogate and amazon-ebsvolume.
    let run = account
        .execute(
            &als,
            "simacct-surrogate",
            json!({"template": surrogate_template("simacct-surrogate"), "vars": {}}),
        )
        .await;
    assert_clean_success(&account, &run, |_| false).await;
    // Its snapshots' wait ends on EBS's snapshot event, the last of them to complete.
    assert!(
        run.await_outcomes()
            .contains(&"AwaitSnapshotsCompleted success".to_string()),
        "{:?}",
        run.await_outcomes()
    );
    assert!(
        run.event_latencies()
            .iter()
            .any(|l| l.state.ends_with("AwaitSnapshotsCompleted")),
        "the snapshots' wait was not ended by their event"
    );
    eprintln!("simacct: {}", run.report());
    runs.push(run.report());
    let run = account
        .execute(
            &als,
            "simacct-ebsvolume",
            json!({"template": ebsvolume_template(), "vars": {}}),
        )
        .await;
    assert_clean_success(&account, &run, |_| false).await;
    eprintln!("simacct: {}", run.report());
    runs.push(run.report());

    // 3b. A pipeline, deployed: Fingerprint, the test stage (its own instance of the new
    //     image, tested over SSM, with its own temporary profile), Publish in both regions,
    //     Retain and Notify's EventBridge event, each function under its own role.
    let pipeline = json!({
        "name": "simacct-web", "rebuild": "always",
        "test": {"instance_type": "t3.micro", "communicator": "ssm",
                 "provisioners": [{"type": "shell", "inline": ["systemctl is-active sshd"]}]},
        "publish": {"ssm_parameter": "/images/simacct/latest"},
        "retain": {"keep_latest": 1},
        "notify": {"eventbridge": true}
    });
    // A sensitive variable reaches the test instance too (its launch settings are the
    // template's), as `amiflow start` passes it: by parameter.
    let canary = format!("pipeline-canary-{}", std::process::id());
    // Under the stack's path, where `amiflow start` stores it (and only this stack reads).
    let canary_parameter = format!("/amiflow/{STACK}/simacct-pipeline/vars/canary");
    admin
        .ssm(REGION)
        .put_parameter()
        .name(&canary_parameter)
        .value(&canary)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let mut template = ebs_template();
    template["variables"]["canary"] = json!("");
    template["sensitive-variables"] = json!(["canary"]);
    template["builders"][0]["run_tags"] = json!({"Canary": "{{user `canary`}}"});
    // Onto the image too (Packer's default): the test stage reads its image's tags back
    // (SourceAmiInfo, SourceAMITags), and the binary conceals the value in what it returns.
    let run = account
        .execute(
            &als,
            "simacct-pipeline",
            json!({"template": template, "vars": {}, "pipeline": pipeline,
                   "sensitive_vars": {"canary": canary_parameter}}),
        )
        .await;
    if run.succeeded().is_err() {
        let path = run.record["path"].as_array().cloned().unwrap_or_default();
        let tail: Vec<String> = path
            .iter()
            .rev()
            .take(12)
            .map(|p| format!("{} {}", p["state"], p["index"]))
            .collect();
        eprintln!(
            "simacct-pipeline path (newest first): {tail:?}\nretries: {}",
            run.record["retries"]
        );
    }
    assert_clean_success(&account, &run, |l| {
        l.contains("/images/simacct/latest") || l.ends_with(&canary_parameter)
    })
    .await;
    assert!(
        run.removed.iter().any(|l| l.ends_with(&canary_parameter)),
        "Notify removes the sensitive variable the test kept: {:?}",
        run.removed
    );
    let recorded = run.record.to_string();
    if let Some(at) = recorded.find(&canary) {
        let from = recorded.floor_char_boundary(at.saturating_sub(300));
        panic!(
            "the sensitive value is in the execution's history or output: …{}…",
            &recorded[from..recorded.ceil_char_boundary(at + 100)]
        );
    }
    let output = &run.record["output"];
    let tested = &output["pipeline"]["tested"];
    assert_eq!(tested["region"], REGION, "the test stage ran: {output:#}");
    let made = output["builds"][0]["amis"].clone();
    for region in [REGION, COPY_REGION] {
        let published = admin
            .ssm(region)
            .get_parameter()
            .name("/images/simacct/latest")
            .send()
            .await
            .unwrap_or_else(|e| panic!("not published in {region}: {e:?}"));
        assert_eq!(
            published.parameter().and_then(|p| p.value()),
            made[region].as_str(),
            "{region}"
        );
    }
    assert_eq!(tested["image"], made[REGION], "the new image was tested");
    let test_instances = admin
        .ec2(REGION)
        .describe_instances()
        .filters(amiflow::identity::build_filter("simacct-pipeline"))
        .filters(amiflow::identity::filter(
            "tag:amiflow:build-name",
            ["amazon-ebs.test"],
        ))
        .send()
        .await
        .unwrap();
    let states: Vec<&str> = test_instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()))
        .collect();
    assert_eq!(states, ["terminated"], "one test instance, terminated");
    let revealed = test_instances
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .any(|t| t.key() == Some("Canary") && t.value() == Some(canary.as_str()));
    assert!(
        revealed,
        "the test instance's run tag has the sensitive value"
    );
    let events = run.stats["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "one pipeline event: {events:?}");
    assert_eq!(events[0]["DetailType"], "amiflow Pipeline State Change");
    let detail: Value = serde_json::from_str(events[0]["Detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        (detail["pipeline"].as_str(), detail["status"].as_str()),
        (Some("simacct-web"), Some("succeeded")),
        "{detail:#}"
    );
    eprintln!("simacct: {}", run.report());
    runs.push(run.report());

    // 3c. Approval, deployed: the run waits in its Approve callback state; `amiflow approve`,
    //     run by an approver's role (the token parameter and the two answers, nothing else,
    //     as README.md's "approval" says), lets it publish; `amiflow reject` withdraws its
    //     images and fails the run, naming the reason.
    let approver = &account.ready["approver"];
    let machine = account.ready["state_machine"]["arn"].as_str().unwrap();
    for (name, approve) in [("simacct-approved", true), ("simacct-rejected", false)] {
        let pipeline = json!({
            "name": "simacct-gated", "rebuild": "always",
            "approval": {"timeout": "10m"},
            "publish": {"ssm_parameter": "/images/simacct/gated"}
        });
        let input =
            json!({"template": single_region_ebs_template(), "vars": {}, "pipeline": pipeline});
        let arn = format!(
            "{}:{name}",
            machine.replace(":stateMachine:", ":execution:")
        );
        let token = format!("/amiflow/{STACK}/{name}/approval/token");
        let answer = async {
            let waited = Instant::now();
            while admin
                .ssm(REGION)
                .get_parameter()
                .name(&token)
                .send()
                .await
                .is_err()
            {
                assert!(
                    waited.elapsed() < Duration::from_secs(120),
                    "{name} never waited for approval"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut args = vec![
                if approve { "approve" } else { "reject" },
                arn.as_str(),
                "--by",
                "simacct-approver",
            ];
            if !approve {
                args.extend(["--reason", "not this week"]);
            }
            let key = |k: &str| approver[k].as_str().unwrap();
            account
                .amiflow_as(
                    &args,
                    &[
                        ("AWS_ACCESS_KEY_ID", key("AccessKeyId")),
                        ("AWS_SECRET_ACCESS_KEY", key("SecretAccessKey")),
                        ("AWS_SESSION_TOKEN", key("SessionToken")),
                    ],
                )
                .await
        };
        let (run, cli) = tokio::join!(account.execute(&als, name, input), answer);
        let (status, stdout, stderr) = cli;
        let said = format!("{stdout}{stderr}");
        assert!(status.success(), "amiflow {name}: {said}");
        let answered: Vec<&Value> = run.record["callbacks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["state"] == "Approve")
            .collect();
        assert_eq!(answered.len(), 1, "{:#}", run.record["callbacks"]);
        let tokens_left = admin.ssm(REGION).get_parameter().name(&token).send().await;
        assert!(tokens_left.is_err(), "{name}: the approval token stayed");
        if approve {
            assert_eq!(answered[0]["answered"], "success");
            assert_clean_success(&account, &run, |l| l.contains("/images/simacct/gated")).await;
            let output = &run.record["output"];
            let approved = run.record["history"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["state"] == "Approve" && h["event"] == "exited")
                .map(|h| h["data"]["approval"]["approved_by"].clone());
            assert_eq!(
                approved,
                Some(json!("simacct-approver")),
                "who approved is recorded"
            );
            let published = admin
                .ssm(REGION)
                .get_parameter()
                .name("/images/simacct/gated")
                .send()
                .await
                .expect("published after approval");
            assert_eq!(
                published.parameter().and_then(|p| p.value()),
                output["builds"][0]["amis"][REGION].as_str()
            );
        } else {
            assert_eq!(answered[0]["answered"], "failure");
            let error = &run.record["error"];
            assert!(
                error.to_string().contains("not this week"),
                "the rejection's reason fails the run: {:#}",
                run.record
            );
            assert!(
                run.added
                    .iter()
                    .all(|l| !l.contains("ami-") && !l.contains("snap-")),
                "a rejected run leaves its images: {:?}",
                run.added
            );
        }
        eprintln!("simacct: {}", run.report());
        runs.push(run.report());
    }

    // 3d. Windows over SSM, deployed: a template written for WinRM provisions through
    //     AWS-RunPowerShellScript under Provision's role (its SendCommand grant names both
    //     documents, on the build's own instance only). moto runs no command; what this
    //     proves is the deployed path and its rights.
    let mut windows = single_region_ebs_template();
    {
        let b = windows["builders"][0].as_object_mut().unwrap();
        b.insert("communicator".into(), json!("winrm"));
        b.insert("winrm_username".into(), json!("Administrator"));
        b.insert("winrm_timeout".into(), json!("5m"));
        b.insert("ami_name".into(), json!("simacct-windows-{{timestamp}}"));
    }
    windows["provisioners"] = json!([
        {"type": "powershell", "inline": ["Install-WindowsFeature -Name Web-Server"], "environment_vars": ["SITE=amiflow"]},
        {"type": "windows-restart", "restart_timeout": "5m"},
        {"type": "windows-shell", "inline": ["sc query W3SVC"]},
        {"type": "file", "content": "<h1>built by amiflow</h1>\n", "destination": "C:/inetpub/wwwroot/index.html"}
    ]);
    let run = account
        .execute(
            &als,
            "simacct-windows",
            json!({"template": windows, "vars": {}}),
        )
        .await;
    assert_clean_success(&account, &run, |_| false).await;
    let documents: BTreeSet<String> = admin
        .ssm(REGION)
        .list_commands()
        .send()
        .await
        .unwrap()
        .commands()
        .iter()
        .filter_map(|c| c.document_name().map(String::from))
        .collect();
    assert!(
        documents.contains("AWS-RunPowerShellScript"),
        "the Windows provisioners ran as PowerShell over SSM (no other run sends one): {documents:?}"
    );
    // Each command's end was awaited, not polled: Provision raised CommandSent, the callback
    // state took SSM's status-change event (DeliverEvent found the token by the command's
    // tag; AwaitEvent answers itself when the command ended first), and Provision's next
    // look found it done.
    let provision_awaits: Vec<String> = run
        .await_outcomes()
        .into_iter()
        .filter(|a| a.starts_with("AwaitProvision "))
        .collect();
    assert!(
        provision_awaits.len() >= 3
            && provision_awaits
                .iter()
                .all(|a| a == "AwaitProvision success"),
        "{provision_awaits:?}"
    );
    let by_event: Vec<EventLatency> = run
        .event_latencies()
        .into_iter()
        .filter(|l| l.state.ends_with(".AwaitProvision") && l.by == "DeliverEvent")
        .collect();
    assert!(
        !by_event.is_empty(),
        "no provisioner command's end was answered by its event"
    );
    let polled: Vec<&Value> = run.record["retries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["state"]
                .as_str()
                .is_some_and(|s| s.ends_with(".Provision"))
        })
        .collect();
    assert!(polled.is_empty(), "Provision polled a command: {polled:?}");
    for l in &by_event {
        eprintln!(
            "simacct:   {}: answered by {}, {} ms after SSM's event; next state {} ms after it",
            l.state, l.by, l.answered, l.next
        );
    }
    eprintln!("simacct: {}", run.report());
    runs.push(run.report());

    // 4. amazon-instance over SSH to the throwaway sshd; the bundle goes to S3.
    if let Some(f) = instance_fixture() {
        let front = account.ready["aws_endpoint"].as_str().unwrap();
        let handed_path = f.sshd.path("handed-credentials");
        let mut template = instance_template(
            &f,
            &account.moto,
            Some(&signed_upload_command(front, &handed_path)),
        );
        // A function cannot read the test's files: the X.509 pair is in Parameter Store.
        for (key, file, kind) in [
            (
                "x509_cert_path",
                &f.cert,
                aws_sdk_ssm::types::ParameterType::String,
            ),
            (
                "x509_key_path",
                &f.key,
                aws_sdk_ssm::types::ParameterType::SecureString,
            ),
        ] {
            // Under /amiflow-x509/: where the stack keeps X.509 pairs (UploadX509Cert reads no other).
            let name = format!("/amiflow-x509/simacct/{key}");
            admin
                .ssm(REGION)
                .put_parameter()
                .name(&name)
                .value(std::fs::read_to_string(file).unwrap())
                .r#type(kind)
                .send()
                .await
                .unwrap();
            template["builders"][0][key] = json!(name);
        }
        // A sensitive variable, started as `amiflow start` does: its value is a SecureString
        // parameter of the execution, which the input names; a provisioner puts it on the
        // instance.
        let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
        let marker = f.sshd.path("canary.marker");
        template["variables"] = json!({"canary": ""});
        template["sensitive-variables"] = json!(["canary"]);
        // A tag gets the value too, as in Packer (revealed by RunSourceInstance and
        // SecurityGroup, whose roles may read the execution's sensitive variables only).
        template["builders"][0]["run_tags"] = json!({"Canary": "{{user `canary`}}"});
        template["provisioners"] = json!([{
            "type": "shell",
            "inline": [format!("printf %s \"$CANARY\" > {}", marker.display())],
            "environment_vars": ["CANARY={{user `canary`}}"]
        }]);
        let (input, parameter) = canary_input(&admin, &template, "simacct-instance", &canary).await;
        let run = account.execute(&als, "simacct-instance", input).await;
        let expected = |l: &str| {
            l == format!("s3 bucket {BUCKET}")
                || l.starts_with(&format!("s3 object {BUCKET}/"))
                || l == format!("{REGION} ssm-parameter {parameter}")
        };
        assert_clean_success(&account, &run, expected).await;
        // The value reached the instance, and nothing else: not the input, the history
        // (every state's input and output), the output, a function's log or the account's;
        // its parameter is gone with the execution.
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), canary);
        let tagged = admin
            .ec2(REGION)
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:Canary")
                    .values(&canary)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            tagged.reservations().len(),
            1,
            "the build's instance carries the sensitive value as its tag, not the placeholder"
        );
        assert!(
            run.removed
                .contains(&format!("{REGION} ssm-parameter {parameter}")),
            "Finalize removes the sensitive variable: {:?}",
            run.removed
        );
        let history = run.record["history"].as_array().map_or(0, Vec::len);
        assert!(
            history > 20,
            "the record holds the history: {history} events"
        );
        let (found, searched) = places_holding(&account, &run, &canary);
        assert!(found.is_empty(), "the sensitive value is in {found:?}");
        assert!(searched > 10, "the logs were searched: {searched} places");
        let manifest = run
            .added
            .iter()
            .find(|l| l.ends_with(".manifest.xml"))
            .unwrap_or_else(|| panic!("the bundle's manifest is in S3: {:?}", run.added));
        // The command was handed a session of the bundle upload role, never the function's
        // keys, narrowed to this bundle's objects: kept and reused, it does nothing else.
        let handed: Vec<String> = std::fs::read_to_string(&handed_path)
            .expect("the upload command kept its credentials")
            .lines()
            .map(String::from)
            .collect();
        let sessions = run.stats["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let session = sessions
            .iter()
            .find(|s| s["key"] == handed[0].as_str())
            .unwrap_or_else(|| panic!("the handed key is a scoped session's: {sessions:#?}"));
        assert!(
            session["label"]
                .as_str()
                .unwrap()
                .starts_with("UploadBundle")
                && session["role"]
                    .as_str()
                    .unwrap()
                    .contains(":role/amiflow-bundle-upload/"),
            "{session:#}"
        );
        let bundle_key = manifest.rsplit_once(&format!("{BUCKET}/")).unwrap().1;
        let bundle_prefix = bundle_key.trim_end_matches("manifest.xml");
        assert_eq!(
            session["policy"]["Statement"][0]["Resource"],
            format!("arn:aws:s3:::{BUCKET}/{bundle_prefix}*"),
            "the session may write this bundle's objects only"
        );
        assert_eq!(
            try_handed_credentials(front, &handed, bundle_key).await,
            [
                "refused PutObject outside the bundle (AccessDenied)",
                "refused GetObject (AccessDenied)",
                // (EC2 says UnauthorizedOperation; moto answers AccessDenied.)
                "refused DescribeInstances (AccessDenied)"
            ]
        );
        eprintln!("simacct: {}", run.report());
        runs.push(run.report());
    }

    // 5. amazon-chroot: the host is the stack's BuildHostInstanceId, the script goes by SSM
    //    RunCommand with the stack's document, which the host's agent runs on this machine.
    //    A sensitive variable reaches the chroot through the job RunHostScript stages in
    //    the artifacts bucket, never through the command's parameters (SSM's history).
    if let Some(disk) = &disk {
        let mounts = disk.dir.path().join("mnt");
        let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());
        let mut template = chroot_template(&mounts);
        template["variables"] = json!({"canary": ""});
        template["sensitive-variables"] = json!(["canary"]);
        template["provisioners"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "type": "shell",
                "inline": ["printf %s \"$CANARY\" > /etc/amiflow-canary"],
                "environment_vars": ["CANARY={{user `canary`}}"]
            }));
        let (input, parameter) = canary_input(&admin, &template, "simacct-chroot", &canary).await;
        let run = account.execute(&als, "simacct-chroot", input).await;
        assert_clean_success(&account, &run, |l| {
            l == format!("{REGION} ssm-parameter {parameter}")
        })
        .await;
        assert_eq!(
            disk.read_file("/etc/amiflow-marker").as_deref(),
            Some("built-by-deployed-amiflow\n"),
            "the provisioner ran in the chroot on the host"
        );
        assert_eq!(
            disk.read_file("/etc/amiflow-canary").as_deref(),
            Some(canary.as_str()),
            "the sensitive value, not its placeholder, reached the chroot"
        );
        let sent = admin
            .ssm(REGION)
            .list_commands()
            .instance_id(account.ready["setup"]["host"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let host_script = sent
            .commands()
            .iter()
            .find(|c| {
                c.comment()
                    .is_some_and(|c| c.starts_with("amiflow chroot simacct-chroot "))
            })
            .expect("the host script's command");
        let parameters = host_script.parameters().cloned().unwrap_or_default();
        let job_s3 = parameters
            .get(amiflow::infra::CHROOT_JOB_S3_PARAMETER)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default();
        assert!(
            job_s3.starts_with("s3://") && job_s3.contains("/staged/simacct-chroot/"),
            "the job went by S3: {parameters:?}"
        );
        assert!(
            !format!("{parameters:?}").contains(&canary),
            "the value is not in the command's parameters: {parameters:?}"
        );
        // Nor in what the host script printed (SSM keeps it: the account's counters hold
        // it, which `places_holding` searches below).
        let printed = run.stats["host_commands"][0]["output"]
            .as_str()
            .unwrap_or_default();
        assert!(
            printed.contains("provision[") && !printed.contains(&canary),
            "the host script's output: {printed}"
        );
        let staged = admin
            .s3(REGION)
            .list_objects_v2()
            .bucket(
                account.ready["functions"]["RunHostScript"]["environment"]
                    ["AMIFLOW_ARTIFACTS_BUCKET"]
                    .as_str()
                    .expect("the stack names its artifacts bucket"),
            )
            .prefix("staged/")
            .send()
            .await;
        let staged: Vec<String> = staged
            .expect("the artifacts bucket")
            .contents()
            .iter()
            .filter_map(|c| c.key().map(String::from))
            .collect();
        assert!(staged.is_empty(), "the staged job is removed: {staged:?}");
        let (found, _) = places_holding(&account, &run, &canary);
        assert!(found.is_empty(), "the sensitive value is in {found:?}");
        let document =
            &account.ready["functions"]["RunHostScript"]["environment"]["AMIFLOW_CHROOT_DOCUMENT"];
        let commands = run.stats["host_commands"].as_array().unwrap();
        assert_eq!(
            commands.len(),
            1,
            "one SSM command to the host: {commands:?}"
        );
        assert_eq!(
            commands[0]["instance"], account.ready["setup"]["host"],
            "sent to the stack's BuildHostInstanceId"
        );
        assert_eq!(
            &commands[0]["document"], document,
            "with the stack's chroot document"
        );
        assert_eq!(commands[0]["status"], "Success");
        assert!(
            mounts_under(disk.dir.path()).is_empty(),
            "mounts left on the host"
        );
        // The host script's end was awaited: SSM's status-change event for the command
        // reached DeliverEvent, which found the token by its tag and answered it (or
        // AwaitEvent did, had the script ended before the token was stored); WaitHostScript
        // then found it done without polling.
        assert!(
            run.await_outcomes()
                .contains(&"AwaitHostScript success".to_string()),
            "{:#}",
            run.record["callbacks"]
        );
        let host_script = run
            .event_latencies()
            .into_iter()
            .find(|l| l.state.ends_with(".AwaitHostScript"))
            .expect("the host script's await");
        assert!(
            ["DeliverEvent", "AwaitEvent"].contains(&host_script.by.as_str()),
            "answered by {}",
            host_script.by
        );
        assert_eq!(
            run.wait_retries(),
            Vec::<String>::new(),
            "a polled wait after an answered event found it not ready"
        );
        eprintln!(
            "simacct:   {}: answered by {}, {} ms after SSM's event; next state {} ms after it",
            host_script.state, host_script.by, host_script.answered, host_script.next
        );
        eprintln!("simacct: {}", run.report());
        runs.push(run.report());
    }

    // 5a. A chroot build stopped while its host script runs (the volume mounted on the
    //     host): the janitor cancels the command first (the script's TERM trap unmounts),
    //     then detaches and deletes the volume. Nothing is left, and no mount.
    if let Some(disk) = &disk {
        let mut template = chroot_template(&disk.dir.path().join("mnt"));
        template["provisioners"] = json!([{"type": "shell", "inline": ["sleep 120"]}]);
        let (vars, _) = amiflow_cli::start::split_sensitive(&template, Default::default());
        let input = amiflow_cli::start::execution_input(&template, &vars, "cleanup").unwrap();
        account.stats();
        let before = account.inventory();
        let began = Instant::now();
        let arn = account
            .start_execution("simacct-chroot-stopped", &input)
            .await;
        account
            .wait_until(
                began,
                Duration::from_secs(120),
                "the host script mounts the volume",
                || !mounts_under(disk.dir.path()).is_empty(),
            )
            .await;
        // The region runs other commands meanwhile, more than the newest pages hold: the
        // janitor still finds the host script among every command sent since its execution
        // began.
        let noise = (amiflow::resources::ssm_command::NEWEST_PAGES + 1) * 50;
        for _ in 0..noise {
            admin
                .ssm(REGION)
                .send_command()
                .instance_ids("i-0123456789abcdef0")
                .document_name("AWS-RunShellScript")
                .parameters("commands", vec!["true".to_string()])
                .comment("another team's command")
                .send()
                .await
                .expect("SendCommand (another command in the region)");
        }
        let (run, janitor, removed) = account
            .stop_execution(
                "simacct-chroot-stopped",
                &arn,
                "stopped by the operator",
                &before,
                began,
            )
            .await;
        assert!(
            removed
                .first()
                .is_some_and(|r| r.starts_with("SSM command ") && r.ends_with("cancelled")),
            "the janitor cancelled the host script first: {janitor:#}"
        );
        assert!(
            removed.iter().any(|r| r.contains("volume")),
            "then removed the volume: {janitor:#}"
        );
        let left = account.left_since(&before).await;
        assert!(
            left.is_empty(),
            "the stopped chroot build left {left:?}: {janitor:#}"
        );
        assert!(
            mounts_under(disk.dir.path()).is_empty(),
            "mounts left on the host"
        );
        eprintln!(
            "simacct: chroot build stopped mid-script: the janitor cancelled the command, then removed {} resources",
            removed.len() - 1
        );
        drop(run);
    }

    // 5a'. A build stopped while a step that creates is still running (RunInstances held
    //      back at the front door): Step Functions stops the execution, not the Lambda, which
    //      launches its instance after the janitor's first sweep. The janitor reads from the
    //      history that RunSourceInstance was in flight, sweeps again once that invocation
    //      has surely ended (its start plus its timeout), and nothing is left.
    {
        let name = "simacct-stopped-in-flight";
        let mut template = single_region_ebs_template();
        // No temporary profile: IamInstanceProfile's dry-run RunInstances would be held.
        template["builders"][0]
            .as_object_mut()
            .unwrap()
            .remove("temporary_iam_instance_profile_policy_document");
        let input = json!({"template": template, "vars": {}});
        account.stats();
        let before = account.inventory();
        let began = Instant::now();
        account.control(
            "POST",
            "/hold",
            &json!({"action": "ec2:RunInstances", "ms": 3000}),
        );
        let arn = account.start_execution(name, &input).await;
        account
            .wait_until(
                began,
                Duration::from_secs(60),
                "the build reaches RunInstances",
                || {
                    account.control("GET", "/stats", &Value::Null)["held"]
                        .as_array()
                        .is_some_and(|h| !h.is_empty())
                },
            )
            .await;
        let (run, janitor, removed) = account
            .stop_execution(
                name,
                &arn,
                "stopped while RunSourceInstance runs",
                &before,
                began,
            )
            .await;
        assert_eq!(
            janitor["result"]["in_flight"],
            json!(["RunSourceInstance"]),
            "the janitor saw the invocation running at the stop: {janitor:#}"
        );
        assert!(
            removed.iter().any(|r| r.contains("instance")
                && r.ends_with("(after the invocations in flight ended)")),
            "the instance launched after the stop was removed by the second sweep: {janitor:#}"
        );
        let left = account.left_since(&before).await;
        assert!(
            left.is_empty(),
            "the build stopped with RunSourceInstance in flight left {left:?}: {janitor:#}"
        );
        eprintln!(
            "simacct: build stopped with RunSourceInstance in flight: the janitor swept again {:.0} s after the start, removing {removed:?}",
            began.elapsed().as_secs_f64()
        );
        drop(run);
    }

    // 5b. A template naming a host the operator did not tag for this stack (any SSM-managed
    //     instance would do: its pre_mount_commands would run there as root) is refused.
    let foreign = admin
        .ec2(REGION)
        .run_instances()
        .image_id(SOURCE_AMI)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let foreign = foreign.instances()[0].instance_id().unwrap().to_string();
    let mut elsewhere = chroot_template(Path::new("/tmp/amiflow-never-mounted"));
    elsewhere["builders"][0]["chroot_host_instance_id"] = json!(foreign);
    elsewhere["builders"][0]["pre_mount_commands"] = json!(["id > /tmp/amiflow-owned"]);
    let run = account
        .execute(
            &als,
            "simacct-foreign-host",
            json!({"template": elsewhere, "vars": {}}),
        )
        .await;
    let why = run
        .succeeded()
        .expect_err("a build on a host not tagged for the stack must fail");
    assert!(
        why.contains(&format!("{foreign} has no amiflow:build-host tag")),
        "the refusal names the host and the tag: {why}"
    );
    assert!(
        run.stats["host_commands"]
            .as_array()
            .is_none_or(|c| c.is_empty()),
        "no command reached the foreign host: {:#}",
        run.stats
    );
    assert!(run.added.is_empty(), "a refused build left {:?}", run.added);

    // 5c. The roles reach only this stack's builds: the Janitor's role may not terminate an
    //     instance another stack's build tagged, and may terminate one of this stack's.
    let janitor = account.ec2_as("Janitor").await;
    let stack_name = account.ready["stack"]["name"].as_str().unwrap().to_string();
    for (machine_tag, allowed) in [("another-stack", false), (stack_name.as_str(), true)] {
        admin
            .ec2(REGION)
            .create_tags()
            .resources(&foreign)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("amiflow:build")
                    .value("elsewhere-1")
                    .build(),
            )
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("amiflow:state-machine")
                    .value(machine_tag)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let terminated = janitor
            .terminate_instances()
            .instance_ids(&foreign)
            .send()
            .await;
        match (allowed, terminated) {
            (true, Ok(_)) => {}
            (false, Err(e)) => {
                let e = aws_sdk_ec2::error::DisplayErrorContext(e).to_string();
                assert!(e.contains("UnauthorizedOperation"), "{e}");
            }
            (allowed, got) => panic!(
                "the Janitor's TerminateInstances on a build instance of state machine {machine_tag:?}: expected allowed={allowed}, got {got:?}"
            ),
        }
    }
    // 5d. The roles themselves, asked directly (not only the steps' own checks):
    //     RunHostScript's role may run its document on the stack's build host only, never
    //     on another instance nor AWS-RunShellScript there; UploadX509Cert's role reads only
    //     the X.509 pairs under /amiflow-x509/, not another build's temporary key; Connect's
    //     reads its own stack's keys, not another stack's.
    let run_host_script = account.ssm_as("RunHostScript").await;
    let chroot_document = account.ready["functions"]["RunHostScript"]["environment"]
        ["AMIFLOW_CHROOT_DOCUMENT"]
        .as_str()
        .unwrap()
        .to_string();
    let host = account.ready["setup"]["host"].as_str().unwrap().to_string();
    for (document, instance) in [
        (chroot_document.as_str(), foreign.as_str()),
        ("AWS-RunShellScript", host.as_str()),
    ] {
        let sent = run_host_script
            .send_command()
            .document_name(document)
            .instance_ids(instance)
            .parameters("commands", vec!["id > /tmp/amiflow-owned".to_string()])
            .send()
            .await;
        let refused = sent.map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string());
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("not authorized")),
            "RunHostScript's role sending {document} to {instance}: {refused:?}"
        );
    }
    let other_key = amiflow::resources::key_pair::parameter_name("another-build-7", "web");
    let read = read_key_as(&account, &admin, "UploadX509Cert", &other_key).await;
    assert!(
        read.as_ref().is_err_and(|e| e.contains("not authorized")),
        "UploadX509Cert's role reading another build's key: {read:?}"
    );
    // Connect reads its own stack's temporary keys, never another stack's: a build there of
    // the same execution name keeps its key under that stack's path.
    for (stack, allowed) in [(STACK, true), ("another-stack", false)] {
        let key = amiflow::resources::key_pair::parameter_name(
            &amiflow::identity::parameter_owner(stack, "same-name-1"),
            "web",
        );
        let read = read_key_as(&account, &admin, "Connect", &key).await;
        assert_eq!(
            read.is_ok(),
            allowed,
            "Connect's role reading {key}: {read:?}"
        );
    }
    account.stats();
    admin
        .ec2(REGION)
        .terminate_instances()
        .instance_ids(&foreign)
        .send()
        .await
        .unwrap();

    // 5e. Each setting that names a file the build reads, deployed, naming the function's
    //     own `/proc/self/environ` (its role's keys): refused where the file would be read
    //     (RunSourceInstance's user data, Provision's script and file source), naming the
    //     setting, with nothing left and none of the role's keys in the error.
    let environ = "/proc/self/environ";
    let secrets: Vec<String> = functions
        .values()
        .filter_map(|f| {
            f["credentials"]["SecretAccessKey"]
                .as_str()
                .map(String::from)
        })
        .collect();
    for (label, key, keys, provisioners) in [
        (
            "user-data",
            "user_data_file",
            json!({"user_data_file": environ}),
            json!([]),
        ),
        (
            "script",
            "script",
            json!({"communicator": "ssm"}),
            json!([{"type": "shell", "script": environ}]),
        ),
        (
            "file",
            "source",
            json!({"communicator": "ssm"}),
            json!([{"type": "file", "source": environ, "destination": "/tmp/environ"}]),
        ),
    ] {
        let mut template = single_region_ebs_template();
        let b = template["builders"][0].as_object_mut().unwrap();
        b.extend(keys.as_object().unwrap().clone());
        b.insert("ami_name".into(), json!(format!("simacct-file-{label}")));
        template["provisioners"] = provisioners;
        let name = format!("simacct-file-{label}");
        let run = account
            .execute(&als, &name, json!({"template": template, "vars": {}}))
            .await;
        let why = run
            .succeeded()
            .expect_err("a deployed build reading the function's own files must fail")
            // The execution's error is JSON: its quotes escaped.
            .replace("\\\"", "\"");
        assert!(
            why.contains(&format!("{key} \"{environ}\": refused in a deployed build")),
            "{label}: the refusal names the setting and the file: {why}"
        );
        for secret in &secrets {
            assert!(
                !why.contains(secret.as_str()),
                "{label}: a role's key in {why}"
            );
        }
        assert!(
            run.added.is_empty(),
            "{label}: a refused build left {:?}",
            run.added
        );
    }

    // 6. Only this machine is dialled: a build whose communicator would connect to the address
    //    moto invented for its instance is refused before anything is created.
    let mut unsafe_template = ebs_template();
    unsafe_template["builders"][0]["communicator"] = json!("ssh");
    unsafe_template["builders"][0]["ssh_username"] = json!("ec2-user");
    let run = account
        .execute(
            &als,
            "simacct-unsafe",
            json!({"template": unsafe_template, "vars": {}}),
        )
        .await;
    let refused = run.stats["refused"].as_array().cloned().unwrap_or_default();
    assert!(
        !refused.is_empty()
            && refused[0]["why"]
                .as_str()
                .unwrap()
                .contains("ssh_host is not set"),
        "the account ran a build that would connect to a moto address: {:#}",
        run.stats
    );
    assert!(
        !run.record["error"].is_null(),
        "the refused build must fail"
    );
    assert!(
        run.added.is_empty(),
        "a refused build created {:?}",
        run.added
    );

    // 7. A role missing one action: the build fails, naming the function and the action. The
    //    Cleanup role loses ec2:TerminateInstances, so the instance outlives the failed build...
    let (removed, run) = account
        .execute_without(
            &als,
            ("Cleanup", "ec2:TerminateInstances"),
            "simacct-denied",
            json!({"template": single_region_ebs_template(), "vars": {}}),
        )
        .await;
    let why = run
        .succeeded()
        .expect_err("a build whose Cleanup role misses an action must fail");
    assert!(
        why.contains("function Cleanup was refused ec2:TerminateInstances"),
        "the failure must name the function and the action: {why}"
    );
    eprintln!(
        "simacct: as expected with {removed}: {}",
        why.lines().next().unwrap()
    );
    assert!(
        run.added.iter().any(|l| l.contains(" instance ")),
        "the failed build should have left its instance: {:?}",
        run.added
    );

    // 8. ...which the janitor sweeps, fed the event its rule delivers for the failed execution.
    let before_build: BTreeSet<String> = {
        let now = account.inventory();
        now.difference(&run.added.iter().cloned().collect())
            .cloned()
            .collect()
    };
    let delivered = account.control(
        "POST",
        "/events",
        &status_change_event(&account, &run, "FAILED"),
    );
    let deliveries = delivered["deliveries"].as_array().unwrap();
    assert_eq!(
        deliveries.len(),
        1,
        "exactly the janitor rule matches: {delivered:#}"
    );
    assert_eq!(deliveries[0]["target"], "Janitor", "{delivered:#}");
    assert_eq!(
        deliveries[0]["failed"], false,
        "the janitor failed: {delivered:#}"
    );
    assert_eq!(deliveries[0]["result"]["swept"], true, "{delivered:#}");
    let stats = account.stats();
    assert_eq!(
        stats["denied"],
        json!([]),
        "the janitor's own role refused: {stats:#}"
    );
    assert_eq!(
        account.inventory(),
        before_build,
        "the janitor left the failed build's resources"
    );
    let ignored = account.control(
        "POST",
        "/events",
        &status_change_event(&account, &run, "SUCCEEDED"),
    );
    assert_eq!(
        ignored["deliveries"],
        json!([]),
        "a succeeded execution reaches no rule: {ignored:#}"
    );
    eprintln!(
        "simacct: janitor swept {} resources of the failed build",
        deliveries[0]["result"]["removed"]
            .as_array()
            .map_or(0, Vec::len)
    );

    // 9. The schedule fires ScheduledStart (its role may invoke nothing else), which copies
    // the operator's sensitive value into the run's own path and starts the execution; the
    // input reads the template from S3 with Prepare's role. The value reaches the instance
    // (a run tag) and nothing the execution records.
    let schedule = &account.ready["schedule"];
    let canary = schedule["canary"].as_str().unwrap().to_string();
    let mut scheduled = single_region_ebs_template();
    let b = scheduled["builders"][0].as_object_mut().unwrap();
    b.remove("temporary_iam_instance_profile_policy_document");
    b.insert(
        "ami_name".into(),
        json!("simacct-{{user `suffix`}}-{{timestamp}}"),
    );
    b.insert("run_tags".into(), json!({"Canary": "{{user `canary`}}"}));
    scheduled["variables"] = json!({"suffix": "", "canary": ""});
    scheduled["sensitive-variables"] = json!(["canary"]);
    admin
        .s3(REGION)
        .put_object()
        .bucket(account.ready["deploy_bucket"].as_str().unwrap())
        .key(account.ready["schedule_template_key"].as_str().unwrap())
        .body(scheduled.to_string().into_bytes().into())
        .send()
        .await
        .unwrap();
    // A start that fails (the schedule role's function lost states:StartExecution): the
    // copies ScheduledStart made of the operator's values are removed, nothing runs.
    let before = account.inventory();
    let removed = account.control(
        "POST",
        "/remove-action",
        &json!({"function": "ScheduledStart", "action": "states:StartExecution"}),
    );
    account.stats();
    let refused = account.control("POST", "/schedule/fire", &json!({}));
    account.control("POST", "/restore-roles", &Value::Null);
    assert_eq!(refused["failed"], true, "{removed:#} {refused:#}");
    let message = refused["result"]["errorMessage"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("StartExecution") && message.contains("not authorized"),
        "the failure names the refused call: {refused:#}"
    );
    let after_refusal = account.inventory();
    assert_eq!(
        after_refusal.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "a failed start left its copies of the sensitive values"
    );
    let copied: Vec<String> = account.stats()["aws_calls"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert!(
        copied.iter().any(|l| l == "ScheduledStart"),
        "ScheduledStart ran before it was refused: {copied:?}"
    );
    account.stats();
    let before = account.inventory();
    let fired_at = Instant::now();
    let fired = account.control("POST", "/schedule/fire", &json!({}));
    assert_eq!(fired["target"], "ScheduledStart", "{fired:#}");
    assert_eq!(fired["failed"], false, "ScheduledStart failed: {fired:#}");
    assert_eq!(fired["result"]["sensitive_vars"], json!(["canary"]));
    let sfn = account.sfn().await;
    let execution = sfn
        .describe_execution()
        .execution_arn(fired["result"]["execution_arn"].as_str().unwrap())
        .send()
        .await
        .expect("the execution ScheduledStart started");
    let name = execution.name().unwrap_or_default().to_string();
    let input: Value = serde_json::from_str(execution.input().unwrap_or("{}")).unwrap();
    assert!(name.starts_with("scheduled-"), "{name}");
    assert_eq!(
        input["sensitive_vars"]["canary"],
        format!("/amiflow/{STACK}/{name}/vars/canary"),
        "the input names the run's own parameter: {input:#}"
    );
    assert!(
        !input.to_string().contains(&canary),
        "the value entered the input"
    );
    let run = account.hosted(&name, before, fired_at).await;
    // The run's copy of the value was there before it began (ScheduledStart made it):
    // Finalize removed it.
    let copy = format!("/amiflow/{STACK}/{name}/vars/canary");
    assert_clean_success(&account, &run, |l| l.ends_with(&copy)).await;
    assert!(
        !run.record.to_string().contains(&canary),
        "the sensitive value appears in the execution's history or output"
    );
    let launched = admin
        .ec2(REGION)
        .describe_instances()
        .filters(amiflow::identity::filter(
            "tag:amiflow:build",
            [name.clone()],
        ))
        .send()
        .await
        .unwrap();
    let tags: Vec<(String, String)> = launched
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .map(|t| {
            (
                t.key().unwrap_or_default().into(),
                t.value().unwrap_or_default().into(),
            )
        })
        .collect();
    assert!(
        tags.contains(&("Canary".to_string(), canary.clone())),
        "the sensitive value did not reach the instance's run tags: {tags:?}"
    );
    let left = admin.ssm(REGION).get_parameter().name(&copy).send().await;
    assert!(left.is_err(), "the run's copy of the value was not removed");
    let ami = run.record["output"]["builds"][0]["amis"][REGION]
        .as_str()
        .unwrap();
    let image = admin
        .ec2(REGION)
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .unwrap();
    assert!(
        image.images()[0]
            .name()
            .unwrap_or_default()
            .starts_with("simacct-scheduled-"),
        "the schedule's vars reached the template: {:?}",
        image.images()[0].name()
    );
    eprintln!("simacct: {}", run.report());
    runs.push(run.report());

    // 10. infra/README.md's walk-through, as an operator runs it against the deployed stack,
    //     every call through the account's Step Functions (executions.py runs the executions).
    //  a. `amiflow start --watch`: the CLI validates the template, stores its sensitive
    //     variable under the execution's own path, starts the state machine and follows its
    //     history to the artifact. The value reaches the instance and nothing recorded.
    let work = tempfile::tempdir().unwrap();
    let mut started_template = single_region_ebs_template();
    started_template["variables"] = json!({"secret": ""});
    started_template["sensitive-variables"] = json!(["secret"]);
    started_template["builders"][0]["run_tags"] = json!({"Secret": "{{user `secret`}}"});
    let template_path = work.path().join("web.json");
    std::fs::write(&template_path, started_template.to_string()).unwrap();
    let template = template_path.to_str().unwrap();
    let basic_path = work.path().join("basic.json");
    std::fs::write(&basic_path, single_region_ebs_template().to_string()).unwrap();
    let basic = basic_path.to_str().unwrap();
    // `amiflow start` of the basic template as this execution, with `more` arguments.
    let start_basic = |name: &str, more: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["start", basic, "--name", name, "--state-machine", machine]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(more.iter().map(|a| a.to_string()));
        args
    };
    let secret = format!("started-secret-{}", std::process::id());
    account.stats();
    let before = account.inventory();
    let began = Instant::now();
    let secret_var = format!("secret={secret}");
    let (status, stdout, said) = account
        .amiflow(&[
            "start",
            template,
            "--var",
            &secret_var,
            "--name",
            "simacct-started",
            "--state-machine",
            machine,
            "--watch",
        ])
        .await;
    assert!(status.success(), "amiflow start --watch: {said}\n{stdout}");
    let arn = stdout.lines().next().unwrap_or_default().trim().to_string();
    assert!(arn.ends_with(":simacct-started"), "{stdout}");
    let run = account.hosted("simacct-started", before, began).await;
    let input = &run.input;
    assert!(
        !input.to_string().contains(&secret),
        "the value entered the input"
    );
    let copy = format!("/amiflow/{STACK}/simacct-started/vars/secret");
    assert_eq!(input["sensitive_vars"]["secret"], copy, "{input:#}");
    assert_clean_success(&account, &run, |l| l.ends_with(&copy)).await;
    let ami = run.record["output"]["builds"][0]["amis"][REGION]
        .as_str()
        .unwrap();
    assert!(
        stdout.contains(&format!("{REGION}: {ami}")),
        "`amiflow start --watch` prints the artifact: {stdout}"
    );
    for line in [
        "→ amazon-ebs.RunSourceInstance",
        "✓ amazon-ebs.CreateImage",
        "execution succeeded",
    ] {
        assert!(
            said.contains(line),
            "watch shows {line:?} from the history: {said}"
        );
    }
    assert!(
        !run.record.to_string().contains(&secret)
            && !said.contains(&secret)
            && !stdout.contains(&secret),
        "the sensitive value is in the execution's history, output or the CLI's lines"
    );
    let launched = admin
        .ec2(REGION)
        .describe_instances()
        .filters(amiflow::identity::filter("tag:Secret", [secret.clone()]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        launched.reservations().len(),
        1,
        "the value reached the instance's run tags"
    );
    // `--watch` read the history newest first, without execution data, a page of at most
    // 100 events per poll (each poll stops at the first page reaching what it has).
    let reads = account.execution("simacct-started")["history_reads"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!reads.is_empty(), "watch read no history");
    for r in &reads {
        assert!(
            r["reverse"] == true && r["data"] == false && r["returned"].as_u64() <= Some(100),
            "{r}"
        );
    }
    eprintln!(
        "simacct: `amiflow start --watch` read {} history pages ({} events) of a {}-event history",
        reads.len(),
        reads
            .iter()
            .filter_map(|r| r["returned"].as_u64())
            .sum::<u64>(),
        reads.last().map_or(0, |r| r["of"].as_u64().unwrap_or(0))
    );
    let (status, watched, said) = account.amiflow(&["watch", &arn]).await;
    assert!(
        status.success() && watched.contains(ami),
        "`amiflow watch` of the ended execution: {said}\n{watched}"
    );
    eprintln!("simacct: {}", run.report());
    runs.push(run.report());

    //  b. Abort: a build stopped by hand (`aws stepfunctions stop-execution`) while it waits
    //     for its instance, which EC2 keeps pending here. Step Functions ends the execution
    //     ABORTED and sends its status change; the janitor rule's target sweeps the build.
    let events_before = account.ec2_events(json!({}));
    account.ec2_events(json!({"delay_ms": 8000}));
    account.stats();
    let before = account.inventory();
    let began = Instant::now();
    let args = start_basic("simacct-aborted", &[]);
    let (status, stdout, said) = account
        .amiflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(status.success(), "amiflow start: {said}");
    let arn = stdout.trim().to_string();
    let sfn = account.sfn().await;
    let mut awaiting = String::new();
    while awaiting.is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the build never awaited its instance: {:#}",
            account.execution("simacct-aborted")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let history = sfn
            .get_execution_history()
            .execution_arn(&arn)
            .reverse_order(true)
            .send()
            .await
            .expect("GetExecutionHistory");
        let newest_entry = history.events().iter().find_map(|e| {
            e.state_entered_event_details()
                .map(|d| d.name().to_string())
        });
        if let Some(state) = newest_entry.filter(|s| s.contains(".Await")) {
            awaiting = state;
        }
    }
    // AwaitEvent returns at once (the token stored, the instance seen pending): no
    // invocation is under way when the execution stops.
    tokio::time::sleep(Duration::from_secs(1)).await;
    sfn.stop_execution()
        .execution_arn(&arn)
        .cause("stopped by the operator")
        .send()
        .await
        .expect("StopExecution");
    let (status, _, said) = account.amiflow(&["watch", &arn]).await;
    assert_eq!(
        status.code(),
        Some(2),
        "`amiflow watch` of an aborted execution exits 2: {said}"
    );
    assert!(said.contains("execution aborted"), "{said}");
    let run = account
        .hosted("simacct-aborted", before.clone(), began)
        .await;
    account.ec2_events(events_before);
    let janitor = account.janitor_on("simacct-aborted", "ABORTED");
    assert_eq!(janitor["result"]["swept"], true, "{janitor:#}");
    let left = account.left_since(&before).await;
    assert!(
        run.added.iter().any(|l| l.contains(" instance "))
            || janitor["result"]["removed"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
        "the build had made something to sweep: {janitor:#}"
    );
    assert!(
        left.is_empty(),
        "the aborted build (stopped in {awaiting}) left {left:?}: {janitor:#}"
    );
    eprintln!(
        "simacct: aborted in {awaiting}; the janitor swept {} resources",
        janitor["result"]["removed"].as_array().map_or(0, Vec::len)
    );

    //  c. Redrive: a build started with `--on-error redrive` fails at CreateImage (its role
    //     lacks ec2:CreateImage), keeps what it made (the janitor leaves it), and once the
    //     role is fixed `amiflow redrive --watch` resumes it at CreateImage: nothing that
    //     succeeded runs again, and the build ends with its image and nothing else.
    account.control(
        "POST",
        "/remove-action",
        &json!({"function": "CreateImage", "action": "ec2:CreateImage"}),
    );
    account.stats();
    let before = account.inventory();
    let began = Instant::now();
    let args = start_basic("simacct-redriven", &["--on-error", "redrive", "--watch"]);
    let (status, stdout, said) = account
        .amiflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    account.control("POST", "/restore-roles", &Value::Null);
    assert_eq!(
        status.code(),
        Some(1),
        "the build fails at CreateImage: {said}\n{stdout}"
    );
    assert!(
        said.contains("✗ amazon-ebs.redrive.CreateImage"),
        "watch shows the failed step: {said}"
    );
    let arn = stdout.lines().next().unwrap_or_default().trim().to_string();
    let janitor = &account.janitor_on("simacct-redriven", "FAILED")["result"];
    assert_eq!(janitor["kept_for_redrive"], true, "{janitor:#}");
    let kept: BTreeSet<String> = account.inventory().difference(&before).cloned().collect();
    assert!(
        kept.iter().any(|l| l.contains(" instance ")),
        "the kept build's instance is there for the redrive: {kept:?}"
    );
    let failed_stats = account.stats();
    let redrive_began = Instant::now();
    let (status, stdout, said) = account.amiflow(&["redrive", &arn, "--watch"]).await;
    let redrive_wall = redrive_began.elapsed();
    assert!(
        status.success(),
        "amiflow redrive --watch: {said}\n{stdout}\n{}",
        account.log_tail()
    );
    let run = account.hosted("simacct-redriven", before, began).await;
    assert_clean_success(&account, &run, |_| false).await;
    let ami = run.record["output"]["builds"][0]["amis"][REGION]
        .as_str()
        .unwrap();
    assert!(
        stdout.contains(ami),
        "redrive --watch prints the artifact: {stdout}"
    );
    let invoked = run.stats["invocations"].as_object().unwrap();
    for step in [
        "Prepare",
        "RunSourceInstance",
        "WaitInstanceRunning",
        "StopInstance",
    ] {
        assert!(
            !invoked.contains_key(step),
            "the redrive ran {step} again: {invoked:?}"
        );
    }
    assert!(invoked.contains_key("CreateImage"), "{invoked:?}");
    let replayed = run.record["replayed"].as_array().unwrap();
    assert!(
        replayed.iter().any(|s| s == "Prepare"),
        "the redrive replayed what had succeeded: {replayed:?}"
    );
    let history = sfn
        .get_execution_history()
        .execution_arn(&arn)
        .max_results(1000)
        .send()
        .await
        .expect("GetExecutionHistory");
    let kinds: Vec<String> = history
        .events()
        .iter()
        .map(|e| e.r#type().as_str().to_string())
        .collect();
    let redriven = kinds
        .iter()
        .position(|k| k == "ExecutionRedriven")
        .unwrap_or_else(|| panic!("no ExecutionRedriven in {kinds:?}"));
    assert_eq!(
        kinds.iter().filter(|k| *k == "ExecutionStarted").count(),
        1,
        "{kinds:?}"
    );
    let first_task_after = history.events()[redriven..]
        .iter()
        .filter_map(|e| e.state_entered_event_details())
        .map(|d| d.name().to_string())
        .find(|n| n.starts_with("amazon-ebs."));
    assert_eq!(
        first_task_after.as_deref(),
        Some("amazon-ebs.redrive.CreateImage"),
        "the redriven history resumes at the failed step: {kinds:?}"
    );
    // Billed transitions of the redrive: the states entered after ExecutionRedriven.
    let redrive_transitions = kinds[redriven..]
        .iter()
        .filter(|k| k.ends_with("StateEntered"))
        .count();
    let line = format!(
        "simacct-redriven: failed run {} Lambda invocations; redrive {:.1}s, {} Lambda invocations, {} state transitions, {} tasks replayed",
        failed_stats["invocations"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum::<u64>()),
        redrive_wall.as_secs_f64(),
        run.invocations(),
        redrive_transitions,
        replayed.len(),
    );
    eprintln!("simacct: {line}");
    runs.push(line);

    //  d. `--on-error abort` keeps a failed build for debugging (the janitor leaves it) and
    //     `amiflow clean` removes it; `--on-error redrive` keeps one for a redrive, which
    //     `amiflow abandon` gives up, removing it.
    for (on_error, command) in [("abort", "clean"), ("redrive", "abandon")] {
        let name = format!("simacct-kept-{on_error}");
        account.control(
            "POST",
            "/remove-action",
            &json!({"function": "CreateImage", "action": "ec2:CreateImage"}),
        );
        let before = account.inventory();
        let args = start_basic(&name, &["--on-error", on_error, "--watch"]);
        let (status, stdout, said) = account
            .amiflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .await;
        account.control("POST", "/restore-roles", &Value::Null);
        assert_eq!(status.code(), Some(1), "{name} fails: {said}");
        let arn = stdout.lines().next().unwrap_or_default().trim().to_string();
        let janitor = &account.janitor_on(&name, "FAILED")["result"];
        let kept_flag = if on_error == "abort" {
            "kept_on_error_abort"
        } else {
            "kept_for_redrive"
        };
        assert_eq!(janitor[kept_flag], true, "{janitor:#}");
        let kept: Vec<String> = account.inventory().difference(&before).cloned().collect();
        assert!(
            kept.iter().any(|l| l.contains(" instance ")),
            "{name} keeps its instance: {kept:?}"
        );
        let (status, _, said) = account.amiflow(&[command, &arn]).await;
        assert!(status.success(), "amiflow {command} {arn}: {said}");
        let left: Vec<String> = account.inventory().difference(&before).cloned().collect();
        assert!(
            left.is_empty(),
            "`amiflow {command}` left {left:?} of {name}: {said}"
        );
        eprintln!(
            "simacct: {name}: kept {} resources, `amiflow {command}` removed them",
            kept.len()
        );
    }
    let (status, _, said) = account
        .amiflow(&[
            "abandon",
            &format!(
                "{}:simacct-nonexistent",
                machine.replace(":stateMachine:", ":execution:")
            ),
        ])
        .await;
    assert!(
        !status.success() && said.contains("ExecutionDoesNotExist"),
        "abandon of an unknown execution says so: {said}"
    );

    eprintln!(
        "simacct: summary (wall time per execution, ALS with Wait/Retry intervals at 0):\n  {}\nsimacct: total {:.1}s",
        runs.join("\n  "),
        started.elapsed().as_secs_f64()
    );
}
