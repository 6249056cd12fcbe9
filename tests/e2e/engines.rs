//! The state machine run by aws-local-stepfunctions (a third-party ASL interpreter)
//! against amiflow's local Lambda Invoke API serving scripted handlers (Prepare and
//! Finalize are the real ones). Each case checks the path taken (per Map iteration), the
//! retries, and the execution's output or error.
//!
//! The definition is tests/als/fixture.asl.json, a small stand-in with the committed
//! definition's shape, until statemachine/amiflow.asl.json and the local engine land
//! (branch `engine`); then each case also runs on the local engine and both records must
//! be equal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use amiflow::lambda_api;
use amiflow_tests::lambda_harness::{als_path, path_by_iteration, Als, ScriptedInvoker};
use serde_json::{json, Value};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("als/fixture.asl.json")
}

fn execution_input(builds: &[&str]) -> Value {
    let builders: Vec<Value> = builds.iter().map(|name| json!({
            "type": "amazon-ebs", "name": name, "region": "us-east-1", "source_ami": "ami-12345678",
            "instance_type": "t3.micro", "ami_name": format!("engines-{name}"), "communicator": "none",
        })).collect();
    json!({"template": {"builders": builders}, "vars": {}})
}

struct Run {
    record: Value,
    calls: Vec<String>,
}

/// Runs the fixture with ALS, or says why it cannot (and the test skips).
async fn run_als(builds: &[&str], script: &[&str]) -> Option<Run> {
    let als = match Als::find() {
        Ok(als) => als,
        Err(missing) => {
            eprintln!("SKIP engines comparison: {missing}");
            return None;
        }
    };
    let ctx = Arc::new(amiflow::Ctx::from_env().await);
    let invoker = Arc::new(ScriptedInvoker::new(script).with_real(&["Prepare", "Finalize"], ctx));
    let (addr, server) = lambda_api::serve(0, invoker.clone()).await.expect("serve the invoke API");
    let record = als.run(&fixture(), &execution_input(builds), "exec-engines", &format!("http://{addr}")).await;
    server.abort();
    let calls = invoker.calls.lock().unwrap().clone();
    Some(Run { record, calls })
}

const CHAIN: [&str; 5] = ["BuilderType", "SourceAmiInfo", "CreateImage", "WaitImageAvailable", "Cleanup"];
const TOP_OK: [&str; 5] = ["Prepare", "Builds", "Finalize", "AnyFailed", "Done"];
const TOP_FAILED: [&str; 5] = ["Prepare", "Builds", "Finalize", "AnyFailed", "BuildsFailed"];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn retries_of(record: &Value, state: &str) -> usize {
    record["retries"].as_array().unwrap().iter().filter(|r| r["state"] == state).count()
}

fn calls_of(run: &Run, key: &str) -> usize {
    run.calls.iter().filter(|c| *c == key).count()
}

#[tokio::test]
async fn image_ready_after_polls() {
    let Some(run) = run_als(&["web"], &["WaitImageAvailable: NotReady*3, Ok"]).await else { return };
    let paths = path_by_iteration(&als_path(&run.record));
    assert_eq!(paths, vec![(None, strings(&TOP_OK)), (Some(0), strings(&CHAIN))], "{}", run.record);
    assert_eq!(retries_of(&run.record, "WaitImageAvailable"), 3);
    assert_eq!(calls_of(&run, "WaitImageAvailable@web"), 4);
    assert_eq!(run.record["error"], Value::Null);
    assert_eq!(run.record["output"]["failed"], 0);
    assert_eq!(run.record["output"]["builds"][0]["name"], "web");
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let Some(run) = run_als(&["web"], &["SourceAmiInfo: Transient*2, Ok", "CreateImage: Transient, Ok"]).await else { return };
    let paths = path_by_iteration(&als_path(&run.record));
    assert_eq!(paths, vec![(None, strings(&TOP_OK)), (Some(0), strings(&CHAIN))], "{}", run.record);
    assert_eq!(retries_of(&run.record, "SourceAmiInfo"), 2);
    assert_eq!(retries_of(&run.record, "CreateImage"), 1);
    assert_eq!(run.record["output"]["failed"], 0);
}

#[tokio::test]
async fn retries_exhausted_mid_chain_are_caught_cleaned_up_and_fail_the_execution() {
    // MaxAttempts 3 on Transient: the first call and three retries fail, then Catch.
    let Some(run) = run_als(&["web"], &["CreateImage: Transient*4"]).await else { return };
    let paths = path_by_iteration(&als_path(&run.record));
    assert_eq!(
        paths,
        vec![(None, strings(&TOP_FAILED)), (Some(0), strings(&["BuilderType", "SourceAmiInfo", "CreateImage", "Cleanup"]))],
        "{}",
        run.record
    );
    assert_eq!(calls_of(&run, "CreateImage@web"), 4);
    assert_eq!(calls_of(&run, "WaitImageAvailable@web"), 0, "nothing runs after the failed step but Cleanup");
    assert_eq!(calls_of(&run, "Cleanup@web"), 1);
    assert_eq!(run.record["error"]["Error"], "BuildFailed");
    let cause = run.record["error"]["Cause"].as_str().unwrap();
    assert!(cause.contains(r#"build "web""#) && cause.contains("Transient: scripted Transient from CreateImage"), "{cause}");
}

#[tokio::test]
async fn map_over_two_builds_where_one_fails() {
    let Some(run) = run_als(&["web", "db"], &["CreateImage@db: BuildFailed", "WaitImageAvailable@web: NotReady*2, Ok"]).await
    else {
        return;
    };
    let paths = path_by_iteration(&als_path(&run.record));
    assert_eq!(
        paths,
        vec![
            (None, strings(&TOP_FAILED)),
            (Some(0), strings(&CHAIN)),
            (Some(1), strings(&["BuilderType", "SourceAmiInfo", "CreateImage", "Cleanup"])),
        ],
        "{}",
        run.record
    );
    assert_eq!(calls_of(&run, "CreateImage@db"), 1, "BuildFailed is not retried");
    assert_eq!(calls_of(&run, "Cleanup@db"), 1);
    assert_eq!(calls_of(&run, "Cleanup@web"), 1);
    let cause = run.record["error"]["Cause"].as_str().unwrap();
    assert!(cause.contains(r#"build "db""#) && !cause.contains(r#"build "web""#), "only db failed: {cause}");
}
