//! ScheduledStart: the schedule's target (infra.rs, `Schedule`), which starts a build as
//! `amiflow start` does, sensitive variables included.
//!
//! A scheduled build's sensitive values are the operator's: SecureString parameters under
//! [`SCHEDULE_SECRETS_PATH`], named per variable by the stack's `ScheduleSecretVars`
//! (`{"db_password": "/amiflow-schedule/db_password"}`, in the function's environment, never
//! in the schedule's input or the stack's parameters' values). For each run this function
//! copies them into the execution's own path (`resources/sensitive_var.rs`, where Prepare
//! and the revealing steps read them, and Finalize or the janitor removes them), then calls
//! StartExecution with the schedule's input and the parameter names only. If the start
//! fails, the copies go again.
//!
//! Only EventBridge Scheduler's role may invoke it, and it reads nothing but the stack's
//! own secret path: a starter who may call StartExecution cannot reach the operator's
//! values, and a template names a variable, never a parameter.
//!
//! Input: the schedule's input, `{"template_s3", "vars", "pipeline_s3"}`. Output:
//! `{"execution_arn", "sensitive_vars": [names]}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::prelude::*;
use crate::resources::sensitive_var;

pub const SPEC: StepSpec = StepSpec {
    name: "ScheduledStart",
    iam_actions: &[
        "ssm:GetParameter",
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
        "ssm:DeleteParameter",
        START_EXECUTION,
    ],
    reach: &[
        ("ssm:GetParameter", Reach::ScheduleSecrets),
        ("ssm:PutParameter", Reach::SensitiveVars),
        ("ssm:AddTagsToResource", Reach::SensitiveVars),
        ("ssm:DeleteParameter", Reach::SensitiveVars),
        (START_EXECUTION, Reach::StackStateMachine),
    ],
    calls: None,
    wait: None,
    timeout_seconds: 60,
    handler: handler!(run),
};

const START_EXECUTION: &str = "states:StartExecution";

/// Where the operator keeps the values of scheduled builds' sensitive variables.
pub const SCHEDULE_SECRETS_PATH: &str = "/amiflow-schedule/";
/// The stack's `ScheduleSecretVars`: variable name → parameter under [`SCHEDULE_SECRETS_PATH`].
pub const SECRET_VARS_ENV: &str = "AMIFLOW_SCHEDULE_SECRET_VARS";
/// The stack's state machine.
pub const STATE_MACHINE_ENV: &str = "AMIFLOW_STATE_MACHINE_ARN";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub execution_arn: String,
    /// The sensitive variables it passed (names only).
    pub sensitive_vars: Vec<String>,
}

/// The operator's variable → parameter map, every parameter under the stack's secret path.
pub fn secret_vars(text: &str) -> Result<BTreeMap<String, String>, StepError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(BTreeMap::new());
    }
    let map: BTreeMap<String, String> = serde_json::from_str(text).map_err(|e| {
        StepError::BuildFailed(format!(
            "ScheduleSecretVars is not a JSON object of variable name → parameter name ({e}); e.g. {{\"db_password\": \"{SCHEDULE_SECRETS_PATH}db_password\"}}"
        ))
    })?;
    for (name, parameter) in &map {
        if !parameter.starts_with(SCHEDULE_SECRETS_PATH) || parameter.contains("..") {
            return Err(StepError::BuildFailed(format!(
                "ScheduleSecretVars.{name}: {parameter:?} is not under {SCHEDULE_SECRETS_PATH}, the only path the schedule may read; store the value as a SecureString at {SCHEDULE_SECRETS_PATH}{name} and name that"
            )));
        }
    }
    Ok(map)
}

/// A name for a scheduled run: `scheduled-<UTC time>-<random>`.
pub fn execution_name() -> String {
    format!(
        "scheduled-{}-{}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub async fn run(ctx: &Ctx, mut input: Value) -> Result<Started, StepError> {
    let state_machine = std::env::var(STATE_MACHINE_ENV).map_err(|_| {
        StepError::BuildFailed(format!(
            "{STATE_MACHINE_ENV} is not set: the stack sets it on this function"
        ))
    })?;
    let secrets = secret_vars(&std::env::var(SECRET_VARS_ENV).unwrap_or_default())?;
    let name = execution_name();
    let ssm = ctx.ssm(&ctx.own_region());
    let mut values = BTreeMap::new();
    for (var, parameter) in &secrets {
        let out = ssm
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| classify("GetParameter", parameter, e))?;
        let value = out
            .parameter()
            .and_then(|p| p.value())
            .ok_or_else(|| StepError::BuildFailed(format!("{parameter} has no value")))?;
        values.insert(var.clone(), value.to_string());
    }
    let execution = crate::state::build_id(&name);
    let stored = sensitive_var::store(&ssm, &ctx.parameter_owner(&execution), &values).await?;
    if !stored.is_empty() {
        input["sensitive_vars"] = serde_json::json!(stored);
    }
    let started = aws_sdk_sfn::Client::new(&ctx.sdk)
        .start_execution()
        .state_machine_arn(&state_machine)
        .name(&name)
        .input(input.to_string())
        .send()
        .await;
    match started {
        Ok(out) => Ok(Started {
            execution_arn: out.execution_arn().to_string(),
            sensitive_vars: stored.keys().cloned().collect(),
        }),
        Err(e) => {
            sensitive_var::remove(&ssm, stored.values()).await;
            Err(classify("StartExecution", &state_machine, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_vars_are_read_only_from_the_schedule_path() {
        assert!(secret_vars("").unwrap().is_empty());
        assert!(secret_vars("{}").unwrap().is_empty());
        let ok = secret_vars(r#"{"pw": "/amiflow-schedule/pw"}"#).unwrap();
        assert_eq!(ok["pw"], "/amiflow-schedule/pw");
        for bad in [
            r#"{"pw": "/amiflow/other-run/vars/pw"}"#,
            r#"{"pw": "/amiflow-schedule/../amiflow/x/ssh-key"}"#,
            r#"{"pw": "prod/db"}"#,
        ] {
            let e = secret_vars(bad).unwrap_err().message().to_string();
            assert!(
                e.contains("ScheduleSecretVars.pw") && e.contains("/amiflow-schedule/"),
                "{e}"
            );
        }
        assert!(secret_vars("[1]")
            .unwrap_err()
            .message()
            .contains("JSON object"));
        let name = execution_name();
        assert!(name.starts_with("scheduled-") && crate::state::build_id(&name) == name);
    }
}
