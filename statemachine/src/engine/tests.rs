use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::json;

use super::*;

/// Per resource name, a queue of scripted outcomes; when the queue is empty the task
/// echoes its input. Records every call.
#[derive(Default)]
struct Script {
    outcomes: Mutex<HashMap<String, VecDeque<Result<Value, TaskError>>>>,
    calls: Mutex<Vec<(String, Value)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Milliseconds each call takes (real time), to observe concurrency.
    latency_ms: u64,
}

impl Script {
    fn then(self, resource: &str, outcome: Result<Value, TaskError>) -> Script {
        self.outcomes
            .lock()
            .unwrap()
            .entry(resource.to_string())
            .or_default()
            .push_back(outcome);
        self
    }
    fn fail(self, resource: &str, error: &str, times: usize) -> Script {
        (0..times).fold(self, |s, _| {
            s.then(
                resource,
                Err(TaskError::new(error, format!("{error} from {resource}"))),
            )
        })
    }
    fn calls_to(&self, resource: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == resource)
            .count()
    }
}

impl TaskInvoker for Script {
    async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
        let name = resource_name(resource).to_string();
        self.calls
            .lock()
            .unwrap()
            .push((name.clone(), input.clone()));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if self.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.latency_ms)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let scripted = self
            .outcomes
            .lock()
            .unwrap()
            .get_mut(&name)
            .and_then(|q| q.pop_front());
        match scripted {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e),
            None => {
                // Input-dependent failure: lets a Map fail one iteration by its item.
                if input.get("fail").and_then(Value::as_bool) == Some(true) {
                    return Err(TaskError::new(
                        "BuildFailed",
                        format!("{name} failed for {input}"),
                    ));
                }
                Ok(input)
            }
        }
    }
}

fn machine(v: Value) -> StateMachine {
    let m: StateMachine = serde_json::from_value(v).unwrap();
    m.check().unwrap();
    m
}

struct Run {
    result: Result<Value, ExecutionError>,
    events: Vec<Event>,
    clock: VirtualClock,
    script: Arc<Script>,
}

async fn run(def: Value, script: Script, input: Value) -> Run {
    let clock = VirtualClock::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let script = Arc::new(script);
    let engine = Engine::from_arc(script.clone())
        .with_clock(clock.clone())
        .on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let result = engine.run(&machine(def), "exec-1", input).await;
    let events = events.lock().unwrap().clone();
    Run {
        result,
        events,
        clock,
        script,
    }
}

fn secs(v: &[f64]) -> Vec<Duration> {
    v.iter().map(|s| Duration::from_secs_f64(*s)).collect()
}

#[test]
fn resource_names() {
    assert_eq!(resource_name("${CreateImageFunctionArn}"), "CreateImage");
    assert_eq!(
        resource_name("arn:aws:lambda:us-east-1:123456789012:function:amiflow-Prepare:live"),
        "amiflow-Prepare"
    );
    assert_eq!(resource_name("Plain"), "Plain");
}

#[tokio::test]
async fn input_and_output_processing_with_the_context_object() {
    let def = json!({
        "StartAt": "T",
        "States": {"T": {
            "Type": "Task", "Resource": "${EchoFunctionArn}",
            "InputPath": "$.build",
            "Parameters": {
                "region.$": "$.region",
                "execution.$": "$$.Execution.Name",
                "execution_id.$": "$$.Execution.Id",
                "started.$": "$$.Execution.StartTime",
                "state.$": "$$.State.Name",
                "label.$": "States.Format('{}-{}', $.name, $.n)",
                "fixed": {"nested.$": "$.n", "list": [1, {"x.$": "$.name"}]}
            },
            "ResultSelector": {"r.$": "$.region", "who.$": "$.execution", "nested.$": "$.fixed", "label.$": "$.label", "state.$": "$.state"},
            "ResultPath": "$.build.result",
            "OutputPath": "$.build",
            "End": true
        }}
    });
    let r = run(
        def,
        Script::default(),
        json!({"build": {"region": "eu-west-1", "name": "web", "n": 2}, "other": 1}),
    )
    .await;
    let out = r.result.unwrap();
    assert_eq!(
        out,
        json!({"region": "eu-west-1", "name": "web", "n": 2, "result": {
            "r": "eu-west-1", "who": "exec-1", "nested": {"nested": 2, "list": [1, {"x": "web"}]}, "label": "web-2", "state": "T"
        }})
    );
    let (_, sent) = r.script.calls.lock().unwrap()[0].clone();
    assert_eq!(
        sent["execution_id"],
        json!("arn:aws:states:local:000000000000:execution:amiflow-local:exec-1")
    );
    assert_eq!(sent["started"], json!("2024-01-01T00:00:00.000Z"));
}

#[tokio::test]
async fn null_paths_discard_and_missing_paths_are_runtime_errors() {
    let def = json!({"StartAt": "A", "States": {
        "A": {"Type": "Task", "Resource": "R", "InputPath": null, "ResultPath": null, "Next": "B"},
        "B": {"Type": "Pass", "OutputPath": null, "End": true}
    }});
    let r = run(def, Script::default(), json!({"keep": true})).await;
    assert_eq!(r.result.unwrap(), json!({}));
    assert_eq!(
        r.script.calls.lock().unwrap()[0].1,
        json!({}),
        "InputPath null sends {{}}"
    );

    let def = json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "R", "Parameters": {"x.$": "$.missing"}, "Retry": [{"ErrorEquals": ["States.ALL"]}], "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "B"}], "End": true}, "B": {"Type": "Succeed"}}});
    let r = run(def, Script::default(), json!({})).await;
    let e = r.result.unwrap_err();
    assert_eq!(e.error, "States.Runtime");
    assert!(e.cause.contains("$.missing"), "{}", e.cause);
    assert!(
        r.clock.delays().is_empty(),
        "States.ALL does not retry States.Runtime"
    );

    let def = json!({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": "R", "ResultPath": "$.x.y", "End": true}}});
    let r = run(def, Script::default(), json!({"x": 5})).await;
    assert_eq!(r.result.unwrap_err().error, "States.ResultPathMatchFailure");
}

fn retry_def(retry: Value) -> Value {
    json!({"StartAt": "W", "States": {"W": {"Type": "Task", "Resource": "${WaitFunctionArn}", "Retry": retry, "End": true}}})
}

#[tokio::test]
async fn retry_delays_follow_interval_backoff_cap_and_attempts() {
    let retry = json!([{"ErrorEquals": ["NotReady"], "IntervalSeconds": 2, "BackoffRate": 2.0, "MaxDelaySeconds": 5, "MaxAttempts": 4}]);
    let r = run(
        retry_def(retry.clone()),
        Script::default().fail("Wait", "NotReady", 4),
        json!({"ok": 1}),
    )
    .await;
    assert_eq!(r.result.unwrap(), json!({"ok": 1}));
    assert_eq!(r.clock.delays(), secs(&[2.0, 4.0, 5.0, 5.0]));
    assert_eq!(r.script.calls_to("Wait"), 5);
    let attempts: Vec<u32> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RetryScheduled { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, vec![1, 2, 3, 4]);

    // One failure more than the budget: the error comes out after exactly 4 retries.
    let r = run(
        retry_def(retry),
        Script::default().fail("Wait", "NotReady", 5),
        json!({}),
    )
    .await;
    let e = r.result.unwrap_err();
    assert_eq!(
        (e.error.as_str(), e.cause.as_str()),
        ("NotReady", "NotReady from Wait")
    );
    assert_eq!(r.clock.delays().len(), 4);
    assert_eq!(r.script.calls_to("Wait"), 5);
}

#[tokio::test]
async fn retry_defaults_and_zero_attempts() {
    // ASL defaults: 1 s, backoff 2, 3 attempts.
    let r = run(
        retry_def(json!([{"ErrorEquals": ["States.ALL"]}])),
        Script::default().fail("Wait", "X", 9),
        json!({}),
    )
    .await;
    assert_eq!(r.clock.delays(), secs(&[1.0, 2.0, 4.0]));
    assert!(r.result.is_err());
    let r = run(
        retry_def(json!([{"ErrorEquals": ["X"], "MaxAttempts": 0}])),
        Script::default().fail("Wait", "X", 1),
        json!({}),
    )
    .await;
    assert!(r.clock.delays().is_empty());
    assert_eq!(r.result.unwrap_err().error, "X");
}

#[tokio::test]
async fn first_matching_retrier_wins_with_its_own_counter() {
    let retry = json!([
        {"ErrorEquals": ["NotReady"], "IntervalSeconds": 1, "BackoffRate": 2.0, "MaxAttempts": 2},
        {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 10, "MaxAttempts": 5}
    ]);
    let script = Script::default()
        .fail("Wait", "NotReady", 1)
        .fail("Wait", "Transient", 1)
        .fail("Wait", "NotReady", 2);
    let r = run(retry_def(retry), script, json!({})).await;
    // NotReady (1 s), Transient (10 s, the wildcard's own counter), NotReady (2 s), then
    // NotReady's retrier is exhausted: the wildcard below it is not consulted.
    assert_eq!(r.clock.delays(), secs(&[1.0, 10.0, 2.0]));
    assert_eq!(r.result.unwrap_err().error, "NotReady");
}

#[tokio::test]
async fn full_jitter_stays_within_the_computed_delay() {
    let retry = json!([{"ErrorEquals": ["Transient"], "IntervalSeconds": 2, "BackoffRate": 2.0, "MaxDelaySeconds": 60, "MaxAttempts": 40, "JitterStrategy": "FULL"}]);
    let r = run(
        retry_def(retry),
        Script::default().fail("Wait", "Transient", 40),
        json!({}),
    )
    .await;
    assert!(r.result.is_ok());
    let delays = r.clock.delays();
    assert_eq!(delays.len(), 40);
    for (i, d) in delays.iter().enumerate() {
        let bound = (2.0 * 2f64.powi(i as i32)).min(60.0);
        assert!(d.as_secs_f64() <= bound, "retry {i}: {d:?} > {bound}");
    }
    // 34 of the 40 bounds are 60 s: a jitter that returned the bound would sum to > 2000 s.
    let total: f64 = delays.iter().map(Duration::as_secs_f64).sum();
    assert!(
        total < 0.9 * 2100.0,
        "jitter does not spread the delays: total {total}"
    );
    assert!(delays.windows(2).any(|w| w[0] != w[1]));
}

#[tokio::test]
async fn catch_puts_the_error_at_its_result_path_and_goes_on() {
    let def = json!({"StartAt": "Step", "States": {
        "Step": {"Type": "Task", "Resource": "${StepFunctionArn}",
                 "Retry": [{"ErrorEquals": ["NotReady"], "MaxAttempts": 1}],
                 "Catch": [{"ErrorEquals": ["Other"], "Next": "Wrong"}, {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Cleanup"}],
                 "Next": "Wrong"},
        "Wrong": {"Type": "Fail", "Error": "Wrong"},
        "Cleanup": {"Type": "Task", "Resource": "${CleanupFunctionArn}", "End": true}
    }});
    let r = run(
        def,
        Script::default().fail("Step", "NotReady", 2),
        json!({"ledger": ["i-1"]}),
    )
    .await;
    let out = r.result.unwrap();
    assert_eq!(
        out,
        json!({"ledger": ["i-1"], "error": {"Error": "NotReady", "Cause": "NotReady from Step"}})
    );
    assert!(r.events.contains(&Event::Caught {
        name: "Step".into(),
        scope: vec![],
        error: "NotReady".into(),
        next: "Cleanup".into()
    }));
    assert_eq!(r.clock.delays().len(), 1);
}

#[tokio::test]
async fn task_failed_matches_task_errors_but_not_timeouts() {
    let def = |timeout: Option<u64>| {
        let mut t = json!({"Type": "Task", "Resource": "R", "Catch": [{"ErrorEquals": ["States.TaskFailed"], "Next": "Caught"}], "End": true});
        if let Some(s) = timeout {
            t["TimeoutSeconds"] = json!(s);
        }
        json!({"StartAt": "T", "States": {"T": t, "Caught": {"Type": "Succeed"}}})
    };
    let r = run(def(None), Script::default().fail("R", "Boom", 1), json!({})).await;
    assert_eq!(
        r.result.unwrap(),
        json!({"Error": "Boom", "Cause": "Boom from R"}),
        "no ResultPath: the error output replaces the input"
    );

    // A real timeout, on a scaled real clock: 1 s × 0.01 = 10 ms against a 500 ms task.
    let script = Arc::new(Script {
        latency_ms: 500,
        ..Default::default()
    });
    let engine = Engine::from_arc(script).with_clock(RealClock { scale: 0.01 });
    let e = engine
        .run(&machine(def(Some(1))), "t", json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "States.Timeout");
}

#[tokio::test]
async fn timeout_seconds_path_reads_the_timeout_from_the_input() {
    let def = json!({"StartAt": "T", "States": {"T": {
        "Type": "Task", "Resource": "R", "TimeoutSecondsPath": "$.wait",
        "Parameters": {"token.$": "$$.Task.Token"}, "End": true}}});
    let slow = || {
        Arc::new(Script {
            latency_ms: 500,
            ..Default::default()
        })
    };
    // 1 s × 0.01 = 10 ms against a 500 ms task: timed out; 100 s × 0.01 = 1 s: it finishes.
    let engine = Engine::from_arc(slow()).with_clock(RealClock { scale: 0.01 });
    let e = engine
        .run(&machine(def.clone()), "t", json!({"wait": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.error, "States.Timeout");
    let engine = Engine::from_arc(slow()).with_clock(RealClock { scale: 0.01 });
    let out = engine
        .run(&machine(def.clone()), "t", json!({"wait": 100}))
        .await
        .unwrap();
    assert!(
        out["token"].as_str().is_some_and(|t| !t.is_empty()),
        "a callback task gets its token: {out}"
    );
    for bad in [json!({}), json!({"wait": 0}), json!({"wait": "soon"})] {
        let e = Engine::from_arc(slow())
            .run(&machine(def.clone()), "t", bad)
            .await
            .unwrap_err();
        assert_eq!(e.error, "States.Runtime", "{e}");
    }
}

#[tokio::test]
async fn choice_picks_the_first_matching_rule_or_default() {
    let def = json!({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [
            {"Variable": "$.build.builder_type", "StringEquals": "amazon-ebs", "Next": "Ebs"},
            {"And": [{"Variable": "$.n", "IsPresent": true}, {"Variable": "$.n", "NumericGreaterThanEquals": 2}], "Next": "Big"}
        ], "Default": "Other"},
        "Ebs": {"Type": "Pass", "Result": "ebs", "End": true},
        "Big": {"Type": "Pass", "Result": "big", "End": true},
        "Other": {"Type": "Pass", "Result": "other", "End": true}
    }});
    let cases = [
        (json!({"build": {"builder_type": "amazon-ebs"}}), "ebs"),
        (
            json!({"build": {"builder_type": "amazon-chroot"}, "n": 3}),
            "big",
        ),
        (json!({"build": {"builder_type": "amazon-chroot"}}), "other"),
    ];
    for (input, want) in cases {
        assert_eq!(
            run(def.clone(), Script::default(), input)
                .await
                .result
                .unwrap(),
            json!(want)
        );
    }
    let no_default = json!({"StartAt": "C", "States": {"C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": true, "Next": "D"}]}, "D": {"Type": "Succeed"}}});
    assert_eq!(
        run(no_default, Script::default(), json!({}))
            .await
            .result
            .unwrap_err()
            .error,
        "States.NoChoiceMatched"
    );
}

fn map_def(max_concurrency: u32, catch_inside: bool) -> Value {
    let mut work = json!({"Type": "Task", "Resource": "${WorkFunctionArn}", "Next": "Done"});
    if catch_inside {
        work["Catch"] =
            json!([{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "Done"}]);
    }
    json!({"StartAt": "Builds", "States": {
        "Builds": {"Type": "Map", "ItemsPath": "$.builds", "MaxConcurrency": max_concurrency,
            "ItemSelector": {"item.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index", "exec.$": "$$.Execution.Name", "fail.$": "$$.Map.Item.Value.fail"},
            "ItemProcessor": {"ProcessorConfig": {"Mode": "INLINE"}, "StartAt": "Work", "States": {
                "Work": work,
                "Done": {"Type": "Pass", "End": true}
            }},
            "ResultPath": "$.results",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.map_error", "Next": "After"}],
            "Next": "After"},
        "After": {"Type": "Succeed"}
    }})
}

#[tokio::test]
async fn map_runs_iterations_concurrently_up_to_max_and_keeps_their_order() {
    let builds: Vec<Value> = (0..5)
        .map(|i| json!({"name": format!("b{i}"), "fail": i == 3}))
        .collect();
    let script = Script {
        latency_ms: 30,
        ..Default::default()
    };
    let r = run(map_def(2, true), script, json!({"builds": builds})).await;
    let out = r.result.unwrap();
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["index"], json!(i));
        assert_eq!(res["item"]["name"], json!(format!("b{i}")));
        assert_eq!(res["exec"], json!("exec-1"));
        assert_eq!(
            res.get("error").is_some(),
            i == 3,
            "only build 3 records an error: {res}"
        );
    }
    assert_eq!(results[3]["error"]["Error"], json!("BuildFailed"));
    assert_eq!(
        r.script.max_in_flight.load(Ordering::SeqCst),
        2,
        "MaxConcurrency 2"
    );
    let scopes: Vec<usize> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::StateEntered { name, scope, .. } if name == "Work" => Some(scope[0].index),
            _ => None,
        })
        .collect();
    let mut sorted = scopes.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
    assert!(r.events.iter().any(|e| matches!(e, Event::StateEntered { name, scope, .. } if name == "Work" && scope == &vec![Scope { state: "Builds".into(), index: 3 }])));
}

#[tokio::test]
async fn map_without_limit_runs_all_at_once_and_an_uncaught_iteration_fails_the_map() {
    let builds: Vec<Value> = (0..4).map(|i| json!({"fail": i == 1})).collect();
    let script = Script {
        latency_ms: 30,
        ..Default::default()
    };
    let r = run(map_def(0, false), script, json!({"builds": builds})).await;
    let out = r.result.unwrap();
    assert_eq!(
        out["map_error"]["Error"],
        json!("BuildFailed"),
        "the Map's Catch sees the iteration's error: {out}"
    );
    assert!(out.get("results").is_none());
    assert_eq!(r.script.max_in_flight.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn parallel_gives_each_branch_the_input_and_collects_outputs_in_order() {
    let branch = |r: &str| json!({"StartAt": "S", "States": {"S": {"Type": "Task", "Resource": r, "ResultPath": "$.by", "End": true}}});
    let def = json!({"StartAt": "P", "States": {"P": {"Type": "Parallel", "Branches": [branch("A"), branch("B")],
        "ResultSelector": {"first.$": "$[0].by", "second.$": "$[1].by"}, "End": true}}});
    let script = Script::default()
        .then("A", Ok(json!("a")))
        .then("B", Ok(json!("b")));
    let r = run(def.clone(), script, json!({"x": 1})).await;
    assert_eq!(r.result.unwrap(), json!({"first": "a", "second": "b"}));
    let r = run(def, Script::default().fail("B", "Boom", 1), json!({"x": 1})).await;
    assert_eq!(r.result.unwrap_err().error, "Boom");
}

#[tokio::test]
async fn wait_asks_the_clock_for_seconds_paths_and_timestamps() {
    let def = json!({"StartAt": "A", "States": {
        "A": {"Type": "Wait", "Seconds": 7, "Next": "B"},
        "B": {"Type": "Wait", "SecondsPath": "$.delay", "Next": "C"},
        "C": {"Type": "Wait", "TimestampPath": "$.at", "Next": "D"},
        "D": {"Type": "Wait", "Timestamp": "2000-01-01T00:00:00Z", "End": true}
    }});
    // The virtual clock starts at 2024-01-01T00:00:00Z; after 7 + 3 s, 50 s remain to :01:00.
    let r = run(
        def,
        Script::default(),
        json!({"delay": 3, "at": "2024-01-01T00:01:00Z"}),
    )
    .await;
    assert!(r.result.is_ok());
    assert_eq!(r.clock.delays(), secs(&[7.0, 3.0, 50.0, 0.0]));
}

#[tokio::test]
async fn fail_states_take_error_and_cause_literally_or_from_paths() {
    let def = json!({"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "BuildFailed", "Cause": "it broke"}}});
    let e = run(def, Script::default(), json!({}))
        .await
        .result
        .unwrap_err();
    assert_eq!(
        (e.error.as_str(), e.cause.as_str()),
        ("BuildFailed", "it broke")
    );
    let def = json!({"StartAt": "F", "States": {"F": {"Type": "Fail", "ErrorPath": "$.e", "CausePath": "$.c"}}});
    let r = run(def, Script::default(), json!({"e": "Mine", "c": "because"})).await;
    let e = r.result.unwrap_err();
    assert_eq!((e.error.as_str(), e.cause.as_str()), ("Mine", "because"));
    assert_eq!(
        r.events.last(),
        Some(&Event::ExecutionFailed {
            error: "Mine".into(),
            cause: "because".into()
        })
    );
}

#[tokio::test]
async fn pass_result_and_parameters_and_the_event_sequence() {
    let def = json!({"StartAt": "P", "States": {
        "P": {"Type": "Pass", "Result": {"v": 1}, "ResultPath": "$.r", "Next": "Q"},
        "Q": {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.r.v, 41)", "len.$": "States.ArrayLength($.l)"}, "End": true}
    }});
    let r = run(def, Script::default(), json!({"l": [1, 2]})).await;
    assert_eq!(r.result.unwrap(), json!({"sum": 42, "len": 2}));
    let kinds: Vec<String> = r
        .events
        .iter()
        .map(|e| match e {
            Event::ExecutionStarted { .. } => "start".into(),
            Event::StateEntered { name, .. } => format!("enter {name}"),
            Event::StateExited { name, .. } => format!("exit {name}"),
            Event::ExecutionSucceeded { .. } => "ok".into(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["start", "enter P", "exit P", "enter Q", "exit Q", "ok"]
    );
}

#[tokio::test]
async fn event_channel_delivers_events() {
    let (engine, mut rx) = Engine::new(Script::default())
        .with_clock(VirtualClock::default())
        .event_channel();
    let def = machine(json!({"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}));
    engine.run(&def, "e", json!({"a": 1})).await.unwrap();
    assert_eq!(
        rx.recv().await,
        Some(Event::ExecutionStarted {
            name: "e".into(),
            input: json!({"a": 1})
        })
    );
}

#[test]
fn definitions_round_trip_through_the_model() {
    let def = json!({
        "Comment": "all the fields",
        "StartAt": "T",
        "TimeoutSeconds": 3600,
        "States": {
            "T": {"Type": "Task", "Comment": "c", "Resource": "${TFunctionArn}", "InputPath": "$.a", "Parameters": {"x.$": "$.y"},
                  "ResultSelector": {"z.$": "$.z"}, "ResultPath": null, "OutputPath": "$", "TimeoutSeconds": 30, "HeartbeatSeconds": 10,
                  "Retry": [{"ErrorEquals": ["NotReady"], "IntervalSeconds": 15, "MaxAttempts": 120, "BackoffRate": 1.0, "MaxDelaySeconds": 15, "JitterStrategy": "NONE"}],
                  "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "M"}], "Next": "M"},
            "M": {"Type": "Map", "ItemsPath": "$.items", "Parameters": {"v.$": "$$.Map.Item.Value"}, "MaxConcurrency": 2,
                  "Iterator": {"StartAt": "I", "States": {"I": {"Type": "Pass", "End": true}}}, "ResultPath": "$.out", "Next": "C"},
            "C": {"Type": "Choice", "Choices": [
                    {"Not": {"Variable": "$.x", "IsNull": true}, "Next": "W"},
                    {"Or": [{"Variable": "$.s", "StringMatches": "a*"}, {"Variable": "$.n", "NumericLessThanPath": "$.m"}], "Next": "P"}],
                  "Default": "F"},
            "W": {"Type": "Wait", "SecondsPath": "$.s", "Next": "P"},
            "P": {"Type": "Parallel", "Branches": [{"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}], "Next": "F"},
            "F": {"Type": "Fail", "ErrorPath": "$.e", "CausePath": "$.c"}
        }
    });
    let text = def.to_string();
    let m = StateMachine::from_json(&text).unwrap();
    let rendered: Value = serde_json::from_str(&m.to_json_pretty()).unwrap();
    assert_eq!(rendered, def);
    let ordered = StateMachine::from_json(r#"{"StartAt": "Z", "States": {"Z": {"Type": "Pass", "Next": "A"}, "A": {"Type": "Succeed"}}}"#).unwrap();
    assert_eq!(
        ordered.states.names().collect::<Vec<_>>(),
        ["Z", "A"],
        "declaration order is kept"
    );
    assert!(
        ordered.to_json_pretty().find("\"Z\"").unwrap()
            < ordered.to_json_pretty().find("\"A\"").unwrap()
    );
    assert!(
        m.to_json_pretty().find("\"Type\"").unwrap()
            < m.to_json_pretty().find("\"Resource\"").unwrap()
    );

    assert!(
        StateMachine::from_json(r#"{"StartAt": "X", "States": {"A": {"Type": "Succeed"}}}"#)
            .unwrap_err()
            .contains("\"X\"")
    );
    assert!(StateMachine::from_json(
        r#"{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "B"}}}"#
    )
    .is_err());
    assert!(
        StateMachine::from_json(r#"{"StartAt": "A", "States": {"A": {"Type": "Pass"}}}"#).is_err()
    );
    assert!(StateMachine::from_json(r#"{"StartAt": "A", "States": {"A": {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringEqualz": "a", "Next": "A"}]}}}"#).is_err());
    assert!(StateMachine::from_json(
        r#"{"StartAt": "A", "States": {"A": {"Type": "Succeed"}, "A": {"Type": "Succeed"}}}"#
    )
    .is_err());
}
