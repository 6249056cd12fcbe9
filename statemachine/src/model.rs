//! The Amazon States Language model (JSONPath query language only).
//!
//! Field order in the structs is the key order of the rendered JSON, chosen to read like
//! the AWS documentation: `Type` first, input processing, the work, output processing,
//! error handling, then the transition. `States` keeps the order the states were declared
//! in (a plain JSON object would sort them), so the rendered file reads top to bottom.

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Error names Step Functions itself raises.
pub mod errors {
    pub const ALL: &str = "States.ALL";
    pub const TASK_FAILED: &str = "States.TaskFailed";
    pub const TIMEOUT: &str = "States.Timeout";
    pub const RUNTIME: &str = "States.Runtime";
    pub const RESULT_PATH_MATCH_FAILURE: &str = "States.ResultPathMatchFailure";
    pub const PARAMETER_PATH_FAILURE: &str = "States.ParameterPathFailure";
    pub const INTRINSIC_FAILURE: &str = "States.IntrinsicFailure";
    pub const NO_CHOICE_MATCHED: &str = "States.NoChoiceMatched";
    pub const BRANCH_FAILED: &str = "States.BranchFailed";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMachine {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(rename = "StartAt")]
    pub start_at: String,
    #[serde(
        rename = "TimeoutSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<u64>,
    #[serde(rename = "States")]
    pub states: States,
}

impl StateMachine {
    /// Parses a definition and checks that every transition names an existing state.
    pub fn from_json(text: &str) -> Result<StateMachine, String> {
        let machine: StateMachine =
            serde_json::from_str(text).map_err(|e| format!("invalid ASL: {e}"))?;
        machine.check()?;
        Ok(machine)
    }

    /// Pretty JSON, two-space indent, stable key order, trailing newline.
    pub fn to_json_pretty(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(self).expect("a state machine always serializes");
        text.push('\n');
        text
    }

    /// Transitions point at states of the same scope; every scope's StartAt exists;
    /// every non-terminal state has exactly one of Next/End.
    pub fn check(&self) -> Result<(), String> {
        check_scope("", &self.start_at, &self.states)
    }
}

fn check_scope(scope: &str, start_at: &str, states: &States) -> Result<(), String> {
    let exists = |name: &str, what: &str, from: &str| {
        if states.get(name).is_some() {
            Ok(())
        } else {
            Err(format!(
                "{scope}{from}: {what} names state {name:?}, which does not exist in this scope"
            ))
        }
    };
    exists(start_at, "StartAt", "StartAt")?;
    for (name, state) in states.iter() {
        let transition = state.transition();
        match state {
            State::Choice(c) => {
                for rule in &c.choices {
                    let next = rule.next.as_deref().ok_or_else(|| {
                        format!("{scope}{name}: a top-level choice rule has no Next")
                    })?;
                    exists(next, "Next", name)?;
                }
                if let Some(d) = &c.default {
                    exists(d, "Default", name)?;
                }
            }
            State::Succeed(_) | State::Fail(_) => {}
            _ => match transition {
                Some(Transition::Next(n)) => exists(n, "Next", name)?,
                Some(Transition::End) => {}
                None => return Err(format!("{scope}{name}: needs either Next or End")),
            },
        }
        for catcher in state.catchers() {
            exists(&catcher.next, "Catch Next", name)?;
        }
        match state {
            State::Map(m) => {
                let p = m.processor().ok_or_else(|| {
                    format!("{scope}{name}: Map needs ItemProcessor (or Iterator)")
                })?;
                check_scope(&format!("{scope}{name}/"), &p.start_at, &p.states)?;
            }
            State::Parallel(p) => {
                for (i, b) in p.branches.iter().enumerate() {
                    check_scope(&format!("{scope}{name}[{i}]/"), &b.start_at, &b.states)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The states of one scope, in declaration order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct States(pub Vec<(String, State)>);

impl States {
    pub fn new() -> States {
        States(Vec::new())
    }
    pub fn get(&self, name: &str) -> Option<&State> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
    /// Adds a state; panics on a duplicate name because a definition with two states of
    /// the same name is a bug in the code that declares it.
    pub fn add(&mut self, name: impl Into<String>, state: impl Into<State>) -> &mut States {
        let name = name.into();
        assert!(self.get(&name).is_none(), "duplicate state name {name:?}");
        self.0.push((name, state.into()));
        self
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &State)> {
        self.0.iter().map(|(n, s)| (n.as_str(), s))
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for States {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, state) in &self.0 {
            map.serialize_entry(name, state)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for States {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<States, D::Error> {
        struct StatesVisitor;
        impl<'de> Visitor<'de> for StatesVisitor {
            type Value = States;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of states")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<States, A::Error> {
                let mut states = States::new();
                while let Some((name, state)) = access.next_entry::<String, State>()? {
                    if states.get(&name).is_some() {
                        return Err(de::Error::custom(format!("duplicate state name {name:?}")));
                    }
                    states.0.push((name, state));
                }
                Ok(states)
            }
        }
        deserializer.deserialize_map(StatesVisitor)
    }
}

/// A nested state machine: a Map's ItemProcessor/Iterator or a Parallel branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubMachine {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "ProcessorConfig",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub processor_config: Option<Value>,
    #[serde(rename = "StartAt")]
    pub start_at: String,
    #[serde(rename = "States")]
    pub states: States,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "Type")]
pub enum State {
    Task(Task),
    Pass(Pass),
    Choice(Choice),
    Wait(Wait),
    /// Boxed: a Map carries a whole sub-machine, several times the size of the others.
    Map(Box<MapState>),
    Parallel(Parallel),
    Succeed(Succeed),
    Fail(Fail),
}

/// Where a state goes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition<'a> {
    Next(&'a str),
    End,
}

fn transition_of<'a>(next: &'a Option<String>, end: &Option<bool>) -> Option<Transition<'a>> {
    match (next, end) {
        (Some(n), None | Some(false)) => Some(Transition::Next(n)),
        (None, Some(true)) => Some(Transition::End),
        _ => None,
    }
}

impl State {
    pub fn type_name(&self) -> &'static str {
        match self {
            State::Task(_) => "Task",
            State::Pass(_) => "Pass",
            State::Choice(_) => "Choice",
            State::Wait(_) => "Wait",
            State::Map(_) => "Map",
            State::Parallel(_) => "Parallel",
            State::Succeed(_) => "Succeed",
            State::Fail(_) => "Fail",
        }
    }

    /// Next/End of the states that have them (not Choice, Succeed, Fail).
    pub fn transition(&self) -> Option<Transition<'_>> {
        match self {
            State::Task(s) => transition_of(&s.next, &s.end),
            State::Pass(s) => transition_of(&s.next, &s.end),
            State::Wait(s) => transition_of(&s.next, &s.end),
            State::Map(s) => transition_of(&s.next, &s.end),
            State::Parallel(s) => transition_of(&s.next, &s.end),
            State::Choice(_) | State::Succeed(_) | State::Fail(_) => None,
        }
    }

    pub fn retriers(&self) -> &[Retrier] {
        match self {
            State::Task(s) => &s.retry,
            State::Map(s) => &s.retry,
            State::Parallel(s) => &s.retry,
            _ => &[],
        }
    }

    pub fn catchers(&self) -> &[Catcher] {
        match self {
            State::Task(s) => &s.catch,
            State::Map(s) => &s.catch,
            State::Parallel(s) => &s.catch,
            _ => &[],
        }
    }
}

/// `ResultPath`, `InputPath` and `OutputPath` may be absent (default `$`) or `null`
/// (discard / empty object), so they are `Option<Option<String>>`: outer `None` = absent.
mod nullable_path {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(Some(p)) => s.serialize_str(p),
            _ => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Ok(Some(Option::<String>::deserialize(d)?))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Task {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(rename = "Resource")]
    pub resource: String,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(
        rename = "Parameters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parameters: Option<Value>,
    #[serde(
        rename = "ResultSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_selector: Option<Value>,
    #[serde(
        rename = "ResultPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub result_path: Option<Option<String>>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
    #[serde(
        rename = "TimeoutSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<u64>,
    /// The timeout read from the state's input (a reference path to a positive integer).
    #[serde(
        rename = "TimeoutSecondsPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds_path: Option<String>,
    #[serde(
        rename = "HeartbeatSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_seconds: Option<u64>,
    #[serde(rename = "Retry", default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<Retrier>,
    #[serde(rename = "Catch", default, skip_serializing_if = "Vec::is_empty")]
    pub catch: Vec<Catcher>,
    #[serde(rename = "Next", default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(rename = "End", default, skip_serializing_if = "Option::is_none")]
    pub end: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Pass {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(
        rename = "Parameters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parameters: Option<Value>,
    #[serde(rename = "Result", default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(
        rename = "ResultPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub result_path: Option<Option<String>>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
    #[serde(rename = "Next", default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(rename = "End", default, skip_serializing_if = "Option::is_none")]
    pub end: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Choice {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(rename = "Choices")]
    pub choices: Vec<ChoiceRule>,
    #[serde(rename = "Default", default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Wait {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(rename = "Seconds", default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    #[serde(
        rename = "SecondsPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub seconds_path: Option<String>,
    #[serde(rename = "Timestamp", default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(
        rename = "TimestampPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timestamp_path: Option<String>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
    #[serde(rename = "Next", default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(rename = "End", default, skip_serializing_if = "Option::is_none")]
    pub end: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapState {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(rename = "ItemsPath", default, skip_serializing_if = "Option::is_none")]
    pub items_path: Option<String>,
    #[serde(
        rename = "ItemSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub item_selector: Option<Value>,
    /// The older name of ItemSelector.
    #[serde(
        rename = "Parameters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parameters: Option<Value>,
    #[serde(
        rename = "MaxConcurrency",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_concurrency: Option<u32>,
    #[serde(
        rename = "ItemProcessor",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub item_processor: Option<SubMachine>,
    /// The older name of ItemProcessor.
    #[serde(rename = "Iterator", default, skip_serializing_if = "Option::is_none")]
    pub iterator: Option<SubMachine>,
    #[serde(
        rename = "ResultSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_selector: Option<Value>,
    #[serde(
        rename = "ResultPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub result_path: Option<Option<String>>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
    #[serde(rename = "Retry", default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<Retrier>,
    #[serde(rename = "Catch", default, skip_serializing_if = "Vec::is_empty")]
    pub catch: Vec<Catcher>,
    #[serde(rename = "Next", default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(rename = "End", default, skip_serializing_if = "Option::is_none")]
    pub end: Option<bool>,
}

impl MapState {
    pub fn processor(&self) -> Option<&SubMachine> {
        self.item_processor.as_ref().or(self.iterator.as_ref())
    }
    pub fn selector(&self) -> Option<&Value> {
        self.item_selector.as_ref().or(self.parameters.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parallel {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(
        rename = "Parameters",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub parameters: Option<Value>,
    #[serde(rename = "Branches")]
    pub branches: Vec<SubMachine>,
    #[serde(
        rename = "ResultSelector",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_selector: Option<Value>,
    #[serde(
        rename = "ResultPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub result_path: Option<Option<String>>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
    #[serde(rename = "Retry", default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<Retrier>,
    #[serde(rename = "Catch", default, skip_serializing_if = "Vec::is_empty")]
    pub catch: Vec<Catcher>,
    #[serde(rename = "Next", default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    #[serde(rename = "End", default, skip_serializing_if = "Option::is_none")]
    pub end: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Succeed {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(
        rename = "InputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub input_path: Option<Option<String>>,
    #[serde(
        rename = "OutputPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub output_path: Option<Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Fail {
    #[serde(rename = "Comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(rename = "ErrorPath", default, skip_serializing_if = "Option::is_none")]
    pub error_path: Option<String>,
    #[serde(rename = "Cause", default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(rename = "CausePath", default, skip_serializing_if = "Option::is_none")]
    pub cause_path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JitterStrategy {
    Full,
    #[default]
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retrier {
    #[serde(rename = "ErrorEquals")]
    pub error_equals: Vec<String>,
    #[serde(
        rename = "IntervalSeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub interval_seconds: Option<u64>,
    #[serde(
        rename = "MaxAttempts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_attempts: Option<u32>,
    #[serde(
        rename = "BackoffRate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff_rate: Option<f64>,
    #[serde(
        rename = "MaxDelaySeconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_delay_seconds: Option<u64>,
    #[serde(
        rename = "JitterStrategy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter_strategy: Option<JitterStrategy>,
}

impl Retrier {
    /// ASL defaults: 1 s, 3 attempts, backoff 2.0, no cap, no jitter.
    pub fn interval(&self) -> f64 {
        self.interval_seconds.unwrap_or(1) as f64
    }
    pub fn attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(3)
    }
    pub fn backoff(&self) -> f64 {
        self.backoff_rate.unwrap_or(2.0)
    }
    pub fn jitter(&self) -> JitterStrategy {
        self.jitter_strategy.unwrap_or_default()
    }
    /// The delay before retry number `attempt` (0-based) without jitter, in seconds.
    pub fn delay_seconds(&self, attempt: u32) -> f64 {
        let d = self.interval() * self.backoff().powi(attempt as i32);
        match self.max_delay_seconds {
            Some(cap) => d.min(cap as f64),
            None => d,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catcher {
    #[serde(rename = "ErrorEquals")]
    pub error_equals: Vec<String>,
    #[serde(
        rename = "ResultPath",
        default,
        skip_serializing_if = "Option::is_none",
        with = "nullable_path"
    )]
    pub result_path: Option<Option<String>>,
    #[serde(rename = "Next")]
    pub next: String,
}

/// Every comparison operator of a Choice rule (each also has a `…Path` form, except the
/// `Is…` tests and `StringMatches`).
pub const COMPARISON_OPERATORS: &[&str] = &[
    "StringEquals",
    "StringLessThan",
    "StringGreaterThan",
    "StringLessThanEquals",
    "StringGreaterThanEquals",
    "StringMatches",
    "NumericEquals",
    "NumericLessThan",
    "NumericGreaterThan",
    "NumericLessThanEquals",
    "NumericGreaterThanEquals",
    "BooleanEquals",
    "TimestampEquals",
    "TimestampLessThan",
    "TimestampGreaterThan",
    "TimestampLessThanEquals",
    "TimestampGreaterThanEquals",
    "IsNull",
    "IsPresent",
    "IsNumeric",
    "IsString",
    "IsBoolean",
    "IsTimestamp",
];

fn known_operator(op: &str) -> bool {
    COMPARISON_OPERATORS.contains(&op)
        || op.strip_suffix("Path").is_some_and(|base| {
            COMPARISON_OPERATORS.contains(&base)
                && !base.starts_with("Is")
                && base != "StringMatches"
        })
}

/// A data-test expression: `Variable` compared with `operator` against `value` (a literal,
/// or a path when the operator ends in `Path`).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub variable: String,
    pub operator: String,
    pub value: Value,
}

/// One rule of a Choice state (or a nested rule inside And/Or/Not, which has no Next).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Compare(Comparison),
    And(Vec<ChoiceRule>),
    Or(Vec<ChoiceRule>),
    Not(Box<ChoiceRule>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceRule {
    pub condition: Condition,
    pub next: Option<String>,
}

impl ChoiceRule {
    pub fn compare(variable: &str, operator: &str, value: impl Into<Value>) -> ChoiceRule {
        assert!(
            known_operator(operator),
            "unknown Choice operator {operator:?}"
        );
        ChoiceRule {
            condition: Condition::Compare(Comparison {
                variable: variable.into(),
                operator: operator.into(),
                value: value.into(),
            }),
            next: None,
        }
    }
    pub fn and(rules: Vec<ChoiceRule>) -> ChoiceRule {
        ChoiceRule {
            condition: Condition::And(rules),
            next: None,
        }
    }
    pub fn or(rules: Vec<ChoiceRule>) -> ChoiceRule {
        ChoiceRule {
            condition: Condition::Or(rules),
            next: None,
        }
    }
    pub fn then(mut self, next: impl Into<String>) -> ChoiceRule {
        self.next = Some(next.into());
        self
    }
}

impl Serialize for ChoiceRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match &self.condition {
            Condition::Compare(c) => {
                map.serialize_entry("Variable", &c.variable)?;
                map.serialize_entry(&c.operator, &c.value)?;
            }
            Condition::And(rules) => map.serialize_entry("And", rules)?,
            Condition::Or(rules) => map.serialize_entry("Or", rules)?,
            Condition::Not(rule) => map.serialize_entry("Not", rule)?,
        }
        if let Some(next) = &self.next {
            map.serialize_entry("Next", next)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ChoiceRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ChoiceRule, D::Error> {
        let mut obj = Map::<String, Value>::deserialize(deserializer)?;
        let next = match obj.remove("Next") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(de::Error::custom(format!(
                    "Choice rule Next must be a string, got {other}"
                )))
            }
        };
        obj.remove("Comment");
        let rules = |v: Value| -> Result<Vec<ChoiceRule>, D::Error> {
            serde_json::from_value(v).map_err(de::Error::custom)
        };
        let condition = if let Some(v) = obj.remove("And") {
            Condition::And(rules(v)?)
        } else if let Some(v) = obj.remove("Or") {
            Condition::Or(rules(v)?)
        } else if let Some(v) = obj.remove("Not") {
            Condition::Not(Box::new(
                serde_json::from_value(v).map_err(de::Error::custom)?,
            ))
        } else {
            let variable = match obj.remove("Variable") {
                Some(Value::String(s)) => s,
                _ => {
                    return Err(de::Error::custom(
                        "a Choice rule needs Variable (a path) or And/Or/Not",
                    ))
                }
            };
            let mut ops = obj.into_iter();
            let (operator, value) = ops.next().ok_or_else(|| {
                de::Error::custom(format!(
                    "Choice rule on {variable} has no comparison operator"
                ))
            })?;
            if let Some((extra, _)) = ops.next() {
                return Err(de::Error::custom(format!(
                    "Choice rule on {variable} has more than one operator ({operator}, {extra})"
                )));
            }
            if !known_operator(&operator) {
                return Err(de::Error::custom(format!(
                    "Choice rule on {variable}: unknown operator {operator}"
                )));
            }
            return Ok(ChoiceRule {
                condition: Condition::Compare(Comparison {
                    variable,
                    operator,
                    value,
                }),
                next,
            });
        };
        if !obj.is_empty() {
            let keys: Vec<_> = obj.keys().cloned().collect();
            return Err(de::Error::custom(format!(
                "Choice rule has unexpected fields {keys:?}"
            )));
        }
        Ok(ChoiceRule { condition, next })
    }
}

macro_rules! into_state {
    ($($t:ident => $v:ident),*) => {$(
        impl From<$t> for State {
            fn from(s: $t) -> State { State::$v(s) }
        }
    )*};
}
into_state!(Task => Task, Pass => Pass, Choice => Choice, Wait => Wait, Parallel => Parallel, Succeed => Succeed, Fail => Fail);

impl From<MapState> for State {
    fn from(s: MapState) -> State {
        State::Map(Box::new(s))
    }
}

/// `!rule`: the Choice rule that matches when `rule` does not.
impl std::ops::Not for ChoiceRule {
    type Output = ChoiceRule;
    fn not(self) -> ChoiceRule {
        ChoiceRule {
            condition: Condition::Not(Box::new(self)),
            next: None,
        }
    }
}
