//! Progress of a run, from the engine's events: one line per finished step, a spinner per
//! build on the step in progress (with its polls while it waits), plain lines when the
//! output is not a terminal (CI logs) or a question may be asked (`-debug`,
//! `-on-error=ask`), Packer's machine-readable lines with `-machine-readable`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use amiflow::error::COMMAND_SENT;
use amiflow::flows::step_of;
use amiflow::state::CaughtError;
use amiflow_statemachine::{Event, Scope};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Spinners on a terminal, else plain lines.
    Human,
    /// Plain lines on stderr.
    Plain,
    /// `-machine-readable`: `ui,say` lines on stdout.
    Machine,
}

pub struct Progress {
    output: Output,
    /// Build names by Map iteration index, in the order Prepare returned them.
    builds: Vec<String>,
    bars: Option<(MultiProgress, HashMap<usize, ProgressBar>)>,
    /// Per build: the step in progress, when it started, polls so far, last wait reason.
    current: HashMap<usize, Current>,
    pub retries: u32,
}

struct Current {
    step: String,
    started: Instant,
    polls: u32,
    /// The step sent a command and awaits it (`CommandSent`): it runs again, the same step.
    awaiting: bool,
    waiting_for: String,
}

impl Progress {
    pub fn new(builds: Vec<String>, output: Output) -> Progress {
        let bars = (output == Output::Human && std::io::stderr().is_terminal())
            .then(|| (MultiProgress::new(), HashMap::new()));
        Progress {
            output,
            builds,
            bars,
            current: HashMap::new(),
            retries: 0,
        }
    }

    fn build_of(&self, scope: &[Scope]) -> Option<usize> {
        scope.first().map(|s| s.index)
    }

    fn name(&self, index: usize) -> &str {
        self.builds
            .get(index)
            .map(String::as_str)
            .unwrap_or("build")
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None if self.output == Output::Machine => {
                crate::machine::print("", "ui", &["say", text.trim_start()])
            }
            None => eprintln!("{text}"),
        }
    }

    fn bar(&mut self, index: usize) -> Option<ProgressBar> {
        let (multi, bars) = self.bars.as_mut()?;
        Some(
            bars.entry(index)
                .or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                            .expect("valid template"),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                })
                .clone(),
        )
    }

    pub fn on_event(&mut self, event: &Event) {
        match event {
            Event::StateEntered { name, scope, .. } => {
                let Some(index) = self.build_of(scope) else {
                    if name == "Prepare" || name == "Finalize" {
                        self.line(format!("==> {name}"));
                    }
                    return;
                };
                let step = step_of(name).to_string();
                // An await state does nothing locally (steps/await_event.rs).
                if step == "BuilderType" || amiflow::flows::is_await_state(name) {
                    return;
                }
                // Provision again after awaiting the command it sent: the same step goes on.
                if let Some(current) = self.current.get_mut(&index).filter(|c| c.step == step) {
                    current.awaiting = false;
                    return;
                }
                let build = self.name(index).to_string();
                if let Some(bar) = self.bar(index) {
                    bar.set_prefix(build);
                    bar.set_message(step.clone());
                    bar.reset_elapsed();
                }
                self.current.insert(
                    index,
                    Current {
                        step,
                        started: Instant::now(),
                        polls: 0,
                        awaiting: false,
                        waiting_for: String::new(),
                    },
                );
            }
            Event::StateExited { name, scope, .. } => {
                let Some(index) = self.build_of(scope) else {
                    return;
                };
                let Some(current) = self.current.remove(&index) else {
                    return;
                };
                if current.step != step_of(name) {
                    return;
                }
                if current.awaiting {
                    self.current.insert(index, current);
                    return;
                }
                let polls = match current.polls {
                    0 => String::new(),
                    n => format!(", {n} poll{}", if n == 1 { "" } else { "s" }),
                };
                self.line(format!(
                    "    {}: {} ({:.1}s{polls})",
                    self.name(index),
                    current.step,
                    current.started.elapsed().as_secs_f64()
                ));
            }
            Event::TaskFailed {
                scope,
                error,
                cause,
                ..
            } => {
                let waiting = error == "NotReady" || error == COMMAND_SENT;
                if let (Some(index), true) = (self.build_of(scope), waiting) {
                    let message = CaughtError {
                        error: error.clone(),
                        cause: cause.clone(),
                    }
                    .message();
                    if let Some(current) = self.current.get_mut(&index) {
                        current.waiting_for = message;
                    }
                }
            }
            Event::RetryScheduled {
                scope,
                error,
                attempt,
                delay,
                ..
            } => {
                self.retries += 1;
                let Some(index) = self.build_of(scope) else {
                    return;
                };
                let Some(current) = self.current.get_mut(&index) else {
                    return;
                };
                current.polls = *attempt;
                let text = if error == "NotReady" {
                    format!(
                        "{}: {} (poll {attempt}, next in {:.0}s)",
                        current.step,
                        current.waiting_for,
                        delay.as_secs_f64()
                    )
                } else {
                    format!(
                        "{}: {error}, retry {attempt} in {:.1}s",
                        current.step,
                        delay.as_secs_f64()
                    )
                };
                let plain = self.bars.is_none();
                if let Some(bar) = self.bar(index) {
                    bar.set_message(text);
                } else if plain && (error != "NotReady" || attempt.is_power_of_two()) {
                    // Without a terminal, a line per doubling of polls keeps long waits visible
                    // without flooding the log.
                    let build = self.name(index).to_string();
                    self.line(format!("    {build}: {text}"));
                }
            }
            Event::Caught {
                name, scope, error, ..
            } => {
                let Some(index) = self.build_of(scope) else {
                    return;
                };
                let step = step_of(name);
                if error == COMMAND_SENT {
                    // Not a failure: the step sent a command, and runs again when it ends.
                    let Some(current) = self.current.get_mut(&index) else {
                        return;
                    };
                    current.awaiting = true;
                    let text = format!("{step}: {}", current.waiting_for);
                    if let Some(bar) = self.bar(index) {
                        bar.set_message(text);
                    } else {
                        let build = self.name(index).to_string();
                        self.line(format!("    {build}: {text}"));
                    }
                    return;
                }
                self.current.remove(&index);
                self.line(format!(
                    "    {}: {step} failed ({error}); cleaning up",
                    self.name(index)
                ));
            }
            Event::ExecutionSucceeded { .. } | Event::ExecutionFailed { .. } => self.finish(),
            _ => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some((_, bars)) = &mut self.bars {
            for bar in bars.values() {
                bar.finish_and_clear();
            }
            bars.clear();
        }
    }
}
