//! The committed state machine (statemachine/amiflow.asl.json) on two engines, same inputs,
//! same scripted handler outcomes:
//!
//! - aws-local-stepfunctions (a third-party ASL interpreter, tests/als/run.mjs) calling
//!   amiflow's local Lambda Invoke API (`amiflow::lambda_api::serve`);
//! - amiflow's own engine (`amiflow_statemachine::Engine`) on a virtual clock.
//!
//! Prepare and Finalize are the real handlers; every other step answers from a script.
//! Each case checks the path (per Map iteration), the retries and the output or error, and
//! that both engines agree on all of them. Error causes are written differently by the two
//! engines (Step Functions and our engine keep Lambda's JSON error document; ALS writes
//! `type: message`): the comparison normalises them, production code does not.
//!
//! Then the same amazon-ebs template runs for real against moto twice: through ALS and
//! `amiflow serve-lambdas` (the real handlers), and through `amiflow build`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use amiflow::error::ErrorPayload;
use amiflow::lambda_api;
use amiflow_statemachine::{
    lambda_callback, resource_name, Engine, Event, StateMachine, TaskError, TaskInvoker,
    VirtualClock,
};
use amiflow_tests::lambda_harness::{
    als_path, path_by_iteration, workspace_binary, Als, ChildGuard, ScriptedInvoker,
};
use amiflow_tests::Moto;
use serde_json::{json, Value};

fn definition_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../statemachine/amiflow.asl.json")
}

fn execution_input(builds: &[&str]) -> Value {
    let builders: Vec<Value> = builds
        .iter()
        .map(|name| {
            json!({
                "type": "amazon-ebs", "name": name, "region": "us-east-1", "source_ami": "ami-12345678",
                "instance_type": "t3.micro", "ami_name": format!("engines-{name}"), "communicator": "none",
            })
        })
        .collect();
    json!({"template": {"builders": builders}, "vars": {}})
}

/// What one engine did, in a form both engines can be compared in.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    /// (state, Map iteration) in the order entered.
    path: Vec<(String, Option<u64>)>,
    /// Retries per (state, iteration).
    retries: BTreeMap<(String, Option<u64>), usize>,
    output: Value,
    /// (Error, normalised Cause).
    error: Option<(String, String)>,
    /// Handler calls (`Handler@build`), sorted: iterations interleave differently.
    calls: Vec<String>,
}

impl Record {
    fn paths(&self) -> Vec<(Option<u64>, Vec<String>)> {
        path_by_iteration(&self.path)
    }
    fn retries_of(&self, state: &str) -> usize {
        self.retries
            .iter()
            .filter(|((s, _), _)| s == state)
            .map(|(_, n)| n)
            .sum()
    }
    fn calls_of(&self, key: &str) -> usize {
        self.calls.iter().filter(|c| *c == key).count()
    }
}

/// One cause text, whichever engine wrote it: Lambda's JSON error document
/// (`{"errorType": T, "errorMessage": M}`) and ALS's `T: M` both become `T: M`.
fn normalise_cause(cause: &str) -> String {
    match serde_json::from_str::<ErrorPayload>(cause) {
        Ok(p) => format!("{}: {}", p.error_type, p.error_message),
        Err(_) => cause.to_string(),
    }
}

/// Finalize builds `error: "<Error>: <message>"` from the caught cause, so an ALS cause
/// (`T: M`) shows its type twice there; written once here.
fn normalise_text(text: &str) -> String {
    let mut out = text.to_string();
    for t in ["Transient", "BuildFailed", "NotReady", "InvalidTemplate"] {
        out = out.replace(&format!("{t}: {t}: "), &format!("{t}: "));
    }
    out
}

fn normalise_output(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(normalise_text(s)),
        Value::Array(a) => Value::Array(a.iter().map(normalise_output).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), normalise_output(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Runs the committed definition with ALS against the scripted handlers; None (and a SKIP
/// line) when Node or ALS is not installed.
async fn run_als(input: &Value, script: &[&str]) -> Option<Record> {
    let als = match Als::find() {
        Ok(als) => als,
        Err(missing) => {
            eprintln!("SKIP engines comparison: {missing}");
            return None;
        }
    };
    let ctx = Arc::new(amiflow::Ctx::from_env().await);
    let invoker = Arc::new(ScriptedInvoker::new(script).with_real(&["Prepare", "Finalize"], ctx));
    let server = lambda_api::serve(0, invoker.clone())
        .await
        .expect("serve the invoke API");
    let raw = als
        .run(
            &definition_path(),
            input,
            "exec-engines",
            &server.endpoint(),
        )
        .await;
    server.task.abort();
    let mut retries = BTreeMap::new();
    for r in raw["retries"].as_array().into_iter().flatten() {
        *retries
            .entry((
                r["state"].as_str().unwrap_or_default().to_string(),
                r["index"].as_u64(),
            ))
            .or_insert(0) += 1;
    }
    let error = (!raw["error"].is_null()).then(|| {
        (
            raw["error"]["Error"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            normalise_text(&normalise_cause(
                raw["error"]["Cause"].as_str().unwrap_or_default(),
            )),
        )
    });
    let calls = sorted(invoker.calls.lock().unwrap().clone());
    Some(Record {
        path: als_path(&raw),
        retries,
        output: normalise_output(&raw["output"]),
        error,
        calls,
    })
}

/// The scripted handlers as the local engine's Task dispatch: a failure's cause is
/// Lambda's JSON error document, as `amiflow::local::LocalInvoker` and Step Functions give it.
/// A callback Task calls the function its Parameters name with their Payload, as
/// `LocalInvoker` does and run.mjs does for ALS.
struct ScriptedTasks(Arc<ScriptedInvoker>);

impl TaskInvoker for ScriptedTasks {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
        let (function, input) =
            lambda_callback(resource, &input).unwrap_or_else(|| (resource.to_string(), input));
        self.0
            .call(resource_name(&function), input)
            .await
            .map_err(|p| {
                let cause = serde_json::to_string(&p).expect("an error payload serializes");
                TaskError::new(p.error_type, cause)
            })
    }
}

/// The Map iteration an event belongs to (the innermost scope), as ALS reports `index`.
fn iteration(scope: &[amiflow_statemachine::Scope]) -> Option<u64> {
    scope.last().map(|s| s.index as u64)
}

async fn run_local(input: &Value, script: &[&str]) -> Record {
    let ctx = Arc::new(amiflow::Ctx::from_env().await);
    let invoker = Arc::new(ScriptedInvoker::new(script).with_real(&["Prepare", "Finalize"], ctx));
    let machine = StateMachine::from_json(&std::fs::read_to_string(definition_path()).unwrap())
        .expect("the committed definition parses");
    let events: Arc<Mutex<Vec<Event>>> = Default::default();
    let sink = events.clone();
    let engine = Engine::from_arc(Arc::new(ScriptedTasks(invoker.clone())))
        .with_clock(VirtualClock::default())
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let result = engine.run(&machine, "exec-engines", input.clone()).await;
    let mut path = Vec::new();
    let mut retries = BTreeMap::new();
    for e in events.lock().unwrap().iter() {
        match e {
            Event::StateEntered { name, scope, .. } => path.push((name.clone(), iteration(scope))),
            Event::RetryScheduled { name, scope, .. } => {
                *retries.entry((name.clone(), iteration(scope))).or_insert(0) += 1
            }
            _ => {}
        }
    }
    let (output, error) = match result {
        Ok(out) => (normalise_output(&out), None),
        Err(e) => (
            Value::Null,
            Some((e.error, normalise_text(&normalise_cause(&e.cause)))),
        ),
    };
    let calls = sorted(invoker.calls.lock().unwrap().clone());
    Record {
        path,
        retries,
        output,
        error,
        calls,
    }
}

/// Both engines on the same case; panics unless they agree. None when ALS is missing.
async fn both(input: Value, script: &[&str]) -> Option<Record> {
    let als = run_als(&input, script).await?;
    let local = run_local(&input, script).await;
    assert_eq!(
        local.paths(),
        als.paths(),
        "same path per iteration\nlocal: {local:#?}\nals: {als:#?}"
    );
    assert_eq!(local.retries, als.retries, "same retries");
    assert_eq!(local.calls, als.calls, "same handler calls");
    assert_eq!(local.error, als.error, "same error");
    assert_eq!(local.output, als.output, "same output");
    Some(local)
}

/// The Choice and the ebs chain up to and including `last`.
fn chain_through(last: &str) -> Vec<String> {
    let mut out = vec!["BuilderType".to_string()];
    for s in amiflow::flows::chain_states(amiflow_template::BuilderType::Ebs) {
        out.push(format!("amazon-ebs.{s}"));
        if s == last {
            break;
        }
    }
    out
}

/// The iteration's path when `last` fails: the chain up to it, the error cleanup, Cleanup.
fn chain_until(last: &str) -> Vec<String> {
    let mut out = chain_through(last);
    out.push("amazon-ebs.ErrorCleanupProvision".into());
    out.push("amazon-ebs.Cleanup".into());
    out
}

fn full_chain() -> Vec<String> {
    let mut out = chain_through("CreateTags");
    out.push("amazon-ebs.Cleanup".into());
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// Without a pipeline in the input, the HasPipeline Choice goes straight to the builds.
const TOP_OK: [&str; 6] = [
    "Prepare",
    "HasPipeline",
    "Builds",
    "Finalize",
    "AnyBuildFailed",
    "Succeeded",
];
const TOP_FAILED: [&str; 6] = [
    "Prepare",
    "HasPipeline",
    "Builds",
    "Finalize",
    "AnyBuildFailed",
    "BuildFailed",
];

#[tokio::test]
async fn image_ready_after_polls() {
    let Some(run) = both(
        execution_input(&["web"]),
        &["WaitImageAvailable: NotReady*3, Ok"],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        run.paths(),
        vec![(None, strings(&TOP_OK)), (Some(0), full_chain())]
    );
    assert_eq!(run.retries_of("amazon-ebs.WaitImageAvailable"), 3);
    assert_eq!(run.calls_of("WaitImageAvailable@web"), 4);
    assert_eq!(run.error, None);
    assert_eq!(run.output["failed"], 0);
    assert_eq!(run.output["builds"][0]["name"], "web");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let Some(run) = both(
        execution_input(&["web"]),
        &[
            "SourceAmiInfo: Transient*2, Ok",
            "CreateImage: Transient, Ok",
        ],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        run.paths(),
        vec![(None, strings(&TOP_OK)), (Some(0), full_chain())]
    );
    assert_eq!(run.retries_of("amazon-ebs.SourceAmiInfo"), 2);
    assert_eq!(run.retries_of("amazon-ebs.CreateImage"), 1);
    assert_eq!(run.output["failed"], 0);
}

#[tokio::test]
async fn retries_exhausted_mid_chain_are_caught_cleaned_up_and_fail_the_execution() {
    // Transient: MaxAttempts 6, so the first call and six retries fail, then Catch.
    let Some(run) = both(execution_input(&["web"]), &["CreateImage: Transient*7"]).await else {
        return;
    };
    assert_eq!(
        run.paths(),
        vec![
            (None, strings(&TOP_FAILED)),
            (Some(0), chain_until("CreateImage"))
        ]
    );
    assert_eq!(run.calls_of("CreateImage@web"), 7);
    assert_eq!(
        run.calls_of("WaitImageAvailable@web"),
        0,
        "nothing runs after the failed step but Cleanup"
    );
    assert_eq!(run.calls_of("Cleanup@web"), 1);
    let (error, cause) = run.error.clone().expect("the execution fails");
    assert_eq!(error, "BuildFailed");
    assert!(
        cause.contains(r#"build "web""#)
            && cause.contains("Transient: scripted Transient from CreateImage"),
        "{cause}"
    );
}

#[tokio::test]
async fn map_over_two_builds_where_one_fails() {
    let Some(run) = both(
        execution_input(&["web", "db"]),
        &[
            "CreateImage@db: BuildFailed",
            "WaitImageAvailable@web: NotReady*2, Ok",
        ],
    )
    .await
    else {
        return;
    };
    assert_eq!(
        run.paths(),
        vec![
            (None, strings(&TOP_FAILED)),
            (Some(0), full_chain()),
            (Some(1), chain_until("CreateImage"))
        ]
    );
    assert_eq!(
        run.calls_of("CreateImage@db"),
        1,
        "BuildFailed is not retried"
    );
    assert_eq!(run.calls_of("Cleanup@db"), 1);
    assert_eq!(run.calls_of("Cleanup@web"), 1);
    let (_, cause) = run.error.clone().expect("the execution fails");
    assert!(
        cause.contains(r#"build "db""#) && !cause.contains(r#"build "web""#),
        "only db failed: {cause}"
    );
}

#[tokio::test]
async fn invalid_template_fails_at_once() {
    let input = json!({"template": {"builders": [{"type": "amazon-ebs", "name": "web"}, {"type": "docker"}]}, "vars": {}});
    let Some(run) = both(input, &[]).await else {
        return;
    };
    assert_eq!(
        run.paths(),
        vec![(None, strings(&["Prepare", "TemplateInvalid"]))]
    );
    assert_eq!(
        run.calls,
        vec!["Prepare".to_string()],
        "no step after Prepare runs"
    );
    let (error, cause) = run.error.clone().expect("the execution fails");
    assert_eq!(error, "InvalidTemplate");
    assert!(
        cause.contains("web: region") && cause.contains("docker"),
        "every problem is listed: {cause}"
    );
}

// ------------------------------------------------ the real handlers against moto, both ways

/// The demo template, with the AMI name from a variable so both runs can share one moto.
fn real_template() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ebs-basic.json"),
    )
    .unwrap();
    let mut t: Value = serde_json::from_str(&text).unwrap();
    t["variables"] = json!({"suffix": ""});
    t["builders"][0]["ami_name"] = json!("amiflow-parity-{{user `suffix`}}");
    t.to_string()
}

/// The steps a build went through (without the Choice), from ALS's path.
fn als_steps(record: &Value) -> Vec<String> {
    als_path(record)
        .into_iter()
        .filter(|(_, i)| *i == Some(0))
        .map(|(s, _)| s.rsplit('.').next().unwrap().to_string())
        .filter(|s| s != "BuilderType")
        .collect()
}

/// The steps `amiflow build` reports on stderr when not on a terminal: `    <build>: <Step> (1.2s…)`.
fn cli_steps(stderr: &str, build: &str) -> Vec<String> {
    let prefix = format!("    {build}: ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once(" (").map(|(step, _)| step.to_string()))
        .filter(|step| !step.contains(' '))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebs_template_through_als_and_serve_lambdas_matches_amiflow_build() {
    let als = match Als::find() {
        Ok(als) => als,
        Err(missing) => return eprintln!("SKIP ALS against moto: {missing}"),
    };
    let Some(moto) =
        Moto::start_or_skip("ebs_template_through_als_and_serve_lambdas_matches_amiflow_build")
    else {
        return;
    };
    let region = "us-east-1";
    let dir = tempfile::tempdir().unwrap();
    let template_path = dir.path().join("ebs.json");
    std::fs::write(&template_path, real_template()).unwrap();

    // 1. aws-local-stepfunctions → amiflow serve-lambdas (the real handlers) → moto.
    let mut cmd = std::process::Command::new(workspace_binary("amiflow"));
    cmd.args(["serve-lambdas", "--port", "0"])
        .envs(moto.env(region))
        .env_remove("AWS_LAMBDA_FUNCTION_NAME")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut server = ChildGuard(cmd.spawn().expect("spawn amiflow serve-lambdas"));
    let mut endpoint = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut endpoint,
    )
    .unwrap();
    let input = json!({"template": real_template(), "vars": {"suffix": "als"}});
    let record = als
        .run(&definition_path(), &input, "parity-als", endpoint.trim())
        .await;
    drop(server);
    assert_eq!(record["error"], Value::Null, "{record}");
    let als_output = &record["output"];
    assert_eq!(als_output["failed"], 0, "{record}");

    // 2. amiflow build (the local engine, in-process steps) → moto.
    let out = tokio::process::Command::new(workspace_binary("amiflow"))
        .arg("build")
        .arg("--json")
        .args(["-var", "suffix=cli"])
        .arg(&template_path)
        .envs(moto.env(region))
        .output()
        .await
        .expect("run amiflow build");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "amiflow build failed:\n{stdout}\n{stderr}"
    );
    let json_start = stdout.find("\n{").map(|i| i + 1).unwrap_or(0);
    let cli_output: Value = serde_json::from_str(&stdout[json_start..])
        .unwrap_or_else(|e| panic!("no output document ({e}):\n{stdout}"));
    let cli_execution = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("==> ")
                .and_then(|r| r.split_once(": "))
                .map(|(e, _)| e.to_string())
        })
        .expect("amiflow build names its execution");

    // Same states, one AMI each, same output shape.
    let build = als_output["builds"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    // The local progress leaves out the await states, which do nothing locally.
    let als_states: Vec<_> = als_steps(&record)
        .into_iter()
        .filter(|s| !amiflow::flows::is_await_state(s))
        .collect();
    assert_eq!(
        cli_steps(&stderr, &build),
        als_states,
        "same states\n{stderr}"
    );
    let strip = |v: &Value| {
        let mut b = v["builds"][0].clone();
        let amis = b["amis"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>());
        b["amis"] = json!(amis);
        b["artifact_id"] = Value::Null;
        // Packer's artifact string names the AMI ids: keep its shape, not the ids.
        let artifact = b["artifact"].as_str().unwrap_or_default();
        b["artifact"] = json!(artifact
            .lines()
            .map(|l| l.split_once(": ami-").map_or(l, |(region, _)| region))
            .collect::<Vec<_>>());
        b["snapshots"] = json!(b["snapshots"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()));
        b
    };
    assert_eq!(
        strip(&cli_output),
        strip(als_output),
        "same result but the ids"
    );
    let ctx = moto.ctx(region).await;
    for (output, execution) in [
        (als_output, "parity-als"),
        (&cli_output, cli_execution.as_str()),
    ] {
        let ami = output["builds"][0]["amis"][region]
            .as_str()
            .unwrap_or_else(|| panic!("an AMI in {region}: {output}"));
        let images = ctx
            .ec2(region)
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .unwrap();
        assert_eq!(images.images().len(), 1, "{ami} is registered");
        let left = crate::ebs::tagged_leftovers(&ctx, execution, &[region], false).await;
        assert!(
            left.is_empty(),
            "{execution} left temporary resources: {left:?}"
        );
    }
    println!(
        "ALS + serve-lambdas and amiflow build: same {} states, AMIs {} and {}",
        als_steps(&record).len(),
        als_output["builds"][0]["amis"][region],
        cli_output["builds"][0]["amis"][region]
    );
}
