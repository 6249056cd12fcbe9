//! Prepare: the execution's input → one build state per build, or every problem at once.
//!
//! Contract with the state machine (rendered by `flows.rs::definition`):
//!
//! ```json
//! "Prepare": {
//!   "Type": "Task", "Resource": "${PrepareFunctionArn}",
//!   "Parameters": {"input.$": "$", "execution.$": "$$.Execution.Name"},
//!   "Catch": [{"ErrorEquals": ["InvalidTemplate"], "Next": "TemplateInvalid"}],
//!   "Next": "Builds" (the Map, "ItemsPath": "$.builds")
//! }
//! ```
//!
//! Its input is therefore `{"input": <execution input>, "execution": "<execution name>"}`.
//! Local callers may add `"start_time": "<RFC 3339>"` (what `{{timestamp}}` renders);
//! without it, the time Prepare runs is used,
//! and the execution input is
//!
//! ```json
//! {"template": {...} | "<template JSON text>",   // or:
//!  "template_s3": "s3://bucket/key.json",
//!  "vars": {"name": "value"},                     // Packer's -var (strings; numbers/booleans accepted)
//!  "sensitive_vars": {"name": "/amiflow/<execution>/vars/name"}, // sensitive variables, by
//!                                                 // the SecureString `amiflow start` stored
//!                                                 // (resources/sensitive_var.rs)
//!  "only": ["builder name"], "except": ["builder name"],
//!  "on_error": "cleanup" | "abort" | "run-cleanup-provisioner" | "redrive", // Packer's -on-error, default cleanup
//!  "force": true,                                 // Packer's -force (force_deregister)
//!  "pipeline": {...},                             // a pipeline file (`amiflow_template::pipeline`),
//!  "pipeline_s3": "s3://bucket/key.json",         // or where to read it ("" = none: the schedule's default)
//!  "retain_dry_run": true}                        // the pipeline's Retain only reports
//! ```
//!
//! Output: `{"builds": [BuildState, ...], "pipeline": PipelineRun}` — one build state per
//! build left after only/except, each with `execution` set (the `amiflow:build` tag value)
//! and an empty ledger; `pipeline` only when the input has one ([`crate::pipeline::begin`]).
//! Errors: `InvalidTemplate` (every problem listed, one per line; nothing has been
//! created), `Transient` when the template could not be fetched from S3 for a passing reason.

use std::collections::BTreeMap;

use amiflow_template::pipeline::Pipeline;
use amiflow_template::{prepare as prepare_template, PrepareOptions, Problem, Problems};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::PipelineRun;
use crate::resources::Reach;
use crate::state::OnError;
use crate::{BuildState, Ctx, StepError};

use super::StepSpec;

pub const STEP: StepSpec = StepSpec {
    name: "Prepare",
    // ssm:GetParameter: the values of sensitive variables, to validate with them.
    iam_actions: &["s3:GetObject", "ssm:GetParameter"],
    // The template comes from the artifacts bucket or the schedule's object, nowhere else.
    reach: &[("s3:GetObject", Reach::TemplateObjects)],
    calls: Some(local_calls),
    wait: None,
    timeout_seconds: 60,
    handler: crate::handler!(prepare),
};

/// What a local build calls here: nothing. `amiflow build` hands Prepare the template's
/// text and the pipeline file (no `template_s3` / `pipeline_s3`) and holds the sensitive
/// variables' values itself (no parameter references).
fn local_calls(_: &amiflow_template::PreparedBuild) -> Vec<&'static str> {
    Vec::new()
}

/// Step Functions refuses a state larger than this (256 KiB).
const MAX_STATE_BYTES: usize = 256 * 1024;

/// Template keys that carry static AWS credentials.
const STATIC_CREDENTIAL_KEYS: [&str; 3] = ["access_key", "secret_key", "token"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareInput {
    pub input: ExecutionInput,
    pub execution: String,
    /// `$$.StateMachine.Name`: tagged on everything the builds create.
    #[serde(default)]
    pub state_machine: Option<String>,
    /// `$$.Execution.StartTime`: every `{{timestamp}}`/`{{isotime}}` of the build, and a
    /// retried Prepare, agree on it. Now when absent.
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionInput {
    /// The template itself: a JSON object, or its text.
    #[serde(default)]
    pub template: Option<Value>,
    /// Where to read the template from instead: `s3://bucket/key`.
    #[serde(default)]
    pub template_s3: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    /// Sensitive variables: name → the SecureString parameter holding the value, under the
    /// execution's own path (`resources/sensitive_var.rs`); the value never enters the input.
    #[serde(default)]
    pub sensitive_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub only: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// The pipeline file's JSON, checked here with the template.
    #[serde(default)]
    pub pipeline: Option<Value>,
    /// Where to read the pipeline file instead: `s3://bucket/key`; empty means none (the
    /// stack's schedule always passes its `SchedulePipelineS3`).
    #[serde(default)]
    pub pipeline_s3: Option<String>,
    /// With a pipeline: Retain reports what it would retire and touches nothing.
    #[serde(default)]
    pub retain_dry_run: bool,
    /// Packer's `-force`: replace an existing AMI of the same name (`force_deregister`).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrepareOutput {
    pub builds: Vec<BuildState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineRun>,
}

pub async fn prepare(ctx: &Ctx, mut input: PrepareInput) -> Result<PrepareOutput, StepError> {
    let text = template_text(ctx, &input.input).await?;
    if let Some(url) = input.input.pipeline_s3.take().filter(|u| !u.is_empty()) {
        if input.input.pipeline.is_some() {
            return Err(StepError::InvalidTemplate(
                Problems(vec![Problem::key(
                    "pipeline_s3",
                    "give either `pipeline` or `pipeline_s3`, not both",
                )])
                .to_string(),
            ));
        }
        let text = fetch_s3(ctx, &url, "pipeline_s3").await?;
        let value = serde_json::from_str(&text).map_err(|e| {
            StepError::InvalidTemplate(
                Problems(vec![Problem::key(
                    "pipeline_s3",
                    format!("{url} is not JSON: {e}"),
                )])
                .to_string(),
            )
        })?;
        input.input.pipeline = Some(value);
    }
    let references = std::mem::take(&mut input.input.sensitive_vars);
    if !references.is_empty() {
        let values = sensitive_values(ctx, &text, &input.execution, &references).await?;
        input
            .input
            .vars
            .extend(values.into_iter().map(|(k, v)| (k, Value::String(v))));
    }
    let mut options = PrepareOptions::new(input.start_time.unwrap_or_else(Utc::now));
    options.env = ctx.env.clone();
    options.template_dir = ctx.base_dir.clone();
    let mut out = prepare_text_with(&text, input, running_in_lambda(), options)?;
    for b in &mut out.builds {
        b.sensitive_vars = references.clone();
    }
    if let Some(run) = out.pipeline.as_mut().filter(|r| r.test_build.is_some()) {
        run.sensitive_vars = references.clone();
    }
    let default_region = ctx.sdk.region().map(|r| r.to_string());
    for b in &mut out.builds {
        resolve_region(b, default_region.as_deref())?;
    }
    Ok(out)
}

/// The values of the sensitive variables the input names by parameter, for validating the
/// template with them (the prepared builds hold only their placeholders). Each must be a
/// variable the template declares sensitive, stored under the execution's own path.
async fn sensitive_values(
    ctx: &Ctx,
    text: &str,
    execution: &str,
    references: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, StepError> {
    let declared: Vec<String> = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|t| serde_json::from_value(t["sensitive-variables"].clone()).ok())
        .unwrap_or_default();
    let undeclared: Vec<Problem> = references
        .keys()
        .filter(|name| !declared.contains(name))
        .map(|name| {
            Problem::key(
                format!("sensitive_vars.{name}"),
                "the template does not declare this variable sensitive (\"sensitive-variables\" in JSON, \
                 `sensitive = true` in HCL2): its value would be written in clear into the build states",
            )
        })
        .collect();
    if !undeclared.is_empty() {
        return Err(invalid(Problems(undeclared)));
    }
    let execution = crate::state::build_id(execution);
    crate::resources::sensitive_var::read(ctx, &execution, references)
        .await
        .map_err(|e| match e {
            // Nothing exists yet: a missing value is the input's problem.
            StepError::BuildFailed(m) => StepError::InvalidTemplate(m),
            other => other,
        })
}

/// A template without `region` builds where the credential chain's region points
/// (AWS_REGION, AWS_DEFAULT_REGION, the profile; inside Lambda its own region). Every step
/// reads the region from the config, so it is settled here, once, before anything exists.
fn resolve_region(b: &mut BuildState, default_region: Option<&str>) -> Result<(), StepError> {
    if b.build.config.region().is_some() {
        return Ok(());
    }
    match default_region.filter(|r| !r.is_empty()) {
        Some(r) => {
            b.build.config.access_mut().region = Some(r.to_string());
            Ok(())
        }
        None => Err(StepError::InvalidTemplate(format!(
            "{}: region: not set and no default region is configured: set \"region\" in the \
             builder, or export AWS_REGION (or AWS_DEFAULT_REGION, or a profile's region)",
            b.build.name
        ))),
    }
}

/// Everything after the template text is known; no AWS call.
pub fn prepare_text(
    text: &str,
    input: PrepareInput,
    in_lambda: bool,
) -> Result<PrepareOutput, StepError> {
    let options = PrepareOptions::new(input.start_time.unwrap_or_else(Utc::now));
    prepare_text_with(text, input, in_lambda, options)
}

/// As [`prepare_text`], with the environment and template directory a local run offers.
fn prepare_text_with(
    text: &str,
    input: PrepareInput,
    in_lambda: bool,
    mut options: PrepareOptions,
) -> Result<PrepareOutput, StepError> {
    let PrepareInput {
        input,
        execution,
        state_machine,
        ..
    } = input;
    let mut problems = Vec::new();
    if execution.trim().is_empty() {
        problems.push(Problem::key(
            "execution",
            "the execution name is empty; the state machine passes $$.Execution.Name",
        ));
    }
    let vars = vars_as_strings(&input.vars, &mut problems);
    // The pipeline is checked with the template: its problems and the template's come together.
    let pipeline = match input.pipeline.as_ref().map(Pipeline::from_value) {
        Some(Err(Problems(found))) => {
            problems.extend(found.into_iter().map(|p| p.in_builder("pipeline")));
            None
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    // Unusable variables would make the template's own problems misleading: stop here.
    if problems
        .iter()
        .any(|p| p.builder.as_deref() != Some("pipeline"))
    {
        return Err(invalid(Problems(problems)));
    }
    options.vars = vars.into_iter().collect();
    options.only = input.only.clone();
    options.except = input.except.clone();
    options.force = input.force;
    let prepared = prepare_template(text, &options);
    let prepared = match prepared {
        Ok(p) if problems.is_empty() => p,
        Ok(_) => return Err(invalid(Problems(problems))),
        Err(Problems(found)) => {
            problems.extend(found);
            return Err(invalid(Problems(problems)));
        }
    };
    if prepared.builds.is_empty() {
        return Err(invalid(Problems(vec![Problem::new(format!(
            "no build is left to run after only={:?} except={:?}; check the builder names",
            input.only, input.except
        ))])));
    }
    if in_lambda {
        let refused: Vec<Problem> = prepared
            .builds
            .iter()
            .flat_map(|b| {
                static_credentials(b)
                    .into_iter()
                    .chain(local_post_processors(b))
            })
            .collect();
        if !refused.is_empty() {
            return Err(invalid(Problems(refused)));
        }
    }
    let build_id = crate::state::build_id(&execution);
    let pipeline = match pipeline {
        Some(p) => {
            // The same builds rendered at a fixed time: the fingerprint's template part must
            // not change with `{{timestamp}}` in names.
            let mut fixed = options.clone();
            fixed.build_time = chrono::DateTime::UNIX_EPOCH;
            let fixed_builds = prepare_template(text, &fixed)
                .map(|p| p.builds)
                .unwrap_or_default();
            let mut run = crate::pipeline::begin(
                p,
                &prepared.builds,
                &fixed_builds,
                options.template_dir.as_deref(),
            )
            .map_err(invalid)?;
            run.dry_run = input.retain_dry_run;
            Some(run)
        }
        None => None,
    };
    let builds: Vec<BuildState> = prepared
        .builds
        .into_iter()
        .map(|build| {
            let machine = state_machine.clone().unwrap_or_default();
            BuildState::new(build_id.clone(), machine, build, input.on_error)
        })
        .collect();
    let output = PrepareOutput { builds, pipeline };
    let size = serde_json::to_vec(&output).map(|v| v.len()).unwrap_or(0);
    if size > MAX_STATE_BYTES {
        return Err(invalid(Problems(vec![Problem::new(format!(
            "the prepared builds take {size} bytes, more than the {MAX_STATE_BYTES} bytes Step Functions allows in a state; \
             move large inline content (user_data, inline scripts) to files or S3"
        ))])));
    }
    Ok(output)
}

fn invalid(problems: Problems) -> StepError {
    StepError::InvalidTemplate(problems.to_string())
}

/// A `shell-local` post-processor runs on the machine running amiflow: a deployed build has
/// none (its output is the manifest), so it is refused rather than skipped.
fn local_post_processors(build: &amiflow_template::PreparedBuild) -> Vec<Problem> {
    build
        .post_processors
        .iter()
        .filter(|p| p["type"] == "shell-local")
        .map(|_| {
            Problem::key(
                "post-processors",
                format!(
                    "{}: a shell-local post-processor runs on the machine running amiflow, and a deployed build has none: \
                     run it with `amiflow build`, or after the execution on its output",
                    build.name
                ),
            )
        })
        .collect()
}

/// Inside Lambda the execution input is stored in Step Functions' history: a key written in
/// the template (or passed as a var) would be kept there in clear.
fn static_credentials(build: &amiflow_template::PreparedBuild) -> Vec<Problem> {
    // Read from the typed config: secrets are never serialized, so its JSON cannot tell.
    let access = build.config.access();
    let given = |v: &Option<String>| v.as_deref().is_some_and(|v| !v.is_empty());
    let present = [
        given(&access.access_key),
        given(&access.secret_key),
        given(&access.token),
    ];
    STATIC_CREDENTIAL_KEYS
        .iter()
        .zip(present)
        .filter(|(_, set)| *set)
        .map(|(k, _)| {
            Problem::key(
                *k,
                "static credentials are refused in a deployed build: the execution input and history would keep them \
                 in clear. Remove access_key/secret_key/token; the function's role is used, and `assume_role` gives \
                 access to another account",
            )
            .in_builder(build.name.clone())
        })
        .collect()
}

fn running_in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some()
}

/// Packer's variables are strings; numbers and booleans are written as Packer would read them from `-var`.
fn vars_as_strings(
    vars: &BTreeMap<String, Value>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, value) in vars {
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                problems.push(Problem::key(
                    format!("vars.{name}"),
                    "a variable's value must be a string (or a number or boolean); write lists and maps as JSON text",
                ));
                continue;
            }
        };
        out.insert(name.clone(), text);
    }
    out
}

async fn template_text(ctx: &Ctx, input: &ExecutionInput) -> Result<String, StepError> {
    let one = |m: String| StepError::InvalidTemplate(Problems(vec![Problem::new(m)]).to_string());
    match (&input.template, &input.template_s3) {
        (Some(_), Some(_)) => Err(one("give either `template` or `template_s3`, not both".into())),
        (None, None) => Err(one(
            "the execution input has no template: set `template` (the template as JSON) or `template_s3` (s3://bucket/key)"
                .into(),
        )),
        (Some(Value::String(text)), None) => Ok(text.clone()),
        (Some(object @ Value::Object(_)), None) => Ok(serde_json::to_string_pretty(object).expect("a JSON value serializes")),
        (Some(_), None) => Err(one("`template` must be a JSON object or a string holding the template's JSON text".into())),
        (None, Some(url)) => fetch_s3(ctx, url, "template_s3").await,
    }
}

/// The text of `url` (`s3://bucket/key`), given as the input's `key`.
pub(crate) async fn fetch_s3(ctx: &Ctx, url: &str, key: &str) -> Result<String, StepError> {
    let invalid =
        |m: String| StepError::InvalidTemplate(Problems(vec![Problem::key(key, m)]).to_string());
    let Some((bucket, key)) = crate::resources::s3::split_url(url) else {
        return Err(invalid(format!("{url:?} is not an s3://bucket/key URL")));
    };
    let mut conf = aws_sdk_s3::config::Builder::from(&ctx.sdk);
    // Local emulators (moto) serve buckets by path only.
    if std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some()
    {
        conf = conf.force_path_style(true);
    }
    let s3 = aws_sdk_s3::Client::from_conf(conf.build());
    let object = s3.get_object().bucket(bucket).key(key).send().await.map_err(|e| {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        match e.as_service_error().and_then(|s| s.code()).or_else(|| e.code()) {
            Some(code) => invalid(format!(
                "cannot read {url}: {code}: {}. Check the bucket and key; a deployed stack reads templates only from its artifacts bucket (output ArtifactsBucketName) and the schedule's ScheduleTemplateS3",
                e.message().unwrap_or("no message")
            )),
            None => StepError::Transient(format!("reading {url} failed: {}", aws_smithy_types::error::display::DisplayErrorContext(&e))),
        }
    })?;
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| StepError::Transient(format!("reading {url} was interrupted: {e}")))?
        .into_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid(format!("{url} is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> PrepareInput {
        serde_json::from_value(json!({"input": v, "execution": "exec-1"})).unwrap()
    }

    #[tokio::test]
    async fn missing_template_is_invalid_and_says_what_to_set() {
        let ctx = Ctx::from_env().await;
        let err = prepare(&ctx, input(json!({"vars": {}}))).await.unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        assert!(err.message().contains("template_s3"), "{err}");
        let err = prepare(&ctx, input(json!({"template": 3})))
            .await
            .unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
    }

    #[tokio::test]
    async fn sensitive_vars_must_be_declared_and_the_executions_own() {
        let ctx = Ctx::from_env().await;
        let template = json!({
            "variables": {"pw": "", "plain": ""},
            "sensitive-variables": ["pw"],
            "builders": [{"type": "amazon-ebs", "region": "us-east-1", "source_ami": "ami-1",
                          "instance_type": "t3.micro", "communicator": "none", "ami_name": "x"}]
        });
        // Not declared sensitive: its value would be interpolated in clear into the states.
        let err = prepare(
            &ctx,
            input(json!({"template": template,
                "sensitive_vars": {"plain": "/amiflow/exec-1/vars/plain"}})),
        )
        .await
        .unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        assert!(err.message().contains("sensitive_vars.plain"), "{err}");
        // Another build's temporary key is no variable of this execution: refused before
        // any call reads it.
        let err = prepare(
            &ctx,
            input(json!({"template": template,
                "sensitive_vars": {"pw": "/amiflow/other-build/web/ssh-key"}})),
        )
        .await
        .unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        assert!(err.message().contains("/amiflow/exec-1/vars/pw"), "{err}");
    }

    #[test]
    fn unknown_input_keys_are_rejected() {
        let r: Result<PrepareInput, _> =
            serde_json::from_value(json!({"input": {"templat": {}}, "execution": "e"}));
        assert!(r.unwrap_err().to_string().contains("templat"));
    }

    #[test]
    fn non_scalar_vars_are_listed_together() {
        let err = prepare_text(
            "{}",
            input(json!({"template": {}, "vars": {"a": [1], "b": {"x": 1}, "c": 3}})),
            false,
        )
        .unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        assert!(
            err.message().contains("vars.a") && err.message().contains("vars.b"),
            "{err}"
        );
        assert!(!err.message().contains("vars.c"), "{err}");
    }

    fn ebs_builder(name: &str) -> Value {
        json!({"type": "amazon-ebs", "name": name, "region": "us-east-1",
            "source_ami": "ami-0f8848d57eb4fe2d2", "instance_type": "t3.micro",
            "communicator": "none", "ami_name": format!("{name} {{{{timestamp}}}}")})
    }

    #[test]
    fn a_pipeline_is_checked_with_the_template_and_both_problems_come_together() {
        let template =
            json!({"builders": [{"type": "amazon-ebs", "name": "web", "region": "us-east-1"}]});
        let err = prepare_text(
            &template.to_string(),
            input(
                json!({"template": template, "pipeline": {"name": "web", "rebild": "on_change"}}),
            ),
            false,
        )
        .unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        let m = err.message();
        assert!(
            m.contains("pipeline: rebild: unknown key in the pipeline; did you mean rebuild?"),
            "{m}"
        );
        assert!(
            m.contains("web: ami_name"),
            "the template's problems too: {m}"
        );
    }

    #[tokio::test]
    async fn an_empty_pipeline_s3_is_none_and_both_ways_at_once_are_refused() {
        let ctx = Ctx::from_env().await;
        let template = json!({"builders": [ebs_builder("web")]});
        let out = prepare(
            &ctx,
            input(json!({"template": template, "pipeline_s3": ""})),
        )
        .await
        .unwrap();
        assert!(out.pipeline.is_none());
        let err = prepare(
            &ctx,
            input(json!({"template": template, "pipeline": {"name": "a"},
                "pipeline_s3": "s3://bucket/pipeline.json"})),
        )
        .await
        .unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        assert!(err.message().contains("pipeline_s3: give either"), "{err}");
    }

    #[test]
    fn a_pipeline_makes_one_image() {
        let template = json!({"builders": [ebs_builder("a"), ebs_builder("b")]});
        let err = prepare_text(
            &template.to_string(),
            input(json!({"template": template, "pipeline": {"name": "web"}})),
            false,
        )
        .unwrap_err();
        assert!(
            err.message().contains(
                "pipeline: a pipeline makes one image, and the template makes 2 builds (a, b)"
            ),
            "{err}"
        );
        // With one build left by `only`, it prepares.
        let out = prepare_text(
            &template.to_string(),
            input(json!({"template": template, "only": ["a"], "pipeline": {"name": "web"}})),
            false,
        )
        .unwrap();
        assert_eq!(out.pipeline.unwrap().pipeline.name, "web");
    }

    #[test]
    fn the_template_part_of_the_fingerprint_ignores_the_build_time_but_not_the_template() {
        let prepared_at = |template: &Value, time: i64| {
            let mut i = input(json!({"template": template, "pipeline": {"name": "web"}}));
            i.start_time = chrono::DateTime::from_timestamp(time, 0);
            let out = prepare_text(&template.to_string(), i, false).unwrap();
            let name = out.builds[0].build.config.ami().unwrap().ami_name.clone();
            (out.pipeline.unwrap().parts.template, name)
        };
        let template = json!({"builders": [ebs_builder("web")]});
        let (first, first_name) = prepared_at(&template, 1_700_000_000);
        let (later, later_name) = prepared_at(&template, 1_800_000_000);
        assert_ne!(first_name, later_name, "the names do carry the time");
        assert_eq!(first, later);
        let mut changed = template.clone();
        changed["builders"][0]["instance_type"] = json!("t3.small");
        assert_ne!(prepared_at(&changed, 1_700_000_000).0, first);
        // Without a pipeline the output carries none.
        let out = prepare_text(
            &template.to_string(),
            input(json!({"template": template})),
            false,
        )
        .unwrap();
        assert!(out.pipeline.is_none());
        assert!(serde_json::to_value(&out)
            .unwrap()
            .get("pipeline")
            .is_none());
    }

    #[test]
    fn a_build_without_region_takes_the_default_region_or_fails_naming_the_key() {
        // amazon-chroot may leave `region` out at validation (the host's region decides).
        let template = json!({"builders": [{"type": "amazon-chroot", "name": "c",
            "source_ami": "ami-0f8848d57eb4fe2d2", "ami_name": "chroot-image",
            "chroot_host_instance_id": "i-0123456789abcdef0"}]});
        let built = || {
            prepare_text(
                &template.to_string(),
                input(json!({"template": template.clone()})),
                false,
            )
            .expect("a valid template")
            .builds
            .remove(0)
        };
        let mut b = built();
        assert_eq!(b.build.config.region(), None);
        resolve_region(&mut b, Some("eu-west-1")).unwrap();
        assert_eq!(b.build.config.build_region(), "eu-west-1");

        let mut b = built();
        let err = resolve_region(&mut b, None).unwrap_err();
        assert_eq!(err.name(), "InvalidTemplate");
        assert!(
            err.message().contains("c: region") && err.message().contains("AWS_REGION"),
            "{err}"
        );

        // A region the template names is kept.
        let mut b = built();
        b.build.config.access_mut().region = Some("us-west-2".into());
        resolve_region(&mut b, Some("eu-west-1")).unwrap();
        assert_eq!(b.build.config.build_region(), "us-west-2");
    }
}

/// Prepared builds for the steps' tests of what a local build calls (`StepSpec::calls`).
#[cfg(test)]
pub(crate) mod fixture {
    use serde_json::{json, Value};

    /// The build of a one-builder template: an amazon-ebs builder without a communicator,
    /// `keys` added to or replacing its own.
    pub(crate) fn build(keys: Value) -> amiflow_template::PreparedBuild {
        template(json!({ "builders": [builder(keys)] }))
    }

    /// The default builder of [`build`] with `keys`.
    pub(crate) fn builder(keys: Value) -> Value {
        let mut b = json!({
            "type": "amazon-ebs", "region": "us-east-1", "source_ami": "ami-1",
            "instance_type": "t3.micro", "communicator": "none", "ami_name": "image"
        });
        let b_keys = b.as_object_mut().expect("an object");
        for (k, v) in keys.as_object().expect("keys are an object") {
            b_keys.insert(k.clone(), v.clone());
        }
        b
    }

    /// A build of `builder` whose config is `config` as a build state holds it (not
    /// prepared: only the keys a test names).
    pub(crate) fn of_config(builder: &str, config: Value) -> amiflow_template::PreparedBuild {
        serde_json::from_value(json!({
            "name": "b", "builder_type": builder, "config": {builder: config}
        }))
        .expect("a build state's build")
    }

    /// The first build of `template`, which must prepare.
    pub(crate) fn template(template: Value) -> amiflow_template::PreparedBuild {
        let mut prepared = amiflow_template::prepare(
            &template.to_string(),
            &amiflow_template::PrepareOptions::default(),
        )
        .unwrap_or_else(|p| panic!("the fixture prepares: {p}"));
        prepared.builds.remove(0)
    }
}
