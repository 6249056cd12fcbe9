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
//!  "only": ["builder name"], "except": ["builder name"],
//!  "on_error": "cleanup" | "abort" | "run-cleanup-provisioner",  // Packer's -on-error, default cleanup
//!  "force": true}                                 // Packer's -force (force_deregister)
//! ```
//!
//! Output: `{"builds": [BuildState, ...]}` — one per build left after only/except, each
//! with `execution` set (the `amiflow:build` tag value) and an empty ledger.
//! Errors: `InvalidTemplate` (every problem listed, one per line; nothing has been
//! created), `Transient` when the template could not be fetched from S3 for a passing reason.

use std::collections::BTreeMap;

use amiflow_template::{prepare as prepare_template, PrepareOptions, Problem, Problems};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::OnError;
use crate::{BuildState, Ctx, StepError};

use super::StepSpec;

pub const STEP: StepSpec = StepSpec {
    name: "Prepare",
    iam_actions: &["s3:GetObject"],
    wait: None,
    timeout_seconds: 60,
    handler: crate::handler!(prepare),
};

/// Step Functions refuses a state larger than this (256 KiB).
const MAX_STATE_BYTES: usize = 256 * 1024;

/// Template keys that carry static AWS credentials.
const STATIC_CREDENTIAL_KEYS: [&str; 3] = ["access_key", "secret_key", "token"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareInput {
    pub input: ExecutionInput,
    pub execution: String,
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
    #[serde(default)]
    pub only: Vec<String>,
    #[serde(default)]
    pub except: Vec<String>,
    #[serde(default)]
    pub on_error: OnError,
    /// Packer's `-force`: replace an existing AMI of the same name (`force_deregister`).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrepareOutput {
    pub builds: Vec<BuildState>,
}

pub async fn prepare(ctx: &Ctx, input: PrepareInput) -> Result<PrepareOutput, StepError> {
    let text = template_text(ctx, &input.input).await?;
    let mut options = PrepareOptions::new(input.start_time.unwrap_or_else(Utc::now));
    options.env = ctx.env.clone();
    options.template_dir = ctx.base_dir.clone();
    let mut out = prepare_text_with(&text, input, running_in_lambda(), options)?;
    let default_region = ctx.sdk.region().map(|r| r.to_string());
    for b in &mut out.builds {
        resolve_region(b, default_region.as_deref())?;
    }
    Ok(out)
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
        input, execution, ..
    } = input;
    let mut problems = Vec::new();
    if execution.trim().is_empty() {
        problems.push(Problem::key(
            "execution",
            "the execution name is empty; the state machine passes $$.Execution.Name",
        ));
    }
    let vars = vars_as_strings(&input.vars, &mut problems);
    if !problems.is_empty() {
        return Err(invalid(Problems(problems)));
    }
    options.vars = vars.into_iter().collect();
    options.only = input.only.clone();
    options.except = input.except.clone();
    options.force = input.force;
    let prepared = prepare_template(text, &options).map_err(invalid)?;
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
            .flat_map(static_credentials)
            .collect();
        if !refused.is_empty() {
            return Err(invalid(Problems(refused)));
        }
    }
    let builds: Vec<BuildState> = prepared
        .builds
        .into_iter()
        .map(|build| BuildState {
            execution: execution.clone(),
            build,
            on_error: input.on_error,
            data: Default::default(),
            ledger: Default::default(),
            waits: Default::default(),
            timings: Vec::new(),
            error: None,
        })
        .collect();
    let output = PrepareOutput { builds };
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
        (None, Some(url)) => fetch_s3(ctx, url).await,
    }
}

async fn fetch_s3(ctx: &Ctx, url: &str) -> Result<String, StepError> {
    let invalid = |m: String| {
        StepError::InvalidTemplate(Problems(vec![Problem::key("template_s3", m)]).to_string())
    };
    let Some((bucket, key)) = url
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
    else {
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
                "cannot read {url}: {code}: {}. Check the bucket and key, and that the Prepare function's role may s3:GetObject on it",
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
