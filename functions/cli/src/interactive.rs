//! Packer's interactive modes of `build`, around the local engine's task dispatch:
//!
//! - `-debug`: pauses before each step of each build until Enter is pressed (input ended,
//!   or `stop`, fails the build there, which then cleans up);
//! - `-on-error=ask`: when a step fails, asks what to do: clean up, abort (keep
//!   everything, as `-on-error=abort`), retry the step, or ignore the error and go on.
//!
//! Both read answers from the terminal, one question at a time whatever the number of
//! builds; [`check_console`] refuses them up front when nobody can answer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use amiflow::flows::{CLEANUP, ERROR_CLEANUP_PROVISION};
use amiflow::state::CaughtError;
use amiflow_statemachine::{resource_name, TaskError, TaskInvoker};
use serde_json::Value;

/// Where questions go and answers come from. `None`: no more input.
pub trait Console: Send + Sync + 'static {
    fn ask(&self, question: &str) -> Option<String>;
}

/// The process's terminal: the question on stderr, the answer a line of stdin.
pub struct Terminal;

impl Console for Terminal {
    fn ask(&self, question: &str) -> Option<String> {
        use std::io::{BufRead, Write};
        eprint!("{question} ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_string()),
        }
    }
}

/// `-debug` and `-on-error=ask` need someone to answer on stdin: a terminal, or a pipe
/// (scripts and tests feed the answers). Anything else (stdin closed or /dev/null, as
/// under most CI runners) would make every pause end the build, so it is refused with
/// the reason before anything is created.
pub fn check_console(flag: &str) -> Result<(), String> {
    use std::io::IsTerminal;
    use std::os::unix::fs::FileTypeExt;
    if std::io::stdin().is_terminal() {
        return Ok(());
    }
    let is_pipe = std::fs::metadata("/dev/stdin")
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if is_pipe {
        return Ok(());
    }
    Err(format!(
        "{flag} waits for answers on stdin, but stdin is not a terminal or a pipe: run it from a terminal \
         (for CI, use -on-error=abort or -on-error=cleanup and no -debug)"
    ))
}

/// What the user answered to a failed step under `-on-error=ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    Cleanup,
    Abort,
    Retry,
    Ignore,
}

fn parse_answer(answer: Option<&str>) -> Option<OnFailure> {
    match answer.map(|a| a.trim().to_ascii_lowercase()).as_deref() {
        // No more input: the safe default, as Packer's.
        None => Some(OnFailure::Cleanup),
        Some("c" | "cleanup") => Some(OnFailure::Cleanup),
        Some("a" | "abort") => Some(OnFailure::Abort),
        Some("r" | "retry") => Some(OnFailure::Retry),
        Some("i" | "ignore") => Some(OnFailure::Ignore),
        Some(_) => None,
    }
}

/// Errors the state machine retries by itself; the others reach the Catch.
fn is_retried(error: &str) -> bool {
    error == "NotReady"
        || error == amiflow::error::COMMAND_SENT
        || error == "Transient"
        || error.starts_with("Lambda.")
}

pub struct Interactive<I> {
    inner: I,
    console: Arc<dyn Console>,
    debug: bool,
    ask: bool,
    /// One question at a time.
    gate: tokio::sync::Mutex<()>,
    /// Per build: the last step paused before (a polled step is paused before once).
    paused_at: Mutex<BTreeMap<String, String>>,
    /// Builds the user chose to abort: their Cleanup keeps everything.
    aborted: Mutex<BTreeSet<String>>,
    /// Input ended during -debug: no more pauses.
    stopped: Mutex<bool>,
}

impl<I: TaskInvoker> Interactive<I> {
    pub fn new(inner: I, console: Arc<dyn Console>, debug: bool, ask: bool) -> Interactive<I> {
        Interactive {
            inner,
            console,
            debug,
            ask,
            gate: tokio::sync::Mutex::new(()),
            paused_at: Mutex::new(BTreeMap::new()),
            aborted: Mutex::new(BTreeSet::new()),
            stopped: Mutex::new(false),
        }
    }

    async fn question(&self, text: String) -> Option<String> {
        let _one_at_a_time = self.gate.lock().await;
        let console = self.console.clone();
        tokio::task::spawn_blocking(move || console.ask(&text))
            .await
            .ok()
            .flatten()
    }

    /// `-debug`: Err when the user stops the build before `step`.
    async fn pause(&self, build: &str, step: &str) -> Result<(), TaskError> {
        if *self.stopped.lock().unwrap() {
            return Ok(());
        }
        let first_time = self
            .paused_at
            .lock()
            .unwrap()
            .insert(build.to_string(), step.to_string())
            .as_deref()
            != Some(step);
        if !first_time {
            return Ok(());
        }
        let answer = self
            .question(format!(
                "==> {build}: pausing before step {step}. Press Enter to continue (\"stop\" fails the build here, which cleans up):"
            ))
            .await;
        match answer.as_deref().map(str::trim) {
            Some("stop") | None => {
                *self.stopped.lock().unwrap() = true;
                Err(TaskError::new(
                    "BuildFailed",
                    format!("stopped before {step} from -debug"),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    /// `-on-error=ask`: what to do about `error` of `step`.
    async fn on_failure(&self, build: &str, step: &str, error: &TaskError) -> OnFailure {
        let message = CaughtError {
            error: error.error.clone(),
            cause: error.cause.clone(),
        }
        .message();
        let mut question = format!(
            "==> {build}: step {step} failed: {message}\n==> {build}: [c] Clean up and exit, [a] abort without cleanup, [r] retry step, [i] ignore error and continue?"
        );
        loop {
            let answer = self.question(question.clone()).await;
            if let Some(choice) = parse_answer(answer.as_deref()) {
                return choice;
            }
            question = "Please answer c, a, r or i:".into();
        }
    }
}

impl<I: TaskInvoker> TaskInvoker for Interactive<I> {
    async fn invoke(&self, resource: &str, mut input: Value) -> Result<Value, TaskError> {
        let step = resource_name(resource).to_string();
        let Some(build) = input
            .pointer("/build/name")
            .and_then(Value::as_str)
            .map(String::from)
        else {
            // Prepare and Finalize: about the whole run.
            return self.inner.invoke(resource, input).await;
        };
        let after_failure = step == CLEANUP.name || step == ERROR_CLEANUP_PROVISION.name;
        if after_failure && self.aborted.lock().unwrap().contains(&build) {
            input["on_error"] = Value::String("abort".into());
        }
        if self.debug {
            self.pause(&build, &step).await?;
        }
        loop {
            let result = self.inner.invoke(resource, input.clone()).await;
            let error = match result {
                Err(e) if self.ask && !after_failure && !is_retried(&e.error) => e,
                other => return other,
            };
            match self.on_failure(&build, &step, &error).await {
                OnFailure::Cleanup => return Err(error),
                OnFailure::Abort => {
                    self.aborted.lock().unwrap().insert(build);
                    return Err(error);
                }
                OnFailure::Retry => continue,
                // The step's output is its input: the build goes on as if it had done nothing.
                OnFailure::Ignore => return Ok(input),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Answers from a list; records every question.
    struct Scripted {
        answers: Mutex<Vec<&'static str>>,
        asked: Mutex<Vec<String>>,
    }

    impl Console for Scripted {
        fn ask(&self, question: &str) -> Option<String> {
            self.asked.lock().unwrap().push(question.to_string());
            let mut answers = self.answers.lock().unwrap();
            (!answers.is_empty()).then(|| answers.remove(0).to_string())
        }
    }

    fn scripted(answers: &[&'static str]) -> Arc<Scripted> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.to_vec()),
            asked: Mutex::new(Vec::new()),
        })
    }

    /// Fails `fail` the first `failures` times; records every call with its on_error.
    #[derive(Default, Clone)]
    struct Steps {
        fail: &'static str,
        failures: Arc<Mutex<u32>>,
        calls: Arc<Mutex<Vec<(String, Value)>>>,
    }

    impl TaskInvoker for Steps {
        async fn invoke(&self, resource: &str, input: Value) -> Result<Value, TaskError> {
            let step = resource_name(resource).to_string();
            self.calls
                .lock()
                .unwrap()
                .push((step.clone(), input["on_error"].clone()));
            let mut failures = self.failures.lock().unwrap();
            if step == self.fail && *failures > 0 {
                *failures -= 1;
                return Err(TaskError::new("BuildFailed", "it broke"));
            }
            Ok(input)
        }
    }

    fn input() -> Value {
        json!({"build": {"name": "web"}, "on_error": "cleanup"})
    }

    fn steps(fail: &'static str, failures: u32) -> Steps {
        Steps {
            fail,
            failures: Arc::new(Mutex::new(failures)),
            ..Steps::default()
        }
    }

    #[tokio::test]
    async fn debug_pauses_once_per_step_and_stops_when_asked() {
        let console = scripted(&["", "stop"]);
        let inner = steps("", 0);
        let i = Interactive::new(inner.clone(), console.clone(), true, false);
        i.invoke("${KeyPairFunctionArn}", input()).await.unwrap();
        // A polled step (invoked again) is not paused before a second time.
        i.invoke("${KeyPairFunctionArn}", input()).await.unwrap();
        let err = i
            .invoke("${RunSourceInstanceFunctionArn}", input())
            .await
            .unwrap_err();
        assert!(
            err.cause.contains("stopped before RunSourceInstance"),
            "{err:?}"
        );
        // After a stop nothing pauses: Cleanup runs.
        i.invoke("${CleanupFunctionArn}", input()).await.unwrap();
        let asked = console.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked[0].contains("web: pausing before step KeyPair"));
        let called: Vec<String> = inner
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect();
        assert_eq!(called, ["KeyPair", "KeyPair", "Cleanup"]);
        // Prepare has no build: never paused.
        i.invoke("${PrepareFunctionArn}", json!({})).await.unwrap();
        assert_eq!(console.asked.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn ask_retries_then_aborts_and_cleanup_keeps_everything() {
        let console = scripted(&["what?", "r", "a"]);
        let inner = steps("CreateImage", 2);
        let i = Interactive::new(inner.clone(), console.clone(), false, true);
        let err = i
            .invoke("${CreateImageFunctionArn}", input())
            .await
            .unwrap_err();
        assert_eq!(err.cause, "it broke");
        i.invoke("${CleanupFunctionArn}", input()).await.unwrap();
        let calls = inner.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "retried once: {calls:?}");
        assert_eq!(calls[2], ("Cleanup".to_string(), json!("abort")));
        let asked = console.asked.lock().unwrap().clone();
        assert!(
            asked[0].contains("step CreateImage failed: it broke"),
            "{asked:?}"
        );
        assert_eq!(asked[1], "Please answer c, a, r or i:");
    }

    #[tokio::test]
    async fn ask_cleanup_ignore_and_polls() {
        // Cleanup (or no more input) fails the step; Cleanup then cleans up.
        let inner = steps("CreateImage", 5);
        let i = Interactive::new(inner.clone(), scripted(&["c"]), false, true);
        assert!(i
            .invoke("${CreateImageFunctionArn}", input())
            .await
            .is_err());
        i.invoke("${CleanupFunctionArn}", input()).await.unwrap();
        assert_eq!(inner.calls.lock().unwrap()[1].1, json!("cleanup"));
        // Ignore: the step's output is its input.
        let i = Interactive::new(steps("CreateImage", 5), scripted(&["i"]), false, true);
        assert_eq!(
            i.invoke("${CreateImageFunctionArn}", input())
                .await
                .unwrap(),
            input()
        );
        // A NotReady poll is the state machine's business: no question.
        struct Poll;
        impl TaskInvoker for Poll {
            async fn invoke(&self, _: &str, _: Value) -> Result<Value, TaskError> {
                Err(TaskError::new("NotReady", "pending"))
            }
        }
        let console = scripted(&[]);
        let i = Interactive::new(Poll, console.clone(), false, true);
        assert!(i
            .invoke("${WaitImageAvailableFunctionArn}", input())
            .await
            .is_err());
        assert!(console.asked.lock().unwrap().is_empty());
    }
}
