//! `amiflow start TEMPLATE`: validate locally, then StartExecution on the deployed state
//! machine with `{"template": ..., "vars": ..., "on_error": ...}` as input.
//!
//! Static credentials are refused: an execution's input is stored in its history, visible
//! to anyone who may read the state machine, for as long as the history is kept. The
//! functions use their own roles (and `assume_role` for other accounts) instead.
//!
//! For the same reason the values of sensitive variables never enter the input: they are
//! stored as SecureString parameters under the execution's path, in the state machine's
//! region, and the input names the parameters (`sensitive_vars`; see
//! `functions/amiflow/src/resources/sensitive_var.rs` for their whole life).

use std::collections::BTreeMap;
use std::path::PathBuf;

use amiflow::resources::sensitive_var;
use anyhow::bail;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Args {
    /// The Packer template: JSON, or HCL2 (a `*.pkr.hcl` file or a folder of them).
    pub template: PathBuf,
    /// Template variables, as Packer's `-var name=value`.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// The deployed state machine (the stack's StateMachineArn output); default
    /// $AMIFLOW_STATE_MACHINE_ARN.
    #[arg(long = "state-machine")]
    pub state_machine: Option<String>,
    /// The execution name: the `amiflow:build` tag value on everything the build creates.
    #[arg(long)]
    pub name: Option<String>,
    /// Packer's -on-error: cleanup (default), abort (keep resources for debugging),
    /// run-cleanup-provisioner (run the error-cleanup-provisioner, then keep them), or redrive
    /// (keep a failed build for `amiflow redrive`, or `amiflow abandon`). `ask` needs a
    /// terminal: only `amiflow build` offers it.
    #[arg(long = "on-error", default_value = "cleanup", value_parser = ["cleanup", "abort", "run-cleanup-provisioner", "redrive"])]
    pub on_error: String,
    /// Packer's -force: replace an existing AMI of the same name (force_deregister).
    #[arg(long)]
    pub force: bool,
    /// A pipeline file around the build (rebuild on change, publish, retain).
    #[arg(long, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// With --pipeline: retention reports what it would retire and touches nothing.
    #[arg(long = "retain-dry-run", requires = "pipeline")]
    pub retain_dry_run: bool,
    /// Follow the execution until it ends (as `amiflow watch`).
    #[arg(long)]
    pub watch: bool,
}

/// Step Functions refuses larger execution inputs.
const MAX_INPUT_BYTES: usize = 256 * 1024;

/// Builder keys holding static AWS credentials.
const CREDENTIAL_KEYS: [&str; 3] = ["access_key", "secret_key", "token"];

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let vars = crate::policy::parse_vars(&args.vars)?;
    let (template, vars) = crate::template_file::template_and_vars(&args.template, vars)?;
    let (vars, sensitive) = split_sensitive(&template, vars);
    let mut input = execution_input(&template, &vars, &args.on_error)?;
    if let Some(path) = &args.pipeline {
        input["pipeline"] = crate::pipeline_file::read(path)?;
        input["retain_dry_run"] = args.retain_dry_run.into();
    }
    if args.force {
        input["force"] = Value::Bool(true);
    }
    let name = match args.name {
        Some(n) => check_name(&n)?,
        None => execution_name(&args.template),
    };
    // Validated here with the sensitive values themselves; they never leave this machine but
    // for Parameter Store.
    let mut checked = input.clone();
    for (k, v) in &sensitive {
        checked["vars"][k] = Value::String(v.clone());
    }
    validate_locally(&checked, &name).await?;
    let Some(state_machine) = args
        .state_machine
        .or_else(|| std::env::var("AMIFLOW_STATE_MACHINE_ARN").ok())
    else {
        bail!("no state machine: pass --state-machine ARN or set AMIFLOW_STATE_MACHINE_ARN (the StateMachineArn output of `sam deploy`)");
    };
    // The state machine's region, whatever the environment's (which may name none): the
    // execution and its sensitive variables live there.
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = state_machine.split(':').nth(3).filter(|r| !r.is_empty()) {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    let sdk = loader.load().await;
    let client = aws_sdk_sfn::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let machine = state_machine.rsplit(':').next().unwrap_or_default();
    let stored = store_sensitive(&ssm, machine, &name, &sensitive).await?;
    if !stored.is_empty() {
        input["sensitive_vars"] = serde_json::json!(stored);
    }
    let arn = match start(&client, &state_machine, &name, &input).await {
        Ok(arn) => arn,
        Err(e) => {
            sensitive_var::remove(&ssm, stored.values()).await;
            return Err(e);
        }
    };
    println!("{arn}");
    if args.watch {
        let outcome =
            crate::watch::follow(&client, &arn, std::time::Duration::from_secs(2), None).await?;
        return Ok(outcome.exit_code());
    }
    Ok(0)
}

/// `vars` split into (the ordinary ones, the values of variables the template declares
/// sensitive: `"sensitive-variables"`, which HCL2's `sensitive = true` lowers to).
pub fn split_sensitive(
    template: &Value,
    vars: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let declared: Vec<&str> = template["sensitive-variables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    vars.into_iter()
        .partition(|(name, _)| !declared.contains(&name.as_str()))
}

/// Stores the sensitive values as SecureString parameters of execution `name` (what
/// the input's `sensitive_vars` names); nothing when there are none.
/// `state_machine`: the name of the state machine the execution runs on (its stack's): the
/// values go under its path (`amiflow::identity::parameter_owner`).
pub async fn store_sensitive(
    ssm: &aws_sdk_ssm::Client,
    state_machine: &str,
    name: &str,
    sensitive: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    if sensitive.is_empty() {
        return Ok(BTreeMap::new());
    }
    let execution =
        amiflow::identity::parameter_owner(state_machine, &amiflow::state::build_id(name));
    sensitive_var::store(ssm, &execution, sensitive)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "could not store the sensitive variables ({}) as SecureString parameters under {}: {}\n\
                 The starter needs ssm:PutParameter and ssm:AddTagsToResource there (and ssm:DeleteParameter to undo); nothing was started.",
                sensitive.keys().cloned().collect::<Vec<_>>().join(", "),
                sensitive_var::parameter_name(&execution, ""),
                e.message()
            )
        })
}

/// The execution input Prepare reads, after refusing static credentials.
pub fn execution_input(
    template: &Value,
    vars: &BTreeMap<String, String>,
    on_error: &str,
) -> anyhow::Result<Value> {
    refuse_static_credentials(template, vars)?;
    let input = json!({ "template": template, "vars": vars, "on_error": on_error });
    let size = input.to_string().len();
    if size > MAX_INPUT_BYTES {
        bail!("the execution input is {size} bytes, over Step Functions' {MAX_INPUT_BYTES}: upload the template to S3 and start with {{\"template_s3\": \"s3://...\"}} instead");
    }
    Ok(input)
}

/// Refuses `access_key`/`secret_key`/`token` in any builder when they hold a key (directly or
/// through a user variable), and -var values whose names look like credentials.
pub fn refuse_static_credentials(
    template: &Value,
    vars: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for (i, builder) in template["builders"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let label = builder["name"]
            .as_str()
            .or(builder["type"].as_str())
            .unwrap_or("?")
            .to_string();
        for key in CREDENTIAL_KEYS {
            let literal = match builder.get(key) {
                None | Some(Value::Null) => false,
                Some(Value::String(s)) => static_value(s, template, vars),
                Some(_) => true,
            };
            if literal {
                found.push(format!("builders[{i}] ({label}).{key}"));
            }
        }
    }
    for (name, value) in vars {
        let lower = name.to_ascii_lowercase();
        let looks_secret = [
            "access_key",
            "secret_key",
            "secret_access_key",
            "session_token",
            "aws_token",
            "secret",
        ]
        .iter()
        .any(|k| lower.contains(k))
            || lower == "token";
        if looks_secret && !value.is_empty() {
            found.push(format!("-var {name}"));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    bail!(
        "refusing to start: static AWS credentials in the input ({}).\n\
         An execution's input is kept in its history, readable by anyone allowed to see the state machine, \
         for the history's whole retention: the keys would leak there. The deployed functions use their own \
         least-privilege roles; for another account set `assume_role` (role_arn) in the builder instead, \
         or run the template locally with `amiflow build`, which reads your credential chain.",
        found.join(", ")
    )
}

/// Whether a credential option carries a key: a literal, or `{{user `x`}}` whose value (from
/// -var or the variable's default) is a literal. `{{env ...}}` resolves where the build runs.
fn static_value(text: &str, template: &Value, vars: &BTreeMap<String, String>) -> bool {
    if text.is_empty() {
        return false;
    }
    if !text.contains("{{") {
        return true;
    }
    let user_var = text
        .trim()
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim)
        .and_then(|i| i.strip_prefix("user"))
        .map(|n| n.trim().trim_matches(|c| c == '`' || c == '"'));
    match user_var {
        Some(name) => {
            let value = vars
                .get(name)
                .cloned()
                .or_else(|| template["variables"][name].as_str().map(String::from))
                .unwrap_or_default();
            !value.is_empty() && !value.contains("{{")
        }
        None => false,
    }
}

/// Runs the Prepare step in-process on the exact input the execution will get, so a bad
/// template fails here with every problem listed and nothing started.
pub async fn validate_locally(input: &Value, name: &str) -> anyhow::Result<()> {
    let Some(prepare) = amiflow::flows::find("Prepare") else {
        eprintln!("note: this amiflow has no Prepare step to validate with; the state machine will validate");
        return Ok(());
    };
    if input["template_s3"].is_string() {
        return Ok(());
    }
    let ctx = std::sync::Arc::new(amiflow::Ctx::from_env().await);
    match (prepare.handler)(ctx, json!({ "input": input, "execution": name })).await {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "the template is not valid, nothing was started:\n{}",
            e.message()
        ),
    }
}

/// `amiflow-<template stem>-<UTC time>`: unique enough, readable in the console, and a valid
/// tag value and execution name (80 characters of [A-Za-z0-9-_]).
pub fn execution_name(template: &std::path::Path) -> String {
    let stem: String = template
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let suffix = chrono::Utc::now().timestamp_subsec_micros() % 0x10000;
    format!(
        "amiflow-{stem}-{}-{suffix:04x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S")
    )
}

fn check_name(name: &str) -> anyhow::Result<String> {
    if name.is_empty()
        || name.len() > 80
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("--name {name:?}: execution names are 1-80 characters of letters, digits, '-' and '_' (it also becomes the amiflow:build tag value)");
    }
    Ok(name.to_string())
}

pub async fn start(
    client: &aws_sdk_sfn::Client,
    state_machine: &str,
    name: &str,
    input: &Value,
) -> anyhow::Result<String> {
    let out = client
        .start_execution()
        .state_machine_arn(state_machine)
        .name(name)
        .input(input.to_string())
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "StartExecution on {state_machine}: {}",
                aws_sdk_sfn::error::DisplayErrorContext(e)
            )
        })?;
    Ok(out.execution_arn().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sensitive_variables_are_split_from_the_input() {
        let template = serde_json::json!({ "variables": { "pw": "", "region": "" }, "sensitive-variables": ["pw"] });
        let vars = [("pw", "hunter2"), ("region", "eu-west-1")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let (plain, sensitive) = super::split_sensitive(&template, vars);
        assert_eq!(plain.keys().collect::<Vec<_>>(), ["region"]);
        assert_eq!(sensitive["pw"], "hunter2");
        let input = super::execution_input(&template, &plain, "cleanup").unwrap();
        assert!(!input.to_string().contains("hunter2"), "{input}");
    }

    use super::*;

    #[test]
    fn static_keys_in_a_builder_are_refused_with_the_reason() {
        let template = json!({ "builders": [{ "type": "amazon-ebs", "access_key": "AKIA", "secret_key": "s" }] });
        let err = execution_input(&template, &BTreeMap::new(), "cleanup")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("builders[0] (amazon-ebs).access_key") && err.contains("secret_key"),
            "{err}"
        );
        assert!(err.contains("history"), "{err}");
    }

    #[test]
    fn credential_like_vars_are_refused_and_others_pass() {
        // Packer's usual form: variables defaulting to the environment.
        let template = json!({
            "variables": { "aws_access_key": "{{env `AWS_ACCESS_KEY_ID`}}", "aws_secret_key": "" },
            "builders": [{ "type": "amazon-ebs", "access_key": "{{user `aws_access_key`}}", "secret_key": "{{user `aws_secret_key`}}" }]
        });
        assert!(refuse_static_credentials(&template, &BTreeMap::new()).is_ok());
        let vars = BTreeMap::from([("aws_secret_key".to_string(), "x".to_string())]);
        let err = refuse_static_credentials(&template, &vars)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("-var aws_secret_key") && err.contains("secret_key"),
            "{err}"
        );
        assert!(!err.contains(".access_key"), "{err}");
        let clean = json!({ "builders": [{ "type": "amazon-ebs", "access_key": "" }] });
        let vars = BTreeMap::from([("region".to_string(), "us-east-1".to_string())]);
        let input = execution_input(&clean, &vars, "abort").unwrap();
        assert_eq!(input["vars"]["region"], "us-east-1");
        assert_eq!(input["on_error"], "abort");
    }

    #[test]
    fn names_are_valid_execution_names() {
        let name = execution_name(std::path::Path::new("/x/my template.v2.json"));
        assert!(check_name(&name).is_ok(), "{name}");
        assert!(name.starts_with("amiflow-my-template-v2-"));
        assert!(check_name("has space").is_err());
    }
}
